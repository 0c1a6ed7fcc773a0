"""Checks for w13_attention: attention, masks, multi-head self-attention, positions, transformer blocks.

The oracles are PyTorch's own: ``F.scaled_dot_product_attention``, ``nn.MultiheadAttention`` and
``nn.TransformerEncoderLayer`` (weights copied into the learner's modules), plus closed-form formulas.
Everything is float64 and tiny, and every random input comes from a drawn seed: module weights are
overwritten from one (``refill_``) or copied from PyTorch's module, and dropout, which draws from the global
RNG as ``nn.Dropout`` does, runs inside ``seeded``, which restores the global RNG state afterwards.

Checklist notes (CONTRACTS.md items that do not apply, and why):
- Randomness (8): no exercise takes a ``generator``; dropout's documented source is the global RNG
  (``nn.Dropout``), so the checks observe *where* dropout acts and at what rate, never a particular mask.
- State over time (6): the modules keep no state between calls beyond ``train()``/``eval()``, which the
  dropout checks switch in both directions (and the causal/padding checks call each module twice).
- Devices (3): without CUDA, device rules are checked on the ``meta`` device; ``padding_mask`` cannot be,
  because validating the lengths needs their values, which meta tensors lack: its device rule has a
  ``gpu``-marked check (skipped without CUDA).
- Sizes (2): ``SelfAttention`` and ``TransformerBlock`` promise nothing for T = 0; attention's S = 0, L = 0
  and batch 0, ``causal_mask(0)``, ``padding_mask`` with B = 0 or t = 0 and a T = 0 positional encoding are
  checked. The modules take exactly (B, T, E), so there are no other batch layouts to try.
- dtypes (3): the modules compute in their parameters' dtype (the checks use float64 via ``.to``); the
  functions keep the floating dtype of their inputs (float32, float64, bfloat16 checked); masks are bool.
- Bools for ints (10): ``causal_mask(True)`` is ``causal_mask(1)`` (``operator.index`` accepts bools, as
  ``range`` does) and the docstring does not forbid it; bool *lengths* are rejected, as documented.
"""

from __future__ import annotations

import copy
import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import example, given, settings
from hypothesis import strategies as st
from torch import nn

from checks.numerics import assert_close, describe, error_report, format_call, likely_cause
from checks.torch_strategies import generator, randn, refill_, seeded, seeds

pytestmark = pytest.mark.kata("w13_attention")

KATA = "w13_attention"
DT = torch.float64
TIGHT = {"rtol": 1e-7, "atol": 1e-10}  # float64 against PyTorch's float64 (different summation orders)


# --------------------------------------------------------------------------------------------------
# helpers shared by the exercises


def _assert_unchanged(call: str, pristine: dict, given_args: dict, symbol: str, call_with) -> None:
    """Every tensor argument still equals its pristine copy (values, shape, dtype, requires_grad).

    On a failure, ``call_with(candidate, args)`` repeats the call with a catalogued mistake of ``symbol`` on a
    fresh copy of the pristine arguments, to name the mistake that leaves them as the learner's code did.
    """
    for name, before in _tensors(pristine).items():
        after = given_args[name]
        if (after.shape == before.shape and after.dtype == before.dtype
                and after.requires_grad == before.requires_grad and torch.equal(after, before)):
            continue
        change = error_report(after.detach(), before, 0, 0) if after.shape == before.shape else (
            f"its shape went from {tuple(before.shape)} to {tuple(after.shape)}")
        if after.dtype != before.dtype or after.requires_grad != before.requires_grad:
            change = (f"its dtype / requires_grad went from {before.dtype} / {before.requires_grad} to {after.dtype} / "
                      f"{after.requires_grad}")

        def rerun(candidate):
            fresh = _fresh(pristine)
            call_with(candidate, fresh)
            return fresh

        likely = likely_cause(KATA, symbol, rerun, matches=lambda args: all(
            torch.equal(args[n], value) for n, value in _tensors(given_args).items()))
        raise AssertionError(
            f"Called {call}. It modified its argument `{name}` in place: {change}.\nBecause the caller still needs "
            "its inputs: build new tensors (y = x * s, x = x + f(x)) instead of writing into them (x *= s, x += f(x))."
            + (f"\nLikely cause: {likely}" if likely else "")
        )


def _tensors(kwargs: dict) -> dict:
    return {name: value for name, value in kwargs.items() if isinstance(value, torch.Tensor)}


def _fresh(kwargs: dict) -> dict:
    """A copy of the arguments with the same layouts (strides included): the pristine copy kept before a call,
    and the arguments a catalogued mistake runs on."""
    return copy.deepcopy(kwargs)


def _lower_triangle(L: int, S: int | None = None) -> torch.Tensor:
    """The checks' own causal mask (True = may attend); never the learner's."""
    return torch.ones(L, L if S is None else S, dtype=torch.bool).tril()


def _keep_mask(lengths: list[int], t: int) -> torch.Tensor:
    """The checks' own padding mask (True = real token); never the learner's."""
    return torch.arange(t)[None, :] < torch.tensor(lengths, dtype=torch.long)[:, None]


def _linear_named(module: nn.Module, name: str, owner: str, shape: tuple[int, int]) -> nn.Linear:
    layer = getattr(module, name, None)
    assert isinstance(layer, nn.Linear) and tuple(layer.weight.shape) == shape and layer.bias is not None, (
        f"{owner} must have an attribute `{name}` that is an nn.Linear with weight shape {shape} and a bias (see its "
        f"docstring: the checks copy PyTorch's weights in by name); found {layer!r}."
    )
    return layer


def _copy_mha_into(attention: nn.Module, mha: nn.MultiheadAttention) -> None:
    """Copy nn.MultiheadAttention's packed in_proj (q; k; v stacked) and out_proj into query/key/value/out."""
    w_q, w_k, w_v = mha.in_proj_weight.chunk(3)
    b_q, b_k, b_v = mha.in_proj_bias.chunk(3)
    pairs = [("query", w_q, b_q), ("key", w_k, b_k), ("value", w_v, b_v),
             ("out", mha.out_proj.weight, mha.out_proj.bias)]
    with torch.no_grad():
        for name, weight, bias in pairs:
            layer = _linear_named(attention, name, "SelfAttention", tuple(weight.shape))
            layer.weight.copy_(weight)
            layer.bias.copy_(bias)


def _feed_forward_layers(block: nn.Module, E: int, ff: int) -> tuple[nn.Linear, nn.Linear]:
    layers = getattr(block, "feed_forward", None)
    kinds = [type(m).__name__ for m in layers] if isinstance(layers, nn.Sequential) else None
    assert kinds == ["Linear", "ReLU", "Linear"], (
        f"TransformerBlock.feed_forward must be nn.Sequential(nn.Linear({E}, {ff}), nn.ReLU(), nn.Linear({ff}, {E})) "
        f"(the checks copy PyTorch's weights in by position); found {layers!r}."
    )
    return (_linear_named(layers, "0", "TransformerBlock.feed_forward", (ff, E)),
            _linear_named(layers, "2", "TransformerBlock.feed_forward", (E, ff)))


def _layer_norm_named(block: nn.Module, name: str, E: int) -> nn.LayerNorm:
    norm = getattr(block, name, None)
    assert isinstance(norm, nn.LayerNorm) and tuple(norm.normalized_shape) == (E,), (
        f"TransformerBlock.{name} must be nn.LayerNorm({E}); found {norm!r}."
    )
    return norm


def _copy_layer_into(block: nn.Module, layer: nn.TransformerEncoderLayer) -> None:
    """Copy nn.TransformerEncoderLayer weights into attention / feed_forward[0], [2] / norm1 / norm2."""
    E, ff = layer.linear1.in_features, layer.linear1.out_features
    _copy_mha_into(block.attention, layer.self_attn)
    first, last = _feed_forward_layers(block, E, ff)
    targets = [(first, layer.linear1), (last, layer.linear2),
               (_layer_norm_named(block, "norm1", E), layer.norm1), (_layer_norm_named(block, "norm2", E), layer.norm2)]
    with torch.no_grad():
        for mine, theirs in targets:
            mine.weight.copy_(theirs.weight)
            mine.bias.copy_(theirs.bias)


def _assert_parameters(module: nn.Module, expected: dict[str, tuple[int, ...]], call: str) -> None:
    shapes = {name: tuple(p.shape) for name, p in module.named_parameters()}
    assert shapes == expected, (
        f"Called {call}. Its parameters are {shapes}; expected exactly {expected}.\nBecause the docstring fixes the "
        f"layout: missing: {sorted(set(expected) - set(shapes))}, extra: {sorted(set(shapes) - set(expected))} "
        "(anything extra would be trained and saved too)."
    )


# --------------------------------------------------------------------------------------------------
# scaled_dot_product_attention

MASK_KINDS = ["none", "bool", "additive", "additive_inf", "causal"]


@st.composite
def sdpa_cases(draw):
    """(kwargs for SDPA, mask kind): q, k, v with 0-2 batch dims, sizes from 0, contiguous or strided, and one
    kind of mask of any shape that broadcasts to (..., L, S)."""
    gen = generator(draw(seeds))
    batch = tuple(draw(st.lists(st.integers(1, 3), max_size=2)))
    L, S = draw(st.integers(0, 5)), draw(st.integers(0, 5))
    E, Ev = draw(st.integers(1, 6)), draw(st.integers(1, 4))
    kind = draw(st.sampled_from(MASK_KINDS))
    if draw(st.booleans()):  # transposed and sliced views: the layout must not matter
        kwargs = {"q": randn(gen, *batch, E, L, scale=1.5).transpose(-2, -1),
                  "k": randn(gen, *batch, E, S, scale=1.5).transpose(-2, -1),
                  "v": randn(gen, *batch, S, 2 * Ev)[..., ::2]}
    else:
        kwargs = {"q": randn(gen, *batch, L, E, scale=1.5), "k": randn(gen, *batch, S, E, scale=1.5),
                  "v": randn(gen, *batch, S, Ev)}
    full = batch + (L, S)
    mask_shape = tuple(d if draw(st.booleans()) else 1 for d in full)[draw(st.integers(0, len(batch))):]
    mask_shape = mask_shape[:-2] + full[-2:] if draw(st.booleans()) else mask_shape  # often a full (L, S) mask
    if kind == "bool":
        kwargs["attn_mask"] = torch.rand(mask_shape, generator=gen) < 0.7
    elif kind == "additive":
        kwargs["attn_mask"] = randn(gen, *mask_shape, scale=2.0)
    elif kind == "additive_inf":
        removed = torch.rand(mask_shape, generator=gen) < 0.3
        kwargs["attn_mask"] = randn(gen, *mask_shape).masked_fill(removed, float("-inf"))
    elif kind == "causal":
        kwargs["is_causal"] = True
    if draw(st.booleans()):
        kwargs["scale"] = draw(st.sampled_from([0.0, 0.3, 1.0, 2.5]))
    return kwargs, kind


def _allowed(kwargs: dict) -> torch.Tensor:
    """(..., L, S) bool: which key each query may attend to, from the checks' own reading of the mask."""
    q, k = kwargs["q"], kwargs["k"]
    L, S = q.shape[-2], k.shape[-2]
    mask = _lower_triangle(L, S) if kwargs.get("is_causal") else kwargs.get("attn_mask")
    if mask is None:
        mask = torch.ones(L, S, dtype=torch.bool)
    allowed = mask if mask.dtype == torch.bool else torch.isfinite(mask)
    return allowed.expand(q.shape[:-2] + (L, S))


def _torch_sdpa(kwargs: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """PyTorch's output and weights (weights = SDPA applied to identity values), 0 on rows with no key."""
    q, k, v = (kwargs[name].to(DT) for name in "qkv")
    options = {name: kwargs[name] for name in ("attn_mask", "is_causal", "scale") if name in kwargs}
    if "attn_mask" in options and options["attn_mask"].is_floating_point():
        options["attn_mask"] = options["attn_mask"].to(DT)
    if options.get("scale") == 0.0:
        # torch multiplies the masked scores by the scale, and -inf * 0 is nan; zero queries with scale 1
        # give the same all-zero scores, so the same (uniform over the allowed keys) attention.
        q, options["scale"] = torch.zeros_like(q), 1.0
    out = F.scaled_dot_product_attention(q, k, v, **options)
    eye = torch.eye(k.shape[-2], dtype=DT).expand(*k.shape[:-1], k.shape[-2])
    weights = F.scaled_dot_product_attention(q, k, eye, **options)
    alive = _allowed(kwargs).any(dim=-1, keepdim=True)
    # torch's SDPA gives nan on a fully masked row in some versions; this kata's convention is 0
    return torch.where(alive, out, 0.0), torch.where(alive, weights, 0.0)


def _sdpa_call(kwargs: dict) -> str:
    return f"scaled_dot_product_attention({', '.join(f'{name}={describe(v)}' for name, v in kwargs.items())})"


def _call_sdpa(impl, kwargs: dict):
    """Call the learner's SDPA on the very tensors of ``kwargs``, then check the result's type and shapes."""
    call = _sdpa_call(kwargs)  # before the call: the arguments as given
    result = impl.scaled_dot_product_attention(**kwargs)
    assert isinstance(result, tuple) and len(result) == 2, (
        f"Called {call}. Returned {type(result).__name__}; expected a tuple (output, weights)."
    )
    out, weights = result
    q, k, v = kwargs["q"], kwargs["k"], kwargs["v"]
    lead = torch.broadcast_shapes(q.shape[:-2], k.shape[:-2])
    for name, got, shape in (("output", out, lead + (q.shape[-2], v.shape[-1])),
                             ("weights", weights, lead + (q.shape[-2], k.shape[-2]))):
        assert isinstance(got, torch.Tensor) and tuple(got.shape) == shape, (
            f"Called {call}. The {name} is {describe(got)}; expected shape {shape}: output (..., L, Ev) and weights "
            "(..., L, S), one row per query."
        )
    return out, weights


def _sdpa_cause(kwargs: dict, part: int, actual) -> str | None:
    """The catalogued mistake whose output (part 0) or weights (part 1) equal the learner's on these arguments."""
    return likely_cause(KATA, "scaled_dot_product_attention", lambda f: f(**_fresh(kwargs))[part], actual, **TIGHT)


@pytest.mark.exercise("scaled_dot_product_attention")
@given(sdpa_cases())
@example(({"q": torch.ones(2, 3, 4, dtype=DT), "k": torch.ones(2, 0, 4, dtype=DT),
           "v": torch.ones(2, 0, 2, dtype=DT)}, "none"))  # no keys at all: every row is fully masked
def test_sdpa_matches_torch(impl, case):
    kwargs, kind = case
    pristine = _fresh(kwargs)
    call = _sdpa_call(kwargs)
    out, weights = _call_sdpa(impl, kwargs)
    _assert_unchanged(call, pristine, kwargs, "scaled_dot_product_attention", lambda f, args: f(**args))
    expected_out, expected_weights = _torch_sdpa(kwargs)
    because = (f"it must equal torch.nn.functional.scaled_dot_product_attention (mask kind: {kind}); rows whose "
               "keys are all masked, or that have no keys at all, must be 0.")
    weights_cause = _sdpa_cause(kwargs, 1, weights) if error_report(weights, expected_weights, **TIGHT) else None
    assert_close(weights, expected_weights, call=call + " -> weights", because=because, cause=weights_cause, **TIGHT)
    out_cause = _sdpa_cause(kwargs, 0, out) if error_report(out, expected_out, **TIGHT) else None
    assert_close(out, expected_out, call=call + " -> output", because=because, cause=out_cause, **TIGHT)


@pytest.mark.exercise("scaled_dot_product_attention")
@given(sdpa_cases())
def test_sdpa_weights_are_distributions_over_keys(impl, case):
    kwargs, _ = case
    _, weights = _call_sdpa(impl, kwargs)
    call = _sdpa_call(kwargs) + " -> weights"
    assert torch.isfinite(weights).all(), f"Called {call}. The weights contain nan or inf: {weights}."
    assert (weights >= 0).all(), f"Called {call}. Some weights are negative: {weights}."
    allowed = _allowed(kwargs)
    assert_close(weights.sum(dim=-1), allowed.any(dim=-1).to(DT), call=call + ".sum(dim=-1)", atol=1e-12,
                 because="each query's weights are a softmax over the keys (last axis): they sum to 1, and a row "
                         "whose keys are all masked is 0 by this kata's convention.")
    leaked = weights[~allowed]
    assert (leaked == 0).all(), (
        f"Called {call}. Masked keys got weights up to {leaked.abs().max().item():.3g}; a masked key must get "
        "exactly 0 (mask the scores with -inf before the softmax)."
    )


@pytest.mark.exercise("scaled_dot_product_attention")
def test_sdpa_known_values(impl):
    # q = k = two orthogonal unit vectors in E = 4 dims, and v of size Ev = 1: the scores are the identity / sqrt(4)
    q = k = torch.eye(4, dtype=DT)[:2][None]
    v = torch.tensor([[[1.0], [3.0]]], dtype=DT)
    kwargs = {"q": q, "k": k, "v": v}
    out, weights = _call_sdpa(impl, kwargs)
    a, b = math.exp(0.5) / (math.exp(0.5) + 1), 1 / (math.exp(0.5) + 1)
    expected = torch.tensor([[[a, b], [b, a]]], dtype=DT)
    cause = _sdpa_cause(kwargs, 1, weights) if error_report(weights, expected, 1e-6, 1e-9) else None
    call = _sdpa_call(kwargs)
    assert_close(weights, expected, call=call + " -> weights", cause=cause,
                 because="by default the scores q.k = 1 are divided by sqrt(E) = 2 (E of q and k, not of v) before "
                         "the softmax: softmax([0.5, 0]).")
    assert_close(out, torch.tensor([[[a + 3 * b], [b + 3 * a]]], dtype=DT), call=call + " -> output",
                 because="the output is the weights times v.")
    causal = {**kwargs, "is_causal": True}
    _, weights = _call_sdpa(impl, causal)
    assert_close(weights, torch.tensor([[[1.0, 0.0], [b, a]]], dtype=DT), call=_sdpa_call(causal) + " -> weights",
                 because="with is_causal=True the first query sees only the first key.")


@pytest.mark.exercise("scaled_dot_product_attention")
def test_sdpa_handles_empty_sizes(impl):
    gen = generator(5)
    cases = {
        "no queries (L = 0)": {"q": randn(gen, 2, 0, 3), "k": randn(gen, 2, 4, 3), "v": randn(gen, 2, 4, 2)},
        "no keys (S = 0)": {"q": randn(gen, 2, 3, 3), "k": randn(gen, 2, 0, 3), "v": randn(gen, 2, 0, 2)},
        "an empty batch": {"q": randn(gen, 0, 3, 3), "k": randn(gen, 0, 4, 3), "v": randn(gen, 0, 4, 2),
                           "is_causal": True},
    }
    for what, kwargs in cases.items():
        out, weights = _call_sdpa(impl, kwargs)
        expected_out, expected_weights = _torch_sdpa(kwargs)
        because = f"{what} is legal: the results are empty, or zeros where a query has no key to attend to."
        assert_close(weights, expected_weights, call=_sdpa_call(kwargs) + " -> weights", because=because)
        assert_close(out, expected_out, call=_sdpa_call(kwargs) + " -> output", because=because)


@pytest.mark.exercise("scaled_dot_product_attention")
@pytest.mark.parametrize("kind", ["bool", "additive_inf"])
def test_sdpa_fully_masked_rows_give_zeros_not_nan(impl, kind):
    gen = generator(13)
    q, k, v = randn(gen, 2, 3, 4), randn(gen, 2, 5, 4), randn(gen, 2, 5, 2)
    allowed = torch.rand(2, 3, 5, generator=gen) < 0.6
    allowed[:, 0] = True
    allowed[0, 1] = False  # batch 0, query 1: nothing to attend to
    allowed[1, 2] = False
    mask = allowed if kind == "bool" else torch.zeros(2, 3, 5, dtype=DT).masked_fill(~allowed, float("-inf"))
    kwargs = {"q": q, "k": k, "v": v, "attn_mask": mask}
    out, weights = _call_sdpa(impl, kwargs)
    call = _sdpa_call(kwargs)
    for name, got, part in (("output", out, 0), ("weights", weights, 1)):
        assert torch.isfinite(got).all(), (
            f"Called {call}. The {name} contains nan: {got}.\nBecause query 1 of batch 0 and query 2 of batch 1 have "
            "every key masked, a plain softmax computes 0/0. This kata's convention: such a row is all 0.\n"
            f"Likely cause: {_sdpa_cause(kwargs, part, got)}"
        )
    expected_out, expected_weights = _torch_sdpa(kwargs)
    assert_close(weights, expected_weights, call=call + " -> weights",
                 because="rows with no allowed key are all 0; the others equal torch's SDPA.")
    assert_close(out, expected_out, call=call + " -> output",
                 because="rows with no allowed key are all 0; the others equal torch's SDPA.")


@pytest.mark.exercise("scaled_dot_product_attention")
@pytest.mark.parametrize("kind", ["bool", "additive_inf"])
def test_sdpa_gradients_are_finite_and_correct(impl, kind):
    gen = generator(7)
    q, k, v = randn(gen, 2, 3, 4), randn(gen, 2, 4, 4), randn(gen, 2, 4, 3)
    allowed = torch.ones(2, 3, 4, dtype=torch.bool)
    allowed[0, 1] = False  # one fully masked row
    allowed[1, 2, 1:] = False
    mask = allowed if kind == "bool" else torch.zeros(2, 3, 4, dtype=DT).masked_fill(~allowed, float("-inf"))
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    out, weights = impl.scaled_dot_product_attention(*leaves, attn_mask=mask)
    ((out * randn(gen, *out.shape)).sum() + (weights * randn(gen, *weights.shape)).sum()).backward()
    call = format_call("scaled_dot_product_attention", (q, k, v), {"attn_mask": mask})
    for name, leaf in zip("qkv", leaves, strict=True):
        assert leaf.grad is not None and torch.isfinite(leaf.grad).all(), (
            f"Called {call} and backward(). The gradient of {name} is {leaf.grad}: it must exist and be finite.\n"
            "Because a fully masked row (batch 0, query 1) must not send nan back into q, k and v, or one padded "
            "row ruins the whole training step. Zeroing a nan softmax after the fact (torch.where / nan_to_num) "
            "fixes the forward pass only: make the softmax itself safe (shift by 0, clamp the sum)."
        )

    def outputs(q_, k_, v_):
        return impl.scaled_dot_product_attention(q_, k_, v_, attn_mask=mask)

    assert torch.autograd.gradcheck(outputs, tuple(t.clone().requires_grad_() for t in (q, k, v)), eps=1e-6,
                                    atol=1e-6), f"Called {call}: its gradients disagree with finite differences."


@pytest.mark.exercise("scaled_dot_product_attention")
def test_sdpa_extreme_scores_in_some_rows(impl):
    gen = generator(21)
    q, k, v = randn(gen, 2, 4, 3), randn(gen, 2, 5, 3, scale=3.0), randn(gen, 2, 5, 2)
    q[:, 1] *= 1e3  # query 1: scores of size ~1e4, a nearly one-hot softmax
    mask = torch.zeros(4, 5, dtype=DT)
    mask[2] += 1e4  # query 2: every score shifted up by 1e4 (exp overflows without the max shift)
    mask[3] -= 1e4  # query 3: every score shifted down by 1e4 (exp underflows to 0 with a shift that is too big)
    mask[3, 0] = float("-inf")
    kwargs = {"q": q, "k": k, "v": v, "attn_mask": mask}
    out, weights = _call_sdpa(impl, kwargs)
    expected_out, expected_weights = _torch_sdpa(kwargs)
    because = ("softmax is shift invariant: subtract each row's own max before exp(), so rows of huge or tiny scores "
               "(queries 1-3) stay exact, whatever the other rows hold.")
    for name, got, expected, part in (("weights", weights, expected_weights, 1), ("output", out, expected_out, 0)):
        cause = _sdpa_cause(kwargs, part, got) if error_report(got, expected, **TIGHT) else None
        assert_close(got, expected, call=_sdpa_call(kwargs) + f" -> {name}", because=because, cause=cause, **TIGHT)


# float32 and bfloat16 against a float64 oracle: a few units of each dtype's epsilon on values of size ~1
DTYPE_TOLERANCES = {torch.float32: {"rtol": 1e-5, "atol": 1e-5}, torch.bfloat16: {"rtol": 4e-2, "atol": 4e-2}}


@pytest.mark.exercise("scaled_dot_product_attention")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_sdpa_keeps_the_input_dtype(impl, dtype):
    gen = generator(8)
    kwargs = {"q": randn(gen, 2, 3, 4), "k": randn(gen, 2, 5, 4), "v": randn(gen, 2, 5, 3),
              "attn_mask": randn(gen, 3, 5).masked_fill(_lower_triangle(3, 5).logical_not(), -math.inf)}
    kwargs = {name: value.to(dtype) for name, value in kwargs.items()}
    out, weights = _call_sdpa(impl, kwargs)
    call = _sdpa_call(kwargs)
    for name, got in (("output", out), ("weights", weights)):
        assert got.dtype == dtype, (
            f"Called {call}. The {name} has dtype {got.dtype}; expected {dtype}, the dtype of q, k and v (a tensor "
            "created inside, or a float64 constant, must not promote the result)."
        )
    expected_out, expected_weights = _torch_sdpa(kwargs)
    because = f"the result is computed in {dtype}; it may differ from float64 by {dtype}'s rounding only."
    # compared in float64 (NumPy, which reports the differences, has no bfloat16)
    assert_close(weights.double(), expected_weights, call=call + " -> weights", because=because,
                 **DTYPE_TOLERANCES[dtype])
    assert_close(out.double(), expected_out, call=call + " -> output", because=because, **DTYPE_TOLERANCES[dtype])


@pytest.mark.exercise("scaled_dot_product_attention")
def test_sdpa_runs_where_its_inputs_live(impl):
    q, k, v = (torch.empty(*shape, device="meta") for shape in ((2, 3, 4), (2, 5, 4), (2, 5, 6)))
    kwargs = {"q": q, "k": k, "v": v, "is_causal": True}
    out, weights = _call_sdpa(impl, kwargs)
    for name, got in (("output", out), ("weights", weights)):
        assert got.device == q.device, (
            f"Called {_sdpa_call(kwargs)}. The {name} is on {got.device}; expected {q.device}, the device of q, k and "
            "v: create the causal mask there too (device=q.device), or a model on a GPU fails."
        )


@pytest.mark.exercise("scaled_dot_product_attention")
def test_sdpa_rejects_bad_input(impl):
    gen = generator(3)
    q, k, v = randn(gen, 2, 3, 4), randn(gen, 2, 5, 4), randn(gen, 2, 5, 2)
    with pytest.raises(ValueError):
        impl.scaled_dot_product_attention(q, k, v, attn_mask=_lower_triangle(3, 5), is_causal=True)
    # the message must name the sizes that disagree
    with pytest.raises(ValueError, match=r"4.*3|3.*4"):
        impl.scaled_dot_product_attention(q, randn(gen, 2, 5, 3), v)  # E of q is 4, of k is 3
    with pytest.raises(ValueError, match=r"5.*4|4.*5"):
        impl.scaled_dot_product_attention(q, k, randn(gen, 2, 4, 2))  # 5 keys but 4 values


# --------------------------------------------------------------------------------------------------
# causal_mask / padding_mask


def _assert_bool_mask(mask, shape: tuple[int, ...], call: str) -> None:
    assert isinstance(mask, torch.Tensor) and mask.dtype == torch.bool and tuple(mask.shape) == shape, (
        f"Called {call}. Returned {describe(mask)}; expected a bool tensor of shape {shape} (a float mask means "
        "something else to scaled_dot_product_attention: it is added to the scores)."
    )


@pytest.mark.exercise("causal_mask")
@given(st.integers(0, 12))
def test_causal_mask_is_lower_triangular(impl, t):
    mask = impl.causal_mask(t)
    call = format_call("causal_mask", (t,))
    _assert_bool_mask(mask, (t, t), call)
    assert mask.device.type == "cpu", f"Called {call}. The mask is on {mask.device}; by default it is on the CPU."
    expected = _lower_triangle(t)
    wrong = error_report(mask, expected, 0, 0)
    cause = likely_cause(KATA, "causal_mask", lambda f: f(t), mask, atol=0) if wrong else None
    assert_close(mask, expected, call=call, atol=0, cause=cause,
                 because="query i may attend to keys 0..i: True on and below the diagonal (a token sees itself).")


@pytest.mark.exercise("causal_mask")
@given(seeds, st.integers(1, 6), st.integers(1, 4))
def test_causal_mask_equals_is_causal(impl, seed, t, e):
    gen = generator(seed)
    q, k, v = randn(gen, 2, t, e), randn(gen, 2, t, e), randn(gen, 2, t, 3)
    mask = impl.causal_mask(t)
    _assert_bool_mask(mask, (t, t), format_call("causal_mask", (t,)))
    got = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert_close(got, F.scaled_dot_product_attention(q, k, v, is_causal=True),
                 call=f"F.scaled_dot_product_attention(q, k, v, attn_mask=causal_mask({t}))",
                 because="your mask must mean exactly what torch's is_causal=True means.")


@pytest.mark.exercise("causal_mask")
def test_causal_mask_is_created_on_the_requested_device(impl):
    for device in ("meta", torch.device("meta")):
        mask = impl.causal_mask(4, device=device)
        call = format_call("causal_mask", (4,), {"device": device})
        _assert_bool_mask(mask, (4, 4), call)
        assert mask.device.type == "meta", (
            f"Called {call}. The mask is on {mask.device}; `device` must place it (torch.arange(t, device=device)), "
            "so that it can meet activations on a GPU."
        )


@pytest.mark.exercise("causal_mask")
def test_causal_mask_rejects_bad_t(impl):
    with pytest.raises(ValueError, match="-3"):
        impl.causal_mask(-3)
    with pytest.raises(TypeError):
        impl.causal_mask(3.0)  # a float is not a size, even a whole one: int(2.5) would silently give 2


@st.composite
def lengths_and_t(draw):
    """Lengths as a list, an int64 or an int32 tensor (B from 0), and a t at least as long as every length."""
    lengths = draw(st.lists(st.integers(0, 8), max_size=5))
    t = draw(st.integers(max(lengths, default=0), 10))
    kind = draw(st.sampled_from(["list", "int64", "int32"]))
    arg = list(lengths) if kind == "list" else torch.tensor(lengths, dtype=getattr(torch, kind))
    return lengths, t, arg


@pytest.mark.exercise("causal_mask")
@given(lengths_and_t())
def test_padding_mask_marks_real_tokens(impl, case):
    lengths, t, arg = case
    pristine = copy.deepcopy(arg)
    mask = impl.padding_mask(arg, t)
    call = format_call("padding_mask", (pristine, t))
    _assert_bool_mask(mask, (len(lengths), t), call)
    same = torch.equal(arg, pristine) if isinstance(arg, torch.Tensor) else arg == pristine
    assert same, f"Called {call}. It modified its argument lengths in place: it is now {arg!r}."
    expected = _keep_mask(lengths, t)
    cause = (likely_cause(KATA, "padding_mask", lambda f: f(copy.deepcopy(pristine), t), mask, atol=0)
             if error_report(mask, expected, 0, 0) else None)
    assert_close(mask, expected, call=call, atol=0, cause=cause,
                 because="row b is True on its first lengths[b] positions (real tokens) and False on the padding.")


@pytest.mark.exercise("causal_mask")
@pytest.mark.parametrize(("lengths", "t", "named"), [
    ([2, 7], 5, "7"),  # longer than t
    (torch.tensor([3, -2]), 5, "-2"),  # negative
    ([2, 2.5], 5, "2.5"),  # not an integer
    (torch.tensor([2.0, 3.0]), 5, None),  # float dtype, even with whole values
    ([True, False], 3, "True"),  # True is not a length
    (torch.tensor([[1, 2]]), 3, None),  # not 1-D
    ([1], -1, "-1"),  # negative t
], ids=["above-t", "negative", "fractional", "float-tensor", "bool", "2-D", "negative-t"])
def test_padding_mask_rejects_bad_input(impl, lengths, t, named):
    call = format_call("padding_mask", (lengths, t))
    with pytest.raises(ValueError) as info:
        impl.padding_mask(lengths, t)
    if named is not None:
        assert named in str(info.value), (
            f"Called {call}. The ValueError says {str(info.value)!r}; it must name the offending value {named}."
        )


@pytest.mark.exercise("causal_mask")
def test_padding_mask_rejects_a_float_t(impl):
    with pytest.raises(TypeError):
        impl.padding_mask([1, 2], 3.0)


@pytest.mark.exercise("causal_mask")
@pytest.mark.gpu
def test_masks_are_created_on_cuda(impl):
    lengths = torch.tensor([2, 0, 3], device="cuda")
    mask = impl.padding_mask(lengths, 4)
    assert mask.device == lengths.device, (
        f"Called padding_mask(lengths on {lengths.device}, 4). The mask is on {mask.device}; it must live on the "
        "device of lengths."
    )
    assert_close(mask.cpu(), _keep_mask([2, 0, 3], 4), call="padding_mask([2, 0, 3] on cuda, 4)", atol=0)
    assert impl.causal_mask(3, device="cuda").device.type == "cuda", "causal_mask(3, device='cuda') is not on cuda"


# --------------------------------------------------------------------------------------------------
# SelfAttention


def _mha(embed_dim: int, num_heads: int, seed: int) -> nn.MultiheadAttention:
    return refill_(nn.MultiheadAttention(embed_dim, num_heads, batch_first=True, dtype=DT), seed)


def _mha_output(mha: nn.MultiheadAttention, x: torch.Tensor, causal: bool, keep: torch.Tensor | None):
    """nn.MultiheadAttention's bool masks mean True = ignore: the opposite of this kata's."""
    T = x.shape[1]
    attn_mask = ~_lower_triangle(T) if causal else None
    key_padding_mask = None if keep is None else ~keep
    with torch.no_grad():
        return mha(x, x, x, attn_mask=attn_mask, key_padding_mask=key_padding_mask, need_weights=False)[0]


def _attention_call(E, H, causal, x, keep, dropout=None) -> str:
    extra = "" if dropout is None else f", dropout={dropout}"
    mask = "" if keep is None else f", key_padding_mask=lengths {keep.sum(1).tolist()}"
    return f"SelfAttention({E}, {H}, causal={causal}{extra})(x of shape {tuple(x.shape)}{mask})"


@pytest.mark.exercise("SelfAttention")
def test_self_attention_structure_and_defaults(impl):
    E, H = 32, 4
    with seeded(0):
        attention = impl.SelfAttention(E, H)
    call = f"SelfAttention({E}, {H})"
    _assert_parameters(attention, {f"{n}.{p}": (E, E) if p == "weight" else (E,)
                                   for n in ("query", "key", "value", "out") for p in ("weight", "bias")}, call)
    attributes = {name: getattr(attention, name, None) for name in ("embed_dim", "num_heads", "head_dim", "causal")}
    assert attributes == {"embed_dim": E, "num_heads": H, "head_dim": E // H, "causal": False}, (
        f"Called {call}. Its attributes are {attributes}; expected embed_dim={E}, num_heads={H}, head_dim={E // H} "
        "and causal=False (the default)."
    )
    assert isinstance(attention.dropout, nn.Dropout) and attention.dropout.p == 0.0, (
        f"Called {call}. self.dropout is {attention.dropout!r}; expected nn.Dropout(p=0.0): no dropout by default."
    )
    bound = 1 / math.sqrt(E)  # nn.Linear's default: U(-1/sqrt(in), 1/sqrt(in)), std bound/sqrt(3)
    for name in ("query", "key", "value", "out"):
        weight = getattr(attention, name).weight.detach()
        std = weight.std().item()
        assert weight.abs().max() <= bound and abs(std - bound / math.sqrt(3)) < 0.1 * bound / math.sqrt(3), (
            f"Called {call}. {name}.weight has max |w| {weight.abs().max():.4f} and std {std:.4f}; nn.Linear's default "
            f"init gives |w| <= 1/sqrt({E}) = {bound:.4f} and std {bound / math.sqrt(3):.4f}: keep PyTorch's init."
        )
    other = impl.SelfAttention(6, 3, causal=True, dropout=0.25)
    assert other.causal is True and other.dropout.p == 0.25, (
        f"Called SelfAttention(6, 3, causal=True, dropout=0.25). Got causal={other.causal} and dropout "
        f"{other.dropout!r}; both arguments must be stored (as causal and nn.Dropout(0.25))."
    )


@pytest.mark.exercise("SelfAttention")
@settings(max_examples=30)  # builds modules per example: keep the run fast
@given(seeds, st.integers(1, 3), st.integers(1, 5), st.integers(1, 3), st.integers(1, 3), st.booleans(), st.booleans(),
       st.booleans())
@example(seed=0, batch=2, t=4, heads=3, head_dim=2, causal=True, padded=True, strided=True)
@example(seed=1, batch=2, t=5, heads=2, head_dim=3, causal=False, padded=False, strided=False)
def test_self_attention_matches_multihead_attention(impl, seed, batch, t, heads, head_dim, causal, padded, strided):
    E = heads * head_dim
    gen = generator(seed)
    mha = _mha(E, heads, seed)
    x = randn(gen, t, batch, E).transpose(0, 1) if strided else randn(gen, batch, t, E)
    keep = _keep_mask(torch.randint(1, t + 1, (batch,), generator=gen).tolist(), t) if padded else None
    given_args = {"x": x} if keep is None else {"x": x, "key_padding_mask": keep}
    pristine = _fresh(given_args)

    def run(cls, args=None):
        attention = cls(E, heads, causal=causal).to(DT)
        _copy_mha_into(attention, mha)
        with torch.no_grad():
            return attention(**(args if args is not None else _fresh(pristine)))

    got = run(impl.SelfAttention, given_args)
    call = _attention_call(E, heads, causal, x, keep)
    _assert_unchanged(call, pristine, given_args, "SelfAttention", run)
    expected = _mha_output(mha, x, causal, keep)
    cause = likely_cause(KATA, "SelfAttention", run, got, **TIGHT) if error_report(got, expected, **TIGHT) else None
    assert_close(got, expected, call=call, cause=cause, **TIGHT,
                 because="with the same weights it must equal nn.MultiheadAttention(batch_first=True): heads split as "
                         "view(B, T, H, hd).transpose(1, 2), scale 1/sqrt(head_dim), masks applied before the softmax, "
                         "and no dropout by default (a new module is in train() mode).")


@pytest.mark.exercise("SelfAttention")
@settings(max_examples=15)  # builds modules per example: keep the run fast
@given(seeds, st.integers(1, 3), st.integers(2, 6), st.sampled_from([(1, 4), (2, 2), (3, 2)]))
def test_self_attention_is_permutation_equivariant(impl, seed, batch, t, heads_and_dim):
    heads, head_dim = heads_and_dim
    E = heads * head_dim
    gen = generator(seed)
    attention = refill_(impl.SelfAttention(E, heads).to(DT), seed)
    x = randn(gen, batch, t, E)
    perm = torch.randperm(t, generator=gen)
    with torch.no_grad():
        out, out_permuted = attention(x.clone()), attention(x[:, perm].clone())
    assert_close(out_permuted, out[:, perm], call=_attention_call(E, heads, False, x[:, perm], None), **TIGHT,
                 because=f"without a mask, attention has no notion of order: permuting the tokens by {perm.tolist()} "
                         "must permute the outputs the same way.")


@pytest.mark.exercise("SelfAttention")
@settings(max_examples=20)  # builds modules per example: keep the run fast
@given(seeds, st.integers(1, 3), st.integers(2, 6), st.sampled_from([(1, 4), (2, 2), (3, 2)]), st.data())
def test_self_attention_causal_ignores_future_tokens(impl, seed, batch, t, heads_and_dim, data):
    heads, head_dim = heads_and_dim
    E = heads * head_dim
    cut = data.draw(st.integers(0, t - 2), label="last position kept")
    gen = generator(seed)
    attention = refill_(impl.SelfAttention(E, heads, causal=True).to(DT), seed)
    x = randn(gen, batch, t, E)
    x2 = x.clone()
    x2[:, cut + 1:] = randn(gen, batch, t - cut - 1, E, scale=3.0)
    with torch.no_grad():
        before, after = attention(x), attention(x2)
    assert_close(after[:, : cut + 1], before[:, : cut + 1], call=_attention_call(E, heads, True, x2, None), **TIGHT,
                 because=f"with causal=True, the outputs at positions 0..{cut} must not change when only the tokens "
                         f"after position {cut} change (a language model must not see the future).")


@pytest.mark.exercise("SelfAttention")
@settings(max_examples=15)  # builds modules per example: keep the run fast
@given(seeds, st.integers(3, 6), st.data())
def test_self_attention_ignores_padded_keys(impl, seed, t, data):
    length = data.draw(st.integers(1, t - 1), label="length")
    gen = generator(seed)
    attention = refill_(impl.SelfAttention(4, 2).to(DT), seed)
    x = randn(gen, 1, t, 4)
    keep = _keep_mask([length], t)
    x2 = x.clone()
    x2[:, length:] = randn(gen, 1, t - length, 4, scale=3.0)
    with torch.no_grad():
        before, after = attention(x, keep.clone()), attention(x2, keep.clone())
    assert_close(after[:, :length], before[:, :length], call=_attention_call(4, 2, False, x2, keep), **TIGHT,
                 because=f"key_padding_mask is True on real tokens: the outputs of the {length} real tokens must not "
                         "depend on the content of the padding.")


@pytest.mark.exercise("SelfAttention")
@pytest.mark.parametrize(("embed_dim", "num_heads"), [(6, 4), (5, 2), (7, 3), (0, 2), (-4, 2), (4, 0), (4, -2)])
def test_self_attention_rejects_bad_sizes(impl, embed_dim, num_heads):
    with pytest.raises(ValueError) as info:
        impl.SelfAttention(embed_dim, num_heads)
    message = str(info.value)
    assert str(embed_dim) in message and str(num_heads) in message, (
        f"Called SelfAttention({embed_dim}, {num_heads}). The ValueError says {message!r}; it must name both "
        f"embed_dim={embed_dim} and num_heads={num_heads} so the caller knows what to fix."
    )


@pytest.mark.exercise("SelfAttention")
# (B, T) = (2, 5): a mask for one sequence, a mask one token short, and one already indexed for the heads
@pytest.mark.parametrize(("shape", "named"), [((1, 5), "1"), ((2, 4), "4"), ((2, 1, 1, 5), "1")], ids=str)
def test_self_attention_rejects_misshaped_padding_masks(impl, shape, named):
    attention = impl.SelfAttention(4, 2).to(DT)
    x = randn(generator(4), 2, 5, 4)
    mask = torch.ones(shape, dtype=torch.bool)
    call = f"SelfAttention(4, 2)(x of shape (2, 5, 4), key_padding_mask of shape {shape})"
    with pytest.raises(ValueError) as info:
        attention(x, mask)
    assert named in str(info.value), (
        f"Called {call}. The ValueError says {str(info.value)!r}; it must name the mask's shape {shape}, which is "
        "not (B, T) = (2, 5)."
    )


@pytest.mark.exercise("SelfAttention")
@settings(max_examples=5)  # builds modules per example: keep the run fast
@given(seeds)
def test_self_attention_dropout_only_in_training(impl, seed):
    E, H = 6, 2
    gen = generator(seed)
    mha = _mha(E, H, seed)
    attention = impl.SelfAttention(E, H, dropout=0.5).to(DT)
    _copy_mha_into(attention, mha)
    x = randn(gen, 2, 5, E)
    attention.eval()
    with seeded(seed), torch.no_grad():
        evaluated = attention(x.clone())
    assert_close(evaluated, _mha_output(mha, x, False, None), call=_attention_call(E, H, False, x, None, 0.5) +
                 " in eval() mode", **TIGHT, because="in eval() mode dropout is off: the output is deterministic.")
    attention.train()
    with seeded(seed), torch.no_grad():
        trained = attention(x.clone())
    assert not torch.allclose(trained, evaluated), (
        f"Called {_attention_call(E, H, False, x, None, 0.5)} in train() mode: the output equals the eval() output, "
        "so dropout=0.5 on the attention weights does nothing in training."
    )


@pytest.mark.exercise("SelfAttention")
def test_self_attention_dropout_drops_whole_attention_weights(impl):
    # With one token, each head's single attention weight is 1; with identity value and output projections
    # the output is x itself, one head_dim block per head. Dropout on the weights then zeroes whole blocks
    # and scales the kept ones by 1 / (1 - p); dropout anywhere else zeroes single features, or nothing.
    B, E, H, p = 64, 8, 4, 0.25
    attention = impl.SelfAttention(E, H, dropout=p).to(DT)
    with torch.no_grad():
        for name in ("value", "out"):
            layer = _linear_named(attention, name, "SelfAttention", (E, E))
            layer.weight.copy_(torch.eye(E, dtype=DT))
            layer.bias.zero_()
    x = randn(generator(9), B, 1, E)
    call = _attention_call(E, H, False, x, None, p) + " in train() mode, with identity value and out projections"
    attention.train()
    with seeded(9), torch.no_grad():
        got = attention(x.clone())
    blocks, expected = got.reshape(B, H, E // H), x.reshape(B, H, E // H)
    kept = torch.isclose(blocks, expected / (1 - p), rtol=1e-9, atol=0)
    dropped = blocks == 0
    assert bool((kept | dropped).all()), (
        f"Called {call}. Some outputs are neither 0 nor x / (1 - p) = x / {1 - p}: e.g. {describe(got[0, 0])} for "
        f"x = {describe(x[0, 0])}.\nBecause inverted dropout zeroes an attention weight with probability {p} and "
        f"scales the kept ones by 1 / (1 - {p}); nn.Dropout({p}) does exactly that."
    )
    whole = dropped.all(dim=-1) | kept.all(dim=-1)
    assert bool(whole.all()), (
        f"Called {call}. Single features of a head's output were zeroed: {describe(got[0, 0])} for x = "
        f"{describe(x[0, 0])}.\nBecause dropout acts on the attention weights (B, H, T, T): dropping a weight removes "
        "a whole key from a head, all of its head_dim features at once, not single features of the output."
    )
    rate = dropped.all(dim=-1).float().mean().item()
    assert 0.1 <= rate <= 0.45, (
        f"Called {call}. {rate:.0%} of the attention weights were dropped; with dropout={p} about {p:.0%} should be "
        f"(nn.Dropout(p) zeroes with probability p, not 1 - p)."
    )


@pytest.mark.exercise("SelfAttention")
def test_self_attention_runs_where_its_parameters_live(impl):
    attention = impl.SelfAttention(4, 2, causal=True).to("meta")
    x = torch.empty(2, 3, 4, device="meta")
    keep = torch.ones(2, 3, dtype=torch.bool, device="meta")
    for args in ((x,), (x, keep)):
        out = attention(*args)
        assert out.device == x.device and tuple(out.shape) == (2, 3, 4), (
            f"Called SelfAttention(4, 2, causal=True) moved to meta, on x of shape (2, 3, 4) on meta"
            f"{' with a key_padding_mask' if len(args) == 2 else ''}. Returned {describe(out)} on {out.device}; "
            "expected (2, 3, 4) on meta: build the causal mask on x's device (causal_mask(T, device=x.device))."
        )


# --------------------------------------------------------------------------------------------------
# PositionalEncoding


def _sinusoids(T: int, E: int) -> np.ndarray:
    """The formula, straight: column c uses frequency 10000^(-2*(c//2)/E); sin on even c, cos on odd c."""
    pos = np.arange(T)[:, None]
    c = np.arange(E)[None, :]
    angle = pos / 10000.0 ** (2 * (c // 2) / E)
    return np.where(c % 2 == 0, np.sin(angle), np.cos(angle))


# The table is stored in float32: rounding values in [-1, 1] costs at most 6e-8. Float32 *angles* cost ~1e-4
# at position 5000 (pos * freq keeps only 7 digits), which the docstring rules out.
PE_ATOL = 1e-6


@pytest.mark.exercise("PositionalEncoding")
@given(seeds, st.integers(1, 3), st.integers(0, 40), st.integers(1, 17), st.sampled_from([0, 1, 7, None]))
def test_positional_encoding_matches_the_formula(impl, seed, batch, t, embed_dim, extra):
    max_len = None if extra is None else max(t + extra, 1)
    pe = impl.PositionalEncoding(embed_dim) if max_len is None else impl.PositionalEncoding(embed_dim, max_len)
    x = randn(generator(seed), batch, t, embed_dim)
    pristine = x.clone()
    args = f"{embed_dim}" + ("" if max_len is None else f", max_len={max_len}")
    call = f"PositionalEncoding({args})(x of shape {tuple(x.shape)})"
    got = pe(x)

    def run(cls, x_=None):
        return (cls(embed_dim) if max_len is None else cls(embed_dim, max_len))(pristine.clone() if x_ is None else x_)

    _assert_unchanged(call, {"x": pristine}, {"x": x}, "PositionalEncoding", lambda cls, args: run(cls, args["x"]))
    expected = pristine + torch.from_numpy(_sinusoids(t, embed_dim))[None]

    cause = likely_cause(KATA, "PositionalEncoding", run, got, rtol=0, atol=PE_ATOL) if (
        error_report(got, expected, 0, PE_ATOL)) else None
    assert_close(got, expected, call=call, atol=PE_ATOL, rtol=0, cause=cause,
                 because="forward adds pe[pos, 2i] = sin(pos / 10000^(2i/E)) and pe[pos, 2i+1] = "
                         "cos(pos / 10000^(2i/E)) along the time axis (dim 1), the same for every batch item, for any "
                         "E including odd ones.")


@pytest.mark.exercise("PositionalEncoding")
def test_positional_encoding_hand_values(impl):
    got = impl.PositionalEncoding(4, max_len=3)(torch.zeros(1, 3, 4, dtype=DT))[0]
    expected = torch.tensor([[0.0, 1.0, 0.0, 1.0],
                             [math.sin(1), math.cos(1), math.sin(0.01), math.cos(0.01)],
                             [math.sin(2), math.cos(2), math.sin(0.02), math.cos(0.02)]], dtype=DT)
    assert_close(got, expected, call="PositionalEncoding(4, max_len=3)(zeros of shape (1, 3, 4))", atol=PE_ATOL,
                 rtol=0, because="columns (0, 1) use frequency 1 and columns (2, 3) use 10000^(-2/4) = 0.01.")


@pytest.mark.exercise("PositionalEncoding")
@pytest.mark.parametrize("embed_dim", [1, 3, 5, 9])
def test_positional_encoding_odd_embed_dim(impl, embed_dim):
    x = torch.zeros(2, 6, embed_dim, dtype=DT)
    call = f"PositionalEncoding({embed_dim}, max_len=6)(zeros of shape {tuple(x.shape)})"
    try:
        got = impl.PositionalEncoding(embed_dim, max_len=6)(x)
    except NotImplementedError:  # a RuntimeError too, but it means "not written yet", not the learning path's crash
        raise
    except (RuntimeError, IndexError) as err:
        raise AssertionError(
            f"Called {call}. It raised {type(err).__name__}: {err}\nBecause an odd E has ceil(E/2) sine columns but "
            "only floor(E/2) cosine columns (the learning path's bug): cut the cosines to E // 2 columns."
        ) from None
    assert_close(got[1], torch.from_numpy(_sinusoids(6, embed_dim)), call=call, atol=PE_ATOL, rtol=0,
                 because="the last column of an odd E is a sine.")


@pytest.mark.exercise("PositionalEncoding")
def test_positional_encoding_is_exact_up_to_the_default_max_len(impl):
    pe = impl.PositionalEncoding(16)
    call = "PositionalEncoding(16)(zeros of shape (1, 5000, 16))"
    got = pe(torch.zeros(1, 5000, 16, dtype=DT))
    expected = torch.from_numpy(_sinusoids(5000, 16))[None]
    cause = likely_cause(KATA, "PositionalEncoding", lambda cls: cls(16)(torch.zeros(1, 5000, 16, dtype=DT)), got,
                         rtol=0, atol=PE_ATOL) if error_report(got, expected, 0, PE_ATOL) else None
    assert_close(got, expected, call=call, atol=PE_ATOL, rtol=0, cause=cause,
                 because="max_len defaults to 5000, and every position up to it must be exact to float32 rounding: "
                         "compute pos * freq in float64 (in float32 it is off by ~1e-4 at position 5000).")
    with pytest.raises(ValueError) as info:
        pe(torch.zeros(1, 5001, 16))
    assert "5001" in str(info.value) and "5000" in str(info.value), (
        f"Called PositionalEncoding(16)(zeros of shape (1, 5001, 16)). The ValueError says {str(info.value)!r}; it "
        "must name the length 5001 and the default max_len 5000."
    )


@pytest.mark.exercise("PositionalEncoding")
def test_positional_encoding_rejects_inputs_longer_than_max_len(impl):
    pe = impl.PositionalEncoding(4, max_len=8)
    assert pe(torch.zeros(2, 8, 4)).shape == (2, 8, 4), "an input of exactly max_len positions must work"
    with pytest.raises(ValueError) as info:
        pe(torch.zeros(2, 9, 4))
    assert "9" in str(info.value) and "8" in str(info.value), (
        f"Called PositionalEncoding(4, max_len=8)(zeros of shape (2, 9, 4)). The ValueError says "
        f"{str(info.value)!r}; it must name the length 9 and max_len 8."
    )


@pytest.mark.exercise("PositionalEncoding")
@pytest.mark.parametrize(("embed_dim", "max_len", "named"), [(0, 10, "0"), (-3, 10, "-3"), (4, 0, "0"), (4, -2, "-2")])
def test_positional_encoding_rejects_bad_sizes(impl, embed_dim, max_len, named):
    with pytest.raises(ValueError) as info:
        impl.PositionalEncoding(embed_dim, max_len)
    assert named in str(info.value), (
        f"Called PositionalEncoding({embed_dim}, max_len={max_len}). The ValueError says {str(info.value)!r}; it must "
        f"name the offending value {named}."
    )


@pytest.mark.exercise("PositionalEncoding")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
def test_positional_encoding_keeps_the_input_dtype(impl, dtype):
    got = impl.PositionalEncoding(6, max_len=10)(torch.zeros(2, 4, 6, dtype=dtype))
    call = f"PositionalEncoding(6, max_len=10)(zeros of dtype {dtype})"
    assert got.dtype == dtype, (
        f"Called {call}. Returned dtype {got.dtype}; the output must keep the input's dtype (cast pe to x.dtype "
        "before adding)."
    )
    assert_close(got[0].double(), torch.from_numpy(_sinusoids(4, 6)), call=call, rtol=0,
                 atol=PE_ATOL if dtype != torch.bfloat16 else 1e-2, because=f"{dtype} rounding only.")


@pytest.mark.exercise("PositionalEncoding")
def test_positional_encoding_table_is_a_buffer(impl):
    module = impl.PositionalEncoding(6, max_len=10)
    call = "PositionalEncoding(6, max_len=10)"
    _assert_parameters(module, {}, call)
    table = dict(module.named_buffers()).get("pe")
    assert isinstance(table, torch.Tensor) and tuple(table.shape) == (1, 10, 6), (
        f"Called {call}. Its buffers are {dict((n, tuple(b.shape)) for n, b in module.named_buffers())}; expected a "
        "buffer `pe` of shape (1, max_len, E) = (1, 10, 6) (self.register_buffer('pe', ...))."
    )
    assert "pe" in module.state_dict(), f"Called {call}. `pe` must be saved in the state_dict (a persistent buffer)."
    assert table.dtype == torch.get_default_dtype(), (
        f"Called {call}. The buffer pe has dtype {table.dtype}; store it in the default dtype "
        f"{torch.get_default_dtype()} (compute in float64, then convert)."
    )
    assert_close(table[0].double(), torch.from_numpy(_sinusoids(10, 6)), call=call + ".pe[0]", atol=PE_ATOL, rtol=0,
                 because="the buffer holds the table itself, so that saved checkpoints agree.")
    moved = module.to("meta")
    out = moved(torch.empty(2, 4, 6, device="meta"))
    assert out.device.type == "meta" and tuple(out.shape) == (2, 4, 6), (
        f"Called {call}.to('meta')(x of shape (2, 4, 6) on meta). Returned {describe(out)} on {out.device}; the "
        "table must move with the module."
    )


# --------------------------------------------------------------------------------------------------
# TransformerBlock


def _encoder_layer(E: int, H: int, ff: int, norm_first: bool, seed: int) -> nn.TransformerEncoderLayer:
    layer = nn.TransformerEncoderLayer(E, H, ff, dropout=0.0, activation="relu", batch_first=True,
                                       norm_first=norm_first, dtype=DT)
    return refill_(layer, seed).train()  # train mode with dropout 0: deterministic, and no fused fast path


def _layer_output(layer, x, causal: bool, keep: torch.Tensor | None) -> torch.Tensor:
    T = x.shape[1]
    with torch.no_grad():
        return layer(x, src_mask=~_lower_triangle(T) if causal else None,
                     src_key_padding_mask=None if keep is None else ~keep)


def _block_call(E, H, ff, norm_first, causal, x, keep, dropout=0.0) -> str:
    mask = "" if keep is None else f", key_padding_mask=lengths {keep.sum(1).tolist()}"
    return (f"TransformerBlock({E}, {H}, {ff}, dropout={dropout}, norm_first={norm_first}, causal={causal})"
            f"(x of shape {tuple(x.shape)}{mask})")


@pytest.mark.exercise("TransformerBlock")
def test_transformer_block_structure_and_defaults(impl):
    E, H, ff = 8, 2, 16
    with seeded(0):
        block = impl.TransformerBlock(E, H, ff)
    call = f"TransformerBlock({E}, {H}, {ff})"
    expected = {f"attention.{n}.{p}": (E, E) if p == "weight" else (E,)
                for n in ("query", "key", "value", "out") for p in ("weight", "bias")}
    expected |= {"norm1.weight": (E,), "norm1.bias": (E,), "norm2.weight": (E,), "norm2.bias": (E,),
                 "feed_forward.0.weight": (ff, E), "feed_forward.0.bias": (ff,),
                 "feed_forward.2.weight": (E, ff), "feed_forward.2.bias": (E,)}
    _feed_forward_layers(block, E, ff)
    _assert_parameters(block, expected, call)
    for name in ("norm1", "norm2"):
        norm = _layer_norm_named(block, name, E)
        assert norm.eps == 1e-5 and bool((norm.weight == 1).all()) and bool((norm.bias == 0).all()), (
            f"Called {call}. {name} has eps {norm.eps}, weight {describe(norm.weight)} and bias "
            f"{describe(norm.bias)}; nn.LayerNorm's defaults are eps 1e-5, gains 1 and biases 0 (those of "
            "nn.TransformerEncoderLayer)."
        )
    dropouts = {"dropout": block.dropout, "attention.dropout": getattr(block.attention, "dropout", None)}
    assert all(isinstance(d, nn.Dropout) and d.p == 0.1 for d in dropouts.values()), (
        f"Called {call}. Its dropouts are {dropouts}; the default dropout=0.1 goes to both self.dropout and the "
        "attention's nn.Dropout."
    )
    assert block.attention.causal is False, f"Called {call}. block.attention.causal must default to False."
    other = impl.TransformerBlock(E, H, ff, dropout=0.2, causal=True)
    got = (other.attention.causal, other.attention.dropout.p, other.dropout.p)
    assert got == (True, 0.2, 0.2), (
        f"Called TransformerBlock({E}, {H}, {ff}, dropout=0.2, causal=True). Got attention.causal, "
        f"attention.dropout.p, dropout.p = {got}; expected (True, 0.2, 0.2): build SelfAttention(embed_dim, "
        "num_heads, causal=causal, dropout=dropout)."
    )


@pytest.mark.exercise("TransformerBlock")
@settings(max_examples=30)  # builds modules per example: keep the run fast
@pytest.mark.parametrize("norm_first", [False, True], ids=["post-norm", "pre-norm"])
@given(seeds, st.integers(1, 3), st.integers(1, 5), st.sampled_from([(1, 3), (2, 2), (2, 3)]), st.integers(1, 8),
       st.booleans(), st.booleans())
@example(seed=5, batch=2, t=4, heads_and_dim=(2, 2), ff=6, causal=True, padded=True)
def test_transformer_block_matches_encoder_layer(impl, norm_first, seed, batch, t, heads_and_dim, ff, causal, padded):
    heads, head_dim = heads_and_dim
    E = heads * head_dim
    gen = generator(seed)
    layer = _encoder_layer(E, heads, ff, norm_first, seed)
    x = randn(gen, batch, t, E)
    keep = _keep_mask(torch.randint(1, t + 1, (batch,), generator=gen).tolist(), t) if padded else None
    given_args = {"x": x} if keep is None else {"x": x, "key_padding_mask": keep}
    pristine = _fresh(given_args)

    def run(cls, args=None):
        block = cls(E, heads, ff, dropout=0.0, norm_first=norm_first, causal=causal).to(DT)
        _copy_layer_into(block, layer)
        with torch.no_grad():
            return block(**(args if args is not None else _fresh(pristine)))

    got = run(impl.TransformerBlock, given_args)
    call = _block_call(E, heads, ff, norm_first, causal, x, keep)
    _assert_unchanged(call, pristine, given_args, "TransformerBlock", run)
    expected = _layer_output(layer, x, causal, keep)
    cause = likely_cause(KATA, "TransformerBlock", run, got, **TIGHT) if error_report(got, expected, **TIGHT) else None
    order = ("x = x + attention(norm1(x)); x = x + feed_forward(norm2(x))" if norm_first else
             "x = norm1(x + attention(x)); x = norm2(x + feed_forward(x))")
    assert_close(got, expected, call=call, cause=cause, **TIGHT,
                 because=f"with the same weights it must equal nn.TransformerEncoderLayer(norm_first={norm_first}, "
                         f"activation='relu', dropout=0): {order}.")


@pytest.mark.exercise("TransformerBlock")
@settings(max_examples=15)  # builds modules per example: keep the run fast
@pytest.mark.parametrize("norm_first", [False, True], ids=["post-norm", "pre-norm"])
@given(seeds, st.integers(2, 6), st.data())
def test_transformer_block_causal_ignores_future_tokens(impl, norm_first, seed, t, data):
    cut = data.draw(st.integers(0, t - 2), label="last position kept")
    gen = generator(seed)
    block = refill_(impl.TransformerBlock(4, 2, 8, dropout=0.0, norm_first=norm_first, causal=True).to(DT), seed)
    x = randn(gen, 2, t, 4)
    x2 = x.clone()
    x2[:, cut + 1:] = randn(gen, 2, t - cut - 1, 4, scale=3.0)
    with torch.no_grad():
        before, after = block(x.clone()), block(x2.clone())
    assert_close(after[:, : cut + 1], before[:, : cut + 1], call=_block_call(4, 2, 8, norm_first, True, x2, None),
                 **TIGHT, because=f"with causal=True the outputs at positions 0..{cut} must not depend on the tokens "
                                  f"after {cut}: pass causal on to the attention.")


@pytest.mark.exercise("TransformerBlock")
@pytest.mark.parametrize("norm_first", [False, True], ids=["post-norm", "pre-norm"])
def test_transformer_block_dropout_is_off_in_eval(impl, norm_first):
    gen = generator(11)
    layer = _encoder_layer(6, 2, 10, norm_first, 11)
    # post-norm and bidirectional are the defaults: the post-norm block is built without naming them
    block = impl.TransformerBlock(6, 2, 10, dropout=0.3, norm_first=True) if norm_first else (
        impl.TransformerBlock(6, 2, 10, dropout=0.3))
    block = block.to(DT)
    _copy_layer_into(block, layer)
    block.eval()
    x = randn(gen, 2, 5, 6)
    with torch.no_grad():
        got = block(x.clone())
    order = "norm_first=True" if norm_first else "the defaults (norm_first=False, causal=False)"
    assert_close(got, _layer_output(layer, x, False, None), **TIGHT,
                 call=_block_call(6, 2, 10, norm_first, False, x, None, dropout=0.3) + " in eval() mode",
                 because=f"in eval() mode every dropout is the identity, and with {order} the block is "
                         f"nn.TransformerEncoderLayer(norm_first={norm_first}).")


@pytest.mark.exercise("TransformerBlock")
@pytest.mark.parametrize("branch", ["attention", "feed_forward"])
@pytest.mark.parametrize("norm_first", [False, True], ids=["post-norm", "pre-norm"])
def test_transformer_block_drops_sub_layer_outputs(impl, norm_first, branch):
    # Silence one sub-layer (its last linear layer is zero) and keep the attention in eval(), so the only
    # randomness is self.dropout on the other sub-layer's output s. Then each output token must be
    # post(base + m * s / (1 - p)) for some keep-pattern m of its E features; the checks try all 2^E.
    E, H, ff, p, seed = 4, 2, 8, 0.25, 17
    layer = _encoder_layer(E, H, ff, norm_first, seed)
    silenced = layer.linear2 if branch == "attention" else layer.self_attn.out_proj
    with torch.no_grad():
        silenced.weight.zero_()
        silenced.bias.zero_()
    block = impl.TransformerBlock(E, H, ff, dropout=p, norm_first=norm_first).to(DT)
    _copy_layer_into(block, layer)
    block.train()
    block.attention.eval()  # the attention weights' own dropout is SelfAttention's business, checked there
    x = randn(generator(seed), 4, 4, E)
    with seeded(seed), torch.no_grad():
        got = block(x.clone())
    with torch.no_grad():
        if branch == "attention":
            y = layer.norm1(x) if norm_first else x
            s, base = layer.self_attn(y, y, y, need_weights=False)[0], x
        else:
            base = x if norm_first else layer.norm1(x)
            s = layer.linear2(F.relu(layer.linear1(layer.norm2(base) if norm_first else base)))
        masks = torch.tensor(list(itertools.product([0.0, 1.0], repeat=E)), dtype=DT)  # (2^E, E)
        candidates = base[..., None, :] + masks * s[..., None, :] / (1 - p)  # (B, T, 2^E, E)
        if not norm_first:
            candidates = layer.norm2(layer.norm1(candidates) if branch == "attention" else candidates)
    distance = (candidates - got[..., None, :]).abs().amax(dim=-1).min(dim=-1)  # the best pattern per token
    call = _block_call(E, H, ff, norm_first, False, x, None, dropout=p) + " in train() mode (attention in eval())"
    where = "x = x + dropout(sub_layer(norm(x)))" if norm_first else "x = norm(x + dropout(sub_layer(x)))"
    miss = distance.values.max().item()
    b, t = divmod(int(distance.values.argmax()), x.shape[1])
    assert miss < 1e-9, (
        f"Called {call}, with the {'feed-forward' if branch == 'attention' else 'attention'} sub-layer silenced. "
        f"Output token ({b}, {t}) is {describe(got[b, t])}: no dropout of the {branch} sub-layer's output explains "
        f"it (the closest pattern misses by {miss:.3g}).\nBecause self.dropout acts on each sub-layer's output alone, "
        f"before the residual sum: {where}, zeroing features with probability {p} and scaling the others by "
        f"1 / (1 - {p})."
    )
    rate = 1 - masks[distance.indices].mean().item()
    assert 0.05 <= rate <= 0.6, (
        f"Called {call}. {rate:.0%} of the {branch} sub-layer's output features were dropped; with dropout={p} about "
        f"{p:.0%} should be: apply self.dropout to the sub-layer's output in training."
    )
