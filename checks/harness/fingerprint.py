"""Fingerprints of an exercise's checks, so that progress earned on older checks shows as stale.

A fingerprint hashes the source of the exercise's own check functions together with everything in the
check file that is not another exercise's check (imports, helpers, fixtures, strategies). It reads the
file with ``ast``, without importing it, so ``kata status`` stays fast.
"""

from __future__ import annotations

import ast
import hashlib
from functools import cache
from pathlib import Path


def _exercise_name(node: ast.stmt) -> str | None:
    """The name passed to ``@pytest.mark.exercise(...)`` on a function or class, if any."""
    for decorator in getattr(node, "decorator_list", []):
        if (
            isinstance(decorator, ast.Call)
            and isinstance(decorator.func, ast.Attribute)
            and decorator.func.attr == "exercise"
            and decorator.args
            and isinstance(decorator.args[0], ast.Constant)
        ):
            return str(decorator.args[0].value).rsplit(".", 1)[-1]
    return None


@cache
def _file_fingerprints(path: Path, mtime_ns: int) -> dict[str, str]:
    source = path.read_text(encoding="utf-8")
    lines = source.splitlines(keepends=True)
    shared: list[str] = []
    per_exercise: dict[str, list[str]] = {}
    for node in ast.parse(source).body:
        first = min([node.lineno, *(d.lineno for d in getattr(node, "decorator_list", []))])
        segment = "".join(lines[first - 1 : node.end_lineno])  # by line numbers: one pass over the file
        name = _exercise_name(node)
        (per_exercise.setdefault(name, []) if name else shared).append(segment)
    base = "\n".join(shared)
    return {
        name: hashlib.sha256((base + "\n\n" + "\n".join(parts)).encode()).hexdigest()[:16]
        for name, parts in per_exercise.items()
    }


def fingerprint(check_file: Path, exercise_name: str) -> str:
    """The fingerprint of one exercise's checks; empty when the file has none for it."""
    try:
        stat = check_file.stat()
    except FileNotFoundError:
        return ""
    return _file_fingerprints(check_file, stat.st_mtime_ns).get(exercise_name, "")
