"""django-q2 entry points: ids in, one service call."""

from agents import runner


def agent_run(agent_id: str) -> None:
    runner.agent_run(agent_id=agent_id)
