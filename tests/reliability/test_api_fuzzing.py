"""Schemathesis against a running hub's own OpenAPI schema, as an authenticated staff client.

The hub is real (daphne + a django-q2 cluster, tests/launcher.py); Schemathesis
reads ``/api/v1/schema/`` and fuzzes every operation. Checks: no 5xx, every
response matches the schema (status, body, content type). Operations that
would stop the hub for the rest of the run (kill-all, halt, release) or that
must reach the network (connecting a peer: an unreachable peer is a
legitimate 502) are left out; tests/test_authorization_matrix.py and the
federation tests cover them. tests/test_api_schema_fuzzing.py runs the
same checks in process, on every run of the suite, with all operations.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.launcher import Hub
from tests.reliability.conftest import HEAVY

ST = Path(sys.executable).with_name("st")
EXCLUDED = r"agents/kill-all$|killswitch/|/resume$|peers/connect$"


# A hub of its own on SQLite: nothing here depends on the session's database,
# so scripts/test runs it once, beside the sandbox and browser tests.
pytestmark = pytest.mark.one_database


@pytest.fixture(scope="module")
def fuzz_hub():
    hub = Hub("fuzzed", env={"FLOTILLA_WORKERS": "2", "FLOTILLA_DEFAULT_TIMEOUT_S": "60"}).start()
    yield hub
    hub.stop()


def test_schemathesis_finds_no_server_error_and_no_response_outside_the_schema(fuzz_hub, tmp_path):
    examples = "200" if HEAVY else "25"
    done = subprocess.run(
        [
            str(ST),
            "run",
            f"{fuzz_hub.url}/api/v1/schema/?format=json",
            "--header",
            f"Authorization: Token {fuzz_hub.token}",
            "--checks",
            "not_a_server_error,status_code_conformance,response_schema_conformance,"
            "content_type_conformance",
            "--phases",
            "examples,fuzzing",
            "--max-examples",
            examples,
            "--seed",
            "9",
            "--exclude-path-regex",
            EXCLUDED,
            "--request-timeout",
            "30",
            "--continue-on-failure",
            "--report-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "NO_COLOR": "1"},
        cwd=tmp_path,  # Schemathesis keeps a cache in its working directory
    )
    readable = re.sub(r"(\\u[0-9a-f]{4}|[A-Za-z0-9+/=]){200,}", "…", done.stdout)
    assert done.returncode == 0, readable[-15000:]
    assert "Tested: " in readable
