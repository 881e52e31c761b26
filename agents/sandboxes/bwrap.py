"""Bubblewrap sandbox: every namespace unshared, the worktree the only writable place."""

import contextlib
import json
import logging
import shutil
import subprocess
import tempfile
import time
from pathlib import Path, PurePosixPath

from django.conf import settings

from agents.childprocess import process_start_ticks
from agents.sandboxes.base import (
    AGENT_HOME,
    EGRESS_SOCKET,
    ETC_FILES,
    HOSTS_FILE,
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
    sandbox_toolchain,
)
from agents.sandboxes.local import (
    JOIN_CGROUP_FAILED,
    local_exec,
    local_handle,
    local_kill,
    local_kill_many,
    local_live_agent_ids,
    local_remove,
)

logger = logging.getLogger(__name__)


class BwrapSandbox(Sandbox):
    name = "bwrap"

    def __init__(self) -> None:
        bwrap = shutil.which("bwrap")
        setpriv = shutil.which("setpriv")
        if not bwrap:
            raise SandboxUnavailable("bubblewrap is not installed (apt-get install bubblewrap)")
        if not setpriv:
            raise SandboxUnavailable("setpriv is not installed (apt-get install util-linux)")
        self.bwrap = bwrap
        self.setpriv = setpriv
        self.prlimit = shutil.which("prlimit") or "/usr/bin/prlimit"

    def start(self, spec: SandboxSpec) -> SandboxHandle:
        uid = settings.FLOTILLA_SANDBOX_UID
        # The sandbox user must own its worktree to write to it; the hub
        # (root) still commits there, with safe.directory set by the workspace.
        _hand_over(spec.workspace, uid)
        handle = local_handle(self.name, spec)
        handle.update(uid=uid, max_file_bytes=spec.max_file_bytes)
        if spec.egress_socket:
            handle["egress_socket"] = spec.egress_socket
        if spec.model_socket:
            handle["model_socket"] = spec.model_socket
        if spec.home:
            handle["home"] = spec.home
        return handle

    def exec(
        self,
        handle: SandboxHandle,
        command: str,
        *,
        timeout_s: float,
        on_output: OutputSink | None = None,
    ) -> ExecResult:
        # bwrap reports on this file when the sandboxed command has exited; a
        # run that ends without that report never got as far as the command.
        # A file, not a pipe: bwrap's monitor writes to it before it lets the
        # sandbox go on, and that write to a pipe whose reader (a dead node)
        # is gone would kill it there, leaving the sandbox waiting for ever.
        with tempfile.TemporaryFile() as status_file:
            result = local_exec(
                handle,
                self.argv(handle, command, status_fd=status_file.fileno()),
                cwd=Path(handle["workspace"]),
                timeout_s=timeout_s,
                on_output=on_output,
                pass_fds=(status_file.fileno(),),
                lifeline=True,
            )
            status_file.seek(0)
            status = status_file.read()
        # The command has exited and its lifeline is closed: the sandbox's
        # init ends once the watcher has killed what the command left. Wait
        # for it, so nothing of this command is left when exec returns.
        _wait_gone(_sandbox_init_pid(status))
        ended_by_itself = not result.timed_out and (result.exit_code or 0) >= 0
        if ended_by_itself and b'"exit-code"' not in status:
            raise SandboxError(f"the bwrap sandbox could not start: {_start_problem(result)}")
        return result

    def workspace_handle(self, handle: SandboxHandle, workspace: Path) -> SandboxHandle:
        _hand_over(workspace, handle["uid"])
        return {**handle, "workspace": str(workspace)}

    def kill(self, handle: SandboxHandle) -> None:
        local_kill(handle)

    def kill_many(self, handles: list[SandboxHandle]) -> None:
        local_kill_many(handles)

    def remove(self, handle: SandboxHandle) -> None:
        local_remove(handle)

    def live_agent_ids(self) -> set[str]:
        return local_live_agent_ids()

    def argv(
        self, handle: SandboxHandle, command: str, *, status_fd: int | None = None
    ) -> list[str]:
        """What root runs: bwrap builds the sandbox, then setpriv drops to the sandbox user.

        bwrap runs as root (not setuid, no user namespace) so that it can bind
        paths the sandbox user could never reach, such as a worktree under a
        0700 DATA_DIR. It keeps only CAP_SETUID and CAP_SETGID for setpriv,
        which gives them up with every other capability, clears the groups,
        sets no_new_privs and becomes the sandbox user before anything of the
        agent's runs; and CAP_KILL for the lifeline's watcher (``_WATCH_LIFELINE``),
        root but not the sandbox user, which could not signal the agent's
        processes without it.

        The sandbox ends when its watcher reads the end of its lifeline, not
        by parent-death signals (``--die-with-parent``, ``dying_with_parent``):
        the sandbox's first process, forked by bwrap's monitor, waits for the
        monitor's go-ahead and gets its signal only once the sandbox is built,
        so a monitor that died with its node before either (as one did on a
        loaded machine) left it waiting for ever, or running, with no parent.
        Without that signal, the monitor always gives the go-ahead.
        """
        uid = str(handle["uid"])
        workspace = handle["workspace"]
        argv = [
            self.bwrap,
            "--unshare-ipc",
            "--unshare-pid",
            "--unshare-net",
            "--unshare-uts",
            "--unshare-cgroup-try",
            "--new-session",
            "--hostname",
            "sandbox",
            "--cap-add",
            "CAP_SETUID",
            "--cap-add",
            "CAP_SETGID",
            "--cap-add",
            "CAP_KILL",
            "--ro-bind",
            "/usr",
            "/usr",
            # The private /tmp comes before any bind below it (a toolchain or
            # a worktree under /tmp), which it would otherwise hide.
            "--proc",
            "/proc",
            "--dev",
            "/dev",
            "--perms",
            "1777",
            "--tmpfs",
            "/tmp",
        ]
        for link in SYSTEM_DIRS:
            path = Path(link)
            if path.is_symlink():
                argv += ["--symlink", str(path.readlink()), link]
            elif path.is_dir():
                argv += ["--ro-bind", link, link]
        # /etc itself must let the sandbox user through to the files bound in it
        # (node reads /etc/ssl/openssl.cnf before anything else).
        argv += _parents_reachable(HOSTS_FILE)
        for extra in (*ETC_FILES, HOSTS_FILE):
            argv += ["--ro-bind-try", extra, extra]
        # The operator asked for these by name: one that is missing is an
        # error to report (the sandbox cannot start), not a bind to skip.
        for extra in settings.FLOTILLA_SANDBOX_RO_BINDS:
            argv += ["--ro-bind", extra, extra]
        for tools in (sandbox_toolchain(), agent_clis_dir()):
            if tools:
                argv += _parents_reachable(str(tools))
                argv += ["--ro-bind", str(tools), str(tools)]
        for bound, inside in (
            (handle.get("egress_socket"), EGRESS_SOCKET),
            (handle.get("model_socket"), MODEL_SOCKET),
        ):
            if bound:
                argv += _parents_reachable(inside)
                argv += ["--ro-bind", bound, inside]
        if handle.get("home"):
            argv += [*_parents_reachable(AGENT_HOME), "--bind", handle["home"], AGENT_HOME]
        argv += [
            "--bind",
            workspace,
            WORKSPACE,
            # The worktree's .git file points the hub's git at its metadata;
            # the agent may read it but never redirect it.
            "--ro-bind-try",
            f"{workspace}/.git",
            f"{WORKSPACE}/.git",
            # bwrap builds the root on a tmpfs; making it read-only leaves
            # /workspace and /tmp as the only places a command can write.
            "--remount-ro",
            "/",
            "--chdir",
            WORKSPACE,
            "--clearenv",
        ]
        for key, value in sandbox_environment(handle).items():
            argv += ["--setenv", key, value]
        if status_fd is not None:
            argv += ["--json-status-fd", str(status_fd)]
        drop = [
            self.setpriv,
            f"--reuid={uid}",
            f"--regid={uid}",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
            "--no-new-privs",
        ]
        file_limit = int(handle.get("max_file_bytes") or 0)
        if file_limit:
            drop += ["--", self.prlimit, f"--fsize={file_limit}:{file_limit}"]
        watch = ["/bin/sh", "-c", _WATCH_LIFELINE, "sh"]
        return [*argv, "--", *watch, *drop, "--", *sandbox_command(handle, command)]


# The sandbox's first process, root in its pid namespace, runs this before it
# becomes the command: it leaves a watcher holding its stdin, the lifeline of
# ``local_exec``, which only the node can write to. Once the node has closed
# it (the command exited) or died, whenever that happened, even before the
# watcher started, the watcher reads end of file and kills every process of
# the namespace but bwrap's init, which then exits with nothing left to reap.
# The command (the sandbox user's) can neither kill the watcher nor keep the
# sandbox alive: it gets /dev/null as stdin, and the watcher ignores the
# signals the kernel sends a whole process group without asking whose it is
# (the watcher shares bwrap's group with the agent's processes: an orphaned
# group with a stopped member gets SIGHUP).
_WATCH_LIFELINE = (
    "exec 3<&0 </dev/null; "
    "( (trap '' HUP INT QUIT TSTP TTIN TTOU; read _ <&3; kill -KILL -1) >/dev/null 2>&1 & ); "
    'exec "$@" 3<&-'
)


def _hand_over(workspace: Path, uid: int) -> None:
    """Give ``workspace`` to the sandbox user (``chown -R`` follows no symlink)."""
    chown = subprocess.run(
        ["chown", "-R", f"{uid}:{uid}", str(workspace)], capture_output=True, text=True
    )
    if chown.returncode != 0:
        raise SandboxError(f"cannot hand the worktree to the sandbox user: {chown.stderr}")


def _parents_reachable(destination: str) -> list[str]:
    """bwrap arguments that create the parents of a mount point traversable by anyone.

    bwrap running as root creates missing parents with mode 0700, which would
    hide a toolchain bound at /work/checkout/var/toolchain from the sandbox user.
    Parents inside the read-only system directories already exist.
    """
    arguments: list[str] = []
    for parent in reversed(PurePosixPath(destination).parents):
        text = str(parent)
        if text == "/" or any(
            text == mounted or text.startswith(f"{mounted}/") for mounted in _PREMOUNTED
        ):
            continue
        arguments += ["--perms", "0755", "--dir", text]
    return arguments


# Mount points made before any bind below them; nothing is created inside these.
_PREMOUNTED = ("/usr", "/proc", "/dev", "/tmp", *SYSTEM_DIRS)


def _sandbox_init_pid(status: bytes) -> int | None:
    """The host pid of the sandbox's first process, from bwrap's JSON status lines."""
    for line in status.splitlines():
        with contextlib.suppress(ValueError, AttributeError):
            pid = json.loads(line).get("child-pid")
            if isinstance(pid, int) and pid > 0:
                return pid
    return None


def _wait_gone(pid: int | None, timeout_s: float = 5.0) -> None:
    """Until ``pid`` has exited (a zombie has: it only awaits reaping), at most ``timeout_s``."""
    if pid is None:
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process_start_ticks(pid) is None:
            return
        time.sleep(0.002)
    logger.warning("the bwrap sandbox's init %s outlived its command by %s s", pid, timeout_s)


def _start_problem(result: ExecResult) -> str:
    """bwrap's own words about why it stopped, from the command's output."""
    said = [line for line in result.output_tail.splitlines() if line.startswith("bwrap:")]
    if said:
        return said[-1].removeprefix("bwrap:").strip()
    if result.exit_code == JOIN_CGROUP_FAILED:
        return "the agent's cgroup is gone (was the agent killed?)"
    return f"bwrap exited with status {result.exit_code} before the command started"
