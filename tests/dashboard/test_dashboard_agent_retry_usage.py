"""The agent page's Retry button and its usage and cost over the run, over HTTP.

The browser test (``test_dashboard_agent_retry_browser.py``) clicks Retry in
Chromium and watches the new agent run; here the page's HTML, the selector
that reads the model turns, the charts' geometry and the session + CSRF post
the button makes.
"""

import re
from datetime import timedelta
from decimal import Decimal

from django.test import Client
from django.utils import timezone

from agents.models import Agent, AgentEvent, AgentState
from agents.services import agent_event_append
from dashboard.charts import MAX_DOTS, MAX_LINE_POINTS, elapsed_text, usage_charts
from dashboard.selectors import agent_usage_turns
from tests.dashboard.test_dashboard_operator import agent_stored


def _client(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def _turn(agent: Agent, *, at, cost: str, tokens_in: int, tokens_out: int, role="assistant"):
    """A model turn as the runtimes record it: a transcript event with usage and cost."""
    event = agent_event_append(
        agent_id=agent.id,
        kind="transcript",
        data={
            "role": role,
            "content": [{"type": "text", "text": "working"}],
            "usage": {
                "input_tokens": tokens_in,
                "output_tokens": tokens_out,
                "cache_read_input_tokens": 10,
                "cache_creation_input_tokens": 0,
            },
            "cost_usd": cost,
        },
    )
    AgentEvent.objects.filter(id=event.id).update(created_at=at)


def _agent_with_turns(requested_by="user:operator", **fields) -> Agent:
    started = timezone.now() - timedelta(minutes=10)
    agent = agent_stored(
        requested_by,
        state=AgentState.COMPLETED,
        runtime="claude",
        started_at=started,
        finished_at=started + timedelta(minutes=4),
        **fields,
    )
    _turn(
        agent, at=started + timedelta(seconds=30), cost="0.010000", tokens_in=1000, tokens_out=200
    )
    # Not turns: a tool result, and a CLI's closing report (usage, but no cost of its own).
    agent_event_append(agent_id=agent.id, kind="transcript", data={"role": "tool", "text": "ok"})
    agent_event_append(
        agent_id=agent.id,
        kind="transcript",
        data={"role": "result", "text": "done", "usage": {"input_tokens": 99999}},
    )
    _turn(agent, at=started + timedelta(minutes=2), cost="0.025000", tokens_in=3000, tokens_out=500)
    _turn(agent, at=started + timedelta(minutes=3), cost="0.005000", tokens_in=500, tokens_out=100)
    return agent


# --- Usage and cost over the run ----------------------------------------------------


def test_the_selector_reads_each_model_turn_with_its_usage_and_cost_in_order(db):
    agent = _agent_with_turns()

    turns = agent_usage_turns(agent_id=agent.id)

    assert [(t.input_tokens, t.output_tokens, t.cache_read_tokens) for t in turns] == [
        (1000, 200, 10),
        (3000, 500, 10),
        (500, 100, 10),
    ]
    assert sum((t.cost_usd for t in turns), Decimal(0)) == Decimal("0.04")
    assert [t.at for t in turns] == sorted(t.at for t in turns)


def test_the_agent_page_draws_cost_and_tokens_per_turn_over_the_run(db, user):
    agent = _agent_with_turns()

    page = _client(user).get(f"/dashboard/agents/{agent.id}/").content.decode()

    assert "3 model turns over 4:00, $0.040000 in all" in page
    cost = page[page.index('data-chart="usage-cost"') :].split("</figure>")[0]
    tokens = page[page.index('data-chart="usage-tokens"') :].split("</figure>")[0]
    assert cost.count('<circle class="chart-dot') == 3
    assert "turn 2 at 2:00: $0.025000 ($0.035000 so far)" in cost
    # The cost axis tops at $0.05, the cumulative total of $0.04 just below it.
    assert "$0.050" in cost and "$0.025" in cost
    assert re.findall(r'data-series="([^"]+)"', tokens) == ["input", "output", "cache read"]
    assert "4:00" in cost and "0:00" in cost
    assert "No model usage" not in page


def test_an_agent_without_model_usage_says_so_instead_of_an_empty_chart(db, user):
    agent = agent_stored("user:operator", state=AgentState.COMPLETED)
    agent_event_append(agent_id=agent.id, kind="output", data={"lines": ["hello"]})

    page = _client(user).get(f"/dashboard/agents/{agent.id}/").content.decode()

    assert "No model usage." in page
    assert 'data-chart="usage-cost"' not in page


def test_the_lines_are_cumulative_steps_that_end_at_the_runs_end():
    from dashboard.selectors import UsageTurn

    start = timezone.now()
    turns = [
        UsageTurn(start + timedelta(seconds=s), 100, 10, 0, 0, Decimal("0.5")) for s in (10, 20, 30)
    ]

    charts = usage_charts(turns=turns, started_at=start, finished_at=start + timedelta(seconds=60))

    (line,) = charts["cost"].lines
    points = [tuple(map(float, p.split(","))) for p in line.points.split()]
    ys = [y for _, y in points]
    assert ys == sorted(ys, reverse=True)  # never falls: a running total
    assert points[0][0] < points[1][0] and points[-1][0] == charts["cost"].right_edge
    assert [label["text"] for label in charts["cost"].labels] == [
        "0:00",
        "0:15",
        "0:30",
        "0:45",
        "1:00",
    ]
    assert charts["total_cost_usd"] == "1.500000"
    # A short run is labelled in seconds, a long one in minutes and hours.
    assert (elapsed_text(1.25, 3), elapsed_text(42, 50), elapsed_text(3725, 4000)) == (
        "1.2 s",
        "42 s",
        "1:02:05",
    )
    # Series without any tokens are left out; input and output always show.
    assert [line.label for line in charts["tokens"].lines] == ["input", "output"]


def test_a_long_run_is_drawn_with_a_bounded_number_of_points(db):
    start = timezone.now()
    from dashboard.selectors import UsageTurn

    turns = [
        UsageTurn(start + timedelta(seconds=n), 1, 1, 0, 0, Decimal("0.001")) for n in range(5000)
    ]

    charts = usage_charts(turns=turns, started_at=start, finished_at=None)

    for line in charts["cost"].lines + charts["tokens"].lines:
        assert len(line.points.split()) <= 2 * MAX_LINE_POINTS + 2
    assert not charts["cost"].dots and len(turns) > MAX_DOTS
    assert charts["turns"] == 5000


# --- Retry ------------------------------------------------------------------------------


def _retry_form(page: str) -> str | None:
    found = re.search(r'<form class="retry-form"[^>]*>', page)
    return found.group(0) if found else None


def test_a_failed_agent_of_the_viewer_offers_retry_and_a_completed_one_does_not(db, user):
    failed = agent_stored("user:operator", state=AgentState.FAILED)
    killed = agent_stored("user:operator", state=AgentState.KILLED)
    completed = agent_stored("user:operator", state=AgentState.COMPLETED)
    running = agent_stored("user:operator", state=AgentState.RUNNING)
    client = _client(user)

    def form(agent):
        return _retry_form(client.get(f"/dashboard/agents/{agent.id}/").content.decode())

    for agent in (failed, killed):
        shown = form(agent)
        assert shown and " hidden" not in shown
        assert f'action="/api/v1/agents/{agent.id}/retry"' in shown
    assert form(completed) is None
    # A live agent's button waits hidden until the page sees it fail or be killed.
    waiting = form(running)
    assert (
        waiting and waiting.endswith(" hidden>") and 'data-retry-states="failed killed"' in waiting
    )


def test_an_agent_a_peer_asked_for_offers_no_retry_even_to_staff(db, staff_user):
    from_peer = agent_stored("peer:hub-b", state=AgentState.FAILED, origin="hub-b")

    page = _client(staff_user).get(f"/dashboard/agents/{from_peer.id}/").content.decode()

    assert _retry_form(page) is None


def test_the_buttons_session_post_needs_the_csrf_token_and_links_both_agents(db, user, settings):
    settings.FLOTILLA_NODE_POOL = "unserved"
    failed = agent_stored("user:operator", state=AgentState.FAILED, task_id="flaky")
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    page = client.get(f"/dashboard/agents/{failed.id}/").content.decode()
    token = re.search(
        r'id="retry-form".*?name="csrfmiddlewaretoken" value="([^"]+)"', page, re.S
    ).group(1)
    url = f"/api/v1/agents/{failed.id}/retry"

    refused = client.post(url, {}, content_type="application/json")
    assert refused.status_code == 403  # the session alone is not enough
    response = client.post(url, {}, content_type="application/json", HTTP_X_CSRFTOKEN=token)

    assert response.status_code == 202, response.content
    retry_id = response.json()["agent_id"]
    old_page = client.get(f"/dashboard/agents/{failed.id}/").content.decode()
    new_page = client.get(f"/dashboard/agents/{retry_id}/").content.decode()
    assert f'data-retried-as="{retry_id}"' in old_page
    assert f'data-retry-of="{failed.id}"' in new_page


def test_another_users_retry_is_not_linked_from_the_owners_page(db, user, staff_user, settings):
    settings.FLOTILLA_NODE_POOL = "unserved"
    mine = agent_stored("user:operator", state=AgentState.FAILED)
    staff_retry = _client(staff_user).post(
        f"/api/v1/agents/{mine.id}/retry", {}, content_type="application/json"
    )
    assert staff_retry.status_code == 202

    page = _client(user).get(f"/dashboard/agents/{mine.id}/").content.decode()

    assert "data-retried-as" not in page
    assert staff_retry.json()["agent_id"] not in page
