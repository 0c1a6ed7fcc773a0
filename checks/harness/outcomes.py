"""Classifying a check's result into what a learner cares about, and summing it up per exercise.

A check is *todo* when the code under test raised a stub's ``NotImplementedError`` (an untouched stub), *failed*
for any other error or a wrong answer, *passed*, or *skipped* (missing CUDA, missing optional data).
An exercise is passed when every check that ran passed, todo while its checks only hit stubs, and
failing as soon as one check fails for another reason; when every check was skipped (no CUDA, say),
nothing is known about it and nothing is recorded.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

TODO, FAILED, PASSED, SKIPPED = "todo", "failed", "passed", "skipped"
# Under ``kata verify`` only: a catalogued mistake made a check crash in the check's own code, which
# proves nothing about the mistake (see ``verify.is_catch``).
CRASHED = "crashed"


STUB_MESSAGE = "is not implemented yet"  # in every stub's `raise NotImplementedError(...)` (see stubs.py)


def is_not_implemented(exc: BaseException) -> bool:
    """True for a stub's own ``NotImplementedError``, and for exception groups made only of them.

    Only the stub's message counts: PyTorch raises ``NotImplementedError`` too (an operation the ``meta``
    device cannot run, say), and a learner who sees that must be told what failed, not "todo".
    """
    if isinstance(exc, BaseExceptionGroup):
        return all(is_not_implemented(e) for e in exc.exceptions)
    return isinstance(exc, NotImplementedError) and STUB_MESSAGE in str(exc)


@dataclass(frozen=True)
class CheckResult:
    nodeid: str
    exercise: str  # exercise id
    outcome: str  # TODO, FAILED, PASSED or SKIPPED
    role: str = "impl"  # see ImplChoice.role
    entry: str | None = None  # catalogue entry for mistakes and variants
    duration: float = 0.0


@dataclass
class ExerciseTally:
    exercise: str
    counts: dict[str, int] = field(default_factory=lambda: {TODO: 0, FAILED: 0, PASSED: 0, SKIPPED: 0})

    @property
    def ran(self) -> int:
        return self.counts[TODO] + self.counts[FAILED] + self.counts[PASSED]

    @property
    def status(self) -> str:
        """todo, failing or passed, as progress.toml records it; skipped when no check could run here."""
        if not self.ran:
            return SKIPPED
        if self.counts[FAILED]:
            return "failing"
        if self.counts[TODO] or not self.counts[PASSED]:
            return "todo"
        return "passed"


def tally(results: Iterable[CheckResult]) -> dict[str, ExerciseTally]:
    tallies: dict[str, ExerciseTally] = {}
    for result in results:
        tallies.setdefault(result.exercise, ExerciseTally(result.exercise)).counts[result.outcome] += 1
    return tallies
