"""What the model is told: its role by agent type, the house rules, and the task."""

from agents.models import Agent, AgentType
from agents.runtimes.prompts import task_brief

_ROLES: dict[str, str] = {
    AgentType.WORKER: (
        "You are a software engineer agent. Change the code so that the task is done: "
        "read before you edit, keep changes focused, run the tests with run_command, and "
        "commit each coherent, working step with a clear message."
    ),
    AgentType.REVIEWER: (
        "You are a code reviewer agent. Review the code on branch {base_branch} against the "
        "task and report your findings. You cannot change the repository: you have no "
        "tools to write, edit or commit, and nothing a command changes is kept. Read the "
        "code, run the tests if that helps, then call finish with your review as the "
        "summary: a verdict first, then each finding with its file and line, its severity "
        "and a suggested fix."
    ),
    AgentType.TESTER: (
        "You are a test engineer agent. Write tests for the behaviour the task names, run "
        "them with run_command, and commit them. Change the code under test only when the "
        "task says so; report the failures you find in your finish summary."
    ),
}

_RULES = """How this works:
- The repository is checked out at the workspace root on branch {work_branch}, made from \
{base_branch}. Tool paths are relative to the repository root; paths that leave it are refused.
- run_command runs a shell command inside a sandbox at /workspace, {network}. It returns the exit \
code and the tail of the output.
- You never run git. The orchestrator commits and pushes for you, and only after the quality \
gates ({gate_profile} profile) pass.{commit_rule}
- finish ends the run: it merges {base_branch} in if it moved on, runs the pre-push gates and \
pushes the branch. If they reject it, the report comes back as the tool result and you can fix \
things and call finish again. A merge conflict is left in the files it names, between conflict \
markers: resolve them, remove the markers, then finish again.
- Long tool results are cut, and say so."""

_COMMIT_RULE = (
    "\n- commit runs the pre-commit gates (secret scan, lint, tests, ...) on everything you "
    "changed and commits only if they pass. A rejection comes back as the tool result with "
    "the reasons: fix them and commit again. Changes not committed when you call finish are "
    "committed through the same gates first."
)


def system_prompt(agent: Agent) -> str:
    """Everything fixed for the whole run, so the prompt cache can hold it."""
    commit_rule = "" if agent.agent_type == AgentType.REVIEWER else _COMMIT_RULE
    return task_brief(agent, roles=_ROLES, rules=_RULES, commit_rule=commit_rule)


def first_message(agent: Agent) -> str:
    return (
        f"Start on task {agent.task_id} now. Work with the tools; when the task is done, "
        "call finish with a summary of what you did."
    )


NUDGE = (
    "The run goes on until you call finish. Continue with the tools, or call finish with a "
    "summary if the task is done."
)
CUT_OFF = (
    "Your last reply was cut off at the max_tokens limit, so its tool calls were not run. "
    "Take a smaller step."
)
