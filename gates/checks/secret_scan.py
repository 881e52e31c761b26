"""Secret scan over the lines a change adds: the only module that imports detect_secrets.

detect-secrets' regex plugins find the well-known formats (AWS, GitHub, private
keys, Slack, Stripe, ...). The detectors below add provider formats it lacks,
Anthropic's first. Entropy and keyword plugins stay off: on source code they
flag hashes and test fixtures far more often than secrets.

A finding names the file, the line and the kind, and shows only a masked
prefix of the value: the report travels to logs, events and models.
"""

import re
import time

from detect_secrets.plugins.artifactory import ArtifactoryDetector
from detect_secrets.plugins.aws import AWSKeyDetector
from detect_secrets.plugins.azure_storage_key import AzureStorageKeyDetector
from detect_secrets.plugins.base import RegexBasedDetector
from detect_secrets.plugins.basic_auth import BasicAuthDetector
from detect_secrets.plugins.discord import DiscordBotTokenDetector
from detect_secrets.plugins.github_token import GitHubTokenDetector
from detect_secrets.plugins.gitlab_token import GitLabTokenDetector
from detect_secrets.plugins.jwt import JwtTokenDetector
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
    BasicAuthDetector,
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
    """Enough of a value to recognise which key it was, never enough to use it."""
    shown = min(4, len(value) // 4)
    return f"{value[:shown]}…({len(value)} chars)"


def secrets_find(added_lines: dict[str, list[tuple[int, str]]]) -> list[dict]:
    """Findings as ``{file, line, kind, masked, secret}``; ``secret`` must not leave the gate."""
    detectors = [detector() for detector in _DETECTORS]
    findings: list[dict] = []
    for path, lines in added_lines.items():
        for number, text in lines:
            seen: set[str] = set()
            for detector in detectors:
                for value in _matches(detector, text):
                    if any(value in other or other in value for other in seen):
                        continue
                    seen.add(value)
                    findings.append(
                        {
                            "file": path,
                            "line": number,
                            "kind": detector.secret_type,
                            "masked": secret_mask(value),
                            "secret": value,
                        }
                    )
    return findings


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
