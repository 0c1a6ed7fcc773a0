"""Terminal output for the CLI: rich tables on a terminal, plain text when piped or in CI."""

from __future__ import annotations

import ast
import sys

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from . import paths, progress
from .registry import Exercise, Registry

STYLES = {"passed": "green", "failing": "red", "todo": "yellow", "stale": "magenta"}
MARKS = {"passed": "✓", "failing": "✗", "todo": "·", "stale": "↻"}
SNIPPET_SEPARATOR = "\n\n"  # between two symbols' source, when an exercise has several


def console() -> Console:
    """Rich on a terminal; piped or in CI, plain lines wide enough never to wrap a row."""
    out = Console(highlight=False, soft_wrap=True)
    if not out.is_terminal:
        out = Console(highlight=False, soft_wrap=True, width=200, no_color=True)
    return out


BAR_WIDTH = 20


def _bar(done: int, total: int, plain: bool) -> str:
    filled = round(BAR_WIDTH * done / total) if total else 0
    full, empty = ("#", "-") if plain else ("━", "╌")
    return full * filled + empty * (BAR_WIDTH - filled)


def _exercise_table(prog: progress.Progress, statuses: dict[str, str], exercises, out: Console) -> Table:
    plain = not out.is_terminal
    table = Table(box=None if plain else box.SIMPLE, show_edge=False, show_header=False, padding=(0, 1, 0, 4))
    wide = out.width >= 110  # the date column only where it leaves room for the titles
    for column in ("", "exercise", "title", "status", "checks", *(("first passed",) if wide else ())):
        table.add_column(column, no_wrap=column != "title", min_width=16 if column == "title" else None)
    for exercise in exercises:
        status = statuses[exercise.id]
        entry = prog.of(exercise.id)
        checks = f"{entry.checks_passed}/{entry.checks_total}" if entry.checks_total else ""
        first = entry.first_passed.strftime("%Y-%m-%d") if entry.first_passed else ""
        style = STYLES[status]
        cells = [MARKS[status], exercise.id, escape(exercise.title), f"[{style}]{status}[/]", checks, first]
        table.add_row(*cells[: len(table.columns)])
    return table


def print_status(
    reg: Registry, prog: progress.Progress, upcoming: Exercise | None, every_exercise: bool = False
) -> None:
    """One line per kata (a progress bar and counts), with the current kata's exercises listed under it.

    ``every_exercise`` lists the exercises of every kata.
    """
    out = console()
    plain = not out.is_terminal
    for problem in prog.problems:
        out.print(f"! {problem}", style="yellow", markup=False)
    statuses = {e.id: progress.effective_status(reg, prog, e) for e in reg.exercises}
    current_kata = upcoming.kata if upcoming else None
    width = max(len(k.id) for k in reg.katas)
    for phase in reg.phases:
        katas = [k for k in phase.katas if k.exercises]
        if not katas:
            out.print(f"Phase {phase.number}: {phase.title} (no katas yet)", markup=False)
            continue
        out.print(f"Phase {phase.number}: {phase.title}", style="bold", markup=False)
        for kata in katas:
            done = sum(statuses[e.id] == "passed" for e in kata.exercises)
            total = len(kata.exercises)
            stale = sum(statuses[e.id] == "stale" for e in kata.exercises)
            failing = sum(statuses[e.id] == "failing" for e in kata.exercises)
            notes = [f"{failing} failing"] * bool(failing) + [f"{stale} to re-check"] * bool(stale)
            mark = MARKS["passed"] if done == total else ("▸" if kata.id == current_kata else " ")
            style = "green" if done == total else ("bold" if kata.id == current_kata else "")
            line = (
                f" {mark} {kata.id:<{width}}  {_bar(done, total, plain)} {done:>2}/{total:<2} "
                f"{escape(kata.title)}" + (f" ({', '.join(notes)})" if notes else "")
            )
            out.print(line, style=style)
            if every_exercise or kata.id == current_kata:
                out.print(_exercise_table(prog, statuses, kata.exercises, out))
    done = sum(status == "passed" for status in statuses.values())
    out.print(f"{done} of {len(statuses)} exercises passed.", markup=False)
    stale = [e for e, status in statuses.items() if status == "stale"]
    if stale:
        out.print(
            f"Checks changed since you passed {', '.join(stale)}: re-run `kata check` on them.",
            style="magenta",
            markup=False,
        )
    if upcoming is not None:
        kata = reg.kata_of(upcoming)
        out.print(
            f"Next: {upcoming.id} ({upcoming.title}) in katas/{kata.phase}/{kata.id}.py: `kata check`, `kata hint`",
            markup=False,
        )
    if not every_exercise:
        out.print("`kata status --all` lists every exercise.", style="dim", markup=False)


def symbol_sources(source: str, symbols: tuple[str, ...]) -> list[str]:
    """The source text of the named top-level functions and classes, in file order."""
    tree = ast.parse(source)
    return [
        ast.get_source_segment(source, node, padded=True)
        for node in tree.body
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) and node.name in symbols
    ]


def print_solution(reg: Registry, exercise: Exercise) -> None:
    """The reference's code for the exercise, then what it is used for and what to read next.

    On a terminal it is highlighted. Piped (``kata solution X > mine.py``, ``| less``), standard output is
    the reference's source of those symbols exactly, byte for byte, and the words around it go to stderr.
    """
    from .summary import after_lines

    kata = reg.kata_of(exercise)
    source = paths.module_file(paths.REFERENCE_DIR, kata.phase, kata.id).read_text(encoding="utf-8")
    snippets = symbol_sources(source, exercise.symbols)
    header = f"The reference for {exercise.id} (reference/{kata.phase}/{kata.id}.py):"
    out = console()
    if not out.is_terminal:
        print(header + "\n", file=sys.stderr)
        sys.stdout.write(SNIPPET_SEPARATOR.join(snippets) + "\n")
        sys.stdout.flush()
        print("\n" + "\n".join(after_lines(exercise)), file=sys.stderr)
        return
    from rich.syntax import Syntax

    out.print(header + "\n", markup=False)
    for snippet in snippets:
        out.print(Syntax(snippet, "python", theme="ansi_dark"))
        out.print()
    for line in after_lines(exercise):
        out.print(line, markup=False, style="dim" if line.startswith("Read next") else "")
