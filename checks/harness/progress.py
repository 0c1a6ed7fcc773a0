"""The learner's ``progress.toml``: read it forgivingly, write it atomically, never lose it.

Layout (one table per exercise, grouped by kata)::

    version = 1

    [exercises.w01_numpy.softmax]
    status = "passed"          # todo | failing | passed
    checks_passed = 6
    checks_total = 6
    first_passed = 2026-11-25T10:00:00Z
    last_run = 2026-11-25T10:00:00Z
    fingerprint = "3f1c..."    # of the checks it passed; a changed kata shows as stale
    hints_shown = 1

Writes go through ``tomlkit`` (comments and unknown keys survive), under a file lock, to a temporary
file that replaces the original in one step. A file that does not parse, or holds values the harness
cannot use, is copied to a backup before anything is written over it, and the learner is told where.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import tomlkit
from filelock import FileLock
from tomlkit.exceptions import TOMLKitError

from .fingerprint import fingerprint
from .outcomes import PASSED, SKIPPED, CheckResult, tally
from .registry import Exercise, Registry

STATUSES = ("todo", "failing", "passed")
HEADER = """\
# Your progress through the katas, kept up to date by `kata check` (and by pytest runs on your katas).
# `kata status` reads it and `kata badges` turns it into badges. Comments and keys you add are kept.
"""


@dataclass
class ExerciseProgress:
    status: str = "todo"
    checks_passed: int = 0
    checks_total: int = 0
    first_passed: datetime | None = None
    last_run: datetime | None = None
    fingerprint: str = ""
    hints_shown: int = 0


@dataclass
class Progress:
    exercises: dict[str, ExerciseProgress] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)  # what was wrong with the file, for the learner

    def of(self, exercise_id: str) -> ExerciseProgress:
        return self.exercises.get(exercise_id, ExerciseProgress())


@dataclass(frozen=True)
class Change:
    exercise: str
    before: str
    after: str
    first_pass: bool = False  # passed in this run and never before (or never since a reset)

    @property
    def newly_passed(self) -> bool:
        """Passes now and did not on the last run (for the first time, or again after a failure)."""
        return self.after == PASSED and self.before != PASSED


@dataclass
class RunUpdate:
    path: Path
    changes: list[Change]
    problems: list[str]


_FIELDS: dict[str, tuple[type, ...]] = {
    "status": (str,),
    "checks_passed": (int,),
    "checks_total": (int,),
    "first_passed": (datetime,),
    "last_run": (datetime,),
    "fingerprint": (str,),
    "hints_shown": (int,),
}


def _backup(path: Path, text: str, why: str) -> Path:
    digest = hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:8]
    backup = path.with_name(f"{path.name}.{why}-{digest}.bak")
    if not backup.exists():
        shutil.copy2(path, backup)
    return backup


def _parse_entry(exercise_id: str, table: Mapping) -> tuple[ExerciseProgress, list[str]]:
    entry, problems = ExerciseProgress(), []
    for key, types in _FIELDS.items():
        if key not in table:
            continue
        value = table[key]
        value = value.unwrap() if hasattr(value, "unwrap") else value
        if not isinstance(value, types) or isinstance(value, bool) or (key == "status" and value not in STATUSES):
            expected = " | ".join(STATUSES) if key == "status" else types[0].__name__
            problems.append(f"{exercise_id}.{key} = {value!r} is not a valid {expected}; it is ignored")
            continue
        setattr(entry, key, value)
    return entry, problems


def _read(path: Path) -> tuple[tomlkit.TOMLDocument, Progress, str | None]:
    """Parse the file; returns the document to edit, what it says, and why a backup is due (if it is)."""
    if not path.exists():
        return tomlkit.parse(HEADER + "version = 1\n"), Progress(), None
    text = path.read_text(encoding="utf-8", errors="surrogateescape")
    try:
        doc = tomlkit.parse(text)
    except TOMLKitError as err:
        backup = _backup(path, text, "corrupt")
        problem = f"{path.name} is not valid TOML ({err}); it was copied to {backup.name} and a fresh one is used"
        return tomlkit.parse(HEADER + "version = 1\n"), Progress(problems=[problem]), None
    progress = Progress()
    exercises = doc.get("exercises", {})
    if not isinstance(exercises, Mapping):
        progress.problems.append(f"{path.name}: `exercises` must be a table; it is ignored")
        exercises = {}
    for kata_id, kata_table in exercises.items():
        if not isinstance(kata_table, Mapping):
            progress.problems.append(f"{path.name}: exercises.{kata_id} must be a table; it is ignored")
            continue
        for name, table in kata_table.items():
            exercise_id = f"{kata_id}.{name}"
            if not isinstance(table, Mapping):
                progress.problems.append(f"{path.name}: exercises.{exercise_id} must be a table; it is ignored")
                continue
            entry, problems = _parse_entry(exercise_id, table)
            progress.exercises[exercise_id] = entry
            progress.problems.extend(f"{path.name}: exercises.{p}" for p in problems)
    return doc, progress, ("hand-edited" if progress.problems else None)


def load(path: Path) -> Progress:
    """Read the progress file for display. A corrupt file is backed up and reported, never raised."""
    return _read(path)[1]


def _lock(path: Path) -> FileLock:
    return FileLock(str(path.with_name(f".{path.name}.lock")), timeout=30)


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _edit(path: Path, mutate: Callable[[tomlkit.TOMLDocument, Progress], None]) -> Progress:
    """Read-modify-write under a lock; backs the old file up first when it held values we ignore."""
    with _lock(path):
        doc, progress, backup_reason = _read(path)
        if backup_reason:
            backup = _backup(path, path.read_text(encoding="utf-8", errors="surrogateescape"), backup_reason)
            progress.problems.append(f"the file as it was is kept in {backup.name}")
        mutate(doc, progress)
        _write_atomically(path, tomlkit.dumps(doc))
    return progress


def _table(doc: tomlkit.TOMLDocument, exercise_id: str):
    kata_id, name = exercise_id.split(".", 1)
    exercises = doc.get("exercises")
    if not isinstance(exercises, Mapping):
        exercises = doc["exercises"] = tomlkit.table(is_super_table=True)
    kata = exercises.get(kata_id)
    if not isinstance(kata, Mapping):
        kata = exercises[kata_id] = tomlkit.table(is_super_table=True)
    table = kata.get(name)
    if not isinstance(table, Mapping):
        table = kata[name] = tomlkit.table()
    return table


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def record_run(path: Path, registry: Registry, complete: Mapping[str, Iterable[CheckResult]]) -> RunUpdate:
    """Record the exercises whose every check ran in this session."""
    changes: list[Change] = []
    tallies = tally(r for results in complete.values() for r in results)

    def mutate(doc, progress):
        now = _now()
        for exercise_id, t in tallies.items():
            if t.status == SKIPPED:
                continue  # no check could run here: what was recorded before still stands
            exercise = registry.exercise(exercise_id)
            before = progress.of(exercise_id)
            table = _table(doc, exercise_id)
            table["status"] = t.status
            table["checks_passed"] = t.counts[PASSED]
            table["checks_total"] = t.ran
            first_pass = t.status == PASSED and before.first_passed is None
            if first_pass:
                table["first_passed"] = now
            table["last_run"] = now
            table["fingerprint"] = fingerprint(registry.kata_of(exercise).check_file, exercise.name)
            changes.append(Change(exercise_id, before.status, t.status, first_pass))

    progress = _edit(path, mutate)
    return RunUpdate(path, changes, progress.problems)


def record_hint(path: Path, exercise_id: str, shown: int) -> None:
    def mutate(doc, _progress):
        _table(doc, exercise_id)["hints_shown"] = shown

    _edit(path, mutate)


def reset_exercise(path: Path, exercise_id: str) -> None:
    """Mark an exercise todo again, as if never passed; the hint count is kept (hints seen stay seen)."""

    def mutate(doc, _progress):
        table = _table(doc, exercise_id)
        table["status"] = "todo"
        table["checks_passed"] = 0
        table.pop("fingerprint", None)
        table.pop("first_passed", None)

    _edit(path, mutate)


def effective_status(registry: Registry, progress: Progress, exercise: Exercise) -> str:
    """todo / failing / passed as recorded, or ``stale`` when passed on checks that have since changed."""
    entry = progress.of(exercise.id)
    if entry.status == PASSED:
        current = fingerprint(registry.kata_of(exercise).check_file, exercise.name)
        if current and entry.fingerprint != current:
            return "stale"
    return entry.status
