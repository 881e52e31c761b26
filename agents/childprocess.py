"""Child processes of the hub that must not outlive it.

The hub starts git and sandbox commands in sessions of their own, so a
timeout can kill a command's whole group. That puts them outside the node's
process group. A kill of the node would then leave them running, so each
one also gets a parent-death signal. util-linux's ``setpriv`` sets it
between fork and exec, in C, where Python's ``preexec_fn`` is unsafe in a
process with threads.

A parent that dies after the fork but before ``setpriv`` sets the signal
sends none: the command would then run on as an orphan of a dead node (a
rehearsal found a sandbox alive 30 s after its node's SIGKILL). So the
command starts only if its parent is still the process that started it: a
shell, run once the signal is set, compares its ``$PPID`` with that pid.

A bwrap sandbox cannot rely on this: bwrap forks its sandbox's first process
and sets that one's signal later. It ends on a lifeline instead (``local_exec``).
"""

import ctypes
import functools
import os
import shutil
import signal
from pathlib import Path

# Run after the parent-death signal is set: exec the command only while the
# parent that started it lives (a dead parent's child has a new $PPID).
_PARENT_CHECK = '[ "$PPID" = "$1" ] || exit 137; shift; exec "$@"'


@functools.cache
def _setpriv() -> str | None:
    return shutil.which("setpriv")


def dying_with_parent(argv: list[str]) -> list[str]:
    """``argv`` run so that it gets SIGKILL when the thread that started it dies.

    It never starts at all when that process died before the signal was set.
    """
    setpriv = _setpriv()
    if not setpriv:
        return argv
    checked = ["/bin/sh", "-c", _PARENT_CHECK, "sh", str(os.getpid()), *argv]
    return [setpriv, "--pdeathsig", "KILL", "--", *checked]


_PR_SET_PDEATHSIG = 1


def parent_death_signal(sig: int, *, parent: int) -> None:
    """In a forked child: get ``sig`` when the thread that forked it dies.

    The signal cannot come for a parent that died before it was set, so a
    child whose parent is no longer ``parent`` gets ``sig`` at once.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)
    if os.getppid() != parent:
        os.kill(os.getpid(), sig)


def forked_child_detach(*, parent: int, keep: int) -> None:
    """In a child forked without exec: die with the node, and hold none of its descriptors.

    A fork inherits every descriptor the node has open at that moment: the
    lifelines of the sandboxes its other threads run among them, which would
    then outlive a dead node for as long as the child computes. Only ``keep``
    stays open.
    """
    os.closerange(3, keep)
    os.closerange(keep + 1, os.sysconf("SC_OPEN_MAX"))
    parent_death_signal(signal.SIGKILL, parent=parent)


def process_start_ticks(pid: int) -> int | None:
    """When ``pid`` started, in clock ticks since boot; None when it is gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return None if fields[0] in ("Z", "X") else int(fields[19])
