"""The sandbox image: an almost empty root, imported locally, never pulled from a registry."""

import contextlib
import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

from django.conf import settings

from agents.sandboxes.base import SYSTEM_DIRS, WORKSPACE, SandboxError
from agents.sandboxes.docker import engine

LABEL_LAYOUT = "flotilla.layout"
_EMPTY_DIRS = ("usr", "etc", "tmp", "proc", "dev", "sys", "workspace")
# Docker places its init at /sbin/docker-init, so /sbin stays a real (empty)
# directory even where the host's is a link into the read-only /usr.


def image_layout() -> list[tuple[str, str]]:
    """What the image holds: symlinks mirroring the host's, and empty mount points."""
    entries = [(name, "dir") for name in _EMPTY_DIRS]
    for directory in SYSTEM_DIRS:
        path = Path(directory)
        if path.is_symlink() and directory != "/sbin":
            entries.append((directory.lstrip("/"), f"symlink:{os.readlink(path)}"))
        elif path.is_dir():
            entries.append((directory.lstrip("/"), "dir"))
    return entries


def _image_tar(layout: list[tuple[str, str]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, kind in layout:
            info = tarfile.TarInfo(name)
            if kind.startswith("symlink:"):
                info.type, info.linkname = tarfile.SYMTYPE, kind.removeprefix("symlink:")
            else:
                info.type, info.mode = tarfile.DIRTYPE, 0o1777 if name == "tmp" else 0o755
            archive.addfile(info)
    return buffer.getvalue()


def docker_image_build(*, rebuild: bool = False) -> tuple[str, bool]:
    """Build the sandbox image unless an identical one exists; (image, whether built)."""
    api = engine.docker_api()
    image = settings.FLOTILLA_DOCKER_IMAGE
    layout = image_layout()
    digest = hashlib.sha256(json.dumps(layout).encode()).hexdigest()[:16]
    try:
        existing = api.inspect_image(image)
    except engine.ImageNotFound:
        existing = None
    labels = (existing or {}).get("Config", {}).get("Labels") or {}
    if not rebuild and labels.get(LABEL_LAYOUT) == digest:
        return image, False
    repository, tag = engine.parse_repository_tag(image)
    uid = settings.FLOTILLA_SANDBOX_UID
    changes = [
        f"LABEL {LABEL_LAYOUT}={digest}",
        f"WORKDIR {WORKSPACE}",
        f"USER {uid}:{uid}",
        'CMD ["/bin/sleep", "infinity"]',
    ]
    try:
        api.import_image_from_data(
            _image_tar(layout), repository=repository, tag=tag or "latest", changes=changes
        )
    except engine.APIError as error:
        raise SandboxError(f"cannot build the sandbox image {image}: {error.explanation}") from None
    if existing and api.inspect_image(image)["Id"] != existing["Id"]:
        # The replaced image is untagged now; a container still using it keeps it.
        with contextlib.suppress(engine.APIError):
            api.remove_image(existing["Id"])
    return image, True


def docker_image_exists() -> bool:
    try:
        engine.docker_api().inspect_image(settings.FLOTILLA_DOCKER_IMAGE)
    except engine.ImageNotFound:
        return False
    return True
