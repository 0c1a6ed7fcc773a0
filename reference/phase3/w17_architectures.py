"""Reference solutions for w17_architectures (Weeks 17-18: modern LLM architectures).

Fixes of the learning path's own code:
- It counted parameters by loading three pre-trained models from the hub; here the count is a closed form
  of the config (the tied output head counted once), checked against a tiny ``GPT2LMHeadModel``.
- Its "scaling analysis" plotted the *rank* of each model (0, 1, 2, ...) against its size and called it
  quality: a made-up straight line. Here a power law is fitted to measured pairs and plotted on log axes.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

# --------------------------------------------------------------------------------------------------
# count_gpt2_parameters


def count_gpt2_parameters(config) -> int:
    """Closed-form number of trainable parameters of GPT2LMHeadModel(config), the tied head counted once."""
    V, P, E, L = config.vocab_size, config.n_positions, config.n_embd, config.n_layer
    inner = config.n_inner if config.n_inner is not None else 4 * E  # GPT-2's MLP is 4x wide by default
    per_layer = (
        2 * E  # ln_1: gain and bias
        + E * 3 * E + 3 * E  # c_attn: q, k and v in one projection
        + E * E + E  # attention c_proj
        + 2 * E  # ln_2
        + E * inner + inner  # c_fc
        + inner * E + E  # mlp c_proj
    )
    total = V * E + P * E + L * per_layer + 2 * E  # wte, wpe, the blocks, ln_f
    if not getattr(config, "tie_word_embeddings", True):
        total += V * E  # an untied lm_head has its own (V, E) matrix (and no bias)
    return total


# --------------------------------------------------------------------------------------------------
# GPT2 + load_hf_state_dict


def _gelu_tanh(x: Tensor) -> Tensor:
    # GPT-2 was trained with the tanh approximation ("gelu_new"); exact erf GELU differs by up to ~1e-3
    return F.gelu(x, approximate="tanh")


class CausalSelfAttention(nn.Module):
    """GPT-2 attention: one (E, 3E) projection for q, k, v, causal softmax, output projection."""

    def __init__(self, config) -> None:
        super().__init__()
        if config.n_embd % config.n_head != 0:
            raise ValueError(f"n_embd={config.n_embd} is not divisible by n_head={config.n_head}")
        self.n_head = config.n_head
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd)
        self.attn_dropout = nn.Dropout(config.attn_pdrop)
        self.resid_dropout = nn.Dropout(config.resid_pdrop)

    def forward(self, x: Tensor) -> Tensor:
        B, T, E = x.shape
        hs = E // self.n_head  # the size of one head
        q, k, v = self.c_attn(x).split(E, dim=-1)
        # (B, T, E) -> (B, nh, T, hs): heads side by side within the E features, as GPT-2 stores them
        q, k, v = (t.view(B, T, self.n_head, hs).transpose(1, 2) for t in (q, k, v))
        scores = q @ k.mT / math.sqrt(hs)  # .mT swaps the last two axes: (B, nh, hs, T)
        causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
        scores = scores.masked_fill(~causal, float("-inf"))  # every row keeps its diagonal: never all -inf
        weights = self.attn_dropout(torch.softmax(scores, dim=-1))
        y = (weights @ v).transpose(1, 2).reshape(B, T, E)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config) -> None:
        super().__init__()
        inner = config.n_inner if config.n_inner is not None else 4 * config.n_embd
        self.c_fc = nn.Linear(config.n_embd, inner)
        self.c_proj = nn.Linear(inner, config.n_embd)
        self.dropout = nn.Dropout(config.resid_pdrop)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.c_proj(_gelu_tanh(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, config) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.mlp = MLP(config)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln_1(x))  # pre-norm: the residual stream itself is never normalised
        return x + self.mlp(self.ln_2(x))


class GPT2(nn.Module):
    """GPT-2 from scratch, with nanoGPT's module names; logits equal GPT2LMHeadModel's on the same weights."""

    def __init__(self, config) -> None:
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(
            {
                "wte": nn.Embedding(config.vocab_size, config.n_embd),
                "wpe": nn.Embedding(config.n_positions, config.n_embd),  # learned positions
                "drop": nn.Dropout(config.embd_pdrop),
                "h": nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
                "ln_f": nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon),
            }
        )
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.transformer.wte.weight  # tied: one matrix, read in and written out
        self.apply(self._init_weights)
        # GPT-2 scales the projections that write into the residual stream by 1/sqrt(2 * n_layer)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=config.initializer_range / math.sqrt(2 * config.n_layer))

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear | nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=self.config.initializer_range)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, input_ids: Tensor) -> Tensor:
        B, T = input_ids.shape
        if T > self.config.n_positions:
            raise ValueError(f"sequence length T={T} exceeds n_positions={self.config.n_positions}")
        # positions 0..T-1 are the first T rows of wpe: a slice, already on the model's device
        x = self.transformer.drop(self.transformer.wte(input_ids) + self.transformer.wpe.weight[:T])
        for block in self.transformer.h:
            x = block(x)
        return self.lm_head(self.transformer.ln_f(x))


# Hugging Face's Conv1D stores its weight as (in, out), the transpose of nn.Linear's (out, in)
_CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def load_hf_state_dict(model: GPT2, state_dict: dict[str, Tensor]) -> GPT2:
    """Copy a Hugging Face GPT-2 state dict (GPT2LMHeadModel's or GPT2Model's keys) into ``model``; returns it."""
    # parameters only: a learner's model may keep buffers (a causal mask) that no checkpoint needs to fill;
    # named_parameters lists the tied lm_head.weight once, under its first name, transformer.wte.weight
    ours = dict(model.named_parameters())
    theirs = {}
    for key, value in state_dict.items():
        if key.endswith((".attn.bias", ".attn.masked_bias")):
            continue  # old checkpoints store the causal mask as a buffer: not a weight
        if key == "lm_head.weight":
            continue  # tied to wte: loading wte loads it
        name = key if key.startswith("transformer.") else f"transformer.{key}"  # GPT2Model has no prefix
        theirs[name] = value
    missing = sorted(set(ours) - set(theirs))
    unexpected = sorted(set(theirs) - set(ours))
    if missing or unexpected:
        raise KeyError(f"state dict does not match GPT2: missing {missing}, unexpected {unexpected}")
    # check every shape before copying anything: a failed load leaves the model as it was
    values = {name: value.t() if name.endswith(_CONV1D) else value for name, value in theirs.items()}
    for name, value in values.items():
        if value.shape != ours[name].shape:
            raise ValueError(f"{name}: shape {tuple(value.shape)} does not fit {tuple(ours[name].shape)}")
    with torch.no_grad():
        for name, value in values.items():
            ours[name].copy_(value)  # copy_ keeps our dtype and device, and the tie between wte and lm_head
    return model


# --------------------------------------------------------------------------------------------------
# mlm_mask


def mlm_mask(
    input_ids: Tensor,
    mask_id: int,
    vocab_size: int,
    special_ids: Sequence[int],
    prob: float = 0.15,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """BERT's corruption: choose each non-special token with ``prob``; of those 80% -> mask_id, 10% -> a random
    token, 10% unchanged. Returns (corrupted ids, labels with -100 on every position not chosen)."""
    if not 0.0 <= prob <= 1.0:
        raise ValueError(f"prob must be in [0, 1], got {prob}")
    if not 0 <= mask_id < vocab_size:
        raise ValueError(f"mask_id={mask_id} is not a token of a vocabulary of size {vocab_size}")
    device = input_ids.device
    special = torch.zeros_like(input_ids, dtype=torch.bool)
    for token in list(special_ids):  # a list, a tuple or a 1-D tensor
        special = special | (input_ids == token)
    # one uniform per position decides "chosen"; specials ([CLS], [SEP], padding) are never chosen
    chosen = (torch.rand(input_ids.shape, generator=generator, device=device) < prob) & ~special
    labels = torch.where(chosen, input_ids, torch.full_like(input_ids, -100))  # loss only where chosen
    # a second uniform splits the chosen ones 80 / 10 / 10
    split = torch.rand(input_ids.shape, generator=generator, device=device)
    to_mask = chosen & (split < 0.8)
    to_random = chosen & (split >= 0.8) & (split < 0.9)  # the last 10% keep their token
    random_tokens = torch.randint(0, vocab_size, input_ids.shape, generator=generator, device=device,
                                  dtype=input_ids.dtype)  # high is exclusive: 0..vocab_size-1
    corrupted = torch.where(to_mask, torch.full_like(input_ids, mask_id), input_ids)
    corrupted = torch.where(to_random, random_tokens, corrupted)
    return corrupted, labels


# --------------------------------------------------------------------------------------------------
# span_corruption


def span_corruption(
    tokens: Tensor,
    noise_density: float,
    mean_span_length: float,
    sentinel_ids: Sequence[int],
    generator: torch.Generator,
) -> tuple[Tensor, Tensor]:
    """T5's objective: noise spans replaced by sentinels in the inputs; the targets list each sentinel and its span."""
    if tokens.dim() != 1:
        raise ValueError(f"tokens must be 1-D, got shape {tuple(tokens.shape)}")
    n = tokens.numel()
    if n < 2:
        raise ValueError(f"need at least 2 tokens (one kept, one noise), got {n}")
    if not 0.0 < noise_density < 1.0:
        raise ValueError(f"noise_density must be in (0, 1), got {noise_density}")
    if not mean_span_length > 0:
        raise ValueError(f"mean_span_length must be > 0, got {mean_span_length}")
    # T5's rounding: at least one noise token and at least one kept token
    num_noise = min(max(round(n * noise_density), 1), n - 1)
    num_spans = max(1, round(num_noise / mean_span_length))
    num_spans = min(num_spans, num_noise, n - num_noise)  # every span, noise or kept, has >= 1 token
    if len(sentinel_ids) < num_spans:
        raise ValueError(f"{num_spans} noise spans need {num_spans} sentinel ids, got {len(sentinel_ids)}")

    def random_segmentation(total: int) -> list[int]:
        """num_spans positive lengths summing to total, uniformly among all such compositions."""
        # choose num_spans - 1 distinct cut points among the total - 1 gaps between items
        cuts = sorted((torch.randperm(total - 1, generator=generator)[: num_spans - 1] + 1).tolist())
        return torch.tensor([0, *cuts, total]).diff().tolist()  # the gaps between the cuts

    noise_lengths = random_segmentation(num_noise)
    kept_lengths = random_segmentation(n - num_noise)
    inputs, targets, start = [], [], 0
    for i in range(num_spans):  # a kept span, then a noise span
        kept, noise = kept_lengths[i], noise_lengths[i]
        inputs.append(tokens[start: start + kept])
        start += kept
        sentinel = tokens.new_tensor([sentinel_ids[i]])  # one distinct sentinel per span, in order
        inputs.append(sentinel)
        targets += [sentinel, tokens[start: start + noise]]
        start += noise
    return torch.cat(inputs), torch.cat(targets)


# --------------------------------------------------------------------------------------------------
# attention_mask_for


def attention_mask_for(kind: str, t: int, prefix_len: int = 0) -> Tensor:
    """(t, t) bool mask, True where query i may attend to key j, for "causal", "bidirectional" or "prefix"."""
    t, prefix_len = operator.index(t), operator.index(prefix_len)
    if t < 0:
        raise ValueError(f"t must be >= 0, got t={t}")
    if kind not in ("causal", "bidirectional", "prefix"):
        raise ValueError(f"kind must be 'causal', 'bidirectional' or 'prefix', got {kind!r}")
    if kind != "prefix" and prefix_len != 0:
        raise ValueError(f"prefix_len={prefix_len} only applies to kind='prefix'")
    if not 0 <= prefix_len <= t:
        raise ValueError(f"prefix_len must be in [0, t={t}], got {prefix_len}")
    i = torch.arange(t)[:, None]
    j = torch.arange(t)[None, :]
    if kind == "bidirectional":
        return torch.ones(t, t, dtype=torch.bool)  # BERT: every token sees every token
    causal = j <= i  # GPT: a token sees itself and the past
    if kind == "prefix":
        # prefix LM (T5 as a decoder, UniLM): the prefix is read bidirectionally, the rest is generated causally
        return causal | (j < prefix_len)
    return causal


# --------------------------------------------------------------------------------------------------
# RMSNorm


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * weight over the last axis: LayerNorm without the mean and without a bias."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps  # Llama's default; inside the square root, so an all-zero row gives 0, not nan
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        inv_rms = torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return x * inv_rms * self.weight


# --------------------------------------------------------------------------------------------------
# apply_rotary


def apply_rotary(x: Tensor, positions: Tensor, base: float = 10000.0) -> Tensor:
    """Rotary position embedding (RoPE), Llama's half-split convention: feature i pairs with feature i + D/2."""
    D = x.shape[-1]
    if D % 2:
        raise ValueError(f"the last dimension of x must be even to form pairs, got D={D}")
    # angles in float64: at position 10^4 a float32 angle is already off by ~1e-3 rad
    inv_freq = base ** (-torch.arange(0, D, 2, dtype=torch.float64, device=x.device) / D)  # (D/2,)
    angles = positions[..., None] * inv_freq  # (..., T, D/2), float64 by type promotion
    angles = torch.cat([angles, angles], dim=-1)  # the same angle for feature i and i + D/2
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    first, second = x[..., : D // 2], x[..., D // 2:]
    rotated_half = torch.cat([-second, first], dim=-1)  # (x1, x2) -> (-x2, x1): a quarter turn of every pair
    return x * cos + rotated_half * sin


# --------------------------------------------------------------------------------------------------
# SwiGLU


class SwiGLU(nn.Module):
    """Llama's feed-forward: down(silu(gate(x)) * up(x)), no biases."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden_dim, bias=False)
        self.up_proj = nn.Linear(dim, hidden_dim, bias=False)
        self.down_proj = nn.Linear(hidden_dim, dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        # the gate decides, feature by feature, how much of the up projection passes
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


# --------------------------------------------------------------------------------------------------
# GroupedQueryAttention


class GroupedQueryAttention(nn.Module):
    """Causal attention in which groups of num_heads // num_kv_heads query heads share one key/value head."""

    def __init__(self, embed_dim: int, num_heads: int, num_kv_heads: int) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim={embed_dim} is not divisible by num_heads={num_heads}")
        if num_heads % num_kv_heads:
            raise ValueError(f"num_heads={num_heads} is not divisible by num_kv_heads={num_kv_heads}")
        self.num_heads, self.num_kv_heads = num_heads, num_kv_heads
        self.head_dim = embed_dim // num_heads
        self.q_proj = nn.Linear(embed_dim, num_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(embed_dim, num_kv_heads * self.head_dim, bias=False)  # fewer K/V heads: a
        self.v_proj = nn.Linear(embed_dim, num_kv_heads * self.head_dim, bias=False)  # smaller KV cache
        self.o_proj = nn.Linear(num_heads * self.head_dim, embed_dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        B, T, _ = x.shape
        hd = self.head_dim
        q = self.q_proj(x).view(B, T, self.num_heads, hd).transpose(1, 2)  # (B, H, T, hd)
        k = self.k_proj(x).view(B, T, self.num_kv_heads, hd).transpose(1, 2)  # (B, KV, T, hd)
        v = self.v_proj(x).view(B, T, self.num_kv_heads, hd).transpose(1, 2)
        # query head h uses kv head h // group: repeat each kv head `group` times IN PLACE (0 0 1 1, not 0 1 0 1)
        group = self.num_heads // self.num_kv_heads
        k = k.repeat_interleave(group, dim=1)
        v = v.repeat_interleave(group, dim=1)
        scores = q @ k.mT / math.sqrt(hd)  # .mT swaps the last two axes
        causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
        weights = torch.softmax(scores.masked_fill(~causal, float("-inf")), dim=-1)
        y = (weights @ v).transpose(1, 2).reshape(B, T, self.num_heads * hd)
        return self.o_proj(y)


# --------------------------------------------------------------------------------------------------
# chinchilla_optimal, fit_power_law, plot_scaling


def chinchilla_optimal(compute_flops: float) -> tuple[float, float]:
    """(parameters N, tokens D) that spend ``compute_flops`` as C = 6 N D with Chinchilla's D = 20 N."""
    if not math.isfinite(compute_flops) or compute_flops <= 0:
        raise ValueError(f"compute_flops must be a positive finite number, got {compute_flops}")
    n_params = math.sqrt(compute_flops / 120.0)  # C = 6 N (20 N) = 120 N^2
    return n_params, 20.0 * n_params


def fit_power_law(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """(a, b) of y = a * x**b by least squares on log y = log a + b log x."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.ndim != 1 or x.shape != y.shape or x.size < 2:
        raise ValueError(f"x and y must be 1-D of the same length >= 2, got shapes {x.shape} and {y.shape}")
    if not (np.all(x > 0) and np.all(y > 0) and np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise ValueError("x and y must be positive and finite: a power law lives on log axes")
    lx, ly = np.log(x), np.log(y)
    if np.ptp(lx) == 0:
        raise ValueError(f"x must take at least two different values, got {x[0]} only")
    # a straight line in log-log space; centring keeps the normal equations well conditioned
    dx = lx - lx.mean()
    b = float(np.sum(dx * ly) / np.sum(dx * dx))
    a = float(np.exp(ly.mean() - b * lx.mean()))
    return a, b


def plot_scaling(x: Sequence[float], y: Sequence[float], fit: tuple[float, float] | None = None):
    """A Figure with the measured (x, y) as markers on log-log axes and, given ``fit=(a, b)``, the line a x^b."""
    from matplotlib.figure import Figure  # no pyplot: no global figure state, no GUI backend needed

    fig = Figure()
    ax = fig.add_subplot()
    ax.plot(x, y, "o")  # the measurements themselves, never their rank
    if fit is not None:
        a, b = fit
        grid = np.geomspace(min(x), max(x))  # evenly spaced on the log axis
        ax.plot(grid, a * grid**b)
    ax.set_xscale("log")
    ax.set_yscale("log")  # a power law is a straight line on log-log axes
    return fig
