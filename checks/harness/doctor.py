"""``kata doctor``: what is installed, whether CUDA is there, and what will be skipped here and why."""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata

from . import paths, progress
from .registry import Registry

PACKAGES = (
    "pytest", "hypothesis", "numpy", "torch", "pandas", "matplotlib", "scipy", "tokenizers",
    "transformers", "peft", "sacrebleu", "pytest-benchmark", "pytest-xdist", "nox",
)  # fmt: skip
CORPORA = ("tinyshakespeare", "taylorswift")
# The oldest releases the phase 3 katas are written for (their APIs changed in these majors).
MINIMUM_VERSIONS = {"transformers": "5.0", "peft": "0.20", "tokenizers": "0.20"}


def _too_old(package: str, version: str) -> bool:
    from packaging.version import InvalidVersion, Version

    try:
        return Version(version) < Version(MINIMUM_VERSIONS[package])
    except InvalidVersion:
        return False


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _cuda() -> str:
    if _version("torch") is None:
        return "torch is not installed"
    import torch

    if torch.cuda.is_available():
        return f"available: {torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda})"
    return "not available"


def _corpus(name: str) -> str:
    try:
        from checks.data import CorpusUnavailable, find_corpus
    except ImportError:
        return "no data loader"
    try:
        return f"found at {find_corpus(name)}"
    except CorpusUnavailable as err:
        return f"missing: {err}"


def doctor(reg: Registry) -> int:
    print(f"Python   {sys.version.split()[0]} on {platform.platform()}")
    for package in PACKAGES:
        version = _version(package)
        note = ""
        if version and package in MINIMUM_VERSIONS and _too_old(package, version):
            wanted = MINIMUM_VERSIONS[package]
            note = f"  (too old: the katas need {package} >= {wanted}; pip install -U '{package}>={wanted}')"
        print(f"  {package:<17} {version or 'not installed'}{note}")
    cuda = _cuda()
    print(f"CUDA     {cuda}")
    profile = os.environ.get("KATA_PROFILE") or ("ci" if os.environ.get("CI") else "dev")
    print(f"Hypothesis profile: {profile} (set KATA_PROFILE to dev, ci or thorough)")
    for name in CORPORA:
        print(f"Corpus {name}: {_corpus(name)}")

    print("\nWhat will be skipped here:")
    marked = {
        m: [e.id for e in reg.exercises if m in e.markers or m in reg.kata_of(e).markers]
        for m in ("gpu", "perf", "hub")
    }
    if not cuda.startswith("available"):
        print("  - checks marked gpu: no CUDA here" + (f" ({', '.join(marked['gpu'])})" if marked["gpu"] else ""))
    print("  - checks marked perf: they run only with `nox -s bench` (pytest -m perf)")
    if os.environ.get("KATA_ALLOW_DOWNLOAD") != "1":
        print("  - checks marked hub: only with real pre-trained weights in the Hugging Face cache "
              "(or KATA_ALLOW_DOWNLOAD=1)")
    missing: list[str] = [] if cuda.startswith("available") else ["CUDA"]
    if _version("pytest-benchmark") is None:
        print("    and pytest-benchmark is not installed: `pip install -e '.[all]'`")
        missing.append("pytest-benchmark")
    if _version("scipy") is None:
        print("  - comparisons with scipy: scipy is not installed: `pip install -e '.[all]'`")
        missing.append("scipy")
    for phase, extra in (("phase1", "torch"), ("phase2", "tokenizers"), ("phase3", "transformers")):
        if _version(extra) is None:
            print(f"  - {phase} needs {extra}: `pip install -e '.[{phase}]'`")
            missing.append(extra)
    missing += [f"the {name} corpus" for name in CORPORA if not _corpus(name).startswith("found")]

    problems = reg.problems()
    prog = progress.load(paths.progress_file())
    for problem in problems + prog.problems:
        print(f"! {problem}")
    if problems:
        print("\nThe registry needs fixing (above).")
    elif missing:
        print(f"\nReady, except for what needs {', '.join(missing)}: those checks are skipped (above says why).")
    else:
        print("\nAll good.")
    return 1 if problems else 0
