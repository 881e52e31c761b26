"""Riding out a database restart in a long-running worker.

Django reconnects only at request boundaries, which a worker running an
agent for an hour never reaches: after PostgreSQL restarts, every query on
the old connection fails ("terminating connection due to administrator
command", then "the connection is closed"). A run that hits that must not
leave its agent ``running`` forever under a live supervisor, so the steps
that report a run's progress and its end go through ``database_retrying``:
on a connection error it drops this thread's connections, waits, and tries
again until the database is back or ``within_s`` has passed. Everything it
wraps is idempotent or a conditional update, so a retry after a write that
did reach the database finds the work done.
"""

import logging
from collections.abc import Callable
from typing import TypeVar

import tenacity
from django.db import InterfaceError, OperationalError, connection, connections

logger = logging.getLogger(__name__)
T = TypeVar("T")


def database_retrying(step: Callable[[], T], *, within_s: float = 120.0, pause_s: float = 0.5) -> T:
    def lost(error: BaseException) -> bool:
        # Inside a transaction the work so far is gone with the connection: not ours to retry.
        dropped = isinstance(error, OperationalError | InterfaceError)
        return dropped and not connection.in_atomic_block

    def reconnect(state: tenacity.RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        logger.warning("database connection lost (%s); reconnecting", error)
        connections.close_all()

    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_exception(lost),
        stop=tenacity.stop_after_delay(within_s),
        wait=tenacity.wait_fixed(pause_s),
        before_sleep=reconnect,
        reraise=True,
    )
    return retrying(step)
