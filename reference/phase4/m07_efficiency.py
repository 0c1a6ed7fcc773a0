"""Reference solutions for m07_efficiency (months 7-8 of the learning path: "focus on efficiency improvements").

Three tricks that make attention and generation cheaper without changing what the model computes:
- ``flash_attention``: exact attention, tiled so that no (L, S) matrix of scores is ever built (FlashAttention);
- ``speculative_decode``: a small draft model guesses tokens, the large target model checks them all in one call;
- ``sliding_window_mask``: each query sees only the last ``window`` keys (Mistral, Longformer).

The learning path names the topic but has no code for it, so there are no bugs of its own to fix here.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable

import torch
from torch import Tensor


def _is_int(value) -> bool:
    """An int of any kind, but not a bool: True would silently count as 1, and 2.0 is not a count."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


# --------------------------------------------------------------------------------------------------
# flash attention


def flash_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    block_size: int = 64,
    is_causal: bool = False,
    scale: float | None = None,
    key_mask: Tensor | None = None,
) -> Tensor:
    """softmax(q k^T * scale + mask) v, one (block_size, block_size) tile of scores at a time, online softmax."""
    if not _is_int(block_size):
        raise TypeError(f"block_size must be an integer, got {block_size!r}")
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got block_size={block_size}")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q and k must share their last dimension; got q {tuple(q.shape)} and k {tuple(k.shape)}")
    if k.shape[-2] != v.shape[-2]:
        raise ValueError(f"k and v must have the same number of keys; got k {tuple(k.shape)} and v {tuple(v.shape)}")
    L, S, Ev = q.shape[-2], k.shape[-2], v.shape[-1]
    lead = torch.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
    if key_mask is not None:
        if key_mask.dtype != torch.bool or key_mask.ndim < 1 or key_mask.shape[-1] != S:
            raise ValueError(
                f"key_mask must be a bool tensor of shape (..., S={S}); got {key_mask.dtype} "
                f"of shape {tuple(key_mask.shape)}"
            )
        lead = torch.broadcast_shapes(lead, key_mask.shape[:-1])
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])  # keeps the scores' variance ~1 whatever the head size
    tiny = torch.finfo(q.dtype).tiny
    blocks = []
    for i0 in range(0, L, block_size):  # one tile of queries at a time: rows i0 .. i1 - 1
        i1 = min(i0 + block_size, L)  # the last tile may be shorter: L need not be a multiple of block_size
        q_tile = q[..., i0:i1, :]
        # Running statistics of each query row over the keys seen so far: the max score m, the softmax
        # denominator l = sum exp(s - m), and the numerator acc = sum exp(s - m) v. Only (rows, 1) and
        # (rows, Ev) numbers per tile: nothing here grows with S.
        m = q.new_full((*lead, i1 - i0, 1), -math.inf)
        denom = q.new_zeros((*lead, i1 - i0, 1))
        acc = q.new_zeros((*lead, i1 - i0, Ev))
        for j0 in range(0, S, block_size):  # one tile of keys at a time
            j1 = min(j0 + block_size, S)
            s = (q_tile @ k[..., j0:j1, :].transpose(-2, -1)) * scale  # (..., rows, cols): one tile only
            allowed = None
            if is_causal:
                # global positions, not positions inside the tile: query i sees keys 0..i (top-left aligned)
                rows = torch.arange(i0, i1, device=q.device)
                cols = torch.arange(j0, j1, device=q.device)
                allowed = cols[None, :] <= rows[:, None]
            if key_mask is not None:
                keep = key_mask[..., None, j0:j1]  # (..., 1, cols): True = a real key
                allowed = keep if allowed is None else allowed & keep
            if allowed is not None:
                s = s.masked_fill(~allowed, -math.inf)
            # The shift only keeps exp() from overflowing and cancels in acc / denom, so it needs no gradient.
            m_new = torch.maximum(m, s.detach().amax(dim=-1, keepdim=True))
            # A row that has met no allowed key yet still has m_new = -inf: shift it by 0 instead, or
            # exp(-inf - (-inf)) = exp(nan) poisons its statistics for good. Its p and alpha are then 0 and 1.
            shift = torch.where(torch.isfinite(m_new), m_new, torch.zeros_like(m_new))
            p = torch.exp(s - shift)  # (..., rows, cols), masked keys give exactly 0
            alpha = torch.exp(m - shift)  # rescales what was summed under the old max (0 when m was -inf)
            denom = denom * alpha + p.sum(dim=-1, keepdim=True)
            acc = acc * alpha + p @ v[..., j0:j1, :]
            m = m_new
        # divide once at the end; a row with no allowed key at all (or S = 0) has acc = 0 and denom = 0: output 0
        blocks.append(acc / denom.clamp_min(tiny))
    if not blocks:  # L = 0
        return q.new_zeros((*lead, 0, Ev))
    return torch.cat(blocks, dim=-2)


# --------------------------------------------------------------------------------------------------
# speculative decoding


def speculative_decode(
    target: Callable[[Tensor], Tensor],
    draft: Callable[[Tensor], Tensor],
    idx: Tensor,
    max_new_tokens: int,
    k: int = 4,
) -> tuple[Tensor, int]:
    """Greedy decoding of ``target``, sped up by ``draft``'s guesses. Returns ``(tokens, accepted)``."""
    if not _is_int(max_new_tokens) or not _is_int(k):
        raise TypeError(f"max_new_tokens and k must be integers, got {max_new_tokens!r} and {k!r}")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got max_new_tokens={max_new_tokens}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got k={k}")
    if not isinstance(idx, Tensor) or idx.ndim != 2 or idx.shape[0] != 1 or idx.shape[1] < 1:
        raise ValueError(f"idx must be a (1, T) tensor of at least one token; got {getattr(idx, 'shape', idx)}")
    seq, start, accepted = idx, idx.shape[1], 0
    with torch.no_grad():  # inference only: no autograd graph for any of the calls
        while seq.shape[1] - start < max_new_tokens:
            # Draft at most remaining - 1 tokens: the round always adds one token of the target's own
            # (the correction, or a bonus when every guess is right), so it never overshoots.
            n_draft = min(k, max_new_tokens - (seq.shape[1] - start) - 1)
            proposal = seq
            for _ in range(n_draft):  # the draft guesses greedily, one call per token
                guess = draft(proposal)[:, -1:, :].argmax(dim=-1)  # (1, 1)
                proposal = torch.cat([proposal, guess.to(seq.dtype)], dim=1)  # the models always get idx's dtype
            # ONE target call scores every guess: the logits at position t predict token t + 1, so the
            # last n_draft + 1 positions give the target's choice after the prefix and after each guess.
            logits = target(proposal)[:, seq.shape[1] - 1 :, :]  # (1, n_draft + 1, V)
            choice = logits.argmax(dim=-1).to(seq.dtype)  # (1, n_draft + 1)
            guesses = proposal[0, seq.shape[1] :]
            n_ok = 0
            while n_ok < n_draft and bool(guesses[n_ok] == choice[0, n_ok]):
                n_ok += 1  # keep guesses while they are what the target would have chosen
            # the kept guesses equal choice[:n_ok]; choice[n_ok] is the target's token after them
            seq = torch.cat([seq, choice[:, : n_ok + 1]], dim=1)
            accepted += n_ok
    return seq, accepted


# --------------------------------------------------------------------------------------------------
# sliding window mask


def sliding_window_mask(
    t: int, window: int, causal: bool = True, device: torch.device | str | None = None
) -> Tensor:
    """(t, t) bool mask, True where query i may attend to key j: 0 <= i - j < window (not causal: |i - j| < window)."""
    if not _is_int(t) or not _is_int(window):
        raise TypeError(f"t and window must be integers, got t={t!r} and window={window!r}")
    if t < 0:
        raise ValueError(f"t must be >= 0, got t={t}")
    if window < 1:
        raise ValueError(f"window must be >= 1, got window={window}")
    positions = torch.arange(t, device=device)
    distance = positions[:, None] - positions[None, :]  # (t, t): query i minus key j
    if causal:
        return (distance >= 0) & (distance < window)  # itself and the window - 1 keys before it
    return distance.abs() < window  # window - 1 keys on each side, and itself
