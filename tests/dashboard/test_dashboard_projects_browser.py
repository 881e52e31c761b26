"""The projects pages in a real Chromium: a DAG project run by the real worker, drawn and live."""

import time

from agents.models import AgentState
from audit.models import AuditEvent
from killswitch.services import hub_halt, hub_release
from taskqueue.models import Project
from tests.conftest import wait_for_state
from tests.dashboard.conftest import login, screenshot
from tests.launcher import wait_until


def _create(api, repository, tasks: list[tuple[str, str, list[str]]], **fields) -> dict:
    body = {
        "name": fields.pop("name", "project"),
        "mode": "dag",
        "tasks": [
            {"key": key, "script": script, "repository": str(repository), "depends_on": deps}
            for key, script, deps in tasks
        ],
        **fields,
    }
    response = api.post("/api/v1/projects", body, format="json")
    assert response.status_code == 201, response.content
    return response.json()


def _node(key: str, state: str | None = None) -> str:
    selector = f'#dag .dag-node[data-task-key="{key}"]'
    return f'{selector}[data-state="{state}"]' if state else selector


def _wait_for_project(project_id: int, state: str, timeout: float = 30.0) -> Project:
    deadline = time.monotonic() + timeout
    while (project := Project.objects.get(id=project_id)).state != state:
        assert time.monotonic() < deadline, f"project {project_id} is still {project.state}"
        time.sleep(0.05)
    return project


def _wait_until(page, expression: str, timeout: float = 20.0) -> None:
    """Poll a JS expression (``wait_for_function`` needs the unsafe-eval our CSP forbids)."""
    wait_until(lambda: page.evaluate(expression), timeout, what=expression, every=0.02)


def _edges(page) -> set[tuple[str, str]]:
    pairs = page.eval_on_selector_all(
        "#dag .dag-edge", "edges => edges.map(e => [e.dataset.from, e.dataset.to])"
    )
    return {tuple(pair) for pair in pairs}


def test_a_dag_project_appears_is_drawn_in_layers_and_turns_green_live(
    hub, api, web, chromium, remote_repo
):
    board = login(chromium, web, "operator", path="/dashboard/projects/")
    tasks = [
        ("a", "echo a > a.txt", []),
        ("b", "echo b > b.txt", ["a"]),
        ("c", "echo c > c.txt", ["a"]),
        ("d", "echo d > d.txt", ["b", "c", "a"]),
    ]
    # Created paused, so the page is open before anything runs.
    project = _create(api, remote_repo, tasks, name="diamond", paused=True)
    row = f'tr.project-row[data-project-id="{project["id"]}"]'
    board.wait_for_selector(f'{row}[data-state="paused"]')
    board.evaluate("window.notReloaded = true")

    page = board.context.new_page()
    page.set_default_timeout(20_000)
    page.goto(f"{web.url}/dashboard/projects/{project['id']}/")
    page.wait_for_selector("#connection[data-status=live]")
    page.evaluate("window.notReloaded = true")
    layers = page.eval_on_selector_all(
        "#dag .dag-node", "nodes => nodes.map(n => [n.dataset.taskKey, n.dataset.layer])"
    )
    # Longest path from the root: d is below b and c, not beside them, despite a → d.
    assert dict(layers) == {"a": "0", "b": "1", "c": "1", "d": "2"}
    assert _edges(page) == {("a", "b"), ("a", "c"), ("b", "d"), ("c", "d"), ("a", "d")}
    assert page.locator(_node("d", "pending")).count() == 1

    assert api.post(f"/api/v1/projects/{project['id']}/resume").status_code == 200
    for key in "abcd":
        page.wait_for_selector(_node(key, "succeeded"), timeout=60_000)
    page.wait_for_selector('#project[data-state="succeeded"]')
    board.wait_for_selector(f'{row}[data-state="succeeded"]')

    assert page.inner_text('#project [data-field="progress_text"]') == "4/4 tasks finished"
    green = page.eval_on_selector(f"{_node('d')} .dag-box", "box => getComputedStyle(box).fill")
    assert green == "rgb(47, 158, 85)"
    assert page.get_attribute(f"{_node('d')} >> xpath=..", "href").startswith("/dashboard/agents/")
    assert page.evaluate("window.notReloaded") is True
    assert board.evaluate("window.notReloaded") is True
    assert board.inner_text(f'{row} [data-field="progress_text"]') == "4/4"


def test_the_owner_cancels_a_running_project_from_its_page(hub, api, web, chromium, remote_repo):
    tasks = [
        ("setup", "echo setup > setup.txt", []),
        ("docs", "echo docs > docs.txt", ["setup"]),
        ("build", "sleep 60", ["setup"]),
        ("test", "echo test > test.txt", ["build"]),
        ("release", "echo release > release.txt", ["test", "docs"]),
    ]
    project = _create(api, remote_repo, tasks, name="release train")
    page = login(chromium, web, "operator", path=f"/dashboard/projects/{project['id']}/")
    page.evaluate("window.notReloaded = true")
    page.wait_for_selector(_node("build", "running"), timeout=60_000)
    page.wait_for_selector(_node("docs", "succeeded"), timeout=60_000)
    screenshot(page, "project-dag")

    page.on("dialog", lambda dialog: dialog.accept())
    page.fill('form[data-project-action="cancel"] input[name="reason"]', "wrong release")
    page.click('[data-action="cancel-project"]')

    page.wait_for_selector('#project[data-state="cancelled"]')
    for key in ("build", "test", "release"):
        page.wait_for_selector(_node(key, "cancelled"))
    assert page.is_hidden('[data-action="cancel-project"]')
    assert page.is_hidden('[data-action="pause-project"]')
    assert page.evaluate("window.notReloaded") is True
    assert _wait_for_project(project["id"], "cancelled").error == "wrong release"
    build_agent = page.eval_on_selector(_node("build"), "n => n.parentNode.getAttribute('href')")
    wait_for_state(build_agent.split("/")[3], [AgentState.KILLED])
    cancel = AuditEvent.objects.get(action="project.cancel", target=f"project:{project['id']}")
    assert (cancel.actor, cancel.reason) == ("user:operator", "wrong release")


def test_the_halt_banner_comes_and_goes_live_on_an_open_page(transactional_db, user, web, chromium):
    page = login(chromium, web, "operator", path="/dashboard/projects/")
    page.evaluate("window.notReloaded = true")
    _wait_until(page, "window.flotilla.bannerStream && window.flotilla.bannerStream.frames > 0")
    assert page.locator('[data-banner="halted"]').count() == 0

    hub_halt(reason="disk full", actor="user:admin")
    page.wait_for_selector('[data-banner="halted"] >> text=disk full')
    assert "(user:admin)" in page.inner_text('[data-banner="halted"]')
    hub_release(actor="user:admin", reason="cleaned up")
    page.wait_for_selector('[data-banner="halted"]', state="detached")

    assert page.evaluate("window.notReloaded") is True
