"""What every runtime tells its model: the role, the rules, the task and what came with it.

Each runtime words its own roles and rules (agents/runtimes/claude/prompts.py,
agents/runtimes/cli/prompts.py); this puts them together the same way.
"""

from collections.abc import Mapping

from agents.models import Agent, AgentType, NetworkMode

# What a command's sandbox may reach, by the agent's network mode.
NETWORK_ACCESS: dict[str, str] = {
    NetworkMode.OFF: "without network access",
    NetworkMode.ALLOWLIST: (
        "with HTTP(S) access to the hub's allowlisted hosts (package registries) only, "
        "through the proxy that HTTP_PROXY and HTTPS_PROXY name"
    ),
    NetworkMode.ON: (
        "with HTTP(S) access to public hosts through the proxy that HTTP_PROXY and HTTPS_PROXY name"
    ),
}


def task_brief(agent: Agent, *, roles: Mapping[str, str], rules: str, **fields: str) -> str:
    """The agent's role, the rules and its task, in sections.

    ``roles`` maps agent types to a role (a worker's when the type has none),
    which may name ``{base_branch}``; ``rules`` may name ``{work_branch}``,
    ``{base_branch}``, ``{network}``, ``{gate_profile}`` and each of ``fields``.
    """
    role = roles.get(agent.agent_type, roles[AgentType.WORKER])
    sections = [
        role.format(base_branch=agent.base_branch),
        rules.format(
            work_branch=agent.work_branch,
            base_branch=agent.base_branch,
            network=NETWORK_ACCESS.get(agent.network, NETWORK_ACCESS[NetworkMode.OFF]),
            gate_profile=agent.gate_profile,
            **fields,
        ),
        f"Task {agent.task_id}.",
    ]
    if agent.instructions:
        sections.append(f"Instructions:\n{agent.instructions}")
    if agent.work_items:
        sections.append("Work items:\n" + "\n".join(f"- {item}" for item in agent.work_items))
    if agent.skills:
        sections.append(
            "Skills to apply in this task:\n" + "\n".join(f"- {skill}" for skill in agent.skills)
        )
    return "\n\n".join(sections)
