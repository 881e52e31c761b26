"""A project is validated before anything is stored: cycles, keys, sizes, bodies."""

import pytest

from taskqueue.graph import graph_find_cycle
from taskqueue.models import Project


def post(api, tasks, **fields):
    body = {"name": "p", "tasks": tasks, **fields}
    return api.post("/api/v1/projects", body, format="json")


def t(key: str, *deps: str, **fields) -> dict:
    return {"key": key, "script": "true", "depends_on": list(deps), **fields}


def test_a_cycle_is_rejected_with_the_cycle_named(api):
    response = post(api, [t("start"), t("a", "c", "start"), t("b", "a"), t("c", "b")])

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid"
    assert error["fields"]["tasks"] == ["dependency cycle: a → c → b → a"]
    assert "a → c → b → a" in error["message"]
    assert not Project.objects.exists()


def test_a_task_that_depends_on_itself_is_a_cycle(api):
    response = post(api, [t("solo", "solo")])

    assert response.json()["error"]["fields"]["tasks"] == ["dependency cycle: solo → solo"]


def test_unknown_dependencies_and_duplicate_keys_are_field_errors(api):
    response = post(api, [t("a"), t("b", "a", "ghost"), t("a")])

    assert response.status_code == 400
    fields = response.json()["error"]["fields"]
    assert fields == {
        "tasks[2].key": ["duplicate key 'a' (also tasks[0])"],
        "tasks[1].depends_on": ["unknown task key 'ghost'"],
    }


def test_a_project_over_the_task_limit_is_rejected(api, settings):
    settings.FLOTILLA_PROJECT_MAX_TASKS = 3

    response = post(api, [t(f"k{i}") for i in range(4)])

    assert response.status_code == 400
    assert response.json()["error"]["fields"] == {
        "tasks": ["a project has at most 3 tasks; this one has 4"]
    }


def test_bad_task_fields_are_reported_per_task(api):
    response = post(
        api, [t("ok"), {"key": "bad key!", "script": "true"}, {"key": "noscript", "priority": 11}]
    )

    assert response.status_code == 400
    assert response.json()["error"]["fields"] == {
        "tasks[1].key": ["1-64 letters, digits, _ or -, starting with a letter or digit"],
        "tasks[2].priority": ["Ensure this value is less than or equal to 10."],
    }


def test_sequential_and_parallel_projects_refuse_explicit_dependencies(api):
    response = post(api, [t("a"), t("b", "a")], mode="parallel")

    assert response.json()["error"]["fields"]["tasks[1].depends_on"] == [
        "a parallel project implies its dependencies; use mode 'dag' to name them"
    ]


def test_unknown_project_answers_404_as_json(api):
    for path in ("/api/v1/projects/999", "/api/v1/projects/999/result"):
        response = api.get(path)
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "not_found"


def test_cycle_search_handles_a_long_chain_without_recursion():
    edges = {str(i): [str(i + 1)] for i in range(20_000)}
    edges["20000"] = []
    assert graph_find_cycle(edges) == []
    edges["20000"] = ["0"]
    cycle = graph_find_cycle(edges)
    assert cycle[0] == cycle[-1] and len(cycle) == 20_002


@pytest.mark.parametrize("policy", ["fail-fast", "fail_fast", "continue"])
def test_failure_policy_accepts_both_spellings(api, policy):
    response = post(api, [t("a", script="true")], failure_policy=policy)
    assert response.status_code == 201, response.content
    assert response.json()["failure_policy"] == policy.replace("-", "_")


def test_admin_pages_list_projects_and_tasks(client, staff_user, api):
    project_id = post(api, [t("a"), t("b", "a")], paused=True).json()["id"]
    client.force_login(staff_user)

    for path in (
        "/admin/taskqueue/project/",
        f"/admin/taskqueue/project/{project_id}/change/",
        "/admin/taskqueue/task/",
    ):
        response = client.get(path)
        assert response.status_code == 200, path
    assert (
        b"webhook_secret"
        not in client.get(f"/admin/taskqueue/project/{project_id}/change/").content
    )


def test_a_project_created_paused_starts_nothing_until_resumed(api):
    created = post(api, [t("a")], paused=True)

    assert created.status_code == 201 and created.json()["state"] == "paused"
    assert created.json()["tasks"][0]["state"] == "pending"


def test_the_openapi_schema_describes_the_project_endpoints(api):
    schema = api.get("/api/v1/schema/?format=json")

    assert schema.status_code == 200
    paths = schema.json()["paths"]
    assert "/api/v1/projects/{project_id}/tasks/{key}/retry" in paths
    assert "/api/v1/projects/plan" in paths
