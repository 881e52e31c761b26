"""Agents run in the test process: queued for the current pool, and run on a thread."""

import threading
from pathlib import Path

from django.db import connections

from agents.runner import AgentRun, agent_run
from agents.services import SpawnRequest, agent_spawn

# A script agent that shows it started (in its worktree) and then runs on.
LONG = "echo started > started.txt; sleep 300"


def script_agent_queue(repository: Path, *, task_id: str, script: str = LONG, **fields) -> str:
    """Spawn a script agent in the pool of the current settings; its id."""
    request = SpawnRequest(
        task_id=task_id,
        agent_type="worker",
        runtime="script",
        script=script,
        repository=str(repository),
        base_branch="main",
        **fields,
    )
    return str(agent_spawn(request=request, requested_by="user:test").id)


def run_in_thread(run: AgentRun) -> threading.Thread:
    """``agent_run`` on a daemon thread, which closes its database connections when done."""

    def target() -> None:
        try:
            agent_run(run=run)
        finally:
            connections.close_all()

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread
