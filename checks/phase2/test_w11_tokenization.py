"""Checks for w11_tokenization: word tokenizer, byte-level BPE, WordPiece, n-gram LM, perplexity.

Hugging Face ``tokenizers`` is the outside oracle for BPE (a BPE model built from the learner's own merges
must encode the same ids) and WordPiece (same vocabulary, same pieces); closed forms and the checks' own
small oracles cover the rest (the preprocessing and vocabulary rules, a recounting BPE trainer, the n-gram
formula counted from scratch, the token-weighted loss), so that a check never takes the code under test's
word for what is right. Everything runs offline on text written here; the performance check uses
``taylorswift.txt`` (minbpe's training text) when it is available. The perplexity checks use float64 tiny
models, so that a comparison can be tight (rtol 1e-9) on any CPU; the one float32 check uses a tolerance
float32 can meet.

Checklist notes (CONTRACTS.md items that do not apply, and why):

- Devices and the ``meta`` device (3): only ``calculate_perplexity`` touches torch, and it must return a
  Python float, which needs real values; no exercise creates tensors of its own.
- Module structure (7): no exercise builds a module; ``calculate_perplexity`` only evaluates one (its
  parameters and mode are checked to be left as found).
- Randomness (8): no exercise draws random numbers (no ``generator`` argument); the dropout of the model
  given to ``calculate_perplexity`` must simply be off, which the eval-mode check observes.
- Batch dimensions (2): the tokenizers and the n-gram model take one string or one token sequence;
  ``calculate_perplexity`` takes any number of leading dimensions, which is checked.
- Extreme values (9): tokenizers have none; the n-gram model's extreme is a long text whose probability
  underflows, and ``calculate_perplexity``'s are logits at +-1e4 and a target 800 nats below the rest.
- Errors (10): every documented ``ValueError`` is raised; where the docstring names an offending value
  (``vocab_size``, ``n``, ``k``, an unknown token id) the message is checked to contain it.
"""

from __future__ import annotations

import copy
import math
import random
import re
import time
from collections import Counter
from itertools import pairwise

import pytest
import torch
import torch.nn.functional as F
from hypothesis import example, given, settings
from hypothesis import strategies as st

from checks.data import CorpusUnavailable, load_corpus
from checks.numerics import assert_close, compare_with_reference, likely_cause
from checks.torch_strategies import generator, seeds

pytestmark = pytest.mark.kata("w11_tokenization")

KATA = "w11_tokenization"

SPECIAL_IDS = {"<PAD>": 0, "<UNK>": 1, "<START>": 2, "<END>": 3, "<URL>": 4, "<USER>": 5, "<HASHTAG>": 6}

_SAMPLE = (
    "The quick brown fox jumps over the lazy dog. The dog sleeps; the fox runs on and on.\n"
    "Tokenizers turn text into numbers: the numbers are the only thing a language model ever sees.\n"
    "Byte-pair encoding starts from bytes and merges the most frequent pair again and again, so that\n"
    "frequent words become single tokens and rare words fall apart into pieces. Naïve café owners in\n"
    "Zürich say “grüezi”, and 東京 is Tokyo; emoji such as 🙂 and 🚀 take four bytes each in UTF-8.\n"
    "The fox and the dog are friends now. The end? Not quite: the the the then there these those.\n"
)


# --------------------------------------------------------------------------------------------------
# AdvancedTokenizer
# --------------------------------------------------------------------------------------------------

_plain_words = st.text(alphabet="abcAB", min_size=1, max_size=3)


@st.composite
def _tweet_tokens(draw):
    word = draw(_plain_words)
    kind = draw(st.sampled_from(["word", "word", "word", "user", "tag", "url"]))
    if kind == "user":
        return "@" + word
    if kind == "tag":
        return "#" + word
    if kind == "url":
        scheme = draw(st.sampled_from(["http://", "https://", "HTTP://", "Https://"]))
        tail = draw(st.sampled_from(["/", "/#", "/?by=@", "/#!@"]))
        # Right after '@' or '#', a URL is still a URL: only substituting URLs first keeps it whole.
        before = draw(st.sampled_from(["", "", "@", "#"]))
        return before + scheme + word + ".com" + tail + word
    return word


_tweets = st.builds(lambda words, sep: sep.join(words), st.lists(_tweet_tokens(), max_size=8),
                    st.sampled_from([" ", " ", "  ", "\n", " ,"]))
_corpora = st.lists(_tweets, min_size=1, max_size=6)


def _preprocess_oracle(text: str) -> str:
    """The docstring's rule, written out: lower-case, then URLs, mentions and hashtags in that order."""
    text = text.lower()
    for pattern, placeholder in ((r"http\S+", "<URL>"), (r"@\w+", "<USER>"), (r"#\w+", "<HASHTAG>")):
        text = re.sub(pattern, placeholder, text)
    return text


def _vocab_oracle(texts, vocab_size) -> tuple[Counter, dict[str, int]]:
    """word_counts and word_to_idx by the docstring: specials, then words by (-count, word), as many as fit."""
    counts = Counter(word for text in texts for word in _preprocess_oracle(text).split())
    words = sorted((w for w in counts if w not in SPECIAL_IDS), key=lambda w: (-counts[w], w))
    return counts, {w: i for i, w in enumerate([*SPECIAL_IDS, *words[: vocab_size - len(SPECIAL_IDS)]])}


def _build(impl, texts, vocab_size):
    tok = impl.AdvancedTokenizer(vocab_size)
    tok.build_vocab(list(texts))
    return tok


@pytest.mark.exercise("AdvancedTokenizer")
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Read THIS https://x.io/a #NLP @Ana", "read this <URL> <HASHTAG> <USER>"),
        ("see HTTP://x.io/#Top?by=@Me, then #Go", "see <URL> then <HASHTAG>"),
        ("@http://x.io and #Https://y.io", "@<URL> and #<URL>"),
    ],
)
def test_placeholders_survive_preprocessing(impl, text, expected):
    tok = impl.AdvancedTokenizer(20)
    got = tok.preprocess_text(text)
    assert got == expected, (
        f"Called preprocess_text({text!r}). Returned {got!r}, expected {expected!r}, because the text is "
        "lower-cased BEFORE the placeholders go in (lower-casing afterwards turns <URL> into <url>, which is not a "
        "special token: the learning path's bug), and URLs are replaced first, so a URL right after '@' or '#' "
        "stays a URL."
    )


@pytest.mark.exercise("AdvancedTokenizer")
@given(text=_tweets)
def test_preprocess_follows_the_documented_rule(impl, text):
    got = impl.AdvancedTokenizer(20).preprocess_text(text)
    expected = _preprocess_oracle(text)
    assert got == expected, (
        f"Called preprocess_text({text!r}). Returned {got!r}, expected {expected!r}, because preprocess_text "
        "lower-cases the text, then replaces http\\S+ by <URL>, @\\w+ by <USER> and #\\w+ by <HASHTAG>, in that "
        "order, and changes nothing else (the spaces and punctuation stay)."
    )


@pytest.mark.exercise("AdvancedTokenizer")
def test_placeholders_map_to_special_ids(impl):
    texts = ["see http://a.b/c and @bob on #fun", "HTTP://X.Y is #cool, says @Eve"]
    tok = _build(impl, texts, 50)
    assert tuple(impl.AdvancedTokenizer.SPECIAL_TOKENS) == tuple(SPECIAL_IDS), (
        f"AdvancedTokenizer.SPECIAL_TOKENS is {impl.AdvancedTokenizer.SPECIAL_TOKENS!r}; expected "
        f"{tuple(SPECIAL_IDS)!r}, the special tokens in id order."
    )
    for token, idx in SPECIAL_IDS.items():
        assert tok.word_to_idx.get(token) == idx, (
            f"After build_vocab({texts!r}), word_to_idx[{token!r}] is {tok.word_to_idx.get(token)!r}; expected "
            f"{idx}: the special tokens take the fixed ids {SPECIAL_IDS}."
        )
        got = tok.idx_to_word.get(idx)
        assert got == token, f"idx_to_word[{idx}] is {got!r}, expected {token!r}."
    text = "Https://t.co/x @Ann #ML"
    got = tok.encode(text)
    assert got == [4, 5, 6], (
        f"Called encode({text!r}). Returned {got}, expected [4, 5, 6] (<URL>, <USER>, <HASHTAG>), because a URL, a "
        "mention and a hashtag must become their placeholders' special ids, whatever their case."
    )
    assert "<url>" not in tok.word_to_idx, (
        "'<url>' is in the vocabulary: the placeholders were lower-cased after insertion."
    )


@pytest.mark.exercise("AdvancedTokenizer")
@given(texts=_corpora, vocab_size=st.integers(7, 20))
def test_vocab_encode_and_decode_follow_the_rules(impl, texts, vocab_size):
    pristine = list(texts)
    tok = _build(impl, texts, vocab_size)
    assert texts == pristine, f"build_vocab changed the list of texts it was given: {pristine!r} became {texts!r}."
    counts, word_to_idx = _vocab_oracle(texts, vocab_size)
    assert tok.word_counts == counts, (
        f"Called build_vocab({texts!r}). word_counts is {dict(tok.word_counts)}, expected {dict(counts)}, "
        "because it counts every word of preprocess_text(t).split() for every text, placeholders included."
    )
    assert tok.word_to_idx == word_to_idx, (
        f"Called build_vocab({texts!r}) with vocab_size={vocab_size}. word_to_idx is {tok.word_to_idx}, expected "
        f"{word_to_idx}, because the vocabulary is the 7 special tokens, then the other words by count "
        "(descending) with ties broken by the word itself, as many as fit."
    )
    idx_to_word = {i: w for w, i in word_to_idx.items()}
    assert tok.idx_to_word == idx_to_word, f"idx_to_word is {tok.idx_to_word}, expected {idx_to_word}."
    for text in texts:
        got = tok.encode(text)
        expected = [word_to_idx.get(w, SPECIAL_IDS["<UNK>"]) for w in _preprocess_oracle(text).split()]
        assert got == expected, (
            f"Called encode({text!r}). Returned {got}, expected {expected}: the ids of the preprocessed words, "
            "<UNK> (1) for a word outside the vocabulary."
        )
        ids = [*expected, len(word_to_idx), vocab_size + 3]  # the last two are not ids
        decoded = tok.decode(ids)
        want = " ".join(idx_to_word.get(i, "<UNK>") for i in ids)
        assert decoded == want, (
            f"Called decode({ids}). Returned {decoded!r}, expected {want!r}: the words joined by single spaces, "
            "'<UNK>' for an id that is not in the vocabulary."
        )


@pytest.mark.exercise("AdvancedTokenizer")
@given(texts=_corpora, vocab_size=st.integers(7, 40))
def test_vocab_size_never_exceeded_and_ids_are_contiguous(impl, texts, vocab_size):
    tok = _build(impl, texts, vocab_size)
    n = len(tok.word_to_idx)
    assert n <= vocab_size, (
        f"Called build_vocab({texts!r}) with vocab_size={vocab_size}: the vocabulary has {n} tokens. The special "
        "tokens count towards vocab_size: keep at most vocab_size - 7 ordinary words."
    )
    assert sorted(tok.word_to_idx.values()) == list(range(n)), (
        f"The ids of word_to_idx are {sorted(tok.word_to_idx.values())}; expected 0..{n - 1} without gaps or "
        "duplicates (did a placeholder get a second id?)."
    )
    inverse = {i: w for w, i in tok.word_to_idx.items()}
    assert tok.idx_to_word == inverse, "idx_to_word is not the inverse of word_to_idx."
    words = set(_vocab_oracle(texts, vocab_size)[0]) - set(SPECIAL_IDS)
    if vocab_size >= 7 + len(words):
        assert n == 7 + len(words), (
            f"Called build_vocab({texts!r}) with vocab_size={vocab_size}: there is room for all {len(words)} "
            f"distinct words, but the vocabulary has {n} tokens, expected {7 + len(words)}."
        )
        for text in texts:
            assert 1 not in tok.encode(text), (
                f"Called encode({text!r}) with room for every word (vocab_size={vocab_size}, {len(words)} distinct "
                f"words): got {tok.encode(text)}, which contains <UNK> (1)."
            )


@pytest.mark.exercise("AdvancedTokenizer")
@given(texts=_corpora, vocab_size=st.integers(7, 14), order=st.randoms(use_true_random=False))
def test_vocab_does_not_depend_on_text_order(impl, texts, vocab_size, order):
    shuffled = list(texts)
    order.shuffle(shuffled)
    a, b = _build(impl, texts, vocab_size), _build(impl, shuffled, vocab_size)
    assert a.word_to_idx == b.word_to_idx, (
        f"build_vocab({texts!r}) gives {a.word_to_idx} but the same texts in the order {shuffled!r} give "
        f"{b.word_to_idx} (vocab_size={vocab_size}). Break ties in the count by the word itself, not by the "
        "order in which words were first seen (Counter.most_common keeps first-seen order)."
    )


@pytest.mark.exercise("AdvancedTokenizer")
def test_ties_broken_by_word(impl):
    tok = _build(impl, ["b a", "c"], 9)
    got = [tok.idx_to_word[i] for i in range(7, len(tok.idx_to_word))]
    assert got == ["a", "b"], (
        f"Called build_vocab(['b a', 'c']) with vocab_size=9 (room for 2 words; a, b and c are seen once each). "
        f"The words after the special tokens are {got}, expected ['a', 'b'], because ties go to the smaller word."
    )


@pytest.mark.exercise("AdvancedTokenizer")
def test_build_vocab_accumulates_counts_over_calls(impl):
    tok = impl.AdvancedTokenizer(9)  # room for 2 ordinary words
    empty = (tok.word_to_idx, tok.idx_to_word, tok.word_counts)
    assert empty == ({}, {}, Counter()), (
        f"A new AdvancedTokenizer(9) has word_to_idx, idx_to_word, word_counts = {empty!r}; expected "
        "({}, {}, Counter()): the vocabulary is empty until build_vocab."
    )
    tok.build_vocab(["a a b"])
    tok.build_vocab(text for text in ["b c c", "c"])  # any iterable of texts, read once
    expected_counts = Counter({"a": 2, "b": 2, "c": 3})
    assert tok.word_counts == expected_counts, (
        f"Called build_vocab(['a a b']), then build_vocab(['b c c', 'c']) on the same tokenizer. word_counts is "
        f"{dict(tok.word_counts)}, expected {dict(expected_counts)}, because build_vocab ADDS the words to "
        "word_counts: a second call accumulates, it does not start over."
    )
    got = [tok.idx_to_word.get(i) for i in (7, 8)]
    assert got == ["c", "a"], (
        f"After those two calls (c: 3, a: 2, b: 2 in all) with vocab_size=9, ids 7 and 8 are {got}, expected "
        "['c', 'a'], because the vocabulary is rebuilt from all the counts so far."
    )


@pytest.mark.exercise("AdvancedTokenizer")
def test_unknown_words_and_ids(impl):
    tok = _build(impl, ["the cat", "The dog", "a cat"], 10)
    assert tok.encode("the fox at http://t.co") == [8, 1, 1, 4], (
        f"Called encode('the fox at http://t.co') after build_vocab(['the cat', 'The dog', 'a cat']) with "
        f"vocab_size=10: got {tok.encode('the fox at http://t.co')}, expected [8, 1, 1, 4] ('the' is the second "
        "most frequent word; 'fox' and 'at' are unknown: <UNK> is 1; a URL is <URL>, 4)."
    )
    assert tok.decode([8, 7, 99]) == "the cat <UNK>", (
        f"Called decode([8, 7, 99]): got {tok.decode([8, 7, 99])!r}, expected 'the cat <UNK>' (99 is not an id)."
    )


@pytest.mark.exercise("AdvancedTokenizer")
def test_encode_and_decode_before_build_vocab(impl):
    tok = impl.AdvancedTokenizer(10)
    got = tok.encode("Hello world")
    assert got == [1, 1], (
        f"Called AdvancedTokenizer(10).encode('Hello world') before any build_vocab. Returned {got}, expected [1, 1], "
        "because the vocabulary is still empty and an unknown word gets the fixed id of <UNK>, 1."
    )
    got = tok.decode([1, 8])
    assert got == "<UNK> <UNK>", (
        f"Called AdvancedTokenizer(10).decode([1, 8]) before any build_vocab. Returned {got!r}, expected "
        "'<UNK> <UNK>', because an id that is not in the (empty) vocabulary decodes to <UNK>."
    )


@pytest.mark.exercise("AdvancedTokenizer")
def test_default_vocab_size_is_10000(impl):
    tok = impl.AdvancedTokenizer()
    tok.build_vocab([" ".join(f"w{i}" for i in range(10_001))])
    assert len(tok.word_to_idx) == 10_000, (
        f"AdvancedTokenizer() then build_vocab on 10001 distinct words: the vocabulary has {len(tok.word_to_idx)} "
        "tokens, expected 10000, because vocab_size defaults to 10000 (7 special tokens + 9993 words)."
    )


@pytest.mark.exercise("AdvancedTokenizer")
def test_vocab_size_too_small_raises(impl):
    with pytest.raises(ValueError, match="6"):
        impl.AdvancedTokenizer(6)
    tok = _build(impl, ["a b"], 7)  # the smallest legal size: the special tokens only
    assert tok.encode("a b") == [1, 1], f"With vocab_size=7 there is no room for words: got {tok.encode('a b')}."


# --------------------------------------------------------------------------------------------------
# BPETokenizer
# --------------------------------------------------------------------------------------------------


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's printable stand-in character for every byte (what HF's ByteLevel pre-tokenizer uses)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = dict(zip(printable, printable, strict=True)), 0
    for b in range(256):
        if b not in chars:
            chars[b] = 256 + extra
            extra += 1
    return {b: chr(c) for b, c in chars.items()}


def _hf_bpe_with(merges: dict[tuple[int, int], int]):
    """A Hugging Face BPE tokenizer with exactly these merges and ids, over the whole text (no regex split)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    to_char = _bytes_to_unicode()
    strings = {b: to_char[b] for b in range(256)}
    hf_merges = []
    for (a, b), new in sorted(merges.items(), key=lambda kv: kv[1]):
        strings[new] = strings[a] + strings[b]
        hf_merges.append((strings[a], strings[b]))
    hf = Tokenizer(models.BPE(vocab={s: i for i, s in strings.items()}, merges=hf_merges))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    hf.decoder = decoders.ByteLevel()
    return hf


def _naive_train(text: str, vocab_size: int | None) -> dict[tuple[int, int], int]:
    """The checks' own oracle: the recount-every-merge trainer, minbpe's ``BasicTokenizer.train`` (``get_stats``
    then ``merge`` after every merge) with this kata's tie-break. Correct and simple; only slow.
    ``vocab_size=None`` merges until no pair is left."""
    ids = list(text.encode("utf-8"))
    merges: dict[tuple[int, int], int] = {}
    while vocab_size is None or len(merges) < vocab_size - 256:
        stats: dict[tuple[int, int], int] = {}
        for pair in pairwise(ids):
            stats[pair] = stats.get(pair, 0) + 1
        if not stats:
            if vocab_size is None:
                return merges
            raise ValueError(f"the text runs out of pairs after {len(merges)} merges")
        pair = max(stats, key=lambda p: (stats[p], -p[0], -p[1]))
        new, out, i, n = 256 + len(merges), [], 0, len(ids)
        while i < n:
            if i + 1 < n and ids[i] == pair[0] and ids[i + 1] == pair[1]:
                out.append(new)
                i += 2
            else:
                out.append(ids[i])
                i += 1
        ids = out
        merges[pair] = new
    return merges


def _first_difference(a: list, b: list) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


def _assert_merges(tok, expected: dict, call: str) -> None:
    got = list(getattr(tok, "merges", {}).items())
    want = list(expected.items())
    if got != want:
        k = _first_difference(got, want)
        raise AssertionError(
            f"Called {call}. The merges differ from rank {k}: got {got[k] if k < len(got) else 'nothing'}, expected "
            f"{want[k] if k < len(want) else 'nothing'}.\nGot      {got[: k + 3]}\nexpected {want[: k + 3]}.\n"
            "Because each step merges the most frequent pair of the CURRENT sequence (overlapping pairs counted), "
            "ties going to the smallest (first, second), and train replaces any earlier merges."
        )


@pytest.fixture(scope="module")
def trained_bpe(impl):
    tok = impl.BPETokenizer()
    tok.train(_SAMPLE, 320)
    return tok


_sample_like = st.text(alphabet=st.sampled_from(sorted(set(_SAMPLE))), max_size=80)
_any_text = st.one_of(st.text(max_size=40), _sample_like)


@pytest.mark.exercise("BPETokenizer")
def test_bpe_new_tokenizer_has_the_256_byte_tokens(impl):
    tok = impl.BPETokenizer()
    assert tok.merges == {}, f"A new BPETokenizer() has merges {tok.merges!r}; expected none ({{}})."
    assert tok.vocab == {i: bytes([i]) for i in range(256)}, (
        f"A new BPETokenizer() has a vocab of {len(tok.vocab)} entries; expected exactly the 256 byte tokens, "
        "vocab[i] == bytes([i])."
    )


@pytest.mark.exercise("BPETokenizer")
@given(text=st.text(max_size=40))
def test_bpe_untrained_is_plain_bytes(impl, text):
    tok = impl.BPETokenizer()
    ids = tok.encode(text)
    assert ids == list(text.encode("utf-8")), (
        f"A new BPETokenizer() has no merges: encode({text!r}) must be the UTF-8 bytes "
        f"{list(text.encode('utf-8'))}, got {ids}."
    )
    back = tok.decode(ids)
    assert back == text, (
        f"Called decode({ids}) on a new BPETokenizer(). Returned {back!r}, expected {text!r}, because decode must "
        "join the tokens' BYTES and decode them once: a character's UTF-8 bytes may sit in different tokens."
    )


@pytest.mark.exercise("BPETokenizer")
@given(text=_any_text)
def test_bpe_round_trip_any_unicode(impl, trained_bpe, text):
    ids = trained_bpe.encode(text)
    assert isinstance(ids, list) and all(i in trained_bpe.vocab for i in ids), (
        f"encode({text!r}) returned {ids!r}: expected a list of ids of the vocabulary."
    )
    pristine = list(ids)
    back = trained_bpe.decode(ids)
    assert ids == pristine, f"decode changed the list of ids it was given: {pristine} became {ids}."
    assert back == text, (
        f"After train(_SAMPLE, 320), encode({text!r}) gave {ids} and decode gave back {back!r}: "
        "decode(encode(s)) must equal s for every string."
    )


@pytest.mark.exercise("BPETokenizer")
@pytest.mark.parametrize("ids", [[0xE4, 0xB8], [0x41, 0xFF, 0x42], [0xF0, 0x9F, 0x99, 0x82, 0x80]])
def test_bpe_decode_replaces_invalid_utf8(impl, ids):
    expected = bytes(ids).decode("utf-8", errors="replace")
    got = impl.BPETokenizer().decode(ids)
    assert got == expected, (
        f"Called decode({ids}) on a new BPETokenizer() (bytes {bytes(ids)!r}, not valid UTF-8). Returned {got!r}, "
        f"expected {expected!r}, because decode joins the bytes and decodes them with errors='replace': an id "
        "sequence that is not valid UTF-8 gives U+FFFD, never an exception."
    )


@pytest.mark.exercise("BPETokenizer")
@pytest.mark.parametrize("vocab_size", [256, 257, 280, 320])
def test_bpe_exact_vocab_size(impl, vocab_size):
    tok = impl.BPETokenizer()
    tok.train(_SAMPLE, vocab_size)
    assert len(tok.vocab) == vocab_size and len(tok.merges) == vocab_size - 256, (
        f"Called train(_SAMPLE, vocab_size={vocab_size}). len(vocab) is {len(tok.vocab)} and len(merges) is "
        f"{len(tok.merges)}; expected {vocab_size} and {vocab_size - 256} (256 byte tokens + one per merge)."
    )
    assert list(tok.merges.values()) == list(range(256, vocab_size)), (
        f"The merges' new ids, in the dict's order, are {list(tok.merges.values())[:10]}...; expected 256, 257, ... "
        "in rank order."
    )
    assert all(tok.vocab[i] == bytes([i]) for i in range(256)), "vocab[i] must be bytes([i]) for the 256 byte tokens."
    _assert_merges(tok, _naive_train(_SAMPLE, vocab_size), f"train(_SAMPLE, {vocab_size})")
    for (a, b), new in tok.merges.items():
        assert tok.vocab[new] == tok.vocab[a] + tok.vocab[b], (
            f"vocab[{new}] is {tok.vocab[new]!r}; the merge {(a, b)} makes it vocab[{a}] + vocab[{b}] = "
            f"{tok.vocab[a] + tok.vocab[b]!r}."
        )


# '\x00' and '\x01' are bytes 0 and 1: token ids that a trainer might also use as markers ("no neighbour",
# "merged away").
_bpe_texts = st.text(alphabet="ab c\n\x00\x01é", max_size=120)


@pytest.mark.exercise("BPETokenizer")
@given(text=_bpe_texts, vocab_size=st.integers(257, 290))
def test_bpe_merges_equal_the_recounting_trainer(impl, text, vocab_size):
    try:
        expected = _naive_train(text, vocab_size)
    except ValueError:
        with pytest.raises(ValueError):
            impl.BPETokenizer().train(text, vocab_size)
        return
    tok = impl.BPETokenizer()
    tok.train(text, vocab_size)
    _assert_merges(tok, expected, f"train({text!r}, {vocab_size})")


@pytest.mark.exercise("BPETokenizer")
@given(text=st.one_of(_bpe_texts, st.text(alphabet="ab\x01", max_size=60)))
# (b, a) merges first; then 'baaa' holds (a, a) once, at its last two bytes, and a search for it in the text
# must also try the overlapping match there, not only the first 'aa' (inside the token 'ba' by now).
@example(text="ba ba baaa")
@example(text="ab\x00ab\x00ab\x00")  # byte 0 is a neighbour like any other, not a marker for "no token"
def test_bpe_trains_until_the_last_pair(impl, text):
    expected = _naive_train(text, None)  # every merge the text allows, until a single token (or none) is left
    vocab_size = 256 + len(expected)
    tok = impl.BPETokenizer()
    tok.train(text, vocab_size)
    _assert_merges(tok, expected, f"train({text!r}, {vocab_size}) (the largest vocabulary this text allows)")
    with pytest.raises(ValueError):
        impl.BPETokenizer().train(text, vocab_size + 1)  # one merge more than there are pairs: ValueError


@pytest.mark.exercise("BPETokenizer")
def test_bpe_train_again_replaces_the_merges(impl):
    first, second = _SAMPLE, "abcabcabd xyxyxy " * 4
    tok = impl.BPETokenizer()
    tok.train(first, 300)
    tok.train(second, 266)
    _assert_merges(tok, _naive_train(second, 266), "train(_SAMPLE, 300), then train('abcabcabd xyxyxy ' * 4, 266)")
    assert len(tok.vocab) == 266, (
        f"After a second train(..., 266), len(vocab) is {len(tok.vocab)}; expected 266: the new merges replace "
        "the earlier ones and their tokens."
    )


@pytest.mark.exercise("BPETokenizer")
@pytest.mark.parametrize(
    ("text", "vocab_size", "expected"),
    [
        ("xyab", 257, {(97, 98): 256}),
        ("aaabdaaabac", 259, {(97, 97): 256, (97, 98): 257, (256, 257): 258}),
        ("aaa", 258, {(97, 97): 256, (256, 97): 257}),  # [a, a, a] -> [X, a]: no overlap, left to right
        ("", 256, {}),
    ],
)
def test_bpe_ties_go_to_the_smallest_pair(impl, text, vocab_size, expected):
    tok = impl.BPETokenizer()
    tok.train(text, vocab_size)
    assert tok.merges == expected, (
        f"Called train({text!r}, {vocab_size}). merges is {tok.merges}, expected {expected}, because among equally "
        "frequent pairs the smallest (first, second) wins - not the first one seen (insertion order) - and "
        "occurrences are replaced left to right without overlap."
    )


@pytest.mark.exercise("BPETokenizer")
def test_bpe_train_verbose_prints_each_merge(impl, capsys):
    impl.BPETokenizer().train(_SAMPLE, 260)
    quiet = capsys.readouterr().out
    assert quiet == "", f"train(_SAMPLE, 260) printed {quiet!r}; verbose defaults to False: print nothing."
    tok = impl.BPETokenizer()
    tok.train(_SAMPLE, 260, verbose=True)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    for (a, b), new in tok.merges.items():
        assert any(str(a) in line and str(b) in line and str(new) in line for line in lines), (
            f"train(_SAMPLE, 260, verbose=True) printed {lines}; no line names the merge ({a}, {b}) -> {new}. "
            "verbose=True prints one line per merge, naming the pair and its new id."
        )


@pytest.mark.exercise("BPETokenizer")
def test_bpe_encode_applies_merges_in_rank_order(impl, tmp_path):
    path = tmp_path / "rank.bpe"
    path.write_text("bpe v1\n98 99\n97 98\n", encoding="utf-8")  # rank 0: (b, c) -> 256; rank 1: (a, b) -> 257
    tok = impl.BPETokenizer().load(path)
    for text, expected in [("abc", [97, 256]), ("ab", [257]), ("abcab", [97, 256, 257])]:
        got = tok.encode(text)
        assert got == expected, (
            f"With merges {{(98, 99): 256, (97, 98): 257}} (loaded from a file), encode({text!r}) returned {got}, "
            f"expected {expected}, because the merge with the LOWEST rank goes first wherever it is - not the "
            "first mergeable pair from the left."
        )


@pytest.mark.exercise("BPETokenizer")
@given(text=_any_text)
def test_bpe_encode_matches_hf_bpe_with_the_same_merges(impl, trained_bpe, text):
    hf = _hf_bpe_with(trained_bpe.merges)
    expected = hf.encode(text).ids
    got = trained_bpe.encode(text)
    assert got == expected, (
        f"encode({text!r}) returned {got}; Hugging Face's BPE model with the same merges gives {expected}. "
        "Apply the merges in rank order: repeatedly merge the present pair with the lowest rank."
    )


@pytest.mark.exercise("BPETokenizer")
def test_bpe_encode_training_text_matches_hf(impl, trained_bpe):
    expected = _hf_bpe_with(trained_bpe.merges).encode(_SAMPLE).ids
    got = trained_bpe.encode(_SAMPLE)
    k = _first_difference(got, expected)
    assert got == expected, (
        f"encode(training text) gives {len(got)} tokens, Hugging Face's BPE with the same merges {len(expected)}; "
        f"they first differ at token {k}: got {got[k:k + 5]}, expected {expected[k:k + 5]}. "
        "Apply the merges in rank order."
    )
    assert len(got) < len(_SAMPLE.encode("utf-8")), "64 merges learned on a text must shorten that text."


@pytest.mark.exercise("BPETokenizer")
def test_bpe_save_load_round_trip(impl, trained_bpe, tmp_path):
    path = tmp_path / "tok.bpe"
    trained_bpe.save(path)
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    expected = ["bpe v1"] + [f"{a} {b}" for (a, b), _ in sorted(trained_bpe.merges.items(), key=lambda kv: kv[1])]
    if lines != expected:
        k = _first_difference(lines, expected)
        raise AssertionError(
            f"save wrote {len(lines)} non-empty lines; expected {len(expected)}: 'bpe v1', then '<first> <second>' "
            f"per merge in rank order. Line {k + 1} is {lines[k] if k < len(lines) else 'missing'!r}, expected "
            f"{expected[k] if k < len(expected) else 'nothing'!r}."
        )
    loaded = impl.BPETokenizer()
    loaded.train("the end of an earlier model", 260)  # load replaces whatever the tokenizer had
    returned = loaded.load(path)
    assert returned is loaded, "load(path) must return the tokenizer itself (self)."
    assert list(loaded.merges.items()) == list(trained_bpe.merges.items()), (
        "After save and load (into a tokenizer trained on something else before), merges differ from the saved "
        "ones: load replaces the merges with the file's, in rank order."
    )
    assert loaded.vocab == trained_bpe.vocab, (
        "After save and load, vocab differs: load must rebuild it from the merges."
    )
    assert loaded.encode(_SAMPLE) == trained_bpe.encode(_SAMPLE), "The loaded tokenizer encodes differently."


@pytest.mark.exercise("BPETokenizer")
def test_bpe_load_builds_the_vocab(impl, tmp_path):
    path = tmp_path / "abc.bpe"
    path.write_text("bpe v1\n97 98\n256 99\n", encoding="utf-8")
    tok = impl.BPETokenizer().load(path)
    assert tok.merges == {(97, 98): 256, (256, 99): 257}, f"Loaded merges {tok.merges} from 'bpe v1 / 97 98 / 256 99'."
    assert tok.vocab[257] == b"abc" and len(tok.vocab) == 258, (
        f"After loading two merges, vocab[257] is {tok.vocab.get(257)!r} and len(vocab) is {len(tok.vocab)}; "
        "expected b'abc' and 258."
    )
    got = tok.encode("abcab")
    assert got == [257, 256], (
        f"With merges (a, b) -> 256 and (256, c) -> 257, encode('abcab') is {got}, expected [257, 256]."
    )
    empty = tmp_path / "empty.bpe"
    impl.BPETokenizer().save(empty)
    tok = impl.BPETokenizer().load(empty)
    assert tok.merges == {} and len(tok.vocab) == 256, (
        f"Saving and loading a tokenizer without merges gave {len(tok.merges)} merges and {len(tok.vocab)} tokens; "
        "expected 0 and 256."
    )


@pytest.mark.exercise("BPETokenizer")
def test_bpe_byte_coverage_and_round_trip_like_hf(impl, trained_bpe):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    hf = Tokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(vocab_size=320, initial_alphabet=alphabet, show_progress=False)
    hf.train_from_iterator([_SAMPLE], trainer)
    assert len(set(alphabet) & set(hf.get_vocab())) == 256  # the oracle: HF byte-level BPE keeps every byte
    covered = {v for v in trained_bpe.vocab.values() if len(v) == 1}
    assert len(covered) == 256, (
        f"The trained vocabulary has {len(covered)} single-byte tokens; byte-level BPE keeps all 256."
    )
    rng = random.Random(0)
    for _ in range(20):
        text = bytes(rng.randrange(256) for _ in range(30)).decode("utf-8", errors="replace") + "".join(
            chr(rng.randrange(0x20, 0x2FFFF)) for _ in range(10)
        )
        text = text.encode("utf-8", errors="replace").decode("utf-8")
        assert hf.decode(hf.encode(text).ids) == text  # the property holds for the oracle...
        ids = trained_bpe.encode(text)
        back = trained_bpe.decode(ids)
        assert back == text, f"...and must hold for yours: decode(encode({text!r})) is {back!r}."


@pytest.mark.exercise("BPETokenizer")
def test_bpe_empty_text(impl, trained_bpe):
    assert trained_bpe.encode("") == [], f"encode('') returned {trained_bpe.encode('')}, expected []."
    assert trained_bpe.decode([]) == "", f"decode([]) returned {trained_bpe.decode([])!r}, expected ''."


@pytest.mark.exercise("BPETokenizer")
def test_bpe_bad_input_raises(impl, trained_bpe, tmp_path):
    with pytest.raises(ValueError, match="255"):
        impl.BPETokenizer().train(_SAMPLE, 255)
    with pytest.raises(ValueError):
        impl.BPETokenizer().train("ab", 300)  # one pair: at most one merge
    with pytest.raises(ValueError):
        impl.BPETokenizer().train("", 257)  # no pair at all
    with pytest.raises(ValueError, match="1000000"):
        trained_bpe.decode([97, 1000000])
    path = tmp_path / "not_bpe.txt"
    path.write_text("hello\n97 98\n", encoding="utf-8")
    with pytest.raises(ValueError):
        impl.BPETokenizer().load(path)


# ---- performance: incremental pair counts against recounting after every merge --------------------------


def _perf_corpus() -> tuple[str, str]:
    """taylorswift.txt (minbpe's training text) through the project's loader, or generated text of a similar size."""
    try:
        return load_corpus("taylorswift"), "taylorswift.txt"
    except CorpusUnavailable:  # not on this machine (set KATA_DATA_DIR): benchmark on generated text instead
        rng = random.Random(11)
        words = _SAMPLE.split()
        return " ".join(rng.choice(words) for _ in range(30_000)), "generated text (taylorswift.txt not found)"


@pytest.mark.perf
@pytest.mark.timeout(600)
@pytest.mark.exercise("BPETokenizer")
def test_bpe_trainer_is_faster_than_recounting(impl, reference, benchmark, bench_report):
    text, source = _perf_corpus()
    vocab_size = 512
    # A learner's trainer must clear 5x; the project's own reference is held to 25x.
    if impl is reference:
        wanted, bar = 25, "the reference's bar: at least 25x"
    else:
        wanted, bar = 5, "your bar: at least 5x, aim for 20x"

    def train():
        tok = impl.BPETokenizer()
        tok.train(text, vocab_size)
        return tok

    start = time.perf_counter()
    tok = train()
    fast = time.perf_counter() - start
    start = time.perf_counter()
    naive_merges = _naive_train(text, vocab_size)
    naive = time.perf_counter() - start
    assert list(tok.merges.items()) == list(naive_merges.items()), (
        f"On {source}, train(text, {vocab_size}) learns different merges from the recounting trainer."
    )
    benchmark.pedantic(train, rounds=3, iterations=1)
    if benchmark.stats is not None:
        fast = min(fast, benchmark.stats.stats.min)
    ratio = naive / fast
    print(
        f"\nBPE training on {source} ({len(text.encode('utf-8')):,} bytes), vocab_size={vocab_size}: "
        f"yours {fast:.3f} s, recounting {naive:.3f} s, speed-up {ratio:.1f}x ({bar})"
    )
    bench_report(f"BPE training on {source}, vocab_size={vocab_size}: {fast:.3f} s vs {naive:.3f} s for the trainer "
                 f"that recounts every pair after each merge: {ratio:.1f}x faster ({bar})")
    assert ratio >= wanted, (
        f"train took {fast:.2f} s against {naive:.2f} s for the trainer that recounts every pair after each merge "
        f"({ratio:.1f}x); {bar}. Update only the counts of the pairs next to each occurrence of the merged pair, "
        "and keep where each pair occurs."
    )


# --------------------------------------------------------------------------------------------------
# wordpiece_encode
# --------------------------------------------------------------------------------------------------


def _hf_wordpiece(vocab: set[str], unk: str = "[UNK]", max_chars: int = 100):
    from tokenizers import Tokenizer, models

    ids = {tok: i for i, tok in enumerate(sorted(vocab | {unk}))}
    return Tokenizer(models.WordPiece(vocab=ids, unk_token=unk, max_input_chars_per_word=max_chars))


_pieces = st.text(alphabet="abc", min_size=1, max_size=3)
_vocabs = st.sets(st.one_of(_pieces, _pieces.map(lambda p: "##" + p)), min_size=1, max_size=14)


@pytest.mark.exercise("wordpiece_encode")
@given(word=st.text(alphabet="abcd", max_size=9), vocab=_vocabs)
def test_wordpiece_matches_hf(impl, word, vocab):
    expected = _hf_wordpiece(vocab).encode(word, add_special_tokens=False).tokens
    got = impl.wordpiece_encode(word, set(vocab) | {"[UNK]"})
    assert got == expected, (
        f"Called wordpiece_encode({word!r}, vocab={sorted(vocab)}). Returned {got}, expected {expected} (Hugging Face "
        "WordPiece on the same vocabulary), because each step takes the LONGEST piece in the vocabulary, with '##' "
        "in front of pieces that do not start the word, and one unmatchable position makes the whole word [UNK]."
    )


@pytest.mark.exercise("wordpiece_encode")
@given(word=st.text(alphabet="abcd", max_size=9), vocab=_vocabs)
def test_wordpiece_matches_reference(impl, reference, word, vocab):
    pristine = set(vocab)
    expected = reference.wordpiece_encode(word, pristine, unk="<unk>")
    got = impl.wordpiece_encode(word, vocab, unk="<unk>")
    assert vocab == pristine, f"wordpiece_encode changed the vocabulary it was given: {sorted(vocab)}."
    assert got == expected, (
        f"Called wordpiece_encode({word!r}, {sorted(vocab)}, unk='<unk>'). Returned {got}, expected {expected}."
    )


@pytest.mark.exercise("wordpiece_encode")
@pytest.mark.parametrize(
    ("word", "expected"),
    [
        ("unaffable", ["un", "##aff", "##able"]),
        ("affable", ["aff", "##able"]),
        ("unaffablex", ["[UNK]"]),
        ("", []),
    ],
)
def test_wordpiece_docstring_examples(impl, word, expected):
    vocab = {"un": 0, "##aff": 1, "##able": 2, "##a": 3, "aff": 4}  # a dict works as a vocabulary too
    got = impl.wordpiece_encode(word, vocab)
    assert got == expected, f"Called wordpiece_encode({word!r}, {list(vocab)}). Returned {got}, expected {expected}."


@pytest.mark.exercise("wordpiece_encode")
def test_wordpiece_longest_match_first(impl):
    vocab = {"a", "ab", "abc", "##d", "##cd", "##b"}
    got = impl.wordpiece_encode("abcd", vocab)
    assert got == ["abc", "##d"], (
        f"Called wordpiece_encode('abcd', {sorted(vocab)}). Returned {got}, expected ['abc', '##d']: the longest "
        "piece that starts the word is 'abc'."
    )


@pytest.mark.exercise("wordpiece_encode")
@pytest.mark.parametrize("length", [100, 101])
def test_wordpiece_max_input_chars(impl, length):
    vocab = {"a", "##a"}
    word = "a" * length
    expected = _hf_wordpiece(vocab).encode(word, add_special_tokens=False).tokens
    got = impl.wordpiece_encode(word, vocab)
    assert got == expected, (
        f"Called wordpiece_encode('a' * {length}, {sorted(vocab)}). Returned {len(got)} pieces starting {got[:3]}, "
        f"expected {len(expected)} ({expected[:3]}...): words longer than max_input_chars_per_word=100 are [UNK]."
    )
    for limit, expected in [(3, ["<u>"]), (4, ["a", "##a", "##a", "##a"])]:
        got = impl.wordpiece_encode("aaaa", vocab, unk="<u>", max_input_chars_per_word=limit)
        assert got == expected, (
            f"Called wordpiece_encode('aaaa', {sorted(vocab)}, unk='<u>', max_input_chars_per_word={limit}). Returned "
            f"{got}, expected {expected}: a word LONGER than the limit is [unk] - the unk argument, not '[UNK]'."
        )


# --------------------------------------------------------------------------------------------------
# NGramLM
# --------------------------------------------------------------------------------------------------

_WORDS = ["the", "cat", "sat", "on", "mat"]
_tokens = st.lists(st.sampled_from(_WORDS), min_size=1, max_size=30)
# '<unk>' may occur in a training text like any token: then an unknown word shares its counts.
_tokens_with_unk = st.lists(st.sampled_from([*_WORDS, "<unk>"]), min_size=1, max_size=30)
_contexts = st.lists(st.sampled_from([*_WORDS, "zebra", "<s>", "<unk>"]), max_size=4)


def _ngram_prob_oracle(tokens, n, k, word, context=()) -> float:
    """P(word | context) by the docstring's formula, counted here from scratch."""
    vocab = set(tokens) | {"<unk>"}

    def known(t):
        return t if t in vocab or t == "<s>" else "<unk>"

    padded = ["<s>"] * (n - 1) + list(tokens)
    history = (["<s>"] * (n - 1) + [known(t) for t in context])[len(context):] if n > 1 else []
    h, w = tuple(history), known(word)
    contexts = [tuple(padded[i:i + n - 1]) for i in range(len(tokens))]
    c_hw = sum(1 for ctx, t in zip(contexts, tokens, strict=True) if ctx == h and t == w)
    return (c_hw + k) / (contexts.count(h) + k * len(vocab))


def _ngram_perplexity_oracle(train, n, k, tokens) -> float:
    padded = ["<s>"] * (n - 1) + list(tokens)
    logs = [math.log(_ngram_prob_oracle(train, n, k, t, padded[i:i + n - 1])) for i, t in enumerate(tokens)]
    return math.exp(-math.fsum(logs) / len(tokens))
_TEXT = ("the cat sat on the mat . the dog sat on the log . the cat saw the dog and the dog saw the cat . " * 3).split()


@pytest.mark.exercise("NGramLM")
@given(tokens=_tokens, n=st.integers(1, 4), k=st.sampled_from([0.1, 0.5, 1.0, 2.0]), context=_contexts)
def test_ngram_probabilities_sum_to_one(impl, tokens, n, k, context):
    lm = impl.NGramLM(n, k=k).fit(tokens)
    vocab = sorted(set(tokens) | {"<unk>"})
    probs = {w: lm.prob(w, context) for w in vocab}
    assert_close(
        sum(probs.values()), 1.0, rtol=1e-9, atol=1e-12,
        call=f"sum of NGramLM({n}, k={k}).fit({tokens}).prob(w, {context}) over V = {vocab}",
        because="add-k smoothing gives a probability distribution over the vocabulary (training tokens + <unk>) "
        "for ANY context, seen or not: P(w|h) = (c(h, w) + k) / (c(h) + k |V|).",
    )
    assert all(p > 0 for p in probs.values()), f"Some probabilities are not positive: {probs}."
    unseen = lm.prob("zebra", context)
    assert math.isclose(unseen, probs["<unk>"], rel_tol=1e-12), (
        f"prob('zebra', {context}) is {unseen}, prob('<unk>', {context}) is {probs['<unk>']}: a word outside the "
        "vocabulary is <unk>."
    )


@pytest.mark.exercise("NGramLM")
@given(tokens=_tokens_with_unk, n=st.integers(1, 4), k=st.sampled_from([0.1, 1.0]), context=_contexts,
       held_out=st.lists(st.sampled_from([*_WORDS, "zebra"]), min_size=1, max_size=10))
def test_ngram_matches_the_formula(impl, tokens, n, k, context, held_out):
    pristine = list(tokens)
    lm = impl.NGramLM(n, k=k).fit(tokens)
    assert tokens == pristine, f"fit changed the token list it was given: {pristine} became {tokens}."
    call = f"NGramLM({n}, k={k}).fit({tokens})"
    # The drawn context, and contexts seen in training: up to 3 tokens, longer than n - 1 for n < 4.
    for h in [context, *(tokens[max(0, i - 3):i] for i in range(0, len(tokens), 4))]:
        for w in [*_WORDS, "zebra", "<unk>"]:
            got = lm.prob(w, h)
            assert_close(
                got, _ngram_prob_oracle(tokens, n, k, w, h), rtol=1e-9, call=f"{call}.prob({w!r}, {h})",
                because="P(w|h) = (c(h, w) + k) / (c(h) + k |V|), with h the LAST n - 1 tokens of the context, "
                "left-padded with '<s>', and words or context tokens outside V (except '<s>') read as '<unk>'.",
                cause=likely_cause(KATA, "NGramLM", lambda cls, w=w, h=h: cls(n, k=k).fit(tokens).prob(w, h), got),
            )
    got = lm.perplexity(held_out)
    assert_close(
        got, _ngram_perplexity_oracle(tokens, n, k, held_out), rtol=1e-9, call=f"{call}.perplexity({held_out})",
        because="perplexity = exp(-mean log P(token | its context)), contexts padded with '<s>' at the start.",
        cause=likely_cause(KATA, "NGramLM", lambda cls: cls(n, k=k).fit(tokens).perplexity(held_out), got),
    )


@pytest.mark.exercise("NGramLM")
def test_ngram_unseen_context_is_uniform_not_zero(impl):
    lm = impl.NGramLM(2).fit("a b a b a c".split())  # k defaults to 1.0
    got = lm.prob("a", ["zebra"])
    assert got == pytest.approx(0.25, rel=1e-12), (
        f"NGramLM(2).fit('a b a b a c'.split()).prob('a', ['zebra']) returned {got}, expected 0.25 = 1/|V| with "
        "V = {a, b, c, <unk>}, because an unseen context has count 0 and add-k leaves k / (k |V|) - never 0."
    )
    got = lm.prob("b", ["a"])
    assert got == pytest.approx(3 / 7, rel=1e-12), (
        f"NGramLM(2).fit('a b a b a c'.split()).prob('b', ['a']) returned {got}, expected (2 + 1) / (3 + 4) = 3/7, "
        "because k defaults to 1.0."
    )
    got = lm.prob("b", ["zebra", "c", "a"])
    assert got == pytest.approx(3 / 7, rel=1e-12), (
        f"prob('b', ['zebra', 'c', 'a']) returned {got}, expected prob('b', ['a']) = 3/7, because only the LAST "
        "n - 1 tokens of the context matter."
    )
    got = lm.prob("a")
    assert got == pytest.approx(2 / 5, rel=1e-12), (
        f"prob('a') (no context) returned {got}, expected (1 + 1) / (1 + 4) = 0.4, because the default context () is "
        "left-padded with '<s>': it is the context of the first token."
    )
    perplexity = lm.perplexity("c c b b".split())  # the bigrams (c, c) and (b, b) were never seen
    assert math.isfinite(perplexity), (
        f"perplexity of a text with unseen bigrams is {perplexity}; smoothing keeps it finite."
    )
    got = lm.perplexity("a b a b".split())
    assert got == pytest.approx((0.4 * 3 / 7 * 0.5 * 3 / 7) ** -0.25, rel=1e-12), (
        f"perplexity('a b a b'.split()) is {got}, expected (0.4 * 3/7 * 0.5 * 3/7) ** (-1/4) (the docstring's example)."
    )


@pytest.mark.exercise("NGramLM")
def test_ngram_unknown_context_tokens_read_as_unk(impl):
    tokens = "a <unk> b a <unk> b c".split()  # V = {a, b, c, <unk>}; '<unk>' is followed by 'b' twice
    for n, context, expected in [(2, ["zebra"], 3 / 6), (3, ["a", "zebra"], 3 / 6), (2, ["c", "zebra"], 3 / 6)]:
        got = impl.NGramLM(n).fit(tokens).prob("b", context)
        assert got == pytest.approx(expected, rel=1e-12), (
            f"Called NGramLM({n}).fit({tokens}).prob('b', {context}). Returned {got}, expected {expected}, because a "
            "context token outside V ('zebra') is read as '<unk>', and the context ending in '<unk>' was followed "
            "by 'b' in both of its 2 occurrences: (2 + 1) / (2 + 4)."
        )
    got = impl.NGramLM(2).fit(tokens).perplexity(["zebra", "b"])
    expected = (1 / 5 * 3 / 6) ** -0.5
    assert got == pytest.approx(expected, rel=1e-12), (
        f"Called NGramLM(2).fit({tokens}).perplexity(['zebra', 'b']). Returned {got}, expected {expected} = "
        "(P(<unk> | <s>) * P(b | <unk>)) ** (-1/2) = (1/5 * 3/6) ** (-1/2), because the unknown 'zebra' is read as "
        "'<unk>' both as a word and as the context of 'b'."
    )


@pytest.mark.exercise("NGramLM")
def test_ngram_refit_starts_from_scratch(impl):
    first, second = "x y x y z".split(), "a b a b a c".split()
    lm = impl.NGramLM(2, k=0.5).fit(first)
    returned = lm.fit(second)
    assert returned is lm, "fit(tokens) must return the model itself (self)."
    for word, context in [("b", ["a"]), ("x", ["a"]), ("y", ["x"]), ("a", []), ("c", ["y"])]:
        got, expected = lm.prob(word, context), _ngram_prob_oracle(second, 2, 0.5, word, context)
        assert got == pytest.approx(expected, rel=1e-12), (
            f"NGramLM(2, k=0.5).fit({first}), then .fit({second}): prob({word!r}, {context}) is {got}, expected "
            f"{expected} (a model fitted on the second text only), because refitting starts from scratch: the counts "
            "AND the vocabulary of the first text are forgotten."
        )


@pytest.mark.exercise("NGramLM")
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(2, 3), k=st.sampled_from([0.1, 1.0]))
def test_ngram_training_text_beats_shuffled_text(impl, seed, n, k):
    shuffled = list(_TEXT)
    random.Random(seed).shuffle(shuffled)
    lm = impl.NGramLM(n, k=k).fit(_TEXT)
    train_pp, shuffled_pp = lm.perplexity(_TEXT), lm.perplexity(shuffled)
    assert train_pp < shuffled_pp, (
        f"NGramLM({n}, k={k}) fitted on a text gives it perplexity {train_pp:.4f}, but the same words shuffled "
        f"(seed {seed}) get {shuffled_pp:.4f}: a model of word order must find the real order less surprising."
    )


@pytest.mark.exercise("NGramLM")
@given(seed=st.integers(0, 2**31 - 1))
def test_unigram_perplexity_ignores_word_order(impl, seed):
    shuffled = list(_TEXT)
    random.Random(seed).shuffle(shuffled)
    lm = impl.NGramLM(1).fit(_TEXT)
    assert_close(lm.perplexity(shuffled), lm.perplexity(_TEXT), rtol=1e-9, call="NGramLM(1).perplexity(shuffled text)",
                 because="a unigram model has no context, so the order of the words cannot matter.")


@pytest.mark.exercise("NGramLM")
def test_ngram_perplexity_of_a_long_text_does_not_underflow(impl):
    tokens = ["a", "b", "c", "d"] * 1000  # P(text) = (1001/4005) ** 4000, about 1e-2409: below any float
    lm = impl.NGramLM(1, k=1.0).fit(tokens)
    got = lm.perplexity(tokens)
    expected = 4005 / 1001  # every unigram: (1000 + 1) / (4000 + 1 * |V|), |V| = 5 with <unk>
    assert_close(
        got, expected, rtol=1e-9, call="NGramLM(1, k=1.0).fit(['a', 'b', 'c', 'd'] * 1000).perplexity(same tokens)",
        because="perplexity = exp(-mean log P): sum the logs, since the product of 4000 probabilities underflows "
        "to 0 (and 0 ** (-1/N) is inf).",
        cause=likely_cause(KATA, "NGramLM", lambda cls: cls(1, k=1.0).fit(tokens).perplexity(tokens), got),
    )


@pytest.mark.exercise("NGramLM")
def test_ngram_bad_input_raises(impl):
    for n in (0, -3, 2.5):
        with pytest.raises(ValueError, match=re.escape(str(n))):
            impl.NGramLM(n)
    for k in (0.0, -0.5):
        with pytest.raises(ValueError, match=re.escape(str(k))):
            impl.NGramLM(2, k=k)
    with pytest.raises(ValueError):
        impl.NGramLM(2).fit([])
    with pytest.raises(ValueError):
        impl.NGramLM(2).fit(["a", "b"]).perplexity([])


# --------------------------------------------------------------------------------------------------
# calculate_perplexity
# --------------------------------------------------------------------------------------------------

VOCAB = 11


class _TinyLM(torch.nn.Module):
    """Embedding -> dropout -> linear: logits (..., V) for ids (...), float64 unless told otherwise.

    float64, so that the same positions give the same logits to many digits whatever the shape of the batch
    they sit in (float32 matrix kernels may round differently when T grows). Its parameters come from the
    seed alone: building it draws nothing from torch's global RNG.
    """

    def __init__(self, seed: int, dropout: float = 0.0, dtype: torch.dtype = torch.float64):
        super().__init__()
        g = generator(seed)
        self.embed = torch.nn.Parameter(torch.randn(VOCAB, 8, generator=g, dtype=dtype))
        self.drop = torch.nn.Dropout(dropout)
        self.head = torch.nn.Parameter(torch.randn(8, VOCAB, generator=g, dtype=dtype))
        self.bias = torch.nn.Parameter(torch.randn(VOCAB, generator=g, dtype=dtype))

    def forward(self, x):
        return self.drop(self.embed[x]) @ self.head + self.bias


class _RecordingLM(_TinyLM):
    """A _TinyLM that records, at every forward call, whether autograd was on and whether it was in train mode."""

    def __init__(self, seed: int):
        super().__init__(seed, dropout=0.5)
        self.calls: list[tuple[bool, bool]] = []

    def forward(self, x):
        self.calls.append((torch.is_grad_enabled(), self.training))
        return super().forward(x)


def _padded_batches(seed: int, pad: int = -100, num_batches: int = 3):
    """Batches of different sizes whose rows are right-padded with ``pad`` by different amounts."""
    g = generator(seed)
    batches = []
    for _ in range(num_batches):
        b, t = int(torch.randint(1, 4, (1,), generator=g)), int(torch.randint(2, 7, (1,), generator=g))
        x = torch.randint(1, VOCAB, (b, t), generator=g)
        y = torch.randint(1, VOCAB, (b, t), generator=g)
        lengths = torch.randint(1, t + 1, (b,), generator=g)
        y[torch.arange(t)[None, :] >= lengths[:, None]] = pad
        batches.append((x, y))
    return batches


def _oracle_perplexity(model, batches, ignore_index=-100) -> float:
    """exp(mean cross-entropy over every real token of the whole dataset), from each batch's logits in float64."""
    was = model.training
    model.eval()
    with torch.no_grad():
        logits = torch.cat([model(x).reshape(-1, VOCAB).double() for x, _ in batches])
        targets = torch.cat([y.reshape(-1) for _, y in batches])
    model.train(was)
    keep = targets != ignore_index
    return math.exp(F.cross_entropy(logits[keep], targets[keep]).item())


def _describe_batches(batches, ignore_index=-100) -> str:
    real = sum(int((y != ignore_index).sum()) for _, y in batches)
    total = sum(y.numel() for _, y in batches)
    shapes = ", ".join(str(tuple(y.shape)) for _, y in batches)
    return f"{len(batches)} batches of targets {shapes} with {real} real tokens and {total - real} padding"


@pytest.mark.exercise("calculate_perplexity")
@given(seed=seeds)
@settings(max_examples=15)
def test_perplexity_is_exp_of_token_weighted_loss(impl, seed):
    model, batches = _TinyLM(seed), _padded_batches(seed)
    pristine_batches, pristine_state = copy.deepcopy(batches), copy.deepcopy(model.state_dict())
    got = impl.calculate_perplexity(model, batches)
    assert isinstance(got, float), f"calculate_perplexity returned a {type(got).__name__}; return a Python float."
    for (x, y), (x0, y0) in zip(batches, pristine_batches, strict=True):
        assert torch.equal(x, x0) and torch.equal(y, y0), (
            f"calculate_perplexity changed a batch it was given: the targets {y0.tolist()} became {y.tolist()} "
            "(or the inputs changed). Build a mask or a copy; never write into the dataset's tensors."
        )
    for name, value in model.state_dict().items():
        assert torch.equal(value, pristine_state[name]), f"calculate_perplexity changed the model's {name}."
    assert_close(
        got, _oracle_perplexity(model, batches), rtol=1e-9,
        call=f"calculate_perplexity(model, {_describe_batches(batches)})",
        because="perplexity = exp(summed cross-entropy over real tokens / number of real tokens): padding "
        "(target == ignore_index) adds no loss and is not a token, and every token weighs the same whatever its batch.",
        cause=likely_cause(KATA, "calculate_perplexity", lambda f: f(model, copy.deepcopy(pristine_batches)), got,
                           rtol=1e-9),
    )


@pytest.mark.exercise("calculate_perplexity")
@given(seed=seeds, extra=st.integers(1, 5))
@settings(max_examples=10)
def test_perplexity_ignores_padding(impl, reference, seed, extra):
    model, batches = _TinyLM(seed), _padded_batches(seed)
    more = [
        (torch.cat([x, torch.ones(x.shape[0], extra, dtype=x.dtype)], 1),
         torch.cat([y, torch.full((y.shape[0], extra), -100, dtype=y.dtype)], 1))
        for x, y in batches
    ]
    before = impl.calculate_perplexity(model, batches)
    after = impl.calculate_perplexity(model, more)
    # float64 logits: the extra columns may change how a matrix product rounds, but only near 1e-16.
    assert_close(after, before, rtol=1e-9,
                 call=f"calculate_perplexity on the same batches with {extra} more padding columns",
                 because="padding positions must change neither the loss nor the token count.")
    compare_with_reference(impl, reference, "calculate_perplexity", model, more, rtol=1e-9,
                           because="padding is not a token.")


@pytest.mark.exercise("calculate_perplexity")
@given(seed=seeds)
@settings(max_examples=10)
def test_perplexity_honours_ignore_index(impl, seed):
    model, batches = _TinyLM(seed), _padded_batches(seed, pad=0)
    got = impl.calculate_perplexity(model, batches, ignore_index=0)
    assert_close(got, _oracle_perplexity(model, batches, ignore_index=0), rtol=1e-9,
                 call=f"calculate_perplexity(model, {_describe_batches(batches, 0)}, ignore_index=0)",
                 because="the padding id is the ignore_index argument, not always -100.",
                 cause=likely_cause(KATA, "calculate_perplexity", lambda f: f(model, batches, ignore_index=0), got,
                                    rtol=1e-9))


@pytest.mark.exercise("calculate_perplexity")
@pytest.mark.parametrize("shape", [(7,), (2, 5), (2, 3, 4)], ids=["(N,)", "(B,T)", "(B,S,T)"])
def test_perplexity_any_leading_dims(impl, shape):
    g = generator(sum(shape))
    x = torch.randint(0, VOCAB, shape, generator=g)
    y = torch.randint(0, VOCAB, shape, generator=g)
    y.view(-1)[::3] = -100
    model = _TinyLM(1)
    got = impl.calculate_perplexity(model, [(x, y), (x[:1], y[:1])])
    assert_close(got, _oracle_perplexity(model, [(x, y), (x[:1], y[:1])]), rtol=1e-9,
                 call=f"calculate_perplexity(model, batches of targets {tuple(y.shape)} and {tuple(y[:1].shape)}, "
                 f"logits {(*shape, VOCAB)})",
                 because="logits have shape (..., V) and targets (...): any number of leading dimensions, not only "
                 "(B, T, V). Flatten them all: logits.reshape(-1, V), target.reshape(-1).")


@pytest.mark.exercise("calculate_perplexity")
def test_perplexity_with_extreme_logits(impl):
    g = generator(5)
    table = torch.randn(40, VOCAB, generator=g, dtype=torch.float64)
    targets = torch.randint(0, VOCAB, (40,), generator=g)
    table[0] = 0.0
    table[0, targets[0]] = -800.0  # a real token 800 nats below the rest: exp underflows to 0 in float64
    table[1] += 1e4  # every logit of a row shifted by +1e4 or -1e4: the softmax does not change
    table[2] -= 1e4
    model = torch.nn.Embedding.from_pretrained(table)  # the input ids are positions: logits = table[x]
    x = torch.arange(40)
    y = targets.clone()
    y[37:] = -100
    batches = [(x[:10].view(2, 5), y[:10].view(2, 5)), (x[10:].view(3, 10), y[10:].view(3, 10))]
    got = impl.calculate_perplexity(model, batches)
    expected = math.exp(F.cross_entropy(table[:37], targets[:37]).item())
    assert_close(
        got, expected, rtol=1e-9,
        call="calculate_perplexity(model, batches) where one row of logits puts the target 800 below the others and "
        "two rows are shifted by +1e4 and -1e4",
        because="cross-entropy is logsumexp(logits) - logits[target], finite for any finite logits; log(softmax(...)) "
        "underflows to log(0) = -inf there, and exp of raw logits overflows. Use F.cross_entropy or log_softmax.",
        cause=likely_cause(KATA, "calculate_perplexity", lambda f: f(model, batches), got, rtol=1e-9),
    )


@pytest.mark.exercise("calculate_perplexity")
def test_perplexity_float32_model(impl):
    model, batches = _TinyLM(7, dtype=torch.float32), _padded_batches(7)
    got = impl.calculate_perplexity(model, batches)
    assert isinstance(got, float), f"calculate_perplexity returned a {type(got).__name__}; return a Python float."
    # The oracle sees the very float32 logits the code under test sees; what may differ is only how the loss is
    # accumulated (float32 or float64): a few float32 roundings of a mean loss near 5, far below 1e-5 relative.
    assert_close(got, _oracle_perplexity(model, batches), rtol=1e-5,
                 call=f"calculate_perplexity(float32 model, {_describe_batches(batches)})",
                 because="a float32 model gives the same perplexity, up to float32 rounding.")


@pytest.mark.exercise("calculate_perplexity")
def test_perplexity_evaluates_without_grad_in_eval_mode_and_restores_it(impl):
    model, batches = _RecordingLM(3), _padded_batches(3)
    model.train()
    expected = _oracle_perplexity(model, batches)
    model.calls.clear()
    got = impl.calculate_perplexity(model, batches)
    assert model.calls, "calculate_perplexity never called the model."
    assert not any(grad for grad, _ in model.calls), (
        "calculate_perplexity called the model with autograd on: evaluate under torch.no_grad() (no graph is "
        "needed, and building one costs memory)."
    )
    assert not any(training for _, training in model.calls), (
        "calculate_perplexity called the model in train mode: call model.eval() first, so dropout is off."
    )
    assert model.training, "calculate_perplexity left the model in eval mode; restore the mode it had (train)."
    assert_close(got, expected, rtol=1e-9, call="calculate_perplexity(model with dropout 0.5 in train mode, batches)",
                 because="evaluation runs in eval mode, with dropout off.")
    model.eval()
    impl.calculate_perplexity(model, batches)
    assert not model.training, "calculate_perplexity put a model that was in eval mode into train mode."


@pytest.mark.exercise("calculate_perplexity")
def test_uniform_model_has_perplexity_vocab_size(impl):
    model = _TinyLM(0)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    g = generator(0)
    x, y = torch.randint(0, VOCAB, (7, 4), generator=g), torch.randint(0, VOCAB, (7, 4), generator=g)
    y[:, 3] = -100
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=3)  # batches of 3, 3, 1
    got = impl.calculate_perplexity(model, loader)
    assert got == pytest.approx(VOCAB, rel=1e-9), (
        f"A model whose logits are all 0 predicts 1/{VOCAB} for every token; its perplexity is {VOCAB}, got {got}."
    )


@pytest.mark.exercise("calculate_perplexity")
def test_perplexity_without_real_tokens_raises(impl):
    x = torch.ones(2, 3, dtype=torch.long)
    with pytest.raises(ValueError):
        impl.calculate_perplexity(_TinyLM(0), [(x, torch.full((2, 3), -100))])
    with pytest.raises(ValueError):
        impl.calculate_perplexity(_TinyLM(0), [(x, torch.full((2, 3), 5))], ignore_index=5)
    with pytest.raises(ValueError):
        impl.calculate_perplexity(_TinyLM(0), [])  # an empty dataset has no token either
