"""Work branches in the mirror: diffs, changed files, the base merged in, trees, blobs, push.

Everything here reads or moves the mirror's ``refs/heads/*`` and objects,
never an agent's worktree. ``branch_base_merge`` merges in memory with
``git merge-tree`` and moves the branch with a compare-and-swap;
``tree_changes`` and ``blob_read`` give the hub the merged files to write
into the worktree itself; ``branch_push`` is the one push of a work branch.
"""

import re
from dataclasses import dataclass
from pathlib import Path

from agents.gitexec import WorkspaceError, git_checked, git_home, git_run
from agents.workspace.mirrors import (
    _identity,
    _is_ancestor,
    _merge_tree,
    _mirror_lock,
    _mirror_sync_locked,
    _name_status,
    _ref_exists,
    _remote,
    _run,
    mirror_path,
)


def branch_diff(*, repository: str, work_branch: str, base_branch: str) -> str:
    """What the work branch changes since it left its base (the three-dot diff)."""
    mirror = mirror_path(repository)
    return _run(
        mirror,
        "diff",
        "--no-color",
        "--no-ext-diff",
        "--no-textconv",
        f"refs/remotes/origin/{base_branch}...refs/heads/{work_branch}",
        "--",
    )


def branch_changes(*, repository: str, work_branch: str, base_branch: str) -> list[tuple[str, str]]:
    """(status, path) of each file the work branch changes since it left its base."""
    commits = f"refs/remotes/origin/{base_branch}...refs/heads/{work_branch}"
    listing = ["diff", "--name-status", "-z", "--no-renames", commits, "--"]
    return _name_status(_run(mirror_path(repository), *listing))


def branch_tree(*, repository: str, work_branch: str) -> str:
    return _run(mirror_path(repository), "rev-parse", f"refs/heads/{work_branch}^{{tree}}")


def branch_head(*, repository: str, work_branch: str) -> str:
    return _run(mirror_path(repository), "rev-parse", f"refs/heads/{work_branch}")


def branch_fork_point(*, repository: str, work_branch: str, base_branch: str) -> str:
    """The commit the work branch left its base at: what its three-dot diff is taken against."""
    mirror = mirror_path(repository)
    return _run(
        mirror, "merge-base", f"refs/remotes/origin/{base_branch}", f"refs/heads/{work_branch}"
    )


def branch_file_read(*, repository: str, base_branch: str, path: str) -> str | None:
    """A file's text on the base branch as last fetched, or None if it has no such file."""
    mirror = mirror_path(repository)
    ref = f"refs/remotes/origin/{base_branch}:{path}"
    if not _ref_exists(mirror, ref):
        return None
    return _run(mirror, "show", "--no-textconv", ref)


def branch_conflicts(*, repository: str, work_branch: str, base_branch: str) -> list[str]:
    """Fetch, then the files that conflict when the work branch merges into its base.

    ``git merge-tree --write-tree`` merges in memory (no worktree, no index);
    it exits 1 on conflicts and lists the conflicted paths after the tree id.
    """
    mirror = mirror_path(repository)
    with _mirror_lock(mirror):
        _mirror_sync_locked(repository, mirror)
    if not _ref_exists(mirror, f"refs/remotes/origin/{base_branch}"):
        raise WorkspaceError(f"branch {base_branch!r} no longer exists in {repository}")
    status, out, err = _merge_tree(
        mirror, f"refs/heads/{work_branch}", f"refs/remotes/origin/{base_branch}"
    )
    if status == 0:
        return []
    if status == 1:
        return [line for line in out.splitlines()[1:] if line.strip()]
    raise WorkspaceError(f"git merge-tree failed: {err.strip()}")


@dataclass(frozen=True)
class BaseMerge:
    """What bringing the base branch into a work branch did.

    ``status`` is ``current`` (the branch already holds its base: nothing
    done), ``merged`` (a clean merge commit is the branch's new head) or
    ``conflicted``. On a conflict handed to the agent, ``head`` is a merge
    commit that keeps the branch's side of each conflicting file and
    ``tree`` is git's merge with conflict markers in those files, for the
    worktree; otherwise nothing moved and ``head`` is ``previous``.
    """

    status: str
    previous: str
    head: str
    base: str
    tree: str = ""
    conflicts: tuple[str, ...] = ()


def branch_base_merge(
    *, repository: str, work_branch: str, base_branch: str, keep_conflicts: bool
) -> BaseMerge:
    """Fetch, then merge the base branch as last fetched into the work branch, in the mirror.

    ``git merge-tree --write-tree`` merges in memory (no worktree, no index,
    nothing of the agent's is read as anything but objects). A clean merge
    becomes a two-parent commit on the work branch. A conflicting one moves
    the branch only when ``keep_conflicts`` (an agent that can resolve it
    continues from the merge); the branch moves with a compare-and-swap, so
    a concurrent change of it fails the merge rather than being lost.
    """
    mirror = mirror_path(repository)
    work_ref, base_ref = f"refs/heads/{work_branch}", f"refs/remotes/origin/{base_branch}"
    with _mirror_lock(mirror):
        _mirror_sync_locked(repository, mirror)
        if not _ref_exists(mirror, base_ref):
            raise WorkspaceError(f"branch {base_branch!r} no longer exists in {repository}")
        head = _run(mirror, "rev-parse", f"{work_ref}^{{commit}}")
        base = _run(mirror, "rev-parse", f"{base_ref}^{{commit}}")
        if _is_ancestor(mirror, base, head):
            return BaseMerge("current", head, head, base)
        # The full ref names label the conflict markers: unambiguous, whatever tags exist.
        merge = ["merge-tree", "--write-tree", "-z", "--name-only", "--no-messages"]
        result = git_run([*merge, work_ref, base_ref], git_dir=mirror)
        if result.status not in (0, 1):
            raise WorkspaceError(f"git merge-tree failed: {result.stderr.strip()}")
        fields = [field for field in result.stdout.split("\0") if field]
        if not fields:
            raise WorkspaceError("git merge-tree failed: it named no tree")
        tree, *files = fields
        title = f"Merge {base_branch} into {work_branch}"
        if result.status == 0:
            merged = _commit_on(mirror, work_ref, tree, [head, base], title, previous=head)
            return BaseMerge("merged", head, merged, base, tree)
        conflicts = tuple(dict.fromkeys(files))
        if not keep_conflicts:
            return BaseMerge("conflicted", head, head, base, tree, conflicts)
        kept = _tree_with_paths_of(mirror, tree, f"{head}^{{tree}}", list(conflicts))
        message = (
            f"{title}\n\nConflicts in {', '.join(conflicts[:20])}"
            f"{' and more' if len(conflicts) > 20 else ''}: this commit keeps the work "
            "branch's side of them; the next commit resolves them.\n"
        )
        merged = _commit_on(mirror, work_ref, kept, [head, base], message, previous=head)
        return BaseMerge("conflicted", head, merged, base, tree, conflicts)


def _commit_on(
    mirror: Path, ref: str, tree: str, parents: list[str], message: str, *, previous: str
) -> str:
    """Commit ``tree`` on ``parents``; move ``ref`` to it if it still points at ``previous``."""
    parent_args = [arg for parent in parents for arg in ("-p", parent)]
    commit = _run(mirror, *_identity(), "commit-tree", tree, *parent_args, "-m", message)
    _run(mirror, "update-ref", "-m", "flotilla: merge the base", ref, commit, previous)
    return commit


def _tree_with_paths_of(mirror: Path, tree: str, source: str, paths: list[str]) -> str:
    """``tree`` with each of ``paths`` as ``source`` holds it (absent where ``source`` lacks it)."""
    here: set[str] = set()
    below: dict[str, list[str]] = {}
    for path in paths:
        name, _, remainder = path.partition("/")
        if remainder:
            below.setdefault(name, []).append(remainder)
        else:
            here.add(name)
    entries = _tree_entries(mirror, tree)
    theirs = _tree_entries(mirror, source) if source else {}
    for name in here:
        if name in theirs:
            entries[name] = theirs[name]
        else:
            entries.pop(name, None)
    for name, inner in below.items():
        if name in here:
            continue
        ours, kept = entries.get(name), theirs.get(name)
        if (ours and ours[1] != "tree") or (kept and kept[1] != "tree"):
            # A file where the other side has a directory: take the source's entry whole.
            if kept:
                entries[name] = kept
            else:
                entries.pop(name, None)
            continue
        subtree = _tree_with_paths_of(
            mirror, ours[2] if ours else _EMPTY_TREE, kept[2] if kept else "", inner
        )
        if subtree == _EMPTY_TREE:
            entries.pop(name, None)
        else:
            entries[name] = ("040000", "tree", subtree)
    listing = "".join(
        f"{mode} {kind} {oid}\t{name}\0" for name, (mode, kind, oid) in sorted(entries.items())
    )
    return git_checked(["mktree", "-z"], git_dir=mirror, stdin=listing.encode()).strip()


_EMPTY_TREE = "4b825dc642cb6eb9a060e54bf8d69288fbee4904"


def _tree_entries(mirror: Path, tree: str) -> dict[str, tuple[str, str, str]]:
    """name → (mode, type, object id) of one level of ``tree``."""
    listing = git_checked(["ls-tree", "-z", tree], git_dir=mirror)
    entries = {}
    for entry in listing.split("\0"):
        meta, _, name = entry.partition("\t")
        if name:
            mode, kind, oid = meta.split(" ")
            entries[name] = (mode, kind, oid)
    return entries


@dataclass(frozen=True)
class TreeChange:
    """One path that differs between two trees: its new mode and blob ('' when it is gone)."""

    path: str
    mode: str
    blob: str


def tree_changes(*, repository: str, old: str, new: str) -> list[TreeChange]:
    """Every file that differs from tree ``old`` to tree ``new`` (deletions with no blob)."""
    raw = _run(mirror_path(repository), "diff-tree", "-r", "-z", "--no-renames", old, new, "--")
    fields = raw.split("\0")
    changes = []
    for meta, path in zip(fields[0::2], fields[1::2], strict=False):
        parts = meta.lstrip(":").split(" ")
        if len(parts) < 5 or not path:
            continue
        mode, blob, status = parts[1], parts[3], parts[4]
        deleted = status.startswith("D")
        changes.append(TreeChange(path, "" if deleted else mode, "" if deleted else blob))
    return changes


def blob_read(*, repository: str, blob: str) -> bytes:
    """A blob's exact bytes from the mirror (``git unpack-file``: no filter, no conversion).

    Git's output reaches the hub as text, which would change a binary
    file; ``unpack-file`` writes the blob into a file of the hub's own
    directory instead, which is read and removed here.
    """
    if not re.fullmatch(r"[0-9a-f]{40}|[0-9a-f]{64}", blob):
        raise WorkspaceError(f"not a blob id: {blob[:80]!r}")
    name = _run(mirror_path(repository), "unpack-file", blob).strip()
    if not re.fullmatch(r"\.merge_file_[A-Za-z0-9]+", name):
        raise WorkspaceError(f"git unpack-file failed: unexpected answer {name[:80]!r}")
    path = git_home() / name
    try:
        return path.read_bytes()
    finally:
        path.unlink(missing_ok=True)


def commit_tree(*, repository: str, commit: str) -> str:
    return _run(mirror_path(repository), "rev-parse", f"{commit}^{{tree}}")


def branch_discard(*, repository: str, work_branch: str, head: str) -> None:
    """Delete the work branch if it still points at ``head``, unpushed commits and all.

    Only for work kept elsewhere (a script agent retried on a new base keeps
    its attempt's patch): every other path keeps a branch with unpushed
    commits. ``update-ref -d`` deletes it even while a worktree has it out.
    """
    mirror = mirror_path(repository)
    with _mirror_lock(mirror):
        _run(mirror, "update-ref", "-d", f"refs/heads/{work_branch}", head)


def branch_push(*, repository: str, work_branch: str) -> str:
    """Push the work branch to the repository's remote; returns the pushed sha."""
    mirror = mirror_path(repository)
    ref = f"refs/heads/{work_branch}"
    with _mirror_lock(mirror):
        remote = _remote(repository)
        push = ["push", "--quiet", "origin", f"{ref}:{ref}"]
        _run(mirror, *remote.options, *push, remote=remote.url)
        return _run(mirror, "rev-parse", ref)


def branch_unpushed_commits(*, repository: str, work_branch: str) -> int:
    mirror = mirror_path(repository)
    ref = f"refs/heads/{work_branch}"
    if not _ref_exists(mirror, ref):
        return 0
    return int(_run(mirror, "rev-list", "--count", ref, "--not", "--remotes=origin"))


def branch_exists(*, repository: str, work_branch: str) -> bool:
    return _ref_exists(mirror_path(repository), f"refs/heads/{work_branch}")


def branch_files(*, repository: str, work_branch: str) -> list[tuple[str, str]]:
    """(path, blob id) of every file on the work branch, read from the mirror's objects."""
    listing = _run(
        mirror_path(repository), "ls-tree", "-r", "-z", "--full-tree", f"refs/heads/{work_branch}"
    )
    files = []
    for entry in listing.split("\0"):
        meta, _, name = entry.partition("\t")
        fields = meta.split()
        if name and len(fields) == 3 and fields[1] == "blob":
            files.append((name, fields[2]))
    return files
