"""Catalogued mistakes and correct variants for w05_data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from torch.utils.data import DataLoader, RandomSampler, Sampler

from checks.harness.catalogue import mistake, variant
from reference.phase1.w05_data import CharWindowDataset, TextDataset

_STATS = ["count", "mean", "std", "min", "25%", "50%", "75%", "max"]


def _pyplot():
    # Imported on use, so that loading the catalogue never picks a GUI backend.
    import matplotlib.pyplot as plt

    return plt


# --- text_length_stats --------------------------------------------------------------------------


@mistake("text_length_stats", "counts UTF-8 bytes (str.encode(...).str.len()) instead of characters")
def text_length_stats_counts_bytes(df, text_col="text", by=None):
    if len(df) == 0:
        raise ValueError("the frame is empty")
    for column in (text_col, by):
        if column is not None and column not in df.columns:
            raise ValueError(f"{column!r} is not a column")
    lengths = df[text_col].str.encode("utf-8").str.len().rename("length")
    if by is None:
        return lengths.describe()
    return df.assign(length=lengths).groupby(by)["length"].describe()


@mistake("text_length_stats", "adds the length column to the caller's frame (df['length'] = ...) instead of a copy")
def text_length_stats_mutates_input(df, text_col="text", by=None):
    if len(df) == 0:
        raise ValueError("the frame is empty")
    for column in (text_col, by):
        if column is not None and column not in df.columns:
            raise ValueError(f"{column!r} is not a column")
    df["length"] = df[text_col].str.len()
    if by is None:
        return df["length"].describe()
    return df.groupby(by)["length"].describe()


@mistake("text_length_stats", "builds pd.Series([len(t) for t in ...]) (labelled 0, 1, 2, ...) and assigns it to a "
         "frame with another index: the lengths land on the wrong rows, or become NaN")
def text_length_stats_positional_lengths(df, text_col="text", by=None):
    if len(df) == 0:
        raise ValueError("the frame is empty")
    for column in (text_col, by):
        if column is not None and column not in df.columns:
            raise ValueError(f"{column!r} is not a column")
    lengths = pd.Series([len(text) for text in df[text_col]], name="length")
    if by is None:
        return lengths.describe()
    return df.assign(length=lengths).groupby(by)["length"].describe()


@mistake("text_length_stats", "strips surrounding whitespace before counting, so spaces and newlines are not counted")
def text_length_stats_strips(df, text_col="text", by=None):
    if len(df) == 0:
        raise ValueError("the frame is empty")
    for column in (text_col, by):
        if column is not None and column not in df.columns:
            raise ValueError(f"{column!r} is not a column")
    lengths = df[text_col].str.strip().str.len().rename("length")
    if by is None:
        return lengths.describe()
    return df.assign(length=lengths).groupby(by)["length"].describe()


@mistake("text_length_stats", "no input checks: an empty frame gives a row of NaN, a missing column a bare KeyError")
def text_length_stats_no_validation(df, text_col="text", by=None):
    lengths = df[text_col].str.len().rename("length")
    if by is None:
        return lengths.describe()
    return df.assign(length=lengths).groupby(by)["length"].describe()


def _describe(values: np.ndarray) -> list[float]:
    values = np.asarray(values, dtype=np.float64)
    std = float(np.std(values, ddof=1)) if values.size > 1 else float("nan")
    q25, q50, q75 = np.quantile(values, [0.25, 0.5, 0.75])  # linear interpolation, as pandas
    return [float(values.size), float(values.mean()), std, float(values.min()), q25, q50, q75, float(values.max())]


@variant("text_length_stats", "computes the eight statistics by hand with numpy and builds groups with a loop")
def text_length_stats_by_hand(df, text_col="text", by=None):
    if df.shape[0] == 0:
        raise ValueError("cannot describe an empty frame")
    missing = [c for c in (text_col, by) if c is not None and c not in df.columns]
    if missing:
        raise ValueError(f"no column named {missing[0]!r}")
    lengths = np.array([len(text) for text in df[text_col]])
    if by is None:
        return pd.Series(_describe(lengths), index=_STATS, name="length")
    keys = df[by].to_numpy()
    groups = sorted(set(keys.tolist()))
    rows = [_describe(lengths[keys == g]) for g in groups]
    return pd.DataFrame(rows, index=pd.Index(groups, name=by), columns=_STATS)


@variant("text_length_stats", "measures with Series.map(len) and describes a transform, groups in reverse order")
def text_length_stats_map_len(df, text_col="text", by=None):
    if not len(df.index):
        raise ValueError("empty frame: nothing to describe")
    for column in filter(None, (text_col, by)):
        if column not in df:
            raise ValueError(f"unknown column {column}")
    lengths = df[text_col].map(len)
    if by is None:
        return lengths.describe()
    stats = lengths.groupby(df[by]).describe()
    return stats.iloc[::-1]  # any group order: the checks look rows up by group


# --- plot_length_histogram ----------------------------------------------------------------------


def _check_plot_input(lengths, bins):
    values = np.asarray(lengths, dtype=np.float64)
    if values.ndim != 1 or values.size == 0:
        raise ValueError("lengths must be a non-empty 1-D sequence")
    if bins < 1:
        raise ValueError(f"bins must be at least 1, got {bins}")
    return values


def _decorate(ax, title):
    ax.set_title(title)
    ax.set_xlabel("Text Length")
    ax.set_ylabel("Frequency")


@mistake("plot_length_histogram", "calls plt.show() (as the learning path's code did): blocks a script, warns or "
         "does nothing headless")
def plot_length_histogram_shows(lengths, bins=50, title="Distribution of Text Lengths"):
    values = _check_plot_input(lengths, bins)
    fig = Figure(figsize=(10, 6))
    ax = fig.subplots()
    ax.hist(values, bins=bins)
    _decorate(ax, title)
    _pyplot().show()
    return fig


@mistake("plot_length_histogram", "draws with pyplot's global state (plt.figure, plt.hist): leaks a figure per call")
def plot_length_histogram_global_state(lengths, bins=50, title="Distribution of Text Lengths"):
    values = _check_plot_input(lengths, bins)
    plt = _pyplot()
    plt.figure(figsize=(10, 6))
    plt.hist(values, bins=bins)
    plt.title(title)
    plt.xlabel("Text Length")
    plt.ylabel("Frequency")
    return plt.gcf()


@mistake("plot_length_histogram", "ignores `bins` and lets hist use its default of 10 bins")
def plot_length_histogram_default_bins(lengths, bins=50, title="Distribution of Text Lengths"):
    values = _check_plot_input(lengths, bins)
    fig = Figure()
    ax = fig.subplots()
    ax.hist(values)
    _decorate(ax, title)
    return fig


@mistake("plot_length_histogram", "plots a density (density=True): bar heights no longer sum to len(lengths)")
def plot_length_histogram_density(lengths, bins=50, title="Distribution of Text Lengths"):
    values = _check_plot_input(lengths, bins)
    fig = Figure()
    ax = fig.subplots()
    ax.hist(values, bins=bins, density=True)
    _decorate(ax, title)
    return fig


@mistake("plot_length_histogram", "swaps the axis labels (x: Frequency, y: Text Length)")
def plot_length_histogram_swapped_labels(lengths, bins=50, title="Distribution of Text Lengths"):
    values = _check_plot_input(lengths, bins)
    fig = Figure()
    ax = fig.subplots()
    ax.hist(values, bins=bins)
    ax.set_title(title)
    ax.set_xlabel("Frequency")
    ax.set_ylabel("Text Length")
    return fig


@mistake("plot_length_histogram", "anchors the bins at 0 (range=(0, max(lengths))) instead of spanning [min, max]")
def plot_length_histogram_from_zero(lengths, bins=50, title="Distribution of Text Lengths"):
    values = _check_plot_input(lengths, bins)
    fig = Figure()
    ax = fig.subplots()
    ax.hist(values, bins=bins, range=(0, values.max()))
    _decorate(ax, title)
    return fig


@mistake("plot_length_histogram", "sorts the lengths in place: np.asarray(array) is the caller's array, now sorted")
def plot_length_histogram_sorts_input(lengths, bins=50, title="Distribution of Text Lengths"):
    values = np.asarray(lengths)
    if values.ndim != 1 or values.size == 0:
        raise ValueError("lengths must be a non-empty 1-D sequence")
    if bins < 1:
        raise ValueError(f"bins must be at least 1, got {bins}")
    values.sort()  # to read off min and max; but a list or Series gave a copy, an array did not
    fig = Figure()
    ax = fig.subplots()
    ax.hist(values, bins=bins, range=(values[0], values[-1]))
    _decorate(ax, title)
    return fig


@variant("plot_length_histogram", "np.histogram + ax.bar on a figure from plt.subplots, detached with plt.close(fig)")
def plot_length_histogram_bar(lengths, bins=50, title="Distribution of Text Lengths"):
    values = _check_plot_input(lengths, bins)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4))
    plt.close(fig)  # pyplot forgets it; the Figure object stays usable
    counts, edges = np.histogram(values, bins=bins)
    ax.bar(edges[:-1], counts, width=np.diff(edges), align="edge")
    fig.suptitle(title)  # a figure-level title is a title too
    _decorate(ax, "")
    ax.set_title("")
    return fig


# --- TextDataset --------------------------------------------------------------------------------


@mistake("TextDataset", "the learning path's code: no length check, and indexes a pandas Series by label rather "
                        "than by position")
class TextDatasetSeed(TextDataset):
    def __init__(self, texts, labels):
        self.texts = texts
        self.labels = labels


@mistake("TextDataset", "returns (label, text) instead of (text, label)")
class TextDatasetSwapped(TextDataset):
    def __getitem__(self, idx):
        return self.labels[idx], self.texts[idx]


@mistake("TextDataset", "wraps indices around (idx % len), so an index past the end never raises IndexError")
class TextDatasetWraps(TextDataset):
    def __getitem__(self, idx):
        idx = idx % len(self)
        return self.texts[idx], self.labels[idx]


@variant("TextDataset", "stores a list of (text, label) tuples and checks the lengths before zipping")
class TextDatasetPairs(torch.utils.data.Dataset):
    def __init__(self, texts, labels):
        texts, labels = list(texts), list(labels)
        if len(texts) != len(labels):
            raise ValueError(f"len(texts)={len(texts)} != len(labels)={len(labels)}")
        self.pairs = list(zip(texts, labels, strict=True))

    def __len__(self):
        return len(self.pairs)

    def __getitem__(self, idx):
        return self.pairs[idx]


@variant("TextDataset", "keeps object pandas Series renumbered 0..n-1 and reads them by position with .iloc")
class TextDatasetIloc(torch.utils.data.Dataset):
    def __init__(self, texts, labels):
        self.texts = pd.Series(list(texts), dtype=object)
        self.labels = pd.Series(list(labels), dtype=object)
        if len(self.texts) != len(self.labels):
            raise ValueError(f"{len(self.texts)} texts, {len(self.labels)} labels")

    def __len__(self):
        return len(self.texts)

    def __getitem__(self, idx):
        return self.texts.iloc[idx], self.labels.iloc[idx]  # .iloc raises IndexError past the end


# --- CharWindowDataset --------------------------------------------------------------------------


@mistake("CharWindowDataset", "off by one: len = N - block_size - 1; the last window (ending at ids[-1]) is lost")
class CharWindowDatasetTooShort(CharWindowDataset):
    def __len__(self):
        return self.data.numel() - self.block_size - 1


@mistake("CharWindowDataset", "off by one: len = N - block_size + 1, so the last window's y is one token short")
class CharWindowDatasetTooLong(CharWindowDataset):
    def __len__(self):
        return self.data.numel() - self.block_size + 1


@mistake("CharWindowDataset", "y is not shifted: y = ids[i : i + block_size], the same as x")
class CharWindowDatasetNotShifted(CharWindowDataset):
    def __getitem__(self, idx):
        x, _ = super().__getitem__(idx)
        return x, x.clone()


@mistake("CharWindowDataset", "returns float tensors: an nn.Embedding or a cross-entropy target needs torch.long")
class CharWindowDatasetFloat(CharWindowDataset):
    def __getitem__(self, idx):
        x, y = super().__getitem__(idx)
        return x.float(), y.float()


@mistake("CharWindowDataset", "keeps the ids' own dtype (torch.as_tensor(ids), no dtype): int32 ids give int32 windows")
class CharWindowDatasetKeepsDtype(CharWindowDataset):
    def __init__(self, ids, block_size):
        super().__init__(ids, block_size)
        self.data = torch.as_tensor(ids)


@mistake("CharWindowDataset", "keeps the caller's tensor (torch.as_tensor of a long tensor is no copy): changing ids "
         "afterwards changes the windows")
class CharWindowDatasetAliases(CharWindowDataset):
    def __init__(self, ids, block_size):
        super().__init__(ids, block_size)
        self.data = torch.as_tensor(ids, dtype=torch.long)


@mistake("CharWindowDataset", "rejects negative indices (0 <= idx < len only): ds[-1] raises, not the last window")
class CharWindowDatasetNoNegative(CharWindowDataset):
    def __getitem__(self, idx):
        if not 0 <= idx < len(self):
            raise IndexError(f"window index {idx} out of range")
        return super().__getitem__(idx)


@variant("CharWindowDataset", "precomputes every window at once with Tensor.unfold(0, block_size + 1, 1)")
class CharWindowDatasetUnfold(torch.utils.data.Dataset):
    def __init__(self, ids, block_size):
        if block_size < 1:
            raise ValueError(f"block_size={block_size} must be positive")
        data = torch.tensor(list(map(int, ids)), dtype=torch.long)
        if data.numel() <= block_size:
            raise ValueError(f"{data.numel()} ids are too few for block_size={block_size}")
        self.windows = data.unfold(0, block_size + 1, 1)  # (N - block_size, block_size + 1)

    def __len__(self):
        return self.windows.shape[0]

    def __getitem__(self, idx):
        window = self.windows[idx]  # tensor indexing raises IndexError out of range
        return window[:-1].clone(), window[1:].clone()


@variant("CharWindowDataset", "keeps a list of ints, builds window tensors on demand; range() resolves the index")
class CharWindowDatasetList(torch.utils.data.Dataset):
    def __init__(self, ids, block_size):
        self.ids = [int(i) for i in ids]  # a copy, whatever `ids` was
        if block_size < 1:
            raise ValueError(f"block_size={block_size} is not positive")
        if len(self.ids) < block_size + 1:
            raise ValueError(f"a window needs {block_size + 1} ids, got {len(self.ids)}")
        self.block_size = block_size

    def __len__(self):
        return len(self.ids) - self.block_size

    def __getitem__(self, idx):
        start = range(len(self))[idx]  # negative from the end, IndexError outside, as for a list
        window = self.ids[start : start + self.block_size + 1]
        return torch.tensor(window[:-1], dtype=torch.long), torch.tensor(window[1:], dtype=torch.long)


# --- pad_collate --------------------------------------------------------------------------------


@mistake("pad_collate", "inverted mask: 1 on padding, 0 on real tokens")
def pad_collate_inverted_mask(batch, pad_id=0):
    from reference.phase1.w05_data import pad_collate

    ids, mask, lengths = pad_collate(batch, pad_id)
    return ids, 1 - mask, lengths


@mistake("pad_collate", "pads on the left (pads first, real tokens at the end) instead of the right")
def pad_collate_left(batch, pad_id=0):
    if not batch:
        raise ValueError("empty batch")
    seqs = [torch.as_tensor(s, dtype=torch.long) for s in batch]
    lengths = torch.tensor([len(s) for s in seqs])
    width = int(lengths.max())
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, s in enumerate(seqs):
        if len(s):
            ids[row, width - len(s) :] = s
            mask[row, width - len(s) :] = 1
    return ids, mask, lengths


@mistake("pad_collate", "builds the mask as ids != pad_id: a real token equal to pad_id is masked out")
def pad_collate_mask_from_ids(batch, pad_id=0):
    from reference.phase1.w05_data import pad_collate

    ids, _, lengths = pad_collate(batch, pad_id)
    return ids, (ids != pad_id).long(), lengths


@mistake("pad_collate", "pads with 0 whatever pad_id is")
def pad_collate_ignores_pad_id(batch, pad_id=0):
    from reference.phase1.w05_data import pad_collate

    return pad_collate(batch, 0)


@mistake("pad_collate", "sorts the batch by length in place, longest first (as for pack_padded_sequence): rows no "
         "longer follow the batch, and the caller's list is reordered")
def pad_collate_sorts_by_length(batch, pad_id=0):
    from reference.phase1.w05_data import pad_collate

    batch.sort(key=len, reverse=True)
    return pad_collate(batch, pad_id)


@mistake("pad_collate", "pads the caller's lists in place (seq += [pad_id] * ...), so every sequence comes back longer")
def pad_collate_pads_in_place(batch, pad_id=0):
    if len(batch) == 0:
        raise ValueError("empty batch")
    lengths = torch.tensor([len(s) for s in batch], dtype=torch.long)
    width = int(lengths.max())
    rows = []
    for seq in batch:
        if isinstance(seq, torch.Tensor):
            seq = seq.tolist()
        seq += [pad_id] * (width - len(seq))
        rows.append(seq)
    mask = (torch.arange(width)[None, :] < lengths[:, None]).long()
    return torch.tensor(rows, dtype=torch.long).reshape(len(batch), width), mask, lengths


@variant("pad_collate", "torch.nn.utils.rnn.pad_sequence, and a mask from arange(T) < lengths")
def pad_collate_pad_sequence(batch, pad_id=0):
    if len(batch) == 0:
        raise ValueError("a batch needs at least one sequence")
    seqs = [torch.tensor(list(map(int, s)), dtype=torch.long) for s in batch]
    lengths = torch.tensor([s.shape[0] for s in seqs], dtype=torch.long)
    ids = torch.nn.utils.rnn.pad_sequence(seqs, batch_first=True, padding_value=pad_id)
    mask = (torch.arange(ids.shape[1])[None, :] < lengths[:, None]).long()
    return ids, mask, lengths


# --- train_val_split ----------------------------------------------------------------------------


def _check_split_args(n, val_fraction):
    if n < 2:
        raise ValueError(f"n={n} is too small")
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction={val_fraction} is not in (0, 1)")
    n_val = round(n * val_fraction)
    if n_val in (0, n):
        raise ValueError(f"val_fraction={val_fraction} leaves a side empty")
    return n_val


@mistake("train_val_split", "draws train and val from two separate permutations, so they overlap (and miss indices)")
def train_val_split_overlap(n, val_fraction=0.1, seed=0):
    n_val = _check_split_args(n, val_fraction)
    generator = torch.Generator().manual_seed(seed)
    val = torch.randperm(n, generator=generator)[:n_val].tolist()
    train = torch.randperm(n, generator=generator)[n_val:].tolist()
    return train, val


@mistake("train_val_split", "uses the global RNG (torch.randperm(n) with no generator): not reproducible")
def train_val_split_global_rng(n, val_fraction=0.1, seed=0):
    n_val = _check_split_args(n, val_fraction)
    perm = torch.randperm(n).tolist()
    return perm[n_val:], perm[:n_val]


@mistake("train_val_split", "calls torch.manual_seed(seed): reproducible, but resets the whole program's random stream")
def train_val_split_seeds_global(n, val_fraction=0.1, seed=0):
    n_val = _check_split_args(n, val_fraction)
    torch.manual_seed(seed)
    perm = torch.randperm(n).tolist()
    return perm[n_val:], perm[:n_val]


@mistake("train_val_split", "does not shuffle: val is always the last indices, whatever the seed")
def train_val_split_unshuffled(n, val_fraction=0.1, seed=0):
    n_val = _check_split_args(n, val_fraction)
    return list(range(n - n_val)), list(range(n - n_val, n))


@mistake("train_val_split", "truncates with int(n * val_fraction) instead of round(): 10 * 0.29 gives 2, not 3")
def train_val_split_truncates(n, val_fraction=0.1, seed=0):
    _check_split_args(n, val_fraction)
    n_val = int(n * val_fraction)
    if n_val == 0:
        raise ValueError(f"val_fraction={val_fraction} leaves a side empty")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    return perm[n_val:], perm[:n_val]


@mistake("train_val_split", "returns slices of the permutation tensor, not lists of Python ints")
def train_val_split_tensors(n, val_fraction=0.1, seed=0):
    n_val = _check_split_args(n, val_fraction)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[n_val:], perm[:n_val]


@variant("train_val_split", "numpy's np.random.default_rng(seed), val drawn with choice(replace=False), both sorted")
def train_val_split_numpy(n, val_fraction=0.1, seed=0):
    n_val = _check_split_args(n, val_fraction)
    rng = np.random.default_rng(seed)
    val = np.sort(rng.choice(n, size=n_val, replace=False))
    train = np.setdiff1d(np.arange(n), val)
    return [int(i) for i in train], [int(i) for i in val]


# --- make_dataloader ----------------------------------------------------------------------------


@mistake("make_dataloader", "the learning path's code: DataLoader(shuffle=True) with no generator draws its order "
                            "from the global RNG")
def make_dataloader_global_rng(dataset, batch_size, shuffle=True, seed=0, collate_fn=None):
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, collate_fn=collate_fn)


@mistake("make_dataloader", "calls torch.manual_seed(seed): resets the global RNG, and the order still follows it")
def make_dataloader_seeds_global(dataset, batch_size, shuffle=True, seed=0, collate_fn=None):
    torch.manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, collate_fn=collate_fn)


@mistake("make_dataloader", "shuffles once into a fixed order: every epoch sees the same batches")
def make_dataloader_shuffles_once(dataset, batch_size, shuffle=True, seed=0, collate_fn=None):
    order = list(range(len(dataset)))
    if shuffle:
        order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed)).tolist()
    subset = torch.utils.data.Subset(dataset, order)
    return DataLoader(subset, batch_size=batch_size, shuffle=False, collate_fn=collate_fn)


@mistake("make_dataloader", "ignores shuffle=False and always shuffles")
def make_dataloader_always_shuffles(dataset, batch_size, shuffle=True, seed=0, collate_fn=None):
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=generator, collate_fn=collate_fn)


@mistake("make_dataloader", "drops collate_fn, so pad_collate (or any custom collate) is never used")
def make_dataloader_drops_collate(dataset, batch_size, shuffle=True, seed=0, collate_fn=None):
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator)


@variant("make_dataloader", "a RandomSampler with its own generator instead of shuffle=True")
def make_dataloader_random_sampler(dataset, batch_size, shuffle=True, seed=0, collate_fn=None):
    if not shuffle:
        return DataLoader(dataset, batch_size=batch_size, collate_fn=collate_fn)
    sampler = RandomSampler(dataset, generator=torch.Generator().manual_seed(seed))
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=collate_fn)


class _SeededPermutationSampler(Sampler):
    """A new numpy permutation every epoch, from a private generator."""

    def __init__(self, n, seed):
        self.n = n
        self.rng = np.random.default_rng(seed)

    def __len__(self):
        return self.n

    def __iter__(self):
        return iter(self.rng.permutation(self.n).tolist())


@variant("make_dataloader", "a custom Sampler drawing each epoch from numpy's default_rng(seed)")
def make_dataloader_numpy_sampler(dataset, batch_size, shuffle=True, seed=0, collate_fn=None):
    sampler = _SeededPermutationSampler(len(dataset), seed) if shuffle else None
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=collate_fn)
