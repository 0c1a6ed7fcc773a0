"""nox sessions, generated from the registry: one per phase, plus verify, bench, gpu, badges and lint.

nox -s phase1      the learner's checks for phase 1 (phase2, phase3, phase4 likewise)
nox -s verify      the maintainer's proof (the repository's own test suite)
nox -s mutants     mutation testing of the reference (`-- KATA ...`, `-- --check`)
nox -s bench       performance benchmarks (pytest-benchmark, `perf` marker)
nox -s gpu         CUDA checks (`gpu` marker); skipped, with the reason shown, without CUDA
nox -s badges      progress badges from progress.toml
nox -s lint        ruff
"""

import sys
from pathlib import Path

import nox

sys.path.insert(0, str(Path(__file__).parent))
from checks.harness import registry  # noqa: E402 - the registry module needs only the standard library

nox.options.sessions = ["lint", "verify"]
nox.options.reuse_venv = "yes"
PYTHON = "3.11"
REGISTRY = registry.load()


def _phase_session(phase: registry.Phase):
    def session(s: nox.Session) -> None:
        s.install("-e", f".[{phase.id if phase.number < 4 else 'all'}]")
        s.run("kata", "check", phase.id, *s.posargs)

    session.__doc__ = f"Phase {phase.number}: {phase.title}: your checks."
    return session


for _phase in REGISTRY.phases:
    nox.session(name=_phase.id, python=PYTHON)(_phase_session(_phase))


@nox.session(python=PYTHON)
def verify(s: nox.Session) -> None:
    """Mutation records current; reference passes, stubs todo, every mistake caught, every variant accepted."""
    s.install("-e", ".[dev]")
    s.run("kata", "mutants", "--check")
    s.run("kata", "verify", "--", "-n", "auto", *s.posargs)


@nox.session(python=PYTHON)
def mutants(s: nox.Session) -> None:
    """mutmut on the reference with each kata's fast checks; every survivor killed or documented."""
    s.install("-e", ".[dev]")
    s.run("kata", "mutants", *s.posargs)


@nox.session(python=PYTHON)
def bench(s: nox.Session) -> None:
    """Performance benchmarks against the reference, ratios measured in the same run; the run ends with every
    ratio (kept in .kata/bench/summary.txt, the capstone's learning curves beside it)."""
    s.install("-e", ".[dev]")
    s.run("pytest", "checks", "-m", "perf", "--impl", "reference", "-s", *s.posargs)


@nox.session(python=PYTHON)
def gpu(s: nox.Session) -> None:
    """CUDA checks against the reference; without CUDA they are skipped and the reason is shown."""
    s.install("-e", ".[dev]")
    s.run("pytest", "checks", "-m", "gpu", "--impl", "reference", "-rs", *s.posargs, success_codes=[0, 5])


@nox.session(python=PYTHON)
def badges(s: nox.Session) -> None:
    """SVG badges and shields.io endpoint JSON from progress.toml, into badges/."""
    s.install("-e", ".")
    s.run("kata", "badges", *s.posargs)


@nox.session(python=PYTHON)
def lint(s: nox.Session) -> None:
    """ruff: lint and formatting."""
    s.install("ruff")
    s.run("ruff", "check", ".")
