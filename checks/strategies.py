"""Shared hypothesis strategies, NumPy only (torch strategies live in ``checks/torch_strategies.py``).

Strategies are nouns: ``shapes()``, ``float_arrays()``. Coupled draws (an array and an axis of it,
two matrices that share a dimension) are ``@composite`` strategies so that shrinking keeps them valid.
"""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp


def shapes(min_dims: int = 1, max_dims: int = 3, min_side: int = 1, max_side: int = 6) -> st.SearchStrategy:
    return hnp.array_shapes(min_dims=min_dims, max_dims=max_dims, min_side=min_side, max_side=max_side)


def finite_floats(bound: float = 1e3) -> st.SearchStrategy[float]:
    return st.floats(-bound, bound, allow_nan=False, allow_infinity=False, width=64)


def float_arrays(shape=None, bound: float = 1e3, dtype=np.float64) -> st.SearchStrategy[np.ndarray]:
    """Arrays of finite floats in [-bound, bound]; ``shape`` may be a tuple or a strategy."""
    return hnp.arrays(dtype, shape if shape is not None else shapes(), elements=finite_floats(bound))


@st.composite
def arrays_and_axes(draw, bound: float = 1e3, min_dims: int = 1, max_dims: int = 3):
    """An array and a valid axis of it, negative axes included."""
    array = draw(float_arrays(shapes(min_dims=min_dims, max_dims=max_dims), bound=bound))
    axis = draw(st.integers(-array.ndim, array.ndim - 1))
    return array, axis
