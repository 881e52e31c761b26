"""A run killed half-way through its git work leaves nothing that stops the agent's next run.

A node SIGKILLed while ``git worktree add`` ran leaves the mirror's
registration of the worktree locked (git locks it "initializing" until the
checkout is done; an experiment killing the add at random points left
exactly that in 16 of 30 runs), and ``git worktree prune`` never prunes a
locked one. The agent's retry then failed: "'<path>' is a missing but locked
worktree". The tests make that state with git's own ``--lock``.
"""

import os
import uuid
from pathlib import Path

from agents import workspace
from agents.treeremoval import tree_remove
from tests.conftest import git


def _killed_add(repository: str, agent_id: str) -> tuple[Path, str]:
    """What a ``git worktree add`` killed before its checkout finished leaves in the mirror."""
    mirror = workspace.mirror_sync(repository)
    path = workspace.worktree_path(agent_id=agent_id, task_id="t")
    branch = f"flotilla/{agent_id}"
    git(mirror, "worktree", "add", "--quiet", "--lock", "-b", branch, str(path), "origin/main")
    return path, branch


def test_removing_the_worktree_of_a_run_killed_while_git_added_it_leaves_no_registration(
    remote_repo,
):
    repository = workspace.repository_normalise(str(remote_repo))
    path, branch = _killed_add(repository, str(uuid.uuid4()))

    workspace.worktree_remove(repository=repository, path=path, work_branch=branch)

    assert workspace.worktree_list(repository) == []
    assert not path.exists()


def test_the_next_run_gets_a_fresh_worktree_whatever_the_killed_one_left(remote_repo):
    repository = workspace.repository_normalise(str(remote_repo))
    # Left as it was: the directory, with a file the killed run wrote, and the lock.
    agent_id = str(uuid.uuid4())
    path, branch = _killed_add(repository, agent_id)
    (path / "half-done.txt").write_text("from the killed run\n")
    # The directory gone (a cleanup removed it), the locked registration left.
    other_id = str(uuid.uuid4())
    other_path, other_branch = _killed_add(repository, other_id)
    git(workspace.mirror_path(repository), "worktree", "list")
    workspace.worktree_discard(other_path)

    for run_path, run_branch in ((path, branch), (other_path, other_branch)):
        workspace.worktree_create(
            repository=repository, base_branch="main", work_branch=run_branch, path=run_path
        )
        assert (run_path / "README.md").read_text() == "# sample\n"
        assert not (run_path / "half-done.txt").exists()
    assert sorted(workspace.worktree_list(repository)) == sorted([path, other_path])


def _deep_tree(top: Path, depth: int) -> None:
    """``top/d/d/…/d``, ``depth`` levels, made through descriptors (no path is that long)."""
    directory = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    for _ in range(depth):
        os.mkdir("d", dir_fd=directory)
        child = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=directory)
        os.close(directory)
        directory = child
    os.close(directory)


def test_a_worktree_its_agent_made_thousands_of_directories_deep_is_removed(remote_repo):
    # shutil.rmtree recursed once per level: 1,500 levels raised RecursionError
    # (ignore_errors does not catch it), out of every cleanup and reconciler pass.
    repository = workspace.repository_normalise(str(remote_repo))
    agent_id = str(uuid.uuid4())
    path = workspace.worktree_path(agent_id=agent_id, task_id="t")
    branch = f"flotilla/{agent_id}"
    workspace.worktree_create(
        repository=repository, base_branch="main", work_branch=branch, path=path
    )
    _deep_tree(path, 1500)

    workspace.worktree_remove(repository=repository, path=path, work_branch=branch)

    assert not path.exists()
    assert workspace.worktree_list(repository) == []


def test_removing_a_tree_never_follows_a_link_out_of_it(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("not the agent's\n")
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "link").symlink_to(outside)
    (tree / "file").symlink_to(outside / "keep.txt")

    tree_remove(tree)

    assert not tree.exists()
    assert (outside / "keep.txt").read_text() == "not the agent's\n"
