"""Test settings: the production module with a few overrides only."""

import os
import tempfile

# Each test run gets its own data directory (worktrees, mirrors, logs) unless
# the caller chose one; subprocesses started by the tests inherit it.
if "DATA_DIR" not in os.environ:
    os.environ["DATA_DIR"] = tempfile.mkdtemp(prefix="flotilla-test-")
    # The sandbox user must be able to reach the worktrees below it.
    os.chmod(os.environ["DATA_DIR"], 0o755)

from orchestrator_site.settings import *  # noqa: F403
from orchestrator_site.settings import DATA_DIR, DATABASES, Q_CLUSTER

# Threads and subprocesses in the tests need a database they can all open, so
# the SQLite test database is a file rather than Django's in-memory default.
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    DATABASES["default"]["TEST"] = {"NAME": str(DATA_DIR / f"test-{os.getpid()}.sqlite3")}
else:
    # Two test runs on one PostgreSQL server (a developer's and CI's, say)
    # must not share, and so drop, each other's database.
    DATABASES["default"]["TEST"] = {"NAME": f"test_flotilla_{os.getpid()}"}

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
# Agent runs go through a real django-q2 cluster that the tests start
# (tests/conftest.py: worker_cluster), never inline.
Q_CLUSTER = {**Q_CLUSTER, "workers": 12}
FLOTILLA_DEFAULT_TIMEOUT_S = 60
# Webhook retries in tests wait tenths of a second, not minutes.
FLOTILLA_WEBHOOK_BACKOFF_S = 0.2
FLOTILLA_WEBHOOK_TIMEOUT_S = 5.0
