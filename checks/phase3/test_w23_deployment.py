"""Checks for w23_deployment: perplexity, BLEU, int8 quantisation, a FastAPI server, a Gradio demo, batched
generation and a content filter, all offline.

The oracles are the libraries: Hugging Face's own causal-LM loss for ``evaluate_model``, ``sacrebleu`` for
``corpus_bleu``, ``torch.fake_quantize_per_channel_affine`` and closed-form bounds for int8, ``model.generate``
one prompt at a time for ``batch_generate`` and the server's greedy answers, and FastAPI's ``TestClient``
(which runs the app's lifespan) for the server's behaviour. Tiny GPT-2 models are built from configs with
seeded float64 weights and a tokenizer is trained on text written here; nothing is downloaded.

The first create_app check serves the app as clients meet it: uvicorn on 127.0.0.1 in a child process
(``checks.processes.serve``, which runs the implementation under test there too, so ``kata verify`` proves
that a served mistake is caught), eight concurrent requests, a few invalid ones and a seeded sample over
real HTTP; it takes about a second. Two ``slow`` checks go further: one fuzzes every operation of the app's
OpenAPI schema with schemathesis (a bounded number of generated requests, valid and invalid: no 5xx, no
answer that violates the schema), and one sends a bounded burst of 200 requests over 8 connections to the
served app and prints the latency. Like every slow check they prove the reference and the variants.

Checklist notes (CONTRACTS.md items that do not apply, and why):
- Randomness (8): only the server samples, from a ``torch.Generator`` per request: the checks pin that the
  same seed repeats, that seeds differ, that a null seed is fresh, that the global RNG is untouched and that
  a tiny temperature is greedy. Dropout is the models' own; the checks pass models in training mode to
  prove that every exercise turns it off.
- Devices (3): the exercises take the device of the model or tensor they are given and create nothing on
  their own except int8 buffers, whose device is checked; meta tensors cannot be quantised (the nan check
  needs values), and the server is CPU-only by design (checks run without CUDA).
- dtypes (3): ``evaluate_model`` returns a Python float for float32 and float64 models (both checked);
  ``quantize_int8`` keeps the weight's dtype in ``scale`` (float32, float64, bfloat16); ``dequantize`` and
  ``QuantizedLinear`` compute in the scale's dtype. Text-in, text-out exercises have no dtype.
- State over time (6): the server is started twice in a row (a second lifespan resets its counters), its
  slots are checked to be freed after success and after a failure; ``batch_generate``, ``evaluate_model``
  restore the model's mode (train and eval both checked; ``evaluate_model`` also when its loader fails);
  ``batch_generate`` leaves the tokenizer's ``padding_side`` as it was (both sides checked). ``create_demo`` is
  checked never to call ``launch()`` (patched to a recorder, so no check ever starts a web server).
- Structure (7): only ``QuantizedLinear`` is a module: its buffers, their dtypes, the absence of parameters,
  of shared storage with the float layer and of any float copy of the weight kept as a plain attribute are checked.
- Numerics at scale (9): perplexity over 7500 tokens, logits of +-1e3 in some rows, and a model so bad that
  exp overflows; int8 rows from 1e-30 to 1e6 in one matrix.
"""

import concurrent.futures
import contextlib
import copy
import math
import statistics
import threading
import time
import warnings

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from torch import nn

from checks.hub import byte_level_bpe
from checks.numerics import assert_close, describe, error_report, format_call, likely_cause
from checks.torch_strategies import generator, randn, refill_, seeds

pytestmark = pytest.mark.kata("w23_deployment")

KATA = "w23_deployment"
DT = torch.float64
TIGHT = {"rtol": 1e-9, "atol": 1e-10}
PAD, EOS = 0, 1  # the tokenizer's special ids

WORDS = ("the cat sat on a mat while dogs ran past quickly under seven bright lamps and one old wizard wrote "
         "kata checks for servers every morning").split()
CORPUS = [" ".join(WORDS[(i * k + k * k) % len(WORDS)] for k in range(3, 11)) + "." for i in range(100)]


def _fail(call: str, got: str, expected: str, because: str, cause: str | None = None) -> None:
    lines = [f"Called {call}.", f"Returned {got},", f"expected {expected}.", f"Because {because}"]
    if cause:
        lines.append(f"Likely cause: {cause}")
    raise AssertionError("\n".join(lines))


# --------------------------------------------------------------------------------------------------
# tiny models and a tokenizer, built the same way in this process and in a served child


def new_tokenizer():
    """A fresh byte-level BPE tokenizer trained on CORPUS: pad id 0, eos id 1, right padding."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    trained = Tokenizer.from_str(byte_level_bpe(CORPUS, vocab_size=300))
    return PreTrainedTokenizerFast(tokenizer_object=trained, pad_token="<pad>", eos_token="<|endoftext|>",
                                   bos_token="<|endoftext|>", padding_side="right")


def new_gpt2(seed: int, *, n_positions: int = 64, dropout: float = 0.0, scale: float = 0.3,
             eos_boost: float = 1.0):
    """A float64 GPT-2 (2 layers, 16 wide) with seeded weights large enough to give varied, peaked outputs.

    ``eos_boost`` scales the eos token's (tied) embedding row, which makes the model end some texts early.
    It is returned in training mode, so dropout > 0 is on until someone calls ``eval()``.
    """
    from transformers.models.gpt2.modeling_gpt2 import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(vocab_size=300, n_positions=n_positions, n_embd=16, n_layer=2, n_head=2,
                        bos_token_id=EOS, eos_token_id=EOS, pad_token_id=PAD, resid_pdrop=dropout,
                        embd_pdrop=dropout, attn_pdrop=dropout)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = GPT2LMHeadModel(config)
    model = refill_(model.to(DT), seed, scale)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")):
                p.add_(1.0)  # LayerNorm gains around 1, not 0
        model.transformer.wte.weight[EOS] *= eos_boost
    return model.train()


def app_model():
    """The served model: context 1024, dropout 0.5 (only eval mode makes it deterministic), eos now and then."""
    return new_gpt2(8, n_positions=1024, dropout=0.5, eos_boost=2.5)


def served_app():
    """What ``serve`` runs in its child process: the implementation under test's app around app_model()."""
    from checks.processes import implementation

    return implementation(KATA).create_app(app_model(), new_tokenizer())


def _greedy(model, tok, prompt: str, max_new_tokens: int) -> tuple[str, int]:
    """The checks' oracle: ``model.generate`` on the prompt alone, greedy, dropout off; (new text, new ids)."""
    was_training = model.training
    model.eval()
    ids = tok(prompt, return_tensors="pt").input_ids
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                 do_sample=False, pad_token_id=PAD)
    finally:
        model.train(was_training)
    new = out[0, ids.shape[1]:]
    return tok.decode(new, skip_special_tokens=True), len(new)


def _parameters(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def _same_parameters(model, before: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(p, before[name]) for name, p in model.named_parameters())


# --------------------------------------------------------------------------------------------------
# evaluate_model


class TableLM(nn.Module):
    """A bigram model that returns a plain logits tensor: logits[b, t] = table[input_ids[b, t]] + pos[t].

    Dropout on the logits (p = 0.5) in training mode; every call records whether grad mode was on.
    """

    def __init__(self, vocab: int, seed: int, scale: float = 2.0, max_len: int = 10_000) -> None:
        super().__init__()
        gen = generator(seed)
        self.table = nn.Parameter(randn(gen, vocab, vocab, scale=scale))
        self.pos = nn.Parameter(randn(gen, max_len, 1, scale=0.1).expand(max_len, vocab).clone())
        self.dropout = nn.Dropout(0.5)
        self.grad_modes: list[bool] = []

    def forward(self, input_ids, attention_mask=None):
        self.grad_modes.append(torch.is_grad_enabled())
        return self.dropout(self.table[input_ids] + self.pos[: input_ids.shape[1]])


def _table_perplexity(model: TableLM, batches: list[dict]) -> float:
    """The checks' own closed form: -log_softmax(table[x_t] + pos[t])[y_{t+1}] over every scored pair."""
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in batches:
            ids, labels = batch["input_ids"], batch["labels"]
            logp = torch.log_softmax(model.table[ids] + model.pos[: ids.shape[1]], dim=-1)  # no dropout: eval
            for b in range(ids.shape[0]):
                for t in range(ids.shape[1] - 1):
                    if labels[b, t + 1] != -100:
                        total -= logp[b, t, labels[b, t + 1]].item()
                        count += 1
    return math.exp(total / count)


def _hf_perplexity(model, batches: list[dict]) -> float:
    """Hugging Face's causal-LM loss (labels shifted, -100 ignored), weighted by token counts, in float64.

    Hugging Face computes its loss in float32 even for a float64 model, so the oracle sums the float64 NLLs of the
    same shifted pairs itself, and checks that they agree with Hugging Face's loss to float32 precision.
    """
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        with torch.no_grad():
            for batch in batches:
                labels = batch["labels"]
                n = int((labels[:, 1:] != -100).sum())
                if n:
                    out = model(batch["input_ids"], attention_mask=batch.get("attention_mask"), labels=labels)
                    logits = out.logits[:, :-1]
                    nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
                                          reduction="sum").item()
                    hf = out.loss.item()
                    assert abs(nll / n - hf) <= 1e-5 * abs(hf), "the oracle no longer follows HF's convention"
                    total += nll
                    count += n
    finally:
        model.train(was_training)
    return math.exp(total / count)


def _make_batch(gen: torch.Generator, lengths: list[int], t: int, *, left: bool, with_mask: bool,
                prompt: int, vocab: int = 300) -> dict:
    """Token ids 2..vocab-1 padded with 0 to length t (left or right); labels -100 on pads and on the first
    ``prompt`` real tokens of every row."""
    ids = torch.randint(2, vocab, (len(lengths), t), generator=gen)
    mask = torch.zeros(len(lengths), t, dtype=torch.long)
    labels = ids.clone()
    for b, n in enumerate(lengths):
        real = slice(t - n, t) if left else slice(0, n)
        mask[b, real] = 1
        start = (t - n) if left else 0
        labels[b, start:start + min(prompt, n)] = -100
    ids = ids.masked_fill(mask == 0, PAD)
    labels = labels.masked_fill(mask == 0, -100)
    batch = {"input_ids": ids, "labels": labels}
    if with_mask:
        batch["attention_mask"] = mask
    return batch


@st.composite
def eval_loaders(draw):
    """1-3 batches of 1-3 rows, 2-12 positions, left or right padding, with or without a mask and a prompt."""
    gen = generator(draw(seeds))
    batches = []
    for _ in range(draw(st.integers(1, 3))):
        t = draw(st.integers(2, 12))
        lengths = draw(st.lists(st.integers(1, t), min_size=1, max_size=3))
        batches.append(_make_batch(gen, lengths, t, left=draw(st.booleans()), with_mask=draw(st.booleans()),
                                   prompt=draw(st.integers(0, 2))))
    if not any((b["labels"][:, 1:] != -100).any() for b in batches):
        batches.append(_make_batch(gen, [4], 4, left=False, with_mask=True, prompt=0))
    return batches


def _eval_call(model, batches) -> str:
    shapes = [tuple(b["input_ids"].shape) for b in batches]
    keys = sorted({k for b in batches for k in b})
    return f"evaluate_model(<{type(model).__name__}>, <{len(batches)} batches of shapes {shapes}, keys {keys}>)"


def _check_perplexity(impl, model, batches: list[dict], expected: float, because: str, rtol: float = 1e-9) -> None:
    """Run the learner's evaluate_model on copies and compare; also checks mode, weights and batches."""
    pristine = copy.deepcopy(batches)
    before = _parameters(model)
    was_training = model.training
    got = impl.evaluate_model(model, iter(batches))  # a one-shot iterator: the loader is read once
    call = _eval_call(model, pristine)
    assert isinstance(got, float), f"Called {call}. Returned {describe(got)}; expected a Python float."
    if error_report(got, expected, rtol, 0.0):
        probe = copy.deepcopy(model).train(was_training)
        cause = likely_cause(KATA, "evaluate_model", lambda f: f(copy.deepcopy(probe), copy.deepcopy(pristine)), got,
                             rtol=rtol, atol=0.0)
        assert_close(got, expected, call=call, because=because, cause=cause, rtol=rtol, atol=0.0)
    assert model.training == was_training, (
        f"Called {call} on a model in {'training' if was_training else 'eval'} mode. It left the model in "
        f"{'training' if model.training else 'eval'} mode.\nBecause the caller may be in the middle of training: "
        "put the mode back (model.train(was_training)) after evaluating."
    )
    assert _same_parameters(model, before), f"Called {call}. It changed the model's weights."
    for b, (now, then) in enumerate(zip(batches, pristine, strict=True)):
        assert now.keys() == then.keys() and all(torch.equal(now[k], then[k]) for k in then), (
            f"Called {call}. It modified batch {b} of the loader in place.\nBecause the loader's tensors belong to "
            "the caller: shift with slices (labels[:, 1:]), never by writing into them."
        )


@pytest.fixture(scope="module")
def eval_lm():
    return new_gpt2(11, n_positions=64, dropout=0.3)


@pytest.mark.exercise("evaluate_model")
@settings(max_examples=10)
@given(eval_loaders())
def test_evaluate_equals_hugging_face_loss(impl, eval_lm, batches):
    eval_lm.train()  # dropout 0.3 is on: evaluate_model must turn it off
    _check_perplexity(impl, eval_lm, batches, _hf_perplexity(eval_lm, batches),
                      "perplexity is exp of the mean next-token NLL over every scored token of the loader, which is "
                      "what Hugging Face's loss computes per batch (labels shifted by one, -100 ignored, the "
                      "attention mask passed to the model), weighted by each batch's number of scored tokens.")


@pytest.mark.exercise("evaluate_model")
def test_evaluate_known_batches_weighted_by_tokens(impl):
    gen = generator(3)
    model = TableLM(40, seed=4)
    # batch 0 scores 1 token, batch 1 scores 27: an average of per-batch numbers would weigh them equally
    batches = [_make_batch(gen, [2], 2, left=False, with_mask=True, prompt=0, vocab=40),
               _make_batch(gen, [10, 9, 8, 6], 10, left=False, with_mask=False, prompt=1, vocab=40)]
    _check_perplexity(impl, model, batches, _table_perplexity(model, batches),
                      "each scored pair (position t, label t + 1) counts once: sum the NLL over the whole loader and "
                      "divide by the number of labels that are not -100 after the shift (27 + 1 here), not by "
                      "labels.numel() (which counts padding) and not per batch.")


@pytest.mark.exercise("evaluate_model")
def test_evaluate_runs_without_grad_and_restores_the_mode(impl):
    gen = generator(8)
    batches = [_make_batch(gen, [5, 3], 5, left=False, with_mask=True, prompt=0, vocab=30)]
    for mode in (True, False):
        model = TableLM(30, seed=9).train(mode)
        _check_perplexity(impl, model, batches, _table_perplexity(model, batches),
                          "dropout must be off while evaluating (model.eval()).")
        assert model.grad_modes and not any(model.grad_modes), (
            f"Called {_eval_call(model, batches)}. The model ran with grad mode on in {sum(model.grad_modes)} of its "
            f"{len(model.grad_modes)} calls.\nBecause an evaluation needs no gradients: under torch.no_grad() "
            "no graph is kept, which on a real model is the difference between fitting in memory and not."
        )
    assert torch.is_grad_enabled(), "evaluate_model left grad mode off for the caller: use torch.no_grad() as a block."


@pytest.mark.exercise("evaluate_model")
def test_evaluate_restores_the_mode_when_something_fails(impl):
    gen = generator(15)
    good = _make_batch(gen, [4, 3], 4, left=False, with_mask=True, prompt=0, vocab=30)

    def failing_loader():
        yield good
        raise RuntimeError("the loader failed (injected by the check)")

    ids = torch.tensor([[4, 5, 6], [7, 8, 9]])
    cases = {"a loader that raises RuntimeError after one batch": (failing_loader(), RuntimeError),
             "a batch whose labels (2, 2) do not match input_ids (2, 3)":
                 ([good, {"input_ids": ids, "labels": ids[:, :2].clone()}], ValueError)}
    for what, (loader, error) in cases.items():
        model = TableLM(30, seed=16).train()
        with pytest.raises(error):
            impl.evaluate_model(model, loader)
        assert model.training, (
            f"Called evaluate_model on a model in training mode with {what}. It raised, as expected, but left the "
            "model in eval mode.\nBecause the caller may catch the error and go on training: put the mode back in a "
            "`finally:` block (try: ... finally: model.train(was_training)), so that it is restored however the "
            "evaluation ends."
        )
        assert torch.is_grad_enabled(), (
            f"Called evaluate_model with {what}. It raised and left grad mode off: use torch.no_grad() as a `with` "
            "block, which turns grad mode back on however the block ends.")


@pytest.mark.exercise("evaluate_model")
def test_evaluate_long_inputs_and_extreme_logits(impl):
    gen = generator(12)
    model = TableLM(50, seed=13).eval()
    long = [_make_batch(gen, [2000, 2000, 1500, 2000], 2000, left=False, with_mask=True, prompt=0, vocab=50)]
    _check_perplexity(impl, model, long, _table_perplexity(model, long),
                      "7500 tokens: sum log-probabilities (never multiply probabilities, whose product underflows).")
    with torch.no_grad():
        model.table[7] *= 300  # rows of logits ~ +-1e3: log(softmax) gives -inf there, log_softmax does not
        model.table[11] *= -300
    # after token 11 the model is sure of token 38: label 12 costs an NLL of ~1241, whose probability exp(-1241)
    # underflows to 0 in float64; the other pairs keep the mean NLL far below exp's overflow at ~709
    ids = torch.tensor([[7, 45, 7, 23, 11, 38, 11, 12], [4, 7, 49, 11, 38, 7, 23, 3]])
    extreme = [{"input_ids": ids, "labels": ids.clone()}]
    _check_perplexity(impl, model, extreme, _table_perplexity(model, extreme),
                      "logits of size 1e3 in some rows must give finite NLLs: use log_softmax / cross_entropy, "
                      "which subtract the row max, not log(softmax(...)).")


@pytest.mark.exercise("evaluate_model")
def test_evaluate_overflow_gives_inf(impl):
    model = TableLM(20, seed=14, scale=0.0).eval()
    with torch.no_grad():
        model.table[:, 3] = 2000.0  # every prediction is token 3 with certainty: NLL 2000 for any other label
    ids = torch.tensor([[5, 6, 7, 8]])
    got = impl.evaluate_model(model, [{"input_ids": ids, "labels": ids.clone()}])
    assert got == math.inf, (
        f"Called evaluate_model on a model whose mean NLL is 2000. Returned {got!r}; expected math.inf.\nBecause "
        "exp(2000) overflows a float: the docstring asks for math.inf instead of an OverflowError."
    )


@pytest.mark.exercise("evaluate_model")
def test_evaluate_float32_model(impl, eval_lm):
    gen = generator(21)
    batches = [_make_batch(gen, [6, 4], 6, left=True, with_mask=True, prompt=1)]
    model32 = copy.deepcopy(eval_lm).float().train()
    expected = _hf_perplexity(eval_lm, batches)
    _check_perplexity(impl, model32, batches, expected, "a float32 model differs from float64 by rounding only.",
                      rtol=1e-5)


@pytest.mark.exercise("evaluate_model")
@pytest.mark.parametrize("case", ["shapes", "no-scored-token", "empty", "length-1"])
def test_evaluate_rejects_loaders_without_tokens(impl, case):
    ids = torch.tensor([[4, 5, 6], [7, 8, 9]])
    loader = {
        "shapes": [{"input_ids": ids, "labels": ids[:, :2].clone()}],
        "no-scored-token": [{"input_ids": ids, "labels": torch.tensor([[4, -100, -100], [-100, -100, -100]])}],
        "empty": [],
        "length-1": [{"input_ids": ids[:, :1], "labels": ids[:, :1].clone()}],
    }[case]
    with pytest.raises(ValueError) as info:
        impl.evaluate_model(TableLM(10, seed=1), loader)
    if case == "shapes":
        assert "2" in str(info.value) and "3" in str(info.value), (
            f"Called evaluate_model with labels of shape (2, 2) for input_ids (2, 3). It raised "
            f"ValueError({str(info.value)!r}); expected a message that gives both shapes."
        )


# --------------------------------------------------------------------------------------------------
# corpus_bleu


def _sacrebleu(hypotheses, references, max_order=4, smooth=False) -> float:
    """sacrebleu's score: references transposed into streams (None where a sentence has fewer)."""
    import sacrebleu
    from sacrebleu.metrics import BLEU

    width = max(len(r) for r in references)
    streams = [[refs[k] if k < len(refs) else None for refs in references] for k in range(width)]
    method = "exp" if smooth else "none"
    if max_order == 4:
        return sacrebleu.corpus_bleu(list(hypotheses), streams, smooth_method=method, tokenize="none",
                                     force=True).score
    return BLEU(tokenize="none", smooth_method=method, max_ngram_order=max_order, force=True).corpus_score(
        list(hypotheses), streams).score


BLEU_WORDS = ["the", "cat", "sat", "on", "mat", "a", "dog"]
_sentence = st.lists(st.sampled_from(BLEU_WORDS), max_size=9).map(" ".join)


@st.composite
def bleu_corpora(draw):
    """1-5 hypotheses over 7 words (so that n-grams match), each with 1-3 references; spacing varied."""
    n = draw(st.integers(1, 5))
    hypotheses = [draw(_sentence) for _ in range(n)]
    references = [[draw(_sentence) for _ in range(draw(st.integers(1, 3)))] for _ in range(n)]
    if draw(st.booleans()):  # extra whitespace must not matter: tokens are str.split()
        hypotheses = [" " + h.replace(" ", "  \t") + "\n" for h in hypotheses]
    return hypotheses, references, draw(st.integers(1, 5)), draw(st.booleans())


def _bleu_check(impl, hypotheses, references, kwargs, expected, because) -> None:
    pristine = copy.deepcopy((hypotheses, references))
    got = impl.corpus_bleu(hypotheses, references, **kwargs)
    call = format_call("corpus_bleu", (hypotheses, references), kwargs)
    assert isinstance(got, float), f"Called {call}. Returned {describe(got)}; expected a float."
    if error_report(got, expected, 1e-12, 1e-9):
        cause = likely_cause(KATA, "corpus_bleu", lambda f: f(*copy.deepcopy(pristine), **kwargs), got, rtol=1e-12,
                             atol=1e-9)
        assert_close(got, expected, call=call, because=because, cause=cause, rtol=1e-12, atol=1e-9)
    assert (hypotheses, references) == pristine, f"Called {call}. It modified its arguments."


@pytest.mark.exercise("corpus_bleu")
@given(bleu_corpora())
@example((["the cat sat on the mat"], [["the cat sat on the mat"]], 4, False))
@example((["the the the the the the the"], [["the cat is on the mat", "there is a cat on the mat"]], 4, True))
@example(([""], [["the cat"]], 4, False))
@example((["the cat sat on", "mat"], [["a dog"], ["dog a"]], 4, True))  # nothing matches: 0, smoothed or not
def test_bleu_equals_sacrebleu_on_generated_corpora(impl, corpus):
    hypotheses, references, max_order, smooth = corpus
    _bleu_check(impl, hypotheses, references, {"max_order": max_order, "smooth": smooth},
                _sacrebleu(hypotheses, references, max_order, smooth),
                f"it must equal sacrebleu's corpus BLEU (tokenize='none', smooth_method="
                f"{'exp' if smooth else 'none'}, max_ngram_order={max_order}): corpus-level clipped counts, the "
                "closest reference length for the brevity penalty, a geometric mean on the 0-100 scale.")


KNOWN_CORPUS = (
    ["the cat is sitting on the mat", "a quick brown fox jumps over the lazy dog", "it is raining today",
     "we will meet tomorrow at noon near the old station", "thank you"],
    [["the cat sits on the mat", "there is a cat on the mat"],
     ["the quick brown fox jumped over the lazy dog"],
     ["it rains today", "today it is raining"],
     ["we meet tomorrow at noon at the old station", "tomorrow we will meet at noon near the station"],
     ["thank you very much", "thanks"]],
)


@pytest.mark.exercise("corpus_bleu")
@pytest.mark.parametrize(("kwargs", "expected"), [({}, None), ({"max_order": 2}, None), ({"smooth": True}, None),
                                                  ({"max_order": 3, "smooth": True}, None)])
def test_bleu_equals_sacrebleu_on_a_known_corpus(impl, kwargs, expected):
    hypotheses, references = copy.deepcopy(KNOWN_CORPUS)
    expected = _sacrebleu(hypotheses, references, kwargs.get("max_order", 4), kwargs.get("smooth", False))
    _bleu_check(impl, hypotheses, references, kwargs, expected,
                "it must equal sacrebleu on this corpus of five sentences with one or two references each (the "
                "defaults are max_order=4 and no smoothing).")


@pytest.mark.exercise("corpus_bleu")
def test_bleu_known_values(impl):
    cases = [
        # Papineni et al.'s example: "the" is clipped to its count in one reference (2), not 7; BP = 1 (7 > 6)
        ((["the the the the the the the"], [["the cat is on the mat", "there is a cat on the mat"]]),
         {"max_order": 1}, 100 * 2 / 7, "clipped unigram precision 2/7"),
        # three words against six: p1 = p2 = 1, BP = exp(1 - 6/3)
        ((["the cat sat"], [["the cat sat on the mat"]]), {"max_order": 2}, 100 * math.exp(-1), "BP = e^-1"),
        # the closest reference length is 5 (|4-5| = 1), neither the shortest (2) nor the average
        ((["a b c d"], [["a b", "a b c d e", "x y z w v u v"]]), {"max_order": 1}, 100 * math.exp(1 - 5 / 4),
         "p1 = 1 and r = 5, the reference length closest to 4: BP = exp(1 - 5/4)"),
        # a tie between lengths 2 and 4 goes to the shorter one, so 3 words pay no penalty
        ((["a b c"], [["a b", "a b c d"]]), {"max_order": 1}, 100.0, "p1 = 1 and r = 2 (the shorter of a tie)"),
        # case-sensitive, as sacrebleu by default: "The" is not "the"
        ((["The cat"], [["the cat"]]), {"max_order": 1}, 50.0, "tokens are compared case-sensitively: p1 = 1/2"),
        # identical texts: 100 on the 0-100 scale
        ((["the cat sat on the mat", "a dog ran"], [["the cat sat on the mat"], ["a dog ran"]]), {"max_order": 3},
         100.0, "identical texts"),
        # bigram "mat the" exists only across a sentence boundary: n-grams never cross sentences
        ((["the mat", "the cat"], [["the mat"], ["the cat"]]), {"max_order": 2}, 100.0,
         "n-grams stay inside one sentence"),
    ]
    for (hypotheses, references), kwargs, expected, what in cases:
        _bleu_check(impl, hypotheses, references, kwargs, expected, f"{what}.")


@pytest.mark.exercise("corpus_bleu")
def test_bleu_smoothing_only_when_asked(impl):
    hypotheses, references = ["the cat sat on a mat"], [["a cat sat on the mat"]]  # no 4-gram matches
    got = impl.corpus_bleu(hypotheses, references)
    assert got == 0.0, (
        f"Called corpus_bleu({hypotheses}, {references}). Returned {got!r}; expected 0.0.\nBecause without "
        "smoothing (the default) an order with no match makes the geometric mean 0."
    )
    _bleu_check(impl, hypotheses, references, {"smooth": True}, _sacrebleu(hypotheses, references, 4, True),
                "with smooth=True the k-th order without a match counts as 1 / (2**k * total_n).")
    hypotheses, references = ["the cat sat on", "mat"], [["a dog"], ["dog a"]]  # not one word in common
    _bleu_check(impl, hypotheses, references, {"smooth": True}, 0.0,
                "when nothing matches at all, BLEU is 0 even with smooth=True (as in sacrebleu): smoothing fills in "
                "the orders without a match only when some n-gram does match.")


@pytest.mark.exercise("corpus_bleu")
@given(bleu_corpora(), st.randoms(use_true_random=False))
def test_bleu_ignores_sentence_and_reference_order(impl, corpus, rnd):
    hypotheses, references, max_order, smooth = corpus
    got = impl.corpus_bleu(hypotheses, references, max_order, smooth)
    assert 0.0 <= got <= 100.0, f"corpus_bleu returned {got!r}, outside [0, 100]."
    order = list(range(len(hypotheses)))
    rnd.shuffle(order)
    shuffled = impl.corpus_bleu([hypotheses[i] for i in order], [rnd.sample(references[i], len(references[i]))
                                                                  for i in order], max_order, smooth)
    assert abs(shuffled - got) <= 1e-9, (
        f"Called corpus_bleu on the same sentences in another order. Returned {shuffled!r}; expected {got!r}.\n"
        "Because corpus BLEU sums counts over sentences, and a sentence's references form a set."
    )


@pytest.mark.exercise("corpus_bleu")
@pytest.mark.parametrize(("args", "named"), [
    (("the cat", [["the cat"]]), "the cat"),
    (([], []), ""),
    ((["a", "b"], [["a"]]), "2"),
    ((["a"], [[]]), "[]"),
    ((["a"], ["a"]), "'a'"),
    ((["a", 3], [["a"], ["b"]]), "3"),
    ((["a"], [["a", None]]), "None"),
    ((["a"], [["a"]], 0), "0"),
    ((["a"], [["a"]], 2.0), "2.0"),
    ((["a"], [["a"]], True), "True"),
])
def test_bleu_rejects_bad_input(impl, args, named):
    with pytest.raises(ValueError) as info:
        impl.corpus_bleu(*args)
    assert named in str(info.value), (
        f"Called {format_call('corpus_bleu', args)}. It raised ValueError({str(info.value)!r}); expected a message "
        f"that names {named!r}."
    )


# --------------------------------------------------------------------------------------------------
# quantize_int8, dequantize, QuantizedLinear


def _row_absmax(w: torch.Tensor, per_channel: bool) -> torch.Tensor:
    """max |w| per row (shaped like the scale) or over everything, in float64."""
    w = w.double()
    if not per_channel:
        return w.abs().max() if w.numel() else torch.zeros(())
    shape = (w.shape[0],) + (1,) * (w.ndim - 1)
    if w.numel() == 0:
        return torch.zeros(shape, dtype=DT)
    return w.abs().reshape(w.shape[0], -1).amax(dim=1).reshape(shape)


def _check_quantized(w: torch.Tensor, q, scale, per_channel: bool, call: str, cause=None) -> None:
    """Every documented property of (q, scale) for w."""
    scale_shape = ((w.shape[0],) + (1,) * (w.ndim - 1)) if per_channel else ()
    assert isinstance(q, torch.Tensor) and q.dtype == torch.int8 and q.shape == w.shape and q.device == w.device, (
        f"Called {call}. q is {describe(q)}; expected an int8 tensor of w's shape {tuple(w.shape)} on {w.device}."
    )
    assert (isinstance(scale, torch.Tensor) and tuple(scale.shape) == scale_shape and scale.dtype == w.dtype
            and scale.device == w.device), (
        f"Called {call}. scale is {describe(scale)}; expected shape {scale_shape} (one scale per row, broadcastable "
        f"against w, or a 0-dim tensor per tensor) in w's dtype {w.dtype} on {w.device}."
        + (f"\nLikely cause: {cause}" if cause else "")
    )
    absmax = _row_absmax(w, per_channel)
    expected_scale = torch.where(absmax > 0, (absmax / 127).to(w.dtype).double(), torch.ones_like(absmax))
    rtol = {torch.float64: 1e-12, torch.float32: 1e-6, torch.bfloat16: 1e-2}[w.dtype]
    assert_close(scale.double(), expected_scale, call=call + " -> scale", rtol=rtol, atol=0.0, cause=cause,
                 because="scale = max |w| / 127 per row (per_channel) or over the whole tensor; a row of zeros gets "
                         "scale 1.0 (0 / 0 would be nan).")
    assert bool((q.int().abs() <= 127).all()), f"Called {call}. q has values outside -127 .. 127: {q}."
    steps = w.double() / scale.double()
    off = (q.double() - steps).abs()
    worst = float(off.max()) if off.numel() else 0.0
    assert worst <= 0.5 + 1e-6, (
        f"Called {call}. Some q is {worst:.3g} steps away from w / scale; expected at most 0.5 (round to the nearest "
        "integer, never truncate or floor)." + (f"\nLikely cause: {cause}" if cause else "")
    )
    if per_channel and w.numel():
        full = (q.reshape(w.shape[0], -1).int().abs().amax(dim=1) == 127) | (absmax.flatten() == 0)
        assert bool(full.all()), (
            f"Called {call}. Rows {(~full).nonzero().flatten().tolist()} do not use +-127: each row's largest weight "
            "must map to +-127, or precision is thrown away." + (f"\nLikely cause: {cause}" if cause else "")
        )


@st.composite
def weights(draw):
    """A weight of 1-3 dims (sizes from 0) with rows of very different sizes, some all zero, float32/64, bf16."""
    gen = generator(draw(seeds))
    shape = tuple(draw(st.lists(st.integers(0, 5), min_size=1, max_size=3)))
    dtype = draw(st.sampled_from([torch.float32, torch.float64, torch.bfloat16]))
    w = randn(gen, *shape)
    if w.ndim and w.shape[0]:
        row_scales = torch.tensor(draw(st.lists(st.sampled_from([0.0, 1e-30, 1e-3, 1.0, 7.0, 1e6]),
                                                min_size=w.shape[0], max_size=w.shape[0])), dtype=DT)
        w = w * row_scales.reshape((-1,) + (1,) * (w.ndim - 1))
    if draw(st.booleans()) and w.ndim == 2:
        w = w.t()  # a transposed view: the layout must not matter
    return w.to(dtype), draw(st.booleans())


@pytest.mark.exercise("quantize_int8")
@given(weights())
@example((torch.zeros(3, 4), True))
@example((torch.tensor([[0.6, -1.0], [0.0, 0.0]]), False))
@example((torch.tensor([[[1.0, -2.0], [4.0, 0.5]], [[0.0, 0.0], [0.0, 0.0]]]), True))  # 3-D: one scale per row
# bfloat16: the scale must be rounded to bfloat16 BEFORE dividing by it, or q is up to 0.61 steps off the returned scale
@example((torch.tensor([[-0.71875, -0.404297, -0.597656, 0.181641]], dtype=torch.bfloat16), False))
def test_quantize_properties(impl, case):
    w, per_channel = case
    pristine = w.clone()
    call = format_call("quantize_int8", (w,), {"per_channel": per_channel})
    result = impl.quantize_int8(w, per_channel=per_channel)
    assert isinstance(result, tuple) and len(result) == 2, (
        f"Called {call}. Returned {describe(result)}; expected a tuple (q, scale).")
    q, scale = result
    assert torch.equal(w, pristine), f"Called {call}. It modified w in place."
    cause = likely_cause(KATA, "quantize_int8", lambda f: f(pristine.clone(), per_channel=per_channel),
                         matches=lambda r: isinstance(scale, torch.Tensor) and r[1].shape == scale.shape
                         and torch.equal(r[1], scale) and torch.equal(r[0], q))
    _check_quantized(w, q, scale, per_channel, call, cause)
    exact = q.double() * scale.double()
    bound = (scale.double() / 2).expand(w.shape) * (1 + 1e-6) + 1e-300
    err = (exact - w.double()).abs()
    assert bool((err <= bound).all()), (
        f"Called {call}. q * scale is off from w by up to {float(err.max()) if err.numel() else 0:.3g}; expected at "
        "most scale / 2 per element." + (f"\nLikely cause: {cause}" if cause else "")
    )
    back = impl.dequantize(q, scale)
    assert back.dtype == w.dtype, f"dequantize(*{call}) has dtype {back.dtype}; expected {w.dtype}, the scale's."
    assert_close(back.double(), exact, call=f"dequantize(*{call})", atol=0.0, because="it is q * scale.",
                 rtol={torch.float64: 1e-15, torch.float32: 1e-7, torch.bfloat16: 4e-3}[w.dtype])


@pytest.mark.exercise("quantize_int8")
def test_quantize_known_values_and_default(impl):
    w = torch.tensor([[0.6, -1.0, 0.25], [0.0, 0.0, 0.0], [100.0, 1.0, -50.2]], dtype=DT)  # no rounding ties
    q, scale = impl.quantize_int8(w.clone())  # per_channel=True by default
    call = format_call("quantize_int8", (w,))
    expected_q = torch.tensor([[76, -127, 32], [0, 0, 0], [127, 1, -64]], dtype=torch.int8)
    assert_close(q, expected_q, call=call + " -> q", atol=0,
                 because="each row is divided by its own max |w| / 127 (per_channel=True is the default) and rounded; "
                         "the zero row stays 0.")
    assert_close(scale, torch.tensor([[1 / 127], [1.0], [100 / 127]], dtype=DT), call=call + " -> scale",
                 because="one scale per row, shape (3, 1); the zero row gets 1.0.")
    q, scale = impl.quantize_int8(w.clone(), per_channel=False)
    assert_close(scale, torch.tensor(100 / 127, dtype=DT), call=call[:-1] + ", per_channel=False) -> scale",
                 because="per_channel=False: one 0-dim scale for the whole tensor, max |w| / 127.")
    assert_close(q, torch.tensor([[1, -1, 0], [0, 0, 0], [127, 1, -64]], dtype=torch.int8),
                 call=call[:-1] + ", per_channel=False) -> q", atol=0, because="every row shares the scale 100/127.")


@pytest.mark.exercise("quantize_int8")
def test_quantize_matches_torch_fake_quantize(impl):
    w = randn(generator(31), 6, 9, scale=3.0).float()
    q, scale = impl.quantize_int8(w.clone())
    call = format_call("quantize_int8", (w,))
    _check_quantized(w, q, scale, True, call)
    fake = torch.fake_quantize_per_channel_affine(w, scale.flatten(), torch.zeros(6, dtype=torch.int32), 0, -127, 127)
    mine = impl.dequantize(q, scale)
    frac = (w / scale).abs() % 1.0
    clear = (frac - 0.5).abs() > 1e-3  # away from a tie, where rounding directions may differ
    assert torch.equal(mine[clear], fake[clear]), (
        f"Called dequantize(*{call}). It differs from torch.fake_quantize_per_channel_affine(w, scale, 0, axis=0, "
        "-127, 127) away from rounding ties.\nBecause both are round(w / scale) clamped to -127 .. 127, times scale."
    )


@pytest.mark.exercise("quantize_int8")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
def test_dequantize_follows_the_scale_dtype(impl, dtype):
    q = torch.tensor([[-127, 0, 5], [127, -1, 64]], dtype=torch.int8)
    scale = torch.tensor([[0.5], [0.25]], dtype=dtype)
    q0, scale0 = q.clone(), scale.clone()
    got = impl.dequantize(q, scale)
    call = format_call("dequantize", (q, scale))
    assert got.dtype == dtype, f"Called {call}. Returned dtype {got.dtype}; expected {dtype}, the scale's dtype."
    assert_close(got.double(), (q.double() * scale.double()), call=call, atol=0, because="it is q * scale.")
    assert torch.equal(q, q0) and torch.equal(scale, scale0), f"Called {call}. It modified its arguments."
    q, scale = impl.quantize_int8(torch.tensor([[1.0, -2.0]], dtype=torch.bfloat16))
    assert scale.dtype == torch.bfloat16 and impl.dequantize(q, scale).dtype == torch.bfloat16, (
        "quantize_int8 of a bfloat16 weight must give a bfloat16 scale, and dequantize a bfloat16 tensor."
    )


@pytest.mark.exercise("quantize_int8")
def test_quantize_rejects_bad_input(impl):
    bad = {"int64": (torch.tensor([[1, 2]]), True, "int64"), "nan": (torch.tensor([[1.0, math.nan]]), True, None),
           "inf": (torch.tensor([[math.inf, 1.0]]), False, None), "0-dim": (torch.tensor(2.0), True, None)}
    for what, (w, per_channel, named) in bad.items():
        with pytest.raises(ValueError) as info:
            impl.quantize_int8(w, per_channel=per_channel)
        assert named is None or named in str(info.value), (
            f"Called quantize_int8 on an {what} tensor. It raised ValueError({str(info.value)!r}); expected the "
            f"message to name {named!r}."
        )
    q, scale = impl.quantize_int8(torch.tensor(-2.0, dtype=DT), per_channel=False)  # 0-dim is fine per tensor
    assert q.item() == -127 and scale.item() == 2.0 / 127, "quantize_int8(tensor(-2.0), per_channel=False) is wrong."
    with pytest.raises(ValueError, match="int64|Long|long"):
        impl.dequantize(torch.tensor([[1, 2]]), torch.tensor(1.0))


def _linear(seed: int, n_in: int, n_out: int, bias: bool = True, dtype=DT) -> nn.Linear:
    layer = nn.Linear(n_in, n_out, bias=bias, dtype=dtype)
    refill_(layer, seed, 1.0)
    with torch.no_grad():
        layer.weight[0] *= 100.0  # rows of very different sizes: per-channel scales differ
    return layer


def _float_weight_copies(layer: nn.Module, weight: torch.Tensor) -> list[str]:
    """The layer's attributes (outside its buffers) that hold a float tensor of the weight's shape or its memory."""
    found = []

    def visit(name: str, value, depth: int) -> None:
        if isinstance(value, torch.Tensor):
            same_memory = value.untyped_storage().data_ptr() == weight.untyped_storage().data_ptr()
            if same_memory or (value.is_floating_point() and value.shape == weight.shape):
                found.append(name)
        elif isinstance(value, nn.Module) and depth:
            for key, tensor in value.state_dict(keep_vars=True).items():
                visit(f"{name}.{key}", tensor, 0)
        elif isinstance(value, dict | list | tuple) and depth:
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for key, item in items:
                visit(f"{name}[{key!r}]", item, depth - 1)

    for name, value in vars(layer).items():
        if name not in ("_buffers", "_parameters"):  # those are the state_dict, checked on their own
            visit(f"self.{name}", value, 2)
    return found


@pytest.mark.exercise("quantize_int8")
@pytest.mark.parametrize(("bias", "per_channel", "dtype"), [(True, True, DT), (False, True, DT), (True, False, DT),
                                                            (True, True, torch.float32)])
def test_quantized_linear_structure(impl, bias, per_channel, dtype):
    linear = _linear(40, 6, 4, bias=bias, dtype=dtype)
    before = copy.deepcopy(linear.state_dict())
    layer = impl.QuantizedLinear(linear, per_channel=per_channel)
    call = f"QuantizedLinear(nn.Linear(6, 4, bias={bias}, dtype={dtype}), per_channel={per_channel})"
    params = [name for name, _ in layer.named_parameters()]
    assert params == [], f"Called {call}. It has parameters {params}; expected none (int8 weights never train)."
    keys = sorted(layer.state_dict())
    expected = sorted(["weight_int8", "scale"] + (["bias"] if bias else []))
    assert keys == expected, (
        f"Called {call}. Its state_dict keys are {keys}; expected exactly {expected}: register weight_int8, scale "
        "and bias as buffers (bias None when the layer has none), and keep no other tensor, such as the float weight."
    )
    assert (layer.in_features, layer.out_features) == (6, 4), f"Called {call}. in_features/out_features are wrong."
    kept = _float_weight_copies(layer, linear.weight)
    assert not kept, (
        f"Called {call}. The layer keeps {kept}: a float tensor of the weight's shape (or sharing its memory) outside "
        "its buffers.\nBecause the point of int8 is to free the float weight's memory: keep only weight_int8, scale "
        "and bias, and dequantize inside forward."
    )
    q, scale = layer.weight_int8, layer.scale
    _check_quantized(linear.weight.detach(), q, scale, per_channel, call + " -> weight_int8, scale")
    unchanged = all(torch.equal(v, linear.state_dict()[k]) for k, v in before.items())
    assert unchanged, f"Called {call}. It changed the float layer it was given."
    if bias:
        assert layer.bias.dtype == dtype and torch.equal(layer.bias, linear.bias.detach()), (
            f"Called {call}. Its bias is {describe(layer.bias)}; expected a copy of linear.bias.")
        with torch.no_grad():
            linear.bias.add_(1.0)
        assert not torch.equal(layer.bias, linear.bias.detach()), (
            f"Called {call}, then changed linear.bias. The quantised layer's bias changed too: it shares memory with "
            "the float layer. Copy it (bias.detach().clone())."
        )
    else:
        assert layer.bias is None, f"Called {call}. Its bias is {describe(layer.bias)}; expected None."


@pytest.mark.exercise("quantize_int8")
@pytest.mark.parametrize("lead", [(), (3,), (2, 5), (0,)], ids=str)
@pytest.mark.parametrize("per_channel", [True, False])
def test_quantized_linear_forward(impl, lead, per_channel):
    linear = _linear(41, 7, 5)
    layer = impl.QuantizedLinear(linear, per_channel=per_channel)
    x = randn(generator(42), *lead, 7)
    x0 = x.clone()
    got = layer(x)
    call = f"QuantizedLinear(nn.Linear(7, 5), per_channel={per_channel})(x of shape {tuple(x.shape)})"
    assert torch.equal(x, x0), f"Called {call}. It modified x in place."
    weight = layer.weight_int8.double() * layer.scale.double()
    assert_close(got, F.linear(x, weight, linear.bias.detach()), call=call, **TIGHT,
                 because="forward is x @ (weight_int8 * scale).T + bias (F.linear).")
    exact = linear(x).detach()
    bound = x.abs() @ (layer.scale.double() / 2).expand(5, 7).T * (1 + 1e-9)
    err = (got - exact).abs()
    assert bool((err <= bound + 1e-12).all()), (
        f"Called {call}. It is off from the float layer by up to {float(err.max()):.3g}; expected within "
        "sum |x| * scale / 2 per output."
    )


@pytest.mark.exercise("quantize_int8")
def test_quantized_linear_saves_and_loads(impl):
    layer = impl.QuantizedLinear(_linear(43, 5, 3))
    other = impl.QuantizedLinear(_linear(44, 5, 3))
    assert tuple(layer.scale.shape) == (3, 1), (
        f"QuantizedLinear(nn.Linear(5, 3)) has a scale of shape {tuple(layer.scale.shape)}; expected (3, 1): "
        "per_channel=True is the default."
    )
    other.load_state_dict(layer.state_dict())
    x = randn(generator(45), 4, 5)
    assert_close(other(x), layer(x), call="QuantizedLinear.load_state_dict(other.state_dict())(x)", **TIGHT,
                 because="everything the layer computes with lives in its buffers, which the state_dict carries.")
    assert layer.state_dict()["weight_int8"].dtype == torch.int8, "weight_int8 must be saved as int8."


# --------------------------------------------------------------------------------------------------
# create_app


APP_PROMPTS = ["the cat", "a mat while dogs ran", "seven bright lamps and one old wizard wrote kata", "one old wizard"]


@pytest.fixture(scope="module")
def served_lm():
    return app_model()


@pytest.fixture(scope="module")
def tok():
    return new_tokenizer()


@pytest.fixture(scope="module")
def greedy_answers(served_lm, tok):
    """The oracle's greedy answers for APP_PROMPTS with 12 and with 20 (the default) new tokens."""
    answers = {(p, n): _greedy(served_lm, tok, p, n) for p in APP_PROMPTS for n in (12, 20)}
    # the fixture itself must exercise both endings: a text that stops at eos and one that runs to the limit
    counts = {count for (_, n), (_, count) in answers.items() if n == 12}
    assert min(counts) < 12 and max(counts) == 12, f"the check's model no longer ends some texts early: {counts}"
    return answers


def _client(impl, model, tok, *, raise_errors: bool = True, **limits):
    from fastapi.testclient import TestClient

    return TestClient(impl.create_app(model, tok, **limits), raise_server_exceptions=raise_errors)


@contextlib.contextmanager
def _forward_hook(model, hook):
    handle = model.register_forward_pre_hook(hook)
    try:
        yield
    finally:
        handle.remove()


class Gate:
    """A forward pre-hook that holds every forward pass until ``open()`` (or ``timeout``), counting callers."""

    def __init__(self, timeout: float = 5.0) -> None:
        self.event = threading.Event()
        self.timeout = timeout
        self.lock = threading.Lock()
        self.waiting: set[int] = set()
        self.timed_out = False

    def __call__(self, module, args):
        with self.lock:
            self.waiting.add(threading.get_ident())
        if not self.event.wait(self.timeout):
            self.timed_out = True
            self.event.set()

    def wait_for(self, n: int, timeout: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.waiting) >= n:
                    return True
            time.sleep(0.01)
        return False

    def open(self) -> None:
        self.event.set()


def _app_cause(tok, request: dict, matches) -> str | None:
    """The catalogued create_app mistake whose app answers ``request`` as the learner's did."""
    def run(create_app):
        from fastapi.testclient import TestClient

        with TestClient(create_app(app_model(), tok)) as client:
            return client.post("/generate", json=request)

    return likely_cause(KATA, "create_app", run, matches=matches)


def _served_answer(response) -> str:
    return f"{response.status_code} {response.text[:300]}"


@pytest.mark.exercise("create_app")
def test_app_served_by_uvicorn_answers_concurrent_clients(impl, greedy_answers):
    """The app as clients meet it: uvicorn in a child process (running the code under test), real HTTP."""
    import httpx

    from checks.processes import serve

    bodies = [{"prompt": p} if n == 20 else {"prompt": p, "max_new_tokens": n} for p, n in greedy_answers]
    invalid = [({"prompt": ""}, "prompt"), ({"prompt": "the cat", "max_new_tokens": 65}, "max_new_tokens"),
               ({"prompt": "the cat", "temperature": 0}, "temperature"), ({"prompt": "the cat", "max_length": 9},
                                                                         "max_length")]
    sampled = {"prompt": "the cat", "max_new_tokens": 12, "do_sample": True, "temperature": 1.5, "seed": 7}
    with serve(served_app, impl, startup_timeout=120) as server:

        def post(body):
            return httpx.post(f"{server.url}/generate", json=body, timeout=60.0)

        health = httpx.get(f"{server.url}/health", timeout=10.0)
        with concurrent.futures.ThreadPoolExecutor(len(bodies)) as pool:
            answers = list(pool.map(post, bodies))  # all at once: within the default 2 running + 16 waiting
        rejected = [(body, field, post(body)) for body, field in invalid]
        twice = [post(sampled) for _ in range(2)]
        output = server.output()
    where = f"\nThe server's output ends:\n{output}" if output.strip() else ""
    assert (health.status_code, health.json() if health.status_code == 200 else None) == (200, {"status": "ok"}), (
        f"GET /health on the served app answered {_served_answer(health)}; expected 200 {{'status': 'ok'}}.{where}")
    for body, response in zip(bodies, answers, strict=True):
        text, count = greedy_answers[(body["prompt"], body.get("max_new_tokens", 20))]
        got = response.json() if response.status_code == 200 else None
        if got != {"generated_text": text, "new_tokens": count}:
            _fail(f"POST /generate {body} on the app served by uvicorn, with {len(bodies)} requests sent at once",
                  _served_answer(response), f"200 {{'generated_text': {text!r}, 'new_tokens': {count}}}",
                  "a served app answers concurrent clients as it answers one: each gets greedy decoding of its own "
                  "prompt (only the new text, stopping after eos), and the default limits (2 running, 16 waiting) "
                  f"leave room for {len(bodies)} requests at once." + where)
    for body, field, response in rejected:
        detail = response.json().get("detail") if response.status_code == 422 else None
        named = isinstance(detail, list) and any(isinstance(e, dict) and field in e.get("loc", []) for e in detail)
        assert named, (f"POST /generate {body} on the served app answered {_served_answer(response)}; expected 422 "
                       f"naming {field!r} in its detail.\nBecause the request's pydantic model validates every "
                       f"field (bounds, extra='forbid').{where}")
    assert all(r.status_code == 200 for r in twice) and twice[0].json() == twice[1].json(), (
        f"POST /generate {sampled} twice on the served app answered {[_served_answer(r) for r in twice]}; expected "
        f"the same 200 answer twice.\nBecause a seed makes sampling reproducible.{where}")


@pytest.mark.exercise("create_app")
def test_app_answers_health_and_greedy_requests(impl, served_lm, tok, greedy_answers):
    served_lm.train()  # dropout 0.5 is on until the app's start-up turns it off
    used = []
    with _forward_hook(served_lm, lambda module, args: used.append(module)), _client(impl, served_lm, tok) as client:
        assert not served_lm.training, (
            "Started the app (entered TestClient(create_app(model, tok))). The model is still in training mode.\n"
            "Because the app's start-up (its lifespan) must put the model in eval mode once, before the first request: "
            "with dropout on, greedy generation is random."
        )
        health = client.get("/health")
        assert (health.status_code, health.json()) == (200, {"status": "ok"}), (
            f"GET /health answered {health.status_code} {health.text}; expected 200 {{'status': 'ok'}}."
        )
        for (prompt, n), (text, count) in greedy_answers.items():
            body = {"prompt": prompt} if n == 20 else {"prompt": prompt, "max_new_tokens": n}
            response = client.post("/generate", json=body)
            got = response.json() if response.status_code == 200 else None
            if got != {"generated_text": text, "new_tokens": count}:
                cause = _app_cause(tok, body, lambda r, s=response.status_code, g=got: r.status_code == s and (
                    s != 200 or r.json() == g))
                _fail(f"POST /generate {body}", f"{response.status_code} {response.text[:300]}",
                      f"200 {{'generated_text': {text!r}, 'new_tokens': {count}}}",
                      "greedy decoding (do_sample false, the default) gives what model.generate(ids, max_new_tokens=n, "
                      "do_sample=False) gives: only the new text (not the prompt), stopping right after eos, and "
                      "max_new_tokens defaults to 20.", cause)
    assert used and all(module is served_lm for module in used), (
        "POST /generate ran its forward passes on a model other than the one given to create_app (a copy, or one "
        "loaded anew).\nBecause a model is set up once and shared by every request: loading or copying it per "
        "request costs seconds and memory on every call (the learning path's bug)."
    )


@pytest.mark.exercise("create_app")
@pytest.mark.parametrize(("body", "field"), [
    ({}, "prompt"),
    ({"prompt": ""}, "prompt"),
    ({"prompt": 5}, "prompt"),
    ({"prompt": ("quickly " * 300)[:2001]}, "prompt"),  # 2001 characters but only ~250 tokens: it fits the context
    ({"prompt": "the cat", "max_new_tokens": 0}, "max_new_tokens"),
    ({"prompt": "the cat", "max_new_tokens": 65}, "max_new_tokens"),
    ({"prompt": "the cat", "max_new_tokens": "5"}, "max_new_tokens"),
    ({"prompt": "the cat", "max_new_tokens": 5.5}, "max_new_tokens"),
    ({"prompt": "the cat", "max_new_tokens": 5.0}, "max_new_tokens"),
    ({"prompt": "the cat", "max_new_tokens": True}, "max_new_tokens"),
    ({"prompt": "the cat", "temperature": 0}, "temperature"),
    ({"prompt": "the cat", "temperature": -0.5}, "temperature"),
    ({"prompt": "the cat", "temperature": 2.5}, "temperature"),
    ({"prompt": "the cat", "temperature": "hot"}, "temperature"),
    ({"prompt": "the cat", "do_sample": "yes"}, "do_sample"),
    ({"prompt": "the cat", "seed": -1}, "seed"),
    ({"prompt": "the cat", "seed": 2**32}, "seed"),
    ({"prompt": "the cat", "seed": 1.5}, "seed"),
    ({"prompt": "the cat", "max_length": 100}, "max_length"),
], ids=lambda v: str(v)[:40] if isinstance(v, dict) else v)
def test_app_rejects_invalid_requests_with_422(impl, served_lm, tok, body, field):
    with _client(impl, served_lm, tok) as client:
        response = client.post("/generate", json=body)
    detail = response.json().get("detail") if response.headers.get("content-type", "").startswith(
        "application/json") else None
    named = isinstance(detail, list) and any(isinstance(e, dict) and field in e.get("loc", []) for e in detail)
    if response.status_code != 422 or not named:
        cause = _app_cause(tok, body, lambda r: r.status_code == response.status_code)
        _fail(f"POST /generate {body}"[:200], f"{response.status_code} {response.text[:300]}",
              f"422 with FastAPI's body {{'detail': [{{'loc': ['body', {field!r}], 'msg': ..., ...}}]}}",
              "every field is validated by the request's pydantic model (strict types, bounds, extra='forbid'): a "
              "client must hear at once which field is wrong, and the server must never start a generation it "
              "cannot do (an unbounded max_new_tokens, a temperature of 0 that divides by zero).", cause)


@pytest.mark.exercise("create_app")
def test_app_accepts_the_boundaries(impl, served_lm, tok):
    prompt = "the cat"
    bodies = [{"prompt": prompt, "max_new_tokens": 64}, {"prompt": prompt, "max_new_tokens": 1, "temperature": 2.0},
              {"prompt": prompt, "max_new_tokens": 2, "temperature": 1e-9, "seed": 0},
              {"prompt": prompt, "max_new_tokens": 2, "do_sample": True, "seed": 2**32 - 1},
              {"prompt": prompt, "max_new_tokens": 2, "temperature": 1, "seed": None},
              {"prompt": prompt, "max_new_tokens": 64, "do_sample": True, "temperature": 5e-324, "seed": 3}]
    with _client(impl, served_lm, tok) as client:
        for body in bodies:
            response = client.post("/generate", json=body)
            assert response.status_code == 200, (
                f"POST /generate {body} answered {response.status_code} {response.text[:300]}; expected 200.\n"
                "Because these values are inside the documented bounds (max_new_tokens up to 64, temperature up to "
                "2 and any number above 0, an integer temperature, seeds 0 .. 2**32 - 1 or null)."
            )
        expected = _greedy(served_lm, tok, prompt, 64)
        got = [client.post("/generate", json=body).json() for body in (bodies[0], bodies[-1])]
    for body, answer in zip((bodies[0], bodies[-1]), got, strict=True):
        assert answer == {"generated_text": expected[0], "new_tokens": expected[1]}, (
            f"POST /generate {body} answered {answer}; expected the greedy text {expected} (sampling with the "
            "smallest temperature a float can hold is greedy: subtract the largest logit before dividing by it)."
        )


@pytest.mark.exercise("create_app")
def test_app_checks_the_context_length(impl, served_lm, tok):
    prompt = "the cat " + "é" * 490  # a character the tokenizer never saw: two byte tokens each
    n_prompt = len(tok(prompt).input_ids)
    fits = 1024 - n_prompt
    assert 1 <= fits <= 64, f"the check's prompt has {n_prompt} tokens"
    with _client(impl, served_lm, tok) as client:
        too_long = client.post("/generate", json={"prompt": prompt, "max_new_tokens": fits + 1})
        exact = client.post("/generate", json={"prompt": prompt, "max_new_tokens": fits})
    detail = too_long.json().get("detail") if too_long.status_code == 422 else None
    entry = detail[0] if isinstance(detail, list) and detail and isinstance(detail[0], dict) else {}
    named = (list(entry.get("loc", [])) == ["body", "prompt"] and str(n_prompt) in str(entry.get("msg", ""))
             and entry.get("type") == "value_error")
    assert named, (
        f"POST /generate with a prompt of {n_prompt} tokens and max_new_tokens={fits + 1} answered "
        f"{too_long.status_code} {too_long.text[:300]}; expected 422 with detail [{{'type': 'value_error', 'loc': "
        f"['body', 'prompt'], 'msg': <naming {n_prompt} and the context 1024>, ...}}].\nBecause {n_prompt} + "
        f"{fits + 1} tokens do not fit the model's context (model.config.max_position_embeddings = 1024): the "
        "position embeddings end there, and the client must be told why in the usual 422 format."
    )
    assert exact.status_code == 200 and exact.json()["new_tokens"] <= fits, (
        f"POST /generate with a prompt of {n_prompt} tokens and max_new_tokens={fits} answered {exact.status_code} "
        f"{exact.text[:200]}; expected 200: exactly the context's size fits."
    )


@pytest.mark.exercise("create_app")
def test_app_samples_with_its_own_seeded_generator(impl, served_lm, tok, greedy_answers):
    def sample(client, seed, temperature=1.5, prompt="the cat"):
        body = {"prompt": prompt, "max_new_tokens": 12, "do_sample": True, "temperature": temperature}
        if temperature == "omit":
            del body["temperature"]
        if seed != "omit":
            body["seed"] = seed
        response = client.post("/generate", json=body)
        assert response.status_code == 200, f"POST /generate {body} answered {response.status_code} {response.text}"
        return response.json()["generated_text"]

    rng_before = torch.get_rng_state()
    with _client(impl, served_lm, tok) as client:
        first, again = sample(client, 7), sample(client, 7)
        hot = [sample(client, s) for s in range(5)]
        fresh = {sample(client, None) for _ in range(3)} | {sample(client, "omit") for _ in range(3)}
        cold = [sample(client, s, temperature=1e-5, prompt=p) for s, p in enumerate(APP_PROMPTS)]
        warm = [sample(client, s, temperature=0.5) for s in range(5)]
        default_t = [sample(client, s, temperature="omit") for s in range(3)]
        one = [sample(client, s, temperature=1.0) for s in range(3)]
    assert first == again, (
        f"Two POST /generate with do_sample true and seed 7 returned {first!r} and {again!r}; expected the same text.\n"
        "Because a seed makes sampling reproducible: draw from torch.Generator().manual_seed(seed)."
    )
    assert len(set(hot)) >= 3, f"Sampling with seeds 0..4 gave only {len(set(hot))} different texts: {hot}."
    assert len(fresh) >= 4, (
        f"Six sampling requests with seed null (or no seed) gave only {len(fresh)} different texts.\nBecause without "
        "a seed each request draws fresh randomness (generator.seed()); null is the default."
    )
    assert torch.equal(torch.get_rng_state(), rng_before), (
        "The sampling requests changed torch's global RNG state.\nBecause every request in flight shares the global "
        "RNG: a request that seeds it (torch.manual_seed) changes the numbers another request draws. Use a "
        "torch.Generator of the request's own."
    )
    greedy = [greedy_answers[(p, 12)][0] for p in APP_PROMPTS]
    assert cold == greedy, (
        f"Sampling with temperature 0.00001 returned {cold}; expected the greedy texts {greedy}.\nBecause the logits "
        "are divided by the temperature: a tiny temperature makes softmax a one-hot on the most likely token."
    )
    assert default_t == one, (
        f"Sampling with seeds 0..2 and no temperature gave {default_t}; with temperature 1.0, {one}.\nBecause the "
        "temperature defaults to 1.0."
    )
    assert warm != hot, (
        f"Sampling with seeds 0..4 gave the same texts with temperature 0.5 as with temperature 1.5: {hot}.\n"
        "Because the temperature reshapes the distribution the tokens are drawn from: softmax(logits / temperature)."
    )


@pytest.mark.exercise("create_app")
def test_app_generates_off_the_event_loop(impl, served_lm, tok):
    gate = Gate(timeout=4.0)
    with _forward_hook(served_lm, gate), _client(impl, served_lm, tok) as client, \
            concurrent.futures.ThreadPoolExecutor(2) as pool:
        running = pool.submit(client.post, "/generate", json={"prompt": "the cat", "max_new_tokens": 2})
        assert gate.wait_for(1), "POST /generate never reached the model's forward pass within 5 s."
        started = time.monotonic()
        health = pool.submit(client.get, "/health")
        try:
            answered = health.result(timeout=2.0).status_code == 200 and not gate.event.is_set()
        except concurrent.futures.TimeoutError:
            answered = False
        waited = time.monotonic() - started
        gate.open()
        assert running.result(timeout=10).status_code == 200
    assert answered, (
        f"While a generation was running, GET /health did not answer (it waited {waited:.1f} s, until the generation "
        "was released).\nBecause the forward passes ran on the event loop itself (CPU-bound work inside `async def`): "
        "then every other request waits. Run them in a worker thread (await anyio.to_thread.run_sync(...), or a "
        "plain `def` endpoint)."
    )


def _burst(client, n: int, body: dict):
    pool = concurrent.futures.ThreadPoolExecutor(n)
    return pool, [pool.submit(client.post, "/generate", json=body) for _ in range(n)]


@pytest.mark.exercise("create_app")
@pytest.mark.parametrize(("limits", "running", "queued"), [({"max_concurrency": 1, "max_queue": 1}, 1, 1),
                                                           ({"max_concurrency": 3, "max_queue": 0}, 3, 0),
                                                           ({"max_queue": 0}, 2, 0),
                                                           ({"max_concurrency": 1}, 1, 16)], ids=str)
def test_app_turns_away_requests_beyond_its_limits(impl, served_lm, tok, limits, running, queued):
    body = {"prompt": "the cat", "max_new_tokens": 1}
    gate = Gate(timeout=6.0)
    with _forward_hook(served_lm, gate), _client(impl, served_lm, tok, **limits) as client:
        pool, first = _burst(client, running, body)
        reached = gate.wait_for(running)
        # the queue's requests and one more, all at once: exactly one of them must be turned away, at once
        pool2, rest = _burst(client, queued + 1, body)
        done, _ = concurrent.futures.wait(rest, timeout=3.0, return_when=concurrent.futures.FIRST_COMPLETED)
        early = [f.result() for f in done]
        # the queued requests must wait for a slot, not start generating: give them a moment to (wrongly) start
        overflow = queued > 0 and gate.wait_for(running + 1, timeout=0.3)
        concurrently = len(gate.waiting)
        gate.open()
        late = [f.result(timeout=30) for f in first + rest]
        pool.shutdown()
        pool2.shutdown()
        after = client.post("/generate", json=body)
    call = f"create_app(model, tok{''.join(f', {k}={v}' for k, v in limits.items())})"
    assert not overflow, (
        f"Called {call}; with {running} generations running, sent {queued + 1} more requests. {concurrently} "
        f"generations then ran at the same time; expected at most max_concurrency = {running}.\nBecause the "
        "requests beyond max_concurrency wait for a slot (a CapacityLimiter passed as limiter=, or a semaphore) "
        "instead of all computing at once on a few CPU cores."
    )
    assert reached and concurrently >= running, (
        f"Called {call} and sent {running} requests at once. Only {len(gate.waiting)} generations ran at the same "
        f"time; expected {running}.\nBecause max_concurrency generations run at once (2 by default), each in a "
        "worker thread."
    )
    codes = sorted(r.status_code for r in late)
    busy = [r for r in early if r.status_code == 503]
    assert busy and codes == [200] * (running + queued) + [503], (
        f"Called {call}; with {running} generations running, sent {queued + 1} more requests at once. Their answers: "
        f"{codes} ({len(busy)} came back while the generations were still running); expected exactly one 503, at "
        f"once, and 200 for the other {running + queued}.\nBecause at most max_concurrency + max_queue requests are "
        "in progress (max_queue defaults to 16): one more is turned away at once, instead of piling up."
    )
    response = busy[0]
    assert response.headers.get("retry-after") == "1" and isinstance(response.json().get("detail"), str), (
        f"The 503 answer was {response.headers} {response.text}; expected the header Retry-After: 1 and a JSON body "
        "{'detail': <a message>}, so that a client knows when to retry."
    )
    assert after.status_code == 200, (
        f"After every request had finished, POST /generate answered {after.status_code}; expected 200: finished "
        "requests must free their slots."
    )


@pytest.mark.exercise("create_app")
def test_app_frees_the_slot_of_a_failed_generation(impl, served_lm, tok):
    fail = {"left": 1}

    def hook(module, args):
        if fail["left"]:
            fail["left"] -= 1
            raise RuntimeError("a generation that fails (injected by the check)")

    body = {"prompt": "the cat", "max_new_tokens": 2}
    with _forward_hook(served_lm, hook), _client(impl, served_lm, tok, raise_errors=False, max_concurrency=1,
                                                  max_queue=0) as client:
        failed = client.post("/generate", json=body)
        after = [client.post("/generate", json=body).status_code for _ in range(2)]
    assert failed.status_code == 500 and after == [200, 200], (
        f"With max_concurrency=1 and max_queue=0, a generation failed ({failed.status_code}); the next requests "
        f"answered {after}; expected [200, 200].\nBecause a slot must be freed however its request ends: count the "
        "request out in a `finally:`."
    )


@pytest.mark.exercise("create_app")
def test_app_starts_twice_and_restores_nothing_it_should_not(impl, served_lm, tok):
    before = _parameters(served_lm)
    app = impl.create_app(served_lm, tok, max_concurrency=1, max_queue=0)
    from fastapi.testclient import TestClient

    for _ in range(2):  # a second start-up (a restarted server) starts with free slots again
        with TestClient(app) as client:
            codes = [client.post("/generate", json={"prompt": "a mat", "max_new_tokens": 2}).status_code
                     for _ in range(2)]
        assert codes == [200, 200], f"Requests to an app started a second time answered {codes}; expected 200s."
    assert _same_parameters(served_lm, before), "Serving requests changed the model's weights."


@pytest.mark.exercise("create_app")
@pytest.mark.parametrize(("limits", "named"), [({"max_concurrency": 0}, "0"), ({"max_concurrency": 1.5}, "1.5"),
                                               ({"max_concurrency": True}, "True"), ({"max_queue": -1}, "-1"),
                                               ({"max_queue": 2.0}, "2.0")], ids=str)
def test_app_rejects_bad_limits(impl, served_lm, tok, limits, named):
    with pytest.raises(ValueError) as info:
        impl.create_app(served_lm, tok, **limits)
    assert named in str(info.value), (
        f"Called create_app(model, tok, {limits}). It raised ValueError({str(info.value)!r}); expected the message "
        f"to name {named!r}."
    )


@pytest.mark.exercise("create_app")
def test_app_documents_its_api(impl, served_lm, tok):
    with _client(impl, served_lm, tok) as client:
        schema = client.get("/openapi.json").json()
    operation = schema["paths"].get("/generate", {}).get("post", {})
    documented = set(operation.get("responses", {}))
    assert {"200", "422", "503"} <= documented and "get" in schema["paths"].get("/health", {}), (
        f"The OpenAPI schema documents /generate's answers {sorted(operation.get('responses', {}))} and /health "
        f"{sorted(schema['paths'].get('/health', {}))}; expected 200, 422 and 503 (responses={{503: ...}}), and GET."
    )
    ref = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[-1]
    body = schema["components"]["schemas"][ref]
    defaults = {name: spec.get("default", "(required)" if name == "prompt" else None) for name, spec in
                body["properties"].items()}
    expected = {"prompt": "(required)", "max_new_tokens": 20, "temperature": 1.0, "do_sample": False, "seed": None}
    assert defaults == expected and body.get("required") == ["prompt"] and body.get("additionalProperties") is False, (
        f"The request body's schema has the fields and defaults {defaults}, required {body.get('required')} and "
        f"additionalProperties {body.get('additionalProperties')}; expected {expected}, ['prompt'] and False "
        "(extra='forbid')."
    )


@pytest.mark.exercise("create_app")
def test_app_seed_zero_is_a_seed_like_any_other(impl, served_lm, tok):
    body = {"prompt": "the cat", "max_new_tokens": 12, "do_sample": True, "temperature": 1.5, "seed": 0}
    with _client(impl, served_lm, tok) as client:
        answers = [client.post("/generate", json=body) for _ in range(3)]
    got = [a.json()["generated_text"] if a.status_code == 200 else f"{a.status_code} {a.text[:100]}" for a in answers]
    if len(set(got)) != 1:
        _fail(f"POST /generate {body} three times", repr(got), "the same text three times",
              "seed 0 is a seed like any other: only null means fresh entropy. Test `seed is None`, not `not seed` "
              "(0 is falsy).")


@pytest.mark.exercise("create_app")
def test_app_requests_rejected_for_the_context_take_no_slot(impl, served_lm, tok):
    too_long = {"prompt": "the cat " + "é" * 490, "max_new_tokens": 64}  # ~990 tokens + 64 > 1024
    fine = {"prompt": "the cat", "max_new_tokens": 2}
    with _client(impl, served_lm, tok, max_concurrency=1, max_queue=0) as client:
        rejected = [client.post("/generate", json=too_long).status_code for _ in range(3)]
        after = [client.post("/generate", json=fine).status_code for _ in range(2)]
    if rejected != [422] * 3 or after != [200, 200]:
        _fail(f"create_app(model, tok, max_concurrency=1, max_queue=0), then POST /generate with a prompt too long "
              f"for the context three times, then {fine} twice", f"{rejected} then {after}",
              "[422, 422, 422] then [200, 200]",
              "a request rejected with 422 never started a generation, so it must not hold a slot: check the context "
              "BEFORE counting the request in (or count it out in the same `finally:`).")


@pytest.mark.exercise("create_app")
def test_app_sets_eval_mode_at_start_up_not_when_built(impl, served_lm, tok):
    from fastapi.testclient import TestClient

    app = impl.create_app(served_lm, tok)
    served_lm.train()  # the caller trains a little more between building the app and serving it
    with TestClient(app):
        started_in_eval = not served_lm.training
    assert started_in_eval, (
        "Called create_app(model, tok), then model.train(), then started the app (entered TestClient(app)). The "
        "model was in training mode once the app had started.\nBecause the set-up belongs in the lifespan, which runs "
        "when the server starts: put model.eval() there, not in create_app's own body."
    )


@pytest.mark.exercise("create_app")
def test_app_concurrent_samples_with_one_seed_agree(impl, served_lm, tok):
    body = {"prompt": "the cat", "max_new_tokens": 12, "do_sample": True, "temperature": 1.5, "seed": 11}
    with _client(impl, served_lm, tok, max_concurrency=4) as client:
        alone = client.post("/generate", json=body).json()
        gate = Gate(timeout=5.0)
        with _forward_hook(served_lm, gate), concurrent.futures.ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(client.post, "/generate", json=body) for _ in range(4)]
            gate.wait_for(4)  # the four generations are running at the same time (or we waited 5 s)
            gate.open()
            together = [f.result(timeout=30) for f in futures]
    got = [r.json() if r.status_code == 200 else f"{r.status_code} {r.text[:100]}" for r in together]
    if any(answer != alone for answer in got):
        _fail(f"POST /generate {body} four times at once (max_concurrency=4)", repr(got),
              f"four times {alone!r}, the answer to the same request alone",
              "each request draws from a torch.Generator of its own, created inside the request: one generator "
              "shared by the app (or the global RNG) interleaves the draws of concurrent requests.")


@pytest.mark.exercise("create_app")
def test_app_keeps_the_prompt_and_the_text_as_they_are(impl, served_lm, tok):
    # "the cat " (with its space) continues differently from "the cat"; " " is a legal prompt of one character;
    # "the kata" continues with " wquququququ": a leading space is part of the new text
    cases = [("the cat ", 5), (" ", 5), ("the kata", 6)]
    with _client(impl, served_lm, tok) as client:
        for prompt, n in cases:
            body = {"prompt": prompt, "max_new_tokens": n}
            response = client.post("/generate", json=body)
            text, count = _greedy(served_lm, tok, prompt, n)
            got = response.json() if response.status_code == 200 else None
            if got != {"generated_text": text, "new_tokens": count}:
                _fail(f"POST /generate {body}", f"{response.status_code} {response.text[:200]}",
                      f"200 {{'generated_text': {text!r}, 'new_tokens': {count}}}",
                      "the prompt is tokenized as the client sent it (spaces are tokens too: no strip) and the new "
                      "text is returned as decoded (no strip either).")


@pytest.mark.exercise("create_app")
def test_app_generates_without_building_a_graph(impl, served_lm, tok):
    modes = []
    with _forward_hook(served_lm, lambda module, args: modes.append(torch.is_grad_enabled())), \
            _client(impl, served_lm, tok) as client:
        for body in ({"prompt": "the cat", "max_new_tokens": 4},
                     {"prompt": "the cat", "max_new_tokens": 4, "do_sample": True, "seed": 1}):
            assert client.post("/generate", json=body).status_code == 200
    assert modes and not any(modes), (
        f"POST /generate ran {sum(modes)} of its {len(modes)} forward passes with grad mode on.\nBecause grad mode is "
        "set per thread and is ON in a fresh worker thread: wrap the generation in torch.no_grad() inside the "
        "function that runs in the thread, or every request keeps a graph of all its steps in memory."
    )


@pytest.mark.exercise("create_app")
def test_app_samples_from_the_whole_distribution(impl, served_lm, tok):
    prompt, n, temperature = "the cat", 150, 2.0
    with torch.no_grad():
        was = served_lm.training
        served_lm.eval()
        logits = served_lm(tok(prompt, return_tensors="pt").input_ids).logits[0, -1]
        served_lm.train(was)
    probs = torch.softmax(logits.double() / temperature, -1).tolist()
    texts = [tok.decode([i], skip_special_tokens=True) for i in range(len(probs))]
    top50 = {texts[i] for i in torch.topk(logits, 50).indices.tolist()}
    # the texts of the 50 most likely tokens, and the probability of drawing a token whose text is none of them
    tail = sum(p for text, p in zip(texts, probs, strict=True) if text not in top50)
    with _client(impl, served_lm, tok) as client:
        firsts = []
        for seed in range(n):
            body = {"prompt": prompt, "max_new_tokens": 1, "do_sample": True, "temperature": temperature, "seed": seed}
            firsts.append(client.post("/generate", json=body).json()["generated_text"])
    outside = sum(1 for text in firsts if text not in top50)
    least = n * tail - 4.5 * math.sqrt(n * tail * (1 - tail))  # 4.5 binomial standard deviations below the mean
    assert outside >= least, (
        f"POST /generate with do_sample true, temperature {temperature} and seeds 0..{n - 1} drew a token outside "
        f"the 50 most likely ones {outside} times; expected about {n * tail:.0f} (they hold {tail:.0%} of the "
        "probability).\n"
        "Because sampling draws from the whole softmax(logits / temperature), without top-k or top-p (those are "
        "model.generate's defaults, not this API's)."
    )


# the slow checks: the app as clients meet it


def _fuzz(schema, client, operation, mode, cases: int, counts: dict, tok) -> None:
    from hypothesis import Phase
    from hypothesis import given as hgiven
    from hypothesis import settings as hsettings
    from schemathesis import GenerationMode
    from schemathesis.checks import positive_data_acceptance, status_code_conformance

    excluded = [positive_data_acceptance]  # a schema-valid prompt may still be too long for the context: see below
    if mode == GenerationMode.NEGATIVE:
        excluded.append(status_code_conformance)  # a body that is not JSON at all gets FastAPI's 400

    @hsettings(max_examples=cases, database=None, deadline=None, derandomize=True,
               phases=[Phase.explicit, Phase.generate, Phase.shrink], suppress_health_check=list(HealthCheck))
    @hgiven(case=schema[operation[0]][operation[1]].as_strategy(generation_mode=mode))
    def one(case):
        counts["cases"] += 1
        kwargs = case.as_transport_kwargs(base_url="http://testserver")
        response = client.request(**{k: v for k, v in kwargs.items()
                                     if k in ("method", "url", "headers", "params", "json", "content", "data")})
        counts[response.status_code] = counts.get(response.status_code, 0) + 1
        assert response.status_code < 500, (
            f"{kwargs['method']} {kwargs['url']} with {kwargs.get('json', kwargs.get('data'))!r:.300} answered "
            f"{response.status_code} {response.text[:300]}; expected no server error for any request.")
        case.validate_response(response, excluded_checks=excluded)
        if mode == GenerationMode.POSITIVE and operation[0] == "/generate" and response.status_code == 422:
            # JSON Schema counts 1.0 as an integer, but the docstring asks for strict integers: that one disagreement
            # is allowed; any other valid request is rejected only when it does not fit the model's context
            body = kwargs["json"]
            strict = all(e.get("type") == "int_type" and isinstance(e.get("input"), float) and e["input"].is_integer()
                         for e in response.json()["detail"])
            n_new = body.get("max_new_tokens", 20)
            too_long = not strict and len(tok(body["prompt"]).input_ids) + int(n_new) > 1024
            assert strict or too_long, (f"POST /generate {body!r:.300} is valid by the schema and fits the context, "
                                        f"but was rejected: {response.text[:300]}")

    one()


@pytest.mark.exercise("create_app")
@pytest.mark.slow
def test_app_survives_schema_fuzzing(impl, served_lm, tok):
    import schemathesis
    from schemathesis import GenerationMode

    counts = {"cases": 0}
    with _client(impl, served_lm, tok, raise_errors=False) as client:
        schema = schemathesis.openapi.from_dict(client.get("/openapi.json").json())
        plan = [(("/generate", "POST"), GenerationMode.POSITIVE, 60),
                (("/generate", "POST"), GenerationMode.NEGATIVE, 60),
                (("/health", "GET"), GenerationMode.POSITIVE, 5)]
        for operation, mode, cases in plan:
            _fuzz(schema, client, operation, mode, cases, counts, tok)
    print(f"\nschema fuzzing: {counts['cases']} requests, answers "
          f"{ {k: v for k, v in sorted(counts.items(), key=str) if k != 'cases'} }")
    assert counts.get(200, 0) >= 10 and counts.get(422, 0) >= 10, f"the fuzzing hit too few cases: {counts}"


@pytest.mark.exercise("create_app")
@pytest.mark.slow
def test_app_served_with_uvicorn_under_a_burst_of_requests(impl, served_lm, tok, greedy_answers):
    import httpx

    from checks.processes import serve

    connections, total = 8, 200
    per_connection = total // connections
    results: list[tuple[int, float, str, dict | None]] = []
    lock = threading.Lock()

    def client_loop(k: int, url: str) -> None:
        with httpx.Client(base_url=url, timeout=60.0) as client:
            for i in range(per_connection):
                prompt = APP_PROMPTS[(k + i) % len(APP_PROMPTS)]
                started = time.perf_counter()
                try:
                    response = client.post("/generate", json={"prompt": prompt, "max_new_tokens": 12})
                    code, body = response.status_code, response.json() if response.status_code == 200 else None
                except httpx.HTTPError as err:
                    code, body = -1, {"error": repr(err)}
                with lock:
                    results.append((code, time.perf_counter() - started, prompt, body))

    with serve(served_app, impl, startup_timeout=120) as server:
        url = server.url
        with httpx.Client(base_url=url, timeout=10.0) as probe:
            assert probe.get("/health").json() == {"status": "ok"}
            threads = [threading.Thread(target=client_loop, args=(k, url), daemon=True) for k in range(connections)]
            started = time.perf_counter()
            for thread in threads:
                thread.start()
            health = []
            while any(t.is_alive() for t in threads) and time.perf_counter() - started < 240:
                t0 = time.perf_counter()
                health.append((probe.get("/health").status_code, time.perf_counter() - t0))
                time.sleep(0.2)
            for thread in threads:
                thread.join(timeout=60)
            elapsed = time.perf_counter() - started
    codes = [code for code, *_ in results]
    latencies = sorted(latency for _, latency, *_ in results)
    p50, p95 = statistics.median(latencies), latencies[int(0.95 * (len(latencies) - 1))]
    health_p95 = sorted(t for _, t in health)[int(0.95 * (len(health) - 1))] if health else math.nan
    print(f"\nserved burst: {len(results)} requests over {connections} connections in {elapsed:.1f} s; "
          f"latency p50 {p50 * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms; /health p95 {health_p95 * 1000:.0f} ms "
          f"({len(health)} probes); answers {sorted(set(codes))}")
    assert len(results) == total, f"only {len(results)} of {total} requests finished"
    server_errors = [r for r in results if r[0] >= 500 or r[0] < 0]
    assert not server_errors, (
        f"{len(server_errors)} requests failed with a server or transport error, e.g. {server_errors[:3]}")
    assert codes.count(200) == total, (
        f"answers {sorted(set(codes))}: with {connections} connections at most {connections} requests are in progress, "
        "below the default limit of 2 running + 16 waiting, so every request must be served."
    )
    wrong = [(prompt, body) for _, _, prompt, body in results
             if body != dict(zip(("generated_text", "new_tokens"), greedy_answers[(prompt, 12)], strict=True))]
    assert not wrong, f"{len(wrong)} served answers differ from greedy generation, e.g. {wrong[0]}"
    assert all(code == 200 for code, _ in health), f"/health failed during the burst: {health}"


# --------------------------------------------------------------------------------------------------
# create_demo


def _gradio():
    return pytest.importorskip("gradio", reason="gradio is an optional extra: pip install -e \".[demo]\"")


@pytest.fixture
def no_launch(monkeypatch):
    """gradio, with launch() replaced by a recorder: a check never starts a web server, and sees who tried."""
    gr = _gradio()
    launches = []
    monkeypatch.setattr(gr.Blocks, "launch", lambda self, *args, **kwargs: launches.append((args, kwargs)))
    return gr, launches


@pytest.mark.exercise("create_demo")
@pytest.mark.timeout(120)  # importing gradio takes seconds
def test_demo_is_an_interface_with_the_documented_components(impl, no_launch):
    gr, launches = no_launch
    calls = []

    def generate(prompt, max_new_tokens, temperature):
        calls.append((prompt, max_new_tokens, temperature))
        return f"<{prompt}|{max_new_tokens}|{temperature}>"

    demo = impl.create_demo(generate)
    assert isinstance(demo, gr.Interface), f"create_demo returned {describe(demo)}; expected a gradio Interface."
    assert calls == [], f"create_demo called generate_fn while building the interface: {calls}."
    assert launches == [], (
        f"create_demo called demo.launch{launches[0] if launches else ''}.\nBecause create_demo only builds the "
        "interface and returns it: launch() starts a web server (and blocks), which the caller decides to do."
    )
    kinds = [(type(c).__name__, c.label) for c in demo.input_components]
    assert kinds == [("Textbox", "Prompt"), ("Slider", "Max new tokens"), ("Slider", "Temperature")], (
        f"The interface's inputs are {kinds}; expected a Textbox 'Prompt', a Slider 'Max new tokens' and a Slider "
        "'Temperature', in that order."
    )
    tokens, temperature = demo.input_components[1], demo.input_components[2]
    got = [(s.minimum, s.maximum, s.value, s.step) for s in (tokens, temperature)]
    assert got == [(1, 64, 20, 1), (0.1, 2.0, 1.0, 0.1)], (
        f"The sliders are (minimum, maximum, value, step) {got}; expected (1, 64, 20, 1) and (0.1, 2.0, 1.0, 0.1): "
        "the server's bounds (the learning path's slider went to 500)."
    )
    outputs = [(type(c).__name__, c.label) for c in demo.output_components]
    assert outputs == [("Textbox", "Generated text")], f"The outputs are {outputs}; expected one Textbox."
    assert demo.title, "Give the interface a title."


@pytest.mark.exercise("create_demo")
@pytest.mark.timeout(120)
@pytest.mark.parametrize(("args", "passed"), [(("hi", 5.0, 0.7), ("hi", 5, 0.7)), (("", 64.0, 2), ("", 64, 2.0)),
                                               (("  once upon\n", 3.0, 0.75), ("  once upon\n", 3, 0.75))])
def test_demo_callback_calls_generate_fn(impl, no_launch, args, passed):
    calls = []

    def generate(prompt, max_new_tokens, temperature):
        calls.append((prompt, max_new_tokens, temperature))
        return f" <{prompt}|{max_new_tokens}|{temperature}>\n"  # a continuation starts with a space

    demo = impl.create_demo(generate)
    got = demo.fn(*args)
    assert calls == [passed] and [type(v) for v in calls[0]] == [str, int, float], (
        f"The interface's callback, called with {args}, called generate_fn with {calls}; expected {passed} once, as "
        "(str, int, float): the prompt and the temperature as they are, and the token count as an int (a Slider "
        "gives floats)."
    )
    assert got == generate(*passed), (
        f"The interface's callback, called with {args}, returned {got!r}; expected {generate(*passed)!r}, exactly "
        "what generate_fn returned (no stripping, no prompt in front).")


# --------------------------------------------------------------------------------------------------
# batch_generate


BATCH_PROMPTS = ["the cat", "a mat while dogs ran past quickly", "seven", "old wizard and one bright lamp",
                 "quickly under", "the", "dogs ran past quickly under seven bright lamps", "one old wizard",
                 "a dogs"]  # the last one's continuation starts with a space: ' onck;ck'


@pytest.fixture(scope="module")
def batch_lm():
    return new_gpt2(5, n_positions=64, dropout=0.3, eos_boost=3.0)


def _batch_call(prompts, max_new_tokens) -> str:
    return f"batch_generate(model, tok, {prompts!r:.200}, max_new_tokens={max_new_tokens})"


@pytest.mark.exercise("batch_generate")
@pytest.mark.parametrize(("indices", "max_new_tokens"), [
    ((0, 1, 2, 3), 10), ((4, 5, 6, 7), 6), ((2, 6), 12), ((1,), 5), ((0, 0, 5), 3), ((3, 7), 1),
    ((8, 1, 5), 6), (tuple(range(8)), 20)])
def test_batch_equals_one_prompt_at_a_time(impl, batch_lm, indices, max_new_tokens):
    tok = new_tokenizer()
    prompts = [BATCH_PROMPTS[i] for i in indices]
    pristine = list(prompts)
    batch_lm.train()  # dropout on: batch_generate must turn it off, and put it back
    before = _parameters(batch_lm)
    expected = [_greedy(batch_lm, tok, p, max_new_tokens)[0] for p in prompts]
    got = (impl.batch_generate(batch_lm, tok, prompts, max_new_tokens) if max_new_tokens != 20
           else impl.batch_generate(batch_lm, tok, prompts))
    call = _batch_call(pristine, max_new_tokens)
    if got != expected:
        probe = copy.deepcopy(batch_lm)
        cause = likely_cause(KATA, "batch_generate",
                             lambda f: f(probe, new_tokenizer(), list(pristine), max_new_tokens),
                             matches=lambda r: r == got)
        wrong = ([i for i, (g, e) in enumerate(zip(got, expected, strict=False)) if g != e]
                 if isinstance(got, list) else [])
        _fail(call, f"{got!r:.400}", f"{expected!r:.400} (first difference at prompt {wrong[:1]})",
              "each prompt's continuation must be what greedy generation of that prompt alone gives: pad on the LEFT, "
              "pass the attention mask, decode only the new tokens with skip_special_tokens=True (texts that reach "
              "eos stop there; a leading space is part of the text: do not strip it), dropout off; max_new_tokens "
              "defaults to 20.", cause)
    assert batch_lm.training, f"Called {call} on a model in training mode. It left the model in eval mode."
    assert _same_parameters(batch_lm, before), f"Called {call}. It changed the model's weights."
    assert prompts == pristine, f"Called {call}. It modified the list of prompts."


@pytest.mark.exercise("batch_generate")
def test_batch_is_greedy_whatever_the_models_generation_config(impl, batch_lm):
    tok = new_tokenizer()
    model = copy.deepcopy(batch_lm).eval()
    # many saved models sample by default, and a config may carry another pad id: neither may leak in
    model.generation_config.do_sample = True
    model.generation_config.pad_token_id = 7
    expected = [_greedy(model, tok, p, 8)[0] for p in BATCH_PROMPTS]
    got = impl.batch_generate(model, tok, list(BATCH_PROMPTS), 8)
    assert got == expected, (
        f"Called {_batch_call(BATCH_PROMPTS, 8)} on a model whose generation_config has do_sample=True and "
        f"pad_token_id=7. Returned {got!r:.300}; expected the greedy texts {expected!r:.300}.\nBecause the "
        "arguments of generate decide, not the model's saved defaults: pass do_sample=False and "
        "pad_token_id=tokenizer.pad_token_id (rows that ended at eos are then padded with a special token, which "
        "decoding drops)."
    )


@pytest.mark.exercise("batch_generate")
@pytest.mark.parametrize("side", ["right", "left"])
def test_batch_leaves_the_tokenizer_and_mode_alone(impl, batch_lm, side):
    tok = new_tokenizer()
    tok.padding_side = side
    batch_lm.eval()
    impl.batch_generate(batch_lm, tok, BATCH_PROMPTS[:3], 2)
    assert tok.padding_side == side, (
        f"Called {_batch_call(BATCH_PROMPTS[:3], 2)} with a tokenizer whose padding_side is {side!r}. Afterwards it "
        f"is {tok.padding_side!r}.\nBecause the caller's tokenizer is used elsewhere (training pads on the right): "
        "pass padding_side='left' to the tokenizer call instead of changing the attribute."
    )
    assert not batch_lm.training, "batch_generate put a model that was in eval mode into training mode."


@pytest.mark.exercise("batch_generate")
def test_batch_empty_and_bad_input(impl, batch_lm):
    tok = new_tokenizer()
    assert impl.batch_generate(batch_lm, tok, [], 3) == [], "batch_generate(model, tok, [], 3) must return []."
    bad = [("the cat", 3, "the cat"), (["a", ""], 3, "1"), (["a", 7], 3, "7"), (["a"], 0, "0"), (["a"], 2.0, "2.0"),
           (["a"], True, "True")]
    for prompts, n, named in bad:
        with pytest.raises(ValueError) as info:
            impl.batch_generate(batch_lm, tok, prompts, n)
        assert named in str(info.value), (
            f"Called {_batch_call(prompts, n)}. It raised ValueError({str(info.value)!r}); expected it to name "
            f"{named!r}."
        )
    no_pad = new_tokenizer()
    no_pad.pad_token = None
    with pytest.raises(ValueError):
        impl.batch_generate(batch_lm, no_pad, ["a", "bb"], 2)


# --------------------------------------------------------------------------------------------------
# content_filter


def _is_word_char(ch: str) -> bool:
    return ch.isalnum() or ch == "_"


def _flags(text: str, entry: str) -> bool:
    """The checks' own whole-word test (no regular expressions): every occurrence, case-folded by lower()."""
    low, needle = text.lower(), entry.lower()
    start = low.find(needle)
    while start != -1:
        end = start + len(needle)
        if (start == 0 or not _is_word_char(text[start - 1])) and (end == len(text) or not _is_word_char(text[end])):
            return True
        start = low.find(needle, start + 1)
    return False


FILTER_WORDS = ["ass", "class", "passage", "bass_", "Ass", "bad", "BAD", "badly", "bad2", "c++", "c", "a.b", "axb",
                "bad word", "é", "éa", "x"]
FILTER_SEPARATORS = [" ", "  ", ".", "!", "(", ")", "-", "_", "", "\n", ", ", "+"]


@st.composite
def filter_cases(draw):
    tokens = draw(st.lists(st.sampled_from(FILTER_WORDS), max_size=8))
    text = ""
    for token in tokens:
        text += draw(st.sampled_from(FILTER_SEPARATORS)) + token
    text += draw(st.sampled_from(FILTER_SEPARATORS))
    blocklist = draw(st.lists(st.sampled_from(["ass", "bad", "c++", "a.b", "bad word", "é", "x", "Class", "BAD"]),
                              max_size=4))
    return text, blocklist


@pytest.mark.exercise("content_filter")
@given(filter_cases())
def test_filter_flags_exactly_the_whole_words(impl, case):
    text, blocklist = case
    pristine = list(blocklist)
    got = impl.content_filter(text, blocklist)
    expected = [entry for entry in pristine if _flags(text, entry)]
    call = format_call("content_filter", (text, pristine))
    if got != expected:
        cause = likely_cause(KATA, "content_filter", lambda f: f(text, list(pristine)), matches=lambda r: r == got)
        _fail(call, repr(got), repr(expected),
              "an entry is flagged exactly when it occurs, ignoring case, with no letter, digit or _ right before or "
              "after it (so a text without a blocked word is never flagged); entries are listed as spelled in the "
              "blocklist, in its order.", cause)
    assert blocklist == pristine, f"Called {call}. It modified the blocklist."


@pytest.mark.exercise("content_filter")
def test_filter_known_examples(impl):
    cases = [
        ("A passage about the Bad apple.", ["ass", "bad", "apple pie"], ["bad"]),
        ("first class", ["ass"], []),
        ("Ass! (ass)", ["ass"], ["ass"]),
        ("I like c++ and c", ["c++", "c#"], ["c++"]),
        ("visit axb now", ["a.b"], []),
        ("a bad word here", ["bad word", "word here", "bad  word"], ["bad word", "word here"]),
        ("bad_word and bad2", ["bad", "word"], []),
        ("BAD", ["bad", "Bad", "bad"], ["bad", "Bad", "bad"]),
        ("nothing to see", [], []),
        ("un café noir, naïve", ["caf", "na", "ve", "noir"], ["noir"]),  # é and ï are letters (\w), not boundaries
        ("Die Strasse ist lang", ["straße"], []),  # re.IGNORECASE does not fold ß to ss (str.casefold would)
        ("bad apple", [" bad", "apple ", "bad"], ["bad"]),  # spaces inside an entry are matched literally too
    ]
    for text, blocklist, expected in cases:
        got = impl.content_filter(text, list(blocklist))
        if got != expected:
            cause = likely_cause(KATA, "content_filter", lambda f, t=text, b=blocklist: f(t, list(b)),
                                 matches=lambda r, g=got: r == g)
            _fail(format_call("content_filter", (text, blocklist)), repr(got), repr(expected),
                  "matches are whole words (no \\w before or after: letters of any alphabet, digits and _), "
                  "case-insensitive as re.IGNORECASE, literal (re.escape; spaces and all), reported in blocklist "
                  "order as spelled there.", cause)


@pytest.mark.exercise("content_filter")
@pytest.mark.parametrize(("text", "blocklist", "named"), [
    (b"bad", ["bad"], "b'bad'"), (None, ["bad"], "None"), ("text", "bad", "bad"), ("text", ["ok", ""], "''"),
    ("text", ["  "], "'  '"), ("text", ["ok", 3], "3")])
def test_filter_rejects_bad_input(impl, text, blocklist, named):
    with pytest.raises(ValueError) as info:
        impl.content_filter(text, blocklist)
    assert named in str(info.value), (
        f"Called {format_call('content_filter', (text, blocklist))}. It raised ValueError({str(info.value)!r}); "
        f"expected the message to name {named!r}."
    )
