"""The admin: agents, events and the audit trail, with a kill action through the kill switch."""

from django.test import Client

from agents.models import Agent, AgentState
from audit.models import AuditEvent
from tests.conftest import spawn_body, wait_for_state
from tests.test_killswitch import wait_until_output


def admin_client(staff_user) -> Client:
    client = Client()
    client.force_login(staff_user)
    return client


def test_the_kill_selected_agents_action_kills_through_the_kill_switch(
    hub, api, staff_user, remote_repo
):
    agent_id = api.post(
        "/api/v1/agents", spawn_body(remote_repo, "echo started; sleep 60"), format="json"
    ).json()["agent_id"]
    wait_until_output(agent_id, "started")

    response = admin_client(staff_user).post(
        "/admin/agents/agent/",
        {"action": "kill_selected_agents", "_selected_action": [agent_id]},
        follow=True,
    )

    assert response.status_code == 200
    assert b"Killed 1 of 1 agents." in response.content
    assert wait_for_state(agent_id, AgentState.KILLED).state == "killed"
    audit = AuditEvent.objects.get(action="agent.kill", target=f"agent:{agent_id}")
    assert audit.actor == "user:admin" and audit.reason == "killed from the admin"


def test_admin_lists_agents_with_filters_and_search(staff_user, api, remote_repo):
    api.post("/api/v1/agents", spawn_body(remote_repo, "true", task_id="findme"), format="json")
    client = admin_client(staff_user)

    listing = client.get("/admin/agents/agent/?q=findme&state__exact=queued")

    assert listing.status_code == 200
    assert b"findme" in listing.content
    agent = Agent.objects.get()
    assert client.get(f"/admin/agents/agent/{agent.id}/change/").status_code == 200


def test_the_audit_trail_is_read_only_in_the_admin(staff_user):
    event = AuditEvent.objects.create(actor="user:x", action="agent.kill", target="agent:1")
    client = admin_client(staff_user)

    assert client.get("/admin/audit/auditevent/").status_code == 200
    assert client.get("/admin/audit/auditevent/add/").status_code == 403
    client.post(f"/admin/audit/auditevent/{event.id}/delete/", {"post": "yes"})
    assert AuditEvent.objects.filter(id=event.id).exists()
