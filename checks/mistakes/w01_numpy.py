"""Catalogued mistakes and correct variants for w01_numpy."""

import numpy as np

from checks.mistakes import mistake, variant


@mistake("softmax", "exponentiates without subtracting the max first, so exp overflows to inf and inf/inf is nan")
def softmax_without_max(x, axis=-1):
    e = np.exp(np.asarray(x, dtype=np.float64))
    return e / e.sum(axis=axis, keepdims=True)


@variant("softmax", "computes exp(x - logsumexp(x)) instead of dividing by the sum")
def softmax_via_logsumexp(x, axis=-1):
    x = np.asarray(x, dtype=np.float64)
    m = x.max(axis=axis, keepdims=True)
    return np.exp(x - m - np.log(np.exp(x - m).sum(axis=axis, keepdims=True)))
