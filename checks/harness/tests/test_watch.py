"""`kata watch` re-checks on save from a warm process."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest


@pytest.mark.skipif(sys.platform == "win32", reason="uses fork")
def test_saving_a_file_triggers_a_recheck(project):
    process = subprocess.Popen(
        [sys.executable, "-u", "-m", "checks.harness.cli", "watch", "w01_numpy.softmax"],
        cwd=project.root,
        env=project.env(KATA_PROGRESS_FILE=str(project.root / "watch-progress.toml")),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    seen: list[str] = []

    def wait_for_check(deadline: float) -> None:
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            seen.append(line)
            if line.startswith("checked in"):
                return
            if not line and process.poll() is not None:
                break
        raise AssertionError("no re-check was reported:\n" + "".join(seen))

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
