"""Catalogued mistakes and correct variants for w15_mini_gpt."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from checks.harness.catalogue import mistake, variant
from reference.phase2.w15_mini_gpt import (
    Block,
    CausalSelfAttention,
    KVCache,
    MiniGPT,
    _check_sampling_args,
    _evaluate,
    _forward_cached,
    _lr_at,
    _sample_next,
    _stack_steps,
    configure_optimizer,
    generate,
    get_batch,
)

# ---------------------------------------------------------------------------------------------------------
# MiniGPT (CausalSelfAttention, Block, MiniGPT)
# ---------------------------------------------------------------------------------------------------------


def _heads(attn, x):
    B, T, E = x.shape
    q, k, v = attn.qkv(x).split(E, dim=2)
    return [t.view(B, T, attn.num_heads, E // attn.num_heads).transpose(1, 2) for t in (q, k, v)]


def _merge(attn, y):
    B, nh, T, hs = y.shape
    return attn.resid_drop(attn.proj(y.transpose(1, 2).contiguous().view(B, T, nh * hs)))


@mistake(
    "CausalSelfAttention",
    "no causal mask (the seed's model): every position attends to the future, so training "
    "copies the next token from the input and generation is garbage",
)
class AttentionWithoutCausalMask(CausalSelfAttention):
    def forward(self, x):
        q, k, v = _heads(self, x)
        return _merge(self, F.scaled_dot_product_attention(q, k, v))


@mistake(
    "CausalSelfAttention",
    "masks the diagonal too (triu(diagonal=0)): a token cannot see itself and the first "
    "row of scores is all -inf, so softmax returns nan",
)
class AttentionMaskingTheDiagonal(CausalSelfAttention):
    def forward(self, x):
        q, k, v = _heads(self, x)
        T = x.shape[1]
        scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
        scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(diagonal=0), float("-inf"))
        return _merge(self, F.softmax(scores, dim=-1) @ v)


@mistake(
    "CausalSelfAttention",
    "splits heads with view(B, nh, T, hs) straight from (B, T, E), without the transpose: "
    "time steps and features get mixed across heads",
)
class AttentionHeadsWithoutTranspose(CausalSelfAttention):
    def forward(self, x):
        B, T, E = x.shape
        nh = self.num_heads
        q, k, v = (t.reshape(B, nh, T, E // nh) for t in self.qkv(x).split(E, dim=2))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.resid_drop(self.proj(y.reshape(B, T, E)))


@mistake(
    "CausalSelfAttention",
    "forgets the 1/sqrt(head_dim) scale: scores grow with the head size and the softmax saturates",
)
class AttentionWithoutScale(CausalSelfAttention):
    def forward(self, x):
        q, k, v = _heads(self, x)
        return _merge(self, F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=1.0))


@mistake(
    "Block",
    "post-norm like the seed's TransformerBlock (LayerNorm after the residual addition) instead of "
    "GPT-2's pre-norm x + attn(ln1(x))",
)
class PostNormBlock(Block):
    def forward(self, x):
        x = self.ln1(x + self.attn(x))
        return self.ln2(x + self.mlp(x))


@mistake("MiniGPT", "ignores tie_weights: the head gets its own V*E matrix")
class MiniGPTNeverTied(MiniGPT):
    def __init__(
        self,
        vocab_size,
        embed_dim=512,
        num_heads=8,
        num_layers=6,
        ff_dim=2048,
        max_len=1024,
        dropout=0.1,
        tie_weights=True,
    ):
        super().__init__(vocab_size, embed_dim, num_heads, num_layers, ff_dim, max_len, dropout, tie_weights=False)


@mistake(
    "MiniGPT",
    "no input checks: an out-of-range id ends in nn.Embedding's opaque IndexError and a long "
    "sequence in an indexing error of the position table",
)
class MiniGPTWithoutInputChecks(MiniGPT):
    def forward(self, idx):
        pos = torch.arange(idx.shape[1])
        x = self.drop(self.tok_emb(idx) + self.pos_emb(pos))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))


@mistake(
    "MiniGPT",
    "keeps PyTorch's default N(0, 1) embedding init: the tied head starts with huge logits and the "
    "initial loss is far above ln(vocab_size)",
)
class MiniGPTDefaultInit(MiniGPT):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        nn.init.normal_(self.tok_emb.weight)
        nn.init.normal_(self.pos_emb.weight)


@variant(
    "CausalSelfAttention",
    "computes attention by hand: explicit scores, a tril mask with masked_fill(-inf), "
    "softmax and dropout on the weights",
)
class ManualCausalAttention(CausalSelfAttention):
    def __init__(self, embed_dim, num_heads, dropout=0.0):
        super().__init__(embed_dim, num_heads, dropout)
        self.attn_drop = nn.Dropout(dropout)

    def forward(self, x):
        q, k, v = _heads(self, x)
        T = x.shape[1]
        scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.shape[-1]))  # (B, nh, T, T)
        causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
        weights = self.attn_drop(F.softmax(scores.masked_fill(~causal, float("-inf")), dim=-1))
        return _merge(self, weights @ v)


@variant("MiniGPT", "adds the position table by slicing pos_emb.weight[:T] and validates with explicit loops")
class MiniGPTSlicedPositions(MiniGPT):
    def forward(self, idx):
        if idx.dim() != 2:
            raise ValueError(f"idx must be 2-D, got {idx.dim()}-D")
        if idx.shape[1] > self.max_len:
            raise ValueError(f"got {idx.shape[1]} tokens but max_len is {self.max_len}")
        for token in idx.flatten().tolist():
            if not 0 <= token < self.vocab_size:
                raise ValueError(f"token {token} not in [0, {self.vocab_size})")
        x = self.drop(self.tok_emb(idx) + self.pos_emb.weight[: idx.shape[1]])
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))


# ---------------------------------------------------------------------------------------------------------
# get_batch
# ---------------------------------------------------------------------------------------------------------


def _windows(data, starts, block_size):
    data = torch.as_tensor(data).long()
    offsets = torch.arange(block_size)
    return data[starts[:, None] + offsets], data[starts[:, None] + offsets + 1]


@mistake(
    "get_batch",
    "draws starts with randint(N - block_size - 1): the last window (whose target ends at the "
    "data's last token) is never drawn",
)
def get_batch_last_window_unreachable(data, block_size, batch_size, generator=None):
    n = torch.as_tensor(data).numel()
    if n < block_size + 1:
        raise ValueError(f"data has {n} tokens, block_size={block_size}")
    return _windows(data, torch.randint(max(1, n - block_size - 1), (batch_size,), generator=generator), block_size)


@mistake("get_batch", "returns y equal to x instead of x shifted by one token")
def get_batch_unshifted_targets(data, block_size, batch_size, generator=None):
    x, _ = get_batch(data, block_size, batch_size, generator)
    return x, x.clone()


@mistake("get_batch", "samples with the global RNG (torch.randint without generator=): batches are not reproducible")
def get_batch_global_rng(data, block_size, batch_size, generator=None):
    return get_batch(data, block_size, batch_size, None)


@mistake("get_batch", "keeps the data's dtype (uint16 from a memmap), which nn.Embedding rejects")
def get_batch_keeps_dtype(data, block_size, batch_size, generator=None):
    data = torch.as_tensor(data)
    x, y = get_batch(data, block_size, batch_size, generator)
    return x.to(data.dtype), y.to(data.dtype)


@variant("get_batch", "draws starts as floor(uniform * number_of_windows) and slices with unfold")
def get_batch_unfold(data, block_size, batch_size, generator=None):
    data = torch.as_tensor(data).long()
    if block_size < 1 or batch_size < 1:
        raise ValueError(f"block_size {block_size} and batch_size {batch_size} must be positive")
    if data.numel() <= block_size:
        raise ValueError(f"need more than block_size={block_size} tokens, got {data.numel()}")
    windows = data.unfold(0, block_size + 1, 1)  # (N - block_size, block_size + 1)
    starts = (torch.rand(batch_size, generator=generator, dtype=torch.float64) * windows.shape[0]).long()
    chosen = windows[starts.clamp(max=windows.shape[0] - 1)]
    return chosen[:, :-1], chosen[:, 1:]


# ---------------------------------------------------------------------------------------------------------
# configure_optimizer
# ---------------------------------------------------------------------------------------------------------


@mistake("configure_optimizer", "decays everything (the seed's AdamW(model.parameters(), weight_decay=0.1))")
def configure_optimizer_decays_everything(model, lr, weight_decay, betas=(0.9, 0.95)):
    return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, betas=betas)


@mistake("configure_optimizer", "uses the 'every 2-D parameter' rule, which decays the embeddings (and the tied head)")
def configure_optimizer_decays_embeddings(model, lr, weight_decay, betas=(0.9, 0.95)):
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=lr, betas=betas)


@mistake("configure_optimizer", "keeps frozen parameters (requires_grad=False) in the groups")
def configure_optimizer_keeps_frozen(model, lr, weight_decay, betas=(0.9, 0.95)):
    frozen = [p for p in model.parameters() if not p.requires_grad]
    for p in frozen:
        p.requires_grad_(True)
    try:
        optimizer = configure_optimizer(model, lr, weight_decay, betas)
    finally:
        for p in frozen:
            p.requires_grad_(False)
    return optimizer


@variant("configure_optimizer", "2-D parameters except embedding weights, found by identity; no-decay group first")
def configure_optimizer_by_dimension(model, lr, weight_decay, betas=(0.9, 0.95)):
    embedding_weights = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2 and id(p) not in embedding_weights]
    no_decay = [p for p in params if not (p.dim() >= 2 and id(p) not in embedding_weights)]
    return torch.optim.AdamW(
        [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}], lr=lr, betas=betas
    )


# ---------------------------------------------------------------------------------------------------------
# generate
# ---------------------------------------------------------------------------------------------------------


def _generate(
    model,
    idx,
    max_new_tokens,
    temperature=1.0,
    top_k=None,
    top_p=None,
    generator=None,
    return_logits=False,
    *,
    crop=True,
    stop_at_max_len=False,
    use_eval=True,
    restore=True,
    row0=False,
    sample=_sample_next,
):
    _check_sampling_args(idx, max_new_tokens, temperature, top_k, top_p)
    was_training = model.training
    if use_eval:
        model.eval()
    steps = []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            if stop_at_max_len and idx.shape[1] >= model.max_len:
                break
            logits = model(idx[:, -model.max_len :] if crop else idx)[:, -1, :]
            steps.append(logits)
            if row0:
                token = sample(logits[:1], temperature, top_k, top_p, generator).expand(idx.shape[0], 1)
            else:
                token = sample(logits, temperature, top_k, top_p, generator)
            idx = torch.cat([idx, token], dim=1)
    if restore:
        model.train(was_training)
    return (idx, _stack_steps(steps, idx)) if return_logits else idx


@mistake(
    "generate",
    "stops when the sequence reaches max_len instead of cropping the context (the seed stopped at "
    "1024), so it returns fewer tokens than asked",
)
def generate_stops_at_max_len(
    model, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, generator=None, return_logits=False
):
    return _generate(
        model,
        idx,
        max_new_tokens,
        temperature,
        top_k,
        top_p,
        generator,
        return_logits,
        crop=False,
        stop_at_max_len=True,
    )


@mistake("generate", "leaves the model in eval mode (the seed's self.eval() with no way back)")
def generate_leaves_eval_mode(
    model, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, generator=None, return_logits=False
):
    return _generate(model, idx, max_new_tokens, temperature, top_k, top_p, generator, return_logits, restore=False)


@mistake("generate", "samples from row 0 only (the seed's logits[0, -1, :]) and gives every row that token")
def generate_batch_of_one(
    model, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, generator=None, return_logits=False
):
    return _generate(model, idx, max_new_tokens, temperature, top_k, top_p, generator, return_logits, row0=True)


@mistake("generate", "never switches to eval mode: dropout stays on while sampling")
def generate_with_dropout(
    model, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, generator=None, return_logits=False
):
    return _generate(model, idx, max_new_tokens, temperature, top_k, top_p, generator, return_logits, use_eval=False)


def _sample_top_p_drops_crossing(logits, temperature, top_k, top_p, generator):
    if temperature == 0 or top_p is None:
        return _sample_next(logits, temperature, top_k, top_p, generator)
    logits = logits / temperature
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    sorted_logits, order = torch.sort(logits, descending=True)
    remove_sorted = F.softmax(sorted_logits, dim=-1).cumsum(-1) > top_p  # drops the token that crosses top_p
    logits = logits.masked_fill(remove_sorted.scatter(-1, order, remove_sorted), float("-inf"))
    return torch.multinomial(F.softmax(logits, dim=-1), 1, generator=generator)


@mistake(
    "generate",
    "top_p keeps only tokens whose cumulative probability is <= top_p, dropping the token that "
    "crosses the threshold (and everything when the top token alone exceeds it)",
)
def generate_top_p_drops_crossing_token(
    model, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, generator=None, return_logits=False
):
    return _generate(
        model,
        idx,
        max_new_tokens,
        temperature,
        top_k,
        top_p,
        generator,
        return_logits,
        sample=_sample_top_p_drops_crossing,
    )


def _sample_temperature_last(logits, temperature, top_k, top_p, generator):
    if temperature == 0:
        return _sample_next(logits, temperature, top_k, top_p, generator)
    filtered = _sample_next_filter(logits, top_k, top_p)  # filters the untempered distribution
    return torch.multinomial(F.softmax(filtered / temperature, dim=-1), 1, generator=generator)


def _sample_next_filter(logits, top_k, top_p):
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None:
        sorted_logits, order = torch.sort(logits, descending=True)
        probs = F.softmax(sorted_logits, dim=-1)
        remove_sorted = probs.cumsum(-1) - probs >= top_p
        logits = logits.masked_fill(remove_sorted.scatter(-1, order, remove_sorted), float("-inf"))
    return logits


@mistake(
    "generate", "applies temperature after the top-p cut, so the nucleus is chosen from the untempered distribution"
)
def generate_temperature_after_top_p(
    model, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, generator=None, return_logits=False
):
    return _generate(
        model, idx, max_new_tokens, temperature, top_k, top_p, generator, return_logits, sample=_sample_temperature_last
    )


@mistake("generate", "ignores the generator and samples with the global RNG")
def generate_ignores_generator(
    model, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, generator=None, return_logits=False
):
    return _generate(model, idx, max_new_tokens, temperature, top_k, top_p, None, return_logits)


def _sample_gumbel(logits, temperature, top_k, top_p, generator):
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits / temperature
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, -1:]
        logits = torch.where(logits >= kth, logits, torch.full_like(logits, -math.inf))
    if top_p is not None:
        # Hugging Face's form: sort ascending and drop the low tail whose total is <= 1 - top_p.
        sorted_logits, order = torch.sort(logits, descending=False)
        cumulative = F.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
        remove_sorted = cumulative <= 1 - top_p
        remove_sorted[:, -1] = False
        logits = logits.masked_fill(remove_sorted.scatter(1, order, remove_sorted), -math.inf)
    # Gumbel-max: argmax(logits + Gumbel noise) is a draw from softmax(logits).
    u = torch.rand(logits.shape, generator=generator, dtype=torch.float64).clamp_(1e-12, 1 - 1e-12)
    return (logits.double() - torch.log(-torch.log(u))).argmax(dim=-1, keepdim=True)


@variant("generate", "samples with the Gumbel-max trick and filters top-p Hugging Face style (ascending sort)")
def generate_gumbel(
    model, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, generator=None, return_logits=False
):
    return _generate(
        model, idx, max_new_tokens, temperature, top_k, top_p, generator, return_logits, sample=_sample_gumbel
    )


# ---------------------------------------------------------------------------------------------------------
# KVCache + generate_cached
# ---------------------------------------------------------------------------------------------------------


@mistake(
    "KVCache",
    "grows without bound (torch.cat on every update, no capacity check): it outgrows max_len and the position table",
)
class GrowingKVCache:
    def __init__(self, num_layers, batch_size, num_heads, head_dim, max_len, dtype=torch.float32, device=None):
        self.k = [None] * num_layers
        self.v = [None] * num_layers

    def __len__(self):
        return min(0 if k is None else k.shape[2] for k in self.k)

    def update(self, layer, k, v):
        self.k[layer] = k if self.k[layer] is None else torch.cat([self.k[layer], k], dim=2)
        self.v[layer] = v if self.v[layer] is None else torch.cat([self.v[layer], v], dim=2)
        return self.k[layer], self.v[layer]

    def reset(self):
        self.k = [None] * len(self.k)
        self.v = [None] * len(self.v)


@mistake("KVCache", "update returns only the new keys and values, so a new token attends to itself alone")
class KVCacheReturnsOnlyNew(KVCache):
    def update(self, layer, k, v):
        super().update(layer, k, v)
        return k, v


@mistake("KVCache", "len(cache) counts the updates of every layer (sum instead of min), so positions run ahead")
class KVCacheSummedLength(KVCache):
    def __len__(self):
        return sum(self.lengths)


def _forward_cached_from_zero(model, idx, cache):
    """The cached forward with positions restarting at 0 for every call."""
    B, T = idx.shape
    start = len(cache)
    x = model.drop(model.tok_emb(idx) + model.pos_emb(torch.arange(T)))
    mask = torch.ones(T, start + T, dtype=torch.bool).tril(diagonal=start)
    for layer, block in enumerate(model.blocks):
        q, k, v = _heads(block.attn, block.ln1(x))
        k_all, v_all = cache.update(layer, k, v)
        x = x + _merge(block.attn, F.scaled_dot_product_attention(q, k_all, v_all, attn_mask=mask))
        x = x + block.mlp(block.ln2(x))
    return model.head(model.ln_f(x))


def _generate_cached(
    model,
    idx,
    max_new_tokens,
    temperature=1.0,
    top_k=None,
    top_p=None,
    generator=None,
    return_logits=False,
    *,
    forward=_forward_cached,
    refill=True,
    prefill_one_by_one=False,
):
    _check_sampling_args(idx, max_new_tokens, temperature, top_k, top_p)
    was_training = model.training
    model.eval()
    steps = []
    try:
        with torch.no_grad():
            if max_new_tokens > 0:
                attn = model.blocks[0].attn
                cache = KVCache(
                    model.num_layers,
                    idx.shape[0],
                    attn.num_heads,
                    model.embed_dim // attn.num_heads,
                    model.max_len,
                    dtype=model.tok_emb.weight.dtype,
                )

                def prefill(context):
                    if prefill_one_by_one:
                        for t in range(context.shape[1]):
                            logits = forward(model, context[:, t : t + 1], cache)
                        return logits[:, -1, :]
                    return forward(model, context, cache)[:, -1, :]

                logits = prefill(idx[:, -model.max_len :])
                for step in range(max_new_tokens):
                    steps.append(logits)
                    token = _sample_next(logits, temperature, top_k, top_p, generator)
                    idx = torch.cat([idx, token], dim=1)
                    if step == max_new_tokens - 1:
                        break
                    if refill and len(cache) == model.max_len:
                        cache.reset()
                        logits = prefill(idx[:, -model.max_len :])
                    else:
                        logits = forward(model, token, cache)[:, -1, :]
    finally:
        model.train(was_training)
    return (idx, _stack_steps(steps, idx)) if return_logits else idx


@mistake("generate_cached", "positions restart at 0 for every new token instead of continuing at len(cache)")
def generate_cached_positions_restart(
    model, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, generator=None, return_logits=False
):
    return _generate_cached(
        model,
        idx,
        max_new_tokens,
        temperature,
        top_k,
        top_p,
        generator,
        return_logits,
        forward=_forward_cached_from_zero,
    )


@mistake(
    "generate_cached",
    "keeps appending once the cache is full instead of refilling it with the last max_len "
    "tokens: the cache would grow past max_len",
)
def generate_cached_never_refills(
    model, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, generator=None, return_logits=False
):
    return _generate_cached(
        model, idx, max_new_tokens, temperature, top_k, top_p, generator, return_logits, refill=False
    )


@mistake("generate_cached", "has no cache at all: recomputes the whole context every step, like generate")
def generate_cached_without_cache(
    model, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, generator=None, return_logits=False
):
    return generate(model, idx, max_new_tokens, temperature, top_k, top_p, generator, return_logits)


@variant("KVCache", "keeps a list of chunks per layer and concatenates them on read, with the same capacity check")
class ChunkListKVCache:
    def __init__(self, num_layers, batch_size, num_heads, head_dim, max_len, dtype=torch.float32, device=None):
        self.max_len = max_len
        self.chunks = [[] for _ in range(num_layers)]

    def _length(self, layer):
        return sum(k.shape[2] for k, _ in self.chunks[layer])

    def __len__(self):
        return min(self._length(layer) for layer in range(len(self.chunks)))

    def update(self, layer, k, v):
        if self._length(layer) + k.shape[2] > self.max_len:
            raise ValueError(f"layer {layer} would exceed max_len={self.max_len}")
        self.chunks[layer].append((k, v))
        return (
            torch.cat([c[0] for c in self.chunks[layer]], dim=2),
            torch.cat([c[1] for c in self.chunks[layer]], dim=2),
        )

    def reset(self):
        self.chunks = [[] for _ in self.chunks]


@variant("generate_cached", "prefills the prompt one token at a time through the cached forward")
def generate_cached_token_by_token_prefill(
    model, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, generator=None, return_logits=False
):
    return _generate_cached(
        model, idx, max_new_tokens, temperature, top_k, top_p, generator, return_logits, prefill_one_by_one=True
    )


# ---------------------------------------------------------------------------------------------------------
# train_mini_gpt
# ---------------------------------------------------------------------------------------------------------


def _train(
    model,
    data,
    steps,
    val_data=None,
    block_size=64,
    batch_size=16,
    lr=1e-3,
    min_lr=None,
    warmup_steps=None,
    weight_decay=0.1,
    max_norm=1.0,
    eval_interval=None,
    generator=None,
    *,
    zero_grad=True,
    clip_before_step=True,
    eval_mode=True,
    schedule=_lr_at,
):
    if steps < 1 or block_size > model.max_len:
        raise ValueError(f"bad steps={steps} or block_size={block_size} (max_len={model.max_len})")
    data = torch.as_tensor(data)
    min_lr = lr / 10 if min_lr is None else min_lr
    warmup_steps = max(1, steps // 10) if warmup_steps is None else warmup_steps
    eval_interval = steps if eval_interval is None else eval_interval
    generator = torch.Generator().manual_seed(0) if generator is None else generator
    optimizer = configure_optimizer(model, lr, weight_decay)
    history = {"train_loss": [], "lr": [], "grad_norm": [], "val_loss": [], "val_step": []}
    model.train()
    for step in range(steps):
        lr_now = schedule(step, steps, warmup_steps, lr, min_lr)
        for group in optimizer.param_groups:
            group["lr"] = lr_now
        x, y = get_batch(data, block_size, batch_size, generator)
        logits = model(x)
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1))
        if zero_grad:
            optimizer.zero_grad()
        loss.backward()
        if clip_before_step:
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
            optimizer.step()
        else:
            optimizer.step()
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
        history["train_loss"].append(loss.item())
        history["lr"].append(lr_now)
        history["grad_norm"].append(float(norm))
        if val_data is not None and ((step + 1) % eval_interval == 0 or step == steps - 1):
            if eval_mode:
                history["val_loss"].append(_evaluate(model, torch.as_tensor(val_data), block_size))
            else:
                val = torch.as_tensor(val_data)
                starts = torch.arange(0, val.numel() - block_size, block_size)
                offsets = torch.arange(block_size)
                with torch.no_grad():
                    out = model(val[starts[:, None] + offsets])
                    history["val_loss"].append(
                        F.cross_entropy(
                            out.reshape(-1, out.size(-1)), val[starts[:, None] + offsets + 1].reshape(-1)
                        ).item()
                    )
            history["val_step"].append(step + 1)
    return history


@mistake("train_mini_gpt", "never calls optimizer.zero_grad(): gradients accumulate across steps")
def train_without_zero_grad(model, data, steps, **kwargs):
    return _train(model, data, steps, **kwargs, zero_grad=False)


@mistake("train_mini_gpt", "clips after optimizer.step(), when the update has already used the unclipped gradients")
def train_clips_after_step(model, data, steps, **kwargs):
    return _train(model, data, steps, **kwargs, clip_before_step=False)


@mistake("train_mini_gpt", "evaluates in train mode: dropout makes the validation loss noisy and too high")
def train_evaluates_in_train_mode(model, data, steps, **kwargs):
    return _train(model, data, steps, **kwargs, eval_mode=False)


@mistake("train_mini_gpt", "no warmup: the cosine decay starts at step 0 with the full learning rate")
def train_without_warmup(model, data, steps, **kwargs):
    return _train(model, data, steps, **kwargs, schedule=lambda s, n, w, lr, m: _lr_at(s, n, 0, lr, m))


@variant(
    "train_mini_gpt",
    "drives the learning rate with torch.optim.lr_scheduler.LambdaLR and evaluates window by "
    "window, weighting by tokens",
)
def train_with_lambda_lr(
    model,
    data,
    steps,
    *,
    val_data=None,
    block_size=64,
    batch_size=16,
    lr=1e-3,
    min_lr=None,
    warmup_steps=None,
    weight_decay=0.1,
    max_norm=1.0,
    eval_interval=None,
    generator=None,
):
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if block_size > model.max_len:
        raise ValueError(f"block_size {block_size} > max_len {model.max_len}")
    min_lr = lr / 10 if min_lr is None else min_lr
    warmup = max(1, steps // 10) if warmup_steps is None else warmup_steps
    every = eval_interval or steps
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    optimizer = configure_optimizer(model, lr, weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_at(s, steps, warmup, lr, min_lr) / lr)
    history = {"train_loss": [], "lr": [], "grad_norm": [], "val_loss": [], "val_step": []}
    for step in range(steps):
        model.train()
        x, y = get_batch(data, block_size, batch_size, generator)
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        optimizer.zero_grad(set_to_none=False)
        loss.backward()
        history["grad_norm"].append(torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm).item())
        history["lr"].append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
        history["train_loss"].append(loss.item())
        if val_data is not None and ((step + 1) % every == 0 or step + 1 == steps):
            model.eval()
            val = torch.as_tensor(val_data)
            total, count = 0.0, 0
            with torch.no_grad():
                for i in range(0, val.numel() - block_size, block_size):
                    out = model(val[None, i : i + block_size])
                    total += F.cross_entropy(out[0], val[i + 1 : i + block_size + 1], reduction="sum").item()
                    count += block_size
            history["val_loss"].append(total / count)
            history["val_step"].append(step + 1)
    model.train()
    return history
