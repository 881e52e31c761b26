"""The hub's git on an agent's worktree reads the agent's files as data and nothing more.

Each attack plants git configuration that would run a command: in a
repository nested in the worktree (``git init`` in ``sub/``), behind a
``sub/.git`` file pointing at a crafted git directory, or at the top of the
worktree. The command would create a marker file on the host, in a directory
anyone may write to, so it shows up wherever outside a sandbox it runs and as
whichever user. The marker must never appear; a nested repository is refused
by name; the hub keeps answering.
"""

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from rest_framework.test import APIClient

from agents.models import AgentState
from tests.conftest import git, spawn_body, wait_for_state
from tests.messages_server import conversation, tool_results, tool_use_reply

# The agent's own git inside its sandbox needs an identity and a writable home
# (and no system config: the sandbox cannot read the host's /etc/gitconfig).
AGENT_GIT = (
    "export HOME=/tmp GIT_CONFIG_NOSYSTEM=1 GIT_AUTHOR_NAME=agent "
    "GIT_AUTHOR_EMAIL=agent@example.com GIT_COMMITTER_NAME=agent "
    "GIT_COMMITTER_EMAIL=agent@example.com; set -e; "
)
NESTED_REPOSITORY = (
    "mkdir sub; cd sub; git init --quiet; echo nested > file.txt; git add file.txt; "
    "git commit --quiet -m nested; "
)
HOOKS = "pre-commit post-commit post-checkout post-index-change reference-transaction"


def fsmonitor_in_a_nested_repository(hostile: str) -> str:
    return NESTED_REPOSITORY + f"git config core.fsmonitor '{hostile}; false'"


def hooks_path_and_hooks_in_a_nested_repository(hostile: str) -> str:
    return NESTED_REPOSITORY + (
        f"mkdir hooks; for hook in {HOOKS}; do "
        f"printf '#!/bin/sh\\n{hostile}\\n' > hooks/$hook; chmod +x hooks/$hook; "
        "cp hooks/$hook .git/hooks/$hook; done; git config core.hooksPath hooks"
    )


def pager_in_a_nested_repository(hostile: str) -> str:
    return NESTED_REPOSITORY + (
        f"git config core.pager '{hostile}; cat'; git config pager.status true; "
        "git config pager.diff true; git config pager.log true"
    )


def filter_driver_configured_in_a_nested_repository(hostile: str) -> str:
    # The top-level .gitattributes names the driver too: only the nested
    # repository's config says what it runs.
    return NESTED_REPOSITORY + (
        "printf '* filter=hostile diff=hostile\\n' > .gitattributes; "
        "cp .gitattributes ../.gitattributes; "
        f"git config filter.hostile.clean '{hostile}; cat'; "
        f"git config filter.hostile.smudge '{hostile}; cat'; "
        f"git config filter.hostile.process '{hostile}'; "
        f"git config diff.hostile.textconv '{hostile}; cat'; "
        "echo changed >> file.txt"
    )


def gitdir_file_pointing_at_a_crafted_git_dir(hostile: str) -> str:
    return (
        "git init --quiet --bare crafted; "
        "git --git-dir=crafted config core.bare false; "
        f"git --git-dir=crafted config core.fsmonitor '{hostile}; false'; "
        f"git --git-dir=crafted config core.pager '{hostile}; cat'; "
        "mkdir sub; echo 'gitdir: ../crafted' > sub/.git; echo nested > sub/file.txt; "
        "cd sub; git add file.txt; git commit --quiet -m nested"
    )


NESTED_ATTACKS = [
    fsmonitor_in_a_nested_repository,
    hooks_path_and_hooks_in_a_nested_repository,
    pager_in_a_nested_repository,
    filter_driver_configured_in_a_nested_repository,
    gitdir_file_pointing_at_a_crafted_git_dir,
]


def configuration_planted_at_the_top_of_the_worktree(hostile: str) -> str:
    config = (
        f"[core]\\n\\tfsmonitor = {hostile}; false\\n\\tpager = {hostile}; cat\\n"
        "\\thooksPath = hooks\\n\\tbare = true\\n"
        f'[filter "hostile"]\\n\\tclean = {hostile}; cat\\n\\tsmudge = {hostile}; cat\\n'
        f'[diff "hostile"]\\n\\ttextconv = {hostile}; cat\\n'
    )
    return (
        "printf '* filter=hostile diff=hostile merge=hostile\\n' > .gitattributes; "
        f"printf '{config}' > .gitconfig; cp .gitconfig config; "
        "echo 'ref: refs/heads/main' > HEAD; mkdir -p hooks objects/info refs/heads; "
        f"printf '#!/bin/sh\\n{hostile}\\n' > hooks/pre-commit; chmod +x hooks/pre-commit; "
        f"printf '[submodule \"x\"]\\n\\tpath = x\\n\\turl = ./x\\n\\tupdate = !{hostile}\\n' "
        "> .gitmodules; echo planted > planted.txt"
    )


FINAL = {AgentState.COMPLETED, AgentState.FAILED}
BACKENDS = ["bwrap", pytest.param("docker", marks=pytest.mark.docker)]


@pytest.fixture
def marker() -> Iterator[Path]:
    """A path on the host that any user could create, and no sandbox can see."""
    directory = Path(tempfile.mkdtemp(prefix="flotilla-hostile-git-"))
    directory.chmod(0o777)
    yield directory / "hostile-command-ran"
    shutil.rmtree(directory, ignore_errors=True)


def assert_the_hub_still_answers() -> None:
    assert APIClient().get("/api/v1/health").status_code == 200


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("attack", NESTED_ATTACKS, ids=lambda attack: attack.__name__)
def test_a_nested_repository_is_refused_by_name_and_its_git_config_never_runs(
    hub, api, remote_repo, marker, attack, backend
):
    script = AGENT_GIT + attack(f"touch {marker}")
    response = api.post(
        "/api/v1/agents", spawn_body(remote_repo, script, sandbox=backend), format="json"
    )
    assert response.status_code == 202, response.content

    agent = wait_for_state(response.json()["agent_id"], FINAL, timeout=60)

    assert not marker.exists()
    assert agent.state == AgentState.FAILED
    assert "nested repository sub/ is not allowed" in agent.error
    assert f"flotilla/{agent.id}" not in git(remote_repo, "branch", "--list")
    assert_the_hub_still_answers()


@pytest.mark.parametrize("backend", BACKENDS)
def test_git_configuration_planted_at_the_top_of_the_worktree_is_committed_as_plain_files(
    hub, api, remote_repo, marker, backend
):
    script = AGENT_GIT + configuration_planted_at_the_top_of_the_worktree(f"touch {marker}")
    response = api.post(
        "/api/v1/agents", spawn_body(remote_repo, script, sandbox=backend), format="json"
    )
    assert response.status_code == 202, response.content

    agent = wait_for_state(response.json()["agent_id"], FINAL, timeout=60)

    assert not marker.exists()
    assert agent.state == AgentState.COMPLETED, agent.error
    branch = f"flotilla/{agent.id}"
    assert git(remote_repo, "show", f"{branch}:planted.txt") == "planted"
    assert "fsmonitor" in git(remote_repo, "show", f"{branch}:.gitconfig")
    assert_the_hub_still_answers()


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_claude_agent_that_plants_an_fsmonitor_in_a_nested_repository_reads_the_refusal(
    claude_server, api, remote_repo, marker, backend
):
    plant = AGENT_GIT + fsmonitor_in_a_nested_repository(f"touch {marker}")
    claude_server.default = conversation(
        tool_use_reply([("run_command", {"command": plant})]),
        tool_use_reply([("commit", {"message": "Add sub"})]),
        tool_use_reply([("finish", {"summary": "Added sub."})]),
        tool_use_reply([("run_command", {"command": "rm -rf sub && echo kept > kept.txt"})]),
        tool_use_reply([("finish", {"summary": "Removed the nested repository."})]),
    )
    body = {
        "task_id": "plant-fsmonitor",
        "agent_type": "worker",
        "runtime": "claude",
        "context": {"repository": str(remote_repo), "branch": "main", "instructions": "Work."},
        "options": {"sandbox": backend},
    }
    response = api.post("/api/v1/agents", body, format="json")
    assert response.status_code == 202, response.content

    agent = wait_for_state(response.json()["agent_id"], FINAL, timeout=90)

    assert not marker.exists()
    assert agent.state == AgentState.COMPLETED, agent.error
    planted = tool_results(claude_server.requests[1]["body"])[0]
    assert planted["content"].startswith("exit code 0"), planted["content"]
    refused = tool_results(claude_server.requests[2]["body"])[0]
    assert "nested repository sub/ is not allowed" in refused["content"]
    assert refused.get("is_error") is True
    not_finished = tool_results(claude_server.requests[3]["body"])[0]
    assert not_finished["content"].startswith("not finished: ")
    assert "nested repository sub/ is not allowed" in not_finished["content"]
    branch = f"flotilla/{agent.id}"
    assert git(remote_repo, "show", f"{branch}:kept.txt") == "kept"
    assert "sub" not in git(remote_repo, "ls-tree", "--name-only", branch)
    assert_the_hub_still_answers()
