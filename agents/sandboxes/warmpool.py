"""The warm pool's slots on the host: directories, claims and mounts (no Docker here).

A pre-started container cannot be given a bind mount later, so each pool
container binds a slot directory, ``<DATA_DIR>/warm-pool/<node>/<slot>/workspace``,
at ``/workspace`` with ``rslave`` propagation. The pool root is a shared
mount, so when a spawn claims the slot and the hub bind-mounts the agent's
worktree onto that directory, the mount appears inside the container.
Releasing the slot unmounts it and deletes the slot directory.

A claim is the exclusive creation (``O_EXCL``) of the slot's ``claim`` file
holding the agent id: atomic across every process of the node, which is the
only place where the pool's containers and mounts exist. Pool maintenance
(refill, trim, sweep, drain) runs under one file lock per node.
"""

import contextlib
import ctypes
import fcntl
import json
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.conf import settings

from agents.sandboxes.base import SandboxError

_MS_RDONLY = 1
_MS_REMOUNT = 32
_MS_BIND = 4096
_MS_REC = 16384
_MS_PRIVATE = 1 << 18
_MS_SHARED = 1 << 20
_MNT_DETACH = 2
_EINVAL = 22
_ENOENT = 2

# A claim by pool maintenance itself (a trim or a drain), not by an agent.
MAINTENANCE_CLAIM = "pool:maintenance"

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_ulong,
    ctypes.c_void_p,
]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]


class WarmPoolError(SandboxError):
    """A slot could not be prepared, attached or released."""


@dataclass(frozen=True)
class WarmSlot:
    path: Path

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def workspace(self) -> Path:
        """Bound at /workspace in the slot's container; the worktree is mounted here."""
        return self.path / "workspace"

    @property
    def stage(self) -> Path:
        return self.path / "stage"

    def container(self) -> dict[str, Any] | None:
        """The started container of the slot ({id, name, cgroup_procs}); None until ready."""
        try:
            container: dict[str, Any] = json.loads((self.path / "container.json").read_text())
        except (OSError, ValueError):
            return None
        return container

    def claimant(self) -> str | None:
        try:
            return (self.path / "claim").read_text().strip() or MAINTENANCE_CLAIM
        except OSError:
            return None


def pool_root(node: str) -> Path:
    return Path(settings.DATA_DIR) / "warm-pool" / node


@contextlib.contextmanager
def pool_lock(node: str) -> Iterator[None]:
    """Serialises the maintenance of one node's pool (claims need no lock)."""
    lock_path = pool_root(node).with_suffix(".lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def pool_root_share(node: str) -> Path:
    """Make the pool root a shared mount (a bind of itself), once; call under ``pool_lock``."""
    root = pool_root(node)
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o755)
    if os.geteuid() != 0:
        raise WarmPoolError("the docker warm pool needs a hub running as root (it mounts)")
    if not _is_mount_point(root):
        _mount(root, root, _MS_BIND)
    _mount(None, root, _MS_SHARED)
    return root


def pool_root_unshare(node: str) -> None:
    """Undo ``pool_root_share`` once no slot is left; call under ``pool_lock``."""
    root = pool_root(node)
    if slots(node):
        return
    while _is_mount_point(root):
        _umount(root)
    with contextlib.suppress(OSError):
        root.rmdir()


def slot_create(node: str) -> WarmSlot:
    slot = WarmSlot(pool_root(node) / secrets.token_hex(6))
    slot.workspace.mkdir(parents=True)
    slot.stage.mkdir()
    for directory in (slot.path, slot.workspace):
        directory.chmod(0o755)
    return slot


def slot_ready(slot: WarmSlot, *, container_id: str, name: str, cgroup_procs: str) -> None:
    """Record the slot's started container: from now on a spawn may claim the slot."""
    record = {"id": container_id, "name": name, "cgroup_procs": cgroup_procs}
    partial = slot.path / "container.json.partial"
    partial.write_text(json.dumps(record))
    partial.rename(slot.path / "container.json")


def slots(node: str) -> list[WarmSlot]:
    root = pool_root(node)
    if not root.is_dir():
        return []
    return sorted(
        (WarmSlot(path) for path in root.iterdir() if path.is_dir()), key=lambda slot: slot.name
    )


def slot_claim(
    *, node: str, claimant: str, candidates: list[WarmSlot] | None = None
) -> WarmSlot | None:
    """Claim a ready, unclaimed slot for ``claimant``; None when there is none.

    The claim file's exclusive creation is the claim, so two processes never
    get the same slot.
    """
    for slot in slots(node) if candidates is None else candidates:
        if slot.container() is None:
            continue
        try:
            descriptor = os.open(slot.path / "claim", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            continue
        except FileNotFoundError:
            continue  # released meanwhile
        with os.fdopen(descriptor, "w") as claim:
            claim.write(claimant)
        return slot
    return None


def slots_claimed_by(node: str, claimant: str) -> list[WarmSlot]:
    return [slot for slot in slots(node) if slot.claimant() == claimant]


def slot_attach(slot: WarmSlot, worktree: Path) -> None:
    """Mount ``worktree`` on the slot, its ``.git`` file read-only: it appears in the container.

    The tree is built on the stage first and then bound onto the slot in one
    recursive bind, because a read-only remount does not propagate: the copy
    in the container must be made from mounts that are already read-only.
    The stage is private, so taking it down afterwards propagates nowhere.
    """
    git_file = worktree / ".git"
    try:
        _mount(worktree, slot.stage, _MS_BIND)
        _mount(None, slot.stage, _MS_PRIVATE)
        if git_file.is_file():
            _mount(git_file, slot.stage / ".git", _MS_BIND)
            _mount(None, slot.stage / ".git", _MS_BIND | _MS_REMOUNT | _MS_RDONLY)
        _mount(slot.stage, slot.workspace, _MS_BIND | _MS_REC)
    finally:
        _unmount_all(slot.stage)


def slot_release(slot: WarmSlot) -> None:
    """Unmount whatever is mounted on the slot and delete it. Idempotent."""
    _unmount_all(slot.stage)
    _unmount_all(slot.workspace)
    if _is_mount_point(slot.workspace):
        raise WarmPoolError(f"cannot unmount {slot.workspace}")
    for leftover in ("container.json", "container.json.partial", "claim"):
        with contextlib.suppress(FileNotFoundError):
            (slot.path / leftover).unlink()
    # rmdir, never a recursive delete: nothing of an agent's worktree may go with the slot.
    for directory in (slot.stage, slot.workspace, slot.path):
        try:
            directory.rmdir()
        except FileNotFoundError:
            continue
        except OSError as error:
            raise WarmPoolError(f"cannot remove the slot directory {directory}: {error}") from None


def mounts_under(path: Path) -> list[Path]:
    """Every mount point at or below ``path`` (for tests and the reconciler's report)."""
    prefix = str(path)
    return [
        point
        for point in _mount_points()
        if str(point) == prefix or str(point).startswith(prefix + "/")
    ]


# --- mount(2) -----------------------------------------------------------------


def _mount(source: Path | None, target: Path, flags: int) -> None:
    encoded = str(source).encode() if source is not None else None
    if _libc.mount(encoded, str(target).encode(), None, flags, None) != 0:
        error = ctypes.get_errno()
        raise WarmPoolError(f"cannot mount {source} on {target}: {os.strerror(error)}")


def _umount(target: Path) -> None:
    if _libc.umount2(str(target).encode(), _MNT_DETACH) != 0:
        error = ctypes.get_errno()
        if error not in (_EINVAL, _ENOENT):  # not mounted (any more)
            raise WarmPoolError(f"cannot unmount {target}: {os.strerror(error)}")


def _unmount_all(target: Path) -> None:
    # A lazy unmount detaches the whole tree below a mount; stacked mounts need one each.
    for _ in range(16):
        if not _is_mount_point(target):
            return
        _umount(target)


def _is_mount_point(path: Path) -> bool:
    return path in set(_mount_points())


def _mount_points() -> list[Path]:
    with open("/proc/self/mountinfo") as mountinfo:
        lines = mountinfo.read().splitlines()
    return [Path(_unescape(line.split()[4])) for line in lines]


def _unescape(field: str) -> str:
    # mountinfo writes space, tab, newline and backslash as octal escapes.
    for escaped, plain in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(escaped, plain)
    return field
