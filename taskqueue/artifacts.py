"""A project's artifacts: one .tar.gz with each attempt's diff, event log and gate reports.

Layout::

    project-<id>/project.json                 the project's result
    project-<id>/<key>/attempt-<n>/diff.patch what the attempt's pushed branch changed
    project-<id>/<key>/attempt-<n>/events.jsonl
    project-<id>/<key>/attempt-<n>/gates.json
"""

import io
import json
import tarfile
import time
import uuid
from typing import Any

from django.core.serializers.json import DjangoJSONEncoder

from agents import workspace
from agents.selectors import agent_events_range
from gates.selectors import gate_runs_for_agent
from taskqueue.models import TaskAttempt
from taskqueue.selectors import project_attempts, project_result

_EVENT_BATCH = 5000


def project_artifacts_archive(*, project_id: int) -> bytes:
    result = project_result(project_id=project_id)  # raises ProjectNotFound
    root = f"project-{project_id}"
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        _add(archive, f"{root}/project.json", _json(result))
        for attempt in project_attempts(project_id=project_id):
            folder = f"{root}/{attempt.task.key}/attempt-{attempt.number}"
            _add(archive, f"{folder}/attempt.json", _json(_attempt_summary(attempt)))
            if attempt.agent is None:
                continue
            _add(archive, f"{folder}/diff.patch", _diff(attempt).encode())
            _add(archive, f"{folder}/events.jsonl", _events(attempt.agent.id))
            gates = [
                {
                    "stage": run.stage,
                    "gate": run.gate,
                    "outcome": run.outcome,
                    "passed": run.passed,
                    "summary": run.summary,
                    "output_tail": run.output_tail,
                    "confidence": run.confidence,
                    "details": run.details,
                    "created_at": run.created_at,
                }
                for run in gate_runs_for_agent(agent_id=attempt.agent.id)
            ]
            _add(archive, f"{folder}/gates.json", _json(gates))
    return buffer.getvalue()


def _attempt_summary(attempt: TaskAttempt) -> dict[str, Any]:
    agent = attempt.agent
    return {
        "task": attempt.task.key,
        "number": attempt.number,
        "state": attempt.state,
        "error": attempt.error,
        "base_branch": attempt.base_branch,
        "backoff_s": attempt.backoff_s,
        "created_at": attempt.created_at,
        "finished_at": attempt.finished_at,
        "agent": None
        if agent is None
        else {
            "id": str(agent.id),
            "state": agent.state,
            "work_branch": agent.work_branch,
            "started_at": agent.started_at,
            "finished_at": agent.finished_at,
            "error": agent.error,
            "result": agent.result,
        },
    }


def _diff(attempt: TaskAttempt) -> str:
    agent = attempt.agent
    if agent is None or not (agent.result or {}).get("pushed_commit"):
        return ""
    try:
        return workspace.remote_branch_diff(
            repository=agent.repository, branch=agent.work_branch, base_branch=agent.base_branch
        )
    except workspace.WorkspaceError as error:
        return f"# diff unavailable: {error}\n"


def _events(agent_id: uuid.UUID) -> bytes:
    lines, after = [], 0
    while True:
        batch = list(agent_events_range(after=after, agent_id=agent_id, limit=_EVENT_BATCH))
        lines += [
            json.dumps(
                {
                    "id": event.id,
                    "kind": event.kind,
                    "data": event.data,
                    "created_at": event.created_at,
                },
                cls=DjangoJSONEncoder,
            )
            for event in batch
        ]
        if len(batch) < _EVENT_BATCH:
            return ("\n".join(lines) + "\n").encode()
        after = batch[-1].id


def _json(data: Any) -> bytes:
    return json.dumps(data, cls=DjangoJSONEncoder, indent=2).encode()


def _add(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = int(time.time())
    info.mode = 0o644
    archive.addfile(info, io.BytesIO(data))
