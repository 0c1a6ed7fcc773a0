"""Checks for m09_edge: grouped int4 quantisation, global magnitude pruning, knowledge distillation.

The oracles are the checks' own decoding of the int4 format (written from the docstring, bit by bit) and
closed-form bounds; ``torch.nn.utils.prune.global_unstructured`` with ``L1Unstructured`` on a copy of the
same model (its conventions match: a fraction of all the weights together, Python's ``round``, the smallest
|w| go); ``F.kl_div(..., log_target=True, reduction="batchmean")`` and ``F.cross_entropy`` on the flattened
logits for the distillation loss. Everything compares in float64 unless a check is about another dtype,
and every random value comes from a drawn seed (``checks.torch_strategies``): no global RNG.

Checklist notes (CONTRACTS.md items that do not apply, and why):
- Randomness (8): no exercise draws random numbers.
- Devices (3): without CUDA, devices are checked on the ``meta`` device where the work is shape-level:
  ``dequantize_int4_grouped`` and ``distillation_loss``, and the masks of ``magnitude_prune`` on a meta model.
  ``quantize_int4_grouped`` must reject nan/inf, so it needs values, which meta tensors lack: its outputs'
  device is observed on the CPU only.
- Structure of modules (7): no exercise builds a module. ``magnitude_prune`` must keep the model's
  structure: the same Parameter objects, dtypes, ``requires_grad``, untouched biases/LayerNorm/embedding,
  and a tied weight pruned once; all checked. Which layers count: a subclass of ``nn.Linear`` (the out_proj
  of ``nn.MultiheadAttention``, whose ``in_proj_weight`` is no Linear's weight) and a frozen weight
  (``requires_grad`` False, pruned but given no hook, which torch would refuse).
- Inputs not modified (1): ``magnitude_prune`` modifies the model by design; the checks pin exactly which
  entries change. The other exercises' tensor inputs are compared with pristine copies.
- State over time (6): ``magnitude_prune`` is called twice on one model (larger, then smaller sparsity) and
  the model is trained for several optimizer steps after each call.
- Sizes (2): int4 rows with n = 0, leading sizes 0, 1 and several leading dimensions; pruning at sparsity 0
  and 1, at a tie of Python's round (0.75 * 6 = 4.5 prunes 4), and a model without ``nn.Linear``;
  distillation with no leading dimension (V,), with V = 1, and with 1 or 2 leading dimensions. Empty logits
  are a documented ``ValueError``.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import example, given, settings
from hypothesis import strategies as st
from torch import nn

from checks.numerics import assert_close, cause_line, describe, error_report, format_call, likely_cause
from checks.torch_strategies import generator, randn, seeds

pytestmark = pytest.mark.kata("m09_edge")

KATA = "m09_edge"
DT = torch.float64
TIGHT = {"rtol": 1e-9, "atol": 1e-10}


# --------------------------------------------------------------------------------------------------
# quantize_int4_grouped, dequantize_int4_grouped


def _nibbles(packed: torch.Tensor) -> torch.Tensor:
    """The checks' own unpacking: (..., n // 2) uint8 -> (..., n) int64 nibbles, the low 4 bits first."""
    b = packed.to(torch.int64)
    out = torch.empty(*b.shape[:-1], 2 * b.shape[-1], dtype=torch.int64)
    out[..., 0::2] = b % 16
    out[..., 1::2] = b // 16
    return out


def _pack(q: torch.Tensor) -> torch.Tensor:
    """The checks' own packing of integers in -8 .. 7 (..., n) into bytes (..., n // 2)."""
    n = (q.to(torch.int64) + 8)
    return (n[..., 0::2] + 16 * n[..., 1::2]).to(torch.uint8)


def _expected_scale(w: torch.Tensor, group_size: int) -> torch.Tensor:
    """max |w| / 7 per group (1 for an all-zero group), in float64, shape (..., G)."""
    groups = w.double().reshape(*w.shape[:-1], w.shape[-1] // group_size, group_size)
    absmax = groups.abs().amax(dim=-1) if w.shape[-1] else groups.new_zeros(groups.shape[:-1])
    return torch.where(absmax > 0, absmax / 7, torch.ones_like(absmax))


def _per_element(scale: torch.Tensor, group_size: int) -> torch.Tensor:
    return scale.repeat_interleave(group_size, dim=-1)


SCALE_RTOL = {torch.float64: 1e-12, torch.float32: 1e-6, torch.bfloat16: 1e-2}


def _check_int4(w: torch.Tensor, group_size: int, result, call: str, cause=None) -> tuple:
    """Every documented property of quantize_int4_grouped(w, group_size) -> (packed, scale); returns q, scale.

    ``cause`` finds the catalogued mistake behind a failure; it is only called when something fails.
    """
    assert isinstance(result, tuple) and len(result) == 2, (
        f"Called {call}. Returned {describe(result)}; expected a tuple (packed, scale).")
    packed, scale = result
    lead, n = tuple(w.shape[:-1]), w.shape[-1]
    assert (isinstance(packed, torch.Tensor) and packed.dtype == torch.uint8 and tuple(packed.shape) == lead + (n // 2,)
            and packed.device == w.device), (
        f"Called {call}. packed is {describe(packed)}; expected a torch.uint8 tensor of shape {lead + (n // 2,)} "
        "(two 4-bit values per byte) on w's device." + cause_line(cause))
    shape = lead + (n // group_size,)
    assert (isinstance(scale, torch.Tensor) and tuple(scale.shape) == shape and scale.dtype == w.dtype
            and scale.device == w.device), (
        f"Called {call}. scale is {describe(scale)}; expected shape {shape} (one scale per group of {group_size} "
        f"along the last dimension) in w's dtype {w.dtype}." + cause_line(cause))
    expected_scale = _expected_scale(w, group_size)
    wrong = error_report(scale.double(), expected_scale, SCALE_RTOL[w.dtype], 0.0)
    assert_close(scale.double(), expected_scale, call=call + " -> scale", rtol=SCALE_RTOL[w.dtype],
                 atol=0.0, cause=cause() if wrong and callable(cause) else None,
                 because="each group's scale is its max |w| / 7 (so its largest weight maps to +-7); an all-zero "
                         "group gets 1.0.")
    q = _nibbles(packed) - 8
    bad = (q < -7).nonzero()
    assert not len(bad), (
        f"Called {call}. packed holds the nibble 0 (q = -8) at {tuple(bad[0].tolist())}; quantize only produces "
        "-7 .. 7, stored as q + 8 in 1 .. 15." + cause_line(cause))
    per = _per_element(scale.double(), group_size)
    steps = w.double() / per
    off = (q.double() - steps).abs()
    if off.numel() and float(off.max()) > 0.5 + 1e-6:
        index = tuple(int(i) for i in (off == off.max()).nonzero()[0])
        raise AssertionError(
            f"Called {call}.\nThe value at {index} is {float(w.double()[index])!r}; its group's scale is "
            f"{float(per[index])!r}, so it is {float(steps[index]):.4g} steps, but packed holds q = "
            f"{int(q[index])} there (nibble {int(q[index]) + 8}).\nBecause q = round(w / scale), stored as q + 8, "
            "element 2j in the LOW 4 bits of byte j and 2j + 1 in the HIGH 4 bits; so every value is at most half a "
            "step off." + cause_line(cause))
    zeros = (w == 0) & (q != 0)
    assert not bool(zeros.any()), (
        f"Called {call}. An exact zero of w at {tuple(zeros.nonzero()[0].tolist())} is stored as q = "
        f"{int(q[zeros][0])}; 0 must come back as exactly 0." + cause_line(cause))
    if n:
        full = (q.reshape(*lead, n // group_size, group_size).abs().amax(dim=-1) == 7) | (
            _expected_scale(w, group_size) == 1) & (w.reshape(*lead, n // group_size, group_size) == 0).all(dim=-1)
        assert bool(full.all()), (
            f"Called {call}. Groups {full.logical_not().nonzero().tolist()[:3]} do not use +-7: each group's largest "
            "weight must map to +-7, or precision is thrown away." + cause_line(cause))
    return q, scale


@st.composite
def int4_weights(draw):
    """(w, group_size): 1-3 dims (leading sizes from 0), groups of very different sizes, some all zero, exact
    zeros inside groups, float32/float64/bfloat16, sometimes a transposed view."""
    gen = generator(draw(seeds))
    group_size = draw(st.sampled_from([2, 4, 6, 8]))
    lead = tuple(draw(st.lists(st.integers(0, 3), max_size=2)))
    G = draw(st.integers(0, 3))
    w = randn(gen, *lead, G, group_size)
    if w.numel():
        sizes = torch.tensor(draw(st.lists(st.sampled_from([0.0, 1e-30, 1e-3, 1.0, 7.0, 1e6]), min_size=G,
                                           max_size=G)), dtype=DT)
        w = w * sizes[:, None]
        w = w.masked_fill(torch.rand(w.shape, generator=gen) < 0.2, 0.0)  # exact zeros inside groups
    w = w.reshape(*lead, G * group_size)
    dtype = draw(st.sampled_from([torch.float32, torch.float64, torch.bfloat16]))
    w = w.to(dtype)
    if w.ndim == 2 and draw(st.booleans()):
        w = w.t().contiguous().t()  # a transposed (column-major) view: the layout must not matter
    return w, group_size


def _int4_cause(w: torch.Tensor, group_size: int, packed, scale):
    """A function that names the catalogued mistake giving the same (packed, scale), for _cause_line."""
    def same(result):
        return (isinstance(packed, torch.Tensor) and isinstance(scale, torch.Tensor) and result[0].shape == packed.shape
                and torch.equal(result[0], packed) and result[1].shape == scale.shape
                and torch.allclose(result[1].double(), scale.double(), rtol=1e-6, atol=0))

    return lambda: likely_cause(KATA, "quantize_int4_grouped", lambda f: f(w.clone(), group_size=group_size),
                                matches=same)


@pytest.mark.exercise("quantize_int4_grouped")
@given(int4_weights())
@example((torch.zeros(3, 4), 2))
@example((torch.tensor([[0.0, 7.0, -7.0, 1.0], [0.35, -0.7, 0.0, 0.1]], dtype=DT), 2))
# in bfloat16, 1.984375 / (2.53125 / 7) is misjudged as 5.5 and rounded the wrong way: divide in float32
@example((torch.tensor([[2.53125, -1.515625, 0.453125, 1.984375, 2.4375, -0.244140625, -0.474609375, 1.703125]],
                       dtype=torch.bfloat16), 8))
def test_int4_properties_and_round_trip(impl, case):
    w, group_size = case
    pristine = w.clone()
    call = format_call("quantize_int4_grouped", (w,), {"group_size": group_size})
    result = impl.quantize_int4_grouped(w, group_size=group_size)
    assert torch.equal(w, pristine), f"Called {call}. It modified w in place."
    packed, scale = result if isinstance(result, tuple) and len(result) == 2 else (None, None)
    cause = _int4_cause(pristine, group_size, packed, scale)
    q, scale = _check_int4(w, group_size, result, call, cause)
    per = _per_element(scale.double(), group_size)
    err = (q.double() * per - w.double()).abs()
    bound = per / 2 * (1 + 1e-6) + 1e-300
    assert bool((err <= bound).all()), (
        f"Called {call}. (q - 8 nibble) * scale is off from w by up to {float(err.max()):.3g}; expected at most "
        "scale / 2 for each element's group." + cause_line(cause))
    back_call = f"dequantize_int4_grouped(*{call})"
    packed_before, scale_before = packed.clone(), scale.clone()
    back = impl.dequantize_int4_grouped(packed, scale)
    assert torch.equal(packed, packed_before) and torch.equal(scale, scale_before), (
        f"Called {back_call}. It modified its arguments in place.")
    assert isinstance(back, torch.Tensor) and back.dtype == w.dtype and back.shape == w.shape, (
        f"Called {back_call}. Returned {describe(back)}; expected {tuple(w.shape)} in the scale's dtype {w.dtype}.")
    assert_close(back.double(), q.double() * per, call=back_call, atol=0.0,
                 rtol={torch.float64: 1e-15, torch.float32: 1e-7, torch.bfloat16: 4e-3}[w.dtype],
                 because="it is (nibble - 8) * the group's scale, nibble 2j the low half of byte j.")
    if w.dtype == DT:
        # the packing round trip: quantising the dequantised weights gives the same bytes and scales
        again = impl.quantize_int4_grouped(back, group_size=group_size)
        assert torch.equal(again[0], packed), (
            f"Called quantize_int4_grouped(dequantize_int4_grouped(*{call}), group_size={group_size}). The bytes "
            "differ from the first quantisation: packing and unpacking must be exact inverses.")
        assert_close(again[1], scale, call="quantize_int4_grouped(dequantize(...)) -> scale", rtol=1e-12, atol=0.0,
                     because="the dequantised groups have the same max |w|.")


@pytest.mark.exercise("quantize_int4_grouped")
def test_int4_known_bytes_and_default_group_size(impl):
    w = torch.tensor([[0.0, 7.0, -7.0, 1.0], [0.35, -0.7, 0.0, 0.1]], dtype=DT)
    call = format_call("quantize_int4_grouped", (w,), {"group_size": 2})
    packed, scale = impl.quantize_int4_grouped(w.clone(), group_size=2)
    # row 0: groups [0, 7] (scale 1) and [-7, 1] (scale 1): nibbles 8, 15, 1, 9
    # row 1: [0.35, -0.7] (scale 0.1: q 3.5 -> 4 (a tie, either way), -7) and [0, 0.1] (scale 1/70: q 0, 7)
    assert_close(scale, torch.tensor([[1.0, 1.0], [0.1, 0.1 / 7]], dtype=DT), call=call + " -> scale", atol=0.0,
                 rtol=1e-12, because="one scale per group of 2: max |w| / 7.")
    expected = torch.tensor([[8 | 15 << 4, 1 | 9 << 4], [12 | 1 << 4, 8 | 15 << 4]], dtype=torch.uint8)
    tie = torch.tensor([[8 | 15 << 4, 1 | 9 << 4], [11 | 1 << 4, 8 | 15 << 4]], dtype=torch.uint8)
    assert isinstance(packed, torch.Tensor) and (torch.equal(packed, expected) or torch.equal(packed, tie)), (
        f"Called {call}.\nReturned packed {describe(packed)},\nexpected {describe(expected)}.\nBecause each value is "
        "stored as the nibble q + 8, element 2j in the LOW 4 bits of byte j and element 2j + 1 in the HIGH 4 "
        "bits: byte = (q[2j] + 8) | (q[2j + 1] + 8) << 4." + cause_line(_int4_cause(w, 2, packed, scale)))
    w64 = randn(generator(5), 3, 64)
    packed, scale = impl.quantize_int4_grouped(w64.clone())
    assert tuple(scale.shape) == (3, 2) and tuple(packed.shape) == (3, 32), (
        f"Called quantize_int4_grouped(w of shape (3, 64)). Returned packed {describe(packed)} and scale "
        f"{describe(scale)}; expected (3, 32) and (3, 2): group_size defaults to 32.")
    _check_int4(w64, 32, (packed, scale), "quantize_int4_grouped(w of shape (3, 64))", None)


@pytest.mark.exercise("quantize_int4_grouped")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
def test_dequantize_every_byte(impl, dtype):
    packed = torch.arange(256, dtype=torch.int64).to(torch.uint8).reshape(4, 64)
    scale = torch.tensor([[0.5, 2.0, -1.0, 0.25]] * 4, dtype=dtype) * torch.arange(1, 5, dtype=dtype)[:, None]
    packed_in = packed.t().contiguous().t()  # a column-major view
    before = (packed_in.clone(), scale.clone())
    got = impl.dequantize_int4_grouped(packed_in, scale)
    call = format_call("dequantize_int4_grouped", (packed, scale))
    assert torch.equal(packed_in, before[0]) and torch.equal(scale, before[1]), (
        f"Called {call}. It modified its inputs.")
    assert isinstance(got, torch.Tensor) and got.dtype == dtype and tuple(got.shape) == (4, 128), (
        f"Called {call}. Returned {describe(got)}; expected shape (4, 128) (two values per byte) in the scale's "
        f"dtype {dtype}.")
    expected = (_nibbles(packed) - 8).double() * _per_element(scale.double(), 32)
    cause = likely_cause(KATA, "dequantize_int4_grouped", lambda f: f(packed.clone(), scale.clone()).double(),
                         got.double(), rtol=1e-2, atol=0) if error_report(got.double(), expected, 4e-3, 0) else None
    assert_close(got.double(), expected, call=call, atol=0.0, rtol=4e-3 if dtype == torch.bfloat16 else 1e-7,
                 cause=cause, because="every byte b holds two values: (b & 15) - 8 first, then (b >> 4) - 8 (a nibble "
                                      "0 means -8), each times the scale of its group of n // G = 32 values.")


@pytest.mark.exercise("quantize_int4_grouped")
def test_dequantize_on_the_meta_device(impl):
    packed = torch.empty(2, 3, 8, dtype=torch.uint8, device="meta")
    scale = torch.empty(2, 3, 4, dtype=torch.bfloat16, device="meta")
    got = impl.dequantize_int4_grouped(packed, scale)
    assert got.device.type == "meta" and tuple(got.shape) == (2, 3, 16) and got.dtype == torch.bfloat16, (
        f"Called dequantize_int4_grouped(uint8 (2, 3, 8) on meta, bfloat16 (2, 3, 4) on meta). Returned "
        f"{describe(got)} on {got.device}; expected (2, 3, 16) bfloat16 on meta: work where the inputs live.")
    empty = impl.dequantize_int4_grouped(torch.zeros(3, 0, dtype=torch.uint8), torch.zeros(3, 0))
    assert tuple(empty.shape) == (3, 0), (
        f"Called dequantize_int4_grouped(bytes of shape (3, 0), scales of shape (3, 0)). Returned {describe(empty)}; "
        "expected shape (3, 0).")


BAD_QUANTIZE = [
    ("int64 w", lambda: (torch.tensor([[1, 2]]), 2), "int64"),
    ("0-dim w", lambda: (torch.tensor(2.0), 2), None),
    ("nan", lambda: (torch.tensor([[1.0, math.nan]]), 2), "nan"),
    ("inf", lambda: (torch.tensor([[-math.inf, 1.0]]), 2), "inf"),
    ("group_size=3", lambda: (torch.zeros(2, 6), 3), "3"),
    ("group_size=0", lambda: (torch.zeros(2, 4), 0), "0"),
    ("group_size=-2", lambda: (torch.zeros(2, 4), -2), "-2"),
    ("group_size=True", lambda: (torch.zeros(2, 4), True), "True"),
    ("group_size=2.0", lambda: (torch.zeros(2, 4), 2.0), "2.0"),
    ("group_size=4 for n=6", lambda: (torch.zeros(2, 6), 4), "4"),
]


@pytest.mark.exercise("quantize_int4_grouped")
@pytest.mark.parametrize(("what", "args", "named"), BAD_QUANTIZE, ids=[b[0] for b in BAD_QUANTIZE])
def test_quantize_int4_rejects_bad_input(impl, what, args, named):
    w, group_size = args()
    with pytest.raises(ValueError) as info:
        impl.quantize_int4_grouped(w, group_size=group_size)
    assert named is None or named in str(info.value), (
        f"Called quantize_int4_grouped with {what}. It raised ValueError({str(info.value)!r}); the message must name "
        f"{named!r}.")


BAD_DEQUANTIZE = [
    ("int8 packed", lambda: (torch.zeros(2, 2, dtype=torch.int8), torch.ones(2, 1)), "int8"),
    ("int64 scale", lambda: (torch.zeros(2, 2, dtype=torch.uint8), torch.ones(2, 1, dtype=torch.int64)), "int64"),
    ("leading dims differ", lambda: (torch.zeros(2, 2, dtype=torch.uint8), torch.ones(3, 1)), "(3, 1)"),
    # these two would broadcast: one scale row for every row of bytes, or an extra leading dimension
    ("one scale row for two rows", lambda: (torch.zeros(2, 2, dtype=torch.uint8), torch.ones(1, 1)), "(1, 1)"),
    ("scale has an extra dim", lambda: (torch.zeros(2, 2, dtype=torch.uint8), torch.ones(2, 2, 1)), "(2, 2, 1)"),
    ("odd group size", lambda: (torch.zeros(2, 3, dtype=torch.uint8), torch.ones(2, 2)), "(2, 2)"),
    ("groups do not divide", lambda: (torch.zeros(2, 2, dtype=torch.uint8), torch.ones(2, 3)), "(2, 3)"),
    ("no groups for values", lambda: (torch.zeros(2, 2, dtype=torch.uint8), torch.ones(2, 0)), "(2, 0)"),
    ("groups without values", lambda: (torch.zeros(2, 0, dtype=torch.uint8), torch.ones(2, 1)), "(2, 1)"),
]


@pytest.mark.exercise("quantize_int4_grouped")
@pytest.mark.parametrize(("what", "args", "named"), BAD_DEQUANTIZE, ids=[b[0] for b in BAD_DEQUANTIZE])
def test_dequantize_int4_rejects_bad_input(impl, what, args, named):
    packed, scale = args()
    with pytest.raises(ValueError) as info:
        impl.dequantize_int4_grouped(packed, scale)
    assert named in str(info.value).replace("torch.Size([", "(").replace("])", ")"), (
        f"Called dequantize_int4_grouped with {what}: packed {describe(packed)}, scale {describe(scale)}. It raised "
        f"ValueError({str(info.value)!r}); the message must name {named!r}.")


# --------------------------------------------------------------------------------------------------
# magnitude_prune


def _mlp(seed: int, dtype=DT) -> nn.Sequential:
    """Two Linear layers of different sizes and scales, a LayerNorm, a bias-free layer; seeded weights."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = nn.Sequential(nn.Linear(6, 8), nn.LayerNorm(8), nn.ReLU(), nn.Linear(8, 5, bias=False),
                              nn.Tanh(), nn.Linear(5, 3))
    gen = generator(seed)
    with torch.no_grad():
        for i, p in enumerate(model.parameters()):
            p.copy_(torch.randn(p.shape, generator=gen, dtype=DT) * (0.3 if i < 2 else 1.0) + (0.5 if i == 3 else 0))
    return model.to(dtype)


class TinyLM(nn.Module):
    """An embedding tied to the output layer: one tensor named twice (emb.weight and head.weight)."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        self.emb = nn.Embedding(7, 4)
        self.fc = nn.Linear(4, 4)
        self.head = nn.Linear(4, 7, bias=False)
        self.head.weight = self.emb.weight
        gen = generator(seed)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.fc(self.emb(ids))))


def _linear_weights(model: nn.Module) -> dict[str, nn.Parameter]:
    """The checks' own list: each distinct nn.Linear weight once, named as model.named_parameters() names it."""
    ids = {id(m.weight) for m in model.modules() if isinstance(m, nn.Linear)}
    return {name: p for name, p in model.named_parameters() if id(p) in ids}


def _prune(impl, model: nn.Module, sparsity: float, call: str) -> dict:
    """Prune with the code under test and check what every call must satisfy; returns the masks."""
    before = {name: (p, p.detach().clone(), p.dtype, p.requires_grad) for name, p in model.named_parameters()}
    buffers = {name: b.clone() for name, b in model.named_buffers()}
    masks = impl.magnitude_prune(model, sparsity)
    weights = _linear_weights(model)
    assert isinstance(masks, dict) and list(masks) == list(weights), (
        f"Called {call}. Returned {describe(masks) if not isinstance(masks, dict) else list(masks)}; expected a dict "
        f"whose keys are {list(weights)}: every distinct nn.Linear weight once (a subclass of nn.Linear and a frozen "
        "weight too), named and ordered as model.named_parameters() gives them.")
    for name, (p, old, dtype, grad) in before.items():
        now = dict(model.named_parameters())[name]
        assert now is p and now.dtype == dtype and now.requires_grad == grad, (
            f"Called {call}. Parameter {name} was replaced or changed its dtype / requires_grad; prune in place "
            "under torch.no_grad() (p.mul_(mask)), so that an optimizer that holds it still works.")
        if name not in weights:
            assert torch.equal(now.detach(), old), (
                f"Called {call}. It changed {name}, which is not the weight of an nn.Linear: only those are pruned.")
    for name, b in model.named_buffers():
        assert torch.equal(b, buffers[name]), f"Called {call}. It changed the buffer {name}."
    for name, mask in masks.items():
        p = weights[name]
        assert isinstance(mask, torch.Tensor) and mask.dtype == torch.bool and mask.shape == p.shape and (
            mask.device == p.device), (
            f"Called {call}. The mask of {name} is {describe(mask)}; expected a bool tensor of shape "
            f"{tuple(p.shape)} on the weight's device.")
        old = before[name][1]
        expected = torch.where(mask, old, torch.zeros_like(old))
        assert torch.equal(p.detach(), expected), (
            f"Called {call}. The weight {name} is not its old value where the mask is True and 0 where it is "
            "False: apply the mask you return, and change nothing else.")
    return masks


def _count_false(masks: dict) -> int:
    return sum(int((~m).sum()) for m in masks.values())


def _prune_cause(make_model, sparsity: float, masks: dict) -> str | None:
    def same(result):
        return (isinstance(masks, dict) and list(result) == list(masks)
                and all(torch.equal(result[k], masks[k]) for k in masks))

    return likely_cause(KATA, "magnitude_prune", lambda f: f(make_model(), sparsity), matches=same)


@pytest.mark.exercise("magnitude_prune")
@settings(max_examples=15)
@given(seeds, st.sampled_from([0.0, 0.1, 0.29, 0.37, 0.5, 0.73, 0.9, 1.0]), st.sampled_from([torch.float32, DT]))
@example(seed=3, sparsity=0.37, dtype=DT)
def test_prune_matches_torch_global_unstructured(impl, seed, sparsity, dtype):
    import torch.nn.utils.prune as prune

    model = _mlp(seed, dtype)
    theirs = copy.deepcopy(model)
    call = f"magnitude_prune(a Sequential of 3 Linear layers ({dtype}), sparsity={sparsity})"
    masks = _prune(impl, model, sparsity, call)
    linears = [m for m in theirs if isinstance(m, nn.Linear)]
    prune.global_unstructured([(m, "weight") for m in linears], pruning_method=prune.L1Unstructured, amount=sparsity)
    expected = {f"{i}.weight": m.weight_mask.bool() for i, m in enumerate(theirs) if isinstance(m, nn.Linear)}
    total = sum(m.numel() for m in expected.values())
    k = round(sparsity * total)
    got_k = _count_false(masks)
    cause = lambda: _prune_cause(lambda: _mlp(seed, dtype), sparsity, masks)  # noqa: E731 - only on a failure
    assert got_k == k, (
        f"Called {call}.\nIt pruned {got_k} of the {total} Linear weights; expected exactly "
        f"round({sparsity} * {total}) = {k}.\nBecause the sparsity counts all nn.Linear weights together (not "
        "biases, not the LayerNorm)."
        + cause_line(cause))
    for name, mask in expected.items():
        if not torch.equal(masks[name], mask):
            raise AssertionError(
                f"Called {call}.\nThe mask of {name} prunes {int((~masks[name]).sum())} weights; "
                f"torch.nn.utils.prune.global_unstructured(L1Unstructured, amount={sparsity}) prunes "
                f"{int((~mask).sum())} there ({int((masks[name] != mask).sum())} entries differ).\nBecause the k "
                "smallest |w| over ALL the Linear layers together are pruned (global), not a fraction of each "
                "layer." + cause_line(cause))


@pytest.mark.exercise("magnitude_prune")
@settings(max_examples=15)
@given(seeds, st.integers(0, 40).map(lambda i: i / 40), st.booleans())
@example(seed=0, sparsity=0.5, bfloat16=False)  # 0.5 * 103 = 51.5: Python's round gives 52
def test_prune_exact_count_with_ties(impl, seed, sparsity, bfloat16):
    # weights drawn from a few values, so many magnitudes tie, some are already 0
    def make():
        model = _mlp(seed)
        gen = generator(seed)
        with torch.no_grad():
            for m in model:
                if isinstance(m, nn.Linear):
                    m.weight.copy_(torch.randint(-3, 4, m.weight.shape, generator=gen).double() / 2)
        return model.to(torch.bfloat16) if bfloat16 else model

    model = make()
    old = {name: p.detach().clone() for name, p in _linear_weights(model).items()}
    call = f"magnitude_prune(a model whose Linear weights are in {{0, +-0.5, +-1, +-1.5}}, sparsity={sparsity})"
    masks = _prune(impl, model, sparsity, call)
    total = sum(p.numel() for p in old.values())
    k, got_k = round(sparsity * total), _count_false(masks)
    cause = _prune_cause(make, sparsity, masks) if got_k != k else None
    assert got_k == k, (
        f"Called {call}.\nIt pruned {got_k} of {total} weights; expected exactly round({sparsity} * {total}) = {k}, "
        "however many magnitudes tie (Python's round sends a half to the even number)." + cause_line(cause))
    pruned = torch.cat([old[n][~m].abs().double() for n, m in masks.items()])
    kept = torch.cat([old[n][m].abs().double() for n, m in masks.items()])
    if pruned.numel() and kept.numel():
        assert float(pruned.max()) <= float(kept.min()), (
            f"Called {call}. It pruned a weight of magnitude {float(pruned.max())} but kept one of "
            f"{float(kept.min())}: the smallest magnitudes go first."
            + cause_line(_prune_cause(make, sparsity, masks)))


@pytest.mark.exercise("magnitude_prune")
def test_prune_known_example_and_edges(impl):
    model = nn.Sequential(nn.Linear(2, 2, bias=False), nn.ReLU(), nn.Linear(2, 1, bias=False)).to(DT)
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[0.1, -2.0], [3.0, 0.5]]))
        model[2].weight.copy_(torch.tensor([[-0.2, 1.0]]))
    masks = _prune(impl, model, 0.5, "magnitude_prune(the docstring's model, 0.5)")
    expected = {"0.weight": torch.tensor([[False, True], [True, False]]), "2.weight": torch.tensor([[False, True]])}
    assert all(torch.equal(masks[k], v) for k, v in expected.items()), (
        f"Called magnitude_prune(the docstring's model, 0.5).\nReturned {masks},\nexpected {expected}.\nBecause k = "
        "round(0.5 * 6) = 3 and the three smallest |w| of both layers together are 0.1, 0.2 and 0.5.")
    model = nn.Sequential(nn.Linear(2, 2, bias=False), nn.ReLU(), nn.Linear(2, 1, bias=False)).to(DT)
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[0.1, -2.0], [3.0, 0.5]]))
        model[2].weight.copy_(torch.tensor([[-0.2, 1.0]]))
    call = "magnitude_prune(the docstring's model, 0.75)"
    masks = _prune(impl, model, 0.75, call)
    assert _count_false(masks) == 4, (
        f"Called {call}.\nIt pruned {_count_false(masks)} of the 6 weights; expected round(0.75 * 6) = round(4.5) "
        "= 4.\nBecause Python's round sends a tie to the even number (as torch.nn.utils.prune does), not up: "
        "k = round(sparsity * N), not floor(sparsity * N + 0.5) or ceil."
        + cause_line(_prune_cause(lambda: copy.deepcopy(model), 0.75, masks)))
    none = _mlp(1)
    masks = _prune(impl, none, 0.0, "magnitude_prune(model, 0.0)")
    assert all(bool(m.all()) for m in masks.values()), "magnitude_prune(model, 0.0) must prune nothing."
    every = _mlp(2)
    masks = _prune(impl, every, 1, "magnitude_prune(model, 1)")
    assert not any(bool(m.any()) for m in masks.values()), (
        "Called magnitude_prune(model, 1). Some weights are kept; sparsity 1 (an int too) prunes every Linear "
        "weight: it is a fraction, not a count as in torch.nn.utils.prune.")
    plain = nn.Sequential(nn.Embedding(5, 3), nn.LayerNorm(3))
    state = copy.deepcopy(plain.state_dict())
    result = impl.magnitude_prune(plain, 0.5)
    assert result == {} and all(torch.equal(v, state[k]) for k, v in plain.state_dict().items()), (
        f"Called magnitude_prune(Sequential(Embedding, LayerNorm), 0.5). Returned {result!r}; expected {{}} and the "
        "model unchanged: it has no nn.Linear layer.")


@pytest.mark.exercise("magnitude_prune")
def test_prune_tied_weight_counted_once(impl):
    model = TinyLM(4)
    call = "magnitude_prune(TinyLM with head.weight tied to emb.weight, sparsity=0.6)"
    masks = _prune(impl, model, 0.6, call)
    assert model.head.weight is model.emb.weight, f"Called {call}. It untied head.weight from emb.weight."
    total = 7 * 4 + 4 * 4  # the tied (7, 4) tensor once, and fc
    assert _count_false(masks) == round(0.6 * total), (
        f"Called {call}. It pruned {_count_false(masks)} weights; expected round(0.6 * {total}) = "
        f"{round(0.6 * total)}: the tied tensor counts once."
        + cause_line(_prune_cause(lambda: TinyLM(4), 0.6, masks)))


class AttentionBlock(nn.Module):
    """nn.MultiheadAttention (its out_proj is a subclass of nn.Linear; in_proj_weight is no Linear's weight)."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(4, 2)
        self.fc = nn.Linear(4, 6)
        gen = generator(seed)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype))


@pytest.mark.exercise("magnitude_prune")
def test_prune_linear_subclasses(impl):
    import torch.nn.utils.prune as prune

    model = AttentionBlock(14)
    theirs = copy.deepcopy(model)
    call = ("magnitude_prune(a model with nn.MultiheadAttention, whose out_proj is a subclass of nn.Linear, and an "
            "nn.Linear fc, 0.5)")
    masks = _prune(impl, model, 0.5, call)
    prune.global_unstructured([(theirs.attn.out_proj, "weight"), (theirs.fc, "weight")],
                              pruning_method=prune.L1Unstructured, amount=0.5)
    expected = {"attn.out_proj.weight": theirs.attn.out_proj.weight_mask.bool(),
                "fc.weight": theirs.fc.weight_mask.bool()}
    assert all(torch.equal(masks[k], v) for k, v in expected.items()), (
        f"Called {call}. The masks differ from torch.nn.utils.prune.global_unstructured over attn.out_proj.weight "
        "and fc.weight: the 20 smallest |w| of their 40 go (a subclass of nn.Linear is an nn.Linear: use "
        "isinstance, not type(m) is nn.Linear).")


@pytest.mark.exercise("magnitude_prune")
def test_prune_frozen_weight(impl):
    import torch.nn.utils.prune as prune

    model = _mlp(13)
    model[3].weight.requires_grad_(False)  # the middle layer is frozen
    theirs = copy.deepcopy(model)
    call = "magnitude_prune(model whose layer 3 has weight.requires_grad False, 0.5)"
    try:
        masks = _prune(impl, model, 0.5, call)
    except RuntimeError as err:
        if isinstance(err, NotImplementedError):  # the stub (NotImplementedError is a RuntimeError)
            raise
        raise AssertionError(
            f"Called {call}. It raised RuntimeError({str(err)!r}).\nBecause a frozen weight is pruned like the others "
            "but gets no hook: torch refuses a hook on a tensor that does not require grad "
            "(register it only when p.requires_grad).") from err
    linears = [m for m in theirs if isinstance(m, nn.Linear)]
    prune.global_unstructured([(m, "weight") for m in linears], pruning_method=prune.L1Unstructured, amount=0.5)
    expected = {f"{i}.weight": m.weight_mask.bool() for i, m in enumerate(theirs) if isinstance(m, nn.Linear)}
    assert all(torch.equal(masks[k], v) for k, v in expected.items()), (
        f"Called {call}. The masks differ from torch.nn.utils.prune.global_unstructured(L1Unstructured, amount=0.5): "
        "a frozen weight is counted and pruned like the others.")
    trainable = [p for p in model.parameters() if p.requires_grad]
    _train(model, torch.optim.SGD(trainable, lr=0.1), randn(generator(3), 9, 6), 2)
    moved = {k: int((model.get_parameter(k).detach()[~m] != 0).sum()) for k, m in masks.items()}
    assert not any(moved.values()), (
        f"Called {call}, then trained the other parameters for 2 SGD steps. Pruned entries are no longer 0 (how many, "
        f"per weight: {moved}); expected all 0: the trainable weights keep their gradient hooks.")


def _train(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, steps: int) -> dict:
    """A few full steps of an asymmetric loss; returns the gradients of the last backward pass."""
    for _ in range(steps):
        optimizer.zero_grad()
        out = model(x)
        loss = (out - torch.linspace(-1, 2, out.shape[-1], dtype=out.dtype)).pow(2).mean() + out[..., 0].sum()
        loss.backward()
        grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
        optimizer.step()
    return grads


OPTIMIZERS = {
    "SGD": lambda ps: torch.optim.SGD(ps, lr=0.1),
    "SGD+momentum": lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=0.01),
    "Adam": lambda ps: torch.optim.Adam(ps, lr=0.05),
    "AdamW": lambda ps: torch.optim.AdamW(ps, lr=0.05, weight_decay=0.1),
}


@pytest.mark.exercise("magnitude_prune")
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_pruned_weights_stay_zero_while_training(impl, name):
    model = _mlp(7)
    call = "magnitude_prune(model, 0.6)"
    masks = _prune(impl, model, 0.6, call)
    clean = _mlp(7)
    clean.load_state_dict(model.state_dict())  # the same pruned weights, without any hook
    x = randn(generator(8), 9, 6)
    grads = _train(model, OPTIMIZERS[name](model.parameters()), x, 1)
    clean_grads = _train(clean, torch.optim.SGD(clean.parameters(), lr=0.0), x, 1)
    for key, mask in masks.items():
        assert key in grads, (
            f"Called {call}, then loss.backward(). {key} got no gradient at all; expected its usual gradient, with "
            "0 at the pruned entries.")
        assert bool((grads[key][~mask] == 0).all()), (
            f"Called {call}, then loss.backward(). The gradient of pruned entries of {key} is "
            f"{describe(grads[key][~mask])}; expected exactly 0: register a hook on each pruned weight "
            "(p.register_hook(lambda grad: grad * mask)), so that training cannot bring them back.")
        assert_close(grads[key][mask], clean_grads[key][mask], call=f"{call}, then loss.backward() -> {key}.grad",
                     **TIGHT, because="the kept weights get their usual gradient: the hook only zeroes pruned entries.")
    _train(model, OPTIMIZERS[name](model.parameters()), x, 3)
    weights = _linear_weights(model)
    for key, mask in masks.items():
        moved = weights[key].detach()[~mask]
        assert bool((moved == 0).all()), (
            f"Called {call}, then trained for 4 steps with {name}. Pruned entries of {key} became "
            f"{describe(moved)}; they must stay exactly 0 (their gradients must be 0).")
        assert not torch.equal(weights[key].detach()[mask], clean.state_dict()[key][mask]), (
            f"Called {call}, then trained with {name}. The kept weights of {key} did not change: only pruned entries "
            "may be frozen.")


@pytest.mark.exercise("magnitude_prune")
def test_prune_twice(impl):
    model = _mlp(9)
    total = sum(p.numel() for p in _linear_weights(model).values())
    first = _prune(impl, model, 0.3, "magnitude_prune(model, 0.3)")
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    x = randn(generator(10), 9, 6)
    _train(model, optimizer, x, 2)
    second = _prune(impl, model, 0.6, "magnitude_prune(model, 0.3), two Adam steps, then magnitude_prune(model, 0.6)")
    k = round(0.6 * total)
    assert _count_false(second) == k, (
        f"The second call magnitude_prune(model, 0.6) pruned {_count_false(second)} weights; expected round(0.6 * "
        f"{total}) = {k} in all, counting those the first call zeroed.")
    assert all(bool((~second[n] | first[n]).all()) for n in first), (
        "The second call magnitude_prune(model, 0.6) kept a weight that the first call had pruned: those are 0, "
        "the smallest magnitudes, so they go first.")
    _train(model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), x, 3)
    third = impl.magnitude_prune(model, 0.2)
    _train(model, torch.optim.SGD(model.parameters(), lr=0.1), x, 3)
    zeros = sum(int((p == 0).sum()) for p in _linear_weights(model).values())
    assert isinstance(third, dict) and zeros >= k, (
        f"magnitude_prune(model, 0.3), then 0.6, then 0.2, with training between: only {zeros} weights are 0 after "
        f"more training; the {k} pruned ones must stay 0 (the hooks of every call stay).")


@pytest.mark.exercise("magnitude_prune")
def test_prune_on_the_meta_device(impl):
    model = _mlp(12).to("meta")
    masks = impl.magnitude_prune(model, 0.4)
    expected = {name: tuple(p.shape) for name, p in _linear_weights(model).items()}
    got = {name: (tuple(m.shape), m.dtype, m.device.type) for name, m in masks.items()}
    assert got == {name: (shape, torch.bool, "meta") for name, shape in expected.items()}, (
        f"Called magnitude_prune(a model on the meta device, 0.4). Returned masks {got}; expected bool masks of "
        f"shapes {expected} on the meta device: build every tensor on the weights' device.")


BAD_SPARSITY = [-0.1, 1.01, math.nan, True, "0.5"]


@pytest.mark.exercise("magnitude_prune")
@pytest.mark.parametrize("sparsity", BAD_SPARSITY, ids=repr)
def test_prune_rejects_bad_sparsity(impl, sparsity):
    model = _mlp(11)
    state = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError) as info:
        impl.magnitude_prune(model, sparsity)
    assert str(sparsity) in str(info.value), (
        f"Called magnitude_prune(model, {sparsity!r}). It raised ValueError({str(info.value)!r}); the message must "
        f"name {sparsity!r}.")
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items()), (
        f"Called magnitude_prune(model, {sparsity!r}). It changed the model before raising: validate first.")


# --------------------------------------------------------------------------------------------------
# distillation_loss


def _oracle(student, teacher, temperature, labels=None, alpha=0.5):
    """The loss from the checks' reading of the docstring, with the library's functions, in float64."""
    V = student.shape[-1]
    s = F.log_softmax(student.detach().double().reshape(-1, V) / temperature, dim=-1)
    t = F.log_softmax(teacher.detach().double().reshape(-1, V) / temperature, dim=-1)
    soft = F.kl_div(s, t, log_target=True, reduction="batchmean") * temperature**2
    if labels is None:
        return soft
    hard = F.cross_entropy(student.detach().double().reshape(-1, V), labels.reshape(-1))
    return alpha * soft + (1 - alpha) * hard


@st.composite
def distillation_cases(draw):
    """kwargs: logits (..., V) with 0-2 leading dims, sometimes strided, rows at +-1e4 in some, T, labels, alpha."""
    gen = generator(draw(seeds))
    lead = tuple(draw(st.lists(st.integers(1, 4), max_size=2)))
    V = draw(st.integers(1, 6))
    spread = draw(st.sampled_from([0.5, 3.0]))
    if draw(st.booleans()):
        student = randn(gen, *lead, 2 * V, scale=spread)[..., ::2]  # a strided view
        teacher = randn(gen, *lead, V, 2, scale=spread)[..., 0]
    else:
        student, teacher = randn(gen, *lead, V, scale=spread), randn(gen, *lead, V, scale=2 * spread)
    if lead and draw(st.booleans()):
        student[(0,) * len(lead)] = torch.linspace(-1e4, 1e4, V, dtype=DT)  # one row of huge logits
        teacher[(0,) * len(lead)] = torch.linspace(1e4, -1e4, V, dtype=DT)
    kwargs = {"student_logits": student, "teacher_logits": teacher}
    temperature = draw(st.sampled_from([None, 0.5, 1.0, 3.7]))
    if temperature is not None:
        kwargs["temperature"] = temperature
    if draw(st.booleans()):
        labels = torch.randint(0, V, lead, generator=gen)
        if labels.numel() > 1 and draw(st.booleans()):
            labels.view(-1)[-1] = -100  # an ignored label
        kwargs["labels"] = labels
        alpha = draw(st.sampled_from([None, 0.0, 0.3, 1.0]))
        if alpha is not None:
            kwargs["alpha"] = alpha
    return kwargs


def _distill_call(kwargs: dict) -> str:
    return format_call("distillation_loss", (), kwargs)


def _distill_cause(kwargs: dict, actual) -> str | None:
    return likely_cause(KATA, "distillation_loss", lambda f: f(**copy.deepcopy(kwargs)), actual, **TIGHT)


@pytest.mark.exercise("distillation_loss")
@given(distillation_cases())
@example({"student_logits": torch.tensor([[1.0, -2.0, 0.5], [0.0, 3.0, -1.0]], dtype=DT),
          "teacher_logits": torch.tensor([[-1.0, 2.0, 0.0], [2.5, 0.0, 1.0]], dtype=DT), "temperature": 3.7})
def test_distillation_matches_kl_div(impl, kwargs):
    pristine = copy.deepcopy(kwargs)
    call = _distill_call(kwargs)
    got = impl.distillation_loss(**kwargs)
    for name, value in pristine.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(kwargs[name], value), f"Called {call}. It modified {name} in place."
    expected = _oracle(pristine["student_logits"], pristine["teacher_logits"], pristine.get("temperature", 2.0),
                       pristine.get("labels"), pristine.get("alpha", 0.5))
    assert isinstance(got, torch.Tensor) and got.shape == () and got.dtype == DT, (
        f"Called {call}. Returned {describe(got)}; expected a 0-dim float64 tensor (the logits' dtype).")
    cause = _distill_cause(pristine, got) if error_report(got, expected, **TIGHT) else None
    assert_close(got, expected, call=call, cause=cause, **TIGHT,
                 because="it is T**2 * mean over rows of KL(softmax(teacher / T) || softmax(student / T)) (T defaults "
                         "to 2), i.e. F.kl_div(log_softmax(s / T), log_softmax(t / T), log_target=True, "
                         "reduction='batchmean') * T**2 on logits reshaped to (rows, V); with labels, "
                         "alpha * that + (1 - alpha) * F.cross_entropy(student, labels), alpha defaulting to 0.5.")


@pytest.mark.exercise("distillation_loss")
def test_distillation_known_values_and_defaults(impl):
    s, t = torch.tensor([[1.0, 0.0]], dtype=DT), torch.tensor([[0.0, 1.0]], dtype=DT)

    def kl(T):  # KL(softmax(t / T) || softmax(s / T)) for the two-class rows above, by hand
        a = 1 / (1 + math.exp(1 / T))  # the smaller probability
        return a * math.log(a / (1 - a)) + (1 - a) * math.log((1 - a) / a)

    cases = [({"temperature": 1.0}, kl(1.0), "T = 1 is the plain KL divergence"),
             ({}, 4 * kl(2.0), "the temperature defaults to 2, and the KL is multiplied by T**2 = 4"),
             ({"temperature": 5.0}, 25 * kl(5.0), "the KL at T = 5 is multiplied by T**2 = 25")]
    for options, value, because in cases:
        got = impl.distillation_loss(s.clone(), t.clone(), **options)
        call = format_call("distillation_loss", (s, t), options)
        cause = likely_cause(KATA, "distillation_loss", lambda f, o=options: f(s.clone(), t.clone(), **o), got,
                             **TIGHT)
        assert_close(got, torch.tensor(value, dtype=DT), call=call, because=because + ".", cause=cause, **TIGHT)
    labels = torch.tensor([1])
    got = impl.distillation_loss(s.clone(), t.clone(), temperature=1.0, labels=labels)
    hard = math.log(1 + math.e)  # -log softmax([1, 0])[1]
    call = format_call("distillation_loss", (s, t), {"temperature": 1.0, "labels": labels})
    assert_close(got, torch.tensor(0.5 * kl(1.0) + 0.5 * hard, dtype=DT), call=call, **TIGHT,
                 cause=likely_cause(KATA, "distillation_loss",
                                    lambda f: f(s.clone(), t.clone(), temperature=1.0, labels=labels), got, **TIGHT),
                 because="alpha defaults to 0.5: 0.5 * KL + 0.5 * cross-entropy of the plain student logits.")
    options = {"temperature": 2, "labels": labels, "alpha": 1}
    call = format_call("distillation_loss", (s, t), options)
    try:
        got = impl.distillation_loss(s.clone(), t.clone(), **options)
    except ValueError as err:
        raise AssertionError(f"Called {call}. It raised ValueError({str(err)!r}); an int temperature and alpha are "
                             "numbers too (only a bool is refused).") from err
    assert_close(got, torch.tensor(4 * kl(2.0), dtype=DT), call=call, **TIGHT,
                 because="temperature 2 and alpha 1 as ints mean what 2.0 and 1.0 mean: the soft term alone.")
    one = impl.distillation_loss(torch.tensor([2.0, -1.0, 0.5], dtype=DT), torch.tensor([0.0, 1.0, 3.0], dtype=DT), 1.5)
    expected = _oracle(torch.tensor([[2.0, -1.0, 0.5]]), torch.tensor([[0.0, 1.0, 3.0]]), 1.5)
    assert_close(one, expected, call="distillation_loss(tensor of shape (3,), tensor of shape (3,), 1.5)", **TIGHT,
                 because="a (V,) input is one row: divide the summed KL by 1, not by V (F.kl_div's 'batchmean' on an "
                         "unreshaped 1-D input divides by V).")


@pytest.mark.exercise("distillation_loss")
@pytest.mark.parametrize("with_labels", [False, True], ids=["soft only", "with labels"])
def test_distillation_gradient_reaches_the_student_only(impl, with_labels):
    gen = generator(21)
    student, teacher = randn(gen, 3, 4, 5, scale=2.0), randn(gen, 3, 4, 5, scale=2.0)
    student[0, 0] = torch.tensor([1e4, -1e4, 0.0, 5e3, -5e3], dtype=DT)  # huge logits in one row
    teacher[1, 2] = torch.tensor([-1e4, 0.0, 1e4, 2e3, -3e3], dtype=DT)
    student.requires_grad_()
    teacher.requires_grad_()
    labels = torch.randint(0, 5, (3, 4), generator=gen) if with_labels else None
    options = {"temperature": 2.5, "labels": labels, "alpha": 0.7} if with_labels else {"temperature": 2.5}
    call = format_call("distillation_loss", (student, teacher), options) + ".backward()"
    loss = impl.distillation_loss(student, teacher, **options)
    loss.backward()
    assert teacher.grad is None, (
        f"Called {call}. teacher_logits.grad is {describe(teacher.grad)}; expected None: the teacher is a fixed "
        "target, so detach it (no gradient may flow into the teacher model).")
    s2 = student.detach().clone().requires_grad_()
    expected_loss = _oracle(s2, teacher, 2.5, labels, 0.7)
    V = 5
    ref_s = F.log_softmax(s2.reshape(-1, V) / 2.5, dim=-1)
    ref_t = F.log_softmax(teacher.detach().reshape(-1, V) / 2.5, dim=-1)
    total = F.kl_div(ref_s, ref_t, log_target=True, reduction="batchmean") * 2.5**2
    if with_labels:
        total = 0.7 * total + 0.3 * F.cross_entropy(s2.reshape(-1, V), labels.reshape(-1))
    total.backward()
    assert bool(torch.isfinite(loss)) and bool(torch.isfinite(student.grad).all()), (
        f"Called {call}. The loss is {loss.item()} and the student's gradient has non-finite entries: with logits of "
        "+-1e4, use log_softmax, never log(softmax(x)).")
    assert_close(loss.detach(), expected_loss, call=call[: -len(".backward()")], **TIGHT,
                 because="the loss must equal the documented formula, also with logits of +-1e4 in a row.")
    assert_close(student.grad, s2.grad, call=call + " -> student_logits.grad", **TIGHT,
                 because="the student's gradient is that of the documented formula (T**2 makes it independent of T's "
                         "scale).")


@pytest.mark.exercise("distillation_loss")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_distillation_dtype_and_meta_device(impl, dtype):
    gen = generator(31)
    s, t = randn(gen, 4, 6).to(dtype), randn(gen, 4, 6).to(dtype)
    got = impl.distillation_loss(s, t, 1.5)
    call = format_call("distillation_loss", (s, t, 1.5))
    assert isinstance(got, torch.Tensor) and got.dtype == dtype and got.shape == (), (
        f"Called {call}. Returned {describe(got)}; expected a 0-dim {dtype} tensor (the logits' dtype).")
    assert_close(got.double(), _oracle(s.double(), t.double(), 1.5), call=call, atol=1e-5,
                 rtol=5e-2 if dtype == torch.bfloat16 else 1e-5, because=f"{dtype} rounding only.")
    # without labels: skipping the -100 labels may index by a mask, whose size a meta tensor cannot know
    meta = impl.distillation_loss(torch.empty(2, 3, 5, device="meta", dtype=dtype),
                                  torch.empty(2, 3, 5, device="meta", dtype=dtype), 2.0)
    assert meta.device.type == "meta" and meta.shape == () and meta.dtype == dtype, (
        f"Called distillation_loss on meta tensors of shape (2, 3, 5). Returned {describe(meta)} on "
        f"{meta.device}; expected a 0-dim {dtype} tensor on meta: create nothing on another device.")


BAD_DISTILLATION = [
    ("shapes differ", lambda: ((torch.zeros(2, 3), torch.zeros(2, 4)), {}), "(2, 4)"),
    ("0-dim logits", lambda: ((torch.tensor(1.0), torch.tensor(1.0)), {}), "()"),
    ("no rows", lambda: ((torch.zeros(0, 3), torch.zeros(0, 3)), {}), "(0, 3)"),
    ("no classes", lambda: ((torch.zeros(2, 0), torch.zeros(2, 0)), {}), "(2, 0)"),
    ("labels shape", lambda: ((torch.zeros(2, 3), torch.zeros(2, 3)), {"labels": torch.zeros(3, dtype=torch.long)}),
     "(3,)"),
    ("labels flattened", lambda: ((torch.zeros(2, 3, 4), torch.zeros(2, 3, 4)),
                                  {"labels": torch.zeros(6, dtype=torch.long)}), "(6,)"),
    ("temperature=0", lambda: ((torch.zeros(2, 3), torch.zeros(2, 3)), {"temperature": 0.0}), "0.0"),
    ("temperature=-1", lambda: ((torch.zeros(2, 3), torch.zeros(2, 3)), {"temperature": -1.0}), "-1.0"),
    ("temperature=inf", lambda: ((torch.zeros(2, 3), torch.zeros(2, 3)), {"temperature": math.inf}), "inf"),
    ("temperature=nan", lambda: ((torch.zeros(2, 3), torch.zeros(2, 3)), {"temperature": math.nan}), "nan"),
    ("temperature=True", lambda: ((torch.zeros(2, 3), torch.zeros(2, 3)), {"temperature": True}), "True"),
    ("alpha=-0.1", lambda: ((torch.zeros(2, 3), torch.zeros(2, 3)), {"alpha": -0.1}), "-0.1"),
    ("alpha=1.5", lambda: ((torch.zeros(2, 3), torch.zeros(2, 3)), {"alpha": 1.5}), "1.5"),
    ("alpha=nan", lambda: ((torch.zeros(2, 3), torch.zeros(2, 3)), {"alpha": math.nan}), "nan"),
    ("alpha=True", lambda: ((torch.zeros(2, 3), torch.zeros(2, 3)), {"alpha": True}), "True"),
]


@pytest.mark.exercise("distillation_loss")
@pytest.mark.parametrize(("what", "args", "named"), BAD_DISTILLATION, ids=[b[0] for b in BAD_DISTILLATION])
def test_distillation_rejects_bad_input(impl, what, args, named):
    (student, teacher), options = args()
    with pytest.raises(ValueError) as info:
        impl.distillation_loss(student, teacher, **options)
    message = str(info.value).replace("torch.Size([", "(").replace("])", ")")
    assert named in message, (
        f"Called distillation_loss with {what}: {format_call('distillation_loss', (student, teacher), options)}. "
        f"It raised ValueError({str(info.value)!r}); the message must name {named!r}.")
