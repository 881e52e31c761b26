"""The operator's pages of issue 17, over HTTP: the filtered list, health, the spawn form,
the agent's report (gates, network, usage) and its diff, and the activity plots.

The diffs come from real git repositories and the hub's real mirror; the
browser tests (``test_dashboard_operator_browser.py``) drive the same pages
with agents run by the real worker.
"""

import re
from datetime import datetime
from decimal import Decimal

import pytest
from django.test import Client
from django.utils import timezone

from agents import workspace
from agents.models import Agent, AgentState
from agents.services import agent_event_append
from dashboard.diffs import DIFF_FILE_MAX_LINES, DIFF_FILES_PER_PAGE, diff_blocks
from dashboard.selectors import AGENTS_PAGE_SIZE
from tests.conftest import git, make_remote
from tests.owners import REPOSITORY


def agent_stored(requested_by: str, *, state: str = AgentState.QUEUED, **fields) -> Agent:
    """An agent as ``agent_spawn`` stores it (any field may be given), never queued for a worker."""
    values = {
        "task_id": "ownership",
        "agent_type": "worker",
        "runtime": "script",
        "script": "true",
        "repository": REPOSITORY,
        "base_branch": "main",
        "sandbox_backend": "process",
        "timeout_s": 60,
        # A pool no worker node serves: the row is the queue, and nobody claims it.
        "pool": "unserved",
        **fields,
    }
    agent = Agent.objects.create(requested_by=requested_by, state=state, **values)
    Agent.objects.filter(id=agent.id).update(work_branch=f"flotilla/{agent.id}")
    agent_event_append(agent_id=agent.id, kind="state", data={"from": None, "to": state})
    agent.refresh_from_db()
    return agent


def _client(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def _listed(page: str) -> set[str]:
    return set(re.findall(r'<tr class="agent-row" data-agent-id="([0-9a-f-]{36})"', page))


# --- The agents list ----------------------------------------------------------


def test_the_list_filters_by_state_runtime_repository_origin_and_task_id(db, user):
    queued = agent_stored("user:operator", task_id="alpha-1")
    completed = agent_stored("user:operator", state=AgentState.COMPLETED, task_id="beta-2")
    claude = agent_stored("user:operator", runtime="claude", task_id="gamma-3")
    elsewhere = agent_stored("user:operator", repository="/srv/other.git", origin="hub-b")
    client = _client(user)

    def listed(query: str) -> set[str]:
        return _listed(client.get(f"/dashboard/?{query}").content.decode())

    assert listed("") == {str(a.id) for a in (queued, completed, claude, elsewhere)}
    assert listed("state=completed") == {str(completed.id)}
    assert listed("runtime=claude") == {str(claude.id)}
    assert listed("repository=/srv/other.git") == {str(elsewhere.id)}
    assert listed("origin=hub-b") == {str(elsewhere.id)}
    assert listed("task=BETA") == {str(completed.id)}
    assert listed("state=queued&runtime=claude") == {str(claude.id)}
    # A stale or malformed filter is dropped, never a 500.
    assert listed("state=nonsense&page=abc") == listed("")


def test_a_user_never_sees_another_users_agents_and_only_staff_filter_by_owner(
    db, user, staff_user
):
    mine = agent_stored("user:operator")
    theirs = agent_stored("user:other", task_id="secret-task")

    page = _client(user).get("/dashboard/?owner=user:other").content.decode()
    assert _listed(page) == {str(mine.id)}
    assert "secret-task" not in page and "user:other" not in page
    assert 'name="owner"' not in page

    staff = _client(staff_user)
    staff_page = staff.get("/dashboard/").content.decode()
    assert _listed(staff_page) == {str(mine.id), str(theirs.id)}
    assert '<option value="user:other">' in staff_page
    assert _listed(staff.get("/dashboard/?owner=user:other").content.decode()) == {str(theirs.id)}


def test_someone_elses_agent_page_and_diff_answer_404_like_an_unknown_id(db, user):
    theirs = agent_stored("user:other")
    client = _client(user)

    for path in [
        f"/dashboard/agents/{theirs.id}/",
        f"/dashboard/agents/{theirs.id}/diff/",
        "/dashboard/agents/00000000-0000-0000-0000-000000000000/diff/",
        "/dashboard/agents/not-a-uuid/diff/",
    ]:
        response = client.get(path)
        assert response.status_code == 404, path
        assert str(theirs.id) not in response.content.decode()


def test_the_list_pages_through_many_agents_a_page_at_a_time_newest_first(db, user):
    template = agent_stored("user:operator")
    Agent.objects.bulk_create(
        Agent(
            task_id=f"bulk-{n:03d}",
            agent_type="worker",
            runtime="script",
            repository=template.repository,
            base_branch="main",
            work_branch=f"flotilla/bulk-{n}",
            sandbox_backend="process",
            timeout_s=60,
            requested_by="user:operator",
            state=AgentState.COMPLETED if n % 2 else AgentState.FAILED,
        )
        for n in range(2 * AGENTS_PAGE_SIZE + 10)
    )
    client = _client(user)
    total = 2 * AGENTS_PAGE_SIZE + 11

    pages = [client.get(f"/dashboard/?page={n}").content.decode() for n in (1, 2, 3)]

    seen = [_listed(page) for page in pages]
    assert [len(ids) for ids in seen] == [AGENTS_PAGE_SIZE, AGENTS_PAGE_SIZE, 11]
    assert len(set().union(*seen)) == total
    assert f'data-total="{total}"' in pages[0]
    assert "data-live-insert" in pages[0] and "data-live-insert" not in pages[1]
    assert 'data-page="next"' in pages[0] and 'data-page="next"' not in pages[2]
    # Filters stay in the page links.
    failed = client.get("/dashboard/?state=failed").content.decode()
    assert 'href="?state=failed&amp;page=2"' in failed
    # A page past the end shows the last page.
    assert _listed(client.get("/dashboard/?page=99").content.decode()) == seen[2]


def test_each_row_shows_the_agents_cost(db, user):
    agent = agent_stored("user:operator", cost_usd=Decimal("1.234567"))

    page = _client(user).get("/dashboard/").content.decode()

    row = page[page.index(f'data-agent-id="{agent.id}"') :]
    assert '$<span data-field="cost_usd">1.23</span>' in row[: row.index("</tr>")]


# --- Health and the footer ----------------------------------------------------


def test_health_answers_uptime_and_a_utc_timestamp_and_the_footer_names_version_and_node(
    db, user, settings
):
    settings.FLOTILLA_NODE_NAME = "node-17"
    body = Client().get("/api/v1/health").json()

    assert isinstance(body["uptime"], int | float) and body["uptime"] >= 0
    moment = datetime.fromisoformat(body["timestamp"].replace("Z", "+00:00"))
    assert moment.utcoffset().total_seconds() == 0
    assert body["timestamp"].endswith("Z")
    assert abs((timezone.now() - moment).total_seconds()) < 3600
    assert body["version"] == "0.1.0" and body["node"] == "node-17"
    assert body["status"] == "ok" and "live_agents" in body

    page = _client(user).get("/dashboard/").content.decode()
    assert '<span data-footer="version">0.1.0</span>' in page
    assert '<span data-footer="node">node-17</span>' in page


# --- The spawn form -------------------------------------------------------------


def test_the_spawn_form_offers_every_runtime_and_the_operators_maxima(db, user, settings):
    settings.FLOTILLA_MAX_MEMORY_MB = 2048
    page = _client(user).get("/dashboard/agents/new/").content.decode()

    for runtime in ("script", "claude", "claude-code", "codex"):
        assert f'<option value="{runtime}"' in page
    assert 'name="options.memory_mb"' in page and 'max="2048"' in page
    assert "at most 2048" in page
    for mode in ("off", "allowlist", "on"):
        assert f'name="options.network" value="{mode}"' in page


def test_a_cli_runtime_that_is_not_installed_is_offered_disabled_with_the_reason(db, user):
    from agents.runtimes import runtime_unavailable

    page = _client(user).get("/dashboard/agents/new/").content.decode()

    for runtime in ("claude-code", "codex"):
        reason = runtime_unavailable(runtime)
        option = re.search(rf'<option value="{runtime}"[^>]*>', page).group(0)
        assert ("disabled" in option) == bool(reason)
        if reason:
            assert f'data-runtime-unavailable="{runtime}"' in page


def test_the_forms_session_post_gets_the_apis_field_errors_under_the_forms_field_names(
    db, user, tmp_path
):
    """The form posts JSON to the API with the session and CSRF token; each error it gets
    back names a field the form has a slot for."""
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    page = client.get("/dashboard/agents/new/").content.decode()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)
    slots = set(re.findall(r'data-error-for="([^"]+)"', page))
    body = {
        "task_id": "bad id!",
        "runtime": "script",
        "script": "",
        "context": {"repository": str(tmp_path / "missing.git"), "branch": "a..b"},
        "options": {
            "memory_mb": 10**9,
            "network": "sometimes",
            "budget_usd": "x",
            "allow_hosts": ["not-on-the-operators-list.example"],
        },
    }

    refused = client.post("/api/v1/agents", body, content_type="application/json")
    assert refused.status_code == 403  # no CSRF token: the session alone is not enough
    response = client.post(
        "/api/v1/agents", body, content_type="application/json", HTTP_X_CSRFTOKEN=token
    )

    assert response.status_code == 400
    fields = response.json()["error"]["fields"]
    assert {
        "task_id",
        "context.repository",
        "context.branch",
        "options.memory_mb",
        "options.network",
        "options.budget_usd",
        "options.allow_hosts",
    } <= set(fields)
    assert set(fields) <= slots
    assert "FLOTILLA_MAX_MEMORY_MB" in fields["options.memory_mb"][0]
    assert not Agent.objects.exists()


# --- The agent's report ---------------------------------------------------------


def test_the_agent_page_shows_the_gate_table_failing_tests_and_only_masked_secrets(db, user):
    agent = agent_stored(
        "user:operator",
        state=AgentState.FAILED,
        result={
            "pushed_commit": None,
            "gates": {"approved": False, "message": "not committed: the gates rejected it"},
        },
    )
    agent_event_append(
        agent_id=agent.id,
        kind="gate",
        data={
            "stage": "pre-commit",
            "gate": "tests",
            "outcome": "failed",
            "passed": False,
            "summary": "failing: test_calc.py::test_add",
            "output": "FAILED test_calc.py::test_add - assert -1 == 3",
            "duration_s": 1.25,
            "details": {"failing_tests": ["test_calc.py::test_add"], "exit_code": 1},
        },
    )
    agent_event_append(
        agent_id=agent.id,
        kind="gate",
        data={
            "stage": "pre-commit",
            "gate": "secret_scan",
            "outcome": "failed",
            "passed": False,
            "summary": "1 secret(s) in added lines: AWS Access Key at deploy.py:1",
            "duration_s": 0.01,
            "details": {
                "findings": [
                    {
                        "file": "deploy.py",
                        "line": 1,
                        "kind": "AWS Access Key",
                        "masked": "AKIA…HKP4N",
                    }
                ]
            },
        },
    )

    page = _client(user).get(f"/dashboard/agents/{agent.id}/").content.decode()

    assert 'data-gate="tests" data-outcome="failed"' in page
    assert "<code data-failing-test>test_calc.py::test_add</code>" in page
    assert "<code data-masked>AKIA…HKP4N</code>" in page
    assert "AWS Access Key" in page and "1.25 s" in page
    assert "not committed: the gates rejected it" in page


def test_the_agent_page_lists_its_network_connections_allowed_and_refused(db, user):
    agent = agent_stored("user:operator", network="allowlist")
    for host, allowed in (("pypi.org", True), ("evil.example", False)):
        agent_event_append(
            agent_id=agent.id,
            kind="network",
            data={
                "event": "connection",
                "method": "CONNECT",
                "host": host,
                "port": 443,
                "address": "192.0.2.1" if allowed else None,
                "allowed": allowed,
                "reason": "allowed" if allowed else "evil.example is not in the allowlist",
                "end": "closed",
                "bytes_up": 100,
                "bytes_down": 2048,
            },
        )

    page = _client(user).get(f"/dashboard/agents/{agent.id}/").content.decode()

    assert 'data-connection-host="pypi.org" data-allowed="true"' in page
    assert 'data-connection-host="evil.example" data-allowed="false"' in page
    assert "evil.example is not in the allowlist" in page
    assert "1 allowed, 1 refused" in page


def test_the_agent_page_shows_usage_and_cost_against_the_budget(db, user):
    agent = agent_stored(
        "user:operator",
        input_tokens=1200,
        output_tokens=340,
        cost_usd=Decimal("0.0421"),
        options={"budget_usd": "5.00"},
    )

    page = _client(user).get(f"/dashboard/agents/{agent.id}/").content.decode()

    assert '$<span data-usage="cost_usd">0.0421</span> of a $5.00 budget' in page
    assert '<dd data-usage="input_tokens">1200</dd>' in page


# --- The diff -----------------------------------------------------------------


def _pushed_agent(tmp_path, files: dict[str, str], changes: dict[str, str | None]) -> Agent:
    """An agent whose branch (one commit of ``changes`` on main) was pushed to a real remote,
    with the hub's mirror fetched as after a push. None deletes a file."""
    remote = make_remote(tmp_path, files)
    agent = agent_stored("user:operator", state=AgentState.COMPLETED, repository=str(remote))
    agent.refresh_from_db()
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "--quiet", str(remote), str(clone))
    git(clone, "checkout", "--quiet", "-b", agent.work_branch)
    for path, content in changes.items():
        target = clone / path
        if content is None:
            target.unlink()
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(content)
    git(clone, "add", "--all")
    git(clone, "commit", "--quiet", "-m", "agent work")
    git(clone, "push", "--quiet", "origin", agent.work_branch)
    sha = git(clone, "rev-parse", "HEAD")
    workspace.mirror_sync(str(remote))
    Agent.objects.filter(id=agent.id).update(result={"pushed_commit": sha})
    agent.refresh_from_db()
    return agent


def test_the_diff_of_a_pushed_agent_shows_each_changed_file_and_line(db, user, tmp_path):
    agent = _pushed_agent(
        tmp_path,
        {"README.md": "# sample\n", "app.py": "x = 1\ny = 2\n", "old.txt": "bye\n"},
        {"app.py": "x = 1\ny = 3\n", "new dir/[weird] *name*.txt": "hello\n", "old.txt": None},
    )

    page = _client(user).get(f"/dashboard/agents/{agent.id}/diff/").content.decode()

    assert "3 files changed" in page
    assert re.search(r'<tr class="diff-del">.*?y = 2</td>', page)
    assert re.search(r'<tr class="diff-add">.*?y = 3</td>', page)
    assert re.search(r'<tr class="diff-add">.*?hello</td>', page)
    assert 'data-path="new dir/[weird] *name*.txt"' in page
    assert 'data-path="old.txt"' in page and "README.md" not in page


def test_an_agent_without_a_commit_says_so_instead_of_a_diff(db, user, tmp_path):
    remote = make_remote(tmp_path)
    workspace.mirror_sync(str(remote))
    agent = agent_stored("user:operator", state=AgentState.RUNNING, repository=str(remote))

    page = _client(user).get(f"/dashboard/agents/{agent.id}/diff/").content.decode()

    assert 'id="diff-problem"' in page and "committed nothing yet" in page


def test_a_large_diff_is_paged_by_files_and_a_huge_file_is_not_inlined(db, user, tmp_path):
    many = {f"f{n:03d}.txt": f"line {n}\n" for n in range(DIFF_FILES_PER_PAGE + 5)}
    many["zz-huge.txt"] = "".join(f"{n}\n" for n in range(DIFF_FILE_MAX_LINES + 1))
    agent = _pushed_agent(tmp_path, {"README.md": "# sample\n"}, many)
    client = _client(user)

    first = client.get(f"/dashboard/agents/{agent.id}/diff/").content.decode()
    second = client.get(f"/dashboard/agents/{agent.id}/diff/?page=2").content.decode()

    assert first.count('class="diff-file"') == DIFF_FILES_PER_PAGE
    assert second.count('class="diff-file"') == 6
    assert 'data-page="next"' in first and 'data-page="previous"' in second
    assert "Too large to show here" in second and "line 24" in second
    assert f"{DIFF_FILE_MAX_LINES + 1}\n" not in second


def test_diff_lines_are_numbered_from_their_hunk_headers():
    text = (
        "diff --git a/a.py b/a.py\nindex 1..2 100644\n--- a/a.py\n+++ b/a.py\n"
        "@@ -10,3 +10,3 @@ def f():\n ctx\n-old\n+new\n\\ No newline at end of file\n"
        "diff --git a/b.bin b/b.bin\nBinary files a/b.bin and b/b.bin differ"
    )

    first, second = diff_blocks(text)

    assert [(line.kind, line.text, line.old, line.new) for line in first] == [
        ("hunk", "@@ -10,3 +10,3 @@ def f():", None, None),
        ("ctx", "ctx", 10, 10),
        ("del", "old", 11, None),
        ("add", "new", None, 11),
        ("note", "\\ No newline at end of file", None, None),
    ]
    assert [line.kind for line in second] == ["note"]


# --- Activity plots -----------------------------------------------------------


def test_the_activity_page_draws_agents_by_state_and_spend_per_day_as_svg(db, user):
    agent_stored("user:operator", state=AgentState.COMPLETED, cost_usd=Decimal("2.50"))
    agent_stored("user:operator", state=AgentState.FAILED, cost_usd=Decimal("0.50"))
    agent_stored("user:other", state=AgentState.KILLED, cost_usd=Decimal("100"))

    page = _client(user).get("/dashboard/activity/").content.decode()

    today = timezone.localdate()
    assert f"{today:%Y-%m-%d}: 1 completed" in page
    assert f"{today:%Y-%m-%d}: 1 failed" in page
    assert "killed" not in page.split('data-chart="states"')[1].split("</figure>")[0]
    assert f"{today:%Y-%m-%d}: $3.0000" in page
    assert "$3.00" in page and "<script" not in page.split("<main>")[1].split("</main>")[0]
    assert page.count('<svg class="chart-svg"') == 2


@pytest.mark.parametrize("path", ["/dashboard/agents/new/", "/dashboard/activity/"])
def test_the_new_pages_need_a_login(db, path):
    response = Client().get(path)
    assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")


def test_a_mirror_that_lacks_the_pushed_commit_is_fetched_once_to_show_the_diff(db, user, tmp_path):
    remote = make_remote(tmp_path, {"README.md": "# sample\n"})
    workspace.mirror_sync(str(remote))  # the mirror as it was before the push
    agent = agent_stored("user:operator", state=AgentState.COMPLETED, repository=str(remote))
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "--quiet", str(remote), str(clone))
    git(clone, "checkout", "--quiet", "-b", agent.work_branch)
    (clone / "README.md").write_text("# sample\npushed from another node\n")
    git(clone, "commit", "--quiet", "-am", "agent work")
    git(clone, "push", "--quiet", "origin", agent.work_branch)
    Agent.objects.filter(id=agent.id).update(
        result={"pushed_commit": git(clone, "rev-parse", "HEAD")}
    )

    page = _client(user).get(f"/dashboard/agents/{agent.id}/diff/").content.decode()

    assert re.search(r'<tr class="diff-add">.*?pushed from another node</td>', page)


def test_a_pushed_commit_that_is_not_a_sha_is_never_handed_to_git(db, user, tmp_path):
    remote = make_remote(tmp_path)
    workspace.mirror_sync(str(remote))
    agent = agent_stored(
        "user:operator",
        state=AgentState.COMPLETED,
        repository=str(remote),
        result={"pushed_commit": "--output=/tmp/owned"},
    )

    page = _client(user).get(f"/dashboard/agents/{agent.id}/diff/").content.decode()

    assert "committed nothing yet" in page


def test_the_project_form_offers_modes_failure_policies_and_the_users_repositories(db, user):
    agent_stored("user:operator", repository="/srv/mine.git")
    agent_stored("user:other", repository="/srv/theirs.git")

    page = _client(user).get("/dashboard/projects/new/").content.decode()

    for mode in ("dag", "sequential", "parallel"):
        assert f'<option value="{mode}"' in page
    assert '<option value="continue" selected>' in page
    assert '<option value="/srv/mine.git">' in page and "/srv/theirs.git" not in page
    assert 'action="/api/v1/projects"' in page
