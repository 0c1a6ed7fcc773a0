"""Checks for w07_char_lm: a character-level LSTM language model, its loss, training, sampling and plot.

The checks use their own tiny models (``_TinyLM``, ``_FixedLM``, ``_BigramLM``) where a check is about the
training loop, the loss or the sampler rather than about ``AdvancedCharLM``, so each exercise can be judged
on its own; ``_Spy`` wraps a model and records the mode and autograd state of every call.
"""

from __future__ import annotations

import contextlib
import io
import math
import time
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from checks.numerics import assert_close, compare_with_reference, format_call

pytestmark = [
    pytest.mark.kata("w07_char_lm"),
    # a catalogued mistake passes dropout to a one-layer nn.LSTM; the check that catches it turns the warning
    # into an error itself, so the other checks need not repeat it
    pytest.mark.filterwarnings("ignore:dropout option adds dropout:UserWarning"),
]

seeds = st.integers(0, 2**31 - 1)


# --- the checks' own helpers (oracles never call the code under test) ---------------------------------


@contextlib.contextmanager
def _seeded(seed: int):
    """Run a block (model construction, dropout) on a private copy of torch's RNG seeded with ``seed``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


class _Vocab:
    """The minimal vocabulary protocol ``sample`` relies on: encode and decode."""

    def __init__(self, chars: str):
        self.chars = chars
        self.index = {c: i for i, c in enumerate(chars)}

    def encode(self, text: str) -> list[int]:
        return [self.index[c] for c in text]

    def decode(self, ids) -> str:
        return "".join(self.chars[int(i)] for i in ids)

    def __len__(self) -> int:
        return len(self.chars)


class _TinyLM(nn.Module):
    """A small LSTM language model with the kata's protocol: forward(x, state=None) -> (logits, state)."""

    def __init__(self, vocab_size: int, dropout: float = 0.0, hidden: int = 24, seed: int = 0, scale: float = 1.0):
        super().__init__()
        with _seeded(seed):
            self.embedding = nn.Embedding(vocab_size, 12)
            self.lstm = nn.LSTM(12, hidden, batch_first=True)
            self.dropout = nn.Dropout(dropout)
            self.head = nn.Linear(hidden, vocab_size)
            with torch.no_grad():
                self.head.weight.mul_(scale)  # spread the logits: no near-ties for the greedy checks

    def forward(self, x, state=None):
        out, state = self.lstm(self.embedding(x), state)
        return self.head(self.dropout(out)), state


class _BigramLM(nn.Module):
    """Next-character logits from a fixed table: logits[b, t] = table[x[b, t]]; no state."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.table = nn.Parameter(table.clone())

    def forward(self, x, state=None):
        return self.table[x], state


class _FixedLM(nn.Module):
    """The same logits at every position, whatever the input: sampling from it draws i.i.d. characters."""

    def __init__(self, logits):
        super().__init__()
        self.register_buffer("logits", torch.as_tensor(logits, dtype=torch.float32))

    def forward(self, x, state=None):
        return self.logits.expand(*x.shape, -1).clone(), state


class _Spy(nn.Module):
    """Wraps a model; records (phase, model.training, torch.is_grad_enabled()) at every call."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner
        self.phase = "?"
        self.calls: list[tuple[str, bool, bool]] = []

    def forward(self, x, state=None):
        self.calls.append((self.phase, self.training, torch.is_grad_enabled()))
        return self.inner(x, state)


class _PhasedLoader:
    """A list of batches that tells the spy which loader it is reading from while it is iterated."""

    def __init__(self, batches, spy: _Spy, phase: str):
        self.batches, self.spy, self.phase = batches, spy, phase

    def __iter__(self):
        for batch in self.batches:
            self.spy.phase = self.phase
            yield batch


def _batches(ids: torch.Tensor, seq_len: int, sizes: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Consecutive (x, y) windows of ``ids`` grouped in batches of the given sizes (wrapping around)."""
    batches, start = [], 0
    for size in sizes:
        xs, ys = [], []
        for _ in range(size):
            if start + seq_len + 1 > len(ids):
                start = 0
            xs.append(ids[start:start + seq_len])
            ys.append(ids[start + 1:start + seq_len + 1])
            start += seq_len
        batches.append((torch.stack(xs), torch.stack(ys)))
    return batches


def _random_batches(seed: int, vocab_size: int, seq_len: int, sizes: list[int]):
    g = torch.Generator().manual_seed(seed)
    return _batches(torch.randint(0, vocab_size, (sum(sizes) * seq_len + 1,), generator=g), seq_len, sizes)


def _oracle_loss(model: nn.Module, batches) -> float:
    """The checks' own mean loss per token of ``model`` over ``batches``: eval mode, no grad, token-weighted."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for x, y in batches:
            logits, _ = model(x)
            total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="sum").item()
            count += y.numel()
    model.train(was_training)
    return total / count


def _greedy(model: nn.Module, ids: list[int], length: int) -> list[int]:
    """The checks' greedy decoding: re-read the whole text each step and take the argmax (eval mode)."""
    was_training = model.training
    model.eval()
    ids = list(ids)
    with torch.no_grad():
        for _ in range(length):
            logits, _ = model(torch.tensor([ids]))
            ids.append(int(logits[0, -1].argmax()))
    model.train(was_training)
    return ids


def _build(impl, seed: int, *args, **kwargs):
    with _seeded(seed):
        return impl.AdvancedCharLM(*args, **kwargs)


# --- AdvancedCharLM ----------------------------------------------------------------------------------


@st.composite
def lm_configs(draw):
    return {
        "vocab_size": draw(st.integers(2, 12)),
        "embedding_dim": draw(st.integers(1, 8)),
        "hidden_dim": draw(st.integers(1, 12)),
        "num_layers": draw(st.integers(1, 3)),
    }


@pytest.mark.exercise("AdvancedCharLM")
@settings(max_examples=15)
@given(config=lm_configs(), batch=st.integers(1, 4), steps=st.integers(1, 7), seed=seeds)
def test_shapes_of_logits_and_state(impl, config, batch, steps, seed):
    model = _build(impl, seed, **config, dropout=0.0).eval()
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, config["vocab_size"], (batch, steps), generator=g)
    call = f"AdvancedCharLM(**{config}, dropout=0.0)(x) with x of shape {tuple(x.shape)}"
    out = model(x)
    assert isinstance(out, tuple) and len(out) == 2, f"Called {call}. forward must return (logits, state), got {out!r}"
    logits, state = out
    expected = (batch, steps, config["vocab_size"])
    assert tuple(logits.shape) == expected, (
        f"Called {call}. logits have shape {tuple(logits.shape)}, expected {expected}."
    )
    assert logits.dtype == torch.float32, f"Called {call}. logits have dtype {logits.dtype}, expected torch.float32."
    assert isinstance(state, tuple) and len(state) == 2, f"Called {call}. state must be the LSTM's (h, c) pair."
    want = (config["num_layers"], batch, config["hidden_dim"])
    for name, tensor in zip(("h", "c"), state, strict=True):
        assert tuple(tensor.shape) == want, (
            f"Called {call}. {name} has shape {tuple(tensor.shape)}, expected (num_layers, B, hidden_dim) = {want}."
        )


@pytest.mark.exercise("AdvancedCharLM")
@settings(max_examples=15)
@given(config=lm_configs(), batch=st.integers(1, 3), steps=st.integers(2, 9), data=st.data(), seed=seeds)
def test_carrying_state_equals_one_long_call(impl, config, batch, steps, data, seed):
    model = _build(impl, seed, **config, dropout=0.3).eval()
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, config["vocab_size"], (batch, steps), generator=g)
    split = data.draw(st.integers(1, steps - 1), label="split")
    with torch.no_grad():
        whole, (h, c) = model(x)
        first, state = model(x[:, :split])
        rest, (h2, c2) = model(x[:, split:], state)
    call = f"model(x[:, :{split}]) then model(x[:, {split}:], state) on x of shape {tuple(x.shape)}, in eval mode"
    because = "the state returned by the first call must be where the second call starts from."
    assert_close(torch.cat([first, rest], dim=1), whole, call=call, because=because, rtol=1e-4, atol=1e-5)
    assert_close(h2, h, call=call + " (final h)", because=because, rtol=1e-4, atol=1e-5)
    assert_close(c2, c, call=call + " (final c)", because=because, rtol=1e-4, atol=1e-5)


@pytest.mark.exercise("AdvancedCharLM")
@settings(max_examples=10)
@given(config=lm_configs(), seed=seeds)
def test_zero_state_is_the_same_as_no_state(impl, config, seed):
    model = _build(impl, seed, **config, dropout=0.0).eval()
    x = torch.randint(0, config["vocab_size"], (2, 5), generator=torch.Generator().manual_seed(seed))
    zeros = torch.zeros(config["num_layers"], 2, config["hidden_dim"])
    with torch.no_grad():
        assert_close(model(x, (zeros, zeros.clone()))[0], model(x)[0], call="model(x, (zeros, zeros)) vs model(x)",
                     because="state=None means: start from an all-zero (h, c).", rtol=1e-5, atol=1e-6)


@pytest.mark.exercise("AdvancedCharLM")
@settings(max_examples=10)
@given(config=lm_configs(), steps=st.integers(1, 6), seed=seeds)
def test_sequences_in_a_batch_do_not_mix(impl, config, steps, seed):
    model = _build(impl, seed, **config, dropout=0.0).eval()
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, config["vocab_size"], (3, steps), generator=g)
    other = x.clone()
    other[1:] = (other[1:] + 1) % config["vocab_size"]  # change every sequence but the first
    with torch.no_grad():
        alone = model(x[:1])[0]
        first = model(other)[0][:1]
    assert_close(first, alone, call=f"model(x) with x of shape {tuple(other.shape)}, looking at sequence 0",
                 because="sequence 0's logits may not depend on the other sequences of the batch "
                         "(a (B, T) batch needs nn.LSTM(..., batch_first=True)).", rtol=1e-4, atol=1e-5)


@pytest.mark.exercise("AdvancedCharLM")
@settings(max_examples=5)
@given(seed=seeds)
def test_dropout_is_on_in_train_mode_and_off_in_eval_mode(impl, seed):
    model = _build(impl, seed, 10, 8, 16, 2, dropout=0.5)
    x = torch.randint(0, 10, (4, 6), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad(), _seeded(seed):
        model.eval()
        a, b = model(x)[0], model(x)[0]
        model.train()
        c, d = model(x)[0], model(x)[0]
    assert_close(a, b, call="model.eval(); model(x) twice, with dropout=0.5",
                 because="in eval mode dropout is off, so the model is deterministic (use nn.Dropout, not F.dropout).")
    assert not torch.allclose(c, d), (
        "Called model.train(); model(x) twice, with dropout=0.5. Both calls returned the same logits, "
        "because dropout is not applied in train mode - use the dropout argument."
    )


@pytest.mark.exercise("AdvancedCharLM")
def test_one_layer_model_builds_without_warnings(impl):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            model = _build(impl, 0, 5, 4, 6, num_layers=1, dropout=0.2)
        except Warning as w:
            raise AssertionError(
                f"Called AdvancedCharLM(5, 4, 6, num_layers=1, dropout=0.2). It warned: {w}. "
                "nn.LSTM's dropout acts between layers; pass it only when num_layers > 1."
            ) from None
    logits, _ = model.eval()(torch.zeros(1, 3, dtype=torch.long))
    assert tuple(logits.shape) == (1, 3, 5)


@pytest.mark.exercise("AdvancedCharLM")
@pytest.mark.parametrize("args", [(65,), (65, 128, 256, 2), (7, 3, 5, 1), (7, 3, 5, 3)])
def test_parameter_count_is_the_seed_architecture(impl, reference, args):
    count = sum(p.numel() for p in _build(impl, 0, *args).parameters())
    expected = sum(p.numel() for p in _build(reference, 0, *args).parameters())
    assert count == expected, (
        f"Called AdvancedCharLM{args}. It has {count:,} parameters, expected {expected:,} for "
        "Embedding -> LSTM(num_layers) -> Dropout -> Linear with these sizes."
    )


@pytest.mark.exercise("AdvancedCharLM")
@pytest.mark.parametrize("kwargs, bad", [
    ({"vocab_size": 0}, "0"), ({"vocab_size": 5, "hidden_dim": 0}, "0"), ({"vocab_size": 5, "num_layers": 0}, "0"),
    ({"vocab_size": 5, "dropout": 1.0}, "1.0"), ({"vocab_size": 5, "dropout": -0.1}, "-0.1"),
])
def test_bad_constructor_arguments_are_value_errors(impl, kwargs, bad):
    with pytest.raises(ValueError, match=f"(?<![0-9.]){bad}"):
        impl.AdvancedCharLM(**kwargs)


@pytest.mark.exercise("AdvancedCharLM")
def test_input_that_is_not_2d_is_a_value_error(impl):
    model = _build(impl, 0, 5, 4, 6, 1, dropout=0.0)
    with pytest.raises(ValueError, match=r"\(7,\)|\[7\]"):
        model(torch.zeros(7, dtype=torch.long))


# --- lm_loss / perplexity ----------------------------------------------------------------------------


LOGIT_SCALES = st.sampled_from([0.1, 1.0, 10.0])


@st.composite
def logits_and_targets(draw, scale=LOGIT_SCALES):
    batch, steps, vocab = draw(st.integers(1, 4)), draw(st.integers(1, 6)), draw(st.integers(2, 9))
    g = torch.Generator().manual_seed(draw(seeds))
    logits = torch.randn(batch, steps, vocab, generator=g, dtype=torch.float64) * draw(scale)
    targets = torch.randint(0, vocab, (batch, steps), generator=g)
    return logits, targets


@pytest.mark.exercise("lm_loss")
@given(logits_and_targets())
def test_lm_loss_matches_torch_cross_entropy(impl, pair):
    logits, targets = pair
    expected = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
    actual = impl.lm_loss(logits, targets)
    assert isinstance(actual, torch.Tensor), (
        f"lm_loss must return a tensor (training calls .backward()), got {actual!r}"
    )
    assert_close(actual, expected, call=format_call("lm_loss", (logits, targets)), rtol=1e-7, atol=1e-9,
                 because="the loss is the mean cross-entropy over all B*T positions.")


@pytest.mark.exercise("lm_loss")
@settings(max_examples=15)
@given(logits_and_targets(scale=st.just(1e4)))
def test_lm_loss_is_stable_for_large_logits(impl, reference, pair):
    logits, targets = pair
    compare_with_reference(impl, reference, "lm_loss", logits, targets, rtol=1e-7, atol=1e-6,
                           because="a stable log-softmax stays finite for logits of +-1e4.")


@pytest.mark.exercise("lm_loss")
@settings(max_examples=10)
@given(logits_and_targets())
def test_lm_loss_gradient_matches_torch(impl, pair):
    logits, targets = pair
    mine = logits.clone().requires_grad_(True)
    theirs = logits.clone().requires_grad_(True)
    loss = impl.lm_loss(mine, targets)
    assert isinstance(loss, torch.Tensor) and loss.requires_grad, (
        f"Called lm_loss on logits that require grad. Returned {loss!r}, which is not connected to the graph; "
        "keep it a tensor (no .item()) so training can call loss.backward()."
    )
    loss.backward()
    F.cross_entropy(theirs.reshape(-1, theirs.shape[-1]), targets.reshape(-1)).backward()
    assert_close(mine.grad, theirs.grad, call="lm_loss(logits, targets).backward()", rtol=1e-6, atol=1e-9,
                 because="d loss / d logits is (softmax - one_hot) / (B*T).")


@pytest.mark.exercise("lm_loss")
@given(batch=st.integers(1, 4), steps=st.integers(1, 8), vocab=st.integers(2, 100))
def test_lm_loss_of_uniform_logits_is_log_vocab(impl, batch, steps, vocab):
    logits = torch.zeros(batch, steps, vocab)
    targets = torch.arange(batch * steps).reshape(batch, steps) % vocab
    assert_close(impl.lm_loss(logits, targets), torch.tensor(math.log(vocab)),
                 call=format_call("lm_loss", (logits, targets)), rtol=1e-6, atol=1e-6,
                 because="a uniform distribution gives every character probability 1/V.")


@pytest.mark.exercise("lm_loss")
def test_lm_loss_with_mismatched_shapes_is_a_value_error(impl):
    with pytest.raises(ValueError, match=r"\(2, 3, 5\)|\[2, 3, 5\]"):
        impl.lm_loss(torch.zeros(2, 3, 5), torch.zeros(3, 2, dtype=torch.long))


@pytest.mark.exercise("lm_loss")
@given(vocab=st.integers(2, 80), sizes=st.lists(st.integers(1, 5), min_size=1, max_size=4), seed=seeds)
def test_perplexity_of_a_uniform_model_is_the_vocab_size(impl, vocab, sizes, seed):
    batches = _random_batches(seed, vocab, 5, sizes)
    result = impl.perplexity(_FixedLM(torch.zeros(vocab)), batches)
    assert isinstance(result, float), f"perplexity must return a Python float, got {type(result).__name__}"
    assert_close(result, float(vocab), call=f"perplexity(uniform model over {vocab} characters, batches of {sizes})",
                 rtol=1e-5, atol=0, because="a model that spreads its probability evenly over V characters is "
                                            "choosing among V of them: its perplexity is exactly V.")


@pytest.mark.exercise("lm_loss")
@settings(max_examples=15)
@given(seed=seeds, full=st.integers(3, 6), steps=st.integers(2, 6))
def test_perplexity_weights_every_token_equally(impl, seed, full, steps):
    """An unequal last batch: the mean of the batch means would weigh its few tokens as much as a full batch."""
    vocab = 6
    table = torch.randn(vocab, vocab, generator=torch.Generator().manual_seed(seed)) * 2
    model = _BigramLM(table)
    sizes = [full, full, 1]
    batches = _random_batches(seed + 1, vocab, steps, sizes)
    expected = math.exp(_oracle_loss(model, batches))
    assert_close(impl.perplexity(model, batches), expected, rtol=1e-5, atol=0,
                 call=f"perplexity(bigram model, batches of {sizes} sequences of {steps} characters)",
                 because="perplexity is exp(sum of all token losses / number of tokens): every token counts "
                         "once, whichever batch it is in.")


@pytest.mark.exercise("lm_loss")
@settings(max_examples=5)
@given(seed=seeds)
def test_perplexity_runs_in_eval_mode_without_grad_and_restores_the_mode(impl, seed):
    spy = _Spy(_TinyLM(5, dropout=0.5, seed=seed))
    batches = _random_batches(seed, 5, 4, [3, 2])
    expected = math.exp(_oracle_loss(spy, batches))
    spy.calls.clear()
    spy.train()
    result = impl.perplexity(spy, batches)
    assert spy.calls, "perplexity never called the model."
    assert all(not training for _, training, _ in spy.calls), (
        "perplexity called the model in train mode: call model.eval() first, or dropout makes the number noisy."
    )
    assert all(not grad for _, _, grad in spy.calls), (
        "perplexity called the model with autograd on: evaluate under torch.no_grad()."
    )
    assert spy.training, "perplexity left a model that was in train mode in eval mode: restore its mode at the end."
    assert_close(result, expected, call="perplexity(model with dropout=0.5, batches)", rtol=1e-5, atol=0,
                 because="it is the perplexity of the model with dropout off.")
    spy.eval()
    impl.perplexity(spy, batches)
    assert not spy.training, "perplexity put a model that was in eval mode into train mode."


@pytest.mark.exercise("lm_loss")
def test_perplexity_of_an_empty_loader_is_a_value_error(impl):
    with pytest.raises(ValueError):
        impl.perplexity(_FixedLM(torch.zeros(3)), [])


# --- train_char_lm -----------------------------------------------------------------------------------

SHORT_TEXT = "to be or not to be, that is the question. "
OVERFIT_BOUND = 0.3  # mean loss per character after OVERFIT_EPOCHS epochs; the reference reaches 0.04 - 0.05
OVERFIT_EPOCHS = 20  # x 4 batches = 80 optimizer steps, about half a second on one CPU core


@pytest.mark.exercise("train_char_lm")
@settings(max_examples=3)
@given(seed=seeds)
def test_training_overfits_a_short_text(impl, seed):
    vocab = _Vocab("".join(sorted(set(SHORT_TEXT))))
    ids = torch.tensor(vocab.encode(SHORT_TEXT * 4))
    batches = _batches(ids, 16, [4, 4, 4, 2])
    model = _TinyLM(len(vocab), hidden=48, seed=seed)
    initial = _oracle_loss(model, batches)
    started = time.perf_counter()
    with _seeded(seed):
        history = impl.train_char_lm(model, batches, batches[:1], epochs=OVERFIT_EPOCHS, lr=1e-2)
    seconds = time.perf_counter() - started
    final = _oracle_loss(model, batches)
    call = f"train_char_lm(model, 4 batches of '{SHORT_TEXT}' x 4, epochs={OVERFIT_EPOCHS}, lr=1e-2)"
    assert final < OVERFIT_BOUND, (
        f"Called {call} ({seconds:.1f} s). The loss per character went from {initial:.3f} to {final:.3f}; "
        f"a working loop gets below {OVERFIT_BOUND} on this tiny text. Check zero_grad / backward / step."
    )
    assert history["train_loss"][-1] < OVERFIT_BOUND, (
        f"Called {call}. The model learned (loss {final:.3f}) but history['train_loss'][-1] is "
        f"{history['train_loss'][-1]:.3f}: record the mean of the batch losses of each epoch."
    )


@pytest.mark.exercise("train_char_lm")
@settings(max_examples=5)
@given(seed=seeds)
def test_every_step_uses_only_its_own_batch_gradient(impl, seed):
    """With lr=0 the weights stay put, so the gradient after each backward must be that batch's gradient alone."""
    model = _TinyLM(5, dropout=0.0, seed=seed)
    batches = _random_batches(seed, 5, 4, [2, 3, 1])
    expected = []
    for x, y in batches:
        logits, _ = model(x)
        loss = F.cross_entropy(logits.reshape(-1, 5), y.reshape(-1))
        expected.append(torch.autograd.grad(loss, list(model.parameters())))
    seen: list[dict[str, torch.Tensor]] = []
    names = [name for name, _ in model.named_parameters()]

    def record(name):
        def hook(param):
            if not seen or name in seen[-1]:
                seen.append({})
            seen[-1][name] = param.grad.detach().clone()
        return hook

    handles = [p.register_post_accumulate_grad_hook(record(n)) for n, p in model.named_parameters()]
    try:
        impl.train_char_lm(model, batches, batches[:1], epochs=1, lr=0.0, grad_clip=None)
    finally:
        for handle in handles:
            handle.remove()
    assert len(seen) == len(batches), f"expected one backward per training batch ({len(batches)}), saw {len(seen)}"
    for step, (grads, want) in enumerate(zip(seen, expected, strict=True)):
        for name, g in zip(names, want, strict=True):
            assert_close(grads[name], g, rtol=1e-4, atol=1e-6,
                         call=f"train_char_lm(model, 3 batches, ..., epochs=1, lr=0.0): .grad of {name} after "
                              f"the backward of batch {step}",
                         because="every step must use the gradient of its own batch: zero the gradients before "
                                 "each backward (optimizer.zero_grad()), or they add up across batches.")


@pytest.mark.exercise("train_char_lm")
@pytest.mark.parametrize("epochs", [0, 1, 3])
def test_history_has_one_float_per_epoch(impl, epochs):
    batches = _random_batches(0, 5, 4, [2, 1])
    history = impl.train_char_lm(_TinyLM(5), batches, batches, epochs=epochs, lr=1e-3)
    assert isinstance(history, dict) and {"train_loss", "val_loss"} <= set(history), (
        f"train_char_lm must return a dict with 'train_loss' and 'val_loss', got {history!r}"
    )
    for key in ("train_loss", "val_loss"):
        values = history[key]
        assert len(values) == epochs, f"Called train_char_lm(..., epochs={epochs}). history[{key!r}] has " \
                                      f"{len(values)} entries, expected one per epoch ({epochs})."
        assert all(isinstance(v, float) and math.isfinite(v) for v in values), (
            f"history[{key!r}] must hold finite Python floats (use loss.item()), got {values!r}"
        )


@pytest.mark.exercise("train_char_lm")
@settings(max_examples=5)
@given(seed=seeds)
def test_validation_runs_in_eval_mode_without_grad_and_training_in_train_mode(impl, seed):
    spy = _Spy(_TinyLM(5, dropout=0.5, seed=seed)).eval()  # handed over in eval mode on purpose
    train = _PhasedLoader(_random_batches(seed, 5, 4, [2, 2]), spy, "train")
    val = _PhasedLoader(_random_batches(seed + 1, 5, 4, [2, 1]), spy, "val")
    with _seeded(seed):
        impl.train_char_lm(spy, train, val, epochs=3, lr=1e-3)
    val_calls = [(training, grad) for phase, training, grad in spy.calls if phase == "val"]
    train_calls = [(i, training, grad) for i, (phase, training, grad) in enumerate(spy.calls) if phase == "train"]
    assert len(val_calls) >= 3 * 2, f"validation should run the model on both val batches every epoch: {spy.calls}"
    assert not any(training for training, _ in val_calls), (
        "train_char_lm validated in train mode: dropout was on while measuring val_loss. Call model.eval() "
        "(or use perplexity) for validation."
    )
    assert not any(grad for _, grad in val_calls), (
        "train_char_lm validated with autograd on: wrap validation in torch.no_grad()."
    )
    wrong = [i for i, training, _ in train_calls if not training]
    assert not wrong, (
        f"train_char_lm trained in eval mode ({len(wrong)} of {len(train_calls)} training calls, the first at call "
        f"{wrong[0]}): call model.train() at the start of every epoch - validation switched it to eval mode."
    )
    assert all(grad for _, _, grad in train_calls), "train_char_lm ran training batches without autograd."


@pytest.mark.exercise("train_char_lm")
@settings(max_examples=5)
@given(seed=seeds, steps=st.integers(2, 5))
def test_epoch_losses_are_token_weighted_means(impl, seed, steps):
    """With lr=0 the model does not change, so both losses must be the plain per-token loss of the model."""
    model = _TinyLM(6, dropout=0.0, seed=seed)
    train = _random_batches(seed, 6, steps, [4, 4, 1])
    val = _random_batches(seed + 1, 6, steps, [3, 1])
    history = impl.train_char_lm(model, train, val, epochs=1, lr=0.0)
    assert_close(history["train_loss"][0], _oracle_loss(model, train), rtol=1e-5, atol=1e-6,
                 call="train_char_lm(model, train batches of [4, 4, 1] sequences, ..., epochs=1, lr=0.0)",
                 because="train_loss is sum(loss_b * tokens_b) / sum(tokens_b): the short last batch counts "
                         "for its 1 sequence, not as much as a full batch.")
    assert_close(history["val_loss"][0], _oracle_loss(model, val), rtol=1e-5, atol=1e-6,
                 call="train_char_lm(model, ..., val batches of [3, 1] sequences, epochs=1, lr=0.0)",
                 because="val_loss is the mean loss per token over the validation batches.")


@pytest.mark.exercise("train_char_lm")
@settings(max_examples=5)
@given(seed=seeds)
def test_val_loss_is_the_loss_without_dropout(impl, seed):
    model = _TinyLM(6, dropout=0.6, seed=seed)
    train = _random_batches(seed, 6, 4, [2])
    val = _random_batches(seed + 1, 6, 4, [2, 2])
    with _seeded(seed):
        history = impl.train_char_lm(model, train, val, epochs=1, lr=0.0)
    assert_close(history["val_loss"][0], _oracle_loss(model, val), rtol=1e-5, atol=1e-6,
                 call="train_char_lm(model with dropout=0.6, ..., epochs=1, lr=0.0)",
                 because="validation measures the model itself: in eval mode, with dropout off.")


@pytest.mark.exercise("train_char_lm")
@pytest.mark.parametrize("kwargs, bad", [({"epochs": -1}, "-1"), ({"epochs": 1, "lr": -0.5}, "-0.5"),
                                         ({"epochs": 1, "grad_clip": 0.0}, "0.0")])
def test_bad_training_arguments_are_value_errors(impl, kwargs, bad):
    batches = _random_batches(0, 4, 3, [1])
    with pytest.raises(ValueError, match=bad):
        impl.train_char_lm(_TinyLM(4), batches, batches, **kwargs)


# The challenge: Tiny Shakespeare, the learner's own AdvancedCharLM and train_char_lm, 1,000 Adam steps.
# The reference, 2 CPU threads: val_loss per epoch 2.021, 1.817, 1.710, 1.647, 1.593; about 0.05 s a step
# on an idle 2-core machine (about a minute in all; 11 minutes on a machine shared with 4 other torch jobs).
# The bound leaves about 0.2 of margin (for other seeds, optimizers and hardware).
CHALLENGE = {"embedding_dim": 64, "hidden_dim": 128, "num_layers": 2, "dropout": 0.0}
CHALLENGE_BATCH, CHALLENGE_SEQ, CHALLENGE_STEPS, CHALLENGE_EPOCHS, CHALLENGE_LR = 32, 128, 200, 5, 3e-3
CHALLENGE_VAL_BOUND = 1.80


class _RandomWindows:
    """Each pass yields ``steps`` batches of random windows of ``ids``, drawn from a seeded generator."""

    def __init__(self, ids: torch.Tensor, batch: int, seq_len: int, steps: int, seed: int):
        self.ids, self.batch, self.seq_len, self.steps = ids, batch, seq_len, steps
        self.generator = torch.Generator().manual_seed(seed)

    def __iter__(self):
        offsets = torch.arange(self.seq_len + 1)
        for _ in range(self.steps):
            starts = torch.randint(0, len(self.ids) - self.seq_len - 1, (self.batch,), generator=self.generator)
            windows = self.ids[starts[:, None] + offsets]
            yield windows[:, :-1], windows[:, 1:]


@pytest.mark.exercise("train_char_lm")
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_challenge_tiny_shakespeare(impl):
    from checks.data import CorpusUnavailable, load_corpus

    try:
        text = load_corpus("tinyshakespeare")
    except CorpusUnavailable as err:
        pytest.skip(str(err))
    chars = sorted(set(text))
    index = {c: i for i, c in enumerate(chars)}
    ids = torch.tensor([index[c] for c in text])
    split = int(0.9 * len(ids))  # nanoGPT's shakespeare_char split
    train = _RandomWindows(ids[:split], CHALLENGE_BATCH, CHALLENGE_SEQ, CHALLENGE_STEPS, seed=0)
    val = _batches(ids[split:split + 64 * 256 + 1], 256, [16, 16, 16, 16])  # 65,536 validation characters
    model = _build(impl, 0, len(chars), **CHALLENGE)
    started = time.perf_counter()
    with _seeded(0):
        history = impl.train_char_lm(model, train, val, epochs=CHALLENGE_EPOCHS, lr=CHALLENGE_LR)
    seconds = time.perf_counter() - started
    val_loss = history["val_loss"][-1]
    print(f"\nw07 challenge: AdvancedCharLM({len(chars)}, **{CHALLENGE}), "
          f"{CHALLENGE_EPOCHS} x {CHALLENGE_STEPS} steps of {CHALLENGE_BATCH} x {CHALLENGE_SEQ} characters: "
          f"val_loss {val_loss:.4f} (history {[round(v, 3) for v in history['val_loss']]}), "
          f"{seconds:.1f} s on {torch.get_num_threads()} threads")
    assert val_loss < CHALLENGE_VAL_BOUND, (
        f"After {CHALLENGE_EPOCHS * CHALLENGE_STEPS} steps on Tiny Shakespeare the validation loss is "
        f"{val_loss:.3f}; the reference reaches well below {CHALLENGE_VAL_BOUND}."
    )


# --- sample ------------------------------------------------------------------------------------------

CHARS = "abcdefgh"


@pytest.mark.exercise("sample")
@settings(max_examples=10)
@given(prompt=st.text(CHARS, min_size=1, max_size=5), length=st.integers(0, 15), seed=seeds)
def test_sample_returns_the_prompt_and_length_new_characters(impl, prompt, length, seed):
    vocab = _Vocab(CHARS)
    text = impl.sample(_TinyLM(len(CHARS), seed=seed), vocab, prompt, length,
                       generator=torch.Generator().manual_seed(seed))
    assert isinstance(text, str) and text.startswith(prompt) and len(text) == len(prompt) + length, (
        f"Called sample(model, vocab, {prompt!r}, {length}). Returned {text!r}; expected the prompt followed by "
        f"{length} new characters ({len(prompt) + length} in all)."
    )
    assert set(text) <= set(CHARS)


@pytest.mark.exercise("sample")
@settings(max_examples=10)
@given(seed=seeds, temperature=st.sampled_from([0.7, 1.0, 1.5]), top_k=st.sampled_from([None, 3]))
def test_the_same_seed_gives_the_same_text(impl, seed, temperature, top_k):
    vocab = _Vocab(CHARS)
    model = _TinyLM(len(CHARS), seed=seed, scale=0.2)  # flat-ish: many different texts are likely
    texts = [impl.sample(model, vocab, "ab", 40, temperature=temperature, top_k=top_k,
                         generator=torch.Generator().manual_seed(seed)) for _ in range(2)]
    assert texts[0] == texts[1], (
        f"Called sample(model, vocab, 'ab', 40, temperature={temperature}, top_k={top_k}, generator=...) twice "
        f"with generators seeded {seed}. Returned {texts[0]!r} and {texts[1]!r}; the same seed must give the "
        "same text: pass the generator on to torch.multinomial."
    )
    uniform = _FixedLM(torch.zeros(len(CHARS)))
    a, b = (impl.sample(uniform, vocab, "a", 40, generator=torch.Generator().manual_seed(s)) for s in (seed, seed + 1))
    assert a != b, (
        f"Called sample on a uniform model with generators seeded {seed} and {seed + 1}: both gave {a!r}. "
        "The text must come from the generator's random draws."
    )


@pytest.mark.exercise("sample")
@settings(max_examples=8)
@given(seed=seeds, prompt=st.text(CHARS, min_size=2, max_size=6),
       settings_=st.sampled_from([{"temperature": 0}, {"temperature": 0.0, "top_k": 3}, {"temperature": 1e-6},
                                  {"top_k": 1}, {"temperature": 2.0, "top_k": 1}]))
def test_greedy_limits_equal_the_argmax(impl, seed, prompt, settings_):
    vocab = _Vocab(CHARS)
    model = _TinyLM(len(CHARS), dropout=0.5, seed=seed, scale=8.0).train()  # in train mode on purpose
    expected = vocab.decode(_greedy(model, vocab.encode(prompt), 12))
    actual = impl.sample(model, vocab, prompt, 12, generator=torch.Generator().manual_seed(seed), **settings_)
    args = ", ".join(f"{k}={v}" for k, v in settings_.items())
    assert actual == expected, (
        f"Called sample(model, vocab, {prompt!r}, 12, {args}). Returned {actual!r}, expected the greedy text "
        f"{expected!r}, because temperature 0 means argmax (the T -> 0 limit; never divide by 0), and top_k=1 "
        "leaves only the argmax. Generate in eval mode, read the whole prompt, and carry the state."
    )
    assert model.training, "sample left a model that was in train mode in eval mode: restore its mode at the end."


@pytest.mark.exercise("sample")
@settings(max_examples=8)
@given(seed=seeds, temperature=st.sampled_from([0.5, 1.0, 2.0]), top_k=st.sampled_from([None, 2, 3, 9]),
       order=st.permutations(range(4)))
def test_samples_follow_softmax_of_logits_over_temperature(impl, seed, temperature, top_k, order):
    """A model with fixed logits yields i.i.d. draws: their frequencies must match the filtered softmax."""
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0])[list(order)]
    vocab = _Vocab("wxyz")
    draws = 2000
    text = impl.sample(_FixedLM(logits), vocab, "w", draws, temperature=temperature, top_k=top_k,
                       generator=torch.Generator().manual_seed(seed))
    counts = np.array([text[1:].count(c) for c in "wxyz"])
    scaled = logits.double() / temperature
    if top_k is not None and top_k < 4:
        scaled[scaled < torch.topk(scaled, top_k).values[-1]] = -math.inf
    p = torch.softmax(scaled, -1).numpy()
    call = f"sample(model with logits {logits.tolist()}, vocab, 'w', {draws}, temperature={temperature}, top_k={top_k})"
    excluded = [c for c, prob, n in zip("wxyz", p, counts, strict=True) if prob == 0 and n > 0]
    assert not excluded, (
        f"Called {call}. Characters outside the top {top_k} were drawn ({excluded}, counts {counts.tolist()}): set "
        "the other logits to -inf, not 0."
    )
    sigma = np.sqrt(draws * p * (1 - p))
    off = np.abs(counts - draws * p) > 5 * sigma + 2
    assert not off.any(), (
        f"Called {call}. Drew the characters {counts.tolist()} times; expected about "
        f"{np.round(draws * p).astype(int).tolist()} (softmax(logits / temperature)). Divide the logits by the "
        "temperature before the softmax."
    )


@pytest.mark.exercise("sample")
@pytest.mark.parametrize("kwargs, bad", [({"temperature": -1.0}, "-1.0"), ({"top_k": 0}, "0"), ({"length": -3}, "-3"),
                                         ({"prompt": ""}, "prompt")])
def test_bad_sampling_arguments_are_value_errors(impl, kwargs, bad):
    args = {"prompt": "ab", "length": 5, **kwargs}
    with pytest.raises(ValueError, match=bad):
        impl.sample(_TinyLM(len(CHARS)), _Vocab(CHARS), generator=torch.Generator().manual_seed(0), **args)


# --- plot_history ------------------------------------------------------------------------------------


@st.composite
def histories(draw):
    keys = draw(st.lists(st.sampled_from(["train_loss", "val_loss", "val_perplexity"]), min_size=1, max_size=3,
                         unique=True))
    values = st.floats(0.01, 10.0, allow_nan=False)
    return {key: draw(st.lists(values, min_size=1, max_size=8)) for key in keys}


@pytest.mark.exercise("plot_history")
@settings(max_examples=10)
@given(history=histories())
def test_plot_has_one_labelled_line_per_entry(impl, history):
    from matplotlib.figure import Figure

    fig = impl.plot_history(history)
    call = f"plot_history({history!r})"
    assert isinstance(fig, Figure), f"Called {call}. Returned {type(fig).__name__}, expected a matplotlib Figure."
    assert len(fig.axes) >= 1, f"Called {call}. The figure has no Axes."
    lines = [line for ax in fig.axes for line in ax.get_lines()]
    labels = [line.get_label() for line in lines]
    assert labels == list(history), f"Called {call}. The lines are labelled {labels}, expected {list(history)}."
    for line, (name, values) in zip(lines, history.items(), strict=True):
        x, y = np.asarray(line.get_xdata(), float), np.asarray(line.get_ydata(), float)
        assert_close(y, np.asarray(values), call=f"{call}, line {name!r} (y)", because="y is the recorded values.")
        assert_close(x, np.arange(1, len(values) + 1, dtype=float), call=f"{call}, line {name!r} (x)",
                     because="x is the epoch number, starting at 1.")
    legends = [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
    shown = [t.get_text() for legend in legends for t in legend.get_texts()]
    assert sorted(shown) == sorted(history), f"Called {call}. The legend shows {shown}, expected {list(history)}."
    ax = fig.axes[0]
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("epoch", "loss"), (
        f"Called {call}. The axes are labelled {ax.get_xlabel()!r} and {ax.get_ylabel()!r}, "
        "expected 'epoch' and 'loss'."
    )


@pytest.mark.exercise("plot_history")
def test_plot_uses_no_global_pyplot_state_and_renders(impl):
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    fig = impl.plot_history({"train_loss": [2.0, 1.5, 1.2], "val_loss": [2.1, 1.8, 1.7]})
    leaked = [n for n in plt.get_fignums() if n not in before]
    for n in leaked:
        plt.close(n)
    assert not leaked, (
        "plot_history registered a figure with pyplot (plt.figure / plt.subplots), which keeps it alive until "
        "plt.close: build it with matplotlib.figure.Figure() instead."
    )
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    assert buffer.getvalue().startswith(b"\x89PNG"), "the figure could not be rendered to PNG"


@pytest.mark.exercise("plot_history")
def test_empty_history_is_a_value_error(impl):
    with pytest.raises(ValueError):
        impl.plot_history({})
