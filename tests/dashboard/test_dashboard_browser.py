"""The dashboard in a real Chromium, served by a real daphne, with agents run by the real worker."""

import time
from pathlib import Path

from agents.models import Agent, AgentEvent, AgentState
from audit.models import AuditEvent
from tests.conftest import spawn_body, wait_for_state
from tests.dashboard.conftest import login, screenshot
from tests.launcher import wait_until


def _spawn(api, repository, script: str, **options) -> str:
    response = api.post("/api/v1/agents", spawn_body(repository, script, **options), format="json")
    assert response.status_code == 202, response.content
    return response.json()["agent_id"]


def _wait_until(page, expression: str, timeout: float = 20.0) -> None:
    """Poll a JS expression (``wait_for_function`` needs the unsafe-eval our CSP forbids)."""
    wait_until(lambda: page.evaluate(expression), timeout, what=expression, every=0.02)


def _row(agent_id: str, state: str | None = None) -> str:
    selector = f'tr.agent-row[data-agent-id="{agent_id}"]'
    return f'{selector}[data-state="{state}"]' if state else selector


def test_operator_sees_an_agent_appear_and_complete_then_kills_another_from_its_row(
    hub, api, web, chromium, remote_repo
):
    page = login(chromium, web, "operator")
    page.evaluate("window.notReloaded = true")

    first = _spawn(api, remote_repo, "echo hello > hello.txt")
    page.wait_for_selector(_row(first))
    page.wait_for_selector(_row(first, "completed"))
    assert page.inner_text(f'{_row(first)} [data-field="progress_text"]') == "100%"
    assert page.is_hidden(f'{_row(first)} [data-action="kill"]')

    second = _spawn(api, remote_repo, "sleep 60", task_id="task-2")
    page.wait_for_selector(_row(second, "running"))
    page.click(f'{_row(second)} [data-action="kill"]')
    page.fill("#kill-reason", "runaway agent")
    page.click('[data-action="confirm-kill"]')
    # The row turns without a reload (window.notReloaded below): the live
    # stream carried the kill. bench/dashboard_ws.py measures how fast.
    page.wait_for_selector(_row(second, "killed"), timeout=5_000)
    assert (
        wait_for_state(second, AgentState.KILLED).error == "killed by user:operator: runaway agent"
    )
    # The audit row follows the sandbox cleanup, after the state has already flipped.
    _wait_until(page, "document.querySelector('#kill-dialog').open === false")
    kill = AuditEvent.objects.get(action="agent.kill", target=f"agent:{second}")
    assert (kill.actor, kill.reason) == ("user:operator", "runaway agent")
    assert page.evaluate("window.notReloaded") is True
    assert page.evaluate("window.flotilla.stream.duplicates") == 0
    screenshot(page, "agents")

    page.goto(f"{web.url}/dashboard/agents/{first}/")
    page.wait_for_selector(".log-row.kind-state >> text=→ completed")
    assert page.get_attribute("#agent", "data-state") == "completed"
    assert page.locator(".log-row.kind-output >> text=hello").count() == 0  # went to a file
    screenshot(page, "agent-detail")


def test_dropping_and_restoring_the_websocket_mid_run_loses_no_event(
    hub, api, own_web, chromium, remote_repo
):
    # The agent waits at two gates the test opens, so the drop, the events
    # written while the server is down, and the restore all happen mid-run
    # however slow the machine is.
    script = (
        "for i in $(seq 1 20); do echo line-$i; done; "
        "while [ ! -e gate1 ]; do sleep 0.05; done; "
        "for i in $(seq 21 60); do echo line-$i; sleep 0.01; done; "
        "while [ ! -e gate2 ]; do sleep 0.05; done; "
        "for i in $(seq 61 100); do echo line-$i; sleep 0.01; done; rm gate1 gate2"
    )
    agent_id = _spawn(api, remote_repo, script)
    board = login(chromium, own_web, "operator")
    board_after = int(board.get_attribute("#agents", "data-after"))
    detail = board.context.new_page()
    detail.goto(f"{own_web.url}/dashboard/agents/{agent_id}/")
    detail.wait_for_selector(".log-row.kind-output")
    worktree = Path(wait_for_state(agent_id, AgentState.RUNNING).worktree_path)

    own_web.stop()  # every socket drops; the agent keeps emitting while daphne is down
    events_at_drop = AgentEvent.objects.filter(agent_id=agent_id).count()
    (worktree / "gate1").write_text("open")
    deadline = time.monotonic() + 20
    while AgentEvent.objects.filter(agent_id=agent_id).count() == events_at_drop:
        assert time.monotonic() < deadline, "the agent wrote nothing while the server was down"
        time.sleep(0.05)
    own_web.start()
    assert Agent.objects.get(id=agent_id).state == AgentState.RUNNING
    (worktree / "gate2").write_text("open")
    detail.wait_for_selector('#agent[data-state="completed"]', timeout=30_000)
    board.wait_for_selector(_row(agent_id, "completed"))

    stored = list(AgentEvent.objects.filter(agent_id=agent_id).values_list("id", flat=True))
    assert detail.evaluate("window.flotilla.stream.received") == stored
    assert detail.evaluate("window.flotilla.stream.duplicates") == 0
    assert detail.evaluate("window.flotilla.stream.connects") >= 2
    lines = [
        line
        for line in detail.evaluate("window.flotilla.log.lines.map(l => l.text)")
        if line.startswith("line-")
    ]
    assert lines == [f"line-{n}" for n in range(1, 101)]

    transitions = list(
        AgentEvent.objects.filter(kind="state", id__gt=board_after).values_list("id", flat=True)
    )
    assert board.evaluate("window.flotilla.stream.received") == transitions
    assert board.evaluate("window.flotilla.stream.connects") >= 2


def test_a_ten_thousand_line_log_keeps_only_the_visible_rows_in_the_page(
    hub, api, web, chromium, remote_repo
):
    agent_id = _spawn(api, remote_repo, "seq 1 10000")
    wait_for_state(agent_id, AgentState.COMPLETED)
    page = login(chromium, web, "operator", path=f"/dashboard/agents/{agent_id}/")

    _wait_until(page, "window.flotilla.log.lines.length >= 10000")
    page.wait_for_selector('.log-row >> text="10000"')  # follows the tail

    assert page.locator(".log-row").count() < 200
    page.eval_on_selector("#log", "log => { log.scrollTop = 0; }")
    page.wait_for_selector(".log-row.kind-state >> text=→ queued")
    assert page.locator('.log-row >> text="10000"').count() == 0
    page.uncheck('input[data-kind="output"]')
    _wait_until(page, "document.querySelectorAll('.log-row.kind-output').length === 0")
    assert page.locator(".log-row.kind-state").count() >= 6
    assert page.locator(".log-row").count() < 200


def test_only_staff_see_kill_all_and_halt_and_the_halt_banner_follows(
    hub, user, staff_user, web, chromium
):
    operator_page = login(chromium, web, "operator")
    assert operator_page.locator('[data-action="kill-all"], [data-action="halt"]').count() == 0
    assert operator_page.locator("[data-staff-controls]").count() == 0

    admin_page = login(chromium, web, "admin")
    admin_page.on("dialog", lambda dialog: dialog.accept())
    admin_page.fill('form:has([data-action="halt"]) input[name="reason"]', "maintenance")
    admin_page.click('[data-action="halt"]')
    admin_page.wait_for_selector('[data-banner="halted"] >> text=maintenance')

    operator_page.reload()
    assert "maintenance" in operator_page.inner_text('[data-banner="halted"]')
    admin_page.click('[data-action="release"]')
    admin_page.wait_for_selector('[data-action="halt"]')
    # The banner is also driven live over the hub socket; it must go, and stay gone.
    admin_page.wait_for_selector('[data-banner="halted"]', state="detached", timeout=5_000)
    admin_page.wait_for_timeout(500)
    assert admin_page.locator('[data-banner="halted"]').count() == 0
