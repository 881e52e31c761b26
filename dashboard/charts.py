"""The dashboard's plots, drawn on the server as SVG: no script, no library.

The activity page: two charts over the last ``CHART_DAYS`` days, both from
one grouped query (``agents.selectors.agents_per_day``) on the agents the
viewer may see: agents by state per day of creation (stacked bars) and
spend per day. The agent page: its cost and tokens, cumulative, per model
turn over the run (lines, ``usage_charts``).
The geometry is computed here; the template only writes it out, escaped.
"""

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

from django.utils import timezone

from agents.models import AgentState
from agents.selectors import agents_owned_by, agents_per_day
from dashboard.selectors import UsageTurn

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
class Line:
    """A series drawn as an SVG ``<polyline>``: ``points`` is ``"x,y x,y …"``."""

    points: str
    css: str
    label: str


@dataclass
class Dot:
    x: float
    y: float
    css: str
    title: str


@dataclass
class Chart:
    title: str
    width: int = WIDTH
    height: int = HEIGHT
    bars: list[Bar] = field(default_factory=list)
    lines: list[Line] = field(default_factory=list)
    dots: list[Dot] = field(default_factory=list)
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


# --- The agent page: usage and cost over the run ------------------------------

# Points a line keeps (the last turn always among them), and the most turns
# that still get a dot of their own, with a tooltip.
MAX_LINE_POINTS = 400
MAX_DOTS = 120
# The token series, bottom of the legend first: (attribute of UsageTurn, css, label).
TOKEN_SERIES = (
    ("input_tokens", "line-input", "input"),
    ("output_tokens", "line-output", "output"),
    ("cache_read_tokens", "line-cache-read", "cache read"),
    ("cache_write_tokens", "line-cache-write", "cache write"),
)


def elapsed_text(seconds: float, span: float | None = None) -> str:
    """A time into a run of ``span`` seconds (``seconds`` itself when None), as precise as
    the span needs: ``1.5 s`` under ten seconds, ``42 s`` under a minute, then ``m:ss``
    and, from an hour on, ``h:mm:ss``."""
    span = seconds if span is None else span
    if span < 10:
        return f"{seconds:.1f} s"
    if span < 60:
        return f"{seconds:.0f} s"
    whole = max(0, round(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def money_text(value: float, top: float) -> str:
    """Dollars with enough decimals to tell the axis' ticks apart ($0.00025, $1.50)."""
    decimals = max(2, 1 - math.floor(math.log10(top))) if top > 0 else 2
    return f"${value:,.{min(decimals, 8)}f}"


def count_text(value: float) -> str:
    return f"{value:,.0f}" if value == int(value) else f"{value:,.1f}"


def _time_frame(
    chart: Chart, duration: float, maximum: float, label: Callable[[float, float], str]
) -> float:
    """Gridlines and elapsed-time labels of a line chart; returns the y scale."""
    plot_height = HEIGHT - TOP - BOTTOM
    top = _nice_ceiling(maximum)
    for fraction in (0, 0.5, 1):
        chart.ticks.append(
            {
                "y": round(chart.baseline - plot_height * fraction, 1),
                "label": label(top * fraction, top),
            }
        )
    anchors: dict[float, str] = {0: "start", 1: "end"}
    for fraction in (0, 0.25, 0.5, 0.75, 1):
        chart.labels.append(
            {
                "x": round(LEFT + (WIDTH - LEFT - RIGHT) * fraction, 1),
                "text": elapsed_text(duration * fraction, duration),
                "anchor": anchors.get(fraction, "middle"),
            }
        )
    return plot_height / top


def _thinned(indices: Sequence[int]) -> list[int]:
    """At most ``MAX_LINE_POINTS`` of ``indices``, evenly spread, the last always kept."""
    if len(indices) <= MAX_LINE_POINTS:
        return list(indices)
    step = len(indices) / (MAX_LINE_POINTS - 1)
    return sorted({indices[int(n * step)] for n in range(MAX_LINE_POINTS - 1)} | {indices[-1]})


def _line_chart(
    title: str,
    xs: list[float],
    duration: float,
    series: list[tuple[str, str, list[float]]],
    label: Callable[[float, float], str],
    dot_title: Callable[[int], str],
) -> Chart:
    """Cumulative ``series`` (css, label, one value per turn) against the turns' times ``xs``."""
    chart = Chart(title=title, empty=False)
    scale = _time_frame(chart, duration, max(values[-1] for _, _, values in series), label)
    kept = _thinned(range(len(xs)))
    for css, name, values in series:
        # Steps: a total holds between turns and rises at each one, to the end of the run.
        y = chart.baseline
        points = [(float(LEFT), y)]
        for index in kept:
            points.append((xs[index], y))
            y = round(chart.baseline - values[index] * scale, 1)
            points.append((xs[index], y))
        points.append((float(chart.right_edge), y))
        chart.lines.append(Line(" ".join(f"{x:g},{y:g}" for x, y in points), css, name))
    if len(xs) <= MAX_DOTS:
        css, _, values = series[0]
        for index, x in enumerate(xs):
            y = round(chart.baseline - values[index] * scale, 1)
            chart.dots.append(Dot(x, y, css, dot_title(index)))
    return chart


def _cumulative(values: list[float]) -> list[float]:
    total, running = 0.0, []
    for value in values:
        total += value
        running.append(total)
    return running


def usage_charts(
    *, turns: list[UsageTurn], started_at: datetime | None, finished_at: datetime | None
) -> dict[str, Any] | None:
    """The cost and the tokens of the agent's model turns, cumulative, over its run time.

    The run starts when the agent started (or at its first turn, if that was
    earlier: a run retried after a crash starts again) and ends when it
    finished (or at its last turn). None when the agent used no model.
    """
    if not turns:
        return None
    start = min(turns[0].at, started_at) if started_at else turns[0].at
    end = max(turns[-1].at, finished_at) if finished_at else turns[-1].at
    duration = max((end - start).total_seconds(), 1.0)
    width = WIDTH - LEFT - RIGHT
    xs = [round(LEFT + width * (turn.at - start).total_seconds() / duration, 1) for turn in turns]
    costs = _cumulative([float(turn.cost_usd) for turn in turns])
    tokens = [
        (css, label, _cumulative([float(getattr(turn, name)) for turn in turns]))
        for name, css, label in TOKEN_SERIES
    ]
    tokens = [series for series in tokens if series[2][-1] > 0] or tokens[:2]

    def cost_title(index: int) -> str:
        turn = turns[index]
        return (
            f"turn {index + 1} at {elapsed_text((turn.at - start).total_seconds(), duration)}: "
            f"${turn.cost_usd:,.6f} (${costs[index]:,.6f} so far), "
            f"{turn.input_tokens:,} tokens in, {turn.output_tokens:,} out"
        )

    def tokens_title(index: int) -> str:
        turn = turns[index]
        return (
            f"turn {index + 1} at {elapsed_text((turn.at - start).total_seconds(), duration)}: "
            f"{turn.input_tokens:,} in, {turn.output_tokens:,} out, "
            f"{turn.cache_read_tokens:,} cache read, {turn.cache_write_tokens:,} cache write"
        )

    cost = _line_chart(
        "Cost over the run (cumulative, USD)",
        xs,
        duration,
        [("line-cost", "cost", costs)],
        money_text,
        cost_title,
    )
    token_chart = _line_chart(
        "Tokens over the run (cumulative)",
        xs,
        duration,
        tokens,
        lambda value, top: count_text(value),
        tokens_title,
    )
    return {
        "cost": cost,
        "tokens": token_chart,
        "turns": len(turns),
        "duration": elapsed_text(duration),
        "total_cost_usd": f"{sum((turn.cost_usd for turn in turns), Decimal(0)):.6f}",
    }
