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


@variant("quantize_int8", "multiplies by 127 / absmax (the reciprocal) and clamps zero rows through absmax.clamp")
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
    q = (wide * torch.where(nonzero, 127 / absmax.double().clamp_min(1e-300), 1.0)).round()
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


# --------------------------------------------------------------------------------------------------
# create_app


def _flawed_app(model, tokenizer, max_concurrency: int, max_queue: int, flaw: str):
    """The reference's create_app with one flaw switched on (a copy: catalogue mutants of the reference are compiled
    with postponed annotations, under which FastAPI cannot see request models defined inside a function)."""
    import copy as copying
    from contextlib import asynccontextmanager

    import anyio
    from fastapi import FastAPI
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from pydantic import BaseModel, ConfigDict, Field

    if isinstance(max_concurrency, bool) or not isinstance(max_concurrency, int) or max_concurrency < 1:
        raise ValueError(f"max_concurrency must be a positive int, got {max_concurrency!r}")
    if isinstance(max_queue, bool) or not isinstance(max_queue, int) or max_queue < 0:
        raise ValueError(f"max_queue must be an int >= 0, got {max_queue!r}")
    context = model.config.max_position_embeddings
    eos_token_id = tokenizer.eos_token_id
    config = ConfigDict(extra="ignore" if flaw == "ignores_unknown_fields" else "forbid", strict=flaw != "lax_types")
    default_length, longest = (100, 100) if flaw == "default_100" else (20, MAX_NEW_TOKENS)

    class GenerateRequest(BaseModel):
        model_config = config
        prompt: str = Field(min_length=0 if flaw == "empty_prompt" else 1,
                            max_length=None if flaw == "unbounded_prompt" else MAX_PROMPT_CHARS)
        max_new_tokens: int = Field(default_length, ge=1,
                                    le=None if flaw == "unbounded_max_new_tokens" else longest)
        temperature: float = Field(1.0, gt=None if flaw == "zero_temperature" else 0.0,
                                   ge=0.0 if flaw == "zero_temperature" else None,
                                   le=None if flaw == "unbounded_temperature" else 2.0, allow_inf_nan=False)
        do_sample: bool = False
        seed: int | None = Field(None, ge=None if flaw == "unbounded_seed" else 0,
                                 le=None if flaw == "unbounded_seed" else 2**32 - 1)

    class GenerateResponse(BaseModel):
        generated_text: str
        new_tokens: int

    class Busy(BaseModel):
        detail: str

    def generate_ids(prompt_ids, max_new_tokens, temperature, do_sample, seed):
        generator = torch.Generator()
        if flaw == "ignores_seed":
            generator.manual_seed(0)
        elif seed is None:
            generator.seed()
        elif flaw == "global_rng":
            torch.manual_seed(seed)
            generator = None
        else:
            generator.manual_seed(seed)
        worker = copying.deepcopy(model) if flaw == "copies_model" else model
        new, past, step_input = [], None, torch.tensor([prompt_ids])
        with torch.no_grad():
            for _ in range(max_new_tokens):
                output = worker(input_ids=step_input, cache=past, use_cache=True)
                past = output.cache
                logits = output.logits[0, -1].double()
                if do_sample and flaw != "never_samples":
                    if flaw == "ignores_temperature":
                        scaled = logits - logits.max()
                    elif flaw == "multiplies_temperature":
                        scaled = (logits - logits.max()) * temperature
                    elif flaw == "overflow_temperature":
                        scaled = logits / temperature
                    else:
                        scaled = (logits - logits.max()) / temperature
                    token = int(torch.multinomial(torch.softmax(scaled, dim=-1), 1, generator=generator))
                else:
                    token = int(logits.argmax())
                new.append(token)
                if token == eos_token_id and flaw != "ignores_eos":
                    break
                step_input = torch.tensor([[token]])
        return new

    state = {"in_flight": 0, "limiter": None}

    @asynccontextmanager
    async def lifespan(app):
        if flaw != "keeps_dropout":
            model.eval()
        state["in_flight"] = 0
        state["limiter"] = anyio.CapacityLimiter(max_concurrency)
        yield

    app = FastAPI(lifespan=lifespan)
    limit = {"never_turns_away": 10**9, "ignores_queue": max_concurrency,
             "limit_off_by_one": max_concurrency + max_queue + 1}.get(flaw, max_concurrency + max_queue)
    responses = {} if flaw == "undocumented_503" else {503: {"model": Busy}}

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.post("/generate", response_model=GenerateResponse, responses=responses)
    async def generate(request: GenerateRequest):
        if state["in_flight"] >= limit:
            headers = {} if flaw == "no_retry_after" else {"Retry-After": "1"}
            return JSONResponse({"detail": "busy"}, status_code=503, headers=headers)
        prompt_ids = tokenizer(request.prompt)["input_ids"]
        needed = len(prompt_ids) + request.max_new_tokens
        too_long = {"no_context_check": False, "context_off_by_one": needed >= context}.get(flaw, needed > context)
        if too_long:
            raise RequestValidationError([{"type": "value_error", "loc": ("body", "prompt"),
                                           "msg": f"{len(prompt_ids)} + {request.max_new_tokens} > {context}"}])
        args = (prompt_ids, request.max_new_tokens, request.temperature, request.do_sample, request.seed)
        state["in_flight"] += 1
        if flaw == "leaks_slot":
            new = await anyio.to_thread.run_sync(generate_ids, *args, limiter=state["limiter"])
            state["in_flight"] -= 1
        else:
            try:
                if flaw == "blocks_loop":
                    new = generate_ids(*args)
                else:
                    limiter = None if flaw == "unlimited_threads" else state["limiter"]
                    new = await anyio.to_thread.run_sync(generate_ids, *args, limiter=limiter)
            finally:
                state["in_flight"] -= 1
        ids = prompt_ids + new if flaw == "returns_prompt" else new
        count = len(prompt_ids) + len(new) if flaw == "counts_prompt" else len(new)
        return {"generated_text": tokenizer.decode(ids, skip_special_tokens=True), "new_tokens": count}

    return app


APP_FLAWS = {
    "copies_model": "the model is copied for every request (the learning path loaded it per request): seconds and "
                    "memory per call, and not the model the server was given",
    "unbounded_max_new_tokens": "max_new_tokens has no upper bound (the learning path accepted any max_length): one "
                                "request can keep the server busy for minutes",
    "blocks_loop": "the generation runs on the event loop inside `async def` (the learning path's bug): while it "
                   "computes, no other request, not even /health, is answered",
    "zero_temperature": "a temperature of 0 is accepted (ge instead of gt): sampling would divide by zero",
    "empty_prompt": "an empty prompt is accepted",
    "unbounded_prompt": "the prompt's length in characters is not bounded",
    "unbounded_temperature": "the temperature has no upper bound",
    "unbounded_seed": "seeds are not bounded (negative or huge seeds reach torch)",
    "never_turns_away": "requests are never turned away: every request waits, and under load they pile up until "
                        "clients time out",
    "ignores_queue": "the queue is ignored: a request is turned away as soon as max_concurrency are running",
    "limit_off_by_one": "one request too many is let in",
    "unlimited_threads": "generations are not limited to max_concurrency at once (no limiter on the worker threads)",
    "leaks_slot": "the slot is freed only when the generation succeeds (no `finally`): every failure leaks one until "
                  "the server answers only 503",
    "no_retry_after": "the 503 answer has no Retry-After header",
    "returns_prompt": "the answer includes the prompt (the learning path decoded output[0], prompt and all)",
    "counts_prompt": "new_tokens counts the prompt's tokens too",
    "global_rng": "sampling seeds torch's global RNG (torch.manual_seed), which every request in flight shares",
    "ignores_seed": "the seed is ignored: every sampled request uses the same fixed seed",
    "ignores_temperature": "the temperature is ignored when sampling",
    "multiplies_temperature": "the logits are multiplied by the temperature instead of divided by it",
    "overflow_temperature": "the logits are divided by the temperature before the max is subtracted: a tiny "
                            "temperature overflows to inf and the softmax gives nan",
    "never_samples": "do_sample is ignored: the answer is always greedy",
    "ignores_eos": "generation does not stop at the eos token",
    "keeps_dropout": "the model is not put in eval mode at start-up, so dropout makes greedy answers random",
    "lax_types": "lax types: \"5\" and 5.0 are accepted where an integer is required",
    "ignores_unknown_fields": "unknown fields (such as the learning path's max_length) are silently ignored",
    "no_context_check": "the prompt is not checked against the model's context: a long prompt crashes the model",
    "context_off_by_one": "a prompt that exactly fills the context is rejected (>= instead of >)",
    "default_100": "max_new_tokens defaults to 100 and goes up to 100 (the learning path's max_length)",
    "undocumented_503": "the 503 answer is not documented in the OpenAPI schema",
}


def _register_app_flaw(flaw: str, because: str) -> None:
    def create_app(model, tokenizer, *, max_concurrency=2, max_queue=16):
        return _flawed_app(model, tokenizer, max_concurrency, max_queue, flaw)

    create_app.__name__ = create_app.__qualname__ = f"app_{flaw}"
    mistake("create_app", because)(create_app)


for _flaw, _because in APP_FLAWS.items():
    _register_app_flaw(_flaw, _because)


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
