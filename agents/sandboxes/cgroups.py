"""One cgroup (v1) per agent: hard limits, and a kill that cannot miss a process.

Freezing the group before signalling means no process can fork a child
between our reading of the member list and the SIGKILL, so a fork bomb dies
as surely as a single process.
"""

import contextlib
import logging
import os
import signal
import time
from pathlib import Path

from django.conf import settings

logger = logging.getLogger(__name__)

CONTROLLERS = ("memory", "pids", "cpu", "freezer")
GROUP_PARENT = "flotilla"


def hub_cgroup_parent() -> str:
    """This hub's own branch of the hierarchy: another hub on the machine has its own."""
    return f"{GROUP_PARENT}/hub-{settings.FLOTILLA_HUB_UID}"


def cgroups_available() -> bool:
    root = Path(settings.FLOTILLA_CGROUP_ROOT)
    return all(os.access(root / name, os.W_OK) for name in CONTROLLERS)


class AgentCgroup:
    def __init__(self, name: str) -> None:
        self.name = name
        self.root = Path(settings.FLOTILLA_CGROUP_ROOT)

    def path(self, controller: str) -> Path:
        return self.root / controller / hub_cgroup_parent() / self.name

    def create(self, *, memory_mb: int, pids: int, cpus: float) -> None:
        for controller in CONTROLLERS:
            self._make(self.path(controller))
        limit = memory_mb * 1024 * 1024
        self._write("memory", "memory.limit_in_bytes", limit)
        swap = self.path("memory") / "memory.memsw.limit_in_bytes"
        if swap.exists():
            swap.write_text(str(limit))
        self._write("pids", "pids.max", pids)
        self._write("cpu", "cpu.cfs_period_us", 100_000)
        self._write("cpu", "cpu.cfs_quota_us", max(1000, int(cpus * 100_000)))

    def procs_files(self) -> list[str]:
        return [str(self.path(controller) / "cgroup.procs") for controller in CONTROLLERS]

    def pids(self) -> list[int]:
        try:
            text = (self.path("freezer") / "cgroup.procs").read_text()
        except OSError:
            # Gone (ENOENT), or being removed by another process (ENODEV).
            return []
        return [int(line) for line in text.split()]

    def oom_killed(self) -> bool:
        try:
            text = (self.path("memory") / "memory.oom_control").read_text()
        except FileNotFoundError:
            return False
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value) > 0
        return (self.path("memory") / "memory.failcnt").read_text().strip() != "0"

    def kill(self, *, wait_s: float = 2.0) -> bool:
        """SIGKILL every member; True once the group is empty."""
        self.signal()
        return self.wait_empty(wait_s=wait_s)

    def signal(self) -> None:
        """SIGKILL every member, frozen meanwhile so that none can fork away; no waiting."""
        if not self.path("freezer").exists():
            return
        self._freeze("FROZEN")
        try:
            for pid in self.pids():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        finally:
            self._freeze("THAWED")

    def wait_empty(self, *, wait_s: float) -> bool:
        deadline = time.monotonic() + wait_s
        while self.path("freezer").exists() and self.pids():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.002)
        return True

    def remove(self) -> None:
        for controller in CONTROLLERS:
            try:
                self.path(controller).rmdir()
            except FileNotFoundError:
                pass
            except OSError as error:
                logger.warning("cannot remove cgroup %s: %s", self.path(controller), error)
                continue
            # The hub's own branch goes with its last agent, so hubs that come
            # and go (a test run, a benchmark) leave no empty directories behind.
            # Another agent of this hub starting now recreates it (mkdir parents).
            with contextlib.suppress(OSError):
                self.path(controller).parent.rmdir()

    @staticmethod
    def _make(path: Path) -> None:
        # The hub's branch may vanish between making it and making the agent's
        # group below it (the last agent of the hub being removed): try again.
        for _ in range(5):
            try:
                path.mkdir(parents=True, exist_ok=True)
                return
            except FileNotFoundError:
                continue
        path.mkdir(parents=True, exist_ok=True)

    def _write(self, controller: str, name: str, value: int) -> None:
        (self.path(controller) / name).write_text(str(value))

    def _freeze(self, state: str) -> None:
        try:
            self._write_state(state)
        except OSError as error:
            logger.warning("cannot set freezer of %s to %s: %s", self.name, state, error)

    def _write_state(self, state: str) -> None:
        (self.path("freezer") / "freezer.state").write_text(state)


def agent_cgroup_names() -> list[str]:
    parent = Path(settings.FLOTILLA_CGROUP_ROOT) / "freezer" / hub_cgroup_parent()
    if not parent.exists():
        return []
    return [entry.name for entry in parent.iterdir() if entry.is_dir()]


# --- host kill helpers for processes in another runtime's cgroup (a container) --------


def cgroup_procs_file_of(pid: int) -> str:
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


def cgroup_session_kill(procs_file: str, session_pid: int, rounds: int = 50) -> None:
    """SIGKILL every process of ``procs_file`` in the session (or group) ``session_pid`` leads.

    Only processes listed in the container's own cgroup are considered, so a
    recycled host pid can never be hit.
    """
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


def cgroup_procs_kill(procs_file: str, rounds: int = 50) -> bool:
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
