"""Reference solutions for w11_tokenization (Weeks 11-12: NLP fundamentals)."""

from __future__ import annotations

import heapq
import math
import os
import re
from collections import Counter
from collections.abc import Collection, Iterable, Sequence
from itertools import pairwise

import torch
import torch.nn.functional as F

# ---------------------------------------------------------------------------------------------------
# AdvancedTokenizer
# ---------------------------------------------------------------------------------------------------

_URL = re.compile(r"http\S+")
_USER = re.compile(r"@\w+")
_HASHTAG = re.compile(r"#\w+")


class AdvancedTokenizer:
    """A word-level tokenizer with URL / mention / hashtag placeholders (the learning path's, fixed)."""

    SPECIAL_TOKENS = ("<PAD>", "<UNK>", "<START>", "<END>", "<URL>", "<USER>", "<HASHTAG>")

    def __init__(self, vocab_size: int = 10000) -> None:
        if vocab_size < len(self.SPECIAL_TOKENS):
            raise ValueError(
                f"vocab_size={vocab_size} is too small: the {len(self.SPECIAL_TOKENS)} special tokens need room"
            )
        self.vocab_size = vocab_size
        self.word_to_idx: dict[str, int] = {}
        self.idx_to_word: dict[int, str] = {}
        self.word_counts: Counter[str] = Counter()

    def preprocess_text(self, text: str) -> str:
        # Lower-case FIRST: lower-casing after the substitutions would turn <URL> into <url> (the learning path's bug).
        text = text.lower()
        text = _URL.sub("<URL>", text)  # URLs first: '@http://x.io' is '@<URL>', not '<USER>://x.io'
        text = _USER.sub("<USER>", text)
        return _HASHTAG.sub("<HASHTAG>", text)

    def build_vocab(self, texts: Iterable[str]) -> None:
        specials = set(self.SPECIAL_TOKENS)
        for text in texts:
            self.word_counts.update(self.preprocess_text(text).split())
        # The placeholders already own fixed ids: counting them again would give them a second id.
        words = [(w, c) for w, c in self.word_counts.items() if w not in specials]
        # Count descending, then the word itself: the same vocabulary whatever order the texts came in.
        words.sort(key=lambda wc: (-wc[1], wc[0]))
        room = self.vocab_size - len(self.SPECIAL_TOKENS)
        vocab = list(self.SPECIAL_TOKENS) + [w for w, _ in words[:room]]
        self.word_to_idx = {word: idx for idx, word in enumerate(vocab)}
        self.idx_to_word = dict(enumerate(vocab))

    def encode(self, text: str) -> list[int]:
        unk = self.SPECIAL_TOKENS.index("<UNK>")  # the fixed id 1, even before build_vocab
        return [self.word_to_idx.get(word, unk) for word in self.preprocess_text(text).split()]

    def decode(self, indices: Iterable[int]) -> str:
        return " ".join(self.idx_to_word.get(int(idx), "<UNK>") for idx in indices)


# ---------------------------------------------------------------------------------------------------
# Byte-level BPE
# ---------------------------------------------------------------------------------------------------

_BPE_HEADER = "bpe v1"


def _merge(ids: list[int], pair: tuple[int, int], new_id: int) -> list[int]:
    """Replace every non-overlapping occurrence of ``pair``, scanning left to right."""
    out, i, n = [], 0, len(ids)
    while i < n:
        if i + 1 < n and ids[i] == pair[0] and ids[i + 1] == pair[1]:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def _find_all(data: bytes, pattern: bytes) -> list[int]:
    """Where the two-byte ``pattern`` starts in ``data``, overlapping matches included, in increasing order."""
    if pattern[0] != pattern[1]:
        # Such a pattern cannot overlap itself, so one regex scan finds every match: the search runs in C
        # instead of one Python call per match.
        return [m.start() for m in re.finditer(re.escape(pattern), data)]
    found, i = [], data.find(pattern)  # b"aa" in b"aaa" starts at 0 AND 1: step one byte, not two
    while i >= 0:
        found.append(i)
        i = data.find(pattern, i + 1)
    return found


class BPETokenizer:
    """Byte-level byte-pair encoding: 256 byte tokens plus one token per learned merge."""

    def __init__(self) -> None:
        self.merges: dict[tuple[int, int], int] = {}
        self.vocab: dict[int, bytes] = {i: bytes([i]) for i in range(256)}

    def train(self, text: str, vocab_size: int, verbose: bool = False) -> None:
        if vocab_size < 256:
            raise ValueError(f"vocab_size={vocab_size} is below 256, the number of byte tokens")
        num_merges = vocab_size - 256
        data = text.encode()  # str.encode is UTF-8
        n = len(data)
        # The sequence lives on the original byte positions: tok[i] is the token that starts at byte i,
        # or -1 inside a longer token, so merging never shifts anything. A token covers len(vocab[t])
        # bytes, so the token after the one at i starts at i + len(vocab[tok[i]]): no "next" links.
        # prv[i] is where the token before the one at i starts. The one extra slot (-1: no token) is
        # both ends at once: index n just after the text, and index -1 (Python's last slot) before it.
        tok = list(data) + [-1]
        prv = list(range(-1, n))
        # Exact pair counts. A Counter, because a step may lower a pair it creates before adding it
        # ('abab': (new, a) loses the second occurrence's left side before gaining the first's right side).
        counts = Counter(pairwise(data))
        # Where each learned token was made, in text order: a superset of where it is now (some were merged
        # away since). One list per TOKEN, not per pair: a merge then appends one position, not two.
        made_at: dict[int, list[int]] = {}
        # Max-heap on (count, then smallest pair). Entries may be stale: a count only grows in the step
        # that creates its pair and only shrinks afterwards, so a stored count is an upper bound and a
        # stale top is simply pushed back with its current count.
        heap = [(-c, pair) for pair, c in counts.items()]
        heapq.heapify(heap)

        merges: dict[tuple[int, int], int] = {}
        vocab = {i: bytes([i]) for i in range(256)}
        for rank in range(num_merges):
            while heap:
                neg, pair = heap[0]
                current = counts[pair]  # a pair leaves counts only when merged, with its one heap entry
                if current == -neg:
                    break
                heapq.heappop(heap)
                if current > 0:
                    heapq.heappush(heap, (-current, pair))
            else:
                raise ValueError(
                    f"the text ran out of pairs after {rank} merges; vocab_size={vocab_size} needs "
                    f"{num_merges}: train on more text or ask for a smaller vocabulary"
                )
            heapq.heappop(heap)
            new_id = 256 + rank
            a, b = pair
            # Candidate starts of the pair, checked below, in text order: for a pair (x, x) the order
            # decides which of two overlapping occurrences merges ('aaa' -> [X, a]). A pair of two single
            # bytes can only sit where the original text has those two bytes, so search the text in C
            # rather than build an index of every position up front. Otherwise a learned token is
            # involved: start from where it was made (for a learned b after the byte a: the byte before b).
            if a >= 256:
                starts = made_at[a]
            elif b >= 256:
                starts = [j - 1 for j in made_at[b] if tok[j] == b]
            else:
                starts = _find_all(data, bytes(pair))
            len_a, len_b = len(vocab[a]), len(vocab[b])  # the byte widths: they replace "next" links
            made, lefts, rights = [], [], []
            # Only the occurrences of the merged pair and their neighbours change: update just those
            # instead of recounting the whole text after every merge. The loop only records the
            # neighbours (appending to a list is cheaper than updating a dict keyed by a tuple); the
            # counts change afterwards, once per distinct neighbour, with Counter tallying the lists in C.
            for i in starts:
                if tok[i] != a:
                    continue  # merged away since, or consumed by an overlapping occurrence ('aaa')
                j = i + len_a
                if tok[j] != b:
                    continue
                q = j + len_b
                tok[i], tok[j] = new_id, -1  # position j is no token start any more
                prv[q] = i
                made.append(i)
                lefts.append(tok[prv[i]])  # the neighbours as they are now (-1: the text ends there)
                rights.append(tok[q])
            made_at[new_id] = made
            born = []
            # (left, a) becomes (left, new) and (b, right) becomes (new, right). With the neighbours taken
            # at the moment of each merge, the changes add up to the right totals even when occurrences
            # touch ('abab': (b, a) is lost once, (new, new) gained once).
            for left, c in Counter(lefts).items():
                if left >= 0:
                    counts[left, a] -= c
                    counts[left, new_id] += c
                    born.append((left, new_id))
            for right, c in Counter(rights).items():
                if right >= 0:
                    counts[b, right] -= c
                    counts[new_id, right] += c
                    born.append((new_id, right))
            del counts[pair]  # the overlapping cases above may have decremented it: it is gone anyway
            for new_pair in born:
                if counts[new_pair] > 0:
                    heapq.heappush(heap, (-counts[new_pair], new_pair))
            merges[pair] = new_id
            vocab[new_id] = vocab[a] + vocab[b]
            if verbose:
                print(f"{pair} -> {new_id} ({vocab[new_id]!r})")
        self.merges, self.vocab = merges, vocab

    def encode(self, text: str) -> list[int]:
        ids = list(text.encode())
        while len(ids) >= 2:
            # The lowest-ranked (earliest learned) merge present goes first, as in training.
            pair = min(pairwise(ids), key=lambda p: self.merges.get(p, math.inf))
            if pair not in self.merges:
                break
            ids = _merge(ids, pair, self.merges[pair])
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        chunks = []
        for i in ids:
            if i not in self.vocab:
                raise ValueError(f"token id {i!r} is not in the vocabulary (ids 0..{len(self.vocab) - 1})")
            chunks.append(self.vocab[i])
        # Join the bytes first: one character's UTF-8 bytes may be spread over several tokens.
        return b"".join(chunks).decode(errors="replace")  # UTF-8, the default

    def save(self, path: str | os.PathLike) -> None:
        ranked = sorted(self.merges.items(), key=lambda kv: kv[1])
        lines = [_BPE_HEADER] + [f"{a} {b}" for (a, b), _ in ranked]
        with open(path, "wb") as f:  # bytes: "\n" line ends on every platform
            f.write(("\n".join(lines) + "\n").encode())

    def load(self, path: str | os.PathLike) -> BPETokenizer:
        with open(path, "rb") as f:
            lines = f.read().decode().splitlines()
        if not lines or lines[0].strip() != _BPE_HEADER:
            raise ValueError(
                f"{os.fspath(path)!r} is not a BPE model file: it does not start with the line {_BPE_HEADER!r}"
            )
        merges: dict[tuple[int, int], int] = {}
        vocab = {i: bytes([i]) for i in range(256)}
        for rank, line in enumerate(lines[1:]):
            a, b = (int(x) for x in line.split())
            merges[(a, b)] = 256 + rank  # the new id is implied by the line's position
            vocab[256 + rank] = vocab[a] + vocab[b]
        self.merges, self.vocab = merges, vocab
        return self


# ---------------------------------------------------------------------------------------------------
# WordPiece
# ---------------------------------------------------------------------------------------------------


def wordpiece_encode(word: str, vocab: Collection[str], unk: str = "[UNK]",
                     max_input_chars_per_word: int = 100) -> list[str]:
    if len(word) > max_input_chars_per_word:
        return [unk]
    pieces, start = [], 0
    while start < len(word):
        # Longest match first: shrink the candidate from the end until it is in the vocabulary.
        for end in range(len(word), start, -1):
            piece = word[start:end] if start == 0 else "##" + word[start:end]
            if piece in vocab:
                break
        else:
            return [unk]  # one unmatchable position makes the whole word unknown, as in BERT
        pieces.append(piece)
        start = end
    return pieces


# ---------------------------------------------------------------------------------------------------
# n-gram language model
# ---------------------------------------------------------------------------------------------------


class NGramLM:
    """An n-gram language model over tokens with add-k smoothing."""

    BOS = "<s>"
    UNK = "<unk>"
    counts: Counter[tuple[tuple[str, ...], str]]  # (context, word) -> count, set by fit
    context_counts: Counter[tuple[str, ...]]  # context -> count, set by fit

    def __init__(self, n: int, k: float = 1.0) -> None:
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n={n!r} must be a positive integer")
        if not k > 0:
            raise ValueError(f"k={k!r} must be positive (k=0 gives unseen events probability 0)")
        self.n, self.k = n, float(k)
        self.vocab: set[str] = set()  # empty until fit: prob refuses to guess before then

    def _context(self, context: Sequence[str]) -> tuple[str, ...]:
        if self.n == 1:
            return ()
        context = [w if w in self.vocab or w == self.BOS else self.UNK for w in context][-(self.n - 1):]
        return (self.BOS,) * (self.n - 1 - len(context)) + tuple(context)

    def fit(self, tokens: Sequence[str]) -> NGramLM:
        tokens = list(tokens)
        if not tokens:
            raise ValueError("cannot fit an n-gram model on an empty token sequence")
        self.vocab = set(tokens) | {self.UNK}
        self.counts, self.context_counts = Counter(), Counter()
        padded = [self.BOS] * (self.n - 1) + tokens
        for i, word in enumerate(tokens):
            context = tuple(padded[i:i + self.n - 1])
            self.counts[(context, word)] += 1
            self.context_counts[context] += 1
        return self

    def prob(self, word: str, context: Sequence[str] = ()) -> float:
        if not self.vocab:
            raise ValueError("the model is not fitted: call fit(tokens) first")
        context = self._context(context)
        word = word if word in self.vocab else self.UNK
        # Add-k: every word of V gets k pseudo-counts, so an unseen context gives the uniform 1/|V|.
        return (self.counts[(context, word)] + self.k) / (self.context_counts[context] + self.k * len(self.vocab))

    def perplexity(self, tokens: Sequence[str]) -> float:
        tokens = list(tokens)
        if not tokens:
            raise ValueError("perplexity of an empty token sequence is undefined")
        padded = [self.BOS] * (self.n - 1) + tokens
        log_prob = math.fsum(
            math.log(self.prob(word, padded[i:i + self.n - 1])) for i, word in enumerate(tokens)
        )
        return math.exp(-log_prob / len(tokens))


# ---------------------------------------------------------------------------------------------------
# Perplexity of a neural language model
# ---------------------------------------------------------------------------------------------------


def calculate_perplexity(model: torch.nn.Module, dataloader: Iterable, ignore_index: int = -100) -> float:
    was_training = model.training
    model.eval()
    total_loss, total_tokens = 0.0, 0
    try:
        with torch.no_grad():
            for data, target in dataloader:
                logits = model(data)
                loss = F.cross_entropy(
                    logits.reshape(-1, logits.size(-1)).double(), target.reshape(-1),
                    ignore_index=ignore_index, reduction="sum",
                )
                total_loss += loss.item()
                # Count only the positions that contributed to the loss: padding is not a token.
                total_tokens += int((target != ignore_index).sum())
    finally:
        model.train(was_training)  # leave the model as we found it
    if total_tokens == 0:
        raise ValueError(f"no target differs from ignore_index={ignore_index}: nothing to evaluate")
    return math.exp(total_loss / total_tokens)
