"""The planner asks Claude (a real local Messages API server here) for a DAG and validates it."""

from taskqueue.models import Project
from tests.messages_server import error_reply, text_reply, tool_use_reply


def plan(*tasks: tuple[str, list[str]]):
    return tool_use_reply(
        [
            (
                "submit_plan",
                {
                    "name": "Add login",
                    "tasks": [
                        {
                            "key": key,
                            "title": f"Do {key}",
                            "instructions": f"Implement {key}.",
                            "depends_on": deps,
                        }
                        for key, deps in tasks
                    ],
                },
            )
        ]
    )


def test_planner_returns_a_validated_dag_that_can_be_submitted(api, messages_server, remote_repo):
    messages_server.script(
        plan(
            ("architect", []),
            ("backend", ["architect"]),
            ("frontend", ["architect"]),
            ("tests", ["backend", "frontend"]),
        )
    )

    response = api.post(
        "/api/v1/projects/plan",
        {"goal": "Add a login page", "repository": str(remote_repo)},
        format="json",
    )

    assert response.status_code == 200, response.content
    proposal = response.json()
    assert proposal["mode"] == "dag" and proposal["name"] == "Add login"
    assert [t["key"] for t in proposal["tasks"]] == ["architect", "backend", "frontend", "tests"]
    assert all(
        t["repository"] == str(remote_repo) and t["runtime"] == "claude" for t in proposal["tasks"]
    )
    request = messages_server.requests[0]["body"]
    assert request["tool_choice"] == {"type": "tool", "name": "submit_plan"}
    assert "Add a login page" in request["messages"][0]["content"]
    assert not Project.objects.exists()  # a proposal, not a project
    created = api.post("/api/v1/projects", proposal, format="json")
    assert created.status_code == 201, created.content
    created_id = created.json()["id"]
    Project.objects.filter(id=created_id).update(state="cancelled")  # no claude runs here


def test_an_invalid_proposal_is_sent_back_with_its_errors_once(api, messages_server, remote_repo):
    messages_server.script(plan(("a", ["b"]), ("b", ["a"])), plan(("a", []), ("b", ["a"])))

    response = api.post(
        "/api/v1/projects/plan", {"goal": "g", "repository": str(remote_repo)}, format="json"
    )

    assert response.status_code == 200, response.content
    assert [t["depends_on"] for t in response.json()["tasks"]] == [[], ["a"]]
    feedback = messages_server.requests[1]["body"]["messages"][-1]["content"][0]
    assert feedback["type"] == "tool_result" and feedback["is_error"] is True
    assert "dependency cycle: a → b → a" in feedback["content"]


def test_a_planner_that_keeps_proposing_invalid_plans_is_a_502_with_the_errors(
    api, messages_server, remote_repo
):
    messages_server.script(plan(("a", ["ghost"])), plan(("a", ["ghost"])))

    response = api.post(
        "/api/v1/projects/plan", {"goal": "g", "repository": str(remote_repo)}, format="json"
    )

    assert response.status_code == 502
    error = response.json()["error"]
    assert error["code"] == "planner_failed"
    assert error["fields"] == {"tasks[0].depends_on": ["unknown task key 'ghost'"]}


def test_planner_errors_are_reported_without_a_plan(api, messages_server, remote_repo):
    messages_server.script(error_reply(400, "bad request"), error_reply(400, "bad request"))
    first = api.post(
        "/api/v1/projects/plan", {"goal": "g", "repository": str(remote_repo)}, format="json"
    )
    messages_server.script(text_reply("I would rather chat"))
    second = api.post(
        "/api/v1/projects/plan", {"goal": "g", "repository": str(remote_repo)}, format="json"
    )

    assert first.status_code == 502 and "400" in first.json()["error"]["message"]
    assert second.status_code == 502
    assert second.json()["error"]["message"] == "the planner did not submit a plan"


def test_planning_needs_a_usable_repository(api):
    response = api.post(
        "/api/v1/projects/plan", {"goal": "g", "repository": "/no/such/repo"}, format="json"
    )
    assert response.status_code == 400
    assert "repository" in response.json()["error"]["fields"]
