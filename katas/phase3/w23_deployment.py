"""Kata w23_deployment (Weeks 23-24): evaluating a language model and serving it.

You measure a model, make it smaller, and put it behind an API that real clients can hit:

1. ``evaluate_model`` - perplexity over a data loader (the learning path's version, fixed);
2. ``corpus_bleu`` - BLEU from scratch, equal to ``sacrebleu.corpus_bleu``;
3. ``quantize_int8``, ``dequantize`` and ``QuantizedLinear`` - symmetric int8 weights, 4x smaller;
4. ``create_app`` - a FastAPI server with ``/generate`` and ``/health``: validated requests, the model set
   up once, generation off the event loop and a bounded number of requests in progress;
5. ``create_demo`` - a Gradio interface around a generation function (built, never launched here);
6. ``batch_generate`` - greedy generation for several prompts in one left-padded batch;
7. ``content_filter`` - a whole-word, case-insensitive blocklist filter.

The checks build tiny GPT-2 models from configs and train a tokenizer on text they write: nothing is
downloaded. The server checks start your app in-process with FastAPI's ``TestClient``, and one check serves
it with uvicorn on 127.0.0.1 and sends it a burst of concurrent requests. Run ``kata check w23_deployment``.
"""

# No ``from __future__ import annotations`` in this file: FastAPI reads the type hints of your endpoints while
# the app runs, and a request model defined inside ``create_app`` can only be found there if the hint is the
# class itself, not a string naming it.

import math  # noqa: F401 - math.exp, math.log, math.inf
import operator  # noqa: F401 - operator.index turns an int-like into an int (and rejects floats)
import re  # noqa: F401 - re.escape, re.search, re.IGNORECASE
from collections import Counter  # noqa: F401 - counting n-grams
from collections.abc import Callable, Iterable, Sequence

import torch  # noqa: F401 - torch.no_grad, torch.round, torch.Generator ...
import torch.nn.functional as F  # noqa: F401 - F.cross_entropy, F.linear
from torch import Tensor, nn

IGNORE_INDEX = -100  # PyTorch's cross_entropy default: labels that take no part in the loss
MAX_NEW_TOKENS = 64  # the most tokens one /generate request may ask for
MAX_PROMPT_CHARS = 2000  # the longest prompt /generate accepts, in characters
INT8_MAX = 127  # symmetric int8: -127 .. 127


# --------------------------------------------------------------------------------------------------
# evaluation


def evaluate_model(model: nn.Module, loader: Iterable[dict[str, Tensor]]) -> float:
    """The perplexity of a causal language model over every batch of ``loader``, as a Python float.

    Each batch is a dict with ``"input_ids"`` (B, T) and ``"labels"`` (B, T), ``torch.long`` tensors of the
    same shape, and optionally ``"attention_mask"`` (B, T) with 1 on real tokens and 0 on padding. A label of
    ``-100`` (``IGNORE_INDEX``) marks a position that is not scored (padding, or a prompt you do not want to
    grade). Call the model as ``model(input_ids, attention_mask=attention_mask)``, with the batch's mask or
    ``None`` when the batch has none; it returns the logits (B, T, V), either as a tensor or as an output
    object with a ``.logits`` attribute (every Hugging Face model does that).

    The learning path's version had two bugs that this one fixes:

    - **No shift.** A causal LM's logits at position t predict the token at t + 1. So compare
      ``logits[:, :-1]`` with ``labels[:, 1:]``: the last position predicts nothing we know, and the first
      label is never predicted. Comparing position t with label t asks the model to copy its input.
    - **Padding counted.** It weighted each batch by ``labels.numel()``, which counts the -100 positions that
      the loss ignores. Count only the predictions whose (shifted) label is not -100.

    Perplexity = exp(total NLL / number of scored tokens), where the NLL of one prediction is
    ``-log_softmax(logits[b, t])[labels[b, t + 1]]`` and both sums run over the WHOLE loader: a batch with
    more real tokens weighs more (token-weighted, not an average of per-batch numbers). Use a numerically
    stable loss (``F.cross_entropy(..., ignore_index=-100, reduction="sum")``), never ``log(softmax(...))``,
    which gives -inf once one logit is far above the others, and add the batch sums up in float64 (Python
    floats are float64). When exp overflows (a mean NLL above ~709), return ``math.inf``.

    Rules:

    - Iterate ``loader`` exactly once: it may be a ``DataLoader``, a list, or a generator that can be read
      only once.
    - Evaluate with dropout off (``model.eval()``) and without building a graph (``torch.no_grad()``): a
      graph over a whole evaluation set runs out of memory on real models. Afterwards put the model back in
      the mode it was in (``model.train(was_training)``), even when something fails.
    - Modify neither the batches nor the model's weights.
    - ``ValueError`` when a batch's labels and input_ids differ in shape, and when the loader holds no
      scored token at all (no batch, or only -100 labels, or only sequences of length 1).

    Example::

        >>> loader = [{"input_ids": ids, "labels": ids.masked_fill(mask == 0, -100), "attention_mask": mask}]
        >>> evaluate_model(model, loader)   # a random model over a vocabulary of 300: about 300
        301.7
    """
    # TODO(w23_deployment.evaluate_model): write your implementation here.
    raise NotImplementedError("w23_deployment.evaluate_model is not implemented yet (try `kata hint w23_deployment.evaluate_model`)")


def corpus_bleu(hypotheses: Sequence[str], references: Sequence[Sequence[str]], max_order: int = 4,
                smooth: bool = False) -> float:
    """Corpus-level BLEU, on sacrebleu's 0-100 scale, of ``hypotheses`` against their ``references``.

    ``hypotheses`` is a list of strings (the model's outputs); ``references[i]`` is the list of one or more
    reference strings for ``hypotheses[i]`` (the number may differ from one hypothesis to the next). Careful:
    sacrebleu takes the transpose, one list per reference "stream"; for equal numbers of references,
    ``corpus_bleu(hyps, refs)`` equals ``sacrebleu.corpus_bleu(hyps, [list(s) for s in zip(*refs)],
    tokenize="none", smooth_method="none").score`` (``"exp"`` when ``smooth=True``; the checks compare).

    Tokens are the whitespace-separated words of each string (``str.split()``), case-sensitive. For
    n = 1 .. ``max_order``:

    - every n-gram of a hypothesis counts, and it matches at most as often as it occurs in ONE of its
      references (the largest count over its references: "clipping"; otherwise "the the the the" earns full
      precision against "the cat"). ``p_n`` = (matches summed over the corpus) / (n-grams summed over the
      corpus): corpus-level sums, not an average of sentence scores.
    - BLEU = 100 * BP * exp(mean over n of log p_n), a geometric mean.
    - Brevity penalty: c = total hypothesis length, r = sum over sentences of the reference length closest
      to that hypothesis's length (a tie goes to the shorter reference). BP = 1 when c >= r, else
      exp(1 - r / c). Without it, a system that outputs one sure word per sentence scores 100.
    - When nothing matches at all, or some order has no n-gram at all (every hypothesis shorter than n),
      BLEU is 0. When some order has n-grams but no match: without smoothing BLEU is 0 (log 0); with
      ``smooth=True`` (sacrebleu's "exp" method), the k-th such order (k = 1, 2, ...) gets
      p_n = 1 / (2**k * total_n) instead.

    ``ValueError`` (naming the problem) when ``hypotheses`` is a string or not a list of strings, when it is
    empty, when the two lists differ in length, when some ``references[i]`` is empty, a string or not a list
    of strings, and when ``max_order`` is not a positive int (bools and floats are not). Inputs are not
    modified.

    Example::

        >>> corpus_bleu(["the cat sat on the mat"], [["the cat sat on the mat"]])
        100.0
        >>> round(corpus_bleu(["the cat sat"], [["the cat sat on the mat"]], max_order=2), 2)   # BP = e^-1
        36.79
    """
    # TODO(w23_deployment.corpus_bleu): write your implementation here.
    raise NotImplementedError("w23_deployment.corpus_bleu is not implemented yet (try `kata hint w23_deployment.corpus_bleu`)")


# --------------------------------------------------------------------------------------------------
# int8 quantisation


def quantize_int8(w: Tensor, per_channel: bool = True) -> tuple[Tensor, Tensor]:
    """Symmetric ("absmax") int8 quantisation: returns ``(q, scale)`` with ``w`` close to ``q * scale``.

    - ``scale`` = max |w| / 127, so the largest weight maps to +-127 and every weight lands in -127 .. 127
      (-128 is never used: the range stays symmetric, and -q is always representable).
      With ``per_channel=True`` (the default) there is one scale per row, i.e. per entry of dimension 0 (the
      output channels of a Linear weight (out, in)): ``scale`` has shape (rows, 1, ..., 1), as many
      dimensions as ``w``, so that ``q * scale`` broadcasts (a 1-D ``w`` gives one scale per element, shape
      (n,)). One scale for the whole tensor is coarser: one large weight costs every other row its
      precision. With ``per_channel=False``, ``scale`` is a 0-dim tensor.
    - ``q`` = round(w / scale) clamped to -127 .. 127, as ``torch.int8``, same shape and device as ``w``.
      Round to the nearest integer (a tie may go either way), so that every element's error is at most half
      a step: ``|q * scale - w| <= scale / 2``. Divide in float32 at least (``torch.promote_types(w.dtype,
      torch.float32)``): a bfloat16 quotient keeps 8 bits, so 127 comes out as 126.5 or 128, and
      ``int8(128)`` wraps around to -128.
    - ``scale`` has ``w``'s dtype and device. A row that is all zeros (or an all-zero tensor) has max |w| = 0;
      dividing by a scale of 0 gives 0/0 = nan, so such a row gets scale 1.0 (and q = 0).
    - ``w`` may have any floating dtype and shape, with 0 elements too; it is not modified.
    - ``ValueError`` when ``w`` is not floating point, contains nan or inf (no finite scale represents
      them), or is 0-dimensional with ``per_channel=True`` (it has no rows).

    Example::

        >>> q, scale = quantize_int8(torch.tensor([[0.6, -1.0], [0.0, 0.0]]))
        >>> q, scale
        (tensor([[  76, -127], [   0,    0]], dtype=torch.int8), tensor([[0.0079], [1.0000]]))
    """
    # TODO(w23_deployment.quantize_int8): write your implementation here.
    raise NotImplementedError("w23_deployment.quantize_int8 is not implemented yet (try `kata hint w23_deployment.quantize_int8`)")


def dequantize(q: Tensor, scale: Tensor) -> Tensor:
    """The float tensor ``q * scale``, in ``scale``'s dtype (``q`` as returned by ``quantize_int8``).

    ``q`` must be ``torch.int8`` (``ValueError`` otherwise: an int64 tensor here means something went
    wrong earlier); ``scale`` broadcasts against it. Neither is modified.

    Example::

        >>> dequantize(*quantize_int8(torch.tensor([[0.6, -1.0]])))
        tensor([[ 0.5984, -1.0000]])
    """
    # TODO(w23_deployment.quantize_int8): write your implementation here.
    raise NotImplementedError("w23_deployment.dequantize is not implemented yet (part of w23_deployment.quantize_int8: try `kata hint w23_deployment.quantize_int8`)")


class QuantizedLinear(nn.Module):
    """A drop-in replacement for an ``nn.Linear`` that stores its weight in int8 (4x smaller than float32).

    ``QuantizedLinear(linear, per_channel=True)`` quantises ``linear.weight`` (out, in) with your
    ``quantize_int8`` and keeps, as BUFFERS (``self.register_buffer``), never parameters:

    - ``weight_int8``: the int8 weight (out, in);
    - ``scale``: its scale, (out, 1) per channel or 0-dim per tensor, in the weight's dtype;
    - ``bias``: a copy of ``linear.bias`` (out,), or ``None`` when the layer has no bias (register ``None``).

    Buffers move with ``.to(device)`` and are saved in the ``state_dict`` (exactly these keys), but nothing
    trains them: the module has no parameters. Keep no reference to the float weight (that would keep the
    memory you meant to save), and copy the bias so that later changes to ``linear`` do not leak in.
    ``linear`` itself is left unchanged. Also store ``in_features`` and ``out_features``.

    ``forward(x)`` takes (..., in) and returns (..., out) = ``x @ dequantize(weight_int8, scale).T + bias``
    (``F.linear`` does exactly that), in the weight's dtype. Since each weight is off by at most half a step,
    the output is close to ``linear(x)``: off by at most sum_j |x_j| * scale / 2 per output.

    Example::

        >>> layer = QuantizedLinear(nn.Linear(4, 3))
        >>> layer(torch.randn(2, 4)).shape, [name for name, _ in layer.named_buffers()]
        (torch.Size([2, 3]), ['weight_int8', 'scale', 'bias'])
    """

    def __init__(self, linear: nn.Linear, per_channel: bool = True) -> None:
        # TODO(w23_deployment.quantize_int8): write your implementation here.
        raise NotImplementedError("w23_deployment.QuantizedLinear.__init__ is not implemented yet (part of w23_deployment.quantize_int8: try `kata hint w23_deployment.quantize_int8`)")

    def forward(self, x: Tensor) -> Tensor:
        # TODO(w23_deployment.quantize_int8): write your implementation here.
        raise NotImplementedError("w23_deployment.QuantizedLinear.forward is not implemented yet (part of w23_deployment.quantize_int8: try `kata hint w23_deployment.quantize_int8`)")


# --------------------------------------------------------------------------------------------------
# serving


def create_app(model, tokenizer, *, max_concurrency: int = 2, max_queue: int = 16):
    """A FastAPI app that serves ``model`` (a causal LM such as a Hugging Face GPT-2) with ``tokenizer``.

    The learning path's server loaded the model and the tokenizer inside the request handler (once per
    request), generated inside an ``async def`` (so while one request computed, the whole server froze:
    not even a health check got through), and accepted any ``max_length`` and temperature. Build it right:

    **Endpoints.**

    - ``GET /health`` -> 200 ``{"status": "ok"}``.
    - ``POST /generate`` with a JSON body, validated by a pydantic model (with ``extra="forbid"`` and
      ``strict=True`` in its ``model_config``):

      ============== ============ ================================================================
      field          default      rule
      ============== ============ ================================================================
      prompt         (required)   a string of 1 to ``MAX_PROMPT_CHARS`` (2000) characters
      max_new_tokens 20           an integer, 1 to ``MAX_NEW_TOKENS`` (64)
      temperature    1.0          a number, 0 < temperature <= 2 (0 would divide by zero)
      do_sample      false        false: greedy (temperature is then unused); true: sample
      seed           null         null or an integer, 0 to 2**32 - 1: the seed of the sampling
      ============== ============ ================================================================

      Any other field (such as the learning path's ``max_length``), a wrong type (``"5"``, ``5.5`` or
      ``true`` for an integer) or a value out of range is answered with **422** and FastAPI's error body
      ``{"detail": [{"loc": ["body", <field>], "msg": ..., "type": ...}, ...]}``, which names the field.
      FastAPI does all of that for you once the pydantic model says it.
    - The answer (200): ``{"generated_text": <the NEW text only, not the prompt>, "new_tokens": <how many
      tokens were generated>}``. Generation stops after ``max_new_tokens`` tokens or right after the
      tokenizer's eos token (counted in ``new_tokens``; the text is decoded with ``skip_special_tokens=True``).
      Greedy (``do_sample`` false) gives exactly what ``model.generate(ids, max_new_tokens=n, do_sample=False)``
      gives. Sampling draws each token from softmax(logits / temperature) with a ``torch.Generator`` of its
      own, seeded with ``seed`` (or with fresh entropy, ``generator.seed()``, when ``seed`` is null): the same
      seed gives the same text, and the global RNG (``torch.manual_seed``), which every request in flight
      shares, is never touched. Any temperature above 0 is legal, even 1e-300: subtract the largest logit
      BEFORE dividing by it (logits / 1e-300 overflow to inf, and inf - inf is nan).
    - A prompt whose token count plus ``max_new_tokens`` exceeds the model's context
      (``model.config.max_position_embeddings``) is a 422 too, in the same body format, with
      ``"loc": ["body", "prompt"]`` and a message that gives the numbers (raise
      ``fastapi.exceptions.RequestValidationError([{"type": "value_error", "loc": ("body", "prompt"),
      "msg": ..., "input": ...}])``). A prompt of exactly the context's size is fine.

    **Set up once, in the lifespan.** Use the ``model`` you are given for every request (never a copy, never a
    model loaded per request). Put it in eval mode (dropout off: greedy must be deterministic) and create the
    app's limits in a lifespan function (``FastAPI(lifespan=...)``, an ``@asynccontextmanager`` that does
    the set-up and then yields): it runs once when the server starts, before the first request.

    **Off the event loop.** Forward passes are CPU-bound: run them in a worker thread
    (``await anyio.to_thread.run_sync(fn, *args, limiter=...)``, or make the endpoint a plain ``def``, which
    FastAPI runs in its thread pool) so the event loop keeps answering ``/health`` and other requests while a
    generation runs. Generate under ``torch.no_grad()`` inside the function that runs in the thread: grad
    mode is set per thread, and a fresh worker thread has it on. Tokenize and decode on the event loop itself (they take microseconds, and a fast
    tokenizer must not be called from two threads at once).

    **Bounded.** At most ``max_concurrency`` generations run at once; at most ``max_queue`` more requests wait
    for a slot. A request that arrives when ``max_concurrency + max_queue`` requests are already in progress
    (running or waiting) is answered at once with **503**, a JSON body ``{"detail": <a message>}`` and the
    header ``Retry-After: 1``, instead of piling up until clients time out. A slot is freed when its request
    ends, also when its generation fails. Requests rejected with 422 do not count.
    ``ValueError`` from ``create_app`` itself when ``max_concurrency`` is not an int >= 1 or ``max_queue`` not
    an int >= 0. Document the 503 answer in the endpoint's ``responses=`` so that it is in the OpenAPI schema.

    A sketch of the pieces (fill in the rest)::

        app = FastAPI(lifespan=lifespan)

        @app.post("/generate", response_model=GenerateResponse, responses={503: {...}})
        async def generate(request: GenerateRequest):
            ...  # 503 when full; tokenize; 422 when too long; count in; run in a thread; count out
            return {"generated_text": text, "new_tokens": len(new_ids)}

    Example (with FastAPI's test client; the checks also serve the app with uvicorn)::

        >>> with TestClient(create_app(model, tok)) as client:
        ...     client.post("/generate", json={"prompt": "the cat", "max_new_tokens": 3}).json()
        {'generated_text': ' sat on the', 'new_tokens': 3}
    """
    # TODO(w23_deployment.create_app): write your implementation here.
    raise NotImplementedError("w23_deployment.create_app is not implemented yet (try `kata hint w23_deployment.create_app`)")


def create_demo(generate_fn: Callable[[str, int, float], str]):
    """A Gradio ``gr.Interface`` around ``generate_fn(prompt, max_new_tokens, temperature) -> str``.

    Build the interface and return it; do not launch it (the caller decides: ``demo.launch()`` starts a web
    server, which a check must never do). Import gradio inside this function: it is an optional extra
    (``pip install -e ".[demo]"``, about 200 MB).

    - ``fn``: a callback that calls ``generate_fn`` with the prompt, the max-new-tokens value as an ``int``
      (a Slider hands over a float such as ``20.0``, even with ``step=1``) and the temperature as a
      ``float``, and returns exactly what ``generate_fn`` returns. The learning path's callback returned a
      variable it never defined (a NameError on the first click).
    - ``inputs``, in this order: ``gr.Textbox(label="Prompt")``; ``gr.Slider(1, MAX_NEW_TOKENS, value=20,
      step=1, label="Max new tokens")``; ``gr.Slider(0.1, 2.0, value=1.0, step=0.1, label="Temperature")``.
      These are the server's bounds: the learning path's slider for ``max_length`` went up to 500.
    - ``outputs``: ``gr.Textbox(label="Generated text")``. Give it a ``title``.
    - ``generate_fn`` is not called while the interface is built.

    Example::

        >>> demo = create_demo(lambda prompt, n, t: prompt.upper())
        >>> demo.fn("hi", 5.0, 0.7)
        'HI'
    """
    # TODO(w23_deployment.create_demo): write your implementation here.
    raise NotImplementedError("w23_deployment.create_demo is not implemented yet (try `kata hint w23_deployment.create_demo`)")


# --------------------------------------------------------------------------------------------------
# batched generation and safety


def batch_generate(model, tokenizer, prompts: Sequence[str], max_new_tokens: int = 20) -> list[str]:
    """Greedy continuations of several prompts, computed in ONE batch; returns the new text of each prompt.

    Prompts have different lengths, so the batch needs padding, and for generation it must be LEFT padding:
    every prompt then ends in the last column, where the next token is predicted, and the generated tokens
    follow each prompt directly. With right padding, a short prompt's continuation would be predicted from
    a pad token, after a gap of pads. The attention mask hides the pads, and the positions of a padded
    prompt must start at 0 at its first real token (``model.generate`` derives them from the mask).

    - Tokenize with ``tokenizer(list(prompts), return_tensors="pt", padding=True, padding_side="left")``:
      the caller's tokenizer keeps its own ``padding_side``.
    - Generate greedily with dropout off, in one ``model.generate(**batch, max_new_tokens=...,
      do_sample=False, pad_token_id=tokenizer.pad_token_id)`` call (or a loop of your own that gives the same
      tokens), then put the model back in the mode it was in.
    - Result: a list with, for each prompt in order, the text of its new tokens only (not the prompt),
      decoded with ``skip_special_tokens=True``. A row that produced the eos token stops there (the pads
      ``generate`` appends after it are special tokens and vanish in decoding). Each entry equals what
      generating that prompt alone (``model.generate(ids, max_new_tokens=..., do_sample=False)``) gives.
    - ``[]`` for an empty list of prompts. ``ValueError`` when ``prompts`` is a string or holds a
      non-string, when a prompt is empty (naming its index), when ``max_new_tokens`` is not a positive int,
      and when the tokenizer has no pad token. ``prompts`` is not modified.

    Example::

        >>> batch_generate(model, tok, ["the cat", "a dog ran past the"], max_new_tokens=3)
        [' sat on the', ' mat and one']
    """
    # TODO(w23_deployment.batch_generate): write your implementation here.
    raise NotImplementedError("w23_deployment.batch_generate is not implemented yet (try `kata hint w23_deployment.batch_generate`)")


def content_filter(text: str, blocklist: Sequence[str]) -> list[str]:
    """The entries of ``blocklist`` that occur in ``text`` as whole words, ignoring case; [] when none does.

    - Whole words: a match must not have a word character (a letter, a digit or ``_``, as ``\\w`` in Python's
      ``re``) right before or right after it. "ass" does not occur in "class" or "passage", but it does in
      "ass!" and "(ass)". Plain substring tests flag innocent texts; that is the classic mistake here.
    - An entry may contain spaces or punctuation ("bad word", "c++", "a.b") and is matched literally
      (``re.escape``: in a regular expression "." would match any character). ``\\b`` is not enough for
      entries that start or end with punctuation: "c++" followed by a space has no ``\\b`` after it. Use
      lookarounds: ``(?<!\\w)`` before and ``(?!\\w)`` after.
    - Ignoring case as ``re.IGNORECASE`` does: "BAD" and "Bad" match "bad".
    - The result lists the matching entries as spelled in the blocklist, in blocklist order (an entry listed
      twice is reported twice).
    - ``ValueError`` when ``text`` is not a string, when ``blocklist`` is a string (a list of words is
      expected; a string would be read letter by letter), and when an entry is not a string or is empty or
      only whitespace (naming it). Neither argument is modified.

    Example::

        >>> content_filter("A passage about the Bad apple.", ["ass", "bad", "apple pie"])
        ['bad']
    """
    # TODO(w23_deployment.content_filter): write your implementation here.
    raise NotImplementedError("w23_deployment.content_filter is not implemented yet (try `kata hint w23_deployment.content_filter`)")
