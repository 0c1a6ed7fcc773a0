"""Checks for m07_efficiency: tiled (flash) attention, speculative decoding, sliding-window masks.

The oracles are PyTorch's own ``F.scaled_dot_product_attention`` (float64, with the mask built by the checks),
plain greedy decoding written out in the checks (argmax of the target's last logits, one call per token), and
a direct double loop over (query, key) pairs for the masks. The models that speculative decoding drives are
the reference ``MiniGPT`` of w15_mini_gpt, built tiny in float64 with large seeded weights, and small
functions of the token ids whose choices the checks know in advance. The memory rule of ``flash_attention``
is observed with a ``TorchDispatchMode`` that sees every tensor each operation returns, and how many numbers
its storage holds (views of an existing tensor share its storage and cost nothing). Every random value comes
from a drawn seed (``checks.torch_strategies``): no global RNG.

Checklist notes (CONTRACTS.md items that do not apply, and why):
- Randomness (8): no exercise draws random numbers (speculative decoding here is greedy).
- State over time (6): no exercise keeps state; ``speculative_decode`` is run twice on the same models (the
  models are plain callables and are never changed), and its rounds are the state that the call counts pin.
- Structure of modules (7): no exercise builds a module.
- Devices (3): without CUDA, ``flash_attention`` and ``sliding_window_mask`` are checked on the ``meta``
  device. ``speculative_decode`` compares token values to decide what to keep, which meta tensors lack; the
  dtype of its result is checked on the CPU, and a ``gpu`` check runs flash attention on CUDA.
- dtypes (3): ``flash_attention`` keeps float32, float64 and bfloat16; ``speculative_decode`` keeps int32 and
  int64 ids; the masks are bool.
- Sizes (2): L = 0, S = 0, batch 0, 2-D inputs (no batch), broadcast batch dimensions, lengths that are not
  multiples of ``block_size`` and ``block_size`` 1 or larger than the input; ``t = 0`` and ``window`` 1 or
  above ``t``; ``max_new_tokens`` 0 and 1, a one-token prompt. ``speculative_decode`` takes a batch of one
  only (documented ``ValueError`` otherwise).
- Inputs not modified (1): q, k, v and the key mask, and idx, are compared with pristine copies.
- Errors (10): every documented ValueError is raised, and its message must name the argument and the offending
  value, shape or sizes (``_raises_naming``); floats and bools where ints are expected are TypeErrors.
"""

from __future__ import annotations

import copy
import functools
import math
import re

import pytest
import torch
import torch.nn.functional as F
from hypothesis import example, given, settings
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from checks.numerics import assert_close, cause_line, describe, error_report, format_call, likely_cause
from checks.torch_strategies import generator, randn, seeded, seeds

pytestmark = pytest.mark.kata("m07_efficiency")

KATA = "m07_efficiency"
DT = torch.float64
TIGHT = {"rtol": 1e-7, "atol": 1e-10}  # float64 against PyTorch's float64 (different summation orders)


def _assert_unchanged(call: str, pristine: dict, given_args: dict, cause=None) -> None:
    """Every tensor argument still equals its pristine copy (values, shape, dtype, requires_grad)."""
    for name, before in pristine.items():
        if not isinstance(before, torch.Tensor):
            continue
        after = given_args[name]
        if (after.shape == before.shape and after.dtype == before.dtype
                and after.requires_grad == before.requires_grad and torch.equal(after, before)):
            continue
        change = error_report(after.detach(), before, 0, 0) if after.shape == before.shape else (
            f"its shape went from {tuple(before.shape)} to {tuple(after.shape)}")
        raise AssertionError(
            f"Called {call}. It modified its argument `{name}` in place: {change}.\nBecause the caller still needs "
            "its inputs: build new tensors (s = q_tile * scale) instead of writing into them (q_tile *= scale)."
            + cause_line(cause)
        )


def _raises_naming(error: type[Exception], names: tuple[str, ...], fn, *args, **kwargs) -> None:
    """``fn(*args, **kwargs)`` raises ``error`` whose message names the argument and its value (``names``)."""
    call = format_call(fn.__name__, args, kwargs)
    try:
        fn(*args, **kwargs)
    except error as err:
        missing = [name for name in names if re.search(rf"(?<!\w){re.escape(name)}(?!\w|\.\d)", str(err)) is None]
        assert not missing, (
            f"Called {call}. It raised {type(err).__name__}({str(err)!r}), which does not name {' and '.join(missing)}."
            f"\nBecause the message must say which argument is wrong and what its value was: the caller reads it "
            f"to fix the call, e.g. {type(err).__name__}(\"{names[0]} must be ..., got {names[-1]}\")."
        )
    else:
        raise AssertionError(f"Called {call}. It returned without an error; expected {error.__name__}: {names[0]} "
                             f"is {names[-1]} here, which is not allowed.")


# --------------------------------------------------------------------------------------------------
# flash_attention


class _Allocations(TorchDispatchMode):
    """Records every tensor an operation returns while active: (operation, shape, numbers its storage holds).

    A view (slice, transpose, expand) shares the storage of the tensor it looks at, so it counts what that
    tensor holds: a view of q counts as q, an expanded (1, S) mask counts S numbers, not L * S.
    """

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        # torch wraps __torch_dispatch__ to keep torch.compile out of it, which imports torch._dynamo (2-3 s)
        # the first time; nothing here runs under torch.compile, so the wrapper is not needed
        return False

    def __init__(self, inputs: tuple[torch.Tensor, ...] = ()):
        super().__init__()
        self.created: list[tuple[str, tuple[int, ...], int]] = []
        # with ``inputs``, views of them are left out: only what the call itself allocates is recorded
        self.skip = {t.untyped_storage().data_ptr() for t in inputs}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and (not self.skip or t.untyped_storage().data_ptr() not in self.skip):
                self.created.append((str(func), tuple(t.shape), t.untyped_storage().nbytes() // t.element_size()))
        return out

    def largest(self) -> tuple[str, tuple[int, ...], int]:
        return max(self.created, key=lambda entry: entry[2], default=("nothing", (), 0))


def _lead(kwargs: dict) -> tuple[int, ...]:
    shapes = [kwargs[name].shape[:-2] for name in "qkv"]
    if kwargs.get("key_mask") is not None:
        shapes.append(kwargs["key_mask"].shape[:-1])
    return tuple(torch.broadcast_shapes(*shapes))


def _expected_shape(kwargs: dict) -> tuple[int, ...]:
    return _lead(kwargs) + (kwargs["q"].shape[-2], kwargs["v"].shape[-1])


def _allowed(kwargs: dict) -> torch.Tensor:
    """(..., L, S) bool: which keys each query may attend to, from the checks' own reading of the rules."""
    L, S = kwargs["q"].shape[-2], kwargs["k"].shape[-2]
    allowed = torch.ones(L, S, dtype=torch.bool)
    if kwargs.get("is_causal"):
        allowed = allowed.tril()
    if kwargs.get("key_mask") is not None:
        allowed = allowed & kwargs["key_mask"].cpu()[..., None, :]
    return allowed.expand(_lead(kwargs) + (L, S))


def _torch_attention(kwargs: dict) -> torch.Tensor:
    """PyTorch's SDPA in float64 with the checks' mask; 0 on rows with no allowed key (and for S = 0)."""
    lead = _lead(kwargs)
    q, k, v = (kwargs[name].to(DT) for name in "qkv")
    L, S, E, Ev = q.shape[-2], k.shape[-2], q.shape[-1], v.shape[-1]
    allowed = _allowed(kwargs)
    if L == 0 or S == 0 or math.prod(lead) == 0:
        return torch.zeros(lead + (L, Ev), dtype=DT)
    scale = kwargs.get("scale")
    if scale == 0.0:
        # torch multiplies the masked scores by the scale, and -inf * 0 is nan; zero queries with scale 1 give
        # the same all-zero scores, so the same (uniform over the allowed keys) attention.
        q, scale = torch.zeros_like(q), 1.0
    # at least one leading dimension, all of them expanded to the common shape
    q, k, v = q.expand(lead + (L, E)), k.expand(lead + (S, E)), v.expand(lead + (S, Ev))
    out = F.scaled_dot_product_attention(q[None], k[None], v[None], attn_mask=allowed[None], scale=scale)[0]
    return torch.where(allowed.any(dim=-1, keepdim=True), out, 0.0)


def _flash_call(kwargs: dict) -> str:
    return f"flash_attention({', '.join(f'{name}={describe(v)}' for name, v in kwargs.items())})"


def _call_flash(impl, kwargs: dict) -> torch.Tensor:
    """Call the learner's flash_attention on the very tensors of ``kwargs``; check the result's type and shape."""
    call = _flash_call(kwargs)
    out = impl.flash_attention(**kwargs)
    shape = _expected_shape(kwargs)
    assert isinstance(out, torch.Tensor) and tuple(out.shape) == shape, (
        f"Called {call}. Returned {describe(out)}; expected a tensor of shape {shape}: the leading dimensions of "
        "q, k, v (and key_mask) broadcast together, then (L, Ev), one row per query."
    )
    return out


def _flash_cause(kwargs: dict, actual) -> str | None:
    """The catalogued mistake whose output equals the learner's on these arguments."""
    return likely_cause(KATA, "flash_attention", lambda f: f(**copy.deepcopy(kwargs)), actual, **TIGHT)


def _check_against_torch(impl, kwargs: dict, because: str, tolerance: dict = TIGHT) -> torch.Tensor:
    pristine = copy.deepcopy(kwargs)
    call = _flash_call(kwargs)
    out = _call_flash(impl, kwargs)
    _assert_unchanged(call, pristine, kwargs, cause=lambda: likely_cause(
        KATA, "flash_attention", lambda f: (fresh := copy.deepcopy(pristine), f(**fresh))[0],
        matches=lambda fresh: all(torch.equal(fresh[n], kwargs[n]) for n in "qkv")))
    expected = _torch_attention(kwargs)
    wrong = error_report(out, expected, **tolerance)
    assert_close(out, expected, call=call, because=because, cause=_flash_cause(kwargs, out) if wrong else None,
                 **tolerance)
    return out


@st.composite
def flash_cases(draw):
    """kwargs for flash_attention: 0-2 batch dims (k, v and the mask sometimes broadcast), sizes from 0, lengths
    that are rarely multiples of the block, contiguous or strided inputs, causal or not, a key mask, a scale."""
    gen = generator(draw(seeds))
    batch = tuple(draw(st.lists(st.integers(1, 3), max_size=2)))
    kv_batch = tuple(1 if draw(st.booleans()) else d for d in batch)  # e.g. (B, 1): one k, v for every head
    L, S = draw(st.integers(0, 13)), draw(st.integers(0, 13))
    E, Ev = draw(st.integers(1, 5)), draw(st.integers(1, 4))
    if draw(st.booleans()):  # transposed and sliced views: the layout must not matter
        kwargs = {"q": randn(gen, *batch, E, L, scale=1.5).transpose(-2, -1),
                  "k": randn(gen, *kv_batch, E, S, scale=1.5).transpose(-2, -1),
                  "v": randn(gen, *kv_batch, S, 2 * Ev)[..., ::2]}
    else:
        kwargs = {"q": randn(gen, *batch, L, E, scale=1.5), "k": randn(gen, *kv_batch, S, E, scale=1.5),
                  "v": randn(gen, *kv_batch, S, Ev)}
    block_size = draw(st.sampled_from([None, 1, 2, 3, 4, 5, 8, 64]))
    if block_size is not None:
        kwargs["block_size"] = block_size
    if draw(st.booleans()):
        kwargs["is_causal"] = True
    mask_kind = draw(st.sampled_from(["none", "random", "left_padding"]))
    if mask_kind != "none":
        mask_batch = tuple(1 if draw(st.booleans()) else d for d in batch)[draw(st.integers(0, len(batch))):]
        if mask_kind == "random":
            kwargs["key_mask"] = torch.rand(*mask_batch, S, generator=gen) < 0.6
        else:  # left padding: the first pads[b] keys of each row are padding
            pads = torch.randint(0, S + 1, mask_batch + (1,), generator=gen)
            kwargs["key_mask"] = torch.arange(S) >= pads
    if draw(st.booleans()):
        kwargs["scale"] = draw(st.sampled_from([0.0, 0.3, 1.0, 2.5, -0.7]))
    return kwargs


@pytest.mark.exercise("flash_attention")
@settings(max_examples=40)
@given(flash_cases())
@example({"q": torch.ones(2, 3, 4, dtype=DT), "k": torch.ones(2, 0, 4, dtype=DT),
          "v": torch.ones(2, 0, 2, dtype=DT), "block_size": 2})  # no keys at all: every row is empty
@example({"q": torch.ones(1, 0, 3, dtype=DT), "k": torch.ones(4, 5, 3, dtype=DT),
          "v": torch.ones(4, 5, 2, dtype=DT), "block_size": 2})  # no queries; the batch comes from k
@example({"q": torch.ones(1, 3, 3, dtype=DT), "k": torch.ones(4, 0, 3, dtype=DT),
          "v": torch.ones(1, 0, 2, dtype=DT), "block_size": 2})  # no keys; the batch comes from k
@example({"q": torch.ones(4, 0, 3, dtype=DT), "k": torch.ones(1, 5, 3, dtype=DT),
          "v": torch.ones(1, 5, 2, dtype=DT), "block_size": 2})  # no queries; the batch comes from q
@example({"q": torch.ones(1, 3, 3, dtype=DT), "k": torch.ones(1, 0, 3, dtype=DT),
          "v": torch.ones(4, 0, 2, dtype=DT), "block_size": 2})  # no keys; the batch comes from v
@example({"q": torch.ones(1, 3, 3, dtype=DT), "k": torch.ones(1, 0, 3, dtype=DT), "v": torch.ones(1, 0, 2, dtype=DT),
          "key_mask": torch.ones(4, 0, dtype=torch.bool)})  # no keys; the batch comes from the key mask
def test_flash_attention_matches_torch(impl, kwargs):
    _check_against_torch(impl, kwargs, because=(
        "it must equal torch.nn.functional.scaled_dot_product_attention with the same mask (is_causal top-left "
        "aligned, key_mask True = a real key), tile by tile, whatever the block size; rows with no allowed key, "
        "and all rows when there are no keys, are 0."))


@pytest.mark.exercise("flash_attention")
def test_flash_attention_known_values(impl):
    q = k = torch.eye(4, dtype=DT)[:2][None]  # two orthogonal unit vectors in E = 4 dims: scores I / sqrt(4)
    v = torch.tensor([[[1.0], [3.0]]], dtype=DT)
    a, b = math.exp(0.5) / (math.exp(0.5) + 1), 1 / (math.exp(0.5) + 1)
    cases = [
        ({"q": q, "k": k, "v": v, "block_size": 1}, [[a + 3 * b], [b + 3 * a]],
         "by default the scores q.k = 1 are divided by sqrt(E) = 2 before the softmax: weights softmax([0.5, 0])."),
        ({"q": q, "k": k, "v": v, "block_size": 1, "is_causal": True}, [[1.0], [b + 3 * a]],
         "with is_causal=True the first query sees only the first key."),
        ({"q": q, "k": k, "v": v, "block_size": 1, "key_mask": torch.tensor([False, True])}, [[3.0], [3.0]],
         "key_mask False marks the first key as padding: both queries see only the second key (value 3)."),
        ({"q": q, "k": k, "v": v, "block_size": 1, "key_mask": torch.tensor([False, True]), "is_causal": True},
         [[0.0], [3.0]],
         "query 0 may only see key 0 (causal), which is padding: a row with no allowed key is 0, not nan."),
        ({"q": q, "k": k, "v": v, "scale": 2.0}, [[(e2 := math.exp(2.0)) / (e2 + 1) + 3 / (e2 + 1)],
                                                  [1 / (e2 + 1) + 3 * e2 / (e2 + 1)]],
         "scale=2 multiplies the scores: softmax([2, 0])."),
        ({"q": q, "k": k, "v": v, "block_size": 1, "scale": 0.0}, [[2.0], [2.0]],
         "scale=0 is a scale like any other, not the default: every score is 0, so the weights are uniform. "
         "Test `scale is None`, not `not scale`."),
        ({"q": q, "k": k, "v": v, "block_size": 1, "is_causal": True, "scale": -2.0},
         [[1.0], [(1 + 3 * (e := math.exp(-2.0))) / (1 + e)]],
         "a negative scale flips the scores (softmax([0, -2]) for query 1); a masked score must stay -inf, so "
         "scale the scores first and mask them afterwards (-inf * -2 is +inf, -inf * 0 is nan)."),
    ]
    for kwargs, expected, because in cases:
        out = _call_flash(impl, kwargs)
        expected = torch.tensor([expected], dtype=DT)
        wrong = error_report(out, expected, 1e-9, 1e-12)
        assert_close(out, expected, call=_flash_call(kwargs), because=because, rtol=1e-9, atol=1e-12,
                     cause=_flash_cause(kwargs, out) if wrong else None)


MEMORY_CASES = [  # (block_size or None for the default, is_causal, key mask)
    (32, False, False), (32, True, False), (32, False, True), (32, True, True), (None, True, True), (16, False, True),
]


def _memory_case(block_size, causal: bool, masked: bool, T: int = 256) -> dict:
    gen = generator(4)
    kwargs = {"q": randn(gen, 1, 2, T, 8), "k": randn(gen, 1, 2, T, 8), "v": randn(gen, 1, 2, T, 8)}
    if block_size is not None:
        kwargs["block_size"] = block_size
    if causal:
        kwargs["is_causal"] = True
    if masked:  # left padding of 40 keys (more than a tile) in the only batch row, shared by both heads
        kwargs["key_mask"] = (torch.arange(T) >= 40)[None, None, :]
    return kwargs


def _largest_created(candidate, kwargs: dict) -> tuple[str, tuple[int, ...], int]:
    fresh = copy.deepcopy(kwargs)  # outside the recording: copying the inputs is not the candidate's doing
    with _Allocations() as seen:
        candidate(**fresh)
    return seen.largest()


@pytest.mark.exercise("flash_attention")
@pytest.mark.parametrize(("block_size", "causal", "masked"), MEMORY_CASES)
def test_flash_attention_never_builds_the_score_matrix(impl, block_size, causal, masked):
    kwargs = _memory_case(block_size, causal, masked)
    bs = 64 if block_size is None else block_size
    T, lead = 256, 2  # (1, 2) leading dimensions: 2 (batch, head) pairs
    call = _flash_call(kwargs)
    with _Allocations() as seen:
        out = _call_flash(impl, kwargs)
    tile = lead * bs * bs
    limit = max(tile, lead * T * 8)  # one tile of scores per (batch, head), or the size of q, k, v and the output
    op, shape, size = seen.largest()
    if size > limit:
        learner = (op, shape, size)
        cause = likely_cause(KATA, "flash_attention", lambda f: _largest_created(f, kwargs),
                             matches=lambda found: found[1:] == learner[1:])
        raise AssertionError(
            f"Called {call}. It created a tensor of shape {shape} holding {size:,} numbers (made by {op}); "
            f"expected at most {limit:,}: one {bs} x {bs} tile of scores for each of the {lead} (batch, head) pairs "
            f"({tile:,}), or the size of q, k, v and the output ({lead * T * 8:,}).\nBecause flash attention never "
            f"builds the {T} x {T} matrix of scores, a {T} x {T} mask, or a strip of {bs} x {T} scores: tile the "
            "queries AND the keys, and combine the key tiles with the online softmax (running max, sum and "
            "weighted values)." + cause_line(cause)
        )
    tiles = [entry for entry in seen.created if entry[1][-2:] == (bs, bs)]
    assert tiles, (
        f"Called {call}. No tensor of scores of shape (..., {bs}, {bs}) was made; the largest tensors were "
        f"{sorted({entry[1] for entry in seen.created}, key=math.prod)[-3:]}.\nBecause block_size "
        + ("defaults to 64" if block_size is None else f"is {bs}")
        + f" and is the tile size for both queries and keys: with {T} queries and keys there are full "
          f"{bs} x {bs} tiles." + cause_line(lambda: likely_cause(
              KATA, "flash_attention", lambda f: _largest_created(f, kwargs), matches=lambda found: found[1:] == (
                  max(((o, s, n) for o, s, n in seen.created), key=lambda e: e[2])[1:]))))
    expected = _torch_attention(kwargs)
    wrong = error_report(out, expected, **TIGHT)
    assert_close(out, expected, call=call, because="tiling changes how attention is computed, not its value.",
                 cause=_flash_cause(kwargs, out) if wrong else None, **TIGHT)


@pytest.mark.exercise("flash_attention")
@pytest.mark.parametrize("block_size", [2, 3])
def test_flash_attention_left_padding_and_empty_rows(impl, block_size):
    """Left padding longer than a tile: whole tiles in which a row has no allowed key yet (exp(-inf + inf))."""
    gen = generator(11)
    q, k, v = randn(gen, 3, 2, 9, 4), randn(gen, 3, 2, 9, 4), randn(gen, 3, 2, 9, 3)
    pads = torch.tensor([0, 5, 9])  # batch row 1: 5 padded keys; batch row 2: every key is padding
    key_mask = (torch.arange(9)[None, :] >= pads[:, None])[:, None, :]  # (3, 1, 9), shared by both heads
    for causal in (False, True):
        kwargs = {"q": q, "k": k, "v": v, "block_size": block_size, "key_mask": key_mask, "is_causal": causal}
        out = _call_flash(impl, kwargs)
        call = _flash_call(kwargs)
        assert torch.isfinite(out).all(), (
            f"Called {call}. The output contains nan or inf at {torch.nonzero(~torch.isfinite(out))[:4].tolist()}..."
            f"\nBecause rows whose first key tiles are all padding have a running max of -inf, and exp(m - m_new) "
            "= exp(-inf - (-inf)) = nan: shift such rows by 0 instead. A row with no allowed key at all is 0."
            + cause_line(lambda kwargs=kwargs: likely_cause(KATA, "flash_attention", lambda f: f(
                **copy.deepcopy(kwargs)), matches=lambda got: not torch.isfinite(got).all())))
        expected = _torch_attention(kwargs)
        wrong = error_report(out, expected, **TIGHT)
        assert_close(out, expected, call=call, cause=_flash_cause(kwargs, out) if wrong else None, **TIGHT,
                     because="padded keys get no weight, the other keys share all of it, and batch row 2 (every key "
                             "padded) and, with is_causal, the queries before the first real key are 0.")


@pytest.mark.exercise("flash_attention")
def test_flash_attention_extreme_scores_in_some_rows(impl):
    gen = generator(21)
    q, k, v = randn(gen, 2, 7, 3), randn(gen, 2, 7, 3, scale=3.0), randn(gen, 2, 7, 2)
    q[:, 1] *= 1e3  # query 1: scores of size ~1e4, a nearly one-hot softmax
    q[:, 4] *= 1e-6  # query 4: nearly uniform weights
    k[:, 6] *= 1e3  # the last key (in the last, shorter tile) takes over some rows late: the max jumps
    kwargs = {"q": q, "k": k, "v": v, "block_size": 3}
    _check_against_torch(impl, kwargs, because=(
        "exp() of scores of size 1e4 overflows unless every tile subtracts the running max, and the sums "
        "accumulated under an older, smaller max must be rescaled by exp(m_old - m_new) when a later tile raises it."))
    # the same, with the huge keys masked out: padding (key 6) and, for is_causal, keys after the query
    kwargs = {"q": q, "k": k, "v": v, "block_size": 3, "is_causal": True,
              "key_mask": torch.tensor([True] * 6 + [False])}
    _check_against_torch(impl, kwargs, because=(
        "a masked key gets no weight however large its score: set its score to -inf BEFORE the running max and "
        "the exp(). Multiplying p by the mask afterwards lets a masked score of 1e4 set the max, and then "
        "exp(s - max) of every real key underflows to 0."))


@pytest.mark.exercise("flash_attention")
@pytest.mark.parametrize("masked", [False, True])
def test_flash_attention_gradients_match_torch(impl, masked):
    gen = generator(7)
    q, k, v = randn(gen, 2, 7, 4), randn(gen, 2, 6, 4), randn(gen, 2, 6, 3)
    options = {"block_size": 4, "is_causal": True}
    if masked:
        options["key_mask"] = torch.tensor([[True] * 6, [False, False, True, True, True, False]])[:, :]
    weights = randn(gen, 2, 7, 3)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    call = format_call("flash_attention", (q, k, v), options)
    out = _call_flash(impl, {"q": leaves[0], "k": leaves[1], "v": leaves[2], **options})
    assert out.requires_grad, (
        f"Called {call} on q, k, v that require gradients. The output does not require grad: nothing connects "
        "it to q, k and v.\nBecause flash attention is used for training too: no torch.no_grad(), no .detach() of "
        "what the output is made of." + cause_line(lambda: likely_cause(
            KATA, "flash_attention", lambda f: f(*(t.clone().requires_grad_() for t in (q, k, v)), **options),
            matches=lambda got: not got.requires_grad)))
    try:
        (out * weights).sum().backward()
    except RuntimeError as err:
        raise AssertionError(
            f"Called {call} and backward(). The backward pass failed: {err}\nBecause autograd needs the values it "
            "saved: write acc = acc * alpha + p @ v_tile, not acc.mul_(alpha).add_(...) on tensors autograd saved."
        ) from None
    expected_leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    expected = _torch_attention({"q": expected_leaves[0], "k": expected_leaves[1], "v": expected_leaves[2],
                                 **options})
    (expected * weights).sum().backward()
    for name, leaf, oracle in zip("qkv", leaves, expected_leaves, strict=True):
        assert leaf.grad is not None, f"Called {call} and backward(). {name}.grad is None: it got no gradient."
        assert_close(leaf.grad, oracle.grad, call=f"{call} and backward() -> {name}.grad", **TIGHT,
                     because="the gradients must equal those of ordinary attention (the running max is only a "
                             "shift, which cancels).")


@pytest.mark.exercise("flash_attention")
def test_flash_attention_gradients_stay_finite_for_empty_rows(impl):
    gen = generator(9)
    q, k, v = randn(gen, 2, 5, 3), randn(gen, 2, 5, 3), randn(gen, 2, 5, 2)
    key_mask = torch.tensor([[False, False, False, True, True], [False] * 5])  # batch 1: no real key at all
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    options = {"block_size": 2, "is_causal": True, "key_mask": key_mask}
    call = format_call("flash_attention", (q, k, v), options)
    out = _call_flash(impl, {"q": leaves[0], "k": leaves[1], "v": leaves[2], **options})
    try:
        (out * randn(gen, *out.shape)).sum().backward()
    except RuntimeError as err:
        raise AssertionError(f"Called {call} and backward(). The backward pass failed: {err}") from None
    for name, leaf in zip("qkv", leaves, strict=True):
        grad = leaf.grad
        assert grad is not None and torch.isfinite(grad).all(), (
            f"Called {call} and backward(). The gradient of {name} is {grad}: it must exist and be finite.\n"
            "Because rows with no allowed key (all of batch 1; queries 0-2 of batch 0) must not send nan back: "
            "the forward pass must never compute inf - inf or 0 / 0, even in rows that end up 0."
        )
    assert_close(leaves[0].grad[1], torch.zeros(5, 3, dtype=DT), call=f"{call} and backward() -> q.grad[1]",
                 because="batch row 1 has no real key: its output is the constant 0, so its queries get no gradient.")


# float32 and bfloat16 against a float64 oracle: a few units of each dtype's epsilon on values of size ~1
DTYPE_TOLERANCES = {torch.float32: {"rtol": 1e-5, "atol": 1e-5}, torch.bfloat16: {"rtol": 4e-2, "atol": 4e-2}}


@pytest.mark.exercise("flash_attention")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_flash_attention_keeps_the_input_dtype(impl, dtype):
    gen = generator(8)
    kwargs = {"q": randn(gen, 2, 7, 4).to(dtype), "k": randn(gen, 2, 6, 4).to(dtype),
              "v": randn(gen, 2, 6, 3).to(dtype), "block_size": 4, "is_causal": True,
              "key_mask": torch.tensor([True, True, False, True, True, True])}
    out = _call_flash(impl, kwargs)
    call = _flash_call(kwargs)
    assert out.dtype == dtype, (
        f"Called {call}. The output has dtype {out.dtype}; expected {dtype}, the dtype of q, k and v (running "
        "statistics created in another dtype promote the result)." + cause_line(lambda: likely_cause(
            KATA, "flash_attention", lambda f: f(**copy.deepcopy(kwargs)), matches=lambda got: got.dtype == out.dtype))
    )
    # compared in float64 (NumPy, which reports the differences, has no bfloat16)
    assert_close(out.double(), _torch_attention(kwargs), call=call, **DTYPE_TOLERANCES[dtype],
                 because=f"the result is computed in {dtype}; it may differ from float64 by {dtype}'s rounding only.")


@pytest.mark.exercise("flash_attention")
def test_flash_attention_runs_where_its_inputs_live(impl):
    q, k, v = (torch.empty(*shape, device="meta") for shape in ((2, 3, 5, 4), (2, 1, 7, 4), (2, 1, 7, 6)))
    kwargs = {"q": q, "k": k, "v": v, "block_size": 3, "is_causal": True,
              "key_mask": torch.ones(2, 1, 7, dtype=torch.bool, device="meta")}
    out = _call_flash(impl, kwargs)
    assert out.device == q.device, (
        f"Called {_flash_call(kwargs)}. The output is on {out.device}; expected {q.device}, the device of q, k and v: "
        "create the running statistics and the positions of the causal tiles there too (q.new_zeros, "
        "torch.arange(..., device=q.device)), or flash attention fails on a GPU."
    )


@pytest.mark.exercise("flash_attention")
def test_flash_attention_handles_empty_batches(impl):
    gen = generator(5)
    kwargs = {"q": randn(gen, 0, 3, 3), "k": randn(gen, 0, 4, 3), "v": randn(gen, 0, 4, 2), "block_size": 2,
              "is_causal": True, "key_mask": torch.ones(0, 4, dtype=torch.bool)}
    _check_against_torch(impl, kwargs, because="an empty batch is legal: the result is empty too.")


@pytest.mark.exercise("flash_attention")
def test_flash_attention_rejects_bad_input(impl):
    gen = generator(3)
    q, k, v = randn(gen, 2, 3, 4), randn(gen, 2, 5, 4), randn(gen, 2, 5, 2)
    with pytest.raises(ValueError, match=r"4.*3|3.*4"):
        impl.flash_attention(q, randn(gen, 2, 5, 3), v)  # E of q is 4, of k is 3
    with pytest.raises(ValueError, match=r"5.*4|4.*5"):
        impl.flash_attention(q, k, randn(gen, 2, 4, 2))  # 5 keys but 4 values
    # 6 mask entries for 5 keys; 1 entry for 5 keys, which torch would broadcast: every query would see every key
    for entries in (6, 1):
        _raises_naming(ValueError, ("key_mask", str(entries)), impl.flash_attention, q, k, v,
                       key_mask=torch.ones(2, entries, dtype=torch.bool))
    with pytest.raises(ValueError):
        impl.flash_attention(q, k, v, key_mask=torch.ones(2, 5))  # a float mask is not a key mask
    for bad in (0, -2):
        _raises_naming(ValueError, ("block_size", str(bad)), impl.flash_attention, q, k, v, block_size=bad)
    for bad in (2.0, True):
        with pytest.raises(TypeError):
            impl.flash_attention(q, k, v, block_size=bad)


# --------------------------------------------------------------------------------------------------
# speculative_decode

TINY = {"vocab_size": 13, "embed_dim": 16, "num_heads": 2, "num_layers": 2, "ff_dim": 32, "max_len": 64,
        "dropout": 0.0}


@functools.cache
def _mini_gpts() -> dict[str, torch.nn.Module]:
    """Tiny float64 MiniGPTs (the reference of w15_mini_gpt) with large seeded weights, so logits are far apart:
    the target, a close copy of it (a good draft) and an unrelated one (a poor draft)."""
    from reference.phase2.w15_mini_gpt import MiniGPT  # the checks build the models; the learner's code gets callables

    def build(seed: int, std: float = 0.4) -> torch.nn.Module:
        with seeded(seed):
            model = MiniGPT(**TINY).double().eval()
        gen = generator(seed)
        with torch.no_grad():
            for name, p in sorted(model.named_parameters(), key=lambda item: item[0]):
                noise = torch.randn(p.shape, generator=gen, dtype=DT)
                if p.dim() >= 2:
                    p.copy_(noise * std)
                else:  # biases and norms
                    p.copy_(noise * 0.1 + (1.0 if ".ln" in f".{name}" and name.endswith("weight") else 0.0))
        for p in model.parameters():
            p.requires_grad_(True)  # as a trained model's: generation must switch gradients off itself
        return model

    target = build(1)
    close = copy.deepcopy(target)
    with torch.no_grad():
        gen = generator(99)
        for p in close.parameters():
            p.add_(torch.randn(p.shape, generator=gen, dtype=DT) * 0.08)
    return {"target": target, "close": close, "other": build(2)}


def _roll_last(logits: torch.Tensor) -> torch.Tensor:
    return logits.roll(1, dims=-1)  # the argmax moves to the next token id: always a different choice


def _draft(kind: str):
    """The draft callable of a kind: the target itself, close to it, unrelated, always wrong, or wrong every
    third position."""
    models = _mini_gpts()
    target = models["target"]
    if kind in ("close", "other"):
        return models[kind]
    if kind == "target":
        return target
    if kind == "wrong":
        return lambda ids: _roll_last(target(ids))
    assert kind == "every_third"

    def sometimes_wrong(ids):
        logits = target(ids)
        wrong = (torch.arange(ids.shape[1]) % 3 == 2)[None, :, None]
        return torch.where(wrong, _roll_last(logits), logits)

    return sometimes_wrong


class _Recorded:
    """A model wrapper that records every call: the length of the ids, whether autograd was on, the ids' dtype."""

    def __init__(self, fn, name: str):
        self.fn, self.name, self.calls = fn, name, []

    def __call__(self, ids):
        self.calls.append({"length": ids.shape[-1], "grad": torch.is_grad_enabled(), "dtype": ids.dtype})
        return self.fn(ids)

    def __repr__(self) -> str:
        return self.name


@torch.no_grad()
def _greedy(target, idx: torch.Tensor, n: int) -> torch.Tensor:
    """Plain greedy decoding, the slow obvious way: the whole sequence, the argmax of the last logits."""
    for _ in range(n):
        idx = torch.cat([idx, target(idx)[:, -1, :].argmax(dim=-1, keepdim=True).to(idx.dtype)], dim=1)
    return idx


@torch.no_grad()
def _rounds(draft, greedy: torch.Tensor, start: int, n: int, k: int) -> dict[str, int]:
    """What the docstring's rounds do, read off the greedy tokens: kept guesses, target calls, draft calls."""
    done = accepted = rounds = guesses = 0
    while done < n:
        d = min(k, n - done - 1)
        kept = 0
        while kept < d:
            position = start + done + kept
            if int(draft(greedy[:, :position])[0, -1].argmax()) != int(greedy[0, position]):
                break
            kept += 1
        accepted, rounds, guesses, done = accepted + kept, rounds + 1, guesses + d, done + kept + 1
    return {"accepted": accepted, "target calls": rounds, "draft calls": guesses}


def _spec_call(kind: str, idx, n, k) -> str:
    k_text = "" if k is None else f", k={k}"
    return f"speculative_decode(target, draft={kind}, idx={describe(idx)}, max_new_tokens={n}{k_text})"


def _run_speculative(impl, kind: str, idx: torch.Tensor, n: int, k: int | None, target_fn=None, draft_fn=None):
    """Call the learner's speculative_decode with recording wrappers; check the result's form and idx."""
    target = _Recorded(target_fn or _mini_gpts()["target"], "target")
    draft = _Recorded(draft_fn or _draft(kind), f"draft ({kind})")
    pristine = idx.clone()
    call = _spec_call(kind, idx, n, k)
    result = impl.speculative_decode(target, draft, idx, n, **({} if k is None else {"k": k}))
    assert isinstance(result, tuple) and len(result) == 2, (
        f"Called {call}. Returned {describe(result)}; expected a tuple (tokens, accepted)."
    )
    tokens, accepted = result
    shape = (1, idx.shape[1] + n)
    assert isinstance(tokens, torch.Tensor) and tuple(tokens.shape) == shape, (
        f"Called {call}. The tokens are {describe(tokens)}; expected shape {shape}: the prompt followed by exactly "
        f"{n} new tokens (a round adds at most the tokens still missing)."
    )
    assert isinstance(accepted, int) and not isinstance(accepted, bool), (
        f"Called {call}. accepted is {accepted!r} ({type(accepted).__name__}); expected a Python int, the number "
        "of draft guesses kept (int(...) of a tensor)."
    )
    _assert_unchanged(call, {"idx": pristine}, {"idx": idx})
    return tokens, accepted, target, draft, call


def _spec_cause(kind, idx, n, k, target_fn, draft_fn, observed) -> str | None:
    """The catalogued mistake that reproduces what the learner's code returned and how it called the models."""

    def run(candidate):
        target, draft = _Recorded(target_fn, "target"), _Recorded(draft_fn, "draft")
        tokens, accepted = candidate(target, draft, idx.clone(), n, **({} if k is None else {"k": k}))
        return {"tokens": tokens.tolist(), "accepted": accepted, "target calls": len(target.calls),
                "draft calls": len(draft.calls), "grad": any(c["grad"] for c in target.calls + draft.calls)}

    return likely_cause(KATA, "speculative_decode", run, matches=lambda got: got == observed)


def _check_speculative(impl, kind: str, idx: torch.Tensor, n: int, k: int | None):
    """Tokens equal plain greedy decoding, and the accepted count and the calls are those of the rounds."""
    target_fn, draft_fn = _mini_gpts()["target"], _draft(kind)
    tokens, accepted, target, draft, call = _run_speculative(impl, kind, idx, n, k)
    expected = _greedy(target_fn, idx, n)
    plan = _rounds(draft_fn, expected, idx.shape[1], n, 4 if k is None else k)
    observed = {"tokens": tokens.tolist(), "accepted": accepted, "target calls": len(target.calls),
                "draft calls": len(draft.calls), "grad": any(c["grad"] for c in target.calls + draft.calls)}
    cause = functools.partial(_spec_cause, kind, idx, n, k, target_fn, draft_fn, observed)
    if not torch.equal(tokens, expected):
        assert_close(tokens, expected, call=call, atol=0, rtol=0, cause=cause(), because=(
            "speculative decoding must return exactly the target's own greedy tokens, whatever the draft guesses: "
            "keep a guess only while it equals the target's argmax at that position, then add the target's token."))
    got = {name: observed[name] for name in plan}
    assert got == plan, (
        f"Called {call}. It kept {accepted} guesses with {len(target.calls)} target calls and {len(draft.calls)} "
        f"draft calls; expected {plan}.\nBecause each round drafts d = min(k, tokens left - 1) guesses (one draft "
        "call each), calls the target once on the sequence and all d guesses, keeps the guesses up to the first "
        "that differs from the target's choice, and then adds the target's own next token (a correction, or a "
        "bonus when all d were kept)." + cause_line(cause)
    )
    grads = [c for c in target.calls + draft.calls if c["grad"]]
    assert not grads, (
        f"Called {call}. {len(grads)} of the {len(target.calls) + len(draft.calls)} model calls ran with autograd "
        "on.\nBecause generation needs no gradients: run the rounds under torch.no_grad(), or every call keeps "
        "an autograd graph of activations alive." + cause_line(cause)
    )
    return tokens, accepted, target, draft


@pytest.mark.exercise("speculative_decode")
@settings(max_examples=12)
@given(kind=st.sampled_from(["target", "close", "other", "wrong", "every_third"]), seed=seeds,
       prompt=st.integers(1, 5), n=st.integers(0, 12), k=st.sampled_from([None, 1, 2, 3, 5]))
def test_speculative_decode_equals_greedy(impl, kind, seed, prompt, n, k):
    idx = torch.randint(0, TINY["vocab_size"], (1, prompt), generator=generator(seed))
    _check_speculative(impl, kind, idx, n, k)


@pytest.mark.exercise("speculative_decode")
def test_speculative_decode_with_a_perfect_draft_keeps_every_guess(impl):
    idx = torch.tensor([[3, 1, 4]])
    # (6, None) and (9, None) pin the default k = 4: k = 5 needs 1 call for 6 tokens, k = 3 needs 3 for 9
    for n, k, calls in ((20, 4, 4), (9, None, 2), (6, None, 2), (10, 3, 3), (5, 1, 3), (1, 4, 1)):
        _, accepted, target, _ = _check_speculative(impl, "target", idx, n, k)
        assert len(target.calls) == calls < max(n, 2) and accepted == n - calls, (
            f"Called {_spec_call('target', idx, n, k)} with the target as its own draft. It kept {accepted} "
            f"guesses with {len(target.calls)} target calls; expected {n - calls} and {calls}.\nBecause a draft "
            f"that always agrees has all of its guesses kept: a round adds k + 1 tokens (k defaults to 4), so "
            f"ceil({n} / (k + 1)) target calls instead of {n}."
        )


@pytest.mark.exercise("speculative_decode")
def test_speculative_decode_with_a_wrong_draft_still_equals_greedy(impl):
    idx = torch.tensor([[5]])
    _, accepted, target, draft = _check_speculative(impl, "wrong", idx, 7, 3)
    assert accepted == 0 and len(target.calls) == 7, (
        f"Called {_spec_call('wrong', idx, 7, 3)} with a draft that never guesses the target's token. It kept "
        f"{accepted} guesses with {len(target.calls)} target calls; expected 0 and 7: every round keeps nothing "
        "and adds only the target's correction."
    )


def _counting_target(ids):
    """Predicts (last token + 1) % 5 at every position; after a 4 the logits of 0 and 3 tie (argmax: 0)."""
    logits = F.one_hot((ids + 1) % 5, 5).to(DT)
    return torch.where((ids == 4)[..., None], torch.tensor([1.0, 0.0, 0.0, 1.0, 0.0], dtype=DT), logits)


def _counting_draft(ids):
    """The same as the target, except that it guesses 0 after a 2 and ignores the tie."""
    return F.one_hot(torch.where(ids == 2, 0, (ids + 1) % 5), 5).to(DT)


@pytest.mark.exercise("speculative_decode")
def test_speculative_decode_known_values(impl):
    idx = torch.tensor([[0]])
    tokens, accepted, target, draft, call = _run_speculative(impl, "guesses 0 after a 2", idx, 6, 3,
                                                             _counting_target, _counting_draft)
    observed = {"tokens": tokens.tolist(), "accepted": accepted, "target calls": len(target.calls),
                "draft calls": len(draft.calls), "grad": False}
    expected = {"tokens": [[0, 1, 2, 3, 4, 0, 1]], "accepted": 4, "target calls": 2, "draft calls": 5}
    assert {name: observed[name] for name in expected} == expected, (
        f"Called {call}. Returned {observed}; expected {expected}.\nBecause round 1 guesses 1, 2, 0 (3 draft calls) "
        "and the target, in one call, chooses 1, 2, 3: two guesses are kept and 3 corrects the 0. Round 2 has 3 "
        "tokens left, so it guesses 2 (4, 0), the target agrees (after a 4 the tie between 0 and 3 goes to the "
        "lowest id) and adds a bonus 1: 4 guesses kept, 2 target calls."
        + cause_line(lambda: _spec_cause("known", idx, 6, 3, _counting_target, _counting_draft, observed))
    )
    lengths = [c["length"] for c in target.calls], [c["length"] for c in draft.calls]
    assert lengths == ([4, 6], [1, 2, 3, 4, 5]), (
        f"Called {call}. The target was called on sequences of lengths {lengths[0]} and the draft on {lengths[1]}; "
        "expected [4, 6] and [1, 2, 3, 4, 5].\nBecause the draft guesses on the whole sequence plus its guesses so "
        "far, and the target is called once per round on the whole sequence plus all the guesses of the round."
    )


@pytest.mark.exercise("speculative_decode")
def test_speculative_decode_with_no_new_tokens(impl):
    idx = torch.tensor([[2, 7]])
    tokens, accepted, target, draft, call = _run_speculative(impl, "close", idx, 0, 3)
    assert torch.equal(tokens, idx) and accepted == 0 and not target.calls and not draft.calls, (
        f"Called {call}. Returned {tokens.tolist()} and accepted={accepted} after {len(target.calls)} target and "
        f"{len(draft.calls)} draft calls; expected the prompt {idx.tolist()}, 0 and no call at all."
    )


@pytest.mark.exercise("speculative_decode")
def test_speculative_decode_keeps_the_ids_dtype(impl):
    wide = torch.zeros(1, 8, dtype=torch.int32)
    wide[0, ::2] = torch.tensor([1, 6, 2, 9], dtype=torch.int32)
    idx = wide[:, ::2]  # int32, and not contiguous
    tokens, _, target, draft = _check_speculative(impl, "close", idx, 6, 2)
    call = _spec_call("close", idx, 6, 2)
    assert tokens.dtype == torch.int32, (
        f"Called {call}. The tokens have dtype {tokens.dtype}; expected torch.int32, the dtype of idx (argmax returns "
        "int64: convert the chosen tokens with .to(idx.dtype) before appending them)."
    )
    dtypes = {str(c["dtype"]) for c in target.calls + draft.calls}
    assert dtypes == {"torch.int32"}, (
        f"Called {call}. The models were called with ids of dtype {sorted(dtypes)}; expected torch.int32 only, the "
        "dtype of idx: convert each guess with .to(idx.dtype) before appending it (torch.cat promotes int32 and "
        "int64 to int64, and a model exported for int32 ids would reject them)."
    )


@pytest.mark.exercise("speculative_decode")
def test_speculative_decode_rejects_bad_input(impl):
    target = draft = _mini_gpts()["target"]
    idx = torch.tensor([[1, 2]])
    _raises_naming(ValueError, ("max_new_tokens", "-1"), impl.speculative_decode, target, draft, idx, -1)
    _raises_naming(ValueError, ("k", "0"), impl.speculative_decode, target, draft, idx, 3, k=0)
    for bad in ({"max_new_tokens": 3.0}, {"max_new_tokens": True}, {"k": 2.0}, {"k": True}):
        with pytest.raises(TypeError):
            impl.speculative_decode(target, draft, idx, **{"max_new_tokens": 3, **bad})
    for shape in ((2, 3), (1, 0)):  # the message names the shape: (2, 3), torch.Size([2, 3]) or [2, 3]
        _raises_naming(ValueError, ("idx", f"{shape[0]}, {shape[1]}"), impl.speculative_decode, target, draft,
                       torch.zeros(shape, dtype=torch.long), 3)
    for bad in (torch.tensor([1, 2]), torch.tensor([3]), torch.zeros(1, 2, 1, dtype=torch.long)):
        with pytest.raises(ValueError):
            impl.speculative_decode(target, draft, bad, 3)  # not (1, T)


# --------------------------------------------------------------------------------------------------
# sliding_window_mask


def _window_loop(t: int, window: int, causal: bool) -> torch.Tensor:
    """The checks' own mask, one (query, key) pair at a time."""
    mask = torch.zeros(t, t, dtype=torch.bool)
    for i in range(t):
        for j in range(t):
            mask[i, j] = (0 <= i - j < window) if causal else (abs(i - j) < window)
    return mask


def _window_call(t, window, causal) -> str:
    return format_call("sliding_window_mask", (t, window), {} if causal is None else {"causal": causal})


def _call_window(impl, t, window, causal, **extra):
    mask = impl.sliding_window_mask(t, window, **({} if causal is None else {"causal": causal}), **extra)
    call = _window_call(t, window, causal)
    assert isinstance(mask, torch.Tensor) and mask.dtype == torch.bool and tuple(mask.shape) == (t, t), (
        f"Called {call}. Returned {describe(mask)}; expected a bool tensor of shape {(t, t)} (a float mask means "
        "something else to F.scaled_dot_product_attention: it is added to the scores)."
    )
    return mask


@pytest.mark.exercise("sliding_window_mask")
@given(st.integers(0, 12), st.integers(1, 14), st.sampled_from([None, True, False]))
def test_sliding_window_mask_equals_a_loop(impl, t, window, causal):
    mask = _call_window(impl, t, window, causal)
    call = _window_call(t, window, causal)
    assert mask.device.type == "cpu", f"Called {call}. The mask is on {mask.device}; by default it is on the CPU."
    expected = _window_loop(t, window, causal is not False)
    wrong = error_report(mask, expected, 0, 0)
    cause = likely_cause(KATA, "sliding_window_mask", lambda f: f(t, window, **(
        {} if causal is None else {"causal": causal})), mask, atol=0, rtol=0) if wrong else None
    rule = "0 <= i - j < window (causal, the default)" if causal is not False else "|i - j| < window"
    assert_close(mask, expected, call=call, atol=0, rtol=0, cause=cause,
                 because=f"query i may attend to key j exactly when {rule}: True = may attend.")


@pytest.mark.exercise("sliding_window_mask")
def test_sliding_window_mask_known_values(impl):
    for t, window, causal, expected in (
        (4, 2, None, [[1, 0, 0, 0], [1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 1]]),
        (4, 2, False, [[1, 1, 0, 0], [1, 1, 1, 0], [0, 1, 1, 1], [0, 0, 1, 1]]),
        (5, 5, True, torch.ones(5, 5).tril().tolist()),
        (3, 9, True, torch.ones(3, 3).tril().tolist()),
        (3, 9, False, torch.ones(3, 3).tolist()),
        (3, 1, True, torch.eye(3).tolist()),
        (3, 1, False, torch.eye(3).tolist()),
        (0, 3, None, torch.zeros(0, 0).tolist()),
    ):
        mask = _call_window(impl, t, window, causal)
        expected = torch.tensor(expected, dtype=torch.bool).reshape(t, t)
        wrong = error_report(mask, expected, 0, 0)
        cause = likely_cause(KATA, "sliding_window_mask", lambda f, t=t, window=window, causal=causal: f(
            t, window, **({} if causal is None else {"causal": causal})), mask, atol=0, rtol=0) if wrong else None
        assert_close(mask, expected, call=_window_call(t, window, causal), atol=0, rtol=0, cause=cause,
                     because="a window of w keys includes the token itself; window >= t gives the causal mask "
                             "(or, not causal, all True), window 1 the identity.")


@pytest.mark.exercise("sliding_window_mask")
@given(seeds, st.integers(1, 8), st.integers(1, 9), st.booleans())
def test_sliding_window_mask_works_as_an_sdpa_mask(impl, seed, t, window, causal):
    gen = generator(seed)
    q, k, v = randn(gen, 2, t, 3), randn(gen, 2, t, 3), randn(gen, 2, t, 2)
    mask = _call_window(impl, t, window, causal)
    got = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    expected = torch.zeros(2, t, 2, dtype=DT)
    for i in range(t):  # each query attends to its own window only, written out
        keys = [j for j in range(t) if (0 <= i - j < window if causal else abs(i - j) < window)]
        weights = torch.softmax(q[:, i, None, :] @ k[:, keys].transpose(-2, -1) / math.sqrt(3), dim=-1)
        expected[:, i] = (weights @ v[:, keys])[:, 0]
    call = f"F.scaled_dot_product_attention(q, k, v, attn_mask={_window_call(t, window, causal)})"
    assert_close(got, expected, call=call,
                 because="the mask follows SDPA's convention: True = may attend; each query sees its window only.",
                 **TIGHT)


@pytest.mark.exercise("sliding_window_mask")
def test_sliding_window_mask_is_created_on_the_requested_device(impl):
    for device, causal in (("meta", None), (torch.device("meta"), True), ("meta", False)):
        mask = _call_window(impl, 5, 2, causal, device=device)
        assert mask.device.type == "meta", (
            f"Called sliding_window_mask(5, 2{'' if causal is None else f', causal={causal}'}, device={device!r}). "
            f"The mask is on {mask.device}; `device` must place it (torch.arange(t, device=device)), with or without "
            "causal, so that it can meet activations on a GPU."
        )


@pytest.mark.exercise("sliding_window_mask")
def test_sliding_window_mask_rejects_bad_arguments(impl):
    _raises_naming(ValueError, ("t", "-3"), impl.sliding_window_mask, -3, 2)
    _raises_naming(ValueError, ("window", "0"), impl.sliding_window_mask, 4, 0)
    _raises_naming(ValueError, ("window", "-1"), impl.sliding_window_mask, 4, -1, causal=False)
    for args in ((3.0, 2), (3, 2.0), (True, 2), (3, True)):
        with pytest.raises(TypeError):
            impl.sliding_window_mask(*args)  # a float or a bool is not a size


# --------------------------------------------------------------------------------------------------
# benchmarks


@pytest.mark.perf
@pytest.mark.exercise("flash_attention")
def test_flash_attention_time_and_memory_against_sdpa(impl, benchmark, bench_report):
    """flash_attention vs torch's SDPA on the CPU, float32, T = 1024: time against SDPA's fastest CPU kernel, and
    the largest tensor each allocates (views of q, k, v left out) against SDPA's math path, which builds the scores.
    """
    import time

    from torch.nn.attention import SDPBackend, sdpa_kernel

    T, block = 1024, 128
    gen = generator(0)
    q, k, v = (randn(gen, 1, 4, T, 64).float() for _ in range(3))
    with _Allocations((q, k, v)) as seen:
        impl.flash_attention(q, k, v, block_size=block, is_causal=True)
    flash_largest = seen.largest()
    with sdpa_kernel(SDPBackend.MATH), _Allocations((q, k, v)) as seen:
        F.scaled_dot_product_attention(q, k, v, is_causal=True)
    math_largest = seen.largest()
    sdpa_times = []

    def time_sdpa():
        start = time.perf_counter()
        F.scaled_dot_product_attention(q, k, v, is_causal=True)
        sdpa_times.append(time.perf_counter() - start)

    out = benchmark.pedantic(lambda: impl.flash_attention(q, k, v, block_size=block, is_causal=True),
                             setup=time_sdpa, rounds=3, iterations=1)
    flash_time = benchmark.stats.stats.min
    assert_close(out.double(), F.scaled_dot_product_attention(q, k, v, is_causal=True).double(), rtol=1e-4, atol=1e-4,
                 call="flash_attention(q, k, v, block_size=128, is_causal=True) on (1, 4, 1024, 64) float32")
    ratio = math_largest[2] / max(flash_largest[2], 1)
    print(
        f"\nflash attention, T={T}, 4 heads of 64, float32, block {block}, causal, on {torch.get_num_threads()} "
        f"thread(s): {flash_time * 1e3:.1f} ms vs SDPA {min(sdpa_times) * 1e3:.1f} ms "
        f"({flash_time / min(sdpa_times):.1f}x the time: Python loops over tiles); largest tensor allocated: "
        f"flash {flash_largest[1]} "
        f"({flash_largest[2]:,} numbers) vs SDPA math {math_largest[1]} ({math_largest[2]:,}): {ratio:.1f}x smaller"
    )
    bench_report(f"flash attention at T={T}, block {block}, causal, float32: {flash_time * 1e3:.1f} ms vs SDPA "
                 f"{min(sdpa_times) * 1e3:.1f} ms ({flash_time / min(sdpa_times):.1f}x the time); largest tensor "
                 f"{flash_largest[2]:,} numbers vs SDPA math's {math_largest[2]:,} ({ratio:.1f}x smaller)")
    assert ratio >= T // block / 2, (
        f"flash_attention's largest allocation {flash_largest[1]} is only {ratio:.1f}x smaller than SDPA math's "
        f"{math_largest[1]}; with tiles of {block} it should be about {T // block}x smaller."
    )


@pytest.mark.gpu
@pytest.mark.exercise("flash_attention")
def test_flash_attention_uses_less_memory_than_sdpa_math_on_cuda(impl):
    """On CUDA at T = 8192: the peak memory of flash_attention is below that of SDPA's math backend."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    T, block = 8192, 256
    gen = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(1, 8, T, 64, device="cuda", generator=gen) for _ in range(3))

    def peak(fn) -> tuple[int, torch.Tensor]:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        out = fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base, out

    with torch.no_grad():
        flash_peak, out = peak(lambda: impl.flash_attention(q, k, v, block_size=block, is_causal=True))
        with sdpa_kernel(SDPBackend.MATH):
            math_peak, expected = peak(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True))
    print(f"\nflash attention on CUDA, T={T}, 8 heads of 64, float32: peak {flash_peak / 2**20:.0f} MiB vs SDPA math "
          f"{math_peak / 2**20:.0f} MiB ({math_peak / max(flash_peak, 1):.1f}x less)")
    assert out.device == q.device, f"flash_attention on CUDA returned its output on {out.device}."
    assert_close(out.double().cpu(), expected.double().cpu(), rtol=1e-3, atol=1e-3,
                 call=f"flash_attention(q, k, v, block_size={block}, is_causal=True) on CUDA")
    assert flash_peak < math_peak, (
        f"flash_attention on CUDA at T={T} peaked at {flash_peak / 2**20:.0f} MiB, SDPA math at "
        f"{math_peak / 2**20:.0f} MiB: tiling should need far less than the {T} x {T} scores."
    )
