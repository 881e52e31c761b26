"""Child processes of the hub that must not outlive it.

The hub starts git and sandbox commands in sessions of their own, so a
timeout can kill a command's whole group. That puts them outside the node's
process group. A kill of the node would then leave them running, so each
one also gets a parent-death signal. util-linux's ``setpriv`` sets it
between fork and exec, in C, where Python's ``preexec_fn`` is unsafe in a
process with threads.
"""

import functools
import shutil


@functools.cache
def _setpriv() -> str | None:
    return shutil.which("setpriv")


def dying_with_parent(argv: list[str]) -> list[str]:
    """``argv`` run so that it gets SIGKILL when the thread that started it dies."""
    setpriv = _setpriv()
    return [setpriv, "--pdeathsig", "KILL", "--", *argv] if setpriv else argv
