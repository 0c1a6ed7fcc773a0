"""The learner's loop, end to end, in a throwaway copy of the project (subprocesses, so a bit slower)."""

from __future__ import annotations

import json
import textwrap
import tomllib
import xml.etree.ElementTree as ET

import pytest

from checks.harness import registry
from checks.harness.stubs import stub_body

from .conftest import copy_symbol

SOFTMAX = "w01_numpy.softmax"
STUB_BODY = "\n".join(f"    {line}" for line in stub_body(registry.load().exercise(SOFTMAX))).lstrip()


def progress_of(project) -> dict:
    return tomllib.loads(project.read("progress.toml")).get("exercises", {})


def test_untouched_stubs_are_todo_and_recorded_as_such(project):
    run = project.kata("check", "w01_numpy")
    assert run.returncode == 1, run.stdout + run.stderr
    assert "todo" in run.stdout and "Next: implement w01_numpy.softmax" in run.stdout
    recorded = progress_of(project)["w01_numpy"]
    assert recorded and all(entry["status"] == "todo" for entry in recorded.values())


def test_copying_the_reference_passes_and_shows_in_status_progress_and_badges(project, tmp_path):
    copy_symbol(project, "w01_numpy", "phase1", "softmax")
    run = project.kata("check", SOFTMAX)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "passed for the first time" in run.stdout
    entry = progress_of(project)["w01_numpy"]["softmax"]
    assert entry["status"] == "passed" and entry["checks_passed"] == entry["checks_total"] > 0
    assert entry["first_passed"] and entry["fingerprint"]

    status = project.kata("status")
    line = next(line for line in status.stdout.splitlines() if SOFTMAX in line)
    assert "passed" in line

    out = tmp_path / "badges"
    assert project.kata("badges", "--out", str(out)).returncode == 0
    for name in ("overall", "phase1"):
        assert ET.parse(out / f"{name}.svg").getroot().tag.endswith("svg")
        endpoint = json.loads((out / f"{name}.json").read_text())
        assert endpoint["schemaVersion"] == 1 and endpoint["message"].startswith("1/")

    assert "def softmax" in project.kata("solution", SOFTMAX).stdout


def test_the_solution_stays_hidden_until_the_exercise_passes(project):
    run = project.kata("solution", SOFTMAX)
    assert run.returncode == 1 and "def softmax" not in run.stdout


def test_reference_runs_partial_runs_and_single_tests_never_write_progress(project):
    before = project.read("progress.toml")
    check_file = "checks/phase1/test_w01_numpy.py"
    assert project.pytest(check_file, "--impl", "reference").returncode == 0
    project.pytest(check_file, "-k", "softmax")
    first_test = next(line for line in project.read(check_file).splitlines() if line.startswith("def test_"))
    project.pytest(f"{check_file}::{first_test[4:].split('(')[0]}")
    assert project.read("progress.toml") == before


def test_a_package_that_swaps_one_function_for_a_wrong_one_is_rejected(project):
    reference = project.read("reference/phase1/w01_numpy.py")
    wrong = reference + textwrap.dedent(
        """

        def softmax(x, axis=-1):
            e = np.exp(np.asarray(x, dtype=np.float64))
            return e / e.sum(axis=axis, keepdims=True)
        """
    )
    for package in ("wrongimpl", "wrongimpl/phase1"):
        project.write(f"{package}/__init__.py", "")
    project.write("wrongimpl/phase1/w01_numpy.py", wrong)
    run = project.pytest("checks/phase1/test_w01_numpy.py", "--impl", "wrongimpl", "--exercise", SOFTMAX)
    assert run.returncode == 1, run.stdout
    assert "softmax" in run.stdout and "failing" in run.stdout
    assert "Likely cause" in run.stdout


def test_hints_are_staged_and_remembered(project):
    first = project.kata("hint", SOFTMAX).stdout
    second = project.kata("hint", SOFTMAX).stdout
    assert "Hint 1 of" in first and "Hint 2 of" not in first
    assert "Hint 2 of" in second
    assert progress_of(project)["w01_numpy"]["softmax"]["hints_shown"] == 2


def test_reset_restores_the_stub_and_keeps_a_backup(project):
    stub = project.read("katas/phase1/w01_numpy.py")
    solved = stub.replace(
        STUB_BODY, "e = np.exp(x - x.max(axis=axis, keepdims=True))\n    return e / e.sum(axis=axis, keepdims=True)"
    )
    assert solved != stub
    project.write("katas/phase1/w01_numpy.py", solved)
    run = project.kata("reset", SOFTMAX)
    assert run.returncode == 0, run.stdout + run.stderr
    assert project.read("katas/phase1/w01_numpy.py") == stub
    (backup,) = (project.root / ".kata" / "backups").iterdir()
    assert backup.read_text(encoding="utf-8") == solved


def test_a_learner_error_fails_only_that_exercise_and_a_hang_times_out(project):
    stub = project.read("katas/phase1/w01_numpy.py")
    project.write("katas/phase1/w01_numpy.py", stub.replace(STUB_BODY, "while True:\n        pass"))
    exercises = ("--exercise", SOFTMAX, "--exercise", "w01_numpy.log_softmax", "--exercise", "w01_numpy.one_hot")
    run = project.pytest("checks/phase1/test_w01_numpy.py", *exercises, "--no-progress", "--timeout", "5")
    assert "did not finish within" in run.stdout
    summary = run.stdout.split("kata summary")[1].split("Next:")[0]
    statuses = dict(line.split()[1:3] for line in summary.splitlines() if "w01_numpy." in line)
    assert statuses.pop(SOFTMAX) == "failing"
    assert all(status == "todo" for status in statuses.values()), statuses


def test_a_check_without_an_exercise_is_a_collection_error(project):
    project.write("checks/phase1/test_w01_numpy_extra.py", "def test_orphan(impl):\n    assert impl\n")
    run = project.pytest("checks/phase1/test_w01_numpy_extra.py")
    assert run.returncode != 0
    assert "not listed in the registry" in run.stdout + run.stderr
    project.write(
        "checks/phase1/test_w01_numpy.py",
        project.read("checks/phase1/test_w01_numpy.py") + "\n\ndef test_orphan(impl):\n    assert impl\n",
    )
    (project.root / "checks/phase1/test_w01_numpy_extra.py").unlink()
    run = project.pytest("checks/phase1/test_w01_numpy.py")
    assert run.returncode == 4 and "must map to an exercise" in run.stdout + run.stderr


def test_a_syntax_error_is_reported_with_its_line(project):
    stub = project.read("katas/phase1/w01_numpy.py")
    project.write("katas/phase1/w01_numpy.py", stub + "\ndef broken(:\n")
    run = project.kata("check", SOFTMAX)
    assert run.returncode == 1
    assert "fix the syntax" in run.stdout and "line" in run.stdout


def test_parallel_runs_record_progress_once_from_the_controller(project):
    pytest.importorskip("xdist")
    copy_symbol(project, "w01_numpy", "phase1", "softmax")
    run = project.pytest("checks/phase1/test_w01_numpy.py", "-n", "2", "--exercise", SOFTMAX)
    assert run.returncode == 0, run.stdout[-2000:]
    assert progress_of(project)["w01_numpy"]["softmax"]["status"] == "passed"


SLOW_SET_UP = '''

@pytest.fixture
def slow_set_up():
    __import__("time").sleep(2.5)  # the check's own work, such as a first import on a busy machine


@pytest.mark.exercise("softmax")
@pytest.mark.timeout(1)
def test_with_a_slow_set_up(impl, slow_set_up):
    __import__("time").sleep(1.5)
    assert impl.softmax([[0.0, 0.0]])[0, 0] == 0.5
'''


def test_the_time_limit_counts_the_code_under_test_not_the_checks_own_work(project):
    checks = project.read("checks/phase1/test_w01_numpy.py")
    project.write("checks/phase1/test_w01_numpy.py", checks + SLOW_SET_UP)
    run = project.pytest("checks/phase1/test_w01_numpy.py::test_with_a_slow_set_up", "--impl", "reference")
    assert run.returncode == 0, run.stdout[-2000:]


GRAD_OFF = '''

@pytest.mark.exercise("softmax")
def test_a_answer_that_turns_grad_mode_off(impl):
    import torch

    torch.set_grad_enabled(False)  # as a wrong answer might, without turning it back on
    assert impl.softmax([[0.0, 0.0]])[0, 0] == 0.5


@pytest.mark.exercise("softmax")
def test_b_the_next_check_starts_with_grad_mode_on(impl):
    import torch

    assert torch.is_grad_enabled()
'''


def test_every_check_starts_with_grad_mode_on(project):
    project.write("checks/phase1/test_w01_numpy.py", project.read("checks/phase1/test_w01_numpy.py") + GRAD_OFF)
    run = project.pytest("checks/phase1/test_w01_numpy.py", "-k", "test_a_answer or test_b_the_next", "--impl",
                         "reference")
    assert run.returncode == 0 and "2 passed" in run.stdout, run.stdout[-2000:]


BENCHMARK = '''

@pytest.mark.perf
@pytest.mark.exercise("softmax")
def test_a_benchmark_that_reports(impl, bench_report):
    bench_report("softmax: 3.0x faster than a loop (target >= 2x)")
'''


def test_a_benchmark_run_ends_with_every_reported_ratio(project):
    project.write("checks/phase1/test_w01_numpy.py", project.read("checks/phase1/test_w01_numpy.py") + BENCHMARK)
    run = project.pytest("checks/phase1/test_w01_numpy.py", "-m", "perf", "-k", "reports", "--impl", "reference")
    assert run.returncode == 0, run.stdout[-2000:]
    line = "w01_numpy.softmax: softmax: 3.0x faster than a loop (target >= 2x)"
    assert line in run.stdout.split("benchmark results")[1]
    assert project.read(".kata/bench/summary.txt") == line + "\n"
