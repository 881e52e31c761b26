"""Which findings a change brings: a gate's output compared with its output on the base commit.

A gate with ``baseline = true`` fails only on findings its command did not
already report on the base. A finding is one output line, compared after
normalisation (``finding_key``) so that an old error the change merely moved
is not new: surrounding whitespace is trimmed and runs of it are collapsed,
hexadecimal addresses become ``0xN``, and every number that does not continue
a word becomes ``N`` (line and column numbers, counts in summary lines such as
"Found 151 errors", durations), while ``F401``, ``unused_1`` or ``x2`` keep
theirs. Blank lines are not findings. Lines are counted, not just collected:
a finding the base printed once and the change prints twice is new once.
"""

import re
from collections import Counter
from collections.abc import Iterable

_SPACE = re.compile(r"\s+")
_HEX = re.compile(r"\b0x[0-9A-Fa-f]+\b")
_NUMBER = re.compile(r"(?<![A-Za-z_])\d+")


def finding_key(line: str) -> str:
    """The line as the comparison sees it; '' for a line that is no finding."""
    line = _SPACE.sub(" ", line).strip()
    return _NUMBER.sub("N", _HEX.sub("0xN", line))


def findings_new(output: Iterable[str], base_output: Iterable[str]) -> list[str]:
    """The lines of ``output`` (as printed) whose findings ``base_output`` did not report."""
    known = Counter(key for line in base_output if (key := finding_key(line)))
    new = []
    for line in output:
        key = finding_key(line)
        if not key:
            continue
        if known[key] > 0:
            known[key] -= 1
        else:
            new.append(line)
    return new


def findings_count(output: Iterable[str]) -> int:
    return sum(1 for line in output if finding_key(line))
