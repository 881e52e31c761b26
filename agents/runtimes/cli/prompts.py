"""What a CLI agent is told: the task as its first prompt, and what follows a gate rejection."""

from agents.models import Agent, AgentType
from agents.runtimes.prompts import task_brief

_ROLES: dict[str, str] = {
    AgentType.WORKER: (
        "You are a software engineer. Change the code in this repository so that the task "
        "below is done: read before you edit, keep the change focused, and run the tests."
    ),
    AgentType.REVIEWER: (
        "You are a code reviewer. Review the code on branch {base_branch} against the task "
        "below and report your findings. Do not change any file: nothing you change is kept. "
        "End with your review: a verdict first, then each finding with its file and line, its "
        "severity and a suggested fix."
    ),
    AgentType.TESTER: (
        "You are a test engineer. Write tests for the behaviour the task below names and run "
        "them. Change the code under test only when the task says so; report the failures "
        "you find in your final message."
    ),
}

_RULES = """How this works:
- The repository is checked out in /workspace (your working directory) on branch \
{work_branch}, made from {base_branch}.
- Commands run in a sandbox {network}.
- Do not run git commit, git push or anything else that writes to git: the repository's git \
data is read-only to you. When you stop, the hub commits your changes and pushes the branch, \
but only after its quality gates ({gate_profile} profile: lint, tests, secret scan, ...) pass. \
If they reject the change, their report comes back to you in this session to fix.
- When the task is done, stop with a short summary of what you changed: it becomes the commit \
message."""


def task_prompt(agent: Agent) -> str:
    """The first prompt of a run: the role by agent type, the house rules, and the task."""
    return task_brief(agent, roles=_ROLES, rules=_RULES) + "\n"


def gate_feedback_prompt(report: str, *, round_number: int, rounds: int) -> str:
    """The next prompt after the hub's gates (or the conflict check) rejected the change."""
    return (
        f"The hub did not push your change (round {round_number} of {rounds}): its quality "
        "gates or its merge check rejected it. Their report:\n\n"
        f"{report}\n\n"
        "Fix what the report names in /workspace (for a merge conflict: the hub has merged the "
        "base branch into /workspace, and each conflicting file holds both versions between "
        "conflict markers; edit it to keep what both sides meant and remove the marker lines), "
        "run the tests, then stop with a short summary of what you changed. Do not run git "
        "commit or git push.\n"
    )


CONTINUE_PROMPT = (
    "You were paused because the model budget ran out; the operator has raised it. Continue "
    "the task where you stopped, then stop with a short summary of what you changed.\n"
)
