"""The project form in a real Chromium: tasks pasted as YAML (read by the hub), and a project
planned from a goal by the planner (a real local Messages API server standing in for Claude),
edited in the table and created; a planner that fails says why."""

import re
from collections.abc import Iterator

import pytest

from taskqueue.models import Project
from tests.conftest import HUB_ANTHROPIC_KEY
from tests.dashboard.conftest import WebProcess, login, screenshot
from tests.launcher import free_port
from tests.messages_server import error_reply
from tests.test_project_planner import plan

NEW = "/dashboard/projects/new/"
CREDIT_LOW = "Your credit balance is too low to access the Anthropic API."


@pytest.fixture(scope="module")
def planner_web(django_db_setup, hub_messages_server) -> Iterator[WebProcess]:
    """A web process whose planner asks the hub's stand-in Messages API server."""
    server = WebProcess(free_port())
    server.group.env.update(
        ANTHROPIC_BASE_URL=hub_messages_server.url,
        ANTHROPIC_API_KEY=HUB_ANTHROPIC_KEY,
        ANTHROPIC_MAX_RETRIES="0",
    )
    server.start()
    yield server
    server.stop()


def _edges(page) -> set[tuple[str, str]]:
    pairs = page.eval_on_selector_all(
        "#dag .dag-edge", "edges => edges.map(e => [e.dataset.from, e.dataset.to])"
    )
    return {tuple(pair) for pair in pairs}


def _unlabelled_controls(page) -> list[str]:
    return page.evaluate(
        """() => [...document.querySelectorAll('#project-form input, #project-form select,'
              + ' #project-form textarea, #project-form button')]
            .filter(c => c.type !== 'hidden' && c.offsetParent !== null)
            .filter(c => !(c.labels && c.labels.length) && !c.getAttribute('aria-label')
                         && !(c.tagName === 'BUTTON' && c.textContent.trim()))
            .map(c => c.name || c.id || c.dataset.taskField)"""
    )


def _focus_outline(page, selector: str) -> str:
    """The outline the element shows once it is reached with the keyboard."""
    return page.eval_on_selector(selector, "e => getComputedStyle(e).outlineStyle")


def test_tasks_pasted_as_yaml_are_read_by_the_hub_and_drawn(
    transactional_db, user, planner_web, chromium
):
    page = login(chromium, planner_web, "operator", path=NEW)
    page.check('input[name="task-source"][value="yaml"]')
    # The box starts from the table, as YAML.
    assert page.input_value("#p-tasks-yaml") == "- key: build\n  depends_on: []\n"

    page.fill(
        "#p-tasks-yaml",
        "tasks:\n"
        "  - key: build\n    script: make\n"
        "  - key: test\n    script: make test\n    depends_on: [build]\n"
        "  - key: docs\n    script: make docs\n    depends_on: [build]\n",
    )
    page.wait_for_selector('#dag .dag-node[data-task-key="docs"]')
    assert _edges(page) == {("build", "test"), ("build", "docs")}
    assert page.inner_text("#graph-summary") == "3 tasks, 2 dependencies"
    assert page.is_hidden("#e-tasks-yaml")
    screenshot(page, "project-new-yaml")

    page.fill("#p-tasks-yaml", "tasks:\n  - key: build\n    depends_on: [test\n")
    page.wait_for_selector("#e-tasks-yaml:not([hidden])")
    message = page.inner_text("#e-tasks-yaml")
    assert message.startswith("not valid YAML: ") and "(line 4, column 1)" in message
    page.fill("#p-tasks-yaml", "build: make")
    page.wait_for_selector("#e-tasks-yaml >> text=expected a list of tasks")

    # Back to the table: the readable YAML's tasks are loaded into it.
    page.fill(
        "#p-tasks-yaml", "- {key: a, script: 'true'}\n- {key: b, script: 'true', depends_on: [a]}"
    )
    page.wait_for_selector('#dag .dag-node[data-task-key="b"]')
    page.check('input[name="task-source"][value="table"]')
    keys = page.eval_on_selector_all(
        '#task-rows [data-task-field="key"]', "inputs => inputs.map(i => i.value)"
    )
    assert keys == ["a", "b"]
    assert _edges(page) == {("a", "b")}


def test_a_goal_is_planned_drawn_edited_and_created_as_a_project(
    claude_server, user, planner_web, chromium, remote_repo
):
    claude_server.script(
        plan(
            ("design", []),
            ("backend", ["design"]),
            ("frontend", ["design"]),
            ("tests", ["backend", "frontend"]),
        )
    )
    page = login(chromium, planner_web, "operator", path=NEW)
    assert _unlabelled_controls(page) == []
    page.fill("#p-repository", str(remote_repo))
    page.fill("#p-goal", "Add a login page")
    # From the keyboard: Tab from the goal reaches Plan, whose focus is visible.
    page.focus("#p-goal")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "plan"
    assert _focus_outline(page, "#plan") == "solid"
    page.keyboard.press("Enter")

    page.wait_for_selector('#dag .dag-node[data-task-key="tests"]')
    assert _edges(page) == {
        ("design", "backend"),
        ("design", "frontend"),
        ("backend", "tests"),
        ("frontend", "tests"),
    }
    assert "proposed 4 tasks" in page.inner_text("#plan-status")
    assert page.input_value("#p-name") == "Add login"
    assert not Project.objects.exists()  # a proposal only
    request = claude_server.requests[0]["body"]
    assert "Add a login page" in request["messages"][0]["content"]
    screenshot(page, "project-new-planned")

    backend = page.locator("#task-rows .task-row").nth(1)
    assert backend.locator('[data-task-field="key"]').input_value() == "backend"
    assert backend.locator('[data-task-field="runtime"]').input_value() == "claude"
    assert backend.locator('[data-task-field="script"]').is_hidden()
    assert backend.locator('[data-task-field="instructions"]').input_value() == "Implement backend."
    backend.locator('[data-task-field="title"]').fill("Build the login API")
    backend.locator('[data-task-field="instructions"]').fill("Add POST /login with tests.")
    # The tests no longer wait for the frontend.
    page.locator("#task-rows .task-row").nth(3).locator('[data-task-field="depends_on"]').fill(
        "backend"
    )
    assert ("frontend", "tests") not in _edges(page)
    page.check("#p-paused")  # nothing runs in this test
    page.set_viewport_size({"width": 390, "height": 844})
    screenshot(page, "project-new-planned-390")
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    page.set_viewport_size({"width": 1280, "height": 800})
    page.click('[data-action="create-project"]')

    page.wait_for_url(re.compile(r"/dashboard/projects/\d+/$"))
    project = Project.objects.get()
    assert (project.name, project.state) == ("Add login", "paused")
    tasks = {task.key: task for task in project.tasks.all()}
    assert set(tasks) == {"design", "backend", "frontend", "tests"}
    backend_task = tasks["backend"]
    assert (backend_task.title, backend_task.instructions, backend_task.runtime) == (
        "Build the login API",
        "Add POST /login with tests.",
        "claude",
    )
    assert backend_task.repository == str(remote_repo)
    assert [dep.key for dep in tasks["tests"].depends_on.all()] == ["backend"]
    assert tasks["design"].title == "Do design"  # untouched fields as planned


def test_a_planner_failure_and_a_blank_goal_are_explained_next_to_the_goal(
    claude_server, user, planner_web, chromium, remote_repo
):
    claude_server.script(error_reply(400, CREDIT_LOW))
    page = login(chromium, planner_web, "operator", path=NEW)
    page.fill("#p-repository", str(remote_repo))
    page.fill("#p-goal", "Add a login page")
    page.click('[data-action="plan"]')

    page.wait_for_selector("#e-plan:not([hidden])")
    message = page.inner_text("#e-plan")
    assert message.startswith("No plan: the planner could not be asked")
    assert CREDIT_LOW in message
    assert page.evaluate("document.activeElement.id") == "e-plan"
    # The table is as it was.
    assert page.locator("#task-rows .task-row").count() == 1
    screenshot(page, "project-new-plan-failed")
    page.set_viewport_size({"width": 390, "height": 844})
    screenshot(page, "project-new-plan-failed-390")
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    page.set_viewport_size({"width": 1280, "height": 800})

    page.fill("#p-goal", "")
    page.click('[data-action="plan"]')
    page.wait_for_selector("#e-goal:not([hidden])")
    assert page.get_attribute("#p-goal", "aria-invalid") == "true"
    assert "blank" in page.inner_text("#e-goal")
    assert page.evaluate("document.activeElement.id") == "p-goal"
    assert len(claude_server.requests) == 1  # a blank goal never reached the planner
