"""The setup cache: setup output per repository and key, bounded, least recently used first out.

``DATA_DIR/setup-cache/<repository>/`` holds, for each key, ``<key>.tar``
(the archive) and ``<key>.json`` (the paths it holds and what it counted).
The repository's directory is named as its mirror is (its name and a digest
of its normalised URL), so no repository ever reads another's entries. The
key is a digest of the setup commands, the sandbox backend and the blob ids
of the key files on the agent's branch, so a change to any lock file (or
to the commands) makes a new entry. An entry is whole when its manifest
exists: the archive is moved into place first, the manifest last, each by
a rename. A use touches both, and the cache is trimmed to
``FLOTILLA_SETUP_CACHE_MB`` oldest-use first after every new entry.
"""

import contextlib
import fcntl
import hashlib
import json
import os
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.conf import settings

from agents import workspace
from agents.setup.archive import ArchiveStats
from gates.config import SetupConfig

# Bump when what an entry holds (or how it is keyed) changes: old entries then never match.
_FORMAT = 1
# A temporary archive older than this was left by a worker that died writing it.
_STALE_TEMPORARY_S = 6 * 3600


@dataclass(frozen=True)
class SetupKey:
    digest: str
    files: tuple[str, ...]  # the key files found on the branch


@dataclass(frozen=True)
class CacheEntry:
    archive: Path
    paths: list[str]
    stats: dict[str, Any]


def cache_root() -> Path:
    return Path(settings.DATA_DIR) / "setup-cache"


def repository_cache_dir(repository: str) -> Path:
    return cache_root() / workspace.mirror_path(repository).stem


def setup_key(*, repository: str, work_branch: str, config: SetupConfig, backend: str) -> SetupKey:
    """The cache key of a setup on ``work_branch``: its commands, backend and key files' blobs."""
    blobs = dict(workspace.branch_files(repository=repository, work_branch=work_branch))
    files = sorted(config.key_files(blobs))
    payload = {
        "format": _FORMAT,
        "backend": backend,
        "commands": list(config.commands),
        "files": [[path, blobs[path]] for path in files],
    }
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
    return SetupKey(digest=digest, files=tuple(files))


def cache_lookup(*, repository: str, key: str) -> CacheEntry | None:
    """The whole entry for ``key``, marked as just used; None if there is none."""
    directory = repository_cache_dir(repository)
    manifest, archive = directory / f"{key}.json", directory / f"{key}.tar"
    try:
        data = json.loads(manifest.read_text())
        now = time.time()
        os.utime(archive, (now, now))
        os.utime(manifest, (now, now))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("paths"), list):
        return None
    return CacheEntry(archive=archive, paths=data["paths"], stats=data.get("stats") or {})


def cache_store(
    *,
    repository: str,
    key: SetupKey,
    paths: list[str],
    write: Callable[[Path], ArchiveStats],
) -> ArchiveStats | None:
    """Make the entry for ``key`` with ``write(archive_path)``; None when it is too big to keep."""
    limit = settings.FLOTILLA_SETUP_CACHE_MB << 20
    directory = repository_cache_dir(repository)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    temporary = directory / f".{key.digest}.{uuid.uuid4().hex}.tar"
    try:
        stats = write(temporary)
        if temporary.stat().st_size > limit:
            return None
        manifest = temporary.with_suffix(".json")
        entry = {"paths": paths, "stats": stats.as_dict(), "key_files": list(key.files)}
        manifest.write_text(json.dumps(entry))
        temporary.replace(directory / f"{key.digest}.tar")
        manifest.replace(directory / f"{key.digest}.json")
    finally:
        for leftover in (temporary, temporary.with_suffix(".json")):
            leftover.unlink(missing_ok=True)
    cache_trim()
    return stats


def cache_drop(*, repository: str, key: str) -> None:
    """Forget an entry that could not be used."""
    directory = repository_cache_dir(repository)
    for suffix in (".json", ".tar"):
        (directory / f"{key}{suffix}").unlink(missing_ok=True)


def cache_trim(*, limit_bytes: int | None = None) -> list[Path]:
    """Remove the least recently used entries until the cache fits; the archives removed."""
    limit = settings.FLOTILLA_SETUP_CACHE_MB << 20 if limit_bytes is None else limit_bytes
    removed: list[Path] = []
    with _cache_lock():
        entries = []
        for archive in cache_root().glob("*/*.tar"):
            manifest = archive.with_suffix(".json")
            try:
                used, size = archive.stat().st_mtime, archive.stat().st_size
            except FileNotFoundError:
                continue
            if archive.name.startswith("."):
                if time.time() - used > _STALE_TEMPORARY_S:
                    archive.unlink(missing_ok=True)
                continue
            with contextlib.suppress(FileNotFoundError):
                size += manifest.stat().st_size
            entries.append((used, size, archive, manifest))
        total = sum(size for _, size, _, _ in entries)
        for _, size, archive, manifest in sorted(entries, key=lambda entry: entry[0]):
            if total <= limit:
                break
            manifest.unlink(missing_ok=True)
            archive.unlink(missing_ok=True)
            removed.append(archive)
            total -= size
    return removed


@contextlib.contextmanager
def _cache_lock() -> Iterator[None]:
    cache_root().mkdir(mode=0o700, parents=True, exist_ok=True)
    with open(cache_root() / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield
