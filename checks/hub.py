"""Hugging Face models and tokenizers in the checks: real pre-trained ones for the optional ``hub`` checks,
tokenizers trained on the spot, and a warm-up.

Every other check builds tiny random models from configs and needs no network. A ``hub`` check compares the
learner's code with a real model (GPT-2's 124M weights, say) when those weights are already in the local
Hugging Face cache, or when the learner allows a download with ``KATA_ALLOW_DOWNLOAD=1``; otherwise it is
skipped with the command that would fetch them.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence

import pytest

WEIGHT_FILES = ["config.json", "*.safetensors"]


def pretrained_or_skip(name: str) -> str:
    """The local folder holding ``name``'s config and safetensors weights, or skip the calling check."""
    from huggingface_hub import snapshot_download

    allowed = os.environ.get("KATA_ALLOW_DOWNLOAD") == "1"
    try:
        return snapshot_download(name, allow_patterns=WEIGHT_FILES, local_files_only=not allowed)
    except Exception as err:  # noqa: BLE001 - offline, not cached, or the hub unreachable: all mean "skip"
        pytest.skip(
            f"the real {name} weights are not in the Hugging Face cache ({type(err).__name__}); "
            f"set KATA_ALLOW_DOWNLOAD=1 to download them, or run `hf download {name}`"
        )


def warm_up_saving() -> None:
    """Save and reload a tiny GPT-2 once, so that ``kata watch``'s re-checks find transformers ready.

    The first ``save_pretrained``/``from_pretrained`` in a process compiles the library's weight-renaming
    patterns (about 0.15 s); a check file calls this from its ``warm_up()``.
    """
    import tempfile

    from transformers import GPT2Config
    from transformers.models.gpt2 import GPT2LMHeadModel

    config = GPT2Config(vocab_size=8, n_positions=4, n_embd=4, n_layer=1, n_head=1, bos_token_id=0, eos_token_id=0)
    with tempfile.TemporaryDirectory() as folder:
        GPT2LMHeadModel(config).save_pretrained(folder)
        GPT2LMHeadModel.from_pretrained(folder)


@functools.cache
def _byte_level_bpe(texts: tuple[str, ...], vocab_size: int, special_tokens: tuple[str, ...]) -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(special_tokens), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())  # every byte has a token
    tokenizer.train_from_iterator(texts, trainer)
    return tokenizer.to_str()


def byte_level_bpe(texts: Sequence[str], vocab_size: int,
                   special_tokens: Sequence[str] = ("<pad>", "<|endoftext|>")) -> str:
    """A byte-level BPE tokenizer (GPT-2's kind) trained on ``texts``, as the JSON ``Tokenizer.from_str`` reads.

    The special tokens get the ids 0, 1, ... in their order; any text can be encoded, since every byte has a
    token. Training takes milliseconds on a few hundred short texts, and the result is kept per process, so a
    check file and a process it starts (a served app) build the same tokenizer.
    """
    return _byte_level_bpe(tuple(texts), vocab_size, tuple(special_tokens))
