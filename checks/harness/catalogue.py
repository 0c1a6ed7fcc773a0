"""The catalogue engine: known-wrong implementations (mistakes) and unusual-but-correct ones (variants).

The entries themselves are data, one module per kata in ``checks/mistakes/`` named like the kata
(``checks/mistakes/w01_numpy.py``). An entry replaces one public symbol of the reference, in one of two
ways::

    @mistake("softmax", "exponentiates without subtracting the max, so large inputs overflow to nan")
    def softmax_without_max(x, axis=-1):
        e = np.exp(x)
        return e / e.sum(axis=axis, keepdims=True)

    @variant("softmax", "exponentiates x - logsumexp(x) instead of dividing by the sum")
    def softmax_via_logsumexp(x, axis=-1): ...

    @mutant("LayerNorm", "normalises with the unbiased variance", replace={"unbiased=False": "unbiased=True"})
    def layer_norm_unbiased(): ...

A ``mutant`` is a mistake written as a small edit of the reference's own source for that symbol: the
decorated function only gives the entry its name. Its edits must still apply to the reference; ``kata
verify`` reports the entry when one no longer does, so a catalogue never rots silently.

``kata verify`` proves that at least one check of the symbol's exercise rejects every mistake and that
every check accepts every variant. When a learner's answer fails a check, the check can ask
``checks.numerics.likely_cause`` which catalogued mistake reproduces the learner's answer.

This engine never imports a kata's content by name: it finds the catalogue module and the reference
module from the kata id.
"""

from __future__ import annotations

import ast
import functools
import importlib
import importlib.util
import linecache
import sys
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Literal

Kind = Literal["mistake", "variant"]
CATALOGUE_PACKAGE = "checks.mistakes"


class CatalogueError(Exception):
    """A catalogue entry that cannot be built (for a mutant: an edit that no longer applies)."""


@dataclass(frozen=True)
class Entry:
    kind: Kind
    kata: str  # kata id, taken from the catalogue module's name
    symbol: str  # the public name it replaces
    name: str  # the entry's own name (the function or class name), unique within its kata
    because: str  # what is wrong (mistakes) or what is unusual about it (variants)
    obj: Any = None  # the replacement function or class; None for a mutant, built from `replace`
    replace: tuple[tuple[str, str], ...] = field(default=())  # a mutant's edits of the reference source

    @property
    def id(self) -> str:
        return f"{self.kata}:{self.name}"

    @property
    def is_mutant(self) -> bool:
        return bool(self.replace)

    def implementation(self, symbol: str | None = None) -> Any:
        """The replacement object: the entry itself, or the mutant built from the edited reference.

        With ``symbol`` (a class or function that uses the entry's symbol, such as a model built of the
        mistaken block), the reference's ``symbol`` with this entry in place of the part it replaces.
        """
        if symbol is not None and symbol != self.symbol:
            if self.is_mutant:
                return getattr(mutated_reference(self.kata, self.symbol, self.replace), symbol)
            from .impl import patched_reference
            return getattr(patched_reference(_registry().kata(self.kata), {self.symbol: self.obj}, self.name), symbol)
        if not self.is_mutant:
            return self.obj
        return getattr(mutated_reference(self.kata, self.symbol, self.replace), self.symbol)


_ENTRIES: dict[str, list[Entry]] = {}


def _register(kind: Kind, symbol: str, because: str, replace: dict[str, str] | None = None):
    if not because:
        raise ValueError(f"a {kind} for {symbol!r} needs a `because` that explains it")
    if replace is not None and (not replace or any(old == new for old, new in replace.items())):
        raise ValueError(f"the mutant of {symbol!r} needs at least one edit that changes something: {replace!r}")

    def decorate(obj):
        kata = obj.__module__.rsplit(".", 1)[-1]
        entries = _ENTRIES.setdefault(kata, [])
        if any(e.name == obj.__name__ for e in entries):
            raise ValueError(f"{kata}: two catalogue entries are named {obj.__name__!r}")
        edits = tuple((replace or {}).items())
        entries.append(Entry(kind, kata, symbol, obj.__name__, because, None if edits else obj, edits))
        return obj

    return decorate


def mistake(symbol: str, because: str):
    """Register a wrong implementation of ``symbol``; ``because`` says what is wrong, for the learner."""
    return _register("mistake", symbol, because)


def variant(symbol: str, because: str):
    """Register an unusual but correct implementation of ``symbol`` that every check must accept."""
    return _register("variant", symbol, because)


def mutant(symbol: str, because: str, replace: dict[str, str]):
    """Register a mistake made by editing the reference's source of ``symbol``: each key of ``replace`` is
    replaced by its value, and each key must occur in that source."""
    return _register("mistake", symbol, because, replace)


def catalogue(kata: str) -> list[Entry]:
    """Every entry catalogued for ``kata`` (empty when the kata has no catalogue module)."""
    if kata not in _ENTRIES:
        module = f"{CATALOGUE_PACKAGE}.{kata}"
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as err:
            if err.name != module:
                raise
        _ENTRIES.setdefault(kata, [])
    return list(_ENTRIES[kata])


def mistakes_for(kata: str, symbol: str) -> list[Entry]:
    return [e for e in catalogue(kata) if e.kind == "mistake" and e.symbol == symbol]


def mistakes_within(kata: str, symbol: str) -> list[Entry]:
    """The mistakes of ``symbol`` first, then those of the parts it is built from in the same exercise.

    A GPT-2 exercise whose model is built of an ``MLP`` class gets the MLP's mistakes too. A part with an
    exercise of its own (the optimizer a training loop uses) is left out: its own checks name its mistakes.
    """
    exercise = next((e for e in _registry().exercises if e.kata == kata and symbol in e.symbols), None)
    parts = parts_of(kata, symbol) & set(exercise.symbols if exercise else ())
    return mistakes_for(kata, symbol) + [e for e in catalogue(kata) if e.kind == "mistake" and e.symbol in parts]


@functools.cache
def parts_of(kata: str, symbol: str) -> frozenset[str]:
    """The reference's top-level functions and classes that ``symbol`` uses, directly or through each other."""
    tree = ast.parse(_reference_source(kata))
    definitions = {
        node.name: node
        for node in tree.body
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
    }
    found: set[str] = set()
    pending = [symbol]
    while pending:
        node = definitions.get(pending.pop())
        if node is None:
            continue
        for name in _names_used(node) & definitions.keys():
            if name not in found and name != symbol:
                found.add(name)
                pending.append(name)
    return frozenset(found)


@functools.cache
def _registry():
    """The registry, read once: the catalogue looks katas and exercises up in it while a learner's check fails."""
    from .registry import load

    return load()


def _reference_module_name(kata: str) -> str:
    return f"reference.{_registry().kata(kata).module}"


def symbol_source_span(source: str, symbol: str) -> tuple[int, int]:
    """The character span of the top-level definition of ``symbol`` (decorators included) in ``source``."""
    tree = ast.parse(source)
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) and node.name == symbol:
            lines = source.splitlines(keepends=True)
            first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            start = sum(len(line) for line in lines[: first - 1])
            end = sum(len(line) for line in lines[: node.end_lineno])
            return start, end
    raise CatalogueError(f"the reference has no top-level function or class {symbol!r}")


def _names_used(node: ast.AST) -> set[str]:
    """The names ``node``'s code reads; type annotations are documentation, not use."""
    names: set[str] = set()
    pending = [node]
    while pending:
        current = pending.pop()
        if isinstance(current, ast.Name):
            names.add(current.id)
        for field_name, value in ast.iter_fields(current):
            if field_name in ("annotation", "returns"):
                continue
            children = value if isinstance(value, list) else [value]
            pending.extend(child for child in children if isinstance(child, ast.AST))
    return names


def mutant_problems(entry: Entry) -> list[str]:
    """Edits of a mutant entry that no longer apply to the reference (empty for other entries)."""
    if not entry.is_mutant:
        return []
    source = _reference_source(entry.kata)
    try:
        start, end = symbol_source_span(source, entry.symbol)
    except CatalogueError as err:
        return [f"mutant {entry.name}: {err}"]
    return [
        f"mutant {entry.name}: {old!r} no longer occurs in the reference's {entry.symbol}; update or remove the entry"
        for old, _ in entry.replace
        if old not in source[start:end]
    ]


def _reference_source(kata: str) -> str:
    module = importlib.import_module(_reference_module_name(kata))
    with open(module.__file__, encoding="utf-8") as f:
        return f.read()


@functools.cache
def mutated_reference(kata: str, symbol: str, replace: tuple[tuple[str, str], ...]) -> ModuleType:
    """A fresh reference module for ``kata`` whose source of ``symbol`` has the edits ``replace`` applied."""
    problems = mutant_problems(Entry("mistake", kata, symbol, "?", "?", None, replace))
    if problems:
        raise CatalogueError("; ".join(problems))
    original = importlib.import_module(_reference_module_name(kata))
    source = _reference_source(kata)
    start, end = symbol_source_span(source, symbol)
    segment = source[start:end]
    for old, new in replace:
        segment = segment.replace(old, new)
    name = f"{original.__name__}__mutant_{symbol}_{abs(hash(replace)):x}"
    spec = importlib.util.spec_from_loader(name, loader=None, origin=original.__file__)
    module = importlib.util.module_from_spec(spec)
    module.__file__ = original.__file__
    module.__package__ = original.__package__
    sys.modules[name] = module  # dataclasses and pickling look modules up by name
    mutated = source[:start] + segment + source[end:]
    # Tracebacks and inspect.getsource show the mutated lines; the name still lies in the reference's folder,
    # so verify counts an exception raised there as one raised by the code under test.
    filename = f"{original.__file__}<{name}>"
    linecache.cache[filename] = (len(mutated), None, mutated.splitlines(keepends=True), filename)
    # dont_inherit: the reference's own __future__ imports apply, not this file's (postponed annotations would
    # hide request models defined inside a function from FastAPI)
    exec(compile(mutated, filename, "exec", dont_inherit=True), module.__dict__)  # noqa: S102
    return module
