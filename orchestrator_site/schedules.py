"""django-q2 schedules that several processes ensure at once, kept to one row per name.

django-q2's ``Schedule.name`` is not unique, so two nodes starting together
(each ``runhub --role worker`` ensures the reconciler's schedule) could both
find no row and both insert one; every later ``update_or_create`` then failed
with ``MultipleObjectsReturned`` and the next node could not start. Here the
ensure is serialised by a write lock taken first, and it removes any
duplicate it finds, so a database that already holds two rows heals.
"""

import zlib

from django.db import connection, transaction
from django_q.models import Schedule

# The high half of this module's advisory lock keys (one bigint per name).
_LOCK_SPACE = 0x5CED

# The high half of this module's advisory lock keys (one bigint per name).
_LOCK_SPACE = 0x5CED


def schedule_ensure(*, name: str, func: str, minutes: int, update: bool = True) -> Schedule:
    """The one schedule called ``name``, running ``func`` every ``minutes``.

    With ``update`` an existing schedule gets these values; without, an
    existing one (perhaps changed by an operator in the admin) is kept as is.
    """
    fields = {"func": func, "schedule_type": Schedule.MINUTES, "minutes": minutes, "repeats": -1}
    with transaction.atomic():
        _lock(name)
        rows = list(Schedule.objects.filter(name=name).order_by("id"))
        if not rows:
            return Schedule.objects.create(name=name, **fields)
        kept, extra = rows[0], rows[1:]
        if extra:
            Schedule.objects.filter(id__in=[row.id for row in extra]).delete()
        if update:
            Schedule.objects.filter(id=kept.id).update(**fields)
            kept.refresh_from_db()
        return kept


def _lock(name: str) -> None:
    """Hold, until the transaction ends, a lock that every ensure of ``name`` takes."""
    if connection.vendor == "postgresql":
        key = (_LOCK_SPACE << 32) | zlib.crc32(name.encode())
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [key])
    else:
        # SQLite has one writer: a write, even of no row, takes its lock now.
        Schedule.objects.filter(name=name).update(name=name)
