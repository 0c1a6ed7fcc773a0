"""The catalogue of known-wrong implementations (mistakes) and unusual-but-correct ones (variants).

One module per kata, named like the kata (``checks/mistakes/w01_numpy.py``). Each entry is a function
or class that replaces one public symbol of the reference::

    @mistake("softmax", "exponentiates without subtracting the max, so large inputs overflow to nan")
    def softmax_without_max(x, axis=-1):
        e = np.exp(x)
        return e / e.sum(axis=axis, keepdims=True)

    @variant("softmax", "exponentiates x - logsumexp(x) instead of dividing by the sum")
    def softmax_via_logsumexp(x, axis=-1): ...

``kata verify`` proves that at least one check of the symbol's exercise rejects every mistake and that
every check accepts every variant. When a learner's answer fails a comparison, the checks also run the
catalogued mistakes on the same input; one that reproduces the learner's output is named as the likely
cause (see ``checks.numerics``).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Literal

Kind = Literal["mistake", "variant"]


@dataclass(frozen=True)
class Entry:
    kind: Kind
    kata: str  # kata id, taken from the catalogue module's name
    symbol: str  # the public name it replaces
    name: str  # the entry's own name (the function or class name), unique within its kata
    because: str  # what is wrong (mistakes) or what is unusual about it (variants)
    obj: Any  # the replacement function or class

    @property
    def id(self) -> str:
        return f"{self.kata}:{self.name}"


_ENTRIES: dict[str, list[Entry]] = {}


def _register(kind: Kind, symbol: str, because: str):
    if not because:
        raise ValueError(f"a {kind} for {symbol!r} needs a `because` that explains it")

    def decorate(obj):
        kata = obj.__module__.rsplit(".", 1)[-1]
        entries = _ENTRIES.setdefault(kata, [])
        if any(e.name == obj.__name__ for e in entries):
            raise ValueError(f"{kata}: two catalogue entries are named {obj.__name__!r}")
        entries.append(Entry(kind, kata, symbol, obj.__name__, because, obj))
        return obj

    return decorate


def mistake(symbol: str, because: str):
    """Register a wrong implementation of ``symbol``; ``because`` says what is wrong, for the learner."""
    return _register("mistake", symbol, because)


def variant(symbol: str, because: str):
    """Register an unusual but correct implementation of ``symbol`` that every check must accept."""
    return _register("variant", symbol, because)


def catalogue(kata: str) -> list[Entry]:
    """Every entry catalogued for ``kata`` (empty when the kata has no catalogue module)."""
    if kata not in _ENTRIES:
        try:
            importlib.import_module(f"{__name__}.{kata}")
        except ModuleNotFoundError as err:
            if err.name != f"{__name__}.{kata}":
                raise
        _ENTRIES.setdefault(kata, [])
    return list(_ENTRIES[kata])


def mistakes_for(kata: str, symbol: str) -> list[Entry]:
    return [e for e in catalogue(kata) if e.kind == "mistake" and e.symbol == symbol]
