"""Kata w09_training (Weeks 9-10): advanced networks and training.

You rebuild, from tensor operations, the layers and the training machinery that PyTorch hands you, and the
checks prove each one equal to PyTorch's own on the same weights and inputs:

1. ``LayerNorm`` and 2. ``BatchNorm1d`` - the two normalisations, incl. BatchNorm's running statistics;
3. ``Dropout`` - inverted dropout;
4. ``LSTMCell`` and ``GRUCell`` - one step of each recurrent cell, with PyTorch's parameter layout;
5. ``LSTMWithAttention`` - the learning path's model, with its two bugs fixed;
6. ``clip_grad_norm_`` - global-norm gradient clipping;
7. ``AdamW`` - the optimizer, as a ``torch.optim.Optimizer`` subclass;
8. ``warmup_cosine_lr`` - the learning-rate schedule of most LLM training runs;
9. ``train_model`` - the learning path's training loop, built from 6-8.

Rules for the whole module: build on tensor operations (``torch.*``, ``F.linear``, ``torch.sigmoid``, ...)
but not on the built-in you are re-implementing (``F.layer_norm``, ``nn.BatchNorm1d``, ``F.dropout``,
``nn.LSTMCell``, ``torch.nn.utils.clip_grad_norm_``, ``torch.optim.AdamW`` ...): the checks compare you with
those, and some checks switch them off. Work in the input's dtype; the checks use float64.

Shape names: B batch, T sequence length, C channels / features, I input size, H hidden size, V vocabulary.
Run ``kata check w09_training`` to check your work, ``kata hint w09_training.LayerNorm`` for a hint.
"""


from __future__ import annotations

import math  # noqa: F401 - math.sqrt, math.cos and math.pi will be useful
from collections.abc import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F  # noqa: F401 - F.linear and F.cross_entropy will be useful
from torch import Tensor, nn

# --------------------------------------------------------------------------------------------------
# normalisation layers


class LayerNorm(nn.Module):
    """Layer normalisation over the trailing ``normalized_shape`` dimensions, like ``nn.LayerNorm``.

    For every position (every index of the leading dimensions) take the values of the last
    ``len(normalized_shape)`` dimensions together, and normalise them::

        mean = x.mean(over the normalised dims)
        var  = ((x - mean) ** 2).mean(over the normalised dims)    # biased: divide by N, not N - 1
        y    = (x - mean) / sqrt(var + eps) * weight + bias

    Layout (the checks copy ``nn.LayerNorm``'s parameters in by these names):
        ``self.weight``: ``nn.Parameter`` of shape ``normalized_shape``, initialised to ones;
        ``self.bias``: ``nn.Parameter`` of shape ``normalized_shape``, initialised to zeros;
        ``self.normalized_shape`` (a tuple of ints) and ``self.eps``.
        Plain tensors instead of ``nn.Parameter`` would be invisible to ``.parameters()``, so an optimizer
        would never train them.

    Rules:
        - ``normalized_shape`` is an int (normalise the last dimension) or a sequence of ints
          (normalise the last ``len(normalized_shape)`` dimensions - all of them at once, not one by one).
        - The variance is the biased one (``unbiased=False`` / ``correction=0``), and eps goes INSIDE the
          square root. Both details change the result visibly for short rows or large eps.
        - Subtract the mean before squaring. The shortcut ``E[x**2] - E[x]**2`` cancels catastrophically when
          a row's mean is large compared with its spread: a float32 row around 1e4 loses every digit (the
          checks use such rows). Do not modify ``x`` in place, and accept non-contiguous ``x``.
        - An input whose trailing dimensions are not ``normalized_shape`` raises ``ValueError`` naming the
          shape it got. An empty or non-positive ``normalized_shape`` or a negative eps raises ``ValueError``
          naming it.
        - Gradients flow to ``x``, ``weight`` and ``bias`` through plain autograd (do not detach the mean).

    Example::

        >>> ln = LayerNorm(3)
        >>> ln(torch.tensor([[1.0, 2.0, 3.0]]))
        tensor([[-1.2247,  0.0000,  1.2247]], grad_fn=<AddBackward0>)
        >>> LayerNorm((2, 3))(torch.zeros(4, 2, 3)).shape
        torch.Size([4, 2, 3])
        >>> LayerNorm(4)(torch.zeros(2, 3))
        Traceback (most recent call last):
        ValueError: LayerNorm((4,)) needs an input whose last dimensions are (4,); got shape (2, 3)
    """

    def __init__(self, normalized_shape: int | Sequence[int], eps: float = 1e-5) -> None:
        # TODO(w09_training.LayerNorm): write your implementation here.
        raise NotImplementedError("w09_training.LayerNorm.__init__ is not implemented yet (try `kata hint w09_training.LayerNorm`)")

    def forward(self, x: Tensor) -> Tensor:
        # TODO(w09_training.LayerNorm): write your implementation here.
        raise NotImplementedError("w09_training.LayerNorm.forward is not implemented yet (try `kata hint w09_training.LayerNorm`)")


class BatchNorm1d(nn.Module):
    """Batch normalisation of (N, C) or (N, C, L) inputs with running statistics, like ``nn.BatchNorm1d``.

    Note the argument order: ``BatchNorm1d(num_features, momentum, eps)`` (PyTorch's is ``eps`` first;
    pass them by keyword and it does not matter).

    Each channel c is normalised with statistics taken over every other axis: the batch axis N, and the
    length axis L for 3-D input.

    Training mode (``module.train()``, the default):
        1. ``mean`` and biased ``var`` per channel from the batch; ``y = (x - mean) / sqrt(var + eps) *
           weight + bias``. Gradients flow through ``mean`` and ``var`` (they depend on ``x``).
        2. Update the running statistics, without gradient (``torch.no_grad()``), with n = N (or N * L)::

               running_mean = (1 - momentum) * running_mean + momentum * mean
               running_var  = (1 - momentum) * running_var  + momentum * var * n / (n - 1)

           The running variance is the UNBIASED one (it estimates the population for later use), while
           the batch is normalised with the biased one - PyTorch does exactly this. Note the momentum
           convention: momentum is the weight of the NEW batch (Keras uses the opposite convention).
    Eval mode (``module.eval()``):
        Normalise with ``running_mean`` and ``running_var``; the batch's own statistics are not used and
        the running statistics do not change. A model in eval mode must give each example the same output
        whatever else is in its batch.

    Layout: ``self.weight`` (ones) and ``self.bias`` (zeros), ``nn.Parameter`` of shape (C,);
    ``running_mean`` (zeros) and ``running_var`` (ones) of shape (C,) registered as BUFFERS
    (``self.register_buffer``): saved in ``state_dict`` and converted by ``.double()``, never trained.
    Also store ``num_features``, ``momentum`` and ``eps``.

    Rules:
        - Input that is not (N, C) or (N, C, L) with C == num_features raises ``ValueError`` naming its shape.
        - In training mode, a single value per channel (N * L == 1) raises ``ValueError`` (its variance is
          undefined), as PyTorch does.
        - ``momentum`` outside [0, 1], ``eps < 0`` or ``num_features < 1`` raise ``ValueError`` naming the value.

    Example::

        >>> bn = BatchNorm1d(2, momentum=0.5)
        >>> bn(torch.tensor([[0.0, 10.0], [2.0, 30.0]]))
        tensor([[-1.0000, -1.0000],
                [ 1.0000,  1.0000]], grad_fn=<AddBackward0>)
        >>> bn.running_mean, bn.running_var          # 0.5 * old + 0.5 * (mean, unbiased var)
        (tensor([ 0.5000, 10.0000]), tensor([  1.5000, 100.5000]))
    """

    def __init__(self, num_features: int, momentum: float = 0.1, eps: float = 1e-5) -> None:
        # TODO(w09_training.BatchNorm1d): write your implementation here.
        raise NotImplementedError("w09_training.BatchNorm1d.__init__ is not implemented yet (try `kata hint w09_training.BatchNorm1d`)")

    def forward(self, x: Tensor) -> Tensor:
        # TODO(w09_training.BatchNorm1d): write your implementation here.
        raise NotImplementedError("w09_training.BatchNorm1d.forward is not implemented yet (try `kata hint w09_training.BatchNorm1d`)")


class Dropout(nn.Module):
    """Inverted dropout, like ``nn.Dropout(p)``.

    Training mode: every element is zeroed independently with probability ``p``; the survivors are
    multiplied by ``1 / (1 - p)``. The scaling keeps the expectation: E[y] = (1 - p) * x / (1 - p) = x, so
    the next layer sees inputs of the same size in training and in evaluation.

    Eval mode: the identity (return ``x`` itself, no randomness, no scaling).

    Rules:
        - Draw the mask from torch's random generator (``torch.rand_like`` or ``torch.bernoulli``), so that
          ``torch.manual_seed`` makes it reproducible. Do not modify ``x`` in place.
        - ``p = 0`` in training is the identity; ``p = 1`` gives all zeros - not ``nan``: ``1 / (1 - p)`` is a
          division by zero, and ``0 * inf`` is ``nan``. The gradient at p = 1 is zero, not ``nan`` either.
        - The gradient of ``y`` with respect to ``x`` is the same mask and scale: 0 where dropped,
          ``1 / (1 - p)`` where kept (autograd gives you this if you compute ``y`` from ``x``).
        - ``p`` outside [0, 1] raises ``ValueError`` naming it. Store ``p`` as ``self.p``.

    Example::

        >>> drop = Dropout(0.5)
        >>> y = drop(torch.ones(8))           # about half zeros, the rest 2.0
        >>> set(y.tolist()) <= {0.0, 2.0}
        True
        >>> drop.eval()(torch.ones(3))
        tensor([1., 1., 1.])
    """

    def __init__(self, p: float = 0.5) -> None:
        # TODO(w09_training.Dropout): write your implementation here.
        raise NotImplementedError("w09_training.Dropout.__init__ is not implemented yet (try `kata hint w09_training.Dropout`)")

    def forward(self, x: Tensor) -> Tensor:
        # TODO(w09_training.Dropout): write your implementation here.
        raise NotImplementedError("w09_training.Dropout.forward is not implemented yet (try `kata hint w09_training.Dropout`)")


# --------------------------------------------------------------------------------------------------
# recurrent cells


class LSTMCell(nn.Module):
    """One step of an LSTM, like ``nn.LSTMCell(input_size, hidden_size)``.

    Layout (identical to PyTorch's, so ``load_state_dict(nn.LSTMCell(...).state_dict())`` works):
        ``weight_ih`` (4H, I), ``weight_hh`` (4H, H), ``bias_ih`` (4H,), ``bias_hh`` (4H,), all
        ``nn.Parameter``, initialised uniformly in [-1/sqrt(H), 1/sqrt(H)] (``tensor.uniform_`` under
        ``torch.no_grad()``). Also store ``input_size`` and ``hidden_size``.

    The four gates are stacked along the first axis of the weights in PyTorch's order
    **i, f, g, o** (input, forget, cell candidate, output)::

        gates = x @ weight_ih.T + bias_ih + h @ weight_hh.T + bias_hh      # (B, 4H)
        i, f, g, o = gates.chunk(4, dim=1)
        c' = sigmoid(f) * c + sigmoid(i) * tanh(g)
        h' = sigmoid(o) * tanh(c')

    Other libraries stack gates in other orders (Keras: i, f, c, o); with PyTorch's weights any other
    order gives a different cell.

    ``forward(x, state=None)``: ``x`` is (B, I); ``state`` is ``(h, c)``, each (B, H), zeros when None.
    Returns ``(h', c')``, each (B, H), as new tensors (the state passed in is not modified). Input that is
    not (B, I) raises ``ValueError`` naming its shape; ``input_size < 1`` or ``hidden_size < 1`` raise
    ``ValueError`` naming the value.

    Example::

        >>> cell = LSTMCell(3, 5)
        >>> h, c = cell(torch.randn(2, 3))
        >>> h.shape, c.shape
        (torch.Size([2, 5]), torch.Size([2, 5]))
        >>> h, c = cell(torch.randn(2, 3), (h, c))      # the next step
    """

    def __init__(self, input_size: int, hidden_size: int) -> None:
        # TODO(w09_training.LSTMCell): write your implementation here.
        raise NotImplementedError("w09_training.LSTMCell.__init__ is not implemented yet (try `kata hint w09_training.LSTMCell`)")

    def forward(self, x: Tensor, state: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor]:
        # TODO(w09_training.LSTMCell): write your implementation here.
        raise NotImplementedError("w09_training.LSTMCell.forward is not implemented yet (try `kata hint w09_training.LSTMCell`)")


class GRUCell(nn.Module):
    """One step of a GRU, like ``nn.GRUCell(input_size, hidden_size)``.

    Layout as ``LSTMCell`` but with three gates: ``weight_ih`` (3H, I), ``weight_hh`` (3H, H), ``bias_ih``
    and ``bias_hh`` (3H,), same initialisation, gates stacked in PyTorch's order **r, z, n**::

        i_r, i_z, i_n = (x @ weight_ih.T + bias_ih).chunk(3, dim=1)
        h_r, h_z, h_n = (h @ weight_hh.T + bias_hh).chunk(3, dim=1)
        r  = sigmoid(i_r + h_r)              # reset gate
        z  = sigmoid(i_z + h_z)              # update gate
        n  = tanh(i_n + r * h_n)             # r multiplies h_n = W_hn h + b_hn, its bias included
        h' = (1 - z) * n + z * h             # z keeps the OLD state, 1 - z takes the new one

    Two details differ between papers and PyTorch, and the checks use PyTorch's: ``r`` multiplies
    ``W_hn h + b_hn`` (not ``W_hn (r * h)``), and ``z`` weighs the old state ``h``.

    ``forward(x, h=None)``: ``x`` is (B, I), ``h`` is (B, H) (zeros when None); returns ``h'`` (B, H).
    Input that is not (B, I) raises ``ValueError`` naming its shape; ``input_size < 1`` or
    ``hidden_size < 1`` raise ``ValueError`` naming the value.

    Example::

        >>> cell = GRUCell(3, 5)
        >>> cell(torch.randn(2, 3)).shape
        torch.Size([2, 5])
    """

    def __init__(self, input_size: int, hidden_size: int) -> None:
        # TODO(w09_training.LSTMCell): write your implementation here.
        raise NotImplementedError("w09_training.GRUCell.__init__ is not implemented yet (part of w09_training.LSTMCell: try `kata hint w09_training.LSTMCell`)")

    def forward(self, x: Tensor, h: Tensor | None = None) -> Tensor:
        # TODO(w09_training.LSTMCell): write your implementation here.
        raise NotImplementedError("w09_training.GRUCell.forward is not implemented yet (part of w09_training.LSTMCell: try `kata hint w09_training.LSTMCell`)")


# --------------------------------------------------------------------------------------------------
# the learning path's model, fixed


class LSTMWithAttention(nn.Module):
    """The learning path's LSTM + attention language model, with its two bugs fixed.

    (B, T) token ids -> embedding (B, T, E) -> LSTM (B, T, H) -> causal self-attention (B, T, H) ->
    linear (B, T, V) logits: the logits at position t predict token t + 1.

    The learning path wrote::

        self.attention = nn.MultiheadAttention(hidden_dim, num_heads=8)      # bug 1
        ...
        attended, _ = self.attention(lstm_out, lstm_out, lstm_out)           # bug 2

    Bug 1: ``nn.MultiheadAttention`` expects (T, B, H) unless it is built with ``batch_first=True``. The
    LSTM (built with ``batch_first=True``) returns (B, T, H), so the attention reads the *batch* axis as
    the time axis: each example attends to the other examples of the batch at the same position, and its
    output depends on what else is in the batch. Nothing crashes - the shapes fit - but it is wrong.
    Bug 2: no causal mask. Position t attends to every position, including t + 1 .. T - 1, so a language
    model trained this way reads the very token it has to predict and learns nothing useful.

    Layout (the checks load the reference's ``state_dict`` into yours, so keep exactly these):
        ``embedding = nn.Embedding(vocab_size, embedding_dim)``;
        ``lstm = nn.LSTM(embedding_dim, hidden_dim, batch_first=True)``;
        ``attention = nn.MultiheadAttention(hidden_dim, num_heads, batch_first=True)``;
        ``linear = nn.Linear(hidden_dim, vocab_size)``.

    ``forward(x)``: ``x`` is a (B, T) integer tensor; returns (B, T, vocab_size). Pass the causal mask as
    ``attn_mask``: a (T, T) bool tensor in which **True means "may NOT attend"** (PyTorch's convention for
    ``nn.MultiheadAttention``): True strictly above the diagonal. A float mask is *added* to the scores, so
    a 0/1 float mask does not hide anything; use bool (or 0 / -inf floats).

    Rules:
        - The output at position t must not change when any token after t changes, and example b's
          output must not depend on the other examples in the batch.
        - ``hidden_dim`` not divisible by ``num_heads`` (or ``num_heads < 1``) raises ``ValueError`` naming
          both (PyTorch only fails an ``assert`` deep inside ``nn.MultiheadAttention``).
        - ``x`` that is not 2-D raises ``ValueError`` naming its shape.

    Example::

        >>> model = LSTMWithAttention(vocab_size=20, embedding_dim=8, hidden_dim=16, num_heads=4)
        >>> model(torch.randint(0, 20, (3, 7))).shape
        torch.Size([3, 7, 20])
        >>> LSTMWithAttention(20, 8, hidden_dim=10, num_heads=4)
        Traceback (most recent call last):
        ValueError: hidden_dim=10 is not divisible by num_heads=4
    """

    def __init__(self, vocab_size: int, embedding_dim: int, hidden_dim: int, num_heads: int = 8) -> None:
        # TODO(w09_training.LSTMWithAttention): write your implementation here.
        raise NotImplementedError("w09_training.LSTMWithAttention.__init__ is not implemented yet (try `kata hint w09_training.LSTMWithAttention`)")

    def forward(self, x: Tensor) -> Tensor:
        # TODO(w09_training.LSTMWithAttention): write your implementation here.
        raise NotImplementedError("w09_training.LSTMWithAttention.forward is not implemented yet (try `kata hint w09_training.LSTMWithAttention`)")


# --------------------------------------------------------------------------------------------------
# optimisation


def clip_grad_norm_(parameters: Iterable[Tensor] | Tensor, max_norm: float, norm_type: float = 2.0) -> Tensor:
    """Clip the gradients of ``parameters`` in place by their GLOBAL norm; like ``torch.nn.utils.clip_grad_norm_``.

    The global norm treats every gradient as one long vector::

        total = || [ ||g_1||, ||g_2||, ... ] ||          # norms of the per-parameter norms (norm_type each)
        coef  = min(1, max_norm / (total + 1e-6))
        g_k  *= coef                                      # the SAME factor for every gradient

    One factor for all keeps the direction of the whole update; clipping each parameter separately
    changes it (and lets the global norm exceed max_norm). When the norm is already below ``max_norm``
    the coefficient is 1: never scale a gradient up.

    Args:
        parameters: an iterable of tensors (often the *generator* ``model.parameters()``, which can be
            iterated only once - collect the gradients in one pass) or a single tensor. Parameters whose
            ``.grad`` is None are skipped.
        max_norm: the largest allowed global norm (``ValueError`` if negative).
        norm_type: the p of the p-norm (``float("inf")`` allowed: the largest absolute value);
            ``ValueError`` if not positive.

    Returns:
        The global norm BEFORE clipping, as a 0-dim tensor (``torch.tensor(0.0)`` when no parameter has
        a gradient). Modify ``p.grad`` in place; create no new ``.grad`` tensors.

    Example::

        >>> w = torch.zeros(2, requires_grad=True); w.grad = torch.tensor([3.0, 4.0])
        >>> clip_grad_norm_([w], max_norm=1.0)
        tensor(5.)
        >>> w.grad                                       # scaled by 1 / (5 + 1e-6)
        tensor([0.6000, 0.8000])
    """
    # TODO(w09_training.clip_grad_norm_): write your implementation here.
    raise NotImplementedError("w09_training.clip_grad_norm_ is not implemented yet (try `kata hint w09_training.clip_grad_norm_`)")


class AdamW(torch.optim.Optimizer):
    """Adam with decoupled weight decay (Loshchilov & Hutter, 2019), matching ``torch.optim.AdamW``.

    Subclass ``torch.optim.Optimizer``: in ``__init__`` check the hyper-parameters and call
    ``super().__init__(params, defaults)`` with ``defaults = {"lr": ..., "betas": ..., "eps": ...,
    "weight_decay": ...}``; the base class builds ``self.param_groups`` (so parameter groups with their own
    lr or weight_decay work) and ``self.state`` (a dict per parameter, which ``state_dict()`` saves and
    ``load_state_dict()`` restores). You inherit ``zero_grad``, ``add_param_group`` and both state methods.

    ``step(closure=None)``, for every group and every parameter ``p`` with a gradient ``g`` (skip
    ``p.grad is None``), with ``lr``, ``(beta1, beta2)``, ``eps``, ``wd`` read from the group at every step
    (schedulers change ``group["lr"]`` between steps), and the state in ``self.state[p]``::

        t  = t + 1                                   # per-parameter step count, starts at 0
        p  = p * (1 - lr * wd)                       # decoupled weight decay, applied to the weights
        m  = beta1 * m + (1 - beta1) * g             # state["exp_avg"], starts at zeros
        v  = beta2 * v + (1 - beta2) * g * g         # state["exp_avg_sq"], starts at zeros
        m_hat = m / (1 - beta1 ** t)                 # bias correction: m and v start at 0, so
        v_hat = v / (1 - beta2 ** t)                 # early averages are far too small without it
        p  = p - lr * m_hat / (sqrt(v_hat) + eps)    # eps outside the sqrt

    Two classic mistakes: dropping the bias correction (the first steps are then ~10x too small, and with
    ``v`` tiny the steps swing wildly later), and adding ``wd * p`` to the gradient - that is L2
    regularisation, ``Adam(weight_decay=...)``, where the decay is divided by ``sqrt(v_hat)`` and so
    shrinks parameters with large gradients less. AdamW shrinks every weight by the same factor.

    Keep the update under ``torch.no_grad()`` (the decorator on ``step`` does that) and change ``p`` in
    place (``p.mul_``, ``p.addcdiv_``): the model holds these very tensors. If ``closure`` is given, call
    it under ``torch.enable_grad()`` first and return its loss; otherwise return None.

    Invalid hyper-parameters raise ``ValueError`` naming the value: ``lr < 0``, a beta outside [0, 1),
    ``eps < 0``, ``weight_decay < 0``.

    Example::

        >>> w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
        >>> opt = AdamW([w], lr=0.1, weight_decay=0.0)
        >>> (w ** 2).sum().backward(); opt.step()
        >>> w.data                                       # the first step is lr * sign(g) (bias-corrected)
        tensor([ 0.9000, -1.9000])
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
    ) -> None:
        # TODO(w09_training.AdamW): write your implementation here.
        raise NotImplementedError("w09_training.AdamW.__init__ is not implemented yet (try `kata hint w09_training.AdamW`)")

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        # TODO(w09_training.AdamW): write your implementation here.
        raise NotImplementedError("w09_training.AdamW.step is not implemented yet (try `kata hint w09_training.AdamW`)")


def warmup_cosine_lr(step: int, warmup_steps: int, total_steps: int, max_lr: float, min_lr: float = 0.0) -> float:
    """The learning rate at optimizer step ``step`` (0-based): linear warmup, then cosine decay.

    ::

        step <  warmup_steps:           max_lr * step / warmup_steps
        warmup_steps <= step <= total:  min_lr + 0.5 * (max_lr - min_lr) * (1 + cos(pi * progress)),
                                        progress = (step - warmup_steps) / (total_steps - warmup_steps)
        step >= total_steps:            min_lr

    So the rate starts at 0, climbs by ``max_lr / warmup_steps`` per step, is exactly ``max_lr`` at
    ``step == warmup_steps`` (both formulas agree there: the schedule is continuous), falls monotonically
    along half a cosine, and is exactly ``min_lr`` at ``total_steps`` and after. With ``warmup_steps = 0``
    the decay starts at ``max_lr`` at step 0.

    Mind the off-by-one: ``(step + 1) / warmup_steps`` reaches ``max_lr`` one step early (at
    ``warmup_steps - 1``) and then stays flat for a step; ``(step - warmup_steps + 1)`` in ``progress``
    jumps down at the end of the warmup.

    Rules: returns a Python float. ``ValueError`` naming the value for ``step < 0``, unless
    ``0 <= warmup_steps < total_steps``, and unless ``0 <= min_lr <= max_lr``.

    Example::

        >>> [round(warmup_cosine_lr(s, 2, 6, max_lr=1.0, min_lr=0.0), 4) for s in range(8)]
        [0.0, 0.5, 1.0, 0.8536, 0.5, 0.1464, 0.0, 0.0]
    """
    # TODO(w09_training.warmup_cosine_lr): write your implementation here.
    raise NotImplementedError("w09_training.warmup_cosine_lr is not implemented yet (try `kata hint w09_training.warmup_cosine_lr`)")


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
    """The learning path's training loop, built from this module's ``AdamW``, ``clip_grad_norm_`` and schedule.

    ``dataloader`` yields ``(inputs, targets)`` batches and has a ``len`` (a ``DataLoader`` or a list);
    ``model(inputs)`` returns logits (..., V) and ``targets`` holds class ids of the matching shape (...)
    - e.g. (B, T, V) and (B, T) for a language model, or (B, V) and (B,).

    Create ``AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)`` once. Number the optimizer
    steps s = 0, 1, ..., total_steps - 1 over all epochs (``total_steps = epochs * len(dataloader)``). For
    every epoch: ``model.train()``; then for every batch:

        1. set ``group["lr"] = warmup_cosine_lr(s, warmup_steps, total_steps, lr, min_lr)`` in every param
           group (the rate of THIS step, set before ``optimizer.step()``);
        2. ``zero_grad``, forward, cross-entropy loss (mean over all tokens: flatten the logits to (-1, V)
           with ``reshape`` - the learning path's ``view`` fails on non-contiguous tensors - and the targets to (-1,));
        3. ``loss.backward()``, then ``clip_grad_norm_(model.parameters(), max_norm)``, then
           ``optimizer.step()`` - clipping after the step would clip gradients that were already used.

    Returns one float per epoch: the mean of that epoch's batch losses (each measured before its step).

    Rules: ``epochs < 1`` raises ``ValueError`` naming it; so does a dataloader with no batches
    (the learning path's code divided by ``len(dataloader)`` = 0).

    Example::

        >>> model = nn.Sequential(nn.Embedding(5, 8), nn.Linear(8, 5))
        >>> x = torch.tensor([[0, 1, 2, 3]]); y = torch.tensor([[1, 2, 3, 4]])
        >>> losses = train_model(model, [(x, y)], epochs=30, lr=0.05)
        >>> len(losses), losses[-1] < losses[0]
        (30, True)
    """
    # TODO(w09_training.train_model): write your implementation here.
    raise NotImplementedError("w09_training.train_model is not implemented yet (try `kata hint w09_training.train_model`)")
