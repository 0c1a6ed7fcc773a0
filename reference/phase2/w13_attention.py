"""Reference solutions for w13_attention (Weeks 13-14: transformers).

Fixes of the learning path's own code:
- ``PositionalEncoding`` crashed for an odd ``embed_dim``: the cosine columns ``pe[:, 1::2]`` are one fewer
  than the frequencies. Here the cosines are cut to ``embed_dim // 2`` columns. It also computed the angles in
  float32, which drift by ~1e-4 at position 5000; here they are float64, rounded once when stored.
- ``SelfAttention`` had no causal mask and crashed with an unclear ``view`` error when ``embed_dim`` was not
  divisible by ``num_heads``; here the mask is optional and the constructor raises a ``ValueError``.
- ``TransformerBlock`` was post-norm only and always bidirectional; ``norm_first`` and ``causal`` are added.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence

import torch
from torch import Tensor, nn


def scaled_dot_product_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    attn_mask: Tensor | None = None,
    is_causal: bool = False,
    scale: float | None = None,
) -> tuple[Tensor, Tensor]:
    """softmax(q k^T * scale + mask) v, returning (output, weights); rows with no allowed key give 0."""
    if attn_mask is not None and is_causal:
        raise ValueError("pass either attn_mask or is_causal=True, not both (combine the masks yourself)")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q and k must share their last dimension; got q {tuple(q.shape)} and k {tuple(k.shape)}")
    if k.shape[-2] != v.shape[-2]:
        raise ValueError(f"k and v must have the same number of keys; got k {tuple(k.shape)} and v {tuple(v.shape)}")
    L, S = q.shape[-2], k.shape[-2]
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])  # keeps the scores' variance ~1 whatever the head size
    scores = (q @ k.transpose(-2, -1)) * scale  # (..., L, S)
    if is_causal:
        # top-left aligned, like torch: query i sees keys 0..i; built where q lives (a GPU, or meta)
        attn_mask = q.new_ones(L, S, dtype=torch.bool).tril()
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attn_mask, -math.inf)  # True = may attend
        elif attn_mask.is_floating_point():
            scores = scores + attn_mask  # additive: 0 keeps, -inf removes
        else:
            raise ValueError(f"attn_mask must be bool or floating point, got dtype {attn_mask.dtype}")
    if S == 0:
        # no keys at all: every row is fully masked, so its output is 0 ((..., L, 0) @ (..., 0, Ev) is zeros)
        return scores @ v, scores
    # A softmax that maps a row of -inf (no allowed key) to zeros instead of 0/0 = nan, forward and backward:
    # shift by the row max (0 for a row without any allowed key), then divide by a sum clamped away from 0.
    # The shift cancels in the division, so it needs no gradient; it only keeps exp() from overflowing.
    row_max = scores.detach().amax(dim=-1, keepdim=True)
    row_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))
    e = torch.exp(scores - row_max)
    weights = e / e.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(e.dtype).tiny)
    return weights @ v, weights


def causal_mask(t: int, device: torch.device | str | None = None) -> Tensor:
    """(t, t) bool mask, True where query i may attend to key j, i.e. j <= i."""
    t = operator.index(t)
    if t < 0:
        raise ValueError(f"t must be >= 0, got t={t}")
    idx = torch.arange(t, device=device)
    return idx[None, :] <= idx[:, None]  # diagonal included: a token sees itself


def padding_mask(lengths: Tensor | Sequence[int], t: int) -> Tensor:
    """(B, t) bool mask, True on the first lengths[b] positions of row b (real tokens), False on padding."""
    t = operator.index(t)
    if t < 0:
        raise ValueError(f"t must be >= 0, got t={t}")
    lengths = torch.as_tensor(lengths)  # a list becomes a CPU tensor; a tensor keeps its device
    # A float is not a length and a bool would silently count as 0 or 1. (An empty list becomes an empty
    # float tensor: that one is fine.)
    if lengths.ndim != 1 or lengths.dtype == torch.bool or lengths.is_floating_point() and lengths.numel():
        raise ValueError(f"lengths must be a 1-D sequence of integers, got {lengths.tolist()}")
    for b, n in enumerate(lengths.tolist()):
        if not 0 <= n <= t:
            raise ValueError(f"lengths[{b}] = {n} is outside [0, t={t}]")
    positions = lengths.new_tensor(range(t))  # 0 .. t-1, on the device of lengths
    return positions[None, :] < lengths[:, None]


class SelfAttention(nn.Module):
    """Multi-head self-attention with separate query/key/value/out projections (the learning path's layout)."""

    def __init__(self, embed_dim: int, num_heads: int, causal: bool = False, dropout: float = 0.0) -> None:
        super().__init__()
        if embed_dim <= 0 or num_heads <= 0:  # num_heads=0 would divide by zero below
            raise ValueError(f"embed_dim and num_heads must be positive, got {embed_dim} and {num_heads}")
        if embed_dim % num_heads != 0:
            # the learning path's code failed later inside .view with an unclear shape error
            raise ValueError(f"embed_dim={embed_dim} is not divisible by num_heads={num_heads}")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.causal = causal
        self.query = nn.Linear(embed_dim, embed_dim)
        self.key = nn.Linear(embed_dim, embed_dim)
        self.value = nn.Linear(embed_dim, embed_dim)
        self.out = nn.Linear(embed_dim, embed_dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, key_padding_mask: Tensor | None = None) -> Tensor:
        B, T, E = x.shape
        H, hd = self.num_heads, self.head_dim

        def heads(y: Tensor) -> Tensor:
            # (B, T, E) -> (B, T, H, hd) -> (B, H, T, hd): each head sees all T tokens of its hd features
            return y.view(B, T, H, hd).transpose(1, 2)

        q, k, v = heads(self.query(x)), heads(self.key(x)), heads(self.value(x))
        mask = causal_mask(T, device=x.device) if self.causal else None  # (T, T)
        if key_padding_mask is not None:
            # another shape would not fail here but broadcast against the (B, H, T, T) scores into nonsense
            if key_padding_mask.shape != (B, T):
                raise ValueError(f"key_padding_mask must have shape ({B}, {T}), got {tuple(key_padding_mask.shape)}")
            keep = key_padding_mask[:, None, None, :]  # (B, 1, 1, T): same for every head and query
            mask = keep if mask is None else mask & keep
        _, weights = scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, H, T, T)
        # dropout on the attention weights, as nn.MultiheadAttention does (nn.Dropout is the identity in eval())
        out = self.dropout(weights) @ v  # (B, H, T, hd)
        out = out.transpose(1, 2).reshape(B, T, E)  # heads back side by side
        return self.out(out)


class PositionalEncoding(nn.Module):
    """Adds the fixed sinusoidal encoding of "Attention is all you need" to a (B, T, E) input."""

    def __init__(self, embed_dim: int, max_len: int = 5000) -> None:
        super().__init__()
        if embed_dim <= 0 or max_len <= 0:
            raise ValueError(f"embed_dim and max_len must be positive, got {embed_dim} and {max_len}")
        self.max_len = max_len
        # The angles in float64: in float32, pos * frequency is off by ~1e-4 at position 5000.
        position = torch.arange(max_len)[:, None]  # (max_len, 1) integers, exact in any dtype
        div_term = torch.exp(torch.arange(0, embed_dim, 2, dtype=torch.float64) * (-math.log(10000.0) / embed_dim))
        angles = position * div_term  # (max_len, ceil(E / 2)), float64
        pe = torch.zeros(max_len, embed_dim)  # the default dtype: each float64 value is rounded once, here
        pe[:, 0::2] = torch.sin(angles)
        # one column fewer when E is odd (the learning path's code crashed here)
        pe[:, 1::2] = torch.cos(angles[:, : embed_dim // 2])
        self.register_buffer("pe", pe.unsqueeze(0))  # (1, max_len, E): moves with .to(), saved, never trained

    def forward(self, x: Tensor) -> Tensor:
        T = x.size(1)
        if T > self.max_len:
            raise ValueError(f"sequence length {T} is longer than max_len={self.max_len}")
        return x + self.pe[:, :T].to(x.dtype)


class TransformerBlock(nn.Module):
    """Self-attention and a ReLU feed-forward network, each with a residual connection and LayerNorm."""

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        ff_dim: int,
        dropout: float = 0.1,
        norm_first: bool = False,
        causal: bool = False,
    ) -> None:
        super().__init__()
        self.norm_first = norm_first
        self.attention = SelfAttention(embed_dim, num_heads, causal=causal, dropout=dropout)
        self.norm1 = nn.LayerNorm(embed_dim)
        self.norm2 = nn.LayerNorm(embed_dim)
        self.feed_forward = nn.Sequential(nn.Linear(embed_dim, ff_dim), nn.ReLU(), nn.Linear(ff_dim, embed_dim))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, key_padding_mask: Tensor | None = None) -> Tensor:
        if self.norm_first:
            # pre-norm: the residual stream x itself is never normalised, only each sub-layer's input
            x = x + self.dropout(self.attention(self.norm1(x), key_padding_mask))
            x = x + self.dropout(self.feed_forward(self.norm2(x)))
        else:
            # post-norm (as in the learning path and the original paper): normalise after each residual sum
            x = self.norm1(x + self.dropout(self.attention(x, key_padding_mask)))
            x = self.norm2(x + self.dropout(self.feed_forward(x)))
        return x
