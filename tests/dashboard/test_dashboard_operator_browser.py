"""Issue 17 in a real Chromium against a real daphne, with agents run by the real worker:
start an agent from the form and read its diff, see the API's field errors next to their
fields, read a gate-rejected agent's report, and filter the list by state and owner."""

import json
import re

from agents.models import AgentEvent, AgentState
from tests.conftest import make_remote, wait_for_state
from tests.dashboard.conftest import login, screenshot
from tests.dashboard.test_dashboard_operator import agent_stored
from tests.launcher import wait_until
from tests.test_gates import PYTHON_PROJECT, SECRET_VALUES

AGENT_PAGE = re.compile(r"/dashboard/agents/([0-9a-f-]{36})/$")


def _wait_until(page, expression: str, timeout: float = 20.0) -> None:
    """Poll a JS expression (``wait_for_function`` needs the unsafe-eval our CSP forbids)."""
    wait_until(lambda: page.evaluate(expression), timeout, what=expression, every=0.02)


def _unlabelled_controls(page) -> list[str]:
    """The visible form controls that have no label a screen reader would read."""
    return page.evaluate(
        """() => [...document.querySelectorAll('#spawn-form input, #spawn-form select,'
              + ' #spawn-form textarea')]
            .filter(c => c.type !== 'hidden' && c.offsetParent !== null)
            .filter(c => !(c.labels && c.labels.length) && !c.getAttribute('aria-label'))
            .map(c => c.name)"""
    )


def test_an_operator_starts_an_agent_from_the_form_watches_it_complete_and_reads_its_diff(
    hub, user, web, chromium, remote_repo
):
    page = login(chromium, web, "operator")
    page.click('[data-action="new-agent"]')
    page.wait_for_selector("#spawn-form")
    assert _unlabelled_controls(page) == []

    page.fill("#f-task_id", "from-the-form")
    page.fill("#f-repository", str(remote_repo))
    page.fill("#f-script", "echo 'a line the agent wrote' >> README.md")
    page.fill("#f-timeout_s", "120")
    page.check('input[name="options.network"][value="off"]')
    screenshot(page, "agent-new")
    # Submitted from the keyboard: Enter in a text field.
    page.focus("#f-task_id")
    page.keyboard.press("Enter")

    page.wait_for_url(AGENT_PAGE)
    agent_id = AGENT_PAGE.search(page.url).group(1)
    page.wait_for_selector('#agent[data-state="completed"]', timeout=60_000)
    agent = wait_for_state(agent_id, AgentState.COMPLETED)
    assert (agent.task_id, agent.requested_by, agent.timeout_s) == (
        "from-the-form",
        "user:operator",
        120,
    )
    page.wait_for_selector("#report-stale:not([hidden])")
    page.click("#report-stale a")
    page.wait_for_selector("[data-pushed-commit]")
    assert page.inner_text("[data-pushed-commit]") == agent.result["pushed_commit"]

    page.click('[data-action="diff"]')
    page.wait_for_selector('.diff-file[data-path="README.md"]')
    added = page.locator("tr.diff-add .diff-text").all_inner_texts()
    assert [text.strip() for text in added] == ["+a line the agent wrote"]
    # A file's changes fold away and back, from the keyboard too.
    page.focus('.diff-file[data-path="README.md"] > summary')
    page.keyboard.press("Enter")
    assert page.locator("tr.diff-add").first.is_hidden()
    page.keyboard.press("Enter")
    assert page.locator("tr.diff-add").first.is_visible()
    screenshot(page, "agent-diff")


def test_a_bad_form_value_shows_the_apis_field_error_next_to_the_field_at_phone_width(
    hub, user, web, chromium, tmp_path
):
    page = login(chromium, web, "operator", path="/dashboard/agents/new/")
    page.set_viewport_size({"width": 390, "height": 844})
    page.fill("#f-task_id", "bad values")
    page.fill("#f-repository", str(tmp_path / "missing.git"))
    page.fill("#f-script", "true")
    page.fill("#f-memory_mb", "999999999")
    page.click('[data-action="spawn"]')

    page.wait_for_selector("#e-memory_mb:not([hidden])")
    assert "FLOTILLA_MAX_MEMORY_MB" in page.inner_text("#e-memory_mb")
    assert page.inner_text("#e-task_id") and page.inner_text("#e-repository")
    for field, error in (("f-memory_mb", "e-memory_mb"), ("f-repository", "e-repository")):
        assert page.evaluate(
            f"document.getElementById('{field}').closest('.field')"
            f".contains(document.getElementById('{error}'))"
        )
        assert page.get_attribute(f"#{field}", "aria-invalid") == "true"
    # The first field in error has the focus, and nothing was spawned.
    assert page.evaluate("document.activeElement.id") == "f-task_id"
    assert page.url.endswith("/dashboard/agents/new/")
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    screenshot(page, "agent-new-errors-390")

    # Fixing the value clears its error on the next submission.
    page.fill("#f-memory_mb", "256")
    page.click('[data-action="spawn"]')
    page.wait_for_selector("#e-repository:not([hidden])")
    assert page.is_hidden("#e-memory_mb")


def test_a_gate_rejected_agents_page_names_the_failing_test_and_masks_the_secret(
    hub, api, user, web, chromium, tmp_path, sandbox_toolchain
):
    remote = make_remote(tmp_path, PYTHON_PROJECT)
    key = SECRET_VALUES["aws"]
    script = f"sed -i 's/a + b/a - b/' calc.py && echo 'AWS_ACCESS_KEY_ID = \"{key}\"' > deploy.py"
    body = {
        "task_id": "rejected",
        "runtime": "script",
        "script": script,
        "context": {"repository": str(remote)},
    }
    response = api.post("/api/v1/agents", body, format="json")
    assert response.status_code == 202, response.content
    agent_id = response.json()["agent_id"]
    wait_for_state(agent_id, AgentState.FAILED, timeout=90)

    page = login(chromium, web, "operator", path=f"/dashboard/agents/{agent_id}/")

    assert page.get_attribute('.gate-row[data-gate="tests"]', "data-outcome") == "failed"
    assert page.get_attribute('.gate-row[data-gate="secret_scan"]', "data-outcome") == "failed"
    assert page.inner_text("[data-failing-test]") == "test_calc.py::test_add"
    masked = page.inner_text("[data-masked]")
    assert masked and key not in masked
    assert "deploy.py" in page.inner_text('.gate-row[data-gate="secret_scan"]')
    assert key not in page.content()
    assert "rejected" in page.inner_text("[data-gate-verdict]")
    screenshot(page, "agent-gates")


def test_the_list_filters_by_state_and_owner_and_never_shows_another_users_agents(
    hub, user, staff_user, web, chromium
):
    mine = agent_stored("user:operator", state=AgentState.COMPLETED, task_id="mine-done")
    mine_failed = agent_stored("user:operator", state=AgentState.FAILED, task_id="mine-failed")
    theirs = agent_stored("user:other", state=AgentState.COMPLETED, task_id="theirs-done")

    admin = login(chromium, web, "admin")
    admin.select_option("#filter-state", "completed")
    admin.click('[data-action="filter"]')
    admin.wait_for_url(re.compile(r"state=completed"))
    shown = set(
        admin.eval_on_selector_all("tr.agent-row", "rows => rows.map(r => r.dataset.agentId)")
    )
    assert shown == {str(mine.id), str(theirs.id)}
    admin.select_option("#filter-owner", "user:other")
    admin.click('[data-action="filter"]')
    admin.wait_for_url(re.compile(r"owner=user%3Aother"))
    shown = admin.eval_on_selector_all("tr.agent-row", "rows => rows.map(r => r.dataset.agentId)")
    assert shown == [str(theirs.id)]
    screenshot(admin, "agents-filtered")

    operator = login(chromium, web, "operator")
    html = operator.content()
    assert str(theirs.id) not in html and "theirs-done" not in html
    assert operator.locator("#filter-owner").count() == 0
    assert {str(mine.id), str(mine_failed.id)} <= set(
        operator.eval_on_selector_all("tr.agent-row", "rows => rows.map(r => r.dataset.agentId)")
    )
    for path in (f"/dashboard/agents/{theirs.id}/", f"/dashboard/agents/{theirs.id}/diff/"):
        answer = operator.goto(f"{web.url}{path}")
        assert answer.status == 404, path
        assert "theirs-done" not in operator.content()


def test_the_activity_page_plots_agents_by_state_and_spend(hub, user, web, chromium):
    agent_stored("user:operator", state=AgentState.COMPLETED, cost_usd="1.50")
    agent_stored("user:operator", state=AgentState.FAILED, cost_usd="0.25")

    page = login(chromium, web, "operator", path="/dashboard/activity/")

    assert page.locator('[data-chart="states"] rect.chart-bar').count() == 2
    assert page.locator('[data-chart="spend"] rect.chart-bar').count() == 1
    screenshot(page, "activity")


def _fill_row(page, index: int, key: str, script: str, depends_on: str = "") -> None:
    row = page.locator("#task-rows .task-row").nth(index)
    row.locator('[data-task-field="key"]').fill(key)
    row.locator('[data-task-field="script"]').fill(script)
    row.locator('[data-task-field="depends_on"]').fill(depends_on)


def _edges(page) -> set[tuple[str, str]]:
    pairs = page.eval_on_selector_all(
        "#dag .dag-edge", "edges => edges.map(e => [e.dataset.from, e.dataset.to])"
    )
    return {tuple(pair) for pair in pairs}


def test_a_project_is_drawn_and_its_cycle_named_before_it_is_created_from_the_form(
    hub, user, web, chromium, remote_repo
):
    page = login(chromium, web, "operator", path="/dashboard/projects/")
    page.click('[data-action="new-project"]')
    page.wait_for_selector("#project-form")
    page.fill("#p-name", "from the form")
    page.fill("#p-repository", str(remote_repo))
    _fill_row(page, 0, "build", "true")
    page.click('[data-action="add-task"]')
    _fill_row(page, 1, "test", "true", "build")
    page.click('[data-action="add-task"]')
    _fill_row(page, 2, "deploy", "true", "test")

    assert page.locator("#dag .dag-node").count() == 3
    assert _edges(page) == {("build", "test"), ("test", "deploy")}
    assert page.is_hidden("#e-tasks")

    _fill_row(page, 0, "build", "true", "deploy")
    page.wait_for_selector("#e-tasks:not([hidden])")
    assert "dependency cycle: build → deploy → test → build" in page.inner_text("#e-tasks")
    assert page.locator("#dag .dag-node[data-cycle]").count() == 3
    screenshot(page, "project-new-cycle")
    # Sent anyway, the API refuses it and names the cycle too.
    page.click('[data-action="create-project"]')
    # The page's own naming, then the API's, which names the same cycle.
    _wait_until(
        page,
        "document.querySelector('#e-tasks').textContent.split('dependency cycle').length === 3",
    )
    assert page.url.endswith("/dashboard/projects/new/")

    # As pasted JSON: the table's tasks are offered as JSON to edit.
    page.check('input[name="task-source"][value="json"]')
    tasks = json.loads(page.input_value("#p-tasks-json"))
    assert [(task["key"], task["depends_on"]) for task in tasks] == [
        ("build", ["deploy"]),
        ("test", ["build"]),
        ("deploy", ["test"]),
    ]
    tasks[0]["depends_on"] = []
    page.fill("#p-tasks-json", json.dumps(tasks, indent=2))
    page.wait_for_selector("#e-tasks", state="hidden")
    assert _edges(page) == {("build", "test"), ("test", "deploy")}
    page.click('[data-action="create-project"]')

    page.wait_for_url(re.compile(r"/dashboard/projects/\d+/$"))
    page.wait_for_selector(
        '#dag .dag-node[data-task-key="deploy"][data-state="succeeded"]', timeout=90_000
    )
    assert _edges(page) == {("build", "test"), ("test", "deploy")}
    screenshot(page, "project-from-form")


def test_a_new_agent_appears_live_only_on_a_list_whose_filters_it_passes(
    hub, api, user, web, chromium, remote_repo
):
    completed = login(chromium, web, "operator", path="/dashboard/?state=completed")
    claude_only = completed.context.new_page()
    claude_only.goto(f"{web.url}/dashboard/?runtime=claude")
    claude_only.wait_for_selector("#connection[data-status=live]")

    response = api.post(
        "/api/v1/agents",
        {
            "task_id": "live-filtered",
            "runtime": "script",
            "script": "true",
            "context": {"repository": str(remote_repo)},
        },
        format="json",
    )
    agent_id = response.json()["agent_id"]
    wait_for_state(agent_id, AgentState.COMPLETED)

    # Listed once it is completed (its earlier states did not pass the filter).
    completed.wait_for_selector(f'tr.agent-row[data-agent-id="{agent_id}"][data-state="completed"]')
    # The other page has had the same news (the completing transition) and left it out.
    last = AgentEvent.objects.filter(agent_id=agent_id, kind="state").order_by("-id").first()
    _wait_until(claude_only, f"window.flotilla.stream.received.includes({last.id})")
    assert claude_only.locator(f'tr.agent-row[data-agent-id="{agent_id}"]').count() == 0
