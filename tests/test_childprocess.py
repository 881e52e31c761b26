"""A hub's child command never outlives it, not even one whose parent died while it started.

A rehearsal found a sandbox running 30 s after its node's process group was
SIGKILLed, with parent 1 and no signal pending: the node died between the
fork and ``setpriv`` setting the parent-death signal, so no signal came.
Another found bwrap's first process in its sandbox alive with no parent:
bwrap gives it its parent-death signal late, and not at all once bwrap's
monitor, its parent, died (with the node) before it let it go on.
"""

import contextlib
import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from django.conf import settings

from agents.sandboxes import sandbox_backend
from agents.sandboxes.base import SandboxSpec
from agents.sandboxes.local import labelled_pids
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


# A node that starts a real bwrap sandbox as BwrapSandbox.exec does, with one
# more bwrap option that holds bwrap at one point of its start on a pipe of
# the test's (passed as the last argument).
_NODE = """
import json, sys
from pathlib import Path
import django
django.setup()
from agents.sandboxes.bwrap import BwrapSandbox
from agents.sandboxes.local import local_exec
handle, option, fd = json.loads(sys.argv[1]), sys.argv[2], int(sys.argv[3])
argv = BwrapSandbox().argv(handle, "sleep 300")
argv[1:1] = [option, str(fd)]
local_exec(handle, argv, cwd=Path(handle["workspace"]), timeout_s=600, on_output=None,
           pass_fds=(fd,), lifeline=True)
"""


@pytest.fixture
def bwrap_handle():
    workspace = Path(settings.DATA_DIR) / "sandbox-tests" / uuid.uuid4().hex
    workspace.mkdir(parents=True)
    backend = sandbox_backend("bwrap")
    handle = backend.start(SandboxSpec(agent_id=str(uuid.uuid4()), workspace=workspace))
    yield handle
    backend.kill(handle)
    backend.remove(handle)


def status_of(pid: int) -> dict[str, str]:
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return {}
    return dict(line.split(":\t", 1) for line in lines if ":\t" in line)


def alive(pid: int) -> bool:
    return status_of(pid).get("State", "Z").strip()[0] != "Z"


def sandbox_first_process(agent_id: str) -> int | None:
    """bwrap's process that is pid 1 in the new pid namespace (its pid there is a second one)."""
    for pid in labelled_pids(agent_id):
        if len(status_of(pid).get("NSpid", "").split()) == 2:
            return pid
    return None


def sandbox_processes(agent_id: str, namespace: str) -> list[int]:
    """The bwrap processes entering the sandbox, and every process inside its pid namespace."""
    found = set(labelled_pids(agent_id))
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            if entry.name.isdigit() and os.readlink(entry / "ns" / "pid") == namespace:
                found.add(int(entry.name))
    return sorted(pid for pid in found if alive(pid))


def fill(descriptor: int) -> None:
    """Fill a pipe, so that bwrap's next write to it waits (blocking again) until it is drained."""
    os.set_blocking(descriptor, False)
    with contextlib.suppress(BlockingIOError):
        while True:
            os.write(descriptor, b"x" * 4096)
    os.set_blocking(descriptor, True)


def drain(descriptor: int) -> None:
    os.set_blocking(descriptor, False)
    with contextlib.suppress(BlockingIOError):
        while os.read(descriptor, 65536):
            pass


@pytest.mark.one_database
@pytest.mark.parametrize("held", ["monitor", "sandbox"])
def test_a_sandbox_whose_node_died_while_bwrap_started_it_does_not_run_on(bwrap_handle, held):
    """The node dies with bwrap held where its parent-death signals do not cover the sandbox.

    "monitor": bwrap's monitor writes its --info-fd after it made the
    sandbox's first process and before it lets it go on; a full pipe holds it
    there. "sandbox": that first process reads its --block-fd once the
    sandbox is built, before it sets its parent-death signal; it is held
    there while the node and the monitor die.
    """
    agent_id = bwrap_handle["agent_id"]
    read_end, write_end = os.pipe()
    if held == "monitor":
        fill(write_end)
        option, passed, kept = "--info-fd", write_end, read_end
    else:
        option, passed, kept = "--block-fd", read_end, write_end
    node = subprocess.Popen(
        [sys.executable, "-c", _NODE, json.dumps(bwrap_handle), option, str(passed)],
        cwd=ROOT,
        pass_fds=(passed,),
    )
    os.close(passed)
    first = None
    try:
        first = wait_until(
            lambda: sandbox_first_process(agent_id), 60, "bwrap to make the sandbox's first process"
        )
        namespace = os.readlink(f"/proc/{first}/ns/pid")
        monitor = int(status_of(first)["PPid"])
        node.kill()
        node.wait()
        if held == "monitor":
            drain(kept)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.kill(monitor, signal.SIGKILL)
            wait_until(lambda: not alive(monitor), 60, "bwrap's monitor to die")
            os.close(kept)
            kept = -1
        wait_until(
            lambda: not sandbox_processes(agent_id, namespace),
            60,
            "every process of the sandbox to end",
        )
    finally:
        node.kill()
        node.wait()
        if first and alive(first):
            # Killing the namespace's init from outside ends every process in it.
            os.kill(first, signal.SIGKILL)
        if kept >= 0:
            os.close(kept)


@pytest.mark.one_database
def test_a_forked_file_tool_child_holds_no_descriptor_of_the_node_but_its_answer_pipe():
    """The Claude search runs in a fork of the node: it must not hold another sandbox's lifeline.

    A lifeline's write end is only the node's; a fork that kept a copy (while
    a hostile regex keeps it computing) would keep that sandbox alive after
    the node died.
    """
    from agents.runtimes.claude.files import _killable

    lifeline_read, lifeline_write = os.pipe()
    try:
        held = _killable(open_descriptors, timeout_s=30, refusal="the child did not answer")
        lifeline = os.readlink(f"/proc/self/fd/{lifeline_write}")
    finally:
        os.close(lifeline_read)
        os.close(lifeline_write)

    assert lifeline.startswith("pipe:")
    assert lifeline not in held
    assert len(held) == 1, held  # its answer pipe


def open_descriptors() -> list[str]:
    """What this process's descriptors above 2 are open on (the listing's own left out)."""
    held = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(FileNotFoundError):
            if int(fd) > 2:
                held.append(os.readlink(f"/proc/self/fd/{fd}"))
    return sorted(held)
