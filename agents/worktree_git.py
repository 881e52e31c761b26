"""Git on an agent's worktree: stage, diff and commit without ever trusting the worktree.

Every command that reads the agent's files runs jailed as the sandbox user
(``agents.gitexec``). The jail sees the mirror read-only, so it keeps its
index and the objects it writes in the agent's scratch directory
(``DATA_DIR/gitscratch/<worktree>/work``, owned by the sandbox user), with
the mirror's objects as alternates. A commit is ``write-tree`` and
``commit-tree`` in the jail; the hub then imports the new objects as a pack,
which ``git index-pack`` verifies as it would a push from a stranger, and
moves the branch with ``update-ref``. The hub never parses the worktree
itself, and it trusts nothing in the scratch directory but that pack.

A repository nested in the worktree (a directory holding a ``.git`` file or
directory) is never entered: staging refuses it by name before git runs,
and refuses a gitlink that reached the index anyway.
"""

import contextlib
import os
import re
import shutil
import stat
from hashlib import sha256
from pathlib import Path

from django.conf import settings

from agents.gitexec import AgentWorktree, WorkspaceError, git_checked, git_run


class NestedRepositoryRefused(WorkspaceError):
    """The agent created a repository (or a gitlink) inside its worktree; nothing was staged."""

    def __init__(self, paths: list[str]) -> None:
        self.paths = paths
        shown = [f"nested repository {path} is not allowed" for path in paths[:10]]
        more = f"; and {len(paths) - 10} more" if len(paths) > 10 else ""
        super().__init__(
            "; ".join(shown)
            + more
            + ": the hub never enters a repository inside the worktree. Remove its .git to "
            "commit its files as part of this repository, or remove the directory."
        )


_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW


def nested_repositories(work_tree: Path) -> list[str]:
    """Every directory below ``work_tree`` that holds a ``.git`` entry, as ``dir/``.

    A plain walk that runs nothing and follows no symlink: each directory is
    opened relative to its parent with ``O_NOFOLLOW``, so one the agent swaps
    for a link while the walk runs is skipped, not entered. The top-level
    ``.git`` is the hub's own; any other ``.git`` (file, directory or link)
    marks a repository git would treat as a submodule.
    """
    found: list[str] = []
    top = os.open(work_tree, _DIRECTORY)
    stack = [("", top, os.scandir(top))]
    try:
        while stack:
            relative, directory, entries = stack[-1]
            entry = next(entries, None)
            if entry is None:
                stack.pop()
                entries.close()
                os.close(directory)
            elif entry.name == ".git":
                if relative:
                    found.append(relative)
            elif entry.is_dir(follow_symlinks=False):
                try:
                    child = os.open(entry.name, _DIRECTORY, dir_fd=directory)
                except OSError:
                    continue  # gone, or no longer a directory
                stack.append((f"{relative}{entry.name}/", child, os.scandir(child)))
    finally:
        for _, directory, entries in stack:
            entries.close()
            os.close(directory)
    return sorted(found)


def agent_worktree(path: Path) -> AgentWorktree:
    """The hub's record of the worktree at ``path``, made now if the worktree predates it."""
    record = _record(path)
    pointer = record / "gitdir"
    if not pointer.is_file():
        agent_worktree_prepare(path=path)
    git_dir = Path(pointer.read_text().strip())
    return AgentWorktree(
        work_tree=path, git_dir=git_dir, mirror=git_dir.parent.parent, scratch=record / "work"
    )


def agent_worktree_prepare(*, path: Path, mirror: Path | None = None) -> None:
    """Make the scratch directory of a new worktree: its index, its object directory.

    The hub writes into it only now, before the sandbox user owns it.
    """
    git_dir = _git_dir_of(path, mirror)
    record = _record(path)
    shutil.rmtree(record, ignore_errors=True)  # a stale one of an earlier worktree here
    record.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    record.mkdir(mode=0o755)
    scratch = record / "work"
    (scratch / "objects").mkdir(mode=0o700, parents=True)
    copied = (git_dir / "index").is_file()
    if copied:
        shutil.copyfile(git_dir / "index", scratch / "index")
    if os.geteuid() == 0:
        uid = settings.FLOTILLA_SANDBOX_UID
        for entry in (scratch, scratch / "objects", *([scratch / "index"] if copied else [])):
            os.chown(entry, uid, uid, follow_symlinks=False)
    # Written last: its presence says the record is whole.
    (record / "gitdir").write_text(str(git_dir))
    if not copied:
        git_checked(["read-tree", "HEAD"], worktree=agent_worktree(path))


def agent_worktree_forget(path: Path) -> None:
    shutil.rmtree(_record(path), ignore_errors=True)


def _record(path: Path) -> Path:
    digest = sha256(str(path).encode()).hexdigest()[:8]
    return Path(settings.DATA_DIR) / "gitscratch" / f"{path.name}-{digest}"


def mirror_registration(path: Path, mirror: Path | None = None) -> Path | None:
    """The mirror's directory for the worktree at ``path``, found from the mirror's side only.

    The worktree's own ``.git`` file is the agent's to rewrite, so it is never
    read. None when no mirror (or not ``mirror``) knows the worktree.
    """
    expected = str(path / ".git")
    mirrors = [mirror] if mirror else sorted((Path(settings.DATA_DIR) / "mirrors").glob("*.git"))
    for pointer in (pointer for m in mirrors for pointer in (m / "worktrees").glob("*/gitdir")):
        with contextlib.suppress(OSError):
            if pointer.read_text().strip() == expected:
                return pointer.parent
    return None


def _git_dir_of(path: Path, mirror: Path | None) -> Path:
    git_dir = mirror_registration(path, mirror)
    if git_dir is None:
        raise WorkspaceError(f"no mirror knows the worktree {path}")
    return git_dir


def stage_all(tree: AgentWorktree, *flags: str) -> None:
    """``git add --all``, refusing nested repositories before and gitlinks after."""
    nested = nested_repositories(tree.work_tree)
    if nested:
        raise NestedRepositoryRefused(nested)
    # Files whose stat data is stale (the sandbox's chown touches every one)
    # would be hashed and written again by ``add``: the mirror's copy cannot
    # be freshened through the read-only alternate. A refresh only compares.
    refreshed = git_run(["update-index", "-q", "--refresh", "--ignore-submodules"], worktree=tree)
    if refreshed.status > 1:
        raise WorkspaceError(f"git update-index failed: {refreshed.stderr.strip()}")
    git_checked(["add", "--all", *flags], worktree=tree)
    gitlinks = _staged_gitlinks(tree)
    if gitlinks:
        # Nothing of a refused change stays staged.
        git_checked(["read-tree", "HEAD"], worktree=tree)
        raise NestedRepositoryRefused(gitlinks)


def _staged_gitlinks(tree: AgentWorktree) -> list[str]:
    """Paths the index holds as gitlinks (mode 160000) where HEAD does not hold the same."""
    raw = git_checked(
        ["diff-index", "--cached", "--raw", "-z", "--no-renames", "--ignore-submodules=none"]
        + ["HEAD", "--"],
        worktree=tree,
    )
    fields = raw.split("\0")
    found = []
    for meta, name in zip(fields[0::2], fields[1::2], strict=False):
        modes = meta.lstrip(":").split(" ")
        if len(modes) > 1 and modes[1] == "160000":
            found.append(f"{name}/")
    return found


def commit_staged(tree: AgentWorktree, *, message: str, identity: list[str]) -> str | None:
    """Commit the index on the worktree's branch; the new sha, or None if nothing is staged."""
    written = git_checked(["write-tree"], worktree=tree)
    # "--" ends the revisions: a file named HEAD in the worktree is no revision.
    heads = git_checked(["rev-parse", "HEAD", "HEAD^{tree}", "--"], worktree=tree)
    head, head_tree = heads.split()[:2]
    if written == head_tree:
        return None
    commit = git_checked(
        [*identity, "commit-tree", written, "-p", head, "-m", message], worktree=tree
    )
    _objects_import(tree, commit=commit, parent=head)
    git_checked(
        ["update-ref", "-m", "flotilla: commit", "HEAD", commit, head], git_dir=tree.git_dir
    )
    return commit


def _objects_import(tree: AgentWorktree, *, commit: str, parent: str) -> None:
    """Move the commit's new objects into the mirror as a pack that ``index-pack`` checks."""
    revisions = f"{commit}\n--not\n{parent}\n".encode()
    name = git_checked(
        ["pack-objects", "--revs", "-q", str(tree.scratch / "import")],
        worktree=tree,
        stdin=revisions,
    ).strip()
    if not re.fullmatch(r"[0-9a-f]{40}|[0-9a-f]{64}", name):
        raise WorkspaceError(f"git pack-objects failed: unexpected answer {name[:80]!r}")
    # The scratch directory belongs to the sandbox user: open nothing there by a
    # path that could have become a link.
    directory = os.open(tree.scratch, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        opened = os.open(f"import-{name}.pack", os.O_RDONLY | os.O_NOFOLLOW, dir_fd=directory)
        with os.fdopen(opened, "rb") as stream:
            if not stat.S_ISREG(os.fstat(stream.fileno()).st_mode):
                raise WorkspaceError("git pack-objects failed: its pack is not a regular file")
            git_checked(["index-pack", "--stdin"], git_dir=tree.mirror, stdin=stream)
    finally:
        for suffix in (".pack", ".idx"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"import-{name}{suffix}", dir_fd=directory)
        os.close(directory)
