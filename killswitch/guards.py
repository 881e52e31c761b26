"""Spawn guards the kill switch registers in ``FLOTILLA_SPAWN_GUARDS``."""

from agents.errors import SpawnRefused
from agents.services import SpawnRequest
from killswitch.selectors import hub_halt_get


def refuse_while_halted(*, request: SpawnRequest, requested_by: str) -> None:
    halt = hub_halt_get()
    if halt.halted:
        raise SpawnRefused(f"the hub is halted ({halt.reason}); release it to spawn agents")
