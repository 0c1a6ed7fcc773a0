"""Kata m07_efficiency (months 7-8 of the learning path: "focus on efficiency improvements").

Three tricks that make attention and text generation cheaper without changing what the model computes:

1. ``flash_attention`` - exact attention computed one small tile at a time with an "online" softmax, so the
   (L, S) matrix of scores is never built (the idea behind FlashAttention);
2. ``speculative_decode`` - a small draft model guesses a few tokens, the large target model checks all of
   them in one call; the output is exactly the target's own greedy output, only cheaper;
3. ``sliding_window_mask`` - each query sees only the last ``window`` keys (Mistral's sliding window).

Shape names used below: B batch, H heads, L queries, S keys, E size of q and k, Ev size of v, V vocabulary.
This module uses torch only; the checks compare with ``torch.nn.functional.scaled_dot_product_attention``
and with plain greedy decoding. Run ``kata check m07_efficiency`` to check your work.
"""

from __future__ import annotations

import math  # noqa: F401 - math.sqrt for the default scale, math.inf for the running max
import numbers  # noqa: F401 - isinstance(x, numbers.Integral) accepts every kind of int (and bool: reject it)
from collections.abc import Callable

import torch
from torch import Tensor


def flash_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    block_size: int = 64,
    is_causal: bool = False,
    scale: float | None = None,
    key_mask: Tensor | None = None,
) -> Tensor:
    """Exact attention ``softmax(q @ k^T * scale + mask) @ v``, computed one tile at a time so that the
    (L, S) matrix of scores never exists. Returns the output only.

    Why: ordinary attention builds the scores (..., L, S). For L = S = 32,768 tokens that is a billion
    numbers per head and batch entry (4 GB in float32), written to memory and read back several times.
    FlashAttention (Dao et al., 2022) computes exactly the same output from tiles small enough to stay in a
    GPU's fast on-chip memory. You write the same algorithm with ordinary tensor operations.

    Shapes: ``q`` is (..., L, E), ``k`` is (..., S, E), ``v`` is (..., S, Ev). The leading dimensions
    broadcast, any number of them: (L, E) works, and so do k and v of shape (B, 1, S, E) shared by every head
    of a q of shape (B, H, L, E) (multi-query attention). The result is (..., L, Ev), in the dtype of q (q, k
    and v share one floating dtype) and on q's device: tensors you create (running statistics, positions)
    go there too. L = 0 gives an empty (..., 0, Ev) result. No attention weights are returned: they would
    be the (L, S) matrix this exercise avoids.

    The algorithm (the "online softmax"). For each tile of at most ``block_size`` query rows, keep three
    running values per row: ``m`` the largest score so far (start at -inf), ``l`` the sum of exp(s - m)
    (start at 0) and ``acc`` the sum of exp(s - m) * v (start at 0, shape (rows, Ev)). Then for each tile of
    at most ``block_size`` keys::

        s     = q_tile @ k_tile^T * scale              # (..., rows, cols): one tile of scores
        m_new = maximum(m, s.amax(dim=-1, keepdim=True))
        p     = exp(s - m_new)
        alpha = exp(m - m_new)                         # rescales what was summed under the old max
        l     = l * alpha + p.sum(dim=-1, keepdim=True)
        acc   = acc * alpha + p @ v_tile
        m     = m_new

    After the last key tile the rows of the output are ``acc / l``; put the query tiles together
    (``torch.cat`` along dim -2).

    Rules:

    - **The memory rule** (the checks watch every tensor your code creates, with L = S = 256 and block
      sizes 16, 32 and the default): ``block_size`` is the tile size for the queries AND the keys. No tensor created during the call
      may hold more numbers than the largest of q, k, v and the output, or than one block_size x block_size
      tile of scores for each leading index (``prod(leading dims) * block_size**2``). Views (slices,
      ``transpose``, ``expand``) create nothing and are fine. So: no (L, S) scores, no (L, S) mask, and no
      (block_size, S) strip of scores either - tiling only the queries leaves memory growing with S. Do not
      call ``F.scaled_dot_product_attention``: on the CPU it builds the whole matrix inside.
    - L and S need not be multiples of ``block_size``: the last tile is shorter. A ``block_size`` larger
      than L and S is one tile. It defaults to 64.
    - ``scale`` defaults to ``1 / sqrt(E)``.
    - ``is_causal=True``: query i sees keys 0..i, as ``F.scaled_dot_product_attention(..., is_causal=True)``
      (top-left aligned: for L != S it is the mask ``torch.ones(L, S).tril()``). Inside a tile, compare the
      global positions ``i0 + r`` and ``j0 + c``, not the positions within the tile.
    - ``key_mask``: an optional bool tensor (..., S), True = a real key that may be attended to,
      False = padding: the convention of SDPA's bool ``attn_mask`` and of ``padding_mask`` in w13_attention
      (careful: ``nn.MultiheadAttention``'s ``key_padding_mask`` means the opposite, True = ignore). Its
      leading dimensions broadcast with those of q, so a (B, 1, S) mask serves every head of a (B, H, L, E)
      q. With ``is_causal=True`` a key must pass both.
    - A query row with no allowed key at all (every key padded, or S = 0) gets output 0, never nan. Careful:
      with ``m`` starting at -inf, a key tile in which some row has no allowed key YET gives
      exp(-inf - (-inf)) = exp(nan) and poisons that row for good. Left-padded batches do this all the time.
      Shift such a row by 0 instead of by its max (its p is 0 anyway), and divide by ``l`` clamped away
      from 0 at the end.
    - Gradients flow: the output works with autograd and its gradients with respect to q, k and v equal
      those of ordinary attention. So no ``torch.no_grad()``, and no in-place updates of tensors autograd
      needs: write ``acc = acc * alpha + ...``, not ``acc.mul_(alpha)``.
    - q, k, v and the mask are never modified.
    - Errors: q and k with different last dimensions, k and v with different numbers of keys, a
      ``key_mask`` that is not bool or whose last dimension is not S: ``ValueError`` naming the
      sizes (and, for the mask, the word key_mask). ``block_size`` must be an int >= 1: a float or a bool
      is a ``TypeError``, 0 or less a ``ValueError`` naming block_size and its value.

    Example::

        >>> q = k = torch.eye(2)[None]          # (1, 2, 2): two orthogonal queries/keys
        >>> v = torch.tensor([[[1.0], [3.0]]])  # (1, 2, 1)
        >>> flash_attention(q, k, v, block_size=1)   # weights softmax([1, 0] / sqrt(2)) = [0.670, 0.330]
        tensor([[[1.6605],
                 [2.3395]]])
        >>> flash_attention(q, k, v, block_size=1, key_mask=torch.tensor([False, True]))
        tensor([[[3.],
                 [3.]]])
    """
    # TODO(m07_efficiency.flash_attention): write your implementation here.
    raise NotImplementedError("m07_efficiency.flash_attention is not implemented yet (try `kata hint m07_efficiency.flash_attention`)")


def speculative_decode(
    target: Callable[[Tensor], Tensor],
    draft: Callable[[Tensor], Tensor],
    idx: Tensor,
    max_new_tokens: int,
    k: int = 4,
) -> tuple[Tensor, int]:
    """Greedy decoding with ``target``, sped up by a cheaper ``draft`` model that guesses ahead.
    Returns ``(tokens, accepted)``.

    ``target`` and ``draft`` are callables (an ``nn.Module`` such as your MiniGPT, or a plain function)
    that take token ids of shape (1, T) and return logits (1, T, V); ``logits[:, t]`` predicts token t + 1.
    Both use the same vocabulary.

    Why: a large model generates one token per forward pass, one pass after the other. But one pass over
    T + d tokens costs about as much as a pass over T + 1 (the weights are read once either way), so the
    target can check d guesses of a small model in a single call (Leviathan et al., 2023; Chen et al., 2023).

    One round, with n tokens generated so far:

    1. Draft ``d = min(k, max_new_tokens - n - 1)`` guesses: call ``draft`` d times, each time on the
       sequence followed by the guesses so far, and take the argmax of its last logits.
    2. Call ``target`` ONCE, on the sequence followed by all d guesses. The argmax of its logits at the
       last d + 1 positions gives the target's own choices c_0 .. c_d: c_0 after the sequence, c_i after
       guess i.
    3. Keep guesses from the first one while guess i equals c_(i-1); stop at the first that does not. With
       a guesses kept, append them and then c_a: the target's correction, or, when all d were kept, a
       bonus token. A round adds a + 1 <= d + 1 tokens, so it never overshoots max_new_tokens (when one
       token is left, d = 0 and the round is an ordinary greedy step).

    ``accepted`` is the total number of guesses kept (the a of every round), a Python int.

    Rules:

    - ``tokens`` equals plain greedy decoding with ``target`` alone (argmax at every step; ties go to the
      lowest token id, as ``torch.argmax`` does), whatever the draft. A good draft only makes it cheaper:
      when the draft always agrees, each round keeps all its guesses and the target is called
      ceil(max_new_tokens / (k + 1)) times instead of max_new_tokens times.
    - The calls are exactly those of the rounds above: the target once per round, the draft once per guess.
      Both are always called on the whole sequence (no cropping: T + max_new_tokens must fit the models'
      context), with ids in idx's dtype, under ``torch.no_grad()`` (generation needs no autograd graph).
    - ``idx`` is (1, T) with T >= 1: a batch of one sequence only (rows of a batch would keep different
      numbers of guesses; Hugging Face's assisted generation has the same limit). It is not modified.
    - ``tokens`` is (1, T + max_new_tokens): idx followed by the new tokens, in idx's dtype (int32 ids
      stay int32; argmax returns int64) and on idx's device. ``max_new_tokens = 0`` returns idx's tokens
      with accepted 0 and calls no model.
    - Errors: ``max_new_tokens`` or ``k`` that is a float or a bool: ``TypeError``; ``max_new_tokens < 0``
      or ``k < 1``: ``ValueError`` naming the argument and its value (``"k must be >= 1, got k=0"``);
      ``idx`` that is not (1, T >= 1): ``ValueError`` naming idx and its shape.

    Example::

        >>> import torch.nn.functional as F
        >>> def target(ids):   # always predicts (last token + 1) % 5
        ...     return F.one_hot((ids + 1) % 5, 5).double()
        >>> def draft(ids):    # the same, except that it guesses 0 after a 2
        ...     return F.one_hot(torch.where(ids == 2, 0, (ids + 1) % 5), 5).double()
        >>> speculative_decode(target, draft, torch.tensor([[0]]), 6, k=3)
        (tensor([[0, 1, 2, 3, 4, 0, 1]]), 4)

    Round 1 guesses 1, 2, 0; the target chooses 1, 2, 3, ...: 1 and 2 are kept, 3 corrects the 0. Round 2
    has 3 tokens left, so it guesses 2 tokens (4, 0); both are kept and the target adds the bonus 1.
    """
    # TODO(m07_efficiency.speculative_decode): write your implementation here.
    raise NotImplementedError("m07_efficiency.speculative_decode is not implemented yet (try `kata hint m07_efficiency.speculative_decode`)")


def sliding_window_mask(
    t: int, window: int, causal: bool = True, device: torch.device | str | None = None
) -> Tensor:
    """The (t, t) boolean mask of sliding-window attention: ``mask[i, j]`` is True when query i may attend
    to key j.

    - ``causal=True`` (the default): True when ``0 <= i - j < window`` - the token itself and the
      ``window - 1`` tokens before it, so ``window`` is the number of keys a query sees (Mistral's
      ``sliding_window`` means the same). Early queries see fewer: query i sees min(i + 1, window) keys.
    - ``causal=False``: True when ``|i - j| < window`` - ``window - 1`` keys on each side and itself
      (local attention as in Longformer).

    The convention is that of ``F.scaled_dot_product_attention``'s bool ``attn_mask`` and of
    ``causal_mask`` in w13_attention: True = may attend. With ``window >= t`` the causal mask is exactly the
    causal mask (``torch.ones(t, t, dtype=torch.bool).tril()``), and ``window = 1`` lets each token see
    only itself. Why: the cost of attention then grows like t * window instead of t * t, and stacking
    layers still lets information travel further than one window.

    ``t`` (>= 0; ``t = 0`` gives a (0, 0) mask) and ``window`` (>= 1) are ints: a float such as ``3.0`` or
    a bool is a ``TypeError``, a negative ``t`` or a ``window`` below 1 a ``ValueError`` naming the argument
    and its value (``"window must be >= 1, got window=0"``).
    ``device`` places the mask (the CPU by default).

    Example::

        >>> sliding_window_mask(4, 2)
        tensor([[ True, False, False, False],
                [ True,  True, False, False],
                [False,  True,  True, False],
                [False, False,  True,  True]])
        >>> sliding_window_mask(4, 2, causal=False)
        tensor([[ True,  True, False, False],
                [ True,  True,  True, False],
                [False,  True,  True,  True],
                [False, False,  True,  True]])
    """
    # TODO(m07_efficiency.sliding_window_mask): write your implementation here.
    raise NotImplementedError("m07_efficiency.sliding_window_mask is not implemented yet (try `kata hint m07_efficiency.sliding_window_mask`)")
