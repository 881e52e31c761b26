"""The docker warm pool: started containers waiting for spawns, refilled and swept by workers.

FLOTILLA_DOCKER_WARM_POOL containers per node (docs/docker-and-reconciler.md);
a spawn claims one in sandbox.py, and warmpool.py keeps the slots on disk.
"""

import contextlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from django.conf import settings

from agents.sandboxes import warmpool
from agents.sandboxes.base import SandboxError, SandboxSpec, SandboxUnavailable
from agents.sandboxes.cgroups import cgroup_procs_file_of
from agents.sandboxes.docker import engine
from agents.sandboxes.docker.sandbox import (
    LABEL_HUB,
    LABEL_POOL,
    POOL_NAME_PREFIX,
    DockerSandbox,
    hub_label,
)
from agents.sandboxes.warmpool import WarmSlot

_POOL_START_THREADS = 4


def docker_pool_refill(*, node: str, size: int | None = None) -> dict[str, list[str]]:
    """Bring the node's ready, unclaimed pool containers to ``size`` (default: the setting).

    Dead or half-made unclaimed slots are removed first. Claimed slots are
    their agents' (and, once those are gone, the reconciler's).
    """
    target = settings.FLOTILLA_DOCKER_WARM_POOL if size is None else size
    report: dict[str, list[str]] = {"started": [], "removed": []}
    if target == 0 and not warmpool.pool_root(node).exists():
        return report  # the pool is off and was never on: no engine call
    api = engine.docker_api()
    with warmpool.pool_lock(node):
        _pool_prune(api, node, report)
        ready = [slot for slot in warmpool.slots(node) if slot.claimant() is None]
        for _ in range(len(ready) - target):
            slot = warmpool.slot_claim(
                node=node, claimant=warmpool.MAINTENANCE_CLAIM, candidates=ready
            )
            if slot is None:
                break  # spawns took the surplus
            _pool_slot_remove(api, slot)
            report["removed"].append(slot.name)
        missing = target - len(ready)
        if missing > 0:
            warmpool.pool_root_share(node)
            with ThreadPoolExecutor(max_workers=min(missing, _POOL_START_THREADS)) as threads:
                report["started"] = list(
                    threads.map(lambda _: _pool_slot_start(api, node), range(missing))
                )
        if target == 0:
            warmpool.pool_root_unshare(node)
    return report


def docker_pool_drain(*, node: str) -> dict[str, list[str]]:
    """Remove every unclaimed pool container and its slot (a hub that stops, a test)."""
    return docker_pool_refill(node=node, size=0)


def docker_pool_claims(*, node: str) -> dict[str, str]:
    """Slot path → claimant of every claimed slot; the reconciler lists these before live agents."""
    return {
        str(slot.path): claimant
        for slot in warmpool.slots(node)
        if (claimant := slot.claimant()) is not None
    }


def docker_pool_sweep(*, node: str, claims: dict[str, str], live: set[str]) -> list[str]:
    """Release the slots claimed by agents that are no longer live; returns "slot:agent" items."""
    released: list[str] = []
    stale = {path: claimant for path, claimant in claims.items() if claimant not in live}
    if not stale:
        return released
    api = engine.docker_api()
    with warmpool.pool_lock(node):
        for path, claimant in stale.items():
            slot = WarmSlot(Path(path))
            if slot.claimant() != claimant:
                continue  # released meanwhile
            _pool_slot_remove(api, slot)
            released.append(f"{slot.name}:{claimant}")
    return released


def _pool_slot_start(api: engine.APIClient, node: str) -> str:
    slot = warmpool.slot_create(node)
    name = f"{POOL_NAME_PREFIX}{slot.name}"
    uid = settings.FLOTILLA_SANDBOX_UID
    spec = SandboxSpec(
        agent_id="",
        workspace=slot.workspace,
        memory_mb=settings.FLOTILLA_SANDBOX_MEMORY_MB,
        pids=settings.FLOTILLA_SANDBOX_PIDS,
        cpus=settings.FLOTILLA_SANDBOX_CPUS,
        max_file_bytes=settings.FLOTILLA_MAX_WORKTREE_MB << 20,
    )
    config = DockerSandbox()._container_config(spec, name, uid, slot=slot)
    try:
        created = api.create_container(**config)
        api.start(created["Id"])
        pid = api.inspect_container(created["Id"])["State"]["Pid"]
    except Exception as error:  # the SDK raises several unrelated types here
        _pool_slot_remove(api, slot, container=name)
        if isinstance(error, engine.ImageNotFound):
            raise SandboxUnavailable(
                f"the sandbox image {settings.FLOTILLA_DOCKER_IMAGE} is "
                "missing: build it with `python manage.py sandbox_image`"
            ) from None
        raise SandboxError(f"cannot start a warm pool container: {error}") from None
    warmpool.slot_ready(
        slot, container_id=created["Id"], name=name, cgroup_procs=cgroup_procs_file_of(pid)
    )
    return slot.name


def _pool_slot_remove(api: engine.APIClient, slot: WarmSlot, container: str = "") -> None:
    """Remove the slot's container (by id: it may carry an agent's name by now), then the slot."""
    target = container or (slot.container() or {}).get("id", "")
    try:
        if target:
            with contextlib.suppress(engine.NotFound):
                api.remove_container(target, force=True, v=True)
    finally:
        warmpool.slot_release(slot)


def _pool_prune(api: engine.APIClient, node: str, report: dict[str, list[str]]) -> None:
    """Remove unclaimed slots whose container is not running, and pool containers with no slot."""
    try:
        listed = api.containers(
            all=True, filters={"label": [f"{LABEL_HUB}={hub_label(node)}", LABEL_POOL]}
        )
    except Exception as error:
        raise engine.engine_error(error) from None
    running = {container["Id"] for container in listed if container.get("State") == "running"}
    by_slot = {container["Labels"].get(LABEL_POOL): container for container in listed}
    for slot in warmpool.slots(node):
        found = by_slot.pop(str(slot.path), None)
        if slot.claimant() is not None:
            continue
        record = slot.container()
        if record is not None:
            if record["id"] in running:
                continue
            # A spawn may be claiming it right now: take it through a claim too.
            if not warmpool.slot_claim(
                node=node, claimant=warmpool.MAINTENANCE_CLAIM, candidates=[slot]
            ):
                continue
        # Without a record, a refill died half-way through making it (refills hold the lock).
        _pool_slot_remove(api, slot, container=found["Id"] if found else "")
        report["removed"].append(slot.name)
    for container in by_slot.values():
        name = (container.get("Names") or [""])[0].lstrip("/")
        if name.startswith(POOL_NAME_PREFIX):  # an agent's container is its agent's business
            with contextlib.suppress(engine.NotFound):
                api.remove_container(container["Id"], force=True, v=True)
            report["removed"].append(name)
