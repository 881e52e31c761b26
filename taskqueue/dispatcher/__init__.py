"""The dispatcher: decides which tasks run next and follows their agents to the end.

Everything it knows is in the database, so a worker that dies mid-pass loses
nothing that the next pass (the agent-finished hook, the wake timer, or the
periodic tick) will not redo:

* a pass locks the project row, moves tasks whose dependencies all succeeded
  from ``pending`` to ``ready``, and claims the due ready tasks (highest
  priority first, within the project's ``max_parallel`` and the hub's free
  slots) with conditional ``ready → running`` updates, each with a
  ``preparing`` attempt;
* each claimed attempt then builds its base branch (git, outside any
  transaction) and spawns its agent in one transaction that also marks the
  attempt ``started``; so an attempt has an agent exactly when it is started;
* the agent's final state arrives through ``agents.signals.agent_finished``
  (a django-q2 task then calls ``task_agent_finished``): success finishes the
  task, failure retries it after an exponential backoff with jitter or, once
  the retries are spent, applies the project's failure policy.
"""

from taskqueue.dispatcher.attempts import (
    agents_stop,
    attempt_start,
    backoff_delay,
    project_edges,
    tasks_cancel,
)
from taskqueue.dispatcher.claims import DispatchReport, tasks_due, tasks_promote
from taskqueue.dispatcher.passes import (
    TickReport,
    attempts_recover,
    project_dispatch,
    project_dispatch_enqueue,
    projects_dispatch_waiting,
    projects_tick,
    projects_wake_due,
    task_agent_finished,
)
from taskqueue.dispatcher.settling import project_settle, project_wake_plan, webhook_enqueue

__all__ = [
    "DispatchReport",
    "TickReport",
    "agents_stop",
    "attempt_start",
    "attempts_recover",
    "backoff_delay",
    "project_dispatch",
    "project_dispatch_enqueue",
    "project_edges",
    "project_settle",
    "project_wake_plan",
    "projects_dispatch_waiting",
    "projects_tick",
    "projects_wake_due",
    "task_agent_finished",
    "tasks_cancel",
    "tasks_due",
    "tasks_promote",
    "webhook_enqueue",
]
