"""Checks for m09_interpretability: integrated gradients, attention rollout and the logit lens on MiniGPT.

The oracles are closed forms and the checks' own code. Integrated gradients: exact attributions for a linear
``f``, for ``sum(z**2)`` (``x**2 - b**2``) and, for the midpoint rule, for ``sum(z**3)`` (``x**3 - b**3 -
(x - b)**3 / (4 steps**2)``, which pins both the rule and the number of points); completeness against
``f(x) - f(baseline)`` with the stated error bound ``max|g'''| / (24 steps**2)``, and its shrinking (error at
2 * steps at most a third of the error at steps); the reference for a non-separable ``f``. Rollout: the
checks' own product of the layers, written top-down, and hand-computed cases. Logit lens: the reference
MiniGPT of w15_mini_gpt, built tiny in float64 with weights large enough that LayerNorm, GELU and attention
leave their linear regime and LayerNorm gains/biases away from 1/0, read with the checks' own loop over its
parts; its last entry against the model's own forward. Every random value comes from a drawn seed.

Checklist notes (CONTRACTS.md items that do not apply, and why):
- Randomness (8): no exercise draws random numbers. ``logit_lens`` must read the model in eval mode: a model
  with dropout 0.5 in training mode must give the deterministic eval reading, twice.
- Structure of modules (7): no exercise builds a module. ``logit_lens`` must leave the model it is given as it
  was: parameters, ``requires_grad``, every module's own train/eval mode, and its hooks (checked).
- State over time (6): the functions keep no state. ``logit_lens`` is called twice on one model in training
  mode, and the model's own forward and the caller's hooks are used after it.
- Devices (3): without CUDA, integrated gradients and rollout run on the ``meta`` device (the points and the
  identity must be made where the input lives). ``logit_lens`` must validate token ids, which needs their
  values, which meta tensors lack; it creates no tensor of its own.
- dtypes (3): float64 and float32 for all three; bfloat16 for rollout (it has no gradient to lose precision
  in). Integer ``x`` for integrated gradients and float/bool ``idx`` for the lens are documented errors. The
  default baseline must land on x's device too (meta). The lens must not return an inference tensor.
- Sizes (2): integrated gradients with B = 0, rows of shape (), (n,) and (n, m), steps = 1; rollout with no
  batch axis, T = 0 and T = 1, one layer; the lens with B = 1, T = 1 and T = max_len (an empty batch is not
  promised by MiniGPT, so not by the lens).
- Bools for ints (10): ``steps=True`` is rejected as documented; NumPy integers are accepted, and so are int32
  token ids for the lens. Every error case also fails a learner who raises another exception or none; a
  ValueError of the lens must leave the model's modes and hooks as they were.
"""

from __future__ import annotations

import copy
import importlib
import re

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from torch import nn

from checks.numerics import (
    assert_close,
    cause_line,
    describe,
    error_report,
    format_call,
    likely_cause,
    value_error_message,
)
from checks.torch_strategies import generator, randn, seeded, seeds

pytestmark = pytest.mark.kata("m09_interpretability")

KATA = "m09_interpretability"
DT = torch.float64
TIGHT = {"rtol": 1e-9, "atol": 1e-10}


def _snapshot(t: torch.Tensor) -> dict:
    return {"values": t.detach().clone(), "shape": tuple(t.shape), "dtype": t.dtype,
            "requires_grad": t.requires_grad, "grad": None if t.grad is None else t.grad.clone()}


def _assert_untouched(call: str, name: str, before: dict, after: torch.Tensor, cause=None) -> None:
    """``after`` still has the values, shape, dtype, requires_grad and .grad it had before the call."""
    problems = []
    if tuple(after.shape) != before["shape"] or after.dtype != before["dtype"]:
        problems.append(f"its shape/dtype went from {before['shape']}/{before['dtype']} to "
                        f"{tuple(after.shape)}/{after.dtype}")
    elif not torch.equal(after.detach(), before["values"]):
        problems.append(f"its values changed ({error_report(after.detach(), before['values'], 0, 0)})")
    if after.requires_grad != before["requires_grad"]:
        problems.append(f"its requires_grad went from {before['requires_grad']} to {after.requires_grad}")
    grad = after.grad
    if (grad is None) != (before["grad"] is None) or grad is not None and not torch.equal(grad, before["grad"]):
        problems.append(f"its .grad went from {describe(before['grad'])} to {describe(grad)}")
    assert not problems, (
        f"Called {call}. It changed its argument `{name}`: {'; '.join(problems)}.\nBecause the caller still needs "
        "its inputs as they were: work on detached copies (x.detach()), never x.requires_grad_() or x += ... on "
        f"the caller's tensor, and get gradients with torch.autograd.grad, which fills no .grad.{cause_line(cause)}"
    )


def _names(message: str, *spellings) -> bool:
    """Does ``message`` contain one of ``spellings`` (strings, or compiled patterns)?"""
    return any(s.search(message) if isinstance(s, re.Pattern) else s in message for s in spellings)


# --------------------------------------------------------------------------------------------------
# integrated_gradients


class RowFunction:
    """An ``f`` for the checks: a scalar function of each row of a (N, *S) batch, with a readable repr.

    It asserts that it is called on batches of rows of the documented shape: a learner who calls it on one
    unbatched point, or on a batch of the wrong layout, learns it from this message.
    """

    def __init__(self, text: str, fn, row_shape: tuple[int, ...]) -> None:
        self.text, self.fn, self.row_shape = text, fn, tuple(row_shape)
        self.calls: list[tuple[int, ...]] = []

    def __repr__(self) -> str:
        return f"<f(z) = {self.text} per row, rows of shape {self.row_shape}>"

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        assert isinstance(z, torch.Tensor) and tuple(z.shape[1:]) == self.row_shape and z.dim() == 1 + len(
            self.row_shape), (
            f"integrated_gradients called f with {describe(z)}; f takes a batch of rows (N, *S) with S = "
            f"{self.row_shape} (the shape of one row of x) and returns shape (N,). Never call it on a single "
            "unbatched point: stack the path points into one batch."
        )
        self.calls.append(tuple(z.shape))
        return self.fn(z)


def _flat(z: torch.Tensor) -> torch.Tensor:
    """(N, *S) -> (N, prod(S)), also for N = 0 and S = ()."""
    return z.flatten(1) if z.dim() > 1 else z.unsqueeze(1)


def _power(p: int, row_shape) -> RowFunction:
    return RowFunction(f"sum(z**{p})", lambda z: _flat(z**p).sum(dim=1), row_shape)


def _linear(w: torch.Tensor, c: float, row_shape) -> RowFunction:
    return RowFunction(f"z . w + {c:g} with w = {describe(w)}",
                       lambda z: _flat(z) @ w.to(z.dtype) + c, row_shape)


def _waves(W: torch.Tensor, c: torch.Tensor, row_shape) -> RowFunction:
    """sum_j sin(w_j . z + c_j): smooth, not separable, with a third derivative the checks can bound."""
    return RowFunction("sum_j sin(w_j . z + c_j)",
                       lambda z: torch.sin(_flat(z) @ W.T.to(z.dtype) + c.to(z.dtype)).sum(dim=1),
                       row_shape)


def _ig_call(f, x, baseline="default", steps="default") -> tuple[str, dict]:
    kwargs = {} if isinstance(baseline, str) else {"baseline": baseline}
    if not isinstance(steps, str):
        kwargs["steps"] = steps
    return format_call("integrated_gradients", (f, x), kwargs), kwargs


def _call_ig(impl, f, x, baseline="default", steps="default"):
    """Call the learner's integrated_gradients (omitting defaulted arguments) and check the result's form."""
    call, kwargs = _ig_call(f, x, baseline, steps)
    result = impl.integrated_gradients(f, x, **kwargs)
    assert isinstance(result, torch.Tensor) and tuple(result.shape) == tuple(x.shape) and result.dtype == x.dtype, (
        f"Called {call}. Returned {describe(result)}; expected a tensor of x's shape {tuple(x.shape)} and dtype "
        f"{x.dtype}: one attribution per feature of every row."
    )
    assert not result.requires_grad and result.grad_fn is None, (
        f"Called {call}. The result requires grad (grad_fn {result.grad_fn}); expected a plain tensor.\nBecause an "
        "explanation must not keep the graph of f alive: detach x and baseline first, and use torch.autograd.grad "
        "without create_graph."
    )
    return call, result


def _ig_cause(f, x, baseline, steps, actual, **tol):
    def run(candidate):
        _, kwargs = _ig_call(f, x, baseline, steps)
        kwargs = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
        return candidate(f, x.clone(), **kwargs)

    return lambda: likely_cause(KATA, "integrated_gradients", run, actual, **(tol or TIGHT))


def _strided_copy(t: torch.Tensor) -> torch.Tensor:
    """The same values as a non-contiguous view (the last axis read with stride 2)."""
    if t.dim() == 0 or t.shape[-1] == 0:
        return t.clone()
    wide = torch.zeros(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype)
    wide[..., ::2] = t
    return wide[..., ::2]


@st.composite
def ig_linear_cases(draw):
    """(x, baseline or "default", steps or "default", w, c, row shape) for a linear f."""
    gen = generator(draw(seeds))
    B = draw(st.integers(0, 3))
    row = tuple(draw(st.lists(st.integers(1, 3), max_size=2)))
    x = randn(gen, B, *row, scale=2.0)
    if B > 1 and draw(st.booleans()):
        x[0] *= 1e4  # one row of huge values: the others must not care
    if draw(st.booleans()):
        x = _strided_copy(x)
    kind = draw(st.sampled_from(["default", "full", "shared", "one row", "zeros"]))
    shared = randn(gen, *row) if row else torch.randn((), generator=gen, dtype=DT)  # one row's shape (*S)
    baseline = {"default": "default", "full": randn(gen, B, *row), "shared": shared, "one row": shared[None],
                "zeros": torch.zeros(B, *row, dtype=DT)}[kind]
    steps = draw(st.sampled_from(["default", 1, 2, 5, np.int64(3)]))
    n = int(np.prod(row)) if row else 1
    return x, baseline, steps, randn(gen, n), draw(st.sampled_from([0.0, 1.5])), row


@pytest.mark.exercise("integrated_gradients")
@given(ig_linear_cases())
@example((torch.zeros(0, 2, dtype=DT), "default", 3, torch.tensor([1.0, -2.0], dtype=DT), 0.0, (2,)))  # B = 0
def test_ig_is_exact_for_a_linear_f(impl, case):
    x, baseline, steps, w, c, row = case
    f = _linear(w, c, row)
    before = {"x": _snapshot(x)} | ({} if isinstance(baseline, str) else {"baseline": _snapshot(baseline)})
    call, result = _call_ig(impl, f, x, baseline, steps)
    for name, snap in before.items():
        _assert_untouched(call, name, snap, x if name == "x" else baseline)
    start = torch.zeros_like(x) if isinstance(baseline, str) else baseline
    expected = (x - start) * w.view(row)
    tol = {"rtol": 1e-9, "atol": 1e-9}
    assert_close(result, expected, call=call, **tol,
                 because="for a linear f the gradient is the same everywhere on the path, so every rule is exact: "
                         "attribution = (x - baseline) * w, per row (a shared (*S) baseline applies to every row; "
                         "the default baseline is zeros).",
                 cause=_ig_cause(f, x, baseline, steps, result, **tol)()
                 if error_report(result, expected, **tol) else None)


@pytest.mark.exercise("integrated_gradients")
@pytest.mark.parametrize("steps", [1, 2, 3, 7])
def test_ig_closed_forms_of_powers(impl, steps):
    gen = generator(steps)
    x, baseline = randn(gen, 3, 2, 2, scale=1.5), randn(gen, 3, 2, 2)
    d = x - baseline
    cases = [(2, x**2 - baseline**2, "for f = sum(z**2) the gradient grows linearly along the path, and the "
                                     "midpoints average it exactly: attribution = x**2 - baseline**2."),
             (3, x**3 - baseline**3 - d**3 / (4 * steps**2),
              f"for f = sum(z**3) the midpoint rule with steps={steps} points a_k = (k + 0.5) / steps gives exactly "
              "x**3 - baseline**3 - (x - baseline)**3 / (4 * steps**2); points at k / steps, (k + 1) / steps or "
              "linspace(0, 1, steps), the trapezoid rule, or another number of points give other values.")]
    for p, expected, because in cases:
        f = _power(p, (2, 2))
        call, result = _call_ig(impl, f, x, baseline, steps)
        assert_close(result, expected, call=call, because=because, **TIGHT,
                     cause=_ig_cause(f, x, baseline, steps, result)() if error_report(result, expected, **TIGHT)
                     else None)


@pytest.mark.exercise("integrated_gradients")
def test_ig_defaults_are_zero_baseline_and_50_steps(impl):
    gen = generator(50)
    x = randn(gen, 2, 3, scale=1.5)
    f = _power(3, (3,))
    call, result = _call_ig(impl, f, x)
    expected = x**3 - x**3 / (4 * 50**2)
    assert_close(result, expected, call=call, **TIGHT,
                 because="without a baseline the path starts at zeros, and steps defaults to 50: for f = sum(z**3) "
                         "that is exactly x**3 - x**3 / (4 * 50**2).",
                 cause=_ig_cause(f, x, "default", "default", result)() if error_report(result, expected, **TIGHT)
                 else None)
    shared = randn(gen, 3)
    call, result = _call_ig(impl, f, x, shared)
    expected = x**3 - shared**3 - (x - shared) ** 3 / (4 * 50**2)
    assert_close(result, expected, call=call, **TIGHT,
                 because="a baseline of one row's shape (*S) is shared by every row of x, and steps still defaults "
                         "to 50.")
    call = format_call("integrated_gradients", (f, x), {"baseline": shared[None]})
    try:
        _, result = _call_ig(impl, f, x, shared[None])
    except ValueError as error:
        raise AssertionError(
            f"Called {call}. It raised ValueError({str(error)!r}); expected attributions.\nBecause a baseline of shape "
            f"(1, *S) = {tuple(shared[None].shape)} broadcasts to x's shape {tuple(x.shape)}, and the docstring allows "
            "any baseline that broadcasts: check with torch.broadcast_shapes(baseline.shape, x.shape) == x.shape, not "
            "by comparing with x.shape or x.shape[1:] only."
        ) from None
    assert_close(result, expected, call=call, **TIGHT,
                 because="a (1, *S) baseline broadcasts to every row of x, like a (*S) one.")


@pytest.mark.exercise("integrated_gradients")
@pytest.mark.parametrize("steps", [np.int64(3), np.int32(2)], ids=["np.int64(3)", "np.int32(2)"])
def test_ig_accepts_numpy_integer_steps(impl, steps):
    gen = generator(int(steps))
    x, baseline = randn(gen, 2, 3), randn(gen, 2, 3)
    f = _power(3, (3,))
    call, _ = _ig_call(f, x, baseline, steps)
    try:
        _, result = _call_ig(impl, f, x, baseline, steps)
    except ValueError as error:
        raise AssertionError(
            f"Called {call}. It raised ValueError({str(error)!r}); expected attributions.\nBecause a NumPy integer is "
            "an integer too (the docstring accepts Python and NumPy integers): test isinstance(steps, "
            "numbers.Integral) and reject bool separately, not isinstance(steps, int)."
        ) from None
    n = int(steps)
    assert_close(result, x**3 - baseline**3 - (x - baseline) ** 3 / (4 * n**2), call=call, **TIGHT,
                 because=f"steps={steps!r} means {n} midpoints, exactly like steps={n}.")


# (seed, B, number of waves): deterministic smooth cases whose midpoint error is well inside its asymptotic regime
WAVE_CASES = [(3, 2, 4), (11, 3, 2), (29, 1, 6)]


@pytest.mark.exercise("integrated_gradients")
@pytest.mark.parametrize(("seed", "B", "waves"), WAVE_CASES)
def test_ig_completeness_error_shrinks_with_steps(impl, seed, B, waves):
    gen = generator(seed)
    x, baseline = randn(gen, B, 2, 3), randn(gen, B, 2, 3, scale=0.5)
    W, c = randn(gen, waves, 6, scale=0.6), randn(gen, waves)
    f = _waves(W, c, (2, 3))
    change = f(x) - f(baseline)
    speed = ((x - baseline).reshape(B, -1) @ W.T).abs()  # |w_j . (x - b)|: the rate of each wave along the path
    errors = {}
    for steps in (8, 16, 32, 64):
        call, result = _call_ig(impl, f, x, baseline, steps)
        errors[steps] = error = (result.reshape(B, -1).sum(dim=1) - change).abs()
        bound = (speed**3).sum(dim=1) / (24 * steps**2)  # max|g'''| <= sum_j |w_j . d|^3
        assert (error <= bound * (1 + 1e-9) + 1e-12).all(), (
            f"Called {call}. Its attributions sum to {describe(result.reshape(B, -1).sum(dim=1))}, but "
            f"f(x) - f(baseline) is {describe(change)}: off by {describe(error)}, above the bound "
            f"{describe(bound)} that the midpoint rule guarantees.\nBecause completeness: with g(a) = f(baseline "
            "+ a (x - baseline)) the midpoint rule's error is at most max|g'''| / (24 steps**2)."
            f"{cause_line(_ig_cause(f, x, baseline, steps, result))}"
        )
    for steps in (8, 16, 32):
        ratio = errors[2 * steps] / errors[steps]
        assert (ratio <= 1 / 3).all(), (
            f"Called integrated_gradients on f(z) = sum_j sin(w_j . z + c_j) with steps={steps} and {2 * steps}. "
            f"The completeness errors |sum(attributions) - (f(x) - f(baseline))| are {describe(errors[steps])} and "
            f"{describe(errors[2 * steps])}: doubling steps divided them only by {describe(1 / ratio)}.\nBecause "
            "the midpoint rule's error falls like 1 / steps**2 (about 4 times smaller per doubling); a left or "
            "right Riemann sum only halves it."
            f"{cause_line(_ig_cause(f, x, baseline, 2 * steps, _call_ig(impl, f, x, baseline, 2 * steps)[1]))}"
        )


@pytest.mark.exercise("integrated_gradients")
def test_ig_rows_are_independent_and_f_gets_batches(impl, reference):
    gen = generator(8)
    x, baseline = randn(gen, 3, 2, 2), randn(gen, 3, 2, 2, scale=0.3)
    x[1] *= 3.0  # rows of different sizes: a mix-up of rows shows
    f = _waves(randn(gen, 3, 4, scale=0.8), randn(gen, 3), (2, 2))
    call, result = _call_ig(impl, f, x, baseline, 6)
    assert f.calls, f"Called {call}. It never called f."
    expected = reference.integrated_gradients(f, x.clone(), baseline.clone(), 6)
    assert_close(result, expected, call=call, **TIGHT,
                 because="row b's attributions come from row b's own path only: stack the points as (steps, B, *S) "
                         "and view the gradients back the same way before averaging over the steps.",
                 cause=_ig_cause(f, x, baseline, 6, result)() if error_report(result, expected, **TIGHT) else None)
    for b in range(3):
        _, alone = _call_ig(impl, f, x[b:b + 1], baseline[b:b + 1], 6)
        assert_close(result[b:b + 1], alone, call=f"{call}[{b}:{b + 1}]", **TIGHT,
                     because=f"row {b} explained with the others must equal row {b} explained alone.")


class _Net(nn.Module):
    """A small network with parameters, as an f: integrated gradients must leave its .grad alone."""

    def __init__(self, gen: torch.Generator) -> None:
        super().__init__()
        self.hidden = nn.Linear(4, 5).double()
        self.out = nn.Linear(5, 1).double()
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(randn(gen, *p.shape))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.hidden(z))).squeeze(-1)


@pytest.mark.exercise("integrated_gradients")
def test_ig_leaves_no_graph_no_grads_and_its_inputs_alone(impl, reference):
    gen = generator(4)
    net = _Net(gen)
    f = RowFunction("a tanh network's output", net, (4,))
    x = randn(gen, 3, 4).requires_grad_()  # the caller's leaf, with a .grad of its own
    x.grad = torch.full_like(x, 7.0)
    baseline = randn(gen, 3, 4).requires_grad_()  # a baseline that is itself being learned
    expected = reference.integrated_gradients(f, x.detach().clone(), baseline.detach().clone(), 5)
    for mode in ("grad enabled", "inside torch.no_grad()"):
        before = {"x": _snapshot(x), "baseline": _snapshot(baseline)}
        with torch.set_grad_enabled(mode == "grad enabled"):
            call, result = _call_ig(impl, f, x, baseline, 5)
            still = torch.is_grad_enabled()
        call = f"{call} {mode}"
        assert still == (mode == "grad enabled"), (
            f"Called {call}. Afterwards grad mode was {'on' if still else 'off'}; the caller's grad mode must be "
            "restored (use the context managers torch.enable_grad() / torch.no_grad(), not set_grad_enabled alone)."
        )
        for name, snap in before.items():
            _assert_untouched(call, name, snap, x if name == "x" else baseline)
        grads = {name: p.grad for name, p in net.named_parameters() if p.grad is not None}
        assert not grads, (
            f"Called {call}. Afterwards f's parameters have .grad: {sorted(grads)}.\nBecause an explanation must not "
            "change the model's state (the next optimizer step would use those gradients): use "
            "torch.autograd.grad(out.sum(), points), not out.sum().backward()."
        )
        assert_close(result, expected, call=call, **TIGHT,
                     because="the gradients are needed even when the caller is in torch.no_grad(): compute them "
                             "inside torch.enable_grad().")


@pytest.mark.exercise("integrated_gradients")
def test_ig_float32_and_meta(impl):
    gen = generator(32)
    x64, b64 = randn(gen, 2, 3), randn(gen, 2, 3)
    f = _power(3, (3,))
    call, result = _call_ig(impl, f, x64.float(), b64.float(), 4)
    expected = x64**3 - b64**3 - (x64 - b64) ** 3 / 64
    assert_close(result, expected, call=call, rtol=1e-4, atol=1e-5,
                 because="a float32 x gives float32 attributions, as close to the exact values as float32 allows.")
    meta = torch.empty(2, 3, dtype=DT, device="meta")
    call, result = _call_ig(impl, f, meta, torch.empty(3, dtype=DT, device="meta"), 4)
    assert result.device.type == "meta", (
        f"Called {call}. Returned a tensor on {result.device}; expected the meta device.\nBecause new tensors (the "
        "points a_k) must be made on x's device: torch.arange(steps, dtype=x.dtype, device=x.device)."
    )
    call, _ = _ig_call(f, meta, "default", 4)
    try:
        _, result = _call_ig(impl, f, meta, steps=4)
    except RuntimeError as error:
        raise AssertionError(
            f"Called {call}. It raised RuntimeError({str(error)!r}).\nBecause the default baseline is a new tensor "
            "too and must be made where x lives: torch.zeros_like(x), not torch.zeros(x.shape), which is made on "
            "the CPU."
        ) from None
    assert result.device.type == "meta", (
        f"Called {call}. Returned a tensor on {result.device}; expected the meta device.\nBecause the default "
        "baseline must be made where x lives: torch.zeros_like(x)."
    )


def _bad_f_rows(z):
    return (z**2).sum(dim=1, keepdim=True)  # (N, 1), not (N,)


IG_ERRORS = {
    "steps=0": ({"steps": 0}, ("0",)),
    "steps=-2": ({"steps": -2}, ("-2",)),
    "steps=2.5": ({"steps": 2.5}, ("2.5",)),
    "steps=True": ({"steps": True}, ("True",)),
    "integer x": ({"x": torch.arange(6).view(2, 3)}, ("int64", "long", "int")),
    "0-d x": ({"x": torch.tensor(1.0, dtype=DT)}, ()),
    "baseline of shape (2,)": ({"baseline": torch.zeros(2, dtype=DT)}, ("(2,)", "[2]")),
    "baseline of shape (4, 3)": ({"baseline": torch.zeros(4, 3, dtype=DT)}, ("(4, 3)", "[4, 3]")),
    # broadcasts WITH x, but to (2, 2, 3), not to x's shape (2, 3)
    "baseline of shape (2, 2, 3)": ({"baseline": torch.zeros(2, 2, 3, dtype=DT)}, ("(2, 2, 3)", "[2, 2, 3]")),
    "f returns a number": ({"f": RowFunction("float(sum(z))", lambda z: float(z.detach().sum()), (3,))}, ("float",)),
    "f returns (N, 1)": ({"f": RowFunction("sum(z**2), kept as (N, 1)", _bad_f_rows, (3,))},
                         (re.compile(r"[(\[]\d+, 1[)\]]"),)),  # (12, 1) for one call with every point, (2, 1) per step
    # one number for the whole batch: the gradients would even come out right, but the docstring asks for (N,)
    "f returns a 0-d tensor": ({"f": RowFunction("sum(z**2) over the whole batch", lambda z: (z**2).sum(), (3,))},
                               ("()", "[]", "0-d", "scalar")),
    # (3 N,) for N rows: 36 for one call with all 6 * 2 points, 6 for one call per step, 3 for one row per call
    "f returns (3 N,)": ({"f": RowFunction("z**2 flattened, not summed", lambda z: (z**2).flatten(), (3,))},
                         (re.compile(r"[(\[](36|6|3),?[)\]]"),)),
}


@pytest.mark.exercise("integrated_gradients")
@pytest.mark.parametrize("case", list(IG_ERRORS), ids=list(IG_ERRORS))
def test_ig_rejects_invalid_arguments(impl, case):
    change, named = IG_ERRORS[case]
    args = {"f": _power(2, (3,)), "x": randn(generator(1), 2, 3), "steps": 6} | change
    if case == "0-d x":
        args["f"] = RowFunction("z**2", lambda z: z**2, ())
    call = format_call("integrated_gradients", (), args)
    message = value_error_message(call, lambda: impl.integrated_gradients(**args), case)
    assert not named or _names(message, *named), (
        f"Called {call}. It raised ValueError({message!r}), which does not name the offending value; "
        f"expected one of {named} in the message (the docstring: {case} is a ValueError that names it)."
    )


# --------------------------------------------------------------------------------------------------
# attention_rollout


def _attention(gen: torch.Generator, shape: tuple[int, ...], kind: str) -> torch.Tensor:
    """One layer's attention (..., H, T, T): softmax rows, with fully masked (zero) rows, or after dropout."""
    weights = torch.softmax(randn(gen, *shape, scale=2.0), dim=-1)
    if kind == "masked" and shape[-1] > 1:
        dead = torch.rand(shape[:-1], generator=gen) < 0.3
        weights = weights.masked_fill(dead[..., None], 0.0)
    elif kind == "dropout":
        keep = torch.rand(shape, generator=gen) >= 0.25
        weights = weights * keep / 0.75
    return weights


def _oracle_rollout(layers, add_residual: bool) -> torch.Tensor:
    """The checks' own rollout, top-down: A_L @ (A_{L-1} @ (... @ A_1)) written as ((A_L @ A_{L-1}) @ ...)."""
    mats = []
    for layer in layers:
        m = layer.to(DT).mean(dim=-3)
        if add_residual:
            m = m + torch.eye(m.shape[-1], dtype=DT)
            m = m / m.sum(dim=-1, keepdim=True)
        mats.append(m)
    out = mats[-1]
    for m in reversed(mats[:-1]):
        out = out @ m
    return out


def _rollout_call(attentions, add_residual) -> tuple[str, dict]:
    kwargs = {} if add_residual == "default" else {"add_residual": add_residual}
    shown = describe(attentions) if isinstance(attentions, torch.Tensor) else (
        f"{type(attentions).__name__} of {len(attentions)} layers of shape "
        f"{tuple(attentions[0].shape) if len(attentions) else ()}")
    return f"attention_rollout({shown}{''.join(f', {k}={v}' for k, v in kwargs.items())})", kwargs


def _call_rollout(impl, attentions, add_residual="default"):
    call, kwargs = _rollout_call(attentions, add_residual)
    result = impl.attention_rollout(attentions, **kwargs)
    first = attentions[0]
    shape = tuple(first.shape[:-3]) + tuple(first.shape[-2:])
    assert isinstance(result, torch.Tensor) and tuple(result.shape) == shape, (
        f"Called {call}. Returned {describe(result)}; expected a tensor of shape {shape}: (*batch, T, T), the heads "
        "averaged away and the layers multiplied together."
    )
    assert result.dtype == first.dtype, (
        f"Called {call}. Returned dtype {result.dtype}; expected the inputs' dtype {first.dtype} (make the identity "
        "with dtype= and device= of the inputs: a float32 torch.eye promotes bfloat16 to float32)."
    )
    return call, result


def _rollout_cause(attentions, add_residual, actual, **tol):
    def run(candidate):
        _, kwargs = _rollout_call(attentions, add_residual)
        fresh = attentions.clone() if isinstance(attentions, torch.Tensor) else type(attentions)(
            a.clone() for a in attentions)
        return candidate(fresh, **kwargs)

    return likely_cause(KATA, "attention_rollout", run, actual, **(tol or TIGHT))


@st.composite
def rollout_cases(draw):
    gen = generator(draw(seeds))
    batch = tuple(draw(st.lists(st.integers(1, 2), max_size=2)))
    H, T, L = draw(st.integers(1, 3)), draw(st.integers(1, 5)), draw(st.integers(1, 4))
    kind = draw(st.sampled_from(["softmax", "masked", "dropout"]))
    layers = [_attention(gen, batch + (H, T, T), kind) for _ in range(L)]
    if draw(st.booleans()):  # a transposed memory layout: the same values, not contiguous
        layers = [a.transpose(-1, -2).contiguous().transpose(-1, -2) for a in layers]
    container = draw(st.sampled_from(["list", "tuple", "stacked"]))
    attentions = {"list": layers, "tuple": tuple(layers), "stacked": torch.stack(layers) if layers else None}[container]
    return attentions, draw(st.sampled_from(["default", True, False])), kind


@pytest.mark.exercise("attention_rollout")
@given(rollout_cases())
def test_rollout_is_the_product_of_the_layers(impl, case):
    attentions, add_residual, kind = case
    layers = list(attentions)
    before = [_snapshot(a) for a in layers]
    call, result = _call_rollout(impl, attentions, add_residual)
    for i, (snap, a) in enumerate(zip(before, layers, strict=True)):
        _assert_untouched(call, f"attentions[{i}]", snap, a)
    expected = _oracle_rollout(layers, add_residual is not False)
    residual = " plus the identity, rows renormalised to sum to 1" if add_residual is not False else ""
    assert_close(result, expected, call=call, **TIGHT,
                 because=f"rollout = A_L @ ... @ A_2 @ A_1 (later layers on the LEFT), where A_l is layer l's "
                         f"attention averaged over the heads (axis -3){residual}; attention kind: {kind}.",
                 cause=_rollout_cause(attentions, add_residual, result) if error_report(result, expected, **TIGHT)
                 else None)


@pytest.mark.exercise("attention_rollout")
@given(rollout_cases())
@settings(max_examples=15)
def test_rollout_rows_are_distributions(impl, case):
    attentions, add_residual, kind = case
    if add_residual is False and kind != "softmax":
        add_residual = True  # without the residual only rows that already sum to 1 stay so
    call, result = _call_rollout(impl, attentions, add_residual)
    assert (result >= 0).all(), f"Called {call}. Some entries are negative: {describe(result)}."
    assert_close(result.sum(dim=-1), torch.ones(result.shape[:-1], dtype=DT), call=call + ".sum(dim=-1)",
                 atol=1e-12, because="each row says how output position i divides itself among the input tokens: "
                                     "every layer's rows sum to 1 (with the residual, after renormalising), and so do "
                                     "those of their product.",
                 cause=_rollout_cause(attentions, add_residual, result))


@pytest.mark.exercise("attention_rollout")
def test_rollout_two_layers_by_hand(impl):
    a1 = torch.tensor([[[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.5, 0.5]],
                       [[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]], dtype=DT)  # (H=2, T=3, T=3)
    a2 = torch.tensor([[[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [0.5, 0.5, 0.0]],
                       [[0.0, 0.0, 1.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]], dtype=DT)
    m1, m2 = a1.mean(dim=0), a2.mean(dim=0)
    eye = torch.eye(3, dtype=DT)
    r1, r2 = (m1 + eye) / (m1 + eye).sum(-1, keepdim=True), (m2 + eye) / (m2 + eye).sum(-1, keepdim=True)
    for add_residual, (first, second) in ((False, (m1, m2)), (True, (r1, r2))):
        expected, reversed_order = second @ first, first @ second
        assert error_report(expected, reversed_order, **TIGHT), "the checks' two orders must differ"
        call, result = _call_rollout(impl, [a1, a2], add_residual)
        assert_close(result, expected, call=call, **TIGHT,
                     because="layer 2 reads positions that layer 1 already mixed, so rollout = A_2 @ A_1 "
                             f"(A_1 @ A_2 would be {describe(reversed_order)}).",
                     cause=_rollout_cause([a1, a2], add_residual, result))
    call, result = _call_rollout(impl, [a1], True)
    assert_close(result, r1, call=call, **TIGHT, because="one layer's rollout is that layer's (A + I), rows "
                                                          "renormalised.",
                 cause=_rollout_cause([a1], True, result))


@pytest.mark.exercise("attention_rollout")
@pytest.mark.parametrize("add_residual", [True, False])
def test_rollout_of_identity_attention_is_identity(impl, add_residual):
    eye = torch.eye(4, dtype=DT).expand(2, 3, 4, 4)  # (B=2, H=3, T, T): every token reads only itself
    call, result = _call_rollout(impl, [eye, eye, eye], add_residual)
    assert_close(result, torch.eye(4, dtype=DT).expand(2, 4, 4), call=call, **TIGHT,
                 because="when every head of every layer attends only to the token itself, nothing is mixed.")


@pytest.mark.exercise("attention_rollout")
def test_rollout_renormalises_rows_that_do_not_sum_to_one(impl):
    a = torch.tensor([[[0.0, 0.0], [0.25, 0.25]]], dtype=DT)  # (H=1, T=2, T=2): a masked row, a row summing to 0.5
    expected = torch.tensor([[1.0, 0.0], [0.25 / 1.5, 1.25 / 1.5]], dtype=DT)
    for attentions in ([a], [a, torch.eye(2, dtype=DT)[None]]):
        call, result = _call_rollout(impl, attentions)
        assert_close(result, expected, call=call, **TIGHT,
                     because="(A + I) is divided by its own row sums, so every row sums to 1 also when the attention "
                             "row did not (a fully masked query's zeros become the identity row); 0.5 * A + 0.5 * I "
                             "only does that for rows that already summed to 1.",
                     cause=_rollout_cause(attentions, "default", result))


@pytest.mark.exercise("attention_rollout")
def test_rollout_adds_the_residual_by_default(impl):
    gen = generator(9)
    layers = [_attention(gen, (2, 4, 4), "softmax") for _ in range(2)]
    call, result = _call_rollout(impl, layers)
    expected = _oracle_rollout(layers, True)
    assert error_report(expected, _oracle_rollout(layers, False), **TIGHT)
    assert_close(result, expected, call=call, **TIGHT, because="add_residual defaults to True.",
                 cause=_rollout_cause(layers, "default", result))


@pytest.mark.exercise("attention_rollout")
def test_rollout_sizes(impl):
    gen = generator(2)
    cases = {"T = 1": [_attention(gen, (3, 1, 1), "softmax")] * 2,
             "T = 0": [torch.zeros(2, 2, 0, 0, dtype=DT)] * 3,
             "no batch axis, one head": [_attention(gen, (1, 3, 3), "softmax")]}
    for what, layers in cases.items():
        for add_residual in (True, False):
            call, result = _call_rollout(impl, layers, add_residual)
            assert_close(result, _oracle_rollout(layers, add_residual), call=call, **TIGHT,
                         because=f"{what} is legal.")


@pytest.mark.exercise("attention_rollout")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_rollout_keeps_dtype_and_device(impl, dtype):
    gen = generator(16)
    layers = [_attention(gen, (2, 2, 4, 4), "masked") for _ in range(3)]
    call, result = _call_rollout(impl, [a.to(dtype) for a in layers])
    tol = {"rtol": 1e-5, "atol": 1e-6} if dtype == torch.float32 else {"rtol": 3e-2, "atol": 3e-2}
    assert_close(result, _oracle_rollout([a.to(dtype) for a in layers], True), call=call, **tol,
                 because=f"{dtype} attention gives a {dtype} rollout, as close as {dtype} allows.")
    meta = [torch.empty(2, 4, 4, dtype=dtype, device="meta")] * 2
    call, result = _call_rollout(impl, meta)
    assert result.device.type == "meta", (
        f"Called {call}. Returned a tensor on {result.device}; expected the meta device.\nBecause the identity must "
        "be made where the attention lives: torch.eye(T, dtype=..., device=attentions[0].device)."
    )


def _eyes(*shapes) -> list[torch.Tensor]:
    return [torch.eye(shape[-1], dtype=DT).expand(shape) for shape in shapes]


# case: (attentions, what the message must name: every group, each by one of its spellings)
ROLLOUT_ERRORS = {
    "no layers": ([], ()),
    "a layer without a head axis (T, T)": ([torch.eye(3, dtype=DT)], (("(3, 3)", "[3, 3]"),)),
    "3 queries but 4 keys": ([torch.ones(2, 3, 4, dtype=DT) / 4], (("(2, 3, 4)", "[2, 3, 4]"),)),
    "layers of different shapes": (_eyes((2, 3, 3), (2, 4, 4)),
                                   (("(2, 4, 4)", "[2, 4, 4]"), (re.compile(r"\b1\b"), "second"))),
    # the same T, but layer 2 has 4 heads where the others have 3: different shapes all the same
    "layer 2 with another number of heads": (_eyes((3, 3, 3), (3, 3, 3), (4, 3, 3)),
                                             (("(4, 3, 3)", "[4, 3, 3]"), (re.compile(r"\b2\b"), "third"))),
}


@pytest.mark.exercise("attention_rollout")
@pytest.mark.parametrize("case", list(ROLLOUT_ERRORS), ids=list(ROLLOUT_ERRORS))
def test_rollout_rejects_invalid_attentions(impl, case):
    attentions, named = ROLLOUT_ERRORS[case]
    call = f"attention_rollout([{', '.join(describe(a) for a in attentions)}])"
    message = value_error_message(call, lambda: impl.attention_rollout(attentions), case)
    missing = [group for group in named if not _names(message, *group)]
    assert not missing, (
        f"Called {call}. It raised ValueError({message!r}), which does not name the problem; expected in the "
        f"message one of each of {missing} (the docstring: layers of different shapes name the layer, by its index "
        "and its shape)."
    )


# --------------------------------------------------------------------------------------------------
# logit_lens

V, MAX_LEN = 11, 8


@pytest.fixture(scope="module")
def mini_gpt():
    """The reference MiniGPT class of w15_mini_gpt: the model the lens reads (never the code under test)."""
    return importlib.import_module("reference.phase2.w15_mini_gpt").MiniGPT


@torch.no_grad()
def _model(cls, seed: int, num_layers: int = 3, tie: bool = True, dropout: float = 0.0) -> nn.Module:
    """A tiny float64 MiniGPT in eval mode with large weights and LayerNorm gains/biases away from 1/0."""
    with seeded(seed):
        model = cls(vocab_size=V, embed_dim=8, num_heads=2, num_layers=num_layers, ff_dim=16, max_len=MAX_LEN,
                    dropout=dropout, tie_weights=tie)
    model = model.double().eval()
    gen = generator(seed)
    for name, p in sorted(model.named_parameters(), key=lambda item: item[0]):
        noise = torch.randn(p.shape, generator=gen, dtype=DT)
        if p.dim() >= 2:
            p.copy_(noise * 0.5)
        else:  # LayerNorm gains around 1 (never exactly), biases around 0
            p.copy_(noise * 0.3 + (1.0 if name.endswith("weight") else 0.0))
    return model


@torch.no_grad()
def _oracle_lens(model: nn.Module, idx: torch.Tensor) -> torch.Tensor:
    """The checks' own reading, on a copy of the model in eval mode: embeddings, then after each block."""
    twin = copy.deepcopy(model).eval()
    T = idx.shape[1]
    h = twin.tok_emb(idx) + twin.pos_emb(torch.arange(T))
    readings = [twin.head(twin.ln_f(h))]
    for block in twin.blocks:
        h = block(h)
        readings.append(twin.head(twin.ln_f(h)))
    return torch.stack(readings)


def _modes(model: nn.Module) -> dict[str, bool]:
    return {name or "<model>": m.training for name, m in model.named_modules()}


HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")


def _hooks(model: nn.Module) -> dict[str, list]:
    found = {f"{name or '<model>'}.{d}": sorted(getattr(m, d)) for name, m in model.named_modules()
             for d in HOOK_DICTS if getattr(m, d)}
    module_globals = torch.nn.modules.module
    for d in ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks"):
        if getattr(module_globals, d, None):
            found[f"global {d}"] = sorted(getattr(module_globals, d))
    return found


def _lens_call(model: nn.Module, idx: torch.Tensor) -> str:
    L = len(model.blocks)
    return (f"logit_lens(<MiniGPT with {L} blocks, vocab {V}, max_len {MAX_LEN}, {next(model.parameters()).dtype}, "
            f"{'training' if model.training else 'eval'} mode>, idx={describe(idx)})")


def _call_lens(impl, model: nn.Module, idx: torch.Tensor):
    call, dtype = _lens_call(model, idx), next(model.parameters()).dtype
    result = impl.logit_lens(model, idx)
    shape = (len(model.blocks) + 1, idx.shape[0], idx.shape[1], V)
    assert isinstance(result, torch.Tensor) and tuple(result.shape) == shape, (
        f"Called {call}. Returned {describe(result)}; expected shape {shape} = (num_layers + 1, B, T, V): the "
        "embeddings first, then the stream after each block, stacked on a NEW first axis."
    )
    assert result.dtype == dtype, f"Called {call}. Returned dtype {result.dtype}; expected the model's dtype {dtype}."
    changed = {n: p.dtype for n, p in model.named_parameters() if p.dtype != dtype}
    assert not changed, (
        f"Called {call}. Afterwards these parameters are no longer {dtype}: {changed}. The caller's model must come "
        "back as it was (no model.double() or model.float() on it)."
    )
    assert not result.requires_grad, (
        f"Called {call}. The result requires grad.\nBecause the lens is a reading, not training: run it under "
        "torch.no_grad(), so no graph of the whole model is kept alive."
    )
    assert not result.is_inference(), (
        f"Called {call}. The result is an inference tensor (made under torch.inference_mode()).\nBecause the "
        "docstring asks for torch.no_grad(): a caller cannot use an inference tensor in any computation that "
        "autograd records later (a loss on the lens's logits, say), nor change it in place."
    )
    return call, result


def _lens_cause(model: nn.Module, idx: torch.Tensor, actual, **tol):
    return likely_cause(KATA, "logit_lens", lambda f: f(copy.deepcopy(model), idx.clone()), actual, **(tol or TIGHT))


@pytest.mark.exercise("logit_lens")
@given(seed=seeds, B=st.integers(1, 3), T=st.integers(1, MAX_LEN), num_layers=st.integers(1, 3), tie=st.booleans(),
       strided=st.booleans())
@example(seed=0, B=1, T=MAX_LEN, num_layers=2, tie=True, strided=False)
@settings(max_examples=10)
def test_lens_reads_the_residual_stream_after_every_block(impl, mini_gpt, seed, B, T, num_layers, tie, strided):
    model = _model(mini_gpt, seed, num_layers, tie)
    idx = torch.randint(0, V, (B, T), generator=generator(seed))
    idx[0, 0] = V - 1  # the last id of the vocabulary is legal, and so is 0
    idx[-1, -1] = 0 if B * T > 1 else idx[-1, -1]
    if strided:
        idx = _strided_copy(idx)
    pristine_idx, state = idx.clone(), copy.deepcopy(model.state_dict())
    call, result = _call_lens(impl, model, idx)
    assert torch.equal(idx, pristine_idx), f"Called {call}. It changed idx: {describe(idx)}."
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, state[k])]
    assert not changed, f"Called {call}. It changed the model's weights: {changed}."
    expected = _oracle_lens(model, idx)
    for layer in range(num_layers + 1):
        where = "the embeddings (before any block)" if layer == 0 else f"the stream after block {layer}"
        assert_close(result[layer], expected[layer], call=f"{call}[{layer}]", **TIGHT,
                     because=f"entry {layer} is {where}, passed through the model's final LayerNorm ln_f and then "
                             "its head, like the last block's output in the model's own forward.",
                     cause=_lens_cause(model, idx, result) if error_report(result[layer], expected[layer], **TIGHT)
                     else None)


@pytest.mark.exercise("logit_lens")
def test_lens_last_entry_is_the_models_logits(impl, mini_gpt):
    model = _model(mini_gpt, 5, num_layers=2, tie=False)
    idx = torch.randint(0, V, (2, 6), generator=generator(5))
    call, result = _call_lens(impl, model, idx)
    with torch.no_grad():
        logits = copy.deepcopy(model).eval()(idx)
    assert_close(result[-1], logits, call=f"{call}[-1]", rtol=0, atol=1e-12,
                 because="after the last block the lens IS the model's forward: ln_f, then the head, once.",
                 cause=_lens_cause(model, idx, result))
    ids32 = idx.to(torch.int32)
    call = _lens_call(model, ids32)
    try:
        _, result32 = _call_lens(impl, model, ids32)
    except ValueError as error:
        raise AssertionError(
            f"Called {call}. It raised ValueError({str(error)!r}); expected the lens.\nBecause int32 token ids are "
            "integer ids too (nn.Embedding takes them): reject floating point, complex and bool idx, not every dtype "
            "but int64."
        ) from None
    assert_close(result32, result, call=call, rtol=0, atol=0,
                 because="the same token ids as int32 give the same lens as int64.")


@pytest.mark.exercise("logit_lens")
def test_lens_reads_in_eval_mode_and_restores_every_modules_mode(impl, mini_gpt):
    model = _model(mini_gpt, 6, num_layers=3, dropout=0.5).train()
    model.blocks[1].eval()  # the caller froze one block's dropout on purpose
    modes, idx = _modes(model), torch.randint(0, V, (2, 5), generator=generator(6))
    expected = _oracle_lens(model, idx)
    for attempt in ("first", "second"):
        call, result = _call_lens(impl, model, idx)
        call = f"{call} ({attempt} call)"
        assert_close(result, expected, call=call, **TIGHT,
                     because="with dropout 0.5 in training mode the lens would be random; it reads the model in eval "
                             "mode, every time.",
                     cause=_lens_cause(model, idx, result) if error_report(result, expected, **TIGHT) else None)
        after = _modes(model)
        changed = {name: (modes[name], after[name]) for name in modes if after[name] != modes[name]}
        assert not changed, (
            f"Called {call}. It changed the train/eval mode of {changed} (before, after).\nBecause the caller's model "
            "must come back as it was: remember module.training for every module and set each one back "
            "(model.train(was_training) would also switch the block the caller had put in eval mode)."
        )


@pytest.mark.exercise("logit_lens")
def test_lens_leaves_no_hooks_no_graph_and_no_grads(impl, mini_gpt):
    model = _model(mini_gpt, 7, num_layers=2)
    seen = []
    model.blocks[0].register_forward_hook(lambda module, args, out: seen.append("block 0"))
    model.register_forward_pre_hook(lambda module, args: seen.append("model"))
    model.pos_emb.requires_grad_(False)  # the caller froze some parameters ...
    model.ln_f.weight.requires_grad_(False)
    model.blocks[1].attn.qkv.weight.grad = torch.full_like(model.blocks[1].attn.qkv.weight, 3.0)  # ... and has grads
    grads_before = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    hooks, flags = _hooks(model), {n: p.requires_grad for n, p in model.named_parameters()}
    idx = torch.randint(0, V, (1, 4), generator=generator(7))
    with torch.no_grad():
        call, _ = _call_lens(impl, model, idx)
        still_off = not torch.is_grad_enabled()
    assert still_off, (
        f"Called {call} inside torch.no_grad(). Afterwards grad mode is on: use `with torch.no_grad():`, which "
        "restores the caller's mode, not torch.set_grad_enabled(False) ... torch.set_grad_enabled(True)."
    )
    call, _ = _call_lens(impl, model, idx)
    assert torch.is_grad_enabled(), (
        f"Called {call}. Afterwards grad mode is off: use `with torch.no_grad():`, which restores the caller's mode, "
        "not torch.set_grad_enabled(False)."
    )
    assert _hooks(model) == hooks, (
        f"Called {call}. The hooks registered on the model went from {hooks} to {_hooks(model)}.\nBecause every hook "
        "you register must be removed (handle.remove(), in a finally block), and the caller's own hooks must stay."
    )
    seen.clear()
    with torch.no_grad():
        model(idx)
    assert seen == ["model", "block 0"], (
        f"Called {call}, then the model's forward. The caller's hooks fired {seen}; expected ['model', 'block 0']: "
        "the caller's hooks must still work."
    )
    changed = {n: (flags[n], p.requires_grad) for n, p in model.named_parameters() if p.requires_grad != flags[n]}
    grads = {n: "set" if n not in grads_before else "cleared" if p.grad is None else "changed"
             for n, p in model.named_parameters()
             if (p.grad is None) != (n not in grads_before) or n in grads_before and p.grad is not None
             and not torch.equal(p.grad, grads_before[n])}
    assert not changed and not grads, (
        f"Called {call}. Afterwards requires_grad changed for {changed} (before, after) and .grad changed on {grads} "
        f"(the caller had frozen pos_emb and ln_f.weight and had a .grad on {sorted(grads_before)}); the lens must "
        "leave the parameters as they were: torch.no_grad() is all it needs, no requires_grad_() and no zero_grad()."
    )


@pytest.mark.exercise("logit_lens")
def test_lens_in_float32(impl, mini_gpt):
    model = _model(mini_gpt, 12, num_layers=2)
    idx = torch.randint(0, V, (2, 5), generator=generator(12))
    expected = _oracle_lens(model, idx)
    call, result = _call_lens(impl, model.float(), idx)
    assert_close(result, expected, call=call, rtol=1e-4, atol=1e-4,
                 because="a float32 model gives a float32 lens, as close to float64 as float32 allows.")


LENS_ERRORS = {
    "1-D idx": (torch.tensor([1, 2, 3]), ()),
    "float idx": (torch.tensor([[1.0, 2.0]]), ()),
    "bool idx": (torch.tensor([[True, False]]), ()),
    "T = 9 > max_len = 8": (torch.zeros(1, MAX_LEN + 1, dtype=torch.long), ("9",)),
    "token id 11 = vocab_size": (torch.tensor([[1, 11, 2]]), ()),
    "token id 12": (torch.tensor([[0, 12, 2]]), ("12",)),
    "token id -1": (torch.tensor([[1, -1, 2]]), ("-1",)),
}


@pytest.mark.exercise("logit_lens")
@pytest.mark.parametrize("case", list(LENS_ERRORS), ids=list(LENS_ERRORS))
def test_lens_rejects_invalid_idx(impl, mini_gpt, case):
    idx, named = LENS_ERRORS[case]
    model = _model(mini_gpt, 1, num_layers=1).train()
    model.register_forward_hook(lambda module, args, out: None)  # the caller's own hook
    modes, hooks = _modes(model), _hooks(model)
    call = _lens_call(model, idx)
    message = value_error_message(call, lambda: impl.logit_lens(model, idx), case)
    assert not named or _names(message, *named), (
        f"Called {call}. It raised ValueError({message!r}), which does not name the offending value; "
        f"expected one of {named} in the message."
    )
    changed = [name for name, mode in _modes(model).items() if mode != modes[name]]
    assert not changed and _hooks(model) == hooks, (
        f"Called {call}. It raised the ValueError, but left the model changed: {len(changed)} modules changed their "
        f"train/eval mode {changed[:4]}{' ...' if len(changed) > 4 else ''}, hooks went from {hooks} to "
        f"{_hooks(model)}.\nBecause the model must come back as it was also when the lens fails: "
        "validate idx before touching the model, and restore modes and remove your hooks in a finally block."
    )
