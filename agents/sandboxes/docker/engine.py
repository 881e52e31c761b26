"""The Docker SDK adapter: the only module that imports ``docker``.

The rest of the docker sandbox package reaches the engine through
``docker_api()`` and names the SDK's errors and types through this module.
"""

import os
import threading

import docker
import docker.errors
import docker.utils
from django.conf import settings
from docker import APIClient
from docker.errors import APIError, ImageNotFound, NotFound
from docker.types import Mount, Ulimit

from agents.sandboxes.base import SandboxUnavailable

__all__ = [
    "APIClient",
    "APIError",
    "ImageNotFound",
    "Mount",
    "NotFound",
    "Ulimit",
    "docker_api",
    "engine_error",
    "parse_repository_tag",
]

parse_repository_tag = docker.utils.parse_repository_tag

_clients: dict[int, APIClient] = {}
_clients_lock = threading.Lock()


def engine_error(error: Exception) -> SandboxUnavailable:
    return SandboxUnavailable(
        f"the Docker engine is not reachable ({type(error).__name__}: {error}); "
        "start it (scripts/docker-up) or choose another sandbox"
    )


def docker_api() -> APIClient:
    """One client per process: a forked worker must not share its parent's connections."""
    pid = os.getpid()
    with _clients_lock:
        client = _clients.get(pid)
        if client is None:
            try:
                client = docker.from_env(timeout=settings.FLOTILLA_DOCKER_TIMEOUT_S).api
                client.ping()
            except Exception as error:  # the SDK raises several unrelated types here
                raise engine_error(error) from None
            _clients[pid] = client
    return client
