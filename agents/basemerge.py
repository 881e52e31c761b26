"""Before a push: bring the base branch into the work branch, and hand a conflict to the agent.

The base may have moved on while the agent worked. The hub merges it into
the work branch (a merge, not a rebase: docs/architecture.md says why) in
the mirror, then makes the worktree hold the result, so the pre-push gates
judge, and the push carries, the branch as it would land. A conflict either
goes back to an agent that can resolve it (the ``claude`` runtime, the CLI
agents), with the conflicting files left in its worktree between conflict
markers, or leaves the branch as it was (a script agent, which is retried
on the new base while it has retries).

The worktree is written by the hub, as root, from blobs of the mirror; the
paths are git's, and are opened without following any link
(``Worktree.put``), because the agent may have put one anywhere.
"""

from agents import workspace
from agents.models import Agent, AgentEventKind
from agents.runtimes.base import RunContext


def base_merge(context: RunContext, *, hand_over: bool) -> workspace.BaseMerge:
    """Merge the agent's base branch into its work branch; the worktree follows the branch.

    ``hand_over``: on a conflict, the branch moves to a merge that keeps its
    own side of the conflicting files and the worktree gets git's merge with
    conflict markers in them, for the agent to resolve.
    """
    agent = context.agent
    merge = workspace.branch_base_merge(
        repository=agent.repository,
        work_branch=agent.work_branch,
        base_branch=agent.base_branch,
        keep_conflicts=hand_over,
    )
    if merge.head == merge.previous:
        if merge.conflicts:
            _announce(context, merge, "conflicts; the branch is left as it was")
        return merge
    target = (
        merge.tree
        if merge.conflicts
        else workspace.commit_tree(repository=agent.repository, commit=merge.head)
    )
    worktree_sync(context, old=merge.previous, new=target)
    workspace.worktree_index_reset(path=context.worktree)
    if merge.conflicts:
        _announce(context, merge, "conflicts; the worktree holds them between markers")
    else:
        _announce(context, merge, f"merged cleanly as {merge.head[:12]}")
    return merge


def worktree_sync(context: RunContext, *, old: str, new: str) -> None:
    """Write into the worktree every file that differs from commit ``old`` to tree ``new``."""
    # Imported here: the claude package imports its tools, which import this module.
    from agents.runtimes.claude.files import Worktree

    agent = context.agent
    files = Worktree(context.worktree)
    old_tree = workspace.commit_tree(repository=agent.repository, commit=old)
    for change in workspace.tree_changes(repository=agent.repository, old=old_tree, new=new):
        try:
            if not change.blob:
                files.remove(change.path)
            elif change.mode != "160000":  # a gitlink: the hub never enters another repository
                data = workspace.blob_read(repository=agent.repository, blob=change.blob)
                files.put(change.path, data, mode=change.mode)
        except (OSError, RecursionError) as error:
            raise workspace.WorkspaceError(
                f"the merge of {agent.base_branch} could not be written to the worktree at "
                f"{change.path[:200]}: {error}"
            ) from None


def conflict_markers(agent: Agent, diff: str) -> list[str]:
    """``file:line`` of each conflict marker of the hub's that a staged diff still adds.

    Only the markers of the hub's own merge count (their labels name the
    work branch and the base exactly), so a file that documents git's
    markers is never taken for an unresolved conflict.
    """
    labels = conflict_labels(agent)
    found: list[str] = []
    path, line_number = "", 0
    for line in diff.splitlines():
        if line.startswith("+++ "):
            path = line[4:].removeprefix("b/")
        elif line.startswith("@@ "):
            try:
                line_number = int(line.split("+")[1].split(",")[0].split(" ")[0])
            except (IndexError, ValueError):
                line_number = 0
        elif line.startswith("+"):
            if line[1:].rstrip() in labels:
                found.append(f"{path}:{line_number}")
            line_number += 1
        elif line.startswith(" "):
            line_number += 1
    return found


def conflict_labels(agent: Agent) -> tuple[str, str]:
    """The first and last marker line of a conflict in the hub's merge (git labels them by ref)."""
    return (
        f"<<<<<<< refs/heads/{agent.work_branch}",
        f">>>>>>> refs/remotes/origin/{agent.base_branch}",
    )


def conflict_hand_over_message(agent: Agent, merge: workspace.BaseMerge) -> str:
    """What an agent that can resolve a conflict is told (the tool result, the next prompt)."""
    first, last = conflict_labels(agent)
    files = ", ".join(merge.conflicts[:50]) + (" and more" if len(merge.conflicts) > 50 else "")
    return (
        f"not pushed: {agent.base_branch} moved on since this branch left it, and merging it "
        f"conflicts in: {files}. The hub has merged {agent.base_branch} ({merge.base[:12]}) into "
        f"your worktree: every other file already holds its changes, and each conflicting "
        f"file holds both versions between the lines '{first}', '=======' and '{last}'. Edit "
        "each conflicting file so it keeps what both sides meant, remove those marker lines, "
        "run the tests, then finish again."
    )


def conflict_refused_message(agent: Agent, merge: workspace.BaseMerge) -> str:
    files = ", ".join(merge.conflicts[:50]) + (" and more" if len(merge.conflicts) > 50 else "")
    return (
        f"not pushed: {agent.base_branch} moved on since {agent.work_branch} left it, and "
        f"merging it conflicts in: {files}"
    )


def _announce(context: RunContext, merge: workspace.BaseMerge, what: str) -> None:
    agent = context.agent
    context.emit(
        AgentEventKind.LOG,
        {
            "message": f"merging {agent.base_branch} ({merge.base[:12]}) into "
            f"{agent.work_branch}: {what}",
            "base_merge": {
                "status": merge.status,
                "base": merge.base,
                "previous": merge.previous,
                "head": merge.head,
                "conflicts": list(merge.conflicts),
            },
        },
    )
