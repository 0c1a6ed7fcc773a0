"""Reference solutions for w23_deployment (Weeks 23-24: evaluation and deployment).

Fixes of the learning path's own code:
- ``evaluate_model`` compared each position's logits with the label at the SAME position (a causal LM
  predicts the NEXT token, so the labels must be shifted by one), and it weighted each batch by
  ``labels.numel()``, which counts the padding (-100) that the loss ignores; here the labels are shifted,
  -100 is ignored, and every real token counts once.
- its FastAPI app loaded the model and the tokenizer inside the request handler (once per request), ran
  the CPU-bound generation inside ``async def`` (so one request froze the whole server), and accepted any
  ``max_length`` and any temperature; here the model is set up once in the lifespan, generation runs in
  worker threads behind a bounded limit, and every field is validated (422 with a clear body).
- its Gradio callback returned a variable it never defined; here the callback returns the text it gets.
"""

# No ``from __future__ import annotations`` here: FastAPI reads the endpoints' type hints at run time, and the
# request models live inside create_app, where a hint kept as a string could not be resolved.

import math
import operator
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

IGNORE_INDEX = -100  # PyTorch's cross_entropy default: labels that take no part in the loss
MAX_NEW_TOKENS = 64  # the most tokens one /generate request may ask for
MAX_PROMPT_CHARS = 2000  # the longest prompt /generate accepts, in characters
INT8_MAX = 127  # symmetric int8: -127 .. 127 (-128 is never used, so q and -q are both representable)


def _is_int(value) -> bool:
    """True for an int (or int-like such as numpy.int64), False for bools and floats."""
    if isinstance(value, bool):
        return False
    try:
        operator.index(value)
    except TypeError:
        return False
    return True


def _logits(output) -> Tensor:
    """A model's logits, whether it returns them directly or in an output object (Hugging Face)."""
    return output if isinstance(output, Tensor) else output.logits


# --------------------------------------------------------------------------------------------------
# evaluation


def evaluate_model(model: nn.Module, loader: Iterable[dict[str, Tensor]]) -> float:
    """Perplexity of a causal LM over a loader: exp(mean NLL of every real next-token prediction)."""
    was_training = model.training
    model.eval()  # dropout off: an evaluation must be deterministic
    total_nll, total_tokens = 0.0, 0
    try:
        with torch.no_grad():
            for batch in loader:
                input_ids, labels = batch["input_ids"], batch["labels"]
                if labels.shape != input_ids.shape:
                    raise ValueError(f"labels {tuple(labels.shape)} and input_ids {tuple(input_ids.shape)} differ")
                # the mask hides padding from the real tokens (it matters for left padding)
                output = model(input_ids, attention_mask=batch.get("attention_mask"))
                # position t predicts token t + 1: drop the last prediction and the first label
                logits = _logits(output)[:, :-1]
                targets = labels[:, 1:]
                # a sum, not a mean: batches with more real tokens must weigh more (token-weighted); .item()
                # makes it a Python float (float64), so thousands of tokens add up without rounding drift
                # (cross_entropy skips the targets equal to -100 by default: IGNORE_INDEX)
                total_nll += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                             reduction="sum").item()
                total_tokens += int((targets != IGNORE_INDEX).sum())
    finally:
        model.train(was_training)  # leave the model as the caller had it
    if total_tokens == 0:
        raise ValueError("the loader holds no token to predict (every label is -100, or there is no batch)")
    try:
        return math.exp(total_nll / total_tokens)
    except OverflowError:  # a mean NLL above ~709: infinite perplexity for every practical purpose
        return math.inf


def _ngrams(tokens: list[str], max_order: int) -> Counter:
    return Counter(tuple(tokens[i:i + n]) for n in range(1, max_order + 1) for i in range(len(tokens) - n + 1))


def corpus_bleu(hypotheses: Sequence[str], references: Sequence[Sequence[str]], max_order: int = 4,
                smooth: bool = False) -> float:
    """Corpus BLEU (0-100) of whitespace-tokenised hypotheses, each with one or more references."""
    if isinstance(hypotheses, str) or not all(isinstance(h, str) for h in hypotheses):
        raise ValueError(f"hypotheses must be a list of strings, got {hypotheses!r:.80}")
    if len(hypotheses) == 0 or len(hypotheses) != len(references):
        raise ValueError(f"need one list of references per hypothesis: got {len(hypotheses)} hypotheses and "
                         f"{len(references)} reference lists")
    if not _is_int(max_order) or max_order < 1:
        raise ValueError(f"max_order must be a positive int, got {max_order!r}")
    matches, totals = [0] * max_order, [0] * max_order
    hyp_len = ref_len = 0
    for i, hypothesis in enumerate(hypotheses):
        refs = references[i]
        if isinstance(refs, str) or len(refs) == 0 or not all(isinstance(r, str) for r in refs):
            raise ValueError(f"references[{i}] must be a non-empty list of strings, got {refs!r:.80}")
        tokens = hypothesis.split()
        ref_tokens = [r.split() for r in refs]
        # clip each n-gram's count by the most times ONE reference uses it: "the the the" earns no credit
        # for repeating a word a reference has once
        best = Counter()
        for r in ref_tokens:
            best |= _ngrams(r, max_order)  # | keeps the maximum count of each n-gram
        for gram, count in _ngrams(tokens, max_order).items():
            totals[len(gram) - 1] += count
            matches[len(gram) - 1] += min(count, best[gram])
        hyp_len += len(tokens)
        # the reference length closest to the hypothesis (ties: the shorter one), as sacrebleu does
        ref_len += min((abs(len(r) - len(tokens)), len(r)) for r in ref_tokens)[1]
    if not any(matches):  # also an empty output: nothing matched
        return 0.0
    log_precisions = []
    zeros = 0
    for n in range(max_order):
        if totals[n] == 0:  # no hypothesis is n tokens long: that precision is undefined, BLEU is 0
            return 0.0
        if matches[n] == 0:
            if not smooth:
                return 0.0  # log(0): one order without a match zeroes the geometric mean
            zeros += 1  # "exp" smoothing (NIST): the k-th empty order counts as 1 / 2^k matches
            log_precisions.append(math.log(1.0 / (2**zeros * totals[n])))
        else:
            log_precisions.append(math.log(matches[n] / totals[n]))
    # brevity penalty: precision alone rewards short output, so hypotheses shorter than their references pay
    brevity = 1.0 if hyp_len >= ref_len else math.exp(1.0 - ref_len / hyp_len)
    return 100.0 * brevity * math.exp(sum(log_precisions) / max_order)


# --------------------------------------------------------------------------------------------------
# int8 quantisation


def quantize_int8(w: Tensor, per_channel: bool = True) -> tuple[Tensor, Tensor]:
    """Symmetric absmax int8 quantisation: returns ``(q, scale)`` with ``w ~ q * scale``."""
    if not w.is_floating_point():
        raise ValueError(f"w must be a floating point tensor, got dtype {w.dtype}")
    if per_channel and w.ndim == 0:
        raise ValueError("per_channel quantisation needs at least one dimension (one scale per row)")
    if not torch.isfinite(w).all():
        raise ValueError("w contains nan or inf: no finite scale can represent it")
    # one scale per row (per output channel of a Linear weight), shaped to broadcast against w; or one in all
    shape = (w.shape[0],) + (1,) * (w.ndim - 1) if per_channel else ()
    if w.numel() == 0:
        absmax = w.new_zeros(shape)
    elif per_channel:
        absmax = w.abs().reshape(w.shape[0], -1).amax(dim=1).reshape(shape)
    else:
        absmax = w.abs().amax()
    # an all-zero row has absmax 0: scale 1 keeps q = 0 and avoids 0 / 0 = nan
    scale = torch.where(absmax > 0, absmax / INT8_MAX, torch.ones_like(absmax))
    # divide in float32 at least: a bfloat16 quotient has 8 bits, so 127 comes out as 126.5 or 128 (and int8(128)
    # wraps around to -128); exactly, |w / scale| <= 127.25, so the clamp is only a guard
    compute = torch.promote_types(w.dtype, torch.float32)
    q = torch.round(w.to(compute) / scale).clamp(-INT8_MAX, INT8_MAX).to(torch.int8)  # the scale is promoted too
    return q, scale


def dequantize(q: Tensor, scale: Tensor) -> Tensor:
    """The float tensor ``q * scale`` in ``scale``'s dtype."""
    if q.dtype != torch.int8:
        raise ValueError(f"q must be an int8 tensor, got dtype {q.dtype}")
    return q * scale  # an int8 tensor times a float tensor promotes to the float's dtype


class QuantizedLinear(nn.Module):
    """An ``nn.Linear`` whose weight is stored in int8 (4x smaller than float32), dequantized on the fly."""

    def __init__(self, linear: nn.Linear, per_channel: bool = True) -> None:
        super().__init__()
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        q, scale = quantize_int8(linear.weight.detach(), per_channel=per_channel)
        # buffers, not parameters: they are saved and moved with the module, but nothing trains them
        self.register_buffer("weight_int8", q)
        self.register_buffer("scale", scale)
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().clone())

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, dequantize(self.weight_int8, self.scale), self.bias)


# --------------------------------------------------------------------------------------------------
# serving


def create_app(model, tokenizer, *, max_concurrency: int = 2, max_queue: int = 16):
    """A FastAPI app serving ``model``: POST /generate and GET /health."""
    from contextlib import asynccontextmanager

    import anyio
    from fastapi import FastAPI
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from pydantic import BaseModel, ConfigDict, Field

    if not _is_int(max_concurrency) or max_concurrency < 1:
        raise ValueError(f"max_concurrency must be a positive int, got {max_concurrency!r}")
    if not _is_int(max_queue) or max_queue < 0:
        raise ValueError(f"max_queue must be an int >= 0, got {max_queue!r}")
    context = model.config.max_position_embeddings
    eos_token_id = tokenizer.eos_token_id

    class GenerateRequest(BaseModel):
        # strict: "5" or 5.5 for an int, and fields the API does not know (the learning path's max_length),
        # are errors the client hears about instead of guesses the server makes
        model_config = ConfigDict(extra="forbid", strict=True)
        prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
        max_new_tokens: int = Field(20, ge=1, le=MAX_NEW_TOKENS)  # bounded: each token costs a forward pass
        temperature: float = Field(1.0, gt=0.0, le=2.0)  # 0 would divide by zero (and nan fails both bounds)
        do_sample: bool = False
        seed: int | None = Field(None, ge=0, le=2**32 - 1)  # a bound that JSON numbers (doubles) hold exactly

    class GenerateResponse(BaseModel):
        generated_text: str
        new_tokens: int

    class Health(BaseModel):
        status: str

    class Busy(BaseModel):
        detail: str

    def generate_ids(prompt_ids: list[int], max_new_tokens: int, temperature: float, do_sample: bool,
                     seed: int | None) -> list[int]:
        """The new token ids for one prompt, greedy or sampled. Runs in a worker thread.

        It draws from a ``torch.Generator`` of its own: the global RNG is shared by every request in flight, so
        seeding it would let concurrent requests steal each other's numbers.
        """
        generator = torch.Generator()
        if seed is None:
            generator.seed()  # fresh entropy for this request only
        else:
            generator.manual_seed(seed)
        new: list[int] = []
        past = None
        step_input = torch.tensor([prompt_ids])
        with torch.no_grad():
            for _ in range(max_new_tokens):
                output = model(input_ids=step_input, cache=past, use_cache=True)
                past = output.cache  # the keys and values so far: each later step feeds only the new token
                logits = output.logits[0, -1]
                if do_sample:
                    # subtract the max BEFORE dividing: logits / 1e-300 overflow to inf, and inf - inf is nan
                    probs = torch.softmax((logits - logits.max()) / temperature, dim=-1)
                    token = int(torch.multinomial(probs, 1, generator=generator))
                else:
                    token = int(logits.argmax())
                new.append(token)
                if token == eos_token_id:
                    break
                step_input = torch.tensor([[token]])
        return new

    state = {}  # requests in progress and the thread limiter, set up at start-up

    @asynccontextmanager
    async def lifespan(app):
        # once, before the first request: eval mode (dropout off) and the limit of generations at once
        model.eval()
        state["in_flight"] = 0
        state["limiter"] = anyio.CapacityLimiter(max_concurrency)
        yield

    app = FastAPI(lifespan=lifespan)

    @app.get("/health", response_model=Health)
    async def health():
        return {"status": "ok"}

    @app.post("/generate", response_model=GenerateResponse,
              responses={503: {"model": Busy}})
    async def generate(request: GenerateRequest):
        # requests running or waiting for a slot; beyond that answer at once instead of piling up
        if state["in_flight"] >= max_concurrency + max_queue:
            return JSONResponse({"detail": f"server busy: {state['in_flight']} requests in progress, retry later"},
                                status_code=503, headers={"Retry-After": "1"})
        # the tokenizer runs here, on the event loop: a fast tokenizer is not safe to call from two threads
        # at once, and tokenizing a short prompt takes microseconds
        prompt_ids = tokenizer(request.prompt)["input_ids"]
        if len(prompt_ids) + request.max_new_tokens > context:
            raise RequestValidationError([{
                "type": "value_error", "loc": ("body", "prompt"), "input": request.prompt,
                "msg": f"the prompt has {len(prompt_ids)} tokens; with max_new_tokens={request.max_new_tokens} "
                       f"that exceeds the model's context of {context} tokens",
            }])
        state["in_flight"] += 1
        try:
            # the forward passes run in a worker thread: the event loop keeps answering other requests
            new = await anyio.to_thread.run_sync(generate_ids, prompt_ids, request.max_new_tokens,
                                                 request.temperature, request.do_sample, request.seed,
                                                 limiter=state["limiter"])
        finally:
            state["in_flight"] -= 1
        return {"generated_text": tokenizer.decode(new, skip_special_tokens=True), "new_tokens": len(new)}

    return app


def create_demo(generate_fn: Callable[[str, int, float], str]):
    """A Gradio interface around ``generate_fn(prompt, max_new_tokens, temperature)``, built, not launched."""
    import gradio as gr

    def respond(prompt: str, max_new_tokens: float, temperature: float) -> str:
        # a Slider hands over a float even with step=1; the generation function wants an int
        return generate_fn(prompt, int(max_new_tokens), float(temperature))

    return gr.Interface(
        fn=respond,
        inputs=[
            gr.Textbox(label="Prompt"),
            gr.Slider(1, MAX_NEW_TOKENS, value=20, step=1, label="Max new tokens"),
            gr.Slider(0.1, 2.0, value=1.0, step=0.1, label="Temperature"),
        ],
        outputs=gr.Textbox(label="Generated text"),
        title="Tiny language model",
    )


# --------------------------------------------------------------------------------------------------
# batched generation and safety


def batch_generate(model, tokenizer, prompts: Sequence[str], max_new_tokens: int = 20) -> list[str]:
    """Greedy continuations of several prompts in one left-padded batch; returns the new text of each."""
    if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts):
        raise ValueError(f"prompts must be a list of strings, got {prompts!r:.80}")
    if not _is_int(max_new_tokens) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")
    for i, prompt in enumerate(prompts):
        if not prompt:
            raise ValueError(f"prompts[{i}] is empty: there is nothing to continue")
    if tokenizer.pad_token_id is None:
        raise ValueError("the tokenizer has no pad token: a batch of prompts of different lengths needs one")
    if not prompts:
        return []
    # LEFT padding: every prompt ends at the last column, so the next token of every row is predicted from
    # the same position and generated tokens follow the prompt directly (right padding would put pads
    # between a short prompt and its continuation). padding_side= here leaves the caller's tokenizer alone.
    batch = tokenizer(list(prompts), return_tensors="pt", padding=True, padding_side="left")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            # the attention mask hides the pads; generate derives the positions from it, so a padded prompt
            # sees the same positions 0, 1, 2 ... as when it is alone
            output = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False,
                                    pad_token_id=tokenizer.pad_token_id)
    finally:
        model.train(was_training)
    new = output[:, batch["input_ids"].shape[1]:]
    # a row that ended early is padded after its end-of-text: skip_special_tokens drops both
    return tokenizer.batch_decode(new, skip_special_tokens=True)


def content_filter(text: str, blocklist: Sequence[str]) -> list[str]:
    """The blocklist entries that occur in ``text`` as whole words, ignoring case, in blocklist order."""
    if not isinstance(text, str):
        raise ValueError(f"text must be a string, got {text!r:.80}")
    if isinstance(blocklist, str):
        raise ValueError(f"blocklist must be a list of words, not the string {blocklist!r:.80}")
    found = []
    for entry in blocklist:
        if not isinstance(entry, str) or not entry.strip():
            raise ValueError(f"blocklist entries must be non-empty strings, got {entry!r}")
        # whole words: no word character (letter, digit, _) right before or after the match. \b would fail
        # for entries that start or end with punctuation ("c++"); re.escape makes "a.b" literal
        pattern = rf"(?<!\w){re.escape(entry)}(?!\w)"
        if re.search(pattern, text, flags=re.IGNORECASE):
            found.append(entry)
    return found
