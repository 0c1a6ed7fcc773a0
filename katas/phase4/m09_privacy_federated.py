"""Kata m09_privacy_federated (months 9-10 of the learning path: federated learning and privacy).

Two ways to train on data that must stay private:

1. ``fedavg`` - federated averaging: every client (a phone, a hospital) trains a copy of the model on its own
   data, and only the weights travel; the server averages them, weighted by how many examples each client has.
2. ``per_sample_grads`` - one gradient per example, computed in one vectorised pass with ``torch.func``.
3. ``dp_sgd_step`` - one step of differentially private SGD: each example's gradient is clipped to a maximum
   norm, Gaussian noise is added, and only then does the optimizer step. No single example can move the
   model by much, and the noise hides what it did.

The learning path only names these topics ("federated learning for LLMs", "privacy-preserving techniques");
it has no code for them. Shape names below: B batch size (examples), P the number of parameters.
Run ``kata check m09_privacy_federated`` to check your work.
"""

from __future__ import annotations

import math  # noqa: F401 - math.isfinite, math.fsum
import numbers  # noqa: F401 - isinstance(w, numbers.Real) accepts Python and NumPy numbers
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap  # noqa: F401 - the tools of per_sample_grads


def fedavg(
    states: Sequence[Mapping[str, Tensor]], weights: Sequence[float] | Tensor | None = None
) -> dict[str, Tensor]:
    """Federated averaging: the weighted average of the clients' state dicts.

    ``states`` holds one state dict per client (``model.state_dict()`` after its local training): the same
    keys, and for each key tensors of the same shape and dtype. ``weights`` holds one number per client,
    usually its number of training examples; they are normalised inside (divided by their sum), so
    ``[10, 30]``, ``[1, 3]`` and ``[0.25, 0.75]`` mean the same. ``None`` (the default) weighs every client
    the same. A list or tuple of numbers, or a 1-D tensor, is accepted; a weight may be 0 (a client without
    data) as long as not all of them are 0.

    Returns a new ``dict`` with the keys of ``states[0]``, in its order (another client may list its keys in
    another order: match them by name, never by position). For each key:

    - a floating point tensor becomes ``sum_k weights[k] / sum(weights) * states[k][key]``, in the tensor's
      dtype and on its device. Accumulate in float32 or wider (``torch.promote_types(dtype, torch.float32)``)
      and round once at the end, so a bfloat16 average is as exact as bfloat16 allows; normalise the weights
      in float64 (Python floats) so a float64 average loses nothing;
    - an integer or bool tensor (a counter such as BatchNorm's ``num_batches_tracked``, a flag) cannot be
      averaged: it is taken from the FIRST client, unchanged.

    Every tensor of the result is new (no input's memory is shared: the server changes its global model in
    place later, and must not change a client's state with it) and carries no autograd history (compute under
    ``torch.no_grad()``). Tensors may have any shape, size 0 included, and any layout. Nothing passed in is
    modified.

    Why it works: if every client starts from the same weights and takes ONE step of SGD with the same
    learning rate on the mean loss of its own data, the weighted average of their new weights equals one SGD
    step on the mean loss of all the data together: the mean gradient of the union is the size-weighted mean
    of the clients' mean gradients. With several local steps this is only approximately true.

    ``ValueError`` (naming the offending key, sizes or value) for no states at all, clients whose keys differ,
    a key whose shapes or dtypes differ between clients, a number of weights other than the number of
    states, a weight that is negative, nan, inf or not a number (a bool is not a data size), a tensor of
    weights that is not 1-D, and weights that sum to 0.

    Example::

        >>> a = {"w": torch.tensor([0.0, 4.0]), "steps": torch.tensor(3)}
        >>> b = {"w": torch.tensor([8.0, 0.0]), "steps": torch.tensor(5)}
        >>> fedavg([a, b], weights=[1, 3])
        {'w': tensor([6., 1.]), 'steps': tensor(3)}
    """
    # TODO(m09_privacy_federated.fedavg): write your implementation here.
    raise NotImplementedError("m09_privacy_federated.fedavg is not implemented yet (try `kata hint m09_privacy_federated.fedavg`)")


def per_sample_grads(
    model: nn.Module, loss_fn: Callable[[Tensor, Tensor], Tensor], x: Tensor, y: Tensor
) -> dict[str, Tensor]:
    """The gradient of every example's own loss, for each parameter that requires grad, in one vectorised pass.

    ``x`` is (B, ...) and ``y`` is (B, ...): B examples along dimension 0 (``x`` may be floats of any shape,
    or token ids (B, T); ``y`` class ids (B,), token ids (B, T) or targets). Example i's loss is
    ``loss_fn(model(x[i:i+1]), y[i:i+1])``: the model and the loss see a batch of ONE example.

    Returns a dict ``{name: tensor}`` with one entry per parameter that requires grad, named and ordered as
    ``model.named_parameters()`` lists them (which lists a tied weight once, under its first name); the tensor
    is (B, *param.shape), row i the gradient of example i's loss, in the parameter's dtype and on its device,
    without autograd history. A frozen parameter (``requires_grad=False``) has no entry. B = 0 is legal and
    gives (0, *param.shape) tensors.

    A plain ``loss.backward()`` gives only the SUM over the batch. Looping over the examples gives each one,
    but B times slower. ``torch.func`` does the loop in one pass:

    1. ``params = {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}``;
    2. a function of ``(params, xi, yi)`` for ONE example: ``functional_call(model, (params, frozen, buffers),
       (xi.unsqueeze(0),))`` runs the model with the weights you pass (pass the frozen parameters and the
       buffers too), then ``loss_fn(out, yi.unsqueeze(0))``;
    3. ``grad(f)`` differentiates it with respect to its first argument, the dict of parameters;
    4. ``vmap(grad(f), in_dims=(None, 0, 0))(params, x, y)`` maps it over dimension 0 of ``x`` and ``y``,
       sharing ``params`` (``None``).

    The model must treat examples independently (no BatchNorm in training mode: use LayerNorm or GroupNorm,
    as Opacus requires) and draw no random numbers (no active dropout). Nothing is modified: not ``x``, not
    ``y``, not the parameters, not their ``.grad`` (a loop with ``backward()`` would fill it), not the
    model's ``train()``/``eval()`` mode. ``ValueError`` naming both sizes when ``x`` and ``y`` do not have
    the same size B in dimension 0 (``vmap`` raises it for you when it maps over dimension 0).

    Example::

        >>> model = nn.Linear(2, 1, bias=False)
        >>> _ = model.weight.data.fill_(1.0)               # prediction x[0] + x[1]
        >>> loss_fn = lambda out, t: ((out - t) ** 2).mean()
        >>> per_sample_grads(model, loss_fn, torch.tensor([[1.0, 0.0], [0.0, 2.0]]), torch.zeros(2, 1))
        {'weight': tensor([[[2., 0.]],
        <BLANKLINE>
                [[0., 8.]]])}
    """
    # TODO(m09_privacy_federated.per_sample_grads): write your implementation here.
    raise NotImplementedError("m09_privacy_federated.per_sample_grads is not implemented yet (try `kata hint m09_privacy_federated.per_sample_grads`)")


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
    """One step of differentially private SGD (DP-SGD, Abadi et al. 2016) on the batch ``x``, ``y``.

    With C = ``max_grad_norm``, sigma = ``noise_multiplier`` and B = the batch size:

    1. ``g_i`` = the gradient of example i's loss, from your ``per_sample_grads(model, loss_fn, x, y)``;
    2. its norm ``||g_i||`` is ONE norm over all the trainable parameters together (flatten them into one
       vector of P numbers), as Abadi et al. and Opacus do; clip: ``g_i * min(1, C / ||g_i||)``, so every
       clipped gradient has norm <= C, one shorter than C is kept as it is, and a zero gradient stays 0 (it
       must not become 0 / 0 = nan). (Opacus divides by ``||g_i|| + 1e-6``; this kata uses the exact factor.)
    3. add Gaussian noise to the SUM of the clipped gradients: ``sum_i clip(g_i) + N(0, (sigma * C)^2)``,
       independently for every one of the P numbers, drawn with ``torch.randn(..., generator=generator,
       dtype=p.dtype, device=p.device)`` (the parameter's dtype). ``generator=None`` draws from torch's global
       random generator, so ``torch.manual_seed`` makes it repeatable;
    4. divide by B: the private mean gradient. Its noise has standard deviation sigma * C / B.
    5. store it in each trainable parameter's ``.grad`` (REPLACING whatever was there, never adding to it),
       then call ``optimizer.step()`` once. Leave ``.grad`` in place after the step (the caller may look).

    Why C: one example changes the clipped sum by at most C, so noise of scale sigma * C hides whether it was
    in the batch; sigma = 0 gives exactly the mean of the clipped gradients (no privacy, but a useful test),
    and a C larger than every gradient's norm with sigma = 0 gives plain SGD on the mean loss.
    Opacus, the PyTorch library for DP-SGD, uses the same recipe: noise of std ``noise_multiplier *
    max_grad_norm`` added to the summed clipped gradients. It then divides by the EXPECTED batch size of its
    random (Poisson) sampling, where this kata divides by the actual batch size B.

    Parameters that do not require grad are left alone (their ``.grad`` too). No per-example gradient may be
    left behind on the parameters (no ``p.grad_sample``-like attribute: it costs B times the memory of the
    model). ``x`` and ``y`` are not modified, and the model's ``train()``/``eval()`` mode stays as it was.

    Returns ``loss_fn(model(x), y)`` computed BEFORE the step, as a tensor without autograd history (for
    logging).

    ``ValueError`` (naming the value) when ``max_grad_norm`` is not a finite number > 0, ``noise_multiplier``
    is not a finite number >= 0, or the batch is empty (B = 0 has no mean); mismatched batch sizes of ``x``
    and ``y`` are the ``ValueError`` of ``per_sample_grads``.

    Example::

        >>> model = nn.Linear(2, 1, bias=False)
        >>> _ = model.weight.data.fill_(1.0)
        >>> loss_fn = lambda out, t: ((out - t) ** 2).mean()
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> x, y = torch.tensor([[1.0, 0.0], [0.0, 2.0]]), torch.zeros(2, 1)
        >>> dp_sgd_step(model, loss_fn, x, y, opt, max_grad_norm=1.0, noise_multiplier=0.0)
        tensor(2.5000)
        >>> model.weight.grad    # per-example [2, 0] and [0, 8], each clipped to norm 1, then averaged
        tensor([[0.5000, 0.5000]])
    """
    # TODO(m09_privacy_federated.dp_sgd_step): write your implementation here.
    raise NotImplementedError("m09_privacy_federated.dp_sgd_step is not implemented yet (try `kata hint m09_privacy_federated.dp_sgd_step`)")
