"""The node supervisor: a database that cannot be reached for a while.

A PostgreSQL restart or failover takes seconds to a minute. The supervisor
must ride it out without ending, and without hammering the database (and
its own log) with a new connection attempt in a tight loop: each pass waits
at least FLOTILLA_NODE_POLL_S.
"""

import subprocess
import sys
import time

from django.db import connection

from tests.conftest import subprocess_env, wait_until
from tests.launcher import ROOT, free_port

LOST = b"lost the database"


def test_a_supervisor_without_its_database_retries_at_the_poll_rate(tmp_path):
    if connection.vendor == "postgresql":
        unreachable = f"postgres://postgres@127.0.0.1:{free_port()}/flotilla"
    else:
        unreachable = f"sqlite:///{tmp_path}/no-such-directory/flotilla.sqlite3"
    data = tmp_path / "data"
    data.mkdir()
    env = {
        **subprocess_env(),
        "DATABASE_URL": unreachable,
        "DATA_DIR": str(data),
        "FLOTILLA_NODE_NAME": "outage-node",
        "FLOTILLA_NODE_POOL": "outage-pool",
        "FLOTILLA_NODE_POLL_S": "1",
    }
    log = tmp_path / "supervise.log"
    with open(log, "wb") as output:
        process = subprocess.Popen(
            [sys.executable, "manage.py", "supervise"],
            cwd=ROOT,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until(lambda: LOST in log.read_bytes(), timeout=60, what="the first lost pass")
        first = log.read_bytes().count(LOST)
        window_s = 3.0
        time.sleep(window_s)
        attempts = log.read_bytes().count(LOST) - first
        assert process.poll() is None, log.read_text()[-3000:]
    finally:
        process.terminate()
        process.wait(timeout=30)

    # One attempt per poll interval (1 s) would be about 3; allow ten times that.
    assert attempts <= 30, f"{attempts} passes against an unreachable database in {window_s} s"
