"""Checks for w15_mini_gpt: a causal MiniGPT, batches, the optimizer, sampling, a KV cache and training.

Models here are tiny (vocab 20, embed 32, 2 layers) and run in float64 so that "equal" can mean equal to 1e-9:
greedy decoding then never flips on a rounding tie. Models used as fixtures for the sampling, cache and
training exercises are built from the *reference* MiniGPT, so those exercises do not depend on your model.
"""

from __future__ import annotations

import copy
import math
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from checks.numerics import assert_close, format_call
from checks.torch_strategies import generator, seeded, seeds

pytestmark = pytest.mark.kata("w15_mini_gpt")

TINY = {"vocab_size": 20, "embed_dim": 32, "num_heads": 4, "num_layers": 2, "ff_dim": 64, "max_len": 16, "dropout": 0.0}
TEXT = "the quick brown fox jumps over the lazy dog. "


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

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        if idx.shape[1] > self.max_len:
            raise ValueError(f"sequence length {idx.shape[1]} > max_len={self.max_len}")
        return self.logits.expand(idx.shape[0], idx.shape[1], -1)


@st.composite
def spread_logits(draw) -> tuple[torch.Tensor, float]:
    """Distinct logits (a shuffled ladder) and a temperature, so every kept token has probability >= ~1e-3."""
    vocab = draw(st.integers(3, 12))
    gap = draw(st.floats(0.05, 0.3))
    order = torch.randperm(vocab, generator=generator(draw(seeds)))
    temperature = draw(st.sampled_from([0.7, 1.0, 1.5, 2.0]))
    return order.double() * gap, temperature


def _sample_once(impl, logits: torch.Tensor, n: int, seed: int, **kwargs) -> torch.Tensor:
    """n independent next tokens from the constant model: one generate call on a batch of n one-token prompts."""
    model = _ConstantLM(logits).eval()
    out = impl.generate(model, torch.zeros(n, 1, dtype=torch.long), 1, generator=generator(seed), **kwargs)
    assert out.shape == (n, 2), (
        f"generate on a (n, 1) prompt with max_new_tokens=1 returned shape {tuple(out.shape)}, expected ({n}, 2)"
    )
    return out[:, 1]


def _check_support_and_frequencies(samples: torch.Tensor, expected: np.ndarray, call: str, because: str) -> None:
    n = samples.numel()
    support = set(np.flatnonzero(expected > 0).tolist())
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
@given(config=model_configs(), seed=seeds, batch=st.integers(1, 3))
def test_minigpt_matches_the_documented_layout_and_the_reference(impl, reference, config, seed, batch):
    ref = _sharpen_(_build(reference, seed, **config), seed)
    mine = _build(impl, seed, **config)
    missing, extra = _param_names(ref) - _param_names(mine), _param_names(mine) - _param_names(ref)
    assert not missing and not extra, (
        f"Called MiniGPT(**{config}). Its parameter names differ from the layout in the docstring: "
        f"missing {sorted(missing)}, unexpected {sorted(extra)}. The KV cache exercise reads these names."
    )
    mine.load_state_dict(ref.state_dict(), strict=False)
    idx = _tokens(seed, (batch, config["max_len"]), config["vocab_size"])
    with torch.no_grad():
        actual, expected = mine(idx), ref(idx)
    assert_close(
        actual,
        expected,
        call=f"MiniGPT(**{config})(idx of shape {tuple(idx.shape)}) with the reference's weights",
        because="with the same weights the model must compute the documented pre-norm GPT: "
        "x + attn(ln1(x)), x + mlp(ln2(x)), scaled causal attention, GELU, final LayerNorm, linear head.",
        rtol=1e-7,
        atol=1e-9,
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
        "attends to the future (no causal mask, as in the seed) learns to copy the answer and generates garbage.",
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


@pytest.mark.exercise("MiniGPT")
@settings(max_examples=10)
@given(seed=seeds)
def test_minigpt_starts_near_uniform(impl, seed):
    config = {**TINY, "vocab_size": 20}
    model = _build(impl, seed, **config)
    idx = _tokens(seed, (4, 16), 20)
    with torch.no_grad():
        logits = model(idx[:, :-1])
    loss = F.cross_entropy(logits.reshape(-1, 20), idx[:, 1:].reshape(-1)).item()
    assert abs(loss - math.log(20)) < 0.25, (
        f"Called MiniGPT(**{config}) freshly initialised: its loss on random tokens is {loss:.3f}, expected close to "
        f"ln(20) = {math.log(20):.3f}. Because with GPT-2's N(0, 0.02) init the first predictions are nearly "
        "uniform; PyTorch's default N(0, 1) embeddings, read back by the tied head, give huge logits."
    )


@pytest.mark.exercise("MiniGPT")
def test_minigpt_rejects_bad_input(impl):
    model = _build(impl, 0, **TINY)
    for bad in (20, 57, -1):
        idx = torch.tensor([[1, 2, bad]])
        with pytest.raises(ValueError, match=rf"{bad}"):
            model(idx)
    with pytest.raises(ValueError, match=r"17"):
        model(torch.zeros(1, 17, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\b10\b"):
        impl.MiniGPT(20, embed_dim=10, num_heads=4)
    with pytest.raises(ValueError, match=r"\b10\b"):
        impl.CausalSelfAttention(10, 4)


@pytest.mark.exercise("MiniGPT")
def test_minigpt_uses_dropout_only_in_train_mode(impl):
    model = _build(impl, 0, **{**TINY, "dropout": 0.5})
    idx = _tokens(0, (2, 8), 20)
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        a, b = model(idx), model(idx)
        model.train()
        c, d = model(idx), model(idx)
    assert_close(a, b, call="MiniGPT(dropout=0.5) in eval mode, called twice", because="eval mode turns dropout off.")
    assert not torch.allclose(c, d), (
        "MiniGPT(dropout=0.5) in train mode gave the same logits twice: dropout is not applied."
    )


# ---------------------------------------------------------------------------------------------------------
# get_batch
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.exercise("get_batch")
@given(seed=seeds, n=st.integers(2, 60), data=st.data(), as_numpy=st.booleans())
def test_get_batch_windows_are_shifted_slices_of_the_data(impl, seed, n, data, as_numpy):
    block = data.draw(st.integers(1, n - 1), label="block_size")
    batch = data.draw(st.integers(1, 8), label="batch_size")
    tokens = torch.randperm(n, generator=generator(seed))  # distinct ids: a window's first id gives its start
    source = tokens.numpy().astype(np.uint16) if as_numpy else tokens
    x, y = impl.get_batch(source, block, batch, generator(seed))
    call = format_call("get_batch", (source, block, batch, "generator"))
    assert isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor), f"Called {call}; it must return two tensors."
    assert x.shape == y.shape == (batch, block), (
        f"Called {call}. Got shapes {tuple(x.shape)}, {tuple(y.shape)}; expected ({batch}, {block}) twice."
    )
    assert x.dtype == y.dtype == torch.long, (
        f"Called {call}. Got dtypes {x.dtype}, {y.dtype}; nn.Embedding needs torch.long (int64)."
    )
    position = {int(t): i for i, t in enumerate(tokens)}
    for row in range(batch):
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
@given(seed=seeds)
def test_get_batch_is_reproducible_with_its_generator(impl, seed):
    tokens = torch.arange(1000)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        x1, y1 = impl.get_batch(tokens, 8, 16, generator(seed))
        torch.manual_seed(2)
        x2, y2 = impl.get_batch(tokens, 8, 16, generator(seed))
    assert torch.equal(x1, x2) and torch.equal(y1, y2), (
        f"Called get_batch(arange(1000), 8, 16, torch.Generator().manual_seed({seed})) twice, with the global RNG "
        "in different states: the batches differ. Because every random draw must come from `generator` "
        "(pass generator=generator to torch.randint), never from the global RNG."
    )


@pytest.mark.exercise("get_batch")
def test_get_batch_rejects_data_too_short(impl):
    with pytest.raises(ValueError, match=r"\b8\b"):
        impl.get_batch(torch.arange(8), 8, 2, generator(0))
    with pytest.raises(ValueError, match=r"\b0\b"):
        impl.get_batch(torch.arange(8), 0, 2, generator(0))


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
    model = _Toy() if kind == "toy" else _build(reference, 0, **{**TINY, "tie_weights": kind == "tied"})
    optimizer = impl.configure_optimizer(model, lr=3e-4, weight_decay=0.1)
    desc = {
        "toy": "a model with an embedding, linears, a LayerNorm and a frozen linear",
        "tied": "MiniGPT(tie_weights=True)",
        "untied": "MiniGPT(tie_weights=False)",
    }[kind]
    call = f"configure_optimizer({desc}, lr=3e-4, weight_decay=0.1)"
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
    for g in groups:
        assert g["lr"] == 3e-4 and tuple(g["betas"]) == (0.9, 0.95), (
            f"Called {call}. A group has lr={g['lr']}, betas={g['betas']}; expected lr=3e-4 and betas=(0.9, 0.95)."
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
@given(seed=seeds, batch=st.integers(1, 3), prompt=st.integers(1, 10), n=st.integers(0, 10))
def test_generate_greedy_crops_the_context_and_handles_batches(impl, reference, seed, batch, prompt, n):
    model = _fixture_model(reference, seed, max_len=8)
    idx = _tokens(seed, (batch, prompt), 20)
    expected, _ = _oracle_greedy(model, idx, n)
    call = f"generate(MiniGPT(max_len=8), idx of shape {tuple(idx.shape)}, max_new_tokens={n}, temperature=0)"
    out = impl.generate(model, idx.clone(), n, temperature=0)
    assert out.shape == expected.shape, (
        f"Called {call}. Returned shape {tuple(out.shape)}, expected {tuple(expected.shape)}. Because generation "
        "continues past max_len by cropping the context to its last max_len tokens; it never stops early "
        "(the seed stopped at 1024) and it handles every row of the batch (the seed used row 0 only)."
    )
    assert torch.equal(out, expected), (
        f"Called {call}. Returned {out.tolist()}, expected {expected.tolist()}. Because temperature=0 is greedy: "
        "each new token is the argmax of the model's logits at the last position, run in eval mode on the "
        "context cropped to the last max_len tokens, for every row independently."
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
    out, logits = impl.generate(model, idx.clone(), n, temperature=0, return_logits=True)
    assert_close(
        logits,
        expected_logits,
        call=f"generate(model, idx, {n}, temperature=0, return_logits=True)",
        because="return_logits gives the model's raw last-position logits of each step, shape (B, n, V).",
        rtol=1e-7,
        atol=1e-9,
    )


@pytest.mark.exercise("generate")
@settings(max_examples=15)
@given(spread=spread_logits(), data=st.data(), seed=seeds)
def test_generate_top_k_keeps_exactly_the_k_most_likely(impl, spread, data, seed):
    logits, temperature = spread
    k = data.draw(st.integers(1, logits.numel() + 2), label="top_k")
    samples = _sample_once(impl, logits, 20000, seed, temperature=temperature, top_k=k)
    expected = _expected_distribution(logits, temperature, top_k=min(k, logits.numel()))
    _check_support_and_frequencies(
        samples,
        expected,
        f"generate(constant logits {np.round(logits.numpy(), 3).tolist()}, temperature={temperature}, top_k={k})",
        "top_k keeps exactly the k highest logits (all of them when k >= vocab) and renormalises over them.",
    )


@pytest.mark.exercise("generate")
@settings(max_examples=15)
@given(spread=spread_logits(), top_p=st.floats(0.05, 1.0), top_k=st.none() | st.integers(2, 12), seed=seeds)
@example(spread=(torch.arange(8, dtype=torch.float64) * 0.3, 0.7), top_p=0.5, top_k=None, seed=0)
@example(spread=(torch.arange(8, dtype=torch.float64) * 0.3, 2.0), top_p=0.9, top_k=7, seed=0)
def test_generate_top_p_keeps_the_smallest_nucleus(impl, spread, top_p, top_k, seed):
    logits, temperature = spread
    top_k = None if top_k is None else min(top_k, logits.numel())
    base = _expected_distribution(logits, temperature, top_k=top_k)
    cumulative = np.cumsum(np.sort(base)[::-1])
    assume(np.abs(cumulative - top_p).min() > 1e-3)  # no boundary case that rounding could decide
    samples = _sample_once(impl, logits, 20000, seed, temperature=temperature, top_k=top_k, top_p=top_p)
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
        f"flags are {modes}. Because generate must put the model back in the mode it found it in (the seed left "
        "it in eval mode, so training after sampling silently ran without dropout)."
    )
    assert torch.equal(out, expected), (
        f"Called generate(model with dropout=0.5 in {'train' if training else 'eval'} mode, idx, 6, temperature=0). "
        f"Returned {out.tolist()}, expected {expected.tolist()}. Because sampling runs in eval mode: dropout off."
    )


@pytest.mark.exercise("generate")
@settings(max_examples=10)
@given(seed=seeds, top_k=st.none() | st.integers(2, 16))
def test_generate_is_reproducible_with_its_generator(impl, seed, top_k):
    model = _ConstantLM(torch.linspace(0.0, 0.5, 16))
    idx = torch.zeros(4, 1, dtype=torch.long)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        a = impl.generate(model, idx, 20, top_k=top_k, generator=generator(seed))
        torch.manual_seed(2)
        b = impl.generate(model, idx, 20, top_k=top_k, generator=generator(seed))
    assert torch.equal(a, b), (
        f"Called generate(model, idx, 20, top_k={top_k}, generator=torch.Generator().manual_seed({seed})) twice, "
        "with the global RNG in different states: the samples differ. Because every draw must use `generator` "
        "(torch.multinomial(probs, 1, generator=generator))."
    )


@pytest.mark.exercise("generate")
def test_generate_rejects_bad_arguments(impl, reference):
    model = _fixture_model(reference, 0)
    idx = torch.zeros(1, 2, dtype=torch.long)
    for kwargs, value in (
        ({"temperature": -0.5}, "-0.5"),
        ({"top_k": 0}, "0"),
        ({"top_p": 0.0}, "0.0"),
        ({"top_p": 1.5}, "1.5"),
    ):
        with pytest.raises(ValueError, match=value):
            impl.generate(model, idx, 3, **kwargs)
    with pytest.raises(ValueError):
        impl.generate(model, torch.zeros(3, dtype=torch.long), 3)


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
    for t in chunks:
        for layer in range(layers):
            k, v = (torch.randn(batch, heads, t, head_dim, generator=g, dtype=torch.float64) for _ in range(2))
            stored[layer][0].append(k)
            stored[layer][1].append(v)
            k_all, v_all = cache.update(layer, k, v)
            for name, got, parts in (("keys", k_all, stored[layer][0]), ("values", v_all, stored[layer][1])):
                assert_close(
                    got,
                    torch.cat(parts, dim=2),
                    call=f"{call}.update({layer}, ...) after chunks {chunks[: len(parts)]}",
                    because=f"update returns every cached {name} of that layer so far, oldest first: "
                    "(B, nh, cached + new, hs).",
                )
    total = sum(chunks)
    assert len(cache) == total, (
        f"Called {call} and appended chunks {chunks} to every layer; len(cache) is {len(cache)}, expected {total}."
    )
    over = torch.zeros(batch, heads, max_len - total + 1, head_dim, dtype=torch.float64)
    with pytest.raises(ValueError, match="max_len"):
        cache.update(0, over, over)
        pytest.fail(
            f"{call}: appending {max_len - total + 1} positions to {total} cached ones did not raise; "
            f"the cache must never grow past max_len={max_len} (a ValueError that mentions max_len)."
        )
    cache.reset()
    assert len(cache) == 0, f"Called {call}.reset(); len(cache) is {len(cache)}, expected 0."
    k = torch.ones(batch, heads, 1, head_dim, dtype=torch.float64)
    k_all, _ = cache.update(0, k, k)
    assert k_all.shape == (batch, heads, 1, head_dim), (
        f"Called {call}.reset() then update(0, one position): got shape {tuple(k_all.shape)}."
    )


@pytest.mark.exercise("KVCache")
@settings(max_examples=15)
@given(
    seed=seeds,
    batch=st.integers(1, 3),
    prompt=st.integers(1, 10),
    n=st.integers(1, 14),
    max_len=st.sampled_from([8, 16]),
)
def test_generate_cached_equals_generate_step_by_step(impl, reference, seed, batch, prompt, n, max_len):
    model = _fixture_model(reference, seed, max_len=max_len)
    idx = _tokens(seed, (batch, prompt), 20)
    expected, expected_logits = reference.generate(model, idx.clone(), n, temperature=0, return_logits=True)
    call = (
        f"generate_cached(MiniGPT(max_len={max_len}), idx of shape {tuple(idx.shape)}, {n}, temperature=0, "
        "return_logits=True)"
    )
    out, logits = impl.generate_cached(model, idx.clone(), n, temperature=0, return_logits=True)
    assert out.shape == expected.shape, (
        f"Called {call}. Returned shape {tuple(out.shape)}, expected {tuple(expected.shape)}."
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
def test_generate_cached_samples_like_generate(impl, reference, seed, temperature, top_k, top_p, training):
    model = _fixture_model(reference, seed, max_len=8, dropout=0.3)
    idx = _tokens(seed, (3, 4), 20)
    expected = impl.generate(model.eval(), idx.clone(), 10, temperature, top_k, top_p, generator=generator(seed))
    model.train(training)
    with seeded(seed):
        out = impl.generate_cached(model, idx.clone(), 10, temperature, top_k, top_p, generator=generator(seed))
    assert {m.training for m in model.modules()} == {training}, (
        f"Called generate_cached on a model in {'train' if training else 'eval'} mode; it must restore that mode."
    )
    assert torch.equal(out, expected), (
        f"Called generate_cached(model, idx, 10, temperature={temperature}, top_k={top_k}, top_p={top_p}, "
        f"generator=torch.Generator().manual_seed({seed})). Returned {out.tolist()}, but your generate with the "
        f"same arguments returned {expected.tolist()}. Because the cache changes how logits are computed, not "
        "how a token is drawn from them: reuse generate's sampling step, in eval mode."
    )


@pytest.mark.perf
@pytest.mark.exercise("KVCache")
def test_generate_cached_is_faster_than_generate(impl, reference, benchmark):
    """generate_cached vs the uncached reference generate, 256 new tokens, 4-layer MiniGPT, CPU, one thread.

    Each benchmark round first times one uncached run (in pedantic's untimed setup), then the cached run, so
    both see the same machine load; the ratio uses the best round of each.
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
    print(
        f"\nKV cache, {n} new tokens after a 16-token prompt, MiniGPT(**{config}), float32, 1 thread: "
        f"generate {n / min(uncached):.0f} tokens/s ({min(uncached):.2f} s), generate_cached "
        f"{n / min(cached):.0f} tokens/s ({min(cached):.2f} s): speed-up {ratio:.1f}x (required >= 3x)"
    )
    assert ratio >= 3, (
        f"generate_cached took {min(cached):.3f} s for {n} tokens, generate (no cache) {min(uncached):.3f} s: only "
        f"{ratio:.1f}x faster, expected at least 3x. Does each step run only the new token through the model?"
    )


# ---------------------------------------------------------------------------------------------------------
# train_mini_gpt
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.exercise("train_mini_gpt")
@settings(max_examples=10)
@given(seed=seeds, steps=st.integers(1, 12), data=st.data())
def test_train_mini_gpt_history_and_schedule(impl, reference, seed, steps, data):
    warmup = data.draw(st.integers(1, steps), label="warmup_steps")
    interval = data.draw(st.integers(1, steps), label="eval_interval")
    model = _build(reference, seed, **TINY)
    tokens = _tokens(seed, (200,), 20)
    history = impl.train_mini_gpt(
        model,
        tokens,
        steps,
        val_data=tokens[:60],
        block_size=8,
        batch_size=4,
        lr=1e-2,
        min_lr=1e-3,
        warmup_steps=warmup,
        eval_interval=interval,
        generator=generator(seed),
    )
    call = (
        f"train_mini_gpt(model, data, {steps}, block_size=8, lr=1e-2, min_lr=1e-3, warmup_steps={warmup}, "
        f"eval_interval={interval})"
    )
    for key in ("train_loss", "lr", "grad_norm"):
        assert len(history[key]) == steps, (
            f"Called {call}. history[{key!r}] has {len(history[key])} entries, expected one per step ({steps})."
        )
    assert_close(
        np.array(history["lr"]),
        np.array(_lr_schedule(steps, warmup, 1e-2, 1e-3)),
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
    steps, kwargs = (
        5,
        {
            "block_size": 8,
            "batch_size": 4,
            "lr": 1e-2,
            "min_lr": 1e-3,
            "warmup_steps": 2,
            "weight_decay": 0.1,
            "max_norm": 0.5,
        },
    )
    history = impl.train_mini_gpt(model, tokens, steps, generator=generator(seed), **kwargs)
    # The oracle: the recipe written out. Batches come from get_batch with an identically seeded generator
    # (the data pipeline has its own checks); the verdict is the parameters after training.
    g = generator(seed)
    optimizer = reference.configure_optimizer(oracle, kwargs["lr"], kwargs["weight_decay"])
    losses, norms = [], []
    oracle.train()
    for lr_now in _lr_schedule(steps, kwargs["warmup_steps"], kwargs["lr"], kwargs["min_lr"]):
        for group in optimizer.param_groups:
            group["lr"] = lr_now
        x, y = impl.get_batch(tokens, kwargs["block_size"], kwargs["batch_size"], g)
        loss = F.cross_entropy(oracle(x).reshape(-1, 20), y.reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        norms.append(float(torch.nn.utils.clip_grad_norm_(oracle.parameters(), kwargs["max_norm"])))
        optimizer.step()
        losses.append(loss.item())
    assert max(norms) > kwargs["max_norm"], "test set-up: the gradients must be large enough to be clipped"
    call = f"train_mini_gpt(model, data, {steps}, {', '.join(f'{k}={v}' for k, v in kwargs.items())})"
    recipe = (
        "each step: set the warmup-cosine lr, draw one batch with get_batch(data, block_size, batch_size, "
        "generator), mean cross-entropy over all B*T tokens, zero_grad, backward, clip_grad_norm_(max_norm) "
        "before optimizer.step(), with the optimizer from configure_optimizer."
    )
    assert_close(
        np.array(history["train_loss"]),
        np.array(losses),
        call=call,
        because="train_loss[s] is the loss of step s's batch; " + recipe,
        rtol=1e-7,
        atol=1e-9,
    )
    assert_close(
        np.array(history["grad_norm"]),
        np.array(norms),
        call=call,
        because="grad_norm[s] is the total norm before clipping; " + recipe,
        rtol=1e-7,
        atol=1e-9,
    )
    for (name, p), q in zip(model.named_parameters(), oracle.parameters(), strict=True):
        assert_close(
            p.detach(),
            q.detach(),
            call=call + f", parameter {name} after training",
            because=recipe,
            rtol=1e-6,
            atol=1e-9,
        )


@pytest.mark.exercise("train_mini_gpt")
@settings(max_examples=5)
@given(seed=seeds)
def test_train_mini_gpt_evaluates_in_eval_mode(impl, reference, seed):
    model = _build(reference, seed, **{**TINY, "dropout": 0.3})
    tokens, val = _tokens(seed, (200,), 20), _tokens(seed + 1, (41,), 20)
    with seeded(seed):
        history = impl.train_mini_gpt(
            model, tokens, 3, val_data=val, block_size=8, batch_size=4, generator=generator(seed)
        )
    model.eval()
    starts = torch.arange(0, 41 - 8, 8)
    x, y = val[starts[:, None] + torch.arange(8)], val[starts[:, None] + torch.arange(8) + 1]
    with torch.no_grad():
        expected = F.cross_entropy(model(x).reshape(-1, 20), y.reshape(-1)).item()
    assert history["val_loss"] and abs(history["val_loss"][-1] - expected) < 1e-9, (
        f"Called train_mini_gpt(model with dropout=0.3, data, 3, val_data of 41 tokens, block_size=8). The last "
        f"val_loss is {history['val_loss'][-1] if history['val_loss'] else None}, expected {expected:.6f}: the final "
        "model's mean loss over the non-overlapping windows val_data[0:8], [8:16], ... (targets shifted by one), "
        "in eval mode (no dropout) and without gradients."
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
    with pytest.raises(ValueError, match=r"\b32\b"):
        impl.train_mini_gpt(model, torch.arange(100) % 20, 2, block_size=32)
    with pytest.raises(ValueError, match=r"\b0\b"):
        impl.train_mini_gpt(model, torch.arange(100) % 20, 0, block_size=8)
