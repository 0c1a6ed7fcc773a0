"""Kata w21_alignment (Weeks 21-22): advanced training and alignment.

You build the pieces that turn a pre-trained language model into an assistant, and the training tricks
that make it fit on real hardware:

1. ``format_instruction`` and ``build_sft_example`` - instruction data, with the loss on the response only;
2. ``accumulate_gradients`` - a large batch's gradient from several small ones;
3. ``train_step_mixed_precision`` - a training step under ``torch.autocast`` (bfloat16 on the CPU, float16
   with a gradient scaler on a GPU);
4. ``RewardModel`` - a language model with a scalar head that scores a whole sequence;
5. ``reward_loss`` - the Bradley-Terry preference loss a reward model is trained with;
6. ``sequence_logprobs`` - how likely a model finds a response, from its logits;
7. ``dpo_loss`` - Direct Preference Optimization, alignment without a reward model;
8. ``ppo_clip_loss`` - the clipped objective of PPO, the RL algorithm of RLHF;
9. ``ddp_train_step`` - data-parallel training across processes with ``torch.distributed``;
10. ``checkpointed_forward`` - activation checkpointing: less memory for a little more compute.

The checks use tiny models (small ``nn.Module``s and a small GPT-2 built from a config) and a tokenizer
trained on text they write, so nothing is downloaded. The data-parallel checks start two processes on
your machine. Run ``kata check w21_alignment`` to check your work.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import torch
import torch.nn.functional as F  # noqa: F401 - F.cross_entropy, F.logsigmoid
from torch import Tensor, nn

IGNORE_INDEX = -100  # the label that F.cross_entropy (and every Hugging Face model) skips
PROMPT_WITH_INPUT = "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
PROMPT_NO_INPUT = "### Instruction:\n{instruction}\n\n### Response:\n"


def format_instruction(item: Mapping[str, str]) -> str:
    """One instruction example as text, in the Alpaca template of the learning path.

    ``item`` is a dict with the string fields ``"instruction"``, ``"output"`` and, optionally, ``"input"``.
    With a non-empty input the text is ``PROMPT_WITH_INPUT`` filled in, followed by the output; without one
    (the key missing, or ``""``) the Input section is left out and the text is ``PROMPT_NO_INPUT`` filled in,
    followed by the output::

        ### Instruction:
        {instruction}

        ### Input:          <- these two lines and the blank line after them only when there is an input
        {input}

        ### Response:
        {output}

    Nothing is stripped, added (no end-of-text token: that is a token, ``build_sft_example`` adds it) or
    changed, so the prompt is exactly the text before the output::

        format_instruction(item) == format_instruction({**item, "output": ""}) + item["output"]

    ``item`` itself is not modified. Errors: a missing ``"instruction"`` or ``"output"`` is a ``KeyError``
    naming the key; a field that is not a ``str`` (``None``, a number) is a ``TypeError`` naming the key.

    Example::

        >>> format_instruction({"instruction": "Add the numbers", "input": "2 3", "output": "5"})
        '### Instruction:\\nAdd the numbers\\n\\n### Input:\\n2 3\\n\\n### Response:\\n5'
    """
    # TODO(w21_alignment.format_instruction): write your implementation here.
    raise NotImplementedError("w21_alignment.format_instruction is not implemented yet (try `kata hint w21_alignment.format_instruction`)")


def build_sft_example(tokenizer, item: Mapping[str, str], max_length: int) -> dict[str, Tensor]:
    """One supervised fine-tuning (SFT) example: token ids, attention mask and labels, each of length ``max_length``.

    In instruction tuning the model should learn to *answer*, not to write instructions. So the loss is
    computed on the response only: every prompt position gets the label -100 (``IGNORE_INDEX``), which
    ``F.cross_entropy`` and Hugging Face models skip. (The learning path trained on the whole text.)

    Steps, with ``tokenizer`` a Hugging Face tokenizer with a pad and an eos token:

    1. ``prompt = format_instruction({**item, "output": ""})`` (the text up to "### Response:\\n") and
       ``response = item["output"]``;
    2. tokenize each on its own, ``tokenizer(text, add_special_tokens=False)["input_ids"]``, and append the
       eos id to the response's ids (the model must learn to stop). Tokenizing the two separately means no
       token straddles the boundary between prompt and response;
    3. ``ids = prompt_ids + response_ids``, cut to ``max_length`` (truncation removes the END of the response);
    4. right-pad to ``max_length`` with ``tokenizer.pad_token_id`` (always on the right, whatever the
       tokenizer's ``padding_side``).

    Returns ``{"input_ids", "attention_mask", "labels"}``, three 1-D ``torch.long`` tensors of length
    ``max_length``: ``attention_mask`` is 1 on the real tokens and 0 on the padding; ``labels`` equals
    ``input_ids`` on the response tokens (the eos included) and is -100 on the prompt and on the padding.
    Decide the padding labels by POSITION, never by comparing ids with the pad id: many tokenizers use the eos
    token as pad token, and the real eos must keep its label.

    Errors (``ValueError``): ``max_length`` not a positive int (a bool is not one), naming it; a tokenizer
    without a pad or an eos token (do not set one: that would change the caller's tokenizer); a prompt of
    ``max_length`` tokens or more (no room for a single response token), naming both numbers. A missing or
    non-string field of ``item`` (the output too) raises as in ``format_instruction``: ``KeyError`` /
    ``TypeError`` naming the key. Neither ``item`` nor the tokenizer is modified.

    Example (ids depend on the tokenizer; P = prompt token, R = response token, E = eos, 0 = pad)::

        input_ids       P  P  P  R  R  E  0  0
        attention_mask  1  1  1  1  1  1  0  0
        labels       -100 -100 -100 R R  E -100 -100
    """
    # TODO(w21_alignment.format_instruction): write your implementation here.
    raise NotImplementedError("w21_alignment.build_sft_example is not implemented yet (part of w21_alignment.format_instruction: try `kata hint w21_alignment.format_instruction`)")


def accumulate_gradients(
    model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]], loss_fn: Callable[[Tensor, Tensor], Tensor]
) -> float:
    """Gradient accumulation: add the gradient of a large batch to ``.grad``, one micro-batch at a time.

    A batch that does not fit in memory is split into micro-batches ``batches = [(inputs, targets), ...]``;
    ``loss_fn(model(inputs), targets)`` is the MEAN loss over one micro-batch (like ``F.cross_entropy``).
    After the call, every parameter's ``.grad`` must have grown by exactly the gradient of the mean loss
    over ALL the examples, as if the whole batch had gone through at once. The rule that makes it so:

    - micro-batch i holds ``n_i = len(inputs)`` examples out of ``N = sum(n_i)``; backpropagate its loss
      weighted by ``n_i / N``. For equal micro-batches that is ``1 / number_of_micro_batches``; forgetting
      it makes the gradient that many times too large. Dividing by the number of micro-batches is only right
      when they are all the same size: with sizes 3 and 1, the lone example would count three times too much;
    - call ``backward()`` once per micro-batch, right after its forward pass. That frees its activations
      before the next one is computed - the memory saving that accumulation is for (summing the losses
      and calling ``backward()`` once at the end keeps every graph alive at the same time).

    The gradients are ADDED to what ``.grad`` already holds, as ``loss.backward()`` does: do not zero them
    (the caller zeroes once per optimizer step) and do not step the optimizer. Returns the mean loss over all
    examples as a Python float (the sum of the weighted micro-batch losses). ``batches`` may be any iterable
    (a list, a generator, a DataLoader); read it once. The model's train/eval mode and the inputs are left
    unchanged.

    Errors (``ValueError``): no micro-batch at all; a micro-batch with no examples (naming its index).

    Example::

        >>> loss = accumulate_gradients(model, [(x[:2], y[:2]), (x[2:], y[2:])], F.mse_loss)
        >>> # model's .grad now equals the gradient of F.mse_loss(model(x), y), and loss its value
    """
    # TODO(w21_alignment.accumulate_gradients): write your implementation here.
    raise NotImplementedError("w21_alignment.accumulate_gradients is not implemented yet (try `kata hint w21_alignment.accumulate_gradients`)")


def train_step_mixed_precision(
    model: nn.Module,
    batch: Mapping[str, Tensor],
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None = None,
    device_type: str = "cpu",
    dtype: torch.dtype | None = None,
    max_grad_norm: float | None = 1.0,
) -> float:
    """One optimizer step with the forward pass in low precision (mixed precision). Returns the loss as a float.

    ``batch`` is ``{"input_ids": (B, T) long, "labels": (B, T) long}``; ``model(batch["input_ids"])`` returns
    logits (B, T, V). The labels are already aligned with the logits (position t's logits predict
    ``labels[:, t]``: no shift here) and -100 marks positions without a label.

    The step, in this order:

    1. ``optimizer.zero_grad()``: nothing is left over from an earlier step;
    2. the forward pass under ``torch.autocast(device_type=device_type, dtype=dtype)``: matrix products run
       in the low-precision dtype (``dtype=None`` means torch's default for the device: ``torch.bfloat16`` on
       the CPU, ``torch.float16`` on CUDA). Use ``torch.autocast`` / ``torch.amp``: the learning path's
       ``torch.cuda.amp.autocast`` and ``torch.cuda.amp.GradScaler`` are deprecated and do nothing on a CPU;
    3. the loss, ``F.cross_entropy`` over all positions with ``ignore_index=-100``, computed in float32
       (``logits.float()``): a log-softmax over the vocabulary loses too much in 16 bits;
    4. backward, clipping the gradients' total norm to ``max_grad_norm`` with
       ``torch.nn.utils.clip_grad_norm_`` (``None``: no clipping), and the optimizer step.

    With a ``scaler`` (a ``torch.amp.GradScaler``, needed for float16, whose small gradients would underflow
    to 0): backpropagate ``scaler.scale(loss)``; before clipping call ``scaler.unscale_(optimizer)`` - the
    gradients are multiplied by the scale (say 65536), and clipping those would shrink the true gradients to
    almost nothing; then ``scaler.step(optimizer)`` (it skips the step when a gradient is inf or nan) and
    ``scaler.update()`` (it lowers the scale after a skipped step and raises it after enough good ones).

    Returns ``loss.item()``, the unscaled loss. A ``max_grad_norm`` that is not positive (0, negative, or nan,
    which would turn every gradient into nan) is a ``ValueError`` naming it.

    Example::

        >>> loss = train_step_mixed_precision(model, {"input_ids": x, "labels": y}, optimizer)  # bfloat16 on CPU
        >>> scaler = torch.amp.GradScaler("cuda")
        >>> loss = train_step_mixed_precision(model, batch, optimizer, scaler, device_type="cuda")  # float16
    """
    # TODO(w21_alignment.train_step_mixed_precision): write your implementation here.
    raise NotImplementedError("w21_alignment.train_step_mixed_precision is not implemented yet (try `kata hint w21_alignment.train_step_mixed_precision`)")


class RewardModel(nn.Module):
    """A reward model: one number per sequence saying how good it is, for RLHF.

    ``base_model`` is a Hugging Face base model without a language-model head (for instance
    ``GPT2Model``): ``base_model(input_ids=..., attention_mask=...).last_hidden_state`` is (B, T, H), with
    ``H = base_model.config.hidden_size``. Keep it as ``self.base_model`` and add ``self.reward_head =
    nn.Linear(H, 1)`` (with a bias and PyTorch's default initialisation), created on the device and in the
    dtype of the base model's parameters, so that the model moves and converts as one. Nothing else.

    ``forward(input_ids, attention_mask)`` -> rewards of shape (B,) in the model's dtype: the head applied to
    the hidden state of each row's LAST REAL token, the largest position where ``attention_mask`` is 1. The
    learning path read position -1, which is a padding token in every right-padded row shorter than the
    batch: its reward then changed with the amount of padding. With the last real token a sequence gets the
    same reward whatever padding follows it (and left padding works too). Read it from the mask, not from the
    ids: ``transformers.GPT2ForSequenceClassification`` (``num_labels=1``) reads the same token as long as the pad
    id appears only in the padding, but it looks for the rightmost id that is not the pad id, so when the pad
    token is the eos token it skips a sequence's final eos; the mask still says that eos is real.

    Errors (``ValueError``): ``input_ids`` and ``attention_mask`` of different shapes; a row whose mask has no 1
    at all (naming the row). The inputs are not modified.

    Example::

        >>> rm = RewardModel(GPT2Model(config))
        >>> rm(ids, mask).shape   # ids, mask: (4, 12)
        torch.Size([4])
    """

    def __init__(self, base_model: nn.Module) -> None:
        # TODO(w21_alignment.RewardModel): write your implementation here.
        raise NotImplementedError("w21_alignment.RewardModel.__init__ is not implemented yet (try `kata hint w21_alignment.RewardModel`)")

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        # TODO(w21_alignment.RewardModel): write your implementation here.
        raise NotImplementedError("w21_alignment.RewardModel.forward is not implemented yet (try `kata hint w21_alignment.RewardModel`)")


def reward_loss(chosen: Tensor, rejected: Tensor, margin: float | Tensor = 0.0) -> Tensor:
    """The Bradley-Terry loss of a reward model: ``mean(-log sigmoid(chosen - rejected - margin))``.

    ``chosen`` and ``rejected`` are the rewards of the preferred and the other response to the same prompts,
    tensors of the same shape (any shape, usually (B,)); the loss is small when every chosen reward is
    well above its rejected one. ``margin`` (a number, or a tensor that broadcasts to that shape; 0 by
    default) asks for a gap of at least that much, as Llama 2's reward model does for clearly better answers.
    Returns a 0-dim tensor in the inputs' dtype that gradients flow through.

    The learning path wrote ``-torch.log(torch.sigmoid(gap))``: for a gap below about -90 in float32 (-745 in
    float64) ``sigmoid`` underflows to exactly 0 and the loss is ``inf``, its gradient ``nan``. Use
    ``F.logsigmoid``, which never forms ``sigmoid(gap)``: the loss must be finite (about ``-gap``) and the
    gradient about ``-1/B`` for a gap of -1e4, and the loss about 0 for +1e4.

    Errors (``ValueError``): ``chosen`` and ``rejected`` of different shapes (naming both); empty inputs (the
    mean of nothing is undefined). The inputs are not modified.

    Example::

        >>> reward_loss(torch.tensor([2.0, 0.0]), torch.tensor([0.0, 0.0]))   # (-log s(2) - log s(0)) / 2
        tensor(0.4100)
    """
    # TODO(w21_alignment.reward_loss): write your implementation here.
    raise NotImplementedError("w21_alignment.reward_loss is not implemented yet (try `kata hint w21_alignment.reward_loss`)")


def sequence_logprobs(model: nn.Module, input_ids: Tensor, attention_mask: Tensor, response_mask: Tensor) -> Tensor:
    """How likely ``model`` finds each response: the SUM of the log-probabilities of its tokens, shape (B,).

    ``model`` is a Hugging Face causal language model: ``model(input_ids=..., attention_mask=...).logits`` is
    (B, T, V). ``input_ids``, ``attention_mask`` and ``response_mask`` are (B, T); ``response_mask`` is 1 on the
    response tokens (the tokens whose probability counts) and 0 on the prompt and the padding.

    The logits at position t are the model's prediction of the token at position t + 1, so shift: the
    log-probability of token t + 1 is ``log_softmax(logits[:, t])[input_ids[:, t + 1]]``, and it counts when
    ``response_mask[:, t + 1]`` is 1. The first token is never predicted, and the last position's logits
    predict nothing. Without the shift each position would be scored on the token it can already see.

    Summed, not averaged: DPO compares log pi(y|x) of whole responses, the sum over their tokens (the
    convention of TRL's ``DPOTrainer``). Some from-scratch implementations average over the response tokens
    instead; that is a different loss, in which a response's length no longer scales its log-probability.
    A row without response tokens gives 0. The result keeps the logits' dtype, and gradients flow through it into
    the model (DPO trains on it): no ``torch.no_grad()`` inside. The model is scored in the mode the caller left it
    in (a policy in training, with its dropout): do not switch it to eval mode, not even for a moment. The inputs
    are left unchanged.

    Errors (``ValueError``): tensors of different shapes; a response token at position 0 (nothing before it
    can predict it), naming the row; a response token where ``attention_mask`` is 0, naming the row.

    Example::

        >>> ids = torch.tensor([[5, 6, 7, 0]]); att = torch.tensor([[1, 1, 1, 0]])
        >>> resp = torch.tensor([[0, 1, 1, 0]])   # prompt: token 5; response: tokens 6 and 7
        >>> sequence_logprobs(model, ids, att, resp)   # log p(6 | 5) + log p(7 | 5, 6), shape (1,)
    """
    # TODO(w21_alignment.sequence_logprobs): write your implementation here.
    raise NotImplementedError("w21_alignment.sequence_logprobs is not implemented yet (try `kata hint w21_alignment.sequence_logprobs`)")


def dpo_loss(
    policy_chosen: Tensor,
    policy_rejected: Tensor,
    ref_chosen: Tensor,
    ref_rejected: Tensor,
    beta: float = 0.1,
) -> tuple[Tensor, Tensor, Tensor]:
    """Direct Preference Optimization (DPO): returns ``(loss, chosen_rewards, rejected_rewards)``.

    The four inputs are summed log-probabilities of whole responses (``sequence_logprobs``, the convention of
    TRL's ``DPOTrainer``), tensors of one shape (usually (B,)): the policy being trained and the frozen
    reference model, each on the chosen (preferred) and the rejected response. With the log-ratios
    ``chosen_ratio = policy_chosen - ref_chosen`` and ``rejected_ratio = policy_rejected - ref_rejected``::

        loss             = mean(-log sigmoid(beta * (chosen_ratio - rejected_ratio)))
        chosen_rewards   = beta * chosen_ratio      (detached: the implicit rewards, for logging)
        rejected_rewards = beta * rejected_ratio    (detached)

    Properties the checks test: when the policy's margin equals the reference's (for instance policy ==
    reference, at the start of training) the loss is exactly log 2; it strictly decreases as the chosen
    log-ratio grows; its gradient pushes ``policy_chosen`` up and ``policy_rejected`` down; it is finite
    (with finite gradients) for margins of +-1e4 (use ``F.logsigmoid``); as ``beta`` goes to 0 the loss tends to
    log 2 and its gradient to ``-beta / 2 / B`` per chosen element. ``beta`` multiplies the margin INSIDE the
    log-sigmoid. The reference model is not trained: no gradient flows into ``ref_chosen`` or
    ``ref_rejected``, even when they require one (detach them). The loss is a 0-dim tensor; all three results
    keep the inputs' dtype, and the rewards have the inputs' shape.

    Errors (``ValueError``): ``beta`` not a positive number (a bool is not one); inputs of different shapes;
    empty inputs. The inputs are not modified.

    Example::

        >>> x = torch.tensor([-5.0, -7.0])
        >>> dpo_loss(x, x, x, x)[0]    # policy == reference
        tensor(0.6931)
    """
    # TODO(w21_alignment.dpo_loss): write your implementation here.
    raise NotImplementedError("w21_alignment.dpo_loss is not implemented yet (try `kata hint w21_alignment.dpo_loss`)")


def ppo_clip_loss(logp_new: Tensor, logp_old: Tensor, advantages: Tensor, clip: float = 0.2) -> Tensor:
    """PPO's clipped surrogate loss (to be minimised): ``-mean(min(r * A, clip(r, 1 - clip, 1 + clip) * A))``.

    ``logp_new`` are the log-probabilities of the taken actions (tokens) under the policy being trained,
    ``logp_old`` under the policy that collected the data, ``advantages`` how much better than expected each
    action turned out; all of one shape. ``r = exp(logp_new - logp_old)`` is the probability ratio (take the
    difference first: the log-probability of a whole response can be -800, and ``exp(-800)`` is 0).

    The clip is what keeps an update small, and it acts only on one side, the side the sign of the advantage
    selects:

    - ``A > 0`` (a good action): once ``r > 1 + clip`` the objective stops growing - the gradient with respect
      to ``logp_new`` is exactly 0 there; below ``1 - clip`` it is NOT clipped (the action may be pushed back up);
    - ``A < 0`` (a bad action): once ``r < 1 - clip`` the gradient is exactly 0; above ``1 + clip`` it is not
      clipped;
    - everywhere else the loss is ``-r * A`` itself, with gradient ``-r * A / n`` per element.

    That is what ``min`` of the unclipped and the clipped term does (``max`` instead, or clipping ``r``
    without the ``min``, clips the wrong side). ``logp_old`` and ``advantages`` are data collected before the
    update: no gradient flows into them, even when they require one. The loss is a 0-dim tensor in the
    inputs' dtype.

    Errors (``ValueError``): ``clip`` not in (0, 1) (a bool is not a number here); inputs of different
    shapes; empty inputs. The inputs are not modified.

    Example::

        >>> ppo_clip_loss(torch.log(torch.tensor([1.5])), torch.zeros(1), torch.tensor([2.0]))  # r = 1.5 > 1.2
        tensor(-2.4000)
    """
    # TODO(w21_alignment.ppo_clip_loss): write your implementation here.
    raise NotImplementedError("w21_alignment.ppo_clip_loss is not implemented yet (try `kata hint w21_alignment.ppo_clip_loss`)")


def ddp_train_step(
    model: nn.Module,
    batch: tuple[Tensor, Tensor],
    optimizer: torch.optim.Optimizer,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
) -> float:
    """One step of data-parallel training, called in every process of a ``torch.distributed`` group.

    Each process holds a copy of the same model (same weights, same optimizer) and its own share of the
    batch, ``batch = (inputs, targets)`` (the shares have equal sizes); ``loss_fn(model(inputs), targets)``
    is the mean loss over that share. The step must leave every copy with the parameters that ONE process
    would get by training on the whole batch:

    1. ``optimizer.zero_grad()``; forward and backward on the local share;
    2. average the gradients over the processes: ``torch.distributed.all_reduce(p.grad)`` sums them
       (``ReduceOp.SUM``), then divide by ``torch.distributed.get_world_size()``. The mean of the shares' mean
       gradients is the full batch's mean gradient; the sum alone would be world_size times too large;
    3. ``optimizer.step()``: every process applies the same averaged gradient, so the copies stay equal.
       (Averaging the parameters AFTER each step instead is a different algorithm: with an optimizer like
       Adam, which is not linear in the gradient, it does not give the full batch's step.)

    Returns the mean loss over all processes (the full batch's loss) as a Python float, the same on every
    process: all-reduce the local loss too. Every process must make the same collective calls in the same
    order, or they wait for each other for ever. Parameters without a gradient (``p.grad is None``) are
    skipped; the models are the same everywhere, so they are the same ones everywhere.

    This is what ``torch.nn.parallel.DistributedDataParallel`` does for you (it also overlaps the
    all-reduce with the backward pass). ``RuntimeError`` when no process group is initialised (call
    ``torch.distributed.init_process_group`` first). The batch is not modified.

    Example (in each of 2 processes, after ``init_process_group("gloo", ...)``)::

        >>> shard = (x[rank::2], y[rank::2])
        >>> loss = ddp_train_step(model, shard, optimizer, F.mse_loss)   # same loss on both ranks
    """
    # TODO(w21_alignment.ddp_train_step): write your implementation here.
    raise NotImplementedError("w21_alignment.ddp_train_step is not implemented yet (try `kata hint w21_alignment.ddp_train_step`)")


def checkpointed_forward(block: nn.Module, x: Tensor) -> Tensor:
    """``block(x)`` with activation checkpointing: less memory in training, for one extra forward pass.

    Normally autograd keeps every intermediate activation of ``block`` until the backward pass. With
    ``torch.utils.checkpoint.checkpoint`` only the block's input is kept; during backward the block's
    forward runs again to recompute what the gradients need. The output and every gradient (of ``x`` and of
    the block's parameters) are the same as without checkpointing; the block's forward just runs twice.

    Use ``checkpoint(block, x, use_reentrant=False)``:

    - ``use_reentrant=False`` is the recommended implementation: with the older ``use_reentrant=True``, the
      block's parameters get NO gradient when ``x`` does not require one (the first layer of a model, or a
      frozen embedding before it), and training silently stops;
    - the random state is saved and restored for the recomputation (``preserve_rng_state=True``, the
      default), so a dropout inside the block drops the same elements both times; without it the gradients
      belong to a different dropout mask than the output.

    Returns a tensor like ``block(x)``. The input is not modified (nor its ``requires_grad``), and the block runs
    in the train/eval mode the caller set.

    Example::

        >>> block = nn.Sequential(nn.Linear(8, 32), nn.GELU(), nn.Linear(32, 8))
        >>> y = checkpointed_forward(block, x)   # same values and gradients as block(x)
    """
    # TODO(w21_alignment.checkpointed_forward): write your implementation here.
    raise NotImplementedError("w21_alignment.checkpointed_forward is not implemented yet (try `kata hint w21_alignment.checkpointed_forward`)")
