"""Checks for w17_architectures: GPT-2 counted and rebuilt, BERT and T5 objectives, masks, Llama blocks, scaling.

The oracles are the real libraries wherever one exists: ``transformers``' ``GPT2LMHeadModel`` (parameter
count, logits, dropout placement, saved checkpoints), ``torch.nn.RMSNorm``, Llama's rotary helpers and MLP,
and closed forms or the checks' own constructions elsewhere. Model comparisons run in float64 with weights
drawn from a seed, LayerNorm gains and biases moved away from 1 and 0 and weights large enough that GELU
leaves its linear regime: a GPT-2 with exact GELU differs from the tanh one by ~1e-3 here (1.7e-6 at GPT-2's
own init scale in float32, which a float32 tolerance would let pass). ``transformers`` is imported lazily,
only by the checks that need it, and tiny models are built once per module.

Checklist notes (CONTRACTS.md items that do not apply, and why):
- count_gpt2_parameters: it reads a config and returns an int, so layouts (2), dtypes/devices (3),
  randomness (8), state (6), numerics (9) and errors (10) do not apply; the config is checked unmodified (1).
- GPT2 / load_hf_state_dict: randomness (8): the documented source of dropout and of the initial weights is
  the global RNG (``nn.Dropout``, ``nn.init``), so the checks run them inside ``seeded`` and compare with
  ``GPT2LMHeadModel`` under the same seed (dropout) or statistically (initial weights). Sizes (2): T = 0 is not
  a legal input (GPT-2 has nothing to predict from), T = 1 and T = n_positions are checked, and ids come as
  (B, T) only. Devices (3): checked on the meta device; positions made on the CPU pass there (meta ops accept
  CPU indices), which only a CUDA run would reveal, so that mistake is not catalogued. State (6): the module
  keeps no state beyond train()/eval(), switched both ways by the dropout checks. Inputs (1): load_hf_state_dict's
  state dict is compared with a copy; afterwards every parameter still requires grad and holds its own copy of the
  values (an in-place step on the model leaves the state dict as it was). The docstring says nothing about the
  train()/eval() mode after loading, so that is not checked.
- mlm_mask / span_corruption: state (6) does not apply (pure functions); span_corruption takes a required
  generator, so its ``None`` rule does not apply; its numerics (9) are integer bookkeeping. Sizes (2):
  mlm_mask is checked on 1-3 dimensional ids with sizes from 0; span_corruption only takes 1-D tokens.
  Randomness (8) of mlm_mask is also checked as distributions: the number of chosen positions varies like a
  binomial over seeds (independent choices), and the random token covers the whole vocabulary. Devices (3):
  span_corruption reads token values, which the meta device does not hold, so its device is checked on CUDA only.
- attention_mask_for: randomness (6, 8) and inputs (1) do not apply (ints in, a new CPU mask out; the docstring
  promises no device argument).
- RMSNorm / SwiGLU / GroupedQueryAttention: no randomness beyond ``nn.Linear`` init, which the docstrings do
  not specify (8); no state (6). GQA promises nothing for T = 0 and takes (B, T, E) only (2).
- apply_rotary: numerics (9) are the large positions (4096, 100,000), compared in float64, and float32 input near
  position 100,000 (float32 tolerance: the angles must still be float64); the comparison with
  ``LlamaRotaryEmbedding`` runs at float32 tolerance because that class computes its angles in float32.
- chinchilla_optimal / fit_power_law / plot_scaling: no tensors, devices or randomness (3, 6, 8); the inputs
  of fit_power_law and plot_scaling are checked unmodified (1) and fit_power_law's errors are checked to be
  ValueErrors (10: the message wording is free, as the docstring only asks it to name the problem). plot_scaling
  must leave no pyplot figure open ("nothing global is left behind").
- Error messages (10): a number counts as named however it is formatted (0.0 as "0", a shape as torch.Size).
"""

from __future__ import annotations

import copy
import functools
import math
import os
import re

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from checks.hub import pretrained_or_skip
from checks.hub import warm_up_saving as warm_up  # noqa: F401 - kata watch runs it once, before the first re-check
from checks.numerics import assert_close, describe, error_report, format_call, likely_cause
from checks.torch_strategies import generator, randn, seeded, seeds

pytestmark = pytest.mark.kata("w17_architectures")

KATA = "w17_architectures"
DT = torch.float64
TIGHT = {"rtol": 1e-7, "atol": 1e-10}  # float64 against the library's float64 (different summation orders)
_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


def _names(message: str, value) -> bool:
    """Whether an error message names ``value``, however the learner formatted it: 0.0 as "0.0" or "0", -1e20 as
    "-1e+20" or "-1.00e+20", nan as "nan" or "NaN", a shape (2, 3) as "(2, 3)", "[2, 3]" or "torch.Size([2, 3])"."""
    if isinstance(value, tuple):
        return ", ".join(map(str, value)) in message
    if isinstance(value, str):
        return value in message
    if str(value) in message or repr(value) in message:
        return True
    if math.isnan(value) or math.isinf(value):
        return str(value).lstrip("-") in message.lower()
    return any(math.isclose(float(token), value, rel_tol=1e-3) for token in _NUMBER.findall(message))


# --------------------------------------------------------------------------------------------------
# transformers, imported only by the checks that need it (it takes seconds)


@functools.cache
def _gpt2_module():
    from transformers.models.gpt2 import configuration_gpt2, modeling_gpt2

    return configuration_gpt2.GPT2Config, modeling_gpt2.GPT2LMHeadModel


def gpt2_config(**overrides):
    """A tiny GPT2Config; bos/eos inside the small vocabulary and eager attention, as the library needs."""
    GPT2Config, _ = _gpt2_module()
    settings_ = {"vocab_size": 13, "n_positions": 9, "n_embd": 12, "n_layer": 2, "n_head": 3,
                 "bos_token_id": 0, "eos_token_id": 0}
    settings_.update(overrides)
    config = GPT2Config(**settings_)
    config._attn_implementation = "eager"  # the reference formula, not a fused kernel
    return config


def hf_gpt2(config, seed: int, scale: float = 0.4):
    """GPT2LMHeadModel(config) in float64 with every weight drawn from ``seed``: LayerNorm gains around 1 but
    not 1, biases not 0, and weights large enough that GELU is far from linear."""
    _, GPT2LMHeadModel = _gpt2_module()
    with seeded(seed):
        model = GPT2LMHeadModel(config)
    model = model.to(DT).eval()
    gen = generator(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=DT) * scale + (1.0 if ".ln_" in f".{name}" and
                                                                              name.endswith("weight") else 0.0))
    return model


@st.composite
def tiny_configs(draw):
    """Overrides for gpt2_config: sizes from 1, odd widths, an explicit n_inner or None, untied heads."""
    n_head = draw(st.integers(1, 3))
    return {
        "vocab_size": draw(st.integers(1, 17)),
        "n_positions": draw(st.integers(1, 9)),
        "n_embd": n_head * draw(st.integers(1, 4)),
        "n_layer": draw(st.integers(0, 3)),
        "n_head": n_head,
        "n_inner": draw(st.none() | st.integers(1, 9)),
        "tie_word_embeddings": draw(st.booleans()),
    }


# --------------------------------------------------------------------------------------------------
# count_gpt2_parameters


def _count_call(impl, config) -> tuple[object, str]:
    fields = {k: getattr(config, k) for k in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_inner",
                                              "tie_word_embeddings")}
    call = f"count_gpt2_parameters(GPT2Config({', '.join(f'{k}={v!r}' for k, v in fields.items())}))"
    return impl.count_gpt2_parameters(config), call


@pytest.mark.exercise("count_gpt2_parameters")
@settings(max_examples=15)
@given(overrides=tiny_configs())
def test_count_equals_the_library_model(impl, overrides):
    config = gpt2_config(**overrides)
    pristine = config.to_dict()
    got, call = _count_call(impl, config)
    with seeded(0), torch.device("meta"):  # shapes only: no memory, no random numbers drawn
        model = _gpt2_module()[1](config)
    expected = sum(p.numel() for p in model.parameters())
    assert config.to_dict() == pristine, f"Called {call}. It modified the config it was given."
    assert isinstance(got, int) and not isinstance(got, bool), (
        f"Called {call}. Returned {got!r} of type {type(got).__name__}; expected a Python int.")
    if got != expected:
        cause = likely_cause(KATA, "count_gpt2_parameters", lambda f: f(copy.deepcopy(config)),
                             matches=lambda n: n == got)
        raise AssertionError(
            f"Called {call}. Returned {got:,}, expected {expected:,} = sum(p.numel() for p in "
            f"GPT2LMHeadModel(config).parameters()), off by {got - expected:+,}.\nBecause every weight and bias "
            "counts once: a tied lm_head is the same tensor as wte."
            + (f"\nLikely cause: {cause}" if cause else ""))


@pytest.mark.exercise("count_gpt2_parameters")
@pytest.mark.parametrize(("size", "overrides", "expected"), [
    ("small", {}, 124_439_808),
    ("medium", {"n_embd": 1024, "n_layer": 24, "n_head": 16}, 354_823_168),
    ("large", {"n_embd": 1280, "n_layer": 36, "n_head": 20}, 774_030_080),
    ("xl", {"n_embd": 1600, "n_layer": 48, "n_head": 25}, 1_557_611_200),
])
def test_count_of_the_released_gpt2_sizes(impl, size, overrides, expected):
    GPT2Config, _ = _gpt2_module()
    got, call = _count_call(impl, GPT2Config(**overrides))
    assert got == expected, (
        f"Called {call} (GPT-2 {size}). Returned {got!r}, expected {expected:,}.\nBecause those are the released "
        "model's parameters, with its one embedding matrix shared by the input and the output."
        + (f"\nLikely cause: {c}" if (c := likely_cause(KATA, "count_gpt2_parameters",
                                                          lambda f: f(GPT2Config(**overrides)),
                                                          matches=lambda n: n == got)) else ""))


@pytest.mark.exercise("count_gpt2_parameters")
@pytest.mark.parametrize("tie", [None, True, False])
def test_count_of_a_plain_config_object(impl, tie):
    """Any object with the attributes works; without tie_word_embeddings the head is tied (the default)."""
    from types import SimpleNamespace

    fields = {"vocab_size": 10, "n_positions": 6, "n_embd": 4, "n_layer": 1, "n_head": 2, "n_inner": None}
    if tie is not None:
        fields["tie_word_embeddings"] = tie
    per_layer = 2 * 4 + 4 * 12 + 12 + 4 * 4 + 4 + 2 * 4 + 4 * 16 + 16 + 16 * 4 + 4
    expected = 10 * 4 + 6 * 4 + per_layer + 2 * 4 + (10 * 4 if tie is False else 0)
    got = impl.count_gpt2_parameters(SimpleNamespace(**fields))
    if got != expected:
        cause = likely_cause(KATA, "count_gpt2_parameters", lambda f: f(SimpleNamespace(**fields)),
                             matches=lambda n: n == got)
        raise AssertionError(
            f"Called count_gpt2_parameters(SimpleNamespace({fields})). Returned {got!r}, expected {expected}.\nBecause "
            "any object with the config's attributes works; one without tie_word_embeddings is tied (the default "
            "True), and only an untied head adds its own V x E matrix (no bias)."
            + (f"\nLikely cause: {cause}" if cause else ""))


# --------------------------------------------------------------------------------------------------
# GPT2 + load_hf_state_dict

CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def _expected_parameters(config) -> dict[str, tuple[int, ...]]:
    E, V, P = config.n_embd, config.vocab_size, config.n_positions
    inner = config.n_inner or 4 * E
    shapes = {"transformer.wte.weight": (V, E), "transformer.wpe.weight": (P, E)}
    for i in range(config.n_layer):
        h = f"transformer.h.{i}."
        shapes.update({
            h + "ln_1.weight": (E,), h + "ln_1.bias": (E,), h + "attn.c_attn.weight": (3 * E, E),
            h + "attn.c_attn.bias": (3 * E,), h + "attn.c_proj.weight": (E, E), h + "attn.c_proj.bias": (E,),
            h + "ln_2.weight": (E,), h + "ln_2.bias": (E,), h + "mlp.c_fc.weight": (inner, E),
            h + "mlp.c_fc.bias": (inner,), h + "mlp.c_proj.weight": (E, inner), h + "mlp.c_proj.bias": (E,),
        })
    shapes.update({"transformer.ln_f.weight": (E,), "transformer.ln_f.bias": (E,)})
    return shapes


def _build(impl, config, seed: int = 0):
    with seeded(seed):
        return impl.GPT2(config)


def _load(impl, model, state, call: str):
    """``impl.load_hf_state_dict(model, state)`` for a checkpoint that fits the model: raising is a wrong answer."""
    try:
        return impl.load_hf_state_dict(model, state)
    except (KeyError, ValueError) as err:
        raise AssertionError(
            f"Called {call}. It raised {type(err).__name__}: {err}\nexpected it to load: every key of this checkpoint "
            "has a place in GPT2(config), and every shape fits once the four Conv1D weights are transposed.\nBecause "
            "only keys ending in '.attn.bias' or '.attn.masked_bias' (with the dot: '.attn.c_attn.bias' is a weight) "
            "and 'lm_head.weight' are skipped, and bare keys ('h.0.ln_1.weight') get the 'transformer.' prefix."
        ) from None


def _loaded(impl, hf) -> torch.nn.Module:
    """The learner's GPT2 with the library model's weights, in float64 and eval mode."""
    model = _build(impl, hf.config).to(DT)
    returned = _load(impl, model, hf.state_dict(), "load_hf_state_dict(GPT2(config), GPT2LMHeadModel.state_dict())")
    assert returned is model, (
        f"Called load_hf_state_dict(model, state_dict). Returned {describe(returned)}; expected the model it was "
        "given (the same object, loaded in place).")
    return model.eval()


def _ids(seed: int, B: int, T: int, V: int, dtype=torch.long) -> torch.Tensor:
    return torch.randint(0, V, (B, T), generator=generator(seed)).to(dtype)


def _assert_logits(impl, model, hf, ids, call, because, symbol="GPT2"):
    pristine = ids.clone()
    got = model(ids)
    with torch.no_grad():
        expected = hf(ids).logits
    assert torch.equal(ids, pristine), f"Called {call}. It modified input_ids in place."
    if error_report(got.detach(), expected, **TIGHT) is not None:
        def rerun(candidate):
            if symbol == "GPT2":
                fresh = candidate(hf.config)
                impl_load = impl.load_hf_state_dict
            else:
                fresh, impl_load = impl.GPT2(hf.config), candidate
            return impl_load(fresh.to(DT), hf.state_dict()).eval()(ids).detach()
        cause = likely_cause(KATA, symbol, rerun, got.detach(), **TIGHT)
        assert_close(got.detach(), expected, call=call, because=because, cause=cause, **TIGHT)


@pytest.mark.exercise("GPT2")
@settings(max_examples=10)
@given(seed=seeds, n_head=st.integers(1, 3), head=st.integers(1, 3), n_layer=st.integers(1, 2),
       n_inner=st.none() | st.integers(1, 7), eps=st.sampled_from([1e-5, 1e-2, 0.3]), T=st.integers(1, 6))
def test_logits_equal_the_library_gpt2(impl, seed, n_head, head, n_layer, n_inner, eps, T):
    hf = _standard_hf(seed, n_embd=n_head * head, n_head=n_head, n_layer=n_layer, n_inner=n_inner,
                      layer_norm_epsilon=eps, n_positions=6)
    config = hf.config
    model = _loaded(impl, hf)
    ids = _ids(seed, 2, T, config.vocab_size)
    _assert_logits(impl, model, hf, ids,
                   f"GPT2(GPT2Config(n_embd={config.n_embd}, n_head={n_head}, n_layer={n_layer}, n_inner={n_inner}, "
                   f"layer_norm_epsilon={eps})) loaded from GPT2LMHeadModel, then model({describe(ids)})",
                   "the same weights must give the same logits: pre-norm blocks, GELU with the tanh approximation, "
                   "learned positions, causal attention over heads of n_embd // n_head features, ln_f, tied head.")


@functools.lru_cache(maxsize=16)
def _cached_hf(overrides: tuple, seed: int):
    return hf_gpt2(gpt2_config(**dict(overrides)), seed)


def _standard_hf(seed: int = 3, **overrides):
    """A library GPT-2 built once per module for these overrides (callers that change it take a deepcopy)."""
    return _cached_hf(tuple(sorted(overrides.items())), seed)


@pytest.mark.exercise("GPT2")
def test_gpt2_layout_parameters_and_tied_head(impl):
    config = gpt2_config(n_inner=7)
    model = _build(impl, config)
    shapes = {name: tuple(p.shape) for name, p in model.named_parameters()}
    expected = _expected_parameters(config)
    assert shapes == expected, (
        f"Called GPT2({config.n_embd=}, {config.n_layer=}, n_inner=7). Its parameters are {shapes};\nexpected "
        f"exactly {expected}.\nMissing: {sorted(set(expected) - set(shapes))}, extra or renamed: "
        f"{sorted(set(shapes) - set(expected))}. Because the docstring fixes nanoGPT's layout (lm_head.weight does "
        "not appear: it is the same Parameter as transformer.wte.weight).")
    assert model.lm_head.weight is model.transformer.wte.weight, (
        "Called GPT2(config). model.lm_head.weight is not model.transformer.wte.weight.\nBecause GPT-2 ties them: "
        "one (V, E) Parameter, assigned (lm_head.weight = transformer.wte.weight), not copied.")
    assert model.lm_head.bias is None, "Called GPT2(config). lm_head has a bias; GPT-2's output head has none."
    assert model.config is config, "Called GPT2(config). model.config must be the config it was given."
    for name, p in model.named_parameters():
        assert p.requires_grad, f"Called GPT2(config). {name} does not require grad; every weight trains."
    assert all(m.p == config.embd_pdrop for m in [model.transformer.drop]) and isinstance(
        model.transformer.drop, torch.nn.Dropout), "transformer.drop must be nn.Dropout(config.embd_pdrop)."


@pytest.mark.exercise("GPT2")
def test_gpt2_initialisation_follows_gpt2(impl):
    config = gpt2_config(vocab_size=400, n_positions=64, n_embd=64, n_head=4, n_layer=3, initializer_range=0.1)
    model = _build(impl, config, seed=11)
    std_proj = 0.1 / math.sqrt(2 * 3)
    for name, p in model.named_parameters():
        p = p.detach().double()
        if name.endswith("c_proj.weight"):
            want = std_proj
        elif name.endswith("bias"):
            assert torch.all(p == 0), f"Called GPT2(config). {name} is not initialised to 0 ({describe(p)})."
            continue
        elif ".ln_" in f".{name}":
            assert torch.all(p == 1), f"Called GPT2(config). LayerNorm gain {name} is not 1 ({describe(p)})."
            continue
        else:
            want = 0.1
        n = p.numel()
        # the sample std of n normal draws is within ~5 / sqrt(2n) of the true one (relative), almost surely
        std_ok = abs(p.std().item() / want - 1) < 5 / math.sqrt(2 * n)
        assert std_ok and abs(p.mean().item()) < 5 * want / math.sqrt(n), (
            f"Called GPT2(config) with initializer_range=0.1, n_layer=3. {name} has mean {p.mean().item():.4g} and "
            f"std {p.std().item():.4g}; expected mean 0 and std {want:.4g}.\nBecause GPT-2 draws weights from "
            "Normal(0, initializer_range) and the residual projections c_proj from Normal(0, initializer_range / "
            "sqrt(2 * n_layer))."
            + (f"\nLikely cause: {c}" if (c := likely_cause(
                KATA, "GPT2", lambda cls: _build_with(cls, config, 11),
                matches=functools.partial(_same_std, name=name, std=p.std().item()))) else ""))


def _same_std(model, name: str, std: float) -> bool:
    # in float64, as the check measured it: a float32 std differs from it by ~1e-8
    return abs(dict(model.named_parameters())[name].detach().double().std().item() - std) < 1e-12


def _build_with(cls, config, seed):
    with seeded(seed):
        return cls(config)


@pytest.mark.exercise("GPT2")
@pytest.mark.parametrize("T", [1, 9])
def test_gpt2_first_and_last_legal_length(impl, T):
    hf = _standard_hf(seed=5, layer_norm_epsilon=0.1)
    model = _loaded(impl, hf)
    ids = _ids(T, 3, T, hf.config.vocab_size, dtype=torch.int32)
    try:
        model(ids)
    except ValueError as err:
        raise AssertionError(
            f"Called model({describe(ids)}) with n_positions=9. It raised ValueError: {err}\nexpected logits of shape "
            f"(3, {T}, {hf.config.vocab_size}).\nBecause wpe has a row for each position 0 .. n_positions - 1, so T = "
            "n_positions is the longest legal input; only T > n_positions is an error.") from None
    _assert_logits(impl, model, hf, ids, f"model({describe(ids)}) with n_positions=9 (int32 ids)",
                   "every position up to n_positions has its own learned embedding.")


@pytest.mark.exercise("GPT2")
def test_gpt2_too_long_is_a_value_error(impl):
    config = gpt2_config(n_positions=4)
    model = _build(impl, config)
    ids = torch.zeros(1, 5, dtype=torch.long)
    with pytest.raises(ValueError) as err:
        model(ids)
    assert "5" in str(err.value) and "4" in str(err.value), (
        f"Called model({describe(ids)}) with n_positions=4. The ValueError says {str(err.value)!r}; it must name "
        "T=5 and the limit 4.")


@pytest.mark.exercise("GPT2")
def test_gpt2_heads_must_divide_the_width(impl):
    config = gpt2_config(n_embd=10, n_head=4)
    with pytest.raises(ValueError) as err:
        impl.GPT2(config)
    assert "10" in str(err.value) and "4" in str(err.value), (
        f"Called GPT2(config) with n_embd=10, n_head=4. The ValueError says {str(err.value)!r}; it must name both.")


@pytest.mark.exercise("GPT2")
@pytest.mark.parametrize("which", ["embd_pdrop", "attn_pdrop", "resid_pdrop"])
def test_gpt2_dropout_sits_where_gpt2_puts_it(impl, which):
    """Each dropout probability of the config acts where GPT2LMHeadModel applies it: with the same global seed,
    a model in train() mode draws the same masks in the same order, so the logits agree exactly."""
    hf = copy.deepcopy(_standard_hf(seed=8))
    config = copy.deepcopy(hf.config)
    for name in _DROP_PLACES:
        setattr(config, name, 0.3 if name == which else 0.0)
    for name, module in hf.named_modules():  # the library reads the probabilities once, when it builds
        if isinstance(module, torch.nn.Dropout):
            kind = {"drop": "embd_pdrop", "attn_dropout": "attn_pdrop"}.get(name.rsplit(".", 1)[-1], "resid_pdrop")
            module.p = 0.3 if kind == which else 0.0
    model = _load(impl, _build(impl, config).to(DT), hf.state_dict(), "load_hf_state_dict(GPT2(config), state_dict)")
    ids = _ids(1, 2, 7, config.vocab_size)
    model.train(), hf.train()
    with seeded(21):
        got = model(ids).detach()
    with seeded(21):
        expected = hf(ids).logits.detach()
    model.eval(), hf.eval()
    with torch.no_grad():
        plain = model(ids)
    assert error_report(got, plain, 0, 0) is not None, (
        f"Called model(ids) in train() mode with {which}=0.3: the logits equal those in eval() mode, so no "
        f"dropout acted.\nBecause config.{which} sets the dropout {_DROP_PLACES[which]}.")
    cause = None
    if error_report(got, expected, **TIGHT) is not None:
        def rerun(cls):
            fresh = impl.load_hf_state_dict(_build_with(cls, config, 0).to(DT), hf.state_dict()).train()
            with seeded(21):
                return fresh(ids).detach()
        cause = likely_cause(KATA, "GPT2", rerun, got, **TIGHT)
    assert_close(got, expected, call=f"model({describe(ids)}) in train() mode with {which}=0.3, the others 0, "
                 "under the same global seed as GPT2LMHeadModel", because=f"config.{which} is the dropout "
                 f"{_DROP_PLACES[which]}, and nn.Dropout draws its masks in the order the model runs.", cause=cause,
                 **TIGHT)
    assert_close(plain, hf(ids).logits.detach(), call=f"model(ids) in eval() mode with {which}=0.3",
                 because="dropout is off in eval() mode.", **TIGHT)


_DROP_PLACES = {
    "embd_pdrop": "on the sum of token and position embeddings",
    "attn_pdrop": "on the attention weights after the softmax",
    "resid_pdrop": "on the output of each attention c_proj and each MLP",
}


@pytest.mark.exercise("GPT2")
def test_gpt2_follows_dtype_and_device(impl):
    config = gpt2_config()
    model = _build(impl, config).to(torch.float64)
    ids = _ids(0, 2, 5, config.vocab_size)
    out = model(ids)
    assert out.dtype == torch.float64 and out.shape == (2, 5, config.vocab_size), (
        f"Called a float64 GPT2 on {describe(ids)}. Returned {describe(out)}; expected float64 logits (2, 5, 13).")
    meta = _build(impl, config).to("meta")
    out = meta(ids.to("meta"))
    assert out.device.type == "meta" and out.shape == (2, 5, config.vocab_size), (
        f"Called a GPT2 on the meta device with ids on the meta device. Returned {describe(out)} on {out.device}; "
        "expected (2, 5, 13) on meta.\nBecause every tensor made inside (the positions) must go where the ids live.")


# load_hf_state_dict


def _assert_loaded(model, hf_state, call):
    params = dict(model.named_parameters())
    for key, value in hf_state.items():
        if key.endswith((".attn.bias", ".attn.masked_bias")) or key == "lm_head.weight":
            continue
        name = key if key.startswith("transformer.") else f"transformer.{key}"
        want = value.t() if name.endswith(CONV1D) else value
        got = params[name].detach()
        assert got.dtype == DT, (f"Called {call}. {name} has dtype {got.dtype} after loading; expected the model's "
                                 "float64 (copy into the parameters, do not replace them).")
        problem = error_report(got, want.to(DT), 0, 0)
        if problem is not None:
            transposed = name.endswith(CONV1D)
            raise AssertionError(
                f"Called {call}. Parameter {name} does not hold the checkpoint's {key}: {problem}.\nBecause "
                + ("Hugging Face's Conv1D stores (in, out): it must be transposed into nn.Linear's (out, in)."
                   if transposed else "this weight copies as it is (only the four Conv1D weights are transposed)."))
    assert model.lm_head.weight is model.transformer.wte.weight, (
        f"Called {call}. Afterwards model.lm_head.weight is not model.transformer.wte.weight: the tie is lost.\n"
        "Because copy_() into the existing Parameter keeps it; assigning a new one breaks it.")
    frozen = [name for name, p in model.named_parameters() if not p.requires_grad]
    if frozen:
        raise AssertionError(
            f"Called {call}. Afterwards {len(frozen)} parameters no longer require grad ({frozen[:3]} ...); expected "
            "every parameter to train, as before the load.\nBecause loading copies values into the parameters "
            "(param.copy_(value) under torch.no_grad()) and changes nothing else about them.")


@pytest.mark.exercise("GPT2")
@pytest.mark.parametrize("prefix", ["GPT2LMHeadModel", "GPT2Model"])
def test_load_copies_and_transposes_each_weight(impl, prefix):
    hf = _standard_hf(seed=4, n_inner=5)
    state = hf.state_dict() if prefix == "GPT2LMHeadModel" else hf.transformer.state_dict()
    state = {k: v.float() for k, v in state.items()}  # a float32 checkpoint into a float64 model
    if prefix == "GPT2Model":  # an old checkpoint also stores the causal mask buffers, here before the weights
        state = {"h.0.attn.bias": torch.ones(1, 1, 9, 9, dtype=torch.bool).tril(),
                 "h.1.attn.masked_bias": torch.tensor(-1e4)} | state
    pristine = {k: v.clone() for k, v in state.items()}
    model = _build(impl, hf.config).to(DT)
    call = f"load_hf_state_dict(model, <float32 {prefix}.state_dict(), {len(state)} keys>)"
    returned = _load(impl, model, state, call)
    assert returned is model, f"Called {call}. Returned {describe(returned)}; expected the model it was given."
    _assert_loaded(model, state, call)
    assert set(state) == set(pristine) and all(torch.equal(state[k], pristine[k]) for k in state), (
        f"Called {call}. It modified the state dict it was given.")


@pytest.mark.exercise("GPT2")
def test_load_copies_the_values_not_the_tensors(impl):
    """A float64 checkpoint into a float64 model: the parameters get their own copy of the values, so that training
    the model afterwards never writes into the caller's state dict."""
    hf = _standard_hf(seed=4, n_inner=5)
    state = {k: v.clone() for k, v in hf.state_dict().items()}
    pristine = {k: v.clone() for k, v in state.items()}
    model = _build(impl, hf.config).to(DT)
    call = "load_hf_state_dict(model, <float64 GPT2LMHeadModel.state_dict()>) into a float64 model"
    _load(impl, model, state, call)
    _assert_loaded(model, state, call)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)  # what an optimizer step does
    changed = [k for k in state if not torch.equal(state[k], pristine[k])]
    if changed:
        cause = likely_cause(KATA, "load_hf_state_dict", functools.partial(_shares_memory, hf=hf, impl=impl),
                             matches=bool)
        raise AssertionError(
            f"Called {call}, then changed the model's parameters in place, as an optimizer step does. That changed "
            f"the state dict too: {changed[:3]} ...\nBecause the parameters must hold copies of the values "
            "(param.copy_(value) under torch.no_grad()); param.data = value makes the model share the checkpoint's "
            "memory." + (f"\nLikely cause: {cause}" if cause else ""))


def _shares_memory(load, hf, impl) -> bool:
    """Whether ``load`` leaves a float64 model sharing memory with the float64 state dict it was given."""
    state = {k: v.clone() for k, v in hf.state_dict().items()}
    model = load(_build(impl, hf.config).to(DT), state)
    pointers = {v.untyped_storage().data_ptr() for v in state.values()}
    return any(p.untyped_storage().data_ptr() in pointers for p in model.parameters())


@pytest.mark.exercise("GPT2")
def test_load_from_a_saved_checkpoint(impl, tmp_path):
    """The path of the hub check, on a tiny model: save_pretrained to a folder, then load its config and file."""
    hf = _standard_hf(seed=6, n_inner=5, layer_norm_epsilon=0.05)
    hf.save_pretrained(tmp_path)
    model, reloaded = _load_pretrained_folder(impl, str(tmp_path))
    ids = _ids(2, 2, 9, hf.config.vocab_size)
    _assert_logits(impl, model, reloaded, ids, "load_hf_state_dict(GPT2(config), load_file(model.safetensors)) "
                   f"from a save_pretrained folder, then model({describe(ids)})",
                   "a saved checkpoint holds the same weights (no transformer. prefix problems, no lm_head key).",
                   symbol="load_hf_state_dict")


def _load_pretrained_folder(impl, folder: str):
    """(the learner's GPT2, GPT2LMHeadModel), both in float64 eval mode, from a folder of config + safetensors."""
    from safetensors.torch import load_file

    GPT2Config, GPT2LMHeadModel = _gpt2_module()
    config = GPT2Config.from_pretrained(folder)
    state = load_file(os.path.join(folder, "model.safetensors"))
    model = _load(impl, _build(impl, config).to(DT), state, "load_hf_state_dict(GPT2(config), "
                  "load_file('model.safetensors'))").eval()
    reference = GPT2LMHeadModel.from_pretrained(folder, attn_implementation="eager", dtype=DT).eval()
    return model, reference


@pytest.mark.exercise("GPT2")
@pytest.mark.parametrize("problem", ["unknown key", "missing key", "wrong shape"])
def test_load_rejects_a_state_dict_that_does_not_fit(impl, problem):
    hf = _standard_hf(seed=4)
    state = dict(hf.state_dict())
    if problem == "unknown key":
        state["transformer.h.0.attn.c_extra.weight"] = torch.zeros(3)
        name, error = "c_extra", KeyError
    elif problem == "missing key":
        del state["transformer.h.1.ln_2.bias"]
        name, error = "h.1.ln_2.bias", KeyError
    else:
        state["transformer.h.0.mlp.c_fc.bias"] = torch.zeros(7)
        name, error = "h.0.mlp.c_fc.bias", ValueError
    model = _build(impl, hf.config).to(DT)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(error) as err:
        impl.load_hf_state_dict(model, state)
    assert name in str(err.value), (
        f"Called load_hf_state_dict(model, state) with {problem} {name!r}. The {error.__name__} says "
        f"{str(err.value)!r}; it must name the key.")
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert not changed, (
        f"Called load_hf_state_dict(model, state) with {problem} {name!r}. It raised, but only after copying "
        f"{changed[:3]}...\nBecause a failed load leaves the model as it was: check every key and shape first.")


@pytest.mark.hub
@pytest.mark.timeout(300)  # 124 M parameters in float64, twice: tens of seconds on a laptop
@pytest.mark.exercise("GPT2")
def test_real_gpt2_logits_and_greedy_tokens(impl):
    """The real GPT-2 (124M) through the same loading path as test_load_from_a_saved_checkpoint."""
    folder = pretrained_or_skip("gpt2")
    model, reference = _load_pretrained_folder(impl, folder)
    ids = torch.tensor([[464, 2003, 286, 9552, 318]])  # five GPT-2 token ids (an English prompt)
    with torch.no_grad():
        got, expected = model(ids), reference(ids).logits
    assert_close(got, expected, call=f"GPT2 loaded from the real gpt2 checkpoint, on token ids {ids.tolist()}",
                 because="the real weights must give the library's logits.", rtol=1e-7, atol=1e-8)
    tokens, want = ids, ids
    with torch.no_grad():
        for _ in range(8):
            tokens = torch.cat([tokens, model(tokens)[:, -1:].argmax(-1)], dim=1)
            want = torch.cat([want, reference(want).logits[:, -1:].argmax(-1)], dim=1)
    assert torch.equal(tokens, want), (
        f"Greedy decoding from the real gpt2: got tokens {tokens.tolist()}, the library gives {want.tolist()}.")


# --------------------------------------------------------------------------------------------------
# mlm_mask


def _sigma_bound(n: int, p: float, sigmas: float = 5.0) -> float:
    """How far a binomial(n, p) proportion strays from p, almost surely (5 standard deviations)."""
    return sigmas * math.sqrt(max(p * (1 - p), 1e-12) / max(n, 1)) + 1e-12


def _mlm_call(ids, mask_id, vocab_size, special_ids, **kwargs):
    return format_call("mlm_mask", (ids,), {"mask_id": mask_id, "vocab_size": vocab_size,
                                            "special_ids": special_ids, **kwargs})


@st.composite
def mlm_cases(draw):
    gen = generator(draw(seeds))
    shape = tuple(draw(st.lists(st.integers(0, 5), min_size=1, max_size=3)))
    V = draw(st.integers(3, 30))
    ids = torch.randint(0, V, shape, generator=gen, dtype=draw(st.sampled_from([torch.long, torch.int32])))
    if draw(st.booleans()) and ids.dim() == 2:
        ids = ids.t()  # a transposed view
    special = draw(st.lists(st.integers(0, V - 1), max_size=3, unique=True))
    container = draw(st.sampled_from(["list", "tuple", "tensor"]))  # the three kinds the docstring allows
    special = {"list": special, "tuple": tuple(special), "tensor": torch.tensor(special, dtype=torch.long)}[container]
    return ids, draw(st.integers(0, V - 1)), V, special, draw(st.sampled_from([0.0, 0.15, 0.5, 1.0]))


@pytest.mark.exercise("mlm_mask")
@given(case=mlm_cases(), seed=seeds)
def test_mlm_labels_and_corruption_agree(impl, case, seed):
    ids, mask_id, V, special, prob = case
    pristine = ids.clone()
    call = _mlm_call(ids, mask_id, V, special, prob=prob, generator=f"Generator(seed={seed})")
    out, labels = impl.mlm_mask(ids, mask_id, V, special, prob=prob, generator=generator(seed))
    assert torch.equal(ids, pristine), f"Called {call}. It modified input_ids in place."
    for name, result in (("corrupted_ids", out), ("labels", labels)):
        assert result.shape == ids.shape and result.dtype == ids.dtype, (
            f"Called {call}. {name} is {describe(result)}; expected the shape {tuple(ids.shape)} and dtype {ids.dtype} "
            "of input_ids.")
    is_special = torch.isin(ids, torch.as_tensor(list(special), dtype=ids.dtype))
    chosen = labels != -100

    def fail(what, because):
        cause = likely_cause(KATA, "mlm_mask", lambda f: f(pristine.clone(), mask_id, V, special, prob=prob,
                                                            generator=generator(seed)),
                             matches=lambda r: torch.equal(r[0], out) and torch.equal(r[1], labels))
        raise AssertionError(f"Called {call}.\nReturned corrupted_ids {out.tolist()} and labels {labels.tolist()}:\n"
                             f"{what}.\nBecause {because}" + (f"\nLikely cause: {cause}" if cause else ""))

    if not torch.equal(labels[chosen], ids[chosen]):
        fail("labels that are not -100 do not hold the original token",
             "a label is what the model must predict at a chosen position: the token that was there.")
    if (chosen & is_special).any():
        fail("a special token was chosen", "special tokens ([CLS], [SEP], padding) are never chosen.")
    if not torch.equal(out[~chosen], ids[~chosen]):
        fail("a position with label -100 was changed",
             "only chosen positions are corrupted; every changed position must carry a label.")
    if ((out < 0) | (out >= V)).any():
        fail(f"a token outside 0..{V - 1}", "random replacements are drawn from the vocabulary.")
    if prob == 0.0 and chosen.any():
        fail("a position was chosen with prob=0", "each position is chosen with probability prob.")
    if prob == 1.0 and not torch.equal(chosen, ~is_special):
        fail("with prob=1 not every non-special position was chosen", "each position is chosen with probability prob.")


@pytest.mark.exercise("mlm_mask")
@pytest.mark.parametrize("prob", [None, 0.4])
def test_mlm_proportions_80_10_10(impl, prob):
    """On 40,000 tokens the fractions must sit within 5 binomial standard deviations of BERT's."""
    V, mask_id, special = 50, 0, [0, 1]
    gen = generator(1234)
    ids = torch.randint(1, V, (200, 200), generator=gen)  # never mask_id itself; 1 is special
    kwargs = {} if prob is None else {"prob": prob}
    p = 0.15 if prob is None else prob
    out, labels = impl.mlm_mask(ids, mask_id, V, special, generator=generator(99), **kwargs)
    call = _mlm_call(ids, mask_id, V, special, **kwargs, generator="Generator(seed=99)")
    eligible = ids != 1
    chosen = labels != -100
    n = int(eligible.sum())
    k = int(chosen.sum())
    checks = [("chosen / non-special positions", k / n, p, n)]
    if k:
        masked = (out[chosen] == mask_id).float().mean().item()
        kept = (out[chosen] == ids[chosen]).float().mean().item()
        checks += [("chosen positions turned into mask_id", masked, 0.8 + 0.1 / V, k),
                   ("chosen positions left unchanged", kept, 0.1 + 0.1 / V, k),
                   ("chosen positions given another token", 1 - masked - kept, 0.1 * (V - 2) / V, k)]
    for what, got, want, count in checks:
        if abs(got - want) > _sigma_bound(count, want):
            cause = likely_cause(KATA, "mlm_mask",
                                 lambda f: f(ids.clone(), mask_id, V, special, generator=generator(99), **kwargs),
                                 matches=lambda r: torch.equal(r[0], out) and torch.equal(r[1], labels))
            raise AssertionError(
                f"Called {call}. The fraction of {what} is {got:.4f}; expected {want:.4f} "
                f"+- {_sigma_bound(count, want):.4f} "
                f"(5 standard deviations of {count:,} draws).\nBecause each non-special position is chosen with "
                f"probability prob (default 0.15), then 80% become mask_id, 10% a random token, 10% stay."
                + (f"\nLikely cause: {cause}" if cause else ""))


@pytest.mark.exercise("mlm_mask")
def test_mlm_random_tokens_cover_the_vocabulary_uniformly(impl):
    """With prob=1 every position of 90,000 is chosen; its token is then mask_id with probability 0.8 + 0.1 / V,
    any other given token with 0.1 / V (the random draw), and the original 2 with 0.1 + 0.1 / V. The special ids
    0 and 5 are not in input_ids, so they are never chosen, but the random draw must still reach them."""
    V, mask_id = 6, 3
    ids = torch.full((300, 300), 2)
    out, labels = impl.mlm_mask(ids, mask_id, V, [0, 5], prob=1.0, generator=generator(5))
    n = ids.numel()
    counts = torch.bincount(out.flatten().long().clamp(0, V), minlength=V + 1)[:V].tolist()
    want = [n * (0.1 / V + (0.8 if j == mask_id else 0.1 if j == 2 else 0.0)) for j in range(V)]
    bad = [j for j in range(V) if abs(counts[j] - want[j]) > 5 * math.sqrt(want[j]) + 1]
    if bad:
        cause = likely_cause(KATA, "mlm_mask", lambda f: f(ids.clone(), mask_id, V, [0, 5], prob=1.0,
                                                           generator=generator(5)),
                             matches=lambda r: torch.equal(r[0], out))
        raise AssertionError(
            "Called mlm_mask(<(300, 300) ids all 2>, mask_id=3, vocab_size=6, special_ids=[0, 5], prob=1.0).\n"
            f"The counts of tokens 0..5 in corrupted_ids are {counts};\nexpected about {[round(w) for w in want]} "
            f"(token {bad[0]} is off by more than 5 standard deviations).\nBecause the random token is uniform "
            "over 0 .. vocab_size - 1: special ids, mask_id and the original token included (as Hugging Face's "
            "DataCollatorForLanguageModeling draws it); randint's high is exclusive, so pass vocab_size."
            + (f"\nLikely cause: {cause}" if cause else ""))


@pytest.mark.exercise("mlm_mask")
def test_mlm_positions_are_chosen_independently(impl):
    """Each position is chosen on its own coin flip, so the number chosen varies from draw to draw like a binomial:
    over 200 seeds, 10 positions with prob=0.5 give a count of variance 10 * 0.5 * 0.5 = 2.5. Picking a fixed
    number of positions (round(prob * n), as the original BERT scripts did per sequence) gives variance 0."""
    ids = torch.arange(2, 12).view(2, 5)
    counts = [int((impl.mlm_mask(ids, 1, 40, [0], prob=0.5, generator=generator(seed))[1] != -100).sum())
              for seed in range(200)]
    mean = sum(counts) / len(counts)
    variance = sum((c - mean) ** 2 for c in counts) / (len(counts) - 1)
    if not (1.0 < variance < 5.0 and abs(mean - 5.0) < 0.6):
        raise AssertionError(
            "Called mlm_mask(<(2, 5) ids without special tokens>, mask_id=1, vocab_size=40, special_ids=[0], "
            "prob=0.5) for 200 seeds.\n"
            f"The number of chosen positions had mean {mean:.3f} and variance {variance:.3f} (values seen: "
            f"{sorted(set(counts))});\nexpected mean 5 and variance about 2.5 (between 1 and 5).\nBecause each "
            "position is chosen independently with probability prob, so the count is binomial; a fixed count of "
            "round(prob * n) positions is another distribution.")


@pytest.mark.exercise("mlm_mask")
def test_mlm_randomness_comes_from_the_generator(impl):
    ids = torch.randint(2, 40, (8, 32), generator=generator(0))
    args = (ids, 1, 40, [0])
    state = torch.get_rng_state()
    a = impl.mlm_mask(*args, prob=0.5, generator=generator(1))
    assert torch.equal(torch.get_rng_state(), state), (
        "Called mlm_mask(..., generator=Generator(seed=1)). It drew from the global RNG; with a generator, every "
        "random number must come from it.")
    b = impl.mlm_mask(*args, prob=0.5, generator=generator(1))
    c = impl.mlm_mask(*args, prob=0.5, generator=generator(2))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]), "The same seed must give the same corruption."
    assert not torch.equal(a[1], c[1]), (
        "Called mlm_mask with generator seeds 1 and 2: the same positions were chosen. Different seeds must give "
        "different draws (a fixed internal seed ignores the generator).")
    with seeded(7):
        d = impl.mlm_mask(*args, prob=0.5)
        after = torch.get_rng_state()
    with seeded(7):
        e = impl.mlm_mask(*args, prob=0.5)
    with seeded(8):
        f = impl.mlm_mask(*args, prob=0.5)
    assert torch.equal(d[1], e[1]) and not torch.equal(d[1], f[1]) and not torch.equal(after, state), (
        "Called mlm_mask(..., generator=None) under torch.manual_seed(7), (7), then (8). Expected the global RNG to "
        "be used: the same global seed gives the same draw, another one a different draw.")


@pytest.mark.exercise("mlm_mask")
@pytest.mark.parametrize(("kwargs", "named"), [({"prob": 1.5}, "1.5"), ({"prob": -0.1}, "-0.1"),
                                               ({"mask_id": 40}, "40"), ({"mask_id": -1}, "-1")])
def test_mlm_rejects_bad_arguments(impl, kwargs, named):
    args = {"mask_id": 3, "vocab_size": 40, "special_ids": [0], "prob": 0.15} | kwargs
    with pytest.raises(ValueError) as err:
        impl.mlm_mask(torch.zeros(2, 3, dtype=torch.long), generator=generator(0), **args)
    assert _names(str(err.value), float(named)), (
        f"Called mlm_mask(..., {kwargs}). The ValueError says {str(err.value)!r}; it must name {named}.")


@pytest.mark.exercise("mlm_mask")
def test_mlm_on_the_meta_device(impl):
    ids = torch.zeros(3, 4, dtype=torch.long, device="meta")
    out, labels = impl.mlm_mask(ids, 1, 10, [0], generator=None)
    assert out.device.type == "meta" and labels.device.type == "meta" and out.shape == (3, 4), (
        f"Called mlm_mask on meta ids. Returned {describe(out)}, {describe(labels)} on {out.device}, {labels.device}; "
        "expected (3, 4) on meta: every tensor made inside goes where input_ids lives.")


# --------------------------------------------------------------------------------------------------
# span_corruption


def _expected_counts(n: int, density: float, mean_span: float) -> tuple[int, int]:
    noise = min(max(round(n * density), 1), n - 1)
    spans = min(max(1, round(noise / mean_span)), noise, n - noise)
    return noise, spans


def _rebuild(inputs: list[int], targets: list[int], sentinels: list[int]) -> list[int] | None:
    """Put the spans of ``targets`` back into ``inputs``; None when the layout does not allow it."""
    spans, current = {}, None
    for token in targets:
        if token in sentinels:
            if token in spans:
                return None
            current = token
            spans[token] = []
        elif current is None:
            return None
        else:
            spans[current].append(token)
    rebuilt = []
    for token in inputs:
        if token in sentinels:
            if token not in spans:
                return None
            rebuilt += spans.pop(token)
        else:
            rebuilt.append(token)
    return None if spans else rebuilt


@pytest.mark.exercise("span_corruption")
@given(seed=seeds, n=st.integers(2, 40), density=st.sampled_from([0.01, 0.15, 0.3, 0.5, 0.9]),
       mean_span=st.sampled_from([0.5, 1.0, 2.0, 3.0, 10.0]), dtype=st.sampled_from([torch.long, torch.int32]))
@example(seed=0, n=5, density=0.5, mean_span=1.0, dtype=torch.long)  # round(2.5) = 2 noise tokens (half to even)
@example(seed=0, n=10, density=0.5, mean_span=2.0, dtype=torch.long)  # round(5 / 2) = 2 spans (half to even)
def test_span_corruption_rebuilds_the_original(impl, seed, n, density, mean_span, dtype):
    tokens = torch.arange(100, 100 + n, dtype=dtype)[torch.randperm(n, generator=generator(seed))]
    sentinels = list(range(99, 79, -1))  # 20 distinct ids, none of them a token
    pristine = tokens.clone()
    call = format_call("span_corruption", (tokens, density, mean_span), {"sentinel_ids": sentinels[:4] + ["..."],
                                                                          "generator": f"Generator(seed={seed})"})
    inputs, targets = impl.span_corruption(tokens, density, mean_span, sentinels, generator(seed))
    assert torch.equal(tokens, pristine), f"Called {call}. It modified tokens in place."
    for name, r in (("inputs", inputs), ("targets", targets)):
        assert r.dim() == 1 and r.dtype == dtype, f"Called {call}. {name} is {describe(r)}; expected 1-D {dtype}."
    noise, spans = _expected_counts(n, density, mean_span)
    ins, tgs = inputs.tolist(), targets.tolist()

    def fail(what, because):
        # a short failing example can fit several mistakes: the cause must also reproduce two longer sequences
        longer = [torch.arange(200, 200 + n + extra, dtype=dtype) for extra in (7, 8)]
        try:
            again = [[r.tolist() for r in impl.span_corruption(t.clone(), density, mean_span, sentinels,
                                                               generator(seed + 1))] for t in longer]
        except Exception:  # noqa: BLE001 - then the failing example alone decides
            again = None

        def run(f):
            return [[r.tolist() for r in f(t.clone(), density, mean_span, sentinels, generator(s))]
                    for t, s in [(pristine, seed)] + [(t, seed + 1) for t in longer]]

        cause = likely_cause(KATA, "span_corruption", run,
                             matches=lambda r: r[0] == [ins, tgs] and (again is None or r[1:] == again))
        raise AssertionError(f"Called {call} on {pristine.tolist()}.\nReturned inputs {ins},\ntargets {tgs}:\n{what}.\n"
                             f"Because {because}" + (f"\nLikely cause: {cause}" if cause else ""))

    used = [t for t in ins if t in sentinels]
    if used != sentinels[:spans]:
        fail(f"the sentinels in inputs are {used}; expected {sentinels[:spans]} ({spans} spans)",
             f"round({n} * {density}) = {noise} noise tokens (kept within 1..n-1) form max(1, round({noise} / "
             f"{mean_span})) spans (at most {noise} and {n - noise}), each marked by its own sentinel, in order.")
    if [t for t in tgs if t in sentinels] != sentinels[:spans] or (tgs and tgs[0] != sentinels[0]):
        fail("the targets do not list each span after its sentinel, in order", "targets are sentinel_0 span_0 "
             "sentinel_1 span_1 ...")
    if _rebuild(ins, tgs, sentinels) != pristine.tolist():
        fail("replacing each sentinel by its span does not give the original back",
             "inputs and targets together hold every token once, each span at its sentinel.")
    if len(tgs) - spans != noise:
        fail(f"{len(tgs) - spans} tokens were dropped; expected {noise}", "num_noise = round(n * noise_density), "
             "clamped to 1..n-1.")
    if ins[0] in sentinels:
        fail("the inputs start with a sentinel", "the sequence starts with a kept span (T5's layout).")
    if ins[-1] not in sentinels:
        fail("the inputs end with a kept token, not with a sentinel", "the sequence is num_spans kept spans and "
             "num_spans noise spans, alternating from a kept one, so it ends with a noise span (T5's layout).")
    if any(a in sentinels and b in sentinels for a, b in zip(ins, ins[1:], strict=False)):
        fail("two sentinels are adjacent in inputs", "kept and noise spans alternate, each at least one token long.")


@pytest.mark.exercise("span_corruption")
def test_span_corruption_with_exactly_enough_sentinels(impl):
    tokens = torch.arange(10)  # 0.5 -> 5 noise tokens; mean 1 -> 5 spans, 5 kept tokens: 5 sentinels suffice
    inputs, targets = impl.span_corruption(tokens, 0.5, 1.0, [95, 96, 97, 98, 99], generator(0))
    want_inputs, want_targets = [0, 95, 2, 96, 4, 97, 6, 98, 8, 99], [95, 1, 96, 3, 97, 5, 98, 7, 99, 9]
    if inputs.tolist() != want_inputs or targets.tolist() != want_targets:
        raise AssertionError(
            "Called span_corruption(arange(10), 0.5, 1.0, [95, 96, 97, 98, 99], generator).\nReturned inputs "
            f"{inputs.tolist()}, targets {targets.tolist()};\nexpected inputs {want_inputs}, targets {want_targets}.\n"
            "Because with 5 noise spans of one token each after 5 kept spans of one token each, only one layout "
            "exists, 5 sentinels are exactly enough, and span i gets sentinel_ids[i].")


@pytest.mark.exercise("span_corruption")
def test_span_corruption_places_spans_at_random(impl):
    """Over many seeds every one of the 2 x 8 = 16 layouts appears: 3 noise tokens in 2 spans (1 + 2 or 2 + 1)
    and 9 kept tokens in 2 spans (8 ways); a uniform draw misses one of them in 400 tries with odds ~1e-10."""
    tokens = torch.arange(12)
    noisy = torch.zeros(12, dtype=torch.bool)
    layouts = set()
    for seed in range(400):
        inputs, targets = impl.span_corruption(tokens, 0.25, 1.5, [100, 101, 102], generator(seed))
        dropped = [t for t in targets.tolist() if t < 100]
        noisy[dropped] = True
        layouts.add(tuple(inputs.tolist()))
    if not (bool(noisy[1:].all()) and not bool(noisy[0]) and len(layouts) == 16):
        raise AssertionError(
            f"Called span_corruption(arange(12), 0.25, 1.5, [100, 101, 102], Generator(seed)) for 400 seeds.\n"
            f"Positions ever dropped: {noisy.nonzero().flatten().tolist()} ({len(layouts)} distinct layouts);\n"
            "expected every position but 0, in exactly the 16 possible layouts.\nBecause the span lengths are random "
            "splits of the noise and kept counts (3 noise tokens in 2 spans, 9 kept tokens in 2 spans, kept first).")


@pytest.mark.exercise("span_corruption")
def test_span_corruption_randomness_comes_from_the_generator(impl):
    tokens = torch.arange(30)
    state = torch.get_rng_state()
    a = impl.span_corruption(tokens, 0.3, 2.0, list(range(100, 110)), generator(1))
    assert torch.equal(torch.get_rng_state(), state), "span_corruption drew from the global RNG; use the generator."
    b = impl.span_corruption(tokens, 0.3, 2.0, list(range(100, 110)), generator(1))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]), "The same seed must give the same corruption."
    others = {tuple(impl.span_corruption(tokens, 0.3, 2.0, list(range(100, 110)), generator(s))[0].tolist())
              for s in range(2, 6)}
    assert len(others | {tuple(a[0].tolist())}) > 1, "Different seeds must give different spans."


@pytest.mark.exercise("span_corruption")
@pytest.mark.parametrize(("tokens", "density", "mean_span", "sentinels", "named"), [
    (torch.arange(1), 0.5, 1.0, [99], 1),
    (torch.arange(6).view(2, 3), 0.5, 1.0, [99, 98], (2, 3)),
    (torch.arange(10), 0.0, 1.0, [99], 0.0),
    (torch.arange(10), 1.0, 1.0, [99], 1.0),
    (torch.arange(10), 0.5, 0.0, [99], 0.0),
    (torch.arange(10), 0.5, 1.0, [99, 98, 97], 5),
])
def test_span_corruption_rejects_bad_arguments(impl, tokens, density, mean_span, sentinels, named):
    with pytest.raises(ValueError) as err:
        impl.span_corruption(tokens, density, mean_span, sentinels, generator(0))
    assert _names(str(err.value), named), (
        f"Called span_corruption({describe(tokens)}, {density}, {mean_span}, {sentinels}, generator). The ValueError "
        f"says {str(err.value)!r}; it must name {named}.")


# --------------------------------------------------------------------------------------------------
# attention_mask_for


def _own_mask(kind: str, t: int, prefix_len: int) -> torch.Tensor:
    """The checks' own masks, built with loops (never the learner's)."""
    mask = torch.zeros(t, t, dtype=torch.bool)
    for i in range(t):
        for j in range(t):
            mask[i, j] = kind == "bidirectional" or j <= i or (kind == "prefix" and j < prefix_len)
    return mask


@pytest.mark.exercise("attention_mask_for")
@given(kind=st.sampled_from(["causal", "bidirectional", "prefix"]), t=st.integers(0, 9), data=st.data())
def test_masks_of_each_kind(impl, kind, t, data):
    prefix_len = data.draw(st.integers(0, t)) if kind == "prefix" else 0
    kwargs = {"prefix_len": prefix_len} if kind == "prefix" else {}
    got = impl.attention_mask_for(kind, t, **kwargs)
    expected = _own_mask(kind, t, prefix_len)
    call = format_call("attention_mask_for", (kind, t), kwargs)
    assert isinstance(got, torch.Tensor) and got.dtype == torch.bool, (
        f"Called {call}. Returned {describe(got)}; expected a bool tensor.")
    if got.shape != expected.shape or not torch.equal(got, expected):
        # a tiny failing mask fits several mistakes (at t = 1, "no diagonal" and "True means blocked" agree): the
        # cause must also reproduce the learner's mask four tokens longer
        try:
            longer = impl.attention_mask_for(kind, t + 4, **kwargs)
        except Exception:  # noqa: BLE001 - then the short mask alone decides
            longer = None

        def same(masks) -> bool:
            return torch.equal(masks[0], got) and (longer is None or torch.equal(masks[1], longer))

        cause = likely_cause(KATA, "attention_mask_for", lambda f: (f(kind, t, **kwargs), f(kind, t + 4, **kwargs)),
                             matches=same)
        raise AssertionError(
            f"Called {call}. Returned\n{got.int()}\nexpected\n{expected.int()}.\nBecause True means query i (row) may "
            "attend to key j (column): causal j <= i; bidirectional always; prefix: j <= i or j < prefix_len."
            + (f"\nLikely cause: {cause}" if cause else ""))


@pytest.mark.exercise("attention_mask_for")
@pytest.mark.parametrize("t", [0, 1, 5])
def test_prefix_mask_at_its_ends(impl, t):
    for prefix_len, name in ((0, "causal"), (t, "bidirectional")):
        got = impl.attention_mask_for("prefix", t, prefix_len=prefix_len)
        want = _own_mask(name, t, 0)
        if not (isinstance(got, torch.Tensor) and got.shape == want.shape and torch.equal(got.bool(), want)):
            raise AssertionError(
                f"Called attention_mask_for('prefix', {t}, prefix_len={prefix_len}). Returned\n{describe(got)}\n"
                f"expected the {name} mask\n{want.int()}.\nBecause a prefix of 0 tokens leaves the causal mask, and "
                "a prefix of all t tokens makes every token see every token.")


@pytest.mark.exercise("attention_mask_for")
@pytest.mark.parametrize(("args", "error", "named"), [
    (("sliding", 4), ValueError, "sliding"), (("causal", -1), ValueError, "-1"),
    (("prefix", 4, 5), ValueError, "5"), (("prefix", 4, -1), ValueError, "-1"),
    (("causal", 4, 2), ValueError, "2"), (("bidirectional", 4, 1), ValueError, "1"),
    (("causal", 3.0), TypeError, ""), (("prefix", 4, 2.0), TypeError, ""),
])
def test_attention_mask_for_rejects_bad_arguments(impl, args, error, named):
    try:
        got = impl.attention_mask_for(*args)
    except error as err_:
        err = err_
    else:
        why = ("t and prefix_len are integers: operator.index() accepts 3 and rejects 3.0 (int(3.0) would accept "
               "it silently, and int(3.5) would drop the .5)." if error is TypeError else
               "the docstring lists it as an error: a mask for arguments that make no sense would hide a bug.")
        raise AssertionError(f"Called attention_mask_for{args}. Returned {describe(got)}; expected a "
                             f"{error.__name__}.\nBecause {why}")
    assert named in str(err), (
        f"Called attention_mask_for{args}. The {error.__name__} says {str(err)!r}; it must name {named}.")


# --------------------------------------------------------------------------------------------------
# RMSNorm


def _assert_exact_parameters(module, expected: dict, call: str) -> None:
    shapes = {name: tuple(p.shape) for name, p in module.named_parameters()}
    assert shapes == expected, (
        f"Called {call}. Its parameters are {shapes}; expected exactly {expected}.\nBecause the docstring fixes the "
        f"layout: missing {sorted(set(expected) - set(shapes))}, extra {sorted(set(shapes) - set(expected))} "
        "(anything extra would train too; Llama's layers have no biases).")


@st.composite
def leading_inputs(draw, last: int | None = None, scale: float = 1.0):
    """(seed, x) with 0-3 leading dims, sizes from 0, sometimes a transposed view, and rows of very different scales."""
    seed = draw(seeds)
    gen = generator(seed)
    lead = tuple(draw(st.lists(st.integers(0, 4), max_size=3)))
    D = last if last is not None else draw(st.integers(1, 9))
    if lead and draw(st.booleans()):
        x = randn(gen, D, *lead, scale=scale).movedim(0, -1)  # non-contiguous
    else:
        x = randn(gen, *lead, D, scale=scale)
    if x.numel() and draw(st.booleans()):  # one row huge, one tiny: the normalisation is per row
        flat = x.reshape(-1, D)
        rows = torch.ones(flat.shape[0], 1, dtype=DT)
        rows[0] = 1e4
        rows[-1] = 1e-4
        x = (flat * rows).reshape(x.shape)
    return seed, x


@pytest.mark.exercise("RMSNorm")
@given(case=leading_inputs(), eps=st.sampled_from([None, 1e-6, 1e-2, 0.5]))
@example(case=(0, randn(generator(0), 4, 16)), eps=None)  # 64 values: float32 arithmetic shows at float64 tolerance
def test_rmsnorm_equals_torch(impl, case, eps):
    seed, x = case
    D = x.shape[-1]
    kwargs = {} if eps is None else {"eps": eps}
    mine = impl.RMSNorm(D, **kwargs).to(DT)
    theirs = torch.nn.RMSNorm(D, eps=1e-6 if eps is None else eps, dtype=DT)
    with torch.no_grad():
        w = randn(generator(seed + 1), D) + 1.0
        theirs.weight.copy_(w)
        _weight_of(mine, D, "RMSNorm").copy_(w)
    pristine = x.clone()
    got = mine(x)
    expected = theirs(x)
    call = f"RMSNorm({D}{', eps=' + repr(eps) if eps is not None else ''})({describe(x)})"
    assert torch.equal(x, pristine), f"Called {call}. It modified x in place."
    if error_report(got.detach(), expected.detach(), **TIGHT) is not None:
        def rerun(cls):
            m = cls(D, **kwargs).to(DT)
            with torch.no_grad():
                m.weight.copy_(w)
            return m(pristine.clone()).detach()
        cause = likely_cause(KATA, "RMSNorm", rerun, got.detach(), **TIGHT)
        assert_close(got.detach(), expected.detach(), call=call, cause=cause, **TIGHT,
                     because="y = x / sqrt(mean(x^2 over the last axis) + eps) * weight, as torch.nn.RMSNorm "
                             "(default eps 1e-6 here).")


def _weight_of(module, D, owner):
    weight = getattr(module, "weight", None)
    assert isinstance(weight, torch.nn.Parameter) and tuple(weight.shape) == (D,), (
        f"{owner}({D}) must have a Parameter `weight` of shape ({D},); found {weight!r}.")
    return weight


@pytest.mark.exercise("RMSNorm")
def test_rmsnorm_layout_and_defaults(impl):
    norm = impl.RMSNorm(7)
    _assert_exact_parameters(norm, {"weight": (7,)}, "RMSNorm(7)")
    if not torch.equal(norm.weight.detach(), torch.ones(7)):
        raise AssertionError(
            f"Called RMSNorm(7). Its weight starts as {norm.weight.detach().tolist()}; expected ones.\nBecause y = x / "
            "rms(x) * weight, and a new norm must leave x / rms(x) as it is (Gemma's zeros go with 1 + weight).")
    eps = getattr(norm, "eps", "<no attribute eps>")
    assert eps == 1e-6, (
        f"Called RMSNorm(7). Its eps is {eps!r}; expected self.eps = 1e-6, Llama's default (the docstring names the "
        "attribute eps; Hugging Face's LlamaRMSNorm calls it variance_epsilon).")
    eps = getattr(impl.RMSNorm(7, eps=0.25), "eps", "<no attribute eps>")
    assert eps == 0.25, f"Called RMSNorm(7, eps=0.25). Its eps is {eps!r}; expected 0.25."
    x = torch.zeros(2, 7, dtype=torch.float32)
    out = norm(x)
    assert out.dtype == torch.float32 and torch.equal(out, x), (
        f"Called RMSNorm(7)(zeros(2, 7)). Returned {describe(out)}; expected zeros in float32 (eps keeps 0/0 away).")
    bf = impl.RMSNorm(7).to(torch.bfloat16)(torch.ones(3, 7, dtype=torch.bfloat16))
    assert bf.dtype == torch.bfloat16, f"A bfloat16 RMSNorm on bfloat16 input returned {bf.dtype}."


# --------------------------------------------------------------------------------------------------
# apply_rotary


def _own_rotary(x: torch.Tensor, positions: torch.Tensor, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of the angles (float64), in the (T, D) layout of Hugging Face's rotary embedding."""
    D = x.shape[-1]
    inv = base ** (-torch.arange(0, D, 2, dtype=torch.float64) / D)
    angles = positions.to(torch.float64)[..., None] * inv
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


@functools.cache
def _llama_rotary():
    from transformers.models.llama import modeling_llama

    return modeling_llama


@pytest.mark.exercise("apply_rotary")
@settings(max_examples=20)
@given(seed=seeds, B=st.integers(1, 2), H=st.integers(1, 3), T=st.integers(0, 6), half=st.integers(1, 4),
       offset=st.sampled_from([0, 5, 4096]), base=st.sampled_from([None, 10000.0, 500000.0, 7.0]),
       transposed=st.booleans())
@example(seed=0, B=2, H=2, T=3, half=2, offset=5, base=None, transposed=False)  # positions of shape (B, 1, T)
@example(seed=1, B=2, H=3, T=4, half=2, offset=0, base=None, transposed=True)  # (B, T, H, D).transpose(1, 2)
def test_rotary_equals_llama_rotate_half(impl, seed, B, H, T, half, offset, base, transposed):
    gen = generator(seed)
    # queries are usually a transposed view: q_proj(x).view(B, T, H, hd).transpose(1, 2) is not contiguous
    x = randn(gen, B, T, H, 2 * half).transpose(1, 2) if transposed else randn(gen, B, H, T, 2 * half)
    positions = torch.arange(T) + offset
    if B == 2 and offset == 5:  # per-sequence offsets, (B, 1, T): broadcast over the heads
        positions = torch.stack([positions, positions + 11])[:, None, :]
    kwargs = {} if base is None else {"base": base}
    cos, sin = _own_rotary(x, positions, 10000.0 if base is None else base)
    if positions.dim() == 1:
        cos, sin = cos[None], sin[None]  # (1, T, D); the helper adds the head axis
    else:
        cos, sin = cos[:, 0], sin[:, 0]  # (B, T, D)
    expected, _ = _llama_rotary().apply_rotary_pos_emb(x, x, cos, sin)  # (B, H, T, D)
    pristine, pos_pristine = x.clone(), positions.clone()
    got = impl.apply_rotary(x, positions, **kwargs)
    call = format_call("apply_rotary", (x, positions), kwargs)
    assert torch.equal(x, pristine) and torch.equal(positions, pos_pristine), f"Called {call}. It modified its inputs."
    if error_report(got, expected, **TIGHT) is not None:
        cause = likely_cause(KATA, "apply_rotary", lambda f: f(pristine.clone(), pos_pristine.clone(), **kwargs), got,
                             **TIGHT)
        assert_close(got, expected, call=call, cause=cause, **TIGHT,
                     because="Llama pairs feature i with i + D/2 (rotate_half) and rotates pair i by position * "
                             "base^(-2i/D); compare with transformers' apply_rotary_pos_emb on float64 angles.")


@pytest.mark.exercise("apply_rotary")
def test_rotary_float32_input_keeps_float64_angles(impl):
    """float32 queries at positions near 100,000: the angles are still computed in float64 and only cos and sin are
    cast. Angles computed in x's dtype are off by ~1e-3 rad there, while rounding the result to float32 costs ~1e-7."""
    x = randn(generator(7), 1, 2, 4, 8)
    positions = torch.arange(4) + 100_000
    cos, sin = _own_rotary(x, positions, 10000.0)
    expected, _ = _llama_rotary().apply_rotary_pos_emb(x, x, cos[None], sin[None])
    x32 = x.float()
    got = impl.apply_rotary(x32, positions)
    call = "apply_rotary(x (1, 2, 4, 8) float32, arange(4) + 100000)"
    assert isinstance(got, torch.Tensor) and got.dtype == torch.float32, (
        f"Called {call}. Returned {describe(got)}; expected float32, x's dtype.")
    if error_report(got, expected.float(), rtol=1e-5, atol=1e-5) is not None:
        cause = likely_cause(KATA, "apply_rotary", lambda f: f(x32.clone(), positions.clone()), got, rtol=1e-6,
                             atol=1e-6)
        assert_close(got, expected.float(), call=call, cause=cause, rtol=1e-5, atol=1e-5,
                     because="the angles are computed in float64 whatever x's dtype (float32 tolerance here): a "
                             "float32 angle near position 100,000 is off by ~1e-3 rad. Cast only cos and sin to x's "
                             "dtype.")


@pytest.mark.exercise("apply_rotary")
def test_rotary_frequencies_match_llama_rotary_embedding(impl):
    """The ``base`` is Llama's rope_theta: LlamaRotaryEmbedding's own (float32) cos/sin give the same rotation."""
    ml = _llama_rotary()
    from transformers.models.llama.configuration_llama import LlamaConfig

    config = LlamaConfig(hidden_size=16, num_attention_heads=2, num_key_value_heads=2, head_dim=8,
                         rope_parameters={"rope_type": "default", "rope_theta": 500.0})
    rotary = ml.LlamaRotaryEmbedding(config)
    x = randn(generator(3), 1, 2, 6, 8)
    positions = torch.arange(6)[None]
    cos, sin = rotary(x.float(), positions)
    expected, _ = ml.apply_rotary_pos_emb(x, x, cos.double(), sin.double())
    got = impl.apply_rotary(x, positions[0], base=500.0)
    assert_close(got, expected, call="apply_rotary(x (1, 2, 6, 8), arange(6), base=500.0)",
                 because="it must match LlamaRotaryEmbedding with rope_theta=500 (which computes in float32, hence "
                         "the float32 tolerance).", rtol=1e-5, atol=1e-5)


@pytest.mark.exercise("apply_rotary")
@given(seed=seeds, m=st.integers(0, 50), n=st.integers(0, 50), shift=st.integers(-20, 1000), half=st.integers(1, 5))
def test_rotary_scores_depend_only_on_the_distance(impl, seed, m, n, shift, half):
    gen = generator(seed)
    q, k = randn(gen, 1, 2 * half), randn(gen, 1, 2 * half)
    shift = max(shift, -min(m, n))

    def score(a, b):
        return (impl.apply_rotary(q, torch.tensor([a])) * impl.apply_rotary(k, torch.tensor([b]))).sum().item()

    s1, s2 = score(m, n), score(m + shift, n + shift)
    norm = impl.apply_rotary(q, torch.tensor([m])).norm().item()
    assert abs(s1 - s2) <= 1e-9 * (1 + abs(s1)) and abs(norm - q.norm().item()) <= 1e-9 * q.norm().item(), (
        f"q.k after apply_rotary at positions ({m}, {n}) is {s1!r}, at ({m + shift}, {n + shift}) {s2!r}; rotated |q| "
        f"is {norm!r}, |q| {q.norm().item()!r}.\nBecause RoPE rotates pairs (it keeps lengths), so the score depends "
        "only on the distance m - n.")


@pytest.mark.exercise("apply_rotary")
def test_rotary_dtype_device_and_odd_size(impl):
    for dtype in (torch.float32, torch.bfloat16, torch.float64):
        out = impl.apply_rotary(torch.ones(2, 3, 4, dtype=dtype), torch.arange(3))
        assert out.dtype == dtype and out.shape == (2, 3, 4), f"apply_rotary on {dtype} input returned {describe(out)}."
    out = impl.apply_rotary(torch.ones(2, 3, 4, device="meta"), torch.arange(3, device="meta"))
    assert out.device.type == "meta" and out.shape == (2, 3, 4), (
        f"apply_rotary on meta tensors returned {describe(out)} on {out.device}; the angles must be made on x's "
        "device.")
    big = impl.apply_rotary(torch.ones(1, 4, dtype=torch.float64), torch.tensor([100_000]))
    cos, sin = _own_rotary(big, torch.tensor([100_000]), 10000.0)
    want = torch.ones(1, 4, dtype=DT) * cos + torch.tensor([[-1.0, -1.0, 1.0, 1.0]], dtype=DT) * sin
    assert_close(big, want, call="apply_rotary(ones(1, 4) float64, tensor([100000]))",
                 because="the angles are computed in float64 (a float32 angle at 1e5 is off by ~4e-3 rad).", **TIGHT)
    with pytest.raises(ValueError) as err:
        impl.apply_rotary(torch.ones(2, 5), torch.arange(2))
    assert "5" in str(err.value), f"apply_rotary with D=5 raised {str(err.value)!r}; it must name D=5."


# --------------------------------------------------------------------------------------------------
# SwiGLU


@pytest.mark.exercise("SwiGLU")
@settings(max_examples=10)
@given(seed=seeds, dim=st.integers(1, 8), hidden=st.integers(1, 12), lead=st.lists(st.integers(1, 3), max_size=2))
def test_swiglu_equals_llama_mlp(impl, seed, dim, hidden, lead):
    ml = _llama_rotary()
    from transformers.models.llama.configuration_llama import LlamaConfig

    theirs = ml.LlamaMLP(LlamaConfig(hidden_size=dim, intermediate_size=hidden, num_attention_heads=1, head_dim=2,
                                     num_key_value_heads=1)).to(DT)
    gen = generator(seed)
    with torch.no_grad():
        for p in theirs.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=DT))
    mine = impl.SwiGLU(dim, hidden).to(DT)
    _assert_exact_parameters(mine, {"gate_proj.weight": (hidden, dim), "up_proj.weight": (hidden, dim),
                                    "down_proj.weight": (dim, hidden)}, f"SwiGLU({dim}, {hidden})")
    mine.load_state_dict(theirs.state_dict())
    x = randn(gen, *lead, dim, scale=2.0)
    pristine = x.clone()
    got, expected = mine(x).detach(), theirs(x).detach()
    call = f"SwiGLU({dim}, {hidden})({describe(x)}) with LlamaMLP's weights"
    assert torch.equal(x, pristine), f"Called {call}. It modified x in place."
    if error_report(got, expected, **TIGHT) is not None:
        def rerun(cls):
            m = cls(dim, hidden).to(DT)
            m.load_state_dict(theirs.state_dict())
            return m(pristine.clone()).detach()
        cause = likely_cause(KATA, "SwiGLU", rerun, got, **TIGHT)
        assert_close(got, expected, call=call, cause=cause, **TIGHT,
                     because="Llama's MLP is down_proj(silu(gate_proj(x)) * up_proj(x)).")


# --------------------------------------------------------------------------------------------------
# GroupedQueryAttention


@pytest.mark.exercise("GroupedQueryAttention")
@settings(max_examples=15)
@given(seed=seeds, kv=st.integers(1, 3), group=st.integers(1, 3), hd=st.integers(1, 4), B=st.integers(1, 2),
       T=st.integers(1, 6))
def test_gqa_equals_attention_with_shared_kv_heads(impl, seed, kv, group, hd, B, T):
    H = kv * group
    E = H * hd
    attn = impl.GroupedQueryAttention(E, H, kv).to(DT)
    _assert_exact_parameters(attn, {"q_proj.weight": (E, E), "k_proj.weight": (kv * hd, E),
                                    "v_proj.weight": (kv * hd, E), "o_proj.weight": (E, E)},
                             f"GroupedQueryAttention({E}, {H}, {kv})")
    gen = generator(seed)
    state = {name: randn(gen, *p.shape) for name, p in attn.named_parameters()}
    attn.load_state_dict(state)
    x = randn(gen, B, T, E, scale=1.5)
    pristine = x.clone()
    got = attn(x).detach()
    # the oracle: torch's SDPA, whose enable_gqa shares kv head j with query heads j * group .. (j + 1) * group - 1
    q = (x @ state["q_proj.weight"].T).view(B, T, H, hd).transpose(1, 2)
    k = (x @ state["k_proj.weight"].T).view(B, T, kv, hd).transpose(1, 2)
    v = (x @ state["v_proj.weight"].T).view(B, T, kv, hd).transpose(1, 2)
    y = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    expected = y.transpose(1, 2).reshape(B, T, E) @ state["o_proj.weight"].T
    call = f"GroupedQueryAttention(embed_dim={E}, num_heads={H}, num_kv_heads={kv})({describe(x)})"
    assert torch.equal(x, pristine), f"Called {call}. It modified x in place."
    if error_report(got, expected, **TIGHT) is not None:
        def rerun(cls):
            m = cls(E, H, kv).to(DT)
            m.load_state_dict(state)
            return m(pristine.clone()).detach()
        cause = likely_cause(KATA, "GroupedQueryAttention", rerun, got, **TIGHT)
        assert_close(got, expected, call=call, cause=cause, **TIGHT,
                     because="query head h uses kv head h // (num_heads // num_kv_heads), causally, scaled by "
                             "1/sqrt(head_dim): F.scaled_dot_product_attention(..., is_causal=True, enable_gqa=True).")


@pytest.mark.exercise("GroupedQueryAttention")
@pytest.mark.parametrize(("args", "named"), [((10, 4, 2), ("10", "4")), ((12, 6, 4), ("6", "4"))])
def test_gqa_rejects_sizes_that_do_not_divide(impl, args, named):
    with pytest.raises(ValueError) as err:
        impl.GroupedQueryAttention(*args)
    assert all(n in str(err.value) for n in named), (
        f"Called GroupedQueryAttention{args}. The ValueError says {str(err.value)!r}; it must name "
        f"{' and '.join(named)}.")


@pytest.mark.exercise("GroupedQueryAttention")
def test_gqa_on_the_meta_device(impl):
    attn = impl.GroupedQueryAttention(8, 4, 2).to("meta")
    out = attn(torch.ones(2, 3, 8, device="meta"))
    assert out.device.type == "meta" and out.shape == (2, 3, 8), (
        f"GroupedQueryAttention on meta returned {describe(out)} on {out.device}; the causal mask must be made on "
        "x's device.")


# --------------------------------------------------------------------------------------------------
# chinchilla_optimal, fit_power_law, plot_scaling


@pytest.mark.exercise("chinchilla_optimal")
@given(exponent=st.floats(10, 30), mantissa=st.floats(1, 9.99))
def test_chinchilla_spends_the_budget_with_20_tokens_per_parameter(impl, exponent, mantissa):
    C = mantissa * 10**exponent
    got = impl.chinchilla_optimal(C)
    call = f"chinchilla_optimal({C!r})"
    assert isinstance(got, tuple) and len(got) == 2 and all(isinstance(v, float) for v in got), (
        f"Called {call}. Returned {got!r}; expected a tuple of two floats (n_params, n_tokens).\nBecause the "
        "docstring promises floats: round() or int() would also lose the answer for small budgets.")
    N, D = got
    if not (math.isclose(6 * N * D, C, rel_tol=1e-12) and math.isclose(D, 20 * N, rel_tol=1e-12)):
        cause = likely_cause(KATA, "chinchilla_optimal", lambda f: f(C), matches=lambda r: r == got)
        raise AssertionError(
            f"Called {call}. Returned N={N:.6g}, D={D:.6g}: 6 N D = {6 * N * D:.6g} and D / N = {D / N:.6g}; expected "
            f"6 N D = C = {C:.6g} and D / N = 20.\nBecause training costs C = 6 N D FLOPs and Chinchilla's optimum "
            "is D = 20 N, so N = sqrt(C / 120)." + (f"\nLikely cause: {cause}" if cause else ""))


@pytest.mark.exercise("chinchilla_optimal")
@pytest.mark.parametrize("C", [1e-3, 1.0, 120.0, 6e23])
def test_chinchilla_known_values(impl, C):
    N, D = impl.chinchilla_optimal(C)
    want = math.sqrt(C / 120)
    assert math.isclose(N, want, rel_tol=1e-12) and math.isclose(D, 20 * want, rel_tol=1e-12), (
        f"Called chinchilla_optimal({C!r}). Returned ({N!r}, {D!r}); expected ({want!r}, {20 * want!r}).\n"
        "Because every "
        "positive budget is legal, even a tiny one, and N = sqrt(C / 120), D = 20 N.")


@pytest.mark.exercise("chinchilla_optimal")
@pytest.mark.parametrize("bad", [0.0, -1e20, float("inf"), float("nan")])
def test_chinchilla_rejects_a_budget_that_is_not_positive(impl, bad):
    with pytest.raises(ValueError) as err:
        impl.chinchilla_optimal(bad)
    assert _names(str(err.value), bad), (
        f"Called chinchilla_optimal({bad!r}). The ValueError says {str(err.value)!r}; it must name {bad!r}.")


@pytest.mark.exercise("fit_power_law")
@given(a=st.floats(1e-3, 1e3), b=st.floats(-3, 3), n=st.integers(2, 12), log_lo=st.floats(-3, 3),
       span=st.floats(0.5, 8), kind=st.sampled_from(["list", "array"]))
def test_power_law_recovered_exactly_without_noise(impl, a, b, n, log_lo, span, kind):
    import numpy as np

    x = np.logspace(log_lo, log_lo + span, n)
    y = a * x**b
    xs, ys = (x.tolist(), y.tolist()) if kind == "list" else (x.copy(), y.copy())
    got = impl.fit_power_law(xs, ys)
    call = f"fit_power_law(x={n} points from 1e{log_lo:.3g} to 1e{log_lo + span:.3g}, y={a!r} * x**{b!r})"
    assert isinstance(got, tuple) and len(got) == 2 and all(type(v) is float for v in got), (
        f"Called {call}. Returned {got!r}; expected a tuple of two Python floats (a, b).")
    if kind == "array":
        assert np.array_equal(xs, x) and np.array_equal(ys, y), f"Called {call}. It modified its inputs."
    if not (math.isclose(got[0], a, rel_tol=1e-8) and math.isclose(got[1], b, rel_tol=1e-8, abs_tol=1e-10)):
        cause = likely_cause(KATA, "fit_power_law", lambda f: f(x.copy(), y.copy()),
                             matches=lambda r: np.allclose(r, got, rtol=1e-9, atol=0))
        raise AssertionError(f"Called {call}. Returned (a, b) = {got!r}; expected ({a!r}, {b!r}).\nBecause y = a x^b "
                             "is the line log y = log a + b log x, which least squares on the logs recovers exactly."
                             + (f"\nLikely cause: {cause}" if cause else ""))


@pytest.mark.exercise("fit_power_law")
@given(seed=seeds, n=st.integers(3, 20))
def test_power_law_with_noise_equals_least_squares_on_logs(impl, seed, n):
    import numpy as np

    rng = np.random.default_rng(seed)
    x = rng.uniform(1e3, 1e9, n)  # in no particular order: each y belongs to its own x
    y = 50.0 * x**-0.3 * np.exp(rng.normal(0, 0.2, n))  # multiplicative noise, as in measured losses
    b, log_a = np.polyfit(np.log(x), np.log(y), 1)  # the oracle
    got = impl.fit_power_law(x, y)
    assert np.allclose(got, (np.exp(log_a), b), rtol=1e-8, atol=0), (
        f"Called fit_power_law on {n} noisy points. Returned {got!r}; least squares on (log x, log y) gives "
        f"({np.exp(log_a)!r}, {b!r}).")


@pytest.mark.exercise("fit_power_law")
def test_power_law_with_repeated_x(impl):
    """Several runs per model size (seeds) repeat x values: legal, as long as at least two x values differ."""
    import numpy as np

    x = [1e6, 1e6, 1e7, 1e7, 1e7, 1e8]
    y = [4.1, 4.3, 3.4, 3.6, 3.5, 3.0]
    b, log_a = np.polyfit(np.log(x), np.log(y), 1)
    try:
        got = impl.fit_power_law(x, y)
    except ValueError as err:
        raise AssertionError(
            f"Called fit_power_law({x}, {y}). It raised ValueError: {err}\nexpected the least-squares fit "
            f"({np.exp(log_a)!r}, {b!r}).\nBecause repeated x values (several runs of one model size) are legal; only "
            "data with a single distinct x has no slope.") from None
    assert np.allclose(got, (np.exp(log_a), b), rtol=1e-10, atol=0), (
        f"Called fit_power_law({x}, {y}). Returned {got!r}; least squares on (log x, log y) gives "
        f"({np.exp(log_a)!r}, {b!r}).")


@pytest.mark.exercise("fit_power_law")
def test_power_law_of_float32_data_is_fitted_in_float64(impl):
    import numpy as np

    x = np.geomspace(1e3, 1e9, 9).astype(np.float32)
    y = (7.0 * x.astype(np.float64) ** -0.37).astype(np.float32)
    b, log_a = np.polyfit(np.log(x.astype(np.float64)), np.log(y.astype(np.float64)), 1)
    got = impl.fit_power_law(x, y)
    assert np.allclose(got, (np.exp(log_a), b), rtol=1e-10, atol=0), (
        f"Called fit_power_law on float32 arrays. Returned {got!r}; the float64 fit of the same values is "
        f"({np.exp(log_a)!r}, {b!r}).\nBecause the fit runs in float64 whatever the input dtype.")


@pytest.mark.exercise("fit_power_law")
@pytest.mark.parametrize(("x", "y"), [
    ([1.0, 2.0, 3.0], [1.0, -2.0, 3.0]), ([0.0, 2.0], [1.0, 2.0]), ([1.0, 2.0], [0.0, 1.0]),
    ([1.0, 2.0], [1.0, 2.0, 3.0]), ([1.0, 2.0, 3.0], [2.0]), ([1.0], [1.0]),
    ([[1.0, 2.0], [3.0, 4.0]], [[1.0, 2.0], [3.0, 4.0]]),
    ([2.0, 2.0, 2.0], [1.0, 2.0, 3.0]), ([1.0, float("inf")], [1.0, 2.0]), ([1.0, 2.0], [1.0, float("nan")]),
])
def test_power_law_rejects_bad_data(impl, x, y):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a wrong answer may take log(0) on its way
        with pytest.raises(ValueError):
            impl.fit_power_law(x, y)


@pytest.mark.exercise("fit_power_law")
@pytest.mark.parametrize("with_fit", [False, True])
def test_plot_scaling_shows_measurements_on_log_axes(impl, with_fit):
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.figure import Figure

    x = [1e7, 1e6, 1e9, 1e8]  # in no particular order: the runs as they were made
    y = [3.9, 5.0, 2.7, 3.3]  # a loss: not the rank 0, 1, 2, 3 the learning path plotted
    xs, ys = list(x), list(y)
    fit = (20.0, -0.1) if with_fit else None
    before = plt.get_fignums()
    fig = impl.plot_scaling(xs, ys, fit=fit) if with_fit else impl.plot_scaling(xs, ys)
    call = f"plot_scaling({x}, {y}{', fit=' + repr(fit) if with_fit else ''})"
    left = [n for n in plt.get_fignums() if n not in before]
    for n in left:
        plt.close(n)
    assert not left, (
        f"Called {call}. It left {len(left)} figure(s) open in pyplot; expected none.\nBecause the figure is built "
        "with matplotlib.figure.Figure(), not plt.figure() or plt.subplots(): pyplot keeps every figure it makes "
        "until plt.close, and may open a window.")
    assert xs == x and ys == y, (
        f"Called {call}. Afterwards the caller's lists are x={xs}, y={ys}; expected them unchanged (sort a copy).")
    assert isinstance(fig, Figure) and len(fig.axes) == 1, (
        f"Called {call}. Returned {fig!r}; expected a Figure with one axes.")
    ax = fig.axes[0]
    assert (ax.get_xscale(), ax.get_yscale()) == ("log", "log"), (
        f"Called {call}. The axes scales are {ax.get_xscale()!r}, {ax.get_yscale()!r}; expected 'log', 'log'.\n"
        "Because a power law is a straight line only on log-log axes.")
    lines = ax.get_lines()
    markers = bool(lines) and lines[0].get_linestyle() in ("None", "", " ") and lines[0].get_marker() not in (
        "None", "", " ", None)
    drawn = sorted(zip(np.asarray(lines[0].get_xdata(), float).tolist(),
                       np.asarray(lines[0].get_ydata(), float).tolist(), strict=False)) if lines else []
    same = len(drawn) == len(x) and np.allclose(drawn, sorted(zip(x, y, strict=True)))  # any order: a sorted copy
    assert markers and same, (
        f"Called {call}. The first line holds x={list(lines[0].get_xdata()) if lines else None}, "
        f"y={list(lines[0].get_ydata()) if lines else None}; expected the measurements {x}, {y}, drawn as markers "
        "without a joining line.\nBecause the learning "
        "path's plot drew each model's rank (0, 1, 2, ...) as 'quality': a line by construction, not a measurement."
        + (f"\nLikely cause: {c}" if (c := likely_cause(KATA, "plot_scaling", lambda f: f(list(x), list(y), fit=fit),
                                                          matches=lambda g: _same_first_line(g, lines))) else ""))
    if with_fit:
        assert len(lines) >= 2, f"Called {call}. Only {len(lines)} line(s); expected a second one for the fit."
        fx, fy = np.asarray(lines[1].get_xdata(), float), np.asarray(lines[1].get_ydata(), float)
        inside = fx.size >= 2 and fx.min() >= 1e6 * (1 - 1e-9) and fx.max() <= 1e9 * (1 + 1e-9)
        assert inside and np.allclose(fy, 20.0 * fx**-0.1), (
            f"Called {call}. The second line is x={fx.tolist()}, y={fy.tolist()}; expected points of 20 x^-0.1 within "
            "the range of x.")
    else:
        assert len(lines) == 1, (
            f"Called {call} without fit. It drew {len(lines)} lines; expected the measurements only.")


def _same_first_line(fig, lines) -> bool:
    import numpy as np

    theirs = fig.axes[0].get_lines()
    return bool(theirs) and bool(lines) and np.array_equal(theirs[0].get_ydata(), lines[0].get_ydata())


# --------------------------------------------------------------------------------------------------
# devices: what the meta device cannot show


@pytest.mark.gpu
@pytest.mark.exercise("GPT2")
def test_gpt2_runs_on_cuda(impl):
    """Meta tensors accept CPU indices, so a position tensor made on the CPU only shows on a real device."""
    hf = _standard_hf(seed=3)
    model = _loaded(impl, hf).to("cuda")
    ids = _ids(0, 2, 7, hf.config.vocab_size)
    got = model(ids.to("cuda"))
    assert got.device.type == "cuda", f"A GPT2 on cuda returned logits on {got.device}."
    with torch.no_grad():
        assert_close(got.detach().cpu(), hf(ids).logits, call="GPT2 on cuda", because="the device must not change "
                     "the result.", rtol=1e-7, atol=1e-9)


@pytest.mark.gpu
@pytest.mark.exercise("mlm_mask")
def test_mlm_mask_runs_on_cuda(impl):
    ids = torch.randint(2, 30, (4, 16), generator=generator(0)).to("cuda")
    out, labels = impl.mlm_mask(ids, 1, 30, [0], prob=0.5, generator=torch.Generator("cuda").manual_seed(0))
    assert out.device == ids.device and labels.device == ids.device, (
        f"mlm_mask on cuda ids returned tensors on {out.device} and {labels.device}; expected cuda.")


@pytest.mark.gpu
@pytest.mark.exercise("span_corruption")
def test_span_corruption_runs_on_cuda(impl):
    """The meta device cannot hold the token values this function reads, so only a real device shows where the
    results are made."""
    tokens = torch.arange(100, 130, device="cuda")
    inputs, targets = impl.span_corruption(tokens, 0.3, 2.0, list(range(10)), torch.Generator().manual_seed(0))
    assert inputs.device == tokens.device and targets.device == tokens.device, (
        f"span_corruption on cuda tokens returned tensors on {inputs.device} and {targets.device}; expected cuda, "
        "the device of tokens.")


@pytest.mark.gpu
@pytest.mark.exercise("apply_rotary")
def test_rotary_runs_on_cuda(impl):
    x = randn(generator(0), 1, 2, 5, 8)
    positions = torch.arange(5) + 3
    got = impl.apply_rotary(x.to("cuda"), positions.to("cuda"))
    assert got.device.type == "cuda", f"apply_rotary on cuda returned a tensor on {got.device}."
    assert_close(got.cpu(), impl.apply_rotary(x, positions), call="apply_rotary on cuda", because="the device "
                 "must not change the result.", rtol=1e-12, atol=1e-12)


@pytest.mark.gpu
@pytest.mark.exercise("GroupedQueryAttention")
def test_gqa_runs_on_cuda(impl):
    attn = impl.GroupedQueryAttention(8, 4, 2).to(device="cuda", dtype=DT)
    out = attn(randn(generator(0), 2, 3, 8).to("cuda"))
    assert out.device.type == "cuda" and out.shape == (2, 3, 8), (
        f"GQA on cuda returned {describe(out)} on {out.device}.")
