"""The hub a benchmark runs on: the tests' launcher (tests/launcher.py) with room for its agents.

Its own data directory and SQLite database, real daphne and worker node
processes, and a staff token. Not a test helper: benches only.
"""

from tests.launcher import Hub


def throwaway_hub(*, workers: int = 8, extra_env: dict[str, str] | None = None) -> Hub:
    """``workers`` agents run at once on the node; two django-q2 processes take the short jobs."""
    env = {
        "FLOTILLA_NODE_CAPACITY": str(workers),
        "FLOTILLA_WORKERS": "2",
        "MAX_CONCURRENT_AGENTS": "100",
        **(extra_env or {}),
    }
    return Hub("bench", env=env)
