"""``kata watch``: re-run the current exercise's checks every time a file is saved.

The watching process imports pytest, hypothesis, numpy, torch and whatever else the files of the
current phase's katas import, once. Each re-check then runs in a forked child of that warm process: the
child imports the learner's freshly saved module and exits, so nothing stale survives between runs and
nothing heavy is imported twice. Where ``fork`` does not exist, each re-check is a fresh
``python -m pytest``. Saving again while a check still runs (a loop that never ends, say) stops that run
and starts over; the screen is cleared before each run unless ``--no-clear`` is given.

File events come from ``watchfiles``. Where they do not arrive (some network drives, containers and
WSL setups), ``--poll`` polls instead, and pressing Enter always re-runs by hand.
"""

from __future__ import annotations

import ast
import contextlib
import importlib
import io
import queue
import sys
import threading
import time

from . import paths, progress
from .registry import Exercise, Registry
from .runner import pytest_args, run_checks, run_pytest
from .supervise import CANCELLED

# Re-checks skip pytest's end-of-session garbage collection hunt for unraisable exceptions (~40 ms).
FAST_ARGS = ("-p", "no:unraisableexception", "-p", "no:threadexception")

SKIP_PREFIXES = ("katas", "reference", "checks.phase")


def _imports_of(path) -> set[tuple[str, str | None]]:
    """``(module, name)`` for every absolute import anywhere in a file (``name`` for ``from module import name``).

    Inside functions too: checks and solutions import heavy libraries (``transformers``, ``peft``) only where
    they need them, so that a cold ``kata check`` of one exercise stays fast; a watching process pays once.
    The name matters for packages that load lazily: ``import transformers`` does not import its ``Trainer``.
    """
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (OSError, SyntaxError):
        return set()
    found: set[tuple[str, str | None]] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update((alias.name, None) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.update((node.module, alias.name) for alias in node.names)
    return found


def warm_up(reg: Registry, exercises: tuple[Exercise, ...]) -> None:
    """Import, in this process, everything the checks of ``exercises`` will need except learner code.

    That is whatever the kata's check file, stub and reference import (the reference's imports say what a
    finished solution will need; nothing of the reference itself is loaded). One collect-only pytest run
    then loads pytest's own modules and plugins; the check modules it imported are forgotten again, so that
    every child imports the current version of the checks and of the learner's code.
    """
    harness = ("pytest", "hypothesis", "checks.harness.plugin", "checks.numerics", "checks.strategies")
    wanted: set[tuple[str, str | None]] = {(name, None) for name in (*harness, "checks.harness.catalogue")}
    for kata in {reg.kata_of(e) for e in exercises}:
        for folder in (paths.KATAS_DIR, paths.REFERENCE_DIR):
            wanted |= _imports_of(paths.module_file(folder, kata.phase, kata.id))
        wanted |= _imports_of(kata.check_file)
    for module, name in sorted(wanted, key=lambda pair: (pair[0], pair[1] or "")):
        if module.startswith(SKIP_PREFIXES):
            continue
        try:
            loaded = importlib.import_module(module)
            if name is not None:
                getattr(loaded, name, None)  # a lazily loaded attribute (transformers.Trainer) loads here
        except Exception:  # noqa: BLE001 - a missing optional package shows up in the checks themselves
            pass
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        run_pytest([*pytest_args(reg, exercises), "--collect-only"])
        for module in [m for name, m in sys.modules.items() if name.startswith("checks.phase")]:
            _call_warm_up(module)
    _forget_kata_modules()


def _call_warm_up(check_module) -> None:
    """Run a check file's ``warm_up()``, if it has one: one-time library costs that every re-check would pay.

    Loading saved Hugging Face models, for instance, first compiles about a thousand weight-name patterns
    (0.15 s); paid here once, no re-check pays it again.
    """
    warm = getattr(check_module, "warm_up", None)
    if callable(warm):
        try:
            warm()
        except Exception:  # noqa: BLE001 - a warm-up is an optimisation; the checks report real problems
            pass


def _forget_kata_modules() -> None:
    for name in [n for n in sys.modules if n.startswith(SKIP_PREFIXES)]:
        del sys.modules[name]


def run_once(args: list[str], cancel=None) -> int:
    """Run pytest on ``args`` in a supervised child of this warm process; ``CANCELLED`` if ``cancel()`` stopped it."""
    return run_checks([*args, *FAST_ARGS], cancel)


def _watch_files(events: queue.Queue, stop: threading.Event, poll: bool) -> None:
    import watchfiles

    # step: how long a burst of saves may pause before it counts as one change (editors write in bursts)
    watcher = watchfiles.watch(paths.KATAS_DIR, paths.CHECKS_DIR, stop_event=stop, force_polling=poll or None, step=30)
    for changes in watcher:
        if any(path.endswith(".py") for _, path in changes):
            events.put("change")


def _read_keys(events: queue.Queue) -> None:
    for line in sys.stdin:
        events.put("quit" if line.strip().lower() in ("q", "quit", "exit") else "enter")
    events.put("quit")


def _current(reg: Registry, target: str | None) -> tuple[Exercise, ...]:
    if target:
        return reg.resolve(target)
    prog = progress.load(paths.progress_file())
    upcoming = next((e for e in reg.exercises if progress.effective_status(reg, prog, e) != "passed"), None)
    return (upcoming,) if upcoming else ()


CLEAR_SCREEN = "\033[2J\033[3J\033[H"  # erase the screen and its scrollback, cursor to the top


def watch(reg: Registry, target: str | None, poll: bool = False, clear: bool = True) -> int:
    try:
        exercises = _current(reg, target)
    except KeyError as err:
        print(f"kata watch: {err.args[0]}")
        return 2
    if not exercises:
        print("Every exercise passes; nothing to watch.")
        return 0
    started = time.perf_counter()
    phases = {reg.kata_of(e).phase for e in exercises}
    warm_up(reg, tuple(e for e in reg.exercises if reg.kata_of(e).phase in phases))
    print(f"Warmed up in {time.perf_counter() - started:.1f} s.")

    events: queue.Queue[str] = queue.Queue()
    stop = threading.Event()
    threading.Thread(target=_watch_files, args=(events, stop, poll), daemon=True).start()
    if sys.stdin.isatty():
        threading.Thread(target=_read_keys, args=(events,), daemon=True).start()
    clear = clear and sys.stdout.isatty()
    try:
        while exercises:
            if clear:
                print(CLEAR_SCREEN, end="")
            names = ", ".join(e.id for e in exercises)
            print(f"── checking {names} ──")
            started = time.perf_counter()
            if run_once(pytest_args(reg, exercises), cancel=lambda: not events.empty()) == CANCELLED:
                print("\n(stopped: a file changed, so the run starts over)")
            else:
                elapsed = time.perf_counter() - started
                print(f"checked in {elapsed:.2f} s. Save a file to re-check; Enter re-runs, q quits.")
                if target is None:
                    following = _current(reg, None)
                    if following != exercises:
                        exercises = following
                        continue
            if events.get() == "quit":
                break
            while not events.empty():
                if events.get_nowait() == "quit":
                    return 0
    except KeyboardInterrupt:
        pass
    finally:
        stop.set()
    return 0
