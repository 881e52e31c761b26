"""The tools every sandbox runs live where the sandbox user can reach them.

DATA_DIR is private to the hub's user (0700), so the gate toolchain and the
agent CLIs, which sandboxes run as the sandbox user, must never default into
it: a default under ``<checkout>/var`` made ``manage.py sandbox_toolchain``
fail on every checkout whose own directories are world-traversable.
"""

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT

SHOW = """
import json
from django.conf import settings
print(json.dumps({
    "data_dir": str(settings.DATA_DIR),
    "toolchain": str(settings.FLOTILLA_SANDBOX_TOOLCHAIN),
    "agent_clis": str(settings.FLOTILLA_AGENT_CLIS_DIR),
}))
"""


def default_paths() -> dict[str, Path]:
    ours = ("FLOTILLA_", "DJANGO_", "DATA_DIR")
    environ = {key: value for key, value in os.environ.items() if not key.startswith(ours)}
    environ["DJANGO_SETTINGS_MODULE"] = "orchestrator_site.settings"
    done = subprocess.run(
        [sys.executable, "-c", f"import django; django.setup(); {SHOW}"],
        cwd=ROOT,
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return {key: Path(value) for key, value in json.loads(done.stdout).items()}


def test_sandbox_tools_never_default_into_the_private_data_directory():
    paths = default_paths()
    assert stat.S_IMODE(paths["data_dir"].stat().st_mode) == 0o700
    for name in ("toolchain", "agent_clis"):
        assert not paths[name].is_relative_to(paths["data_dir"]), (name, paths)


def test_every_existing_directory_above_the_default_tools_lets_the_sandbox_user_through():
    paths = default_paths()
    for name in ("toolchain", "agent_clis"):
        existing = [parent for parent in paths[name].parents if parent.exists()]
        closed = [str(parent) for parent in existing if not parent.stat().st_mode & stat.S_IXOTH]
        assert closed == [], (name, closed)
