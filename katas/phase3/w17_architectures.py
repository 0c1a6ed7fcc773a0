"""Kata w17_architectures (Weeks 17-18): modern LLM architectures.

You take apart the three families of the learning path (GPT, BERT, T5) and the pieces newer models swapped in:

1. ``count_gpt2_parameters`` - where GPT-2's parameters live, as a formula of its config;
2. ``GPT2`` and ``load_hf_state_dict`` - GPT-2 from scratch, loaded with Hugging Face's weights, same logits;
3. ``mlm_mask`` - BERT's masked-language-model corruption (80% [MASK], 10% random, 10% unchanged);
4. ``span_corruption`` - T5's objective: spans replaced by sentinels, the model writes the spans back;
5. ``attention_mask_for`` - the masks of decoder-only, encoder-only and prefix-LM models;
6. ``RMSNorm``, ``apply_rotary``, ``SwiGLU``, ``GroupedQueryAttention`` - the blocks of Llama-style models;
7. ``chinchilla_optimal``, ``fit_power_law``, ``plot_scaling`` - compute-optimal sizes and scaling laws.

Shape names used below: B batch, T sequence length, E embedding size (``n_embd``), V vocabulary size,
H heads, hd = E // H the size of one head. Run ``kata check w17_architectures`` to check your work.
"""

from __future__ import annotations

import math  # noqa: F401 - math.sqrt, math.log
import operator  # noqa: F401 - operator.index turns an int-like into an int (and rejects floats)
from collections.abc import Sequence  # noqa: F401

import numpy as np  # noqa: F401
import torch
import torch.nn.functional as F  # noqa: F401 - F.gelu(x, approximate="tanh"), F.silu
from torch import Tensor, nn

# --------------------------------------------------------------------------------------------------
# count_gpt2_parameters


def count_gpt2_parameters(config) -> int:
    """The number of trainable parameters of ``transformers.GPT2LMHeadModel(config)``, from a formula.

    The learning path counted parameters with ``sum(p.numel() for p in model.parameters())`` after
    downloading whole models. Here you write the count as a formula of the config, which tells you *where*
    the parameters are (GPT-2 small: 124,439,808, of which 38.6 M are the token embedding).

    ``config`` is a ``transformers.GPT2Config`` (or any object with the same attributes). Read:
    ``vocab_size`` (V), ``n_positions`` (P, the longest sequence), ``n_embd`` (E), ``n_layer`` (L),
    ``n_inner`` (the MLP's hidden width; ``None`` means 4 * E) and ``tie_word_embeddings`` (default True).

    GPT2LMHeadModel holds:

    - ``wte`` (V, E) token embedding and ``wpe`` (P, E) learned position embedding;
    - per layer: ``ln_1`` and ``ln_2`` (a gain and a bias of E each), ``attn.c_attn`` (E -> 3E, weight
      and bias: q, k and v in one projection), ``attn.c_proj`` (E -> E), ``mlp.c_fc`` (E -> inner) and
      ``mlp.c_proj`` (inner -> E), all with biases;
    - ``ln_f`` (gain and bias) after the last layer;
    - ``lm_head`` (E -> V, no bias). With ``tie_word_embeddings=True`` its weight IS ``wte``'s weight (one
      tensor used twice), so ``model.parameters()`` yields it once and it must be counted once. With
      ``tie_word_embeddings=False`` it is a separate (V, E) matrix.

    ``n_head`` does not change the count (heads split E, they do not add weights). Returns a Python int.

    Example::

        >>> from transformers import GPT2Config
        >>> count_gpt2_parameters(GPT2Config())   # GPT-2 small
        124439808
    """
    # TODO(w17_architectures.count_gpt2_parameters): write your implementation here.
    raise NotImplementedError("w17_architectures.count_gpt2_parameters is not implemented yet (try `kata hint w17_architectures.count_gpt2_parameters`)")


# --------------------------------------------------------------------------------------------------
# GPT2 + load_hf_state_dict


class CausalSelfAttention(nn.Module):
    """GPT-2's multi-head causal self-attention (part of the ``GPT2`` exercise).

    Layout (the names are fixed: ``load_hf_state_dict`` and the checks find the weights by name):
    ``c_attn = nn.Linear(E, 3 * E)`` computes q, k and v at once (split the last axis into three blocks of E:
    q first, then k, then v); ``c_proj = nn.Linear(E, E)``; ``attn_dropout = nn.Dropout(config.attn_pdrop)``
    on the attention weights; ``resid_dropout = nn.Dropout(config.resid_pdrop)`` on the output.
    ``config.n_embd`` not divisible by ``config.n_head`` is a ``ValueError`` naming both.

    ``forward(x)``: x is (B, T, E); split q, k, v into H heads of hd = E // H features each, head h
    holding features ``h * hd`` to ``(h + 1) * hd`` (``view(B, T, H, hd).transpose(1, 2)`` -> (B, H, T, hd)),
    scores ``q @ k^T / sqrt(hd)``, causal mask (query i sees keys 0..i), softmax over the keys, dropout,
    ``@ v``, heads merged back to (B, T, E), then ``c_proj`` and dropout. Returns (B, T, E).
    """

    def __init__(self, config) -> None:
        # TODO(w17_architectures.GPT2): write your implementation here.
        raise NotImplementedError("w17_architectures.CausalSelfAttention.__init__ is not implemented yet (part of w17_architectures.GPT2: try `kata hint w17_architectures.GPT2`)")

    def forward(self, x: Tensor) -> Tensor:
        # TODO(w17_architectures.GPT2): write your implementation here.
        raise NotImplementedError("w17_architectures.CausalSelfAttention.forward is not implemented yet (part of w17_architectures.GPT2: try `kata hint w17_architectures.GPT2`)")


class MLP(nn.Module):
    """GPT-2's feed-forward network (part of the ``GPT2`` exercise).

    ``c_fc = nn.Linear(E, inner)``, GELU with the tanh approximation (``F.gelu(x, approximate="tanh")``,
    GPT-2's "gelu_new"), ``c_proj = nn.Linear(inner, E)``, then ``dropout = nn.Dropout(config.resid_pdrop)``.
    ``inner`` is ``config.n_inner``, or 4 * E when that is ``None``.
    """

    def __init__(self, config) -> None:
        # TODO(w17_architectures.GPT2): write your implementation here.
        raise NotImplementedError("w17_architectures.MLP.__init__ is not implemented yet (part of w17_architectures.GPT2: try `kata hint w17_architectures.GPT2`)")

    def forward(self, x: Tensor) -> Tensor:
        # TODO(w17_architectures.GPT2): write your implementation here.
        raise NotImplementedError("w17_architectures.MLP.forward is not implemented yet (part of w17_architectures.GPT2: try `kata hint w17_architectures.GPT2`)")


class Block(nn.Module):
    """One GPT-2 layer, pre-norm (part of the ``GPT2`` exercise).

    ``ln_1``, ``attn`` (a ``CausalSelfAttention``), ``ln_2``, ``mlp`` (an ``MLP``); both LayerNorms use
    ``eps=config.layer_norm_epsilon``. ``forward(x)``: ``x = x + attn(ln_1(x))``, then
    ``x = x + mlp(ln_2(x))``: the residual stream itself is never normalised.
    """

    def __init__(self, config) -> None:
        # TODO(w17_architectures.GPT2): write your implementation here.
        raise NotImplementedError("w17_architectures.Block.__init__ is not implemented yet (part of w17_architectures.GPT2: try `kata hint w17_architectures.GPT2`)")

    def forward(self, x: Tensor) -> Tensor:
        # TODO(w17_architectures.GPT2): write your implementation here.
        raise NotImplementedError("w17_architectures.Block.forward is not implemented yet (part of w17_architectures.GPT2: try `kata hint w17_architectures.GPT2`)")


class GPT2(nn.Module):
    """GPT-2 from scratch: ``GPT2(config)(input_ids)`` gives the same logits as Hugging Face's
    ``GPT2LMHeadModel(config)`` once both hold the same weights (see ``load_hf_state_dict``).

    ``config`` is a ``transformers.GPT2Config`` (read: ``vocab_size``, ``n_positions``, ``n_embd``,
    ``n_layer``, ``n_head``, ``n_inner``, ``layer_norm_epsilon``, ``embd_pdrop``, ``attn_pdrop``,
    ``resid_pdrop``, ``initializer_range``); keep it as ``self.config``.

    Layout (nanoGPT's names, which are Hugging Face's without the Conv1D layers):

    - ``transformer``: an ``nn.ModuleDict`` with ``wte = nn.Embedding(V, E)``, ``wpe = nn.Embedding(P, E)``
      (learned positions, not sinusoids), ``drop = nn.Dropout(config.embd_pdrop)``, ``h``: an
      ``nn.ModuleList`` of ``n_layer`` ``Block``s, and ``ln_f = nn.LayerNorm(E, eps=layer_norm_epsilon)``;
    - ``lm_head = nn.Linear(E, V, bias=False)`` whose weight IS ``transformer.wte.weight`` (tied: assign the
      Parameter, do not copy it), so there is one (V, E) matrix, used to read tokens in and to score them out.

    Initialisation (GPT-2's): every Linear and Embedding weight ~ Normal(0, ``initializer_range``), biases 0,
    LayerNorm gains 1 and biases 0; the two ``c_proj`` weights of each block, which write into the residual
    stream, use std ``initializer_range / sqrt(2 * n_layer)`` so that the stream does not grow with depth.

    ``forward(input_ids)``: ids (B, T), int64 or int32 (the index types ``nn.Embedding`` takes),
    1 <= T <= ``n_positions`` (a longer T is a ``ValueError`` naming T and the limit); embeddings
    ``wte(ids) + wpe(0..T-1)``, ``drop``, the blocks, ``ln_f``, ``lm_head``. Returns logits (B, T, V) in the
    dtype of the parameters. Everything lives on the device of ``input_ids`` (positions included). Dropout acts
    in ``train()`` mode only.

    Example::

        >>> config = GPT2Config(vocab_size=11, n_positions=8, n_embd=8, n_layer=2, n_head=2)
        >>> GPT2(config)(torch.tensor([[1, 2, 3]])).shape
        torch.Size([1, 3, 11])
    """

    def __init__(self, config) -> None:
        # TODO(w17_architectures.GPT2): write your implementation here.
        raise NotImplementedError("w17_architectures.GPT2.__init__ is not implemented yet (try `kata hint w17_architectures.GPT2`)")

    def forward(self, input_ids: Tensor) -> Tensor:
        # TODO(w17_architectures.GPT2): write your implementation here.
        raise NotImplementedError("w17_architectures.GPT2.forward is not implemented yet (try `kata hint w17_architectures.GPT2`)")


def load_hf_state_dict(model: GPT2, state_dict: dict[str, Tensor]) -> GPT2:
    """Copy Hugging Face GPT-2 weights into your ``GPT2``; returns ``model`` (the same object).

    ``state_dict`` is either ``GPT2LMHeadModel.state_dict()`` (keys ``transformer.wte.weight``,
    ``transformer.h.0.attn.c_attn.weight``, ..., maybe ``lm_head.weight``) or the keys of a saved file
    such as ``model.safetensors`` of the real ``gpt2``, which has no ``transformer.`` prefix
    (``wte.weight``, ``h.0.attn.c_attn.weight``, ...). Both must load.

    The catch: Hugging Face's GPT-2 uses ``Conv1D`` layers, whose weight is stored as (in, out), the
    TRANSPOSE of ``nn.Linear``'s (out, in). The four of each block, ``attn.c_attn``, ``attn.c_proj``,
    ``mlp.c_fc`` and ``mlp.c_proj``, must be transposed on load; everything else copies as it is. (A square
    ``attn.c_proj`` (E, E) loads without complaint either way, so only the logits show the mistake.)

    Rules:

    - Keys ending in ``.attn.bias`` or ``.attn.masked_bias`` (old checkpoints store the causal mask as a
      buffer) are skipped, and so is ``lm_head.weight``: it is tied to ``wte``.
    - Any other key that has no place in ``model``, or a weight of ``model`` that no key fills, is a
      ``KeyError`` naming the key; a tensor whose shape does not fit (after the transpose) a ``ValueError``
      naming the key. Check everything before copying anything: a failed load leaves the model as it was.
    - Copy into the existing parameters (``param.copy_(value)`` under ``torch.no_grad()``): they keep their
      dtype and device (a float32 file loads into a float64 model), the tie between ``wte`` and ``lm_head``
      survives, and ``state_dict`` itself is never modified.

    Example::

        >>> hf = GPT2LMHeadModel(config).eval()
        >>> mine = load_hf_state_dict(GPT2(config), hf.state_dict()).eval()
        >>> torch.allclose(mine(ids), hf(ids).logits)
        True
    """
    # TODO(w17_architectures.GPT2): write your implementation here.
    raise NotImplementedError("w17_architectures.load_hf_state_dict is not implemented yet (part of w17_architectures.GPT2: try `kata hint w17_architectures.GPT2`)")


# --------------------------------------------------------------------------------------------------
# mlm_mask


def mlm_mask(
    input_ids: Tensor,
    mask_id: int,
    vocab_size: int,
    special_ids: Sequence[int],
    prob: float = 0.15,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """BERT's masked-language-model corruption. Returns ``(corrupted_ids, labels)``.

    BERT (encoder-only, bidirectional) is trained to recover tokens it cannot see. Each position is *chosen*
    independently with probability ``prob``, except special tokens (ids in ``special_ids``: [CLS], [SEP],
    padding ...), which are never chosen. A chosen position is then

    - replaced by ``mask_id`` with probability 0.8,
    - replaced by a random token, uniform over ``0 .. vocab_size - 1`` (special ones included, as Hugging
      Face's ``DataCollatorForLanguageModeling`` does), with probability 0.1,
    - left unchanged with probability 0.1 (so the model cannot learn "only [MASK] positions matter").

    ``labels`` holds the ORIGINAL token at every chosen position and -100 everywhere else (-100 is the
    ``ignore_index`` of ``F.cross_entropy``: the loss is taken only on chosen positions, including the
    unchanged ones). Positions not chosen keep their token in ``corrupted_ids``.

    ``input_ids`` is an integer tensor of any shape (any number of leading dimensions, sizes may be 0);
    both results have its shape, dtype and device. ``input_ids`` itself is not modified. ``special_ids`` is a
    list, tuple or 1-D tensor of ints (it may be empty). Randomness comes from ``generator`` (a
    ``torch.Generator`` on the device of ``input_ids``) and never from the global RNG when one is given; with
    ``generator=None`` the global RNG is used. ``prob`` outside [0, 1] and a ``mask_id`` outside
    ``0 .. vocab_size - 1`` are a ``ValueError`` naming the value.

    Example (one possible draw)::

        >>> ids = torch.tensor([[101, 7592, 2088, 102]])         # [CLS] hello world [SEP]
        >>> mlm_mask(ids, mask_id=103, vocab_size=30522, special_ids=[101, 102], prob=0.5,
        ...          generator=torch.Generator().manual_seed(0))
        (tensor([[ 101, 7592,  103,  102]]), tensor([[-100, -100, 2088, -100]]))
    """
    # TODO(w17_architectures.mlm_mask): write your implementation here.
    raise NotImplementedError("w17_architectures.mlm_mask is not implemented yet (try `kata hint w17_architectures.mlm_mask`)")


# --------------------------------------------------------------------------------------------------
# span_corruption


def span_corruption(
    tokens: Tensor,
    noise_density: float,
    mean_span_length: float,
    sentinel_ids: Sequence[int],
    generator: torch.Generator,
) -> tuple[Tensor, Tensor]:
    """T5's span corruption. Returns ``(inputs, targets)``, two 1-D tensors.

    T5 (encoder-decoder) drops *spans* of tokens from its input, marks each gap with a sentinel (a special
    token such as ``<extra_id_0>``) and learns to write the dropped spans back::

        tokens : Thank you for inviting me to your party last week .
        inputs : Thank you <X> me to your party <Y> week .
        targets: <X> for inviting <Y> last

    ``tokens`` is a 1-D integer tensor of n >= 2 tokens. The rules (those of T5's own code):

    - ``num_noise = round(n * noise_density)``, then clamped to 1 .. n - 1 (something is dropped, something
      is kept); ``num_spans = max(1, round(num_noise / mean_span_length))``, then at most ``num_noise`` and
      at most ``n - num_noise`` (every span has at least one token). Python's ``round`` is used (half to even).
    - The sequence alternates kept span, noise span, kept span, noise span, ... : ``num_spans`` of each,
      starting with a kept span. The lengths of the noise spans are a random split of ``num_noise`` into
      ``num_spans`` positive parts, and those of the kept spans a random split of ``n - num_noise``; every
      split must be possible (each part at least 1).
    - ``inputs``: the kept tokens, with noise span i replaced by ONE token, ``sentinel_ids[i]``.
      ``targets``: for each span i in order, ``sentinel_ids[i]`` followed by the span's tokens. Each span
      gets its own sentinel, in order: reusing one sentinel makes the spans impossible to put back.

    So replacing each sentinel of ``inputs`` by the tokens that follow it in ``targets`` rebuilds ``tokens``.
    Both results keep the dtype and device of ``tokens``, which is not modified. Randomness comes only
    from ``generator`` (the global RNG is never touched). Errors (``ValueError`` naming the value): tokens
    not 1-D or fewer than 2, ``noise_density`` not strictly between 0 and 1, ``mean_span_length <= 0``, and
    fewer ``sentinel_ids`` than ``num_spans``.

    Example (one possible draw)::

        >>> span_corruption(torch.arange(10, 20), 0.3, 1.5, sentinel_ids=[99, 98, 97],
        ...                 generator=torch.Generator().manual_seed(0))
        (tensor([10, 11, 12, 13, 99, 15, 16, 17, 98]), tensor([99, 14, 98, 18, 19]))
    """
    # TODO(w17_architectures.span_corruption): write your implementation here.
    raise NotImplementedError("w17_architectures.span_corruption is not implemented yet (try `kata hint w17_architectures.span_corruption`)")


# --------------------------------------------------------------------------------------------------
# attention_mask_for


def attention_mask_for(kind: str, t: int, prefix_len: int = 0) -> Tensor:
    """The (t, t) boolean attention mask of each model family: ``mask[i, j]`` is True when query i may attend
    to key j (the convention of ``F.scaled_dot_product_attention``).

    - ``"causal"`` (decoder-only: GPT): j <= i, a token sees itself and the past;
    - ``"bidirectional"`` (encoder-only: BERT, and T5's encoder): every token sees every token;
    - ``"prefix"`` (prefix LM: T5 used as one decoder, UniLM): the first ``prefix_len`` tokens (the prompt)
      see each other bidirectionally, and every later token sees the whole prefix and the non-prefix tokens
      up to itself, causally. ``prefix_len=0`` gives the causal mask and ``prefix_len=t`` the bidirectional one.
      Prefix tokens never see the tokens after the prefix.

    ``t`` and ``prefix_len`` are integers (``t >= 0``; ``t = 0`` gives an empty (0, 0) mask; floats are a
    ``TypeError``). ``prefix_len`` must be 0 for the other kinds and within 0..t for ``"prefix"``. An unknown
    ``kind``, a negative ``t`` or a bad ``prefix_len`` is a ``ValueError`` naming it. The mask is on the CPU.

    Example::

        >>> attention_mask_for("prefix", 4, prefix_len=2).int()
        tensor([[1, 1, 0, 0],
                [1, 1, 0, 0],
                [1, 1, 1, 0],
                [1, 1, 1, 1]], dtype=torch.int32)
    """
    # TODO(w17_architectures.attention_mask_for): write your implementation here.
    raise NotImplementedError("w17_architectures.attention_mask_for is not implemented yet (try `kata hint w17_architectures.attention_mask_for`)")


# --------------------------------------------------------------------------------------------------
# RMSNorm


class RMSNorm(nn.Module):
    """Root-mean-square normalisation (Llama, Mistral, Gemma): LayerNorm without the mean and the bias.

    ``y = x / sqrt(mean(x^2) + eps) * weight``, the mean taken over the last axis. Not subtracting the mean
    saves work and trains as well. ``eps`` sits INSIDE the square root (so an all-zero row gives 0, not nan);
    its default here is Llama's 1e-6 (``torch.nn.RMSNorm``'s own default differs: it uses the dtype's machine
    epsilon). Keep it as ``self.eps``.

    Layout: one parameter ``weight`` of shape (dim,), initialised to ones; no bias, nothing else that trains.
    ``forward(x)``: x is (..., dim) with any number of leading dimensions (sizes may be 0); returns the
    same shape in x's dtype (the checks use float64: ``module.to(torch.float64)``). x is not modified.
    Equals ``torch.nn.RMSNorm(dim, eps=eps)`` with the same weight.

    Example::

        >>> RMSNorm(2)(torch.tensor([[3.0, 4.0]]))     # rms = sqrt((9 + 16) / 2) = 3.536
        tensor([[0.8485, 1.1314]], grad_fn=<MulBackward0>)
    """

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        # TODO(w17_architectures.RMSNorm): write your implementation here.
        raise NotImplementedError("w17_architectures.RMSNorm.__init__ is not implemented yet (try `kata hint w17_architectures.RMSNorm`)")

    def forward(self, x: Tensor) -> Tensor:
        # TODO(w17_architectures.RMSNorm): write your implementation here.
        raise NotImplementedError("w17_architectures.RMSNorm.forward is not implemented yet (try `kata hint w17_architectures.RMSNorm`)")


# --------------------------------------------------------------------------------------------------
# apply_rotary


def apply_rotary(x: Tensor, positions: Tensor, base: float = 10000.0) -> Tensor:
    """Rotary position embedding (RoPE): rotate pairs of features of queries or keys by position-dependent angles.

    RoPE replaced GPT-2's learned positions in Llama and most current LLMs. Features are taken in pairs, and
    pair i of the vector at position p is rotated by the angle ``p * base ** (-2i / D)`` (i = 0 .. D/2 - 1:
    fast rotations for the first pairs, slow ones for the last). Because a rotation by angle m followed by the
    transpose of a rotation by n is a rotation by m - n, the dot product of a rotated query (position m) and a
    rotated key (position n) depends only on m - n: attention sees relative positions.

    Convention (Llama's and Hugging Face's ``rotate_half``; the original paper interleaves instead): feature i
    pairs with feature i + D/2, NOT with feature i + 1. With ``x1 = x[..., :D/2]``, ``x2 = x[..., D/2:]``
    and ``cos``/``sin`` of the angles repeated twice along the last axis (length D)::

        out = x * cos + cat([-x2, x1]) * sin

    ``x`` is (..., T, D) with any leading dimensions (e.g. (B, H, T, hd)), D even (an odd D is a
    ``ValueError`` naming it). ``positions`` is an integer tensor on x's device, broadcastable to
    ``x.shape[:-1]``: usually (T,), ``arange(T)`` or ``arange(T) + offset`` for tokens that follow a cache, or
    (B, 1, T) for one offset per sequence of a (B, H, T, D) batch. Compute the angles in float64
    (at position 10,000 a float32 angle is already off by 1e-3 rad), then cast cos and sin to x's dtype; the
    result has x's shape, dtype and device. ``x`` and ``positions`` are not modified.

    Example::

        >>> x = torch.tensor([[1.0, 0.0]])                    # one position, D = 2: a single pair
        >>> apply_rotary(x, torch.tensor([1]))                 # rotated by 1 radian
        tensor([[0.5403, 0.8415]])
    """
    # TODO(w17_architectures.apply_rotary): write your implementation here.
    raise NotImplementedError("w17_architectures.apply_rotary is not implemented yet (try `kata hint w17_architectures.apply_rotary`)")


# --------------------------------------------------------------------------------------------------
# SwiGLU


class SwiGLU(nn.Module):
    """Llama's gated feed-forward network: ``down_proj(silu(gate_proj(x)) * up_proj(x))``.

    GPT-2's MLP is ``c_proj(gelu(c_fc(x)))``. SwiGLU adds a second input projection: the ``gate`` branch goes
    through SiLU (``x * sigmoid(x)``, ``F.silu``) and multiplies, feature by feature, the ``up`` branch, which
    stays linear. Three ``nn.Linear`` layers WITHOUT biases, named as in Hugging Face's ``LlamaMLP``:
    ``gate_proj`` (dim -> hidden_dim), ``up_proj`` (dim -> hidden_dim), ``down_proj`` (hidden_dim -> dim).

    ``forward(x)``: x is (..., dim) with any leading dimensions; returns (..., dim) in the parameters' dtype.
    x is not modified.

    Example::

        >>> SwiGLU(8, 16)(torch.zeros(2, 5, 8)).shape
        torch.Size([2, 5, 8])
    """

    def __init__(self, dim: int, hidden_dim: int) -> None:
        # TODO(w17_architectures.SwiGLU): write your implementation here.
        raise NotImplementedError("w17_architectures.SwiGLU.__init__ is not implemented yet (try `kata hint w17_architectures.SwiGLU`)")

    def forward(self, x: Tensor) -> Tensor:
        # TODO(w17_architectures.SwiGLU): write your implementation here.
        raise NotImplementedError("w17_architectures.SwiGLU.forward is not implemented yet (try `kata hint w17_architectures.SwiGLU`)")


# --------------------------------------------------------------------------------------------------
# GroupedQueryAttention


class GroupedQueryAttention(nn.Module):
    """Causal multi-head attention with grouped key/value heads (GQA: Llama 2 70B, Llama 3, Mistral).

    ``num_heads`` query heads share ``num_kv_heads`` key/value heads: each group of
    ``group = num_heads // num_kv_heads`` CONSECUTIVE query heads uses one kv head, so query head h uses kv
    head ``h // group`` (heads 0, 1 -> kv 0; heads 2, 3 -> kv 1 for group = 2). ``num_kv_heads = num_heads``
    is ordinary multi-head attention; ``num_kv_heads = 1`` is multi-query attention. Fewer kv heads make the
    KV cache ``group`` times smaller.

    Layout (Hugging Face's names), all ``nn.Linear`` WITHOUT biases, head_dim = embed_dim // num_heads:
    ``q_proj`` (E -> num_heads * head_dim), ``k_proj`` and ``v_proj`` (E -> num_kv_heads * head_dim),
    ``o_proj`` (num_heads * head_dim -> E). A head's features are contiguous in each projection (head h is
    features ``h * head_dim`` to ``(h + 1) * head_dim``). ``embed_dim`` not divisible by ``num_heads``, or
    ``num_heads`` not divisible by ``num_kv_heads``, is a ``ValueError`` naming both numbers.

    ``forward(x)``: x is (B, T, E); causal attention (query i sees keys 0..i) with scale 1 / sqrt(head_dim),
    heads merged back and ``o_proj``. Returns (B, T, E). Equals ordinary multi-head attention whose key and
    value weights repeat each kv head ``group`` times in place (``repeat_interleave``, not ``repeat``).

    Example::

        >>> attn = GroupedQueryAttention(embed_dim=16, num_heads=4, num_kv_heads=2)
        >>> attn.k_proj.weight.shape, attn(torch.zeros(1, 3, 16)).shape
        (torch.Size([8, 16]), torch.Size([1, 3, 16]))
    """

    def __init__(self, embed_dim: int, num_heads: int, num_kv_heads: int) -> None:
        # TODO(w17_architectures.GroupedQueryAttention): write your implementation here.
        raise NotImplementedError("w17_architectures.GroupedQueryAttention.__init__ is not implemented yet (try `kata hint w17_architectures.GroupedQueryAttention`)")

    def forward(self, x: Tensor) -> Tensor:
        # TODO(w17_architectures.GroupedQueryAttention): write your implementation here.
        raise NotImplementedError("w17_architectures.GroupedQueryAttention.forward is not implemented yet (try `kata hint w17_architectures.GroupedQueryAttention`)")


# --------------------------------------------------------------------------------------------------
# chinchilla_optimal, fit_power_law, plot_scaling


def chinchilla_optimal(compute_flops: float) -> tuple[float, float]:
    """The compute-optimal model size and data size for a training budget: ``(n_params, n_tokens)``.

    Training a transformer of N parameters on D tokens costs about C = 6 N D floating-point operations (2 N
    per token forward, 4 N backward). Hoffmann et al. (2022, "Chinchilla") found that for a fixed C the loss is
    lowest with about D = 20 N tokens. Solve both for N and D: ``6 N (20 N) = C``. Returns two floats.
    ``compute_flops`` must be positive and finite (else a ``ValueError`` naming it).

    Example::

        >>> chinchilla_optimal(5.76e23)     # Chinchilla's own budget: about 69 B parameters, 1.4 T tokens
        (69282032302.7551, 1385640646055.102)
    """
    # TODO(w17_architectures.chinchilla_optimal): write your implementation here.
    raise NotImplementedError("w17_architectures.chinchilla_optimal is not implemented yet (try `kata hint w17_architectures.chinchilla_optimal`)")


def fit_power_law(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """Fit ``y = a * x**b`` to measurements and return ``(a, b)``.

    Scaling laws are power laws: loss against parameters, data or compute. A power law is a straight line in
    log-log space, ``log y = log a + b log x``, so fit that line by ordinary least squares on the logarithms
    (natural or base 10: a is the same once you undo the log with the matching exp) - not a curve through the
    raw values, where the largest y would dominate. With noise-free data the fit is exact.

    ``x`` and ``y`` are 1-D sequences (lists, NumPy arrays) of the same length >= 2, positive and finite, with
    at least two different x values; anything else is a ``ValueError`` naming the problem. Returns two
    Python floats. The inputs are not modified.

    Example::

        >>> a, b = fit_power_law([1, 10, 100], [3.0, 0.3, 0.03])     # y = 3 / x
        >>> round(a, 10), round(b, 10)
        (3.0, -1.0)
    """
    # TODO(w17_architectures.fit_power_law): write your implementation here.
    raise NotImplementedError("w17_architectures.fit_power_law is not implemented yet (try `kata hint w17_architectures.fit_power_law`)")


def plot_scaling(x: Sequence[float], y: Sequence[float], fit: tuple[float, float] | None = None):
    """Plot measured (x, y) pairs on log-log axes, with the fitted power law ``a * x**b`` when ``fit=(a, b)``.

    The learning path's "scaling analysis" plotted each model's RANK (0, 1, 2, ...) against its size and
    labelled it quality: a straight line by construction, whatever the models do. Here the y values are
    measurements (a loss, an error rate) and the plot shows them as they are.

    Returns a ``matplotlib.figure.Figure`` (build it with ``matplotlib.figure.Figure()``, not ``pyplot``, so
    no window opens and nothing global is left behind) with one axes whose x and y scales are both ``"log"``.
    The first line of the axes (``ax.lines[0]``) holds the measurements, drawn as markers without a joining line
    (``ax.plot(x, y, "o")``): x data equal to ``x`` and y data equal to ``y``. With ``fit``, a second line holds points of ``a * x**b`` over the range of ``x``. Never call
    ``plt.show()``.

    Example::

        >>> fig = plot_scaling([1e6, 1e7, 1e8], [4.1, 3.5, 3.0], fit=fit_power_law([1e6, 1e7, 1e8], [4.1, 3.5, 3.0]))
        >>> fig.axes[0].get_xscale(), fig.axes[0].get_yscale()
        ('log', 'log')
    """
    # TODO(w17_architectures.fit_power_law): write your implementation here.
    raise NotImplementedError("w17_architectures.plot_scaling is not implemented yet (part of w17_architectures.fit_power_law: try `kata hint w17_architectures.fit_power_law`)")
