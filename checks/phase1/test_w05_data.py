"""Checks for w05_data (Weeks 5-6: data handling & visualisation).

Oracles are written here, independently of the code under test: numpy's describe for the length
statistics, ``np.histogram`` for the bars, slicing for the windows and the padding, set algebra for the
split. Nothing random uses the global RNG; checks that seed it on purpose (to prove that the code under
test does not depend on it) restore it afterwards.

Checklist notes (CONTRACTS.md items that do not apply, and why):
- Devices and float dtypes (3): everything here is CPU data plumbing on integer ids, strings and frames;
  the integer dtypes that do apply (int32 ids in, torch.long out) are checked.
- Module structure (7): no nn.Module and no parameters in this kata.
- Numerics at scale (9): lengths and ids are small integers and the statistics are pandas' own; the
  float comparisons are of describe() results against numpy in float64.
- State over time (6): only make_dataloader has state (a new permutation per epoch, the same epochs for
  the same seed); CharWindowDataset's copy of ids is checked against a later change of the caller's ids.
- Randomness (8): text_length_stats, the plot, both datasets and pad_collate draw nothing.
  train_val_split and make_dataloader are checked for the global RNGs left untouched, reproducibility
  whatever the global state, and different seeds giving different results. The exact permutation for a
  seed is not contract (torch and numpy generators are both allowed), so nothing compares it with the
  reference's.
- Errors (10): each documented ValueError is triggered and must name the offending value (the column,
  both lengths, block_size, val_fraction, n); bools for ints are not documented for any exercise.
- Batch dimensions (2): pad_collate's batch is the only batch dimension; ids and lengths are 1-D by
  contract.
"""

from __future__ import annotations

import io
import itertools
import random
import re
from contextlib import contextmanager
from unittest import mock

import matplotlib

matplotlib.use("Agg")  # headless, and before pyplot is imported below

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import assume, example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402

from checks.numerics import assert_close, describe, likely_cause  # noqa: E402

pytestmark = pytest.mark.kata("w05_data")

KATA = "w05_data"
SEEDS = st.integers(0, 2**31 - 1)


# --- private helpers ----------------------------------------------------------------------------


class _Raw:
    """An argument shown as the given source text in failure messages (``list(range(10))``)."""

    def __init__(self, text: str):
        self.text = text

    def __repr__(self) -> str:
        return self.text


def _show(value, limit: int = 400) -> str:
    """An argument as (nearly) copy-pasteable Python: frames as a dict of columns, tensors as lists."""
    if isinstance(value, np.ndarray):
        text = f"np.array({value.tolist()!r})"
    elif isinstance(value, pd.Series):
        text = f"pd.Series({value.tolist()!r}, index={value.index.tolist()!r})"
    elif isinstance(value, pd.DataFrame):
        text = f"pd.DataFrame({ {c: value[c].tolist() for c in value.columns}!r})"
        if not value.index.equals(pd.RangeIndex(len(value))):
            text = text[:-1] + f", index={value.index.tolist()!r})"
    elif isinstance(value, torch.Tensor):
        dtype = "" if value.dtype == torch.long else f", dtype={value.dtype}"
        text = f"torch.tensor({value.tolist()!r}{dtype})"
    elif isinstance(value, list | tuple) and any(isinstance(v, torch.Tensor) for v in value):
        text = "[" + ", ".join(_show(v, limit) for v in value) + "]"
    elif isinstance(value, _Raw | int | float | str | list | tuple | type(None)):
        text = repr(value)
    else:
        return describe(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _call(name: str, args=(), kwargs=None) -> str:
    parts = [_show(a) for a in args] + [f"{k}={_show(v)}" for k, v in (kwargs or {}).items()]
    return f"{name}({', '.join(parts)})"


def _expect_value_error(fn, name: str, *args, match: str, because: str, **kwargs) -> None:
    """Call ``fn`` and require a ValueError whose message matches ``match``, with an actionable message."""
    call = _call(name, args, kwargs)
    try:
        result = fn(*args, **kwargs)
    except ValueError as err:
        if not re.search(match, str(err)):
            raise AssertionError(
                f"Called {call}.\nRaised ValueError({str(err)!r}); its message should match {match!r}, "
                f"because {because}"
            ) from None
        return
    except (KeyError, IndexError, TypeError, AttributeError, RuntimeError) as err:
        if isinstance(err, NotImplementedError):
            raise
        raise AssertionError(
            f"Called {call}.\nRaised {type(err).__name__}({err}), expected a ValueError, because {because}"
        ) from err
    raise AssertionError(f"Called {call}.\nReturned {describe(result)}, expected a ValueError, because {because}")


def _rng_snapshot():
    return torch.get_rng_state(), np.random.get_state(), random.getstate()


def _changed_rngs(before) -> list[str]:
    torch_state, np_state, py_state = before
    changed = []
    if not torch.equal(torch.get_rng_state(), torch_state):
        changed.append("torch's global RNG")
    now = np.random.get_state()
    if not (now[0] == np_state[0] and np.array_equal(now[1], np_state[1]) and tuple(now[2:]) == tuple(np_state[2:])):
        changed.append("numpy's global RNG (np.random)")
    if random.getstate() != py_state:
        changed.append("Python's random module")
    return changed


@contextmanager
def _global_rngs_restored():
    """Seed the global RNGs freely inside; they are put back as they were afterwards."""
    before = _rng_snapshot()
    try:
        yield
    finally:
        torch.set_rng_state(before[0])
        np.random.set_state(before[1])
        random.setstate(before[2])


def _seed_globals(value: int) -> None:
    torch.manual_seed(value)
    np.random.seed(value)
    random.seed(value)


# --- text_length_stats --------------------------------------------------------------------------

_STATS = ["count", "mean", "std", "min", "25%", "50%", "75%", "max"]
_LANGS = ["en", "fr", "日本"]
# Non-ASCII on purpose: 2, 3 and 4 UTF-8 bytes per character.
_UNICODE_TEXTS = ["héllo", "日本語", "🙂", "naïve café", "abc", "Ωμέγα ", "\tline\n"]
_UNICODE_LANGS = ["fr", "ja", "emoji", "fr", "en", "el", "en"]


@st.composite
def _text_frames(draw, grouped: bool = False):
    """A frame with a text column (named "text" or "review"), a numeric column and maybe a "lang".

    Half the frames have the index of a filtered frame (unique labels, with gaps, in any order), so
    that lengths paired with rows by position rather than by label show.
    """
    n = draw(st.integers(1, 12))
    text_col = draw(st.sampled_from(["text", "review"]))
    column = st.lists(st.text(max_size=16), min_size=n, max_size=n)
    data = {text_col: draw(column), "stars": draw(st.lists(st.integers(1, 5), min_size=n, max_size=n))}
    if grouped:
        data["lang"] = draw(st.lists(st.sampled_from(_LANGS), min_size=n, max_size=n))
    index = None
    if draw(st.booleans()):
        index = draw(st.lists(st.integers(1, 99), min_size=n, max_size=n, unique=True))
    return pd.DataFrame(data, index=index), text_col


def _oracle_describe(values) -> list[float]:
    """count, mean, std (ddof=1), min, quartiles (linear), max, from numpy."""
    values = np.asarray(values, dtype=np.float64)
    std = float(np.std(values, ddof=1)) if values.size > 1 else float("nan")
    quartiles = np.quantile(values, [0.25, 0.5, 0.75])
    quartiles = [float(q) for q in quartiles]
    return [float(values.size), float(values.mean()), std, float(values.min()), *quartiles, float(values.max())]


def _assert_same_stats(actual, expected, *, call: str, because: str, cause: str | None = None) -> None:
    """Compare describe()-shaped results: the same labels, groups in any order, values within 1e-9."""
    kind = type(expected).__name__
    if not isinstance(actual, type(expected)) or isinstance(actual, pd.DataFrame) != isinstance(expected, pd.DataFrame):
        raise AssertionError(
            f"Called {call}.\nReturned a {type(actual).__name__}, expected a pandas {kind}, because "
            + ("without `by` the result is lengths.describe(), a Series."
               if kind == "Series" else "with `by` the result is one row of statistics per group, a DataFrame.")
        )
    if isinstance(expected, pd.Series):
        labels = list(actual.index)
        assert labels == _STATS, (
            f"Called {call}.\nReturned a Series indexed by {labels}, expected the index {_STATS} "
            "(what Series.describe() gives for numbers)."
        )
    else:
        columns = list(actual.columns)
        assert columns == _STATS, (
            f"Called {call}.\nReturned a DataFrame with columns {columns}, expected the columns {_STATS} "
            "(what groupby(...)[column].describe() gives)."
        )
        got, want = set(actual.index.tolist()), set(expected.index.tolist())
        assert got == want, (
            f"Called {call}.\nReturned rows for the groups {sorted(map(str, got))}, expected one row per group "
            f"{sorted(map(str, want))}, indexed by the group value."
        )
        actual = actual.loc[expected.index]
    got, want = actual.to_numpy(dtype=np.float64), expected.to_numpy(dtype=np.float64)
    nan_got, nan_want = np.isnan(got), np.isnan(want)
    if not np.array_equal(nan_got, nan_want):
        raise AssertionError(
            f"Called {call}.\nReturned {got.tolist()},\nexpected {want.tolist()}: NaN in the wrong places, because "
            "every length is a number, so only std can be NaN, and only for a group of one text (pandas uses "
            "ddof=1). A NaN length comes from pairing lengths with row labels the frame does not have."
            + (f"\nLikely cause: {cause}" if cause else "")
        )
    # NaN == NaN here (checked above); compare the rest.
    assert_close(np.where(nan_got, 0.0, got), np.where(nan_want, 0.0, want), call=call, because=because, cause=cause,
                 rtol=1e-9, atol=1e-9)


def _compare_stats(impl, reference, df: pd.DataFrame, **kwargs) -> None:
    expected = reference.text_length_stats(df.copy(deep=True), **kwargs)
    actual = impl.text_length_stats(df.copy(deep=True), **kwargs)
    _assert_stats_with_cause(actual, expected, df, kwargs,
                             because="the statistics describe every text's length in characters (len(text)).")


def _assert_stats_with_cause(actual, expected, df: pd.DataFrame, kwargs: dict, because: str) -> None:
    """_assert_same_stats, naming a catalogued mistake that gives the same wrong answer (only on failure)."""
    call = _call("text_length_stats", (df,), kwargs)
    try:
        _assert_same_stats(actual, expected, call=call, because=because)
        return
    except AssertionError:
        if not isinstance(actual, pd.Series | pd.DataFrame):
            raise
    # Outside the except block, so the learner sees one message, not a chain of two.
    cause = likely_cause(KATA, "text_length_stats", lambda f: f(df.copy(deep=True), **kwargs), actual)
    _assert_same_stats(actual, expected, call=call, because=because, cause=cause)


@pytest.mark.exercise("text_length_stats")
@given(_text_frames())
def test_text_length_stats_matches_reference(impl, reference, frame):
    df, text_col = frame
    _compare_stats(impl, reference, df, text_col=text_col)


@pytest.mark.exercise("text_length_stats")
@settings(max_examples=20)
@given(_text_frames(grouped=True), st.sampled_from(["lang", "stars"]))
def test_text_length_stats_by_group_matches_reference(impl, reference, frame, by):
    df, text_col = frame
    _compare_stats(impl, reference, df, text_col=text_col, by=by)


@pytest.mark.exercise("text_length_stats")
def test_text_length_stats_counts_characters_not_bytes(impl):
    df = pd.DataFrame({"text": _UNICODE_TEXTS, "lang": _UNICODE_LANGS})
    chars = np.array([len(t) for t in _UNICODE_TEXTS])
    because = ("a text's length is its number of characters, len(text): '日本語' is 3 characters "
               "(9 UTF-8 bytes), '🙂' is 1 (4 bytes).")
    stats = impl.text_length_stats(df)
    _assert_stats_with_cause(stats, pd.Series(_oracle_describe(chars), index=_STATS), df, {}, because=because)
    groups = sorted(set(_UNICODE_LANGS))
    langs = np.array(_UNICODE_LANGS)
    expected = pd.DataFrame([_oracle_describe(chars[langs == g]) for g in groups], index=groups, columns=_STATS)
    _assert_same_stats(impl.text_length_stats(df, by="lang"), expected, because=because,
                       call=_call("text_length_stats", (df,), {"by": "lang"}))


@pytest.mark.exercise("text_length_stats")
@settings(max_examples=15)
@given(_text_frames(grouped=True))
def test_text_length_stats_leaves_the_frame_alone(impl, frame):
    df, text_col = frame
    before = df.copy(deep=True)
    for kwargs in ({"text_col": text_col}, {"text_col": text_col, "by": "lang"}):
        impl.text_length_stats(df, **kwargs)
        assert list(df.columns) == list(before.columns) and df.equals(before), (
            f"Called {_call('text_length_stats', (before,), kwargs)}.\nAfterwards the caller's frame has "
            f"the columns {list(df.columns)} (before: {list(before.columns)}) or changed values, because the "
            "function must not modify its input: compute the lengths into a new Series or use df.assign(...)."
        )


@pytest.mark.exercise("text_length_stats")
def test_text_length_stats_rejects_an_empty_frame(impl):
    because = "describing zero texts means nothing; say so instead of returning a row of NaN."
    empty = pd.DataFrame({"text": pd.Series([], dtype=object), "lang": pd.Series([], dtype=object)})
    _expect_value_error(impl.text_length_stats, "text_length_stats", empty, match="(?i)empty", because=because)
    _expect_value_error(impl.text_length_stats, "text_length_stats", empty, by="lang", match="(?i)empty",
                        because=because)


@pytest.mark.exercise("text_length_stats")
def test_text_length_stats_rejects_a_missing_column(impl):
    df = pd.DataFrame({"text": ["a", "bb"], "lang": ["en", "fr"]})
    _expect_value_error(impl.text_length_stats, "text_length_stats", df, text_col="body", match="body",
                        because="a column that is not in the frame must be named in the error.")
    _expect_value_error(impl.text_length_stats, "text_length_stats", df, by="country", match="country",
                        because="a `by` column that is not in the frame must be named in the error.")


# --- plot_length_histogram ----------------------------------------------------------------------

_LENGTHS = st.lists(st.integers(0, 400), min_size=1, max_size=60)


def _plot(impl, lengths, strict: bool = False, **kwargs) -> tuple[Figure, str]:
    """Call plot_length_histogram with plt.show patched and any figure it leaves in pyplot closed.

    ``strict``: fail when it calls plt.show() or leaves a figure in pyplot. Only the dedicated check is
    strict, so that a pyplot-state problem is reported once, by name, and the other checks still say
    whether the bars, title and labels are right.
    """
    call = _call("plot_length_histogram", (lengths,), kwargs)
    shown = []

    def forbidden_show(*args, **kw):
        shown.append(True)
        if strict:
            raise AssertionError(
                f"Called {call}.\nIt called plt.show(), which blocks a script until the window is closed and "
                "does nothing (or warns) on a headless machine; return the Figure and let the caller show or save it."
            )

    before = set(plt.get_fignums())
    try:
        with mock.patch.object(plt, "show", forbidden_show):
            fig = impl.plot_length_histogram(lengths, **kwargs)
    finally:
        leaked = sorted(set(plt.get_fignums()) - before)
        for number in leaked:
            plt.close(number)
    assert not (strict and shown), f"Called {call}.\nIt called plt.show(); return the Figure instead."
    assert not (strict and leaked), (
        f"Called {call}.\nAfterwards pyplot holds {len(leaked)} more figure(s) (plt.get_fignums() gained {leaked}), "
        "because it drew with pyplot's global state (plt.figure / plt.hist / plt.subplots). Every call leaks a "
        "figure that way. Build it with matplotlib.figure.Figure() and fig.subplots(), or plt.close(fig) "
        "before returning it."
    )
    assert isinstance(fig, Figure), (
        f"Called {call}.\nReturned {describe(fig)}, expected a matplotlib.figure.Figure, because the caller "
        "decides whether to show, save or test it."
    )
    return fig, call


def _single_axes(fig: Figure, call: str):
    assert len(fig.axes) == 1, f"Called {call}.\nThe figure has {len(fig.axes)} Axes, expected exactly one."
    return fig.axes[0]


def _bars(ax) -> list[Rectangle]:
    return sorted((p for p in ax.patches if isinstance(p, Rectangle)), key=lambda p: p.get_x())


@pytest.mark.exercise("plot_length_histogram")
def test_plot_length_histogram_returns_a_figure_and_leaves_pyplot_alone(impl):
    # No hypothesis here: pyplot's state does not depend on the data, and a few plain cases keep it fast.
    _plot(impl, [3, 5, 5, 8, 13], strict=True)
    _plot(impl, np.arange(100) % 17, strict=True, bins=7)
    _plot(impl, pd.Series([4, 4, 4]), strict=True, bins=1, title="Constant")


@pytest.mark.exercise("plot_length_histogram")
def test_plot_length_histogram_title_and_labels(impl):
    cases = (({}, "Distribution of Text Lengths"), ({"bins": 3, "title": "Review lengths"}, "Review lengths"))
    for kwargs, title in cases:
        fig, call = _plot(impl, [3, 5, 5, 8, 13], **kwargs)
        ax = _single_axes(fig, call)
        titles = [ax.get_title(), fig.get_suptitle()]
        assert title in titles, f"Called {call}.\nThe figure's titles are {titles}, expected {title!r}."
        labels = (ax.get_xlabel(), ax.get_ylabel())
        assert labels == ("Text Length", "Frequency"), (
            f"Called {call}.\nThe axis labels (x, y) are {labels}, expected ('Text Length', 'Frequency'): "
            "the x axis shows the lengths, the y axis how many texts have them."
        )


@pytest.mark.exercise("plot_length_histogram")
@settings(max_examples=10)
@given(_LENGTHS, st.integers(1, 25))
@example([3, 5, 5, 8], 2)  # the docstring's example: bins from 3 to 8, not from 0
def test_plot_length_histogram_bars_are_the_histogram(impl, lengths, bins):
    fig, call = _plot(impl, lengths, bins=bins)
    bars = _bars(_single_axes(fig, call))
    assert len(bars) == bins, (
        f"Called {call}.\nThe Axes has {len(bars)} bars (Rectangle patches), expected bins={bins}: one bar per bin."
    )
    heights = np.array([bar.get_height() for bar in bars], dtype=np.float64)
    n = len(lengths)
    assert abs(heights.sum() - n) < 1e-9, (
        f"Called {call}.\nThe bar heights sum to {heights.sum():g}, expected len(lengths) = {n}, because the "
        "heights are counts of texts (no density=True, no normalising)."
    )
    counts, edges = np.histogram(np.asarray(lengths, dtype=np.float64), bins=bins)
    assert_close(heights, counts, call=call, atol=1e-9, because="bar i's height is the count of bin i (np.histogram).")
    lefts = np.array([bar.get_x() for bar in bars])
    rights = lefts + np.array([bar.get_width() for bar in bars])
    assert_close(np.concatenate([lefts, rights[-1:]]), edges, call=call, rtol=1e-9, atol=1e-9,
                 because="the bins split [min(lengths), max(lengths)] into `bins` equal widths, as np.histogram does.")


@pytest.mark.exercise("plot_length_histogram")
def test_plot_length_histogram_leaves_its_input_alone(impl):
    # Unsorted on purpose: sorting is the likely in-place edit. An array is the risky input, because
    # np.asarray(array) returns that very array; a list and a Series are checked too.
    inputs = {
        "an array": np.array([9, 2, 7, 2, 30, 1]),
        "a float array": np.array([4.5, 0.5, 3.0]),
        "a list": [9, 2, 7, 2, 30, 1],
        "a Series": pd.Series([9, 2, 7], index=[5, 3, 8]),
    }
    for kind, lengths in inputs.items():
        pristine = lengths.copy()
        fig, call = _plot(impl, lengths, bins=3)
        if isinstance(lengths, pd.Series):
            same = lengths.equals(pristine) and lengths.index.equals(pristine.index)
        else:
            same = type(lengths) is type(pristine) and np.array_equal(lengths, pristine)
            same = same and np.asarray(lengths).dtype == np.asarray(pristine).dtype
        assert same, (
            f"Called {call} with {kind}.\nAfterwards the caller's lengths are {_show(lengths)}, expected them "
            f"unchanged: {_show(pristine)}, because the function must not modify its input (np.asarray of an "
            "array is that array; sort a copy, if you sort)."
        )


@pytest.mark.exercise("plot_length_histogram")
def test_plot_length_histogram_default_bins_and_a_series(impl):
    lengths = pd.Series([len(t) for t in _UNICODE_TEXTS] * 20, index=range(100, 100 + 20 * len(_UNICODE_TEXTS)))
    fig, call = _plot(impl, lengths)
    bars = _bars(_single_axes(fig, call))
    assert len(bars) == 50, f"Called {call}.\nThe Axes has {len(bars)} bars, expected the default bins=50."
    total, n = float(sum(bar.get_height() for bar in bars)), len(lengths)
    assert total == n, f"Called {call}.\nThe bar heights sum to {total:g}, expected len(lengths) = {n}."
    fig.savefig(io.BytesIO(), format="png")  # it renders headless


@pytest.mark.exercise("plot_length_histogram")
def test_plot_length_histogram_rejects_bad_input(impl):
    _expect_value_error(impl.plot_length_histogram, "plot_length_histogram", [], match=".",
                        because="there is no histogram of no lengths.")
    for bins in (0, -2):
        _expect_value_error(impl.plot_length_histogram, "plot_length_histogram", [1, 2, 3], bins=bins,
                            match=f"{bins}|bins", because="a histogram needs at least one bin.")


# --- TextDataset --------------------------------------------------------------------------------


def _pairs_call(n: int) -> str:
    return f"TextDataset(texts, labels) with {n} pairs"


@pytest.mark.exercise("TextDataset")
@given(st.lists(st.tuples(st.text(max_size=12), st.integers(0, 9)), max_size=12))
def test_text_dataset_len_and_getitem(impl, pairs):
    texts, labels = [t for t, _ in pairs], [y for _, y in pairs]
    ds = impl.TextDataset(texts, labels)
    call = _pairs_call(len(pairs))
    assert (texts, labels) == ([t for t, _ in pairs], [y for _, y in pairs]), (
        f"Called {call}.\nAfterwards texts is {texts!r} and labels {labels!r}, expected both unchanged."
    )
    assert isinstance(ds, Dataset), f"Called {call}.\nGot a {type(ds).__name__}, expected a torch Dataset subclass."
    assert len(ds) == len(pairs), f"Called len({call}).\nReturned {len(ds)}, expected {len(pairs)}."
    for i, pair in enumerate(pairs):
        got = ds[i]
        assert isinstance(got, tuple) and got == pair, (
            f"Called {call}[{i}].\nReturned {got!r}, expected the tuple (texts[{i}], labels[{i}]) = {pair!r}."
        )


@pytest.mark.exercise("TextDataset")
@given(st.integers(0, 8), st.integers(0, 8))
def test_text_dataset_rejects_mismatched_lengths(impl, n_texts, n_labels):
    assume(n_texts != n_labels)
    texts, labels = [f"text {i}" for i in range(n_texts)], list(range(n_labels))
    _expect_value_error(
        impl.TextDataset, "TextDataset", texts, labels,
        match=rf"(?s)(?=.*\b{n_texts}\b)(?=.*\b{n_labels}\b)",
        because=f"{n_texts} texts cannot pair with {n_labels} labels; the message must name both lengths.",
    )


@pytest.mark.exercise("TextDataset")
def test_text_dataset_raises_index_error_past_the_end(impl):
    texts, labels = ["a", "bb", "ccc"], [0, 1, 2]
    ds = impl.TextDataset(texts, labels)
    try:
        got = ds[3]
    except IndexError:
        pass
    else:
        raise AssertionError(
            f"Called {_pairs_call(3)}[3].\nReturned {got!r}, expected IndexError, because `for pair in dataset` "
            "and list(dataset) stop only at an IndexError."
        )
    items = list(itertools.islice(iter(ds), 5))
    assert items == list(zip(texts, labels, strict=True)), (
        f"Iterated over {_pairs_call(3)}.\nGot {items!r}, expected the 3 pairs and then the end."
    )


@pytest.mark.exercise("TextDataset")
def test_text_dataset_indexes_pandas_series_by_position(impl):
    df = pd.DataFrame({"text": ["skip", "good", "skip", "bad", "fine"], "label": [9, 1, 9, 0, 1]})
    kept = df[df["text"] != "skip"]  # its index is [1, 3, 4]: label 0 is gone
    ds = impl.TextDataset(kept["text"], kept["label"])
    call = "TextDataset(kept['text'], kept['label']) where kept = df[df.text != 'skip'] has the index [1, 3, 4]"
    expected = [("good", 1), ("bad", 0), ("fine", 1)]
    try:
        got = [tuple(ds[i]) for i in range(3)]
    except KeyError as err:
        raise AssertionError(
            f"Called {call}, then ds[0].\nRaised KeyError({err}), because series[0] looks up the index *label* 0, "
            "which the filter removed. Store list(texts) and list(labels) so that indexing is by position."
        ) from None
    assert got == expected, f"Called {call}.\nThe items are {got!r}, expected {expected!r} (by position)."


@pytest.mark.exercise("TextDataset")
def test_text_dataset_batches_with_a_dataloader(impl):
    ds = impl.TextDataset(["a", "bb", "ccc", "dddd"], [0, 1, 0, 1])
    texts, labels = next(iter(DataLoader(ds, batch_size=4)))
    assert list(texts) == ["a", "bb", "ccc", "dddd"] and labels.tolist() == [0, 1, 0, 1], (
        f"DataLoader(TextDataset(...), batch_size=4) gave texts {texts!r} and labels {labels!r}; expected the "
        "four texts and the labels tensor([0, 1, 0, 1])."
    )


# --- CharWindowDataset --------------------------------------------------------------------------


_ID_KINDS = {
    "a list": list,
    "a long tensor": lambda ids: torch.tensor(ids, dtype=torch.long),
    "an int32 tensor": lambda ids: torch.tensor(ids, dtype=torch.int32),
    # every other element of a longer tensor: a non-contiguous view
    "a strided long tensor": lambda ids: torch.tensor([v for i in ids for v in (i, -1)], dtype=torch.long)[::2],
}


@st.composite
def _ids_and_block(draw):
    block = draw(st.integers(1, 10))
    ids = draw(st.lists(st.integers(0, 63), min_size=block + 1, max_size=block + 30))
    return ids, block, draw(st.sampled_from(sorted(_ID_KINDS)))


def _windows(impl, case):
    ids, block, kind = case
    ds = impl.CharWindowDataset(_ID_KINDS[kind](ids), block)
    return ds, f"CharWindowDataset(ids={kind} of length {len(ids)}, block_size={block})"


def _check_window_tensor(t, name: str, block: int, call: str) -> None:
    assert isinstance(t, torch.Tensor), f"Called {call}.\n{name} is a {type(t).__name__}, expected a torch.Tensor."
    assert t.dtype == torch.long, (
        f"Called {call}.\n{name} has dtype {t.dtype}, expected torch.long, because token ids index an "
        "nn.Embedding and are cross-entropy targets."
    )
    assert tuple(t.shape) == (block,), f"Called {call}.\n{name} has shape {tuple(t.shape)}, expected ({block},)."


@pytest.mark.exercise("CharWindowDataset")
@given(_ids_and_block())
def test_char_window_dataset_windows_are_shifted_by_one(impl, case):
    ids, block, _ = case
    ds, call = _windows(impl, case)
    expected_len = len(ids) - block
    assert len(ds) == expected_len, (
        f"Called len({call}).\nReturned {len(ds)}, expected len(ids) - block_size = {expected_len}, because "
        f"window i needs ids[i : i + block_size + 1], so the starts are 0 .. {expected_len - 1}."
    )
    for i in range(expected_len):
        x, y = ds[i]
        item = f"{call}[{i}]"
        _check_window_tensor(x, "x", block, item)
        _check_window_tensor(y, "y", block, item)
        assert_close(x, np.array(ids[i : i + block]), call=item, because="x is ids[i : i + block_size].")
        assert_close(y[:-1], x[1:], call=item, because="y[t] == x[t + 1]: the target is the next token.")
        assert_close(y, np.array(ids[i + 1 : i + block + 1]), call=item,
                     because="y is ids[i + 1 : i + block_size + 1].")


@pytest.mark.exercise("CharWindowDataset")
@given(_ids_and_block())
def test_char_window_dataset_last_window_is_reachable(impl, case):
    ids, block, _ = case
    ds, call = _windows(impl, case)
    n = len(ds)
    assert n >= 1, f"Called len({call}).\nReturned {n}, but len(ids) > block_size gives at least one window."
    x, y = ds[n - 1]
    _check_window_tensor(y, "y", block, f"{call}[{n - 1}]")
    assert_close(y, np.array(ids[-block:]), call=f"{call}[len - 1]",
                 because="the last window's targets end with the last id, ids[-1]: otherwise the end of the "
                         "text is never a training target.")
    for k in range(1, n + 1):
        item = f"{call}[{-k}] on {n} windows"
        try:
            x, y = ds[-k]
        except IndexError as err:
            raise AssertionError(
                f"Called {item}.\nRaised IndexError({err}), expected window {n - k}, because negative indices "
                "count from the end, as for a list: ds[-1] is the last window."
            ) from None
        _check_window_tensor(x, "x", block, item)
        assert_close(x, np.array(ids[n - k : n - k + block]), call=item,
                     because=f"ds[{-k}] is ds[len - {k}] = ds[{n - k}], as for a list.")
        assert_close(y, np.array(ids[n - k + 1 : n - k + block + 1]), call=item,
                     because=f"ds[{-k}] is ds[len - {k}] = ds[{n - k}], as for a list.")
    for bad in (n, -n - 1):
        try:
            got = ds[bad]
        except IndexError:
            continue
        raise AssertionError(
            f"Called {call}[{bad}] on {n} windows.\nReturned {got!r}, expected IndexError: an index outside the "
            "windows must not give a short or empty window."
        )


@pytest.mark.exercise("CharWindowDataset")
def test_char_window_dataset_keeps_its_own_copy_of_ids(impl):
    ids = torch.arange(10, 22)
    pristine = ids.clone()
    ds = impl.CharWindowDataset(ids, 4)
    call = "CharWindowDataset(ids=torch.arange(10, 22), block_size=4)"
    assert torch.equal(ids, pristine) and ids.dtype == torch.long, (
        f"Called {call}.\nAfterwards ids is {_show(ids)}, expected it unchanged: {_show(pristine)}."
    )
    ids.fill_(-1)  # the caller reuses its buffer
    x, y = ds[0]
    _check_window_tensor(x, "x", 4, f"{call}[0]")
    assert_close(x, pristine[:4], call=f"{call}, then ids.fill_(-1), then ds[0]",
                 because="the dataset keeps its own copy of the ids; torch.as_tensor of a long tensor returns that "
                         "same tensor, so clone it.")


@pytest.mark.exercise("CharWindowDataset")
def test_char_window_dataset_rejects_bad_block_size(impl):
    _expect_value_error(impl.CharWindowDataset, "CharWindowDataset", [1, 2, 3], 0, match=r"block_size|\b0\b",
                        because="a window needs at least one token.")
    _expect_value_error(impl.CharWindowDataset, "CharWindowDataset", [1, 2, 3], 3, match=r"\b[34]\b",
                        because="3 ids give no window of block_size 3 (that needs 4: x and the next token).")


@pytest.mark.exercise("CharWindowDataset")
def test_char_window_dataset_batches_with_a_dataloader(impl):
    ds = impl.CharWindowDataset(list(range(20)), 4)
    x, y = next(iter(DataLoader(ds, batch_size=5)))
    call = "next(iter(DataLoader(CharWindowDataset(list(range(20)), 4), batch_size=5)))"
    assert tuple(x.shape) == (5, 4) and tuple(y.shape) == (5, 4), (
        f"Called {call}.\nGot x of shape {tuple(x.shape)} and y of shape {tuple(y.shape)}, expected (5, 4) each."
    )
    assert_close(y, x + 1, call=call, because="over ids 0, 1, 2, ... every target is its input plus one.")


# --- pad_collate --------------------------------------------------------------------------------


_SEQ_KINDS = {
    "lists": list,
    "long tensors": lambda s: torch.tensor(s, dtype=torch.long),
    "int32 tensors": lambda s: torch.tensor(s, dtype=torch.int32),
    # every other element of a longer tensor: non-contiguous views
    "strided tensors": lambda s: torch.tensor([v for i in s for v in (i, 9)], dtype=torch.long)[::2],
}


@st.composite
def _batches(draw):
    """Short sequences over a tiny vocabulary, so a real token often equals pad_id."""
    pad_id = draw(st.integers(-1, 4))
    seqs = draw(st.lists(st.lists(st.integers(0, 4), max_size=7), min_size=1, max_size=6))
    make = _SEQ_KINDS[draw(st.sampled_from(sorted(_SEQ_KINDS)))]
    return [make(s) for s in seqs], seqs, pad_id


def _same_batch(batch, pristine) -> bool:
    """The batch list and every sequence in it (values, dtype, type) are as they were."""
    if len(batch) != len(pristine):
        return False
    for seq, before in zip(batch, pristine, strict=True):
        if type(seq) is not type(before):
            return False
        if isinstance(seq, torch.Tensor):
            if seq.dtype != before.dtype or not torch.equal(seq, before):
                return False
        elif list(seq) != list(before):
            return False
    return True


def _collate(impl, batch, pad_id: int):
    """Call pad_collate on ``batch``; check the result's types and that the batch is left alone."""
    call = _call("pad_collate", (batch,), {"pad_id": pad_id})
    pristine = [s.clone() if isinstance(s, torch.Tensor) else list(s) for s in batch]
    out = impl.pad_collate(batch, pad_id=pad_id)
    assert _same_batch(batch, pristine), (
        f"Called {call}.\nAfterwards the batch is {_show(batch)}, expected it unchanged, because the loader's "
        "batch belongs to the caller: pad into new tensors, do not sort the list or extend its sequences."
    )
    assert isinstance(out, tuple | list) and len(out) == 3, (
        f"Called {call}.\nReturned {describe(out)}, expected a tuple (ids, attention_mask, lengths)."
    )
    for name, t in zip(("ids", "attention_mask", "lengths"), out, strict=True):
        assert isinstance(t, torch.Tensor) and t.dtype == torch.long, (
            f"Called {call}.\n{name} is {describe(t)}, expected a torch.long tensor."
        )
    return (*out, call)


def _expected_padding(seqs, pad_id: int):
    width = max(len(s) for s in seqs)
    ids = np.full((len(seqs), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(seqs), width), dtype=np.int64)
    for row, s in enumerate(seqs):
        ids[row, : len(s)] = s
        mask[row, : len(s)] = 1
    return ids, mask


@pytest.mark.exercise("pad_collate")
@given(_batches())
def test_pad_collate_mask_sums_to_lengths(impl, case):
    batch, seqs, pad_id = case
    _, mask, lengths, call = _collate(impl, batch, pad_id)
    true_lengths = np.array([len(s) for s in seqs])
    assert_close(lengths, true_lengths, call=call, because="lengths[i] is the length of sequence i.")
    _, expected_mask = _expected_padding(seqs, pad_id)
    assert_close(mask, expected_mask, call=call,
                 because="the mask is 1 on the real tokens (the first L_i positions of row i) and 0 on padding; "
                         "it comes from the lengths, not from ids != pad_id.")
    assert_close(mask.sum(dim=1), true_lengths, call=call, because="attention_mask.sum(1) == lengths.")


@pytest.mark.exercise("pad_collate")
@given(_batches())
def test_pad_collate_right_pads_with_pad_id(impl, case):
    batch, seqs, pad_id = case
    ids, _, _, call = _collate(impl, batch, pad_id)
    expected_ids, _ = _expected_padding(seqs, pad_id)
    assert_close(ids, expected_ids, call=call,
                 because=f"row i is sequence i unchanged, then pad_id={pad_id} up to the longest length "
                         "(right padding).")


@pytest.mark.exercise("pad_collate")
def test_pad_collate_pad_id_can_be_a_real_token(impl):
    batch = [[0, 7, 0], [0], []]
    ids, mask, lengths, call = _collate(impl, batch, 0)
    assert_close(mask, np.array([[1, 1, 1], [1, 0, 0], [0, 0, 0]]), call=call,
                 because="token 0 inside a sequence is real even when pad_id is 0: build the mask from the lengths.")
    assert_close(ids, np.array([[0, 7, 0], [0, 0, 0], [0, 0, 0]]), call=call, because="right padding with 0.")


@pytest.mark.exercise("pad_collate")
def test_pad_collate_edge_batches(impl):
    # Every sequence empty: T = 0, and the outputs are (B, 0) tensors, not an error.
    ids, mask, lengths, call = _collate(impl, [[], []], 3)
    for name, t, shape in (("ids", ids, (2, 0)), ("attention_mask", mask, (2, 0)), ("lengths", lengths, (2,))):
        assert tuple(t.shape) == shape, (
            f"Called {call}.\n{name} has shape {tuple(t.shape)}, expected {shape}, because the longest of two "
            "empty sequences has length 0."
        )
    assert lengths.tolist() == [0, 0], f"Called {call}.\nlengths is {lengths.tolist()}, expected [0, 0]."
    # One sequence: no padding at all.
    ids, mask, lengths, call = _collate(impl, [torch.tensor([4, 0, 4], dtype=torch.int32)], 4)
    assert_close(ids, np.array([[4, 0, 4]]), call=call, because="a batch of one needs no padding.")
    assert_close(mask, np.array([[1, 1, 1]]), call=call,
                 because="every position of the only sequence is real, also the ones equal to pad_id=4.")
    assert_close(lengths, np.array([3]), call=call, because="lengths[0] is the sequence's length.")


@pytest.mark.exercise("pad_collate")
def test_pad_collate_as_a_dataloader_collate_fn(impl):
    seqs = [torch.arange(1, n + 1) for n in (3, 1, 4, 2)]
    batches = list(DataLoader(seqs, batch_size=2, collate_fn=impl.pad_collate))
    call = "DataLoader(sequences of lengths 3, 1, 4, 2, batch_size=2, collate_fn=pad_collate)"
    assert len(batches) == 2, f"Called {call}.\nGot {len(batches)} batches, expected 2."
    ids, mask, lengths = batches[1]
    assert_close(ids, np.array([[1, 2, 3, 4], [1, 2, 0, 0]]), call=call, because="each batch pads to its own longest.")
    assert_close(lengths, np.array([4, 2]), call=call, because="lengths are the unpadded lengths.")


@pytest.mark.exercise("pad_collate")
def test_pad_collate_rejects_an_empty_batch(impl):
    _expect_value_error(impl.pad_collate, "pad_collate", [], match="(?i)empty|batch",
                        because="there is nothing to pad in an empty batch.")


# --- train_val_split ----------------------------------------------------------------------------


@st.composite
def _split_args(draw):
    n = draw(st.integers(2, 200))
    val_fraction = draw(st.floats(0.01, 0.99))
    assume(0 < round(n * val_fraction) < n)
    return n, val_fraction, draw(SEEDS)


def _split(impl, *args, **kwargs):
    """Call train_val_split; check that it returns two lists of Python ints."""
    call = _call("train_val_split", args, kwargs)
    out = impl.train_val_split(*args, **kwargs)
    assert isinstance(out, tuple | list) and len(out) == 2, (
        f"Called {call}.\nReturned {describe(out)}, expected a tuple (train_indices, val_indices)."
    )
    for name, side in zip(("train", "val"), out, strict=True):
        assert isinstance(side, list) and all(type(i) is int for i in side), (
            f"Called {call}.\nThe {name} indices are {describe(side)}, expected a list of Python ints (ready for "
            "torch.utils.data.Subset): call .tolist() on a tensor, int(i) on numpy integers."
        )
    return out[0], out[1], call


@pytest.mark.exercise("train_val_split")
@given(_split_args())
# Where round() and int() or round-half-up disagree: 10 * 0.29 = 2.9 -> 3; 10 * 0.25 = 2.5 -> 2 (half to even).
@example((10, 0.29, 0))
@example((10, 0.25, 0))
def test_train_val_split_is_disjoint_and_covering(impl, args):
    n, val_fraction, seed = args
    train, val, call = _split(impl, n, val_fraction, seed)
    overlap = sorted(set(train) & set(val))
    assert not overlap, (
        f"Called {call}.\nThe indices {overlap[:10]} are in both train and val, because a training example "
        "in the validation set makes the validation loss a lie (cut one permutation in two)."
    )
    assert len(set(train)) == len(train) and len(set(val)) == len(val), f"Called {call}.\nAn index appears twice."
    missing = sorted(set(range(n)) - set(train) - set(val))
    extra = sorted((set(train) | set(val)) - set(range(n)))
    assert not missing and not extra, (
        f"Called {call}.\nMissing indices {missing[:10]}, indices outside range({n}) {extra[:10]}: every index of "
        f"range({n}) must be on exactly one side."
    )
    n_val = round(n * val_fraction)
    assert len(val) == n_val, (
        f"Called {call}.\nval has {len(val)} indices, expected round({n} * {val_fraction}) = {n_val}."
    )


@pytest.mark.exercise("train_val_split")
@given(_split_args())
def test_train_val_split_is_reproducible_and_leaves_the_global_rng_alone(impl, args):
    n, val_fraction, seed = args
    with _global_rngs_restored():
        _seed_globals(1)
        before = _rng_snapshot()
        train, val, call = _split(impl, n, val_fraction, seed)
        changed = _changed_rngs(before)
        assert not changed, (
            f"Called {call}.\nIt changed the state of {', '.join(changed)}, because it seeds or draws from the "
            "global RNG. Use a private generator: torch.Generator().manual_seed(seed) or np.random.default_rng(seed)."
        )
        _seed_globals(2)
        again = _split(impl, n, val_fraction, seed)[:2]
    assert again == (train, val), (
        f"Called {call} twice (with torch.manual_seed(1) before the first call and torch.manual_seed(2) before "
        "the second).\nGot two different splits; the same seed must give the same split whatever the global RNG "
        "state is."
    )


@pytest.mark.exercise("train_val_split")
def test_train_val_split_defaults(impl):
    # Documented defaults: val_fraction=0.1 and seed=0 (the reference's exact split is not the contract,
    # so compare the default call with the explicit one).
    for args, explicit in (((50,), (50, 0.1, 0)), ((40, 0.5), (40, 0.5, 0))):
        *defaults, call = _split(impl, *args)
        *expected, explicit_call = _split(impl, *explicit)
        assert defaults == expected, (
            f"Called {call}.\nReturned {defaults}, expected the same split as {explicit_call}, {expected}, "
            "because the defaults are val_fraction=0.1 and seed=0."
        )


@pytest.mark.exercise("train_val_split")
@given(SEEDS)
def test_train_val_split_depends_on_the_seed(impl, seed):
    _, val_a, call = _split(impl, 60, 0.25, seed)
    _, val_b, _ = _split(impl, 60, 0.25, seed + 1)
    assert set(val_a) != set(val_b), (
        f"Called {call} and again with seed={seed + 1}.\nBoth gave the validation indices {sorted(val_a)}, "
        "because the split does not depend on the seed (is it shuffled at all?)."
    )


@pytest.mark.exercise("train_val_split")
def test_train_val_split_rejects_bad_arguments(impl):
    split = impl.train_val_split
    for val_fraction in (0.0, 1.0, -0.2, 1.5):
        _expect_value_error(split, "train_val_split", 10, val_fraction, 0, match=re.escape(format(val_fraction, "g")),
                            because="val_fraction must be strictly between 0 and 1; name the bad value.")
    _expect_value_error(split, "train_val_split", 1, 0.5, 0, match=r"\b1\b",
                        because="one item cannot be split into two non-empty sides.")
    _expect_value_error(split, "train_val_split", 3, 0.1, 0, match=r"0\.1|\b0\b|\b3\b",
                        because="round(3 * 0.1) = 0 validation items leaves the validation side empty.")
    _expect_value_error(split, "train_val_split", 3, 0.9, 0, match=r"0\.9|\b3\b",
                        because="round(3 * 0.9) = 3 validation items leaves the training side empty.")


# --- make_dataloader ----------------------------------------------------------------------------


def _as_list(batch):
    return list(batch)


def _epoch(loader) -> list[int]:
    return [int(i) for batch in loader for i in batch]


@pytest.mark.exercise("make_dataloader")
@given(st.integers(10, 40), st.integers(1, 8), SEEDS)
def test_make_dataloader_same_seed_same_order_whatever_the_global_rng(impl, n, batch_size, seed):
    data = list(range(n))
    call = _call("make_dataloader", (_Raw(f"list(range({n}))"), batch_size), {"shuffle": True, "seed": seed})
    with _global_rngs_restored():
        _seed_globals(1)
        first = impl.make_dataloader(data, batch_size, shuffle=True, seed=seed, collate_fn=_as_list)
        _seed_globals(2)
        first_epochs = [_epoch(first), _epoch(first)]
        _seed_globals(3)
        second = impl.make_dataloader(data, batch_size, shuffle=True, seed=seed, collate_fn=_as_list)
        _seed_globals(4)
        second_epochs = [_epoch(second), _epoch(second)]
    assert data == list(range(n)), (
        f"Called {call} and iterated it.\nAfterwards the dataset is {data}, expected it unchanged: shuffle the "
        "loader's order (its sampler), never the caller's data."
    )
    assert sorted(first_epochs[0]) == data, (
        f"Called {call}.\nAn epoch gave {first_epochs[0]}, expected every item exactly once."
    )
    assert first_epochs == second_epochs, (
        f"Called {call} twice, with torch.manual_seed(...) called in between.\nThe first loader's epochs began "
        f"{first_epochs[0][:8]}, the second's {second_epochs[0][:8]}, because the order comes from the global RNG. "
        "Pass DataLoader a generator=torch.Generator().manual_seed(seed)."
    )


@pytest.mark.exercise("make_dataloader")
@given(SEEDS)
def test_make_dataloader_leaves_the_global_rng_alone(impl, seed):
    call = _call("make_dataloader", (_Raw("list(range(20))"), 4), {"shuffle": True, "seed": seed})
    with _global_rngs_restored():
        before = _rng_snapshot()
        impl.make_dataloader(list(range(20)), 4, shuffle=True, seed=seed)
        changed = _changed_rngs(before)
    assert not changed, (
        f"Called {call}.\nIt changed the state of {', '.join(changed)} (torch.manual_seed(seed)?), which resets "
        "the random stream of everything else in the program. Give the DataLoader its own generator."
    )


@pytest.mark.exercise("make_dataloader")
@given(SEEDS, SEEDS)
def test_make_dataloader_another_seed_another_order(impl, seed_a, seed_b):
    assume(seed_a != seed_b)
    data = list(range(30))
    order_a = _epoch(impl.make_dataloader(data, 5, shuffle=True, seed=seed_a))
    order_b = _epoch(impl.make_dataloader(data, 5, shuffle=True, seed=seed_b))
    assert order_a != order_b, (
        f"Called make_dataloader(list(range(30)), 5, shuffle=True) with seed={seed_a} and seed={seed_b}.\n"
        f"Both gave the order {order_a}, expected different orders: the seed decides the shuffle."
    )


@pytest.mark.exercise("make_dataloader")
@given(SEEDS)
def test_make_dataloader_reshuffles_every_epoch(impl, seed):
    data = list(range(30))
    loader = impl.make_dataloader(data, 5, shuffle=True, seed=seed)
    first, second = _epoch(loader), _epoch(loader)
    assert sorted(first) == data and sorted(second) == data, "every epoch must visit every item exactly once."
    assert first != second, (
        f"Called make_dataloader(list(range(30)), 5, shuffle=True, seed={seed}) and iterated it twice.\n"
        f"Both epochs gave {first}, because the order was fixed once; every epoch must draw a new permutation "
        "(from the loader's generator)."
    )


@pytest.mark.exercise("make_dataloader")
@given(st.integers(1, 30), st.integers(1, 8), SEEDS)
def test_make_dataloader_without_shuffle_keeps_the_order(impl, n, batch_size, seed):
    data = list(range(n))
    loader = impl.make_dataloader(data, batch_size, shuffle=False, seed=seed, collate_fn=_as_list)
    sizes = [len(batch) for batch in loader]
    expected_sizes = [batch_size] * (n // batch_size) + ([n % batch_size] if n % batch_size else [])
    order = _epoch(loader)
    call = _call("make_dataloader", (_Raw(f"list(range({n}))"), batch_size), {"shuffle": False, "seed": seed})
    assert order == data, f"Called {call}.\nThe items came in the order {order}, expected {data} (shuffle=False)."
    assert sizes == expected_sizes, f"Called {call}.\nThe batch sizes are {sizes}, expected {expected_sizes}."


@pytest.mark.exercise("make_dataloader")
def test_make_dataloader_defaults(impl):
    # Documented defaults: shuffle=True, seed=0, the default collate (a batch of ints is one tensor).
    data = list(range(30))
    loader = impl.make_dataloader(data, 5)
    call = "make_dataloader(list(range(30)), 5)"
    assert isinstance(loader, DataLoader), f"Called {call}.\nReturned {describe(loader)}, expected a DataLoader."
    batches = list(loader)
    assert all(isinstance(b, torch.Tensor) and tuple(b.shape) == (5,) for b in batches), (
        f"Called {call}.\nThe batches are {batches!r}, expected six tensors of 5 ids each, because without "
        "collate_fn the DataLoader's default collate stacks the items."
    )
    order = [int(i) for b in batches for i in b]
    explicit = _epoch(impl.make_dataloader(data, 5, shuffle=True, seed=0))
    assert order == explicit, (
        f"Called {call}.\nThe first epoch is {order}, expected {explicit}, the first epoch of "
        "make_dataloader(list(range(30)), 5, shuffle=True, seed=0), because the defaults are shuffle=True and seed=0."
    )


@pytest.mark.exercise("make_dataloader")
def test_make_dataloader_uses_collate_fn(impl):
    # Strings, so that the default collate (which would give lists of strings) does not fail and the
    # difference shows in the batches themselves.
    loader = impl.make_dataloader(["a", "bb", "ccc"], 2, shuffle=False, seed=0, collate_fn="+".join)
    call = 'make_dataloader(["a", "bb", "ccc"], 2, shuffle=False, seed=0, collate_fn="+".join)'
    assert isinstance(loader, DataLoader), f"Called {call}.\nReturned {describe(loader)}, expected a DataLoader."
    batches = list(loader)
    assert batches == ["a+bb", "ccc"], (
        f"Called {call}.\nGot the batches {batches!r}, expected ['a+bb', 'ccc'], because collate_fn must combine "
        "each batch (pass it on to DataLoader)."
    )
