"""Kata w13_attention (Weeks 13-14): transformers from scratch.

You build the pieces of a transformer layer and prove them equal to PyTorch's own:

1. ``scaled_dot_product_attention`` - the core formula, with boolean / additive / causal masks;
2. ``causal_mask`` and ``padding_mask`` - the two masks every language model needs;
3. ``SelfAttention`` - multi-head self-attention (the learning path's class, made causal on request);
4. ``PositionalEncoding`` - the sinusoidal position signal (the learning path's class, fixed);
5. ``TransformerBlock`` - attention + feed-forward with residuals and LayerNorm, post-norm and pre-norm.

Shape names used below: B batch, H heads, T sequence length, L queries, S keys, E embedding size,
hd = E // H the size of one head. Run ``kata check w13_attention`` to check your work.
"""


from __future__ import annotations

import math  # noqa: F401 - you will want math.sqrt and math.log
import operator  # noqa: F401 - operator.index turns an int-like into an int (and rejects floats)
from collections.abc import Sequence

import torch
from torch import Tensor, nn


def scaled_dot_product_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    attn_mask: Tensor | None = None,
    is_causal: bool = False,
    scale: float | None = None,
) -> tuple[Tensor, Tensor]:
    """Scaled dot-product attention: ``softmax(q @ k^T * scale + mask) @ v``. Returns ``(output, weights)``.

    Shapes: ``q`` is (..., L, E), ``k`` is (..., S, E), ``v`` is (..., S, Ev) with the same leading
    ("batch") dimensions, any number of them: (L, E), (B, L, E) and (B, H, L, E) all work.
    ``output`` is (..., L, Ev) and ``weights`` is (..., L, S); ``weights[..., i, j]`` is how much query i
    takes from key j, so the softmax runs over the LAST axis (the keys), and each row sums to 1.
    Sizes may be 0: L = 0 gives empty results, and S = 0 (no keys at all) leaves every row fully masked, so
    the output is zeros (see the rules below). ``q``, ``k``, ``v`` (and a float ``attn_mask``) share one
    floating dtype, which ``output`` and ``weights`` keep; a tensor you create (the causal mask) goes on
    ``q``'s device. The inputs are never modified in place: the caller still needs them.

    Rules (the same as ``torch.nn.functional.scaled_dot_product_attention``, which the checks compare with):

    - ``scale`` defaults to ``1 / sqrt(E)``. Without it, the dot products of E-dimensional vectors grow like
      sqrt(E), the softmax saturates to a one-hot and its gradients vanish.
    - ``attn_mask`` broadcasts to (..., L, S). A **bool** mask says True = "may attend", False = "masked"
      (careful: ``nn.MultiheadAttention`` uses the opposite convention). A **float** mask is *added* to the
      scores (0 keeps a key, ``-inf`` removes it, other values bias it).
    - ``is_causal=True`` means query i sees keys 0..i only (the mask ``torch.ones(L, S).tril()``). Passing both
      ``attn_mask`` and ``is_causal=True`` is a ``ValueError``.
    - Masking happens BEFORE the softmax (masked scores become -inf, so they get weight exactly 0 and the
      remaining weights still sum to 1). Zeroing weights after the softmax leaves rows that do not sum to 1.
    - A row whose keys are ALL masked has no sensible softmax: exp(-inf) / sum(exp(-inf)) is 0/0 = nan, and
      one nan poisons the whole training step. Convention of this kata: such a row gets weights all 0 and
      output 0 - and it must stay finite in the backward pass too (no nan gradients). So "weights rows sum
      to 1" holds for every row that has at least one allowed key. Hint: subtract the row max as usual,
      but use 0 as the shift of an all -inf row, and never divide by a zero sum.
    - ``q``/``k`` with different last dimensions, or ``k``/``v`` with different numbers of keys: ``ValueError``.

    Example::

        >>> q = k = torch.eye(2)[None]          # (1, 2, 2): two orthogonal queries/keys
        >>> v = torch.tensor([[[1.0], [3.0]]])  # (1, 2, 1)
        >>> out, w = scaled_dot_product_attention(q, k, v)
        >>> w   # softmax([1, 0] / sqrt(2)) = [0.670, 0.330] and its mirror
        tensor([[[0.6698, 0.3302],
                 [0.3302, 0.6698]]])
        >>> scaled_dot_product_attention(q, k, v, is_causal=True)[1]
        tensor([[[1.0000, 0.0000],
                 [0.3302, 0.6698]]])
    """
    # TODO(w13_attention.scaled_dot_product_attention): write your implementation here.
    raise NotImplementedError("w13_attention.scaled_dot_product_attention is not implemented yet (try `kata hint w13_attention.scaled_dot_product_attention`)")


def causal_mask(t: int, device: torch.device | str | None = None) -> Tensor:
    """The (t, t) boolean causal mask: ``mask[i, j]`` is True when query i may attend to key j, i.e. j <= i.

    The diagonal is True: a token always sees itself (masking it is a classic off-by-one that leaves the
    first token with nothing to attend to). The result is lower-triangular and plugs straight into
    ``scaled_dot_product_attention(q, k, v, attn_mask=causal_mask(t))``, which then equals
    ``is_causal=True``. ``t`` must be an integer >= 0 (``t=0`` gives an empty (0, 0) mask); a negative ``t``
    is a ``ValueError`` naming it, and a float ``t`` such as ``3.0`` a ``TypeError`` (as for ``range``).
    ``device`` places the mask (e.g. next to the activations on a GPU); by default it is on the CPU.

    Example::

        >>> causal_mask(3)
        tensor([[ True, False, False],
                [ True,  True, False],
                [ True,  True,  True]])
    """
    # TODO(w13_attention.causal_mask): write your implementation here.
    raise NotImplementedError("w13_attention.causal_mask is not implemented yet (try `kata hint w13_attention.causal_mask`)")


def padding_mask(lengths: Tensor | Sequence[int], t: int) -> Tensor:
    """The (B, t) boolean key-padding mask of right-padded sequences: True on the first ``lengths[b]``
    positions of row b (real tokens), False on the padding after them.

    Same convention as ``causal_mask`` (True = may be attended to). To use it as an attention mask over
    keys for every head and query, index it as ``mask[:, None, None, :]`` -> (B, 1, 1, t).

    ``lengths`` is a 1-D integer tensor or a list of ints, each in [0, t]; an empty one (B = 0) gives a
    (0, t) mask. A length above ``t``, a negative length, float lengths (``2.5``, even ``2.0``) or bool ones
    (``True`` is not a length) are a ``ValueError`` that names the offending value; so are a negative ``t``
    and ``lengths`` that are not 1-D. ``t`` must be an integer: a float ``t`` is a ``TypeError``.
    The mask lives on the device of ``lengths`` (the CPU for a list); ``lengths`` itself is not modified.

    Example::

        >>> padding_mask([3, 1], 4)
        tensor([[ True,  True,  True, False],
                [ True, False, False, False]])
    """
    # TODO(w13_attention.causal_mask): write your implementation here.
    raise NotImplementedError("w13_attention.padding_mask is not implemented yet (part of w13_attention.causal_mask: try `kata hint w13_attention.causal_mask`)")


class SelfAttention(nn.Module):
    """Multi-head self-attention over a (B, T, E) input, returning (B, T, E).

    This is the learning path's ``SelfAttention`` with two fixes: an optional causal mask (a language
    model must not look at the tokens it is about to predict) and a clear ``ValueError`` when
    ``embed_dim % num_heads != 0`` (the learning path's code computed ``head_dim = embed_dim // num_heads`` and then
    crashed much later inside ``.view`` with a shape error that does not say what is wrong).

    Parameter layout (the checks copy ``nn.MultiheadAttention`` weights in by these names, so keep them):
    ``self.query``, ``self.key``, ``self.value``, ``self.out`` - four ``nn.Linear(embed_dim, embed_dim)``
    with bias and PyTorch's default initialisation, and no other parameters; ``self.dropout`` -
    an ``nn.Dropout(dropout)`` applied to the attention *weights* (B, H, T, T) in training mode only, as
    ``nn.MultiheadAttention`` does: each weight is zeroed with probability ``dropout`` and the others are
    scaled by 1 / (1 - dropout). Also store ``embed_dim``, ``num_heads``, ``head_dim`` and ``causal`` as
    attributes. By default the attention is bidirectional (``causal=False``) and has no dropout (``0.0``).
    ``embed_dim`` and ``num_heads`` must be positive and ``embed_dim % num_heads == 0``; otherwise
    ``__init__`` raises a ``ValueError`` that names both numbers.

    ``forward(x, key_padding_mask=None)``:

    1. project: Q, K, V = query(x), key(x), value(x), each (B, T, E);
    2. split heads: (B, T, E) -> view (B, T, H, hd) -> transpose to (B, H, T, hd). The transpose matters:
       ``view(B, H, T, hd)`` without it reinterprets the memory and mixes tokens into heads - it only looks
       right when T == 1 or H == 1;
    3. attend with your ``scaled_dot_product_attention`` (the scale is 1/sqrt(hd), the size of ONE head),
       with ``causal_mask(T)`` when ``causal`` and/or the key padding mask (combine bool masks with ``&``);
    4. merge heads: transpose back to (B, T, H, hd), reshape to (B, T, E), then apply ``out``.

    ``key_padding_mask`` is a (B, T) bool tensor with True on real tokens (as ``padding_mask`` returns). Note
    that ``nn.MultiheadAttention``'s ``key_padding_mask`` means the opposite (True = ignore). A mask of any
    other shape is a ``ValueError`` naming that shape: indexed as above, it would not fail but broadcast
    against the (B, H, T, T) scores into nonsense. ``forward`` modifies neither ``x`` nor the mask.

    Example::

        >>> attn = SelfAttention(embed_dim=8, num_heads=2, causal=True)
        >>> attn(torch.randn(3, 5, 8)).shape
        torch.Size([3, 5, 8])
        >>> SelfAttention(6, 4)
        Traceback (most recent call last):
        ValueError: embed_dim=6 is not divisible by num_heads=4
    """

    def __init__(self, embed_dim: int, num_heads: int, causal: bool = False, dropout: float = 0.0) -> None:
        # TODO(w13_attention.SelfAttention): write your implementation here.
        raise NotImplementedError("w13_attention.SelfAttention.__init__ is not implemented yet (try `kata hint w13_attention.SelfAttention`)")

    def forward(self, x: Tensor, key_padding_mask: Tensor | None = None) -> Tensor:
        # TODO(w13_attention.SelfAttention): write your implementation here.
        raise NotImplementedError("w13_attention.SelfAttention.forward is not implemented yet (try `kata hint w13_attention.SelfAttention`)")


class PositionalEncoding(nn.Module):
    """Adds the fixed sinusoidal position encoding of "Attention is all you need" to a (B, T, E) input.

    For position ``pos`` and column index ``c`` (0-based), with ``i = c // 2``::

        pe[pos, c] = sin(pos / 10000 ** (2 * i / E))   for even c
        pe[pos, c] = cos(pos / 10000 ** (2 * i / E))   for odd c

    so columns come in (sin, cos) pairs sharing one frequency, from 1 (columns 0, 1) down to nearly
    1/10000. Precompute the table for positions 0 .. max_len-1 in ``__init__`` and keep it as a buffer named
    ``pe`` of shape (1, max_len, E) in the default dtype (``self.register_buffer("pe", ...)``): it moves with
    ``.to(device)`` and is saved in the ``state_dict``, but it is not a parameter, so it never trains.
    ``forward(x)`` returns a new tensor ``x + pe[:, :T]`` (the same encoding for every batch item) in ``x``'s
    dtype, leaving ``x`` itself unchanged. ``embed_dim`` and ``max_len`` must be positive (``ValueError``
    naming the value otherwise).

    The learning path's bug: it wrote ``pe[:, 1::2] = torch.cos(position * div_term)``. For an odd E there are
    ceil(E/2) frequencies (one per even column) but only floor(E/2) odd columns, so the assignment
    crashed. Any E >= 1 must work here: cut the cosines to E // 2 columns.

    Also: an input longer than ``max_len`` is a ``ValueError`` naming both lengths (the learning path's code crashed
    with a broadcasting error instead). Large positions need care too: compute the angles ``pos * freq``
    in float64 and round only the finished table to the default dtype. The checks compare every position
    up to ``max_len`` with the exact formula within 1e-6 (float32 rounding of the stored values is fine),
    and the learning path's float32 angles are off by ~1e-4 at position 5000.

    Example::

        >>> PositionalEncoding(4)(torch.zeros(1, 2, 4))
        tensor([[[0.0000, 1.0000, 0.0000, 1.0000],
                 [0.8415, 0.5403, 0.0100, 0.9999]]])
    """

    def __init__(self, embed_dim: int, max_len: int = 5000) -> None:
        # TODO(w13_attention.PositionalEncoding): write your implementation here.
        raise NotImplementedError("w13_attention.PositionalEncoding.__init__ is not implemented yet (try `kata hint w13_attention.PositionalEncoding`)")

    def forward(self, x: Tensor) -> Tensor:
        # TODO(w13_attention.PositionalEncoding): write your implementation here.
        raise NotImplementedError("w13_attention.PositionalEncoding.forward is not implemented yet (try `kata hint w13_attention.PositionalEncoding`)")


class TransformerBlock(nn.Module):
    """One transformer encoder layer: self-attention and a ReLU feed-forward net, each wrapped in a
    residual connection and a LayerNorm. Input and output are (B, T, E).

    Parameter layout (the checks copy ``nn.TransformerEncoderLayer`` weights in by these names):
    ``self.attention = SelfAttention(embed_dim, num_heads, causal=causal, dropout=dropout)``,
    ``self.norm1``, ``self.norm2`` - ``nn.LayerNorm(embed_dim)``,
    ``self.feed_forward = nn.Sequential(nn.Linear(embed_dim, ff_dim), nn.ReLU(), nn.Linear(ff_dim, embed_dim))``,
    ``self.dropout = nn.Dropout(dropout)`` applied to each sub-layer's output before it is added back.
    Nothing else is dropped (unlike ``nn.TransformerEncoderLayer``, the feed-forward has no inner dropout);
    in training each element of a sub-layer's output is zeroed with probability ``dropout`` and the rest
    scaled by 1 / (1 - dropout). The defaults: ``dropout=0.1``, post-norm, bidirectional.

    ``forward(x, key_padding_mask=None)`` (the mask is passed on to the attention), two orders:

    - post-norm (``norm_first=False``, as in the learning path and the original paper)::

          x = norm1(x + dropout(attention(x)))
          x = norm2(x + dropout(feed_forward(x)))

    - pre-norm (``norm_first=True``, GPT-2 and most modern models: trains more stably when deep)::

          x = x + dropout(attention(norm1(x)))
          x = x + dropout(feed_forward(norm2(x)))

    Each residual goes around ITS OWN sub-layer: the feed-forward's shortcut carries the attention
    sub-layer's result, not the block's input. In pre-norm, only the sub-layer's input is normalised; the
    residual stream ``x`` itself is added back un-normalised. Build new tensors (``x = x + ...``), never
    ``x += ...``: the first ``x`` is the caller's input.

    With dropout 0 (or in ``eval()`` mode) and the same weights this equals
    ``nn.TransformerEncoderLayer(embed_dim, num_heads, ff_dim, activation="relu", batch_first=True,
    norm_first=norm_first)``. With ``causal=True`` the output at position t depends only on tokens 0..t.

    Example::

        >>> block = TransformerBlock(8, 2, 32, dropout=0.0, norm_first=True, causal=True)
        >>> block(torch.randn(3, 5, 8)).shape
        torch.Size([3, 5, 8])
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        ff_dim: int,
        dropout: float = 0.1,
        norm_first: bool = False,
        causal: bool = False,
    ) -> None:
        # TODO(w13_attention.TransformerBlock): write your implementation here.
        raise NotImplementedError("w13_attention.TransformerBlock.__init__ is not implemented yet (try `kata hint w13_attention.TransformerBlock`)")

    def forward(self, x: Tensor, key_padding_mask: Tensor | None = None) -> Tensor:
        # TODO(w13_attention.TransformerBlock): write your implementation here.
        raise NotImplementedError("w13_attention.TransformerBlock.forward is not implemented yet (try `kata hint w13_attention.TransformerBlock`)")
