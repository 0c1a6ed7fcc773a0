"""Checks for w19_pretrained: tokenizers, a tiny GPT-2, pipelines, datasets, Trainer and LoRA, all offline.

The oracles are the libraries themselves: ``tokenizers``/``transformers`` for encoding, saving and loading,
``model.generate`` for the pipeline, the tokenizer's own output for the dataset, ``Trainer`` replayed by the
reference for fine-tuning, and ``peft``'s LoRA layer for ``LoRALinear`` (``peft`` is imported only there).
Tiny models are built once per module from configs with seeded weights; tokenizers are trained on text
written here; ``save_pretrained``/``from_pretrained`` go through pytest's temporary folders. Comparisons of
model outputs run in float64 with atol 1e-10.

Checklist notes (CONTRACTS.md items that do not apply, and why):
- Randomness (8): no exercise takes a ``generator``. ``build_tiny_causal_lm`` and ``LoRALinear`` initialise
  from the global RNG as transformers and PyTorch do; the checks overwrite those weights from drawn seeds
  (``refill_``) or copy them, and check ``lora_A``'s distribution statistically. ``fine_tune`` seeds
  through ``TrainingArguments(seed=...)`` (Trainer sets the global seed): the checks run it inside
  ``seeded`` so the global state is restored, and check that the default seed is 0 and that another seed
  changes the run.
- ``fine_tune`` has no library oracle beyond ``Trainer`` itself: its replay check compares with the reference's
  run, and checks that do not use the reference pin what mutation testing needs (the number of optimizer steps,
  the size of AdamW's first step = the learning rate, the seed, the saved files).
- dtypes and devices (3): the tokenizer and the dataset return ids (``torch.long``, checked); the model is
  GPT-2's own float32 module (checked, with every config setting the docstring does not name compared with
  ``GPT2Config``'s default; converted with ``.to(float64)`` for comparisons); ``LoRALinear`` takes its
  base layer's dtype (float32 and float64 checked) and device (meta checked).
- Sizes (2): texts are whole strings of any length (empty, unseen characters and text longer than
  ``max_length`` are checked), in a list or a tuple; ``LoRALinear`` takes any leading dims (none, 1, 2 and a
  size-0 batch checked) and a base layer with or without a bias.
- Inputs (1): tokenizers are compared with a copy taken before ``CausalLMDataset`` reads them (its oracle uses
  that copy); ``fine_tune`` gets its own copy per run, and its saved tokenizer must equal the one passed in.
- Asymmetric probes (5): the tokenizer of ``build_tiny_causal_lm``'s checks has a bos token other than eos;
  ``text_generation`` runs on a model whose greedy choice is eos part-way, so stopping there and leaving it out
  of the text are observed; ``PromptTuning``'s initial scale is read from a config whose initializer_range is
  not GPT-2's 0.02.
- State over time (6): ``text_generation`` restores the model's mode (train and eval both checked, and train
  when generation fails) and the tokenizer's padding side (right and left both checked); ``CausalLMDataset``
  is read twice and its list copied; ``LoRALinear`` is merged and unmerged repeatedly.
"""

from __future__ import annotations

import copy
import math
import os

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from checks.hub import warm_up_saving as warm_up  # noqa: F401 - kata watch runs it once, before the first re-check
from checks.numerics import assert_close, describe, error_report, likely_cause
from checks.torch_strategies import generator, refill_, seeded

pytestmark = pytest.mark.kata("w19_pretrained")

KATA = "w19_pretrained"
DT = torch.float64
TIGHT = {"rtol": 1e-7, "atol": 1e-10}

WORDS = ("the cat sat on a mat while dogs ran past quickly under seven bright lamps and one "
         "old wizard wrote kata checks for tokenizers every morning").split()


def _corpus(n: int = 120) -> list[str]:
    """Sentences from a small vocabulary, varied enough that BPE finds hundreds of different pairs."""
    return [" ".join(WORDS[(i * k + k * k) % len(WORDS)] for k in range(3, 11)) + "." for i in range(n)]


CORPUS = _corpus()


def _fail(call: str, got: str, expected: str, because: str, cause: str | None = None) -> None:
    lines = [f"Called {call}.", f"Returned {got},", f"expected {expected}.", f"Because {because}"]
    if cause:
        lines.append(f"Likely cause: {cause}")
    raise AssertionError("\n".join(lines))


def _cause(symbol: str, run, matches) -> str | None:
    return likely_cause(KATA, symbol, run, matches=matches)


@pytest.fixture(scope="module")
def ref_tok(reference):
    """The reference tokenizer trained on CORPUS: the oracle input of every exercise after the first."""
    return reference.train_hf_tokenizer(CORPUS, 300)


@pytest.fixture(scope="module")
def impl_tok(impl):
    return impl.train_hf_tokenizer(list(CORPUS), 300)


# --------------------------------------------------------------------------------------------------
# train_hf_tokenizer


def _tok_call(vocab_size, texts=None):
    shown = f"<the checks' corpus of {len(CORPUS)} sentences>" if texts is None else f"{texts!r:.80}"
    return f"train_hf_tokenizer({shown}, {vocab_size!r})"


@pytest.mark.exercise("train_hf_tokenizer")
def test_tokenizer_special_tokens_and_ids(impl_tok, ref_tok):
    from transformers import PreTrainedTokenizerFast

    tok = impl_tok
    assert isinstance(tok, PreTrainedTokenizerFast), (
        f"Called {_tok_call(300)}. Returned a {type(tok).__name__}; expected a transformers.PreTrainedTokenizerFast."
    )
    got = {"pad_token": tok.pad_token, "pad_token_id": tok.pad_token_id, "eos_token": tok.eos_token,
           "eos_token_id": tok.eos_token_id, "bos_token": tok.bos_token, "bos_token_id": tok.bos_token_id,
           "padding_side": tok.padding_side}
    want = {"pad_token": "<pad>", "pad_token_id": 0, "eos_token": "<|endoftext|>", "eos_token_id": 1,
            "bos_token": "<|endoftext|>", "bos_token_id": 1, "padding_side": "right"}
    if got != want:
        cause = _cause("train_hf_tokenizer", lambda f: f(list(CORPUS), 300),
                       lambda t: (t.pad_token, t.pad_token_id, t.eos_token_id, t.bos_token_id) ==
                       (tok.pad_token, tok.pad_token_id, tok.eos_token_id, tok.bos_token_id))
        _fail(_tok_call(300), f"a tokenizer with {got}", f"{want}",
              "the pad token (id 0) and the end-of-text token (id 1, also bos) are separate, so that padding "
              "is never confused with a real end of text, and padding goes on the right.", cause)
    ids = tok("a<|endoftext|>b<pad>").input_ids
    assert ids.count(1) == 1 and ids.count(0) == 1 and len(ids) == 4, (
        f"Called tok('a<|endoftext|>b<pad>') on the result of {_tok_call(300)}. Returned ids {ids}; expected "
        "4 ids with the special tokens as single ids 1 and 0.\nBecause special tokens are whole tokens, never "
        "split into bytes: give them to the BPE trainer as special_tokens."
    )
    text = tok.decode(ids, skip_special_tokens=True)
    assert text == "ab", (
        f"Called tok.decode({ids}, skip_special_tokens=True). Returned {text!r}; expected 'ab'.\nBecause the "
        "special tokens are registered as special, so decoding can leave them out."
    )


@pytest.mark.exercise("train_hf_tokenizer")
@pytest.mark.parametrize("vocab_size", [258, 300, 333])
def test_tokenizer_vocab_size_and_byte_alphabet(impl, vocab_size):
    tok = impl.train_hf_tokenizer(list(CORPUS), vocab_size)
    vocab = tok.get_vocab()
    if len(tok) != vocab_size or len(vocab) != vocab_size:
        cause = _cause("train_hf_tokenizer", lambda f: f(list(CORPUS), vocab_size), lambda t: len(t) == len(tok))
        _fail(_tok_call(vocab_size), f"a tokenizer with len {len(tok)} ({len(vocab)} entries in get_vocab())",
              f"exactly {vocab_size}", "vocab_size counts everything: 256 bytes, 2 special tokens and the learned "
              "merges, and this corpus has more than enough pairs to fill it.", cause)
    from tokenizers.pre_tokenizers import ByteLevel

    missing = sorted(set(ByteLevel.alphabet()) - set(vocab))
    assert not missing, (
        f"Called {_tok_call(vocab_size)}. Its vocabulary lacks {len(missing)} of the 256 byte tokens, e.g. "
        f"{missing[:5]}.\nBecause byte-level BPE starts from all 256 bytes (initial_alphabet="
        "pre_tokenizers.ByteLevel.alphabet()), so a character never seen in training still has tokens."
    )


@pytest.mark.exercise("train_hf_tokenizer")
def test_tokenizer_learns_merges_from_the_texts(impl):
    texts = ("zyxwv qqq zyxwv kata",) * 40  # a tuple: any sequence of strings will do
    try:
        tok = impl.train_hf_tokenizer(texts, 270)
    except ValueError as err:
        _fail(_tok_call(270, texts), f"nothing: it raised ValueError({str(err)!r})", "a trained tokenizer",
              "texts may be any sequence of strings, a tuple as well as a list: only a single string, an empty "
              "sequence or a non-string item is an error.")
    pieces = tok.tokenize("zyxwv")
    assert pieces == ["zyxwv"], (
        f"Called {_tok_call(270, texts)}, then tok.tokenize('zyxwv'). Returned {pieces}; expected ['zyxwv'].\n"
        "Because BPE merges the most frequent pairs of the given texts first: a word repeated 80 times becomes "
        "one token long before the 12 merges run out."
    )
    assert len(tok) <= 270, f"Called {_tok_call(270, texts)}. Returned len {len(tok)}; expected at most 270."


_unicode_text = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=30)


@pytest.mark.exercise("train_hf_tokenizer")
@settings(max_examples=30)
@given(text=st.one_of(_unicode_text, st.sampled_from(CORPUS)))
@example(text="héllo wörld ✓ 𝄞 \t\n  two  spaces")
@example(text="So , it 's OK . Do n't stop ! ﬁ ① Ｋ")  # no normalizer: case and compatibility characters are kept
@example(text="")
def test_tokenizer_round_trips_any_text(impl_tok, text):
    ids = impl_tok(text).input_ids
    back = impl_tok.decode(ids)
    assert back == text, (
        f"Called tok.decode(tok({text!r}).input_ids) on the result of {_tok_call(300)}. Returned {back!r}; "
        f"expected {text!r} (ids {ids[:20]}).\nBecause a byte-level BPE tokenizer (ByteLevel pre-tokenizer with "
        "add_prefix_space=False, ByteLevel decoder, all 256 bytes in the alphabet) encodes any text exactly."
    )


@pytest.mark.exercise("train_hf_tokenizer")
def test_tokenizer_save_load_round_trip(impl_tok, tmp_path):
    from transformers import AutoTokenizer

    impl_tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    texts = [CORPUS[0], "héllo ✓ the cat<|endoftext|>", "a"]
    want = impl_tok(texts, padding=True)
    got = loaded(texts, padding=True)
    same = (got["input_ids"] == want["input_ids"] and got["attention_mask"] == want["attention_mask"]
            and (loaded.pad_token_id, loaded.eos_token_id, loaded.bos_token_id, len(loaded))
            == (impl_tok.pad_token_id, impl_tok.eos_token_id, impl_tok.bos_token_id, len(impl_tok)))
    assert same, (
        f"Called tok.save_pretrained(folder) then AutoTokenizer.from_pretrained(folder). The loaded tokenizer "
        f"gives {got['input_ids']} (pad/eos/bos {loaded.pad_token_id}/{loaded.eos_token_id}/"
        f"{loaded.bos_token_id}); the saved one gives {want['input_ids']} (pad/eos/bos {impl_tok.pad_token_id}/"
        f"{impl_tok.eos_token_id}/{impl_tok.bos_token_id}).\nBecause everything the tokenizer does must be saved: "
        "name the special tokens when you wrap it, so the wrapper writes them to the folder."
    )


@pytest.mark.exercise("train_hf_tokenizer")
@pytest.mark.parametrize("texts, vocab_size, named", [
    (CORPUS[:5], 257, "257"), (CORPUS[:5], 258.0, "258.0"), (CORPUS[:5], True, "True"),
    ("the cat sat on the mat", 300, "the cat sat"), ([], 300, "empty"), (["ok", 7], 300, "7"),
])
def test_tokenizer_rejects_bad_arguments(impl, texts, vocab_size, named):
    before = copy.deepcopy(texts)
    with pytest.raises((ValueError, TypeError)) as info:
        impl.train_hf_tokenizer(texts, vocab_size)
    message = str(info.value)
    assert info.type is ValueError and (named == "empty" or named in message), (
        f"Called {_tok_call(vocab_size, texts)}. It raised {info.type.__name__}({message!r}); expected a "
        f"ValueError that names {named!r}.\nBecause the docstring promises a ValueError naming the bad value "
        "(a single string would train on its characters; fewer than 258 tokens cannot hold the bytes and the "
        "two special tokens)."
    )
    assert texts == before


@pytest.mark.exercise("train_hf_tokenizer")
def test_tokenizer_leaves_texts_unchanged(impl):
    texts = list(CORPUS[:30])
    impl.train_hf_tokenizer(texts, 280)
    assert texts == CORPUS[:30], (
        f"Called {_tok_call(280, texts)}. It changed its argument `texts`.\nBecause the caller still needs them."
    )


# --------------------------------------------------------------------------------------------------
# build_tiny_causal_lm


@pytest.fixture(scope="module")
def grown_tok(ref_tok):
    """The reference tokenizer plus one added token, so len(tok) = vocab_size + 1; the added token "<s>" is its bos
    token, so that bos (id 300) differs from eos (id 1) and the two cannot be mixed up unseen."""
    tok = copy.deepcopy(ref_tok)
    tok.add_special_tokens({"bos_token": "<s>"})
    return tok


def _perturb_(model, seed: int, scale: float = 0.3):
    """Seeded weights, LayerNorm gains away from 1 and biases away from 0, in float64."""
    model.to(DT)
    refill_(model, seed, scale)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".ln_" in name and name.endswith("weight"):
                p.add_(1.0)
    return model.eval()


def _model_call(n_layer, n_embd, n_head, n_positions):
    return f"build_tiny_causal_lm(tok, n_layer={n_layer}, n_embd={n_embd}, n_head={n_head}, n_positions={n_positions})"


@pytest.mark.exercise("build_tiny_causal_lm")
@pytest.mark.parametrize("sizes", [(2, 32, 2, 128), (3, 24, 4, 40), (1, 8, 1, 16)])
def test_model_config_agrees_with_tokenizer(impl, grown_tok, sizes):
    from transformers.models.gpt2 import GPT2LMHeadModel

    n_layer, n_embd, n_head, n_positions = sizes
    call = _model_call(*sizes)
    if sizes == (2, 32, 2, 128):  # the documented defaults
        model, call = impl.build_tiny_causal_lm(grown_tok), "build_tiny_causal_lm(tok)"
    else:
        model = impl.build_tiny_causal_lm(grown_tok, n_layer=n_layer, n_embd=n_embd, n_head=n_head,
                                          n_positions=n_positions)
    assert isinstance(model, GPT2LMHeadModel), (
        f"Called {call}. Returned {type(model).__name__}; expected a GPT2LMHeadModel.")
    c = model.config
    got = {"vocab_size": c.vocab_size, "n_layer": c.n_layer, "n_embd": c.n_embd, "n_head": c.n_head,
           "n_positions": c.n_positions, "bos_token_id": c.bos_token_id, "eos_token_id": c.eos_token_id,
           "pad_token_id": c.pad_token_id}
    want = {"vocab_size": len(grown_tok), "n_layer": n_layer, "n_embd": n_embd, "n_head": n_head,
            "n_positions": n_positions, "bos_token_id": grown_tok.bos_token_id, "eos_token_id": 1, "pad_token_id": 0}
    if got != want:
        cause = _cause("build_tiny_causal_lm", lambda f: f(grown_tok, n_layer, n_embd, n_head, n_positions).config,
                       lambda cfg: all(getattr(cfg, k) == v for k, v in got.items()))
        _fail(f"{call} with a tokenizer of len {len(grown_tok)} (vocab_size {grown_tok.vocab_size} + 1 added token, "
              f"its bos token <s>)", f"a config with {got}", f"{want}", "the embedding table needs a row for every "
              "id the tokenizer can produce (len(tok) counts added tokens), and bos, eos and pad are each the "
              "tokenizer's own id (here bos is not eos).", cause)
    V, E, P, L = len(grown_tok), n_embd, n_positions, n_layer
    count = sum(p.numel() for p in model.parameters())
    expected = V * E + P * E + L * (12 * E * E + 13 * E) + 2 * E
    assert count == expected and model.lm_head.weight is model.transformer.wte.weight, (
        f"Called {call}. The model has {count} parameters (lm_head tied to wte: "
        f"{model.lm_head.weight is model.transformer.wte.weight}); expected V*E + P*E + L*(12E^2 + 13E) + 2E = "
        f"{expected}, with the output layer tied to the token embedding.\nBecause everything except the listed "
        "fields keeps GPT-2's defaults."
    )
    _assert_gpt2_defaults(model, call, want, lambda f: f(grown_tok, n_layer, n_embd, n_head, n_positions))
    gen = model.generation_config
    assert (gen.eos_token_id, gen.pad_token_id) == (1, 0), (
        f"Called {call}. model.generation_config has eos/pad {gen.eos_token_id}/{gen.pad_token_id}; expected 1/0.\n"
        "Because generate() reads its stop and pad ids from there (they come from the config)."
    )


_NOT_SETTINGS = {"transformers_version", "_name_or_path", "architectures", "dtype"}  # bookkeeping, not the model


def _settings(config, n_embd: int) -> dict:
    """A config's settings as a dict; n_inner None means 4 * n_embd, so either spelling is accepted."""
    settings = {k: v for k, v in config.to_dict().items() if k not in _NOT_SETTINGS}
    settings["n_inner"] = settings.get("n_inner") or 4 * n_embd
    return settings


def _assert_gpt2_defaults(model, call: str, fields: dict, build) -> None:
    """Every config setting other than ``fields`` is GPT2Config's default, and the weights are float32."""
    from transformers.models.gpt2 import GPT2Config

    got, want = _settings(model.config, fields["n_embd"]), _settings(GPT2Config(**fields), fields["n_embd"])
    diff = {k: f"{got.get(k)!r} (GPT-2's default: {want.get(k)!r})" for k in sorted(got.keys() | want.keys())
            if got.get(k) != want.get(k)}
    if diff:
        cause = _cause("build_tiny_causal_lm", lambda f: _settings(build(f).config, fields["n_embd"]),
                       lambda s: all(s.get(k) == got.get(k) for k in diff))
        _fail(call, f"a config with {diff}", "GPT-2's default for every setting the docstring does not name",
              "only the vocabulary size, the sizes and the special ids are yours to set: dropout stays 0.1, the "
              "activation GELU, the cache on, as in GPT2Config().", cause)
    dtypes = sorted({str(p.dtype) for p in model.parameters()})
    assert dtypes == ["torch.float32"], (
        f"Called {call}. The model's parameters are {dtypes}; expected torch.float32.\nBecause GPT2LMHeadModel(config) "
        "builds float32 weights, like every other setting left at its default."
    )


@pytest.mark.exercise("build_tiny_causal_lm")
def test_model_save_load_round_trip(impl, grown_tok, tmp_path):
    from transformers.models.gpt2 import GPT2LMHeadModel

    model = _perturb_(impl.build_tiny_causal_lm(grown_tok, n_layer=2, n_embd=16, n_head=4, n_positions=24), 5)
    model.save_pretrained(tmp_path)
    loaded = GPT2LMHeadModel.from_pretrained(tmp_path, dtype=DT).eval()
    ids = torch.tensor([[1, 5, 9, len(grown_tok) - 1, 0, 77] * 4])  # the added token's id too, and 24 = n_positions
    with torch.no_grad():
        want, got = model(ids).logits, loaded(ids).logits
    assert_close(got, want, call="GPT2LMHeadModel.from_pretrained(folder)(ids) after model.save_pretrained(folder)",
                 because="saving and loading keep the config and every weight.", **TIGHT)
    assert loaded.config.vocab_size == len(grown_tok) and loaded.config.eos_token_id == 1


@pytest.mark.exercise("build_tiny_causal_lm")
def test_model_rejects_bad_arguments(impl, grown_tok):
    with pytest.raises(ValueError) as info:
        impl.build_tiny_causal_lm(grown_tok, n_layer=1, n_embd=30, n_head=4)
    assert "30" in str(info.value) and "4" in str(info.value), (
        f"Called {_model_call(1, 30, 4, 128)}. It raised ValueError({str(info.value)!r}); expected a message "
        "naming 30 and 4.\nBecause n_embd must split evenly into heads."
    )
    for missing in ("pad", "eos"):
        lacking = copy.deepcopy(grown_tok)
        setattr(lacking, f"{missing}_token", None)
        try:
            impl.build_tiny_causal_lm(lacking)
        except ValueError:
            continue
        raise AssertionError(
            f"Called build_tiny_causal_lm(tok) with a tokenizer whose {missing}_token is None. It raised no "
            f"ValueError.\nBecause the model's {missing}_token_id comes from the tokenizer: without one, "
            + ("padding has no id." if missing == "pad" else "generation would never stop.")
        )


# --------------------------------------------------------------------------------------------------
# text_generation


@pytest.fixture(scope="module")
def gen_model(reference, ref_tok):
    """A reference tiny GPT-2 with seeded weights large enough to give varied greedy text."""
    model = reference.build_tiny_causal_lm(ref_tok, n_layer=2, n_embd=32, n_head=4, n_positions=128)
    return _perturb_(model, 19, scale=0.5)


def _greedy(model, tok, prompt: str, max_new_tokens: int) -> tuple[str, int]:
    """The checks' oracle: model.generate in eval mode, decoded without special tokens; and the new-token count."""
    was = model.training
    text, ids = _greedy_ids(model, tok, prompt, max_new_tokens)
    model.train(was)
    return text, len(ids)


def _greedy_ids(model, tok, prompt: str, max_new_tokens: int) -> tuple[str, list[int]]:
    """The text of ``_greedy`` and the new token ids; leaves the model in eval mode."""
    enc = tok(prompt, return_tensors="pt")
    with torch.no_grad():
        out = model.eval().generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                    pad_token_id=tok.pad_token_id)
    return tok.decode(out[0], skip_special_tokens=True), out[0, enc["input_ids"].shape[1]:].tolist()


PROMPTS = ["the cat sat on a mat while dogs ran past quickly", "old wizard", "héllo ✓"]


@pytest.mark.exercise("text_generation")
@pytest.mark.parametrize("prompt", PROMPTS)
@pytest.mark.parametrize("max_new_tokens", [1, 7, None])
def test_generation_equals_greedy_generate(impl, gen_model, ref_tok, prompt, max_new_tokens):
    ref_tok = copy.deepcopy(ref_tok)  # this check's own tokenizer: what the code under test does to it stays here
    n = 20 if max_new_tokens is None else max_new_tokens
    want, new = _greedy(gen_model, ref_tok, prompt, n)
    assert new >= 1
    before = {k: v.clone() for k, v in gen_model.state_dict().items()}
    if max_new_tokens is None:  # the documented default, 20
        got, call = impl.text_generation(gen_model, ref_tok, prompt), f"text_generation(model, tok, {prompt!r})"
    else:
        got = impl.text_generation(gen_model, ref_tok, prompt, max_new_tokens=n)
        call = f"text_generation(model, tok, {prompt!r}, max_new_tokens={n})"
    if got != want:
        cause = _cause("text_generation", lambda f: f(gen_model, ref_tok, prompt, n), lambda text: text == got)
        _fail(call, repr(got), f"{want!r} ({new} new tokens, greedy, as model.generate gives)",
              "max_new_tokens counts only the generated tokens (max_length would count the prompt too), and "
              "greedy decoding picks the most likely token at every step.", cause)
    side = ref_tok.padding_side
    if side != "right":
        cause = _cause("text_generation", lambda f: (f(gen_model, t := copy.deepcopy(ref_tok), prompt, n),
                                                     t.padding_side)[1], lambda s: s == side)
        _fail(call, f"the right text, but left tok.padding_side = {side!r}", "tok.padding_side = 'right', as before",
              "the pipeline switches the tokenizer of a decoder-only model to left padding; put it back, or the "
              "caller's next padded batch (for training) is padded on the other side.", cause)
    changed = [k for k, v in gen_model.state_dict().items() if not torch.equal(v, before[k])]
    assert not changed and not gen_model.training, (
        f"Called {call}. It changed the model: weights {changed[:3]}, training mode now {gen_model.training}.\n"
        "Because generating must leave the model as the caller had it."
    )


@pytest.mark.exercise("text_generation")
def test_generation_turns_dropout_off_and_restores_the_mode(impl, gen_model, ref_tok):
    ref_tok = copy.deepcopy(ref_tok)
    model = copy.deepcopy(gen_model)
    model.config.resid_pdrop = model.config.embd_pdrop = model.config.attn_pdrop = 0.5
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.5
    want, _ = _greedy(model, ref_tok, PROMPTS[1], 12)
    model.generation_config.do_sample = True  # a model whose own generation config samples: greedy must win
    model.generation_config.top_k = 0
    model.generation_config.temperature = 20.0  # nearly uniform sampling: it cannot match greedy by chance
    model.train()
    with seeded(3):
        got = impl.text_generation(model, ref_tok, PROMPTS[1], 12)
    if got != want or not model.training:
        cause = _cause("text_generation", lambda f: (f(m := copy.deepcopy(model).train(), ref_tok, PROMPTS[1], 12),
                                                     m.training),
                       lambda r: r == (got, model.training))
        _fail(f"text_generation(model, tok, {PROMPTS[1]!r}, max_new_tokens=12) on a model in train mode with "
              "dropout 0.5 and generation_config.do_sample = True",
              f"{got!r}, leaving model.training = {model.training}",
              f"{want!r}, leaving model.training = True", "dropout must be off while generating (model.eval()), "
              "or greedy decoding is random; do_sample=False overrides a generation config that samples; and the "
              "model goes back to the mode the caller had it in.", cause)


@pytest.fixture(scope="module")
def eos_model(gen_model, ref_tok):
    """gen_model, except that the end-of-text token (id 1) gets a slightly larger copy of the output embedding of
    the 4th token greedy decoding of PROMPTS[0] picks: from there on, eos wins where that token would have."""
    model = copy.deepcopy(gen_model)
    _, ids = _greedy_ids(model, ref_tok, PROMPTS[0], 12)
    with torch.no_grad():
        wte = model.get_input_embeddings().weight
        wte[ref_tok.eos_token_id] = 1.05 * wte[ids[3]]
    return model


@pytest.mark.exercise("text_generation")
def test_generation_stops_at_eos_and_leaves_it_out(impl, eos_model, ref_tok):
    tok = copy.deepcopy(ref_tok)
    tok.padding_side = "left"  # the caller's own choice, which must survive the pipeline
    want, ids = _greedy_ids(eos_model, tok, PROMPTS[0], 12)
    assert tok.eos_token_id in ids and len(ids) < 12, f"the checks' own model should stop early, got ids {ids}"
    call = f"text_generation(model, tok, {PROMPTS[0]!r}, max_new_tokens=12) with a model whose greedy choice is " \
           f"eos after {len(ids) - 1} new tokens"
    got = impl.text_generation(eos_model, tok, PROMPTS[0], 12)
    if got != want:
        cause = _cause("text_generation", lambda f: f(eos_model, copy.deepcopy(ref_tok), PROMPTS[0], 12),
                       lambda text: text == got)
        _fail(call, repr(got), repr(want), "generation stops at the first end-of-text token (model.generate and "
              "the pipeline do), and the text leaves special tokens out (skip_special_tokens=True).", cause)
    assert tok.padding_side == "left", (
        f"Called {call} with tok.padding_side = 'left'. Afterwards tok.padding_side = {tok.padding_side!r}; expected "
        "'left'.\nBecause the tokenizer's padding side goes back to what it was before the call, whatever that was."
    )


class _Boom(Exception):
    """Raised by the checks' own model in the middle of generating."""


@pytest.mark.exercise("text_generation")
def test_generation_restores_the_mode_when_generation_fails(impl, gen_model, ref_tok):
    model = copy.deepcopy(gen_model).train()

    def fail(module, args, kwargs):
        raise _Boom("the checks' model fails on purpose")

    model.register_forward_pre_hook(fail, with_kwargs=True)
    call = f"text_generation(model, tok, {PROMPTS[1]!r}, max_new_tokens=3) with a model in train mode whose forward " \
           "raises an error"
    with pytest.raises(_Boom):
        impl.text_generation(model, copy.deepcopy(ref_tok), PROMPTS[1], 3)
    assert model.training, (
        f"Called {call}. It raised the model's error and left model.training = False; expected True.\nBecause the "
        "mode goes back in a finally: block (model.train(was_training)), so that it is restored even when generation "
        "fails."
    )


@pytest.mark.exercise("text_generation")
@pytest.mark.parametrize("bad", [0, -3, True, 2.0])
def test_generation_rejects_bad_max_new_tokens(impl, gen_model, ref_tok, bad):
    ref_tok = copy.deepcopy(ref_tok)
    with pytest.raises((ValueError, TypeError)) as info:
        impl.text_generation(gen_model, ref_tok, "the cat", max_new_tokens=bad)
    assert info.type is ValueError or isinstance(bad, float), (
        f"Called text_generation(model, tok, 'the cat', max_new_tokens={bad!r}). It raised "
        f"{info.type.__name__}({str(info.value)!r}); expected a ValueError.\nBecause max_new_tokens is a positive int."
    )


# --------------------------------------------------------------------------------------------------
# CausalLMDataset

DATA = ["the cat sat", "", "héllo ✓ the end<|endoftext|>", " ".join(CORPUS[:3]), "a<|endoftext|>b"]


def _expected_item(tok, text: str, max_length: int) -> dict[str, torch.Tensor]:
    """The checks' oracle, straight from the tokenizer (never the learner's code)."""
    enc = tok(text, truncation=True, padding="max_length", max_length=max_length)
    ids = torch.tensor(enc["input_ids"])
    mask = torch.tensor(enc["attention_mask"])
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.where(mask.bool(), ids, -100)}


def _tok_settings(tok) -> dict:
    return {"padding_side": tok.padding_side, "truncation_side": tok.truncation_side, "pad_token": tok.pad_token,
            "eos_token": tok.eos_token, "len": len(tok)}


def _check_dataset(impl, tok, texts, max_length, call, what=""):
    pristine = copy.deepcopy(tok)  # the oracle's tokenizer: what the dataset does to `tok` cannot reach it
    try:
        ds = impl.CausalLMDataset(texts, tok, max_length) if max_length != 512 else impl.CausalLMDataset(texts, tok)
    except ValueError as err:
        _fail(f"{call} with texts = {texts!r:.80}{what}", f"nothing: it raised ValueError({str(err)!r})", "a dataset",
              f"these texts are valid: any sequence of strings will do (here a {type(texts).__name__}).")
    assert len(ds) == len(texts), f"Called len({call}). Returned {len(ds)}; expected {len(texts)}."
    for i, text in enumerate(texts):
        for _ in range(2):  # read twice: nothing may change between reads
            item = ds[i]
            want = _expected_item(pristine, text, max_length)
            assert isinstance(item, dict) and set(item) == set(want), (
                f"Called {call}[{i}]. Returned {describe(item)}; expected a dict with keys {sorted(want)}."
            )
            for key, value in want.items():
                got = item[key]
                ok = (isinstance(got, torch.Tensor) and got.dtype == torch.long and got.shape == value.shape
                      and torch.equal(got, value))
                if not ok:
                    cause = _cause("CausalLMDataset",
                                   lambda cls, i=i, key=key: cls(list(texts), copy.deepcopy(pristine),
                                                                 max_length)[i][key],
                                   lambda t, g=got: isinstance(g, torch.Tensor) and t.shape == g.shape
                                   and torch.equal(t, g))
                    _fail(f"{call}[{i}] with text {text!r}{what}", f"{key} = {describe(got)}",
                          f"{describe(value)} (torch.long, length {max_length})",
                          "input_ids and attention_mask are the tokenizer's, truncated and padded to max_length on the "
                          "tokenizer's padding side, and labels are input_ids with -100 exactly where "
                          "attention_mask is 0 (the loss ignores padding, and only padding).", cause)
    before, after = _tok_settings(pristine), _tok_settings(tok)
    assert after == before, (
        f"Called {call} and read every item{what}. The tokenizer passed in changed: "
        f"{ {k: f'{before[k]!r} -> {after[k]!r}' for k in before if before[k] != after[k]} }.\nBecause the caller's "
        "tokenizer is only read: the dataset pads on the side the tokenizer already has, and never changes it."
    )
    return ds


@pytest.mark.exercise("CausalLMDataset")
@pytest.mark.parametrize("max_length", [1, 6, 40, 512])
def test_dataset_items_mask_padding_in_labels(impl, ref_tok, max_length):
    texts = list(DATA)
    call = f"CausalLMDataset(texts, tok, max_length={max_length})" if max_length != 512 else \
        "CausalLMDataset(texts, tok)"
    ds = _check_dataset(impl, ref_tok, texts, max_length, call)
    assert texts == DATA, f"Called {call}. It changed its argument `texts`."
    item = ds[0]
    item["labels"][0] = 12345  # labels must be their own tensor
    assert ds[0]["input_ids"][0] != 12345 and item["input_ids"][0] != 12345, (
        f"Called {call}[0], then wrote into its labels. input_ids changed too.\nBecause labels must be a new "
        "tensor (masked_fill returns one), not input_ids itself edited in place."
    )


@pytest.mark.exercise("CausalLMDataset")
def test_dataset_keeps_real_eos_when_pad_is_eos(impl, ref_tok):
    tok = copy.deepcopy(ref_tok)
    tok.pad_token = tok.eos_token  # the learning path's setting: pad and eos share id 1
    _check_dataset(impl, tok, ("a<|endoftext|>b<|endoftext|>", "the cat sat<|endoftext|>"), 12,  # a tuple will do
                   "CausalLMDataset(texts, tok, max_length=12)", " and pad_token = eos_token")


@pytest.mark.exercise("CausalLMDataset")
def test_dataset_follows_left_padding(impl, ref_tok):
    tok = copy.deepcopy(ref_tok)
    tok.padding_side = "left"
    _check_dataset(impl, tok, ["the cat sat", "héllo"], 9, "CausalLMDataset(texts, tok, max_length=9)",
                   " and padding_side = 'left'")


@pytest.mark.exercise("CausalLMDataset")
def test_dataset_copies_the_list_and_batches(impl, ref_tok):
    texts = ["the cat", "old wizard wrote"]
    ds = impl.CausalLMDataset(texts, ref_tok, 8)
    texts[0] = "changed later"
    want = _expected_item(ref_tok, "the cat", 8)["input_ids"]
    assert torch.equal(ds[0]["input_ids"], want), (
        "Called CausalLMDataset(texts, tok, 8), then changed texts[0]. ds[0] changed with it.\nBecause the "
        "dataset keeps its own copy of the list (list(texts))."
    )
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=2)))
    assert {k: tuple(v.shape) for k, v in batch.items()} == {k: (2, 8) for k in ("input_ids", "attention_mask",
                                                                                  "labels")}


@pytest.mark.exercise("CausalLMDataset")
@pytest.mark.parametrize("case", ["no_pad", "zero", "bool", "float", "string", "empty", "non_string"])
def test_dataset_rejects_bad_arguments(impl, ref_tok, case):
    tok, texts, max_length = ref_tok, ["the cat"], 8
    if case == "no_pad":
        tok = copy.deepcopy(ref_tok)
        tok.pad_token = None
    elif case == "zero":
        max_length = 0
    elif case == "bool":
        max_length = True
    elif case == "float":
        max_length = 8.0
    elif case == "string":
        texts = "the cat"
    elif case == "non_string":
        texts = ["the cat", 7]
    else:
        texts = []
    try:
        impl.CausalLMDataset(texts, tok, max_length)
    except ValueError:
        return
    _fail(f"CausalLMDataset({texts!r}, tok{' without a pad token' if case == 'no_pad' else ''}, {max_length!r})",
          "a dataset", "a ValueError from __init__", "the docstring promises it for a tokenizer without a pad token, "
          "a max_length that is not a positive int (bools and floats are not ints), and texts that are a single "
          "string, empty, or hold something other than a string: found at once, not when an item is read.")


# --------------------------------------------------------------------------------------------------
# fine_tune

FT_TEXTS = CORPUS[:7]


@pytest.fixture(scope="module")
def ft_start(reference, ref_tok):
    """A reference tiny GPT-2 with seeded float32 weights: every fine-tuning run starts from a copy of it.

    Dropout is off, so that a run does not depend on how the learner pads (dropout masks follow the padded
    length): only the documented settings decide the losses."""
    model = reference.build_tiny_causal_lm(ref_tok, n_layer=1, n_embd=16, n_head=2, n_positions=32)
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    refill_(model, 7, 0.1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".ln_" in name and name.endswith("weight"):
                p.add_(1.0)
    return model


def _run_fine_tune(module, start, tok, folder, **kwargs):
    model, tok = copy.deepcopy(start), copy.deepcopy(tok)  # what one run does to them stays in that run
    with seeded(0):  # Trainer seeds the global RNG: restore it afterwards
        losses = module.fine_tune(model, tok, list(FT_TEXTS), folder, **kwargs)
    return model, losses


@pytest.fixture(scope="module")
def fine_tuned(ft_start, ref_tok, tmp_path_factory):
    """``fine_tuned(module, **kwargs)`` -> (model, losses, output_dir) of one fine_tune run from ``ft_start``.

    Each run is a Trainer training, so a configuration that several checks look at trains once per session;
    the checks only read the model, the losses and the folder. Under mutation testing (mutmut sets
    MUTANT_UNDER_TEST) every check trains for itself: for each mutant, mutmut runs only the checks that called
    the mutated function, and a check served from this cache never calls it."""
    runs = {}
    share = "MUTANT_UNDER_TEST" not in os.environ

    def run(module, **kwargs):
        key = (module, tuple(sorted(kwargs.items())))
        if key not in runs or not share:
            folder = tmp_path_factory.mktemp("fine_tune")
            runs[key] = (*_run_fine_tune(module, ft_start, ref_tok, folder, **kwargs), folder)
        return runs[key]

    return run


FT_CASES = [{}, {"epochs": 2, "batch_size": 3, "learning_rate": 2e-3, "max_length": 12, "seed": 5}]


@pytest.mark.exercise("fine_tune")
@pytest.mark.parametrize("kwargs", FT_CASES, ids=["defaults", "all_arguments"])
def test_fine_tune_replays_the_documented_training(impl, reference, fine_tuned, ft_start, ref_tok, tmp_path,
                                                   kwargs):
    call = f"fine_tune(model, tok, texts, folder{''.join(f', {k}={v!r}' for k, v in kwargs.items())})"
    want_model, want, _ = fine_tuned(reference, **kwargs)
    got_model, got, _ = fine_tuned(impl, **kwargs)
    steps = kwargs.get("epochs", 1) * math.ceil(len(FT_TEXTS) / kwargs.get("batch_size", 2))
    problem = None
    if not isinstance(got, list) or len(got) != steps:
        problem = f"{describe(got)} where a list of {steps} losses (one per optimizer step) was expected"
    else:
        problem = error_report(torch.tensor(got, dtype=DT), torch.tensor(want, dtype=DT), 1e-4, 1e-5)
    losses_differ = problem is not None
    if problem is None:
        # the trained model, by its outputs: Adam turns float noise in gradients that are exactly 0 in theory (the
        # key biases) into full-size steps, which change no output
        probe = torch.tensor([[1, 40, 41, 280, 3, 9, 77, 120]])
        with torch.no_grad():
            got_logits, want_logits = got_model.eval()(probe).logits, want_model.eval()(probe).logits
        problem = error_report(got_logits, want_logits, 1e-3, 1e-4)
        if problem is not None:
            problem = f"the model passed in, after training, gives other logits on a probe batch: {problem}"
    if problem is not None:
        cause = None if not losses_differ else _cause(
            "fine_tune", lambda f: _run_fine_tune(_Module(fine_tune=f), ft_start, ref_tok, tmp_path / "cause",
                                                  **kwargs)[1],
            lambda losses: isinstance(got, list) and len(losses) == len(got)
            and all(abs(a - b) <= 1e-5 + 1e-4 * abs(b) for a, b in zip(losses, got, strict=True)))
        _fail(f"{call} on {len(FT_TEXTS)} texts", f"losses {got!r:.300}", f"losses {want!r:.300}; {problem}",
              "the docstring fixes the training exactly: CausalLMDataset(texts, tok, max_length), TrainingArguments("
              "num_train_epochs, per_device_train_batch_size, learning_rate, seed, logging_steps=1, ...), and the "
              "model passed in is the one trained.", cause)


class _Module:
    """A stand-in module holding one function, for likely_cause runs of a catalogued fine_tune."""

    def __init__(self, **functions):
        self.__dict__.update(functions)


@pytest.mark.exercise("fine_tune")
def test_fine_tune_saves_a_checkpoint_that_reloads(impl, fine_tuned, ft_start, ref_tok):
    from transformers import AutoTokenizer
    from transformers.models.gpt2 import GPT2LMHeadModel

    model, _, folder = fine_tuned(impl)
    changed = any(not torch.equal(p, q) for p, q in zip(model.parameters(), ft_start.parameters(), strict=True))
    assert changed, "Called fine_tune(model, ...). The model's weights did not change.\nBecause it trains in place."
    saved = sorted(p.name for p in folder.iterdir())
    assert "config.json" in saved and "model.safetensors" in saved and "tokenizer.json" in saved, (
        f"Called fine_tune(model, tok, texts, output_dir). output_dir then holds {saved}; expected at least "
        "config.json, model.safetensors and tokenizer.json.\nBecause trainer.save_model() saves the model, and with "
        "processing_class=tokenizer the tokenizer too, into output_dir."
    )
    loaded = GPT2LMHeadModel.from_pretrained(folder).eval()
    ids = torch.tensor([[1, 40, 41, 280, 3, 0]])
    with torch.no_grad():
        want, got = model.eval()(ids).logits, loaded(ids).logits
    assert_close(got, want, call="GPT2LMHeadModel.from_pretrained(output_dir)(ids) after fine_tune(model, ...)",
                 because="trainer.save_model() writes the trained weights to output_dir.", rtol=0, atol=0)
    tok = AutoTokenizer.from_pretrained(folder)
    assert tok(FT_TEXTS[0]).input_ids == ref_tok(FT_TEXTS[0]).input_ids and tok.pad_token_id == 0, (
        "Called fine_tune(model, tok, texts, output_dir), then AutoTokenizer.from_pretrained(output_dir). It did not "
        f"give back the tokenizer passed in (pad token {tok.pad_token!r}, id {tok.pad_token_id}; expected '<pad>', "
        "id 0).\nBecause Trainer(processing_class=tokenizer) makes save_model() save it too, as it is: fine_tune "
        "does not change the tokenizer (no pad_token = eos_token: it already has its own pad token)."
    )


@pytest.mark.exercise("fine_tune")
def test_fine_tune_seed_changes_the_run(impl, fine_tuned):
    # the default seed is 0: the replay of the defaults holds the learner to that
    _, default, _ = fine_tuned(impl)
    _, one, _ = fine_tuned(impl, seed=1)
    assert default != one, (
        f"Called fine_tune(...) without a seed and with seed=1. Both returned {default!r:.120}; expected different "
        "losses.\nBecause the seed (default 0) decides the order in which Trainer shuffles the texts: pass it to "
        "TrainingArguments(seed=...)."
    )


@pytest.mark.exercise("fine_tune")
@pytest.mark.parametrize("learning_rate", [None, 2e-3])
def test_fine_tune_first_step_moves_weights_by_the_learning_rate(impl, fine_tuned, ft_start, learning_rate):
    kwargs = {"batch_size": len(FT_TEXTS)} | ({} if learning_rate is None else {"learning_rate": learning_rate})
    lr = 5e-4 if learning_rate is None else learning_rate
    model, losses, _ = fine_tuned(impl, **kwargs)
    # AdamW's first step moves every weight by lr * g / (|g| + eps): by lr exactly where the gradient is not tiny
    # (the default weight decay is 0, and clipping scales g, which this ratio ignores)
    moved = max((p.detach() - q).abs().max().item() for p, q in zip(model.parameters(), ft_start.parameters(),
                                                                   strict=True))
    call = f"fine_tune(model, tok, texts, folder{''.join(f', {k}={v!r}' for k, v in kwargs.items())})"
    assert len(losses) == 1 and abs(moved - lr) <= 1e-3 * lr, (
        f"Called {call} on {len(FT_TEXTS)} texts. It made {len(losses)} optimizer step(s) and moved the weights by "
        f"at most {moved:.6g}; expected 1 step moving them by at most learning_rate = {lr:g}.\nBecause one batch "
        "holds every text, and AdamW's first step moves each weight by the learning rate (default 5e-4) times "
        "g / (|g| + eps), which is 1 in size for every weight whose gradient is not tiny; Trainer's default weight "
        "decay of 0 adds nothing to that."
    )


@pytest.mark.exercise("fine_tune")
def test_fine_tune_loss_goes_down(impl, fine_tuned):
    _, losses, _ = fine_tuned(impl, epochs=5, batch_size=7, learning_rate=1e-2)
    first, last = losses[0], sum(losses[-3:]) / 3
    assert last < first - 0.5, (
        f"Called fine_tune(model, tok, texts, folder, epochs=5, batch_size=7, learning_rate=1e-2). Returned losses "
        f"from {first:.3f} down to {last:.3f} (mean of the last three); expected a drop of more than 0.5.\nBecause "
        "5 full passes over 7 short texts at a high learning rate let a tiny model start memorising them."
    )


# --------------------------------------------------------------------------------------------------
# LoRALinear


def _peft_lora(base, lora, r, alpha, dropout=0.0):
    """peft's LoRA layer around a copy of ``base``, holding the same A and B as ``lora``."""
    from peft import LoraConfig
    from peft.tuners.lora import Linear as PeftLinear

    theirs = PeftLinear(copy.deepcopy(base), "default", config=LoraConfig(r=r, lora_alpha=alpha), r=r,
                        lora_alpha=alpha, lora_dropout=dropout)
    with torch.no_grad():
        theirs.lora_A["default"].weight.copy_(lora.lora_A)
        theirs.lora_B["default"].weight.copy_(lora.lora_B)
    return theirs


def _base(seed: int, n_in: int, n_out: int, dtype=DT, bias: bool = True) -> torch.nn.Linear:
    with seeded(seed):
        return torch.nn.Linear(n_in, n_out, bias=bias, dtype=dtype)


def _lora(impl, base, r, alpha, **kwargs):
    lora = impl.LoRALinear(base, r, alpha, **kwargs)
    for name in ("lora_A", "lora_B"):
        p = getattr(lora, name, None)
        assert isinstance(p, torch.nn.Parameter), (
            f"Called LoRALinear(nn.Linear({base.in_features}, {base.out_features}), r={r}, alpha={alpha}). It has no "
            f"nn.Parameter `{name}` (found {describe(p)}).\nBecause the checks (and peft) find the adapter by "
            "these names: lora_A (r, in) and lora_B (out, r)."
        )
    return lora


@pytest.mark.exercise("LoRALinear")
@pytest.mark.parametrize("n_in, n_out, r, alpha, dtype",
                         [(6, 4, 2, 3.0, DT), (5, 7, 1, 16, DT), (8, 3, 3, 3, torch.float32)])
def test_lora_structure_and_initialisation(impl, n_in, n_out, r, alpha, dtype):
    base = _base(1, n_in, n_out, dtype)
    pristine = copy.deepcopy(base)
    lora = _lora(impl, base, r, alpha)
    call = f"LoRALinear(nn.Linear({n_in}, {n_out}, dtype={dtype}), r={r}, alpha={alpha})"
    trainable = {n: (tuple(p.shape), p.dtype) for n, p in lora.named_parameters() if p.requires_grad}
    want = {"lora_A": ((r, n_in), dtype), "lora_B": ((n_out, r), dtype)}
    if trainable != want:
        cause = _cause("LoRALinear", lambda cls: cls(copy.deepcopy(pristine), r, alpha),
                       lambda m: {n: (tuple(p.shape), p.dtype) for n, p in m.named_parameters() if p.requires_grad}
                       == trainable)
        _fail(call, f"trainable parameters {trainable}", f"exactly {want}",
              "only the adapter trains: the base layer is frozen (requires_grad=False), A is (r, in), B is (out, r), "
              "in the base layer's dtype.", cause)
    assert lora.base is base and torch.equal(base.weight, pristine.weight), (
        f"Called {call}. self.base is not the layer passed in, or its weight changed.\nBecause LoRA wraps the "
        "pre-trained layer itself and leaves its weight alone until merge()."
    )
    assert lora.scaling == alpha / r and lora.merged is False, (
        f"Called {call}. scaling = {lora.scaling!r}, merged = {lora.merged!r}; expected alpha / r = {alpha / r!r} and "
        "False.\nBecause dividing by r keeps the update's size when you change the rank."
    )
    assert torch.count_nonzero(lora.lora_B) == 0, (
        f"Called {call}. lora_B = {describe(lora.lora_B)}; expected zeros.\nBecause with B = 0 the wrapped layer "
        "starts out exactly as the pre-trained one."
    )
    x = torch.randn(3, n_in, generator=generator(2), dtype=dtype)
    with torch.no_grad():
        assert_close(lora(x), pristine(x), call=f"{call}(x) right after construction", rtol=0, atol=0,
                     because="B = 0 makes the update zero.")


@pytest.mark.exercise("LoRALinear")
def test_lora_a_follows_kaiming_uniform(impl):
    n_in, r = 400, 50
    with seeded(4):
        lora = _lora(impl, _base(3, n_in, 2), r, 8)
    A = lora.lora_A.detach()
    bound = 1 / math.sqrt(n_in)  # kaiming_uniform_(a=sqrt(5)): gain sqrt(1/3) * sqrt(3 / fan_in)
    std, mean = A.std().item(), A.mean().item()
    # 20,000 draws: the std is within 2% (4 standard errors) and the largest |a| within 1% of the bound
    ok = (0.99 * bound <= A.abs().max().item() <= bound and abs(std * math.sqrt(3) / bound - 1) < 0.02
          and abs(mean) < 0.02 * bound)
    assert ok, (
        f"Called LoRALinear(nn.Linear({n_in}, 2), r={r}, alpha=8). lora_A has max |a| {A.abs().max().item():.4g}, "
        f"std {std:.4g}, mean {mean:.3g}; expected uniform on [-{bound:.4g}, {bound:.4g}] "
        f"(std {bound / math.sqrt(3):.4g}, mean 0).\nBecause A is initialised like nn.Linear and peft do: "
        "kaiming_uniform_(A, a=math.sqrt(5))."
    )


# (n_in, n_out, r, alpha, leading dims of x, whether the base layer has a bias)
LORA_CASES = [(6, 4, 2, 3.0, (5,), True), (5, 7, 1, 16, (2, 3), True), (8, 3, 3, 3, (), False),
              (4, 4, 2, 1.5, (0,), True)]


@pytest.mark.exercise("LoRALinear")
@pytest.mark.parametrize("n_in, n_out, r, alpha, lead, bias", LORA_CASES)
def test_lora_equals_peft_forward_backward_and_merge(impl, n_in, n_out, r, alpha, lead, bias):
    base = _base(5, n_in, n_out, bias=bias)
    lora = _lora(impl, copy.deepcopy(base), r, alpha)
    with torch.no_grad():
        lora.lora_B.copy_(torch.randn(n_out, r, generator=generator(6), dtype=DT))
        lora.lora_A.copy_(torch.randn(r, n_in, generator=generator(7), dtype=DT))
    theirs = _peft_lora(base, lora, r, alpha)
    x = torch.randn(*lead, 2 * n_in, generator=generator(8), dtype=DT)[..., ::2]  # a strided view
    x_before = x.clone()
    call = (f"LoRALinear(nn.Linear({n_in}, {n_out}{'' if bias else ', bias=False'}), r={r}, alpha={alpha})(x) with x "
            f"of shape {tuple(x.shape)}")
    got, want = lora(x), theirs(x)
    cause = None if error_report(got, want, **TIGHT) is None else _cause(
        "LoRALinear", lambda cls: _with_ab(cls(copy.deepcopy(base), r, alpha), lora)(x),
        lambda out: out.shape == got.shape and torch.allclose(out, got, rtol=1e-7, atol=1e-10))
    assert_close(got, want, call=call, because="LoRA computes base(x) + (alpha / r) * x @ A.T @ B.T, as peft does.",
                 cause=cause, **TIGHT)
    assert torch.equal(x, x_before), f"Called {call}. It modified x in place."
    if got.numel():
        got.pow(2).sum().backward()
        want.pow(2).sum().backward()
        for name, mine, peft_p in (("lora_A", lora.lora_A, theirs.lora_A["default"].weight),
                                   ("lora_B", lora.lora_B, theirs.lora_B["default"].weight)):
            assert_close(mine.grad, peft_p.grad, call=f"{call}.pow(2).sum().backward(): {name}.grad",
                         because="the same function has the same gradient.", **TIGHT)
    # merge: the update moves into the base weight, the output stays; unmerge moves it out again
    for step in ("merge", "merge", "unmerge", "unmerge", "merge"):
        getattr(lora, step)()
        getattr(theirs, step)() if (step == "merge") != bool(theirs.merged) else None
        with torch.no_grad():
            assert_close(lora.base.weight, theirs.base_layer.weight, call=f"lora.{step}(), then lora.base.weight",
                         because="merge() adds (alpha / r) * B @ A to the base weight once (a second merge changes "
                         "nothing) and unmerge() subtracts it once.", cause=_cause(
                             "LoRALinear", lambda cls: _merged_weight(cls, base, lora, r, alpha),
                             lambda w, m=lora: torch.allclose(w, m.base.weight, atol=1e-10),
                         ) if step == "merge" else None,
                         **TIGHT)
            assert_close(lora(x), theirs(x), call=f"lora.{step}(), then {call}", because="merged or not, "
                         "the layer computes the same function.", **TIGHT)
        assert lora.merged == (step == "merge") and not lora.base.weight.requires_grad, (
            f"Called lora.{step}(). merged = {lora.merged}, base.weight.requires_grad = "
            f"{lora.base.weight.requires_grad}; expected {step == 'merge'} and False."
        )
    with torch.no_grad():  # merged: forward must not add the update a second time, nor read B
        lora.lora_B.zero_()
        assert_close(lora(x), theirs(x), call=f"lora.merge(), lora.lora_B.zero_(), then {call}",
                     because="a merged layer already holds the update in base.weight: forward is base(x) alone.",
                     **TIGHT)


def _with_ab(module, like):
    with torch.no_grad():
        module.lora_A.copy_(like.lora_A)
        module.lora_B.copy_(like.lora_B)
    return module


def _merged_weight(cls, base, like, r, alpha):
    module = _with_ab(cls(copy.deepcopy(base), r, alpha), like)
    module.merge()
    return module.base.weight.detach()


@pytest.mark.exercise("LoRALinear")
def test_lora_dropout_acts_on_the_adapter_input_only(impl, reference):
    base = _base(9, 6, 5)
    x = torch.randn(40, 6, generator=generator(10), dtype=DT)

    def run(module_cls, train: bool):
        lora = module_cls(copy.deepcopy(base), 2, 4.0, dropout=0.5)
        with torch.no_grad():
            lora.lora_B.copy_(torch.randn(5, 2, generator=generator(11), dtype=DT))
            lora.lora_A.copy_(torch.randn(2, 6, generator=generator(12), dtype=DT))
        lora.train(train)
        with seeded(13), torch.no_grad():
            return lora(x)

    x_before = x.clone()
    for train in (True, False):
        got = run(impl.LoRALinear, train)
        assert torch.equal(x, x_before), (
            f"Called LoRALinear(nn.Linear(6, 5), r=2, alpha=4.0, dropout=0.5)(x) in {'train' if train else 'eval'} "
            "mode. It changed x in place.\nBecause the caller's input is only read: nn.Dropout(dropout), not "
            "inplace=True, returns a new tensor."
        )
        want = run(reference.LoRALinear, train)
        cause = _cause("LoRALinear", lambda cls, t=train: run(cls, t), lambda out, g=got: torch.allclose(out, g))
        assert_close(got, want, call=f"LoRALinear(nn.Linear(6, 5), r=2, alpha=4.0, dropout=0.5)(x) in "
                     f"{'train' if train else 'eval'} mode, under torch.manual_seed(13)",
                     because="self.dropout = nn.Dropout(dropout) is applied once, to the adapter's input: "
                     "base(x) + dropout(x) @ A.T @ B.T * scaling; in eval mode it does nothing.", cause=cause, **TIGHT)


@pytest.mark.exercise("LoRALinear")
def test_lora_on_the_meta_device(impl):
    base = torch.nn.Linear(6, 4, device="meta")
    lora = impl.LoRALinear(base, 2, 2.0)
    out = lora(torch.empty(3, 6, device="meta"))
    assert lora.lora_A.device.type == "meta" and lora.lora_B.device.type == "meta" and out.shape == (3, 4), (
        f"Called LoRALinear(nn.Linear(6, 4, device='meta'), r=2, alpha=2.0). A on {lora.lora_A.device}, B on "
        f"{lora.lora_B.device}, output shape {tuple(out.shape)}; expected meta, meta, (3, 4).\nBecause A and B "
        "live where the base weight lives."
    )


@pytest.mark.exercise("LoRALinear")
@pytest.mark.parametrize("r", [0, -1, True, 2.0])
def test_lora_rejects_bad_rank(impl, r):
    with pytest.raises(ValueError) as info:
        impl.LoRALinear(torch.nn.Linear(4, 4), r, 8)
    assert repr(r) in str(info.value) or str(r) in str(info.value), (
        f"Called LoRALinear(nn.Linear(4, 4), r={r!r}, alpha=8). It raised ValueError({str(info.value)!r}); "
        f"expected a message naming {r!r}."
    )


# --------------------------------------------------------------------------------------------------
# setup_lora_model


@pytest.fixture(scope="module")
def small_lm(reference, ref_tok):
    """A reference tiny GPT-2 in float64 with perturbed weights, in eval mode: copies go to peft."""
    model = reference.build_tiny_causal_lm(ref_tok, n_layer=2, n_embd=16, n_head=2, n_positions=32)
    return _perturb_(model, 23, scale=0.4)


IDS = torch.tensor([[1, 40, 41, 280, 3, 9, 77, 120], [5, 6, 7, 8, 9, 0, 0, 0]])
MASK = torch.tensor([[1] * 8, [1] * 5 + [0] * 3])

# (r, alpha, dropout, target_modules) and the in/out sizes of each targeted layer per block, for E = 16
LORA_MODEL_CASES = [
    (None, None, None, None, [(16, 48)]),
    (4, 8, 0.0, None, [(16, 48)]),
    (2, 5, 0.25, ["c_attn", "c_proj"], [(16, 48), (16, 16), (64, 16)]),
    (3, 3, 0.0, ["c_fc"], [(16, 64)]),
    (1, 2, 0.0, None, [(16, 48)]),
]


def _lora_model_call(r, alpha, dropout, targets):
    given = {k: v for k, v in (("r", r), ("alpha", alpha), ("dropout", dropout), ("target_modules", targets))
             if v is not None}
    return f"setup_lora_model(model{''.join(f', {k}={v!r}' for k, v in given.items())})"


def _setup(module, base, r, alpha, dropout, targets, copy_first=True):
    given = {k: v for k, v in (("r", r), ("alpha", alpha), ("dropout", dropout), ("target_modules", targets))
             if v is not None}
    return module.setup_lora_model(copy.deepcopy(base) if copy_first else base, **given)


@pytest.mark.exercise("setup_lora_model")
@pytest.mark.parametrize("r, alpha, dropout, targets, sizes", LORA_MODEL_CASES)
def test_lora_model_trains_only_the_adapters(impl, small_lm, r, alpha, dropout, targets, sizes):
    from peft import PeftModelForCausalLM
    from peft.tuners.lora import LoraLayer

    call = _lora_model_call(r, alpha, dropout, targets)
    passed = copy.deepcopy(small_lm)
    model = _setup(impl, passed, r, alpha, dropout, targets, copy_first=False)
    assert isinstance(model, PeftModelForCausalLM), (
        f"Called {call}. Returned {type(model).__name__}; expected a peft PeftModelForCausalLM.\nBecause "
        "LoraConfig(task_type=TaskType.CAUSAL_LM) makes get_peft_model return the causal-LM wrapper."
    )
    assert model.get_base_model() is passed, (
        f"Called {call}. The returned wrapper holds another model than the one passed in.\nBecause get_peft_model "
        "adds the adapters to the model it is given, in place (no copy): the caller's model is the one that trains."
    )
    rank, a, p = 8 if r is None else r, 32 if alpha is None else alpha, 0.1 if dropout is None else dropout
    trainable = {n: p.numel() for n, p in model.named_parameters() if p.requires_grad}
    count = sum(trainable.values())
    expected = small_lm.config.n_layer * sum(rank * (n_in + n_out) for n_in, n_out in sizes)
    layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
    found = sorted({(m.in_features, m.out_features) for m in layers})
    settings_seen = {(m.r["default"], m.scaling["default"], getattr(m.lora_dropout["default"], "p", 0.0))
                     for m in layers}
    ok = (count == expected and all("lora_" in n for n in trainable) and found == sorted(set(sizes))
          and settings_seen == {(rank, a / rank, p)})
    if not ok:
        cause = _cause("setup_lora_model", lambda f: _setup(_Module(setup_lora_model=f), small_lm, r, alpha, dropout,
                                                            targets),
                       lambda m: sum(q.numel() for q in m.parameters() if q.requires_grad) == count and {
                           (x.r["default"], x.scaling["default"], getattr(x.lora_dropout["default"], "p", 0.0))
                           for x in m.modules() if isinstance(x, LoraLayer)} == settings_seen)
        _fail(call, f"{count} trainable parameters ({sorted(trainable)[:4]}...), LoRA layers of (in, out) {found} "
              f"with (r, scaling, dropout) {settings_seen}",
              f"n_layer * sum of r * (in + out) = {expected} trainable parameters, all lora_A / lora_B, on layers "
              f"{sorted(set(sizes))} with (r, scaling, dropout) {{({rank}, {a / rank}, {p})}}",
              "LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules or "
              "['c_attn'], ...) puts one adapter on each targeted layer and freezes everything else.", cause)


@pytest.mark.exercise("setup_lora_model")
def test_lora_model_starts_equal_and_merges_like_lora_linear(impl, reference, small_lm):
    model = _setup(impl, small_lm, 4, 6, 0.0, None).eval()
    with torch.no_grad():
        assert_close(model(input_ids=IDS, attention_mask=MASK).logits,
                     small_lm(input_ids=IDS, attention_mask=MASK).logits,
                     call="setup_lora_model(model, r=4, alpha=6, dropout=0.0)(ids).logits right after the call",
                     because="lora_B starts at zero, so the adapted model equals the base model.", **TIGHT)
    from peft.tuners.lora import LoraLayer

    gen = generator(24)
    expected = {}
    for name, layer in model.named_modules():
        if isinstance(layer, LoraLayer):
            with torch.no_grad():
                layer.lora_B["default"].weight.copy_(torch.randn(layer.lora_B["default"].weight.shape,
                                                                 generator=gen, dtype=DT))
            W, b = layer.get_base_layer().weight.detach(), layer.get_base_layer().bias.detach()  # Conv1D: (in, out)
            linear = torch.nn.Linear(W.shape[0], W.shape[1], dtype=DT)
            with torch.no_grad():
                linear.weight.copy_(W.T)
                linear.bias.copy_(b)
            mine = reference.LoRALinear(linear, 4, 6)
            _with_ab(mine, _ab_of(layer))
            mine.merge()
            expected[name] = mine.base.weight.detach().T.clone()
    with torch.no_grad():
        adapted = model(input_ids=IDS, attention_mask=MASK).logits
    merged = model.merge_and_unload()
    modules = dict(merged.named_modules())
    for name, weight in expected.items():
        plain = name.removeprefix("base_model.model.")
        assert_close(modules[plain].weight.detach(), weight,
                     call=f"setup_lora_model(model, r=4, alpha=6, dropout=0.0).merge_and_unload(): {plain}.weight",
                     because="merging folds (alpha / r) * (B @ A) into the weight, transposed for GPT-2's Conv1D: "
                     "the merged LoRALinear's weight, transposed.", **TIGHT)
    with torch.no_grad():
        assert_close(merged(input_ids=IDS, attention_mask=MASK).logits, adapted,
                     call="merge_and_unload()(ids).logits", because="merging does not change the function.", **TIGHT)


def _ab_of(layer):
    """lora_A / lora_B of a peft layer under the names LoRALinear uses."""
    class _AB:
        lora_A = layer.lora_A["default"].weight
        lora_B = layer.lora_B["default"].weight
    return _AB


@pytest.mark.exercise("setup_lora_model")
@pytest.mark.parametrize("r", [0, -2, True, 2.0])
def test_lora_model_rejects_bad_rank(impl, small_lm, r):
    with pytest.raises((ValueError, TypeError)) as info:  # a TypeError is reported below, with what was expected
        impl.setup_lora_model(copy.deepcopy(small_lm), r=r)
    assert info.type is ValueError, (
        f"Called setup_lora_model(model, r={r!r}). It raised {info.type.__name__}({str(info.value)!r:.200}); expected "
        "a ValueError.\nBecause r must be a positive int (a bool or a float is not one): check it yourself before "
        "building the LoraConfig, rather than leaving it to peft."
    )


# --------------------------------------------------------------------------------------------------
# PromptTuning


def _peft_prompt(base, prompt):
    from peft import PromptTuningConfig, TaskType, get_peft_model

    theirs = get_peft_model(copy.deepcopy(base), PromptTuningConfig(task_type=TaskType.CAUSAL_LM,
                                                                     num_virtual_tokens=prompt.shape[0]))
    theirs.prompt_encoder.to(DT)
    with torch.no_grad():
        theirs.prompt_encoder["default"].embedding.weight.copy_(prompt)
    return theirs.eval()


@pytest.mark.exercise("PromptTuning")
@pytest.mark.parametrize("P", [1, 3])
def test_prompt_tuning_structure(impl, small_lm, P):
    base = copy.deepcopy(small_lm)
    pt = impl.PromptTuning(base, P)
    call = f"PromptTuning(model, num_virtual_tokens={P})"
    trainable = {n: (tuple(p.shape), p.dtype) for n, p in pt.named_parameters() if p.requires_grad}
    want = {"prompt": ((P, 16), DT)}
    if trainable != want:
        cause = _cause("PromptTuning", lambda cls: cls(copy.deepcopy(small_lm), P),
                       lambda m: {n: (tuple(p.shape), p.dtype) for n, p in m.named_parameters() if p.requires_grad}
                       == trainable)
        _fail(call, f"trainable parameters {trainable}", f"exactly {want}", "the model is frozen and only the "
              "soft prompt trains: one (P, E) parameter in the dtype of the model's embeddings.", cause)
    assert pt.model is base and pt.num_virtual_tokens == P, (
        f"Called {call}. self.model is not the model passed in, or num_virtual_tokens = {pt.num_virtual_tokens!r}."
    )
    unchanged = all(torch.equal(p, q) for p, q in zip(base.parameters(), small_lm.parameters(), strict=True))
    assert unchanged, f"Called {call}. It changed the model's weights.\nBecause prompt tuning never changes them."


@pytest.mark.exercise("PromptTuning")
def test_prompt_tuning_initial_scale(impl, small_lm):
    model = copy.deepcopy(small_lm)
    model.config.initializer_range = target = 0.05  # not GPT-2's 0.02: the scale is read from the config
    with seeded(31):
        pt = impl.PromptTuning(model, 100)
    prompt = pt.prompt.detach()
    std, mean = prompt.std().item(), prompt.mean().item()
    assert abs(std - target) < 0.1 * target and abs(mean) < 0.15 * target, (
        f"Called PromptTuning(model with config.initializer_range = {target}, num_virtual_tokens=100). The prompt "
        f"has std {std:.4g} and mean {mean:.3g}; "
        f"expected std {target} (model.config.initializer_range) and mean 0.\nBecause it starts at the scale of the "
        "model's own embeddings: torch.randn(P, E) * initializer_range."
    )


@pytest.mark.exercise("PromptTuning")
@pytest.mark.parametrize("P", [1, 4])
@pytest.mark.parametrize("given", ["ids", "mask_and_labels", "labels"])
def test_prompt_tuning_equals_peft(impl, small_lm, P, given):
    pt = impl.PromptTuning(copy.deepcopy(small_lm), P).eval()
    with torch.no_grad():
        pt.prompt.copy_(torch.randn(P, 16, generator=generator(P), dtype=DT) * 0.5)
    theirs = _peft_prompt(small_lm, pt.prompt.detach())
    kwargs = {"input_ids": IDS.clone()}
    if given == "mask_and_labels":
        kwargs.update(attention_mask=MASK.clone(), labels=IDS.masked_fill(MASK == 0, -100).clone())
    elif given == "labels":  # no attention_mask: every token is real, and each has its label
        kwargs.update(labels=IDS.clone())
    with_labels = "labels" in kwargs
    pristine = copy.deepcopy(kwargs)
    call = f"PromptTuning(model, num_virtual_tokens={P})({', '.join(f'{k}={describe(v)}' for k, v in kwargs.items())})"
    try:
        got = pt(**kwargs)
    except (ValueError, RuntimeError) as err:  # lengths that do not fit together, found by the model
        _fail(call, f"nothing: it raised {type(err).__name__}({str(err)!r:.200})", "the model's output for all P + T "
              "positions", "the prompt's P positions go in front of everything that has a length: the embeddings, "
              "the attention mask (P ones, made of all ones when none is given) and the labels (P times -100, "
              "whether or not a mask is given).")
    want = theirs(**copy.deepcopy(pristine))
    for k, v in pristine.items():
        assert torch.equal(kwargs[k], v), f"Called {call}. It modified its argument `{k}` in place."
    assert isinstance(getattr(got, "logits", None), torch.Tensor), (
        f"Called {call}. Returned {describe(got)}; expected the model's own output, with .logits"
        f"{' and .loss' if with_labels else ''}.\nBecause forward returns self.model(inputs_embeds=..., "
        "attention_mask=..., labels=...) as it is."
    )
    cause = None if error_report(got.logits, want.logits, **TIGHT) is None else _cause(
        "PromptTuning", lambda cls: _with_prompt(cls(copy.deepcopy(small_lm), P), pt.prompt)(
            **copy.deepcopy(pristine)).logits, lambda out: out.shape == got.logits.shape
        and torch.allclose(out, got.logits, atol=1e-10))
    assert_close(got.logits, want.logits, call=call + ".logits", cause=cause, because="the prompt goes in FRONT of "
                 "the token embeddings, every position may attend to it, and the logits keep all P + T positions, "
                 "as peft's prompt tuning does.", **TIGHT)
    if with_labels:
        lcause = None if error_report(got.loss, want.loss, **TIGHT) is None else _cause(
            "PromptTuning", lambda cls: _with_prompt(cls(copy.deepcopy(small_lm), P), pt.prompt)(
                **copy.deepcopy(pristine)).loss, lambda loss: torch.allclose(loss, got.loss, atol=1e-10))
        assert_close(got.loss, want.loss, call=call + ".loss", cause=lcause, because="the P prompt positions get "
                     "label -100, so the loss covers exactly the real tokens' labels.", **TIGHT)
        got.loss.backward()
        want.loss.backward()
        assert_close(pt.prompt.grad, theirs.prompt_encoder["default"].embedding.weight.grad,
                     call=call + ".loss.backward(): prompt.grad", because="the same loss has the same gradient.",
                     **TIGHT)
        grads = [n for n, p in pt.model.named_parameters() if p.grad is not None]
        assert not grads, f"Called {call}.loss.backward(). The frozen model got gradients in {grads[:3]}."


def _with_prompt(module, prompt):
    with torch.no_grad():
        module.prompt.copy_(prompt)
    return module.eval()


@pytest.mark.exercise("PromptTuning")
@pytest.mark.parametrize("P", [0, True, 2.0])
def test_prompt_tuning_rejects_bad_sizes(impl, small_lm, P):
    with pytest.raises(ValueError):
        impl.PromptTuning(copy.deepcopy(small_lm), P)


@pytest.mark.exercise("PromptTuning")
def test_prompt_tuning_on_the_meta_device(impl, small_lm):
    model = copy.deepcopy(small_lm).to("meta")  # GPT-2's forward needs values (its mask): construction only
    pt = impl.PromptTuning(model, 2)
    assert pt.prompt.device.type == "meta" and pt.prompt.dtype == DT, (
        f"Called PromptTuning(model on the meta device, num_virtual_tokens=2). The prompt is on {pt.prompt.device} "
        f"with dtype {pt.prompt.dtype}; expected meta and {DT}.\nBecause the prompt lives where the model's "
        "embeddings live, in their dtype."
    )
