"""Projects through the whole path, beside raw django-q2, and the dispatcher's planning time.

1. raw: ``--raw`` no-op ``async_task`` calls through the same cluster, enqueue to done.
2. project: a ``--tasks``-task DAG of script tasks (``true``, no repository: the
   project's scratch repository) from ``POST /api/v1/projects`` to the project's
   ``finished_at``: dispatch, integration branch, agent spawn, bwrap run, gates,
   completion signal, next dispatch.
3. plan: a ``--plan-tasks``-task DAG: graph validation, storing it (created
   paused, so nothing runs), and one dispatcher planning step (promote the
   ready tasks, order the due ones).

Run: .venv/bin/python bench/taskqueue.py [--tasks 2000] [--raw 1000] [--plan-tasks 10000]
Prints JSON. A throwaway hub (its own SQLite database) runs the cluster.
"""

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.throwaway_hub import throwaway_hub
from tests.launcher import Hub


def noop() -> None:
    """The raw django-q2 task: nothing at all."""


def layered_dag(count: int, width: int, fan_in: int, seed: int = 7) -> list[dict]:
    """``count`` tasks in layers of ``width``; each depends on ``fan_in`` of the layer above."""
    rng = random.Random(seed)
    tasks: list[dict] = []
    for index in range(count):
        layer = index // width
        above = [f"t{i}" for i in range((layer - 1) * width, layer * width)] if layer else []
        deps = rng.sample(above, min(fan_in, len(above)))
        tasks.append(
            {
                "key": f"t{index}",
                "script": "true",
                "depends_on": deps,
                "gate_profile": "minimal",
                "priority": rng.randint(1, 10),
            }
        )
    return tasks


def raw_rate(count: int) -> dict:
    from django_q.models import Success
    from django_q.tasks import async_task

    group = f"bench-raw-{time.time_ns()}"
    started = time.monotonic()
    for _ in range(count):
        async_task("bench.taskqueue.noop", group=group)
    enqueued = time.monotonic()
    while Success.objects.filter(group=group).count() < count:
        time.sleep(0.05)
    elapsed = time.monotonic() - started
    return {
        "tasks": count,
        "seconds": round(elapsed, 2),
        "enqueue_s": round(enqueued - started, 2),
        "tasks_per_s": round(count / elapsed, 1),
    }


def project_rate(hub: Hub, count: int, width: int) -> dict:
    from taskqueue.models import Project, TaskAttempt

    body = {"name": "bench", "mode": "dag", "tasks": layered_dag(count, width, fan_in=2)}
    started = time.monotonic()
    project_id = hub.request("POST", "/api/v1/projects", body)["id"]
    accepted = time.monotonic()
    while (project := Project.objects.get(id=project_id)).finished_at is None:
        time.sleep(0.2)
    elapsed = time.monotonic() - started
    succeeded = project.tasks.filter(state="succeeded").count()
    return {
        "tasks": count,
        "width": width,
        "state": project.state,
        "succeeded": succeeded,
        "attempts": TaskAttempt.objects.filter(task__project_id=project_id).count(),
        "create_s": round(accepted - started, 2),
        "seconds": round(elapsed, 2),
        "tasks_per_s": round(count / elapsed, 2),
    }


def plan_times(count: int) -> dict:
    from django.utils import timezone

    from taskqueue.dispatcher import tasks_due, tasks_promote
    from taskqueue.graph import graph_validate
    from taskqueue.services import ProjectSpec, TaskSpec, project_create

    tasks = layered_dag(count, width=100, fan_in=3)
    keys, deps = [t["key"] for t in tasks], [t["depends_on"] for t in tasks]
    started = time.perf_counter()
    graph_validate(keys=keys, depends_on=deps, mode="dag", max_tasks=count)
    validated = time.perf_counter()
    spec = ProjectSpec(
        name="plan",
        paused=True,
        tasks=[
            TaskSpec(
                key=t["key"], script="true", depends_on=t["depends_on"], priority=t["priority"]
            )
            for t in tasks
        ],
    )
    project = project_create(spec=spec, created_by="bench")
    created = time.perf_counter()
    promoted = tasks_promote(project_id=project.id)
    order = tasks_due(project_id=project.id, now=timezone.now(), limit=count)
    planned = time.perf_counter()
    return {
        "tasks": count,
        "edges": sum(len(d) for d in deps),
        "validate_ms": round((validated - started) * 1000, 1),
        "store_ms": round((created - validated) * 1000, 1),
        "dispatch_plan_ms": round((planned - created) * 1000, 1),
        "plan_total_ms": round((validated - started + planned - created) * 1000, 1),
        "ready": promoted,
        "ordered": len(order),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--width", type=int, default=50)
    parser.add_argument("--raw", type=int, default=1000, help="at most the cluster's save_limit")
    parser.add_argument("--plan-tasks", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=8)
    args = parser.parse_args()
    extra = {
        "FLOTILLA_PROJECT_MAX_TASKS": str(max(args.tasks, args.plan_tasks)),
        "LOG_LEVEL": "WARNING",
        "FLOTILLA_SANDBOX_BACKEND": os.environ.get("FLOTILLA_SANDBOX_BACKEND", "bwrap"),
    }
    with throwaway_hub(workers=args.workers, extra_env=extra) as hub:
        os.environ.update(
            {
                key: hub.env[key]
                for key in ("DATA_DIR", "DATABASE_URL", "DJANGO_SETTINGS_MODULE", *extra)
            }
        )
        import django

        django.setup()
        raw = raw_rate(args.raw)
        project = project_rate(hub, args.tasks, args.width)
        plan = plan_times(args.plan_tasks)
    print(
        json.dumps(
            {
                "raw_django_q2": raw,
                "project": project,
                "project_vs_raw": round(project["tasks_per_s"] / raw["tasks_per_s"], 3),
                "plan": plan,
                "workers": args.workers,
                "cpus": os.cpu_count(),
                "sandbox": extra["FLOTILLA_SANDBOX_BACKEND"],
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
