"""The agent page in a real Chromium against a real daphne, with agents run by the real worker:
a failed agent is retried from its page (from the keyboard) and the new agent's page goes
live, and a Claude agent's page draws its cost and tokens per model turn over its run."""

import re

import pytest

from agents.models import AgentState
from killswitch.services import hub_halt, hub_release
from tests.conftest import git, make_remote, spawn_body, wait_for_state
from tests.dashboard.conftest import login, screenshot
from tests.messages_server import conversation, tool_use_reply, usage

# The browser sees the same pages on either database (tests/conftest.py, ONE_DATABASE_MODULES).
pytestmark = pytest.mark.one_database

AGENT_PAGE = re.compile(r"/dashboard/agents/([0-9a-f-]{36})/$")


def _failed_for_want_of_a_file(api, tmp_path):
    """A script agent that fails because its repository lacks ``ready.txt``, and that repository."""
    remote = make_remote(tmp_path)
    # The pause lets the page that opens on the retry watch it run.
    script = "sleep 2; test -f ready.txt && echo 'done on the retry' >> README.md"
    response = api.post(
        "/api/v1/agents", spawn_body(remote, script, task_id="flaky"), format="json"
    )
    assert response.status_code == 202, response.content
    failed = wait_for_state(response.json()["agent_id"], AgentState.FAILED, timeout=60)
    return failed, remote


def _push_ready(tmp_path, remote) -> None:
    seed = tmp_path / "remote-seed"
    (seed / "ready.txt").write_text("yes\n")
    git(seed, "add", "ready.txt")
    git(seed, "commit", "--quiet", "-m", "ready")
    git(seed, "push", "--quiet", str(remote), "main")


def test_a_user_retries_a_failed_agent_from_its_page_and_watches_the_new_one_run(
    hub, api, user, web, chromium, tmp_path
):
    failed, remote = _failed_for_want_of_a_file(api, tmp_path)
    page = login(chromium, web, "operator", path=f"/dashboard/agents/{failed.id}/")
    button = page.locator('[data-action="retry"]')
    assert button.is_visible() and button.inner_text() == "Retry"
    assert "new agent" in page.evaluate(
        "document.getElementById(document.querySelector('[data-action=retry]')"
        ".getAttribute('aria-describedby')).textContent"
    )

    # While the hub is halted the API refuses, and the page says why, at the button.
    hub_halt(reason="maintenance window", actor="user:admin")
    page.focus('[data-action="retry"]')
    assert page.evaluate("document.activeElement.matches(':focus-visible')")
    assert page.evaluate("getComputedStyle(document.activeElement).outlineStyle") != "none"
    page.keyboard.press("Enter")
    page.wait_for_selector("#retry-error:not([hidden])")
    assert "halted" in page.inner_text("#retry-error")
    assert page.evaluate("document.activeElement.id") == "retry-error"
    assert page.url.endswith(f"/dashboard/agents/{failed.id}/")

    # Released, and the repository fixed: Retry from the keyboard opens the new agent live.
    hub_release(actor="user:admin", reason="done")
    _push_ready(tmp_path, remote)
    page.focus('[data-action="retry"]')
    page.keyboard.press("Enter")
    page.wait_for_url(lambda url: AGENT_PAGE.search(url) and str(failed.id) not in url)
    retry_id = AGENT_PAGE.search(page.url).group(1)
    page.wait_for_selector("#connection[data-status=live]")
    assert page.get_attribute("[data-retry-of]", "data-retry-of") == str(failed.id)
    assert page.inner_text('[data-field="task_id"]') == "flaky"
    # The run ends while the page watches it: state, log and the report's notice arrive live.
    page.wait_for_selector('#agent[data-state="completed"]', timeout=60_000)
    page.wait_for_selector("#report-stale:not([hidden])")
    assert page.locator(".log-row.kind-state").count() >= 5
    assert page.is_hidden('[data-action="retry"]') or page.locator("#retry-form").count() == 0
    retry = wait_for_state(retry_id, AgentState.COMPLETED)
    assert retry.options["retry_of"] == str(failed.id) and retry.requested_by == "user:operator"
    assert "done on the retry" in git(remote, "show", f"{retry.work_branch}:README.md")
    screenshot(page, "agent-retried")

    # The failed agent's page now links to its retry, and still offers another.
    page.goto(f"{web.url}/dashboard/agents/{failed.id}/")
    assert page.get_attribute("[data-retried-as]", "data-retried-as") == retry_id
    assert page.is_visible('[data-action="retry"]')
    page.focus('[data-action="retry"]')
    screenshot(page, "agent-retry")


def test_a_live_agent_that_fails_shows_retry_without_a_reload(
    hub, api, user, web, chromium, tmp_path
):
    remote = make_remote(tmp_path)
    script = "sleep 3; exit 4"
    response = api.post(
        "/api/v1/agents", spawn_body(remote, script, task_id="slow-fail"), format="json"
    )
    agent_id = response.json()["agent_id"]
    page = login(chromium, web, "operator", path=f"/dashboard/agents/{agent_id}/")
    assert page.is_hidden('[data-action="retry"]')

    page.wait_for_selector('#agent[data-state="failed"]', timeout=60_000)

    page.wait_for_selector('[data-action="retry"]', state="visible")


def test_a_claude_agents_page_draws_its_cost_and_tokens_per_turn(
    claude_server, api, user, web, chromium, tmp_path
):
    remote = make_remote(tmp_path)
    claude_server.default = conversation(
        tool_use_reply(
            [("write_file", {"path": "NOTES.md", "content": "# Notes\n"})],
            usage_data=usage(1800, 240, cache_creation_input_tokens=1200),
            delay_s=0.4,
        ),
        tool_use_reply(
            [("commit", {"message": "Add notes"})],
            usage_data=usage(2100, 90, cache_read_input_tokens=1200),
            delay_s=0.4,
        ),
        tool_use_reply(
            [("finish", {"summary": "Notes added."})],
            usage_data=usage(2300, 60, cache_read_input_tokens=1200),
            delay_s=0.4,
        ),
    )
    body = {
        "task_id": "notes",
        "runtime": "claude",
        "context": {"repository": str(remote), "instructions": "Add a NOTES.md."},
    }
    response = api.post("/api/v1/agents", body, format="json")
    assert response.status_code == 202, response.content
    agent = wait_for_state(response.json()["agent_id"], AgentState.COMPLETED, timeout=90)

    page = login(chromium, web, "operator", path=f"/dashboard/agents/{agent.id}/")

    assert page.get_attribute("[data-usage-turns]", "data-usage-turns") == "3"
    assert page.locator('[data-chart="usage-cost"] circle.chart-dot').count() == 3
    series = page.eval_on_selector_all(
        '[data-chart="usage-tokens"] polyline', "lines => lines.map(l => l.dataset.series)"
    )
    assert series == ["input", "output", "cache read", "cache write"]
    # The chart's total is the agent's own.
    assert f"${agent.cost_usd:.6f} in all" in page.inner_text("#usage-series")
    page.locator("#usage-series").scroll_into_view_if_needed()
    screenshot(page, "agent-usage")
    # On a phone the charts shrink to the screen's width; nothing scrolls sideways.
    page.set_viewport_size({"width": 390, "height": 844})
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    assert page.locator('[data-chart="usage-cost"] svg').bounding_box()["width"] <= 390
    screenshot(page, "agent-usage-390")
