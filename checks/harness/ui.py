"""Terminal output for the CLI: rich tables on a terminal, plain text when piped or in CI."""

from __future__ import annotations

import ast

from rich import box
from rich.console import Console
from rich.table import Table

from . import paths, progress
from .registry import Exercise, Registry

STYLES = {"passed": "green", "failing": "red", "todo": "yellow", "stale": "magenta"}
MARKS = {"passed": "✓", "failing": "✗", "todo": "·", "stale": "↻"}


def console() -> Console:
    """Rich on a terminal; piped or in CI, plain lines wide enough never to wrap a row."""
    out = Console(highlight=False, soft_wrap=True)
    if not out.is_terminal:
        out = Console(highlight=False, soft_wrap=True, width=200, no_color=True)
    return out


def print_status(reg: Registry, prog: progress.Progress, upcoming: Exercise | None) -> None:
    out = console()
    plain = not out.is_terminal
    for problem in prog.problems:
        out.print(f"[yellow]! {problem}[/]")
    done = total = 0
    for phase in reg.phases:
        exercises = [e for k in phase.katas for e in k.exercises]
        if not exercises:
            out.print(f"Phase {phase.number}: {phase.title} (no katas yet)")
            continue
        table = Table(
            title=f"Phase {phase.number}: {phase.title}",
            title_justify="left",
            box=None if plain else box.SIMPLE,
            show_edge=False,
        )
        wide = out.width >= 110  # the date column only where it leaves room for the titles
        for column in ("", "exercise", "title", "status", "checks", *(("first passed",) if wide else ())):
            table.add_column(column, no_wrap=column != "title", min_width=16 if column == "title" else None)
        for exercise in exercises:
            status = progress.effective_status(reg, prog, exercise)
            entry = prog.of(exercise.id)
            done += status == "passed"
            total += 1
            checks = f"{entry.checks_passed}/{entry.checks_total}" if entry.checks_total else ""
            first = entry.first_passed.strftime("%Y-%m-%d") if entry.first_passed else ""
            style = STYLES[status]
            cells = [MARKS[status], exercise.id, exercise.title, f"[{style}]{status}[/]", checks, first]
            table.add_row(*cells[: len(table.columns)])
        out.print(table)
    out.print(f"{done} of {total} exercises passed.")
    stale = [e.id for e in reg.exercises if progress.effective_status(reg, prog, e) == "stale"]
    if stale:
        out.print(f"[magenta]Checks changed since you passed {', '.join(stale)}: re-run `kata check` on them.[/]")
    if upcoming is not None:
        kata = reg.kata_of(upcoming)
        out.print(f"Next: [bold]{upcoming.id}[/] ({upcoming.title}) in katas/{kata.phase}/{kata.id}.py: `kata next`")
    passed = [e.id for e in reg.exercises if progress.effective_status(reg, prog, e) == "passed"]
    if passed:
        out.print(f"Curious how the reference did it? `kata solution {passed[-1]}` (for any exercise you passed).")


def symbol_sources(source: str, symbols: tuple[str, ...]) -> list[str]:
    """The source text of the named top-level functions and classes, in file order."""
    tree = ast.parse(source)
    return [
        ast.get_source_segment(source, node, padded=True)
        for node in tree.body
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) and node.name in symbols
    ]


def print_solution(reg: Registry, exercise: Exercise) -> None:
    from rich.syntax import Syntax

    kata = reg.kata_of(exercise)
    source = paths.module_file(paths.REFERENCE_DIR, kata.phase, kata.id).read_text(encoding="utf-8")
    out = console()
    out.print(f"The reference for {exercise.id} (reference/{kata.phase}/{kata.id}.py):\n")
    for snippet in symbol_sources(source, exercise.symbols):
        out.print(Syntax(snippet, "python", theme="ansi_dark") if out.is_terminal else snippet)
        out.print()
