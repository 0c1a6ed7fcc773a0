"""Reference solutions for m09_interpretability (months 9-10 of the learning path: interpretability).

Three ways to ask a model "why": integrated gradients (which input features moved the output), attention
rollout (which input tokens a position draws from, through all the layers) and the logit lens (what the model
would predict if it stopped after each block). The learning path only names the topic; it has no code for it.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn


def integrated_gradients(
    f: Callable[[Tensor], Tensor], x: Tensor, baseline: Tensor | None = None, steps: int = 50
) -> Tensor:
    """Integrated gradients of the per-row scalar ``f`` at the rows of ``x``, midpoint rule with ``steps`` points."""
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    if x.dim() < 1 or not x.is_floating_point():
        raise ValueError(f"x must be a floating (B, ...) tensor with a batch axis; got {x.dtype} {tuple(x.shape)}")
    if baseline is None:
        baseline = torch.zeros_like(x)  # the usual "no signal" input: attributions then explain f(x) - f(0)
    try:
        fits = torch.broadcast_shapes(baseline.shape, x.shape) == x.shape  # a (*S) baseline serves every row
    except RuntimeError:
        fits = False
    if not fits:
        raise ValueError(f"baseline of shape {tuple(baseline.shape)} does not broadcast to x's shape {tuple(x.shape)}")
    # Work on detached copies: the caller's x (perhaps a leaf that requires grad) must get no .grad and no graph.
    start = baseline.detach().expand(x.shape)
    delta = x.detach() - start  # (B, *S): the straight path from the baseline to x
    steps = int(steps)
    # Midpoints (k + 1/2) / steps of [0, 1]: the composite midpoint rule, whose error falls like 1 / steps^2.
    # Built in x's dtype and on x's device (float32 midpoints would cost float64 inputs 7 digits).
    alphas = (torch.arange(steps, dtype=x.dtype, device=x.device) + 0.5) / steps
    alphas = alphas.view((steps,) + (1,) * x.dim())  # (steps, 1, ..., 1) broadcasts over (B, *S)
    points = (start + alphas * delta).reshape((steps * x.shape[0],) + tuple(x.shape[1:]))  # (steps * B, *S)
    points.requires_grad_(True)
    with torch.enable_grad():  # the caller may be inside torch.no_grad(); the gradients are needed anyway
        out = f(points)
        if not isinstance(out, Tensor) or out.shape != (points.shape[0],):
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(f"f must return one value per row, shape ({points.shape[0]},); it returned {got}")
        # autograd.grad, not backward(): f's own parameters must not collect .grad from an explanation.
        # Rows are independent, so the gradient of the sum is every row's own gradient.
        (grads,) = torch.autograd.grad(out.sum(), points)
    mean_grad = grads.view((steps,) + tuple(x.shape)).mean(dim=0)  # (B, *S), row b of step k was row k * B + b
    return delta * mean_grad


def attention_rollout(attentions: Sequence[Tensor] | Tensor, add_residual: bool = True) -> Tensor:
    """Attention rollout (Abnar & Zuidema, 2020): head-averaged attention multiplied through the layers."""
    layers = list(attentions)  # a list, a tuple, or a stacked (L, ..., H, T, T) tensor
    if not layers:
        raise ValueError("attentions is empty: rollout needs at least one layer")
    shape = layers[0].shape
    if len(shape) < 3 or shape[-1] != shape[-2]:
        raise ValueError(f"each layer's attention must be (..., H, T, T); layer 0 has shape {tuple(shape)}")
    for i, layer in enumerate(layers):
        if layer.shape != shape:
            raise ValueError(f"layer {i} has shape {tuple(layer.shape)}, layer 0 has {tuple(shape)}")
    # The residual connection carries each token to itself: model it as identity attention, in the inputs'
    # dtype and device (a float32 eye would promote bfloat16 results, a CPU one fails on a GPU).
    eye = torch.eye(shape[-1], dtype=layers[0].dtype, device=layers[0].device)
    rollout = eye
    for layer in layers:  # first layer first
        a = layer.mean(dim=-3)  # (..., T, T): heads averaged, the axis before the two token axes
        if add_residual:
            a = a + eye
            # rows sum to 1 again, also rows that did not before (fully masked queries, dropout)
            a = a / a.sum(dim=-1, keepdim=True)
        # A later layer reads the mixture the earlier ones made: it multiplies from the LEFT.
        rollout = a @ rollout
    return rollout


def logit_lens(model: nn.Module, idx: Tensor) -> Tensor:
    """(num_layers + 1, B, T, V) logits read off the residual stream: the embeddings, then after every block."""
    if (not isinstance(idx, Tensor) or idx.dim() != 2 or idx.is_floating_point() or idx.is_complex()
            or idx.dtype == torch.bool):
        raise ValueError(f"idx must be a (B, T) tensor of integer token ids, got {idx!r}")
    T = idx.shape[1]
    if T > model.pos_emb.num_embeddings:
        raise ValueError(f"sequence length {T} is longer than the model's max_len={model.pos_emb.num_embeddings}")
    if idx.numel() and (idx.min() < 0 or idx.max() >= model.tok_emb.num_embeddings):
        bad = int(idx.min()) if idx.min() < 0 else int(idx.max())
        raise ValueError(f"token id {bad} is out of range for vocab_size={model.tok_emb.num_embeddings}")
    # Remember every module's own mode (one may have been put in eval on purpose), then read in eval mode:
    # with dropout the lens would be random.
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        with torch.no_grad():  # a reading, not training: no graph, and the caller's grad mode comes back
            x = model.drop(model.tok_emb(idx) + model.pos_emb.weight[:T])  # (B, T, E), as the model's forward
            stream = [x]
            for block in model.blocks:
                x = block(x)
                stream.append(x)  # after block l
            # Every state goes through the same final LayerNorm and head as the last one, so the last entry is
            # exactly the model's own logits.
            return torch.stack([model.head(model.ln_f(h)) for h in stream])  # (L + 1, B, T, V)
    finally:
        for module, training in modes:
            module.training = training
