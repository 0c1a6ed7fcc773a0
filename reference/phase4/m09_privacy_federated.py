"""Reference solutions for m09_privacy_federated (months 9-10 of the learning path: federated learning, privacy).

Two ways to learn from data that must not be collected in one place, or must not be remembered:
- ``fedavg``: federated averaging (McMahan et al.): clients train locally, the server averages their weights,
  each weighted by its client's number of examples;
- ``per_sample_grads``: one gradient per example in a single vectorised pass (``torch.func``);
- ``dp_sgd_step``: one step of differentially private SGD (Abadi et al.): clip every example's gradient to
  norm ``max_grad_norm``, add Gaussian noise to their sum, divide by the batch size, step.

The learning path names these topics but has no code for them, so there are no bugs of its own to fix here.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap


def _is_real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


# --------------------------------------------------------------------------------------------------
# federated averaging


def _normalised_weights(weights, clients: int) -> list[float]:
    """The clients' weights as Python floats (float64) that sum to 1; ValueError for anything else."""
    if weights is None:
        return [1.0 / clients] * clients  # no sizes given: every client counts the same
    if isinstance(weights, Tensor):
        if weights.ndim != 1 or weights.dtype == torch.bool:
            raise ValueError(f"weights must be a 1-D tensor of numbers, got {tuple(weights.shape)} {weights.dtype}")
        values = weights.detach().cpu().double().tolist()
    else:
        values = list(weights)
        for value in values:
            if not _is_real(value):  # True is not a number of examples
                raise ValueError(f"weights must be real numbers (client data sizes), got {value!r}")
        values = [float(value) for value in values]
    if len(values) != clients:
        raise ValueError(f"got {len(values)} weights for {clients} client states")
    for value in values:
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"weights must be finite and >= 0, got {value!r}")
    total = math.fsum(values)
    if total <= 0:
        raise ValueError(f"the weights sum to {total!r}: at least one client must have a positive weight")
    # normalised in float64 once, so float64 states lose nothing
    return [value / total for value in values]


def fedavg(
    states: Sequence[Mapping[str, Tensor]], weights: Sequence[float] | Tensor | None = None
) -> dict[str, Tensor]:
    """The weighted average of the clients' state dicts; integer and bool entries come from the first client."""
    states = list(states)
    if not states:
        raise ValueError("fedavg needs at least one client state, got none")
    shares = _normalised_weights(weights, len(states))
    keys = list(states[0].keys())
    for state in states[1:]:
        missing, extra = set(keys) - set(state.keys()), set(state.keys()) - set(keys)
        if missing or extra:
            raise ValueError(f"the clients' keys differ from client 0's: missing {sorted(missing)}, "
                             f"extra {sorted(extra)}")
    result = {}
    with torch.no_grad():  # an average of weights, not a step of a graph: no autograd history
        for name in keys:
            first = states[0][name]
            for index, state in enumerate(states):
                other = state[name]
                if other.shape != first.shape or other.dtype != first.dtype:
                    raise ValueError(f"{name!r}: client {index} has {tuple(other.shape)} {other.dtype}, client 0 "
                                     f"{tuple(first.shape)} {first.dtype}")
            if not first.is_floating_point():
                # counters (BatchNorm's num_batches_tracked) and flags cannot be averaged: keep client 0's
                # value, as a copy so that later in-place updates of the global model leave the client alone
                result[name] = first.clone()
                continue
            # accumulate in float32 at least: a bfloat16 sum would round at every client, not once at the end
            wide = torch.promote_types(first.dtype, torch.float32)
            total = torch.zeros(first.shape, dtype=wide, device=first.device)
            for index, state in enumerate(states):
                total += shares[index] * state[name].to(wide)
            result[name] = total.to(first.dtype)
    return result


# --------------------------------------------------------------------------------------------------
# per-sample gradients with torch.func


def per_sample_grads(
    model: nn.Module, loss_fn: Callable[[Tensor, Tensor], Tensor], x: Tensor, y: Tensor
) -> dict[str, Tensor]:
    """{name: (B, *param.shape)}: the gradient of each example's loss for every parameter that requires grad."""
    # no check of the batch sizes here: vmap raises a ValueError naming both when x and y disagree
    # named_parameters lists a tied weight once; functional_call ties it again (tie_weights=True)
    trainable = {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}
    frozen = {name: p.detach() for name, p in model.named_parameters() if not p.requires_grad}
    buffers = {name: b.detach() for name, b in model.named_buffers()}

    def example_loss(params: dict[str, Tensor], xi: Tensor, yi: Tensor) -> Tensor:
        # vmap hands over one example without its batch dimension; the model and the loss expect a batch,
        # so give them a batch of one: its loss is exactly this example's loss
        out = functional_call(model, (params, frozen, buffers), (xi.unsqueeze(0),))
        return loss_fn(out, yi.unsqueeze(0))

    # grad differentiates with respect to the first argument only (the parameters); vmap maps over the
    # examples (dimension 0 of x and y) and shares the parameters (None)
    grads = vmap(grad(example_loss), in_dims=(None, 0, 0))(trainable, x, y)
    return {name: grads[name] for name in trainable}


# --------------------------------------------------------------------------------------------------
# one step of DP-SGD


def dp_sgd_step(
    model: nn.Module,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    x: Tensor,
    y: Tensor,
    optimizer: torch.optim.Optimizer,
    max_grad_norm: float,
    noise_multiplier: float,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Clip each example's gradient to norm C, add N(0, (sigma C)^2) to their sum, divide by B, step once."""
    if not _is_real(max_grad_norm) or not math.isfinite(max_grad_norm) or max_grad_norm <= 0:
        raise ValueError(f"max_grad_norm must be a finite number > 0, got {max_grad_norm!r}")
    if not _is_real(noise_multiplier) or not math.isfinite(noise_multiplier) or noise_multiplier < 0:
        raise ValueError(f"noise_multiplier must be a finite number >= 0, got {noise_multiplier!r}")
    if x.ndim and x.shape[0] == 0:
        raise ValueError("an empty batch (B = 0) has no mean gradient")
    with torch.no_grad():
        loss = loss_fn(model(x), y)  # the batch loss before the step, for logging
    grads = per_sample_grads(model, loss_fn, x, y)  # {name: (B, *shape)}
    batch = x.shape[0]
    # one norm per example over ALL its parameters together (a flat vector), as Abadi et al. and Opacus do:
    # clipping each parameter separately would bound the whole gradient only by C * sqrt(#parameters)
    squares = [g.reshape(batch, -1).pow(2).sum(dim=1) for g in grads.values()]
    norms = torch.stack(squares).sum(dim=0).sqrt()  # (B,)
    # min(1, C / norm): a gradient shorter than C is kept; a zero gradient gives C / 0 = inf -> 1, never nan
    factors = (max_grad_norm / norms).clamp(max=1.0)
    params = dict(model.named_parameters())
    std = noise_multiplier * max_grad_norm  # the noise is calibrated to C, the most one example can move the sum
    for name, g in grads.items():
        clipped_sum = (g * factors.reshape(batch, *([1] * (g.ndim - 1)))).sum(dim=0)
        noise = torch.randn(clipped_sum.shape, generator=generator, dtype=params[name].dtype,
                            device=params[name].device)
        # noise on the SUM, then the mean: the noise on the mean gradient has std sigma * C / B
        params[name].grad = (clipped_sum + std * noise) / batch
    optimizer.step()
    return loss.detach()
