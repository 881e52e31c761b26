"""The one factory for gates: names map to dotted paths in ``settings.FLOTILLA_GATES``."""

from django.conf import settings
from django.utils.module_loading import import_string

from gates.base import Gate
from gates.errors import GateConfigError


def gate_get(name: str) -> Gate:
    path = settings.FLOTILLA_GATES.get(name)
    if path is None:
        raise GateConfigError(f"no gate named {name!r} is registered in FLOTILLA_GATES")
    gate_class: type[Gate] = import_string(path)
    return gate_class()
