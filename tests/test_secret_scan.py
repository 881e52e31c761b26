"""The secret scan on ordinary code and on hard-coded credentials.

Ordinary code mentions passwords all the time: settings that read them from
the environment, password fields, prompts, documentation, placeholders, test
fixtures. The scan must stay quiet on all of that (tests/data/secret_scan_corpus/
ordinary) and still find every hard-coded password and every connection string
that carries one (.../credentials). Whatever it finds, no part of the secret
reaches a report, a stored gate run or another gate's output.
"""

import json
from pathlib import Path

import pytest

from gates.base import Gate, GateContext, GateResult, gate_failed
from gates.checks.secret_scan import secrets_find
from gates.models import GateRun
from gates.services import gates_run

CORPUS = Path(__file__).parent / "data" / "secret_scan_corpus"
# Made up for these tests: random enough that no four characters of it occur
# in any report by chance, with a quote-free non-ASCII tail that JSON escapes.
PASSWORD = "Qv7!zR2#kW9mX4pTé"


def corpus(kind: str) -> dict[str, list[tuple[int, str]]]:
    """Every file of a corpus as added lines, under its name without ``.txt``."""
    root = CORPUS / kind
    return {
        str(path.relative_to(root)).removesuffix(".txt"): list(
            enumerate(path.read_text().splitlines(), start=1)
        )
        for path in sorted(root.rglob("*.txt"))
    }


def fragments(secret: str, size: int = 4) -> set[str]:
    return {secret[start : start + size] for start in range(len(secret) - size + 1)}


def assert_hidden(secret: str, texts: list[str]) -> None:
    for text in texts:
        leaked = sorted(piece for piece in fragments(secret) if piece in text)
        assert not leaked, f"{leaked} of the secret in {text[:300]!r}"


def added(path: str, *lines: str) -> str:
    body = "".join(f"+{line}\n" for line in lines)
    return f"--- /dev/null\n+++ b/{path}\n@@ -0,0 +1,{len(lines)} @@\n{body}"


def context(diff: str) -> GateContext:
    return GateContext(
        agent_id="6f1c7c52-3c57-4a43-9d0e-4a4de6d4a0a1",
        task="Configure the database.",
        diff=diff,
        run_command=lambda command, timeout_s: None,
    )


class EchoGate(Gate):
    """A gate that quotes the change back, as a linter or a test run would."""

    name = "tests"

    def run(self, context: GateContext) -> GateResult:
        lines = [text for added in context.added_lines.values() for _, text in added]
        return gate_failed(
            self.name,
            f"1 failure: {lines[0]}",
            output="\n".join(lines),
            details={"source": lines, "first": {"line": lines[0]}},
        )


# --- the corpora -----------------------------------------------------------------


def test_ordinary_code_that_mentions_passwords_gives_no_finding():
    findings = secrets_find(corpus("ordinary"))

    assert [(f["file"], f["line"], f["kind"]) for f in findings] == []


@pytest.mark.parametrize("name", sorted(corpus("credentials")))
def test_every_hard_coded_credential_of_the_corpus_is_found(name):
    lines = corpus("credentials")[name]

    found = {finding["line"] for finding in secrets_find({name: lines})}

    assert found == {number for number, text in lines if text.strip()}


def test_the_reported_password_and_connection_string_are_found_and_named():
    lines = [
        (1, 'DB_PASSWORD = "Sup3rS3cretPassw0rd!"'),
        (2, 'DATABASE_URL = "postgres://app:hunter2x9@db/prod"'),
    ]

    findings = secrets_find({"config/settings.py": lines})

    assert [(f["line"], f["kind"], f["secret"]) for f in findings] == [
        (1, "Hard-coded Password", "Sup3rS3cretPassw0rd!"),
        (2, "Connection String Password", "hunter2x9"),
    ]


def test_a_credential_with_a_known_format_is_found_in_a_test_file_too():
    key = "sk-ant-" + "api03-Zq8Xv2Lm5Rt9Kp3Wy7Nb4Hc6Jd1Fg0Se-AbCdEfGhIjKlMnOpQrStUv"
    lines = [(1, f'ANTHROPIC_API_KEY = "{key}"'), (2, 'URL = "redis://:Rq4vX9pL2mWk@cache/0"')]

    findings = secrets_find({"tests/test_client.py": lines})

    assert [finding["line"] for finding in findings] == [1, 2]


# --- reports never print the secret ------------------------------------------------


def test_a_finding_names_file_line_and_kind_and_no_part_of_the_secret(db):
    diff = added("config/settings.py", "DEBUG = False", f'DB_PASSWORD = "{PASSWORD}"')

    report = gates_run(stage="pre-commit", profile="minimal", context=context(diff))

    scan = next(result for result in report.results if result.gate == "secret_scan")
    assert scan.outcome == "failed"
    assert [(f["file"], f["line"], f["kind"]) for f in scan.details["findings"]] == [
        ("config/settings.py", 2, "Hard-coded Password")
    ]
    assert "Hard-coded Password at config/settings.py:2" in scan.summary
    stored = json.dumps(list(GateRun.objects.values()), default=str, ensure_ascii=False)
    assert_hidden(PASSWORD, [report.text, json.dumps(report.as_dict()), stored])


def test_another_gate_that_quotes_the_secret_has_it_redacted_in_every_field(db, settings):
    settings.FLOTILLA_GATES = {**settings.FLOTILLA_GATES, "tests": f"{__name__}.EchoGate"}
    url = "postgres://app:Uv8!kQ2xLp7Rm9é@db.internal/prod"
    diff = added("app/db.py", f'PASSWORD = "{PASSWORD}"', f'URL = "{url}"')

    report = gates_run(stage="pre-commit", profile="minimal", context=context(diff))

    echo = next(result for result in report.results if result.gate == "tests")
    assert "[redacted secret]" in echo.output and echo.details["first"]["line"].count("[redacted")
    stored = list(GateRun.objects.values("summary", "output_tail", "details"))
    texts = [report.text, json.dumps(report.as_dict()), json.dumps(stored, ensure_ascii=False)]
    assert_hidden(PASSWORD, texts)
    assert_hidden("Uv8!kQ2xLp7Rm9é", texts)
