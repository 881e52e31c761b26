"""The docker sandbox backend: one hardened container per agent.

engine.py is the SDK adapter (the only module that imports ``docker``),
sandbox.py the ``Sandbox`` backend, pool.py the warm pool and image.py the
sandbox image. Settings name the backend ``agents.sandboxes.docker.DockerSandbox``.
"""

from agents.sandboxes.docker.engine import docker_api
from agents.sandboxes.docker.image import docker_image_build, docker_image_exists, image_layout
from agents.sandboxes.docker.pool import (
    docker_pool_claims,
    docker_pool_drain,
    docker_pool_refill,
    docker_pool_sweep,
)
from agents.sandboxes.docker.sandbox import (
    DockerSandbox,
    container_name,
    docker_handle,
    docker_pool_refill_enqueue,
    hub_label,
    pool_fits,
)

__all__ = [
    "DockerSandbox",
    "container_name",
    "docker_api",
    "docker_handle",
    "docker_image_build",
    "docker_image_exists",
    "docker_pool_claims",
    "docker_pool_drain",
    "docker_pool_refill",
    "docker_pool_refill_enqueue",
    "docker_pool_sweep",
    "hub_label",
    "image_layout",
    "pool_fits",
]
