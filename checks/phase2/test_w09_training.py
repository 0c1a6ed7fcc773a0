"""Checks for w09_training: normalisation, dropout, recurrent cells, the LSTM+attention model, clipping,
AdamW, the warmup-cosine schedule and the training loop.

The oracles are PyTorch's own - ``nn.LayerNorm``, ``nn.BatchNorm1d``, ``nn.LSTMCell``, ``nn.GRUCell``,
``torch.nn.utils.clip_grad_norm_``, ``torch.optim.AdamW`` with the same weights copied in - plus closed-form
formulas, statistical bounds and causal / batch-independence properties written here. Everything compared
is float64 and tiny; every random tensor comes from a drawn seed (``torch.Generator``), and code that must
use torch's global generator (dropout, default initialisation) runs inside ``torch.random.fork_rng`` with a
drawn seed, so the global state is left as it was.

Checklist notes (CONTRACTS.md items that do not apply, or apply only in part):
- 1 inputs unchanged: clip_grad_norm_ scales the gradients, AdamW the parameters and train_model the model by
  contract; what must stay (the other parameters' values, the frozen parameter) is checked.
- 2 size 0: only LayerNorm documents arbitrary leading dimensions (an empty batch is checked); BatchNorm1d rejects
  fewer than 2 values per channel in training; the cells, the model and the loop do not document empty batches.
- 3 devices: CI has only the CPU, so the modules run on the meta device to prove that what they create follows x;
  clip_grad_norm_ / AdamW create tensors only from the gradients themselves (``torch.tensor(0.0)`` is documented).
  LSTMWithAttention works on integer token ids; the float layers inside it are PyTorch's.
- 6 state over time: LayerNorm, Dropout, the cells (state passed explicitly), clip_grad_norm_ and the schedule keep
  none; BatchNorm1d (train then eval), AdamW (state_dict round trip, schedules) and train_model (epochs) are
  checked over several calls.
- 7 module structure: the functions and AdamW have none; LSTMWithAttention's layers are PyTorch's, so their
  initial values are PyTorch's business and only their layout, sizes and default head count are checked.
- 8 randomness: nothing takes a ``generator``; Dropout and the cells' initialisation use the global generator by
  contract (same seed same draw, different seeds differ, a fresh mask per call); the rest draws nothing.
- 9 numerics at scale: float32 rows/channels at +-1e4 for the normalisations; Dropout p = 1 (no nan); AdamW tiny
  gradients against eps; clip_grad_norm_ with inf norms; the schedule has no extreme inputs beyond its range.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import math
import re

import pytest
import torch
import torch.nn.functional as F
from hypothesis import example, given, settings
from hypothesis import strategies as st
from torch import nn
from torch.optim.optimizer import register_optimizer_step_pre_hook

from checks.numerics import assert_close, compare_with_reference, describe, error_report, likely_cause
from checks.torch_strategies import generator, randn, refill_, seeded, seeds

pytestmark = pytest.mark.kata("w09_training")

KATA = "w09_training"
DT = torch.float64


# --------------------------------------------------------------------------------------------------
# private helpers (general torch helpers a kata could share; see the report)


def _copy_by_name(mine: nn.Module, theirs: nn.Module, names: tuple[str, ...], owner: str) -> None:
    """Copy PyTorch's tensors into the learner's module by attribute name, with a clear message if absent."""
    with torch.no_grad():
        for name in names:
            target, source = getattr(mine, name, None), getattr(theirs, name)
            assert isinstance(target, torch.Tensor) and tuple(target.shape) == tuple(source.shape), (
                f"{owner} must have a tensor attribute `{name}` of shape {tuple(source.shape)} (see its docstring: "
                f"the checks copy PyTorch's values in by name); found "
                f"{describe(target) if target is not None else None}."
            )
            target.copy_(source)


def _cause_if_wrong(symbol: str, run, actual, expected, rtol: float, atol: float) -> str | None:
    """``likely_cause`` of ``actual``, asked only when it differs from ``expected``: a pass never runs the
    catalogue."""
    if error_report(actual, expected, rtol, atol) is None:
        return None
    return likely_cause(KATA, symbol, run, actual, rtol=rtol, atol=atol)


def _likely(symbol: str, run, actual, **tolerance) -> str:
    """The "Likely cause" line of a failure message written by hand; put it in the assert's message, which is only
    built when the assertion fails."""
    cause = likely_cause(KATA, symbol, run, actual, **tolerance)
    return f"\nLikely cause: {cause}" if cause else ""


def _forbid(monkeypatch: pytest.MonkeyPatch, what: str, targets: list[tuple[object, str]]) -> None:
    """Make the built-ins a kata re-implements raise, so delegating to them fails with a clear message."""

    def refuse(*args, **kwargs):
        raise AssertionError(
            f"{what} was called. This exercise asks you to build it from tensor operations; the checks compare "
            "your version with PyTorch's, so calling PyTorch's would prove nothing."
        )

    for owner, attr in targets:
        if hasattr(owner, attr):
            monkeypatch.setattr(owner, attr, refuse)


def _tensors(value) -> torch.Tensor:
    """A flat tensor of everything in ``value`` (a tensor or a tuple of them), for comparisons."""
    if isinstance(value, tuple | list):
        return torch.cat([v.detach().reshape(-1) for v in value])
    return value.detach()


# --------------------------------------------------------------------------------------------------
# LayerNorm


@st.composite
def layernorm_cases(draw):
    """(leading dims, normalized_shape as passed, eps, input scale, seed)."""
    lead = tuple(draw(st.lists(st.integers(1, 3), max_size=2)))
    norm = tuple(draw(st.lists(st.integers(1, 4), min_size=1, max_size=2)))
    shape_arg = norm[0] if len(norm) == 1 and draw(st.booleans()) else norm
    eps = draw(st.sampled_from([1e-5, 1e-2, 0.5]))
    scale = draw(st.sampled_from([0.1, 1.0, 3.0]))
    return lead, shape_arg, eps, scale, draw(seeds)


def _norm_tuple(shape_arg) -> tuple[int, ...]:
    return (shape_arg,) if isinstance(shape_arg, int) else tuple(shape_arg)


def _torch_layernorm(shape_arg, eps: float, seed: int) -> nn.LayerNorm:
    ln = nn.LayerNorm(shape_arg, eps=eps, dtype=DT)
    gen = generator(seed)
    with torch.no_grad():
        ln.weight.copy_(1 + randn(gen, *ln.weight.shape, scale=0.5))
        ln.bias.copy_(randn(gen, *ln.bias.shape, scale=0.5))
    return ln


def _my_layernorm(cls, shape_arg, eps: float, theirs: nn.LayerNorm) -> nn.Module:
    mine = cls(shape_arg, eps=eps).double()
    _copy_by_name(mine, theirs, ("weight", "bias"), f"LayerNorm({shape_arg!r})")
    return mine


def _layernorm_input(lead, shape_arg, scale, seed) -> torch.Tensor:
    """Rows with their own offset; every other seed gives a NON-contiguous view (a learner's .view fails)."""
    gen = generator(seed + 1)
    shape = lead + _norm_tuple(shape_arg)
    x = randn(gen, *shape, scale=scale) + randn(gen, *shape[:-1], 1, scale=2.0)  # an offset per row
    return x if seed % 2 or x.dim() < 2 else x.mT.contiguous().mT  # same values, last two dims transposed in memory


@pytest.mark.exercise("LayerNorm")
@given(layernorm_cases())
@example(case=((2,), (3, 4), 1e-5, 1.0, 0))  # two normalised dimensions: normalise them together
@example(case=((2, 3), 4, 1e-5, 1.0, 1))  # two leading dimensions: each row on its own
@example(case=((3,), 2, 1e-5, 1.0, 2))  # short rows: biased and unbiased variance differ by 2x
@example(case=((2,), 5, 0.5, 0.3, 3))  # large eps: inside or outside the sqrt matters
def test_layernorm_matches_torch(impl, case):
    lead, shape_arg, eps, scale, seed = case
    theirs = _torch_layernorm(shape_arg, eps, seed)
    x = _layernorm_input(lead, shape_arg, scale, seed)
    pristine = x.clone()
    mine = _my_layernorm(impl.LayerNorm, shape_arg, eps, theirs)
    with torch.no_grad():
        got, expected = mine(x), theirs(pristine)
    assert torch.equal(x, pristine), (
        f"Called LayerNorm({shape_arg!r}, eps={eps})(x of shape {tuple(x.shape)}) and x itself changed: do not modify "
        "the input in place (x -= mean, x.sub_(...)); the caller still needs it (a residual connection adds it back)."
    )
    cause = _cause_if_wrong("LayerNorm", lambda cls: _my_layernorm(cls, shape_arg, eps, theirs)(pristine.clone()),
                            got, expected, 1e-7, 1e-10)
    assert_close(got, expected, call=f"LayerNorm({shape_arg!r}, eps={eps})(x of shape {tuple(x.shape)})",
                 rtol=1e-7, atol=1e-10, cause=cause,
                 because="it must equal nn.LayerNorm with the same weight and bias: the last "
                         f"{len(_norm_tuple(shape_arg))} dimension(s) normalised together with the biased variance, "
                         "eps inside the square root.")


@pytest.mark.exercise("LayerNorm")
@given(layernorm_cases())
@settings(max_examples=10)
@example(case=((2,), (3, 4), 1e-5, 1.0, 0))
def test_layernorm_gradients_match_torch(impl, case):
    lead, shape_arg, eps, scale, seed = case
    theirs = _torch_layernorm(shape_arg, eps, seed)
    mine = _my_layernorm(impl.LayerNorm, shape_arg, eps, theirs)
    x = _layernorm_input(lead, shape_arg, scale, seed)
    upstream = randn(generator(seed + 2), *x.shape)
    grads = []
    for module in (mine, theirs):
        leaf = x.clone().requires_grad_()
        (module(leaf) * upstream).sum().backward()
        grads.append((leaf.grad, module.weight.grad, module.bias.grad))
    call = f"LayerNorm({shape_arg!r}, eps={eps})(x of shape {tuple(x.shape)}) and backward()"
    for name, got, expected in zip(("x", "weight", "bias"), grads[0], grads[1], strict=True):
        assert got is not None, f"Called {call}. {name}.grad is None: the gradient must reach {name}."
        assert_close(got, expected, call=call + f" -> {name}.grad", rtol=1e-7, atol=1e-10,
                     because=f"the gradient with respect to {name} must equal nn.LayerNorm's. Compute the mean and "
                             "variance from x with ordinary autograd operations (no .detach(), no .item()).")


@pytest.mark.exercise("LayerNorm")
def test_layernorm_passes_gradcheck(impl):
    theirs = _torch_layernorm((3, 4), 1e-3, 5)
    mine = _my_layernorm(impl.LayerNorm, (3, 4), 1e-3, theirs)
    x = randn(generator(6), 2, 3, 4).requires_grad_()
    ok = torch.autograd.gradcheck(mine, (x,), eps=1e-6, atol=1e-6, raise_exception=False)
    assert ok, (
        "Called torch.autograd.gradcheck(LayerNorm((3, 4), eps=0.001), x of shape (2, 3, 4)). Your backward pass "
        "disagrees with finite differences: a detached mean or variance, or an in-place change of x, breaks it."
    )


@pytest.mark.exercise("LayerNorm")
def test_layernorm_layout_defaults_dtype_and_device(impl):
    ln = impl.LayerNorm([2, 3], eps=1e-4)  # any sequence of ints; stored as a tuple
    params = dict(ln.named_parameters())
    assert set(params) >= {"weight", "bias"}, (
        f"LayerNorm([2, 3]).named_parameters() gives {sorted(params)}; weight and bias must be nn.Parameter "
        "attributes, or .parameters() - and so every optimizer - never sees them and they are never trained."
    )
    assert_close(params["weight"], torch.ones(2, 3), call="LayerNorm([2, 3]).weight",
                 because="the scale starts at ones (the layer starts as a pure normalisation).")
    assert_close(params["bias"], torch.zeros(2, 3), call="LayerNorm([2, 3]).bias", because="the shift starts at zeros.")
    assert ln.normalized_shape == (2, 3) and isinstance(ln.normalized_shape, tuple) and ln.eps == 1e-4, (
        f"LayerNorm([2, 3], eps=1e-4) stores normalized_shape={ln.normalized_shape!r}, eps={ln.eps!r}; "
        "expected the tuple (2, 3) and 0.0001."
    )
    single = impl.LayerNorm(3)
    assert single.normalized_shape == (3,) and single.eps == 1e-5, (
        f"LayerNorm(3) stores normalized_shape={single.normalized_shape!r}, eps={single.eps!r}; an int n means the "
        "tuple (n,), and eps defaults to 1e-5 (as nn.LayerNorm's)."
    )
    x = torch.tensor([[0.0, 0.004, 0.002]], dtype=DT)  # variance 2.7e-6, below the default eps: eps matters
    with torch.no_grad():
        got = single.double()(x)
    assert_close(got, F.layer_norm(x, (3,)), call="LayerNorm(3) (default eps) on [[0, 0.004, 0.002]] (float64)",
                 rtol=1e-7, atol=1e-10, because="the default eps is 1e-5, as nn.LayerNorm's; with a variance this "
                                                 "small eps changes the result.")
    x = torch.randn(4, 2, 3, generator=generator(0))
    out = ln(x)
    assert out.shape == x.shape and out.dtype == torch.float32, (
        f"Called LayerNorm((2, 3))(float32 x of shape (4, 2, 3)). Returned {describe(out)}; expected the input's "
        "shape and dtype."
    )
    empty = ln(torch.zeros(0, 2, 3))
    assert empty.shape == (0, 2, 3), f"LayerNorm((2, 3)) on an empty batch (0, 2, 3) returned {describe(empty)}."
    meta = ln.to("meta")(torch.empty(4, 2, 3, device="meta"))
    assert meta.device.type == "meta" and meta.shape == (4, 2, 3), (
        f"Called LayerNorm((2, 3)) moved to the meta device on a meta input. Returned {describe(meta)} on "
        f"{meta.device}; expected shape (4, 2, 3) on meta: every tensor made inside must live on x's device."
    )


@pytest.mark.exercise("LayerNorm")
def test_layernorm_float32_rows_far_from_zero(impl):
    gen = generator(7)
    x = torch.randn(6, 32, generator=gen)
    x[1] += 1e4  # far above zero
    x[2] -= 1e4  # far below
    x[3] = x[3] * 1e-3 + 5.0  # a tiny spread around 5
    x[4] = 3.0  # constant: variance 0, only eps keeps it finite
    x[5] *= 1e4
    ln = impl.LayerNorm(32)
    with torch.no_grad():
        got = ln(x)
    expected = F.layer_norm(x, (32,))
    # float32 cannot even represent x - mean in the rows near +-1e4 better than ulp(1e4) ~ 1e-3, so the
    # tolerance is a few of those ulps (relative to each row's spread of about 1).
    assert_close(got, expected, rtol=1e-3, atol=1e-2,
                 call="LayerNorm(32) on float32 rows: ordinary, +1e4 offset, -1e4 offset, spread 1e-3, constant, "
                      "scale 1e4",
                 because="in float32, E[x^2] - E[x]^2 cancels catastrophically when a row's mean is large compared "
                         "with its spread (here it loses every digit, and can even go negative). Subtract the mean "
                         "first: var = ((x - mean) ** 2).mean(); a constant row gives 0 / sqrt(eps) = 0, then bias.",
                 cause=_cause_if_wrong("LayerNorm", lambda cls: cls(32)(x.clone()), got, expected, 1e-3, 1e-2))


@pytest.mark.exercise("LayerNorm")
def test_layernorm_rejects_bad_input(impl):
    with pytest.raises(ValueError, match=r"5, 3"):
        impl.LayerNorm(4)(torch.zeros(5, 3))  # the last dimension is 3, not 4
    with pytest.raises(ValueError, match=r"2, 7, 2"):
        impl.LayerNorm((3, 2))(torch.zeros(2, 7, 2))
    with pytest.raises(ValueError, match=r"\(3,\)|\b3\b"):
        impl.LayerNorm((2, 3))(torch.zeros(3))  # fewer dimensions than normalized_shape
    for shape, named in ((0, "0"), ((2, -1), "-1"), ((), r"\(\)")):
        with pytest.raises(ValueError, match=named):
            impl.LayerNorm(shape)
    with pytest.raises(ValueError, match="-0.5"):
        impl.LayerNorm(3, eps=-0.5)
    impl.LayerNorm(3, eps=0.0)  # allowed: eps >= 0


@pytest.mark.exercise("LayerNorm")
def test_layernorm_is_built_from_scratch(impl, monkeypatch):
    ln = impl.LayerNorm(4)
    _forbid(monkeypatch, "F.layer_norm / nn.LayerNorm", [(F, "layer_norm"), (torch, "layer_norm"),
                                                         (torch, "native_layer_norm"), (nn.LayerNorm, "forward")])
    out = ln(torch.randn(2, 4, generator=generator(1)))
    assert out.shape == (2, 4)


# --------------------------------------------------------------------------------------------------
# BatchNorm1d


@st.composite
def batchnorm_cases(draw):
    """(C, N, L or None, momentum, eps, seed)."""
    return (draw(st.integers(1, 4)), draw(st.integers(2, 5)), draw(st.sampled_from([None, 1, 3])),
            draw(st.sampled_from([0.1, 0.3, 0.9, 1.0, 0.0])), draw(st.sampled_from([1e-5, 0.1])), draw(seeds))


def _bn_pair(cls, C: int, momentum: float, eps: float, seed: int) -> tuple[nn.Module, nn.BatchNorm1d]:
    theirs = nn.BatchNorm1d(C, eps=eps, momentum=momentum, dtype=DT)
    gen = generator(seed)
    with torch.no_grad():
        theirs.weight.copy_(1 + randn(gen, C, scale=0.5))
        theirs.bias.copy_(randn(gen, C, scale=0.5))
    mine = cls(C, momentum=momentum, eps=eps).double()
    _copy_by_name(mine, theirs, ("weight", "bias"), f"BatchNorm1d({C})")
    return mine, theirs


def _bn_batches(C: int, N: int, L: int | None, seed: int, count: int) -> list[torch.Tensor]:
    """Batches with their own centre per channel; every second one is a NON-contiguous view (channels last in
    memory), as a transposed activation would be."""
    gen = generator(seed + 1)
    shape = (N, C) if L is None else (N, C, L)
    centre = (1, C) if L is None else (1, C, 1)
    batches = [randn(gen, *shape, scale=1.0 + k) + randn(gen, *centre, scale=3.0) for k in range(count)]
    return [x if k % 2 == 0 else x.mT.contiguous().mT for k, x in enumerate(batches)]


def _bn_trace(module: nn.Module, batches: list[torch.Tensor], train_steps: int) -> list[torch.Tensor]:
    """Outputs and running statistics after each of ``train_steps`` training batches, then in eval mode."""
    trace = []
    with torch.no_grad():
        for k, x in enumerate(batches):
            module.train(k < train_steps)
            trace.append(torch.cat([module(x).reshape(-1), module.running_mean.clone(), module.running_var.clone()]))
    return trace


@pytest.mark.exercise("BatchNorm1d")
@given(batchnorm_cases())
@example(case=(3, 4, None, 0.1, 1e-5, 0))
@example(case=(2, 2, 3, 0.3, 0.1, 1))
def test_batchnorm_matches_torch_over_training_and_eval(impl, case):
    C, N, L, momentum, eps, seed = case
    mine, theirs = _bn_pair(impl.BatchNorm1d, C, momentum, eps, seed)
    batches = _bn_batches(C, N, L, seed, count=5)
    shape = tuple(batches[0].shape)
    with torch.no_grad():
        for k, x in enumerate(batches):
            mode = "training" if k < 3 else "eval"
            mine.train(k < 3)
            theirs.train(k < 3)
            call = (f"BatchNorm1d({C}, momentum={momentum}, eps={eps}) in {mode} mode, batch {k + 1} of shape {shape} "
                    f"(batches 1-3 in training mode, then eval)")

            def cause(got, pick, k=k):
                def run(cls):
                    return _bn_trace(_bn_pair(cls, C, momentum, eps, seed)[0], batches, 3)[k][pick]
                return likely_cause(KATA, "BatchNorm1d", run, got, rtol=1e-7, atol=1e-10)

            pristine = x.clone()
            got = mine(x)
            expected = theirs(pristine)
            assert torch.equal(x, pristine), f"Called {call} and the input x itself changed: never modify it in place."
            out_size = expected.numel()
            problem = error_report(got, expected, 1e-7, 1e-10)
            assert_close(got, expected, call=call + " -> output", rtol=1e-7, atol=1e-10,
                         cause=cause(got.reshape(-1), slice(0, out_size)) if problem else None,
                         because="it must equal nn.BatchNorm1d with the same weight and bias: batch statistics "
                                 "(biased variance) in training, the running statistics in eval.")
            for name in ("running_mean", "running_var"):
                got_stat, expected_stat = getattr(mine, name, None), getattr(theirs, name)
                assert isinstance(got_stat, torch.Tensor), f"BatchNorm1d has no tensor attribute `{name}`."
                start = out_size + (0 if name == "running_mean" else C)
                problem = error_report(got_stat, expected_stat, 1e-7, 1e-10)
                assert_close(got_stat, expected_stat, call=call + f" -> {name}", rtol=1e-7, atol=1e-10,
                             cause=cause(got_stat, slice(start, start + C)) if problem else None,
                             because="running = (1 - momentum) * running + momentum * batch statistic, with the "
                                     "UNBIASED batch variance (n / (n - 1)) for running_var, updated in training mode "
                                     "only.")


@pytest.mark.exercise("BatchNorm1d")
@given(batchnorm_cases())
@settings(max_examples=10)
def test_batchnorm_training_gradients_match_torch(impl, case):
    C, N, L, momentum, eps, seed = case
    mine, theirs = _bn_pair(impl.BatchNorm1d, C, momentum, eps, seed)
    x = _bn_batches(C, N, L, seed, count=1)[0]
    upstream = randn(generator(seed + 2), *x.shape)
    grads = []
    for module in (mine, theirs):
        leaf = x.clone().requires_grad_()
        (module(leaf) * upstream).sum().backward()
        grads.append((leaf.grad, module.weight.grad, module.bias.grad))
    call = f"BatchNorm1d({C}) in training mode on x of shape {tuple(x.shape)}, then backward()"
    for name, got, expected in zip(("x", "weight", "bias"), grads[0], grads[1], strict=True):
        assert got is not None, f"Called {call}. {name}.grad is None: the gradient must reach {name}."
        assert_close(got, expected, call=call + f" -> {name}.grad", rtol=1e-7, atol=1e-10,
                     because="in training mode the batch mean and variance depend on x, so the gradient flows "
                             "through them too (detach only the running-statistics update).")


@pytest.mark.exercise("BatchNorm1d")
@given(seeds, st.sampled_from([None, 3]))
def test_batchnorm_eval_treats_examples_independently(impl, seed, L):
    bn = impl.BatchNorm1d(3, momentum=0.5).double()
    for x in _bn_batches(3, 4, L, seed, count=2):
        bn(x)  # training mode: learn some running statistics
    bn.eval()
    x = _bn_batches(3, 5, L, seed + 7, count=1)[0]
    with torch.no_grad():
        together = bn(x)
        alone = torch.cat([bn(x[i:i + 1]) for i in range(x.shape[0])])
    assert_close(together, alone, call=f"BatchNorm1d(3) in eval mode on a batch of shape {tuple(x.shape)}",
                 because="in eval mode each example is normalised with the running statistics, so its output must "
                         "not depend on the rest of the batch (the same as running it alone). Using the batch's "
                         "own statistics in eval makes a prediction depend on its neighbours.")


@pytest.mark.exercise("BatchNorm1d")
def test_batchnorm_layout_buffers_parameters_and_defaults(impl):
    bn = impl.BatchNorm1d(3, momentum=0.2, eps=1e-3)
    params = dict(bn.named_parameters())
    buffers = dict(bn.named_buffers())
    assert set(params) == {"weight", "bias"}, (
        f"BatchNorm1d(3).named_parameters() gives {sorted(params)}; expected exactly weight and bias. The running "
        "statistics are not trained: register them with self.register_buffer, not as nn.Parameter."
    )
    assert {"running_mean", "running_var"} <= set(buffers) & set(bn.state_dict()), (
        f"BatchNorm1d(3) has buffers {sorted(buffers)} and state_dict keys {sorted(bn.state_dict())}; running_mean "
        "and running_var must be (persistent) buffers (self.register_buffer) so that state_dict() saves them and "
        ".to() / .double() convert them."
    )
    for name, value in (("weight", 1.0), ("bias", 0.0), ("running_mean", 0.0), ("running_var", 1.0)):
        tensor = params.get(name, buffers.get(name))
        assert_close(tensor, torch.full((3,), value), call=f"BatchNorm1d(3).{name}",
                     because=f"{name} starts at {value} for every channel.")
    assert (bn.num_features, bn.momentum, bn.eps) == (3, 0.2, 1e-3), (
        f"BatchNorm1d(3, momentum=0.2, eps=1e-3) stores num_features={bn.num_features!r}, momentum={bn.momentum!r}, "
        f"eps={bn.eps!r}."
    )
    bn.double()
    assert bn.running_var.dtype == DT, "after .double() the running statistics must be float64 too (buffers)."
    default = impl.BatchNorm1d(2)
    assert (default.momentum, default.eps) == (0.1, 1e-5), (
        f"BatchNorm1d(2) stores momentum={default.momentum!r}, eps={default.eps!r}; the defaults are momentum=0.1 "
        "and eps=1e-5, as nn.BatchNorm1d's."
    )
    theirs = nn.BatchNorm1d(2, dtype=DT)
    default.double()
    x = torch.tensor([[0.0, 1.0], [0.002, 3.0], [0.004, 2.0]], dtype=DT)  # channel 0: variance below eps
    with torch.no_grad():
        trace = [default(x), default.running_mean.clone(), default.running_var.clone()]
        expected = [theirs(x), theirs.running_mean, theirs.running_var]
    assert_close(torch.cat([t.reshape(-1) for t in trace]), torch.cat([t.reshape(-1) for t in expected]),
                 rtol=1e-7, atol=1e-10, call="BatchNorm1d(2) (default momentum and eps), one training batch -> "
                                             "[output, running_mean, running_var], flattened",
                 because="the defaults are those of nn.BatchNorm1d: momentum=0.1, eps=1e-5.")
    far = torch.randn(64, 2, generator=generator(5)) + torch.tensor([1e4, -1e4])  # float32 channels far from 0
    mine_far, theirs_far = impl.BatchNorm1d(2), nn.BatchNorm1d(2)
    with torch.no_grad():
        got, expected = mine_far(far), theirs_far(far)
    # ulp(1e4) in float32 is ~1e-3 against a spread of 1: a few ulps of tolerance; E[x^2] - E[x]^2 is off by ~100%
    assert_close(torch.cat([got.reshape(-1), mine_far.running_var]), torch.cat([expected.reshape(-1),
                 theirs_far.running_var]), rtol=1e-3, atol=1e-2,
                 call="BatchNorm1d(2) in training mode on a float32 batch (64, 2) with channel means +1e4 and -1e4 "
                      "-> [output, running_var]",
                 because="subtract the mean before squaring: E[x^2] - E[x]^2 cancels catastrophically in float32 when "
                         "the mean is large compared with the spread (x.var(unbiased=False) is safe).")
    meta = impl.BatchNorm1d(3).to("meta")
    for mode in (True, False):
        out = meta.train(mode)(torch.empty(4, 3, 2, device="meta"))
        assert out.device.type == "meta" and out.shape == (4, 3, 2), (
            f"BatchNorm1d(3) on the meta device in {'training' if mode else 'eval'} mode returned {describe(out)} on "
            f"{out.device}; every tensor made inside must live on x's device."
        )


@pytest.mark.exercise("BatchNorm1d")
def test_batchnorm_rejects_bad_input(impl):
    bn = impl.BatchNorm1d(3)
    with pytest.raises(ValueError, match=r"4, 2"):
        bn(torch.zeros(4, 2))  # 2 channels, not 3
    with pytest.raises(ValueError, match=r"2, 3, 4, 5"):
        bn(torch.zeros(2, 3, 4, 5))  # 4-D input
    with pytest.raises(ValueError, match=r"\b3\b"):
        bn(torch.zeros(3))  # 1-D input
    for single in (torch.ones(1, 3), torch.ones(1, 3, 1)):
        with pytest.raises(ValueError):
            bn(single)  # one value per channel: no variance in training mode
    bn.eval()
    out = bn(torch.ones(1, 3))  # fine in eval mode: the running statistics are used
    assert out.shape == (1, 3)
    for args, kwargs, named in (((3,), {"momentum": 1.5}, "1.5"), ((3,), {"momentum": -0.1}, "-0.1"),
                                ((3,), {"eps": -1.0}, "-1"), ((0,), {}, "0")):
        with pytest.raises(ValueError, match=re.escape(named)):
            impl.BatchNorm1d(*args, **kwargs)
    for kwargs in ({"momentum": 0.0}, {"momentum": 1.0}, {"eps": 0.0}):
        impl.BatchNorm1d(3, **kwargs)  # the limits themselves are allowed


@pytest.mark.exercise("BatchNorm1d")
def test_batchnorm_is_built_from_scratch(impl, monkeypatch):
    bn = impl.BatchNorm1d(2)
    _forbid(monkeypatch, "F.batch_norm / nn.BatchNorm1d", [(F, "batch_norm"), (torch, "batch_norm"),
                                                           (nn.BatchNorm1d, "forward")])
    bn(torch.randn(4, 2, generator=generator(0)))
    bn.eval()
    bn(torch.randn(4, 2, generator=generator(1)))


# --------------------------------------------------------------------------------------------------
# Dropout

DROP_PS = [0.1, 0.25, 0.5, 0.8]


def _drop(cls, p: float, x: torch.Tensor, seed: int, train: bool = True) -> torch.Tensor:
    """``cls(p)`` in training (or eval) mode applied to ``x`` under ``torch.manual_seed(seed)``."""
    drop = cls(p)
    drop.train(train)
    with seeded(seed):
        return drop(x)


@pytest.mark.exercise("Dropout")
@given(seeds, st.sampled_from([0.0, *DROP_PS, 1.0]))
def test_dropout_eval_is_identity(impl, seed, p):
    x = randn(generator(seed), 3, 5)
    out = _drop(impl.Dropout, p, x, seed, train=False)
    assert torch.equal(out, x), (
        f"Called Dropout({p}).eval()(x of shape (3, 5)). Returned {describe(out)}; expected x unchanged, because "
        "in eval mode dropout is the identity (the 1/(1-p) scaling during training already keeps E[x])."
    )


@pytest.mark.exercise("Dropout")
@given(seeds, st.sampled_from(DROP_PS))
@example(seed=0, p=0.2)
def test_dropout_drops_a_fraction_p_and_scales_the_rest(impl, seed, p):
    n = 4000
    x = randn(generator(seed), n).abs() + 0.5  # no zeros in x: a zero in the output means "dropped"
    out = _drop(impl.Dropout, p, x, seed)
    call = f"Dropout({p}) in training mode on x of shape ({n},), all entries >= 0.5"
    dropped = out == 0
    fraction = dropped.double().mean().item()
    sigma = math.sqrt(p * (1 - p) / n)
    assert abs(fraction - p) <= 6 * sigma, (
        f"Called {call}. It zeroed {fraction:.3f} of the entries; expected {p} +- {6 * sigma:.3f} (6 standard "
        f"deviations), because each entry is dropped with probability p (and kept with probability 1 - p)."
        + _likely("Dropout", lambda cls: _drop(cls, p, x.clone(), seed), out)
    )
    kept, expected = out[~dropped], x[~dropped] / (1 - p)
    assert_close(kept, expected, call=call + " -> the kept entries",
                 because=f"every kept entry is multiplied by 1 / (1 - p) = {1 / (1 - p):.4g} (inverted dropout).",
                 cause=likely_cause(KATA, "Dropout", lambda cls: _drop(cls, p, x.clone(), seed), out)
                 if error_report(kept, expected, 1e-6, 1e-9) else None)


@pytest.mark.exercise("Dropout")
@given(seeds, st.sampled_from(DROP_PS))
def test_dropout_keeps_the_expectation(impl, seed, p):
    n = 20000
    out = _drop(impl.Dropout, p, torch.ones(n, dtype=DT), seed)
    mean = out.mean().item()
    sigma = math.sqrt(p / ((1 - p) * n))
    assert abs(mean - 1.0) <= 6 * sigma, (
        f"Called Dropout({p}) in training mode on torch.ones({n}). The mean of the output is {mean:.4f}; expected "
        f"1 +- {6 * sigma:.4f} (6 standard deviations), because inverted dropout keeps E[x]: the survivors are "
        f"scaled by 1 / (1 - p) so that E[y] = (1 - p) * x / (1 - p) = x."
        + _likely("Dropout", lambda cls: _drop(cls, p, torch.ones(n, dtype=DT), seed), out)
    )


@pytest.mark.exercise("Dropout")
@given(seeds, st.sampled_from(DROP_PS))
def test_dropout_gradient_is_the_mask(impl, seed, p):
    x = (randn(generator(seed), 200).abs() + 0.5).requires_grad_()
    out = _drop(impl.Dropout, p, x, seed)
    out.sum().backward()
    assert x.grad is not None, f"Called Dropout({p})(x).sum().backward(); x.grad is None: y must be computed from x."
    expected = (out.detach() != 0).to(DT) / (1 - p)
    assert_close(x.grad, expected, call=f"Dropout({p}) in training mode on x of shape (200,), then y.sum().backward()",
                 because="dy/dx is the same mask and scale as the forward pass: 0 where dropped, 1/(1-p) where kept.")


@pytest.mark.exercise("Dropout")
def test_dropout_edge_probabilities(impl):
    x = randn(generator(3), 4, 6).requires_grad_()
    out = _drop(impl.Dropout, 1.0, x, 0)
    assert torch.equal(out.detach(), torch.zeros(4, 6, dtype=DT)), (
        f"Called Dropout(1.0) in training mode. Returned {describe(out)}; expected all zeros and no nan: with p = 1 "
        "every entry is dropped, and 1 / (1 - p) must never be computed (0 * inf is nan)."
        + _likely("Dropout", lambda cls: _drop(cls, 1.0, x.detach().clone(), 0), out)
    )
    if out.requires_grad:
        out.sum().backward()
        assert x.grad is None or torch.equal(x.grad, torch.zeros_like(x)), (
            f"Called Dropout(1.0)(x).sum().backward(). x.grad is {describe(x.grad)}; expected zeros (no nan)."
        )
    same = _drop(impl.Dropout, 0.0, x.detach(), 0)
    assert torch.equal(same, x.detach()), (
        f"Called Dropout(0.0) in training mode. Returned {describe(same)}; expected x unchanged (nothing dropped, "
        "scale 1 / (1 - 0) = 1)."
    )


@pytest.mark.exercise("Dropout")
@given(seeds)
def test_dropout_leaves_its_input_alone_and_is_seeded(impl, seed):
    x = randn(generator(seed), 10, 5).t()  # a non-contiguous view
    before = x.clone()
    first = _drop(impl.Dropout, 0.5, x, seed)
    assert torch.equal(x, before), (
        "Called Dropout(0.5)(x) in training mode and x itself changed: do not modify the input in place "
        "(x.mul_, x[mask] = 0); return a new tensor. The caller may still need x, e.g. for a residual connection."
    )
    again = _drop(impl.Dropout, 0.5, x, seed)
    assert torch.equal(first, again), (
        "Called Dropout(0.5)(x) twice after torch.manual_seed(same seed): the outputs differ. Draw the mask from "
        "torch's global generator (torch.rand_like / torch.bernoulli) so that a seed reproduces it."
    )
    drop = impl.Dropout(0.5)
    with seeded(seed):
        a, b = drop(x), drop(x)
    assert not torch.equal(a, b), (
        "Called the same Dropout(0.5) module twice on the same x: it dropped exactly the same entries both times. "
        "Draw a fresh mask on every forward call (do not store it, and do not re-seed inside forward)."
    )


@pytest.mark.exercise("Dropout")
def test_dropout_rejects_bad_probability(impl):
    for p in (-0.1, 1.5):
        with pytest.raises(ValueError, match=re.escape(str(p))):
            impl.Dropout(p)
    assert impl.Dropout(0.3).p == 0.3, "Dropout(0.3).p must be 0.3 (store the probability as self.p)."
    assert impl.Dropout().p == 0.5, f"Dropout().p is {impl.Dropout().p!r}; the default p is 0.5, as nn.Dropout's."


@pytest.mark.exercise("Dropout")
def test_dropout_keeps_dtype_and_device(impl):
    for dtype in (torch.float32, torch.bfloat16):
        out = _drop(impl.Dropout, 0.5, torch.ones(64, dtype=dtype), 0)
        assert out.dtype == dtype and set(out.float().tolist()) <= {0.0, 2.0}, (
            f"Called Dropout(0.5) in training mode on torch.ones(64, dtype={dtype}). Returned {describe(out)}; "
            f"expected {dtype} values in {{0, 2}}: the output keeps the input's dtype."
        )
    drop = impl.Dropout(0.5)
    with seeded(0):
        meta = drop(torch.empty(3, 4, device="meta"))
    assert meta.device.type == "meta" and meta.shape == (3, 4), (
        f"Called Dropout(0.5) in training mode on a meta tensor of shape (3, 4). Returned {describe(meta)} on "
        f"{meta.device}: draw the mask where x lives (torch.rand_like(x), not torch.rand(x.shape))."
    )


@pytest.mark.exercise("Dropout")
def test_dropout_is_built_from_scratch(impl, monkeypatch):
    drop = impl.Dropout(0.5)
    _forbid(monkeypatch, "F.dropout / nn.Dropout", [(F, "dropout"), (torch, "dropout"), (torch, "dropout_"),
                                                    (nn.Dropout, "forward")])
    with seeded(0):
        drop(torch.ones(10))


# --------------------------------------------------------------------------------------------------
# LSTMCell / GRUCell

CELL_PARAMS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
TORCH_CELLS = {"LSTMCell": nn.LSTMCell, "GRUCell": nn.GRUCell}


@st.composite
def cell_cases(draw):
    """(B, I, H, number of steps, start from a given state?, seed)."""
    return (draw(st.integers(1, 3)), draw(st.integers(1, 4)), draw(st.integers(1, 4)), draw(st.integers(1, 3)),
            draw(st.booleans()), draw(seeds))


def _cell_pair(cls, kind: str, n_in: int, H: int, seed: int):
    with seeded(seed):  # both constructors draw their initial weights from the global RNG
        theirs = refill_(TORCH_CELLS[kind](n_in, H, dtype=DT), seed, scale=0.6)
        mine = cls(n_in, H).double()
    _copy_by_name(mine, theirs, CELL_PARAMS, f"{kind}({n_in}, {H})")
    return mine, theirs


def _cell_inputs(kind: str, B: int, n_in: int, H: int, steps: int, with_state: bool, seed: int):
    """Inputs (B, I) per step and an optional state; x and h are NON-contiguous views (transposed in memory)."""
    gen = generator(seed + 1)
    xs = [randn(gen, n_in, B, scale=1.5).t() for _ in range(steps)]
    state = None
    if with_state:
        state = (randn(gen, H, B).t(), randn(gen, B, H)) if kind == "LSTMCell" else randn(gen, H, B).t()
    return xs, state


def _unroll(cell, kind: str, xs, state) -> torch.Tensor:
    """Run the cell over ``xs`` feeding its state back; every step's h (and c) flattened into one tensor."""
    outputs = []
    for x in xs:
        if kind == "LSTMCell":
            state = cell(x, state)
            outputs += [state[0], state[1]]
        else:
            state = cell(x, state)
            outputs.append(state)
    return torch.cat([o.reshape(-1) for o in outputs])


CELL_RULES = {
    "LSTMCell": "gates = x W_ih^T + b_ih + h W_hh^T + b_hh split in PyTorch's order i, f, g, o; "
                "c' = sigmoid(f) c + sigmoid(i) tanh(g); h' = sigmoid(o) tanh(c').",
    "GRUCell": "gates split in PyTorch's order r, z, n; n = tanh(i_n + r * (W_hn h + b_hn)); h' = (1 - z) n + z h.",
}


@pytest.mark.exercise("LSTMCell")
@pytest.mark.parametrize("kind", ["LSTMCell", "GRUCell"])
@given(case=cell_cases())
@example(case=(2, 3, 4, 3, True, 0))
def test_cell_matches_torch(impl, kind, case):
    B, n_in, H, steps, with_state, seed = case
    mine, theirs = _cell_pair(getattr(impl, kind), kind, n_in, H, seed)
    xs, state = _cell_inputs(kind, B, n_in, H, steps, with_state, seed)
    pristine = copy.deepcopy((xs, state))
    with torch.no_grad():
        got = _unroll(mine, kind, xs, state)
        expected = _unroll(theirs, kind, *pristine)
    assert torch.equal(_tensors(xs), _tensors(pristine[0])), (
        f"Called {kind}({n_in}, {H}) and an input x changed: never modify it in place."
    )
    if state is not None:
        assert torch.equal(_tensors(state), _tensors(pristine[1])), (
            f"Called {kind}({n_in}, {H})(x, state) and the state passed in changed: compute the new state as new "
            "tensors (c * sigmoid(f), not c.mul_(...)); the caller may still need the old one."
        )
    cause = None
    if error_report(got, expected, 1e-7, 1e-10):
        def run(cls):
            with torch.no_grad():
                return _unroll(_cell_pair(cls, kind, n_in, H, seed)[0], kind, *copy.deepcopy(pristine))
        cause = likely_cause(KATA, kind, run, got, rtol=1e-7, atol=1e-10)
    outputs = "(h, c)" if kind == "LSTMCell" else "h"
    assert_close(got, expected, rtol=1e-7, atol=1e-10, cause=cause,
                 call=f"{kind}({n_in}, {H}) with nn.{kind}'s weights, {steps} step(s) on x of shape ({B}, {n_in}) from "
                      f"{'a given' if with_state else 'the zero'} state (compared: every step's {outputs}, flattened)",
                 because=f"it must equal nn.{kind} with the same weights: {CELL_RULES[kind]}")


@pytest.mark.exercise("LSTMCell")
@pytest.mark.parametrize("kind", ["LSTMCell", "GRUCell"])
@given(case=cell_cases())
@settings(max_examples=10)
def test_cell_gradients_match_torch(impl, kind, case):
    B, n_in, H, steps, _, seed = case
    mine, theirs = _cell_pair(getattr(impl, kind), kind, n_in, H, seed)
    xs, state = _cell_inputs(kind, B, n_in, H, steps, True, seed)
    results = []
    for cell in (mine, theirs):
        leaves_x = [x.clone().requires_grad_() for x in xs]
        leaves_s = tuple(s.clone().requires_grad_() for s in state) if kind == "LSTMCell" else (
            state.clone().requires_grad_(),)
        out = _unroll(cell, kind, leaves_x, leaves_s if kind == "LSTMCell" else leaves_s[0])
        (out * randn(generator(seed + 3), *out.shape)).sum().backward()
        results.append([leaf.grad for leaf in leaves_x + list(leaves_s)] + [getattr(cell, n).grad for n in CELL_PARAMS])
    names = [f"x[{k}]" for k in range(steps)] + (["h0", "c0"] if kind == "LSTMCell" else ["h0"]) + list(CELL_PARAMS)
    call = f"{kind}({n_in}, {H}) over {steps} step(s), then backward()"
    for name, got, expected in zip(names, results[0], results[1], strict=True):
        assert got is not None, f"Called {call}. The gradient of {name} is None: it must reach {name}."
        assert_close(got, expected, call=call + f" -> gradient of {name}", rtol=1e-7, atol=1e-10,
                     because=f"the gradients must equal nn.{kind}'s: {CELL_RULES[kind]}")


@pytest.mark.exercise("LSTMCell")
@pytest.mark.parametrize("kind", ["LSTMCell", "GRUCell"])
def test_cell_passes_gradcheck(impl, kind):
    mine, _ = _cell_pair(getattr(impl, kind), kind, 3, 2, 11)
    gen = generator(12)
    x, h, c = randn(gen, 2, 3), randn(gen, 2, 2), randn(gen, 2, 2)
    if kind == "LSTMCell":
        def fn(x_, h_, c_):
            return mine(x_, (h_, c_))
        inputs = (x, h, c)
    else:
        fn, inputs = mine, (x, h)
    ok = torch.autograd.gradcheck(fn, tuple(t.requires_grad_() for t in inputs), eps=1e-6, atol=1e-6,
                                  raise_exception=False)
    assert ok, (f"torch.autograd.gradcheck of {kind}(3, 2) disagrees with finite differences (detached or in-place "
                "operations?).")


@pytest.mark.exercise("LSTMCell")
@pytest.mark.parametrize("kind", ["LSTMCell", "GRUCell"])
def test_cell_layout_initialisation_and_default_state(impl, kind):
    n_in, H = 6, 16
    gates = 4 if kind == "LSTMCell" else 3
    cls = getattr(impl, kind)
    with seeded(0):
        cell = cls(n_in, H)
    params = dict(cell.named_parameters())
    expected_shapes = {"weight_ih": (gates * H, n_in), "weight_hh": (gates * H, H), "bias_ih": (gates * H,),
                       "bias_hh": (gates * H,)}
    shapes = {name: tuple(p.shape) for name, p in params.items()}
    assert shapes == expected_shapes, (
        f"{kind}({n_in}, {H}).named_parameters() has shapes {shapes}; expected {expected_shapes} (PyTorch's layout: "
        f"the {gates} gates stacked along the first axis)."
    )
    assert (cell.input_size, cell.hidden_size) == (n_in, H), (
        f"{kind}({n_in}, {H}) stores input_size={cell.input_size!r}, hidden_size={cell.hidden_size!r}."
    )
    bound = 1 / math.sqrt(H)
    rule = (f"initialise every parameter uniformly in [-1/sqrt(hidden_size), 1/sqrt(hidden_size)] = [-{bound:.4g}, "
            f"{bound:.4g}] (p.uniform_(-bound, bound) under torch.no_grad()), as PyTorch does")
    for name, p in params.items():
        # the std of U(-b, b) is b / sqrt(3); 0.5 of it is far outside the sampling error of >= 48 values
        assert p.abs().max() <= bound and p.std() > 0.5 * bound / math.sqrt(3), (
            f"{kind}({n_in}, {H}).{name} holds values in [{p.min().item():.4g}, {p.max().item():.4g}] with std "
            f"{p.std().item():.4g}; {rule}."
        )
    values = torch.cat([p.detach().reshape(-1) for p in params.values()]).double()
    n = values.numel()
    mean, std = values.mean().item(), values.std().item()
    assert (abs(mean) <= 6 * bound / math.sqrt(3 * n) and abs(std / (bound / math.sqrt(3)) - 1) <= 0.1
            and values.min() < -0.9 * bound and values.max() > 0.9 * bound), (
        f"{kind}({n_in}, {H}): its {n} initial values have mean {mean:.4g}, std {std:.4g}, range "
        f"[{values.min().item():.4g}, {values.max().item():.4g}]; U(-{bound:.4g}, {bound:.4g}) has mean 0, std "
        f"{bound / math.sqrt(3):.4g} and fills the whole range: {rule}."
    )
    with seeded(0):
        again = cls(n_in, H)
    with seeded(1):
        other = cls(n_in, H)
    assert torch.equal(_tensors(list(again.parameters())), values.to(torch.float32)), (
        f"Two {kind}({n_in}, {H}) built after torch.manual_seed(0) differ: draw the initial values from torch's "
        "global generator (tensor.uniform_), so that a seed reproduces a model."
    )
    assert not torch.equal(_tensors(list(other.parameters())), values.to(torch.float32)), (
        f"{kind}({n_in}, {H}) built after torch.manual_seed(0) and after torch.manual_seed(1) are identical: the "
        "initial values must come from torch's global generator, not from a fixed seed of your own."
    )
    x = randn(generator(1), 2, n_in, dtype=torch.float32)
    with torch.no_grad():
        out = cell(x)
    assert all(t.dtype == torch.float32 and t.shape == (2, H) for t in (out if kind == "LSTMCell" else (out,))), (
        f"Called {kind}({n_in}, {H})(float32 x of shape (2, {n_in})). Returned {describe(out)}; expected float32 "
        f"state(s) of shape (2, {H}): a missing state is zeros of x's dtype (x.new_zeros(B, H))."
    )
    cell.double()
    x = x.double()
    zeros = torch.zeros(2, H, dtype=DT)
    with torch.no_grad():
        default = _tensors(cell(x))
        explicit = _tensors(cell(x, (zeros, zeros)) if kind == "LSTMCell" else cell(x, zeros))
    assert_close(default, explicit, call=f"{kind}({n_in}, {H})(x) vs the same with an explicit zero state",
                 because="a missing state means a zero state.")
    meta = _tensors(cell.to("meta")(torch.empty(2, n_in, device="meta", dtype=DT)))
    assert meta.device.type == "meta", (
        f"Called {kind}({n_in}, {H}) on the meta device without a state. Returned {describe(meta)} on {meta.device}; "
        "the zero state must be made on x's device (x.new_zeros(B, H)), not on the CPU."
    )


@pytest.mark.exercise("LSTMCell")
@pytest.mark.parametrize("kind", ["LSTMCell", "GRUCell"])
def test_cell_rejects_bad_input(impl, kind):
    cls = getattr(impl, kind)
    cell = cls(3, 2)
    with pytest.raises(ValueError, match=r"2, 4"):
        cell(torch.zeros(2, 4))  # input_size is 3
    with pytest.raises(ValueError, match=r"\b5\b"):
        cell(torch.zeros(5))  # not (B, I)
    for sizes in ((0, 2), (3, 0)):
        with pytest.raises(ValueError, match=r"\b0\b"):
            cls(*sizes)
    cls(1, 1)  # the smallest legal cell


@pytest.mark.exercise("LSTMCell")
def test_cells_are_built_from_scratch(impl, monkeypatch):
    lstm, gru = impl.LSTMCell(3, 2), impl.GRUCell(3, 2)
    _forbid(monkeypatch, "nn.LSTMCell / nn.GRUCell (or torch's fused cell kernels)", [
        (nn.LSTMCell, "forward"), (nn.GRUCell, "forward"), (nn.LSTM, "forward"), (nn.GRU, "forward"),
        (torch, "lstm_cell"), (torch, "gru_cell")])
    x = torch.randn(2, 3, generator=generator(0))
    lstm(x)
    gru(x)


# --------------------------------------------------------------------------------------------------
# LSTMWithAttention


@st.composite
def model_cases(draw, min_t: int = 1):
    """(vocab, embedding_dim, hidden_dim, heads, B, T, seed); T = 1 is a sequence that only sees itself."""
    heads = draw(st.sampled_from([1, 2, 4]))
    hidden = heads * draw(st.integers(1, 2))
    return (draw(st.integers(3, 9)), draw(st.integers(2, 5)), hidden, heads, draw(st.integers(2, 4)),
            draw(st.integers(min_t, 6)), draw(seeds))


def _build_model(cls, case) -> nn.Module:
    V, E, H, heads, _, _, seed = case
    with seeded(seed):
        model = cls(V, E, H, num_heads=heads)
    return refill_(model.double(), seed, scale=0.7).eval()


def _tokens(case, salt: int = 0) -> torch.Tensor:
    V, _, _, _, B, T, seed = case
    return torch.randint(0, V, (B, T), generator=generator(seed + 100 + salt))


def _model_call(case) -> str:
    V, E, H, heads, B, T, _ = case
    return f"LSTMWithAttention({V}, {E}, {H}, num_heads={heads}) on token ids of shape ({B}, {T})"


@st.composite
def causal_cases(draw):
    """A model case and a position t with at least one token after it."""
    case = draw(model_cases(min_t=2))
    return case, draw(st.integers(0, case[5] - 2))


@pytest.mark.exercise("LSTMWithAttention")
@given(causal_cases())
@example(drawn=((7, 4, 4, 2, 3, 5, 0), 1))
def test_lstm_attention_is_causal(impl, drawn):
    case, t = drawn
    V, _, _, _, B, T, seed = case
    model = _build_model(impl.LSTMWithAttention, case)
    tokens = _tokens(case)
    changed = tokens.clone()
    shift = torch.randint(1, V, (B, T - t - 1), generator=generator(seed + 5))
    changed[:, t + 1:] = (tokens[:, t + 1:] + shift) % V  # every token after t is different
    with torch.no_grad():
        before, after = model(tokens), model(changed)
    call = _model_call(case)
    assert before.shape == (B, T, V), f"Called {call}. Returned shape {tuple(before.shape)}, expected ({B}, {T}, {V})."
    assert torch.isfinite(before).all(), f"Called {call}. The output contains nan or inf: {describe(before)}."
    assert_close(after[:, :t + 1], before[:, :t + 1], atol=1e-10, rtol=1e-9,
                 call=f"{call}, then again with every token after position {t} changed -> outputs at positions 0..{t}",
                 because="the logits at position t predict token t + 1, so they may depend only on tokens 0..t. Pass "
                         "nn.MultiheadAttention a causal attn_mask: a (T, T) bool tensor with True (= may NOT attend) "
                         "strictly above the diagonal. A 0/1 float mask is added to the scores and hides nothing.")


@pytest.mark.exercise("LSTMWithAttention")
@given(model_cases())
@example(case=(7, 4, 4, 2, 3, 5, 0))
def test_lstm_attention_keeps_batch_items_independent(impl, case):
    model = _build_model(impl.LSTMWithAttention, case)
    tokens = _tokens(case)
    B = tokens.shape[0]
    with torch.no_grad():
        together = model(tokens)
        alone = torch.cat([model(tokens[b:b + 1]) for b in range(B)])
        flipped = model(tokens.flip(0)).flip(0)
    because = ("each example's output must depend on that example only. nn.MultiheadAttention expects (T, B, H) "
               "unless it is built with batch_first=True; fed the LSTM's (B, T, H) it attends across the batch "
               "(the learning path's bug).")
    assert_close(together, alone, atol=1e-10, rtol=1e-9, because=because,
                 call=f"{_model_call(case)} vs each example run alone (batch of 1)")
    assert_close(flipped, together, atol=1e-10, rtol=1e-9, because=because,
                 call=f"{_model_call(case)} vs the same batch in reverse order")


@pytest.mark.exercise("LSTMWithAttention")
@given(model_cases())
@settings(max_examples=10)
def test_lstm_attention_matches_reference(impl, reference, case):
    expected_model = _build_model(reference.LSTMWithAttention, case)
    V, E, H, heads, _, _, seed = case
    with seeded(seed):
        model = impl.LSTMWithAttention(V, E, H, num_heads=heads).double().eval()
    try:
        model.load_state_dict(expected_model.state_dict())
    except RuntimeError as err:
        pytest.fail(f"The reference's state_dict does not fit your LSTMWithAttention ({err}). Keep the layout of "
                    "the docstring: embedding, lstm, attention (nn.MultiheadAttention), linear.", pytrace=False)
    tokens = _tokens(case)
    with torch.no_grad():
        got, expected = model(tokens), expected_model(tokens)
    cause = None
    if error_report(got, expected, 1e-7, 1e-10):
        def run(cls):
            with seeded(seed):  # construction draws from the global RNG
                other = cls(V, E, H, num_heads=heads).double().eval()
            other.load_state_dict(expected_model.state_dict())
            with torch.no_grad():
                return other(tokens)
        cause = likely_cause(KATA, "LSTMWithAttention", run, got, rtol=1e-7, atol=1e-10)
    assert_close(got, expected, call=f"{_model_call(case)} with the reference's weights", rtol=1e-7, atol=1e-10,
                 cause=cause,
                 because="with the same weights it must compute linear(attention(lstm(embedding(x)))) with a causal "
                         "mask in which every position sees itself and the positions before it (not the future).")


@pytest.mark.exercise("LSTMWithAttention")
def test_lstm_attention_rejects_bad_arguments(impl):
    with pytest.raises(ValueError, match=r"(10\D.*\b4\b)|(\b4\D.*\b10\b)"):
        impl.LSTMWithAttention(20, 8, hidden_dim=10, num_heads=4)
    with pytest.raises(ValueError, match=r"\b0\b"):
        impl.LSTMWithAttention(20, 8, hidden_dim=8, num_heads=0)
    model = impl.LSTMWithAttention(20, 8, hidden_dim=8, num_heads=2)
    for tokens in (torch.zeros(5, dtype=torch.long), torch.zeros(2, 5, 1, dtype=torch.long)):
        with pytest.raises(ValueError, match=re.escape(", ".join(map(str, tokens.shape)))):
            model(tokens)  # not (B, T)


@pytest.mark.exercise("LSTMWithAttention")
def test_lstm_attention_layout_defaults_and_device(impl):
    with seeded(0):
        model = impl.LSTMWithAttention(11, 4, 16)
    layers = {name: type(module) for name, module in model.named_children()}
    expected = {"embedding": nn.Embedding, "lstm": nn.LSTM, "attention": nn.MultiheadAttention, "linear": nn.Linear}
    assert all(issubclass(layers.get(name, type(None)), kind) for name, kind in expected.items()), (
        f"LSTMWithAttention(11, 4, 16) has the layers {layers}; expected {expected} (see its docstring)."
    )
    sizes = ((model.embedding.num_embeddings, model.embedding.embedding_dim), (model.lstm.input_size,
             model.lstm.hidden_size, model.lstm.batch_first), model.attention.embed_dim,
             (model.linear.in_features, model.linear.out_features))
    assert sizes == ((11, 4), (4, 16, True), 16, (16, 11)), (
        f"LSTMWithAttention(11, 4, 16): embedding (V, E), lstm (E, H, batch_first), attention embed_dim and linear "
        f"(H, V) are {sizes}; expected ((11, 4), (4, 16, True), 16, (16, 11))."
    )
    assert model.attention.num_heads == 8, (
        f"LSTMWithAttention(11, 4, 16).attention.num_heads is {model.attention.num_heads}; the default is 8 heads."
    )
    meta = model.to("meta")(torch.zeros(2, 3, dtype=torch.long, device="meta"))
    assert meta.device.type == "meta" and meta.shape == (2, 3, 11), (
        f"Called LSTMWithAttention(11, 4, 16) on the meta device. Returned {describe(meta)} on {meta.device}; "
        "make the causal mask on x's device (torch.ones(T, T, dtype=torch.bool, device=x.device))."
    )


# --------------------------------------------------------------------------------------------------
# clip_grad_norm_


@st.composite
def grad_cases(draw):
    """(parameter shapes, which have a gradient, gradient scale, max_norm, norm_type, seed)."""
    shapes = draw(st.lists(st.lists(st.integers(1, 3), min_size=1, max_size=2).map(tuple), min_size=1, max_size=4))
    has_grad = draw(st.lists(st.booleans(), min_size=len(shapes), max_size=len(shapes)))
    has_grad[0] = True
    return (shapes, has_grad, draw(st.sampled_from([0.01, 0.3, 1.0, 10.0])), draw(st.sampled_from([0.1, 1.0, 5.0])),
            draw(st.sampled_from([2.0, 2.0, 1.0, 3.0, math.inf])), draw(seeds))


def _grad_params(case) -> list[torch.Tensor]:
    shapes, has_grad, scale, _, _, seed = case
    gen = generator(seed)
    params = []
    for shape, grad in zip(shapes, has_grad, strict=True):
        p = randn(gen, *shape).requires_grad_()
        if grad:
            # 2-D gradients are NON-contiguous (transposed) views: .view(-1) fails on them
            p.grad = randn(gen, *shape[::-1], scale=scale).mT if len(shape) == 2 else randn(gen, *shape, scale=scale)
        params.append(p)
    return params


def _clip_result(fn, case):
    params = _grad_params(case)
    total = fn(params, case[3], norm_type=case[4])
    grads = [p.grad.reshape(-1) for p in params if p.grad is not None]
    return torch.cat([torch.as_tensor(float(total), dtype=DT).reshape(1), *grads])


@pytest.mark.exercise("clip_grad_norm_")
@given(grad_cases())
@example(case=([(2, 2), (3,)], [True, True], 1.0, 0.1, 2.0, 0))  # clipping active: one factor for both
@example(case=([(2, 2), (3,)], [True, True], 0.01, 5.0, 2.0, 1))  # norm far below max_norm: unchanged
@example(case=([(2,), (3,), (1,)], [True, False, True], 10.0, 1.0, math.inf, 2))
def test_clip_matches_torch(impl, case):
    shapes, has_grad, scale, max_norm, norm_type, _ = case
    got = _clip_result(impl.clip_grad_norm_, case)
    expected = _clip_result(torch.nn.utils.clip_grad_norm_, case)
    cause = _cause_if_wrong("clip_grad_norm_", lambda fn: _clip_result(fn, case), got, expected, 1e-7, 1e-10)
    assert_close(got, expected, rtol=1e-7, atol=1e-10, cause=cause,
                 call=f"clip_grad_norm_({len(shapes)} parameters of shapes {shapes}, gradients on {has_grad}, of "
                      f"scale {scale}; max_norm={max_norm}, norm_type={norm_type}) -> [returned norm, *clipped grads]",
                 because="it must equal torch.nn.utils.clip_grad_norm_: return the global norm of all gradients "
                         "before clipping, and multiply every gradient by the same min(1, max_norm / (norm + 1e-6)).")


@pytest.mark.exercise("clip_grad_norm_")
@given(seeds, st.sampled_from([0.05, 0.5, 50.0]))
def test_clip_takes_model_parameters_generator(impl, seed, max_norm):
    mine = refill_(nn.Linear(3, 2, dtype=DT), seed)
    theirs = copy.deepcopy(mine)
    for model in (mine, theirs):
        model(randn(generator(seed + 1), 4, 3)).pow(2).sum().backward()
    total = impl.clip_grad_norm_(mine.parameters(), max_norm)  # a generator: it can be iterated once
    expected_total = torch.nn.utils.clip_grad_norm_(theirs.parameters(), max_norm)
    call = f"clip_grad_norm_(model.parameters(), max_norm={max_norm}) for an nn.Linear(3, 2)"
    assert_close(torch.as_tensor(float(total), dtype=DT), expected_total, call=call + " -> returned norm",
                 because="the returned value is the global norm before clipping.")
    for name, p in mine.named_parameters():
        assert_close(p.grad, dict(theirs.named_parameters())[name].grad, call=call + f" -> {name}.grad",
                     because="model.parameters() is a generator: after one pass it is empty. Collect the "
                             "parameters (or their grads) into a list first, then compute the norm and clip.")


@pytest.mark.exercise("clip_grad_norm_")
@given(grad_cases())
def test_clip_keeps_direction_and_bounds_the_norm(impl, case):
    _, _, _, max_norm, norm_type, _ = case
    params = _grad_params(case)
    values = [p.detach().clone() for p in params]
    grads = [p.grad for p in params if p.grad is not None]
    before = [g.clone() for g in grads]
    call = f"clip_grad_norm_(parameters, max_norm={max_norm}, norm_type={norm_type})"
    returned = impl.clip_grad_norm_(params, max_norm, norm_type=norm_type)
    assert isinstance(returned, torch.Tensor) and returned.dim() == 0, (
        f"Called {call}. Returned {describe(returned)}; expected a 0-dim tensor (as torch.nn.utils.clip_grad_norm_ "
        "returns), not a Python float."
    )
    total = float(returned)
    after = [p.grad for p in params if p.grad is not None]
    assert all(new is old for new, old in zip(after, grads, strict=True)), (
        f"Called {call}. Some p.grad is a new tensor afterwards: scale each gradient in place (g.mul_(coef)). "
        "Code that holds the gradient tensor (an optimizer hook, a gradient bucket) would never see the clipping."
    )
    assert all(torch.equal(p.detach(), v) for p, v in zip(params, values, strict=True)), (
        f"Called {call}. A parameter's VALUE changed; clipping scales the gradients only."
    )
    flat_before, flat_after = torch.cat([g.reshape(-1) for g in before]), torch.cat([g.reshape(-1) for g in after])
    true_norm = torch.linalg.vector_norm(flat_before, norm_type).item()
    assert math.isclose(total, true_norm, rel_tol=1e-7, abs_tol=1e-12), (
        f"Called {call}. Returned {total!r}; the {norm_type}-norm of all gradients taken together is {true_norm!r}."
    )
    new_norm = torch.linalg.vector_norm(flat_after, norm_type).item()
    assert new_norm <= max_norm * (1 + 1e-6) + 1e-12, (
        f"Called {call}. Afterwards the global norm is {new_norm:.6g} > max_norm = {max_norm}: the gradients "
        "must be scaled so that all of them TOGETHER have at most max_norm (clipping each one separately does not)."
    )
    factor = min(1.0, max_norm / (true_norm + 1e-6))
    assert_close(flat_after, flat_before * factor, call=call + " -> every gradient, flattened",
                 because=f"every gradient is multiplied by the same factor min(1, max_norm / (norm + 1e-6)) = "
                         f"{factor:.6g}: the update keeps its direction, and it is never scaled up.")


@pytest.mark.exercise("clip_grad_norm_")
def test_clip_single_tensor_and_no_gradients(impl):
    w = torch.zeros(2, dtype=DT, requires_grad=True)
    w.grad = torch.tensor([3.0, 4.0], dtype=DT)
    total = impl.clip_grad_norm_(w, 1.0)
    assert math.isclose(float(total), 5.0), f"clip_grad_norm_(w, 1.0) with w.grad = [3, 4] returned {total}, not 5."
    assert_close(w.grad, torch.tensor([3.0, 4.0], dtype=DT) / (5 + 1e-6), call="clip_grad_norm_(w, 1.0) -> w.grad",
                 because="a single tensor is accepted as well as an iterable, and [3, 4] is scaled by 1 / (5 + 1e-6).")
    w.grad = torch.tensor([3.0, 4.0], dtype=DT)
    total = impl.clip_grad_norm_([w], 0.0)
    assert float(total) == 5.0 and torch.equal(w.grad, torch.zeros(2, dtype=DT)), (
        f"clip_grad_norm_([w], max_norm=0.0) with w.grad = [3, 4] returned {total!r} and left w.grad = "
        f"{w.grad.tolist()}; expected 5 and zeros: max_norm = 0 is allowed (only a negative max_norm is an error)."
    )
    empty = impl.clip_grad_norm_([torch.zeros(2, requires_grad=True)], 1.0)
    assert isinstance(empty, torch.Tensor) and empty.dim() == 0 and float(empty) == 0.0, (
        f"clip_grad_norm_ of parameters without gradients returned {empty!r}; expected torch.tensor(0.0)."
    )


@pytest.mark.exercise("clip_grad_norm_")
def test_clip_rejects_bad_arguments(impl):
    w = torch.zeros(2, requires_grad=True)
    w.grad = torch.ones(2)
    with pytest.raises(ValueError, match="-1"):
        impl.clip_grad_norm_([w], -1.0)
    for norm_type in (0.0, -3.0):
        with pytest.raises(ValueError, match=re.escape(str(norm_type).rstrip("0").rstrip("."))):
            impl.clip_grad_norm_([w], 1.0, norm_type=norm_type)


@pytest.mark.exercise("clip_grad_norm_")
def test_clip_is_built_from_scratch(impl, monkeypatch):
    w = torch.zeros(3, requires_grad=True)
    w.grad = torch.ones(3)
    utils = torch.nn.utils
    _forbid(monkeypatch, "torch.nn.utils.clip_grad_norm_", [
        (utils, "clip_grad_norm_"), (utils, "clip_grad_norm"), (utils, "clip_grads_with_norm_"),
        (utils, "get_total_norm"), (utils.clip_grad, "clip_grad_norm_"), (utils.clip_grad, "clip_grads_with_norm_"),
        (utils.clip_grad, "get_total_norm")])
    impl.clip_grad_norm_([w], 0.5)


# --------------------------------------------------------------------------------------------------
# AdamW


def _problem(seed: int):
    """Initial parameters and a loss with gradients of different sizes per coordinate."""
    gen = generator(seed)
    init = [randn(gen, 3, 2), randn(gen, 4), randn(gen, 1, scale=3.0)]
    A, target, c = randn(gen, 5, 3), randn(gen, 5, 2), randn(gen, 4, scale=2.0)

    def loss_fn(params):
        w, b, s = params
        return ((A @ w - target) ** 2).mean() + (torch.sin(b) * c).sum() + 0.1 * (s ** 4).sum()

    return init, loss_fn


def _trajectory(make_optimizer, seed: int, steps: int, lr_at=None) -> torch.Tensor:
    """(steps, n) all parameters after every step; ``lr_at(k)`` sets every group's lr before step k."""
    init, loss_fn = _problem(seed)
    params = [p.clone().requires_grad_() for p in init]
    optimizer = make_optimizer(params)
    rows = []
    for k in range(steps):
        if lr_at is not None:
            for group in optimizer.param_groups:
                group["lr"] = lr_at(k, group)
        optimizer.zero_grad()
        loss_fn(params).backward()
        optimizer.step()
        rows.append(torch.cat([p.detach().reshape(-1) for p in params]))
    return torch.stack(rows)


@st.composite
def adamw_cases(draw):
    return {"lr": draw(st.sampled_from([1e-3, 0.01, 0.1])),
            "betas": draw(st.sampled_from([(0.9, 0.999), (0.8, 0.99), (0.5, 0.9)])),
            "eps": draw(st.sampled_from([1e-8, 1e-3, 0.1])),
            "weight_decay": draw(st.sampled_from([0.0, 0.01, 0.3]))}


@pytest.mark.exercise("AdamW")
@given(adamw_cases(), seeds)
@settings(max_examples=12)
@example(hyper={"lr": 0.1, "betas": (0.9, 0.999), "eps": 1e-3, "weight_decay": 0.3}, seed=0)
def test_adamw_trajectory_matches_torch(impl, hyper, seed):
    steps = 40
    got = _trajectory(lambda ps: impl.AdamW(ps, **hyper), seed, steps)
    expected = _trajectory(lambda ps: torch.optim.AdamW(ps, **hyper), seed, steps)
    cause = _cause_if_wrong("AdamW", lambda cls: _trajectory(lambda ps: cls(ps, **hyper), seed, steps), got, expected,
                            1e-8, 1e-10)
    assert_close(got, expected, rtol=1e-8, atol=1e-10, cause=cause,
                 call=f"AdamW(params, {', '.join(f'{k}={v}' for k, v in hyper.items())}) for {steps} steps on a small "
                      "problem (row k of the result = all parameters after step k + 1)",
                 because="every step must equal torch.optim.AdamW's: decoupled decay p *= 1 - lr * wd, moments m and "
                         "v, bias correction by 1 - beta^t, and p -= lr * m_hat / (sqrt(v_hat) + eps).")


@pytest.mark.exercise("AdamW")
def test_adamw_first_step_is_lr_times_sign(impl):
    w = nn.Parameter(torch.tensor([1.0, -2.0, 0.5], dtype=DT))
    optimizer = impl.AdamW([w], lr=0.1, weight_decay=0.0)
    w.grad = torch.tensor([2.0, -4.0, 0.001], dtype=DT)
    optimizer.step()
    expected = torch.tensor([1.0, -2.0, 0.5], dtype=DT) - 0.1 * w.grad / (w.grad.abs() + 1e-8)
    assert_close(w.detach(), expected, call="AdamW([w], lr=0.1, weight_decay=0) one step with w.grad = [2, -4, 0.001]",
                 because="after bias correction m_hat = g and v_hat = g^2 at t = 1, so the first step is "
                         "lr * g / (|g| + eps): about lr against the sign of each gradient, whatever its size. "
                         "Without the correction by 1 - beta^t the first steps have the wrong size.",
                 cause=_cause_if_wrong("AdamW", _one_step, w.detach(), expected, 1e-6, 1e-9))


def _one_step(cls):
    w = nn.Parameter(torch.tensor([1.0, -2.0, 0.5], dtype=DT))
    optimizer = cls([w], lr=0.1, weight_decay=0.0)
    w.grad = torch.tensor([2.0, -4.0, 0.001], dtype=DT)
    optimizer.step()
    return w.detach()


@pytest.mark.exercise("AdamW")
def test_adamw_decay_is_decoupled_from_the_gradient(impl):
    w = nn.Parameter(torch.tensor([1.0, -2.0, 3.0], dtype=DT))
    optimizer = impl.AdamW([w], lr=0.1, weight_decay=0.5)
    for _ in range(3):
        w.grad = torch.zeros(3, dtype=DT)  # no signal from the loss: only the decay acts
        optimizer.step()
    expected = torch.tensor([1.0, -2.0, 3.0], dtype=DT) * (1 - 0.1 * 0.5) ** 3
    assert_close(w.detach(), expected, call="AdamW([w], lr=0.1, weight_decay=0.5), 3 steps with a zero gradient",
                 because="AdamW's decay multiplies the weights by (1 - lr * weight_decay) and never enters the "
                         "gradient. Adding weight_decay * w to the gradient is L2 regularisation (Adam's "
                         "weight_decay): Adam then normalises it and moves every weight by about lr per step.")


@pytest.mark.exercise("AdamW")
def test_adamw_param_groups_schedules_and_missing_grads(impl):
    def make(optimizer_cls):
        def build(params):
            frozen = torch.zeros(2, dtype=DT, requires_grad=True)  # never receives a gradient
            build.frozen = frozen
            return optimizer_cls([{"params": [params[0]], "lr": 0.05, "weight_decay": 0.2},
                                  {"params": [params[1], params[2], frozen]}], lr=0.01, weight_decay=0.05)
        return build

    def lr_at(k, group):  # a scheduler writes group["lr"] between steps
        return group.setdefault("base", group["lr"]) * (1 - k / 20)

    mine, theirs = make(impl.AdamW), make(torch.optim.AdamW)
    got = _trajectory(mine, 4, 15, lr_at)
    expected = _trajectory(theirs, 4, 15, lr_at)
    assert_close(got, expected, rtol=1e-8, atol=1e-10,
                 call="AdamW with two param groups (lr 0.05 / wd 0.2, and the defaults lr 0.01 / wd 0.05), group lr "
                      "changed before every step, one parameter without a gradient",
                 because="read lr, betas, eps and weight_decay from each group at every step (schedulers change "
                         "group['lr']), and skip parameters whose .grad is None.")
    assert torch.equal(mine.frozen, torch.zeros(2, dtype=DT)), (
        "A parameter whose .grad is None changed: skip it entirely (no decay either), as torch.optim.AdamW does."
    )


@pytest.mark.exercise("AdamW")
def test_adamw_state_dict_round_trip(impl):
    hyper = {"lr": 0.05, "betas": (0.8, 0.99), "eps": 1e-6, "weight_decay": 0.1}
    init, loss_fn = _problem(9)

    def run(params, optimizer, steps):
        for _ in range(steps):
            optimizer.zero_grad()
            loss_fn(params).backward()
            optimizer.step()

    params = [p.clone().requires_grad_() for p in init]
    optimizer = impl.AdamW(params, **hyper)
    assert isinstance(optimizer, torch.optim.Optimizer), "AdamW must subclass torch.optim.Optimizer."
    run(params, optimizer, 4)
    saved = copy.deepcopy(optimizer.state_dict())
    assert len(saved["state"]) == len(params), (
        f"After 4 steps AdamW().state_dict()['state'] holds {len(saved['state'])} entries for {len(params)} "
        "parameters. Keep step, exp_avg and exp_avg_sq in self.state[p] (the base class saves and restores it)."
    )
    resumed = [p.detach().clone().requires_grad_() for p in params]
    fresh = impl.AdamW(resumed, **hyper)
    fresh.load_state_dict(saved)
    run(params, optimizer, 4)
    run(resumed, fresh, 4)
    assert_close(torch.cat([p.detach().reshape(-1) for p in resumed]),
                 torch.cat([p.detach().reshape(-1) for p in params]),
                 call="AdamW: 4 steps, state_dict(), a new AdamW on the same values + load_state_dict(), 4 more steps",
                 because="a resumed run must continue exactly like the uninterrupted one: the moments and the step "
                         "count (for the bias correction) must live in self.state[p].")


@pytest.mark.exercise("AdamW")
def test_adamw_closure(impl):
    init, loss_fn = _problem(2)
    results = []
    for cls in (impl.AdamW, torch.optim.AdamW):
        params = [p.clone().requires_grad_() for p in init]
        optimizer = cls(params, lr=0.01)

        def closure(params=params, optimizer=optimizer):
            optimizer.zero_grad()
            loss = loss_fn(params)
            loss.backward()
            return loss

        returned = optimizer.step(closure)
        expected_loss = loss_fn(init).item()
        assert returned is not None and math.isclose(float(torch.as_tensor(returned).detach()), expected_loss), (
            f"optimizer.step(closure) returned {returned!r}; expected the closure's loss {expected_loss!r}."
        )
        results.append(torch.cat([p.detach().reshape(-1) for p in params]))
    assert_close(results[0], results[1], call="AdamW(params, lr=0.01).step(closure)",
                 because="with a closure, call it (under torch.enable_grad()) to get the loss and the gradients, "
                         "then take the step.")


@pytest.mark.exercise("AdamW")
@pytest.mark.parametrize(("kwargs", "named"), [({"lr": -0.1}, "-0.1"), ({"betas": (1.0, 0.999)}, "1.0"),
                                               ({"betas": (0.9, 1.0)}, "1.0"), ({"betas": (0.9, -0.5)}, "-0.5"),
                                               ({"eps": -1e-8}, "-1e-08"), ({"weight_decay": -0.01}, "-0.01")],
                         ids=str)
def test_adamw_rejects_bad_hyperparameters(impl, kwargs, named):
    with pytest.raises(ValueError, match=re.escape(named)):
        impl.AdamW([torch.zeros(2, requires_grad=True)], **kwargs)


@pytest.mark.exercise("AdamW")
def test_adamw_defaults_boundaries_and_return_value(impl):
    w = nn.Parameter(torch.ones(2, dtype=DT))
    optimizer = impl.AdamW([w])
    defaults = {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 1e-2}
    got = {key: optimizer.param_groups[0].get(key) for key in defaults}
    assert got == defaults and all(optimizer.defaults.get(k) == v for k, v in defaults.items()), (
        f"AdamW([w]) has param_groups[0] {got} and defaults {optimizer.defaults}; expected {defaults} (the "
        "defaults of torch.optim.AdamW), passed to super().__init__(params, defaults)."
    )
    steps = 6
    mine = _trajectory(impl.AdamW, 3, steps)
    theirs = _trajectory(torch.optim.AdamW, 3, steps)
    assert_close(mine, theirs, rtol=1e-8, atol=1e-10, call=f"AdamW(params) with its defaults for {steps} steps",
                 because="with no arguments it must equal torch.optim.AdamW(params): lr=1e-3, betas=(0.9, 0.999), "
                         "eps=1e-8, weight_decay=1e-2.")
    w.grad = torch.ones(2, dtype=DT)
    returned = optimizer.step()
    assert returned is None, f"AdamW.step() without a closure returned {returned!r}; expected None."
    for kwargs in ({"lr": 0.0}, {"betas": (0.0, 0.0)}, {"eps": 0.0}, {"weight_decay": 0.0}):
        try:
            impl.AdamW([w], **kwargs)
        except ValueError as err:
            pytest.fail(f"AdamW([w], {', '.join(f'{k}={v}' for k, v in kwargs.items())}) raised ValueError({err}); "
                        "the limits themselves are allowed: lr >= 0, 0 <= beta < 1, eps >= 0, weight_decay >= 0.",
                        pytrace=False)


@pytest.mark.exercise("AdamW")
def test_adamw_is_built_from_scratch(impl, monkeypatch):
    w = nn.Parameter(torch.ones(3))
    optimizer = impl.AdamW([w], lr=0.1)
    assert isinstance(optimizer, torch.optim.Optimizer) and not isinstance(optimizer, torch.optim.Adam), (
        f"AdamW's bases are {[c.__name__ for c in type(optimizer).__mro__]}: subclass torch.optim.Optimizer "
        "directly, not torch.optim.Adam / AdamW."
    )
    adam_module = importlib.import_module("torch.optim.adam")
    adamw_module = importlib.import_module("torch.optim.adamw")
    _forbid(monkeypatch, "torch.optim.Adam / AdamW", [
        (torch.optim.Adam, "step"), (torch.optim.AdamW, "step"), (adam_module, "adam"),
        (adamw_module, "adamw"), (adamw_module, "adam")])
    w.grad = torch.ones(3)
    optimizer.step()


# --------------------------------------------------------------------------------------------------
# warmup_cosine_lr


def _schedule(step: int, warmup: int, total: int, max_lr: float, min_lr: float) -> float:
    """The checks' own closed form (never the learner's)."""
    if step < warmup:
        return max_lr * step / warmup
    if step >= total:
        return min_lr
    return min_lr + 0.5 * (max_lr - min_lr) * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))


@st.composite
def schedule_cases(draw):
    warmup = draw(st.integers(0, 10))
    total = draw(st.integers(warmup + 1, warmup + 30))
    max_lr = draw(st.sampled_from([1.0, 3e-4, 0.1, 6e-4]))
    min_lr = max_lr * draw(st.sampled_from([0.0, 0.1, 0.5, 1.0]))
    return warmup, total, max_lr, min_lr


def _lrs(fn, case, steps) -> torch.Tensor:
    warmup, total, max_lr, min_lr = case
    return torch.tensor([fn(s, warmup, total, max_lr, min_lr) for s in steps], dtype=DT)


def _schedule_call(case) -> str:
    warmup, total, max_lr, min_lr = case
    return f"warmup_cosine_lr(step, warmup_steps={warmup}, total_steps={total}, max_lr={max_lr}, min_lr={min_lr})"


@pytest.mark.exercise("warmup_cosine_lr")
@given(schedule_cases())
@example(case=(2, 6, 1.0, 0.0))
@example(case=(3, 8, 1.0, 0.2))
def test_schedule_matches_the_formula(impl, case):
    steps = range(case[1] + 3)
    got = _lrs(impl.warmup_cosine_lr, case, steps)
    expected = _lrs(_schedule, case, steps)
    cause = _cause_if_wrong("warmup_cosine_lr", lambda fn: _lrs(fn, case, steps), got, expected, 1e-9, 1e-15)
    assert_close(got, expected, rtol=1e-9, atol=1e-15, cause=cause,
                 call=_schedule_call(case) + f" for step = 0..{case[1] + 2} (index = step)",
                 because="step < warmup: max_lr * step / warmup_steps; then min_lr + (max_lr - min_lr) * "
                         "(1 + cos(pi * progress)) / 2 with progress = (step - warmup_steps) / (total_steps - "
                         "warmup_steps); from total_steps on: min_lr.")


@pytest.mark.exercise("warmup_cosine_lr")
@given(schedule_cases(), st.integers(0, 45))
def test_schedule_matches_reference(impl, reference, case, step):
    warmup, total, max_lr, min_lr = case
    compare_with_reference(impl, reference, "warmup_cosine_lr", step, warmup, total, max_lr, min_lr, rtol=1e-9,
                           atol=1e-15, because="the schedule is linear warmup, then half a cosine to min_lr, then "
                                               "min_lr.")


@pytest.mark.exercise("warmup_cosine_lr")
@given(schedule_cases())
def test_schedule_warmup_is_linear_from_zero_to_max(impl, case):
    warmup, _, max_lr, _ = case
    steps = range(warmup + 1)
    got = _lrs(impl.warmup_cosine_lr, case, steps)
    expected = torch.tensor([max_lr * s / warmup if warmup else max_lr for s in steps], dtype=DT)
    assert_close(got, expected, rtol=1e-9, atol=1e-15, call=_schedule_call(case) + f" for step = 0..{warmup}",
                 because=f"the warmup is the straight line from 0 at step 0 to max_lr at step warmup_steps = {warmup} "
                         "(max_lr / warmup_steps per step). (step + 1) / warmup_steps is one step ahead: it reaches "
                         "max_lr at warmup_steps - 1 and then stays flat for a step.",
                 cause=_cause_if_wrong("warmup_cosine_lr", lambda fn: _lrs(fn, case, steps), got, expected, 1e-9,
                                       1e-15))


@pytest.mark.exercise("warmup_cosine_lr")
@given(schedule_cases())
def test_schedule_decays_monotonically_to_min_lr(impl, case):
    warmup, total, max_lr, min_lr = case
    call = _schedule_call(case)
    lrs = [impl.warmup_cosine_lr(s, warmup, total, max_lr, min_lr) for s in range(warmup, total + 4)]
    for k in range(1, len(lrs)):
        assert lrs[k] <= lrs[k - 1] + 1e-15, (
            f"Called {call}. The rate goes UP after the warmup: step {warmup + k - 1} -> {lrs[k - 1]!r}, step "
            f"{warmup + k} -> {lrs[k]!r}. After the warmup the cosine falls monotonically (progress stays in [0, 1])."
        )
    for s, lr in enumerate(lrs, start=warmup):
        assert min_lr - 1e-15 <= lr <= max_lr + 1e-15, (
            f"Called {call}. Step {s} gives {lr!r}, outside [min_lr, max_lr] = [{min_lr}, {max_lr}]."
        )
    at_end = lrs[total - warmup:]
    assert all(math.isclose(lr, min_lr, rel_tol=1e-12, abs_tol=1e-15) for lr in at_end), (
        f"Called {call}. Steps {total}..{total + 3} give {at_end}; expected min_lr = {min_lr}: the cosine ends at "
        f"min_lr at total_steps and the rate stays there (a decay that ignores min_lr ends at 0)."
        + _likely("warmup_cosine_lr", lambda fn: _lrs(fn, case, range(total, total + 4)),
                  torch.tensor(at_end, dtype=DT), rtol=1e-12, atol=1e-15)
    )


@pytest.mark.exercise("warmup_cosine_lr")
@given(schedule_cases())
@example(case=(4, 12, 1.0, 0.0))
def test_schedule_is_continuous_at_the_end_of_warmup(impl, case):
    warmup, total, max_lr, min_lr = case
    call = _schedule_call(case)
    peak = impl.warmup_cosine_lr(warmup, warmup, total, max_lr, min_lr)
    assert math.isclose(peak, max_lr, rel_tol=1e-12), (
        f"Called {call} at step = warmup_steps = {warmup}. Returned {peak!r}; expected exactly max_lr = {max_lr}: "
        "both pieces meet there (the warmup line reaches max_lr and the cosine starts at progress 0). Counting the "
        "cosine's progress from warmup_steps - 1 makes the rate jump down at the end of the warmup."
    )
    next_lr = impl.warmup_cosine_lr(warmup + 1, warmup, total, max_lr, min_lr)
    max_drop = (max_lr - min_lr) * math.pi / (2 * (total - warmup))  # the cosine's steepest slope, times one step
    assert peak - next_lr <= max_drop * (1 + 1e-9), (
        f"Called {call}. From step {warmup} to {warmup + 1} the rate drops from {peak!r} to {next_lr!r}, more than "
        f"the cosine's steepest one-step drop {max_drop:.4g}: the schedule must be continuous."
    )
    if warmup:
        before = impl.warmup_cosine_lr(warmup - 1, warmup, total, max_lr, min_lr)
        assert math.isclose(peak - before, max_lr / warmup, rel_tol=1e-9), (
            f"Called {call}. Step {warmup - 1} gives {before!r} and step {warmup} gives {peak!r}; the last warmup step "
            f"must climb by max_lr / warmup_steps = {max_lr / warmup!r} like every other (no plateau, no jump)."
        )


@pytest.mark.exercise("warmup_cosine_lr")
def test_schedule_returns_floats_known_values_and_default_min_lr(impl):
    got = [impl.warmup_cosine_lr(s, 2, 6, 1) for s in range(8)]  # an int max_lr and the default min_lr
    assert all(isinstance(v, float) for v in got), (
        f"warmup_cosine_lr(step, 2, 6, 1) returned {[type(v).__name__ for v in got]} for step 0..7; expected Python "
        "floats in every region, even for int arguments (float(min_lr) after the end)."
    )
    expected = [0.0, 0.5, 1.0, 0.5 + 0.5 * math.cos(math.pi / 4), 0.5, 0.5 - 0.5 * math.cos(math.pi / 4), 0.0, 0.0]
    assert_close(torch.tensor(got, dtype=DT), torch.tensor(expected, dtype=DT), rtol=1e-12, atol=1e-15,
                 call="warmup_cosine_lr(step, 2, 6, 1) for step 0..7 (min_lr left at its default)",
                 because="min_lr defaults to 0: warmup 0, 0.5, 1.0; then half a cosine from 1 to 0 over 4 steps; "
                         "then 0.")
    after = impl.warmup_cosine_lr(9, 2, 6, 1, 0)
    assert isinstance(after, float), f"warmup_cosine_lr(9, 2, 6, 1, 0) returned {after!r}; expected the float 0.0."


@pytest.mark.exercise("warmup_cosine_lr")
@pytest.mark.parametrize(("args", "named"), [((-1, 2, 6, 1.0, 0.0), "-1"), ((0, 6, 6, 1.0, 0.0), "6"),
                                             ((0, 7, 6, 1.0, 0.0), "7"), ((0, -1, 6, 1.0, 0.0), "-1"),
                                             ((0, 2, 6, 1.0, 2.0), "2.0"), ((0, 2, 6, 1.0, -0.5), "-0.5")], ids=str)
def test_schedule_rejects_bad_arguments(impl, args, named):
    with pytest.raises(ValueError, match=re.escape(named)):
        impl.warmup_cosine_lr(*args)


# --------------------------------------------------------------------------------------------------
# train_model


class _TinyLM(nn.Module):
    """Embedding + Linear with NON-contiguous (B, T, V) logits (the learning path's ``.view`` fails on them).

    It records the mode it was called in, to check that the loop trains in ``train()`` mode.
    """

    def __init__(self, vocab: int, dim: int, seed: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab, dim, dtype=DT)
        self.linear = nn.Linear(dim, vocab, dtype=DT)
        refill_(self, seed, scale=0.5)
        self.modes: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.modes.append(self.training)
        h = self.embedding(x).transpose(0, 1)  # (T, B, d)
        return self.linear(h).transpose(0, 1)  # (B, T, V), not contiguous


def _lm_batches(seed: int, vocab: int, sizes: tuple[int, ...], t: int = 4) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = generator(seed)
    return [(torch.randint(0, vocab, (b, t), generator=gen), torch.randint(0, vocab, (b, t), generator=gen))
            for b in sizes]


def _batch_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    logits = model(x)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


@contextlib.contextmanager
def _watch_steps(model: nn.Module, batches, max_norm: float):
    """Record, at every optimizer.step(): the lr of each group, and whether the gradients the optimizer is
    about to use are the clipped gradients of the current batch's loss (the checks' own computation)."""
    record = {"lrs": [], "weight_decay": [], "losses": [], "problems": [], "steps": 0}

    def hook(optimizer, args, kwargs):
        k = record["steps"]
        record["steps"] += 1
        record["lrs"].append([g["lr"] for g in optimizer.param_groups])
        record["weight_decay"].append([g.get("weight_decay") for g in optimizer.param_groups])
        x, y = batches[k % len(batches)]
        twin = copy.deepcopy(model)
        twin.zero_grad(set_to_none=True)
        with torch.enable_grad():
            loss = _batch_loss(twin, x, y)
            loss.backward()
        record["losses"].append(loss.item())  # the loss of this batch before its step
        torch.nn.utils.clip_grad_norm_(twin.parameters(), max_norm)
        for (name, p), q in zip(model.named_parameters(), twin.parameters(), strict=True):
            problem = "no gradient" if p.grad is None else error_report(p.grad, q.grad, 1e-7, 1e-10)
            if problem:
                record["problems"].append(f"step {k}, {name}.grad: {problem}")

    handle = register_optimizer_step_pre_hook(hook)
    try:
        yield record
    finally:
        handle.remove()


@pytest.mark.exercise("train_model")
@given(seeds, st.sampled_from([(3, 2, 1), (2,), (1, 4)]))
@settings(max_examples=10)
def test_train_model_returns_the_mean_batch_loss_per_epoch(impl, seed, sizes):
    model = _TinyLM(7, 5, seed)
    batches = _lm_batches(seed, 7, sizes)
    with torch.no_grad():
        expected = sum(_batch_loss(model, x, y).item() for x, y in batches) / len(batches)
    before = copy.deepcopy(model.state_dict())
    losses = impl.train_model(model, batches, epochs=3, lr=0.0, weight_decay=0.1, max_norm=1.0)
    call = f"train_model(model, {len(batches)} batches of sizes {sizes}, epochs=3, lr=0.0)"
    assert isinstance(losses, list) and len(losses) == 3 and all(isinstance(v, float) for v in losses), (
        f"Called {call}. Returned {losses!r}; expected a list of 3 Python floats, one per epoch (use loss.item())."
    )
    assert_close(torch.tensor(losses, dtype=DT), torch.full((3,), expected, dtype=DT), rtol=1e-7, atol=1e-10,
                 call=call,
                 because="with lr = 0 the model never changes, so every epoch's value is the mean of the batch losses "
                         "(cross-entropy over all tokens of a batch, then averaged over the batches, as the learning "
                         "path does): not their sum, not the last batch's loss.")
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), f"Called {call}: {name} changed although lr = 0."


@pytest.mark.exercise("train_model")
@given(seeds, st.sampled_from([0.05, 0.5, 100.0]))
@settings(max_examples=8)
@example(seed=0, max_norm=0.05)
def test_train_model_steps_on_fresh_clipped_gradients(impl, seed, max_norm):
    model = _TinyLM(6, 4, seed)
    model.eval()  # train_model must switch it to training mode itself
    batches = _lm_batches(seed, 6, (2, 3))
    with _watch_steps(model, batches, max_norm) as record:
        losses = impl.train_model(model, batches, epochs=2, lr=0.02, weight_decay=0.01, max_norm=max_norm)
    call = f"train_model(model, 2 batches, epochs=2, lr=0.02, max_norm={max_norm})"
    assert record["steps"] == 4, (
        f"Called {call}. optimizer.step() ran {record['steps']} times; expected 4 (one per batch per epoch), on "
        "an optimizer subclassing torch.optim.Optimizer."
    )
    seen = record["losses"]
    assert_close(torch.tensor(losses, dtype=DT), torch.tensor([sum(seen[:2]) / 2, sum(seen[2:]) / 2], dtype=DT),
                 rtol=1e-7, atol=1e-10, call=call + " -> the returned per-epoch losses",
                 because="each epoch's value is the mean of its batch losses, each measured on the batch's forward "
                         f"pass before its optimizer step (the batch losses were {[round(v, 6) for v in seen]}).")
    if record["problems"]:
        pytest.fail(
            f"Called {call}. At optimizer.step() the gradients were not the clipped gradients of the current batch's "
            f"loss:\n  " + "\n  ".join(record["problems"][:4]) + "\nBecause each step must use: zero_grad() (else "
            "gradients pile up across batches), loss.backward(), then clip_grad_norm_(model.parameters(), max_norm) "
            "BEFORE optimizer.step() (clipping after the step clips gradients that were already used).",
            pytrace=False,
        )
    assert model.modes and all(model.modes), (
        f"Called {call} on a model in eval mode: forward ran in eval mode. Call model.train() at the start of "
        "every epoch (dropout and batch norm behave differently in training)."
    )


@pytest.mark.exercise("train_model")
@given(st.integers(0, 3), st.sampled_from([0.0, 1e-3]), st.integers(1, 3))
@settings(max_examples=10)
@example(warmup=2, min_lr=0.0, epochs=3)
def test_train_model_follows_the_warmup_cosine_schedule(impl, warmup, min_lr, epochs):
    model = _TinyLM(6, 4, 1)
    batches = _lm_batches(1, 6, (2, 2))
    total = epochs * len(batches)
    warmup_steps = min(warmup, total - 1)
    with _watch_steps(model, batches, 1.0) as record:
        impl.train_model(model, batches, epochs=epochs, lr=0.01, weight_decay=0.03, max_norm=1.0,
                         warmup_steps=warmup_steps, min_lr=min_lr)
    got = torch.tensor([lrs[0] for lrs in record["lrs"]], dtype=DT)
    expected = torch.tensor([_schedule(s, warmup_steps, total, 0.01, min_lr) for s in range(total)], dtype=DT)
    assert_close(got, expected, rtol=1e-9, atol=1e-15,
                 call=f"train_model(model, {len(batches)} batches, epochs={epochs}, lr=0.01, warmup_steps="
                      f"{warmup_steps}, min_lr={min_lr}) -> group['lr'] at each optimizer.step()",
                 because=f"step s (counted over all epochs, 0..{total - 1}) must use warmup_cosine_lr(s, warmup_steps, "
                         f"total_steps={total}, lr, min_lr), set in every param group BEFORE optimizer.step().")
    assert all(wd == [0.03] * len(wd) for wd in record["weight_decay"]), (
        f"The optimizer's groups have weight_decay {record['weight_decay'][:1]}; expected the weight_decay=0.03 "
        "passed to train_model."
    )


@pytest.mark.exercise("train_model")
def test_train_model_defaults(impl):
    model = refill_(_TinyLM(6, 4, 2), 2, scale=3.0)  # large weights: gradient norms above the default max_norm
    batches = _lm_batches(2, 6, (3,))
    with _watch_steps(model, batches, 1.0) as record:
        losses = impl.train_model(model, batches)
    call = "train_model(model, 1 batch) with every default"
    assert len(losses) == 100 and record["steps"] == 100, (
        f"Called {call}. It returned {len(losses)} losses after {record['steps']} optimizer steps; the default is "
        "epochs=100 (one step per batch)."
    )
    got = torch.tensor([lrs[0] for lrs in record["lrs"]], dtype=DT)
    expected = torch.tensor([_schedule(s, 0, 100, 1e-3, 0.0) for s in range(100)], dtype=DT)
    assert_close(got, expected, rtol=1e-9, atol=1e-15, call=call + " -> group['lr'] at each optimizer.step()",
                 because="the defaults lr=1e-3, warmup_steps=0 and min_lr=0.0 give warmup_cosine_lr(s, 0, 100, 1e-3, "
                         "0.0) at step s.")
    assert all(wd == [0.01] * len(wd) for wd in record["weight_decay"]), (
        f"Called {call}. The optimizer's weight_decay is {record['weight_decay'][:1]}; the default is 0.01."
    )
    if record["problems"]:
        pytest.fail(f"Called {call}. At optimizer.step() the gradients were not those clipped to the default "
                    "max_norm=1.0:\n  " + "\n  ".join(record["problems"][:4]), pytrace=False)


@pytest.mark.exercise("train_model")
def test_train_model_loss_decreases_with_a_real_dataloader(impl):
    vocab = 6
    seq = torch.arange(60) % vocab  # 0 1 2 3 4 5 0 1 ...: the next token is always predictable
    x = torch.stack([seq[i:i + 5] for i in range(0, 50, 5)])
    y = torch.stack([seq[i + 1:i + 6] for i in range(0, 50, 5)])
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=4, shuffle=False)
    model = _TinyLM(vocab, 8, 3)
    losses = impl.train_model(model, loader, epochs=25, lr=0.05, weight_decay=0.01, max_norm=1.0, warmup_steps=3)
    assert len(losses) == 25 and all(math.isfinite(v) for v in losses), (
        f"train_model(..., epochs=25) returned {losses!r}; expected 25 finite floats."
    )
    assert losses[-1] < 0.1 * losses[0], (
        f"train_model on a perfectly predictable sequence (lr=0.05, 25 epochs of 3 batches): the loss went from "
        f"{losses[0]:.4f} to {losses[-1]:.4f}; expected it to fall below 10% of the first epoch's."
    )


@pytest.mark.exercise("train_model")
def test_train_model_rejects_nothing_to_train(impl):
    model = _TinyLM(5, 3, 0)
    with pytest.raises(ValueError):
        impl.train_model(model, [], epochs=2)
    for epochs in (0, -2):
        with pytest.raises(ValueError, match=re.escape(str(epochs))):
            impl.train_model(model, _lm_batches(0, 5, (2,)), epochs=epochs)
