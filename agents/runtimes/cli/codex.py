"""The codex runtime: OpenAI's Codex CLI (``codex exec``), through the gateway.

It reads the task on standard input (``-``) and prints one JSON event per
line (``--json``): ``thread.started`` with the session id, ``item.started`` /
``item.completed`` for each command it runs (``exec_command``), each patch it
applies (``apply_patch``) and each message, then ``turn.completed`` or
``turn.failed``. ``codex exec resume <session>`` continues a session from its
files under ``~/.codex``.

Codex reads its endpoint from its configuration, not from OPENAI_BASE_URL, so
every command line names the gateway as a model provider of its own (``-c``
overrides win over anything in ``~/.codex/config.toml``, which the agent can
write). ``--dangerously-bypass-approvals-and-sandbox``: the hub's sandbox is
the containment, and Codex's own sandbox cannot nest in it.
"""

from typing import Any

from django.conf import settings

from agents.gateway.service import GATEWAY_URL
from agents.models import NetworkMode
from agents.runtimes.cli.base import CliRuntime
from agents.runtimes.cli.install import CliPackage
from agents.runtimes.cli.rounds import CliRound, json_object, tool_call, tool_result

_PROVIDER = (
    'model_providers.flotilla={name="Flotilla model gateway",'
    f'base_url="{GATEWAY_URL}/v1",env_key="OPENAI_API_KEY",wire_api="responses"}}'
)


class CodexRuntime(CliRuntime):
    name = "codex"
    provider = "openai"
    cli = CliPackage(
        runtime="codex", package="@openai/codex", version="0.171.0", binary="codex", title="Codex"
    )

    def default_model(self) -> str:
        return settings.FLOTILLA_CODEX_MODEL

    def environment(self, *, token: str) -> dict[str, str]:
        return {"OPENAI_API_KEY": token}

    def arguments(self, *, model: str, session_id: str, network: str) -> list[str]:
        config = [_PROVIDER, "model_provider=flotilla", "check_for_update_on_startup=false"]
        if network == NetworkMode.OFF:
            # OpenAI runs web searches on its side: "off" means the model alone.
            config.append('web_search="disabled"')
        common = ["--json", "--skip-git-repo-check", "--dangerously-bypass-approvals-and-sandbox"]
        common += ["-m", model]
        for setting in config:
            common += ["-c", setting]
        if session_id:
            return ["exec", "resume", *common, session_id, "-"]
        return ["exec", *common, "-"]

    def transcript(self, event: dict[str, Any], round_: CliRound) -> list[dict[str, Any]]:
        kind = event.get("type")
        item = json_object(event.get("item"))
        if kind == "thread.started":
            round_.note_session(event.get("thread_id"))
            thread = event.get("thread_id")
            return [{"role": "system", "text": f"Codex session {thread}", "session_id": thread}]
        if kind == "item.started":
            return _item_started(item)
        if kind == "item.completed":
            return _item_completed(item, round_)
        if kind == "turn.completed":
            text = round_.final_text or "turn completed"
            return [{"role": "result", "text": text, "usage": event.get("usage")}]
        if kind in ("turn.failed", "error"):
            return [_error(event, round_, failed=kind == "turn.failed")]
        if kind in ("turn.started", "item.updated"):
            return []
        return [{"role": "event", "text": str(kind), "event": event}]


def _item_started(item: dict[str, Any]) -> list[dict[str, Any]]:
    kind, item_id = item.get("type"), str(item.get("id") or "")
    if kind == "command_execution":
        command = item.get("command", "")
        return [tool_call("exec_command", {"command": command}, call_id=item_id, shown=command)]
    if kind == "file_change":
        changes = item.get("changes") or []
        return [tool_call("apply_patch", {"changes": changes}, call_id=item_id, shown=_files(item))]
    if kind == "mcp_tool_call":
        name = f"{item.get('server', '')}.{item.get('tool', '')}"
        return [tool_call(name, item.get("arguments"), call_id=item_id)]
    if kind == "web_search":
        return [tool_call("web_search", {"query": item.get("query")}, call_id=item_id)]
    return []


def _item_completed(item: dict[str, Any], round_: CliRound) -> list[dict[str, Any]]:
    kind, item_id = item.get("type"), str(item.get("id") or "")
    failed = item.get("status") == "failed"
    if kind == "command_execution":
        exit_code = item.get("exit_code")
        output = item.get("aggregated_output", "")
        return [
            tool_result(
                "exec_command",
                output,
                call_id=item_id,
                is_error=failed or exit_code != 0,
                exit_code=exit_code,
            )
        ]
    if kind == "file_change":
        return [tool_result("apply_patch", _files(item), call_id=item_id, is_error=failed)]
    if kind == "agent_message":
        round_.final_text = str(item.get("text") or "")
        return [{"role": "assistant", "text": round_.final_text}]
    if kind == "reasoning":
        return [{"role": "thinking", "text": item.get("text", "")}]
    if kind == "error":
        return [{"role": "error", "text": item.get("message", "")}]
    if kind in ("mcp_tool_call", "web_search"):
        return [
            tool_result(str(kind), item.get("result") or item, call_id=item_id, is_error=failed)
        ]
    return [{"role": "event", "text": f"item {kind}", "item": item}]


def _files(item: dict[str, Any]) -> str:
    changes = [change for change in item.get("changes") or [] if isinstance(change, dict)]
    return ", ".join(
        f"{change.get('kind', 'change')} {change.get('path', '')}" for change in changes
    )


def _error(event: dict[str, Any], round_: CliRound, *, failed: bool) -> dict[str, Any]:
    error = json_object(event.get("error"))
    message = str(event.get("message") or error.get("message") or "")
    if failed:
        # A failed turn ends the run; plain errors (a reconnect) are only reported.
        round_.error = message or "the turn failed"
    return {"role": "error", "text": message, "fails_turn": failed}
