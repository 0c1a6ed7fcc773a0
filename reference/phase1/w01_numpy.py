"""Reference solutions for w01_numpy (Weeks 1-2: Python & NumPy). NumPy only: never import torch here."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import numpy as np

# --------------------------------------------------------------------------- softmax family


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax of ``x`` along ``axis``."""
    x = np.asarray(x, dtype=np.float64)
    # exp(x - max) never overflows (the largest term is exp(0) = 1) and the shift cancels in the ratio.
    # keepdims=True keeps the reduced axis as size 1 so the max broadcasts back along the right axis.
    shifted = x - np.max(x, axis=axis, keepdims=True)
    e = np.exp(shifted)
    return e / np.sum(e, axis=axis, keepdims=True)


def logsumexp(x: np.ndarray, axis: int = -1, keepdims: bool = False) -> np.ndarray:
    """log(sum(exp(x))) along ``axis`` without overflow."""
    x = np.asarray(x, dtype=np.float64)
    m = np.max(x, axis=axis, keepdims=True)
    # log sum exp(x) = m + log sum exp(x - m); every exp(x - m) <= 1 and the largest is exactly 1,
    # so the sum lies in [1, n] and its log is finite.
    out = m + np.log(np.sum(np.exp(x - m), axis=axis, keepdims=True))
    return out if keepdims else np.squeeze(out, axis=axis)


def log_softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """log(softmax(x)) along ``axis``, computed as x - logsumexp(x) so it never takes log(0)."""
    x = np.asarray(x, dtype=np.float64)
    return x - logsumexp(x, axis=axis, keepdims=True)


# --------------------------------------------------------------------------- array utilities


def one_hot(indices: np.ndarray, num_classes: int) -> np.ndarray:
    """Float one-hot encoding: shape ``indices.shape + (num_classes,)``."""
    indices = np.asarray(indices)
    if indices.size and not np.issubdtype(indices.dtype, np.integer):
        raise ValueError(f"indices must be integers, got an array of dtype {indices.dtype}")
    indices = indices.astype(np.int64)
    # Validate before indexing: numpy would silently wrap a negative index to the end of the row.
    bad = indices[(indices < 0) | (indices >= num_classes)]
    if bad.size:
        index = int(bad[0])
        raise ValueError(f"index {index} is out of range for num_classes={num_classes} (valid: 0..{num_classes - 1})")
    out = np.zeros(indices.shape + (num_classes,), dtype=np.float64)
    # put a 1 at position indices[...] of the last axis of every row
    np.put_along_axis(out, indices[..., None], 1.0, axis=-1)
    return out


def standardize(x: np.ndarray, axis: int = 0, eps: float = 1e-8) -> np.ndarray:
    """z-scores along ``axis``: (x - mean) / (std + eps), population std (ddof=0)."""
    x = np.asarray(x, dtype=np.float64)
    mean = np.mean(x, axis=axis, keepdims=True)
    # ddof=0: we describe this very sample, so that its z-scores have std exactly 1 (up to eps).
    std = np.std(x, axis=axis, keepdims=True)
    # eps keeps a constant column (std 0) at 0 instead of 0/0 = nan.
    return (x - mean) / (std + eps)


def pairwise_sq_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances between the rows of ``a`` (N, D) and ``b`` (M, D): shape (N, M)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    # ||a_i - b_j||^2 = ||a_i||^2 + ||b_j||^2 - 2 a_i . b_j: one matrix product, no (N, M, D) temporary.
    a_sq = np.sum(a * a, axis=1)[:, None]  # (N, 1)
    b_sq = np.sum(b * b, axis=1)[None, :]  # (1, M)
    d = a_sq + b_sq - 2.0 * (a @ b.T)  # (N, M)
    # The subtraction cancels catastrophically for nearby points and can go slightly negative.
    return np.maximum(d, 0.0)


# --------------------------------------------------------------------------- gradients


def numerical_gradient(f: Callable[[np.ndarray], float], x: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    """Central-difference gradient of the scalar function ``f`` at ``x``; ``x`` is left untouched."""
    # Work on a private float64 copy: the caller's array is never written, not even temporarily.
    xp = np.array(x, dtype=np.float64)
    grad = np.zeros_like(xp)
    for index in np.ndindex(xp.shape):
        original = xp[index]
        xp[index] = original + eps
        plus = float(f(xp))
        xp[index] = original - eps
        minus = float(f(xp))
        xp[index] = original  # restore the saved value (adding eps back would leave rounding residue)
        # central differences: error O(eps^2) instead of the forward difference's O(eps)
        grad[index] = (plus - minus) / (2.0 * eps)
    return grad


def linear_forward(x: np.ndarray, W: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Affine layer: x (N, D) @ W (D, H) + b (H,) -> (N, H)."""
    return x @ W + b


def linear_backward(dout: np.ndarray, x: np.ndarray, W: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gradients of an affine layer given dL/dout (N, H): returns (dx (N, D), dW (D, H), db (H,))."""
    dx = dout @ W.T  # each x[n] feeds every output through W
    dW = x.T @ dout  # sums the per-example outer products x[n] dout[n]^T over the batch
    db = np.sum(dout, axis=0)  # b is added to every row, so its gradient sums over the batch
    return dx, dW, db


def mlp_loss_and_grads(
    params: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray
) -> tuple[float, dict[str, np.ndarray]]:
    """Mean softmax cross-entropy of a 2-layer ReLU MLP and the gradient of every parameter."""
    W1, b1, W2, b2 = params["W1"], params["b1"], params["W2"], params["b2"]
    y = np.asarray(y)
    n = x.shape[0]
    z1 = linear_forward(x, W1, b1)  # (N, H)
    h = np.maximum(z1, 0.0)  # (N, H)
    logits = linear_forward(h, W2, b2)  # (N, C)
    logp = log_softmax(logits, axis=1)  # stable: no log(0) for confident wrong answers
    loss = -float(np.mean(logp[np.arange(n), y]))
    # d(mean CE)/d logits = (softmax - onehot) / N: the 1/N of the mean appears exactly once, here.
    dlogits = np.exp(logp)
    dlogits[np.arange(n), y] -= 1.0
    dlogits /= n
    dh, dW2, db2 = linear_backward(dlogits, h, W2)
    dz1 = dh * (z1 > 0)  # ReLU passes the gradient only where it was active
    _, dW1, db1 = linear_backward(dz1, x, W1)
    return loss, {"W1": dW1, "b1": db1, "W2": dW2, "b2": db2}


# --------------------------------------------------------------------------- text


class CharVocab:
    """A character vocabulary: id i <-> the i-th character, ids in a fixed, documented order."""

    def __init__(self, chars: Sequence[str]) -> None:
        chars = list(chars)
        for ch in chars:
            if not isinstance(ch, str) or len(ch) != 1:
                raise ValueError(f"every entry must be a single character, got {ch!r}")
        if len(set(chars)) != len(chars):
            duplicate = next(ch for i, ch in enumerate(chars) if ch in chars[:i])
            raise ValueError(f"character {duplicate!r} appears twice")
        self.itos = chars
        self.stoi = {ch: i for i, ch in enumerate(chars)}

    @classmethod
    def from_text(cls, text: str) -> CharVocab:
        # sorted(): a set's iteration order depends on the per-process string hash seed, so the learning path's
        # list(set(text)) gives different ids in every run; sorting by code point never does.
        return cls(sorted(set(text)))

    def encode(self, text: str) -> np.ndarray:
        ids = []
        for ch in text:
            if ch not in self.stoi:
                raise KeyError(f"character {ch!r} is not in the vocabulary")
            ids.append(self.stoi[ch])
        return np.array(ids, dtype=np.int64)

    def decode(self, ids: Iterable[int]) -> str:
        out = []
        for i in ids:
            i = int(i)
            # a plain list index would silently wrap -1 to the last character
            if not 0 <= i < len(self.itos):
                raise KeyError(f"id {i} is not in the vocabulary (valid: 0..{len(self.itos) - 1})")
            out.append(self.itos[i])
        return "".join(out)

    def __len__(self) -> int:
        return len(self.itos)
