"""Reference solutions for w19_pretrained (Weeks 19-20: Hugging Face and fine-tuning), offline.

Fixes of the learning path's own code:
- its text-generation pipeline passed ``max_length=100``, which counts the prompt's tokens too, so a long
  prompt left fewer (or no) new tokens; here ``max_new_tokens`` counts only the new ones, and the
  pipeline decodes greedily with dropout off, so the text is the one ``model.generate`` gives.
- its ``CustomDataset`` used ``labels = input_ids``, so the loss was also computed on the padding (with
  ``pad_token = eos_token`` the model learns to emit end-of-text forever); here labels are -100
  wherever ``attention_mask`` is 0.
- its ``Trainer`` call used ``tokenizer=``, which transformers 5 replaced by ``processing_class=``.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

PAD_TOKEN = "<pad>"
EOS_TOKEN = "<|endoftext|>"
BYTE_ALPHABET = 256  # a byte-level tokenizer starts from one token per byte


def _texts(texts: Sequence[str], what: str) -> list[str]:
    """A list of strings; a single string would otherwise be iterated character by character."""
    if isinstance(texts, str | bytes) or not all(isinstance(t, str) for t in texts):
        raise ValueError(f"{what} must be a list of strings, got {texts!r:.80}")
    if not texts:
        raise ValueError(f"{what} is empty: there is nothing to learn from")
    return list(texts)


def _is_int(value) -> bool:
    """True for an int (or int-like such as numpy.int64), False for bools and floats."""
    if isinstance(value, bool):
        return False
    try:
        operator.index(value)
    except TypeError:
        return False
    return True


def train_hf_tokenizer(texts: Sequence[str], vocab_size: int):
    """A byte-level BPE tokenizer trained on ``texts``, wrapped as a ``PreTrainedTokenizerFast``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = _texts(texts, "texts")
    if not _is_int(vocab_size) or vocab_size < BYTE_ALPHABET + 2:
        raise ValueError(f"vocab_size must be an int of at least {BYTE_ALPHABET + 2} (256 bytes + 2 special "
                         f"tokens), got {vocab_size!r}")
    tokenizer = Tokenizer(models.BPE())
    # byte level: every string, even one with characters never seen in training, encodes and decodes exactly
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD_TOKEN, EOS_TOKEN],  # ids 0 and 1, before any learned token
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes, seen in training or not
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    # GPT-2's convention: one end-of-text token is also the beginning; padding gets its own token, so that
    # a real end-of-text is never mistaken for padding
    # right padding: real tokens keep positions 0, 1, 2, ... as in training without padding
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token=PAD_TOKEN, eos_token=EOS_TOKEN,
                                   bos_token=EOS_TOKEN, padding_side="right")


def build_tiny_causal_lm(tokenizer, n_layer: int = 2, n_embd: int = 32, n_head: int = 2, n_positions: int = 128):
    """A randomly initialised GPT-2 whose vocabulary and special ids agree with ``tokenizer``."""
    from transformers.models.gpt2 import GPT2Config, GPT2LMHeadModel

    if tokenizer.pad_token_id is None or tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer needs a pad token and an eos token (see train_hf_tokenizer)")
    if n_embd % n_head:
        raise ValueError(f"n_embd={n_embd} is not divisible by n_head={n_head}")
    config = GPT2Config(
        vocab_size=len(tokenizer),  # len() counts added tokens; tokenizer.vocab_size does not
        n_positions=n_positions,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
        # GPT2Config defaults these to 50256, GPT-2's own end-of-text: an id outside a small vocabulary
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return GPT2LMHeadModel(config)


def text_generation(model, tokenizer, prompt: str, max_new_tokens: int = 20) -> str:
    """Greedy continuation of ``prompt`` through ``transformers.pipeline``; returns prompt + continuation."""
    from transformers import pipeline

    if not _is_int(max_new_tokens) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")
    was_training = model.training
    padding_side = tokenizer.padding_side
    model.eval()  # dropout off: greedy decoding must be deterministic
    try:
        generator = pipeline("text-generation", model=model, tokenizer=tokenizer)
        # max_new_tokens counts only new tokens; the learning path's max_length also counted the prompt
        result = generator(prompt, max_new_tokens=max_new_tokens, do_sample=False)
    finally:
        model.train(was_training)  # leave the model as the caller had it
        # the pipeline switches the tokenizer of a decoder-only model to left padding: undo that for the caller
        tokenizer.padding_side = padding_side
    return result[0]["generated_text"]


class CausalLMDataset(torch.utils.data.Dataset):
    """The learning path's CustomDataset, fixed: padding positions get label -100."""

    def __init__(self, texts: Sequence[str], tokenizer, max_length: int = 512) -> None:
        if tokenizer.pad_token_id is None:
            raise ValueError("the tokenizer has no pad token: padding to max_length needs one")
        if not _is_int(max_length) or max_length < 1:
            raise ValueError(f"max_length must be a positive int, got {max_length!r}")
        self.texts = _texts(texts, "texts")  # a copy: the caller's list may change later
        self.tokenizer = tokenizer
        self.max_length = max_length

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, idx: int) -> dict[str, Tensor]:
        encoding = self.tokenizer(self.texts[idx], truncation=True, padding="max_length",
                                  max_length=self.max_length, return_tensors="pt")
        input_ids = encoding["input_ids"][0]
        attention_mask = encoding["attention_mask"][0]
        # by the mask, not by the pad id: a real end-of-text token may share the pad token's id
        labels = input_ids.masked_fill(attention_mask == 0, -100)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def fine_tune(model, tokenizer, texts: Sequence[str], output_dir: str | Path, epochs: int = 1,
              batch_size: int = 2, learning_rate: float = 5e-4, max_length: int = 32, seed: int = 0) -> list[float]:
    """Fine-tune ``model`` in place with ``Trainer`` on CPU; save model and tokenizer; return the step losses."""
    from transformers import Trainer, TrainingArguments

    args = TrainingArguments(
        output_dir=str(output_dir),
        num_train_epochs=epochs,
        per_device_train_batch_size=batch_size,
        learning_rate=learning_rate,
        seed=seed,
        use_cpu=True,  # the same result on every machine
        report_to="none",  # no wandb / tensorboard: nothing leaves the machine
        logging_steps=1,  # one loss per optimizer step
    )
    trainer = Trainer(model=model, args=args, train_dataset=CausalLMDataset(texts, tokenizer, max_length),
                      processing_class=tokenizer)  # transformers 5: processing_class replaces tokenizer=
    trainer.train()
    trainer.save_model()  # model, config and (through processing_class) the tokenizer in output_dir
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


class LoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus a trainable low-rank update ``(alpha / r) * B @ A``."""

    def __init__(self, base: nn.Linear, r: int, alpha: float, dropout: float = 0.0) -> None:
        super().__init__()
        if not _is_int(r) or r < 1:
            raise ValueError(f"r must be a positive int, got {r!r}")
        self.base = base
        self.base.requires_grad_(False)  # only A and B train
        self.scaling = alpha / r  # alpha / r keeps the update's size stable when r changes
        weight = base.weight
        self.lora_A = nn.Parameter(torch.empty(r, base.in_features, dtype=weight.dtype, device=weight.device))
        # B = 0: the wrapped layer starts out exactly as the base layer
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r, dtype=weight.dtype, device=weight.device))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as nn.Linear and peft initialise A
        self.dropout = nn.Dropout(dropout)
        self.merged = False

    def delta_weight(self) -> Tensor:
        return (self.lora_B @ self.lora_A) * self.scaling  # (out, in), like base.weight

    def forward(self, x: Tensor) -> Tensor:
        if self.merged:
            return self.base(x)  # the update already lives in base.weight
        # x @ A^T @ B^T: never builds the (out, in) product; dropout acts on the adapter's input only
        return self.base(x) + (self.dropout(x) @ self.lora_A.T @ self.lora_B.T) * self.scaling

    @torch.no_grad()
    def merge(self) -> None:
        if not self.merged:  # merging twice would add the update twice
            self.base.weight += self.delta_weight()
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            self.base.weight -= self.delta_weight()
            self.merged = False


def setup_lora_model(model, r: int = 8, alpha: float = 32, dropout: float = 0.1,
                     target_modules: Sequence[str] | None = None):
    """The learning path's ``setup_lora_model`` with ``peft``: LoRA adapters on a GPT-2's attention."""
    from peft import LoraConfig, TaskType, get_peft_model

    if not _is_int(r) or r < 1:
        raise ValueError(f"r must be a positive int, got {r!r}")
    config = LoraConfig(
        task_type=TaskType.CAUSAL_LM,  # gives a PeftModelForCausalLM, which keeps generate()
        inference_mode=False,  # the adapters train
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=list(target_modules) if target_modules is not None else ["c_attn"],
        fan_in_fan_out=True,  # GPT-2's Conv1D stores its weight as (in, out), the transpose of nn.Linear's
    )
    return get_peft_model(model, config)


class PromptTuning(nn.Module):
    """Prompt tuning: ``num_virtual_tokens`` trainable embeddings prepended to a frozen causal LM's input."""

    def __init__(self, model, num_virtual_tokens: int) -> None:
        super().__init__()
        if not _is_int(num_virtual_tokens) or num_virtual_tokens < 1:
            raise ValueError(f"num_virtual_tokens must be a positive int, got {num_virtual_tokens!r}")
        self.model = model
        self.model.requires_grad_(False)  # only the prompt trains
        weight = model.get_input_embeddings().weight
        self.num_virtual_tokens = num_virtual_tokens
        # the scale of the model's own token embeddings, so the prompt starts among them
        self.prompt = nn.Parameter(torch.randn(num_virtual_tokens, weight.shape[1], dtype=weight.dtype,
                                               device=weight.device) * model.config.initializer_range)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, labels: Tensor | None = None):
        B, P = input_ids.shape[0], self.num_virtual_tokens
        embeds = self.model.get_input_embeddings()(input_ids)  # (B, T, E)
        prompt = self.prompt.unsqueeze(0).expand(B, -1, -1)  # (B, P, E), the same prompt for every row
        inputs_embeds = torch.cat([prompt, embeds], dim=1)  # (B, P + T, E): the prompt comes first
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        # every position may attend to the prompt
        attention_mask = torch.cat([attention_mask.new_ones(B, P), attention_mask], dim=1)
        if labels is not None:
            # the prompt positions predict nothing
            labels = torch.cat([labels.new_full((B, P), -100), labels], dim=1)
        return self.model(inputs_embeds=inputs_embeds, attention_mask=attention_mask, labels=labels)
