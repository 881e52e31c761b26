"""Idempotency-Key: a retried spawn or project create acts once and answers as the first time."""

import json
import threading
from datetime import timedelta

import pytest
from django.apps import apps
from django.contrib.auth import get_user_model
from django.db import connection
from django.utils import timezone
from django.utils.module_loading import import_string
from django_q.models import Schedule
from rest_framework.test import APIClient

from agents.idempotency import idempotent_requests_prune
from agents.models import Agent, IdempotentRequest
from taskqueue.models import Project
from tests.conftest import spawn_body

KEY = "retry-7f3a2c"


def spawn(client: APIClient, body, key: str = KEY):
    return client.post("/api/v1/agents", body, format="json", HTTP_IDEMPOTENCY_KEY=key)


def project_body(repository) -> dict:
    return {
        "name": "retried",
        "tasks": [{"key": "a", "script": "true", "repository": str(repository)}],
    }


def error_of(response) -> dict:
    body = response.json()
    assert set(body) == {"error"}, body
    return body["error"]


def client_of(user) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


def test_a_retried_spawn_with_the_same_key_creates_one_agent_and_gets_the_first_answer(
    api, remote_repo
):
    body = spawn_body(remote_repo, "true")

    first = spawn(api, body)
    retry = spawn(api, body)

    assert first.status_code == retry.status_code == 202
    assert retry.content == first.content
    assert retry["Idempotent-Replayed"] == "true" and not first.has_header("Idempotent-Replayed")
    assert [str(agent.id) for agent in Agent.objects.all()] == [first.json()["agent_id"]]


def test_the_body_is_compared_as_canonical_json_so_key_order_and_spacing_do_not_matter(
    api, remote_repo
):
    body = spawn_body(remote_repo, "true")
    reordered = json.dumps(dict(reversed(list(body.items()))), indent=3)

    first = api.post(
        "/api/v1/agents",
        json.dumps(body),
        content_type="application/json",
        HTTP_IDEMPOTENCY_KEY=KEY,
    )
    retry = api.post(
        "/api/v1/agents", reordered, content_type="application/json", HTTP_IDEMPOTENCY_KEY=KEY
    )

    assert retry.status_code == 202 and retry.json() == first.json()
    assert Agent.objects.count() == 1


def test_the_same_key_with_another_body_is_refused_with_409_and_creates_nothing(api, remote_repo):
    spawn(api, spawn_body(remote_repo, "true"))

    response = spawn(api, spawn_body(remote_repo, "echo another script"))

    assert response.status_code == 409
    error = error_of(response)
    assert error["code"] == "idempotency_key_reused"
    assert "another request body" in error["message"] and "Idempotency-Key" in error["fields"]
    assert Agent.objects.count() == 1


def test_another_user_with_the_same_key_gets_an_agent_of_their_own(api, user, remote_repo):
    other = get_user_model().objects.create_user("other", password="other-password")
    body = spawn_body(remote_repo, "true")

    mine = spawn(api, body)
    theirs = spawn(client_of(other), body)

    assert mine.status_code == theirs.status_code == 202
    assert not theirs.has_header("Idempotent-Replayed")
    assert mine.json()["agent_id"] != theirs.json()["agent_id"]
    assert sorted(Agent.objects.values_list("requested_by", flat=True)) == [
        "user:operator",
        "user:other",
    ]


def test_two_concurrent_spawns_with_one_key_create_exactly_one_agent(
    transactional_db, user, remote_repo
):
    body = spawn_body(remote_repo, "true")
    start = threading.Barrier(2)
    responses = []

    def send() -> None:
        client = client_of(user)
        start.wait()
        try:
            responses.append(spawn(client, body))
        finally:
            connection.close()

    threads = [threading.Thread(target=send) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert Agent.objects.count() == 1
    statuses = sorted(response.status_code for response in responses)
    assert statuses in ([202, 202], [202, 409])
    for response in responses:
        if response.status_code == 409:
            assert error_of(response)["code"] == "idempotency_key_in_progress"
        else:
            assert response.json()["agent_id"] == str(Agent.objects.get().id)


def test_a_refused_spawn_gives_its_key_back_so_the_corrected_retry_acts(api, remote_repo):
    refused = spawn(api, spawn_body(remote_repo, "   "))
    assert refused.status_code == 400

    accepted = spawn(api, spawn_body(remote_repo, "true"))

    assert accepted.status_code == 202 and not accepted.has_header("Idempotent-Replayed")
    assert Agent.objects.count() == 1


def test_a_retried_project_create_creates_one_project(api, remote_repo):
    body = project_body(remote_repo)

    first = api.post("/api/v1/projects", body, format="json", HTTP_IDEMPOTENCY_KEY=KEY)
    retry = api.post("/api/v1/projects", body, format="json", HTTP_IDEMPOTENCY_KEY=KEY)

    assert first.status_code == retry.status_code == 201
    assert retry.content == first.content and retry["Idempotent-Replayed"] == "true"
    assert Project.objects.count() == 1


def test_a_key_used_for_a_spawn_is_refused_for_a_project(api, remote_repo):
    spawn(api, spawn_body(remote_repo, "true"))

    response = api.post(
        "/api/v1/projects", project_body(remote_repo), format="json", HTTP_IDEMPOTENCY_KEY=KEY
    )

    assert response.status_code == 409
    assert "POST /api/v1/agents" in error_of(response)["message"]
    assert Project.objects.count() == 0


@pytest.mark.parametrize("key", ["", "x" * 256, "clé", "tab\there", '""'])
def test_a_malformed_key_is_refused_with_400_and_creates_nothing(api, remote_repo, key):
    response = spawn(api, spawn_body(remote_repo, "true"), key=key)

    assert response.status_code == 400
    assert error_of(response)["code"] == "invalid_idempotency_key"
    assert Agent.objects.count() == 0


def test_a_quoted_key_and_a_bare_key_of_255_characters_are_the_same_key(api, remote_repo):
    key = "k" * 255
    body = spawn_body(remote_repo, "true")

    first = spawn(api, body, key=key)
    retry = spawn(api, body, key=f'"{key}"')

    assert first.status_code == 202 and retry["Idempotent-Replayed"] == "true"
    assert Agent.objects.count() == 1


def test_a_spawn_without_a_key_is_not_deduplicated(api, remote_repo):
    body = spawn_body(remote_repo, "true")

    api.post("/api/v1/agents", body, format="json")
    api.post("/api/v1/agents", body, format="json")

    assert Agent.objects.count() == 2 and IdempotentRequest.objects.count() == 0


def test_an_expired_key_acts_again_and_expired_keys_are_pruned(api, remote_repo, settings):
    body = spawn_body(remote_repo, "true")
    spawn(api, body)
    expired = timezone.now() - timedelta(seconds=settings.FLOTILLA_IDEMPOTENCY_TTL_S + 1)
    IdempotentRequest.objects.update(created_at=expired)

    again = spawn(api, body)

    assert again.status_code == 202 and not again.has_header("Idempotent-Replayed")
    assert Agent.objects.count() == 2
    IdempotentRequest.objects.update(created_at=expired)
    assert idempotent_requests_prune() == 1
    assert IdempotentRequest.objects.count() == 0


def test_migrate_creates_the_schedule_that_prunes_expired_keys(db):
    # The test database was migrated at session start, but a transactional
    # test may have flushed it since; run the migration's own step again.
    migration = import_string("agents.migrations.0006_idempotent_request.create_prune_schedule")
    migration(apps, None)

    schedule = Schedule.objects.get(name="flotilla-idempotency-prune")

    assert import_string(schedule.func) is idempotent_requests_prune
    assert schedule.repeats == -1 and schedule.schedule_type == Schedule.HOURLY


def test_the_schema_documents_the_header_on_both_creating_operations(api):
    paths = api.get("/api/v1/schema/?format=json").json()["paths"]

    for path in ("/api/v1/agents", "/api/v1/projects"):
        names = [parameter["name"] for parameter in paths[path]["post"]["parameters"]]
        assert "Idempotency-Key" in names
