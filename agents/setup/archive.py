"""Setup output as a tar archive: written from a worktree and restored into another, safely.

The files come from commands the hub does not trust (a repository's setup),
so both directions work on directory descriptors and never follow a link:
each directory is opened relative to its parent with ``O_NOFOLLOW``, a file
is created with ``O_EXCL`` (an entry already there, a link included, stops
the restore rather than being written through), and a symbolic link is
stored and restored as a link, never entered. An archive holds only
directories, regular files and symbolic links, each at or below one of the
paths it was written for; anything else in one is refused as a whole.
"""

import contextlib
import os
import shutil
import stat
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
_CHUNK = 1 << 20


class ArchiveRefused(Exception):
    """An archive (or a path in one) that may not be restored; nothing more is written."""


@dataclass(frozen=True)
class ArchiveStats:
    files: int
    directories: int
    links: int
    bytes: int

    def as_dict(self) -> dict[str, int]:
        return {
            "files": self.files,
            "directories": self.directories,
            "links": self.links,
            "bytes": self.bytes,
        }


def path_parts(path: str) -> tuple[str, ...]:
    """The components of a relative path inside a worktree, or ``ArchiveRefused``."""
    parts = PurePosixPath(path.rstrip("/")).parts
    if (
        not path
        or "\0" in path
        or path.startswith("/")
        or not parts
        or any(part in ("", ".", "..") for part in parts)
        or parts[0] == ".git"
    ):
        raise ArchiveRefused(f"{path[:200]!r} is not a path inside the worktree")
    return parts


def archive_write(*, root: Path, paths: list[str], target: Path) -> ArchiveStats:
    """Archive ``paths`` (relative to ``root``, "dir/" for a directory) into the file ``target``."""
    counts = {"files": 0, "directories": 0, "links": 0, "bytes": 0}
    top = os.open(root, _DIRECTORY)
    try:
        # GNU headers with whole-second times: no extended header per member,
        # which would double what a restore parses. Python checks a .pyc
        # against its source's time in whole seconds too.
        with tarfile.open(target, "w", format=tarfile.GNU_FORMAT) as archive:
            for path in sorted(paths):
                parts = path_parts(path)
                with _opened_parent(top, parts[:-1]) as parent:
                    if parent is not None:
                        _add(archive, parent, parts[-1], "/".join(parts), counts)
    finally:
        os.close(top)
    return ArchiveStats(**counts)


def _add(
    archive: tarfile.TarFile, parent: int, name: str, path: str, counts: dict[str, int]
) -> None:
    """Add one entry (a directory with everything below it) that lives in ``parent``."""
    try:
        info = os.stat(name, dir_fd=parent, follow_symlinks=False)
    except FileNotFoundError:
        return
    member = tarfile.TarInfo(path)
    member.mode = info.st_mode & 0o777
    member.mtime = int(info.st_mtime)
    if stat.S_ISLNK(info.st_mode):
        member.type = tarfile.SYMTYPE
        member.linkname = os.readlink(name, dir_fd=parent)
        archive.addfile(member)
        counts["links"] += 1
    elif stat.S_ISREG(info.st_mode):
        try:
            descriptor = os.open(name, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=parent)
        except OSError:
            return
        with open(descriptor, "rb") as stream:
            opened = os.fstat(descriptor)
            if not stat.S_ISREG(opened.st_mode):
                return
            member.size = opened.st_size
            archive.addfile(member, stream)
        counts["files"] += 1
        counts["bytes"] += member.size
    elif stat.S_ISDIR(info.st_mode):
        member.type = tarfile.DIRTYPE
        archive.addfile(member)
        counts["directories"] += 1
        try:
            directory = os.open(name, _DIRECTORY, dir_fd=parent)
        except OSError:
            return
        try:
            for child in sorted(os.listdir(directory)):
                _add(archive, directory, child, f"{path}/{child}", counts)
        finally:
            os.close(directory)
    # Anything else (a socket, a fifo, a device) is not setup output worth keeping.


@contextlib.contextmanager
def _opened_parent(top: int, parts: tuple[str, ...]) -> Iterator[int | None]:
    """The directory ``parts`` below ``top``, opened following no link; None if it is none."""
    current = os.dup(top)
    try:
        for part in parts:
            try:
                child = os.open(part, _DIRECTORY, dir_fd=current)
            except OSError:
                yield None
                return
            os.close(current)
            current = child
        yield current
    finally:
        os.close(current)


def archive_restore(
    *, archive: Path, root: Path, paths: list[str], uid: int | None
) -> ArchiveStats:
    """Restore ``archive`` into ``root``; every member must be at or below one of ``paths``.

    The paths themselves must not exist yet; their parents may (they are
    the repository's own directories), and are made when missing. Restored
    entries belong to ``uid`` (when given). On ``ArchiveRefused`` or an
    ``OSError`` whatever the restore created of those paths is removed again
    (and nothing that was there before it).
    """
    roots = {path_parts(path) for path in paths}
    restorer = _Restorer(root, roots, uid)
    try:
        with open(archive, "rb") as raw, tarfile.open(fileobj=raw, mode="r:") as members:
            for member in members:
                restorer.restore(member, raw.fileno())
    except tarfile.TarError as error:
        restorer.undo()
        raise ArchiveRefused(f"the archive cannot be read: {error}") from None
    except BaseException:
        restorer.undo()
        raise
    finally:
        restorer.close()
    return ArchiveStats(**restorer.counts)


class _Restorer:
    """Creates the members of an archive below a root, holding the chain of open directories."""

    def __init__(self, root: Path, roots: set[tuple[str, ...]], uid: int | None) -> None:
        self.roots = roots
        self.uid = uid
        self.root = root
        self.counts = {"files": 0, "directories": 0, "links": 0, "bytes": 0}
        # The paths of ``roots`` this restore created: what ``undo`` removes.
        self.created: list[tuple[str, ...]] = []
        # The open directories from the root down to the last member's parent.
        self.chain: list[tuple[tuple[str, ...], int]] = [((), os.open(root, _DIRECTORY))]

    def close(self) -> None:
        for _, descriptor in self.chain:
            os.close(descriptor)
        self.chain = []

    def restore(self, member: tarfile.TarInfo, source: int) -> None:
        parts = path_parts(member.name)
        if not any(parts[: len(root)] == root for root in self.roots):
            raise ArchiveRefused(f"{member.name[:200]!r} is outside the paths the archive is for")
        if not (member.isdir() or member.isreg() or member.issym()):
            raise ArchiveRefused(f"{member.name[:200]!r} is neither a file, a directory nor a link")
        parent = self._directory(parts[:-1])
        # Each creation fails if anything (a link included) is there already,
        # so ``undo`` never removes what the restore did not make.
        if member.isdir():
            os.mkdir(parts[-1], 0o700, dir_fd=parent)
            self._created(parts)
            descriptor = os.open(parts[-1], _DIRECTORY, dir_fd=parent)
            self.chain.append((parts, descriptor))
            self._own(descriptor, member.mode & 0o777 | 0o700)
            self.counts["directories"] += 1
        elif member.isreg():
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
            descriptor = os.open(parts[-1], flags, 0o600, dir_fd=parent)
            self._created(parts)
            try:
                _copy(source, descriptor, member.offset_data, member.size)
                self._own(descriptor, member.mode & 0o777)
                os.utime(descriptor, ns=(int(member.mtime * 1e9),) * 2)
            finally:
                os.close(descriptor)
            self.counts["files"] += 1
            self.counts["bytes"] += member.size
        else:
            os.symlink(member.linkname, parts[-1], dir_fd=parent)
            self._created(parts)
            if self.uid is not None:
                os.chown(parts[-1], self.uid, self.uid, dir_fd=parent, follow_symlinks=False)
            self.counts["links"] += 1

    def _created(self, parts: tuple[str, ...]) -> None:
        if parts in self.roots:
            self.created.append(parts)

    def _directory(self, parts: tuple[str, ...]) -> int:
        """The open directory ``parts``: from the chain, else opened (or made) below it."""
        while self.chain[-1][0] != parts[: len(self.chain[-1][0])]:
            os.close(self.chain.pop()[1])
        for depth in range(len(self.chain[-1][0]), len(parts)):
            above, name, prefix = self.chain[-1][1], parts[depth], parts[: depth + 1]
            if any(
                len(root) > len(prefix) and root[: len(prefix)] == prefix for root in self.roots
            ):
                # A parent of a restored path: the repository's own directory,
                # or one a newer base no longer has.
                with contextlib.suppress(FileExistsError):
                    os.mkdir(name, 0o755, dir_fd=above)
                    if self.uid is not None:
                        os.chown(name, self.uid, self.uid, dir_fd=above, follow_symlinks=False)
            self.chain.append((prefix, os.open(name, _DIRECTORY, dir_fd=above)))
        return self.chain[-1][1]

    def undo(self) -> None:
        """Remove what this restore created of its paths, following no link."""
        self.close()
        top = os.open(self.root, _DIRECTORY)
        try:
            for parts in self.created:
                with _opened_parent(top, parts[:-1]) as parent:
                    if parent is None:
                        continue
                    with contextlib.suppress(FileNotFoundError):
                        info = os.stat(parts[-1], dir_fd=parent, follow_symlinks=False)
                        if stat.S_ISDIR(info.st_mode):
                            shutil.rmtree(parts[-1], dir_fd=parent)
                        else:
                            os.unlink(parts[-1], dir_fd=parent)
        finally:
            os.close(top)

    def _own(self, descriptor: int, mode: int) -> None:
        os.fchmod(descriptor, mode)
        if self.uid is not None:
            os.fchown(descriptor, self.uid, self.uid)


def _copy(source: int, target: int, offset: int, size: int) -> None:
    """Copy ``size`` bytes at ``offset`` of ``source`` into ``target``, inside the kernel."""
    done = 0
    while done < size:
        copied = os.copy_file_range(source, target, min(size - done, 1 << 30), offset + done)
        if copied == 0:
            raise ArchiveRefused("the archive ends inside a file")
        done += copied
