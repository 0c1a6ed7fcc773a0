"""Running checks in this process: the arguments ``kata check``, ``next`` and ``watch`` give pytest."""

from __future__ import annotations

from collections.abc import Sequence

from . import paths
from .registry import Exercise, Registry


def pytest_args(registry: Registry, exercises: Sequence[Exercise], extra: Sequence[str] = ()) -> list[str]:
    """Check files of the katas involved, filtered to exactly these exercises."""
    files = list(dict.fromkeys(str(registry.kata_of(e).check_file) for e in exercises))
    selection = [arg for e in exercises for arg in ("--exercise", e.id)]
    return [*files, *selection, "-q", "--no-header", "-p", "no:cacheprovider", f"--rootdir={paths.ROOT}", *extra]


def run_pytest(args: Sequence[str]) -> int:
    import pytest

    return int(pytest.main(list(args)))
