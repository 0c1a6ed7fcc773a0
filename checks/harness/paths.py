"""Where the project's files live.

The harness is installed in editable mode, so the repository root is three levels above this file.
Every path the harness reads or writes is derived here, so tests can point it elsewhere with one
environment variable (``KATA_PROGRESS_FILE``) instead of patching modules.
"""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
KATAS_DIR = ROOT / "katas"
REFERENCE_DIR = ROOT / "reference"
CHECKS_DIR = ROOT / "checks"
MISTAKES_DIR = CHECKS_DIR / "mistakes"
HARNESS_DIR = CHECKS_DIR / "harness"
REGISTRY_FILE = KATAS_DIR / "curriculum.toml"
STATE_DIR = ROOT / ".kata"  # backups and generated files; ignored by git


def progress_file() -> Path:
    """The learner's progress file (``progress.toml`` at the root unless ``KATA_PROGRESS_FILE`` says otherwise)."""
    return Path(os.environ.get("KATA_PROGRESS_FILE", ROOT / "progress.toml"))


def check_file(phase: str, kata: str) -> Path:
    return CHECKS_DIR / phase / f"test_{kata}.py"


def module_file(package_dir: Path, phase: str, kata: str) -> Path:
    return package_dir / phase / f"{kata}.py"
