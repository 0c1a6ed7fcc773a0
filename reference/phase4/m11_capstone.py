"""Reference solutions for m11_capstone (months 11-12): faster than nanoGPT's CPU recipe on Tiny Shakespeare.

Three pieces: an honest measurement (``validation_loss`` over the whole validation split), the parameter split
of a Muon + AdamW optimizer (``split_parameters``) and the training run of the challenge (``train_capstone``),
which builds a ``MiniGPT`` (w15) and trains it on batches it asks for, within a token budget.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..phase2.w15_mini_gpt import MiniGPT


def _positive_int(name: str, value: object) -> int:
    """``value`` as an int >= 1; bools and floats are refused (``True`` is not a size, ``64.0`` hides a bug)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an int; got {value!r}")
    if value < 1:
        raise ValueError(f"{name}={value} must be at least 1")
    return operator.index(value)


# ---------------------------------------------------------------------------------------------------------
# validation_loss
# ---------------------------------------------------------------------------------------------------------


def validation_loss(model: nn.Module, data: Tensor, block_size: int, batch_size: int = 256) -> float:
    block_size = _positive_int("block_size", block_size)
    batch_size = _positive_int("batch_size", batch_size)
    if not isinstance(data, Tensor) or data.dim() != 1 or data.dtype == torch.bool or data.is_floating_point():
        shape = tuple(data.shape) if isinstance(data, Tensor) else type(data).__name__
        raise ValueError(f"data must be a 1-D integer tensor of token ids; got {shape}")
    max_len = getattr(model, "max_len", None)
    if max_len is not None and block_size > max_len:
        raise ValueError(f"block_size={block_size} is longer than the model's max_len={max_len}")
    # Window i reads data[i*T : (i+1)*T] and predicts data[i*T + 1 : (i+1)*T + 1]: the targets need one token
    # more than the inputs, so N tokens hold (N - 1) // T whole windows; a partial last window is dropped.
    windows = (data.numel() - 1) // block_size
    if windows < 1:
        raise ValueError(
            f"data has {data.numel()} tokens; one window of block_size={block_size} needs {block_size + 1}"
        )
    end = windows * block_size
    x = data[:end].view(windows, block_size)
    y = data[1 : end + 1].view(windows, block_size)
    device = next(model.parameters(), data).device  # windows go where the model lives
    # The modes of every submodule, to put back exactly as found (a frozen part may sit in eval mode on purpose).
    modes = [(module, module.training) for module in model.modules()]
    total = 0.0
    try:
        model.eval()  # no dropout: the same model must always get the same score
        with torch.no_grad():  # no graph: evaluation never calls backward, and a graph costs memory
            for start in range(0, windows, batch_size):
                xb = x[start : start + batch_size].to(device=device, dtype=torch.long)
                yb = y[start : start + batch_size].to(device=device, dtype=torch.long)
                logits = model(xb)  # (b, T, V)
                # A SUM per batch, divided once at the end: every token weighs the same, even when the last
                # batch is smaller (a mean of batch means would over-weight it).
                total += F.cross_entropy(logits.flatten(0, 1), yb.flatten(), reduction="sum").item()
    finally:
        for module, training in modes:
            module.training = training
    return total / (windows * block_size)


# ---------------------------------------------------------------------------------------------------------
# split_parameters
# ---------------------------------------------------------------------------------------------------------


def split_parameters(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, nn.Module):
        raise ValueError(f"model must keep its transformer blocks in `model.blocks` (an nn.Module); got {blocks!r}")
    # Muon orthogonalises a 2-D update, so it suits the hidden matrices of the blocks. The embeddings (a
    # lookup table: each row is updated on its own) and the head, LayerNorm gains and biases stay on AdamW.
    hidden = {id(p) for p in blocks.parameters() if p.dim() == 2}
    muon: list[nn.Parameter] = []
    adamw: list[nn.Parameter] = []
    # parameters() yields each Parameter once, in registration order, even when it is tied or shared.
    for p in model.parameters():
        if p.requires_grad:  # a frozen parameter must not be handed to an optimizer
            (muon if id(p) in hidden else adamw).append(p)
    return muon, adamw


# ---------------------------------------------------------------------------------------------------------
# train_capstone
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Recipe:
    """The reference's choices for the challenge (tuned on Tiny Shakespeare, one CPU thread)."""

    embed_dim: int = 128
    num_heads: int = 4
    num_layers: int = 4
    ff_dim: int = 256  # half of nanoGPT's 4x MLP: at this budget a cheaper step beats a bigger model
    batch_size: int = 16  # small batches learn more per token at this budget
    muon_lr: float = 0.03  # Muon's steps have a fixed size (an orthogonal matrix), so its rate is large
    muon_momentum: float = 0.95
    adamw_lr: float = 0.004  # LayerNorm gains and biases
    embed_lr: float = 0.04  # embedding rows see few gradients each: a larger rate
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-10
    warmup_fraction: float = 0.04
    max_norm: float = 1.0


RECIPE = _Recipe()


def _lr_factor(step: int, steps: int, warmup: int) -> float:
    """Linear warmup to 1, then cosine decay to 0 at the last step."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def train_capstone(
    get_batch: Callable[[int], tuple[Tensor, Tensor]],
    vocab_size: int,
    *,
    token_budget: int,
    block_size: int = 64,
    seed: int = 0,
    callback: Callable[[int, nn.Module], object] | None = None,
) -> nn.Module:
    vocab_size = _positive_int("vocab_size", vocab_size)
    token_budget = _positive_int("token_budget", token_budget)
    block_size = _positive_int("block_size", block_size)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an int; got {seed!r}")
    if token_budget < block_size:
        raise ValueError(f"token_budget={token_budget} does not hold one window of block_size={block_size}")
    r = RECIPE
    batch_size = min(r.batch_size, token_budget // block_size)  # a tiny budget still buys whole windows
    steps = token_budget // (batch_size * block_size)  # every step reads batch_size * block_size tokens
    warmup = max(1, round(r.warmup_fraction * steps))
    # fork_rng: the seed decides the initial weights without touching the caller's global random state.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = MiniGPT(vocab_size, r.embed_dim, r.num_heads, r.num_layers, r.ff_dim, block_size, dropout=0.0)
    hidden, others = split_parameters(model)
    embeddings = {id(model.tok_emb.weight), id(model.pos_emb.weight)}
    muon = torch.optim.Muon(hidden, lr=r.muon_lr, momentum=r.muon_momentum, adjust_lr_fn="original")
    adamw = torch.optim.AdamW(
        [
            {"params": [p for p in others if id(p) not in embeddings], "lr": r.adamw_lr},
            {"params": [p for p in others if id(p) in embeddings], "lr": r.embed_lr},
        ],
        betas=r.betas,
        eps=r.eps,
        weight_decay=0.0,  # no decay for embeddings, gains and biases (Muon keeps its default of 0.1 on matrices)
    )
    optimizers = [muon, adamw]
    groups = [group for opt in optimizers for group in opt.param_groups]
    for group in groups:
        group["peak_lr"] = group["lr"]  # the schedule scales every group's own rate by one factor
    model.train()
    for step in range(steps):
        factor = _lr_factor(step, steps, warmup)
        for group in groups:
            group["lr"] = group["peak_lr"] * factor
        x, y = get_batch(batch_size)  # (batch_size, block_size) each: the only data the run ever sees
        logits = model(x)  # (B, T, V)
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), r.max_norm)
        for opt in optimizers:
            opt.step()
        if callback is not None:
            callback(step + 1, model)
    return model
