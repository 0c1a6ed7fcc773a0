"""Catalogued mistakes and correct variants for w15_mini_gpt.

Entries use only the reference's public API: subclasses that override one method, ``@mutant`` edits of the
reference's own source, and small self-contained functions (the sampling loop, the cached forward) written
out here, so that no entry depends on the reference's private helpers.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from checks.harness.catalogue import mistake, mutant, variant
from reference.phase2.w15_mini_gpt import (
    Block,
    CausalSelfAttention,
    KVCache,
    MiniGPT,
    configure_optimizer,
    generate,
    get_batch,
    train_mini_gpt,
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
    "no causal mask (the learning path's model): every position attends to the future, so training "
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


@mutant(
    "CausalSelfAttention",
    "never drops attention weights (dropout_p=0.0 while training): only the residual dropouts regularise",
    replace={"dropout_p=self.dropout if self.training else 0.0": "dropout_p=0.0"},
)
def attention_without_weight_dropout(): ...


@mistake(
    "Block",
    "post-norm like the learning path's TransformerBlock (LayerNorm after the residual addition) "
    "instead of GPT-2's pre-norm x + attn(ln1(x))",
)
class PostNormBlock(Block):
    def forward(self, x):
        x = self.ln1(x + self.attn(x))
        return self.ln2(x + self.mlp(x))


@mutant(
    "Block",
    "uses the tanh approximation of GELU (GPT-2's original code) where the docstring asks for the exact one",
    replace={"nn.GELU()": 'nn.GELU(approximate="tanh")'},
)
def block_with_tanh_gelu(): ...


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


@mutant(
    "MiniGPT",
    "ties by sharing the data (head.weight.data = tok_emb.weight.data): two Parameters over one storage, so "
    "parameters() counts V*E twice, an optimizer steps the matrix twice, and .double() silently unties them",
    replace={"self.head.weight = self.tok_emb.weight": "self.head.weight.data = self.tok_emb.weight.data"},
)
def minigpt_ties_the_data_only(): ...


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


@mutant(
    "MiniGPT",
    "multiplies the residual projections' std by sqrt(2L) instead of dividing: deep stacks start with an "
    "exploding residual stream",
    replace={"0.02 / math.sqrt(2 * num_layers)": "0.02 * math.sqrt(2 * num_layers)"},
)
def minigpt_residual_std_multiplied(): ...


@mutant(
    "MiniGPT",
    "leaves the biases at nn.Linear's default uniform init instead of zero",
    replace={"nn.init.zeros_(module.bias)": "pass"},
)
def minigpt_biases_not_zeroed(): ...


@mutant(
    "MiniGPT",
    "applies the embedding dropout to the token embeddings only, before the positions are added",
    replace={"drop(self.tok_emb(idx) + self.pos_emb.weight[:T])": "drop(self.tok_emb(idx)) + self.pos_emb.weight[:T]"},
)
def minigpt_dropout_before_positions(): ...


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
            raise ValueError(f"idx must be 2-D, got {idx.dim()}-D of shape {tuple(idx.shape)}")
        if idx.shape[1] > self.max_len:
            raise ValueError(f"got {idx.shape[1]} tokens but max_len is {self.max_len}")
        for token in idx.flatten().tolist():
            if not 0 <= token < self.vocab_size:
                raise ValueError(f"token {token} not in [0, {self.vocab_size})")
        x = self.drop(self.tok_emb(idx) + self.pos_emb.weight[: idx.shape[1]])
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))


@variant("MiniGPT", "skips GPT-2's optional 1/sqrt(2L) scaling: every Linear weight is N(0, 0.02)")
class MiniGPTPlainInit(MiniGPT):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for block in self.blocks:
            nn.init.normal_(block.attn.proj.weight, std=0.02)
            nn.init.normal_(block.mlp[2].weight, std=0.02)


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


@mistake(
    "get_batch",
    "seeds its own generator (torch.Generator().manual_seed(0)) and ignores the one passed in: every seed "
    "gives the same batches",
)
def get_batch_fixed_seed(data, block_size, batch_size, generator=None):
    return get_batch(data, block_size, batch_size, torch.Generator().manual_seed(0))


@mistake("get_batch", "keeps the data's dtype (uint16 from a memmap), which nn.Embedding rejects")
def get_batch_keeps_dtype(data, block_size, batch_size, generator=None):
    data = torch.as_tensor(data)
    x, y = get_batch(data, block_size, batch_size, generator)
    return x.to(data.dtype), y.to(data.dtype)


@variant("get_batch", "draws starts as floor(uniform * number_of_windows) and slices with unfold")
def get_batch_unfold(data, block_size, batch_size, generator=None):
    data = torch.as_tensor(data).long()
    if data.dim() != 1:
        raise ValueError(f"data must be 1-D, got shape {tuple(data.shape)}")
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


@mistake("configure_optimizer", "decays everything (the learning path's AdamW(model.parameters(), "
                                "weight_decay=0.1))")
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


@mistake(
    "configure_optimizer",
    "decays every parameter whose name ends in 'weight': LayerNorm gains and embeddings shrink too",
)
def configure_optimizer_decays_by_name(model, lr, weight_decay, betas=(0.9, 0.95)):
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [
        {"params": [p for n, p in named if n.endswith("weight")], "weight_decay": weight_decay},
        {"params": [p for n, p in named if not n.endswith("weight")], "weight_decay": 0.0},
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


@mutant(
    "configure_optimizer",
    "ignores the betas argument and always uses GPT's (0.9, 0.95)",
    replace={"betas=betas": "betas=(0.9, 0.95)"},
)
def configure_optimizer_ignores_betas(): ...


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
# generate: a self-contained sampling loop whose steps the mistakes below switch off one at a time
# ---------------------------------------------------------------------------------------------------------


def _validate(idx, max_new_tokens, temperature, top_k, top_p):
    if not isinstance(idx, torch.Tensor) or idx.dim() != 2 or idx.shape[1] < 1:
        raise ValueError(f"idx must be (B, T) with T >= 1, got {getattr(idx, 'shape', idx)}")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens={max_new_tokens} < 0")
    if temperature < 0:
        raise ValueError(f"temperature={temperature} < 0")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k={top_k} < 1")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p={top_p} outside (0, 1]")


def _filter(logits, top_k, top_p, *, keep_crossing=True):
    """Top-k, then top-p, on (already tempered) logits."""
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None:
        sorted_logits, order = torch.sort(logits, descending=True)
        probs = F.softmax(sorted_logits, dim=-1)
        # Correct: drop a token once the mass strictly ahead of it reaches top_p. Wrong: drop it as soon as the
        # mass including it passes top_p, which loses the token that crosses the threshold.
        remove_sorted = (probs.cumsum(-1) - probs >= top_p) if keep_crossing else (probs.cumsum(-1) > top_p)
        logits = logits.masked_fill(remove_sorted.scatter(-1, order, remove_sorted), float("-inf"))
    return logits


def _sample(logits, temperature, top_k, top_p, generator):
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    probs = F.softmax(_filter(logits / temperature, top_k, top_p), dim=-1)
    return torch.multinomial(probs, 1, generator=generator)


def _stack(steps, idx):
    return torch.stack(steps, dim=1) if steps else torch.empty(idx.shape[0], 0, 0)


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
    use_eval=True,
    restore="always",
    no_grad=True,
    sample=_sample,
):
    _validate(idx, max_new_tokens, temperature, top_k, top_p)
    was_training = model.training
    if use_eval:
        model.eval()
    steps = []
    try:
        with torch.set_grad_enabled(not no_grad):
            for _ in range(max_new_tokens):
                logits = model(idx[:, -model.max_len :])[:, -1, :]
                steps.append(logits)
                idx = torch.cat([idx, sample(logits, temperature, top_k, top_p, generator)], dim=1)
    finally:
        if restore == "always":
            model.train(was_training)
    if restore == "on success":
        model.train(was_training)
    return (idx, _stack(steps, idx)) if return_logits else idx


@mutant(
    "generate",
    "stops when the sequence reaches max_len instead of cropping the context (the learning path's "
    "code stopped at 1024), so it returns fewer tokens than asked",
    replace={"for _ in range(max_new_tokens):": "for _ in range(min(max_new_tokens, model.max_len - idx.shape[1])):"},
)
def generate_stops_at_max_len(): ...


@mutant(
    "generate",
    "never crops the context: once the sequence is longer than max_len the model is asked for positions it has "
    "no embedding for",
    replace={"context = idx[:, -model.max_len:]": "context = idx"},
)
def generate_without_cropping(): ...


@mutant(
    "generate",
    "leaves the model in eval mode (the learning path's self.eval() with no way back)",
    replace={"model.train(was_training)  # the learning path's code left the model in eval mode": "pass"},
)
def generate_leaves_eval_mode(): ...


@mistake(
    "generate",
    "restores the model's mode after the loop but not in a finally block: an error while sampling leaves it "
    "in eval mode",
)
def generate_restores_only_on_success(
    model, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, generator=None, return_logits=False
):
    return _generate(
        model, idx, max_new_tokens, temperature, top_k, top_p, generator, return_logits, restore="on success"
    )


@mutant(
    "generate",
    "samples from row 0 only (the learning path's logits[0, -1, :]) and gives every row that distribution",
    replace={"logits = model(context)[:, -1, :]": "logits = model(context)[:1, -1, :].expand(idx.shape[0], -1)"},
)
def generate_batch_of_one(): ...


@mutant(
    "generate",
    "never switches to eval mode: dropout stays on while sampling",
    replace={"model.eval()  # no dropout while sampling": "pass"},
)
def generate_with_dropout(): ...


@mistake(
    "generate",
    "runs the model with gradients enabled (no torch.no_grad()): every step builds an autograd graph",
)
def generate_with_grad(
    model, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, generator=None, return_logits=False
):
    return _generate(model, idx, max_new_tokens, temperature, top_k, top_p, generator, return_logits, no_grad=False)


@mistake(
    "generate",
    "return_logits stacks the step logits with torch.stack, which fails when max_new_tokens is 0",
)
def generate_stack_fails_on_zero_steps(
    model, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, generator=None, return_logits=False
):
    out = generate(model, idx, max_new_tokens, temperature, top_k, top_p, generator, return_logits)
    if return_logits and max_new_tokens == 0:
        torch.stack([], dim=1)
    return out


def _sample_top_p_drops_crossing(logits, temperature, top_k, top_p, generator):
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    probs = F.softmax(_filter(logits / temperature, top_k, top_p, keep_crossing=False), dim=-1)
    return torch.multinomial(probs, 1, generator=generator)


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
        return logits.argmax(dim=-1, keepdim=True)
    filtered = _filter(logits, top_k, top_p)  # filters the untempered distribution
    return torch.multinomial(F.softmax(filtered / temperature, dim=-1), 1, generator=generator)


@mistake(
    "generate", "applies temperature after the top-p cut, so the nucleus is chosen from the untempered distribution"
)
def generate_temperature_after_top_p(
    model, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, generator=None, return_logits=False
):
    return _generate(
        model, idx, max_new_tokens, temperature, top_k, top_p, generator, return_logits, sample=_sample_temperature_last
    )


def _sample_unstable_softmax(logits, temperature, top_k, top_p, generator):
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    e = torch.exp(_filter(logits / temperature, top_k, top_p))  # no max subtracted: exp(1e4) is inf
    return torch.multinomial(e / e.sum(dim=-1, keepdim=True), 1, generator=generator)


@mistake("generate", "writes softmax as exp(z) / sum(exp(z)) without subtracting the max: large logits give nan")
def generate_unstable_softmax(
    model, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, generator=None, return_logits=False
):
    return _generate(
        model, idx, max_new_tokens, temperature, top_k, top_p, generator, return_logits, sample=_sample_unstable_softmax
    )


@mistake("generate", "ignores the generator and samples with the global RNG")
def generate_ignores_generator(
    model, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, generator=None, return_logits=False
):
    return generate(model, idx, max_new_tokens, temperature, top_k, top_p, None, return_logits)


@mistake(
    "generate",
    "falls back to a fixed-seed generator when generator is None: the global RNG (the documented source) is "
    "never used, so every call returns the same 'random' text",
)
def generate_fixed_default_seed(
    model, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, generator=None, return_logits=False
):
    generator = torch.Generator().manual_seed(0) if generator is None else generator
    return generate(model, idx, max_new_tokens, temperature, top_k, top_p, generator, return_logits)


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


@mistake("KVCache", "len(cache) reads layer 0 only, which runs ahead of the others during a forward pass")
class KVCacheFirstLayerLength(KVCache):
    def __len__(self):
        return self.lengths[0]


@mutant(
    "KVCache",
    "ignores the dtype argument: the buffers are float32, so a float64 model's keys lose precision",
    replace={"dtype=dtype, device=device": "device=device"},
)
def kv_cache_ignores_dtype(): ...


@mutant(
    "KVCache",
    "ignores the device argument: the buffers stay on the CPU whatever device the model runs on",
    replace={"dtype=dtype, device=device": "dtype=dtype"},
)
def kv_cache_ignores_device(): ...


def _forward_cached(model, idx, cache, *, restart_positions=False):
    """The cached forward of the docstring, written out: new tokens (B, t) after the cached ones -> (B, t, V)."""
    B, T = idx.shape
    start = len(cache)
    pos = torch.arange(T, device=idx.device) + (0 if restart_positions else start)
    x = model.drop(model.tok_emb(idx) + model.pos_emb(pos))
    mask = torch.ones(T, start + T, dtype=torch.bool, device=idx.device).tril(diagonal=start)
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
    restart_positions=False,
    prefill_one_by_one=False,
):
    _validate(idx, max_new_tokens, temperature, top_k, top_p)
    was_training = model.training
    model.eval()
    steps = []

    def forward(tokens, cache):
        return _forward_cached(model, tokens, cache, restart_positions=restart_positions)

    def prefill(context, cache):
        if prefill_one_by_one:
            for t in range(context.shape[1]):
                logits = forward(context[:, t : t + 1], cache)
            return logits[:, -1, :]
        return forward(context, cache)[:, -1, :]

    try:
        with torch.no_grad():
            if max_new_tokens > 0:
                nh = model.blocks[0].attn.num_heads
                cache = KVCache(
                    model.num_layers,
                    idx.shape[0],
                    nh,
                    model.embed_dim // nh,
                    model.max_len,
                    dtype=model.tok_emb.weight.dtype,
                    device=idx.device,
                )
                logits = prefill(idx[:, -model.max_len :], cache)
                for step in range(max_new_tokens):
                    steps.append(logits)
                    token = _sample(logits, temperature, top_k, top_p, generator)
                    idx = torch.cat([idx, token], dim=1)
                    if step == max_new_tokens - 1:
                        break
                    if len(cache) == model.max_len:
                        cache.reset()
                        logits = prefill(idx[:, -model.max_len :], cache)
                    else:
                        logits = forward(token, cache)[:, -1, :]
    finally:
        model.train(was_training)
    return (idx, _stack(steps, idx)) if return_logits else idx


@mistake("generate_cached", "positions restart at 0 for every new token instead of continuing at len(cache)")
def generate_cached_positions_restart(
    model, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, generator=None, return_logits=False
):
    return _generate_cached(
        model, idx, max_new_tokens, temperature, top_k, top_p, generator, return_logits, restart_positions=True
    )


@mutant(
    "generate_cached",
    "keeps appending once the cache is full instead of refilling it with the last max_len "
    "tokens: the cache would grow past max_len",
    replace={"if len(cache) == model.max_len:": "if False:"},
)
def generate_cached_never_refills(): ...


@mutant(
    "generate_cached",
    "creates the cache in float32 whatever the model's dtype: a float64 model's logits drift from generate's",
    replace={"dtype=model.tok_emb.weight.dtype, ": ""},
)
def generate_cached_float32_cache(): ...


@mutant(
    "generate_cached",
    "leaves the model in eval mode after decoding",
    replace={"model.train(was_training)": "pass"},
)
def generate_cached_leaves_eval_mode(): ...


@mistake("generate_cached", "has no cache at all: recomputes the whole context every step, like generate")
def generate_cached_without_cache(
    model, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, generator=None, return_logits=False
):
    return generate(model, idx, max_new_tokens, temperature, top_k, top_p, generator, return_logits)


@variant(
    "KVCache", "keeps a list of chunks per layer and concatenates them on read, with the same capacity and shape checks"
)
class ChunkListKVCache:
    def __init__(self, num_layers, batch_size, num_heads, head_dim, max_len, dtype=torch.float32, device=None):
        self.max_len, self.dtype, self.device = max_len, dtype, device
        self.shape = (batch_size, num_heads, head_dim)
        self.chunks = [[] for _ in range(num_layers)]

    def _length(self, layer):
        return sum(k.shape[2] for k, _ in self.chunks[layer])

    def __len__(self):
        return min(self._length(layer) for layer in range(len(self.chunks)))

    def update(self, layer, k, v):
        if not isinstance(layer, int) or not 0 <= layer < len(self.chunks):
            raise ValueError(f"no layer {layer} in a cache of {len(self.chunks)}")
        if k.shape != v.shape or k.dim() != 4 or (k.shape[0], k.shape[1], k.shape[3]) != self.shape:
            raise ValueError(f"bad shapes {tuple(k.shape)}, {tuple(v.shape)} for (B, nh, hs) = {self.shape}")
        if self._length(layer) + k.shape[2] > self.max_len:
            raise ValueError(f"layer {layer} would exceed max_len={self.max_len}")
        self.chunks[layer].append((k.to(self.dtype, copy=True), v.to(self.dtype, copy=True)))
        keys, values = zip(*self.chunks[layer], strict=True)
        return torch.cat(keys, dim=2), torch.cat(values, dim=2)

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


@mutant(
    "train_mini_gpt",
    "never calls optimizer.zero_grad(): gradients accumulate across steps",
    replace={"optimizer.zero_grad()": "pass"},
)
def train_without_zero_grad(): ...


@mutant(
    "train_mini_gpt",
    "clips after optimizer.step(), when the update has already used the unclipped gradients",
    replace={
        "grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)  # before step, or it is moot\n"
        "        optimizer.step()": "optimizer.step()\n"
        "        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)"
    },
)
def train_clips_after_step(): ...


@mistake("train_mini_gpt", "evaluates in train mode: dropout makes the validation loss noisy and too high")
def train_evaluates_in_train_mode(model, data, steps, **kwargs):
    model.eval = lambda: model  # every eval() inside the loop becomes a no-op
    try:
        return train_mini_gpt(model, data, steps, **kwargs)
    finally:
        del model.eval


@mutant(
    "train_mini_gpt",
    "never calls model.train(): a model handed over in eval mode trains without dropout",
    replace={"    model.train()\n    for step in range(steps):": "    for step in range(steps):"},
)
def train_without_train_mode(): ...


@mutant(
    "train_mini_gpt",
    "no warmup: the cosine decay starts at step 0 with the full learning rate",
    replace={"lr_now = _lr_at(step, steps, warmup_steps, lr, min_lr)": "lr_now = _lr_at(step, steps, 0, lr, min_lr)"},
)
def train_without_warmup(): ...


@mutant(
    "train_mini_gpt",
    "decays the learning rate to 0 by default instead of to min_lr = lr / 10",
    replace={"min_lr = lr / 10 if min_lr is None else min_lr": "min_lr = 0.0 if min_lr is None else min_lr"},
)
def train_default_min_lr_zero(): ...


@mutant(
    "train_mini_gpt",
    "draws batches from the global RNG when no generator is given, instead of torch.Generator().manual_seed(0)",
    replace={"generator = torch.Generator().manual_seed(0) if generator is None else generator": "pass"},
)
def train_default_generator_global(): ...


@mutant(
    "train_mini_gpt",
    "sums the cross-entropy over the batch instead of averaging it over the B*T tokens",
    replace={"y.reshape(-1))\n        optimizer": 'y.reshape(-1), reduction="sum")\n        optimizer'},
)
def train_summed_loss(): ...


def _schedule(step, steps, warmup_steps, lr, min_lr):
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, steps - 1 - warmup_steps)
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * progress))


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
    if val_data is not None and len(val_data) <= block_size:
        raise ValueError(f"val_data needs more than block_size={block_size} tokens, got {len(val_data)}")
    min_lr = lr / 10 if min_lr is None else min_lr
    warmup = max(1, steps // 10) if warmup_steps is None else warmup_steps
    every = eval_interval or steps
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    device = next(model.parameters()).device
    optimizer = configure_optimizer(model, lr, weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _schedule(s, steps, warmup, lr, min_lr) / lr)
    history = {"train_loss": [], "lr": [], "grad_norm": [], "val_loss": [], "val_step": []}
    for step in range(steps):
        model.train()
        x, y = (t.to(device) for t in get_batch(data, block_size, batch_size, generator))
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
            val = torch.as_tensor(val_data).to(device)
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


@mutant(
    "train_mini_gpt",
    "ignores the weight_decay argument: the optimizer always decays with the default 0.1",
    replace={
        "optimizer = configure_optimizer(model, lr, weight_decay)": "optimizer = configure_optimizer(model, lr, 0.1)"
    },
)
def train_ignores_weight_decay(): ...
