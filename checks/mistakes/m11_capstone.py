"""Catalogued mistakes and correct variants for m11_capstone.

Three kinds of entries, each the simplest way to state its mistake:

- ``@mutant``: a small slip in the reference's own code (a dropped ``try``, ``step`` for ``step + 1``);
- a function written out, so that everything else stays right and the check aimed at the mistake is the
  one that catches it;
- ``@variant``: an unusual but correct implementation, written in another style than the reference, that
  every check must accept (the proof that the checks do not over-fit the reference).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from checks.harness.catalogue import mistake, mutant, variant
from reference.phase2.w15_mini_gpt import MiniGPT
from reference.phase4.m11_capstone import _positive_int, split_parameters, train_capstone, validation_loss

# --------------------------------------------------------------------------------------------------
# validation_loss


def _validate(model, data, block_size, batch_size):
    """The reference's input checks, so that each mistake below is caught by the check aimed at it."""
    block_size = _positive_int("block_size", block_size)
    batch_size = _positive_int("batch_size", batch_size)
    if not isinstance(data, torch.Tensor) or data.dim() != 1 or data.dtype == torch.bool or data.is_floating_point():
        raise ValueError(f"data must be a 1-D integer tensor; got {data!r}")
    if block_size > getattr(model, "max_len", block_size):
        raise ValueError(f"block_size={block_size} is longer than max_len={model.max_len}")
    windows = (data.numel() - 1) // block_size
    if windows < 1:
        raise ValueError(f"data has {data.numel()} tokens; block_size={block_size} needs {block_size + 1}")
    return block_size, batch_size, windows


def _device(model, data):
    return next(model.parameters(), data).device


@mistake("validation_loss",
         "nanoGPT's estimate_loss: the mean of a few RANDOM windows (global RNG), so the same model gets a "
         "different score on every call and most of the split is never read")
def validation_loss_random_batches(model, data, block_size, batch_size=256):
    block_size, batch_size, windows = _validate(model, data, block_size, batch_size)
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            starts = torch.randint(data.numel() - block_size, (min(batch_size, windows),))
            offsets = torch.arange(block_size)
            x = data[starts[:, None] + offsets].long().to(_device(model, data))
            y = data[starts[:, None] + offsets + 1].long().to(_device(model, data))
            return F.cross_entropy(model(x).flatten(0, 1), y.flatten()).item()
    finally:
        for m, t in modes:
            m.training = t


@mistake("validation_loss",
         "averages the per-batch MEAN losses: the smaller last batch weighs as much as a full one")
def validation_loss_mean_of_batch_means(model, data, block_size, batch_size=256):
    block_size, batch_size, windows = _validate(model, data, block_size, batch_size)
    end = windows * block_size
    x, y = data[:end].view(windows, block_size), data[1:end + 1].view(windows, block_size)
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    means = []
    try:
        with torch.no_grad():
            for s in range(0, windows, batch_size):
                logits = model(x[s:s + batch_size].long().to(_device(model, data)))
                target = y[s:s + batch_size].long().to(_device(model, data))
                means.append(F.cross_entropy(logits.flatten(0, 1), target.flatten()).item())
    finally:
        for m, t in modes:
            m.training = t
    return sum(means) / len(means)


@mutant("validation_loss", "never switches to eval mode: dropout stays on and the score is noisy",
        replace={"model.eval()  #": "pass  #"})
def validation_loss_in_train_mode(): ...


@mutant("validation_loss", "the modes are never restored: a model in training leaves the call in eval mode",
        replace={"module.training = training": "pass"})
def validation_loss_leaves_eval_mode(): ...


@mistake("validation_loss",
         "restores with model.train(was_training): a submodule the caller kept in eval mode comes back in train mode")
def validation_loss_flattens_modes(model, data, block_size, batch_size=256):
    was_training = model.training
    value = validation_loss(model, data, block_size, batch_size)
    model.train(was_training)
    return value


@mistake("validation_loss",
         "no try/finally: when the model raises, the caller's model is left in eval mode")
def validation_loss_no_finally(model, data, block_size, batch_size=256):
    block_size, batch_size, windows = _validate(model, data, block_size, batch_size)
    end = windows * block_size
    x, y = data[:end].view(windows, block_size), data[1:end + 1].view(windows, block_size)
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    total = 0.0
    with torch.no_grad():
        for s in range(0, windows, batch_size):
            logits = model(x[s:s + batch_size].long().to(_device(model, data)))
            target = y[s:s + batch_size].long().to(_device(model, data))
            total += F.cross_entropy(logits.flatten(0, 1), target.flatten(), reduction="sum").item()
    for m, t in modes:
        m.training = t
    return total / end


@mutant("validation_loss", "no torch.no_grad(): every batch builds an autograd graph that is never used",
        replace={"with torch.no_grad():": "with torch.enable_grad():"})
def validation_loss_builds_a_graph(): ...


@mistake("validation_loss",
         "overlapping windows with stride 1 (every start position): T times the work, and most tokens are "
         "counted many times")
def validation_loss_overlapping_windows(model, data, block_size, batch_size=256):
    block_size, batch_size, _ = _validate(model, data, block_size, batch_size)
    windows = data.unfold(0, block_size + 1, 1)  # (N - T, T + 1)
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    total, count = 0.0, 0
    try:
        with torch.no_grad():
            for s in range(0, windows.shape[0], batch_size):
                w = windows[s:s + batch_size].long().to(_device(model, data))
                logits = model(w[:, :-1])
                total += F.cross_entropy(logits.flatten(0, 1), w[:, 1:].flatten(), reduction="sum").item()
                count += w[:, 1:].numel()
    finally:
        for m, t in modes:
            m.training = t
    return total / count


@mutant("validation_loss", "drops the last whole window (off by one in the number of windows)",
        replace={"windows = (data.numel() - 1) // block_size": "windows = (data.numel() - 1) // block_size - 1",
                 "if windows < 1:": "if windows < 0:"})
def validation_loss_drops_last_window(): ...


@mutant("validation_loss", "N // T windows: the targets of the last window would need the token after the data",
        replace={"windows = (data.numel() - 1) // block_size": "windows = data.numel() // block_size"})
def validation_loss_one_window_too_many(): ...


@mutant("validation_loss", "the targets are not shifted: the model is scored on copying its input",
        replace={"y = data[1 : end + 1]": "y = data[0:end]"})
def validation_loss_no_shift(): ...


@mistake("validation_loss",
         "log(softmax(logits)): a probability that underflows to 0 gives log(0) = -inf, so large logits give inf")
def validation_loss_log_of_softmax(model, data, block_size, batch_size=256):
    block_size, batch_size, windows = _validate(model, data, block_size, batch_size)
    end = windows * block_size
    x, y = data[:end].view(windows, block_size), data[1:end + 1].view(windows, block_size)
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    total = 0.0
    try:
        with torch.no_grad():
            for s in range(0, windows, batch_size):
                probs = torch.softmax(model(x[s:s + batch_size].long().to(_device(model, data))), dim=-1)
                target = y[s:s + batch_size].long().to(_device(model, data))
                total -= torch.log(probs.gather(-1, target[..., None])).sum().item()
    finally:
        for m, t in modes:
            m.training = t
    return total / end


@mutant("validation_loss", "block_size is never compared with the model's max_len (the model crashes or "
        "silently crops instead of a clear error)",
        replace={"if max_len is not None and block_size > max_len:": "if max_len is not None and block_size < 0:"})
def validation_loss_ignores_max_len(): ...


@mutant("validation_loss", "the windows stay on the data's device instead of moving to the model's",
        replace={".to(device=device, dtype=torch.long)": ".to(dtype=torch.long)"})
def validation_loss_ignores_the_model_device(): ...


@mutant("validation_loss", "batch_size is ignored: all windows go through the model at once (memory grows "
        "with the split)",
        replace={"range(0, windows, batch_size)": "range(0, windows, windows)",
                 "x[start : start + batch_size]": "x[start:]", "y[start : start + batch_size]": "y[start:]"})
def validation_loss_one_huge_batch(): ...


@mistake("validation_loss", "accepts a 2-D (B, N) batch of token streams instead of refusing it")
def validation_loss_accepts_2d(model, data, block_size, batch_size=256):
    if isinstance(data, torch.Tensor) and data.dim() == 2:
        data = data.flatten()
    return validation_loss(model, data, block_size, batch_size)


@mistake("validation_loss", "block_size=True is taken as 1 (bool is an int subclass)")
def validation_loss_accepts_bool(model, data, block_size, batch_size=256):
    block_size = int(block_size) if isinstance(block_size, bool) else block_size
    return validation_loss(model, data, block_size, batch_size)


@variant("validation_loss",
         "unfold into (T + 1)-token windows, inference_mode, log_softmax + gather summed in float64")
def validation_loss_unfold(model, data, block_size, batch_size=256):
    for name, value in (("block_size", block_size), ("batch_size", batch_size)):
        if type(value) is not int or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    if not isinstance(data, torch.Tensor) or data.ndim != 1 or not (data.dtype.is_signed or data.dtype == torch.uint8) \
            or data.dtype.is_floating_point or data.dtype.is_complex:
        raise ValueError(f"data must be a 1-D integer tensor, got {getattr(data, 'shape', data)!r}")
    if hasattr(model, "max_len") and block_size > model.max_len:
        raise ValueError(f"block_size {block_size} > max_len {model.max_len}")
    if data.numel() < block_size + 1:
        raise ValueError(f"only {data.numel()} tokens for block_size {block_size}")
    windows = data.unfold(0, block_size + 1, block_size)  # (W, T + 1): window i starts at i * T
    params = list(model.parameters())
    device = params[0].device if params else data.device
    saved = {name: m.training for name, m in model.named_modules(remove_duplicate=False)}
    total = torch.zeros((), dtype=torch.float64)
    try:
        model.train(False)
        with torch.inference_mode():
            for chunk in windows.split(batch_size):
                chunk = chunk.to(device).long()
                logp = F.log_softmax(model(chunk[:, :-1]), dim=-1)
                total += -logp.gather(-1, chunk[:, 1:, None]).double().sum().cpu()
    finally:
        for name, m in model.named_modules(remove_duplicate=False):
            m.training = saved[name]
    return float(total) / (windows.shape[0] * block_size)


@variant("validation_loss", "a generator of batches, grad mode switched with torch.set_grad_enabled, and the "
         "token count taken from the targets actually scored")
def validation_loss_generator_style(model, data, block_size, batch_size=256):
    _validate(model, data, block_size, batch_size)

    def batches():
        n = (data.numel() - 1) // block_size
        for first in range(0, n, batch_size):
            last = min(n, first + batch_size)
            rows = [data[i * block_size:(i + 1) * block_size + 1] for i in range(first, last)]
            yield torch.stack(rows).long()

    device = next(iter(model.parameters()), data).device
    states = [m.training for m in model.modules()]
    grad_was = torch.is_grad_enabled()
    torch.set_grad_enabled(False)
    model.eval()
    total, count = 0.0, 0
    try:
        for rows in batches():
            rows = rows.to(device)
            logits = model(rows[:, :-1])
            total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), rows[:, 1:].reshape(-1),
                                     reduction="sum").item()
            count += rows[:, 1:].numel()
    finally:
        torch.set_grad_enabled(grad_was)
        for m, state in zip(model.modules(), states, strict=True):
            m.training = state
    return total / count


@mutant("validation_loss", "next(model.parameters()) without a default: a model without parameters (a fixed "
        "table of buffers) raises StopIteration instead of being scored",
        replace={"next(model.parameters(), data).device": "next(model.parameters()).device"})
def validation_loss_needs_a_parameter(): ...


@mutant("validation_loss", "the windows keep data's dtype: int32 ids reach the model, which was promised int64",
        replace={"xb = x[start : start + batch_size].to(device=device, dtype=torch.long)":
                 "xb = x[start : start + batch_size].to(device=device)"})
def validation_loss_keeps_int32(): ...


@mistake("validation_loss", "the error messages name the value but not the argument: `must be at least 1; got 0` "
         "does not say whether block_size or batch_size is wrong")
def validation_loss_unnamed_errors(model, data, block_size, batch_size=256):
    try:
        return validation_loss(model, data, block_size, batch_size)
    except ValueError as err:
        message = str(err)
        for name in ("block_size", "batch_size", "data"):
            message = message.replace(name, "value")
        raise ValueError(message) from None


# --------------------------------------------------------------------------------------------------
# split_parameters


@mistake("split_parameters", "every 2-D parameter goes to Muon: the embeddings (and an untied head) too")
def split_all_matrices(model):
    if not isinstance(getattr(model, "blocks", None), nn.Module):
        raise ValueError("model has no `blocks`")
    muon = [p for p in model.parameters() if p.requires_grad and p.dim() == 2]
    adamw = [p for p in model.parameters() if p.requires_grad and p.dim() != 2]
    return muon, adamw


@mutant("split_parameters", "every parameter inside the blocks goes to Muon, biases and LayerNorm gains too",
        replace={"if p.dim() == 2}": "}"})
def split_vectors_to_muon(): ...


@mutant("split_parameters", "matrices or higher (p.dim() >= 2): a 3-D weight in a block goes to Muon, which "
        "only takes matrices",
        replace={"if p.dim() == 2}": "if p.dim() >= 2}"})
def split_tensors_to_muon(): ...


@mistake("split_parameters", "walks the modules and lists each one's weight: the tied head and the token "
         "embedding are one Parameter, listed twice")
def split_tied_twice(model):
    if not isinstance(getattr(model, "blocks", None), nn.Module):
        raise ValueError("model has no `blocks`")
    in_blocks = {id(p) for p in model.blocks.parameters()}
    muon, adamw = [], []
    for module in model.modules():
        for p in module.parameters(recurse=False):
            if p.requires_grad:
                (muon if id(p) in in_blocks and p.dim() == 2 else adamw).append(p)
    tied = [m.weight for m in model.modules() if isinstance(m, nn.Linear) and m.weight.requires_grad
            and any(m.weight is e.weight for e in model.modules() if isinstance(e, nn.Embedding))]
    return muon, adamw + tied


@mistake("split_parameters", "only the embeddings are kept off Muon: an untied output head goes to Muon "
         "(modded-nanogpt keeps it on Adam)")
def split_head_to_muon(model):
    if not isinstance(getattr(model, "blocks", None), nn.Module):
        raise ValueError("model has no `blocks`")
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    muon = [p for p in model.parameters() if p.requires_grad and p.dim() == 2 and id(p) not in embeddings]
    adamw = [p for p in model.parameters() if p.requires_grad and not (p.dim() == 2 and id(p) not in embeddings)]
    return muon, adamw


@mutant("split_parameters", "frozen parameters (requires_grad=False) are handed to the optimizers too",
        replace={"if p.requires_grad:": "if p is not None:"})
def split_includes_frozen(): ...


@mistake("split_parameters", "walks the blocks one by one: a block shared by two layers puts its matrices "
         "in the list twice")
def split_shared_block_twice(model):
    if not isinstance(getattr(model, "blocks", None), nn.Module):
        raise ValueError("model has no `blocks`")
    muon = [p for block in model.blocks for p in block.parameters() if p.dim() == 2 and p.requires_grad]
    hidden = {id(p) for p in muon}
    adamw = [p for p in model.parameters() if p.requires_grad and id(p) not in hidden]
    return muon, adamw


@mistake("split_parameters", "sorted by parameter name: the order no longer follows model.parameters(), so a "
         "saved optimizer state would be loaded onto the wrong tensors")
def split_sorted_by_name(model):
    muon, adamw = split_parameters(model)
    names = {id(p): n for n, p in model.named_parameters()}
    return sorted(muon, key=lambda p: names[id(p)]), sorted(adamw, key=lambda p: names[id(p)])


@mutant("split_parameters", "a `blocks` that is not a module (a plain list) is not refused: it fails later "
        "with an AttributeError that does not say what is wrong",
        replace={"if not isinstance(blocks, nn.Module):": "if blocks is None:"})
def split_accepts_a_list(): ...


@variant("split_parameters", "modded-nanogpt style: names under `blocks.` with ndim == 2, from named_parameters()")
def split_by_name(model):
    if not isinstance(getattr(model, "blocks", None), nn.Module):
        raise ValueError("the model has no nn.Module named `blocks`")
    inside = {id(p) for p in model.blocks.parameters()}
    pairs = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    hidden = [p for _, p in pairs if p.ndim == 2 and id(p) in inside]
    rest = [p for _, p in pairs if not (p.ndim == 2 and id(p) in inside)]
    return hidden, rest


@variant("split_parameters", "one pass over model.modules() with a seen-set of ids, then put back in "
         "model.parameters() order")
def split_by_modules(model):
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, nn.Module):
        raise ValueError("`blocks` must be an nn.Module")
    matrices = set()
    for module in blocks.modules():
        for p in module.parameters(recurse=False):
            if p.ndim == 2:
                matrices.add(id(p))
    order = list(model.parameters())
    return ([p for p in order if p.requires_grad and id(p) in matrices],
            [p for p in order if p.requires_grad and id(p) not in matrices])


# --------------------------------------------------------------------------------------------------
# train_capstone


@mutant("train_capstone", "one step too many: the last batch goes past the token budget",
        replace={"steps = token_budget // (batch_size * block_size)":
                 "steps = token_budget // (batch_size * block_size) + 1"})
def capstone_over_budget(): ...


@mutant("train_capstone", "the batch size is fixed: a budget smaller than one batch gives zero steps, an "
        "untrained model",
        replace={"batch_size = min(r.batch_size, token_budget // block_size)": "batch_size = r.batch_size"})
def capstone_fixed_batch(): ...


@mutant("train_capstone", "callback(step, ...) with the 0-based loop index: the first call says 0 steps done",
        replace={"callback(step + 1, model)": "callback(step, model)"})
def capstone_callback_zero_based(): ...


@mistake("train_capstone", "the callback runs every 10 steps only, so the benchmark's curve misses steps")
def capstone_callback_every_10(get_batch, vocab_size, *, token_budget, block_size=64, seed=0, callback=None):
    def sparse(step, model):
        if callback is not None and step % 10 == 0:
            callback(step, model)
    return train_capstone(get_batch, vocab_size, token_budget=token_budget, block_size=block_size, seed=seed,
                          callback=sparse)


@mistake("train_capstone", "the callback gets a copy of the model, not the model being trained and returned")
def capstone_callback_copy(get_batch, vocab_size, *, token_budget, block_size=64, seed=0, callback=None):
    import copy

    def copied(step, model):
        if callback is not None:
            callback(step, copy.deepcopy(model))
    return train_capstone(get_batch, vocab_size, token_budget=token_budget, block_size=block_size, seed=seed,
                          callback=copied)


@mutant("train_capstone", "torch.manual_seed(seed) without fork_rng: the caller's global random state is reset",
        replace={"with torch.random.fork_rng(devices=[]):": "if True:"})
def capstone_leaks_the_seed(): ...


@mutant("train_capstone", "the seed is ignored (always 0): every seed trains the same model",
        replace={"torch.manual_seed(seed)": "torch.manual_seed(0)"})
def capstone_ignores_seed(): ...


@mutant("train_capstone", "never seeded: the initial weights come from the global random state, so two runs "
        "with the same seed differ",
        replace={"torch.manual_seed(seed)": "pass"})
def capstone_unseeded(): ...


@mutant("train_capstone", "the model's max_len is one short of block_size: a full window is refused",
        replace={"r.ff_dim, block_size, dropout=0.0)": "r.ff_dim, block_size - 1, dropout=0.0)"})
def capstone_max_len_too_short(): ...


@mistake("train_capstone", "trains on x as its own target (no shift): the model learns to copy its input")
def capstone_copies_input(get_batch, vocab_size, *, token_budget, block_size=64, seed=0, callback=None):
    return train_capstone(lambda n: (lambda x, y: (x, x.clone()))(*get_batch(n)), vocab_size,
                          token_budget=token_budget, block_size=block_size, seed=seed, callback=callback)


@mutant("train_capstone", "the optimizer steps are never taken: the model stays at its initial weights",
        replace={"opt.step()": "opt.zero_grad()"})
def capstone_never_steps(): ...


@mutant("train_capstone", "token_budget < block_size is not refused", replace={
    "if token_budget < block_size:": "if token_budget < 0:"})
def capstone_accepts_tiny_budget(): ...


@mutant("train_capstone", "MiniGPT is built without max_len=block_size: its default (1024) refuses longer windows",
        replace={"r.ff_dim, block_size, dropout=0.0)": "r.ff_dim, dropout=0.0)"})
def capstone_default_max_len(): ...


@mutant("train_capstone", "a budget of exactly one window is refused (<= instead of <)", replace={
    "if token_budget < block_size:": "if token_budget <= block_size:"})
def capstone_refuses_one_window(): ...


@mutant("train_capstone", "the default seed is 1, not 0: a run without a seed differs from seed=0", replace={
    "seed: int = 0,": "seed: int = 1,"})
def capstone_default_seed_1(): ...


@mistake("train_capstone", "the error messages name the value but not the argument (vocab_size, token_budget, "
         "block_size or seed?)")
def capstone_unnamed_errors(get_batch, vocab_size, *, token_budget, block_size=64, seed=0, callback=None):
    try:
        return train_capstone(get_batch, vocab_size, token_budget=token_budget, block_size=block_size, seed=seed,
                              callback=callback)
    except ValueError as err:
        message = str(err)
        for name in ("vocab_size", "token_budget", "block_size", "seed"):
            message = message.replace(name, "value")
        raise ValueError(message) from None


@mutant("train_capstone", "a bool seed (True) is taken as 1", replace={
    "if isinstance(seed, bool) or not isinstance(seed, int):": "if not isinstance(seed, int):"})
def capstone_accepts_bool_seed(): ...


@mistake("train_capstone", "a float token_budget (1e5) is accepted and truncated")
def capstone_accepts_float_budget(get_batch, vocab_size, *, token_budget, block_size=64, seed=0, callback=None):
    if isinstance(token_budget, float):
        token_budget = int(token_budget)
    return train_capstone(get_batch, vocab_size, token_budget=token_budget, block_size=block_size, seed=seed,
                          callback=callback)


def _orthogonalise(g: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """Keller Jordan's quintic Newton-Schulz iteration on a stack of matrices (..., m, n), in float32."""
    a, b, c = 3.4445, -4.7750, 2.0315
    x = g.mT if g.shape[-2] > g.shape[-1] else g
    x = x / (x.norm(dim=(-2, -1), keepdim=True) + 1e-7)
    for _ in range(steps):
        gram = x @ x.mT
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.mT if g.shape[-2] > g.shape[-1] else x


@variant("train_capstone", "a hand-written Muon (Nesterov momentum, float32 Newton-Schulz on matrices stacked "
         "by shape), two micro-batches of 8 per step with the gradients averaged, linear decay to zero")
def capstone_own_muon(get_batch, vocab_size, *, token_budget, block_size=64, seed=0, callback=None):
    for name, value in (("vocab_size", vocab_size), ("token_budget", token_budget), ("block_size", block_size)):
        if type(value) is not int or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if type(seed) is not int:
        raise ValueError(f"seed must be an int, got {seed!r}")
    if token_budget < block_size:
        raise ValueError(f"token_budget {token_budget} < block_size {block_size}")
    micro = min(8, token_budget // block_size)
    per_step = 2 if token_budget >= 2 * micro * block_size else 1
    steps = token_budget // (per_step * micro * block_size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = MiniGPT(vocab_size, 128, 4, 4, 256, block_size, 0.0)
    hidden = [p for n, p in model.named_parameters() if n.startswith("blocks.") and p.ndim == 2]
    ids = {id(p) for p in hidden}
    embed = [model.tok_emb.weight, model.pos_emb.weight]
    small = [p for p in model.parameters() if id(p) not in ids and all(p is not e for e in embed)]
    adam = torch.optim.AdamW([{"params": small, "lr": 4e-3}, {"params": embed, "lr": 4e-2}], betas=(0.9, 0.95),
                             weight_decay=0.0)
    base = [g["lr"] for g in adam.param_groups]
    shapes: dict[tuple, list] = {}
    for p in hidden:
        shapes.setdefault(tuple(p.shape), []).append(p)
    momentum = {shape: torch.zeros(len(ps), *shape) for shape, ps in shapes.items()}
    warmup = max(1, steps // 20)
    for step in range(steps):
        scale = (step + 1) / warmup if step < warmup else 1 - (step - warmup) / max(1, steps - warmup)
        model.zero_grad(set_to_none=True)
        for _ in range(per_step):
            x, y = get_batch(micro)
            (F.cross_entropy(model(x).flatten(0, 1), y.flatten()) / per_step).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        with torch.no_grad():
            for shape, ps in shapes.items():
                grads = torch.stack([p.grad for p in ps])
                momentum[shape].lerp_(grads, 0.05)
                update = _orthogonalise(grads.lerp(momentum[shape], 0.95))
                for p, u in zip(ps, update, strict=True):
                    p.add_(u, alpha=-0.03 * scale * math.sqrt(max(1.0, shape[0] / shape[1])))
        for g, lr in zip(adam.param_groups, base, strict=True):
            g["lr"] = lr * scale
        adam.step()
        if callback is not None:
            callback(step + 1, model)
    return model
