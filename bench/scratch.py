"""A bench's own hub in this process: Django on a fresh SQLite database, and a sample remote.

Not a test helper: benches only. The caller has put the project root on sys.path.
"""

import os
import subprocess
import tempfile
from pathlib import Path


def scratch_django(**env: str) -> Path:
    """Set Django up on a new DATA_DIR (returned) with its own SQLite database, migrated.

    ``env`` is set in the environment first, for settings read at startup.
    """
    data = Path(tempfile.mkdtemp(prefix="flotilla-bench-"))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "orchestrator_site.settings")
    os.environ["DATA_DIR"] = str(data)
    os.environ["DATABASE_URL"] = f"sqlite:///{data / 'bench.sqlite3'}"
    # The sample remotes live in temporary folders too.
    os.environ["FLOTILLA_LOCAL_REPOSITORY_ROOTS"] = tempfile.gettempdir()
    os.environ.update(env)
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0)
    return data


def seed_remote(base: Path, files: dict[str, str]) -> Path:
    """A bare repository ``base/remote.git`` whose main branch holds ``files`` in one commit."""
    seed, remote = base / "seed", base / "remote.git"
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "b",
        "GIT_AUTHOR_EMAIL": "b@b",
        "GIT_COMMITTER_NAME": "b",
        "GIT_COMMITTER_EMAIL": "b@b",
    }
    subprocess.run(
        ["git", "init", "-q", "--bare", "--initial-branch=main", str(remote)], check=True
    )
    subprocess.run(["git", "init", "-q", "--initial-branch=main", str(seed)], check=True)
    for name, text in files.items():
        (seed / name).write_text(text)
    for argv in (["add", "-A"], ["commit", "-qm", "seed"], ["push", "-q", str(remote), "main"]):
        subprocess.run(["git", *argv], cwd=seed, env=env, check=True)
    return remote
