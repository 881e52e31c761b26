"""The claude-code runtime: Anthropic's Claude Code CLI (``claude -p``), through the gateway.

It reads the task on standard input and prints one JSON event per line
(``--output-format stream-json --verbose``): ``system``/``init`` with the
session id, ``assistant`` and ``user`` messages (tool calls and their
results), and a final ``result``. ``--resume <session>`` continues a session
from its files under ``~/.claude``. ``--dangerously-skip-permissions`` lets it
act without asking anyone: the hub's sandbox is the containment (no network
but the gateway and the egress proxy, a read-only ``.git``), and Claude Code
refuses the flag only as root, which the sandbox user is not.
"""

from typing import Any

from django.conf import settings

from agents.gateway.service import GATEWAY_URL
from agents.models import NetworkMode
from agents.runtimes.cli.base import CliRuntime
from agents.runtimes.cli.install import CliPackage
from agents.runtimes.cli.rounds import (
    CliRound,
    json_object,
    one_line,
    tool_call,
    tool_result,
)


class ClaudeCodeRuntime(CliRuntime):
    name = "claude-code"
    provider = "anthropic"
    cli = CliPackage(
        runtime="claude-code",
        package="@anthropic-ai/claude-code",
        version="2.1.332",
        binary="claude",
        title="Claude Code",
    )

    def default_model(self) -> str:
        return settings.FLOTILLA_CLAUDE_MODEL

    def environment(self, *, token: str) -> dict[str, str]:
        return {
            "ANTHROPIC_BASE_URL": GATEWAY_URL,
            "ANTHROPIC_API_KEY": token,
            # No telemetry, error reports, update checks or connectivity probes:
            # only model calls, which the gateway forwards and counts.
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
            "DISABLE_AUTOUPDATER": "1",
        }

    def arguments(self, *, model: str, session_id: str, network: str) -> list[str]:
        arguments = ["-p", "--output-format", "stream-json", "--verbose"]
        arguments += ["--dangerously-skip-permissions", "--model", model]
        if network == NetworkMode.OFF:
            # Anthropic runs web searches on its side: "off" means the model alone.
            arguments += ["--disallowedTools", "WebSearch,WebFetch"]
        if session_id:
            arguments += ["--resume", session_id]
        return arguments

    def transcript(self, event: dict[str, Any], round_: CliRound) -> list[dict[str, Any]]:
        round_.note_session(event.get("session_id"))
        kind, subtype = event.get("type"), event.get("subtype")
        message = json_object(event.get("message"))
        if kind == "system" and subtype == "init":
            return [_session_started(event)]
        if kind == "assistant":
            return [_assistant_block(block, round_) for block in _blocks(message)]
        if kind == "user":
            return [_tool_result(block, round_) for block in _blocks(message) if _is_result(block)]
        if kind == "result":
            return [_result(event, round_)]
        return [{"role": "event", "text": f"{kind} {subtype or ''}".strip(), "event": event}]


def _session_started(event: dict[str, Any]) -> dict[str, Any]:
    return {
        "role": "system",
        "text": f"Claude Code {event.get('claude_code_version', '')} session "
        f"{event.get('session_id', '')}: model {event.get('model', '')}",
        "session_id": event.get("session_id"),
        "model": event.get("model"),
        "tools": event.get("tools"),
    }


def _blocks(message: dict[str, Any]) -> list[dict[str, Any]]:
    content = message.get("content")
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    return [block for block in content or [] if isinstance(block, dict)]


def _assistant_block(block: dict[str, Any], round_: CliRound) -> dict[str, Any]:
    kind = block.get("type")
    if kind == "tool_use":
        name, call_id = str(block.get("name") or ""), str(block.get("id") or "")
        round_.tools[call_id] = name
        return tool_call(name, block.get("input"), call_id=call_id)
    if kind == "thinking":
        return {"role": "thinking", "text": block.get("thinking", "")}
    if kind == "text":
        return {"role": "assistant", "text": block.get("text", "")}
    return {"role": "event", "text": f"assistant {kind}", "block": block}


def _is_result(block: dict[str, Any]) -> bool:
    return block.get("type") == "tool_result"


def _tool_result(block: dict[str, Any], round_: CliRound) -> dict[str, Any]:
    call_id = str(block.get("tool_use_id") or "")
    content = block.get("content")
    if isinstance(content, list):
        content = "\n".join(part.get("text", "") for part in content if isinstance(part, dict))
    return tool_result(
        round_.tools.get(call_id, "tool"),
        content if isinstance(content, str) else one_line(content),
        call_id=call_id,
        is_error=bool(block.get("is_error")),
    )


def _result(event: dict[str, Any], round_: CliRound) -> dict[str, Any]:
    result = event.get("result")
    text = result if isinstance(result, str) else ""
    failed = bool(event.get("is_error")) or event.get("subtype") != "success"
    round_.final_text = text
    if failed:
        round_.error = text or str(event.get("subtype") or "the CLI reported an error")
    return {
        "role": "result",
        "text": text or str(event.get("subtype") or ""),
        "is_error": failed,
        "subtype": event.get("subtype"),
        "num_turns": event.get("num_turns"),
        "session_id": event.get("session_id"),
        "duration_ms": event.get("duration_ms"),
    }
