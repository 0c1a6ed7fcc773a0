"""Kata w15_mini_gpt (Weeks 15-16): your first transformer language model.

You build the learning path's Mini-GPT, fix the bugs of its sample code, and make it fast:

1. ``MiniGPT`` (with ``CausalSelfAttention`` and ``Block``): a GPT-2 style decoder, made causal.
2. ``get_batch``: random training windows of a long token sequence.
3. ``configure_optimizer``: AdamW with weight decay only where it belongs.
4. ``generate``: batched sampling with temperature, top-k and top-p.
5. ``KVCache`` + ``generate_cached``: incremental decoding that runs one token per step.
6. ``train_mini_gpt``: the training loop (warmup-cosine schedule, clipping, evaluation).

Shape names used throughout (nanoGPT's): B batch, T time (sequence length), E ``embed_dim``, nh ``num_heads``,
hs = E // nh (head size), V ``vocab_size``, L ``num_layers``.

This module is self-contained: it uses only torch (no code from earlier katas).
"""

from __future__ import annotations

import math  # noqa: F401 - you will want it (init scale, the cosine schedule)

import torch
import torch.nn as nn
import torch.nn.functional as F  # noqa: F401 - F.scaled_dot_product_attention, F.softmax, F.cross_entropy

# ---------------------------------------------------------------------------------------------------------
# 1. MiniGPT: the model
# ---------------------------------------------------------------------------------------------------------


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention in which position t attends to positions 0..t only.

    Layout (the parameter names are part of the contract; ``generate_cached`` reads them):

    - ``qkv``: ``nn.Linear(E, 3E)`` computing queries, keys and values of all heads at once; split its output
      with ``.split(E, dim=2)`` into q, k, v in that order.
    - ``proj``: ``nn.Linear(E, E)``, the output projection.
    - ``resid_drop``: ``nn.Dropout(dropout)`` applied after ``proj``.
    - attributes ``embed_dim``, ``num_heads`` and ``dropout`` (the float, used as attention-weight dropout
      while training).

    ``forward(x)``: x (B, T, E) -> (B, T, E)::

        q, k, v = self.qkv(x).split(E, dim=2)                       # 3 x (B, T, E)
        q = q.view(B, T, nh, hs).transpose(1, 2)                      # (B, nh, T, hs), same for k and v
        att = softmax(q @ k.transpose(-2, -1) / sqrt(hs) + mask)     # (B, nh, T, T)
        y = att @ v                                                   # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, E)              # heads side by side again
        return resid_drop(proj(y))

    The causal mask sets the score of every key j > i to -inf before the softmax, so the output at t never
    depends on a later token. ``F.scaled_dot_product_attention(q, k, v, is_causal=True)`` does the scaling,
    masking and softmax in one call (pass ``dropout_p=self.dropout if self.training else 0.0``).

    Why the mask matters (the learning path's bug): its ``MiniGPT`` stacked blocks with no causal mask.
    Trained on next-token prediction, such a model simply reads the answer at position t + 1: the training
    loss collapses towards 0, but at generation time there is no future to read, so it produces garbage.

    Raise ``ValueError`` naming both numbers when ``embed_dim`` is not divisible by ``num_heads``.
    Do not ``view`` (B, T, E) straight into (B, nh, T, hs): that mixes time steps into heads; view to
    (B, T, nh, hs) and transpose.
    """

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0) -> None:
        # TODO(w15_mini_gpt.MiniGPT): write your implementation here.
        raise NotImplementedError("w15_mini_gpt.CausalSelfAttention.__init__ is not implemented yet (part of w15_mini_gpt.MiniGPT: try `kata hint w15_mini_gpt.MiniGPT`)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # TODO(w15_mini_gpt.MiniGPT): write your implementation here.
        raise NotImplementedError("w15_mini_gpt.CausalSelfAttention.forward is not implemented yet (part of w15_mini_gpt.MiniGPT: try `kata hint w15_mini_gpt.MiniGPT`)")


class Block(nn.Module):
    """A pre-norm transformer block (GPT-2): normalise, transform, add back to the residual stream.

    Layout: ``ln1`` (``nn.LayerNorm(E)``), ``attn`` (``CausalSelfAttention(E, nh, dropout)``), ``ln2``
    (``nn.LayerNorm(E)``) and ``mlp = nn.Sequential(nn.Linear(E, ff_dim), nn.GELU(), nn.Linear(ff_dim, E),
    nn.Dropout(dropout))`` (exact GELU, not the tanh approximation).

    ``forward(x)``: x (B, T, E) -> (B, T, E)::

        x = x + self.attn(self.ln1(x))
        x = x + self.mlp(self.ln2(x))

    Pre-norm (LayerNorm *inside* the residual branch) leaves the residual stream an unobstructed identity
    path, which keeps gradients well scaled in deep stacks; the learning path's post-norm ``TransformerBlock``
    normalised after the addition.
    """

    def __init__(self, embed_dim: int, num_heads: int, ff_dim: int, dropout: float = 0.0) -> None:
        # TODO(w15_mini_gpt.MiniGPT): write your implementation here.
        raise NotImplementedError("w15_mini_gpt.Block.__init__ is not implemented yet (part of w15_mini_gpt.MiniGPT: try `kata hint w15_mini_gpt.MiniGPT`)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # TODO(w15_mini_gpt.MiniGPT): write your implementation here.
        raise NotImplementedError("w15_mini_gpt.Block.forward is not implemented yet (part of w15_mini_gpt.MiniGPT: try `kata hint w15_mini_gpt.MiniGPT`)")


class MiniGPT(nn.Module):
    """A decoder-only transformer language model: the learning path's ``MiniGPT``, made causal (GPT-2 layout).

    Layout (parameter names are part of the contract: the checks load the reference's weights into your model
    by name, and ``generate_cached`` walks these modules):

    - ``tok_emb``: ``nn.Embedding(V, E)``; ``pos_emb``: ``nn.Embedding(max_len, E)`` (learned positions,
      as in GPT-2, instead of the learning path's sinusoidal encoding);
    - ``drop``: ``nn.Dropout(dropout)`` applied to ``tok_emb(idx) + pos_emb(positions)``;
    - ``blocks``: ``nn.ModuleList`` of ``num_layers`` ``Block(E, nh, ff_dim, dropout)``;
    - ``ln_f``: ``nn.LayerNorm(E)``; ``head``: ``nn.Linear(E, V, bias=False)``;
    - attributes ``vocab_size``, ``embed_dim``, ``num_heads``, ``num_layers``, ``ff_dim``, ``max_len``
      (``generate`` reads ``model.max_len``).

    Weight tying (``tie_weights=True``): ``self.head.weight = self.tok_emb.weight`` makes the two one
    ``Parameter``, the same storage: the matrix that reads a token in also scores it out. The model then has
    V*E fewer parameters and ``model.parameters()`` yields the shared one once. Parameter count::

        V*E + max_len*E + L*(4E^2 + 2E*ff_dim + 9E + ff_dim) + 2E   (+ V*E when not tied)

    Initialisation (GPT-2): every ``nn.Linear`` and ``nn.Embedding`` weight from N(0, 0.02), biases zero,
    LayerNorms at their defaults; optionally ``attn.proj`` and ``mlp[2]`` weights with std 0.02/sqrt(2L). With
    this init a fresh model predicts almost uniformly (loss close to ln V); PyTorch's default N(0, 1)
    embedding, read back by the tied head, would start with huge logits.

    ``forward(idx)``: idx (B, T) integer token ids -> logits (B, T, V), where logits[:, t] predicts token
    t + 1 from tokens 0..t only. Raise ``ValueError`` (with the offending value in the message) when idx is
    not 2-D, when T > max_len ("crop the context first"), or when an id is < 0 or >= vocab_size (rather than
    letting ``nn.Embedding`` fail with an opaque IndexError). Raise ``ValueError`` in ``__init__``, naming both
    numbers, when ``embed_dim`` is not divisible by ``num_heads``.

    Example::

        >>> model = MiniGPT(vocab_size=20, embed_dim=32, num_heads=4, num_layers=2, ff_dim=64, max_len=16)
        >>> model(torch.zeros(3, 10, dtype=torch.long)).shape
        torch.Size([3, 10, 20])
        >>> model.head.weight is model.tok_emb.weight
        True
    """

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
        # TODO(w15_mini_gpt.MiniGPT): write your implementation here.
        raise NotImplementedError("w15_mini_gpt.MiniGPT.__init__ is not implemented yet (try `kata hint w15_mini_gpt.MiniGPT`)")

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        # TODO(w15_mini_gpt.MiniGPT): write your implementation here.
        raise NotImplementedError("w15_mini_gpt.MiniGPT.forward is not implemented yet (try `kata hint w15_mini_gpt.MiniGPT`)")


# ---------------------------------------------------------------------------------------------------------
# 2-3. Data and optimizer
# ---------------------------------------------------------------------------------------------------------


def get_batch(
    data: torch.Tensor, block_size: int, batch_size: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw ``batch_size`` random windows of ``block_size`` tokens and their next-token targets.

    ``data`` is a 1-D sequence of N token ids (a tensor, or a NumPy array such as nanoGPT's uint16 memmap).
    Each row uses a start s drawn uniformly from 0 .. N - block_size - 1 (inclusive) with ``generator``:

        x[i] = data[s : s + block_size]
        y[i] = data[s + 1 : s + block_size + 1]        # x shifted by one: y[i, t] follows x[i, t]

    Returns ``(x, y)``, both (batch_size, block_size) and ``torch.long`` (what ``nn.Embedding`` needs,
    whatever the dtype of ``data``).

    There are N - block_size possible windows. The last one, s = N - block_size - 1, has its target ending
    exactly at ``data[-1]``: ``torch.randint(N - block_size, (batch_size,), generator=generator)`` reaches it
    (randint's upper bound is exclusive); ``N - block_size - 1`` would never draw it.

    Every random draw comes from ``generator`` (never the global RNG), so the same seed gives the same batch;
    with ``generator=None`` the draws come from torch's global RNG (``torch.manual_seed`` controls them).
    ``data`` is not modified. Raise ``ValueError`` naming the numbers when ``block_size`` or ``batch_size`` is
    < 1 or when N < block_size + 1, and naming the shape when ``data`` is not 1-D.

    Example::

        >>> x, y = get_batch(torch.arange(10), block_size=4, batch_size=2, generator=torch.Generator().manual_seed(0))
        >>> x, y          # e.g. starts 4 and 1
        (tensor([[4, 5, 6, 7], [1, 2, 3, 4]]), tensor([[5, 6, 7, 8], [2, 3, 4, 5]]))
    """
    # TODO(w15_mini_gpt.get_batch): write your implementation here.
    raise NotImplementedError("w15_mini_gpt.get_batch is not implemented yet (try `kata hint w15_mini_gpt.get_batch`)")


def configure_optimizer(
    model: nn.Module, lr: float, weight_decay: float, betas: tuple[float, float] = (0.9, 0.95)
) -> torch.optim.AdamW:
    """``torch.optim.AdamW`` with two parameter groups: decayed and not decayed.

    Weight decay pulls weights towards 0. That regularises the matrices of ``nn.Linear`` layers, but it only
    hurts biases, LayerNorm gains (pulling a gain towards 0 switches its feature off) and embeddings (rare
    tokens' rows would shrink towards 0 just for being rare). The learning path's code passed
    ``model.parameters()`` with ``weight_decay=0.1``: it decayed everything.

    Rule: a parameter is decayed if and only if it is the ``weight`` of an ``nn.Linear`` that is not also the
    weight of an ``nn.Embedding`` (a tied head *is* the embedding: not decayed). Everything else is not
    decayed. Parameters with ``requires_grad=False`` are left out. Each parameter appears exactly once
    (``model.named_parameters()`` yields a tied Parameter once).

    Returns ``torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
    {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=betas)`` (the order of the two groups does not
    matter). GPT training uses betas (0.9, 0.95). The model's parameters are left as they are.

    Example::

        >>> opt = configure_optimizer(MiniGPT(20, 32, 4, 2, 64, 16), lr=3e-4, weight_decay=0.1)
        >>> [len(g["params"]) for g in opt.param_groups]   # 4 Linear weights per block / everything else
        [8, 20]
    """
    # TODO(w15_mini_gpt.configure_optimizer): write your implementation here.
    raise NotImplementedError("w15_mini_gpt.configure_optimizer is not implemented yet (try `kata hint w15_mini_gpt.configure_optimizer`)")


# ---------------------------------------------------------------------------------------------------------
# 4. Sampling
# ---------------------------------------------------------------------------------------------------------


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
    """Extend every row of ``idx`` (B, T) by ``max_new_tokens`` sampled tokens; returns (B, T + max_new_tokens).

    ``model`` is any module mapping (B, T) ids to (B, T, V) logits with a ``max_len`` attribute. Each step:

    1. crop the context to its last ``model.max_len`` tokens (``idx[:, -model.max_len:]``) and run the
       model; keep the logits of the last position, (B, V);
    2. choose the next token of every row: ``temperature == 0`` means greedy (argmax; never divide by 0);
       otherwise divide the logits by ``temperature``, then apply top-k, then top-p, then
       ``torch.multinomial(softmax(logits), 1, generator=generator)`` (with ``generator=None``, torch's global
       RNG; a given generator is the only source of randomness, the global RNG is left untouched);
    3. append it: ``idx = torch.cat([idx, next_token], dim=1)``.

    - top-k keeps the ``top_k`` largest logits of each row (all of them when ``top_k >= V``) and sets the
      rest to -inf.
    - top-p (nucleus) sorts the (temperature-scaled, top-k filtered) probabilities in decreasing order and
      keeps the smallest prefix whose total reaches ``top_p``: a token is kept when the probability of the
      tokens ahead of it is still < ``top_p``, so the token that crosses the threshold is kept.
    - ``top_k=1`` and ``temperature -> 0`` are the greedy limit.

    Run under ``torch.no_grad()`` and in eval mode (no dropout), and put the model back in the mode you found
    it in (``was_training = model.training`` ... ``model.train(was_training)``), even on error.
    With ``return_logits=True`` return ``(idx, logits)`` where logits (B, max_new_tokens, V) holds the raw
    last-position logits of each step (before temperature), for checking; with ``max_new_tokens=0`` it is an
    empty (B, 0, 0) tensor (``torch.stack`` of no steps fails: handle that case). ``idx`` itself is never
    modified in place.

    The learning path's ``generate`` had three bugs, all fixed here:

    - it stopped at 1024 tokens instead of cropping, so it could never write more than the context holds;
      cropping lets generation go on forever, each step seeing the last ``max_len`` tokens;
    - it called ``self.eval()`` and never switched back, so a training loop that sampled now and then went
      on training without dropout;
    - it read ``logits[0, -1, :]``: a batch of one only.

    Raise ``ValueError`` (naming the value) for idx that is not (B, T) with T >= 1, ``max_new_tokens < 0``,
    ``temperature < 0``, ``top_k < 1`` or ``top_p`` outside (0, 1].

    Example::

        >>> out = generate(model, torch.zeros(4, 1, dtype=torch.long), 50, temperature=0.8, top_k=10,
        ...                generator=torch.Generator().manual_seed(0))
        >>> out.shape
        torch.Size([4, 51])
    """
    # TODO(w15_mini_gpt.generate): write your implementation here.
    raise NotImplementedError("w15_mini_gpt.generate is not implemented yet (try `kata hint w15_mini_gpt.generate`)")


# ---------------------------------------------------------------------------------------------------------
# 5. KV cache
# ---------------------------------------------------------------------------------------------------------


class KVCache:
    """Keys and values of every layer for the tokens seen so far, so each new token costs O(T), not O(T^2).

    In ``generate`` every step runs the whole context through the model again, although the keys and values
    of the old tokens do not change (causal attention: a token never looks ahead). The cache stores them:
    step s then runs only the new token, whose query attends to all cached keys.

    ``KVCache(num_layers, batch_size, num_heads, head_dim, max_len, dtype, device)`` preallocates, for keys and
    values, a buffer of shape (num_layers, B, nh, max_len, hs) and a fill length per layer. Why not
    ``torch.cat([old, new], dim=2)``: it allocates a new tensor and copies every cached position into it, in
    every layer on every step (for a 4-layer, 192-wide model at 270 tokens, 1.7 MB per token), work that
    grows with the context although only t positions are new. Writing them into their slots of a buffer
    allocated once (``buf[:, :, start:start + t] = k``) copies just those t positions.

    - ``update(layer, k, v)``: k, v (B, nh, t, hs) are the new positions of ``layer``. Write them after the
      ones already cached in that layer and return ``(k_all, v_all)``, every cached key and value of the
      layer, oldest first: (B, nh, cached + t, hs). Raise ``ValueError`` whose message mentions ``max_len``
      when the layer would hold more than ``max_len`` positions: the cache never grows past ``max_len``
      (there is no position embedding beyond it). Raise ``ValueError`` for a bad layer index or shape.
    - ``len(cache)``: the number of positions held by *every* layer (the minimum over layers), which is the
      absolute position of the next token before a forward pass starts.
    - ``reset()``: empty the cache (lengths back to 0).

    Example::

        >>> cache = KVCache(num_layers=2, batch_size=1, num_heads=4, head_dim=8, max_len=16)
        >>> k_all, v_all = cache.update(0, torch.zeros(1, 4, 3, 8), torch.zeros(1, 4, 3, 8))
        >>> k_all.shape, len(cache)          # layer 1 holds nothing yet
        (torch.Size([1, 4, 3, 8]), 0)
    """

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
        # TODO(w15_mini_gpt.KVCache): write your implementation here.
        raise NotImplementedError("w15_mini_gpt.KVCache.__init__ is not implemented yet (try `kata hint w15_mini_gpt.KVCache`)")

    def __len__(self) -> int:
        # TODO(w15_mini_gpt.KVCache): write your implementation here.
        raise NotImplementedError("w15_mini_gpt.KVCache.__len__ is not implemented yet (try `kata hint w15_mini_gpt.KVCache`)")

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # TODO(w15_mini_gpt.KVCache): write your implementation here.
        raise NotImplementedError("w15_mini_gpt.KVCache.update is not implemented yet (try `kata hint w15_mini_gpt.KVCache`)")

    def reset(self) -> None:
        # TODO(w15_mini_gpt.KVCache): write your implementation here.
        raise NotImplementedError("w15_mini_gpt.KVCache.reset is not implemented yet (try `kata hint w15_mini_gpt.KVCache`)")


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
    """``generate`` with a ``KVCache``: same arguments, same tokens, same step logits, much faster.

    ``model`` is a ``MiniGPT`` (this function walks its documented modules). Write a helper that runs new
    tokens idx (B, t) through the model *with* the cache and returns their logits (B, t, V):

    - positions: the new tokens sit at ``start = len(cache)`` .. start + t - 1; they do NOT restart at 0
      (``x = drop(tok_emb(idx) + pos_emb(arange(start, start + t)))``);
    - in each ``Block``: ``h = ln1(x)``; q, k, v from ``attn.qkv(h)`` split into heads (B, nh, t, hs);
      ``k_all, v_all = cache.update(layer, k, v)``; new query i (absolute position start + i) may see keys
      0 .. start + i, so the boolean mask is ``torch.ones(t, start + t).tril(diagonal=start)`` (True = attend;
      ``F.scaled_dot_product_attention(q, k_all, v_all, attn_mask=mask)``; for t == 1 it is all True, so
      ``attn_mask=None`` does the same, faster); merge the heads,
      ``x = x + attn.resid_drop(attn.proj(y))``, then ``x = x + mlp(ln2(x))``;
    - finally ``head(ln_f(x))``.

    Then decode: create a cache (B rows, ``model.max_len`` positions, the model's dtype, on ``idx``'s device),
    run the prompt's last ``max_len`` tokens once (the prefill) and take the last logits; each step samples
    exactly as ``generate`` does (reuse its sampling code: with the same generator seed both return the same
    tokens), appends the token and runs only that token through the cached forward.

    When the cache is full (``len(cache) == max_len``), ``generate`` would now see the *last* max_len tokens
    at positions 0..max_len-1, so every cached key is stale: ``reset()`` the cache and prefill it again with
    ``idx[:, -max_len:]``. The cache never grows past ``max_len``, and the logits stay identical to
    ``generate``'s. Eval mode, no_grad, mode restored, ``return_logits`` and ``ValueError`` s as in
    ``generate``; the tensors returned are ordinary ones (if you use ``torch.inference_mode()``, whose
    tensors refuse autograd later, ``clone()`` them after the ``with`` block).

    Why per-token overhead matters: a cached step is about 100 tensor operations on vectors of a few hundred
    numbers, each done in microseconds, so the fixed cost of each call (Python, an ``nn.Module`` call's hook
    checks and attribute lookups, autograd's bookkeeping) weighs as much as the arithmetic, and a 256-token
    generation pays it 256 times. Running only the new token is what the checks ask for (3x faster than
    ``generate``); trimming those costs (no mask for one new token, no dropout calls in eval mode,
    ``F.linear(h, weight, bias)`` on weights looked up once per call, ``torch.inference_mode()``) takes it
    past 8x.

    Example::

        >>> a = generate(model.eval(), prompt, 100, temperature=0)
        >>> b = generate_cached(model, prompt, 100, temperature=0)
        >>> torch.equal(a, b)        # same greedy tokens, several times faster
        True
    """
    # TODO(w15_mini_gpt.KVCache): write your implementation here.
    raise NotImplementedError("w15_mini_gpt.generate_cached is not implemented yet (part of w15_mini_gpt.KVCache: try `kata hint w15_mini_gpt.KVCache`)")


# ---------------------------------------------------------------------------------------------------------
# 6. Training
# ---------------------------------------------------------------------------------------------------------


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
    """Train ``model`` for ``steps`` optimizer steps on random windows of ``data``; return the history.

    Defaults: ``min_lr = lr / 10``, ``warmup_steps = max(1, steps // 10)``, ``eval_interval = steps`` (evaluate
    at the end only), ``generator = torch.Generator().manual_seed(0)``. Batches go to the device of the
    model's parameters.

    The optimizer is ``configure_optimizer(model, lr, weight_decay)``. The model is in train mode. Step s
    (0-based) does, in this order:

    1. set every group's ``"lr"`` to the warmup-cosine learning rate::

           s < warmup_steps:  lr * (s + 1) / warmup_steps
           otherwise:         min_lr + 0.5 * (lr - min_lr) * (1 + cos(pi * p)),
                              p = (s - warmup_steps) / max(1, steps - 1 - warmup_steps)

       (so no step is spent at lr 0 and the last step uses min_lr exactly). This is the loop's own
       convention, not w09's ``warmup_cosine_lr``, which starts at 0 and reaches min_lr one step past
       the end of a ``steps``-long loop: both are correct, and the checks pin this one;
    2. ``x, y = get_batch(data, block_size, batch_size, generator)``: one draw per step, nothing else uses
       the generator;
    3. loss = mean cross-entropy of ``model(x)`` against ``y`` over all B*T tokens;
    4. ``optimizer.zero_grad()``, ``loss.backward()``;
    5. ``torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)`` (it returns the total norm *before*
       clipping; clipping after ``optimizer.step()`` would have no effect);
    6. ``optimizer.step()``.

    Evaluation, when ``val_data`` is given: after step s whenever (s + 1) % eval_interval == 0, and after the
    last step, record the mean loss over the consecutive non-overlapping windows
    ``val_data[i : i + block_size]`` (targets ``val_data[i + 1 : i + block_size + 1]``) for
    i = 0, block_size, 2 * block_size, ... while i + block_size + 1 <= len(val_data), computed in eval mode
    (no dropout: a noisy validation loss is useless) under ``torch.no_grad()``, then go back to train mode.

    Returns ``{"train_loss": [...], "lr": [...], "grad_norm": [...], "val_loss": [...], "val_step": [...]}``:
    the first three have one float per step (the loss of the step's batch, the lr used, the norm before
    clipping); ``val_step`` holds the 1-based step counts at which ``val_loss`` was recorded.

    Raise ``ValueError`` (naming the value) when ``steps < 1``, ``block_size > model.max_len``, or ``val_data``
    holds fewer than block_size + 1 tokens (not a single window). ``data`` and ``val_data`` are not modified.

    Example::

        >>> history = train_mini_gpt(model, ids, 300, val_data=val_ids, block_size=32, lr=3e-3)
        >>> history["train_loss"][0], history["train_loss"][-1]      # ~ln(V) down to well below 1
    """
    # TODO(w15_mini_gpt.train_mini_gpt): write your implementation here.
    raise NotImplementedError("w15_mini_gpt.train_mini_gpt is not implemented yet (try `kata hint w15_mini_gpt.train_mini_gpt`)")
