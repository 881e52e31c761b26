"""Shared machinery of the sandboxes that run as local processes (bwrap, process).

Each command starts in its own session (so its own process group) and is
placed in the agent's cgroup before it executes, by a one-line shell prelude
that runs as root, before privileges are dropped.
"""

import collections
import contextlib
import logging
import os
import select
import signal
import subprocess
import threading
import time
from pathlib import Path

from django.conf import settings
from django.db import connections

from agents.childprocess import dying_with_parent
from agents.sandboxes.base import (
    AGENT_LABEL,
    HUB_LABEL,
    ExecResult,
    OutputSink,
    SandboxHandle,
    SandboxSpec,
)
from agents.sandboxes.cgroups import AgentCgroup, agent_cgroup_names, cgroups_available

logger = logging.getLogger(__name__)

# A command whose cgroup is gone (its agent was killed and cleaned up) must
# not run at all, so failing to join is fatal rather than ignored.
JOIN_CGROUP_FAILED = 125
_JOIN_CGROUP = (
    f'for f in $FLOTILLA_CGROUP_PROCS; do echo $$ > "$f" || exit {JOIN_CGROUP_FAILED}; done; '
    'exec "$@"'
)
_MAX_LINE = 2000
_FLUSH_EVERY_S = 0.2


def cgroup_name(agent_id: str) -> str:
    return f"agent-{agent_id}"


def local_handle(backend: str, spec: SandboxSpec) -> SandboxHandle:
    """A local sandbox's handle: its cgroup, made with the spec's limits, its worktree and env."""
    handle: SandboxHandle = {"backend": backend, "agent_id": spec.agent_id}
    if cgroups_available():
        group = AgentCgroup(cgroup_name(spec.agent_id))
        group.create(memory_mb=spec.memory_mb, pids=spec.pids, cpus=spec.cpus)
        handle["cgroup"] = group.name
    else:
        logger.warning(
            "cgroups are not writable here: agent %s runs without hard limits", spec.agent_id
        )
    handle.update(workspace=str(spec.workspace), env=dict(spec.env))
    return handle


def local_exec(
    handle: SandboxHandle,
    argv: list[str],
    *,
    cwd: Path,
    timeout_s: float,
    on_output: OutputSink | None,
    extra_env: dict[str, str] | None = None,
    pass_fds: tuple[int, ...] = (),
    lifeline: bool = False,
) -> ExecResult:
    """Run ``argv`` in a session of its own (and the agent's cgroup), collecting its output.

    With ``lifeline``, the command's stdin is a pipe that the node never writes
    to and closes once the command has exited: end of file on it tells the
    command that its node is done with it, or dead. The command must end
    everything it started then (bwrap's sandbox does, see ``BwrapSandbox.argv``),
    and it gets no parent-death signal: for bwrap that signal is the race, as
    it can kill bwrap's monitor after it made the sandbox's first process but
    before it let it go on, which then waits for ever, with no parent.
    """
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/tmp"),
        **(extra_env or {}),
        AGENT_LABEL: handle["agent_id"],
        HUB_LABEL: settings.FLOTILLA_HUB_UID,
    }
    if handle.get("cgroup"):
        env["FLOTILLA_CGROUP_PROCS"] = " ".join(AgentCgroup(handle["cgroup"]).procs_files())
        argv = ["/bin/sh", "-c", _JOIN_CGROUP, "sh", *argv]
    started = time.monotonic()
    process = subprocess.Popen(
        argv if lifeline else dying_with_parent(argv),
        cwd=cwd,
        env=env,
        stdin=subprocess.PIPE if lifeline else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        pass_fds=pass_fds,
    )
    tail: collections.deque[str] = collections.deque(maxlen=settings.FLOTILLA_OUTPUT_TAIL_LINES)
    reader = threading.Thread(
        target=_pump_output, args=(process, tail, on_output), daemon=True, name="sandbox-output"
    )
    reader.start()
    timed_out = False
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        timed_out = True
        local_kill(handle, extra_pgids=[process.pid])
        process.wait()
    finally:
        # The command has exited: the end of its lifeline ends whatever it left.
        if process.stdin:
            process.stdin.close()
    reader.join(timeout=5)
    # A process that outlived its command's exit (a daemon it forked) must
    # not keep running into the next step: the command's group ends with it.
    _killpg(process.pid)
    return ExecResult(
        exit_code=None if timed_out else process.returncode,
        timed_out=timed_out,
        output_tail="\n".join(tail),
        duration_s=time.monotonic() - started,
    )


def _pump_output(
    process: subprocess.Popen[bytes], tail: collections.deque[str], on_output: OutputSink | None
) -> None:
    """Collect output lines; hand them to the sink at most every 0.2 s, and promptly when idle."""
    assert process.stdout is not None
    fd = process.stdout.fileno()
    pending = b""
    batch: list[str] = []
    last_flush = time.monotonic()

    def take(raw: bytes) -> None:
        line = raw.decode("utf-8", errors="replace").rstrip("\r")[:_MAX_LINE]
        tail.append(line)
        batch.append(line)

    while True:
        ready, _, _ = select.select([fd], [], [], _FLUSH_EVERY_S)
        if ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            *lines, pending = (pending + chunk).split(b"\n")
            for raw in lines:
                take(raw)
            if len(pending) > _MAX_LINE:
                take(pending)
                pending = b""
        idle = not ready or time.monotonic() - last_flush >= _FLUSH_EVERY_S
        if on_output and batch and idle:
            on_output(batch)
            batch, last_flush = [], time.monotonic()
    if pending:
        take(pending)
    if on_output and batch:
        on_output(batch)
    # The sink may have written to the database from this thread.
    connections.close_all()


def local_kill(handle: SandboxHandle, *, extra_pgids: list[int] | None = None) -> None:
    for pgid in extra_pgids or []:
        _killpg(pgid)
    if handle.get("cgroup"):
        AgentCgroup(handle["cgroup"]).kill()
        return
    # Without cgroups, every command's session leader carries the label and
    # leads its own process group: killing those groups is the best we have.
    for pid in labelled_pids(handle["agent_id"]):
        _killpg(pid)


def local_kill_many(handles: list[SandboxHandle], *, wait_s: float = 2.0) -> None:
    """``local_kill`` for many sandboxes: signal every one, then wait for all to empty.

    Killed processes exit in parallel while the next sandbox is signalled, so
    a kill-all costs about one sandbox's exit, not the sum of them.
    """
    groups = [AgentCgroup(handle["cgroup"]) for handle in handles if handle.get("cgroup")]
    for group in groups:
        group.signal()
    for handle in handles:
        if not handle.get("cgroup"):
            local_kill(handle)
    deadline = time.monotonic() + wait_s
    for group in groups:
        group.wait_empty(wait_s=max(0.0, deadline - time.monotonic()))


def local_remove(handle: SandboxHandle) -> None:
    if handle.get("cgroup"):
        group = AgentCgroup(handle["cgroup"])
        group.kill()
        group.remove()


def _killpg(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def labelled_pids(agent_id: str | None = None) -> dict[int, str]:
    """This hub's processes on this machine carrying the agent label, mapped to their agent id.

    Only the process that enters a sandbox carries the labels in its
    environment; everything inside is found through the cgroup. A process
    labelled by another hub on the same machine is not ours to find.
    """
    found: dict[int, str] = {}
    needle = f"{AGENT_LABEL}=".encode()
    ours = f"{HUB_LABEL}={settings.FLOTILLA_HUB_UID}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if ours not in environ:
            continue
        for item in environ:
            if item.startswith(needle):
                label = item[len(needle) :].decode(errors="replace")
                if agent_id is None or label == agent_id:
                    found[int(entry.name)] = label
                break
    return found


def local_live_agent_ids() -> set[str]:
    ids = {name.removeprefix("agent-") for name in agent_cgroup_names()}
    return ids | set(labelled_pids().values())
