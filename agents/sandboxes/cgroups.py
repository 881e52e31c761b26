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


def cgroups_available() -> bool:
    root = Path(settings.FLOTILLA_CGROUP_ROOT)
    return all(os.access(root / name, os.W_OK) for name in CONTROLLERS)


class AgentCgroup:
    def __init__(self, name: str) -> None:
        self.name = name
        self.root = Path(settings.FLOTILLA_CGROUP_ROOT)

    def path(self, controller: str) -> Path:
        return self.root / controller / GROUP_PARENT / self.name

    def create(self, *, memory_mb: int, pids: int, cpus: float) -> None:
        for controller in CONTROLLERS:
            self.path(controller).mkdir(parents=True, exist_ok=True)
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
        if not self.path("freezer").exists():
            return True
        self._freeze("FROZEN")
        try:
            for pid in self.pids():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        finally:
            self._freeze("THAWED")
        deadline = time.monotonic() + wait_s
        while self.pids():
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
    parent = Path(settings.FLOTILLA_CGROUP_ROOT) / "freezer" / GROUP_PARENT
    if not parent.exists():
        return []
    return [entry.name for entry in parent.iterdir() if entry.is_dir()]
