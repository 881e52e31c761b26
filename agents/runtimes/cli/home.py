"""A CLI agent's home: a directory the hub keeps per agent, outside its worktree.

Every command of a bwrap sandbox starts with a fresh private ``/tmp``, and a
paused agent gets a new sandbox when it resumes, so a CLI's session (the
conversation it resumes with the gate report, or after a budget pause) must
live somewhere that outlives both. Not in the worktree: the gates' tools walk
the worktree (ruff would lint, pytest collect, what the CLI keeps there:
Codex ships Python scripts with its skills), its size counts against the
worktree limit, and every commit would have to leave it out. So the hub
makes ``DATA_DIR/agent-homes/<agent id>``, owned by the sandbox user, and
sandboxes bind it read-write at ``AGENT_HOME``. It goes with the worktree:
``agent_cleanup`` removes both, a pause keeps both.

The agent owns everything inside, so the hub only ever writes its own files
(the prompt) straight into the home's top directory, never through a link.
"""

import contextlib
import os
from pathlib import Path

from django.conf import settings

from agents.sandboxes.base import AGENT_HOME, SandboxError
from agents.treeremoval import tree_remove


def cli_home_path(*, agent_id: str) -> Path:
    return Path(settings.DATA_DIR) / "agent-homes" / agent_id


def cli_home_prepare(*, agent_id: str, fresh: bool) -> Path:
    """The agent's home, made for the sandbox user; ``fresh`` empties what an earlier run left."""
    home = cli_home_path(agent_id=agent_id)
    if fresh:
        tree_remove(home)
    home.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        home.mkdir(mode=0o700)
    except FileExistsError:
        return home
    uid = settings.FLOTILLA_SANDBOX_UID
    os.chown(home, uid, uid)
    return home


def cli_home_remove(*, agent_id: str) -> None:
    tree_remove(cli_home_path(agent_id=agent_id))


def cli_home_write(*, agent_id: str, name: str, text: str) -> str:
    """Write a hub file into the home's top directory; its path inside the sandbox.

    Whatever the agent left under ``name`` (a file, a link to a host file) is
    unlinked first and the file is created anew without following links, so
    the hub's write never lands anywhere but here.
    """
    home = os.open(cli_home_path(agent_id=agent_id), os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name, dir_fd=home)
            descriptor = os.open(
                name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644, dir_fd=home
            )
        except OSError as error:
            raise SandboxError(f"cannot write {name} into the agent's home: {error}") from None
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(text)
    finally:
        os.close(home)
    return f"{AGENT_HOME}/{name}"
