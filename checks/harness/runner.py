"""Running checks in this process: the arguments ``kata check``, ``next`` and ``watch`` give pytest.

A learner re-runs checks dozens of times, so the CLI loads only the pytest plugins the checks use
(instead of every plugin installed in the environment) and nothing else.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable, Sequence

from . import paths
from .registry import Exercise, Registry

# pytest plugins the checks rely on: (the name pytest registers it under, its module)
PLUGINS = (
    ("timeout", "pytest_timeout"),
    ("hypothesispytest", "_hypothesis_pytestplugin"),
    ("benchmark", "pytest_benchmark.plugin"),
)


def plugin_args() -> list[str]:
    """``-p`` options that load exactly the plugins the checks need (those that are installed)."""
    return [arg for _, module in PLUGINS if importlib.util.find_spec(module.split(".")[0]) for arg in ("-p", module)]


def _verbose(extra: Sequence[str]) -> bool:
    return any(a == "--verbose" or (a.startswith("-v") and set(a[1:]) == {"v"}) for a in extra)


def pytest_args(registry: Registry, exercises: Sequence[Exercise], extra: Sequence[str] = ()) -> list[str]:
    """Check files of the katas involved, filtered to exactly these exercises.

    Unless ``extra`` asks for ``-v``, pytest's own report is switched off (``-qq --no-summary``) and the
    plugin prints the short one; plain assertions keep a check's message free of pytest's introspection.
    """
    files = list(dict.fromkeys(str(registry.kata_of(e).check_file) for e in exercises))
    selection = [arg for e in exercises for arg in ("--exercise", e.id)]
    report = ["-q"] if _verbose(extra) else ["-qq", "--no-summary", "--assert=plain"]
    return [
        *files,
        *selection,
        "--kata-learner",
        *report,
        "--no-header",
        "-p",
        "no:cacheprovider",
        f"--rootdir={paths.ROOT}",
        *plugin_args(),
        *extra,
    ]


def run_pytest(args: Sequence[str]) -> int:
    os.environ["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"  # plugin_args() names the ones we need
    import pytest

    return int(pytest.main(list(args)))


def run_checks(args: Sequence[str], cancel: Callable[[], bool] | None = None) -> int:
    """``run_pytest`` in a supervised child process: a run that ends early is reported, never silent."""
    from .supervise import run

    return run(args, run_pytest, cancel)
