"""The catalogue engine: source-edit mutants, and what counts as a catch in `kata verify`."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

from checks.harness import paths
from checks.harness.catalogue import CatalogueError, Entry, catalogue, mutant_problems, mutated_reference, parts_of
from checks.harness.verify import is_catch

ASSERTIONS = (AssertionError, pytest.fail.Exception)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the mutant overflows, as intended
def test_a_mutant_is_the_reference_with_its_edits_applied():
    module = mutated_reference("w01_numpy", "softmax", (("np.exp(shifted)", "np.exp(x)"),))
    from reference.phase1 import w01_numpy

    x = np.array([[0.0, 800.0]])
    assert np.isnan(module.softmax(x)).any()  # without the max shift, exp overflows
    assert np.allclose(w01_numpy.softmax(x), [[0.0, 1.0]])
    assert module.__file__ == w01_numpy.__file__
    assert "np.exp(x)" in inspect.getsource(module.softmax)  # the mutated source, for tracebacks and debugging


def test_a_mutant_whose_edit_no_longer_applies_is_reported():
    stale = Entry("mistake", "w01_numpy", "softmax", "stale", "?", None, (("no such text", "x"),))
    assert "no longer occurs" in mutant_problems(stale)[0]
    with pytest.raises(CatalogueError, match="no such text"):
        mutated_reference("w01_numpy", "softmax", (("no such text", "x"),))
    missing = Entry("mistake", "w01_numpy", "no_such_symbol", "missing", "?", None, (("a", "b"),))
    assert "no_such_symbol" in mutant_problems(missing)[0]


def test_a_symbol_is_built_of_the_functions_and_classes_its_code_uses():
    assert parts_of("w01_numpy", "log_softmax") == {"logsumexp"}
    assert parts_of("w01_numpy", "softmax") == set()
    assert "GRUCell" not in parts_of("w09_training", "_check_cell_input")  # named in an annotation only


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the mistake overflows, as intended
def test_likely_cause_names_a_mistake_in_a_part_of_the_symbol():
    from checks.numerics import likely_cause

    x = np.array([[0.0, 800.0]])
    with np.errstate(over="ignore"):
        learners = x - np.log(np.sum(np.exp(x), axis=-1, keepdims=True))  # logsumexp without the max shift
    cause = likely_cause("w01_numpy", "log_softmax", lambda f: f(x.copy()), learners)
    assert cause == next(e.because for e in catalogue("w01_numpy") if e.name == "logsumexp_without_max")


def _raiser(directory, name: str, body: str):
    """A function whose frames live in a file of ``directory`` (compiled with that name; never written)."""
    namespace: dict = {}
    exec(compile(body, str(directory / "phase1" / name), "exec"), namespace)  # noqa: S102
    return namespace


def _raised(fn) -> BaseException:
    try:
        fn()
    except BaseException as err:  # noqa: BLE001 - the test inspects whatever was raised
        return err
    raise AssertionError("expected an exception")


def test_an_exception_inside_the_code_under_test_is_a_catch():
    code = _raiser(paths.REFERENCE_DIR, "w99_fake.py", "def f():\n    return [][1]\n")
    check = _raiser(paths.CHECKS_DIR, "test_w99_fake.py", "def check(f):\n    return f()\n")
    assert is_catch(_raised(lambda: check["check"](code["f"])), ASSERTIONS)
    mistake = _raiser(paths.MISTAKES_DIR, "w99_fake.py", "def g():\n    import numpy\n    numpy.zeros(-1)\n")
    assert is_catch(_raised(lambda: check["check"](mistake["g"])), ASSERTIONS)  # library frames are skipped


def test_a_crash_in_the_checks_own_code_is_not_a_catch():
    code = _raiser(paths.REFERENCE_DIR, "w99_fake.py", "def f():\n    return None\n")
    check = _raiser(paths.CHECKS_DIR, "test_w99_fake.py", "def check(f):\n    return f()[0]\n")
    assert not is_catch(_raised(lambda: check["check"](code["f"])), ASSERTIONS)
    asserting = _raiser(paths.CHECKS_DIR, "test_w99_fake.py", "def check(f):\n    assert f() is not None, 'x'\n")
    assert is_catch(_raised(lambda: asserting["check"](code["f"])), ASSERTIONS)
    group = BaseExceptionGroup("two", [_raised(lambda: check["check"](code["f"])), AssertionError("y")])
    assert is_catch(group, ASSERTIONS)
