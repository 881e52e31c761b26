"""The Claude runtime: a Messages API tool-use loop in the worker, acting on the worktree.

The API key stays in this process: the model's tools run here (files) or in
the sandbox (commands), and the sandbox never sees the key. Every reply is
accounted (tokens, dollars) before its tools run; when the budget is spent
the conversation is saved and the run ends ``paused``, so no worker process
waits on an operator. Every model call can be abandoned: a kill, made by
another process, is noticed within ``FLOTILLA_CLAUDE_CANCEL_POLL_S``.
"""

import json
import time
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.conf import settings

from agents.models import AgentConversation, AgentEventKind
from agents.runtimes.base import AgentRuntime, RunContext, RunOutcome
from agents.runtimes.claude import prompts
from agents.runtimes.claude.accounting import Usage, agent_budget_usd, agent_usage_add
from agents.runtimes.claude.tools import RunStopped, Toolbox, ToolResult, tool_definitions
from gates.llm import LlmCancelled, LlmError, LlmSession, llm_redact

# Replies in a row without a tool call before the run is given up.
_IDLE_REPLIES = 3
_EVENT_TEXT_CHARS = 20_000
_STOPPED = RunOutcome(False, error="stopped: the agent left the running state")


@dataclass(frozen=True)
class ClaudeOptions:
    model: str
    max_tokens: int
    max_turns: int

    @classmethod
    def for_agent(cls, options: dict[str, Any]) -> "ClaudeOptions":
        return cls(
            model=options.get("model") or settings.FLOTILLA_CLAUDE_MODEL,
            max_tokens=int(options.get("max_tokens") or settings.FLOTILLA_CLAUDE_MAX_TOKENS),
            max_turns=int(options.get("max_turns") or settings.FLOTILLA_CLAUDE_MAX_TURNS),
        )


class ClaudeRuntime(AgentRuntime):
    name = "claude"

    def run(self, context: RunContext) -> RunOutcome:
        try:
            session = LlmSession()
        except LlmError as error:
            return RunOutcome(False, error=error.reason)
        with session:
            try:
                return _Conversation(context, session).run()
            except RunStopped:
                return _STOPPED


class _Conversation:
    def __init__(self, context: RunContext, session: LlmSession) -> None:
        self.context = context
        self.agent = context.agent
        self.session = session
        self.options = ClaudeOptions.for_agent(self.agent.options or {})
        self.deadline = time.monotonic() + self.agent.timeout_s
        self.tools = Toolbox(context, deadline=self.deadline)
        self.budget = agent_budget_usd(self.agent)
        self.spent = Decimal(self.agent.cost_usd or 0)
        self.request = {
            "model": self.options.model,
            "max_tokens": self.options.max_tokens,
            # The system prompt and the tool definitions are the same on every
            # turn: each carries a cache breakpoint.
            "system": [
                {
                    "type": "text",
                    "text": prompts.system_prompt(self.agent),
                    "cache_control": {"type": "ephemeral"},
                }
            ],
            "tools": tool_definitions(self.agent.agent_type),
            "metadata": {"user_id": str(self.agent.id)},
        }
        self.messages, self.turns = self._load()

    # --- the loop -------------------------------------------------------------

    def run(self) -> RunOutcome:
        idle = 0
        while True:
            stop = self._stop_reason()
            if stop is not None:
                return stop
            try:
                reply = self.session.create(
                    should_stop=self.context.is_cancelled,
                    poll_s=settings.FLOTILLA_CLAUDE_CANCEL_POLL_S,
                    **self.request,
                    messages=_with_cache_breakpoint(self.messages),
                )
            except LlmCancelled:
                return _STOPPED
            except LlmError as error:
                return self._failed(f"the model could not be asked: {error.reason}")
            self.turns += 1
            content = self._record_reply(reply)
            if reply.get("stop_reason") == "refusal":
                return self._failed("the model refused to continue")
            calls = [block for block in content if block.get("type") == "tool_use"]
            if reply.get("stop_reason") == "max_tokens" and calls:
                self.messages.append(
                    {
                        "role": "user",
                        "content": [
                            _tool_result(call["id"], prompts.CUT_OFF, is_error=True)
                            for call in calls
                        ],
                    }
                )
                continue
            if not calls:
                idle += 1
                if idle >= _IDLE_REPLIES:
                    return self._failed(
                        f"the model stopped calling tools {idle} times without finishing"
                    )
                text = (
                    prompts.CUT_OFF if reply.get("stop_reason") == "max_tokens" else prompts.NUDGE
                )
                self.messages.append({"role": "user", "content": text})
                continue
            idle = 0
            finished = self._run_tools(calls)
            if finished is not None:
                return finished

    def _stop_reason(self) -> RunOutcome | None:
        """Why the loop must not ask the model again, or None."""
        if self.context.is_cancelled():
            return _STOPPED
        if self.turns >= self.options.max_turns:
            return self._failed(
                f"reached the limit of {self.options.max_turns} turns without finishing"
            )
        if time.monotonic() >= self.deadline:
            return self._failed(f"timed out after {self.agent.timeout_s} s")
        if self.budget is not None and self.spent >= self.budget:
            reason = f"budget exhausted: spent ${self.spent} of ${self.budget}"
            self._save()
            return RunOutcome(False, error=reason, paused=True, result=self._result())
        return None

    def _run_tools(self, calls: list[dict[str, Any]]) -> RunOutcome | None:
        results = []
        for call in calls:
            if self.context.is_cancelled():
                return _STOPPED
            result = self.tools.call(call.get("name", ""), call.get("input"))
            result.text = _truncated(llm_redact(result.text))
            results.append(_tool_result(call["id"], result.text, is_error=result.is_error))
            self._emit(
                {
                    "role": "tool",
                    "turn": self.turns,
                    "tool_use_id": call["id"],
                    "name": call.get("name"),
                    "input": _clipped(call.get("input")),
                    "is_error": result.is_error,
                    "result": result.text,
                }
            )
            if result.finished:
                return self._finished(result)
        self.messages.append({"role": "user", "content": results})
        return None

    # --- replies and accounting -----------------------------------------------

    def _record_reply(self, reply: dict[str, Any]) -> list[dict[str, Any]]:
        usage = Usage.from_reply(reply.get("usage"))
        cost = usage.cost_usd(self.options.model)
        agent_usage_add(agent_id=self.agent.id, usage=usage, cost_usd=cost)
        self.spent += cost
        content = [_block(block) for block in reply.get("content") or []]
        self.messages.append(
            {"role": "assistant", "content": content or [{"type": "text", "text": "(no reply)"}]}
        )
        self._emit(
            {
                "role": "assistant",
                "turn": self.turns,
                "content": content,
                "stop_reason": reply.get("stop_reason"),
                "usage": usage.as_dict(),
                "cost_usd": str(cost),
                "spent_usd": str(self.spent),
            }
        )
        return content

    def _finished(self, result: ToolResult) -> RunOutcome:
        summary = result.data["summary"]
        return RunOutcome(
            True, summary=summary, delivered=True, result={**self._result(), **result.data}
        )

    def _failed(self, reason: str) -> RunOutcome:
        return RunOutcome(False, error=reason, result=self._result())

    def _result(self) -> dict[str, Any]:
        return {"turns": self.turns, "model": self.options.model, "cost_usd": str(self.spent)}

    def _emit(self, data: dict[str, Any]) -> None:
        text = json.dumps(data)
        redacted = llm_redact(text)
        self.context.emit(
            AgentEventKind.TRANSCRIPT, data if redacted == text else json.loads(redacted)
        )

    # --- persistence ----------------------------------------------------------

    def _load(self) -> tuple[list[dict[str, Any]], int]:
        """The saved conversation of a paused agent, or a new one."""
        saved = AgentConversation.objects.filter(agent_id=self.agent.id).first()
        if saved is not None:
            saved.delete()
            if saved.attempt == self.agent.attempt:
                self.context.emit(
                    AgentEventKind.LOG,
                    {"message": f"resuming the conversation after turn {saved.turns}"},
                )
                return saved.messages, saved.turns
        first = prompts.first_message(self.agent)
        self._emit({"role": "user", "turn": 0, "content": first})
        return [{"role": "user", "content": first}], 0

    def _save(self) -> None:
        AgentConversation.objects.update_or_create(
            agent_id=self.agent.id,
            defaults={
                "attempt": self.agent.attempt,
                "turns": self.turns,
                "messages": self.messages,
            },
        )


def _block(block: dict[str, Any]) -> dict[str, Any]:
    """A content block as it may be sent back: the SDK's dump has null fields the API rejects."""
    kind = block.get("type")
    if kind == "text":
        return {"type": "text", "text": block.get("text", "")}
    if kind == "tool_use":
        tool_input = block.get("input")
        return {
            "type": "tool_use",
            "id": block["id"],
            "name": block.get("name", ""),
            "input": tool_input if isinstance(tool_input, dict) else {},
        }
    return {key: value for key, value in block.items() if value is not None}


def _tool_result(tool_use_id: str, text: str, *, is_error: bool) -> dict[str, Any]:
    result: dict[str, Any] = {"type": "tool_result", "tool_use_id": tool_use_id, "content": text}
    if is_error:
        result["is_error"] = True
    return result


def _with_cache_breakpoint(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The conversation with a cache breakpoint on its last block, so each turn reuses the last."""
    last = messages[-1]
    content = last["content"]
    if isinstance(content, str):
        content = [{"type": "text", "text": content}]
    marked = [*content[:-1], {**content[-1], "cache_control": {"type": "ephemeral"}}]
    return [*messages[:-1], {**last, "content": marked}]


def _truncated(text: str) -> str:
    limit = settings.FLOTILLA_CLAUDE_TOOL_RESULT_MAX_CHARS
    if len(text) <= limit:
        return text
    head = limit * 2 // 5
    tail = limit - head
    return (
        f"{text[:head]}\n[... truncated: {len(text) - limit} of {len(text)} characters "
        f"left out here; the result was longer than {limit} characters ...]\n{text[-tail:]}"
    )


def _clipped(value: Any) -> Any:
    """A tool input for the transcript, with very long strings (file contents) shortened."""
    if isinstance(value, dict):
        return {key: _clipped(item) for key, item in value.items()}
    if isinstance(value, str) and len(value) > _EVENT_TEXT_CHARS:
        return value[:_EVENT_TEXT_CHARS] + f"[... {len(value) - _EVENT_TEXT_CHARS} more characters]"
    return value
