"""Reads on gate verdicts."""

import uuid

from django.db.models import QuerySet

from gates.models import GateRun, GateStage


def gate_runs_for_agent(*, agent_id: uuid.UUID, stage: str | None = None) -> QuerySet[GateRun]:
    runs = GateRun.objects.filter(agent_id=agent_id)
    if stage:
        runs = runs.filter(stage=stage)
    return runs.order_by("id")


def tests_coverage_run_get(*, agent_id: str, tree: str) -> GateRun | None:
    """The agent's last passing tests gate that measured coverage on ``tree``, if any."""
    return (
        GateRun.objects.filter(
            agent_id=agent_id,
            stage=GateStage.PRE_COMMIT,
            gate="tests",
            passed=True,
            details__coverage__tree=tree,
        )
        .order_by("-id")
        .first()
    )
