"""Catalogued mistakes and correct variants for w19_pretrained.

``@mutant`` entries are one-token slips in the reference's own code; functions and subclasses are mistakes
written out; ``@variant`` entries are correct implementations in another style that every check must accept.
"""

from __future__ import annotations

import torch

from checks.harness.catalogue import mistake, mutant, variant
from reference.phase3.w19_pretrained import (
    EOS_TOKEN,
    PAD_TOKEN,
    CausalLMDataset,
    PromptTuning,
    _is_int,
    _texts,
    build_tiny_causal_lm,
    train_hf_tokenizer,
)

# --------------------------------------------------------------------------------------------------
# train_hf_tokenizer


@mistake("train_hf_tokenizer",
         "the tokenizer has no pad token (the learning path's tokenizer had none): padding to a length fails")
def tok_no_pad_token(texts, vocab_size):
    from transformers import PreTrainedTokenizerFast

    tok = train_hf_tokenizer(texts, vocab_size)
    return PreTrainedTokenizerFast(tokenizer_object=tok.backend_tokenizer, eos_token=EOS_TOKEN, bos_token=EOS_TOKEN,
                                   padding_side="right")


@mistake("train_hf_tokenizer",
         "pad_token = eos_token: padding and a real end of text share id 1, so they cannot be told apart")
def tok_pad_is_eos(texts, vocab_size):
    tok = train_hf_tokenizer(texts, vocab_size)
    tok.pad_token = tok.eos_token
    return tok


@mistake("train_hf_tokenizer",
         "a whitespace pre-tokenizer with an unknown token instead of byte level: unseen characters and the exact "
         "spaces are lost")
def tok_not_byte_level(texts, vocab_size):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = _texts(texts, "texts")
    if not _is_int(vocab_size) or vocab_size < 258:
        raise ValueError(f"vocab_size too small: {vocab_size!r}")
    tok = Tokenizer(models.BPE(unk_token=EOS_TOKEN))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.BPEDecoder()
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[PAD_TOKEN, EOS_TOKEN],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                       show_progress=False))
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD_TOKEN, eos_token=EOS_TOKEN,
                                   bos_token=EOS_TOKEN, padding_side="right")


@mutant("train_hf_tokenizer",
        "no initial alphabet: bytes that never occur in the texts have no token, so such characters are dropped",
        replace={"        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),": ""})
def tok_no_initial_alphabet(): ...


@mutant("train_hf_tokenizer",
        "the special tokens are not given to the trainer: the wrapper appends them after the learned tokens, so "
        "their ids are not 0 and 1 and the vocabulary is too large",
        replace={"special_tokens=[PAD_TOKEN, EOS_TOKEN],": "special_tokens=[],"})
def tok_specials_not_trained(): ...


@mutant("train_hf_tokenizer", "the special tokens are given in the wrong order: <|endoftext|> gets id 0",
        replace={"special_tokens=[PAD_TOKEN, EOS_TOKEN],": "special_tokens=[EOS_TOKEN, PAD_TOKEN],"})
def tok_specials_swapped(): ...


@mutant("train_hf_tokenizer", "vocab_size is ignored: the trainer uses a fixed size",
        replace={"        vocab_size=vocab_size,": "        vocab_size=1000,"})
def tok_vocab_size_ignored(): ...


@mutant("train_hf_tokenizer", "add_prefix_space=True: every decoded text starts with an extra space",
        replace={"ByteLevel(add_prefix_space=False)": "ByteLevel(add_prefix_space=True)"})
def tok_prefix_space(): ...


@mutant("train_hf_tokenizer", "no ByteLevel decoder: decoded text shows the byte symbols (Ġ for a space)",
        replace={"    tokenizer.decoder = decoders.ByteLevel()\n": ""})
def tok_no_decoder(): ...


@mutant("train_hf_tokenizer", "padding goes on the left, not on the right as documented",
        replace={'padding_side="right"': 'padding_side="left"'})
def tok_left_padding(): ...


@mistake("train_hf_tokenizer", "a single string is accepted and trained on character by character")
def tok_accepts_a_string(texts, vocab_size):
    return train_hf_tokenizer(list(texts) if isinstance(texts, str) else texts, vocab_size)


@mutant("train_hf_tokenizer", "vocab_size below 258 is accepted, though it cannot hold the bytes and the two "
        "special tokens", replace={"vocab_size < BYTE_ALPHABET + 2:": "vocab_size < BYTE_ALPHABET:"})
def tok_accepts_tiny_vocab(): ...


@variant("train_hf_tokenizer", "tokenizers' ready-made ByteLevelBPETokenizer, wrapped through its backend tokenizer")
def tok_bytelevel_bpe_class(texts, vocab_size):
    from tokenizers.implementations import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    if isinstance(texts, str) or not texts or any(not isinstance(t, str) for t in texts):
        raise ValueError(f"texts must be a non-empty list of strings: {texts!r:.60}")
    if type(vocab_size) is not int or vocab_size < 258:
        raise ValueError(f"vocab_size must be an int >= 258, got {vocab_size!r}")
    bpe = ByteLevelBPETokenizer(add_prefix_space=False)
    bpe.train_from_iterator(list(texts), vocab_size=vocab_size, min_frequency=2,
                            special_tokens=["<pad>", "<|endoftext|>"], show_progress=False)
    return PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, pad_token="<pad>", eos_token="<|endoftext|>",
                                   bos_token="<|endoftext|>", padding_side="right")


@mutant("train_hf_tokenizer", "an NFKC normalizer: compatibility characters such as 'ﬁ' or '①' come back as 'fi' "
        "or '1'", replace={"    tokenizer.decoder = decoders.ByteLevel()\n":
                           "    tokenizer.decoder = decoders.ByteLevel()\n"
                           "    tokenizer.normalizer = __import__('tokenizers').normalizers.NFKC()\n"})
def tok_nfkc_normalizer(): ...


@mutant("train_hf_tokenizer", "a Lowercase normalizer: capital letters come back in lower case",
        replace={"    tokenizer.decoder = decoders.ByteLevel()\n":
                 "    tokenizer.decoder = decoders.ByteLevel()\n"
                 "    tokenizer.normalizer = __import__('tokenizers').normalizers.Lowercase()\n"})
def tok_lowercases(): ...


@mistake("train_hf_tokenizer", "only a list is accepted: a tuple of strings, also a sequence of strings, is refused")
def tok_rejects_a_tuple(texts, vocab_size):
    if not isinstance(texts, list):
        raise ValueError(f"texts must be a list of strings, got {texts!r:.60}")
    return train_hf_tokenizer(texts, vocab_size)

# --------------------------------------------------------------------------------------------------
# build_tiny_causal_lm


@mutant("build_tiny_causal_lm",
        "vocab_size = tokenizer.vocab_size, which leaves out added tokens: their ids are outside the embedding",
        replace={"vocab_size=len(tokenizer),": "vocab_size=tokenizer.vocab_size,"})
def model_vocab_without_added_tokens(): ...


@mutant("build_tiny_causal_lm",
        "bos/eos ids are not passed, so they keep GPT2Config's 50256, an id outside the small vocabulary",
        replace={"        bos_token_id=tokenizer.bos_token_id,\n        eos_token_id=tokenizer.eos_token_id,\n": ""})
def model_default_special_ids(): ...


@mutant("build_tiny_causal_lm", "pad_token_id is not passed: generate() cannot pad with the tokenizer's pad id",
        replace={"        pad_token_id=tokenizer.pad_token_id,\n": ""})
def model_no_pad_id(): ...


@mutant("build_tiny_causal_lm", "n_layer and n_head are swapped",
        replace={"n_layer=n_layer,": "n_layer=n_head,", "n_head=n_head,": "n_head=n_layer,"})
def model_layers_heads_swapped(): ...


@mutant("build_tiny_causal_lm", "n_positions is ignored: the model keeps GPT-2's 1024 positions",
        replace={"n_positions=n_positions,": "n_positions=1024,"})
def model_positions_ignored(): ...


@mistake("build_tiny_causal_lm", "the output layer is not tied to the token embedding: a second V x E matrix")
def model_untied(tokenizer, n_layer=2, n_embd=32, n_head=2, n_positions=128):
    from transformers.models.gpt2 import GPT2LMHeadModel

    config = build_tiny_causal_lm(tokenizer, n_layer, n_embd, n_head, n_positions).config
    config.tie_word_embeddings = False
    return GPT2LMHeadModel(config)


@mutant("build_tiny_causal_lm", "a tokenizer without a pad token is accepted",
        replace={"if tokenizer.pad_token_id is None or ": "if "})
def model_accepts_no_pad(): ...


@variant("build_tiny_causal_lm", "AutoModelForCausalLM.from_config with eager attention and the config built "
         "from keyword arguments of the tokenizer's special tokens")
def model_auto_from_config(tokenizer, n_layer=2, n_embd=32, n_head=2, n_positions=128):
    from transformers import AutoModelForCausalLM, GPT2Config

    if tokenizer.pad_token is None or tokenizer.eos_token is None:
        raise ValueError("the tokenizer needs pad and eos tokens")
    if n_embd % n_head != 0:
        raise ValueError(f"{n_embd} % {n_head} != 0")
    specials = {f"{name}_token_id": tokenizer.convert_tokens_to_ids(getattr(tokenizer, f"{name}_token"))
                for name in ("bos", "eos", "pad")}
    config = GPT2Config(vocab_size=len(tokenizer.get_vocab()), n_positions=n_positions, n_embd=n_embd,
                        n_layer=n_layer, n_head=n_head, **specials)
    return AutoModelForCausalLM.from_config(config, attn_implementation="eager")


@mutant("build_tiny_causal_lm", "dropout switched off (resid, embd and attn 0.0): not GPT-2's default of 0.1",
        replace={"        pad_token_id=tokenizer.pad_token_id,\n    )":
                 "        pad_token_id=tokenizer.pad_token_id,\n"
                 "        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,\n    )"})
def model_no_dropout(): ...


@mutant("build_tiny_causal_lm", "bos_token_id = tokenizer.eos_token_id (GPT-2's convention) instead of the "
        "tokenizer's own bos id",
        replace={"bos_token_id=tokenizer.bos_token_id,": "bos_token_id=tokenizer.eos_token_id,"})
def model_bos_from_eos(): ...


@mutant("build_tiny_causal_lm", "a tokenizer without an eos token is accepted: eos_token_id None, generation "
        "never stops", replace={"if tokenizer.pad_token_id is None or tokenizer.eos_token_id is None:":
                                "if tokenizer.pad_token_id is None:"})
def model_accepts_no_eos(): ...


@variant("build_tiny_causal_lm", "GPT-2's defaults spelled out (n_inner = 4 * n_embd, gelu_new, dropout 0.1) and the "
         "special ids looked up by token")
def model_defaults_spelled_out(tokenizer, n_layer=2, n_embd=32, n_head=2, n_positions=128):
    from transformers import GPT2Config, GPT2LMHeadModel

    if n_embd % n_head:
        raise ValueError(f"n_embd ({n_embd}) must be a multiple of n_head ({n_head})")
    if tokenizer.pad_token is None or tokenizer.eos_token is None:
        raise ValueError("a pad token and an eos token are needed")
    ids = {name: tokenizer.convert_tokens_to_ids(getattr(tokenizer, f"{name}_token")) for name in ("bos", "eos", "pad")}
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=n_positions, n_embd=n_embd, n_layer=n_layer,
                        n_head=n_head, n_inner=4 * n_embd, activation_function="gelu_new", resid_pdrop=0.1,
                        embd_pdrop=0.1, attn_pdrop=0.1, bos_token_id=ids["bos"], eos_token_id=ids["eos"],
                        pad_token_id=ids["pad"])
    return GPT2LMHeadModel(config)

# --------------------------------------------------------------------------------------------------
# text_generation


@mutant("text_generation",
        "max_length=max_new_tokens (the learning path's max_length): the prompt's tokens count against the limit",
        replace={"max_new_tokens=max_new_tokens, do_sample=False": "max_length=max_new_tokens, do_sample=False"})
def gen_max_length_counts_prompt(): ...


@mutant("text_generation", "the model stays in train mode: dropout makes greedy decoding random",
        replace={"    model.eval()  # dropout off": "    # dropout off"})
def gen_dropout_on(): ...


@mutant("text_generation", "the model is left in eval mode: a caller in the middle of training loses its dropout",
        replace={"model.train(was_training)": "model.eval()"})
def gen_mode_not_restored(): ...


@mutant("text_generation", "the tokenizer is left with padding_side = 'left', which the pipeline sets for decoder-only "
        "models: the caller's later padded batches change",
        replace={"        tokenizer.padding_side = padding_side\n": ""})
def gen_tokenizer_left_padded(): ...


@mistake("text_generation", "return_full_text=False: only the continuation comes back, without the prompt")
def gen_continuation_only(model, tokenizer, prompt, max_new_tokens=20):
    from transformers import pipeline

    was, side = model.training, tokenizer.padding_side
    model.eval()
    try:
        out = pipeline("text-generation", model=model, tokenizer=tokenizer)(
            prompt, max_new_tokens=max_new_tokens, do_sample=False, return_full_text=False)
    finally:
        model.train(was)
        tokenizer.padding_side = side
    return out[0]["generated_text"]


@mistake("text_generation", "do_sample left on: the continuation is sampled, not the most likely tokens")
def gen_sampled(model, tokenizer, prompt, max_new_tokens=20):
    from transformers import pipeline

    was, side = model.training, tokenizer.padding_side
    model.eval()
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(1)
            out = pipeline("text-generation", model=model, tokenizer=tokenizer)(
                prompt, max_new_tokens=max_new_tokens, do_sample=True, top_k=0)
    finally:
        model.train(was)
        tokenizer.padding_side = side
    return out[0]["generated_text"]


@mistake("text_generation", "model.generate without do_sample=False: a model whose generation config samples gives "
         "random text")
def gen_generate_without_do_sample(model, tokenizer, prompt, max_new_tokens=20):
    if type(max_new_tokens) is not int or max_new_tokens <= 0:
        raise ValueError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")
    mode = model.training
    try:
        model.eval()
        with torch.no_grad():
            out = model.generate(**tokenizer(prompt, return_tensors="pt"), max_new_tokens=max_new_tokens,
                                 pad_token_id=tokenizer.pad_token_id)
        return tokenizer.decode(out[0], skip_special_tokens=True)
    finally:
        model.train(mode)


@variant("text_generation", "model.generate directly, decoded without special tokens (what the pipeline does)")
def gen_with_generate(model, tokenizer, prompt, max_new_tokens=20):
    if type(max_new_tokens) is not int or max_new_tokens <= 0:
        raise ValueError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")
    mode = model.training
    try:
        model.eval()
        enc = tokenizer(prompt, return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id)
        return tokenizer.decode(out[0], skip_special_tokens=True)
    finally:
        model.train(mode)


@mistake("text_generation", "no try/finally: when generation fails, the model is left in eval mode")
def gen_mode_lost_on_error(model, tokenizer, prompt, max_new_tokens=20):
    from transformers import pipeline

    if not _is_int(max_new_tokens) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")
    was, side = model.training, tokenizer.padding_side
    model.eval()
    result = pipeline("text-generation", model=model, tokenizer=tokenizer)(prompt, max_new_tokens=max_new_tokens,
                                                                           do_sample=False)
    model.train(was)
    tokenizer.padding_side = side
    return result[0]["generated_text"]


@mutant("text_generation", "tokenizer.padding_side is set to 'right' afterwards instead of back to what it was",
        replace={"        tokenizer.padding_side = padding_side\n": '        tokenizer.padding_side = "right"\n'})
def gen_padding_side_forced_right(): ...


@mutant("text_generation", "skip_special_tokens=False: the end-of-text token the model generates is in the text",
        replace={"result = generator(prompt, max_new_tokens=max_new_tokens, do_sample=False)":
                 "result = generator(prompt, max_new_tokens=max_new_tokens, do_sample=False, "
                 "skip_special_tokens=False)"})
def gen_keeps_special_tokens(): ...


def _greedy_loop(model, tokenizer, prompt, max_new_tokens, stop_at_eos):
    if not _is_int(max_new_tokens) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")
    was = model.training
    model.eval()
    try:
        ids = tokenizer(prompt, return_tensors="pt").input_ids
        with torch.no_grad():
            for _ in range(max_new_tokens):
                next_id = model(ids).logits[:, -1].argmax(-1, keepdim=True)
                ids = torch.cat([ids, next_id], dim=1)
                if stop_at_eos and next_id.item() == tokenizer.eos_token_id:
                    break
        return tokenizer.decode(ids[0], skip_special_tokens=True)
    finally:
        model.train(was)


@mistake("text_generation", "a hand-written greedy loop that does not stop at the end-of-text token")
def gen_loop_past_eos(model, tokenizer, prompt, max_new_tokens=20):
    return _greedy_loop(model, tokenizer, prompt, max_new_tokens, stop_at_eos=False)


@variant("text_generation", "a hand-written greedy loop: argmax of the last position, stopping at eos, without a cache")
def gen_greedy_loop(model, tokenizer, prompt, max_new_tokens=20):
    return _greedy_loop(model, tokenizer, prompt, max_new_tokens, stop_at_eos=True)

# --------------------------------------------------------------------------------------------------
# CausalLMDataset


class _Seed(CausalLMDataset):
    def _encode(self, idx):
        enc = self.tokenizer(self.texts[idx], truncation=True, padding="max_length", max_length=self.max_length,
                             return_tensors="pt")
        return enc["input_ids"][0], enc["attention_mask"][0]


@mistake("CausalLMDataset", "labels = input_ids, padding included (the learning path's CustomDataset): the model "
         "is trained to predict padding")
class ds_labels_include_padding(_Seed):
    def __getitem__(self, idx):
        ids, mask = self._encode(idx)
        return {"input_ids": ids, "attention_mask": mask, "labels": ids.clone()}


@mistake("CausalLMDataset", "labels are -100 where input_ids == pad_token_id: with pad = eos, a real end-of-text "
         "loses its label too")
class ds_masks_by_pad_id(_Seed):
    def __getitem__(self, idx):
        ids, mask = self._encode(idx)
        return {"input_ids": ids, "attention_mask": mask,
                "labels": ids.masked_fill(ids == self.tokenizer.pad_token_id, -100)}


@mistake("CausalLMDataset", "labels = input_ids, then labels[mask == 0] = -100 in place: input_ids gets the -100s too")
class ds_labels_alias_input_ids(_Seed):
    def __getitem__(self, idx):
        ids, mask = self._encode(idx)
        labels = ids
        labels[mask == 0] = -100
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}


@mistake("CausalLMDataset", "labels shifted by one in the dataset: GPT-2 shifts them again inside its loss")
class ds_labels_shifted(_Seed):
    def __getitem__(self, idx):
        ids, mask = self._encode(idx)
        labels = torch.cat([ids[1:], ids.new_full((1,), -100)]).masked_fill(
            torch.cat([mask[1:], mask.new_zeros(1)]) == 0, -100)
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}


@mutant("CausalLMDataset", "no truncation: a long text gives more than max_length tokens",
        replace={"truncation=True": "truncation=False"})
def ds_no_truncation(): ...


@mistake("CausalLMDataset", "always pads on the right, ignoring the tokenizer's padding_side")
class ds_always_right(_Seed):
    def _encode(self, idx):
        enc = self.tokenizer(self.texts[idx], truncation=True, padding="max_length", max_length=self.max_length,
                             return_tensors="pt", padding_side="right")
        return enc["input_ids"][0], enc["attention_mask"][0]

    def __getitem__(self, idx):
        ids, mask = self._encode(idx)
        return {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}


@mistake("CausalLMDataset", "keeps the caller's list itself: changing the list later changes the dataset")
class ds_keeps_callers_list(CausalLMDataset):
    def __init__(self, texts, tokenizer, max_length=512):
        super().__init__(texts, tokenizer, max_length)
        self.texts = texts


@mutant("CausalLMDataset", "max_length = 0 is accepted", replace={"or max_length < 1:": "or max_length < 0:"})
def ds_accepts_zero_length(): ...


@mutant("CausalLMDataset", "a tokenizer without a pad token is accepted",
        replace={"if tokenizer.pad_token_id is None:": "if False:"})
def ds_accepts_no_pad(): ...


@variant("CausalLMDataset", "tokenizes every text once in __init__ (one batched call) and indexes the tensors")
class ds_pretokenized(torch.utils.data.Dataset):
    def __init__(self, texts, tokenizer, max_length=512):
        if isinstance(texts, str) or len(texts) == 0 or not all(isinstance(t, str) for t in texts):
            raise ValueError("texts must be a non-empty list of strings")
        if tokenizer.pad_token is None:
            raise ValueError("the tokenizer needs a pad token")
        if type(max_length) is not int or max_length <= 0:
            raise ValueError(f"bad max_length {max_length!r}")
        enc = tokenizer(list(texts), truncation=True, padding="max_length", max_length=max_length,
                        return_tensors="pt")
        self.ids, self.mask = enc["input_ids"], enc["attention_mask"]

    def __len__(self):
        return self.ids.shape[0]

    def __getitem__(self, idx):
        ids, mask = self.ids[idx].clone(), self.mask[idx].clone()
        return {"input_ids": ids, "attention_mask": mask, "labels": torch.where(mask.bool(), ids, torch.tensor(-100))}


@mistake("CausalLMDataset", "texts are not checked item by item: a non-string fails only when its item is read")
class ds_accepts_non_strings(CausalLMDataset):
    def __init__(self, texts, tokenizer, max_length=512):
        if isinstance(texts, str) or not texts:
            raise ValueError(f"texts must be a non-empty list of strings, got {texts!r:.60}")
        super().__init__([str(t) for t in texts], tokenizer, max_length)
        self.texts = list(texts)


@mutant("CausalLMDataset", "max_length = 8.0 (a float) is accepted",
        replace={"if not _is_int(max_length) or max_length < 1:": "if isinstance(max_length, bool) or max_length < 1:"})
def ds_accepts_float_length(): ...


@mutant("CausalLMDataset", "sets tokenizer.padding_side = 'right' on the caller's tokenizer instead of following it",
        replace={"        self.tokenizer = tokenizer\n":
                 '        tokenizer.padding_side = "right"\n        self.tokenizer = tokenizer\n'})
def ds_forces_right_padding(): ...


@mistake("CausalLMDataset", "only a list is accepted: a tuple of strings is refused")
class ds_rejects_a_tuple(CausalLMDataset):
    def __init__(self, texts, tokenizer, max_length=512):
        if not isinstance(texts, list):
            raise ValueError(f"texts must be a list, got {type(texts).__name__}")
        super().__init__(texts, tokenizer, max_length)


@variant("CausalLMDataset", "the tokenizer's plain lists turned into tensors with torch.tensor, labels by torch.where")
class ds_from_lists(torch.utils.data.Dataset):
    def __init__(self, texts, tokenizer, max_length=512):
        if isinstance(texts, str) or not texts or any(not isinstance(t, str) for t in texts):
            raise ValueError(f"texts must be a non-empty sequence of strings, got {texts!r:.60}")
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length <= 0:
            raise ValueError(f"max_length must be a positive int, got {max_length!r}")
        if tokenizer.pad_token_id is None:
            raise ValueError("the tokenizer has no pad token")
        self.texts, self.tokenizer, self.max_length = [*texts], tokenizer, max_length

    def __len__(self):
        return len(self.texts)

    def __getitem__(self, idx):
        enc = self.tokenizer(self.texts[idx], truncation=True, padding="max_length", max_length=self.max_length)
        ids, mask = torch.tensor(enc["input_ids"]), torch.tensor(enc["attention_mask"])
        return {"input_ids": ids, "attention_mask": mask, "labels": torch.where(mask == 1, ids, -100)}

# --------------------------------------------------------------------------------------------------
# fine_tune


def _train(model, tokenizer, dataset, output_dir, **overrides):
    """The reference's Trainer run on any dataset, with some TrainingArguments overridden."""
    from transformers import Trainer, TrainingArguments

    args = {"output_dir": str(output_dir), "use_cpu": True, "report_to": "none", "logging_steps": 1, **overrides}
    trainer = Trainer(model=model, args=TrainingArguments(**args), train_dataset=dataset, processing_class=tokenizer)
    trainer.train()
    trainer.save_model()
    return [e["loss"] for e in trainer.state.log_history if "loss" in e]


@mistake("fine_tune", "trains on the learning path's dataset, whose labels include the padding")
def ft_trains_on_padding(model, tokenizer, texts, output_dir, epochs=1, batch_size=2, learning_rate=5e-4,
                         max_length=32, seed=0):
    return _train(model, tokenizer, ds_labels_include_padding(texts, tokenizer, max_length), output_dir,
                  num_train_epochs=epochs, per_device_train_batch_size=batch_size, learning_rate=learning_rate,
                  seed=seed)


@mutant("fine_tune", "epochs is ignored: always one pass", replace={"num_train_epochs=epochs,": ""})
def ft_epochs_ignored(): ...


@mutant("fine_tune", "learning_rate is ignored: Trainer's default 5e-5 is used",
        replace={"learning_rate=learning_rate,": ""})
def ft_learning_rate_ignored(): ...


@mutant("fine_tune", "seed is ignored: Trainer's default seed 42 is used", replace={"seed=seed,": ""})
def ft_seed_ignored(): ...


@mutant("fine_tune", "batch_size is ignored: Trainer's default of 8 per device is used",
        replace={"per_device_train_batch_size=batch_size,": ""})
def ft_batch_size_ignored(): ...


@mutant("fine_tune", "max_length is ignored: every text is cut or padded to 16 tokens",
        replace={"CausalLMDataset(texts, tokenizer, max_length)": "CausalLMDataset(texts, tokenizer, 16)"})
def ft_max_length_ignored(): ...


@mutant("fine_tune", "the model is never saved: output_dir holds no checkpoint",
        replace={"    trainer.save_model()": "    pass"})
def ft_not_saved(): ...


@mutant("fine_tune", "no processing_class: save_model() does not save the tokenizer",
        replace={"processing_class=tokenizer)": ")"})
def ft_tokenizer_not_saved(): ...


@mistake("fine_tune", "trains a copy of the model: the caller's model keeps its old weights")
def ft_trains_a_copy(model, tokenizer, texts, output_dir, epochs=1, batch_size=2, learning_rate=5e-4, max_length=32,
                     seed=0):
    import copy

    from reference.phase3.w19_pretrained import fine_tune

    return fine_tune(copy.deepcopy(model), tokenizer, texts, output_dir, epochs, batch_size, learning_rate,
                     max_length, seed)


@variant("fine_tune", "DataCollatorForLanguageModeling(mlm=False) with dynamic padding instead of CausalLMDataset")
def ft_with_collator(model, tokenizer, texts, output_dir, epochs=1, batch_size=2, learning_rate=5e-4, max_length=32,
                     seed=0):
    from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments

    features = [tokenizer(t, truncation=True, max_length=max_length) for t in texts]
    args = TrainingArguments(output_dir=str(output_dir), num_train_epochs=epochs,
                             per_device_train_batch_size=batch_size, learning_rate=learning_rate, seed=seed,
                             use_cpu=True, report_to="none", logging_steps=1, remove_unused_columns=False)
    trainer = Trainer(model=model, args=args, train_dataset=features, processing_class=tokenizer,
                      data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False))
    trainer.train()
    trainer.save_model(str(output_dir))
    return [log["loss"] for log in trainer.state.log_history if "loss" in log]


@mutant("fine_tune", "weight_decay=0.01, a common tutorial setting: not the documented default of 0",
        replace={"logging_steps=1,  # one loss per optimizer step": "logging_steps=1, weight_decay=0.01,"})
def ft_weight_decay(): ...


@mutant("fine_tune", "the learning path's tokenizer.pad_token = tokenizer.eos_token: the caller's tokenizer changes, "
        "and is saved that way",
        replace={"    trainer = Trainer(model=model,":
                 "    tokenizer.pad_token = tokenizer.eos_token\n    trainer = Trainer(model=model,"})
def ft_pad_becomes_eos(): ...


@variant("fine_tune", "saves with model.save_pretrained and tokenizer.save_pretrained instead of trainer.save_model")
def ft_saves_each(model, tokenizer, texts, output_dir, epochs=1, batch_size=2, learning_rate=5e-4, max_length=32,
                  seed=0):
    from transformers import Trainer, TrainingArguments

    args = TrainingArguments(output_dir=str(output_dir), num_train_epochs=epochs, learning_rate=learning_rate,
                             per_device_train_batch_size=batch_size, seed=seed, use_cpu=True, report_to="none",
                             logging_steps=1)
    trainer = Trainer(model=model, args=args, train_dataset=CausalLMDataset(texts, tokenizer, max_length))
    trainer.train()
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    return [log["loss"] for log in trainer.state.log_history if "loss" in log]

# --------------------------------------------------------------------------------------------------
# LoRALinear


@mutant("LoRALinear", "B is initialised non-zero: the wrapped layer no longer starts as the pre-trained one",
        replace={"torch.zeros(base.out_features, r,": "torch.randn(base.out_features, r,"})
def lora_b_nonzero(): ...


@mutant("LoRALinear", "the update is scaled by alpha instead of alpha / r",
        replace={"self.scaling = alpha / r": "self.scaling = alpha"})
def lora_scale_alpha(): ...


@mutant("LoRALinear", "the base layer is not frozen: its weight and bias would train too",
        replace={"        self.base.requires_grad_(False)  # only A and B train\n": ""})
def lora_base_not_frozen(): ...


@mutant("LoRALinear", "merging twice adds the update twice",
        replace={"        if not self.merged:": "        if True:"})
def lora_merge_twice(): ...


@mutant("LoRALinear", "unmerge() adds the update again instead of subtracting it",
        replace={"self.base.weight -= self.delta_weight()": "self.base.weight += self.delta_weight()"})
def lora_unmerge_adds(): ...


@mutant("LoRALinear", "a merged layer still adds the update in forward: it counts twice",
        replace={"            return self.base(x)  # the update": "            pass  # the update"})
def lora_merged_counts_twice(): ...


@mutant("LoRALinear", "merge() forgets the scaling: it adds B @ A",
        replace={"return (self.lora_B @ self.lora_A) * self.scaling": "return self.lora_B @ self.lora_A"})
def lora_merge_unscaled(): ...


@mutant("LoRALinear", "dropout on the adapter's output instead of its input",
        replace={"(self.dropout(x) @ self.lora_A.T @ self.lora_B.T) * self.scaling":
                 "self.dropout(x @ self.lora_A.T @ self.lora_B.T) * self.scaling"})
def lora_dropout_on_output(): ...


@mutant("LoRALinear", "dropout on the whole output, base included",
        replace={"return self.base(x) + (self.dropout(x) @ self.lora_A.T @ self.lora_B.T) * self.scaling":
                 "return self.dropout(self.base(x) + (x @ self.lora_A.T @ self.lora_B.T) * self.scaling)"})
def lora_dropout_everywhere(): ...


@mutant("LoRALinear", "A is initialised with a plain randn (std 1) instead of kaiming_uniform_(a=sqrt(5))",
        replace={"nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))": "nn.init.normal_(self.lora_A)"})
def lora_a_randn(): ...


@mutant("LoRALinear", "A and B are always float32, whatever the base layer's dtype",
        replace={"dtype=weight.dtype, device=weight.device))": "device=weight.device))"})
def lora_float32_adapter(): ...


@mutant("LoRALinear", "A and B are created on the CPU, not where the base weight lives",
        replace={"dtype=weight.dtype, device=weight.device))": "dtype=weight.dtype))"})
def lora_cpu_adapter(): ...


@mutant("LoRALinear", "r = 0 is accepted (a division by zero later)", replace={"or r < 1:": "or r < 0:"})
def lora_accepts_zero_rank(): ...


@variant("LoRALinear", "forward builds the merged weight W + delta and calls F.linear; merge state kept by a flag")
class lora_functional(torch.nn.Module):
    def __init__(self, base, r, alpha, dropout=0.0):
        super().__init__()
        if type(r) is not int or r <= 0:
            raise ValueError(f"rank must be a positive int: {r!r}")
        for p in base.parameters():
            p.requires_grad = False
        self.base, self.r, self.alpha, self.scaling = base, r, alpha, alpha / r
        factory = {"dtype": base.weight.dtype, "device": base.weight.device}
        self.lora_A = torch.nn.Parameter(torch.empty(r, base.in_features, **factory))
        self.lora_B = torch.nn.Parameter(torch.zeros(base.out_features, r, **factory))
        bound = 1 / base.in_features ** 0.5
        torch.nn.init.uniform_(self.lora_A, -bound, bound)
        self.dropout = torch.nn.Dropout(dropout)
        self.merged = False

    def delta_weight(self):
        return self.scaling * torch.mm(self.lora_B, self.lora_A)

    def forward(self, x):
        if self.merged:
            return self.base(x)
        if self.dropout.p == 0 or not self.training:
            return torch.nn.functional.linear(x, self.base.weight + self.delta_weight(), self.base.bias)
        return self.base(x) + torch.nn.functional.linear(self.dropout(x), self.delta_weight())

    @torch.no_grad()
    def merge(self):
        if self.merged:
            return
        self.base.weight.add_(self.delta_weight())
        self.merged = True

    @torch.no_grad()
    def unmerge(self):
        if self.merged:
            self.base.weight.sub_(self.delta_weight())
            self.merged = False


@mutant("LoRALinear", "nn.Dropout(dropout, inplace=True): the adapter's dropout zeroes the caller's x",
        replace={"self.dropout = nn.Dropout(dropout)": "self.dropout = nn.Dropout(dropout, inplace=True)"})
def lora_dropout_in_place(): ...


@mutant("LoRALinear", "F.dropout(x, p) with its default training=True: dropout also in eval mode",
        replace={"self.dropout = nn.Dropout(dropout)":
                 "self.dropout = lambda t, p=dropout: torch.nn.functional.dropout(t, p, training=True)"})
def lora_dropout_in_eval(): ...


@mutant("LoRALinear", "x @ W.T + b by hand: fails for a base layer without a bias",
        replace={"return self.base(x) + (self.dropout(x)":
                 "return x @ self.base.weight.T + self.base.bias + (self.dropout(x)"})
def lora_assumes_a_bias(): ...


@variant("LoRALinear", "the update by einsum; merge and unmerge with addmm_ (alpha = +-scaling) in place")
class lora_einsum_addmm(torch.nn.Module):
    def __init__(self, base, r, alpha, dropout=0.0):
        super().__init__()
        if isinstance(r, bool) or not isinstance(r, int) or r < 1:
            raise ValueError(f"r must be a positive int, got {r!r}")
        self.base = base
        for p in base.parameters():
            p.requires_grad_(False)
        w = base.weight
        self.lora_A = torch.nn.Parameter(w.new_empty(r, w.shape[1]))
        self.lora_B = torch.nn.Parameter(w.new_zeros(w.shape[0], r))
        torch.nn.init.kaiming_uniform_(self.lora_A, a=5 ** 0.5)
        self.scaling = alpha / r
        self.dropout = torch.nn.Dropout(dropout)
        self.merged = False

    def delta_weight(self):
        return torch.einsum("or,ri->oi", self.lora_B, self.lora_A) * self.scaling

    def forward(self, x):
        out = self.base(x)
        if not self.merged:
            out = out + self.scaling * torch.einsum("...i,ri,or->...o", self.dropout(x), self.lora_A, self.lora_B)
        return out

    @torch.no_grad()
    def merge(self):
        if not self.merged:
            self.base.weight.addmm_(self.lora_B, self.lora_A, alpha=self.scaling)
            self.merged = True

    @torch.no_grad()
    def unmerge(self):
        if self.merged:
            self.base.weight.addmm_(self.lora_B, self.lora_A, alpha=-self.scaling)
            self.merged = False

# --------------------------------------------------------------------------------------------------
# setup_lora_model


@mutant("setup_lora_model", "r and lora_alpha are swapped",
        replace={"r=r,": "r=alpha,", "lora_alpha=alpha,": "lora_alpha=r,"})
def lm_rank_alpha_swapped(): ...


@mutant("setup_lora_model", "dropout is ignored: the adapters never drop anything",
        replace={"lora_dropout=dropout,": "lora_dropout=0.0,"})
def lm_dropout_ignored(): ...


@mutant("setup_lora_model", "the default targets are the output projections c_proj instead of c_attn",
        replace={'else ["c_attn"]': 'else ["c_proj"]'})
def lm_default_c_proj(): ...


@mutant("setup_lora_model", "target_modules is ignored: always c_attn",
        replace={'list(target_modules) if target_modules is not None else ["c_attn"]': '["c_attn"]'})
def lm_targets_ignored(): ...


@mutant("setup_lora_model", "inference_mode=True: the adapters are frozen too, nothing trains",
        replace={"inference_mode=False,": "inference_mode=True,"})
def lm_inference_mode(): ...


@mutant("setup_lora_model", "no task_type: a plain PeftModel without the causal-LM wrapper",
        replace={"task_type=TaskType.CAUSAL_LM,": ""})
def lm_no_task_type(): ...


@mistake("setup_lora_model", "lora_alpha = alpha * r, a scaling of alpha instead of alpha / r")
def lm_scale_alpha(model, r=8, alpha=32, dropout=0.1, target_modules=None):
    from reference.phase3.w19_pretrained import setup_lora_model

    return setup_lora_model(model, r, alpha * r, dropout, target_modules)


@variant("setup_lora_model", "target_modules as one regular expression over the full module names")
def lm_regex_targets(model, r=8, alpha=32, dropout=0.1, target_modules=None):
    from peft import LoraConfig, get_peft_model

    if type(r) is not int or r <= 0:
        raise ValueError(f"r must be positive, got {r!r}")
    names = "|".join(target_modules or ["c_attn"])
    config = LoraConfig(task_type="CAUSAL_LM", r=r, lora_alpha=alpha, lora_dropout=dropout,
                        target_modules=rf".*\.({names})$", fan_in_fan_out=True)
    return get_peft_model(model, config)


@mutant("setup_lora_model", "r is not checked: peft turns r=True or r=2.0 into a TypeError deep inside torch",
        replace={'    if not _is_int(r) or r < 1:\n        raise ValueError(f"r must be a positive int, got {r!r}")\n'
                 "    config = LoraConfig(": "    config = LoraConfig("})
def lm_rank_unchecked(): ...


@mutant("setup_lora_model", "r = 2.0 (a float) passes the check",
        replace={"if not _is_int(r) or r < 1:": "if isinstance(r, bool) or r < 1:"})
def lm_accepts_float_rank(): ...


@mistake("setup_lora_model", "adds the adapters to a copy of the model: the caller's model is left without them")
def lm_copies_the_model(model, r=8, alpha=32, dropout=0.1, target_modules=None):
    import copy

    from reference.phase3.w19_pretrained import setup_lora_model

    return setup_lora_model(copy.deepcopy(model), r, alpha, dropout, target_modules)

# --------------------------------------------------------------------------------------------------
# PromptTuning


@mutant("PromptTuning", "the prompt goes after the tokens instead of in front of them",
        replace={"torch.cat([prompt, embeds], dim=1)": "torch.cat([embeds, prompt], dim=1)"})
def pt_prompt_appended(): ...


@mutant("PromptTuning", "the mask gets zeros for the prompt: no token may attend to it, so it does nothing",
        replace={"attention_mask.new_ones(B, P)": "attention_mask.new_zeros(B, P)"})
def pt_prompt_masked_out(): ...


@mutant("PromptTuning", "the labels are padded at the end: every label is shifted by P positions",
        replace={"torch.cat([labels.new_full((B, P), -100), labels], dim=1)":
                 "torch.cat([labels, labels.new_full((B, P), -100)], dim=1)"})
def pt_labels_padded_at_end(): ...


@mutant("PromptTuning", "the model is not frozen: all its weights train along with the prompt",
        replace={"        self.model.requires_grad_(False)  # only the prompt trains\n": ""})
def pt_model_not_frozen(): ...


@mutant("PromptTuning", "the prompt starts with std 1, far larger than the model's embeddings",
        replace={" * model.config.initializer_range)": ")"})
def pt_prompt_std_one(): ...


@mutant("PromptTuning", "the prompt is float32 whatever the model's dtype",
        replace={"weight.shape[1], dtype=weight.dtype,": "weight.shape[1],"})
def pt_prompt_float32(): ...


@mutant("PromptTuning", "num_virtual_tokens = 0 is accepted",
        replace={"or num_virtual_tokens < 1:": "or num_virtual_tokens < 0:"})
def pt_accepts_zero(): ...


@variant("PromptTuning", "virtual-token ids looked up in the prompt table with F.embedding, as peft's prompt encoder "
         "does; the mask and labels extended with F.pad")
class pt_embedding_lookup(torch.nn.Module):
    def __init__(self, model, num_virtual_tokens):
        super().__init__()
        if type(num_virtual_tokens) is not int or num_virtual_tokens <= 0:
            raise ValueError(f"num_virtual_tokens must be a positive int, got {num_virtual_tokens!r}")
        for p in model.parameters():
            p.requires_grad_(False)
        self.model, self.num_virtual_tokens = model, num_virtual_tokens
        w = model.get_input_embeddings().weight
        self.prompt = torch.nn.Parameter(w.new_empty(num_virtual_tokens, w.shape[1]))
        torch.nn.init.normal_(self.prompt, std=model.config.initializer_range)

    def forward(self, input_ids, attention_mask=None, labels=None):
        import torch.nn.functional as F

        B, T = input_ids.shape
        P = self.num_virtual_tokens
        virtual_ids = torch.arange(P, device=input_ids.device).expand(B, P)
        embeds = torch.cat((F.embedding(virtual_ids, self.prompt), self.model.get_input_embeddings()(input_ids)), 1)
        mask = F.pad(torch.ones_like(input_ids) if attention_mask is None else attention_mask, (P, 0), value=1)
        if labels is not None:
            labels = F.pad(labels, (P, 0), value=-100)
        return self.model(inputs_embeds=embeds, attention_mask=mask, labels=labels)


@mutant("PromptTuning", "the prompt is created on the CPU, not where the model's embeddings live",
        replace={"dtype=weight.dtype,\n                                               device=weight.device)":
                 "dtype=weight.dtype)"})
def pt_prompt_on_cpu(): ...


@mutant("LoRALinear", "A is initialised with kaiming_uniform_(a=sqrt(6)): a bound about 7% too small",
        replace={"a=math.sqrt(5))": "a=math.sqrt(6))"})
def lora_a_wrong_gain(): ...

@mutant("PromptTuning", "the prompt's scale is a fixed 0.02 (GPT-2's value), not the model's initializer_range",
        replace={" * model.config.initializer_range)": " * 0.02)"})
def pt_fixed_init_scale(): ...


@mistake("PromptTuning", "returns only the logits tensor when no labels are given, not the model's output")
class pt_returns_bare_logits(PromptTuning):
    def forward(self, input_ids, attention_mask=None, labels=None):
        out = super().forward(input_ids, attention_mask, labels)
        return out if labels is not None else out.logits


@mistake("PromptTuning", "the labels get their P times -100 only when an attention mask is given too")
class pt_labels_extended_only_with_mask(PromptTuning):
    def forward(self, input_ids, attention_mask=None, labels=None):
        if attention_mask is not None:
            return super().forward(input_ids, attention_mask, labels)
        B = input_ids.shape[0]
        embeds = torch.cat([self.prompt.expand(B, -1, -1), self.model.get_input_embeddings()(input_ids)], dim=1)
        mask = torch.ones(embeds.shape[:2], dtype=torch.long)
        return self.model(inputs_embeds=embeds, attention_mask=mask, labels=labels)


@variant("PromptTuning", "the prompt repeated per row (a copy, not a view); a missing mask built at full length P + T")
class pt_repeated(torch.nn.Module):
    def __init__(self, model, num_virtual_tokens):
        super().__init__()
        if isinstance(num_virtual_tokens, bool) or not isinstance(num_virtual_tokens, int) or num_virtual_tokens < 1:
            raise ValueError(f"num_virtual_tokens must be a positive int, got {num_virtual_tokens!r}")
        self.model = model
        for p in model.parameters():
            p.requires_grad = False
        emb = model.get_input_embeddings().weight
        self.num_virtual_tokens = num_virtual_tokens
        self.prompt = torch.nn.Parameter(
            model.config.initializer_range * torch.randn(num_virtual_tokens, emb.shape[1]).to(emb))

    def forward(self, input_ids, attention_mask=None, labels=None):
        (B, T), P = input_ids.shape, self.num_virtual_tokens
        embeds = torch.cat([self.prompt.repeat(B, 1, 1), self.model.get_input_embeddings()(input_ids)], dim=1)
        if attention_mask is None:
            mask = torch.ones(B, P + T, dtype=torch.long, device=input_ids.device)
        else:
            mask = torch.cat([torch.ones_like(attention_mask[:, :1]).expand(B, P), attention_mask], dim=1)
        if labels is not None:
            labels = torch.cat([torch.full_like(labels[:, :1], -100).expand(B, P), labels], dim=1)
        return self.model(inputs_embeds=embeds, attention_mask=mask, labels=labels)
