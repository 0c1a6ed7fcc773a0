"""Kata m09_edge (months 9-10 of the learning path: edge deployment and optimisation).

A model that runs on a phone or a laptop has to be small. You build the three classic tools for that:

1. ``quantize_int4_grouped`` and ``dequantize_int4_grouped`` - 4-bit weights with one scale per small group,
   two values packed into each byte (8x smaller than float32);
2. ``magnitude_prune`` - set the smallest weights of a model to zero, and keep them at zero while it trains;
3. ``distillation_loss`` - the loss that trains a small "student" model to imitate a large "teacher".

The learning path only names these topics ("model quantization and compression", "edge deployment and
optimization"); it has no code for them. The int4 format follows the int8 one of w23_deployment's
``quantize_int8``: symmetric scales from the largest magnitude, a range that stays symmetric, and scale 1 for
an all-zero block. Run ``kata check m09_edge`` to check your work.
"""

from __future__ import annotations

import math  # noqa: F401 - math.inf, for checking that a number is finite
import numbers  # noqa: F401 - isinstance(x, numbers.Integral) accepts Python and NumPy ints

import torch  # noqa: F401 - torch.round, torch.topk, torch.uint8 ...
import torch.nn.functional as F  # noqa: F401 - F.log_softmax, F.kl_div, F.cross_entropy
from torch import Tensor, nn


def quantize_int4_grouped(w: Tensor, group_size: int = 32) -> tuple[Tensor, Tensor]:
    """Quantise ``w`` to 4-bit integers, one scale per group, and pack two of them into each byte.

    Returns ``(packed, scale)``. The last dimension of ``w`` (size n) is cut into groups of ``group_size``
    consecutive values: group g of a row holds ``w[..., g * group_size:(g + 1) * group_size]``. Small groups
    keep one large weight from costing all the others their precision (a whole row would share its scale).

    - ``scale`` has shape (..., n // group_size), in ``w``'s dtype and on its device: for each group,
      max |w| / 7, so the group's largest weight maps to +-7. A group that is all zeros has max |w| = 0 and
      would divide 0 by 0: it gets scale 1.0 instead (and q = 0).
    - ``q`` = round(w / scale), which lies in -7 .. 7 (-8 is never produced: the range stays symmetric, as
      w23_deployment's int8 never uses -128). Round to the nearest integer (a tie may go either way): then
      every element's error is at most half a step, ``|q * scale - w| <= scale / 2`` for its group's scale,
      and a weight that is exactly 0 comes back as exactly 0. Divide in float32 at least
      (``torch.promote_types(w.dtype, torch.float32)``): a bfloat16 quotient keeps only 8 bits.
    - ``packed`` is ``torch.uint8`` of shape (..., n // 2), on ``w``'s device. Each value is stored as the
      4-bit number q + 8 (0 .. 15; so 8 means 0). Element 2j of a row goes into the LOW 4 bits of byte j and
      element 2j + 1 into its HIGH 4 bits: ``byte = (q[2j] + 8) | ((q[2j + 1] + 8) << 4)``. This order is
      part of the format: a file written by one program must be read by another.

    ``w`` is a floating point tensor (float32, float64, bfloat16, ...) with at least one dimension and any
    number of leading ones; it may be a transposed or sliced view, may have n = 0, and is not modified.
    ``ValueError`` (naming the offending value) when ``w`` is not floating point, is 0-dimensional, contains
    nan or inf, or when ``group_size`` is not a positive even int (a bool is not an int here; an even size
    makes each group fill whole bytes) or does not divide ``w.shape[-1]``.

    Example::

        >>> packed, scale = quantize_int4_grouped(torch.tensor([[0.0, 7.0, -7.0, 1.0]]), group_size=4)
        >>> packed, scale   # nibbles 8, 15, 1, 9: bytes 8 | 15 << 4 = 248 and 1 | 9 << 4 = 145
        (tensor([[248, 145]], dtype=torch.uint8), tensor([[1.]]))
    """
    # TODO(m09_edge.quantize_int4_grouped): write your implementation here.
    raise NotImplementedError("m09_edge.quantize_int4_grouped is not implemented yet (try `kata hint m09_edge.quantize_int4_grouped`)")


def dequantize_int4_grouped(packed: Tensor, scale: Tensor) -> Tensor:
    """Unpack ``packed`` (two 4-bit values per byte) and multiply each group by its scale.

    The inverse of ``quantize_int4_grouped``: ``packed`` is uint8 (..., n // 2) and ``scale`` is
    (..., G) with the same leading dimensions; the group size is implied, n // G. Returns the tensor
    (..., n) with ``out[..., j] = (nibble_j - 8) * scale[..., j // (n // G)]``, where nibble 2k is the low
    4 bits of byte k and nibble 2k + 1 its high 4 bits. Any byte is accepted, so a nibble 0 gives -8.
    The result has ``scale``'s dtype and device. Neither argument is modified.

    ``ValueError`` (naming the offending dtype or shapes) when ``packed`` is not uint8 (an int8 tensor shifts
    the high nibble in its sign bit), ``scale`` is not floating point, the leading dimensions differ, or n
    values do not split into G groups of an even size (for n = 0, G must be 0 too).

    Example::

        >>> dequantize_int4_grouped(torch.tensor([[248, 145]], dtype=torch.uint8), torch.tensor([[0.5]]))
        tensor([[ 0.0000,  3.5000, -3.5000,  0.5000]])
    """
    # TODO(m09_edge.quantize_int4_grouped): write your implementation here.
    raise NotImplementedError("m09_edge.dequantize_int4_grouped is not implemented yet (part of m09_edge.quantize_int4_grouped: try `kata hint m09_edge.quantize_int4_grouped`)")


def magnitude_prune(model: nn.Module, sparsity: float) -> dict[str, Tensor]:
    """Zero the smallest-magnitude weights of all ``nn.Linear`` layers of ``model`` together, and keep them zero.

    Which weights: the ``weight`` of every ``nn.Linear`` in ``model`` (its subclasses too). Biases, embeddings,
    LayerNorms and other parameters are never touched. A weight shared by two layers (an embedding tied to
    an output layer) is one tensor: it is counted and pruned once, under the name ``model.named_parameters()``
    gives it.

    How many: with N the number of those weights in all layers together, exactly ``k = round(sparsity * N)``
    of them are pruned (Python's ``round``, which sends a tie such as 2.5 to the even 2, as
    ``torch.nn.utils.prune`` does). Which ones: the k smallest |w| over ALL the layers at once ("global"
    pruning, like ``torch.nn.utils.prune.global_unstructured`` with ``L1Unstructured``), not k per layer:
    a layer of small weights may lose most of them. A weight that is already 0 is among the smallest. Among
    equal magnitudes at the threshold, any may be chosen, as long as exactly k are pruned.

    What it does, in place: the pruned entries are set to 0 under ``torch.no_grad()``, in the very
    ``Parameter`` objects of the model (an optimizer built earlier still holds them; their dtype, device and
    ``requires_grad`` stay). And each pruned weight gets a gradient hook
    (``param.register_hook(lambda grad: grad * mask)``) that zeroes the gradient of its pruned entries, so that
    training does not bring them back: after ``loss.backward()`` their gradient is exactly 0, and a step of an
    optimizer created after pruning (SGD with or without momentum, Adam, AdamW with weight decay) leaves them
    at exactly 0. The other entries get their usual gradient. A frozen weight (``requires_grad`` False, as in
    a model made ready for inference) is counted and pruned like the others but gets no hook: no gradient
    reaches it, and torch refuses a hook on a tensor that does not require grad.

    Returns ``{name: mask}`` for every pruned weight, in the order of ``model.named_parameters()``: a bool
    tensor of the weight's shape and device, True where the weight is kept, False where it was pruned (the
    convention of ``torch.nn.utils.prune``'s ``weight_mask``). So exactly k entries of all masks are False.
    A model without ``nn.Linear`` layers is left as it is, and the result is ``{}``.

    Calling it again prunes the model as it is then: the zeros of the first call are the smallest
    weights, so a larger ``sparsity`` prunes further (exactly round(sparsity * N) zeros in all), and the
    hooks of both calls stay, so a pruned weight never comes back.

    ``sparsity`` is a number from 0 (prune nothing) to 1 (prune every weight); anything else, nan or a bool is
    a ``ValueError`` naming the value. (Careful: ``torch.nn.utils.prune`` reads an int ``amount`` as a COUNT;
    here 1 means all of them.)

    Example::

        >>> model = nn.Sequential(nn.Linear(2, 2, bias=False), nn.ReLU(), nn.Linear(2, 1, bias=False))
        >>> with torch.no_grad():
        ...     model[0].weight.copy_(torch.tensor([[0.1, -2.0], [3.0, 0.5]]))
        ...     model[2].weight.copy_(torch.tensor([[-0.2, 1.0]]))
        >>> magnitude_prune(model, 0.5)   # N = 6, k = 3: 0.1, -0.2 and 0.5 go
        {'0.weight': tensor([[False,  True], [ True, False]]), '2.weight': tensor([[False,  True]])}
    """
    # TODO(m09_edge.magnitude_prune): write your implementation here.
    raise NotImplementedError("m09_edge.magnitude_prune is not implemented yet (try `kata hint m09_edge.magnitude_prune`)")


def distillation_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    temperature: float = 2.0,
    labels: Tensor | None = None,
    alpha: float = 0.5,
) -> Tensor:
    """The knowledge-distillation loss of Hinton et al.: match the teacher's softened probabilities.

    Both logits have the same shape (..., V): V classes (or vocabulary entries) in the last dimension and
    any number of leading dimensions, each position one "row" (a (B, T, V) language-model output has
    B * T rows; a (V,) vector is one row). With T = ``temperature``:

    - soften both: ``p_t = softmax(teacher_logits / T)`` and ``log p_s = log_softmax(student_logits / T)``
      over the last dimension. A higher T makes the teacher's distribution flatter, so the student also
      learns how the teacher ranks the wrong answers.
    - ``soft = T**2 * mean over rows of KL(p_t || p_s)``, where ``KL(p_t || p_s) = sum_v p_t (log p_t -
      log p_s)``. The direction matters: the teacher's distribution is the target. The factor T**2 keeps the
      gradients of this term the same size whatever T (softening by T shrinks them by 1 / T**2). For T = 1
      this is the plain KL divergence. It equals ``F.kl_div(log p_s, log p_t, log_target=True,
      reduction="batchmean") * T**2`` on logits reshaped to (N, V): without the reshape, "batchmean" would
      divide a (B, T, V) input by B only, and a (V,) input by V.
    - without ``labels`` (the default) the loss is ``soft``. With ``labels`` (class indices of dtype
      ``torch.long``, as ``F.cross_entropy`` wants, of the logits' shape without the last dimension) it is
      ``alpha * soft + (1 - alpha) * hard``, where ``hard`` is ``F.cross_entropy`` of the student's plain
      logits (temperature 1: the real task) against ``labels``, averaged over rows (a label of -100 is
      skipped, as ``F.cross_entropy`` does). ``alpha`` defaults to 0.5.

    The teacher is a fixed target: no gradient may reach ``teacher_logits``, even when it requires grad
    (detach it). The loss must be finite for any finite logits, even +-1e4 in some rows: work with
    log-probabilities (``log_softmax``), never ``log(softmax(x))``, which gives log 0 = -inf. The result is a
    0-dim tensor in the logits' dtype on their device; neither input is modified.

    ``ValueError`` (naming the offending value or shapes) when the two logits differ in shape, have no row or
    no class (a 0-dim tensor, or a size 0), when ``labels`` has the wrong shape, when ``temperature`` is not
    a positive finite number, or when ``alpha`` is not between 0 and 1 (a bool is not a number here).

    Example::

        >>> s, t = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
        >>> distillation_loss(s, t, temperature=1.0)      # KL([0.27, 0.73] || [0.73, 0.27])
        tensor(0.4621)
        >>> distillation_loss(s, t, temperature=2.0)      # 4 * KL([0.38, 0.62] || [0.62, 0.38])
        tensor(0.4898)
    """
    # TODO(m09_edge.distillation_loss): write your implementation here.
    raise NotImplementedError("m09_edge.distillation_loss is not implemented yet (try `kata hint m09_edge.distillation_loss`)")
