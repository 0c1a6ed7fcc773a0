"""Checks for m09_privacy_federated: federated averaging, per-example gradients, one step of DP-SGD.

The oracles are the checks' own: the weighted mean written out in float64 (weights normalised with
``math.fsum``), one plain SGD step of PyTorch on the union of the clients' data, a per-example loop of
``torch.autograd.grad`` (the slow way ``torch.func`` replaces), and the clipping formula of the docstring
applied to that loop's gradients. The noise of DP-SGD is checked statistically: z = (private gradient -
clipped mean) * B / (sigma * C) must look like independent N(0, 1) draws (mean, standard deviation and the
Kolmogorov-Smirnov distance to the normal distribution, each within bounds derived from the number of draws
for a false alarm rate of about one in a million). Everything compares in float64 unless a check is about
another dtype, and every random value comes from a drawn seed (``checks.torch_strategies``).

Checklist notes (CONTRACTS.md items that do not apply, and why):
- Devices (3): without CUDA, devices are checked on the ``meta`` device, where every exercise runs at the
  level of shapes: the results (and the noise of ``dp_sgd_step``) must be created where the model lives.
  The noise must be drawn in the parameter's dtype, which a float32 and a float64 model observe.
- Structure of modules (7): no exercise builds a module. ``per_sample_grads`` must respect the model's
  structure: frozen parameters left out, a tied weight listed once with the gradient of both its uses.
- Inputs not modified (1): ``dp_sgd_step`` changes the model by design (one optimizer step, ``.grad``); the
  checks pin both exactly, and that ``x``, ``y``, the mode, frozen parameters and their ``.grad`` are untouched.
- Bools for ints (10): no argument is an int. A bool weight is rejected by ``fedavg`` as documented, NumPy
  numbers are accepted as weights; the float arguments of ``dp_sgd_step`` accept ints (1 and 0) and promise
  nothing about bools, and a string or None there is a ValueError. Every error case also fails a learner who
  raises another exception or none.
- Batch of one: ``per_sample_grads`` must hand the model and the loss a batch of ONE example (checked with a
  model and a loss that assert it), not an unbatched example.
- Sizes (2): ``fedavg`` with one client, 0-dimensional and size-0 tensors, empty state dicts;
  ``per_sample_grads`` with B = 0 and B = 1; ``dp_sgd_step`` with B = 1, and B = 0 is a documented error.
- Numerics (9): extreme-but-legal values here are gradients much longer and much shorter than C in one batch
  (C from 0.05 to 1e3), a zero gradient (0 / 0 in a careless clip), and bfloat16 averages.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from checks.numerics import assert_close, cause_line, describe, error_report, likely_cause, value_error_message
from checks.torch_strategies import generator, randn, refill_, seeded, seeds

pytestmark = pytest.mark.kata("m09_privacy_federated")

KATA = "m09_privacy_federated"
DT = torch.float64
TIGHT = {"rtol": 1e-10, "atol": 1e-12}  # float64 against the checks' own float64 computation


def _dict_problem(actual, expected: dict, rtol: float, atol: float) -> str | None:
    """None when ``actual`` is a dict with ``expected``'s keys in its order and close tensors; else what differs."""
    if not isinstance(actual, dict):
        return f"a {type(actual).__name__}, not a dict"
    if list(actual) != list(expected):
        return f"the keys {list(actual)}, where {list(expected)} (in this order) were expected"
    for name, want in expected.items():
        got = actual[name]
        if not isinstance(got, torch.Tensor):
            return f"{name!r}: {describe(got)}, not a tensor"
        if got.shape != want.shape or got.dtype != want.dtype:
            return (f"{name!r}: shape {tuple(got.shape)} and dtype {got.dtype}, expected {tuple(want.shape)} "
                    f"{want.dtype}")
        problem = error_report(got.double(), want.double(), rtol, atol)
        if problem:
            return f"{name!r}: {problem}"
    return None


def _matches(expected: dict, rtol: float = 1e-10, atol: float = 1e-12):
    return lambda result: _dict_problem(result, expected, rtol, atol) is None


def _same_tensor(a: torch.Tensor, b: torch.Tensor) -> bool:
    return (a.shape == b.shape and a.dtype == b.dtype and a.requires_grad == b.requires_grad
            and a.device == b.device and (a.device.type == "meta" or torch.equal(a, b)))


# --------------------------------------------------------------------------------------------------
# fedavg


def _expected_fedavg(states: list[dict], weights) -> dict:
    """The checks' own weighted mean in float64 (floating entries) and client 0's value (other entries)."""
    if weights is None:
        values = [1.0] * len(states)
    elif isinstance(weights, torch.Tensor):
        values = weights.double().tolist()
    else:
        values = [float(w) for w in weights]
    total = math.fsum(values)
    shares = [v / total for v in values]
    out = {}
    for name, first in states[0].items():
        if first.is_floating_point():
            acc = sum((s * state[name].double() for s, state in zip(shares, states, strict=True)),
                      torch.zeros(first.shape, dtype=DT))
            out[name] = acc.to(first.dtype)
        else:
            out[name] = first.clone()
    return out


def _fedavg_call(states, weights) -> str:
    clients = ", ".join("{" + ", ".join(f"{k!r}: {describe(v)}" for k, v in s.items()) + "}" for s in states)
    if len(clients) > 600:
        clients = clients[:597] + "..."
    return f"fedavg([{clients}], weights={describe(weights)})"


def _storages(states) -> set[int]:
    return {t.untyped_storage().data_ptr() for s in states for t in s.values() if t.numel() and t.device.type != "meta"}


def _call_fedavg(impl, states, weights, expected_keys=None):
    """Call the learner's fedavg, then check the result's type and keys, and that nothing passed in changed."""
    pristine_states, pristine_weights = copy.deepcopy(states), copy.deepcopy(weights)
    call = _fedavg_call(states, weights)
    result = impl.fedavg(states, weights)
    for index, (state, before) in enumerate(zip(states, pristine_states, strict=True)):
        assert list(state) == list(before) and all(_same_tensor(state[k], before[k]) for k in before), (
            f"Called {call}. It modified the state dict of client {index} in place: it now holds "
            f"{ {k: describe(v) for k, v in state.items()} }.\nBecause the clients' states belong to the clients: "
            "accumulate into a new tensor (total = torch.zeros(...); total += ...), never into states[0][key]."
        )
    same_weights = (_same_tensor(weights, pristine_weights) if isinstance(weights, torch.Tensor)
                    else weights == pristine_weights)
    assert same_weights, f"Called {call}. It modified its argument weights in place: it is now {weights!r}."
    keys = list(states[0]) if expected_keys is None else expected_keys
    assert isinstance(result, dict) and list(result) == keys, (
        f"Called {call}. Returned {describe(result)}; expected a dict with the keys of states[0], in its order: {keys}."
    )
    shared = [k for k, t in result.items() if isinstance(t, torch.Tensor) and t.numel() and t.device.type != "meta"
              and t.untyped_storage().data_ptr() in _storages(states)]
    assert not shared, (
        f"Called {call}. The result's {shared} share memory with an input state dict.\nBecause the server changes "
        "its global model in place later: every tensor of the result must be new (clone what you copy)."
    )
    return result


def _fedavg_cause(states, weights, actual):
    return lambda: likely_cause(KATA, "fedavg", lambda f: f(copy.deepcopy(states), copy.deepcopy(weights)),
                                matches=lambda result: _dict_problem(result, actual, 1e-12, 1e-14) is None)


def _assert_fedavg(result, states, weights, because: str, tolerance=None) -> None:
    expected = _expected_fedavg(states, weights)
    tolerance = tolerance or TIGHT
    problem = _dict_problem(result, expected, **tolerance)
    if problem:
        raise AssertionError(
            f"Called {_fedavg_call(states, weights)}.\nReturned a result that differs: {problem}.\nBecause {because}"
            + cause_line(_fedavg_cause(states, weights, result))
        )


SHAPES = [(), (0,), (3,), (2, 3), (1, 4, 2)]


@st.composite
def fedavg_cases(draw):
    """(states, weights): 1-4 clients, each key's tensors of one shape (views too), keys in shuffled orders."""
    gen = generator(draw(seeds))
    clients = draw(st.integers(1, 4))
    shapes = draw(st.lists(st.sampled_from(SHAPES), min_size=1, max_size=4))
    with_counter = draw(st.booleans())
    states = []
    for _ in range(clients):
        state = {}
        for index, shape in enumerate(shapes):
            if len(shape) == 2 and draw(st.booleans()):  # a transposed view: the layout must not matter
                state[f"layer{index}.weight"] = randn(gen, *reversed(shape)).t()
            else:
                state[f"layer{index}.weight"] = torch.randn(shape, generator=gen, dtype=DT) * 2.0
        if with_counter:
            state["norm.num_batches_tracked"] = torch.randint(0, 50, (), generator=gen)
        order = draw(st.permutations(list(state)))  # another client may list its keys in another order
        states.append({key: state[key] for key in order})
    sizes = draw(st.lists(st.integers(0, 40), min_size=clients, max_size=clients).filter(lambda s: sum(s) > 0))
    kind = draw(st.sampled_from(["list", "tuple", "floats", "int64", "float64", "none"]))
    weights = {"list": sizes, "tuple": tuple(sizes), "floats": [s / 7 for s in sizes],
               "int64": torch.tensor(sizes), "float64": torch.tensor(sizes, dtype=DT), "none": None}[kind]
    return states, weights


@pytest.mark.exercise("fedavg")
@given(fedavg_cases())
def test_fedavg_is_the_weighted_mean(impl, case):
    states, weights = case
    result = _call_fedavg(impl, states, weights)
    _assert_fedavg(result, states, weights,
                   "each floating entry is sum_k weights[k] / sum(weights) * states[k][key] (keys matched by name, "
                   "the weights normalised in float64), and an integer entry is client 0's value.")


@pytest.mark.exercise("fedavg")
def test_fedavg_known_values_and_weight_forms(impl):
    a = {"w": torch.tensor([0.0, 4.0], dtype=DT), "steps": torch.tensor(3)}
    b = {"w": torch.tensor([8.0, 0.0], dtype=DT), "steps": torch.tensor(5)}
    expected = {"w": torch.tensor([6.0, 1.0], dtype=DT), "steps": torch.tensor(3)}
    for weights in ([1, 3], [10, 30], (0.25, 0.75), torch.tensor([1, 3]), torch.tensor([0.5, 1.5], dtype=DT),
                    [np.int64(10), np.int64(30)], (np.float32(0.25), np.float64(0.75))):
        try:
            result = _call_fedavg(impl, [a, b], weights)
        except ValueError as error:
            raise AssertionError(
                f"Called {_fedavg_call([a, b], weights)}. It raised ValueError({str(error)!r}); expected the average.\n"
                "Because NumPy numbers are numbers too (a size from len() or from an array's .sum()): accept every "
                "numbers.Real that is not a bool, not only int and float."
            ) from None
        problem = _dict_problem(result, expected, 1e-12, 1e-14)
        assert problem is None, (
            f"Called {_fedavg_call([a, b], weights)}.\nReturned a result that differs: {problem}.\nBecause the weights "
            "are normalised (divided by their sum), so 1:3 gives 0.25 * [0, 4] + 0.75 * [8, 0] = [6, 1], and the "
            "integer 'steps' is taken from the first client." + cause_line(_fedavg_cause([a, b], weights, result))
        )
    result = _call_fedavg(impl, [a, b], None)
    _assert_fedavg(result, [a, b], None, "weights=None (the default) weighs every client the same: [4, 2].")
    result = _call_fedavg(impl, [b], [7])
    _assert_fedavg(result, [b], [7], "one client's average is a copy of its own state.")
    zero = {"w": torch.tensor([100.0, 100.0], dtype=DT), "steps": torch.tensor(9)}
    result = _call_fedavg(impl, [zero, a, b], [0, 1, 3])
    _assert_fedavg(result, [zero, a, b], [0, 1, 3],
                   "a client with weight 0 does not count, but its integer entries still come first: 'steps' is 9.")
    assert impl.fedavg([{}, {}], [1, 2]) == {}, "Called fedavg([{}, {}], weights=[1, 2]). Expected {}: no keys."


def _mlp(seed: int, dtype=DT) -> nn.Module:
    with seeded(seed):
        model = nn.Sequential(nn.Linear(4, 6), nn.LayerNorm(6), nn.Tanh(), nn.Linear(6, 3))
    return refill_(model.to(dtype), seed, scale=0.7)


@pytest.mark.exercise("fedavg")
@given(seeds, st.lists(st.integers(1, 6), min_size=1, max_size=4))
@settings(max_examples=10)
def test_fedavg_of_one_sgd_step_equals_centralised_sgd(impl, seed, sizes):
    gen = generator(seed)
    start = _mlp(seed)
    xs = [randn(gen, n, 4) for n in sizes]
    ys = [torch.randint(0, 3, (n,), generator=gen) for n in sizes]
    lr = 0.3

    def one_step(x, y):
        model = copy.deepcopy(start)
        optimizer = torch.optim.SGD(model.parameters(), lr=lr)
        F.cross_entropy(model(x), y).backward()  # the mean loss of this data
        optimizer.step()
        return model.state_dict()

    states = [one_step(x, y) for x, y in zip(xs, ys, strict=True)]
    central = one_step(torch.cat(xs), torch.cat(ys))
    result = _call_fedavg(impl, states, list(sizes))
    problem = _dict_problem(result, dict(central), 1e-9, 1e-12)
    assert problem is None, (
        f"{len(sizes)} clients with {sizes} examples each took one SGD step (lr={lr}) from the same weights on the "
        f"mean cross-entropy of their own data; then called fedavg(states, weights={sizes}).\nIts result differs from "
        f"one SGD step on all {sum(sizes)} examples together: {problem}.\nBecause the mean gradient of the union is "
        "the size-weighted mean of the clients' mean gradients, so the size-weighted average of the new weights is "
        "exactly the centralised step." + cause_line(_fedavg_cause(states, list(sizes), result))
    )
    model = copy.deepcopy(start)
    model.load_state_dict(result)  # the result is a state dict a model accepts


@pytest.mark.exercise("fedavg")
def test_fedavg_integer_and_bool_entries_come_from_the_first_client(impl):
    gen = generator(3)
    states = []
    for batches in (3, 5, 4):
        with seeded(batches):
            model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)).to(DT)
        model.train()
        for _ in range(batches):  # each client trained for another number of batches
            model(randn(gen, 6, 3))
        state = model.state_dict()
        state["flag"] = torch.tensor([batches == 3, False, batches != 3])
        states.append(state)
    weights = [10, 1, 4]
    result = _call_fedavg(impl, states, weights)
    counter = result["1.num_batches_tracked"]
    assert counter.dtype == torch.int64 and counter.item() == 3, (
        f"Called fedavg(three BatchNorm state dicts with num_batches_tracked 3, 5 and 4, weights={weights}). "
        f"num_batches_tracked is {describe(counter)}; expected tensor(3) (int64), the FIRST client's value.\n"
        "Because a counter cannot be averaged (the mean 3.4 is not a number of batches): integer entries are "
        "copied from client 0." + cause_line(_fedavg_cause(states, weights, result))
    )
    flag = result["flag"]
    assert flag.dtype == torch.bool and flag.tolist() == [True, False, False], (
        f"Called fedavg(...). The bool entry 'flag' is {describe(flag)}; expected client 0's [True, False, False]."
        + cause_line(_fedavg_cause(states, weights, result))
    )
    _assert_fedavg(result, states, weights, "floating buffers (running_mean, running_var) are averaged like weights.")


@pytest.mark.exercise("fedavg")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_fedavg_keeps_the_dtype_and_rounds_once(impl, dtype):
    gen = generator(11)
    states = [{"w": randn(gen, 64, scale=3.0).to(dtype), "b": randn(gen, 5).to(dtype)} for _ in range(9)]
    weights = [3, 1, 4, 1, 5, 9, 2, 6, 5]
    result = _call_fedavg(impl, states, weights)
    call = _fedavg_call(states, weights)
    for name in ("w", "b"):
        got = result[name]
        assert got.dtype == dtype, f"Called {call}. result[{name!r}] has dtype {got.dtype}; expected {dtype}."
        total = sum(weights)
        exact = sum(w / total * s[name].double() for w, s in zip(weights, states, strict=True))
        terms = sum(w / total * s[name].double().abs() for w, s in zip(weights, states, strict=True))
        # half a step of the dtype around the exact value, plus what float32 accumulation may add
        allowed = torch.finfo(dtype).eps / 2 * exact.abs() * (1 + 1e-6) + 8 * 2.0**-24 * terms
        off = (got.double() - exact).abs()
        worst = int(torch.argmax(off - allowed))
        assert bool((off <= allowed).all()), (
            f"Called {call}.\nresult[{name!r}][{worst}] is {got[worst].item()!r}; the exact weighted mean is "
            f"{exact[worst].item()!r}, so it is {off[worst].item():.3g} off (allowed {allowed[worst].item():.3g}).\n"
            f"Because the sum must be accumulated in float32 or wider and rounded to {dtype} once at the end: a sum "
            f"in {dtype} rounds after every client." + cause_line(_fedavg_cause(states, weights, result))
        )
    meta = [{"w": torch.empty(3, 2, device="meta")}, {"w": torch.empty(3, 2, device="meta")}]
    result = _call_fedavg(impl, meta, [1, 2])
    got = result["w"]
    assert got.device.type == "meta" and got.shape == (3, 2) and got.dtype == torch.float32, (
        f"Called fedavg(two states with 'w' of shape (3, 2) on the meta device, [1, 2]). Returned {describe(got)} on "
        f"{got.device}; expected a (3, 2) float32 tensor on the meta device: create new tensors where the input lives."
    )


@pytest.mark.exercise("fedavg")
def test_fedavg_result_has_no_autograd_history(impl):
    models = [_mlp(seed) for seed in (1, 2)]
    states = [dict(m.named_parameters()) for m in models]  # Parameters that require grad
    result = _call_fedavg(impl, states, [1, 2])
    history = [k for k, t in result.items() if t.requires_grad or t.grad_fn is not None]
    assert not history, (
        f"Called fedavg([two dicts of nn.Parameters], weights=[1, 2]). The result's {history} require grad.\nBecause "
        "an average of weights is not part of a training graph: compute under torch.no_grad() so the result holds "
        "plain tensors." + cause_line(_fedavg_cause(states, [1, 2], result))
    )
    _assert_fedavg(result, states, [1, 2], "each entry is the weighted mean of the clients' tensors.")


def _bad_fedavg_cases():
    a = {"w": torch.ones(2, 3, dtype=DT), "b": torch.zeros(3, dtype=DT)}
    b = {"w": torch.ones(2, 3, dtype=DT), "b": torch.ones(3, dtype=DT)}
    return [
        ("no clients", [], None, None),
        ("other keys", [a, {"w": b["w"], "c": b["b"]}], [1, 1], "c"),
        ("a missing key", [a, {"w": b["w"]}], [1, 1], "b"),
        ("an extra key", [a, {**b, "extra": b["b"]}], [1, 1], "extra"),
        ("other shapes", [a, {"w": torch.ones(3, 2, dtype=DT), "b": b["b"]}], [1, 1], "w"),
        ("shapes that broadcast", [a, {"w": b["w"], "b": torch.ones(1, 3, dtype=DT)}], [1, 1], "b"),
        ("other dtypes", [a, {"w": b["w"], "b": b["b"].float()}], [1, 1], "b"),
        # integer entries are not averaged, but they must match between clients all the same
        ("counters of other dtypes",
         [{**a, "steps": torch.tensor(3)}, {**b, "steps": torch.tensor(5, dtype=torch.int32)}], [1, 1], "steps"),
        ("counters of other shapes", [{**a, "steps": torch.tensor(3)}, {**b, "steps": torch.tensor([5])}], [1, 1],
         "steps"),
        ("too few weights", [a, b], [1], "1"),
        ("too many weights", [a, b], [1, 2, 3], "3"),
        ("a negative weight", [a, b], [3, -1], "-1"),
        ("a nan weight", [a, b], [1.0, float("nan")], "nan"),
        ("an inf weight", [a, b], [1.0, float("inf")], "inf"),
        ("weights summing to 0", [a, b], [0, 0], "0"),
        ("a bool weight", [a, b], [True, 2], "True"),
        ("a string weight", [a, b], ["3", 2], "3"),
        ("bool weights in a tensor", [a, b], torch.tensor([True, True]), None),
        ("a negative weight in a tensor", [a, b], torch.tensor([2.0, -0.5]), "-0.5"),
        ("a nan weight in a tensor", [a, b], torch.tensor([1.0, float("nan")]), "nan"),
        ("an inf weight in a tensor", [a, b], torch.tensor([float("inf"), 1.0], dtype=DT), "inf"),
        ("2-D weights", [a, b], torch.ones(2, 1), None),
        ("0-d weights", [a], torch.tensor(1.0), None),
    ]


@pytest.mark.exercise("fedavg")
@pytest.mark.parametrize(("what", "states", "weights", "named"), _bad_fedavg_cases(),
                         ids=[case[0] for case in _bad_fedavg_cases()])
def test_fedavg_rejects_bad_input(impl, what, states, weights, named):
    call = _fedavg_call(states, weights)
    message = value_error_message(call, lambda: impl.fedavg(states, weights), what)
    if named is not None:
        assert named in message, (
            f"Called {call} ({what}). The ValueError says {message!r}; it must name the offending value "
            f"{named}."
        )


# --------------------------------------------------------------------------------------------------
# per_sample_grads


def _classifier(seed: int, dtype=DT, width: int = 6, inputs: int = 4, classes: int = 3) -> nn.Module:
    """Linear -> LayerNorm -> Tanh -> Linear, seeded, with the LayerNorm gain frozen (requires_grad=False)."""
    with seeded(seed):
        model = nn.Sequential(nn.Linear(inputs, width), nn.LayerNorm(width), nn.Tanh(), nn.Linear(width, classes))
    refill_(model.to(dtype), seed, scale=0.7)
    model[1].weight.requires_grad_(False)
    return model


class TinyLM(nn.Module):
    """Token ids (B, T) -> logits (B, T, V); the output matrix is the embedding matrix (tied weights)."""

    def __init__(self, vocab: int = 7, width: int = 5):
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.norm(self.embed(ids))))


def _token_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def _squared_error(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return ((out - target) ** 2).mean()


def _loop_grads(model: nn.Module, loss_fn, x: torch.Tensor, y: torch.Tensor) -> dict:
    """The checks' own per-example gradients: one backward pass per example, on a copy of the model."""
    model = copy.deepcopy(model)
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    rows = [torch.autograd.grad(loss_fn(model(x[i:i + 1]), y[i:i + 1]), [p for _, p in named])
            for i in range(x.shape[0])]
    return {name: torch.stack([row[j] for row in rows]) if rows else p.new_zeros((0, *p.shape))
            for j, (name, p) in enumerate(named)}


def _model_snapshot(model: nn.Module) -> dict:
    return {"training": model.training,
            "params": {n: (p.detach().clone(), p.requires_grad, None if p.grad is None else p.grad.clone())
                       for n, p in model.named_parameters()}}


def _assert_model_untouched(model: nn.Module, before: dict, call: str, what: str) -> None:
    assert model.training == before["training"], (
        f"Called {call}. The model was in {'train' if before['training'] else 'eval'} mode and is now in "
        f"{'train' if model.training else 'eval'} mode.\nBecause {what} must leave the caller's model as it found "
        "it: do not call model.train() or model.eval() (or put the mode back)."
    )
    for name, p in model.named_parameters():
        value, requires_grad, grad = before["params"][name]
        assert torch.equal(p.detach(), value) and p.requires_grad == requires_grad, (
            f"Called {call}. The parameter {name!r} changed (values or requires_grad); {what} must not modify it."
        )
        same_grad = (p.grad is None) if grad is None else (p.grad is not None and torch.equal(p.grad, grad))
        assert same_grad, (
            f"Called {call}. The .grad of {name!r} went from {describe(grad)} to {describe(p.grad)}.\nBecause {what} "
            "returns the gradients and leaves .grad alone: a loop with loss.backward() fills (and accumulates into) "
            "it, torch.func.grad does not."
        )


def _psg_call(model, x, y, loss_name: str) -> str:
    return f"per_sample_grads({type(model).__name__}(...), {loss_name}, {describe(x)}, {describe(y)})"


def _check_psg(impl, model, loss_fn, x, y, loss_name: str, tolerance=None) -> dict:
    """Call per_sample_grads and check every promise against the per-example loop; returns the result."""
    tolerance = tolerance or TIGHT
    pristine_x, pristine_y, before = x.clone(), y.clone(), _model_snapshot(model)
    call = _psg_call(model, x, y, loss_name)
    result = impl.per_sample_grads(model, loss_fn, x, y)
    assert _same_tensor(x, pristine_x) and _same_tensor(y, pristine_y), f"Called {call}. It modified x or y in place."
    _assert_model_untouched(model, before, call, "per_sample_grads")
    expected = _loop_grads(model, loss_fn, x, y)
    history = [n for n, g in result.items() if isinstance(g, torch.Tensor) and g.requires_grad] if isinstance(
        result, dict) else []
    assert not history, f"Called {call}. The gradients of {history} require grad: return them without autograd history."
    problem = _dict_problem(result, expected, **tolerance)
    if problem:
        cause = likely_cause(KATA, "per_sample_grads", lambda f: f(copy.deepcopy(model), loss_fn, x.clone(), y.clone()),
                             matches=_matches(result if isinstance(result, dict) else {}, 1e-12, 1e-14))
        raise AssertionError(
            f"Called {call}.\nReturned gradients that differ from a loop over the examples: {problem}.\nBecause the "
            f"result has one entry per parameter that requires grad ({list(expected)}, in named_parameters order), "
            "each (B, *param.shape), row i the gradient of loss_fn(model(x[i:i+1]), y[i:i+1]) alone."
            + cause_line(cause)
        )
    return result


@pytest.mark.exercise("per_sample_grads")
@given(seeds, st.integers(1, 5), st.booleans(), st.booleans())
@settings(max_examples=10)
def test_per_sample_grads_equal_a_loop_over_examples(impl, seed, batch, strided, train):
    gen = generator(seed)
    model = _classifier(seed).train(train)
    model[3].bias.grad = randn(gen, 3)  # a stale .grad, which must stay as it is
    x = randn(gen, 4, batch, scale=1.5).t() if strided else randn(gen, batch, 4, scale=1.5)
    y = torch.randint(0, 3, (batch,), generator=gen)
    _check_psg(impl, model, F.cross_entropy, x, y, "F.cross_entropy")


@pytest.mark.exercise("per_sample_grads")
@given(seeds, st.integers(1, 4))
@settings(max_examples=5)
def test_per_sample_grads_of_a_token_model_with_tied_weights(impl, seed, batch):
    gen = generator(seed)
    with seeded(seed):
        model = TinyLM().to(DT)
    refill_(model, seed, scale=0.8)
    ids = torch.randint(0, 7, (batch, 5), generator=gen)
    targets = torch.randint(0, 7, (batch, 5), generator=gen)
    result = _check_psg(impl, model, _token_loss, ids, targets, "cross_entropy over tokens")
    assert list(result) == ["embed.weight", "norm.weight", "norm.bias"]


class BatchOfOne(nn.Module):
    """Wraps a model; fails, with a message for the learner, unless it is called on a batch of ONE example."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.dim() == 2 and x.shape[0] == 1, (
            f"per_sample_grads called the model on an input of shape {tuple(x.shape)}; expected (1, 4), a batch of "
            "ONE example.\nBecause the docstring calls model(x[i:i+1]): inside vmap each example comes without its "
            "batch dimension, so give it back with xi.unsqueeze(0) (and yi.unsqueeze(0) for the loss). A model or a "
            "loss that needs the batch dimension (flatten(1), a mean over dim 0) fails on an unbatched example."
        )
        return self.inner(x)


def _batch_of_one_loss(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    assert out.dim() == 2 and out.shape[0] == 1 and target.shape == (1,), (
        f"per_sample_grads called loss_fn with output {tuple(out.shape)} and target {tuple(target.shape)}; expected "
        "(1, 3) and (1,): loss_fn(model(x[i:i+1]), y[i:i+1]) sees a batch of ONE example (yi.unsqueeze(0))."
    )
    return F.cross_entropy(out, target)


@pytest.mark.exercise("per_sample_grads")
def test_per_sample_grads_call_the_model_and_loss_on_a_batch_of_one(impl):
    gen = generator(14)
    model = BatchOfOne(_classifier(14))
    x, y = randn(gen, 3, 4), torch.tensor([2, 0, 1])
    _check_psg(impl, model, _batch_of_one_loss, x, y, "cross-entropy that checks its batch of one")


@pytest.mark.exercise("per_sample_grads")
def test_per_sample_grads_known_values_and_sizes(impl):
    model = nn.Linear(2, 1, bias=False).to(DT)
    with torch.no_grad():
        model.weight.fill_(1.0)
    x, y = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=DT), torch.zeros(2, 1, dtype=DT)
    result = _check_psg(impl, model, _squared_error, x, y, "squared error")
    assert_close(result["weight"], torch.tensor([[[2.0, 0.0]], [[0.0, 8.0]]], dtype=DT),
                 call=_psg_call(model, x, y, "squared error") + "['weight']",
                 because="example 0 predicts 1 (gradient 2 * 1 * [1, 0]) and example 1 predicts 2 (2 * 2 * [0, 2]).")
    empty = _check_psg(impl, _classifier(2), F.cross_entropy, torch.zeros(0, 4, dtype=DT),
                       torch.zeros(0, dtype=torch.long), "F.cross_entropy")
    assert empty["0.weight"].shape == (0, 6, 4)


@pytest.mark.exercise("per_sample_grads")
def test_per_sample_grads_keep_the_parameters_dtype_and_device(impl):
    gen = generator(4)
    model = _classifier(4).float()
    x, y = randn(gen, 3, 4, dtype=torch.float32), torch.tensor([0, 2, 1])
    result = _check_psg(impl, model, F.cross_entropy, x, y, "F.cross_entropy", {"rtol": 1e-4, "atol": 1e-5})
    assert all(g.dtype == torch.float32 for g in result.values())
    meta = _classifier(5).to("meta")
    call = _psg_call(meta, torch.empty(3, 4, device="meta"), torch.empty(3, dtype=torch.long, device="meta"), "F.ce")
    result = impl.per_sample_grads(meta, F.cross_entropy, torch.empty(3, 4, device="meta", dtype=DT),
                                   torch.zeros(3, dtype=torch.long, device="meta"))
    for name, p in meta.named_parameters():
        if p.requires_grad:
            got = result[name]
            assert got.device.type == "meta" and got.shape == (3, *p.shape), (
                f"Called {call}. The gradient of {name!r} is {describe(got)} on {got.device}; expected shape "
                f"{(3, *p.shape)} on the meta device, where the model lives."
            )


@pytest.mark.exercise("per_sample_grads")
@pytest.mark.parametrize(("x", "y"), [(torch.zeros(3, 4), torch.zeros(2, dtype=torch.long)),
                                      (torch.zeros(2, 4), torch.zeros(3, dtype=torch.long))], ids=["3-2", "2-3"])
def test_per_sample_grads_rejects_mismatched_batches(impl, x, y):
    with pytest.raises(ValueError) as info:
        impl.per_sample_grads(_classifier(1).float(), F.cross_entropy, x, y)
    message = str(info.value)
    assert "3" in message and "2" in message, (
        f"Called {_psg_call(nn.Sequential(), x, y, 'F.cross_entropy')}. The ValueError says {message!r}; it must "
        "name both batch sizes (or shapes)."
    )


# --------------------------------------------------------------------------------------------------
# dp_sgd_step


def _clipped_mean(model, loss_fn, x, y, max_grad_norm: float) -> dict:
    """The checks' own mean of the clipped per-example gradients, from the per-example loop."""
    grads = _loop_grads(model, loss_fn, x, y)
    batch = x.shape[0]
    norms = torch.stack([g.reshape(batch, -1).pow(2).sum(dim=1) for g in grads.values()]).sum(dim=0).sqrt()
    factors = torch.where(norms > max_grad_norm, max_grad_norm / norms, torch.ones_like(norms))
    return {n: (g * factors.reshape(batch, *([1] * (g.ndim - 1)))).sum(dim=0) / batch for n, g in grads.items()}


def _grads(model) -> dict:
    return {n: p.grad for n, p in model.named_parameters() if p.requires_grad}


def _dp_call(model, loss_name, x, y, optimizer, max_grad_norm, noise_multiplier, generator=None) -> str:
    gen = "None" if generator is None else "a seeded torch.Generator"
    return (f"dp_sgd_step({type(model).__name__}(...), {loss_name}, {describe(x)}, {describe(y)}, {optimizer}, "
            f"max_grad_norm={max_grad_norm!r}, noise_multiplier={noise_multiplier!r}, generator={gen})")


def _sgd_name(lr: float) -> str:
    return f"torch.optim.SGD(model.parameters(), lr={lr})"


def _dp_cause(model, loss_fn, x, y, lr, max_grad_norm, noise_multiplier, seed, actual: dict):
    """A function that finds the catalogued mistake whose .grad after the step equals ``actual``."""
    def run(candidate):
        fresh = copy.deepcopy(model)
        optimizer = torch.optim.SGD(fresh.parameters(), lr=lr)
        candidate(fresh, loss_fn, x.clone(), y.clone(), optimizer, max_grad_norm, noise_multiplier, generator(seed))
        return {n: g for n, g in _grads(fresh).items()}

    clean = {n: g for n, g in actual.items() if isinstance(g, torch.Tensor)}
    return lambda: likely_cause(KATA, "dp_sgd_step", run, matches=_matches(clean, 1e-12, 1e-14))


@pytest.mark.exercise("dp_sgd_step")
@given(seeds, st.integers(1, 5), st.sampled_from([0.05, 0.3, 1.0, 1e3]), st.booleans())
@settings(max_examples=10)
def test_dp_sgd_without_noise_steps_with_the_mean_of_clipped_gradients(impl, seed, batch, max_grad_norm, train):
    gen = generator(seed)
    model = _classifier(seed).train(train)
    x = randn(gen, batch, 4, scale=2.0)
    x[0] *= 10  # one long gradient next to short ones: clipping must be per example
    y = torch.randint(0, 3, (batch,), generator=gen)
    before = copy.deepcopy(model)
    pristine_x, pristine_y = x.clone(), y.clone()
    for p in model.parameters():  # stale gradients, to be replaced (never added to)
        p.grad = torch.full_like(p, 0.5) if p.requires_grad else None
    lr = 0.1
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    call = _dp_call(model, "F.cross_entropy", x, y, _sgd_name(lr), max_grad_norm, 0.0, generator(seed))
    loss = impl.dp_sgd_step(model, F.cross_entropy, x, y, optimizer, max_grad_norm, 0.0, generator(seed))
    assert _same_tensor(x, pristine_x) and _same_tensor(y, pristine_y), f"Called {call}. It modified x or y in place."
    assert model.training == train, f"Called {call}. It changed the model's train()/eval() mode; leave it as it was."
    expected = _clipped_mean(before, F.cross_entropy, x, y, max_grad_norm)
    actual = _grads(model)
    problem = _dict_problem(actual, expected, **TIGHT)
    assert problem is None, (
        f"Called {call}.\nAfterwards the parameters' .grad differ from the mean of the clipped per-example gradients: "
        f"{problem}.\nBecause with noise_multiplier=0 the private gradient is exactly (1/B) sum_i g_i * min(1, C / "
        "||g_i||), ||g_i|| one norm over all trainable parameters of example i, and it REPLACES the old .grad."
        + cause_line(_dp_cause(before, F.cross_entropy, x, y, lr, max_grad_norm, 0.0, seed, actual))
    )
    assert model[1].weight.grad is None and torch.equal(model[1].weight, before[1].weight), (
        f"Called {call}. The frozen parameter '1.weight' (requires_grad=False) or its .grad changed; leave it alone."
    )
    stepped = {n: p.detach() for n, p in before.named_parameters() if p.requires_grad}
    stepped = {n: v - lr * expected[n] for n, v in stepped.items()}
    problem = _dict_problem({n: p.detach() for n, p in model.named_parameters() if p.requires_grad}, stepped, **TIGHT)
    assert problem is None, (
        f"Called {call}.\nThe parameters after the call are not one SGD step with the private gradient: {problem}.\n"
        "Because dp_sgd_step calls optimizer.step() exactly once, after storing the gradient in .grad."
    )
    with torch.no_grad():
        expected_loss = F.cross_entropy(before(x), y)
    assert isinstance(loss, torch.Tensor) and loss.ndim == 0 and not loss.requires_grad, (
        f"Called {call}. Returned {describe(loss)} (requires_grad={getattr(loss, 'requires_grad', None)}); expected a "
        "0-dimensional tensor without autograd history: loss_fn(model(x), y) before the step."
    )
    assert_close(loss, expected_loss, call=call, **TIGHT,
                 because="it returns loss_fn(model(x), y) computed BEFORE the optimizer step.")


@pytest.mark.exercise("dp_sgd_step")
@given(seeds, st.sampled_from([0.05, 0.5, 3.0]))
@settings(max_examples=5)
def test_dp_sgd_each_clipped_gradient_has_norm_at_most_c(impl, seed, max_grad_norm):
    gen = generator(seed)
    model = _classifier(seed)
    x, y = randn(gen, 3, 4, scale=3.0), torch.randint(0, 3, (3,), generator=gen)
    raw = _loop_grads(model, F.cross_entropy, x, y)
    for i in range(3):  # a batch of one: the private gradient IS that example's clipped gradient
        fresh = copy.deepcopy(model)
        optimizer = torch.optim.SGD(fresh.parameters(), lr=0.0)
        xi, yi = x[i:i + 1], y[i:i + 1]
        impl.dp_sgd_step(fresh, F.cross_entropy, xi, yi, optimizer, max_grad_norm, 0.0, generator(seed))
        got = _grads(fresh)
        norm = math.sqrt(sum(float(g.double().pow(2).sum()) for g in got.values() if g is not None))
        raw_norm = math.sqrt(sum(float(g[i].pow(2).sum()) for g in raw.values()))
        call = _dp_call(model, "F.cross_entropy", xi, yi, _sgd_name(0.0), max_grad_norm, 0.0, generator(seed))
        assert norm <= max_grad_norm * (1 + 1e-12) and math.isclose(norm, min(raw_norm, max_grad_norm), rel_tol=1e-9), (
            f"Called {call}.\nThe example's gradient has norm {raw_norm:.6g} over all trainable parameters; after "
            f"clipping to C = {max_grad_norm} its norm is {norm:.6g}; expected min(norm, C) = "
            f"{min(raw_norm, max_grad_norm):.6g}.\nBecause clipping scales the WHOLE gradient (one flat vector over "
            "all parameters) by min(1, C / norm): every clipped gradient has norm <= C, and a short one is kept."
            + cause_line(_dp_cause(model, F.cross_entropy, xi, yi, 0.0, max_grad_norm, 0.0, seed, got))
        )


@pytest.mark.exercise("dp_sgd_step")
def test_dp_sgd_with_a_large_c_and_no_noise_is_plain_sgd(impl):
    gen = generator(8)
    model = _classifier(8)
    x, y = randn(gen, 6, 4), torch.randint(0, 3, (6,), generator=gen)
    plain = copy.deepcopy(model)
    F.cross_entropy(plain(x), y).backward()  # PyTorch's own gradient of the mean loss
    expected = _grads(plain)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    impl.dp_sgd_step(model, F.cross_entropy, x, y, optimizer, 1e6, 0.0, generator(1))
    actual = _grads(model)
    problem = _dict_problem(actual, expected, **TIGHT)
    assert problem is None, (
        f"Called {_dp_call(model, 'F.cross_entropy', x, y, _sgd_name(0.1), 1e6, 0.0, generator(1))}.\nThe .grad "
        f"differs from loss.backward() of the mean loss: {problem}.\nBecause when C exceeds every example's gradient "
        "norm and there is no noise, DP-SGD is plain SGD: the mean of the per-example gradients."
        + cause_line(_dp_cause(model, F.cross_entropy, x, y, 0.1, 1e6, 0.0, 1, actual))
    )


@pytest.mark.exercise("dp_sgd_step")
def test_dp_sgd_zero_gradient_stays_zero(impl):
    gen = generator(6)
    with seeded(6):
        model = nn.Sequential(nn.Linear(3, 4, bias=False), nn.Tanh(), nn.Linear(4, 2, bias=False)).to(DT)
    refill_(model, 6)
    x = randn(gen, 3, 3)
    x[1] = 0.0  # no input, no bias: every gradient of this example is exactly 0
    y = randn(gen, 3, 2)
    before = copy.deepcopy(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    impl.dp_sgd_step(model, _squared_error, x, y, optimizer, 0.5, 0.0, generator(2))
    actual = _grads(model)
    problem = _dict_problem(actual, _clipped_mean(before, _squared_error, x, y, 0.5), **TIGHT)
    assert problem is None, (
        f"Called {_dp_call(model, 'squared error', x, y, _sgd_name(0.1), 0.5, 0.0, generator(2))} where example 1 "
        f"has a zero gradient.\nThe .grad is wrong: {problem}.\nBecause a zero gradient clips to 0: min(1, C / 0) is "
        "1, while g * C / ||g|| computes 0 / 0 = nan."
        + cause_line(_dp_cause(before, _squared_error, x, y, 0.1, 0.5, 0.0, 2, actual))
    )


@pytest.mark.exercise("dp_sgd_step")
def test_dp_sgd_leaves_frozen_grads_and_takes_int_arguments(impl):
    gen = generator(15)
    model = _classifier(15)
    stale = torch.full_like(model[1].weight, 0.25)
    model[1].weight.grad = stale.clone()  # the caller's .grad on a frozen parameter (not in the optimizer)
    x, y = randn(gen, 4, 4, scale=2.0), torch.randint(0, 3, (4,), generator=gen)
    before = copy.deepcopy(model)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    call = _dp_call(model, "F.cross_entropy", x, y, "torch.optim.SGD(<the trainable parameters>, lr=0.1)", 1, 0,
                    generator(3))
    try:
        impl.dp_sgd_step(model, F.cross_entropy, x, y, optimizer, 1, 0, generator(3))
    except ValueError as error:
        raise AssertionError(
            f"Called {call}. It raised ValueError({str(error)!r}); expected one step.\nBecause max_grad_norm=1 and "
            "noise_multiplier=0 are finite numbers (> 0 and >= 0): accept any real number that is not a bool (and "
            "not nan or inf), not only floats."
        ) from None
    frozen = model[1].weight.grad
    assert frozen is not None and torch.equal(frozen, stale), (
        f"Called {call} with a .grad of 0.25 everywhere on the frozen parameter '1.weight'. Afterwards its .grad is "
        f"{describe(frozen)}.\nBecause parameters that do not require grad are left alone, their .grad too: set the "
        "private gradient on the trainable parameters only, with no model.zero_grad() or p.grad = None on the others."
        + cause_line(lambda: likely_cause(KATA, "dp_sgd_step", lambda f: _frozen_grad_after(f, before, x, y),
                                          matches=lambda got: got is None if frozen is None
                                          else got is not None and torch.equal(got, frozen)))
    )
    actual = _grads(model)
    problem = _dict_problem(actual, _clipped_mean(before, F.cross_entropy, x, y, 1.0), **TIGHT)
    assert problem is None, (
        f"Called {call}.\nThe .grad differs from the mean of the clipped per-example gradients: {problem}.\nBecause "
        "the integer arguments 1 and 0 mean C = 1.0 and sigma = 0.0."
    )


def _frozen_grad_after(candidate, model, x, y):
    model = copy.deepcopy(model)
    model[1].weight.grad = torch.full_like(model[1].weight, 0.25)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    candidate(model, F.cross_entropy, x.clone(), y.clone(), optimizer, 1, 0, generator(3))
    return model[1].weight.grad


def _normal_cdf(z: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1 + torch.erf(z / math.sqrt(2)))


def _assert_standard_normal(z: torch.Tensor, call: str, because: str, cause) -> None:
    """Mean, std and KS distance of ``z`` against N(0, 1), each bound at about 1e-6 false alarms."""
    n = z.numel()
    mean, std = float(z.mean()), float(z.std())
    ks = float((torch.arange(1, n + 1, dtype=DT) / n - _normal_cdf(z.sort().values)).abs().max()) + 0.5 / n
    problems = []
    if abs(mean) > 5.5 / math.sqrt(n):
        problems.append(f"their mean is {mean:.4g} (allowed |mean| <= {5.5 / math.sqrt(n):.3g})")
    if abs(std - 1) > 5.5 / math.sqrt(2 * n):
        problems.append(f"their standard deviation is {std:.4g} (allowed 1 +- {5.5 / math.sqrt(2 * n):.3g})")
    if ks > 2.7 / math.sqrt(n):
        problems.append(f"their distribution is {ks:.3g} away from N(0, 1) (Kolmogorov-Smirnov; allowed "
                        f"{2.7 / math.sqrt(n):.3g})")
    if problems:
        raise AssertionError(
            f"Called {call}.\nThe noise, z = (.grad - mean of clipped gradients) * B / (noise_multiplier * C) over "
            f"{n} numbers, should be independent N(0, 1) draws, but {'; '.join(problems)}.\nBecause {because}"
            + cause_line(cause)
        )


@pytest.mark.exercise("dp_sgd_step")
@pytest.mark.parametrize(("noise_multiplier", "max_grad_norm", "batch"), [(1.3, 0.4, 7), (0.5, 2.0, 3)])
@given(seed=seeds)
@settings(max_examples=3)
def test_dp_sgd_noise_has_std_sigma_c_over_b(impl, noise_multiplier, max_grad_norm, batch, seed):
    gen = generator(seed)
    model = _classifier(seed, width=48, inputs=16, classes=24)
    x, y = randn(gen, batch, 16, scale=2.0), torch.randint(0, 24, (batch,), generator=gen)
    before = copy.deepcopy(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    call = _dp_call(model, "F.cross_entropy", x, y, _sgd_name(0.1), max_grad_norm, noise_multiplier, generator(seed))
    impl.dp_sgd_step(model, F.cross_entropy, x, y, optimizer, max_grad_norm, noise_multiplier, generator(seed))
    clean = _clipped_mean(before, F.cross_entropy, x, y, max_grad_norm)
    actual = _grads(model)
    assert model[1].weight.grad is None, f"Called {call}. The frozen parameter '1.weight' got a .grad; leave it alone."
    shapes = {n: g.shape if isinstance(g, torch.Tensor) else None for n, g in actual.items()}
    assert shapes == {n: g.shape for n, g in clean.items()}, f"Called {call}. The .grad shapes are {shapes}."
    z = {n: (actual[n] - clean[n]) * batch / (noise_multiplier * max_grad_norm) for n in clean}
    silent = [n for n, v in z.items() if v.numel() > 1 and bool((v == v.reshape(-1)[0]).all())]
    cause = _dp_cause(before, F.cross_entropy, x, y, 0.1, max_grad_norm, noise_multiplier, seed, actual)
    assert not silent, (
        f"Called {call}. The noise on {silent} is the same number everywhere (or none at all); every one of the P "
        "numbers of the gradient gets its own independent draw." + cause_line(cause)
    )
    _assert_standard_normal(torch.cat([v.reshape(-1) for v in z.values()]), call,
                            "N(0, (sigma * C)^2) is added to the SUM of the clipped gradients, then the sum is divided "
                            "by B: the noise on the mean has standard deviation sigma * C / B.", cause)


@pytest.mark.exercise("dp_sgd_step")
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_dp_sgd_noise_is_drawn_in_the_parameters_dtype(impl, dtype):
    with seeded(3):
        model = nn.Sequential(nn.Linear(20, 30, bias=False), nn.Tanh(), nn.Linear(30, 20, bias=False)).to(dtype)
    x = torch.zeros(1, 20, dtype=dtype)  # every gradient is 0: the private gradient is the noise itself
    y = torch.ones(1, 20, dtype=dtype)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    call = _dp_call(model, "squared error", x, y, _sgd_name(0.0), 2.0, 0.5, generator(12))
    impl.dp_sgd_step(model, _squared_error, x, y, optimizer, 2.0, 0.5, generator(12))  # sigma * C = 1, B = 1
    grads = _grads(model)
    assert all(isinstance(g, torch.Tensor) and g.dtype == dtype for g in grads.values()), (
        f"Called {call}. The .grad dtypes are {[describe(g) for g in grads.values()]}; expected {dtype}, the "
        "parameters' dtype."
    )
    noise = torch.cat([g.reshape(-1) for g in grads.values()]).double()
    _assert_standard_normal(noise, call, "with all gradients 0, sigma * C = 1 and B = 1, .grad is the noise itself.",
                            None)
    if dtype == torch.float64:
        assert not torch.equal(noise.float().double(), noise), (
            f"Called {call}. Every noise value is a float32 number: the noise was drawn in float32 and then "
            "converted.\nBecause it is drawn in the parameter's dtype: torch.randn(..., dtype=p.dtype, "
            "device=p.device, generator=generator)."
            + cause_line(lambda: likely_cause(
                KATA, "dp_sgd_step",
                lambda f: _noise_only(f, dtype), matches=lambda got: torch.equal(got.float().double(), got)))
        )


@pytest.mark.exercise("dp_sgd_step")
def test_dp_sgd_runs_where_the_model_lives(impl):
    model = _classifier(2).to("meta")
    x = torch.empty(3, 4, dtype=DT, device="meta")
    y = torch.zeros(3, dtype=torch.long, device="meta")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    call = _dp_call(model, "F.cross_entropy", x, y, _sgd_name(0.1), 1.0, 1.0)
    try:
        impl.dp_sgd_step(model, F.cross_entropy, x, y, optimizer, 1.0, 1.0)
    except NotImplementedError:
        raise
    except RuntimeError as error:
        raise AssertionError(
            f"Called {call} with the model, x and y on the meta device. It raised {error!r}.\nBecause every tensor "
            "created inside (the noise above all) must live on the parameter's device: torch.randn(..., "
            "device=p.device), or a model on a GPU fails."
        ) from error
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and p.grad.device == p.device and p.grad.shape == p.shape, (
                f"Called {call}. The .grad of {name!r} is {describe(p.grad)}; expected a {tuple(p.shape)} tensor on "
                "the meta device, where the parameter lives."
            )


def _noise_only(candidate, dtype) -> torch.Tensor:
    with seeded(3):
        model = nn.Sequential(nn.Linear(20, 30, bias=False), nn.Tanh(), nn.Linear(30, 20, bias=False)).to(dtype)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    candidate(model, _squared_error, torch.zeros(1, 20, dtype=dtype), torch.ones(1, 20, dtype=dtype), optimizer,
              2.0, 0.5, generator(12))
    return torch.cat([p.grad.reshape(-1) for p in model.parameters()]).double()


def _noisy_grads(impl, seed_model: int, gen: torch.Generator | None) -> torch.Tensor:
    model = _classifier(seed_model)
    x = randn(generator(seed_model), 4, 4)
    y = torch.tensor([0, 1, 2, 1])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    impl.dp_sgd_step(model, F.cross_entropy, x, y, optimizer, 1.0, 1.0, gen)
    return torch.cat([g.reshape(-1) for g in _grads(model).values()])


@pytest.mark.exercise("dp_sgd_step")
def test_dp_sgd_generator_controls_the_noise(impl):
    state = torch.get_rng_state()
    first, again, other = (_noisy_grads(impl, 5, generator(seed)) for seed in (21, 21, 22))
    call = "dp_sgd_step(model, F.cross_entropy, x, y, SGD, 1.0, 1.0, generator=torch.Generator().manual_seed(s))"
    assert torch.equal(torch.get_rng_state(), state), (
        f"Called {call}. The global random state changed: with a generator, draw the noise from it alone "
        "(torch.randn(..., generator=generator)), never from torch's global generator."
    )
    assert torch.equal(first, again), f"Called {call} twice with s = 21: the gradients differ; the same seed must " \
                                      "give the same noise."
    assert not torch.equal(first, other), (
        f"Called {call} with s = 21 and s = 22: the same gradients. The generator must drive the noise (is it "
        "used, or is a fixed seed used inside?)."
    )
    with seeded(31):
        global_a = _noisy_grads(impl, 5, None)
    with seeded(31):
        global_b = _noisy_grads(impl, 5, None)
    with seeded(32):
        global_c = _noisy_grads(impl, 5, None)
    assert torch.equal(global_a, global_b) and not torch.equal(global_a, global_c), (
        "Called dp_sgd_step(..., generator=None) after torch.manual_seed(31), again after torch.manual_seed(31), "
        "then after torch.manual_seed(32): the first two must agree and the third differ, because generator=None "
        "draws from torch's global generator."
    )


@pytest.mark.exercise("dp_sgd_step")
def test_dp_sgd_over_several_steps_with_adam(impl):
    gen = generator(17)
    model = _classifier(17)
    replica = copy.deepcopy(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    replica_optimizer = torch.optim.Adam(replica.parameters(), lr=0.05)
    for step in range(3):
        x, y = randn(gen, 4, 4, scale=2.0), torch.randint(0, 3, (4,), generator=gen)
        expected = _clipped_mean(replica, F.cross_entropy, x, y, 0.2)
        for name, p in replica.named_parameters():
            if p.requires_grad:
                p.grad = expected[name]
        replica_optimizer.step()
        impl.dp_sgd_step(model, F.cross_entropy, x, y, optimizer, 0.2, 0.0, generator(step))
        problem = _dict_problem(dict(model.named_parameters()), dict(replica.named_parameters()), **TIGHT)
        assert problem is None, (
            f"Called dp_sgd_step(model, F.cross_entropy, x, y, Adam(lr=0.05), 0.2, 0.0) for step {step + 1} of 3 on "
            f"new batches.\nThe parameters differ from Adam steps with the clipped mean gradients: {problem}.\nBecause "
            "each call replaces .grad (never adds to the last step's) and steps the optimizer it is given once, so "
            "its state (Adam's moments) carries over from step to step."
        )


@pytest.mark.exercise("dp_sgd_step")
def test_dp_sgd_leaves_no_per_example_gradients(impl):
    gen = generator(9)
    model = _classifier(9)
    batch = 5
    x, y = randn(gen, batch, 4), torch.randint(0, 3, (batch,), generator=gen)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    call = _dp_call(model, "F.cross_entropy", x, y, _sgd_name(0.1), 1.0, 1.0, generator(1))
    impl.dp_sgd_step(model, F.cross_entropy, x, y, optimizer, 1.0, 1.0, generator(1))
    for name, p in model.named_parameters():
        assert p.grad is None or p.grad.shape == p.shape, (
            f"Called {call}. The .grad of {name!r} has shape {tuple(p.grad.shape)}; it must have the parameter's "
            f"shape {tuple(p.shape)}."
        )
        left = [attr for attr, value in vars(p).items()
                if isinstance(value, torch.Tensor) and value.ndim and value.shape[0] == batch]
        assert not left, (
            f"Called {call}. The parameter {name!r} keeps {left} with one row per example.\nBecause per-example "
            "gradients cost B times the memory of the model: use them, then let them go."
        )


_BAD_DP = [
    ("C = 0", {"max_grad_norm": 0.0}, "0"),
    ("negative C", {"max_grad_norm": -1.5}, "-1.5"),
    ("infinite C", {"max_grad_norm": math.inf}, "inf"),
    ("nan C", {"max_grad_norm": math.nan}, "nan"),
    ("negative sigma", {"noise_multiplier": -0.25}, "-0.25"),
    ("nan sigma", {"noise_multiplier": math.nan}, "nan"),
    ("infinite sigma", {"noise_multiplier": math.inf}, "inf"),
    ("C given as a string", {"max_grad_norm": "1.0"}, "1.0"),
    ("sigma None", {"noise_multiplier": None}, "None"),
    ("empty batch", {"x": torch.zeros(0, 4, dtype=DT), "y": torch.zeros(0, dtype=torch.long)}, None),
    ("mismatched batches", {"x": torch.zeros(3, 4, dtype=DT), "y": torch.zeros(2, dtype=torch.long)}, None),
]


@pytest.mark.exercise("dp_sgd_step")
@pytest.mark.parametrize(("what", "kwargs", "named"), _BAD_DP, ids=[case[0] for case in _BAD_DP])
def test_dp_sgd_rejects_bad_input(impl, what, kwargs, named):
    model = _classifier(1)
    before = copy.deepcopy(model)
    args = {"x": torch.zeros(2, 4, dtype=DT), "y": torch.zeros(2, dtype=torch.long), "max_grad_norm": 1.0,
            "noise_multiplier": 1.0, **kwargs}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    call = _dp_call(model, "F.cross_entropy", args["x"], args["y"], _sgd_name(0.1), args["max_grad_norm"],
                    args["noise_multiplier"], generator(0))
    message = value_error_message(
        call, lambda: impl.dp_sgd_step(model, F.cross_entropy, args["x"], args["y"], optimizer, args["max_grad_norm"],
                                       args["noise_multiplier"], generator(0)), what)
    if named is not None:
        assert named in message, (
            f"Called {call} ({what}). The ValueError says {message!r}; it must name the offending value {named}."
        )
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), before.parameters(), strict=True)), (
        f"Called {call} ({what}). It raised, but only after changing the model: validate first."
    )
