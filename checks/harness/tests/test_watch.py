"""`kata watch` re-checks on save from a warm process."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest


def _watch(project, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-u", "-m", "checks.harness.cli", "watch", "w01_numpy.softmax", *args],
        cwd=project.root,
        env=project.env(KATA_PROGRESS_FILE=str(project.root / "watch-progress.toml")),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _wait_for(process: subprocess.Popen, seen: list[str], prefix: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        seen.append(line)
        if line.startswith(prefix):
            return
        if not line and process.poll() is not None:
            break
    raise AssertionError(f"no line starting with {prefix!r}:\n" + "".join(seen))


@pytest.mark.skipif(sys.platform == "win32", reason="uses fork")
def test_saving_a_file_triggers_a_recheck(project):
    process = _watch(project)
    seen: list[str] = []

    def wait_for_check(deadline: float) -> None:
        _wait_for(process, seen, "checked in", deadline - time.monotonic())

    try:
        wait_for_check(time.monotonic() + 60)
        time.sleep(0.3)
        stub = project.root / "katas/phase1/w01_numpy.py"
        stub.write_text(stub.read_text(encoding="utf-8") + "\n# saved\n", encoding="utf-8")
        wait_for_check(time.monotonic() + 30)
    finally:
        process.terminate()
        process.wait(timeout=10)
    assert sum(line.startswith("checked in") for line in seen) == 2
    assert "w01_numpy.softmax" in "".join(seen)


@pytest.mark.skipif(sys.platform == "win32", reason="uses fork")
def test_saving_again_stops_a_run_that_hangs(project):
    from .test_feedback import KATA_FILE, OVERFLOWING, STUB_BODY

    stub = project.read(KATA_FILE)
    project.write(KATA_FILE, stub.replace(STUB_BODY, "while True:\n        pass"))
    process = _watch(project, "--no-clear")
    seen: list[str] = []
    try:
        _wait_for(process, seen, "── checking", 60)
        time.sleep(2)  # the check is now stuck in the loop (it would run for 10 s)
        started = time.monotonic()
        project.write(KATA_FILE, stub.replace(STUB_BODY, OVERFLOWING))
        _wait_for(process, seen, "(stopped: a file changed", 5)  # the stuck run is killed, not timed out
        assert time.monotonic() - started < 5
        _wait_for(process, seen, "checked in", 60)
    finally:
        process.terminate()
        process.wait(timeout=10)
    assert "Likely cause: exponentiates without subtracting the max" in "".join(seen)


def test_watch_warms_imports_made_inside_functions_and_lazy_names(tmp_path):
    from checks.harness.watch import _imports_of

    source = tmp_path / "check.py"
    source.write_text(
        "import numpy as np\n\ndef test_x():\n    import peft\n    from transformers import Trainer\n"
        "    from .local import thing\n",
        encoding="utf-8",
    )
    assert _imports_of(source) == {("numpy", None), ("peft", None), ("transformers", "Trainer")}
