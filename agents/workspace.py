"""Git workspaces: one bare mirror per repository, one worktree per agent.

Each repository gets one bare mirror under ``DATA_DIR/mirrors``; every agent
gets a worktree of it on its own branch. Remote branches are fetched into
``refs/remotes/origin/*`` so a fetch can never move or delete an agent's
local branch, and "unpushed" simply means "not reachable from any
``origin/*`` ref".

Every git command goes through ``agents.gitexec`` (one hub-owned
environment); the commands that read an agent's files go through
``agents.worktree_git``, which runs them jailed as the sandbox user. Every
fetch and push first asks ``agents.repositories`` whether the repository may
still be reached, and pins the address it vetted.
"""

import contextlib
import fcntl
import hashlib
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings

from agents import worktree_git
from agents.gitexec import WorkspaceError, git_checked, git_home, git_run
from agents.repositories import (
    GitRemote,
    RepositoryRefused,
    repository_normalise,
    repository_problem,
    repository_remote,
    repository_scheme,
)
from agents.worktree_git import NestedRepositoryRefused

__all__ = [
    "NestedRepositoryRefused",
    "WorkspaceError",
    "repository_normalise",
    "repository_problem",
    "repository_scheme",
]


@dataclass(frozen=True)
class RemovalReport:
    branch_kept: bool
    unpushed_commits: int


def mirror_path(repository: str) -> Path:
    canonical = repository_normalise(repository)
    digest = hashlib.sha256(canonical.encode()).hexdigest()[:16]
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", canonical.rstrip("/").split("/")[-1])[:40]
    return Path(settings.DATA_DIR) / "mirrors" / f"{stem}-{digest}.git"


def worktree_path(*, agent_id: str, task_id: str) -> Path:
    return Path(settings.DATA_DIR) / "worktrees" / f"agent-{agent_id}-{task_id}"


@contextlib.contextmanager
def _mirror_lock(mirror: Path) -> Iterator[None]:
    mirror.parent.mkdir(parents=True, exist_ok=True)
    with open(mirror.with_suffix(".lock"), "w") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def _run(repo_dir: Path, *args: str, remote: str | None = None) -> str:
    """Git on a repository the hub owns (a mirror or a scratch repository), never a worktree.

    ``remote`` is given to a fetch or push: only those reach the repository.
    """
    return git_checked(args, git_dir=repo_dir, remote=remote)


def mirror_sync(repository: str) -> Path:
    """Create or refresh the bare mirror of ``repository``; returns its path."""
    mirror = mirror_path(repository)
    with _mirror_lock(mirror):
        _mirror_sync_locked(repository, mirror)
    return mirror


def _remote(repository: str) -> GitRemote:
    """The repository's remote for a fetch or push, judged again now (``agents.repositories``)."""
    try:
        return repository_remote(repository)
    except RepositoryRefused as error:
        raise WorkspaceError(f"repository {repository[:200]} refused: {error}") from None


def _mirror_sync_locked(repository: str, mirror: Path) -> None:
    remote = _remote(repository)
    if not (mirror / "HEAD").exists():
        if mirror.exists():
            shutil.rmtree(mirror)
        _run(mirror, "init", "--bare", "--quiet")
        _run(mirror, "remote", "add", "origin", remote.url)
        _run(mirror, "config", "remote.origin.fetch", "+refs/heads/*:refs/remotes/origin/*")
    _run(mirror, *remote.options, "fetch", "--prune", "--quiet", "origin", remote=remote.url)


def worktree_create(*, repository: str, base_branch: str, work_branch: str, path: Path) -> Path:
    """Check out ``work_branch`` into ``path``: new from ``base_branch``, or the one kept."""
    mirror = mirror_path(repository)
    with _mirror_lock(mirror):
        _mirror_sync_locked(repository, mirror)
        path.parent.mkdir(parents=True, exist_ok=True)
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


def worktree_staged_changes(*, path: Path) -> list[tuple[str, str]]:
    """(status, path) of each file staged against HEAD: A added, M modified, D deleted, T type."""
    tree = worktree_git.agent_worktree(path)
    listing = ["diff", "--cached", "--name-status", "-z", "--no-renames", "HEAD", "--"]
    return _name_status(git_checked(listing, worktree=tree))


def worktree_staged_tree(*, path: Path) -> str:
    """The id of the tree staged in the worktree: what a commit now would hold."""
    return git_checked(["write-tree"], worktree=worktree_git.agent_worktree(path)).strip()


def branch_changes(*, repository: str, work_branch: str, base_branch: str) -> list[tuple[str, str]]:
    """(status, path) of each file the work branch changes since it left its base."""
    commits = f"refs/remotes/origin/{base_branch}...refs/heads/{work_branch}"
    listing = ["diff", "--name-status", "-z", "--no-renames", commits, "--"]
    return _name_status(_run(mirror_path(repository), *listing))


def _name_status(listing: str) -> list[tuple[str, str]]:
    fields = listing.split("\0")
    return [
        (status[:1], name)
        for status, name in zip(fields[0::2], fields[1::2], strict=False)
        if status and name
    ]


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


def base_checkout_path(*, agent_id: str) -> Path:
    return Path(settings.DATA_DIR) / "baselines" / f"base-{agent_id}"


def base_checkout_add(*, repository: str, commit: str, path: Path) -> Path:
    """Check ``commit`` out (detached) at ``path``: a gate with a baseline runs there too.

    The checkout is the hub's, made from the mirror like an agent's worktree;
    one left behind by an earlier run of the same agent is replaced.
    """
    mirror = mirror_path(repository)
    with _mirror_lock(mirror):
        if path.exists():
            shutil.rmtree(path)
            _run(mirror, "worktree", "prune")
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        _run(mirror, "worktree", "add", "--quiet", "--detach", str(path), commit)
    return path


def base_checkout_remove(*, repository: str, path: Path) -> None:
    mirror = mirror_path(repository)
    with _mirror_lock(mirror):
        shutil.rmtree(path, ignore_errors=True)
        _run(mirror, "worktree", "prune")


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


def worktree_remove(*, repository: str, path: Path, work_branch: str) -> RemovalReport:
    """Remove the worktree; delete its branch only when it holds no unpushed commit."""
    mirror = mirror_path(repository)
    if not (mirror / "HEAD").exists():
        shutil.rmtree(path, ignore_errors=True)
        worktree_git.agent_worktree_forget(path)
        return RemovalReport(branch_kept=False, unpushed_commits=0)
    # Each git process here runs under the mirror's lock, so a kill-all of many
    # agents of one repository waits on them in turn: run as few as possible.
    # The hub deletes the worktree itself (without following a link) rather
    # than have git walk the agent's files, then lets git forget it.
    with _mirror_lock(mirror):
        shutil.rmtree(path, ignore_errors=True)
        worktree_git.agent_worktree_forget(path)
        _run(mirror, "worktree", "prune")
        ref = f"refs/heads/{work_branch}"
        if not _ref_exists(mirror, ref):
            return RemovalReport(branch_kept=False, unpushed_commits=0)
        unpushed = int(_run(mirror, "rev-list", "--count", ref, "--not", "--remotes=origin"))
        if unpushed == 0:
            _run(mirror, "branch", "--quiet", "-D", work_branch)
    return RemovalReport(branch_kept=unpushed > 0, unpushed_commits=unpushed)


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


def _ref_exists(repo_dir: Path, ref: str) -> bool:
    try:
        _run(repo_dir, "rev-parse", "--verify", "--quiet", ref)
    except WorkspaceError:
        return False
    return True


def mirror_repositories() -> list[str]:
    """Every repository that has a mirror on this hub (for the reconciler)."""
    repositories = []
    for mirror in sorted((Path(settings.DATA_DIR) / "mirrors").glob("*.git")):
        if (mirror / "HEAD").exists():
            try:
                repositories.append(_run(mirror, "config", "remote.origin.url"))
            except WorkspaceError:
                continue
    return repositories


def worktree_dirs() -> list[Path]:
    """Every directory where an agent worktree lives or once lived, registered or not."""
    root = Path(settings.DATA_DIR) / "worktrees"
    return sorted(path for path in root.iterdir() if path.is_dir()) if root.exists() else []


def worktree_discard(path: Path) -> None:
    """Delete a worktree directory that no mirror knows (it holds no commit of its own)."""
    shutil.rmtree(path, ignore_errors=True)
    worktree_git.agent_worktree_forget(path)


# --- projects: scratch repositories and integration branches -----------------


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


def _identity() -> list[str]:
    name, email = settings.FLOTILLA_GIT_AUTHOR_NAME, settings.FLOTILLA_GIT_AUTHOR_EMAIL
    return ["-c", f"user.name={name}", "-c", f"user.email={email}"]


def _is_ancestor(repo_dir: Path, ancestor: str, descendant: str) -> bool:
    return (
        git_run(["merge-base", "--is-ancestor", ancestor, descendant], git_dir=repo_dir).status == 0
    )


def _merge_tree(repo_dir: Path, ours: str, theirs: str) -> tuple[int, str, str]:
    result = git_run(
        ["merge-tree", "--write-tree", "--name-only", "--no-messages", ours, theirs],
        git_dir=repo_dir,
    )
    return result.status, result.stdout, result.stderr


# --- repository setup: the files that key its cache, what it created, excludes ----


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


SETUP_EXCLUDE_HEADER = "# flotilla: paths the repository's [setup] creates (never committed)"


def mirror_exclude_add(*, repository: str, paths: list[str]) -> None:
    """Exclude ``paths`` (anchored at the top) from every commit of the repository's agents.

    They go to the mirror's ``info/exclude``, which git reads for every
    worktree of the mirror: every agent of the repository runs the same
    setup, so the paths one agent's setup created are the paths of all.
    The file is the hub's (the mirror is never inside a sandbox).
    """
    mirror = mirror_path(repository)
    with _mirror_lock(mirror):
        exclude = mirror / "info" / "exclude"
        exclude.parent.mkdir(exist_ok=True)
        lines = exclude.read_text().splitlines() if exclude.is_file() else []
        new = [pattern for pattern in map(exclude_pattern, paths) if pattern not in lines]
        if not new:
            return
        if SETUP_EXCLUDE_HEADER not in lines:
            new.insert(0, SETUP_EXCLUDE_HEADER)
        written = exclude.with_name("exclude.flotilla-new")
        written.write_text("".join(f"{line}\n" for line in [*lines, *new]))
        written.replace(exclude)


def exclude_pattern(path: str) -> str:
    """A gitignore pattern that matches exactly ``path`` from the top ("dir/" for a directory).

    Every character a pattern treats specially is escaped, so a name such as
    ``[x]`` or ``!y`` excludes itself and nothing else. A name with a line
    break cannot be written as a pattern: ``ValueError``.
    """
    if "\n" in path or "\r" in path:
        raise ValueError(f"{path!r} cannot be written as an exclude pattern")
    directory = path.endswith("/")
    name = path.rstrip("/")
    escaped = re.sub(r"([\\*?\[\]!# ])", r"\\\1", name)
    return f"/{escaped}{'/' if directory else ''}"
