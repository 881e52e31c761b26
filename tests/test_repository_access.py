"""Repositories a request may name: local ones below the operator's roots, remote ones public.

The tests' roots are the temporary directory (settings_test), where
``remote_repo`` lives; the hub's own source is outside it. Each refusal is
checked where a request names the repository (the spawn API, projects, the
planner, the CLI) and again where the hub's git would reach it (a fetch),
with a real HTTP server that records whether git ever asked it anything.
"""

import pytest
from django.core.management import CommandError, call_command

from agents import workspace
from agents.workspace import WorkspaceError
from tests.conftest import ROOT, spawn_body

LONG_PATH = "/" + "a" * 999  # one file name longer than any file system allows


def spawn(api, repository) -> dict:
    response = api.post("/api/v1/agents", spawn_body(repository, "true"), format="json")
    return {"status": response.status_code, "body": response.json()}


def repository_error(answer: dict) -> str:
    return answer["body"]["error"]["fields"]["context.repository"][0]


def test_a_repository_below_a_root_is_accepted(api, remote_repo):
    assert spawn(api, remote_repo)["status"] == 202


def test_the_hubs_own_source_cannot_be_named_as_a_repository(api):
    answer = spawn(api, ROOT)

    assert answer["status"] == 400
    assert "FLOTILLA_LOCAL_REPOSITORY_ROOTS" in repository_error(answer)


def test_a_link_below_a_root_to_a_repository_outside_it_is_refused(api, tmp_path):
    link = tmp_path / "innocent.git"
    link.symlink_to(ROOT)

    answer = spawn(api, link)

    assert answer["status"] == 400
    assert "FLOTILLA_LOCAL_REPOSITORY_ROOTS" in repository_error(answer)


def test_no_local_repository_is_accepted_when_the_operator_names_no_root(
    api, remote_repo, settings
):
    settings.FLOTILLA_LOCAL_REPOSITORY_ROOTS = ()

    assert spawn(api, remote_repo)["status"] == 400


def test_a_relative_path_is_refused(api):
    assert "absolute path" in repository_error(spawn(api, "agents"))


def test_a_project_task_on_the_hubs_own_source_is_refused(api):
    body = {"name": "p", "tasks": [{"key": "a", "script": "true", "repository": str(ROOT)}]}

    response = api.post("/api/v1/projects", body, format="json")

    assert response.status_code == 400
    assert "tasks[0].repository" in response.json()["error"]["fields"]


def test_the_spawn_command_refuses_the_hubs_own_source(db):
    with pytest.raises(CommandError, match="FLOTILLA_LOCAL_REPOSITORY_ROOTS"):
        call_command("spawn", str(ROOT), "true")


def test_the_hub_fetches_no_local_repository_outside_the_roots():
    with pytest.raises(WorkspaceError, match="FLOTILLA_LOCAL_REPOSITORY_ROOTS"):
        workspace.mirror_sync(str(ROOT))

    assert not workspace.mirror_path(str(ROOT)).exists()


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/v1/agents", spawn_body(LONG_PATH, "true")),
        ("/api/v1/projects", {"name": "p", "tasks": [{"key": "a", "repository": LONG_PATH}]}),
        ("/api/v1/projects/plan", {"goal": "g", "repository": LONG_PATH}),
    ],
)
def test_a_repository_path_too_long_for_the_file_system_is_a_400(api, path, body):
    response = api.post(path, body, format="json")

    assert response.status_code == 400, response.content
    assert response.json()["error"]["code"]


def test_a_repository_url_on_loopback_is_refused(guarded, api, server):
    git_server = server()

    answer = spawn(api, f"{git_server.url}/repo.git")

    assert answer["status"] == 400
    assert "loopback" in repository_error(answer)


def test_the_hub_fetches_nothing_from_a_repository_url_on_loopback(guarded, server):
    git_server = server()

    with pytest.raises(WorkspaceError, match="loopback"):
        workspace.mirror_sync(f"{git_server.url}/repo.git")

    assert git_server.requests == []


def test_git_follows_no_redirect_from_a_repository_host(server):
    elsewhere = server()
    redirecting = server(301, {"Location": elsewhere.url + "/repo.git/info/refs"})

    with pytest.raises(WorkspaceError):
        workspace.mirror_sync(f"{redirecting.url}/repo.git")

    assert redirecting.requests and elsewhere.requests == []


def test_git_connects_to_the_address_the_guard_vetted(guarded, server, resolver):
    git_server = server(404)
    # The system resolver knows no such name: git can only reach the pinned address.
    resolver["git.example.test"] = ["127.0.0.1"]
    guarded.FLOTILLA_PRIVATE_URL_ALLOWLIST = (f"git.example.test:{git_server.port}",)

    with pytest.raises(WorkspaceError):
        workspace.mirror_sync(f"http://git.example.test:{git_server.port}/repo.git")

    assert git_server.requests[0]["host"] == f"git.example.test:{git_server.port}"


@pytest.mark.parametrize(
    "repository",
    ["http://[::1/repo.git", "https://[zz]/repo.git", "ssh://host:99999/repo.git", "git@-oX=y:z"],
)
def test_a_malformed_repository_url_is_a_400_that_says_why(api, repository):
    answer = spawn(api, repository)

    assert answer["status"] == 400
    assert repository_error(answer)
