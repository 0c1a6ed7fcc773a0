"""Reference solutions for w05_data (Weeks 5-6: data handling & visualisation)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from torch.utils.data import DataLoader, Dataset


def text_length_stats(df: pd.DataFrame, text_col: str = "text", by: str | None = None) -> pd.Series | pd.DataFrame:
    """Summary statistics of the text lengths (in characters) of ``df[text_col]``, optionally per group."""
    if len(df) == 0:
        raise ValueError("the frame is empty (0 rows): there are no texts to describe")
    for column in (text_col, by):
        if column is not None and column not in df.columns:
            raise ValueError(f"{column!r} is not a column of the frame; its columns are {list(df.columns)}")
    # .str.len() counts characters (code points), the unit a character-level model sees; encoding to
    # UTF-8 first would count bytes, and every non-ASCII character would count 2 to 4 times. The lengths
    # keep df's index, so grouping them by df[by] pairs each length with its own row whatever the index,
    # and the caller's frame never gets an extra column.
    lengths = df[text_col].str.len()
    if by is None:
        return lengths.describe()
    return lengths.groupby(df[by]).describe()


def plot_length_histogram(
    lengths: Sequence[float] | np.ndarray | pd.Series,
    bins: int = 50,
    title: str = "Distribution of Text Lengths",
) -> Figure:
    """A histogram of ``lengths`` on a new Figure that pyplot knows nothing about."""
    values = np.asarray(lengths)  # a list, an array or a Series: one array API for the checks below
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"lengths must be a non-empty 1-D sequence, got shape {values.shape}")
    if bins < 1:
        raise ValueError(f"bins must be at least 1, got {bins}")
    # Figure() is the object API: no pyplot figure manager, no global "current figure", nothing to
    # close, and it renders headless (Agg) in tests, scripts and servers alike.
    fig = Figure()
    ax = fig.subplots()
    ax.hist(values, bins=bins)
    ax.set_title(title)
    ax.set_xlabel("Text Length")
    ax.set_ylabel("Frequency")
    return fig


class TextDataset(Dataset):
    """The learning path's dataset of (text, label) pairs, with its lengths checked."""

    def __init__(self, texts: Sequence[str], labels: Sequence[int]) -> None:
        # list() indexes by position: a pandas Series cut from a filtered frame has gaps in its index,
        # and series[0] would look up the *label* 0.
        self.texts = list(texts)
        self.labels = list(labels)
        if len(self.texts) != len(self.labels):
            raise ValueError(
                f"got {len(self.texts)} texts but {len(self.labels)} labels; every text needs exactly one label"
            )

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, idx: int) -> tuple[str, int]:
        # list indexing raises IndexError past the end, which also ends `for item in dataset`.
        return self.texts[idx], self.labels[idx]


class CharWindowDataset(Dataset):
    """Every (x, y) window of ``block_size`` token ids, y shifted one step to the right of x."""

    def __init__(self, ids: Sequence[int] | torch.Tensor, block_size: int) -> None:
        data = torch.as_tensor(ids, dtype=torch.long).clone()  # own copy: the caller may reuse `ids`
        if data.ndim != 1:
            raise ValueError(f"ids must be 1-D, got shape {tuple(data.shape)}")
        if block_size < 1:
            raise ValueError(f"block_size must be at least 1, got {block_size}")
        if data.numel() < block_size + 1:
            raise ValueError(
                f"one window needs block_size + 1 = {block_size + 1} ids (x plus the next token), got {data.numel()}"
            )
        self.data = data
        self.block_size = block_size

    def __len__(self) -> int:
        # Windows start at 0 .. N - block_size - 1: the last one's target is the last id.
        return self.data.numel() - self.block_size

    def __getitem__(self, idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        n = len(self)
        if idx < 0:
            idx += n
        if not 0 <= idx < n:
            raise IndexError(f"window index {idx} out of range for {n} windows")
        chunk = self.data[idx : idx + self.block_size + 1]  # block_size + 1 ids
        return chunk[:-1], chunk[1:]  # y[t] == x[t + 1]: the target is the *next* token


def pad_collate(
    batch: Sequence[Sequence[int] | torch.Tensor], pad_id: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-pad variable-length sequences into (ids, attention_mask, lengths)."""
    if len(batch) == 0:
        raise ValueError("cannot collate an empty batch")
    seqs = [torch.as_tensor(s, dtype=torch.long) for s in batch]
    for i, s in enumerate(seqs):
        if s.ndim != 1:
            raise ValueError(f"batch item {i} must be a 1-D sequence of ids, got shape {tuple(s.shape)}")
    lengths = torch.tensor([s.numel() for s in seqs], dtype=torch.long)
    width = int(lengths.max())
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, s in enumerate(seqs):
        ids[row, : s.numel()] = s  # right padding: real tokens first, pads after
        # The mask comes from the lengths, never from `ids != pad_id`: pad_id can be a real token too.
        mask[row, : s.numel()] = 1
    return ids, mask, lengths


def train_val_split(n: int, val_fraction: float = 0.1, seed: int = 0) -> tuple[list[int], list[int]]:
    """A reproducible random split of ``range(n)`` into disjoint (train, val) index lists."""
    if n < 2:
        raise ValueError(f"n must be at least 2 to split into train and validation, got {n}")
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be strictly between 0 and 1, got {val_fraction}")
    n_val = round(n * val_fraction)
    if n_val in (0, n):
        raise ValueError(
            f"val_fraction={val_fraction} of n={n} gives {n_val} validation items; both sides must be non-empty"
        )
    # A private generator: the split depends on `seed` alone, and the global RNG is left untouched.
    generator = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=generator).tolist()
    # One permutation cut in two: disjoint and covering by construction.
    return perm[n_val:], perm[:n_val]


def make_dataloader(
    dataset: Dataset,
    batch_size: int,
    shuffle: bool = True,
    seed: int = 0,
    collate_fn: Callable[[list[Any]], Any] | None = None,
) -> DataLoader:
    """A DataLoader whose shuffling depends on ``seed`` only."""
    # The loader draws each epoch's permutation from this generator: the same seed gives the same
    # sequence of epochs, and nobody else's torch.manual_seed() (or random draws) can change it.
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator, collate_fn=collate_fn)
