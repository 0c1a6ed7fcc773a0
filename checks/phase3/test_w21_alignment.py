"""Checks for w21_alignment: instruction data, accumulation, mixed precision, reward models, DPO, PPO, DDP.

The oracles are closed forms written here (NumPy's ``logaddexp`` for the log-sigmoid losses, a Python loop
over positions for log-probabilities), the libraries themselves (a tokenizer trained here for the SFT
examples, ``GPT2ForSequenceClassification`` for the reward model, plain full-batch PyTorch training for
accumulation and data parallelism, replays of the documented autocast / ``GradScaler`` calls) and
``torch.utils.checkpoint``'s promise of unchanged gradients. Tiny models are built once per module or from
drawn seeds; comparisons run in float64 with atol 1e-10 except where a check is about float32 or bfloat16,
whose tolerances come from those dtypes. The data-parallel check starts two gloo processes on 127.0.0.1
(``checks.processes.run_distributed``) that run the implementation under test, so a mistake there is caught
through the child processes; the same check first runs one step in its own process, which is also what lets
mutation testing see which checks call ``ddp_train_step``.

Checklist notes (CONTRACTS.md items that do not apply, and why):
- Randomness (8): no exercise takes a ``generator``. Module initialisation (``RewardModel``'s head) draws from
  the global RNG as ``nn.Linear`` does, checked statistically; dropout inside a checkpointed block draws from
  the global RNG, and the checks run it inside ``seeded`` with the same seed with and without checkpointing.
- Devices (3): without CUDA, ``RewardModel`` is built on the ``meta`` device (its head must follow the base
  model); the other functions create no tensors on their own beyond the inputs' (the SFT example is a CPU
  tensor of ids by definition). The mixed-precision step's ``device_type`` is observed on the CPU too (autocast
  for 'cuda' leaves CPU operations in float32). The CUDA path of the mixed-precision step (float16 as CUDA's
  default dtype) and the memory saving of checkpointing have ``gpu`` checks (skipped without CUDA).
- dtypes (3): the losses keep their inputs' dtype (float32 and float64 checked), the SFT tensors are
  ``torch.long``, the reward model follows its base model (float64 checked), autocast's dtype is observed on
  the layers' outputs (bfloat16 by default on the CPU, float16 when asked).
- Sizes (2): losses take any shape (0-2 dims checked) and reject empty inputs as documented; micro-batches of
  size 1 and unequal sizes are checked; a row without response tokens gives 0; ``max_length`` equal to the
  prompt length is rejected and one token more is the smallest legal case.
- State over time (6): ``accumulate_gradients`` adds to existing gradients (called twice); the mixed-precision
  step zeroes them and its scaler's scale evolves over calls; the data-parallel step runs twice with AdamW
  (optimizer state) and starts from leftover gradients, so a step that forgets ``zero_grad`` or calls it after
  the step is caught. Modes: ``accumulate_gradients`` and ``sequence_logprobs`` keep the model's mode (and the
  latter scores a model in train mode with its dropout), ``checkpointed_forward`` keeps the block's mode.
- Structure (7): ``RewardModel`` (parameters, head shape, weight and bias init bounds, dtype/device) is checked;
  the other exercises are functions.
- Numerics (9): the log-sigmoid losses take gaps of +-1e4, ``ppo_clip_loss`` takes log-probs of whole sequences
  (-800, -1200) whose ``exp`` underflows; the reward model's last real token may carry the pad id (pad == eos).
- Bools for ints (10): ``max_length=True``, ``beta=True`` and ``clip=True`` are rejected as documented; a nan
  ``max_grad_norm`` is rejected like any other that is not positive.
"""

from __future__ import annotations

import copy
import json
import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import example, given, settings
from hypothesis import strategies as st
from torch import nn

from checks.hub import byte_level_bpe
from checks.numerics import assert_close, describe, error_report, format_call, likely_cause
from checks.processes import free_port, run_distributed
from checks.torch_strategies import generator, randn, refill_, seeded, seeds

pytestmark = pytest.mark.kata("w21_alignment")

KATA = "w21_alignment"
DT = torch.float64
TIGHT = {"rtol": 1e-7, "atol": 1e-10}  # float64 against float64 oracles (different summation orders)
IGNORE = -100


def _fail(call: str, got: str, expected: str, because: str, cause: str | None = None) -> None:
    lines = [f"Called {call}.", f"Returned {got},", f"expected {expected}.", f"Because {because}"]
    if cause:
        lines.append(f"Likely cause: {cause}")
    raise AssertionError("\n".join(lines))


class _Module:
    """A stand-in for a kata module holding one function, for ``likely_cause`` runs of a catalogued mistake."""

    def __init__(self, **functions):
        self.__dict__.update(functions)


def _cause(symbol: str, run, actual=None, *, matches=None, **tolerance) -> str | None:
    """The catalogued mistake of ``symbol`` that reproduces the learner's result (see ``likely_cause``)."""
    return likely_cause(KATA, symbol, run, actual, matches=matches, **(tolerance or TIGHT))


def _check_close(actual, expected, *, call: str, because: str, symbol: str, run, **tolerance) -> None:
    """assert_close, naming the catalogued mistake that gives the same wrong answer when there is one."""
    tolerance = tolerance or TIGHT
    wrong = error_report(actual, expected, tolerance.get("rtol", 1e-6), tolerance.get("atol", 1e-9))
    cause = _cause(symbol, run, actual, **tolerance) if wrong else None
    assert_close(actual, expected, call=call, because=because, cause=cause, **tolerance)


def _assert_tensors_unchanged(call: str, pristine: dict, given_args: dict) -> None:
    """Every tensor argument still equals its pristine copy (values, shape, dtype, requires_grad)."""
    for name, before in pristine.items():
        if not isinstance(before, torch.Tensor):
            continue
        after = given_args[name]
        same = (after.shape == before.shape and after.dtype == before.dtype
                and after.requires_grad == before.requires_grad and torch.equal(after.detach(), before.detach()))
        assert same, (
            f"Called {call}. It modified its argument `{name}` in place: it was {describe(before)}, it is now "
            f"{describe(after)}.\nBecause the caller still needs its inputs: build new tensors instead of writing "
            "into them."
        )


# --------------------------------------------------------------------------------------------------
# format_instruction / build_sft_example

SEED_ITEMS = [
    {"instruction": "Explain the concept of machine learning", "input": "",
     "output": "Machine learning is a subset of artificial intelligence that enables computers to learn."},
    {"instruction": "Translate the following English text to French", "input": "Hello, how are you?",
     "output": "Bonjour, comment allez-vous?"},
    {"instruction": "Solve this math problem step by step", "input": "What is 15 * 23?",
     "output": "To solve 15 * 23:\n1. 15 * 20 = 300\n2. 15 * 3 = 45\n3. 300 + 45 = 345\nTherefore, 15 * 23 = 345"},
]


def _expected_text(item: dict) -> str:
    """The checks' own spelling of the Alpaca template (never the learner's)."""
    if item.get("input"):
        return (f"### Instruction:\n{item['instruction']}\n\n### Input:\n{item['input']}\n\n### Response:\n"
                f"{item['output']}")
    return f"### Instruction:\n{item['instruction']}\n\n### Response:\n{item['output']}"


def _text_call(item: dict) -> str:
    return f"format_instruction({item!r:.300})"


def _check_text(impl, item: dict) -> str:
    pristine = copy.deepcopy(item)
    given_item = copy.deepcopy(item)
    got = impl.format_instruction(given_item)
    expected = _expected_text(item)
    if got != expected:
        cause = _cause("format_instruction", lambda f: f(copy.deepcopy(pristine)), matches=lambda r: r == got)
        _fail(_text_call(pristine), repr(got), repr(expected),
              "the text follows the learning path's Alpaca template exactly: '### Instruction:\\n' + instruction, "
              "then '\\n\\n### Input:\\n' + input only when the input is not empty, then '\\n\\n### Response:\\n' + "
              "output; nothing stripped or added.", cause)
    assert given_item == pristine, f"Called {_text_call(pristine)}. It modified the item: it is now {given_item!r}."
    return got


@pytest.mark.exercise("format_instruction")
@pytest.mark.parametrize("index", range(len(SEED_ITEMS)))
def test_format_instruction_known_items(impl, index):
    _check_text(impl, SEED_ITEMS[index])


@pytest.mark.exercise("format_instruction")
def test_format_instruction_without_an_input_key(impl):
    item = {"instruction": "Name a colour", "output": "Blue"}
    _check_text(impl, item)
    _check_text(impl, {**item, "input": ""})


FIELD_TEXT = st.text(alphabet=st.sampled_from(list("ab Z\n\t:#{}é7")), max_size=12)


@pytest.mark.exercise("format_instruction")
@given(FIELD_TEXT, FIELD_TEXT, FIELD_TEXT, st.booleans())
@example("", "", "", True)
@example(" ", "{input}", "{output}", True)
@example("Name a colour", " ", "Blue", True)  # a blank input is not empty: its section is written, nothing stripped
@example("Name a colour", "\n", "Blue", True)
def test_format_instruction_is_prompt_plus_output(impl, instruction, extra, output, with_key):
    item = {"instruction": instruction, "output": output}
    if with_key:
        item["input"] = extra
    text = _check_text(impl, item)
    prompt = impl.format_instruction({**item, "output": ""})
    assert text == prompt + output, (
        f"Called {_text_call(item)} and format_instruction(the same item with output ''). Returned {text!r} and "
        f"{prompt!r}; the first must be the second followed by the output {output!r}, because the prompt is "
        "exactly the text before the response (build_sft_example relies on it)."
    )


@pytest.mark.exercise("format_instruction")
@pytest.mark.parametrize(("item", "error", "named"), [
    ({"input": "x", "output": "y"}, KeyError, "instruction"),
    ({"instruction": "x", "input": "y"}, KeyError, "output"),
    ({"instruction": "x", "input": None, "output": "y"}, TypeError, "input"),
    ({"instruction": "x", "output": 5}, TypeError, "output"),
    ({"instruction": 3.5, "output": "y"}, TypeError, "instruction"),
], ids=["no-instruction", "no-output", "input-None", "output-int", "instruction-float"])
def test_format_instruction_rejects_bad_items(impl, item, error, named):
    with pytest.raises(error) as info:
        impl.format_instruction(dict(item))
    assert named in str(info.value), (
        f"Called {_text_call(item)}. The {error.__name__} says {str(info.value)!r}; it must name the field {named!r}."
    )


@pytest.fixture(scope="module")
def tokenizers():
    """Byte-level BPE tokenizers trained here: pad id 0 / eos id 1; pad == eos; left padding; one that adds a bos
    token unless told not to (add_special_tokens=False); one that merges a newline with the space after it;
    factories of ones without a pad or an eos token."""
    from tokenizers import Tokenizer, processors
    from transformers.tokenization_utils_fast import PreTrainedTokenizerFast

    texts = [_expected_text(item) for item in SEED_ITEMS] * 2 + ["Name a colour. Blue, red, green and yellow."]
    saved = byte_level_bpe(texts, vocab_size=420)

    def wrap(**kwargs):
        return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(saved), eos_token="<|endoftext|>",
                                       **kwargs)


    def without(token: str):
        def make():  # a fresh one per call: a mistake may give it the missing token
            kwargs = {"eos_token": "<|endoftext|>", "pad_token": "<pad>"}
            del kwargs[token]
            return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(saved), **kwargs)
        return make

    with_bos = Tokenizer.from_str(saved)
    with_bos.post_processor = processors.TemplateProcessing(single="<|endoftext|> $A",
                                                            special_tokens=[("<|endoftext|>", 1)])
    adds_bos = PreTrainedTokenizerFast(tokenizer_object=with_bos, eos_token="<|endoftext|>", pad_token="<pad>")
    # one more merge, of a newline and the space after it ("\u010a\u0120" in byte-level spelling), as real
    # tokenizers have: tokenizing prompt + response as one text then fuses the prompt's last newline with a
    # response that starts with spaces
    fused = json.loads(saved)
    fused["model"]["vocab"]["\u010a\u0120"] = len(fused["model"]["vocab"])
    fused["model"]["merges"].insert(0, ["\u010a", "\u0120"])
    merges = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(fused)),
                                     eos_token="<|endoftext|>", pad_token="<pad>")
    return {"pad": wrap(pad_token="<pad>"), "pad-is-eos": wrap(pad_token="<|endoftext|>"), "adds-bos": adds_bos,
            "left": wrap(pad_token="<pad>", padding_side="left"), "no-pad": without("pad_token"),
            "no-eos": without("eos_token"), "merges-newline-space": merges}


def _expected_example(tokenizer, item: dict, max_length: int) -> dict[str, torch.Tensor]:
    """The checks' own SFT example: prompt and response tokenized apart, eos appended, cut, right-padded."""
    prompt = _expected_text({**item, "output": ""})
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    response_ids = tokenizer(item["output"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    ids = (prompt_ids + response_ids)[:max_length]
    n, pad = len(ids), max_length - len(ids)
    labels = [IGNORE] * len(prompt_ids) + response_ids
    return {"input_ids": torch.tensor(ids + [tokenizer.pad_token_id] * pad),
            "attention_mask": torch.tensor([1] * n + [0] * pad),
            "labels": torch.tensor(labels[:max_length] + [IGNORE] * pad)}


def _prompt_length(tokenizer, item: dict) -> int:
    return len(tokenizer(_expected_text({**item, "output": ""}), add_special_tokens=False)["input_ids"])


def _example_call(kind: str, item: dict, max_length: int) -> str:
    return f"build_sft_example(<tokenizer: {kind}>, {item!r:.200}, max_length={max_length})"


def _check_example(impl, tokenizers, kind: str, item: dict, max_length: int, because: str = "") -> dict:
    tokenizer = copy.deepcopy(tokenizers[kind])  # a mistake that changes it must not spoil the other checks
    pristine = copy.deepcopy(item)
    given_item = copy.deepcopy(item)
    state = (len(tokenizer), tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.padding_side)
    got = impl.build_sft_example(tokenizer, given_item, max_length)
    call = _example_call(kind, pristine, max_length)
    assert isinstance(got, dict) and set(got) == {"input_ids", "attention_mask", "labels"}, (
        f"Called {call}. Returned {got!r:.300}; expected a dict with exactly the keys input_ids, attention_mask and "
        "labels."
    )
    for name, value in got.items():
        assert isinstance(value, torch.Tensor) and value.dtype == torch.long and tuple(value.shape) == (max_length,), (
            f"Called {call}. Its {name} is {describe(value)}; expected a 1-D torch.long tensor of length "
            f"max_length={max_length}."
        )
    expected = _expected_example(tokenizer, pristine, max_length)
    for name in ("input_ids", "attention_mask", "labels"):
        if not torch.equal(got[name], expected[name]):
            cause = _cause("build_sft_example", lambda f, name=name: f(tokenizer, copy.deepcopy(pristine),
                                                                       max_length)[name], got[name], rtol=0, atol=0)
            assert_close(got[name], expected[name], call=f"{call}[{name!r}]", rtol=0, atol=0, cause=cause,
                         because=because or "the ids are the prompt's tokens, the response's tokens and eos (each "
                         "text tokenized on its own), cut to max_length and right-padded with the pad id; the mask "
                         "is 1 on real tokens; the labels are -100 on the prompt and the padding and the ids on the "
                         "response (eos included).")
    assert given_item == pristine, f"Called {call}. It modified the item: it is now {given_item!r}."
    after = (len(tokenizer), tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.padding_side)
    assert after == state, (
        f"Called {call}. It changed the tokenizer: (vocabulary size, pad id, eos id, padding side) went from {state} "
        f"to {after}; the caller's tokenizer must be left as it was."
    )
    return got


@pytest.mark.exercise("format_instruction")
@pytest.mark.parametrize("index", range(len(SEED_ITEMS)))
def test_sft_example_masks_the_prompt(impl, tokenizers, index):
    item = SEED_ITEMS[index]
    prompt = _prompt_length(tokenizers["pad"], item)
    _check_example(impl, tokenizers, "pad", item, prompt + 80)  # long enough for the response and some padding


@pytest.mark.exercise("format_instruction")
@settings(max_examples=40)
@given(st.sampled_from(SEED_ITEMS), FIELD_TEXT, st.integers(-3, 30),
       st.sampled_from(["pad", "pad-is-eos", "left", "adds-bos"]))
@example(SEED_ITEMS[1], "Bonjour", 20, "adds-bos")  # tokenized with add_special_tokens=False: no bos anywhere
def test_sft_example_labels_only_the_response(impl, tokenizers, base, output, extra, kind):
    item = {**base, "output": output}
    max_length = _prompt_length(tokenizers[kind], item) + max(extra, 1)  # from one response token to padding
    _check_example(impl, tokenizers, kind, item, max_length)


@pytest.mark.exercise("format_instruction")
def test_sft_example_keeps_the_eos_label_when_pad_is_eos(impl, tokenizers):
    item = SEED_ITEMS[1]
    max_length = _prompt_length(tokenizers["pad-is-eos"], item) + 30
    got = _check_example(impl, tokenizers, "pad-is-eos", item, max_length,
                         because="the pad token is the eos token here, and the real eos after the response must keep "
                                 "its label: decide what is padding by position (the attention mask), not by id.")
    eos = tokenizers["pad-is-eos"].eos_token_id
    n = int(got["attention_mask"].sum())
    assert got["labels"][n - 1] == eos, "the last real token is the eos, and it is labelled"


@pytest.mark.exercise("format_instruction")
def test_sft_example_tokenizes_prompt_and_response_apart(impl, tokenizers):
    # The prompt ends with a newline and this response starts with spaces; this tokenizer has a token for a newline
    # followed by a space. Tokenized as one text, that token straddles the boundary: the prompt's own tokens are no
    # longer a prefix of the ids, and slicing them off at len(prompt_ids) cuts the wrong place.
    kind = "merges-newline-space"
    item = {**SEED_ITEMS[1], "output": "  Bonjour, comment allez-vous?"}
    max_length = _prompt_length(tokenizers[kind], item) + 20
    _check_example(impl, tokenizers, kind, item, max_length,
                   because="the prompt and the response are tokenized each on its own (then joined), so that no token "
                           "straddles the boundary: tokenizing the whole text fuses the prompt's last newline with "
                           "the response's first space here, and the ids no longer start with the prompt's tokens.")


@pytest.mark.exercise("format_instruction")
def test_sft_example_truncates_the_response_end(impl, tokenizers):
    item = SEED_ITEMS[2]
    prompt = _prompt_length(tokenizers["pad"], item)
    for max_length in (prompt + 1, prompt + 3):
        got = _check_example(impl, tokenizers, "pad", item, max_length,
                             because="an example longer than max_length loses the END of its response (and its eos): "
                                     "the prompt stays whole, and there is no padding.")
        assert int(got["attention_mask"].sum()) == max_length


@pytest.mark.exercise("format_instruction")
@pytest.mark.parametrize(("max_length", "named"), [(0, "0"), (-4, "-4"), (True, "True"), (2.5, "2.5"),
                                                    (300.5, "300.5")])
def test_sft_example_rejects_a_bad_max_length(impl, tokenizers, max_length, named):
    with pytest.raises(ValueError) as info:
        impl.build_sft_example(tokenizers["pad"], dict(SEED_ITEMS[0]), max_length)
    assert named in str(info.value), (
        f"Called {_example_call('pad', SEED_ITEMS[0], max_length)}. The ValueError says {str(info.value)!r}; it must "
        f"name the offending max_length {named}."
    )


@pytest.mark.exercise("format_instruction")
def test_sft_example_rejects_a_prompt_that_fills_max_length(impl, tokenizers):
    item = SEED_ITEMS[1]
    prompt = _prompt_length(tokenizers["pad"], item)
    for max_length in (prompt, prompt - 5):
        call = _example_call("pad", item, max_length)
        with pytest.raises(ValueError) as info:
            impl.build_sft_example(tokenizers["pad"], dict(item), max_length)
        assert str(prompt) in str(info.value) and str(max_length) in str(info.value), (
            f"Called {call}. The ValueError says {str(info.value)!r}; it must name the prompt's {prompt} tokens and "
            f"max_length={max_length}, which leaves no room for a response token."
        )


@pytest.mark.exercise("format_instruction")
@pytest.mark.parametrize(("item", "error"), [({"instruction": "Name a colour", "input": ""}, KeyError),
                                             ({"instruction": "Name a colour", "output": None}, TypeError),
                                             ({"output": "Blue"}, KeyError)],
                         ids=["no-output", "None", "no-instruction"])
def test_sft_example_rejects_bad_items(impl, tokenizers, item, error):
    named = "instruction" if "instruction" not in item else "output"
    with pytest.raises(error) as info:
        impl.build_sft_example(tokenizers["pad"], dict(item), 200)
    assert named in str(info.value), (
        f"Called {_example_call('pad', item, 200)}. The {error.__name__} says {str(info.value)!r}; it must name the "
        f"field {named!r}, as format_instruction does."
    )


@pytest.mark.exercise("format_instruction")
@pytest.mark.parametrize("missing", ["pad", "eos"])
def test_sft_example_needs_pad_and_eos_tokens(impl, tokenizers, missing):
    tokenizer = tokenizers[f"no-{missing}"]()
    with pytest.raises(ValueError):
        impl.build_sft_example(tokenizer, dict(SEED_ITEMS[0]), 200)
    token = getattr(tokenizer, f"{missing}_token")
    assert token is None, (
        f"Called {_example_call(f'no-{missing}', SEED_ITEMS[0], 200)}. It gave the caller's tokenizer a {missing} "
        f"token ({token!r}); it must raise a ValueError and leave the tokenizer as it was."
    )


# --------------------------------------------------------------------------------------------------
# accumulate_gradients


def _classifier(seed: int, dtype=DT, n_in: int = 5, hidden: int = 8, n_out: int = 3) -> nn.Module:
    """A small MLP with weights from ``seed``, large enough that tanh leaves its linear regime."""
    with seeded(seed):
        model = nn.Sequential(nn.Linear(n_in, hidden), nn.Tanh(), nn.Linear(hidden, n_out))
    return refill_(model.to(dtype), seed, 0.7)


def _class_data(seed: int, n: int, dtype=DT, n_in: int = 5, n_out: int = 3):
    gen = generator(seed + 1)
    return randn(gen, n, n_in, dtype=dtype), torch.randint(0, n_out, (n,), generator=gen)


def _full_batch(model: nn.Module, x, y, loss_fn=F.cross_entropy):
    """The oracle: loss and gradients of the mean loss over the whole batch, in one pass."""
    model = copy.deepcopy(model)
    loss = loss_fn(model(x), y)
    loss.backward()
    return loss.item(), {name: p.grad.clone() for name, p in model.named_parameters()}


def _split(x, y, sizes):
    out, start = [], 0
    for size in sizes:
        out.append((x[start:start + size], y[start:start + size]))
        start += size
    return out


def _sizes_call(sizes, loss_fn="F.cross_entropy") -> str:
    return f"accumulate_gradients(model, micro-batches of sizes {list(sizes)}, {loss_fn})"


def _accumulated(module, model, batches, loss_fn=F.cross_entropy):
    """Run the code under test on a copy of ``model``; return (its result, that copy's gradients)."""
    model = copy.deepcopy(model)
    result = module.accumulate_gradients(model, batches, loss_fn)
    grads = {name: (p.grad.clone() if p.grad is not None else None) for name, p in model.named_parameters()}
    return result, grads


@st.composite
def split_sizes(draw):
    """A batch of 1-10 examples cut into 1 or more micro-batches of any (often unequal) sizes."""
    n = draw(st.integers(1, 10))
    cuts = sorted(draw(st.sets(st.integers(1, n - 1), max_size=n - 1))) if n > 1 else []
    bounds = [0, *cuts, n]
    return [b - a for a, b in zip(bounds, bounds[1:], strict=False)]


@pytest.mark.exercise("accumulate_gradients")
@settings(max_examples=30)
@given(seeds, split_sizes())
@example(seed=3, sizes=[3, 1])  # unequal: dividing by the number of micro-batches weighs the lone example 3x
@example(seed=4, sizes=[2, 2, 2])
def test_accumulation_equals_the_full_batch(impl, seed, sizes):
    model = _classifier(seed)
    x, y = _class_data(seed, sum(sizes))
    batches = _split(x, y, sizes)
    pristine = copy.deepcopy(batches)
    result, grads = _accumulated(impl, model, batches)
    call = _sizes_call(sizes)
    for (xb, yb), (xp, yp) in zip(batches, pristine, strict=True):
        _assert_tensors_unchanged(call, {"inputs": xp, "targets": yp}, {"inputs": xb, "targets": yb})
    assert isinstance(result, float), f"Called {call}. Returned {result!r}; expected the mean loss as a Python float."
    loss, expected = _full_batch(model, x, y)
    run = lambda f: _accumulated(_Module(accumulate_gradients=f), model, copy.deepcopy(pristine))  # noqa: E731
    for name, grad in expected.items():
        got = grads[name]
        assert got is not None, f"Called {call}. {name}.grad is None: every parameter must receive its gradient."
        _check_close(got, grad, call=f"{call} -> {name}.grad", symbol="accumulate_gradients",
                     run=lambda f, name=name: run(f)[1][name],
                     because="after accumulation .grad must hold the gradient of the mean loss over ALL examples: "
                             "weigh micro-batch i's mean loss by n_i / N (its share of the examples) before backward.")
    _check_close(result, loss, call=call, symbol="accumulate_gradients", run=lambda f: run(f)[0],
                 because="the returned loss is the mean over all examples: the sum of the weighted micro-batch losses.")


def _grad_gap(got: dict, expected: dict) -> tuple[float, float, str]:
    """The largest max and mean gap relative to the gradient's own max and mean size, and where it is."""
    worst = (0.0, 0.0, "")
    for name, want in expected.items():
        have = got[name]
        if have is None:
            return math.inf, math.inf, name
        gap = (have - want).abs()
        max_rel = (gap.max() / want.abs().max().clamp_min(1e-30)).item()
        mean_rel = (gap.mean() / want.abs().mean().clamp_min(1e-30)).item()
        if max(max_rel, mean_rel) > max(worst[:2]):
            worst = (max_rel, mean_rel, name)
    return worst


@pytest.mark.exercise("accumulate_gradients")
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_accumulation_micro_batch_sizes_are_interchangeable_in_float32(impl, seed):
    # The invariant training libraries test: 1 x 8 == 8 x 1 == 2 x 4 == 4 x 2 in float32, on the loss and on the
    # gradients, with a bound on the MEAN gap as well as the max, so a wrong scale cannot hide in rounding noise
    # (float32 noise here is ~5e-7 of the gradient's size; a missing 1/N is 100% or more).
    model = _classifier(seed, torch.float32, n_in=16, hidden=32, n_out=10)
    x, y = _class_data(seed, 8, torch.float32, n_in=16, n_out=10)
    runs = {}
    for size in (8, 1, 2, 4):
        batches = _split(x, y, [size] * (8 // size))
        runs[size] = _accumulated(impl, model, batches)
    base_loss, base_grads = runs[8]
    loss, expected = _full_batch(model, x, y)
    assert abs(base_loss - loss) <= 1e-6 * abs(loss), (
        f"Called {_sizes_call([8])} in float32. Returned {base_loss!r}; expected the batch's mean loss {loss!r}."
    )
    max_rel, mean_rel, name = _grad_gap(base_grads, expected)
    assert max_rel <= 1e-5 and mean_rel <= 2e-6, (
        f"Called {_sizes_call([8])} in float32 (one micro-batch). {name}.grad differs from the full batch's gradient "
        f"by {max_rel:.3g} (max) and {mean_rel:.3g} (mean) of its size; float32 allows 1e-5 and 2e-6."
    )
    for size in (1, 2, 4):
        sizes = [size] * (8 // size)
        got_loss, got_grads = runs[size]
        max_rel, mean_rel, name = _grad_gap(got_grads, base_grads)
        ratio = (got_grads[name] / base_grads[name]).nanmedian().item() if name and got_grads[name] is not None else 0
        assert max_rel <= 1e-5 and mean_rel <= 2e-6, (
            f"Called {_sizes_call(sizes)} and {_sizes_call([8])} in float32 on the same 8 examples. {name}.grad "
            f"differs by {max_rel:.3g} (max) and {mean_rel:.3g} (mean) of its size; float32 allows 1e-5 and 2e-6 "
            f"(the typical ratio of the two gradients is {ratio:.4g}).\nBecause {8 // size} micro-batches of {size} "
            "must give the gradient of one batch of 8: each micro-batch's mean loss counts with weight n_i / N."
        )
        assert abs(got_loss - base_loss) <= 1e-6 * abs(base_loss), (
            f"Called {_sizes_call(sizes)} in float32. Returned {got_loss!r}; with one micro-batch of 8 the loss is "
            f"{base_loss!r}, and the split must not change it."
        )


@pytest.mark.exercise("accumulate_gradients")
def test_accumulation_adds_to_existing_gradients_and_does_not_step(impl):
    model = _classifier(11)
    x, y = _class_data(11, 6)
    _, expected = _full_batch(model, x, y)
    model = copy.deepcopy(model)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    earlier = {name: randn(generator(12 + i), *p.shape) for i, (name, p) in enumerate(model.named_parameters())}
    for name, p in model.named_parameters():
        p.grad = earlier[name].clone()
    call = _sizes_call([4, 2])
    for times in (1, 2):
        impl.accumulate_gradients(model, _split(x, y, [4, 2]), F.cross_entropy)
        for name, p in model.named_parameters():
            assert_close(p.grad, earlier[name] + times * expected[name], **TIGHT,
                         call=f"{call}, called {times} time(s) on a model whose .grad already held G -> {name}.grad",
                         because="the gradients are added to what .grad holds, like loss.backward(): no zero_grad "
                                 "inside (the caller zeroes once per optimizer step).")
            assert torch.equal(p.detach(), before[name]), (
                f"Called {call}. The parameter {name} changed: accumulation only computes gradients, it never steps."
            )


class _Recorder(nn.Module):
    """Wraps a model and records, in order, each forward pass and each backward pass through its output."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.events: list[str] = []

    def forward(self, x):
        self.events.append("forward")
        out = self.inner(x)
        out.register_hook(lambda grad: self.events.append("backward"))
        return out


@pytest.mark.exercise("accumulate_gradients")
def test_accumulation_backpropagates_each_micro_batch_before_the_next(impl):
    model = _Recorder(_classifier(5))
    x, y = _class_data(5, 6)
    impl.accumulate_gradients(model, _split(x, y, [2, 2, 2]), F.cross_entropy)
    expected = ["forward", "backward"] * 3
    assert model.events == expected, (
        f"Called {_sizes_call([2, 2, 2])}. The model saw {model.events}; expected {expected}.\nBecause each "
        "micro-batch's backward must run right after its forward, which frees its activations: keeping every "
        "graph until one backward at the end needs the memory of the whole batch, which accumulation is meant to avoid."
    )


@pytest.mark.exercise("accumulate_gradients")
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_accumulation_reads_any_iterable_once_and_keeps_the_mode(impl, training):
    model = _classifier(8).train(training)
    x, y = _class_data(8, 5)
    loss, expected = _full_batch(model, x, y)
    reads = []

    def micro_batches():
        for batch in _split(x, y, [1, 4]):
            reads.append(len(batch[0]))
            yield batch

    result, grads = _accumulated(impl, model, micro_batches())
    call = "accumulate_gradients(model, a generator of micro-batches of sizes [1, 4], F.cross_entropy)"
    assert reads == [1, 4], f"Called {call}. It read the micro-batches {reads}; each must be read exactly once."
    for name, grad in expected.items():
        assert_close(grads[name], grad, call=f"{call} -> {name}.grad", **TIGHT,
                     because="a generator works like a list: read it once, into a list, to count the examples.")
    assert_close(result, loss, call=call, **TIGHT, because="the returned loss is the mean over all examples.")
    model = model.train(training)
    impl.accumulate_gradients(model, _split(x, y, [5]), F.cross_entropy)
    assert model.training is training, (
        f"Called {call} on a model in {'train' if training else 'eval'} mode; it is now in "
        f"{'train' if model.training else 'eval'} mode. The caller decides the mode: leave it as it was."
    )


@pytest.mark.exercise("accumulate_gradients")
def test_accumulation_rejects_empty_input(impl):
    model = _classifier(2)
    x, y = _class_data(2, 4)
    with pytest.raises(ValueError):
        impl.accumulate_gradients(model, [], F.cross_entropy)
    with pytest.raises(ValueError) as info:
        impl.accumulate_gradients(model, [(x[:2], y[:2]), (x[:0], y[:0]), (x[2:], y[2:])], F.cross_entropy)
    assert "1" in str(info.value), (
        f"Called {_sizes_call([2, 0, 2])}. The ValueError says {str(info.value)!r}; it must name the index 1 of the "
        "micro-batch without examples."
    )


# --------------------------------------------------------------------------------------------------
# train_step_mixed_precision

VOCAB = 11


def _tiny_lm(seed: int, scale: float = 0.6) -> nn.Module:
    """Embedding -> Linear -> GELU -> Linear, logits (B, T, VOCAB), float32 weights from ``seed``."""
    with seeded(seed):
        model = nn.Sequential(nn.Embedding(VOCAB, 8), nn.Linear(8, 16), nn.GELU(), nn.Linear(16, VOCAB))
    return refill_(model, seed, scale)


def _lm_batch(seed: int, batch: int = 3, t: int = 5) -> dict[str, torch.Tensor]:
    gen = generator(seed + 7)
    ids = torch.randint(0, VOCAB, (batch, t), generator=gen)
    labels = torch.randint(0, VOCAB, (batch, t), generator=gen)
    labels[0, :2] = IGNORE  # positions without a label
    labels[-1, -1] = IGNORE
    return {"input_ids": ids, "labels": labels}


def _replay_step(model, batch, lr: float, *, dtype=torch.bfloat16, device_type="cpu", max_grad_norm=1.0,
                 scaler=None):
    """The documented step, written out: zero_grad, autocast forward, float32 loss, (scaled) backward, unscale,
    clip, step, update. Runs on a copy of ``model``; returns (loss, parameters, the scaler's scale)."""
    model = copy.deepcopy(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    optimizer.zero_grad()
    with torch.autocast(device_type=device_type, dtype=dtype):
        logits = model(batch["input_ids"])
    loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), batch["labels"].reshape(-1),
                           ignore_index=IGNORE)
    if scaler is not None:
        scaler.scale(loss).backward()
        if max_grad_norm is not None:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        if max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
        optimizer.step()
    return loss.item(), {n: p.detach().clone() for n, p in model.named_parameters()}, (
        scaler.get_scale() if scaler is not None else None)


def _mp_call(extra: str = "") -> str:
    return f"train_step_mixed_precision(model, batch, SGD(lr=0.5){extra})"


def _run_step(module, model, batch, lr: float = 0.5, **kwargs):
    """The code under test on a copy of ``model`` with a fresh SGD; returns (result, parameters, copy)."""
    model = copy.deepcopy(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    result = module.train_step_mixed_precision(model, batch, optimizer, **kwargs)
    return result, {n: p.detach().clone() for n, p in model.named_parameters()}, model


def _linear_output_dtypes(model: nn.Module) -> tuple[list, list]:
    """Hooks that record the dtype of every Linear layer's output; returns (the record, the handles)."""
    seen, handles = [], []
    for module in model.modules():
        if isinstance(module, nn.Linear):
            handles.append(module.register_forward_hook(lambda m, args, out: seen.append(out.dtype)))
    return seen, handles


@pytest.mark.exercise("train_step_mixed_precision")
@pytest.mark.parametrize("dtype", [None, torch.float16], ids=["default", "float16"])
def test_mixed_precision_forward_runs_under_autocast(impl, dtype):
    model, batch = copy.deepcopy(_tiny_lm(1)), _lm_batch(1)
    seen, handles = _linear_output_dtypes(model)
    extra = "" if dtype is None else f", dtype={dtype}"
    kwargs = {} if dtype is None else {"dtype": dtype}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = impl.train_step_mixed_precision(model, batch, torch.optim.SGD(model.parameters(), lr=0.5), **kwargs)
    for handle in handles:
        handle.remove()
    expected = dtype or torch.bfloat16
    assert seen and all(d == expected for d in seen), (
        f"Called {_mp_call(extra)} on the CPU. The Linear layers returned {seen}; expected {expected} for each.\n"
        "Because the forward pass runs under torch.autocast(device_type='cpu', dtype=...), whose default on the CPU "
        "is bfloat16 (torch.cuda.amp.autocast is deprecated and does nothing on a CPU)."
    )
    deprecated = [str(w.message) for w in caught if "deprecat" in str(w.message).lower()]
    assert not deprecated, (
        f"Called {_mp_call(extra)}. It used a deprecated API: {deprecated[0]!r}\nUse torch.autocast(device_type, "
        "dtype) and torch.amp.GradScaler(device) instead of torch.cuda.amp.*."
    )
    assert isinstance(result, float), f"Called {_mp_call(extra)}. Returned {result!r}; expected the loss as a float."


@pytest.mark.exercise("train_step_mixed_precision")
def test_mixed_precision_honours_the_device_type(impl):
    # Autocast for CUDA never touches CPU operations (and switches itself off, with a warning, where there is no
    # CUDA), so a CPU model stepped with device_type="cuda" runs in float32: the device type must reach autocast.
    model, batch = copy.deepcopy(_tiny_lm(12)), _lm_batch(12)
    seen, handles = _linear_output_dtypes(model)
    call = _mp_call(", device_type='cuda'") + " on a CPU model"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "CUDA is not available ... Disabling autocast"
        result = impl.train_step_mixed_precision(model, batch, torch.optim.SGD(model.parameters(), lr=0.5),
                                                 device_type="cuda")
    for handle in handles:
        handle.remove()
    assert seen and all(d == torch.float32 for d in seen), (
        f"Called {call}. The Linear layers returned {seen}; expected torch.float32 for each.\nBecause the forward "
        "pass runs under torch.autocast(device_type=device_type, ...): autocast for 'cuda' leaves CPU operations in "
        "float32, and only a hard-coded device_type='cpu' (or one taken from somewhere else) casts them."
        + (f"\nLikely cause: {c}" if (c := _cause("train_step_mixed_precision", _device_type_run(batch),
                                                   matches=lambda d: d == seen)) else "")
    )
    with torch.no_grad():
        full = F.cross_entropy(_tiny_lm(12)(batch["input_ids"]).reshape(-1, VOCAB), batch["labels"].reshape(-1),
                               ignore_index=IGNORE).item()
    assert_close(result, full, call=call, rtol=1e-6, atol=0,
                 because="without autocast on the CPU the loss is the float32 model's loss.")


def _device_type_run(batch):
    """For likely_cause: the Linear output dtypes a catalogued step gives with device_type='cuda' on the CPU."""
    def run(f):
        model = copy.deepcopy(_tiny_lm(12))
        seen, handles = _linear_output_dtypes(model)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            f(model, batch, torch.optim.SGD(model.parameters(), lr=0.5), device_type="cuda")
        for handle in handles:
            handle.remove()
        return seen
    return run


@pytest.mark.exercise("train_step_mixed_precision")
@pytest.mark.parametrize("seed", [2, 3])
def test_mixed_precision_loss_is_close_to_float32(impl, seed):
    model, batch = _tiny_lm(seed), _lm_batch(seed)
    result, _, _ = _run_step(impl, model, batch)
    with torch.no_grad():
        logits = model(batch["input_ids"])
    full = F.cross_entropy(logits.reshape(-1, VOCAB), batch["labels"].reshape(-1), ignore_index=IGNORE).item()
    expected, _, _ = _replay_step(model, batch, 0.5)
    _check_close(result, expected, call=_mp_call(), rtol=1e-6, atol=0, symbol="train_step_mixed_precision",
                 run=lambda f: _run_step(_Module(train_step_mixed_precision=f), model, batch)[0],
                 because="the returned loss is F.cross_entropy(logits.float(), labels, ignore_index=-100) on the "
                         "autocast logits, computed in float32 and unscaled, as a Python float.")
    assert abs(result - full) <= 2e-2 * abs(full), (
        f"Called {_mp_call()}. Returned the loss {result!r}; the float32 model's loss is {full!r}, and bfloat16 "
        "autocast may only move it by its rounding (2%)."
    )


@pytest.mark.exercise("train_step_mixed_precision")
@pytest.mark.parametrize("max_grad_norm", [1.0, 0.3, 50.0, None], ids=["default", "0.3", "50", "None"])
def test_mixed_precision_step_replays_the_documented_calls(impl, max_grad_norm):
    model, batch = _tiny_lm(4, scale=1.0), _lm_batch(4)
    kwargs = {} if max_grad_norm == 1.0 else {"max_grad_norm": max_grad_norm}
    extra = "" if max_grad_norm == 1.0 else f", max_grad_norm={max_grad_norm}"
    pristine = copy.deepcopy(batch)
    _, got, _ = _run_step(impl, model, batch, **kwargs)
    _assert_tensors_unchanged(_mp_call(extra), pristine, batch)
    _, expected, _ = _replay_step(model, batch, 0.5, max_grad_norm=max_grad_norm)
    for name, value in expected.items():
        _check_close(got[name], value, call=f"{_mp_call(extra)} -> {name}", rtol=1e-6, atol=1e-7,
                     symbol="train_step_mixed_precision",
                     run=lambda f, name=name: _run_step(_Module(train_step_mixed_precision=f), model, batch,
                                                        **kwargs)[1][name],
                     because="the step is: zero_grad, forward under autocast, float32 loss, backward, "
                             "clip_grad_norm_(parameters, max_grad_norm) (default 1.0; None: no clipping), step.")


@pytest.mark.exercise("train_step_mixed_precision")
def test_mixed_precision_step_starts_from_zero_gradients(impl):
    model, first, second = _tiny_lm(5), _lm_batch(5), _lm_batch(6)
    model = copy.deepcopy(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    for p in model.parameters():
        p.grad = torch.full_like(p, 100.0)  # left over from somewhere else
    impl.train_step_mixed_precision(model, first, optimizer)
    impl.train_step_mixed_precision(model, second, optimizer)
    _, after_one, _ = _replay_step(_tiny_lm(5), first, 0.5)
    start = _tiny_lm(5)
    with torch.no_grad():
        for name, p in start.named_parameters():
            p.copy_(after_one[name])
    _, expected, _ = _replay_step(start, second, 0.5)
    for name, p in model.named_parameters():
        assert_close(p.detach(), expected[name], call=f"{_mp_call()} twice, on a model whose .grad held 100s -> {name}",
                     rtol=1e-6, atol=1e-7,
                     because="each step starts with optimizer.zero_grad(): gradients of an earlier step (or anything "
                             "else) must not leak into this one.")


def _cpu_scaler(init_scale: float) -> torch.amp.GradScaler:
    return torch.amp.GradScaler("cpu", init_scale=init_scale, growth_interval=1)


@pytest.mark.exercise("train_step_mixed_precision")
@pytest.mark.parametrize("max_grad_norm", [1.0, None], ids=["clipped", "unclipped"])
def test_mixed_precision_scaler_unscales_before_clipping(impl, max_grad_norm):
    # GradScaler works on the CPU too (float16 autocast as well), so the scaler's calls can be checked here.
    model, batch = _tiny_lm(7, scale=1.0), _lm_batch(7)
    kwargs = {"dtype": torch.float16, "max_grad_norm": max_grad_norm}
    scaler = _cpu_scaler(2.0 ** 12)
    call = _mp_call(f", scaler=GradScaler('cpu', init_scale=2**12, growth_interval=1), dtype=torch.float16, "
                    f"max_grad_norm={max_grad_norm}")
    result, got, _ = _run_step(impl, model, batch, scaler=scaler, **kwargs)
    loss, expected, scale = _replay_step(model, batch, 0.5, dtype=torch.float16, max_grad_norm=max_grad_norm,
                                         scaler=_cpu_scaler(2.0 ** 12))
    for name, value in expected.items():
        _check_close(got[name], value, call=f"{call} -> {name}", rtol=1e-6, atol=1e-7,
                     symbol="train_step_mixed_precision",
                     run=lambda f, name=name: _run_step(_Module(train_step_mixed_precision=f), model, batch,
                                                        scaler=_cpu_scaler(2.0 ** 12), **kwargs)[1][name],
                     because="with a scaler: scaler.scale(loss).backward(), scaler.unscale_(optimizer) BEFORE "
                             "clipping (the gradients are 4096 times too large until then), scaler.step(optimizer), "
                             "scaler.update().")
    assert scaler.get_scale() == scale, (
        f"Called {call}. The scaler's scale is {scaler.get_scale()} after the step; expected {scale} (doubled after a "
        "good step with growth_interval=1): call scaler.update() after scaler.step(optimizer)."
    )
    assert_close(result, loss, call=call, rtol=1e-6, atol=0,
                 because="the returned loss is the unscaled loss, not scaler.scale(loss).")


@pytest.mark.exercise("train_step_mixed_precision")
def test_mixed_precision_scaler_skips_a_step_with_inf_gradients(impl):
    model, batch = _tiny_lm(8), _lm_batch(8)
    scaler = _cpu_scaler(2.0 ** 127)  # loss * 2**127 overflows float32: every gradient is inf or nan
    call = _mp_call(", scaler=GradScaler('cpu', init_scale=2**127), dtype=torch.float16")
    _, got, _ = _run_step(impl, model, batch, scaler=scaler, dtype=torch.float16)
    for name, p in model.named_parameters():
        assert torch.equal(got[name], p.detach()), (
            f"Called {call}. The parameter {name} changed to {describe(got[name])}; the scaled gradients are inf, so "
            "the step must be skipped: step through scaler.step(optimizer), never optimizer.step() directly."
        )
    assert scaler.get_scale() == 2.0 ** 126, (
        f"Called {call}. The scale is {scaler.get_scale()}; after a skipped step scaler.update() halves it to 2**126."
    )


@pytest.mark.exercise("train_step_mixed_precision")
@pytest.mark.parametrize("bad", [0.0, -1.0, math.nan])  # nan is not positive either: it would make every gradient nan
def test_mixed_precision_rejects_a_bad_max_grad_norm(impl, bad):
    model = copy.deepcopy(_tiny_lm(9))
    with pytest.raises(ValueError) as info:
        impl.train_step_mixed_precision(model, _lm_batch(9), torch.optim.SGD(model.parameters(), lr=0.5),
                                        max_grad_norm=bad)
    assert str(bad) in str(info.value), (
        f"Called {_mp_call(f', max_grad_norm={bad}')}. The ValueError says {str(info.value)!r}; it must name {bad}."
    )


@pytest.mark.exercise("train_step_mixed_precision")
@pytest.mark.gpu
def test_mixed_precision_float16_with_a_grad_scaler_on_cuda(impl):
    model, batch = _tiny_lm(10, scale=1.0).cuda(), {k: v.cuda() for k, v in _lm_batch(10).items()}
    work = copy.deepcopy(model)
    seen, handles = _linear_output_dtypes(work)
    scaler = torch.amp.GradScaler("cuda", growth_interval=1)
    call = _mp_call(", scaler=torch.amp.GradScaler('cuda', growth_interval=1), device_type='cuda'")
    result = impl.train_step_mixed_precision(work, batch, torch.optim.SGD(work.parameters(), lr=0.5), scaler,
                                             device_type="cuda")
    for handle in handles:
        handle.remove()
    assert seen and all(d == torch.float16 for d in seen), (
        f"Called {call}. The Linear layers returned {seen}; autocast's default on CUDA is float16."
    )
    loss, expected, scale = _replay_step(model, batch, 0.5, dtype=torch.float16, device_type="cuda",
                                         scaler=torch.amp.GradScaler("cuda", growth_interval=1))
    assert_close(result, loss, call=call, rtol=1e-5, atol=0, because="the unscaled float32 loss, as on the CPU.")
    for name, p in work.named_parameters():
        assert_close(p.detach().cpu(), expected[name].cpu(), call=f"{call} -> {name}", rtol=1e-5, atol=1e-6,
                     because="float16 autocast on CUDA with scale, unscale_, clip, step and update, as documented.")
    assert scaler.get_scale() == scale, f"Called {call}. The scale is {scaler.get_scale()}; expected {scale}."
    with torch.no_grad():
        full = F.cross_entropy(model(batch["input_ids"]).reshape(-1, VOCAB), batch["labels"].reshape(-1),
                               ignore_index=IGNORE).item()
    assert abs(result - full) <= 1e-2 * abs(full), (
        f"Called {call}. Returned the loss {result!r}; float32 gives {full!r}, and float16 may only round it."
    )


# --------------------------------------------------------------------------------------------------
# RewardModel

GPT_VOCAB, PAD, EOS = 24, 0, 1


def _gpt2_config(**overrides):
    from transformers.models.gpt2.configuration_gpt2 import GPT2Config

    sizes = {"vocab_size": GPT_VOCAB, "n_positions": 16, "n_embd": 12, "n_layer": 2, "n_head": 2,
             "bos_token_id": EOS, "eos_token_id": EOS, "pad_token_id": PAD, "num_labels": 1,
             "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}
    return GPT2Config(**{**sizes, **overrides})


@pytest.fixture(scope="module")
def gpt2_base():
    """A tiny GPT2Model in float64, built once; checks refill copies of it from drawn seeds."""
    from transformers.models.gpt2.modeling_gpt2 import GPT2Model

    with seeded(0):
        return GPT2Model(_gpt2_config()).to(DT).eval()


def _base_copy(base: nn.Module, seed: int) -> nn.Module:
    # weights (LayerNorm gains and biases included) far from their init, so every part of the model matters
    return refill_(copy.deepcopy(base), seed, 0.3)


class _FakeBase(nn.Module):
    """A stand-in base model: a config with hidden_size and an embedding as its 'last hidden state'."""

    def __init__(self, hidden: int, device=None, dtype=None) -> None:
        super().__init__()
        from types import SimpleNamespace

        self.config = SimpleNamespace(hidden_size=hidden)
        self.embed = nn.Embedding(GPT_VOCAB, hidden, device=device, dtype=dtype)

    def forward(self, input_ids, attention_mask=None):
        from types import SimpleNamespace

        return SimpleNamespace(last_hidden_state=self.embed(input_ids))


def _padded_rows(gen, lengths: list[int], t: int, left: list[bool] | None = None):
    """Rows of real tokens (ids 2.., never the pad id) padded with PAD to length t, right or left."""
    ids = torch.full((len(lengths), t), PAD, dtype=torch.long)
    mask = torch.zeros(len(lengths), t, dtype=torch.long)
    for row, n in enumerate(lengths):
        tokens = torch.randint(2, GPT_VOCAB, (n,), generator=gen)
        where = slice(t - n, t) if left and left[row] else slice(0, n)
        ids[row, where] = tokens
        mask[row, where] = 1
    return ids, mask


def _sequence_classifier(base: nn.Module, head: nn.Linear):
    """transformers' own reward-style model on the same weights: GPT2ForSequenceClassification, num_labels=1."""
    from transformers.models.gpt2.modeling_gpt2 import GPT2ForSequenceClassification

    model = GPT2ForSequenceClassification(base.config).to(DT).eval()
    model.transformer.load_state_dict(base.state_dict())
    with torch.no_grad():
        model.score.weight.copy_(head.weight)
    return model


def _reward_call(ids, mask) -> str:
    return f"RewardModel(GPT2Model)(input_ids of shape {tuple(ids.shape)}, attention_mask with rows {mask.tolist()})"


@pytest.mark.exercise("RewardModel")
def test_reward_model_structure(impl):
    hidden = 256
    base = _FakeBase(hidden)
    with seeded(3):
        model = impl.RewardModel(base)
    call = f"RewardModel(base with hidden_size={hidden})"
    assert model.base_model is base, f"Called {call}. self.base_model must be the base model itself (not a copy)."
    head = getattr(model, "reward_head", None)
    assert isinstance(head, nn.Linear) and tuple(head.weight.shape) == (1, hidden) and head.bias is not None, (
        f"Called {call}. self.reward_head is {head!r}; expected nn.Linear({hidden}, 1) with a bias."
    )
    shapes = {name: tuple(p.shape) for name, p in model.named_parameters()}
    expected = {"base_model.embed.weight": (GPT_VOCAB, hidden), "reward_head.weight": (1, hidden),
                "reward_head.bias": (1,)}
    assert shapes == expected, (
        f"Called {call}. Its parameters are {shapes}; expected exactly {expected}: the base model's and the head's, "
        "nothing else that would train."
    )
    bound = 1 / math.sqrt(hidden)
    weight = head.weight.detach()
    std = weight.std().item()
    assert weight.abs().max() <= bound and abs(std - bound / math.sqrt(3)) < 0.15 * bound / math.sqrt(3), (
        f"Called {call}. reward_head.weight has max |w| {weight.abs().max():.4f} and std {std:.4f}; nn.Linear's "
        f"default init gives |w| <= 1/sqrt({hidden}) = {bound:.4f} and std {bound / math.sqrt(3):.4f}."
    )
    bias = head.bias.detach()
    assert 0 < bias.abs().max() <= bound, (
        f"Called {call}. reward_head.bias is {bias.tolist()}; nn.Linear's default init draws it uniformly from "
        f"[-1/sqrt({hidden}), 1/sqrt({hidden})] = [-{bound:.4f}, {bound:.4f}] (exactly 0 has probability 0): keep "
        "PyTorch's default initialisation, as the docstring asks."
    )


@pytest.mark.exercise("RewardModel")
@pytest.mark.parametrize(("device", "dtype"), [("cpu", torch.float64), ("meta", torch.float32)])
def test_reward_head_follows_the_base_model(impl, device, dtype):
    base = _FakeBase(16, device=device, dtype=dtype)
    head = impl.RewardModel(base).reward_head
    assert head.weight.device.type == device and head.weight.dtype == dtype, (
        f"Called RewardModel(base on {device} in {dtype}). reward_head.weight is on {head.weight.device} in "
        f"{head.weight.dtype}; create the head on the base model's device, in its dtype, so the model is one piece."
    )
    if device == "cpu":
        ids = torch.zeros(2, 3, dtype=torch.long)
        rewards = impl.RewardModel(base)(ids, torch.ones_like(ids))
        assert rewards.dtype == dtype and tuple(rewards.shape) == (2,), (
            f"Called RewardModel(base in {dtype})(ids of shape (2, 3), mask). Returned {describe(rewards)}; expected "
            f"shape (2,) in {dtype}: one reward per sequence."
        )


@pytest.mark.exercise("RewardModel")
@settings(max_examples=15)
@given(seeds, st.lists(st.integers(1, 6), min_size=1, max_size=4), st.integers(0, 3), st.data())
@example(seed=1, lengths=[2, 6, 4], extra=0, data=None)  # the longest row has no padding: position -1 is real there
@example(seed=2, lengths=[1, 3, 1], extra=2, data=None)  # rows of a single real token, then padding
@example(seed=3, lengths=[4], extra=2, data=None)  # a batch of one row: still shape (1,), not a 0-dim tensor
def test_reward_equals_gpt2_sequence_classification(impl, gpt2_base, seed, lengths, extra, data):
    t = max(lengths) + extra
    left = [data.draw(st.booleans(), label="left-padded") for _ in lengths] if data is not None else [
        False, True, True]
    ids, mask = _padded_rows(generator(seed), lengths, t, left)
    base = _base_copy(gpt2_base, seed)
    with seeded(seed):
        model = impl.RewardModel(base)
    refill_(model.reward_head, seed + 1, 0.5)
    pristine = {"input_ids": ids.clone(), "attention_mask": mask.clone()}
    given_args = {"input_ids": ids, "attention_mask": mask}
    with torch.no_grad():
        got = model(ids, mask)
    call = _reward_call(ids, mask)
    _assert_tensors_unchanged(call, pristine, given_args)
    assert isinstance(got, torch.Tensor) and tuple(got.shape) == (len(lengths),), (
        f"Called {call}. Returned {describe(got)}; expected shape ({len(lengths)},): one reward per row."
    )
    with torch.no_grad():
        expected = _sequence_classifier(base, model.reward_head)(input_ids=ids, attention_mask=mask).logits[:, 0]
        expected = expected + model.reward_head.bias

    def run(cls):
        other = cls(copy.deepcopy(base))
        other.reward_head.load_state_dict(model.reward_head.state_dict())
        with torch.no_grad():
            return other(ids.clone(), mask.clone())

    _check_close(got, expected, call=call, symbol="RewardModel", run=run,
                 because="the reward is reward_head(hidden state of each row's LAST REAL token), the rightmost "
                         "position where attention_mask is 1, as GPT2ForSequenceClassification reads it (plus the "
                         "head's bias). Position -1 is a padding token in right-padded rows shorter than the batch.")


@pytest.mark.exercise("RewardModel")
@pytest.mark.parametrize("pads", [1, 3, 7])
def test_reward_does_not_depend_on_right_padding(impl, gpt2_base, pads):
    gen = generator(pads)
    base = _base_copy(gpt2_base, 40 + pads)
    model = impl.RewardModel(base)
    ids, mask = _padded_rows(gen, [5], 5)
    padded_ids = torch.cat([ids, torch.full((1, pads), PAD)], dim=1)
    padded_mask = torch.cat([mask, torch.zeros(1, pads, dtype=torch.long)], dim=1)
    with torch.no_grad():
        alone, padded = model(ids, mask), model(padded_ids, padded_mask)
    _check_close(padded, alone, call=_reward_call(padded_ids, padded_mask), symbol="RewardModel",
                 run=lambda cls: cls(copy.deepcopy(base))(padded_ids, padded_mask),
                 because=f"the same 5 tokens followed by {pads} padding tokens must get the reward they get alone: "
                         "read the hidden state of the last real token, not position -1 (the learning path's bug).")


@pytest.mark.exercise("RewardModel")
def test_reward_reads_the_mask_even_when_the_last_token_is_the_pad_id(impl, gpt2_base):
    # Many tokenizers use eos as the pad token, so a real eos at the end of a sequence has the pad id. The mask says
    # it is real; a rule based on ids (the rightmost id that is not config.pad_token_id, as
    # GPT2ForSequenceClassification does) skips it and reads the token before.
    base = _base_copy(gpt2_base, 21)
    model = impl.RewardModel(base)
    ids, mask = _padded_rows(generator(21), [3, 5, 2], 6, [False, False, True])
    last = torch.tensor([2, 4, 5])
    ids[torch.arange(3), last] = base.config.pad_token_id  # each row ends with an eos that is also the pad token
    given_args = {"input_ids": ids, "attention_mask": mask}
    pristine = copy.deepcopy(given_args)
    with torch.no_grad():
        got = model(ids, mask)
        hidden = base(input_ids=ids, attention_mask=mask).last_hidden_state
        expected = model.reward_head(hidden[torch.arange(3), last])[:, 0]
    call = _reward_call(ids, mask) + f", each row ending with the pad id {base.config.pad_token_id} (pad == eos)"
    _assert_tensors_unchanged(call, pristine, given_args)

    def run(cls):
        other = cls(copy.deepcopy(base))
        other.reward_head.load_state_dict(model.reward_head.state_dict())
        with torch.no_grad():
            return other(ids.clone(), mask.clone())

    _check_close(got, expected, call=call, symbol="RewardModel", run=run,
                 because="the last real token is the last position where attention_mask is 1, whatever its id: with "
                         "pad == eos the final eos has the pad id and is still the token to read the reward from.")


@pytest.mark.exercise("RewardModel")
def test_reward_gradients_reach_the_head_and_the_base(impl, gpt2_base):
    base = _base_copy(gpt2_base, 77)
    model = impl.RewardModel(base)
    ids, mask = _padded_rows(generator(77), [3, 5], 5)
    rewards = model(ids, mask)
    assert rewards.requires_grad, (
        f"Called {_reward_call(ids, mask)}. The rewards do not require a gradient; a reward model is trained end to "
        "end: no torch.no_grad() or .detach() inside forward."
    )
    rewards.sum().backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, (
        f"Called {_reward_call(ids, mask)} and backward(). These parameters got no gradient: {missing[:6]}; a reward "
        "model is trained end to end (no torch.no_grad() or .detach() inside forward)."
    )


@pytest.mark.exercise("RewardModel")
def test_reward_model_rejects_bad_masks(impl, gpt2_base):
    model = impl.RewardModel(_base_copy(gpt2_base, 5))
    ids, mask = _padded_rows(generator(5), [3, 2, 4], 4)
    empty = mask.clone()
    empty[1] = 0
    with pytest.raises(ValueError) as info:
        model(ids, empty)
    assert "1" in str(info.value), (
        f"Called {_reward_call(ids, empty)}. The ValueError says {str(info.value)!r}; it must name row 1, which has "
        "no real token."
    )
    with pytest.raises(ValueError):
        model(ids, mask[:, :3])


# --------------------------------------------------------------------------------------------------
# reward_loss


def _softplus_np(x: np.ndarray) -> np.ndarray:
    """log(1 + e^x) without overflow: -log sigmoid(-x)."""
    return np.logaddexp(0.0, x)


def _sigmoid_np(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # no overflow for |x| up to any size


@st.composite
def paired_values(draw, count: int = 2, low: float = -30.0, high: float = 30.0, dtype=DT):
    """``count`` tensors of one non-empty shape (0-2 dims) with values in [low, high], from a drawn seed."""
    shape = tuple(draw(st.lists(st.integers(1, 4), max_size=2)))
    gen = generator(draw(seeds))
    return [torch.rand(shape, generator=gen, dtype=DT).mul(high - low).add(low).to(dtype) for _ in range(count)]


def _loss_call(name: str, tensors: dict, **options) -> str:
    return format_call(name, (), {**tensors, **options})


@pytest.mark.exercise("reward_loss")
@given(paired_values(), st.sampled_from(["default", "float", "tensor"]), st.floats(-3, 3))
@example([torch.tensor([2.0, 0.0], dtype=DT), torch.tensor([0.0, 0.0], dtype=DT)], "default", 0.0)
def test_reward_loss_matches_the_closed_form(impl, values, margin_kind, margin):
    chosen, rejected = values
    kwargs = {"chosen": chosen, "rejected": rejected}
    m = 0.0
    if margin_kind == "float":
        kwargs["margin"], m = margin, margin
    elif margin_kind == "tensor":
        m = torch.linspace(0, margin, chosen.shape[-1] if chosen.ndim else 1, dtype=DT).reshape(chosen.shape[-1:])
        kwargs["margin"] = m
        m = m.numpy()
    pristine = copy.deepcopy(kwargs)
    got = impl.reward_loss(**kwargs)
    call = _loss_call("reward_loss", pristine)
    _assert_tensors_unchanged(call, pristine, kwargs)
    assert isinstance(got, torch.Tensor) and got.shape == () and got.dtype == DT, (
        f"Called {call}. Returned {describe(got)}; expected a 0-dim float64 tensor (the mean loss)."
    )
    gap = chosen.numpy() - rejected.numpy() - m
    expected = torch.tensor(_softplus_np(-gap).mean(), dtype=DT)
    _check_close(got, expected, call=call, symbol="reward_loss", run=lambda f: f(**copy.deepcopy(pristine)),
                 because="the loss is mean(-log sigmoid(chosen - rejected - margin)) (margin 0 by default): small "
                         "when chosen beats rejected by more than the margin.")


@pytest.mark.exercise("reward_loss")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_reward_loss_is_finite_for_huge_gaps(impl, dtype):
    gaps = np.array([-1e4, 1e4, 0.5, -3.0, -200.0])
    chosen = torch.tensor(gaps, dtype=dtype).requires_grad_()
    rejected = torch.zeros(5, dtype=dtype)
    loss = impl.reward_loss(chosen, rejected)
    call = f"reward_loss(chosen={gaps.tolist()} in {dtype}, rejected=zeros)"
    assert loss.dtype == dtype, f"Called {call}. Returned dtype {loss.dtype}; the loss keeps the inputs' dtype {dtype}."
    expected = _softplus_np(-gaps).mean()
    tolerance = {"rtol": 1e-6, "atol": 0} if dtype == torch.float32 else TIGHT
    _check_close(loss.detach().double(), torch.tensor(expected, dtype=DT), call=call, symbol="reward_loss",
                 run=lambda f: f(torch.tensor(gaps, dtype=dtype), torch.zeros(5, dtype=dtype)).double(),
                 because="-log(sigmoid(gap)) is inf once sigmoid underflows to 0 (a gap of -1e4): use F.logsigmoid, "
                         "which gives about -gap there, and about 0 for +1e4.", **tolerance)
    loss.backward()
    expected_grad = -_sigmoid_np(-gaps) / len(gaps)
    assert chosen.grad is not None and torch.isfinite(chosen.grad).all(), (
        f"Called {call} and backward(). The gradient is {chosen.grad}; it must be finite (about -1/5 at -1e4)."
    )
    assert_close(chosen.grad.double(), torch.tensor(expected_grad), call=call + " -> gradient of chosen", **tolerance,
                 because="d loss / d chosen = -sigmoid(-gap) / n: about -1/n for a hopeless gap, 0 for a sure one.")


@pytest.mark.exercise("reward_loss")
def test_reward_loss_gradients_pass_gradcheck(impl):
    gen = generator(4)
    chosen, rejected = randn(gen, 6, scale=3.0).requires_grad_(), randn(gen, 6, scale=3.0).requires_grad_()
    margin = 0.7
    assert torch.autograd.gradcheck(lambda c, r: impl.reward_loss(c, r, margin), (chosen, rejected)), (
        "reward_loss's gradients disagree with finite differences"
    )


@pytest.mark.exercise("reward_loss")
@pytest.mark.parametrize(("chosen", "rejected"), [
    (torch.zeros(3), torch.zeros(4)), (torch.zeros(2, 3), torch.zeros(3)), (torch.zeros(0), torch.zeros(0))],
    ids=["3-vs-4", "2x3-vs-3", "empty"])
def test_reward_loss_rejects_bad_shapes(impl, chosen, rejected):
    with pytest.raises(ValueError) as info:
        impl.reward_loss(chosen, rejected)
    if chosen.numel():
        shapes = (str(tuple(chosen.shape)), str(tuple(rejected.shape)))
        assert all(s in str(info.value) for s in shapes), (
            f"Called reward_loss(chosen of shape {shapes[0]}, rejected of shape {shapes[1]}). The ValueError says "
            f"{str(info.value)!r}; it must name both shapes."
        )


# --------------------------------------------------------------------------------------------------
# sequence_logprobs


@pytest.fixture(scope="module")
def gpt2_lm():
    """A tiny GPT2LMHeadModel in float64, built once; checks refill copies of it from drawn seeds."""
    from transformers.models.gpt2.modeling_gpt2 import GPT2LMHeadModel

    with seeded(1):
        return GPT2LMHeadModel(_gpt2_config()).to(DT)


def _lm_copy(lm: nn.Module, seed: int) -> nn.Module:
    return refill_(copy.deepcopy(lm), seed, 0.3)


def _prompt_response_rows(gen, prompts: list[int], responses: list[int], extra: int = 0, left: bool = False):
    """ids, attention_mask and response_mask of rows made of a prompt then a response, padded to one length."""
    t = max(p + r for p, r in zip(prompts, responses, strict=True)) + extra
    ids, att = _padded_rows(gen, [p + r for p, r in zip(prompts, responses, strict=True)], t,
                            [left] * len(prompts))
    resp = torch.zeros_like(att)
    for row, (p, r) in enumerate(zip(prompts, responses, strict=True)):
        start = (t - p - r if left else 0) + p
        resp[row, start:start + r] = 1
    return ids, att, resp


def _oracle_logprobs(model, ids, att, resp):
    """The checks' own sum over positions: log_softmax of the logits one position BEFORE each response token."""
    logits = model(input_ids=ids, attention_mask=att).logits
    rows = []
    for b in range(ids.shape[0]):
        total = logits[b, 0, 0] * 0  # a 0 that keeps the graph, so rows without response tokens backpropagate
        for t in range(1, ids.shape[1]):
            if resp[b, t]:
                total = total + torch.log_softmax(logits[b, t - 1], dim=-1)[ids[b, t]]
        rows.append(total)
    return torch.stack(rows)


def _logprobs_call(ids, att, resp) -> str:
    return (f"sequence_logprobs(GPT2LMHeadModel, input_ids {ids.tolist()}, attention_mask {att.tolist()}, "
            f"response_mask {resp.tolist()})")


@pytest.mark.exercise("sequence_logprobs")
@settings(max_examples=15)
@given(seeds, st.lists(st.tuples(st.integers(1, 4), st.integers(0, 4)), min_size=1, max_size=3), st.integers(0, 2),
       st.booleans(), st.booleans())
@example(seed=2, rows=[(1, 3), (3, 1), (2, 0)], extra=1, left=False, training=True)
def test_sequence_logprobs_sum_the_shifted_response_tokens(impl, gpt2_lm, seed, rows, extra, left, training):
    prompts, responses = [p for p, _ in rows], [r for _, r in rows]
    ids, att, resp = _prompt_response_rows(generator(seed), prompts, responses, extra, left)
    model = _lm_copy(gpt2_lm, seed).train(training)
    given_args = {"input_ids": ids, "attention_mask": att, "response_mask": resp}
    pristine = copy.deepcopy(given_args)
    got = impl.sequence_logprobs(model, **given_args)
    call = _logprobs_call(ids, att, resp)
    _assert_tensors_unchanged(call, pristine, given_args)
    assert model.training is training, (
        f"Called {call} on a model in {'train' if training else 'eval'} mode; it is now in the other mode. Leave the "
        "mode to the caller (DPO calls this on a policy in training)."
    )
    assert isinstance(got, torch.Tensor) and tuple(got.shape) == (len(rows),) and got.dtype == DT, (
        f"Called {call}. Returned {describe(got)}; expected shape ({len(rows)},) in the logits' dtype float64."
    )
    expected = _oracle_logprobs(model, ids, att, resp)

    def run(f):
        with torch.no_grad():
            return f(model, ids.clone(), att.clone(), resp.clone())

    _check_close(got.detach(), expected.detach(), call=call, symbol="sequence_logprobs", run=run,
                 because="row b's value is the SUM over response positions t of log_softmax(logits[b, t - 1])"
                         "[input_ids[b, t]]: the logits at t - 1 predict token t (shift by one), and only response "
                         "tokens count (rows without any give 0).")
    assert got.requires_grad, (
        f"Called {call}. The result does not require a gradient; DPO trains through these log-probabilities, so no "
        "torch.no_grad() or .detach() inside."
    )
    weights = randn(generator(seed + 1), len(rows))
    (got * weights).sum().backward()
    got_grads = [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in model.parameters()]
    model.zero_grad()
    (expected * weights).sum().backward()
    for (name, p), grad in zip(model.named_parameters(), got_grads, strict=True):
        assert_close(grad, p.grad, call=f"{call} and backward() -> {name}.grad", **TIGHT,
                     because="DPO trains through these log-probabilities: gradients must flow into the model (no "
                             "torch.no_grad() or .detach()).")


@pytest.mark.exercise("sequence_logprobs")
def test_sequence_logprobs_score_the_model_in_the_mode_it_is_in(impl):
    # A policy in training has its dropout on; scoring it in eval mode (even restoring the mode afterwards) computes
    # the log-probabilities of a different network than the one being trained.
    from transformers.models.gpt2.modeling_gpt2 import GPT2LMHeadModel

    with seeded(6):
        model = GPT2LMHeadModel(_gpt2_config(resid_pdrop=0.3, embd_pdrop=0.3, attn_pdrop=0.0)).to(DT).train()
    ids, att, resp = _prompt_response_rows(generator(6), [2, 3], [4, 2])
    call = _logprobs_call(ids, att, resp) + " with a model in train mode whose dropout is 0.3"
    with torch.no_grad():
        with seeded(7):
            got = impl.sequence_logprobs(model, ids, att, resp)
        left_training = model.training
        evaluated = _oracle_logprobs(model.eval(), ids, att, resp)
    model.train()

    def run(f):
        with torch.no_grad():
            result = f(model, ids, att, resp)
        training = model.training
        model.train()
        return result, training

    def same(result):
        return torch.allclose(result[0], got, rtol=1e-6, atol=1e-6) and result[1] == left_training

    assert not torch.allclose(got, evaluated, rtol=1e-6, atol=1e-6), (
        f"Called {call}. Returned {got.tolist()}, exactly what the model gives in eval mode (no dropout).\nBecause the "
        "caller decides the mode: a policy in training is scored with its dropout on. Do not call model.eval() "
        "inside (restoring the mode afterwards does not help: the logits were computed without dropout)."
        + (f"\nLikely cause: {c}" if (c := _cause("sequence_logprobs", run, matches=same)) else "")
    )


@pytest.mark.exercise("sequence_logprobs")
def test_sequence_logprobs_keep_the_model_dtype(impl, gpt2_lm):
    model = _lm_copy(gpt2_lm, 9).float()
    ids, att, resp = _prompt_response_rows(generator(9), [2, 3], [3, 1])
    with torch.no_grad():
        got = impl.sequence_logprobs(model, ids, att, resp)
        expected = _oracle_logprobs(model.double(), ids, att, resp)
    call = _logprobs_call(ids, att, resp) + " with a float32 model"
    assert got.dtype == torch.float32, f"Called {call}. Returned dtype {got.dtype}; the logits are float32."
    assert_close(got.double(), expected, call=call, rtol=1e-5, atol=1e-5, because="float32 rounding only.")


@pytest.mark.exercise("sequence_logprobs")
@pytest.mark.parametrize("what", ["shapes", "position-0", "padding"])
def test_sequence_logprobs_reject_bad_masks(impl, gpt2_lm, what):
    model = _lm_copy(gpt2_lm, 3)
    ids, att, resp = _prompt_response_rows(generator(3), [2, 1, 2], [1, 2, 1], extra=1)
    row = "1"
    if what == "shapes":
        resp, row = resp[:, :-1], None
    elif what == "position-0":
        resp[1, 0] = 1
    else:
        resp[1, -1] = 1  # row 1 is padded at the end
    call = _logprobs_call(ids, att, resp)
    with pytest.raises(ValueError) as info:
        impl.sequence_logprobs(model, ids, att, resp)
    if row is not None:
        assert row in str(info.value), (
            f"Called {call}. The ValueError says {str(info.value)!r}; it must name the offending row {row}."
        )


# --------------------------------------------------------------------------------------------------
# dpo_loss

DPO_NAMES = ("policy_chosen", "policy_rejected", "ref_chosen", "ref_rejected")


def _dpo_expected(values: list[torch.Tensor], beta: float):
    pc, pr, rc, rr = (v.detach().double().numpy() for v in values)
    margin = (pc - rc) - (pr - rr)
    return (torch.tensor(_softplus_np(-beta * margin).mean(), dtype=DT), torch.tensor(beta * (pc - rc)),
            torch.tensor(beta * (pr - rr)))


def _call_dpo(impl, values, **options):
    kwargs = dict(zip(DPO_NAMES, values, strict=True))
    pristine = copy.deepcopy(kwargs)
    result = impl.dpo_loss(**kwargs, **options)
    call = _loss_call("dpo_loss", pristine, **options)
    _assert_tensors_unchanged(call, pristine, kwargs)
    assert isinstance(result, tuple) and len(result) == 3, (
        f"Called {call}. Returned {type(result).__name__}; expected a tuple (loss, chosen_rewards, rejected_rewards)."
    )
    loss, chosen, rejected = result
    shape, dtype = values[0].shape, values[0].dtype
    assert isinstance(loss, torch.Tensor) and loss.shape == () and loss.dtype == dtype, (
        f"Called {call}. The loss is {describe(loss)}; expected a 0-dim tensor in {dtype} (the mean over the pairs)."
    )
    for name, rewards in (("chosen_rewards", chosen), ("rejected_rewards", rejected)):
        assert isinstance(rewards, torch.Tensor) and rewards.shape == shape and rewards.dtype == dtype, (
            f"Called {call}. The {name} are {describe(rewards)}; expected shape {tuple(shape)} in {dtype}."
        )
    return call, result


@pytest.mark.exercise("dpo_loss")
@given(paired_values(4, -60.0, -1.0), st.sampled_from([None, 0.1, 0.5, 2.0, 0.01]))
@example([torch.tensor([-5.0, -9.0], dtype=DT), torch.tensor([-7.0, -6.0], dtype=DT),
          torch.tensor([-6.0, -8.0], dtype=DT), torch.tensor([-6.5, -7.5], dtype=DT)], None)
def test_dpo_loss_matches_the_closed_form(impl, values, beta):
    options = {} if beta is None else {"beta": beta}
    call, (loss, chosen, rejected) = _call_dpo(impl, values, **options)
    expected = _dpo_expected(values, 0.1 if beta is None else beta)

    def run(part):
        return lambda f: f(*copy.deepcopy(values), **options)[part]

    because = ("with log-ratios c = policy_chosen - ref_chosen and r = policy_rejected - ref_rejected the loss is "
               "mean(-log sigmoid(beta * (c - r))), and the rewards are beta * c and beta * r (beta defaults to 0.1, "
               "and multiplies the margin INSIDE the log-sigmoid).")
    _check_close(loss, expected[0], call=call + " -> loss", symbol="dpo_loss", run=run(0), because=because)
    _check_close(chosen, expected[1], call=call + " -> chosen_rewards", symbol="dpo_loss", run=run(1), because=because)
    _check_close(rejected, expected[2], call=call + " -> rejected_rewards", symbol="dpo_loss", run=run(2),
                 because=because)


@pytest.mark.exercise("dpo_loss")
@given(paired_values(2, -80.0, -1.0), st.floats(-20, 20), st.sampled_from([0.1, 1.0, 3.0]))
def test_dpo_loss_is_log_2_when_the_policy_margin_equals_the_reference_margin(impl, values, shift, beta):
    policy_chosen, policy_rejected = values
    # the reference is the policy shifted by the same amount on both responses: equal margins
    ref = [policy_chosen - shift, policy_rejected - shift]
    call, (loss, chosen, rejected) = _call_dpo(impl, [policy_chosen, policy_rejected, *ref], beta=beta)
    assert_close(loss, torch.tensor(math.log(2), dtype=DT), call=call, atol=1e-12, rtol=0,
                 because="when the policy prefers chosen over rejected exactly as much as the reference does, the "
                         "margin is 0 and -log sigmoid(0) = log 2, whatever beta.")
    assert_close(chosen - rejected, torch.zeros_like(chosen), call=call + " -> chosen - rejected rewards", atol=1e-9,
                 because="equal margins give equal implicit rewards.")


@pytest.mark.exercise("dpo_loss")
def test_dpo_loss_decreases_as_the_chosen_margin_grows(impl):
    base = [torch.tensor([-20.0, -30.0], dtype=DT), torch.tensor([-25.0, -28.0], dtype=DT),
            torch.tensor([-21.0, -29.0], dtype=DT), torch.tensor([-24.0, -27.0], dtype=DT)]
    losses = []
    for step in np.linspace(-40, 40, 17):
        values = [base[0] + step, *base[1:]]
        losses.append(_call_dpo(impl, values)[1][0].item())
    drops = np.diff(losses)
    assert (drops < 0).all(), (
        f"Called dpo_loss with policy_chosen raised step by step from -40 to +40 around {base[0].tolist()}. The losses "
        f"are {np.round(losses, 6).tolist()}; they must strictly decrease: a policy that makes the chosen response "
        "more likely (relative to the reference) is better aligned."
    )


@pytest.mark.exercise("dpo_loss")
@pytest.mark.parametrize("beta", [0.1, 1.0])
def test_dpo_loss_gradients_push_chosen_up_and_rejected_down(impl, beta):
    gen = generator(31)
    values = [randn(gen, 4, scale=5.0) - 20.0 for _ in range(4)]
    leaves = [v.clone().requires_grad_() for v in values]
    loss, chosen, rejected = impl.dpo_loss(*leaves, beta=beta)
    call = _loss_call("dpo_loss", dict(zip(DPO_NAMES, values, strict=True)), beta=beta) + " and backward()"
    assert loss.requires_grad and not chosen.requires_grad and not rejected.requires_grad, (
        f"Called {call}. The loss must carry gradients, and the rewards must be detached (requires_grad: loss "
        f"{loss.requires_grad}, chosen_rewards {chosen.requires_grad}, rejected_rewards {rejected.requires_grad})."
    )
    loss.backward()
    pc, pr, rc, rr = (v.numpy() for v in values)
    weight = beta * _sigmoid_np(-beta * ((pc - rc) - (pr - rr))) / len(pc)
    expected = {"policy_chosen": -weight, "policy_rejected": weight}
    for name, leaf in zip(DPO_NAMES[:2], leaves[:2], strict=True):
        assert leaf.grad is not None, f"Called {call}. {name} got no gradient."
        assert_close(leaf.grad, torch.tensor(expected[name]), call=f"{call} -> {name}.grad", **TIGHT,
                     because="d loss / d policy_chosen = -beta * sigmoid(-beta * margin) / B (negative: descent raises "
                             "the chosen log-prob) and d loss / d policy_rejected is its opposite.")
    for name, leaf in zip(DPO_NAMES[2:], leaves[2:], strict=True):
        assert leaf.grad is None or not leaf.grad.any(), (
            f"Called {call}. {name} received the gradient {leaf.grad}; the reference model is frozen, so no gradient "
            "may flow into its log-probs (detach them)."
        )


@pytest.mark.exercise("dpo_loss")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_dpo_loss_is_finite_for_huge_margins(impl, dtype):
    margins = np.array([1e4, -1e4, 0.3, -2.0])
    values = [torch.tensor(margins, dtype=dtype), torch.zeros(4, dtype=dtype), torch.zeros(4, dtype=dtype),
              torch.zeros(4, dtype=dtype)]
    leaves = [v.clone().requires_grad_() for v in values]
    loss = impl.dpo_loss(*leaves, beta=1.0)[0]
    call = f"dpo_loss(policy_chosen={margins.tolist()} in {dtype}, zeros, zeros, zeros, beta=1.0)"
    expected = torch.tensor(_softplus_np(-margins).mean(), dtype=DT)
    tolerance = {"rtol": 1e-6, "atol": 0} if dtype == torch.float32 else TIGHT
    _check_close(loss.detach().double(), expected, call=call, symbol="dpo_loss", **tolerance,
                 run=lambda f: f(*copy.deepcopy(values), beta=1.0)[0].double(),
                 because="margins of +-1e4 are legal: -log(sigmoid(-1e4)) is inf, F.logsigmoid gives 1e4.")
    loss.backward()
    grad = leaves[0].grad
    assert grad is not None and torch.isfinite(grad).all(), (
        f"Called {call} and backward(). The gradient of policy_chosen is {grad}; it must be finite."
    )
    assert_close(grad.double(), torch.tensor(-_sigmoid_np(-margins) / 4), call=call + " -> policy_chosen.grad",
                 because="-sigmoid(-margin) / B: 0 for a margin of 1e4, -1/B for -1e4.", **tolerance)


@pytest.mark.exercise("dpo_loss")
def test_dpo_loss_as_beta_goes_to_zero(impl):
    gen = generator(5)
    values = [randn(gen, 3, scale=10.0) - 30.0 for _ in range(4)]
    for beta in (1e-5, 1e-7, 1e-9):
        leaves = [v.clone().requires_grad_() for v in values]
        loss = impl.dpo_loss(*leaves, beta=beta)[0]
        call = _loss_call("dpo_loss", dict(zip(DPO_NAMES, values, strict=True)), beta=beta)
        assert_close(loss, torch.tensor(math.log(2), dtype=DT), call=call, rtol=0, atol=50 * beta,
                     because="as beta -> 0 the margin term vanishes and the loss tends to log 2 (within about beta "
                             "times the margin).")
        loss.backward()
        assert_close(leaves[0].grad, torch.full((3,), -beta / 2 / 3, dtype=DT), rtol=1e-3, atol=0,
                     call=call + " -> policy_chosen.grad",
                     because="the gradient tends to -beta / 2 / B: beta scales the margin inside the log-sigmoid, so a "
                             "small beta means a gentle push.")


@pytest.mark.exercise("dpo_loss")
@pytest.mark.parametrize("beta", [0.0, -0.1, True])
def test_dpo_loss_rejects_a_bad_beta(impl, beta):
    values = [torch.zeros(2, dtype=DT)] * 4
    with pytest.raises(ValueError) as info:
        impl.dpo_loss(*values, beta=beta)
    assert str(beta) in str(info.value), (
        f"Called dpo_loss(zeros, zeros, zeros, zeros, beta={beta!r}). The ValueError says {str(info.value)!r}; it must "
        f"name beta={beta!r} (beta must be a positive number, and a bool is not one)."
    )


@pytest.mark.exercise("dpo_loss")
@pytest.mark.parametrize("shapes", [[(3,), (3,), (3,), (4,)], [(2,), (2,), (1, 2), (2,)], [(2, 1), (2,), (2,), (2,)],
                                    [(2,), (1, 2), (2,), (2,)], [(2,), (2,), (2,), (2, 1)], [(0,)] * 4],
                         ids=["3-vs-4", "ref_chosen", "policy_chosen", "policy_rejected", "ref_rejected", "empty"])
def test_dpo_loss_rejects_bad_shapes(impl, shapes):
    with pytest.raises(ValueError):
        impl.dpo_loss(*(torch.zeros(s, dtype=DT) for s in shapes))


# --------------------------------------------------------------------------------------------------
# ppo_clip_loss

PPO_NAMES = ("logp_new", "logp_old", "advantages")


def _ppo_expected(logp_new, logp_old, advantages, clip: float):
    ratio = np.exp(logp_new.detach().numpy() - logp_old.detach().numpy())
    adv = advantages.detach().numpy()
    objective = np.minimum(ratio * adv, np.clip(ratio, 1 - clip, 1 + clip) * adv)
    return torch.tensor(-objective.mean(), dtype=DT)


def _ppo_gradient(logp_new, logp_old, advantages, clip: float) -> torch.Tensor:
    """d loss / d logp_new by region: 0 where the clip is active on the advantage's side, -r * A / n elsewhere."""
    ratio = np.exp(logp_new.detach().numpy() - logp_old.detach().numpy())
    adv = advantages.detach().numpy()
    clipped = ((adv > 0) & (ratio > 1 + clip)) | ((adv < 0) & (ratio < 1 - clip))
    return torch.tensor(np.where(clipped, 0.0, -ratio * adv / ratio.size))


@pytest.mark.exercise("ppo_clip_loss")
@given(paired_values(3, -1.0, 1.0), st.sampled_from([None, 0.1, 0.3]), st.booleans())
def test_ppo_clip_loss_matches_the_closed_form(impl, values, clip, negative):
    logp_new, logp_old, advantages = values
    advantages = advantages * 3 * (-1 if negative else 1)
    kwargs = {"logp_new": logp_new, "logp_old": logp_old, "advantages": advantages}
    options = {} if clip is None else {"clip": clip}
    pristine = copy.deepcopy(kwargs)
    got = impl.ppo_clip_loss(**kwargs, **options)
    call = _loss_call("ppo_clip_loss", pristine, **options)
    _assert_tensors_unchanged(call, pristine, kwargs)
    assert isinstance(got, torch.Tensor) and got.shape == () and got.dtype == DT, (
        f"Called {call}. Returned {describe(got)}; expected a 0-dim float64 tensor."
    )
    expected = _ppo_expected(logp_new, logp_old, advantages, 0.2 if clip is None else clip)
    _check_close(got, expected, call=call, symbol="ppo_clip_loss",
                 run=lambda f: f(**copy.deepcopy(pristine), **options),
                 because="the loss is -mean(min(r * A, clamp(r, 1 - clip, 1 + clip) * A)) with r = exp(logp_new - "
                         "logp_old) (clip defaults to 0.2).")


RATIOS = [0.5, 0.75, 0.85, 1.0, 1.15, 1.3, 2.0]


@pytest.mark.exercise("ppo_clip_loss")
@pytest.mark.parametrize("sign", [1.0, -1.0], ids=["A>0", "A<0"])
@pytest.mark.parametrize("clip", [0.2, 0.1])
def test_ppo_clip_gradient_vanishes_only_on_the_advantage_side(impl, sign, clip):
    # ratios below, inside and above [1 - clip, 1 + clip]; advantages of one sign and different sizes
    logp_old = torch.linspace(-2.0, -0.5, len(RATIOS), dtype=DT)
    logp_new = (logp_old + torch.log(torch.tensor(RATIOS, dtype=DT))).requires_grad_()
    advantages = sign * torch.linspace(0.5, 2.0, len(RATIOS), dtype=DT)
    loss = impl.ppo_clip_loss(logp_new, logp_old, advantages, clip=clip)
    loss.backward()
    call = (f"ppo_clip_loss(ratios {RATIOS}, advantages of sign {'+' if sign > 0 else '-'}, clip={clip}) and "
            "backward() -> logp_new.grad")
    expected = _ppo_gradient(logp_new, logp_old, advantages, clip)
    got = logp_new.grad
    assert got is not None, f"Called {call}. logp_new got no gradient."
    side = "above 1 + clip" if sign > 0 else "below 1 - clip"
    other = "below 1 - clip" if sign > 0 else "above 1 + clip"
    zero = expected == 0
    assert bool((got[zero] == 0).all()), (
        f"Called {call}.\nReturned {got.tolist()},\nexpected {expected.tolist()}.\nBecause with A "
        f"{'> 0' if sign > 0 else '< 0'} the clip is active for ratios {side}: there the objective is flat and the "
        "gradient must be exactly 0."
        + (f"\nLikely cause: {c}" if (c := _ppo_cause(logp_new, logp_old, advantages, clip, got)) else "")
    )
    assert_close(got, expected, call=call, **TIGHT, cause=_ppo_cause(logp_new, logp_old, advantages, clip, got),
                 because=f"everywhere else the loss is -r * A itself, gradient -r * A / n, including ratios {other}: "
                         "the clip acts on one side only, the side the sign of the advantage selects (that is what "
                         "the min does).")


def _ppo_cause(logp_new, logp_old, advantages, clip, got):
    def run(f):
        leaf = logp_new.detach().clone().requires_grad_()
        f(leaf, logp_old.clone(), advantages.clone(), clip=clip).backward()
        return leaf.grad

    return _cause("ppo_clip_loss", run, got) if error_report(got, _ppo_gradient(logp_new, logp_old, advantages, clip),
                                                             **TIGHT) else None


@pytest.mark.exercise("ppo_clip_loss")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_ppo_clip_loss_with_log_probs_of_whole_sequences(impl, dtype):
    # Summed log-probabilities of long responses are large negative numbers: exp(-800) is 0 in float64 (exp(-150) in
    # float32), so exp(logp_new) / exp(logp_old) is 0 / 0 = nan while exp(logp_new - logp_old) is the ratio itself.
    logp_old = torch.tensor([-800.0, -150.0, -1200.0, -90.0, -2.0], dtype=dtype)
    ratios = torch.tensor([1.1, 0.7, 1.5, 1.0, 0.9], dtype=DT)
    logp_new = (logp_old.double() + ratios.log()).to(dtype).requires_grad_()
    advantages = torch.tensor([1.0, -0.5, 2.0, -1.0, 0.5], dtype=dtype)
    call = (f"ppo_clip_loss(logp_new={[round(v, 4) for v in logp_new.tolist()]}, logp_old={logp_old.tolist()}, "
            f"advantages={advantages.tolist()}) in {dtype}")
    loss = impl.ppo_clip_loss(logp_new, logp_old, advantages)
    tolerance = {"rtol": 1e-6, "atol": 0} if dtype == torch.float32 else TIGHT
    _check_close(loss.detach().double(), _ppo_expected(logp_new, logp_old, advantages, 0.2), call=call, **tolerance,
                 symbol="ppo_clip_loss",
                 run=lambda f: f(logp_new.detach().clone(), logp_old.clone(), advantages.clone()).double(),
                 because="r = exp(logp_new - logp_old): take the difference first, then exp. exp of each log-prob "
                         "underflows to 0 for a long sequence, and 0 / 0 is nan.")
    loss.backward()
    assert_close(logp_new.grad.double(), _ppo_gradient(logp_new, logp_old, advantages, 0.2), call=call + " -> "
                 "logp_new.grad", because="the gradient is -r * A / n where the clip is not active, 0 where it is; "
                 "finite for any log-probabilities.", **tolerance)


@pytest.mark.exercise("ppo_clip_loss")
def test_ppo_clip_loss_sends_no_gradient_into_the_data(impl):
    gen = generator(9)
    leaves = [randn(gen, 5, scale=0.3).requires_grad_() for _ in range(3)]
    impl.ppo_clip_loss(*leaves).backward()
    for name, leaf in zip(PPO_NAMES[1:], leaves[1:], strict=True):
        assert leaf.grad is None or not leaf.grad.any(), (
            f"Called ppo_clip_loss(...) with {name} requiring a gradient, and backward(). {name} received {leaf.grad}; "
            "the old policy's log-probs and the advantages are data collected before the update: detach them."
        )


@pytest.mark.exercise("ppo_clip_loss")
def test_ppo_clip_loss_keeps_float32(impl):
    gen = generator(2)
    values = [randn(gen, 6, scale=0.3, dtype=torch.float32) for _ in range(3)]
    got = impl.ppo_clip_loss(*values)
    assert got.dtype == torch.float32, f"Called ppo_clip_loss(float32 tensors). Returned dtype {got.dtype}."
    assert_close(got.double(), _ppo_expected(*values, 0.2), call="ppo_clip_loss(float32 tensors)", rtol=1e-5,
                 atol=1e-6, because="float32 rounding only.")


@pytest.mark.exercise("ppo_clip_loss")
@pytest.mark.parametrize("clip", [0.0, 1.0, -0.2, 1.5, True])
def test_ppo_clip_loss_rejects_a_bad_clip(impl, clip):
    values = [torch.zeros(2, dtype=DT)] * 3
    with pytest.raises(ValueError) as info:
        impl.ppo_clip_loss(*values, clip=clip)
    assert str(clip) in str(info.value), (
        f"Called ppo_clip_loss(zeros, zeros, zeros, clip={clip!r}). The ValueError says {str(info.value)!r}; it must "
        "name the clip, which must be in (0, 1)."
    )


@pytest.mark.exercise("ppo_clip_loss")
@pytest.mark.parametrize("shapes", [[(3,), (3,), (4,)], [(2, 3), (3,), (2, 3)], [(1, 3), (3,), (3,)],
                                    [(3,), (3,), (2, 3)], [(0,)] * 3],
                         ids=["3-vs-4", "logp_old", "logp_new", "advantages", "empty"])
def test_ppo_clip_loss_rejects_bad_shapes(impl, shapes):
    with pytest.raises(ValueError):
        impl.ppo_clip_loss(*(torch.zeros(s, dtype=DT) for s in shapes))


# --------------------------------------------------------------------------------------------------
# ddp_train_step


def _ddp_net(state: dict | None = None) -> nn.Module:
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).to(DT)
    if state is not None:
        model.load_state_dict(state)
    return model


def _ddp_data(seed: int, steps: int = 2, batch: int = 6) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = generator(seed)
    return [(randn(gen, batch, 4, scale=1.5), torch.randint(0, 3, (batch,), generator=gen)) for _ in range(steps)]


def _ddp_state(seed: int) -> dict:
    with seeded(seed):
        model = _ddp_net()
    return {name: value.clone() for name, value in refill_(model, seed, 0.8).state_dict().items()}


def _full_batch_training(state: dict, data, lr: float) -> tuple[list[float], dict]:
    """The oracle: one process, the whole batch, plain AdamW steps."""
    model = _ddp_net(state)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    losses = []
    for x, y in data:
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses, {name: p.detach().clone() for name, p in model.named_parameters()}


def _ddp_worker(module, rank: int, world_size: int, state: dict, data, lr: float) -> dict:
    """Runs in each of the processes the check starts: this rank's share of every step, through the code under test."""
    model = _ddp_net(state)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    losses = []
    for x, y in data:
        share = (x[rank::world_size], y[rank::world_size])  # interleaved rows: a strided view, as a layout probe
        kept = (share[0].clone(), share[1].clone())
        losses.append(module.ddp_train_step(model, share, optimizer, F.cross_entropy))
        assert torch.equal(share[0], kept[0]) and torch.equal(share[1], kept[1]), (
            f"ddp_train_step modified its batch in place on rank {rank}: the caller still needs it."
        )
    return {"losses": losses, "params": {name: p.detach().clone() for name, p in model.named_parameters()}}


class _one_process_group:  # noqa: N801 - used like a function: `with _one_process_group():`
    """A gloo process group of world size 1 in the check's own process, always destroyed on the way out."""

    def __enter__(self):
        import torch.distributed as dist

        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)

    def __exit__(self, *exc):
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
        return False


def _ddp_call(world_size: int) -> str:
    return (f"ddp_train_step(model, this process's share of 6 examples, AdamW(lr=0.05), F.cross_entropy) in each of "
            f"{world_size} gloo process(es), twice")


def _assert_no_process_group(impl) -> None:
    model = _ddp_net(_ddp_state(0))
    x, y = _ddp_data(0, 1)[0]
    with pytest.raises(RuntimeError) as info:
        impl.ddp_train_step(model, (x, y), torch.optim.SGD(model.parameters(), lr=0.1), F.cross_entropy)
    if isinstance(info.value, NotImplementedError):  # a RuntimeError too: the stub is simply not written yet
        raise info.value
    assert "init_process_group" in str(info.value), (
        f"Called ddp_train_step without a process group. The RuntimeError says {str(info.value)!r}; it must tell the "
        "caller to call torch.distributed.init_process_group first."
    )


@pytest.mark.exercise("ddp_train_step")
def test_ddp_step_needs_a_process_group(impl):
    _assert_no_process_group(impl)


@pytest.mark.exercise("ddp_train_step")
def test_ddp_step_in_one_process_is_a_plain_step(impl):
    state, data = _ddp_state(3), _ddp_data(3)
    model = _ddp_net(state)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.05)
    for p in model.parameters():
        p.grad = torch.full_like(p, 100.0)  # left over from somewhere else: the step starts with zero_grad
    with _one_process_group():
        losses = [impl.ddp_train_step(model, batch, optimizer, F.cross_entropy) for batch in data]
    expected_losses, expected = _full_batch_training(state, data, 0.05)
    call = _ddp_call(1)
    assert all(isinstance(loss, float) for loss in losses), (
        f"Called {call}. Returned {losses!r}; expected the mean loss as a Python float each time."
    )
    for name, p in model.named_parameters():
        assert_close(p.detach(), expected[name], call=f"{call} -> {name}", **TIGHT,
                     because="with one process the averaged gradient is the process's own gradient: zero_grad "
                             "FIRST (the model's .grad held 100s from elsewhere), backward, all-reduce, divide by 1, "
                             "step.")
    assert_close(torch.tensor(losses), torch.tensor(expected_losses), call=call, **TIGHT,
                 because="with one process the step is a plain step, and the returned loss that batch's loss.")


@pytest.mark.exercise("ddp_train_step")
def test_ddp_two_processes_train_like_one_on_the_full_batch(impl):
    # Mutation testing can only see calls made in the check's own process, so this check first asserts the
    # documented precondition here (no process group: RuntimeError) before the two processes run the step.
    _assert_no_process_group(impl)
    state, data, lr = _ddp_state(5), _ddp_data(5), 0.05
    results = run_distributed(_ddp_worker, 2, impl, state, data, lr, kata=KATA, timeout=60)
    expected_losses, expected = _full_batch_training(state, data, lr)
    call = _ddp_call(2)
    for rank, result in enumerate(results):
        losses = result["losses"]
        assert all(isinstance(loss, float) for loss in losses), (
            f"Called {call}. Rank {rank} returned {losses!r}; expected the mean loss as a Python float each time."
        )
        assert_close(torch.tensor(losses), torch.tensor(expected_losses), call=f"{call} -> losses on rank {rank}",
                     **TIGHT, because="each process returns the mean loss over ALL processes (the full batch's "
                                      "loss), the same on every rank: all-reduce the local loss and divide.")
        for name, value in expected.items():
            got = result["params"][name]
            if error_report(got, value, **TIGHT):
                ratio = ""
                start = _ddp_net(state).state_dict()[name]
                moved, wanted = (got - start).abs().sum().item(), (value - start).abs().sum().item()
                if wanted:
                    ratio = f" (the parameters moved {moved / wanted:.3g} times as far as they should)"
                assert_close(got, value, call=f"{call} -> {name} on rank {rank}", **TIGHT,
                             because="after each step every copy must hold the parameters of one process trained on "
                                     "the whole batch: all-reduce (sum) each gradient, divide by the world size, then "
                                     f"step; AdamW is not linear, so averaging parameters afterwards is not the same"
                                     f"{ratio}.")


# --------------------------------------------------------------------------------------------------
# checkpointed_forward


def _block(seed: int, p: float = 0.0, width: int = 6) -> nn.Module:
    with seeded(seed):
        block = nn.Sequential(nn.Linear(width, 16), nn.GELU(), nn.Dropout(p), nn.Linear(16, width))
    return refill_(block.to(DT), seed, 0.5)


class _Counted(nn.Module):
    """A block that counts how often its forward runs."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.inner(x)


def _plain_run(block: nn.Module, x: torch.Tensor, weights: torch.Tensor, seed: int | None = None):
    """Output and gradients (of x, when it requires one, and of the parameters) without checkpointing."""
    block = copy.deepcopy(block)
    x = x.detach().clone().requires_grad_(x.requires_grad)
    with seeded(seed if seed is not None else 0):
        out = block(x)
    (out * weights).sum().backward()
    grads = {name: p.grad.clone() for name, p in block.named_parameters()}
    return out.detach(), (x.grad.clone() if x.requires_grad else None), grads


def _checkpointed_run(module, block: nn.Module, x: torch.Tensor, weights: torch.Tensor, seed: int | None = None):
    block = copy.deepcopy(block)
    x = x.detach().clone().requires_grad_(x.requires_grad)
    with seeded(seed if seed is not None else 0):
        out = module.checkpointed_forward(block, x)
        assert out.requires_grad, (
            "checkpointed_forward(block, x) returned a tensor that does not require a gradient: it must be trainable "
            "like block(x) (no torch.no_grad() or .detach())."
        )
        (out * weights).sum().backward()  # inside seeded: the recomputation must restore the forward's RNG state
    grads = {name: (p.grad.clone() if p.grad is not None else None) for name, p in block.named_parameters()}
    return out.detach(), (x.grad.clone() if x.grad is not None else None), grads


def _check_checkpointed(impl, block, x, weights, seed=None, because=""):
    call = f"checkpointed_forward(block, x of shape {tuple(x.shape)}, requires_grad={x.requires_grad})"
    out, x_grad, grads = _checkpointed_run(impl, block, x, weights, seed)
    expected_out, expected_x_grad, expected = _plain_run(block, x, weights, seed)

    def run(part, name=None):
        def go(f):
            result = _checkpointed_run(_Module(checkpointed_forward=f), block, x, weights, seed)[part]
            return result[name] if name else result
        return go

    because = because or "checkpointing changes memory, never results: the output and every gradient equal block(x)'s."
    _check_close(out, expected_out, call=call, symbol="checkpointed_forward", run=run(0), because=because)
    if x.requires_grad:
        assert x_grad is not None, f"Called {call} and backward(). x got no gradient."
        _check_close(x_grad, expected_x_grad, call=call + " -> x.grad", symbol="checkpointed_forward", run=run(1),
                     because=because)
    for name, grad in expected.items():
        if grads[name] is None:
            cause = _cause("checkpointed_forward", run(2, name), matches=lambda g: g is None)
            raise AssertionError(
                f"Called {call} and backward(). The block's parameter {name} got no gradient.\nBecause with "
                "use_reentrant=True the parameters get no gradient when x does not require one: use "
                "use_reentrant=False." + (f"\nLikely cause: {cause}" if cause else "")
            )
        _check_close(grads[name], grad, call=f"{call} -> {name}.grad", symbol="checkpointed_forward", run=run(2, name),
                     because=because)


@pytest.mark.exercise("checkpointed_forward")
@settings(max_examples=15)
@given(seeds, st.lists(st.integers(1, 3), min_size=1, max_size=2), st.booleans())
def test_checkpointed_forward_keeps_output_and_gradients(impl, seed, lead, strided):
    gen = generator(seed)
    x = randn(gen, 6, *lead).movedim(0, -1) if strided else randn(gen, *lead, 6)
    x.requires_grad_()
    weights = randn(gen, *x.shape)
    pristine = x.detach().clone()
    _check_checkpointed(impl, _block(seed), x, weights)
    assert torch.equal(x.detach(), pristine), "checkpointed_forward modified its input x in place"


@pytest.mark.exercise("checkpointed_forward")
def test_checkpointed_forward_trains_the_block_when_x_needs_no_gradient(impl):
    # the first block of a model: its input (embeddings of a frozen table, or data) needs no gradient
    gen = generator(4)
    x, weights = randn(gen, 3, 6), randn(gen, 3, 6)
    _check_checkpointed(impl, _block(4), x, weights)
    impl.checkpointed_forward(_block(4), x)
    assert not x.requires_grad, (
        "Called checkpointed_forward(block, x) with x.requires_grad False. Afterwards x.requires_grad is True: the "
        "caller's tensor was changed (x.requires_grad_()), typically to make use_reentrant=True work.\nBecause the "
        "input is not modified, its requires_grad included: use_reentrant=False trains the block without touching x."
    )


@pytest.mark.exercise("checkpointed_forward")
def test_checkpointed_forward_keeps_the_block_mode(impl):
    # A block in eval mode drops nothing: checkpointing must not switch it to train mode (or the other way round).
    block = _block(6, p=0.5).eval()
    gen = generator(6)
    x, weights = randn(gen, 4, 6).requires_grad_(), randn(gen, 4, 6)
    _check_checkpointed(impl, block, x, weights, seed=6,
                        because="the block runs in the mode the caller set: in eval mode its dropout drops nothing, "
                                "and the result equals block(x).")
    for training in (False, True):
        block.train(training)
        impl.checkpointed_forward(block, x)
        assert block.training is training, (
            f"Called checkpointed_forward(block in {'train' if training else 'eval'} mode, x). The block is now in "
            f"{'train' if block.training else 'eval'} mode; leave the mode to the caller."
        )


@pytest.mark.exercise("checkpointed_forward")
def test_checkpointed_forward_recomputes_during_backward(impl):
    block = _Counted(_block(7))
    x = randn(generator(7), 2, 6).requires_grad_()
    out = impl.checkpointed_forward(block, x)
    after_forward = block.calls
    out.sum().backward()
    assert (after_forward, block.calls) == (1, 2), (
        f"Called checkpointed_forward(block, x), then backward(). The block's forward ran {after_forward} time(s) "
        f"during the forward pass and {block.calls - after_forward} time(s) during backward; expected 1 and 1.\n"
        "Because checkpointing keeps no activations inside the block: backward recomputes them by running the forward "
        "again (torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False))."
    )


@pytest.mark.exercise("checkpointed_forward")
@pytest.mark.parametrize("seed", [1, 2])
def test_checkpointed_forward_recomputes_the_same_dropout(impl, seed):
    block = _block(seed, p=0.5).train()
    gen = generator(seed)
    x, weights = randn(gen, 4, 6).requires_grad_(), randn(gen, 4, 6)
    _check_checkpointed(impl, block, x, weights, seed=seed,
                        because="the recomputation in backward must drop the same elements as the forward pass did: "
                                "checkpoint saves and restores the RNG state (preserve_rng_state=True, the default), "
                                "and the result equals block(x) under the same seed.")


@pytest.mark.exercise("checkpointed_forward")
def test_checkpointed_forward_without_gradients(impl):
    block = _block(3)
    x = randn(generator(3), 2, 6)
    with torch.no_grad():
        got = impl.checkpointed_forward(block, x)
        expected = block(x)
    assert_close(got, expected, call="checkpointed_forward(block, x) under torch.no_grad()", **TIGHT,
                 because="in inference there is nothing to save or recompute: it is simply block(x).")


@pytest.mark.exercise("checkpointed_forward")
@pytest.mark.gpu
def test_checkpointed_forward_lowers_peak_memory_on_cuda(impl):
    torch.manual_seed(0)
    block = nn.Sequential(*(nn.Sequential(nn.Linear(1024, 4096), nn.GELU(), nn.Linear(4096, 1024)) for _ in range(4)))
    block = block.cuda()
    x = torch.randn(64, 1024, device="cuda", requires_grad=True)

    def peak(run):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        out = run(x)
        out.sum().backward()
        torch.cuda.synchronize()
        x.grad = None
        block.zero_grad(set_to_none=True)
        return torch.cuda.max_memory_allocated() - base

    plain = peak(block)
    saved = peak(lambda t: impl.checkpointed_forward(block, t))
    assert saved < 0.7 * plain, (
        f"Called checkpointed_forward(4 MLP blocks on CUDA, x of shape (64, 1024)) and backward(). Its peak memory was "
        f"{saved / 2**20:.1f} MiB, against {plain / 2**20:.1f} MiB without checkpointing; keeping only the input "
        "should save at least 30% here."
    )
