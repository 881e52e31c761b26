"""Waking the node supervisors when an agent is queued or a resume is asked for.

A supervisor also polls every FLOTILLA_NODE_POLL_S, so a lost wake-up only
delays a claim; it never strands an agent. On PostgreSQL the wake-up is a
``NOTIFY`` that every node's supervisor listens for, wherever it runs. A
SQLite database is one file on one machine, so every node is on this
machine too: each supervisor binds a datagram socket under
``DATA_DIR/supervisors`` and a wake-up is one datagram to each.
"""

import contextlib
import logging
import socket
from pathlib import Path

from django.conf import settings
from django.db import DatabaseError, connection

logger = logging.getLogger(__name__)

CHANNEL = "flotilla_agents_queued"


def supervisor_wake() -> None:
    """Tell every node supervisor that there may be work to claim; never raises."""
    if connection.vendor == "postgresql":
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_notify(%s, '')", [CHANNEL])
        except DatabaseError:
            logger.warning("could not wake the node supervisors; they will poll")
        return
    for path in wake_socket_dir().glob("*.sock"):
        with (
            contextlib.suppress(OSError),
            socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender,
        ):
            sender.setblocking(False)
            sender.sendto(b"wake", str(path))


def wake_socket_dir() -> Path:
    return Path(settings.DATA_DIR) / "supervisors"
