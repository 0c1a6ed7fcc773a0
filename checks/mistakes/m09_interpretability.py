"""Catalogued mistakes and correct variants for m09_interpretability.

- ``@mutant``: a small slip in the reference's own code (a point off the midpoint, a wrong default, a dropped
  ``device=``);
- a function written out when the mistake changes the shape of the solution (another quadrature rule, hooks
  that stay registered, modes restored the wrong way);
- ``@variant``: an unusual but correct implementation, in another style than the reference, that every check
  must accept (the proof that the checks do not over-fit the reference).
"""

from __future__ import annotations

import functools
import math
import numbers

import torch
from torch import Tensor

from checks.harness.catalogue import mistake, mutant, variant
from reference.phase4.m09_interpretability import attention_rollout, integrated_gradients, logit_lens

# --------------------------------------------------------------------------------------------------
# integrated_gradients


def _ig_validated(f, x, baseline, steps):
    """The reference's input checks, so that each mistake below is caught by the check aimed at it."""
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 1:
        raise ValueError(f"steps={steps!r} must be an integer >= 1")
    if x.dim() < 1 or not x.is_floating_point():
        raise ValueError(f"x must be floating with a batch axis, got {x.dtype} {tuple(x.shape)}")
    baseline = torch.zeros_like(x) if baseline is None else baseline
    try:
        fits = torch.broadcast_shapes(baseline.shape, x.shape) == x.shape
    except RuntimeError:
        fits = False
    if not fits:
        raise ValueError(f"baseline {tuple(baseline.shape)} does not broadcast to {tuple(x.shape)}")
    return baseline.detach().expand(x.shape), int(steps)


def _mean_gradient(f, x, baseline, alphas, weights=None):
    """(x - baseline, the weighted mean of f's gradients at baseline + a (x - baseline) for a in alphas)."""
    delta = x.detach() - baseline
    n = alphas.shape[0]
    points = (baseline + alphas.view((n,) + (1,) * x.dim()) * delta).reshape((n * x.shape[0],) + tuple(x.shape[1:]))
    points.requires_grad_(True)
    with torch.enable_grad():
        out = f(points)
        if not isinstance(out, Tensor) or out.shape != (points.shape[0],):
            raise ValueError(f"f returned {getattr(out, 'shape', type(out).__name__)}")
        (grads,) = torch.autograd.grad(out.sum(), points)
    grads = grads.view((n,) + tuple(x.shape))
    if weights is None:
        return delta, grads.mean(dim=0)
    return delta, (weights.view((n,) + (1,) * x.dim()) * grads).sum(dim=0)


def _midpoints(x, steps):
    return (torch.arange(steps, dtype=x.dtype, device=x.device) + 0.5) / steps


@mutant("integrated_gradients", "left Riemann sum: the points are k / steps (0 included, 1 left out), so the error "
        "falls only like 1 / steps", replace={"torch.arange(steps, dtype=x.dtype, device=x.device) + 0.5":
                                              "torch.arange(steps, dtype=x.dtype, device=x.device) + 0.0"})
def ig_left_riemann(): ...


@mutant("integrated_gradients", "right Riemann sum: the points are (k + 1) / steps, so the error falls only like "
        "1 / steps", replace={"torch.arange(steps, dtype=x.dtype, device=x.device) + 0.5":
                              "torch.arange(steps, dtype=x.dtype, device=x.device) + 1"})
def ig_right_riemann(): ...


@mistake("integrated_gradients", "the points are torch.linspace(0, 1, steps) (both ends included) and the gradients "
         "are simply averaged: neither the midpoint nor the trapezoid rule")
def ig_linspace_points(f, x, baseline=None, steps=50):
    baseline, steps = _ig_validated(f, x, baseline, steps)
    delta, mean = _mean_gradient(f, x, baseline, torch.linspace(0, 1, steps, dtype=x.dtype, device=x.device))
    return delta * mean


@mistake("integrated_gradients", "the trapezoid rule on steps + 1 points 0, 1/steps, ..., 1 instead of the "
         "documented midpoint rule: its error is twice as large and of the other sign")
def ig_trapezoid_rule(f, x, baseline=None, steps=50):
    baseline, steps = _ig_validated(f, x, baseline, steps)
    alphas = torch.linspace(0, 1, steps + 1, dtype=x.dtype, device=x.device)
    weights = torch.full((steps + 1,), 1.0 / steps, dtype=x.dtype, device=x.device)
    weights[0] = weights[-1] = 0.5 / steps
    delta, mean = _mean_gradient(f, x, baseline, alphas, weights)
    return delta * mean


@mutant("integrated_gradients", "the midpoints are made with torch.arange's default dtype (float32): float64 "
        "inputs lose 9 digits on the path points",
        replace={"torch.arange(steps, dtype=x.dtype, device=x.device)": "torch.arange(steps, device=x.device)"})
def ig_float32_alphas(): ...


@mutant("integrated_gradients", "the midpoints are made on the CPU, not on x's device",
        replace={"torch.arange(steps, dtype=x.dtype, device=x.device)": "torch.arange(steps, dtype=x.dtype)"})
def ig_alphas_on_cpu(): ...


@mutant("integrated_gradients", "the averaged gradient is returned without multiplying by (x - baseline): a "
        "saliency map, not attributions, and completeness fails",
        replace={"return delta * mean_grad": "return mean_grad"})
def ig_no_input_difference(): ...


@mistake("integrated_gradients", "the averaged gradient is multiplied by x instead of (x - baseline): right only for "
         "the zero baseline")
def ig_times_x(f, x, baseline=None, steps=50):
    baseline, steps = _ig_validated(f, x, baseline, steps)
    _, mean = _mean_gradient(f, x, baseline, _midpoints(x, steps))
    return x.detach() * mean


@mutant("integrated_gradients", "the gradients are summed over the steps instead of averaged: the attributions are "
        "steps times too large", replace={".mean(dim=0)": ".sum(dim=0)"})
def ig_sum_not_mean(): ...


@mutant("integrated_gradients", "steps defaults to 20 instead of the documented 50",
        replace={"steps: int = 50": "steps: int = 20"})
def ig_default_steps_20(): ...


@mutant("integrated_gradients", "the default baseline is all ones instead of zeros",
        replace={"baseline = torch.zeros_like(x)": "baseline = torch.ones_like(x)"})
def ig_default_baseline_ones(): ...


@mistake("integrated_gradients", "the path points are stacked as (B, steps, *S) but the gradients are read back as "
         "(steps, B, *S): the rows' gradients get mixed up")
def ig_mixes_rows(f, x, baseline=None, steps=50):
    baseline, steps = _ig_validated(f, x, baseline, steps)
    delta = x.detach() - baseline
    alphas = _midpoints(x, steps)
    points = baseline[:, None] + alphas.view((1, steps) + (1,) * (x.dim() - 1)) * delta[:, None]  # (B, steps, *S)
    points = points.reshape((steps * x.shape[0],) + tuple(x.shape[1:])).requires_grad_(True)
    with torch.enable_grad():
        (grads,) = torch.autograd.grad(f(points).sum(), points)
    return delta * grads.view((steps,) + tuple(x.shape)).mean(dim=0)


@mistake("integrated_gradients", "out.sum().backward() instead of torch.autograd.grad: f's parameters are left "
         "with .grad, which the next optimizer step would use")
def ig_backward_fills_grads(f, x, baseline=None, steps=50):
    baseline, steps = _ig_validated(f, x, baseline, steps)
    delta = x.detach() - baseline
    alphas = _midpoints(x, steps)
    points = (baseline + alphas.view((steps,) + (1,) * x.dim()) * delta).reshape((-1,) + tuple(x.shape[1:]))
    points.requires_grad_(True)
    with torch.enable_grad():
        f(points).sum().backward()
    return delta * points.grad.view((steps,) + tuple(x.shape)).mean(dim=0)


@mistake("integrated_gradients", "x is not detached: when the caller's x requires grad, the result carries a graph")
def ig_keeps_graph(f, x, baseline=None, steps=50):
    result = integrated_gradients(f, x, baseline, steps)
    return result + 0 * x  # the caller's graph hangs on the result


@mistake("integrated_gradients", "x.requires_grad_() is called on the caller's tensor, which changes it")
def ig_marks_callers_x(f, x, baseline=None, steps=50):
    result = integrated_gradients(f, x, baseline, steps)
    x.requires_grad_(True)
    return result


@mistake("integrated_gradients", "no torch.enable_grad(): inside the caller's torch.no_grad() there is no graph to "
         "differentiate")
def ig_needs_grad_mode(f, x, baseline=None, steps=50):
    if not torch.is_grad_enabled():
        raise RuntimeError("element 0 of tensors does not require grad and does not have a grad_fn")
    return integrated_gradients(f, x, baseline, steps)


@mistake("integrated_gradients", "torch.set_grad_enabled(True) without restoring: the caller's torch.no_grad() is "
         "switched off for everything that follows")
def ig_leaks_grad_mode(f, x, baseline=None, steps=50):
    torch.set_grad_enabled(True)
    return integrated_gradients(f, x, baseline, steps)


@mistake("integrated_gradients", "f is called on one path point at a time, without a batch axis")
def ig_unbatched_calls(f, x, baseline=None, steps=50):
    baseline, steps = _ig_validated(f, x, baseline, steps)
    delta = x.detach() - baseline
    total = torch.zeros_like(delta)
    for k in range(steps):
        for b in range(x.shape[0]):
            point = (baseline[b] + (k + 0.5) / steps * delta[b]).requires_grad_(True)
            with torch.enable_grad():
                (g,) = torch.autograd.grad(f(point).sum(), point)
            total[b] += g
    return delta * total / steps


@mutant("integrated_gradients", "steps=0 is accepted: the mean over no points is nan",
        replace={"or steps < 1:": "or steps < 0:"})
def ig_accepts_zero_steps(): ...


@mutant("integrated_gradients", "a bool steps is accepted (True counts as 1)",
        replace={"if isinstance(steps, bool) or": "if"})
def ig_accepts_bool_steps(): ...


@mistake("integrated_gradients", "a float steps is truncated with int() (2.5 -> 2) instead of rejected")
def ig_truncates_steps(f, x, baseline=None, steps=50):
    if isinstance(steps, float):
        steps = int(steps)
    return integrated_gradients(f, x, baseline, steps)


@mistake("integrated_gradients", "an integer x is not rejected (its attributions cannot be differentiated)")
def ig_accepts_integer_x(f, x, baseline=None, steps=50):
    if not x.is_floating_point():
        x = x.double()
    return integrated_gradients(f, x, baseline, steps)


@mutant("integrated_gradients", "a baseline that does not broadcast to x is not reported as a ValueError",
        replace={"    if not fits:\n        raise": "    if fits is None:\n        raise"})
def ig_no_baseline_check(): ...


@mutant("integrated_gradients", "f's output shape is not checked: an (N, 1) output is silently summed",
        replace={"or out.shape != (points.shape[0],)": "or out.dim() > 2"})
def ig_no_output_check(): ...


@mutant("integrated_gradients", "the default baseline is made with torch.zeros(x.shape, dtype=x.dtype): on the CPU, "
        "not where x lives",
        replace={"baseline = torch.zeros_like(x)": "baseline = torch.zeros(x.shape, dtype=x.dtype)"})
def ig_default_baseline_on_cpu(): ...


@mutant("integrated_gradients", "f's output is only checked to be 1-D: (3 N,) values for N rows (z**2 flattened, "
        "not summed) are accepted", replace={"or out.shape != (points.shape[0],)": "or out.dim() != 1"})
def ig_output_only_1d(): ...


@mutant("integrated_gradients", "a 0-d output of f (one number for the whole batch) is accepted instead of the "
        "documented (N,)", replace={"or out.shape != (points.shape[0],)":
                                    "or (out.dim() > 0 and out.shape != (points.shape[0],))"})
def ig_accepts_scalar_output(): ...


@mutant("integrated_gradients", "the baseline is only checked to broadcast WITH x: a (2, 2, 3) baseline for a (2, 3) x "
        "is not reported", replace={"fits = torch.broadcast_shapes(baseline.shape, x.shape) == x.shape":
                                    "fits = torch.broadcast_shapes(baseline.shape, x.shape) is not None"})
def ig_baseline_broadcasts_past_x(): ...


@mutant("integrated_gradients", "only baselines of x's shape or of one row's shape are accepted: a (1, *S) baseline, "
        "which broadcasts, is rejected", replace={"    if not fits:\n": "    fits = fits and baseline.shape in "
                                                                          "(x.shape, x.shape[1:])\n    if not fits:\n"})
def ig_baseline_exact_shapes_only(): ...


@mutant("integrated_gradients", "isinstance(steps, int) rejects NumPy integers, which the docstring accepts",
        replace={"not isinstance(steps, numbers.Integral)": "not isinstance(steps, int)"})
def ig_rejects_numpy_steps(): ...


@variant("integrated_gradients", "the points stacked row-major as (B, steps, *S) and the gradients viewed back the "
         "same way, averaged over dim 1")
def ig_row_major_points(f, x, baseline=None, steps=50):
    baseline, steps = _ig_validated(f, x, baseline, steps)
    delta = x.detach() - baseline
    B = x.shape[0]
    alphas = _midpoints(x, steps).view((1, steps) + (1,) * (x.dim() - 1))
    points = (baseline.unsqueeze(1) + alphas * delta.unsqueeze(1)).reshape((B * steps,) + tuple(x.shape[1:]))
    points.requires_grad_(True)
    with torch.enable_grad():
        out = f(points)
        if not isinstance(out, Tensor) or out.shape != (B * steps,):
            raise ValueError(f"f must return shape ({B * steps},), got {getattr(out, 'shape', type(out).__name__)}")
        (grads,) = torch.autograd.grad(out.sum(), points)
    return delta * grads.view((B, steps) + tuple(x.shape[1:])).mean(dim=1)


@variant("integrated_gradients", "Captum style: one call of f per step on a (B, *S) batch, gradients accumulated in "
         "a loop, midpoints from linspace")
def ig_loop_over_steps(f, x, baseline=None, steps=50):
    baseline, steps = _ig_validated(f, x, baseline, steps)
    delta = x.detach() - baseline
    total = torch.zeros_like(delta)
    for a in torch.linspace(0.5 / steps, 1 - 0.5 / steps, steps, dtype=torch.float64).tolist():
        point = (baseline + a * delta).requires_grad_(True)
        with torch.enable_grad():
            out = f(point)
            if not torch.is_tensor(out) or out.shape != (x.shape[0],):
                raise ValueError(f"f must return a tensor of shape ({x.shape[0]},), got {getattr(out, 'shape', out)!r}"
                                 f" ({type(out).__name__})")
            (g,) = torch.autograd.grad(out, point, grad_outputs=torch.ones_like(out))
        total = total + g
    return delta * (total / steps)


@variant("integrated_gradients", "torch.func: grad of the summed output over all path points, and the mean written "
         "as a matrix product with a weight vector")
def ig_torch_func(f, x, baseline=None, steps=50):
    baseline, steps = _ig_validated(f, x, baseline, steps)
    delta = x.detach() - baseline
    B, n = x.shape[0], steps
    alphas = torch.arange(0.5, n, 1.0, dtype=x.dtype, device=x.device) / n
    points = (baseline.unsqueeze(0) + alphas.reshape(-1, *([1] * x.dim())) * delta).flatten(0, 1)

    def total(p):
        out = f(p)
        if not isinstance(out, Tensor):
            raise ValueError(f"f returned a {type(out).__name__}, not a tensor")
        if out.shape != (p.shape[0],):
            raise ValueError(f"f returned {tuple(out.shape)} for {p.shape[0]} rows")
        return out.sum()

    with torch.enable_grad():
        grads = torch.func.grad(total)(points)  # (n * B, *S)
    weights = torch.full((1, n), 1.0 / n, dtype=x.dtype, device=x.device)
    mean = (weights @ grads.reshape(n, -1)).reshape(x.shape) if B else torch.zeros_like(delta)
    return (delta * mean).detach()


# --------------------------------------------------------------------------------------------------
# attention_rollout


def _rollout_validated(attentions):
    layers = list(attentions)
    if not layers:
        raise ValueError("no layers")
    shape = layers[0].shape
    if len(shape) < 3 or shape[-1] != shape[-2]:
        raise ValueError(f"layer 0 has shape {tuple(shape)}")
    for i, a in enumerate(layers):
        if a.shape != shape:
            raise ValueError(f"layer {i} has shape {tuple(a.shape)}")
    return layers


@mutant("attention_rollout", "layers multiplied in the wrong order (rollout @ A): the first layer ends up on the "
        "left, as if the input went in at the top", replace={"rollout = a @ rollout": "rollout = rollout @ a"})
def rollout_wrong_order(): ...


@mutant("attention_rollout", "the heads are combined with max instead of mean (another rollout variant, not this "
        "one): rows no longer sum to 1", replace={"a = layer.mean(dim=-3)": "a = layer.amax(dim=-3)"})
def rollout_max_over_heads(): ...


@mutant("attention_rollout", "the heads are averaged over axis 1, which is the head axis only for (B, H, T, T) "
        "inputs", replace={"layer.mean(dim=-3)": "layer.mean(dim=1)"})
def rollout_heads_axis_1(): ...


@mutant("attention_rollout", "add_residual is ignored: the identity is always added",
        replace={"if add_residual:": "if True:"})
def rollout_ignores_add_residual(): ...


@mutant("attention_rollout", "add_residual defaults to False", replace={"add_residual: bool = True": "add_residual: "
                                                                                                     "bool = False"})
def rollout_default_no_residual(): ...


@mutant("attention_rollout", "A + I is not renormalised: every layer's rows sum to 2",
        replace={"a = a / a.sum(dim=-1, keepdim=True)": "a = a"})
def rollout_not_renormalised(): ...


@mistake("attention_rollout", "0.5 * A + 0.5 * I instead of renormalising A + I: rows that did not sum to 1 (a fully "
         "masked query) still do not")
def rollout_half_and_half(attentions, add_residual=True):
    layers = _rollout_validated(attentions)
    eye = torch.eye(layers[0].shape[-1], dtype=layers[0].dtype, device=layers[0].device)
    rollout = eye
    for layer in layers:
        a = layer.mean(dim=-3)
        rollout = (0.5 * a + 0.5 * eye if add_residual else a) @ rollout
    return rollout


@mutant("attention_rollout", "the columns are normalised (sum over dim=-2) instead of the rows",
        replace={"a.sum(dim=-1, keepdim=True)": "a.sum(dim=-2, keepdim=True)"})
def rollout_normalises_columns(): ...


@mistake("attention_rollout", "the first layer is skipped (the loop starts at layers[1:])")
def rollout_skips_first_layer(attentions, add_residual=True):
    layers = _rollout_validated(attentions)
    if len(layers) == 1:
        return attention_rollout(layers, add_residual)
    return attention_rollout(layers[1:], add_residual)


@mistake("attention_rollout", "the identity is added to the caller's attention in place (layer += I)")
def rollout_adds_in_place(attentions, add_residual=True):
    layers = _rollout_validated(attentions)
    if add_residual:
        eye = torch.eye(layers[0].shape[-1], dtype=layers[0].dtype, device=layers[0].device)
        for layer in layers:
            layer += eye  # wrong: the caller's tensor
    rollout = None
    for layer in layers:
        a = layer.mean(dim=-3)
        a = a / a.sum(dim=-1, keepdim=True) if add_residual else a
        rollout = a if rollout is None else a @ rollout
    return rollout


@mutant("attention_rollout", "the identity is made with torch.eye's default dtype (float32), which promotes bfloat16 "
        "attention to a float32 result", replace={"dtype=layers[0].dtype, ": ""})
def rollout_eye_float32(): ...


@mutant("attention_rollout", "the identity is made on the CPU, not where the attention lives",
        replace={", device=layers[0].device": ""})
def rollout_eye_on_cpu(): ...


@mutant("attention_rollout", "an empty list is not reported: the result is a bare identity of unknown size",
        replace={"if not layers:": "if layers is None:"})
def rollout_accepts_no_layers(): ...


@mutant("attention_rollout", "layers of different shapes are not reported (they broadcast or fail obscurely)",
        replace={"if layer.shape != shape:": "if layer.dim() != len(shape):"})
def rollout_no_shape_check(): ...


@mutant("attention_rollout", "non-square attention (T queries, S keys) is not reported",
        replace={"len(shape) < 3 or shape[-1] != shape[-2]": "len(shape) < 3"})
def rollout_accepts_non_square(): ...


@mutant("attention_rollout", "only the token axes of the layers are compared: a layer with another number of heads "
        "(or batch) is not reported", replace={"        if layer.shape != shape:": "        if layer.shape[-2:] != "
                                                                                 "shape[-2:]:"})
def rollout_checks_only_T(): ...


@mutant("attention_rollout", "the ValueError for layers of different shapes does not say which layer",
        replace={'raise ValueError(f"layer {i} has shape {tuple(layer.shape)}, layer 0 has {tuple(shape)}")':
                 'raise ValueError(f"the layers must have one shape, got {tuple(layer.shape)}")'})
def rollout_error_without_layer(): ...


@variant("attention_rollout", "all the layers stacked, the heads summed and divided by H, the identity added on the "
         "diagonal of a copy, and the whole computation in float64, cast back to the inputs' dtype at the end")
def rollout_stacked_float64(attentions, add_residual=True):
    layers = _rollout_validated(attentions)
    shape = layers[0].shape
    mats = torch.stack(layers).to(torch.float64).sum(dim=-3) / shape[-3]  # (L, ..., T, T)
    if add_residual:
        mats = mats.clone()
        mats.diagonal(dim1=-2, dim2=-1).add_(1.0)
        mats = mats / mats.sum(dim=-1, keepdim=True)
    rollout = mats[0]
    for a in mats[1:]:
        rollout = a @ rollout
    return rollout.to(layers[0].dtype)


@variant("attention_rollout", "top-down: start from the last layer and multiply the earlier ones on the right, with "
         "functools.reduce")
def rollout_top_down(attentions, add_residual=True):
    layers = _rollout_validated(attentions)
    T = layers[0].shape[-1]

    def prepare(layer):
        a = layer.sum(dim=-3) / layer.shape[-3]
        if add_residual:
            a = a + torch.eye(T, dtype=a.dtype, device=a.device)
            a = a / a.sum(dim=-1, keepdim=True)
        return a

    return functools.reduce(lambda acc, a: acc @ a, [prepare(x) for x in reversed(layers)])


@variant("attention_rollout", "vit-explain style: identity added as (A + I) / 2, then rows renormalised, with "
         "einsum for the product and the batch flattened")
def rollout_einsum(attentions, add_residual=True):
    layers = _rollout_validated(attentions)
    shape = layers[0].shape
    T = shape[-1]
    rollout = None
    for layer in layers:
        a = layer.reshape(math.prod(shape[:-3]), shape[-3], T, T).mean(dim=1)  # (batch, T, T)
        if add_residual:
            a = (a + torch.eye(T, dtype=a.dtype, device=a.device)) / 2
            a = a / a.sum(dim=-1, keepdim=True)
        rollout = a if rollout is None else torch.einsum("bij,bjk->bik", a, rollout)
    return rollout.reshape(*shape[:-3], T, T)


# --------------------------------------------------------------------------------------------------
# logit_lens


def _lens_validated(model, idx):
    if (not isinstance(idx, Tensor) or idx.dim() != 2 or idx.is_floating_point() or idx.dtype == torch.bool):
        raise ValueError(f"idx must be a (B, T) integer tensor, got {idx!r}")
    if idx.shape[1] > model.pos_emb.num_embeddings:
        raise ValueError(f"T={idx.shape[1]} > max_len")
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= model.tok_emb.num_embeddings):
        raise ValueError(f"token ids {int(idx.min())}..{int(idx.max())} out of range")


def _stream(model, idx):
    """Embeddings, then the stream after each block (the caller handles modes and grad mode)."""
    x = model.tok_emb(idx) + model.pos_emb.weight[: idx.shape[1]]
    states = [x]
    for block in model.blocks:
        x = block(x)
        states.append(x)
    return states


@mistake("logit_lens", "the intermediate states go straight into the head without the final LayerNorm ln_f (only "
         "the last one gets it)")
def lens_without_ln_f(model, idx):
    _lens_validated(model, idx)
    was = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            states = _stream(model, idx)
            readings = [model.head(h) for h in states[:-1]] + [model.head(model.ln_f(states[-1]))]
            return torch.stack(readings)
    finally:
        for m, t in was:
            m.training = t


@mistake("logit_lens", "only the blocks' outputs are read: the embeddings (entry 0) are missing, (num_layers, B, T, V)")
def lens_without_embeddings(model, idx):
    return logit_lens(model, idx)[1:]


@mistake("logit_lens", "the readings are stacked on dim=1: (B, num_layers + 1, T, V)")
def lens_stacked_on_batch_axis(model, idx):
    return logit_lens(model, idx).transpose(0, 1).contiguous()


@mistake("logit_lens", "the stream is read before each block instead of after it: the last block's output (the "
         "model's own logits) is missing and the embeddings are read twice")
def lens_before_each_block(model, idx):
    lens = logit_lens(model, idx)
    return torch.cat([lens[:1], lens[:-1]])


@mutant("logit_lens", "positions are looked up with the token ids (pos_emb(idx)) instead of 0 .. T-1",
        replace={"model.pos_emb.weight[:T]": "model.pos_emb(idx)"})
def lens_positions_from_ids(): ...


@mutant("logit_lens", "the model is not put in eval mode: with dropout in training mode the lens is random",
        replace={"    model.eval()\n": "    model.train(model.training)\n"})
def lens_in_training_mode(): ...


@mutant("logit_lens", "the modes are never restored: a model in training mode comes back in eval mode",
        replace={"module.training = training": "module.training = False"})
def lens_leaves_eval_mode(): ...


@mistake("logit_lens", "model.train(was_training) restores the top-level mode on every submodule: a block the "
         "caller had put in eval mode comes back in training mode")
def lens_restores_top_mode_only(model, idx):
    was_training = model.training
    try:
        return logit_lens(model.eval(), idx)
    finally:
        model.train(was_training)


@mistake("logit_lens", "forward hooks on the blocks are registered and never removed: every later forward pass "
         "keeps collecting")
def lens_hooks_left(model, idx):
    _lens_validated(model, idx)
    states = []
    model.drop.register_forward_hook(lambda m, args, out: states.append(out))
    for block in model.blocks:
        block.register_forward_hook(lambda m, args, out: states.append(out))
    was = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            model(idx)
            return torch.stack([model.head(model.ln_f(h)) for h in states[-(len(model.blocks) + 1):]])
    finally:
        for m, t in was:
            m.training = t


@mistake("logit_lens", "every hook on the model is cleared at the end (_forward_hooks.clear()), the caller's own "
         "hooks included")
def lens_clears_all_hooks(model, idx):
    result = logit_lens(model, idx)
    for m in model.modules():
        m._forward_hooks.clear()
        m._forward_pre_hooks.clear()
    return result


@mutant("logit_lens", "no torch.no_grad(): the result carries the graph of the whole model",
        replace={"with torch.no_grad():": "with torch.enable_grad():"})
def lens_keeps_graph(): ...


@mistake("logit_lens", "torch.set_grad_enabled(False) without restoring: grad mode stays off for the caller")
def lens_leaks_grad_mode(model, idx):
    torch.set_grad_enabled(False)
    return logit_lens(model, idx)


@mistake("logit_lens", "the parameters are frozen (requires_grad_(False)) for speed and never unfrozen")
def lens_freezes_parameters(model, idx):
    model.requires_grad_(False)
    return logit_lens(model, idx)


@mistake("logit_lens", "the model is converted with model.double() for precision and left that way")
def lens_converts_model(model, idx):
    model.double()
    return logit_lens(model, idx)


@mutant("logit_lens", "a sequence longer than max_len is not reported", replace={"if T > model.pos_emb.num_embeddings":
                                                                                "if T > 10**9"})
def lens_no_max_len_check(): ...


@mutant("logit_lens", "token ids are not range-checked (the embedding raises an IndexError instead)",
        replace={"if idx.numel() and (idx.min() < 0 or idx.max() >= model.tok_emb.num_embeddings):":
                 "if idx.numel() and idx.min() < -1:"})
def lens_no_id_check(): ...


@mutant("logit_lens", "float token ids are accepted", replace={"or idx.is_floating_point()": ""})
def lens_accepts_float_ids(): ...


@mutant("logit_lens", "only int64 token ids are accepted: int32 ids, which nn.Embedding takes, are rejected",
        replace={"or idx.dtype == torch.bool):": "or idx.dtype != torch.long):"})
def lens_int64_only(): ...


@mutant("logit_lens", "torch.inference_mode() instead of torch.no_grad(): the lens is an inference tensor, which a "
        "caller cannot use in a later computation that autograd records",
        replace={"with torch.no_grad():  # a reading": "with torch.inference_mode():  # a reading"})
def lens_inference_mode(): ...


@mistake("logit_lens", "torch.set_grad_enabled(False) ... torch.set_grad_enabled(True): a caller inside "
         "torch.no_grad() gets grad mode switched on")
def lens_switches_grad_on(model, idx):
    torch.set_grad_enabled(False)
    try:
        return logit_lens(model, idx)
    finally:
        torch.set_grad_enabled(True)


@mistake("logit_lens", "the parameters are frozen for the reading and then all unfrozen with "
         "model.requires_grad_(True): the ones the caller had frozen come back trainable")
def lens_unfreezes_everything(model, idx):
    model.requires_grad_(False)
    try:
        return logit_lens(model, idx)
    finally:
        model.requires_grad_(True)


@mistake("logit_lens", "model.zero_grad() \"to be clean\": the gradients the caller had accumulated are thrown away")
def lens_zero_grad(model, idx):
    result = logit_lens(model, idx)
    model.zero_grad()
    return result


@mistake("logit_lens", "model.eval() before idx is checked: when the lens raises its ValueError, the model is left "
         "in eval mode")
def lens_eval_before_checking(model, idx):
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    _lens_validated(model, idx)  # raises with the model still in eval mode
    for m, t in modes:
        m.training = t
    return logit_lens(model, idx)


@mistake("logit_lens", "hooks on the blocks, removed only after a successful forward: when the model raises (idx "
         "too long, an id out of range), the hooks stay registered")
def lens_hooks_removed_on_success_only(model, idx):
    if not isinstance(idx, Tensor) or idx.is_floating_point() or idx.dtype == torch.bool:
        raise ValueError(f"idx must be an integer tensor, got {idx!r}")
    captured = []
    handles = [model.drop.register_forward_hook(lambda m, args, out: captured.append(out))]
    handles += [b.register_forward_hook(lambda m, args, out: captured.append(out)) for b in model.blocks]
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            logits = model(idx)  # the model's own ValueError for a bad idx
            result = torch.stack([model.head(model.ln_f(h)) for h in captured[:-1]] + [logits])
    finally:
        for m, t in modes:
            m.training = t
    for h in handles:
        h.remove()
    return result


@variant("logit_lens", "forward PRE-hooks on every block and on ln_f: the input of block l is the stream after "
         "block l - 1, the input of ln_f the stream after the last block; handles removed in finally")
def lens_with_pre_hooks(model, idx):
    _lens_validated(model, idx)
    inputs = []
    grab = lambda module, args: inputs.append(args[0])  # noqa: E731
    handles = [b.register_forward_pre_hook(grab) for b in model.blocks] + [model.ln_f.register_forward_pre_hook(grab)]
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()
        with torch.no_grad():
            model(idx)
            return torch.stack([model.head(model.ln_f(h)) for h in list(inputs)])
    finally:
        for h in handles:
            h.remove()
        for m, t in modes.items():
            m.training = t


@variant("logit_lens", "forward hooks on model.drop and on every block, one ordinary forward pass, handles removed "
         "in finally; each module's mode remembered by name")
def lens_with_hooks(model, idx):
    _lens_validated(model, idx)
    captured = []
    handles = [model.drop.register_forward_hook(lambda m, args, out: captured.append(out))]
    handles += [b.register_forward_hook(lambda m, args, out: captured.append(out)) for b in model.blocks]
    modes = {name: m.training for name, m in model.named_modules()}
    try:
        model.eval()
        with torch.no_grad():
            logits = model(idx)
            readings = [model.head(model.ln_f(h)) for h in captured[:-1]] + [logits]
        return torch.stack(readings, dim=0)
    finally:
        for h in handles:
            h.remove()
        for name, m in model.named_modules():
            m.training = modes[name]


@variant("logit_lens", "a loop without model.drop (a no-op in eval mode), positions from pos_emb(arange(T)), the "
         "head applied once to all states concatenated along the batch")
def lens_concatenated(model, idx):
    _lens_validated(model, idx)
    saved = {m: m.training for m in model.modules()}
    try:
        for m in saved:
            m.training = False
        with torch.no_grad():
            T = idx.shape[1]
            h = model.tok_emb(idx) + model.pos_emb(torch.arange(T, device=idx.device))
            states = [h]
            for block in model.blocks:
                states.append(block(states[-1]))
            B = idx.shape[0]
            flat = model.head(model.ln_f(torch.cat(states, dim=0)))  # ((L + 1) * B, T, V)
            return flat.view(len(states), B, T, -1)
    finally:
        for m, t in saved.items():
            m.training = t
