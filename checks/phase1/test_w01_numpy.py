"""Checks for w01_numpy."""

import numpy as np
import pytest
from hypothesis import given

from checks import strategies as kst
from checks.numerics import assert_close, compare_with_reference, format_call

pytestmark = pytest.mark.kata("w01_numpy")


@pytest.mark.exercise("softmax")
@given(kst.arrays_and_axes(bound=1e4))
def test_softmax_matches_reference(impl, reference, array_axis):
    x, axis = array_axis
    compare_with_reference(impl, reference, "softmax", x, axis=axis)


@pytest.mark.exercise("softmax")
@given(kst.arrays_and_axes(bound=1e4))
def test_softmax_sums_to_one(impl, array_axis):
    x, axis = array_axis
    out = impl.softmax(x, axis=axis)
    assert_close(out.sum(axis=axis), np.ones(np.delete(x.shape, axis)), call=format_call("softmax", (x,), {"axis": axis}),
                 because="probabilities along the axis must sum to 1.")
