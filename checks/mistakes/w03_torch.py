"""Catalogued mistakes and correct variants for w03_torch."""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from checks.harness.catalogue import mistake, mutant, variant
from reference.phase1.w03_torch import GELUFunction, LinearFunction, SimpleNet

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_GELU_CUBIC = 0.044715


# --- SimpleNet -------------------------------------------------------------------------------------


@mistake("SimpleNet", "forward has no activation between the layers, so the network is one linear map")
class SimpleNetWithoutActivation(SimpleNet):
    def forward(self, x):
        return self.layer2(self.layer1(x))


@mistake("SimpleNet", "applies ReLU after the output layer as well, so the network can never output a negative")
class SimpleNetReluOnOutput(SimpleNet):
    def forward(self, x):
        return self.relu(self.layer2(self.relu(self.layer1(x))))


@mistake("SimpleNet", "builds the layers with bias=False, so the parameter count and the state dict are wrong")
class SimpleNetWithoutBias(SimpleNet):
    def __init__(self, input_size, hidden_size, output_size):
        super().__init__(input_size, hidden_size, output_size)
        self.layer1 = nn.Linear(input_size, hidden_size, bias=False)
        self.layer2 = nn.Linear(hidden_size, output_size, bias=False)


@mistake("SimpleNet", "does not check the sizes, so SimpleNet(0, 4, 1) builds a network that cannot learn")
class SimpleNetWithoutValidation(nn.Module):
    def __init__(self, input_size, hidden_size, output_size):
        super().__init__()
        self.layer1 = nn.Linear(input_size, hidden_size)
        self.relu = nn.ReLU()
        self.layer2 = nn.Linear(hidden_size, output_size)

    def forward(self, x):
        return self.layer2(self.relu(self.layer1(x)))


@mistake("SimpleNet", "checks only `size < 1`: SimpleNet(True, 4, 1) builds a network, 2.0 fails inside nn.Linear")
class SimpleNetAcceptsBoolsAndFloats(nn.Module):
    def __init__(self, input_size, hidden_size, output_size):
        super().__init__()
        for size in (input_size, hidden_size, output_size):
            if size < 1:
                raise ValueError(f"sizes must be positive, got {size!r}")
        self.layer1 = nn.Linear(input_size, hidden_size)
        self.relu = nn.ReLU()
        self.layer2 = nn.Linear(hidden_size, output_size)

    def forward(self, x):
        return self.layer2(self.relu(self.layer1(x)))


@mutant(
    "SimpleNet",
    "the error names the wrong value but not which argument it belongs to",
    replace={'raise ValueError(f"{name} must be': 'raise ValueError(f"sizes must be'},
)
def simplenet_error_without_the_argument(): ...


@mutant(
    "SimpleNet",
    "applies ReLU to the input as well, so negative inputs never reach layer1",
    replace={"self.layer2(self.relu(self.layer1(x)))": "self.layer2(self.relu(self.layer1(self.relu(x))))"},
)
def simplenet_relu_on_input(): ...


@variant("SimpleNet", "uses F.linear on the layers' parameters and clamp_min(0) instead of calling the modules")
class SimpleNetFunctional(SimpleNet):
    def forward(self, x):
        hidden = F.linear(x, self.layer1.weight, self.layer1.bias).clamp_min(0)
        flat = torch.addmm(self.layer2.bias, hidden.reshape(-1, hidden.shape[-1]), self.layer2.weight.T)
        return flat.reshape(*x.shape[:-1], self.layer2.out_features)


@variant("SimpleNet", "uses nn.ReLU(inplace=True), which overwrites layer1's output instead of allocating a new tensor")
class SimpleNetInplaceRelu(SimpleNet):
    def __init__(self, input_size, hidden_size, output_size):
        super().__init__(input_size, hidden_size, output_size)
        self.relu = nn.ReLU(inplace=True)


# --- mse_loss / cross_entropy ----------------------------------------------------------------------


def _check_reduction(pred, target, reduction):
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"unknown reduction {reduction!r}")
    if pred.shape != target.shape:
        raise ValueError(f"shapes {tuple(pred.shape)} and {tuple(target.shape)} differ")


@mistake("mse_loss", "divides the sum by the batch size N instead of by the number of elements")
def mse_loss_over_batch(pred, target, reduction="mean"):
    _check_reduction(pred, target, reduction)
    squared = (pred - target) ** 2
    if reduction == "mean":
        return squared.sum() / (pred.shape[0] if pred.ndim else 1)
    return squared.sum() if reduction == "sum" else squared


@mistake("mse_loss", "broadcasts pred (N, 1) against target (N,) into an (N, N) matrix instead of raising ValueError")
def mse_loss_broadcasting(pred, target, reduction="mean"):
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"unknown reduction {reduction!r}")
    squared = (pred - target) ** 2
    if reduction == "mean":
        return squared.mean()
    return squared.sum() if reduction == "sum" else squared


@mistake("mse_loss", "returns the mean for reduction='sum' (only 'none' is handled separately)")
def mse_loss_sum_is_mean(pred, target, reduction="mean"):
    _check_reduction(pred, target, reduction)
    squared = (pred - target) ** 2
    return squared if reduction == "none" else squared.mean()


@mistake("mse_loss", "subtracts in place (pred -= target), overwriting the caller's predictions")
def mse_loss_in_place(pred, target, reduction="mean"):
    _check_reduction(pred, target, reduction)
    pred -= target
    squared = pred**2
    if reduction == "mean":
        return squared.mean()
    return squared.sum() if reduction == "sum" else squared


@mutant(
    "mse_loss",
    "'mean' averages over the first axis only and returns one value per column",
    replace={"return squared.mean()": "return squared.mean(dim=0)"},
)
def mse_loss_mean_over_batch_axis(): ...


@variant("mse_loss", "uses a dot product of the flattened difference with itself and divides by numel")
def mse_loss_via_dot(pred, target, reduction="mean"):
    _check_reduction(pred, target, reduction)
    diff = pred - target
    if reduction == "none":
        return diff * diff
    flat = diff.reshape(-1)
    total = torch.dot(flat, flat)
    return total if reduction == "sum" else total / flat.numel()


def _check_ce(logits, target, ignore_index, label_smoothing):
    if logits.ndim != 2 or target.shape != logits.shape[:1]:
        raise ValueError(f"bad shapes {tuple(logits.shape)} and {tuple(target.shape)}")
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"label_smoothing {label_smoothing!r} is outside [0, 1]")
    keep = target != ignore_index
    bad = target[keep & ((target < 0) | (target >= logits.shape[1]))]
    if bad.numel():
        raise ValueError(f"target {int(bad[0])} is out of range")
    return keep


@mistake("cross_entropy", "takes log(softmax(x)) without the log-sum-exp trick, so logits of 1e4 give inf/nan")
def cross_entropy_naive_log_softmax(logits, target, ignore_index=-100, label_smoothing=0.0):
    keep = _check_ce(logits, target, ignore_index, label_smoothing)
    exp = logits.exp()
    log_probs = (exp / exp.sum(dim=1, keepdim=True)).log()
    safe = torch.where(keep, target, torch.zeros_like(target))
    nll = -log_probs.gather(1, safe[:, None])[:, 0]
    loss = (1 - label_smoothing) * nll - label_smoothing * log_probs.mean(dim=1)
    return torch.where(keep, loss, torch.zeros_like(loss)).sum() / keep.sum()


@mistake("cross_entropy", "averages over all N positions, ignored ones included, instead of over the counted ones")
def cross_entropy_mean_over_ignored(logits, target, ignore_index=-100, label_smoothing=0.0):
    keep = _check_ce(logits, target, ignore_index, label_smoothing)
    log_probs = logits.log_softmax(dim=1)
    safe = torch.where(keep, target, torch.zeros_like(target))
    nll = -log_probs.gather(1, safe[:, None])[:, 0]
    loss = (1 - label_smoothing) * nll - label_smoothing * log_probs.mean(dim=1)
    return torch.where(keep, loss, torch.zeros_like(loss)).sum() / target.shape[0]


@mistake("cross_entropy", "spreads label_smoothing over the C-1 wrong classes only, not uniformly over all C")
def cross_entropy_smoothing_over_other_classes(logits, target, ignore_index=-100, label_smoothing=0.0):
    keep = _check_ce(logits, target, ignore_index, label_smoothing)
    log_probs = logits.log_softmax(dim=1)
    safe = torch.where(keep, target, torch.zeros_like(target))
    num_classes = logits.shape[1]
    one_hot = F.one_hot(safe, num_classes).to(logits.dtype)
    others = (1 - one_hot) * label_smoothing / max(num_classes - 1, 1)
    dist = one_hot * (1 - label_smoothing) + others
    loss = -(dist * log_probs).sum(dim=1)
    return torch.where(keep, loss, torch.zeros_like(loss)).sum() / keep.sum()


@mistake("cross_entropy", "applies label smoothing to ignored positions too: padding still adds to the loss")
def cross_entropy_smooths_ignored(logits, target, ignore_index=-100, label_smoothing=0.0):
    keep = _check_ce(logits, target, ignore_index, label_smoothing)
    log_probs = logits.log_softmax(dim=1)
    safe = torch.where(keep, target, torch.zeros_like(target))
    nll = -log_probs.gather(1, safe[:, None])[:, 0]
    nll = torch.where(keep, nll, torch.zeros_like(nll))
    loss = (1 - label_smoothing) * nll - label_smoothing * log_probs.mean(dim=1)
    return loss.sum() / keep.sum()


@mistake("cross_entropy", "subtracts the whole batch's max, not each row's: a row far below it underflows to log(0)")
def cross_entropy_global_max(logits, target, ignore_index=-100, label_smoothing=0.0):
    keep = _check_ce(logits, target, ignore_index, label_smoothing)
    shifted = logits - logits.max()
    log_probs = shifted - shifted.exp().sum(dim=1, keepdim=True).log()
    safe = torch.where(keep, target, torch.zeros_like(target))
    nll = -log_probs.gather(1, safe[:, None])[:, 0]
    loss = (1 - label_smoothing) * nll - label_smoothing * log_probs.mean(dim=1)
    return torch.where(keep, loss, torch.zeros_like(loss)).sum() / keep.sum()


@mistake("cross_entropy", "subtracts the row max in place (logits -= ...), changing the caller's logits")
def cross_entropy_in_place(logits, target, ignore_index=-100, label_smoothing=0.0):
    keep = _check_ce(logits, target, ignore_index, label_smoothing)
    logits -= logits.max(dim=1, keepdim=True).values
    log_probs = logits - logits.exp().sum(dim=1, keepdim=True).log()
    safe = torch.where(keep, target, torch.zeros_like(target))
    nll = -log_probs.gather(1, safe[:, None])[:, 0]
    loss = (1 - label_smoothing) * nll - label_smoothing * log_probs.mean(dim=1)
    return torch.where(keep, loss, torch.zeros_like(loss)).sum() / keep.sum()


@mistake("cross_entropy", "indexes log_probs with the raw targets, so an ignored -100 is used as a class index")
def cross_entropy_indexes_ignored_targets(logits, target, ignore_index=-100, label_smoothing=0.0):
    keep = _check_ce(logits, target, ignore_index, label_smoothing)
    log_probs = logits.log_softmax(dim=1)
    nll = -log_probs[torch.arange(len(target)), target]
    loss = (1 - label_smoothing) * nll - label_smoothing * log_probs.mean(dim=1)
    return loss[keep].mean()


@mistake("cross_entropy", "divides by the count clamped to 1, so a batch with nothing counted gives 0 instead of nan")
def cross_entropy_clamped_count(logits, target, ignore_index=-100, label_smoothing=0.0):
    keep = _check_ce(logits, target, ignore_index, label_smoothing)
    log_probs = logits.log_softmax(dim=1)
    safe = torch.where(keep, target, torch.zeros_like(target))
    nll = -log_probs.gather(1, safe[:, None])[:, 0]
    loss = (1 - label_smoothing) * nll - label_smoothing * log_probs.mean(dim=1)
    return torch.where(keep, loss, torch.zeros_like(loss)).sum() / keep.sum().clamp(min=1)


@mutant(
    "cross_entropy",
    "the smoothing term sums log_probs over the classes instead of averaging them (eps per class, not eps / C)",
    replace={"uniform = -log_probs.mean(dim=1)": "uniform = -log_probs.sum(dim=1)"},
)
def cross_entropy_smoothing_sum(): ...


@mutant(
    "cross_entropy",
    "accepts target == C (an off-by-one in the range check), which then fails inside gather",
    replace={"(target >= num_classes)": "(target > num_classes)"},
)
def cross_entropy_accepts_c(): ...


@variant("cross_entropy", "averages the counted rows with boolean indexing (per_row[keep].mean()): empty gives nan")
def cross_entropy_boolean_index(logits, target, ignore_index=-100, label_smoothing=0.0):
    keep = _check_ce(logits, target, ignore_index, label_smoothing)
    counted_logits, counted_target = logits[keep], target[keep]
    log_probs = counted_logits - torch.logsumexp(counted_logits, dim=1, keepdim=True)
    nll = -log_probs.gather(1, counted_target[:, None])[:, 0]
    return ((1 - label_smoothing) * nll - label_smoothing * log_probs.mean(dim=1)).mean()


@variant("cross_entropy", "builds the smoothed one-hot target distribution and uses torch.logsumexp")
def cross_entropy_via_target_distribution(logits, target, ignore_index=-100, label_smoothing=0.0):
    keep = _check_ce(logits, target, ignore_index, label_smoothing)
    log_probs = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    num_classes = logits.shape[1]
    one_hot = F.one_hot(torch.where(keep, target, torch.zeros_like(target)), num_classes).to(logits.dtype)
    dist = one_hot * (1 - label_smoothing) + label_smoothing / num_classes
    per_example = -(dist * log_probs).sum(dim=1) * keep.to(logits.dtype)
    return per_example.sum() / keep.to(logits.dtype).sum()


# --- LinearFunction / GELUFunction -----------------------------------------------------------------


@mistake("LinearFunction", "returns the weight gradient transposed, x^T @ grad_output of shape (in, out)")
class LinearTransposedWeightGrad(LinearFunction):
    @staticmethod
    def backward(ctx, grad_output):
        x, weight = ctx.saved_tensors
        g = grad_output.reshape(-1, grad_output.shape[-1])
        grad_weight = x.reshape(-1, x.shape[-1]).T @ g
        return grad_output @ weight, grad_weight, g.sum(0) if ctx.has_bias else None


@mistake("LinearFunction", "ignores grad_output in backward (as if the loss were y.sum()), breaking the chain rule")
class LinearIgnoresGradOutput(LinearFunction):
    @staticmethod
    def backward(ctx, grad_output):
        x, weight = ctx.saved_tensors
        ones = torch.ones_like(grad_output)
        g = ones.reshape(-1, ones.shape[-1])
        return ones @ weight, g.T @ x.reshape(-1, x.shape[-1]), g.sum(0) if ctx.has_bias else None


@mistake("LinearFunction", "averages grad_output over the batch for the bias gradient instead of summing it")
class LinearBiasGradAveraged(LinearFunction):
    @staticmethod
    def backward(ctx, grad_output):
        x, weight = ctx.saved_tensors
        g = grad_output.reshape(-1, grad_output.shape[-1])
        return grad_output @ weight, g.T @ x.reshape(-1, x.shape[-1]), g.mean(0) if ctx.has_bias else None


@mistake("LinearFunction", "computes backward under torch.no_grad(), so it cannot be differentiated again")
class LinearBackwardNotDifferentiable(LinearFunction):
    @staticmethod
    def backward(ctx, grad_output):
        with torch.no_grad():
            return LinearFunction.backward(ctx, grad_output)


@mutant(
    "LinearFunction",
    "flattens with .view(), which fails when x or grad_output is not contiguous (a transposed batch)",
    replace={
        "grad_output.reshape(-1, grad_output.shape[-1])": "grad_output.view(-1, grad_output.shape[-1])",
        "x.reshape(-1, x.shape[-1])": "x.view(-1, x.shape[-1])",
    },
)
def linear_backward_with_view(): ...


@mistake("GELUFunction", "GELU backward ignores grad_output, returning gelu'(x) itself")
class GELUIgnoresGradOutput(GELUFunction):
    @staticmethod
    def backward(ctx, grad_output):
        return GELUFunction.backward(ctx, torch.ones_like(grad_output))


@mistake("GELUFunction", "GELU backward drops the 0.5 * x * (1 - tanh^2) * u'(x) term of the product rule")
class GELUMissingProductRuleTerm(GELUFunction):
    @staticmethod
    def backward(ctx, grad_output):
        (x,) = ctx.saved_tensors
        return grad_output * 0.5 * (1 + torch.tanh(_SQRT_2_OVER_PI * (x + _GELU_CUBIC * x**3)))


@mistake("GELUFunction", "GELU forward uses the exact erf form instead of the tanh approximation")
class GELUExactErf(GELUFunction):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return 0.5 * x * (1 + torch.erf(x / math.sqrt(2.0)))


@mutant(
    "GELUFunction",
    "the derivative of the cubic drops its factor 3: d/dx 0.044715 x^3 is 3 * 0.044715 x^2",
    replace={"(1.0 + 3.0 * _GELU_CUBIC * x**2)": "(1.0 + _GELU_CUBIC * x**2)"},
)
def gelu_cubic_derivative_without_3(): ...


@mistake("GELUFunction", "builds tanh from exp, (e^u - e^-u) / (e^u + e^-u): inf / inf = nan for large |x|")
class GELUHandTanh(GELUFunction):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        u = _SQRT_2_OVER_PI * (x + _GELU_CUBIC * x**3)
        return 0.5 * x * (1 + (u.exp() - (-u).exp()) / (u.exp() + (-u).exp()))


@variant("LinearFunction", "uses einsum in forward and backward and skips gradients nobody asked for")
class LinearViaEinsum(LinearFunction):
    @staticmethod
    def forward(ctx, x, weight, bias=None):
        ctx.save_for_backward(x, weight, bias)
        out = torch.einsum("...i,oi->...o", x, weight)
        return out if bias is None else out + bias

    @staticmethod
    def backward(ctx, grad_output):
        x, weight, bias = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad
        grad_x = torch.einsum("...o,oi->...i", grad_output, weight) if need_x else None
        grad_w = torch.einsum("...o,...i->oi", grad_output, x) if need_w else None
        grad_b = grad_output.reshape(-1, grad_output.shape[-1]).sum(0) if bias is not None and need_b else None
        return grad_x, grad_w, grad_b


@variant(
    "GELUFunction", "uses 0.5 (1 + tanh(u)) = sigmoid(2u) in forward and 1 - tanh(u)^2 = 1 / cosh(u)^2 in backward"
)
class GELUViaSigmoid(GELUFunction):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * torch.sigmoid(2 * _SQRT_2_OVER_PI * (x + _GELU_CUBIC * x**3))

    @staticmethod
    def backward(ctx, grad_output):
        (x,) = ctx.saved_tensors
        u = _SQRT_2_OVER_PI * (x + _GELU_CUBIC * x**3)
        sech2 = torch.cosh(u.clamp(-40, 40)).reciprocal() ** 2  # cosh overflows past |u| ~ 710: clamp, sech^2 ~ 0 there
        du = _SQRT_2_OVER_PI * (1 + 3 * _GELU_CUBIC * x * x)
        return grad_output * (torch.sigmoid(2 * u) + 0.5 * x * sech2 * du)


# --- train_step ------------------------------------------------------------------------------------


@mistake("train_step", "never calls zero_grad, so every step applies the sum of all gradients so far (the "
                       "learning path's loop with zero_grad left out)")
def train_step_without_zero_grad(model, batch, optimizer, loss_fn):
    inputs, targets = batch
    model.train()
    loss = loss_fn(model(inputs), targets)
    loss.backward()
    optimizer.step()
    return loss.item()


@mistake("train_step", "returns the loss tensor instead of loss.item(), keeping its autograd graph alive")
def train_step_returns_tensor(model, batch, optimizer, loss_fn):
    inputs, targets = batch
    model.train()
    optimizer.zero_grad()
    loss = loss_fn(model(inputs), targets)
    loss.backward()
    optimizer.step()
    return loss


@mistake("train_step", "calls zero_grad between backward and step, so the step sees no gradient and nothing is learned")
def train_step_zero_grad_before_step(model, batch, optimizer, loss_fn):
    inputs, targets = batch
    model.train()
    loss = loss_fn(model(inputs), targets)
    loss.backward()
    optimizer.zero_grad()
    optimizer.step()
    return loss.item()


@mistake("train_step", "zeroes the gradients after step, not before backward: the caller's stale gradients leak in")
def train_step_zero_grad_at_end(model, batch, optimizer, loss_fn):
    inputs, targets = batch
    model.train()
    loss = loss_fn(model(inputs), targets)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    return loss.item()


@mistake("train_step", "returns the loss recomputed after the update instead of the loss the step was taken on")
def train_step_returns_loss_after_update(model, batch, optimizer, loss_fn):
    inputs, targets = batch
    model.train()
    optimizer.zero_grad()
    loss_fn(model(inputs), targets).backward()
    optimizer.step()
    with torch.no_grad():
        return loss_fn(model(inputs), targets).item()


@mistake("train_step", "never calls model.train(), so a model left in eval mode trains with dropout off")
def train_step_keeps_eval_mode(model, batch, optimizer, loss_fn):
    inputs, targets = batch
    optimizer.zero_grad()
    loss = loss_fn(model(inputs), targets)
    loss.backward()
    optimizer.step()
    return loss.item()


@mistake("train_step", "calls F.mse_loss itself instead of the loss_fn it was given")
def train_step_hard_coded_loss(model, batch, optimizer, loss_fn):
    inputs, targets = batch
    model.train()
    optimizer.zero_grad()
    loss = F.mse_loss(model(inputs), targets)
    loss.backward()
    optimizer.step()
    return loss.item()


@mistake("train_step", "calls loss_fn(targets, outputs): the arguments swapped, harmless only for a symmetric loss")
def train_step_swapped_loss_arguments(model, batch, optimizer, loss_fn):
    inputs, targets = batch
    model.train()
    optimizer.zero_grad()
    loss = loss_fn(targets, model(inputs))
    loss.backward()
    optimizer.step()
    return loss.item()


@mistake("train_step", "calls model.train() after the forward pass, so the loss was computed in eval mode")
def train_step_train_mode_too_late(model, batch, optimizer, loss_fn):
    inputs, targets = batch
    optimizer.zero_grad()
    loss = loss_fn(model(inputs), targets)
    model.train()
    loss.backward()
    optimizer.step()
    return loss.item()


@variant("train_step", "clears gradients by setting every parameter's .grad to None and returns float(loss.detach())")
def train_step_grads_to_none(model, batch, optimizer, loss_fn):
    inputs, targets = batch
    model.train(True)
    for group in optimizer.param_groups:
        for param in group["params"]:
            param.grad = None
    loss = loss_fn(model(inputs), targets)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


# --- fit_linear_regression -------------------------------------------------------------------------


def _check_regression(x, y, lr, steps):
    if x.ndim != 2 or y.shape != x.shape[:1]:
        raise ValueError(f"bad shapes {tuple(x.shape)} and {tuple(y.shape)}")
    if type(steps) is not int or steps < 0 or not lr > 0:
        raise ValueError(f"bad steps {steps!r} or lr {lr!r}")


@mistake("fit_linear_regression", "never clears .grad, so each step descends along the sum of all past gradients")
def fit_linear_regression_accumulating(x, y, lr=0.1, steps=500):
    _check_regression(x, y, lr, steps)
    weight = torch.zeros(x.shape[1], dtype=x.dtype, requires_grad=True)
    bias = torch.zeros((), dtype=x.dtype, requires_grad=True)
    for _ in range(steps):
        ((x @ weight + bias - y) ** 2).mean().backward()
        with torch.no_grad():
            weight -= lr * weight.grad
            bias -= lr * bias.grad
    return weight.detach(), bias.detach()


@mistake("fit_linear_regression", "minimises the sum of squared errors, so the step is N times too large")
def fit_linear_regression_sum_loss(x, y, lr=0.1, steps=500):
    _check_regression(x, y, lr, steps)
    weight = torch.zeros(x.shape[1], dtype=x.dtype, requires_grad=True)
    bias = torch.zeros((), dtype=x.dtype, requires_grad=True)
    for _ in range(steps):
        grad_w, grad_b = torch.autograd.grad(((x @ weight + bias - y) ** 2).sum(), (weight, bias))
        with torch.no_grad():
            weight -= lr * grad_w
            bias -= lr * grad_b
    return weight.detach(), bias.detach()


@mistake("fit_linear_regression", "fits no bias (a line through the origin)")
def fit_linear_regression_without_bias(x, y, lr=0.1, steps=500):
    _check_regression(x, y, lr, steps)
    weight = torch.zeros(x.shape[1], dtype=x.dtype, requires_grad=True)
    for _ in range(steps):
        (grad_w,) = torch.autograd.grad(((x @ weight - y) ** 2).mean(), (weight,))
        with torch.no_grad():
            weight -= lr * grad_w
    return weight.detach(), torch.zeros((), dtype=x.dtype)


@mistake("fit_linear_regression", "returns the parameters still attached to autograd (requires_grad=True)")
def fit_linear_regression_not_detached(x, y, lr=0.1, steps=500):
    _check_regression(x, y, lr, steps)
    weight = torch.zeros(x.shape[1], dtype=x.dtype, requires_grad=True)
    bias = torch.zeros((), dtype=x.dtype, requires_grad=True)
    for _ in range(steps):
        grad_w, grad_b = torch.autograd.grad(((x @ weight + bias - y) ** 2).mean(), (weight, bias))
        with torch.no_grad():
            weight -= lr * grad_w
            bias -= lr * grad_b
    return weight, bias


@mistake("fit_linear_regression", "creates weight and bias on the default device, not on x's (it fails for GPU data)")
def fit_linear_regression_default_device(x, y, lr=0.1, steps=500):
    _check_regression(x, y, lr, steps)
    weight = torch.zeros(x.shape[1], dtype=x.dtype, requires_grad=True)
    bias = torch.zeros((), dtype=x.dtype, requires_grad=True)
    for _ in range(steps):
        ((x @ weight + bias - y) ** 2).mean().backward()
        with torch.no_grad():
            weight -= lr * weight.grad
            bias -= lr * bias.grad
        weight.grad = bias.grad = None
    return weight.detach(), bias.detach()


@mutant(
    "fit_linear_regression",
    "checks only `steps < 0`, so steps=True runs one step and steps=2.0 fails inside range()",
    replace={"isinstance(steps, bool) or not isinstance(steps, int) or steps < 0": "steps < 0"},
)
def fit_linear_regression_accepts_bool_steps(): ...


@mutant(
    "fit_linear_regression",
    "checks `lr <= 0`, which lets lr=nan through and returns nan weights",
    replace={"if not lr > 0:": "if lr <= 0:"},
)
def fit_linear_regression_accepts_nan_lr(): ...


@variant("fit_linear_regression", "takes gradients with torch.autograd.grad, so .grad is never filled or cleared")
def fit_linear_regression_autograd_grad(x, y, lr=0.1, steps=500):
    _check_regression(x, y, lr, steps)
    weight = x.new_zeros(x.shape[1]).requires_grad_()
    bias = x.new_zeros(()).requires_grad_()
    for _ in range(steps):
        grad_w, grad_b = torch.autograd.grad(((x @ weight + bias - y) ** 2).mean(), (weight, bias))
        weight = (weight - lr * grad_w).detach().requires_grad_()
        bias = (bias - lr * grad_b).detach().requires_grad_()
    return weight.detach(), bias.detach()


@variant("fit_linear_regression", "uses torch.optim.SGD and F.mse_loss on a column of ones appended to x")
def fit_linear_regression_with_sgd(x, y, lr=0.1, steps=500):
    _check_regression(x, y, lr, steps)
    design = torch.cat([x, x.new_ones(x.shape[0], 1)], dim=1)
    params = x.new_zeros(x.shape[1] + 1, requires_grad=True)
    optimizer = torch.optim.SGD([params], lr=lr)
    for _ in range(steps):
        optimizer.zero_grad()
        F.mse_loss(design @ params, y).backward()
        optimizer.step()
    params = params.detach()
    return params[:-1].clone(), params[-1].clone()


# --- to_device -------------------------------------------------------------------------------------


_KEPT = (torch.Tensor, dict, list, tuple)


@mistake("to_device", "drops the non-tensor entries instead of passing them through")
def to_device_drops_non_tensors(obj, device):
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: to_device_drops_non_tensors(v, device) for k, v in obj.items() if isinstance(v, _KEPT)}
    if isinstance(obj, list | tuple):
        items = [to_device_drops_non_tensors(v, device) for v in obj if isinstance(v, _KEPT)]
        return type(obj)(*items) if hasattr(obj, "_fields") else type(obj)(items)
    return obj


@mistake("to_device", "turns every tuple into a list")
def to_device_tuples_become_lists(obj, device):
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: to_device_tuples_become_lists(v, device) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_device_tuples_become_lists(v, device) for v in obj]
    return obj


@mistake("to_device", "turns a namedtuple into a plain tuple with tuple(...)")
def to_device_loses_namedtuple(obj, device):
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: to_device_loses_namedtuple(v, device) for k, v in obj.items()}
    if isinstance(obj, list):
        return [to_device_loses_namedtuple(v, device) for v in obj]
    if isinstance(obj, tuple):
        return tuple(to_device_loses_namedtuple(v, device) for v in obj)
    return obj


@mistake("to_device", "moves only the top level: tensors inside nested containers stay where they were")
def to_device_not_recursive(obj, device):
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        items = [v.to(device) if isinstance(v, torch.Tensor) else v for v in obj]
        return type(obj)(*items) if hasattr(obj, "_fields") else type(obj)(items)
    return obj


@mistake("to_device", "deep-copies the structure, so non-tensor objects come back as copies, not the same objects")
def to_device_deepcopies(obj, device):
    from reference.phase1.w03_torch import to_device

    return to_device(copy.deepcopy(obj), device)


@mistake("to_device", "assigns the moved tensors back into the caller's lists and dicts, mutating the input")
def to_device_in_place(obj, device):
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        for k in obj:
            obj[k] = to_device_in_place(obj[k], device)
        return obj
    if isinstance(obj, list):
        for i, v in enumerate(obj):
            obj[i] = to_device_in_place(v, device)
        return obj
    if isinstance(obj, tuple):
        items = [to_device_in_place(v, device) for v in obj]
        return type(obj)(*items) if hasattr(obj, "_fields") else tuple(items)
    return obj


@mistake("to_device", "rebuilds dicts and tuples but assigns the moved items back into the caller's lists")
def to_device_mutates_lists_only(obj, device):
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: to_device_mutates_lists_only(v, device) for k, v in obj.items()}
    if isinstance(obj, list):
        for i, v in enumerate(obj):
            obj[i] = to_device_mutates_lists_only(v, device)
        return obj
    if isinstance(obj, tuple):
        items = [to_device_mutates_lists_only(v, device) for v in obj]
        return type(obj)(*items) if hasattr(obj, "_fields") else tuple(items)
    return obj


@mistake("to_device", "returns the structure unchanged: tensors are never moved")
def to_device_never_moves(obj, device):
    return obj


@variant("to_device", "dispatches with a match statement and rebuilds namedtuples with their _make classmethod")
def to_device_by_match(obj, device):
    match obj:
        case torch.Tensor():
            return obj.to(device)
        case dict():
            return {key: to_device_by_match(value, device) for key, value in obj.items()}
        case list():
            return [to_device_by_match(item, device) for item in obj]
        case tuple() if hasattr(obj, "_make"):
            return type(obj)._make(to_device_by_match(item, device) for item in obj)
        case tuple():
            return tuple(to_device_by_match(item, device) for item in obj)
        case _:
            return obj
