"""File tools on an agent's worktree, run by the worker: nothing outside the worktree is reachable.

The worker runs as the hub user (often root), so a path is checked twice.
First it is resolved (symlinks included) and must land inside the worktree,
which gives the model a clear refusal for ``..``, absolute paths and links
that point out. Then the resolved path is opened one component at a time
from the worktree's own directory descriptor with ``O_NOFOLLOW``, so a link
that a sandboxed process swaps in between the check and the open is refused
instead of followed. Only regular files are opened for their contents: a
named pipe the agent made would make an open wait for ever.

A search runs in a child process the worker can kill: the model chooses the
pattern, and Python's ``re`` cannot be interrupted once it backtracks.
"""

import contextlib
import errno
import json
import os
import re
import select
import signal
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath
from typing import Any

from django.conf import settings

from agents.childprocess import forked_child_detach

# The worktree's .git file points the hub's git at its metadata: an agent may
# neither redirect it nor wander into it.
_METADATA = ".git"
_READ_LIMIT_BYTES = 4 * 1024 * 1024
_SEARCH_FILE_LIMIT_BYTES = 1024 * 1024
_LIST_LIMIT = 1000
_SEARCH_MATCH_LIMIT = 200
_SEARCH_LINE_CHARS = 300
_NOT_REGULAR = "not a regular file (a pipe, socket or device)"


class FileToolError(Exception):
    """A file tool could not do what it was asked; the message is for the model."""


class Worktree:
    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    # --- paths ----------------------------------------------------------------

    def resolve(self, relative: str, *, allow_root: bool = False) -> tuple[str, ...]:
        """The parts of ``relative`` below the worktree after following links, or a refusal."""
        if "\x00" in relative:
            raise FileToolError("the path contains a NUL character")
        text = relative.strip()
        if text in ("", "."):
            if allow_root:
                return ()
            raise FileToolError("give the path of a file, relative to the repository root")
        path = PurePosixPath(text)
        if path.is_absolute():
            raise FileToolError(
                f"{relative} is an absolute path; paths are relative to the repository root"
            )
        if ".." in path.parts:
            raise FileToolError(f"{relative} contains '..'; paths may not leave the repository")
        target = (self.root / path).resolve()
        if target != self.root and self.root not in target.parents:
            raise FileToolError(f"{relative} resolves outside the repository (through a symlink)")
        parts = target.relative_to(self.root).parts
        if parts and parts[0] == _METADATA:
            raise FileToolError(f"{relative} is git metadata; the orchestrator handles git")
        if not parts and not allow_root:
            raise FileToolError(f"{relative} is the repository root, not a file")
        return parts

    def _open_dir(self, parts: tuple[str, ...], *, create: bool = False) -> int:
        """A descriptor of the directory ``parts``, opened without following any link."""
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for part in parts:
                try:
                    child = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise
                    os.mkdir(part, 0o755, dir_fd=fd)
                    self._hand_over(part, dir_fd=fd)
                    child = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
                os.close(fd)
                fd = child
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _open(self, parts: tuple[str, ...], flags: int, *, create_dirs: bool = False) -> int:
        """A descriptor of the regular file ``parts``; OSError for anything else.

        O_NONBLOCK makes opening a named pipe return at once (or fail) instead
        of waiting for its other end; it changes nothing for a regular file.
        """
        parent = self._open_dir(parts[:-1], create=create_dirs)
        try:
            flags |= os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
            fd = os.open(parts[-1], flags, 0o644, dir_fd=parent)
        except OSError as error:
            # A pipe without a reader (or a socket) cannot be opened to write.
            if error.errno == errno.ENXIO:
                raise OSError(errno.EINVAL, _NOT_REGULAR) from None
            raise
        finally:
            os.close(parent)
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            os.close(fd)
            if stat.S_ISDIR(mode):
                raise IsADirectoryError(errno.EISDIR, "is a directory")
            raise OSError(errno.EINVAL, _NOT_REGULAR)
        return fd

    def _hand_over(self, name: str, *, dir_fd: int) -> None:
        """New files belong to whoever owns the worktree (the sandbox user), as if it made them."""
        owner = os.stat(self.root)
        os.chown(name, owner.st_uid, owner.st_gid, dir_fd=dir_fd, follow_symlinks=False)

    # --- tools ----------------------------------------------------------------

    def read(self, relative: str) -> str:
        parts = self.resolve(relative)
        try:
            fd = self._open(parts, os.O_RDONLY)
        except FileNotFoundError:
            raise FileToolError(f"{relative} does not exist") from None
        except IsADirectoryError:
            raise FileToolError(f"{relative} is a directory; use list_files") from None
        except OSError as error:
            raise FileToolError(f"cannot read {relative}: {error.strerror}") from None
        with os.fdopen(fd, "rb") as handle:
            if stat.S_ISDIR(os.fstat(handle.fileno()).st_mode):
                raise FileToolError(f"{relative} is a directory; use list_files")
            data = handle.read(_READ_LIMIT_BYTES + 1)
        if b"\x00" in data[:8192]:
            raise FileToolError(f"{relative} is a binary file ({len(data)} bytes); not shown")
        text = data[:_READ_LIMIT_BYTES].decode("utf-8", errors="replace")
        if len(data) > _READ_LIMIT_BYTES:
            text += f"\n[file cut at {_READ_LIMIT_BYTES} bytes]"
        return text

    def write(self, relative: str, content: str) -> str:
        parts = self.resolve(relative)
        data = content.encode("utf-8")
        try:
            fd = self._open(parts, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, create_dirs=True)
        except IsADirectoryError:
            raise FileToolError(f"{relative} is a directory") from None
        except OSError as error:
            raise FileToolError(f"cannot write {relative}: {error.strerror}") from None
        with os.fdopen(fd, "wb") as handle:
            owner = os.stat(self.root)
            os.fchown(handle.fileno(), owner.st_uid, owner.st_gid)
            handle.write(data)
        return f"wrote {len(data)} bytes to {'/'.join(parts)}"

    # --- the hub's own writes (a base merged into the worktree) ---------------

    def put(self, relative: str, data: bytes, *, mode: str) -> None:
        """Make ``relative`` hold ``data`` as git mode ``mode`` (a file, an executable or a link).

        The path is git's, taken as written: it is never resolved, and a
        link or a file where it needs a directory is refused (OSError), not
        followed. Whatever held the name before is replaced.
        """
        parts = self._git_parts(relative)
        parent = self._open_dir(parts[:-1], create=True)
        try:
            self._unlink_at(parts[-1], parent)
            if mode == "120000":
                os.symlink(data, parts[-1], dir_fd=parent)
                self._hand_over(parts[-1], dir_fd=parent)
                return
            permissions = 0o755 if mode == "100755" else 0o644
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            fd = os.open(parts[-1], flags, permissions, dir_fd=parent)
            with os.fdopen(fd, "wb") as handle:
                owner = os.stat(self.root)
                os.fchown(handle.fileno(), owner.st_uid, owner.st_gid)
                os.fchmod(handle.fileno(), permissions)
                handle.write(data)
        finally:
            os.close(parent)

    def remove(self, relative: str) -> None:
        """Remove the file or link ``relative`` (as written, never resolved) if it is there."""
        parts = self._git_parts(relative)
        try:
            parent = self._open_dir(parts[:-1])
        except (FileNotFoundError, NotADirectoryError):
            return
        try:
            self._unlink_at(parts[-1], parent)
        finally:
            os.close(parent)

    def _git_parts(self, relative: str) -> tuple[str, ...]:
        parts = tuple(relative.split("/"))
        if not parts or any(part in ("", ".", "..") or part.lower() == _METADATA for part in parts):
            raise OSError(errno.EINVAL, f"not a path the hub writes: {relative[:200]!r}")
        return parts

    @staticmethod
    def _unlink_at(name: str, parent: int) -> None:
        """Remove ``name`` from the directory ``parent``: a file, a link, or a whole directory."""
        try:
            info = os.stat(name, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            return
        if not stat.S_ISDIR(info.st_mode):
            os.unlink(name, dir_fd=parent)
            return
        # rmtree with a descriptor never follows a link out of the directory.
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=parent)
        try:
            for entry in os.scandir(fd):
                Worktree._unlink_at(entry.name, fd)
        finally:
            os.close(fd)
        os.rmdir(name, dir_fd=parent)

    def edit(self, relative: str, old_text: str, new_text: str) -> str:
        if not old_text:
            raise FileToolError("old_text is empty; give the exact text to replace")
        text = self.read(relative)
        count = text.count(old_text)
        if count == 0:
            raise FileToolError(f"old_text was not found in {relative}; read the file again")
        if count > 1:
            raise FileToolError(
                f"old_text occurs {count} times in {relative}; include more of the surrounding "
                "text so that it occurs exactly once"
            )
        self.write(relative, text.replace(old_text, new_text, 1))
        return f"replaced 1 occurrence in {relative}"

    def list(self, relative: str) -> str:
        parts = self.resolve(relative, allow_root=True)
        entries = list(self._walk(parts, relative))
        lines = [name + ("/" if kind == "dir" else "") for name, kind in entries[:_LIST_LIMIT]]
        if not lines:
            return f"{relative or '.'} is empty"
        if len(entries) > _LIST_LIMIT:
            lines.append(f"[listing cut at {_LIST_LIMIT} of {len(entries)} entries]")
        return "\n".join(lines)

    def search(self, pattern: str, relative: str) -> str:
        try:
            regex = re.compile(pattern)
        except re.error as error:
            raise FileToolError(f"pattern is not a valid regular expression: {error}") from None
        parts = self.resolve(relative, allow_root=True)
        timeout_s = settings.FLOTILLA_CLAUDE_SEARCH_TIMEOUT_S
        matches, total = _killable(
            lambda: _matching_lines(self._files_with_text(parts, relative), regex),
            timeout_s=timeout_s,
            refusal=f"the search for {pattern!r} took longer than {timeout_s:g} s and "
            "was stopped; use a simpler pattern or a narrower path",
        )
        if not matches:
            return f"no match for {pattern!r} under {relative or '.'}"
        if total > len(matches):
            matches.append(f"[{total} matches; the first {_SEARCH_MATCH_LIMIT} are shown]")
        return "\n".join(matches)

    # --- walking --------------------------------------------------------------

    def _walk(self, parts: tuple[str, ...], relative: str) -> Iterator[tuple[str, str]]:
        """(path below the root, "dir" or "file") for everything under ``parts``, sorted."""
        prefix = "/".join(parts)
        try:
            top = self._open_dir(parts)
        except NotADirectoryError:
            yield prefix, "file"
            return
        except FileNotFoundError:
            raise FileToolError(f"{relative} does not exist") from None
        except OSError as error:
            raise FileToolError(f"cannot list {relative}: {error.strerror}") from None
        try:
            # fwalk works on descriptors and, without follow_symlinks, never
            # enters a link, so a swapped-in link cannot lead it outside.
            for dirpath, dirnames, filenames, _dirfd in os.fwalk(".", dir_fd=top):
                below = "" if dirpath == "." else dirpath[2:]
                base = "/".join(part for part in (prefix, below) if part)
                if not base:
                    dirnames[:] = [name for name in dirnames if name != _METADATA]
                    filenames = [name for name in filenames if name != _METADATA]
                dirnames.sort()
                for name in dirnames:
                    yield (f"{base}/{name}" if base else name), "dir"
                for name in sorted(filenames):
                    yield (f"{base}/{name}" if base else name), "file"
        finally:
            os.close(top)

    def _files_with_text(self, parts: tuple[str, ...], relative: str) -> Iterator[tuple[str, str]]:
        for name, kind in self._walk(parts, relative):
            if kind != "file":
                continue
            try:
                fd = self._open(tuple(name.split("/")), os.O_RDONLY)
            except OSError:
                continue  # a link, or gone meanwhile
            with os.fdopen(fd, "rb") as handle:
                info = os.fstat(handle.fileno())
                if not stat.S_ISREG(info.st_mode) or info.st_size > _SEARCH_FILE_LIMIT_BYTES:
                    continue
                data = handle.read()
            if b"\x00" in data[:8192]:
                continue
            yield name, data.decode("utf-8", errors="replace")


def _matching_lines(
    files: Iterator[tuple[str, str]], regex: re.Pattern[str]
) -> tuple[list[str], int]:
    """The first matching lines as ``name:number: line``, and how many lines matched in all."""
    matches: list[str] = []
    total = 0
    for name, text in files:
        for number, line in enumerate(text.splitlines(), start=1):
            if regex.search(line):
                total += 1
                if len(matches) < _SEARCH_MATCH_LIMIT:
                    matches.append(f"{name}:{number}: {line[:_SEARCH_LINE_CHARS]}")
    return matches, total


def _killable(work: Callable[[], Any], *, timeout_s: float, refusal: str) -> Any:
    """``work()`` run in a forked child; FileToolError(``refusal``) if it takes too long.

    The child only computes and writes its JSON answer to a pipe; it leaves
    with ``os._exit``, so nothing of the worker (its database connections,
    its threads' state) is touched twice. A child that never answers is killed.
    """
    read_end, write_end = os.pipe()
    parent = os.getpid()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        try:
            forked_child_detach(parent=parent, keep=write_end)
            try:
                answer: dict[str, Any] = {"value": work()}
            except FileToolError as error:
                answer = {"error": str(error)}
            data = json.dumps(answer).encode()
            while data:
                data = data[os.write(write_end, data) :]
        finally:
            os._exit(0)
    os.close(write_end)
    try:
        reply = _read_until(read_end, time.monotonic() + timeout_s)
    finally:
        os.close(read_end)
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)
    if reply is None:
        raise FileToolError(refusal)
    answer = json.loads(reply or b'{"error": "the search failed"}')
    if "error" in answer:
        raise FileToolError(answer["error"])
    return answer["value"]


def _read_until(descriptor: int, deadline: float) -> bytes | None:
    """Everything written to ``descriptor`` until its end; None if the deadline comes first."""
    chunks: list[bytes] = []
    while True:
        ready, _, _ = select.select([descriptor], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            return None
        chunk = os.read(descriptor, 65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
