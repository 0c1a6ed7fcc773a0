"""``kata verify``: the maintainer's proof, run as one pytest session with ``--kata-verify``.

Every check runs against the reference (must pass), the untouched stubs (must be todo: none passes
vacuously), every catalogued mistake of its exercise (at least one check must reject each; ``slow``
checks are left out here, so that a learner with that mistake hears about it fast) and every
catalogued variant (every check must accept it). Expected rejections are reported to pytest as xfails,
so the session's summary line counts them honestly; each gap is a failure or a line in the gap list,
and any gap makes the session exit non-zero. Static agreement (registry, files, stub/reference API,
canonical stubs, hints, catalogue coverage) is checked first.
"""

from __future__ import annotations

import traceback
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from . import paths
from .impl import ImplChoice
from .outcomes import CRASHED, FAILED, PASSED, TODO, CheckResult
from .registry import Exercise, Registry
from .stubs import api_differences, stub_problems


def static_problems(registry: Registry, kata_ids: set[str] | None = None) -> list[str]:
    """Registry ↔ files ↔ API ↔ catalogue agreement (for ``kata_ids``, or every kata); hints are
    checked by the registry itself."""
    from .catalogue import catalogue, mutant_problems

    problems = registry.problems()
    if problems:
        return problems
    for kata in registry.katas:
        if kata_ids is not None and kata.id not in kata_ids:
            continue
        stub_source = paths.module_file(paths.KATAS_DIR, kata.phase, kata.id).read_text(encoding="utf-8")
        ref_source = paths.module_file(paths.REFERENCE_DIR, kata.phase, kata.id).read_text(encoding="utf-8")
        problems += [f"{kata.id}: {p}" for p in api_differences(stub_source, ref_source)]
        entries = catalogue(kata.id)
        symbols = {s for e in kata.exercises for s in e.symbols}
        problems += [
            f"{kata.id}: catalogue entry {e.name} replaces {e.symbol!r}, which no exercise owns"
            for e in entries
            if e.symbol not in symbols
        ]
        problems += [f"{kata.id}: {p}" for e in entries for p in mutant_problems(e)]
        for exercise in kata.exercises:
            problems += stub_problems(stub_source, exercise)
            owned = [e for e in entries if e.symbol in exercise.symbols]
            for kind in ("mistake", "variant"):
                if not any(e.kind == kind for e in owned):
                    problems.append(f"{exercise.id}: catalogue has no {kind} (checks/mistakes/{kata.id}.py)")
    return problems


def is_code_under_test(filename: str) -> bool:
    path = Path(filename).resolve()
    return any(d in path.parents for d in (paths.REFERENCE_DIR, paths.KATAS_DIR, paths.MISTAKES_DIR))


def _is_project_file(filename: str) -> bool:
    path = Path(filename).resolve()
    return paths.ROOT in path.parents and ".venv" not in path.parts and ".nox" not in path.parts


def is_catch(exc: BaseException, assertion_types: tuple[type[BaseException], ...]) -> bool:
    """Does this failure reject the code under test, rather than crash the check's own code?

    A catch is an assertion about behaviour (``AssertionError``, ``pytest.fail``, a time limit) or an
    exception raised inside the code under test. Anything else was raised in the check's own code (a
    TypeError while indexing a wrong result, say) and proves nothing about the mistake: that check must
    assert on what it relies on first. What decides is the innermost frame of the project's own files.
    """
    if isinstance(exc, BaseExceptionGroup):
        return any(is_catch(e, assertion_types) for e in exc.exceptions)
    if isinstance(exc, assertion_types):
        return True
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if _is_project_file(f.filename)]
    return bool(frames) and is_code_under_test(frames[-1].filename)


def rewrite_report(report: pytest.TestReport, choice: ImplChoice, outcome: str, exercise: Exercise) -> None:
    """Turn expected outcomes into xfails and unexpected ones into failures that say what is wrong."""
    if choice.role == "stub":
        if outcome == TODO:
            report.outcome, report.wasxfail = "skipped", "todo on the untouched stub, as it must be"
        elif outcome == PASSED and report.when == "call":
            report.outcome = "failed"
            report.longrepr = (
                f"This check passes on the untouched stub of {exercise.id}: it proves nothing. "
                "Make it call the code under test (`impl`) and assert on the result."
            )
        elif outcome == FAILED:
            report.sections.append(
                ("kata verify", f"On the untouched stub of {exercise.id} this check must hit NotImplementedError.")
            )
    elif choice.role == "mistake" and outcome in (FAILED, TODO):
        report.outcome, report.wasxfail = "skipped", f"rejects mistake {choice.entry}"
    elif choice.role == "mistake" and outcome == CRASHED:
        report.outcome = "skipped"
        report.wasxfail = f"crashed in the check's own code on mistake {choice.entry}: not counted as a catch"
    elif choice.role == "variant" and outcome == FAILED:
        report.sections.append(
            ("kata verify", f"Variant {choice.entry} is a correct answer; this check over-fits the reference.")
        )


@dataclass
class KataRow:
    kata: str
    exercises: int = 0
    checks: int = 0
    mistakes: int = 0
    caught: int = 0
    variants: int = 0
    accepted: int = 0
    todo_exercises: int = 0
    seconds: float = 0.0


@dataclass
class VerifyReport:
    rows: list[KataRow] = field(default_factory=list)
    gaps: list[str] = field(default_factory=list)
    harness_failures: int = 0


def build_report(registry: Registry, results: list[CheckResult], collected: dict[str, list[str]]) -> VerifyReport:
    from .catalogue import catalogue

    # A run restricted to some check files (pytest PATH --kata-verify) verifies just those katas.
    ran = {registry.exercise(e).kata for e in collected}
    report = VerifyReport(gaps=static_problems(registry, ran))
    by_exercise: dict[str, list[CheckResult]] = defaultdict(list)
    for result in results:
        by_exercise[result.exercise].append(result)
    for kata in (k for k in registry.katas if k.id in ran):
        row = KataRow(kata.id, exercises=len(kata.exercises))
        entries = catalogue(kata.id)
        for exercise in kata.exercises:
            mine = by_exercise.get(exercise.id, [])
            row.seconds += sum(r.duration for r in mine)
            ref = [r for r in mine if r.role == "reference"]
            row.checks += len(ref)
            if not collected.get(exercise.id):
                report.gaps.append(f"{exercise.id}: has no checks")
                continue
            report.gaps += [
                f"{exercise.id}: fails on the reference: {r.nodeid}"
                for r in ref
                if r.outcome not in (PASSED, "skipped")
            ]
            if ref and not any(r.outcome == PASSED for r in ref):
                report.gaps.append(f"{exercise.id}: no check ran on the reference (all skipped)")
            stub = [r for r in mine if r.role == "stub"]
            report.gaps += [
                f"{exercise.id}: not todo on the stub ({r.outcome}): {r.nodeid}"
                for r in stub
                if r.outcome not in (TODO, "skipped")
            ]
            if stub and all(r.outcome == TODO for r in stub if r.outcome != "skipped"):
                row.todo_exercises += 1
            for entry in (e for e in entries if e.symbol in exercise.symbols):
                runs = [r for r in mine if r.entry == entry.name]
                if entry.kind == "mistake":
                    row.mistakes += 1
                    if any(r.outcome == FAILED for r in runs):
                        row.caught += 1
                        continue
                    gap = f"{exercise.id}: no check rejects mistake {entry.name} ({entry.because})"
                    crashed = [r.nodeid for r in runs if r.outcome == CRASHED]
                    if crashed:
                        gap += "; these checks only crashed in their own code: " + ", ".join(crashed)
                    report.gaps.append(gap)
                else:
                    row.variants += 1
                    rejected = [r.nodeid for r in runs if r.outcome == FAILED]
                    if rejected:
                        report.gaps += [f"{exercise.id}: variant {entry.name} is rejected by {n}" for n in rejected]
                    elif runs:
                        row.accepted += 1
        report.rows.append(row)
    return report


def finish_session(session: pytest.Session, state) -> None:
    collected = state.collected or {e: [r.nodeid for r in rs] for e, rs in state.complete_exercises().items()}
    state.verify_report = build_report(state.registry, list(state.results.values()), collected)
    if state.verify_report.gaps and session.exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def format_table(report: VerifyReport) -> list[str]:
    header = ("kata", "exercises", "checks", "stubs todo", "mistakes caught", "variants accepted", "time")
    rows = [
        (
            r.kata,
            str(r.exercises),
            str(r.checks),
            f"{r.todo_exercises}/{r.exercises}",
            f"{r.caught}/{r.mistakes}",
            f"{r.accepted}/{r.variants}",
            f"{r.seconds:.1f}s",
        )
        for r in report.rows
    ]
    total = KataRow("total")
    for r in report.rows:
        for name in ("exercises", "checks", "mistakes", "caught", "variants", "accepted", "todo_exercises", "seconds"):
            setattr(total, name, getattr(total, name) + getattr(r, name))
    rows.append(
        (
            "total",
            str(total.exercises),
            str(total.checks),
            f"{total.todo_exercises}/{total.exercises}",
            f"{total.caught}/{total.mistakes}",
            f"{total.accepted}/{total.variants}",
            f"{total.seconds:.1f}s",
        )
    )
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    line = lambda row: "  ".join(
        cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths, strict=True))
    )  # noqa: E731
    return [line(header), "  ".join("-" * w for w in widths), *map(line, rows)]


def print_summary(tr, state) -> None:
    report = state.verify_report
    tr.section("kata verify", sep="=", bold=True)
    for text in format_table(report):
        tr.write_line(text)
    if report.gaps:
        tr.write_line(f"{len(report.gaps)} gap(s):", red=True, bold=True)
        for gap in report.gaps:
            tr.write_line(f"  - {gap}", red=True)
    else:
        tr.write_line(
            "verified: the reference passes, every stub is todo, every mistake is caught, every variant accepted",
            green=True,
        )
