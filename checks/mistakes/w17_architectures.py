"""Catalogued mistakes and correct variants for w17_architectures.

- ``@mutant``: a small slip in the reference's own code;
- a function, or a class that subclasses the reference class and overrides one method, so that everything
  else stays right and the check aimed at the mistake is the one that catches it;
- ``@variant``: an unusual but correct implementation that every check must accept.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from checks.harness.catalogue import mistake, mutant, variant
from reference.phase3 import w17_architectures as ref

# --------------------------------------------------------------------------------------------------
# count_gpt2_parameters


@mutant("count_gpt2_parameters",
        "the tied output head is counted again, as if lm_head had its own (V, E) matrix",
        replace={'if not getattr(config, "tie_word_embeddings", True):': "if True:"})
def count_tied_head_twice(): ...


@mutant("count_gpt2_parameters", "the linear layers' biases are left out",
        replace={"+ E * 3 * E + 3 * E": "+ E * 3 * E", "+ E * inner + inner": "+ E * inner"})
def count_without_biases(): ...


@mutant("count_gpt2_parameters", "the learned position embedding wpe (n_positions x n_embd) is left out",
        replace={"V * E + P * E + L": "V * E + L"})
def count_without_positions(): ...


@mutant("count_gpt2_parameters", "n_inner is ignored: the MLP is always taken to be 4 * n_embd wide",
        replace={"config.n_inner if config.n_inner is not None else 4 * E": "4 * E"})
def count_ignores_n_inner(): ...


@mutant("count_gpt2_parameters", "the final LayerNorm ln_f is left out",
        replace={"L * per_layer + 2 * E": "L * per_layer"})
def count_without_final_norm(): ...


@mutant("count_gpt2_parameters", "a LayerNorm is counted as E parameters (its gain) instead of 2E (gain and bias)",
        replace={"2 * E  # ln_1": "E  # ln_1", "+ 2 * E  # ln_2": "+ E  # ln_2"})
def count_layernorm_without_bias(): ...


@mistake("count_gpt2_parameters", "the count is returned as a float (C ** 0.5-style arithmetic), not an int")
def count_as_float(config):
    return float(ref.count_gpt2_parameters(config))


@variant("count_gpt2_parameters", "counts a block as 12 E^2 + 13 E for the standard 4x MLP, as papers write it")
def count_papers_formula(config):
    E, L = config.n_embd, config.n_layer
    inner = config.n_inner or 4 * E
    block = 4 * E * E + 2 * E * inner + inner + 9 * E  # attention 4E^2 + 4E, MLP 2 E inner + inner + E, 2 norms
    head = 0 if getattr(config, "tie_word_embeddings", True) else config.vocab_size * E
    return int((config.vocab_size + config.n_positions) * E + L * block + 2 * E + head)


@mutant("count_gpt2_parameters", "an untied lm_head is counted with a bias of V entries; GPT-2's output head has none",
        replace={"total += V * E  # an untied": "total += V * E + V  # an untied"})
def count_untied_head_with_bias(): ...


@mutant("count_gpt2_parameters", "a config without tie_word_embeddings is taken as untied; the default is True",
        replace={'getattr(config, "tie_word_embeddings", True)': 'getattr(config, "tie_word_embeddings", False)'})
def count_untied_by_default(): ...


@mistake("count_gpt2_parameters", "fills in config.n_inner = 4 * n_embd on the caller's config when it is None")
def count_fills_in_the_config(config):
    if config.n_inner is None:
        config.n_inner = 4 * config.n_embd
    return ref.count_gpt2_parameters(config)


# --------------------------------------------------------------------------------------------------
# GPT2 + load_hf_state_dict


@mutant("MLP", "exact (erf) GELU instead of GPT-2's tanh approximation: close, but not the function GPT-2 uses",
        replace={"self.c_proj(_gelu_tanh(self.c_fc(x)))": "self.c_proj(F.gelu(self.c_fc(x)))"})
def gpt2_exact_gelu(): ...


@mutant("MLP", "ReLU instead of GELU in the MLP",
        replace={"self.c_proj(_gelu_tanh(self.c_fc(x)))": "self.c_proj(F.relu(self.c_fc(x)))"})
def gpt2_relu(): ...


@mutant("MLP", "n_inner is ignored: the MLP is always 4 * n_embd wide",
        replace={"config.n_inner if config.n_inner is not None else 4 * config.n_embd": "4 * config.n_embd"})
def gpt2_ignores_n_inner(): ...


@mutant("Block", "post-norm (x = ln(x + f(x)), the original Transformer's) instead of GPT-2's pre-norm",
        replace={"x = x + self.attn(self.ln_1(x))": "x = self.ln_1(x + self.attn(x))",
                 "return x + self.mlp(self.ln_2(x))": "return self.ln_2(x + self.mlp(x))"})
def gpt2_post_norm(): ...


@mutant("Block", "the LayerNorms ignore config.layer_norm_epsilon and use PyTorch's default 1e-5",
        replace={"nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)": "nn.LayerNorm(config.n_embd)"})
def gpt2_block_default_eps(): ...


@mutant("Block", "the MLP reads the block's input instead of the attention sub-layer's result",
        replace={"x = x + self.attn(self.ln_1(x))": "h = x + self.attn(self.ln_1(x))",
                 "return x + self.mlp(self.ln_2(x))": "return h + self.mlp(self.ln_2(x))"})
def gpt2_residual_from_input(): ...


@mutant("CausalSelfAttention", "heads split with view(B, nh, T, hs), which mixes tokens into heads",
        replace={"t.view(B, T, self.n_head, hs).transpose(1, 2)": "t.reshape(B, self.n_head, T, hs)"})
def gpt2_heads_split_by_view(): ...


@mutant("CausalSelfAttention", "scores scaled by 1/sqrt(n_embd) instead of 1/sqrt(head size)",
        replace={"math.sqrt(hs)": "math.sqrt(E)"})
def gpt2_scale_by_width(): ...


@mutant("CausalSelfAttention", "no causal mask: every token also attends to the tokens after it",
        replace={"scores = scores.masked_fill(~causal, float(\"-inf\"))": "scores = scores"})
def gpt2_not_causal(): ...


@mutant("CausalSelfAttention", "q, k and v taken in the wrong order from c_attn (k first)",
        replace={"q, k, v = self.c_attn(x).split(E, dim=-1)": "k, q, v = self.c_attn(x).split(E, dim=-1)"})
def gpt2_qkv_order(): ...


@mutant("CausalSelfAttention", "the attention dropout uses resid_pdrop instead of attn_pdrop",
        replace={"nn.Dropout(config.attn_pdrop)": "nn.Dropout(config.resid_pdrop)"})
def gpt2_attn_dropout_probability(): ...


@mutant("CausalSelfAttention", "a non-divisible n_embd / n_head is not rejected",
        replace={"if config.n_embd % config.n_head != 0:": "if False:"})
def gpt2_no_head_check(): ...


@mutant("GPT2", "no position embedding is added: the model cannot tell token orders apart",
        replace={"self.transformer.wte(input_ids) + self.transformer.wpe.weight[:T]":
                 "self.transformer.wte(input_ids)"})
def gpt2_without_positions(): ...


@mutant("GPT2", "the final LayerNorm ln_f is skipped before the output head",
        replace={"return self.lm_head(self.transformer.ln_f(x))": "return self.lm_head(x)"})
def gpt2_without_final_norm(): ...


@mutant("GPT2", "the output head is a copy of the embedding, not the same Parameter: the tie is broken",
        replace={"self.lm_head.weight = self.transformer.wte.weight":
                 "self.lm_head.weight.data.copy_(self.transformer.wte.weight.data)"})
def gpt2_untied_head(): ...


@mutant("GPT2", "the residual projections c_proj keep the plain initializer_range instead of / sqrt(2 n_layer)",
        replace={"std=config.initializer_range / math.sqrt(2 * config.n_layer)": "std=config.initializer_range"})
def gpt2_unscaled_residual_init(): ...


@mutant("GPT2", "weights are initialised with a hard-coded std 0.02 instead of config.initializer_range",
        replace={"std=self.config.initializer_range)": "std=0.02)"})
def gpt2_hard_coded_init(): ...


@mutant("GPT2", "a sequence longer than n_positions is not rejected (it crashes inside the embedding)",
        replace={"if T > self.config.n_positions:": "if T > self.config.n_positions + 1:"})
def gpt2_no_length_check(): ...


@mutant("GPT2", "the embedding dropout is skipped",
        replace={"self.transformer.drop(self.transformer.wte(input_ids) + self.transformer.wpe.weight[:T])":
                 "(self.transformer.wte(input_ids) + self.transformer.wpe.weight[:T])"})
def gpt2_no_embedding_dropout(): ...


@mistake("load_hf_state_dict", "transposes a weight only when its shape does not fit, so the square attention "
                               "c_proj (E, E) loads untransposed")
def load_transposes_when_shapes_differ(model, state_dict):
    params = dict(model.named_parameters())
    with torch.no_grad():
        for key, value in state_dict.items():
            if key.endswith((".attn.bias", ".attn.masked_bias")) or key == "lm_head.weight":
                continue
            name = key if key.startswith("transformer.") else f"transformer.{key}"
            if name not in params:
                raise KeyError(name)
            target = params[name]
            if value.shape != target.shape:
                value = value.t()
            target.copy_(value)
    return model


@mistake("load_hf_state_dict", "reshapes the Conv1D weights to nn.Linear's shape instead of transposing them")
def load_reshapes_instead_of_transpose(model, state_dict):
    fixed = {k: (v.reshape(v.shape[1], v.shape[0]).t() if k.endswith(ref._CONV1D) else v)
             for k, v in state_dict.items()}
    return ref.load_hf_state_dict(model, fixed)


@mistake("load_hf_state_dict", "replaces the parameters with the checkpoint's tensors (assign): the model takes "
                               "the file's dtype and lm_head is no longer tied to wte")
def load_assigns_new_parameters(model, state_dict):
    ref.load_hf_state_dict(model, state_dict)
    for key, value in state_dict.items():
        name = key if key.startswith("transformer.") else f"transformer.{key}"
        if name == "transformer.wte.weight":
            model.transformer.wte.weight = nn.Parameter(value.clone())
    return model


@mistake("load_hf_state_dict", "only the transformer.-prefixed keys of GPT2LMHeadModel load; a GPT2Model or hub "
                               "checkpoint's bare keys are silently skipped")
def load_prefixed_keys_only(model, state_dict):
    return _prefixed_only(model, state_dict)


def _prefixed_only(model, state_dict):
    params = dict(model.named_parameters())
    with torch.no_grad():
        for key, value in state_dict.items():
            if key in params:
                params[key].copy_(value.t() if key.endswith(ref._CONV1D) else value)
    return model


@mistake("load_hf_state_dict", "keys that fit nowhere are skipped silently instead of raising a KeyError")
def load_ignores_unknown_keys(model, state_dict):
    params = dict(model.named_parameters())
    kept = {k: v for k, v in state_dict.items()
            if (k if k.startswith("transformer.") else f"transformer.{k}") in params}
    return ref.load_hf_state_dict(model, kept)


@mistake("load_hf_state_dict", "returns None instead of the model")
def load_returns_none(model, state_dict):
    ref.load_hf_state_dict(model, state_dict)


@mistake("load_hf_state_dict", "transposes the Conv1D weights of the caller's state dict in place")
def load_transposes_in_place(model, state_dict):
    for key in list(state_dict):
        if key.endswith(ref._CONV1D):
            state_dict[key] = state_dict[key].t()
    ref.load_hf_state_dict(model, {k: (v.t() if k.endswith(ref._CONV1D) else v) for k, v in state_dict.items()})
    return model


@variant("load_hf_state_dict", "nanoGPT's from_pretrained mapping: walk the checkpoint's keys, transpose the "
                               "listed Conv1D weights, copy_ the rest, checking shapes as it goes")
def load_nanogpt_style(model, state_dict):
    sd = model.state_dict()
    sd_keys = [k for k in sd if not k.endswith(".attn.bias") and k != "lm_head.weight"]
    hf = {(k if k.startswith("transformer.") else "transformer." + k): v for k, v in state_dict.items()
          if not k.endswith((".attn.masked_bias", ".attn.bias")) and k != "lm_head.weight"}
    transposed = ["attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight"]
    for k in sorted(set(hf) | set(sd_keys)):
        if k not in hf or k not in sd:
            raise KeyError(f"mismatched key {k}")
    for k, v in hf.items():  # nanoGPT asserts every shape; here all of them before the first copy
        expected = sd[k].shape[::-1] if any(k.endswith(w) for w in transposed) else sd[k].shape
        if v.shape != expected:
            raise ValueError(f"{k}: {tuple(v.shape)}")
    with torch.no_grad():
        for k, v in hf.items():
            sd[k].copy_(v.t() if any(k.endswith(w) for w in transposed) else v)
    return model


class _NanoAttention(nn.Module):
    """nanoGPT's attention: a causal-mask buffer named bias, sliced to T, and the softmax written out."""

    def __init__(self, config):
        super().__init__()
        if config.n_embd % config.n_head:
            raise ValueError(f"n_embd {config.n_embd} / n_head {config.n_head}")
        self.n_head, self.n_embd = config.n_head, config.n_embd
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd)
        self.attn_dropout = nn.Dropout(config.attn_pdrop)
        self.resid_dropout = nn.Dropout(config.resid_pdrop)
        P = config.n_positions
        self.register_buffer("bias", torch.tril(torch.ones(P, P)).view(1, 1, P, P), persistent=False)

    def forward(self, x):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
        att = att.masked_fill(self.bias[:, :, :T, :T].to(x.device) == 0, float("-inf"))
        att = self.attn_dropout(F.softmax(att, dim=-1))
        y = (att @ v).transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


@variant("CausalSelfAttention", "nanoGPT's attention with a (1, 1, P, P) causal-mask buffer sliced to T")
class NanoCausalSelfAttention(_NanoAttention):
    pass


@variant("MLP", "GELU as an nn.GELU(approximate='tanh') submodule, with the tanh formula written out in float64")
class MLPWithGeluModule(nn.Module):
    def __init__(self, config):
        super().__init__()
        inner = config.n_inner or 4 * config.n_embd
        self.c_fc = nn.Linear(config.n_embd, inner)
        self.gelu = nn.GELU(approximate="tanh")
        self.c_proj = nn.Linear(inner, config.n_embd)
        self.dropout = nn.Dropout(config.resid_pdrop)

    def forward(self, x):
        h = self.c_fc(x)
        h = 0.5 * h * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (h + 0.044715 * h.pow(3))))
        return self.dropout(self.c_proj(h))


@variant("GPT2", "positions added by broadcasting a (1, T) position index, and the head applied as F.linear with "
                 "the embedding matrix")
class GPT2PositionsBroadcast(ref.GPT2):
    def forward(self, input_ids):
        T = input_ids.size(1)
        if T > self.config.n_positions:
            raise ValueError(f"T={T} > n_positions={self.config.n_positions}")
        pos = torch.arange(0, T, dtype=torch.long, device=input_ids.device).unsqueeze(0)
        x = self.transformer.drop(self.transformer.wte(input_ids) + self.transformer.wpe(pos))
        for block in self.transformer.h:
            x = block(x)
        return F.linear(self.transformer.ln_f(x), self.transformer.wte.weight)


@variant("Block", "the residual stream kept in a separate variable, pre-norm as GPT-2")
class BlockExplicit(ref.Block):
    def forward(self, x):
        h = self.attn(self.ln_1(x))
        residual = x + h
        return residual + self.mlp(self.ln_2(residual))


@mutant("GPT2", "the final LayerNorm ln_f ignores config.layer_norm_epsilon (nanoGPT's LayerNorm has a fixed 1e-5)",
        replace={'"ln_f": nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)':
                 '"ln_f": nn.LayerNorm(config.n_embd)'})
def gpt2_final_norm_default_eps(): ...


@mutant("GPT2", "a sequence of exactly n_positions tokens is rejected (T >= n_positions instead of T > n_positions)",
        replace={"if T > self.config.n_positions:": "if T >= self.config.n_positions:"})
def gpt2_longest_sequence_rejected(): ...


@mutant("GPT2", "the position embedding wpe keeps the original TensorFlow GPT-2's std 0.01, not initializer_range",
        replace={"self.apply(self._init_weights)":
                 "self.apply(self._init_weights)\n"
                 "        nn.init.normal_(self.transformer.wpe.weight, mean=0.0, std=0.01)"})
def gpt2_position_init_std(): ...


@mutant("GPT2", "only the attention c_proj gets std initializer_range / sqrt(2 n_layer); the MLP's c_proj does not",
        replace={'if name.endswith("c_proj.weight"):': 'if name.endswith("attn.c_proj.weight"):'})
def gpt2_scaled_init_attention_only(): ...


@mutant("CausalSelfAttention", "dropout on the attention output (weights @ v) instead of on the attention weights",
        replace={"weights = self.attn_dropout(torch.softmax(scores, dim=-1))":
                 "weights = torch.softmax(scores, dim=-1)",
                 "y = (weights @ v).transpose(1, 2)": "y = self.attn_dropout(weights @ v).transpose(1, 2)"})
def gpt2_dropout_after_values(): ...


@mutant("CausalSelfAttention", "the causal mask leaves out the diagonal (tril(-1)): a token cannot see itself, and the "
                               "first token sees nothing at all (a row of -inf, so nan)",
        replace={"dtype=torch.bool, device=x.device).tril()": "dtype=torch.bool, device=x.device).tril(-1)"})
def gpt2_mask_without_diagonal(): ...


@mutant("load_hf_state_dict", "skips the keys ending in 'attn.bias' without the leading dot, so the real weight "
                              "attn.c_attn.bias is skipped too",
        replace={'key.endswith((".attn.bias", ".attn.masked_bias"))':
                 'key.endswith(("attn.bias", "attn.masked_bias"))'})
def load_skips_c_attn_bias(): ...


@mutant("load_hf_state_dict", "param.data = value: the model shares the checkpoint's tensors (and memory) instead of "
                              "holding copies, so training the model rewrites the caller's state dict",
        replace={"ours[name].copy_(value)  # copy_": "ours[name].data = value.to(ours[name].dtype)  # copy_"})
def load_shares_memory(): ...


@mutant("load_hf_state_dict", "turns requires_grad off to copy without torch.no_grad() and never turns it back on",
        replace={"    with torch.no_grad():\n        for name, value in values.items():":
                 "    for p in ours.values():\n        p.requires_grad_(False)\n    if True:\n"
                 "        for name, value in values.items():"})
def load_freezes_parameters(): ...


@variant("CausalSelfAttention", "nanoGPT's flash path: F.scaled_dot_product_attention(is_causal=True) with dropout_p "
                                "while training (on the CPU it draws the same dropout masks as nn.Dropout)")
class SDPACausalSelfAttention(ref.CausalSelfAttention):
    def forward(self, x):
        B, T, E = x.shape
        q, k, v = self.c_attn(x).split(E, dim=2)
        q, k, v = (t.view(B, T, self.n_head, E // self.n_head).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_dropout.p if self.training else 0.0,
                                           is_causal=True)
        return self.resid_dropout(self.c_proj(y.transpose(1, 2).contiguous().view(B, T, E)))


@variant("load_hf_state_dict", "checks keys and shapes itself, then lets nn.Module.load_state_dict(strict=True) copy, "
                               "with lm_head.weight given the values of wte")
def load_via_load_state_dict(model, state_dict):
    conv1d = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
    ours = model.state_dict()  # includes lm_head.weight, the tied tensor under its second name
    wanted = {k for k, _ in model.named_parameters()}
    new = {}
    for key, value in state_dict.items():
        if key.endswith((".attn.bias", ".attn.masked_bias")) or key == "lm_head.weight":
            continue
        name = key if key.startswith("transformer.") else "transformer." + key
        if name not in wanted:
            raise KeyError(f"unexpected key {key}")
        new[name] = value.t() if name.endswith(conv1d) else value
    for name in sorted(wanted - new.keys()):
        raise KeyError(f"missing key {name}")
    for name, value in new.items():
        if value.shape != ours[name].shape:
            raise ValueError(f"{name} has shape {tuple(value.shape)}, want {tuple(ours[name].shape)}")
    new["lm_head.weight"] = new["transformer.wte.weight"]
    model.load_state_dict(new, strict=True)
    return model


# --------------------------------------------------------------------------------------------------
# mlm_mask


@mutant("mlm_mask", "every chosen position becomes mask_id (100% [MASK], no random or unchanged tokens)",
        replace={"to_mask = chosen & (split < 0.8)": "to_mask = chosen"})
def mlm_all_masked(): ...


@mutant("mlm_mask", "labels hold the original token everywhere, not -100 on the positions that were not chosen",
        replace={"labels = torch.where(chosen, input_ids, torch.full_like(input_ids, -100))":
                 "labels = input_ids.clone()"})
def mlm_labels_everywhere(): ...


@mutant("mlm_mask", "special tokens can be chosen too",
        replace={"< prob) & ~special": "< prob)"})
def mlm_specials_chosen(): ...


@mutant("mlm_mask", "prob is ignored: always 15% of the tokens are chosen",
        replace={"< prob)": "< 0.15)"})
def mlm_fixed_rate(): ...


@mutant("mlm_mask", "the random token is drawn from 0 .. vocab_size - 2 (randint's high is exclusive already)",
        replace={"torch.randint(0, vocab_size, input_ids.shape": "torch.randint(0, vocab_size - 1, input_ids.shape"})
def mlm_random_off_by_one(): ...


@mutant("mlm_mask", "80% random / 10% mask: the two thresholds are swapped",
        replace={"to_mask = chosen & (split < 0.8)": "to_mask = chosen & (split >= 0.8) & (split < 0.9)",
                 "to_random = chosen & (split >= 0.8) & (split < 0.9)": "to_random = chosen & (split < 0.8)"})
def mlm_swapped_thresholds(): ...


@mutant("mlm_mask", "the 10% 'unchanged' share is forgotten: 80% mask, 20% random",
        replace={"(split >= 0.8) & (split < 0.9)": "(split >= 0.8)"})
def mlm_no_unchanged(): ...


@mutant("mlm_mask", "labels mark the positions that were not chosen (the mask inverted)",
        replace={"labels = torch.where(chosen, input_ids, torch.full_like(input_ids, -100))":
                 "labels = torch.where(~chosen, input_ids, torch.full_like(input_ids, -100))"})
def mlm_labels_inverted(): ...


@mutant("mlm_mask", "the generator is ignored: the draws come from the global RNG",
        replace={"generator=generator, device=device) < prob": "device=device) < prob"})
def mlm_ignores_generator(): ...


@mutant("mlm_mask", "the random numbers are made on the CPU whatever the device of the ids",
        replace={"torch.rand(input_ids.shape, generator=generator, device=device) < prob":
                 "torch.rand(input_ids.shape, generator=generator) < prob"})
def mlm_draws_on_cpu(): ...


@mutant("mlm_mask", "prob is not validated", replace={"if not 0.0 <= prob <= 1.0:": "if False:"})
def mlm_no_prob_check(): ...


@mutant("mlm_mask", "mask_id is not validated against the vocabulary",
        replace={"if not 0 <= mask_id < vocab_size:": "if False:"})
def mlm_no_mask_id_check(): ...


@mistake("mlm_mask", "masks the caller's input_ids in place and returns them")
def mlm_in_place(input_ids, mask_id, vocab_size, special_ids, prob=0.15, generator=None):
    corrupted, labels = ref.mlm_mask(input_ids, mask_id, vocab_size, special_ids, prob, generator)
    input_ids.copy_(corrupted)
    return input_ids, labels


@variant("mlm_mask", "Hugging Face's DataCollatorForLanguageModeling: Bernoulli draws of 0.8, then 0.5 of the rest")
def mlm_hf_collator(input_ids, mask_id, vocab_size, special_ids, prob=0.15, generator=None):
    if not 0 <= prob <= 1:
        raise ValueError(f"prob {prob}")
    if not 0 <= mask_id < vocab_size:
        raise ValueError(f"mask_id {mask_id}")
    dev = input_ids.device
    probability = torch.full(input_ids.shape, float(prob), dtype=torch.float64, device=dev)
    special = torch.zeros(input_ids.shape, dtype=torch.bool, device=dev)
    for s in list(special_ids):
        special = special | (input_ids == int(s))
    probability = probability.masked_fill(special, 0.0)
    chosen = torch.bernoulli(probability, generator=generator).bool()
    labels = torch.where(chosen, input_ids, -100)
    replaced = torch.bernoulli(torch.full(input_ids.shape, 0.8, device=dev), generator=generator).bool() & chosen
    out = torch.where(replaced, mask_id, input_ids)
    half = torch.bernoulli(torch.full(input_ids.shape, 0.5, device=dev), generator=generator).bool()
    random = half & chosen & ~replaced
    words = torch.randint(vocab_size, input_ids.shape, dtype=input_ids.dtype, generator=generator, device=dev)
    return torch.where(random, words, out), labels


@mutant("mlm_mask", "the random replacement never draws a special token (the docstring includes them, as Hugging "
                    "Face's DataCollatorForLanguageModeling does)",
        replace={"    random_tokens = torch.randint(0, vocab_size, input_ids.shape, generator=generator, "
                 "device=device,\n                                  dtype=input_ids.dtype)":
                 "    skip = [int(s) for s in list(special_ids)]\n"
                 "    allowed = torch.tensor([t for t in range(vocab_size) if t not in skip], device=device,\n"
                 "                           dtype=input_ids.dtype)\n"
                 "    random_tokens = allowed[torch.randint(0, len(allowed), input_ids.shape, generator=generator,\n"
                 "                                          device=device)]"})
def mlm_random_without_specials(): ...


@mutant("mlm_mask", "the random replacement is never the original token (drawn among the other V - 1)",
        replace={"dtype=input_ids.dtype)  # high is exclusive: 0..vocab_size-1":
                 "dtype=input_ids.dtype)  # high is exclusive: 0..vocab_size-1\n"
                 "    random_tokens = (input_ids + torch.randint(1, vocab_size, input_ids.shape, generator=generator,\n"
                 "                                               device=device, dtype=input_ids.dtype)) % vocab_size"})
def mlm_random_never_original(): ...


@mistake("mlm_mask", "chooses exactly round(prob * n) positions, as the original BERT scripts did per sequence, "
                     "instead of choosing each position independently with probability prob")
def mlm_fixed_count(input_ids, mask_id, vocab_size, special_ids, prob=0.15, generator=None):
    if not 0.0 <= prob <= 1.0:
        raise ValueError(f"prob must be in [0, 1], got {prob}")
    if not 0 <= mask_id < vocab_size:
        raise ValueError(f"mask_id={mask_id} is not in the vocabulary")
    device = input_ids.device
    special = torch.zeros_like(input_ids, dtype=torch.bool)
    for token in list(special_ids):
        special = special | (input_ids == token)
    eligible = (~special).reshape(-1).nonzero().flatten()
    pick = eligible[torch.randperm(eligible.numel(), generator=generator, device=device)[:round(prob * len(eligible))]]
    chosen = torch.zeros(input_ids.numel(), dtype=torch.bool, device=device)
    chosen[pick] = True
    chosen = chosen.reshape(input_ids.shape)
    split = torch.rand(input_ids.shape, generator=generator, device=device)
    words = torch.randint(0, vocab_size, input_ids.shape, generator=generator, device=device, dtype=input_ids.dtype)
    out = torch.where(chosen & (split < 0.8), torch.full_like(input_ids, mask_id), input_ids)
    out = torch.where(chosen & (split >= 0.8) & (split < 0.9), words, out)
    return out, torch.where(chosen, input_ids, torch.full_like(input_ids, -100))


@variant("mlm_mask", "one uniform u per position decides everything: chosen when u < prob, then u < 0.8 prob -> "
                     "mask_id and 0.8 prob <= u < 0.9 prob -> a random token")
def mlm_one_uniform(input_ids, mask_id, vocab_size, special_ids, prob=0.15, generator=None):
    if not 0.0 <= prob <= 1.0:
        raise ValueError(f"prob must be in [0, 1], got {prob}")
    if not 0 <= mask_id < vocab_size:
        raise ValueError(f"mask_id={mask_id} out of range")
    device = input_ids.device
    special = torch.isin(input_ids, torch.as_tensor(list(special_ids), dtype=input_ids.dtype, device=device))
    u = torch.rand(input_ids.shape, generator=generator, device=device, dtype=torch.float64)
    chosen = (u < prob) & ~special
    words = torch.randint(vocab_size, input_ids.shape, generator=generator, device=device, dtype=input_ids.dtype)
    out = torch.where(chosen & (u < 0.8 * prob), mask_id, input_ids)
    out = torch.where(chosen & (u >= 0.8 * prob) & (u < 0.9 * prob), words, out)
    return out, torch.where(chosen, input_ids, -100)


# --------------------------------------------------------------------------------------------------
# span_corruption


@mutant("span_corruption", "every span is marked with the same sentinel, so the spans cannot be put back",
        replace={"tokens.new_tensor([sentinel_ids[i]])": "tokens.new_tensor([sentinel_ids[0]])"})
def span_sentinels_reused(): ...


@mutant("span_corruption", "the targets leave out the sentinels, so nothing says which span goes where",
        replace={"targets += [sentinel, tokens[start: start + noise]]": "targets += [tokens[start: start + noise]]"})
def span_targets_without_sentinels(): ...


@mutant("span_corruption", "the kept-span and noise-span lengths are swapped",
        replace={"kept, noise = kept_lengths[i], noise_lengths[i]": "noise, kept = kept_lengths[i], noise_lengths[i]"})
def span_lengths_swapped(): ...


@mutant("span_corruption", "the number of noise tokens is truncated (int) instead of rounded",
        replace={"max(round(n * noise_density), 1)": "max(int(n * noise_density), 1)"})
def span_truncated_noise(): ...


@mutant("span_corruption", "the number of spans ignores mean_span_length: every noise token is its own span",
        replace={"max(1, round(num_noise / mean_span_length))": "num_noise"})
def span_ignores_mean_length(): ...


@mutant("span_corruption", "the span lengths are not random: the cut points are always the first ones",
        replace={"torch.randperm(total - 1, generator=generator)[: num_spans - 1] + 1":
                 "torch.arange(total - 1)[: num_spans - 1] + 1"})
def span_fixed_segmentation(): ...


@mutant("span_corruption", "the generator is ignored: the spans come from the global RNG",
        replace={"torch.randperm(total - 1, generator=generator)": "torch.randperm(total - 1)"})
def span_ignores_generator(): ...


@mutant("span_corruption", "too few sentinel ids are not rejected (zip silently drops the extra spans)",
        replace={"if len(sentinel_ids) < num_spans:": "if False:"})
def span_no_sentinel_count_check(): ...


@mutant("span_corruption", "a noise density of 0 or 1 is accepted",
        replace={"if not 0.0 < noise_density < 1.0:": "if False:"})
def span_no_density_check(): ...


@mutant("span_corruption", "a non-positive mean span length is not rejected",
        replace={"if not mean_span_length > 0:": "if False:"})
def span_no_mean_check(): ...


@mutant("span_corruption", "the spans are not capped by the kept tokens: a span of kept tokens can be empty",
        replace={"num_spans = min(num_spans, num_noise, n - num_noise)": "num_spans = min(num_spans, num_noise)"})
def span_not_capped_by_kept(): ...


@variant("span_corruption", "T5's own formulation: a 0/1 noise mask from interleaved span lengths, then "
                            "sentinels where a noise run starts, in one pass over the tokens")
def span_t5_style(tokens, noise_density, mean_span_length, sentinel_ids, generator):
    if tokens.dim() != 1 or tokens.numel() < 2:
        raise ValueError(f"tokens must be 1-D with >= 2 tokens, got {tuple(tokens.shape)}")
    if not (0 < noise_density < 1):
        raise ValueError(f"noise_density {noise_density}")
    if mean_span_length <= 0:
        raise ValueError(f"mean_span_length {mean_span_length}")
    n = tokens.numel()
    noise = min(max(round(n * noise_density), 1), n - 1)
    spans = min(max(1, round(noise / mean_span_length)), noise, n - noise)
    if len(sentinel_ids) < spans:
        raise ValueError(f"{spans} spans, {len(sentinel_ids)} sentinels")

    def split(total):
        marks = torch.zeros(total - 1, dtype=torch.long)
        marks[torch.randperm(total - 1, generator=generator)[: spans - 1]] = 1
        ids = torch.cat([torch.zeros(1, dtype=torch.long), marks.cumsum(0)])
        return torch.bincount(ids, minlength=spans)

    noise_len, kept_len = split(noise), split(n - noise)
    lengths = torch.stack([kept_len, noise_len], dim=1).reshape(-1)
    is_noise = torch.repeat_interleave(torch.arange(2 * spans) % 2, lengths).bool()
    inputs, targets, span = [], [], -1
    for pos, token in enumerate(tokens.tolist()):
        if is_noise[pos]:
            if pos == 0 or not is_noise[pos - 1]:
                span += 1
                inputs.append(sentinel_ids[span])
                targets.append(sentinel_ids[span])
            targets.append(token)
        else:
            inputs.append(token)
    return (torch.tensor(inputs, dtype=tokens.dtype, device=tokens.device),
            torch.tensor(targets, dtype=tokens.dtype, device=tokens.device))


@mutant("span_corruption", "kept tokens may be left after the last noise span, so inputs can end with a kept token "
                           "(T5 alternates num_spans kept and num_spans noise spans, ending with noise)",
        replace={"    kept_lengths = random_segmentation(n - num_noise)\n":
                 "    kept_lengths = random_segmentation(n - num_noise)\n"
                 "    if kept_lengths[-1] > 1 and int(torch.randint(2, (1,), generator=generator)):\n"
                 "        kept_lengths[-1] -= 1  # one kept token left over, after the last span\n",
                 "    return torch.cat(inputs), torch.cat(targets)":
                 "    inputs.append(tokens[start:])\n    return torch.cat(inputs), torch.cat(targets)"})
def span_ends_with_kept(): ...


@mutant("span_corruption", "the counts are rounded half up (floor(x + 0.5)) instead of with Python's round (half to "
                           "even, as T5's code)",
        replace={"max(round(n * noise_density), 1)": "max(math.floor(n * noise_density + 0.5), 1)",
                 "max(1, round(num_noise / mean_span_length))":
                 "max(1, math.floor(num_noise / mean_span_length + 0.5))"})
def span_round_half_up(): ...


@mutant("span_corruption", "the sentinels are used in reverse order (the last one for the first span)",
        replace={"tokens.new_tensor([sentinel_ids[i]])": "tokens.new_tensor([sentinel_ids[num_spans - 1 - i]])"})
def span_sentinels_reversed(): ...


@variant("span_corruption", "error messages written with {tokens.shape} (torch.Size([2, 3])) and {value:g} (0 for 0.0)")
def span_plain_messages(tokens, noise_density, mean_span_length, sentinel_ids, generator):
    if tokens.dim() != 1:
        raise ValueError(f"tokens must be 1-D, got shape {tokens.shape}")
    if tokens.numel() < 2:
        raise ValueError(f"tokens must hold at least 2 tokens, got {tokens.numel()}")
    if not 0 < noise_density < 1:
        raise ValueError(f"noise_density must be strictly between 0 and 1, got {noise_density:g}")
    if mean_span_length <= 0:
        raise ValueError(f"mean_span_length must be positive, got {mean_span_length:g}")
    return ref.span_corruption(tokens, noise_density, mean_span_length, sentinel_ids, generator)


# --------------------------------------------------------------------------------------------------
# attention_mask_for


@mutant("attention_mask_for", "the prefix is causal too: prefix tokens do not see the later prefix tokens",
        replace={"return causal | (j < prefix_len)": "return causal"})
def mask_prefix_causal(): ...


@mutant("attention_mask_for", "prefix rows see the whole sequence, the tokens after the prefix included",
        replace={"return causal | (j < prefix_len)": "return causal | (i < prefix_len)"})
def mask_prefix_rows_see_all(): ...


@mutant("attention_mask_for", "the prefix is one token longer than prefix_len (<= instead of <)",
        replace={"return causal | (j < prefix_len)": "return causal | (j <= prefix_len)"})
def mask_prefix_off_by_one(): ...


@mutant("attention_mask_for", "the causal mask leaves out the diagonal: a token does not see itself",
        replace={"causal = j <= i": "causal = j < i"})
def mask_causal_without_diagonal(): ...


@mutant("attention_mask_for", "the causal mask is upper-triangular: tokens see the future, not the past",
        replace={"causal = j <= i": "causal = j >= i"})
def mask_causal_transposed(): ...


@mutant("attention_mask_for", "an unknown kind falls back to the causal mask instead of raising",
        replace={'if kind not in ("causal", "bidirectional", "prefix"):': "if False:"})
def mask_unknown_kind_accepted(): ...


@mutant("attention_mask_for", "prefix_len is accepted (and ignored) for the causal and bidirectional kinds",
        replace={'if kind != "prefix" and prefix_len != 0:': "if False:"})
def mask_prefix_len_ignored(): ...


@mutant("attention_mask_for", "a prefix_len beyond t is accepted",
        replace={"if not 0 <= prefix_len <= t:": "if False:"})
def mask_prefix_len_unchecked(): ...


@mistake("attention_mask_for", "returns a float 0/1 mask, which scaled_dot_product_attention would ADD to the scores")
def mask_as_float(kind, t, prefix_len=0):
    return ref.attention_mask_for(kind, t, prefix_len).float()


@variant("attention_mask_for", "built from torch.tril and a block of ones over the prefix columns")
def mask_from_tril(kind, t, prefix_len=0):
    if not isinstance(t, int) or not isinstance(prefix_len, int):
        raise TypeError("t and prefix_len must be ints")
    if t < 0:
        raise ValueError(f"t={t} < 0")
    if kind not in {"causal", "bidirectional", "prefix"}:
        raise ValueError(f"unknown kind {kind!r}")
    if kind != "prefix" and prefix_len:
        raise ValueError(f"prefix_len {prefix_len} needs kind='prefix'")
    if prefix_len < 0 or prefix_len > t:
        raise ValueError(f"prefix_len {prefix_len} not in [0, {t}]")
    if kind == "bidirectional":
        return torch.ones(t, t).bool()
    mask = torch.tril(torch.ones(t, t)).bool()
    mask[:, :prefix_len] = True
    return mask


@mutant("attention_mask_for", "True marks the BLOCKED pairs (the convention of nn.MultiheadAttention's bool "
                              "attn_mask), the inverse of scaled_dot_product_attention's",
        replace={"return causal | (j < prefix_len)": "return ~(causal | (j < prefix_len))",
                 "    return causal\n": "    return ~causal\n",
                 "return torch.ones(t, t, dtype=torch.bool)  # BERT":
                 "return torch.zeros(t, t, dtype=torch.bool)  # BERT"})
def mask_true_means_blocked(): ...


@mutant("attention_mask_for", "t and prefix_len go through int(), which accepts 3.0 (and cuts 3.5 to 3) instead of "
                              "rejecting floats",
        replace={"t, prefix_len = operator.index(t), operator.index(prefix_len)":
                 "t, prefix_len = int(t), int(prefix_len)"})
def mask_int_accepts_floats(): ...


@variant("attention_mask_for", "NumPy's tri with the prefix columns set, converted with torch.from_numpy")
def mask_from_numpy(kind, t, prefix_len=0):
    import operator

    import numpy as np

    t, prefix_len = operator.index(t), operator.index(prefix_len)
    if kind not in {"causal", "bidirectional", "prefix"}:
        raise ValueError(f"unknown kind {kind!r}")
    if t < 0 or (kind != "prefix" and prefix_len) or not 0 <= prefix_len <= t:
        raise ValueError(f"bad sizes: t={t}, prefix_len={prefix_len}")
    m = np.ones((t, t), dtype=bool) if kind == "bidirectional" else np.tri(t, dtype=bool)
    m[:, :prefix_len] = True
    return torch.from_numpy(m)


@variant("attention_mask_for", "the prefix as a square block: causal, or both i and j inside the prefix")
def mask_prefix_block(kind, t, prefix_len=0):
    mask = ref.attention_mask_for("causal", t) if kind == "prefix" else ref.attention_mask_for(kind, t, prefix_len)
    if kind == "prefix":
        ref.attention_mask_for(kind, t, prefix_len)  # the same validation
        inside = torch.arange(t) < prefix_len
        mask = mask | (inside[:, None] & inside[None, :])  # later rows see the prefix through j <= i already
    return mask


# --------------------------------------------------------------------------------------------------
# RMSNorm


@mutant("RMSNorm", "the mean is subtracted first: that is LayerNorm (without bias), not RMSNorm",
        replace={"inv_rms = torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + self.eps)":
                 "inv_rms = torch.rsqrt(x.var(dim=-1, keepdim=True, unbiased=False) + self.eps)\n"
                 "        x = x - x.mean(dim=-1, keepdim=True)"})
def rms_is_layernorm(): ...


@mutant("RMSNorm", "eps is added outside the square root: x / (sqrt(mean(x^2)) + eps)",
        replace={"inv_rms = torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + self.eps)":
                 "inv_rms = 1 / (x.pow(2).mean(dim=-1, keepdim=True).sqrt() + self.eps)"})
def rms_eps_outside_sqrt(): ...


@mutant("RMSNorm", "the squares are summed instead of averaged", replace={"x.pow(2).mean(": "x.pow(2).sum("})
def rms_sum_not_mean(): ...


@mutant("RMSNorm", "the mean runs over the first axis instead of the last",
        replace={"x.pow(2).mean(dim=-1, keepdim=True)": "x.pow(2).mean(dim=0, keepdim=True)"})
def rms_wrong_axis(): ...


@mutant("RMSNorm", "the learned gain weight is never applied",
        replace={"return x * inv_rms * self.weight": "return x * inv_rms"})
def rms_without_weight(): ...


@mutant("RMSNorm", "the default eps is torch's LayerNorm default 1e-5 instead of Llama's 1e-6",
        replace={"eps: float = 1e-6": "eps: float = 1e-5"})
def rms_default_eps(): ...


@mutant("RMSNorm", "eps is ignored (hard-coded 1e-6)", replace={"+ self.eps)": "+ 1e-6)"})
def rms_ignores_eps(): ...


@mistake("RMSNorm", "has a bias like LayerNorm: an extra parameter that trains")
class RMSNormWithBias(ref.RMSNorm):
    def __init__(self, dim, eps=1e-6):
        super().__init__(dim, eps)
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x):
        return super().forward(x) + self.bias


@variant("RMSNorm", "computes in float32 at least (as Llama does), dividing by the norm / sqrt(dim)")
class RMSNormViaNorm(nn.Module):
    def __init__(self, dim, eps=1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        work = torch.promote_types(x.dtype, torch.float32)
        h = x.to(work)
        d = h.shape[-1]
        rms = torch.sqrt(torch.linalg.vector_norm(h, dim=-1, keepdim=True) ** 2 / d + self.eps)
        return (self.weight.to(work) * (h / rms)).to(torch.promote_types(x.dtype, self.weight.dtype))


@mutant("RMSNorm", "eps is kept as self.variance_epsilon (Hugging Face's LlamaRMSNorm name) instead of self.eps",
        replace={"self.eps = eps": "self.variance_epsilon = eps", "+ self.eps)": "+ self.variance_epsilon)"})
def rms_eps_named_variance_epsilon(): ...


@mutant("RMSNorm", "always normalises in float32 (as Hugging Face's LlamaRMSNorm does), so a float64 input loses "
                   "precision",
        replace={"        inv_rms = torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + self.eps)\n"
                 "        return x * inv_rms * self.weight":
                 "        h = x.float()\n"
                 "        inv_rms = torch.rsqrt(h.pow(2).mean(dim=-1, keepdim=True) + self.eps)\n"
                 "        return (h * inv_rms).to(x.dtype) * self.weight"})
def rms_in_float32(): ...


@mistake("RMSNorm", "Gemma's convention: the weight starts at zeros and the output is scaled by 1 + weight")
class RMSNormGemma(ref.RMSNorm):
    def __init__(self, dim, eps=1e-6):
        super().__init__(dim, eps)
        self.weight = nn.Parameter(torch.zeros(dim))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * (1.0 + self.weight)


@variant("RMSNorm", "torch's own nn.RMSNorm, subclassed with Llama's default eps")
class RMSNormFromTorch(nn.RMSNorm):
    def __init__(self, dim, eps=1e-6):
        super().__init__(dim, eps=eps)


@variant("RMSNorm", "F.rms_norm with the module's weight and eps")
class RMSNormFunctional(ref.RMSNorm):
    def forward(self, x):
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


# --------------------------------------------------------------------------------------------------
# apply_rotary


@mutant("apply_rotary", "pairs neighbouring features (0, 1), (2, 3) ... (the paper's interleaved layout) instead of "
                        "feature i with i + D/2 as Llama's rotate_half does",
        replace={"first, second = x[..., : D // 2], x[..., D // 2:]": "first, second = x[..., 0::2], x[..., 1::2]",
                 "rotated_half = torch.cat([-second, first], dim=-1)":
                 "rotated_half = torch.stack([-second, first], dim=-1).flatten(-2)",
                 "angles = torch.cat([angles, angles], dim=-1)": "angles = angles.repeat_interleave(2, dim=-1)"})
def rope_interleaved_pairs(): ...


@mutant("apply_rotary", "the second half is rotated the wrong way: cat([x2, -x1]) instead of cat([-x2, x1])",
        replace={"torch.cat([-second, first], dim=-1)": "torch.cat([second, -first], dim=-1)"})
def rope_wrong_direction(): ...


@mutant("apply_rotary", "the frequencies use base^(-i/D) instead of base^(-2i/D)",
        replace={"torch.arange(0, D, 2, dtype=torch.float64, device=x.device) / D":
                 "torch.arange(0, D // 2, dtype=torch.float64, device=x.device) / D"})
def rope_wrong_exponent(): ...


@mutant("apply_rotary", "the positions argument is ignored: always 0, 1, ..., T-1",
        replace={"angles = positions[..., None] * inv_freq":
                 "angles = torch.arange(x.shape[-2], device=x.device)[:, None] * inv_freq"})
def rope_ignores_positions(): ...


@mutant("apply_rotary", "base is ignored (always 10000)", replace={"inv_freq = base **": "inv_freq = 10000.0 **"})
def rope_ignores_base(): ...


@mutant("apply_rotary", "the angles are computed in float32, so large positions drift by ~1e-3 rad",
        replace={"dtype=torch.float64, device=x.device) / D": "dtype=torch.float32, device=x.device) / D"})
def rope_float32_angles(): ...


@mutant("apply_rotary", "the frequency table is built on the CPU whatever x's device",
        replace={"dtype=torch.float64, device=x.device) / D": "dtype=torch.float64) / D"})
def rope_on_cpu(): ...


@mutant("apply_rotary", "the result is returned in float64 whatever x's dtype",
        replace={"cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)":
                 "cos, sin = angles.cos(), angles.sin()"})
def rope_keeps_float64(): ...


@mutant("apply_rotary", "an odd last dimension is not rejected", replace={"if D % 2:": "if False:"})
def rope_no_odd_check(): ...


@variant("apply_rotary", "complex numbers, as Meta's Llama code: each (x_i, x_{i+D/2}) pair times exp(i angle)")
def rope_complex(x, positions, base=10000.0):
    D = x.shape[-1]
    if D % 2:
        raise ValueError(f"D={D} must be even")
    freqs = 1.0 / (base ** (torch.arange(0, D, 2, dtype=torch.float64, device=x.device) / D))
    angles = torch.outer(positions.reshape(-1).to(x.device, torch.float64), freqs).reshape(*positions.shape, D // 2)
    rot = torch.polar(torch.ones_like(angles), angles)
    z = torch.complex(x[..., : D // 2].to(torch.float64), x[..., D // 2:].to(torch.float64)) * rot
    return torch.cat([z.real, z.imag], dim=-1).to(x.dtype)


@mutant("apply_rotary", "the frequencies are made in x's dtype, so float32 queries get float32 angles (off by ~1e-3 "
                        "rad near position 100,000)",
        replace={"dtype=torch.float64, device=x.device) / D": "dtype=x.dtype, device=x.device) / D"})
def rope_angles_in_x_dtype(): ...


@variant("apply_rotary", "everything in float64 (x too), the result cast back to x's dtype at the end")
def rope_all_float64(x, positions, base=10000.0):
    D = x.shape[-1]
    if D % 2:
        raise ValueError(f"D={D} is odd")
    inv = base ** (-torch.arange(0, D, 2, dtype=torch.float64, device=x.device) / D)
    angles = positions.to(torch.float64)[..., None] * inv
    cos, sin = torch.cat([angles.cos()] * 2, -1), torch.cat([angles.sin()] * 2, -1)
    h = x.to(torch.float64)
    rotated = torch.cat([-h[..., D // 2:], h[..., : D // 2]], dim=-1)
    return (h * cos + rotated * sin).to(x.dtype)


# --------------------------------------------------------------------------------------------------
# SwiGLU


@mutant("SwiGLU", "SiLU is applied to the up branch instead of the gate branch",
        replace={"F.silu(self.gate_proj(x)) * self.up_proj(x)": "self.gate_proj(x) * F.silu(self.up_proj(x))"})
def swiglu_silu_on_up(): ...


@mutant("SwiGLU", "GELU instead of SiLU (that is GEGLU)",
        replace={"F.silu(self.gate_proj(x))": "F.gelu(self.gate_proj(x))"})
def swiglu_gelu(): ...


@mutant("SwiGLU", "a plain sigmoid gate (GLU) instead of SiLU = x * sigmoid(x)",
        replace={"F.silu(self.gate_proj(x))": "torch.sigmoid(self.gate_proj(x))"})
def swiglu_sigmoid(): ...


@mutant("SwiGLU", "the projections have biases (Llama's have none)",
        replace={"nn.Linear(dim, hidden_dim, bias=False)": "nn.Linear(dim, hidden_dim)"})
def swiglu_with_bias(): ...


@mutant("SwiGLU", "the gate and up projections are added instead of multiplied",
        replace={"F.silu(self.gate_proj(x)) * self.up_proj(x)": "F.silu(self.gate_proj(x)) + self.up_proj(x)"})
def swiglu_added(): ...


@variant("SwiGLU", "one fused (2 hidden, dim) product split in two, with the weights still held by the three layers")
class SwiGLUFused(ref.SwiGLU):
    def forward(self, x):
        fused = torch.cat([self.gate_proj.weight, self.up_proj.weight], dim=0)
        gate, up = F.linear(x, fused).chunk(2, dim=-1)
        return F.linear(gate * torch.sigmoid(gate) * up, self.down_proj.weight)


@mutant("SwiGLU", "SiLU is applied to the product of the two branches instead of to the gate branch alone",
        replace={"F.silu(self.gate_proj(x)) * self.up_proj(x)": "F.silu(self.gate_proj(x) * self.up_proj(x))"})
def swiglu_silu_of_product(): ...


@mutant("SwiGLU", "hidden_dim is shrunk to 2/3 as in Meta's Llama code; here hidden_dim is the width itself",
        replace={"        self.gate_proj = nn.Linear(dim, hidden_dim, bias=False)":
                 "        hidden_dim = int(2 * hidden_dim / 3)\n"
                 "        self.gate_proj = nn.Linear(dim, hidden_dim, bias=False)"})
def swiglu_two_thirds(): ...


@mutant("SwiGLU", "ReLU instead of SiLU on the gate branch (that is ReGLU)",
        replace={"F.silu(self.gate_proj(x))": "F.relu(self.gate_proj(x))"})
def swiglu_relu(): ...


@variant("SwiGLU", "the activation as an nn.SiLU submodule (no parameters)")
class SwiGLUWithModule(ref.SwiGLU):
    def __init__(self, dim, hidden_dim):
        super().__init__(dim, hidden_dim)
        self.act_fn = nn.SiLU()

    def forward(self, x):
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


# --------------------------------------------------------------------------------------------------
# GroupedQueryAttention


@mutant("GroupedQueryAttention", "the kv heads are tiled (0 1 0 1, repeat) instead of repeated in place "
                                 "(0 0 1 1, repeat_interleave): query heads use the wrong kv head",
        replace={"k = k.repeat_interleave(group, dim=1)": "k = k.repeat(1, group, 1, 1)",
                 "v = v.repeat_interleave(group, dim=1)": "v = v.repeat(1, group, 1, 1)"})
def gqa_repeat_wrong_order(): ...


@mutant("GroupedQueryAttention", "scaled by 1/sqrt(embed_dim) instead of 1/sqrt(head_dim)",
        replace={"/ math.sqrt(hd)": "/ math.sqrt(hd * self.num_heads)"})
def gqa_wrong_scale(): ...


@mutant("GroupedQueryAttention", "not causal: every token attends to the later ones too",
        replace={"scores.masked_fill(~causal, float(\"-inf\"))": "scores"})
def gqa_not_causal(): ...


@mutant("GroupedQueryAttention", "heads are split with view(B, H, T, hd), which mixes tokens into heads",
        replace={"q = self.q_proj(x).view(B, T, self.num_heads, hd).transpose(1, 2)":
                 "q = self.q_proj(x).reshape(B, self.num_heads, T, hd)"})
def gqa_heads_by_view(): ...


@mutant("GroupedQueryAttention", "the projections have biases", replace={"bias=False)  # fewer": "bias=True)  # fewer"})
def gqa_with_bias(): ...


@mutant("GroupedQueryAttention", "num_heads not divisible by num_kv_heads is not rejected",
        replace={"if num_heads % num_kv_heads:": "if False:"})
def gqa_no_group_check(): ...


@mutant("GroupedQueryAttention", "the causal mask is built on the CPU whatever x's device",
        replace={"dtype=torch.bool, device=x.device).tril()": "dtype=torch.bool).tril()"})
def gqa_mask_on_cpu(): ...


@variant("GroupedQueryAttention", "queries grouped as (B, KV, group, T, hd) so each kv head broadcasts over its group, "
                                  "no copies of K and V")
class GQABroadcast(ref.GroupedQueryAttention):
    def forward(self, x):
        B, T, E = x.shape
        kv, hd = self.num_kv_heads, self.head_dim
        group = self.num_heads // kv
        q = self.q_proj(x).view(B, T, kv, group, hd).permute(0, 2, 3, 1, 4)  # (B, KV, G, T, hd)
        k = self.k_proj(x).view(B, T, kv, hd).transpose(1, 2)[:, :, None]  # (B, KV, 1, T, hd)
        v = self.v_proj(x).view(B, T, kv, hd).transpose(1, 2)[:, :, None]
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # broadcasts over the group axis
        return self.o_proj(y.permute(0, 3, 1, 2, 4).reshape(B, T, self.num_heads * hd))


@mutant("GroupedQueryAttention", "scaled by 1/sqrt(num_kv_heads * head_dim), the width of k_proj, instead of "
                                 "1/sqrt(head_dim)",
        replace={"/ math.sqrt(hd)": "/ math.sqrt(hd * self.num_kv_heads)"})
def gqa_scale_by_kv_width(): ...


@mutant("GroupedQueryAttention", "the softmax runs over the queries (dim=-2) instead of the keys",
        replace={'weights = torch.softmax(scores.masked_fill(~causal, float("-inf")), dim=-1)':
                 'weights = torch.softmax(scores.masked_fill(~causal, float("-inf")), dim=-2).nan_to_num()'})
def gqa_softmax_over_queries(): ...


@variant("GroupedQueryAttention", "Hugging Face's repeat_kv: each kv head expanded to (B, KV, group, T, hd), reshaped")
class GQARepeatKV(ref.GroupedQueryAttention):
    def forward(self, x):
        B, T, _ = x.shape
        kv, hd = self.num_kv_heads, self.head_dim
        group = self.num_heads // kv
        q = self.q_proj(x).view(B, T, self.num_heads, hd).transpose(1, 2)
        k, v = (p(x).view(B, T, kv, hd).transpose(1, 2)[:, :, None].expand(B, kv, group, T, hd)
                .reshape(B, kv * group, T, hd) for p in (self.k_proj, self.v_proj))
        scores = (q @ k.transpose(-2, -1)) * hd**-0.5
        scores = scores.masked_fill(torch.triu(torch.ones(T, T, dtype=torch.bool, device=x.device), 1),
                                    torch.finfo(scores.dtype).min)
        y = torch.softmax(scores, dim=-1) @ v
        return self.o_proj(y.transpose(1, 2).reshape(B, T, -1))


@variant("GroupedQueryAttention", "F.scaled_dot_product_attention with enable_gqa=True on the un-repeated K and V")
class GQASDPA(ref.GroupedQueryAttention):
    def forward(self, x):
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(B, T, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.num_kv_heads, self.head_dim).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, self.num_heads * self.head_dim))


# --------------------------------------------------------------------------------------------------
# chinchilla_optimal, fit_power_law, plot_scaling


@mutant("chinchilla_optimal", "the 6 of C = 6ND is forgotten: N = sqrt(C / 20)",
        replace={"math.sqrt(compute_flops / 120.0)": "math.sqrt(compute_flops / 20.0)"})
def chinchilla_without_six(): ...


@mutant("chinchilla_optimal", "returns (n_tokens, n_params) swapped",
        replace={"return n_params, 20.0 * n_params": "return 20.0 * n_params, n_params"})
def chinchilla_swapped(): ...


@mutant("chinchilla_optimal", "takes N = C / 120 (no square root)",
        replace={"math.sqrt(compute_flops / 120.0)": "compute_flops / 120.0"})
def chinchilla_no_sqrt(): ...


@mutant("chinchilla_optimal", "a zero or negative budget is not rejected",
        replace={"if not math.isfinite(compute_flops) or compute_flops <= 0:": "if not math.isfinite(compute_flops):"})
def chinchilla_negative_accepted(): ...


@variant("chinchilla_optimal", "solves through logarithms: log N = (log C - log 120) / 2")
def chinchilla_logs(compute_flops):
    if not (compute_flops > 0 and math.isfinite(compute_flops)):
        raise ValueError(f"compute_flops={compute_flops}")
    n = math.exp(0.5 * (math.log(compute_flops) - math.log(6 * 20)))
    return n, compute_flops / (6 * n)


@mistake("fit_power_law", "fits a straight line to the raw values (np.polyfit(x, y, 1)) instead of their logarithms")
def fit_in_linear_space(x, y):
    import numpy as np

    ref.fit_power_law(x, y)  # the same validation
    b, a = np.polyfit(np.asarray(x, float), np.asarray(y, float), 1)
    return float(a), float(b)


@mutant("fit_power_law", "the intercept is undone with 10**, but the logs were natural logs",
        replace={"a = float(np.exp(ly.mean() - b * lx.mean()))": "a = float(10 ** (ly.mean() - b * lx.mean()))"})
def fit_mixed_log_bases(): ...


@mutant("fit_power_law", "returns (b, a) instead of (a, b)", replace={"return a, b": "return b, a"})
def fit_swapped(): ...


@mutant("fit_power_law", "the slope is divided by the spread of log y instead of that of log x",
        replace={"np.sum(dx * ly) / np.sum(dx * dx)": "np.sum(dx * ly) / np.sum((ly - ly.mean()) ** 2)"})
def fit_axes_swapped(): ...


@mutant("fit_power_law", "non-positive values are not rejected (log gives nan)",
        replace={"np.all(x > 0) and np.all(y > 0) and ": ""})
def fit_no_positivity_check(): ...


@mutant("fit_power_law", "returns NumPy floats instead of Python floats",
        replace={"b = float(np.sum(": "b = (np.sum(", "a = float(np.exp(": "a = (np.exp("})
def fit_numpy_floats(): ...


@variant("fit_power_law", "np.linalg.lstsq on the design matrix [1, log10 x], undone with 10**")
def fit_lstsq_log10(x, y):
    import numpy as np

    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.ndim != 1 or x.shape != y.shape or len(x) < 2:
        raise ValueError("x and y need the same length >= 2")
    if (x <= 0).any() or (y <= 0).any() or not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("x and y must be positive and finite")
    if np.unique(x).size < 2:
        raise ValueError(f"x has one value {x[0]}")
    A = np.stack([np.ones_like(x), np.log10(x)], axis=1)
    (c, b), *_ = np.linalg.lstsq(A, np.log10(y), rcond=None)
    return float(10**c), float(b)


@mistake("plot_scaling", "the learning path's plot: model rank (0, 1, 2, ...) on the y axis as 'quality'")
def plot_rank_as_quality(x, y, fit=None):
    from matplotlib.figure import Figure

    fig = Figure()
    ax = fig.add_subplot()
    ax.loglog(x, range(len(x)), "bo-")
    if fit is not None:
        ax.plot(x, [fit[0] * v ** fit[1] for v in x])
    return fig


@mutant("plot_scaling", "linear y axis: the power law shows as a curve", replace={'ax.set_yscale("log")': "pass"})
def plot_linear_y(): ...


@mutant("plot_scaling", "the fit is drawn as a*b^x instead of a*x^b",
        replace={"a * grid**b": "a * b**grid"})
def plot_wrong_fit_formula(): ...


@mutant("plot_scaling", "the fitted line is drawn even without a fit (with a=1, b=1)",
        replace={"if fit is not None:\n        a, b = fit": "if True:\n        a, b = fit or (1.0, 1.0)"})
def plot_fit_always(): ...


@variant("plot_scaling", "ax.loglog for both lines, the fit sampled at the measured x values, a figure legend")
def plot_loglog(x, y, fit=None):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 4))
    ax = fig.subplots()
    ax.loglog(list(x), list(y), "s")
    if fit:
        ax.loglog(list(x), [fit[0] * v ** fit[1] for v in x], "--")
    fig.legend(["data"] + (["fit"] if fit else []))
    return fig


@mutant("plot_scaling", "the measurements are joined by a line, as if they were a curve rather than separate runs",
        replace={'ax.plot(x, y, "o")': 'ax.plot(x, y, "o-")'})
def plot_joined_measurements(): ...


@mutant("chinchilla_optimal", "rounds N and D to whole numbers",
        replace={"return n_params, 20.0 * n_params": "return round(n_params), round(20.0 * n_params)"})
def chinchilla_rounded(): ...


@mistake("chinchilla_optimal", "returns a NumPy array [N, D] instead of a tuple of two floats")
def chinchilla_as_array(compute_flops):
    import numpy as np

    return np.array(ref.chinchilla_optimal(compute_flops))


@variant("chinchilla_optimal", "NumPy arithmetic (np.float64 results) and an error message written with {:g}")
def chinchilla_numpy(compute_flops):
    import numpy as np

    if not (np.isfinite(compute_flops) and compute_flops > 0):
        raise ValueError(f"the compute budget must be positive and finite, got {compute_flops:g}")
    n = np.sqrt(np.float64(compute_flops) / (6 * 20))
    return n, 20 * n


@mutant("fit_power_law", "repeated x values are rejected, though several runs of one model size are legal",
        replace={"    if np.ptp(lx) == 0:":
                 "    if np.unique(x).size != x.size:\n"
                 '        raise ValueError(f"x has repeated values: {x}")\n'
                 "    if np.ptp(lx) == 0:"})
def fit_rejects_repeated_x(): ...


@mutant("fit_power_law", "x and y are sorted separately, which breaks the (x, y) pairs",
        replace={"lx, ly = np.log(x), np.log(y)": "lx, ly = np.sort(np.log(x)), np.sort(np.log(y))"})
def fit_sorts_separately(): ...


@mistake("fit_power_law", "takes the logarithms in place (np.log(x, out=x)), overwriting the caller's float64 arrays")
def fit_logs_in_place(x, y):
    import numpy as np

    xa, ya = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    a, b = ref.fit_power_law(xa.copy(), ya.copy())
    np.log(xa, out=xa)
    np.log(ya, out=ya)
    return a, b


@mutant("plot_scaling", "builds the figure with pyplot (plt.subplots), which keeps it open globally",
        replace={"    fig = Figure()\n    ax = fig.add_subplot()":
                 "    import matplotlib.pyplot as plt\n\n    fig, ax = plt.subplots()"})
def plot_with_pyplot(): ...


@mistake("plot_scaling", "sorts the caller's x and y lists in place before plotting")
def plot_sorts_in_place(x, y, fit=None):
    order = sorted(range(len(x)), key=lambda i: x[i])
    x[:], y[:] = [x[i] for i in order], [y[i] for i in order]
    return ref.plot_scaling(x, y, fit=fit)


@mutant("plot_scaling", "the fitted line runs a decade beyond the measured x on each side",
        replace={"grid = np.geomspace(min(x), max(x))": "grid = np.geomspace(min(x) / 10, max(x) * 10)"})
def plot_fit_beyond_the_data(): ...


@variant("plot_scaling", "the points sorted by x on a copy, both lines drawn with Axes.loglog, the fit over a linspace")
def plot_sorted_copy(x, y, fit=None):
    import numpy as np
    from matplotlib.figure import Figure

    pts = sorted(zip(x, y, strict=True))
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    fig = Figure()
    ax = fig.add_subplot()
    ax.loglog(xs, ys, marker="x", linestyle="none")
    if fit is not None:
        grid = np.linspace(xs[0], xs[-1], 200)
        ax.loglog(grid, fit[0] * grid ** fit[1], color="k")
    return fig
