"""The flush after a transactional test, retried when PostgreSQL makes it a deadlock's victim.

The session's worker node shares the test database, as a hub's nodes share
theirs, and may still be writing a run's last rows (its state, its events)
when a test ends. Its transaction holds one table and asks for the next while
the flush's TRUNCATE, which takes every table in turn, waits behind it.
PostgreSQL then aborts one of the two, and it is the one that has waited the
longest: the flush. A deadlock's victim is retried, as PostgreSQL advises;
the writer has committed by then.
"""

from collections.abc import Callable

import psycopg
from django.test import TransactionTestCase
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_fixed

__all__ = ["deadlocked", "flush_retrying", "install"]

FLUSH_ATTEMPTS = 5


def deadlocked(error: BaseException) -> bool:
    """Whether ``error`` (a CommandError from ``flush``, say) was caused by a deadlock."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, psycopg.errors.DeadlockDetected):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def flush_retrying(flush: Callable[[], None]) -> None:
    for attempt in Retrying(
        retry=retry_if_exception(deadlocked),
        stop=stop_after_attempt(FLUSH_ATTEMPTS),
        wait=wait_fixed(0.2),
        reraise=True,
    ):
        with attempt:
            flush()


def install() -> None:
    """Make every transactional test's flush (pytest-django's and Django's) retry a deadlock."""
    flush = TransactionTestCase._fixture_teardown
    if getattr(flush, "retries_deadlocks", False):
        return

    def fixture_teardown(self: TransactionTestCase) -> None:
        flush_retrying(lambda: flush(self))

    fixture_teardown.retries_deadlocks = True  # type: ignore[attr-defined]
    TransactionTestCase._fixture_teardown = fixture_teardown  # type: ignore[method-assign]
