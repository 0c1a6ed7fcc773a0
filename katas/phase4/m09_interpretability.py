"""Kata m09_interpretability (months 9-10 of the learning path: model interpretability and explainability).

A model that gives an answer should also be able to show where the answer came from. You build three classic
tools for looking inside a network:

1. ``integrated_gradients`` - how much each input feature contributed to an output, with a guarantee: the
   contributions add up to the change of the output;
2. ``attention_rollout`` - which input tokens each position draws from, followed through all the layers of a
   transformer, not just one;
3. ``logit_lens`` - what a GPT would predict if it stopped after each of its blocks.

The learning path only names the topic ("model interpretability and explainability"); it has no code for it.
``logit_lens`` reads the ``MiniGPT`` you built in w15_mini_gpt (the checks hand it a small one). Run
``kata check m09_interpretability`` to check your work.
"""

from __future__ import annotations

import numbers  # noqa: F401 - isinstance(steps, numbers.Integral) accepts Python and NumPy ints
from collections.abc import Callable, Sequence

import torch  # noqa: F401 - torch.arange, torch.autograd.grad, torch.eye, torch.stack ...
from torch import Tensor, nn


def integrated_gradients(
    f: Callable[[Tensor], Tensor], x: Tensor, baseline: Tensor | None = None, steps: int = 50
) -> Tensor:
    """Integrated gradients: how much each feature of each row of ``x`` contributed to ``f``'s output.

    A gradient only says how ``f`` reacts to a tiny nudge at ``x``; a saturated neuron has gradient ~0 even for
    the feature that switched it on. Integrated gradients (Sundararajan et al., 2017) walk the straight path
    from a ``baseline`` (an input that carries "no signal", zeros by default) to ``x`` and add up the gradient
    all along it. For one row with path ``p(a) = baseline + a * (x - baseline)``, ``a`` from 0 to 1::

        attribution_i = (x_i - baseline_i) * integral over a in [0, 1] of  df/dx_i (p(a)) da

    The integral is approximated with the **midpoint rule**: the mean of the gradients at the ``steps`` points
    ``a_k = (k + 0.5) / steps`` for k = 0 .. steps - 1 (not at 0 or 1, and not ``linspace``).

    Shapes: ``x`` is (B, *S): B rows, each of any shape S (S may be empty: ``x`` of shape (B,)). ``f`` maps a
    batch of inputs (N, *S) to one number per row, shape (N,), and the rows must not influence each other (no
    batch norm in training mode). Call ``f`` on batches of path points: all ``steps * B`` of them at once is
    the fast way, one batch of B per step works too; ``f`` is never called on a single unbatched point. The
    result has the shape and dtype of ``x``.

    Rules:

    - ``baseline`` defaults to zeros; otherwise it must broadcast to ``x``'s shape (one (*S) baseline shared
      by every row is fine) and have ``x``'s dtype. ``steps`` defaults to 50.
    - Completeness: the attributions of a row add up to ``f(x) - f(baseline)`` of that row, up to the error of
      the midpoint rule. With ``g(a) = f(p(a))`` that error is at most ``max |g'''| / (24 * steps**2)``: it
      shrinks like 1 / steps**2 (doubling ``steps`` divides it by about 4), and it is 0 when ``g`` is at most
      quadratic (a linear ``f``, ``f(z) = sum(z**2)``). For ``f(z) = sum(z**3)`` the midpoint rule gives exactly
      ``x**3 - baseline**3 - (x - baseline)**3 / (4 * steps**2)``.
    - Gradients come from ``torch.autograd.grad`` on a fresh tensor of path points that requires grad, inside
      ``torch.enable_grad()`` (it must work when the caller is in ``torch.no_grad()``). Not ``backward()``: that
      would leave ``.grad`` on ``f``'s parameters, and an explanation must not change the model's state.
    - Nothing is left behind: the result has no graph (``requires_grad`` False, even when ``x`` requires
      grad), ``x`` and ``baseline`` are not modified (no ``x.requires_grad_()`` on the caller's tensor) and no
      ``.grad`` appears anywhere. New tensors (the points ``a_k``) are made in ``x``'s dtype and on its device.
    - ``ValueError`` (naming the offending value) for: ``steps`` that is not an integer >= 1 (Python and NumPy
      integers are fine; ``0``, ``2.5`` and ``True`` are not); an ``x`` that is not floating point or has no batch axis (0-d); a ``baseline`` that does not
      broadcast to ``x``; an ``f`` that returns anything but a tensor of shape (N,) for N input rows (say what it
      returned: its shape, or its type when it is not a tensor).

    Example::

        >>> x = torch.tensor([[1.0, 2.0]])
        >>> integrated_gradients(lambda z: (z**2).sum(dim=1), x)   # exact for a quadratic: x**2 - 0**2
        tensor([[1., 4.]])
        >>> integrated_gradients(lambda z: (z**3).sum(dim=1), x, steps=2)   # x**3 - x**3 / 16
        tensor([[0.9375, 7.5000]])
    """
    # TODO(m09_interpretability.integrated_gradients): write your implementation here.
    raise NotImplementedError("m09_interpretability.integrated_gradients is not implemented yet (try `kata hint m09_interpretability.integrated_gradients`)")


def attention_rollout(attentions: Sequence[Tensor] | Tensor, add_residual: bool = True) -> Tensor:
    """Attention rollout: how much each input token feeds each position after ALL the layers.

    One layer's attention ``A[i, j]`` says how much position i reads from position j of the layer below, not
    from the input tokens: after layer 1, position j is already a mixture. Rollout (Abnar & Zuidema, 2020)
    follows the mixtures down to the input by multiplying the layers' attention matrices.

    ``attentions`` holds one tensor per layer, first layer first, each of shape (*batch, H, T, T): any number of
    leading batch dimensions (also none), then heads, then queries, then keys. Rows are attention weights
    (non-negative; they usually sum to 1, but a fully masked query may give a row of zeros and dropout rows
    that do not sum to 1). A list or tuple (what a Hugging Face model returns with ``output_attentions=True``)
    or one stacked (L, *batch, H, T, T) tensor. The result is (*batch, T, T), in the inputs' dtype and on their
    device: ``rollout[..., i, j]`` is how much output position i draws from input token j.

    For each layer l:

    1. average the heads: ``A_l = attentions[l].mean over the head axis (-3)``;
    2. if ``add_residual`` (the default): the residual connection passes every token on to itself, so add the
       identity and make every row sum to 1 again: ``A_l = (A_l + I) / (A_l + I).sum(dim=-1, keepdim=True)``.
       This renormalises every row, also one that did not sum to 1 (a masked row of zeros becomes the identity
       row), so it is not the same as ``0.5 * A_l + 0.5 * I``. With ``add_residual=False`` the averaged
       attention is used as it is;
    3. ``rollout = A_l @ rollout``, starting from ``rollout = A_1``. Order matters: a later layer reads what
       the earlier ones mixed, so it multiplies from the LEFT: ``rollout = A_L @ ... @ A_2 @ A_1``.

    With add_residual, every row of the result sums to 1. Make the identity in the inputs' dtype and on their
    device, and do not modify the inputs.
    ``ValueError`` (naming the problem) for an empty ``attentions``, a layer that is not (..., H, T, T) with
    T queries and T keys, or layers of different shapes (name the layer).

    Example::

        >>> a1 = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]])   # (H=1, T=2, T=2): both positions read token 0
        >>> a2 = torch.tensor([[[0.0, 1.0], [0.0, 1.0]]])   # both read position 1 of the layer below
        >>> attention_rollout([a1, a2], add_residual=False)  # position 1 below had read token 0
        tensor([[1., 0.],
                [1., 0.]])
        >>> attention_rollout([a1, a2])
        tensor([[0.7500, 0.2500],
                [0.5000, 0.5000]])
    """
    # TODO(m09_interpretability.attention_rollout): write your implementation here.
    raise NotImplementedError("m09_interpretability.attention_rollout is not implemented yet (try `kata hint m09_interpretability.attention_rollout`)")


def logit_lens(model: nn.Module, idx: Tensor) -> Tensor:
    """The logit lens: what the model would predict after each of its blocks.

    A GPT keeps a "residual stream" of (B, T, E) vectors that every block adds to; only at the end does it
    turn the stream into logits, with the final LayerNorm ``ln_f`` and the ``head``. The logit lens (nostalgebraist,
    2020) applies that same ending to the stream at every depth, to watch the prediction form layer by layer.

    ``model`` is a ``MiniGPT`` as in w15_mini_gpt (the checks pass one in; do not import anything for it). Use
    its parts: ``tok_emb`` and ``pos_emb`` (``nn.Embedding``; ``pos_emb.num_embeddings`` is ``max_len``),
    ``drop``, ``blocks`` (an ``nn.ModuleList``), ``ln_f`` and ``head``. ``idx`` is a (B, T) integer tensor of
    token ids. Returns a tensor of shape (num_layers + 1, B, T, V):

    - entry 0: the stream before any block, ``tok_emb(idx) + pos_emb.weight[:T]`` (after ``drop``, as in the
      model's forward, which does nothing in eval mode);
    - entry l (1 .. num_layers): the stream after block l;
    - each of them passed through ``model.ln_f`` and then ``model.head``. So the last entry equals the model's
      own logits ``model(idx)``.

    Rules:

    - Read the model in eval mode (dropout would make the lens random), then give every module its own mode
      back: if the caller had the model in training mode with one block in eval mode, both stay as they were
      (``model.train(was_training)`` would change that block too; remember ``module.training`` of each module).
      This holds also when the lens raises a ``ValueError``: check ``idx`` before you touch the model.
    - No graph: compute under ``torch.no_grad()``, so the result does not require grad and the caller's grad
      mode is unchanged afterwards. The model's parameters, their ``requires_grad`` and ``idx`` are not
      modified.
    - If you use forward hooks, remove every hook you registered (even when something fails: ``try/finally``),
      and leave the hooks the caller registered in place. A loop over the blocks needs no hooks at all.
    - ``ValueError`` (naming the offending value) for an ``idx`` that is not a 2-D integer tensor, a T longer
      than ``max_len``, or a token id outside [0, V).

    Example::

        >>> model = MiniGPT(vocab_size=11, embed_dim=8, num_heads=2, num_layers=3, ff_dim=16, max_len=8)
        >>> lens = logit_lens(model, torch.tensor([[1, 2, 3]]))
        >>> lens.shape                                   # (num_layers + 1, B, T, V)
        torch.Size([4, 1, 3, 11])
        >>> torch.equal(lens[-1], model.eval()(torch.tensor([[1, 2, 3]])))
        True
        >>> guesses = lens.argmax(dim=-1)[:, 0, -1]      # (num_layers + 1,): the top guess for the next token
    """
    # TODO(m09_interpretability.logit_lens): write your implementation here.
    raise NotImplementedError("m09_interpretability.logit_lens is not implemented yet (try `kata hint m09_interpretability.logit_lens`)")
