"""The projects pages over HTTP and their live streams over WebSockets, against a real daphne."""

import json

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from rest_framework.test import APIClient
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from audit.models import AuditEvent
from taskqueue.models import Project, Task


def _client(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def _api(user) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


def _create(user, repository, **fields) -> dict:
    """A paused DAG project (nothing runs until it is resumed): a → b, a → c, (a, b, c) → d."""
    tasks = [
        {"key": "a", "script": "true", "repository": str(repository)},
        {"key": "b", "script": "true", "repository": str(repository), "depends_on": ["a"]},
        {"key": "c", "script": "true", "repository": str(repository), "depends_on": ["a"]},
        {
            "key": "d",
            "script": "true",
            "repository": str(repository),
            "depends_on": ["b", "c", "a"],
        },
    ]
    body = {"name": "diamond", "mode": "dag", "paused": True, "tasks": tasks, **fields}
    response = _api(user).post("/api/v1/projects", body, format="json")
    assert response.status_code == 201, response.content
    return response.json()


@pytest.fixture
def stranger(db):
    return get_user_model().objects.create_user("stranger", password="stranger-password")


def test_the_projects_page_lists_a_project_and_its_page_carries_the_task_graph(
    db, user, remote_repo
):
    project = _create(user, remote_repo)
    client = _client(user)

    board = client.get("/dashboard/projects/").content.decode()
    detail = client.get(f"/dashboard/projects/{project['id']}/")

    assert f'data-project-id="{project["id"]}" data-state="paused"' in board
    assert 'href="/dashboard/projects/"' in client.get("/dashboard/").content.decode()
    assert detail.status_code == 200
    assert "script-src 'self'" in detail["Content-Security-Policy"]
    tasks = detail.context["tasks"]
    assert {task["key"]: sorted(task["depends_on"]) for task in tasks} == {
        "a": [],
        "b": ["a"],
        "c": ["a"],
        "d": ["a", "b", "c"],
    }
    html = detail.content.decode()
    assert 'id="project-tasks" type="application/json"' in html
    assert f'data-stream="/ws/dashboard/projects/{project["id"]}/"' in html
    assert 'data-action="resume-project"' in html and 'data-action="cancel-project"' in html


def test_an_unknown_project_is_a_404_and_an_anonymous_visitor_is_sent_to_login(db, user):
    assert _client(user).get("/dashboard/projects/999999/").status_code == 404
    for path in ["/dashboard/projects/", "/dashboard/projects/1/"]:
        response = Client().get(path)
        assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")


def test_only_staff_and_the_creator_may_pause_resume_or_cancel_a_project(
    db, user, staff_user, stranger, remote_repo
):
    project = _create(user, remote_repo)
    url = f"/dashboard/projects/{project['id']}"
    outsider = _client(stranger)

    # Someone else's project is not there for them (404, not 403: its id does not leak).
    assert outsider.get(f"{url}/").status_code == 404
    for action in ["resume", "cancel", "pause"]:
        assert outsider.post(f"{url}/{action}", {"reason": "mine now"}).status_code == 404
        api_path = f"/api/v1/projects/{project['id']}/{action}"
        refused = _api(stranger).post(api_path, {}, format="json")
        assert refused.status_code == 404 and refused.json()["error"]["code"] == "not_found"
    assert Project.objects.get(id=project["id"]).state == "paused"
    assert not AuditEvent.objects.filter(target=f"project:{project['id']}", actor="user:stranger")

    owner = _client(user)
    json_accept = {"HTTP_ACCEPT": "application/json"}
    assert owner.post(f"{url}/pause", **json_accept).status_code == 409  # already paused
    resumed = owner.post(f"{url}/resume", **json_accept)
    assert resumed.status_code == 200 and resumed.json()["state"] == "running"
    assert owner.post(f"{url}/pause").status_code == 302
    assert Project.objects.get(id=project["id"]).state == "paused"

    response = _client(staff_user).post(f"{url}/cancel", {"reason": "superseded"}, **json_accept)

    assert response.json() == {"id": project["id"], "state": "cancelled"}
    assert set(Task.objects.filter(project_id=project["id"]).values_list("state", flat=True)) == {
        "cancelled"
    }
    cancel = AuditEvent.objects.get(action="project.cancel", target=f"project:{project['id']}")
    assert (cancel.actor, cancel.reason) == ("user:admin", "superseded")


def test_project_actions_need_the_csrf_token(db, user, remote_repo):
    project = _create(user, remote_repo)
    strict = Client(enforce_csrf_checks=True)
    strict.force_login(user)

    assert strict.post(f"/dashboard/projects/{project['id']}/cancel").status_code == 403
    assert Project.objects.get(id=project["id"]).state == "paused"


# --- WebSockets against the real daphne process --------------------------------------------


def _socket(web, user, path: str, origin: str | None = None):
    cookie = f"sessionid={_client(user).cookies['sessionid'].value}"
    url = web.url.replace("http://", "ws://") + path
    return connect(url, origin=origin or web.url, additional_headers={"Cookie": cookie})


def _frame(socket) -> dict:
    return json.loads(socket.recv(timeout=5))


def test_a_project_stream_sends_the_whole_state_then_only_what_changed(
    transactional_db, user, web, remote_repo
):
    project = _create(user, remote_repo)

    with _socket(web, user, f"/ws/dashboard/projects/{project['id']}/") as socket:
        first = _frame(socket)
        Task.objects.filter(project_id=project["id"], key="a").update(state="succeeded")
        change = _frame(socket)

    assert first["type"] == "snapshot"
    states = {key: task["state"] for key, task in first["sections"]["tasks"].items()}
    assert states == dict.fromkeys("abcd", "pending")
    (row,) = first["sections"]["project"].values()
    assert (row["state"], row["progress"]["finished"], row["progress"]["total"]) == ("paused", 0, 4)
    assert change["type"] == "delta" and change["version"] == first["version"] + 1
    assert list(change["sections"]["tasks"]) == ["a"]
    assert change["sections"]["tasks"]["a"]["state"] == "succeeded"
    (row,) = change["sections"]["project"].values()
    assert row["progress"]["finished"] == 1


def test_the_projects_list_stream_shows_a_new_project(transactional_db, user, web, remote_repo):
    with _socket(web, user, "/ws/dashboard/projects/") as socket:
        first = _frame(socket)
        project = _create(user, remote_repo, name="appears")
        change = _frame(socket)

    assert str(project["id"]) not in first["sections"]["projects"]
    row = change["sections"]["projects"][str(project["id"])]
    assert (row["name"], row["state"], row["task_count"]) == ("appears", "paused", 4)


def test_project_streams_refuse_foreign_origins_strangers_to_login_and_unknown_projects(
    transactional_db, user, web
):
    with pytest.raises(InvalidStatus) as foreign:
        _socket(web, user, "/ws/dashboard/projects/", origin="http://evil.example")
    assert foreign.value.response.status_code == 403
    with pytest.raises(InvalidStatus) as anonymous:
        connect(web.url.replace("http://", "ws://") + "/ws/dashboard/projects/", origin=web.url)
    assert anonymous.value.response.status_code == 403
    with pytest.raises(InvalidStatus) as unknown:
        _socket(web, user, "/ws/dashboard/projects/999999/")
    assert unknown.value.response.status_code == 403
