"""Secret scan over the lines a change adds: the only module that imports detect_secrets.

detect-secrets' regex plugins find the well-known formats (AWS, GitHub, private
keys, Slack, Stripe, ...). The detectors below add provider formats it lacks,
Anthropic's first. Two heuristics find credentials without a format: its
keyword plugin (``DB_PASSWORD = "..."``, by file type) and a connection
string detector (``scheme://user:password@host``). Both are tuned so that
ordinary code stays quiet (tests/data/secret_scan_corpus): values read from
the environment, templates and placeholders, labels and paths, well-known
defaults and test fixtures are not findings. The entropy plugin stays off: on
source code it flags hashes far more often than secrets.

A finding names the file, the line and the kind, never any character of the
value: the report travels to the agent, logs, events and the database.
"""

import re
import time
from typing import TypedDict

from detect_secrets.filters.heuristic import (
    is_likely_id_string,
    is_lock_file,
    is_non_text_file,
    is_not_alphanumeric_string,
    is_potential_uuid,
    is_prefixed_with_dollar_sign,
    is_sequential_string,
    is_templated_secret,
)
from detect_secrets.plugins.artifactory import ArtifactoryDetector
from detect_secrets.plugins.aws import AWSKeyDetector
from detect_secrets.plugins.azure_storage_key import AzureStorageKeyDetector
from detect_secrets.plugins.base import RegexBasedDetector
from detect_secrets.plugins.discord import DiscordBotTokenDetector
from detect_secrets.plugins.github_token import GitHubTokenDetector
from detect_secrets.plugins.gitlab_token import GitLabTokenDetector
from detect_secrets.plugins.jwt import JwtTokenDetector
from detect_secrets.plugins.keyword import (
    QUOTES_REQUIRED_DENYLIST_REGEX_TO_GROUP,
    REGEX_BY_FILETYPE,
    KeywordDetector,
)
from detect_secrets.plugins.mailchimp import MailchimpDetector
from detect_secrets.plugins.npm import NpmDetector
from detect_secrets.plugins.openai import OpenAIDetector
from detect_secrets.plugins.private_key import PrivateKeyDetector
from detect_secrets.plugins.pypi_token import PypiTokenDetector
from detect_secrets.plugins.sendgrid import SendGridDetector
from detect_secrets.plugins.slack import SlackDetector
from detect_secrets.plugins.square_oauth import SquareOAuthDetector
from detect_secrets.plugins.stripe import StripeDetector
from detect_secrets.plugins.telegram_token import TelegramBotTokenDetector
from detect_secrets.plugins.twilio import TwilioKeyDetector
from detect_secrets.util.filetype import FileType, determine_file_type

from gates.base import Gate, GateContext, GateResult, gate_failed, gate_passed


class AnthropicKeyDetector(RegexBasedDetector):
    secret_type = "Anthropic API Key"
    denylist = (
        re.compile(r"sk-ant-[A-Za-z0-9]{2,8}\d{0,3}-[A-Za-z0-9_-]{20,}"),
        re.compile(r"sk-ant-[A-Za-z0-9_-]{32,}"),
    )


class OpenAIProjectKeyDetector(RegexBasedDetector):
    """Project, service-account and admin keys, which lack the legacy ``T3BlbkFJ`` marker."""

    secret_type = "OpenAI API Key"
    denylist = (
        re.compile(r"sk-(?:proj|svcacct|admin|None)-[A-Za-z0-9_-]{20,}"),
        re.compile(r"\bsk-[A-Za-z0-9]{48}\b"),
    )


class GoogleApiKeyDetector(RegexBasedDetector):
    secret_type = "Google API Key"
    denylist = (re.compile(r"\bAIza[0-9A-Za-z_-]{35}\b"),)


class SlackAppTokenDetector(RegexBasedDetector):
    """App-level and refresh tokens that detect-secrets' Slack plugin does not match."""

    secret_type = "Slack Token"
    denylist = (
        re.compile(r"\bxapp-\d-[A-Z0-9]+-\d+-[a-z0-9]+\b"),
        re.compile(r"\bxoxe(?:\.xox[bp])?-\d-[A-Za-z0-9]{40,}\b"),
    )


class GitHubFineGrainedTokenDetector(RegexBasedDetector):
    secret_type = "GitHub Token"
    denylist = (re.compile(r"\bgithub_pat_[A-Za-z0-9_]{40,}\b"),)


class HuggingFaceTokenDetector(RegexBasedDetector):
    secret_type = "Hugging Face Token"
    denylist = (re.compile(r"\bhf_[A-Za-z0-9]{34,}\b"),)


_DETECTORS = (
    AnthropicKeyDetector,
    OpenAIProjectKeyDetector,
    GoogleApiKeyDetector,
    SlackAppTokenDetector,
    GitHubFineGrainedTokenDetector,
    HuggingFaceTokenDetector,
    AWSKeyDetector,
    ArtifactoryDetector,
    AzureStorageKeyDetector,
    DiscordBotTokenDetector,
    GitHubTokenDetector,
    GitLabTokenDetector,
    JwtTokenDetector,
    MailchimpDetector,
    NpmDetector,
    OpenAIDetector,
    PrivateKeyDetector,
    PypiTokenDetector,
    SendGridDetector,
    SlackDetector,
    SquareOAuthDetector,
    StripeDetector,
    TelegramBotTokenDetector,
    TwilioKeyDetector,
)


def secret_mask(value: str) -> str:
    """How a finding shows its value: its length only, never a character of it."""
    return f"[{len(value)} characters, hidden]"


class SecretFinding(TypedDict):
    """A secret in an added line; ``secret`` is its value and must not leave the gate."""

    file: str
    line: int
    kind: str
    masked: str
    secret: str


def secrets_find(added_lines: dict[str, list[tuple[int, str]]]) -> list[SecretFinding]:
    """Findings as ``{file, line, kind, masked, secret}``; ``secret`` must not leave the gate."""
    detectors: list[RegexBasedDetector] = [detector() for detector in _DETECTORS]
    findings: list[SecretFinding] = []
    for path, lines in added_lines.items():
        for number, text in lines:
            seen: set[str] = set()
            for kind, value in _line_secrets(detectors, path, text):
                if any(value in other or other in value for other in seen):
                    continue
                seen.add(value)
                findings.append(
                    SecretFinding(
                        file=path,
                        line=number,
                        kind=kind,
                        masked=secret_mask(value),
                        secret=value,
                    )
                )
    return findings


def _line_secrets(
    detectors: list[RegexBasedDetector], path: str, text: str
) -> list[tuple[str, str]]:
    """(kind, value) of every secret in one added line: known formats first."""
    found = [
        (detector.secret_type, value)
        for detector in detectors
        for value in _matches(detector, text)
    ]
    found += [(_keyword_kind(text, value), value) for value in keyword_secrets(path, text)]
    found += [("Connection String Password", value) for value in connection_passwords(text)]
    return found


def _matches(detector: RegexBasedDetector, text: str) -> list[str]:
    """The secret values a detector's patterns match in ``text``.

    The patterns are matched here rather than through ``analyze_line``, which
    may "verify" a key by calling its provider (a gate makes no such calls),
    and rather than ``analyze_string``, which yields a pattern's first group:
    for GitHub tokens that is only the ``ghp`` prefix, too little to redact.
    """
    values = []
    for regex in detector.denylist:
        for match in regex.finditer(text):
            group = match.group(match.lastindex) if match.lastindex else ""
            values.append(group if len(group) >= 8 else match.group(0))
    return values


# --- credentials without a format: keywords and connection strings -------------

_KEYWORDS = KeywordDetector()
# Every keyword of the plugin's denylist contains one of these.
_KEYWORD_HINT = re.compile(r"pass|pwd|secret|key|contrase", re.IGNORECASE)
# In configuration files a value needs no quotes (``password: hunter2``); in
# code it does, which keeps ``password = form.cleaned_data[...]`` quiet.
_CONFIG_NAMES = re.compile(r"(^|/)\.env(\.[\w.-]+)?$")
_TEST_PARTS = {"test", "tests", "testing", "spec", "specs", "__tests__", "fixtures", "testdata"}
_TEST_FILE = re.compile(r"^(test_.*|.*_test\.\w+|.*\.(test|spec)\.\w+|conftest\.py)$")
_CONNECTION = re.compile(
    r"[A-Za-z][A-Za-z0-9+.-]{1,30}://(?P<user>[^\s:/?#@'\"`<>{}]*):(?P<password>[^\s/?#@'\"`]+)@"
)
# Whole values that are well-known defaults or words, not anyone's secret.
_DEFAULTS = {
    "postgres", "postgresql", "mysql", "mariadb", "root", "admin", "administrator", "guest",
    "default", "none", "null", "undefined", "true", "false", "required", "optional", "string",
}  # fmt: skip
# Parts of values that mark an example, a label or a fixture.
_MARKERS = (
    "password", "passwd", "passphrase", "secret", "apikey", "token", "credential", "example",
    "sample", "dummy", "fake", "mock", "placeholder", "changeme", "changeit", "redacted",
    "insecure", "xxxx", "your", "fixture", "test", "todo",
)  # fmt: skip
_TEMPLATE_MARKS = ("${", "{{", "{%", "%(", "<%", "#{", "$(")
_ENV_NAME = re.compile(r"^[A-Z][A-Z0-9]*(_[A-Z0-9]+)+$")
_PATH = re.compile(r"^([~.]{0,2}/|[\w.-]+(/[\w.-]+)+/?$)")
MIN_KEYWORD_VALUE = 8
MIN_URL_PASSWORD = 6


def keyword_secrets(path: str, text: str) -> list[str]:
    """Values assigned to secret-sounding names (detect-secrets' keyword plugin), placeholders out.

    Test files are skipped: a password there is a fixture by convention, and
    a credential with a known format is still found by the other detectors.
    """
    if not _KEYWORD_HINT.search(text) or _is_test_path(path):
        return []  # most lines name no secret: skip the plugin's eight patterns
    if is_lock_file(path) or is_non_text_file(path):
        return []
    table = REGEX_BY_FILETYPE.get(_file_type(path), QUOTES_REQUIRED_DENYLIST_REGEX_TO_GROUP)
    values = []
    for raw in _KEYWORDS.analyze_string(text, denylist_regex_to_group=table):
        value = re.split(r"\s+#", raw)[0].strip()  # an unquoted value's trailing comment
        if value and not _is_placeholder(value, text, minimum=MIN_KEYWORD_VALUE):
            values.append(value)
    return values


def connection_passwords(text: str) -> list[str]:
    """Passwords in ``scheme://user:password@host`` (a user equal to the password is a default)."""
    return [
        match["password"]
        for match in _CONNECTION.finditer(text)
        if match["password"] != match["user"]
        and not _is_placeholder(match["password"], text, minimum=MIN_URL_PASSWORD)
    ]


def _is_placeholder(value: str, line: str, *, minimum: int) -> bool:
    """Whether a value is anything but a credential: a template, a label, a default, a path."""
    lowered = value.lower()
    squeezed = re.sub(r"[-_.\s]", "", lowered)
    return (
        len(value) < minimum
        or any(char.isspace() for char in value)
        or any(mark in value for mark in _TEMPLATE_MARKS)
        or is_templated_secret(value)
        or is_prefixed_with_dollar_sign(value)
        or (value.startswith("%") and value.endswith("%"))
        or is_not_alphanumeric_string(value)
        or is_sequential_string(value)
        or is_potential_uuid(value)
        or is_likely_id_string(value, line)
        or lowered in _DEFAULTS
        or any(marker in squeezed for marker in _MARKERS)
        or bool(_ENV_NAME.match(value) or _PATH.match(value))
        or "://" in value
        or ("(" in value and value.endswith(")"))
    )


def _file_type(path: str) -> FileType:
    return FileType.CONFIG if _CONFIG_NAMES.search(path) else determine_file_type(path)


def _is_test_path(path: str) -> bool:
    *folders, name = path.lower().split("/")
    return bool(_TEST_PARTS.intersection(folders)) or bool(_TEST_FILE.match(name))


def _keyword_kind(line: str, value: str) -> str:
    before = line[: line.find(value)].lower()
    return "Hard-coded Password" if re.search(r"pass|pwd|contrase", before) else "Hard-coded Secret"


class SecretScanGate(Gate):
    name = "secret_scan"

    def run(self, context: GateContext) -> GateResult:
        started = time.monotonic()
        added = context.added_lines
        findings = secrets_find(added)
        elapsed = time.monotonic() - started
        scanned = sum(len(lines) for lines in added.values())
        if not findings:
            return gate_passed(
                self.name, f"no secrets in {scanned} added line(s)", duration_s=elapsed
            )
        public = [
            {key: value for key, value in finding.items() if key != "secret"}
            for finding in findings
        ]
        output = "\n".join(f"{f['file']}:{f['line']}: {f['kind']} ({f['masked']})" for f in public)
        return gate_failed(
            self.name,
            f"{len(findings)} secret(s) in added lines: "
            + ", ".join(f"{f['kind']} at {f['file']}:{f['line']}" for f in public[:5]),
            output=output,
            duration_s=elapsed,
            details={"findings": public},
            secrets=tuple(finding["secret"] for finding in findings),
        )
