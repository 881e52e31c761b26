"""The REST API: authentication, validation, and JSON errors for every bad input."""

import json
import uuid

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from agents.models import Agent
from tests.conftest import spawn_body


def error_fields(response) -> dict:
    body = response.json()
    assert set(body) == {"error"}, body
    return body["error"].get("fields", {})


def test_requests_without_a_token_get_401_as_json(db):
    response = APIClient().get("/api/v1/agents")

    assert response.status_code == 401
    assert response.json()["error"]["code"] == "not_authenticated"


def test_a_drf_token_authenticates(user):
    token = Token.objects.create(user=user)
    client = APIClient(HTTP_AUTHORIZATION=f"Token {token.key}")

    assert client.get("/api/v1/agents").status_code == 200
    assert APIClient(HTTP_AUTHORIZATION="Token wrong").get("/api/v1/agents").status_code == 401


@pytest.mark.parametrize(
    "path", ["/api/v1/agents/kill-all", "/api/v1/killswitch/halt", "/api/v1/killswitch/release"]
)
def test_staff_only_operations_are_refused_to_other_users_with_403(api, path):
    response = api.post(path, {"reason": "try"}, format="json")

    assert response.status_code == 403
    assert response.json()["error"]["code"] == "permission_denied"


def test_kill_all_and_kill_require_a_reason(api, staff_api):
    assert "reason" in error_fields(staff_api.post("/api/v1/agents/kill-all", {}, format="json"))
    response = api.post(f"/api/v1/agents/{uuid.uuid4()}/kill", {}, format="json")
    assert response.status_code == 400 and "reason" in error_fields(response)


def test_unknown_agents_get_404(api):
    for path in (
        f"/api/v1/agents/{uuid.uuid4()}",
        "/api/v1/agents/not-a-uuid",
        f"/api/v1/agents/{uuid.uuid4()}/events",
    ):
        response = api.get(path)
        assert response.status_code == 404, path
        assert response.json()["error"]["code"] == "not_found"
    killed = api.post(f"/api/v1/agents/{uuid.uuid4()}/kill", {"reason": "x"}, format="json")
    assert killed.status_code == 404


def test_unknown_api_paths_get_a_json_404(api):
    response = api.get("/api/v1/no-such-thing")

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"runtime": "perl"}, "runtime"),
        ({"script": ""}, "script"),
        ({"context": {"repository": "/no/such/repository"}}, "context.repository"),
        ({"context": {"repository": "ftp://example.com/repo.git"}}, "context.repository"),
        ({"options": {"timeout_s": -5}}, "options.timeout_s"),
        ({"options": {"sandbox": "process"}}, "options.sandbox"),
        ({"task_id": "../escape"}, "task_id"),
        ({"agent_type": "boss"}, "agent_type"),
        ({"context": {"repository": "REPO", "branch": "a..b"}}, "context.branch"),
        ({"context": "not an object"}, "context.non_field_errors"),
    ],
)
def test_bad_spawn_bodies_get_400_with_field_errors(api, remote_repo, change, field):
    body = spawn_body(remote_repo, "true")
    if isinstance(change.get("context"), dict):
        change["context"] = {
            key: str(remote_repo) if value == "REPO" else value
            for key, value in change["context"].items()
        }
    body.update(change)

    response = api.post("/api/v1/agents", body, format="json")

    assert response.status_code == 400, response.content
    assert field in error_fields(response), response.json()
    assert not Agent.objects.exists()


def test_a_repository_path_that_is_not_git_is_refused(api, tmp_path):
    response = api.post("/api/v1/agents", spawn_body(tmp_path, "true"), format="json")

    assert response.status_code == 400
    assert "not a git repository" in error_fields(response)["context.repository"][0]


def test_malformed_json_gets_400_not_500(api):
    response = api.generic("POST", "/api/v1/agents", "{not json", content_type="application/json")

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "parse_error"


def test_spawns_over_the_concurrency_limit_get_429(api, remote_repo, settings):
    settings.MAX_CONCURRENT_AGENTS = 2
    for _ in range(2):
        assert (
            api.post("/api/v1/agents", spawn_body(remote_repo, "true"), format="json").status_code
            == 202
        )

    response = api.post("/api/v1/agents", spawn_body(remote_repo, "true"), format="json")

    assert response.status_code == 429
    assert response.json()["error"]["code"] == "concurrency_limit"
    assert Agent.objects.count() == 2


def test_an_agent_reads_with_the_documented_fields(api, remote_repo):
    agent_id = api.post("/api/v1/agents", spawn_body(remote_repo, "true"), format="json").json()[
        "agent_id"
    ]

    body = api.get(f"/api/v1/agents/{agent_id}").json()

    documented = {
        "id",
        "state",
        "progress",
        "agent_type",
        "runtime",
        "repository",
        "branch",
        "work_branch",
        "node",
        "origin",
        "error",
        "result",
        "created_at",
        "started_at",
        "finished_at",
    }
    assert documented <= set(body)
    assert body["state"] == "queued" and body["work_branch"] == f"flotilla/{agent_id}"
    assert body["repository"] == str(remote_repo)


def test_agents_list_filters_by_state_and_paginates(api, remote_repo):
    for _ in range(3):
        api.post("/api/v1/agents", spawn_body(remote_repo, "true"), format="json")

    page = api.get("/api/v1/agents?limit=2").json()
    assert page["count"] == 3 and len(page["results"]) == 2
    assert api.get("/api/v1/agents?state=completed").json()["count"] == 0
    assert api.get("/api/v1/agents?limit=abc").status_code in (200, 400)


def test_health_is_open_and_reports_the_hub(db):
    body = APIClient().get("/api/v1/health").json()

    assert body["status"] == "ok" and body["halted"] is False and body["yolo_mode"] is False


def test_openapi_schema_and_docs_are_served(api):
    schema = api.get("/api/v1/schema/?format=json")
    assert schema.status_code == 200
    paths = json.loads(schema.content)["paths"]
    assert {
        "/api/v1/agents",
        "/api/v1/agents/{agent_id}/kill",
        "/api/v1/agents/kill-all",
        "/api/v1/killswitch/halt",
        "/api/v1/health",
    } <= set(paths)
    assert api.get("/api/v1/docs/").status_code == 200


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)


@hypothesis_settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    body=st.dictionaries(
        st.sampled_from(["task_id", "agent_type", "runtime", "script", "context", "options", "x"]),
        json_values,
        max_size=6,
    )
)
def test_no_spawn_body_produces_a_500(api, body):
    response = api.post("/api/v1/agents", body, format="json")

    assert response.status_code in (202, 400), response.content
    assert "error" in response.json() or response.status_code == 202


def test_an_unreachable_database_gets_a_json_503_not_a_500(transactional_db, user):
    from django.db import connection

    client = APIClient()
    client.force_authenticate(user)
    saved = dict(connection.settings_dict)
    connection.close()
    if connection.vendor == "sqlite":
        connection.settings_dict["NAME"] = "/nonexistent/flotilla/db.sqlite3"
    else:
        connection.settings_dict["PORT"] = "1"
    try:
        response = client.get("/api/v1/agents")
    finally:
        connection.close()
        connection.settings_dict.update(saved)

    assert response.status_code == 503
    assert response.json()["error"]["code"] == "unavailable"
    assert response["Retry-After"] == "1"
