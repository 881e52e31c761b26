"""Docker sandbox: one hardened container per agent.

The image is built locally (``manage.py sandbox_image``, image.py) from an
almost empty root: the host's system directories are bound read-only when a
container starts, as the bubblewrap sandbox does, so no registry is ever needed.

A container is named after its agent and labelled with the agent id and the
hub's node name, so a kill and the reconciler find it from any process.
"""

import collections
import logging
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from django.conf import settings

from agents.sandboxes import warmpool
from agents.sandboxes.base import (
    AGENT_HOME,
    AGENT_LABEL,
    EGRESS_SOCKET,
    ETC_FILES,
    MODEL_SOCKET,
    SYSTEM_DIRS,
    WORKSPACE,
    ExecResult,
    OutputSink,
    Sandbox,
    SandboxError,
    SandboxHandle,
    SandboxSpec,
    SandboxUnavailable,
    agent_clis_dir,
    sandbox_command,
    sandbox_environment,
    sandbox_search_path,
    sandbox_toolchain,
)
from agents.sandboxes.cgroups import cgroup_procs_file_of, cgroup_procs_kill, cgroup_session_kill
from agents.sandboxes.docker import engine
from agents.sandboxes.warmpool import WarmPoolError, WarmSlot

logger = logging.getLogger(__name__)

LABEL_AGENT = "flotilla.agent_id"
LABEL_HUB = "flotilla.hub"
LABEL_POOL = "flotilla.pool"
NAME_PREFIX = "flotilla-agent-"
POOL_NAME_PREFIX = "flotilla-pool-"

_MAX_LINE = 2000
_FLUSH_EVERY_S = 0.2


def container_name(agent_id: str) -> str:
    return f"{NAME_PREFIX}{agent_id}"


def hub_label(node: str) -> str:
    """The ``flotilla.hub`` label of this hub's containers on ``node``.

    The node name alone is not enough: two hubs on one machine (one Docker
    engine) both default to the host name, and each would sweep away the
    other's containers. The hub's own id (kept in its DATA_DIR) tells them apart.
    """
    return f"{node}/{settings.FLOTILLA_HUB_UID}"


def docker_handle(agent_id: str) -> SandboxHandle:
    """A handle that reaches an agent's container by name alone (for the reconciler)."""
    return {"backend": "docker", "agent_id": agent_id, "container": container_name(agent_id)}


class DockerSandbox(Sandbox):
    name = "docker"

    def __init__(self) -> None:
        self.api = engine.docker_api()

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
        if spec.egress_socket:
            handle["egress_socket"] = spec.egress_socket
        if spec.model_socket:
            handle["model_socket"] = spec.model_socket
        if spec.home:
            # Each exec's environment (sandbox_environment) carries the spec's, as
            # bwrap's does: without it an exec's HOME would be /tmp, not the home.
            handle.update(home=spec.home, env=dict(spec.env))
        config = self._container_config(spec, name, uid)
        try:
            created = self._create(handle, config)
            self.api.start(created["Id"])
            state = self.api.inspect_container(created["Id"])["State"]
        except engine.ImageNotFound:
            raise SandboxUnavailable(
                f"the sandbox image {settings.FLOTILLA_DOCKER_IMAGE} is missing: "
                "build it with `python manage.py sandbox_image`"
            ) from None
        except engine.APIError as error:
            self.remove(handle)
            raise SandboxError(f"cannot start the sandbox container: {error.explanation}") from None
        except Exception as error:
            raise engine.engine_error(error) from None
        handle["cgroup_procs"] = cgroup_procs_file_of(state["Pid"])
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
            except engine.NotFound:
                return False
            except engine.APIError as error:
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
            created: dict[str, Any] = self.api.create_container(**config)
            return created
        except engine.APIError as error:
            if error.status_code != 409:
                raise
        # The name is taken: a retried agent found the container of its previous attempt.
        self.remove(handle)
        created = self.api.create_container(**config)
        return created

    def _container_config(
        self, spec: SandboxSpec, name: str, uid: int, *, slot: WarmSlot | None = None
    ) -> dict[str, Any]:
        labels = {LABEL_HUB: hub_label(settings.FLOTILLA_NODE_NAME)}
        environment = {"PATH": sandbox_search_path(), "HOME": "/tmp", "LANG": "C.UTF-8"}
        if slot is not None:
            # A pool container: the worktree is mounted onto the slot directory
            # when a spawn claims it, and reaches /workspace through propagation.
            slot_mount = engine.Mount(
                WORKSPACE, str(slot.workspace), type="bind", propagation="rslave"
            )
            mounts = [*system_mounts(), slot_mount]
            labels[LABEL_POOL] = str(slot.path)
        else:
            mounts = [*system_mounts(), *workspace_mounts(spec.workspace)]
            if spec.egress_socket:
                mounts.append(
                    engine.Mount(EGRESS_SOCKET, spec.egress_socket, type="bind", read_only=True)
                )
            if spec.model_socket:
                mounts.append(
                    engine.Mount(MODEL_SOCKET, spec.model_socket, type="bind", read_only=True)
                )
            if spec.home:
                mounts.append(engine.Mount(AGENT_HOME, spec.home, type="bind"))
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
            # Never a network of its own, whatever the mode: egress goes through
            # the hub's proxy over the socket mounted above, which alone decides
            # what may be reached (DESIGN.md, "Network policy").
            network_mode="none",
            init=True,
            ulimits=_file_size_limit(spec.max_file_bytes),
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
            exec_id = self.api.exec_create(
                handle["container"],
                sandbox_command(handle, command),
                user=f"{uid}:{uid}",
                workdir=WORKSPACE,
                environment=sandbox_environment(handle),
            )["Id"]
            stream = self.api.exec_start(exec_id, stream=True)
        except engine.NotFound:
            raise SandboxError("the sandbox container is gone (was the agent killed?)") from None
        except engine.APIError as error:
            raise SandboxError(f"cannot run in the sandbox: {error.explanation}") from None
        output = _Output(stream)
        timed_out, exit_code = self._wait(exec_id, output, started + timeout_s, on_output)
        # Whatever the command left behind (a daemon holding its output open,
        # or all of it on a timeout) must not run on into the next step.
        cgroup_session_kill(handle.get("cgroup_procs", ""), self._exec_pid(exec_id))
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
    ) -> tuple[bool, int | None]:
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
            info: dict[str, Any] = self.api.exec_inspect(exec_id)
        except engine.APIError:
            return None
        return info

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
        if not cgroup_procs_kill(handle.get("cgroup_procs", "")):
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
        except engine.NotFound:
            pass
        except engine.APIError as error:
            if error.status_code != 409:  # 409: a removal is already in progress
                raise SandboxError(f"cannot remove the sandbox container: {error}") from None
            _wait_gone(self.api, handle["container"])

    def live_agent_ids(self) -> set[str]:
        return set(self.containers_by_agent(running_only=True))

    def containers_by_agent(
        self, *, node: str | None = None, running_only: bool = False
    ) -> dict[str, str]:
        """Agent id → container name, for the agent containers of a hub (by default all)."""
        hub = hub_label(node or settings.FLOTILLA_NODE_NAME)
        try:
            containers = self.api.containers(
                all=not running_only, filters={"label": f"{LABEL_HUB}={hub}"}
            )
        except Exception as error:
            raise engine.engine_error(error) from None
        found: dict[str, str] = {}
        for container in containers:
            name = container["Names"][0].lstrip("/") if container.get("Names") else ""
            agent_id = container["Labels"].get(LABEL_AGENT) or ""
            if not agent_id and name.startswith(NAME_PREFIX):
                agent_id = name.removeprefix(NAME_PREFIX)
            if agent_id:
                found[agent_id] = name
        return found


def workspace_mounts(workspace: Path) -> list[engine.Mount]:
    mounts = [engine.Mount(WORKSPACE, str(workspace), type="bind")]
    git_file = Path(workspace) / ".git"
    if git_file.exists():
        # The worktree's .git file points the hub's git at its metadata;
        # the agent may read it but never redirect it.
        mounts.append(engine.Mount(f"{WORKSPACE}/.git", str(git_file), type="bind", read_only=True))
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


def system_mounts() -> list[engine.Mount]:
    """The host's system directories, read-only, at the same places."""
    mounts = [engine.Mount("/usr", "/usr", type="bind", read_only=True)]
    for directory in SYSTEM_DIRS:
        path = Path(directory)
        if path.is_dir() and not path.is_symlink() and directory != "/sbin":
            mounts.append(engine.Mount(directory, directory, type="bind", read_only=True))
    tools = [str(path) for path in (sandbox_toolchain(), agent_clis_dir()) if path]
    for extra in (*ETC_FILES, *settings.FLOTILLA_SANDBOX_RO_BINDS, *tools):
        if Path(extra).exists():
            mounts.append(engine.Mount(str(extra), str(extra), type="bind", read_only=True))
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
                # Output with no newline must not pile up in the worker.
                if len(buffered) > _MAX_LINE:
                    lines.append(buffered)
                    buffered = b""
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


def _file_size_limit(max_file_bytes: int) -> list[engine.Ulimit]:
    if not max_file_bytes:
        return []
    return [engine.Ulimit(name="fsize", soft=max_file_bytes, hard=max_file_bytes)]


def _wait_gone(api: engine.APIClient, name: str, wait_s: float = 5.0) -> None:
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        try:
            api.inspect_container(name)
        except engine.NotFound:
            return
        time.sleep(0.02)


# --- claiming from the warm pool ------------------------------------------------
# FLOTILLA_DOCKER_WARM_POOL started containers wait for spawns (docs/docker-and-reconciler.md);
# pool.py fills and sweeps the pool.


def pool_fits(spec: SandboxSpec) -> bool:
    """Whether a pool container (made with the default limits, no network) can serve ``spec``."""
    return (
        settings.FLOTILLA_DOCKER_WARM_POOL > 0
        and not spec.egress_socket
        and not spec.model_socket
        and not spec.home
        and spec.memory_mb == settings.FLOTILLA_SANDBOX_MEMORY_MB
        and spec.pids == settings.FLOTILLA_SANDBOX_PIDS
        and spec.cpus == settings.FLOTILLA_SANDBOX_CPUS
        and spec.max_file_bytes == settings.FLOTILLA_MAX_WORKTREE_MB << 20
    )


def docker_pool_refill_enqueue() -> None:
    """Ask a worker to top the pool up (a django-q2 task, never a thread of the caller)."""
    from django_q.tasks import async_task

    async_task("agents.tasks.docker_pool_refill", task_name="docker-pool-refill", group="pool")
