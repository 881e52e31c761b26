"""Git workspaces: one bare mirror per repository, one worktree per agent.

Each repository gets one bare mirror under ``DATA_DIR/mirrors``; every agent
gets a worktree of it on its own branch. Remote branches are fetched into
``refs/remotes/origin/*`` so a fetch can never move or delete an agent's
local branch, and "unpushed" simply means "not reachable from any
``origin/*`` ref".

Every git command goes through ``agents.gitexec`` (one hub-owned
environment); the commands that read an agent's files go through
``agents.worktree_git``, which runs them jailed as the sandbox user. Every
fetch and push first asks ``agents.repositories`` whether the repository may
still be reached, and pins the address it vetted.

The package is split along those lines: ``mirrors`` (a mirror's path, lock,
fetch and excludes), ``worktrees`` (agents' worktrees and the hub's base
checkouts), ``branches`` (work branches in the mirror: diffs, the base merged
in, trees, blobs, push) and ``projects`` (scratch repositories and
integration branches). Callers use the names re-exported here.
"""

from agents.gitexec import WorkspaceError
from agents.repositories import repository_normalise, repository_problem, repository_scheme
from agents.workspace.branches import (
    BaseMerge,
    TreeChange,
    blob_read,
    branch_base_merge,
    branch_changes,
    branch_conflicts,
    branch_diff,
    branch_discard,
    branch_exists,
    branch_file_read,
    branch_files,
    branch_fork_point,
    branch_head,
    branch_push,
    branch_tree,
    branch_unpushed_commits,
    commit_tree,
    tree_changes,
)
from agents.workspace.mirrors import (
    SETUP_EXCLUDE_HEADER,
    exclude_pattern,
    mirror_exclude_add,
    mirror_path,
    mirror_repositories,
    mirror_sync,
)
from agents.workspace.projects import (
    IntegrationReport,
    branch_integrate,
    remote_branch_diff,
    scratch_repository_ensure,
)
from agents.workspace.worktrees import (
    RemovalReport,
    WorktreeStatus,
    base_checkout_add,
    base_checkout_path,
    base_checkout_remove,
    worktree_changed,
    worktree_commit,
    worktree_commit_staged,
    worktree_create,
    worktree_diff,
    worktree_dirs,
    worktree_discard,
    worktree_index_reset,
    worktree_list,
    worktree_patch,
    worktree_path,
    worktree_remove,
    worktree_stage,
    worktree_staged_changes,
    worktree_staged_tree,
    worktree_status,
)
from agents.worktree_git import NestedRepositoryRefused

__all__ = [
    "BaseMerge",
    "IntegrationReport",
    "NestedRepositoryRefused",
    "RemovalReport",
    "SETUP_EXCLUDE_HEADER",
    "TreeChange",
    "WorkspaceError",
    "WorktreeStatus",
    "base_checkout_add",
    "base_checkout_path",
    "base_checkout_remove",
    "blob_read",
    "branch_base_merge",
    "branch_changes",
    "branch_conflicts",
    "branch_diff",
    "branch_discard",
    "branch_exists",
    "branch_file_read",
    "branch_files",
    "branch_fork_point",
    "branch_head",
    "branch_integrate",
    "branch_push",
    "branch_tree",
    "branch_unpushed_commits",
    "commit_tree",
    "exclude_pattern",
    "mirror_exclude_add",
    "mirror_path",
    "mirror_repositories",
    "mirror_sync",
    "remote_branch_diff",
    "repository_normalise",
    "repository_problem",
    "repository_scheme",
    "scratch_repository_ensure",
    "tree_changes",
    "worktree_changed",
    "worktree_commit",
    "worktree_commit_staged",
    "worktree_create",
    "worktree_diff",
    "worktree_dirs",
    "worktree_discard",
    "worktree_index_reset",
    "worktree_list",
    "worktree_patch",
    "worktree_path",
    "worktree_remove",
    "worktree_stage",
    "worktree_staged_changes",
    "worktree_staged_tree",
    "worktree_status",
]
