"""Repository setup: ``[setup]`` commands run in the agent's sandbox before its runtime starts.

The first agent of a repository (and of its lock files) runs the commands
with network ``allowlist``, whatever the agent's own network mode. What they
create under ``/workspace`` is excluded from every commit of the repository
and archived into the setup cache at once, before the agent's runtime has
run anything, so only setup output is ever cached. The next agent with the
same key starts with the archive restored and runs no setup.
"""

import contextlib
import logging
import os
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import connection

from agents import workspace
from agents.egress.service import egress_close, egress_open, egress_socket_path
from agents.models import AgentEventKind
from agents.runtimes.base import RunContext
from agents.sandboxes.base import ExecResult, SandboxHandle, SandboxUnavailable
from agents.setup.archive import ArchiveRefused, ArchiveStats, archive_restore, archive_write
from agents.setup.cache import SetupKey, cache_drop, cache_lookup, cache_store, setup_key
from gates.config import CONFIG_FILE, SetupConfig, setup_config_parse
from gates.errors import GateConfigError

logger = logging.getLogger(__name__)

# How much of a failed command's output its error quotes.
_TAIL_LINES = 20
_TAIL_CHARS = 4000


class SetupFailed(Exception):
    """The repository's setup failed: the agent fails with this message (not the hub's fault)."""


def repository_setup(*, context: RunContext) -> None:
    """Put the repository's setup output in the agent's worktree: from the cache, or by running it.

    Raises ``SetupFailed`` when a command fails, times out or changes a
    tracked file; ``SandboxError`` and ``WorkspaceError`` are the hub's.
    """
    agent = context.agent
    config = setup_config(repository=agent.repository, base_branch=agent.base_branch)
    if config is None:
        return
    key = setup_key(
        repository=agent.repository,
        work_branch=agent.work_branch,
        config=config,
        backend=context.sandbox.name,
    )
    if _restored(context, key):
        return
    created = _setup_run(context, config)
    # A branch that carries the agent's own commits (handed back by a node that
    # stopped) has run the agent's files during setup (a postinstall, a
    # setup.py): what that made is this agent's, never the repository's cache.
    if not workspace.branch_unpushed_commits(
        repository=agent.repository, work_branch=agent.work_branch
    ):
        _setup_cache(context, key, created)


def setup_config(*, repository: str, base_branch: str) -> SetupConfig | None:
    """The ``[setup]`` of the base branch's ``.flotilla.toml`` (never the worktree's)."""
    text = workspace.branch_file_read(
        repository=repository, base_branch=base_branch, path=CONFIG_FILE
    )
    try:
        return setup_config_parse(text=text)
    except GateConfigError as error:
        raise SetupFailed(f"repository setup: {error}") from None


def _restored(context: RunContext, key: SetupKey) -> bool:
    """Restore the cached setup output for ``key``; False when there is none that can be used."""
    repository = context.agent.repository
    if settings.FLOTILLA_SETUP_CACHE_MB <= 0:
        return False
    entry = cache_lookup(repository=repository, key=key.digest)
    if entry is None:
        return False
    started = time.monotonic()
    try:
        stats = archive_restore(
            archive=entry.archive, root=context.worktree, paths=entry.paths, uid=_owner(context)
        )
        workspace.mirror_exclude_add(repository=repository, paths=entry.paths)
    except (ArchiveRefused, OSError, ValueError) as error:
        cache_drop(repository=repository, key=key.digest)
        message = f"setup: the cached setup could not be restored ({error}); running setup"
        context.emit(AgentEventKind.LOG, {"message": message, "setup": {"cache": "unusable"}})
        return False
    restore_ms = round((time.monotonic() - started) * 1000, 1)
    message = (
        f"setup: restored {', '.join(entry.paths[:5])} from the cache in {restore_ms:g} ms "
        f"({stats.files} files, {stats.bytes >> 20} MB); setup does not run again"
    )
    details = {"cache": "hit", "key": key.digest, "restore_ms": restore_ms, **stats.as_dict()}
    context.emit(AgentEventKind.LOG, {"message": message, "setup": details})
    return True


def _setup_run(context: RunContext, config: SetupConfig) -> list[str]:
    """Run the commands; the paths they created (untracked or ignored), now excluded."""
    started = time.monotonic()
    # A setup may take minutes; like a runtime, it holds no database
    # connection meanwhile (its events open one when they are written).
    connection.close()
    with _setup_network(context) as handle:
        for command in config.commands:
            context.emit(
                AgentEventKind.LOG, {"message": f"setup: {command}", "setup": {"command": command}}
            )
            result = context.sandbox.exec(
                handle, command, timeout_s=config.timeout_s, on_output=context.output
            )
            if context.is_cancelled():
                raise SetupFailed("the agent was stopped during its repository setup")
            if not result.ok:
                raise SetupFailed(_failure(command, result, config.timeout_s))
    # The worktree was a fresh checkout: everything git does not track now is setup's.
    status = workspace.worktree_status(path=context.worktree)
    if status.changed:
        changed = ", ".join(sorted(status.changed)[:10])
        raise SetupFailed(
            f"repository setup changed files the repository tracks ({changed}); setup may "
            "only create files (npm ci rather than npm install, for example)"
        )
    created = sorted(status.untracked)
    try:
        workspace.mirror_exclude_add(repository=context.agent.repository, paths=created)
    except ValueError as error:
        raise SetupFailed(
            f"repository setup created a path git cannot leave out: {error}"
        ) from None
    run_s = round(time.monotonic() - started, 2)
    message = f"setup: done in {run_s:g} s; left out of every commit: {', '.join(created) or '-'}"
    context.emit(AgentEventKind.LOG, {"message": message, "setup": {"paths": created}})
    return created


def _failure(command: str, result: ExecResult, timeout_s: float) -> str:
    if result.timed_out:
        what = f"timed out after {timeout_s:g} s"
    else:
        what = f"exited with status {result.exit_code}"
    tail = "\n".join(result.output_tail.splitlines()[-_TAIL_LINES:])[-_TAIL_CHARS:]
    return f"repository setup failed: `{command}` {what}; its last output:\n{tail}"


@contextlib.contextmanager
def _setup_network(context: RunContext) -> Iterator[SandboxHandle]:
    """The handle setup commands run with: egress ``allowlist`` through a proxy of their own.

    bwrap binds the proxy's socket anew for every command, so setup gets a
    proxy in mode ``allowlist`` (the operator's list, not the agent's
    ``allow_hosts``) that is closed before the runtime starts, which then
    has its own network mode. A docker container's mounts are fixed when it
    starts: there setup shares the agent's proxy, and an agent with network
    ``off`` cannot run setup. The process backend has no isolation at all.
    """
    handle = context.handle
    if context.sandbox.name == "process":
        yield handle
        return
    if context.sandbox.name != "bwrap":
        if handle.get("egress_socket"):
            yield handle
            return
        raise SandboxUnavailable(
            f"the {context.sandbox.name} sandbox cannot give the repository's setup a network "
            "while the agent's own network is off (use the bwrap backend, or network allowlist)"
        )
    agent = context.agent
    proxy_id = f"{agent.id}.setup"
    socket_path = egress_socket_path(agent_id=proxy_id)

    def record(event: dict[str, Any]) -> None:
        context.emit(AgentEventKind.NETWORK, {**event, "setup": True})

    egress_open(
        agent_id=proxy_id,
        mode="allowlist",
        allow_hosts=(),
        socket_path=socket_path,
        on_connection=record,
    )
    try:
        yield {**handle, "egress_socket": str(socket_path)}
    finally:
        egress_close(agent_id=proxy_id)


def _setup_cache(context: RunContext, key: SetupKey, created: list[str]) -> None:
    """Archive what setup created into the cache; a failure here costs only the next agent time."""
    if not created or settings.FLOTILLA_SETUP_CACHE_MB <= 0:
        return
    repository = context.agent.repository

    def write(target: Path) -> ArchiveStats:
        stats = archive_write(root=context.worktree, paths=created, target=target)
        # A kill's cleanup may have removed files while they were archived:
        # an entry missing them would break every later agent.
        if context.is_cancelled():
            raise ArchiveRefused("the agent was stopped while its setup output was archived")
        return stats

    try:
        stats = cache_store(repository=repository, key=key, paths=created, write=write)
    except (ArchiveRefused, OSError, ValueError, tarfile.TarError) as error:
        logger.warning("agent %s: setup output not cached: %s", context.agent.id, error)
        message = f"setup: its output could not be cached ({error})"
        context.emit(AgentEventKind.LOG, {"message": message, "setup": {"cache": "failed"}})
        return
    if stats is None:
        message = "setup: its output is larger than FLOTILLA_SETUP_CACHE_MB and is not cached"
        context.emit(AgentEventKind.LOG, {"message": message, "setup": {"cache": "too_big"}})
        return
    message = f"setup: cached {stats.files} files ({stats.bytes >> 20} MB) for the next agent"
    details = {"cache": "stored", "key": key.digest, **stats.as_dict()}
    context.emit(AgentEventKind.LOG, {"message": message, "setup": details})


def _owner(context: RunContext) -> int | None:
    """Who owns restored files: the sandbox user, unless the hub cannot give files away."""
    if os.geteuid() != 0 or context.sandbox.name == "process":
        return None
    return settings.FLOTILLA_SANDBOX_UID
