"""Reference solutions for w15_mini_gpt (Weeks 15-16): a first transformer language model.

nanoGPT style: one concept per class, in dependency order, with shape comments. B is the batch size, T the
sequence length, E ``embed_dim``, nh ``num_heads``, hs = E // nh the head size, V ``vocab_size``, L ``num_layers``.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

# ---------------------------------------------------------------------------------------------------------
# MiniGPT: the model
# ---------------------------------------------------------------------------------------------------------


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention in which position t attends to positions 0..t only."""

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if embed_dim % num_heads != 0:
            raise ValueError(f"embed_dim={embed_dim} is not divisible by num_heads={num_heads}")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.dropout = dropout
        self.qkv = nn.Linear(embed_dim, 3 * embed_dim)  # q, k and v of every head in one matmul
        self.proj = nn.Linear(embed_dim, embed_dim)  # mixes the heads back into the residual stream
        self.resid_drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, E = x.shape
        nh = self.num_heads
        q, k, v = self.qkv(x).split(E, dim=2)  # 3 x (B, T, E)
        # (B, T, E) -> (B, T, nh, hs) -> (B, nh, T, hs): the transpose puts each head's sequence together.
        q, k, v = (t.view(B, T, nh, E // nh).transpose(1, 2) for t in (q, k, v))
        # is_causal masks j > i, so the logits at t can never depend on a later token
        # (the learning path's code forgot this).
        y = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True
        )  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, E)  # (B, T, E): heads side by side again
        return self.resid_drop(self.proj(y))


class Block(nn.Module):
    """A pre-norm transformer block: x + attn(ln1(x)), then x + mlp(ln2(x))."""

    def __init__(self, embed_dim: int, num_heads: int, ff_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(embed_dim)
        self.attn = CausalSelfAttention(embed_dim, num_heads, dropout)
        self.ln2 = nn.LayerNorm(embed_dim)
        self.mlp = nn.Sequential(
            nn.Linear(embed_dim, ff_dim), nn.GELU(), nn.Linear(ff_dim, embed_dim), nn.Dropout(dropout)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))  # (B, T, E)
        return x + self.mlp(self.ln2(x))  # (B, T, E)


class MiniGPT(nn.Module):
    """A decoder-only transformer language model (GPT-2 layout, learned positions, tied head)."""

    def __init__(
        self,
        vocab_size: int,
        embed_dim: int = 512,
        num_heads: int = 8,
        num_layers: int = 6,
        ff_dim: int = 2048,
        max_len: int = 1024,
        dropout: float = 0.1,
        tie_weights: bool = True,
    ) -> None:
        super().__init__()
        if embed_dim % num_heads != 0:
            raise ValueError(f"embed_dim={embed_dim} is not divisible by num_heads={num_heads}")
        self.vocab_size, self.embed_dim, self.num_heads = vocab_size, embed_dim, num_heads
        self.num_layers, self.ff_dim, self.max_len = num_layers, ff_dim, max_len
        self.tok_emb = nn.Embedding(vocab_size, embed_dim)
        self.pos_emb = nn.Embedding(max_len, embed_dim)  # learned positions, as in GPT-2
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList([Block(embed_dim, num_heads, ff_dim, dropout) for _ in range(num_layers)])
        self.ln_f = nn.LayerNorm(embed_dim)
        self.head = nn.Linear(embed_dim, vocab_size, bias=False)
        if tie_weights:
            # One Parameter in two places: the same storage reads tokens in and scores them out.
            self.head.weight = self.tok_emb.weight
        self.apply(self._init_weights)
        for block in self.blocks:
            # GPT-2: scale the projections that write into the residual stream by 1/sqrt(2L).
            nn.init.normal_(block.attn.proj.weight, std=0.02 / math.sqrt(2 * num_layers))
            nn.init.normal_(block.mlp[2].weight, std=0.02 / math.sqrt(2 * num_layers))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        # N(0, 0.02) keeps the first logits small, so the initial loss is close to ln(vocab_size).
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        if idx.dim() != 2:
            raise ValueError(f"idx must have shape (batch, time); got shape {tuple(idx.shape)}")
        B, T = idx.shape
        if T > self.max_len:
            raise ValueError(f"sequence length {T} is longer than max_len={self.max_len}; crop the context first")
        if idx.numel():
            low, high = int(idx.min()), int(idx.max())
            if low < 0 or high >= self.vocab_size:
                bad = low if low < 0 else high
                raise ValueError(f"token id {bad} is out of range for vocab_size={self.vocab_size}")
        # The first T rows of the position table are pos_emb(arange(T)); (B, T, E) + (T, E) broadcasts over B.
        x = self.drop(self.tok_emb(idx) + self.pos_emb.weight[:T])
        for block in self.blocks:
            x = block(x)  # (B, T, E)
        return self.head(self.ln_f(x))  # (B, T, V)


# ---------------------------------------------------------------------------------------------------------
# Data and optimizer
# ---------------------------------------------------------------------------------------------------------


def get_batch(
    data: torch.Tensor, block_size: int, batch_size: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    data = torch.as_tensor(data)
    if data.dim() != 1:
        raise ValueError(f"data must be a 1-D sequence of token ids; got shape {tuple(data.shape)}")
    if block_size < 1 or batch_size < 1:
        raise ValueError(f"block_size={block_size} and batch_size={batch_size} must be at least 1")
    n = data.numel()
    if n < block_size + 1:
        raise ValueError(f"data has {n} tokens; a window of block_size={block_size} needs at least {block_size + 1}")
    # Starts 0 .. n - block_size - 1 inclusive: the last window's target ends exactly at data[-1].
    starts = torch.randint(n - block_size, (batch_size,), generator=generator)
    offsets = torch.arange(block_size)
    x = data[starts[:, None] + offsets]  # (batch_size, block_size)
    y = data[starts[:, None] + offsets + 1]  # the same windows, one token later
    return x.long(), y.long()


def configure_optimizer(
    model: nn.Module, lr: float, weight_decay: float, betas: tuple[float, float] = (0.9, 0.95)
) -> torch.optim.AdamW:
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    decay_ids = {
        id(m.weight) for m in model.modules() if isinstance(m, nn.Linear) and id(m.weight) not in embeddings
    }
    decay, no_decay = [], []
    # named_parameters() yields a tied Parameter once, so it can never land in both groups.
    for _, p in model.named_parameters():
        if p.requires_grad:
            (decay if id(p) in decay_ids else no_decay).append(p)
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},  # biases, norms and embeddings: shrinking them only hurts
    ]
    return torch.optim.AdamW(groups, lr=lr, betas=betas)


# ---------------------------------------------------------------------------------------------------------
# Sampling
# ---------------------------------------------------------------------------------------------------------


def _check_sampling_args(idx, max_new_tokens, temperature, top_k, top_p) -> None:
    if not isinstance(idx, torch.Tensor) or idx.dim() != 2 or idx.shape[1] < 1:
        raise ValueError(f"idx must be a (batch, time) tensor of at least one token; got {getattr(idx, 'shape', idx)}")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens={max_new_tokens} must be >= 0")
    if temperature < 0:
        raise ValueError(f"temperature={temperature} must be >= 0 (0 means greedy)")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k={top_k} must be >= 1 (or None)")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p={top_p} must be in (0, 1] (or None)")


def _sample_next(logits, temperature, top_k, top_p, generator) -> torch.Tensor:
    """(B, V) logits -> (B, 1) token ids. Dimension 1 is the vocabulary."""
    if temperature == 0:
        return logits.argmax(1, keepdim=True)  # the greedy limit, without dividing by zero
    logits = logits / temperature
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.shape[1])).values[:, -1:]  # (B, 1): the k-th largest logit
        logits = logits.masked_fill(logits < kth, -math.inf)
    if top_p is not None:
        sorted_logits, order = torch.sort(logits, descending=True)
        probs = sorted_logits.softmax(1)
        mass_before = probs.cumsum(1) - probs  # probability of the tokens strictly ahead of each one
        remove_sorted = mass_before >= top_p  # keeps the smallest prefix whose mass reaches top_p
        remove = remove_sorted.scatter(1, order, remove_sorted)  # back to vocabulary order
        logits = logits.masked_fill(remove, -math.inf)
    return torch.multinomial(logits.softmax(1), 1, generator=generator)  # (B, 1), one draw per row


def generate(
    model: nn.Module,
    idx: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
    return_logits: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    _check_sampling_args(idx, max_new_tokens, temperature, top_k, top_p)
    was_training = model.training
    model.eval()  # no dropout while sampling
    try:
        with torch.no_grad():  # sampling never needs gradients
            steps = []
            for _ in range(max_new_tokens):
                context = idx[:, -model.max_len:]  # crop: the model never sees more than max_len tokens
                logits = model(context)[:, -1, :]  # (B, V): only the last position predicts the next token
                steps.append(logits)
                idx = torch.cat([idx, _sample_next(logits, temperature, top_k, top_p, generator)], dim=1)
    finally:
        model.train(was_training)  # the learning path's code left the model in eval mode
    if return_logits:
        return idx, _stack_steps(steps, idx)
    return idx


def _stack_steps(steps: list[torch.Tensor], idx: torch.Tensor) -> torch.Tensor:
    if steps:
        return torch.stack(steps, dim=1)  # (B, max_new_tokens, V)
    return torch.empty(idx.shape[0], 0, 0)


# ---------------------------------------------------------------------------------------------------------
# KV cache
# ---------------------------------------------------------------------------------------------------------


class KVCache:
    """Preallocated keys and values of every layer, for incremental decoding."""

    def __init__(
        self,
        num_layers: int,
        batch_size: int,
        num_heads: int,
        head_dim: int,
        max_len: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> None:
        self.num_layers, self.max_len = num_layers, max_len
        shape = (num_layers, batch_size, num_heads, max_len, head_dim)
        # Allocated once: a step writes its one new position in place. torch.cat would instead copy every
        # cached position of every layer into a fresh tensor on each step (O(T) work per token, O(T^2) in all).
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        # Each layer's (B, nh, max_len, hs) view, taken once: indexing self.k[layer] on every update would
        # cost two more tiny tensor operations per layer and token.
        self._k_layers, self._v_layers = self.k.unbind(0), self.v.unbind(0)
        self.lengths = [0] * num_layers

    def __len__(self) -> int:
        # Positions that every layer holds: during a forward pass the later layers lag behind.
        return min(self.lengths)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= layer < self.num_layers:
            raise ValueError(f"layer={layer} is out of range for a cache of {self.num_layers} layers")
        expected = self.k.shape[1:3] + self.k.shape[4:]
        if k.shape != v.shape or k.dim() != 4 or (k.shape[0], k.shape[1], k.shape[3]) != tuple(expected):
            raise ValueError(
                f"k and v must have shape (batch, heads, time, head_dim) = ({expected[0]}, {expected[1]}, T, "
                f"{expected[2]}); got {tuple(k.shape)} and {tuple(v.shape)}"
            )
        start, t = self.lengths[layer], k.shape[2]
        if start + t > self.max_len:
            raise ValueError(f"KVCache overflow: {start} cached + {t} new positions exceed max_len={self.max_len}")
        k_layer, v_layer = self._k_layers[layer], self._v_layers[layer]  # (B, nh, max_len, hs)
        k_layer.narrow(2, start, t).copy_(k)  # written in place, behind the cached positions
        v_layer.narrow(2, start, t).copy_(v)
        self.lengths[layer] = start + t
        return k_layer.narrow(2, 0, start + t), v_layer.narrow(2, 0, start + t)  # (B, nh, start + t, hs)

    def reset(self) -> None:
        self.lengths = [0] * self.num_layers  # the stale values are overwritten before they are read


def _forward_cached(model: MiniGPT, idx: torch.Tensor, cache: KVCache, weights: list[dict]) -> torch.Tensor:
    """Run ``idx`` (B, T), the tokens that follow the cached ones, through ``model``; returns (B, T, V).

    MiniGPT.forward written out with functional calls on ``weights[i] = dict(model.blocks[i].named_parameters())``.
    Decoding one token runs about 100 operations on vectors of a few hundred numbers, each done in microseconds,
    so the Python around them sets the pace: an nn.Module call (hook checks, attribute lookups) costs about as
    much as the arithmetic. In eval mode dropout is the identity, so it is left out.
    """
    B, T = idx.shape
    E, nh = model.embed_dim, model.num_heads
    start = len(cache)
    # New tokens sit at absolute positions start .. start + T - 1, not 0 .. T - 1.
    x = model.tok_emb(idx) + model.pos_emb.weight[start:start + T]  # (B, T, E)
    # Query i (absolute start + i) may see every cached key and the new keys up to itself (True = attend).
    # One new token may see every key: no mask, which saves building one on every step.
    mask = None if T == 1 else idx.new_ones(T, start + T, dtype=torch.bool).tril(diagonal=start)
    for layer, w in enumerate(weights):
        # F.layer_norm's default eps is nn.LayerNorm's, the one MiniGPT's norms use.
        h = F.layer_norm(x, (E,), w["ln1.weight"], w["ln1.bias"])
        qkv = F.linear(h, w["attn.qkv.weight"], w["attn.qkv.bias"])  # (B, T, 3E)
        q, k, v = qkv.view(B, T, 3, nh, E // nh).permute(2, 0, 3, 1, 4)  # 3 x (B, nh, T, hs)
        k_all, v_all = cache.update(layer, k, v)  # (B, nh, start + T, hs)
        y = F.scaled_dot_product_attention(q, k_all, v_all, attn_mask=mask)  # (B, nh, T, hs)
        y = y.transpose(1, 2).reshape(B, T, E)
        x = x + F.linear(y, w["attn.proj.weight"], w["attn.proj.bias"])
        h = F.layer_norm(x, (E,), w["ln2.weight"], w["ln2.bias"])
        h = F.gelu(F.linear(h, w["mlp.0.weight"], w["mlp.0.bias"]))  # (B, T, ff_dim)
        x = x + F.linear(h, w["mlp.2.weight"], w["mlp.2.bias"])
    x = F.layer_norm(x, (E,), model.ln_f.weight, model.ln_f.bias)
    return F.linear(x, model.head.weight)  # (B, T, V)


def generate_cached(
    model: MiniGPT,
    idx: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
    return_logits: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    _check_sampling_args(idx, max_new_tokens, temperature, top_k, top_p)
    was_training = model.training
    model.eval()
    try:
        # inference_mode, not no_grad: it also skips autograd's bookkeeping (version counters, view records) on
        # each of a step's ~100 operations, about a tenth of a step here. A tensor made inside can never enter
        # autograd, so what is returned is made outside (idx.clone() and _stack_steps below).
        with torch.inference_mode():
            steps = []
            # Every block's tensors by name, looked up once: nn.Module attribute lookups run Python code,
            # and a step would need about a hundred of them.
            weights = [dict(block.named_parameters()) for block in model.blocks]
            cache = KVCache(
                model.num_layers, idx.shape[0], model.num_heads, model.embed_dim // model.num_heads, model.max_len,
                dtype=model.tok_emb.weight.dtype, device=idx.device,
            )
            logits = _forward_cached(model, idx[:, -model.max_len:], cache, weights)[:, -1, :]  # prefill: (B, V)
            for _ in range(max_new_tokens):
                steps.append(logits)
                next_token = _sample_next(logits, temperature, top_k, top_p, generator)  # (B, 1)
                # A few hundred ids: this copy costs about as much as one small operation, so a preallocated
                # buffer (what the KV cache needs: its copy would be every layer's keys and values) buys nothing.
                idx = torch.cat([idx, next_token], dim=1)
                if len(cache) == model.max_len:
                    # Full: generate() now sees the last max_len tokens at positions 0..max_len-1, so every
                    # key changes. Re-prefill that window to stay exact; the cache never grows past max_len.
                    cache.reset()
                    logits = _forward_cached(model, idx[:, -model.max_len:], cache, weights)[:, -1, :]
                else:
                    logits = _forward_cached(model, next_token, cache, weights)[:, -1, :]  # one new token: O(T) work
    finally:
        model.train(was_training)
    idx = idx.clone()  # an ordinary tensor again: the caller may train on it, which an inference tensor refuses
    if return_logits:
        return idx, _stack_steps(steps, idx)
    return idx


# ---------------------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------------------


def _lr_at(step: int, steps: int, warmup_steps: int, lr: float, min_lr: float) -> float:
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps  # linear warmup: lr / warmup_steps ... lr
    progress = (step - warmup_steps) / max(1, steps - 1 - warmup_steps)  # 0 at the peak, 1 at the last step
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * progress))


@torch.no_grad()
def _evaluate(model: nn.Module, data: torch.Tensor, block_size: int) -> float:
    """Mean next-token loss over consecutive non-overlapping windows of ``data``, in eval mode."""
    was_training = model.training
    model.eval()  # dropout off: the validation loss must not be noisy
    try:
        starts = torch.arange(0, data.numel() - block_size, block_size)
        offsets = torch.arange(block_size)
        x = data[starts[:, None] + offsets].long()  # data already lives on the model's device
        y = data[starts[:, None] + offsets + 1].long()
        logits = model(x)
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1)).item()
    finally:
        model.train(was_training)


def train_mini_gpt(
    model: nn.Module,
    data: torch.Tensor,
    steps: int,
    *,
    val_data: torch.Tensor | None = None,
    block_size: int = 64,
    batch_size: int = 16,
    lr: float = 1e-3,
    min_lr: float | None = None,
    warmup_steps: int | None = None,
    weight_decay: float = 0.1,
    max_norm: float = 1.0,
    eval_interval: int | None = None,
    generator: torch.Generator | None = None,
) -> dict[str, list]:
    if steps < 1:
        raise ValueError(f"steps={steps} must be at least 1")
    if block_size > model.max_len:
        raise ValueError(f"block_size={block_size} is longer than the model's max_len={model.max_len}")
    # Both token streams move to the model's device once; batches and validation windows are sliced there.
    device = next(model.parameters()).device
    data, val_data = (None if d is None else torch.as_tensor(d).to(device) for d in (data, val_data))
    if val_data is not None and val_data.numel() < block_size + 1:
        raise ValueError(f"val_data has {val_data.numel()} tokens; it needs block_size + 1 = {block_size + 1}")
    min_lr = lr / 10 if min_lr is None else min_lr
    warmup_steps = max(1, steps // 10) if warmup_steps is None else warmup_steps
    eval_interval = steps if eval_interval is None else eval_interval
    generator = torch.Generator().manual_seed(0) if generator is None else generator
    optimizer = configure_optimizer(model, lr, weight_decay)
    history: dict[str, list] = {"train_loss": [], "lr": [], "grad_norm": [], "val_loss": [], "val_step": []}
    model.train()
    for step in range(steps):
        lr_now = _lr_at(step, steps, warmup_steps, lr, min_lr)
        for group in optimizer.param_groups:
            group["lr"] = lr_now
        x, y = get_batch(data, block_size, batch_size, generator)  # one draw per step, in order
        logits = model(x)  # (B, T, V)
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1))
        optimizer.zero_grad()  # gradients must not accumulate across steps
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)  # before step, or it is moot
        optimizer.step()
        history["train_loss"].append(loss.item())
        history["lr"].append(lr_now)
        history["grad_norm"].append(float(grad_norm))
        if val_data is not None and ((step + 1) % eval_interval == 0 or step == steps - 1):
            history["val_loss"].append(_evaluate(model, val_data, block_size))
            history["val_step"].append(step + 1)
    return history
