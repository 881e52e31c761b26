"""Projects: scratch repositories and integration branches.

A task that names no repository works in a scratch repository, a bare
repository of the hub's whose ``main`` holds one empty commit; a task that
depends on others starts from an integration branch that merges their
branches onto its base in the mirror (``git merge-tree``, no checkout) and is
force-pushed, since it is derived entirely from its inputs.
``taskqueue.branches`` is its caller.
"""

from dataclasses import dataclass
from pathlib import Path

from agents.gitexec import WorkspaceError
from agents.workspace.mirrors import (
    _identity,
    _is_ancestor,
    _merge_tree,
    _mirror_lock,
    _mirror_sync_locked,
    _ref_exists,
    _remote,
    _run,
    mirror_path,
    mirror_sync,
)


@dataclass(frozen=True)
class IntegrationReport:
    """The outcome of merging dependency branches onto a base: a sha, or the conflicts."""

    sha: str | None
    conflicts: list[str]
    conflicting_branch: str = ""


def scratch_repository_ensure(*, path: Path) -> str:
    """A bare repository at ``path`` whose ``main`` holds one empty commit; returns its path.

    Tasks that name no repository work in one of these, so every task has a
    worktree, a branch and a diff, and the dependency merges work the same way.
    """
    if (path / "refs" / "heads" / "main").exists():
        return str(path)  # made before; nothing moves its main branch afterwards
    with _mirror_lock(path):
        if not (path / "HEAD").exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            _run(path, "init", "--bare", "--quiet", "--initial-branch=main")
        if not _ref_exists(path, "refs/heads/main"):
            empty_tree = _run(path, "hash-object", "-t", "tree", "-w", "/dev/null")
            sha = _run(path, *_identity(), "commit-tree", empty_tree, "-m", "scratch workspace")
            _run(path, "update-ref", "refs/heads/main", sha)
    return str(path)


def branch_integrate(
    *, repository: str, base_branch: str, branches: list[str], target: str
) -> IntegrationReport:
    """Merge ``branches`` (in order) onto ``base_branch`` and push the result as ``target``.

    The merges happen in the bare mirror with ``git merge-tree --write-tree``
    (no worktree, no index), so nothing is checked out. A branch already
    contained in the result is skipped and one that contains it is taken
    as it is. ``target`` is force-pushed: it is derived entirely from its
    inputs, so building it again for a retry replaces it. On a conflict
    nothing is pushed and the report names the conflicting files.
    """
    mirror = mirror_path(repository)
    with _mirror_lock(mirror):
        _mirror_sync_locked(repository, mirror)
        for branch in [base_branch, *branches]:
            if not _ref_exists(mirror, f"refs/remotes/origin/{branch}"):
                raise WorkspaceError(f"branch {branch!r} does not exist in {repository}")
        head = _run(mirror, "rev-parse", f"refs/remotes/origin/{base_branch}")
        for branch in branches:
            other = _run(mirror, "rev-parse", f"refs/remotes/origin/{branch}")
            if _is_ancestor(mirror, other, head):
                continue
            if _is_ancestor(mirror, head, other):
                head = other
                continue
            status, out, err = _merge_tree(mirror, head, other)
            if status == 1:
                files = [line for line in out.splitlines()[1:] if line.strip()]
                return IntegrationReport(None, files, branch)
            if status != 0:
                raise WorkspaceError(f"git merge-tree failed: {err.strip()}")
            tree = out.splitlines()[0].strip()
            head = _run(
                mirror,
                *_identity(),
                "commit-tree",
                tree,
                "-p",
                head,
                "-p",
                other,
                "-m",
                f"Merge {branch} into {target}",
            )
        remote = _remote(repository)
        push = ["push", "--quiet", "--force", "origin", f"{head}:refs/heads/{target}"]
        _run(mirror, *remote.options, *push, remote=remote.url)
        _run(mirror, "update-ref", f"refs/remotes/origin/{target}", head)
    return IntegrationReport(head, [])


def remote_branch_diff(*, repository: str, branch: str, base_branch: str) -> str:
    """What a pushed branch changes since it left ``base_branch`` ('' if either is gone)."""
    mirror = mirror_sync(repository)
    refs = [f"refs/remotes/origin/{branch}", f"refs/remotes/origin/{base_branch}"]
    if not all(_ref_exists(mirror, ref) for ref in refs):
        return ""
    diff = ["diff", "--no-color", "--no-ext-diff", "--no-textconv", f"{refs[1]}...{refs[0]}", "--"]
    return _run(mirror, *diff)
