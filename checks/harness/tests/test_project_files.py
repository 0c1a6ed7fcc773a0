"""The learner workflow, the README's commands and the nox sessions agree with the CLI and packaging."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import tomllib

import pytest

from checks.harness import paths
from checks.harness.cli import build_parser

yaml = pytest.importorskip("yaml")
PYPROJECT = tomllib.loads((paths.ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def run_lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]


def assert_command_exists(command: str) -> None:
    words = shlex.split(command)
    if words[0] == "kata":
        build_parser().parse_args(words[1:])  # exits (SystemExit) on an unknown command or option
    elif words[0] == "pip" and "-e" in words:
        spec = words[words.index("-e") + 1]
        extras = re.findall(r"\[([^\]]+)\]", spec)
        for extra in (e for group in extras for e in group.split(",")):
            assert extra in PYPROJECT["project"]["optional-dependencies"], f"{command}: no extra {extra!r}"


def test_the_learner_workflow_runs_commands_that_exist():
    workflow = yaml.safe_load((paths.ROOT / ".github/workflows/katas.yml").read_text(encoding="utf-8"))
    steps = [step for job in workflow["jobs"].values() for step in job["steps"]]
    commands = [line for step in steps if "run" in step for line in run_lines(step["run"])]
    assert any(c.startswith("kata check") for c in commands) and any(c.startswith("kata badges") for c in commands)
    for command in commands:
        assert_command_exists(command)


def test_the_readme_commands_exist():
    readme = (paths.ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```bash\n(.*?)```", readme, flags=re.S)
    commands = [part.strip() for block in blocks for line in run_lines(block) for part in line.split("&&")]
    assert "kata next" in commands and "nox -s verify" in commands
    for command in commands:
        assert_command_exists(command)
    sessions = subprocess.run(
        [sys.executable, "-m", "nox", "-l", "-f", str(paths.ROOT / "noxfile.py")], capture_output=True, text=True
    )
    if sessions.returncode == 0:
        for name in ("phase1", "phase2", "phase3", "phase4", "verify", "bench", "gpu", "badges", "lint"):
            assert f"- {name} ->" in sessions.stdout or f"* {name} ->" in sessions.stdout


def test_the_readme_learner_loop_lists_commands_that_exist():
    readme = (paths.ROOT / "README.md").read_text(encoding="utf-8")
    (block,) = re.findall(r"```text\n(kata status.*?)```", readme, flags=re.S)
    commands = [re.split(r"\s{2,}", line.strip())[0] for line in block.splitlines() if line.startswith("kata ")]
    assert {"kata check", "kata hint", "kata status", "kata watch"} <= set(commands)
    for command in commands:
        assert_command_exists(command)


def test_numpy_only_katas_never_import_torch():
    code = "import sys, katas.phase1.w01_numpy, reference.phase1.w01_numpy; print('torch' in sys.modules)"
    run = subprocess.run([sys.executable, "-c", code], cwd=paths.ROOT, capture_output=True, text=True)
    assert run.stdout.strip() == "False", run.stderr
