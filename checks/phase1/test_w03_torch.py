"""Checks for w03_torch (Weeks 3-4: PyTorch fundamentals).

Oracles are PyTorch itself (``F.mse_loss``, ``F.cross_entropy``, ``F.linear``, ``F.gelu``,
``torch.autograd.gradcheck``/``gradgradcheck``, ``torch.optim.SGD`` on a copy of the model) and closed
forms computed here; the code under test is reached only through ``impl``.
"""

from __future__ import annotations

import copy
import math
from collections import namedtuple

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import Phase, given, settings
from hypothesis import strategies as st
from torch import nn

from checks.numerics import assert_close, describe, error_report, format_call, likely_cause

pytestmark = pytest.mark.kata("w03_torch")

KATA = "w03_torch"
F64 = torch.float64
seeds = st.integers(0, 2**31 - 1)
# Expensive checks (training loops) do not shrink a failing example: their inputs come from a seed, and
# shrinking would re-run the loop hundreds of times before the learner sees the message.
NO_SHRINK = (Phase.explicit, Phase.reuse, Phase.generate)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randn(shape, seed: int, dtype=F64, scale: float = 1.0) -> torch.Tensor:
    return torch.randn(tuple(shape), generator=_gen(seed), dtype=dtype) * scale


def _compare_with_torch(
    impl, symbol: str, expected, *args, because: str, rtol: float = 1e-7, atol: float = 1e-10, **kwargs
):
    """Call ``impl.<symbol>`` and compare with PyTorch's answer; name a catalogued mistake that matches."""
    actual = getattr(impl, symbol)(*args, **kwargs)
    assert isinstance(actual, torch.Tensor), (
        f"Called {format_call(symbol, args, kwargs)}. Returned {describe(actual)}, expected a torch.Tensor, "
        "because the loss must stay a tensor that autograd can differentiate."
    )
    cause = None
    if error_report(actual.detach(), expected, rtol, atol) is not None:
        cause = likely_cause(KATA, symbol, lambda f: f(*args, **kwargs).detach(), actual.detach(), rtol=rtol, atol=atol)
    assert_close(
        actual.detach(),
        expected,
        call=format_call(symbol, args, kwargs),
        because=because,
        rtol=rtol,
        atol=atol,
        cause=cause,
    )
    return actual


def _run_gradcheck(fn, inputs, *, call: str, second_order: bool = False) -> None:
    """gradcheck / gradgradcheck in float64 with a message that says which one failed and what it means."""
    check = torch.autograd.gradgradcheck if second_order else torch.autograd.gradcheck
    try:
        ok = check(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-3)
    except NotImplementedError:
        raise
    except Exception as err:  # noqa: BLE001 - gradcheck reports through several exception types
        if second_order:
            why = (
                "gradgradcheck differentiates your backward itself: write backward with torch operations on "
                "the saved tensors (no torch.no_grad(), .detach(), .numpy() or .item()) and keep it correct."
            )
        else:
            why = (
                "gradcheck compares your backward with central differences of your forward: every gradient "
                "must have the shape of its input, be scaled by grad_output, and be summed over the batch."
            )
        raise AssertionError(
            f"Called {'gradgradcheck' if second_order else 'gradcheck'} on {call}.\n"
            f"It failed: {str(err).strip()[:1500]}\nBecause {why}"
        ) from None
    assert ok, f"{'gradgradcheck' if second_order else 'gradcheck'} on {call} returned False."


# ----------------------------------------------------------------------------------------------------
# SimpleNet
# ----------------------------------------------------------------------------------------------------

sizes = st.integers(1, 6)
lead_shapes = st.lists(st.integers(1, 4), min_size=0, max_size=2).map(tuple)


def _load(net: nn.Module, weights: dict[str, torch.Tensor]) -> None:
    try:
        net.load_state_dict(weights)
    except RuntimeError as err:
        raise AssertionError(
            f"Could not load the weights {sorted(weights)} into SimpleNet: {err}\n"
            "Because SimpleNet must keep the seed's names: self.layer1 and self.layer2 as nn.Linear with bias "
            "(their only parameters), self.relu for the activation."
        ) from None


@pytest.mark.exercise("SimpleNet")
@given(sizes, sizes, sizes, lead_shapes, seeds)
def test_simplenet_output_shape_for_any_batch(impl, n_in, n_hidden, n_out, lead, seed):
    net = impl.SimpleNet(n_in, n_hidden, n_out)
    x = torch.randn(*lead, n_in, generator=_gen(seed))
    out = net(x)
    assert isinstance(out, torch.Tensor) and out.shape == (*lead, n_out), (
        f"Called SimpleNet({n_in}, {n_hidden}, {n_out}) on input of shape {tuple(x.shape)}. Returned "
        f"{describe(out)}, expected shape {(*lead, n_out)}, because nn.Linear acts on the last axis and every "
        "leading (batch) axis must pass through."
    )


@pytest.mark.exercise("SimpleNet")
@given(sizes, sizes, sizes)
def test_simplenet_parameter_count(impl, n_in, n_hidden, n_out):
    net = impl.SimpleNet(n_in, n_hidden, n_out)
    count = sum(p.numel() for p in net.parameters())
    expected = n_in * n_hidden + n_hidden + n_hidden * n_out + n_out
    assert count == expected, (
        f"Called SimpleNet({n_in}, {n_hidden}, {n_out}). It has {count} parameters, expected {expected} = "
        f"{n_in}*{n_hidden} + {n_hidden} + {n_hidden}*{n_out} + {n_out}, because each nn.Linear has a weight and "
        "a bias, and layers must be module attributes so that nn.Module registers them."
    )
    assert all(p.requires_grad for p in net.parameters()), "Every parameter of SimpleNet must require grad."


@pytest.mark.exercise("SimpleNet")
@given(sizes, sizes, sizes, st.integers(1, 5), seeds)
def test_simplenet_equals_hand_composition(impl, n_in, n_hidden, n_out, batch, seed):
    g = _gen(seed)
    weights = {
        "layer1.weight": torch.randn(n_hidden, n_in, generator=g),
        "layer1.bias": torch.randn(n_hidden, generator=g),
        "layer2.weight": torch.randn(n_out, n_hidden, generator=g),
        "layer2.bias": torch.randn(n_out, generator=g),
    }
    x = torch.randn(batch, n_in, generator=g)
    net = impl.SimpleNet(n_in, n_hidden, n_out)
    _load(net, weights)
    hidden = torch.clamp(x @ weights["layer1.weight"].T + weights["layer1.bias"], min=0)
    expected = hidden @ weights["layer2.weight"].T + weights["layer2.bias"]
    with torch.no_grad():
        out = net(x)
    assert_close(
        out,
        expected,
        call=f"SimpleNet({n_in}, {n_hidden}, {n_out})(x of shape {tuple(x.shape)})",
        because="the output is layer2(relu(layer1(x))): ReLU between the layers, nowhere else.",
        rtol=1e-5,
        atol=1e-5,
    )


@pytest.mark.exercise("SimpleNet")
def test_simplenet_gradients_reach_every_parameter(impl):
    net = impl.SimpleNet(4, 8, 3)
    net(torch.randn(16, 4, generator=_gen(1))).sum().backward()
    missing = [name for name, p in net.named_parameters() if p.grad is None]
    assert not missing, f"After net(x).sum().backward() these parameters have no gradient: {missing}."


@pytest.mark.exercise("SimpleNet")
@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")  # nn.Linear(0, ...) of a wrong answer
@pytest.mark.parametrize("bad", [0, -3])
@pytest.mark.parametrize("position", [0, 1, 2])
def test_simplenet_rejects_non_positive_sizes(impl, bad, position):
    args = [4, 5, 2]
    args[position] = bad
    with pytest.raises(ValueError, match=str(bad)):
        impl.SimpleNet(*args)


# ----------------------------------------------------------------------------------------------------
# mse_loss / cross_entropy
# ----------------------------------------------------------------------------------------------------

shapes = st.lists(st.integers(1, 5), min_size=1, max_size=3).map(tuple)
reductions = st.sampled_from(["mean", "sum", "none"])


@pytest.mark.exercise("mse_loss")
@given(shapes, reductions, seeds)
def test_mse_loss_matches_torch(impl, shape, reduction, seed):
    pred, target = _randn(shape, seed), _randn(shape, seed + 1, scale=2.0)
    _compare_with_torch(
        impl,
        "mse_loss",
        F.mse_loss(pred, target, reduction=reduction),
        pred,
        target,
        reduction=reduction,
        because=f"reduction={reduction!r} must agree with F.mse_loss: 'mean' divides by every element.",
    )


@pytest.mark.exercise("mse_loss")
@settings(max_examples=15)
@given(shapes, reductions, seeds)
def test_mse_loss_gradient_matches_torch(impl, shape, reduction, seed):
    pred, target = _randn(shape, seed).requires_grad_(), _randn(shape, seed + 1).requires_grad_()
    ref_pred, ref_target = pred.detach().clone().requires_grad_(), target.detach().clone().requires_grad_()
    upstream = _randn(shape, seed + 2) if reduction == "none" else torch.tensor(1.0, dtype=F64)
    impl.mse_loss(pred, target, reduction=reduction).backward(upstream)
    F.mse_loss(ref_pred, ref_target, reduction=reduction).backward(upstream)
    for name, mine, theirs in (("pred", pred, ref_pred), ("target", target, ref_target)):
        assert mine.grad is not None, f"mse_loss(..., reduction={reduction!r}) gave no gradient for {name}."
        assert_close(
            mine.grad,
            theirs.grad,
            call=f"mse_loss(pred, target, reduction={reduction!r}).backward()",
            because=f"the gradient for {name} must match F.mse_loss's (use torch operations only).",
        )


@pytest.mark.exercise("mse_loss")
def test_mse_loss_rejects_mismatched_shapes(impl):
    pred, target = torch.zeros(4, 1), torch.zeros(4)
    with pytest.raises(ValueError, match=r"\(4, 1\)"):
        impl.mse_loss(pred, target)


@pytest.mark.exercise("mse_loss")
def test_mse_loss_rejects_unknown_reduction(impl):
    with pytest.raises(ValueError, match="avg"):
        impl.mse_loss(torch.zeros(3), torch.ones(3), reduction="avg")


@st.composite
def classification_problems(draw, scale=None):
    """(logits (N, C) float64, target (N,) int64, ignore_index) with at least one counted position."""
    n, c = draw(st.integers(1, 6)), draw(st.integers(1, 5))
    ignore_index = draw(st.sampled_from([-100, -1, 0]))
    seed = draw(seeds)
    scale = draw(st.sampled_from([0.5, 3.0, 30.0])) if scale is None else scale
    logits = _randn((n, c), seed, scale=scale)
    classes = torch.randint(0, c, (n,), generator=_gen(seed + 1))
    ignored = torch.rand(n, generator=_gen(seed + 2)) < draw(st.sampled_from([0.0, 0.3, 0.6]))
    target = torch.where(ignored, torch.full_like(classes, ignore_index), classes)
    counted = target != ignore_index
    if not counted.any():  # make one position count, so that the mean is defined
        valid = [k for k in range(c) if k != ignore_index]
        if not valid:  # C == 1 and ignore_index == 0: every position would be ignored
            ignore_index = -100
            target = classes
        else:
            target[0] = valid[0]
    return logits, target, ignore_index


label_smoothings = st.sampled_from([0.0, 0.1, 0.25, 1.0])


@pytest.mark.exercise("mse_loss")
@settings(max_examples=25)
@given(classification_problems(), label_smoothings)
def test_cross_entropy_matches_torch(impl, problem, smoothing):
    logits, target, ignore_index = problem
    expected = F.cross_entropy(logits, target, ignore_index=ignore_index, label_smoothing=smoothing)
    _compare_with_torch(
        impl,
        "cross_entropy",
        expected,
        logits,
        target,
        ignore_index=ignore_index,
        label_smoothing=smoothing,
        because="it must agree with F.cross_entropy: ignored positions count for nothing (the mean "
        "is over the counted ones) and smoothing spreads eps over all C classes.",
    )


@pytest.mark.exercise("mse_loss")
@settings(max_examples=15)
@given(classification_problems(), label_smoothings)
def test_cross_entropy_gradient_matches_torch(impl, problem, smoothing):
    logits, target, ignore_index = problem
    mine, theirs = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    impl.cross_entropy(mine, target, ignore_index=ignore_index, label_smoothing=smoothing).backward()
    F.cross_entropy(theirs, target, ignore_index=ignore_index, label_smoothing=smoothing).backward()
    assert mine.grad is not None, "cross_entropy(...).backward() gave no gradient for the logits."
    assert_close(
        mine.grad,
        theirs.grad,
        call=format_call(
            "cross_entropy", (logits, target), {"ignore_index": ignore_index, "label_smoothing": smoothing}
        )
        + ".backward()",
        because="the gradient for the logits must match F.cross_entropy's (softmax minus the smoothed "
        "target, divided by the number of counted positions; zero on ignored rows).",
    )


@pytest.mark.exercise("mse_loss")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_cross_entropy_is_stable_for_huge_logits(impl, dtype, smoothing):
    logits = torch.tensor([[1e4, -1e4, 0.0], [-1e4, -1e4, 1e4], [1e4, 1e4, -1e4], [0.0, 1e4, 5.0]], dtype=dtype)
    target = torch.tensor([1, 2, 0, 0])
    logits.requires_grad_()
    loss = impl.cross_entropy(logits, target, label_smoothing=smoothing)
    expected = F.cross_entropy(logits.detach(), target, label_smoothing=smoothing)
    assert torch.isfinite(loss).all(), (
        f"Called cross_entropy with logits of +-1e4 ({dtype}). Returned {describe(loss.detach())}, expected "
        f"{expected.item():.6g}, because exp(1e4) overflows: subtract the row max before exp (log-sum-exp trick)."
    )
    assert_close(
        loss.detach(),
        expected,
        call=f"cross_entropy(logits of +-1e4, dtype {dtype})",
        because="the log-sum-exp trick gives the exact loss even for huge logits.",
        rtol=1e-5,
    )
    loss.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all(), (
        f"cross_entropy with logits of +-1e4: the gradient is {describe(logits.grad)}; it must be finite."
    )


@pytest.mark.exercise("mse_loss")
@settings(max_examples=15)
@given(classification_problems(), label_smoothings, st.integers(1, 4), seeds)
def test_cross_entropy_ignored_rows_change_nothing(impl, problem, smoothing, extra, seed):
    logits, target, ignore_index = problem
    padded_logits = torch.cat([logits, _randn((extra, logits.shape[1]), seed, scale=5.0)])
    padded_target = torch.cat([target, torch.full((extra,), ignore_index, dtype=target.dtype)])
    base = impl.cross_entropy(logits, target, ignore_index=ignore_index, label_smoothing=smoothing)
    padded = impl.cross_entropy(padded_logits, padded_target, ignore_index=ignore_index, label_smoothing=smoothing)
    assert_close(
        padded.detach(),
        base.detach(),
        call=f"cross_entropy on the same rows plus {extra} rows whose target is ignore_index={ignore_index}",
        because="padding rows must neither add to the loss nor count in the mean's denominator.",
    )


@pytest.mark.exercise("mse_loss")
@pytest.mark.parametrize(
    ("logits_shape", "target", "kwargs", "match"),
    [
        ((3, 4), [0, 7, -100], {}, "7"),
        ((3, 4), [0, -2, 1], {}, "-2"),
        ((2, 3), [0, 1], {"label_smoothing": 1.5}, "1.5"),
        ((2, 3), [0, 1], {"label_smoothing": -0.1}, "-0.1"),
        ((4,), [0], {}, r"\(4,\)"),
        ((3, 4), [0, 1], {}, r"\(2,\)"),
    ],
)
def test_cross_entropy_rejects_bad_input(impl, logits_shape, target, kwargs, match):
    with pytest.raises(ValueError, match=match):
        impl.cross_entropy(torch.zeros(logits_shape), torch.tensor(target), **kwargs)


# ----------------------------------------------------------------------------------------------------
# LinearFunction / GELUFunction
# ----------------------------------------------------------------------------------------------------


@st.composite
def linear_problems(draw, requires_grad=False):
    """(x (*, in), weight (out, in), bias (out,) or None) in float64."""
    lead = draw(st.lists(st.integers(1, 3), min_size=0, max_size=2).map(tuple))
    n_in, n_out = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    seed = draw(seeds)
    x = _randn((*lead, n_in), seed)
    weight = _randn((n_out, n_in), seed + 1)
    bias = _randn((n_out,), seed + 2) if draw(st.booleans()) else None
    if requires_grad:
        x.requires_grad_()
        weight.requires_grad_()
        if bias is not None:
            bias.requires_grad_()
    return x, weight, bias


def _linear_call(x, weight, bias) -> str:
    bias_text = "None" if bias is None else f"bias {tuple(bias.shape)}"
    return f"LinearFunction.apply(x {tuple(x.shape)}, weight {tuple(weight.shape)}, {bias_text}) in float64"


@pytest.mark.exercise("LinearFunction")
@given(linear_problems())
def test_linear_forward_matches_f_linear(impl, problem):
    x, weight, bias = problem
    assert issubclass(impl.LinearFunction, torch.autograd.Function), "LinearFunction must subclass autograd.Function."
    out = impl.LinearFunction.apply(x, weight, bias)
    assert_close(
        out,
        F.linear(x, weight, bias),
        call=_linear_call(x, weight, bias),
        because="forward is x @ weight.T + bias, exactly F.linear.",
    )


@pytest.mark.exercise("LinearFunction")
@settings(max_examples=10)
@given(linear_problems(requires_grad=True))
def test_linear_gradcheck(impl, problem):
    _run_gradcheck(impl.LinearFunction.apply, problem, call=_linear_call(*problem))


@pytest.mark.exercise("LinearFunction")
@settings(max_examples=10)
@given(linear_problems(requires_grad=True))
def test_linear_gradgradcheck(impl, problem):
    _run_gradcheck(impl.LinearFunction.apply, problem, call=_linear_call(*problem), second_order=True)


@pytest.mark.exercise("LinearFunction")
@settings(max_examples=15)
@given(linear_problems(), seeds)
def test_linear_backward_matches_f_linear(impl, problem, seed):
    x, weight, bias = problem
    mine = [t.clone().requires_grad_() if t is not None else None for t in problem]
    theirs = [t.clone().requires_grad_() if t is not None else None for t in problem]
    upstream = _randn((*x.shape[:-1], weight.shape[0]), seed)
    impl.LinearFunction.apply(*mine).backward(upstream)
    F.linear(*theirs).backward(upstream)
    for name, a, b in zip(("x", "weight", "bias"), mine, theirs, strict=True):
        if b is None:
            continue
        assert a.grad is not None, f"{_linear_call(x, weight, bias)}: backward gave no gradient for {name}."
        assert_close(
            a.grad,
            b.grad,
            call=_linear_call(x, weight, bias) + ".backward(grad_output)",
            because=f"dL/d{name} must equal F.linear's for the same grad_output (chain rule: scale by it).",
        )


gelu_inputs = st.lists(st.floats(-8, 8, allow_nan=False, allow_infinity=False), min_size=1, max_size=8)


@pytest.mark.exercise("LinearFunction")
@given(gelu_inputs)
def test_gelu_forward_matches_torch_tanh_gelu(impl, values):
    x = torch.tensor(values, dtype=F64)
    assert issubclass(impl.GELUFunction, torch.autograd.Function), "GELUFunction must subclass torch.autograd.Function."
    assert_close(
        impl.GELUFunction.apply(x),
        F.gelu(x, approximate="tanh"),
        call=f"GELUFunction.apply({describe(x)})",
        because='it must equal F.gelu(x, approximate="tanh"): 0.5 x (1 + tanh(sqrt(2/pi)(x + 0.044715 x^3))).',
    )


@pytest.mark.exercise("LinearFunction")
def test_gelu_forward_extreme_inputs(impl):
    x = torch.tensor([-1e4, -50.0, -1e-8, 0.0, 1e-8, 50.0, 1e4], dtype=F64)
    out = impl.GELUFunction.apply(x)
    assert_close(
        out,
        F.gelu(x, approximate="tanh"),
        call=f"GELUFunction.apply({describe(x)})",
        because="GELU is ~0 for large negative inputs and ~x for large positive ones, never nan.",
    )


@pytest.mark.exercise("LinearFunction")
@settings(max_examples=10)
@given(st.lists(st.integers(1, 3), min_size=0, max_size=2), seeds)
def test_gelu_gradcheck(impl, shape, seed):
    x = _randn(shape, seed, scale=2.0).requires_grad_()
    _run_gradcheck(impl.GELUFunction.apply, (x,), call=f"GELUFunction.apply(x of shape {tuple(shape)}) in float64")


@pytest.mark.exercise("LinearFunction")
@settings(max_examples=10)
@given(st.lists(st.integers(1, 3), min_size=0, max_size=2), seeds)
def test_gelu_gradgradcheck(impl, shape, seed):
    x = _randn(shape, seed, scale=2.0).requires_grad_()
    _run_gradcheck(
        impl.GELUFunction.apply,
        (x,),
        call=f"GELUFunction.apply(x of shape {tuple(shape)}) in float64",
        second_order=True,
    )


# ----------------------------------------------------------------------------------------------------
# train_step
# ----------------------------------------------------------------------------------------------------


def _regression_problem(seed: int, n: int = 16, n_in: int = 3, n_out: int = 2):
    g = _gen(seed)
    model = nn.Linear(n_in, n_out).to(F64)
    with torch.no_grad():
        model.weight.copy_(torch.randn(n_out, n_in, generator=g, dtype=F64))
        model.bias.copy_(torch.randn(n_out, generator=g, dtype=F64))
    x = torch.randn(n, n_in, generator=g, dtype=F64)
    y = torch.randn(n, n_out, generator=g, dtype=F64)
    return model, x, y


def _fresh_sgd_steps(model: nn.Module, batches, lr: float) -> nn.Module:
    """The oracle: a copy of ``model`` after one clean SGD step per batch."""
    model = copy.deepcopy(model)
    for x, y in batches:
        grads = torch.autograd.grad(F.mse_loss(model(x), y), list(model.parameters()))
        with torch.no_grad():
            for p, g in zip(model.parameters(), grads, strict=True):
                p -= lr * g
    return model


def _assert_same_parameters(model: nn.Module, expected: nn.Module, call: str, because: str) -> None:
    for (name, p), q in zip(model.named_parameters(), expected.parameters(), strict=True):
        assert_close(p.detach(), q.detach(), call=call + f" (parameter {name})", because=because)


@pytest.mark.exercise("train_step")
@settings(max_examples=5, phases=NO_SHRINK)
@given(seeds)
def test_train_step_returns_float_loss_before_update(impl, seed):
    model, x, y = _regression_problem(seed)
    with torch.no_grad():
        expected = F.mse_loss(model(x), y).item()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    result = impl.train_step(model, (x, y), optimizer, F.mse_loss)
    assert type(result) is float, (
        f"Called train_step(...). Returned {describe(result)} of type {type(result).__name__}, expected a Python "
        "float, because a loss tensor keeps its autograd graph alive: return loss.item()."
    )
    assert math.isclose(result, expected, rel_tol=1e-9, abs_tol=1e-12), (
        f"Called train_step(...). Returned {result!r}, expected {expected!r}, because it returns the loss of the "
        "batch computed before optimizer.step(), the loss the gradient was taken on."
    )


@pytest.mark.exercise("train_step")
@settings(max_examples=5, phases=NO_SHRINK)
@given(seeds)
def test_train_step_updates_like_one_sgd_step(impl, seed):
    model, x, y = _regression_problem(seed)
    expected = _fresh_sgd_steps(model, [(x, y)], lr=0.1)
    impl.train_step(model, (x, y), torch.optim.SGD(model.parameters(), lr=0.1), F.mse_loss)
    _assert_same_parameters(
        model,
        expected,
        "train_step(model, (x, y), SGD(lr=0.1), F.mse_loss) once",
        "one step moves every parameter by -lr * dloss/dparam (zero_grad, backward, then step).",
    )


@pytest.mark.exercise("train_step")
@settings(max_examples=5, phases=NO_SHRINK)
@given(seeds)
def test_train_step_gradients_do_not_accumulate(impl, seed):
    model, x, y = _regression_problem(seed)
    x2, y2 = _randn(x.shape, seed + 7), _randn(y.shape, seed + 8)
    expected = _fresh_sgd_steps(model, [(x, y), (x2, y2)], lr=0.1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    impl.train_step(model, (x, y), optimizer, F.mse_loss)
    impl.train_step(model, (x2, y2), optimizer, F.mse_loss)
    _assert_same_parameters(
        model,
        expected,
        "train_step twice on the same model and SGD optimizer",
        "the second step must use only the second batch's gradient: loss.backward() adds to "
        ".grad, so call optimizer.zero_grad() before it.",
    )


@pytest.mark.exercise("train_step")
@settings(max_examples=5, phases=NO_SHRINK)
@given(seeds)
def test_train_step_ignores_stale_gradients(impl, seed):
    model, x, y = _regression_problem(seed)
    expected = _fresh_sgd_steps(model, [(x, y)], lr=0.1)
    for p in model.parameters():
        p.grad = torch.full_like(p, 100.0)  # left over by someone else's backward
    impl.train_step(model, (x, y), torch.optim.SGD(model.parameters(), lr=0.1), F.mse_loss)
    _assert_same_parameters(
        model,
        expected,
        "train_step on a model whose .grad already held 100.0 everywhere",
        "gradients left over from before must not leak into this step: zero them before backward.",
    )


@pytest.mark.exercise("train_step")
@settings(max_examples=3, phases=NO_SHRINK)
@given(seeds)
def test_train_step_loss_decreases_on_a_fixed_problem(impl, seed):
    g = _gen(seed)
    x = torch.randn(32, 4, generator=g)
    y = x @ torch.randn(4, 1, generator=g) + 0.3
    model = nn.Linear(4, 1)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    losses = [impl.train_step(model, (x, y), optimizer, nn.MSELoss()) for _ in range(15)]
    assert losses[-1] < 0.5 * losses[0], (
        f"Called train_step 15 times on the same batch (SGD, lr=0.1). The losses went from {losses[0]:.4g} to "
        f"{losses[-1]:.4g}; they must fall below half the first, because each step moves against the gradient. "
        f"Losses: {[round(v, 4) for v in losses[:8]]} ..."
    )


@pytest.mark.exercise("train_step")
def test_train_step_puts_the_model_in_training_mode(impl):
    model, x, y = _regression_problem(3)
    model.eval()
    impl.train_step(model, (x, y), torch.optim.SGD(model.parameters(), lr=0.1), F.mse_loss)
    assert model.training, (
        "Called train_step on a model left in eval mode. Afterwards model.training is False, expected True, "
        "because dropout and batch norm must behave as in training: call model.train()."
    )


# ----------------------------------------------------------------------------------------------------
# fit_linear_regression
# ----------------------------------------------------------------------------------------------------


def _gd_oracle(x: np.ndarray, y: np.ndarray, lr: float, steps: int) -> tuple[np.ndarray, float]:
    """Closed-form gradient descent on mean((x @ w + b - y)^2) from zeros, in NumPy."""
    w, b = np.zeros(x.shape[1]), 0.0
    for _ in range(steps):
        residual = x @ w + b - y
        w, b = w - lr * 2.0 * x.T @ residual / len(y), b - lr * 2.0 * residual.mean()
    return w, b


@st.composite
def regression_data(draw, noise: float = 0.0):
    n, d, seed = draw(st.integers(32, 64)), draw(st.integers(1, 4)), draw(seeds)
    g = _gen(seed)
    x = torch.randn(n, d, generator=g, dtype=F64)
    true_w = torch.rand(d, generator=g, dtype=F64) * 4 - 2
    true_b = float(torch.rand((), generator=g, dtype=F64) * 2 - 1)
    y = x @ true_w + true_b + noise * torch.randn(n, generator=g, dtype=F64)
    return x, y, true_w, true_b


def _check_result_shapes(result, d: int):
    assert isinstance(result, tuple) and len(result) == 2, (
        f"fit_linear_regression returned {describe(result)}; expected a tuple (weight, bias)."
    )
    weight, bias = result
    assert isinstance(weight, torch.Tensor) and weight.shape == (d,), (
        f"fit_linear_regression returned weight {describe(weight)}; expected a tensor of shape ({d},)."
    )
    assert isinstance(bias, torch.Tensor) and bias.shape == (), (
        f"fit_linear_regression returned bias {describe(bias)}; expected a 0-d tensor (shape ())."
    )
    return weight, bias


@pytest.mark.exercise("fit_linear_regression")
@settings(max_examples=5, phases=NO_SHRINK)
@given(regression_data())
def test_fit_linear_regression_recovers_known_weights(impl, data):
    x, y, true_w, true_b = data
    weight, bias = _check_result_shapes(impl.fit_linear_regression(x, y, lr=0.1, steps=500), x.shape[1])
    truth = f"y = x @ {true_w.numpy().round(3)} + {true_b:.3f}"
    call = f"fit_linear_regression(x {tuple(x.shape)}, {truth}, lr=0.1, steps=500)"
    assert_close(
        weight,
        true_w,
        call=call + " -> weight",
        atol=1e-4,
        rtol=0,
        because="on noise-free data, 500 steps of gradient descent on the mean squared error recover them.",
    )
    assert_close(
        bias,
        torch.tensor(true_b, dtype=F64),
        call=call + " -> bias",
        atol=1e-4,
        rtol=0,
        because="the bias is fitted too (it starts at 0 and descends like the weights).",
    )


@pytest.mark.exercise("fit_linear_regression")
@settings(max_examples=5, phases=NO_SHRINK)
@given(regression_data(noise=0.3))
def test_fit_linear_regression_reaches_least_squares(impl, data):
    x, y, _, _ = data
    weight, bias = _check_result_shapes(impl.fit_linear_regression(x, y, lr=0.1, steps=500), x.shape[1])
    design = torch.cat([x, torch.ones(len(x), 1, dtype=F64)], dim=1)
    solution = torch.linalg.lstsq(design, y.unsqueeze(1)).solution.squeeze(1)
    assert_close(
        torch.cat([weight, bias.reshape(1)]),
        solution,
        call="fit_linear_regression on noisy data",
        atol=1e-4,
        rtol=0,
        because="gradient descent on the mean squared error converges to the least-"
        "squares solution [weight, bias] (torch.linalg.lstsq).",
    )


@pytest.mark.exercise("fit_linear_regression")
@given(regression_data(), st.integers(0, 3), st.floats(0.01, 0.3))
def test_fit_linear_regression_follows_gradient_descent(impl, data, steps, lr):
    x, y, _, _ = data
    x_before, y_before = x.clone(), y.clone()
    weight, bias = _check_result_shapes(impl.fit_linear_regression(x, y, lr=lr, steps=steps), x.shape[1])
    w_expected, b_expected = _gd_oracle(x.numpy(), y.numpy(), lr, steps)
    call = f"fit_linear_regression(x {tuple(x.shape)}, y, lr={lr!r}, steps={steps})"
    assert_close(
        weight,
        w_expected,
        call=call + " -> weight",
        rtol=1e-9,
        atol=1e-12,
        because="starting from zeros, each step is w -= lr * 2/N * x^T (x w + b - y): the MEAN squared "
        "error, with .grad cleared between steps.",
    )
    assert_close(
        bias,
        np.float64(b_expected),
        call=call + " -> bias",
        rtol=1e-9,
        atol=1e-12,
        because="each step is b -= lr * 2 * mean(x w + b - y).",
    )
    assert not weight.requires_grad and not bias.requires_grad, (
        f"Called {call}. The returned tensors still require grad; return weight.detach(), bias.detach()."
    )
    assert torch.equal(x, x_before) and torch.equal(y, y_before), f"Called {call}. It modified x or y."


@pytest.mark.exercise("fit_linear_regression")
@pytest.mark.parametrize(
    ("shape_x", "shape_y", "kwargs", "match"),
    [
        ((8,), (8,), {}, r"\(8,\)"),
        ((8, 2), (7,), {}, r"\(7,\)"),
        ((8, 2), (8, 1), {}, r"\(8, 1\)"),
        ((8, 2), (8,), {"steps": -1}, "-1"),
        ((8, 2), (8,), {"lr": 0.0}, "0.0"),
    ],
)
def test_fit_linear_regression_rejects_bad_input(impl, shape_x, shape_y, kwargs, match):
    with pytest.raises(ValueError, match=match):
        impl.fit_linear_regression(torch.zeros(shape_x, dtype=F64), torch.zeros(shape_y, dtype=F64), **kwargs)


# ----------------------------------------------------------------------------------------------------
# to_device
# ----------------------------------------------------------------------------------------------------

Pair = namedtuple("Pair", ["first", "second"])


class _Opaque:
    """A user object: to_device must hand back this very object."""

    def __repr__(self) -> str:
        return "_Opaque()"


def _tensor_leaf(shape, seed, integer):
    if integer:
        return torch.randint(-5, 5, shape, generator=_gen(seed))
    return torch.randn(shape, generator=_gen(seed))


tensor_leaves = st.builds(_tensor_leaf, st.lists(st.integers(1, 3), max_size=2).map(tuple), seeds, st.booleans())
other_leaves = st.one_of(
    st.integers(-5, 5),
    st.floats(allow_nan=False),
    st.text(max_size=3),
    st.none(),
    st.booleans(),
    st.builds(_Opaque),
    st.builds(lambda v: np.full(2, v), st.integers(0, 3)),
)
nested = st.recursive(
    st.one_of(tensor_leaves, other_leaves),
    lambda children: st.one_of(
        st.lists(children, max_size=3),
        st.lists(children, max_size=3).map(tuple),
        st.dictionaries(st.text(max_size=2), children, max_size=3),
        st.builds(Pair, children, children),
    ),
    max_leaves=8,
)
cpu_devices = st.sampled_from(["cpu", torch.device("cpu")])


def _assert_moved(out, original, device: torch.device, path: str = "obj") -> None:
    """``out`` mirrors ``original``: same containers and keys, tensors on ``device``, other leaves identical."""
    if isinstance(original, torch.Tensor):
        assert isinstance(out, torch.Tensor), f"{path}: expected a tensor, got {describe(out)}."
        assert out.device.type == device.type, f"{path}: the tensor is on {out.device}, expected {device}."
        assert out.shape == original.shape and out.dtype == original.dtype, (
            f"{path}: the tensor changed from shape {tuple(original.shape)} {original.dtype} to "
            f"{tuple(out.shape)} {out.dtype}; .to(device) keeps both."
        )
        if device.type != "meta":
            assert torch.equal(out.cpu(), original.cpu()), f"{path}: the tensor's values changed."
        return
    if isinstance(original, dict | list | tuple):
        assert type(out) is type(original), (
            f"{path}: a {type(original).__name__} came back as {type(out).__name__}; containers keep their type"
            + (" (a namedtuple is rebuilt with type(obj)(*items))." if hasattr(original, "_fields") else ".")
        )
        if isinstance(original, dict):
            assert list(out) == list(original), (
                f"{path}: the dict's keys changed from {list(original)} to {list(out)}; every key stays, in order."
            )
            for key in original:
                _assert_moved(out[key], original[key], device, f"{path}[{key!r}]")
        else:
            assert len(out) == len(original), (
                f"{path}: a {type(original).__name__} of {len(original)} items came back with {len(out)}; "
                "non-tensor items must be kept, not dropped."
            )
            for i, (a, b) in enumerate(zip(out, original, strict=True)):
                _assert_moved(a, b, device, f"{path}[{i}]")
        return
    assert out is original, (
        f"{path}: {describe(original)} came back as a different object {describe(out)}; anything that is not a "
        "tensor or a container is returned as the very same object (no copies)."
    )


def _snapshot(obj):
    """What the input looks like: containers, keys, and the identity and device of every leaf."""
    if isinstance(obj, torch.Tensor):
        return ("tensor", id(obj), obj.device.type)
    if isinstance(obj, dict):
        return (dict, tuple((k, _snapshot(v)) for k, v in obj.items()))
    if isinstance(obj, list | tuple):
        return (type(obj), tuple(_snapshot(v) for v in obj))
    return ("leaf", id(obj))


@pytest.mark.exercise("to_device")
@given(nested, cpu_devices)
def test_to_device_preserves_structure_on_cpu(impl, obj, device):
    out = impl.to_device(obj, device)
    _assert_moved(out, obj, torch.device(device))


@pytest.mark.exercise("to_device")
@given(nested)
def test_to_device_moves_every_tensor(impl, obj):
    # "meta" tensors have a device but no data: a real move that needs no GPU.
    out = impl.to_device(obj, "meta")
    _assert_moved(out, obj, torch.device("meta"))


@pytest.mark.exercise("to_device")
@given(nested)
def test_to_device_does_not_modify_its_input(impl, obj):
    before = _snapshot(obj)
    impl.to_device(obj, torch.device("meta"))
    assert _snapshot(obj) == before, (
        "Called to_device(obj, 'meta'). Afterwards obj itself had changed (a tensor in it was replaced or moved), "
        "because the function assigned into the caller's containers; build new ones instead."
    )


@pytest.mark.exercise("to_device")
def test_to_device_example_batch(impl):
    lengths, tag = [3, 5], _Opaque()
    batch = {
        "input_ids": torch.arange(6).reshape(2, 3),
        "lengths": lengths,
        "meta": Pair("id7", torch.ones(2)),
        "extra": (tag, None, [torch.zeros(1), 2.5]),
    }
    out = impl.to_device(batch, "meta")
    _assert_moved(out, batch, torch.device("meta"), "batch")
    assert out["meta"].first == "id7" and out["extra"][0] is tag, "to_device must keep field values and objects."


@pytest.mark.exercise("to_device")
@pytest.mark.gpu
def test_to_device_round_trip_through_cuda(impl):
    batch = {"x": torch.randn(3, 2, generator=_gen(0)), "items": [torch.arange(4), "text"]}
    batch["pair"] = Pair(1, torch.ones(1))
    on_gpu = impl.to_device(batch, torch.device("cuda"))
    _assert_moved(on_gpu, batch, torch.device("cuda"), "batch")
    back = impl.to_device(on_gpu, "cpu")
    _assert_moved(back, batch, torch.device("cpu"), "batch")
