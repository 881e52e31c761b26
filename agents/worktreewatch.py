"""The disk bound: an agent's worktree is measured while it runs, and past the maximum it stops.

A thread of the worker walks the worktree every few seconds and adds up the
blocks its files take (``st_blocks``, so a sparse file counts what it uses
and a preallocated one what it reserves), never following a link out of it.
Every entry counts at least one block of 4 KiB: an empty file, a link or a
name takes an inode, and millions of them would use up the filesystem's
inodes while taking no blocks at all.
The walk is iterative, so no nesting depth can break it, and it waits at
least ten times as long as a walk took, so a huge tree cannot keep a core
busy. The bound is checked, not enforced by the kernel: an agent may pass
it by what it writes in one interval before it is stopped.
"""

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from django.db import connections

logger = logging.getLogger(__name__)

CHECK_EVERY_S = 2.0
_BLOCK = 512  # st_blocks counts 512-byte units on Linux, whatever the filesystem's block size
# The least an entry counts: a filesystem block, the price of its inode.
ENTRY_MINIMUM = 4096


def tree_bytes(root: Path) -> int:
    """Bytes the entries under ``root`` take on disk, at least ENTRY_MINIMUM each.

    Links are counted, never followed.
    """
    total = 0
    pending = [str(root)]
    while pending:
        try:
            with os.scandir(pending.pop()) as entries:
                for entry in entries:
                    try:
                        blocks = entry.stat(follow_symlinks=False).st_blocks
                        total += max(blocks * _BLOCK, ENTRY_MINIMUM)
                        if entry.is_dir(follow_symlinks=False):
                            pending.append(entry.path)
                    except OSError:
                        continue  # removed while we looked: it takes nothing now
        except OSError:
            continue
    return total


class WorktreeWatch:
    """Calls ``on_exceeded(size)`` once, from its own thread, when the tree passes ``max_bytes``."""

    def __init__(
        self,
        *,
        path: Path,
        max_bytes: int,
        on_exceeded: Callable[[int], None],
        every_s: float = CHECK_EVERY_S,
    ) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.on_exceeded = on_exceeded
        self.every_s = every_s
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True, name="worktree-watch")

    def start(self) -> "WorktreeWatch":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopped.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join()

    def _watch(self) -> None:
        wait_s = self.every_s
        try:
            while not self._stopped.wait(wait_s):
                started = time.monotonic()
                size = tree_bytes(self.path)
                if size > self.max_bytes and not self._stopped.is_set():
                    self.on_exceeded(size)
                    return
                wait_s = max(self.every_s, 10 * (time.monotonic() - started))
        except Exception:
            logger.exception("the worktree watch of %s failed; the disk bound is off", self.path)
        finally:
            # ``on_exceeded`` writes to the database from this thread.
            connections.close_all()
