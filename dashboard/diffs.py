"""The agent page's diff: the agent's branch against its base, a page of files at a time.

``agents.selectors.agent_diff`` lists the changed files (``--numstat``) from
the hub's mirror; this module asks git for the unified diff of only the
files on the requested page, and only of those small enough to show, so a
huge change never has to be read whole. Lines are classed as added,
removed, context or hunk header, which is all the colouring the page does.
"""

from dataclasses import dataclass, field
from typing import Any

from django.core.paginator import Paginator

from agents.models import Agent
from agents.selectors import DiffFile, agent_diff, agent_diff_text, agent_patch

DIFF_FILES_PER_PAGE = 20
# A file with more changed lines than this is listed with its counts, not shown.
DIFF_FILE_MAX_LINES = 3000


@dataclass
class DiffLine:
    kind: str  # "add", "del", "ctx", "hunk", "note"
    text: str
    old: int | None = None
    new: int | None = None


@dataclass
class FileDiff:
    path: str
    added: int
    deleted: int
    binary: bool = False
    too_large: bool = False
    lines: list[DiffLine] = field(default_factory=list)


def diff_blocks(text: str) -> list[list[DiffLine]]:
    """``git diff`` output read as one list of lines per file, in git's order.

    A file's header (index, modes, ``---``/``+++``) is left out, except the
    note that it is binary.
    """
    blocks: list[list[DiffLine]] = []
    lines: list[DiffLine] | None = None
    in_hunk = False
    old = new = 0
    for raw in text.split("\n"):
        if raw.startswith("diff --git "):
            lines, in_hunk = [], False
            blocks.append(lines)
        elif lines is None or not raw:
            continue
        elif raw.startswith("@@"):
            old, new = _hunk_start(raw)
            in_hunk = True
            lines.append(DiffLine("hunk", raw))
        elif not in_hunk:
            if raw.startswith("Binary files"):
                lines.append(DiffLine("note", raw))
        elif raw[0] == "+":
            lines.append(DiffLine("add", raw[1:], new=new))
            new += 1
        elif raw[0] == "-":
            lines.append(DiffLine("del", raw[1:], old=old))
            old += 1
        elif raw[0] == "\\":
            lines.append(DiffLine("note", raw))
        else:
            lines.append(DiffLine("ctx", raw[1:], old=old, new=new))
            old += 1
            new += 1
    return blocks


def _hunk_start(header: str) -> tuple[int, int]:
    """``@@ -12,3 +14,5 @@`` → (12, 14)."""
    try:
        old_part, new_part = header.split(" ")[1:3]
        return int(old_part[1:].split(",")[0]), int(new_part[1:].split(",")[0])
    except (ValueError, IndexError):
        return 0, 0


def _file_diff(file: DiffFile) -> FileDiff:
    return FileDiff(
        path=file.path,
        added=max(file.added, 0),
        deleted=file.deleted,
        binary=file.binary,
        too_large=not file.binary and file.added + file.deleted > DIFF_FILE_MAX_LINES,
    )


def agent_diff_page(*, agent: Agent, page_number: Any) -> dict[str, Any]:
    """One page of the agent's diff: ``{"problem"}``, or the files with their lines."""
    diff = agent_diff(agent=agent)
    if diff.problem:
        return {"problem": diff.problem}
    page = Paginator(diff.files, DIFF_FILES_PER_PAGE).get_page(page_number)
    files = [_file_diff(file) for file in page.object_list]
    shown = [file for file in files if not file.binary and not file.too_large]
    blocks = diff_blocks(agent_diff_text(diff=diff, paths=[file.path for file in shown]))
    for file, lines in zip(shown, blocks, strict=False):
        file.lines = lines
    return {
        "problem": "",
        "base": diff.base,
        "head": diff.head,
        "files": files,
        "page": page,
        "total_files": len(diff.files),
        "total_added": sum(max(file.added, 0) for file in diff.files),
        "total_deleted": sum(file.deleted for file in diff.files),
    }


def kept_patch_page(*, agent: Agent, attempt: int, page_number: Any) -> dict[str, Any]:
    """One page of the patch the hub kept when an attempt ended without a push.

    Its comment lines (why the run ended, what was masked) come as ``notes``;
    every line that held a secret was replaced before the patch was stored.
    """
    patch = agent_patch(agent=agent, attempt=attempt)
    if patch is None:
        return {"problem": f"no patch of attempt {attempt} is kept"}
    notes = []
    for line in patch.text.split("\n"):
        if line.startswith("diff --git "):
            break
        if line.startswith("#"):
            notes.append(line[1:].strip())
    files = [
        _kept_file(header, lines)
        for header, lines in zip(_file_headers(patch.text), diff_blocks(patch.text), strict=False)
    ]
    page = Paginator(files, DIFF_FILES_PER_PAGE).get_page(page_number)
    return {
        "problem": "",
        "notes": notes,
        "files": list(page.object_list),
        "page": page,
        "total_files": len(files),
        "total_added": sum(file.added for file in files),
        "total_deleted": sum(file.deleted for file in files),
    }


def _file_headers(text: str) -> list[str]:
    """Each file's path, from its ``diff --git a/<path> b/<path>`` line, in order."""
    headers = []
    for line in text.split("\n"):
        if line.startswith("diff --git "):
            names = line[len("diff --git ") :]
            headers.append(names.split(" b/", 1)[-1] if " b/" in names else names)
    return headers


def _kept_file(path: str, lines: list[DiffLine]) -> FileDiff:
    added = sum(1 for line in lines if line.kind == "add")
    deleted = sum(1 for line in lines if line.kind == "del")
    binary = any(line.kind == "note" and line.text.startswith("Binary files") for line in lines)
    too_large = added + deleted > DIFF_FILE_MAX_LINES
    shown = [] if too_large or binary else lines
    return FileDiff(path, added, deleted, binary=binary, too_large=too_large, lines=shown)
