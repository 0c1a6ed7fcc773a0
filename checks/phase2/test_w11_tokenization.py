"""Checks for w11_tokenization: word tokenizer, byte-level BPE, WordPiece, n-gram LM, perplexity.

Hugging Face ``tokenizers`` is the outside oracle for BPE (a BPE model built from the learner's own merges
must encode the same ids) and WordPiece (same vocabulary, same pieces). Everything runs offline on text
written here; the performance check uses ``taylorswift.txt`` (minbpe's training text) when it is available.
"""

from __future__ import annotations

import math
import random
import time
from itertools import pairwise

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from checks.data import CorpusUnavailable, load_corpus
from checks.numerics import assert_close, compare_with_reference

pytestmark = pytest.mark.kata("w11_tokenization")

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
        return draw(st.sampled_from(["http://", "https://", "HTTP://", "Https://"])) + word + ".com/" + word
    return word


_tweets = st.lists(_tweet_tokens(), min_size=0, max_size=8).map(" ".join)
_corpora = st.lists(_tweets, min_size=1, max_size=6)


def _build(impl, texts, vocab_size):
    tok = impl.AdvancedTokenizer(vocab_size)
    tok.build_vocab(list(texts))
    return tok


@pytest.mark.exercise("AdvancedTokenizer")
def test_placeholders_survive_preprocessing(impl):
    tok = impl.AdvancedTokenizer(20)
    text = "Read THIS https://x.io/a #NLP @Ana"
    got = tok.preprocess_text(text)
    assert got == "read this <URL> <HASHTAG> <USER>", (
        f"Called preprocess_text({text!r}). Returned {got!r}, expected 'read this <URL> <HASHTAG> <USER>', "
        "because the text must be lower-cased BEFORE the placeholders go in: lower-casing afterwards turns "
        "<URL> into <url>, which is not a special token (the seed's bug)."
    )


@pytest.mark.exercise("AdvancedTokenizer")
def test_placeholders_map_to_special_ids(impl):
    texts = ["see http://a.b/c and @bob on #fun", "HTTP://X.Y is #cool, says @Eve"]
    tok = _build(impl, texts, 50)
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
def test_vocab_and_encoding_match_reference(impl, reference, texts, vocab_size):
    tok = _build(impl, texts, vocab_size)
    ref = _build(reference, texts, vocab_size)
    assert tok.word_to_idx == ref.word_to_idx, (
        f"Called build_vocab({texts!r}) with vocab_size={vocab_size}. word_to_idx is {tok.word_to_idx}, expected "
        f"{ref.word_to_idx}, because the vocabulary is the 7 special tokens, then the other words by count "
        "(descending) with ties broken by the word itself, as many as fit."
    )
    assert tok.idx_to_word == ref.idx_to_word, f"idx_to_word is {tok.idx_to_word}, expected {ref.idx_to_word}."
    for text in texts:
        got, expected = tok.encode(text), ref.encode(text)
        assert got == expected, f"Called encode({text!r}). Returned {got}, expected {expected}."
        decoded = tok.decode(got)
        want = ref.decode(expected)
        assert decoded == want, f"Called decode({got}). Returned {decoded!r}, expected {want!r}."


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
    words = {w for t in texts for w in t.lower().split() if w[0] not in "@#" and not w.startswith("http")}
    if vocab_size >= 7 + len(words):
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
def test_unknown_words_and_ids(impl):
    tok = _build(impl, ["the cat", "The dog", "a cat"], 10)
    assert tok.encode("the fox") == [8, 1], (
        f"Called encode('the fox') after build_vocab(['the cat', 'The dog', 'a cat']) with vocab_size=10: got "
        f"{tok.encode('the fox')}, expected [8, 1] ('the' is the second most frequent word; 'fox' is unknown)."
    )
    assert tok.decode([8, 7, 99]) == "the cat <UNK>", (
        f"Called decode([8, 7, 99]): got {tok.decode([8, 7, 99])!r}, expected 'the cat <UNK>' (99 is not an id)."
    )


@pytest.mark.exercise("AdvancedTokenizer")
def test_vocab_size_too_small_raises(impl):
    with pytest.raises(ValueError, match="6"):
        impl.AdvancedTokenizer(6)


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


def _first_difference(a: list, b: list) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


@pytest.fixture(scope="module")
def trained_bpe(impl):
    tok = impl.BPETokenizer()
    tok.train(_SAMPLE, 320)
    return tok


_sample_like = st.text(alphabet=st.sampled_from(sorted(set(_SAMPLE))), max_size=80)
_any_text = st.one_of(st.text(max_size=40), _sample_like)


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
    assert all(i in trained_bpe.vocab for i in ids), f"encode({text!r}) returned ids outside the vocabulary: {ids}."
    back = trained_bpe.decode(ids)
    assert back == text, (
        f"After train(_SAMPLE, 320), encode({text!r}) gave {ids} and decode gave back {back!r}: "
        "decode(encode(s)) must equal s for every string."
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
    for (a, b), new in tok.merges.items():
        assert tok.vocab[new] == tok.vocab[a] + tok.vocab[b], (
            f"vocab[{new}] is {tok.vocab[new]!r}; the merge {(a, b)} makes it vocab[{a}] + vocab[{b}] = "
            f"{tok.vocab[a] + tok.vocab[b]!r}."
        )


@pytest.mark.exercise("BPETokenizer")
@given(text=st.text(alphabet="ab c\né", max_size=120), vocab_size=st.integers(257, 290))
def test_bpe_merges_equal_reference(impl, reference, text, vocab_size):
    ref = reference.BPETokenizer()
    try:
        ref.train(text, vocab_size)
    except ValueError:
        with pytest.raises(ValueError):
            impl.BPETokenizer().train(text, vocab_size)
        return
    tok = impl.BPETokenizer()
    tok.train(text, vocab_size)
    got, expected = list(tok.merges.items()), list(ref.merges.items())
    if got != expected:
        k = _first_difference(got, expected)
        raise AssertionError(
            f"Called train({text!r}, {vocab_size}). The merges differ from rank {k}: got "
            f"{got[k] if k < len(got) else 'nothing'}, expected {expected[k] if k < len(expected) else 'nothing'}.\n"
            f"Got      {got[: k + 3]}\nexpected {expected[: k + 3]}.\nBecause each step merges the most frequent "
            "pair of the CURRENT sequence (overlapping pairs counted), ties going to the smallest (first, second)."
        )


@pytest.mark.exercise("BPETokenizer")
@pytest.mark.parametrize(
    ("text", "vocab_size", "expected"),
    [
        ("xyab", 257, {(97, 98): 256}),
        ("aaabdaaabac", 259, {(97, 97): 256, (97, 98): 257, (256, 257): 258}),
    ],
)
def test_bpe_ties_go_to_the_smallest_pair(impl, text, vocab_size, expected):
    tok = impl.BPETokenizer()
    tok.train(text, vocab_size)
    assert tok.merges == expected, (
        f"Called train({text!r}, {vocab_size}). merges is {tok.merges}, expected {expected}, because among equally "
        "frequent pairs the smallest (first, second) wins - not the first one seen (insertion order)."
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
    assert lines[0] == "bpe v1" and len(lines) == len(trained_bpe.merges) + 1, (
        f"save wrote {len(lines)} non-empty lines starting with {lines[0]!r}; expected 'bpe v1' and one line per merge "
        f"({len(trained_bpe.merges)})."
    )
    loaded = impl.BPETokenizer()
    returned = loaded.load(path)
    assert returned is loaded, "load(path) must return the tokenizer itself (self)."
    assert list(loaded.merges.items()) == list(trained_bpe.merges.items()), (
        "After save and load, merges differ from the saved ones (the file must keep them in rank order)."
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
    with pytest.raises(ValueError, match="1000000"):
        trained_bpe.decode([97, 1000000])
    path = tmp_path / "not_bpe.txt"
    path.write_text("hello\n97 98\n", encoding="utf-8")
    with pytest.raises(ValueError):
        impl.BPETokenizer().load(path)


# ---- performance: incremental pair counts against recounting after every merge --------------------------


def _naive_train(text: str, vocab_size: int) -> dict[tuple[int, int], int]:
    """The recount-every-merge trainer: minbpe's ``BasicTokenizer.train`` (``get_stats`` then ``merge`` after
    every merge), with this kata's tie-break. It is correct; it is only slow."""
    ids = list(text.encode("utf-8"))
    merges = {}
    for rank in range(vocab_size - 256):
        stats: dict[tuple[int, int], int] = {}
        for pair in pairwise(ids):
            stats[pair] = stats.get(pair, 0) + 1
        pair = max(stats, key=lambda p: (stats[p], -p[0], -p[1]))
        new, out, i, n = 256 + rank, [], 0, len(ids)
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
def test_bpe_trainer_is_faster_than_recounting(impl, benchmark):
    text, source = _perf_corpus()
    vocab_size = 512

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
        f"yours {fast:.3f} s, recounting {naive:.3f} s, speed-up {ratio:.1f}x (wanted >= 5x, aim for 20x)"
    )
    assert ratio >= 5, (
        f"train took {fast:.2f} s against {naive:.2f} s for the trainer that recounts every pair after each merge "
        f"({ratio:.1f}x); it must be at least 5x faster. Update only the counts of the pairs next to each "
        "occurrence of the merged pair, and keep where each pair occurs."
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
    expected = reference.wordpiece_encode(word, vocab, unk="<unk>")
    got = impl.wordpiece_encode(word, vocab, unk="<unk>")
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
    assert impl.wordpiece_encode("aaaa", vocab, max_input_chars_per_word=3) == ["[UNK]"]


# --------------------------------------------------------------------------------------------------
# NGramLM
# --------------------------------------------------------------------------------------------------

_WORDS = ["the", "cat", "sat", "on", "mat"]
_tokens = st.lists(st.sampled_from(_WORDS), min_size=1, max_size=30)
_contexts = st.lists(st.sampled_from([*_WORDS, "zebra", "<s>"]), max_size=4)
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
@given(tokens=_tokens, n=st.integers(1, 4), k=st.sampled_from([0.1, 1.0]), context=_contexts, held_out=_tokens)
def test_ngram_matches_reference(impl, reference, tokens, n, k, context, held_out):
    lm, ref = impl.NGramLM(n, k=k).fit(tokens), reference.NGramLM(n, k=k).fit(tokens)
    call = f"NGramLM({n}, k={k}).fit({tokens})"
    for w in [*_WORDS, "zebra"]:
        assert_close(lm.prob(w, context), ref.prob(w, context), rtol=1e-9, call=f"{call}.prob({w!r}, {context})",
                     because="P(w|h) = (c(h, w) + k) / (c(h) + k |V|), contexts left-padded with '<s>'.")
    assert_close(lm.perplexity(held_out), ref.perplexity(held_out), rtol=1e-9, call=f"{call}.perplexity({held_out})",
                 because="perplexity = exp(-mean log P(token | its context)), contexts padded with '<s>' at the start.")


@pytest.mark.exercise("NGramLM")
def test_ngram_unseen_context_is_uniform_not_zero(impl):
    lm = impl.NGramLM(2, k=1.0).fit("a b a b a c".split())
    got = lm.prob("a", ["zebra"])
    assert got == pytest.approx(0.25), (
        f"NGramLM(2).fit('a b a b a c'.split()).prob('a', ['zebra']) returned {got}, expected 0.25 = 1/|V| with "
        "V = {a, b, c, <unk>}, because an unseen context has count 0 and add-k leaves k / (k |V|) - never 0."
    )
    assert lm.prob("b", ["a"]) == pytest.approx(3 / 7), f"prob('b', ['a']) is {lm.prob('b', ['a'])}, expected 3/7."
    perplexity = lm.perplexity("c c b b".split())  # the bigrams (c, c) and (b, b) were never seen
    assert math.isfinite(perplexity), (
        f"perplexity of a text with unseen bigrams is {perplexity}; smoothing keeps it finite."
    )
    assert lm.perplexity("a b a b".split()) == pytest.approx((0.4 * 3 / 7 * 0.5 * 3 / 7) ** -0.25)


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
def test_ngram_bad_input_raises(impl):
    with pytest.raises(ValueError, match="0"):
        impl.NGramLM(0)
    with pytest.raises(ValueError, match="k"):
        impl.NGramLM(2, k=0.0)
    with pytest.raises(ValueError):
        impl.NGramLM(2).fit([])
    with pytest.raises(ValueError):
        impl.NGramLM(2).fit(["a", "b"]).perplexity([])


# --------------------------------------------------------------------------------------------------
# calculate_perplexity
# --------------------------------------------------------------------------------------------------

VOCAB = 11


class _TinyLM(torch.nn.Module):
    """Embedding -> dropout -> linear: logits (B, T, V) for ids (B, T)."""

    def __init__(self, seed: int, dropout: float = 0.0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.embed = torch.nn.Embedding(VOCAB, 8)
        self.drop = torch.nn.Dropout(dropout)
        self.head = torch.nn.Linear(8, VOCAB)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g))

    def forward(self, x):
        return self.head(self.drop(self.embed(x)))


def _padded_batches(seed: int, pad: int = -100, num_batches: int = 3):
    """Batches of different sizes whose rows are right-padded with ``pad`` by different amounts."""
    g = torch.Generator().manual_seed(seed)
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
    """exp(mean cross-entropy over every real token of the whole dataset), computed in one go."""
    was = model.training
    model.eval()
    with torch.no_grad():
        logits = torch.cat([model(x).reshape(-1, VOCAB) for x, _ in batches]).double()
        targets = torch.cat([y.reshape(-1) for _, y in batches])
    model.train(was)
    keep = targets != ignore_index
    return math.exp(F.cross_entropy(logits[keep], targets[keep]).item())


@pytest.mark.exercise("calculate_perplexity")
@given(seed=st.integers(0, 2**31 - 1))
@settings(max_examples=15)
def test_perplexity_is_exp_of_token_weighted_loss(impl, seed):
    model, batches = _TinyLM(seed), _padded_batches(seed)
    got = impl.calculate_perplexity(model, batches)
    real = sum(int((y != -100).sum()) for _, y in batches)
    total = sum(y.numel() for _, y in batches)
    assert isinstance(got, float), f"calculate_perplexity returned a {type(got).__name__}; return a Python float."
    assert_close(
        got, _oracle_perplexity(model, batches), rtol=1e-5,
        call=f"calculate_perplexity(model, {len(batches)} batches with {real} real tokens and {total - real} padding)",
        because="perplexity = exp(summed cross-entropy over real tokens / number of real tokens): padding "
        "(target == ignore_index) adds no loss and is not a token, and every token weighs the same whatever its batch.",
    )


@pytest.mark.exercise("calculate_perplexity")
@given(seed=st.integers(0, 2**31 - 1), extra=st.integers(1, 5))
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
    assert_close(after, before, rtol=1e-9,
                 call=f"calculate_perplexity on the same batches with {extra} more padding columns",
                 because="padding positions must change neither the loss nor the token count.")
    compare_with_reference(impl, reference, "calculate_perplexity", model, more, rtol=1e-6,
                           because="padding is not a token.")


@pytest.mark.exercise("calculate_perplexity")
@given(seed=st.integers(0, 2**31 - 1))
@settings(max_examples=10)
def test_perplexity_honours_ignore_index(impl, seed):
    model, batches = _TinyLM(seed), _padded_batches(seed, pad=0)
    got = impl.calculate_perplexity(model, batches, ignore_index=0)
    assert_close(got, _oracle_perplexity(model, batches, ignore_index=0), rtol=1e-5,
                 call="calculate_perplexity(model, batches padded with 0, ignore_index=0)",
                 because="the padding id is the ignore_index argument, not always -100.")


@pytest.mark.exercise("calculate_perplexity")
def test_perplexity_uses_eval_mode_and_restores_it(impl):
    model, batches = _TinyLM(3, dropout=0.5), _padded_batches(3)
    model.train()
    expected = _oracle_perplexity(model, batches)
    got = impl.calculate_perplexity(model, batches)
    assert model.training, "calculate_perplexity left the model in eval mode; restore the mode it had (train)."
    assert_close(got, expected, rtol=1e-5, call="calculate_perplexity(model with dropout 0.5 in train mode, batches)",
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
    g = torch.Generator().manual_seed(0)
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
