"""Catalogued mistakes and correct variants for w07_char_lm.

Class entries subclass the reference's AdvancedCharLM and override one method; ``@mutant`` entries are one
edit of the reference's own source; the function entries are self-contained (the helpers ``_device``,
``_draw`` and ``_generate`` below are this catalogue's own, correct pieces that the mistakes build on).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from checks.harness.catalogue import mistake, mutant, variant
from reference.phase1.w07_char_lm import AdvancedCharLM, lm_loss, perplexity


def _device(model):
    """Where the model's parameters live (the CPU for a model without parameters)."""
    return next((p.device for p in model.parameters()), torch.device("cpu"))


# --- AdvancedCharLM ----------------------------------------------------------------------------------


@mistake("AdvancedCharLM", "drops the LSTM state (`out, _ = self.lstm(embedded)`, as the learning path did), so "
                           "every call starts from zeros and a text cannot be processed in pieces")
class CharLMIgnoringState(AdvancedCharLM):
    def forward(self, x, state=None):
        out, new_state = self.lstm(self.embedding(x))
        return self.head(self.dropout(out)), new_state


@mistake("AdvancedCharLM", "builds nn.LSTM without batch_first=True, so a (B, T) batch is read as T sequences of "
                           "length B: the model runs along the batch and mixes sequences")
class CharLMTimeFirst(AdvancedCharLM):
    def __init__(self, vocab_size, embedding_dim=128, hidden_dim=256, num_layers=2, dropout=0.2):
        super().__init__(vocab_size, embedding_dim, hidden_dim, num_layers, dropout)
        self.lstm = nn.LSTM(embedding_dim, hidden_dim, num_layers, dropout=dropout if num_layers > 1 else 0.0)


@mistake("AdvancedCharLM", "uses F.dropout(out, p) whose `training` defaults to True, so dropout stays on in eval "
                           "mode and the model's predictions are random")
class CharLMFunctionalDropout(AdvancedCharLM):
    def forward(self, x, state=None):
        out, state = self.lstm(self.embedding(x), state)
        return self.head(F.dropout(out, self.dropout.p)), state


@mistake("AdvancedCharLM", "passes dropout to a one-layer nn.LSTM, which has no layer to drop between and warns")
class CharLMOneLayerLSTMDropout(AdvancedCharLM):
    def __init__(self, vocab_size, embedding_dim=128, hidden_dim=256, num_layers=2, dropout=0.2):
        super().__init__(vocab_size, embedding_dim, hidden_dim, num_layers, dropout)
        self.lstm = nn.LSTM(embedding_dim, hidden_dim, num_layers, batch_first=True, dropout=dropout)


@mistake("AdvancedCharLM", "keeps the learning path's hard-coded dropout rates (0.2 inside the LSTM, 0.3 after it), "
                           "so the dropout argument does nothing")
class CharLMSeedDropoutRates(AdvancedCharLM):
    def __init__(self, vocab_size, embedding_dim=128, hidden_dim=256, num_layers=2, dropout=0.2):
        super().__init__(vocab_size, embedding_dim, hidden_dim, num_layers, dropout)
        self.lstm = nn.LSTM(embedding_dim, hidden_dim, num_layers, batch_first=True,
                            dropout=0.2 if num_layers > 1 else 0.0)
        self.dropout = nn.Dropout(0.3)


@mutant("AdvancedCharLM", "never passes dropout to nn.LSTM, so a multi-layer LSTM drops nothing between its layers",
        replace={"dropout=dropout if num_layers > 1 else 0.0": "dropout=0.0"})
def char_lm_without_lstm_dropout():
    """Built from the reference with the LSTM's dropout set to 0."""


@mistake("AdvancedCharLM", "builds the zero state with torch.zeros(...) on the CPU, so a model on a GPU crashes "
                           "on its first call")
class CharLMZeroStateOnCPU(AdvancedCharLM):
    def forward(self, x, state=None):
        if x.dim() != 2:
            raise ValueError(f"x must be 2-D, got shape {tuple(x.shape)}")
        if state is None:
            zeros = torch.zeros(self.lstm.num_layers, x.shape[0], self.lstm.hidden_size)
            state = (zeros, zeros.clone())
        out, state = self.lstm(self.embedding(x), state)
        return self.head(self.dropout(out)), state


@variant("AdvancedCharLM", "stacks one-layer LSTMs in a ModuleList with explicit dropout between them, and "
                           "splits/stacks the (num_layers, B, H) state by hand")
class CharLMStackedLayers(nn.Module):
    def __init__(self, vocab_size, embedding_dim=128, hidden_dim=256, num_layers=2, dropout=0.2):
        super().__init__()
        if min(vocab_size, embedding_dim, hidden_dim, num_layers) < 1 or not 0 <= dropout < 1:
            raise ValueError(f"bad arguments: vocab_size={vocab_size}, embedding_dim={embedding_dim}, "
                             f"hidden_dim={hidden_dim}, num_layers={num_layers}, dropout={dropout}")
        self.embed = nn.Embedding(vocab_size, embedding_dim)
        self.layers = nn.ModuleList(
            nn.LSTM(embedding_dim if i == 0 else hidden_dim, hidden_dim, batch_first=True) for i in range(num_layers)
        )
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(hidden_dim, vocab_size)

    def forward(self, x, state=None):
        if x.dim() != 2:
            raise ValueError(f"x must be 2-D (batch, time), got shape {tuple(x.shape)}")
        hidden = self.embed(x)
        hs, cs = [], []
        for i, layer in enumerate(self.layers):
            if i > 0:
                hidden = self.drop(hidden)  # what nn.LSTM(dropout=...) does between layers
            layer_state = None if state is None else (state[0][i:i + 1], state[1][i:i + 1])
            hidden, (h, c) = layer(hidden, layer_state)
            hs.append(h)
            cs.append(c)
        return self.out(self.drop(hidden)), (torch.cat(hs), torch.cat(cs))


# --- lm_loss / perplexity ----------------------------------------------------------------------------


@mistake("lm_loss", "takes torch.log(torch.softmax(...)), which underflows to log(0) = -inf for large logit gaps")
def lm_loss_log_of_softmax(logits, targets):
    if logits.shape[:-1] != targets.shape:
        raise ValueError(f"shapes {tuple(logits.shape)} and {tuple(targets.shape)} do not fit")
    log_probs = torch.log(torch.softmax(logits, dim=-1))
    return -log_probs.gather(-1, targets.unsqueeze(-1)).mean()


@mistake("lm_loss", "sums the loss over time and averages over the batch only, so it grows with the sequence length")
def lm_loss_summed_over_time(logits, targets):
    if logits.shape[:-1] != targets.shape:
        raise ValueError(f"shapes {tuple(logits.shape)} and {tuple(targets.shape)} do not fit")
    per_token = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none")
    per_token = per_token.reshape(targets.shape)
    return per_token.sum(-1).mean() if per_token.dim() > 1 else per_token.sum()


@mistake("lm_loss", "returns loss.item(), a float, so nothing can be backpropagated through it")
def lm_loss_as_float(logits, targets):
    if logits.shape[:-1] != targets.shape:
        raise ValueError(f"shapes {tuple(logits.shape)} and {tuple(targets.shape)} do not fit")
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)).item()


@mistake("lm_loss", "flattens with .view(-1, V), which fails on logits that are not contiguous in memory (a slice "
                   "or a transpose); .reshape copies only when it must")
def lm_loss_with_view(logits, targets):
    if logits.shape[:-1] != targets.shape:
        raise ValueError(f"shapes {tuple(logits.shape)} and {tuple(targets.shape)} do not fit")
    return F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.view(-1))


@mistake("lm_loss", "moves the classes to dim 1 with logits.transpose(1, 2), which is right only for (B, T, V) "
                   "logits, not for the other leading shapes the docstring allows")
def lm_loss_only_for_3d(logits, targets):
    if logits.shape[:-1] != targets.shape:
        raise ValueError(f"shapes {tuple(logits.shape)} and {tuple(targets.shape)} do not fit")
    return F.cross_entropy(logits.transpose(1, 2), targets)


@variant("lm_loss", "gathers the target's log-probability from F.log_softmax by hand")
def lm_loss_by_gather(logits, targets):
    if logits.shape[:-1] != targets.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} do not fit")
    log_probs = F.log_softmax(logits, dim=-1)
    return -log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1).mean()


@variant("lm_loss", "uses F.nll_loss on F.log_softmax rows, with the rows flattened by flatten(0, -2)")
def lm_loss_nll(logits, targets):
    if tuple(logits.shape[:-1]) != tuple(targets.shape):
        raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} do not fit")
    rows = logits.reshape(-1, logits.shape[-1])
    return F.nll_loss(F.log_softmax(rows, dim=-1), targets.flatten())


@mistake("perplexity", "averages the per-batch mean losses, so a short last batch weighs as much as a full one")
def perplexity_mean_of_batch_means(model, loader):
    was_training = model.training
    model.eval()
    with torch.no_grad():
        losses = [lm_loss(model(x)[0], y).item() for x, y in loader]
    model.train(was_training)
    return math.exp(sum(losses) / len(losses))


@mistake("perplexity", "evaluates in train mode, so dropout is on and the model is measured with noise")
def perplexity_in_train_mode(model, loader):
    total, count = 0.0, 0
    with torch.no_grad():
        for x, y in loader:
            total += lm_loss(model(x)[0], y).item() * y.numel()
            count += y.numel()
    return math.exp(total / count)


@mistake("perplexity", "evaluates with autograd on (no torch.no_grad()), building graphs nobody backpropagates")
def perplexity_with_grad(model, loader):
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for x, y in loader:
        total += lm_loss(model(x)[0], y).item() * y.numel()
        count += y.numel()
    model.train(was_training)
    return math.exp(total / count)


@mistake("perplexity", "calls model.eval() and leaves the model there, so training that follows runs without dropout")
def perplexity_leaves_eval_mode(model, loader):
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for x, y in loader:
            total += lm_loss(model(x)[0], y).item() * y.numel()
            count += y.numel()
    return math.exp(total / count)


@mistake("perplexity", "multiplies the probabilities of all tokens and takes the N-th root, which underflows to 0 "
                       "after a few hundred tokens (perplexity inf); sum log-probabilities instead")
def perplexity_product_of_probabilities(model, loader):
    was_training = model.training
    model.eval()
    product, count = 1.0, 0
    with torch.no_grad():
        for x, y in loader:
            probs = torch.softmax(model(x)[0], dim=-1).gather(-1, y.unsqueeze(-1))
            product *= float(torch.prod(probs.double()))
            count += y.numel()
    model.train(was_training)
    if count == 0:
        raise ValueError("no tokens")
    return product ** (-1.0 / count) if product > 0 else math.inf


@mutant("perplexity", "calls the model on the batches where the loader left them (the CPU), so a model on a GPU "
                      "crashes", replace={"x, y = (t.to(device) for t in batch)": "x, y = batch"})
def perplexity_not_moving_batches():
    """Built from the reference without moving the batches to the model's device."""


@variant("perplexity", "sums per-token losses with reduction='sum' under torch.inference_mode(), in float64")
def perplexity_by_summed_tokens(model, loader):
    was_training = model.training
    model.eval()
    device = _device(model)
    total = torch.zeros((), dtype=torch.float64)
    count = 0
    try:
        with torch.inference_mode():
            for x, y in loader:
                logits, _ = model(x.to(device))
                y = y.to(device)
                total += F.cross_entropy(logits.flatten(0, -2), y.flatten(), reduction="sum").double().cpu()
                count += y.numel()
    finally:
        model.train(was_training)
    if count == 0:
        raise ValueError("no tokens")
    return float(torch.exp(total / count))


# --- train_char_lm -----------------------------------------------------------------------------------


def _train_epoch(model, loader, optimizer, grad_clip):
    """One epoch of the reference's training step; returns (sum of token losses, tokens)."""
    total, count = 0.0, 0
    for x, y in loader:
        optimizer.zero_grad()
        loss = lm_loss(model(x)[0], y)
        loss.backward()
        if grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        total += loss.item() * y.numel()
        count += y.numel()
    return total, count


def _token_weighted_loss(model, loader):
    total, count = 0.0, 0
    for x, y in loader:
        total += lm_loss(model(x)[0], y).item() * y.numel()
        count += y.numel()
    return total / count


@mistake("train_char_lm", "validates in train mode (never calls model.eval()), so dropout damages the validation loss")
def train_validating_in_train_mode(model, train_loader, val_loader, epochs, lr=2e-3, grad_clip=1.0):
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    history = {"train_loss": [], "val_loss": []}
    model.train()
    for _ in range(epochs):
        total, count = _train_epoch(model, train_loader, optimizer, grad_clip)
        history["train_loss"].append(total / count)
        with torch.no_grad():
            history["val_loss"].append(_token_weighted_loss(model, val_loader))
    return history


@mistake("train_char_lm", "validates with autograd on (no torch.no_grad()), building a graph for every batch")
def train_validating_with_grad(model, train_loader, val_loader, epochs, lr=2e-3, grad_clip=1.0):
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    history = {"train_loss": [], "val_loss": []}
    for _ in range(epochs):
        model.train()
        total, count = _train_epoch(model, train_loader, optimizer, grad_clip)
        history["train_loss"].append(total / count)
        model.eval()
        history["val_loss"].append(_token_weighted_loss(model, val_loader))
    return history


@mistake("train_char_lm", "calls model.train() once before the loop; validation leaves the model in eval mode, so "
                          "from the second epoch on it trains without dropout")
def train_switching_to_train_mode_once(model, train_loader, val_loader, epochs, lr=2e-3, grad_clip=1.0):
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    history = {"train_loss": [], "val_loss": []}
    model.train()
    for _ in range(epochs):
        total, count = _train_epoch(model, train_loader, optimizer, grad_clip)
        history["train_loss"].append(total / count)
        history["val_loss"].append(math.log(perplexity(model, val_loader)))
        model.eval()
    return history


@mistake("train_char_lm", "records the mean of the batch means as the epoch's train loss, so a short last batch "
                          "weighs as much as a full one")
def train_loss_mean_of_batch_means(model, train_loader, val_loader, epochs, lr=2e-3, grad_clip=1.0):
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    history = {"train_loss": [], "val_loss": []}
    for _ in range(epochs):
        model.train()
        losses = []
        for x, y in train_loader:
            optimizer.zero_grad()
            loss = lm_loss(model(x)[0], y)
            loss.backward()
            if grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            optimizer.step()
            losses.append(loss.item())
        history["train_loss"].append(sum(losses) / len(losses))
        history["val_loss"].append(math.log(perplexity(model, val_loader)))
    return history


@mistake("train_char_lm", "never calls optimizer.zero_grad(), so every step uses the sum of all gradients so far")
def train_without_zero_grad(model, train_loader, val_loader, epochs, lr=2e-3, grad_clip=1.0):
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    history = {"train_loss": [], "val_loss": []}
    for _ in range(epochs):
        model.train()
        total, count = 0.0, 0
        for x, y in train_loader:
            loss = lm_loss(model(x)[0], y)
            loss.backward()
            if grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            optimizer.step()
            total += loss.item() * y.numel()
            count += y.numel()
        history["train_loss"].append(total / count)
        history["val_loss"].append(math.log(perplexity(model, val_loader)))
    return history


@mutant("train_char_lm", "creates the Adam optimizer inside the epoch loop, so its moment estimates (and step "
                         "count) restart every epoch",
        replace={"model.train()  # every epoch": "optimizer = torch.optim.Adam(model.parameters(), lr=lr)\n"
                                                "        model.train()  # every epoch"})
def train_recreating_optimizer_each_epoch():
    """Built from the reference with a second optimizer created at the start of every epoch."""


@mutant("train_char_lm", "clips each parameter's gradient to the norm on its own instead of the global norm of all "
                         "gradients together, which changes the direction of the step",
        replace={"torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)":
                 "[torch.nn.utils.clip_grad_norm_(p, grad_clip) for p in model.parameters()]"})
def train_clipping_each_parameter():
    """Built from the reference with per-parameter clipping."""


@mutant("train_char_lm", "clips to a hard-coded 1.0, so the grad_clip argument is ignored",
        replace={"clip_grad_norm_(model.parameters(), grad_clip)": "clip_grad_norm_(model.parameters(), 1.0)"})
def train_ignoring_grad_clip():
    """Built from the reference with the threshold hard-coded."""


@mutant("train_char_lm", "uses torch.optim.SGD instead of the documented Adam",
        replace={"torch.optim.Adam(": "torch.optim.SGD("})
def train_with_sgd():
    """Built from the reference with SGD in place of Adam."""


@mutant("train_char_lm", "calls the model on the batches where the loader left them (the CPU), so a model on a GPU "
                         "crashes", replace={"x, y = (t.to(device) for t in batch)": "x, y = batch"})
def train_not_moving_batches():
    """Built from the reference without moving the batches to the model's device."""


@mistake("train_char_lm", "carries the LSTM state from one training batch to the next (detached), although the "
                          "batches are independent chunks")
def train_carrying_state(model, train_loader, val_loader, epochs, lr=2e-3, grad_clip=1.0):
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    history = {"train_loss": [], "val_loss": []}
    for _ in range(epochs):
        model.train()
        total, count, state = 0.0, 0, None
        for x, y in train_loader:
            optimizer.zero_grad()
            logits, state = model(x, state)
            if state is not None:
                state = tuple(s.detach() for s in state)
            loss = lm_loss(logits, y)
            loss.backward()
            if grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            optimizer.step()
            total += loss.item() * y.numel()
            count += y.numel()
        history["train_loss"].append(total / count)
        history["val_loss"].append(math.log(perplexity(model, val_loader)))
    return history


@variant("train_char_lm", "clears the gradients by hand (p.grad = None) on a list of the trainable parameters, "
                          "accumulates the losses in a float64 tensor, and validates under torch.inference_mode() "
                          "with its own token-weighted sum")
def train_by_hand(model, train_loader, val_loader, epochs, lr=2e-3, grad_clip=1.0):
    if epochs < 0 or lr < 0 or (grad_clip is not None and grad_clip <= 0):
        raise ValueError(f"bad arguments: epochs={epochs}, lr={lr}, grad_clip={grad_clip}")
    device = _device(model)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=lr)
    history = {"train_loss": [], "val_loss": []}
    for _ in range(epochs):
        model.train(True)
        loss_sum = torch.zeros((), dtype=torch.float64)
        tokens = 0
        for x, y in train_loader:
            x, y = x.to(device), y.to(device)
            for p in params:
                p.grad = None
            logits, _ = model(x)
            loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
            loss.backward()
            if grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(params, max_norm=grad_clip)
            optimizer.step()
            loss_sum += loss.detach().double().cpu() * y.numel()
            tokens += y.numel()
        if tokens == 0:
            raise ValueError("empty train_loader")
        history["train_loss"].append(float(loss_sum / tokens))
        model.train(False)
        val_sum, val_tokens = 0.0, 0
        with torch.inference_mode():
            for x, y in val_loader:
                logits, _ = model(x.to(device))
                val_sum += F.cross_entropy(logits.flatten(0, 1), y.to(device).flatten(), reduction="sum").item()
                val_tokens += y.numel()
        history["val_loss"].append(val_sum / val_tokens)
    return history


# --- sample ------------------------------------------------------------------------------------------


def _draw(logits, temperature, top_k, generator):
    """The next id from one row of logits (V,), as the docstring says: greedy at 0, else filtered softmax."""
    if temperature == 0:
        return int(torch.argmax(logits))
    logits = logits.float().cpu() / temperature
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.numel())).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return int(torch.multinomial(torch.softmax(logits, -1), 1, generator=generator))


def _generate(model, vocab, prompt, length, pick):
    """A correct generation loop (eval mode, no grad, state carried) with a replaceable way of picking ids."""
    ids = list(vocab.encode(prompt))
    device = _device(model)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        logits, state = model(torch.tensor([ids], device=device))
        for _ in range(length):
            token = pick(logits[0, -1])
            ids.append(token)
            logits, state = model(torch.tensor([[token]], device=device), state)
    model.train(was_training)
    return vocab.decode(ids)


def _check_sample_args(prompt, length, temperature, top_k):
    if temperature < 0 or length < 0 or not prompt or (top_k is not None and top_k < 1):
        raise ValueError(f"bad arguments: prompt={prompt!r}, length={length}, temperature={temperature}, top_k={top_k}")


@mistake("sample", "divides the logits by the temperature even when it is 0, which gives inf/nan probabilities "
                   "instead of the greedy choice")
def sample_dividing_by_zero(model, vocab, prompt, length, temperature=1.0, top_k=None, generator=None):
    def pick(logits):
        scaled = logits / temperature
        if top_k is not None:
            kth = torch.topk(scaled, min(top_k, scaled.numel())).values[-1]
            scaled = scaled.masked_fill(scaled < kth, float("-inf"))
        return int(torch.multinomial(torch.softmax(scaled, -1), 1, generator=generator))

    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    return _generate(model, vocab, prompt, length, pick)


@mutant("sample", "ignores `generator` and draws from the global random generator, so a seed does not reproduce "
                  "the text", replace={"top_k, generator)": "top_k, None)"})
def sample_ignoring_generator():
    """Built from the reference with the generator not passed on."""


@mistake("sample", "multiplies the logits by the temperature instead of dividing, so T < 1 flattens and T > 1 "
                   "sharpens")
def sample_multiplying_temperature(model, vocab, prompt, length, temperature=1.0, top_k=None, generator=None):
    _check_sample_args(prompt, length, temperature, top_k)
    if temperature == 0:
        return _generate(model, vocab, prompt, length, lambda logits: int(torch.argmax(logits)))
    return _generate(model, vocab, prompt, length,
                     lambda logits: _draw(logits * temperature * temperature, temperature, top_k, generator))


@mistake("sample", "sets the logits outside the top k to 0 instead of -inf, so exp(0) keeps them alive")
def sample_top_k_zero_fill(model, vocab, prompt, length, temperature=1.0, top_k=None, generator=None):
    _check_sample_args(prompt, length, temperature, top_k)

    def pick(logits):
        if temperature == 0:
            return int(torch.argmax(logits))
        logits = logits / temperature
        if top_k is not None:
            kth = torch.topk(logits, min(top_k, logits.numel())).values[-1]
            logits = logits.masked_fill(logits < kth, 0.0)
        return int(torch.multinomial(torch.softmax(logits, -1), 1, generator=generator))

    return _generate(model, vocab, prompt, length, pick)


@mutant("sample", "generates in train mode (no model.eval()), so dropout perturbs every prediction",
        replace={"model.eval()  # no dropout while generating": "pass"})
def sample_in_train_mode():
    """Built from the reference without the switch to eval mode."""


@mutant("sample", "feeds each new id without the state, so every step after the prompt starts from zeros and "
                  "forgets the text so far", replace={"device=device), state)": "device=device))"})
def sample_dropping_state():
    """Built from the reference with the state left out of the one-id calls."""


@mutant("sample", "creates the new ids with torch.tensor([[token]]) on the CPU, so a model on a GPU crashes on "
                  "the second call", replace={"torch.tensor([[token]], device=device)": "torch.tensor([[token]])"})
def sample_new_ids_on_cpu():
    """Built from the reference with the one-id inputs created on the CPU."""


@mistake("sample", "feeds only the last character of the prompt, so the rest of the prompt is never read")
def sample_from_last_prompt_char(model, vocab, prompt, length, temperature=1.0, top_k=None, generator=None):
    _check_sample_args(prompt, length, temperature, top_k)
    ids = list(vocab.encode(prompt))
    was_training = model.training
    model.eval()
    with torch.no_grad():
        logits, state = model(torch.tensor([ids[-1:]]))
        for _ in range(length):
            ids.append(_draw(logits[0, -1], temperature, top_k, generator))
            logits, state = model(torch.tensor([[ids[-1]]]), state)
    model.train(was_training)
    return vocab.decode(ids)


@mistake("sample", "re-reads the whole text every step instead of feeding one id with the state: the same "
                   "distribution, but each new character costs a pass over everything so far (quadratic time)")
def sample_rereading_text(model, vocab, prompt, length, temperature=1.0, top_k=None, generator=None):
    _check_sample_args(prompt, length, temperature, top_k)
    ids = list(vocab.encode(prompt))
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for _ in range(length):
            logits, _ = model(torch.tensor([ids], device=_device(model)))
            ids.append(_draw(logits[0, -1], temperature, top_k, generator))
    model.train(was_training)
    return vocab.decode(ids)


@variant("sample", "draws with the Gumbel-max trick: argmax(logits / T - log(Exponential noise)) from the generator")
def sample_gumbel_max(model, vocab, prompt, length, temperature=1.0, top_k=None, generator=None):
    _check_sample_args(prompt, length, temperature, top_k)

    def pick(logits):
        logits = logits.double().cpu()
        if temperature == 0 or top_k == 1:
            return int(torch.argmax(logits))
        scaled = logits / temperature
        if top_k is not None and top_k < scaled.numel():
            drop = torch.argsort(scaled, descending=True)[top_k:]
            scaled[drop] = float("-inf")
        noise = torch.empty(scaled.shape, dtype=torch.float64).exponential_(generator=generator)
        return int(torch.argmax(scaled - noise.log()))

    return _generate(model, vocab, prompt, length, pick)


@variant("sample", "keeps the top k by scattering them into a row of -inf, builds inputs with torch.as_tensor, and "
                   "does not run the model after the last character (its logits would never be used)")
def sample_scatter_top_k(model, vocab, prompt, length, temperature=1.0, top_k=None, generator=None):
    _check_sample_args(prompt, length, temperature, top_k)
    device = _device(model)
    ids = list(vocab.encode(prompt))
    mode = model.training
    model.train(False)
    try:
        with torch.no_grad():
            logits, state = model(torch.as_tensor(ids, device=device).unsqueeze(0))
            for step in range(length):
                row = logits[0, -1].float().cpu()
                if temperature == 0:
                    token = int(row.argmax())
                else:
                    row = row / temperature
                    if top_k is not None:
                        top = torch.topk(row, min(top_k, row.numel()))
                        row = torch.full_like(row, float("-inf")).scatter(0, top.indices, top.values)
                    token = int(torch.multinomial(row.softmax(0), 1, generator=generator))
                ids.append(token)
                if step < length - 1:
                    logits, state = model(torch.as_tensor([[token]], device=device), state)
    finally:
        model.train(mode)
    return vocab.decode(ids)


# --- plot_history ------------------------------------------------------------------------------------


@mistake("plot_history", "creates the figure with plt.figure(), which pyplot keeps in its global list until "
                         "plt.close: every call leaks a figure")
def plot_history_with_pyplot(history):
    import matplotlib.pyplot as plt

    if not history:
        raise ValueError("empty history")
    fig = plt.figure()
    ax = fig.add_subplot()
    for name, values in history.items():
        ax.plot(range(1, len(values) + 1), list(values), label=name)
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.legend()
    return fig


@mistake("plot_history", "plots only history['train_loss'], so the validation curve is missing")
def plot_history_train_only(history):
    from matplotlib.figure import Figure

    if not history:
        raise ValueError("empty history")
    fig = Figure()
    ax = fig.add_subplot()
    values = list(history.get("train_loss", next(iter(history.values()))))
    ax.plot(range(1, len(values) + 1), values, label="train_loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.legend()
    return fig


@mistake("plot_history", "plots against the list index (0, 1, ...) instead of the epoch number (1, 2, ...)")
def plot_history_from_zero(history):
    from matplotlib.figure import Figure

    if not history:
        raise ValueError("empty history")
    fig = Figure()
    ax = fig.add_subplot()
    for name, values in history.items():
        ax.plot(list(values), label=name)
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.legend()
    return fig


@mistake("plot_history", "draws unlabelled lines and no legend, so nobody can tell train from validation")
def plot_history_unlabelled(history):
    from matplotlib.figure import Figure

    if not history:
        raise ValueError("empty history")
    fig = Figure()
    ax = fig.add_subplot()
    for values in history.values():
        ax.plot(range(1, len(values) + 1), list(values))
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    return fig


@mistake("plot_history", "draws each curve on its own Axes (fig.subplots(len(history))), so train and validation "
                         "cannot be compared on one scale")
def plot_history_one_axes_per_curve(history):
    from matplotlib.figure import Figure

    if not history:
        raise ValueError("empty history")
    fig = Figure()
    axes = fig.subplots(len(history), squeeze=False)[:, 0]
    for ax, (name, values) in zip(axes, history.items(), strict=True):
        ax.plot(range(1, len(values) + 1), list(values), label=name)
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss")
        ax.legend()
    return fig


@variant("plot_history", "builds the figure with Figure(layout='constrained').subplots() and numpy x values, and "
                         "sets each label on the returned Line2D")
def plot_history_subplots(history):
    import numpy as np
    from matplotlib.figure import Figure

    if len(history) == 0:
        raise ValueError("nothing to plot")
    fig = Figure(layout="constrained")
    ax = fig.subplots()
    for name in history:
        ys = np.asarray(history[name], dtype=float)
        (line,) = ax.plot(np.arange(1, ys.size + 1), ys, linestyle="--")
        line.set_label(name)
    ax.legend(loc="upper right")
    ax.set(xlabel="epoch", ylabel="loss", title="training history")
    return fig
