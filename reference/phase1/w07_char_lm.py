"""Kata w07_char_lm (Weeks 7-8): your first language model, a character-level LSTM.

Reference solutions. The stubs in ``katas/phase1/w07_char_lm.py`` carry the full teaching docstrings.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from matplotlib.figure import Figure

State = tuple[torch.Tensor, torch.Tensor]


def _device_of(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (CPU for a model without parameters)."""
    first = next(model.parameters(), None)
    return first.device if first is not None else torch.device("cpu")


class AdvancedCharLM(nn.Module):
    """Embedding -> multi-layer LSTM -> dropout -> linear head, with the recurrent state in and out."""

    def __init__(self, vocab_size: int, embedding_dim: int = 128, hidden_dim: int = 256, num_layers: int = 2,
                 dropout: float = 0.2) -> None:
        super().__init__()
        if min(vocab_size, embedding_dim, hidden_dim, num_layers) < 1:
            raise ValueError(
                f"vocab_size, embedding_dim, hidden_dim and num_layers must all be at least 1; got vocab_size="
                f"{vocab_size}, embedding_dim={embedding_dim}, hidden_dim={hidden_dim}, num_layers={num_layers}"
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.embedding = nn.Embedding(vocab_size, embedding_dim)
        # nn.LSTM only applies its dropout *between* layers (and warns when there is only one layer).
        # batch_first=True because our tokens come as (B, T); without it the LSTM would run along B.
        self.lstm = nn.LSTM(embedding_dim, hidden_dim, num_layers, batch_first=True,
                            dropout=dropout if num_layers > 1 else 0.0)
        self.dropout = nn.Dropout(dropout)  # a module, so model.eval() switches it off
        self.head = nn.Linear(hidden_dim, vocab_size)

    def forward(self, x: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        if x.dim() != 2:
            raise ValueError(f"x must be a (batch, time) tensor of token ids, got shape {tuple(x.shape)}")
        embedded = self.embedding(x)  # (B, T, E)
        # Passing the state on is what lets a long text be processed in chunks (and sampling be O(1) per step).
        out, state = self.lstm(embedded, state)  # (B, T, H); h and c: (L, B, H)
        return self.head(self.dropout(out)), state  # (B, T, V)


def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over every position."""
    if logits.shape[:-1] != targets.shape:
        raise ValueError(
            f"logits must have shape (..., vocab) and targets the leading shape of logits; got logits "
            f"{tuple(logits.shape)} and targets {tuple(targets.shape)}"
        )
    # cross_entropy wants the classes in dim 1, so flatten every position into one batch of rows.
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def perplexity(model: nn.Module, loader: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """exp(mean loss per token) over a whole loader, in eval mode and without autograd."""
    was_training = model.training
    device = _device_of(model)
    total, count = 0.0, 0
    model.eval()  # dropout off: we measure the model, not a noisy version of it
    try:
        with torch.no_grad():  # nothing to backpropagate; no graph, less memory
            for batch in loader:
                x, y = (t.to(device) for t in batch)
                logits, _ = model(x)
                # weight each batch by its number of tokens: a short last batch must count less
                total += lm_loss(logits, y).item() * y.numel()
                count += y.numel()
    finally:
        model.train(was_training)
    if count == 0:
        raise ValueError("the loader yielded no tokens; perplexity is undefined")
    return math.exp(total / count)


def train_char_lm(model: nn.Module, train_loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
                  val_loader: Iterable[tuple[torch.Tensor, torch.Tensor]], epochs: int, lr: float = 2e-3,
                  grad_clip: float | None = 1.0) -> dict[str, list[float]]:
    """Adam with gradient clipping; per epoch the token-weighted train loss and the validation loss."""
    if epochs < 0:
        raise ValueError(f"epochs must be >= 0, got {epochs}")
    if lr < 0:
        raise ValueError(f"lr must be >= 0, got {lr}")
    if grad_clip is not None and grad_clip <= 0:
        raise ValueError(f"grad_clip must be positive or None, got {grad_clip}")
    device = _device_of(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    history: dict[str, list[float]] = {"train_loss": [], "val_loss": []}
    for _ in range(epochs):
        model.train()  # every epoch: validation below switched the model to eval mode
        total, count = 0.0, 0
        for batch in train_loader:
            x, y = (t.to(device) for t in batch)
            optimizer.zero_grad()
            logits, _ = model(x)  # each batch is an independent chunk: start from a zero state
            loss = lm_loss(logits, y)
            loss.backward()
            if grad_clip is not None:
                # LSTMs are prone to exploding gradients; clipping the global norm keeps steps sane
                torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            optimizer.step()
            total += loss.item() * y.numel()
            count += y.numel()
        if count == 0:
            raise ValueError("train_loader yielded no batches")
        history["train_loss"].append(total / count)
        # perplexity does eval mode + no_grad + token weighting; its log is the validation loss
        history["val_loss"].append(math.log(perplexity(model, val_loader)))
    return history


def _pick(logits: torch.Tensor, temperature: float, top_k: int | None, generator: torch.Generator | None) -> int:
    """The next token id from one row of logits (V,)."""
    if temperature == 0:
        return int(torch.argmax(logits))  # the T -> 0 limit of softmax(logits / T) is the argmax
    logits = logits.float().cpu() / temperature  # on the CPU, where a CPU generator can draw
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.numel())).values[-1]
        logits = logits.masked_fill(logits < kth, -math.inf)  # -inf, not 0: exp(-inf) = 0
    probs = torch.softmax(logits, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))


def sample(model: nn.Module, vocab: Any, prompt: str, length: int, temperature: float = 1.0, top_k: int | None = None,
           generator: torch.Generator | None = None) -> str:
    """The prompt followed by ``length`` sampled characters."""
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 means greedy), got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be None or at least 1, got {top_k}")
    if length < 0:
        raise ValueError(f"length must be >= 0, got {length}")
    if not prompt:
        raise ValueError("prompt must hold at least one character to condition on")
    ids = list(vocab.encode(prompt))
    device = _device_of(model)
    was_training = model.training
    model.eval()  # no dropout while generating
    try:
        with torch.no_grad():
            # read the whole prompt once; afterwards feed one token at a time and carry the state
            logits, state = model(torch.tensor([ids], device=device))  # (1, P) ids: Python ints give int64
            for _ in range(length):
                token = _pick(logits[0, -1], temperature, top_k, generator)
                ids.append(token)
                logits, state = model(torch.tensor([[token]], device=device), state)
    finally:
        model.train(was_training)
    return vocab.decode(ids)


def plot_history(history: Mapping[str, Sequence[float]]) -> Figure:
    """One labelled line per history entry against the epoch number (1, 2, ...)."""
    from matplotlib.figure import Figure  # the object API: no pyplot, no global figure registry

    if not history:
        raise ValueError("history is empty; nothing to plot")
    fig = Figure()
    ax = fig.add_subplot()
    for name, values in history.items():
        values = list(values)
        ax.plot(range(1, len(values) + 1), values, label=name)
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.legend()
    return fig
