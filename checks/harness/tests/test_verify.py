"""`kata verify` itself can fail: an uncaught mistake, a vacuous check and a rejected variant are gaps."""

from __future__ import annotations

import textwrap

import pytest

# Each test runs a whole verify session of w01 in a subprocess, beside the rest of the suite.
pytestmark = pytest.mark.timeout(300)

CHECKS = "checks/phase1/test_w01_numpy.py"


def verify(project):
    return project.pytest(CHECKS, "--kata-verify", KATA_PROFILE="verify")


def test_the_w01_kata_verifies(project):
    run = project.pytest(CHECKS, "--kata-verify", "-rs", KATA_PROFILE="verify")
    assert run.returncode == 0, run.stdout[-3000:]
    assert "verified" in run.stdout and "xfailed" in run.stdout
    # once a check rejects a mistake, its other checks are skipped (kata verify --full runs them all)
    assert "is already rejected by" in run.stdout


def test_gaps_fail_the_run_and_are_named(project):
    catalogue = project.read("checks/mistakes/w01_numpy.py") + textwrap.dedent(
        """

        @mistake("softmax", "the reference in disguise: no check can catch it")
        def softmax_in_disguise(x, axis=-1):
            x = np.asarray(x, dtype=np.float64)
            e = np.exp(x - x.max(axis=axis, keepdims=True))
            return e / e.sum(axis=axis, keepdims=True)


        @variant("softmax", "not actually correct")
        def softmax_wrong_variant(x, axis=-1):
            return np.zeros_like(np.asarray(x, dtype=np.float64))
        """
    )
    project.write("checks/mistakes/w01_numpy.py", catalogue)
    vacuous = textwrap.dedent(
        """

        @pytest.mark.exercise("softmax")
        def test_vacuous(impl):
            assert impl is not None


        @pytest.mark.exercise("softmax")
        def test_crashes_in_its_own_code(impl):
            result = impl.softmax(np.zeros(2))
            if impl.softmax.__name__ == "softmax_in_disguise":
                result.no_such_attribute  # an AttributeError of the check's own making proves nothing
        """
    )
    project.write(CHECKS, project.read(CHECKS) + vacuous)
    run = verify(project)
    assert run.returncode == 1
    assert "no check rejects mistake softmax_in_disguise" in run.stdout
    assert "only crashed in their own code: " in run.stdout and "test_crashes_in_its_own_code" in run.stdout
    assert "variant softmax_wrong_variant is rejected" in run.stdout
    assert "passes on the untouched stub" in run.stdout


def test_a_changed_stub_signature_is_a_gap(project):
    stub = project.read("katas/phase1/w01_numpy.py")
    project.write(
        "katas/phase1/w01_numpy.py",
        stub.replace("def softmax(x: np.ndarray, axis: int = -1)", "def softmax(x, axis=-1)"),
    )
    run = verify(project)
    assert run.returncode == 1 and "softmax differs" in run.stdout
