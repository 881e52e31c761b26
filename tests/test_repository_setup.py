"""Repository setup: ``[setup]`` commands, their cache, and what an agent can do to either.

Issue 16, "No way to give a project its dependencies": the setup installs
from a package index on 127.0.0.2 (tests/package_index.py, wheels built
here) through the egress proxy, which the test allowlists. Agents are
prepared as the worker prepares them (worktree, bwrap sandbox, run context)
and set up in this process; tests/test_repository_setup_runs.py runs whole
agents through a worker node.
"""

import io
import os
import tarfile
from pathlib import Path

import pytest

from agents import runner, workspace
from agents.delivery import agent_commit
from agents.egress.service import egress_socket_path
from agents.leases import agents_claim
from agents.models import AgentEvent
from agents.services import SpawnRequest, agent_cleanup, agent_spawn
from agents.setup import SetupFailed, repository_setup
from agents.setup.archive import ArchiveRefused, archive_restore, archive_write
from agents.setup.cache import (
    cache_lookup,
    cache_store,
    cache_trim,
    repository_cache_dir,
    setup_key,
)
from gates.config import SETUP_CACHE_KEY_FILES, setup_config_parse
from gates.errors import GateConfigError
from tests.conftest import git, make_remote
from tests.package_index import PackageIndex

TEST_DEP = (
    "import sample_dep\n\n\ndef test_the_dependency_is_installed():\n"
    '    assert sample_dep.VERSION == "1.0"\n'
)


@pytest.fixture(scope="module")
def package_index():
    with PackageIndex() as index:
        index.add("sample-dep", "1.0")
        index.add("sample-dep", "2.0")
        yield index


@pytest.fixture
def allowlisted(settings, package_index):
    """The test's package index is on the operator's egress allowlist (as host:port)."""
    settings.FLOTILLA_EGRESS_ALLOWLIST = (package_index.address,)
    return package_index


def setup_project(index: PackageIndex, *, requirement: str = "sample-dep==1.0", commands=None):
    commands = commands or [index.pip_install()]
    listed = ", ".join(f'"{command}"' for command in commands)
    return {
        "requirements.txt": f"{requirement}\n",
        "test_dep.py": TEST_DEP,
        ".flotilla.toml": (
            f"[setup]\ncommands = [{listed}]\n\n"
            '[gates]\ntests = "PYTHONPATH=.deps python -m pytest -q"\n'
        ),
    }


@pytest.fixture
def prepare(transactional_db, sandbox_toolchain, settings):
    """An agent prepared as the worker prepares one: claimed, worktree, bwrap sandbox, context.

    Its pool is this module's own, so no worker node of the session claims it first.
    """
    settings.FLOTILLA_NODE_POOL = "repository-setup-in-process"
    contexts = []

    def prepare_agent(remote: Path, **options):
        request = SpawnRequest(
            task_id="task-setup",
            agent_type="worker",
            runtime="script",
            script="true",
            repository=str(remote),
            base_branch="main",
            instructions="Use the dependency.",
            **options,
        )
        agent_spawn(request=request, requested_by="user:test")
        (agent,) = agents_claim(node=settings.FLOTILLA_NODE_NAME, limit=1)
        context = runner._prepare(runner.AgentRun(agent=agent))
        contexts.append(context)
        return context

    yield prepare_agent
    for context in contexts:
        context.agent.refresh_from_db()
        agent_cleanup(agent=context.agent)


def logs(context) -> list[dict]:
    events = AgentEvent.objects.filter(agent_id=context.agent.id, kind="log").order_by("id")
    return [event.data for event in events]


def setup_logs(context) -> list[dict]:
    return [data["setup"] for data in logs(context) if "setup" in data]


# --- the [setup] table ----------------------------------------------------------------------


def test_a_setup_table_names_its_commands_and_keys_the_cache_on_the_usual_lock_files():
    config = setup_config_parse(text='[setup]\ncommands = ["pip install -r requirements.txt"]\n')

    assert config.commands == ("pip install -r requirements.txt",)
    assert config.cache_key_files == SETUP_CACHE_KEY_FILES
    assert config.key_files(
        ["requirements.txt", "docs/requirements-docs.txt", "uv.lock", "web/package-lock.json"]
        + ["setup.py", "requirements.in"]
    ) == ["requirements.txt", "docs/requirements-docs.txt", "uv.lock", "web/package-lock.json"]


def test_a_repository_without_setup_commands_has_no_setup():
    assert setup_config_parse(text='[gates]\ntests = "pytest"\n') is None
    assert setup_config_parse(text="[setup]\ncommands = []\n") is None
    assert setup_config_parse(text=None) is None


@pytest.mark.parametrize(
    ("table", "complaint"),
    [
        ("setup = 3", "must be a table"),
        ("[setup]\ncommands = [1]", "commands must be a list of command strings"),
        ('[setup]\ncommands = ["  "]', "commands must be a list of command strings"),
        ('[setup]\ncommands = ["x"]\ncache_key_files = "a"', "cache_key_files must be a list"),
        ('[setup]\ncommands = ["x"]\ntimeout_s = 0', "timeout_s must be a number"),
        ('[setup]\ncommands = ["x"]\npaths = [".venv"]', "unknown keys ['paths']"),
    ],
)
def test_a_malformed_setup_table_is_refused_with_what_is_wrong(table, complaint):
    with pytest.raises(GateConfigError, match=complaint.replace("[", r"\[")):
        setup_config_parse(text=table)


def test_a_repository_cannot_give_setup_more_time_than_the_operator_allows(settings):
    settings.FLOTILLA_SETUP_TIMEOUT_S = 60

    config = setup_config_parse(text='[setup]\ncommands = ["x"]\ntimeout_s = 7200\n')

    assert config.timeout_s == 60


def test_exclude_patterns_match_exactly_the_path_whatever_its_name():
    assert workspace.exclude_pattern(".deps/") == "/.deps/"
    assert workspace.exclude_pattern("!x [1]*.py") == r"/\!x\ \[1\]\*.py"
    with pytest.raises(ValueError):
        workspace.exclude_pattern("two\nlines")


# --- the archive: setup output is data, and a restore stays in the worktree -----------------


def tar_of(members: list[tuple[tarfile.TarInfo, bytes]], path: Path) -> Path:
    with tarfile.open(path, "w") as archive:
        for member, content in members:
            member.size = len(content)
            archive.addfile(member, io.BytesIO(content) if content else None)
    return path


def member(name: str, kind: bytes = tarfile.REGTYPE, **fields) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = 0o644
    for key, value in fields.items():
        setattr(info, key, value)
    return info


@pytest.mark.parametrize("name", ["../escaped.py", "/tmp/escaped.py", ".deps/../../escaped.py"])
def test_a_restore_refuses_a_member_that_leaves_the_worktree(tmp_path, name):
    worktree = tmp_path / "worktree"
    worktree.mkdir()
    archive = tar_of(
        [(member(".deps", tarfile.DIRTYPE), b""), (member(name), b"x")], tmp_path / "a"
    )

    with pytest.raises(ArchiveRefused):
        archive_restore(archive=archive, root=worktree, paths=[".deps/"], uid=None)

    assert not (tmp_path / "escaped.py").exists()
    assert list(worktree.iterdir()) == []  # the part already restored is gone again


@pytest.mark.parametrize(
    "hostile",
    [
        member(".deps/passwd", tarfile.LNKTYPE, linkname="/etc/passwd"),
        member(".deps/null", tarfile.CHRTYPE, devmajor=1, devminor=3),
        member(".deps/fifo", tarfile.FIFOTYPE),
        member("src/other.py"),  # not below a path the archive is for
    ],
)
def test_a_restore_refuses_hard_links_devices_and_unlisted_paths(tmp_path, hostile):
    worktree = tmp_path / "worktree"
    worktree.mkdir()
    archive = tar_of([(member(".deps", tarfile.DIRTYPE), b""), (hostile, b"")], tmp_path / "a")

    with pytest.raises(ArchiveRefused):
        archive_restore(archive=archive, root=worktree, paths=[".deps/"], uid=None)

    assert list(worktree.iterdir()) == []


def test_a_restore_never_writes_through_a_link_in_the_worktree(tmp_path):
    """A repository may track ``lib -> /somewhere``; restoring ``lib/pkg/`` must not go there."""
    outside = tmp_path / "outside"
    outside.mkdir()
    worktree = tmp_path / "worktree"
    worktree.mkdir()
    (worktree / "lib").symlink_to(outside)
    (worktree / ".deps").symlink_to(outside)
    through_parent = tar_of(
        [(member("lib/pkg", tarfile.DIRTYPE), b""), (member("lib/pkg/evil.py"), b"x")],
        tmp_path / "parent.tar",
    )
    onto_link = tar_of([(member(".deps", tarfile.DIRTYPE), b"")], tmp_path / "link.tar")
    file_onto_link = tar_of([(member(".deps"), b"x")], tmp_path / "file.tar")

    for archive, paths in [
        (through_parent, ["lib/pkg/"]),
        (onto_link, [".deps/"]),
        (file_onto_link, [".deps"]),
    ]:
        with pytest.raises(OSError):
            archive_restore(archive=archive, root=worktree, paths=paths, uid=None)

    assert list(outside.iterdir()) == []
    assert (worktree / ".deps").is_symlink()  # what was there before the restore stays


def test_links_in_setup_output_are_archived_as_links_and_never_followed(tmp_path):
    worktree = tmp_path / "worktree"
    (worktree / ".deps" / "pkg").mkdir(parents=True)
    (worktree / ".deps" / "pkg" / "mod.py").write_text("VALUE = 1\n")
    (worktree / ".deps" / "etc").symlink_to("/etc")
    (worktree / ".deps" / "hosts").symlink_to("/etc/hosts")
    archive = tmp_path / "setup.tar"

    stats = archive_write(root=worktree, paths=[".deps/"], target=archive)

    with tarfile.open(archive) as written:
        kinds = {info.name: info.type for info in written.getmembers()}
    assert kinds[".deps/etc"] == kinds[".deps/hosts"] == tarfile.SYMTYPE
    assert not any(name.startswith(".deps/etc/") for name in kinds)
    assert (stats.files, stats.links) == (1, 2)
    restored = tmp_path / "restored"
    restored.mkdir()
    archive_restore(archive=archive, root=restored, paths=[".deps/"], uid=None)
    assert os.readlink(restored / ".deps" / "hosts") == "/etc/hosts"
    assert (restored / ".deps" / "pkg" / "mod.py").read_text() == "VALUE = 1\n"


# --- the cache: bounded, least recently used first out, per repository ----------------------


def stored(repository: str, key: str, size: int, tmp_path: Path) -> None:
    source = tmp_path / f"source-{key}"
    (source / ".deps").mkdir(parents=True)
    (source / ".deps" / "blob").write_bytes(os.urandom(size))
    cache_store(
        repository=repository,
        key=type("Key", (), {"digest": key, "files": ()})(),
        paths=[".deps/"],
        write=lambda target: archive_write(root=source, paths=[".deps/"], target=target),
    )


def test_the_cache_keeps_to_its_size_and_drops_the_least_recently_used_first(settings, tmp_path):
    settings.DATA_DIR = tmp_path / "data"
    settings.FLOTILLA_SETUP_CACHE_MB = 2
    repository = str(make_remote(tmp_path))
    stored(repository, "first", 700_000, tmp_path)
    stored(repository, "second", 700_000, tmp_path)
    os.utime(repository_cache_dir(repository) / "first.tar", (1, 1))  # used long ago...
    assert cache_lookup(repository=repository, key="first") is not None  # ...and just now
    os.utime(repository_cache_dir(repository) / "second.tar", (2, 2))

    stored(repository, "third", 700_000, tmp_path)

    assert cache_lookup(repository=repository, key="second") is None
    assert cache_lookup(repository=repository, key="first") is not None
    assert cache_lookup(repository=repository, key="third") is not None
    assert cache_trim(limit_bytes=0)  # and an empty bound empties it
    assert cache_lookup(repository=repository, key="first") is None


def test_an_entry_larger_than_the_whole_cache_is_not_kept(settings, tmp_path):
    settings.DATA_DIR = tmp_path / "data"
    settings.FLOTILLA_SETUP_CACHE_MB = 1
    repository = str(make_remote(tmp_path))

    stored(repository, "huge", 2 << 20, tmp_path)

    assert cache_lookup(repository=repository, key="huge") is None
    assert list(repository_cache_dir(repository).iterdir()) == []


def test_two_repositories_with_the_same_lock_files_never_share_an_entry(settings, tmp_path):
    settings.DATA_DIR = tmp_path / "data"
    one = str(make_remote(tmp_path, {"requirements.txt": "x==1\n"}, name="one"))
    two = str(make_remote(tmp_path, {"requirements.txt": "x==1\n"}, name="two"))
    config = setup_config_parse(text='[setup]\ncommands = ["true"]\n')
    keys = []
    for repository in (one, two):
        workspace.worktree_create(
            repository=repository,
            base_branch="main",
            work_branch="flotilla/key",
            path=tmp_path / f"worktree-{len(keys)}",
        )
        key = setup_key(
            repository=repository, work_branch="flotilla/key", config=config, backend="bwrap"
        )
        keys.append(key.digest)
    stored(one, keys[0], 1000, tmp_path)

    assert keys[0] == keys[1]  # the same lock files and commands...
    assert cache_lookup(repository=one, key=keys[0]) is not None
    assert cache_lookup(repository=two, key=keys[1]) is None  # ...and still no sharing


# --- setup in the agent's sandbox -----------------------------------------------------------


def test_setup_installs_from_the_allowlisted_index_though_the_agents_network_is_off(
    prepare, allowlisted, tmp_path
):
    remote = make_remote(tmp_path, setup_project(allowlisted))
    context = prepare(remote)
    assert context.agent.network == "off" and "egress_socket" not in context.handle

    repository_setup(context=context)

    assert (context.worktree / ".deps" / "sample_dep.py").read_text() == 'VERSION = "1.0"\n'
    assert allowlisted.downloaded("sample-dep") >= 1
    network = AgentEvent.objects.filter(agent_id=context.agent.id, kind="network")
    assert network and all(event.data["setup"] and event.data["allowed"] for event in network)
    # The setup's proxy is closed before the runtime starts; the agent's network stays off.
    assert not egress_socket_path(agent_id=f"{context.agent.id}.setup").exists()
    assert setup_logs(context)[-1]["cache"] == "stored"


def test_what_setup_installs_is_used_by_the_gates_and_never_committed(
    prepare, allowlisted, tmp_path
):
    remote = make_remote(tmp_path, setup_project(allowlisted))
    context = prepare(remote)
    repository_setup(context=context)
    (context.worktree / "README.md").write_text("# uses sample-dep\n")

    report = agent_commit(context=context, message="document the dependency")

    assert report.approved, report.text
    tests = next(result for result in report.gates.results if result.gate == "tests")
    assert tests.outcome == "passed" and "1 passed" in tests.output
    committed = workspace.branch_files(
        repository=str(remote), work_branch=context.agent.work_branch
    )
    assert sorted(path for path, _ in committed) == sorted(
        [".flotilla.toml", "README.md", "requirements.txt", "test_dep.py"]
    )


def test_the_next_agent_restores_the_cache_and_the_index_sees_no_second_download(
    prepare, allowlisted, tmp_path
):
    remote = make_remote(tmp_path, setup_project(allowlisted))
    first = prepare(remote)
    repository_setup(context=first)
    downloads = allowlisted.downloaded("sample-dep")

    second = prepare(remote)
    repository_setup(context=second)

    assert allowlisted.downloaded("sample-dep") == downloads
    assert (second.worktree / ".deps" / "sample_dep.py").read_text() == 'VERSION = "1.0"\n'
    restored = setup_logs(second)[-1]
    assert restored["cache"] == "hit" and restored["files"] >= 1
    assert (second.worktree / ".deps").stat().st_uid == (first.worktree / ".deps").stat().st_uid
    assert not AgentEvent.objects.filter(agent_id=second.agent.id, kind="network").exists()


def test_a_changed_lock_file_runs_setup_again(prepare, allowlisted, tmp_path):
    remote = make_remote(tmp_path, setup_project(allowlisted))
    repository_setup(context=prepare(remote))
    seed = tmp_path / "remote-seed"
    (seed / "requirements.txt").write_text("sample-dep==2.0\n")
    (seed / "test_dep.py").write_text(TEST_DEP.replace("1.0", "2.0"))
    git(seed, "commit", "-qam", "sample-dep 2.0")
    git(seed, "push", "-q", str(remote), "main")
    downloads = allowlisted.downloaded("sample-dep")

    context = prepare(remote)
    repository_setup(context=context)

    assert allowlisted.downloaded("sample-dep") == downloads + 1
    assert (context.worktree / ".deps" / "sample_dep.py").read_text() == 'VERSION = "2.0"\n'
    assert setup_logs(context)[-1]["cache"] == "stored"


def test_what_an_agent_writes_after_its_setup_never_reaches_the_next_agent(
    prepare, allowlisted, tmp_path
):
    """The cache is written before the runtime starts: a hostile agent cannot poison it."""
    remote = make_remote(tmp_path, setup_project(allowlisted))
    hostile = prepare(remote)
    repository_setup(context=hostile)
    poison = (
        "echo 'VERSION = \"poisoned\"' > .deps/sample_dep.py; echo 'import os' > .deps/evil.py; "
        "ln -s /etc .deps/etc-link"
    )
    assert hostile.sandbox.exec(hostile.handle, poison, timeout_s=30).ok

    victim = prepare(remote)
    repository_setup(context=victim)

    assert (victim.worktree / ".deps" / "sample_dep.py").read_text() == 'VERSION = "1.0"\n'
    assert not (victim.worktree / ".deps" / "evil.py").exists()
    assert not (victim.worktree / ".deps" / "etc-link").is_symlink()


def test_a_failing_setup_names_its_command_and_the_end_of_its_output(prepare, tmp_path):
    command = "echo first line; echo the-last-words >&2; exit 3"
    remote = make_remote(tmp_path, {".flotilla.toml": f'[setup]\ncommands = ["{command}"]\n'})
    context = prepare(remote)

    with pytest.raises(SetupFailed) as failed:
        repository_setup(context=context)

    message = str(failed.value)
    assert message.startswith(f"repository setup failed: `{command}` exited with status 3")
    assert "the-last-words" in message


def test_a_setup_that_changes_a_tracked_file_fails(prepare, tmp_path):
    remote = make_remote(
        tmp_path,
        {
            "package-lock.json": "{}\n",
            ".flotilla.toml": '[setup]\ncommands = ["echo x >> package-lock.json"]\n',
        },
    )
    context = prepare(remote)

    with pytest.raises(
        SetupFailed, match=r"changed files the repository tracks \(package-lock.json\)"
    ):
        repository_setup(context=context)


def test_a_setup_cannot_reach_a_host_the_operator_did_not_allowlist(prepare, settings, tmp_path):
    settings.FLOTILLA_EGRESS_ALLOWLIST = ("pypi.org",)
    with PackageIndex() as index:
        index.add("sample-dep", "1.0")
        remote = make_remote(tmp_path, setup_project(index))
        context = prepare(remote)

        with pytest.raises(SetupFailed, match="exited with status"):
            repository_setup(context=context)

        assert index.downloaded("sample-dep") == 0
    refused = AgentEvent.objects.filter(agent_id=context.agent.id, kind="network")
    assert refused and not any(event.data["allowed"] for event in refused)


def test_setup_on_a_branch_carrying_the_agents_own_commits_is_never_cached(
    prepare, allowlisted, tmp_path
):
    """A handed-back agent continues on its kept branch: setup ran its files, not the base's."""
    remote = make_remote(tmp_path, setup_project(allowlisted))
    handed_back = prepare(remote)
    (handed_back.worktree / "notes.txt").write_text("the agent's work so far\n")
    assert workspace.worktree_commit(path=handed_back.worktree, message="work so far")
    repository_setup(context=handed_back)
    downloads = allowlisted.downloaded("sample-dep")

    assert setup_logs(handed_back)[-1].get("cache") != "stored"
    next_agent = prepare(remote)
    repository_setup(context=next_agent)
    assert allowlisted.downloaded("sample-dep") == downloads + 1
