"""Projects run end to end: API → dispatcher → django-q2 → real script agents → git branches."""

import subprocess
import time

import pytest
from django_q.models import Success

from agents.models import Agent
from taskqueue.models import Project, Task, TaskAttempt
from tests.conftest import git, wait_until

FINISHED = {"succeeded", "failed", "cancelled"}


def task(key: str, script: str, repository, **fields) -> dict:
    return {"key": key, "script": script, "repository": str(repository), **fields}


def create(api, tasks: list[dict], **fields) -> dict:
    body = {"name": fields.pop("name", "project"), "tasks": tasks, **fields}
    response = api.post("/api/v1/projects", body, format="json")
    assert response.status_code == 201, response.content
    return response.json()


def wait_for_project(project_id: int, states=FINISHED, timeout: float = 60.0) -> Project:
    wanted = {states} if isinstance(states, str) else set(states)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        project = Project.objects.get(id=project_id)
        if project.state in wanted:
            return project
        time.sleep(0.05)
    states_now = dict(Task.objects.filter(project_id=project_id).values_list("key", "state"))
    raise AssertionError(f"project {project_id} still {project.state}: {states_now}")


def agents_of(project_id: int) -> dict[str, list[Agent]]:
    """Each task's agents, oldest attempt first."""
    runs: dict[str, list[Agent]] = {}
    for attempt in (
        TaskAttempt.objects.filter(task__project_id=project_id)
        .select_related("task", "agent")
        .order_by("task_id", "number")
    ):
        runs.setdefault(attempt.task.key, []).append(attempt.agent)
    return runs


def last_agent(project_id: int) -> dict[str, Agent]:
    return {key: agents[-1] for key, agents in agents_of(project_id).items()}


def pushed(agent: Agent) -> str:
    return agent.result["pushed_commit"]


def is_ancestor(repository, ancestor: str, descendant: str) -> bool:
    """Whether ``ancestor`` is an ancestor of ``descendant``; a git error fails the test."""
    done = subprocess.run(
        ["git", "merge-base", "--is-ancestor", ancestor, descendant],
        cwd=repository,
        capture_output=True,
        text=True,
    )
    # 0: an ancestor, 1: not one; anything else is git failing (an unknown commit, say).
    assert done.returncode in (0, 1), f"git merge-base failed: {done.stderr}"
    return done.returncode == 0


def test_an_ancestry_check_fails_on_a_git_error_instead_of_answering_no(remote_repo):
    with pytest.raises(AssertionError, match="merge-base"):
        is_ancestor(remote_repo, "0" * 40, "main")


def test_sequential_project_runs_each_task_after_the_previous_one_on_its_branch(
    hub, api, remote_repo
):
    tasks = [task(key, f"echo {key} > {key}.txt", remote_repo) for key in ("a", "b", "c")]
    project = create(api, tasks, mode="sequential")
    assert project["state"] in {"pending", "running"}
    assert [t["depends_on"] for t in project["tasks"]] == [[], ["a"], ["b"]]

    assert wait_for_project(project["id"]).state == "succeeded"

    agents = last_agent(project["id"])
    assert agents["b"].started_at >= agents["a"].finished_at
    assert agents["c"].started_at >= agents["b"].finished_at
    assert is_ancestor(remote_repo, pushed(agents["a"]), pushed(agents["b"]))
    assert is_ancestor(remote_repo, pushed(agents["b"]), pushed(agents["c"]))
    # The last branch holds every task's work.
    branch = agents["c"].work_branch
    assert git(remote_repo, "show", f"{branch}:a.txt") == "a"
    assert git(remote_repo, "show", f"{branch}:c.txt") == "c"
    detail = api.get(f"/api/v1/projects/{project['id']}").json()
    assert detail["progress"]["percent"] == 100
    assert {t["state"] for t in detail["tasks"]} == {"succeeded"}


def test_parallel_project_runs_its_tasks_at_the_same_time_on_separate_branches(
    hub, api, remote_repo
):
    tasks = [task(key, f"sleep 2; echo {key} > {key}.txt", remote_repo) for key in "xyz"]
    project = create(api, tasks, mode="parallel")

    assert wait_for_project(project["id"]).state == "succeeded"

    agents = last_agent(project["id"])
    assert max(a.started_at for a in agents.values()) < min(a.finished_at for a in agents.values())
    for one in agents.values():
        for other in agents.values():
            if one is not other:
                assert not is_ancestor(remote_repo, pushed(one), pushed(other))


def test_dag_project_starts_a_task_only_after_all_its_dependencies_with_their_work_merged(
    hub, api, remote_repo
):
    tasks = [
        task("architect", "echo plan > plan.txt", remote_repo),
        task("backend", "sleep 1; echo api > api.txt", remote_repo, depends_on=["architect"]),
        task("frontend", "sleep 1; echo ui > ui.txt", remote_repo, depends_on=["architect"]),
        task(
            "tests",
            "cat plan.txt api.txt ui.txt > all.txt",
            remote_repo,
            depends_on=["backend", "frontend"],
        ),
    ]
    project = create(api, tasks, mode="dag")

    assert wait_for_project(project["id"]).state == "succeeded"

    agents = last_agent(project["id"])
    for key in ("backend", "frontend"):
        assert agents[key].started_at >= agents["architect"].finished_at
        assert agents["tests"].started_at >= agents[key].finished_at
        assert is_ancestor(remote_repo, pushed(agents[key]), pushed(agents["tests"]))
    assert agents["backend"].started_at < agents["frontend"].finished_at
    assert agents["frontend"].started_at < agents["backend"].finished_at
    assert agents["tests"].base_branch == f"flotilla/project-{project['id']}/tests"
    assert git(remote_repo, "show", f"{agents['tests'].work_branch}:all.txt") == "plan\napi\nui"


def test_ready_tasks_go_out_highest_priority_first_within_max_parallel(hub, api, remote_repo):
    tasks = [
        task(f"p{priority}", "true", remote_repo, priority=priority) for priority in (1, 10, 5, 7)
    ]
    project = create(api, tasks, mode="parallel", max_parallel=1)

    assert wait_for_project(project["id"]).state == "succeeded"

    agents = sorted(last_agent(project["id"]).items(), key=lambda item: item[1].started_at)
    assert [key for key, _ in agents] == ["p10", "p7", "p5", "p1"]
    for (_, earlier), (_, later) in zip(agents, agents[1:], strict=False):
        assert later.started_at >= earlier.finished_at


def test_flaky_task_succeeds_on_its_third_attempt_after_exponential_backoffs(hub, api, remote_repo):
    flaky = task(
        "flaky",
        '[ "$FLOTILLA_TASK_ATTEMPT" -ge 3 ] || exit 7; echo ok > ok.txt',
        remote_repo,
        max_retries=4,
        backoff_base_s=1.0,
        backoff_cap_s=30,
        backoff_jitter=0.25,
    )
    project = create(api, [flaky])

    assert wait_for_project(project["id"]).state == "succeeded"

    attempts = list(
        TaskAttempt.objects.filter(task__project_id=project["id"])
        .select_related("agent")
        .order_by("number")
    )
    assert [a.state for a in attempts] == ["failed", "failed", "succeeded"]
    assert "status 7" in attempts[0].error
    assert Task.objects.get(project_id=project["id"]).attempts == 3
    for attempt, policy in zip(attempts, (1.0, 2.0), strict=False):
        assert policy * 0.75 <= attempt.backoff_s <= policy
    for earlier, later in zip(attempts, attempts[1:], strict=False):
        gap = (later.agent.created_at - earlier.agent.finished_at).total_seconds()
        # Never before its backoff; how soon after is a benchmark figure (bench/taskqueue.py).
        assert earlier.backoff_s <= gap, (gap, earlier.backoff_s)


def test_task_that_always_fails_skips_its_dependents_and_the_rest_goes_on(hub, api, remote_repo):
    tasks = [
        task("broken", "exit 1", remote_repo, max_retries=1, backoff_base_s=0.2),
        task("after", "true", remote_repo, depends_on=["broken"]),
        task("after-after", "true", remote_repo, depends_on=["after"]),
        task("independent", "echo fine > fine.txt", remote_repo),
    ]
    project = create(api, tasks, failure_policy="continue")

    assert wait_for_project(project["id"]).state == "failed"

    states = dict(Task.objects.filter(project_id=project["id"]).values_list("key", "state"))
    assert states == {
        "broken": "failed",
        "after": "skipped",
        "after-after": "skipped",
        "independent": "succeeded",
    }
    assert Task.objects.get(project_id=project["id"], key="broken").attempts == 2
    assert not TaskAttempt.objects.filter(task__key__in=["after", "after-after"]).exists()
    result = api.get(f"/api/v1/projects/{project['id']}/result").json()
    assert result["state"] == "failed"
    by_key = {t["key"]: t for t in result["tasks"]}
    assert by_key["independent"]["pushed_commit"] and by_key["independent"]["work_branch"]
    assert "script exited with status 1" in by_key["broken"]["error"]


def test_fail_fast_cancels_every_other_task_and_kills_running_agents(hub, api, remote_repo):
    tasks = [
        task("broken", "sleep 0.5; exit 1", remote_repo),
        task("slow", "sleep 60", remote_repo),
        task("after", "true", remote_repo, depends_on=["broken"]),
    ]
    project = create(api, tasks, failure_policy="fail-fast")

    assert wait_for_project(project["id"]).state == "failed"

    states = dict(Task.objects.filter(project_id=project["id"]).values_list("key", "state"))
    assert states == {"broken": "failed", "slow": "cancelled", "after": "cancelled"}
    slow = last_agent(project["id"])["slow"]
    wait_until(lambda: Agent.objects.get(id=slow.id).state == "killed", what="slow killed")
    assert (Agent.objects.get(id=slow.id).finished_at - slow.started_at).total_seconds() < 30


def test_cancel_kills_running_agents_and_cancels_the_rest(hub, api, remote_repo):
    tasks = [
        task("long", "sleep 60", remote_repo),
        task("next", "true", remote_repo, depends_on=["long"]),
    ]
    project = create(api, tasks)
    long_task = f"p{project['id']}-long"
    wait_until(
        lambda: Agent.objects.filter(task_id=long_task, state="running").exists(),
        what="long running",
    )

    response = api.post(
        f"/api/v1/projects/{project['id']}/cancel", {"reason": "changed my mind"}, format="json"
    )

    assert response.status_code == 200, response.content
    assert response.json()["state"] == "cancelled"
    assert {t["state"] for t in response.json()["tasks"]} == {"cancelled"}
    agent = last_agent(project["id"])["long"]
    assert agent.state == "killed"
    again = api.post(f"/api/v1/projects/{project['id']}/cancel", {}, format="json")
    assert again.status_code == 409 and again.json()["error"]["code"] == "invalid_state"


def test_pause_holds_back_new_tasks_until_resume(hub, api, remote_repo):
    tasks = [task("first", "sleep 1", remote_repo), task("second", "true", remote_repo)]
    project = create(api, tasks, mode="sequential")
    wait_until(
        lambda: Agent.objects.filter(task_id=f"p{project['id']}-first").exists(),
        what="first started",
    )

    paused = api.post(f"/api/v1/projects/{project['id']}/pause")
    assert paused.status_code == 200 and paused.json()["state"] == "paused"
    wait_until(
        lambda: Task.objects.get(project_id=project["id"], key="first").state == "succeeded",
        what="first done",
    )
    # The pass that follows the first agent's end, which would start the second, has run.
    first = Agent.objects.get(task_id=f"p{project['id']}-first")
    wait_until(
        lambda: Success.objects.filter(name=f"project-agent-finished-{first.id}").exists(),
        what="the dispatch pass after the first agent",
    )
    assert Task.objects.get(project_id=project["id"], key="second").state in {"pending", "ready"}
    assert Project.objects.get(id=project["id"]).state == "paused"

    resumed = api.post(f"/api/v1/projects/{project['id']}/resume")

    assert resumed.status_code == 200 and resumed.json()["state"] == "running"
    assert wait_for_project(project["id"]).state == "succeeded"
    assert api.post(f"/api/v1/projects/{project['id']}/resume").status_code == 409


def test_retrying_a_failed_task_by_hand_reruns_it_and_its_skipped_dependents(hub, api, remote_repo):
    tasks = [
        task("once", '[ "$FLOTILLA_TASK_ATTEMPT" -ge 2 ] || exit 1', remote_repo),
        task("then", "true", remote_repo, depends_on=["once"]),
    ]
    project = create(api, tasks)
    assert wait_for_project(project["id"]).state == "failed"

    response = api.post(f"/api/v1/projects/{project['id']}/tasks/once/retry")

    assert response.status_code == 200, response.content
    assert wait_for_project(project["id"]).state == "succeeded"
    assert Task.objects.get(project_id=project["id"], key="once").attempts == 2
    missing = api.post(f"/api/v1/projects/{project['id']}/tasks/nope/retry")
    assert missing.status_code == 404


def test_dependencies_whose_branches_conflict_fail_the_task_naming_the_files(hub, api, remote_repo):
    tasks = [
        task("left", "echo left > README.md", remote_repo),
        task("right", "echo right > README.md", remote_repo),
        task("join", "true", remote_repo, depends_on=["left", "right"], max_retries=2),
    ]
    project = create(api, tasks)

    assert wait_for_project(project["id"]).state == "failed"

    join = Task.objects.get(project_id=project["id"], key="join")
    assert join.state == "failed" and join.attempts == 1
    assert "merge conflict" in join.error and "README.md" in join.error


def test_tasks_without_a_repository_run_in_a_scratch_repository_and_artifacts_download(hub, api):
    tasks = [
        {"key": "make", "script": "echo data > data.txt"},
        {"key": "use", "script": "cat data.txt > copy.txt", "depends_on": ["make"]},
    ]
    project = create(api, tasks)

    assert wait_for_project(project["id"]).state == "succeeded"

    response = api.get(f"/api/v1/projects/{project['id']}/artifacts")
    assert response.status_code == 200
    assert response["Content-Type"] == "application/gzip"
    import io
    import tarfile

    with tarfile.open(fileobj=io.BytesIO(response.content), mode="r:gz") as archive:
        names = set(archive.getnames())
        root = f"project-{project['id']}"
        assert f"{root}/project.json" in names
        diff = archive.extractfile(f"{root}/use/attempt-1/diff.patch").read().decode()
        events = archive.extractfile(f"{root}/use/attempt-1/events.jsonl").read().decode()
        gates = archive.extractfile(f"{root}/make/attempt-1/gates.json").read().decode()
    assert "+data" in diff and "copy.txt" in diff and "data.txt" not in diff.split("copy.txt")[0]
    assert '"to": "completed"' in events
    assert "secret_scan" in gates
