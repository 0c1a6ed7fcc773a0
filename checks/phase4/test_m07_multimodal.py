"""Checks for m07_multimodal: CLIP's contrastive loss, a ViT patch embedding, a log-mel spectrogram.

The oracles: for ``clip_loss`` the checks' own per-row formula in NumPy float64 (logsumexp of each row and
each column minus the diagonal) and closed-form values, with the reference's autograd only for the gradients
of the embeddings; for ``PatchEmbed`` PyTorch's ``nn.Conv2d(kernel_size=stride=patch_size)`` with the same
weights; for the audio, the checks' own HTK triangle formula, a direct DFT (a NumPy matrix product over
reflect-padded, Hann-windowed frames) and the exact spectrum of a pure tone. torchaudio is not installed
here, so its ``melscale_fbanks`` is not used. Everything compares in float64 unless a check is about another
dtype; every random value comes from a drawn seed (``checks.torch_strategies``), never the global RNG.

Checklist notes (CONTRACTS.md items that do not apply, and why):
- Randomness (8): no exercise draws random numbers; ``PatchEmbed``'s initial weights come from nn.Linear's
  default init under the global RNG (its documented source), checked statistically inside ``seeded``.
- State over time (6): nothing keeps state between calls; ``PatchEmbed`` has no train/eval difference. The
  module is called twice (two image sizes) in the structure check.
- Structure of modules (7): only ``PatchEmbed`` is a module: parameter names, shapes, bias, the init
  distribution and its attributes are checked. ``mel_filterbank`` is a plain tensor, not a buffer.
- Sizes (2): ``clip_loss`` with B = 1 (loss 0) and D = 1; B = 0 is a documented ``ValueError``.
  ``PatchEmbed`` with B = 0, one patch, 1x1 patches, rectangular patches and grids. Audio with no, one and
  two leading dimensions, odd n_fft, T just above n_fft // 2; T <= n_fft // 2 is a documented ValueError.
- dtypes (3): ``clip_loss`` float32/float64/bfloat16; ``PatchEmbed`` follows its parameters (float32,
  float64, bfloat16); audio float32/float64 (others are a documented ValueError). Devices on ``meta``,
  where every exercise runs shape-level (a float temperature).
- Inputs not modified (1): tensors passed in are compared with pristine copies; ``mel_filterbank`` takes
  no tensor.
- Devices without a GPU: ``meta`` silently accepts a CPU operand in a matrix product, so the audio's device
  rule is also checked with a ``TorchDispatchMode`` that records every operation mixing two devices.
- Bools for ints (10): documented for ``PatchEmbed``'s sizes and for n_fft, hop_length and n_mels, and
  checked. ``sample_rate``, ``f_min``, ``f_max``, ``floor`` and ``temperature`` are real numbers.
- Errors (10): every message must name the offending value, and, for a bad argument (temperature,
  patch_size, in_channels, embed_dim, n_mels, n_fft, hop_length, sample_rate, f_min, f_max, floor), the
  argument by its exact name (``_assert_names``).
"""

from __future__ import annotations

import copy
import math
import re

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from checks.numerics import assert_close, cause_line, describe, error_report, format_call, likely_cause
from checks.torch_strategies import generator, randn, seeded, seeds

pytestmark = pytest.mark.kata("m07_multimodal")

KATA = "m07_multimodal"
DT = torch.float64
TIGHT = {"rtol": 1e-9, "atol": 1e-10}


def _assert_unchanged(call: str, pristine: dict, given_args: dict) -> None:
    """Every tensor argument still equals its pristine copy (values, shape, dtype, requires_grad)."""
    for name, before in pristine.items():
        after = given_args[name]
        if not isinstance(before, torch.Tensor):
            continue
        same = (after.shape == before.shape and after.dtype == before.dtype
                and after.requires_grad == before.requires_grad and torch.equal(after.detach(), before.detach()))
        assert same, (
            f"Called {call}. It modified its argument `{name}` in place: it was {describe(before)}, now it is "
            f"{describe(after)}.\nBecause the caller still needs its inputs: build new tensors (x = x / n) instead "
            "of writing into them (x /= n, x.div_(n))."
        )


def _assert_names(call: str, err: Exception, argument: str | None, value: str) -> None:
    """The error message names the offending value and, when there is one, the argument, spelled as in the
    signature (``hop_length``, not ``HOP_LENGTH`` or ``hop length``)."""
    message = str(err)
    named = argument is None or re.search(rf"(?<![A-Za-z0-9_]){re.escape(argument)}(?![A-Za-z0-9_])", message)
    values = value.split("|")  # alternatives
    assert named and any(v in message for v in values), (
        f"Called {call}. It raised {type(err).__name__}({message!r}); the message must name "
        + (f"the argument `{argument}` and " if argument else "") + f"the offending value {value}.\nBecause the "
        "caller reads it to fix the call: say which argument is wrong and what it was, e.g. "
        + (f"\"{argument} must be ..., got {values[0]}\"." if argument else f"\"..., got {values[0]}\".")
    )


# --------------------------------------------------------------------------------------------------
# clip_loss


def _clip_formula(image: torch.Tensor, text: torch.Tensor, temperature: float) -> float:
    """The checks' own loss, in NumPy float64: mean over pairs of both directions' -log softmax of the match."""
    a, b = image.detach().double().numpy(), text.detach().double().numpy()
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    s = a @ b.T / temperature

    def lse(m, axis):
        top = m.max(axis=axis, keepdims=True)
        return (top + np.log(np.exp(m - top).sum(axis=axis, keepdims=True))).squeeze(axis)

    diag = np.diag(s)
    return float(((lse(s, 1) - diag).mean() + (lse(s, 0) - diag).mean()) / 2)


def _clip_call(kwargs: dict) -> str:
    return format_call("clip_loss", (), kwargs)


def _clip_cause(kwargs: dict, actual):
    return lambda: likely_cause(KATA, "clip_loss", lambda f: f(**copy.deepcopy(kwargs)), actual, **TIGHT)


def _check_loss_value(got, expected: float, call: str, because: str, cause=None, rtol=1e-9, atol=1e-10) -> None:
    assert isinstance(got, torch.Tensor) and got.ndim == 0, (
        f"Called {call}. Returned {describe(got)}; expected a 0-dimensional tensor (one number)." + cause_line(cause))
    wrong = error_report(got.detach(), torch.tensor(expected, dtype=DT), rtol, atol)
    assert_close(got.detach().double(), torch.tensor(expected, dtype=DT), call=call, because=because, rtol=rtol,
                 atol=atol, cause=cause() if wrong and callable(cause) else None)


@st.composite
def clip_cases(draw):
    """kwargs for clip_loss: (B, D) float64 pairs, rows of very different lengths, often strided views."""
    gen = generator(draw(seeds))
    B, D = draw(st.integers(1, 6)), draw(st.integers(1, 5))
    tensors = []
    for _ in range(2):
        if draw(st.booleans()):  # a transposed view: the layout must not matter
            x = randn(gen, D, B).T
        else:
            x = randn(gen, B, 2 * D)[:, ::2]  # a sliced view
        if draw(st.booleans()):  # some rows huge, some tiny: only the direction counts
            x = x * torch.tensor([1e4, 1e-4, 1.0, 3.0, 1e2, 1e-2])[:B, None].to(DT)
        tensors.append(x)
    kwargs = {"image_emb": tensors[0], "text_emb": tensors[1]}
    temperature = draw(st.sampled_from([None, 0.01, 0.07, 0.5, 2.0]))
    if temperature is not None:
        kwargs["temperature"] = temperature
    return kwargs


@pytest.mark.exercise("clip_loss")
@settings(max_examples=40)
@given(clip_cases())
@example({"image_emb": torch.eye(3, dtype=DT) * torch.tensor([[2.0], [1e-4], [5.0]], dtype=DT),
          "text_emb": torch.eye(3, dtype=DT).flip(0) + 0.5, "temperature": 0.5})
def test_clip_loss_matches_the_per_row_formula(impl, kwargs):
    pristine = copy.deepcopy(kwargs)
    call = _clip_call(kwargs)
    got = impl.clip_loss(**kwargs)
    _assert_unchanged(call, pristine, kwargs)
    t = kwargs.get("temperature", 0.07)
    expected = _clip_formula(kwargs["image_emb"], kwargs["text_emb"], t)
    _check_loss_value(got, expected, call, cause=_clip_cause(pristine, got.detach() if isinstance(got, torch.Tensor)
                                                             else got),
                      because=f"rows are normalised to length 1 each, logits = image @ text.T / {t} (temperature "
                              "defaults to 0.07), and the loss is the average of the image -> text and text -> image "
                              "cross-entropies, each a mean over the B pairs.")
    assert got.dtype == DT, f"Called {call}. Returned dtype {got.dtype}; the loss keeps the embeddings' dtype float64."
    swapped = impl.clip_loss(kwargs["text_emb"], kwargs["image_emb"], t)
    _check_loss_value(swapped, expected, format_call("clip_loss", (pristine["text_emb"], pristine["image_emb"], t)),
                      because="the loss is symmetric: swapping images and texts swaps the two directions, whose "
                              "average stays the same.")


@pytest.mark.exercise("clip_loss")
@pytest.mark.parametrize("B", [1, 2, 5])
def test_clip_loss_known_values(impl, B):
    eye = torch.eye(2 * B, dtype=DT)
    aligned, other = eye[:B], eye[B:]
    got = impl.clip_loss(aligned, other)
    _check_loss_value(got, math.log(B), f"clip_loss(rows 0..{B - 1} of eye({2 * B}), rows {B}..{2 * B - 1})",
                      because=f"every image is orthogonal to every text: all logits are 0, each softmax is "
                              f"uniform over the {B} candidates and the loss is log(B) = {math.log(B):.6f}.")
    for temperature in (None, 0.01, 1.0):
        kwargs = {} if temperature is None else {"temperature": temperature}
        t = 0.07 if temperature is None else temperature
        expected = math.log1p((B - 1) * math.exp(-1 / t))
        got = impl.clip_loss(aligned * 3.0, aligned.clone(), **kwargs)
        _check_loss_value(got, expected, _clip_call({"image_emb": aligned * 3.0, "text_emb": aligned, **kwargs}),
                          rtol=1e-9, atol=1e-12,
                          because=f"each image equals its own text (after normalisation) and is orthogonal to the "
                                  f"others: the logits are 1/{t} on the diagonal and 0 elsewhere, so the loss is "
                                  f"log(1 + (B - 1) * exp(-1/{t})) = {expected:.6g} (the default temperature is 0.07).")


@pytest.mark.exercise("clip_loss")
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_clip_loss_small_temperatures_do_not_overflow(impl, dtype):
    gen = generator(7)
    image, text = randn(gen, 6, 4, dtype=dtype), randn(gen, 6, 4, dtype=dtype)
    temperature = 1e-3 if dtype == torch.float64 else 1e-2  # logits up to 1000 (float64) or 100 (float32)
    call = _clip_call({"image_emb": image, "text_emb": text, "temperature": temperature})
    got = impl.clip_loss(image, text, temperature)
    expected = _clip_formula(image, text, temperature)
    tol = TIGHT if dtype == torch.float64 else {"rtol": 1e-4, "atol": 1e-4}
    _check_loss_value(got, expected, call, cause=_clip_cause({"image_emb": image, "text_emb": text,
                                                              "temperature": temperature}, got.detach().double()),
                      because=f"with temperature {temperature} the logits reach {1 / temperature:g}, and exp of that "
                              f"overflows {dtype}: use a max-shifted log-softmax (F.cross_entropy).", **tol)
    assert got.dtype == dtype, f"Called {call}. Returned dtype {got.dtype}; the loss keeps the embeddings' dtype."


@pytest.mark.exercise("clip_loss")
def test_clip_loss_zero_rows_stay_finite(impl):
    image = torch.tensor([[0.0, 0.0], [1.0, 2.0], [3.0, -1.0]], dtype=DT)
    text = torch.tensor([[2.0, 1.0], [0.0, 0.0], [-1.0, 1.0]], dtype=DT)
    call = _clip_call({"image_emb": image, "text_emb": text, "temperature": 0.3})
    got = impl.clip_loss(image, text, 0.3)
    _check_loss_value(got, _clip_formula(image, text, 0.3), call,
                      cause=_clip_cause({"image_emb": image, "text_emb": text, "temperature": 0.3},
                                        got.detach() if isinstance(got, torch.Tensor) else got),
                      because="a zero row stays zero after F.normalize (the norm is clamped to at least 1e-12), so "
                              "its logits are 0, never 0/0 = nan.")


@pytest.mark.exercise("clip_loss")
@pytest.mark.parametrize("learned", ["temperature", "log_temperature"])
def test_clip_loss_gradients(impl, reference, learned):
    gen = generator(3)
    image0, text0 = randn(gen, 4, 3), randn(gen, 4, 3)
    t0 = 0.2
    param = torch.tensor(math.log(t0) if learned == "log_temperature" else t0, dtype=DT, requires_grad=True)
    image, text = image0.clone().requires_grad_(True), text0.clone().requires_grad_(True)
    temperature = param.exp() if learned == "log_temperature" else param
    call = (f"clip_loss(image_emb, text_emb, temperature={'torch.exp(log_t)' if learned != 'temperature' else 't'}) "
            f"with image_emb, text_emb (4, 3) and {learned} a float64 tensor with requires_grad=True, then .backward()")
    loss = impl.clip_loss(image, text, temperature)
    assert isinstance(loss, torch.Tensor) and loss.requires_grad, (
        f"Called {call}. The loss {describe(loss)} is not connected to the graph: keep every step in torch, and divide "
        "by the temperature tensor itself (float(temperature) or .item() cuts it out).")
    loss.backward()
    assert param.grad is not None, (
        f"Called {call}. The {learned} got no gradient: divide by the temperature tensor itself; float(temperature) or "
        ".item() cuts it out of the graph, and CLIP could no longer learn it.")
    eps = 1e-6

    def at(t):
        return _clip_formula(image0, text0, math.exp(t) if learned == "log_temperature" else t)

    p = float(param.detach())
    numeric = (at(p + eps) - at(p - eps)) / (2 * eps)
    assert_close(param.grad, torch.tensor(numeric, dtype=DT), call=call + f" -> {learned}.grad", rtol=1e-6, atol=1e-9,
                 because="the gradient must equal the central difference of the loss in the temperature: the logits "
                         "are divided by it.")
    image_r, text_r = image0.clone().requires_grad_(True), text0.clone().requires_grad_(True)
    reference.clip_loss(image_r, text_r, t0).backward()
    for name, mine, theirs in (("image_emb", image, image_r), ("text_emb", text, text_r)):
        assert mine.grad is not None, f"Called {call}. {name} got no gradient; the loss must depend on it."
        assert_close(mine.grad, theirs.grad, call=call + f" -> {name}.grad", **TIGHT,
                     because="the gradient flows through the normalisation (F.normalize), never a detached norm.")


@pytest.mark.exercise("clip_loss")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_clip_loss_keeps_the_dtype(impl, dtype):
    gen = generator(5)
    image, text = randn(gen, 5, 3, dtype=dtype), randn(gen, 5, 3, dtype=dtype)
    got = impl.clip_loss(image, text, 0.5)
    call = _clip_call({"image_emb": image, "text_emb": text, "temperature": 0.5})
    assert isinstance(got, torch.Tensor) and got.dtype == dtype and got.ndim == 0, (
        f"Called {call}. Returned {describe(got)}; expected a 0-dimensional {dtype} tensor.")
    tol = 1e-5 if dtype == torch.float32 else 5e-2
    _check_loss_value(got.double(), _clip_formula(image, text, 0.5), call, rtol=tol, atol=tol,
                      because=f"{dtype} rounding only.")


@pytest.mark.exercise("clip_loss")
def test_clip_loss_on_the_meta_device(impl):
    image, text = torch.empty(4, 3, device="meta"), torch.empty(4, 3, device="meta")
    got = impl.clip_loss(image, text, 0.1)
    assert isinstance(got, torch.Tensor) and got.device.type == "meta" and got.ndim == 0, (
        f"Called clip_loss(meta (4, 3), meta (4, 3), 0.1). Returned {describe(got)}; expected a 0-dimensional tensor "
        "on the meta device: create the labels where the embeddings live (torch.arange(B, device=...)).")


@pytest.mark.exercise("clip_loss")
@pytest.mark.parametrize(("case", "argument", "named"), [
    ("1-D", None, "(4,)"), ("3-D", None, "(2, 4, 3)"), ("B differs", None, "(5, 3)"), ("D differs", None, "(4, 2)"),
    ("ints", None, "int64"), ("mixed dtypes", None, "float32"), ("empty", None, "0"),
    ("zero temperature", "temperature", "0.0"), ("negative", "temperature", "-0.5"), ("nan", "temperature", "nan"),
    ("two temperatures", "temperature", "(2,)|[2]"), ("zero tensor", "temperature", "0.0"),
])
def test_clip_loss_rejects_bad_inputs(impl, case, argument, named):
    x = torch.ones(4, 3, dtype=DT)
    image, text, t = x, x.clone(), 0.1
    if case == "1-D":
        image, text = x[:, 0], x[:, 0].clone()
    elif case == "3-D":
        image, text = torch.ones(2, 4, 3), torch.ones(2, 4, 3)
    elif case == "B differs":
        text = torch.ones(5, 3, dtype=DT)
    elif case == "D differs":
        text = torch.ones(4, 2, dtype=DT)
    elif case == "ints":
        image, text = torch.ones(4, 3, dtype=torch.int64), torch.ones(4, 3, dtype=torch.int64)
    elif case == "mixed dtypes":
        text = torch.ones(4, 3, dtype=torch.float32)
    elif case == "empty":
        image, text = torch.ones(0, 3, dtype=DT), torch.ones(0, 3, dtype=DT)
    elif case == "zero temperature":
        t = 0.0
    elif case == "negative":
        t = -0.5
    elif case == "nan":
        t = float("nan")
    elif case == "two temperatures":
        t = torch.tensor([0.1, 0.2], dtype=DT)
    elif case == "zero tensor":
        t = torch.tensor(0.0, dtype=DT)
    call = _clip_call({"image_emb": image, "text_emb": text, "temperature": t})
    with pytest.raises(ValueError) as info:
        impl.clip_loss(image, text, t)
    _assert_names(f"{call} ({case})", info.value, argument, named)


@pytest.mark.exercise("clip_loss")
@pytest.mark.parametrize("shape", [(), (1,), (1, 1)], ids=str)
def test_clip_loss_takes_a_one_element_temperature_tensor(impl, shape):
    gen = generator(12)
    image, text = randn(gen, 3, 4), randn(gen, 3, 4)
    temperature = torch.full(shape, 0.25, dtype=DT)
    call = _clip_call({"image_emb": image, "text_emb": text, "temperature": temperature})
    got = impl.clip_loss(image, text, temperature)
    _check_loss_value(got, _clip_formula(image, text, 0.25), call,
                      because="the temperature may be a float or any one-element tensor (a learned parameter of shape "
                              "(1,) is common): check temperature.numel() == 1, not its number of dimensions, and the "
                              "loss stays 0-dimensional.")


# --------------------------------------------------------------------------------------------------
# PatchEmbed


def _conv_for(C: int, D: int, ph: int, pw: int, seed: int) -> nn.Conv2d:
    conv = nn.Conv2d(C, D, kernel_size=(ph, pw), stride=(ph, pw), dtype=DT)
    gen = generator(seed)
    with torch.no_grad():
        conv.weight.copy_(randn(gen, *conv.weight.shape))
        conv.bias.copy_(randn(gen, D))
    return conv


def _proj_of(module: nn.Module, C: int, D: int, ph: int, pw: int) -> nn.Linear:
    proj = getattr(module, "proj", None)
    assert isinstance(proj, nn.Linear) and tuple(proj.weight.shape) == (D, C * ph * pw) and proj.bias is not None, (
        f"PatchEmbed must have an attribute `proj` that is an nn.Linear({C * ph * pw}, {D}) with a bias (see its "
        f"docstring: the checks copy a convolution's weights in); found {proj!r}.")
    return proj


def _embed_with_conv_weights(cls, patch_size, C: int, D: int, conv: nn.Conv2d) -> nn.Module:
    module = cls(patch_size, C, D).to(DT)
    ph, pw = conv.kernel_size
    proj = _proj_of(module, C, D, ph, pw)
    with torch.no_grad():
        proj.weight.copy_(conv.weight.reshape(D, -1))  # (D, C, ph, pw) -> (D, C * ph * pw): (c, i, j) order
        proj.bias.copy_(conv.bias)
    return module


@st.composite
def patch_cases(draw):
    seed = draw(seeds)
    gen = generator(seed)
    B, C, D = draw(st.integers(0, 2)), draw(st.integers(1, 3)), draw(st.integers(1, 5))
    ph, pw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    gh, gw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    H, W = gh * ph, gw * pw
    patch_size = ph if ph == pw and draw(st.booleans()) else (ph, pw)
    layout = draw(st.sampled_from(["contiguous", "transposed", "channels_last"]))
    if layout == "transposed":  # a (B, C, W, H) tensor seen through its last two axes swapped
        x = randn(gen, B, C, W, H).transpose(-2, -1)
    else:
        x = randn(gen, B, C, H, W)
        if layout == "channels_last":
            x = x.contiguous(memory_format=torch.channels_last)
    return seed, patch_size, (ph, pw), C, D, x, layout


@pytest.mark.exercise("PatchEmbed")
@settings(max_examples=40)
@given(patch_cases())
@example((1, (2, 3), (2, 3), 2, 3, randn(generator(1), 2, 2, 4, 9), "contiguous"))  # a rectangular patch and grid
def test_patch_embed_matches_the_convolution(impl, case):
    seed, patch_size, (ph, pw), C, D, x, layout = case
    conv = _conv_for(C, D, ph, pw, seed)
    pristine = x.clone()
    module = _embed_with_conv_weights(impl.PatchEmbed, patch_size, C, D, conv)
    call = (f"PatchEmbed({patch_size!r}, {C}, {D}) with an nn.Conv2d's weights, on x of shape {tuple(x.shape)} "
            f"({layout})")
    with torch.no_grad():
        got = module(x)
    _assert_unchanged(call, {"x": pristine}, {"x": x})
    B, _, H, W = x.shape
    N = (H // ph) * (W // pw)
    with torch.no_grad():
        expected = conv(x).flatten(2).transpose(1, 2)  # (B, D, gh, gw) -> (B, N, D), patches row-major
    assert isinstance(got, torch.Tensor) and tuple(got.shape) == (B, N, D), (
        f"Called {call}. Returned {describe(got)}; expected shape (B, N, D) = {(B, N, D)}: one row per patch, "
        f"N = (H // ph) * (W // pw) = {N}.")

    def run(cls):
        with torch.no_grad():
            return _embed_with_conv_weights(cls, patch_size, C, D, conv)(pristine.clone())

    cause = likely_cause(KATA, "PatchEmbed", run, got, **TIGHT) if error_report(got, expected, **TIGHT) else None
    assert_close(got, expected, call=call, cause=cause, **TIGHT,
                 because="with proj.weight = conv.weight.reshape(D, -1) it must equal nn.Conv2d(kernel_size=stride="
                         "patch_size) flattened to (B, N, D): each patch's numbers in (c, i, j) order, patches in "
                         "row-major order.")


@pytest.mark.exercise("PatchEmbed")
def test_patch_embed_patches_are_in_row_major_order(impl):
    # a 2 x 3 grid of 2 x 2 patches, each filled with its own row-major number 0..5; proj averages a patch
    grid = torch.arange(6, dtype=DT).reshape(2, 3)
    x = grid.repeat_interleave(2, 0).repeat_interleave(2, 1)[None, None]  # (1, 1, 4, 6)
    module = impl.PatchEmbed(2, 1, 1).to(DT)
    proj = _proj_of(module, 1, 1, 2, 2)
    with torch.no_grad():
        proj.weight.fill_(0.25)
        proj.bias.zero_()
        got = module(x)
    assert_close(got, torch.arange(6, dtype=DT).reshape(1, 6, 1), rtol=0, atol=1e-12,
                 call="PatchEmbed(2, 1, 1) with proj averaging each patch, on a (1, 1, 4, 6) image whose 2 x 3 patches "
                      "hold the numbers 0..5 in row-major order",
                 because="patch n is grid row n // (W // pw), grid column n % (W // pw): row by row, left to right.")


@pytest.mark.exercise("PatchEmbed")
def test_patch_embed_structure_and_defaults(impl):
    with seeded(0):
        default = impl.PatchEmbed()
    shapes = {n: tuple(p.shape) for n, p in default.named_parameters()}
    assert shapes == {"proj.weight": (768, 768), "proj.bias": (768,)}, (
        f"Called PatchEmbed(). Its parameters are {shapes}; expected exactly proj.weight (768, 768) and proj.bias "
        "(768,): the defaults are 16x16 patches of 3 channels (768 numbers) and embed_dim 768, and nothing else "
        "trains.")
    got = (default.patch_size, default.in_channels, default.embed_dim)
    assert got == ((16, 16), 3, 768), (
        f"Called PatchEmbed(). Its patch_size, in_channels, embed_dim are {got}; expected ((16, 16), 3, 768).")
    assert not list(default.buffers()), "PatchEmbed keeps no buffers."
    dtypes = {str(p.dtype) for p in default.parameters()}
    assert dtypes == {str(torch.get_default_dtype())}, (
        f"Called PatchEmbed(). Its parameters have dtype {sorted(dtypes)}; expected torch's default dtype "
        f"{torch.get_default_dtype()}, as any nn.Linear: the caller chooses another one with .to() or .double().")
    with seeded(1):
        module = impl.PatchEmbed((2, 3), in_channels=4, embed_dim=5)
    shapes = {n: tuple(p.shape) for n, p in module.named_parameters()}
    assert shapes == {"proj.weight": (5, 24), "proj.bias": (5,)} and module.patch_size == (2, 3), (
        f"Called PatchEmbed((2, 3), in_channels=4, embed_dim=5). Its parameters are {shapes} and patch_size "
        f"{module.patch_size!r}; expected proj.weight (5, 24) = (D, C * ph * pw), proj.bias (5,), patch_size (2, 3).")
    out1, out2 = module(torch.zeros(1, 4, 2, 3)), module(torch.zeros(3, 4, 4, 9))
    assert out1.shape == (1, 1, 5) and out2.shape == (3, 6, 5), (
        f"Called PatchEmbed((2, 3), 4, 5) on (1, 4, 2, 3) and (3, 4, 4, 9) zeros. Returned shapes "
        f"{tuple(out1.shape)} and {tuple(out2.shape)}; expected (1, 1, 5) and (3, 6, 5).")
    assert_close(out2, module.proj.bias.detach().expand(3, 6, 5), call="PatchEmbed((2, 3), 4, 5)(zeros)", rtol=0,
                 atol=0, because="a zero patch maps to the bias of proj.")
    # nn.Linear's default init (like nn.Conv2d's): uniform in +-1/sqrt(fan_in) for the weight and the bias
    with seeded(2):
        big = impl.PatchEmbed(4, 3, 256)
    w, b = big.proj.weight.detach().double(), big.proj.bias.detach().double()
    bound = 1 / math.sqrt(48)
    std = bound / math.sqrt(3)
    ok = (w.abs().max() <= bound + 1e-7 and b.abs().max() <= bound + 1e-7 and abs(float(w.std()) - std) < 0.05 * std
          and abs(float(w.mean())) < 0.05 * std)
    assert ok, (
        f"Called PatchEmbed(4, 3, 256). proj.weight has mean {float(w.mean()):.4g}, std {float(w.std()):.4g} and max "
        f"|w| {float(w.abs().max()):.4g}; nn.Linear(48, 256)'s default init (the same as nn.Conv2d's) is uniform in "
        f"+-1/sqrt(48) = +-{bound:.4g} (std {std:.4g}), biases too.")
    # few outputs: the default bound 1/sqrt(fan_in) is far from Xavier's sqrt(6 / (fan_in + fan_out))
    with seeded(3):
        narrow = impl.PatchEmbed(2, 3, 4)
    w = narrow.proj.weight.detach().double()
    bound = 1 / math.sqrt(12)
    assert float(w.abs().max()) <= bound + 1e-7, (
        f"Called PatchEmbed(2, 3, 4). proj.weight reaches |w| = {float(w.abs().max()):.4g}; nn.Linear(12, 4)'s default "
        f"init is uniform in +-1/sqrt(12) = +-{bound:.4g}. Keep PyTorch's default initialisation (no "
        "nn.init.xavier_uniform_ or trunc_normal_ here: a whole ViT may re-initialise its weights, the layer does not)."
        + cause_line(lambda: likely_cause(KATA, "PatchEmbed", lambda cls: _max_init(cls, 3),
                                          float(w.abs().max()), rtol=0, atol=1e-12)))


def _max_init(cls, seed: int) -> float:
    with seeded(seed):
        return float(cls(2, 3, 4).proj.weight.detach().double().abs().max())


@pytest.mark.exercise("PatchEmbed")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
def test_patch_embed_follows_its_parameters_dtype(impl, dtype):
    conv = _conv_for(2, 3, 2, 2, 4)
    module = _embed_with_conv_weights(impl.PatchEmbed, 2, 2, 3, conv).to(dtype)
    x = randn(generator(4), 2, 2, 4, 6)
    with torch.no_grad():
        got = module(x.to(dtype))
        expected = conv(x.to(dtype).double()).flatten(2).transpose(1, 2)
    call = f"PatchEmbed(2, 2, 3).to({dtype})(x of dtype {dtype})"
    assert got.dtype == dtype, f"Called {call}. Returned dtype {got.dtype}; expected the parameters' dtype {dtype}."
    tol = {torch.float64: 1e-10, torch.float32: 1e-5, torch.bfloat16: 0.1}[dtype]
    assert_close(got.double(), expected, call=call, rtol=tol, atol=tol, because=f"{dtype} rounding only.")


@pytest.mark.exercise("PatchEmbed")
def test_patch_embed_on_the_meta_device(impl):
    module = impl.PatchEmbed((2, 4), 3, 6).to("meta")
    got = module(torch.empty(2, 3, 6, 8, device="meta"))
    assert got.device.type == "meta" and tuple(got.shape) == (2, 6, 6), (
        f"Called PatchEmbed((2, 4), 3, 6).to('meta') on a meta (2, 3, 6, 8) input. Returned {describe(got)} on "
        f"{got.device}; expected (2, 6, 6) on meta.")


@pytest.mark.exercise("PatchEmbed")
@pytest.mark.parametrize(("args", "argument", "named"), [
    ((0, 3, 8), "patch_size", "0"), ((-2, 3, 8), "patch_size", "-2"), ((True, 3, 8), "patch_size", "True"),
    ((2.0, 3, 8), "patch_size", "2.0"), (((2,), 3, 8), "patch_size", "(2,)"),
    (((2, 2, 2), 3, 8), "patch_size", "(2, 2, 2)"), (((2, 0), 3, 8), "patch_size", "0"),
    (((-3, 2), 3, 8), "patch_size", "-3"), ((2, 0, 8), "in_channels", "0"), ((2, 1.5, 8), "in_channels", "1.5"),
    ((2, 3, -1), "embed_dim", "-1"), ((2, 3, True), "embed_dim", "True"),
])
def test_patch_embed_rejects_bad_sizes(impl, args, argument, named):
    with pytest.raises(ValueError) as info:
        impl.PatchEmbed(*args)
    _assert_names(f"PatchEmbed{args!r}", info.value, argument, named)


@pytest.mark.exercise("PatchEmbed")
@pytest.mark.parametrize(("shape", "named"), [
    ((3, 8, 8), "(3, 8, 8)"), ((1, 2, 3, 8, 8), "(1, 2, 3, 8, 8)"), ((1, 2, 8, 8), "2"), ((1, 3, 8, 10), "10"),
    ((1, 3, 6, 8), "6"), ((1, 3, 0, 8), "0"), ((1, 3, 8, 0), "0"),
])
def test_patch_embed_rejects_bad_images(impl, shape, named):
    module = impl.PatchEmbed(4, 3, 8)
    with pytest.raises(ValueError) as info:
        module(torch.zeros(shape))
    assert named in str(info.value), (
        f"Called PatchEmbed(4, 3, 8) on zeros of shape {shape}. The ValueError says {str(info.value)!r}; it must name "
        f"{named} (images are (B, 3, H, W) with H and W positive multiples of 4; never crop silently).")


# --------------------------------------------------------------------------------------------------
# mel_filterbank, log_mel_spectrogram


def _htk_filterbank(n_mels: int, n_fft: int, sr: float, f_min: float = 0.0, f_max: float | None = None) -> np.ndarray:
    """The checks' own triangles, straight from the formula, one filter and one bin at a time (float64)."""
    f_max = sr / 2 if f_max is None else f_max
    mel_points = np.linspace(2595 * math.log10(1 + f_min / 700), 2595 * math.log10(1 + f_max / 700), n_mels + 2)
    e = [700 * (10 ** (m / 2595) - 1) for m in mel_points]
    out = np.zeros((n_mels, n_fft // 2 + 1))
    for m in range(n_mels):
        for k in range(n_fft // 2 + 1):
            f = k * sr / n_fft
            out[m, k] = max(0.0, min((f - e[m]) / (e[m + 1] - e[m]), (e[m + 2] - f) / (e[m + 2] - e[m + 1])))
    return out


def _centres_hz(n_mels: int, sr: float, f_min: float = 0.0, f_max: float | None = None) -> np.ndarray:
    f_max = sr / 2 if f_max is None else f_max
    points = np.linspace(2595 * math.log10(1 + f_min / 700), 2595 * math.log10(1 + f_max / 700), n_mels + 2)
    return 700 * (10 ** (points[1:-1] / 2595) - 1)


def _direct_log_mel(wave: torch.Tensor, sr, n_fft, hop, n_mels, f_min=0.0, f_max=None, floor=1e-10) -> np.ndarray:
    """The checks' own log-mel: reflect-padded frames, periodic Hann window, a DFT as a matrix product."""
    x = wave.detach().double().numpy()
    pad = n_fft // 2
    x = np.pad(x, [(0, 0)] * (x.ndim - 1) + [(pad, pad)], mode="reflect")
    starts = np.arange(1 + (x.shape[-1] - n_fft) // hop) * hop  # every whole frame of the padded signal
    n = np.arange(n_fft)
    frames = x[..., starts[:, None] + n[None, :]]  # (..., F, n_fft)
    window = 0.5 - 0.5 * np.cos(2 * np.pi * n / n_fft)  # periodic Hann
    k = np.arange(n_fft // 2 + 1)
    dft = np.exp(-2j * np.pi * np.outer(n, k) / n_fft)  # (n_fft, K)
    power = np.abs((frames * window) @ dft) ** 2  # (..., F, K)
    mel = _htk_filterbank(n_mels, n_fft, sr, f_min, f_max) @ np.swapaxes(power, -1, -2)  # (..., M, F)
    return np.log(np.maximum(mel, floor))


@st.composite
def filterbank_cases(draw):
    sr = draw(st.sampled_from([8000, 16000, 22050, 11025.5]))
    n_fft = draw(st.integers(4, 300))
    n_mels = draw(st.integers(1, 30))
    kwargs = {"n_mels": n_mels, "n_fft": n_fft, "sample_rate": sr}
    if draw(st.booleans()):
        kwargs["f_min"] = draw(st.sampled_from([0.0, 20.0, 300.0]))
    if draw(st.booleans()):
        kwargs["f_max"] = draw(st.sampled_from([sr / 2, sr / 2 - 500.0, 3000.0]))
    return kwargs


@pytest.mark.exercise("log_mel_spectrogram")
@settings(max_examples=30)
@given(filterbank_cases())
@example({"n_mels": 2, "n_fft": 8, "sample_rate": 8000})  # the docstring's example
@example({"n_mels": 10, "n_fft": 257, "sample_rate": 16000})  # an odd n_fft: bins at k * sr / n_fft, not linspace
def test_mel_filterbank_matches_the_htk_formula(impl, kwargs):
    call = format_call("mel_filterbank", (), {**kwargs, "dtype": DT})
    got = impl.mel_filterbank(**kwargs, dtype=DT)
    expected = torch.from_numpy(_htk_filterbank(**{"sr" if k == "sample_rate" else k: v for k, v in kwargs.items()}))
    assert isinstance(got, torch.Tensor) and tuple(got.shape) == tuple(expected.shape) and got.dtype == DT, (
        f"Called {call}. Returned {describe(got)}; expected a float64 tensor of shape (n_mels, n_fft // 2 + 1) = "
        f"{tuple(expected.shape)} (torchaudio's melscale_fbanks is the transpose of this).")

    def run(f):
        return f(**kwargs, dtype=DT)

    cause = (likely_cause(KATA, "mel_filterbank", run, got, rtol=1e-9, atol=1e-10)
             if error_report(got, expected, 1e-9, 1e-10) else None)
    assert_close(got, expected, call=call, rtol=1e-9, atol=1e-10, cause=cause,
                 because="filter m is the triangle 0 at e_m, 1 at e_{m+1}, 0 at e_{m+2}, with the n_mels + 2 edges "
                         "equally spaced on the HTK mel scale 2595 * log10(1 + f / 700) from f_min to f_max (default "
                         "sample_rate / 2), and bin k at k * sample_rate / n_fft Hz.")


@pytest.mark.exercise("log_mel_spectrogram")
def test_mel_filterbank_dtype_device_and_sums(impl):
    got = impl.mel_filterbank(40, 512, 16000)
    assert got.dtype == torch.get_default_dtype() and got.device.type == "cpu", (
        f"Called mel_filterbank(40, 512, 16000). Returned {describe(got)} on {got.device}; by default the matrix is "
        f"in torch's default dtype {torch.get_default_dtype()} on the CPU.")
    assert_close(got.double(), torch.from_numpy(_htk_filterbank(40, 512, 16000)), rtol=1e-6, atol=1e-7,
                 call="mel_filterbank(40, 512, 16000)", because="computed in float64, then rounded once.")
    meta = impl.mel_filterbank(40, 512, 16000, dtype=torch.float64, device="meta")
    assert meta.device.type == "meta" and meta.dtype == torch.float64 and tuple(meta.shape) == (40, 257), (
        f"Called mel_filterbank(40, 512, 16000, dtype=torch.float64, device='meta'). Returned {describe(meta)} on "
        f"{meta.device}; expected (40, 257) float64 on meta: build it where `device` says.")
    fb = impl.mel_filterbank(20, 256, 8000, f_min=100.0, f_max=3500.0, dtype=DT)
    freqs = torch.arange(129, dtype=DT) * 8000 / 256
    centres = torch.from_numpy(_centres_hz(20, 8000, 100.0, 3500.0))
    inside = (freqs >= centres[0]) & (freqs <= centres[-1])
    outside = (freqs <= 100.0) | (freqs >= 3500.0)
    assert_close(fb.sum(0)[inside], torch.ones(int(inside.sum()), dtype=DT), rtol=0, atol=1e-9,
                 call="mel_filterbank(20, 256, 8000, f_min=100.0, f_max=3500.0, dtype=torch.float64).sum(0)",
                 because="neighbouring triangles overlap by half, so between the first and the last centre the weights "
                         "of every bin sum to 1.")
    assert float(fb[:, outside].abs().max()) < 1e-9, (
        "Called mel_filterbank(20, 256, 8000, f_min=100.0, f_max=3500.0). Bins at or below f_min or at or above f_max "
        "have weight; the filters must be 0 outside [f_min, f_max].")


@pytest.mark.exercise("log_mel_spectrogram")
@pytest.mark.parametrize(("kwargs", "named"), [
    ({"n_mels": 0}, "0"), ({"n_mels": True}, "True"), ({"n_mels": 4.0}, "4.0"), ({"n_fft": 0}, "0"),
    ({"n_fft": -8}, "-8"), ({"n_fft": True}, "True"), ({"sample_rate": 0}, "0"), ({"sample_rate": -8000.0}, "-8000"),
    ({"f_min": -1.0}, "-1.0"), ({"f_max": 4000.5}, "4000.5"), ({"f_min": 2000.0, "f_max": 2000.0}, "2000.0"),
    ({"f_min": 3000.0, "f_max": 1000.0}, "3000.0"),
    ({"f_max": 0.0}, "0.0"),  # f_max must be above f_min: 0.0 is a value, not "use the default" (f_max or ...)
])
def test_mel_filterbank_rejects_bad_arguments(impl, kwargs, named):
    args = {"n_mels": 4, "n_fft": 64, "sample_rate": 8000} | kwargs
    with pytest.raises(ValueError) as info:
        impl.mel_filterbank(**args)
    _assert_names(format_call("mel_filterbank", (), args), info.value, list(kwargs)[-1], named)


def _log_mel_call(kwargs: dict) -> str:
    return format_call("log_mel_spectrogram", (), kwargs)


@st.composite
def log_mel_cases(draw):
    gen = generator(draw(seeds))
    n_fft = draw(st.sampled_from([16, 25, 32, 64]))
    lead = tuple(draw(st.lists(st.integers(1, 2), max_size=2)))
    T = draw(st.integers(n_fft // 2 + 1, 200))
    if draw(st.booleans()):  # a strided view of a longer signal
        wave = randn(gen, *lead, 2 * T, scale=draw(st.sampled_from([1.0, 1e-4])))[..., ::2]
    else:
        wave = randn(gen, *lead, T, scale=draw(st.sampled_from([1.0, 1e-4])))
    kwargs = {"waveform": wave, "sample_rate": draw(st.sampled_from([8000, 16000])), "n_fft": n_fft,
              "hop_length": draw(st.sampled_from([4, 10, 16])), "n_mels": draw(st.integers(1, 12))}
    if draw(st.booleans()):
        kwargs["f_min"] = 50.0
    if draw(st.booleans()):
        kwargs["f_max"] = 3000.0
    if draw(st.booleans()):
        kwargs["floor"] = draw(st.sampled_from([1e-6, 1e-2, 1.0]))
    return kwargs


@pytest.mark.exercise("log_mel_spectrogram")
@settings(max_examples=30)
@given(log_mel_cases())
@example({"waveform": randn(generator(2), 2, 17), "sample_rate": 8000, "n_fft": 32, "hop_length": 4,
          "n_mels": 5})  # the shortest legal waveform: T = n_fft // 2 + 1 (T < n_fft is fine)
def test_log_mel_matches_a_direct_dft(impl, kwargs):
    pristine = copy.deepcopy(kwargs)
    call = _log_mel_call(kwargs)
    got = impl.log_mel_spectrogram(**kwargs)
    _assert_unchanged(call, pristine, kwargs)
    options = {k: v for k, v in pristine.items() if k != "waveform"}
    expected = torch.from_numpy(_direct_log_mel(
        pristine["waveform"], options.pop("sample_rate"), options.pop("n_fft"), options.pop("hop_length"),
        options.pop("n_mels"), **options))
    assert isinstance(got, torch.Tensor) and got.shape == expected.shape and got.dtype == DT, (
        f"Called {call}. Returned {describe(got)}; expected a float64 tensor of shape (..., n_mels, n_frames) = "
        f"{tuple(expected.shape)}, with n_frames = 1 + (T + 2 * (n_fft // 2) - n_fft) // hop_length (centred frames).")

    def run(f):
        return f(**copy.deepcopy(pristine))

    wrong = error_report(got, expected, **TIGHT)
    cause = likely_cause(KATA, "log_mel_spectrogram", run, got, **TIGHT) if wrong else None
    assert_close(got, expected, call=call, cause=cause, **TIGHT,
                 because="it must equal log(max(mel_filterbank @ |DFT|^2, floor)) of centred frames (reflect padding "
                         "of n_fft // 2 samples), each multiplied by a periodic Hann window.")


@pytest.mark.exercise("log_mel_spectrogram")
@pytest.mark.parametrize("band", [20, 35, 50, 70])
def test_log_mel_of_a_pure_tone(impl, band):
    # A tone exactly on FFT bin k0: a periodic Hann window leaves power (A N / 4)^2 in bin k0 and (A N / 8)^2 in
    # bins k0 +- 1 of every frame that lies inside the signal, and nothing anywhere else.
    sr, n_fft = 16000, 400
    centre = _centres_hz(80, sr)[band]
    k0 = round(centre * n_fft / sr)
    f = k0 * sr / n_fft
    amplitude = 0.5
    t = torch.arange(4000, dtype=DT) / sr
    wave = amplitude * torch.sin(2 * math.pi * f * t + 0.3)
    call = f"log_mel_spectrogram(0.5 * sin(2 pi {f:g} t) of 4000 samples at 16 kHz) (the defaults otherwise)"
    got = impl.log_mel_spectrogram(wave)
    assert isinstance(got, torch.Tensor) and tuple(got.shape) == (80, 26), (
        f"Called {call}. Returned {describe(got)}; expected shape (80, 26) = (n_mels, 1 + 4000 // 160): the defaults "
        "are n_mels=80, hop_length=160 and centred frames.")
    power = np.zeros(n_fft // 2 + 1)
    power[k0] = (amplitude * n_fft / 4) ** 2
    power[k0 - 1] = power[k0 + 1] = (amplitude * n_fft / 8) ** 2
    expected = np.log(np.maximum(_htk_filterbank(80, n_fft, sr) @ power, 1e-10))
    inner = slice(2, 24)  # frames whose window lies inside the signal (no padding)
    expected_frames = torch.from_numpy(expected)[:, None].expand(80, 24 - 2)
    strongest = int(got[:, inner].mean(dim=1).argmax())
    nearest = int(np.abs(np.log10(1 + _centres_hz(80, sr) / 700) - math.log10(1 + f / 700)).argmin())
    assert strongest == nearest, (
        f"Called {call}. The strongest mel band is {strongest}; a tone of {f:g} Hz belongs in band {nearest}, the one "
        "whose centre is nearest on the mel scale (check the mel formula, the bin frequencies k * sample_rate / n_fft "
        "and the power |X|^2).")
    assert_close(got[:, inner], expected_frames, call=call + " -> frames 2..23", rtol=1e-8, atol=1e-8,
                 because=f"the power of a sine of amplitude A on bin {k0} under a periodic Hann window of N = 400 "
                         f"samples is (A N / 4)^2 in bin {k0} and (A N / 8)^2 in its two neighbours; each mel band "
                         "sums them under its triangle, and the log is natural, floored at 1e-10 (the default floor).")


@pytest.mark.exercise("log_mel_spectrogram")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("floor", [None, 1e-3])
def test_log_mel_of_silence_is_the_floor(impl, dtype, floor):
    wave = torch.zeros(2, 3, 500, dtype=dtype)
    kwargs = {} if floor is None else {"floor": floor}
    call = _log_mel_call({"waveform": wave, **kwargs})
    got = impl.log_mel_spectrogram(wave, **kwargs)
    value = math.log(1e-10 if floor is None else floor)
    assert isinstance(got, torch.Tensor) and got.dtype == dtype and tuple(got.shape) == (2, 3, 80, 4), (
        f"Called {call}. Returned {describe(got)}; expected a {dtype} tensor of shape (2, 3, 80, 4): every leading "
        "dimension kept, then (n_mels, 1 + T // hop_length).")
    assert_close(got.double(), torch.full((2, 3, 80, 4), value, dtype=DT), rtol=1e-6, atol=1e-6, call=call,
                 because=f"silence has no power at all, so every value is log(floor) = {value:.6g} (the default "
                         "floor is 1e-10): clamp the mel energies to the floor before the log.")


@pytest.mark.exercise("log_mel_spectrogram")
def test_log_mel_in_float32_and_on_meta(impl):
    gen = generator(9)
    wave = randn(gen, 2, 900, dtype=torch.float32).T.contiguous().T  # a (2, 900) view with strides (1, 2)
    pristine = wave.clone()
    got = impl.log_mel_spectrogram(wave, n_fft=128, hop_length=64, n_mels=20)
    call = _log_mel_call({"waveform": pristine, "n_fft": 128, "hop_length": 64, "n_mels": 20})
    _assert_unchanged(call, {"waveform": pristine}, {"waveform": wave})
    assert got.dtype == torch.float32, f"Called {call}. Returned dtype {got.dtype}; expected the waveform's float32."
    expected = torch.from_numpy(_direct_log_mel(pristine, 16000, 128, 64, 20))
    assert_close(got.double(), expected, call=call, rtol=1e-4, atol=1e-3, because="float32 rounding only.")
    meta = impl.log_mel_spectrogram(torch.empty(3, 1000, device="meta"))
    assert meta.device.type == "meta" and tuple(meta.shape) == (3, 80, 7), (
        f"Called log_mel_spectrogram(a meta (3, 1000) waveform). Returned {describe(meta)} on {meta.device}; expected "
        "(3, 80, 7) on meta: build the window and the filterbank on the waveform's device.")


class _MixedDevices(TorchDispatchMode):
    """Records every operation that mixes tensors of two devices (0-dimensional scalars aside, which PyTorch
    allows to stay on the CPU): on a GPU such an operation fails, on ``meta`` it silently works."""

    def __init__(self) -> None:
        super().__init__()
        self.mixed: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        tensors = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor) and t.ndim > 0]
        devices = sorted({t.device.type for t in tensors})
        if len(devices) > 1:
            self.mixed.append(f"{func} on {' and '.join(devices)} tensors")
        return func(*args, **kwargs)


@pytest.mark.exercise("log_mel_spectrogram")
def test_log_mel_builds_its_tensors_on_the_waveforms_device(impl):
    wave = torch.empty(2, 1000, device="meta")
    with _MixedDevices() as spy:
        got = impl.log_mel_spectrogram(wave)
    call = "log_mel_spectrogram(a (2, 1000) float32 waveform on the meta device)"
    assert not spy.mixed, (
        f"Called {call}. It combined tensors of two devices: {spy.mixed[:2]}. On a GPU that fails.\nBecause the "
        "window and the mel filterbank must be created where the waveform lives: torch.hann_window(..., "
        "device=waveform.device) and mel_filterbank(..., device=waveform.device).")
    assert got.device.type == "meta" and tuple(got.shape) == (2, 80, 7), (
        f"Called {call}. Returned {describe(got)} on {got.device}; expected (2, 80, 7) on the waveform's device.")


@pytest.mark.exercise("log_mel_spectrogram")
@pytest.mark.parametrize(("case", "argument", "named"), [
    ("ints", None, "int64"), ("float16", None, "float16"), ("0-D", None, "0|()"), ("hop 0", "hop_length", "0"),
    ("hop bool", "hop_length", "True"), ("n_fft 0", "n_fft", "0"), ("n_fft float", "n_fft", "400.0"),
    ("floor 0", "floor", "0"), ("floor negative", "floor", "-1e-05"), ("too short", None, "200"),
    ("f_max above Nyquist", "f_max", "9000"), ("f_max zero", "f_max", "0.0"),
])
def test_log_mel_rejects_bad_arguments(impl, case, argument, named):
    wave, kwargs = torch.zeros(1000), {}
    if case == "ints":
        wave = torch.zeros(1000, dtype=torch.int64)
    elif case == "float16":
        wave = torch.zeros(1000, dtype=torch.float16)
    elif case == "0-D":
        wave = torch.tensor(0.0)
    elif case == "hop 0":
        kwargs["hop_length"] = 0
    elif case == "hop bool":
        kwargs["hop_length"] = True
    elif case == "n_fft 0":
        kwargs["n_fft"] = 0
    elif case == "n_fft float":
        kwargs["n_fft"] = 400.0
    elif case == "floor 0":
        kwargs["floor"] = 0.0
    elif case == "floor negative":
        kwargs["floor"] = -1e-5
    elif case == "too short":
        wave = torch.zeros(200)  # n_fft // 2 = 200 samples of padding need at least 201
    elif case == "f_max above Nyquist":
        kwargs["f_max"] = 9000.0
    elif case == "f_max zero":
        kwargs["f_max"] = 0.0
    call = _log_mel_call({"waveform": wave, **kwargs})
    with pytest.raises(ValueError) as info:
        impl.log_mel_spectrogram(wave, **kwargs)
    _assert_names(f"{call} ({case})", info.value, argument, named)
