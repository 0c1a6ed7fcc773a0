"""Catalogued mistakes and correct variants for w01_numpy.

Each mistake is a plausible wrong answer a learner writes; at least one check of its exercise must
reject it. Each variant is a different but correct answer; every check must accept it.
"""

import warnings

import numpy as np

from checks.harness.catalogue import mistake, mutant, variant
from reference.phase1.w01_numpy import CharVocab

# --------------------------------------------------------------------------- softmax


@mistake("softmax", "exponentiates without subtracting the max first, so exp overflows to inf and inf/inf is nan")
def softmax_without_max(x, axis=-1):
    e = np.exp(np.asarray(x, dtype=np.float64))
    return e / e.sum(axis=axis, keepdims=True)


@mistake("softmax", "ignores the axis argument and always normalises the last axis")
def softmax_wrong_axis(x, axis=-1):
    x = np.asarray(x, dtype=np.float64)
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


@mistake("softmax", "subtracts the max of the whole array instead of each slice's max, so a slice far below it "
                    "underflows to 0/0 = nan")
def softmax_global_max(x, axis=-1):
    x = np.asarray(x, dtype=np.float64)
    e = np.exp(x - x.max())
    return e / e.sum(axis=axis, keepdims=True)


@mistake("softmax", "subtracts the max in place (x -= ...): np.asarray of a float64 array is that very array, so "
                    "the caller's x is overwritten")
def softmax_in_place(x, axis=-1):
    x = np.asarray(x, dtype=np.float64)
    x -= x.max(axis=axis, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=axis, keepdims=True)


@mutant("softmax", "keeps the input's dtype: a float32 input gives a float32 result, computed with float32 rounding",
        replace={"np.asarray(x, dtype=np.float64)": "np.asarray(x)"})
def softmax_keeps_float32():
    """Built from the reference with its float64 conversion removed."""


@mutant("softmax", "normalises axis 0 by default instead of the last axis",
        replace={"axis: int = -1": "axis: int = 0"})
def softmax_default_axis_0():
    """Built from the reference with the default axis changed."""


@variant("softmax", "computes exp(x - logsumexp(x)) instead of dividing by the sum")
def softmax_via_logsumexp(x, axis=-1):
    x = np.asarray(x, dtype=np.float64)
    m = x.max(axis=axis, keepdims=True)
    return np.exp(x - m - np.log(np.exp(x - m).sum(axis=axis, keepdims=True)))


@variant("softmax", "moves the axis to the end, works on the last axis, and moves it back")
def softmax_moveaxis(x, axis=-1):
    moved = np.moveaxis(np.asarray(x, dtype=np.float64), axis, -1)
    e = np.exp(moved - moved.max(axis=-1)[..., None])
    return np.moveaxis(e / e.sum(axis=-1)[..., None], -1, axis)


# --------------------------------------------------------------------------- log_softmax / logsumexp


@mistake("log_softmax", "takes log(softmax(x)): softmax underflows to 0 for large gaps and log(0) is -inf")
def log_softmax_of_softmax(x, axis=-1):
    x = np.asarray(x, dtype=np.float64)
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    with np.errstate(divide="ignore"):
        return np.log(e / e.sum(axis=axis, keepdims=True))


@mistake("logsumexp", "computes log(sum(exp(x))) directly, so exp overflows to inf for x above ~709")
def logsumexp_without_max(x, axis=-1, keepdims=False):
    with np.errstate(over="ignore"):
        return np.log(np.sum(np.exp(np.asarray(x, dtype=np.float64)), axis=axis, keepdims=keepdims))


@mistake("logsumexp", "adds back the max computed with keepdims=True even when keepdims=False, so the reduced "
                      "axis stays (broadcast) in the result")
def logsumexp_keeps_axis(x, axis=-1, keepdims=False):
    x = np.asarray(x, dtype=np.float64)
    m = x.max(axis=axis, keepdims=True)
    return m + np.log(np.sum(np.exp(x - m), axis=axis, keepdims=keepdims))


@mistake("log_softmax", "subtracts logsumexp in place (x -= ...), overwriting the caller's float64 array")
def log_softmax_in_place(x, axis=-1):
    x = np.asarray(x, dtype=np.float64)
    m = x.max(axis=axis, keepdims=True)
    x -= m + np.log(np.exp(x - m).sum(axis=axis, keepdims=True))
    return x


@mutant("logsumexp", "keeps the input's dtype: a float32 input gives a float32 result",
        replace={"np.asarray(x, dtype=np.float64)": "np.asarray(x)"})
def logsumexp_keeps_float32():
    """Built from the reference with its float64 conversion removed."""


@mutant("logsumexp", "reduces axis 0 by default instead of the last axis", replace={"axis: int = -1": "axis: int = 0"})
def logsumexp_default_axis_0():
    """Built from the reference with the default axis changed."""


@variant("logsumexp", "reduces with np.logaddexp (pairwise stable log(exp(a) + exp(b))) instead of shifting by the max")
def logsumexp_logaddexp(x, axis=-1, keepdims=False):
    return np.logaddexp.reduce(np.asarray(x, dtype=np.float64), axis=axis, keepdims=keepdims)


@variant("log_softmax", "shifts by the max and subtracts log of the shifted sum, without calling logsumexp")
def log_softmax_shifted(x, axis=-1):
    shifted = np.asarray(x, dtype=np.float64) - np.max(x, axis=axis, keepdims=True)
    return shifted - np.log(np.sum(np.exp(shifted), axis=axis, keepdims=True))


# --------------------------------------------------------------------------- one_hot


def _eye_rows(indices, num_classes):
    return np.eye(num_classes)[np.asarray(indices, dtype=np.int64)]


@mistake("one_hot", "checks only the upper bound and indexes np.eye(C), which silently wraps a negative index "
                    "(-1 becomes C - 1)")
def one_hot_wraps_negative(indices, num_classes):
    indices = np.asarray(indices)
    if indices.size and not np.issubdtype(indices.dtype, np.integer):
        raise ValueError(f"indices must be integers, got {indices.dtype}")
    if np.any(indices >= num_classes):
        raise ValueError(f"index {int(indices[indices >= num_classes][0])} >= num_classes={num_classes}")
    return _eye_rows(indices, num_classes)


@mistake("one_hot", "tests index > num_classes instead of >=, so index == num_classes slips through and NumPy "
                    "raises IndexError instead of a ValueError naming it")
def one_hot_off_by_one_bound(indices, num_classes):
    indices = np.asarray(indices)
    if indices.size and not np.issubdtype(indices.dtype, np.integer):
        raise ValueError(f"indices must be integers, got {indices.dtype}")
    bad = indices[(indices < 0) | (indices > num_classes)]
    if bad.size:
        raise ValueError(f"index {int(bad[0])} is out of range")
    return _eye_rows(indices, num_classes)


@mistake("one_hot", "flattens the indices, so a (B, T) batch gives (B*T, C) instead of (B, T, C)")
def one_hot_flattens(indices, num_classes):
    indices = np.asarray(indices)
    if indices.size and not np.issubdtype(indices.dtype, np.integer):
        raise ValueError(f"indices must be integers, got {indices.dtype}")
    bad = indices[(indices < 0) | (indices >= num_classes)]
    if bad.size:
        raise ValueError(f"index {int(bad[0])} is out of range")
    return _eye_rows(indices.reshape(-1), num_classes)


@mistake("one_hot", "builds float32 rows (np.eye(C, dtype=np.float32)) instead of float64")
def one_hot_float32(indices, num_classes):
    indices = np.asarray(indices)
    if indices.size and not np.issubdtype(indices.dtype, np.integer):
        raise ValueError(f"indices must be integers, got {indices.dtype}")
    bad = indices[(indices < 0) | (indices >= num_classes)]
    if bad.size:
        raise ValueError(f"index {int(bad[0])} is out of range")
    return np.eye(num_classes, dtype=np.float32)[indices.astype(np.int64)]


@mistake("one_hot", "rejects only float dtypes, so a boolean array is taken as indices 0 and 1")
def one_hot_accepts_bools(indices, num_classes):
    indices = np.asarray(indices)
    if indices.size and indices.dtype.kind == "f":
        raise ValueError(f"indices must be integers, got {indices.dtype}")
    indices = indices.astype(np.int64)
    bad = indices[(indices < 0) | (indices >= num_classes)]
    if bad.size:
        raise ValueError(f"index {int(bad[0])} is out of range")
    return _eye_rows(indices, num_classes)


@mistake("one_hot", "checks the dtype even when the array is empty, so one_hot([], C) (NumPy makes [] float64) raises")
def one_hot_rejects_empty_list(indices, num_classes):
    indices = np.asarray(indices)
    if not np.issubdtype(indices.dtype, np.integer):
        raise ValueError(f"indices must be integers, got {indices.dtype}")
    bad = indices[(indices < 0) | (indices >= num_classes)]
    if bad.size:
        raise ValueError(f"index {int(bad[0])} is out of range")
    return _eye_rows(indices, num_classes)


@variant("one_hot", "compares the indices against np.arange(C) by broadcasting and casts the booleans to float")
def one_hot_broadcast_compare(indices, num_classes):
    indices = np.asarray(indices)
    if indices.size and indices.dtype.kind not in "iu":
        raise ValueError(f"one_hot needs integer indices, not {indices.dtype}")
    for value in indices.reshape(-1):
        if not 0 <= value < num_classes:
            raise ValueError(f"class index {value} not in [0, {num_classes})")
    return (indices[..., None] == np.arange(num_classes)).astype(np.float64)


@variant("one_hot", "validates with np.any and builds the rows of np.eye(C) for the flattened indices, then reshapes")
def one_hot_eye_reshape(indices, num_classes):
    indices = np.asarray(indices)
    if indices.size == 0:
        return np.zeros(indices.shape + (num_classes,))
    if indices.dtype == bool or not np.issubdtype(indices.dtype, np.integer):
        raise ValueError(f"expected integer class ids, got dtype {indices.dtype}")
    if np.any(indices < 0) or np.any(indices >= num_classes):
        offending = indices[(indices < 0) | (indices >= num_classes)].ravel()[0]
        raise ValueError(f"{offending} is not a class id in range({num_classes})")
    return np.eye(num_classes)[indices.ravel()].reshape(indices.shape + (num_classes,))


# --------------------------------------------------------------------------- standardize


@mistake("standardize", "uses the sample std (ddof=1), so the z-scores have std sqrt(N/(N-1)), not 1")
def standardize_ddof1(x, axis=0, eps=1e-8):
    x = np.asarray(x, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "Degrees of freedom <= 0" for a single row
        return (x - x.mean(axis=axis, keepdims=True)) / (x.std(axis=axis, ddof=1, keepdims=True) + eps)


@mistake("standardize", "ignores the axis argument and always standardises along axis 0")
def standardize_wrong_axis(x, axis=0, eps=1e-8):
    x = np.asarray(x, dtype=np.float64)
    return (x - x.mean(axis=0, keepdims=True)) / (x.std(axis=0, keepdims=True) + eps)


@mistake("standardize", "leaves eps out, so a constant column gives 0/0 = nan (or +-1 from rounding)")
def standardize_without_eps(x, axis=0, eps=1e-8):
    x = np.asarray(x, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return (x - x.mean(axis=axis, keepdims=True)) / x.std(axis=axis, keepdims=True)


@mistake("standardize", "reduces without keepdims, so for axis=1 the per-row statistics broadcast across columns")
def standardize_without_keepdims(x, axis=0, eps=1e-8):
    x = np.asarray(x, dtype=np.float64)
    return (x - x.mean(axis=axis)) / (x.std(axis=axis) + eps)


@mistake("standardize", "puts eps inside the square root (sqrt(var + eps)), which shrinks slices whose std is "
                        "near sqrt(eps) = 1e-4")
def standardize_eps_in_sqrt(x, axis=0, eps=1e-8):
    x = np.asarray(x, dtype=np.float64)
    return (x - x.mean(axis=axis, keepdims=True)) / np.sqrt(x.var(axis=axis, keepdims=True) + eps)


@mistake("standardize", "centres and scales in place (x -= mean; x /= std + eps), overwriting the caller's array")
def standardize_in_place(x, axis=0, eps=1e-8):
    x = np.asarray(x, dtype=np.float64)
    std = x.std(axis=axis, keepdims=True)
    x -= x.mean(axis=axis, keepdims=True)
    x /= std + eps
    return x


@mistake("standardize", "ignores the eps argument and always adds 1e-8")
def standardize_ignores_eps(x, axis=0, eps=1e-8):
    x = np.asarray(x, dtype=np.float64)
    return (x - x.mean(axis=axis, keepdims=True)) / (x.std(axis=axis, keepdims=True) + 1e-8)


@mutant("standardize", "keeps the input's dtype: a float32 input gives a float32 result",
        replace={"np.asarray(x, dtype=np.float64)": "np.asarray(x)"})
def standardize_keeps_float32():
    """Built from the reference with its float64 conversion removed."""


@variant("standardize", "computes mean and population std from explicit sums over the axis")
def standardize_by_sums(x, axis=0, eps=1e-8):
    x = np.asarray(x, dtype=np.float64)
    n = x.shape[axis]
    centered = x - np.sum(x, axis=axis, keepdims=True) / n
    std = np.sqrt(np.sum(centered * centered, axis=axis, keepdims=True) / n)
    return centered / (std + eps)


# --------------------------------------------------------------------------- pairwise_sq_distances


def _expanded(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return (a * a).sum(axis=1)[:, None] + (b * b).sum(axis=1)[None, :] - 2.0 * a @ b.T


@mistake("pairwise_sq_distances", "does not clip: ||a||^2 + ||b||^2 - 2 a.b cancels for close points and "
                                  "rounding leaves small negative values")
def pairwise_unclipped(a, b):
    return _expanded(a, b)


@mistake("pairwise_sq_distances", "returns the transposed (M, N) matrix: rows must follow a, columns b")
def pairwise_transposed(a, b):
    return np.maximum(_expanded(a, b), 0.0).T


@mistake("pairwise_sq_distances", "takes the square root: returns distances, not squared distances")
def pairwise_sqrt(a, b):
    return np.sqrt(np.maximum(_expanded(a, b), 0.0))


@mistake("pairwise_sq_distances", "forgets the factor 2 of the cross term: ||a||^2 + ||b||^2 - a.b")
def pairwise_missing_two(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return np.maximum((a * a).sum(axis=1)[:, None] + (b * b).sum(axis=1)[None, :] - a @ b.T, 0.0)


@mutant("pairwise_sq_distances", "keeps the inputs' dtype: float32 points give float32 distances (and float32 "
                                 "cancellation, far worse than float64's)",
        replace={"np.asarray(a, dtype=np.float64)": "np.asarray(a)",
                 "np.asarray(b, dtype=np.float64)": "np.asarray(b)"})
def pairwise_keeps_float32():
    """Built from the reference with its float64 conversions removed."""


@variant("pairwise_sq_distances", "broadcasts the differences to (N, M, D) and sums their squares (exact, more memory)")
def pairwise_broadcast_diff(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    diff = a[:, None, :] - b[None, :, :]
    return np.einsum("nmd,nmd->nm", diff, diff)


# --------------------------------------------------------------------------- numerical_gradient


@mistake("numerical_gradient", "uses forward differences (f(x + eps) - f(x)) / eps: error O(eps), not O(eps^2)")
def numerical_gradient_forward(f, x, eps=1e-5):
    xp = np.array(x, dtype=np.float64)
    base = float(f(xp))
    grad = np.zeros_like(xp)
    for index in np.ndindex(xp.shape):
        original = xp[index]
        xp[index] = original + eps
        grad[index] = (float(f(xp)) - base) / eps
        xp[index] = original
    return grad


@mistake("numerical_gradient", "perturbs the caller's x in place and never restores it: x is left modified")
def numerical_gradient_modifies_x(f, x, eps=1e-5):
    grad = np.zeros(np.shape(x))
    for index in np.ndindex(np.shape(x)):
        x[index] += eps
        plus = float(f(x))
        x[index] -= 2 * eps
        minus = float(f(x))
        grad[index] = (plus - minus) / (2 * eps)
    return grad


@mistake("numerical_gradient", "restores x[i] by adding eps back instead of saving the original, so rounding "
                               "leaves x slightly changed (0.1 + 1e-5 - 2e-5 + 1e-5 != 0.1)")
def numerical_gradient_restores_by_adding(f, x, eps=1e-5):
    grad = np.zeros(np.shape(x))
    for index in np.ndindex(np.shape(x)):
        x[index] += eps
        plus = float(f(x))
        x[index] -= 2 * eps
        minus = float(f(x))
        x[index] += eps
        grad[index] = (plus - minus) / (2 * eps)
    return grad


@mistake("numerical_gradient", "loops over range(len(x)) and perturbs whole rows of a 2-D x at once")
def numerical_gradient_first_axis_only(f, x, eps=1e-5):
    xp = np.array(x, dtype=np.float64)
    grad = np.zeros_like(xp)
    for i in range(len(xp)):
        original = xp[i].copy()
        xp[i] = original + eps
        plus = float(f(xp))
        xp[i] = original - eps
        minus = float(f(xp))
        xp[i] = original
        grad[i] = (plus - minus) / (2 * eps)
    return grad


@mistake("numerical_gradient", "divides the central difference by eps instead of 2 eps: every entry is doubled")
def numerical_gradient_divides_by_eps(f, x, eps=1e-5):
    xp = np.array(x, dtype=np.float64)
    grad = np.zeros_like(xp)
    for index in np.ndindex(xp.shape):
        original = xp[index]
        xp[index] = original + eps
        plus = float(f(xp))
        xp[index] = original - eps
        minus = float(f(xp))
        xp[index] = original
        grad[index] = (plus - minus) / eps
    return grad


@mistake("numerical_gradient", "ignores the eps argument and always steps by 1e-5")
def numerical_gradient_fixed_step(f, x, eps=1e-5):
    xp = np.array(x, dtype=np.float64)
    grad = np.zeros_like(xp)
    for index in np.ndindex(xp.shape):
        original = xp[index]
        xp[index] = original + 1e-5
        plus = float(f(xp))
        xp[index] = original - 1e-5
        minus = float(f(xp))
        xp[index] = original
        grad[index] = (plus - minus) / 2e-5
    return grad


@mutant("numerical_gradient", "uses the default step 1e-6 instead of the documented 1e-5",
        replace={"eps: float = 1e-5": "eps: float = 1e-6"})
def numerical_gradient_default_1e6():
    """Built from the reference with the default step changed."""


@mutant("numerical_gradient", "perturbs a copy in x's own dtype: for a float32 x the steps are rounded to float32 "
                              "(x + 1e-5 is off by ~1%) and the result is float32",
        replace={"np.array(x, dtype=np.float64)": "np.array(x)"})
def numerical_gradient_keeps_float32():
    """Built from the reference with its float64 copy replaced by a same-dtype copy."""


@mistake("numerical_gradient", "promotes x with np.atleast_1d, so a 0-D x gives a gradient of shape (1,), not ()")
def numerical_gradient_atleast_1d(f, x, eps=1e-5):
    xp = np.atleast_1d(np.array(x, dtype=np.float64))
    grad = np.zeros_like(xp)
    for index in np.ndindex(xp.shape):
        original = xp[index]
        xp[index] = original + eps
        plus = float(f(xp))
        xp[index] = original - eps
        minus = float(f(xp))
        xp[index] = original
        grad[index] = (plus - minus) / (2 * eps)
    return grad


@variant("numerical_gradient", "never writes to any array: evaluates f(x + eps e_i) and f(x - eps e_i) with a "
                               "fresh basis array per index, over the flattened view")
def numerical_gradient_basis_vectors(f, x, eps=1e-5):
    x = np.asarray(x, dtype=np.float64)
    flat = np.zeros(x.size)
    for k in range(x.size):
        e = np.zeros(x.size)
        e[k] = eps
        step = e.reshape(x.shape)
        flat[k] = (float(f(x + step)) - float(f(x - step))) / (2 * eps)
    return flat.reshape(x.shape)


@variant("numerical_gradient", "perturbs two fresh copies per entry through .flat (C order), never one array back "
                               "and forth")
def numerical_gradient_flat_copies(f, x, eps=1e-5):
    base = np.array(x, dtype=np.float64)
    grad = np.empty_like(base)
    for k in range(base.size):
        up, down = base.copy(), base.copy()
        up.flat[k] += eps
        down.flat[k] -= eps
        grad.flat[k] = (f(up) - f(down)) / (2 * eps)
    return grad


# --------------------------------------------------------------------------- mlp_loss_and_grads


def _softmax_rows(logits):
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _forward(params, x, y, *, stable=True):
    z1 = x @ params["W1"] + params["b1"]
    h = np.maximum(z1, 0.0)
    logits = h @ params["W2"] + params["b2"]
    probs = _softmax_rows(logits)
    n = x.shape[0]
    if stable:
        shifted = logits - logits.max(axis=1, keepdims=True)
        log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    else:
        with np.errstate(divide="ignore"):
            log_probs = np.log(probs)  # log(0) = -inf once a probability underflows
    loss = -float(np.mean(log_probs[np.arange(n), y]))
    return z1, h, probs, loss


def _backward(params, x, y, z1, h, probs, *, relu_mask=">", batch_divisions=1):
    n = x.shape[0]
    dlogits = probs.copy()
    dlogits[np.arange(n), y] -= 1.0
    dlogits /= n**batch_divisions
    dW2, db2 = h.T @ dlogits, dlogits.sum(axis=0)
    dh = dlogits @ params["W2"].T
    masks = {">": z1 > 0, ">=": z1 >= 0, None: np.ones_like(z1, dtype=bool)}
    dz1 = dh * masks[relu_mask]
    dW1, db1 = x.T @ dz1, dz1.sum(axis=0)
    return {"W1": dW1, "b1": db1, "W2": dW2, "b2": db2}


@mistake("mlp_loss_and_grads", "forgets the ReLU mask in the backward pass: gradient flows through inactive units")
def mlp_missing_relu_mask(params, x, y):
    z1, h, probs, loss = _forward(params, x, y)
    return loss, _backward(params, x, y, z1, h, probs, relu_mask=None)


@mistake("mlp_loss_and_grads", "masks the ReLU gradient with z1 >= 0, so it flows through units sitting exactly at 0")
def mlp_relu_mask_at_zero(params, x, y):
    z1, h, probs, loss = _forward(params, x, y)
    return loss, _backward(params, x, y, z1, h, probs, relu_mask=">=")


@mistake("mlp_loss_and_grads", "takes the loss as log(softmax(logits)): a confident wrong answer underflows to "
                               "log(0) = -inf and the loss is inf")
def mlp_log_of_softmax(params, x, y):
    z1, h, probs, loss = _forward(params, x, y, stable=False)
    return loss, _backward(params, x, y, z1, h, probs)


@mistake("mlp_loss_and_grads", "divides by the batch size twice (once in dlogits, once more in the weight "
                               "gradients): every gradient is 1/N too small")
def mlp_divides_by_batch_twice(params, x, y):
    z1, h, probs, loss = _forward(params, x, y)
    return loss, _backward(params, x, y, z1, h, probs, batch_divisions=2)


@mistake("mlp_loss_and_grads", "returns the summed cross-entropy (and its gradients) instead of the mean")
def mlp_sum_not_mean(params, x, y):
    z1, h, probs, loss = _forward(params, x, y)
    grads = _backward(params, x, y, z1, h, probs)
    n = x.shape[0]
    return loss * n, {k: g * n for k, g in grads.items()}


@mistake("linear_backward", "returns dout itself as the bias gradient instead of summing it over the batch")
def linear_backward_bias_not_summed(dout, x, W):
    return dout @ W.T, x.T @ dout, dout


@mistake("linear_backward", "computes dW as dout.T @ x, the transpose of the gradient (shape (H, D))")
def linear_backward_transposed_dW(dout, x, W):
    return dout @ W.T, dout.T @ x, dout.sum(axis=0)


@mistake("linear_forward", "forgets the bias: returns x @ W")
def linear_forward_without_bias(x, W, b):
    return x @ W


@variant("linear_backward", "writes every product with np.einsum")
def linear_backward_einsum(dout, x, W):
    return np.einsum("nh,dh->nd", dout, W), np.einsum("nd,nh->dh", x, dout), np.einsum("nh->h", dout)


@variant("mlp_loss_and_grads", "masks the ReLU gradient with h > 0 (the same units as z1 > 0)")
def mlp_masks_with_h(params, x, y):
    z1, h, probs, loss = _forward(params, x, y)
    return loss, _backward(params, x, y, h, h, probs)


@variant("mlp_loss_and_grads", "self-contained: softmax probabilities, a one-hot matrix and np.where for the ReLU")
def mlp_self_contained(params, x, y):
    n = x.shape[0]
    num_classes = params["W2"].shape[1]
    z1 = x @ params["W1"] + params["b1"]
    h = np.where(z1 > 0, z1, 0.0)
    logits = h @ params["W2"] + params["b2"]
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    targets = np.eye(num_classes)[y]
    loss = float(-(targets * log_probs).sum() / n)
    dlogits = (np.exp(log_probs) - targets) / n
    dz1 = np.where(z1 > 0, dlogits @ params["W2"].T, 0.0)
    return loss, {"W1": x.T @ dz1, "b1": dz1.sum(axis=0), "W2": h.T @ dlogits, "b2": dlogits.sum(axis=0)}


# --------------------------------------------------------------------------- CharVocab


@mistake("CharVocab", "orders the characters as list(set(text)) (the learning path's bug): the order depends "
                      "on the per-process hash seed, so ids change from run to run")
class CharVocabListSet(CharVocab):
    @classmethod
    def from_text(cls, text):
        return cls(list(set(text)))


@mistake("CharVocab", "maps an unknown character silently to id 0 instead of raising KeyError")
class CharVocabUnknownIsZero(CharVocab):
    def encode(self, text):
        return np.array([self.stoi.get(ch, 0) for ch in text], dtype=np.int64)


@mistake("CharVocab", "decodes with a plain list index, so id -1 wraps silently to the last character and an id "
                      "past the end raises IndexError, not KeyError")
class CharVocabWrapsIds(CharVocab):
    def decode(self, ids):
        return "".join(self.itos[int(i)] for i in ids)


@mistake("CharVocab", "sorts the text without removing duplicates: len(vocab) counts repeated characters")
class CharVocabKeepsDuplicates(CharVocab):
    @classmethod
    def from_text(cls, text):
        vocab = cls.__new__(cls)
        vocab.itos = sorted(text)  # sorted, but every repeated character gets an id of its own
        vocab.stoi = {ch: i for i, ch in enumerate(vocab.itos)}
        return vocab


@mistake("CharVocab", "encodes with np.array(ids) without a dtype: an empty text gives a float64 array")
class CharVocabEncodeDefaultDtype(CharVocab):
    def encode(self, text):
        for ch in text:
            if ch not in self.stoi:
                raise KeyError(f"character {ch!r} is not in the vocabulary")
        return np.array([self.stoi[ch] for ch in text])


@mistake("CharVocab", "checks only for duplicates, so an entry of several characters (or none) is accepted")
class CharVocabAcceptsLongEntries(CharVocab):
    def __init__(self, chars):
        chars = list(chars)
        if len(set(chars)) != len(chars):
            raise ValueError(f"duplicate characters in {chars!r}")
        self.itos = chars
        self.stoi = {ch: i for i, ch in enumerate(chars)}


@mistake("CharVocab", "keeps the tables in class attributes, so every vocabulary built adds to one shared table")
class CharVocabSharedTables(CharVocab):
    itos: list[str] = []  # class attributes: one table shared by every instance (that is the mistake)
    stoi: dict[str, int] = {}

    def __init__(self, chars):
        chars = list(chars)
        if any(not isinstance(ch, str) or len(ch) != 1 for ch in chars) or len(set(chars)) != len(chars):
            raise ValueError(f"need distinct single characters, got {chars!r}")
        for ch in chars:
            if ch not in self.stoi:
                self.stoi[ch] = len(self.itos)
                self.itos.append(ch)


@mistake("CharVocab", "validates the ids in one pass and decodes them in a second one: a generator is used up by "
                      "the first pass and decodes to ''")
class CharVocabIteratesIdsTwice(CharVocab):
    def decode(self, ids):
        for i in ids:
            if not 0 <= int(i) < len(self.itos):
                raise KeyError(f"id {int(i)} is not in the vocabulary")
        return "".join(self.itos[int(i)] for i in ids)


@variant("CharVocab", "stores the alphabet as one string: encode with str.find, decode by indexing the string")
class CharVocabAlphabetString:
    def __init__(self, chars):
        seen = []
        for ch in chars:
            if not isinstance(ch, str) or len(ch) != 1:
                raise ValueError(f"not a single character: {ch!r}")
            if ch in seen:
                raise ValueError(f"{ch!r} is listed twice")
            seen.append(ch)
        self.alphabet = "".join(seen)

    @classmethod
    def from_text(cls, text):
        return cls("".join(sorted(set(text))))

    def encode(self, text):
        ids = np.empty(len(text), dtype=np.int64)
        for k, ch in enumerate(text):
            ids[k] = self.alphabet.find(ch)
            if ids[k] < 0:
                raise KeyError(f"no id for {ch!r}")
        return ids

    def decode(self, ids):
        out = ""
        for i in ids:
            if not 0 <= i < len(self.alphabet):
                raise KeyError(f"no character for id {i}")
            out += self.alphabet[int(i)]
        return out

    def __len__(self):
        return len(self.alphabet)


@variant("CharVocab", "keeps the alphabet as an array of code points; encodes with np.searchsorted, no dict")
class CharVocabSearchsorted:
    def __init__(self, chars):
        chars = list(chars)
        if any(not isinstance(c, str) or len(c) != 1 for c in chars) or len(set(chars)) != len(chars):
            raise ValueError(f"need distinct single characters, got {chars!r}")
        self._codes = np.array([ord(c) for c in chars], dtype=np.int64)  # id -> code point
        self._order = np.argsort(self._codes, kind="stable")  # ids sorted by code point
        self._sorted = self._codes[self._order]

    @classmethod
    def from_text(cls, text):
        codes = np.unique(np.array([ord(c) for c in text], dtype=np.int64))  # np.unique sorts
        return cls([chr(int(c)) for c in codes])

    def encode(self, text):
        query = np.array([ord(c) for c in text], dtype=np.int64)
        if not len(self._sorted):
            if len(query):
                raise KeyError(f"unknown character {text[0]!r}")
            return query
        pos = np.minimum(np.searchsorted(self._sorted, query), len(self._sorted) - 1)
        found = self._sorted[pos] == query
        if not found.all():
            raise KeyError(f"unknown character {chr(int(query[~found][0]))!r}")
        return self._order[pos].astype(np.int64)

    def decode(self, ids):
        ids = np.array([int(i) for i in ids], dtype=np.int64)
        outside = (ids < 0) | (ids >= len(self._codes))
        if outside.any():
            raise KeyError(f"unknown id {int(ids[outside][0])}")
        return "".join(chr(int(c)) for c in self._codes[ids])

    def __len__(self):
        return int(self._codes.size)
