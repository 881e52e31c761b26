"""Deleting a directory tree an agent wrote, whatever its shape."""

import logging
import subprocess
from pathlib import Path

logger = logging.getLogger(__name__)


def tree_remove(path: Path) -> None:
    """Delete ``path`` and everything below it, never following a link; what resists is left.

    GNU ``rm`` rather than ``shutil.rmtree``: rmtree recurses once per level,
    so a tree an agent made a thousand directories deep raised RecursionError
    (Python 3.11), which ``ignore_errors`` does not catch, out of every
    cleanup and reconciler pass. ``rm`` walks any depth with fts, and
    ``--one-file-system`` keeps it off anything mounted below ``path``.
    """
    try:
        subprocess.run(
            ["rm", "-rf", "--one-file-system", "--", str(path)],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            check=False,
        )
    except OSError as error:
        # As rmtree's ignore_errors did: a cleanup goes on, and the reconciler retries later.
        logger.warning("could not start rm to delete %s: %s", path, error)
