"""Git workspaces: the only module that imports GitPython.

Each repository gets one bare mirror under ``DATA_DIR/mirrors``; every agent
gets a worktree of it on its own branch. Remote branches are fetched into
``refs/remotes/origin/*`` so a fetch can never move or delete an agent's
local branch, and "unpushed" simply means "not reachable from any
``origin/*`` ref".
"""

import contextlib
import fcntl
import hashlib
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import git
from django.conf import settings


class WorkspaceError(Exception):
    """A git operation on an agent's workspace failed; the message is for humans."""


@dataclass(frozen=True)
class RemovalReport:
    branch_kept: bool
    unpushed_commits: int


# Git refuses to work in a repository owned by another user (the sandbox user
# owns the worktree); configuration from the environment counts as the
# command line, which is where safe.directory may be set.
_GIT_ENV = {
    "GIT_CONFIG_COUNT": "2",
    "GIT_CONFIG_KEY_0": "safe.directory",
    "GIT_CONFIG_VALUE_0": "*",
    "GIT_CONFIG_KEY_1": "core.hooksPath",
    "GIT_CONFIG_VALUE_1": "/dev/null",
    "GIT_TERMINAL_PROMPT": "0",
}


def repository_normalise(repository: str) -> str:
    """A canonical form of a repository reference: an absolute path or a URL."""
    parsed = urlparse(repository)
    if parsed.scheme and len(parsed.scheme) > 1:
        return repository
    if re.match(r"^[\w.-]+@[\w.-]+:", repository):
        return repository  # scp-like ssh syntax
    return str(Path(repository).expanduser().resolve())


def repository_scheme(repository: str) -> str:
    parsed = urlparse(repository)
    if parsed.scheme and len(parsed.scheme) > 1:
        return parsed.scheme
    return "ssh" if re.match(r"^[\w.-]+@[\w.-]+:", repository) else "file"


def repository_check_local(repository: str) -> str | None:
    """For a local repository, why it cannot be used (None when it can, or when remote)."""
    if repository_scheme(repository) != "file":
        return None
    path = Path(urlparse(repository).path if repository.startswith("file:") else repository)
    if not path.is_dir():
        return f"no directory at {path}"
    try:
        git.Repo(path)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError):
        return f"{path} is not a git repository"
    return None


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


def _run(repo_dir: Path | None, *args: str) -> str:
    runner = git.Git(str(repo_dir) if repo_dir else None)
    runner.update_environment(**_GIT_ENV)
    try:
        return runner.execute(["git", *args], kill_after_timeout=settings.FLOTILLA_GIT_TIMEOUT_S)  # type: ignore[return-value]
    except git.GitCommandError as error:
        detail = (error.stderr or error.stdout or "").strip().replace("stderr: ", "")
        raise WorkspaceError(f"git {args[0]} failed: {detail.strip(chr(39))}") from None


def mirror_sync(repository: str) -> Path:
    """Create or refresh the bare mirror of ``repository``; returns its path."""
    mirror = mirror_path(repository)
    with _mirror_lock(mirror):
        _mirror_sync_locked(repository, mirror)
    return mirror


def _mirror_sync_locked(repository: str, mirror: Path) -> None:
    if not (mirror / "HEAD").exists():
        if mirror.exists():
            shutil.rmtree(mirror)
        _run(None, "init", "--bare", "--quiet", str(mirror))
        _run(mirror, "remote", "add", "origin", repository_normalise(repository))
        _run(mirror, "config", "remote.origin.fetch", "+refs/heads/*:refs/remotes/origin/*")
    _run(mirror, "fetch", "--prune", "--quiet", "origin")


def worktree_create(*, repository: str, base_branch: str, work_branch: str, path: Path) -> Path:
    """Check out a new branch ``work_branch`` from ``base_branch`` into ``path``."""
    mirror = mirror_path(repository)
    with _mirror_lock(mirror):
        _mirror_sync_locked(repository, mirror)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            _run(
                mirror,
                "worktree",
                "add",
                "--quiet",
                "-b",
                work_branch,
                str(path),
                f"refs/remotes/origin/{base_branch}",
            )
        except WorkspaceError:
            # Asking git only on failure saves a process on every spawn.
            if not _ref_exists(mirror, f"refs/remotes/origin/{base_branch}"):
                raise WorkspaceError(
                    f"branch {base_branch!r} does not exist in {repository}"
                ) from None
            raise
    return path


def worktree_commit(*, path: Path, message: str) -> str | None:
    """Commit everything that changed in the worktree; the new sha, or None if nothing did."""
    _run(path, "add", "--all")
    return worktree_commit_staged(path=path, message=message)


def worktree_changed(*, path: Path) -> bool:
    return bool(_run(path, "status", "--porcelain"))


def worktree_diff(*, path: Path, base_branch: str) -> str:
    """The change the agent made against its base, committed or not."""
    _run(path, "add", "--all", "--intent-to-add")
    return _run(path, "diff", f"refs/remotes/origin/{base_branch}")


def worktree_stage(*, path: Path) -> str:
    """Stage everything that changed and return the staged diff ('' when nothing did).

    The gates judge exactly this snapshot and ``worktree_commit_staged``
    commits exactly it, so nothing written while the gates run (caches,
    coverage data, a late edit) slips into the commit unjudged.
    """
    _run(path, "add", "--all")
    return _run(path, "diff", "--cached", "--no-color", "--no-ext-diff", "--binary", "HEAD")


def worktree_commit_staged(*, path: Path, message: str) -> str | None:
    """Commit what is staged; the new sha, or None if nothing is."""
    if not _run(path, "diff", "--cached", "--name-only", "HEAD"):
        return None
    name, email = settings.FLOTILLA_GIT_AUTHOR_NAME, settings.FLOTILLA_GIT_AUTHOR_EMAIL
    _run(
        path,
        "-c",
        f"user.name={name}",
        "-c",
        f"user.email={email}",
        "commit",
        "--quiet",
        "--no-verify",
        "-m",
        message,
    )
    return _run(path, "rev-parse", "HEAD")


def branch_diff(*, repository: str, work_branch: str, base_branch: str) -> str:
    """What the work branch changes since it left its base (the three-dot diff)."""
    mirror = mirror_path(repository)
    return _run(
        mirror,
        "diff",
        "--no-color",
        "--no-ext-diff",
        f"refs/remotes/origin/{base_branch}...refs/heads/{work_branch}",
    )


def branch_file_read(*, repository: str, base_branch: str, path: str) -> str | None:
    """A file's text on the base branch as last fetched, or None if it has no such file."""
    mirror = mirror_path(repository)
    ref = f"refs/remotes/origin/{base_branch}:{path}"
    if not _ref_exists(mirror, ref):
        return None
    return _run(mirror, "show", ref)


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
    runner = git.Git(str(mirror))
    runner.update_environment(**_GIT_ENV)
    status, out, err = runner.execute(
        [
            "git",
            "merge-tree",
            "--write-tree",
            "--name-only",
            "--no-messages",
            f"refs/heads/{work_branch}",
            f"refs/remotes/origin/{base_branch}",
        ],
        with_extended_output=True,
        with_exceptions=False,
        kill_after_timeout=settings.FLOTILLA_GIT_TIMEOUT_S,
    )  # type: ignore[misc]
    if status == 0:
        return []
    if status == 1:
        return [line for line in str(out).splitlines()[1:] if line.strip()]
    raise WorkspaceError(f"git merge-tree failed: {str(err).strip()}")


def branch_push(*, repository: str, work_branch: str) -> str:
    """Push the work branch to the repository's remote; returns the pushed sha."""
    mirror = mirror_path(repository)
    ref = f"refs/heads/{work_branch}"
    with _mirror_lock(mirror):
        _run(mirror, "push", "--quiet", "origin", f"{ref}:{ref}")
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
        return RemovalReport(branch_kept=False, unpushed_commits=0)
    # Each git process here runs under the mirror's lock, so a kill-all of many
    # agents of one repository waits on them in turn: run as few as possible.
    with _mirror_lock(mirror):
        removed = False
        if path.exists():
            try:
                _run(mirror, "worktree", "remove", "--force", "--force", str(path))
                removed = True
            except WorkspaceError:
                shutil.rmtree(path, ignore_errors=True)
        if not removed:
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
            _run(None, "init", "--bare", "--quiet", "--initial-branch=main", str(path))
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
        _run(mirror, "push", "--quiet", "--force", "origin", f"{head}:refs/heads/{target}")
        _run(mirror, "update-ref", f"refs/remotes/origin/{target}", head)
    return IntegrationReport(head, [])


def remote_branch_diff(*, repository: str, branch: str, base_branch: str) -> str:
    """What a pushed branch changes since it left ``base_branch`` ('' if either is gone)."""
    mirror = mirror_sync(repository)
    refs = [f"refs/remotes/origin/{branch}", f"refs/remotes/origin/{base_branch}"]
    if not all(_ref_exists(mirror, ref) for ref in refs):
        return ""
    return _run(mirror, "diff", "--no-color", "--no-ext-diff", f"{refs[1]}...{refs[0]}")


def _identity() -> list[str]:
    name, email = settings.FLOTILLA_GIT_AUTHOR_NAME, settings.FLOTILLA_GIT_AUTHOR_EMAIL
    return ["-c", f"user.name={name}", "-c", f"user.email={email}"]


def _is_ancestor(repo_dir: Path, ancestor: str, descendant: str) -> bool:
    runner = git.Git(str(repo_dir))
    runner.update_environment(**_GIT_ENV)
    status = runner.execute(
        ["git", "merge-base", "--is-ancestor", ancestor, descendant],
        with_extended_output=True,
        with_exceptions=False,
    )[0]  # type: ignore[index]
    return status == 0


def _merge_tree(repo_dir: Path, ours: str, theirs: str) -> tuple[int, str, str]:
    runner = git.Git(str(repo_dir))
    runner.update_environment(**_GIT_ENV)
    status, out, err = runner.execute(
        ["git", "merge-tree", "--write-tree", "--name-only", "--no-messages", ours, theirs],
        with_extended_output=True,
        with_exceptions=False,
        kill_after_timeout=settings.FLOTILLA_GIT_TIMEOUT_S,
    )  # type: ignore[misc]
    return int(status), str(out), str(err)
