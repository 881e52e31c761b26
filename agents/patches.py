"""An agent's work as a patch: kept when a run ends without a push, served without its secrets.

A rejected agent's worktree is removed when its run ends, and a change the
pre-commit gates refused was never committed, so the hub keeps its work
then: the diff of everything in the worktree against the commit the branch
left its base at, with the report of why the run ended, in
``DATA_DIR/patches/<agent id>/attempt-<n>.patch`` (one per attempt: a
script agent retried on a new base keeps the work of each attempt). A
patch is cut at ``PATCH_MAX_BYTES``.

Before it is stored (and before a diff read from the mirror is served) the
secret scan gate runs over the lines the patch adds, and every line that
holds a secret it finds is replaced (a private key's whole block), and the
value is removed from every other line: a rejected secret is never served.
"""

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings

from agents import workspace
from agents.models import Agent
from agents.runtimes.base import RunContext
from gates.base import CommandOutcome, GateContext
from gates.registry import gate_get

logger = logging.getLogger(__name__)

PATCH_MAX_BYTES = 1 << 20
_REDACTED = "[redacted secret]"


@dataclass(frozen=True)
class StoredPatch:
    attempt: int
    text: str


def patch_path(*, agent_id: str, attempt: int) -> Path:
    return Path(settings.DATA_DIR) / "patches" / agent_id / f"attempt-{attempt}.patch"


def patch_keep(*, context: RunContext, why: str) -> None:
    """Store the agent's work as its attempt's patch, masked and cut; never fails the run.

    The diff is taken from the worktree (staged as a commit would be, so a
    change the gates refused is in it), against the commit the branch left
    its base at; a worktree the hub cannot stage gives the committed work.
    """
    agent = context.agent
    try:
        base = workspace.branch_fork_point(
            repository=agent.repository,
            work_branch=agent.work_branch,
            base_branch=agent.base_branch,
        )
        try:
            diff = workspace.worktree_patch(path=context.worktree, base=base)
        except workspace.NestedRepositoryRefused as refusal:
            committed = workspace.branch_diff(
                repository=agent.repository,
                work_branch=agent.work_branch,
                base_branch=agent.base_branch,
            )
            diff = f"# only the committed work: {refusal}\n{committed}"
        text = patch_render(agent=agent, base=base, why=why, diff=diff)
        _write(patch_path(agent_id=str(agent.id), attempt=agent.attempt), text)
    except Exception:
        logger.exception("agent %s: its patch could not be kept", agent.id)


def patch_render(*, agent: Agent, base: str, why: str, diff: str) -> str:
    """The downloadable patch: a header of comment lines (``git apply`` skips them), the diff."""
    diff, cut = _bounded(diff)
    diff, secrets, values = patch_mask(diff)
    header = [
        f"Flotilla agent {agent.id}, task {agent.task_id}, attempt {agent.attempt}",
        f"Repository {agent.repository}, branch {agent.work_branch} against "
        f"{agent.base_branch} at {base[:40]}",
    ]
    if why:
        header += ["", "Why the run ended:", *why.splitlines()]
    if secrets:
        header += ["", f"{secrets} line(s) holding a secret the scan found are replaced."]
    if cut:
        header += ["", f"The diff is cut at {PATCH_MAX_BYTES} bytes: {cut} more bytes left out."]
    if not diff.strip():
        header += ["", "No change."]
    lines = "".join(f"# {line}".rstrip() + "\n" for line in header)
    return _redact(lines, values) + "\n" + diff


# Every private-key format the secret scan knows names itself so in its header.
_KEY_HEADER = re.compile(r"PRIVATE KEY|PuTTY-User-Key-File")
_KEY_END = re.compile(r"END .*PRIVATE KEY|END SSH2|Private-MAC:")


def patch_mask(diff: str) -> tuple[str, int, list[str]]:
    """The diff with every added line that holds a secret replaced; how many were; the values.

    The secret scan gate judges the added lines, as before a commit; its
    values are then removed from every remaining line too. A private key's
    header takes the following added lines with it, up to a later line that
    ends a key, or to the end of the run when none does: the key's body
    carries no value the scan can name (PuTTY, SSH2, headers of any spelling).
    """
    found = _secret_values(diff) if diff else []
    if not found:
        return diff, 0, found
    out: list[str] = []
    masked = 0
    in_key = False
    for line in diff.split("\n"):
        added = line.startswith("+") and not line.startswith("+++ ")
        if added and (in_key or any(value in line for value in found)):
            in_key = not _KEY_END.search(line) if in_key else bool(_KEY_HEADER.search(line))
            out.append("+[line removed by the hub: it holds a secret]")
            masked += 1
            continue
        in_key = False
        out.append(_redact(line, found))
    return "\n".join(out), masked, found


def patch_stored(*, agent_id: str, attempt: int) -> StoredPatch | None:
    try:
        text = patch_path(agent_id=agent_id, attempt=attempt).read_text(errors="replace")
    except (FileNotFoundError, NotADirectoryError):
        return None
    return StoredPatch(attempt, text)


def patch_attempts(*, agent_id: str) -> list[int]:
    """The attempts of the agent whose patch this node keeps, in order."""
    folder = Path(settings.DATA_DIR) / "patches" / agent_id
    if not folder.is_dir():
        return []
    found = (re.fullmatch(r"attempt-(\d+)\.patch", path.name) for path in folder.iterdir())
    return sorted(int(match[1]) for match in found if match)


def _secret_values(diff: str) -> list[str]:
    gate = gate_get("secret_scan")
    result = gate.run(GateContext(agent_id="", task="", diff=diff, run_command=_no_command))
    values = set(result.secrets)
    if settings.ANTHROPIC_API_KEY:
        values.add(settings.ANTHROPIC_API_KEY)
    return sorted((value for value in values if value), key=len, reverse=True)


def _no_command(command: str, timeout_s: float) -> CommandOutcome:
    raise RuntimeError("the secret scan runs no command")


def _redact(text: str, values: list[str]) -> str:
    for value in values:
        text = text.replace(value, _REDACTED)
    return text


def _bounded(diff: str) -> tuple[str, int]:
    """The diff cut at a line boundary within ``PATCH_MAX_BYTES``; and how many bytes were left."""
    data = diff.encode()
    if len(data) <= PATCH_MAX_BYTES:
        return diff, 0
    kept = data[:PATCH_MAX_BYTES]
    kept = kept[: kept.rfind(b"\n") + 1]
    return kept.decode(errors="ignore"), len(data) - len(kept)


def _write(path: Path, text: str) -> None:
    """Write the file whole or not at all (a reader never sees half of it), readable by the hub."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8", errors="replace") as handle:
        handle.write(text)
    os.replace(partial, path)
