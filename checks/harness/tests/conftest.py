"""Fixtures for the harness's own tests: a throwaway copy of the project to run the CLI and pytest in."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from checks.harness import paths

COPIED = ("katas", "reference", "checks", "pyproject.toml", "progress.toml")
IGNORED = shutil.ignore_patterns("__pycache__", ".hypothesis", "*.bak", ".*.lock")


@dataclass
class Project:
    root: Path

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("KATA_", "PYTEST_"))}
        env.update({"PYTHONPATH": str(self.root), "KATA_PROFILE": "ci", "PYTHONDONTWRITEBYTECODE": "1", **extra})
        return env

    def run(self, *args: str, **env: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, *args], cwd=self.root, env=self.env(**env), capture_output=True, text=True, timeout=300
        )

    def kata(self, *args: str, **env: str) -> subprocess.CompletedProcess:
        return self.run("-m", "checks.harness.cli", *args, **env)

    def pytest(self, *args: str, **env: str) -> subprocess.CompletedProcess:
        return self.run("-m", "pytest", *args, "-p", "no:cacheprovider", **env)

    def read(self, relative: str) -> str:
        return (self.root / relative).read_text(encoding="utf-8")

    def write(self, relative: str, text: str) -> None:
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


@pytest.fixture
def project(tmp_path: Path) -> Project:
    """A copy of the repository's katas, reference, checks and registry, importable on its own."""
    root = tmp_path / "project"
    root.mkdir()
    for name in COPIED:
        source = paths.ROOT / name
        if source.is_dir():
            shutil.copytree(source, root / name, ignore=IGNORED)
        else:
            shutil.copy2(source, root / name)
    return Project(root)


def copy_symbol(project: Project, kata: str, phase: str, symbol: str) -> None:
    """Paste the reference's ``symbol`` over the learner's stub of it, as a learner copying it would."""
    from checks.harness.ui import symbol_sources

    stub_path = f"katas/{phase}/{kata}.py"
    stub, ref = project.read(stub_path), project.read(f"reference/{phase}/{kata}.py")
    (old,) = symbol_sources(stub, (symbol,))
    (new,) = symbol_sources(ref, (symbol,))
    project.write(stub_path, stub.replace(old.strip("\n"), new.strip("\n")))
