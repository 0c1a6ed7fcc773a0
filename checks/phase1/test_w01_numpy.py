"""Checks for w01_numpy (Weeks 1-2: Python & NumPy).

Oracles here are plain NumPy written in this file (brute force, closed forms, central differences via
``checks.numerics.central_difference``), the hidden reference, and ``scipy.special.logsumexp`` when
SciPy is installed. None of them calls the code under test.

Checklist notes (CONTRACTS.md items that do not apply, and why):
- State over time (6), module structure (7), randomness (8): every exercise is a pure function of its
  arguments except CharVocab, whose only state is its two tables (checked: vocabularies stay independent,
  and the same text gives the same ids in fresh processes, the one place where randomness, the per-process
  string hash seed, can leak in).
- Devices (3): NumPy only, there is no device. dtypes are checked: float32 in gives float64 out
  everywhere, one_hot is float64, CharVocab.encode is int64 even when empty.
- Size 0: a softmax/logsumexp/standardize over an empty axis has no value (NumPy's max of nothing
  raises), so only size 0 along another axis is checked; mlp_loss_and_grads needs N >= 1 (a mean over
  no examples is undefined). one_hot, pairwise_sq_distances and CharVocab are checked with empty inputs.
- Errors (10): only one_hot (ValueError naming the index) and CharVocab (ValueError naming the bad
  entry, KeyError naming the character or id) document errors; the other exercises document none.
- linear_forward / linear_backward take no keyword arguments; mlp_loss_and_grads has none either.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from checks import strategies as kst
from checks.numerics import (
    assert_close,
    assert_gradient,
    central_difference,
    compare_with_reference,
    describe,
    error_report,
    format_call,
    likely_cause,
)

KATA = "w01_numpy"
pytestmark = pytest.mark.kata(KATA)

seeds = st.integers(0, 2**31 - 1)


def _float64_array(call: str, out, shape: tuple[int, ...]) -> np.ndarray:
    """Assert that ``out`` is a float64 NumPy array (a NumPy scalar for shape ()) of ``shape``; return it."""
    assert isinstance(out, np.ndarray | np.generic), f"Called {call}. Returned {describe(out)}, expected a NumPy array."
    assert out.shape == shape, f"Called {call}. Returned shape {out.shape}, expected {shape}."
    assert out.dtype == np.float64, (
        f"Called {call}. Returned dtype {out.dtype}, expected float64, because this module works in float64 "
        "whatever the input dtype: convert first with np.asarray(x, dtype=np.float64)."
    )
    return np.asarray(out)


def _assert_close_or_name_cause(actual, expected, *, symbol: str, run, call: str, because: str,
                                 rtol: float = 1e-6, atol: float = 1e-9) -> None:
    """assert_close that, on a mismatch, names the catalogued mistake whose ``run(candidate)`` gives ``actual``."""
    if error_report(actual, expected, rtol, atol) is not None:
        cause = likely_cause(KATA, symbol, run, actual, rtol=rtol, atol=atol)
        assert_close(actual, expected, call=call, because=because, rtol=rtol, atol=atol, cause=cause)


def _assert_untouched(call: str, name: str, pristine: np.ndarray, after: np.ndarray) -> None:
    """The argument ``name`` must come back exactly as it was passed: values, shape and dtype."""
    same = after.shape == pristine.shape and after.dtype == pristine.dtype and np.array_equal(after, pristine)
    if not same:
        changed = np.argwhere(after != pristine) if after.shape == pristine.shape else []
        where = f" (first change at index {tuple(int(i) for i in changed[0])})" if len(changed) else ""
        raise AssertionError(
            f"Called {call}. Afterwards the argument {name} was {describe(after)}{where}, but it was passed as "
            f"{describe(pristine)}. Never write into an argument: np.asarray(x, dtype=np.float64) of a float64 "
            "array is that very array, so `x -= m` changes the caller's data; write `x = x - m`."
        )


# =========================================================================== softmax


@pytest.mark.exercise("softmax")
@given(kst.arrays_and_axes(bound=1e4))
def test_softmax_matches_reference(impl, reference, array_axis):
    x, axis = array_axis
    compare_with_reference(impl, reference, "softmax", x, axis=axis,
                           because="softmax must equal exp(x) / sum(exp(x)) along the given axis.")


@pytest.mark.exercise("softmax")
@given(kst.arrays_and_axes(bound=1e4))
def test_softmax_is_a_distribution_along_the_axis(impl, array_axis):
    x, axis = array_axis
    call = format_call("softmax", (x,), {"axis": axis})
    out = np.asarray(impl.softmax(x, axis=axis))
    assert out.shape == x.shape, f"Called {call}. Returned shape {out.shape}, expected {x.shape} (the shape of x)."
    assert np.all(np.isfinite(out)), (
        f"Called {call}. Returned non-finite values {out[~np.isfinite(out)][:4]}. Inputs as large as 1e4 must "
        "not overflow: subtract the maximum of each slice before exponentiating."
    )
    assert np.all(out >= 0), f"Called {call}. Returned negative probabilities {out[out < 0][:4]}."
    assert_close(out.sum(axis=axis), np.ones(np.delete(x.shape, axis)), call=call,
                 because="probabilities along the axis must sum to 1 (and only along that axis).")


@pytest.mark.exercise("softmax")
@given(kst.arrays_and_axes(bound=1e3), kst.finite_floats(1e3))
def test_softmax_is_shift_invariant(impl, array_axis, c):
    x, axis = array_axis
    assert_close(impl.softmax(x + c, axis=axis), impl.softmax(x, axis=axis),
                 call=f"softmax(x + {c!r}, axis={axis}) vs softmax(x, axis={axis}) with x = {describe(x)}",
                 because="adding the same constant to every entry cancels in exp(x_i) / sum_j exp(x_j).")


@pytest.mark.exercise("softmax")
def test_softmax_large_inputs_do_not_overflow(impl):
    # Row 0: exp(1e4) is inf. Row 1: exp(-1e4) is 0. Row 2 is fine only if each row is shifted by its own max.
    x = np.array([[1e4, 1e4, 0.0], [-1e4, -1e4, -1e4], [1000.0, 999.0, -1e4]])
    expected = np.array([[0.5, 0.5, 0.0], [1 / 3, 1 / 3, 1 / 3], [1 / (1 + np.exp(-1.0)), 1 / (1 + np.e), 0.0]])
    assert_close(impl.softmax(x, axis=1), expected, call=format_call("softmax", (x,), {"axis": 1}),
                 because="softmax is finite for any finite input: shift each row by its own maximum "
                         "(a single global maximum makes rows far below it underflow to 0 / 0 = nan).")


@pytest.mark.exercise("softmax")
def test_softmax_normalises_along_the_requested_axis(impl):
    x = np.arange(6.0).reshape(2, 3)
    e = np.exp(x - x.max(axis=0))
    assert_close(impl.softmax(x, axis=0), e / e.sum(axis=0), call=format_call("softmax", (x,), {"axis": 0}),
                 because="with axis=0 every column (not every row) must sum to 1.")


@pytest.mark.exercise("softmax")
def test_softmax_default_axis_dtype_views_and_untouched_input(impl):
    view = (np.random.default_rng(0).standard_normal((3, 4)) * 3).T  # (4, 3), not contiguous
    pristine = view.copy()
    call = format_call("softmax", (view,))
    out = _float64_array(call, impl.softmax(view), (4, 3))
    _assert_untouched(call, "x", pristine, view)
    e = np.exp(pristine - pristine.max(axis=1, keepdims=True))
    _assert_close_or_name_cause(out, e / e.sum(axis=1, keepdims=True), symbol="softmax", call=call,
                                run=lambda softmax: softmax(pristine.copy()),
                                because="the default axis=-1 normalises the last axis: every row sums to 1.")

    x32 = pristine.astype(np.float32)
    call = format_call("softmax", (x32,), {"axis": 0})
    out = _float64_array(call, impl.softmax(x32, axis=0), (4, 3))
    x64 = x32.astype(np.float64)
    e = np.exp(x64 - x64.max(axis=0))
    assert_close(out, e / e.sum(axis=0), call=call, atol=1e-12,
                 because="a float32 input is converted to float64 first and the softmax computed in float64.")

    empty = np.zeros((0, 3))
    _float64_array(format_call("softmax", (empty,)), impl.softmax(empty), (0, 3))  # no rows: nothing to normalise


# =========================================================================== log_softmax / logsumexp


@pytest.fixture(scope="module")
def scipy_special():
    return pytest.importorskip(
        "scipy.special",
        reason="SciPy is not installed, so the comparison with scipy.special.logsumexp is skipped "
        "(pip install -e '.[all]' installs it)",
    )


@pytest.mark.exercise("log_softmax")
@given(kst.arrays_and_axes(bound=1e4))
def test_log_softmax_matches_reference(impl, reference, array_axis):
    x, axis = array_axis
    compare_with_reference(impl, reference, "log_softmax", x, axis=axis,
                           because="log_softmax(x) = x - logsumexp(x) along the axis, finite for any finite x.")


@pytest.mark.exercise("log_softmax")
@given(kst.arrays_and_axes(bound=1e4), st.booleans())
def test_logsumexp_matches_reference(impl, reference, array_axis, keepdims):
    x, axis = array_axis
    compare_with_reference(impl, reference, "logsumexp", x, axis=axis, keepdims=keepdims,
                           because="logsumexp = max + log(sum(exp(x - max))) along the axis; keepdims keeps "
                                   "that axis with size 1, otherwise it is removed.")


@pytest.mark.exercise("log_softmax")
@given(kst.arrays_and_axes(bound=1e4), st.booleans())
def test_logsumexp_matches_scipy(impl, scipy_special, array_axis, keepdims):
    x, axis = array_axis
    expected = scipy_special.logsumexp(x, axis=axis, keepdims=keepdims)
    assert_close(impl.logsumexp(x, axis=axis, keepdims=keepdims), expected,
                 call=format_call("logsumexp", (x,), {"axis": axis, "keepdims": keepdims}),
                 because="it must agree with scipy.special.logsumexp (values and shape).")


@pytest.mark.exercise("log_softmax")
@given(kst.arrays_and_axes(bound=1e3))
def test_exp_of_log_softmax_is_softmax(impl, reference, array_axis):
    x, axis = array_axis
    assert_close(np.exp(impl.log_softmax(x, axis=axis)), reference.softmax(x, axis=axis),
                 call=f"np.exp(log_softmax({describe(x)}, axis={axis}))",
                 because="exp(log_softmax(x)) must be softmax(x).")


@pytest.mark.exercise("log_softmax")
@given(kst.arrays_and_axes(bound=1e4))
def test_logsumexp_lies_between_max_and_max_plus_log_n(impl, array_axis):
    x, axis = array_axis
    call = format_call("logsumexp", (x,), {"axis": axis})
    out = np.asarray(impl.logsumexp(x, axis=axis))
    top = np.max(x, axis=axis)
    n = x.shape[axis]
    assert out.shape == top.shape, f"Called {call}. Returned shape {out.shape}, expected {top.shape}."
    slack = 1e-12 * (1 + np.abs(top))
    ok = (out >= top - slack) & (out <= top + np.log(n) + slack)
    assert np.all(ok), (
        f"Called {call}. Returned {describe(out)}; expected every value between max(x) = {describe(top)} and "
        f"max(x) + log({n}), because the sum holds exp(max) once and at most {n} terms no larger than it."
    )


@pytest.mark.exercise("log_softmax")
def test_log_softmax_survives_huge_gaps(impl):
    x = np.array([[0.0, 1e4], [-1e4, 1e4]])
    expected = np.array([[-1e4, 0.0], [-2e4, 0.0]])
    assert_close(impl.log_softmax(x, axis=-1), expected, call=format_call("log_softmax", (x,), {"axis": -1}),
                 because="log(softmax(x)) underflows to log(0) = -inf for large gaps; x - logsumexp(x) does not.")


@pytest.mark.exercise("log_softmax")
def test_log_softmax_and_logsumexp_defaults_dtype_views_and_untouched_input(impl):
    view = (np.random.default_rng(1).standard_normal((3, 4)) * 3).T  # (4, 3), not contiguous
    pristine = view.copy()
    top = pristine.max(axis=1)
    lse = top + np.log(np.exp(pristine - top[:, None]).sum(axis=1))  # the oracle, along the last axis

    call = format_call("logsumexp", (view,))
    out = _float64_array(call, impl.logsumexp(view), (4,))
    _assert_untouched(call, "x", pristine, view)
    assert_close(out, lse, call=call, atol=1e-12,
                 because="the defaults are axis=-1 (the last axis) and keepdims=False (that axis removed).")
    call = format_call("log_softmax", (view,))
    out = _float64_array(call, impl.log_softmax(view), (4, 3))
    _assert_untouched(call, "x", pristine, view)
    assert_close(out, pristine - lse[:, None], call=call, atol=1e-12,
                 because="the default axis=-1 normalises the last axis: log_softmax(x) = x - logsumexp(x) per row.")

    x32 = pristine.astype(np.float32)
    x64 = x32.astype(np.float64)
    top = x64.max(axis=0, keepdims=True)
    lse = top + np.log(np.exp(x64 - top).sum(axis=0, keepdims=True))
    call = format_call("logsumexp", (x32,), {"axis": 0, "keepdims": True})
    assert_close(_float64_array(call, impl.logsumexp(x32, axis=0, keepdims=True), (1, 3)), lse, call=call, atol=1e-12,
                 because="a float32 input is converted to float64 first; keepdims=True keeps axis 0 with size 1.")
    call = format_call("log_softmax", (x32,), {"axis": 0})
    assert_close(_float64_array(call, impl.log_softmax(x32, axis=0), (4, 3)), x64 - lse, call=call, atol=1e-12,
                 because="a float32 input is converted to float64 first.")


# =========================================================================== one_hot


@st.composite
def _indices_and_classes(draw, max_dims: int = 3):
    num_classes = draw(st.integers(1, 6))
    shape = draw(kst.shapes(min_dims=1, max_dims=max_dims, max_side=5))
    indices = draw(hnp.arrays(np.int64, shape, elements=st.integers(0, num_classes - 1)))
    return indices, num_classes


@pytest.mark.exercise("one_hot")
@given(_indices_and_classes())
def test_one_hot_matches_reference(impl, reference, drawn):
    indices, num_classes = drawn
    compare_with_reference(impl, reference, "one_hot", indices, num_classes,
                           because="the result has shape indices.shape + (num_classes,) with one 1.0 per row.")


@pytest.mark.exercise("one_hot")
@given(_indices_and_classes())
def test_one_hot_round_trips_through_argmax(impl, drawn):
    indices, num_classes = drawn
    call = format_call("one_hot", (indices, num_classes))
    out = _float64_array(call, impl.one_hot(indices, num_classes), indices.shape + (num_classes,))
    assert set(np.unique(out)) <= {0.0, 1.0}, f"Called {call}. Returned values {np.unique(out)}; only 0 and 1 allowed."
    assert_close(out.sum(axis=-1), np.ones(indices.shape), call=call, because="every row holds exactly one 1.")
    assert_close(out.argmax(axis=-1), indices, call=f"{call}.argmax(axis=-1)",
                 because="argmax along the last axis must give the indices back.")


@pytest.mark.exercise("one_hot")
@given(_indices_and_classes(max_dims=2), st.data())
def test_one_hot_rejects_out_of_range_indices(impl, drawn, data):
    indices, num_classes = drawn
    bad = data.draw(st.one_of(st.integers(-20, -1), st.integers(num_classes, num_classes + 20)), label="bad index")
    position = data.draw(st.sampled_from(list(np.ndindex(indices.shape))), label="position")
    indices = indices.copy()
    indices[position] = bad
    # an index outside 0..num_classes-1 must raise ValueError naming it (NumPy would wrap a negative one)
    with pytest.raises(ValueError, match=rf"(?<![\d.]){re.escape(str(bad))}(?!\d)"):
        impl.one_hot(indices, num_classes)


@pytest.mark.exercise("one_hot")
@pytest.mark.parametrize("bad", [-1, -7, 3, 12])
def test_one_hot_error_names_the_index(impl, bad):
    indices = np.array([0, 1, bad, 2])
    try:
        result = impl.one_hot(indices, 3)
    except ValueError as err:
        assert re.search(rf"(?<![\d.]){re.escape(str(bad))}(?!\d)", str(err)), (
            f"Called one_hot({indices.tolist()}, 3). It raised ValueError({str(err)!r}), which does not name the "
            f"offending index {bad}; say which value is wrong so the learner can find it."
        )
    else:
        pytest.fail(
            f"Called one_hot({indices.tolist()}, 3). Returned {describe(result)} instead of raising ValueError: "
            f"index {bad} is outside 0..2 (a negative index must not wrap around to the end)."
        )


@pytest.mark.exercise("one_hot")
def test_one_hot_of_lists_other_int_dtypes_views_and_empty_inputs(impl):
    call = "one_hot([2, 0, 1], 3)"
    assert_close(_float64_array(call, impl.one_hot([2, 0, 1], 3), (3, 3)), np.eye(3)[[2, 0, 1]], call=call,
                 because="a list of ints is fine: row k has its 1.0 at position indices[k].")
    for dtype in (np.int32, np.uint8):
        view = np.array([[1, 0, 2], [2, 2, 0]], dtype=dtype).T  # (3, 2), not contiguous
        pristine = view.copy()
        call = format_call("one_hot", (view, 3))
        out = _float64_array(call, impl.one_hot(view, 3), (3, 2, 3))
        _assert_untouched(call, "indices", pristine, view)
        assert_close(out, np.eye(3)[pristine.astype(np.int64)], call=call,
                     because=f"any integer dtype ({np.dtype(dtype).name} here) holds valid class indices.")
    for empty in (np.zeros(0, dtype=np.int64), np.zeros((2, 0), dtype=np.int64), []):
        call = format_call("one_hot", (empty, 4))
        _float64_array(call, impl.one_hot(empty, 4), np.shape(empty) + (4,))  # empty, even [] (float64 in NumPy)


@pytest.mark.exercise("one_hot")
@pytest.mark.parametrize("bad", [np.array([0.0, 1.7]), np.array([1.0, 2.0]), np.array([True, False])],
                         ids=["fractional floats", "whole floats", "booleans"])
def test_one_hot_rejects_non_integer_arrays(impl, bad):
    call = format_call("one_hot", (bad, 3))
    try:
        result = impl.one_hot(bad, 3)
    except ValueError:
        return
    pytest.fail(f"Called {call}. Returned {describe(result)} instead of raising ValueError: the indices must be an "
                f"integer array, and dtype {bad.dtype} is not one (1.7 is no class; True is no index).", pytrace=False)


# =========================================================================== standardize


@st.composite
def _data_and_axis(draw, min_side: int = 1):
    x = draw(kst.float_arrays(kst.shapes(min_dims=1, max_dims=3, min_side=min_side, max_side=5), bound=1e3))
    axis = draw(st.integers(-x.ndim, x.ndim - 1))
    return x, axis


@pytest.mark.exercise("standardize")
@given(_data_and_axis())
def test_standardize_matches_reference(impl, reference, drawn):
    x, axis = drawn
    compare_with_reference(impl, reference, "standardize", x, axis=axis, atol=1e-6, rtol=1e-6,
                           because="z = (x - mean) / (std + eps) with the population std (ddof=0) along the axis.")


@pytest.mark.exercise("standardize")
@given(_data_and_axis(min_side=2))
def test_standardize_gives_mean_zero_and_std_one(impl, drawn):
    x, axis = drawn
    call = format_call("standardize", (x,), {"axis": axis})
    z = np.asarray(impl.standardize(x, axis=axis))
    assert z.shape == x.shape, f"Called {call}. Returned shape {z.shape}, expected {x.shape}."
    spread = np.std(x, axis=axis) > 1e-3  # slices whose std dwarfs eps
    assume(spread.any())
    assert_close(np.mean(z, axis=axis)[spread], np.zeros(int(spread.sum())), call=call, atol=1e-8,
                 because="every slice along the axis must have mean 0 after standardising.")
    assert_close(np.std(z, axis=axis)[spread], np.ones(int(spread.sum())), call=call, atol=1e-4,
                 because="every slice along the axis must have (population, ddof=0) standard deviation 1.")


@pytest.mark.exercise("standardize")
@given(st.floats(-1e3, 1e3, allow_nan=False), st.integers(1, 6), seeds)
@example(value=3.0, rows=4, seed=0)  # mean exactly 3.0: without eps this is 0 / 0 = nan
@example(value=0.1, rows=3, seed=0)  # mean 0.1 + rounding: without eps this is +-1e-17 / 1e-17 = +-1
def test_standardize_constant_column_is_zero(impl, value, rows, seed):
    x = np.column_stack([np.full(rows, value), np.random.default_rng(seed).standard_normal(rows)])
    call = format_call("standardize", (x,))
    z = np.asarray(impl.standardize(x))
    assert np.all(np.isfinite(z)), f"Called {call}. Returned {describe(z)} with nan/inf: std is 0, add eps to it."
    # The mean of a constant column can be off by an ulp of the value, and that rounding noise is divided by eps:
    # up to ~4e-8 * |value| is as close to 0 as float64 gets. Without eps it would be nan or +-1.
    assert_close(z[:, 0], np.zeros(rows), call=call, atol=1e-7 * (1.0 + abs(value)),
                 because="a constant column carries no information: its z-scores are 0 (eps keeps 0/0 away).")


@pytest.mark.exercise("standardize")
def test_standardize_small_spread_and_other_axes(impl):
    x = np.array([[0.0, 10.0, 3.0], [2e-4, 14.0, 3.0]])
    k = 1e-4 / (1e-4 + 1e-8)
    assert_close(impl.standardize(x, axis=0), np.array([[-k, -1 / (1 + 5e-9), 0.0], [k, 1 / (1 + 5e-9), 0.0]]),
                 call=format_call("standardize", (x,), {"axis": 0}), atol=1e-9, rtol=1e-7,
                 because="a spread of 1e-4 is small but real: (x - mean) / (std + eps) with eps=1e-8 outside the "
                         "square root keeps it at +-0.9999.")
    rows = np.array([[1.0, 2.0, 3.0, 4.0], [10.0, 10.0, 10.0, 30.0]])
    mu, sd = rows.mean(axis=1, keepdims=True), rows.std(axis=1, keepdims=True)
    assert_close(impl.standardize(rows, axis=1), (rows - mu) / (sd + 1e-8),
                 call=format_call("standardize", (rows,), {"axis": 1}), atol=1e-9,
                 because="with axis=1 every row is standardised on its own (mean and std must broadcast per row).")


@pytest.mark.exercise("standardize")
def test_standardize_eps_dtype_views_and_untouched_input(impl):
    x = np.array([[0.0, 1.0, 4.0], [2.0, 1.0, 0.0], [4.0, 1.0, 5.0], [6.0, 1.0, 3.0]])
    view = x.T  # (3, 4), not contiguous; its rows are the columns of x
    pristine = view.copy()
    call = format_call("standardize", (view,), {"axis": 1, "eps": 0.5})
    out = _float64_array(call, impl.standardize(view, axis=1, eps=0.5), (3, 4))
    _assert_untouched(call, "x", pristine, view)
    mean, std = pristine.mean(axis=1, keepdims=True), pristine.std(axis=1, keepdims=True)
    _assert_close_or_name_cause(out, (pristine - mean) / (std + 0.5), symbol="standardize", call=call, atol=1e-12,
                                run=lambda standardize: standardize(pristine.copy(), axis=1, eps=0.5),
                                because="eps is an argument: (x - mean) / (std + eps) with the eps given (0.5 here).")

    x32 = x.astype(np.float32)  # small integers: exactly the same values in float32
    call = format_call("standardize", (x32,))
    out = _float64_array(call, impl.standardize(x32), (4, 3))
    assert_close(out, (x - x.mean(axis=0)) / (x.std(axis=0) + 1e-8), call=call, atol=1e-12,
                 because="a float32 input is converted to float64 first; the defaults are axis=0 and eps=1e-8.")


# =========================================================================== pairwise_sq_distances


@st.composite
def _two_point_sets(draw, bound: float = 1e2):
    d = draw(st.integers(1, 6))
    a = draw(kst.float_arrays((draw(st.integers(1, 6)), d), bound=bound))
    b = draw(kst.float_arrays((draw(st.integers(1, 6)), d), bound=bound))
    return a, b


def _brute_force_sq_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The definition, term by term: no cancellation, no clipping needed."""
    return ((a[:, None, :] - b[None, :, :]) ** 2).sum(axis=-1)


def _distance_atol(a: np.ndarray, b: np.ndarray) -> float:
    # The expansion ||a||^2 + ||b||^2 - 2 a.b loses about eps_machine * (||a||^2 + ||b||^2) to rounding.
    return 1e-12 * (1.0 + float(np.max(np.sum(a * a, axis=1))) + float(np.max(np.sum(b * b, axis=1))))


@pytest.mark.exercise("pairwise_sq_distances")
@given(_two_point_sets())
def test_pairwise_sq_distances_matches_brute_force(impl, drawn):
    a, b = drawn
    assert_close(impl.pairwise_sq_distances(a, b), _brute_force_sq_distances(a, b),
                 call=format_call("pairwise_sq_distances", (a, b)), rtol=1e-7, atol=_distance_atol(a, b),
                 because="out[i, j] = sum_k (a[i, k] - b[j, k])^2, shape (N, M): rows follow a, columns follow b.")


@pytest.mark.exercise("pairwise_sq_distances")
@given(_two_point_sets())
def test_pairwise_sq_distances_matches_reference(impl, reference, drawn):
    a, b = drawn
    compare_with_reference(impl, reference, "pairwise_sq_distances", a, b, rtol=1e-7, atol=_distance_atol(a, b),
                           because="it must equal the squared Euclidean distance of every pair of rows.")


@pytest.mark.exercise("pairwise_sq_distances")
@given(kst.float_arrays(st.tuples(st.integers(1, 6), st.integers(1, 6)), bound=1e2))
def test_pairwise_sq_distances_to_itself(impl, a):
    call = format_call("pairwise_sq_distances", (a, a))
    d = np.asarray(impl.pairwise_sq_distances(a, a.copy()))
    n = a.shape[0]
    assert d.shape == (n, n), f"Called {call}. Returned shape {d.shape}, expected {(n, n)}."
    assert np.all(d >= 0), f"Called {call}. Returned negative squared distances {d[d < 0][:4]}: clip at 0."
    atol = _distance_atol(a, a)
    assert_close(d, d.T, call=call, atol=atol,
                 because="the distance from a[i] to a[j] is the distance from a[j] to a[i].")
    assert_close(np.diag(d), np.zeros(n), call=call, atol=atol, because="every point is at distance 0 from itself.")


@pytest.mark.exercise("pairwise_sq_distances")
@given(seeds)
@example(seed=0)
def test_pairwise_sq_distances_never_negative_for_near_duplicates(impl, seed):
    # 16 points within 1e-3 of (1000, ..., 1000): ||a||^2 ~ 8e6, so the expansion cancels ~16 digits and
    # rounding alone turns some true distances of ~1e-6 (and every self-distance 0) into negative numbers.
    points = 1e3 + np.random.default_rng(seed).standard_normal((16, 8)) * 1e-3
    d = np.asarray(impl.pairwise_sq_distances(points, points.copy()))
    assert np.all(d >= 0), (
        f"Called pairwise_sq_distances(a, a) with 16 near-duplicate points around 1000 (seed {seed}). Returned "
        f"{int((d < 0).sum())} negative values, the smallest {d.min():.3g}. ||a||^2 + ||b||^2 - 2 a.b cancels "
        "catastrophically for close points; a squared distance is never negative, so clip at 0 (np.maximum)."
    )
    assert_close(d, _brute_force_sq_distances(points, points), call="pairwise_sq_distances(a, a)",
                 atol=_distance_atol(points, points), rtol=1e-6, because="the values must still be the distances.")


@pytest.mark.exercise("pairwise_sq_distances")
def test_pairwise_sq_distances_dtype_views_empty_and_untouched_inputs(impl):
    rng = np.random.default_rng(2)
    a64 = rng.standard_normal((3, 2))
    b64 = rng.standard_normal((2, 4)).T  # (4, 2), not contiguous
    # Either set of points in float32 (values exactly representable in both), the other a float64 view.
    for a, b in ((a64.astype(np.float32), b64), (a64, b64.T.astype(np.float32).T)):
        a0, b0 = a.copy(), b.copy()
        call = format_call("pairwise_sq_distances", (a, b))
        out = _float64_array(call, impl.pairwise_sq_distances(a, b), (3, 4))
        _assert_untouched(call, "a", a0, a)
        _assert_untouched(call, "b", b0, b)
        exact_a, exact_b = a0.astype(np.float64), b0.astype(np.float64)
        assert_close(out, _brute_force_sq_distances(exact_a, exact_b), call=call, rtol=1e-9,
                     atol=_distance_atol(exact_a, exact_b),
                     because="float32 points are converted to float64 first (float32 rounding, ~1e-7, shows here); "
                             "rows follow a, columns follow b, even when an argument is a transposed view.")
    for empty_a, empty_b, shape in ((np.zeros((0, 2)), b64, (0, 4)), (a64, np.zeros((0, 2)), (3, 0))):
        call = format_call("pairwise_sq_distances", (empty_a, empty_b))
        _float64_array(call, impl.pairwise_sq_distances(empty_a, empty_b), shape)  # no points: no distances


_OPENBLAS_THREAD_API = (("scipy_openblas", "64_"), ("scipy_openblas", ""), ("openblas", "64_"), ("openblas", ""))


@contextlib.contextmanager
def _single_threaded_blas():
    """Pin NumPy's OpenBLAS to one thread while timing (a no-op where that is not possible).

    The ratio is about vectorisation, not parallelism: the loop runs on one core too. And a multi-threaded
    BLAS on an oversubscribed machine spins instead of working (``a @ b.T`` at 512 x 64 took 36 ms instead of
    1.6 ms on a busy 2-core box), which would make the check flaky. threadpoolctl is used when installed;
    otherwise OpenBLAS's own ``*_set_num_threads`` entry point, found among the loaded libraries (Linux).
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        threadpool_limits = None
    if threadpool_limits is not None:
        with threadpool_limits(limits=1, user_api="blas"):
            yield
        return
    controls = []
    try:
        with open("/proc/self/maps", encoding="utf-8") as maps:
            paths = sorted({line.split()[-1] for line in maps if "openblas" in line.lower() and "/" in line})
        for path in paths:
            lib = ctypes.CDLL(path)
            for prefix, suffix in _OPENBLAS_THREAD_API:
                setter = getattr(lib, f"{prefix}_set_num_threads{suffix}", None)
                getter = getattr(lib, f"{prefix}_get_num_threads{suffix}", None)
                if setter is not None and getter is not None:
                    controls.append((setter, getter()))
                    setter(1)
                    break
    except (OSError, ValueError, AttributeError):
        pass  # not Linux, or an unusual BLAS build: time it as it is
    try:
        yield
    finally:
        for setter, threads in controls:
            setter(threads)


def _double_loop_sq_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """What the exercise replaces: one Python iteration per pair of rows."""
    out = np.empty((a.shape[0], b.shape[0]))
    for i in range(a.shape[0]):
        for j in range(b.shape[0]):
            diff = a[i] - b[j]
            out[i, j] = diff @ diff
    return out


@pytest.mark.perf
@pytest.mark.exercise("pairwise_sq_distances")
def test_pairwise_sq_distances_is_vectorised_benchmark(impl, benchmark, bench_report):
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((512, 64)), rng.standard_normal((512, 64))
    with _single_threaded_blas():
        fast = benchmark(impl.pairwise_sq_distances, a, b)
        # Best round of many: the measurement least disturbed by whatever else the machine is doing. The
        # loop (about a second) is timed once, in the same run, on the same arrays.
        vectorised, rounds = benchmark.stats.stats.min, benchmark.stats.stats.rounds
        start = time.perf_counter()
        slow = _double_loop_sq_distances(a, b)
        loop = time.perf_counter() - start
    assert_close(fast, slow, call="pairwise_sq_distances(a (512, 64), b (512, 64))", rtol=1e-7, atol=1e-9,
                 because="the fast version must compute the same distances as the loop.")
    ratio = loop / vectorised
    print(f"\npairwise_sq_distances (512, 64) x (512, 64): double loop {loop * 1e3:.1f} ms, vectorised "
          f"{vectorised * 1e3:.3f} ms (best of {rounds} rounds), ratio {ratio:.0f}x (target >= 20x)")
    bench_report(f"vectorised {vectorised * 1e3:.3f} ms vs a Python double loop {loop * 1e3:.0f} ms at 512 x 512: "
                 f"{ratio:.0f}x faster (target >= 20x)")
    assert ratio >= 20, (
        f"pairwise_sq_distances on (512, 64) x (512, 64) took {vectorised * 1e3:.2f} ms (best of {rounds} rounds), "
        f"only {ratio:.1f}x faster than a Python double loop ({loop * 1e3:.0f} ms); the target is 20x. Replace the "
        "loops by broadcasting and one matrix product a @ b.T."
    )


# =========================================================================== numerical_gradient


def _sum_exp(v: np.ndarray) -> float:
    return float(np.sum(np.exp(v)))


_SMALL_ARRAYS = kst.float_arrays(kst.shapes(min_dims=1, max_dims=3, max_side=4), bound=2.0)


@pytest.mark.exercise("numerical_gradient")
@given(_SMALL_ARRAYS)
def test_numerical_gradient_of_sum_exp(impl, x):
    # d/dx sum(exp(x)) = exp(x). Central differences are off by ~exp(x) eps^2 / 6 ~ 2e-11 (relative);
    # forward differences by exp(x) eps / 2 ~ 5e-6, which the tolerance below does not allow.
    assert_close(impl.numerical_gradient(_sum_exp, x), np.exp(x), rtol=1e-6, atol=1e-8,
                 call=format_call("numerical_gradient", ("f = lambda v: np.sum(np.exp(v))", x)),
                 because="the gradient of sum(exp(x)) is exp(x); central differences (f(x+eps) - f(x-eps)) / (2 eps) "
                         "get it to ~1e-10, forward differences only to ~1e-5.")


@pytest.mark.exercise("numerical_gradient")
@given(st.integers(1, 4), st.integers(1, 4), seeds)
def test_numerical_gradient_of_a_matrix_argument(impl, rows, cols, seed):
    rng = np.random.default_rng(seed)
    W, v = rng.standard_normal((rows, cols)), rng.standard_normal(cols)

    def f(M: np.ndarray) -> float:
        return float(np.sum(np.tanh(M @ v)))

    expected = np.outer(1.0 - np.tanh(W @ v) ** 2, v)  # d/dW sum tanh(W v) = (1 - tanh^2(W v)) v^T
    assert_close(impl.numerical_gradient(f, W), expected, rtol=1e-6, atol=1e-8,
                 call=format_call("numerical_gradient", ("f = lambda M: np.sum(np.tanh(M @ v))", W)),
                 because="every entry of a 2-D x gets its own derivative: loop over np.ndindex(x.shape), and "
                         "call f with an array of x's shape.")


@pytest.mark.exercise("numerical_gradient")
@given(st.integers(1, 5), seeds)
def test_numerical_gradient_of_a_quadratic(impl, n, seed):
    rng = np.random.default_rng(seed)
    A, x = rng.standard_normal((n, n)), rng.standard_normal(n)

    def f(v: np.ndarray) -> float:
        return float(v @ A @ v)

    assert_close(impl.numerical_gradient(f, x, eps=1e-4), (A + A.T) @ x, rtol=1e-6, atol=1e-8,
                 call=format_call("numerical_gradient", ("f = lambda v: v @ A @ v", x), {"eps": 1e-4}),
                 because="for a quadratic, central differences are exact up to rounding (use the eps you are given); "
                         "a forward difference is off by eps * A[i, i].")


@pytest.mark.exercise("numerical_gradient")
@given(kst.float_arrays(kst.shapes(min_dims=1, max_dims=2, max_side=4), bound=10.0))
@example(x=np.array([0.1, 0.2, 1.5, 0.7]))
def test_numerical_gradient_leaves_x_unchanged(impl, x):
    before = x.copy()
    impl.numerical_gradient(lambda v: float(np.sum(np.sin(v))), x)
    changed = before != x
    assert not changed.any(), (
        f"Called numerical_gradient(f, x) with x = {describe(before)}. Afterwards x was {describe(x)} "
        f"(changed at {int(changed.sum())} positions, e.g. {before[changed][0]!r} -> {x[changed][0]!r}). "
        "The caller's array must come back exactly: perturb a copy, or save each entry and put it back "
        "(x + eps - 2 eps + eps is not always x in floating point)."
    )


@pytest.mark.exercise("numerical_gradient")
def test_numerical_gradient_step_dtype_and_zero_d_input(impl):
    # At x = 0 the derivative of v^3 is 0, but its central difference is ((eps)^3 - (-eps)^3) / (2 eps) = eps^2:
    # the answer shows which step was used. Scaled by 1 / eps^2, it is exactly 1 for the step the call asks for.
    zeros = np.zeros((2, 3))
    for kwargs, eps in (({}, 1e-5), ({"eps": 1e-2}, 1e-2)):
        call = format_call("numerical_gradient", (f"f = lambda v: np.sum(v ** 3) / {eps ** 2:g}", zeros), kwargs)
        scaled_cube = lambda v, e=eps: float(np.sum(v**3)) / e**2
        out = _float64_array(call, impl.numerical_gradient(scaled_cube, zeros, **kwargs), (2, 3))
        which = "the eps passed in" if kwargs else "the documented default"
        _assert_close_or_name_cause(
            out, np.ones((2, 3)), symbol="numerical_gradient", call=call, rtol=1e-6,
            run=lambda grad, f=scaled_cube, kw=kwargs: grad(f, zeros.copy(), **kw),
            because=f"central differences of v^3 at 0 give eps^2, and the step must be eps = {eps:g} ({which}).",
        )

    scalar = np.array(3.0)
    call = format_call("numerical_gradient", ("f = lambda v: np.sum(v ** 2)", scalar))
    out = _float64_array(call, impl.numerical_gradient(lambda v: float(np.sum(v**2)), scalar), ())
    assert_close(out, np.array(6.0), call=call, rtol=1e-8, because="a 0-D x has a 0-D gradient: d(v^2)/dv = 2v = 6.")

    x32 = np.array([0.5, -1.0, 1.5], dtype=np.float32)
    call = format_call("numerical_gradient", ("f = lambda v: np.sum(np.exp(v))", x32))
    out = _float64_array(call, impl.numerical_gradient(_sum_exp, x32), (3,))
    assert_close(out, np.exp(x32.astype(np.float64)), call=call, rtol=1e-6, atol=1e-8,
                 because="perturb a float64 copy of a float32 x: in float32, 1.5 + 1e-5 is off by ~1% of the step.")


# =========================================================================== mlp_loss_and_grads


def _oracle_mlp_loss(params: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray) -> float:
    """Mean softmax cross-entropy of the 2-layer ReLU MLP, written out directly (never the code under test)."""
    logits = np.maximum(x @ params["W1"] + params["b1"], 0.0) @ params["W2"] + params["b2"]
    top = logits.max(axis=1, keepdims=True)
    lse = top[:, 0] + np.log(np.exp(logits - top).sum(axis=1))
    return float(np.mean(lse - logits[np.arange(len(y)), y]))


@st.composite
def _mlp_problems(draw):
    n, d, h, c = (draw(st.integers(1, 5), label=name) for name in "NDHC")
    rng = np.random.default_rng(draw(seeds, label="seed"))
    params = {
        "W1": rng.standard_normal((d, h)) * 0.5,
        "b1": rng.standard_normal(h) * 0.1,
        "W2": rng.standard_normal((h, c)) * 0.5,
        "b2": rng.standard_normal(c) * 0.1,
    }
    x = rng.standard_normal((n, d))
    y = rng.integers(0, c, size=n)
    # Central differences across the ReLU kink are meaningless: keep every pre-activation away from 0.
    assume(np.min(np.abs(x @ params["W1"] + params["b1"])) > 1e-3)
    # Central differences resolve an entry only to about 1e-11 (the loss's rounding / eps), so an entry near
    # 1e-7 would fail the 1e-6 relative test even for a correct gradient: keep every nonzero entry above 1e-4.
    grads = _oracle_mlp_grads(params, x, y)
    assume(all(np.all((g == 0) | (np.abs(g) > 1e-4)) for g in grads.values()))
    return params, x, y


def _mlp_call(params: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray) -> str:
    shapes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in params.items())
    return f"mlp_loss_and_grads(params with {shapes}, x of shape {x.shape}, y = {y.tolist()})"


def _oracle_mlp_grads(params: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
    """The gradients in closed form, for inputs where central differences cannot be used (a pre-activation
    exactly at the ReLU kink, logits 1e3 apart). The ReLU's derivative at 0 is 0, as the docstring says."""
    z1 = x @ params["W1"] + params["b1"]
    h = np.maximum(z1, 0.0)
    logits = h @ params["W2"] + params["b2"]
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    dlogits = e / e.sum(axis=1, keepdims=True)
    dlogits[np.arange(len(y)), y] -= 1.0
    dlogits /= len(y)
    dz1 = (dlogits @ params["W2"].T) * (z1 > 0)
    return {"W1": x.T @ dz1, "b1": dz1.sum(axis=0), "W2": h.T @ dlogits, "b2": dlogits.sum(axis=0)}


def _loss_and_grads(impl, params: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray):
    """Call mlp_loss_and_grads; check the inputs come back unchanged and the result has the documented form."""
    call = _mlp_call(params, x, y)
    pristine = ({k: v.copy() for k, v in params.items()}, x.copy(), y.copy())
    result = impl.mlp_loss_and_grads(params, x, y)
    assert isinstance(result, tuple | list) and len(result) == 2, (
        f"Called {call}. Returned {describe(result)}, expected a pair (loss, grads)."
    )
    for name, before in pristine[0].items():
        _assert_untouched(call, f"params[{name!r}]", before, params[name])
    _assert_untouched(call, "x", pristine[1], x)
    _assert_untouched(call, "y", pristine[2], y)
    loss, grads = result
    assert isinstance(loss, float), f"Called {call}. Returned loss {describe(loss)}, expected a Python float."
    assert isinstance(grads, dict) and set(grads) == set(params), (
        f"Called {call}. Returned gradients {describe(grads)}, expected a dict with the keys {sorted(params)}."
    )
    for name, grad in grads.items():
        grad = np.asarray(grad)
        assert grad.shape == params[name].shape, (
            f"Called {call}. The gradient for {name} has shape {grad.shape}; it must have the shape of {name}, "
            f"{params[name].shape}."
        )
        assert np.all(np.isfinite(grad)), (
            f"Called {call}. The gradient for {name} holds non-finite values {grad[~np.isfinite(grad)][:4]}; every "
            "gradient of a finite loss is finite (a division by the ReLU mask, or by 0, gives inf or nan)."
        )
    return loss, grads


@pytest.mark.exercise("mlp_loss_and_grads")
@given(st.integers(1, 5), st.integers(1, 5), st.integers(1, 5), seeds)
def test_linear_forward_is_affine(impl, n, d, h, seed):
    rng = np.random.default_rng(seed)
    x, W, b = rng.standard_normal((n, d)), rng.standard_normal((d, h)), rng.standard_normal(h)
    assert_close(impl.linear_forward(x, W, b), x @ W + b, call=format_call("linear_forward", (x, W, b)),
                 because="linear_forward(x, W, b) = x @ W + b, shape (N, H), the bias added to every row.")


@pytest.mark.exercise("mlp_loss_and_grads")
@given(st.integers(1, 5), st.integers(1, 5), st.integers(1, 5), seeds)
def test_linear_backward_matches_central_differences(impl, n, d, h, seed):
    rng = np.random.default_rng(seed)
    x, W, b, dout = (rng.standard_normal(s) for s in ((n, d), (d, h), (h,), (n, h)))
    call = format_call("linear_backward", (dout, x, W))
    pristine = {"dout": dout.copy(), "x": x.copy(), "W": W.copy()}
    grads = impl.linear_backward(dout, x, W)
    assert isinstance(grads, tuple | list) and len(grads) == 3, (
        f"Called {call}. Returned {describe(grads)}, expected the three gradients (dx, dW, db)."
    )
    for name, after in (("dout", dout), ("x", x), ("W", W)):
        _assert_untouched(call, name, pristine[name], after)
    dx, dW, db = grads

    # L = sum(dout * (x @ W + b)) has exactly dout as its gradient with respect to the layer's output.
    def loss(x_=x, W_=W, b_=b):
        return float(np.sum(dout * (x_ @ W_ + b_)))

    # L is linear in each argument, so central differences have no truncation error at all; a large step
    # keeps the rounding error (~1e-16 |L| / eps) far below the smallest gradient entries.
    numeric = {
        "x": central_difference(lambda v: loss(x_=v), x, eps=1e-3),
        "W": central_difference(lambda v: loss(W_=v), W, eps=1e-3),
        "b": central_difference(lambda v: loss(b_=v), b, eps=1e-3),
    }
    for name, analytic in (("x", dx), ("W", dW), ("b", db)):
        assert_gradient(analytic, numeric[name], argument=name, call=call)


@pytest.mark.exercise("mlp_loss_and_grads")
@settings(max_examples=30)
@given(_mlp_problems())
def test_mlp_gradients_match_central_differences(impl, problem):
    params, x, y = problem
    call = _mlp_call(params, x, y)
    loss, grads = _loss_and_grads(impl, params, x, y)
    assert_close(loss, _oracle_mlp_loss(params, x, y), call=call, rtol=1e-9, atol=1e-12,
                 because="the loss is the *mean* over the batch of -log softmax(logits)[y].")
    for name in ("W2", "b2", "W1", "b1"):

        def loss_of(value, name=name):
            return _oracle_mlp_loss({**params, name: value}, x, y)

        # eps 1e-5: truncation (~eps^2) and rounding (~1e-16 / eps) errors both stay near 1e-11.
        assert_gradient(grads[name], central_difference(loss_of, params[name], eps=1e-5), argument=name, call=call)


@pytest.mark.exercise("mlp_loss_and_grads")
def test_mlp_known_values(impl):
    # Hand-checkable: with zero second-layer weights the logits are b2 for every example.
    params = {"W1": np.array([[1.0, -1.0]]), "b1": np.zeros(2), "W2": np.zeros((2, 3)), "b2": np.zeros(3)}
    x, y = np.array([[2.0], [-1.0]]), np.array([0, 2])
    loss, grads = _loss_and_grads(impl, params, x, y)
    call = _mlp_call(params, x, y)
    assert_close(loss, np.log(3.0), call=call, because="uniform logits over 3 classes give cross-entropy log 3.")
    # dlogits = (1/3 - onehot) / 2; h = [[2, 0], [0, 1]]; dW2 = h.T @ dlogits
    dlogits = (np.full((2, 3), 1 / 3) - np.eye(3)[y]) / 2
    assert_close(grads["b2"], dlogits.sum(axis=0), call=call,
                 because="db2 sums (softmax - onehot) / N over the batch: divide by N once, not twice.")
    assert_close(grads["W2"], np.array([[2.0, 0.0], [0.0, 1.0]]).T @ dlogits, call=call,
                 because="dW2 = h.T @ dlogits, with h the ReLU output (negative pre-activations zeroed).")
    for name in ("W1", "b1"):
        assert_close(grads[name], np.zeros_like(params[name]), call=call,
                     because="W2 = 0 blocks every path back to the first layer: dh = dlogits @ W2.T = 0.")


@pytest.mark.exercise("mlp_loss_and_grads")
def test_mlp_relu_kink_and_confident_wrong_answers(impl):
    # Example 0 has x = 0 and b1 = 0: both hidden units sit exactly at the kink z1 = 0, where the docstring
    # says no gradient flows (mask z1 > 0). Example 1 has one active unit and one inactive one.
    params = {"W1": np.array([[1.0, -1.0]]), "b1": np.zeros(2),
              "W2": np.array([[1.0, -2.0, 0.5], [0.5, 1.0, -1.0]]), "b2": np.array([0.1, 0.0, -0.1])}
    x, y = np.array([[0.0], [2.0]]), np.array([1, 0])
    # Logits 1e3 apart in some rows only: example 0 of the second problem is confidently wrong (its true class
    # scores 2000 below the best: -log p = 2000, where softmax underflows to 0 and log(0) = -inf), example 1
    # is uniform, example 2 confidently right.
    confident = {"W1": np.array([[1.0, -1.0]]), "b1": np.zeros(2),
                 "W2": np.array([[1e3, -1e3, 0.0], [0.0, 0.0, 0.0]]), "b2": np.zeros(3)}
    x2, y2 = np.array([[1.0], [-1.0], [0.5]]), np.array([1, 2, 0])
    for p, xs, ys, why in (
        (params, x, y, "at z1 == 0 exactly the ReLU passes no gradient: mask with z1 > 0, not z1 >= 0."),
        (confident, x2, y2, "a logit gap of 1e3 must give a finite loss (about 2000 for that example): "
                                   "use log_softmax, not log(softmax), which is log(0) = -inf there."),
    ):
        call = _mlp_call(p, xs, ys)
        loss, grads = _loss_and_grads(impl, p, xs, ys)
        assert_close(loss, _oracle_mlp_loss(p, xs, ys), call=call, rtol=1e-9, atol=1e-12, because=why)
        for name, expected in _oracle_mlp_grads(p, xs, ys).items():
            assert_close(grads[name], expected, call=f"{call}, gradient {name}", rtol=1e-9, atol=1e-12, because=why)


# =========================================================================== CharVocab


@pytest.mark.exercise("CharVocab")
@given(st.text(min_size=1, max_size=40), st.data())
def test_charvocab_round_trips(impl, text, data):
    vocab = impl.CharVocab.from_text(text)
    chars = sorted(set(text))
    s = data.draw(st.text(alphabet=st.sampled_from(chars), max_size=40), label="s")
    ids = _int64_ids(f"CharVocab.from_text({text!r}).encode({s!r})", vocab.encode(s), len(s))
    back = vocab.decode(ids)
    assert back == s, (
        f"vocab = CharVocab.from_text({text!r}); vocab.decode(vocab.encode({s!r})) returned {back!r}, expected {s!r}."
    )
    back = vocab.decode(int(i) for i in ids.tolist())
    assert back == s, (
        f"vocab = CharVocab.from_text({text!r}); vocab.decode(a generator of the ids of {s!r}) returned {back!r}, "
        f"expected {s!r}. decode takes any iterable; a generator can be walked only once."
    )


@pytest.mark.exercise("CharVocab")
@given(st.text(min_size=0, max_size=40))
@example(text="hello world this is machine learning")
def test_charvocab_ids_follow_code_point_order(impl, text):
    vocab = impl.CharVocab.from_text(text)
    chars = sorted(set(text))
    assert len(vocab) == len(chars), (
        f"len(CharVocab.from_text({text!r})) is {len(vocab)}; the text has {len(chars)} distinct characters."
    )
    order = vocab.decode(np.arange(len(chars)))
    assert order == "".join(chars), (
        f"CharVocab.from_text({text!r}) gives ids in the order {order!r}; expected code-point order "
        f"{''.join(chars)!r}. list(set(text)) has no fixed order (it changes with PYTHONHASHSEED in every "
        "new process); sorted(set(text)) does."
    )
    expected_ids = [chars.index(ch) for ch in text]
    assert_close(np.asarray(vocab.encode(text), dtype=np.int64).reshape(-1), np.array(expected_ids, dtype=np.int64),
                 call=f"CharVocab.from_text({text!r}).encode({text!r})",
                 because="id i is the i-th distinct character in code-point order.")


_VOCAB_TEXT = "hello world this is machine learning: ÀÉÎ, 123!?"
_VOCAB_SCRIPT = """
import importlib, importlib.util, json, sys
module_name, qualname, path, text = sys.argv[1:5]
try:
    module = importlib.import_module(module_name)
except ImportError:
    spec = importlib.util.spec_from_file_location("_kata_under_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
cls = module
for part in qualname.split("."):
    cls = getattr(cls, part)
vocab = cls.from_text(text)
print(json.dumps({"order": [vocab.decode([i]) for i in range(len(vocab))],
                  "ids": [int(i) for i in vocab.encode(text)]}))
"""


def _int64_ids(call: str, ids, n: int) -> np.ndarray:
    """Assert that ``ids`` is an int64 NumPy array of n ids (the documented type of ``encode``)."""
    assert isinstance(ids, np.ndarray) and ids.shape == (n,) and ids.dtype == np.int64, (
        f"Called {call}. Returned {describe(ids)}; expected an int64 NumPy array of shape ({n},), one id per "
        "character (int64 even when empty: np.array([]) alone is float64)."
    )
    return ids


def _vocab_in_fresh_processes(cls: type, text: str, hash_seeds: tuple[str, ...]) -> dict[str, dict]:
    """Build ``cls.from_text(text)`` in one new interpreter per PYTHONHASHSEED, all running at once."""
    module = sys.modules[cls.__module__]
    path = getattr(module, "__file__", "") or ""
    here = os.getcwd()
    env_path = os.pathsep.join([here, *[p for p in sys.path if isinstance(p, str) and p]])
    procs = {
        seed: subprocess.Popen(
            [sys.executable, "-c", _VOCAB_SCRIPT, cls.__module__, cls.__qualname__, path, text],
            cwd=here, env={**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": env_path},
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, encoding="utf-8",
        )
        for seed in hash_seeds
    }
    results = {}
    for seed, proc in procs.items():
        out, err = proc.communicate(timeout=40)
        if proc.returncode != 0:
            tail = "\n".join(err.strip().splitlines()[-6:])
            pytest.fail(f"CharVocab.from_text({text!r}) failed in a fresh Python process "
                        f"(PYTHONHASHSEED={seed}):\n{tail}", pytrace=False)
        results[seed] = json.loads(out.strip().splitlines()[-1])
    return results


@pytest.mark.exercise("CharVocab")
def test_charvocab_is_the_same_in_every_process(impl):
    text = _VOCAB_TEXT
    here = impl.CharVocab.from_text(text)
    mine = {"order": [here.decode([i]) for i in range(len(here))], "ids": [int(i) for i in here.encode(text)]}
    # Two fixed, different hash seeds: with them list(set(text)) is known to give two different orders.
    for seed, theirs in _vocab_in_fresh_processes(impl.CharVocab, text, ("1", "2")).items():
        assert theirs == mine, (
            f"CharVocab.from_text({text!r}) gives ids in the order {''.join(mine['order'])!r} in this process but "
            f"{''.join(theirs['order'])!r} in a fresh one with PYTHONHASHSEED={seed}. The order of a set of "
            "strings changes with the per-process hash seed (the learning path's list(set(text)) bug): the ids a "
            "model was trained with must not change in the next run. Sort the characters."
        )
    assert "".join(mine["order"]) == "".join(sorted(set(text))), (
        f"CharVocab.from_text({text!r}) orders its characters as {''.join(mine['order'])!r}; expected code-point "
        f"order {''.join(sorted(set(text)))!r}."
    )


@pytest.mark.exercise("CharVocab")
@given(st.text(min_size=1, max_size=20), st.characters())
@example(text="abc", unknown="z")
@example(text="abc", unknown="\n")
def test_charvocab_unknown_character_raises_key_error(impl, text, unknown):
    assume(unknown not in text)
    vocab = impl.CharVocab.from_text(text)
    s = text[: len(text) // 2] + unknown + text[len(text) // 2:]
    call = f"CharVocab.from_text({text!r}).encode({s!r})"
    try:
        ids = vocab.encode(s)
    except KeyError as err:
        message = str(err.args[0]) if err.args else ""
        assert unknown in message or repr(unknown) in message, (
            f"Called {call}. It raised KeyError({message!r}), which does not name the unknown character "
            f"{unknown!r}; name it so the caller knows what to add or clean."
        )
    else:
        pytest.fail(f"Called {call}. Returned {describe(ids)}; {unknown!r} is not in the vocabulary, so it must "
                    "raise KeyError naming it (never map it silently to some id).", pytrace=False)


@pytest.mark.exercise("CharVocab")
@pytest.mark.parametrize("bad", [-1, 3, 99])
def test_charvocab_decode_rejects_unknown_ids(impl, bad):
    vocab = impl.CharVocab.from_text("cab")
    call = f"CharVocab.from_text('cab').decode([0, {bad}])"
    try:
        text = vocab.decode([0, bad])
    except KeyError as err:
        message = str(err.args[0]) if err.args else ""
        assert re.search(rf"(?<![\d.]){re.escape(str(bad))}(?!\d)", message), (
            f"Called {call}. It raised KeyError({message!r}), which does not name the id {bad}."
        )
    else:
        pytest.fail(f"Called {call}. Returned {text!r}; id {bad} is outside 0..2, so it must raise KeyError "
                    "naming it (a Python list index would wrap -1 silently to the last character).", pytrace=False)


@pytest.mark.exercise("CharVocab")
def test_charvocab_constructor_keeps_the_given_order(impl):
    chars = ["b", "a", "c"]
    vocab = impl.CharVocab(chars)
    assert chars == ["b", "a", "c"], f"CharVocab(['b', 'a', 'c']) changed its argument to {chars!r}."
    assert len(vocab) == 3, f"len(CharVocab(['b', 'a', 'c'])) is {len(vocab)}, expected 3."
    ids = _int64_ids("CharVocab(['b', 'a', 'c']).encode('abc')", vocab.encode("abc"), 3)
    assert_close(ids, np.array([1, 0, 2]), call="CharVocab(['b', 'a', 'c']).encode('abc')",
                 because="CharVocab(chars) gives chars[i] the id i.")
    back = impl.CharVocab(("b", "a", "c")).decode([0, 1, 2])
    assert back == "bac", f"CharVocab(('b', 'a', 'c')).decode([0, 1, 2]) returned {back!r}, expected 'bac' (a tuple)."
    for call, empty in (("CharVocab.from_text('')", impl.CharVocab.from_text("")),
                        ("CharVocab([])", impl.CharVocab([]))):
        assert len(empty) == 0 and empty.decode([]) == "", f"{call} must be an empty vocabulary: len 0, decode([]) ''."
        _int64_ids(f"{call}.encode('')", empty.encode(""), 0)
    _int64_ids("CharVocab.from_text('abc').encode('')", impl.CharVocab.from_text("abc").encode(""), 0)


@pytest.mark.exercise("CharVocab")
@pytest.mark.parametrize(("chars", "offending"), [
    (["x", "Q", "y", "Q"], "Q"),  # a duplicate would make two ids decode to the same character
    (["a", "bc"], "bc"),
    (["a", 7], "7"),
    (["a", ""], None),  # the empty string: nothing visible to name
], ids=["duplicate", "two characters", "not a string", "empty string"])
def test_charvocab_constructor_rejects_bad_entries(impl, chars, offending):
    call = f"CharVocab({chars!r})"
    try:
        vocab = impl.CharVocab(chars)
    except ValueError as err:
        assert offending is None or offending in str(err), (
            f"Called {call}. It raised ValueError({str(err)!r}), which does not name the offending entry "
            f"{offending!r}; name it so the caller can find it."
        )
        return
    pytest.fail(f"Called {call}. Returned a vocabulary of length {len(vocab)} instead of raising ValueError: every "
                "entry must be a string of exactly one character, and no character may appear twice.", pytrace=False)


@pytest.mark.exercise("CharVocab")
def test_charvocabs_are_independent(impl):
    first = impl.CharVocab.from_text("cab")
    impl.CharVocab.from_text("xyz ab")
    impl.CharVocab(["q"])
    call = "first = CharVocab.from_text('cab'); CharVocab.from_text('xyz ab'); CharVocab(['q']); first"
    assert len(first) == 3, f"Called {call}. len(first) is {len(first)}, expected 3: a later vocabulary changed it."
    ids = _int64_ids(f"{call}.encode('cab')", first.encode("cab"), 3)
    assert_close(ids, np.array([2, 0, 1]), call=f"{call}.encode('cab')",
                 because="building other vocabularies must not change this one (keep the tables on the instance).")
    try:
        leaked = first.encode("x")
    except KeyError:
        return
    pytest.fail(f"Called {call}.encode('x'). Returned {describe(leaked)}: 'x' belongs to another vocabulary, so this "
                "one must raise KeyError (tables shared between instances leak characters).", pytrace=False)
