"""Shared torch helpers for checks: drawn seeds, and tensors and modules made only from them.

Nothing here touches torch's global RNG: every random tensor comes from a ``torch.Generator`` seeded
with a value hypothesis drew, so a failing example replays exactly (NumPy strategies live in
``checks/strategies.py``, which does not import torch).
"""

from __future__ import annotations

import contextlib

import torch
from hypothesis import strategies as st

seeds = st.integers(0, 2**31 - 1)


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randn(gen: torch.Generator, *shape: int, scale: float = 1.0, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.randn(*shape, generator=gen, dtype=dtype) * scale


def refill_(module: torch.nn.Module, seed: int, scale: float = 0.5) -> torch.nn.Module:
    """Overwrite every parameter of ``module`` with seeded values, so no check depends on the global RNG."""
    gen = generator(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * scale)
    return module


@contextlib.contextmanager
def seeded(seed: int):
    """Run code that draws from torch's global RNG (``nn.Module`` init, dropout) with a drawn seed,
    restoring the global state afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield
