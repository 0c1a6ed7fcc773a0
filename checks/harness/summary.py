"""The per-exercise summary a learner sees at the end of a check run, with the next step."""

from __future__ import annotations

import sys

from .outcomes import ExerciseTally

SYMBOLS = {"passed": "✓", "failing": "✗", "todo": "·", "skipped": "-"}
# for terminals that cannot show the others
ASCII_SYMBOLS = {"passed": "+", "failing": "x", "todo": ".", "skipped": "-"}


def _symbols() -> dict[str, str]:
    try:
        "".join(SYMBOLS.values()).encode(sys.stdout.encoding or "ascii")
    except (UnicodeEncodeError, LookupError):
        return ASCII_SYMBOLS
    return SYMBOLS
COLOURS = {"passed": {"green": True}, "failing": {"red": True}, "todo": {"yellow": True}, "skipped": {}}


def print_learner_summary(tr, state, tallies: dict[str, ExerciseTally]) -> None:
    reg = state.registry
    ordered = [e for e in reg.exercises if e.id in tallies]
    tr.section("kata summary", sep="=", bold=True)
    width = max(len(e.id) for e in ordered)
    symbols = _symbols()
    for exercise in ordered:
        t = tallies[exercise.id]
        counts = f"{t.counts['passed']}/{t.ran} checks passed"
        if t.counts["skipped"]:
            counts += f", {t.counts['skipped']} skipped"
        tr.write_line(f"  {symbols[t.status]} {exercise.id:<{width}}  {t.status:<8} {counts}", **COLOURS[t.status])
    update = state.progress_update
    if update is not None:
        for change in update.changes:
            if change.newly_passed:
                tr.write_line(f"  {change.exercise} passed for the first time. Well done!", green=True, bold=True)
        for problem in update.problems:
            tr.write_line(f"  ! {problem}", yellow=True)
        tr.write_line(f"  progress saved to {update.path}")
    unfinished = next((e for e in ordered if tallies[e.id].status in ("todo", "failing")), None)
    if unfinished is None and all(tallies[e.id].status == "skipped" for e in ordered):
        tr.write_line("No check could run here; the skip reasons say why (`kata doctor` lists them).")
    elif unfinished is None:
        tr.write_line("Next: every exercise you checked passes. Run `kata next` for the next one.", green=True)
    elif tallies[unfinished.id].status == "todo":
        kata = reg.kata_of(unfinished)
        where = f"katas/{kata.phase}/{kata.id}.py"
        tr.write_line(f"Next: implement {unfinished.id} in {where}. Stuck? `kata hint {unfinished.id}`")
    else:
        tr.write_line(f"Next: fix {unfinished.id}; the failures above say what went wrong. `kata hint {unfinished.id}`")
