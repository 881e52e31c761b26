"""``options.network`` and ``options.allow_hosts``: what a spawn may ask for, and what is kept."""

import json

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from agents.errors import AgentError
from agents.models import Agent
from agents.services import SpawnRequest
from federation.remote import spawn_request_from as remote_spawn_request_from
from tests.conftest import spawn_body


def spawn(api, remote_repo, **options):
    return api.post("/api/v1/agents", spawn_body(remote_repo, "true", **options), format="json")


def error_fields(response) -> dict:
    return response.json()["error"].get("fields", {})


def test_network_is_off_unless_the_spawn_asks(api, remote_repo):
    response = spawn(api, remote_repo)

    assert response.status_code == 202
    assert Agent.objects.get(id=response.json()["agent_id"]).network == "off"


@pytest.mark.parametrize(
    ("asked", "stored"),
    [(False, "off"), (True, "on"), ("off", "off"), ("allowlist", "allowlist"), ("on", "on")],
)
def test_the_network_mode_is_stored_on_the_agent_as_its_name(api, remote_repo, asked, stored):
    response = spawn(api, remote_repo, network=asked)

    assert response.status_code == 202, response.json()
    assert Agent.objects.get(id=response.json()["agent_id"]).network == stored


@pytest.mark.parametrize("asked", ["yes", "ON", "true", "", 1, 0, None, ["on"], {"mode": "on"}])
def test_any_other_network_value_is_refused_with_400(api, remote_repo, asked):
    response = spawn(api, remote_repo, network=asked)

    assert response.status_code == 400
    assert "options.network" in error_fields(response)
    assert Agent.objects.count() == 0


def test_allow_hosts_within_the_operators_list_are_kept_in_the_options(api, remote_repo, settings):
    settings.FLOTILLA_EGRESS_ALLOWLIST = ("pypi.org", "files.pythonhosted.org", "localhost:8080")

    response = spawn(
        api,
        remote_repo,
        network="allowlist",
        allow_hosts=["PyPI.org", "files.pythonhosted.org:443", "localhost:8080"],
    )

    assert response.status_code == 202, response.json()
    agent = Agent.objects.get(id=response.json()["agent_id"])
    assert agent.network == "allowlist"
    assert agent.options["allow_hosts"] == [
        "pypi.org",
        "files.pythonhosted.org:443",
        "localhost:8080",
    ]


@pytest.mark.parametrize(
    "entry", ["evil.example", "pypi.org:8443", "localhost", "localhost:8081", "10.0.0.1:80"]
)
def test_allow_hosts_outside_the_operators_list_get_400_naming_the_entry(
    api, remote_repo, settings, entry
):
    settings.FLOTILLA_EGRESS_ALLOWLIST = ("pypi.org", "localhost:8080")

    response = spawn(api, remote_repo, network="allowlist", allow_hosts=["pypi.org", entry])

    assert response.status_code == 400
    [message] = error_fields(response)["options.allow_hosts"]
    assert entry in message and "FLOTILLA_EGRESS_ALLOWLIST" in message
    assert Agent.objects.count() == 0


@pytest.mark.parametrize("entry", ["not a host", "http://pypi.org", "pypi.org:0", "*", ""])
def test_a_malformed_allow_hosts_entry_gets_400_naming_it(api, remote_repo, entry):
    response = spawn(api, remote_repo, network="allowlist", allow_hosts=[entry])

    assert response.status_code == 400
    assert "options.allow_hosts" in json.dumps(error_fields(response))


def test_allow_hosts_are_bounded_in_count_and_length(api, remote_repo, settings):
    settings.FLOTILLA_EGRESS_ALLOWLIST = tuple(f"h{number}.example" for number in range(200))

    too_many = spawn(
        api,
        remote_repo,
        network="allowlist",
        allow_hosts=[f"h{number}.example" for number in range(200)],
    )
    too_long = spawn(api, remote_repo, network="allowlist", allow_hosts=["a" * 300])

    assert too_many.status_code == 400 and too_long.status_code == 400


@pytest.mark.parametrize("network", ["off", "on", True, False])
def test_allow_hosts_apply_only_to_the_allowlist_mode(api, remote_repo, network):
    response = spawn(api, remote_repo, network=network, allow_hosts=["pypi.org"])

    assert response.status_code == 400
    assert "options.allow_hosts" in error_fields(response)


def test_the_openapi_schema_describes_network_and_allow_hosts(api):
    schema = json.loads(api.get("/api/v1/schema/?format=json").content)

    options = schema["components"]["schemas"]["SpawnOptionsRequest"]["properties"]
    kinds = {json.dumps(kind, sort_keys=True) for kind in options["network"]["oneOf"]}
    assert json.dumps({"enum": ["off", "allowlist", "on"], "type": "string"}, sort_keys=True) in (
        kinds
    )
    assert json.dumps({"type": "boolean"}) in kinds
    assert options["allow_hosts"]["type"] == "array"


def test_a_request_built_with_the_old_boolean_still_names_a_mode():
    common = {"task_id": "t", "agent_type": "worker", "runtime": "script"}
    common |= {"repository": "/r", "base_branch": "main"}

    assert SpawnRequest(**common).network == "off"
    assert SpawnRequest(**common, network=True).network == "on"
    assert SpawnRequest(**common, network=False).network == "off"
    with pytest.raises(AgentError, match="off, allowlist or on"):
        SpawnRequest(**common, network="sometimes")


@pytest.mark.parametrize(
    ("options", "mode"),
    [({}, "off"), ({"network": True}, "on"), ({"network": "allowlist"}, "allowlist")],
)
def test_a_spawn_sent_to_a_peer_is_recorded_with_the_mode_the_peer_reads(options, mode):
    spawn = {"task_id": "t", "runtime": "script", "context": {"repository": "/r"}}

    assert remote_spawn_request_from({**spawn, "options": options}).network == mode


@pytest.mark.parametrize("allow_hosts", [5, "pypi.org", [1, 2], {"a": 1}])
def test_a_malformed_allow_hosts_for_a_peer_is_a_400_not_a_crash(allow_hosts):
    spawn = {"task_id": "t", "runtime": "script", "context": {"repository": "/r"}}
    options = {"network": "allowlist", "allow_hosts": allow_hosts}

    with pytest.raises(AgentError) as raised:
        remote_spawn_request_from({**spawn, "options": options})

    assert raised.value.http_status == 400 and "options.allow_hosts" in raised.value.fields


def test_the_migration_turns_the_old_boolean_into_a_mode(transactional_db):
    executor = MigrationExecutor(connection)
    before, after = [("agents", "0003_claude_usage")], executor.loader.graph.leaf_nodes("agents")
    executor.migrate(before)
    old = (
        MigrationExecutor(connection).loader.project_state(before).apps.get_model("agents", "Agent")
    )
    fields = {
        "task_id": "t",
        "agent_type": "worker",
        "runtime": "script",
        "repository": "/r",
        "base_branch": "main",
        "work_branch": "w",
        "sandbox_backend": "bwrap",
        "timeout_s": 60,
        "requested_by": "user:x",
    }
    with_network = old.objects.create(network=True, **fields).id
    without = old.objects.create(network=False, **fields).id

    executor = MigrationExecutor(connection)
    executor.migrate(after)

    assert Agent.objects.get(id=with_network).network == "on"
    assert Agent.objects.get(id=without).network == "off"
