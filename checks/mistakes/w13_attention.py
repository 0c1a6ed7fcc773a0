"""Catalogued mistakes and correct variants for w13_attention.

Three kinds of entries, each the simplest way to state its mistake:

- ``@mutant``: a one-token slip in the reference's own code (``<=`` for ``<``, a dropped ``device=``);
- a function, or a class that subclasses the reference class and overrides one method, so that
  everything else stays right and the check aimed at the mistake is the one that catches it;
- ``@variant``: an unusual but correct implementation, written in another style than the reference, that
  every check must accept (the proof that the checks do not over-fit the reference).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from checks.harness.catalogue import mistake, mutant, variant
from reference.phase2.w13_attention import (
    PositionalEncoding,
    SelfAttention,
    TransformerBlock,
    causal_mask,
    scaled_dot_product_attention,
)

# --------------------------------------------------------------------------------------------------
# scaled_dot_product_attention


def _validate(q, k, v, attn_mask, is_causal):
    """The reference's input checks, so that each mistake is caught by the check aimed at it."""
    if attn_mask is not None and is_causal:
        raise ValueError("attn_mask and is_causal=True are exclusive")
    if q.shape[-1] != k.shape[-1] or k.shape[-2] != v.shape[-2]:
        raise ValueError(f"incompatible shapes {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")


def _scores(q, k, attn_mask, is_causal, scale):
    """Scaled, masked scores, as the reference computes them (shared by the mistakes below)."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = (q @ k.transpose(-2, -1)) * scale
    if is_causal:
        attn_mask = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device).tril()
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attn_mask, float("-inf"))
        else:
            scores = scores + attn_mask
    return scores


@mutant("scaled_dot_product_attention",
        "the scores are not multiplied by 1/sqrt(E), so the softmax is too peaked for large head sizes",
        replace={"scale = 1.0 / math.sqrt(q.shape[-1])": "scale = 1.0"})
def sdpa_no_scale(): ...


@mutant("scaled_dot_product_attention",
        "the scores are scaled by 1/sqrt(Ev), the size of v, instead of 1/sqrt(E), the size of q and k",
        replace={"math.sqrt(q.shape[-1])": "math.sqrt(v.shape[-1])"})
def sdpa_scaled_by_value_size(): ...


@mistake("scaled_dot_product_attention",
         "the softmax runs over the queries (dim=-2) instead of the keys (dim=-1), so weight rows do not sum to 1")
def sdpa_softmax_over_queries(q, k, v, attn_mask=None, is_causal=False, scale=None):
    _validate(q, k, v, attn_mask, is_causal)
    scores = _scores(q, k, attn_mask, is_causal, scale)
    weights = torch.nan_to_num(torch.softmax(scores, dim=-2))
    return weights @ v, weights


@mistake("scaled_dot_product_attention",
         "the mask is applied after the softmax (masked weights zeroed), so the remaining weights no longer sum to 1")
def sdpa_mask_after_softmax(q, k, v, attn_mask=None, is_causal=False, scale=None):
    _validate(q, k, v, attn_mask, is_causal)
    weights = torch.softmax(_scores(q, k, None, False, scale), dim=-1)
    if is_causal:
        attn_mask = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device).tril()
    if attn_mask is not None:
        keep = attn_mask if attn_mask.dtype == torch.bool else torch.exp(attn_mask)
        weights = weights * keep
    return weights @ v, weights


@mutant("scaled_dot_product_attention",
        "exp() of the raw scores without subtracting the row max: large scores overflow to inf and give nan",
        replace={"e = torch.exp(scores - row_max)": "e = torch.exp(scores)"})
def sdpa_without_max_shift(): ...


@mistake("scaled_dot_product_attention",
         "a plain softmax over a row whose keys are all masked computes 0/0 and returns nan (must be 0)")
def sdpa_nan_for_fully_masked_rows(q, k, v, attn_mask=None, is_causal=False, scale=None):
    _validate(q, k, v, attn_mask, is_causal)
    weights = torch.softmax(_scores(q, k, attn_mask, is_causal, scale), dim=-1)
    return weights @ v, weights


@mistake("scaled_dot_product_attention",
         "fully masked rows are zeroed after a nan softmax: the forward pass is right but the gradients are nan")
def sdpa_nan_gradients(q, k, v, attn_mask=None, is_causal=False, scale=None):
    _validate(q, k, v, attn_mask, is_causal)
    scores = _scores(q, k, attn_mask, is_causal, scale)
    weights = torch.softmax(scores, dim=-1)
    weights = torch.where(torch.isnan(weights), torch.zeros_like(weights), weights)
    return weights @ v, weights


@mutant("scaled_dot_product_attention",
        "crashes when there are no keys (S = 0): amax of an empty row raises, but such rows are simply fully masked",
        replace={"if S == 0:": "if S < 0:"})
def sdpa_crashes_without_keys(): ...


@mutant("scaled_dot_product_attention",
        "a bool mask is read as True = masked (nn.MultiheadAttention's convention), the opposite of torch's SDPA",
        replace={"masked_fill(~attn_mask,": "masked_fill(attn_mask,"})
def sdpa_inverted_bool_mask(): ...


@mistake("scaled_dot_product_attention",
         "a float mask is read as keep (non-zero) / drop (0), like Hugging Face's attention_mask, instead of being "
         "added to the scores")
def sdpa_float_mask_as_keep(q, k, v, attn_mask=None, is_causal=False, scale=None):
    if attn_mask is not None and attn_mask.is_floating_point():
        attn_mask = attn_mask != 0
    return scaled_dot_product_attention(q, k, v, attn_mask, is_causal, scale)


@mistake("scaled_dot_product_attention", "is_causal is ignored, so every query also sees the keys after it")
def sdpa_ignores_is_causal(q, k, v, attn_mask=None, is_causal=False, scale=None):
    return scaled_dot_product_attention(q, k, v, attn_mask, False, scale)


@mutant("scaled_dot_product_attention",
        "is_causal is aligned bottom-right (tril(S - L), as some flash-attention kernels do) instead of top-left: "
        "query i must see keys 0..i",
        replace={"dtype=torch.bool).tril()": "dtype=torch.bool).tril(S - L)"})
def sdpa_causal_bottom_right(): ...


@mutant("scaled_dot_product_attention",
        "the causal mask is built on the CPU (torch.ones without device=), so is_causal fails for inputs on a GPU",
        replace={"q.new_ones(L, S, dtype=torch.bool)": "torch.ones(L, S, dtype=torch.bool)"})
def sdpa_causal_mask_on_cpu(): ...


@mistake("scaled_dot_product_attention", "q is scaled in place (q *= scale), which changes the caller's tensor")
def sdpa_scales_q_in_place(q, k, v, attn_mask=None, is_causal=False, scale=None):
    factor = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    q *= factor  # wrong: the caller's q
    return scaled_dot_product_attention(q, k, v, attn_mask, is_causal, scale=1.0)


@variant("scaled_dot_product_attention",
         "einsum for the products, torch.softmax on scores whose empty rows are replaced by zeros, then re-masked")
def sdpa_einsum_softmax(q, k, v, attn_mask=None, is_causal=False, scale=None):
    _validate(q, k, v, attn_mask, is_causal)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = torch.einsum("...ld,...sd->...ls", q, k) * scale
    if is_causal:
        attn_mask = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device).tril()
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attn_mask, float("-inf"))
        else:
            scores = scores + attn_mask
    alive = torch.isfinite(scores).any(dim=-1, keepdim=True)  # rows with at least one allowed key
    weights = torch.softmax(torch.where(alive, scores, torch.zeros_like(scores)), dim=-1) * alive
    return torch.einsum("...ls,...sd->...ld", weights, v), weights


@variant("scaled_dot_product_attention",
         "Hugging Face style: masked scores clamped to finfo(dtype).min instead of -inf, dead rows zeroed by a "
         "multiplication after torch.softmax")
def sdpa_finfo_min(q, k, v, attn_mask=None, is_causal=False, scale=None):
    _validate(q, k, v, attn_mask, is_causal)
    L, S = q.shape[-2], k.shape[-2]
    scores = torch.matmul(q, k.transpose(-1, -2)) * (q.shape[-1] ** -0.5 if scale is None else scale)
    allowed = torch.ones(L, S, dtype=torch.bool, device=q.device)
    if is_causal:
        allowed = allowed.tril()
    elif attn_mask is not None and attn_mask.dtype == torch.bool:
        allowed = allowed & attn_mask
    elif attn_mask is not None:
        scores = scores + attn_mask
        allowed = allowed & (attn_mask > float("-inf"))
    lowest = torch.finfo(scores.dtype).min
    scores = scores.masked_fill(~allowed, lowest).clamp_min(lowest)
    alive = allowed.expand(scores.shape).any(dim=-1, keepdim=True)
    weights = torch.softmax(scores, dim=-1) * alive
    return torch.matmul(weights, v), weights


# --------------------------------------------------------------------------------------------------
# causal_mask / padding_mask


def _validate_t(t):
    if t < 0:
        raise ValueError(f"t={t} must be >= 0")


def _validated_lengths(lengths, t):
    _validate_t(t)
    lengths = torch.as_tensor(lengths)
    for n in lengths.tolist():
        if isinstance(n, bool | float) or not 0 <= n <= t:
            raise ValueError(f"length {n} is not an integer in [0, {t}]")
    return lengths


@mutant("causal_mask", "off by one on the diagonal (j < i): a token cannot attend to itself, the first to nothing",
        replace={"idx[None, :] <= idx[:, None]": "idx[None, :] < idx[:, None]"})
def causal_mask_without_diagonal(): ...


@mutant("causal_mask", "upper-triangular (j >= i): every token attends to the future instead of the past",
        replace={"idx[None, :] <= idx[:, None]": "idx[None, :] >= idx[:, None]"})
def causal_mask_upper(): ...


@mutant("causal_mask", "the device argument is ignored, so the mask is always built on the CPU",
        replace={"torch.arange(t, device=device)": "torch.arange(t)"})
def causal_mask_ignores_device(): ...


@mistake("causal_mask", "int(t) silently truncates a float t (2.5 -> 2) instead of rejecting it with a TypeError")
def causal_mask_truncates_float_t(t, device=None):
    t = int(t)
    _validate_t(t)
    return torch.ones(t, t, dtype=torch.bool, device=device).tril()


@mistake("padding_mask", "inverted: True marks the padding (nn.MultiheadAttention's key_padding_mask convention)")
def padding_mask_inverted(lengths, t):
    lengths = _validated_lengths(lengths, t)
    return torch.arange(t)[None, :] >= lengths[:, None]


@mutant("padding_mask", "off by one (<=): the first padding position is kept as a real token",
        replace={"positions[None, :] < lengths[:, None]": "positions[None, :] <= lengths[:, None]"})
def padding_mask_off_by_one(): ...


@mistake("padding_mask", "no validation: a length longer than t silently gives a full row")
def padding_mask_unchecked(lengths, t):
    lengths = torch.as_tensor(lengths)
    return torch.arange(t)[None, :] < lengths[:, None]


@mistake("padding_mask", "float lengths are truncated with .long() (2.5 -> 2) instead of rejected")
def padding_mask_truncates_floats(lengths, t):
    _validate_t(t)
    lengths = torch.as_tensor(lengths).long()
    for n in lengths.tolist():
        if not 0 <= n <= t:
            raise ValueError(f"length {n} is outside [0, {t}]")
    return torch.arange(t)[None, :] < lengths[:, None]


@mistake("padding_mask", "a float 0/1 mask (Hugging Face's attention_mask) instead of a bool one: "
         "scaled_dot_product_attention adds a float mask to the scores instead of masking with it")
def padding_mask_float(lengths, t):
    lengths = _validated_lengths(lengths, t)
    return (torch.arange(t)[None, :] < lengths[:, None]).float()


@variant("causal_mask", "built with torch.tril on a ones matrix")
def causal_mask_tril(t, device=None):
    if t < 0:
        raise ValueError(f"t={t} must be >= 0")
    return torch.tril(torch.ones(t, t, dtype=torch.bool, device=device))


@variant("causal_mask", "the complement of the strictly upper triangle, from a range() that rejects floats itself")
def causal_mask_not_future(t, device=None):
    positions = torch.tensor(list(range(t)), dtype=torch.long, device=device)  # range(2.0) raises TypeError
    if t < 0:
        raise ValueError(f"t={t} must be >= 0")
    return ~(positions[None, :] > positions[:, None])


@variant("padding_mask", "row by row from Python ints, then stacked")
def padding_mask_rows(lengths, t):
    if t < 0:
        raise ValueError(f"t={t} must be >= 0")
    device = lengths.device if torch.is_tensor(lengths) else None
    if torch.is_tensor(lengths) and lengths.dim() != 1:
        raise ValueError(f"lengths must be 1-D, got shape {tuple(lengths.shape)}")
    values = lengths.tolist() if torch.is_tensor(lengths) else list(lengths)
    for n in values:
        if type(n) is not int or n < 0 or n > t:  # bools and floats are not lengths
            raise ValueError(f"length {n!r} is not an int in [0, {t}]")
    rows = [torch.tensor([True] * n + [False] * (t - n), dtype=torch.bool, device=device) for n in values]
    return torch.stack(rows) if rows else torch.zeros(0, t, dtype=torch.bool, device=device)


# --------------------------------------------------------------------------------------------------
# SelfAttention


def _mask(causal, key_padding_mask, B, T):
    """The reference's attention mask, shape check included, for the SelfAttention mistakes below."""
    mask = causal_mask(T) if causal else None
    if key_padding_mask is not None:
        if key_padding_mask.shape != (B, T):
            raise ValueError(f"key_padding_mask must be ({B}, {T}), got {tuple(key_padding_mask.shape)}")
        keep = key_padding_mask[:, None, None, :]
        mask = keep if mask is None else mask & keep
    return mask


@mistake("SelfAttention", "heads split with view(B, H, T, hd) instead of view(B, T, H, hd).transpose(1, 2): "
         "tokens get mixed into heads")
class SelfAttentionHeadsWithoutTranspose(SelfAttention):
    def forward(self, x, key_padding_mask=None):
        B, T, E = x.shape
        H, hd = self.num_heads, self.head_dim
        q, k, v = (y.view(B, H, T, hd) for y in (self.query(x), self.key(x), self.value(x)))  # wrong: no transpose
        mask = _mask(self.causal, key_padding_mask, B, T)
        out, _ = scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out(out.reshape(B, T, E))


@mistake("SelfAttention", "embed_dim not divisible by num_heads is not rejected in __init__ (the learning "
         "path's code gave an unclear view error later instead of a ValueError)")
class SelfAttentionNoDivisibilityCheck(SelfAttention):
    """The learning path's code: head_dim = embed_dim // num_heads and an unclear crash later."""

    def __init__(self, embed_dim, num_heads, causal=False, dropout=0.0):
        nn.Module.__init__(self)
        self.embed_dim, self.num_heads, self.causal = embed_dim, num_heads, causal
        self.head_dim = embed_dim // num_heads
        self.query = nn.Linear(embed_dim, embed_dim)
        self.key = nn.Linear(embed_dim, embed_dim)
        self.value = nn.Linear(embed_dim, embed_dim)
        self.out = nn.Linear(embed_dim, embed_dim)
        self.dropout = nn.Dropout(dropout)


@mutant("SelfAttention", "embed_dim=0 is accepted (0 % num_heads == 0): a module with no features at all",
        replace={"if embed_dim <= 0 or num_heads <= 0:": "if num_heads <= 0:"})
def self_attention_accepts_zero_embed_dim(): ...


@mistake("SelfAttention", "causal=True is ignored (the learning path's code had no mask): outputs depend on "
         "future tokens")
class SelfAttentionNeverCausal(SelfAttention):
    def forward(self, x, key_padding_mask=None):
        causal, self.causal = self.causal, False
        try:
            return super().forward(x, key_padding_mask)
        finally:
            self.causal = causal


@mutant("SelfAttention", "the causal mask is built on the CPU (no device=x.device), so a causal model fails on a GPU",
        replace={"causal_mask(T, device=x.device)": "causal_mask(T)"})
def self_attention_causal_mask_on_cpu(): ...


@mistake("SelfAttention", "scores scaled by 1/sqrt(embed_dim) instead of 1/sqrt(head_dim)")
class SelfAttentionScaledByEmbedDim(SelfAttention):
    def forward(self, x, key_padding_mask=None):
        B, T, E = x.shape
        H, hd = self.num_heads, self.head_dim
        q, k, v = (y.view(B, T, H, hd).transpose(1, 2) for y in (self.query(x), self.key(x), self.value(x)))
        mask = _mask(self.causal, key_padding_mask, B, T)
        out, _ = scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=1.0 / math.sqrt(E))
        return self.out(out.transpose(1, 2).reshape(B, T, E))


@mistake("SelfAttention", "key_padding_mask read as True = padding (nn.MultiheadAttention's convention): "
         "real tokens are ignored and padding attended")
class SelfAttentionPaddingInverted(SelfAttention):
    def forward(self, x, key_padding_mask=None):
        return super().forward(x, None if key_padding_mask is None else ~key_padding_mask)


@mutant("SelfAttention", "only the number of dimensions of key_padding_mask is checked: a (1, T) mask broadcasts "
        "over the batch silently instead of being rejected",
        replace={"if key_padding_mask.shape != (B, T):": "if key_padding_mask.ndim != 2:"})
def self_attention_mask_shape_unchecked(): ...


@mistake("SelfAttention", "dropout is applied in eval mode too (F.dropout(..., training=True)), so inference "
         "is random")
class SelfAttentionDropoutInEval(SelfAttention):
    def forward(self, x, key_padding_mask=None):
        B, T, E = x.shape
        H, hd = self.num_heads, self.head_dim
        q, k, v = (y.view(B, T, H, hd).transpose(1, 2) for y in (self.query(x), self.key(x), self.value(x)))
        mask = _mask(self.causal, key_padding_mask, B, T)
        _, weights = scaled_dot_product_attention(q, k, v, attn_mask=mask)
        out = F.dropout(weights, self.dropout.p, training=True) @ v  # wrong: ignores self.training
        return self.out(out.transpose(1, 2).reshape(B, T, E))


@mistake("SelfAttention", "dropout is applied to the merged attention output (single features) instead of to the "
         "attention weights (whole keys)")
class SelfAttentionDropoutOnOutput(SelfAttention):
    def forward(self, x, key_padding_mask=None):
        B, T, E = x.shape
        H, hd = self.num_heads, self.head_dim
        q, k, v = (y.view(B, T, H, hd).transpose(1, 2) for y in (self.query(x), self.key(x), self.value(x)))
        mask = _mask(self.causal, key_padding_mask, B, T)
        out, _ = scaled_dot_product_attention(q, k, v, attn_mask=mask)
        merged = out.transpose(1, 2).reshape(B, T, E)
        return self.out(self.dropout(merged))  # wrong place: features of the merged heads, not the weights


@variant("SelfAttention", "one fused (3E, E) projection and einsum over named axes, no transposes")
class SelfAttentionFusedEinsum(SelfAttention):
    def forward(self, x, key_padding_mask=None):
        B, T, E = x.shape
        H, hd = self.num_heads, self.head_dim
        w = torch.cat([self.query.weight, self.key.weight, self.value.weight])  # (3E, E): one projection
        b = torch.cat([self.query.bias, self.key.bias, self.value.bias])
        q, k, v = F.linear(x, w, b).reshape(B, T, 3, H, hd).unbind(dim=2)  # each (B, T, H, hd)
        scores = torch.einsum("bthd,bshd->bhts", q, k) / math.sqrt(hd)
        allowed = torch.ones(T, T, dtype=torch.bool, device=x.device)
        if self.causal:
            allowed = allowed.tril()
        allowed = allowed.expand(B, 1, T, T)
        if key_padding_mask is not None:
            if tuple(key_padding_mask.shape) != (B, T):
                raise ValueError(f"key_padding_mask has shape {tuple(key_padding_mask.shape)}, not ({B}, {T})")
            allowed = allowed & key_padding_mask.bool()[:, None, None, :]
        weights = torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1)
        weights = torch.nan_to_num(weights)
        if self.training:
            weights = self.dropout(weights)
        out = torch.einsum("bhts,bshd->bthd", weights, v).reshape(B, T, E)
        return self.out(out)


@variant("SelfAttention", "unflatten/permute and torch's own F.scaled_dot_product_attention with dropout_p")
class SelfAttentionTorchSDPA(SelfAttention):
    def forward(self, x, key_padding_mask=None):
        B, T, E = x.shape
        H, hd = self.num_heads, self.head_dim
        q, k, v = (y.unflatten(-1, (H, hd)).permute(0, 2, 1, 3) for y in (self.query(x), self.key(x), self.value(x)))
        mask = None
        if key_padding_mask is not None:
            if key_padding_mask.shape != (B, T):
                raise ValueError(f"key_padding_mask must be ({B}, {T}), got {tuple(key_padding_mask.shape)}")
            mask = key_padding_mask.bool()[:, None, None, :]
            if self.causal:
                mask = mask & causal_mask(T, device=x.device)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=self.causal and mask is None,
            dropout_p=self.dropout.p if self.training else 0.0,
        )
        return self.out(out.permute(0, 2, 1, 3).flatten(-2))


# --------------------------------------------------------------------------------------------------
# PositionalEncoding


@mistake("PositionalEncoding", "crashes on an odd embed_dim (as the learning path's code did): there are ceil(E/2) "
         "frequencies but only floor(E/2) cosine columns")
class PositionalEncodingSeed(PositionalEncoding):
    """The learning path's code as written (float32, cosines not cut for odd E)."""

    def __init__(self, embed_dim, max_len=5000):
        nn.Module.__init__(self)
        self.max_len = max_len
        pe = torch.zeros(max_len, embed_dim)
        position = torch.arange(0, max_len).unsqueeze(1).float()
        div_term = torch.exp(torch.arange(0, embed_dim, 2).float() * -(math.log(10000.0) / embed_dim))
        pe[:, 0::2] = torch.sin(position * div_term)
        pe[:, 1::2] = torch.cos(position * div_term)
        self.register_buffer("pe", pe.unsqueeze(0))


@mistake("PositionalEncoding", "the angles pos * freq are computed in float32 (the learning path's arithmetic, fixed "
         "for odd E): they drift by ~1e-4 at position 5000")
class PositionalEncodingFloat32Angles(PositionalEncoding):
    def __init__(self, embed_dim, max_len=5000):
        nn.Module.__init__(self)
        self.max_len = max_len
        position = torch.arange(max_len, dtype=torch.float32)[:, None]
        inv_freq = 1.0 / (10000.0 ** (torch.arange(0, embed_dim, 2, dtype=torch.float32) / embed_dim))
        angles = position * inv_freq  # float32: pos * freq loses digits at large positions
        pe = torch.stack([torch.sin(angles), torch.cos(angles)], dim=-1).flatten(-2)[:, :embed_dim]
        self.register_buffer("pe", pe.unsqueeze(0))


@mistake("PositionalEncoding", "sin and cos swapped: even columns hold the cosines")
class PositionalEncodingSinCosSwapped(PositionalEncoding):
    def __init__(self, embed_dim, max_len=5000):
        super().__init__(embed_dim, max_len)
        pe = self.pe.clone()
        n = embed_dim // 2
        pe[..., 0:2 * n:2], pe[..., 1:2 * n:2] = self.pe[..., 1:2 * n:2], self.pe[..., 0:2 * n:2]
        self.pe = pe


@mistake("PositionalEncoding", "frequency exponent i/E instead of 2i/E, so the wavelengths are wrong")
class PositionalEncodingWrongExponent(PositionalEncoding):
    def __init__(self, embed_dim, max_len=5000):
        super().__init__(embed_dim, max_len)
        position = torch.arange(max_len, dtype=torch.float64)[:, None]
        div_term = 10000.0 ** (-torch.arange((embed_dim + 1) // 2, dtype=torch.float64) / embed_dim)  # i, not 2i
        angles = position * div_term
        pe = torch.zeros(max_len, embed_dim, dtype=torch.float64)
        pe[:, 0::2] = torch.sin(angles)
        pe[:, 1::2] = torch.cos(angles[:, : embed_dim // 2])
        self.pe = pe.unsqueeze(0).float()


@mutant("PositionalEncoding", "an input longer than max_len is not rejected (the learning path's code gave an "
        "unclear broadcasting error instead of a ValueError)",
        replace={"if T > self.max_len:": "if T > self.max_len + 1:"})
def positional_encoding_no_length_check(): ...


@mutant("PositionalEncoding", "max_len=0 is accepted: a table without positions, useless for any input",
        replace={"if embed_dim <= 0 or max_len <= 0:": "if embed_dim <= 0:"})
def positional_encoding_accepts_zero_max_len(): ...


@mistake("PositionalEncoding", "positions counted along the batch axis (x.size(0)) instead of the time axis")
class PositionalEncodingBatchAxis(PositionalEncoding):
    def forward(self, x):
        if x.size(1) > self.max_len:
            raise ValueError(f"length {x.size(1)} > max_len {self.max_len}")
        return x + self.pe[0, : x.size(0)][:, None, :].to(x.dtype)  # position = batch index


@mistake("PositionalEncoding", "a float64 table added to a float32 input promotes the output to float64")
class PositionalEncodingNoDtypeCast(PositionalEncoding):
    def __init__(self, embed_dim, max_len=5000):
        super().__init__(embed_dim, max_len)
        self.pe = self.pe.double()

    def forward(self, x):
        if x.size(1) > self.max_len:
            raise ValueError(f"length {x.size(1)} > max_len {self.max_len}")
        return x + self.pe[:, : x.size(1)]


@mistake("PositionalEncoding", "the encoding is added in place (x += pe), which changes the caller's tensor")
class PositionalEncodingInPlace(PositionalEncoding):
    def forward(self, x):
        if x.size(1) > self.max_len:
            raise ValueError(f"length {x.size(1)} > max_len {self.max_len}")
        x += self.pe[:, : x.size(1)].to(x.dtype)  # wrong: the caller's x
        return x


@mistake("PositionalEncoding", "the table is a plain tensor attribute, not a buffer: it is missing from the "
         "state_dict and stays on the CPU when the module moves to a GPU")
class PositionalEncodingPlainAttribute(PositionalEncoding):
    def __init__(self, embed_dim, max_len=5000):
        super().__init__(embed_dim, max_len)
        table = self.pe
        del self._buffers["pe"]
        self.pe = table  # a plain attribute now


@mistake("PositionalEncoding", "the table is an nn.Parameter: the optimiser would train the fixed encoding")
class PositionalEncodingParameter(PositionalEncoding):
    def __init__(self, embed_dim, max_len=5000):
        super().__init__(embed_dim, max_len)
        table = self.pe
        del self._buffers["pe"]
        self.pe = nn.Parameter(table)


@variant("PositionalEncoding", "NumPy loop over columns in float64, rounded to the default dtype at the end")
class PositionalEncodingNumpyLoop(PositionalEncoding):
    """Straight from the formula with NumPy loops."""

    def __init__(self, embed_dim, max_len=5000):
        nn.Module.__init__(self)
        for name, value in (("embed_dim", embed_dim), ("max_len", max_len)):
            if value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        self.max_len = max_len
        table = np.zeros((max_len, embed_dim))
        for c in range(embed_dim):
            rate = 10000.0 ** (-(2 * (c // 2)) / embed_dim)
            table[:, c] = np.sin(np.arange(max_len) * rate) if c % 2 == 0 else np.cos(np.arange(max_len) * rate)
        self.register_buffer("pe", torch.from_numpy(table)[None].to(torch.get_default_dtype()))

    def forward(self, x):
        T = x.shape[1]
        if T > self.max_len:
            raise ValueError(f"input of length {T} exceeds max_len {self.max_len}")
        return torch.add(x, self.pe[0, :T].to(dtype=x.dtype, device=x.device))


@variant("PositionalEncoding", "complex exponentials e^(i * angle) in float64: (imag, real) pairs cut to E columns")
class PositionalEncodingComplex(PositionalEncoding):
    def __init__(self, embed_dim, max_len=5000):
        if embed_dim < 1 or max_len < 1:
            raise ValueError(f"embed_dim={embed_dim} and max_len={max_len} must be >= 1")
        nn.Module.__init__(self)
        self.max_len = max_len
        freq = torch.pow(10000.0, -torch.arange(0, embed_dim, 2, dtype=torch.float64) / embed_dim)
        angles = torch.outer(torch.arange(max_len, dtype=torch.float64), freq)
        rotations = torch.polar(torch.ones_like(angles), angles)  # cos + i sin
        pairs = torch.stack([rotations.imag, rotations.real], dim=-1)  # (sin, cos)
        self.register_buffer("pe", pairs.flatten(-2)[None, :, :embed_dim].float())


# --------------------------------------------------------------------------------------------------
# TransformerBlock


@mistake("TransformerBlock", "the feed-forward's residual adds the block's input instead of the attention "
         "sub-layer's output (residual around the wrong sub-layer)")
class TransformerBlockWrongResidual(TransformerBlock):
    def forward(self, x, key_padding_mask=None):
        if self.norm_first:
            h = x + self.dropout(self.attention(self.norm1(x), key_padding_mask))
            return x + self.dropout(self.feed_forward(self.norm2(h)))  # wrong: shortcut from the block input
        h = self.norm1(x + self.dropout(self.attention(x, key_padding_mask)))
        return self.norm2(x + self.dropout(self.feed_forward(h)))  # wrong: shortcut from the block input


@mistake("TransformerBlock", "pre-norm that normalises the residual stream (x = norm(x); x = x + f(x)) instead "
         "of only the sub-layer's input")
class TransformerBlockNormalisedResidual(TransformerBlock):
    def forward(self, x, key_padding_mask=None):
        if not self.norm_first:
            return super().forward(x, key_padding_mask)
        x = self.norm1(x)  # wrong: the residual stream itself gets normalised
        x = x + self.dropout(self.attention(x, key_padding_mask))
        x = self.norm2(x)
        return x + self.dropout(self.feed_forward(x))


@mistake("TransformerBlock", "norm_first is ignored: always post-norm")
class TransformerBlockAlwaysPostNorm(TransformerBlock):
    def forward(self, x, key_padding_mask=None):
        x = self.norm1(x + self.dropout(self.attention(x, key_padding_mask)))
        return self.norm2(x + self.dropout(self.feed_forward(x)))


@mistake("TransformerBlock", "causal is not passed on to the attention (the learning path's code builds "
         "SelfAttention(embed_dim, num_heads))")
class TransformerBlockNotCausal(TransformerBlock):
    def __init__(self, embed_dim, num_heads, ff_dim, dropout=0.1, norm_first=False, causal=False):
        super().__init__(embed_dim, num_heads, ff_dim, dropout, norm_first, causal)
        self.attention = SelfAttention(embed_dim, num_heads, dropout=dropout)  # learning path: causal not passed on


@mutant("TransformerBlock", "the default dropout is 0.0 instead of the documented 0.1",
        replace={"dropout: float = 0.1": "dropout: float = 0.0"})
def transformer_block_default_dropout(): ...


@mistake("TransformerBlock", "no dropout on the sub-layer outputs: only the attention weights are dropped")
class TransformerBlockNoResidualDropout(TransformerBlock):
    def forward(self, x, key_padding_mask=None):
        dropout, self.dropout = self.dropout, nn.Identity()
        try:
            return super().forward(x, key_padding_mask)
        finally:
            self.dropout = dropout


@mistake("TransformerBlock", "dropout after the residual sum (dropout(x + f(x))) instead of on the sub-layer's "
         "output alone: the residual stream itself gets zeros")
class TransformerBlockDropoutAfterResidual(TransformerBlock):
    def forward(self, x, key_padding_mask=None):
        if self.norm_first:
            x = self.dropout(x + self.attention(self.norm1(x), key_padding_mask))
            return self.dropout(x + self.feed_forward(self.norm2(x)))
        x = self.norm1(self.dropout(x + self.attention(x, key_padding_mask)))
        return self.norm2(self.dropout(x + self.feed_forward(x)))


@mistake("TransformerBlock", "nn.TransformerEncoderLayer's inner dropout copied into the feed-forward "
         "(Linear, ReLU, Dropout, Linear): a layout and a dropout the docstring does not have")
class TransformerBlockInnerDropout(TransformerBlock):
    def __init__(self, embed_dim, num_heads, ff_dim, dropout=0.1, norm_first=False, causal=False):
        super().__init__(embed_dim, num_heads, ff_dim, dropout, norm_first, causal)
        first, last = self.feed_forward[0], self.feed_forward[2]
        self.feed_forward = nn.Sequential(first, nn.ReLU(), nn.Dropout(dropout), last)


@mistake("TransformerBlock", "residuals added in place (x += ...), which changes the caller's input tensor")
class TransformerBlockInPlaceResidual(TransformerBlock):
    def forward(self, x, key_padding_mask=None):
        if not self.norm_first:
            return super().forward(x, key_padding_mask)
        x += self.dropout(self.attention(self.norm1(x), key_padding_mask))  # wrong: the caller's x
        x += self.dropout(self.feed_forward(self.norm2(x)))
        return x


@variant("TransformerBlock", "a loop over (norm, sub-layer) pairs with functional layer_norm/linear/relu")
class TransformerBlockFunctional(TransformerBlock):
    def forward(self, x, key_padding_mask=None):
        def ln(norm, y):
            return F.layer_norm(y, norm.normalized_shape, norm.weight, norm.bias, norm.eps)

        def ff(y):
            first, last = self.feed_forward[0], self.feed_forward[2]
            return F.linear(F.relu(F.linear(y, first.weight, first.bias)), last.weight, last.bias)

        sublayers = [(self.norm1, lambda y: self.attention(y, key_padding_mask)), (self.norm2, ff)]
        for norm, f in sublayers:
            if self.norm_first:
                x = x + self.dropout(f(ln(norm, x)))
            else:
                x = ln(norm, x + self.dropout(f(x)))
        return x


@variant("TransformerBlock", "annotated-transformer style: one residual helper, F.dropout driven by self.training")
class TransformerBlockSublayerHelper(TransformerBlock):
    def _residual(self, x, norm, sublayer):
        def drop(y):
            return F.dropout(y, self.dropout.p, training=self.training)

        return x + drop(sublayer(norm(x))) if self.norm_first else norm(x + drop(sublayer(x)))

    def forward(self, x, key_padding_mask=None):
        x = self._residual(x, self.norm1, lambda y: self.attention(y, key_padding_mask=key_padding_mask))
        return self._residual(x, self.norm2, self.feed_forward)


@mutant("scaled_dot_product_attention",
        "`if not scale` treats an explicit scale=0.0 as the default 1/sqrt(E) (0 should give uniform weights)",
        replace={"if scale is None:\n": "if not scale:\n"})
def sdpa_scale_zero_taken_as_default(): ...
