"""Short failure reports: what a learner needs from a failing check, in a few lines.

For each failing check: the check's own message (what was called, what came back, what was expected,
why, and the likely cause), or for an exception its type and message and the learner's own line that
raised it, never the harness's frames or a re-printed docstring. ``kata check -v`` and plain ``pytest``
still show pytest's full report.

A ``Brief`` is plain data (strings and lists), so it travels from pytest-xdist workers to the controller.
"""

from __future__ import annotations

import linecache
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from . import paths

MAX_LINES = 40  # the whole report a learner sees for a failing run, next step included
BLOCK_LINES = 9  # one failing check: its name and up to eight lines about it
LINE_CHARS = 240  # a longer line (a huge repr, say) is cut with a note
PRINTED_LINES = 4  # the tail of what the learner's code printed, shown under the failure
CAPTURED_KEEP = 4096  # of a check's captured output, the first and the last this many characters are kept


@dataclass
class Brief:
    exercise: str
    check: str  # the check's name within its file, e.g. test_softmax_matches_reference[float32]
    lines: list[str]  # what went wrong, without the check's name
    printed: list[str] = field(default_factory=list)  # the last lines the code printed
    printed_total: int = 0  # how many lines it printed in all

    def as_data(self) -> dict:
        return {"exercise": self.exercise, "check": self.check, "lines": self.lines,
                "printed": self.printed, "printed_total": self.printed_total}  # fmt: skip

    @classmethod
    def from_data(cls, data: dict) -> Brief:
        return cls(**data)


def relative(path: str | os.PathLike) -> str:
    path = Path(path)
    try:
        return path.resolve().relative_to(paths.ROOT).as_posix()
    except ValueError:
        return str(path)


def _cut(line: str) -> str:
    return line if len(line) <= LINE_CHARS else f"{line[:LINE_CHARS]} ... (cut: the line has {len(line)} characters)"


def within(path: str, roots: Sequence[Path]) -> bool:
    resolved = Path(path).resolve()
    return any(resolved == root or root in resolved.parents for root in roots)


def _frames(exc: BaseException) -> list[tuple[str, int, str]]:
    """(file, line number, function) of every frame from the check down to where ``exc`` was raised."""
    frames = []
    tb = exc.__traceback__
    while tb is not None:
        code = tb.tb_frame.f_code
        frames.append((code.co_filename, tb.tb_lineno, code.co_name))
        tb = tb.tb_next
    return frames


def _located(frame: tuple[str, int, str], prefix: str) -> list[str]:
    filename, lineno, function = frame
    statement = linecache.getline(filename, lineno).strip()
    lines = [f"{prefix} {relative(filename)}:{lineno}, in {function}:"]
    return lines + ([f"    {_cut(statement)}"] if statement else [])


def _example(exc: BaseException) -> list[str]:
    """Hypothesis's falsifying example, without the module arguments every check receives."""
    for note in getattr(exc, "__notes__", ()):
        if note.startswith(("Falsifying example", "Failing test case")):
            arguments = [
                line.strip().rstrip(",")
                for line in note.splitlines()[1:-1]
                if line.strip() and not line.strip().startswith(("impl=", "reference="))
            ]
            text = ", ".join(arguments)
            return [f"with {_cut(text)}"] if text else []
    return []


def _innermost(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def describe(exc: BaseException, learner_roots: Sequence[Path], check_file: str, *, assertion: bool) -> list[str]:
    """What went wrong, in a few lines.

    ``assertion``: the check rejected the result (its message says it all; the check's own statement is
    shown only when it has no message). Otherwise the code under test raised or ran out of time: its type
    and message, and the innermost line of the learner's code on the way (``learner_roots``).
    """
    exc = _innermost(exc)
    frames = _frames(exc)
    check = Path(check_file).resolve()
    in_check = [f for f in frames if Path(f[0]).resolve() == check]
    message = (getattr(exc, "msg", None) if not isinstance(exc, AssertionError) else None) or str(exc)
    if assertion:
        lines = [_cut(line) for line in message.splitlines()]
        if (not lines or message.startswith("DID NOT RAISE")) and in_check:
            lines += _located(in_check[-1], "in the check at")
        return lines or ["the check failed without a message"]
    text = message.splitlines() or [""]
    lines = [_cut(f"{type(exc).__name__}: {text[0]}".rstrip(": ")), *map(_cut, text[1:3])]
    mine = [f for f in frames if within(f[0], learner_roots)]
    if mine:
        lines += _located(mine[-1], "at")
    elif in_check:
        lines += _located(in_check[-1], "while the check ran")
    return lines + _example(exc)


def cap_output(content: str) -> str:
    """A check's captured output, cut to its first and last few KB (a print in a loop can write megabytes)."""
    if len(content) <= 2 * CAPTURED_KEEP:
        return content
    cut = len(content) - 2 * CAPTURED_KEEP
    note = f"\n... [{cut} characters of output cut; the first and last {CAPTURED_KEEP} are shown] ...\n"
    return content[:CAPTURED_KEEP] + note + content[-CAPTURED_KEEP:]


def printed_tail(sections: Iterable[tuple[str, str]]) -> tuple[list[str], int]:
    """The last lines the code printed (captured stdout and stderr), and how many it printed in all."""
    printed = [content for title, content in sections if title.startswith("Captured std")]
    total = sum(content.count("\n") for content in printed)
    tail = "".join(printed)[-PRINTED_LINES * LINE_CHARS * 2 :].splitlines()[-PRINTED_LINES:]
    return [_cut(line) for line in tail], total


def _block(briefs: list[Brief]) -> list[str]:
    first = briefs[0]
    title = first.check if len(briefs) == 1 else f"{first.check} and {len(briefs) - 1} more with the same failure"
    body = [f"    {line}" for line in first.lines]
    if len(body) > BLOCK_LINES - 1:  # keep the start (the call) and the end (the error, why, the likely cause)
        tail = BLOCK_LINES - 4
        body = [*body[:2], f"    ... ({len(body) - 2 - tail} lines cut; -v shows them)", *body[-tail:]]
    if first.printed:
        shown = len(first.printed)
        body.append(f"    your code printed {first.printed_total} lines; the last {shown}:")
        body += [f"      | {line}" for line in first.printed]
    return [f"✗ {title}", *body]


def render(briefs: Sequence[Brief], budget: int, more_command: str) -> list[str]:
    """Failure blocks in run order, the same failure merged, within ``budget`` lines in all."""
    groups: dict[tuple, list[Brief]] = {}
    for brief in briefs:
        groups.setdefault((brief.exercise, tuple(brief.lines)), []).append(brief)
    out: list[str] = []
    left_out: list[str] = []
    for group in groups.values():
        block = _block(group)
        if not left_out and len(out) + len(block) <= budget - 2:
            out += block
        else:
            left_out += [b.check for b in group]
    if left_out:
        names = ", ".join(left_out[:4]) + (f" and {len(left_out) - 4} more" if len(left_out) > 4 else "")
        out += [f"✗ also failing: {names}", f"  (`{more_command}` shows every failure in full)"]
    return out
