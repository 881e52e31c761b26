"""How long the dashboard's agents list takes to render with 10,000 agents in the database.

Fills a fresh database (SQLite in a temporary DATA_DIR, or DATABASE_URL) with
``--agents`` agents spread over 20 owners, every state, runtime and 10
repositories, then renders ``/dashboard/`` in-process through Django's whole
stack (middleware, login, view, selectors, template) and reports, per case,
the median and p95 of ``--runs`` renders and how many SQL queries one takes:

- the first page as staff (every agent),
- filtered by state, by owner (staff), and by both,
- a task-id search,
- the first page as one owner (ownership filter),
- a deep page.

    .venv/bin/python bench/dashboard_list.py [--agents 10000] [--runs 25]

Prints JSON. Not a test: nothing here asserts a time.
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
OWNERS = 20
STATES = ["queued", "running", "completed", "completed", "completed", "failed", "killed", "paused"]
RUNTIMES = ["script", "claude", "claude-code", "codex"]


def _fill(count: int) -> None:
    from decimal import Decimal

    from django.contrib.auth import get_user_model

    from agents.models import Agent

    users = get_user_model()
    users.objects.create_user("staff", is_staff=True)
    for owner in range(OWNERS):
        users.objects.create_user(f"owner-{owner}")
    batch = [
        Agent(
            task_id=f"task-{n:05d}",
            agent_type="worker",
            runtime=RUNTIMES[n % len(RUNTIMES)],
            repository=f"https://git.example/org/repo-{n % 10}.git",
            base_branch="main",
            work_branch=f"flotilla/bench-{n}",
            sandbox_backend="bwrap",
            timeout_s=600,
            requested_by=f"user:owner-{n % OWNERS}",
            origin="local" if n % 7 else "peer-hub",
            state=STATES[n % len(STATES)],
            progress=n % 101,
            cost_usd=Decimal(n % 500) / 100,
        )
        for n in range(count)
    ]
    Agent.objects.bulk_create(batch, batch_size=1000)


def _measure(client, path: str, runs: int) -> dict:
    from django.db import connection

    # Counted with a wrapper: Django empties its own query log at each request's start.
    queries: list[tuple[str, float]] = []

    def timed(execute, sql, params, many, context):
        started = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            queries.append((sql, (time.perf_counter() - started) * 1000))

    with connection.execute_wrapper(timed):
        response = client.get(path)
    assert response.status_code == 200, (path, response.status_code)
    rows = len(
        re.findall(rb'<tr class="agent-row" data-agent-id="[0-9a-f-]{36}"', response.content)
    )
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        client.get(path)
        times.append((time.perf_counter() - started) * 1000)
    times.sort()
    return {
        "path": path,
        "rows": rows,
        "queries": len(queries),
        "query_ms": round(sum(ms for _, ms in queries), 2),
        "median_ms": round(statistics.median(times), 2),
        "p95_ms": round(times[max(0, int(len(times) * 0.95) - 1)], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=25)
    args = parser.parse_args()

    os.environ.update(
        {
            "DATA_DIR": tempfile.mkdtemp(prefix="flotilla-bench-list-"),
            "DJANGO_SETTINGS_MODULE": "orchestrator_site.settings",
            "LOG_LEVEL": "WARNING",
        }
    )
    subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=ROOT, check=True)
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.db import connection
    from django.test import Client
    from django.test.utils import setup_test_environment

    setup_test_environment()  # lets the test client's host in, as in the tests
    started = time.perf_counter()
    _fill(args.agents)
    fill_s = time.perf_counter() - started

    users = get_user_model().objects
    staff, owner = Client(), Client()
    staff.force_login(users.get(username="staff"))
    owner.force_login(users.get(username="owner-3"))
    cases = {
        "first_page_staff": (staff, "/dashboard/"),
        "filter_state": (staff, "/dashboard/?state=failed"),
        "filter_owner": (staff, "/dashboard/?owner=user:owner-3"),
        "filter_state_and_owner": (staff, "/dashboard/?state=completed&owner=user:owner-3"),
        "search_task_id": (staff, "/dashboard/?task=task-0999"),
        "first_page_as_owner": (owner, "/dashboard/"),
        "page_100_staff": (staff, "/dashboard/?page=100"),
    }
    result = {
        "agents": args.agents,
        "database": connection.vendor,
        "runs": args.runs,
        "fill_s": round(fill_s, 2),
        "cases": {
            name: _measure(client, path, args.runs) for name, (client, path) in cases.items()
        },
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
