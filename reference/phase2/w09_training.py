"""Reference solutions for w09_training (Weeks 9-10: advanced networks and training).

Fixes of the learning path's own code:
- ``LSTMWithAttention`` built ``nn.MultiheadAttention(hidden_dim, num_heads=8)`` without
  ``batch_first=True`` and fed it the LSTM's batch-first output: the attention then read the *batch* axis
  as the sequence axis and mixed different examples. It also had no causal mask, so a language model could
  read the tokens it is asked to predict. Both are fixed; a ``hidden_dim`` that ``num_heads`` does not
  divide raises a ``ValueError`` instead of an assertion deep inside PyTorch.
- ``train_model`` used ``output.view(...)`` (fails on non-contiguous outputs), a per-epoch cosine schedule
  from PyTorch and PyTorch's optimizer / clipping. Here it uses this module's ``AdamW``,
  ``clip_grad_norm_`` and a per-step ``warmup_cosine_lr``, and refuses an empty dataloader (the learning path's code
  divided by ``len(dataloader) == 0``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# --------------------------------------------------------------------------------------------------
# normalisation layers


class LayerNorm(nn.Module):
    """Layer normalisation over the trailing ``normalized_shape`` dimensions, like ``nn.LayerNorm``."""

    def __init__(self, normalized_shape: int | Sequence[int], eps: float = 1e-5) -> None:
        super().__init__()
        shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
        if not shape or any(int(s) != s or s < 1 for s in shape):
            raise ValueError(f"normalized_shape must be a positive int or a tuple of them, got {normalized_shape!r}")
        if not eps >= 0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        self.normalized_shape = tuple(int(s) for s in shape)
        self.eps = float(eps)
        # Parameters (not plain tensors) so that .parameters(), the optimizer and state_dict see them.
        self.weight = nn.Parameter(torch.ones(self.normalized_shape))
        self.bias = nn.Parameter(torch.zeros(self.normalized_shape))

    def forward(self, x: Tensor) -> Tensor:
        n = len(self.normalized_shape)
        if x.dim() < n or tuple(x.shape[-n:]) != self.normalized_shape:
            raise ValueError(
                f"LayerNorm({self.normalized_shape}) needs an input whose last dimensions are "
                f"{self.normalized_shape}; got shape {tuple(x.shape)}"
            )
        dims = tuple(range(-n, 0))  # every normalised dimension at once, never the batch
        mean = x.mean(dim=dims, keepdim=True)
        var = (x - mean).pow(2).mean(dim=dims, keepdim=True)  # biased (divide by N), as nn.LayerNorm
        return (x - mean) / torch.sqrt(var + self.eps) * self.weight + self.bias  # eps inside the sqrt


class BatchNorm1d(nn.Module):
    """Batch normalisation of (N, C) or (N, C, L) inputs with running statistics, like ``nn.BatchNorm1d``."""

    def __init__(self, num_features: int, momentum: float = 0.1, eps: float = 1e-5) -> None:
        super().__init__()
        if int(num_features) != num_features or num_features < 1:
            raise ValueError(f"num_features must be a positive int, got {num_features!r}")
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1], got {momentum}")
        if not eps >= 0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        self.num_features = int(num_features)
        self.momentum = float(momentum)
        self.eps = float(eps)
        self.weight = nn.Parameter(torch.ones(self.num_features))
        self.bias = nn.Parameter(torch.zeros(self.num_features))
        # Buffers: saved in state_dict and moved by .to()/.double(), but never trained.
        self.register_buffer("running_mean", torch.zeros(self.num_features))
        self.register_buffer("running_var", torch.ones(self.num_features))

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() not in (2, 3) or x.shape[1] != self.num_features:
            raise ValueError(
                f"BatchNorm1d({self.num_features}) needs input of shape (N, {self.num_features}) or "
                f"(N, {self.num_features}, L); got {tuple(x.shape)}"
            )
        dims = (0,) if x.dim() == 2 else (0, 2)  # statistics per channel, over batch (and length)
        shape = (1, -1) if x.dim() == 2 else (1, -1, 1)
        if self.training:
            n = x.numel() // self.num_features
            if n < 2:
                raise ValueError(
                    f"BatchNorm1d in training mode needs more than 1 value per channel; got input {tuple(x.shape)}"
                )
            mean = x.mean(dim=dims)
            var = x.var(dim=dims, unbiased=False)  # the batch is normalised with the biased variance
            with torch.no_grad():  # running stats are bookkeeping, not part of the graph
                m = self.momentum
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                # ...but the running variance estimates the population: unbiased, n / (n - 1)
                self.running_var.mul_(1 - m).add_(var.detach() * (n / (n - 1)), alpha=m)
        else:
            mean, var = self.running_mean, self.running_var  # eval: no dependence on the batch
        x_hat = (x - mean.reshape(shape)) / torch.sqrt(var.reshape(shape) + self.eps)
        return x_hat * self.weight.reshape(shape) + self.bias.reshape(shape)


class Dropout(nn.Module):
    """Inverted dropout: zero each element with probability p in training and scale the rest by 1/(1-p)."""

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"dropout probability p must be in [0, 1], got {p}")
        self.p = float(p)

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x  # eval: identity (the scaling during training already keeps E[x])
        keep = torch.rand_like(x) >= self.p  # P(keep) = 1 - p; rand is in [0, 1) so p = 1 keeps nothing
        scale = 0.0 if self.p == 1.0 else 1.0 / (1.0 - self.p)  # never divide by 1 - p = 0
        return torch.where(keep, x * scale, 0.0)  # a Python 0.0 takes x's dtype and device


# --------------------------------------------------------------------------------------------------
# recurrent cells


def _init_uniform(hidden_size: int, *params: Tensor) -> None:
    bound = 1.0 / math.sqrt(hidden_size)  # PyTorch's initialisation for RNN cells
    with torch.no_grad():
        for p in params:
            p.uniform_(-bound, bound)


def _check_cell_input(cell: LSTMCell | GRUCell, x: Tensor) -> None:
    if x.dim() != 2 or x.shape[1] != cell.input_size:
        raise ValueError(f"{type(cell).__name__} needs input of shape (B, {cell.input_size}); got {tuple(x.shape)}")


class LSTMCell(nn.Module):
    """One LSTM step with PyTorch's parameter layout (gates stacked in the order i, f, g, o)."""

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        if input_size < 1 or hidden_size < 1:
            raise ValueError(f"input_size and hidden_size must be positive, got {input_size} and {hidden_size}")
        self.input_size, self.hidden_size = int(input_size), int(hidden_size)
        self.weight_ih = nn.Parameter(torch.empty(4 * hidden_size, input_size))
        self.weight_hh = nn.Parameter(torch.empty(4 * hidden_size, hidden_size))
        self.bias_ih = nn.Parameter(torch.empty(4 * hidden_size))
        self.bias_hh = nn.Parameter(torch.empty(4 * hidden_size))
        _init_uniform(hidden_size, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)

    def forward(self, x: Tensor, state: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor]:
        _check_cell_input(self, x)
        if state is None:
            zeros = x.new_zeros(x.shape[0], self.hidden_size)
            state = (zeros, zeros)
        h, c = state
        gates = F.linear(x, self.weight_ih, self.bias_ih) + F.linear(h, self.weight_hh, self.bias_hh)  # (B, 4H)
        i, f, g, o = gates.chunk(4, dim=1)  # PyTorch's order: input, forget, cell candidate, output
        c_next = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h_next = torch.sigmoid(o) * torch.tanh(c_next)
        return h_next, c_next


class GRUCell(nn.Module):
    """One GRU step with PyTorch's parameter layout (gates stacked in the order r, z, n)."""

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        if input_size < 1 or hidden_size < 1:
            raise ValueError(f"input_size and hidden_size must be positive, got {input_size} and {hidden_size}")
        self.input_size, self.hidden_size = int(input_size), int(hidden_size)
        self.weight_ih = nn.Parameter(torch.empty(3 * hidden_size, input_size))
        self.weight_hh = nn.Parameter(torch.empty(3 * hidden_size, hidden_size))
        self.bias_ih = nn.Parameter(torch.empty(3 * hidden_size))
        self.bias_hh = nn.Parameter(torch.empty(3 * hidden_size))
        _init_uniform(hidden_size, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)

    def forward(self, x: Tensor, h: Tensor | None = None) -> Tensor:
        _check_cell_input(self, x)
        if h is None:
            h = x.new_zeros(x.shape[0], self.hidden_size)
        i_r, i_z, i_n = F.linear(x, self.weight_ih, self.bias_ih).chunk(3, dim=1)
        h_r, h_z, h_n = F.linear(h, self.weight_hh, self.bias_hh).chunk(3, dim=1)
        r = torch.sigmoid(i_r + h_r)  # reset gate
        z = torch.sigmoid(i_z + h_z)  # update gate: how much of the old state to keep
        n = torch.tanh(i_n + r * h_n)  # r multiplies (W_hn h + b_hn), bias included, as in PyTorch
        return (1 - z) * n + z * h


# --------------------------------------------------------------------------------------------------
# the learning path's model, fixed


class LSTMWithAttention(nn.Module):
    """Embedding -> LSTM -> causal multi-head self-attention -> Linear, batch first: (B, T) -> (B, T, V)."""

    def __init__(self, vocab_size: int, embedding_dim: int, hidden_dim: int, num_heads: int = 8) -> None:
        super().__init__()
        if num_heads < 1 or hidden_dim % num_heads != 0:
            raise ValueError(f"hidden_dim={hidden_dim} is not divisible by num_heads={num_heads}")
        self.embedding = nn.Embedding(vocab_size, embedding_dim)
        self.lstm = nn.LSTM(embedding_dim, hidden_dim, batch_first=True)
        # batch_first=True: the LSTM's output is (B, T, H); without it the attention reads B as time.
        self.attention = nn.MultiheadAttention(hidden_dim, num_heads, batch_first=True)
        self.linear = nn.Linear(hidden_dim, vocab_size)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 2:
            raise ValueError(f"LSTMWithAttention needs token ids of shape (B, T); got {tuple(x.shape)}")
        t = x.shape[1]
        lstm_out, _ = self.lstm(self.embedding(x))  # (B, T, H)
        # nn.MultiheadAttention's bool mask means True = NOT allowed: hide every key after the query.
        future = torch.ones(t, t, dtype=torch.bool, device=x.device).triu(1)
        attended, _ = self.attention(lstm_out, lstm_out, lstm_out, attn_mask=future, need_weights=False)
        return self.linear(attended)  # (B, T, V)


# --------------------------------------------------------------------------------------------------
# optimisation


def clip_grad_norm_(parameters: Iterable[Tensor] | Tensor, max_norm: float, norm_type: float = 2.0) -> Tensor:
    """Scale every gradient by one factor so that their global norm is at most max_norm; return the norm."""
    if isinstance(parameters, Tensor):
        parameters = [parameters]
    grads = [p.grad for p in parameters if p.grad is not None]  # one pass: `parameters` may be a generator
    max_norm, norm_type = float(max_norm), float(norm_type)
    if not max_norm >= 0:
        raise ValueError(f"max_norm must be >= 0, got {max_norm}")
    if not norm_type > 0:
        raise ValueError(f"norm_type must be positive (or inf), got {norm_type}")
    if not grads:
        return torch.tensor(0.0)
    norms = [torch.linalg.vector_norm(g.detach(), norm_type) for g in grads]
    total = torch.linalg.vector_norm(torch.stack(norms), norm_type)  # the norm of all grads as one vector
    coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)  # never scale up; 1e-6 as in PyTorch
    for g in grads:
        g.detach().mul_(coef)  # in place: whoever holds the gradient tensor sees the clipping
    return total


class AdamW(torch.optim.Optimizer):
    """Adam with decoupled weight decay (Loshchilov & Hutter), matching ``torch.optim.AdamW``."""

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
    ) -> None:
        if not lr >= 0:
            raise ValueError(f"invalid learning rate lr={lr}: it must be >= 0")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"invalid betas={betas}: both must be in [0, 1)")
        if not eps >= 0:
            raise ValueError(f"invalid eps={eps}: it must be >= 0")
        if not weight_decay >= 0:
            raise ValueError(f"invalid weight_decay={weight_decay}: it must be >= 0")
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, wd, eps = group["lr"], group["weight_decay"], group["eps"]  # read every step: schedulers edit them
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                state = self.state[p]  # in self.state, so state_dict() / load_state_dict() carry it
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                state["step"] += 1
                t = state["step"]
                m, v = state["exp_avg"], state["exp_avg_sq"]
                p.mul_(1 - lr * wd)  # decoupled decay: shrink the weights, never touch the gradient
                m.mul_(beta1).add_(grad, alpha=1 - beta1)
                v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                # bias correction: m and v start at 0, so early averages are too small by 1 - beta^t
                bias1 = 1 - beta1**t
                bias2 = 1 - beta2**t
                denom = (v.sqrt() / math.sqrt(bias2)).add_(eps)
                p.addcdiv_(m, denom, value=-lr / bias1)
        return loss


def warmup_cosine_lr(step: int, warmup_steps: int, total_steps: int, max_lr: float, min_lr: float = 0.0) -> float:
    """Linear warmup from 0 to max_lr over warmup_steps, then cosine decay to min_lr at total_steps."""
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if not 0 <= warmup_steps < total_steps:
        raise ValueError(f"need 0 <= warmup_steps < total_steps, got warmup_steps={warmup_steps}, "
                         f"total_steps={total_steps}")
    if not 0 <= min_lr <= max_lr:
        raise ValueError(f"need 0 <= min_lr <= max_lr, got min_lr={min_lr}, max_lr={max_lr}")
    if step < warmup_steps:
        return max_lr * step / warmup_steps  # reaches max_lr exactly at step == warmup_steps
    if step >= total_steps:
        return float(min_lr)
    progress = (step - warmup_steps) / (total_steps - warmup_steps)  # 0 at the warmup's end, 1 at the end
    return min_lr + 0.5 * (max_lr - min_lr) * (1.0 + math.cos(math.pi * progress))


def train_model(
    model: nn.Module,
    dataloader: Iterable[tuple[Tensor, Tensor]],
    epochs: int = 100,
    lr: float = 1e-3,
    weight_decay: float = 0.01,
    max_norm: float = 1.0,
    warmup_steps: int = 0,
    min_lr: float = 0.0,
) -> list[float]:
    """Train with AdamW, per-step warmup-cosine learning rates and gradient clipping; per-epoch mean losses."""
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    batches_per_epoch = len(dataloader)
    if batches_per_epoch == 0:
        raise ValueError("the dataloader yields no batches (len(dataloader) == 0): nothing to train on")
    total_steps = epochs * batches_per_epoch
    optimizer = AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    losses: list[float] = []
    step = 0
    for _ in range(epochs):
        model.train()
        total, count = 0.0, 0
        for inputs, targets in dataloader:
            for group in optimizer.param_groups:  # the rate for THIS step, set before optimizer.step()
                group["lr"] = warmup_cosine_lr(step, warmup_steps, total_steps, lr, min_lr)
            optimizer.zero_grad()  # gradients accumulate otherwise
            output = model(inputs)
            # reshape (not view): works for any (…, V) output, contiguous or not
            loss = F.cross_entropy(output.reshape(-1, output.shape[-1]), targets.reshape(-1))
            loss.backward()
            clip_grad_norm_(model.parameters(), max_norm)  # after backward, before the step
            optimizer.step()
            total += loss.item()
            count += 1
            step += 1
        losses.append(total / count)
    return losses
