"""What a learner sees: short reports, fast ends to hangs and early exits, nothing silent and nothing wrong."""

from __future__ import annotations

import subprocess
import sys
import time
import tomllib

import pytest

from checks.harness import registry
from checks.harness.stubs import stub_body
from checks.harness.ui import SNIPPET_SEPARATOR, symbol_sources

from .conftest import copy_symbol

SOFTMAX = "w01_numpy.softmax"
KATA_FILE = "katas/phase1/w01_numpy.py"
STUB_BODY = "\n".join(f"    {line}" for line in stub_body(registry.load().exercise(SOFTMAX))).lstrip()
OVERFLOWING = "e = np.exp(x)\n    return e / e.sum(axis=axis, keepdims=True)"


def write_softmax(project, body: str, header: str = "") -> None:
    stub = project.read(KATA_FILE)
    assert STUB_BODY in stub
    text = stub.replace(STUB_BODY, body)
    if header:
        text = text.replace("import numpy as np\n", f"import numpy as np\n{header}\n", 1)
    project.write(KATA_FILE, text)


def status_of(project, exercise: str = "softmax") -> str | None:
    recorded = tomllib.loads(project.read("progress.toml")).get("exercises", {}).get("w01_numpy", {})
    return recorded.get(exercise, {}).get("status")


def test_a_failing_exercise_is_reported_in_a_few_lines_ending_with_the_next_step(project):
    write_softmax(project, OVERFLOWING)
    run = project.kata("check", SOFTMAX, KATA_PROFILE="dev")
    lines = run.stdout.rstrip("\n").splitlines()
    assert run.returncode == 1
    assert len(lines) <= 40, run.stdout
    assert lines[-1].startswith(f"Next: fix {SOFTMAX}")
    assert "Likely cause: exponentiates without subtracting the max" in run.stdout
    harness = ("Traceback", "checks/harness", "checks/mistakes", "PytestAssertRewriteWarning", "warnings summary")
    for noise in (*harness, "def softmax", '"""', "Explanation", "np.False_", "where "):
        assert noise not in run.stdout, noise
    assert "RuntimeWarning: overflow encountered in exp" in run.stdout  # the learner's own warning, once, counted
    full = project.kata("check", SOFTMAX, "-v", KATA_PROFILE="dev")
    assert len(full.stdout.splitlines()) > 3 * len(lines)  # -v still gives pytest's whole report


def test_an_exception_names_the_learners_own_line(project):
    write_softmax(project, "return np.exp(x) / np.exp(x).sum(axis=axis, keepdims=True) + undefined_name")
    run = project.kata("check", SOFTMAX)
    assert "NameError: name 'undefined_name' is not defined" in run.stdout
    assert f"at {KATA_FILE}:" in run.stdout and "+ undefined_name" in run.stdout
    assert len(run.stdout.splitlines()) <= 40


def test_code_that_hangs_fails_within_seconds_and_the_other_checks_are_not_run(project):
    write_softmax(project, "while True:\n        pass")
    started = time.monotonic()
    run = project.kata("check", SOFTMAX)
    assert time.monotonic() - started < 30  # 10 s for the first check, then nothing waits; slack for a busy machine
    assert "did not finish within 10 s: look for a loop that never ends" in run.stdout
    assert "while True:" in run.stdout
    assert "not run: test_" in run.stdout
    assert run.returncode == 1 and status_of(project) == "failing"


@pytest.mark.skipif(sys.platform == "win32", reason="the child is a subprocess there, tested the same way")
def test_a_process_that_exits_early_is_reported_with_the_running_exercise(project):
    write_softmax(project, "import os\n    os._exit(0)")
    run = project.kata("check", SOFTMAX)
    assert run.returncode != 0
    assert f"The run ended early while checking {SOFTMAX}" in run.stdout
    assert "exited with code 0" in run.stdout
    assert status_of(project) is None  # nothing recorded, nothing lost


def test_importing_the_reference_is_not_the_learners_work(project):
    stub = project.read(KATA_FILE)
    borrowing = "from reference.phase1.w01_numpy import softmax as _softmax"
    write_softmax(project, "return _softmax(x, axis)", header=borrowing)
    run = project.kata("check", SOFTMAX)
    assert run.returncode == 1
    assert "uses the hidden reference or the checks" in run.stdout and "from reference.phase1.w01_numpy" in run.stdout
    assert status_of(project) == "failing"
    project.write(KATA_FILE, stub)
    write_softmax(project, "return importlib.import_module('checks.numerics') and x", header="import importlib")
    assert "uses the hidden reference" in project.kata("check", SOFTMAX).stdout


def test_a_flood_of_prints_is_cut(project):
    write_softmax(project, "print('x' * 1_000_000)\n    " + OVERFLOWING)
    brief = project.kata("check", SOFTMAX)
    assert len(brief.stdout) < 20_000 and "your code printed" in brief.stdout
    full = project.kata("check", SOFTMAX, "-v")
    assert len(full.stdout) < 200_000 and "characters of output cut" in full.stdout


def test_a_piped_solution_is_the_reference_source_byte_for_byte(project):
    copy_symbol(project, "w01_numpy", "phase1", "log_softmax")
    copy_symbol(project, "w01_numpy", "phase1", "logsumexp")
    copy_symbol(project, "w01_numpy", "phase1", "softmax")  # log_softmax's checks compare with it
    assert project.kata("check", "w01_numpy.log_softmax").returncode == 0
    run = project.kata("solution", "w01_numpy.log_softmax")
    exercise = registry.load().exercise("w01_numpy.log_softmax")
    expected = SNIPPET_SEPARATOR.join(symbol_sources(project.read("reference/phase1/w01_numpy.py"), exercise.symbols))
    assert run.stdout == expected + "\n"  # `[...]` and all: nothing is read as markup
    assert exercise.after in run.stderr and exercise.read[0] in run.stderr


def test_a_first_pass_tells_what_was_built_and_a_re_pass_does_not_repeat_it(project):
    copy_symbol(project, "w01_numpy", "phase1", "softmax")
    exercise = registry.load().exercise(SOFTMAX)
    first = project.kata("check", SOFTMAX)
    assert "passed for the first time" in first.stdout and exercise.after in first.stdout
    assert first.stdout.rstrip().splitlines()[-1].startswith("Next:")
    again = project.kata("check", SOFTMAX)
    assert "first time" not in again.stdout
    assert project.kata("reset", SOFTMAX).returncode == 0
    entry = tomllib.loads(project.read("progress.toml"))["exercises"]["w01_numpy"]["softmax"]
    assert "first_passed" not in entry and entry["status"] == "todo"


def test_bare_check_and_hint_mean_the_current_exercise(project):
    run = project.kata("check")
    assert f"Checking {SOFTMAX}, the current exercise" in run.stdout
    assert "w01_numpy.log_softmax" not in run.stdout
    hints = [project.kata("hint").stdout for _ in registry.load().exercise(SOFTMAX).hints]
    assert all(f"for {SOFTMAX}" in h for h in hints)
    assert "That was the last hint" in hints[-1] and "That was the last hint" not in hints[0]


def test_status_is_one_line_per_kata_with_the_current_one_expanded(project):
    copy_symbol(project, "w01_numpy", "phase1", "softmax")
    project.kata("check", SOFTMAX)
    lines = project.kata("status").stdout.splitlines()
    kata_lines = [line for line in lines if "w03_torch" in line]
    assert len(kata_lines) == 1 and "0/6" in kata_lines[0]
    assert any("1/8" in line and "w01_numpy" in line for line in lines)
    assert any("w01_numpy.log_softmax" in line for line in lines)  # the current kata's exercises
    assert not any("w03_torch.SimpleNet" in line for line in lines)
    assert any("w03_torch.SimpleNet" in line for line in project.kata("status", "--all").stdout.splitlines())


def test_unknown_names_get_a_did_you_mean(project):
    run = project.kata("check", "softmx")
    assert run.returncode != 0 and "Did you mean w01_numpy.softmax?" in run.stdout + run.stderr


def test_a_closed_pipe_ends_quietly(project):
    process = subprocess.Popen(
        [sys.executable, "-m", "checks.harness.cli", "hint", "--all", SOFTMAX],
        cwd=project.root,
        env=project.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    process.stdout.close()  # like `| head` that has already gone: every write fails
    stderr = process.stderr.read()
    process.wait(timeout=60)
    assert "Traceback" not in stderr and "BrokenPipeError" not in stderr, stderr


def test_doctor_does_not_say_all_good_when_something_is_missing(project, tmp_path):
    run = project.kata("doctor", KATA_DATA_DIR=str(tmp_path), HOME=str(tmp_path))
    assert "All good." not in run.stdout
    assert "Ready, except for what needs" in run.stdout and "the tinyshakespeare corpus" in run.stdout


def test_an_error_against_an_expected_zero_is_given_as_absolute_only():
    import numpy as np

    from checks.numerics import error_report

    message = error_report(np.array([1e-3, 0.5]), np.array([0.0, 0.5]), 1e-6, 1e-9)
    assert "max abs error 0.001" in message and "rel. error" not in message
    assert "rel. error 0.5" in error_report(np.array([1.5]), np.array([1.0]), 1e-6, 1e-9)


def test_a_check_file_that_cannot_load_says_what_is_missing(project):
    check_file = "checks/phase1/test_w01_numpy.py"
    numpy_import = "import numpy as np\n"
    source = project.read(check_file).replace(numpy_import, "import a_package_nobody_installed\n" + numpy_import, 1)
    project.write(check_file, source)
    run = project.kata("check", SOFTMAX)
    assert run.returncode != 0
    assert f"{check_file} could not be loaded: ModuleNotFoundError" in run.stdout
    assert "a_package_nobody_installed is not installed: pip install -e '.[all]'" in run.stdout
