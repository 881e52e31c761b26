"""Tokens and dollars: what each reply cost, and what an agent has spent so far."""

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db.models import F

from agents.models import Agent

_MILLION = Decimal(1_000_000)
_MICRODOLLAR = Decimal("0.000001")


def model_price(
    model: str, prices: Mapping[str, dict[str, float]] | None = None
) -> dict[str, float] | None:
    """USD per million tokens for ``model``: the longest configured prefix of its name wins.

    ``prices`` is a table like ``settings.FLOTILLA_CLAUDE_PRICES`` (the default)
    or ``settings.FLOTILLA_OPENAI_PRICES``.
    """
    table = settings.FLOTILLA_CLAUDE_PRICES if prices is None else prices
    prefixes = [prefix for prefix in table if model.startswith(prefix)]
    if not prefixes:
        return None
    return table[max(prefixes, key=len)]


@dataclass(frozen=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0

    @classmethod
    def from_reply(cls, usage: dict[str, Any] | None) -> "Usage":
        usage = usage or {}
        return cls(
            input_tokens=int(usage.get("input_tokens") or 0),
            output_tokens=int(usage.get("output_tokens") or 0),
            cache_read_tokens=int(usage.get("cache_read_input_tokens") or 0),
            cache_write_tokens=int(usage.get("cache_creation_input_tokens") or 0),
        )

    def cost_usd(self, model: str, prices: Mapping[str, dict[str, float]] | None = None) -> Decimal:
        price = model_price(model, prices)
        if price is None:
            raise ValueError(f"no price for model {model}")
        total = (
            self.input_tokens * Decimal(str(price["input"]))
            + self.output_tokens * Decimal(str(price["output"]))
            + self.cache_read_tokens * Decimal(str(price["cache_read"]))
            + self.cache_write_tokens * Decimal(str(price["cache_write"]))
        )
        return (total / _MILLION).quantize(_MICRODOLLAR)

    def as_dict(self) -> dict[str, int]:
        return {
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cache_read_input_tokens": self.cache_read_tokens,
            "cache_creation_input_tokens": self.cache_write_tokens,
        }


def agent_usage_add(*, agent_id: uuid.UUID, usage: Usage, cost_usd: Decimal) -> None:
    """Add one reply's usage to the agent's totals, in one UPDATE."""
    Agent.objects.filter(id=agent_id).update(
        input_tokens=F("input_tokens") + usage.input_tokens,
        output_tokens=F("output_tokens") + usage.output_tokens,
        cache_read_tokens=F("cache_read_tokens") + usage.cache_read_tokens,
        cache_write_tokens=F("cache_write_tokens") + usage.cache_write_tokens,
        cost_usd=F("cost_usd") + cost_usd,
    )


def agent_budget_usd(agent: Agent) -> Decimal | None:
    """The agent's budget (``options.budget_usd``), or None for no limit."""
    value = (agent.options or {}).get("budget_usd")
    return None if value in (None, "") else Decimal(str(value))
