"""An agent tries to leave its sandbox through the filesystem, /proc and the Docker socket.

Each attack is a script agent spawned through the API; the test reads the
agent's output as a user would and checks the host for what the attack
would have left there. Hostile git configuration planted by an agent is
tests/containment/test_hostile_git.py's subject.
"""

import os
import uuid
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection

from tests.conftest import HUB_ANTHROPIC_KEY
from tests.containment.conftest import BACKENDS, run_attack, worker_setting


def token() -> str:
    return uuid.uuid4().hex[:12]


@pytest.mark.parametrize("backend", BACKENDS)
def test_writing_outside_the_workspace_fails_and_tmp_holds_no_host_files(
    hub, api, remote_repo, backend
):
    mark = token()
    host_file = Path("/tmp") / f"flotilla-host-{mark}"
    host_file.write_text(f"host-content-{mark}\n")
    targets = [
        f"/etc/escape-{mark}",
        f"/usr/escape-{mark}",
        f"/escape-{mark}",
        f"/var/escape-{mark}",
    ]
    script = "\n".join(
        [
            *[f"echo x > {target} 2>/dev/null && echo WROTE {target}" for target in targets],
            f"echo inside > /tmp/escape-{mark} && echo TMP-WRITABLE",
            f"cat {host_file} 2>&1",
            "echo \"TMP-LISTING $(ls -A /tmp | tr '\\n' ' ')\"",
            "exit 0",
        ]
    )
    try:
        _, output = run_attack(api, remote_repo, script, backend=backend)
    finally:
        host_file.unlink()

    assert "TMP-WRITABLE" in output, output
    assert "WROTE" not in output
    assert not [target for target in targets if Path(target).exists()]
    # The sandbox's /tmp is its own: what it wrote there never reaches the
    # host's, and none of the host's files are in it.
    assert not Path(f"/tmp/escape-{mark}").exists()
    assert f"host-content-{mark}" not in output
    listing = set(output.split("TMP-LISTING", 1)[1].splitlines()[0].split())
    assert listing & set(os.listdir("/tmp")) <= {f"escape-{mark}"}


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_worktrees_git_metadata_cannot_be_rewritten_from_inside(hub, api, remote_repo, backend):
    script = "\n".join(
        [
            "gitdir=$(sed -n 's/^gitdir: //p' .git)",
            "printf 'gitdir: /tmp/evil\\n' > .git 2>/dev/null && echo GIT-FILE-WRITTEN",
            "echo '[core] hooksPath = /tmp' >> .git 2>/dev/null && echo GIT-FILE-APPENDED",
            'echo x >> "$gitdir/config" 2>/dev/null && echo GITDIR-WRITTEN',
            "git config core.hooksPath /tmp 2>/dev/null && echo GIT-CONFIG-WRITTEN",
            "echo METADATA-ATTEMPTED; exit 0",
        ]
    )

    agent, output = run_attack(api, remote_repo, script, backend=backend)

    assert "METADATA-ATTEMPTED" in output, output
    for written in (
        "GIT-FILE-WRITTEN",
        "GIT-FILE-APPENDED",
        "GITDIR-WRITTEN",
        "GIT-CONFIG-WRITTEN",
    ):
        assert written not in output
    # The hub could still commit the agent's (empty) work with its own metadata.
    assert agent["state"] == "completed", agent["error"]


def hub_secrets() -> dict[str, str]:
    """The secrets the hub keeps in DATA_DIR, read on the host to search the agent's output."""
    data_dir = Path(settings.DATA_DIR)
    secrets = {"SECRET_KEY setting": settings.SECRET_KEY}
    for name in ("secret_key", "federation_key"):
        if (data_dir / name).exists():
            secrets[name] = (data_dir / name).read_text().strip()
    return {label: value for label, value in secrets.items() if len(value) >= 16}


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_hubs_data_dir_keys_and_database_cannot_be_read(hub, api, remote_repo, backend):
    data_dir = Path(settings.DATA_DIR)
    database = str(connection.settings_dict["NAME"])
    readable = [data_dir / "secret_key", data_dir / "federation_key", database]
    script = "\n".join(
        [
            *[f"head -c 300 {path} 2>&1; echo" for path in readable],
            f"ls -la {data_dir} 2>&1",
            # An attacker who does not know DATA_DIR finds it through the .git file.
            "gitdir=$(sed -n 's/^gitdir: //p' .git); ls -la \"$gitdir/../../..\" 2>&1",
            "find / -xdev \\( -name secret_key -o -name 'federation_key' -o -name '*.sqlite3' \\) "
            "-exec head -c 300 {} \\; 2>/dev/null",
            "echo DATA-ATTEMPTED; exit 0",
        ]
    )

    _, output = run_attack(api, remote_repo, script, backend=backend)

    assert "DATA-ATTEMPTED" in output, output
    leaked = [label for label, secret in hub_secrets().items() if secret in output]
    assert leaked == [], f"the agent read {leaked}"
    assert "SQLite format 3" not in output
    assert "worker.log" not in output, "the agent listed DATA_DIR"


@pytest.mark.parametrize("backend", BACKENDS)
def test_proc_shows_only_the_sandbox_and_never_the_hubs_environment(hub, api, remote_repo, backend):
    script = "\n".join(
        [
            "echo \"PID1 $(tr '\\0' ' ' < /proc/1/cmdline)\"",
            "tr '\\0' '\\n' < /proc/1/environ 2>&1",
            "for p in /proc/[0-9]*; do echo \"PROC $p $(tr '\\0' ' ' < $p/cmdline 2>/dev/null)\";"
            " tr '\\0' '\\n' < $p/environ 2>/dev/null; done",
            "env",
            "echo PROC-ATTEMPTED; exit 0",
        ]
    )

    _, output = run_attack(api, remote_repo, script, backend=backend)

    assert "PROC-ATTEMPTED" in output, output
    # The key is really in the hub's workers' environment, and nowhere in the agent's view.
    assert worker_setting(hub, "ANTHROPIC_API_KEY") == HUB_ANTHROPIC_KEY
    assert HUB_ANTHROPIC_KEY not in output
    assert "runhub" not in output and "supervise" not in output, "a hub process is visible"
    host_init = Path("/proc/1/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    sandbox_init = output.split("PID1 ", 1)[1].splitlines()[0].strip()
    assert sandbox_init != host_init


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_docker_socket_is_absent_from_the_sandbox(hub, api, remote_repo, backend):
    sockets = ["/var/run/docker.sock", "/run/docker.sock"]
    assert any(Path(path).exists() for path in sockets), "the host has no Docker socket to attack"
    script = "\n".join(
        [
            *[
                f"curl -sS --max-time 5 --unix-socket {path} http://docker/version 2>&1; echo"
                for path in sockets
            ],
            *[
                'python3 -c "import socket; s = socket.socket(socket.AF_UNIX);'
                f" s.connect('{path}'); print('SOCKET-OPEN {path}')\" 2>&1 | tail -1"
                for path in sockets
            ],
            "echo SOCKET-ATTEMPTED; exit 0",
        ]
    )

    _, output = run_attack(api, remote_repo, script, backend=backend)

    assert "SOCKET-ATTEMPTED" in output, output
    assert "SOCKET-OPEN" not in output
    assert "ApiVersion" not in output
