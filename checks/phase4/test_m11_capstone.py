"""Checks for m11_capstone: the whole-split validation loss, the Muon/AdamW split and the CPU training challenge.

``validation_loss`` is compared with the checks' own loop over every window, on a tiny float64 model whose
logits depend on the token AND its position (so a shifted, overlapping or missing window changes the number);
a spy records what the model was given and in which mode. ``split_parameters`` is compared with the split the
docstring describes, computed here from parameter identities. ``train_capstone`` gets its data only from the
checks' ``get_batch``, which counts tokens and refuses to go past the budget; the fast checks use tiny
budgets, the ``slow`` challenge trains on Tiny Shakespeare and scores the model with the checks' own loss over
the whole validation split, and the ``perf`` benchmark races the implementation against the checks' own
implementation of nanoGPT's CPU recipe (CPU seconds of training, one thread) and draws both curves.

Checklist notes (CONTRACTS.md items that do not apply, and why):
- Inputs (1): ``get_batch`` hands out fresh tensors on every call, and ``train_capstone`` has no other tensor
  input; ``validation_loss`` (data, model weights) and ``split_parameters`` (weights, requires_grad) are checked.
- dtypes and devices (3): ``validation_loss`` takes int64 and int32 ids and returns a Python float (checked)
  and moves windows to the model's device (checked on the meta device with a probe, since a meta model has no
  values to score); ``split_parameters`` creates nothing; ``train_capstone`` documents CPU training only (its
  model lives where MiniGPT puts it) and takes no dtype or device argument.
- Sizes (2): the smallest legal inputs are checked (one window, block_size 1, batch_size 1, a budget of one
  window); an empty split is an error (checked). ``split_parameters`` on a model without matrices in its
  blocks returns an empty Muon list (checked).
- Randomness (8): ``validation_loss`` draws nothing (a random-batch estimate is a catalogued mistake);
  ``train_capstone`` is seeded by ``seed``: same seed same model, another seed another model, and the global
  RNG untouched (checked).
- Numerics at scale (9): logits of +-1e4 in some rows, checked in float64 against log-softmax; long splits are
  the challenge's 111,540 validation characters.
- Structure (7): ``train_capstone`` may return any module (the learner's choice); only its interface is
  specified: (B, T) ids -> (B, T, V) finite, causal logits, up to block_size.
"""

from __future__ import annotations

import copy
import math
import re
import time

import pytest
import torch
import torch.nn.functional as F
from hypothesis import example, given, settings
from hypothesis import strategies as st
from torch import nn

from checks.numerics import assert_close, cause_line, format_call, likely_cause
from checks.torch_strategies import generator, randn, seeds

pytestmark = pytest.mark.kata("m11_capstone")

KATA = "m11_capstone"
DT = torch.float64
TIGHT = {"rtol": 1e-12, "atol": 1e-10}  # float64 sums of at most a few hundred terms


# --------------------------------------------------------------------------------------------------
# validation_loss


class _Scorer(nn.Module):
    """A tiny float64 language model whose logits depend on the token and on its position in the window:
    ``logits[b, t] = table[x[b, t]] + pos[t]``, then dropout (off unless ``dropout`` > 0).

    It records every call: the ids it got, its own and its dropout's mode, and whether grad was enabled. Its
    ``part`` submodule holds no weights; the checks put it in eval mode on purpose (a frozen part).
    """

    def __init__(self, vocab: int, max_len: int, seed: int, scale: float = 1.0, dropout: float = 0.0,
                 extreme_rows: int = 0) -> None:
        super().__init__()
        gen = generator(seed)
        table = randn(gen, vocab, vocab, scale=scale)
        table[:extreme_rows] *= 1e4  # logits of +-1e4 after some tokens only
        self.table = nn.Parameter(table)
        self.pos = nn.Parameter(randn(gen, max_len, vocab))
        self.drop = nn.Dropout(dropout)
        self.part = nn.Identity()
        self.max_len = max_len
        self.calls: list[dict] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append({"x": x.detach().clone(), "training": self.training, "dropout": self.drop.training,
                           "grad": torch.is_grad_enabled(), "dtype": x.dtype})
        return self.drop(self.table[x] + self.pos[: x.shape[1]])


def _expected_loss(model: _Scorer, data: torch.Tensor, T: int) -> float:
    """The docstring's number, window by window, from the model's weights (never from the code under test)."""
    ids = data.long()
    windows = (ids.numel() - 1) // T
    total = torch.zeros((), dtype=DT)
    with torch.no_grad():
        for i in range(windows):
            x, y = ids[i * T:(i + 1) * T], ids[i * T + 1:(i + 1) * T + 1]
            logits = model.table[x] + model.pos[:T]
            total += -(logits.log_softmax(-1).gather(-1, y[:, None])).sum()
    return float(total) / (windows * T)


@st.composite
def loss_cases(draw):
    """(model, data, kwargs): a vocabulary of 2-7 tokens, windows of 1-6, 1-12 windows plus a remainder,
    int64 or int32 ids, contiguous or strided, some rows of logits at +-1e4, batch_size drawn or defaulted."""
    seed = draw(seeds)
    vocab, T = draw(st.integers(2, 7)), draw(st.integers(1, 6))
    n = draw(st.integers(1, 12)) * T + 1 + draw(st.integers(0, T - 1))
    gen = generator(seed)
    stream = torch.randint(vocab, (2 * n,), generator=gen, dtype=draw(st.sampled_from([torch.int64, torch.int32])))
    data = stream[::2] if draw(st.booleans()) else stream[:n]  # a strided view must work as well
    model = _Scorer(vocab, T + draw(st.integers(0, 2)), seed, extreme_rows=draw(st.sampled_from([0, 0, 1, 2])))
    kwargs = {"block_size": T}
    if draw(st.booleans()):
        kwargs["batch_size"] = draw(st.integers(1, 5))
    return model, data, kwargs


def _call(model, data, kwargs) -> str:
    return format_call("validation_loss", (f"<model, vocab {model.table.shape[0]}>", data), kwargs)


@pytest.mark.exercise("validation_loss")
@settings(max_examples=30)
@given(case=loss_cases())
@example(case=(_Scorer(3, 4, 0, extreme_rows=1), torch.tensor([0, 1, 2, 0, 2, 1, 0, 0, 2, 1, 2]),
               {"block_size": 4, "batch_size": 2}))
def test_validation_loss_equals_a_loop_over_every_window(impl, case):
    model, data, kwargs = case
    pristine_data, pristine_state = data.clone(), copy.deepcopy(model.state_dict())
    expected = _expected_loss(model, data, kwargs["block_size"])
    actual = impl.validation_loss(model, data, **kwargs)
    call = _call(model, data, kwargs)
    assert isinstance(actual, float), (
        f"Called {call}. Returned {type(actual).__name__} {actual!r}; expected a Python float (use .item()), so "
        "that a caller can print, compare and store it without keeping tensors alive."
    )
    if not math.isclose(actual, expected, rel_tol=TIGHT["rtol"], abs_tol=TIGHT["atol"]):
        def rerun(candidate):
            return candidate(copy.deepcopy(model), data.clone(), **kwargs)

        cause = likely_cause(KATA, "validation_loss", rerun, actual, rtol=1e-9, atol=1e-9)
        assert_close(actual, expected, call=call, cause=cause, **TIGHT, because=(
            f"the loss is the mean cross-entropy over all {(data.numel() - 1) // kwargs['block_size']} windows "
            "data[i*T:(i+1)*T] -> data[i*T+1:(i+1)*T+1] (a remainder shorter than a window is left out), every "
            "token weighted the same, computed stably (log-softmax) even for logits of +-1e4."))
    assert torch.equal(data, pristine_data) and data.dtype == pristine_data.dtype, (
        f"Called {call}. It changed `data` in place; the caller still needs its token ids."
    )
    assert all(torch.equal(model.state_dict()[k], v) for k, v in pristine_state.items()), (
        f"Called {call}. It changed the model's parameters; evaluation must leave the weights alone."
    )
    dtypes = sorted({str(c["dtype"]) for c in model.calls})
    assert dtypes == ["torch.int64"], (
        f"Called {call} with {data.dtype} ids. The model got windows of dtype {', '.join(dtypes)}; expected "
        "torch.int64 only: the docstring promises model(x) an int64 tensor (an embedding or a model from another "
        "library may refuse int32 ids)."
    )


@pytest.mark.exercise("validation_loss")
@settings(max_examples=15)
@given(seed=seeds, windows=st.integers(1, 11), T=st.integers(1, 4), batch_size=st.integers(1, 4))
def test_validation_loss_reads_every_window_once_in_batches(impl, seed, windows, T, batch_size):
    n = windows * T + 1 + seed % T  # a remainder that must be left out
    data = torch.randint(5, (n,), generator=generator(seed))
    model = _Scorer(5, T, seed)
    impl.validation_loss(model, data, T, batch_size=batch_size)
    call = format_call("validation_loss", ("<model>", data), {"block_size": T, "batch_size": batch_size})
    sizes = [tuple(c["x"].shape) for c in model.calls]
    expected_sizes = [(min(batch_size, windows - s), T) for s in range(0, windows, batch_size)]
    assert sizes == expected_sizes, (
        f"Called {call}. The model got batches of shapes {sizes}; expected {expected_sizes}: the {windows} windows, "
        f"{batch_size} at a time (the last batch may be smaller), each window of block_size={T} tokens."
    )
    seen = torch.cat([c["x"] for c in model.calls]).long()
    expected = data[: windows * T].view(windows, T)
    assert torch.equal(seen, expected), (
        f"Called {call}. The model was given the windows\n{seen.tolist()}\nexpected, in order, the consecutive "
        f"non-overlapping windows\n{expected.tolist()}\nBecause window i is data[i*T:(i+1)*T]: every token is "
        "scored exactly once."
    )
    assert all(c["dtype"] == torch.int64 for c in model.calls), (
        f"Called {call}. The model got ids of dtype {[str(c['dtype']) for c in model.calls]}; expected torch.int64."
    )


@pytest.mark.exercise("validation_loss")
def test_validation_loss_default_batch_size_is_256(impl):
    T, windows = 2, 300
    data = torch.arange(windows * T + 1) % 4
    model = _Scorer(4, T, 0)
    impl.validation_loss(model, data, T)
    sizes = [c["x"].shape[0] for c in model.calls]
    assert sizes == [256, 44], (
        f"Called validation_loss(model, {windows * T + 1} tokens, 2): the model got batches of {sizes} windows; "
        "expected [256, 44]: the default batch_size is 256."
    )


def _mixed_mode_model(dropout: float, seed: int = 0) -> _Scorer:
    model = _Scorer(5, 4, seed, dropout=dropout).train()
    model.part.eval()  # a frozen part the caller keeps in eval mode
    return model


def _modes(model: nn.Module) -> dict[str, bool]:
    return {name or "<model>": m.training for name, m in model.named_modules()}


@pytest.mark.exercise("validation_loss")
@pytest.mark.parametrize("grad_enabled", [True, False])
def test_validation_loss_runs_in_eval_mode_without_grad_and_restores_both(impl, grad_enabled):
    model = _mixed_mode_model(dropout=0.5)
    before = _modes(model)
    data = torch.arange(41) % 5
    call = "validation_loss(model with dropout 0.5 in train mode and one submodule in eval mode, 41 tokens, 4)"
    with torch.set_grad_enabled(grad_enabled):
        first = impl.validation_loss(model, data, 4)
        grad_after = torch.is_grad_enabled()
    assert all(not c["training"] and not c["dropout"] for c in model.calls), (
        f"Called {call}. The model ran in train mode (dropout on) during evaluation; expected eval mode, so "
        "that the same model always gets the same score."
    )
    assert not any(c["grad"] for c in model.calls), (
        f"Called {call}. The model ran with gradients enabled; expected torch.no_grad(): evaluation never "
        "calls backward, and the graph costs memory."
    )
    assert _modes(model) == before, (
        f"Called {call}. Afterwards the modules' modes are {_modes(model)}; expected them as they were, {before}. "
        "Record each module's `training` flag before and put it back afterwards: model.train(was_training) also "
        "switches the submodule the caller kept in eval mode."
        + cause_line(lambda: _mode_cause(data))
    )
    assert grad_after == grad_enabled, (
        f"Called {call} with grad {'enabled' if grad_enabled else 'disabled'}: afterwards it is "
        f"{'enabled' if grad_after else 'disabled'}; the caller's grad mode must be left as it was."
    )
    second = impl.validation_loss(model, data, 4)
    expected = _expected_loss(model, data, 4)
    assert first == second and math.isclose(first, expected, rel_tol=1e-12, abs_tol=1e-10), (
        f"Called {call} twice: {first!r} and {second!r}; expected {expected!r} both times. The loss over the "
        "whole split in eval mode is deterministic."
    )


def _mode_cause(data):
    def matches(model):
        return _modes(model) == _modes(_mixed_mode_model(0.5))

    def run(candidate):
        model = _mixed_mode_model(0.5)
        candidate(model, data.clone(), 4)
        return model

    return likely_cause(KATA, "validation_loss", run, matches=lambda m: not matches(m))


class _Boom(Exception):
    pass


class _FailsLater(_Scorer):
    def forward(self, x):
        if self.calls:
            raise _Boom("the model failed on its second batch")
        return super().forward(x)


@pytest.mark.exercise("validation_loss")
def test_validation_loss_restores_the_modes_when_the_model_raises(impl):
    model = _FailsLater(5, 4, 0).train()
    model.part.eval()
    before = _modes(model)
    with pytest.raises(_Boom):
        impl.validation_loss(model, torch.arange(41) % 5, 4, batch_size=2)
    assert _modes(model) == before, (
        "Called validation_loss(model that raises on its second batch, 41 tokens, 4, batch_size=2). The error "
        f"went through, but the modes are now {_modes(model)}; expected {before}. Restore them in a `finally:` "
        "block, so that an error does not leave the caller's model in eval mode."
    )


class _DeviceProbe(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1, device="meta"))

    def forward(self, x):
        raise _Arrived(x.device)


class _Arrived(Exception):
    pass


@pytest.mark.exercise("validation_loss")
def test_validation_loss_sends_windows_to_the_model_device(impl):
    try:
        impl.validation_loss(_DeviceProbe(), torch.arange(9), 4)
        pytest.fail("Called validation_loss(model on the meta device, 9 CPU tokens, 4): it returned without "
                    "running the model.")
    except _Arrived as arrived:
        device = arrived.args[0]
    assert device.type == "meta", (
        f"Called validation_loss(model whose parameters live on the meta device, CPU data, 4): the windows "
        f"arrived on {device}. Because they go to the device of the model's parameters (a model on a GPU is "
        "evaluated on the GPU)."
    )


@pytest.mark.exercise("validation_loss")
def test_validation_loss_smallest_split_is_one_window(impl):
    model = _Scorer(3, 5, 1)
    data = torch.tensor([2, 0, 1, 1, 2, 0])
    actual = impl.validation_loss(model, data, 5, batch_size=1)
    expected = _expected_loss(model, data, 5)
    assert_close(actual, expected, call="validation_loss(model, 6 tokens, 5, batch_size=1)", **TIGHT,
                 because="6 tokens hold exactly one window of 5 inputs and 5 targets.")


class _FixedTable(nn.Module):
    """A language model without parameters: its logits are a fixed table of buffers (a lookup, an n-gram)."""

    def __init__(self, scorer: _Scorer) -> None:
        super().__init__()
        self.register_buffer("table", scorer.table.detach().clone())
        self.register_buffer("pos", scorer.pos.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.table[x] + self.pos[: x.shape[1]]


@pytest.mark.exercise("validation_loss")
def test_validation_loss_scores_a_model_without_parameters(impl):
    scorer = _Scorer(3, 4, 6)
    data = torch.tensor([0, 2, 1, 1, 0, 2, 2, 1, 0])
    call = "validation_loss(<model with buffers and no parameters>, 9 tokens, 4)"
    actual = impl.validation_loss(_FixedTable(scorer), data, 4)
    assert_close(actual, _expected_loss(scorer, data, 4), call=call, **TIGHT,
                 because="a model without parameters is scored like any other; its windows stay on the data's "
                 "device (next(model.parameters(), data).device).")


@pytest.mark.exercise("validation_loss")
def test_validation_loss_rejects_bad_arguments(impl):
    model = _Scorer(4, 8, 0)
    data = torch.arange(30) % 4
    shape_5_6 = r"\(5, 6\)|\[5, 6\]|tensor\(\[\["  # the shape (a tuple or a torch.Size), or the tensor itself
    cases = [  # (args, kwargs, patterns the message must match: the argument's name and the offending value)
        ((data[:8], 8), {}, ("8",)),  # 8 tokens: a window of 8 needs 9
        ((data, 9), {}, (r"\bblock_size\b", "9")),  # longer than max_len=8
        ((data.view(5, 6), 4), {}, (r"\bdata\b", shape_5_6)),
        ((data.tolist(), 4), {}, (r"\bdata\b", r"list|\[0, 1, 2, 3")),  # its type, or the list itself
        ((data.double(), 4), {}, (r"\bdata\b", "float|integer|int")),
        ((data, 0), {}, (r"\bblock_size\b", "0")),
        ((data, 4), {"batch_size": 0}, (r"\bbatch_size\b", "0")),
        ((data, True), {}, (r"\bblock_size\b", "True")),
        ((data, 4.0), {}, (r"\bblock_size\b", r"4\.0")),
        ((data, 4), {"batch_size": 2.0}, (r"\bbatch_size\b", r"2\.0")),
    ]
    for args, kwargs, patterns in cases:
        call = format_call("validation_loss", ("<model with max_len 8>", *args), kwargs)
        try:
            impl.validation_loss(model, *args, **kwargs)
        except ValueError as err:
            missing = [p for p in patterns if not re.search(p, str(err))]
            assert not missing, (
                f"Called {call}. Raised ValueError({str(err)!r}); expected its message to name the argument and "
                f"the offending value (for data: its shape, its type or the value itself): nothing in it matches "
                f"{missing}."
            )
        except NotImplementedError:
            raise  # an untouched stub: reported as "not implemented yet"
        except Exception as err:  # noqa: BLE001 - any other error is the wrong answer, reported as such
            pytest.fail(f"Called {call}. It raised {type(err).__name__}({err}) instead of a ValueError that names "
                        "the problem.")
        else:
            pytest.fail(f"Called {call}. It returned instead of raising a ValueError that names the problem.")


# --------------------------------------------------------------------------------------------------
# split_parameters


def _tiny_gpt(reference, tie: bool = True, layers: int = 2):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return reference.MiniGPT(11, 8, 2, layers, 16, 6, 0.0, tie_weights=tie)


def _expected_split(model):
    """The docstring's rule, from parameter identities: 2-D parameters inside model.blocks -> Muon."""
    hidden = {id(p) for p in model.blocks.parameters() if p.dim() == 2}
    params = [p for p in model.parameters() if p.requires_grad]
    return [p for p in params if id(p) in hidden], [p for p in params if id(p) not in hidden]


def _names(model, params) -> list[str]:
    names = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), name)
    return [names.get(id(p), f"<not a parameter of the model: {tuple(p.shape)}>") for p in params]


def _assert_split(impl, model, call: str) -> None:
    pristine = {n: (p.detach().clone(), p.requires_grad) for n, p in model.named_parameters()}
    result = impl.split_parameters(model)
    assert isinstance(result, tuple) and len(result) == 2 and all(isinstance(r, list) for r in result), (
        f"Called {call}. Returned {type(result).__name__}; expected a tuple of two lists (muon_params, adamw_params)."
    )
    muon, adamw = result
    exp_muon, exp_adamw = _expected_split(model)

    def ids(ps):
        return [id(p) for p in ps]

    if ids(muon) != ids(exp_muon) or ids(adamw) != ids(exp_adamw):
        def run(candidate):
            m, a = candidate(model)
            return ids(m), ids(a)

        cause = likely_cause(KATA, "split_parameters", run, matches=lambda r: r == (ids(muon), ids(adamw)))
        raise AssertionError(
            f"Called {call}.\nReturned Muon: {_names(model, muon)}\n         AdamW: {_names(model, adamw)}\n"
            f"expected Muon: {_names(model, exp_muon)}\n         AdamW: {_names(model, exp_adamw)}\nBecause Muon "
            "takes exactly the 2-D parameters inside model.blocks, AdamW every other trainable parameter; each "
            "trainable Parameter once (a tied or shared one too), frozen ones in neither, both lists in the order "
            "of model.parameters()." + cause_line(cause)
        )
    for name, p in model.named_parameters():
        value, requires_grad = pristine[name]
        assert torch.equal(p, value) and p.requires_grad == requires_grad, (
            f"Called {call}. It changed parameter {name} (values or requires_grad); the model must stay as it was."
        )


@pytest.mark.exercise("split_parameters")
@pytest.mark.parametrize("tie", [True, False], ids=["tied_head", "untied_head"])
def test_split_parameters_of_a_minigpt(impl, reference, tie):
    model = _tiny_gpt(reference, tie=tie)
    _assert_split(impl, model, f"split_parameters(MiniGPT(11, 8, 2, 2, 16, 6, tie_weights={tie}))")


@pytest.mark.exercise("split_parameters")
def test_split_parameters_leaves_out_frozen_parameters(impl, reference):
    model = _tiny_gpt(reference, tie=False)
    model.tok_emb.weight.requires_grad_(False)
    model.blocks[0].attn.qkv.weight.requires_grad_(False)
    model.blocks[1].ln1.bias.requires_grad_(False)
    _assert_split(impl, model, "split_parameters(MiniGPT with tok_emb, blocks[0]'s qkv weight and blocks[1]'s ln1 "
                               "bias frozen)")


@pytest.mark.exercise("split_parameters")
def test_split_parameters_lists_a_shared_block_once(impl, reference):
    model = _tiny_gpt(reference, tie=True, layers=1)
    model.blocks.append(model.blocks[0])  # two layers, one Block: ALBERT-style sharing
    _assert_split(impl, model, "split_parameters(MiniGPT whose two layers are one shared Block)")


class _Odd(nn.Module):
    """Not a MiniGPT: a 3-D and a 1-D parameter inside the blocks, a 2-D one outside, a module with no weights."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Linear(4, 4)  # 2-D, but outside the blocks: AdamW
        self.blocks = nn.Sequential(nn.Conv1d(4, 4, 3), nn.LayerNorm(4), nn.ReLU(), nn.Linear(4, 4, bias=False))
        self.scale = nn.Parameter(torch.ones(()))  # 0-D


@pytest.mark.exercise("split_parameters")
def test_split_parameters_takes_only_2d_parameters_of_the_blocks(impl):
    _assert_split(impl, _Odd(), "split_parameters(model with a Conv1d (3-D weight), LayerNorm and Linear in "
                                "nn.Sequential blocks, a Linear stem outside them and a 0-D scale)")
    flat = _Odd()
    flat.blocks = nn.Sequential(nn.LayerNorm(4))
    _assert_split(impl, flat, "split_parameters(model whose blocks hold only a LayerNorm)")


class _NoBlocks(nn.Module):
    def __init__(self, blocks):
        super().__init__()
        self.head = nn.Linear(3, 3)
        if blocks is not None:
            self.blocks = blocks


@pytest.mark.exercise("split_parameters")
@pytest.mark.parametrize("blocks", [None, "list"], ids=["missing", "plain_list"])
def test_split_parameters_rejects_a_model_without_blocks(impl, blocks):
    model = _NoBlocks(None if blocks is None else [nn.Linear(3, 3)])
    what = "no `blocks`" if blocks is None else "`blocks` = a plain Python list"
    with pytest.raises(ValueError, match="blocks"):
        impl.split_parameters(model)
        pytest.fail(f"Called split_parameters(model with {what}): expected a ValueError that names `blocks`.")


# --------------------------------------------------------------------------------------------------
# train_capstone


class _OverBudget(Exception):
    pass


class _Batches:
    """The checks' ``get_batch``: random windows of ``ids`` from a seeded generator, counting every token.

    A request that would go past ``budget`` raises ``_OverBudget`` and is remembered, so that code that
    catches the error still fails the check.
    """

    def __init__(self, ids: torch.Tensor, block_size: int, budget: int, seed: int = 0) -> None:
        self.ids, self.T, self.budget = ids, block_size, budget
        self.gen = generator(seed)
        self.used = 0
        self.sizes: list[int] = []
        self.refused: str | None = None

    def __call__(self, batch_size):
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            self.refused = f"get_batch({batch_size!r}): batch_size must be an int >= 1"
            raise _OverBudget(self.refused)
        if self.used + batch_size * self.T > self.budget:
            self.refused = (f"get_batch({batch_size}) after {self.used} tokens would read "
                            f"{self.used + batch_size * self.T}, past token_budget={self.budget}")
            raise _OverBudget(self.refused)
        self.used += batch_size * self.T
        self.sizes.append(batch_size)
        starts = torch.randint(self.ids.numel() - self.T, (batch_size,), generator=self.gen)
        rows = starts[:, None] + torch.arange(self.T)
        return self.ids[rows], self.ids[rows + 1]


def _cycle(vocab: int, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A stream in which every token determines the next: a random cyclic order of the vocabulary, repeated.
    Returns (stream, successor)."""
    order = torch.randperm(vocab, generator=generator(seed))
    successor = torch.empty(vocab, dtype=torch.long)
    successor[order] = order.roll(-1)
    return order.repeat(n // vocab + 2)[:n], successor


def _train(impl, batches: _Batches, vocab: int, call: str, **kwargs):
    """Run the learner's train_capstone; fail clearly when it went past the budget."""
    try:
        model = impl.train_capstone(batches, vocab, token_budget=batches.budget, **kwargs)
    except _OverBudget:
        model = None
    assert batches.refused is None, (
        f"Called {call}. {batches.refused}. Because the budget is the rule of the challenge: plan the number of "
        "steps and the batch size so that the tokens you ask for never exceed token_budget."
    )
    assert isinstance(model, nn.Module), f"Called {call}. Returned {type(model).__name__}; expected an nn.Module."
    return model


def _flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten().double() for p in model.parameters()])


TINY_T, TINY_V = 8, 10


@pytest.mark.exercise("train_capstone")
@pytest.mark.parametrize("budget", [5 * 16 * TINY_T + 37, 3 * TINY_T], ids=["five_batches_and_a_rest", "3_windows"])
def test_train_capstone_stays_within_the_budget_and_calls_back_after_every_step(impl, budget):
    stream, _ = _cycle(TINY_V, 400, 0)
    batches = _Batches(stream, TINY_T, budget)
    calls: list[tuple[int, nn.Module, torch.Tensor]] = []
    call = (f"train_capstone(get_batch, {TINY_V}, token_budget={budget}, block_size={TINY_T}, "
            "callback=record)")
    model = _train(impl, batches, TINY_V, call, block_size=TINY_T,
                   callback=lambda step, m: calls.append((step, m, _flat(m))))
    steps = [c[0] for c in calls]
    assert steps == list(range(1, len(steps) + 1)) and steps, (
        f"Called {call}. The callback got the steps {steps}; expected 1, 2, 3, ... - one call after every "
        "optimizer step, with the number of steps done so far, and at least one step (a budget that holds one "
        "window is enough for a smaller batch)." + cause_line(lambda: _callback_cause(budget, steps))
    )
    assert all(c[1] is model for c in calls), (
        f"Called {call}. The callback got another object than the model train_capstone returned; expected the "
        "model being trained itself (the benchmark evaluates it between steps)."
    )
    moved = [not torch.equal(a[2], b[2]) for a, b in zip(calls, calls[1:], strict=False)]
    assert all(moved), (
        f"Called {call}. Between callbacks {[i + 1 for i, m in enumerate(moved) if not m]} and the next one, no "
        "parameter changed; expected an optimizer step between two callbacks."
    )
    assert batches.used > 0, f"Called {call}. It never called get_batch: a model must learn from the data."


def _callback_cause(budget, steps):
    def run(candidate):
        got = []
        candidate(_Batches(_cycle(TINY_V, 400, 0)[0], TINY_T, budget), TINY_V, token_budget=budget,
                  block_size=TINY_T, callback=lambda s, m: got.append(s))
        return got

    return likely_cause(KATA, "train_capstone", run, matches=lambda got: got == steps)


@pytest.mark.exercise("train_capstone")
def test_train_capstone_returns_a_causal_model_of_the_right_shape(impl):
    stream, _ = _cycle(TINY_V, 400, 1)
    call = f"train_capstone(get_batch, {TINY_V}, token_budget={2 * 16 * TINY_T}, block_size={TINY_T})"
    model = _train(impl, _Batches(stream, TINY_T, 2 * 16 * TINY_T), TINY_V, call, block_size=TINY_T)
    model.eval()
    gen = generator(1)
    for shape in ((3, TINY_T), (2, 1), (1, TINY_T - 3)):
        x = torch.randint(TINY_V, shape, generator=gen)
        with torch.no_grad():
            logits = model(x)
        assert isinstance(logits, torch.Tensor) and tuple(logits.shape) == (*shape, TINY_V), (
            f"Called {call}, then model(ids of shape {shape}). Returned "
            f"{tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__}; expected "
            f"logits of shape {(*shape, TINY_V)}: (B, T, vocab_size) for any 1 <= T <= block_size."
        )
        assert logits.is_floating_point() and torch.isfinite(logits).all(), (
            f"Called {call}, then model(ids of shape {shape}): the logits are not all finite floats."
        )
    x = torch.randint(TINY_V, (2, TINY_T), generator=gen)
    changed = x.clone()
    changed[:, 5:] = (changed[:, 5:] + 1) % TINY_V
    with torch.no_grad():
        a, b = model(x), model(changed)
    assert torch.allclose(a[:, :5], b[:, :5], atol=1e-5, rtol=1e-5), (
        f"Called {call}, then compared the logits of two inputs that differ only after position 4: positions "
        f"0..4 changed by up to {(a[:, :5] - b[:, :5]).abs().max():.3g}. A language model's prediction at t may "
        "only depend on tokens 0..t (causal attention)."
    )


@pytest.mark.exercise("train_capstone")
def test_train_capstone_default_block_size_is_64(impl):
    stream, _ = _cycle(TINY_V, 400, 2)
    call = f"train_capstone(get_batch of 64-token windows, {TINY_V}, token_budget=64)"
    try:
        model = _train(impl, _Batches(stream, 64, 64), TINY_V, call)
    except ValueError as err:
        pytest.fail(f"Called {call}. Raised ValueError({err}); expected a model: with the default block_size of 64, "
                    "a budget of 64 tokens holds exactly one window (the smallest legal budget).")
    with torch.no_grad():
        logits = model.eval()(stream[:64][None])
    assert tuple(logits.shape) == (1, 64, TINY_V), (
        f"Called {call}, then model(1 x 64 ids): got shape {tuple(logits.shape)}; the default block_size is 64."
    )


@pytest.mark.exercise("train_capstone")
def test_train_capstone_takes_windows_longer_than_minigpts_default_max_len(impl):
    T = 1100  # MiniGPT's max_len defaults to 1024
    stream, _ = _cycle(TINY_V, 3 * T, 6)
    call = f"train_capstone(get_batch, {TINY_V}, token_budget={T}, block_size={T})"
    model = _train(impl, _Batches(stream, T, T), TINY_V, call, block_size=T)
    try:
        with torch.no_grad():
            logits = model.eval()(stream[:T][None])
    except Exception as err:  # noqa: BLE001 - any error here is the wrong answer, reported as such
        pytest.fail(f"Called {call}, then model(1 x {T} ids): it raised {type(err).__name__}({err}). The model must "
                    f"take windows of block_size tokens: build it with max_len=block_size (MiniGPT's default is 1024).")
    assert tuple(logits.shape) == (1, T, TINY_V), (
        f"Called {call}, then model(1 x {T} ids): got shape {tuple(logits.shape)}, expected {(1, T, TINY_V)}."
    )


def _whole_split_loss(model: nn.Module, data: torch.Tensor, T: int, batch: int = 256) -> float:
    """The checks' own measurement: the token-weighted loss over every window of ``data`` (eval, no grad)."""
    windows = (data.numel() - 1) // T
    x, y = data[: windows * T].view(windows, T), data[1: windows * T + 1].view(windows, T)
    was = [(m, m.training) for m in model.modules()]
    model.eval()
    total = 0.0
    try:
        with torch.no_grad():
            for s in range(0, windows, batch):
                logits = model(x[s:s + batch])
                total += F.cross_entropy(logits.flatten(0, 1).double(), y[s:s + batch].flatten(),
                                         reduction="sum").item()
    finally:
        for m, t in was:
            m.training = t
    return total / (windows * T)


LEARN_BUDGET = 12 * 16 * 16  # 12 batches of 16 windows of 16 tokens
LEARN_BOUND = 0.5  # from log(12) = 2.48: a model that learnt the successor of each token is far below


@pytest.mark.exercise("train_capstone")
def test_train_capstone_learns_a_predictable_sequence(impl):
    vocab, T = 12, 16
    stream, _ = _cycle(vocab, 2000, 3)
    held_out, _ = _cycle(vocab, 200, 3)
    held_out = held_out[5:]  # the same rule from another starting point
    call = f"train_capstone(get_batch, {vocab}, token_budget={LEARN_BUDGET}, block_size={T})"
    start = time.process_time()
    model = _train(impl, _Batches(stream, T, LEARN_BUDGET), vocab, call, block_size=T)
    seconds = time.process_time() - start
    loss = _whole_split_loss(model, held_out, T)
    assert loss < LEARN_BOUND, (
        f"Called {call} on a stream in which every token determines the next one; then the loss over held-out "
        f"text following the same rule is {loss:.3f} (uniform guessing: {math.log(vocab):.3f}); expected below "
        f"{LEARN_BOUND} ({seconds:.1f} CPU s). Does every step use get_batch's y as targets, take an optimizer "
        "step, and use a learning rate high enough to learn from a few thousand tokens?"
    )


@pytest.mark.exercise("train_capstone")
def test_train_capstone_is_repeatable_and_leaves_the_global_rng_alone(impl):
    stream, _ = _cycle(TINY_V, 400, 4)
    budget = 2 * 4 * TINY_T

    def run(seed):
        """Train with ``seed`` (None: leave it at its default); returns the call, the weights, the batch sizes."""
        batches = _Batches(stream, TINY_T, budget, seed=7)
        seeding = {} if seed is None else {"seed": seed}
        call = format_call("train_capstone", ("get_batch", TINY_V), {"token_budget": budget, "block_size": TINY_T,
                                                                      **seeding})
        model = _train(impl, batches, TINY_V, call, block_size=TINY_T, **seeding)
        return call, _flat(model), batches.sizes

    rng_before = torch.get_rng_state()
    call, first, sizes = run(11)
    rng_after = torch.get_rng_state()
    _, again, sizes_again = run(11)
    _, other, _ = run(12)
    _, zero, _ = run(0)
    _, default, _ = run(None)
    assert torch.equal(rng_before, rng_after), (
        f"Called {call}. The global random state (torch.get_rng_state()) changed. Because the caller's random "
        "numbers must not depend on your training: seed inside `with torch.random.fork_rng(devices=[]):`."
        + cause_line(lambda: _rng_cause(stream, budget))
    )
    assert sizes == sizes_again and first.shape == again.shape and torch.equal(first, again), (
        f"Called {call} twice with the same batches: the trained parameters differ (or the batch sizes asked "
        f"for: {sizes} vs {sizes_again}). The same seed must give exactly the same model."
    )
    assert first.shape != other.shape or not torch.equal(first, other), (
        f"Called {call} and the same with seed=12: the trained parameters are identical. Another seed must give "
        "another initialisation (is `seed` used?)."
    )
    assert zero.shape == default.shape and torch.equal(zero, default), (
        f"Called train_capstone(get_batch, {TINY_V}, token_budget={budget}, block_size={TINY_T}) without a seed and "
        "the same with seed=0: the models differ. The default seed is 0, so that a run without one is repeatable."
    )


def _rng_cause(stream, budget):
    def run(candidate):
        before = torch.get_rng_state()
        candidate(_Batches(stream, TINY_T, budget, seed=7), TINY_V, token_budget=budget, block_size=TINY_T, seed=11)
        return torch.equal(before, torch.get_rng_state())

    with torch.random.fork_rng(devices=[]):
        return likely_cause(KATA, "train_capstone", run, matches=lambda same: not same)


@pytest.mark.exercise("train_capstone")
def test_train_capstone_rejects_bad_arguments(impl):
    stream, _ = _cycle(TINY_V, 400, 5)
    cases = [  # (arguments changed, the argument whose name the message must hold, the offending value's pattern)
        ({"vocab_size": 0}, "vocab_size", "0"),
        ({"token_budget": 0}, "token_budget", "0"),
        ({"token_budget": TINY_T - 1}, "token_budget", str(TINY_T - 1)),
        ({"block_size": 0}, "block_size", "0"),
        ({"token_budget": 1e3}, "token_budget", r"1000\.0"),
        ({"vocab_size": True}, "vocab_size", "True"),
        ({"block_size": 8.0}, "block_size", r"8\.0"),
        ({"seed": True}, "seed", "True"),
        ({"seed": 1.5}, "seed", r"1\.5"),
    ]
    for change, name, value in cases:
        patterns = (rf"\b{name}\b", value)  # the name as a whole word: `XXseedXX` does not name `seed`
        kwargs = {"vocab_size": TINY_V, "token_budget": 4 * TINY_T, "block_size": TINY_T, **change}
        batches = _Batches(stream, TINY_T, 10**9)
        call = format_call("train_capstone", ("get_batch",), kwargs)
        try:
            impl.train_capstone(batches, **kwargs)
        except ValueError as err:
            missing = [p for p in patterns if not re.search(p, str(err))]
            assert not missing, (
                f"Called {call}. Raised ValueError({str(err)!r}); expected its message to name the argument and the "
                f"offending value: nothing in it matches {missing}."
            )
        except _OverBudget:
            pytest.fail(f"Called {call}. It asked get_batch for data instead of rejecting its arguments.")
        except NotImplementedError:
            raise  # an untouched stub: reported as "not implemented yet"
        except Exception as err:  # noqa: BLE001 - any other error is the wrong answer, reported as such
            pytest.fail(f"Called {call}. It raised {type(err).__name__}({err}) instead of a ValueError that names "
                        "the problem.")
        else:
            pytest.fail(f"Called {call}. It trained instead of raising a ValueError that names the problem.")
        assert batches.used == 0, f"Called {call}. It drew batches before rejecting its arguments."


# --- the challenge ------------------------------------------------------------------------------------------

CHALLENGE_BLOCK = 64
CHALLENGE_BUDGET = 512_000  # tokens: 500 batches of 16 x 64, what the reference uses
CHALLENGE_TARGET = 1.88  # validation loss over the whole validation split


def _shakespeare():
    """(train ids, validation ids, vocabulary size) of Tiny Shakespeare by characters; skips without the corpus."""
    from checks.data import CorpusUnavailable, char_level

    try:
        train, val, vocab = char_level("tinyshakespeare")  # nanoGPT's shakespeare_char split: the last 10% validates
    except CorpusUnavailable as err:
        pytest.skip(str(err))
    return torch.tensor(train), torch.tensor(val), vocab


@pytest.mark.exercise("train_capstone")
@pytest.mark.slow
@pytest.mark.mutation  # the recipe's constants (rates, schedule, sizes) are only seen through the loss they reach
@pytest.mark.timeout(1200)
def test_challenge_tiny_shakespeare(impl):
    train, val, vocab = _shakespeare()
    batches = _Batches(train, CHALLENGE_BLOCK, CHALLENGE_BUDGET)
    call = f"train_capstone(get_batch, {vocab}, token_budget={CHALLENGE_BUDGET:,}, block_size={CHALLENGE_BLOCK})"
    start = time.process_time()
    model = _train(impl, batches, vocab, call, block_size=CHALLENGE_BLOCK)
    seconds = time.process_time() - start
    loss = _whole_split_loss(model, val, CHALLENGE_BLOCK)
    print(f"\nm11 challenge: {call}: {batches.used:,} tokens in {len(batches.sizes)} batches, "
          f"{seconds:.1f} CPU s on {torch.get_num_threads()} threads, validation loss {loss:.4f} over the whole "
          f"split of {val.numel():,} characters (target <= {CHALLENGE_TARGET})")
    assert loss <= CHALLENGE_TARGET, (
        f"Called {call}. The validation loss over the whole validation split is {loss:.4f}; the challenge is "
        f"<= {CHALLENGE_TARGET} within the budget ({batches.used:,} tokens used). The reference reaches about "
        "1.86 with Muon on the block matrices, AdamW elsewhere, batches of 16 and warmup + cosine to zero."
    )


# --- the benchmark: side by side with nanoGPT's CPU recipe ---------------------------------------------------

RECIPE = {  # nanoGPT's README, "I only have a macbook": shakespeare_char on a CPU (the checks' own code below)
    "embed_dim": 128, "num_heads": 4, "num_layers": 4, "ff_dim": 512, "batch_size": 12, "iters": 2000,
    "lr": 1e-3, "min_lr": 1e-4, "warmup": 100, "betas": (0.9, 0.99), "weight_decay": 0.1, "max_norm": 1.0,
}
CURVE_POINTS = 8  # validation losses per run for the plot (their time is not counted)


def _nanogpt_recipe(model_class, batches: _Batches, vocab: int, on_step) -> nn.Module:
    """nanoGPT's train.py with the CPU recipe's settings: AdamW, decay on every parameter of 2 or more
    dimensions, warmup then cosine decay to min_lr, gradient clipping at 1.0."""
    r = RECIPE
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1337)  # nanoGPT's seed
        model = model_class(vocab, r["embed_dim"], r["num_heads"], r["num_layers"], r["ff_dim"], CHALLENGE_BLOCK, 0.0)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": r["weight_decay"]},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=r["lr"], betas=r["betas"])
    for it in range(r["iters"]):
        if it < r["warmup"]:
            lr = r["lr"] * (it + 1) / (r["warmup"] + 1)
        else:
            ratio = (it - r["warmup"]) / (r["iters"] - r["warmup"])
            lr = r["min_lr"] + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (r["lr"] - r["min_lr"])
        for group in optimizer.param_groups:
            group["lr"] = lr
        x, y = batches(r["batch_size"])
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), r["max_norm"])
        optimizer.step()
        on_step(it + 1, model)
    return model


class _Clock:
    """CPU seconds of training only: the time spent inside ``on_step`` (evaluation for the curve) is taken out."""

    def __init__(self, val: torch.Tensor, every: int) -> None:
        self.val, self.every = val, every
        self.excluded = 0.0
        self.curve: list[tuple[float, float]] = []
        self.start = time.process_time()

    def on_step(self, step: int, model: nn.Module) -> None:
        if step % self.every == 0:
            paused = time.process_time()
            loss = _whole_split_loss(model, self.val, CHALLENGE_BLOCK)
            self.curve.append((paused - self.start - self.excluded, loss))
            self.excluded += time.process_time() - paused

    def seconds(self) -> float:
        return time.process_time() - self.start - self.excluded


@pytest.mark.perf
@pytest.mark.exercise("train_capstone")
@pytest.mark.timeout(1800)
def test_capstone_is_three_times_faster_than_the_nanogpt_recipe(impl, reference, benchmark, bench_report):
    """The recipe and train_capstone side by side, one torch thread, CPU seconds of training
    (``time.process_time``), the same measurement over the whole validation split; writes both curves to a PNG."""
    train, val, vocab = _shakespeare()  # benchmarks run on one torch thread (checks/conftest.py)
    recipe = _Clock(val, RECIPE["iters"] // CURVE_POINTS)
    _nanogpt_recipe(reference.MiniGPT, _Batches(train, CHALLENGE_BLOCK, 10**9, seed=1), vocab, recipe.on_step)
    recipe_seconds, recipe_loss = recipe.seconds(), recipe.curve[-1][1]
    steps = CHALLENGE_BUDGET // (16 * CHALLENGE_BLOCK)
    ours = _Clock(val, max(1, steps // CURVE_POINTS))

    def run():
        ours.start, ours.excluded, ours.curve[:] = time.process_time(), 0.0, []
        return impl.train_capstone(_Batches(train, CHALLENGE_BLOCK, CHALLENGE_BUDGET, seed=2), vocab,
                                   token_budget=CHALLENGE_BUDGET, block_size=CHALLENGE_BLOCK,
                                   callback=ours.on_step)

    model = benchmark.pedantic(run, rounds=1, iterations=1)
    seconds = ours.seconds()
    loss = _whole_split_loss(model, val, CHALLENGE_BLOCK)
    ratio = seconds / recipe_seconds
    path = _plot(recipe.curve, ours.curve + [(seconds, loss)], recipe_seconds, seconds)
    print(f"\nm11 capstone vs nanoGPT's CPU recipe ({RECIPE['iters']} iterations of {RECIPE['batch_size']} x "
          f"{CHALLENGE_BLOCK}), 1 thread, CPU seconds of training:\n"
          f"  recipe:         val {recipe_loss:.4f} in {recipe_seconds:.1f} s\n"
          f"  train_capstone: val {loss:.4f} in {seconds:.1f} s ({CHALLENGE_BUDGET:,} tokens)\n"
          f"  ratio {ratio:.3f} of the recipe's CPU time (required <= 1/3, and val <= {CHALLENGE_TARGET})\n"
          f"  curves: {path}")
    bench_report(f"{ratio:.3f} of nanoGPT's CPU recipe's CPU time (target <= 1/3): val {loss:.4f} in {seconds:.1f} s "
                 f"vs the recipe's val {recipe_loss:.4f} in {recipe_seconds:.1f} s (target val <= {CHALLENGE_TARGET}); "
                 f"curves in {path}")
    assert loss <= CHALLENGE_TARGET, (
        f"train_capstone reached a validation loss of {loss:.4f}; the challenge is <= {CHALLENGE_TARGET}."
    )
    assert ratio <= 1 / 3, (
        f"train_capstone trained for {seconds:.1f} CPU s, the recipe for {recipe_seconds:.1f} s: {ratio:.2f} of its "
        "time, expected at most 1/3."
    )


def _plot(recipe_curve, our_curve, recipe_seconds, our_seconds):
    import matplotlib

    matplotlib.use("Agg")  # headless: a file, never a window
    from matplotlib.figure import Figure

    from checks.harness import paths

    figure = Figure(figsize=(7, 4.5))
    axes = figure.subplots()
    for curve, label in ((recipe_curve, f"nanoGPT CPU recipe ({recipe_seconds:.0f} s)"),
                         (our_curve, f"train_capstone ({our_seconds:.0f} s)")):
        axes.plot([c[0] for c in curve], [c[1] for c in curve], marker="o", label=label)
    axes.axhline(CHALLENGE_TARGET, color="grey", linestyle="--", label=f"target {CHALLENGE_TARGET}")
    axes.set_xlabel("CPU seconds of training (one thread)")
    axes.set_ylabel("validation loss (whole split)")
    axes.set_title("Tiny Shakespeare, characters")
    axes.legend()
    folder = paths.STATE_DIR / "bench"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "m11_capstone.png"
    figure.savefig(path, dpi=100)
    return path


# --- on a GPU: what the CPU cannot show ------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.exercise("validation_loss")
def test_validation_loss_on_cuda_with_cpu_data(impl):
    """A model on the GPU and token ids on the CPU: the windows AND their targets must move to the model."""
    model = _Scorer(5, 6, 8)
    data = torch.randint(5, (40,), generator=generator(8))
    expected = _expected_loss(model, data, 6)
    actual = impl.validation_loss(model.to("cuda"), data, 6, batch_size=2)
    assert_close(actual, expected, call="validation_loss(<float64 model on cuda>, 40 CPU tokens, 6, batch_size=2)",
                 rtol=1e-9, atol=1e-9, because="the device must not change the score.")


# Dense bf16 peak of the GPUs that the MFU figure knows (tensor cores, no sparsity), in FLOP/s.
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12, "A10G": 70e12}
GPU_CONFIG = {"embed_dim": 384, "num_heads": 6, "num_layers": 6, "ff_dim": 1536, "max_len": 256}  # nanoGPT's GPU run
GPU_BATCH, GPU_STEPS, GPU_WARMUP = 64, 40, 10


@pytest.mark.gpu
@pytest.mark.exercise("train_capstone")
@pytest.mark.timeout(900)
def test_minigpt_trains_with_bf16_autocast_and_torch_compile_on_cuda(impl, bench_report):
    """The GPU variant of the challenge: your MiniGPT (the one train_capstone builds on) at nanoGPT's GPU size for
    Tiny Shakespeare, compiled with torch.compile, its forward pass under bf16 autocast. The loss must fall, the
    compiled bf16 model must agree with the eager float32 one, and the run reports tokens per second and MFU (the
    model FLOPs per second as a fraction of the GPU's bf16 peak)."""
    try:
        train, _, vocab = _shakespeare()
    except pytest.skip.Exception:
        train, _ = _cycle(65, 200_000, 9)
        vocab = 65
    T = GPU_CONFIG["max_len"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = impl.MiniGPT(vocab, GPU_CONFIG["embed_dim"], GPU_CONFIG["num_heads"], GPU_CONFIG["num_layers"],
                             GPU_CONFIG["ff_dim"], T, dropout=0.0).to("cuda")
    batches = _Batches(train, T, 10**12, seed=3)
    x0, y0 = (t.to("cuda") for t in batches(8))
    with torch.no_grad():
        eager = F.cross_entropy(model(x0).float().flatten(0, 1), y0.flatten()).item()
    compiled = torch.compile(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.99), fused=True)

    def loss_of(x, y):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = compiled(x)
        return F.cross_entropy(logits.float().flatten(0, 1), y.flatten())

    with torch.no_grad():
        first = loss_of(x0, y0).item()
    assert abs(first - eager) < 0.05, (
        f"Before training, the compiled MiniGPT under bf16 autocast gives a loss of {first:.4f} on a batch where the "
        f"eager float32 model gives {eager:.4f}: a difference of bf16 rounding (< 0.05) is expected, not more."
    )
    losses, start = [], None
    for step in range(GPU_STEPS):
        if step == GPU_WARMUP:  # compiling and autotuning happen in the first steps: time the ones after
            torch.cuda.synchronize()
            start = time.perf_counter()
        x, y = (t.to("cuda", non_blocking=True) for t in batches(GPU_BATCH))
        loss = loss_of(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.detach())
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    losses = [v.item() for v in losses]
    tokens_per_s = (GPU_STEPS - GPU_WARMUP) * GPU_BATCH * T / seconds
    params = sum(p.numel() for p in model.parameters())
    flops_per_token = 6 * params + 12 * GPU_CONFIG["num_layers"] * GPU_CONFIG["embed_dim"] * T  # nanoGPT's count
    name = torch.cuda.get_device_name()
    peak = next((v for k, v in PEAK_BF16.items() if k in name), None)
    mfu = f"MFU {flops_per_token * tokens_per_s / peak:.1%} of {peak / 1e12:.0f} TFLOP/s" if peak else "MFU unknown"
    bench_report(f"GPU variant on {name}: MiniGPT {params / 1e6:.1f}M parameters, bf16 autocast + torch.compile, "
                 f"{tokens_per_s:,.0f} tokens/s, {mfu}; loss {losses[0]:.3f} -> {losses[-1]:.3f} in {GPU_STEPS} steps")
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0] - 0.5, (
        f"{GPU_STEPS} AdamW steps of the compiled bf16 MiniGPT took the loss from {losses[0]:.3f} to {losses[-1]:.3f}; "
        "expected finite losses that fall by more than 0.5 (the first steps learn the character frequencies)."
    )
