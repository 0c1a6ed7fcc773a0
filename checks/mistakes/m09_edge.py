"""Catalogued mistakes and correct variants for m09_edge.

Three kinds of entries, each the simplest way to state its mistake:

- ``@mutant``: a small slip in the reference's own code (a wrong divisor, a swapped argument, a dropped line);
- a function that keeps everything else right, so that the check aimed at the mistake is the one that
  catches it;
- ``@variant``: an unusual but correct implementation, written in another style than the reference, that
  every check must accept (the proof that the checks do not over-fit the reference).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from checks.harness.catalogue import mistake, mutant, variant
from reference.phase4.m09_edge import dequantize_int4_grouped, distillation_loss, magnitude_prune, quantize_int4_grouped

# --------------------------------------------------------------------------------------------------
# quantize_int4_grouped / dequantize_int4_grouped


def _validate_int4(w, group_size):
    """The reference's input checks, so that each mistake is caught by the check aimed at it."""
    if not w.is_floating_point() or w.ndim == 0:
        raise ValueError(f"bad w: dtype {w.dtype}, shape {tuple(w.shape)}")
    if not torch.isfinite(w).all():
        raise ValueError("w contains nan or inf")
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size <= 0 or group_size % 2 or (
            w.shape[-1] % group_size):
        raise ValueError(f"bad group_size {group_size!r} for a last dimension of {w.shape[-1]}")


def _pack_nibbles(n):
    """(..., n) integers 0 .. 15 -> (..., n // 2) uint8, element 2j in the low half of byte j."""
    n = n.to(torch.int64)
    return (n[..., 0::2] + 16 * n[..., 1::2]).to(torch.uint8)


@mutant("quantize_int4_grouped", "the scale is max |w| / 8 (the size of the negative range), so the largest weight "
        "maps to 8, which is clamped to 7: its error is a whole step",
        replace={"absmax / INT4_MAX, torch.ones_like": "absmax / (INT4_MAX + 1), torch.ones_like"})
def int4_scale_over_8(): ...


@mutant("quantize_int4_grouped", "the scale is max |w| / 15, as if the 16 levels were all positive: only half of "
        "them are ever used",
        replace={"absmax / INT4_MAX, torch.ones_like": "absmax / 15, torch.ones_like"})
def int4_scale_over_15(): ...


@mutant("quantize_int4_grouped", "an all-zero group gets scale 0, and 0 / 0 gives nan",
        replace={"torch.where(absmax > 0, absmax / INT4_MAX, torch.ones_like(absmax))": "absmax / INT4_MAX"})
def int4_zero_group_nan(): ...


@mutant("quantize_int4_grouped", "w / scale is truncated toward zero instead of rounded: errors up to a whole step",
        replace={"torch.round(groups.to(compute) / scale)": "torch.trunc(groups.to(compute) / scale)"})
def int4_truncates(): ...


@mutant("quantize_int4_grouped", "the nibbles are packed high first: element 2j goes to the high 4 bits of byte j "
        "(the format puts it in the low 4 bits)",
        replace={"nibbles[..., 0::2] | (nibbles[..., 1::2] << 4)": "(nibbles[..., 0::2] << 4) | nibbles[..., 1::2]"})
def int4_high_nibble_first(): ...


@mistake("quantize_int4_grouped", "q is stored in two's complement (q & 15) instead of offset binary (q + 8)")
def int4_twos_complement(w, group_size=32):
    _validate_int4(w, group_size)
    packed, scale = quantize_int4_grouped(w, group_size)
    q = torch.empty(*packed.shape[:-1], 2 * packed.shape[-1], dtype=torch.int64)
    q[..., 0::2], q[..., 1::2] = packed.to(torch.int64) % 16 - 8, packed.to(torch.int64) // 16 - 8
    return _pack_nibbles(q & 15), scale


@mistake("quantize_int4_grouped", "one scale per row (the row's max |w|), repeated for every group: small groups "
         "lose their precision to the largest weight of the row")
def int4_row_scale(w, group_size=32):
    _validate_int4(w, group_size)
    n = w.shape[-1]
    absmax = w.abs().amax(dim=-1, keepdim=True) if n else w.new_zeros(*w.shape[:-1], 1)
    scale = torch.where(absmax > 0, absmax / 7, torch.ones_like(absmax))
    q = torch.round(w / scale).clamp(-7, 7)
    return _pack_nibbles(q + 8), scale.expand(*w.shape[:-1], n // group_size).contiguous()


@mistake("quantize_int4_grouped", "the groups are strided (every G-th value) instead of consecutive runs of "
         "group_size values")
def int4_strided_groups(w, group_size=32):
    _validate_int4(w, group_size)
    G = w.shape[-1] // group_size
    groups = w.reshape(*w.shape[:-1], group_size, G).transpose(-1, -2)  # group g = w[..., g::G]
    absmax = groups.abs().amax(dim=-1, keepdim=True) if w.shape[-1] else groups.new_zeros(*groups.shape[:-1], 1)
    scale = torch.where(absmax > 0, absmax / 7, torch.ones_like(absmax))
    q = torch.round(groups / scale).clamp(-7, 7).transpose(-1, -2).reshape(w.shape)
    return _pack_nibbles(q + 8), scale.squeeze(-1)


@mutant("quantize_int4_grouped", "the scale is returned in float32 (the compute dtype), not in w's dtype",
        replace={"return packed, scale.squeeze(-1)": "return packed, scale.squeeze(-1).float()"})
def int4_scale_float32(): ...


@mistake("quantize_int4_grouped", "w is divided by its scale in place (groups /= scale on a view of w), which "
         "changes the caller's tensor")
def int4_divides_in_place(w, group_size=32):
    _validate_int4(w, group_size)
    packed, scale = quantize_int4_grouped(w, group_size)
    view = w.view(*w.shape[:-1], w.shape[-1] // group_size, group_size) if w.is_contiguous() else w
    if view is not w:
        view /= scale[..., None]  # wrong: the caller's w
    return packed, scale


@mutant("quantize_int4_grouped", "an odd group_size is accepted: a group would end in the middle of a byte",
        replace={" or group_size % 2:": ":"})
def int4_accepts_odd_groups(): ...


@mutant("quantize_int4_grouped", "nan and inf are not rejected: they give a nan scale for their group",
        replace={"if not torch.isfinite(w).all():": "if False:"})
def int4_accepts_nan(): ...


@mutant("dequantize_int4_grouped", "the offset 8 is not subtracted: every value comes back 8 steps too high",
        replace={"nibbles.to(torch.int8) - INT4_OFFSET": "nibbles.to(torch.int8)"})
def dequantize_without_offset(): ...


@mutant("dequantize_int4_grouped", "the offset is subtracted in uint8, which wraps around: 3 - 8 gives 251",
        replace={"nibbles.to(torch.int8) - INT4_OFFSET": "nibbles - INT4_OFFSET"})
def dequantize_uint8_wraps(): ...


@mutant("dequantize_int4_grouped", "the high nibble is read first: element 2j comes from the high 4 bits",
        replace={"torch.stack((low, high), dim=-1)": "torch.stack((high, low), dim=-1)"})
def dequantize_high_first(): ...


@mutant("dequantize_int4_grouped", "all low nibbles, then all high nibbles (torch.cat): the values are not "
        "interleaved back into their order",
        replace={"torch.stack((low, high), dim=-1)": "torch.cat((low, high), dim=-1)"})
def dequantize_not_interleaved(): ...


@mistake("dequantize_int4_grouped", "the scales are tiled (scale.repeat) instead of repeated per group "
         "(repeat_interleave): values get the scale of another group")
def dequantize_tiles_scales(packed, scale):
    out = dequantize_int4_grouped(packed, torch.ones_like(scale))
    groups = scale.shape[-1]
    size = out.shape[-1] // groups if groups else 0
    return out * scale.repeat(*([1] * (scale.ndim - 1)), size)


@mistake("dequantize_int4_grouped", "the result is always float32, whatever the scale's dtype")
def dequantize_always_float32(packed, scale):
    return dequantize_int4_grouped(packed, scale).float()


@mutant("dequantize_int4_grouped", "an int8 packed tensor is accepted: its high nibbles come out sign-extended",
        replace={"if packed.dtype != torch.uint8:": "if packed.dtype not in (torch.uint8, torch.int8):"})
def dequantize_accepts_int8(): ...


@mistake("quantize_int4_grouped", "the error for nan or inf says only that w must be finite, without naming the "
         "offending nan or inf")
def int4_finite_message_unnamed(w, group_size=32):
    if w.is_floating_point() and not torch.isfinite(w).all():
        raise ValueError("w must hold only finite values")
    return quantize_int4_grouped(w, group_size)


@mutant("dequantize_int4_grouped", "the leading dimensions are not compared: a scale of shape (1, G) broadcasts over "
        "every row of bytes, and a scale with an extra dimension gives a result of another shape",
        replace={"if packed.ndim == 0 or packed.shape[:-1] != scale.shape[:-1]:": "if packed.ndim == 0:"})
def dequantize_broadcasts_scale(): ...


@variant("quantize_int4_grouped", "groups by unflatten, uint8 wrap-around for the offset (q cast to uint8 first, "
         "then + 8), ties rounded up (floor(x + 0.5)), and the two nibbles joined by bitwise_or")
def int4_wraparound(w, group_size=32):
    _validate_int4(w, group_size)
    n = w.shape[-1]
    g = w.unflatten(-1, (n // group_size, group_size))
    top = g.abs().amax(dim=-1, keepdim=True) if n else g.new_zeros(*g.shape[:-1], 1)
    scale = torch.where(top == 0, torch.ones_like(top), top / 7)
    x = g.to(torch.promote_types(w.dtype, torch.float32)) / scale
    q = torch.floor(x + 0.5).clamp(-7, 7).to(torch.int16).to(torch.uint8) + 8  # -7 wraps to 249, + 8 gives 1
    q = q.flatten(-2)
    return torch.bitwise_or(q[..., ::2], torch.bitwise_left_shift(q[..., 1::2], 4)), scale[..., 0]


@variant("quantize_int4_grouped", "one group at a time in a Python loop over a (rows, n) view, rounding half away "
         "from zero, and the bytes built with arithmetic (low + 16 * high)")
def int4_loop(w, group_size=32):
    _validate_int4(w, group_size)
    n = w.shape[-1]
    rows = w.reshape(math.prod(w.shape[:-1]), n).to(torch.promote_types(w.dtype, torch.float32))
    scales = torch.ones(rows.shape[0], n // group_size, dtype=w.dtype)
    q = torch.zeros(rows.shape, dtype=torch.int64)
    for r in range(rows.shape[0]):
        for g in range(n // group_size):
            chunk = rows[r, g * group_size:(g + 1) * group_size]
            top = chunk.abs().max()
            if top > 0:
                scales[r, g] = (top / 7).to(w.dtype)
            x = chunk / scales[r, g].to(chunk.dtype)
            q[r, g * group_size:(g + 1) * group_size] = (torch.sign(x) * torch.floor(x.abs() + 0.5)).clamp(-7, 7).long()
    packed = _pack_nibbles(q + 8)
    return packed.reshape(*w.shape[:-1], n // 2), scales.reshape(*w.shape[:-1], n // group_size)


@variant("dequantize_int4_grouped", "integer division and remainder instead of bit operations, then "
         "repeat_interleave of the scales")
def dequantize_arithmetic(packed, scale):
    if packed.dtype != torch.uint8 or not scale.is_floating_point():
        raise ValueError(f"bad dtypes {packed.dtype}, {scale.dtype}")
    n, groups = 2 * packed.shape[-1], scale.shape[-1]
    if packed.ndim == 0 or packed.shape[:-1] != scale.shape[:-1] or (groups == 0) != (n == 0) or (
            groups and (n % groups or (n // groups) % 2)):
        raise ValueError(f"packed {tuple(packed.shape)} does not match scale {tuple(scale.shape)}")
    b = packed.to(torch.int16)
    q = torch.empty(*packed.shape[:-1], n, dtype=torch.int16, device=packed.device)
    q[..., 0::2] = b % 16 - 8
    q[..., 1::2] = b // 16 - 8
    return q.to(scale.dtype) * scale.repeat_interleave(n // groups if groups else 1, dim=-1)


# --------------------------------------------------------------------------------------------------
# magnitude_prune


def _validate_sparsity(sparsity):
    if isinstance(sparsity, bool) or not isinstance(sparsity, int | float) or not 0 <= sparsity <= 1:
        raise ValueError(f"sparsity {sparsity!r} must be a number in [0, 1]")


def _linear_weights(model):
    ids = {id(m.weight) for m in model.modules() if isinstance(m, nn.Linear)}
    return {name: p for name, p in model.named_parameters() if id(p) in ids}


def _apply(weights, masks):
    for name, p in weights.items():
        with torch.no_grad():
            p.mul_(masks[name])
        p.register_hook(lambda grad, mask=masks[name]: grad * mask)
    return masks


@mistake("magnitude_prune", "each layer loses the same fraction of its own weights (layer-wise), instead of the "
         "smallest weights of all layers together (global)")
def prune_per_layer(model, sparsity):
    _validate_sparsity(sparsity)
    weights = _linear_weights(model)
    masks = {}
    for name, p in weights.items():
        keep = torch.ones(p.numel(), dtype=torch.bool)
        k = round(sparsity * p.numel())
        if k:
            keep[torch.topk(p.detach().abs().flatten(), k, largest=False).indices] = False
        masks[name] = keep.reshape(p.shape)
    return _apply(weights, masks)


@mutant("magnitude_prune", "k = int(sparsity * N) truncates: 0.29 * 103 = 29.87 prunes 29, not round() = 30",
        replace={"k = round(sparsity * total)": "k = int(sparsity * total)"})
def prune_floor_count(): ...


@mutant("magnitude_prune", "topk with largest=True prunes the LARGEST weights, the most important ones",
        replace={"largest=False": "largest=True"})
def prune_largest(): ...


@mutant("magnitude_prune", "ranks the signed values instead of magnitudes: large negative weights are pruned first",
        replace={"p.detach().abs().flatten()": "p.detach().flatten()"})
def prune_signed_values(): ...


@mutant("magnitude_prune", "no gradient hook: the optimizer moves pruned weights away from 0 at the first step",
        replace={"p.register_hook(lambda grad, mask=mask: grad * mask)": "pass"})
def prune_without_hook(): ...


@mistake("magnitude_prune", "the hook's lambda reads the loop variable `mask` when it runs (late binding), so every "
         "layer's gradient is multiplied by the LAST layer's mask")
def prune_late_binding_hook(model, sparsity):
    _validate_sparsity(sparsity)
    weights = _linear_weights(model)
    masks = magnitude_prune(_copy_of(model), sparsity)
    for name, p in weights.items():
        mask = masks[name]
        with torch.no_grad():
            p.mul_(mask)
        p.register_hook(lambda grad: grad * mask)  # noqa: B023 - wrong on purpose: `mask` is looked up when it runs
    return masks


def _copy_of(model):
    import copy

    return copy.deepcopy(model)


@mistake("magnitude_prune", "the biases of the Linear layers are pruned too (only their weights should be)")
def prune_biases_too(model, sparsity):
    _validate_sparsity(sparsity)
    params = {}
    for mod_name, m in model.named_modules():
        if isinstance(m, nn.Linear):
            for p_name, p in m.named_parameters(recurse=False):
                params[f"{mod_name}.{p_name}" if mod_name else p_name] = p
    total = sum(p.numel() for p in params.values())
    scores = torch.cat([p.detach().abs().flatten() for p in params.values()]) if params else torch.zeros(0)
    keep = torch.ones(total, dtype=torch.bool)
    k = round(sparsity * total)
    if k:
        keep[torch.topk(scores, k, largest=False).indices] = False
    masks, start = {}, 0
    for name, p in params.items():
        masks[name] = keep[start:start + p.numel()].reshape(p.shape)
        start += p.numel()
    _apply(params, masks)
    return {name: m for name, m in masks.items() if name.endswith("weight")}


@mistake("magnitude_prune", "every parameter of the model is ranked and pruned (biases, LayerNorm gains), not only "
         "the weights of the Linear layers")
def prune_every_parameter(model, sparsity):
    _validate_sparsity(sparsity)
    params = dict(model.named_parameters())
    total = sum(p.numel() for p in params.values())
    keep = torch.ones(total, dtype=torch.bool)
    k = round(sparsity * total)
    if k:
        keep[torch.topk(torch.cat([p.detach().abs().flatten() for p in params.values()]), k, largest=False).indices] = 0
    masks, start = {}, 0
    for name, p in params.items():
        masks[name] = keep[start:start + p.numel()].reshape(p.shape)
        start += p.numel()
    _apply(params, masks)
    linear = _linear_weights(model)
    return {name: m for name, m in masks.items() if name in linear}


@mistake("magnitude_prune", "each pruned weight is replaced by a new nn.Parameter: an optimizer built before still "
         "updates the old, unpruned tensors")
def prune_new_parameters(model, sparsity):
    masks = magnitude_prune(_copy_of(model), sparsity)
    owners = {}
    for m in model.modules():
        if isinstance(m, nn.Linear):
            owners.setdefault(id(m.weight), []).append(m)
    for name, p in _linear_weights(model).items():
        fresh = nn.Parameter(p.detach() * masks[name])
        fresh.register_hook(lambda grad, mask=masks[name]: grad * mask)
        for m in owners[id(p)]:
            m.weight = fresh
    return masks


@mistake("magnitude_prune", "prunes every weight whose |w| is at most the k-th smallest (a threshold), so ties "
         "at the threshold prune more than k weights")
def prune_threshold_ties(model, sparsity):
    _validate_sparsity(sparsity)
    weights = _linear_weights(model)
    total = sum(p.numel() for p in weights.values())
    k = round(sparsity * total)
    if not weights:
        return {}
    scores = torch.cat([p.detach().abs().flatten() for p in weights.values()])
    threshold = torch.kthvalue(scores, k).values if k else -1.0
    return _apply(weights, {name: p.detach().abs() > threshold for name, p in weights.items()})


@mistake("magnitude_prune", "the masks are inverted (True where the weight was pruned); torch.nn.utils.prune's "
         "weight_mask is 1 where the weight is kept")
def prune_inverted_masks(model, sparsity):
    return {name: ~mask for name, mask in magnitude_prune(model, sparsity).items()}


@mistake("magnitude_prune", "the masks are named after the modules that hold the weight (head.weight), not as "
         "model.named_parameters() names the (tied) tensor")
def prune_module_names(model, sparsity):
    masks = magnitude_prune(model, sparsity)
    by_id = {id(p): name for name, p in _linear_weights(model).items()}
    renamed = {}
    for mod_name, m in model.named_modules():
        if isinstance(m, nn.Linear) and id(m.weight) in by_id:
            renamed[f"{mod_name}.weight"] = masks[by_id.pop(id(m.weight))]
    return renamed


@mutant("magnitude_prune", "k = floor(sparsity * N + 0.5) rounds a tie up: 0.75 * 6 = 4.5 prunes 5, where Python's "
        "round (and torch.nn.utils.prune) gives the even 4",
        replace={"k = round(sparsity * total)": "k = math.floor(sparsity * total + 0.5)"})
def prune_round_half_up(): ...


@mutant("magnitude_prune", "type(m) is nn.Linear misses subclasses of nn.Linear, such as the out_proj of "
        "nn.MultiheadAttention",
        replace={"if isinstance(m, nn.Linear)}": "if type(m) is nn.Linear}"})
def prune_exact_linear_type(): ...


@mutant("magnitude_prune", "a hook is registered on a frozen weight too: torch raises a RuntimeError for a tensor that "
        "does not require grad",
        replace={"if p.requires_grad:": "if True:"})
def prune_hook_on_frozen(): ...


@mutant("magnitude_prune", "frozen weights (requires_grad False) are left out: they are neither counted nor pruned",
        replace={"if isinstance(m, nn.Linear)}": "if isinstance(m, nn.Linear) and m.weight.requires_grad}"})
def prune_skips_frozen(): ...


@mutant("magnitude_prune", "sparsity 0 is rejected: it is a valid request to prune nothing",
        replace={"not 0 <= sparsity <= 1": "not 0 < sparsity <= 1"})
def prune_rejects_zero(): ...


@variant("magnitude_prune", "a stable argsort of all magnitudes (the first k go), masks kept by torch.where in the "
         "hook, and each layer processed from a flat index range")
def prune_argsort(model, sparsity):
    if isinstance(sparsity, bool) or not isinstance(sparsity, int | float) or math.isnan(sparsity) or not (
            0 <= sparsity <= 1):
        raise ValueError(f"sparsity={sparsity!r} is not in [0, 1]")
    seen, weights = set(), []
    for name, p in model.named_parameters():
        if any(isinstance(m, nn.Linear) and m.weight is p for m in model.modules()) and id(p) not in seen:
            seen.add(id(p))
            weights.append((name, p))
    sizes = [p.numel() for _, p in weights]
    total = sum(sizes)
    k = round(sparsity * total)
    if not weights:
        return {}
    flat = torch.cat([p.detach().abs().reshape(-1).double() for _, p in weights])
    order = torch.argsort(flat, stable=True)
    pruned = torch.zeros(total, dtype=torch.bool, device=flat.device)
    pruned[order[:k]] = True
    masks, offset = {}, 0
    for (name, p), size in zip(weights, sizes, strict=True):
        keep = ~pruned[offset:offset + size].view(p.shape)
        offset += size
        with torch.no_grad():
            p.copy_(torch.where(keep, p, torch.zeros_like(p)))
        if p.requires_grad:
            p.register_hook(lambda grad, keep=keep: torch.where(keep, grad, torch.zeros_like(grad)))
        masks[name] = keep
    return masks


@variant("magnitude_prune", "a threshold from torch.kthvalue, everything below it pruned, then the first of the ties "
         "at the threshold (by a cumulative count) until exactly k; the hook uses masked_fill")
def prune_kthvalue(model, sparsity):
    if isinstance(sparsity, bool) or not isinstance(sparsity, int | float) or not 0 <= sparsity <= 1:
        raise ValueError(f"sparsity {sparsity!r} is not in [0, 1]")
    weights = _linear_weights(model)
    if not weights:
        return {}
    flat = torch.cat([p.detach().reshape(-1).abs().double() for p in weights.values()])
    k = round(sparsity * flat.numel())
    if k == 0:
        pruned = torch.zeros_like(flat, dtype=torch.bool)
    else:
        threshold = torch.kthvalue(flat, k).values
        below = flat < threshold
        ties = flat == threshold
        pruned = below | ties & (torch.cumsum(ties.long(), 0) <= k - below.sum())
    masks = {}
    for (name, p), keep in zip(weights.items(), torch.split(~pruned, [p.numel() for p in weights.values()]),
                               strict=True):
        keep = keep.view(p.shape)
        with torch.no_grad():
            p.masked_fill_(~keep, 0)
        if p.requires_grad:
            p.register_hook(lambda grad, keep=keep: grad.masked_fill(~keep, 0))
        masks[name] = keep
    return masks


# --------------------------------------------------------------------------------------------------
# distillation_loss


def _validate_distillation(student, teacher, temperature, alpha):
    if student.shape != teacher.shape or student.ndim == 0 or student.numel() == 0:
        raise ValueError(f"bad shapes {tuple(student.shape)} and {tuple(teacher.shape)}")
    if isinstance(temperature, bool) or not 0 < temperature < math.inf:
        raise ValueError(f"bad temperature {temperature!r}")
    if isinstance(alpha, bool) or not 0 <= alpha <= 1:
        raise ValueError(f"bad alpha {alpha!r}")


def _mix(soft, student, labels, alpha):
    if labels is None:
        return soft
    if labels.shape != student.shape[:-1]:
        raise ValueError(f"bad labels shape {tuple(labels.shape)}")
    V = student.shape[-1]
    return alpha * soft + (1 - alpha) * F.cross_entropy(student.reshape(-1, V), labels.reshape(-1))


@mutant("distillation_loss", "no T**2 factor: the soft term's gradients shrink like 1 / T**2 as T grows",
        replace={"kd = kd * temperature**2": "kd = kd"})
def distill_without_t_squared(): ...


@mutant("distillation_loss", "multiplied by T instead of T**2",
        replace={"kd = kd * temperature**2": "kd = kd * temperature"})
def distill_times_t(): ...


@mutant("distillation_loss", "KL(student || teacher): the arguments of F.kl_div are swapped, so the student's "
        "distribution becomes the target",
        replace={"F.kl_div(s, t,": "F.kl_div(t, s,"})
def distill_kl_reversed(): ...


@mutant("distillation_loss", "reduction='mean' averages over rows AND classes: the loss is V times too small",
        replace={'reduction="batchmean"': 'reduction="mean"'})
def distill_mean_reduction(): ...


@mistake("distillation_loss", "F.kl_div(reduction='batchmean') on the logits as given, without reshaping to "
         "(rows, V): a (B, T, V) input is divided by B only, a (V,) input by V")
def distill_batchmean_unflattened(student_logits, teacher_logits, temperature=2.0, labels=None, alpha=0.5):
    _validate_distillation(student_logits, teacher_logits, temperature, alpha)
    s = F.log_softmax(student_logits / temperature, dim=-1)
    t = F.log_softmax(teacher_logits.detach() / temperature, dim=-1)
    soft = F.kl_div(s, t, log_target=True, reduction="batchmean") * temperature**2
    return _mix(soft, student_logits, labels, alpha)


@mutant("distillation_loss", "the teacher is not detached: the loss sends gradients into the teacher model",
        replace={"teacher_logits.detach().reshape": "teacher_logits.reshape"})
def distill_teacher_not_detached(): ...


@mistake("distillation_loss", "only the student is softened: the teacher's probabilities are taken at temperature 1")
def distill_teacher_not_softened(student_logits, teacher_logits, temperature=2.0, labels=None, alpha=0.5):
    _validate_distillation(student_logits, teacher_logits, temperature, alpha)
    V = student_logits.shape[-1]
    s = F.log_softmax(student_logits.reshape(-1, V) / temperature, dim=-1)
    t = F.log_softmax(teacher_logits.detach().reshape(-1, V), dim=-1)
    soft = F.kl_div(s, t, log_target=True, reduction="batchmean") * temperature**2
    return _mix(soft, student_logits, labels, alpha)


@mistake("distillation_loss", "p * log(p / q) from softmax probabilities: with logits of +-1e4 a probability is 0 "
         "and 0 * log(0) gives nan")
def distill_from_probabilities(student_logits, teacher_logits, temperature=2.0, labels=None, alpha=0.5):
    _validate_distillation(student_logits, teacher_logits, temperature, alpha)
    V = student_logits.shape[-1]
    p_s = torch.softmax(student_logits.reshape(-1, V) / temperature, dim=-1)
    p_t = torch.softmax(teacher_logits.detach().reshape(-1, V) / temperature, dim=-1)
    soft = (p_t * torch.log(p_t / p_s)).sum(-1).mean() * temperature**2
    return _mix(soft, student_logits, labels, alpha)


@mutant("distillation_loss", "the hard-label loss uses the softened logits (student / T) instead of the plain ones",
        replace={"F.cross_entropy(student_logits.reshape(-1, V),": "F.cross_entropy(student_logits.reshape(-1, V) / "
                 "temperature,"})
def distill_hard_loss_softened(): ...


@mutant("distillation_loss", "alpha weighs the hard-label loss instead of the distillation term",
        replace={"alpha * kd + (1 - alpha) * hard": "(1 - alpha) * kd + alpha * hard"})
def distill_alpha_swapped(): ...


@mutant("distillation_loss", "labels are ignored: the hard-label loss is never added",
        replace={"if labels is None:": "if True:"})
def distill_ignores_labels(): ...


@mistake("distillation_loss", "the temperature defaults to 1 instead of the documented 2")
def distill_default_temperature_1(student_logits, teacher_logits, temperature=1.0, labels=None, alpha=0.5):
    return distillation_loss(student_logits, teacher_logits, temperature, labels, alpha)


@mistake("distillation_loss", "alpha defaults to 0.9 instead of the documented 0.5")
def distill_default_alpha(student_logits, teacher_logits, temperature=2.0, labels=None, alpha=0.9):
    return distillation_loss(student_logits, teacher_logits, temperature, labels, alpha)


@mutant("distillation_loss", "isinstance(temperature, float) refuses an int temperature such as 2",
        replace={"if not _is_real(temperature) or": "if not isinstance(temperature, float) or"})
def distill_float_temperature_only(): ...


@mutant("distillation_loss", "labels are checked by their number only: flattened labels (B * T,) for (B, T, V) logits "
        "are accepted instead of refused",
        replace={"if labels.shape != student_logits.shape[:-1]:": "if labels.numel() != student_logits.numel() // V:"})
def distill_labels_count_only(): ...


@variant("distillation_loss", "computes in float64 and casts the loss back to the logits' dtype; the teacher's "
         "log-probabilities are computed under torch.no_grad() instead of from a detached tensor")
def distill_float64_inside(student_logits, teacher_logits, temperature=2.0, labels=None, alpha=0.5):
    _validate_distillation(student_logits, teacher_logits, temperature, alpha)
    V = student_logits.shape[-1]
    s = torch.log_softmax(student_logits.double().reshape(-1, V) / temperature, dim=-1)
    with torch.no_grad():
        t = torch.log_softmax(teacher_logits.double().reshape(-1, V) / temperature, dim=-1)
    soft = F.kl_div(s, t, log_target=True, reduction="sum") / s.shape[0] * temperature**2
    return _mix(soft, student_logits.double(), labels, alpha).to(student_logits.dtype)


@variant("distillation_loss", "written out by hand: sum p_t (log p_t - log p_s) per row, mean over rows, and the "
         "hard term as -log p of the label, skipping -100")
def distill_by_hand(student_logits, teacher_logits, temperature=2.0, labels=None, alpha=0.5):
    _validate_distillation(student_logits, teacher_logits, temperature, alpha)
    V = student_logits.shape[-1]
    log_p_s = torch.log_softmax(student_logits.reshape(-1, V) / temperature, dim=-1)
    log_p_t = torch.log_softmax(teacher_logits.detach().reshape(-1, V) / temperature, dim=-1)
    soft = (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=-1).mean() * temperature * temperature
    if labels is None:
        return soft
    if labels.shape != student_logits.shape[:-1]:
        raise ValueError(f"labels {tuple(labels.shape)} do not match")
    flat = labels.reshape(-1)
    keep = flat != -100
    log_p = torch.log_softmax(student_logits.reshape(-1, V), dim=-1)
    picked = log_p[keep].gather(1, flat[keep][:, None]).squeeze(1)
    return alpha * soft + (1 - alpha) * (-picked.mean())


@variant("distillation_loss", "F.kl_div with probabilities as the target (log_target=False) and reduction='sum' "
         "divided by the number of rows")
def distill_prob_target(student_logits, teacher_logits, temperature=2.0, labels=None, alpha=0.5):
    _validate_distillation(student_logits, teacher_logits, temperature, alpha)
    V = student_logits.shape[-1]
    rows = student_logits.numel() // V
    with torch.no_grad():
        target = torch.softmax(teacher_logits.reshape(rows, V) / temperature, dim=-1)
    s = F.log_softmax(student_logits.reshape(rows, V) / temperature, dim=-1)
    soft = F.kl_div(s, target, reduction="sum") / rows * temperature**2
    return _mix(soft, student_logits, labels, alpha)
