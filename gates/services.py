"""Running a stage's gates: the single entry point the agents layer calls."""

import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from django.conf import settings

from gates.base import (
    Gate,
    GateContext,
    GateReport,
    GateResult,
    HubFault,
    gate_failed,
    gate_not_run,
)
from gates.config import STOP_AT_FIRST_FAILURE, Requirement, profile_gates
from gates.errors import GateConfigError
from gates.models import GateOutcome, GateRun
from gates.registry import gate_get
from gates.yolo import gate_skip_allowed

_REDACTED = "[redacted secret]"


def gates_run(*, stage: str, profile: str, context: GateContext) -> GateReport:
    """Run every gate ``profile`` asks for at ``stage``; record each verdict; report them.

    Before a commit every gate runs even after one fails, so an agent gets all
    its problems in one report. Before a push the first failure ends the
    stage: a branch that conflicts need not pay for its coverage run, a build
    or an AI review; the gates after it are reported as not run. A gate that
    crashes counts as failed: the gates fail closed.
    """
    results: list[GateResult] = []
    yolo = False
    context = replace(context, profile=profile)
    try:
        wanted = profile_gates(profile, stage)
        context.config  # noqa: B018 - parse now so a malformed config fails the whole stage
    except GateConfigError as error:
        wanted = []
        results.append(gate_failed("config", str(error)))
    failed_first: str | None = None
    for name, requirement in wanted:
        gate = gate_get(name)
        configured = _gate_configured(gate, context)
        if not configured and requirement is Requirement.IF_CONFIGURED:
            continue  # the repository did not ask for it and the profile does not need it
        if failed_first:
            results.append(gate_not_run(name, f"{failed_first} failed first"))
        elif gate_skip_allowed(
            agent_id=context.agent_id, stage=stage, gate=name, target=context.target
        ):
            yolo = True
            results.append(GateResult(name, GateOutcome.SKIPPED, "skipped: YOLO mode is on"))
        elif not configured:
            results.append(_not_configured(name, profile))
        else:
            results.append(_gate_run_one(gate, context))
        if results and results[-1].blocking and stage in STOP_AT_FIRST_FAILURE:
            failed_first = results[-1].gate
    results = _redact(results)
    report = GateReport(stage=stage, profile=profile, results=results, yolo=yolo)
    gate_runs_record(agent_id=context.agent_id, report=report)
    return report


def _gate_configured(gate: Gate, context: GateContext) -> bool:
    try:
        return gate.is_configured(context)
    except Exception:
        return False


def _not_configured(name: str, profile: str) -> GateResult:
    strict = profile == "strict"
    return GateResult(
        name,
        GateOutcome.NOT_CONFIGURED,
        f"not configured: the {profile} profile asks for {name}, and neither "
        f"the repository's .flotilla.toml nor the spawn gives it"
        + ("; strict fails on it" if strict else "; a warning under this profile"),
        blocking=strict,
    )


def _gate_run_one(gate: Gate, context: GateContext) -> GateResult:
    started = time.monotonic()
    try:
        return gate.run(context)
    except HubFault:
        raise
    except Exception as error:
        return gate_failed(
            gate.name,
            f"the gate itself failed, so the change is rejected: {type(error).__name__}: {error}",
            duration_s=time.monotonic() - started,
        )


def _redact(results: list[GateResult]) -> list[GateResult]:
    """Remove every secret a gate found (and the hub's API key) from every gate's text."""
    secrets = {secret for result in results for secret in result.secrets if secret}
    if settings.ANTHROPIC_API_KEY:
        secrets.add(settings.ANTHROPIC_API_KEY)
    if not secrets:
        return results
    ordered = sorted(secrets, key=len, reverse=True)

    def clean(text: str) -> str:
        for secret in ordered:
            text = text.replace(secret, _REDACTED)
        return text

    return [
        replace(
            result,
            summary=clean(result.summary),
            output=clean(result.output),
            details=_details_clean(result.details, clean),
        )
        for result in results
    ]


def _details_clean(value: Any, clean: Callable[[str], str]) -> Any:
    """Every string in a gate's details, keys too, cleaned where it is.

    Not through its JSON text: JSON escapes quotes, backslashes and
    non-ASCII characters, so a secret holding one would not be found there.
    """
    if isinstance(value, str):
        return clean(value)
    if isinstance(value, dict):
        return {clean(str(key)): _details_clean(item, clean) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_details_clean(item, clean) for item in value]
    return value


def gate_runs_record(*, agent_id: str, report: GateReport) -> list[GateRun]:
    return GateRun.objects.bulk_create(
        GateRun(
            agent_id=agent_id,
            stage=report.stage,
            profile=report.profile,
            gate=result.gate,
            outcome=result.outcome,
            passed=result.passed,
            summary=result.summary[:500],
            output_tail=result.output,
            duration_s=round(result.duration_s, 4),
            confidence=result.confidence,
            details=result.details,
        )
        for result in report.results
    )
