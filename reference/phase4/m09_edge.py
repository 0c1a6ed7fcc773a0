"""Reference solutions for m09_edge (months 9-10 of the learning path: edge deployment and optimisation).

Three ways to make a model small and fast enough for a phone or a laptop:
- ``quantize_int4_grouped`` / ``dequantize_int4_grouped``: 4-bit weights, two per byte, one scale per group;
- ``magnitude_prune``: zero the smallest weights of every ``nn.Linear``, and keep them at zero in training;
- ``distillation_loss``: train a small student on a large teacher's softened probabilities (Hinton et al.).

The learning path names these topics but has no code for them, so there are no bugs of its own to fix here.
The int4 convention follows w23_deployment's ``quantize_int8``: symmetric absmax scales, the range kept
symmetric (-7 .. 7, so -8 is never produced), an all-zero group gets scale 1.
"""

from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F
from torch import Tensor, nn

INT4_MAX = 7  # symmetric range -7 .. 7: -8 would make the range lopsided, as -128 would for int8
INT4_OFFSET = 8  # a stored nibble n in 0 .. 15 means q = n - 8 (offset binary, as in GGML's Q4_0)


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


# --------------------------------------------------------------------------------------------------
# int4 quantisation with one scale per group


def quantize_int4_grouped(w: Tensor, group_size: int = 32) -> tuple[Tensor, Tensor]:
    """Symmetric int4 quantisation per group of ``group_size`` values along the last dimension, packed two per byte.

    Returns ``(packed, scale)``: ``packed`` is uint8 of shape (..., n // 2), ``scale`` has shape (..., n // group_size)
    in ``w``'s dtype; ``w[..., j]`` is close to ``(nibble_j - 8) * scale[..., j // group_size]``.
    """
    if not w.is_floating_point():
        raise ValueError(f"w must be a floating point tensor, got dtype {w.dtype}")
    if w.ndim == 0:
        raise ValueError("w must have at least one dimension: groups run along its last dimension")
    if not _is_int(group_size) or group_size < 2 or group_size % 2:
        # an odd group would end in the middle of a byte: each group must fill whole bytes
        raise ValueError(f"group_size must be a positive even integer, got {group_size!r}")
    n = w.shape[-1]
    if n % group_size:
        raise ValueError(f"group_size={group_size} does not divide the last dimension of w, {n}")
    if not torch.isfinite(w).all():
        raise ValueError("w contains nan or inf: no finite scale can represent it")
    lead = w.shape[:-1]
    groups = w.reshape(*lead, n // group_size, group_size)  # (..., G, group_size); reshape copies a strided view
    absmax = groups.abs().amax(dim=-1, keepdim=True)  # (..., G, 1); fine for G = 0, as each group has values
    # an all-zero group has absmax 0: scale 1 keeps q = 0 and avoids 0 / 0 = nan
    scale = torch.where(absmax > 0, absmax / INT4_MAX, torch.ones_like(absmax))  # (..., G, 1), w's dtype
    # divide in float32 at least: a bfloat16 quotient keeps 8 bits, so a step can be misjudged
    compute = torch.promote_types(w.dtype, torch.float32)
    # round half to even; zeros stay 0. No clamp is needed: |w| <= 7 * scale up to a rounding of the scale, so
    # |w / scale| < 7.03 even for a bfloat16 scale, which rounds to 7 (int8 needs its clamp: 127.5 rounds to 128)
    q = torch.round(groups.to(compute) / scale)
    nibbles = (q + INT4_OFFSET).to(torch.uint8).reshape(*lead, n)  # 0 .. 15, (..., n); exact small integers
    # element 2j goes to the low nibble of byte j, element 2j + 1 to its high nibble
    packed = nibbles[..., 0::2] | (nibbles[..., 1::2] << 4)  # (..., n // 2) uint8
    return packed, scale.squeeze(-1)


def dequantize_int4_grouped(packed: Tensor, scale: Tensor) -> Tensor:
    """Unpack two nibbles per byte and multiply each group by its scale: (..., n) in ``scale``'s dtype."""
    if packed.dtype != torch.uint8:
        raise ValueError(f"packed must be a uint8 tensor, got dtype {packed.dtype}")
    if not scale.is_floating_point():
        raise ValueError(f"scale must be a floating point tensor, got dtype {scale.dtype}")
    if packed.ndim == 0 or packed.shape[:-1] != scale.shape[:-1]:
        raise ValueError(f"packed {tuple(packed.shape)} and scale {tuple(scale.shape)} must agree on all but the "
                         "last dimension")
    n, groups = 2 * packed.shape[-1], scale.shape[-1]
    # the group size is implied by the shapes: n values, `groups` scales
    if (groups == 0) != (n == 0) or groups and n % (2 * groups):  # n splits into G groups of an even size
        raise ValueError(f"packed {tuple(packed.shape)} holds {n} values per row, which scale {tuple(scale.shape)} "
                         "does not split into groups of an even size")
    low, high = packed & 0x0F, packed >> 4  # (..., n // 2) each
    nibbles = torch.stack((low, high), dim=-1).reshape(*packed.shape[:-1], n)  # interleave back: low first
    q = nibbles.to(torch.int8) - INT4_OFFSET  # -8 .. 7 (quantize only makes -7 .. 7)
    # each scale repeated for the n // G values of its group (G = 0 only when n = 0: then nothing to repeat)
    return q * scale.repeat_interleave(n // max(groups, 1), dim=-1)  # int8 * float -> the scale's dtype


# --------------------------------------------------------------------------------------------------
# magnitude pruning


def magnitude_prune(model: nn.Module, sparsity: float) -> dict[str, Tensor]:
    """Globally zero the ``round(sparsity * N)`` smallest-magnitude weights of all ``nn.Linear`` layers."""
    if not _is_real(sparsity) or not 0 <= sparsity <= 1:  # nan fails both comparisons
        raise ValueError(f"sparsity must be a number between 0 and 1, got {sparsity!r}")
    # each distinct weight once: a weight tied to another layer (an LM head) is one tensor, pruned once
    linear_weights = {id(m.weight) for m in model.modules() if isinstance(m, nn.Linear)}
    weights = {name: p for name, p in model.named_parameters() if id(p) in linear_weights}
    total = sum(p.numel() for p in weights.values())
    k = round(sparsity * total)  # Python's round, as torch.nn.utils.prune does for a fraction
    if not weights:
        return {}
    scores = torch.cat([p.detach().abs().flatten() for p in weights.values()])  # mixed dtypes promote
    keep = torch.ones(total, dtype=torch.bool, device=scores.device)
    if k:
        # the k smallest magnitudes over all layers together: global, not per layer
        keep[torch.topk(scores, k, largest=False).indices] = False
    masks = {}
    start = 0
    for name, p in weights.items():
        mask = keep[start:start + p.numel()].reshape(p.shape)
        start += p.numel()
        with torch.no_grad():
            p.mul_(mask)  # in place: the same Parameter objects, so an existing optimizer still sees them
        # a pruned weight gets a zero gradient, so SGD and Adam(W) never move it away from 0; a frozen weight
        # (requires_grad False) gets no gradient at all, and torch refuses a hook on it
        if p.requires_grad:
            p.register_hook(lambda grad, mask=mask: grad * mask)
        masks[name] = mask
    return masks


# --------------------------------------------------------------------------------------------------
# knowledge distillation


def distillation_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    temperature: float = 2.0,
    labels: Tensor | None = None,
    alpha: float = 0.5,
) -> Tensor:
    """T^2 * KL(softmax(teacher / T) || softmax(student / T)), mean over rows; mixed with the hard-label loss."""
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student_logits {tuple(student_logits.shape)} and teacher_logits "
                         f"{tuple(teacher_logits.shape)} must have the same shape")
    if student_logits.ndim == 0 or student_logits.numel() == 0:
        raise ValueError(f"the logits need at least one row of at least one class, got shape "
                         f"{tuple(student_logits.shape)}")
    if not _is_real(temperature) or not 0 < temperature < math.inf:
        raise ValueError(f"temperature must be a positive number, got {temperature!r}")
    if not _is_real(alpha) or not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be a number between 0 and 1, got {alpha!r}")
    V = student_logits.shape[-1]
    # every position is a row: flatten first, or "batchmean" divides (B, T, V) by B only, and (V,) by V
    s = F.log_softmax(student_logits.reshape(-1, V) / temperature, dim=-1)
    t = F.log_softmax(teacher_logits.detach().reshape(-1, V) / temperature, dim=-1)  # the teacher is a fixed target
    # KL(p_t || p_s) = sum p_t (log p_t - log p_s), from log-probabilities: finite for any finite logits
    kd = F.kl_div(s, t, log_target=True, reduction="batchmean")
    # T^2 keeps the soft term's gradients the same size whatever T (they shrink like 1 / T^2)
    kd = kd * temperature**2
    if labels is None:
        return kd
    if labels.shape != student_logits.shape[:-1]:
        raise ValueError(f"labels {tuple(labels.shape)} must have the logits' shape without the last dimension, "
                         f"{tuple(student_logits.shape[:-1])}")
    hard = F.cross_entropy(student_logits.reshape(-1, V), labels.reshape(-1))  # temperature 1: the real task
    return alpha * kd + (1 - alpha) * hard
