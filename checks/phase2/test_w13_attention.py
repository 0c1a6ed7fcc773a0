"""Checks for w13_attention: attention, masks, multi-head self-attention, positions, transformer blocks.

The oracles are PyTorch's own: ``F.scaled_dot_product_attention``, ``nn.MultiheadAttention`` and
``nn.TransformerEncoderLayer`` (weights copied into the learner's modules), plus closed-form formulas.
Everything is float64 and tiny, and every random tensor comes from a drawn seed.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import example, given, settings
from hypothesis import strategies as st
from torch import nn

from checks.harness.catalogue import mistakes_for
from checks.numerics import assert_close, error_report, format_call
from checks.torch_strategies import generator, randn, refill_, seeds

pytestmark = pytest.mark.kata("w13_attention")

KATA = "w13_attention"
DT = torch.float64


# --------------------------------------------------------------------------------------------------
# private helpers (general ones a torch kata could share; see the report)


def _likely_cause(symbol: str, args: tuple, kwargs: dict, actual, pick=lambda r: r) -> str | None:
    """The catalogued mistake that reproduces ``actual`` (the part of a result chosen by ``pick``)."""
    for entry in mistakes_for(KATA, symbol):
        try:
            with torch.no_grad():
                candidate = pick(entry.obj(*copy.deepcopy(args), **copy.deepcopy(kwargs)))
            if error_report(actual, candidate, 1e-6, 1e-9) is None:
                return entry.because
        except Exception:  # noqa: BLE001 - a mistake that crashes on this input simply does not match
            continue
    return None


def _module_cause(symbol: str, run, actual, rtol: float = 1e-7, atol: float = 1e-10) -> str | None:
    """The catalogued mistake class whose module, built and called by ``run(cls)`` exactly as the learner's
    was, reproduces ``actual``."""
    for entry in mistakes_for(KATA, symbol):
        try:
            with torch.no_grad():
                candidate = run(entry.obj)
            if error_report(actual, candidate, rtol, atol) is None:
                return entry.because
        except Exception:  # noqa: BLE001 - a mistake that crashes on this input simply does not match
            continue
    return None


def _lower_triangle(L: int, S: int | None = None) -> torch.Tensor:
    """The checks' own causal mask (True = may attend); never the learner's."""
    return torch.ones(L, L if S is None else S, dtype=torch.bool).tril()


def _keep_mask(lengths: list[int], t: int) -> torch.Tensor:
    """The checks' own padding mask (True = real token); never the learner's."""
    return torch.arange(t)[None, :] < torch.tensor(lengths)[:, None]


def _linear_named(module: nn.Module, name: str, owner: str) -> nn.Linear:
    layer = getattr(module, name, None)
    assert isinstance(layer, nn.Linear), (
        f"{owner} must have an nn.Linear attribute `{name}` (see its docstring: the checks copy PyTorch's "
        f"weights in by name); found {type(layer).__name__}."
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
            layer = _linear_named(attention, name, "SelfAttention")
            assert layer.weight.shape == weight.shape and layer.bias is not None, (
                f"SelfAttention.{name} must be nn.Linear(embed_dim, embed_dim) with a bias; "
                f"it has weight {tuple(layer.weight.shape)} and bias {layer.bias is not None}."
            )
            layer.weight.copy_(weight)
            layer.bias.copy_(bias)


def _copy_layer_into(block: nn.Module, layer: nn.TransformerEncoderLayer) -> None:
    """Copy nn.TransformerEncoderLayer weights into attention / feed_forward[0], [2] / norm1 / norm2."""
    _copy_mha_into(block.attention, layer.self_attn)
    ff = block.feed_forward
    targets = [(ff[0], layer.linear1), (ff[2], layer.linear2), (block.norm1, layer.norm1), (block.norm2, layer.norm2)]
    with torch.no_grad():
        for mine, theirs in targets:
            mine.weight.copy_(theirs.weight)
            mine.bias.copy_(theirs.bias)


# --------------------------------------------------------------------------------------------------
# scaled_dot_product_attention

MASK_KINDS = ["none", "bool", "additive", "additive_inf", "causal"]


@st.composite
def sdpa_cases(draw):
    """(kwargs for SDPA, mask kind): q, k, v with 0-2 batch dims, any L, S, E, Ev, and one kind of mask."""
    gen = generator(draw(seeds))
    batch = tuple(draw(st.lists(st.integers(1, 3), max_size=2)))
    L, S = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    E, Ev = draw(st.integers(1, 6)), draw(st.integers(1, 4))
    kind = draw(st.sampled_from(MASK_KINDS))
    mask_shape = (batch if draw(st.booleans()) else ()) + (L, S)
    kwargs = {"q": randn(gen, *batch, L, E, scale=1.5), "k": randn(gen, *batch, S, E, scale=1.5),
              "v": randn(gen, *batch, S, Ev)}
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
        kwargs["scale"] = draw(st.sampled_from([0.3, 1.0, 2.5]))
    return kwargs, kind


def _alive_rows(kwargs: dict) -> torch.Tensor:
    """(..., L) bool: rows with at least one key they may attend to."""
    q, k = kwargs["q"], kwargs["k"]
    scores_shape = q.shape[:-1] + (k.shape[-2],)
    mask = kwargs.get("attn_mask")
    if mask is None:
        return torch.ones(scores_shape[:-1], dtype=torch.bool)
    allowed = mask if mask.dtype == torch.bool else torch.isfinite(mask)
    return allowed.expand(scores_shape).any(dim=-1)


def _torch_sdpa(kwargs: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """PyTorch's output and weights (weights = SDPA applied to identity values), 0 on rows with no key."""
    q, k, v = kwargs["q"], kwargs["k"], kwargs["v"]
    options = {name: kwargs[name] for name in ("attn_mask", "is_causal", "scale") if name in kwargs}
    out = F.scaled_dot_product_attention(q, k, v, **options)
    eye = torch.eye(k.shape[-2], dtype=DT).expand(*k.shape[:-1], k.shape[-2])
    weights = F.scaled_dot_product_attention(q, k, eye, **options)
    alive = _alive_rows(kwargs)[..., None]
    # torch's SDPA gives nan on a fully masked row in some versions; this kata's convention is 0
    return torch.where(alive, out, 0.0), torch.where(alive, weights, 0.0)


def _call_sdpa(impl, kwargs: dict):
    result = impl.scaled_dot_product_attention(**copy.deepcopy(kwargs))
    assert isinstance(result, tuple) and len(result) == 2, (
        f"Called {_sdpa_call(kwargs)}. Returned {type(result).__name__}; expected a tuple (output, weights)."
    )
    return result


def _sdpa_call(kwargs: dict) -> str:
    return format_call("scaled_dot_product_attention", (), kwargs)


@pytest.mark.exercise("scaled_dot_product_attention")
@given(sdpa_cases())
def test_sdpa_matches_torch(impl, case):
    kwargs, kind = case
    out, weights = _call_sdpa(impl, kwargs)
    expected_out, expected_weights = _torch_sdpa(kwargs)
    cause = None
    if error_report(out, expected_out, 1e-7, 1e-10) or error_report(weights, expected_weights, 1e-7, 1e-10):
        cause = _likely_cause("scaled_dot_product_attention", (), kwargs, out, pick=lambda r: r[0])
    because = (f"it must equal torch.nn.functional.scaled_dot_product_attention (mask kind: {kind}); rows whose "
               "keys are all masked must be 0.")
    assert_close(weights, expected_weights, call=_sdpa_call(kwargs) + " -> weights", because=because,
                 rtol=1e-7, atol=1e-10, cause=cause)
    assert_close(out, expected_out, call=_sdpa_call(kwargs) + " -> output", because=because,
                 rtol=1e-7, atol=1e-10, cause=cause)


@pytest.mark.exercise("scaled_dot_product_attention")
@given(sdpa_cases())
def test_sdpa_weights_are_distributions_over_keys(impl, case):
    kwargs, _ = case
    _, weights = _call_sdpa(impl, kwargs)
    call = _sdpa_call(kwargs) + " -> weights"
    L, S = kwargs["q"].shape[-2], kwargs["k"].shape[-2]
    assert weights.shape == kwargs["q"].shape[:-1] + (S,), (
        f"Called {call}. Got shape {tuple(weights.shape)}, expected (..., L, S) = "
        f"{tuple(kwargs['q'].shape[:-1] + (S,))}: one row per query, one column per key."
    )
    assert torch.isfinite(weights).all(), f"Called {call}. The weights contain nan or inf: {weights}."
    assert (weights >= 0).all(), f"Called {call}. Some weights are negative: {weights}."
    alive = _alive_rows(kwargs)
    assert_close(weights.sum(dim=-1), alive.to(DT), call=call + ".sum(dim=-1)", atol=1e-12,
                 because="each query's weights are a softmax over the keys (last axis): they sum to 1, and a row "
                         "whose keys are all masked is 0 by this kata's convention.")
    mask = kwargs.get("attn_mask")
    if kwargs.get("is_causal"):
        mask = _lower_triangle(L, S)
    if mask is not None:
        allowed = (mask if mask.dtype == torch.bool else torch.isfinite(mask)).expand(weights.shape)
        leaked = weights[~allowed]
        assert (leaked == 0).all(), (
            f"Called {call}. Masked keys got weights up to {leaked.abs().max().item():.3g}; a masked key must get "
            "exactly 0 (mask the scores with -inf before the softmax)."
        )


@pytest.mark.exercise("scaled_dot_product_attention")
def test_sdpa_known_values(impl):
    # q = k = two orthogonal unit vectors in E = 4 dims: the scores are the identity / sqrt(4)
    q = k = torch.eye(4, dtype=DT)[:2][None]
    v = torch.tensor([[[1.0], [3.0]]], dtype=DT)
    out, weights = impl.scaled_dot_product_attention(q, k, v)
    a, b = math.exp(0.5) / (math.exp(0.5) + 1), 1 / (math.exp(0.5) + 1)
    call = format_call("scaled_dot_product_attention", (q, k, v))
    assert_close(weights, torch.tensor([[[a, b], [b, a]]], dtype=DT), call=call + " -> weights",
                 because="the scores q.k = 1 are divided by sqrt(E) = 2 before the softmax: softmax([0.5, 0]).",
                 cause=_likely_cause("scaled_dot_product_attention", (q, k, v), {}, weights, pick=lambda r: r[1]))
    assert_close(out, torch.tensor([[[a + 3 * b], [b + 3 * a]]], dtype=DT), call=call + " -> output",
                 because="the output is the weights times v.")
    _, causal = impl.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert_close(causal, torch.tensor([[[1.0, 0.0], [b, a]]], dtype=DT), call=call[:-1] + ", is_causal=True)",
                 because="with is_causal=True the first query sees only the first key.")


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
    for name, got in (("output", out), ("weights", weights)):
        assert torch.isfinite(got).all(), (
            f"Called {call}. The {name} contains nan: {got}.\nBecause query 1 of batch 0 and query 2 of batch 1 have "
            "every key masked, a plain softmax computes 0/0. This kata's convention: such a row is all 0.\n"
            f"Likely cause: {_likely_cause('scaled_dot_product_attention', (), kwargs, out, pick=lambda r: r[0])}"
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


@pytest.mark.exercise("causal_mask")
@given(st.integers(0, 12))
def test_causal_mask_is_lower_triangular(impl, t):
    mask = impl.causal_mask(t)
    call = format_call("causal_mask", (t,))
    assert isinstance(mask, torch.Tensor) and mask.dtype == torch.bool, (
        f"Called {call}. Returned {type(mask).__name__} {getattr(mask, 'dtype', '')}; expected a bool tensor."
    )
    assert_close(mask, _lower_triangle(t), call=call, atol=0,
                 because="query i may attend to keys 0..i: True on and below the diagonal (a token sees itself).",
                 cause=_likely_cause("causal_mask", (t,), {}, mask))


@pytest.mark.exercise("causal_mask")
@given(seeds, st.integers(1, 6), st.integers(1, 4))
def test_causal_mask_equals_is_causal(impl, seed, t, e):
    gen = generator(seed)
    q, k, v = randn(gen, 2, t, e), randn(gen, 2, t, e), randn(gen, 2, t, 3)
    mask = impl.causal_mask(t)
    got = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert_close(got, F.scaled_dot_product_attention(q, k, v, is_causal=True),
                 call=f"F.scaled_dot_product_attention(q, k, v, attn_mask=causal_mask({t}))",
                 because="your mask must mean exactly what torch's is_causal=True means.")


@pytest.mark.exercise("causal_mask")
def test_causal_mask_rejects_negative_t(impl):
    with pytest.raises(ValueError, match="-1"):
        impl.causal_mask(-1)


@st.composite
def lengths_and_t(draw):
    lengths = draw(st.lists(st.integers(0, 8), min_size=1, max_size=5))
    return lengths, draw(st.integers(max(lengths), 10))


@pytest.mark.exercise("causal_mask")
@given(lengths_and_t(), st.booleans())
def test_padding_mask_marks_real_tokens(impl, case, as_tensor):
    lengths, t = case
    arg = torch.tensor(lengths) if as_tensor else list(lengths)
    mask = impl.padding_mask(arg, t)
    call = format_call("padding_mask", (arg, t))
    assert isinstance(mask, torch.Tensor) and mask.dtype == torch.bool, (
        f"Called {call}. Returned {type(mask).__name__} {getattr(mask, 'dtype', '')}; expected a bool tensor."
    )
    assert_close(mask, _keep_mask(lengths, t), call=call, atol=0,
                 because="row b is True on its first lengths[b] positions (real tokens) and False on the padding.",
                 cause=_likely_cause("padding_mask", (arg, t), {}, mask))
    assert mask.sum(dim=1).tolist() == lengths, f"Called {call}. Row sums {mask.sum(dim=1).tolist()} != lengths."


@pytest.mark.exercise("causal_mask")
def test_padding_mask_rejects_bad_lengths(impl):
    with pytest.raises(ValueError, match="7"):
        impl.padding_mask([2, 7], 5)
    with pytest.raises(ValueError, match="-2"):
        impl.padding_mask(torch.tensor([3, -2]), 5)


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
@settings(max_examples=30)  # builds modules per example: keep the run fast
@given(seeds, st.integers(1, 3), st.integers(1, 5), st.integers(1, 3), st.integers(1, 3), st.booleans(), st.booleans())
@example(seed=0, batch=2, t=4, heads=3, head_dim=2, causal=True, padded=True)
@example(seed=1, batch=2, t=5, heads=2, head_dim=3, causal=False, padded=False)
def test_self_attention_matches_multihead_attention(impl, seed, batch, t, heads, head_dim, causal, padded):
    E = heads * head_dim
    gen = generator(seed)
    mha = _mha(E, heads, seed)
    x = randn(gen, batch, t, E)
    keep = _keep_mask(torch.randint(1, t + 1, (batch,), generator=gen).tolist(), t) if padded else None

    def run(cls):
        attention = cls(E, heads, causal=causal).to(DT)
        _copy_mha_into(attention, mha)
        with torch.no_grad():
            return attention(x.clone()) if keep is None else attention(x.clone(), keep.clone())

    got, expected = run(impl.SelfAttention), _mha_output(mha, x, causal, keep)
    cause = _module_cause("SelfAttention", run, got) if error_report(got, expected, 1e-7, 1e-10) else None
    assert_close(got, expected, call=_attention_call(E, heads, causal, x, keep), rtol=1e-7, atol=1e-10, cause=cause,
                 because="with the same weights it must equal nn.MultiheadAttention(batch_first=True): heads split as "
                         "view(B, T, H, hd).transpose(1, 2), scale 1/sqrt(head_dim), masks applied before the softmax.")


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
    assert_close(out_permuted, out[:, perm], call=_attention_call(E, heads, False, x[:, perm], None),
                 rtol=1e-7, atol=1e-10,
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
    assert_close(after[:, : cut + 1], before[:, : cut + 1], call=_attention_call(E, heads, True, x2, None),
                 rtol=1e-7, atol=1e-10,
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
    assert_close(after[:, :length], before[:, :length], call=_attention_call(4, 2, False, x2, keep),
                 rtol=1e-7, atol=1e-10,
                 because=f"key_padding_mask is True on real tokens: the outputs of the {length} real tokens must not "
                         "depend on the content of the padding.")


@pytest.mark.exercise("SelfAttention")
@pytest.mark.parametrize(("embed_dim", "num_heads"), [(6, 4), (5, 2), (7, 3)])
def test_self_attention_rejects_indivisible_embed_dim(impl, embed_dim, num_heads):
    with pytest.raises(ValueError) as info:
        impl.SelfAttention(embed_dim, num_heads)
    message = str(info.value)
    assert str(embed_dim) in message and str(num_heads) in message, (
        f"Called SelfAttention({embed_dim}, {num_heads}). The ValueError says {message!r}; it must name both "
        f"embed_dim={embed_dim} and num_heads={num_heads} so the caller knows what to fix."
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
    with torch.no_grad():
        evaluated = attention(x.clone())
    assert_close(evaluated, _mha_output(mha, x, False, None), call=_attention_call(E, H, False, x, None, 0.5),
                 rtol=1e-7, atol=1e-10, because="in eval() mode dropout is off: the output is deterministic.")
    attention.train()
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        trained = attention(x.clone())
    assert not torch.allclose(trained, evaluated), (
        f"Called {_attention_call(E, H, False, x, None, 0.5)} in train() mode: the output equals the eval() output, "
        "so dropout=0.5 on the attention weights does nothing in training."
    )


# --------------------------------------------------------------------------------------------------
# PositionalEncoding


def _sinusoids(T: int, E: int) -> np.ndarray:
    """The formula, straight: column c uses frequency 10000^(-2*(c//2)/E); sin on even c, cos on odd c."""
    pos = np.arange(T)[:, None]
    c = np.arange(E)[None, :]
    angle = pos / 10000.0 ** (2 * (c // 2) / E)
    return np.where(c % 2 == 0, np.sin(angle), np.cos(angle))


PE_ATOL = 5e-5  # float32 storage and float32 angle arithmetic are both fine


@pytest.mark.exercise("PositionalEncoding")
@given(st.integers(1, 17), st.integers(1, 64), st.sampled_from([0, 1, 7, None]))
def test_positional_encoding_known_values(impl, embed_dim, t, extra):
    max_len = None if extra is None else t + extra
    pe = impl.PositionalEncoding(embed_dim) if max_len is None else impl.PositionalEncoding(embed_dim, max_len)
    x = torch.zeros(1, t, embed_dim, dtype=DT)
    got = pe(x)
    args = f"{embed_dim}" + ("" if max_len is None else f", max_len={max_len}")
    assert_close(got[0], torch.from_numpy(_sinusoids(t, embed_dim)), atol=PE_ATOL, rtol=0,
                 call=f"PositionalEncoding({args})(zeros of shape {tuple(x.shape)})",
                 because="pe[pos, 2i] = sin(pos / 10000^(2i/E)) and pe[pos, 2i+1] = cos(pos / 10000^(2i/E)), for any "
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
    except NotImplementedError:
        raise
    except (RuntimeError, IndexError) as err:
        raise AssertionError(
            f"Called {call}. It raised {type(err).__name__}: {err}\nBecause an odd E has ceil(E/2) sine columns but "
            "only floor(E/2) cosine columns (the seed's bug): cut the cosines to E // 2 columns."
        ) from None
    assert_close(got[1], torch.from_numpy(_sinusoids(6, embed_dim)), call=call, atol=PE_ATOL, rtol=0,
                 because="the last column of an odd E is a sine.")


@pytest.mark.exercise("PositionalEncoding")
@given(seeds, st.integers(1, 4), st.integers(1, 12), st.integers(1, 9))
def test_positional_encoding_adds_the_same_signal_to_every_item(impl, seed, batch, t, embed_dim):
    x = randn(generator(seed), batch, t, embed_dim)
    got = impl.PositionalEncoding(embed_dim, max_len=16)(x.clone())
    expected = x + torch.from_numpy(_sinusoids(t, embed_dim))[None]
    assert_close(got, expected, call=f"PositionalEncoding({embed_dim}, max_len=16)(x of shape {tuple(x.shape)})",
                 atol=PE_ATOL, rtol=0,
                 because="forward adds pe[:T] along the time axis (dim 1), the same for every batch item.")


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
    default = impl.PositionalEncoding(2)
    assert default(torch.zeros(1, 5000, 2)).shape == (1, 5000, 2), "max_len defaults to 5000"
    with pytest.raises(ValueError, match="5001"):
        default(torch.zeros(1, 5001, 2))


@pytest.mark.exercise("PositionalEncoding")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_positional_encoding_keeps_the_input_dtype(impl, dtype):
    got = impl.PositionalEncoding(6, max_len=10)(torch.zeros(2, 4, 6, dtype=dtype))
    assert got.dtype == dtype, (
        f"Called PositionalEncoding(6, max_len=10)(zeros of dtype {dtype}). Returned dtype {got.dtype}; "
        "the output must keep the input's dtype (cast pe to x.dtype before adding)."
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

    def run(cls):
        block = cls(E, heads, ff, dropout=0.0, norm_first=norm_first, causal=causal).to(DT)
        _copy_layer_into(block, layer)
        with torch.no_grad():
            return block(x.clone()) if keep is None else block(x.clone(), keep.clone())

    got, expected = run(impl.TransformerBlock), _layer_output(layer, x, causal, keep)
    cause = _module_cause("TransformerBlock", run, got) if error_report(got, expected, 1e-7, 1e-10) else None
    order = ("x = x + attention(norm1(x)); x = x + feed_forward(norm2(x))" if norm_first else
             "x = norm1(x + attention(x)); x = norm2(x + feed_forward(x))")
    assert_close(got, expected, rtol=1e-7, atol=1e-10, cause=cause,
                 call=_block_call(E, heads, ff, norm_first, causal, x, keep),
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
        before, after = block(x), block(x2)
    assert_close(after[:, : cut + 1], before[:, : cut + 1], call=_block_call(4, 2, 8, norm_first, True, x2, None),
                 rtol=1e-7, atol=1e-10,
                 because=f"with causal=True the outputs at positions 0..{cut} must not depend on the tokens after "
                         f"{cut}: pass causal on to the attention.")


@pytest.mark.exercise("TransformerBlock")
@pytest.mark.parametrize("norm_first", [False, True], ids=["post-norm", "pre-norm"])
def test_transformer_block_dropout_is_off_in_eval(impl, norm_first):
    gen = generator(11)
    layer = _encoder_layer(6, 2, 10, norm_first, 11)
    block = impl.TransformerBlock(6, 2, 10, dropout=0.3, norm_first=norm_first).to(DT)
    _copy_layer_into(block, layer)
    block.eval()
    x = randn(gen, 2, 5, 6)
    with torch.no_grad():
        got = block(x.clone())
    assert_close(got, _layer_output(layer, x, False, None), rtol=1e-7, atol=1e-10,
                 call=_block_call(6, 2, 10, norm_first, False, x, None, dropout=0.3) + " in eval() mode",
                 because="in eval() mode every dropout is the identity.")
