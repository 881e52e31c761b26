"""The flush after a transactional test survives a node that is still writing (PostgreSQL).

CI once failed with "Database test_flotilla_… couldn't be flushed": the
session's worker node was ending a run, holding the events table and asking
for the agents table, while the flush's TRUNCATE held the one and waited for
the other (whether they deadlock depends on the order the flush names the
tables in, which changes from run to run). This is that writer, made to
deadlock with a real flush.
"""

import threading

import psycopg
import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command
from django.core.management.color import no_style
from django.db import connection
from django.test import TransactionTestCase

from tests.conftest import wait_until

pytestmark = pytest.mark.skipif(
    connection.vendor != "postgresql", reason="SQLite locks the whole database: no deadlock"
)


class AfterATest(TransactionTestCase):
    __test__ = False  # only its teardown is used
    databases = {"default"}

    def runTest(self) -> None:
        pass


def flush() -> None:
    call_command("flush", interactive=False, verbosity=0)


def truncated_in_order(*tables: str) -> list[str]:
    names = connection.introspection.django_table_names(only_existing=True, include_views=False)
    (statement,) = connection.ops.sql_flush(no_style(), names)
    return sorted(tables, key=lambda table: statement.index(f'"{table}"'))


def connect() -> psycopg.Connection:
    settings = connection.settings_dict
    return psycopg.connect(
        dbname=settings["NAME"],
        host=settings["HOST"],
        port=settings["PORT"] or 5432,
        user=settings["USER"],
    )


def flush_waits() -> bool:
    # A connection of its own: a transaction sees one snapshot of pg_stat_activity.
    with connect() as observer:
        waiting = observer.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE wait_event_type = 'Lock' AND query LIKE 'TRUNCATE%'"
        ).fetchone()
    return bool(waiting and waiting[0])


def deadlock_with(flushing) -> list[BaseException]:
    """Run ``flushing`` while a writer holds the events table, then asks for the agents table."""
    writer = connect()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            flushing()
        except Exception as error:
            errors.append(error)
        finally:
            connection.close()

    # The flush's TRUNCATE takes the tables in the order it names them (a
    # set's order: it changes between runs); the writer takes them the other way.
    first, second = truncated_in_order("agents_agent", "agents_agentevent")
    with writer:
        writer.execute(f"LOCK TABLE {second} IN ROW EXCLUSIVE MODE")
        thread = threading.Thread(target=run)
        thread.start()
        wait_until(flush_waits, 30, "the flush to wait behind the writer")
        writer.execute(f"LOCK TABLE {first} IN ROW EXCLUSIVE MODE")
    thread.join(timeout=60)
    return errors


@pytest.mark.django_db(transaction=True)
def test_a_plain_flush_is_the_deadlocks_victim():
    errors = deadlock_with(flush)

    assert [type(error) for error in errors] == [CommandError]


@pytest.mark.django_db(transaction=True)
def test_the_tests_flush_retries_when_it_is_the_deadlocks_victim_and_empties_the_tables():
    get_user_model().objects.create_user("left-behind")

    # What pytest-django runs after every transactional test (tests/conftest.py installs it).
    errors = deadlock_with(AfterATest()._fixture_teardown)

    assert errors == []
    assert not get_user_model().objects.exists()
