"""django-q2 schedules that nodes ensure at start stay one row per name.

Found by a rehearsal on PostgreSQL: two worker nodes starting together both
created the reconciler's schedule, and the next node's start then failed with
``MultipleObjectsReturned``.
"""

import threading

import pytest
from django.db import connections
from django_q.models import Schedule

from agents.reconciler import SCHEDULE_NAME, reconcile_schedule_ensure
from orchestrator_site.schedules import schedule_ensure

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_node_starts_when_an_earlier_race_left_two_reconciler_schedules():
    for _ in range(2):
        Schedule.objects.create(name=SCHEDULE_NAME, func="agents.tasks.agents_reconcile")

    reconcile_schedule_ensure()

    (schedule,) = Schedule.objects.filter(name=SCHEDULE_NAME)
    assert schedule.func == "agents.tasks.agents_reconcile"
    assert schedule.schedule_type == Schedule.MINUTES and schedule.repeats == -1


def test_nodes_ensuring_one_schedule_at_once_leave_exactly_one_row():
    errors: list[BaseException] = []
    start = threading.Barrier(6)

    def ensure() -> None:
        try:
            start.wait()
            schedule_ensure(name="flotilla-race", func="agents.tasks.agents_reconcile", minutes=1)
        except BaseException as error:
            errors.append(error)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=ensure) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert Schedule.objects.filter(name="flotilla-race").count() == 1


def test_an_operators_change_to_a_housekeeping_schedule_is_kept():
    schedule_ensure(name="flotilla-housekeeping", func="federation.tasks.nonces_prune", minutes=5)
    Schedule.objects.filter(name="flotilla-housekeeping").update(minutes=30)

    schedule_ensure(
        name="flotilla-housekeeping", func="federation.tasks.nonces_prune", minutes=5, update=False
    )

    assert Schedule.objects.get(name="flotilla-housekeeping").minutes == 30
