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
        return runner.execute(
            ["git", *args], kill_after_timeout=settings.FLOTILLA_GIT_TIMEOUT_S
        )  # type: ignore[return-value]
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


def worktree_create(
    *, repository: str, base_branch: str, work_branch: str, path: Path
) -> Path:
    """Check out a new branch ``work_branch`` from ``base_branch`` into ``path``."""
    mirror = mirror_path(repository)
    with _mirror_lock(mirror):
        _mirror_sync_locked(repository, mirror)
        if not _ref_exists(mirror, f"refs/remotes/origin/{base_branch}"):
            raise WorkspaceError(f"branch {base_branch!r} does not exist in {repository}")
        path.parent.mkdir(parents=True, exist_ok=True)
        _run(mirror, "worktree", "add", "--quiet", "-b", work_branch, str(path),
             f"refs/remotes/origin/{base_branch}")  # fmt: skip
    return path


def worktree_commit(*, path: Path, message: str) -> str | None:
    """Commit everything that changed in the worktree; the new sha, or None if nothing did."""
    _run(path, "add", "--all")
    if not _run(path, "status", "--porcelain"):
        return None
    name, email = settings.FLOTILLA_GIT_AUTHOR_NAME, settings.FLOTILLA_GIT_AUTHOR_EMAIL
    _run(path, "-c", f"user.name={name}", "-c", f"user.email={email}",
         "commit", "--quiet", "--no-verify", "-m", message)  # fmt: skip
    return _run(path, "rev-parse", "HEAD")


def worktree_changed(*, path: Path) -> bool:
    return bool(_run(path, "status", "--porcelain"))


def worktree_diff(*, path: Path, base_branch: str) -> str:
    """The change the agent made against its base, committed or not."""
    _run(path, "add", "--all", "--intent-to-add")
    return _run(path, "diff", f"refs/remotes/origin/{base_branch}")


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
    with _mirror_lock(mirror):
        if path.exists():
            try:
                _run(mirror, "worktree", "remove", "--force", "--force", str(path))
            except WorkspaceError:
                shutil.rmtree(path, ignore_errors=True)
        _run(mirror, "worktree", "prune")
        unpushed = branch_unpushed_commits(repository=repository, work_branch=work_branch)
        if unpushed == 0 and _ref_exists(mirror, f"refs/heads/{work_branch}"):
            _run(mirror, "branch", "--quiet", "-D", work_branch)
    return RemovalReport(branch_kept=unpushed > 0, unpushed_commits=unpushed)


def worktree_list(repository: str) -> list[Path]:
    mirror = mirror_path(repository)
    if not (mirror / "HEAD").exists():
        return []
    listing = _run(mirror, "worktree", "list", "--porcelain")
    paths = [Path(line[len("worktree ") :]) for line in listing.splitlines()
             if line.startswith("worktree ")]  # fmt: skip
    return [path for path in paths if path != mirror]


def _ref_exists(repo_dir: Path, ref: str) -> bool:
    try:
        _run(repo_dir, "rev-parse", "--verify", "--quiet", ref)
    except WorkspaceError:
        return False
    return True
