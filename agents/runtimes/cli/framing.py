"""Whole JSON lines from a CLI in the sandbox, through an output path that cuts long lines.

The sandboxes hand a command's output to the hub line by line and cut every
line at 2,000 characters, while a CLI's structured output puts a whole event
(a file it read, a command's output) on one line. So the CLI runs under a
small framer, in the sandbox's own Python: it feeds the CLI its prompt on
standard input, cuts each line the CLI prints on standard output into pieces
that fit, marks every piece, and exits with the CLI's status. The CLI's
standard error passes through unmarked and stays ordinary output. On the hub
``FramedLines`` puts the pieces back together.

The framer's own output pipe is the hub's (root's, mode 0600), so the
agent cannot write to it; it can write to the CLI's, which is the sandbox
user's. Whatever it writes there only ever becomes transcript events of its
own run (data, like everything else it prints), within the agent's output
bound (``rounds.TranscriptBound``); a line too long is dropped.
"""

import shlex
from collections.abc import Callable

MARK_MORE = "\x1eflotilla-cli+"
MARK_END = "\x1eflotilla-cli="
_PIECE_CHARS = 1500
# The longest line put back together; a longer one is dropped, and said so.
MAX_LINE_CHARS = 4 * 1024 * 1024

_FRAMER = f"""
import subprocess, sys
prompt = open(sys.argv[1], "rb")
child = subprocess.Popen(sys.argv[2:], stdin=prompt, stdout=subprocess.PIPE)
prompt.close()
for raw in child.stdout:
    line = raw.decode("utf-8", "replace").rstrip("\\r\\n")
    while len(line) > {_PIECE_CHARS}:
        sys.stdout.write({MARK_MORE!r} + line[:{_PIECE_CHARS}] + "\\n")
        line = line[{_PIECE_CHARS}:]
    sys.stdout.write({MARK_END!r} + line + "\\n")
    sys.stdout.flush()
status = child.wait()
sys.exit(128 - status if status < 0 else status)
"""


def framed_command(*, argv: list[str], prompt_path: str) -> str:
    """The shell command that runs ``argv`` with its prompt on stdin and its lines framed."""
    words = ["exec", "/usr/bin/python3", "-I", "-c", _FRAMER, prompt_path, *argv]
    return " ".join(shlex.quote(word) for word in words)


class FramedLines:
    """The output sink of a framed command: whole lines to ``on_line``, the rest to ``on_plain``."""

    def __init__(
        self, *, on_line: Callable[[str], None], on_plain: Callable[[list[str]], None]
    ) -> None:
        self.on_line = on_line
        self.on_plain = on_plain
        self.pieces: list[str] = []
        self.size = 0
        self.dropped = 0

    def __call__(self, lines: list[str]) -> None:
        plain: list[str] = []
        for line in lines:
            if line.startswith(MARK_MORE):
                self._add(line[len(MARK_MORE) :])
            elif line.startswith(MARK_END):
                self._add(line[len(MARK_END) :])
                self._complete(plain)
            else:
                plain.append(line)
        if plain:
            self.on_plain(plain)

    def _add(self, piece: str) -> None:
        self.size += len(piece)
        if self.size <= MAX_LINE_CHARS:
            self.pieces.append(piece)

    def _complete(self, plain: list[str]) -> None:
        whole, too_long = "".join(self.pieces), self.size > MAX_LINE_CHARS
        self.pieces, self.size = [], 0
        if too_long:
            self.dropped += 1
            return
        # The plain lines so far go first, so the order of the two kinds holds.
        if plain:
            self.on_plain(list(plain))
            plain.clear()
        self.on_line(whole)
