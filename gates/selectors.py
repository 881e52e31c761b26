"""Reads on gate verdicts."""

from typing import Any

from django.db.models import QuerySet

from gates.models import GateRun


def gate_runs_for_agent(*, agent_id: Any, stage: str | None = None) -> QuerySet[GateRun]:
    runs = GateRun.objects.filter(agent_id=agent_id)
    if stage:
        runs = runs.filter(stage=stage)
    return runs.order_by("id")
