"""YOLO mode: the one place that says whether a gate may be skipped.

Every gate runner asks ``gate_skip_allowed`` and nothing else; when it says
yes it has already written the audit row, so no skip goes unrecorded. The
secret scan is never skipped: a pushed credential cannot be taken back, and
the scan costs milliseconds, so YOLO mode buys nothing by skipping it.
"""

from django.conf import settings

from audit.services import audit_record

NEVER_SKIPPED = frozenset({"secret_scan"})


def gate_skip_allowed(*, agent_id: str, stage: str, gate: str, target: str = "") -> bool:
    if not settings.YOLO_MODE or gate in NEVER_SKIPPED:
        return False
    audit_record(
        actor="system:gates",
        action="gate.skipped",
        target=f"agent:{agent_id}",
        reason="YOLO_MODE is on: the gate was skipped, not run",
        data={"stage": stage, "gate": gate, "target": target},
    )
    return True
