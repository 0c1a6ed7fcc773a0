"""Kata w19_pretrained (Weeks 19-20): Hugging Face and fine-tuning, all offline.

You work with the libraries that most language-model code is built on, without downloading anything:

1. ``train_hf_tokenizer`` - train a byte-level BPE tokenizer with ``tokenizers`` and wrap it for ``transformers``;
2. ``build_tiny_causal_lm`` - a small, randomly initialised GPT-2 sized to that tokenizer;
3. ``text_generation`` - greedy text generation through ``transformers.pipeline`` (the learning path's
   pipeline call, fixed);
4. ``CausalLMDataset`` - the learning path's ``CustomDataset``, fixed so that padding is not trained on;
5. ``fine_tune`` - fine-tuning with ``Trainer`` and ``TrainingArguments`` on the CPU;
6. ``LoRALinear`` - LoRA from scratch, with ``merge()`` and ``unmerge()``, equal to ``peft``'s LoRA layer;
7. ``setup_lora_model`` - the same adapters on a whole GPT-2 through ``peft``;
8. ``PromptTuning`` - a trainable soft prompt in front of a frozen model.

The checks build tiny models from configs and train tokenizers on text they write themselves, and save and
load through temporary folders: nothing is downloaded. Run ``kata check w19_pretrained`` to check your work.
"""

from __future__ import annotations

import math  # noqa: F401 - math.sqrt for the LoRA initialisation
import operator  # noqa: F401 - operator.index turns an int-like into an int (and rejects floats)
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

PAD_TOKEN = "<pad>"
EOS_TOKEN = "<|endoftext|>"
BYTE_ALPHABET = 256  # a byte-level tokenizer starts from one token per byte


def train_hf_tokenizer(texts: Sequence[str], vocab_size: int):
    """Train a byte-level BPE tokenizer on ``texts`` and return it as a ``transformers.PreTrainedTokenizerFast``.

    The learning path loads GPT-2's tokenizer from the Hugging Face hub. Here you train one of the same kind
    yourself with the ``tokenizers`` library (the fast Rust library behind every "Fast" tokenizer), then wrap
    it so that the rest of ``transformers`` (models, ``pipeline``, ``Trainer``, ``save_pretrained``) can use it.

    What the tokenizer must be:

    - **byte-level BPE**, like GPT-2's: a ``tokenizers.models.BPE`` model, the ``ByteLevel`` pre-tokenizer
      (with ``add_prefix_space=False``) and the ``ByteLevel`` decoder. Its starting alphabet is all 256
      bytes (``pre_tokenizers.ByteLevel.alphabet()``), even those that never occur in ``texts``, so that
      ANY string encodes and decodes back exactly: ``tok.decode(tok(s).input_ids) == s``.
    - **two special tokens, with fixed ids**: ``"<pad>"`` has id 0 and is the pad token; ``"<|endoftext|>"``
      has id 1 and is both the eos and the bos token (GPT-2's convention). Give them to the BPE trainer as
      ``special_tokens`` so they are in the vocabulary before any learned token, and name them again when
      you wrap the tokenizer (``pad_token=``, ``eos_token=``, ``bos_token=``). The learning path had no pad
      token at all and then set ``pad_token = eos_token``: a separate pad token means a real end-of-text is
      never mistaken for padding.
    - **vocab_size** is the size of the whole vocabulary: 256 bytes + 2 special tokens + learned merges.
      It is reached exactly when ``texts`` have enough different pairs to merge (smaller texts give fewer).
    - ``padding_side="right"``: padding goes after the text.
    - ``save_pretrained(folder)`` then ``PreTrainedTokenizerFast.from_pretrained(folder)`` (or
      ``AutoTokenizer``) gives back a tokenizer that encodes every text the same way, with the same special
      tokens (the wrapper does this for you once the special tokens are set).

    Errors: ``ValueError`` naming the value when ``vocab_size`` is not an int (a bool is not one) or is smaller
    than 258, or when ``texts`` is a single string (iterating it would train on single characters), has a
    non-string item, or is empty. ``texts`` itself is not modified.

    Example::

        >>> tok = train_hf_tokenizer(["the cat sat on the mat"] * 50, vocab_size=270)
        >>> len(tok), tok.pad_token, tok.pad_token_id, tok.eos_token, tok.eos_token_id, tok.bos_token_id
        (270, '<pad>', 0, '<|endoftext|>', 1, 1)
        >>> tok.decode(tok("héllo ✓").input_ids)      # never seen in training, still exact
        'héllo ✓'
    """
    # TODO(w19_pretrained.train_hf_tokenizer): write your implementation here.
    raise NotImplementedError("w19_pretrained.train_hf_tokenizer is not implemented yet (try `kata hint w19_pretrained.train_hf_tokenizer`)")


def build_tiny_causal_lm(tokenizer, n_layer: int = 2, n_embd: int = 32, n_head: int = 2, n_positions: int = 128):
    """A new, randomly initialised ``GPT2LMHeadModel`` whose vocabulary and special ids agree with ``tokenizer``.

    Build a ``transformers.models.gpt2.GPT2Config`` and the model from it (no download: the weights are
    random). Every other setting keeps GPT-2's default (dropout 0.1, tied input and output embeddings, ...).

    - ``vocab_size`` is ``len(tokenizer)``, which counts tokens added after training
      (``tokenizer.add_tokens``); ``tokenizer.vocab_size`` does NOT count them, and an embedding table
      smaller than the tokenizer's ids fails with an index error on the first added token.
    - ``bos_token_id``, ``eos_token_id`` and ``pad_token_id`` come from the tokenizer. ``GPT2Config`` defaults
      bos and eos to 50256 (the real GPT-2's end-of-text), an id far outside a small vocabulary: generation
      would never stop at your tokenizer's end-of-text.
    - ``n_layer``, ``n_embd``, ``n_head``, ``n_positions`` are the config fields of the same names (the number
      of blocks, the width, the number of heads, the longest sequence).
    - The model saves with ``save_pretrained(folder)`` and loads back with
      ``GPT2LMHeadModel.from_pretrained(folder)`` with the same config and the same outputs.

    Errors: ``ValueError`` when ``n_embd`` is not divisible by ``n_head`` (naming both), and when the
    tokenizer has no pad token or no eos token.

    Example::

        >>> tok = train_hf_tokenizer(texts, vocab_size=300)
        >>> model = build_tiny_causal_lm(tok, n_layer=2, n_embd=32, n_head=2)
        >>> model.config.vocab_size == len(tok), model.config.eos_token_id, model.config.pad_token_id
        (True, 1, 0)
        >>> sum(p.numel() for p in model.parameters())   # V*E + P*E + L*(12*E*E + 13*E) + 2*E
        39168
    """
    # TODO(w19_pretrained.build_tiny_causal_lm): write your implementation here.
    raise NotImplementedError("w19_pretrained.build_tiny_causal_lm is not implemented yet (try `kata hint w19_pretrained.build_tiny_causal_lm`)")


def text_generation(model, tokenizer, prompt: str, max_new_tokens: int = 20) -> str:
    """Continue ``prompt`` greedily with a ``transformers.pipeline("text-generation", ...)``; return the text.

    The learning path's version called ``generator("The future of AI is", max_length=100, ...)``. But
    ``max_length`` counts the prompt's tokens too: a long prompt gets fewer new tokens, or none at all. Use
    ``max_new_tokens``, which counts only the tokens generated. Decode greedily (``do_sample=False``): at each
    step the most likely token.

    - Build the pipeline from the objects you are given: ``pipeline("text-generation", model=model,
      tokenizer=tokenizer)``. Return ``result[0]["generated_text"]``: the prompt followed by the continuation.
    - Generation stops early when the model produces the eos token; the special tokens are not in the text.
    - The result is the text of ``model.generate(**tokenizer(prompt, return_tensors="pt"),
      max_new_tokens=max_new_tokens, do_sample=False)`` decoded with ``skip_special_tokens=True``.
    - Dropout must be off while generating, or "greedy" is random: call ``model.eval()`` first. Then put the
      model back in the mode it was in (``model.train(was_training)``), even when generation fails: the caller
      may be in the middle of training it. The model's weights are not changed.
    - The pipeline sets ``tokenizer.padding_side = "left"`` for a decoder-only model (so that batched prompts
      end where generation starts). Put the tokenizer's ``padding_side`` back afterwards too: the caller's
      tokenizer must pad as before (``CausalLMDataset`` and ``Trainer`` use it later).

    Errors: ``ValueError`` when ``max_new_tokens`` is not a positive int.

    Example::

        >>> text_generation(model, tok, "the cat", max_new_tokens=5)   # random tiny model: random words
        'the cat mat mat the sat on'
    """
    # TODO(w19_pretrained.text_generation): write your implementation here.
    raise NotImplementedError("w19_pretrained.text_generation is not implemented yet (try `kata hint w19_pretrained.text_generation`)")


class CausalLMDataset(torch.utils.data.Dataset):
    """A ``torch`` dataset of padded, tokenized texts for causal language modelling: the learning path's
    ``CustomDataset``, fixed.

    ``CausalLMDataset(texts, tokenizer, max_length)[i]`` is a dict of three 1-D ``torch.long`` tensors of
    length ``max_length``, ready for ``Trainer`` or a ``DataLoader``:

    - ``input_ids`` and ``attention_mask``: ``tokenizer(texts[i], truncation=True, padding="max_length",
      max_length=max_length, return_tensors="pt")``, flattened to 1-D. Longer texts are cut to
      ``max_length`` tokens; shorter ones are padded on the tokenizer's ``padding_side``.
    - ``labels``: a copy of ``input_ids`` with **-100 wherever attention_mask is 0**. ``-100`` is the
      ``ignore_index`` of the model's cross-entropy loss, so padding adds nothing to the loss. The learning
      path used ``labels = input_ids``: the model was then also trained to predict padding (and with
      ``pad_token = eos_token``, to end every text with a run of end-of-text tokens). Use the attention
      mask, not the pad id, to find the padding: when pad and eos share one id, a real end-of-text must
      keep its label. (You do not shift the labels: GPT-2 shifts them inside its loss.)

    ``len(dataset)`` is the number of texts. The dataset keeps its own copy of the list, so later changes
    to the caller's list do not change it, and it does not modify the list.

    Errors (in ``__init__``): ``ValueError`` when the tokenizer has no pad token, when ``max_length`` is not a
    positive int, or when ``texts`` is a single string, has a non-string item, or is empty.

    Example::

        >>> ds = CausalLMDataset(["the cat"], tok, max_length=5)
        >>> ds[0]                          # the ids depend on your trained tokenizer; pad is 0
        {'input_ids': tensor([278, 262, 0, 0, 0]), 'attention_mask': tensor([1, 1, 0, 0, 0]),
         'labels': tensor([278, 262, -100, -100, -100])}
    """

    def __init__(self, texts: Sequence[str], tokenizer, max_length: int = 512) -> None:
        # TODO(w19_pretrained.CausalLMDataset): write your implementation here.
        raise NotImplementedError("w19_pretrained.CausalLMDataset.__init__ is not implemented yet (try `kata hint w19_pretrained.CausalLMDataset`)")

    def __len__(self) -> int:
        # TODO(w19_pretrained.CausalLMDataset): write your implementation here.
        raise NotImplementedError("w19_pretrained.CausalLMDataset.__len__ is not implemented yet (try `kata hint w19_pretrained.CausalLMDataset`)")

    def __getitem__(self, idx: int) -> dict[str, Tensor]:
        # TODO(w19_pretrained.CausalLMDataset): write your implementation here.
        raise NotImplementedError("w19_pretrained.CausalLMDataset.__getitem__ is not implemented yet (try `kata hint w19_pretrained.CausalLMDataset`)")


def fine_tune(model, tokenizer, texts: Sequence[str], output_dir: str | Path, epochs: int = 1,
              batch_size: int = 2, learning_rate: float = 5e-4, max_length: int = 32, seed: int = 0) -> list[float]:
    """Fine-tune ``model`` on ``texts`` with ``transformers.Trainer`` on the CPU; return the loss of every step.

    The learning path's ``fine_tune_model``, offline and for transformers 5:

    - the training data is ``CausalLMDataset(texts, tokenizer, max_length)`` (your class above);
    - ``TrainingArguments(output_dir=str(output_dir), num_train_epochs=epochs,
      per_device_train_batch_size=batch_size, learning_rate=learning_rate, seed=seed, use_cpu=True,
      report_to="none", logging_steps=1)``; everything else keeps its default (AdamW without weight decay, a
      learning rate that decays linearly to 0, no warmup, gradients clipped to norm 1). ``report_to="none"``
      sends nothing to wandb or tensorboard; ``logging_steps=1`` records the loss of every optimizer step;
    - ``Trainer(model=model, args=args, train_dataset=..., processing_class=tokenizer)``: in transformers 5,
      ``processing_class`` replaces the learning path's ``tokenizer=``, and makes ``save_model`` save the
      tokenizer as well;
    - ``trainer.train()``, then ``trainer.save_model()``: ``output_dir`` then holds the model, its config and
      the tokenizer, and ``GPT2LMHeadModel.from_pretrained(output_dir)`` gives the trained model back.

    ``model`` is trained in place (the same object, with new weights). Return the list of training losses,
    one per optimizer step, in order: the entries with a ``"loss"`` key of ``trainer.state.log_history``.
    With ``seed`` fixed, the run is reproducible: the same inputs give the same losses and weights. (Trainer
    seeds torch's global random generator with it, as ``transformers.set_seed`` does.)

    Example::

        >>> losses = fine_tune(model, tok, texts, tmp_dir, epochs=3)
        >>> len(losses) == 3 * math.ceil(len(texts) / 2), losses[-1] < losses[0]
        (True, True)
    """
    # TODO(w19_pretrained.fine_tune): write your implementation here.
    raise NotImplementedError("w19_pretrained.fine_tune is not implemented yet (try `kata hint w19_pretrained.fine_tune`)")


class LoRALinear(nn.Module):
    """LoRA from scratch: a frozen ``nn.Linear`` plus a trainable low-rank update, ``W x + (alpha / r) B A x``.

    LoRA (low-rank adaptation) fine-tunes a big weight ``W`` (out, in) without changing it: it learns two
    small matrices ``A`` (r, in) and ``B`` (out, r) with r much smaller than in and out, and uses
    ``W + (alpha / r) * B @ A`` instead of ``W``. Only ``r * (in + out)`` numbers train instead of
    ``out * in``.

    Layout (the checks copy weights in by these names, and compare with ``peft``'s LoRA layer):

    - ``self.base``: the ``nn.Linear`` you were given (the same object), frozen: all its parameters get
      ``requires_grad=False``. ``lora_A`` and ``lora_B`` are the only trainable parameters.
    - ``self.lora_A``: ``nn.Parameter`` of shape (r, in), initialised like ``peft`` does, with
      ``nn.init.kaiming_uniform_(A, a=math.sqrt(5))``.
    - ``self.lora_B``: ``nn.Parameter`` of shape (out, r), initialised to **zeros**, so that at the start the
      layer computes exactly what ``base`` computes (training starts from the pre-trained model).
    - ``self.scaling = alpha / r``. Dividing by r keeps the size of the update about the same when you try
      another rank; scaling by ``alpha`` alone makes a larger r a larger update.
    - ``self.dropout = nn.Dropout(dropout)``, applied to the input of the adapter only:
      ``forward(x) = base(x) + dropout(x) @ A.T @ B.T * scaling``. ``x`` is (..., in), any leading dims.
    - A and B have the dtype and device of ``base.weight``.

    ``merge()`` adds ``scaling * B @ A`` into ``base.weight`` (so inference costs nothing extra) and sets
    ``self.merged = True``; ``forward`` then returns ``base(x)`` alone. ``unmerge()`` subtracts it again and
    sets ``merged = False``. Merging twice (or unmerging an unmerged layer) changes nothing. Merged or not,
    the output is the same. Both work without recording gradients.

    Errors: ``ValueError`` when ``r`` is not a positive int.

    Example::

        >>> lora = LoRALinear(nn.Linear(16, 8), r=4, alpha=8)
        >>> lora.lora_A.shape, lora.lora_B.shape, lora.scaling
        (torch.Size([4, 16]), torch.Size([8, 4]), 2.0)
        >>> [n for n, p in lora.named_parameters() if p.requires_grad]
        ['lora_A', 'lora_B']
    """

    def __init__(self, base: nn.Linear, r: int, alpha: float, dropout: float = 0.0) -> None:
        # TODO(w19_pretrained.LoRALinear): write your implementation here.
        raise NotImplementedError("w19_pretrained.LoRALinear.__init__ is not implemented yet (try `kata hint w19_pretrained.LoRALinear`)")

    def delta_weight(self) -> Tensor:
        """The update ``scaling * B @ A``, shape (out, in) like ``base.weight``."""
        # TODO(w19_pretrained.LoRALinear): write your implementation here.
        raise NotImplementedError("w19_pretrained.LoRALinear.delta_weight is not implemented yet (try `kata hint w19_pretrained.LoRALinear`)")

    def forward(self, x: Tensor) -> Tensor:
        # TODO(w19_pretrained.LoRALinear): write your implementation here.
        raise NotImplementedError("w19_pretrained.LoRALinear.forward is not implemented yet (try `kata hint w19_pretrained.LoRALinear`)")

    @torch.no_grad()
    def merge(self) -> None:
        # TODO(w19_pretrained.LoRALinear): write your implementation here.
        raise NotImplementedError("w19_pretrained.LoRALinear.merge is not implemented yet (try `kata hint w19_pretrained.LoRALinear`)")

    @torch.no_grad()
    def unmerge(self) -> None:
        # TODO(w19_pretrained.LoRALinear): write your implementation here.
        raise NotImplementedError("w19_pretrained.LoRALinear.unmerge is not implemented yet (try `kata hint w19_pretrained.LoRALinear`)")


def setup_lora_model(model, r: int = 8, alpha: float = 32, dropout: float = 0.1,
                     target_modules: Sequence[str] | None = None):
    """Add LoRA adapters to a GPT-2 with ``peft`` and return the ``PeftModel``: the learning path's
    ``setup_lora_model``, for a model you pass in.

    Build a ``peft.LoraConfig`` and call ``peft.get_peft_model(model, config)``:

    - ``task_type=TaskType.CAUSAL_LM`` (you get a ``PeftModelForCausalLM``, which keeps ``generate``),
      ``inference_mode=False`` (the adapters train), ``r=r``, ``lora_alpha=alpha``, ``lora_dropout=dropout``;
    - ``target_modules``: the names of the layers that get adapters; ``None`` means ``["c_attn"]``, GPT-2's
      fused query/key/value projection (the learning path left it to peft's built-in guess for GPT-2);
    - ``fan_in_fan_out=True``: GPT-2's layers are ``transformers.pytorch_utils.Conv1D``, whose weight is
      (in, out), the transpose of ``nn.Linear``'s (out, in). peft must know, or its update has the wrong shape.

    ``get_peft_model`` changes ``model`` in place (it swaps the target layers for LoRA layers and freezes
    everything else) and returns the wrapper. Afterwards only the adapters train: for each target layer with
    ``in`` inputs and ``out`` outputs, ``r * (in + out)`` numbers (``lora_A`` is (r, in), ``lora_B`` (out, r)). For
    GPT-2's ``c_attn`` that is ``n_layer * r * (n_embd + 3 * n_embd)`` in all. ``merge_and_unload()`` then gives
    back a plain GPT-2 whose ``c_attn.weight`` is ``W + (alpha / r) * (B @ A).T``: the same update as your
    ``LoRALinear.merge``, transposed for ``Conv1D``.

    Errors: ``ValueError`` when ``r`` is not a positive int.

    Example::

        >>> peft_model = setup_lora_model(build_tiny_causal_lm(tok, n_layer=2, n_embd=32), r=4, alpha=8)
        >>> peft_model.get_nb_trainable_parameters()[0]     # 2 layers * 4 * (32 + 96)
        1024
    """
    # TODO(w19_pretrained.setup_lora_model): write your implementation here.
    raise NotImplementedError("w19_pretrained.setup_lora_model is not implemented yet (try `kata hint w19_pretrained.setup_lora_model`)")


class PromptTuning(nn.Module):
    """Prompt tuning: learn ``num_virtual_tokens`` input embeddings, prepended to every input of a frozen model.

    Instead of changing any weight of the model, prompt tuning trains a few "virtual tokens": vectors that sit
    in front of the real tokens' embeddings, as if the prompt were words the model had never seen. With
    ``P = num_virtual_tokens`` and a model of width ``E``, only ``P * E`` numbers train.

    Layout:

    - ``self.model``: the causal LM you were given (a ``GPT2LMHeadModel``, say), frozen: all its parameters get
      ``requires_grad=False``. ``self.prompt`` is the only trainable parameter.
    - ``self.prompt``: ``nn.Parameter`` of shape (P, E), in the dtype and on the device of the model's input
      embeddings (``model.get_input_embeddings().weight``), initialised as ``torch.randn(P, E) *
      model.config.initializer_range`` (the scale of the model's own embeddings).
    - ``self.num_virtual_tokens = P``.

    ``forward(input_ids, attention_mask=None, labels=None)`` with ``input_ids`` (B, T):

    1. ``embeds = model.get_input_embeddings()(input_ids)``, (B, T, E);
    2. ``inputs_embeds = cat([prompt expanded to (B, P, E), embeds], dim=1)``: the prompt comes FIRST;
    3. ``attention_mask`` (all ones when ``None``) gets P ones in front: every token may see the prompt;
    4. ``labels``, when given, get P times ``-100`` in front: the prompt positions predict nothing;
    5. return ``self.model(inputs_embeds=..., attention_mask=..., labels=...)`` as it is: its ``logits`` are
       (B, P + T, V) and its ``loss`` (when labels are given) covers only the real tokens' labels.

    This is what ``peft``'s ``PromptTuningConfig`` does for a causal LM; the checks compare with it.

    Errors: ``ValueError`` when ``num_virtual_tokens`` is not a positive int.

    Example::

        >>> pt = PromptTuning(model, num_virtual_tokens=4)
        >>> [n for n, p in pt.named_parameters() if p.requires_grad]
        ['prompt']
        >>> pt(torch.tensor([[5, 6, 7]])).logits.shape     # 4 virtual + 3 real positions
        torch.Size([1, 7, 270])
    """

    def __init__(self, model, num_virtual_tokens: int) -> None:
        # TODO(w19_pretrained.PromptTuning): write your implementation here.
        raise NotImplementedError("w19_pretrained.PromptTuning.__init__ is not implemented yet (try `kata hint w19_pretrained.PromptTuning`)")

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, labels: Tensor | None = None):
        # TODO(w19_pretrained.PromptTuning): write your implementation here.
        raise NotImplementedError("w19_pretrained.PromptTuning.forward is not implemented yet (try `kata hint w19_pretrained.PromptTuning`)")
