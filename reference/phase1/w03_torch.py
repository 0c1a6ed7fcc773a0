"""Reference solutions for w03_torch (Weeks 3-4: PyTorch fundamentals)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

_REDUCTIONS = ("mean", "sum", "none")
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)  # the constant of the tanh approximation of GELU
_GELU_CUBIC = 0.044715  # the cubic coefficient of the tanh approximation of GELU


class SimpleNet(nn.Module):
    """Linear -> ReLU -> Linear, the learning path's first network."""

    def __init__(self, input_size: int, hidden_size: int, output_size: int) -> None:
        super().__init__()
        for name, size in (("input_size", input_size), ("hidden_size", hidden_size), ("output_size", output_size)):
            # nn.Linear(0, ...) builds silently and fails much later: say what is wrong now.
            if isinstance(size, bool) or not isinstance(size, int) or size < 1:
                raise ValueError(f"{name} must be a positive integer, got {size!r}")
        # Assigning modules as attributes registers their parameters with nn.Module.
        self.layer1 = nn.Linear(input_size, hidden_size)
        self.relu = nn.ReLU()
        self.layer2 = nn.Linear(hidden_size, output_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # nn.Linear works on the last axis, so any leading (batch) shape passes through.
        return self.layer2(self.relu(self.layer1(x)))


def mse_loss(pred: torch.Tensor, target: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Mean squared error, like ``F.mse_loss``."""
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    if pred.shape != target.shape:
        # Broadcasting (N, 1) against (N,) would silently compare every prediction with every target.
        raise ValueError(
            f"pred has shape {tuple(pred.shape)} but target has shape {tuple(target.shape)}; they must be equal"
        )
    squared = (pred - target) ** 2
    if reduction == "mean":
        return squared.mean()  # over every element, not over the batch axis only
    if reduction == "sum":
        return squared.sum()
    return squared


def cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, ignore_index: int = -100, label_smoothing: float = 0.0
) -> torch.Tensor:
    """Mean cross-entropy of (N, C) logits against (N,) class indices, like ``F.cross_entropy``."""
    if logits.ndim != 2:
        raise ValueError(f"logits must have shape (N, C), got shape {tuple(logits.shape)}")
    if target.shape != logits.shape[:1]:
        raise ValueError(f"target must have shape ({logits.shape[0]},), got shape {tuple(target.shape)}")
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing!r}")
    num_classes = logits.shape[1]
    keep = target != ignore_index
    bad = target[keep & ((target < 0) | (target >= num_classes))]
    if bad.numel():
        raise ValueError(
            f"target value {int(bad[0])} is not a class index in [0, {num_classes}) nor ignore_index={ignore_index}"
        )
    # log_softmax through the log-sum-exp trick: after subtracting the row max, exp never overflows,
    # so logits of +-1e4 give finite losses and gradients. (The max cancels, so its gradient is 0.)
    shifted = logits - logits.max(dim=1, keepdim=True).values
    log_probs = shifted - shifted.exp().sum(dim=1, keepdim=True).log()
    # Ignored targets (often -100) are no valid index: gather a dummy class there, masked out below.
    safe_target = torch.where(keep, target, torch.zeros_like(target))
    nll = -log_probs.gather(1, safe_target.unsqueeze(1)).squeeze(1)
    # Label smoothing mixes the one-hot target with the uniform distribution over all C classes.
    uniform = -log_probs.mean(dim=1)
    per_example = (1.0 - label_smoothing) * nll + label_smoothing * uniform
    per_example = torch.where(keep, per_example, torch.zeros_like(per_example))
    # Average over the positions that count, not over all N (0/0 = nan when every one is ignored, as in torch).
    return per_example.sum() / keep.sum()


class LinearFunction(torch.autograd.Function):
    """``y = x @ weight.T + bias`` with a hand-written backward."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        out = x @ weight.T  # (*, in) @ (in, out) -> (*, out)
        return out + bias if bias is not None else out

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        # Torch ops only: autograd records them when a second derivative is asked for (gradgradcheck).
        grad_x = grad_output @ weight  # (*, out) @ (out, in) -> (*, in)
        flat_grad = grad_output.reshape(-1, grad_output.shape[-1])  # (M, out), M = all leading dims
        flat_x = x.reshape(-1, x.shape[-1])  # (M, in)
        grad_weight = flat_grad.T @ flat_x  # (out, in): the shape of weight, summed over every example
        grad_bias = flat_grad.sum(dim=0) if ctx.has_bias else None  # bias is shared by every example
        return grad_x, grad_weight, grad_bias


class GELUFunction(torch.autograd.Function):
    """GELU, tanh approximation: ``0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x**3)))``."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        inner = _SQRT_2_OVER_PI * (x + _GELU_CUBIC * x**3)
        return 0.5 * x * (1.0 + torch.tanh(inner))

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        tanh_inner = torch.tanh(_SQRT_2_OVER_PI * (x + _GELU_CUBIC * x**3))
        d_inner = _SQRT_2_OVER_PI * (1.0 + 3.0 * _GELU_CUBIC * x**2)
        # product rule: d/dx [0.5 x (1 + t)] = 0.5 (1 + t) + 0.5 x (1 - t^2) d_inner
        local = 0.5 * (1.0 + tanh_inner) + 0.5 * x * (1.0 - tanh_inner**2) * d_inner
        return grad_output * local  # chain rule: scale by the gradient flowing in


def train_step(
    model: nn.Module,
    batch: tuple[torch.Tensor, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
) -> float:
    """One optimisation step on one batch; returns the batch's loss before the update."""
    inputs, targets = batch
    model.train()  # dropout / batch norm behave as in training, whatever mode the caller left
    # .backward() ADDS to .grad: without this, every step would also apply all the earlier gradients.
    optimizer.zero_grad()
    loss = loss_fn(model(inputs), targets)
    loss.backward()
    optimizer.step()
    return loss.item()  # a plain float: keeping the tensor would keep its whole graph alive


def fit_linear_regression(
    x: torch.Tensor, y: torch.Tensor, lr: float = 0.1, steps: int = 500
) -> tuple[torch.Tensor, torch.Tensor]:
    """Full-batch gradient descent on the mean squared error of ``x @ weight + bias``, from zeros."""
    if x.ndim != 2:
        raise ValueError(f"x must have shape (N, D), got shape {tuple(x.shape)}")
    if y.shape != x.shape[:1]:
        raise ValueError(f"y must have shape ({x.shape[0]},) to match x, got shape {tuple(y.shape)}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be a non-negative integer, got {steps!r}")
    if not lr > 0:
        raise ValueError(f"lr must be positive, got {lr!r}")
    weight = torch.zeros(x.shape[1], dtype=x.dtype, device=x.device, requires_grad=True)
    bias = torch.zeros((), dtype=x.dtype, device=x.device, requires_grad=True)
    for _ in range(steps):
        loss = ((x @ weight + bias - y) ** 2).mean()
        loss.backward()
        with torch.no_grad():  # the update itself must not become part of the graph
            weight -= lr * weight.grad
            bias -= lr * bias.grad
        # backward() accumulates into .grad: clear it, or the next step would add this gradient again.
        weight.grad = None
        bias.grad = None
    return weight.detach(), bias.detach()


def to_device(obj: Any, device: str | torch.device) -> Any:
    """Move every tensor in nested dicts, lists and tuples to ``device``; leave everything else alone."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {key: to_device(value, device) for key, value in obj.items()}  # keys stay, in order
    if isinstance(obj, list):
        return [to_device(item, device) for item in obj]  # a new list: the caller's is not mutated
    if isinstance(obj, tuple):
        items = [to_device(item, device) for item in obj]
        # A namedtuple takes its fields as arguments; tuple() would lose the type and the field names.
        return type(obj)(*items) if hasattr(obj, "_fields") else tuple(items)
    return obj  # anything else (numbers, strings, None, objects) is returned as the very same object
