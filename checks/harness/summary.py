"""The per-exercise summary a learner sees at the end of a check run, with the next step."""

from __future__ import annotations

import re
import sys

from .brief import MAX_LINES, render
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


def summary_lines(state, tallies: dict[str, ExerciseTally]) -> list[tuple[str, dict]]:
    """The kata summary as (text, terminal markup) lines: a row per exercise, progress, and the next step last."""
    reg = state.registry
    ordered = [e for e in reg.exercises if e.id in tallies]
    width = max(len(e.id) for e in ordered)
    symbols = _symbols()
    lines: list[tuple[str, dict]] = []
    for exercise in ordered:
        t = tallies[exercise.id]
        counts = f"{t.counts['passed']}/{t.ran} checks passed"
        if t.counts["skipped"]:
            counts += f", {t.counts['skipped']} skipped"
        lines.append((f"  {symbols[t.status]} {exercise.id:<{width}}  {t.status:<8} {counts}", COLOURS[t.status]))
    update = state.progress_update
    if update is not None:
        for change in update.changes:
            if change.first_pass:
                cheer = f"  {change.exercise} passed for the first time. Well done!"
                lines.append((cheer, {"green": True, "bold": True}))
                lines += [(f"  {line}", {}) for line in after_lines(reg.exercise(change.exercise))]
            elif change.newly_passed:
                lines.append((f"  {change.exercise} passes again.", {"green": True}))
        lines += [(f"  ! {problem}", {"yellow": True}) for problem in update.problems]
        lines.append((f"  progress saved to {update.path}", {}))
    unfinished = next((e for e in ordered if tallies[e.id].status in ("todo", "failing")), None)
    if unfinished is None and all(tallies[e.id].status == "skipped" for e in ordered):
        lines.append(("No check could run here; the skip reasons say why (`kata doctor` lists them).", {}))
    elif unfinished is None:
        lines.append(("Next: every exercise you checked passes. Run `kata next` for the next one.", {"green": True}))
    elif tallies[unfinished.id].status == "todo":
        kata = reg.kata_of(unfinished)
        where = f"katas/{kata.phase}/{kata.id}.py"
        lines.append((f"Next: implement {unfinished.id} in {where}. Stuck? `kata hint {unfinished.id}`", {}))
    else:
        hint = f"`kata hint {unfinished.id}`"
        lines.append((f"Next: fix {unfinished.id}; the failures above say what went wrong. {hint}", {}))
    return lines


def print_learner_summary(tr, lines: list[tuple[str, dict]]) -> None:
    tr.section("kata summary", sep="=", bold=True)
    for text, markup in lines:
        tr.write_line(text, **markup)


def after_lines(exercise) -> list[str]:
    """What the learner just built and what to read next (shown on a first pass and with the solution)."""
    return [exercise.after, *(f"Read next: {url}" for url in exercise.read)]


def print_brief_report(tr, state, reserved: int) -> None:
    """The short report of a learner's run: each failing check in a few lines, within ``MAX_LINES`` in all
    (``reserved`` of them are the kata summary that follows, its header included)."""
    for error in state.collect_errors:
        for line in _collect_error_lines(error):
            tr.write_line(line, red=True)
    budget = MAX_LINES - 2 - reserved - len(state.collect_errors)  # 2: pytest's progress line, one spare
    warnings = sorted(state.learner_warnings.items(), key=lambda kv: -kv[1])[:2]
    skips = sorted(state.skip_reasons.items(), key=lambda kv: -kv[1])[:3]
    budget -= len(warnings) + len(skips)
    more = "kata check " + (state.targets[0] if len(state.targets) == 1 else "all") + " -v"
    cross = _symbols()["failing"]
    for line in render(state.briefs, budget, more):
        tr.write_line(line.replace("✗", cross, 1) if line.startswith("✗") else line, red=line.startswith("✗"))
    for text, times in warnings:
        tr.write_line(f"warning from your code, {times} time{'s' * (times > 1)}: {text}", yellow=True)
    for reason, times in skips:
        tr.write_line(f"{times} check{'s' * (times > 1)} skipped: {reason}")
    if state.collect_errors and not state.results:
        tr.write_line("Next: fix what is above (`kata doctor` shows what is installed), then check again.")


def _collect_error_lines(error: str) -> list[str]:
    """A check file that cannot be imported, in two lines: which, why, and for a missing package the fix."""
    where, _, text = error.partition(": ")
    last = text.strip().splitlines()[-1].removeprefix("E").strip() if text.strip() else "it failed to import"
    lines = [f"{where} could not be loaded: {last}"]
    missing = re.search(r"No module named '([^']+)'", last)
    if missing:
        package = missing.group(1).split(".")[0]
        lines.append(f"  {package} is not installed: pip install -e '.[all]' installs what every kata needs")
    return lines
