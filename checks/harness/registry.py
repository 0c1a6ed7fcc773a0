"""The curriculum registry: ``katas/curriculum.toml`` read into plain dataclasses.

The registry is the one ordered list of phases, katas and exercises. The pytest plugin, the CLI, the
noxfile and ``kata verify`` all read it through this module, which uses only the standard library so
that the noxfile can import it before anything is installed.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from . import paths

MARKERS = ("gpu", "perf", "slow", "hub")
DIFFICULTIES = ("easy", "medium", "hard")
MIN_HINTS, MAX_HINTS = 2, 4
MAX_READ = 3
MAX_AFTER_CHARS = 400  # one to three sentences


class RegistryError(ValueError):
    """The registry file is malformed or disagrees with the files on disk."""


@dataclass(frozen=True)
class Exercise:
    kata: str  # kata id, e.g. "w01_numpy"
    name: str  # the exercise's main symbol, e.g. "softmax"
    title: str
    difficulty: str
    symbols: tuple[str, ...]  # every public name the learner writes for this exercise
    hints: tuple[str, ...]
    depends_on: tuple[str, ...] = ()
    markers: tuple[str, ...] = ()
    after: str = ""  # shown once it passes: what the learner built and where real systems use it
    read: tuple[str, ...] = ()  # links to read next: the paper, the library's docs, a real implementation

    @property
    def id(self) -> str:
        return f"{self.kata}.{self.name}"


@dataclass(frozen=True)
class Kata:
    id: str
    phase: str
    title: str
    weeks: str
    difficulty: str
    exercises: tuple[Exercise, ...]
    depends_on: tuple[str, ...] = ()
    markers: tuple[str, ...] = ()

    @property
    def module(self) -> str:
        """Module path inside an implementation package: ``phase1.w01_numpy``."""
        return f"{self.phase}.{self.id}"

    @property
    def check_file(self) -> Path:
        return paths.check_file(self.phase, self.id)


@dataclass(frozen=True)
class Phase:
    id: str
    number: int
    title: str
    katas: tuple[Kata, ...] = field(default=())


@dataclass(frozen=True)
class Registry:
    phases: tuple[Phase, ...]

    @property
    def katas(self) -> tuple[Kata, ...]:
        return tuple(k for p in self.phases for k in p.katas)

    @property
    def exercises(self) -> tuple[Exercise, ...]:
        return tuple(e for k in self.katas for e in k.exercises)

    @cached_property
    def _by_id(self) -> dict[str, Phase | Kata | Exercise]:
        index: dict[str, Phase | Kata | Exercise] = {}
        for phase in self.phases:
            index[phase.id] = phase
            for kata in phase.katas:
                index[kata.id] = kata
                for exercise in kata.exercises:
                    index[exercise.id] = exercise
                    for symbol in exercise.symbols:
                        index.setdefault(f"{kata.id}.{symbol}", exercise)
        return index

    def kata(self, kata_id: str) -> Kata:
        found = self._by_id.get(kata_id)
        if not isinstance(found, Kata):
            raise KeyError(f"no kata named {kata_id!r}; known katas: {', '.join(k.id for k in self.katas)}")
        return found

    def exercise(self, exercise_id: str) -> Exercise:
        """An exercise by id (``w01_numpy.softmax``) or by any of its symbols (``w01_numpy.logsumexp``)."""
        found = self._by_id.get(exercise_id)
        if not isinstance(found, Exercise):
            raise KeyError(f"no exercise named {exercise_id!r}")
        return found

    def exercise_for_symbol(self, kata_id: str, symbol: str) -> Exercise:
        return self.exercise(f"{kata_id}.{symbol}")

    def resolve(self, target: str | None) -> tuple[Exercise, ...]:
        """Exercises named by a CLI target: nothing (all), a phase, a kata, an exercise or a symbol.

        A bare exercise name (``softmax``) is accepted when exactly one kata has it.
        """
        if not target:
            return self.exercises
        found = self._by_id.get(target)
        if found is None:
            matches = [e for e in self.exercises if target == e.name or target in e.symbols]
            if len(matches) == 1:
                return tuple(matches)
            if matches:
                options = ", ".join(e.id for e in matches)
                raise KeyError(f"{target!r} is ambiguous: {options}")
            raise KeyError(f"{target!r} is not a phase, kata or exercise.{self._suggest(target)}")
        if isinstance(found, Exercise):
            return (found,)
        if isinstance(found, Kata):
            return found.exercises
        return tuple(e for k in found.katas for e in k.exercises)

    def _suggest(self, target: str) -> str:
        """" Did you mean ...?" for a near miss (a typo, a missing kata prefix), else where to look."""
        import difflib

        names = {name: name for name in self._by_id}
        for exercise in self.exercises:
            for symbol in exercise.symbols:
                names.setdefault(symbol, f"{exercise.kata}.{symbol}")
        close = difflib.get_close_matches(target, names, n=3, cutoff=0.75)
        if close:
            return " Did you mean " + " or ".join(dict.fromkeys(names[c] for c in close)) + "?"
        return " `kata status --all` lists them all."

    def kata_of(self, exercise: Exercise) -> Kata:
        return self.kata(exercise.kata)

    def problems(self) -> list[str]:
        """Every way the registry disagrees with itself or with the files on disk (empty when sound)."""
        return _problems(self)


def _strings(table: dict, key: str, where: str) -> tuple[str, ...]:
    value = table.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise RegistryError(f"{where}: `{key}` must be a list of strings, got {value!r}")
    return tuple(value)


def _required(table: dict, key: str, where: str) -> str:
    value = table.get(key)
    if not isinstance(value, str) or not value:
        raise RegistryError(f"{where}: `{key}` is required and must be a non-empty string, got {value!r}")
    return value


def parse(data: dict) -> Registry:
    """Build a registry from the parsed TOML document; raises ``RegistryError`` naming the bad entry."""
    katas_by_phase: dict[str, list[Kata]] = {}
    for i, k in enumerate(data.get("katas", [])):
        where = f"katas[{i}] ({k.get('id', '?')})"
        kata_id = _required(k, "id", where)
        exercises = []
        for j, e in enumerate(k.get("exercises", [])):
            ewhere = f"{kata_id}.exercises[{j}] ({e.get('name', '?')})"
            name = _required(e, "name", ewhere)
            symbols = _strings(e, "symbols", ewhere) or (name,)
            if name not in symbols:
                raise RegistryError(f"{ewhere}: `symbols` must include the exercise name {name!r}")
            exercises.append(
                Exercise(
                    kata=kata_id,
                    name=name,
                    title=_required(e, "title", ewhere),
                    difficulty=_required(e, "difficulty", ewhere),
                    symbols=symbols,
                    hints=_strings(e, "hints", ewhere),
                    depends_on=_strings(e, "depends_on", ewhere),
                    markers=_strings(e, "markers", ewhere),
                    after=str(e.get("after", "")),
                    read=_strings(e, "read", ewhere),
                )
            )
        kata = Kata(
            id=kata_id,
            phase=_required(k, "phase", where),
            title=_required(k, "title", where),
            weeks=str(k.get("weeks", "")),
            difficulty=_required(k, "difficulty", where),
            exercises=tuple(exercises),
            depends_on=_strings(k, "depends_on", where),
            markers=_strings(k, "markers", where),
        )
        katas_by_phase.setdefault(kata.phase, []).append(kata)

    phases = []
    for i, p in enumerate(data.get("phases", [])):
        where = f"phases[{i}]"
        phase_id = _required(p, "id", where)
        number = p.get("number")
        if not isinstance(number, int):
            raise RegistryError(f"{where}: `number` must be an integer, got {number!r}")
        phases.append(Phase(phase_id, number, _required(p, "title", where), tuple(katas_by_phase.pop(phase_id, []))))
    if katas_by_phase:
        raise RegistryError(f"katas name phases that are not declared: {sorted(katas_by_phase)}")
    return Registry(tuple(phases))


def load(path: Path | None = None) -> Registry:
    path = path or paths.REGISTRY_FILE
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise RegistryError(f"{path} is not valid TOML: {err}") from err
    return parse(data)


def _problems(registry: Registry) -> list[str]:
    problems: list[str] = []
    seen: set[str] = set()
    all_ids = {e.id for e in registry.exercises} | {k.id for k in registry.katas}
    for kata in registry.katas:
        for thing_id in (kata.id, *(e.id for e in kata.exercises)):
            if thing_id in seen:
                problems.append(f"{thing_id}: listed twice")
            seen.add(thing_id)
        for label, path in (
            ("stub", paths.module_file(paths.KATAS_DIR, kata.phase, kata.id)),
            ("reference", paths.module_file(paths.REFERENCE_DIR, kata.phase, kata.id)),
            ("check file", kata.check_file),
        ):
            if not path.is_file():
                problems.append(f"{kata.id}: its {label} {path.relative_to(paths.ROOT)} is missing")
        if kata.difficulty not in DIFFICULTIES:
            problems.append(f"{kata.id}: difficulty {kata.difficulty!r} is not one of {DIFFICULTIES}")
        if not kata.exercises:
            problems.append(f"{kata.id}: has no exercises")
        for dep in kata.depends_on:
            if dep not in all_ids:
                problems.append(f"{kata.id}: depends_on {dep!r}, which is not in the registry")
        for exercise in kata.exercises:
            where = exercise.id
            if exercise.difficulty not in DIFFICULTIES:
                problems.append(f"{where}: difficulty {exercise.difficulty!r} is not one of {DIFFICULTIES}")
            if not MIN_HINTS <= len(exercise.hints) <= MAX_HINTS:
                problems.append(f"{where}: has {len(exercise.hints)} hints; give {MIN_HINTS} to {MAX_HINTS}")
            if not exercise.after or len(exercise.after) > MAX_AFTER_CHARS:
                problems.append(
                    f"{where}: `after` must say in 1 to 3 sentences (at most {MAX_AFTER_CHARS} characters) what the "
                    "learner built and where it is used"
                )
            if not 1 <= len(exercise.read) <= MAX_READ or not all(u.startswith("https://") for u in exercise.read):
                problems.append(f"{where}: `read` must list 1 to {MAX_READ} https:// links, got {list(exercise.read)}")
            for marker in (*exercise.markers, *kata.markers):
                if marker not in MARKERS:
                    problems.append(f"{where}: marker {marker!r} is not one of {MARKERS}")
            for dep in exercise.depends_on:
                if dep not in all_ids:
                    problems.append(f"{where}: depends_on {dep!r}, which is not in the registry")
    listed = {(k.phase, k.id) for k in registry.katas}
    for phase in registry.phases:
        candidates = [
            *((p, p.stem) for p in (paths.KATAS_DIR / phase.id).glob("*.py")),
            *((p, p.stem) for p in (paths.REFERENCE_DIR / phase.id).glob("*.py")),
            *((p, p.stem.removeprefix("test_")) for p in (paths.CHECKS_DIR / phase.id).glob("test_*.py")),
        ]
        for path, kata_id in sorted(candidates):
            if not kata_id.startswith("_") and (phase.id, kata_id) not in listed:
                problems.append(f"{path.relative_to(paths.ROOT)} is not listed in the registry")
    return problems
