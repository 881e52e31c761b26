"""The reconciler: make what exists on this node agree with the database.

It runs when a hub starts (``manage.py reconcile``) and then as a django-q2
schedule. It compares the agents in non-final states with what really runs:
the node supervisor process running each agent, containers by label, cgroups
and labelled processes, and the worktrees on disk and in ``git worktree
list``. An agent whose supervisor died is retried when it has retries left,
otherwise it fails with the reason "hub restarted"; whatever belongs to no
live agent is killed and removed. A branch holding unpushed commits is never
deleted. Every action is audited. The node supervisors recover agents whose
node went away entirely (``agents_recover_lapsed``) with the same steps.

Things are listed before the live agents are read, so a sandbox or worktree
that a new agent creates meanwhile always belongs to an agent the reconciler
already counts as live.
"""

import logging
import os
import re
import uuid
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from django.conf import settings
from django.db.models.functions import Now

from agents import workspace
from agents.childprocess import process_start_ticks
from agents.models import LIVE_STATES, Agent, AgentState
from agents.sandboxes import sandbox_backend
from agents.sandboxes.base import SandboxError, SandboxUnavailable
from agents.sandboxes.cgroups import AgentCgroup
from agents.sandboxes.local import cgroup_name, local_kill, local_live_agent_ids, local_remove
from agents.services import (
    REMOTE_SANDBOX,
    agent_requeue,
    agent_terminate,
    agent_unpushed_commits,
    retry_backoff_s,
)
from audit.services import audit_record
from orchestrator_site.schedules import schedule_ensure

if TYPE_CHECKING:
    from agents.sandboxes.docker import DockerSandbox

logger = logging.getLogger(__name__)

ACTOR = "system:reconciler"
HUB_RESTARTED = "hub restarted"
NODE_LOST = "node lost"
SCHEDULE_NAME = "flotilla-reconcile"
# States in which a node supervisor owns the agent.
SUPERVISED_STATES = (AgentState.SPAWNING, AgentState.RUNNING, AgentState.GATING, AgentState.PUSHING)
_UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
_WORKTREE_DIR = re.compile(rf"^agent-({_UUID})-")


@dataclass
class ReconcileReport:
    node: str
    retried: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    sandboxes_removed: list[str] = field(default_factory=list)
    worktrees_removed: list[str] = field(default_factory=list)
    branches_kept: list[str] = field(default_factory=list)
    # Local sandboxes of agents this hub's database does not know: another
    # hub on the same machine may own them, so they are reported, not killed.
    unattributed: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- supervisors --------------------------------------------------------------


def supervisor_identity() -> dict[str, Any]:
    """The fields the runner stores to name the process supervising an agent."""
    pid = os.getpid()
    return {"supervisor_pid": pid, "supervisor_started": process_start_ticks(pid)}


def supervisor_alive(agent: Agent) -> bool:
    if agent.supervisor_pid is None:
        return False
    started = process_start_ticks(agent.supervisor_pid)
    return started is not None and started == agent.supervisor_started


# --- the pass -----------------------------------------------------------------


def agents_reconcile(*, node: str) -> ReconcileReport:
    """One reconciliation pass over ``node``, which must be the machine this runs on."""
    report = ReconcileReport(node=node)
    for agent in Agent.objects.filter(node=node, state__in=SUPERVISED_STATES):
        if not supervisor_alive(agent):
            _recover(agent, report, reason=HUB_RESTARTED)
    containers = _docker_containers(node, report)
    pool_claims = _docker_pool_claims(node)
    local_ids = local_live_agent_ids()
    worktrees = _worktrees(report)
    live = {
        str(agent_id)
        for agent_id in Agent.objects.filter(state__in=LIVE_STATES).values_list("id", flat=True)
    }
    _sweep_docker(containers, live, report)
    _sweep_docker_pool(node, pool_claims, live, report)
    _sweep_local(local_ids, live, report)
    _sweep_worktrees(worktrees, live, report)
    return report


def agents_recover_lapsed(*, lease_s: float, pool: str) -> ReconcileReport:
    """Recover the agents of ``pool``'s nodes whose lease lapsed (SIGKILL, power loss).

    Any node of the pool does it. The lease is compared with the database's
    clock, so nodes whose clocks disagree still agree on which leases lapsed.
    """
    report = ReconcileReport(node="*")
    lapsed = (
        Agent.objects.filter(
            pool=pool,
            state__in=SUPERVISED_STATES,
            heartbeat_at__lt=Now() - timedelta(seconds=lease_s),
        )
        .exclude(sandbox_backend=REMOTE_SANDBOX)
        .order_by("heartbeat_at")
    )
    for agent in lapsed:
        _recover(agent, report, reason=NODE_LOST)
    return report


def _recover(agent: Agent, report: ReconcileReport, *, reason: str) -> None:
    """The supervisor running ``agent`` is gone: run it again if it may, else fail it."""
    unpushed = agent_unpushed_commits(agent=agent)
    if agent.attempt < agent.max_retries and unpushed == 0:
        attempt = agent.attempt + 1
        why = f"{reason}: retry {attempt} of {agent.max_retries}"
        delay_s = retry_backoff_s(attempt=attempt)
        if not agent_requeue(agent=agent, reason=why, attempt=attempt, delay_s=delay_s):
            return
        report.retried.append(str(agent.id))
        _audit(
            "agent.retry",
            agent.id,
            why,
            {"from_state": agent.state, "attempt": attempt, "node": agent.node},
        )
        return
    termination = agent_terminate(agent_id=agent.id, reason=reason, to=AgentState.FAILED)
    if not termination.terminated:
        return
    report.failed.append(str(agent.id))
    report.errors += termination.errors
    if termination.branch_kept:
        report.branches_kept.append(agent.work_branch)
    _audit(
        "agent.fail",
        agent.id,
        reason,
        {
            "from_state": agent.state,
            "node": agent.node,
            "attempt": agent.attempt,
            "max_retries": agent.max_retries,
            "unpushed_commits": unpushed,
            "branch_kept": termination.branch_kept,
            "errors": termination.errors,
        },
    )


# --- sandboxes ----------------------------------------------------------------


def _docker_containers(node: str, report: ReconcileReport) -> dict[str, str]:
    try:
        # The backend named "docker" is DockerSandbox (settings.FLOTILLA_SANDBOX_BACKENDS).
        backend = cast("DockerSandbox", sandbox_backend("docker"))
    except SandboxUnavailable:
        return {}  # no engine, so no container either
    try:
        return backend.containers_by_agent(node=node)
    except SandboxError as error:
        report.errors.append(f"docker: {error}")
        return {}


def _sweep_docker(containers: dict[str, str], live: set[str], report: ReconcileReport) -> None:
    for agent_id, name in containers.items():
        if agent_id in live:
            continue
        try:
            backend = sandbox_backend("docker")
            backend.remove({"backend": "docker", "agent_id": agent_id, "container": name})
        except SandboxError as error:
            report.errors.append(f"container {name}: {error}")
            continue
        report.sandboxes_removed.append(f"docker:{agent_id}")
        _audit(
            "sandbox.remove",
            agent_id,
            "no live agent owns this container",
            {"backend": "docker", "container": name},
        )


def _docker_pool_claims(node: str) -> dict[str, str]:
    try:
        from agents.sandboxes.docker import docker_pool_claims
    except ImportError:
        return {}  # no docker SDK, so no pool either
    return docker_pool_claims(node=node)


def _sweep_docker_pool(
    node: str, claims: dict[str, str], live: set[str], report: ReconcileReport
) -> None:
    """Release warm-pool slots claimed by agents that are gone, then top the pool up."""
    from agents.sandboxes.docker import docker_pool_refill_enqueue, docker_pool_sweep

    try:
        released = docker_pool_sweep(node=node, claims=claims, live=live)
    except SandboxError as error:
        report.errors.append(f"docker warm pool: {error}")
        return
    for item in released:
        slot, agent_id = item.split(":", 1)
        report.sandboxes_removed.append(f"docker-pool:{slot}")
        _audit(
            "sandbox.remove",
            agent_id,
            "no live agent owns this warm-pool container",
            {"backend": "docker", "warm_slot": slot},
        )
    if settings.FLOTILLA_DOCKER_WARM_POOL > 0:
        docker_pool_refill_enqueue()


def _sweep_local(agent_ids: set[str], live: set[str], report: ReconcileReport) -> None:
    # Candidates are this hub's own sandboxes (cgroups under its hub id,
    # processes with its label) of agents that are final: every run releases
    # its sandbox before the final state, so what is left is an orphan, also
    # when the row names another node (a node killed mid-run, its agent then
    # retried and finished elsewhere).
    candidates = {agent_id for agent_id in agent_ids - live if _is_uuid(agent_id)}
    rows = Agent.objects.filter(id__in=candidates).values_list("id", "sandbox_backend")
    known = {str(agent_id): backend for agent_id, backend in rows}
    report.unattributed += sorted(agent_ids - live - set(known))
    for agent_id, backend in known.items():
        handle: dict[str, Any] = {"backend": backend, "agent_id": agent_id}
        if AgentCgroup(cgroup_name(agent_id)).path("freezer").exists():
            handle["cgroup"] = cgroup_name(agent_id)
        local_kill(handle)
        local_remove(handle)
        report.sandboxes_removed.append(f"local:{agent_id}")
        _audit(
            "sandbox.remove",
            agent_id,
            "no live agent owns these processes",
            {"backend": backend, "cgroup": handle.get("cgroup", "")},
        )


# --- worktrees ----------------------------------------------------------------


def _worktrees(report: ReconcileReport) -> dict[Path, str]:
    """Agent worktrees on disk or registered in a mirror → their repository ('' if unknown)."""
    found: dict[Path, str] = {path: "" for path in workspace.worktree_dirs()}
    for repository in workspace.mirror_repositories():
        try:
            for path in workspace.worktree_list(repository):
                found[path] = repository
        except workspace.WorkspaceError as error:
            report.errors.append(f"worktree list of {repository}: {error}")
    return {path: repo for path, repo in found.items() if _worktree_agent_id(path)}


def _worktree_agent_id(path: Path) -> str | None:
    """The agent a worktree directory belongs to, by its name; None for a foreign directory."""
    match = _WORKTREE_DIR.match(path.name)
    return match.group(1) if match else None


def _sweep_worktrees(worktrees: dict[Path, str], live: set[str], report: ReconcileReport) -> None:
    ids = {path: agent_id for path in worktrees if (agent_id := _worktree_agent_id(path))}
    stale = {path: agent_id for path, agent_id in ids.items() if agent_id not in live}
    agents = {str(agent.id): agent for agent in Agent.objects.filter(id__in=set(stale.values()))}
    for path, agent_id in stale.items():
        agent = agents.get(agent_id)
        repository = agent.repository if agent else worktrees[path]
        branch = agent.work_branch if agent else f"flotilla/{agent_id}"
        try:
            if repository:
                removal = workspace.worktree_remove(
                    repository=repository, path=path, work_branch=branch
                )
                kept = removal.branch_kept
            else:
                workspace.worktree_discard(path)
                kept = False
        except workspace.WorkspaceError as error:
            report.errors.append(f"worktree {path}: {error}")
            continue
        report.worktrees_removed.append(str(path))
        if kept:
            report.branches_kept.append(branch)
        _audit(
            "worktree.remove",
            agent_id,
            "no live agent owns this worktree",
            {"path": str(path), "branch": branch, "branch_kept": kept},
        )


# --- helpers ------------------------------------------------------------------


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


def _audit(action: str, agent_id: uuid.UUID | str, reason: str, data: dict[str, Any]) -> None:
    audit_record(actor=ACTOR, action=action, target=f"agent:{agent_id}", reason=reason, data=data)


def reconcile_schedule_ensure() -> None:
    """Create or update the django-q2 schedule that runs the reconciler (idempotent)."""
    schedule_ensure(
        name=SCHEDULE_NAME,
        func="agents.tasks.agents_reconcile",
        minutes=settings.FLOTILLA_RECONCILE_EVERY_MINUTES,
    )
