"""Real pre-trained models for the optional ``hub`` checks, from the local Hugging Face cache.

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
