"""Catalogued mistakes and correct variants for w23_deployment.

Three kinds of entries, each the simplest way to state its mistake:

- ``@mutant``: a small edit of the reference's own code (a dropped shift, ``ge`` for ``gt``, a missing
  ``finally``); the server's mistakes are mostly mutants, so that everything else in the app stays right;
- a function or a subclass of the reference class with one thing wrong;
- ``@variant``: an unusual but correct implementation, in another style than the reference, that every
  check must accept (the proof that the checks do not over-fit the reference).
"""

# No ``from __future__ import annotations``: the apps below define FastAPI request models inside functions,
# which FastAPI can only see when the endpoints' type hints are real classes.

import math
import re
import threading
from collections import Counter

import torch
import torch.nn.functional as F
from torch import nn

from checks.harness.catalogue import mistake, mutant, variant
from reference.phase3.w23_deployment import (
    MAX_NEW_TOKENS,
    MAX_PROMPT_CHARS,
    QuantizedLinear,
    batch_generate,
    content_filter,
    corpus_bleu,
    create_demo,
    quantize_int8,
)

# --------------------------------------------------------------------------------------------------
# evaluate_model


@mutant("evaluate_model",
        "the labels are not shifted (the learning path's bug): position t's logits are compared with token t "
        "instead of token t + 1, so the model is graded on copying its input",
        replace={"logits = _logits(output)[:, :-1]": "logits = _logits(output)", "targets = labels[:, 1:]":
                 "targets = labels"})
def eval_no_shift(): ...


@mutant("evaluate_model",
        "each batch is weighted by labels.numel() (the learning path's bug), which counts the -100 padding the loss "
        "ignores",
        replace={"total_tokens += int((targets != IGNORE_INDEX).sum())": "total_tokens += targets.numel()"})
def eval_counts_padding(): ...


@mistake("evaluate_model", "the perplexity is the mean of per-batch mean losses, so a batch of 1 token weighs as "
                           "much as a batch of 1000 (not token-weighted)")
def eval_averages_batches(model, loader):
    was_training = model.training
    model.eval()
    losses = []
    try:
        with torch.no_grad():
            for batch in loader:
                output = model(batch["input_ids"], attention_mask=batch.get("attention_mask"))
                logits = output if isinstance(output, torch.Tensor) else output.logits
                losses.append(F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).double(),
                                              batch["labels"][:, 1:].reshape(-1)).item())
    finally:
        model.train(was_training)
    return math.exp(sum(losses) / len(losses))


@mutant("evaluate_model", "the attention mask is not passed to the model, so real tokens attend to left padding",
        replace={'model(input_ids, attention_mask=batch.get("attention_mask"))': "model(input_ids)"})
def eval_ignores_attention_mask(): ...


@mutant("evaluate_model", "the model is not put in eval mode, so dropout makes the perplexity random",
        replace={"model.eval()  # dropout off": "pass  # dropout off"})
def eval_keeps_dropout(): ...


@mutant("evaluate_model", "the model is left in eval mode after evaluating (its training mode is not restored)",
        replace={"model.train(was_training)  # leave": "pass  # leave"})
def eval_leaves_eval_mode(): ...


@mutant("evaluate_model", "the model's mode is restored only when the evaluation succeeds (no `finally`): an error in "
                          "the loader leaves a model that was training in eval mode",
        replace={"    finally:\n        model.train(was_training)  # leave": "    except Exception:\n        raise\n"
                                                                             "    model.train(was_training)  # leave"})
def eval_restores_mode_only_on_success(): ...


@mutant("evaluate_model", "the evaluation runs with grad mode on, building a graph over the whole evaluation set",
        replace={"with torch.no_grad():": "with torch.enable_grad():"})
def eval_builds_a_graph(): ...


@mistake("evaluate_model", "the NLL is log(softmax(logits)), which is -inf once a logit is ~750 above the target's: "
                           "the perplexity becomes inf instead of a finite number")
def eval_log_of_softmax(model, loader):
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        with torch.no_grad():
            for batch in loader:
                output = model(batch["input_ids"], attention_mask=batch.get("attention_mask"))
                logits = (output if isinstance(output, torch.Tensor) else output.logits)[:, :-1].double()
                targets = batch["labels"][:, 1:]
                keep = targets != -100
                logp = torch.log(torch.softmax(logits, dim=-1))
                total -= logp.gather(-1, targets.clamp_min(0)[..., None])[..., 0][keep].sum().item()
                count += int(keep.sum())
    finally:
        model.train(was_training)
    if count == 0:
        raise ValueError("no token to score")
    return math.exp(total / count) if total / count < 709 else math.inf


@mutant("evaluate_model", "math.exp of a mean NLL above ~709 raises OverflowError instead of returning math.inf",
        replace={"except OverflowError:": "except ZeroDivisionError:"})
def eval_overflow_raises(): ...


@mistake("evaluate_model", "the loader is read twice (once to count the tokens, once to score them): a generator or a "
                           "one-pass loader is empty the second time")
def eval_reads_loader_twice(model, loader):
    count = sum(int((batch["labels"][:, 1:] != -100).sum()) for batch in loader)
    if count == 0:
        raise ValueError("no token to score")
    was_training = model.training
    model.eval()
    total = 0.0
    try:
        with torch.no_grad():
            for batch in loader:
                output = model(batch["input_ids"], attention_mask=batch.get("attention_mask"))
                logits = (output if isinstance(output, torch.Tensor) else output.logits)[:, :-1]
                total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]).double(),
                                         batch["labels"][:, 1:].reshape(-1), reduction="sum").item()
    finally:
        model.train(was_training)
    return math.exp(total / count)


@variant("evaluate_model", "log_softmax and gather with an explicit mask, summed as float64 tensors, mode restored "
                           "through a context manager")
def eval_gather_variant(model, loader):
    class _EvalMode:
        def __enter__(self):
            self.was = model.training
            model.eval()

        def __exit__(self, *exc):
            model.train(self.was)

    nll = torch.zeros((), dtype=torch.float64)
    n = torch.zeros((), dtype=torch.long)
    with _EvalMode(), torch.inference_mode():
        for batch in loader:
            ids, labels = batch["input_ids"], batch["labels"]
            if ids.shape != labels.shape:
                raise ValueError(f"shapes {tuple(ids.shape)} and {tuple(labels.shape)} differ")
            out = model(input_ids=ids, attention_mask=batch.get("attention_mask"))
            logits = getattr(out, "logits", out)
            logp = torch.log_softmax(logits[:, :-1].to(torch.float64), dim=-1)
            target = labels[:, 1:]
            scored = target.ne(-100)
            picked = logp.gather(2, target.masked_fill(~scored, 0).unsqueeze(2)).squeeze(2)
            nll = nll - picked.masked_fill(~scored, 0.0).sum()
            n = n + scored.sum()
    if int(n) == 0:
        raise ValueError("nothing to score: no label other than -100 after the shift")
    mean = float(nll) / int(n)
    return math.inf if mean > 709.78 else math.exp(mean)


@variant("evaluate_model", "per-token losses from F.nll_loss(reduction='none') collected and summed once at the end, "
                           "the mode restored by a contextlib.ExitStack callback")
def eval_nll_loss_variant(model, loader):
    import contextlib

    pieces = []
    with contextlib.ExitStack() as stack:
        stack.callback(model.train, model.training)
        model.train(False)
        stack.enter_context(torch.no_grad())
        for batch in loader:
            ids, labels = batch["input_ids"], batch["labels"]
            if tuple(ids.shape) != tuple(labels.shape):
                raise ValueError(f"input_ids {list(ids.shape)} vs labels {list(labels.shape)}")
            out = model(ids, attention_mask=batch["attention_mask"] if "attention_mask" in batch else None)
            logits = out.logits if hasattr(out, "logits") else out
            target = labels[..., 1:]
            per_token = F.nll_loss(F.log_softmax(logits[..., :-1, :].double(), dim=-1).transpose(1, 2), target,
                                   ignore_index=-100, reduction="none")
            pieces.append(per_token[target != -100])
    flat = torch.cat(pieces) if pieces else torch.zeros(0, dtype=torch.float64)
    if flat.numel() == 0:
        raise ValueError("no scored token in the loader")
    mean = flat.sum().item() / flat.numel()
    return math.inf if mean > 709 else math.exp(mean)


# --------------------------------------------------------------------------------------------------
# corpus_bleu


@mutant("corpus_bleu", "no brevity penalty: a system that outputs one sure word per sentence gets a perfect score",
        replace={"brevity = 1.0 if hyp_len >= ref_len else math.exp(1.0 - ref_len / hyp_len)": "brevity = 1.0"})
def bleu_no_brevity_penalty(): ...


@mutant("corpus_bleu", "n-gram counts are not clipped: 'the the the' earns full precision against 'the cat'",
        replace={"min(count, best[gram])": "(count if best[gram] else 0)"})
def bleu_unclipped_counts(): ...


@mutant("corpus_bleu", "counts are clipped by the SUM of the references' counts instead of the largest count in one",
        replace={"best |= _ngrams(r, max_order)": "best += _ngrams(r, max_order)"})
def bleu_clips_by_the_sum(): ...


@mutant("corpus_bleu", "the brevity penalty uses the shortest reference length instead of the closest one",
        replace={"min((abs(len(r) - len(tokens)), len(r)) for r in ref_tokens)[1]": "min(len(r) for r in ref_tokens)"})
def bleu_shortest_reference(): ...


@mutant("corpus_bleu", "a tie between two closest reference lengths goes to the longer one (sacrebleu takes the "
                       "shorter)",
        replace={"min((abs(len(r) - len(tokens)), len(r)) for r in ref_tokens)[1]":
                 "-min((abs(len(r) - len(tokens)), -len(r)) for r in ref_tokens)[1]"})
def bleu_ties_to_the_longer_reference(): ...


@mistake("corpus_bleu", "the corpus score is the average of sentence BLEU scores instead of one score from "
                        "corpus-level counts")
def bleu_sentence_average(hypotheses, references, max_order=4, smooth=False):
    corpus_bleu(hypotheses, references, max_order, smooth)  # the same errors for bad input
    return sum(corpus_bleu([h], [r], max_order, smooth) for h, r in zip(hypotheses, references, strict=True)) / len(
        hypotheses)


@mutant("corpus_bleu", "BLEU is returned on a 0-1 scale instead of sacrebleu's 0-100",
        replace={"return 100.0 * brevity": "return brevity"})
def bleu_on_a_0_1_scale(): ...


@mutant("corpus_bleu", "the precisions are averaged arithmetically instead of geometrically (exp of the mean log)",
        replace={"math.exp(sum(log_precisions) / max_order)": "sum(math.exp(p) for p in log_precisions) / max_order"})
def bleu_arithmetic_mean(): ...


@mistake("corpus_bleu", "all hypotheses (and all references) are joined into one long text, so n-grams run across "
                        "sentence boundaries")
def bleu_ngrams_across_sentences(hypotheses, references, max_order=4, smooth=False):
    corpus_bleu(hypotheses, references, max_order, smooth)  # the same errors for bad input
    joined_refs = [" ".join(refs[k] if k < len(refs) else refs[-1] for refs in references)
                   for k in range(max(len(r) for r in references))]
    return corpus_bleu([" ".join(hypotheses)], [joined_refs], max_order, smooth)


@mutant("corpus_bleu", "smoothing uses 1 / 2^k instead of 1 / (2^k * total_n) for the k-th order without a match",
        replace={"2**zeros * totals[n]": "2**zeros"})
def bleu_wrong_smoothing(): ...


@mutant("corpus_bleu", "smoothing is always on, so an order without a match does not give 0 by default",
        replace={"if not smooth:": "if False:"})
def bleu_always_smoothed(): ...


@mutant("corpus_bleu", "with smooth=True a corpus where nothing matches gets a score above 0 (every order smoothed) "
                       "instead of 0",
        replace={"if not any(matches):  # also": "if not any(matches) and not smooth:  # also"})
def bleu_smooths_when_nothing_matches(): ...


@mutant("corpus_bleu", "the brevity penalty is exp(1 - c / r) instead of exp(1 - r / c)",
        replace={"math.exp(1.0 - ref_len / hyp_len)": "math.exp(1.0 - hyp_len / ref_len)"})
def bleu_inverted_brevity_penalty(): ...


@mistake("corpus_bleu", "the texts are lowercased before counting: BLEU (like sacrebleu by default) is case-sensitive")
def bleu_lowercases(hypotheses, references, max_order=4, smooth=False):
    if not isinstance(hypotheses, list) or not all(isinstance(h, str) for h in hypotheses):
        return corpus_bleu(hypotheses, references, max_order, smooth)
    lowered = [[r.lower() if isinstance(r, str) else r for r in refs] if isinstance(refs, list) else refs
               for refs in references]
    return corpus_bleu([h.lower() for h in hypotheses], lowered, max_order, smooth)


@variant("corpus_bleu", "sacrebleu-style sufficient statistics per sentence (zip-built n-grams, & for clipping), "
                        "summed, then the score from the sums with math.fsum")
def bleu_statistics_variant(hypotheses, references, max_order=4, smooth=False):
    if isinstance(hypotheses, str) or not isinstance(hypotheses, list | tuple) or not hypotheses or any(
            not isinstance(h, str) for h in hypotheses):
        raise ValueError(f"bad hypotheses: {hypotheses!r}")
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} reference lists")
    if isinstance(max_order, bool) or not isinstance(max_order, int) or max_order < 1:
        raise ValueError(f"bad max_order: {max_order!r}")

    def grams(words, n):
        return Counter(zip(*(words[k:] for k in range(n)), strict=False))

    stats = [0, 0] + [0] * (2 * max_order)  # hyp length, ref length, matches per order, totals per order
    for hyp, refs in zip(hypotheses, references, strict=True):
        if isinstance(refs, str) or not refs or any(not isinstance(r, str) for r in refs):
            raise ValueError(f"bad references for {hyp!r}: {refs!r}")
        words = hyp.split()
        ref_words = [r.split() for r in refs]
        stats[0] += len(words)
        stats[1] += sorted(ref_words, key=lambda r: (abs(len(r) - len(words)), len(r)))[0].__len__()
        for n in range(1, max_order + 1):
            mine = grams(words, n)
            allowed = Counter()
            for r in ref_words:
                for gram, c in grams(r, n).items():
                    allowed[gram] = max(allowed[gram], c)
            stats[1 + n] += sum((mine & allowed).values())
            stats[1 + max_order + n] += sum(mine.values())
    c, r = stats[0], stats[1]
    hits, totals = stats[2:2 + max_order], stats[2 + max_order:]
    if sum(hits) == 0 or 0 in totals:
        return 0.0
    logs, k = [], 0
    for hit, total in zip(hits, totals, strict=True):
        if hit:
            logs.append(math.log(hit) - math.log(total))
        elif smooth:
            k += 1
            logs.append(-math.log(total) - k * math.log(2))
        else:
            return 0.0
    bp = math.exp(min(0.0, 1 - r / c))
    return 100 * bp * math.exp(math.fsum(logs) / max_order)


@variant("corpus_bleu", "exact fractions.Fraction precisions, n-grams counted order by order, the geometric mean as a "
                        "product raised to 1/N")
def bleu_fractions_variant(hypotheses, references, max_order=4, smooth=False):
    from fractions import Fraction

    if not isinstance(hypotheses, list | tuple) or not hypotheses or not all(type(h) is str for h in hypotheses):
        raise ValueError(f"hypotheses: expected a non-empty list of str, got {hypotheses!r}")
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(hypotheses)} hypotheses vs {len(references)} references")
    if type(max_order) is not int or max_order <= 0:
        raise ValueError(f"max_order={max_order!r} is not a positive int")
    hit, tot, c, r = [0] * (max_order + 1), [0] * (max_order + 1), 0, 0
    for i, (hyp, refs) in enumerate(zip(hypotheses, references, strict=True)):
        if not isinstance(refs, list | tuple) or not refs or any(type(x) is not str for x in refs):
            raise ValueError(f"references[{i}] = {refs!r} is not a non-empty list of str")
        h, rs = hyp.split(), [x.split() for x in refs]
        c += len(h)
        r += min(sorted(len(x) for x in rs), key=lambda n: abs(n - len(h)))
        for n in range(1, max_order + 1):
            counts = Counter(tuple(h[j:j + n]) for j in range(len(h) - n + 1))
            cap: dict = {}
            for x in rs:
                for gram, k in Counter(tuple(x[j:j + n]) for j in range(len(x) - n + 1)).items():
                    cap[gram] = max(cap.get(gram, 0), k)
            hit[n] += sum(min(k, cap.get(gram, 0)) for gram, k in counts.items())
            tot[n] += sum(counts.values())
    if hit[1] == 0 or 0 in tot[1:]:
        return 0.0
    product, k = Fraction(1), 0
    for n in range(1, max_order + 1):
        if hit[n]:
            product *= Fraction(hit[n], tot[n])
        elif smooth:
            k += 1
            product *= Fraction(1, 2**k * tot[n])
        else:
            return 0.0
    return 100 * (math.exp(1 - r / c) if c < r else 1.0) * float(product) ** (1 / max_order)


# --------------------------------------------------------------------------------------------------
# quantize_int8, dequantize, QuantizedLinear


@mutant("quantize_int8", "an all-zero row gets scale 0, and 0 / 0 makes its q (and everything after) nan",
        replace={"torch.where(absmax > 0, absmax / INT8_MAX, torch.ones_like(absmax))": "absmax / INT8_MAX"})
def quant_zero_row_nan(): ...


@mutant("quantize_int8", "per_channel is ignored: one scale per row even when per_channel=False",
        replace={"if per_channel else ()": "if w.ndim else ()", "elif per_channel:": "elif w.ndim:"})
def quant_ignores_per_channel(): ...


@mutant("quantize_int8", "the scale is max |w| / 128, so the largest weight maps to 128 and is clipped to 127",
        replace={"absmax / INT8_MAX, torch.ones_like": "absmax / 128, torch.ones_like"})
def quant_divides_by_128(): ...


@mutant("quantize_int8", "w / scale is truncated toward zero instead of rounded: errors up to a whole step",
        replace={"torch.round(w.to(compute) / scale)": "torch.trunc(w.to(compute) / scale)"})
def quant_truncates(): ...


@mutant("quantize_int8", "w / scale is computed in the weight's own dtype: in bfloat16, 127 comes out as 126.5 "
                         "(rounded to 126) or 128 (which wraps around to -128 in int8)",
        replace={"compute = torch.promote_types(w.dtype, torch.float32)": "compute = w.dtype"})
def quant_divides_in_bfloat16(): ...


@mistake("quantize_int8", "the per-channel scale is taken over the columns (dimension 1) instead of the rows")
def quant_scales_columns(w, per_channel=True):
    if not per_channel or w.ndim < 2:
        return quantize_int8(w, per_channel)
    absmax = w.abs().amax(dim=0, keepdim=True)
    scale = torch.where(absmax > 0, absmax / 127, torch.ones_like(absmax))
    return torch.round(w / scale).clamp(-127, 127).to(torch.int8), scale


@mistake("quantize_int8", "the per-channel scale is the max over the LAST dimension: one scale per row of a 2-D "
                          "weight, but one per (row, ...) slice of a 3-D one instead of one per entry of dimension 0")
def quant_scales_last_dimension(w, per_channel=True):
    if not per_channel or w.ndim < 3:
        return quantize_int8(w, per_channel)
    absmax = w.abs().amax(dim=-1, keepdim=True)
    scale = torch.where(absmax > 0, absmax / 127, torch.ones_like(absmax))
    return torch.round(w / scale).clamp(-127, 127).to(torch.int8), scale


@mutant("quantize_int8", "the scale is computed in float64 and rounded to the weight's dtype only AFTER dividing: for "
                         "bfloat16, q is then up to 0.61 steps away from w / (the returned scale)",
        replace={"    scale = torch.where(absmax > 0, absmax / INT8_MAX, torch.ones_like(absmax))\n":
                 "    absmax = absmax.double()\n    scale = torch.where(absmax > 0, absmax / INT8_MAX, "
                 "torch.ones_like(absmax))\n",
                 "    return q, scale\n": "    return q, scale.to(w.dtype)\n"})
def quant_rounds_the_scale_late(): ...


@mistake("quantize_int8", "the scale is always float32, whatever the weight's dtype")
def quant_float32_scale(w, per_channel=True):
    q, scale = quantize_int8(w, per_channel)
    return q, scale.float()


@mutant("dequantize", "q is converted to float32 whatever the scale's dtype, so bfloat16 scales give float32",
        replace={"return q * scale": "return q.float() * scale"})
def dequant_always_float32(): ...


@mutant("dequantize", "q is not checked to be int8, so an int64 tensor from an earlier bug passes silently",
        replace={"if q.dtype != torch.int8:": "if q.dtype == torch.bool:"})
def dequant_accepts_any_integers(): ...


class QLinearKeepsFloatWeight(QuantizedLinear):
    """Keeps the float layer as a submodule: its parameters train and its memory is never freed."""

    def __init__(self, linear, per_channel=True):
        super().__init__(linear, per_channel)
        self.linear = linear


mistake("QuantizedLinear", "the float nn.Linear is kept as a submodule: its float weight stays in memory (and "
                           "trains)")(QLinearKeepsFloatWeight)


class QLinearKeepsFloatTensor(QuantizedLinear):
    """Keeps the float weight as a plain tensor attribute (not a buffer, so not in the state_dict)."""

    def __init__(self, linear, per_channel=True):
        super().__init__(linear, per_channel)
        self.weight = linear.weight.detach()


mistake("QuantizedLinear", "the float weight is kept as a plain tensor attribute (self.weight = "
                           "linear.weight.detach()): not in the state_dict, but its memory is never freed")(
    QLinearKeepsFloatTensor)


@mutant("QuantizedLinear", "the bias is stored without a copy, so later changes to the float layer leak in",
        replace={"linear.bias.detach().clone()": "linear.bias.detach()"})
def qlinear_shares_the_bias(): ...


@mutant("QuantizedLinear", "forward drops the bias", replace={"dequantize(self.weight_int8, self.scale), self.bias)":
                                                              "dequantize(self.weight_int8, self.scale))"})
def qlinear_drops_the_bias(): ...


@mutant("QuantizedLinear", "per_channel is not passed on: the layer is always quantised per channel",
        replace={"per_channel=per_channel)": "per_channel=True)"})
def qlinear_always_per_channel(): ...


class QLinearBiasParameter(QuantizedLinear):
    """Registers the bias as a trainable parameter instead of a buffer."""

    def __init__(self, linear, per_channel=True):
        super().__init__(linear, per_channel)
        bias = self.bias
        del self.bias
        self.bias = None if bias is None else nn.Parameter(bias)


mistake("QuantizedLinear", "the bias is an nn.Parameter: the quantised layer is meant to have nothing to train")(
    QLinearBiasParameter)


@variant("quantize_int8", "multiplies by the scale's reciprocal in float64 instead of dividing, and builds the zero "
                          "rows' scale with new_ones")
def quant_reciprocal_variant(w, per_channel=True):
    if not torch.is_floating_point(w):
        raise ValueError(f"needs a float tensor, not {w.dtype}")
    if bool(torch.isnan(w).any() | torch.isinf(w).any()):
        raise ValueError("nan or inf in w")
    if per_channel:
        if w.dim() == 0:
            raise ValueError("a 0-dim tensor has no rows for per_channel")
        flat = w.abs().flatten(1) if w.dim() > 1 else w.abs()[:, None]
        absmax = (flat.max(dim=1).values if flat.shape[1] else flat.new_zeros(flat.shape[0]))
        absmax = absmax.view(-1, *([1] * (w.dim() - 1)))
    else:
        absmax = w.abs().max() if w.numel() else w.new_zeros(())
    nonzero = absmax > 0
    scale = torch.where(nonzero, absmax / 127, absmax.new_ones(()))
    wide = w.double()  # multiply in float64: a bfloat16 product keeps only 8 bits
    # the reciprocal of the scale as returned (rounded to w's dtype), not 127 / absmax: for bfloat16 the two differ by
    # up to 0.4 %, which moves q by up to 0.5 step away from w / scale
    q = (wide * scale.double().reciprocal()).round()
    return q.clamp(-127, 127).to(torch.int8), scale


@variant("dequantize", "multiplies in the scale's dtype through torch.mul with an explicit cast")
def dequant_mul_variant(q, scale):
    if q.dtype is not torch.int8:
        raise ValueError(f"q has dtype {q.dtype}; int8 expected")
    return torch.mul(q.type(scale.dtype), scale)


class QLinearScaleAfterMatmul(nn.Module):
    """Applies the per-row scale AFTER the integer matmul: (x @ q.T) * scale.T + bias, never dequantising."""

    def __init__(self, linear, per_channel=True):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        q, scale = quantize_int8(linear.weight.detach(), per_channel)
        self.register_buffer("weight_int8", q)
        self.register_buffer("scale", scale)
        bias = linear.bias
        self.register_buffer("bias", bias.detach().clone() if bias is not None else None)

    def forward(self, x):
        y = (x @ self.weight_int8.to(x.dtype).T) * self.scale.reshape(-1)
        return y + self.bias if self.bias is not None else y


variant("QuantizedLinear", "scales after the integer matmul ((x @ q.T) * scale) instead of dequantising the weight")(
    QLinearScaleAfterMatmul)


@variant("quantize_int8", "amax over dimensions 1.. with keepdim (a 1-D weight is its own absmax), zero scales "
                          "replaced through masked_fill, in-place round_ and clamp_ on the quotient")
def quant_keepdim_variant(w, per_channel=True):
    if w.dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        raise ValueError(f"quantize_int8 wants a float tensor, not {w.dtype}")
    if w.isnan().any() or w.isinf().any():
        raise ValueError("w has nan or inf values")
    if per_channel and w.dim() == 0:
        raise ValueError("per_channel needs at least one dimension")
    if per_channel:
        if w.numel() == 0:
            amax = torch.zeros((w.shape[0],) + (1,) * (w.dim() - 1), dtype=w.dtype, device=w.device)
        elif w.dim() == 1:
            amax = w.abs()
        else:
            amax = w.abs().amax(dim=tuple(range(1, w.dim())), keepdim=True)
    else:
        amax = w.abs().max() if w.numel() else torch.zeros((), dtype=w.dtype, device=w.device)
    scale = (amax / 127).masked_fill(amax == 0, 1.0)
    q = (w if w.dtype == torch.float64 else w.float()).div(scale).round_().clamp_(-127, 127)
    return q.to(torch.int8), scale


class QLinearBufferLoop(nn.Module):
    """Registers its three buffers in a loop and computes x @ W.T, then adds the bias."""

    def __init__(self, linear, per_channel=True):
        super().__init__()
        self.out_features, self.in_features = linear.weight.shape
        q, scale = quantize_int8(linear.weight.data, per_channel=per_channel)
        bias = linear.bias.data.clone() if linear.bias is not None else None
        for name, tensor in (("weight_int8", q), ("scale", scale), ("bias", bias)):
            self.register_buffer(name, tensor)

    def forward(self, x):
        y = x @ (self.weight_int8 * self.scale).t()
        return y if self.bias is None else y + self.bias


variant("QuantizedLinear", "buffers registered in a loop, forward as x @ (q * scale).T + bias")(QLinearBufferLoop)


# --------------------------------------------------------------------------------------------------
# create_app


# The server's mistakes are edits of the reference's create_app: each keeps the rest of the app right.

@mutant("create_app", "the model is copied for every request (the learning path loaded it per request): seconds and "
                      "memory per call, and not the model the server was given",
        replace={"        past = None\n": "        past = None\n        worker = __import__('copy').deepcopy(model)\n",
                 "output = model(input_ids": "output = worker(input_ids"})
def app_copies_model(): ...


@mutant("create_app", "max_new_tokens has no upper bound (the learning path accepted any max_length): one request "
                      "can keep the server busy for minutes",
        replace={"Field(20, ge=1, le=MAX_NEW_TOKENS)": "Field(20, ge=1)"})
def app_unbounded_max_new_tokens(): ...


@mutant("create_app", "max_new_tokens defaults to 100 and goes up to 100 (the learning path's max_length)",
        replace={"Field(20, ge=1, le=MAX_NEW_TOKENS)": "Field(100, ge=1, le=100)"})
def app_default_100(): ...


@mutant("create_app", "the generation runs on the event loop inside `async def` (the learning path's bug): while it "
                      "computes, no other request, not even /health, is answered",
        replace={"await anyio.to_thread.run_sync(generate_ids, ": "generate_ids(",
                 'request.seed,\n                                                 limiter=state["limiter"])':
                 "request.seed)"})
def app_blocks_loop(): ...


@mutant("create_app", "a temperature of 0 is accepted (ge instead of gt): sampling would divide by zero",
        replace={"Field(1.0, gt=0.0, le=2.0)": "Field(1.0, ge=0.0, le=2.0)"})
def app_zero_temperature(): ...


@mutant("create_app", "the temperature has no upper bound",
        replace={"Field(1.0, gt=0.0, le=2.0)": "Field(1.0, gt=0.0)"})
def app_unbounded_temperature(): ...


@mutant("create_app", "an empty prompt is accepted",
        replace={"Field(min_length=1, max_length=MAX_PROMPT_CHARS)": "Field(max_length=MAX_PROMPT_CHARS)"})
def app_empty_prompt(): ...


@mutant("create_app", "the prompt's length in characters is not bounded",
        replace={"Field(min_length=1, max_length=MAX_PROMPT_CHARS)": "Field(min_length=1)"})
def app_unbounded_prompt(): ...


@mutant("create_app", "seeds are not bounded (negative or huge seeds reach torch)",
        replace={"seed: int | None = Field(None, ge=0, le=2**32 - 1)": "seed: int | None = None"})
def app_unbounded_seed(): ...


@mutant("create_app", "lax types: \"5\" and 5.0 are accepted where an integer is required",
        replace={'ConfigDict(extra="forbid", strict=True)': 'ConfigDict(extra="forbid")'})
def app_lax_types(): ...


@mutant("create_app", "unknown fields (such as the learning path's max_length) are silently ignored",
        replace={'ConfigDict(extra="forbid", strict=True)': "ConfigDict(strict=True)"})
def app_ignores_unknown_fields(): ...


@mutant("create_app", "requests are never turned away: every request waits, and under load they pile up until "
                      "clients time out",
        replace={'if state["in_flight"] >= max_concurrency + max_queue:': "if False:"})
def app_never_turns_away(): ...


@mutant("create_app", "the queue is ignored: a request is turned away as soon as max_concurrency are running",
        replace={'if state["in_flight"] >= max_concurrency + max_queue:': 'if state["in_flight"] >= max_concurrency:'})
def app_ignores_queue(): ...


@mutant("create_app", "one request too many is let in",
        replace={'if state["in_flight"] >= max_concurrency + max_queue:':
                 'if state["in_flight"] > max_concurrency + max_queue:'})
def app_limit_off_by_one(): ...


@mutant("create_app", "generations are not limited to max_concurrency at once (no limiter on the worker threads)",
        replace={'request.seed,\n                                                 limiter=state["limiter"])':
                 "request.seed)"})
def app_unlimited_threads(): ...


@mutant("create_app", "the slot is freed only when the generation succeeds (no `finally`): every failure leaks one "
                      "until the server answers only 503",
        replace={'        finally:\n            state["in_flight"] -= 1\n':
                 '        except BaseException:\n            raise\n        state["in_flight"] -= 1\n'})
def app_leaks_slot(): ...


@mutant("create_app", "the 503 answer has no Retry-After header", replace={', headers={"Retry-After": "1"})': ")"})
def app_no_retry_after(): ...


@mutant("create_app", "the 503 answer is not documented in the OpenAPI schema",
        replace={',\n              responses={503: {"model": Busy}})': ")"})
def app_undocumented_503(): ...


@mutant("create_app", "the answer includes the prompt (the learning path decoded output[0], prompt and all)",
        replace={"tokenizer.decode(new, skip_special_tokens=True)":
                 "tokenizer.decode(prompt_ids + new, skip_special_tokens=True)"})
def app_returns_prompt(): ...


@mutant("create_app", "new_tokens counts the prompt's tokens too",
        replace={'"new_tokens": len(new)}': '"new_tokens": len(prompt_ids) + len(new)}'})
def app_counts_prompt(): ...


@mutant("create_app", "sampling seeds torch's global RNG (torch.manual_seed), which every request in flight shares",
        replace={"            generator.manual_seed(seed)\n":
                 "            torch.manual_seed(seed)\n            generator = None\n"})
def app_global_rng(): ...


@mutant("create_app", "the seed is ignored: every sampled request uses the same fixed seed",
        replace={"            generator.seed()  # fresh entropy": "            generator.manual_seed(0)  # fixed",
                 "            generator.manual_seed(seed)\n": "            generator.manual_seed(0)\n"})
def app_ignores_seed(): ...


@mutant("create_app", "the temperature is ignored when sampling",
        replace={"(logits - logits.max()) / temperature": "(logits - logits.max())"})
def app_ignores_temperature(): ...


@mutant("create_app", "the logits are multiplied by the temperature instead of divided by it",
        replace={"(logits - logits.max()) / temperature": "(logits - logits.max()) * temperature"})
def app_multiplies_temperature(): ...


@mutant("create_app", "the logits are divided by the temperature before the max is subtracted: a tiny temperature "
                      "overflows to inf and the softmax gives nan",
        replace={"(logits - logits.max()) / temperature": "logits / temperature"})
def app_overflow_temperature(): ...


@mutant("create_app", "do_sample is ignored: the answer is always greedy", replace={"if do_sample:": "if False:"})
def app_never_samples(): ...


@mutant("create_app", "generation does not stop at the eos token",
        replace={"if token == eos_token_id:\n                    break": "if False:\n                    break"})
def app_ignores_eos(): ...


@mutant("create_app", "the model is not put in eval mode at start-up, so dropout makes greedy answers random",
        replace={"        model.eval()\n": ""})
def app_keeps_dropout(): ...


@mutant("create_app", "the prompt is not checked against the model's context: a long prompt crashes the model",
        replace={"if len(prompt_ids) + request.max_new_tokens > context:": "if False:"})
def app_no_context_check(): ...


@mutant("create_app", "a prompt that exactly fills the context is rejected (>= instead of >)",
        replace={"if len(prompt_ids) + request.max_new_tokens > context:":
                 "if len(prompt_ids) + request.max_new_tokens >= context:"})
def app_context_off_by_one(): ...


@mutant("create_app", "`if not seed` instead of `if seed is None`: seed 0 draws fresh entropy, so it never repeats",
        replace={"if seed is None:": "if not seed:"})
def app_seed_zero_is_fresh(): ...


@mutant("create_app", "the request is counted in before the context check: every 422 for a too-long prompt keeps its "
                      "slot for ever",
        replace={'        prompt_ids = tokenizer(request.prompt)["input_ids"]\n':
                 '        state["in_flight"] += 1\n        prompt_ids = tokenizer(request.prompt)["input_ids"]\n',
                 '        state["in_flight"] += 1\n        try:': "        try:"})
def app_counts_rejected_requests(): ...


@mutant("create_app", "model.eval() runs when the app is built, not in the lifespan: a model put back in training "
                      "mode before the server starts serves with dropout on",
        replace={"        model.eval()\n": "", "    app = FastAPI(lifespan=lifespan)\n":
                 "    model.eval()\n    app = FastAPI(lifespan=lifespan)\n"})
def app_eval_when_built(): ...


@mutant("create_app", "one torch.Generator for the whole app, re-seeded by each request: concurrent requests with the "
                      "same seed interleave their draws",
        replace={"        generator = torch.Generator()\n": "        generator = shared\n",
                 "    def generate_ids(": "    shared = torch.Generator()\n\n    def generate_ids("})
def app_shared_generator(): ...


@mutant("create_app", "the prompt is stripped before it is tokenized: 'the cat ' is generated as 'the cat'",
        replace={'tokenizer(request.prompt)["input_ids"]': 'tokenizer(request.prompt.strip())["input_ids"]'})
def app_strips_prompt(): ...


@mutant("create_app", "the generated text is stripped: a continuation's leading space is lost",
        replace={"tokenizer.decode(new, skip_special_tokens=True)":
                 "tokenizer.decode(new, skip_special_tokens=True).strip()"})
def app_strips_text(): ...


@mutant("create_app", "no torch.no_grad() in the worker thread (grad mode is per thread, on by default): every request "
                      "keeps a graph of all its steps",
        replace={"        with torch.no_grad():\n": "        with torch.enable_grad():\n"})
def app_grad_in_worker(): ...


@mutant("create_app", "sampling keeps only the 50 most likely tokens (model.generate's default top_k) instead of the "
                      "whole softmax",
        replace={"token = int(torch.multinomial(probs, 1, generator=generator))":
                 "top = torch.topk(probs, 50)\n"
                 "                    token = int(top.indices[torch.multinomial(top.values, 1, generator=generator)])"})
def app_top_k_50(): ...


@variant("create_app", "app.state set in the lifespan, an asyncio.Semaphore around asyncio.to_thread, greedy "
                       "answers from model.generate, sampling by inverse CDF with the request's own generator, the "
                       "503 raised as an HTTPException")
def app_asyncio_variant(model, tokenizer, *, max_concurrency: int = 2, max_queue: int = 16):
    import asyncio
    from contextlib import asynccontextmanager
    from typing import Annotated, Optional

    from fastapi import FastAPI, HTTPException, Request
    from fastapi.exceptions import RequestValidationError
    from pydantic import BaseModel, ConfigDict, Field

    for name, value, low in (("max_concurrency", max_concurrency, 1), ("max_queue", max_queue, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")

    class Req(BaseModel):
        model_config = ConfigDict(extra="forbid", strict=True)
        prompt: Annotated[str, Field(min_length=1, max_length=MAX_PROMPT_CHARS)]
        max_new_tokens: Annotated[int, Field(ge=1, le=MAX_NEW_TOKENS)] = 20
        temperature: Annotated[float, Field(gt=0, le=2)] = 1.0
        do_sample: bool = False
        seed: Optional[Annotated[int, Field(ge=0, lt=2**32)]] = None  # noqa: UP045

    class Resp(BaseModel):
        generated_text: str
        new_tokens: int

    class Overloaded(BaseModel):
        detail: str

    def run(ids, req):
        with torch.inference_mode():
            x = torch.tensor([ids])
            if not req.do_sample:
                out = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=req.max_new_tokens,
                                     do_sample=False, pad_token_id=tokenizer.pad_token_id,
                                     eos_token_id=tokenizer.eos_token_id)
                return out[0, x.shape[1]:].tolist()
            g = torch.Generator()
            if req.seed is None:
                g.seed()
            else:
                g.manual_seed(req.seed)
            new = []
            for _ in range(req.max_new_tokens):
                logits = model(x).logits[0, -1].double()
                p = torch.softmax((logits - logits.max()) / req.temperature, -1)
                u = torch.rand((), generator=g, dtype=torch.float64)
                tok = int(torch.searchsorted(p.cumsum(0), u * p.sum()).clamp(max=p.numel() - 1))
                new.append(tok)
                if tok == tokenizer.eos_token_id:
                    break
                x = torch.cat([x, torch.tensor([[tok]])], 1)
            return new

    @asynccontextmanager
    async def lifespan(app):
        model.eval()
        app.state.sem = asyncio.Semaphore(max_concurrency)
        app.state.active = 0
        yield

    app = FastAPI(lifespan=lifespan, title="tiny LM")

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.post("/generate", response_model=Resp, responses={503: {"model": Overloaded, "description": "busy"}})
    async def generate(req: Req, request: Request):
        st = request.app.state
        if st.active >= max_concurrency + max_queue:
            raise HTTPException(503, detail="overloaded, retry in a second", headers={"Retry-After": "1"})
        ids = tokenizer.encode(req.prompt)
        n_ctx = model.config.max_position_embeddings
        if len(ids) + req.max_new_tokens > n_ctx:
            raise RequestValidationError([{"type": "value_error", "loc": ("body", "prompt"), "input": req.prompt,
                                           "msg": f"{len(ids)} prompt tokens + {req.max_new_tokens} > {n_ctx}"}])
        st.active += 1
        try:
            async with st.sem:
                new = await asyncio.to_thread(run, ids, req)
        finally:
            st.active -= 1
        return Resp(generated_text=tokenizer.decode(new, skip_special_tokens=True), new_tokens=len(new))

    return app


@variant("create_app", "plain `def` endpoints (FastAPI runs them in its thread pool), a threading.BoundedSemaphore "
                       "and a locked counter, app.state set in the lifespan, and no KV cache (the whole sequence "
                       "each step)")
def app_threadpool_variant(model, tokenizer, *, max_concurrency=2, max_queue=16):
    from contextlib import asynccontextmanager

    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from pydantic import BaseModel, ConfigDict, Field

    for name, value, low in (("max_concurrency", max_concurrency, 1), ("max_queue", max_queue, 0)):
        if type(value) is not int or value < low:
            raise ValueError(f"{name}={value!r} must be an int >= {low}")

    class Body(BaseModel):
        model_config = ConfigDict(strict=True, extra="forbid")
        prompt: str = Field(..., min_length=1, max_length=MAX_PROMPT_CHARS)
        max_new_tokens: int = Field(default=20, ge=1, le=MAX_NEW_TOKENS)
        temperature: float = Field(default=1.0, gt=0, le=2, allow_inf_nan=False)
        do_sample: bool = False
        seed: int | None = Field(default=None, ge=0, le=4294967295)

    class Answer(BaseModel):
        generated_text: str
        new_tokens: int

    class Status(BaseModel):
        status: str

    class Error(BaseModel):
        detail: str

    @asynccontextmanager
    async def lifespan(app):
        model.train(False)
        app.state.running = threading.BoundedSemaphore(max_concurrency)
        app.state.lock = threading.Lock()
        app.state.busy = 0
        yield

    app = FastAPI(lifespan=lifespan)

    @app.get("/health", response_model=Status)
    def health():
        return Status(status="ok")

    @app.post("/generate", response_model=Answer, responses={503: {"model": Error}})
    def generate(body: Body, request: Request):
        st = request.app.state
        with st.lock:
            if st.busy >= max_concurrency + max_queue:
                return JSONResponse({"detail": "too busy"}, 503, headers={"Retry-After": "1"})
            st.busy += 1
        try:
            ids = tokenizer.encode(body.prompt)
            limit = model.config.max_position_embeddings
            if len(ids) + body.max_new_tokens > limit:
                raise RequestValidationError([{"type": "value_error", "loc": ("body", "prompt"),
                                               "msg": f"{len(ids)} + {body.max_new_tokens} tokens > {limit}"}])
            gen = torch.Generator()
            if body.seed is not None:
                gen.manual_seed(body.seed)
            else:
                gen.seed()
            out = []
            with st.running, torch.no_grad():
                seq = list(ids)
                while len(out) < body.max_new_tokens:
                    logits = model(torch.tensor([seq])).logits[0, -1].to(torch.float64)
                    if body.do_sample:
                        probs = F.softmax((logits - logits.max()) / body.temperature, dim=-1)
                        nxt = torch.multinomial(probs, 1, generator=gen).item()
                    else:
                        nxt = logits.argmax().item()
                    out.append(nxt)
                    seq.append(nxt)
                    if nxt == tokenizer.eos_token_id:
                        break
            return Answer(generated_text=tokenizer.decode(out, skip_special_tokens=True), new_tokens=len(out))
        finally:
            with st.lock:
                st.busy -= 1

    return app


# --------------------------------------------------------------------------------------------------
# create_demo


@mistake("create_demo", "the callback returns a variable it never defined (the learning path's bug): a NameError on "
                        "the first click")
def demo_undefined_output(generate_fn):
    import gradio as gr

    def generate_response(prompt, max_new_tokens, temperature):
        generate_fn(prompt, int(max_new_tokens), float(temperature))
        return generated_text  # noqa: F821 - the learning path's bug, kept on purpose

    return gr.Interface(fn=generate_response, inputs=[gr.Textbox(label="Prompt"),
                                                      gr.Slider(1, MAX_NEW_TOKENS, value=20, step=1,
                                                                label="Max new tokens"),
                                                      gr.Slider(0.1, 2.0, value=1.0, label="Temperature")],
                        outputs=gr.Textbox(label="Generated text"), title="Demo")


@mutant("create_demo", "the slider's float (20.0) is passed on as the number of tokens instead of an int",
        replace={"generate_fn(prompt, int(max_new_tokens), float(temperature))":
                 "generate_fn(prompt, max_new_tokens, float(temperature))"})
def demo_passes_a_float_count(): ...


@mutant("create_demo", "the token slider keeps the learning path's range 50 .. 500, beyond what the server accepts",
        replace={"gr.Slider(1, MAX_NEW_TOKENS, value=20": "gr.Slider(50, 500, value=100"})
def demo_learning_path_slider(): ...


@mutant("create_demo", "the inputs are in another order than generate_fn's arguments",
        replace={'            gr.Textbox(label="Prompt"),\n': "",
                 '            gr.Slider(0.1, 2.0, value=1.0, step=0.1, label="Temperature"),\n':
                 '            gr.Slider(0.1, 2.0, value=1.0, step=0.1, label="Temperature"),\n'
                 '            gr.Textbox(label="Prompt"),\n'})
def demo_inputs_out_of_order(): ...


@mutant("create_demo", "the callback strips the generated text: a continuation's leading space (or final newline) "
                       "is lost",
        replace={"return generate_fn(prompt, int(max_new_tokens), float(temperature))":
                 "return generate_fn(prompt, int(max_new_tokens), float(temperature)).strip()"})
def demo_strips_the_text(): ...


@mutant("create_demo", "the callback strips the prompt before passing it on: the prompt's own spaces and newlines are "
                       "part of what the model continues",
        replace={"return generate_fn(prompt, int(max_new_tokens), float(temperature))":
                 "return generate_fn(prompt.strip(), int(max_new_tokens), float(temperature))"})
def demo_strips_the_prompt(): ...


@mutant("create_demo", "the callback rounds the temperature to one decimal instead of passing it on",
        replace={"return generate_fn(prompt, int(max_new_tokens), float(temperature))":
                 "return generate_fn(prompt, int(max_new_tokens), round(float(temperature), 1))"})
def demo_rounds_the_temperature(): ...


@mistake("create_demo", "the interface is launched inside create_demo (the learning path's script ends with "
                        "demo.launch()): a web server starts, and a blocking launch never returns")
def demo_launches(generate_fn):
    demo = create_demo(generate_fn)
    demo.launch(prevent_thread_lock=True)
    return demo


@mutant("create_demo", "the interface has no title", replace={'title="Tiny language model",': ""})
def demo_without_title(): ...


@variant("create_demo", "keyword arguments for every component, a lambda as the callback and an article text")
def demo_keyword_variant(generate_fn):
    import gradio as gr

    return gr.Interface(
        fn=lambda prompt, n, temperature: generate_fn(prompt, int(round(n)), float(temperature)),
        inputs=[gr.Textbox(label="Prompt", lines=3, placeholder="Once upon a time"),
                gr.Slider(minimum=1, maximum=MAX_NEW_TOKENS, step=1, value=20, label="Max new tokens"),
                gr.Slider(minimum=0.1, maximum=2.0, step=0.1, value=1.0, label="Temperature")],
        outputs=[gr.Textbox(label="Generated text")],
        title="My LLM Demo",
        article="Runs the tiny model of w23_deployment.",
    )


# --------------------------------------------------------------------------------------------------
# batch_generate


@mutant("batch_generate", "the batch is padded on the RIGHT: a short prompt's continuation is predicted from pads",
        replace={'padding=True, padding_side="left")': 'padding=True, padding_side="right")'})
def batch_right_padding(): ...


@mutant("batch_generate", "the prompt is returned with its continuation",
        replace={'new = output[:, batch["input_ids"].shape[1]:]': "new = output"})
def batch_returns_the_prompt_too(): ...


@mutant("batch_generate", "the special tokens are kept when decoding: eos and the pads after it end up in the text",
        replace={"batch_decode(new, skip_special_tokens=True)": "batch_decode(new, skip_special_tokens=False)"})
def batch_keeps_special_tokens(): ...


@mutant("batch_generate", "each text is stripped: a continuation that starts with a space loses it",
        replace={"return tokenizer.batch_decode(new, skip_special_tokens=True)":
                 "return [text.strip() for text in tokenizer.batch_decode(new, skip_special_tokens=True)]"})
def batch_strips_the_text(): ...


@mistake("batch_generate", "tokenizer.padding_side is set to 'left' and left that way: the caller's tokenizer now "
                           "pads its training batches on the left")
def batch_changes_the_tokenizer(model, tokenizer, prompts, max_new_tokens=20):
    if isinstance(prompts, list) and prompts:
        tokenizer.padding_side = "left"
    return batch_generate(model, tokenizer, prompts, max_new_tokens)


@mutant("batch_generate", "the model is not put in eval mode: dropout makes greedy generation random",
        replace={"    model.eval()\n": "    pass\n"})
def batch_keeps_dropout(): ...


@mutant("batch_generate", "the model's mode is not restored afterwards", replace={"        model.train(was_training)\n":
                                                                               "        pass\n"})
def batch_leaves_eval_mode(): ...


def _greedy_loop(model, tokenizer, prompts, max_new_tokens, *, positions_from_mask=True, pass_mask=True):
    """Batched greedy decoding without generate: left padding, the whole sequence each step, finished rows padded."""
    if isinstance(prompts, str) or any(not isinstance(p, str) for p in prompts):
        raise ValueError(f"prompts must be strings: {prompts!r}")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens!r}")
    empty = [i for i, p in enumerate(prompts) if p == ""]
    if empty:
        raise ValueError(f"prompt {empty[0]} is empty")
    if tokenizer.pad_token_id is None:
        raise ValueError("no pad token")
    if len(prompts) == 0:
        return []
    encoded = [tokenizer.encode(p) for p in prompts]
    width = max(map(len, encoded))
    ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(e)) + e for e in encoded])
    mask = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in encoded])
    done = torch.zeros(len(prompts), dtype=torch.bool)
    new = []
    mode = model.training
    model.train(False)
    try:
        with torch.no_grad():
            for _ in range(max_new_tokens):
                if positions_from_mask:
                    positions = (mask.cumsum(1) - 1).clamp_min(0)
                else:  # nanoGPT's arange: right for one prompt, shifted by the pads in a left-padded batch
                    positions = torch.arange(ids.shape[1]).expand_as(ids)
                logits = model(input_ids=ids, attention_mask=mask if pass_mask else None,
                               position_ids=positions).logits[:, -1]
                nxt = torch.where(done, torch.full_like(done, tokenizer.pad_token_id, dtype=torch.long),
                                  logits.argmax(-1))
                new.append(nxt)
                done = done | (nxt == tokenizer.eos_token_id)
                ids = torch.cat([ids, nxt[:, None]], 1)
                mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
                if bool(done.all()):
                    break
    finally:
        model.train(mode)
    rows = torch.stack(new, 1).tolist()
    return [tokenizer.decode(row, skip_special_tokens=True) for row in rows]


@mistake("batch_generate", "a loop of its own that numbers positions 0, 1, 2 ... from the first column (nanoGPT's "
                           "arange): in a left-padded batch a short prompt's tokens get the wrong positions")
def batch_positions_from_the_first_column(model, tokenizer, prompts, max_new_tokens=20):
    return _greedy_loop(model, tokenizer, prompts, max_new_tokens, positions_from_mask=False)


@mistake("batch_generate", "a loop of its own that does not pass the attention mask: real tokens attend to the pads")
def batch_without_attention_mask(model, tokenizer, prompts, max_new_tokens=20):
    return _greedy_loop(model, tokenizer, prompts, max_new_tokens, pass_mask=False)


@variant("batch_generate", "its own greedy loop without generate: left padding, positions from the attention mask, "
                           "the whole sequence each step, finished rows padded")
def batch_own_loop_variant(model, tokenizer, prompts, max_new_tokens=20):
    return _greedy_loop(model, tokenizer, prompts, max_new_tokens)


@variant("batch_generate", "one prompt at a time (correct, only slower): each row equals its own generate call")
def batch_one_at_a_time_variant(model, tokenizer, prompts, max_new_tokens=20):
    if isinstance(prompts, str) or not all(isinstance(p, str) and p for p in prompts):
        bad = prompts if isinstance(prompts, str) else next(
            (f"prompt {i}: {p!r}" for i, p in enumerate(prompts) if not isinstance(p, str) or not p))
        raise ValueError(f"bad prompts: {bad}")
    if type(max_new_tokens) is not int or max_new_tokens < 1:
        raise ValueError(f"bad max_new_tokens {max_new_tokens!r}")
    if tokenizer.pad_token_id is None:
        raise ValueError("the tokenizer needs a pad token")
    was = model.training
    model.eval()
    try:
        texts = []
        for prompt in prompts:
            ids = tokenizer(prompt, return_tensors="pt")
            with torch.no_grad():
                out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False,
                                     pad_token_id=tokenizer.pad_token_id)
            texts.append(tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True))
        return texts
    finally:
        model.train(was)


@variant("batch_generate", "sets tokenizer.padding_side to 'left' and puts it back in a `finally:`, tokenizes with "
                           "padding='longest', generates under torch.inference_mode with num_beams=1")
def batch_restores_padding_side_variant(model, tokenizer, prompts, max_new_tokens=20):
    if isinstance(prompts, str) or any(not isinstance(p, str) for p in prompts):
        raise ValueError(f"prompts: {prompts!r}")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens <= 0:
        raise ValueError(f"max_new_tokens: {max_new_tokens!r}")
    for i, p in enumerate(prompts):
        if p == "":
            raise ValueError(f"prompt #{i} is empty")
    if tokenizer.pad_token is None:
        raise ValueError("set a pad token first")
    if len(prompts) == 0:
        return []
    side, was = tokenizer.padding_side, model.training
    tokenizer.padding_side = "left"
    try:
        enc = tokenizer(list(prompts), padding="longest", return_tensors="pt")
        model.eval()
        with torch.inference_mode():
            out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                                 pad_token_id=tokenizer.pad_token_id)
    finally:
        tokenizer.padding_side = side
        model.train(was)
    width = enc["input_ids"].shape[-1]
    return [tokenizer.decode(row[width:], skip_special_tokens=True) for row in out]


# --------------------------------------------------------------------------------------------------
# content_filter


@mistake("content_filter", "a substring test: 'ass' is flagged in 'class' and 'passage'")
def filter_substrings(text, blocklist):
    content_filter(text, blocklist)  # the same errors for bad input
    return [entry for entry in blocklist if entry.lower() in text.lower()]


@mutant("content_filter", "case-sensitive: 'BAD' does not match 'bad'", replace={", flags=re.IGNORECASE": ""})
def filter_case_sensitive(): ...


@mutant("content_filter", "the entry is used as a regular expression without re.escape: 'a.b' matches 'axb'",
        replace={"{re.escape(entry)}": "{entry}"})
def filter_without_escape(): ...


@mutant("content_filter", "\\b word boundaries: an entry that ends in punctuation ('c++') is never found before a "
                          "space",
        replace={r'rf"(?<!\w){re.escape(entry)}(?!\w)"': r'rf"\b{re.escape(entry)}\b"'})
def filter_backslash_b(): ...


@mutant("content_filter", "the word boundaries are ASCII-only ([A-Za-z0-9_]): 'caf' is flagged in 'café', whose é is "
                          "a letter",
        replace={r'rf"(?<!\w){re.escape(entry)}(?!\w)"': r'rf"(?<![A-Za-z0-9_]){re.escape(entry)}(?![A-Za-z0-9_])"'})
def filter_ascii_boundaries(): ...


@mutant("content_filter", "the entry is stripped before matching: ' bad' (with its space) matches 'bad' at the start "
                          "of a text, though entries are matched literally",
        replace={"{re.escape(entry)}": "{re.escape(entry.strip())}"})
def filter_strips_entries(): ...


@mistake("content_filter", "the text and the entries are casefolded instead of matched with re.IGNORECASE: 'straße' "
                           "matches 'Strasse'")
def filter_casefolds(text, blocklist):
    content_filter(text, blocklist)  # the same errors for bad input
    folded = text.casefold()
    return [entry for entry in blocklist if re.search(rf"(?<!\w){re.escape(entry.casefold())}(?!\w)", folded)]


@mistake("content_filter", "the text is split on whitespace and each word compared: 'bad!' and phrases never match")
def filter_split_words(text, blocklist):
    content_filter(text, blocklist)  # the same errors for bad input
    words = {w.lower() for w in text.split()}
    return [entry for entry in blocklist if entry.lower() in words]


@mistake("content_filter", "the matches are reported lowercased instead of as spelled in the blocklist")
def filter_lowercases_entries(text, blocklist):
    return [entry.lower() for entry in content_filter(text, blocklist)]


@mistake("content_filter", "duplicates are removed and the result is sorted, instead of blocklist order")
def filter_sorted_unique(text, blocklist):
    return sorted(set(content_filter(text, blocklist)))


@variant("content_filter", "finds every occurrence with re.finditer on the escaped entry and checks the characters "
                           "around it with str methods")
def filter_scan_variant(text, blocklist):
    if type(text) is not str:
        raise ValueError(f"text must be a str, not {text!r}")
    if type(blocklist) is str:
        raise ValueError(f"blocklist {blocklist!r} is a string, not a list of words")
    hits = []
    for entry in list(blocklist):
        if type(entry) is not str or entry.isspace() or entry == "":
            raise ValueError(f"bad blocklist entry {entry!r}")
        for m in re.finditer(re.escape(entry), text, re.IGNORECASE):
            before = text[m.start() - 1] if m.start() else " "
            after = text[m.end()] if m.end() < len(text) else " "
            if not (before.isalnum() or before == "_") and not (after.isalnum() or after == "_"):
                hits.append(entry)
                break
    return hits


@variant("content_filter", "one consuming pattern (?:^|\\W)entry(?:\\W|$) per entry, all compiled before searching")
def filter_nonword_groups_variant(text, blocklist):
    if not isinstance(text, str):
        raise ValueError(f"text should be str, got {type(text).__name__}: {text!r}")
    if isinstance(blocklist, str):
        raise ValueError(f"blocklist should be a list, got the string {blocklist!r}")
    patterns = []
    for entry in blocklist:
        if not isinstance(entry, str) or entry.strip() == "":
            raise ValueError(f"invalid blocklist entry: {entry!r}")
        patterns.append((entry, re.compile(r"(?:^|\W)" + re.escape(entry) + r"(?:\W|$)", re.IGNORECASE)))
    return [entry for entry, pattern in patterns if pattern.search(text)]
