"""Reads of an agent's work from the hub's mirror: the diff the dashboard shows, the patch.

Only the hub's mirror is read (through ``agents.gitexec.git_run``), never an
agent's worktree; a mirror that lacks a pushed commit is fetched once. A patch
the hub kept when an attempt ended without a push comes from
``agents.patches``, secrets removed. ``agents.selectors`` re-exports the
public names, so callers read through it as before.
"""

import re
from dataclasses import dataclass
from pathlib import Path

from agents import patches, workspace
from agents.gitexec import WorkspaceError, git_run
from agents.models import Agent

_SHA = re.compile(r"^[0-9a-f]{40}(?:[0-9a-f]{24})?$")


@dataclass(frozen=True)
class DiffFile:
    path: str
    added: int  # -1 for a binary file
    deleted: int

    @property
    def binary(self) -> bool:
        return self.added < 0


@dataclass(frozen=True)
class AgentDiff:
    """What an agent's branch changes against its base, as the hub's mirror holds it.

    ``base`` and ``head`` are commits; ``problem`` says why there is nothing
    to show (no commit yet, the mirror lacks it), and then ``files`` is empty.
    """

    mirror: Path | None = None
    base: str = ""
    head: str = ""
    files: tuple[DiffFile, ...] = ()
    problem: str = ""


# The one shape of diff the dashboard reads: no colour, no external tools, no renames.
_DIFF_OPTIONS = ("--no-color", "--no-ext-diff", "--no-textconv", "--no-renames")


def agent_diff(*, agent: Agent) -> AgentDiff:
    """The files the agent's commit changes since its base branch (the three-dot diff).

    The commit is the one the hub pushed (``result["pushed_commit"]``) or,
    before a push or after a rejected one, the head of the agent's branch in
    the mirror. Only the hub's mirror is read, through ``git_run``, never the
    agent's worktree. A mirror that lacks the commit (another node ran the
    agent) is fetched once.
    """
    mirror = workspace.mirror_path(agent.repository)
    if not (mirror / "HEAD").exists():
        return AgentDiff(problem="this hub holds no copy of the repository yet")
    pushed = str((agent.result or {}).get("pushed_commit") or "")
    if not _SHA.match(pushed):
        pushed = ""
    wanted = pushed or f"refs/heads/{agent.work_branch}"
    head = _mirror_commit(mirror, wanted)
    if not head and pushed:
        try:
            workspace.mirror_sync(agent.repository)
        except WorkspaceError as error:
            return AgentDiff(problem=f"the pushed commit could not be fetched: {error}")
        head = _mirror_commit(mirror, wanted)
    if not head:
        return AgentDiff(problem="the agent has committed nothing yet")
    base = _mirror_commit(mirror, f"refs/remotes/origin/{agent.base_branch}")
    if not base:
        return AgentDiff(problem=f"the base branch {agent.base_branch} is gone from the mirror")
    listing = git_run(
        ["diff", *_DIFF_OPTIONS, "--numstat", "-z", f"{base}...{head}", "--"], git_dir=mirror
    )
    if listing.status != 0:
        return AgentDiff(problem=f"git diff failed: {listing.stderr.strip()[:300]}")
    files = tuple(_numstat_files(listing.stdout))
    return AgentDiff(mirror=mirror, base=base, head=head, files=files)


def _numstat_files(numstat: str) -> list[DiffFile]:
    """``git diff --numstat -z`` read as files: ``added\tdeleted\tpath\0`` each."""
    files = []
    for entry in numstat.split("\0"):
        parts = entry.split("\t", 2)
        if len(parts) != 3:
            continue
        added, deleted, path = parts
        binary = added == "-"
        files.append(DiffFile(path, -1 if binary else int(added), 0 if binary else int(deleted)))
    return files


def agent_diff_text(*, diff: AgentDiff, paths: list[str]) -> str:
    """The unified diff of ``paths`` (taken from ``diff.files``), in the order git lists them.

    '' when git cannot answer (the mirror changed under us): the files then
    show as unreadable rather than failing the page.
    """
    if not paths or diff.mirror is None:
        return ""
    # Literal pathspecs: a file named like a glob or a pathspec magic is just that file.
    pathspecs = [f":(literal){path}" for path in paths]
    found = git_run(
        ["diff", *_DIFF_OPTIONS, f"{diff.base}...{diff.head}", "--", *pathspecs],
        git_dir=diff.mirror,
    )
    return found.stdout if found.status == 0 else ""


@dataclass(frozen=True)
class AgentPatch:
    attempt: int
    filename: str
    text: str


def agent_patch(*, agent: Agent, attempt: int | None = None) -> AgentPatch | None:
    """The agent's work against its base as a downloadable patch, secrets removed.

    The patch the hub kept when the attempt ended without a push (its
    rejected change, uncommitted work included), else, for the agent's
    current attempt, what its branch holds in the mirror (a pushed agent's
    work): ``agents.patches``. None when ``attempt`` names an earlier attempt
    with nothing kept.
    """
    wanted = agent.attempt if attempt is None else attempt
    filename = f"agent-{agent.id}-attempt-{wanted}.patch"
    stored = patches.patch_stored(agent_id=str(agent.id), attempt=wanted)
    if stored is not None:
        return AgentPatch(wanted, filename, stored.text)
    if wanted != agent.attempt:
        return None
    diff = agent_diff(agent=agent)
    text = f"# No change to show: {diff.problem}.\n" if diff.problem else _mirror_patch(diff)
    pushed = (agent.result or {}).get("pushed_commit")
    why = agent.error or f"{agent.state}" + (f": pushed {pushed}" if pushed else "")
    rendered = patches.patch_render(agent=agent, base=diff.base, why=why, diff=text)
    return AgentPatch(wanted, filename, rendered)


def agent_patch_attempts(*, agent: Agent) -> list[int]:
    """The attempts of the agent whose rejected work this hub keeps as a patch."""
    return patches.patch_attempts(agent_id=str(agent.id))


def _mirror_patch(diff: AgentDiff) -> str:
    if diff.mirror is None:
        return ""
    commits = f"{diff.base}...{diff.head}"
    found = git_run(["diff", *_DIFF_OPTIONS, commits, "--"], git_dir=diff.mirror)
    if found.status != 0:
        return f"# git diff failed: {found.stderr.strip()[:300]}\n"
    return found.stdout + "\n" if found.stdout else ""


def _mirror_commit(mirror: Path, ref: str) -> str:
    """The commit ``ref`` names in ``mirror``, or '' when it has none."""
    found = git_run(["rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"], git_dir=mirror)
    return found.stdout.strip() if found.status == 0 else ""
