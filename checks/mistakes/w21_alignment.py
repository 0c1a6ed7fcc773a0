"""Catalogued mistakes and correct variants for w21_alignment.

Three kinds of entries, each the simplest way to state its mistake:

- ``@mutant``: a small slip in the reference's own code (a dropped ``.detach()``, ``max`` for ``min``);
- a function or a class written out, when the mistake changes more than a token (the learning path's own
  code, a step in the wrong order);
- ``@variant``: an unusual but correct implementation, written in another style than the reference, that
  every check must accept (the proof that the checks do not over-fit the reference).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from checks.harness.catalogue import mistake, mutant, variant
from reference.phase3.w21_alignment import (
    IGNORE_INDEX,
    PROMPT_NO_INPUT,
    PROMPT_WITH_INPUT,
    format_instruction,
)

# --------------------------------------------------------------------------------------------------
# format_instruction / build_sft_example


@mistake("format_instruction", "the Input section is written even when the input is empty (an empty '### Input:' "
                               "block the model learns to expect)")
def format_always_with_input(item):
    return PROMPT_WITH_INPUT.format(instruction=item["instruction"], input=item.get("input", "")) + item["output"]


@mistake("format_instruction", "the fields are stripped of surrounding whitespace, so the prompt is no longer "
                               "exactly the text before the response")
def format_strips_fields(item):
    stripped = {key: value.strip() if isinstance(value, str) else value for key, value in item.items()}
    return format_instruction(stripped)


@mistake("format_instruction", "the blank line between sections is missing ('\\n' instead of '\\n\\n')")
def format_single_newlines(item):
    text = format_instruction(item)
    return text.replace("\n\n### ", "\n### ")


@mistake("format_instruction", "a missing input is read with item['input'], so items without the key raise KeyError")
def format_requires_input(item):
    template = PROMPT_WITH_INPUT if item["input"] else PROMPT_NO_INPUT
    return template.format(instruction=item["instruction"], input=item["input"]) + item["output"]


@mistake("format_instruction", "fields are formatted with str() whatever their type, so None or a number slips "
                               "into the text instead of raising TypeError")
def format_without_type_checks(item):
    extra = item.get("input", "")
    template = PROMPT_WITH_INPUT if extra else PROMPT_NO_INPUT
    return template.format(instruction=item["instruction"], input=extra) + str(item["output"])


@mutant("format_instruction", "the input key is treated as required, so an item without one raises KeyError",
        replace={'_text_field(item, "input", default="")': '_text_field(item, "input")'})
def format_input_required(): ...


@mutant("format_instruction", "a blank input (spaces, a newline) is taken for no input: the docstring asks for the "
                              "Input section whenever the input is not empty, and nothing is stripped",
        replace={"template = PROMPT_WITH_INPUT if extra else PROMPT_NO_INPUT":
                 "template = PROMPT_WITH_INPUT if extra.strip() else PROMPT_NO_INPUT"})
def format_blank_input_is_no_input(): ...


@variant("format_instruction", "the text assembled from a list of sections joined by blank lines")
def format_from_sections(item):
    for key in ("instruction", "output"):
        if key not in item:
            raise KeyError(key)
    for key in ("instruction", "input", "output"):
        if key in item and not isinstance(item[key], str):
            raise TypeError(f"{key} must be a string")
    sections = [f"### Instruction:\n{item['instruction']}"]
    if item.get("input", ""):
        sections.append(f"### Input:\n{item['input']}")
    sections.append(f"### Response:\n{item['output']}")
    return "\n\n".join(sections)


def _sft_tensors(ids, labels, max_length, pad_id):
    padding = max_length - len(ids)
    return {"input_ids": torch.tensor(ids + [pad_id] * padding, dtype=torch.long),
            "attention_mask": torch.tensor([1] * len(ids) + [0] * padding, dtype=torch.long),
            "labels": torch.tensor(labels + [IGNORE_INDEX] * padding, dtype=torch.long)}


def _sft_parts(tokenizer, item, max_length):
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
        raise ValueError(f"bad max_length {max_length!r}")
    if tokenizer.pad_token_id is None or tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer needs pad and eos tokens")
    prompt = tokenizer(format_instruction({**item, "output": ""}), add_special_tokens=False)["input_ids"]
    response = tokenizer(item["output"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    if len(prompt) >= max_length:
        raise ValueError(f"prompt of {len(prompt)} tokens, max_length={max_length}")
    return prompt, response


@mistake("build_sft_example", "the loss is on the prompt too: labels equal input_ids on every real token (the "
                              "learning path's way)")
def sft_labels_on_prompt(tokenizer, item, max_length):
    prompt, response = _sft_parts(tokenizer, item, max_length)
    ids = (prompt + response)[:max_length]
    return _sft_tensors(ids, list(ids), max_length, tokenizer.pad_token_id)


@mistake("build_sft_example", "the padding labels are found by comparing ids with the pad id, so with pad == eos the "
                              "real eos loses its label (the model never learns to stop)")
def sft_padding_by_id(tokenizer, item, max_length):
    prompt, response = _sft_parts(tokenizer, item, max_length)
    ids = (prompt + response)[:max_length]
    example = _sft_tensors(ids, ([IGNORE_INDEX] * len(prompt) + response)[:max_length], max_length,
                           tokenizer.pad_token_id)
    example["labels"] = example["labels"].masked_fill(example["input_ids"] == tokenizer.pad_token_id, IGNORE_INDEX)
    return example


@mistake("build_sft_example", "no eos token after the response: the model never learns where an answer ends")
def sft_without_eos(tokenizer, item, max_length):
    prompt, response = _sft_parts(tokenizer, item, max_length)
    response = response[:-1]
    ids = (prompt + response)[:max_length]
    return _sft_tensors(ids, ([IGNORE_INDEX] * len(prompt) + response)[:max_length], max_length,
                        tokenizer.pad_token_id)


@mistake("build_sft_example", "off by one: the last prompt token is labelled as if it were part of the response")
def sft_mask_off_by_one(tokenizer, item, max_length):
    prompt, response = _sft_parts(tokenizer, item, max_length)
    ids = (prompt + response)[:max_length]
    labels = [IGNORE_INDEX] * (len(prompt) - 1) + (prompt[-1:] + response)
    return _sft_tensors(ids, labels[:max_length], max_length, tokenizer.pad_token_id)


@mistake("build_sft_example", "the padding follows the tokenizer's padding_side, so a left-padding tokenizer puts "
                              "the pads before the prompt")
def sft_follows_padding_side(tokenizer, item, max_length):
    prompt, response = _sft_parts(tokenizer, item, max_length)
    ids = (prompt + response)[:max_length]
    example = _sft_tensors(ids, ([IGNORE_INDEX] * len(prompt) + response)[:max_length], max_length,
                           tokenizer.pad_token_id)
    if tokenizer.padding_side == "left":
        n = len(ids)
        example = {name: torch.cat([t[n:], t[:n]]) for name, t in example.items()}
    return example


@mistake("build_sft_example", "truncation keeps the END of the text, cutting the start of the prompt instead of the "
                              "end of the response")
def sft_truncates_the_left(tokenizer, item, max_length):
    prompt, response = _sft_parts(tokenizer, item, max_length)
    ids = (prompt + response)[-max_length:]
    labels = ([IGNORE_INDEX] * len(prompt) + response)[-max_length:]
    return _sft_tensors(ids, labels, max_length, tokenizer.pad_token_id)


@mistake("build_sft_example", "a tokenizer without a pad token gets pad_token = eos_token, which changes the "
                              "caller's tokenizer instead of raising ValueError")
def sft_sets_pad_token(tokenizer, item, max_length):
    from reference.phase3.w21_alignment import build_sft_example

    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return build_sft_example(tokenizer, item, max_length)


@mistake("build_sft_example", "the whole text is tokenized at once and the response's ids are cut off at the "
                              "prompt's length: a token that straddles the boundary (a newline and the response's "
                              "first space) shifts everything")
def sft_tokenizes_the_whole_text(tokenizer, item, max_length):
    prompt, _ = _sft_parts(tokenizer, item, max_length)
    text = format_instruction(item)
    whole = tokenizer(text, add_special_tokens=False)["input_ids"]
    response = whole[len(prompt):] + [tokenizer.eos_token_id]
    ids = (prompt + response)[:max_length]
    return _sft_tensors(ids, ([IGNORE_INDEX] * len(prompt) + response)[:max_length], max_length,
                        tokenizer.pad_token_id)


@mistake("build_sft_example", "the attention mask is float (1.0 / 0.0) instead of torch.long")
def sft_float_mask(tokenizer, item, max_length):
    from reference.phase3.w21_alignment import build_sft_example

    example = build_sft_example(tokenizer, item, max_length)
    return {**example, "attention_mask": example["attention_mask"].float()}


@mutant("build_sft_example", "a prompt exactly max_length tokens long is accepted, leaving no response token to learn",
        replace={"if len(prompt_ids) >= max_length:": "if len(prompt_ids) > max_length:"})
def sft_accepts_full_prompt(): ...


@mutant("build_sft_example", "a float max_length is not rejected, so slicing with it fails with a TypeError",
        replace={"if not isinstance(max_length, int):": "if isinstance(max_length, str):"})
def sft_accepts_float_length(): ...


@variant("build_sft_example", "one batched tokenizer call for prompt and response, tensors filled in place")
def sft_batched_tokenizer_call(tokenizer, item, max_length):
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length <= 0:
        raise ValueError(f"max_length={max_length!r} is not a positive int")
    if tokenizer.pad_token_id is None or tokenizer.eos_token_id is None:
        raise ValueError("no pad or eos token")
    format_instruction(item)  # validates every field, the output included
    prompt_text = format_instruction({**item, "output": ""})
    prompt, response = tokenizer([prompt_text, item["output"]], add_special_tokens=False)["input_ids"]
    if len(prompt) >= max_length:
        raise ValueError(f"the prompt has {len(prompt)} tokens; max_length={max_length}")
    ids = torch.full((max_length,), tokenizer.pad_token_id, dtype=torch.long)
    labels = torch.full((max_length,), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros(max_length, dtype=torch.long)
    sequence = torch.tensor(prompt + response + [tokenizer.eos_token_id], dtype=torch.long)[:max_length]
    n = len(sequence)
    ids[:n] = sequence
    mask[:n] = 1
    labels[len(prompt):n] = sequence[len(prompt):]
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


# --------------------------------------------------------------------------------------------------
# accumulate_gradients


@mutant("accumulate_gradients", "the micro-batch losses are not scaled: the gradient is the sum of the micro-batch "
                                "gradients, as many times too large as there are micro-batches",
        replace={"weighted = loss * (size / total)": "weighted = loss"})
def accumulate_without_scaling(): ...


@mutant("accumulate_gradients", "each loss is divided by the number of micro-batches: right only when they all have "
                                "the same size (with sizes 3 and 1 the lone example counts three times too much)",
        replace={"weighted = loss * (size / total)": "weighted = loss / len(batches)"})
def accumulate_divides_by_count(): ...


@mistake("accumulate_gradients", "zero_grad() inside the loop: only the last micro-batch's gradient survives")
def accumulate_zeroes_each_micro_batch(model, batches, loss_fn):
    batches = list(batches)
    total = sum(len(x) for x, _ in batches)
    loss_sum = 0.0
    for x, y in batches:
        model.zero_grad()
        weighted = loss_fn(model(x), y) * (len(x) / total)
        weighted.backward()
        loss_sum += weighted.item()
    return loss_sum


@mistake("accumulate_gradients", "the gradients are zeroed first, so what .grad already held is lost (the caller "
                                 "accumulates across calls)")
def accumulate_zeroes_first(model, batches, loss_fn):
    from reference.phase3.w21_alignment import accumulate_gradients

    model.zero_grad(set_to_none=True)
    return accumulate_gradients(model, batches, loss_fn)


@mistake("accumulate_gradients", "the weighted losses are summed and backward() runs once at the end: right "
                                 "gradients, but every micro-batch's activations stay in memory at the same time")
def accumulate_one_backward(model, batches, loss_fn):
    batches = list(batches)
    if not batches or any(len(x) == 0 for x, _ in batches):
        raise ValueError("empty")
    total_size = sum(len(x) for x, _ in batches)
    total = sum(loss_fn(model(x), y) * (len(x) / total_size) for x, y in batches)
    total.backward()
    return total.item()


@mistake("accumulate_gradients", "returns the plain mean of the micro-batch losses, which is not the batch's loss "
                                 "when the micro-batches differ in size")
def accumulate_returns_unweighted_loss(model, batches, loss_fn):
    batches = list(batches)
    total = sum(len(x) for x, _ in batches)
    losses = []
    for x, y in batches:
        loss = loss_fn(model(x), y)
        (loss * (len(x) / total)).backward()
        losses.append(loss.item())
    return sum(losses) / len(losses)


@mistake("accumulate_gradients", "uses len(batches) and indexing, so a generator or a DataLoader iterator fails")
def accumulate_needs_a_list(model, batches, loss_fn):
    from reference.phase3.w21_alignment import accumulate_gradients

    count = len(batches)
    return accumulate_gradients(model, [batches[i] for i in range(count)], loss_fn)


@mistake("accumulate_gradients", "switches the model to train() mode, overriding the caller's choice")
def accumulate_forces_train_mode(model, batches, loss_fn):
    from reference.phase3.w21_alignment import accumulate_gradients

    model.train()
    return accumulate_gradients(model, batches, loss_fn)


@mutant("accumulate_gradients", "an empty micro-batch is not rejected: its mean loss is nan and poisons every gradient",
        replace={"if size == 0:": "if size < 0:"})
def accumulate_accepts_empty_micro_batch(): ...


@mutant("accumulate_gradients", "no micro-batch at all is not rejected: it silently returns 0.0 with no gradient",
        replace={"if not batches:": "if batches is None:"})
def accumulate_accepts_no_batches(): ...


@variant("accumulate_gradients", "torch.autograd.grad per micro-batch, added into .grad by hand")
def accumulate_with_autograd_grad(model, batches, loss_fn):
    batches = list(batches)
    if not batches:
        raise ValueError("no micro-batches")
    for i, (x, _) in enumerate(batches):
        if len(x) == 0:
            raise ValueError(f"micro-batch {i} is empty")
    params = [p for p in model.parameters() if p.requires_grad]
    total = sum(len(x) for x, _ in batches)
    result = 0.0
    for x, y in batches:
        loss = loss_fn(model(x), y) * len(x) / total
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        with torch.no_grad():
            for p, g in zip(params, grads, strict=True):
                if g is None:
                    continue
                if p.grad is None:
                    p.grad = g.clone()
                else:
                    p.grad += g
        result += float(loss.detach())
    return result


@variant("accumulate_gradients", "each micro-batch's loss turned into a sum over its examples, divided by N")
def accumulate_sum_then_divide(model, batches, loss_fn):
    batches = list(batches)
    if len(batches) == 0 or min(len(x) for x, _ in batches) == 0:
        bad = next((i for i, (x, _) in enumerate(batches) if len(x) == 0), None)
        raise ValueError(f"empty input (micro-batch {bad})")
    n_total = sum(x.shape[0] for x, _ in batches)
    result = 0.0
    for x, y in batches:
        summed = loss_fn(model(x), y) * x.shape[0]  # the micro-batch's summed loss
        (summed / n_total).backward()
        result += summed.item() / n_total
    return result


# --------------------------------------------------------------------------------------------------
# train_step_mixed_precision


def _mp_loss(logits, labels):
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1),
                           ignore_index=IGNORE_INDEX)


def _mp_finish(model, loss, optimizer, scaler, max_grad_norm, unscale=True, use_scaler_step=True, update=True):
    """The end of the step, with switches for the mistakes below."""
    if scaler is not None:
        scaler.scale(loss).backward()
        if max_grad_norm is not None:
            if unscale:
                scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
        if use_scaler_step:
            scaler.step(optimizer)
        else:
            optimizer.step()
        if update:
            scaler.update()
    else:
        loss.backward()
        if max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
        optimizer.step()


@mistake("train_step_mixed_precision", "the learning path's torch.cuda.amp.autocast(): deprecated, and on a CPU it "
                                       "does nothing, so the model silently runs in float32")
def mp_cuda_amp_autocast(model, batch, optimizer, scaler=None, device_type="cpu", dtype=None, max_grad_norm=1.0):
    optimizer.zero_grad()
    with torch.cuda.amp.autocast(dtype=dtype or torch.float16):
        logits = model(batch["input_ids"])
    loss = _mp_loss(logits, batch["labels"])
    _mp_finish(model, loss, optimizer, scaler, max_grad_norm)
    return loss.item()


@mistake("train_step_mixed_precision", "the gradients are clipped while still scaled (no scaler.unscale_ before "
                                       "clip_grad_norm_), so the true gradients are shrunk by the whole scale")
def mp_clips_scaled_gradients(model, batch, optimizer, scaler=None, device_type="cpu", dtype=None, max_grad_norm=1.0):
    optimizer.zero_grad()
    with torch.autocast(device_type=device_type, dtype=dtype):
        logits = model(batch["input_ids"])
    loss = _mp_loss(logits, batch["labels"])
    _mp_finish(model, loss, optimizer, scaler, max_grad_norm, unscale=False)
    return loss.item()


@mistake("train_step_mixed_precision", "optimizer.step() instead of scaler.step(optimizer): a step with inf "
                                       "gradients is taken (the parameters become nan) instead of skipped")
def mp_steps_past_the_scaler(model, batch, optimizer, scaler=None, device_type="cpu", dtype=None, max_grad_norm=1.0):
    optimizer.zero_grad()
    with torch.autocast(device_type=device_type, dtype=dtype):
        logits = model(batch["input_ids"])
    loss = _mp_loss(logits, batch["labels"])
    _mp_finish(model, loss, optimizer, scaler, max_grad_norm, use_scaler_step=False)
    return loss.item()


@mistake("train_step_mixed_precision", "scaler.update() is never called, so the scale never adapts (it stays too "
                                       "large after an overflow, and every later step is skipped)")
def mp_without_update(model, batch, optimizer, scaler=None, device_type="cpu", dtype=None, max_grad_norm=1.0):
    optimizer.zero_grad()
    with torch.autocast(device_type=device_type, dtype=dtype):
        logits = model(batch["input_ids"])
    loss = _mp_loss(logits, batch["labels"])
    _mp_finish(model, loss, optimizer, scaler, max_grad_norm, update=False)
    return loss.item()


@mutant("train_step_mixed_precision", "no optimizer.zero_grad(): the gradients of earlier steps are added in",
        replace={"optimizer.zero_grad()": "pass"})
def mp_without_zero_grad(): ...


@mutant("train_step_mixed_precision", "the loss is computed from the 16-bit logits (no .float()), so it carries "
                                      "bfloat16 rounding",
        replace={"logits.float().reshape": "logits.reshape"})
def mp_loss_in_low_precision(): ...


@mutant("train_step_mixed_precision", "max_grad_norm is ignored: the gradients are never clipped",
        replace={"torch.nn.utils.clip_grad_norm_(parameters, max_grad_norm)\n        optimizer.step()":
                 "optimizer.step()"})
def mp_never_clips(): ...


@mutant("train_step_mixed_precision", "the dtype argument is ignored: always bfloat16",
        replace={"dtype=dtype)": "dtype=torch.bfloat16)"})
def mp_ignores_dtype(): ...


@mutant("train_step_mixed_precision", "device_type is ignored: autocast always runs for the CPU, so a CUDA model "
                                      "is never cast (and a CPU model stepped with device_type='cuda' is)",
        replace={"with torch.autocast(device_type=device_type, dtype=dtype):":
                 'with torch.autocast(device_type="cpu", dtype=dtype):'})
def mp_ignores_device_type(): ...


@mutant("train_step_mixed_precision", "a nan max_grad_norm is accepted (max_grad_norm <= 0 is False for nan): "
                                      "clipping to nan turns every gradient into nan",
        replace={"not max_grad_norm > 0": "max_grad_norm <= 0"})
def mp_accepts_nan_norm(): ...


@mistake("train_step_mixed_precision", "dtype defaults to float16 on every device, but on the CPU autocast's "
                                       "default (and the documented one) is bfloat16")
def mp_float16_by_default(model, batch, optimizer, scaler=None, device_type="cpu", dtype=None, max_grad_norm=1.0):
    from reference.phase3.w21_alignment import train_step_mixed_precision

    return train_step_mixed_precision(model, batch, optimizer, scaler, device_type, dtype or torch.float16,
                                      max_grad_norm)


@mutant("train_step_mixed_precision", "returns the scaled loss, thousands of times the real one",
        replace={"scaler.scale(loss).backward()": "loss = scaler.scale(loss)\n        loss.backward()"})
def mp_returns_scaled_loss(): ...


@mutant("train_step_mixed_precision", "a max_grad_norm of 0 or less is accepted: clipping to 0 wipes every gradient",
        replace={"not max_grad_norm > 0": "max_grad_norm < 0"})
def mp_accepts_zero_norm(): ...


@variant("train_step_mixed_precision", "loss computed inside autocast (cross_entropy is autocast to float32 there), "
                                       "scaler always unscaled, gradients zeroed to 0 instead of None")
def mp_loss_inside_autocast(model, batch, optimizer, scaler=None, device_type="cpu", dtype=None, max_grad_norm=1.0):
    if max_grad_norm is not None and not max_grad_norm > 0:  # nan is not positive either
        raise ValueError(f"max_grad_norm={max_grad_norm} must be positive")
    optimizer.zero_grad(set_to_none=False)
    with torch.autocast(device_type, dtype=dtype):
        logits = model(batch["input_ids"])
        loss = F.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten(), ignore_index=-100)
    if scaler is None:
        loss.backward()
    else:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
    if max_grad_norm is not None:
        nn.utils.clip_grad_norm_(list(model.parameters()), max_norm=max_grad_norm)
    if scaler is None:
        optimizer.step()
    else:
        scaler.step(optimizer)
        scaler.update()
    return float(loss.detach())


# --------------------------------------------------------------------------------------------------
# RewardModel


class _RewardBase(nn.Module):
    """The reference's layout, with the position rule left to the subclasses below."""

    def __init__(self, base_model):
        super().__init__()
        self.base_model = base_model
        like = next(base_model.parameters())
        self.reward_head = nn.Linear(base_model.config.hidden_size, 1, device=like.device, dtype=like.dtype)

    def hidden(self, input_ids, attention_mask):
        return self.base_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


@mistake("RewardModel", "the reward is read at position -1 (the learning path's code), a padding token in every "
                        "right-padded row shorter than the batch")
class RewardAtLastPosition(_RewardBase):
    def forward(self, input_ids, attention_mask):
        return self.reward_head(self.hidden(input_ids, attention_mask)[:, -1]).squeeze(-1)


@mistake("RewardModel", "the last real token is taken as attention_mask.sum(-1) - 1, which is right only for right "
                        "padding (a left-padded row's last token is at position -1)")
class RewardAtMaskSum(_RewardBase):
    def forward(self, input_ids, attention_mask):
        last = attention_mask.sum(-1) - 1
        hidden = self.hidden(input_ids, attention_mask)
        return self.reward_head(hidden[torch.arange(len(hidden)), last]).squeeze(-1)


@mistake("RewardModel", "the reward is read at the first token, which has seen nothing of the response")
class RewardAtFirstToken(_RewardBase):
    def forward(self, input_ids, attention_mask):
        return self.reward_head(self.hidden(input_ids, attention_mask)[:, 0]).squeeze(-1)


@mistake("RewardModel", "the hidden states of all real tokens are averaged instead of reading the last one")
class RewardMeanPooled(_RewardBase):
    def forward(self, input_ids, attention_mask):
        hidden = self.hidden(input_ids, attention_mask)
        weights = attention_mask.to(hidden.dtype)[..., None]
        return self.reward_head((hidden * weights).sum(1) / weights.sum(1)).squeeze(-1)


@mistake("RewardModel", "the attention mask is not passed to the base model, so real tokens attend to left padding")
class RewardIgnoresMaskInBase(_RewardBase):
    def forward(self, input_ids, attention_mask):
        from reference.phase3.w21_alignment import RewardModel

        hidden = self.base_model(input_ids=input_ids).last_hidden_state
        positions = torch.arange(input_ids.shape[-1])
        last = torch.where(attention_mask != 0, positions, -1).amax(-1)
        del RewardModel
        return self.reward_head(hidden[torch.arange(len(hidden)), last]).squeeze(-1)


@mistake("RewardModel", "returns shape (B, 1) (the learning path's head output) instead of one reward per row (B,)")
class RewardKeepsTheLastAxis(_RewardBase):
    def forward(self, input_ids, attention_mask):
        from reference.phase3.w21_alignment import RewardModel

        return RewardModel.forward(self, input_ids, attention_mask)[:, None]


@mistake("RewardModel", "the head is created with nn.Linear's defaults (float32, CPU) whatever the base model's dtype "
                        "and device")
class RewardHeadInDefaultDtype(_RewardBase):
    def __init__(self, base_model):
        super().__init__(base_model)
        self.reward_head = nn.Linear(base_model.config.hidden_size, 1)

    def forward(self, input_ids, attention_mask):
        from reference.phase3.w21_alignment import RewardModel

        return RewardModel.forward(self, input_ids, attention_mask)


@mistake("RewardModel", "the forward pass runs under torch.no_grad(): the reward model can never be trained")
class RewardWithoutGradients(_RewardBase):
    def forward(self, input_ids, attention_mask):
        from reference.phase3.w21_alignment import RewardModel

        with torch.no_grad():
            return RewardModel.forward(self, input_ids, attention_mask)


@mistake("RewardModel", "the head has no bias (like GPT2ForSequenceClassification's score layer) although the "
                        "docstring asks for one")
class RewardHeadWithoutBias(_RewardBase):
    def __init__(self, base_model):
        super().__init__(base_model)
        like = next(base_model.parameters())
        self.reward_head = nn.Linear(base_model.config.hidden_size, 1, bias=False, device=like.device, dtype=like.dtype)

    def forward(self, input_ids, attention_mask):
        from reference.phase3.w21_alignment import RewardModel

        return RewardModel.forward(self, input_ids, attention_mask)


@mistake("RewardModel", "the last real token is found from the ids (the rightmost id that is not "
                        "config.pad_token_id, GPT2ForSequenceClassification's rule): with pad == eos the final eos "
                        "is skipped")
class RewardAtLastNonPadId(_RewardBase):
    def forward(self, input_ids, attention_mask):
        from reference.phase3.w21_alignment import RewardModel

        pad = getattr(self.base_model.config, "pad_token_id", None)
        if pad is None:
            return RewardModel.forward(self, input_ids, attention_mask)
        hidden = self.hidden(input_ids, attention_mask)
        positions = torch.arange(input_ids.shape[-1], device=input_ids.device)
        last = (positions * (input_ids != pad)).argmax(-1)
        return self.reward_head(hidden[torch.arange(len(hidden)), last])[:, 0]


@mutant("RewardModel", "the head's bias is set to 0 instead of keeping nn.Linear's default initialisation",
        replace={"dtype=like.dtype)\n": "dtype=like.dtype)\n        nn.init.zeros_(self.reward_head.bias)\n"})
def reward_head_zero_bias(): ...


@mutant("RewardModel", "the head's output is squeezed on every axis: a batch of one row gives a 0-dim tensor, not "
                       "shape (1,)",
        replace={"return self.reward_head(picked)[:, 0]": "return self.reward_head(picked).squeeze()"})
def reward_squeezed(): ...


@mutant("RewardModel", "a row without any real token is not rejected: it silently reads position 0",
        replace={"if empty:": "if False:"})
def reward_accepts_empty_rows(): ...


@variant("RewardModel", "the last real position found by flipping the mask and taking argmax, then torch.gather")
class RewardByFlippedArgmax(nn.Module):
    def __init__(self, base_model):
        super().__init__()
        self.base_model = base_model
        param = next(iter(base_model.parameters()))
        self.reward_head = nn.Linear(base_model.config.hidden_size, 1).to(device=param.device, dtype=param.dtype)

    def forward(self, input_ids, attention_mask):
        if input_ids.shape != attention_mask.shape:
            raise ValueError(f"shapes differ: {tuple(input_ids.shape)} vs {tuple(attention_mask.shape)}")
        real = attention_mask.bool()
        if not real.any(dim=1).all():
            raise ValueError(f"rows without tokens: {(~real.any(dim=1)).nonzero().flatten().tolist()}")
        T = real.shape[1]
        last = T - 1 - real.flip(1).int().argmax(dim=1)  # the first True from the right
        hidden = self.base_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        picked = hidden.gather(1, last[:, None, None].expand(-1, 1, hidden.shape[-1])).squeeze(1)
        return self.reward_head(picked)[:, 0]


@variant("RewardModel", "the last real position as the argmax of position * mask (the largest position whose mask "
                        "is 1), read with advanced indexing")
class RewardByMaskedPositions(nn.Module):
    def __init__(self, base_model):
        super().__init__()
        self.base_model = base_model
        weight = next(base_model.parameters())
        self.reward_head = nn.Linear(base_model.config.hidden_size, 1, dtype=weight.dtype, device=weight.device)

    def forward(self, input_ids, attention_mask):
        if input_ids.shape != attention_mask.shape:
            raise ValueError(f"{tuple(input_ids.shape)} != {tuple(attention_mask.shape)}")
        real = attention_mask != 0
        if not real.any(-1).all():
            raise ValueError(f"rows {torch.nonzero(~real.any(-1)).flatten().tolist()} are all padding")
        positions = torch.arange(input_ids.shape[-1], device=input_ids.device)
        last = (positions * real).argmax(-1)
        hidden = self.base_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.reward_head(hidden[torch.arange(hidden.shape[0], device=hidden.device), last]).squeeze(-1)


# --------------------------------------------------------------------------------------------------
# reward_loss


@mistake("reward_loss", "-log(sigmoid(gap)) as in the learning path: sigmoid underflows to 0 for a gap of -1e4 and "
                        "the loss is inf (its gradient nan)")
def reward_loss_log_of_sigmoid(chosen, rejected, margin=0.0):
    if chosen.shape != rejected.shape or chosen.numel() == 0:
        raise ValueError(f"bad shapes {tuple(chosen.shape)} and {tuple(rejected.shape)}")
    return -torch.log(torch.sigmoid(chosen - rejected - margin)).mean()


@mistake("reward_loss", "log1p(exp(-gap)): the same formula, and exp overflows to inf for a gap of -1e4")
def reward_loss_log1p_exp(chosen, rejected, margin=0.0):
    if chosen.shape != rejected.shape or chosen.numel() == 0:
        raise ValueError(f"bad shapes {tuple(chosen.shape)} and {tuple(rejected.shape)}")
    return torch.log1p(torch.exp(-(chosen - rejected - margin))).mean()


@mutant("reward_loss", "chosen and rejected swapped: the model learns to prefer the rejected answers",
        replace={"F.logsigmoid(chosen - rejected - margin)": "F.logsigmoid(rejected - chosen - margin)"})
def reward_loss_swapped(): ...


@mutant("reward_loss", "the margin is added to the gap instead of subtracted: it makes pairs look better separated",
        replace={"chosen - rejected - margin": "chosen - rejected + margin"})
def reward_loss_margin_added(): ...


@mutant("reward_loss", "summed over the pairs instead of averaged: the step size grows with the batch",
        replace={"- margin).mean()": "- margin).sum()"})
def reward_loss_summed(): ...


@mutant("reward_loss", "no shape check: a (2, 3) and a (3,) tensor broadcast into 6 pairs that do not exist",
        replace={"_same_shapes(chosen=chosen, rejected=rejected)": "pass"})
def reward_loss_broadcasts(): ...


@variant("reward_loss", "softplus(rejected - chosen + margin), the same function written as log(1 + e^-gap)")
def reward_loss_softplus(chosen, rejected, margin=0.0):
    if chosen.shape != rejected.shape:
        raise ValueError(f"chosen {tuple(chosen.shape)} and rejected {tuple(rejected.shape)} differ")
    if not chosen.numel():
        raise ValueError("no pairs")
    return F.softplus(rejected - chosen + margin).mean()


@variant("reward_loss", "the stable form written out: max(-gap, 0) + log1p(exp(-|gap|))")
def reward_loss_by_hand(chosen, rejected, margin=0.0):
    if tuple(chosen.shape) != tuple(rejected.shape) or chosen.numel() == 0:
        raise ValueError(f"shapes {tuple(chosen.shape)} and {tuple(rejected.shape)} must match and be non-empty")
    gap = chosen - rejected - margin
    return (torch.clamp(-gap, min=0) + torch.log1p(torch.exp(-gap.abs()))).mean()


@variant("reward_loss", "binary cross-entropy with logits: the gap is a logit whose label is always 1")
def reward_loss_bce(chosen, rejected, margin=0.0):
    if chosen.shape != rejected.shape or chosen.numel() == 0:
        raise ValueError(f"chosen {tuple(chosen.shape)} and rejected {tuple(rejected.shape)}: same non-empty shape")
    gap = chosen - rejected - margin
    return F.binary_cross_entropy_with_logits(gap, torch.ones_like(gap))


# --------------------------------------------------------------------------------------------------
# sequence_logprobs


def _validated(input_ids, attention_mask, response_mask):
    if not input_ids.shape == attention_mask.shape == response_mask.shape:
        raise ValueError("shapes differ")
    response = response_mask != 0
    if response[:, 0].any():
        raise ValueError(f"rows {response[:, 0].nonzero().flatten().tolist()} start with a response token")
    bad = (response & (attention_mask == 0)).any(-1)
    if bad.any():
        raise ValueError(f"rows {bad.nonzero().flatten().tolist()} mark padding as response")
    return response


@mistake("sequence_logprobs", "no shift: position t's logits are scored on token t, which the model already sees")
def logprobs_without_shift(model, input_ids, attention_mask, response_mask):
    response = _validated(input_ids, attention_mask, response_mask)
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    logp = torch.log_softmax(logits, -1).gather(-1, input_ids[..., None]).squeeze(-1)
    return (logp * response).sum(-1)


@mistake("sequence_logprobs", "averaged over the response tokens instead of summed (not TRL's DPO convention)")
def logprobs_averaged(model, input_ids, attention_mask, response_mask):
    from reference.phase3.w21_alignment import sequence_logprobs

    total = sequence_logprobs(model, input_ids, attention_mask, response_mask)
    return total / (response_mask != 0).sum(-1).clamp_min(1)


@mistake("sequence_logprobs", "the logits are shifted but the response mask is not: each count is one token early")
def logprobs_mask_not_shifted(model, input_ids, attention_mask, response_mask):
    response = _validated(input_ids, attention_mask, response_mask)
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    logp = torch.log_softmax(logits[:, :-1], -1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    return (logp * response[:, :-1]).sum(-1)


@mistake("sequence_logprobs", "the attention mask is used instead of the response mask, so the prompt counts too")
def logprobs_count_the_prompt(model, input_ids, attention_mask, response_mask):
    from reference.phase3.w21_alignment import sequence_logprobs

    _validated(input_ids, attention_mask, response_mask)
    everything = attention_mask.clone()
    everything[:, 0] = 0
    return sequence_logprobs(model, input_ids, attention_mask, everything)


@mistake("sequence_logprobs", "computed under torch.no_grad(): DPO can no longer train through it")
def logprobs_without_gradients(model, input_ids, attention_mask, response_mask):
    from reference.phase3.w21_alignment import sequence_logprobs

    with torch.no_grad():
        return sequence_logprobs(model, input_ids, attention_mask, response_mask)


@mistake("sequence_logprobs", "switches the model to eval() to score it, and leaves it there")
def logprobs_switch_to_eval(model, input_ids, attention_mask, response_mask):
    from reference.phase3.w21_alignment import sequence_logprobs

    model.eval()
    return sequence_logprobs(model, input_ids, attention_mask, response_mask)


@mistake("sequence_logprobs", "the attention mask is not passed to the model, so left-padded rows attend to padding")
def logprobs_ignore_attention_mask(model, input_ids, attention_mask, response_mask):
    response = _validated(input_ids, attention_mask, response_mask)
    logits = model(input_ids=input_ids).logits
    logp = torch.log_softmax(logits[:, :-1], -1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    return torch.where(response[:, 1:], logp, 0.0).sum(-1)


@mistake("sequence_logprobs", "the model is scored in eval mode (then put back in its mode): a policy in training "
                              "loses its dropout, so these are not the log-probs of the network being trained")
def logprobs_in_eval_mode(model, input_ids, attention_mask, response_mask):
    from reference.phase3.w21_alignment import sequence_logprobs

    training = model.training
    model.eval()
    try:
        return sequence_logprobs(model, input_ids, attention_mask, response_mask)
    finally:
        model.train(training)


@mutant("sequence_logprobs", "a response token at position 0 is accepted (and silently ignored)",
        replace={"if first:": "if False:"})
def logprobs_accept_position_0(): ...


@mutant("sequence_logprobs", "response tokens on padding are accepted (and scored on the pad token)",
        replace={"if padded:": "if False:"})
def logprobs_accept_padding(): ...


@variant("sequence_logprobs", "TRL style: labels with -100 outside the response, minus the per-token cross-entropy")
def logprobs_via_cross_entropy(model, input_ids, attention_mask, response_mask):
    response = _validated(input_ids, attention_mask, response_mask)
    labels = input_ids.masked_fill(~response, -100)[:, 1:]
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1]
    per_token = F.cross_entropy(logits.transpose(1, 2), labels, ignore_index=-100, reduction="none")
    return -per_token.sum(-1)


@variant("sequence_logprobs", "logsumexp over the vocabulary and take_along_dim, masked by multiplication")
def logprobs_logsumexp(model, input_ids, attention_mask, response_mask):
    response = _validated(input_ids, attention_mask, response_mask)
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    targets = input_ids[:, 1:]
    chosen = torch.take_along_dim(logits[:, :-1], targets[..., None], dim=-1).squeeze(-1)
    logp = chosen - torch.logsumexp(logits[:, :-1], dim=-1)
    return (logp * response[:, 1:].to(logp.dtype)).sum(dim=1)


# --------------------------------------------------------------------------------------------------
# dpo_loss


def _dpo_checks(values, beta):
    if isinstance(beta, bool) or not beta > 0:
        raise ValueError(f"bad beta {beta!r}")
    shapes = {tuple(v.shape) for v in values}
    if len(shapes) > 1 or not values[0].numel():
        raise ValueError(f"bad shapes {shapes}")


@mistake("dpo_loss", "chosen and rejected swapped: the policy is pushed towards the rejected responses")
def dpo_swapped(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta=0.1):
    from reference.phase3.w21_alignment import dpo_loss

    loss, _, _ = dpo_loss(policy_rejected, policy_chosen, ref_rejected, ref_chosen, beta)
    _, chosen, rejected = dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta)
    return loss, chosen, rejected


@mistake("dpo_loss", "beta multiplies the log-sigmoid instead of the margin inside it: -beta * log sigmoid(margin)")
def dpo_beta_outside(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta=0.1):
    _dpo_checks([policy_chosen, policy_rejected, ref_chosen, ref_rejected], beta)
    c, r = policy_chosen - ref_chosen.detach(), policy_rejected - ref_rejected.detach()
    return -beta * F.logsigmoid(c - r).mean(), beta * c.detach(), beta * r.detach()


@mistake("dpo_loss", "the reference terms are dropped: the margin is policy_chosen - policy_rejected alone")
def dpo_without_reference(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta=0.1):
    _dpo_checks([policy_chosen, policy_rejected, ref_chosen, ref_rejected], beta)
    loss = -F.logsigmoid(beta * (policy_chosen - policy_rejected)).mean()
    return loss, beta * (policy_chosen - ref_chosen).detach(), beta * (policy_rejected - ref_rejected).detach()


@mistake("dpo_loss", "-log(sigmoid(...)) instead of F.logsigmoid: inf for a margin of -1e4")
def dpo_log_of_sigmoid(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta=0.1):
    _dpo_checks([policy_chosen, policy_rejected, ref_chosen, ref_rejected], beta)
    c, r = policy_chosen - ref_chosen.detach(), policy_rejected - ref_rejected.detach()
    return -torch.log(torch.sigmoid(beta * (c - r))).mean(), beta * c.detach(), beta * r.detach()


@mutant("dpo_loss", "the reference log-probs are not detached: backward sends gradients into the frozen model",
        replace={"chosen_ratio = policy_chosen - ref_chosen.detach()": "chosen_ratio = policy_chosen - ref_chosen"})
def dpo_trains_the_reference(): ...


@mutant("dpo_loss", "the rewards are not detached: logging them keeps the graph (and summing them would train)",
        replace={"beta * chosen_ratio.detach()": "beta * chosen_ratio"})
def dpo_rewards_not_detached(): ...


@mutant("dpo_loss", "the rewards are the bare log-ratios, without beta",
        replace={"return loss, beta * chosen_ratio.detach(), beta * rejected_ratio.detach()":
                 "return loss, chosen_ratio.detach(), rejected_ratio.detach()"})
def dpo_rewards_without_beta(): ...


@mutant("dpo_loss", "the default beta is 0.5 instead of the documented (and TRL's) 0.1",
        replace={"beta: float = 0.1": "beta: float = 0.5"})
def dpo_default_beta(): ...


@mutant("dpo_loss", "beta = 0 is accepted: the loss is log 2 whatever the policy does, and nothing trains",
        replace={"not beta > 0": "beta < 0"})
def dpo_accepts_zero_beta(): ...


@mutant("dpo_loss", "a bool beta is accepted (True counts as 1.0)",
        replace={"isinstance(beta, bool) or ": ""})
def dpo_accepts_bool_beta(): ...


@mutant("dpo_loss", "summed over the pairs instead of averaged",
        replace={"* (chosen_ratio - rejected_ratio)).mean()": "* (chosen_ratio - rejected_ratio)).sum()"})
def dpo_summed(): ...


@variant("dpo_loss", "TRL's arrangement: policy log-ratio minus reference log-ratio, through softplus")
def dpo_trl_style(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta=0.1):
    if type(beta) is bool or beta <= 0:
        raise ValueError(f"beta={beta} must be positive")
    tensors = (policy_chosen, policy_rejected, ref_chosen, ref_rejected)
    if any(t.shape != policy_chosen.shape for t in tensors) or policy_chosen.numel() == 0:
        raise ValueError(f"shapes {[tuple(t.shape) for t in tensors]}")
    with torch.no_grad():
        ref_logratios = ref_chosen - ref_rejected
        chosen_rewards = beta * (policy_chosen - ref_chosen)
        rejected_rewards = beta * (policy_rejected - ref_rejected)
    logits = (policy_chosen - policy_rejected) - ref_logratios
    return F.softplus(-beta * logits).mean(), chosen_rewards, rejected_rewards


# --------------------------------------------------------------------------------------------------
# ppo_clip_loss


def _ppo_checks(logp_new, logp_old, advantages, clip):
    if isinstance(clip, bool) or not 0 < clip < 1:
        raise ValueError(f"bad clip {clip!r}")
    if not logp_new.shape == logp_old.shape == advantages.shape or not logp_new.numel():
        raise ValueError("bad shapes")


@mutant("ppo_clip_loss", "max instead of min: the clip acts on the wrong side, and the loss is the optimistic bound",
        replace={"torch.minimum(unclipped, clipped)": "torch.maximum(unclipped, clipped)"})
def ppo_max_instead_of_min(): ...


@mistake("ppo_clip_loss", "only the clipped term, without the min: the gradient vanishes outside the clip range on "
                          "BOTH sides, whatever the advantage's sign")
def ppo_clipped_term_only(logp_new, logp_old, advantages, clip=0.2):
    _ppo_checks(logp_new, logp_old, advantages, clip)
    ratio = torch.exp(logp_new - logp_old.detach())
    return -(torch.clamp(ratio, 1 - clip, 1 + clip) * advantages.detach()).mean()


@mistake("ppo_clip_loss", "the objective is not negated: minimising it makes good actions LESS likely")
def ppo_not_negated(logp_new, logp_old, advantages, clip=0.2):
    from reference.phase3.w21_alignment import ppo_clip_loss

    return -ppo_clip_loss(logp_new, logp_old, advantages, clip)


@mutant("ppo_clip_loss", "the ratio is inverted: exp(logp_old - logp_new)",
        replace={"torch.exp(logp_new - logp_old.detach())": "torch.exp(logp_old.detach() - logp_new)"})
def ppo_inverted_ratio(): ...


@mistake("ppo_clip_loss", "the ratio is clipped above only (clamp(max=1 + clip)): A < 0 actions are never held back")
def ppo_clip_above_only(logp_new, logp_old, advantages, clip=0.2):
    _ppo_checks(logp_new, logp_old, advantages, clip)
    ratio = torch.exp(logp_new - logp_old.detach())
    adv = advantages.detach()
    return -torch.minimum(ratio * adv, torch.clamp(ratio, max=1 + clip) * adv).mean()


@mutant("ppo_clip_loss", "logp_old is not detached: the update also moves the policy that collected the data",
        replace={"torch.exp(logp_new - logp_old.detach())": "torch.exp(logp_new - logp_old)"})
def ppo_old_not_detached(): ...


@mutant("ppo_clip_loss", "the advantages are not detached: a value network producing them would be trained by the "
                         "policy loss", replace={"advantages = advantages.detach()": "pass"})
def ppo_advantages_not_detached(): ...


@mutant("ppo_clip_loss", "the ratio is exp(logp_new) / exp(logp_old): 0 / 0 = nan once the log-probs of a long "
                         "sequence underflow exp (below about -745 in float64, -104 in float32)",
        replace={"torch.exp(logp_new - logp_old.detach())": "torch.exp(logp_new) / torch.exp(logp_old.detach())"})
def ppo_ratio_of_exps(): ...


@mutant("ppo_clip_loss", "the default clip is 0.1 instead of the documented 0.2",
        replace={"clip: float = 0.2": "clip: float = 0.1"})
def ppo_default_clip(): ...


@variant("ppo_clip_loss", "the maximum of the negated terms (the same pessimistic bound, written as a loss)")
def ppo_max_of_losses(logp_new, logp_old, advantages, clip=0.2):
    if isinstance(clip, bool) or clip <= 0 or clip >= 1:
        raise ValueError(f"clip={clip}")
    if logp_new.shape != logp_old.shape or logp_new.shape != advantages.shape or logp_new.numel() == 0:
        raise ValueError(f"shapes {tuple(logp_new.shape)}, {tuple(logp_old.shape)}, {tuple(advantages.shape)}")
    ratio = (logp_new - logp_old.detach()).exp()
    adv = advantages.detach()
    return torch.max(-ratio * adv, -ratio.clamp(1 - clip, 1 + clip) * adv).mean()


@variant("ppo_clip_loss", "the regions written out with torch.where: a detached ratio where the clip is active")
def ppo_by_regions(logp_new, logp_old, advantages, clip=0.2):
    if isinstance(clip, bool) or not (0 < clip < 1):
        raise ValueError(f"clip must be in (0, 1): {clip}")
    if len({tuple(logp_new.shape), tuple(logp_old.shape), tuple(advantages.shape)}) != 1 or logp_new.numel() == 0:
        raise ValueError("shapes must match and be non-empty")
    ratio = torch.exp(logp_new - logp_old.detach())
    adv = advantages.detach()
    active = ((adv > 0) & (ratio > 1 + clip)) | ((adv < 0) & (ratio < 1 - clip))
    bounded = torch.where(adv > 0, torch.full_like(ratio, 1 + clip), torch.full_like(ratio, 1 - clip))
    return -torch.where(active, bounded * adv, ratio * adv).mean()


@variant("ppo_clip_loss", "the clip applied to the log-ratio, between log(1 - clip) and log(1 + clip), then "
                         "exponentiated")
def ppo_clip_in_log_space(logp_new, logp_old, advantages, clip=0.2):
    import math

    if isinstance(clip, bool) or not 0.0 < clip < 1.0:
        raise ValueError(f"clip {clip} is outside (0, 1)")
    if not (logp_new.shape == logp_old.shape == advantages.shape) or logp_new.numel() == 0:
        raise ValueError("logp_new, logp_old and advantages need one non-empty shape")
    log_ratio = logp_new - logp_old.detach()
    adv = advantages.detach()
    bounded = log_ratio.clamp(math.log(1 - clip), math.log(1 + clip)).exp()
    return -torch.min(log_ratio.exp() * adv, bounded * adv).mean()


# --------------------------------------------------------------------------------------------------
# ddp_train_step


def _ddp_local_step(model, batch, optimizer, loss_fn):
    import torch.distributed as dist

    if not dist.is_initialized():
        raise RuntimeError("call torch.distributed.init_process_group first")
    optimizer.zero_grad()
    inputs, targets = batch
    loss = loss_fn(model(inputs), targets)
    loss.backward()
    return loss


def _ddp_mean_loss(loss):
    import torch.distributed as dist

    total = loss.detach().clone()
    dist.all_reduce(total)
    return (total / dist.get_world_size()).item()


@mutant("ddp_train_step", "the gradients are summed over the processes, not averaged: each step is world_size times "
                          "too large", replace={"p.grad /= world_size": "pass"})
def ddp_sums_gradients(): ...


@mistake("ddp_train_step", "no all-reduce of the gradients: each process steps with its own share's gradient, and the "
                           "copies drift apart")
def ddp_without_all_reduce(model, batch, optimizer, loss_fn):
    loss = _ddp_local_step(model, batch, optimizer, loss_fn)
    optimizer.step()
    return _ddp_mean_loss(loss)


@mistake("ddp_train_step", "rank 0's gradients are broadcast to everyone: the other shares are never learned from")
def ddp_broadcasts_rank_0(model, batch, optimizer, loss_fn):
    import torch.distributed as dist

    loss = _ddp_local_step(model, batch, optimizer, loss_fn)
    for p in model.parameters():
        if p.grad is not None:
            dist.broadcast(p.grad, src=0)
    optimizer.step()
    return _ddp_mean_loss(loss)


@mistake("ddp_train_step", "the parameters are averaged after a local step instead of the gradients before it: with "
                           "AdamW, which is not linear in the gradient, that is not the full batch's step")
def ddp_averages_parameters(model, batch, optimizer, loss_fn):
    import torch.distributed as dist

    loss = _ddp_local_step(model, batch, optimizer, loss_fn)
    optimizer.step()
    with torch.no_grad():
        for p in model.parameters():
            dist.all_reduce(p)
            p /= dist.get_world_size()
    return _ddp_mean_loss(loss)


@mutant("ddp_train_step", "no zero_grad(): the second step adds the first step's gradients in",
        replace={"optimizer.zero_grad()": "pass"})
def ddp_without_zero_grad(): ...


@mutant("ddp_train_step", "zero_grad() after the step instead of before: gradients the model already held when the "
                          "step began are added into the first step",
        replace={"optimizer.zero_grad()\n    inputs, targets = batch": "inputs, targets = batch",
                 "optimizer.step()  # every process": "optimizer.step()\n    optimizer.zero_grad()  # every process"})
def ddp_zero_grad_after_step(): ...


@mutant("ddp_train_step", "returns this process's own loss instead of the mean over all processes",
        replace={"return (total / world_size).item()": "return loss.item()"})
def ddp_returns_local_loss(): ...


@mutant("ddp_train_step", "without a process group it fails deep inside torch.distributed with an unclear "
                          "ValueError instead of saying what to do",
        replace={"if not dist.is_available() or not dist.is_initialized():": "if not dist.is_available():"})
def ddp_no_group_check(): ...


@mistake("ddp_train_step", "the all-reduce runs on a copy of each gradient (p.grad.clone()), so the averaged values "
                           "are thrown away")
def ddp_reduces_a_copy(model, batch, optimizer, loss_fn):
    import torch.distributed as dist

    loss = _ddp_local_step(model, batch, optimizer, loss_fn)
    for p in model.parameters():
        if p.grad is not None:
            grad = p.grad.clone()
            dist.all_reduce(grad)
            grad /= dist.get_world_size()
    optimizer.step()
    return _ddp_mean_loss(loss)


@variant("ddp_train_step", "all gradients flattened into one bucket: a single all-reduce, as DDP's buckets do")
def ddp_one_bucket(model, batch, optimizer, loss_fn):
    import torch.distributed as dist

    if not dist.is_initialized():
        raise RuntimeError("no process group: call torch.distributed.init_process_group(...) first")
    optimizer.zero_grad(set_to_none=False)
    loss = loss_fn(model(batch[0]), batch[1])
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    flat = torch.cat([g.reshape(-1) for g in grads] + [loss.detach().reshape(1)])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= dist.get_world_size()
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()
    optimizer.step()
    return float(flat[-1])


@variant("ddp_train_step", "the local loss divided by the world size before backward, then a plain sum all-reduce")
def ddp_prescaled_loss(model, batch, optimizer, loss_fn):
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("torch.distributed.init_process_group has not been called")
    world = dist.get_world_size()
    for p in model.parameters():
        p.grad = None
    local = loss_fn(model(batch[0]), batch[1]) / world
    local.backward()
    for p in model.parameters():
        if p.grad is not None:
            dist.all_reduce(p.grad)
    optimizer.step()
    mean = local.detach().clone()
    dist.all_reduce(mean)
    return mean.item()


# --------------------------------------------------------------------------------------------------
# checkpointed_forward


@mistake("checkpointed_forward", "no checkpointing at all: block(x) keeps every activation (the results are right, "
                                 "but nothing is recomputed and no memory is saved)")
def checkpoint_not_at_all(block, x):
    return block(x)


@mutant("checkpointed_forward", "use_reentrant=True: the block's parameters get no gradient when x does not require "
                                "one, and training silently stops",
        replace={"use_reentrant=False": "use_reentrant=True"})
def checkpoint_reentrant(): ...


@mistake("checkpointed_forward", "preserve_rng_state=False: the recomputation draws a new dropout mask, so the "
                                 "gradients belong to a different mask than the output")
def checkpoint_without_rng_state(block, x):
    from torch.utils.checkpoint import checkpoint

    return checkpoint(block, x, use_reentrant=False, preserve_rng_state=False)


@mistake("checkpointed_forward", "the block runs under torch.no_grad() to save memory: nothing is trained")
def checkpoint_no_grad(block, x):
    with torch.no_grad():
        return block(x)


@mistake("checkpointed_forward", "the input is detached before the checkpoint, so no gradient reaches x (or the "
                                 "layers before the block)")
def checkpoint_detached_input(block, x):
    from torch.utils.checkpoint import checkpoint

    return checkpoint(block, x.detach(), use_reentrant=False)


@mistake("checkpointed_forward", "use_reentrant=True made to work by setting x.requires_grad_(): the gradients are "
                                 "right, but the caller's tensor now requires a gradient")
def checkpoint_marks_the_input(block, x):
    from torch.utils.checkpoint import checkpoint

    if not x.requires_grad and torch.is_grad_enabled():
        x.requires_grad_()
    return checkpoint(block, x, use_reentrant=True)


@mistake("checkpointed_forward", "the block is put in train mode (checkpointing is for training), so a block the "
                                 "caller set to eval mode runs its dropout")
def checkpoint_forces_train_mode(block, x):
    from torch.utils.checkpoint import checkpoint

    block.train()
    return checkpoint(block, x, use_reentrant=False)


@variant("checkpointed_forward", "the bound forward method checkpointed, with every option spelled out")
def checkpoint_bound_forward(block, x):
    from torch.utils import checkpoint as ckpt

    return ckpt.checkpoint(block.forward, x, use_reentrant=False, preserve_rng_state=True, determinism_check="none")


@variant("checkpointed_forward", "checkpoint_sequential over (block, Identity) in two segments: it checkpoints every "
                                  "segment but the last, so the block is checkpointed")
def checkpoint_sequential_segments(block, x):
    from torch.utils.checkpoint import checkpoint_sequential

    return checkpoint_sequential(nn.Sequential(block, nn.Identity()), 2, x, use_reentrant=False)


@variant("checkpointed_forward", "a lambda around the block, with the default RNG handling spelled out")
def checkpoint_lambda(block, x):
    import torch.utils.checkpoint as ckpt

    return ckpt.checkpoint(lambda inputs: block(inputs), x, use_reentrant=False, preserve_rng_state=True)
