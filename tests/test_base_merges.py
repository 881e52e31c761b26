"""The base branch moved on: the hub merges it in before a push, and keeps rejected work visible.

These call ``agent_commit`` / ``agent_push`` and the runner's delivery
in-process, on agents prepared exactly as the worker prepares them (real
worktrees, real bwrap sandboxes, real git); tests/test_conflict_runs.py
drives whole runs through the API and the worker.
"""

import uuid

import pytest
from django.contrib.auth import get_user_model
from rest_framework.test import APIClient

from agents import runner, workspace
from agents.delivery import agent_commit, agent_push
from agents.lifecycle import agent_transition
from agents.models import Agent, AgentState
from agents.runtimes.base import RunOutcome
from agents.services import SpawnRequest
from tests.conftest import git, make_remote

README = "# sample\n\nIntro line.\n\nMiddle line.\n\nLast line.\n"


@pytest.fixture
def prepare(db, sandbox_toolchain, prepared_agents):
    """An agent of ``owner`` prepared as the worker prepares one: worktree, sandbox, context."""

    def prepare_agent(remote, *, gates: dict | None = None, max_retries: int = 0):
        request = SpawnRequest(
            task_id="task-merge",
            agent_type="worker",
            runtime="script",
            script="true",
            repository=str(remote),
            base_branch="main",
            max_retries=max_retries,
            options={"gates": gates} if gates else {},
        )
        return prepared_agents(request, requested_by="user:owner")

    yield prepare_agent


@pytest.fixture
def owner_api(db) -> APIClient:
    client = APIClient()
    client.force_authenticate(get_user_model().objects.create_user("owner"))
    return client


def write(context, relative: str, content: str) -> None:
    path = context.worktree / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content)


def main_moves_on(tmp_path, remote, files: dict[str, str], name: str = "someone") -> str:
    """Someone pushes ``files`` to main; returns main's new commit."""
    clone = tmp_path / name
    if not clone.exists():
        git(tmp_path, "clone", "--quiet", str(remote), str(clone))
    git(clone, "pull", "--quiet", "origin", "main")
    for relative, content in files.items():
        (clone / relative).parent.mkdir(parents=True, exist_ok=True)
        (clone / relative).write_text(content)
    git(clone, "add", "--all")
    git(clone, "commit", "--quiet", "-m", "main moves on")
    git(clone, "push", "--quiet", "origin", "main")
    return git(clone, "rev-parse", "HEAD")


def deliver(context) -> Agent:
    """What the runner does once a script agent's command is done: commit, then push."""
    # The agent was claimed (spawning) when it was prepared.
    assert agent_transition(agent_id=context.agent.id, to=AgentState.RUNNING)
    runner.agent_deliver(context=context, outcome=RunOutcome(succeeded=True, summary="done"))
    return Agent.objects.get(id=context.agent.id)


# --- a clean merge ---------------------------------------------------------------------------


def test_a_base_that_moved_is_merged_in_and_the_pre_push_gates_judge_the_merged_tree(
    prepare, tmp_path
):
    remote = make_remote(tmp_path, {"README.md": README, "other.txt": "x\n"})
    # The build gate runs before the push, in the sandbox: it sees main's new line only if
    # the worktree holds the merge.
    context = prepare(remote, gates={"build": "grep -q 'Last line, by a human.' README.md"})
    write(context, "README.md", README.replace("Intro line.", "Intro line, by the agent."))
    assert agent_commit(context=context, message="agent intro").approved
    main = main_moves_on(
        tmp_path,
        remote,
        {"README.md": README.replace("Last line.", "Last line, by a human."), "new.txt": "n\n"},
    )

    report = agent_push(context=context, summary="intro")

    assert report.approved, report.text
    assert "with main merged in" in report.message
    branch = context.agent.work_branch
    assert git(remote, "rev-parse", branch) == report.sha
    parents = git(remote, "rev-list", "--parents", "-n", "1", branch).split()[1:]
    assert len(parents) == 2 and parents[1] == main
    merged = git(remote, "show", f"{branch}:README.md")
    assert "Intro line, by the agent." in merged and "Last line, by a human." in merged
    assert (context.worktree / "new.txt").read_text() == "n\n"
    assert (context.worktree / "README.md").read_text() == merged + "\n"
    build = next(result for result in report.gates.results if result.gate == "build")
    assert build.passed


def test_the_worktree_gets_mains_binary_files_modes_and_deletions_exactly(prepare, tmp_path):
    remote = make_remote(tmp_path, {"README.md": README, "old.txt": "old\n", "run.sh": "echo\n"})
    context = prepare(remote)
    write(context, "README.md", README.replace("Intro line.", "Intro line, by the agent."))
    assert agent_commit(context=context, message="agent intro").approved
    clone = tmp_path / "someone"
    git(tmp_path, "clone", "--quiet", str(remote), str(clone))
    blob = bytes(range(256)) + b"\xff\xfe not text \x00\n"
    (clone / "assets").mkdir()
    (clone / "assets" / "logo.bin").write_bytes(blob)
    (clone / "run.sh").chmod(0o755)
    (clone / "old.txt").unlink()
    git(clone, "add", "--all")
    git(clone, "commit", "--quiet", "-m", "binary, mode, deletion")
    git(clone, "push", "--quiet", "origin", "main")

    report = agent_push(context=context, summary="intro")

    assert report.approved, report.text
    assert (context.worktree / "assets" / "logo.bin").read_bytes() == blob
    assert (context.worktree / "run.sh").stat().st_mode & 0o111
    assert not (context.worktree / "old.txt").exists()
    owner = (context.worktree / "README.md").stat().st_uid
    assert (context.worktree / "assets" / "logo.bin").stat().st_uid == owner
    # The hub's git sees the worktree exactly as the pushed merge.
    assert not workspace.worktree_changed(path=context.worktree)


def test_a_link_the_agent_planted_where_main_adds_a_file_is_never_followed(prepare, tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    remote = make_remote(tmp_path, {"README.md": README})
    context = prepare(remote)
    write(context, ".gitignore", "out\n")
    assert agent_commit(context=context, message="ignore out").approved
    (context.worktree / "out").symlink_to(victim)  # ignored, so never committed
    main_moves_on(tmp_path, remote, {"out/planted.txt": "from main\n"})

    with pytest.raises(workspace.WorkspaceError, match="out/planted.txt"):
        agent_push(context=context, summary="ignore out")

    assert list(victim.iterdir()) == []


# --- a conflict handed to an agent that can resolve it ---------------------------------------


def test_a_conflict_is_left_between_markers_for_the_agent_and_its_resolution_is_pushed(
    prepare, tmp_path
):
    remote = make_remote(tmp_path, {"README.md": README, "other.txt": "x\n"})
    context = prepare(remote)
    branch = context.agent.work_branch
    write(context, "README.md", README.replace("Middle line.", "Middle line, by the agent."))
    assert agent_commit(context=context, message="agent middle").approved
    main = main_moves_on(
        tmp_path,
        remote,
        {
            "README.md": README.replace("Middle line.", "Middle line, by a human."),
            "other.txt": "y\n",
        },
    )

    report = agent_push(context=context, summary="middle", resolves_conflicts=True)

    assert not report.approved
    assert report.conflicts == ("README.md",)
    assert "conflicts in: README.md" in report.text and "finish again" in report.text
    conflicts = next(result for result in report.gates.results if result.gate == "merge_conflicts")
    assert conflicts.details["files"] == ["README.md"]
    assert git(remote, "branch", "--list", branch) == ""
    # The worktree holds main's clean changes and both sides of the conflict.
    assert (context.worktree / "other.txt").read_text() == "y\n"
    conflicted = (context.worktree / "README.md").read_text()
    assert f"<<<<<<< refs/heads/{branch}\nMiddle line, by the agent.\n=======\n" in conflicted
    assert "Middle line, by a human.\n>>>>>>> refs/remotes/origin/main\n" in conflicted

    # Finishing with the markers still there is refused before any gate runs.
    refused = agent_commit(context=context, message="as it is")
    assert not refused.approved and "README.md:5" in refused.text

    write(context, "README.md", README.replace("Middle line.", "Middle line, by both."))
    assert agent_commit(context=context, message="resolve the conflict").approved
    pushed = agent_push(context=context, summary="middle", resolves_conflicts=True)

    assert pushed.approved, pushed.text
    assert git(remote, "merge-base", "--is-ancestor", main, branch) == ""
    assert git(remote, "show", f"{branch}:README.md") == README.replace(
        "Middle line.", "Middle line, by both."
    ).strip("\n")
    assert git(remote, "show", f"{branch}:other.txt") == "y"
    # No commit of the pushed branch holds a conflict marker.
    assert git(remote, "log", "-p", f"main..{branch}", "-G", "^<<<<<<< ") == ""


def test_a_script_agent_without_retries_fails_on_a_conflict_and_its_work_stays_downloadable(
    prepare, tmp_path, owner_api
):
    remote = make_remote(tmp_path, {"README.md": README})
    context = prepare(remote)
    write(context, "README.md", README.replace("Middle line.", "Middle line, by the agent."))
    main_moves_on(
        tmp_path, remote, {"README.md": README.replace("Middle line.", "Middle line, by a human.")}
    )

    agent = deliver(context)

    assert agent.state == AgentState.FAILED
    assert "conflicts in: README.md" in agent.error
    assert agent.result["gates"]["conflicts"] == ["README.md"]
    # Nothing was merged into the branch of a script: it keeps the agent's commit alone.
    mirror = workspace.mirror_path(str(remote))
    kept = git(mirror, "show", f"refs/heads/{agent.work_branch}:README.md")
    assert "Middle line, by the agent." in kept and "<<<<<<<" not in kept
    assert (
        workspace.branch_unpushed_commits(repository=str(remote), work_branch=agent.work_branch)
        == 1
    )
    response = owner_api.get(f"/api/v1/agents/{agent.id}/patch")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/x-diff")
    assert f'filename="agent-{agent.id}-attempt-0.patch"' in response["Content-Disposition"]
    patch = response.content.decode()
    assert "+Middle line, by the agent." in patch and "-Middle line." in patch
    assert "# Why the run ended:" in patch and "conflicts in: README.md" in patch


# --- rejected work is visible, without its secret --------------------------------------------

PASSWORD = "Qv7!zR2#kW9mX4pTe"
KEY_BODY = "MIIEowIBAAKCAQEA7yq3vLx9Qm"


def test_a_rejected_changes_patch_shows_the_diff_but_not_the_secret(prepare, tmp_path, owner_api):
    remote = make_remote(tmp_path, {"README.md": "# sample\n"})
    context = prepare(remote)
    write(
        context,
        "config/settings.py",
        f'DEBUG = False\nDB_PASSWORD = "{PASSWORD}"\nKEY = """-----BEGIN RSA '
        f'PRIVATE KEY-----\n{KEY_BODY}\n-----END RSA PRIVATE KEY-----"""\nTIMEOUT = 30\n',
    )
    write(context, "README.md", "# sample, configured\n")

    agent = deliver(context)

    assert agent.state == AgentState.FAILED
    assert "secret_scan" in agent.error
    patch = owner_api.get(f"/api/v1/agents/{agent.id}/patch").content.decode()
    assert "+DEBUG = False" in patch and "+TIMEOUT = 30" in patch
    assert "+# sample, configured" in patch
    assert "+[line removed by the hub: it holds a secret]" in patch
    assert "REJECTED by secret_scan" in patch  # the gate report comes with the diff
    for piece in (PASSWORD, PASSWORD[3:11], KEY_BODY, KEY_BODY[6:14]):
        assert piece not in patch
    # The dashboard shows the same diff, as kept.
    client = owner_api
    client.force_login(get_user_model().objects.get(username="owner"))
    page = client.get(f"/dashboard/agents/{agent.id}/diff/").content.decode()
    assert "TIMEOUT = 30" in page and "line removed by the hub" in page
    assert PASSWORD not in page and KEY_BODY not in page
    detail = client.get(f"/dashboard/agents/{agent.id}/").content.decode()
    assert f"/api/v1/agents/{agent.id}/patch?attempt=0" in detail


def test_a_patch_is_found_only_by_its_owner_and_bad_requests_get_the_error_envelope(
    prepare, tmp_path, owner_api
):
    remote = make_remote(tmp_path, {"README.md": "# sample\n"})
    context = prepare(remote)
    write(context, "config.py", 'DB_PASSWORD = "Zx9#mQ4!vB7kL2wP"\n')
    agent = deliver(context)
    other = APIClient()
    other.force_authenticate(get_user_model().objects.create_user("other"))

    answers = {
        "someone else's": other.get(f"/api/v1/agents/{agent.id}/patch"),
        "unknown": owner_api.get(f"/api/v1/agents/{uuid.uuid4()}/patch"),
        "not an id": owner_api.get("/api/v1/agents/not-a-uuid/patch"),
        "attempt never kept": owner_api.get(f"/api/v1/agents/{agent.id}/patch?attempt=7"),
    }
    for what, response in answers.items():
        assert response.status_code == 404, what
        assert response.json()["error"]["code"] == "not_found", what
    bad = owner_api.get(f"/api/v1/agents/{agent.id}/patch?attempt=-1")
    assert bad.status_code == 400 and "attempt" in bad.json()["error"]["fields"]
    assert owner_api.get(f"/api/v1/agents/{agent.id}/patch?attempt=0").status_code == 200


def test_a_completed_agents_patch_is_its_pushed_work(prepare, tmp_path, owner_api):
    remote = make_remote(tmp_path, {"README.md": "# sample\n"})
    context = prepare(remote)
    write(context, "README.md", "# sample, improved\n")

    agent = deliver(context)

    assert agent.state == AgentState.COMPLETED
    patch = owner_api.get(f"/api/v1/agents/{agent.id}/patch").content.decode()
    assert "-# sample\n+# sample, improved" in patch
    assert f"pushed {agent.result['pushed_commit']}" in patch
