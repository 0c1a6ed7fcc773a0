"""The pytest plugin behind every check run (loaded by ``checks/conftest.py``).

It gives checks their ``impl`` and ``reference`` fixtures, validates that every check names a kata and
an exercise of the registry, classifies outcomes per exercise (todo / failing / passed), writes the
learner's progress, prints a per-exercise summary with the next step and, under ``--kata-verify``,
runs the maintainer's proof in the same session (see ``checks.harness.verify``).

PYTEST_DONT_REWRITE: nothing here relies on assertion rewriting, and ``kata watch`` imports this module
before pytest starts, which would otherwise make pytest warn on every re-check.
"""

from __future__ import annotations

import gc
import importlib.util
import os
import signal
import sys
import threading
import time
from functools import cached_property
from pathlib import Path

import pytest

from . import paths, progress, registry
from .brief import Brief, cap_output, describe, printed_tail, relative, within
from .impl import REFERENCE, STUBS, ImplChoice, ImplError, borrowed, load_choice, load_kata_module
from .outcomes import CRASHED, FAILED, PASSED, SKIPPED, TODO, CheckResult, is_not_implemented, tally
from .supervise import RunLog

# In a learner's run, a check that is not marked slow gets this many seconds (the slowest takes under one
# here), so that code that hangs is reported within seconds; plain pytest keeps the configured timeout.
LEARNER_TIMEOUT = 10.0
# The limit counts the code under test: while only the check's own code runs (a first import of transformers
# on a busy machine, say), the limit is extended, up to this many seconds in all.
SETUP_GRACE = 60.0

EXERCISE = pytest.StashKey[registry.Exercise]()
RESULT = pytest.StashKey[dict]()
STATE = pytest.StashKey["RunState"]()
BENCH_LINES = pytest.StashKey[list[str]]()

MARKERS = {
    "kata(id)": "the kata a check file belongs to (set once per file with pytestmark)",
    "exercise(name)": "the exercise of the kata that a check checks",
    "gpu": "needs CUDA; skipped with a reason otherwise",
    "perf": "pytest-benchmark performance check; runs only when selected with -m perf",
    "slow": "training loops and challenges; still part of kata verify",
    "mutation": "a slow check that mutation testing runs too: the only check that sees part of the reference "
    "(a training recipe is judged by the loss it reaches)",
    "hub": "needs a real pre-trained model from the Hugging Face cache (or KATA_ALLOW_DOWNLOAD=1); skipped otherwise",
    "harness": "a test of the harness itself, not of a kata",
}


class CheckTimedOut(BaseException):
    """Raised inside a check that ran past its time limit.

    A ``BaseException``, so that hypothesis does not take it for a failing example and run the endless
    code again while shrinking, and so that learner code catching ``Exception`` cannot swallow it.
    """


class RunState:
    """What this session learned about the run: the choices, the collected checks and their results."""

    def __init__(self, config: pytest.Config):
        self.config = config
        self.registry = registry.load()
        self.impl = config.getoption("kata_impl")
        self.verify = config.getoption("kata_verify")
        # Under verify, a mistake's remaining checks are skipped once one rejected it (unless --kata-verify-full).
        self.skip_rejected = self.verify and not config.getoption("kata_verify_full")
        self.rejected: dict[tuple[str, str], str] = {}  # (kata, mistake) -> the check that rejected it
        self.targets = config.getoption("kata_exercise") or []
        self.collected: dict[str, list[str]] = {}  # exercise id -> node ids
        self.incomplete: set[str] = set()  # exercises some of whose checks were deselected by others
        self.own_deselection = False
        self.results: dict[str, CheckResult] = {}  # node id -> result, as reported (also by xdist workers)
        self.progress_update: progress.RunUpdate | None = None  # what this run wrote to progress.toml
        self.verify_report = None  # the verify.VerifyReport, under --kata-verify
        self.learner = config.getoption("kata_learner") and not self.verify
        self.brief = self.learner and config.get_verbosity() < 0  # the runner passes -qq unless -v was given
        self.briefs: list[Brief] = []  # failing checks, for the short report
        self.collect_errors: list[str] = []
        self.learner_warnings: dict[str, int] = {}  # "file:line: Warning: message" -> times
        self.timed_out: dict[str, str] = {}  # exercise id -> the check that ran out of time
        self.skip_reasons: dict[str, int] = {}  # why checks were skipped -> how many
        self.run_log = RunLog.from_env()

    @cached_property
    def learner_roots(self) -> tuple[Path, ...]:
        """Where the code under test lives (``katas/``, or the ``--impl`` package's folders)."""
        try:
            spec = importlib.util.find_spec(self.impl)
        except (ImportError, ValueError):
            spec = None
        locations = list(spec.submodule_search_locations or ()) if spec else []
        return tuple(Path(p).resolve() for p in locations) or (paths.KATAS_DIR.resolve(),)

    @property
    def writes_progress(self) -> bool:
        config = self.config
        return (
            self.impl == STUBS
            and not self.verify
            and not config.getoption("kata_no_progress")
            and not hasattr(config, "workerinput")  # xdist workers report to the controller, which writes
            and not any("::" in str(arg) for arg in config.args)  # a single test is not a whole exercise
            and not config.getoption("keyword")  # nor is a -k or -m selection
            and not config.getoption("markexpr")
        )

    def complete_exercises(self) -> dict[str, list[CheckResult]]:
        """Results of the exercises all of whose collected checks reported in this session."""
        collected = self.collected
        if not collected:  # an xdist controller collects nothing itself: go by what the workers reported
            collected = {}
            for result in self.results.values():
                collected.setdefault(result.exercise, []).append(result.nodeid)
        return {
            exercise: [self.results[n] for n in nodeids]
            for exercise, nodeids in collected.items()
            if exercise not in self.incomplete and all(n in self.results for n in nodeids)
        }

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        """Collect results here, on the controller, so xdist runs are summed up too."""
        for key, value in report.user_properties:
            if key == "kata_result":
                exercise, outcome, role, entry, duration = value
                self.results[report.nodeid] = CheckResult(report.nodeid, exercise, outcome, role, entry, duration)
            elif key == "kata_brief":
                self.briefs.append(Brief.from_data(value))
        if report.skipped and isinstance(report.longrepr, tuple):
            reason = str(report.longrepr[2]).removeprefix("Skipped: ")
            self.skip_reasons[reason] = self.skip_reasons.get(reason, 0) + 1

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if report.failed:
            self.collect_errors.append(f"{report.nodeid or 'collection'}: {report.longreprtext.strip()}")

    def pytest_warning_recorded(self, warning_message, when: str, nodeid: str, location) -> None:
        """Warnings raised in the learner's own code, counted for the short report (the rest is noise)."""
        if self.brief and within(warning_message.filename, self.learner_roots):
            where = f"{relative(warning_message.filename)}:{warning_message.lineno}"
            text = f"{where}: {warning_message.category.__name__}: {warning_message.message}"
            self.learner_warnings[text] = self.learner_warnings.get(text, 0) + 1


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("kata", "LLM katas")
    group.addoption(
        "--impl",
        dest="kata_impl",
        default=STUBS,
        metavar="PACKAGE",
        help="importable package that mirrors the layout to check: katas (default), reference, or your own",
    )
    group.addoption(
        "--exercise",
        dest="kata_exercise",
        action="append",
        metavar="TARGET",
        help="run only the checks of this phase, kata or exercise (repeatable)",
    )
    group.addoption(
        "--kata-verify",
        dest="kata_verify",
        action="store_true",
        help="maintainers: check the reference, the stubs, every catalogued mistake and variant in one session",
    )
    group.addoption(
        "--kata-verify-full",
        dest="kata_verify_full",
        action="store_true",
        help="with --kata-verify: run every check on every mistake, even after one check rejected it",
    )
    group.addoption("--no-progress", dest="kata_no_progress", action="store_true", help="do not write progress.toml")
    group.addoption(
        "--kata-learner",
        dest="kata_learner",
        action="store_true",
        help="a learner's run (kata check): short reports unless -v, and a hang ends within seconds",
    )


def pytest_configure(config: pytest.Config) -> None:
    for marker, description in MARKERS.items():
        config.addinivalue_line("markers", f"{marker}: {description}")
    try:
        state = RunState(config)
    except registry.RegistryError as err:
        raise pytest.UsageError(str(err)) from None
    problems = state.registry.problems()
    if problems:
        raise pytest.UsageError(
            "the registry katas/curriculum.toml disagrees with the files:\n  " + "\n  ".join(problems)
        )
    config.stash[STATE] = state
    if state.verify and not os.environ.get("KATA_PROFILE"):
        from hypothesis import settings

        settings.load_profile("verify")
    config.pluginmanager.register(state, "kata-run-state")


def _state(config: pytest.Config) -> RunState:
    return config.stash[STATE]


def _is_harness_path(path: Path) -> bool:
    return paths.HARNESS_DIR in path.parents or path == paths.HARNESS_DIR


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """The harness's own tests run under ``kata verify`` or when named explicitly, never in a learner run."""
    if not _is_harness_path(collection_path) or _state(config).verify:
        return None
    named = [Path(str(a).split("::")[0]).resolve() for a in config.args]
    if any(
        collection_path == a or collection_path in a.parents or a in collection_path.parents
        for a in named
        if _is_harness_path(a)
    ):
        return None
    return True


def _exercise_of(node, reg: registry.Registry) -> registry.Exercise:
    """The registry exercise a check names through its ``kata`` and ``exercise`` markers."""
    kata_marker = node.get_closest_marker("kata")
    exercise_marker = node.get_closest_marker("exercise")
    if kata_marker is None or exercise_marker is None:
        raise LookupError("needs `pytestmark = pytest.mark.kata(...)` and `@pytest.mark.exercise(...)`")
    kata_id, name = kata_marker.args[0], exercise_marker.args[0]
    try:
        kata = reg.kata(kata_id)
        return reg.exercise(name if "." in name else f"{kata.id}.{name}")
    except KeyError as err:
        raise LookupError(err.args[0]) from None


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Under ``--kata-verify`` every check runs against the reference, the stubs and the catalogue."""
    state = _state(metafunc.config)
    if not state.verify or "impl" not in metafunc.fixturenames:
        return
    try:
        exercise = _exercise_of(metafunc.definition, state.registry)
    except LookupError:
        return  # reported as a collection error in pytest_collection_modifyitems
    from .catalogue import catalogue

    choices = [ImplChoice(REFERENCE, "reference"), ImplChoice(STUBS, "stub")]
    for entry in catalogue(exercise.kata):
        if entry.symbol in exercise.symbols:
            choices.append(ImplChoice(REFERENCE, entry.kind, entry.name))
    metafunc.parametrize("impl", choices, indirect=True, ids=[c.label for c in choices], scope="module")


@pytest.fixture(scope="module")
def impl(request: pytest.FixtureRequest):
    """The kata module under test: from ``--impl`` (default ``katas``), or a verify choice."""
    state = _state(request.config)
    kata = state.registry.kata(request.node.get_closest_marker("kata").args[0])
    choice = getattr(request, "param", None) or ImplChoice(state.impl)
    try:
        module = load_choice(choice, kata)
    except ImplError as err:
        pytest.fail(str(err), pytrace=False)
    if choice.role not in ("mistake", "variant") and choice.package != REFERENCE:
        uses = borrowed(module)
        if uses:
            pytest.fail(
                f"{relative(module.__file__)} uses the hidden reference or the checks ({'; '.join(uses[:3])}). "
                "Its checks only count for your own code: remove that and write it yourself.",
                pytrace=False,
            )
    module.__kata_impl__ = choice.spec(kata.id)  # what the processes a check starts load (checks.processes)
    return module


@pytest.fixture(scope="module")
def reference(request: pytest.FixtureRequest):
    """The hidden reference module of the kata, for comparisons. Never the code under test."""
    state = _state(request.config)
    kata = state.registry.kata(request.node.get_closest_marker("kata").args[0])
    return load_kata_module(REFERENCE, kata)


@pytest.fixture
def bench_report(request: pytest.FixtureRequest):
    """``bench_report(line)`` adds a benchmark's result (what it compared, the ratio) to the summary at the end of
    the run, and to ``.kata/bench/summary.txt``: ``nox -s bench`` ends with every ratio in one place."""
    lines = request.config.stash.setdefault(BENCH_LINES, [])
    exercise = request.node.stash.get(EXERCISE, None)
    label = exercise.id if exercise is not None else request.node.name
    return lambda line: lines.append(f"{label}: {line}")


def _print_bench_lines(terminalreporter, config: pytest.Config) -> None:
    lines = config.stash.get(BENCH_LINES, [])
    if not lines:
        return
    terminalreporter.section("benchmark results")
    for line in lines:
        terminalreporter.write_line(line)
    folder = paths.STATE_DIR / "bench"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "summary.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    state = _state(config)
    wanted = {e.id for t in state.targets for e in _resolve(state.registry, t)} if state.targets else None
    orphans, keep, dropped = [], [], []
    for item in items:
        if _is_harness_path(Path(item.path)):
            item.add_marker(pytest.mark.harness)
            keep.append(item)
            continue
        try:
            exercise = _exercise_of(item, state.registry)
        except LookupError as err:
            orphans.append(f"{item.nodeid}: {err}")
            continue
        item.stash[EXERCISE] = exercise
        _short_reports(item, exercise, state.brief)
        choice = _choice(item)
        if choice.role == "mistake":
            item.add_marker(pytest.mark.filterwarnings("ignore"))  # wrong code warns (overflow, ...) by design
            if state.skip_rejected:  # with xdist's --dist loadgroup, a mistake's checks share one worker
                item.add_marker(pytest.mark.xdist_group(f"{exercise.kata}:{choice.entry}"))
        for marker in exercise.markers:
            item.add_marker(marker)
        if wanted is not None and exercise.id not in wanted:
            dropped.append(item)
            continue
        if state.learner and not item.get_closest_marker("slow") and not item.get_closest_marker("timeout"):
            item.add_marker(pytest.mark.timeout(LEARNER_TIMEOUT))
        keep.append(item)
    if not state.verify:  # quick checks first: a wrong answer or a hang shows before any training run starts
        keep.sort(key=lambda item: bool(item.get_closest_marker("slow")))
    if orphans:
        raise pytest.UsageError("every check must map to an exercise of the registry:\n  " + "\n  ".join(orphans))
    if dropped:
        state.own_deselection = True
        config.hook.pytest_deselected(items=dropped)
        state.own_deselection = False
    items[:] = keep


def _short_reports(item: pytest.Item, exercise: registry.Exercise, brief: bool) -> None:
    """Skip pytest's traceback formatting where nobody reads it.

    pytest and hypothesis both format failures through ``item.repr_failure``. For an untouched stub that
    traceback tells the learner nothing, and under the short report (``brief``) the plugin describes the
    failure itself; formatting tracebacks full of tensors is most of the time a failing check takes.
    """
    full_report = item.repr_failure

    def repr_failure(excinfo, *args, **kwargs):
        if is_not_implemented(excinfo.value):
            return f"{exercise.id} is not implemented yet. Write it, or run `kata hint {exercise.id}`."
        if brief:
            return f"{excinfo.typename}: {excinfo.value}"
        return full_report(excinfo, *args, **kwargs)

    item.repr_failure = repr_failure


def _resolve(reg: registry.Registry, target: str) -> tuple[registry.Exercise, ...]:
    try:
        return reg.resolve(target)
    except KeyError as err:
        raise pytest.UsageError(f"--exercise {target}: {err.args[0]}") from None


def pytest_deselected(items: list[pytest.Item]) -> None:
    if not items:
        return
    state = _state(items[0].config)
    if not state.own_deselection:
        state.incomplete.update(item.stash[EXERCISE].id for item in items if EXERCISE in item.stash)


@pytest.hookimpl(trylast=True)
def pytest_collection_finish(session: pytest.Session) -> None:
    state = _state(session.config)
    for item in session.items:
        if EXERCISE in item.stash:
            state.collected.setdefault(item.stash[EXERCISE].id, []).append(item.nodeid)


def _perf_selected(config: pytest.Config) -> bool:
    return "perf" in (config.getoption("markexpr", "") or "") or bool(config.getoption("benchmark_only", False))


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("perf"):
        if not _perf_selected(item.config):
            pytest.skip("a performance benchmark: `nox -s bench` runs them (or pytest -m perf)")
        if "benchmark" in getattr(item, "fixturenames", ()) and importlib.util.find_spec("pytest_benchmark") is None:
            pytest.skip("a performance benchmark, which needs pytest-benchmark: pip install -e '.[all]'")
    choice = _choice(item)
    if item.get_closest_marker("slow") and choice.role == "mistake":
        pytest.skip("slow checks prove the reference and the variants; every mistake must be caught by a fast one")
    state = _state(item.config)
    stuck = state.timed_out.get(item.stash[EXERCISE].id) if EXERCISE in item.stash and not state.verify else None
    if stuck:
        hung = stuck.split("::")[-1]
        pytest.skip(f"not run: {hung} did not finish, and the exercise's other checks call the same code")
    if choice.role == "mistake" and state.skip_rejected and EXERCISE in item.stash:
        rejected_by = state.rejected.get((item.stash[EXERCISE].kata, choice.entry))
        if rejected_by:
            pytest.skip(f"mistake {choice.entry} is already rejected by {rejected_by} (--kata-verify-full runs all)")
    if item.get_closest_marker("gpu"):
        import torch

        if not torch.cuda.is_available():
            pytest.skip("needs a CUDA GPU; none is available here")


def _runs_code_under_test(frame, learner_roots: tuple[Path, ...]) -> bool:
    """Is the code under test on the main thread's stack (``frame`` and its callers)?"""
    from .verify import is_code_under_test

    while frame is not None:
        filename = frame.f_code.co_filename
        if is_code_under_test(filename) or any(root in Path(filename).resolve().parents for root in learner_roots):
            return True
        frame = frame.f_back
    return False


def _choice(item: pytest.Item) -> ImplChoice:
    callspec = getattr(item, "callspec", None)
    if callspec is not None and isinstance(callspec.params.get("impl"), ImplChoice):
        return callspec.params["impl"]
    return ImplChoice(_state(item.config).impl)


@pytest.hookimpl(tryfirst=True, optionalhook=True)
def pytest_timeout_set_timer(item: pytest.Item, settings) -> bool | None:
    """pytest-timeout's signal method, raising ``CheckTimedOut`` (see there) instead of ``Failed``."""
    if settings.method != "signal" or threading.current_thread() is not threading.main_thread():
        return None  # pytest-timeout's own thread method takes over

    hard_deadline = time.monotonic() + max(settings.timeout, SETUP_GRACE)

    def handler(signum, frame):
        left = hard_deadline - time.monotonic()
        if left > 0 and not _runs_code_under_test(frame, _state(item.config).learner_roots):
            # the check's own work (importing a library, building its models) on a busy machine: not a hang
            signal.setitimer(signal.ITIMER_REAL, min(settings.timeout, left))
            return
        raise CheckTimedOut(f"did not finish within {settings.timeout:g} s")

    def cancel():
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, signal.SIG_DFL)

    item.cancel_timeout = cancel  # pytest-timeout's cancel hook calls this
    signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, settings.timeout)
    return True


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item):
    """A check's own objects are the only ones a garbage collection walks; no hypothesis patch files.

    Everything alive when a check starts (torch, transformers, fixtures) outlives it, so it is frozen for the
    check's duration: a full collection then skips it. ``Trainer`` runs one after every training (through
    accelerate), which took 0.2 s of each 0.25 s fine-tuning run. Unfreezing afterwards lets what the check
    left behind be collected as usual.

    Every check starts with grad mode on, as a fresh process has it: a wrong answer that calls
    ``torch.set_grad_enabled(False)`` and returns changes only its own check's outcome.

    For a failing example, hypothesis's pytest plugin writes a patch that adds it to the check's source
    (``.hypothesis/patches``): nothing a learner should apply, and importing its source rewriter costs
    more than half a second on every failing run.
    """
    gc.freeze()
    try:
        return (yield)
    finally:
        gc.unfreeze()
        if "torch" in sys.modules:  # code that turned grad mode off and never back on must not reach the next check
            sys.modules["torch"].set_grad_enabled(True)
        state = _state(item.config)
        if state.learner or state.verify:
            item.__dict__.pop("_hypothesis_failing_examples", None)


def _phase_outcome(report: pytest.TestReport, call: pytest.CallInfo) -> str:
    if report.failed:
        return TODO if call.excinfo is not None and is_not_implemented(call.excinfo.value) else FAILED
    return SKIPPED if report.skipped else PASSED


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = yield
    if EXERCISE not in item.stash:
        return report
    exercise = item.stash[EXERCISE]
    state = _state(item.config)
    record = item.stash.setdefault(RESULT, {"outcome": PASSED, "duration": 0.0})
    record["duration"] += report.duration
    outcome = _phase_outcome(report, call)
    choice = _choice(item)
    if state.verify and choice.role == "mistake" and outcome == FAILED and call.excinfo is not None:
        from .verify import is_catch

        if is_catch(call.excinfo.value, (AssertionError, pytest.fail.Exception, CheckTimedOut)):
            state.rejected.setdefault((exercise.kata, choice.entry), item.nodeid)
        else:
            outcome = CRASHED
    if outcome == FAILED or (outcome == TODO and record["outcome"] != FAILED):
        record["outcome"] = outcome
    elif outcome == CRASHED and record["outcome"] in (PASSED, SKIPPED):
        record["outcome"] = CRASHED
    elif outcome == SKIPPED and record["outcome"] == PASSED:
        record["outcome"] = SKIPPED
    timed_out = outcome == FAILED and call.excinfo is not None and call.excinfo.errisinstance(CheckTimedOut)
    if timed_out:
        state.timed_out.setdefault(exercise.id, item.nodeid)
        report.sections.append(("kata", f"The code under test {call.excinfo.value}: look for a loop that never ends."))
    if state.brief and outcome == FAILED and call.excinfo is not None:
        brief = _brief(item, exercise, call.excinfo, report, state, timed_out)
        report.user_properties.append(("kata_brief", brief.as_data()))
    report.sections = [(title, cap_output(content)) for title, content in report.sections]
    if report.when == "teardown":
        report.user_properties.append(
            ("kata_result", (exercise.id, record["outcome"], choice.role, choice.entry, record["duration"]))
        )
    if state.verify:
        from .verify import rewrite_report

        rewrite_report(report, choice, outcome, exercise)
    return report


def _brief(item: pytest.Item, exercise: registry.Exercise, excinfo, report, state: RunState, timed_out: bool) -> Brief:
    exc = excinfo.value
    assertion = isinstance(exc, AssertionError | pytest.fail.Exception) and report.when == "call"
    if report.when == "setup" and isinstance(exc, pytest.fail.Exception):  # the impl fixture: import problems
        lines = str(exc.msg).splitlines()
    else:
        lines = describe(exc, state.learner_roots, str(item.path), assertion=assertion)
    if timed_out:
        lines[0] = f"The code under test {exc}: look for a loop that never ends."
    printed, total = printed_tail(report.sections)
    return Brief(exercise.id, item.nodeid.split("::", 1)[-1], lines, printed, total)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item) -> None:
    state = _state(item.config)
    if state.run_log is not None and EXERCISE in item.stash:
        state.run_log.write("start", item.stash[EXERCISE].id, item.nodeid)


def pytest_unconfigure(config: pytest.Config) -> None:
    state = config.stash.get(STATE, None)
    if state is not None and state.run_log is not None and not hasattr(config, "workerinput"):
        state.run_log.write("finished")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    state = _state(session.config)
    if hasattr(session.config, "workerinput"):
        return  # xdist workers: the controller sums up and writes
    if state.verify:
        from .verify import finish_session

        finish_session(session, state)
        return
    if state.writes_progress and state.results:
        complete = state.complete_exercises()
        if complete:
            state.progress_update = progress.record_run(paths.progress_file(), state.registry, complete)


@pytest.hookimpl(trylast=True)  # after pytest-benchmark's table: the run ends with the ratios and the kata summary
def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    _print_bench_lines(terminalreporter, config)
    state = _state(config)
    if state.verify:
        from .verify import print_summary

        print_summary(terminalreporter, state)
        return
    from .summary import print_brief_report, print_learner_summary, summary_lines

    lines = summary_lines(state, tally(state.results.values())) if state.results else []
    if state.brief:
        print_brief_report(terminalreporter, state, reserved=len(lines) + 1 if lines else 0)
    if lines:
        print_learner_summary(terminalreporter, lines)
