"""The agent page's report: usage and cost, the gate table, the network connections, retry.

Everything here is read from rows the hub wrote (``Agent`` and its
``gate`` and ``network`` events) and shaped for the template. The gates
already removed every secret they found from their reports; a finding
carries only a masked form of it, and that is all the page shows.
"""

from typing import Any, Literal

from agents.models import Agent, AgentEventKind
from agents.retries import RETRYABLE_STATES, agent_retry_problem
from agents.selectors import agent_events_range
from agents.services import REMOTE_SANDBOX
from dashboard.charts import usage_charts
from dashboard.selectors import agent_usage_turns

# Rows the page shows per table; an agent with more says how many it left out.
MAX_GATE_ROWS = 200
MAX_NETWORK_ROWS = 500


def agent_usage(agent: Agent) -> dict[str, Any]:
    budget = (agent.options or {}).get("budget_usd")
    return {
        "input_tokens": agent.input_tokens,
        "output_tokens": agent.output_tokens,
        "cache_read_tokens": agent.cache_read_tokens,
        "cache_write_tokens": agent.cache_write_tokens,
        "cost_usd": f"{agent.cost_usd:.4f}",
        "budget_usd": budget,
    }


def agent_usage_series(agent: Agent) -> dict[str, Any] | None:
    """The agent's cost and tokens per model turn over its run, as charts; None without any."""
    return usage_charts(
        turns=agent_usage_turns(agent_id=agent.id),
        started_at=agent.started_at,
        finished_at=agent.finished_at,
    )


# The states the page's Retry button shows in, as the page's script reads them.
RETRY_STATES = " ".join(sorted(RETRYABLE_STATES))


def agent_retry_offer(agent: Agent) -> Literal["now", "later", ""]:
    """Whether the page offers Retry: ``now``; ``later``, once a live agent fails or is
    killed (the button waits hidden); or not at all (``agents.retries`` says why)."""
    if agent_retry_problem(agent) is None:
        return "now"
    local = agent.origin == "local" and agent.sandbox_backend != REMOTE_SANDBOX
    return "later" if local and not agent.is_final else ""


def _finding(finding: Any) -> dict[str, Any]:
    """A secret-scan finding as shown: where, what kind, and only the masked value."""
    finding = finding if isinstance(finding, dict) else {}
    return {
        "file": str(finding.get("file", "")),
        "line": finding.get("line"),
        "kind": str(finding.get("kind", "")),
        "masked": str(finding.get("masked", "")),
    }


def _gate_row(data: dict[str, Any], created_at: Any) -> dict[str, Any]:
    details = data.get("details")
    if not isinstance(details, dict):
        details = {}
    failing = details.get("failing_tests") or []
    findings = details.get("findings") or []
    return {
        "stage": str(data.get("stage", "")),
        "gate": str(data.get("gate", "")),
        "outcome": str(data.get("outcome", "")),
        "passed": bool(data.get("passed")),
        "duration_s": data.get("duration_s"),
        "summary": str(data.get("summary", "")),
        "output": str(data.get("output", "")),
        "failing_tests": [str(test) for test in failing] if isinstance(failing, list) else [],
        "findings": [_finding(f) for f in findings] if isinstance(findings, list) else [],
        "confidence": data.get("confidence"),
        "at": created_at,
    }


def agent_gate_rows(*, agent: Agent) -> list[dict[str, Any]]:
    """Every gate result the agent's runs reported, in order (both stages, every round)."""
    events = agent_events_range(
        after=0, agent_id=agent.id, kinds=[AgentEventKind.GATE], limit=MAX_GATE_ROWS
    )
    return [_gate_row(event.data or {}, event.created_at) for event in events]


def _connection_row(data: dict[str, Any], created_at: Any) -> dict[str, Any]:
    return {
        "host": str(data.get("host") or ""),
        "port": data.get("port"),
        "method": str(data.get("method") or ""),
        "address": str(data.get("address") or ""),
        "allowed": bool(data.get("allowed")),
        "reason": str(data.get("reason") or ""),
        "end": str(data.get("end") or ""),
        "bytes_up": data.get("bytes_up") or 0,
        "bytes_down": data.get("bytes_down") or 0,
        "at": created_at,
    }


def agent_network(*, agent: Agent) -> dict[str, Any]:
    """The connections the agent's sandbox made through the egress proxy, allowed and refused.

    The proxy's own notes (a limit reached, the closing summary) come as
    ``notes``.
    """
    events = agent_events_range(
        after=0, agent_id=agent.id, kinds=[AgentEventKind.NETWORK], limit=MAX_NETWORK_ROWS
    )
    connections, notes = [], []
    for event in events:
        data = event.data or {}
        if data.get("event") == "connection":
            connections.append(_connection_row(data, event.created_at))
        elif data.get("event") == "summary":
            notes.append(
                f"{data.get('connections', 0)} connection(s), {data.get('refused', 0)} refused"
            )
        elif data.get("message"):
            notes.append(str(data["message"]))
    refused = sum(1 for row in connections if not row["allowed"])
    return {
        "mode": agent.network,
        "connections": connections,
        "refused": refused,
        "allowed": len(connections) - refused,
        "notes": notes,
        "truncated": len(events) >= MAX_NETWORK_ROWS,
    }
