"""Reading unified diffs: which files a change touches and which lines it adds."""

import re

_HUNK = re.compile(r"^@@ -\d+(?:,\d+)? \+(\d+)(?:,\d+)? @@")


def _path(header: str) -> str | None:
    name = header[4:].rstrip("\n").split("\t")[0]
    if name == "/dev/null":
        return None
    if name.startswith('"') and name.endswith('"'):
        name = name[1:-1].encode("latin-1", "backslashreplace").decode("unicode_escape")
        name = name.encode("latin-1").decode("utf-8", "replace")
    return name[2:] if name[:2] in ("a/", "b/") else name


def diff_added_lines(diff: str) -> dict[str, list[tuple[int, str]]]:
    """For each file, the (line number, text) pairs the change adds, in the new file's numbering."""
    added: dict[str, list[tuple[int, str]]] = {}
    current: str | None = None
    line_number = 0
    in_hunk = False
    for line in diff.splitlines():
        if line.startswith("diff --git "):
            current, in_hunk = None, False
        elif not in_hunk and line.startswith("+++ "):
            current = _path(line)
        elif match := _HUNK.match(line):
            line_number, in_hunk = int(match.group(1)), True
        elif in_hunk and line.startswith("+"):
            if current is not None:
                added.setdefault(current, []).append((line_number, line[1:]))
            line_number += 1
        elif in_hunk and line.startswith(" "):
            line_number += 1
    return added


def diff_files(diff: str) -> list[str]:
    """Every path the diff touches (added, changed, deleted or renamed), in order."""
    files: list[str] = []
    for line in diff.splitlines():
        if line.startswith(("+++ ", "--- ")):
            path = _path(line)
            if path is not None and path not in files:
                files.append(path)
    return files


def diff_changed_files(diff: str) -> list[tuple[str, bool]]:
    """(path, added) for each file the diff adds or modifies; deleted files are left out.

    Only the ``---``/``+++`` lines are read, so a rename without changes and
    a binary file in a diff made without ``--binary`` are missed: the hub
    hands the gates git's own list instead (``GateContext.changed_files_list``).
    """
    found: dict[str, bool] = {}
    old: str | None = None
    in_hunk = False
    for line in diff.splitlines():
        if line.startswith("diff --git "):
            old, in_hunk = None, False
        elif line.startswith("@@"):
            in_hunk = True
        elif not in_hunk and line.startswith("--- "):
            old = _path(line)
        elif not in_hunk and line.startswith("+++ "):
            new = _path(line)
            if new is not None:
                found.setdefault(new, old is None)
    return list(found.items())


def diff_summary(diff: str) -> str:
    """``path +added -removed`` per file, the short form a coordinator asks for."""
    counts: dict[str, list[int]] = {}
    current: str | None = None
    for line in diff.splitlines():
        if line.startswith("diff --git "):
            current = None
        elif line.startswith("--- ") and current is None:
            current = _path(line)
        elif line.startswith("+++ "):
            current = _path(line) or current
            if current:
                counts.setdefault(current, [0, 0])
        elif current and line.startswith("+"):
            counts[current][0] += 1
        elif current and line.startswith("-"):
            counts[current][1] += 1
    return "\n".join(f"{path} +{plus} -{minus}" for path, (plus, minus) in counts.items())
