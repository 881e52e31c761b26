"""No network mode lets an agent reach the hub's host; egress goes only through the hub's proxy.

The sandbox has loopback alone in every mode. With ``allowlist`` or ``on``
its proxy (http://127.0.0.1:3128 inside) forwards to the hub's egress proxy,
which refuses loopback, private and link-local addresses unless the
operator's FLOTILLA_EGRESS_ALLOWLIST names them as host:port: the test
cluster's names exactly ``egress_allowed_server``.
"""

import re
from urllib.parse import urlsplit

import pytest

from tests.conftest import spawn_body
from tests.containment.conftest import (
    BACKENDS,
    address,
    connection_recorded,
    events_of,
    fetch_answers,
    fetch_reached,
    finished,
    host_addresses,
    interfaces_command,
    interfaces_in,
    network_events,
    output_of,
    probe_verdicts,
    proxy_fetch,
    run_attack,
    spawn,
    tcp_probe,
)

MODES = ["off", "allowlist", "on"]
POSTGRESQL = "127.0.0.1:5432"
REDIS = ["127.0.0.1:6379", "[::1]:6379"]
PROXY = "http://127.0.0.1:3128"
# What a sandbox with a proxy sees in its environment (a trailing slash is fine).
PROXY_ENV = re.compile(r"^PROXY-ENV http://127\.0\.0\.1:3128/? http://127\.0\.0\.1:3128/?$", re.M)


def hub_port(live_server) -> int:
    return urlsplit(live_server.url).port


def finished_output(api, agent_id: str) -> tuple[dict, str]:
    return finished(api, agent_id), output_of(api, agent_id)


def proxy_environment() -> str:
    return 'echo "PROXY-ENV ${HTTP_PROXY:-unset} ${HTTPS_PROXY:-unset}"'


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_no_direct_connection_reaches_the_host_in_any_network_mode(
    hub, api, remote_repo, backend, mode, host_listener, live_server
):
    port = host_listener.port
    own_addresses = host_addresses()
    targets = [
        f"127.0.0.1:{port}",
        f"[::1]:{port}",
        f"127.0.0.1:{hub_port(live_server)}",
        POSTGRESQL,
        *REDIS,
        *[address(host, port) for host in own_addresses],
    ]
    script = f"{interfaces_command()}; {tcp_probe(targets)}; exit 0"

    agent, output = run_attack(api, remote_repo, script, backend=backend, network=mode)

    verdicts = probe_verdicts(output)
    assert set(verdicts) == set(targets), output
    reached = [target for target, verdict in verdicts.items() if verdict == "CONNECTED"]
    assert reached == [], f"in mode {mode} the sandbox reached {reached}"
    assert host_listener.accepted == []
    assert interfaces_in(output) == {"lo"}
    if not own_addresses:
        pytest.skip("loopback checked; the host has no non-loopback address to attack")


@pytest.mark.parametrize("backend", BACKENDS)
def test_network_true_reaches_neither_the_hub_api_nor_postgresql_nor_redis(
    hub, api, remote_repo, backend, live_server
):
    # Finding 2 as reported: `options.network: true` on bwrap was the host's network.
    health = f"{live_server.url}/api/v1/health"
    targets = [f"127.0.0.1:{hub_port(live_server)}", POSTGRESQL, *REDIS]
    script = "; ".join(
        [
            interfaces_command(),
            tcp_probe(targets),
            f"curl -sS --noproxy '*' --max-time 5 {health} 2>&1; echo",
            f"curl -sS --proxy {PROXY} --max-time 5 {health} 2>&1; echo",
            "exit 0",
        ]
    )

    _, output = run_attack(api, remote_repo, script, backend=backend, network=True)

    verdicts = probe_verdicts(output)
    assert set(verdicts) == set(targets), output
    assert [target for target, verdict in verdicts.items() if verdict == "CONNECTED"] == []
    assert "live_agents" not in output, "the sandbox read the hub's API"
    assert interfaces_in(output) == {"lo"}


@pytest.mark.parametrize("backend", BACKENDS)
def test_allowlist_mode_reaches_the_allowlisted_server_and_no_other(
    hub, api, remote_repo, backend, egress_allowed_server, egress_other_server
):
    script = "; ".join(
        [
            proxy_environment(),
            proxy_fetch({"allowed": egress_allowed_server.url, "other": egress_other_server.url}),
            "exit 0",
        ]
    )
    agent_id = spawn(api, remote_repo, script, backend=backend, network="allowlist")

    _, output = finished_output(api, agent_id)

    answers = fetch_answers(output)
    assert PROXY_ENV.search(output), output
    assert fetch_reached(answers.get("allowed")), output
    assert "allowed-server" in answers["allowed"]
    assert not fetch_reached(answers.get("other")), output
    assert "other-server" not in output
    events = events_of(api, agent_id)
    assert connection_recorded(
        events, host="127.0.0.2", port=egress_allowed_server.port, allowed=True
    ), network_events(events)
    assert connection_recorded(
        events, host="127.0.0.2", port=egress_other_server.port, allowed=False
    ), network_events(events)


@pytest.mark.parametrize("backend", BACKENDS)
def test_allow_hosts_cannot_add_a_host_the_operator_did_not_list(
    hub, api, remote_repo, backend, egress_other_server
):
    script = f"{proxy_fetch({'other': egress_other_server.url})}; exit 0"
    body_options = {"network": "allowlist", "allow_hosts": [egress_other_server.address]}
    response = api.post(
        "/api/v1/agents",
        spawn_body(remote_repo, script, sandbox=backend, **body_options),
        format="json",
    )

    if response.status_code == 400:
        assert "allow_hosts" in response.content.decode()
        return
    assert response.status_code == 202, response.content
    _, output = finished_output(api, response.json()["agent_id"])
    assert "FETCH other" in output, output
    assert not fetch_reached(fetch_answers(output)["other"])
    assert "other-server" not in output


@pytest.mark.parametrize("backend", BACKENDS)
def test_on_mode_reaches_no_host_address_the_operator_did_not_name(
    hub,
    api,
    remote_repo,
    backend,
    egress_allowed_server,
    egress_other_server,
    host_listener,
    live_server,
):
    own = [address(host, host_listener.port) for host in host_addresses()]
    refused = {
        "other": egress_other_server.url,
        # Inside the sandbox 127.0.0.1 is the sandbox itself and clients do
        # not proxy it, so the host's loopback is asked for by CONNECT.
        "hub": f"connect:127.0.0.1:{hub_port(live_server)}",
        "metadata": "http://169.254.169.254/latest/meta-data/",
        "loopback": f"connect:127.0.0.1:{host_listener.port}",
        "postgresql": f"connect:{POSTGRESQL}",
        "redis": f"connect:{REDIS[0]}",
        **{f"host{index}": f"http://{target}/" for index, target in enumerate(own)},
        **{f"tunnel{index}": f"connect:{target}" for index, target in enumerate(own)},
    }
    script = "; ".join(
        [
            proxy_environment(),
            proxy_fetch({"allowed": egress_allowed_server.url, **refused}),
            "exit 0",
        ]
    )
    agent_id = spawn(api, remote_repo, script, backend=backend, network="on")

    _, output = finished_output(api, agent_id)

    answers = fetch_answers(output)
    assert PROXY_ENV.search(output), output
    assert fetch_reached(answers.get("allowed")), output
    assert set(answers) == {"allowed", *refused}, output
    reached = [name for name in refused if fetch_reached(answers[name])]
    assert reached == [], f"mode on reached {reached}:\n{output}"
    assert "other-server" not in output and "live_agents" not in output
    assert host_listener.accepted == []
    events = events_of(api, agent_id)
    assert connection_recorded(events, host="169.254.169.254", port=None, allowed=False), (
        network_events(events)
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_off_mode_has_no_proxy_at_all(hub, api, remote_repo, backend, egress_allowed_server):
    script = "; ".join(
        [
            proxy_environment(),
            tcp_probe(["127.0.0.1:3128"]),
            proxy_fetch({"allowed": egress_allowed_server.url}),
            "exit 0",
        ]
    )
    # `false` is the older spelling of "off".
    agent_id = spawn(api, remote_repo, script, backend=backend, network=False)

    agent, output = finished_output(api, agent_id)

    assert "PROXY-ENV unset unset" in output
    assert probe_verdicts(output) == {"127.0.0.1:3128": "FAILED"}, output
    assert not fetch_reached(fetch_answers(output).get("allowed"))
    assert "allowed-server" not in output
    assert network_events(events_of(api, agent_id)) == []
