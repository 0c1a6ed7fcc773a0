"""Hugging Face models in the checks: real pre-trained ones for the optional ``hub`` checks, and a warm-up.

Every other check builds tiny random models from configs and needs no network. A ``hub`` check compares the
learner's code with a real model (GPT-2's 124M weights, say) when those weights are already in the local
Hugging Face cache, or when the learner allows a download with ``KATA_ALLOW_DOWNLOAD=1``; otherwise it is
skipped with the command that would fetch them.
"""

from __future__ import annotations

import os

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
