"""Sandbox backends, chosen by name through ``FLOTILLA_SANDBOX_BACKENDS``."""

from django.conf import settings
from django.utils.module_loading import import_string

from agents.sandboxes.base import Sandbox, SandboxUnavailable

# The sandbox name of an agent that runs on a peer hub; its backend (registered
# in settings by federation) forwards a kill to that peer.
REMOTE_SANDBOX = "remote"


def sandbox_backend(name: str) -> Sandbox:
    path = settings.FLOTILLA_SANDBOX_BACKENDS.get(name)
    if path is None:
        raise SandboxUnavailable(f"unknown sandbox backend {name!r}")
    try:
        backend_class: type[Sandbox] = import_string(path)
    except ImportError as error:
        raise SandboxUnavailable(f"sandbox backend {name!r} cannot be loaded: {error}") from None
    return backend_class()
