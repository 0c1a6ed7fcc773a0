"""Kata w11_tokenization (Weeks 11-12): NLP fundamentals - tokenizers and the perplexity of language models.

Text becomes numbers before any model sees it, and how it is cut decides what the model can learn.
You build, in order:

1. ``AdvancedTokenizer`` - the learning path's word tokenizer with URL / mention / hashtag
   placeholders, fixed so that the placeholders survive;
2. ``BPETokenizer`` - byte-level byte-pair encoding (the GPT-2 family's tokenizer), trained from scratch,
   with a trainer fast enough for a real corpus;
3. ``wordpiece_encode`` - BERT's greedy longest-match-first WordPiece, checked against Hugging Face
   ``tokenizers``;
4. ``NGramLM`` - an add-k smoothed n-gram language model with its perplexity;
5. ``calculate_perplexity`` - the learning path's perplexity of a neural language model, fixed so that
   padding does not count.

Run ``kata check w11_tokenization`` to check your work.
"""

# The canonical stub lines (`raise NotImplementedError(...)`) are longer than 120 characters here.

from __future__ import annotations

import heapq  # noqa: F401 - a heap finds the most frequent pair quickly in BPETokenizer.train
import math  # noqa: F401 - math.exp, math.log, math.inf, math.fsum
import os
import re  # noqa: F401 - regular expressions for AdvancedTokenizer.preprocess_text
from collections import Counter, defaultdict  # noqa: F401 - counting words, pairs and n-grams
from collections.abc import Collection, Iterable, Sequence

import torch
import torch.nn.functional as F  # noqa: F401 - F.cross_entropy


class AdvancedTokenizer:
    """A word-level tokenizer with placeholders for URLs, mentions and hashtags (the learning path's, fixed).

    ``AdvancedTokenizer(vocab_size)`` keeps at most ``vocab_size`` tokens. The first ids are fixed::

        0 <PAD>   1 <UNK>   2 <START>   3 <END>   4 <URL>   5 <USER>   6 <HASHTAG>

    (``SPECIAL_TOKENS`` below, in id order). ``vocab_size`` smaller than 7 leaves no room for them:
    ``ValueError`` naming the value. A new tokenizer has an empty vocabulary: ``word_to_idx`` and
    ``idx_to_word`` are ``{}`` and ``word_counts`` is an empty ``Counter``.

    Methods (and the attributes they fill):

    - ``preprocess_text(text) -> str``: lower-case the text, THEN replace, in this order, every match of
      ``http\\S+`` by ``<URL>``, of ``@\\w+`` by ``<USER>`` and of ``#\\w+`` by ``<HASHTAG>``
      (the learning path's regular expressions). The order matters where they touch: URLs go first, so
      ``"@http://x.io"`` becomes ``"@<URL>"``, not ``"<USER>://x.io"``. Nothing else changes (spaces and
      punctuation stay).
    - ``build_vocab(texts)``: add the words (``preprocess_text(t).split()``) of every text to the Counter
      ``word_counts``, then set ``word_to_idx`` (word -> id) and ``idx_to_word`` (id -> word): the seven
      special tokens, then the most frequent other words, as many as fit in ``vocab_size``. Ties in the
      count are broken by the word itself (``"apple"`` before ``"banana"``), so the vocabulary does not
      depend on the order of the texts. The placeholders are special tokens already: they never get a
      second id. Ids are 0, 1, 2, ... with no gap.
    - ``encode(text) -> list[int]``: the ids of the preprocessed words; a word not in the vocabulary
      gets the id of ``<UNK>``.
    - ``decode(indices) -> str``: the words joined by single spaces; an unknown id decodes to ``<UNK>``.

    The learning path's bug: it lower-cased AFTER inserting the placeholders, so ``<URL>`` became ``<url>``,
    which is not a special token - every URL was counted as the ordinary word ``<url>`` (or lost to
    ``<UNK>``) and the ids 4-6 were never produced.

    Example::

        >>> tok = AdvancedTokenizer(vocab_size=10)
        >>> tok.preprocess_text("Read THIS https://x.io/a #NLP @Ana")
        'read this <URL> <HASHTAG> <USER>'
        >>> tok.build_vocab(["the cat", "The dog", "a cat"])
        >>> [tok.idx_to_word[i] for i in range(7, len(tok.word_to_idx))]   # cat, the: 2 each; then a
        ['cat', 'the', 'a']
        >>> tok.encode("the fox at http://t.co")
        [8, 1, 1, 4]
        >>> tok.decode([8, 7, 99])
        'the cat <UNK>'
    """

    SPECIAL_TOKENS = ("<PAD>", "<UNK>", "<START>", "<END>", "<URL>", "<USER>", "<HASHTAG>")

    def __init__(self, vocab_size: int = 10000) -> None:
        # TODO(w11_tokenization.AdvancedTokenizer): write your implementation here.
        raise NotImplementedError("w11_tokenization.AdvancedTokenizer.__init__ is not implemented yet (try `kata hint w11_tokenization.AdvancedTokenizer`)")

    def preprocess_text(self, text: str) -> str:
        # TODO(w11_tokenization.AdvancedTokenizer): write your implementation here.
        raise NotImplementedError("w11_tokenization.AdvancedTokenizer.preprocess_text is not implemented yet (try `kata hint w11_tokenization.AdvancedTokenizer`)")

    def build_vocab(self, texts: Iterable[str]) -> None:
        # TODO(w11_tokenization.AdvancedTokenizer): write your implementation here.
        raise NotImplementedError("w11_tokenization.AdvancedTokenizer.build_vocab is not implemented yet (try `kata hint w11_tokenization.AdvancedTokenizer`)")

    def encode(self, text: str) -> list[int]:
        # TODO(w11_tokenization.AdvancedTokenizer): write your implementation here.
        raise NotImplementedError("w11_tokenization.AdvancedTokenizer.encode is not implemented yet (try `kata hint w11_tokenization.AdvancedTokenizer`)")

    def decode(self, indices: Iterable[int]) -> str:
        # TODO(w11_tokenization.AdvancedTokenizer): write your implementation here.
        raise NotImplementedError("w11_tokenization.AdvancedTokenizer.decode is not implemented yet (try `kata hint w11_tokenization.AdvancedTokenizer`)")


class BPETokenizer:
    """Byte-level byte-pair encoding (BPE), as in GPT-2 and Karpathy's minbpe ``BasicTokenizer``.

    Text is UTF-8 encoded; the 256 possible bytes are the first 256 tokens (``vocab[i] == bytes([i])``),
    so ANY string can be encoded - there is no unknown token. Training repeatedly finds the most
    frequent adjacent pair of tokens and replaces it by a new token.

    Attributes:

    - ``merges: dict[tuple[int, int], int]`` - pair -> new id. The k-th merge learned (its *rank* k,
      from 0) creates id ``256 + k``; the dict keeps them in rank order.
    - ``vocab: dict[int, bytes]`` - id -> the bytes it stands for; ``vocab[256 + k]`` is the
      concatenation of the bytes of the pair merged at rank k.

    A new ``BPETokenizer()`` has no merges and the 256 byte tokens.

    Methods:

    - ``train(text, vocab_size, verbose=False)``: learn exactly ``vocab_size - 256`` merges from ``text``
      (so ``len(vocab) == vocab_size`` afterwards), replacing any previous ones. At each step:
        1. count every adjacent pair of the current sequence, overlapping ones included
           (``[a, a, a]`` holds the pair ``(a, a)`` twice);
        2. pick the most frequent pair; **ties go to the smallest pair**, comparing ``(first, second)``
           as tuples of ints. (Not "the first one seen": that depends on how your counts were stored.)
        3. replace its occurrences left to right, without overlap (``[a, a, a]`` -> ``[X, a]``).
      ``vocab_size < 256`` -> ``ValueError`` naming it; a text that runs out of pairs before enough merges
      (e.g. ``"ab"`` with ``vocab_size=300``) -> ``ValueError``. With ``verbose=True`` print one line per
      merge that names the pair and its new id (e.g. ``(97, 97) -> 256``); by default print nothing.

      **Be fast.** Recounting every pair of the whole text after each merge costs O(len(text)) per
      merge. A merge only changes the counts of the pairs around its occurrences: keep a count per
      pair and, per pair, where it occurs, and update only those (a linked list of positions lets you
      merge without shifting a list; a heap finds the next most frequent pair). The performance check
      wants at least 5x (aim for 20x) over the recounting trainer at ``vocab_size=512`` on a 185 kB text.
    - ``encode(text) -> list[int]``: the UTF-8 bytes, then apply the merges **in rank order**: while
      some adjacent pair is in ``merges``, merge (everywhere, left to right) the pair with the LOWEST
      rank. Not "the first mergeable pair from the left": with merges ``(b, c)`` (rank 0) and
      ``(a, b)`` (rank 1), ``"abc"`` encodes to ``[97, 256]``, not ``[257, 99]``.
    - ``decode(ids) -> str``: concatenate the tokens' BYTES, then decode the whole byte string as UTF-8
      with ``errors="replace"``. (One character's bytes may be split over two tokens, so decoding token
      by token is wrong.) ``decode(encode(s)) == s`` for every string. An id not in ``vocab`` ->
      ``ValueError`` naming it.
    - ``save(path)``: write a text file: the line ``bpe v1``, then one line ``"<first> <second>"`` per
      merge in rank order (the new id is implied by the line's position).
    - ``load(path) -> BPETokenizer``: read such a file into this tokenizer (merges AND vocab) and return
      ``self``. A file that does not start with ``bpe v1`` -> ``ValueError``.

    Example::

        >>> tok = BPETokenizer()
        >>> tok.train("aaabdaaabac", vocab_size=259)   # Wikipedia's example, as bytes
        >>> tok.merges      # (a, a) 4 times; then (256, a) and (a, b) twice each: the tie goes to (97, 98)
        {(97, 97): 256, (97, 98): 257, (256, 257): 258}
        >>> tok.encode("aaabdaaabac")
        [258, 100, 258, 97, 99]
        >>> tok.decode([258, 100])
        'aaabd'
    """

    def __init__(self) -> None:
        # TODO(w11_tokenization.BPETokenizer): write your implementation here.
        raise NotImplementedError("w11_tokenization.BPETokenizer.__init__ is not implemented yet (try `kata hint w11_tokenization.BPETokenizer`)")

    def train(self, text: str, vocab_size: int, verbose: bool = False) -> None:
        # TODO(w11_tokenization.BPETokenizer): write your implementation here.
        raise NotImplementedError("w11_tokenization.BPETokenizer.train is not implemented yet (try `kata hint w11_tokenization.BPETokenizer`)")

    def encode(self, text: str) -> list[int]:
        # TODO(w11_tokenization.BPETokenizer): write your implementation here.
        raise NotImplementedError("w11_tokenization.BPETokenizer.encode is not implemented yet (try `kata hint w11_tokenization.BPETokenizer`)")

    def decode(self, ids: Iterable[int]) -> str:
        # TODO(w11_tokenization.BPETokenizer): write your implementation here.
        raise NotImplementedError("w11_tokenization.BPETokenizer.decode is not implemented yet (try `kata hint w11_tokenization.BPETokenizer`)")

    def save(self, path: str | os.PathLike) -> None:
        # TODO(w11_tokenization.BPETokenizer): write your implementation here.
        raise NotImplementedError("w11_tokenization.BPETokenizer.save is not implemented yet (try `kata hint w11_tokenization.BPETokenizer`)")

    def load(self, path: str | os.PathLike) -> BPETokenizer:
        # TODO(w11_tokenization.BPETokenizer): write your implementation here.
        raise NotImplementedError("w11_tokenization.BPETokenizer.load is not implemented yet (try `kata hint w11_tokenization.BPETokenizer`)")


def wordpiece_encode(word: str, vocab: Collection[str], unk: str = "[UNK]",
                     max_input_chars_per_word: int = 100) -> list[str]:
    """Split one word into WordPiece tokens, greedily, longest match first (BERT's tokenizer).

    Start at the beginning of ``word``; take the LONGEST prefix of the rest that is in ``vocab`` - a
    piece that does not start the word is looked up with the continuation prefix ``"##"`` (so ``"##ing"``,
    not ``"ing"``); emit it and continue after it. If at some position no piece matches, the WHOLE word
    is unknown: return ``[unk]`` (not the pieces found so far). A word longer than
    ``max_input_chars_per_word`` characters is ``[unk]`` too, and the empty word gives ``[]``.

    ``vocab`` is any collection of strings that supports ``in`` (a set, or a dict token -> id).
    The result equals what Hugging Face ``tokenizers.models.WordPiece`` gives with the same vocabulary.

    Example::

        >>> vocab = {"un", "##aff", "##able", "##a", "aff"}
        >>> wordpiece_encode("unaffable", vocab)
        ['un', '##aff', '##able']
        >>> wordpiece_encode("unaffablex", vocab)       # no piece matches "x"
        ['[UNK]']
        >>> wordpiece_encode("affable", vocab)          # "aff" starts the word: no "##"
        ['aff', '##able']
    """
    # TODO(w11_tokenization.wordpiece_encode): write your implementation here.
    raise NotImplementedError("w11_tokenization.wordpiece_encode is not implemented yet (try `kata hint w11_tokenization.wordpiece_encode`)")


class NGramLM:
    """An n-gram language model over tokens, with add-k smoothing.

    ``NGramLM(n, k=1.0)``: the probability of a word depends on the ``n - 1`` tokens before it (its
    *context*). ``n`` must be a positive int and ``k`` positive, else ``ValueError`` naming the value.

    - ``fit(tokens) -> NGramLM``: count, for every position ``i`` of the token sequence, the pair
      (context of ``i``, ``tokens[i]``), and how often each context occurs; return ``self``. The context
      of ``i`` is ``tokens[i-n+1:i]``, left-padded with ``BOS = "<s>"`` near the start (for n = 3 the
      first token's context is ``("<s>", "<s>")``). The vocabulary ``V`` is the set of distinct training
      tokens plus ``UNK = "<unk>"``. Refitting starts from scratch. Empty ``tokens`` -> ``ValueError``.
    - ``prob(word, context=()) -> float``: with ``c(h, w)`` the count of word w after context h and
      ``c(h)`` the count of context h::

            P(w | h) = (c(h, w) + k) / (c(h) + k * |V|)

      Only the last ``n - 1`` tokens of ``context`` matter; a shorter one is left-padded with ``"<s>"``.
      A word (or context token) that is not in ``V`` (``"<s>"`` apart) is treated as ``"<unk>"``.
      So the probabilities over ``V`` sum to 1 for ANY context, and a context never seen in training
      gives every word ``1 / |V|`` - never 0.
    - ``perplexity(tokens) -> float``: ``exp(-(1/N) * sum_i log P(tokens[i] | context of i))`` with the
      contexts built as in ``fit`` (padded with ``"<s>"`` at the start). Sum logs - a product of
      probabilities underflows to 0. Empty ``tokens`` -> ``ValueError``.

    Example::

        >>> lm = NGramLM(2, k=1.0).fit("a b a b a c".split())      # V = {a, b, c, <unk>}
        >>> lm.prob("b", ["a"])        # after "a": b twice, c once -> (2 + 1) / (3 + 4)
        0.42857142857142855
        >>> lm.prob("a", ["zebra"])    # unseen context: uniform
        0.25
        >>> round(lm.perplexity("a b a b".split()), 4)   # (0.4 * 3/7 * 0.5 * 3/7) ** (-1/4)
        2.2842
    """

    BOS = "<s>"
    UNK = "<unk>"

    def __init__(self, n: int, k: float = 1.0) -> None:
        # TODO(w11_tokenization.NGramLM): write your implementation here.
        raise NotImplementedError("w11_tokenization.NGramLM.__init__ is not implemented yet (try `kata hint w11_tokenization.NGramLM`)")

    def fit(self, tokens: Sequence[str]) -> NGramLM:
        # TODO(w11_tokenization.NGramLM): write your implementation here.
        raise NotImplementedError("w11_tokenization.NGramLM.fit is not implemented yet (try `kata hint w11_tokenization.NGramLM`)")

    def prob(self, word: str, context: Sequence[str] = ()) -> float:
        # TODO(w11_tokenization.NGramLM): write your implementation here.
        raise NotImplementedError("w11_tokenization.NGramLM.prob is not implemented yet (try `kata hint w11_tokenization.NGramLM`)")

    def perplexity(self, tokens: Sequence[str]) -> float:
        # TODO(w11_tokenization.NGramLM): write your implementation here.
        raise NotImplementedError("w11_tokenization.NGramLM.perplexity is not implemented yet (try `kata hint w11_tokenization.NGramLM`)")


def calculate_perplexity(model: torch.nn.Module, dataloader: Iterable, ignore_index: int = -100) -> float:
    """Perplexity of a language model on a dataset: ``exp`` of the loss per real (non-padding) token.

    ``dataloader`` yields ``(data, target)`` batches; ``model(data)`` returns logits of shape
    (..., V) and ``target`` holds class ids of shape (...) (e.g. logits (B, T, V) and target (B, T)).
    Positions where ``target == ignore_index`` are padding: they add nothing to the loss AND are not
    counted as tokens. Over the whole dataset::

        perplexity = exp( sum of cross-entropy over real tokens / number of real tokens )

    i.e. every token weighs the same, whatever batch it sits in (not an average of batch averages).
    Evaluate under ``torch.no_grad()`` with the model in eval mode (dropout off), and leave the model in
    the mode you found it in. Return a Python float. No real token at all -> ``ValueError``.

    The learning path's bug: it divided the summed loss by ``target.numel()``, counting the padding positions as
    tokens - ``F.cross_entropy`` already skips targets equal to -100, so the loss was right but the
    token count too large, and the perplexity came out too LOW (flattering) the more padding a batch had.

    Example::

        >>> model = torch.nn.Embedding(4, 4)           # logits = a row per input id
        >>> torch.nn.init.zeros_(model.weight)         # uniform predictions over 4 classes
        >>> x = torch.tensor([[0, 1, 2]]); y = torch.tensor([[1, 2, -100]])
        >>> calculate_perplexity(model, [(x, y)])      # 4.0 (the padding does not count)
        4.0
    """
    # TODO(w11_tokenization.calculate_perplexity): write your implementation here.
    raise NotImplementedError("w11_tokenization.calculate_perplexity is not implemented yet (try `kata hint w11_tokenization.calculate_perplexity`)")
