"""Catalogued mistakes and correct variants for m07_efficiency.

Three kinds of entries, each the simplest way to state its mistake:

- ``@mutant``: a small slip in the reference's own code (a dropped rescale, a local index, ``<=`` for ``<``);
- a function that keeps everything else right, so that the check aimed at the mistake is the one that
  catches it;
- ``@variant``: an unusual but correct implementation, written in another style than the reference, that
  every check must accept (the proof that the checks do not over-fit the reference).
"""

from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F

from checks.harness.catalogue import mistake, mutant, variant
from reference.phase4.m07_efficiency import flash_attention, sliding_window_mask, speculative_decode

# --------------------------------------------------------------------------------------------------
# flash_attention


def _validate(q, k, v, block_size, key_mask):
    """The reference's input checks, so that each mistake is caught by the check aimed at it."""
    if isinstance(block_size, bool) or not isinstance(block_size, numbers.Integral):
        raise TypeError(f"block_size must be an integer, got {block_size!r}")
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    if q.shape[-1] != k.shape[-1] or k.shape[-2] != v.shape[-2]:
        raise ValueError(f"incompatible shapes {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if key_mask is not None and (key_mask.dtype != torch.bool or key_mask.shape[-1] != k.shape[-2]):
        raise ValueError(f"bad key_mask of shape {tuple(key_mask.shape)} for {k.shape[-2]} keys")


def _lead(q, k, v, key_mask):
    shapes = [q.shape[:-2], k.shape[:-2], v.shape[:-2]] + ([] if key_mask is None else [key_mask.shape[:-1]])
    return torch.broadcast_shapes(*shapes)


def _full_allowed(q, k, is_causal, key_mask):
    """The whole (L, S) mask at once: exactly what flash attention must never build."""
    L, S = q.shape[-2], k.shape[-2]
    allowed = torch.ones(L, S, dtype=torch.bool, device=q.device)
    if is_causal:
        allowed = allowed.tril()
    if key_mask is not None:
        allowed = allowed & key_mask[..., None, :]
    return allowed


def _safe_rows(scores, allowed, v):
    """softmax over the last axis with rows that have no allowed key set to 0, then times v."""
    scores = scores.masked_fill(~allowed, -math.inf)
    alive = allowed.any(dim=-1, keepdim=True)
    weights = torch.softmax(torch.where(alive, scores, torch.zeros_like(scores)), dim=-1) * alive
    return weights @ v


@mistake("flash_attention", "builds the whole (L, S) matrix of scores and takes an ordinary softmax: the right "
         "numbers, but exactly the memory that flash attention exists to avoid")
def flash_full_matrix(q, k, v, block_size=64, is_causal=False, scale=None, key_mask=None):
    _validate(q, k, v, block_size, key_mask)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    out = _safe_rows((q @ k.transpose(-2, -1)) * scale, _full_allowed(q, k, is_causal, key_mask), v)
    return out.expand(_lead(q, k, v, key_mask) + out.shape[-2:])


@mistake("flash_attention", "calls torch's F.scaled_dot_product_attention, which on the CPU builds the whole "
         "(L, S) matrix of scores inside")
def flash_calls_torch(q, k, v, block_size=64, is_causal=False, scale=None, key_mask=None):
    _validate(q, k, v, block_size, key_mask)
    lead = _lead(q, k, v, key_mask)
    L, S = q.shape[-2], k.shape[-2]
    if L == 0 or S == 0:
        return q.new_zeros(lead + (L, v.shape[-1]))
    allowed = _full_allowed(q, k, is_causal, key_mask).expand(lead + (L, S))
    out = F.scaled_dot_product_attention(q.expand(lead + q.shape[-2:]), k.expand(lead + k.shape[-2:]),
                                         v.expand(lead + v.shape[-2:]), attn_mask=allowed, scale=scale)
    return torch.where(allowed.any(dim=-1, keepdim=True), out, 0.0)


@mistake("flash_attention", "tiles only the queries: each tile of queries still gets a (block_size, S) strip of "
         "scores and an ordinary softmax, so memory still grows with the number of keys")
def flash_query_tiles_only(q, k, v, block_size=64, is_causal=False, scale=None, key_mask=None):
    _validate(q, k, v, block_size, key_mask)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    L, S = q.shape[-2], k.shape[-2]
    lead = _lead(q, k, v, key_mask)
    blocks = []
    for i0 in range(0, L, block_size):
        i1 = min(i0 + block_size, L)
        allowed = torch.ones(i1 - i0, S, dtype=torch.bool, device=q.device)
        if is_causal:
            allowed = torch.arange(S, device=q.device)[None, :] <= torch.arange(i0, i1, device=q.device)[:, None]
        if key_mask is not None:
            allowed = allowed & key_mask[..., None, :]
        out = _safe_rows((q[..., i0:i1, :] @ k.transpose(-2, -1)) * scale, allowed, v)
        blocks.append(out.expand(lead + out.shape[-2:]))
    return torch.cat(blocks, dim=-2) if blocks else q.new_zeros(lead + (0, v.shape[-1]))


@mistake("flash_attention", "tiles only the keys: the online softmax runs over all L queries at once, so every "
         "tile of scores is (L, block_size) and memory still grows with the number of queries")
def flash_key_tiles_only(q, k, v, block_size=64, is_causal=False, scale=None, key_mask=None):
    _validate(q, k, v, block_size, key_mask)
    return _one_query_tile(q, k, v, block_size, is_causal, scale, key_mask)


def _one_query_tile(q, k, v, block_size, is_causal, scale, key_mask):
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    L, S, Ev = q.shape[-2], k.shape[-2], v.shape[-1]
    lead = _lead(q, k, v, key_mask)
    m = q.new_full((*lead, L, 1), -math.inf)
    denom = q.new_zeros((*lead, L, 1))
    acc = q.new_zeros((*lead, L, Ev))
    rows = torch.arange(L, device=q.device)
    for j0 in range(0, S, block_size):
        j1 = min(j0 + block_size, S)
        s = (q @ k[..., j0:j1, :].transpose(-2, -1)) * scale  # (..., L, cols): a strip over all the queries
        allowed = torch.ones(L, j1 - j0, dtype=torch.bool, device=q.device)
        if is_causal:
            allowed = torch.arange(j0, j1, device=q.device)[None, :] <= rows[:, None]
        if key_mask is not None:
            allowed = allowed & key_mask[..., None, j0:j1]
        s = s.masked_fill(~allowed, -math.inf)
        m_new = torch.maximum(m, s.detach().amax(dim=-1, keepdim=True))
        shift = torch.where(torch.isfinite(m_new), m_new, torch.zeros_like(m_new))
        p = torch.exp(s - shift)
        alpha = torch.exp(m - shift)
        denom = denom * alpha + p.sum(dim=-1, keepdim=True)
        acc = acc * alpha + p @ v[..., j0:j1, :]
        m = m_new
    return acc / denom.clamp_min(torch.finfo(q.dtype).tiny)


@mistake("flash_attention", "ignores block_size and always uses tiles of 64: the tile size is the caller's choice "
         "(it must fit the fast memory of the hardware)")
def flash_ignores_block_size(q, k, v, block_size=64, is_causal=False, scale=None, key_mask=None):
    _validate(q, k, v, block_size, key_mask)
    return flash_attention(q, k, v, 64, is_causal, scale, key_mask)


@mistake("flash_attention", "builds the whole (L, S) causal mask once and slices each tile's mask out of it: the "
         "scores are tiled, but the mask is the T x T matrix flash attention avoids")
def flash_full_causal_mask(q, k, v, block_size=64, is_causal=False, scale=None, key_mask=None):
    _validate(q, k, v, block_size, key_mask)
    if is_causal:  # (L, S) bools, then a float mask per tile: -inf above the diagonal
        full = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device).tril()
        if key_mask is not None:
            full = full & key_mask[..., None, :]
        key_mask = None
        return _with_full_mask(q, k, v, block_size, scale, full)
    return flash_attention(q, k, v, block_size, is_causal, scale, key_mask)


def _with_full_mask(q, k, v, block_size, scale, full):
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    L, S, Ev = q.shape[-2], k.shape[-2], v.shape[-1]
    lead = torch.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2], full.shape[:-2])
    blocks = []
    for i0 in range(0, L, block_size):
        i1 = min(i0 + block_size, L)
        m = q.new_full((*lead, i1 - i0, 1), -math.inf)
        denom = q.new_zeros((*lead, i1 - i0, 1))
        acc = q.new_zeros((*lead, i1 - i0, Ev))
        for j0 in range(0, S, block_size):
            j1 = min(j0 + block_size, S)
            s = (q[..., i0:i1, :] @ k[..., j0:j1, :].transpose(-2, -1)) * scale
            s = s.masked_fill(~full[..., i0:i1, j0:j1], -math.inf)
            m_new = torch.maximum(m, s.amax(dim=-1, keepdim=True))
            shift = torch.where(torch.isfinite(m_new), m_new, torch.zeros_like(m_new))
            p, alpha = torch.exp(s - shift), torch.exp(m - shift)
            denom, acc, m = denom * alpha + p.sum(dim=-1, keepdim=True), acc * alpha + p @ v[..., j0:j1, :], m_new
        blocks.append(acc / denom.clamp_min(torch.finfo(q.dtype).tiny))
    return torch.cat(blocks, dim=-2) if blocks else q.new_zeros(lead + (0, Ev))


@mutant("flash_attention", "the default scale is 1 instead of 1/sqrt(E), so the softmax is too peaked for large "
        "head sizes", replace={"scale = 1.0 / math.sqrt(q.shape[-1])": "scale = 1.0"})
def flash_no_default_scale(): ...


@mutant("flash_attention", "the scores are scaled by 1/sqrt(Ev), the size of v, instead of 1/sqrt(E), the size of "
        "q and k", replace={"math.sqrt(q.shape[-1])": "math.sqrt(v.shape[-1])"})
def flash_scaled_by_value_size(): ...


@mutant("flash_attention", "acc is not rescaled when a later tile raises the row max: the weighted values summed "
        "under the old max count too much", replace={"acc = acc * alpha + p @": "acc = acc + p @"})
def flash_acc_not_rescaled(): ...


@mutant("flash_attention", "the denominator l is not rescaled when a later tile raises the row max",
        replace={"denom = denom * alpha + p.sum": "denom = denom + p.sum"})
def flash_denominator_not_rescaled(): ...


@mutant("flash_attention", "the rescale factor is inverted, exp(m_new - m_old) instead of exp(m_old - m_new)",
        replace={"alpha = torch.exp(m - shift)": "alpha = torch.exp(shift - m).nan_to_num(0.0, 0.0)"})
def flash_rescale_inverted(): ...


@mutant("flash_attention", "exp() of the raw scores without subtracting the running max: scores of size 1e4 "
        "overflow to inf and give nan",
        replace={"shift = torch.where(torch.isfinite(m_new), m_new, torch.zeros_like(m_new))":
                 "shift = torch.zeros_like(m_new)"})
def flash_without_max_shift(): ...


@mutant("flash_attention", "the running max starts at -inf and is used as the shift unguarded: a row whose first "
        "key tiles are all masked (left padding) computes exp(-inf - (-inf)) = nan",
        replace={"shift = torch.where(torch.isfinite(m_new), m_new, torch.zeros_like(m_new))": "shift = m_new"})
def flash_nan_for_rows_not_started(): ...


@mutant("flash_attention", "divides by l without clamping it: a row with no allowed key at all gives 0 / 0 = nan "
        "(it must be 0)", replace={"acc / denom.clamp_min(tiny)": "acc / denom"})
def flash_nan_for_empty_rows(): ...


@mutant("flash_attention", "the causal mask of a tile compares positions within the tile (0 .. block_size - 1) "
        "instead of the global positions i0 + r and j0 + c",
        replace={"torch.arange(i0, i1, device=q.device)": "torch.arange(0, i1 - i0, device=q.device)",
                 "torch.arange(j0, j1, device=q.device)": "torch.arange(0, j1 - j0, device=q.device)"})
def flash_causal_local_positions(): ...


@mutant("flash_attention", "the causal mask excludes the diagonal (j < i): a token cannot see itself, and the first "
        "query has nothing to attend to", replace={"cols[None, :] <= rows[:, None]": "cols[None, :] < rows[:, None]"})
def flash_causal_without_diagonal(): ...


@mutant("flash_attention", "is_causal is aligned bottom-right (query i sees keys up to i + S - L, as some kernels "
        "do) instead of top-left like torch's is_causal",
        replace={"cols[None, :] <= rows[:, None]": "cols[None, :] <= rows[:, None] + (S - L)"})
def flash_causal_bottom_right(): ...


@mutant("flash_attention", "the last, shorter tile of keys is dropped when S is not a multiple of block_size",
        replace={"for j0 in range(0, S, block_size)": "for j0 in range(0, S - S % block_size, block_size)"})
def flash_drops_last_key_tile(): ...


@mutant("flash_attention", "the last, shorter tile of queries is dropped when L is not a multiple of block_size",
        replace={"for i0 in range(0, L, block_size)": "for i0 in range(0, L - L % block_size, block_size)"})
def flash_drops_last_query_tile(): ...


@mutant("flash_attention", "key_mask is read as True = padding (nn.MultiheadAttention's key_padding_mask), the "
        "opposite of SDPA's bool mask",
        replace={"keep = key_mask[..., None, j0:j1]": "keep = ~key_mask[..., None, j0:j1]"})
def flash_key_mask_inverted(): ...


@mutant("flash_attention", "key_mask is ignored when is_causal=True (the causal mask replaces it instead of "
        "being combined with it)", replace={"allowed = keep if allowed is None else allowed & keep":
                                            "allowed = keep if allowed is None else allowed"})
def flash_key_mask_ignored_when_causal(): ...


@mutant("flash_attention", "the running statistics are created on the CPU (torch.full / torch.zeros without "
        "device=), so flash attention fails for inputs on a GPU",
        replace={"m = q.new_full((*lead, i1 - i0, 1), -math.inf)":
                 "m = torch.full((*lead, i1 - i0, 1), -math.inf, dtype=q.dtype)"})
def flash_statistics_on_cpu(): ...


@mutant("flash_attention", "the accumulator is created in float64, which promotes the output of float32 or "
        "bfloat16 inputs", replace={"acc = q.new_zeros((*lead, i1 - i0, Ev))":
                                    "acc = torch.zeros((*lead, i1 - i0, Ev), dtype=torch.float64, device=q.device)"})
def flash_float64_accumulator(): ...


@mistake("flash_attention", "q is scaled in place (q *= scale), which changes the caller's tensor")
def flash_scales_q_in_place(q, k, v, block_size=64, is_causal=False, scale=None, key_mask=None):
    _validate(q, k, v, block_size, key_mask)
    with torch.no_grad():
        q.mul_(1.0 / math.sqrt(q.shape[-1]) if scale is None else scale)
    return flash_attention(q, k, v, block_size, is_causal, 1.0, key_mask)


@mistake("flash_attention", "takes an ordinary softmax inside each key tile and averages the tiles' outputs: each "
         "tile's weights sum to 1 on their own, instead of all the keys sharing one softmax")
def flash_averages_tile_softmaxes(q, k, v, block_size=64, is_causal=False, scale=None, key_mask=None):
    _validate(q, k, v, block_size, key_mask)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    L, S, Ev = q.shape[-2], k.shape[-2], v.shape[-1]
    lead = _lead(q, k, v, key_mask)
    blocks = []
    for i0 in range(0, L, block_size):
        i1 = min(i0 + block_size, L)
        total = q.new_zeros((*lead, i1 - i0, Ev))
        count = q.new_zeros((*lead, i1 - i0, 1))
        for j0 in range(0, S, block_size):
            j1 = min(j0 + block_size, S)
            allowed = torch.ones(i1 - i0, j1 - j0, dtype=torch.bool, device=q.device)
            if is_causal:
                rows = torch.arange(i0, i1, device=q.device)
                allowed = torch.arange(j0, j1, device=q.device)[None, :] <= rows[:, None]
            if key_mask is not None:
                allowed = allowed & key_mask[..., None, j0:j1]
            s = (q[..., i0:i1, :] @ k[..., j0:j1, :].transpose(-2, -1)) * scale
            total = total + _safe_rows(s, allowed, v[..., j0:j1, :])
            count = count + allowed.any(dim=-1, keepdim=True)
        blocks.append(total / count.clamp_min(1))
    return torch.cat(blocks, dim=-2) if blocks else q.new_zeros(lead + (0, Ev))


@mistake("flash_attention", "runs under torch.no_grad() like inference code: the output is right but carries no "
         "gradient, so it cannot be trained through")
def flash_without_gradients(q, k, v, block_size=64, is_causal=False, scale=None, key_mask=None):
    with torch.no_grad():
        return flash_attention(q, k, v, block_size, is_causal, scale, key_mask)


@mutant("flash_attention", "the shape of the running statistics comes from q alone: when k and v have the larger "
        "batch (one q for many keys) and there are no keys, the output has the wrong shape",
        replace={"lead = torch.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])": "lead = q.shape[:-2]"})
def flash_lead_from_q_only(): ...


@variant("flash_attention", "FlashAttention-1 style: the output tile is kept normalised after every key tile "
         "(rescaled by l_old * alpha / l_new), and the running max starts at finfo.min instead of -inf, so it never "
         "needs a guard")
def flash_normalised_every_tile(q, k, v, block_size=64, is_causal=False, scale=None, key_mask=None):
    _validate(q, k, v, block_size, key_mask)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    L, S, Ev = q.shape[-2], k.shape[-2], v.shape[-1]
    lead = _lead(q, k, v, key_mask)
    lowest, tiny = torch.finfo(q.dtype).min, torch.finfo(q.dtype).tiny
    out_tiles = []
    for i0 in range(0, L, block_size):
        rows = torch.arange(i0, min(i0 + block_size, L), device=q.device)
        o = q.new_zeros((*lead, len(rows), Ev))
        m = q.new_full((*lead, len(rows), 1), lowest)
        l_ = q.new_zeros((*lead, len(rows), 1))
        for j0 in range(0, S, block_size):
            cols = torch.arange(j0, min(j0 + block_size, S), device=q.device)
            s = torch.einsum("...rd,...cd->...rc", q[..., rows, :], k[..., cols, :]) * scale
            keep = torch.ones(len(rows), len(cols), dtype=torch.bool, device=q.device)
            if is_causal:
                keep = keep & (cols[None, :] <= rows[:, None])
            if key_mask is not None:
                keep = keep & key_mask[..., None, cols]
            m_new = torch.maximum(m, s.masked_fill(~keep, lowest).amax(dim=-1, keepdim=True)).detach()
            p = torch.exp((s - m_new).masked_fill(~keep, -math.inf))  # masked keys: exactly 0
            l_new = l_ * torch.exp(m - m_new) + p.sum(dim=-1, keepdim=True)
            o = (o * l_ * torch.exp(m - m_new) + p @ v[..., cols, :]) / l_new.clamp_min(tiny)
            m, l_ = m_new, l_new
        out_tiles.append(o)
    return torch.cat(out_tiles, dim=-2) if out_tiles else q.new_zeros((*lead, 0, Ev))


@variant("flash_attention", "key tiles in the outer loop and query tiles inside (FlashAttention-1's loop order): "
         "the statistics of every query tile are kept in lists until the last key tile")
def flash_keys_outside(q, k, v, block_size=64, is_causal=False, scale=None, key_mask=None):
    _validate(q, k, v, block_size, key_mask)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    L, S, Ev = q.shape[-2], k.shape[-2], v.shape[-1]
    lead = _lead(q, k, v, key_mask)
    starts = list(range(0, L, block_size))
    sizes = [min(block_size, L - i0) for i0 in starts]
    m = [q.new_full((*lead, n, 1), -math.inf) for n in sizes]
    l_ = [q.new_zeros((*lead, n, 1)) for n in sizes]
    acc = [q.new_zeros((*lead, n, Ev)) for n in sizes]
    for j0 in range(0, S, block_size):
        j1 = min(j0 + block_size, S)
        k_tile, v_tile = k[..., j0:j1, :], v[..., j0:j1, :]
        for t, (i0, n) in enumerate(zip(starts, sizes, strict=True)):
            s = torch.matmul(q[..., i0:i0 + n, :], k_tile.transpose(-1, -2)) * scale
            if is_causal:
                s = torch.where(torch.arange(j0, j1, device=q.device) <= torch.arange(i0, i0 + n, device=q.device)[
                    :, None], s, -math.inf)
            if key_mask is not None:
                s = torch.where(key_mask[..., None, j0:j1], s, -math.inf)
            top = torch.maximum(m[t], s.amax(dim=-1, keepdim=True)).detach()
            safe = top.nan_to_num(neginf=0.0)
            p = (s - safe).exp()
            scale_old = (m[t] - safe).exp()
            l_[t] = l_[t] * scale_old + p.sum(dim=-1, keepdim=True)
            acc[t] = acc[t] * scale_old + p @ v_tile
            m[t] = top
    tiles = [a / torch.where(d > 0, d, torch.ones_like(d)) for a, d in zip(acc, l_, strict=True)]
    return torch.cat(tiles, dim=-2) if tiles else q.new_zeros((*lead, 0, Ev))


@variant("flash_attention", "two passes over the key tiles instead of one: first each row's max and sum, then the "
         "weighted values with the final max (no rescaling, still never more than a tile of scores)")
def flash_two_passes(q, k, v, block_size=64, is_causal=False, scale=None, key_mask=None):
    _validate(q, k, v, block_size, key_mask)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    L, S, Ev = q.shape[-2], k.shape[-2], v.shape[-1]
    lead = _lead(q, k, v, key_mask)

    def tile_scores(i0, i1, j0, j1):
        s = (q[..., i0:i1, :] @ k[..., j0:j1, :].mT) * scale
        allowed = torch.ones(i1 - i0, j1 - j0, dtype=torch.bool, device=q.device)
        if is_causal:
            allowed = torch.arange(j0, j1, device=q.device) <= torch.arange(i0, i1, device=q.device)[:, None]
        if key_mask is not None:
            allowed = allowed & key_mask[..., None, j0:j1]
        return s.masked_fill(~allowed, -math.inf)

    out = []
    for i0 in range(0, L, block_size):
        i1 = min(i0 + block_size, L)
        row_max = q.new_full((*lead, i1 - i0, 1), -math.inf)
        for j0 in range(0, S, block_size):
            row_max = torch.maximum(row_max, tile_scores(i0, i1, j0, min(j0 + block_size, S)).amax(-1, keepdim=True))
        row_max = torch.where(row_max.isinf(), torch.zeros_like(row_max), row_max).detach()
        total, acc = q.new_zeros((*lead, i1 - i0, 1)), q.new_zeros((*lead, i1 - i0, Ev))
        for j0 in range(0, S, block_size):
            j1 = min(j0 + block_size, S)
            p = torch.exp(tile_scores(i0, i1, j0, j1) - row_max)
            total = total + p.sum(-1, keepdim=True)
            acc = acc + p @ v[..., j0:j1, :]
        out.append(acc / total.clamp_min(torch.finfo(q.dtype).tiny))
    return torch.cat(out, dim=-2) if out else q.new_zeros((*lead, 0, Ev))


@mutant("flash_attention", "`if not scale:` instead of `if scale is None:`: an explicit scale of 0 is replaced by "
        "the default 1/sqrt(E)", replace={"    if scale is None:\n": "    if not scale:\n"})
def flash_zero_scale_taken_as_default(): ...


@mutant("flash_attention", "masks by multiplying p by the mask after the exp() instead of setting masked scores to "
        "-inf before the running max: a masked key with a huge score sets the max, and every real key's exp() "
        "underflows to 0", replace={
            "                s = s.masked_fill(~allowed, -math.inf)": "                pass",
            "            p = torch.exp(s - shift)  #":
                "            p = torch.exp(s - shift) * (1.0 if allowed is None else allowed)  #",
            "blocks.append(acc / denom.clamp_min(tiny))":
                "blocks.append(acc / torch.where(denom == 0, torch.ones_like(denom), denom))"})
def flash_masks_after_exp(): ...


@mutant("flash_attention", "masks the raw scores and multiplies by scale afterwards: with a negative scale a "
        "masked -inf becomes +inf, with scale 0 it becomes nan",
        replace={"s = (q_tile @ k[..., j0:j1, :].transpose(-2, -1)) * scale":
                 "s = q_tile @ k[..., j0:j1, :].transpose(-2, -1)",
                 "            # The shift only keeps": "            s = s * scale\n            # The shift only keeps"})
def flash_masks_before_scaling(): ...


@mutant("flash_attention", "accepts a key_mask whose last dimension is 1 (torch broadcasts it over the keys) "
        "instead of rejecting a mask that does not have one entry per key",
        replace={"key_mask.shape[-1] != S:": "key_mask.shape[-1] not in (1, S):"})
def flash_key_mask_of_one_entry(): ...


@mutant("flash_attention", "the error for a bad block_size does not say which argument is wrong",
        replace={'raise ValueError(f"block_size must be >= 1, got block_size={block_size}")':
                 'raise ValueError(f"the tile size must be >= 1, got {block_size}")'})
def flash_block_size_error_unnamed(): ...


@variant("flash_attention", "Triton kernels' style: scores in base 2 (exp2 of s * log2(e)), and a running "
         "log-sum-exp per row instead of the sum l, written with einsum")
def flash_base2_logsumexp(q, k, v, block_size=64, is_causal=False, scale=None, key_mask=None):
    _validate(q, k, v, block_size, key_mask)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    L, S, Ev = q.shape[-2], k.shape[-2], v.shape[-1]
    lead = _lead(q, k, v, key_mask)
    log2e = 1.0 / math.log(2.0)
    tiles = []
    for i0 in range(0, L, block_size):
        n = min(block_size, L - i0)
        lse2 = q.new_full((*lead, n, 1), -math.inf)  # log2 of sum 2^s2 over the keys seen so far
        out = q.new_zeros((*lead, n, Ev))  # kept normalised: sum 2^(s2 - lse2) v
        for j0 in range(0, S, block_size):
            j1 = min(j0 + block_size, S)
            s2 = torch.einsum("...id,...jd->...ij", q[..., i0:i0 + n, :], k[..., j0:j1, :]) * (scale * log2e)
            if is_causal:
                s2 = s2.masked_fill(torch.arange(j0, j1, device=q.device) > torch.arange(
                    i0, i0 + n, device=q.device)[:, None], -math.inf)
            if key_mask is not None:
                s2 = s2.masked_fill(~key_mask[..., None, j0:j1], -math.inf)
            tile_max = s2.amax(dim=-1, keepdim=True).detach()
            tile_max = torch.where(tile_max.isfinite(), tile_max, torch.zeros_like(tile_max))
            p = torch.exp2(s2 - tile_max)
            tile_lse2 = torch.log2(p.sum(dim=-1, keepdim=True)) + tile_max
            new_lse2 = torch.logaddexp2(lse2, tile_lse2)
            safe = torch.where(new_lse2.isfinite(), new_lse2, torch.zeros_like(new_lse2))
            out = out * torch.exp2(lse2 - safe) + (p @ v[..., j0:j1, :]) * torch.exp2(tile_max - safe)
            lse2 = new_lse2
        tiles.append(out)
    return torch.cat(tiles, dim=-2) if tiles else q.new_zeros((*lead, 0, Ev))


# --------------------------------------------------------------------------------------------------
# speculative_decode


def _validate_spec(idx, max_new_tokens, k):
    for name, value, low in (("max_new_tokens", max_new_tokens, 0), ("k", k, 1)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise TypeError(f"{name} must be an integer, got {value!r}")
        if value < low:
            raise ValueError(f"{name}={value} must be >= {low}")
    if idx.ndim != 2 or idx.shape[0] != 1 or idx.shape[1] < 1:
        raise ValueError(f"idx must be (1, T); got {tuple(idx.shape)}")


@mutant("speculative_decode", "keeps every draft guess without checking it against the target: the output is the "
        "draft's text, not the target's",
        replace={"while n_ok < n_draft and bool(guesses[n_ok] == choice[0, n_ok]):": "while n_ok < n_draft:",
                 "seq = torch.cat([seq, choice[:, : n_ok + 1]], dim=1)":
                 "seq = torch.cat([proposal, choice[:, n_ok : n_ok + 1]], dim=1)"})
def spec_trusts_the_draft(): ...


@mutant("speculative_decode", "the target's choices are read one position too late (logits[:, T:] instead of "
        "logits[:, T - 1:]): guess i is compared with the target's choice after guess i, not before it",
        replace={"logits = target(proposal)[:, seq.shape[1] - 1 :, :]":
                 "logits = torch.cat([target(proposal)[:, seq.shape[1]:, :], target(proposal)[:, -1:, :]], dim=1)"})
def spec_logits_off_by_one(): ...


@mutant("speculative_decode", "drafts k guesses even when fewer tokens are left, then cuts the result: the rounds, "
        "the accepted count and the calls differ from the documented ones",
        replace={"n_draft = min(k, max_new_tokens - (seq.shape[1] - start) - 1)": "n_draft = k",
                 "    return seq, accepted": "    return seq[:, : start + max_new_tokens], accepted"})
def spec_drafts_k_and_truncates(): ...


@mutant("speculative_decode", "adds no bonus token when every guess is kept: the target's free prediction after "
        "the last guess is thrown away, so a perfect draft needs more target calls",
        replace={"seq = torch.cat([seq, choice[:, : n_ok + 1]], dim=1)":
                 "seq = torch.cat([seq, choice[:, : n_ok + (1 if n_ok < n_draft or n_draft == 0 else 0)]], dim=1)"})
def spec_no_bonus_token(): ...


@mutant("speculative_decode", "counts every guess that matches the target's choice, also those after the first "
        "mismatch, which are never kept (their context was already wrong)",
        replace={"accepted += n_ok": "accepted += int((guesses == choice[0, :n_draft]).sum())"})
def spec_counts_matches_after_a_mismatch(): ...


@mutant("speculative_decode", "calls the target once per guess to check it: the output is right, but nothing is "
        "saved, because the target runs as often as in plain greedy decoding",
        replace={"logits = target(proposal)[:, seq.shape[1] - 1 :, :]":
                 "logits = torch.cat([target(proposal[:, : seq.shape[1] + i])[:, -1:, :] "
                 "for i in range(n_draft + 1)], 1)"})
def spec_one_target_call_per_guess(): ...


@mutant("speculative_decode", "the accepted count includes the target's own token of each round (a + 1 instead of a)",
        replace={"accepted += n_ok": "accepted += n_ok + 1"})
def spec_counts_the_target_token(): ...


@mutant("speculative_decode", "the models are called with autograd on (no torch.no_grad()): every call keeps a "
        "graph of activations alive for a backward pass that never comes",
        replace={"with torch.no_grad():": "with torch.enable_grad():"})
def spec_with_gradients(): ...


@mutant("speculative_decode", "the target's tokens are appended as int64 (argmax's dtype): int32 ids come back "
        "as int64", replace={"choice = logits.argmax(dim=-1).to(seq.dtype)": "choice = logits.argmax(dim=-1)"})
def spec_int64_tokens(): ...


@mutant("speculative_decode", "the draft's guesses are appended as int64 (argmax's dtype): with int32 ids the "
        "models are called with int64 ids", replace={"torch.cat([proposal, guess.to(seq.dtype)], dim=1)":
                                                     "torch.cat([proposal, guess], dim=1)"})
def spec_int64_guesses(): ...


@mistake("speculative_decode", "accepts a batch of several sequences and checks the guesses of the first row only")
def spec_first_row_only(target, draft, idx, max_new_tokens, k=4):
    if idx.ndim == 2 and idx.shape[0] > 1 and idx.shape[1] >= 1:
        rows = [speculative_decode(target, draft, idx[b:b + 1], max_new_tokens, k) for b in range(idx.shape[0])]
        return torch.cat([r[0] for r in rows]), rows[0][1]
    return speculative_decode(target, draft, idx, max_new_tokens, k)


@variant("speculative_decode", "Hugging Face's way of counting kept guesses: ((guesses != choices).cumsum(-1) < 1)"
         ".sum(), and the new tokens written into a preallocated output")
def spec_cumsum_and_buffer(target, draft, idx, max_new_tokens, k=4):
    _validate_spec(idx, max_new_tokens, k)
    T0 = idx.shape[1]
    out = torch.empty(1, T0 + max_new_tokens, dtype=idx.dtype, device=idx.device)
    out[:, :T0] = idx
    n, accepted = 0, 0
    with torch.inference_mode():
        while n < max_new_tokens:
            d = min(k, max_new_tokens - n - 1)
            candidate = out[:, :T0 + n]
            for _ in range(d):
                candidate = torch.cat([candidate, draft(candidate)[:, -1:].argmax(-1).to(idx.dtype)], dim=-1)
            chosen = target(candidate)[:, -d - 1:].argmax(-1).to(idx.dtype)  # (1, d + 1)
            kept = int(((candidate[:, T0 + n:] != chosen[:, :d]).cumsum(-1) < 1).sum())
            out[:, T0 + n:T0 + n + kept + 1] = chosen[:, :kept + 1]
            n, accepted = n + kept + 1, accepted + kept
    return out.clone(), accepted


@mutant("speculative_decode", "k defaults to 5 instead of 4: without k, every round drafts one guess too many",
        replace={"    k: int = 4,\n": "    k: int = 5,\n"})
def spec_default_k_5(): ...


@mutant("speculative_decode", "the error for k < 1 is a copy of the one for max_new_tokens: it names the wrong "
        "argument", replace={'raise ValueError(f"k must be >= 1, got k={k}")':
                             'raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")'})
def spec_k_error_names_max_new_tokens(): ...


@variant("speculative_decode", "the new tokens kept in a Python list of ints, the first mismatch found with "
         "torch.nonzero, and the result built once at the end with torch.tensor(..., dtype=idx.dtype)")
def spec_python_list(target, draft, idx, max_new_tokens, k=4):
    _validate_spec(idx, max_new_tokens, k)
    tokens, accepted = idx[0].tolist(), 0

    def as_ids(values):
        return torch.tensor([values], dtype=idx.dtype, device=idx.device)

    with torch.no_grad():
        while len(tokens) - idx.shape[1] < max_new_tokens:
            d = min(k, max_new_tokens - (len(tokens) - idx.shape[1]) - 1)
            guesses = []
            for _ in range(d):
                guesses.append(int(draft(as_ids(tokens + guesses))[0, -1].argmax()))
            chosen = target(as_ids(tokens + guesses))[0, len(tokens) - 1:].argmax(dim=-1).tolist()
            wrong = torch.nonzero(torch.tensor(guesses, dtype=torch.long) != torch.tensor(chosen[:d]))
            kept = int(wrong[0, 0]) if len(wrong) else d
            tokens, accepted = tokens + chosen[:kept + 1], accepted + kept
    return as_ids(tokens), accepted


# --------------------------------------------------------------------------------------------------
# sliding_window_mask


@mutant("sliding_window_mask", "off by one: i - j <= window lets each query see window + 1 keys",
        replace={"(distance >= 0) & (distance < window)": "(distance >= 0) & (distance <= window)"})
def window_one_too_many(): ...


@mutant("sliding_window_mask", "the diagonal is excluded (i - j > 0): a token cannot see itself, and the first "
        "query has nothing to attend to", replace={"(distance >= 0) & (distance < window)":
                                                   "(distance > 0) & (distance <= window)"})
def window_without_diagonal(): ...


@mutant("sliding_window_mask", "the window is applied to the future keys (j - i instead of i - j): the mask is "
        "transposed", replace={"distance = positions[:, None] - positions[None, :]":
                               "distance = positions[None, :] - positions[:, None]"})
def window_looks_ahead(): ...


@mutant("sliding_window_mask", "the mask marks the keys to hide (True = masked, as nn.MultiheadAttention's "
        "attn_mask), the opposite of SDPA's convention",
        replace={"return (distance >= 0) & (distance < window)": "return ~((distance >= 0) & (distance < window))",
                 "return distance.abs() < window": "return distance.abs() >= window"})
def window_inverted(): ...


@mutant("sliding_window_mask", "causal=False is ignored: the mask is always causal",
        replace={"if causal:": "if True:"})
def window_always_causal(): ...


@mutant("sliding_window_mask", "the two-sided window forgets abs(): every key after the query is allowed",
        replace={"return distance.abs() < window": "return distance < window"})
def window_two_sided_without_abs(): ...


@mutant("sliding_window_mask", "device is ignored: the mask is always built on the CPU",
        replace={"torch.arange(t, device=device)": "torch.arange(t)"})
def window_on_cpu(): ...


@mistake("sliding_window_mask", "returns an additive float mask (0 = attend, -inf = masked) instead of a bool mask")
def window_float_mask(t, window, causal=True, device=None):
    keep = sliding_window_mask(t, window, causal, device)
    return torch.zeros(keep.shape, device=keep.device).masked_fill(~keep, -math.inf)


@mistake("sliding_window_mask", "converts t and window with int(), so 3.0 and True are silently accepted")
def window_int_conversion(t, window, causal=True, device=None):
    return sliding_window_mask(int(t), int(window), causal, device)


@variant("sliding_window_mask", "built from triangles: ones(t, t).tril() with the band below the window cut off by "
         "triu(-(window - 1)), and tril(window - 1) for the two-sided window")
def window_from_triangles(t, window, causal=True, device=None):
    for name, value, low in (("t", t, 0), ("window", window, 1)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int, got {value!r}")
        if value < low:
            raise ValueError(f"{name} must be >= {low}, got {value}")
    ones = torch.ones(t, t, dtype=torch.bool, device=device)
    upper = 0 if causal else window - 1
    return ones.tril(upper).triu(-(window - 1))


@mutant("sliding_window_mask", "device is honoured for the causal mask only: the two-sided mask is built on the CPU",
        replace={"    return distance.abs() < window":
                 "    return (torch.arange(t)[:, None] - torch.arange(t)[None, :]).abs() < window"})
def window_two_sided_on_cpu(): ...


@mutant("sliding_window_mask", "the error for a negative t does not say which argument is wrong",
        replace={'raise ValueError(f"t must be >= 0, got t={t}")': 'raise ValueError(f"size must be >= 0, got {t}")'})
def window_t_error_unnamed(): ...


@mutant("sliding_window_mask", "the error for a window below 1 is a copy of the one for t: it names the wrong argument",
        replace={'raise ValueError(f"window must be >= 1, got window={window}")':
                 'raise ValueError(f"t must be >= 0, got t={window}")'})
def window_error_names_t(): ...
