"""Loading the implementation under test.

``--impl NAME`` names any importable package that mirrors the layout (``NAME.phase1.w01_numpy`` ...):
``katas`` (the learner's stubs), ``reference``, or a package of one's own. ``kata verify`` also builds
*patched* copies of the reference in which one symbol is swapped for a catalogued mistake or variant.

Every choice has a spelling as a string (``katas``, ``reference``,
``reference+mistake:w21_alignment:ddp_sums_gradients``), so that a process a check starts (a
distributed worker, a server) loads the very code under test: the checks pass it on in the ``KATA_IMPL``
environment variable, and ``load_spec`` turns it back into the module.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from .registry import Kata

REFERENCE = "reference"
STUBS = "katas"


class ImplError(Exception):
    """The implementation package or one of its kata modules cannot be imported."""


@dataclass(frozen=True)
class ImplChoice:
    """What the ``impl`` fixture provides: a package, or the reference with one entry swapped in."""

    package: str
    role: str = "impl"  # "impl", "reference", "stub", "mistake" or "variant"
    entry: str | None = None  # catalogue entry name for "mistake" and "variant"

    @property
    def label(self) -> str:
        return f"{self.role}={self.entry}" if self.entry else self.role

    def spec(self, kata: str) -> str:
        """This choice for ``kata`` as a string any process can load with ``load_spec``."""
        return f"{self.package}+{self.role}:{kata}:{self.entry}" if self.entry else self.package


IMPL_ENV = "KATA_IMPL"  # how a check hands the code under test to the processes it starts


def load_choice(choice: ImplChoice, kata: Kata) -> ModuleType:
    """The module ``choice`` stands for: a package's kata module, or the reference with an entry swapped in."""
    if choice.role in ("mistake", "variant"):
        from .catalogue import CatalogueError, catalogue, mutated_reference

        entry = next((e for e in catalogue(kata.id) if e.name == choice.entry and e.kind == choice.role), None)
        if entry is None:
            raise ImplError(f"{kata.id} has no catalogued {choice.role} named {choice.entry!r}")
        try:
            if entry.is_mutant:
                return mutated_reference(kata.id, entry.symbol, entry.replace)
            return patched_reference(kata, {entry.symbol: entry.obj}, f"{choice.role}_{entry.name}")
        except CatalogueError as err:
            raise ImplError(str(err)) from None
    return load_kata_module(choice.package, kata)


def load_spec(spec: str, kata: Kata) -> ModuleType:
    """The module a ``ImplChoice.spec`` string names, for ``kata``: ``katas``, ``reference``,
    ``reference+mistake:KATA:NAME`` or ``reference+variant:KATA:NAME``."""
    package, _, entry = spec.partition("+")
    if not entry:
        return load_choice(ImplChoice(package), kata)
    role, _, rest = entry.partition(":")
    entry_kata, _, name = rest.partition(":")
    if role not in ("mistake", "variant") or not name:
        raise ImplError(f"{IMPL_ENV}={spec!r} is not PACKAGE or PACKAGE+mistake:KATA:NAME or PACKAGE+variant:KATA:NAME")
    if entry_kata != kata.id:
        raise ImplError(f"{IMPL_ENV}={spec!r} names an entry of {entry_kata}, not of {kata.id}")
    return load_choice(ImplChoice(package, role, name), kata)


def load_kata_module(package: str, kata: Kata) -> ModuleType:
    """Import ``package.<phase>.<kata>``, turning any failure into an ``ImplError`` a learner can act on."""
    name = f"{package}.{kata.module}"
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as err:
        if err.name and name.startswith(err.name):
            raise ImplError(
                f"--impl {package}: cannot import {name} ({err}). The package must mirror the layout "
                f"`{package}/{kata.phase}/{kata.id}.py` and be importable from the current directory."
            ) from None
        raise ImplError(f"{name} failed to import: {err}") from None
    except SyntaxError as err:
        raise ImplError(f"{err.filename}, line {err.lineno}: {err.msg} - fix the syntax and check again") from None
    except Exception as err:  # noqa: BLE001 - any learner error at import time is reported, never raised deep
        where = traceback.extract_tb(err.__traceback__)[-1]
        raise ImplError(
            f"{name} raised {type(err).__name__} while being imported ({where.filename}, line {where.lineno}): {err}"
        ) from None


HIDDEN_PACKAGES = ("reference", "checks")  # what a learner's own work may not use


def _hidden(name: str) -> bool:
    return name.split(".")[0] in HIDDEN_PACKAGES


def borrowed(module: ModuleType) -> list[str]:
    """Where a learner's module uses the hidden reference or the checks, e.g. ``line 3: import reference...``.

    Both an import anywhere in the file (``import``, ``from ... import``, ``importlib.import_module`` or
    ``__import__`` with a literal name) and a public name whose object was defined there count.
    """
    found: list[str] = []
    try:
        tree = ast.parse(Path(module.__file__).read_text(encoding="utf-8"))
    except (OSError, SyntaxError, TypeError):
        tree = ast.Module(body=[], type_ignores=[])
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names = [node.module]
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = ast.unparse(node.func)
            if func.endswith(("import_module", "__import__")) and isinstance(node.args[0].value, str):
                names = [node.args[0].value]
        if any(_hidden(n) for n in names):
            found.append(f"line {node.lineno}: {ast.unparse(node)}")
    for name, obj in vars(module).items():
        origin = getattr(obj, "__module__", None)
        if not name.startswith("_") and isinstance(origin, str) and _hidden(origin):
            found.append(f"{name} comes from {origin}")
    return found


def patched_reference(kata: Kata, replacements: dict[str, object], tag: str) -> ModuleType:
    """A fresh copy of the reference module for ``kata`` with ``replacements`` swapped in.

    The copy is executed anew (not a shallow copy) so that reference code calling a replaced symbol
    calls the replacement, just as a learner's module would call its own version.
    """
    original = importlib.import_module(f"{REFERENCE}.{kata.module}")
    name = f"{original.__name__}__{tag}"
    spec = importlib.util.spec_from_file_location(name, original.__file__)
    module = importlib.util.module_from_spec(spec)
    module.__package__ = original.__package__
    sys.modules[name] = module  # dataclasses and pickling look modules up by name
    spec.loader.exec_module(module)
    for symbol, obj in replacements.items():
        if not hasattr(module, symbol):
            raise ImplError(f"{tag}: the reference {original.__name__} has no symbol {symbol!r} to replace")
        setattr(module, symbol, obj)
    return module
