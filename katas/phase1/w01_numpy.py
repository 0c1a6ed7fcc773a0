"""Kata w01_numpy (Weeks 1-2): Python & NumPy.

Eight small exercises that every later kata leans on: a stable softmax and its log form, one-hot
encodings, z-scores, pairwise distances with broadcasting, numerical gradients, hand-written
backpropagation through a two-layer MLP, and a deterministic character vocabulary.

Rules for the whole module:
- NumPy only. Do not import torch (or any other deep-learning library) here.
- No Python loops over array elements where a vectorised expression exists (``numerical_gradient``
  and ``CharVocab`` are the exceptions: they loop by nature).
- Work in float64 unless told otherwise; the checks compare with tight tolerances. A float32 input
  still gives a float64 result (``np.asarray(x, dtype=np.float64)`` first).
- Never modify an argument in place: the caller's arrays come back unchanged (``x -= ...`` on the
  caller's float64 array writes into it).

Run the checks of one exercise with ``kata check w01_numpy.softmax``; ``kata hint w01_numpy.softmax``
gives a staged hint.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import numpy as np

# --------------------------------------------------------------------------- softmax family


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax of ``x`` along ``axis``.

    softmax(x)_i = exp(x_i) / sum_j exp(x_j), where i and j run along ``axis`` and every other axis
    is independent (each row, column or slice is normalised on its own).

    Args:
        x: float array of any shape (at least 1-D).
        axis: the axis to normalise over; negative axes count from the end, as everywhere in NumPy.

    Returns:
        A float64 array of the same shape as ``x``: non-negative, summing to 1 along ``axis``.

    Rules:
        - It must be finite for inputs as large as ``|x| = 1e4``: ``np.exp(1000.0)`` is already ``inf``
          and ``inf / inf`` is ``nan``. Softmax is shift invariant (softmax(x + c) == softmax(x) for a
          constant c), so you can subtract something from each slice first that keeps exp in range.
        - Normalise along ``axis`` only, never over the whole array.

    Example:
        >>> softmax(np.array([1.0, 2.0, 3.0]))
        array([0.09003057, 0.24472847, 0.66524096])
        >>> softmax(np.array([[1000.0, 1000.0], [0.0, -1e4]]), axis=1)
        array([[0.5, 0.5],
               [1. , 0. ]])
    """
    # TODO(w01_numpy.softmax): write your implementation here.
    raise NotImplementedError("w01_numpy.softmax is not implemented yet (try `kata hint w01_numpy.softmax`)")


def logsumexp(x: np.ndarray, axis: int = -1, keepdims: bool = False) -> np.ndarray:
    """log(sum(exp(x))) along ``axis``, without overflow (like ``scipy.special.logsumexp``).

    Args:
        x: finite float array of any shape (at least 1-D).
        axis: the axis to reduce.
        keepdims: keep the reduced axis with size 1 (handy for broadcasting back against ``x``).

    Returns:
        float64 array: ``x``'s shape without ``axis`` (or with it as size 1 when ``keepdims``).

    Rules:
        - Finite for ``|x|`` up to 1e4 (``np.log(np.sum(np.exp(x)))`` is ``inf`` already at x = 710).
        - The result is never smaller than ``max(x)`` along the axis, and never larger than
          ``max(x) + log(n)``.

    Example:
        >>> float(logsumexp(np.array([1000.0, 1000.0])))   # 1000 + log(2)
        1000.6931471805599
        >>> logsumexp(np.zeros((2, 3)), axis=1, keepdims=True).shape
        (2, 1)
    """
    # TODO(w01_numpy.log_softmax): write your implementation here.
    raise NotImplementedError("w01_numpy.logsumexp is not implemented yet (part of w01_numpy.log_softmax: try `kata hint w01_numpy.log_softmax`)")


def log_softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """log(softmax(x)) along ``axis``, computed stably.

    Args:
        x: finite float array of any shape (at least 1-D).
        axis: the axis to normalise over.

    Returns:
        float64 array of the shape of ``x``; every entry <= 0, and ``exp`` of it sums to 1 along ``axis``.

    Rules:
        - Do not take the log of a softmax: for large gaps softmax underflows to exactly 0 and log(0)
          is ``-inf``. For x = [0, 1e4] the answer is [-1e4, 0], not [-inf, 0].
        - Use ``logsumexp`` (the other half of this exercise).

    Example:
        >>> log_softmax(np.array([0.0, 1e4]))
        array([-10000.,      0.])
    """
    # TODO(w01_numpy.log_softmax): write your implementation here.
    raise NotImplementedError("w01_numpy.log_softmax is not implemented yet (try `kata hint w01_numpy.log_softmax`)")


# --------------------------------------------------------------------------- array utilities


def one_hot(indices: np.ndarray, num_classes: int) -> np.ndarray:
    """Float one-hot encoding of integer class indices.

    Args:
        indices: integer array of any shape (a list of ints is fine), every value in
            ``0 .. num_classes - 1``.
        num_classes: the number of classes C.

    Returns:
        float64 array of shape ``indices.shape + (C,)`` with a single 1.0 per row, at the position
        given by the index, and 0.0 elsewhere. ``argmax`` along the last axis gives ``indices`` back.

    Rules:
        - An index ``>= num_classes`` or ``< 0`` raises ``ValueError`` whose message names the index.
          Beware: NumPy fancy indexing (``np.eye(C)[indices]``) *silently wraps* a negative index
          (-1 becomes C - 1), which turns a bug upstream into a wrong label downstream.
        - A non-integer array (floats, booleans) raises ``ValueError`` as well; an empty array is fine
          (even an empty list, which NumPy makes a float64 array): the result has shape ``(0, C)``.

    Example:
        >>> one_hot(np.array([0, 2]), 3)
        array([[1., 0., 0.],
               [0., 0., 1.]])
        >>> one_hot(np.array([3]), 3)
        Traceback (most recent call last):
        ValueError: index 3 is out of range for num_classes=3 (valid: 0..2)
    """
    # TODO(w01_numpy.one_hot): write your implementation here.
    raise NotImplementedError("w01_numpy.one_hot is not implemented yet (try `kata hint w01_numpy.one_hot`)")


def standardize(x: np.ndarray, axis: int = 0, eps: float = 1e-8) -> np.ndarray:
    """z-scores along ``axis``: ``(x - mean) / (std + eps)``.

    With the default ``axis=0`` on an (N, D) data matrix, every column (feature) gets mean 0 and
    standard deviation 1.

    Args:
        x: float array of any shape (at least 1-D).
        axis: the axis along which mean and std are taken (negative axes allowed).
        eps: added to the standard deviation so that a constant column gives 0, not 0/0 = nan.

    Returns:
        float64 array of the shape of ``x``.

    Rules:
        - Use the *population* standard deviation (``ddof=0``, NumPy's default): we describe this very
          sample, and its z-scores then have std exactly 1 (up to eps). ``ddof=1`` (pandas' default!)
          gives std sqrt((N-1)/N).
        - The statistics of one slice along ``axis`` must broadcast back over that slice only
          (``keepdims=True`` is your friend for any axis other than 0).
        - eps goes *outside* the square root here: ``std + eps``. (LayerNorm in week 9 puts it inside.)

    Example:
        >>> standardize(np.array([[1.0, 5.0], [3.0, 5.0]]))   # column 0: mean 2, std 1; column 1 constant
        array([[-0.99999999,  0.        ],
               [ 0.99999999,  0.        ]])
    """
    # TODO(w01_numpy.standardize): write your implementation here.
    raise NotImplementedError("w01_numpy.standardize is not implemented yet (try `kata hint w01_numpy.standardize`)")


def pairwise_sq_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances between every row of ``a`` and every row of ``b``.

    out[i, j] = ||a[i] - b[j]||^2 = sum_k (a[i, k] - b[j, k])^2

    Args:
        a: (N, D) float array.
        b: (M, D) float array.

    Returns:
        (N, M) float64 array (row i belongs to a[i], column j to b[j]); never negative.

    Rules:
        - No Python loops: use broadcasting and a matrix product. Expanding the square,
          ||a_i - b_j||^2 = ||a_i||^2 + ||b_j||^2 - 2 a_i . b_j, needs just one ``a @ b.T``.
        - That expansion subtracts nearly equal large numbers when two points are close, and rounding
          can make the result slightly *negative* (e.g. -1e-9 for two identical rows). A squared
          distance is never negative: clip at 0.
        - A ``perf`` check (``pytest -m perf``) wants this at least 20x faster than a double loop at
          512 x 512 rows. Broadcasting the differences to an (N, M, D) array is correct too, but it is
          slower (and needs N * M * D memory): the matrix product is what gets you there.

    Example:
        >>> pairwise_sq_distances(np.array([[0.0, 0.0], [1.0, 1.0]]), np.array([[1.0, 0.0]]))
        array([[1.],
               [1.]])
    """
    # TODO(w01_numpy.pairwise_sq_distances): write your implementation here.
    raise NotImplementedError("w01_numpy.pairwise_sq_distances is not implemented yet (try `kata hint w01_numpy.pairwise_sq_distances`)")


# --------------------------------------------------------------------------- gradients


def numerical_gradient(f: Callable[[np.ndarray], float], x: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    """Gradient of the scalar function ``f`` at ``x`` by central differences.

    grad[i] = (f(x + eps e_i) - f(x - eps e_i)) / (2 eps), for every index i of ``x`` (any shape),
    where e_i is the array with a 1 at index i and 0 elsewhere.

    Args:
        f: takes an array shaped like ``x`` and returns a float.
        x: float array of any shape (0-D included).
        eps: the step.

    Returns:
        float64 array of the shape of ``x``.

    Rules:
        - Central, not forward differences: (f(x + eps) - f(x)) / eps has error O(eps) (about 1e-5
          here), the central form O(eps^2) (about 1e-10). The checks can tell them apart.
        - ``x`` must be exactly the same after the call, value for value. If you perturb an array in
          place, save the original entry and put it back; ``x[i] += eps`` ... ``x[i] -= 2 * eps`` ...
          ``x[i] += eps`` does not give the original float back. Simplest: perturb a copy.
        - Loop over every index of a multi-dimensional ``x`` (``np.ndindex(x.shape)``), not just
          ``range(len(x))``.

    Example:
        >>> numerical_gradient(lambda v: float(np.sum(v ** 2)), np.array([1.0, -2.0]))
        array([ 2., -4.])   # up to ~1e-10
    """
    # TODO(w01_numpy.numerical_gradient): write your implementation here.
    raise NotImplementedError("w01_numpy.numerical_gradient is not implemented yet (try `kata hint w01_numpy.numerical_gradient`)")


def linear_forward(x: np.ndarray, W: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Affine layer: ``x @ W + b``.

    Args:
        x: (N, D) inputs, one example per row.
        W: (D, H) weights.
        b: (H,) bias, added to every row.

    Returns:
        (N, H) outputs.
    """
    # TODO(w01_numpy.mlp_loss_and_grads): write your implementation here.
    raise NotImplementedError("w01_numpy.linear_forward is not implemented yet (part of w01_numpy.mlp_loss_and_grads: try `kata hint w01_numpy.mlp_loss_and_grads`)")


def linear_backward(dout: np.ndarray, x: np.ndarray, W: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Backward pass of ``linear_forward``: given dL/dout, return (dL/dx, dL/dW, dL/db).

    Args:
        dout: (N, H) gradient of the loss with respect to the layer's output.
        x: (N, D) the input the forward pass saw.
        W: (D, H) the weights the forward pass used.

    Returns:
        ``(dx, dW, db)`` with shapes (N, D), (D, H), (H,): each gradient has the shape of what it is
        the gradient of.

    Rules:
        - ``b`` was added to every row, so ``db`` collects (sums) the gradient of every row.
        - ``dW`` sums the contribution of every example: a matrix product does that for you.
        - Do not divide by N here: if the loss is a mean, its 1/N is already inside ``dout``.
    """
    # TODO(w01_numpy.mlp_loss_and_grads): write your implementation here.
    raise NotImplementedError("w01_numpy.linear_backward is not implemented yet (part of w01_numpy.mlp_loss_and_grads: try `kata hint w01_numpy.mlp_loss_and_grads`)")


def mlp_loss_and_grads(
    params: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray
) -> tuple[float, dict[str, np.ndarray]]:
    """Loss and gradients of a 2-layer ReLU MLP with softmax cross-entropy, by hand.

    The model::

        z1     = x @ W1 + b1          # (N, H)   linear_forward
        h      = max(z1, 0)           # (N, H)   ReLU
        logits = h @ W2 + b2          # (N, C)   linear_forward
        loss   = mean over n of -log softmax(logits[n])[y[n]]

    Args:
        params: ``{"W1": (D, H), "b1": (H,), "W2": (H, C), "b2": (C,)}``, float64. Do not modify it.
        x: (N, D) float64 inputs.
        y: (N,) integer class labels in ``0 .. C - 1``.

    Returns:
        ``(loss, grads)``: ``loss`` a Python float (the *mean* cross-entropy over the batch) and
        ``grads`` a dict with the same keys as ``params``, each gradient the shape of its parameter.

    Rules:
        - Backward, in reverse order: dlogits = (softmax(logits) - one_hot(y)) / N, then
          ``linear_backward`` through layer 2, then the ReLU (the gradient only flows where z1 > 0),
          then ``linear_backward`` through layer 1. At z1 == 0 exactly the ReLU passes nothing (its
          derivative there is taken as 0, as in PyTorch): mask with ``z1 > 0``, not ``z1 >= 0``.
        - The 1/N of the mean appears exactly once (in dlogits); dividing again anywhere else scales
          every gradient by 1/N too many.
        - Use your ``log_softmax`` (stable) for the loss: a confident wrong answer (a logit gap of
          1e3) must give a large finite loss, not ``inf``. Your ``softmax``, ``one_hot``,
          ``linear_forward`` and ``linear_backward`` are welcome too.
        - Do not modify ``params``, ``x`` or ``y``.
        - The checks compare every gradient with central differences in float64 (rel. error < 1e-6).
    """
    # TODO(w01_numpy.mlp_loss_and_grads): write your implementation here.
    raise NotImplementedError("w01_numpy.mlp_loss_and_grads is not implemented yet (try `kata hint w01_numpy.mlp_loss_and_grads`)")


# --------------------------------------------------------------------------- text


class CharVocab:
    """A character vocabulary, the learning path's week-1 text encoder made deterministic.

    The learning path builds it like this::

        chars = list(set(text))                          # the bug
        char_to_idx = {ch: i for i, ch in enumerate(chars)}

    ``set`` has no defined order: the order you see depends on the hash of each character, and Python
    salts string hashes with a random seed in every new process (``PYTHONHASHSEED``). So the same text
    gets *different ids in every run*: a model trained in one process decodes garbage in the next.
    Here the ids follow a fixed rule instead: ``from_text`` sorts the distinct characters by code
    point (``sorted(set(text))``), so the same text always gives the same vocabulary.

    Methods:
        ``CharVocab(chars)``: a vocabulary whose id i is ``chars[i]`` (given order kept; ``chars`` is
            any sequence, e.g. a list or a tuple, and is not modified). Every entry must be a string of
            exactly one character, with no duplicates: otherwise ``ValueError`` naming the offending
            entry (the non-character, or the character that appears twice).
        ``CharVocab.from_text(text)``: the distinct characters of ``text`` sorted by code point.
        ``encode(text)``: int64 array of ids, one per character (int64 even for an empty text,
            where ``np.array([])`` would be float64). A character that is not in the vocabulary raises
            ``KeyError`` naming it (never a silent 0).
        ``decode(ids)``: the string for an iterable of ids (a list, an int array, a generator). An id outside
            ``0 .. len(vocab) - 1`` raises ``KeyError`` naming the id (a list index would wrap -1).
        ``len(vocab)``: the number of distinct characters.

    Every vocabulary is independent: building a second one never changes the first (keep the tables
    on the instance, not in class attributes).

    Example:
        >>> vocab = CharVocab.from_text("hello")
        >>> len(vocab), vocab.decode(range(len(vocab)))
        (4, 'ehlo')
        >>> vocab.encode("hole")
        array([1, 3, 2, 0])
        >>> vocab.decode(vocab.encode("hole"))
        'hole'
    """

    def __init__(self, chars: Sequence[str]) -> None:
        # TODO(w01_numpy.CharVocab): write your implementation here.
        raise NotImplementedError("w01_numpy.CharVocab.__init__ is not implemented yet (try `kata hint w01_numpy.CharVocab`)")

    @classmethod
    def from_text(cls, text: str) -> CharVocab:
        """The vocabulary of ``text``: its distinct characters sorted by code point."""
        # TODO(w01_numpy.CharVocab): write your implementation here.
        raise NotImplementedError("w01_numpy.CharVocab.from_text is not implemented yet (try `kata hint w01_numpy.CharVocab`)")

    def encode(self, text: str) -> np.ndarray:
        """int64 ids of the characters of ``text``; ``KeyError`` naming an unknown character."""
        # TODO(w01_numpy.CharVocab): write your implementation here.
        raise NotImplementedError("w01_numpy.CharVocab.encode is not implemented yet (try `kata hint w01_numpy.CharVocab`)")

    def decode(self, ids: Iterable[int]) -> str:
        """The text of ``ids``; ``KeyError`` naming an id outside ``0 .. len(self) - 1``."""
        # TODO(w01_numpy.CharVocab): write your implementation here.
        raise NotImplementedError("w01_numpy.CharVocab.decode is not implemented yet (try `kata hint w01_numpy.CharVocab`)")

    def __len__(self) -> int:
        """The number of characters in the vocabulary."""
        # TODO(w01_numpy.CharVocab): write your implementation here.
        raise NotImplementedError("w01_numpy.CharVocab.__len__ is not implemented yet (try `kata hint w01_numpy.CharVocab`)")
