"""Kata w07_char_lm (Weeks 7-8): your first language model, a character-level LSTM.

The learning path's project for these weeks is the ``AdvancedCharLM`` below: embed characters, run them
through an LSTM, predict the next character. Around it you build the whole pipeline: the loss and its
perplexity, a training loop with validation, text generation, and a plot of the training curves.

Do the exercises in order: ``AdvancedCharLM`` -> ``lm_loss`` / ``perplexity`` -> ``train_char_lm`` ->
``sample`` -> ``plot_history``. Check one with ``kata check w07_char_lm.<exercise>``.

Conventions used throughout:

- Token ids come as ``torch.long`` tensors of shape ``(B, T)``: B sequences of T characters.
- A *model* is any ``nn.Module`` whose ``forward(x, state=None)`` returns ``(logits, state)`` with logits
  of shape ``(B, T, V)`` (V = vocabulary size): ``AdvancedCharLM`` is one; the checks also use others.
- A *loader* is any iterable of ``(inputs, targets)`` pairs of shape ``(B, T)`` where ``targets`` are the
  inputs shifted by one character. A ``torch.utils.data.DataLoader`` is one; so is a plain list. Batches
  may differ in size (the last one is often shorter).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from matplotlib.figure import Figure

State = tuple[torch.Tensor, torch.Tensor]


def _device_of(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (CPU for a model without parameters)."""
    first = next(model.parameters(), None)
    return first.device if first is not None else torch.device("cpu")


class AdvancedCharLM(nn.Module):
    """A character-level language model: Embedding -> LSTM -> Dropout -> Linear.

    ``AdvancedCharLM(vocab_size, embedding_dim=128, hidden_dim=256, num_layers=2, dropout=0.2)``

    Layers (in this order, all created in ``__init__``):

    - ``nn.Embedding(vocab_size, embedding_dim)``: token id -> vector;
    - ``nn.LSTM(embedding_dim, hidden_dim, num_layers, batch_first=True, dropout=...)``: pass ``dropout``
      only when ``num_layers > 1`` (an LSTM applies it *between* its layers; with one layer there is
      nothing between, and PyTorch warns);
    - ``nn.Dropout(dropout)`` on the LSTM's output (a module, so ``model.eval()`` turns it off);
    - ``nn.Linear(hidden_dim, vocab_size)``: the head that turns each hidden vector into logits.

    ``forward(x, state=None) -> (logits, state)``:

    - ``x``: ``(B, T)`` token ids (``torch.long``); anything that is not 2-D -> ``ValueError`` naming the
      shape;
    - ``state``: ``None`` (start from zeros - on ``x``'s device, or let ``nn.LSTM`` make them) or the
      ``(h, c)`` pair a previous call returned, each of shape ``(num_layers, B, hidden_dim)``; it is not
      modified;
    - returns ``logits`` of shape ``(B, T, vocab_size)`` and the new ``(h, c)``.

    Why the state matters: an LSTM reads a sequence left to right, carrying ``(h, c)``. If ``forward``
    takes the state from the previous call and hands the new one back, then - in eval mode - running
    ``x[:, :k]`` and then ``x[:, k:]`` with the returned state gives exactly the logits of one call on
    all of ``x``. That is what lets ``sample`` feed one character per step instead of re-reading the
    whole text, and what lets you train on a long text in chunks.

    Bad arguments: ``vocab_size``, ``embedding_dim``, ``hidden_dim`` or ``num_layers`` below 1, or
    ``dropout`` outside ``[0, 1)`` -> ``ValueError`` naming the value.

    What changed from the learning path's sample: its ``forward(x)`` threw the LSTM's state away
    (``lstm_out, _ = self.lstm(embedded)``), so every call started from zeros and generation had to
    re-read the whole text for every new character; and its dropout rates were hard-coded (0.2 inside
    the LSTM, 0.3 after it). Here one ``dropout`` argument sets both.

    Example::

        >>> model = AdvancedCharLM(vocab_size=65, embedding_dim=16, hidden_dim=32, num_layers=2).eval()
        >>> x = torch.randint(0, 65, (4, 10))
        >>> logits, (h, c) = model(x)
        >>> logits.shape, h.shape, c.shape
        (torch.Size([4, 10, 65]), torch.Size([2, 4, 32]), torch.Size([2, 4, 32]))
        >>> first, state = model(x[:, :3])
        >>> rest, _ = model(x[:, 3:], state)
        >>> torch.allclose(torch.cat([first, rest], dim=1), logits, atol=1e-6)
        True
    """

    def __init__(self, vocab_size: int, embedding_dim: int = 128, hidden_dim: int = 256, num_layers: int = 2,
                 dropout: float = 0.2) -> None:
        """Create the four layers (see the class docstring); validate the arguments first."""
        # TODO(w07_char_lm.AdvancedCharLM): write your implementation here.
        raise NotImplementedError("w07_char_lm.AdvancedCharLM.__init__ is not implemented yet (try `kata hint w07_char_lm.AdvancedCharLM`)")

    def forward(self, x: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        """``(B, T)`` token ids and an optional ``(h, c)`` -> ``(B, T, V)`` logits and the new ``(h, c)``."""
        # TODO(w07_char_lm.AdvancedCharLM): write your implementation here.
        raise NotImplementedError("w07_char_lm.AdvancedCharLM.forward is not implemented yet (try `kata hint w07_char_lm.AdvancedCharLM`)")


def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The language-modelling loss: mean next-token cross-entropy over every position.

    - ``logits``: ``(..., V)`` floats with any leading shape, usually ``(B, T, V)`` (a single ``(V,)`` row
      with a 0-d target is one position), in any memory layout (a slice or a transpose is not contiguous);
    - ``targets``: the leading shape of ``logits``, usually ``(B, T)``, ``torch.long`` ids in ``[0, V)``;
    - returns a 0-d tensor of the logits' dtype (keep it a tensor: training calls ``.backward()`` on it):
      ``-mean over all positions of log softmax(logits)[target]``. Neither input is modified.

    ``F.cross_entropy`` expects the classes in dimension 1 (``(N, V)`` logits with ``(N,)`` targets), so
    flatten the positions first with ``reshape`` (``view`` fails on non-contiguous logits) - passing
    ``(B, T, V)`` straight in is an error (or, worse, silently wrong when T == V). Use a stable
    log-softmax (``F.cross_entropy`` / ``F.log_softmax``), never ``torch.log(torch.softmax(...))``, which
    gives ``inf`` once a logit gap exceeds ~100.

    Shapes that do not fit (``logits.shape[:-1] != targets.shape``) -> ``ValueError`` naming both shapes.

    Example::

        >>> lm_loss(torch.zeros(2, 3, 5), torch.zeros(2, 3, dtype=torch.long))  # uniform: log(5)
        tensor(1.6094)
    """
    # TODO(w07_char_lm.lm_loss): write your implementation here.
    raise NotImplementedError("w07_char_lm.lm_loss is not implemented yet (try `kata hint w07_char_lm.lm_loss`)")


def perplexity(model: nn.Module, loader: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """``exp`` of the mean loss *per token* over everything the loader yields, as a Python float.

    Perplexity is "how many characters the model is choosing between": a model that spreads its
    probability evenly over V characters has perplexity exactly V; a perfect model has 1.

    Rules:

    - weight every batch by its number of tokens: ``exp(sum of all token losses / number of tokens)``.
      The mean of per-batch means is wrong as soon as batches differ in size - a 1-sequence last batch
      would count as much as a 64-sequence one;
    - evaluate in eval mode (dropout off) and without autograd (``torch.no_grad()``), then put the
      model back in the mode it was in (training code calls this between epochs);
    - move each batch to the model's device (``_device_of(model)``);
    - the model returns ``(logits, state)``: ignore the state (each batch starts from zeros);
    - a loader that yields no tokens (no batches, or only empty ones) -> ``ValueError``.

    Example::

        >>> class Uniform(nn.Module):
        ...     def forward(self, x, state=None):
        ...         return torch.zeros(*x.shape, 7), state
        >>> batches = [(torch.zeros(4, 5, dtype=torch.long),) * 2, (torch.zeros(1, 5, dtype=torch.long),) * 2]
        >>> round(perplexity(Uniform(), batches), 6)
        7.0
    """
    # TODO(w07_char_lm.lm_loss): write your implementation here.
    raise NotImplementedError("w07_char_lm.perplexity is not implemented yet (part of w07_char_lm.lm_loss: try `kata hint w07_char_lm.lm_loss`)")


def train_char_lm(model: nn.Module, train_loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
                  val_loader: Iterable[tuple[torch.Tensor, torch.Tensor]], epochs: int, lr: float = 2e-3,
                  grad_clip: float | None = 1.0) -> dict[str, list[float]]:
    """Train ``model`` in place for ``epochs`` passes over ``train_loader``; validate after each one.

    Returns the history ``{"train_loss": [...], "val_loss": [...]}``, one float per epoch in each list.

    Per epoch:

    1. ``model.train()`` - every epoch, not just once: validation below switches the model to eval
       mode, and dropout must be back on for the next epoch's training;
    2. for each ``(x, y)`` of ``train_loader`` (moved to the model's device): zero the gradients, run
       ``model(x)`` (no state: every batch is an independent chunk), ``lm_loss``, ``backward``, clip the
       global gradient norm to ``grad_clip`` (``torch.nn.utils.clip_grad_norm_``; skip when ``None``),
       optimizer step. The optimizer is ``torch.optim.Adam(model.parameters(), lr=lr)``, created once;
    3. ``train_loss`` of the epoch: the token-weighted mean of the batch losses seen while training
       (``sum(loss_b * tokens_b) / sum(tokens_b)``);
    4. ``val_loss``: the mean loss per token on ``val_loader`` in eval mode and under
       ``torch.no_grad()`` - i.e. ``log(perplexity(model, val_loader))``. Validating in train mode
       measures a dropout-damaged model; validating with autograd on builds graphs nobody uses.

    Bad arguments: ``epochs < 0``, ``lr < 0`` or ``grad_clip <= 0`` -> ``ValueError``; an empty
    ``train_loader`` -> ``ValueError``.

    Example::

        >>> history = train_char_lm(model, train_batches, val_batches, epochs=3, lr=3e-3)
        >>> len(history["train_loss"]), len(history["val_loss"])
        (3, 3)
    """
    # TODO(w07_char_lm.train_char_lm): write your implementation here.
    raise NotImplementedError("w07_char_lm.train_char_lm is not implemented yet (try `kata hint w07_char_lm.train_char_lm`)")


def sample(model: nn.Module, vocab: Any, prompt: str, length: int, temperature: float = 1.0, top_k: int | None = None,
           generator: torch.Generator | None = None) -> str:
    """Generate text: returns ``prompt`` followed by ``length`` new characters.

    ``vocab`` is any object with ``encode(text: str) -> list[int]`` and ``decode(ids: Iterable[int]) -> str``
    (the ``CharVocab`` of kata w01_numpy is one). Only these two methods are used.

    Algorithm:

    1. ``model.eval()`` and ``torch.no_grad()`` (restore the model's previous mode at the end);
    2. run the model once on the encoded prompt, shape ``(1, len(prompt))``, keep the returned state;
    3. ``length`` times: pick the next id from the logits of the *last* position, append it, and feed
       just that one id, shape ``(1, 1)``, together with the state (do not re-read the whole text: that
       makes every new character cost a pass over everything so far). Feeding the very last id is
       optional - its logits are never used;
    4. decode prompt ids + new ids.

    Every id tensor is created on the model's device (``_device_of(model)``), as a model on a GPU needs.

    Picking the next id from logits ``z`` (shape ``(V,)``):

    - ``temperature == 0`` means greedy: ``argmax(z)``. That is the limit of ``softmax(z / T)`` as
      ``T -> 0``; computing ``z / 0`` instead gives ``inf``/``nan`` probabilities. ``temperature < 0`` ->
      ``ValueError``;
    - otherwise divide by the temperature (T < 1 sharpens, T > 1 flattens);
    - ``top_k``: keep the k largest logits and set the others to ``-inf`` (not 0: ``exp(0) = 1`` would keep
      them alive); ``top_k=1`` is greedy; a k above V keeps everything; ``top_k < 1`` -> ``ValueError``;
    - draw from ``softmax`` with ``torch.multinomial(probs, 1, generator=generator)`` (on the CPU, where a
      CPU generator can draw). Always pass ``generator`` on: the same seed must give the same text, and
      torch's global RNG is left alone; with ``generator=None`` the draws come from the global RNG.

    Also: ``length < 0`` or an empty prompt -> ``ValueError``; ``length == 0`` returns the prompt.

    Example::

        >>> g = torch.Generator().manual_seed(0)
        >>> text = sample(model, vocab, "ROMEO:", 50, temperature=0.8, top_k=10, generator=g)
        >>> text.startswith("ROMEO:"), len(text)
        (True, 56)
    """
    # TODO(w07_char_lm.sample): write your implementation here.
    raise NotImplementedError("w07_char_lm.sample is not implemented yet (try `kata hint w07_char_lm.sample`)")


def plot_history(history: Mapping[str, Sequence[float]]) -> Figure:
    """A matplotlib ``Figure`` with one line per entry of ``history`` (e.g. train and validation loss).

    - one Axes; for each ``name, values`` in ``history``: a line at x = 1, 2, ..., len(values) (epoch
      numbers) and y = values, labelled ``name``; a legend; axis labels ``"epoch"`` and ``"loss"``;
    - build it with the object API: ``from matplotlib.figure import Figure; fig = Figure();
      ax = fig.add_subplot()``. No ``pyplot``: ``plt.figure()`` registers every figure in a global list
      that is only emptied by ``plt.close`` (a memory leak in a training script, and trouble on a
      server without a display); a bare ``Figure`` renders with Agg, e.g. ``fig.savefig("loss.png")``;
    - an empty ``history`` -> ``ValueError``.

    Example::

        >>> fig = plot_history({"train_loss": [2.1, 1.7, 1.5], "val_loss": [2.0, 1.8, 1.7]})
        >>> [line.get_label() for line in fig.axes[0].get_lines()]
        ['train_loss', 'val_loss']
    """
    # TODO(w07_char_lm.plot_history): write your implementation here.
    raise NotImplementedError("w07_char_lm.plot_history is not implemented yet (try `kata hint w07_char_lm.plot_history`)")
