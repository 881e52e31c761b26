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

import functools
import os
import shutil

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
