"""Reference solutions for w21_alignment (Weeks 21-22: advanced training and alignment).

Fixes of the learning path's own code:
- its mixed-precision loop used ``torch.cuda.amp.autocast`` and ``torch.cuda.amp.GradScaler``, which are
  deprecated (and do nothing on a CPU); here ``torch.autocast(device_type, dtype)`` and
  ``torch.amp.GradScaler`` are used, and the gradients are unscaled before they are clipped.
- its ``RewardModel`` read the hidden state at position -1, which is a padding token for every sequence
  shorter than the batch; here the reward is read at each row's last real token (from ``attention_mask``).
- its preference loss was ``-torch.log(torch.sigmoid(chosen - rejected))``, which is ``inf`` once the gap
  is below about -90 in float32 (``sigmoid`` underflows to 0); here it is ``-F.logsigmoid(...)``, finite for
  any gap.
- its instruction data computed the loss on the whole text; here the prompt's tokens are labelled -100, so
  only the response is learned.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

IGNORE_INDEX = -100  # the label that F.cross_entropy (and every Hugging Face model) skips
PROMPT_WITH_INPUT = "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
PROMPT_NO_INPUT = "### Instruction:\n{instruction}\n\n### Response:\n"


def _text_field(item: Mapping[str, str], key: str, default: str | None = None) -> str:
    """item[key], which must be a str; a missing key gives ``default``, or a KeyError when there is none."""
    if key not in item:
        if default is None:
            raise KeyError(f"the item has no {key!r} field (it has {sorted(item)})")
        return default
    value = item[key]
    if not isinstance(value, str):
        raise TypeError(f"item[{key!r}] must be a str, got {type(value).__name__}: {value!r:.60}")
    return value


def format_instruction(item: Mapping[str, str]) -> str:
    """The Alpaca template of the learning path: prompt (instruction, optional input) then the response."""
    instruction = _text_field(item, "instruction")
    output = _text_field(item, "output")
    extra = _text_field(item, "input", default="")
    # an empty input means "no input": the section is left out, as in the learning path
    template = PROMPT_WITH_INPUT if extra else PROMPT_NO_INPUT
    return template.format(instruction=instruction, input=extra) + output


def build_sft_example(tokenizer, item: Mapping[str, str], max_length: int) -> dict[str, Tensor]:
    """input_ids, attention_mask and labels of one instruction example, right-padded to max_length."""
    # A zero, negative or bool length (True is 1) fails the prompt-length rule below: every prompt has tokens.
    if not isinstance(max_length, int):
        raise ValueError(f"max_length must be a positive int, got {max_length!r}")
    pad_id, eos_id = tokenizer.pad_token_id, tokenizer.eos_token_id
    if pad_id is None or eos_id is None:
        raise ValueError(f"the tokenizer needs a pad and an eos token (pad_token_id={pad_id}, eos_token_id={eos_id})")
    prompt = format_instruction({**item, "output": ""})  # the text up to and including "### Response:\n"
    response = _text_field(item, "output")
    # Prompt and response are tokenized separately, so a token never straddles the boundary between them.
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    response_ids = tokenizer(response, add_special_tokens=False)["input_ids"] + [eos_id]  # the model learns to stop
    if len(prompt_ids) >= max_length:
        raise ValueError(f"the prompt alone has {len(prompt_ids)} tokens, so max_length={max_length} leaves no room "
                         "for a single response token")
    ids = (prompt_ids + response_ids)[:max_length]  # truncation cuts the end of the response
    labels = ([IGNORE_INDEX] * len(prompt_ids) + response_ids)[:max_length]  # no loss on the prompt
    padding = max_length - len(ids)
    # The labels of padding are -100 by position, not by id: with pad == eos the real eos must stay a label.
    # (torch.tensor of Python ints is torch.long.)
    return {
        "input_ids": torch.tensor(ids + [pad_id] * padding),
        "attention_mask": torch.tensor([1] * len(ids) + [0] * padding),
        "labels": torch.tensor(labels + [IGNORE_INDEX] * padding),
    }


def accumulate_gradients(
    model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]], loss_fn: Callable[[Tensor, Tensor], Tensor]
) -> float:
    """Backpropagate micro-batch by micro-batch so that .grad gains the full batch's gradient; returns its loss."""
    batches = list(batches)  # read once: the total number of examples is needed before the first backward
    if not batches:
        raise ValueError("batches is empty: there is nothing to accumulate")
    sizes = [len(inputs) for inputs, _ in batches]
    for index, size in enumerate(sizes):
        if size == 0:
            raise ValueError(f"micro-batch {index} has no examples")
    total = sum(sizes)
    loss_sum = 0.0
    for index, (inputs, targets) in enumerate(batches):
        size = sizes[index]
        loss = loss_fn(model(inputs), targets)  # the mean over this micro-batch's examples
        # Weight by the micro-batch's share of the examples (1/N for N equal micro-batches): the sum of the
        # weighted means is the mean over the full batch, and so is the sum of their gradients.
        weighted = loss * (size / total)
        weighted.backward()  # frees this micro-batch's graph before the next forward: that saves the memory
        loss_sum += weighted.item()
    return loss_sum


def train_step_mixed_precision(
    model: nn.Module,
    batch: Mapping[str, Tensor],
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None = None,
    device_type: str = "cpu",
    dtype: torch.dtype | None = None,
    max_grad_norm: float | None = 1.0,
) -> float:
    """One optimizer step with the forward pass under autocast; returns the (unscaled) loss."""
    if max_grad_norm is not None and not max_grad_norm > 0:
        raise ValueError(f"max_grad_norm must be positive or None, got {max_grad_norm!r}")
    optimizer.zero_grad()
    # torch.autocast, not the deprecated torch.cuda.amp.autocast; dtype=None is torch's default for the
    # device (bfloat16 on the CPU, float16 on CUDA)
    with torch.autocast(device_type=device_type, dtype=dtype):
        logits = model(batch["input_ids"])  # matrix products in the low-precision dtype
    labels = batch["labels"]
    # the loss in float32: log-softmax over a large vocabulary loses too much in 16 bits (and -100, IGNORE_INDEX,
    # is cross_entropy's default ignore_index)
    loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1))
    parameters = [p for p in model.parameters() if p.requires_grad]
    if scaler is not None:
        scaler.scale(loss).backward()  # float16 gradients would underflow without the scale
        if max_grad_norm is not None:
            scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
            torch.nn.utils.clip_grad_norm_(parameters, max_grad_norm)
        scaler.step(optimizer)  # skips the step when a gradient is inf or nan
        scaler.update()  # lowers the scale after a skipped step, raises it after a run of good ones
    else:
        loss.backward()
        if max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(parameters, max_grad_norm)
        optimizer.step()
    return loss.item()


class RewardModel(nn.Module):
    """A scalar reward per sequence: a linear head on the base model's hidden state at the last real token."""

    def __init__(self, base_model: nn.Module) -> None:
        super().__init__()
        self.base_model = base_model
        like = next(base_model.parameters())
        # created where the base model lives, in its dtype, so that the model moves and converts as one
        self.reward_head = nn.Linear(base_model.config.hidden_size, 1, device=like.device, dtype=like.dtype)

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        if input_ids.shape != attention_mask.shape:
            raise ValueError(f"input_ids {tuple(input_ids.shape)} and attention_mask {tuple(attention_mask.shape)} "
                             "must have the same shape")
        seen = (attention_mask != 0).long().cumsum(dim=1)  # (B, T): real tokens up to and including t
        empty = (seen[:, -1] == 0).nonzero().flatten().tolist()
        if empty:
            raise ValueError(f"rows {empty} of attention_mask have no real token to read a reward from")
        hidden = self.base_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, T, H)
        # The last real token of each row (the learning path read position -1, a padding token when right-padded):
        # the first position where the running count of real tokens reaches its total (argmax returns the first
        # maximum), so right and left padding both work.
        last = seen.argmax(dim=1)  # (B,)
        picked = torch.take_along_dim(hidden, last[:, None, None], dim=1)[:, 0]  # (B, H)
        return self.reward_head(picked)[:, 0]  # (B,)


def _same_shapes(**tensors: Tensor) -> None:
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    if len(set(shapes.values())) > 1:
        raise ValueError(f"the inputs must have the same shape, got {shapes}")
    if next(iter(tensors.values())).numel() == 0:
        raise ValueError(f"the inputs are empty ({shapes}): the mean of nothing is undefined")


def reward_loss(chosen: Tensor, rejected: Tensor, margin: float | Tensor = 0.0) -> Tensor:
    """Bradley-Terry loss: mean of -log sigmoid(chosen - rejected - margin), finite for any gap."""
    _same_shapes(chosen=chosen, rejected=rejected)
    # logsigmoid(x) = -softplus(-x) is computed without forming sigmoid(x), which underflows to 0 for x < -100
    return -F.logsigmoid(chosen - rejected - margin).mean()


def sequence_logprobs(model: nn.Module, input_ids: Tensor, attention_mask: Tensor, response_mask: Tensor) -> Tensor:
    """Summed log-probabilities of the response tokens of each sequence, shape (B,)."""
    if not input_ids.shape == attention_mask.shape == response_mask.shape:
        raise ValueError(f"input_ids {tuple(input_ids.shape)}, attention_mask {tuple(attention_mask.shape)} and "
                         f"response_mask {tuple(response_mask.shape)} must have the same shape")
    response = response_mask != 0  # (B, T)
    first = response[:, 0].nonzero().flatten().tolist()
    if first:
        raise ValueError(f"rows {first} mark position 0 as response: no token comes before it to predict it")
    padded = (response & (attention_mask == 0)).any(dim=1).nonzero().flatten().tolist()
    if padded:
        raise ValueError(f"rows {padded} mark padding (attention_mask 0) as response")
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits  # (B, T, V)
    # Shift: the logits at position t predict the token at t + 1, so the last position predicts nothing and
    # the first token is never predicted.
    logp = torch.log_softmax(logits[:, :-1], dim=-1)  # (B, T-1, V)
    token_logp = logp.gather(-1, input_ids[:, 1:, None]).squeeze(-1)  # (B, T-1): log p(token t+1 | tokens <= t)
    # summed, not averaged over the response length (the convention of TRL's DPO trainer)
    return torch.where(response[:, 1:], token_logp, 0.0).sum(dim=1)


def dpo_loss(
    policy_chosen: Tensor,
    policy_rejected: Tensor,
    ref_chosen: Tensor,
    ref_rejected: Tensor,
    beta: float = 0.1,
) -> tuple[Tensor, Tensor, Tensor]:
    """DPO on summed log-probs: (mean loss, chosen rewards, rejected rewards)."""
    if isinstance(beta, bool) or not beta > 0:
        raise ValueError(f"beta must be a positive number, got {beta!r}")
    _same_shapes(policy_chosen=policy_chosen, policy_rejected=policy_rejected, ref_chosen=ref_chosen,
                 ref_rejected=ref_rejected)
    # the reference model is frozen: its log-probs are constants, whatever their requires_grad says
    chosen_ratio = policy_chosen - ref_chosen.detach()  # log pi(y_w|x) / pi_ref(y_w|x)
    rejected_ratio = policy_rejected - ref_rejected.detach()
    loss = -F.logsigmoid(beta * (chosen_ratio - rejected_ratio)).mean()  # beta inside: it scales the margin
    # the implicit rewards, for logging: detached, so that logging them never trains anything
    return loss, beta * chosen_ratio.detach(), beta * rejected_ratio.detach()


def ppo_clip_loss(logp_new: Tensor, logp_old: Tensor, advantages: Tensor, clip: float = 0.2) -> Tensor:
    """PPO's clipped surrogate objective, negated to be minimised (mean over the elements)."""
    if isinstance(clip, bool) or not 0 < clip < 1:
        raise ValueError(f"clip must be in (0, 1), got {clip!r}")
    _same_shapes(logp_new=logp_new, logp_old=logp_old, advantages=advantages)
    # the old policy and the advantages are data collected before the update: constants here
    ratio = torch.exp(logp_new - logp_old.detach())
    advantages = advantages.detach()
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1 - clip, 1 + clip) * advantages
    # the minimum is the pessimistic bound: the ratio is cut only where moving further would look better
    return -torch.minimum(unclipped, clipped).mean()


def ddp_train_step(
    model: nn.Module,
    batch: tuple[Tensor, Tensor],
    optimizer: torch.optim.Optimizer,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
) -> float:
    """One data-parallel step in each process: local backward, gradients averaged over processes, step."""
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("ddp_train_step needs a process group: call torch.distributed.init_process_group first")
    world_size = dist.get_world_size()
    optimizer.zero_grad()
    inputs, targets = batch
    loss = loss_fn(model(inputs), targets)  # the mean over this process's share of the batch
    loss.backward()
    for p in model.parameters():
        if p.grad is not None:
            # sum over processes, then divide: the mean of equal-sized shards' mean gradients is the gradient
            # of the full batch's mean loss (the sum alone would be world_size times too large)
            dist.all_reduce(p.grad)  # ReduceOp.SUM, the default
            p.grad /= world_size
    optimizer.step()  # every process applies the same averaged gradient, so the replicas stay equal
    total = loss.detach().clone()
    dist.all_reduce(total)
    return (total / world_size).item()


def checkpointed_forward(block: nn.Module, x: Tensor) -> Tensor:
    """block(x), keeping no activations inside the block: they are recomputed during backward."""
    from torch.utils.checkpoint import checkpoint

    # use_reentrant=False: parameters get gradients even when x does not require one, and the RNG state is
    # saved and restored (preserve_rng_state=True, the default), so dropout recomputes the same mask
    return checkpoint(block, x, use_reentrant=False)

