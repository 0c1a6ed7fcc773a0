"""Stubs in their canonical form, the public API of a kata module, and restoring a stub.

A stub keeps its signature and docstring; its body is exactly::

    # TODO(w01_numpy.softmax): write your implementation here.
    raise NotImplementedError("w01_numpy.softmax is not implemented yet (try `kata hint w01_numpy.softmax`)")

The message names the stub itself, so a learner who calls it from elsewhere knows which one to write:
another function of the same exercise says ``w01_numpy.logsumexp is not implemented yet (part of
w01_numpy.log_softmax: try ...)``, and each method of a class exercise names ``Class.method``.

Because the form is fixed, ``kata reset`` can restore one exercise by rewriting only its bodies, and
``kata verify`` can prove that every stub is untouched and that stubs and reference expose the same API,
all with ``ast``.
"""

from __future__ import annotations

import ast
from pathlib import Path

from .outcomes import STUB_MESSAGE
from .registry import Exercise


def stub_body(exercise: Exercise, symbol: str | None = None, method: str | None = None) -> list[str]:
    """The lines (without indentation) of the stub body of ``symbol`` (default: the exercise's main one),
    or of its ``method`` when the symbol is a class."""
    symbol = symbol or exercise.name
    what = f"{exercise.kata}.{symbol}" + (f".{method}" if method else "")
    hint = f"try `kata hint {exercise.id}`"
    where = hint if symbol == exercise.name else f"part of {exercise.id}: {hint}"
    return [
        f"# TODO({exercise.id}): write your implementation here.",
        f'raise NotImplementedError("{what} {STUB_MESSAGE} ({where})")',
    ]


def _stub_of(exercise: Exercise, node: ast.stmt, func: ast.stmt) -> list[str]:
    return stub_body(exercise, node.name, None if func is node else func.name)


Function = ast.FunctionDef | ast.AsyncFunctionDef


def _signature(node: Function) -> str:
    returns = f" -> {ast.unparse(node.returns)}" if node.returns else ""
    decorators = "".join(f"@{ast.unparse(d)} " for d in node.decorator_list)
    return f"{decorators}def {node.name}({ast.unparse(node.args)}){returns}"


def public_api(source: str) -> dict[str, str]:
    """Public names of a module mapped to their signatures (classes: bases and each method)."""
    api: dict[str, str] = {}
    for node in ast.parse(source).body:
        if isinstance(node, Function) and not node.name.startswith("_"):
            api[node.name] = _signature(node)
        elif isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
            api[node.name] = f"class {node.name}({', '.join(ast.unparse(b) for b in node.bases)})"
            for item in node.body:
                if isinstance(item, Function) and (not item.name.startswith("_") or item.name.endswith("__")):
                    api[f"{node.name}.{item.name}"] = _signature(item)
    return api


def api_differences(stub_source: str, reference_source: str) -> list[str]:
    stub, ref = public_api(stub_source), public_api(reference_source)
    problems = [f"{name} is in the reference but not in the stubs" for name in ref.keys() - stub.keys()]
    problems += [f"{name} is in the stubs but not in the reference" for name in stub.keys() - ref.keys()]
    problems += [
        f"{name} differs: stub `{stub[name]}` vs reference `{ref[name]}`"
        for name in sorted(stub.keys() & ref.keys())
        if stub[name] != ref[name]
    ]
    return sorted(problems)


def _find(tree: ast.Module, symbol: str) -> ast.stmt | None:
    return next(
        (n for n in tree.body if isinstance(n, Function | ast.ClassDef) and n.name == symbol),
        None,
    )


def _functions(node: ast.stmt) -> list[Function]:
    """The function itself, or every method of a class."""
    if isinstance(node, ast.ClassDef):
        return [n for n in node.body if isinstance(n, Function)]
    return [node]


def _body_start(func: Function) -> int:
    """Index of the first statement after the docstring."""
    body = func.body
    has_doc = body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant)
    return 1 if has_doc and isinstance(body[0].value.value, str) else 0


def _body_lines(source_lines: list[str], func: Function) -> tuple[int, int]:
    """0-based line range [start, end) of the body after the docstring, comments included."""
    start_index = _body_start(func)
    if start_index == 0:
        start = func.body[0].lineno - 1
        # comments between the signature and the first statement belong to the body
        while start - 1 > func.lineno - 1 and source_lines[start - 1].strip().startswith("#"):
            start -= 1
    else:
        start = func.body[0].end_lineno
    return start, func.end_lineno


def stub_problems(source: str, exercise: Exercise) -> list[str]:
    """How the stubs of ``exercise`` in ``source`` differ from the canonical stub form."""
    tree = ast.parse(source)
    lines = source.splitlines()
    problems = []
    for symbol in exercise.symbols:
        node = _find(tree, symbol)
        if node is None:
            problems.append(f"{exercise.id}: the stub module has no {symbol}")
            continue
        functions = _functions(node)
        if not functions:
            problems.append(f"{exercise.id}: class {symbol} has no methods to implement")
        for func in functions:
            start, end = _body_lines(lines, func)
            body = [line.strip() for line in lines[start:end] if line.strip()]
            if body != _stub_of(exercise, node, func):
                problems.append(f"{exercise.id}: {symbol}.{func.name} is not a canonical stub (line {func.lineno})")
    return problems


def reset_source(source: str, exercise: Exercise) -> str:
    """``source`` with every body of ``exercise``'s symbols replaced by the canonical stub body."""
    tree = ast.parse(source)
    lines = source.splitlines(keepends=True)
    spans = []
    for symbol in exercise.symbols:
        node = _find(tree, symbol)
        if node is None:
            raise ValueError(f"{symbol} is not defined in the kata file; restore it by hand or from git")
        for func in _functions(node):
            start, end = _body_lines([line.rstrip("\n") for line in lines], func)
            indent = " " * (func.col_offset + 4)
            spans.append((start, end, [f"{indent}{line}\n" for line in _stub_of(exercise, node, func)]))
    for start, end, replacement in sorted(spans, reverse=True):
        lines[start:end] = replacement
    return "".join(lines)


def reset_file(path: Path, exercise: Exercise) -> bool:
    """Restore the stubs of ``exercise`` in ``path``; returns False when they were already stubs."""
    source = path.read_text(encoding="utf-8")
    updated = reset_source(source, exercise)
    if updated == source:
        return False
    path.write_text(updated, encoding="utf-8")
    return True
