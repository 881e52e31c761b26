"""A hub's child command never outlives it, not even one whose parent died while it started.

A rehearsal found a sandbox running 30 s after its node's process group was
SIGKILLed, with parent 1 and no signal pending: the node died between the
fork and ``setpriv`` setting the parent-death signal, so no signal came.
"""

import subprocess
import sys
from pathlib import Path

from tests.conftest import wait_until

ROOT = Path(__file__).resolve().parent.parent

# A parent that builds the command, forks the child that will run it, and
# (with "exit") is gone before the child execs it.
_PARENT = """
import os, sys, time
from agents.childprocess import dying_with_parent
argv = dying_with_parent(["/bin/sh", "-c", "touch " + sys.argv[1]])
child = os.fork()
if child == 0:
    time.sleep(0.5)
    os.execv(argv[0], argv)
if sys.argv[2] == "exit":
    os._exit(0)
os.waitpid(child, 0)
"""


def run_parent(marker: Path, mode: str) -> None:
    subprocess.run([sys.executable, "-c", _PARENT, str(marker), mode], cwd=ROOT, check=True)


def test_a_command_whose_parent_is_alive_runs(tmp_path):
    marker = tmp_path / "ran"
    run_parent(marker, "wait")
    assert marker.exists()


def test_a_command_whose_parent_died_before_it_started_never_runs(tmp_path):
    marker = tmp_path / "ran"
    control = tmp_path / "control"
    run_parent(marker, "exit")
    # The same orphaned child, with nothing to stop it, shows how long to look.
    subprocess.run(
        [sys.executable, "-c", _PARENT.replace("dying_with_parent(", "list("), control, "exit"],
        cwd=ROOT,
        check=True,
    )
    wait_until(control.exists, 10, "the unguarded orphan to run")
    assert not marker.exists()
