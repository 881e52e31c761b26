"""Docker sandbox: one hardened container per agent. The only module that imports ``docker``.

The image is built locally (``manage.py sandbox_image``) from an almost empty
root: the host's system directories are bound read-only when a container
starts, as the bubblewrap sandbox does, so no registry is ever needed.

A container is named after its agent and labelled with the agent id and the
hub's node name, so a kill and the reconciler find it from any process.
"""

import collections
import contextlib
import hashlib
import io
import json
import logging
import os
import signal
import subprocess
import tarfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import docker
import docker.errors
import docker.utils
from django.conf import settings
from docker.types import Mount

from agents.sandboxes import warmpool
from agents.sandboxes.base import (
    AGENT_LABEL,
    ETC_FILES,
    SYSTEM_DIRS,
    WORKSPACE,
    ExecResult,
    OutputSink,
    Sandbox,
    SandboxError,
    SandboxHandle,
    SandboxSpec,
    SandboxUnavailable,
    sandbox_search_path,
    sandbox_toolchain,
)
from agents.sandboxes.warmpool import WarmPoolError, WarmSlot

logger = logging.getLogger(__name__)

LABEL_AGENT = "flotilla.agent_id"
LABEL_HUB = "flotilla.hub"
LABEL_POOL = "flotilla.pool"
LABEL_LAYOUT = "flotilla.layout"
NAME_PREFIX = "flotilla-agent-"
POOL_NAME_PREFIX = "flotilla-pool-"

_EMPTY_DIRS = ("usr", "etc", "tmp", "proc", "dev", "sys", "workspace")
# Docker places its init at /sbin/docker-init, so /sbin stays a real (empty)
# directory even where the host's is a link into the read-only /usr.
_MAX_LINE = 2000
_FLUSH_EVERY_S = 0.2

_clients: dict[int, docker.APIClient] = {}
_clients_lock = threading.Lock()


def _engine_error(error: Exception) -> SandboxUnavailable:
    return SandboxUnavailable(
        f"the Docker engine is not reachable ({type(error).__name__}: {error}); "
        "start it (scripts/docker-up) or choose another sandbox"
    )


def docker_api() -> docker.APIClient:
    """One client per process: a forked worker must not share its parent's connections."""
    pid = os.getpid()
    with _clients_lock:
        client = _clients.get(pid)
        if client is None:
            try:
                client = docker.from_env(timeout=settings.FLOTILLA_DOCKER_TIMEOUT_S).api
                client.ping()
            except Exception as error:  # the SDK raises several unrelated types here
                raise _engine_error(error) from None
            _clients[pid] = client
    return client


def container_name(agent_id: str) -> str:
    return f"{NAME_PREFIX}{agent_id}"


def docker_handle(agent_id: str) -> SandboxHandle:
    """A handle that reaches an agent's container by name alone (for the reconciler)."""
    return {"backend": "docker", "agent_id": agent_id, "container": container_name(agent_id)}


class DockerSandbox(Sandbox):
    name = "docker"

    def __init__(self) -> None:
        self.api = docker_api()

    def start(self, spec: SandboxSpec) -> SandboxHandle:
        uid = settings.FLOTILLA_SANDBOX_UID
        workspace_chown(spec.workspace, uid)
        if pool_fits(spec):
            warm = self._start_warm(spec, uid)
            if warm is not None:
                return warm
        name = container_name(spec.agent_id)
        handle: SandboxHandle = {
            "backend": self.name,
            "agent_id": spec.agent_id,
            "container": name,
            "uid": uid,
            "workspace": str(spec.workspace),
        }
        config = self._container_config(spec, name, uid)
        try:
            created = self._create(handle, config)
            self.api.start(created["Id"])
            state = self.api.inspect_container(created["Id"])["State"]
        except docker.errors.ImageNotFound:
            raise SandboxUnavailable(
                f"the sandbox image {settings.FLOTILLA_DOCKER_IMAGE} is missing: "
                "build it with `python manage.py sandbox_image`"
            ) from None
        except docker.errors.APIError as error:
            self.remove(handle)
            raise SandboxError(f"cannot start the sandbox container: {error.explanation}") from None
        except Exception as error:
            raise _engine_error(error) from None
        handle["cgroup_procs"] = _cgroup_procs_file(state["Pid"])
        return handle

    def _start_warm(self, spec: SandboxSpec, uid: int) -> SandboxHandle | None:
        """Claim a started pool container and mount the worktree into it; None if none is ready."""
        node = settings.FLOTILLA_NODE_NAME
        name = container_name(spec.agent_id)
        try:
            while (slot := warmpool.slot_claim(node=node, claimant=spec.agent_id)) is not None:
                record = slot.container() or {}
                handle: SandboxHandle = {
                    "backend": self.name,
                    "agent_id": spec.agent_id,
                    "container": name,
                    "container_id": record.get("id", ""),
                    "uid": uid,
                    "workspace": str(spec.workspace),
                    "cgroup_procs": record.get("cgroup_procs", ""),
                    "warm_slot": str(slot.path),
                    "env": {AGENT_LABEL: spec.agent_id, **spec.env},
                }
                if not self._rename_claimed(record.get("id", ""), name, spec.agent_id, slot):
                    warmpool.slot_release(slot)  # its container died: try the next slot
                    continue
                try:
                    warmpool.slot_attach(slot, spec.workspace)
                except WarmPoolError:
                    self.remove(handle)
                    raise
                return handle
            return None
        finally:
            docker_pool_refill_enqueue()

    def _rename_claimed(self, container_id: str, name: str, agent_id: str, slot: WarmSlot) -> bool:
        """Give a claimed pool container its agent's name; False when the container is gone.

        The name makes ``docker ps``, a kill by name and the reconciler find it
        (labels cannot change). The claim is already exclusive, so the rename
        never races another spawn.
        """
        for _ in range(2):
            try:
                self.api.rename(container_id, name)
                return True
            except docker.errors.NotFound:
                return False
            except docker.errors.APIError as error:
                if error.status_code != 409:
                    raise SandboxError(f"cannot claim a warm container: {error}") from None
            # The name is taken: a retried agent found the container of its previous attempt.
            previous = {"backend": self.name, "agent_id": agent_id, "container": name}
            self._remove_container(previous)
            for stale in warmpool.slots_claimed_by(settings.FLOTILLA_NODE_NAME, agent_id):
                if stale != slot:
                    warmpool.slot_release(stale)
        return False

    def _create(self, handle: SandboxHandle, config: dict[str, Any]) -> dict[str, Any]:
        try:
            return self.api.create_container(**config)
        except docker.errors.APIError as error:
            if error.status_code != 409:
                raise
        # The name is taken: a retried agent found the container of its previous attempt.
        self.remove(handle)
        return self.api.create_container(**config)

    def _container_config(
        self, spec: SandboxSpec, name: str, uid: int, *, slot: WarmSlot | None = None
    ) -> dict[str, Any]:
        labels = {LABEL_HUB: settings.FLOTILLA_NODE_NAME}
        environment = {"PATH": sandbox_search_path(), "HOME": "/tmp", "LANG": "C.UTF-8"}
        if slot is not None:
            # A pool container: the worktree is mounted onto the slot directory
            # when a spawn claims it, and reaches /workspace through propagation.
            slot_mount = Mount(WORKSPACE, str(slot.workspace), type="bind", propagation="rslave")
            mounts = [*system_mounts(), slot_mount]
            labels[LABEL_POOL] = str(slot.path)
        else:
            mounts = [*system_mounts(), *workspace_mounts(spec.workspace)]
            labels[LABEL_AGENT] = spec.agent_id
            environment.update({AGENT_LABEL: spec.agent_id, **spec.env})
        memory = spec.memory_mb * 1024 * 1024
        host_config = self.api.create_host_config(
            mounts=mounts,
            tmpfs={"/tmp": "rw,nosuid,nodev,mode=1777"},
            read_only=True,
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
            pids_limit=spec.pids,
            mem_limit=memory,
            memswap_limit=memory,
            nano_cpus=int(spec.cpus * 1e9),
            network_mode="bridge" if spec.network else "none",
            init=True,
        )
        return {
            "image": settings.FLOTILLA_DOCKER_IMAGE,
            "command": ["/bin/sleep", "infinity"],
            "name": name,
            "hostname": "sandbox",
            "user": f"{uid}:{uid}",
            "working_dir": WORKSPACE,
            "environment": environment,
            "labels": labels,
            "host_config": host_config,
        }

    def exec(
        self,
        handle: SandboxHandle,
        command: str,
        *,
        timeout_s: float,
        on_output: OutputSink | None = None,
    ) -> ExecResult:
        started = time.monotonic()
        uid = handle["uid"]
        try:
            argv = ["/bin/sh", "-c", command]
            exec_id = self.api.exec_create(
                handle["container"],
                argv,
                user=f"{uid}:{uid}",
                workdir=WORKSPACE,
                environment=handle.get("env"),
            )["Id"]
            stream = self.api.exec_start(exec_id, stream=True)
        except docker.errors.NotFound:
            raise SandboxError("the sandbox container is gone (was the agent killed?)") from None
        except docker.errors.APIError as error:
            raise SandboxError(f"cannot run in the sandbox: {error.explanation}") from None
        output = _Output(stream)
        timed_out, exit_code = self._wait(exec_id, output, started + timeout_s, on_output)
        # Whatever the command left behind (a daemon holding its output open,
        # or all of it on a timeout) must not run on into the next step.
        _kill_session(handle, self._exec_pid(exec_id))
        output.reader.join(timeout=5)
        output.flush(on_output)
        if not timed_out and exit_code is None:
            exit_code = self._exit_code(exec_id)
        return ExecResult(
            exit_code=None if timed_out else exit_code,
            timed_out=timed_out,
            output_tail="\n".join(output.tail),
            duration_s=time.monotonic() - started,
        )

    def _wait(
        self, exec_id: str, output: "_Output", deadline: float, on_output: OutputSink | None
    ) -> tuple[bool, Any]:
        """Wait for the output to end or the command to exit; (timed_out, exit code if known).

        Output reaches the sink from this thread at most ``_FLUSH_EVERY_S`` late.
        """
        check_every, next_check = 0.05, time.monotonic() + 0.05
        while True:
            now = time.monotonic()
            if now >= deadline:
                return True, None
            output.reader.join(timeout=min(_FLUSH_EVERY_S, deadline - now))
            output.flush(on_output)
            if not output.reader.is_alive():
                return False, None
            if time.monotonic() < next_check:
                continue
            # The output can stay open after the command exits, held by a
            # process it started in the background: ask the engine instead.
            check_every = min(check_every * 2, 1.0)
            next_check = time.monotonic() + check_every
            info = self._exec_info(exec_id)
            if info is not None and not info.get("Running"):
                return False, info.get("ExitCode")

    def _exec_info(self, exec_id: str) -> dict[str, Any] | None:
        try:
            return self.api.exec_inspect(exec_id)
        except docker.errors.APIError:
            return None

    def _exec_pid(self, exec_id: str) -> int:
        info = self._exec_info(exec_id)
        return int(info.get("Pid") or 0) if info else 0

    def _exit_code(self, exec_id: str) -> int | None:
        # The output may end a moment before the engine records the exit.
        deadline = time.monotonic() + 2
        while True:
            info = self._exec_info(exec_id)
            if info is None:
                return None
            if not info.get("Running") or time.monotonic() > deadline:
                return info.get("ExitCode")
            time.sleep(0.01)

    def kill(self, handle: SandboxHandle) -> None:
        # SIGKILL from the host to every process in the container's cgroup
        # takes microseconds; the engine's own kill waits on its bookkeeping.
        # The container itself goes in ``remove``, which also kills.
        if not _kill_cgroup(handle.get("cgroup_procs", "")):
            self.remove(handle)

    def remove(self, handle: SandboxHandle) -> None:
        """Remove the container, then release its warm-pool slot if it came from the pool."""
        try:
            self._remove_container(handle)
        finally:
            _slots_release(handle)

    def _remove_container(self, handle: SandboxHandle) -> None:
        try:
            self.api.remove_container(handle["container"], force=True, v=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as error:
            if error.status_code != 409:  # 409: a removal is already in progress
                raise SandboxError(f"cannot remove the sandbox container: {error}") from None
            _wait_gone(self.api, handle["container"])

    def live_agent_ids(self) -> set[str]:
        return set(self.containers_by_agent(running_only=True))

    def containers_by_agent(
        self, *, node: str | None = None, running_only: bool = False
    ) -> dict[str, str]:
        """Agent id → container name, for the agent containers of a hub (by default all)."""
        hub = node or settings.FLOTILLA_NODE_NAME
        try:
            containers = self.api.containers(
                all=not running_only, filters={"label": f"{LABEL_HUB}={hub}"}
            )
        except Exception as error:
            raise _engine_error(error) from None
        found: dict[str, str] = {}
        for container in containers:
            name = container["Names"][0].lstrip("/") if container.get("Names") else ""
            agent_id = container["Labels"].get(LABEL_AGENT) or ""
            if not agent_id and name.startswith(NAME_PREFIX):
                agent_id = name.removeprefix(NAME_PREFIX)
            if agent_id:
                found[agent_id] = name
        return found


def workspace_mounts(workspace: Path) -> list[Mount]:
    mounts = [Mount(WORKSPACE, str(workspace), type="bind")]
    git_file = Path(workspace) / ".git"
    if git_file.exists():
        # The worktree's .git file points the hub's git at its metadata;
        # the agent may read it but never redirect it.
        mounts.append(Mount(f"{WORKSPACE}/.git", str(git_file), type="bind", read_only=True))
    return mounts


def _slots_release(handle: SandboxHandle) -> None:
    """Release the warm slot a handle names, or any slot claimed by its agent (a bare handle)."""
    if handle.get("warm_slot"):
        found = [WarmSlot(Path(handle["warm_slot"]))]
    else:
        found = warmpool.slots_claimed_by(settings.FLOTILLA_NODE_NAME, handle.get("agent_id", ""))
    for slot in found:
        warmpool.slot_release(slot)


def workspace_chown(workspace: Path, uid: int) -> None:
    # The sandbox user must own its worktree to write to it; the hub (root)
    # still commits there, with safe.directory set by the workspace module.
    chown = subprocess.run(
        ["chown", "-R", f"{uid}:{uid}", str(workspace)], capture_output=True, text=True
    )
    if chown.returncode != 0:
        raise SandboxError(f"cannot hand the worktree to the sandbox user: {chown.stderr}")


def system_mounts() -> list[Mount]:
    """The host's system directories, read-only, at the same places."""
    mounts = [Mount("/usr", "/usr", type="bind", read_only=True)]
    for directory in SYSTEM_DIRS:
        path = Path(directory)
        if path.is_dir() and not path.is_symlink() and directory != "/sbin":
            mounts.append(Mount(directory, directory, type="bind", read_only=True))
    toolchain = sandbox_toolchain()
    for extra in (
        *ETC_FILES,
        *settings.FLOTILLA_SANDBOX_RO_BINDS,
        *([toolchain] if toolchain else []),
    ):
        if Path(extra).exists():
            mounts.append(Mount(str(extra), str(extra), type="bind", read_only=True))
    return mounts


class _Output:
    """Reads an exec's output stream in a thread; lines wait in ``pending`` for the sink."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.tail: collections.deque[str] = collections.deque(
            maxlen=settings.FLOTILLA_OUTPUT_TAIL_LINES
        )
        self.pending: list[str] = []
        self.lock = threading.Lock()
        self.reader = threading.Thread(target=self._read, daemon=True, name="docker-output")
        self.reader.start()

    def _read(self) -> None:
        buffered = b""
        try:
            for chunk in self.stream:
                buffered += chunk
                *lines, buffered = buffered.split(b"\n")
                self._add(lines)
        except Exception as error:  # the connection drops when the container is removed
            logger.debug("sandbox output stream ended: %s", error)
        if buffered:
            self._add([buffered])

    def _add(self, lines: list[bytes]) -> None:
        decoded = [raw.decode("utf-8", errors="replace")[:_MAX_LINE] for raw in lines]
        with self.lock:
            self.tail.extend(decoded)
            self.pending.extend(decoded)

    def flush(self, on_output: OutputSink | None) -> None:
        with self.lock:
            batch, self.pending = self.pending, []
        if on_output and batch:
            on_output(batch)


def _cgroup_procs_file(pid: int) -> str:
    """The cgroup.procs file listing every process of the container whose init is ``pid``."""
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return ""
    root = Path(settings.FLOTILLA_CGROUP_ROOT)
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if "pids" in controllers.split(","):
            return str(root / "pids" / path.lstrip("/") / "cgroup.procs")
    for line in lines:
        if line.startswith("0::"):
            return str(root / line[3:].lstrip("/") / "cgroup.procs")
    return ""


def _kill_session(handle: SandboxHandle, session_pid: int, rounds: int = 50) -> None:
    """SIGKILL every container process in the session (or group) an exec started.

    Only processes listed in the container's own cgroup are considered, so a
    recycled host pid can never be hit.
    """
    procs_file = handle.get("cgroup_procs")
    if not session_pid or not procs_file:
        return
    for _ in range(rounds):
        try:
            members = [int(pid) for pid in Path(procs_file).read_text().split()]
        except OSError:
            return
        targets = [pid for pid in members if session_pid in _group_and_session(pid)]
        if not targets:
            return
        for pid in targets:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.005)


def _kill_cgroup(procs_file: str, rounds: int = 50) -> bool:
    """SIGKILL every process listed in ``procs_file``; True once none is left."""
    if not procs_file:
        return False
    for _ in range(rounds):
        try:
            members = [int(pid) for pid in Path(procs_file).read_text().split()]
        except OSError:
            return True  # the cgroup is gone with its container
        if not members:
            return True
        for pid in members:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.002)
    return False


def _group_and_session(pid: int) -> tuple[int, int]:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return (0, 0)
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[2]), int(fields[3])


def _wait_gone(api: docker.APIClient, name: str, wait_s: float = 5.0) -> None:
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        try:
            api.inspect_container(name)
        except docker.errors.NotFound:
            return
        time.sleep(0.02)


# --- the warm pool -----------------------------------------------------------
# FLOTILLA_DOCKER_WARM_POOL started containers wait for spawns (docs/docker-and-reconciler.md).

_POOL_START_THREADS = 4


def pool_fits(spec: SandboxSpec) -> bool:
    """Whether a pool container (made with the default limits, no network) can serve ``spec``."""
    return (
        settings.FLOTILLA_DOCKER_WARM_POOL > 0
        and not spec.network
        and spec.memory_mb == settings.FLOTILLA_SANDBOX_MEMORY_MB
        and spec.pids == settings.FLOTILLA_SANDBOX_PIDS
        and spec.cpus == settings.FLOTILLA_SANDBOX_CPUS
    )


def docker_pool_refill_enqueue() -> None:
    """Ask a worker to top the pool up (a django-q2 task, never a thread of the caller)."""
    from django_q.tasks import async_task

    async_task("agents.tasks.docker_pool_refill", task_name="docker-pool-refill", group="pool")


def docker_pool_refill(*, node: str, size: int | None = None) -> dict[str, list[str]]:
    """Bring the node's ready, unclaimed pool containers to ``size`` (default: the setting).

    Dead or half-made unclaimed slots are removed first. Claimed slots are
    their agents' (and, once those are gone, the reconciler's).
    """
    target = settings.FLOTILLA_DOCKER_WARM_POOL if size is None else size
    report: dict[str, list[str]] = {"started": [], "removed": []}
    if target == 0 and not warmpool.pool_root(node).exists():
        return report  # the pool is off and was never on: no engine call
    api = docker_api()
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
    api = docker_api()
    with warmpool.pool_lock(node):
        for path, claimant in stale.items():
            slot = WarmSlot(Path(path))
            if slot.claimant() != claimant:
                continue  # released meanwhile
            _pool_slot_remove(api, slot)
            released.append(f"{slot.name}:{claimant}")
    return released


def _pool_slot_start(api: docker.APIClient, node: str) -> str:
    slot = warmpool.slot_create(node)
    name = f"{POOL_NAME_PREFIX}{slot.name}"
    uid = settings.FLOTILLA_SANDBOX_UID
    spec = SandboxSpec(
        agent_id="",
        workspace=slot.workspace,
        memory_mb=settings.FLOTILLA_SANDBOX_MEMORY_MB,
        pids=settings.FLOTILLA_SANDBOX_PIDS,
        cpus=settings.FLOTILLA_SANDBOX_CPUS,
    )
    config = DockerSandbox()._container_config(spec, name, uid, slot=slot)
    try:
        created = api.create_container(**config)
        api.start(created["Id"])
        pid = api.inspect_container(created["Id"])["State"]["Pid"]
    except Exception as error:  # the SDK raises several unrelated types here
        _pool_slot_remove(api, slot, container=name)
        if isinstance(error, docker.errors.ImageNotFound):
            raise SandboxUnavailable(
                f"the sandbox image {settings.FLOTILLA_DOCKER_IMAGE} is "
                "missing: build it with `python manage.py sandbox_image`"
            ) from None
        raise SandboxError(f"cannot start a warm pool container: {error}") from None
    warmpool.slot_ready(
        slot, container_id=created["Id"], name=name, cgroup_procs=_cgroup_procs_file(pid)
    )
    return slot.name


def _pool_slot_remove(api: docker.APIClient, slot: WarmSlot, container: str = "") -> None:
    """Remove the slot's container (by id: it may carry an agent's name by now), then the slot."""
    target = container or (slot.container() or {}).get("id", "")
    try:
        if target:
            with contextlib.suppress(docker.errors.NotFound):
                api.remove_container(target, force=True, v=True)
    finally:
        warmpool.slot_release(slot)


def _pool_prune(api: docker.APIClient, node: str, report: dict[str, list[str]]) -> None:
    """Remove unclaimed slots whose container is not running, and pool containers with no slot."""
    try:
        listed = api.containers(all=True, filters={"label": [f"{LABEL_HUB}={node}", LABEL_POOL]})
    except Exception as error:
        raise _engine_error(error) from None
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
            with contextlib.suppress(docker.errors.NotFound):
                api.remove_container(container["Id"], force=True, v=True)
            report["removed"].append(name)


# --- the sandbox image ------------------------------------------------------


def image_layout() -> list[tuple[str, str]]:
    """What the image holds: symlinks mirroring the host's, and empty mount points."""
    entries = [(name, "dir") for name in _EMPTY_DIRS]
    for directory in SYSTEM_DIRS:
        path = Path(directory)
        if path.is_symlink() and directory != "/sbin":
            entries.append((directory.lstrip("/"), f"symlink:{os.readlink(path)}"))
        elif path.is_dir():
            entries.append((directory.lstrip("/"), "dir"))
    return entries


def _image_tar(layout: list[tuple[str, str]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, kind in layout:
            info = tarfile.TarInfo(name)
            if kind.startswith("symlink:"):
                info.type, info.linkname = tarfile.SYMTYPE, kind.removeprefix("symlink:")
            else:
                info.type, info.mode = tarfile.DIRTYPE, 0o1777 if name == "tmp" else 0o755
            archive.addfile(info)
    return buffer.getvalue()


def docker_image_build(*, rebuild: bool = False) -> tuple[str, bool]:
    """Build the sandbox image unless an identical one exists; (image, whether built)."""
    api = docker_api()
    image = settings.FLOTILLA_DOCKER_IMAGE
    layout = image_layout()
    digest = hashlib.sha256(json.dumps(layout).encode()).hexdigest()[:16]
    try:
        existing = api.inspect_image(image)
    except docker.errors.ImageNotFound:
        existing = None
    labels = (existing or {}).get("Config", {}).get("Labels") or {}
    if not rebuild and labels.get(LABEL_LAYOUT) == digest:
        return image, False
    repository, tag = docker.utils.parse_repository_tag(image)
    uid = settings.FLOTILLA_SANDBOX_UID
    changes = [
        f"LABEL {LABEL_LAYOUT}={digest}",
        f"WORKDIR {WORKSPACE}",
        f"USER {uid}:{uid}",
        'CMD ["/bin/sleep", "infinity"]',
    ]
    try:
        api.import_image_from_data(
            _image_tar(layout), repository=repository, tag=tag or "latest", changes=changes
        )
    except docker.errors.APIError as error:
        raise SandboxError(f"cannot build the sandbox image {image}: {error.explanation}") from None
    if existing and api.inspect_image(image)["Id"] != existing["Id"]:
        # The replaced image is untagged now; a container still using it keeps it.
        with contextlib.suppress(docker.errors.APIError):
            api.remove_image(existing["Id"])
    return image, True


def docker_image_exists() -> bool:
    try:
        docker_api().inspect_image(settings.FLOTILLA_DOCKER_IMAGE)
    except docker.errors.ImageNotFound:
        return False
    return True
