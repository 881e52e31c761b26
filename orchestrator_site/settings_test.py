"""Test settings: the production module with a few overrides only."""

import os
import tempfile

# Each test run gets its own data directory (worktrees, mirrors, logs) unless
# the caller chose one; subprocesses started by the tests inherit it.
if "DATA_DIR" not in os.environ:
    # mkdtemp makes it 0700, as the hub keeps its DATA_DIR: sandboxes must work
    # without the sandbox user being able to reach anything below it.
    os.environ["DATA_DIR"] = tempfile.mkdtemp(prefix="flotilla-test-")
# The tests' webhook receivers, peer hubs and coordinators listen on
# 127.0.0.1, and their repositories live in temporary directories. Set in the
# environment, as DATA_DIR is, so every hub and worker the tests start
# inherits them; the tests of the outbound guard turn it back on per test.
os.environ.setdefault("FLOTILLA_ALLOW_PRIVATE_URLS", "true")
os.environ.setdefault("FLOTILLA_LOCAL_REPOSITORY_ROOTS", tempfile.gettempdir())
# A Claude agent's hostile search pattern is cut off after 2 s rather than 20,
# in the worker nodes the tests start too.
os.environ.setdefault("FLOTILLA_CLAUDE_SEARCH_TIMEOUT_S", "2")

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
# Agent runs go through a real worker node that the tests start
# (tests/conftest.py: worker_cluster), never inline.
Q_CLUSTER = {**Q_CLUSTER, "workers": 4}
FLOTILLA_DEFAULT_TIMEOUT_S = 60
# Webhook retries in tests wait tenths of a second, not minutes.
FLOTILLA_WEBHOOK_BACKOFF_S = 0.2
FLOTILLA_WEBHOOK_TIMEOUT_S = 5.0
