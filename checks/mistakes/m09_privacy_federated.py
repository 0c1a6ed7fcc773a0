"""Catalogued mistakes and correct variants for m09_privacy_federated.

Three kinds of entries, each the simplest way to state its mistake:

- ``@mutant``: a small slip in the reference's own code (a dropped ``.clone()``, a missing check);
- a function written out, for mistakes that change the shape of the code (a loop instead of ``vmap``, a
  clip of the batch mean instead of each example);
- ``@variant``: an unusual but correct implementation, written in another style than the reference, that
  every check must accept (the proof that the checks do not over-fit the reference).

The learning path has no code for this module, so there are no mistakes of its own to catalogue.
"""

from __future__ import annotations

import math
import numbers

import torch
from torch.func import functional_call, grad, jacrev, vmap

from checks.harness.catalogue import mistake, mutant, variant
from reference.phase4.m09_privacy_federated import _normalised_weights, dp_sgd_step, fedavg, per_sample_grads

# --------------------------------------------------------------------------------------------------
# fedavg


def _checked(states, weights):
    """The reference's validation (keys, shapes, dtypes, weights), so each mistake is caught where it differs."""
    states = list(states)
    if not states:
        raise ValueError("no client states")
    shares = _normalised_weights(weights, len(states))
    for state in states:
        if set(state) != set(states[0]):
            raise ValueError(f"keys differ: {sorted(set(state) ^ set(states[0]))}")
        for key in state:
            if state[key].shape != states[0][key].shape or state[key].dtype != states[0][key].dtype:
                raise ValueError(f"{key!r} differs between clients")
    return states, shares


@mistake("fedavg", "the weights are ignored: every client counts the same, whatever its number of examples")
def fedavg_ignores_weights(states, weights=None):
    states, _ = _checked(states, weights)
    return fedavg(states, None)


@mistake("fedavg", "the weights are not normalised: sum_k weights[k] * states[k] without dividing by sum(weights)")
def fedavg_unnormalised(states, weights=None):
    states, shares = _checked(states, weights)
    raw = [1.0] * len(states) if weights is None else [float(w) for w in weights]
    with torch.no_grad():
        return {k: sum(w * s[k] for w, s in zip(raw, states, strict=True)) if v.is_floating_point() else v.clone()
                for k, v in states[0].items()}


@mistake("fedavg", "divides the weighted sum by the number of clients instead of by the sum of the weights")
def fedavg_divides_by_client_count(states, weights=None):
    states, _ = _checked(states, weights)
    raw = [1.0] * len(states) if weights is None else [float(w) for w in weights]
    with torch.no_grad():
        return {k: sum(w * s[k] for w, s in zip(raw, states, strict=True)) / len(states)
                if v.is_floating_point() else v.clone() for k, v in states[0].items()}


@mistake("fedavg", "the weights are paired with the clients in reverse order")
def fedavg_weights_reversed(states, weights=None):
    states, _ = _checked(states, weights)
    if weights is not None:
        weights = list(weights)[::-1]
    return fedavg(states, weights)


@mistake("fedavg", "the tensors are paired by position (zip over .values()) instead of by key, so a client that lists "
                   "its keys in another order mixes up its layers")
def fedavg_by_position(states, weights=None):
    states, shares = _checked(states, weights)
    keys = list(states[0])
    with torch.no_grad():
        columns = zip(*(list(s.values()) for s in states), strict=True)
        out = {}
        for key, column in zip(keys, columns, strict=True):
            if column[0].is_floating_point() and all(t.shape == column[0].shape for t in column):
                out[key] = sum(w * t for w, t in zip(shares, column, strict=True))
            else:
                out[key] = states[0][key].clone()
        return out


@mistake("fedavg", "integer buffers such as num_batches_tracked are averaged too and come back as floats")
def fedavg_averages_integer_buffers(states, weights=None):
    states, shares = _checked(states, weights)
    with torch.no_grad():
        return {k: sum(w * s[k] for w, s in zip(shares, states, strict=True)) for k in states[0]}


@mistake("fedavg", "integer buffers are averaged and cast back (truncated) instead of taken from the first client")
def fedavg_truncates_integer_average(states, weights=None):
    states, shares = _checked(states, weights)
    with torch.no_grad():
        return {k: sum(w * s[k].double() for w, s in zip(shares, states, strict=True)).to(v.dtype)
                if not v.is_floating_point() else sum(w * s[k] for w, s in zip(shares, states, strict=True))
                for k, v in states[0].items()}


@mistake("fedavg", "integer buffers are taken from the last client instead of the first")
def fedavg_integers_from_last_client(states, weights=None):
    states, _ = _checked(states, weights)
    result = fedavg(states, weights)
    return {k: states[-1][k].clone() if not v.is_floating_point() else v for k, v in result.items()}


@mutant("fedavg", "integer entries are returned as the first client's very tensor (no clone), so a later in-place "
                  "update of the global model changes the client's state too",
        replace={"result[name] = first.clone()": "result[name] = first"})
def fedavg_aliases_integer_buffers(): ...


@mistake("fedavg", "the weights are normalised in float32 (torch.tensor of the sizes), so a float64 average is only "
                   "float32-accurate")
def fedavg_float32_weights(states, weights=None):
    states, _ = _checked(states, weights)
    raw = torch.ones(len(states)) if weights is None else torch.as_tensor(weights).float()
    shares = raw / raw.sum()
    with torch.no_grad():
        return {k: sum(w * s[k] for w, s in zip(shares, states, strict=True)) if v.is_floating_point() else v.clone()
                for k, v in states[0].items()}


@mistake("fedavg", "accumulates into the first client's tensors in place (total = states[0][k]; total *= w0; ...), "
                   "which changes that client's state")
def fedavg_in_place(states, weights=None):
    states, shares = _checked(states, weights)
    out = {}
    with torch.no_grad():
        for k, v in states[0].items():
            if not v.is_floating_point():
                out[k] = v.clone()
                continue
            total = v.mul_(shares[0])
            for w, s in zip(shares[1:], states[1:], strict=True):
                total.add_(w * s[k])
            out[k] = total.clone()
    return out


@mutant("fedavg", "a low-precision tensor (bfloat16, float16) is summed in its own dtype, rounding after every client "
                  "instead of once at the end",
        replace={"wide = torch.promote_types(first.dtype, torch.float32)": "wide = first.dtype"})
def fedavg_sums_in_low_precision(): ...


@mutant("fedavg", "computed with autograd on: averaging Parameters gives a result that requires grad and keeps a graph",
        replace={"with torch.no_grad():  # an average": "with torch.enable_grad():  # an average"})
def fedavg_keeps_autograd_history(): ...


@mistake("fedavg", "negative weights are accepted (a client cannot have fewer than 0 examples)")
def fedavg_accepts_negative_weights(states, weights=None):
    states = list(states)
    if weights is None or isinstance(weights, torch.Tensor):
        sizes = [1.0] * len(states) if weights is None else weights.double().tolist()
    else:
        sizes = list(weights)
    _checked(states, [abs(w) if isinstance(w, float | int) and not isinstance(w, bool) else w for w in sizes])
    return _unchecked_sign(states, [float(w) for w in sizes])


def _unchecked_sign(states, sizes):
    total = math.fsum(sizes)
    with torch.no_grad():
        return {k: sum(w / total * s[k] for w, s in zip(sizes, states, strict=True)) if v.is_floating_point()
                else v.clone() for k, v in states[0].items()}


@mutant("fedavg", "the keys of the other clients are not compared with client 0's, so an extra key is silently dropped",
        replace={"if missing or extra:": "if missing:"})
def fedavg_ignores_extra_keys(): ...


@mutant("fedavg", "the shapes are not compared, so a (3, 2) tensor is broadcast or averaged with a (2, 3) one",
        replace={"if other.shape != first.shape or other.dtype != first.dtype:": "if other.dtype != first.dtype:"})
def fedavg_ignores_shapes(): ...


@mistake("fedavg", "a tensor of weights is only checked for negative values and a zero sum: nan and inf weights "
                   "pass, and the average comes back nan")
def fedavg_tensor_weights_not_finite_checked(states, weights=None):
    if isinstance(weights, torch.Tensor) and weights.ndim == 1 and weights.dtype != torch.bool:
        if bool((weights < 0).any()) or float(weights.sum()) == 0:
            raise ValueError(f"weights must be >= 0 and not all 0, got {weights.tolist()}")
        shares = (weights.double() / weights.double().sum()).tolist()
        states = list(states)
        with torch.no_grad():
            return {k: sum(s * state[k].double() for s, state in zip(shares, states, strict=True)).to(v.dtype)
                    if v.is_floating_point() else v.clone() for k, v in states[0].items()}
    return fedavg(states, weights)


@mistake("fedavg", "weights are checked with isinstance(w, (int, float)): NumPy integers such as np.int64(10), which "
                   "are numbers too, are rejected")
def fedavg_rejects_numpy_weights(states, weights=None):
    if weights is not None and not isinstance(weights, torch.Tensor):
        for value in weights:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"weights must be int or float, got {value!r}")
    return fedavg(states, weights)


@mutant("fedavg", "only the floating entries are compared between clients: counters of different dtypes or shapes "
                  "are not reported",
        replace={"            for index, state in enumerate(states):\n                other = state[name]":
                 "            for index, state in enumerate(states if first.is_floating_point() else []):\n"
                 "                other = state[name]"})
def fedavg_checks_float_entries_only(): ...


@mistake("fedavg", "a tensor of weights is only rejected when it has more than one dimension: a 0-d tensor slips "
                   "through, and len() of its .tolist() (a float) fails with a TypeError")
def fedavg_accepts_0d_weights(states, weights=None):
    if isinstance(weights, torch.Tensor) and weights.ndim == 0:
        values = weights.tolist()
        if len(values) != len(states):  # TypeError: a float has no len()
            raise ValueError(f"got {len(values)} weights for {len(states)} clients")
    return fedavg(states, weights)


@variant("fedavg", "Flower style: multiply each client's tensors by its raw number of examples, add them up, divide "
                   "by the total once")
def fedavg_flower_style(states, weights=None):
    states, _ = _checked(states, weights)
    if weights is None:
        sizes = [1.0] * len(states)
    elif isinstance(weights, torch.Tensor):
        sizes = weights.double().tolist()
    else:
        sizes = [float(w) for w in weights]
    total = math.fsum(sizes)
    out = {}
    with torch.no_grad():
        for key, first in states[0].items():
            if not first.is_floating_point():
                out[key] = first.detach().clone()
                continue
            acc = torch.zeros(first.shape, dtype=torch.promote_types(first.dtype, torch.float64), device=first.device)
            for size, state in zip(sizes, states, strict=True):
                acc = acc + state[key].to(acc.dtype) * size
            out[key] = (acc / total).to(first.dtype)
    return out


@variant("fedavg", "vectorised: stack every client's tensor on a new first axis and contract it with the weights "
                   "(torch.tensordot), in float64")
def fedavg_stacked(states, weights=None):
    states, shares = _checked(states, weights)
    share = torch.tensor(shares, dtype=torch.float64)
    out = {}
    with torch.no_grad():
        for key, first in states[0].items():
            if first.is_floating_point():
                stacked = torch.stack([s[key].to(torch.float64) for s in states])  # (K, *shape)
                out[key] = torch.tensordot(share.to(stacked.device), stacked, dims=1).to(first.dtype)
            else:
                out[key] = torch.clone(first)
    return out


# --------------------------------------------------------------------------------------------------
# per_sample_grads


def _split(model):
    trainable = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    frozen = {n: p.detach() for n, p in model.named_parameters() if not p.requires_grad}
    buffers = {n: b.detach() for n, b in model.named_buffers()}
    return trainable, frozen, buffers


def _check_batch(x, y):
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"batch sizes differ: x {tuple(x.shape)}, y {tuple(y.shape)}")


@mistake("per_sample_grads", "the gradient of the whole batch's mean loss is repeated for every example")
def psg_batch_gradient_repeated(model, loss_fn, x, y):
    _check_batch(x, y)
    trainable, frozen, buffers = _split(model)

    def batch_loss(params):
        return loss_fn(functional_call(model, (params, frozen, buffers), (x,)), y)

    grads = grad(batch_loss)(trainable)
    return {n: g.unsqueeze(0).expand(x.shape[0], *g.shape).clone() for n, g in grads.items()}


@mistake("per_sample_grads", "the model is called with its own parameters (model(x)), not through functional_call with "
                             "the ones grad differentiates, so every gradient is 0")
def psg_params_not_used(model, loss_fn, x, y):
    _check_batch(x, y)
    trainable, _, _ = _split(model)

    def example_loss(params, xi, yi):
        return loss_fn(model(xi.unsqueeze(0)), yi.unsqueeze(0))

    return vmap(grad(example_loss), in_dims=(None, 0, 0))(trainable, x, y)


@mistake("per_sample_grads", "frozen parameters (requires_grad=False) get gradients too")
def psg_includes_frozen(model, loss_fn, x, y):
    _check_batch(x, y)
    params = {n: p.detach() for n, p in model.named_parameters()}
    buffers = {n: b.detach() for n, b in model.named_buffers()}

    def example_loss(p, xi, yi):
        return loss_fn(functional_call(model, (p, buffers), (xi.unsqueeze(0),)), yi.unsqueeze(0))

    return vmap(grad(example_loss), in_dims=(None, 0, 0))(params, x, y)


@mistake("per_sample_grads", "a loop with loss.backward(): it fills the parameters' .grad (and wipes what was there)")
def psg_backward_loop(model, loss_fn, x, y):
    _check_batch(x, y)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    rows = {n: [] for n, _ in named}
    for i in range(x.shape[0]):
        model.zero_grad()
        loss_fn(model(x[i:i + 1]), y[i:i + 1]).backward()
        for n, p in named:
            rows[n].append(p.grad.clone())
    return {n: torch.stack(rows[n]) if rows[n] else p.new_zeros((0, *p.shape)) for n, p in named}


@mistake("per_sample_grads", "the model is put in eval mode (to keep vmap away from dropout) and never put back")
def psg_switches_to_eval(model, loss_fn, x, y):
    model.eval()
    return per_sample_grads(model, loss_fn, x, y)


@mistake("per_sample_grads", "the result is collected in tensors from torch.zeros(B, *shape), whose default dtype "
                             "float32 rounds the gradients of a float64 model")
def psg_float32_buffers(model, loss_fn, x, y):
    grads = per_sample_grads(model, loss_fn, x, y)
    out = {}
    for name, g in grads.items():
        out[name] = torch.zeros(g.shape, device=g.device)
        out[name][:] = g
    return out


@mistake("per_sample_grads", "named_parameters(remove_duplicate=False) lists a tied weight twice, and each name gets "
                             "only the gradient of its own use")
def psg_tied_weight_twice(model, loss_fn, x, y):
    _check_batch(x, y)
    params = {n: p.detach() for n, p in model.named_parameters(remove_duplicate=False) if p.requires_grad}
    frozen = {n: p.detach() for n, p in model.named_parameters() if not p.requires_grad}
    buffers = {n: b.detach() for n, b in model.named_buffers()}

    def example_loss(p, xi, yi):
        out = functional_call(model, (p, frozen, buffers), (xi.unsqueeze(0),), tie_weights=False)
        return loss_fn(out, yi.unsqueeze(0))

    return vmap(grad(example_loss), in_dims=(None, 0, 0))(params, x, y)


@mutant("per_sample_grads", "the example is passed to the model and the loss without its batch dimension (no "
                            "unsqueeze(0)): a model or loss that needs the batch axis breaks or computes something "
                            "else",
        replace={"(xi.unsqueeze(0),))\n        return loss_fn(out, yi.unsqueeze(0))": "(xi,))\n        return "
                                                                                        "loss_fn(out, yi)"})
def psg_no_batch_of_one(): ...


@variant("per_sample_grads", "functional_call with the trainable parameters only (the module's own frozen parameters "
                             "and buffers fill in), inside eval mode put back in a finally block")
def psg_trainable_only_in_eval(model, loss_fn, x, y):
    _check_batch(x, y)
    trainable = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}

    def example_loss(params, xi, yi):
        return loss_fn(functional_call(model, params, (xi[None],)), yi[None])

    was = model.training
    model.eval()
    try:
        return dict(vmap(grad(example_loss), in_dims=(None, 0, 0))(trainable, x, y))
    finally:
        model.train(was)


@variant("per_sample_grads", "a plain loop of torch.autograd.grad over the examples (B times slower, same numbers)")
def psg_autograd_loop(model, loss_fn, x, y):
    _check_batch(x, y)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    rows = [torch.autograd.grad(loss_fn(model(x[i:i + 1]), y[i:i + 1]), [p for _, p in named])
            for i in range(x.shape[0])]
    return {n: torch.stack([r[j] for r in rows]).detach() if rows else p.new_zeros((0, *p.shape))
            for j, (n, p) in enumerate(named)}


@variant("per_sample_grads", "jacrev of the vector of per-example losses: row i of the Jacobian is example i's "
                             "gradient")
def psg_jacobian(model, loss_fn, x, y):
    _check_batch(x, y)
    trainable, frozen, buffers = _split(model)

    def losses(params):
        def one(xi, yi):
            return loss_fn(functional_call(model, (params, frozen, buffers), (xi[None],)), yi[None])
        return vmap(one)(x, y)  # (B,)

    if x.shape[0] == 0:
        return {n: p.new_zeros((0, *p.shape)) for n, p in trainable.items()}
    return dict(jacrev(losses)(trainable))


# --------------------------------------------------------------------------------------------------
# dp_sgd_step


def _validate(max_grad_norm, noise_multiplier, x, y):
    if isinstance(max_grad_norm, bool) or not isinstance(max_grad_norm, numbers.Real) or not math.isfinite(
            max_grad_norm) or max_grad_norm <= 0:
        raise ValueError(f"max_grad_norm must be > 0, got {max_grad_norm}")
    if isinstance(noise_multiplier, bool) or not isinstance(noise_multiplier, numbers.Real) or not math.isfinite(
            noise_multiplier) or noise_multiplier < 0:
        raise ValueError(f"noise_multiplier must be >= 0, got {noise_multiplier}")
    if x.shape[0] == 0:
        raise ValueError("empty batch")


def _norms(grads, batch):
    return torch.stack([g.reshape(batch, -1).pow(2).sum(1) for g in grads.values()]).sum(0).sqrt()


def _bcast(factors, g):
    return factors.reshape(-1, *([1] * (g.ndim - 1)))


def _dp(model, loss_fn, x, y, optimizer, max_grad_norm, noise_multiplier, generator, *, clip="flat",
        noise_std=None, noise_on="sum", noise_dtype=None, accumulate=False):
    """A DP-SGD step with one knob turned; every mistake below is this function with one wrong setting."""
    _validate(max_grad_norm, noise_multiplier, x, y)
    with torch.no_grad():
        loss = loss_fn(model(x), y)
    grads = per_sample_grads(model, loss_fn, x, y)
    batch = x.shape[0]
    if clip == "flat":
        factors = {n: (max_grad_norm / _norms(grads, batch)).clamp(max=1.0) for n in grads}
    elif clip == "per_parameter":
        factors = {n: (max_grad_norm / g.reshape(batch, -1).norm(dim=1)).clamp(max=1.0) for n, g in grads.items()}
    elif clip == "uncapped":
        factors = {n: max_grad_norm / _norms(grads, batch) for n in grads}
    std = noise_multiplier * max_grad_norm if noise_std is None else noise_std(noise_multiplier, max_grad_norm)
    params = dict(model.named_parameters())
    for name, g in grads.items():
        p = params[name]
        clipped = (g * _bcast(factors[name], g)).sum(0)
        dtype = p.dtype if noise_dtype is None else noise_dtype

        def draw(*shape, dtype=dtype, device=p.device):
            return torch.randn(shape, generator=generator, dtype=dtype, device=device)

        if noise_on == "sum":
            private = (clipped + std * draw(*clipped.shape)) / batch
        elif noise_on == "mean":
            private = clipped / batch + std * draw(*clipped.shape)
        elif noise_on == "each":
            private = (clipped + std * draw(batch, *clipped.shape).sum(0)) / batch
        elif noise_on == "scalar":
            private = (clipped + std * draw()) / batch
        private = private.to(p.dtype)
        p.grad = p.grad + private if accumulate and p.grad is not None else private
    optimizer.step()
    return loss


@mistake("dp_sgd_step", "the clipped mean is the batch gradient clipped once, not each example's gradient clipped")
def dp_clips_the_batch_gradient(model, loss_fn, x, y, optimizer, max_grad_norm, noise_multiplier, generator=None):
    _validate(max_grad_norm, noise_multiplier, x, y)
    with torch.no_grad():
        loss = loss_fn(model(x), y)
    grads = per_sample_grads(model, loss_fn, x, y)
    batch = x.shape[0]
    mean = {n: g.mean(0) for n, g in grads.items()}
    norm = math.sqrt(sum(float(m.pow(2).sum()) for m in mean.values()))
    factor = min(1.0, max_grad_norm / norm) if norm > 0 else 1.0
    params = dict(model.named_parameters())
    for n, m in mean.items():
        noise = torch.randn(m.shape, generator=generator, dtype=m.dtype, device=m.device)
        params[n].grad = m * factor + noise_multiplier * max_grad_norm * noise / batch
    optimizer.step()
    return loss


@mistake("dp_sgd_step", "each parameter's per-example gradient is clipped to C on its own, so an example's whole "
                        "gradient may reach C * sqrt(number of parameter tensors)")
def dp_clips_per_parameter(model, loss_fn, x, y, optimizer, max_grad_norm, noise_multiplier, generator=None):
    return _dp(model, loss_fn, x, y, optimizer, max_grad_norm, noise_multiplier, generator, clip="per_parameter")


@mistake("dp_sgd_step", "the clip factor is C / ||g_i|| without min(1, ...): short gradients are stretched up to C")
def dp_clip_not_capped(model, loss_fn, x, y, optimizer, max_grad_norm, noise_multiplier, generator=None):
    return _dp(model, loss_fn, x, y, optimizer, max_grad_norm, noise_multiplier, generator, clip="uncapped")


@mistake("dp_sgd_step", "clips with g / ||g|| * min(||g||, C): a zero gradient gives 0 / 0 = nan")
def dp_clip_divides_by_zero(model, loss_fn, x, y, optimizer, max_grad_norm, noise_multiplier, generator=None):
    _validate(max_grad_norm, noise_multiplier, x, y)
    with torch.no_grad():
        loss = loss_fn(model(x), y)
    grads = per_sample_grads(model, loss_fn, x, y)
    batch = x.shape[0]
    norms = _norms(grads, batch)
    params = dict(model.named_parameters())
    for n, g in grads.items():
        clipped = (g / _bcast(norms, g) * _bcast(norms.clamp(max=max_grad_norm), g)).sum(0)
        noise = torch.randn(clipped.shape, generator=generator, dtype=clipped.dtype, device=clipped.device)
        params[n].grad = (clipped + noise_multiplier * max_grad_norm * noise) / batch
    optimizer.step()
    return loss


@mistake("dp_sgd_step", "the noise is added to the mean (after dividing by B), so its std is sigma * C instead of "
                        "sigma * C / B")
def dp_noise_on_the_mean(model, loss_fn, x, y, optimizer, max_grad_norm, noise_multiplier, generator=None):
    return _dp(model, loss_fn, x, y, optimizer, max_grad_norm, noise_multiplier, generator, noise_on="mean")


@mistake("dp_sgd_step", "the noise has std sigma instead of sigma * C: it is not calibrated to the clipping bound")
def dp_noise_without_c(model, loss_fn, x, y, optimizer, max_grad_norm, noise_multiplier, generator=None):
    return _dp(model, loss_fn, x, y, optimizer, max_grad_norm, noise_multiplier, generator,
               noise_std=lambda sigma, c: sigma)


@mistake("dp_sgd_step", "(sigma * C)^2 is used as the standard deviation: it is the variance of the noise")
def dp_noise_variance_as_std(model, loss_fn, x, y, optimizer, max_grad_norm, noise_multiplier, generator=None):
    return _dp(model, loss_fn, x, y, optimizer, max_grad_norm, noise_multiplier, generator,
               noise_std=lambda sigma, c: (sigma * c) ** 2)


@mistake("dp_sgd_step", "every example gets its own noise before the sum, so the summed noise has std "
                        "sigma * C * sqrt(B)")
def dp_noise_per_example(model, loss_fn, x, y, optimizer, max_grad_norm, noise_multiplier, generator=None):
    return _dp(model, loss_fn, x, y, optimizer, max_grad_norm, noise_multiplier, generator, noise_on="each")


@mistake("dp_sgd_step", "one noise number per parameter tensor (torch.randn(()) broadcast), not one per coordinate")
def dp_noise_one_number_per_tensor(model, loss_fn, x, y, optimizer, max_grad_norm, noise_multiplier, generator=None):
    return _dp(model, loss_fn, x, y, optimizer, max_grad_norm, noise_multiplier, generator, noise_on="scalar")


@mistake("dp_sgd_step", "the noise is drawn in float32 (torch.randn without dtype=) and only then converted")
def dp_noise_in_float32(model, loss_fn, x, y, optimizer, max_grad_norm, noise_multiplier, generator=None):
    return _dp(model, loss_fn, x, y, optimizer, max_grad_norm, noise_multiplier, generator, noise_dtype=torch.float32)


@mistake("dp_sgd_step", "the noise comes from torch's global generator: the generator argument is ignored")
def dp_ignores_generator(model, loss_fn, x, y, optimizer, max_grad_norm, noise_multiplier, generator=None):
    return _dp(model, loss_fn, x, y, optimizer, max_grad_norm, noise_multiplier, None)


@mistake("dp_sgd_step", "the private gradient is added to the old .grad instead of replacing it")
def dp_accumulates_grad(model, loss_fn, x, y, optimizer, max_grad_norm, noise_multiplier, generator=None):
    return _dp(model, loss_fn, x, y, optimizer, max_grad_norm, noise_multiplier, generator, accumulate=True)


@mutant("dp_sgd_step", "the noise is created on the CPU (torch.randn without device=), so a model on a GPU fails",
        replace={"dtype=params[name].dtype,\n                            device=params[name].device)":
                 "dtype=params[name].dtype)"})
def dp_noise_on_cpu(): ...


@mutant("dp_sgd_step", "the clipped sum is not divided by B: the step is B times too large",
        replace={"params[name].grad = (clipped_sum + std * noise) / batch":
                 "params[name].grad = clipped_sum + std * noise"})
def dp_no_division_by_batch(): ...


@mutant("dp_sgd_step", "optimizer.step() is never called: the model does not move",
        replace={"    optimizer.step()\n": "    pass\n"})
def dp_no_step(): ...


@mutant("dp_sgd_step", "the loss is computed with autograd on, so the returned loss carries a graph",
        replace={"with torch.no_grad():\n        loss = loss_fn(model(x), y)":
                 "with torch.enable_grad():\n        loss = loss_fn(model(x), y)",
                 "return loss.detach()": "return loss"})
def dp_loss_with_graph(): ...


@mistake("dp_sgd_step", "the returned loss is computed after the optimizer step, not before")
def dp_loss_after_step(model, loss_fn, x, y, optimizer, max_grad_norm, noise_multiplier, generator=None):
    _dp(model, loss_fn, x, y, optimizer, max_grad_norm, noise_multiplier, generator)
    with torch.no_grad():
        return loss_fn(model(x), y)


@mistake("dp_sgd_step", "optimizer.zero_grad() after the step leaves .grad empty; the docstring keeps it for the "
                        "caller")
def dp_zero_grad_after_step(model, loss_fn, x, y, optimizer, max_grad_norm, noise_multiplier, generator=None):
    loss = _dp(model, loss_fn, x, y, optimizer, max_grad_norm, noise_multiplier, generator)
    optimizer.zero_grad()
    return loss


@mistake("dp_sgd_step", "the per-example gradients are kept on the parameters (p.grad_sample, as Opacus's hooks do)")
def dp_keeps_grad_sample(model, loss_fn, x, y, optimizer, max_grad_norm, noise_multiplier, generator=None):
    grads = per_sample_grads(model, loss_fn, x, y)
    loss = _dp(model, loss_fn, x, y, optimizer, max_grad_norm, noise_multiplier, generator)
    for name, p in model.named_parameters():
        if name in grads:
            p.grad_sample = grads[name]
    return loss


@mistake("dp_sgd_step", "frozen parameters get noise too (a .grad of pure noise), so the optimizer moves them")
def dp_noise_on_frozen(model, loss_fn, x, y, optimizer, max_grad_norm, noise_multiplier, generator=None):
    for p in model.parameters():
        if not p.requires_grad:
            noise = torch.randn(p.shape, generator=generator, dtype=p.dtype, device=p.device)
            p.grad = noise_multiplier * max_grad_norm * noise / len(x)
    return _dp(model, loss_fn, x, y, optimizer, max_grad_norm, noise_multiplier, generator)


@mutant("dp_sgd_step", "noise_multiplier = 0 is rejected, though it is legal (no noise: the clipped mean)",
        replace={"or noise_multiplier < 0:": "or noise_multiplier <= 0:"})
def dp_rejects_zero_noise(): ...


@mutant("dp_sgd_step", "an infinite max_grad_norm is accepted (it means no clipping, so no privacy at all)",
        replace={"or not math.isfinite(max_grad_norm) or": "or"})
def dp_accepts_infinite_c(): ...


@mutant("dp_sgd_step", "an empty batch is not rejected, and the mean divides by B = 0",
        replace={"if x.ndim and x.shape[0] == 0:": "if False:"})
def dp_accepts_empty_batch(): ...


@mistake("dp_sgd_step", "model.zero_grad() before setting the private gradient: the .grad the caller had on a frozen "
                        "parameter is thrown away")
def dp_zero_grads_everything(model, loss_fn, x, y, optimizer, max_grad_norm, noise_multiplier, generator=None):
    _validate(max_grad_norm, noise_multiplier, x, y)
    model.zero_grad()
    return dp_sgd_step(model, loss_fn, x, y, optimizer, max_grad_norm, noise_multiplier, generator)


@mutant("dp_sgd_step", "Opacus's factor C / (||g|| + 1e-6) instead of the documented exact min(1, C / ||g||): every "
                       "clipped gradient comes out a little short",
        replace={"factors = (max_grad_norm / norms).clamp(max=1.0)":
                 "factors = (max_grad_norm / (norms + 1e-6)).clamp(max=1.0)"})
def dp_opacus_epsilon(): ...


@mutant("dp_sgd_step", "max_grad_norm and noise_multiplier are not checked to be numbers: a string or None raises a "
                       "TypeError from math.isfinite instead of the documented ValueError",
        replace={"if not _is_real(max_grad_norm) or not math.isfinite": "if not math.isfinite",
                 "if not _is_real(noise_multiplier) or not math.isfinite": "if not math.isfinite"})
def dp_no_number_check(): ...


@mutant("dp_sgd_step", "noise_multiplier must be a float: the int 0 (no noise), a legal number, is rejected",
        replace={"if not _is_real(noise_multiplier) or not math.isfinite": "if not isinstance(noise_multiplier, "
                                                                          "float) or not math.isfinite"})
def dp_rejects_int_sigma(): ...


@variant("dp_sgd_step", "the clipped sum divided by B first, and noise of std sigma * C / B added to the mean; the "
                        "clip factor from torch.where; the optimizer given the grads through a fresh tensor per "
                        "parameter")
def dp_noise_scaled_on_the_mean(model, loss_fn, x, y, optimizer, max_grad_norm, noise_multiplier, generator=None):
    _validate(max_grad_norm, noise_multiplier, x, y)
    with torch.no_grad():
        loss = loss_fn(model(x), y)
    grads = per_sample_grads(model, loss_fn, x, y)
    batch = x.shape[0]
    norms = torch.sqrt(sum(g.reshape(batch, -1).pow(2).sum(dim=1) for g in grads.values()))
    factors = torch.where(norms > max_grad_norm, max_grad_norm / norms, torch.ones_like(norms))
    params = dict(model.named_parameters())
    for name, g in grads.items():
        mean = torch.einsum("b,b...->...", factors, g) / batch
        noise = torch.randn(mean.shape, generator=generator, dtype=params[name].dtype, device=params[name].device)
        params[name].grad = mean + (noise_multiplier * max_grad_norm / batch) * noise
    optimizer.step()
    return loss.detach()


@variant("dp_sgd_step", "Opacus-like flat layout: all per-example gradients as one (B, P) matrix, rows clipped with "
                        "g / max(1, ||g|| / C), one noise vector of P draws, split back per parameter")
def dp_flat_matrix(model, loss_fn, x, y, optimizer, max_grad_norm, noise_multiplier, generator=None):
    _validate(max_grad_norm, noise_multiplier, x, y)
    with torch.no_grad():
        loss = loss_fn(model(x), y).detach()
    grads = per_sample_grads(model, loss_fn, x, y)
    batch = x.shape[0]
    flat = torch.cat([g.reshape(batch, -1) for g in grads.values()], dim=1)  # (B, P)
    divisor = torch.clamp(flat.norm(dim=1, keepdim=True) / max_grad_norm, min=1.0)
    summed = (flat / divisor).sum(dim=0)  # (P,)
    noise = torch.randn(summed.shape, generator=generator, dtype=summed.dtype, device=summed.device)
    private = (summed + noise_multiplier * max_grad_norm * noise) / batch
    params = dict(model.named_parameters())
    start = 0
    for name, g in grads.items():
        size = g[0].numel() if batch else 0
        params[name].grad = private[start:start + size].reshape(params[name].shape).clone()
        start += size
    optimizer.step()
    return loss


@variant("dp_sgd_step", "Abadi et al.'s pseudo-code: a loop of torch.autograd.grad per example, g / max(1, ||g|| / C), "
                        "the noise drawn for the parameters in reverse order")
def dp_abadi_loop(model, loss_fn, x, y, optimizer, max_grad_norm, noise_multiplier, generator=None):
    _validate(max_grad_norm, noise_multiplier, x, y)
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x has {x.shape[0]} examples, y {y.shape[0]}")
    with torch.no_grad():
        loss = loss_fn(model(x), y)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    sums = [torch.zeros_like(p) for _, p in named]
    for i in range(x.shape[0]):
        grads = torch.autograd.grad(loss_fn(model(x[i:i + 1]), y[i:i + 1]), [p for _, p in named])
        norm = torch.sqrt(sum(g.pow(2).sum() for g in grads))
        divisor = torch.clamp(norm / max_grad_norm, min=1.0)
        for total, g in zip(sums, grads, strict=True):
            total += g / divisor
    for (_, p), total in reversed(list(zip(named, sums, strict=True))):
        noise = torch.randn(p.shape, generator=generator, dtype=p.dtype, device=p.device)
        p.grad = (total + noise_multiplier * max_grad_norm * noise) / x.shape[0]
    optimizer.step()
    return loss.detach()
