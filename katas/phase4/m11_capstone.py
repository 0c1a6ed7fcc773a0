"""Kata m11_capstone (months 11-12): the capstone - train a GPT faster than nanoGPT's recipe, on a CPU.

The learning path ends with "design and implement a significant LLM project". Here it is a race with a
number at the end: train your ``MiniGPT`` (w15) on Tiny Shakespeare, character by character, to a
validation loss of 1.88 or below, using as little CPU time as you can. The yardstick is nanoGPT's CPU
recipe for this data set (block 64, batch 12, 4 layers, 4 heads, 128 wide, dropout 0, AdamW at 1e-3,
2,000 iterations): about 1.89 after two minutes of one CPU thread. The reference gets there in a third of
that time. You build it in three steps:

1. ``validation_loss`` - an honest measurement: the loss over the WHOLE validation split, every token
   counted once. Without it, no speed-up you claim means anything;
2. ``split_parameters`` - which parameters go to the Muon optimizer and which to AdamW;
3. ``train_capstone`` - the challenge itself: your model, your optimizer, your schedule, on a token budget.

Shape names used below: B batch, T sequence length (``block_size``), V vocabulary size, N tokens.
Run ``kata check m11_capstone`` to check your work; ``nox -s bench`` races the reference against the recipe.
"""

from __future__ import annotations

import math  # noqa: F401 - math.cos, math.pi for a schedule
import operator  # noqa: F401 - operator.index turns an int-like into an int (and rejects floats)
from collections.abc import Callable

import torch  # noqa: F401 - torch.no_grad, torch.random.fork_rng, torch.optim.Muon
import torch.nn.functional as F  # noqa: F401 - F.cross_entropy
from torch import Tensor, nn

from ..phase2.w15_mini_gpt import MiniGPT  # noqa: F401 - your model from w15; use it in train_capstone


def validation_loss(model: nn.Module, data: Tensor, block_size: int, batch_size: int = 256) -> float:
    """The mean next-token cross-entropy of ``model`` over ALL of ``data``, as a Python float.

    ``data`` is a 1-D tensor of N token ids (int64 or int32, any layout: a slice or a strided view is fine).
    It is cut into consecutive, non-overlapping windows of ``block_size`` tokens: window i is the input
    ``data[i*T : (i+1)*T]`` and its targets are the same positions one token later,
    ``data[i*T + 1 : (i+1)*T + 1]``. The targets need one token more than the inputs, so N tokens hold
    ``(N - 1) // T`` windows; the tokens after the last whole window are left out. ``model(x)`` takes a
    (b, T) int64 tensor of windows and returns (b, T, V) logits; the windows go to the device of the model's
    parameters (a model without parameters, such as a fixed table of buffers, gets them on ``data``'s
    device). The result is the loss per TOKEN: the sum of every target's cross-entropy divided by the number
    of targets, ``windows * T``, so every token weighs the same.

    Rules:

    - Whole split, no sampling. A few random batches give a noisy estimate that changes from run to run:
      when two training runs differ by 0.01, you cannot tell which is better. Every window is scored
      exactly once, so the same model always gets the same number.
    - ``batch_size`` only changes the speed: ``model`` gets at most ``batch_size`` windows per call, and the
      result does not depend on it (the last batch is smaller: sum the losses, divide once at the end -
      a mean of batch means would weigh the small last batch too much).
    - Evaluation mode, no graph: while the model runs, it is in ``eval()`` mode (no dropout) and gradients
      are off (``torch.no_grad()``). Afterwards, every submodule is back in the mode it was in before (a model
      may hold a frozen part in eval mode on purpose, so ``model.train(was_training)`` is not enough: record
      and restore each module's ``training`` flag), and the grad mode is as before - also when the model
      raises an error in the middle (``try`` / ``finally``).
    - Stable at any scale: logits of +-1e4 in some rows give a finite, exact loss (``F.cross_entropy``
      works with log-softmax; ``log(softmax(x))`` does not).
    - Neither ``data`` nor the model's parameters are changed.

    Errors (``ValueError`` whose message names the argument and the offending value - for ``data``, its shape,
    its type when it is not a tensor, or the value itself): ``data`` that is not a 1-D integer tensor; fewer
    than ``block_size + 1`` tokens (not one window); ``block_size`` larger than ``model.max_len`` when the
    model has a ``max_len`` attribute (as MiniGPT does); ``block_size`` or ``batch_size`` below 1, or not an
    int (``True`` or ``64.0``).

    Example::

        >>> data = torch.tensor([0, 1, 0, 1, 0, 1, 0])     # N = 7 tokens, block_size 3 -> 2 windows
        >>> # inputs [0, 1, 0] and [1, 0, 1], targets [1, 0, 1] and [0, 1, 0]; the last token 0 is left out
        >>> validation_loss(model_that_is_sure_of_each_next_token, data, 3)
        0.0
        >>> validation_loss(uniform_model_over_4_tokens, data, 3)   # log(4)
        1.3862943611198906
    """
    # TODO(m11_capstone.validation_loss): write your implementation here.
    raise NotImplementedError("m11_capstone.validation_loss is not implemented yet (try `kata hint m11_capstone.validation_loss`)")


def split_parameters(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """Split the trainable parameters of ``model`` into ``(muon_params, adamw_params)``.

    Muon (``torch.optim.Muon``) replaces each update of a weight MATRIX by the nearest orthogonal matrix
    (a Newton-Schulz iteration): every direction of the matrix moves by the same amount, so rare directions
    learn as fast as common ones. That suits the hidden matrices of the transformer blocks, and only them:

    - ``muon_params``: every parameter with exactly 2 dimensions inside ``model.blocks`` (the q/k/v, output
      and MLP matrices of a MiniGPT);
    - ``adamw_params``: every other trainable parameter - the token and position embeddings (a lookup table:
      each row is a separate vector, not a matrix acting on inputs), the output head (tied to the embedding
      or not: modded-nanogpt keeps it on Adam), LayerNorm gains and all biases (1-D: Muon only takes
      matrices), and any parameter outside the blocks.

    Rules:

    - Every parameter with ``requires_grad=True`` appears exactly once in the two lists together; a frozen
      one (``requires_grad=False``) in neither. A tied weight (MiniGPT's head IS the token embedding) or a
      block that is shared by two layers is still one Parameter: list it once. ``model.parameters()``
      already yields each Parameter once.
    - Both lists keep the order of ``model.parameters()`` (an optimizer's saved state refers to parameters by
      position, so the order must not depend on anything else).
    - ``model.blocks`` is the module holding the transformer blocks (MiniGPT's ``nn.ModuleList``). A model
      without an ``nn.Module`` called ``blocks`` is a ``ValueError`` that names ``blocks``.
    - The model is not changed (not even ``requires_grad``).

    Example::

        >>> model = MiniGPT(65, embed_dim=32, num_heads=2, num_layers=2, ff_dim=64, max_len=16)
        >>> muon, adamw = split_parameters(model)
        >>> [tuple(p.shape) for p in muon][:4]      # block 0: qkv, proj, mlp[0], mlp[2]
        [(96, 32), (32, 32), (64, 32), (32, 64)]
        >>> len(muon), len(adamw)                   # 4 matrices per block; tok_emb, pos_emb, LN and biases
        (8, 20)
    """
    # TODO(m11_capstone.split_parameters): write your implementation here.
    raise NotImplementedError("m11_capstone.split_parameters is not implemented yet (try `kata hint m11_capstone.split_parameters`)")


def train_capstone(
    get_batch: Callable[[int], tuple[Tensor, Tensor]],
    vocab_size: int,
    *,
    token_budget: int,
    block_size: int = 64,
    seed: int = 0,
    callback: Callable[[int, nn.Module], object] | None = None,
) -> nn.Module:
    """The challenge: build a language model, train it on at most ``token_budget`` tokens, return it.

    The data comes ONLY from ``get_batch(batch_size)``, which returns ``(x, y)``: two (batch_size,
    block_size) int64 tensors of random training windows, ``y`` being ``x`` shifted by one token (as w15's
    ``get_batch``). You choose ``batch_size`` (an int >= 1) at each call, and every call costs
    ``batch_size * block_size`` tokens of the budget: the caller counts them and raises an error the moment
    a call would go past ``token_budget``. Use the budget well - the challenge check measures the returned
    model with ``validation_loss`` on text it never showed you.

    What you build is your choice: the suggestion is your ``MiniGPT`` from w15 (imported above), e.g.
    ``MiniGPT(vocab_size, 128, 4, 4, 256, max_len=block_size, dropout=0.0)``, trained with Muon on the
    matrices of ``split_parameters`` and AdamW on the rest, a short warmup and a decay of the learning rate to
    zero. Things that matter on a CPU: a narrower MLP (256 rather than 512) makes each step cheaper and loses
    little at this budget; small batches learn more per token; Muon's learning rate is far larger than AdamW's
    (its steps have a fixed size); embeddings like a larger rate than LayerNorms.

    Rules:

    - Returns an ``nn.Module`` that maps a (B, T) int64 tensor with 1 <= T <= ``block_size`` and ids in
      ``[0, vocab_size)`` to (B, T, ``vocab_size``) finite logits, causally (as MiniGPT does).
    - Never asks ``get_batch`` for more than ``token_budget`` tokens in all (the budget holds at least one
      window: ``token_budget >= block_size``, or it is a ``ValueError``; a budget below one of your batches
      means a smaller batch). Any budget gives at least one optimizer step.
    - ``callback(step, model)``, if given, is called after EVERY optimizer step with the number of steps
      done so far (1, 2, 3, ...) and the model being trained (the very object you return). The benchmark uses
      it to draw learning curves; its time is not counted, and it may switch the model to eval mode and back.
    - Repeatable: the same ``seed`` (and the same batches) gives exactly the same model; another seed gives
      another initialisation; no ``seed`` means ``seed=0``. The seed must not leak: the caller's global random
      state (``torch.manual_seed``) is the same after the call as before - wrap your seeding in
      ``torch.random.fork_rng()``.
    - ``ValueError`` whose message names the argument and its value, for ``vocab_size``, ``token_budget`` or
      ``block_size`` below 1 or not an int (``True``, ``64.0``), a ``seed`` that is not an int, and
      ``token_budget < block_size``.

    Example::

        >>> model = train_capstone(get_batch, 65, token_budget=512_000, block_size=64)
        >>> validation_loss(model, val_ids, 64)    # the challenge: <= 1.88 on Tiny Shakespeare
        1.86...
    """
    # TODO(m11_capstone.train_capstone): write your implementation here.
    raise NotImplementedError("m11_capstone.train_capstone is not implemented yet (try `kata hint m11_capstone.train_capstone`)")
