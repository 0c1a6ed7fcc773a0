"""Checks for w15_mini_gpt: a causal MiniGPT, batches, the optimizer, sampling, a KV cache and training.

Models here are tiny (vocab 20, embed 32, 2 layers) and run in float64 so that "equal" can mean equal to 1e-9:
greedy decoding then never flips on a rounding tie. Models used as fixtures for the sampling, cache and
training exercises are built from the *reference* MiniGPT, so those exercises do not depend on your model.
Every random tensor comes from a drawn seed; code that must draw from the global RNG (module init, dropout)
runs inside ``seeded``, which restores the global state afterwards.

Checklist notes (where an item of CONTRACTS.md does not apply, and why):

- MiniGPT: an empty batch or an empty sequence is not promised by the docstring, so no size-0 check; the
  forward reads the ids' values (range check), so it cannot run on the meta device: the documented defaults
  are checked on a CPU model instead. Only integer ids are legal (int32 and int64 are both checked). Ids are
  categorical, so "extreme values" means the vocabulary's ends (0 and V - 1 are legal, -1 and V are not);
  the comparisons run on sharpened float64 weights, whose logits are far from uniform.
- get_batch: bools and floats for the sizes are not documented as errors, so they are not checked.
- configure_optimizer: no randomness, no numerics at scale (it only sorts parameters), nothing to cache.
- generate / generate_cached: the model is any module, so device placement is the model's; the new tokens
  follow ``idx``'s device, checked on the meta device for the cache. Ties between logits are not specified
  for top-k, so the checks use distinct logits there; top-p's boundary is checked where it is exact
  (probabilities that are powers of two).
- KVCache: the buffers' attribute names are not part of the contract (a list of chunks is a correct cache),
  so preallocation is not observed; only what ``update``, ``len`` and ``reset`` return.
- train_mini_gpt: numerics at scale do not apply (the losses of tiny models are O(1)); the device rule is
  observed with a model whose parameters live on the meta device (the first batch must arrive there).
"""

from __future__ import annotations

import copy
import math
import re
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from checks.numerics import assert_close, error_report, format_call, likely_cause
from checks.torch_strategies import generator, seeded, seeds

pytestmark = pytest.mark.kata("w15_mini_gpt")

KATA = "w15_mini_gpt"
TINY = {"vocab_size": 20, "embed_dim": 32, "num_heads": 4, "num_layers": 2, "ff_dim": 64, "max_len": 16, "dropout": 0.0}
TEXT = "the quick brown fox jumps over the lazy dog. "
HISTORY_KEYS = {"train_loss", "lr", "grad_norm", "val_loss", "val_step"}


# ---------------------------------------------------------------------------------------------------------
# helpers (private to this file)
# ---------------------------------------------------------------------------------------------------------


def _build(module, seed: int, **config) -> torch.nn.Module:
    """``module.MiniGPT(**config)`` in float64 and eval mode; its init draws from an isolated, seeded RNG."""
    with seeded(seed):
        model = module.MiniGPT(**config)
    return model.double().eval()


@torch.no_grad()
def _sharpen_(model: torch.nn.Module, seed: int, std: float = 0.3) -> torch.nn.Module:
    """Refill every parameter from a seeded generator with large values, so logits are O(1) and far apart."""
    g = generator(seed)
    for name, p in sorted(model.named_parameters(), key=lambda item: item[0]):
        noise = torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype)
        if p.dim() >= 2:
            p.copy_(noise * std)
        else:  # biases and norms
            p.copy_(noise * 0.1 + (1.0 if ".ln" in f".{name}" and name.endswith("weight") else 0.0))
    return model


def _fixture_model(reference, seed: int, **overrides) -> torch.nn.Module:
    """A sharpened reference MiniGPT (float64, eval): the model the sampling and cache checks drive."""
    return _sharpen_(_build(reference, seed, **{**TINY, **overrides}), seed)


def _tokens(seed: int, shape: tuple[int, ...], vocab: int) -> torch.Tensor:
    return torch.randint(0, vocab, shape, generator=generator(seed))


def _strided(idx: torch.Tensor) -> torch.Tensor:
    """The same ids as a non-contiguous view (every other column of a wider tensor)."""
    wide = torch.zeros(idx.shape[0], 2 * idx.shape[1], dtype=idx.dtype)
    wide[:, ::2] = idx
    view = wide[:, ::2]
    assert not view.is_contiguous() or idx.shape[1] == 1
    return view


@torch.no_grad()
def _oracle_greedy(model, idx: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy decoding the slow, obvious way: crop to max_len, run the whole context, take the argmax."""
    steps = []
    for _ in range(n):
        logits = model(idx[:, -model.max_len :])[:, -1, :]
        steps.append(logits)
        idx = torch.cat([idx, logits.argmax(dim=-1, keepdim=True)], dim=1)
    return idx, (torch.stack(steps, dim=1) if steps else None)


def _param_names(model) -> set[str]:
    return {name for name, _ in model.named_parameters(remove_duplicate=False)}


def _expected_parameter_count(V, E, L, F_, max_len, tie) -> int:
    per_block = (2 * E) + (E * 3 * E + 3 * E) + (E * E + E) + (2 * E) + (E * F_ + F_) + (F_ * E + E)
    return V * E + max_len * E + L * per_block + 2 * E + (0 if tie else V * E)


def _rebuilt(reference, config: dict, state: dict, symbol: str, cls) -> torch.nn.Module:
    """The reference MiniGPT with ``cls`` in the place of ``symbol``, loaded with ``state`` (for likely causes)."""
    E, nh, ff = config["embed_dim"], config["num_heads"], config["ff_dim"]
    with seeded(0):
        model = cls(**config) if symbol == "MiniGPT" else reference.MiniGPT(**config)
        for i, block in enumerate(model.blocks):
            if symbol == "Block":
                model.blocks[i] = cls(E, nh, ff, config["dropout"])
            elif symbol == "CausalSelfAttention":
                block.attn = cls(E, nh, config["dropout"])
    model = model.double().eval()
    model.load_state_dict(state, strict=False)
    return model


def _model_cause(reference, config: dict, state: dict, idx: torch.Tensor, actual) -> str | None:
    """The catalogued mistake of the model's three classes that gives the learner's logits, if any."""
    for symbol in ("CausalSelfAttention", "Block", "MiniGPT"):

        def run(cls, symbol=symbol):
            with torch.no_grad():
                return _rebuilt(reference, config, state, symbol, cls)(idx.clone())

        cause = likely_cause(KATA, symbol, run, actual, rtol=1e-7, atol=1e-9)
        if cause:
            return cause
    return None


@st.composite
def model_configs(draw) -> dict:
    heads = draw(st.sampled_from([1, 2, 4]))
    return {
        "vocab_size": draw(st.integers(2, 24)),
        "embed_dim": heads * draw(st.sampled_from([2, 4, 8])),
        "num_heads": heads,
        "num_layers": draw(st.integers(1, 2)),
        "ff_dim": draw(st.sampled_from([8, 32, 64])),
        "max_len": draw(st.integers(4, 16)),
        "dropout": 0.0,
        "tie_weights": draw(st.booleans()),
    }


class _ConstantLM(torch.nn.Module):
    """A stand-in language model whose next-token logits are the same everywhere: sampling is all that varies."""

    def __init__(self, logits: torch.Tensor, max_len: int = 64) -> None:
        super().__init__()
        self.register_buffer("logits", logits.double())
        self.max_len = max_len
        self.vocab_size = logits.numel()
        self.grad_modes: list[bool] = []

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        if idx.shape[1] > self.max_len:
            raise ValueError(f"sequence length {idx.shape[1]} > max_len={self.max_len}")
        self.grad_modes.append(torch.is_grad_enabled())
        return self.logits.expand(idx.shape[0], idx.shape[1], -1)


class _RowLM(torch.nn.Module):
    """A stand-in language model whose next-token logits depend on the batch row only: row b reads table[b]."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("table", table.double())
        self.max_len = 10**9  # never crops: the checks here are about sampling

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.table[:, None, :].expand(idx.shape[0], idx.shape[1], -1)


class _Boom(Exception):
    """The failure the checks inject into a model (not a RuntimeError, so no stub's NotImplementedError passes)."""


class _FailingLM(_ConstantLM):
    """Raises on its ``fail_at``-th call: sampling must still restore the model's mode."""

    def __init__(self, fail_at: int) -> None:
        super().__init__(torch.zeros(5))
        self.fail_at, self.calls = fail_at, 0

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls == self.fail_at:
            raise _Boom("the model failed on purpose")
        return super().forward(idx)


@st.composite
def spread_logits(draw) -> tuple[torch.Tensor, float]:
    """Distinct logits (a shuffled ladder) and a temperature, so every kept token has probability >= ~1e-3."""
    vocab = draw(st.integers(3, 12))
    gap = draw(st.floats(0.05, 0.3))
    order = torch.randperm(vocab, generator=generator(draw(seeds)))
    temperature = draw(st.sampled_from([0.7, 1.0, 1.5, 2.0]))
    return order.double() * gap, temperature


def _sample_once(impl, logits: torch.Tensor, n: int, seed: int, temperature: float, **kwargs) -> torch.Tensor:
    """n independent next tokens from the constant model: one generate call on a batch of n one-token prompts.

    A temperature of 1.0 is not passed at all, so that the documented default is what is used.
    """
    model = _ConstantLM(logits).eval()
    if temperature != 1.0:
        kwargs["temperature"] = temperature
    out = impl.generate(model, torch.zeros(n, 1, dtype=torch.long), 1, generator=generator(seed), **kwargs)
    assert isinstance(out, torch.Tensor) and out.shape == (n, 2), (
        f"generate on a (n, 1) prompt with max_new_tokens=1 returned {getattr(out, 'shape', type(out))}, "
        f"expected a tensor of shape ({n}, 2)"
    )
    return out[:, 1]


def _check_support_and_frequencies(samples: torch.Tensor, expected: np.ndarray, call: str, because: str) -> None:
    n = samples.numel()
    support = set(np.flatnonzero(expected > 0).tolist())
    assert samples.min() >= 0 and samples.max() < expected.size, (
        f"Called {call}. Sampled token ids {samples.min().item()}..{samples.max().item()}, outside the "
        f"vocabulary 0..{expected.size - 1}."
    )
    counts = np.bincount(samples.numpy(), minlength=expected.size)
    seen = set(np.flatnonzero(counts).tolist())
    assert seen == support, (
        f"Called {call}. Sampled tokens {sorted(seen)}, expected exactly the support {sorted(support)} "
        f"(probabilities {np.round(expected, 4).tolist()}). Because {because}"
    )
    for token in support:
        mean, sd = n * expected[token], math.sqrt(n * expected[token] * (1 - expected[token]))
        assert abs(counts[token] - mean) <= 6 * sd + 5, (
            f"Called {call}. Token {token} was drawn {counts[token]} times in {n}; its renormalised probability "
            f"{expected[token]:.4f} gives {mean:.0f} +- {6 * sd:.0f}. Because {because}"
        )


def _expected_distribution(logits: torch.Tensor, temperature: float, top_k=None, top_p=None) -> np.ndarray:
    """The filtered next-token distribution, computed independently in NumPy: temperature, then top-k, then top-p."""
    z = logits.numpy() / temperature
    p = np.exp(z - z.max())
    p /= p.sum()
    order = np.argsort(-p, kind="stable")
    keep = np.zeros(p.size, bool)
    keep[order[: (top_k if top_k is not None else p.size)]] = True
    p = np.where(keep, p, 0.0)
    p /= p.sum()
    if top_p is not None:
        cumulative = np.cumsum(p[order])
        cut = int(np.searchsorted(cumulative, top_p - 1e-12)) + 1  # smallest prefix with mass >= top_p
        keep = np.zeros(p.size, bool)
        keep[order[:cut]] = True
        p = np.where(keep, p, 0.0)
        p /= p.sum()
    return p


def _rng_untouched(before: torch.Tensor, call: str) -> None:
    assert torch.equal(torch.get_rng_state(), before), (
        f"Called {call}: torch's global RNG state changed. Because with a generator given, every random draw "
        "must come from that generator and nothing else."
    )


def _run_on_meta(run, call: str, advice: str):
    """``run()`` on meta-device inputs; torch's meta errors (a tensor left on the CPU) become a failed check.

    A stub's NotImplementedError passes through, so an unwritten exercise stays todo.
    """
    try:
        return run()
    except NotImplementedError as err:
        if "meta" not in str(err):
            raise
        pytest.fail(f"Called {call}: it raised {err!r}. {advice}")
    except (RuntimeError, TypeError, ValueError) as err:
        pytest.fail(f"Called {call}: it raised {err!r}. {advice}")


def _text_data() -> tuple[torch.Tensor, int]:
    chars = sorted(set(TEXT))
    ids = torch.tensor([chars.index(c) for c in TEXT * 4])
    return ids, len(chars)


def _lr_schedule(steps, warmup, lr, min_lr) -> list[float]:
    out = []
    for s in range(steps):
        if s < warmup:
            out.append(lr * (s + 1) / warmup)
        else:
            progress = (s - warmup) / max(1, steps - 1 - warmup)
            out.append(min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * progress)))
    return out


# ---------------------------------------------------------------------------------------------------------
# MiniGPT
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.exercise("MiniGPT")
@settings(max_examples=15)
@given(
    config=model_configs(),
    seed=seeds,
    batch=st.integers(1, 3),
    data=st.data(),
    id_dtype=st.sampled_from([torch.int64, torch.int32]),
    strided=st.booleans(),
)
def test_minigpt_matches_the_documented_layout_and_the_reference(impl, reference, config, seed, batch, data, id_dtype,
                                                                  strided):
    ref = _sharpen_(_build(reference, seed, **config), seed)
    mine = _build(impl, seed, **config)
    call = f"MiniGPT(**{config})"
    for owner, obj, attrs in (
        (call, mine, ("vocab_size", "embed_dim", "num_heads", "num_layers", "ff_dim", "max_len")),
        (f"{call}.blocks[0].attn", mine.blocks[0].attn, ("embed_dim", "num_heads", "dropout")),
    ):
        for attr in attrs:
            expected = config["dropout"] if attr == "dropout" else config[attr]
            assert getattr(obj, attr, None) == expected, (
                f"Called {call}. {owner}.{attr} is {getattr(obj, attr, '<missing>')!r}, expected {expected!r}: the "
                "docstring lists it as an attribute (generate and generate_cached read them)."
            )
    missing, extra = _param_names(ref) - _param_names(mine), _param_names(mine) - _param_names(ref)
    assert not missing and not extra, (
        f"Called {call}. Its parameter names differ from the layout in the docstring: "
        f"missing {sorted(missing)}, unexpected {sorted(extra)}. The KV cache exercise reads these names."
    )
    shapes = {n: tuple(p.shape) for n, p in mine.named_parameters()}
    for name, p in ref.named_parameters():
        assert shapes[name] == tuple(p.shape), (
            f"Called {call}. Parameter {name} has shape {shapes[name]}, expected {tuple(p.shape)}."
        )
    mine.load_state_dict(ref.state_dict(), strict=False)
    T = data.draw(st.integers(1, config["max_len"]), label="T")
    idx = _tokens(seed, (batch, T), config["vocab_size"]).to(id_dtype)
    idx = _strided(idx) if strided else idx
    pristine = idx.clone()
    with torch.no_grad():
        actual, expected = mine(idx), ref(pristine.long())
    layout = "a non-contiguous view" if strided else "contiguous"
    call = f"{call}(idx of shape {tuple(idx.shape)}, {id_dtype}, {layout}) with the reference's weights"
    assert torch.equal(idx, pristine), f"Called {call}: it modified idx in place."
    assert isinstance(actual, torch.Tensor) and actual.shape == expected.shape, (
        f"Called {call}. Returned {getattr(actual, 'shape', type(actual))}, expected logits of shape "
        f"{tuple(expected.shape)} (B, T, V)."
    )
    wrong = error_report(actual, expected, 1e-7, 1e-9) is not None
    assert_close(
        actual,
        expected,
        call=call,
        because="with the same weights the model must compute the documented pre-norm GPT: "
        "x + attn(ln1(x)), x + mlp(ln2(x)), scaled causal attention, GELU, final LayerNorm, linear head.",
        rtol=1e-7,
        atol=1e-9,
        cause=_model_cause(reference, config, ref.state_dict(), pristine.long(), actual) if wrong else None,
    )


@pytest.mark.exercise("MiniGPT")
@settings(max_examples=20)
@given(config=model_configs(), seed=seeds, data=st.data())
def test_minigpt_is_causal(impl, config, seed, data):
    model = _sharpen_(_build(impl, seed, **config), seed)
    T = data.draw(st.integers(2, config["max_len"]), label="T")
    t = data.draw(st.integers(0, T - 2), label="t")
    idx = _tokens(seed, (2, T), config["vocab_size"])
    changed = idx.clone()
    changed[:, t + 1 :] = (idx[:, t + 1 :] + 1 + _tokens(seed + 1, (2, T - t - 1), config["vocab_size"] - 1)) % config[
        "vocab_size"
    ]
    with torch.no_grad():
        before, after = model(idx), model(changed)
    assert torch.isfinite(before).all(), (
        f"MiniGPT(**{config}) returned non-finite logits: is some row of the mask all -inf?"
    )
    assert_close(
        after[:, : t + 1],
        before[:, : t + 1],
        call=f"MiniGPT(**{config}) on two sequences that agree up to position {t} and differ after it",
        because=f"the logits at positions 0..{t} predict the next token from the past only; a model that "
        "attends to the future (no causal mask, as in the learning path's model) learns to copy the answer and "
        "generates garbage.",
        rtol=1e-7,
        atol=1e-9,
    )


@pytest.mark.exercise("MiniGPT")
@given(config=model_configs(), seed=seeds)
def test_minigpt_parameter_count_and_tied_storage(impl, config, seed):
    model = _build(impl, seed, **config)
    V, E, L, F_, T = (config[k] for k in ("vocab_size", "embed_dim", "num_layers", "ff_dim", "max_len"))
    tie = config["tie_weights"]
    expected = _expected_parameter_count(V, E, L, F_, T, tie)
    actual = sum(p.numel() for p in model.parameters())
    assert actual == expected, (
        f"Called MiniGPT(**{config}). It has {actual} parameters, expected {expected} = V*E + max_len*E + "
        f"L*(4E^2 + 2E*ff + 9E + ff) + 2E{'' if tie else ' + V*E (untied head)'}. "
        "Because the head has no bias, and a tied head shares the embedding's Parameter (counted once)."
    )
    shared = model.head.weight.data_ptr() == model.tok_emb.weight.data_ptr()
    assert shared == tie, (
        f"Called MiniGPT(**{config}). head.weight and tok_emb.weight {'share' if shared else 'do not share'} storage; "
        f"with tie_weights={tie} they {'must be one Parameter' if tie else 'must be separate Parameters'}."
    )


def _dropout_at(model, name: str, owner: str) -> torch.nn.Dropout:
    module = model.get_submodule(name) if _has_submodule(model, name) else None
    assert isinstance(module, torch.nn.Dropout), (
        f"{owner}.{name} is {type(module).__name__}, expected nn.Dropout (see the layout in the docstring)."
    )
    return module


def _has_submodule(model, name: str) -> bool:
    try:
        model.get_submodule(name)
    except AttributeError:
        return False
    return True


def _dropout_names(model) -> list[str]:
    names = ["drop"]
    for i in range(len(model.blocks)):
        names += [f"blocks.{i}.attn.resid_drop", f"blocks.{i}.mlp.3"]
    return names


@pytest.mark.exercise("MiniGPT")
def test_minigpt_defaults_and_module_structure(impl):
    with seeded(0):
        model = impl.MiniGPT(10)
        block = impl.Block(16, 2, 32)
        attention = impl.CausalSelfAttention(16, 2)
    documented = {"embed_dim": 512, "num_heads": 8, "num_layers": 6, "ff_dim": 2048, "max_len": 1024}
    sizes = {
        "embed_dim": model.tok_emb.weight.shape[1],
        "num_heads": model.blocks[0].attn.num_heads,
        "num_layers": len(model.blocks),
        "ff_dim": model.blocks[0].mlp[0].out_features,
        "max_len": model.pos_emb.weight.shape[0],
    }
    assert sizes == documented, (
        f"Called MiniGPT(10) with every other argument at its default: the model's sizes are {sizes}, expected "
        f"the documented defaults {documented}."
    )
    assert model.head.weight is model.tok_emb.weight, (
        "Called MiniGPT(10): head.weight is not tok_emb.weight. tie_weights defaults to True: the head and the "
        "token embedding are one Parameter."
    )
    for name in _dropout_names(model):
        p = _dropout_at(model, name, "MiniGPT(10)").p
        assert p == 0.1, f"Called MiniGPT(10): {name} drops with p={p}, expected the default dropout 0.1."
    for i, b in enumerate(model.blocks):
        assert b.attn.dropout == 0.1, (
            f"Called MiniGPT(10): blocks[{i}].attn.dropout is {b.attn.dropout}, expected 0.1 (every Block gets the "
            "model's dropout, and its attention uses it on the attention weights)."
        )
    mlp = list(model.blocks[0].mlp)
    kinds = [type(m).__name__ for m in mlp]
    assert kinds == ["Linear", "GELU", "Linear", "Dropout"], (
        f"Called MiniGPT(10): blocks[0].mlp holds {kinds}, expected [Linear, GELU, Linear, Dropout]."
    )
    assert mlp[1].approximate == "none", (
        f"Called MiniGPT(10): the MLP uses GELU(approximate={mlp[1].approximate!r}); the docstring asks for the "
        "exact GELU (approximate='none'), which the checks compare against."
    )
    assert _dropout_at(block, "mlp.3", "Block(16, 2, 32)").p == 0.0 and block.attn.dropout == 0.0, (
        "Called Block(16, 2, 32): its dropout defaults to 0.0 (the MLP's Dropout and the attention's dropout)."
    )
    assert attention.dropout == 0.0 and _dropout_at(attention, "resid_drop", "CausalSelfAttention(16, 2)").p == 0.0, (
        "Called CausalSelfAttention(16, 2): its dropout defaults to 0.0."
    )


@pytest.mark.exercise("MiniGPT")
@settings(max_examples=5)
@given(seed=seeds)
def test_minigpt_init_statistics(impl, seed):
    config = {"vocab_size": 64, "embed_dim": 32, "num_heads": 4, "num_layers": 4, "ff_dim": 64, "max_len": 32,
              "dropout": 0.0, "tie_weights": False}
    with seeded(seed):
        model = impl.MiniGPT(**config)
    call = f"MiniGPT(**{config}) freshly initialised"
    scaled = 0.02 / math.sqrt(2 * config["num_layers"])
    for name, p in model.named_parameters():
        w = p.detach().double()
        if name.endswith("bias") or name.split(".")[-2].startswith("ln"):  # biases and LayerNorms: exact values
            want = 1.0 if name.endswith("weight") else 0.0
            assert torch.all(w == want), (
                f"Called {call}. {name} holds values in [{w.min().item():.4g}, {w.max().item():.4g}], expected "
                f"all {want}. Because biases start at zero and LayerNorms at their defaults (gain 1, bias 0)."
            )
            continue
        n = w.numel()
        mean, std = w.mean().item(), w.std().item()
        allowed = [0.02, scaled] if name.endswith(("attn.proj.weight", "mlp.2.weight")) else [0.02]
        slack = 6 / math.sqrt(2 * n)  # 6 standard errors of a sample standard deviation
        assert abs(mean) <= 6 * max(allowed) / math.sqrt(n) and any(abs(std / s - 1) <= slack for s in allowed), (
            f"Called {call}. {name} ({n} values) has mean {mean:.5f} and std {std:.5f}, expected mean 0 and std "
            f"{' or '.join(f'{s:.5f}' for s in allowed)} (within {slack:.0%}). Because GPT-2 draws every Linear and "
            "Embedding weight from N(0, 0.02), optionally scaling the two projections that write into the residual "
            "stream by 1/sqrt(2 * num_layers) (divided, so deep stacks start calm); PyTorch's defaults differ."
        )
    idx = _tokens(seed, (4, 32), 64)
    with torch.no_grad():
        logits = model.eval()(idx[:, :-1])
    loss = F.cross_entropy(logits.reshape(-1, 64), idx[:, 1:].reshape(-1)).item()
    assert abs(loss - math.log(64)) < 0.25, (
        f"Called {call}: its loss on random tokens is {loss:.3f}, expected close to ln(64) = {math.log(64):.3f}. "
        "Because with GPT-2's N(0, 0.02) init the first predictions are nearly uniform."
    )


@pytest.mark.exercise("MiniGPT")
def test_minigpt_rejects_bad_input(impl):
    model = _build(impl, 0, **TINY)
    for bad in (20, 57, -1):
        idx = torch.tensor([[0, 2, bad]])  # a 0 next to the bad id: the message must name the bad one
        with pytest.raises(ValueError, match=rf"(?<![\d.]){bad}(?!\d)"):
            model(idx)
            pytest.fail(f"Called MiniGPT(vocab_size=20)(tensor([[0, 2, {bad}]])): no ValueError naming {bad}.")
    with pytest.raises(ValueError, match=r"17"):
        model(torch.zeros(1, 17, dtype=torch.long))
    with pytest.raises(ValueError, match=r"2\D+3\D+7"):
        model(torch.zeros(2, 3, 7, dtype=torch.long))
    for build in (lambda: impl.MiniGPT(20, embed_dim=10, num_heads=4), lambda: impl.CausalSelfAttention(10, 4)):
        with pytest.raises(ValueError) as info:
            build()
        message = str(info.value)
        assert re.search(r"\b10\b", message) and re.search(r"\b4\b", message), (
            f"embed_dim=10 with num_heads=4 raised ValueError({message!r}); it must name both numbers, 10 and 4."
        )


class _FixedMask(torch.nn.Module):
    """Dropout with a mask fixed by a seed and the input's shape: the same in any model, every call."""

    def __init__(self, p: float, seed: int) -> None:
        super().__init__()
        self.p, self.seed = p, seed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        keep = torch.rand(x.shape, generator=generator(self.seed), dtype=torch.float64) >= self.p
        return x * keep.to(x.dtype) / (1 - self.p)


@pytest.mark.exercise("MiniGPT")
@settings(max_examples=5)
@given(seed=seeds)
def test_minigpt_dropout_sits_where_the_docstring_puts_it(impl, reference, seed):
    config = {**TINY, "dropout": 0.3}
    ref = _sharpen_(_build(reference, seed, **config), seed)
    mine = _build(impl, seed, **config)
    mine.load_state_dict(ref.state_dict(), strict=False)
    idx = _tokens(seed, (2, 8), 20)
    with torch.no_grad(), seeded(seed):
        a, b = mine(idx), mine(idx)
    assert_close(a, b, call="MiniGPT(dropout=0.3) in eval mode, called twice", because="eval mode turns dropout off.")
    # Module dropouts replaced by the same fixed masks in both models; attention-weight dropout switched off.
    for model in (ref, mine):
        names = _dropout_names(model)
        for i, name in enumerate(names):
            assert _dropout_at(model, name, f"MiniGPT(**{config})").p == 0.3, (
                f"Called MiniGPT(**{config}): {name} must be nn.Dropout(0.3), the model's dropout."
            )
            model.set_submodule(name, _FixedMask(0.3, seed + i))
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):  # your own attention-weight dropout module, if any
                module.p = 0.0
        for block in model.blocks:
            block.attn.dropout = 0.0
        model.train()
    with torch.no_grad(), seeded(seed):
        actual, expected = mine(idx), ref(idx)
    assert_close(
        actual,
        expected,
        call=f"MiniGPT(**{config}) in train mode, each nn.Dropout replaced by a fixed mask",
        because="drop applies to tok_emb(idx) + pos_emb(positions), attn.resid_drop after attn.proj, and mlp[3] "
        "at the end of the MLP, exactly as in the layout of the docstring.",
        rtol=1e-7,
        atol=1e-9,
    )


@pytest.mark.exercise("MiniGPT")
@given(seed=seeds)
def test_causal_self_attention_drops_attention_weights_while_training(impl, seed):
    """With T = 1 every attention weight is 1: dropping it zeroes a head's whole output or doubles it (p = 0.5)."""
    E, nh, p = 8, 2, 0.5
    with seeded(seed):
        attn = impl.CausalSelfAttention(E, nh, dropout=p).double()
    with torch.no_grad():
        attn.qkv.weight.zero_()
        attn.qkv.weight[2 * E :] = torch.eye(E, dtype=torch.float64)  # v = x
        attn.qkv.bias.zero_()
        attn.proj.weight.copy_(torch.eye(E, dtype=torch.float64))
        attn.proj.bias.zero_()
    attn.resid_drop = torch.nn.Identity()  # only the attention-weight dropout is left
    x = 1 + torch.rand(400, 1, E, generator=generator(seed), dtype=torch.float64)
    with torch.no_grad(), seeded(seed):
        eval_out = attn.eval()(x)
        train_out = attn.train()(x)
    call = f"CausalSelfAttention({E}, {nh}, dropout={p}) on x of shape (400, 1, {E}) with v = x and proj = identity"
    assert_close(eval_out, x, call=call + " in eval mode", because="one position attends to itself with weight 1.")
    ratio = (train_out / x).view(400, nh, E // nh)
    zero, doubled = ratio.abs() < 1e-12, (ratio - 1 / (1 - p)).abs() < 1e-9
    assert torch.all(zero | doubled), (
        f"Called {call} in train mode. Output / x takes the values {sorted(set(np.round(ratio.numpy(), 4).ravel()))}; "
        f"expected only 0 and {1 / (1 - p)}: the attention weight (1 here) is dropped or scaled by 1/(1-p). Because "
        "the attention weights are dropped while training (dropout_p=self.dropout if self.training else 0.0)."
    )
    heads_dropped = int(zero.all(dim=-1).sum())
    assert torch.all(zero.all(dim=-1) | doubled.all(dim=-1)) and abs(heads_dropped - 400) <= 6 * math.sqrt(200), (
        f"Called {call} in train mode. {heads_dropped} of {400 * nh} (row, head) outputs were dropped; expected "
        f"about {400 * nh * p:.0f}, each head all or nothing. Because dropout applies to the attention weights "
        "(one per head here), not to the features."
    )


# ---------------------------------------------------------------------------------------------------------
# get_batch
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.exercise("get_batch")
@given(seed=seeds, n=st.integers(2, 60), data=st.data(), layout=st.sampled_from(["tensor", "numpy", "strided"]))
def test_get_batch_windows_are_shifted_slices_of_the_data(impl, seed, n, data, layout):
    block = data.draw(st.integers(1, n - 1), label="block_size")
    batch = data.draw(st.integers(1, 8), label="batch_size")
    tokens = torch.randperm(n, generator=generator(seed))  # distinct ids: a window's first id gives its start
    if layout == "numpy":
        source = tokens.numpy().astype(np.uint16)
    elif layout == "strided":
        source = torch.stack([tokens, tokens], dim=1).int()[:, 0]  # a non-contiguous int32 view
    else:
        source = tokens.clone()
    pristine = copy.deepcopy(source)
    x, y = impl.get_batch(source, block, batch, generator(seed))
    call = format_call("get_batch", (source, block, batch, "generator"))
    assert isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor), f"Called {call}; it must return two tensors."
    assert x.shape == y.shape == (batch, block), (
        f"Called {call}. Got shapes {tuple(x.shape)}, {tuple(y.shape)}; expected ({batch}, {block}) twice."
    )
    assert x.dtype == y.dtype == torch.long, (
        f"Called {call}. Got dtypes {x.dtype}, {y.dtype}; nn.Embedding needs torch.long (int64)."
    )
    assert np.array_equal(np.asarray(source), np.asarray(pristine)), f"Called {call}: it modified the data."
    position = {int(t): i for i, t in enumerate(tokens)}
    for row in range(batch):
        assert int(x[row, 0]) in position, f"Called {call}. Row {row} of x starts with {int(x[row, 0])}, not in data."
        start = position[int(x[row, 0])]
        assert start + block + 1 <= n, (
            f"Called {call}. Row {row} starts at {start}: its target window runs past the data."
        )
        assert torch.equal(x[row], tokens[start : start + block]), (
            f"Called {call}. Row {row} of x is not data[{start}:{start + block}]."
        )
        assert torch.equal(y[row], tokens[start + 1 : start + block + 1]), (
            f"Called {call}. Row {row}: y is not x shifted by one (data[{start + 1}:{start + block + 1}]); "
            "y[t] must be the token that follows x[t]."
        )


@pytest.mark.exercise("get_batch")
@settings(max_examples=10)
@given(seed=seeds, block=st.integers(1, 8), starts=st.integers(1, 5))
def test_get_batch_reaches_every_window_uniformly(impl, seed, block, starts):
    n = block + starts  # windows may start at 0 .. starts - 1
    tokens = torch.arange(n)
    x, _ = impl.get_batch(tokens, block, 3000, generator(seed))
    counts = np.bincount(x[:, 0].numpy(), minlength=n)
    assert counts[starts:].sum() == 0 and (counts[:starts] > 0).all(), (
        f"Called get_batch(data of {n} tokens, block_size={block}, batch_size=3000). Window starts drawn: "
        f"{counts[: starts + 1].tolist()} (index = start); every start 0..{starts - 1} must be possible. "
        "Because the last window, data[n-block-1:n-1] with target data[n-block:n], ends exactly at the data's end; "
        "torch.randint(n - block_size - 1, ...) never draws it."
    )
    expected, sd = 3000 / starts, math.sqrt(3000 * (1 / starts) * (1 - 1 / starts))
    assert (np.abs(counts[:starts] - expected) <= 6 * sd + 1).all(), (
        f"Called get_batch(data of {n} tokens, block_size={block}, batch_size=3000). Start counts "
        f"{counts[:starts].tolist()} are far from uniform ({expected:.0f} each)."
    )


@pytest.mark.exercise("get_batch")
@settings(max_examples=10)
@given(seed=seeds)
def test_get_batch_draws_only_from_its_generator(impl, seed):
    tokens = torch.arange(1000)
    call = f"get_batch(arange(1000), 8, 16, torch.Generator().manual_seed({seed}))"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        before = torch.get_rng_state()
        x1, y1 = impl.get_batch(tokens, 8, 16, generator(seed))
        _rng_untouched(before, call)
        torch.manual_seed(2)
        x2, y2 = impl.get_batch(tokens, 8, 16, generator(seed))
        x3, _ = impl.get_batch(tokens, 8, 16, generator(seed + 1))
    assert torch.equal(x1, x2) and torch.equal(y1, y2), (
        f"Called {call} twice, with the global RNG in different states: the batches differ. Because every random "
        "draw must come from `generator` (pass generator=generator to torch.randint), never from the global RNG."
    )
    assert not torch.equal(x1, x3), (
        f"Called get_batch(arange(1000), 8, 16, generator) with seeds {seed} and {seed + 1}: the same batch. "
        "Because the windows must be drawn with the generator passed in, not with one seeded inside."
    )


@pytest.mark.exercise("get_batch")
@settings(max_examples=5)
@given(seed=seeds)
def test_get_batch_without_generator_uses_the_global_rng(impl, seed):
    tokens = torch.arange(1000)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        a, _ = impl.get_batch(tokens, 8, 16)
        torch.manual_seed(seed)
        b, _ = impl.get_batch(tokens, 8, 16)
        torch.manual_seed(seed + 1)
        c, _ = impl.get_batch(tokens, 8, 16)
    assert torch.equal(a, b) and not torch.equal(a, c), (
        f"Called get_batch(arange(1000), 8, 16) after torch.manual_seed({seed}), again after the same seed and after "
        f"torch.manual_seed({seed + 1}): same seed gave {'the same' if torch.equal(a, b) else 'different'} batches, "
        f"the other seed {'the same' if torch.equal(a, c) else 'different'} ones. With generator=None the draws "
        "come from torch's global RNG, so torch.manual_seed controls them."
    )


@pytest.mark.exercise("get_batch")
def test_get_batch_rejects_bad_arguments(impl):
    for args, numbers in (
        ((torch.arange(5), 7, 2), ("5", "7")),
        ((torch.arange(8), 0, 2), ("0",)),
        ((torch.arange(8), 2, 0), ("0",)),
        ((torch.arange(8), 8, 2), ("8",)),
    ):
        call = format_call("get_batch", args)
        with pytest.raises(ValueError) as info:
            impl.get_batch(*args, generator(0))
            pytest.fail(f"Called {call}: no ValueError.")
        for number in numbers:
            assert re.search(rf"(?<!\d){number}(?!\d)", str(info.value)), (
                f"Called {call}: ValueError({str(info.value)!r}) must name {number}."
            )
    with pytest.raises(ValueError, match=r"4\D+5"):
        impl.get_batch(torch.zeros(4, 5, dtype=torch.long), 2, 2, generator(0))


# ---------------------------------------------------------------------------------------------------------
# configure_optimizer
# ---------------------------------------------------------------------------------------------------------


class _Toy(torch.nn.Module):
    """Every kind of parameter: embedding, linear with and without bias, LayerNorm, and a frozen linear."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(7, 6)
        self.fc = torch.nn.Linear(6, 5)
        self.norm = torch.nn.LayerNorm(5)
        self.out = torch.nn.Linear(5, 3, bias=False)
        self.frozen = torch.nn.Linear(3, 3)
        self.frozen.requires_grad_(False)


def _expected_groups(model) -> tuple[set[int], set[int]]:
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    decay = {
        id(m.weight)
        for m in model.modules()
        if isinstance(m, torch.nn.Linear) and id(m.weight) not in embeddings and m.weight.requires_grad
    }
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    return decay, trainable - decay


def _names(model, ids: set[int]) -> list[str]:
    return sorted(n for n, p in model.named_parameters() if id(p) in ids)


@pytest.mark.exercise("configure_optimizer")
@pytest.mark.parametrize("kind", ["toy", "tied", "untied"])
def test_configure_optimizer_groups_are_exactly_right(impl, reference, kind):
    with seeded(0):
        model = _Toy() if kind == "toy" else _build(reference, 0, **{**TINY, "tie_weights": kind == "tied"})
    before = {n: (p.detach().clone(), p.requires_grad) for n, p in model.named_parameters()}
    # The toy model passes betas explicitly; the MiniGPTs rely on the documented default (0.9, 0.95).
    betas = {"betas": (0.8, 0.99)} if kind == "toy" else {}
    optimizer = impl.configure_optimizer(model, lr=3e-4, weight_decay=0.1, **betas)
    desc = {
        "toy": "a model with an embedding, linears, a LayerNorm and a frozen linear",
        "tied": "MiniGPT(tie_weights=True)",
        "untied": "MiniGPT(tie_weights=False)",
    }[kind]
    call = f"configure_optimizer({desc}, lr=3e-4, weight_decay=0.1{', betas=(0.8, 0.99)' if betas else ''})"
    for name, p in model.named_parameters():
        assert torch.equal(p.detach(), before[name][0]) and p.requires_grad == before[name][1], (
            f"Called {call}: it changed parameter {name} (its values or requires_grad); the model must be left alone."
        )
    assert isinstance(optimizer, torch.optim.AdamW), (
        f"Called {call}. Returned {type(optimizer).__name__}, expected torch.optim.AdamW."
    )
    groups = optimizer.param_groups
    assert len(groups) == 2, (
        f"Called {call}. Got {len(groups)} parameter group(s), expected 2: decayed and not decayed."
    )
    all_ids = [id(p) for g in groups for p in g["params"]]
    assert len(all_ids) == len(set(all_ids)), (
        f"Called {call}. A parameter appears twice (a tied weight counted in two places?)."
    )
    by_decay = {g["weight_decay"]: {id(p) for p in g["params"]} for g in groups}
    assert set(by_decay) == {0.1, 0.0}, (
        f"Called {call}. The groups' weight_decay values are {sorted(by_decay)}, expected 0.0 and 0.1."
    )
    decay, no_decay = _expected_groups(model)
    for label, got, want in (("weight_decay=0.1", by_decay[0.1], decay), ("weight_decay=0.0", by_decay[0.0], no_decay)):
        assert got == want, (
            f"Called {call}. The {label} group holds {_names(model, got)}, expected {_names(model, want)} "
            f"(missing {_names(model, want - got)}, unexpected {_names(model, got - want)}). Because only the "
            "weights of nn.Linear layers are decayed: biases, LayerNorm parameters and embeddings (a tied head "
            "is the embedding) are not, and frozen parameters are left out."
        )
    want_betas = betas.get("betas", (0.9, 0.95))
    for g in groups:
        assert g["lr"] == 3e-4 and tuple(g["betas"]) == want_betas, (
            f"Called {call}. A group has lr={g['lr']}, betas={g['betas']}; expected lr=3e-4 and betas={want_betas}."
        )


@pytest.mark.exercise("configure_optimizer")
@settings(max_examples=10)
@given(seed=seeds, wd=st.floats(0.01, 0.5))
def test_configure_optimizer_step_decays_only_linear_weights(impl, reference, seed, wd):
    """With zero gradients AdamW's update is pure decay: decayed weights shrink by lr*wd, the rest stay."""
    model = _build(reference, seed, **{**TINY, "tie_weights": False})
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = impl.configure_optimizer(model, lr=0.1, weight_decay=wd)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    decay, _ = _expected_groups(model)
    for name, p in model.named_parameters():
        factor = 1 - 0.1 * wd if id(p) in decay else 1.0
        assert_close(
            p.detach(),
            before[name] * factor,
            call=f"configure_optimizer(model, lr=0.1, weight_decay={wd:.3g}).step() with zero gradients",
            because=f"{name} must be "
            + (
                "decayed (x(1 - lr*wd))." if id(p) in decay else "left alone: no decay on biases, norms and embeddings."
            ),
            rtol=1e-9,
            atol=1e-12,
        )


# ---------------------------------------------------------------------------------------------------------
# generate
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.exercise("generate")
@settings(max_examples=15)
@given(seed=seeds, batch=st.integers(1, 3), prompt=st.integers(1, 10), n=st.integers(0, 10), strided=st.booleans())
def test_generate_greedy_crops_the_context_and_handles_batches(impl, reference, seed, batch, prompt, n, strided):
    model = _fixture_model(reference, seed, max_len=8)
    idx = _tokens(seed, (batch, prompt), 20)
    expected, _ = _oracle_greedy(model, idx, n)
    call = f"generate(MiniGPT(max_len=8), idx of shape {tuple(idx.shape)}, max_new_tokens={n}, temperature=0)"
    given_idx = _strided(idx) if strided else idx.clone()
    out = impl.generate(model, given_idx, n, temperature=0)
    assert torch.equal(given_idx, idx), f"Called {call}: it modified idx in place; return a new tensor instead."
    assert isinstance(out, torch.Tensor) and out.shape == expected.shape, (
        f"Called {call}. Returned shape {tuple(getattr(out, 'shape', ()))}, expected {tuple(expected.shape)}. "
        "Because generation continues past max_len by cropping the context to its last max_len tokens; it never "
        "stops early (the learning path's code stopped at 1024) and it handles every row of the batch (that code "
        "used row 0 only)."
    )
    if not torch.equal(out, expected):
        cause = likely_cause(
            KATA, "generate", lambda f: f(model, idx.clone(), n, temperature=0), out,
            matches=lambda result: torch.equal(result, out),
        )
        pytest.fail(
            f"Called {call}. Returned {out.tolist()}, expected {expected.tolist()}. Because temperature=0 is greedy: "
            "each new token is the argmax of the model's logits at the last position, run in eval mode on the "
            "context cropped to the last max_len tokens, for every row independently."
            + (f"\nLikely cause: {cause}" if cause else "")
        )


@pytest.mark.exercise("generate")
@settings(max_examples=10)
@given(seed=seeds, n=st.integers(1, 12))
def test_generate_greedy_limits_and_logits(impl, reference, seed, n):
    model = _fixture_model(reference, seed, max_len=8)
    idx = _tokens(seed, (2, 3), 20)
    expected, expected_logits = _oracle_greedy(model, idx, n)
    for kwargs in ({"top_k": 1}, {"temperature": 1e-8}, {"temperature": 0.0, "top_p": 0.5}):
        out = impl.generate(model, idx.clone(), n, generator=generator(seed), **kwargs)
        assert torch.equal(out, expected), (
            f"Called generate(model, idx, {n}, {', '.join(f'{k}={v}' for k, v in kwargs.items())}). Returned "
            f"{out.tolist()}, expected greedy decoding {expected.tolist()}. Because top_k=1 and temperature -> 0 "
            "both leave only the most likely token."
        )
    result = impl.generate(model, idx.clone(), n, temperature=0, return_logits=True)
    assert isinstance(result, tuple) and len(result) == 2, (
        f"Called generate(model, idx, {n}, temperature=0, return_logits=True); expected a pair (idx, logits), got "
        f"{type(result).__name__}."
    )
    assert_close(
        result[1],
        expected_logits,
        call=f"generate(model, idx, {n}, temperature=0, return_logits=True)",
        because="return_logits gives the model's raw last-position logits of each step, shape (B, n, V).",
        rtol=1e-7,
        atol=1e-9,
    )


@pytest.mark.exercise("generate")
def test_generate_zero_new_tokens_and_grad_mode(impl):
    model = _ConstantLM(torch.linspace(0.0, 1.0, 6))
    idx = torch.tensor([[1, 2], [3, 4], [0, 5]])
    out, logits = impl.generate(model, idx, 0, return_logits=True)
    assert torch.equal(out, idx), (
        f"Called generate(model, idx of shape (3, 2), 0, return_logits=True). Returned idx {out.tolist()}; expected "
        "idx itself: zero new tokens."
    )
    assert isinstance(logits, torch.Tensor) and tuple(logits.shape) == (3, 0, 0), (
        f"Called generate(model, idx of shape (3, 2), 0, return_logits=True). Returned logits of shape "
        f"{tuple(getattr(logits, 'shape', ()))}, expected the documented empty (B, 0, 0) = (3, 0, 0)."
    )
    with torch.enable_grad():
        _, logits = impl.generate(model, idx, 3, generator=generator(0), return_logits=True)
    assert model.grad_modes and not any(model.grad_modes) and not logits.requires_grad, (
        f"Called generate(model, idx, 3, return_logits=True) with gradients enabled: the model ran with grad mode "
        f"{model.grad_modes}. Because sampling runs under torch.no_grad(): it never needs gradients, and building "
        "a graph every step costs memory."
    )


@pytest.mark.exercise("generate")
@settings(max_examples=15)
@given(spread=spread_logits(), data=st.data(), seed=seeds)
@example(spread=(torch.tensor([0.0, 0.8, 1.6, 2.4, 3.2]), 1.0), data=None, seed=0)
def test_generate_top_k_keeps_exactly_the_k_most_likely(impl, spread, data, seed):
    logits, temperature = spread
    k = data.draw(st.integers(1, logits.numel() + 2), label="top_k") if data is not None else 4
    samples = _sample_once(impl, logits, 20000, seed, temperature, top_k=k)
    expected = _expected_distribution(logits, temperature, top_k=min(k, logits.numel()))
    _check_support_and_frequencies(
        samples,
        expected,
        f"generate(constant logits {np.round(logits.numpy(), 3).tolist()}, temperature={temperature}"
        f"{' (the default)' if temperature == 1.0 else ''}, top_k={k})",
        "top_k keeps exactly the k highest logits (all of them when k >= vocab) and renormalises over them; "
        "temperature (default 1.0) divides the logits first.",
    )


@pytest.mark.exercise("generate")
@settings(max_examples=15)
@given(spread=spread_logits(), top_p=st.floats(0.05, 1.0), top_k=st.none() | st.integers(2, 12), seed=seeds)
@example(spread=(torch.arange(8, dtype=torch.float64) * 0.3, 0.7), top_p=0.5, top_k=None, seed=0)
@example(spread=(torch.arange(8, dtype=torch.float64) * 0.3, 2.0), top_p=0.9, top_k=7, seed=0)
@example(spread=(torch.arange(6, dtype=torch.float64) * 0.2, 1.0), top_p=1.0, top_k=None, seed=0)
def test_generate_top_p_keeps_the_smallest_nucleus(impl, spread, top_p, top_k, seed):
    logits, temperature = spread
    top_k = None if top_k is None else min(top_k, logits.numel())
    base = _expected_distribution(logits, temperature, top_k=top_k)
    cumulative = np.cumsum(np.sort(base)[::-1])
    # No boundary case that rounding could decide (the total, 1, is no boundary: nothing follows it).
    assume(np.abs(cumulative[:-1] - top_p).min(initial=1.0) > 1e-3)
    samples = _sample_once(impl, logits, 20000, seed, temperature, top_k=top_k, top_p=top_p)
    expected = _expected_distribution(logits, temperature, top_k=top_k, top_p=top_p)
    _check_support_and_frequencies(
        samples,
        expected,
        f"generate(constant logits {np.round(logits.numpy(), 3).tolist()}, temperature={temperature}, "
        f"top_k={top_k}, top_p={top_p:.4f})",
        "top_p keeps the smallest set of most likely tokens whose probability (after temperature and top_k) "
        "reaches top_p, including the token that crosses it, and renormalises over them.",
    )


@pytest.mark.exercise("generate")
@pytest.mark.parametrize("top_p, kept", [(0.25, 2), (0.5, 4), (0.625, 5), (1.0, 8)])
def test_generate_top_p_boundary_is_exact(impl, top_p, kept):
    """Eight equally likely tokens: each has probability 1/8 exactly, so every cumulative sum is exact.

    The smallest prefix whose total *reaches* top_p has top_p * 8 tokens; the next token has exactly top_p
    of probability ahead of it, which is not < top_p, so it is dropped.
    """
    samples = _sample_once(impl, torch.zeros(8), 4000, 0, 1.0, top_p=top_p)
    distinct = sorted(set(samples.tolist()))
    assert len(distinct) == kept, (
        f"Called generate(8 equally likely tokens, top_p={top_p}) 4000 times: sampled {len(distinct)} distinct "
        f"tokens {distinct}, expected exactly {kept}. Because a token is kept when the probability of the tokens "
        f"ahead of it is still < top_p: the first {kept} reach {kept}/8 = {top_p} and the next has exactly {top_p} "
        "ahead of it."
    )


@pytest.mark.exercise("generate")
@settings(max_examples=5)
@given(seed=seeds)
def test_generate_samples_each_row_from_its_own_extreme_logits(impl, seed):
    """Rows at +1e4, -1e4 and O(1): a stable softmax and a per-row top-k (top_k=8 > B=3) give each row its own."""
    base = torch.randperm(12, generator=generator(seed)).double() * 0.4
    table = torch.stack([base + 1e4, base.flip(0) - 1e4, base.roll(5)])
    model = _RowLM(table)
    out = impl.generate(model, torch.zeros(3, 1, dtype=torch.long), 800, 1.5, 8, generator=generator(seed))
    assert isinstance(out, torch.Tensor) and out.shape == (3, 801), (
        f"Called generate(model, a (3, 1) prompt, 800, temperature=1.5, top_k=8); returned "
        f"{getattr(out, 'shape', type(out))}, expected shape (3, 801)."
    )
    for row in range(3):
        _check_support_and_frequencies(
            out[row, 1:],
            _expected_distribution(table[row], 1.5, top_k=8),
            f"generate(model whose row {row} has logits {np.round(table[row].numpy(), 1).tolist()}, 800 steps, "
            "temperature=1.5, top_k=8)",
            "each row samples from its own logits (the learning path's code read row 0 only), the softmax must "
            "subtract the max (exp(1e4) overflows), and top_k counts vocabulary entries, not batch rows.",
        )


@pytest.mark.exercise("generate")
@settings(max_examples=10)
@given(seed=seeds, training=st.booleans())
def test_generate_samples_in_eval_mode_and_restores_the_mode(impl, reference, seed, training):
    model = _fixture_model(reference, seed, dropout=0.5)
    idx = _tokens(seed, (2, 4), 20)
    expected, _ = _oracle_greedy(model, idx, 6)
    model.train(training)
    with seeded(seed):
        out = impl.generate(model, idx.clone(), 6, temperature=0)
    modes = {m.training for m in model.modules()}
    assert modes == {training}, (
        f"Called generate on a model in {'train' if training else 'eval'} mode; afterwards its modules' training "
        f"flags are {modes}. Because generate must put the model back in the mode it found it in (the learning "
        "path's code left it in eval mode, so training after sampling silently ran without dropout)."
    )
    assert torch.equal(out, expected), (
        f"Called generate(model with dropout=0.5 in {'train' if training else 'eval'} mode, idx, 6, temperature=0). "
        f"Returned {out.tolist()}, expected {expected.tolist()}. Because sampling runs in eval mode: dropout off."
    )


def _check_mode_restored_on_error(impl, function: str, model) -> None:
    model.train()
    with pytest.raises(_Boom):
        getattr(impl, function)(model, torch.zeros(2, 1, dtype=torch.long), 3, generator=generator(0))
    assert model.training, (
        f"Called {function} on a model in train mode whose second forward pass raised: the model was left in "
        "eval mode. Because the mode is restored even on error (model.train(was_training) in a finally block)."
    )


@pytest.mark.exercise("generate")
def test_generate_restores_the_mode_even_on_error(impl):
    _check_mode_restored_on_error(impl, "generate", _FailingLM(fail_at=2))


@pytest.mark.exercise("KVCache")
def test_generate_cached_restores_the_mode_even_on_error(impl, reference):
    model = _fixture_model(reference, 0)  # the cached forward walks a MiniGPT: its second token embedding fails
    calls = []

    def fail_on_second_call(module, args):
        calls.append(1)
        if len(calls) == 2:
            raise _Boom("the model failed on purpose")

    model.tok_emb.register_forward_pre_hook(fail_on_second_call)
    _check_mode_restored_on_error(impl, "generate_cached", model)


@pytest.mark.exercise("generate")
@settings(max_examples=10)
@given(seed=seeds, top_k=st.none() | st.integers(2, 16))
def test_generate_draws_only_from_its_generator(impl, seed, top_k):
    model = _ConstantLM(torch.linspace(0.0, 0.5, 16))
    idx = torch.zeros(4, 1, dtype=torch.long)
    call = f"generate(model, idx, 20, top_k={top_k}, generator=torch.Generator().manual_seed({seed}))"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        before = torch.get_rng_state()
        a = impl.generate(model, idx, 20, top_k=top_k, generator=generator(seed))
        _rng_untouched(before, call)
        torch.manual_seed(2)
        b = impl.generate(model, idx, 20, top_k=top_k, generator=generator(seed))
        c = impl.generate(model, idx, 20, top_k=top_k, generator=generator(seed + 1))
    assert torch.equal(a, b), (
        f"Called {call} twice, with the global RNG in different states: the samples differ. Because every draw "
        "must use `generator` (torch.multinomial(probs, 1, generator=generator))."
    )
    assert not torch.equal(a, c), (
        f"Called generate(model, idx, 20, top_k={top_k}) with generator seeds {seed} and {seed + 1}: the same 80 "
        "tokens. Because the draws must come from the generator passed in."
    )


@pytest.mark.exercise("generate")
@settings(max_examples=5)
@given(seed=seeds)
def test_generate_without_generator_uses_the_global_rng(impl, seed):
    model = _ConstantLM(torch.linspace(0.0, 0.5, 16))
    idx = torch.zeros(4, 1, dtype=torch.long)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        a = impl.generate(model, idx, 20)
        torch.manual_seed(seed)
        b = impl.generate(model, idx, 20)
        torch.manual_seed(seed + 1)
        c = impl.generate(model, idx, 20)
    assert torch.equal(a, b) and not torch.equal(a, c), (
        f"Called generate(model, idx, 20) after torch.manual_seed({seed}), again after the same seed and after "
        f"torch.manual_seed({seed + 1}): same seed gave {'the same' if torch.equal(a, b) else 'different'} tokens, "
        f"the other seed {'the same' if torch.equal(a, c) else 'different'} ones. With generator=None, "
        "torch.multinomial draws from torch's global RNG, so torch.manual_seed controls the samples."
    )


def _check_bad_sampling_arguments(impl, reference, function: str) -> None:
    model = _fixture_model(reference, 0)
    idx = torch.zeros(1, 2, dtype=torch.long)
    sample = getattr(impl, function)
    for args, kwargs, value in (
        ((idx, 3), {"temperature": -0.5}, r"-0\.5"),
        ((idx, 3), {"top_k": 0}, r"(?<![\d.])0(?![\d.])"),
        ((idx, 3), {"top_p": 0.0}, r"0\.0"),
        ((idx, 3), {"top_p": 1.5}, r"1\.5"),
        ((idx, -1), {}, r"-1"),
        ((torch.zeros(3, dtype=torch.long), 3), {}, r"3"),
        ((torch.zeros(2, 0, dtype=torch.long), 3), {}, r"2\D+0"),
    ):
        call = format_call(function, ("model", *args), kwargs)
        with pytest.raises(ValueError, match=value):
            sample(model, *args, **kwargs)
            pytest.fail(f"Called {call}: no ValueError naming the offending value.")
    out = sample(model, idx, 2, top_p=1.0, generator=generator(0))
    assert out.shape == (1, 4), f"Called {function}(model, idx, 2, top_p=1.0): top_p=1.0 is legal (keep everything)."


@pytest.mark.exercise("generate")
def test_generate_rejects_bad_arguments(impl, reference):
    _check_bad_sampling_arguments(impl, reference, "generate")


@pytest.mark.exercise("KVCache")
def test_generate_cached_rejects_bad_arguments(impl, reference):
    _check_bad_sampling_arguments(impl, reference, "generate_cached")


# ---------------------------------------------------------------------------------------------------------
# KVCache + generate_cached
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.exercise("KVCache")
@given(
    seed=seeds,
    layers=st.integers(1, 3),
    batch=st.integers(1, 3),
    heads=st.integers(1, 3),
    head_dim=st.integers(1, 4),
    max_len=st.integers(2, 10),
    data=st.data(),
)
def test_kv_cache_appends_and_refuses_to_overflow(impl, seed, layers, batch, heads, head_dim, max_len, data):
    chunks = data.draw(
        st.lists(st.integers(1, max_len), min_size=1, max_size=4).filter(lambda c: sum(c) <= max_len), label="chunks"
    )
    cache = impl.KVCache(layers, batch, heads, head_dim, max_len, dtype=torch.float64)
    call = f"KVCache({layers}, {batch}, {heads}, {head_dim}, max_len={max_len}, dtype=torch.float64)"
    assert len(cache) == 0, f"Called {call}; a new cache has length {len(cache)}, expected 0."
    g = generator(seed)
    stored = [([], []) for _ in range(layers)]
    done = 0
    for t in chunks:
        for layer in range(layers):
            k, v = (torch.randn(batch, heads, t, head_dim, generator=g, dtype=torch.float64) for _ in range(2))
            stored[layer][0].append(k)
            stored[layer][1].append(v)
            pristine = (k.clone(), v.clone())
            result = cache.update(layer, k, v)
            assert torch.equal(k, pristine[0]) and torch.equal(v, pristine[1]), (
                f"Called {call}.update({layer}, k, v): it modified k or v in place."
            )
            assert isinstance(result, tuple) and len(result) == 2, (
                f"Called {call}.update({layer}, k, v); expected a pair (k_all, v_all), got {type(result).__name__}."
            )
            for name, got, parts in (("keys", result[0], stored[layer][0]), ("values", result[1], stored[layer][1])):
                assert got.dtype == torch.float64, (
                    f"Called {call}.update({layer}, ...): the {name} come back as {got.dtype}; the cache holds "
                    "torch.float64, the dtype it was created with."
                )
                assert_close(
                    got,
                    torch.cat(parts, dim=2),
                    call=f"{call}.update({layer}, ...) after chunks {chunks[: len(parts)]}",
                    because=f"update returns every cached {name} of that layer so far, oldest first: "
                    "(B, nh, cached + new, hs), exactly as written.",
                    rtol=0,
                    atol=0,
                )
            if layer < layers - 1:
                assert len(cache) == done, (
                    f"Called {call}: after appending {t} positions to layers 0..{layer} only, len(cache) is "
                    f"{len(cache)}, expected {done}: the positions held by every layer (the minimum)."
                )
        done += t
    assert len(cache) == done, (
        f"Called {call} and appended chunks {chunks} to every layer; len(cache) is {len(cache)}, expected {done}."
    )
    over = torch.zeros(batch, heads, max_len - done + 1, head_dim, dtype=torch.float64)
    with pytest.raises(ValueError, match="max_len"):
        cache.update(0, over, over)
        pytest.fail(
            f"{call}: appending {max_len - done + 1} positions to {done} cached ones did not raise; "
            f"the cache must never grow past max_len={max_len} (a ValueError that mentions max_len)."
        )
    cache.reset()
    assert len(cache) == 0, f"Called {call}.reset(); len(cache) is {len(cache)}, expected 0."
    k = torch.full((batch, heads, 1, head_dim), 7.0, dtype=torch.float64)
    k_all, v_all = cache.update(0, k, -k)
    assert torch.equal(k_all, k) and torch.equal(v_all, -k), (
        f"Called {call}.reset() then update(0, one position): got keys of shape {tuple(k_all.shape)}; expected "
        "exactly the one new position (nothing from before the reset)."
    )


@pytest.mark.exercise("KVCache")
def test_kv_cache_rejects_bad_updates_and_honours_dtype_and_device(impl):
    cache = impl.KVCache(2, 1, 2, 4, 8)
    good = torch.zeros(1, 2, 3, 4)
    call = "KVCache(num_layers=2, batch_size=1, num_heads=2, head_dim=4, max_len=8)"
    for layer, k, v, what in (
        (2, good, good, "layer 2 of a 2-layer cache"),
        (-1, good, good, "layer -1"),
        (0, torch.zeros(1, 3, 3, 4), torch.zeros(1, 3, 3, 4), "3 heads instead of 2"),
        (0, torch.zeros(1, 2, 3, 5), torch.zeros(1, 2, 3, 5), "head_dim 5 instead of 4"),
        (0, torch.zeros(2, 3, 4), torch.zeros(2, 3, 4), "3-D keys"),
        (0, good, torch.zeros(1, 2, 2, 4), "values with a different length than the keys"),
    ):
        with pytest.raises(ValueError):
            cache.update(layer, k, v)
            pytest.fail(f"Called {call}.update with {what}: no ValueError.")
    assert len(cache) == 0, f"Called {call}.update with bad arguments only; len(cache) is {len(cache)}, expected 0."
    k_all, _ = cache.update(1, good, good)
    assert k_all.dtype == torch.float32, (
        f"Called {call}.update(1, float32 keys): they come back as {k_all.dtype}; the default dtype is float32."
    )
    meta = impl.KVCache(1, 1, 2, 4, 8, dtype=torch.float64, device="meta")
    k = torch.zeros(1, 2, 3, 4, dtype=torch.float64, device="meta")
    k_all, v_all = _run_on_meta(
        lambda: meta.update(0, k, k),
        "KVCache(..., device='meta').update(0, keys on the meta device)",
        "Are the buffers created on the device given (torch.zeros(..., dtype=dtype, device=device))?",
    )
    assert k_all.device.type == v_all.device.type == "meta" and k_all.shape == (1, 2, 3, 4), (
        f"Called KVCache(..., device='meta').update(0, meta keys): got keys on {k_all.device} of shape "
        f"{tuple(k_all.shape)}; the cache must live on the device it was created for."
    )


@pytest.mark.exercise("KVCache")
@settings(max_examples=15)
@given(
    seed=seeds,
    batch=st.integers(1, 3),
    prompt=st.integers(1, 10),
    n=st.integers(0, 14),
    max_len=st.sampled_from([8, 16]),
    layers=st.integers(1, 2),
)
@example(seed=0, batch=2, prompt=2, n=3, max_len=16, layers=2)
@example(seed=1, batch=1, prompt=7, n=12, max_len=8, layers=1)
def test_generate_cached_equals_generate_step_by_step(impl, reference, seed, batch, prompt, n, max_len, layers):
    model = _fixture_model(reference, seed, max_len=max_len, num_layers=layers)
    idx = _tokens(seed, (batch, prompt), 20)
    expected, expected_logits = reference.generate(model, idx.clone(), n, temperature=0, return_logits=True)
    call = (
        f"generate_cached(MiniGPT(max_len={max_len}, num_layers={layers}), idx of shape {tuple(idx.shape)}, {n}, "
        "temperature=0, return_logits=True)"
    )
    given_idx = idx.clone()
    result = impl.generate_cached(model, given_idx, n, temperature=0, return_logits=True)
    assert isinstance(result, tuple) and len(result) == 2, f"Called {call}; expected a pair (idx, logits)."
    out, logits = result
    assert torch.equal(given_idx, idx), f"Called {call}: it modified idx in place."
    assert not out.is_inference() and not logits.is_inference(), (
        f"Called {call}: it returned tensors made under torch.inference_mode(), which raise as soon as autograd "
        "meets them (e.g. the ids as training data). Return ordinary tensors: clone() them after the with block."
    )
    assert out.shape == expected.shape and logits.shape == expected_logits.shape, (
        f"Called {call}. Returned shapes {tuple(out.shape)} and {tuple(logits.shape)}, expected "
        f"{tuple(expected.shape)} and {tuple(expected_logits.shape)} (as generate's)."
    )
    cause = None
    if error_report(logits, expected_logits, 1e-7, 1e-8) is not None:
        cause = likely_cause(
            KATA,
            "generate_cached",
            lambda f: f(model, idx.clone(), n, temperature=0, return_logits=True)[1],
            logits,
            rtol=1e-7,
            atol=1e-8,
        )
    for step in range(n):
        assert_close(
            logits[:, step],
            expected_logits[:, step],
            call=f"{call}, step {step} (context length {prompt + step})",
            because="the cached forward must compute exactly what a full forward on the (cropped) context computes: "
            "new tokens sit at positions len(cache).. (not 0..), attend to every cached key, and once the "
            "context passes max_len the cache is refilled with the last max_len tokens, never grown past it.",
            rtol=1e-7,
            atol=1e-8,
            cause=cause,
        )
    assert torch.equal(out, expected), (
        f"Called {call}. Returned tokens {out.tolist()}, expected greedy {expected.tolist()}."
    )


@pytest.mark.exercise("KVCache")
@settings(max_examples=10)
@given(seed=seeds, prompt=st.integers(1, 6), n=st.integers(1, 10))
def test_generate_cached_embeds_each_token_once(impl, reference, seed, prompt, n):
    model = _fixture_model(reference, seed)
    seen = []
    handle = model.tok_emb.register_forward_hook(lambda module, args, out: seen.append(args[0].shape[-1]))
    try:
        impl.generate_cached(model, _tokens(seed, (2, prompt), 20), n, temperature=0)
    finally:
        handle.remove()
    assert sum(seen) <= prompt + n, (
        f"Called generate_cached(model, a prompt of {prompt} tokens, {n}) with max_len=16: the token embedding "
        f"was applied to {sum(seen)} positions per row in calls of {seen}, expected at most {prompt + n}. Because "
        "a KV cache runs the prompt once and then only the one new token per step."
    )


@pytest.mark.exercise("KVCache")
@settings(max_examples=10)
@given(
    seed=seeds,
    temperature=st.sampled_from([0.8, 1.0, 1.3]),
    top_k=st.none() | st.integers(2, 10),
    top_p=st.none() | st.floats(0.3, 1.0),
    training=st.booleans(),
)
@example(seed=3, temperature=1.0, top_k=6, top_p=0.8, training=True)
def test_generate_cached_samples_like_generate(impl, reference, seed, temperature, top_k, top_p, training):
    model = _fixture_model(reference, seed, max_len=8, dropout=0.3)
    idx = _tokens(seed, (3, 4), 20)
    expected = impl.generate(model.eval(), idx.clone(), 10, temperature, top_k, top_p, generator=generator(seed))
    model.train(training)
    # A temperature of 1.0 is left to generate_cached's default; the global RNG is seeded apart from the generator.
    kwargs = {"top_k": top_k, "top_p": top_p, "generator": generator(seed)}
    if temperature != 1.0:
        kwargs["temperature"] = temperature
    call = f"generate_cached(model, idx, 10, {', '.join(f'{k}={v}' for k, v in kwargs.items() if k != 'generator')})"
    with seeded(seed + 1):
        before = torch.get_rng_state()
        out = impl.generate_cached(model, idx.clone(), 10, **kwargs)
        _rng_untouched(before, call)
    assert {m.training for m in model.modules()} == {training}, (
        f"Called generate_cached on a model in {'train' if training else 'eval'} mode; it must restore that mode."
    )
    assert torch.equal(out, expected), (
        f"Called {call} with generator=torch.Generator().manual_seed({seed}). Returned {out.tolist()}, but your "
        f"generate with the same arguments (temperature={temperature}) returned {expected.tolist()}. Because the "
        "cache changes how logits are computed, not how a token is drawn from them: reuse generate's sampling step, "
        "in eval mode."
    )


@pytest.mark.exercise("KVCache")
def test_generate_cached_follows_idx_to_its_device(impl, reference):
    model = _fixture_model(reference, 0, num_layers=1).to("meta")
    idx = torch.zeros(2, 3, dtype=torch.long, device="meta")
    out = _run_on_meta(
        lambda: impl.generate_cached(model, idx, 20, temperature=0),
        "generate_cached(model on the meta device, idx on the meta device, 20, temperature=0)",
        "Are the cache, the positions and the mask all created on idx's device?",
    )
    assert out.device.type == "meta" and out.shape == (2, 23), (
        f"Called generate_cached(model on the meta device, idx on the meta device, 20, temperature=0): got a result "
        f"on {out.device} of shape {tuple(out.shape)}, expected meta and (2, 23). Because the cache, the positions "
        "and the mask are created on idx's device (a model on a GPU decodes on the GPU)."
    )


@pytest.mark.perf
@pytest.mark.exercise("KVCache")
def test_generate_cached_is_faster_than_generate(impl, reference, benchmark, bench_report):
    """generate_cached vs the uncached reference generate, 256 new tokens, 4-layer MiniGPT, CPU, one thread.

    Each benchmark round first times one uncached run (in pedantic's untimed setup), then the cached run, so
    both see the same machine load; the ratio uses the best round of each. A learner's cache must be 3x
    faster; the reference itself, whose cached step cuts Python and autograd overhead too, must be 8x faster.
    One thread whatever the cores (benchmarks run on one, see checks/conftest.py): more threads speed up
    generate's long matrix products but not a cached step's tiny ones, so the ratio would depend on the machine.
    """
    config = {
        "vocab_size": 64,
        "embed_dim": 192,
        "num_heads": 6,
        "num_layers": 4,
        "ff_dim": 768,
        "max_len": 512,
        "dropout": 0.0,
    }
    n = 256
    model = _build(reference, 0, **config).float()
    prompt = _tokens(0, (1, 16), 64)
    uncached, cached = [], []

    def time_uncached():
        start = time.perf_counter()
        reference.generate(model, prompt, n, temperature=0)
        uncached.append(time.perf_counter() - start)

    def run_cached():
        start = time.perf_counter()
        out = impl.generate_cached(model, prompt, n, temperature=0)
        cached.append(time.perf_counter() - start)
        return out

    impl.generate_cached(model, prompt, 8, temperature=0)  # warm-up outside the measurement
    out = benchmark.pedantic(run_cached, setup=time_uncached, rounds=3, iterations=1)
    assert out.shape == (1, 16 + n), f"generate_cached returned shape {tuple(out.shape)}, expected (1, {16 + n})"
    ratio = min(uncached) / min(cached)
    # The bars of CURRICULUM.md: 3x for a learner's cache, 8x for the reference's.
    required, whose = (8, "the reference's bar") if impl is reference else (3, "the bar for your cache")
    print(
        f"\nKV cache, {n} new tokens after a 16-token prompt, MiniGPT(**{config}), float32, 1 thread: "
        f"generate {n / min(uncached):.0f} tokens/s ({min(uncached):.2f} s), generate_cached "
        f"{n / min(cached):.0f} tokens/s ({min(cached):.2f} s): speed-up {ratio:.1f}x (required >= {required}x, "
        f"{whose})"
    )
    bench_report(f"KV cache, {n} new tokens, 4-layer MiniGPT 192 wide, 1 thread: generate_cached {min(cached):.2f} s "
                 f"vs generate {min(uncached):.2f} s: {ratio:.1f}x faster (required >= {required}x, {whose})")
    hint = (
        "The reference's step must also avoid per-token overhead: module calls, autograd bookkeeping, masks."
        if impl is reference
        else "Does each step run only the new token through the model?"
    )
    assert ratio >= required, (
        f"generate_cached took {min(cached):.3f} s for {n} tokens, generate (no cache) {min(uncached):.3f} s: only "
        f"{ratio:.1f}x faster, expected at least {required}x ({whose}). {hint}"
    )


# ---------------------------------------------------------------------------------------------------------
# train_mini_gpt
# ---------------------------------------------------------------------------------------------------------


def _replay(reference, impl, model, tokens, steps, *, block_size, batch_size, lr, min_lr, warmup_steps,
            weight_decay, max_norm, generator):
    """The recipe of the docstring written out on ``model``: (losses, grad norms), parameters updated in place.

    Batches come from ``impl.get_batch`` with the same generator (the data pipeline has its own checks); the
    optimizer from the reference's configure_optimizer.
    """
    optimizer = reference.configure_optimizer(model, lr, weight_decay)
    losses, norms = [], []
    model.train()
    for lr_now in _lr_schedule(steps, warmup_steps, lr, min_lr):
        for group in optimizer.param_groups:
            group["lr"] = lr_now
        x, y = impl.get_batch(tokens, block_size, batch_size, generator)
        logits = model(x)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)))
        optimizer.step()
        losses.append(loss.item())
    return losses, norms


def _assert_same_training(history, model, oracle, losses, norms, call: str) -> None:
    recipe = (
        "each step: set the warmup-cosine lr, draw one batch with get_batch(data, block_size, batch_size, "
        "generator), mean cross-entropy over all B*T tokens, zero_grad, backward, clip_grad_norm_(max_norm) "
        "before optimizer.step(), with the optimizer from configure_optimizer."
    )
    assert isinstance(history, dict) and set(history) == HISTORY_KEYS, (
        f"Called {call}. Returned {type(history).__name__} "
        f"{sorted(history) if isinstance(history, dict) else ''}, expected a dict with exactly {sorted(HISTORY_KEYS)}."
    )
    for key, values in (("train_loss", losses), ("grad_norm", norms)):
        assert_close(
            np.array(history[key], dtype=np.float64),
            np.array(values),
            call=call,
            because=f"history[{key!r}][s] is "
            + ("the loss of step s's batch; " if key == "train_loss" else "the total norm before clipping; ")
            + recipe,
            rtol=1e-7,
            atol=1e-9,
        )
    for (name, p), q in zip(model.named_parameters(), oracle.parameters(), strict=True):
        assert_close(p.detach(), q.detach(), call=call + f", parameter {name} after training", because=recipe,
                     rtol=1e-6, atol=1e-9)


@st.composite
def schedules(draw) -> tuple[int, int, int]:
    steps = draw(st.integers(1, 12))
    return steps, draw(st.integers(1, steps), label="warmup_steps"), draw(st.integers(1, steps), label="eval_interval")


@pytest.mark.exercise("train_mini_gpt")
@settings(max_examples=10)
@given(seed=seeds, schedule=schedules())
@example(seed=0, schedule=(3, 1, 2))
def test_train_mini_gpt_history_and_schedule(impl, reference, seed, schedule):
    steps, warmup, interval = schedule
    model = _build(reference, seed, **TINY)
    tokens = _tokens(seed, (200,), 20)
    val = tokens[:60]
    pristine = (tokens.clone(), val.clone())
    history = impl.train_mini_gpt(
        model,
        tokens,
        steps,
        val_data=val,
        block_size=8,
        batch_size=4,
        lr=1e-2,
        min_lr=3e-4,
        warmup_steps=warmup,
        eval_interval=interval,
        generator=generator(seed),
    )
    call = (
        f"train_mini_gpt(model, data, {steps}, val_data=data[:60], block_size=8, lr=1e-2, min_lr=3e-4, "
        f"warmup_steps={warmup}, eval_interval={interval})"
    )
    assert torch.equal(tokens, pristine[0]) and torch.equal(val, pristine[1]), (
        f"Called {call}: it modified data or val_data in place."
    )
    assert isinstance(history, dict) and set(history) == HISTORY_KEYS, (
        f"Called {call}. Returned keys {sorted(history) if isinstance(history, dict) else type(history).__name__}, "
        f"expected exactly {sorted(HISTORY_KEYS)}."
    )
    for key in ("train_loss", "lr", "grad_norm"):
        assert len(history[key]) == steps, (
            f"Called {call}. history[{key!r}] has {len(history[key])} entries, expected one per step ({steps})."
        )
    assert_close(
        np.array(history["lr"]),
        np.array(_lr_schedule(steps, warmup, 1e-2, 3e-4)),
        call=call,
        because="step s uses lr*(s+1)/warmup_steps while s < warmup_steps, then a cosine from lr down to "
        "min_lr, reaching min_lr exactly at the last step.",
        rtol=1e-9,
        atol=1e-12,
    )
    val_steps = sorted({s for s in range(1, steps + 1) if s % interval == 0} | {steps})
    assert list(history["val_step"]) == val_steps and len(history["val_loss"]) == len(val_steps), (
        f"Called {call}. history['val_step'] is {history['val_step']} with {len(history['val_loss'])} losses; expected "
        f"{val_steps}: evaluate after every eval_interval-th step and after the last one."
    )


@pytest.mark.exercise("train_mini_gpt")
@settings(max_examples=4)
@given(seed=seeds)
def test_train_mini_gpt_follows_the_exact_recipe(impl, reference, seed):
    """Replays the recipe step by step: one get_batch per step, lr set first, zero_grad, clip before step."""
    model = _sharpen_(_build(reference, seed, **TINY), seed)
    oracle = copy.deepcopy(model)
    tokens = _tokens(seed, (200,), 20)
    kwargs = {"block_size": 8, "batch_size": 4, "lr": 1e-2, "min_lr": 1e-3, "warmup_steps": 2, "weight_decay": 0.3,
              "max_norm": 0.5}
    history = impl.train_mini_gpt(model, tokens, 5, generator=generator(seed), **kwargs)
    losses, norms = _replay(reference, impl, oracle, tokens, 5, generator=generator(seed), **kwargs)
    assert max(norms) > kwargs["max_norm"], "test set-up: the gradients must be large enough to be clipped"
    call = f"train_mini_gpt(model, data, 5, {', '.join(f'{k}={v}' for k, v in kwargs.items())})"
    _assert_same_training(history, model, oracle, losses, norms, call)
    assert history["val_loss"] == [] and history["val_step"] == [], (
        f"Called {call} without val_data: history['val_loss'] is {history['val_loss']}, expected [] (nothing to "
        "evaluate)."
    )


@pytest.mark.exercise("train_mini_gpt")
def test_train_mini_gpt_defaults(impl, reference):
    """Every keyword left out: block 64, batch 16, lr 1e-3, min_lr lr/10, warmup max(1, steps // 10), weight
    decay 0.1, max_norm 1.0, evaluation at the end only, batches from torch.Generator().manual_seed(0)."""
    config = {"vocab_size": 20, "embed_dim": 8, "num_heads": 2, "num_layers": 1, "ff_dim": 16, "max_len": 64,
              "dropout": 0.0}
    tokens, val = _tokens(1, (300,), 20), _tokens(2, (130,), 20)
    for steps in (3, 21):
        model = _sharpen_(_build(reference, 0, **config), 0, std=1.0)  # large weights: gradients above max_norm
        oracle = copy.deepcopy(model)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(steps)  # a global RNG in some other state: the default generator must not be it
            history = impl.train_mini_gpt(model, tokens, steps, val_data=val)
        defaults = {"block_size": 64, "batch_size": 16, "lr": 1e-3, "min_lr": 1e-4, "warmup_steps": max(1, steps // 10),
                    "weight_decay": 0.1, "max_norm": 1.0}
        losses, norms = _replay(reference, impl, oracle, tokens, steps, generator=generator(0), **defaults)
        call = f"train_mini_gpt(model, data, {steps}, val_data=val) with every other argument at its default"
        assert max(norms) > 1.0, "test set-up: the gradients must be large enough to be clipped at max_norm=1.0"
        assert_close(
            np.array(history["lr"]),
            np.array(_lr_schedule(steps, defaults["warmup_steps"], defaults["lr"], defaults["min_lr"])),
            call=call,
            because=f"the defaults are lr=1e-3, min_lr=lr/10 and warmup_steps=max(1, steps // 10) = "
            f"{defaults['warmup_steps']}.",
            rtol=1e-9,
            atol=1e-12,
        )
        _assert_same_training(history, model, oracle, losses, norms, call + f" (expected {defaults})")
        assert history["val_step"] == [steps], (
            f"Called {call}: history['val_step'] is {history['val_step']}, expected [{steps}]: eval_interval "
            "defaults to steps, so evaluation happens once, after the last step."
        )


@pytest.mark.exercise("train_mini_gpt")
@settings(max_examples=5)
@given(seed=seeds, start_in_train_mode=st.booleans())
def test_train_mini_gpt_trains_in_train_mode_and_evaluates_in_eval_mode(impl, reference, seed, start_in_train_mode):
    model = _build(reference, seed, **{**TINY, "dropout": 0.3}).train(start_in_train_mode)
    tokens, val = _tokens(seed, (200,), 20), _tokens(seed + 1, (41,), 20)
    forwards = []
    model.register_forward_pre_hook(lambda module, args: forwards.append((module.training, torch.is_grad_enabled())))
    with seeded(seed):
        history = impl.train_mini_gpt(
            model, tokens, 3, val_data=val, block_size=8, batch_size=4, eval_interval=2, generator=generator(seed)
        )
    call = (
        f"train_mini_gpt(model with dropout=0.3 handed over in {'train' if start_in_train_mode else 'eval'} mode, "
        "data, 3, val_data of 41 tokens, block_size=8, eval_interval=2)"
    )
    training = [mode for mode, grad in forwards if grad]
    evaluating = [mode for mode, grad in forwards if not grad]
    assert len(training) == 3 and all(training), (
        f"Called {call}. The model ran {len(training)} forward passes with gradients, in modes "
        f"{['train' if m else 'eval' for m in training]}; expected 3, all in train mode. Because the loop puts the "
        "model in train mode (dropout on) before training, and after every evaluation."
    )
    assert evaluating and not any(evaluating), (
        f"Called {call}. The model ran {len(evaluating)} forward passes without gradients, in modes "
        f"{['train' if m else 'eval' for m in evaluating]}; expected the evaluations, all in eval mode (no dropout)."
    )
    assert model.training, f"Called {call}: the model was returned in eval mode; evaluation goes back to train mode."
    model.eval()
    starts = torch.arange(0, 41 - 8, 8)
    x, y = val[starts[:, None] + torch.arange(8)], val[starts[:, None] + torch.arange(8) + 1]
    with torch.no_grad():
        expected = F.cross_entropy(model(x).reshape(-1, 20), y.reshape(-1)).item()
    assert history["val_loss"] and abs(history["val_loss"][-1] - expected) < 1e-9, (
        f"Called {call}. The last val_loss is {history['val_loss'][-1] if history['val_loss'] else None}, expected "
        f"{expected:.6f}: the final model's mean loss over the non-overlapping windows val_data[0:8], [8:16], ... "
        "(targets shifted by one), in eval mode (no dropout) and without gradients."
    )


class _Arrived(Exception):
    """Raised by the probe model with the device its first batch arrived on."""


class _DeviceProbe(torch.nn.Module):
    """Parameters on the meta device; its forward reports where the batch is instead of computing anything."""

    def __init__(self) -> None:
        super().__init__()
        self.head = torch.nn.Linear(4, 4, device="meta")
        self.max_len = 64

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        raise _Arrived(idx.device)


@pytest.mark.exercise("train_mini_gpt")
def test_train_mini_gpt_sends_batches_to_the_model_device(impl):
    def train():
        try:
            impl.train_mini_gpt(_DeviceProbe(), torch.arange(100) % 4, 1, block_size=8, batch_size=2,
                                generator=generator(0))
        except _Arrived as arrived:
            return arrived.args[0]
        pytest.fail("Called train_mini_gpt(model, data, 1): it returned without running the model.")

    device = _run_on_meta(
        train,
        "train_mini_gpt(model whose parameters live on the meta device, CPU data, 1)",
        "Move the data (or each batch) to the device of the model's parameters.",
    )
    assert device.type == "meta", (
        f"Called train_mini_gpt(model whose parameters live on the meta device, CPU data, 1): the first batch "
        f"arrived on {device}. Because batches go to the device of the model's parameters (a model on a GPU "
        "trains on the GPU)."
    )


@pytest.mark.exercise("train_mini_gpt")
def test_train_mini_gpt_overfits_a_short_text(impl, reference):
    data, vocab = _text_data()
    model = _build(reference, 0, **{**TINY, "vocab_size": vocab, "max_len": 32}).float()
    start = time.perf_counter()
    history = impl.train_mini_gpt(
        model,
        data,
        80,
        val_data=data,
        block_size=16,
        batch_size=8,
        lr=1e-2,
        warmup_steps=10,
        weight_decay=0.0,
        generator=generator(0),
    )
    seconds = time.perf_counter() - start
    final = float(np.mean(history["train_loss"][-10:]))
    assert final < 0.5 and history["val_loss"][-1] < 0.5, (
        f"Called train_mini_gpt(MiniGPT(vocab {vocab}, embed 32, 2 layers), {data.numel()} tokens of a repeated "
        f"sentence, 80 steps, lr=1e-2): final train loss {final:.3f}, val loss {history['val_loss'][-1]:.3f} "
        f"(start {history['train_loss'][0]:.3f}), took {seconds:.1f} s; expected both below 0.5. A tiny model "
        "memorises a repeated sentence in a few seconds if the loop is right."
    )


@pytest.mark.exercise("train_mini_gpt")
def test_train_mini_gpt_rejects_bad_arguments(impl, reference):
    model = _build(reference, 0, **TINY)
    data = torch.arange(100) % 20
    for kwargs, value in (
        ({"steps": 2, "block_size": 32}, "32"),
        ({"steps": 0, "block_size": 8}, "0"),
        ({"steps": 1, "block_size": 8, "val_data": data[:8]}, "8"),
    ):
        call = format_call("train_mini_gpt", ("model", "data"), kwargs)
        with pytest.raises(ValueError, match=rf"(?<![\d.]){value}(?![\d.])"):
            impl.train_mini_gpt(model, data, **kwargs)
            pytest.fail(f"Called {call}: no ValueError naming {value}.")
    history = impl.train_mini_gpt(model, data, 1, block_size=16, batch_size=2, val_data=data[:17])
    assert len(history["val_loss"]) == 1, (
        "Called train_mini_gpt(model with max_len=16, data, 1, block_size=16, val_data of 17 tokens): block_size "
        "may equal max_len, and 17 tokens hold exactly one validation window; expected one val_loss."
    )
