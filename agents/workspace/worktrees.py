"""Agents' worktrees and the hub's base checkouts: create, stage, commit, read, remove.

An agent's worktree is checked out of its repository's mirror on the agent's
own branch, and every git command that reads the agent's files runs jailed
as the sandbox user (``agents.worktree_git``). A base checkout is the hub's
own detached checkout of a base commit, where a gate with a baseline runs
too. Removing a worktree keeps its branch while it holds unpushed commits.
"""

import shutil
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings

from agents import worktree_git
from agents.gitexec import WorkspaceError, git_checked
from agents.treeremoval import tree_remove
from agents.workspace.mirrors import (
    _identity,
    _mirror_lock,
    _mirror_sync_locked,
    _name_status,
    _ref_exists,
    _run,
    mirror_path,
)


@dataclass(frozen=True)
class RemovalReport:
    branch_kept: bool
    unpushed_commits: int


def worktree_path(*, agent_id: str, task_id: str) -> Path:
    return Path(settings.DATA_DIR) / "worktrees" / f"agent-{agent_id}-{task_id}"


def worktree_create(*, repository: str, base_branch: str, work_branch: str, path: Path) -> Path:
    """Check out ``work_branch`` into ``path``: new from ``base_branch``, or the one kept."""
    mirror = mirror_path(repository)
    with _mirror_lock(mirror):
        _mirror_sync_locked(repository, mirror)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists() or worktree_git.mirror_registration(path, mirror):
            # The path is this agent's alone: what is there was left by an
            # earlier run of it, killed half-way (a retry runs on a fresh checkout).
            _worktree_clear(mirror, path)
        # The branch is there when an earlier run of the agent kept commits
        # that never reached the remote (its node stopped and handed it back):
        # the new run continues from them rather than failing on the name.
        if _ref_exists(mirror, f"refs/heads/{work_branch}"):
            start = [str(path), work_branch]
        else:
            start = ["-b", work_branch, str(path), f"refs/remotes/origin/{base_branch}"]
        try:
            _run(mirror, "worktree", "add", "--quiet", *start)
        except WorkspaceError:
            # Asking git only on failure saves a process on every spawn.
            if not _ref_exists(mirror, f"refs/remotes/origin/{base_branch}"):
                raise WorkspaceError(
                    f"branch {base_branch!r} does not exist in {repository}"
                ) from None
            raise
        worktree_git.agent_worktree_prepare(path=path, mirror=mirror)
    return path


def worktree_commit(*, path: Path, message: str) -> str | None:
    """Commit everything that changed in the worktree; the new sha, or None if nothing did."""
    worktree_git.stage_all(worktree_git.agent_worktree(path))
    return worktree_commit_staged(path=path, message=message)


def worktree_changed(*, path: Path) -> bool:
    status = ["status", "--porcelain", "--ignore-submodules=all", "--untracked-files=normal"]
    return bool(git_checked(status, worktree=worktree_git.agent_worktree(path)))


def worktree_diff(*, path: Path, base_branch: str) -> str:
    """The change the agent made against its base, committed or not."""
    tree = worktree_git.agent_worktree(path)
    worktree_git.stage_all(tree, "--intent-to-add")
    return git_checked(
        ["diff", "--no-ext-diff", "--no-textconv", f"refs/remotes/origin/{base_branch}", "--"],
        worktree=tree,
    )


def worktree_stage(*, path: Path) -> str:
    """Stage everything that changed and return the staged diff ('' when nothing did).

    The gates judge exactly this snapshot and ``worktree_commit_staged``
    commits exactly it, so nothing written while the gates run (caches,
    coverage data, a late edit) slips into the commit unjudged. A nested
    repository raises ``NestedRepositoryRefused`` and stages nothing.
    """
    tree = worktree_git.agent_worktree(path)
    worktree_git.stage_all(tree)
    diff = ["diff", "--cached", "--no-color", "--no-ext-diff", "--no-textconv", "--binary"]
    return git_checked([*diff, "HEAD", "--"], worktree=tree)


def worktree_commit_staged(*, path: Path, message: str) -> str | None:
    """Commit what is staged; the new sha, or None if nothing is."""
    return worktree_git.commit_staged(
        worktree_git.agent_worktree(path), message=message, identity=_identity()
    )


def worktree_index_reset(*, path: Path) -> None:
    """Make the worktree's index hold its HEAD (after the hub moved the branch)."""
    git_checked(["read-tree", "HEAD"], worktree=worktree_git.agent_worktree(path))


def worktree_patch(*, path: Path, base: str) -> str:
    """Everything in the worktree (committed or not) against commit ``base``, as a text diff.

    Stages all first, as a commit would (a nested repository raises
    ``NestedRepositoryRefused``); binary files are named, not included.
    """
    tree = worktree_git.agent_worktree(path)
    worktree_git.stage_all(tree)
    diff = ["diff", "--cached", "--no-color", "--no-ext-diff", "--no-textconv", "--no-renames"]
    return git_checked([*diff, base, "--"], worktree=tree)


def worktree_staged_changes(*, path: Path) -> list[tuple[str, str]]:
    """(status, path) of each file staged against HEAD: A added, M modified, D deleted, T type."""
    tree = worktree_git.agent_worktree(path)
    listing = ["diff", "--cached", "--name-status", "-z", "--no-renames", "HEAD", "--"]
    return _name_status(git_checked(listing, worktree=tree))


def worktree_staged_tree(*, path: Path) -> str:
    """The id of the tree staged in the worktree: what a commit now would hold."""
    return git_checked(["write-tree"], worktree=worktree_git.agent_worktree(path)).strip()


def base_checkout_path(*, agent_id: str) -> Path:
    return Path(settings.DATA_DIR) / "baselines" / f"base-{agent_id}"


def base_checkout_add(*, repository: str, commit: str, path: Path) -> Path:
    """Check ``commit`` out (detached) at ``path``: a gate with a baseline runs there too.

    The checkout is the hub's, made from the mirror like an agent's worktree;
    one left behind by an earlier run of the same agent is replaced.
    """
    mirror = mirror_path(repository)
    with _mirror_lock(mirror):
        if path.exists() or worktree_git.mirror_registration(path, mirror):
            _worktree_clear(mirror, path)
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        _run(mirror, "worktree", "add", "--quiet", "--detach", str(path), commit)
    return path


def base_checkout_remove(*, repository: str, path: Path) -> None:
    mirror = mirror_path(repository)
    with _mirror_lock(mirror):
        _worktree_clear(mirror, path)


def worktree_remove(*, repository: str, path: Path, work_branch: str) -> RemovalReport:
    """Remove the worktree; delete its branch only when it holds no unpushed commit."""
    mirror = mirror_path(repository)
    if not (mirror / "HEAD").exists():
        tree_remove(path)
        worktree_git.agent_worktree_forget(path)
        return RemovalReport(branch_kept=False, unpushed_commits=0)
    # Each git process here runs under the mirror's lock, so a kill-all of many
    # agents of one repository waits on them in turn: run as few as possible.
    with _mirror_lock(mirror):
        _worktree_clear(mirror, path)
        ref = f"refs/heads/{work_branch}"
        if not _ref_exists(mirror, ref):
            return RemovalReport(branch_kept=False, unpushed_commits=0)
        unpushed = int(_run(mirror, "rev-list", "--count", ref, "--not", "--remotes=origin"))
        if unpushed == 0:
            _run(mirror, "branch", "--quiet", "-D", work_branch)
    return RemovalReport(branch_kept=unpushed > 0, unpushed_commits=unpushed)


def _worktree_clear(mirror: Path, path: Path) -> None:
    """Under the mirror's lock: delete the worktree at ``path`` and every trace of it.

    The hub deletes the directory itself (``tree_remove``), then the
    mirror's registration of it, as ``git worktree remove`` would, but with no
    git process: git would read the worktree's ``.git`` file and walk what is
    left of the agent's files as root. ``prune`` is not enough either: a
    ``git worktree add`` killed half-way (its node SIGKILLed, say) leaves the
    registration locked "initializing", and ``prune`` keeps a locked one.
    """
    tree_remove(path)
    worktree_git.agent_worktree_forget(path)
    registration = worktree_git.mirror_registration(path, mirror)
    if registration is not None:
        shutil.rmtree(registration, ignore_errors=True)


def worktree_list(repository: str) -> list[Path]:
    mirror = mirror_path(repository)
    if not (mirror / "HEAD").exists():
        return []
    listing = _run(mirror, "worktree", "list", "--porcelain")
    paths = [
        Path(line[len("worktree ") :])
        for line in listing.splitlines()
        if line.startswith("worktree ")
    ]
    return [path for path in paths if path != mirror]


def worktree_dirs() -> list[Path]:
    """Every directory where an agent worktree lives or once lived, registered or not."""
    root = Path(settings.DATA_DIR) / "worktrees"
    return sorted(path for path in root.iterdir() if path.is_dir()) if root.exists() else []


def worktree_discard(path: Path) -> None:
    """Delete a worktree directory that no mirror knows (it holds no commit of its own)."""
    tree_remove(path)
    worktree_git.agent_worktree_forget(path)


@dataclass(frozen=True)
class WorktreeStatus:
    """What git sees in a worktree beyond its commit: new paths, and tracked paths changed."""

    untracked: frozenset[str]  # untracked or ignored; a wholly new directory as "dir/"
    changed: frozenset[str]


def worktree_status(*, path: Path) -> WorktreeStatus:
    """The worktree's untracked, ignored and changed paths (git runs jailed, as always)."""
    status = ["status", "--porcelain=v1", "-z", "--no-renames", "--ignore-submodules=all"]
    status += ["--untracked-files=normal", "--ignored=traditional"]
    listing = git_checked(status, worktree=worktree_git.agent_worktree(path))
    untracked: set[str] = set()
    changed: set[str] = set()
    for entry in listing.split("\0"):
        code, name = entry[:2], entry[3:]
        if not name:
            continue
        (untracked if code in ("??", "!!") else changed).add(name)
    return WorktreeStatus(frozenset(untracked), frozenset(changed))
