"""Checks for w03_torch (Weeks 3-4: PyTorch fundamentals).

Oracles are PyTorch itself (``F.mse_loss``, ``F.cross_entropy``, ``F.linear``, ``F.gelu``,
``torch.autograd.gradcheck``/``gradgradcheck``, ``torch.optim`` on a copy of the model) and closed
forms computed here; the code under test is reached only through ``impl``.

Checklist notes (CONTRACTS.md items that do not apply, and why):
- Randomness (8): no exercise takes a generator or draws random numbers of its own; SimpleNet's initial
  weights are nn.Linear's default initialisation, which the docstring leaves to PyTorch.
- Init statistics (7): same reason; structure (names, shapes, bias, nothing extra) is checked.
- dtypes (3): SimpleNet creates no tensors (its nn.Linear layers follow the module's ``.to()``);
  LinearFunction/GELUFunction create none either, so the float64 comparisons with F.linear/F.gelu
  (plus one float32 GELU check) cover them. train_step moves nothing.
- Devices (3): only fit_linear_regression creates tensors; it runs on the ``meta`` device. to_device
  moves to ``meta`` and, with a GPU, to CUDA and back.
- State over time (6): train_step is called twice with a momentum optimizer and on stale gradients;
  the other exercises are pure functions (fit_linear_regression builds its parameters anew each call).
- Errors (10): LinearFunction, GELUFunction, train_step and to_device document no errors.
- Numerics at scale (9): mse_loss and LinearFunction are polynomials with no overflow-prone step;
  cross_entropy (rows of +-1e4 next to ordinary rows) and GELU (+-1e4, both passes) are checked.
"""

from __future__ import annotations

import copy
import math
import re
from collections import namedtuple

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import Phase, example, given, settings
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


def _shape_pattern(shape) -> str:
    """A regex for a shape as an error message may print it: ``(4, 1)``, ``[4, 1]`` or ``torch.Size([4, 1])``."""
    items = ", ".join(str(n) for n in shape)
    as_tuple = f"({items},)" if len(shape) == 1 else f"({items})"
    return f"{re.escape(as_tuple)}|{re.escape(f'[{items}]')}"


def _tolerance(dtype: torch.dtype) -> dict[str, float]:
    """Comparisons with PyTorch: tight in float64, what float32 can meet on any CPU otherwise."""
    return {"rtol": 1e-7, "atol": 1e-10} if dtype == F64 else {"rtol": 1e-5, "atol": 1e-6}


def _assert_unchanged(call: str, **pairs) -> None:
    """Each name maps to (tensor after the call, pristine copy taken before it)."""
    for name, (after, before) in pairs.items():
        assert after.shape == before.shape and after.dtype == before.dtype and torch.equal(after, before), (
            f"Called {call}. Afterwards the caller's `{name}` had changed, expected it untouched, because the "
            "function must not modify its inputs (no in-place operations such as -= on them)."
        )


_ARGUMENTS = {"mse_loss": ("pred", "target"), "cross_entropy": ("logits", "target")}


def _compare_with_torch(
    impl, symbol: str, expected, *args, because: str, rtol: float = 1e-7, atol: float = 1e-10, **kwargs
):
    """Call ``impl.<symbol>`` and compare with PyTorch's answer (value, dtype, inputs left untouched); name a
    catalogued mistake that reproduces a wrong value."""
    pristine = [a.clone() if isinstance(a, torch.Tensor) else a for a in args]
    actual = getattr(impl, symbol)(*args, **kwargs)
    call = format_call(symbol, pristine, kwargs)
    assert isinstance(actual, torch.Tensor), (
        f"Called {call}. Returned {describe(actual)}, expected a torch.Tensor, "
        "because the loss must stay a tensor that autograd can differentiate."
    )
    _assert_unchanged(call, **{name: (a, b) for name, a, b in zip(_ARGUMENTS[symbol], args, pristine, strict=True)})
    assert actual.dtype == expected.dtype, (
        f"Called {call}. Returned a tensor of dtype {actual.dtype}, expected {expected.dtype}, because the "
        "result keeps the dtype of the inputs (as PyTorch's does)."
    )
    cause = None
    if error_report(actual.detach(), expected, rtol, atol) is not None:
        cause = likely_cause(
            KATA,
            symbol,
            lambda f: f(*[copy.deepcopy(a) for a in pristine], **kwargs).detach(),
            actual.detach(),
            rtol=rtol,
            atol=atol,
        )
    assert_close(
        actual.detach(),
        expected,
        call=call,
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
lead_shapes = st.lists(st.integers(0, 4), min_size=0, max_size=2).map(tuple)  # a 0 is an empty batch
SIZE_NAMES = ("input_size", "hidden_size", "output_size")


def _load(net: nn.Module, weights: dict[str, torch.Tensor]) -> None:
    try:
        net.load_state_dict(weights)
    except RuntimeError as err:
        raise AssertionError(
            f"Could not load the weights {sorted(weights)} into SimpleNet: {err}\n"
            "Because SimpleNet must keep the learning path's names: self.layer1 and self.layer2 as nn.Linear "
            "with bias (their only parameters), self.relu for the activation."
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
        "leading (batch) axis must pass through, even an empty one."
    )


@pytest.mark.exercise("SimpleNet")
@given(sizes, sizes, sizes)
def test_simplenet_structure(impl, n_in, n_hidden, n_out):
    net = impl.SimpleNet(n_in, n_hidden, n_out)
    call = f"SimpleNet({n_in}, {n_hidden}, {n_out})"
    for name, fan_in, fan_out in (("layer1", n_in, n_hidden), ("layer2", n_hidden, n_out)):
        layer = getattr(net, name, None)
        assert isinstance(layer, nn.Linear), (
            f"Called {call}. Its attribute `{name}` is {describe(layer)}, expected an nn.Linear, because the "
            "checks load weights by the learning path's names (layer1, relu, layer2)."
        )
        assert (layer.in_features, layer.out_features) == (fan_in, fan_out) and layer.bias is not None, (
            f"Called {call}. `{name}` is {layer}, expected nn.Linear({fan_in}, {fan_out}) with a bias, because "
            "layer1 maps input_size to hidden_size and layer2 hidden_size to output_size."
        )
    count = sum(p.numel() for p in net.parameters())
    expected = n_in * n_hidden + n_hidden + n_hidden * n_out + n_out
    assert count == expected, (
        f"Called {call}. It has {count} parameters, expected {expected} = "
        f"{n_in}*{n_hidden} + {n_hidden} + {n_hidden}*{n_out} + {n_out}, because each nn.Linear has a weight and "
        "a bias, and layers must be module attributes so that nn.Module registers them."
    )
    buffers = [name for name, _ in net.named_buffers()]
    assert not buffers, f"Called {call}. It has buffers {buffers}, expected none: Linear, ReLU, Linear keep no state."
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
    x = torch.randn(n_in, batch, generator=g).T  # a transposed (non-contiguous) batch, as x.T hands one over
    x_before = x.clone()
    net = impl.SimpleNet(n_in, n_hidden, n_out)
    _load(net, weights)
    hidden = torch.clamp(x @ weights["layer1.weight"].T + weights["layer1.bias"], min=0)
    expected = hidden @ weights["layer2.weight"].T + weights["layer2.bias"]
    call = f"SimpleNet({n_in}, {n_hidden}, {n_out})(x of shape {tuple(x.shape)})"
    with torch.no_grad():
        out = net(x)
    assert_close(
        out,
        expected,
        call=call,
        because="the output is layer2(relu(layer1(x))): ReLU between the layers, nowhere else.",
        rtol=1e-5,
        atol=1e-5,
    )
    _assert_unchanged(call, x=(x, x_before))
    probe = torch.linspace(-2.0, 2.0, 5)
    relu = getattr(net, "relu", None)
    assert callable(relu) and torch.equal(relu(probe.clone()), probe.clamp(min=0)), (
        f"Called {call}. Its attribute `relu` is {describe(relu)}; expected the ReLU activation (nn.ReLU()), "
        "because the learning path's SimpleNet names it self.relu."
    )


@pytest.mark.exercise("SimpleNet")
def test_simplenet_gradients_reach_every_parameter(impl):
    net = impl.SimpleNet(4, 8, 3)
    net(torch.randn(16, 4, generator=_gen(1))).sum().backward()
    missing = [name for name, p in net.named_parameters() if p.grad is None]
    assert not missing, f"After net(x).sum().backward() these parameters have no gradient: {missing}."


@pytest.mark.exercise("SimpleNet")
@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")  # nn.Linear(0, ...) of a wrong answer
@pytest.mark.parametrize(("position", "bad"), [(0, 0), (1, -3), (2, 0), (0, True), (1, 2.0), (2, -1)])
def test_simplenet_rejects_sizes_that_are_not_positive_ints(impl, position, bad):
    args = [4, 5, 2]
    args[position] = bad
    call = f"SimpleNet({', '.join(map(repr, args))})"
    with pytest.raises(ValueError) as info:
        impl.SimpleNet(*args)
    message, name = str(info.value), SIZE_NAMES[position]
    names_argument = re.search(rf"\b{name.replace('_', '[_ ]')}\b", message)
    assert names_argument and repr(bad) in message, (
        f"Called {call}. It raised ValueError({message!r}), expected a message that names {name} and its value "
        f"{bad!r}, because the learner who reads it must know which size is wrong (a bool or a float is no size)."
    )


# ----------------------------------------------------------------------------------------------------
# mse_loss / cross_entropy
# ----------------------------------------------------------------------------------------------------

shapes = st.lists(st.integers(0, 5), min_size=0, max_size=3).map(tuple)  # () is a 0-d tensor, a 0 is empty
reductions = st.sampled_from([None, "mean", "sum", "none"])  # None: leave the documented default, "mean"
dtypes = st.sampled_from([torch.float32, F64])


def _strided(shape, seed: int, dtype=F64, scale: float = 1.0) -> torch.Tensor:
    """A non-contiguous tensor of ``shape``: every other element of a larger one."""
    return _randn((*shape, 2), seed, dtype, scale)[..., 0]


@pytest.mark.exercise("mse_loss")
@given(shapes, reductions, dtypes, st.booleans(), seeds)
def test_mse_loss_matches_torch(impl, shape, reduction, dtype, strided, seed):
    make = _strided if strided else _randn
    pred, target = make(shape, seed, dtype), make(shape, seed + 1, dtype, scale=2.0)
    kwargs = {} if reduction is None else {"reduction": reduction}
    _compare_with_torch(
        impl,
        "mse_loss",
        F.mse_loss(pred, target, **kwargs),
        pred,
        target,
        because=f"reduction={reduction or 'mean (the default)'!r} must agree with F.mse_loss: 'mean' divides by "
        "every element.",
        **_tolerance(dtype),
        **kwargs,
    )


@pytest.mark.exercise("mse_loss")
@settings(max_examples=15)
@given(shapes, reductions, seeds)
def test_mse_loss_gradient_matches_torch(impl, shape, reduction, seed):
    pred, target = _randn(shape, seed).requires_grad_(), _randn(shape, seed + 1).requires_grad_()
    ref_pred, ref_target = pred.detach().clone().requires_grad_(), target.detach().clone().requires_grad_()
    reduction = reduction or "mean"
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
    with pytest.raises(ValueError) as info:
        impl.mse_loss(pred, target)
    message = str(info.value)
    assert re.search(_shape_pattern((4, 1)), message) and re.search(_shape_pattern((4,)), message), (
        f"Called mse_loss(pred of shape (4, 1), target of shape (4,)). It raised ValueError({message!r}), "
        "expected a message that names both shapes, because broadcasting them would silently build a (4, 4) loss."
    )


@pytest.mark.exercise("mse_loss")
def test_mse_loss_rejects_unknown_reduction(impl):
    with pytest.raises(ValueError, match="avg"):
        impl.mse_loss(torch.zeros(3), torch.ones(3), reduction="avg")


@pytest.mark.exercise("mse_loss")
def test_losses_docstring_examples(impl):
    """The examples of the docstrings, with every keyword left at its default."""
    pred, target = torch.tensor([1.0, 2.0]), torch.tensor([0.0, 4.0])
    _compare_with_torch(impl, "mse_loss", torch.tensor(2.5), pred, target, because="(1 + 4) / 2 = 2.5.")
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    _compare_with_torch(
        impl,
        "cross_entropy",
        F.cross_entropy(logits, torch.tensor([0, -100])),
        logits,
        torch.tensor([0, -100]),
        because="by default ignore_index is -100 (row 1 counts for nothing) and label_smoothing is 0.0.",
        rtol=1e-6,
        atol=1e-7,
    )
    _compare_with_torch(
        impl,
        "cross_entropy",
        F.cross_entropy(logits, torch.tensor([0, 2]), label_smoothing=0.1),
        logits,
        torch.tensor([0, 2]),
        label_smoothing=0.1,
        because="label smoothing puts 0.9 on the true class and spreads 0.1 over all 3 classes.",
        rtol=1e-6,
        atol=1e-7,
    )


@st.composite
def classification_problems(draw, scale=None):
    """(logits (N, C) float64, target (N,) int64, ignore_index) with at least one counted position.

    The logits are sometimes a transposed (non-contiguous) tensor, as ``scores.T`` would hand them over.
    """
    n, c = draw(st.integers(1, 6)), draw(st.integers(1, 5))
    ignore_index = draw(st.sampled_from([-100, -1, 0]))
    seed = draw(seeds)
    scale = draw(st.sampled_from([0.5, 3.0, 30.0])) if scale is None else scale
    logits = _randn((c, n), seed, scale=scale).T if draw(st.booleans()) else _randn((n, c), seed, scale=scale)
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
@given(classification_problems(), label_smoothings, st.booleans())
def test_cross_entropy_matches_torch(impl, problem, smoothing, spell_out_defaults):
    logits, target, ignore_index = problem
    kwargs = {"ignore_index": ignore_index, "label_smoothing": smoothing}
    if not spell_out_defaults:  # leave the arguments that equal the documented defaults to the defaults
        kwargs = {k: v for k, v in kwargs.items() if v != {"ignore_index": -100, "label_smoothing": 0.0}[k]}
    _compare_with_torch(
        impl,
        "cross_entropy",
        F.cross_entropy(logits, target, **kwargs),
        logits,
        target,
        because="it must agree with F.cross_entropy: ignored positions count for nothing (the mean "
        "is over the counted ones) and smoothing spreads eps over all C classes.",
        **kwargs,
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
    # Rows at +1e4, at -1e4 and ordinary rows side by side: each row needs its OWN max subtracted.
    logits = torch.tensor(
        [
            [1e4, -1e4, 0.0],
            [-1e4, -1e4, 1e4],
            [1e4, 1e4, -1e4],
            [0.0, 1e4, 5.0],
            [0.5, -1.0, 2.0],
            [-1e4, -9999.0, -9998.0],
        ],
        dtype=dtype,
    )
    target = torch.tensor([1, 2, 0, 0, 2, 1])
    logits.requires_grad_()
    loss = impl.cross_entropy(logits, target, label_smoothing=smoothing)
    expected = F.cross_entropy(logits.detach(), target, label_smoothing=smoothing)
    call = f"cross_entropy(logits with rows at +-1e4 and ordinary rows, dtype {dtype}, label_smoothing={smoothing})"
    assert isinstance(loss, torch.Tensor) and loss.dtype == dtype, (
        f"Called {call}. Returned {describe(loss)}, expected a 0-d tensor of dtype {dtype}, the dtype of the logits."
    )
    assert torch.isfinite(loss).all(), (
        f"Called {call}. Returned {describe(loss.detach())}, expected {expected.item():.6g}, because exp(1e4) "
        "overflows and exp(-1e4 - 1e4) underflows: subtract each row's own max before exp (log-sum-exp trick)."
    )
    assert_close(
        loss.detach(),
        expected,
        call=call,
        because="the log-sum-exp trick gives the exact loss even for huge logits.",
        rtol=1e-5,
    )
    loss.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all(), (
        f"Called {call}. The gradient is {describe(logits.grad)}; it must be finite."
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
@pytest.mark.parametrize("smoothing", [0.0, 0.3])
@pytest.mark.parametrize(
    ("logits_shape", "target", "ignore_index"),
    [((3, 4), [-100, -100, -100], -100), ((2, 3), [0, 0], 0), ((0, 4), [], -100)],
)
def test_cross_entropy_with_nothing_counted_is_nan(impl, logits_shape, target, ignore_index, smoothing):
    logits = _randn(logits_shape, 3)
    target = torch.tensor(target, dtype=torch.long)
    loss = impl.cross_entropy(logits, target, ignore_index=ignore_index, label_smoothing=smoothing)
    call = format_call("cross_entropy", (logits, target), {"ignore_index": ignore_index, "label_smoothing": smoothing})
    assert isinstance(loss, torch.Tensor) and loss.shape == () and torch.isnan(loss), (
        f"Called {call}. Returned {describe(loss)}, expected nan (as F.cross_entropy), because no position "
        "counts: the mean is 0 / 0. A count clamped to 1 would report a perfect loss of 0 instead."
    )


@pytest.mark.exercise("mse_loss")
@pytest.mark.parametrize(
    ("logits_shape", "target", "kwargs", "match"),
    [
        ((3, 4), [0, 7, -100], {}, "7"),
        ((3, 4), [0, 4, 1], {}, "4"),
        ((3, 4), [0, -2, 1], {}, "-2"),
        ((2, 3), [0, 1], {"label_smoothing": 1.5}, "1.5"),
        ((2, 3), [0, 1], {"label_smoothing": -0.1}, "-0.1"),
        ((4,), [0], {}, _shape_pattern((4,))),
        ((3, 4), [0, 1], {}, _shape_pattern((2,))),
    ],
)
def test_cross_entropy_rejects_bad_input(impl, logits_shape, target, kwargs, match):
    with pytest.raises(ValueError, match=match):
        impl.cross_entropy(torch.zeros(logits_shape), torch.tensor(target), **kwargs)


# ----------------------------------------------------------------------------------------------------
# LinearFunction / GELUFunction
# ----------------------------------------------------------------------------------------------------


def _reversed_layout(shape, seed: int) -> torch.Tensor:
    """A tensor of ``shape`` stored with its axes in reverse order: no two axes can be merged by ``.view``."""
    return _randn(tuple(reversed(shape)), seed).permute(*reversed(range(len(shape))))


@st.composite
def linear_problems(draw, requires_grad=False, allow_empty=False):
    """(x (*, in), weight (out, in), bias (out,) or None) in float64; x is sometimes not contiguous."""
    lead = draw(st.lists(st.integers(0 if allow_empty else 1, 3), min_size=0, max_size=2).map(tuple))
    n_in, n_out = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    seed = draw(seeds)
    x = _reversed_layout((*lead, n_in), seed) if draw(st.booleans()) else _randn((*lead, n_in), seed)
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
    layout = "" if x.is_contiguous() else " (not contiguous)"
    return f"LinearFunction.apply(x {tuple(x.shape)}{layout}, weight {tuple(weight.shape)}, {bias_text}) in float64"


@pytest.mark.exercise("LinearFunction")
@given(linear_problems(allow_empty=True))
def test_linear_forward_matches_f_linear(impl, problem):
    x, weight, bias = problem
    assert issubclass(impl.LinearFunction, torch.autograd.Function), "LinearFunction must subclass autograd.Function."
    pristine = [None if t is None else t.clone() for t in problem]
    out = impl.LinearFunction.apply(x, weight, bias)
    assert_close(
        out,
        F.linear(x, weight, bias),
        call=_linear_call(x, weight, bias),
        because="forward is x @ weight.T + bias, exactly F.linear.",
    )
    named = zip(("x", "weight", "bias"), problem, pristine, strict=True)
    _assert_unchanged(_linear_call(x, weight, bias), **{name: (t, p) for name, t, p in named if t is not None})


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


def _assert_linear_backward_matches(impl, problem, upstream) -> None:
    """Backpropagate ``upstream`` through the learner's LinearFunction and through F.linear; compare."""
    x, weight, bias = problem
    call = _linear_call(x, weight, bias) + f".backward(grad_output {tuple(upstream.shape)})"
    mine = [t.clone().requires_grad_() if t is not None else None for t in problem]
    theirs = [t.clone().requires_grad_() if t is not None else None for t in problem]
    out = impl.LinearFunction.apply(*mine)
    assert isinstance(out, torch.Tensor) and out.shape == upstream.shape, (
        f"Called {call}. forward returned {describe(out)}, expected shape {tuple(upstream.shape)}."
    )
    try:
        out.backward(upstream)
    except RuntimeError as err:
        if isinstance(err, NotImplementedError):
            raise
        raise AssertionError(
            f"Called {call}. The backward pass failed: {err}\nBecause backward returns one gradient per input of "
            "forward, each of the shape of its input ((*, in), (out, in), (out,) or None), for inputs of any "
            "layout (flatten with reshape, not view)."
        ) from None
    F.linear(*theirs).backward(upstream)
    for name, a, b in zip(("x", "weight", "bias"), mine, theirs, strict=True):
        if b is None:
            continue
        assert a.grad is not None, f"Called {call}. backward gave no gradient for {name}."
        assert_close(
            a.grad,
            b.grad,
            call=call,
            because=f"dL/d{name} must equal F.linear's for the same grad_output (chain rule: scale by it; sum the "
            "weight and bias gradients over every leading axis).",
        )


@pytest.mark.exercise("LinearFunction")
@settings(max_examples=15)
@given(linear_problems(allow_empty=True), seeds)
def test_linear_backward_matches_f_linear(impl, problem, seed):
    x, weight, _ = problem
    _assert_linear_backward_matches(impl, problem, _randn((*x.shape[:-1], weight.shape[0]), seed))


@pytest.mark.exercise("LinearFunction")
def test_linear_backward_with_non_contiguous_tensors(impl):
    # A batch that arrives transposed ((T, B, in) seen as (B, T, in)) and a grad_output that a later
    # .transpose() hands back: flattening them needs reshape, .view cannot merge their axes.
    x, weight, bias = _reversed_layout((3, 2, 4), 1), _randn((5, 4), 2), _randn((5,), 3)
    _assert_linear_backward_matches(impl, (x, weight, bias), _reversed_layout((3, 2, 5), 4))


gelu_inputs = st.lists(st.floats(-8, 8, allow_nan=False, allow_infinity=False), min_size=1, max_size=8)


@pytest.mark.exercise("LinearFunction")
@given(gelu_inputs, dtypes)
def test_gelu_forward_matches_torch_tanh_gelu(impl, values, dtype):
    x = torch.tensor(values, dtype=dtype)
    x_before = x.clone()
    assert issubclass(impl.GELUFunction, torch.autograd.Function), "GELUFunction must subclass torch.autograd.Function."
    out = impl.GELUFunction.apply(x)
    call = f"GELUFunction.apply({describe(x)})"
    assert isinstance(out, torch.Tensor) and out.dtype == dtype, (
        f"Called {call}. Returned {describe(out)}, expected a tensor of dtype {dtype}, the dtype of x."
    )
    assert_close(
        out,
        F.gelu(x, approximate="tanh"),
        call=call,
        because='it must equal F.gelu(x, approximate="tanh"): 0.5 x (1 + tanh(sqrt(2/pi)(x + 0.044715 x^3))).',
        **_tolerance(dtype),
    )
    _assert_unchanged(call, x=(x, x_before))


@pytest.mark.exercise("LinearFunction")
def test_gelu_extreme_inputs(impl):
    values = [-1e4, -50.0, -1e-8, 0.0, 1e-8, 50.0, 1e4]
    x, theirs = (torch.tensor(values, dtype=F64, requires_grad=True) for _ in range(2))
    call = f"GELUFunction.apply({describe(x.detach())})"
    out = impl.GELUFunction.apply(x)
    assert_close(
        out.detach(),
        F.gelu(theirs, approximate="tanh").detach(),
        call=call,
        because="GELU is ~0 for large negative inputs and ~x for large positive ones, never nan: torch.tanh "
        "saturates at +-1, a tanh built from exp(u) overflows to inf / inf.",
    )
    upstream = torch.linspace(0.5, 2.0, len(values), dtype=F64)
    out.backward(upstream)
    F.gelu(theirs, approximate="tanh").backward(upstream)
    assert x.grad is not None, f"Called {call}.backward(). It gave no gradient for x."
    assert_close(
        x.grad,
        theirs.grad,
        call=call + ".backward(grad_output)",
        because="gelu'(x) is ~0 far left and ~1 far right; the (1 - tanh^2) term must vanish, not become nan.",
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


def _lopsided_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """A squared error plus a penalty on the predictions: not F.mse_loss, and not symmetric in its arguments,
    so a train_step that ignores loss_fn or calls loss_fn(targets, outputs) takes another step."""
    return ((pred - target) ** 2).mean() + 0.3 * (pred**2).mean()


def _oracle_steps(model: nn.Module, batches, loss_fn, make_optimizer) -> nn.Module:
    """The oracle: a copy of ``model`` after one clean step of torch's own optimizer per batch."""
    model = copy.deepcopy(model)
    optimizer = make_optimizer(model.parameters())
    for x, y in batches:
        grads = torch.autograd.grad(loss_fn(model(x), y), list(model.parameters()))
        for p, g in zip(model.parameters(), grads, strict=True):
            p.grad = g
        optimizer.step()
    return model


def _sgd(params):
    return torch.optim.SGD(params, lr=0.1)


def _sgd_momentum(params):
    return torch.optim.SGD(params, lr=0.1, momentum=0.9)


def _assert_same_parameters(model: nn.Module, expected: nn.Module, call: str, because: str) -> None:
    for (name, p), q in zip(model.named_parameters(), expected.parameters(), strict=True):
        assert_close(p.detach(), q.detach(), call=call + f" (parameter {name})", because=because)


@pytest.mark.exercise("train_step")
@settings(max_examples=5, phases=NO_SHRINK)
@given(seeds)
def test_train_step_returns_float_loss_before_update(impl, seed):
    model, x, y = _regression_problem(seed)
    with torch.no_grad():
        expected = _lopsided_loss(model(x), y).item()
    result = impl.train_step(model, (x, y), _sgd(model.parameters()), _lopsided_loss)
    assert type(result) is float, (
        f"Called train_step(...). Returned {describe(result)} of type {type(result).__name__}, expected a Python "
        "float, because a loss tensor keeps its autograd graph alive: return loss.item()."
    )
    assert math.isclose(result, expected, rel_tol=1e-9, abs_tol=1e-12), (
        f"Called train_step(model, batch, optimizer, loss_fn). Returned {result!r}, expected {expected!r}, because "
        "it returns loss_fn(model(inputs), targets) for the loss_fn it was given, computed before optimizer.step()."
    )


@pytest.mark.exercise("train_step")
@settings(max_examples=5, phases=NO_SHRINK)
@given(seeds)
def test_train_step_updates_like_one_optimizer_step(impl, seed):
    model, x, y = _regression_problem(seed)
    x_before, y_before = x.clone(), y.clone()
    expected = _oracle_steps(model, [(x, y)], _lopsided_loss, _sgd)
    call = "train_step(model, (x, y), SGD(lr=0.1), loss_fn) once"
    impl.train_step(model, (x, y), _sgd(model.parameters()), _lopsided_loss)
    _assert_same_parameters(
        model,
        expected,
        call,
        "one step moves every parameter by -lr * d loss_fn(model(x), y) / d param: zero_grad, then the "
        "loss_fn it was given (outputs first, targets second), backward, step.",
    )
    _assert_unchanged(call, x=(x, x_before), y=(y, y_before))


@pytest.mark.exercise("train_step")
@settings(max_examples=5, phases=NO_SHRINK)
@given(seeds)
def test_train_step_gradients_do_not_accumulate(impl, seed):
    model, x, y = _regression_problem(seed)
    x2, y2 = _randn(x.shape, seed + 7), _randn(y.shape, seed + 8)
    expected = _oracle_steps(model, [(x, y), (x2, y2)], F.mse_loss, _sgd_momentum)
    optimizer = _sgd_momentum(model.parameters())
    impl.train_step(model, (x, y), optimizer, F.mse_loss)
    impl.train_step(model, (x2, y2), optimizer, F.mse_loss)
    _assert_same_parameters(
        model,
        expected,
        "train_step twice on the same model and SGD(lr=0.1, momentum=0.9) optimizer",
        "the second step must use only the second batch's gradient (and the optimizer's own momentum): "
        "loss.backward() adds to .grad, so call optimizer.zero_grad() before it.",
    )


@pytest.mark.exercise("train_step")
@settings(max_examples=5, phases=NO_SHRINK)
@given(seeds)
def test_train_step_ignores_stale_gradients(impl, seed):
    model, x, y = _regression_problem(seed)
    expected = _oracle_steps(model, [(x, y)], F.mse_loss, _sgd)
    for p in model.parameters():
        p.grad = torch.full_like(p, 100.0)  # left over by someone else's backward
    impl.train_step(model, (x, y), _sgd(model.parameters()), F.mse_loss)
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


class _ModeRecorder(nn.Module):
    """A linear model that records, at every forward pass, whether it was in training mode."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 2).to(F64)
        self.modes: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.modes.append(self.training)
        return self.linear(x)


@pytest.mark.exercise("train_step")
def test_train_step_runs_the_forward_pass_in_training_mode(impl):
    _, x, y = _regression_problem(3)
    model = _ModeRecorder()
    model.eval()
    impl.train_step(model, (x, y), _sgd(model.parameters()), F.mse_loss)
    assert model.modes and all(model.modes) and model.training, (
        f"Called train_step on a model left in eval mode. Its forward passes ran with training={model.modes} and "
        f"afterwards model.training is {model.training}; expected True throughout, because dropout and batch norm "
        "must behave as in training: call model.train() before the forward pass."
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
@given(regression_data(), st.integers(0, 3), st.floats(0.01, 0.3), st.booleans())
def test_fit_linear_regression_follows_gradient_descent(impl, data, steps, lr, transposed):
    x, y, _, _ = data
    if transposed:  # the same values in a column-major (non-contiguous) layout
        x = x.T.contiguous().T
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
    _assert_unchanged(call, x=(x, x_before), y=(y, y_before))


@pytest.mark.exercise("fit_linear_regression")
def test_fit_linear_regression_defaults_are_lr_0_1_and_500_steps(impl):
    # The second feature is small, so gradient descent along it is slow: after 500 steps the weights are
    # still moving, and one step more or less, or another lr, shows.
    g = _gen(11)
    x = torch.randn(40, 2, generator=g, dtype=F64) * torch.tensor([1.0, 0.05], dtype=F64)
    y = x @ torch.tensor([1.5, -2.0], dtype=F64) + 0.3
    weight, bias = _check_result_shapes(impl.fit_linear_regression(x, y), 2)
    w_expected, b_expected = _gd_oracle(x.numpy(), y.numpy(), 0.1, 500)
    call = "fit_linear_regression(x (40, 2), y) with the default lr and steps"
    because = "the defaults are lr=0.1 and steps=500; along the small feature the fit has not converged yet."
    assert_close(weight, w_expected, call=call + " -> weight", rtol=1e-9, atol=1e-12, because=because)
    assert_close(bias, np.float64(b_expected), call=call + " -> bias", rtol=1e-9, atol=1e-12, because=because)


@pytest.mark.exercise("fit_linear_regression")
def test_fit_linear_regression_follows_dtype_and_device_of_x(impl):
    g = _gen(12)
    x = torch.randn(24, 3, generator=g)
    y = x @ torch.tensor([0.5, -1.0, 2.0]) - 0.25
    weight, bias = _check_result_shapes(impl.fit_linear_regression(x, y, lr=0.1, steps=20), 3)
    call = "fit_linear_regression(x (24, 3) float32, y float32, lr=0.1, steps=20)"
    assert weight.dtype == torch.float32 and bias.dtype == torch.float32, (
        f"Called {call}. Returned weight {weight.dtype} and bias {bias.dtype}, expected float32, because the "
        "parameters are created in the dtype of x."
    )
    w_expected, b_expected = _gd_oracle(x.double().numpy(), y.double().numpy(), 0.1, 20)
    assert_close(weight, w_expected, call=call + " -> weight", rtol=1e-4, atol=1e-5, because="float32 follows it too.")
    assert_close(bias, np.float64(b_expected), call=call + " -> bias", rtol=1e-4, atol=1e-5, because="likewise.")
    # "meta" tensors have a device but no data: the parameters must be created on x.device, as on a GPU.
    x_meta, y_meta = torch.empty(8, 3, device="meta"), torch.empty(8, device="meta")
    call = "fit_linear_regression(x (8, 3) on device 'meta', y (8,) on 'meta', lr=0.1, steps=2)"
    try:
        result = impl.fit_linear_regression(x_meta, y_meta, lr=0.1, steps=2)
    except RuntimeError as err:
        if isinstance(err, NotImplementedError):
            raise
        raise AssertionError(
            f"Called {call}. It raised {err!r}. Everything must happen on x's device: create weight and bias "
            "with device=x.device, and read no value back (.item()): meta tensors have a shape but no values."
        ) from None
    weight, bias = _check_result_shapes(result, 3)
    assert weight.device.type == "meta" and bias.device.type == "meta", (
        f"Called {call}. Returned weight on {weight.device} and bias on {bias.device}, expected both on meta, "
        "because the parameters are created on the device of x."
    )


@pytest.mark.exercise("fit_linear_regression")
@pytest.mark.parametrize(
    ("shape_x", "shape_y", "kwargs", "match"),
    [
        ((8,), (8,), {}, _shape_pattern((8,))),
        ((8, 2), (7,), {}, _shape_pattern((7,))),
        ((8, 2), (8, 1), {}, _shape_pattern((8, 1))),
        ((8, 2), (8,), {"steps": -1}, "-1"),
        ((8, 2), (8,), {"steps": True}, "True"),
        ((8, 2), (8,), {"steps": 2.0}, "2.0"),
        ((8, 2), (8,), {"lr": 0.0}, "0.0"),
        ((8, 2), (8,), {"lr": -0.5}, "-0.5"),
        ((8, 2), (8,), {"lr": math.nan}, "nan"),
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
# Explicit cases: a list holding a tensor (a dict rebuilt but a list assigned into is still a mutation),
# and a list nested in a namedtuple nested in a dict, so no random draw is needed to reach them.
@example([torch.ones(2), [torch.zeros(1), "tag"]])
@example({"a": torch.ones(1), "b": Pair(torch.ones(1), [torch.ones(1)])})
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
    before = _snapshot(batch)
    out = impl.to_device(batch, "meta")
    _assert_moved(out, batch, torch.device("meta"), "batch")
    assert out["meta"].first == "id7" and out["extra"][0] is tag, "to_device must keep field values and objects."
    assert _snapshot(batch) == before, (
        "Called to_device(batch, 'meta') on the docstring's example batch. Afterwards the batch itself had "
        "changed (a tensor in one of its lists or dicts was replaced by the moved one), expected it untouched, "
        "because to_device builds new containers instead of assigning into the caller's."
    )


@pytest.mark.exercise("to_device")
@pytest.mark.gpu
def test_to_device_round_trip_through_cuda(impl):
    batch = {"x": torch.randn(3, 2, generator=_gen(0)), "items": [torch.arange(4), "text"]}
    batch["pair"] = Pair(1, torch.ones(1))
    on_gpu = impl.to_device(batch, torch.device("cuda"))
    _assert_moved(on_gpu, batch, torch.device("cuda"), "batch")
    back = impl.to_device(on_gpu, "cpu")
    _assert_moved(back, batch, torch.device("cpu"), "batch")
