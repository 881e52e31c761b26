"""Which repositories a request may name, and what the hub's git reaches for one.

A repository is a path on the hub's disk or a URL (``https``, ``http``,
``ssh``, ``git``, or scp-like ``user@host:path``). Both are input from
whoever asked, so the hub's git must never become a way to read what they
could not: a local path is allowed only below one of the operator's
``FLOTILLA_LOCAL_REPOSITORY_ROOTS`` (symlinks resolved first), and a remote
host only when the outbound guard (``netguard``) allows its addresses.

``repository_problem`` is the one check of a request (the spawn API,
projects, the planner, the CLI); ``repository_remote`` judges the repository
again at every fetch and push (``agents.workspace``), because a name may
resolve elsewhere by then, and pins the address git connects to over HTTP.
"""

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from django.conf import settings

from netguard.outbound import OutboundRefused, Target, host_canonical, host_resolve, url_target

__all__ = [
    "GitRemote",
    "RepositoryRefused",
    "repository_normalise",
    "repository_problem",
    "repository_remote",
    "repository_scheme",
]

MAX_REPOSITORY_LENGTH = 1000
_SCP_LIKE = re.compile(r"^[\w.-]+@([\w.-]+):")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")
_REMOTE_SCHEMES = ("https", "http", "ssh", "git")


class RepositoryRefused(Exception):
    """The hub may not reach this repository; the message says why."""


@dataclass(frozen=True)
class GitRemote:
    """What git is pointed at, with the ``-c`` options that pin the host's vetted address."""

    url: str
    options: tuple[str, ...] = ()


def repository_scheme(repository: str) -> str:
    # The scheme alone, read without parsing the rest: a malformed URL is
    # the outbound guard's to refuse, with a reason. One letter is a drive.
    scheme = _SCHEME.match(repository)
    if scheme and len(scheme.group(1)) > 1:
        return scheme.group(1).lower()
    return "ssh" if _SCP_LIKE.match(repository) else "file"


def repository_normalise(repository: str) -> str:
    """A canonical form of a repository reference: an absolute path or a URL."""
    if repository_scheme(repository) != "file" or repository.startswith("file:"):
        return repository
    return str(Path(repository).expanduser().resolve())


def repository_problem(repository: str) -> str | None:
    """Why a request may not name ``repository``; None when it may."""
    try:
        _repository_check(repository)
    except RepositoryRefused as error:
        return str(error)
    return None


def repository_remote(repository: str) -> GitRemote:
    """The remote for a fetch or push of ``repository``; ``RepositoryRefused`` if not allowed.

    The hub's own scratch repositories (``DATA_DIR/scratch``, for tasks that
    name none) are the one local exception to the roots.
    """
    remote = repository_normalise(repository)
    if repository_scheme(remote) == "file" and _hub_scratch(_local_path(remote)):
        return GitRemote(remote)
    addresses = _repository_check(remote)
    target = _remote_target(remote) if addresses else None
    if target is None or target.scheme not in ("http", "https") or _is_address(target.host):
        return GitRemote(remote)
    # curl connects to these addresses instead of resolving the name again.
    shown = ",".join(f"[{address}]" if ":" in address else address for address in addresses)
    return GitRemote(remote, ("-c", f"http.curloptResolve={target.host}:{target.port}:{shown}"))


def _repository_check(repository: str) -> list[str]:
    """Raise ``RepositoryRefused`` with the reason; the vetted addresses of a remote host."""
    if len(repository) > MAX_REPOSITORY_LENGTH:
        raise RepositoryRefused(f"at most {MAX_REPOSITORY_LENGTH} characters")
    if any(ord(char) < 32 or ord(char) == 127 for char in repository):
        raise RepositoryRefused("control characters are not allowed")
    scheme = repository_scheme(repository)
    if scheme not in settings.FLOTILLA_REPOSITORY_SCHEMES:
        raise RepositoryRefused(f"repositories over {scheme} are not allowed")
    if scheme == "file":
        _local_check(repository)
        return []
    try:
        target = _remote_target(repository)
        return host_resolve(target.host, target.port)
    except OutboundRefused as error:
        raise RepositoryRefused(str(error)) from None
    except OSError:
        return []  # a name that does not resolve: git says so when it fetches


def _remote_target(repository: str) -> Target:
    match = _SCP_LIKE.match(repository)
    if match:
        return Target("ssh", host_canonical(match.group(1)), 22)
    return url_target(repository, schemes=_REMOTE_SCHEMES)


def _local_path(repository: str) -> Path:
    if not repository.startswith("file:"):
        return Path(repository)
    parts = urlsplit(repository)
    if parts.netloc not in ("", "localhost"):
        raise RepositoryRefused("a file: URL names no host")
    return Path(parts.path)


def _local_check(repository: str) -> None:
    path = _local_path(repository)
    shown = str(path) if len(str(path)) <= 200 else f"{str(path)[:200]}…"
    if not path.is_absolute():
        raise RepositoryRefused("a local repository is an absolute path")
    try:
        resolved = path.resolve()
        if not any(resolved.is_relative_to(root) for root in _roots()):
            raise RepositoryRefused(
                f"{shown} is not below a directory this hub serves repositories from "
                "(FLOTILLA_LOCAL_REPOSITORY_ROOTS)"
            )
        if not resolved.is_dir():
            raise RepositoryRefused(f"no directory at {shown}")
        if not _is_git_repository(resolved):
            raise RepositoryRefused(f"{shown} is not a git repository")
    except (OSError, ValueError) as error:
        # A name too long for the file system, a NUL byte, a loop of links.
        reason = error.strerror if isinstance(error, OSError) else str(error)
        raise RepositoryRefused(f"{shown} cannot be used: {reason}") from None


def _is_git_repository(path: Path) -> bool:
    """A bare repository, or a working tree with its own ``.git`` directory.

    The test is git's own (a HEAD file, objects and refs). A ``.git`` file
    points elsewhere (a linked worktree, a submodule), possibly outside the
    roots, so it does not count.
    """
    if (path / ".git").is_dir() and not (path / ".git").is_symlink():
        path = path / ".git"
    return (path / "HEAD").is_file() and (path / "objects").is_dir() and (path / "refs").is_dir()


def _roots() -> tuple[Path, ...]:
    return tuple(Path(root) for root in settings.FLOTILLA_LOCAL_REPOSITORY_ROOTS)


def _hub_scratch(path: Path) -> bool:
    try:
        return path.resolve().is_relative_to(Path(settings.DATA_DIR).resolve() / "scratch")
    except (OSError, ValueError):
        return False


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
