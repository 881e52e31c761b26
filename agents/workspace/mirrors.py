"""The hub's bare mirrors: where each lives, its lock, fetching, and the excludes it holds.

Every other module of the workspace runs git on a mirror (or a scratch
repository) through ``_run`` here, under ``_mirror_lock``; a fetch or push
first asks ``agents.repositories`` for the repository's remote (``_remote``).
The small git helpers they share (whether a ref exists, ancestry, an
in-memory merge, the commit identity, a ``--name-status`` listing) live
here too, as does the exclude file every worktree of a mirror reads.
"""

import contextlib
import fcntl
import hashlib
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

from django.conf import settings

from agents.gitexec import WorkspaceError, git_checked, git_run
from agents.repositories import (
    GitRemote,
    RepositoryRefused,
    repository_normalise,
    repository_remote,
)


def mirror_path(repository: str) -> Path:
    canonical = repository_normalise(repository)
    digest = hashlib.sha256(canonical.encode()).hexdigest()[:16]
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", canonical.rstrip("/").split("/")[-1])[:40]
    return Path(settings.DATA_DIR) / "mirrors" / f"{stem}-{digest}.git"


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


def _name_status(listing: str) -> list[tuple[str, str]]:
    fields = listing.split("\0")
    return [
        (status[:1], name)
        for status, name in zip(fields[0::2], fields[1::2], strict=False)
        if status and name
    ]


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
