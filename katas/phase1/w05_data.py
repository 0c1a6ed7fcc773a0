"""Kata w05_data (Weeks 5-6): data handling & visualisation.

The learning path's week 5-6 sample loads a CSV with pandas, plots a histogram of text lengths with
``plt.hist(...); plt.show()`` and wraps (text, label) pairs in a torch ``Dataset`` for a ``DataLoader``
with ``shuffle=True``. Here you write the same pieces so that they can be trusted in a pipeline:

1. ``text_length_stats``      pandas: a length column, ``describe()``, an optional ``groupby``;
2. ``plot_length_histogram``  matplotlib's object API: return a ``Figure``, never ``plt.show()``;
3. ``TextDataset``            the learning path's dataset, with its lengths checked;
4. ``CharWindowDataset``      (x, y) training windows for a character-level language model;
5. ``pad_collate``            batching sequences of different lengths, with an attention mask;
6. ``train_val_split``        a reproducible, disjoint train/validation split;
7. ``make_dataloader``        a DataLoader whose shuffling depends on its seed and nothing else.

Run ``kata check w05_data`` to see what is left, ``kata hint w05_data.<exercise>`` when stuck.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from torch.utils.data import DataLoader, Dataset


def text_length_stats(df: pd.DataFrame, text_col: str = "text", by: str | None = None) -> pd.Series | pd.DataFrame:
    """Summary statistics of the text lengths, in characters, of ``df[text_col]``, optionally per group.

    This is the learning path's ``df.describe()`` step, done on purpose: compute a length for every text, then
    describe those lengths.

    - A text's length is its number of *characters* (Unicode code points), what ``len(text)`` and
      ``Series.str.len()`` count. Not bytes: ``"日本語"`` is 3 characters but 9 UTF-8 bytes, and a
      character-level model sees 3 tokens.
    - ``by=None``: return ``lengths.describe()``, a Series indexed by
      ``count, mean, std, min, 25%, 50%, 75%, max``.
    - ``by="lang"``: return one row of those eight statistics per group, as
      ``groupby(...)[...].describe()`` gives it: a DataFrame indexed by the group values, with those
      eight columns. (``std`` of a group with one text is NaN, as pandas gives it.)
    - Do not modify ``df``: no new column in the caller's frame (``df.assign(...)`` returns a copy).
    - ``df`` may have any index: a frame filtered with ``df[df.lang == "en"]`` keeps its row labels, with
      gaps. Keep every length on its own row's label (``Series.str.len()`` does); a fresh
      ``pd.Series([len(t) for t in ...])`` is labelled ``0, 1, 2, ...`` and pairs with the wrong rows.
    - An empty frame (0 rows) raises ``ValueError`` whose message says the frame is empty; a
      ``text_col`` or ``by`` that is not a column raises ``ValueError`` naming that column.

    Every text is a ``str``.

    Example:
        >>> df = pd.DataFrame({"text": ["hi", "héllo", "日本語"], "lang": ["en", "fr", "ja"]})
        >>> float(text_length_stats(df)["max"])  # "héllo": 5 characters (6 bytes)
        5.0
        >>> float(text_length_stats(df, by="lang").loc["ja", "mean"])
        3.0
    """
    # TODO(w05_data.text_length_stats): write your implementation here.
    raise NotImplementedError("w05_data.text_length_stats is not implemented yet (try `kata hint w05_data.text_length_stats`)")


def plot_length_histogram(
    lengths: Sequence[float] | np.ndarray | pd.Series,
    bins: int = 50,
    title: str = "Distribution of Text Lengths",
) -> Figure:
    """Draw a histogram of ``lengths`` and return the ``matplotlib.figure.Figure``.

    The learning path's code draws with pyplot's global state (``plt.figure(); plt.hist(...); plt.show()``). That
    blocks a script until the window is closed, does nothing (or warns) on a headless machine, and
    leaves a figure registered in pyplot after every call, so a loop that plots leaks memory. Use the
    object API instead and let the caller decide whether to show, save or test the figure:

    - create the figure with ``matplotlib.figure.Figure()`` (pyplot never hears of it) and its axes
      with ``fig.subplots()``; if you use ``plt.subplots()``, ``plt.close(fig)`` before returning so
      that ``plt.get_fignums()`` is the same after the call as before;
    - never call ``plt.show()``;
    - one Axes, one bar per bin: ``ax.hist(lengths, bins=bins)`` (or ``np.histogram`` + ``ax.bar``),
      so the bar heights are the counts and sum to ``len(lengths)``, and the bins split
      ``[min(lengths), max(lengths)]`` into ``bins`` equal widths (the default range of both; not
      ``range=(0, max(lengths))``);
    - title ``title`` (``ax.set_title``, or ``fig.suptitle``), x label ``"Text Length"``, y label
      ``"Frequency"``.

    ``lengths`` is a list, a 1-D array or a Series (``text_length_stats``' length column, say), and it
    is not modified (``np.asarray`` of an array is that same array: sort a copy, if you sort).
    Empty ``lengths`` or ``bins < 1`` raise ``ValueError``.

    Example:
        >>> fig = plot_length_histogram([3, 5, 5, 8], bins=2)
        >>> [float(p.get_height()) for p in fig.axes[0].patches]  # 3, 5, 5 | 8
        [3.0, 1.0]
        >>> fig.savefig("lengths.png")  # the caller decides what to do with it
    """
    # TODO(w05_data.plot_length_histogram): write your implementation here.
    raise NotImplementedError("w05_data.plot_length_histogram is not implemented yet (try `kata hint w05_data.plot_length_histogram`)")


class TextDataset(Dataset):
    """The learning path's dataset of (text, label) pairs, with its lengths checked.

    ``dataset[i]`` is ``(texts[i], labels[i])`` and ``len(dataset)`` the number of pairs. Two things
    the learning path's version gets wrong:

    - it accepts 5 texts and 4 labels, and the mistake only shows up (as an IndexError deep inside a
      DataLoader) when the last batch is drawn. Raise ``ValueError`` in ``__init__`` instead, naming
      both lengths;
    - it indexes ``texts`` as given. A pandas Series cut from a filtered frame (``df[df.lang == "en"]``)
      keeps its index, with gaps, and ``series[0]`` looks up the *label* 0, not the first row. Store
      plain lists (``list(texts)``) so indexing is by position.

    An index past the end raises ``IndexError`` (that also ends ``for pair in dataset``).

    Example:
        >>> ds = TextDataset(["good", "bad"], [1, 0])
        >>> len(ds), ds[1]
        (2, ('bad', 0))
        >>> TextDataset(["a", "b"], [1])
        Traceback (most recent call last):
        ValueError: got 2 texts but 1 labels; every text needs exactly one label
    """

    def __init__(self, texts: Sequence[str], labels: Sequence[int]) -> None:
        """Store the pairs; ``ValueError`` when ``len(texts) != len(labels)``."""
        # TODO(w05_data.TextDataset): write your implementation here.
        raise NotImplementedError("w05_data.TextDataset.__init__ is not implemented yet (try `kata hint w05_data.TextDataset`)")

    def __len__(self) -> int:
        """The number of (text, label) pairs."""
        # TODO(w05_data.TextDataset): write your implementation here.
        raise NotImplementedError("w05_data.TextDataset.__len__ is not implemented yet (try `kata hint w05_data.TextDataset`)")

    def __getitem__(self, idx: int) -> tuple[str, int]:
        """``(texts[idx], labels[idx])``, by position."""
        # TODO(w05_data.TextDataset): write your implementation here.
        raise NotImplementedError("w05_data.TextDataset.__getitem__ is not implemented yet (try `kata hint w05_data.TextDataset`)")


class CharWindowDataset(Dataset):
    """Every (x, y) training window of a character-level language model over a stream of token ids.

    Window ``i`` is ``x = ids[i : i + block_size]`` and ``y = ids[i + 1 : i + block_size + 1]``: the
    target at each position is the *next* token, so ``y[t] == x[t + 1]`` and ``y[-1]`` is the token
    after the window. Both are ``torch.long`` tensors of shape ``(block_size,)``.

    - ``len(dataset) == len(ids) - block_size``: window ``i`` needs ``block_size + 1`` ids, so the
      last start is ``len(ids) - block_size - 1``, and the last window's last target is ``ids[-1]``.
      One less and the end of the text is never trained on; one more and the last ``y`` is short.
    - Negative indices count from the end as for a list; any other index outside ``range(len)``
      raises ``IndexError``.
    - ``ids`` is a list of ints or a 1-D tensor of any integer dtype (``int32`` too, or a strided
      slice). The dataset keeps its own copy: changing ``ids`` afterwards does not change the windows
      (``torch.as_tensor`` of a ``torch.long`` tensor is that same tensor; clone it).
    - ``block_size < 1``, or fewer than ``block_size + 1`` ids (not even one window), raise
      ``ValueError``.

    Example:
        >>> ds = CharWindowDataset([10, 11, 12, 13, 14], block_size=3)
        >>> len(ds)
        2
        >>> ds[1]
        (tensor([11, 12, 13]), tensor([12, 13, 14]))
    """

    def __init__(self, ids: Sequence[int] | torch.Tensor, block_size: int) -> None:
        """Keep the ids as a 1-D long tensor; validate ``block_size``."""
        # TODO(w05_data.CharWindowDataset): write your implementation here.
        raise NotImplementedError("w05_data.CharWindowDataset.__init__ is not implemented yet (try `kata hint w05_data.CharWindowDataset`)")

    def __len__(self) -> int:
        """The number of windows: ``len(ids) - block_size``."""
        # TODO(w05_data.CharWindowDataset): write your implementation here.
        raise NotImplementedError("w05_data.CharWindowDataset.__len__ is not implemented yet (try `kata hint w05_data.CharWindowDataset`)")

    def __getitem__(self, idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Window ``idx`` as ``(x, y)``, each of shape ``(block_size,)`` and dtype ``torch.long``."""
        # TODO(w05_data.CharWindowDataset): write your implementation here.
        raise NotImplementedError("w05_data.CharWindowDataset.__getitem__ is not implemented yet (try `kata hint w05_data.CharWindowDataset`)")


def pad_collate(
    batch: Sequence[Sequence[int] | torch.Tensor], pad_id: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-pad a batch of variable-length id sequences; return ``(ids, attention_mask, lengths)``.

    Use it as a DataLoader's ``collate_fn``: the loader hands it a list of ``B`` sequences (lists of
    ints or 1-D tensors) of lengths ``L_0 .. L_{B-1}`` (a length may be 0). With ``T = max(L_i)``:

    - ``ids``: ``(B, T)`` ``torch.long``; row ``i`` is sequence ``i`` followed by ``T - L_i`` copies of
      ``pad_id`` (right padding: the real tokens start at position 0);
    - ``attention_mask``: ``(B, T)`` ``torch.long``, 1 on real tokens and 0 on padding, so
      ``attention_mask.sum(1) == lengths``. Build it from the lengths, not from ``ids != pad_id``:
      ``pad_id`` (often 0) can also be a real token inside a sequence;
    - ``lengths``: ``(B,)`` ``torch.long``, the ``L_i``.

    Row ``i`` is ``batch[i]``: no sorting by length (``pack_padded_sequence`` takes
    ``enforce_sorted=False``), and neither the batch list nor its sequences are modified. Sequences
    may be ``int32`` or strided tensors; the outputs are ``torch.long`` all the same.

    An empty batch raises ``ValueError``.

    Example:
        >>> ids, mask, lengths = pad_collate([[5, 6, 7], [8]], pad_id=0)
        >>> ids
        tensor([[5, 6, 7],
                [8, 0, 0]])
        >>> mask
        tensor([[1, 1, 1],
                [1, 0, 0]])
        >>> lengths
        tensor([3, 1])
    """
    # TODO(w05_data.pad_collate): write your implementation here.
    raise NotImplementedError("w05_data.pad_collate is not implemented yet (try `kata hint w05_data.pad_collate`)")


def train_val_split(n: int, val_fraction: float = 0.1, seed: int = 0) -> tuple[list[int], list[int]]:
    """Split the indices ``range(n)`` at random into ``(train_indices, val_indices)``, reproducibly.

    - ``len(val_indices) == round(n * val_fraction)`` (Python's ``round``, which rounds halves to even:
      ``n=10, val_fraction=0.25`` gives 2); ``train_indices`` holds the rest;
    - disjoint (no index on both sides: that would leak training data into validation) and covering
      (every index on one side);
    - the same ``(n, val_fraction, seed)`` gives the same two lists, whatever happened to the global
      random state before; another seed gives another split;
    - never touch the global RNG: no ``torch.manual_seed``/``np.random.seed``/``random.seed``, no
      ``torch.randperm(n)`` without a generator. Make your own: ``torch.Generator().manual_seed(seed)``
      or ``np.random.default_rng(seed)``. Seeding the global RNG is reproducible, but it silently resets
      the random stream of everything else in the program.

    Both lists hold Python ints, ready for ``torch.utils.data.Subset(dataset, indices)``.

    ``ValueError`` when ``n < 2``, when ``val_fraction`` is not strictly between 0 and 1, or when the
    rounding leaves one side empty (``n=3, val_fraction=0.1``).

    Example:
        >>> train, val = train_val_split(10, 0.2, seed=0)
        >>> len(train), len(val), sorted(train + val) == list(range(10))
        (8, 2, True)
    """
    # TODO(w05_data.train_val_split): write your implementation here.
    raise NotImplementedError("w05_data.train_val_split is not implemented yet (try `kata hint w05_data.train_val_split`)")


def make_dataloader(
    dataset: Dataset,
    batch_size: int,
    shuffle: bool = True,
    seed: int = 0,
    collate_fn: Callable[[list[Any]], Any] | None = None,
) -> DataLoader:
    """A ``DataLoader`` over ``dataset`` whose shuffling depends on ``seed`` and nothing else.

    The learning path's ``DataLoader(dataset, batch_size=32, shuffle=True)`` draws its order from torch's
    *global* RNG: the order changes whenever anything else draws a random number or calls
    ``torch.manual_seed``, so two runs of "the same" experiment see different batches.

    - ``shuffle=True``: every epoch (every ``iter(loader)``) is a new permutation, and two loaders
      made with the same seed give the same sequence of epochs, even if ``torch.manual_seed(...)``
      is called in between; another seed gives another order;
    - ``shuffle=False``: the dataset's order, ``0, 1, 2, ...``;
    - batches of ``batch_size`` (the last one may be smaller), combined by ``collate_fn`` when given
      (``pad_collate``, say), else by the default collate;
    - making the loader must not touch the global RNG (so no ``torch.manual_seed(seed)``).

    ``DataLoader`` takes a ``generator=`` argument for exactly this.

    Example:
        >>> a = make_dataloader(list(range(6)), batch_size=4, seed=1)
        >>> b = make_dataloader(list(range(6)), batch_size=4, seed=1)
        >>> [x.tolist() for x in a] == [x.tolist() for x in b]
        True
    """
    # TODO(w05_data.make_dataloader): write your implementation here.
    raise NotImplementedError("w05_data.make_dataloader is not implemented yet (try `kata hint w05_data.make_dataloader`)")
