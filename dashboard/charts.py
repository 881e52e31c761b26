"""The activity page's plots, drawn on the server as SVG: no script, no library.

Two charts over the last ``CHART_DAYS`` days, both from one grouped query
(``agents.selectors.agents_per_day``) on the agents the viewer may see:
agents by state per day of creation (stacked bars) and spend per day.
The geometry is computed here; the template only writes it out, escaped.
"""

from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

from django.utils import timezone

from agents.models import AgentState
from agents.selectors import agents_owned_by, agents_per_day

CHART_DAYS = 14
WIDTH, HEIGHT = 720, 240
LEFT, RIGHT, TOP, BOTTOM = 56, 12, 12, 30
# The stacking order, bottom first: finished outcomes, then the live states.
STATE_ORDER = [
    AgentState.COMPLETED,
    AgentState.FAILED,
    AgentState.KILLED,
    AgentState.PAUSED,
    AgentState.QUEUED,
    AgentState.SPAWNING,
    AgentState.RUNNING,
    AgentState.GATING,
    AgentState.PUSHING,
]


@dataclass
class Bar:
    x: float
    y: float
    width: float
    height: float
    css: str
    title: str


@dataclass
class Chart:
    title: str
    width: int = WIDTH
    height: int = HEIGHT
    bars: list[Bar] = field(default_factory=list)
    ticks: list[dict[str, Any]] = field(default_factory=list)  # y gridlines: {"y", "label"}
    labels: list[dict[str, Any]] = field(default_factory=list)  # x labels: {"x", "text"}
    legend: list[str] = field(default_factory=list)
    empty: bool = True
    baseline: float = HEIGHT - BOTTOM
    left: int = LEFT
    right_edge: int = WIDTH - RIGHT


def _nice_ceiling(value: float) -> float:
    """The smallest 1, 2 or 5 × 10ⁿ at least ``value`` (1 for nothing)."""
    if value <= 0:
        return 1
    scale = 1.0
    while scale * 10 <= value:
        scale *= 10
    while scale > value:
        scale /= 10
    for step in (1, 2, 5, 10):
        if step * scale >= value:
            return step * scale
    return 10 * scale


def _frame(chart: Chart, days: list[date], maximum: float, money: bool) -> tuple[float, float]:
    """Gridlines and day labels; returns the width of one day's slot and the y scale."""
    plot_height = HEIGHT - TOP - BOTTOM
    top = _nice_ceiling(maximum)
    for fraction in (0, 0.5, 1):
        value = top * fraction
        label = f"${value:,.2f}" if money else f"{value:g}"
        chart.ticks.append({"y": round(chart.baseline - plot_height * fraction, 1), "label": label})
    slot = (WIDTH - LEFT - RIGHT) / len(days)
    for index, day in enumerate(days):
        if index % 2 == 0 or len(days) <= 7:
            chart.labels.append(
                {"x": round(LEFT + slot * (index + 0.5), 1), "text": f"{day:%m-%d}"}
            )
    return slot, plot_height / top


def _days() -> list[date]:
    today = timezone.localdate()
    return [today - timedelta(days=CHART_DAYS - 1 - offset) for offset in range(CHART_DAYS)]


def state_chart(days: list[date], counts: dict[date, dict[str, int]]) -> Chart:
    chart = Chart(title="Agents by state, per day created")
    totals = [sum(counts.get(day, {}).values()) for day in days]
    slot, scale = _frame(chart, days, max(totals, default=0), money=False)
    present = {state for day in days for state in counts.get(day, {})}
    chart.legend = [state for state in STATE_ORDER if state in present]
    chart.empty = not any(totals)
    for index, day in enumerate(days):
        bottom = chart.baseline
        for state in STATE_ORDER:
            count = counts.get(day, {}).get(state, 0)
            if not count:
                continue
            height = count * scale
            bottom -= height
            chart.bars.append(
                Bar(
                    x=round(LEFT + slot * index + slot * 0.15, 1),
                    y=round(bottom, 1),
                    width=round(slot * 0.7, 1),
                    height=round(height, 1),
                    css=f"bar-{state}",
                    title=f"{day:%Y-%m-%d}: {count} {state}",
                )
            )
    return chart


def spend_chart(days: list[date], spend: dict[date, Decimal]) -> Chart:
    chart = Chart(title="Spend per day (USD)")
    values = [float(spend.get(day, 0)) for day in days]
    slot, scale = _frame(chart, days, max(values, default=0), money=True)
    chart.empty = not any(values)
    for index, day in enumerate(days):
        if not values[index]:
            continue
        height = values[index] * scale
        chart.bars.append(
            Bar(
                x=round(LEFT + slot * index + slot * 0.15, 1),
                y=round(chart.baseline - height, 1),
                width=round(slot * 0.7, 1),
                height=round(height, 1),
                css="bar-spend",
                title=f"{day:%Y-%m-%d}: ${values[index]:,.4f}",
            )
        )
    return chart


def activity_charts(*, owner: str | None) -> dict[str, Any]:
    """The two charts for ``owner``'s agents (everyone's for None)."""
    days = _days()
    since = timezone.make_aware(datetime.combine(days[0], time.min))
    counts: dict[date, dict[str, int]] = {}
    spend: dict[date, Decimal] = {}
    for row in agents_per_day(agents=agents_owned_by(owner), since=since):
        counts.setdefault(row["day"], {})[row["state"]] = row["count"]
        spend[row["day"]] = spend.get(row["day"], Decimal(0)) + (row["cost_usd"] or 0)
    return {
        "states": state_chart(days, counts),
        "spend": spend_chart(days, spend),
        "days": days,
        "total_agents": sum(sum(day.values()) for day in counts.values()),
        "total_spend": f"{sum(spend.values(), Decimal(0)):.2f}",
    }
