"""``POST /api/v1/agents/{id}/retry``: a failed or killed agent starts again as a new agent.

The new agent has the old one's spec, is spawned through ``agent_spawn`` (so
the kill switch and the concurrency limit apply), names the old one in
``options.retry_of``, and belongs to whoever retried it. The last test runs
it end to end with the real worker: an agent fails because its repository
lacks a file, the file is pushed, and the retry completes.
"""

import pytest

from agents.models import Agent, AgentEvent, AgentState
from audit.models import AuditEvent
from killswitch.services import hub_halt
from tests.conftest import git, spawn_body, wait_for_state
from tests.dashboard.test_dashboard_operator import agent_stored

# The spec fields a retry copies; ``options`` is compared apart (it gains retry_of).
SPEC_FIELDS = (
    "task_id",
    "agent_type",
    "runtime",
    "script",
    "repository",
    "base_branch",
    "work_items",
    "skills",
    "instructions",
    "gate_profile",
    "sandbox_backend",
    "timeout_s",
    "network",
    "max_retries",
    "priority",
    "origin",
)


@pytest.fixture
def unserved(settings):
    """New agents go to a pool no worker serves: these tests read rows, nothing runs."""
    settings.FLOTILLA_NODE_POOL = "unserved"


def _failed(requested_by: str = "user:operator", **fields) -> Agent:
    state = fields.pop("state", AgentState.FAILED)
    spec = {
        "task_id": "retry-me",
        "runtime": "script",
        "script": "make test",
        "work_items": ["fix the build"],
        "skills": ["python"],
        "instructions": "make the tests pass",
        "gate_profile": "minimal",
        "network": "allowlist",
        "max_retries": 2,
        "priority": 8,
        "timeout_s": 90,
        "options": {
            "budget_usd": "2.50",
            "memory_mb": 256,
            "gates": {"tests": "pytest -q"},
            "allow_hosts": ["pypi.org:443"],
        },
        "error": "script exited with status 2",
        **fields,
    }
    return agent_stored(requested_by, state=state, **spec)


def _retry(api, agent_id, **kwargs):
    return api.post(f"/api/v1/agents/{agent_id}/retry", {}, format="json", **kwargs)


def test_retrying_a_failed_agent_starts_a_new_agent_with_the_same_spec(db, api, unserved):
    failed = _failed()

    response = _retry(api, failed.id)

    assert response.status_code == 202, response.content
    body = response.json()
    assert body["state"] == "queued" and body["retry_of"] == str(failed.id)
    retry = Agent.objects.get(id=body["agent_id"])
    assert retry.id != failed.id
    assert {f: getattr(retry, f) for f in SPEC_FIELDS} == {
        f: getattr(failed, f) for f in SPEC_FIELDS
    }
    assert retry.options == {**failed.options, "retry_of": str(failed.id)}
    assert (retry.requested_by, retry.work_branch) == ("user:operator", f"flotilla/{retry.id}")
    assert (retry.attempt, retry.cost_usd, retry.error) == (0, 0, "")
    # The old agent is left as it was, with a note naming its retry; the retry is audited.
    failed.refresh_from_db()
    assert failed.state == AgentState.FAILED
    note = AgentEvent.objects.filter(agent=failed, kind="log").last()
    assert note.data["retry"] == str(retry.id)
    audit = AuditEvent.objects.get(action="agent.retry")
    assert (audit.actor, audit.target) == ("user:operator", f"agent:{failed.id}")
    assert audit.data["retry_id"] == str(retry.id)


def test_a_killed_agent_may_be_retried_and_so_may_a_retry(db, api, unserved):
    killed = _failed(state=AgentState.KILLED, options={})

    first = Agent.objects.get(id=_retry(api, killed.id).json()["agent_id"])
    Agent.objects.filter(id=first.id).update(state=AgentState.FAILED)
    second = _retry(api, first.id)

    assert second.status_code == 202, second.content
    assert Agent.objects.get(id=second.json()["agent_id"]).options == {"retry_of": str(first.id)}


@pytest.mark.parametrize(
    "state",
    [
        AgentState.QUEUED,
        AgentState.RUNNING,
        AgentState.GATING,
        AgentState.PAUSED,
        AgentState.COMPLETED,
    ],
)
def test_an_agent_that_is_live_or_completed_is_not_retried(db, api, unserved, state):
    agent = _failed(state=state)

    response = _retry(api, agent.id)

    assert response.status_code == 409
    error = response.json()["error"]
    assert error["code"] == "not_retryable"
    assert str(agent.id) in error["message"]
    assert Agent.objects.count() == 1
    assert not AuditEvent.objects.filter(action="agent.retry").exists()


def test_another_users_agent_answers_404_and_a_bad_id_never_500(db, api, unserved):
    theirs = _failed("user:other")

    for agent_id in (theirs.id, "not-a-uuid", "00000000-0000-0000-0000-000000000000", "%00"):
        response = _retry(api, agent_id)
        assert response.status_code == 404, agent_id
        assert response.json()["error"]["code"] == "not_found"
    assert Agent.objects.count() == 1


def test_staff_may_retry_someone_elses_agent_and_the_retry_is_theirs(db, staff_api, unserved):
    theirs = _failed("user:other")

    response = _retry(staff_api, theirs.id)

    assert response.status_code == 202, response.content
    assert Agent.objects.get(id=response.json()["agent_id"]).requested_by == "user:admin"


def test_an_agent_a_peer_asked_for_or_runs_is_not_retried_here(db, staff_api, unserved):
    from_peer = _failed("peer:hub-b", origin="hub-b")
    on_peer = _failed("user:admin", sandbox_backend="remote", node="hub-c")

    for agent, named in ((from_peer, "hub-b"), (on_peer, "hub-c")):
        response = _retry(staff_api, agent.id)
        assert response.status_code == 409
        assert response.json()["error"]["code"] == "not_retryable"
        assert named in response.json()["error"]["message"]
    assert Agent.objects.count() == 2


def test_a_retry_is_refused_while_the_hub_is_halted_and_over_the_concurrency_limit(
    db, api, settings, unserved
):
    failed = _failed()
    hub_halt(reason="maintenance", actor="user:admin")

    halted = _retry(api, failed.id)

    assert halted.status_code == 409
    assert halted.json()["error"]["code"] == "spawn_refused"

    from killswitch.services import hub_release

    hub_release(actor="user:admin", reason="done")
    settings.MAX_CONCURRENT_AGENTS = 1
    agent_stored("user:operator", state=AgentState.RUNNING)
    full = _retry(api, failed.id)

    assert full.status_code == 429
    assert full.json()["error"]["code"] == "concurrency_limit"
    assert Agent.objects.count() == 2


def test_a_retry_sent_twice_with_one_idempotency_key_starts_one_agent(db, api, unserved):
    failed = _failed()

    first = _retry(api, failed.id, HTTP_IDEMPOTENCY_KEY="retry-1")
    again = _retry(api, failed.id, HTTP_IDEMPOTENCY_KEY="retry-1")

    assert first.status_code == again.status_code == 202
    assert again.headers["Idempotent-Replayed"] == "true"
    assert first.json() == again.json()
    assert Agent.objects.filter(options__retry_of=str(failed.id)).count() == 1


def test_a_body_that_is_not_an_object_is_a_400(db, api, unserved):
    failed = _failed()

    response = api.post(f"/api/v1/agents/{failed.id}/retry", [1, 2], format="json")

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid"


def test_an_agent_that_failed_on_its_repository_completes_when_retried_after_the_fix(
    hub, api, tmp_path
):
    from tests.conftest import make_remote

    remote = make_remote(tmp_path)
    script = "test -f ready.txt && echo 'retried and done' >> README.md"
    response = api.post("/api/v1/agents", spawn_body(remote, script), format="json")
    assert response.status_code == 202, response.content
    failed = wait_for_state(response.json()["agent_id"], AgentState.FAILED)

    # The repository gets what the agent needed; the same spec now succeeds.
    seed = tmp_path / "remote-seed"
    (seed / "ready.txt").write_text("yes\n")
    git(seed, "add", "ready.txt")
    git(seed, "commit", "--quiet", "-m", "ready")
    git(seed, "push", "--quiet", str(remote), "main")
    retried = _retry(api, failed.id)

    assert retried.status_code == 202, retried.content
    retry = wait_for_state(retried.json()["agent_id"], AgentState.COMPLETED, timeout=60)
    assert retry.script == failed.script and retry.options["retry_of"] == str(failed.id)
    assert "retried and done" in git(remote, "show", f"{retry.work_branch}:README.md")
    assert api.get(f"/api/v1/agents/{retry.id}").json()["state"] == "completed"
