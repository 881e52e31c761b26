"""The Claude runtime's parts on their own: worktree file tools, tool input checks,
accounting, truncation, and a model call that a kill abandons mid-flight."""

import os
import threading
from decimal import Decimal
from pathlib import Path

import pytest

from agents.runtimes.claude.accounting import Usage, model_price
from agents.runtimes.claude.files import FileToolError, Worktree
from agents.runtimes.claude.runtime import _truncated, _with_cache_breakpoint
from agents.runtimes.claude.tools import _input_problem, tool_definitions, tool_names
from gates.llm import LlmCancelled, LlmError, LlmSession
from tests.launcher import wait_until
from tests.messages_server import error_reply, text_reply


@pytest.fixture
def tree(tmp_path: Path) -> Worktree:
    root = tmp_path / "worktree"
    (root / "pkg").mkdir(parents=True)
    (root / "pkg" / "app.py").write_text("value = 1\nother = 2\nvalue = 1\n")
    (root / "README.md").write_text("# sample\n")
    (root / ".git").write_text("gitdir: /somewhere/else\n")
    (tmp_path / "outside.txt").write_text("secret outside the worktree\n")
    (root / "link-out").symlink_to(tmp_path / "outside.txt")
    (root / "dir-out").symlink_to("/etc")
    (root / "link-in").symlink_to("README.md")
    return Worktree(root)


@pytest.mark.parametrize(
    "path", ["../outside.txt", "pkg/../../outside.txt", "/etc/passwd", "link-out", "dir-out/passwd"]
)
def test_paths_that_escape_the_worktree_are_refused_by_every_file_tool(tree, tmp_path, path):
    for tool in (
        lambda: tree.read(path),
        lambda: tree.write(path, "overwritten"),
        lambda: tree.edit(path, "secret", "changed"),
        lambda: tree.list(path),
        lambda: tree.search("secret", path),
    ):
        with pytest.raises(FileToolError):
            tool()
    assert (tmp_path / "outside.txt").read_text() == "secret outside the worktree\n"


def test_a_symlink_inside_the_worktree_is_followed(tree):
    assert tree.read("link-in") == "# sample\n"


def test_git_metadata_is_neither_readable_nor_writable(tree):
    with pytest.raises(FileToolError, match="git metadata"):
        tree.write(".git", "gitdir: /tmp/evil\n")
    with pytest.raises(FileToolError, match="git metadata"):
        tree.read(".git")
    assert ".git" not in tree.list(".").split("\n")


def test_a_link_swapped_in_after_the_check_is_not_followed(tree, tmp_path):
    # What a sandboxed process could do between resolving and opening: the
    # race-free open walks the resolved path with O_NOFOLLOW and refuses it.
    parts = tree.resolve("pkg/app.py")
    (tree.root / "pkg" / "app.py").unlink()
    (tree.root / "pkg" / "app.py").symlink_to(tmp_path / "outside.txt")
    with pytest.raises(OSError):
        tree._open(parts, os.O_RDONLY)


def test_edit_needs_exactly_one_occurrence(tree):
    with pytest.raises(FileToolError, match="occurs 2 times"):
        tree.edit("pkg/app.py", "value = 1", "value = 3")
    with pytest.raises(FileToolError, match="was not found"):
        tree.edit("pkg/app.py", "missing", "x")
    assert (
        tree.edit("pkg/app.py", "other = 2", "other = 4") == "replaced 1 occurrence in pkg/app.py"
    )
    assert tree.read("pkg/app.py") == "value = 1\nother = 4\nvalue = 1\n"


def test_write_creates_directories_owned_like_the_worktree(tree):
    assert tree.write("new/deep/module.py", "x = 1\n") == "wrote 6 bytes to new/deep/module.py"
    owner = os.stat(tree.root).st_uid
    assert os.stat(tree.root / "new" / "deep" / "module.py").st_uid == owner
    assert os.stat(tree.root / "new").st_uid == owner


def test_list_and_search_walk_the_tree_without_following_links_out(tree):
    listing = tree.list(".").split("\n")
    assert listing[:2] == ["dir-out/", "pkg/"]
    assert "pkg/app.py" in listing and "README.md" in listing
    assert not any(line.startswith("dir-out/") and line != "dir-out/" for line in listing)
    assert tree.search(r"value = \d", "pkg") == "pkg/app.py:1: value = 1\npkg/app.py:3: value = 1"
    assert tree.search("outside the worktree", ".").startswith("no match")
    with pytest.raises(FileToolError, match="not a valid regular expression"):
        tree.search("(", ".")


@pytest.mark.parametrize(
    ("name", "tool_input", "problem"),
    [
        ("read_file", {}, "read_file needs path"),
        ("read_file", "app.py", "read_file takes an object"),
        ("write_file", {"path": "a", "content": 3}, "content must be a string"),
        ("run_command", {"command": "ls", "timeout_s": "soon"}, "positive number of seconds"),
        ("run_command", {"command": "ls", "timeout_s": 30}, ""),
        # The schema says integer: neither a fraction nor a boolean passes for one.
        ("run_command", {"command": "ls", "timeout_s": 2.5}, "positive number of seconds"),
        ("run_command", {"command": "ls", "timeout_s": True}, "positive number of seconds"),
        ("run_command", {"command": "ls", "timeout_s": 0}, "positive number of seconds"),
        ("edit_file", {"path": "a", "old_text": "x"}, "edit_file needs new_text"),
    ],
)
def test_malformed_tool_input_is_described_for_the_model(name, tool_input, problem):
    found = _input_problem(name, tool_input)
    assert (problem in found) if problem else found == ""


def test_reviewers_get_no_tool_that_changes_the_repository():
    assert tool_names("reviewer") == ["read_file", "list_files", "search", "run_command", "finish"]
    assert tool_names("worker") == [
        "read_file",
        "write_file",
        "edit_file",
        "list_files",
        "search",
        "run_command",
        "commit",
        "finish",
    ]
    definitions = tool_definitions("tester")
    assert definitions[-1]["cache_control"] == {"type": "ephemeral"}
    assert definitions[5]["input_schema"]["properties"].keys() == {"command", "timeout_s"}


def test_cost_counts_input_output_and_cache_tokens_at_the_models_price():
    usage = Usage.from_reply(
        {
            "input_tokens": 1000,
            "output_tokens": 2000,
            "cache_read_input_tokens": 10_000,
            "cache_creation_input_tokens": 4000,
        }
    )
    # Sonnet: $3 in, $15 out, $0.30 cache read, $3.75 cache write per million.
    assert usage.cost_usd("claude-sonnet-4-5") == Decimal("0.003") + Decimal("0.03") + Decimal(
        "0.003"
    ) + Decimal("0.015")
    assert model_price("claude-opus-4-5-20251101")["input"] == 5
    assert model_price("claude-opus-4-1")["input"] == 15
    assert model_price("gpt-4") is None


def test_long_results_are_cut_with_a_note(settings):
    settings.FLOTILLA_CLAUDE_TOOL_RESULT_MAX_CHARS = 1000
    text = "".join(f"line {number}\n" for number in range(1000))
    cut = _truncated(text)
    assert len(cut) < 1200
    assert "truncated" in cut and f"of {len(text)} characters" in cut
    assert cut.startswith("line 0\n") and cut.endswith("line 999\n")
    assert _truncated("short") == "short"


def test_the_last_message_carries_a_cache_breakpoint_without_changing_the_stored_one():
    messages = [{"role": "user", "content": "start"}]
    marked = _with_cache_breakpoint(messages)
    assert marked[-1]["content"] == [
        {"type": "text", "text": "start", "cache_control": {"type": "ephemeral"}}
    ]
    assert messages == [{"role": "user", "content": "start"}]


def test_a_model_call_is_abandoned_within_a_poll_when_asked_to_stop(messages_server):
    messages_server.script(text_reply("too late", delay_s=30))
    stop = threading.Event()
    threading.Timer(0.3, stop.set).start()
    # The reply would take 30 s: LlmCancelled means the call was abandoned on the stop.
    with LlmSession() as session, pytest.raises(LlmCancelled):
        session.create(
            should_stop=stop.is_set,
            poll_s=0.05,
            model="m",
            max_tokens=10,
            messages=[{"role": "user", "content": "hi"}],
        )
    wait_until(lambda: messages_server.disconnects, 20, "the server to see the request go away")


def test_a_session_reports_server_errors_after_the_sdks_retries(messages_server):
    messages_server.script(error_reply(529), error_reply(529))
    with LlmSession() as session, pytest.raises(LlmError) as caught:
        session.create(
            should_stop=lambda: False,
            model="m",
            max_tokens=10,
            messages=[{"role": "user", "content": "hi"}],
        )
    assert caught.value.reason == "the Messages API answered 529: overloaded_error: scripted 529"
    assert len(messages_server.requests) == 2  # one retry (ANTHROPIC_MAX_RETRIES=1)
