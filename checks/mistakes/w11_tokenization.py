"""Catalogued mistakes and correct variants for w11_tokenization."""

from __future__ import annotations

import heapq
import math
import re
from collections import Counter, defaultdict
from itertools import pairwise

import torch
import torch.nn.functional as F

from checks.harness.catalogue import mistake, variant
from reference.phase2.w11_tokenization import AdvancedTokenizer, BPETokenizer, NGramLM

# ---------------------------------------------------------------------------------------------------
# AdvancedTokenizer
# ---------------------------------------------------------------------------------------------------


@mistake("AdvancedTokenizer", "lower-cases AFTER inserting the placeholders, so <URL> becomes <url> and is no "
                              "longer a special token (the learning path's bug)")
class TokenizerLowercaseAfterPlaceholders(AdvancedTokenizer):
    def preprocess_text(self, text):
        text = re.sub(r"http\S+", "<URL>", text)
        text = re.sub(r"@\w+", "<USER>", text)
        text = re.sub(r"#\w+", "<HASHTAG>", text)
        return text.lower()


@mistake("AdvancedTokenizer", "looks the id of <UNK> up in word_to_idx, so encode raises KeyError before build_vocab "
                              "(the id is fixed: 1)")
class TokenizerUnkLookedUp(AdvancedTokenizer):
    def encode(self, text):
        unk = self.word_to_idx["<UNK>"]
        return [self.word_to_idx.get(word, unk) for word in self.preprocess_text(text).split()]


@mistake("AdvancedTokenizer", "takes Counter.most_common, which breaks ties by first appearance, so the vocabulary "
                              "depends on the order of the texts")
class TokenizerFirstSeenTieBreak(AdvancedTokenizer):
    def build_vocab(self, texts):
        for text in texts:
            self.word_counts.update(self.preprocess_text(text).split())
        counts = Counter({w: c for w, c in self.word_counts.items() if w not in self.SPECIAL_TOKENS})
        room = self.vocab_size - len(self.SPECIAL_TOKENS)
        vocab = list(self.SPECIAL_TOKENS) + [w for w, _ in counts.most_common(room)]
        self.word_to_idx = {w: i for i, w in enumerate(vocab)}
        self.idx_to_word = dict(enumerate(vocab))


@mistake("AdvancedTokenizer", "keeps vocab_size ordinary words on top of the 7 special tokens, so the vocabulary "
                              "exceeds vocab_size")
class TokenizerSpecialsNotCounted(AdvancedTokenizer):
    def build_vocab(self, texts):
        for text in texts:
            self.word_counts.update(self.preprocess_text(text).split())
        words = sorted((w for w in self.word_counts if w not in self.SPECIAL_TOKENS),
                       key=lambda w: (-self.word_counts[w], w))
        vocab = list(self.SPECIAL_TOKENS) + words[: self.vocab_size]
        self.word_to_idx = {w: i for i, w in enumerate(vocab)}
        self.idx_to_word = dict(enumerate(vocab))


@mistake("AdvancedTokenizer", "counts the placeholders as ordinary words too, so <URL> appears twice in the "
                              "vocabulary and word_to_idx gives it the second, later id")
class TokenizerPlaceholdersCountedTwice(AdvancedTokenizer):
    def build_vocab(self, texts):
        for text in texts:
            self.word_counts.update(self.preprocess_text(text).split())
        words = sorted(self.word_counts, key=lambda w: (-self.word_counts[w], w))
        vocab = list(self.SPECIAL_TOKENS) + words[: self.vocab_size - len(self.SPECIAL_TOKENS)]
        self.word_to_idx = {w: i for i, w in enumerate(vocab)}
        self.idx_to_word = dict(enumerate(vocab))


@mistake("AdvancedTokenizer", "replaces mentions and hashtags before URLs, so a URL right after '@' or '#' is "
                              "broken up: '@http://x.io' becomes '<USER>://x.io' instead of '@<URL>'")
class TokenizerUrlsLast(AdvancedTokenizer):
    def preprocess_text(self, text):
        text = re.sub(r"@\w+", "<USER>", text.lower())
        text = re.sub(r"#\w+", "<HASHTAG>", text)
        return re.sub(r"http\S+", "<URL>", text)


@mistake("AdvancedTokenizer", "starts word_counts over at every build_vocab call, so a second call forgets the words "
                              "of the first instead of adding to them")
class TokenizerResetsCounts(AdvancedTokenizer):
    def build_vocab(self, texts):
        self.word_counts = Counter()
        super().build_vocab(texts)


@variant("AdvancedTokenizer", "substitutes through a table of (pattern, placeholder) pairs and picks the words "
                              "with heapq.nsmallest on (-count, word)")
class TokenizerWithHeap:
    SPECIAL_TOKENS = ("<PAD>", "<UNK>", "<START>", "<END>", "<URL>", "<USER>", "<HASHTAG>")
    _RULES = ((re.compile(r"http\S+"), "<URL>"), (re.compile(r"@\w+"), "<USER>"), (re.compile(r"#\w+"), "<HASHTAG>"))

    def __init__(self, vocab_size=10000):
        if vocab_size < 7:
            raise ValueError(f"vocab_size {vocab_size} < 7 special tokens")
        self.vocab_size = vocab_size
        self.word_to_idx, self.idx_to_word, self.word_counts = {}, {}, Counter()

    def preprocess_text(self, text):
        out = text.lower()
        for pattern, placeholder in self._RULES:
            out = pattern.sub(placeholder, out)
        return out

    def build_vocab(self, texts):
        for text in texts:
            for word in self.preprocess_text(text).split():
                self.word_counts[word] += 1
        best = heapq.nsmallest(
            self.vocab_size - 7,
            ((-c, w) for w, c in self.word_counts.items() if w not in self.SPECIAL_TOKENS),
        )
        self.idx_to_word = dict(enumerate([*self.SPECIAL_TOKENS, *(w for _, w in best)]))
        self.word_to_idx = {w: i for i, w in self.idx_to_word.items()}

    def encode(self, text):
        return [self.word_to_idx.get(w, 1) for w in self.preprocess_text(text).split()]

    def decode(self, indices):
        return " ".join(self.idx_to_word[i] if i in self.idx_to_word else "<UNK>" for i in indices)


# ---------------------------------------------------------------------------------------------------
# BPETokenizer
# ---------------------------------------------------------------------------------------------------


def _merge(ids, pair, new):
    out, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and (ids[i], ids[i + 1]) == pair:
            out.append(new)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def _recount_train(self, text, vocab_size, choose):
    if vocab_size < 256:
        raise ValueError(f"vocab_size={vocab_size} < 256")
    ids = list(text.encode("utf-8"))
    self.merges, self.vocab = {}, {i: bytes([i]) for i in range(256)}
    for rank in range(vocab_size - 256):
        counts = Counter(pairwise(ids))
        if not counts:
            raise ValueError(f"ran out of pairs for vocab_size={vocab_size}")
        pair = choose(counts)
        ids = _merge(ids, pair, 256 + rank)
        self.merges[pair] = 256 + rank
        self.vocab[256 + rank] = self.vocab[pair[0]] + self.vocab[pair[1]]


@mistake("BPETokenizer", "merges in discovery order: repeatedly merges the FIRST mergeable pair from the left "
                         "instead of the pair with the lowest rank")
class BPEDiscoveryOrder(BPETokenizer):
    def encode(self, text):
        ids = list(text.encode("utf-8"))
        while True:
            for i, pair in enumerate(pairwise(ids)):
                if pair in self.merges:
                    ids[i: i + 2] = [self.merges[pair]]
                    break
            else:
                return ids


@mistake("BPETokenizer", "breaks ties between equally frequent pairs by insertion order (max(stats, key=stats.get), "
                         "minbpe's way) instead of taking the smallest pair")
class BPEInsertionOrderTieBreak(BPETokenizer):
    def train(self, text, vocab_size, verbose=False):
        _recount_train(self, text, vocab_size, lambda counts: max(counts, key=counts.get))


@mistake("BPETokenizer", "counts the pairs once, before the first merge, and reuses the stale counts afterwards")
class BPEStaleCounts(BPETokenizer):
    def train(self, text, vocab_size, verbose=False):
        if vocab_size < 256:
            raise ValueError(f"vocab_size={vocab_size} < 256")
        ids = list(text.encode("utf-8"))
        counts = Counter(pairwise(ids))
        ranked = sorted(counts, key=lambda p: (-counts[p], p))
        if len(ranked) < vocab_size - 256:
            raise ValueError(f"ran out of pairs for vocab_size={vocab_size}")
        self.merges, self.vocab = {}, {i: bytes([i]) for i in range(256)}
        for rank, pair in enumerate(ranked[: vocab_size - 256]):
            self.merges[pair] = 256 + rank
            self.vocab[256 + rank] = self.vocab[pair[0]] + self.vocab[pair[1]]


@mistake("BPETokenizer", "learns vocab_size - 255 merges: one token too many")
class BPEOneMergeTooMany(BPETokenizer):
    def train(self, text, vocab_size, verbose=False):
        super().train(text, vocab_size + 1, verbose)


@mistake("BPETokenizer", "decodes every token's bytes separately, which breaks characters whose UTF-8 bytes are "
                         "spread over several tokens")
class BPEDecodePerToken(BPETokenizer):
    def decode(self, ids):
        return "".join(self.vocab[i].decode("utf-8", errors="replace") for i in ids)


@mistake("BPETokenizer", "saves the merges sorted by pair instead of by rank, so load gives them the wrong ids")
class BPESaveSortedByPair(BPETokenizer):
    def save(self, path):
        with open(path, "w", encoding="utf-8") as f:
            f.write("bpe v1\n" + "".join(f"{a} {b}\n" for a, b in sorted(self.merges)))


@mistake("BPETokenizer", "decodes with the default errors='strict', so ids whose bytes are not valid UTF-8 "
                         "raise UnicodeDecodeError instead of giving U+FFFD")
class BPEDecodeStrict(BPETokenizer):
    def decode(self, ids):
        return b"".join(self.vocab[i] for i in ids).decode("utf-8")


@mistake("BPETokenizer", "keeps the merges of an earlier train (or load) and adds the new ones to them, so a "
                         "second train or a load does not replace the model")
class BPEKeepsOldMerges(BPETokenizer):
    def train(self, text, vocab_size, verbose=False):
        old_merges, old_vocab = dict(self.merges), dict(self.vocab)
        super().train(text, vocab_size, verbose)
        self.merges, self.vocab = {**old_merges, **self.merges}, {**old_vocab, **self.vocab}

    def load(self, path):
        old_merges = dict(self.merges)
        super().load(path)
        self.merges = {**old_merges, **self.merges}
        return self


@mistake("BPETokenizer", "prints every merge whatever verbose says")
class BPEAlwaysVerbose(BPETokenizer):
    def train(self, text, vocab_size, verbose=False):
        super().train(text, vocab_size, verbose=True)


@variant("BPETokenizer", "trains by recounting every pair after each merge (slow but correct) and encodes by "
                         "applying every merge, in rank order, to the whole sequence")
class BPERecountAndApplyInOrder(BPETokenizer):
    def train(self, text, vocab_size, verbose=False):
        _recount_train(self, text, vocab_size, lambda counts: min(counts, key=lambda p: (-counts[p], p)))
        if verbose:
            for pair, new in self.merges.items():
                print(f"{pair} -> {new}")

    def encode(self, text):
        ids = list(text.encode("utf-8"))
        for pair, new in sorted(self.merges.items(), key=lambda kv: kv[1]):
            if len(ids) < 2:
                break
            ids = _merge(ids, pair, new)
        return ids

    def decode(self, ids):
        buffer = bytearray()
        for i in ids:
            if i not in self.vocab:
                raise ValueError(f"unknown token id {i}")
            buffer += self.vocab[i]
        return buffer.decode("utf-8", errors="replace")


# ---------------------------------------------------------------------------------------------------
# wordpiece_encode
# ---------------------------------------------------------------------------------------------------


@mistake("wordpiece_encode", "looks up continuation pieces without the '##' prefix")
def wordpiece_without_prefix(word, vocab, unk="[UNK]", max_input_chars_per_word=100):
    if len(word) > max_input_chars_per_word:
        return [unk]
    pieces, start = [], 0
    while start < len(word):
        for end in range(len(word), start, -1):
            if word[start:end] in vocab:
                pieces.append(word[start:end])
                start = end
                break
        else:
            return [unk]
    return pieces


@mistake("wordpiece_encode", "takes the SHORTEST matching piece first instead of the longest")
def wordpiece_shortest_match(word, vocab, unk="[UNK]", max_input_chars_per_word=100):
    if len(word) > max_input_chars_per_word:
        return [unk]
    pieces, start = [], 0
    while start < len(word):
        for end in range(start + 1, len(word) + 1):
            piece = word[start:end] if start == 0 else "##" + word[start:end]
            if piece in vocab:
                pieces.append(piece)
                start = end
                break
        else:
            return [unk]
    return pieces


@mistake("wordpiece_encode", "emits [UNK] for the one unmatchable character and carries on, instead of making the "
                             "whole word [UNK]")
def wordpiece_partial_unk(word, vocab, unk="[UNK]", max_input_chars_per_word=100):
    if len(word) > max_input_chars_per_word:
        return [unk]
    pieces, start = [], 0
    while start < len(word):
        for end in range(len(word), start, -1):
            piece = word[start:end] if start == 0 else "##" + word[start:end]
            if piece in vocab:
                pieces.append(piece)
                start = end
                break
        else:
            pieces.append(unk)
            start += 1
    return pieces


@mistake("wordpiece_encode", "returns the literal '[UNK]' for a word over max_input_chars_per_word, ignoring the "
                             "unk argument")
def wordpiece_long_word_literal_unk(word, vocab, unk="[UNK]", max_input_chars_per_word=100):
    if len(word) > max_input_chars_per_word:
        return ["[UNK]"]
    pieces, start = [], 0
    while start < len(word):
        for end in range(len(word), start, -1):
            piece = word[start:end] if start == 0 else "##" + word[start:end]
            if piece in vocab:
                pieces.append(piece)
                start = end
                break
        else:
            return [unk]
    return pieces


@mistake("wordpiece_encode", "makes a word of exactly max_input_chars_per_word characters [UNK] too (>= instead of >)")
def wordpiece_limit_off_by_one(word, vocab, unk="[UNK]", max_input_chars_per_word=100):
    if len(word) >= max_input_chars_per_word:
        return [unk]
    return wordpiece_long_word_literal_unk(word, vocab, unk, max_input_chars_per_word)


@variant("wordpiece_encode", "tries every end position from the shortest up and keeps the last (longest) match; "
                             "recursive on the rest of the word")
def wordpiece_keep_longest(word, vocab, unk="[UNK]", max_input_chars_per_word=100):
    if len(word) > max_input_chars_per_word:
        return [unk]

    def rest(start):
        if start == len(word):
            return []
        best = None
        for end in range(start + 1, len(word) + 1):
            piece = ("##" if start else "") + word[start:end]
            if piece in vocab:
                best = (piece, end)
        if best is None:
            return None
        tail = rest(best[1])
        return None if tail is None else [best[0], *tail]

    pieces = rest(0)
    return [unk] if pieces is None else pieces


# ---------------------------------------------------------------------------------------------------
# NGramLM
# ---------------------------------------------------------------------------------------------------


@mistake("NGramLM", "returns 0 for a context never seen in training (maximum likelihood there, no smoothing)")
class NGramUnseenContextZero(NGramLM):
    def prob(self, word, context=()):
        if self.context_counts[self._context(context)] == 0:
            return 0.0
        return super().prob(word, context)


@mistake("NGramLM", "adds k to the denominator instead of k * |V|, so the probabilities do not sum to 1")
class NGramDenominatorWithoutV(NGramLM):
    def prob(self, word, context=()):
        h = self._context(context)
        word = word if word in self.vocab else self.UNK
        return (self.counts[(h, word)] + self.k) / (self.context_counts[h] + self.k)


@mistake("NGramLM", "does not pad with <s>: the first n - 1 tokens are never counted as predictions")
class NGramNoPadding(NGramLM):
    def fit(self, tokens):
        tokens = list(tokens)
        if not tokens:
            raise ValueError("empty")
        self.vocab = set(tokens) | {self.UNK}
        self.counts, self.context_counts = Counter(), Counter()
        for i in range(self.n - 1, len(tokens)):
            context = tuple(tokens[i - self.n + 1: i])
            self.counts[(context, tokens[i])] += 1
            self.context_counts[context] += 1
        return self


@mistake("NGramLM", "keeps the counts and vocabulary of an earlier fit and adds the new text to them")
class NGramRefitAccumulates(NGramLM):
    def fit(self, tokens):
        tokens = list(tokens)
        if not tokens:
            raise ValueError("cannot fit on no tokens")
        self.vocab |= set(tokens) | {self.UNK}
        padded = [self.BOS] * (self.n - 1) + tokens
        for i, word in enumerate(tokens):
            context = tuple(padded[i:i + self.n - 1])
            self.counts[(context, word)] += 1
            self.context_counts[context] += 1
        return self


@mistake("NGramLM", "reads an unknown WORD as <unk> but leaves unknown CONTEXT tokens as they are, so such a context "
                    "is never seen, even when the training text holds '<unk>'")
class NGramContextTokensNotUnk(NGramLM):
    def prob(self, word, context=()):
        if not self.vocab:
            raise ValueError("the model is not fitted: call fit(tokens) first")
        h = list(context)[-(self.n - 1):] if self.n > 1 else []
        h = (self.BOS,) * (self.n - 1 - len(h)) + tuple(h)
        word = word if word in self.vocab else self.UNK
        return (self.counts[(h, word)] + self.k) / (self.context_counts[h] + self.k * len(self.vocab))


@mistake("NGramLM", "keeps the FIRST n - 1 tokens of a long context (context[:n - 1]) instead of the last ones")
class NGramFirstContextTokens(NGramLM):
    def prob(self, word, context=()):
        return super().prob(word, list(context)[: self.n - 1])


@mistake("NGramLM", "multiplies the probabilities and takes the N-th root: the product underflows to 0 on a long "
                    "text and the perplexity becomes inf")
class NGramPerplexityByProduct(NGramLM):
    def perplexity(self, tokens):
        tokens = list(tokens)
        if not tokens:
            raise ValueError("empty")
        padded = [self.BOS] * (self.n - 1) + tokens
        product = 1.0
        for i, word in enumerate(tokens):
            product *= self.prob(word, padded[i:i + self.n - 1])
        return product ** (-1 / len(tokens)) if product > 0 else math.inf


@variant("NGramLM", "stores a Counter of next words per context and sums log-probabilities with torch in float64")
class NGramNested:
    BOS = "<s>"
    UNK = "<unk>"

    def __init__(self, n, k=1.0):
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        if k <= 0:
            raise ValueError(f"k must be > 0, got k={k}")
        self.n, self.k = n, k
        self.table = defaultdict(Counter)
        self.vocab = set()

    def _history(self, context):
        if self.n == 1:
            return ()
        mapped = [t if t in self.vocab or t == self.BOS else self.UNK for t in context]
        padded = [self.BOS] * (self.n - 1) + mapped
        return tuple(padded[len(padded) - (self.n - 1):])

    def fit(self, tokens):
        if len(tokens) == 0:
            raise ValueError("no tokens")
        self.vocab = {*tokens, self.UNK}
        self.table = defaultdict(Counter)
        history = [self.BOS] * (self.n - 1)
        for token in tokens:
            self.table[tuple(history[len(history) - (self.n - 1):]) if self.n > 1 else ()][token] += 1
            history.append(token)
        return self

    def prob(self, word, context=()):
        nexts = self.table.get(self._history(context), Counter())
        word = word if word in self.vocab else self.UNK
        return (nexts[word] + self.k) / (sum(nexts.values()) + self.k * len(self.vocab))

    def perplexity(self, tokens):
        if len(tokens) == 0:
            raise ValueError("no tokens")
        history = [self.BOS] * (self.n - 1)
        logs = []
        for token in tokens:
            logs.append(math.log(self.prob(token, history)))
            history.append(token)
        return float(torch.tensor(logs, dtype=torch.float64).mean().neg().exp())


# ---------------------------------------------------------------------------------------------------
# calculate_perplexity
# ---------------------------------------------------------------------------------------------------


@mistake("calculate_perplexity", "divides by target.numel(), counting padding positions as tokens (the learning "
                                 "path's bug)")
def perplexity_counts_padding(model, dataloader, ignore_index=-100):
    model.eval()
    total_loss, total_tokens = 0.0, 0
    with torch.no_grad():
        for data, target in dataloader:
            logits = model(data)
            total_loss += F.cross_entropy(logits.reshape(-1, logits.size(-1)), target.reshape(-1),
                                          ignore_index=ignore_index, reduction="sum").item()
            total_tokens += target.numel()
    return math.exp(total_loss / total_tokens)


@mistake("calculate_perplexity", "averages the per-batch mean losses, so tokens in small batches weigh more")
def perplexity_mean_of_batch_means(model, dataloader, ignore_index=-100):
    was = model.training
    model.eval()
    losses = []
    with torch.no_grad():
        for data, target in dataloader:
            logits = model(data)
            losses.append(F.cross_entropy(logits.reshape(-1, logits.size(-1)), target.reshape(-1),
                                          ignore_index=ignore_index).item())
    model.train(was)
    return math.exp(sum(losses) / len(losses))


@mistake("calculate_perplexity", "ignores the ignore_index argument and always skips -100")
def perplexity_hardcoded_ignore(model, dataloader, ignore_index=-100):
    was = model.training
    model.eval()
    total_loss, total_tokens = 0.0, 0
    with torch.no_grad():
        for data, target in dataloader:
            logits = model(data)
            total_loss += F.cross_entropy(logits.reshape(-1, logits.size(-1)), target.reshape(-1),
                                          reduction="sum").item()
            total_tokens += int((target != -100).sum())
    model.train(was)
    return math.exp(total_loss / total_tokens)


@mistake("calculate_perplexity", "takes log(softmax(logits)): a target far below the other logits gets probability "
                                 "0 in floating point and log(0) = -inf, where cross-entropy stays finite")
def perplexity_log_of_softmax(model, dataloader, ignore_index=-100):
    was = model.training
    model.eval()
    total_loss, total_tokens = 0.0, 0
    with torch.no_grad():
        for data, target in dataloader:
            probs = torch.softmax(model(data).double(), dim=-1)
            mask = target != ignore_index
            picked = probs[mask].gather(-1, target[mask].unsqueeze(-1))
            total_loss -= torch.log(picked).sum().item()
            total_tokens += int(mask.sum())
    model.train(was)
    if total_tokens == 0:
        raise ValueError("no tokens")
    return math.exp(total_loss / total_tokens)


@mistake("calculate_perplexity", "overwrites the padding targets with 0 in place (to gather with them), which "
                                 "changes the caller's dataset")
def perplexity_edits_targets_in_place(model, dataloader, ignore_index=-100):
    was = model.training
    model.eval()
    total_loss, total_tokens = 0.0, 0
    with torch.no_grad():
        for data, target in dataloader:
            mask = target != ignore_index
            target[~mask] = 0
            logp = torch.log_softmax(model(data).double(), dim=-1)
            total_loss -= (logp.gather(-1, target.unsqueeze(-1)).squeeze(-1) * mask).sum().item()
            total_tokens += int(mask.sum())
    model.train(was)
    if total_tokens == 0:
        raise ValueError("no tokens")
    return math.exp(total_loss / total_tokens)


@mistake("calculate_perplexity", "unpacks B, T, V = logits.shape, so only 3-D logits work")
def perplexity_assumes_three_dims(model, dataloader, ignore_index=-100):
    was = model.training
    model.eval()
    total_loss, total_tokens = 0.0, 0
    with torch.no_grad():
        for data, target in dataloader:
            logits = model(data)
            B, T, V = logits.shape
            total_loss += F.cross_entropy(logits.double().view(B * T, V), target.view(B * T),
                                          ignore_index=ignore_index, reduction="sum").item()
            total_tokens += int((target != ignore_index).sum())
    model.train(was)
    if total_tokens == 0:
        raise ValueError("no tokens")
    return math.exp(total_loss / total_tokens)


@mistake("calculate_perplexity", "switches to eval mode but forgets torch.no_grad(), so every batch builds an "
                                 "autograd graph")
def perplexity_with_grad(model, dataloader, ignore_index=-100):
    was = model.training
    model.eval()
    total_loss, total_tokens = 0.0, 0
    for data, target in dataloader:
        logits = model(data)
        total_loss += F.cross_entropy(logits.reshape(-1, logits.size(-1)).double(), target.reshape(-1),
                                      ignore_index=ignore_index, reduction="sum").item()
        total_tokens += int((target != ignore_index).sum())
    model.train(was)
    if total_tokens == 0:
        raise ValueError("no tokens")
    return math.exp(total_loss / total_tokens)


@variant("calculate_perplexity", "gathers log-probabilities with log_softmax and a boolean mask instead of "
                                 "F.cross_entropy(ignore_index=...)")
def perplexity_by_gather(model, dataloader, ignore_index=-100):
    was = model.training
    model.train(False)
    nll, count = torch.zeros((), dtype=torch.float64), 0
    try:
        with torch.inference_mode():
            for data, target in dataloader:
                logp = torch.log_softmax(model(data).double(), dim=-1)
                mask = target != ignore_index
                picked = logp[mask].gather(-1, target[mask].unsqueeze(-1))
                nll -= picked.sum()
                count += int(mask.sum())
    finally:
        model.train(was)
    if count == 0:
        raise ValueError("no tokens")
    return math.exp(float(nll) / count)
