"""Catalogued mistakes and correct variants for w09_training.

Class entries subclass the reference class and override one method, so everything else stays right.
Function entries reuse the reference's other symbols (AdamW, clip_grad_norm_, warmup_cosine_lr) where the
real loop would.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from checks.harness.catalogue import mistake, mutant, variant
from reference.phase2.w09_training import (
    AdamW,
    BatchNorm1d,
    Dropout,
    GRUCell,
    LayerNorm,
    LSTMCell,
    LSTMWithAttention,
    clip_grad_norm_,
    warmup_cosine_lr,
)

# --------------------------------------------------------------------------------------------------
# LayerNorm


def _dims(module: LayerNorm) -> tuple[int, ...]:
    return tuple(range(-len(module.normalized_shape), 0))


@mistake("LayerNorm", "uses the unbiased variance (divides by N - 1, torch.var's default); LayerNorm divides by N")
class LayerNormUnbiasedVariance(LayerNorm):
    def forward(self, x):
        mean = x.mean(dim=_dims(self), keepdim=True)
        var = x.var(dim=_dims(self), keepdim=True)
        return (x - mean) / torch.sqrt(var + self.eps) * self.weight + self.bias


@mistake("LayerNorm", "adds eps outside the square root: (x - mean) / (sqrt(var) + eps)")
class LayerNormEpsOutsideSqrt(LayerNorm):
    def forward(self, x):
        mean = x.mean(dim=_dims(self), keepdim=True)
        var = (x - mean).pow(2).mean(dim=_dims(self), keepdim=True)
        return (x - mean) / (torch.sqrt(var) + self.eps) * self.weight + self.bias


@mistake("LayerNorm", "normalises only the last dimension, even when normalized_shape names two dimensions")
class LayerNormLastDimOnly(LayerNorm):
    def forward(self, x):
        mean = x.mean(dim=-1, keepdim=True)
        var = (x - mean).pow(2).mean(dim=-1, keepdim=True)
        return (x - mean) / torch.sqrt(var + self.eps) * self.weight + self.bias


@mistake("LayerNorm", "normalises over every dimension except the first (the batch), not over normalized_shape")
class LayerNormAllButBatch(LayerNorm):
    def forward(self, x):
        dims = tuple(range(1, x.dim())) if x.dim() > 1 else (0,)
        mean = x.mean(dim=dims, keepdim=True)
        var = (x - mean).pow(2).mean(dim=dims, keepdim=True)
        return (x - mean) / torch.sqrt(var + self.eps) * self.weight + self.bias


@mistake("LayerNorm", "stores weight and bias as plain tensors, not nn.Parameter: .parameters() does not see them, "
                      "so they get no gradient and are never trained")
class LayerNormPlainTensors(LayerNorm):
    def __init__(self, normalized_shape, eps=1e-5):
        super().__init__(normalized_shape, eps)
        weight, bias = self.weight.detach().clone(), self.bias.detach().clone()
        del self.weight, self.bias
        self.weight, self.bias = weight, bias

    def _apply(self, fn, recurse=True):  # keep .double() working on the plain tensors, as a learner's would
        self.weight, self.bias = fn(self.weight), fn(self.bias)
        return super()._apply(fn, recurse)


@mistake("LayerNorm", "detaches the mean and variance (treats them as constants), so the gradient with respect to x "
                      "misses their terms")
class LayerNormDetachedStatistics(LayerNorm):
    def forward(self, x):
        mean = x.mean(dim=_dims(self), keepdim=True).detach()
        var = (x - mean).pow(2).mean(dim=_dims(self), keepdim=True).detach()
        return (x - mean) / torch.sqrt(var + self.eps) * self.weight + self.bias


@mistake("LayerNorm", "subtracts the mean in place (x -= mean), destroying the caller's tensor")
class LayerNormCentresInPlace(LayerNorm):
    def forward(self, x):
        x -= x.mean(dim=_dims(self), keepdim=True)
        var = x.pow(2).mean(dim=_dims(self), keepdim=True)
        return x / torch.sqrt(var + self.eps) * self.weight + self.bias


@mistake("LayerNorm", "flattens the normalised dimensions with .view, which fails on non-contiguous input (use "
                      "reshape)")
class LayerNormView(LayerNorm):
    def forward(self, x):
        n = len(self.normalized_shape)
        flat = x.view(*x.shape[:-n], -1)
        mean = flat.mean(dim=-1, keepdim=True)
        var = (flat - mean).pow(2).mean(dim=-1, keepdim=True)
        y = ((flat - mean) / torch.sqrt(var + self.eps)).view(x.shape)
        return y * self.weight + self.bias


@mutant("LayerNorm", "defaults eps to 1e-12 (BERT's configuration) instead of nn.LayerNorm's 1e-5",
        replace={"eps: float = 1e-5": "eps: float = 1e-12"})
def layernorm_bert_eps():
    """Built from the reference with the default eps changed."""


@variant("LayerNorm", "flattens the normalised dimensions and uses torch.var_mean(correction=0) and torch.rsqrt")
class LayerNormVarMean(LayerNorm):
    def forward(self, x):
        n = len(self.normalized_shape)
        if x.dim() < n or tuple(x.shape[-n:]) != self.normalized_shape:
            raise ValueError(f"expected trailing dimensions {self.normalized_shape}, got shape {tuple(x.shape)}")
        flat = x.reshape(*x.shape[:-n], math.prod(self.normalized_shape))  # not -1: ambiguous for an empty batch
        var, mean = torch.var_mean(flat, dim=-1, correction=0, keepdim=True)
        y = ((flat - mean) * torch.rsqrt(var + self.eps)).reshape(x.shape)
        return torch.addcmul(self.bias, y, self.weight)


@mistake("LayerNorm", "computes the variance as E[x^2] - E[x]^2, which cancels catastrophically when a row's mean is "
                      "large compared with its spread (float32 rows near 1e4 lose every digit); subtract the mean "
                      "first")
class LayerNormSecondMoment(LayerNorm):
    def forward(self, x):
        n = len(self.normalized_shape)
        if tuple(x.shape[-n:]) != self.normalized_shape:
            raise ValueError(f"expected trailing dimensions {self.normalized_shape}, got shape {tuple(x.shape)}")
        dims = _dims(self)
        mean = x.mean(dim=dims, keepdim=True)
        var = (x * x).mean(dim=dims, keepdim=True) - mean * mean
        return self.weight * (x - mean) / (var + self.eps).sqrt() + self.bias


# --------------------------------------------------------------------------------------------------
# BatchNorm1d


def _bn_stats(x):
    dims = (0,) if x.dim() == 2 else (0, 2)
    shape = (1, -1) if x.dim() == 2 else (1, -1, 1)
    n = x.numel() // x.shape[1]
    return dims, shape, n


@mistake("BatchNorm1d", "updates running_var with the biased batch variance; PyTorch keeps the unbiased one "
                        "(times n / (n - 1)) for later use")
class BatchNormBiasedRunningVar(BatchNorm1d):
    def forward(self, x):
        dims, shape, n = _bn_stats(x)
        if self.training:
            mean, var = x.mean(dim=dims), x.var(dim=dims, unbiased=False)
            with torch.no_grad():
                self.running_mean.mul_(1 - self.momentum).add_(self.momentum * mean)
                self.running_var.mul_(1 - self.momentum).add_(self.momentum * var)
        else:
            mean, var = self.running_mean, self.running_var
        x_hat = (x - mean.reshape(shape)) / torch.sqrt(var.reshape(shape) + self.eps)
        return x_hat * self.weight.reshape(shape) + self.bias.reshape(shape)


@mistake("BatchNorm1d", "normalises with the batch's own statistics in eval mode too, so a prediction depends on "
                        "the other examples of its batch")
class BatchNormEvalUsesBatchStats(BatchNorm1d):
    def forward(self, x):
        dims, shape, n = _bn_stats(x)
        mean, var = x.mean(dim=dims), x.var(dim=dims, unbiased=False)
        if self.training:
            with torch.no_grad():
                self.running_mean.mul_(1 - self.momentum).add_(self.momentum * mean)
                self.running_var.mul_(1 - self.momentum).add_(self.momentum * var * n / (n - 1))
        x_hat = (x - mean.reshape(shape)) / torch.sqrt(var.reshape(shape) + self.eps)
        return x_hat * self.weight.reshape(shape) + self.bias.reshape(shape)


@mistake("BatchNorm1d", "uses the Keras momentum convention: running = momentum * running + (1 - momentum) * batch; "
                        "in PyTorch momentum is the weight of the NEW batch")
class BatchNormMomentumReversed(BatchNorm1d):
    def forward(self, x):
        dims, shape, n = _bn_stats(x)
        if self.training:
            mean, var = x.mean(dim=dims), x.var(dim=dims, unbiased=False)
            with torch.no_grad():
                self.running_mean.mul_(self.momentum).add_((1 - self.momentum) * mean)
                self.running_var.mul_(self.momentum).add_((1 - self.momentum) * var * n / (n - 1))
        else:
            mean, var = self.running_mean, self.running_var
        x_hat = (x - mean.reshape(shape)) / torch.sqrt(var.reshape(shape) + self.eps)
        return x_hat * self.weight.reshape(shape) + self.bias.reshape(shape)


@mistake("BatchNorm1d", "detaches the batch mean and variance in training, so the gradient with respect to x misses "
                        "their terms (only the running-statistics update should be detached)")
class BatchNormDetachedBatchStats(BatchNorm1d):
    def forward(self, x):
        if not self.training:
            return super().forward(x)
        dims, shape, n = _bn_stats(x)
        super().forward(x.detach())  # the running-statistics update, as the reference does it
        mean, var = x.mean(dim=dims).detach(), x.var(dim=dims, unbiased=False).detach()
        x_hat = (x - mean.reshape(shape)) / torch.sqrt(var.reshape(shape) + self.eps)
        return x_hat * self.weight.reshape(shape) + self.bias.reshape(shape)


@mistake("BatchNorm1d", "stores running_mean / running_var as nn.Parameter(requires_grad=False) instead of buffers: "
                        "every optimizer's parameter list (and weight decay) now includes them")
class BatchNormStatsAsParameters(BatchNorm1d):
    def __init__(self, num_features, momentum=0.1, eps=1e-5):
        super().__init__(num_features, momentum, eps)
        del self.running_mean, self.running_var
        self.running_mean = nn.Parameter(torch.zeros(num_features), requires_grad=False)
        self.running_var = nn.Parameter(torch.ones(num_features), requires_grad=False)


@mistake("BatchNorm1d", "computes the batch variance as E[x^2] - E[x]^2, which cancels catastrophically in float32 "
                        "when a channel's mean is large compared with its spread")
class BatchNormSecondMoment(BatchNorm1d):
    def forward(self, x):
        dims, shape, n = _bn_stats(x)
        if not self.training:
            return super().forward(x)
        mean = x.mean(dim=dims)
        var = (x * x).mean(dim=dims) - mean * mean
        with torch.no_grad():
            self.running_mean.mul_(1 - self.momentum).add_(self.momentum * mean)
            self.running_var.mul_(1 - self.momentum).add_(self.momentum * var * n / (n - 1))
        x_hat = (x - mean.reshape(shape)) / torch.sqrt(var.reshape(shape) + self.eps)
        return x_hat * self.weight.reshape(shape) + self.bias.reshape(shape)


@mutant("BatchNorm1d", "normalises the batch with the UNBIASED variance (torch.var's default); only the running "
                       "variance is unbiased",
        replace={"x.var(dim=dims, unbiased=False)": "x.var(dim=dims)"})
def batchnorm_unbiased_batch_variance():
    """Built from the reference with the biased batch variance made unbiased."""


@mutant("BatchNorm1d", "counts n = N values per channel for 3-D input, forgetting the length axis, so the running "
                       "variance gets the wrong n / (n - 1) correction",
        replace={"n = x.numel() // self.num_features": "n = x.shape[0]"})
def batchnorm_n_ignores_length():
    """Built from the reference with n taken from the batch axis alone."""


@mutant("BatchNorm1d", "registers the running statistics as non-persistent buffers: state_dict() does not save them, "
                       "so a reloaded model normalises with the initial 0 / 1",
        replace={"torch.zeros(self.num_features))": "torch.zeros(self.num_features), persistent=False)",
                 "torch.ones(self.num_features))": "torch.ones(self.num_features), persistent=False)"})
def batchnorm_buffers_not_saved():
    """Built from the reference with persistent=False on both buffers."""


@variant("BatchNorm1d", "moves channels last, works on an (n, C) matrix, and updates the running stats with lerp_")
class BatchNormChannelsLast(BatchNorm1d):
    def forward(self, x):
        if x.dim() not in (2, 3) or x.shape[1] != self.num_features:
            raise ValueError(f"expected (N, {self.num_features}) or (N, {self.num_features}, L), got {tuple(x.shape)}")
        rows = x if x.dim() == 2 else x.transpose(1, 2).reshape(-1, self.num_features)  # (n, C)
        if self.training:
            n = rows.shape[0]
            if n < 2:
                raise ValueError(f"need more than one value per channel in training, got {tuple(x.shape)}")
            var, mean = torch.var_mean(rows, dim=0, correction=0)
            with torch.no_grad():
                self.running_mean.lerp_(mean, self.momentum)
                self.running_var.lerp_(var * n / (n - 1), self.momentum)
        else:
            mean, var = self.running_mean, self.running_var
        out = (rows - mean) * torch.rsqrt(var + self.eps) * self.weight + self.bias
        if x.dim() == 2:
            return out
        return out.reshape(x.shape[0], x.shape[2], -1).transpose(1, 2)


# --------------------------------------------------------------------------------------------------
# Dropout


@mistake("Dropout", "zeroes with probability p but does not scale the survivors by 1 / (1 - p), so E[y] = (1 - p) x "
                    "in training and the next layer sees smaller inputs than in eval")
class DropoutNoScaling(Dropout):
    def forward(self, x):
        if not self.training:
            return x
        return x * (torch.rand_like(x) >= self.p)


@mistake("Dropout", "keeps each entry with probability p (mask = rand < p) instead of dropping it with probability p")
class DropoutKeepsWithProbabilityP(Dropout):
    def forward(self, x):
        if not self.training or self.p == 1.0:
            return x if not self.training else x * 0
        return x * (torch.rand_like(x) < self.p) / (1 - self.p)


@mistake("Dropout", "computes x * mask / (1 - p), which for p = 1 is 0 * inf = nan")
class DropoutNanAtPOne(Dropout):
    def forward(self, x):
        if not self.training:
            return x
        return x * (torch.rand_like(x) >= self.p) / (1 - self.p)


@mistake("Dropout", "modifies x in place (x.mul_(mask / (1 - p))), destroying the caller's tensor")
class DropoutInPlace(Dropout):
    def forward(self, x):
        if not self.training or self.p == 0.0:
            return x
        scale = 0.0 if self.p == 1.0 else 1 / (1 - self.p)
        with torch.no_grad():
            return x.mul_((torch.rand_like(x) >= self.p) * scale)


@mistake("Dropout", "re-seeds the generator inside forward (torch.manual_seed(0)), so every call drops the same "
                    "entries")
class DropoutReseeds(Dropout):
    def forward(self, x):
        torch.manual_seed(0)
        return super().forward(x)


@mistake("Dropout", "draws the mask with torch.rand(x.shape), which lives on the CPU whatever device x is on")
class DropoutMaskOnCpu(Dropout):
    def forward(self, x):
        if not self.training or self.p == 0.0:
            return x
        scale = 0.0 if self.p == 1.0 else 1 / (1 - self.p)
        return x * (torch.rand(x.shape) >= self.p) * scale


@variant("Dropout", "draws the mask with torch.bernoulli(1 - p) and divides by 1 - p only when p < 1")
class DropoutBernoulli(Dropout):
    def forward(self, x):
        if not self.training:
            return x
        if self.p == 1.0:
            return x * torch.zeros_like(x)
        mask = torch.bernoulli(torch.full_like(x, 1 - self.p))
        return x * mask / (1 - self.p)


@variant("Dropout", "zeroes the dropped entries with masked_fill after scaling everything")
class DropoutMaskedFill(Dropout):
    def forward(self, x):
        if not self.training or self.p == 0.0:
            return x
        drop = torch.rand_like(x) < self.p
        scaled = x if self.p == 1.0 else x / (1 - self.p)
        return scaled.masked_fill(drop, 0.0)


# --------------------------------------------------------------------------------------------------
# LSTMCell / GRUCell


def _zeros_state(cell, x, state, pair: bool):
    if state is not None:
        return state
    zeros = x.new_zeros(x.shape[0], cell.hidden_size)
    return (zeros, zeros) if pair else zeros


@mistake("LSTMCell", "splits the gates in the order i, f, o, g instead of PyTorch's i, f, g, o")
class LSTMCellGateOrderIFOG(LSTMCell):
    def forward(self, x, state=None):
        h, c = _zeros_state(self, x, state, True)
        gates = F.linear(x, self.weight_ih, self.bias_ih) + F.linear(h, self.weight_hh, self.bias_hh)
        i, f, o, g = gates.chunk(4, dim=1)
        c_next = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c_next), c_next


@mistake("LSTMCell", "computes h' = sigmoid(o) * c' without the tanh on the cell state")
class LSTMCellNoTanhOnCell(LSTMCell):
    def forward(self, x, state=None):
        h, c = _zeros_state(self, x, state, True)
        gates = F.linear(x, self.weight_ih, self.bias_ih) + F.linear(h, self.weight_hh, self.bias_hh)
        i, f, g, o = gates.chunk(4, dim=1)
        c_next = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * c_next, c_next


@mistake("LSTMCell", "updates the cell state in place (c.mul_(sigmoid(f)).add_(...)), overwriting the caller's state")
class LSTMCellInPlaceState(LSTMCell):
    def forward(self, x, state=None):
        h, c = _zeros_state(self, x, state, True)
        gates = F.linear(x, self.weight_ih, self.bias_ih) + F.linear(h, self.weight_hh, self.bias_hh)
        i, f, g, o = gates.chunk(4, dim=1)
        c_next = c.mul_(torch.sigmoid(f)).add_(torch.sigmoid(i) * torch.tanh(g))
        return torch.sigmoid(o) * torch.tanh(c_next), c_next


@mistake("LSTMCell", "initialises with torch.rand(...) / sqrt(H), i.e. uniformly in [0, 1/sqrt(H)): every weight "
                     "starts positive instead of in [-1/sqrt(H), 1/sqrt(H)]")
class LSTMCellPositiveInit(LSTMCell):
    def __init__(self, input_size, hidden_size):
        super().__init__(input_size, hidden_size)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.rand(p.shape) / math.sqrt(hidden_size))


@mistake("LSTMCell", "creates the default state with torch.zeros(B, H): float32 on the CPU, whatever x's dtype and "
                     "device (x.new_zeros(B, H) follows x)")
class LSTMCellCpuFloatState(LSTMCell):
    def forward(self, x, state=None):
        if state is None:
            zeros = torch.zeros(x.shape[0], self.hidden_size)
            state = (zeros, zeros)
        return super().forward(x, state)


@variant("LSTMCell", "initialises in reset_parameters() with nn.init.uniform_ (as PyTorch's RNNCellBase does) and "
                     "returns the new state through torch.addcmul and Tensor.tanh")
class LSTMCellResetParameters(LSTMCell):
    def __init__(self, input_size, hidden_size):
        super().__init__(input_size, hidden_size)
        self.reset_parameters()

    def reset_parameters(self):
        bound = 1.0 / math.sqrt(self.hidden_size)
        for weight in self.parameters():
            nn.init.uniform_(weight, -bound, bound)

    def forward(self, x, state=None):
        if x.dim() != 2 or x.shape[1] != self.input_size:
            raise ValueError(f"expected input of shape (B, {self.input_size}), got {tuple(x.shape)}")
        h, c = _zeros_state(self, x, state, True)
        gates = x @ self.weight_ih.T + self.bias_ih + h @ self.weight_hh.T + self.bias_hh
        i, f, g, o = gates.chunk(4, dim=1)
        i, f, g, o = i.sigmoid(), f.sigmoid(), g.tanh(), o.sigmoid()
        c_next = torch.addcmul(f * c, i, g)
        return o * c_next.tanh(), c_next


@variant("LSTMCell", "one matrix product of [x, h] with the weights concatenated along the input axis")
class LSTMCellConcatenated(LSTMCell):
    def forward(self, x, state=None):
        if x.dim() != 2 or x.shape[1] != self.input_size:
            raise ValueError(f"expected input of shape (B, {self.input_size}), got {tuple(x.shape)}")
        h, c = _zeros_state(self, x, state, True)
        weight = torch.cat([self.weight_ih, self.weight_hh], dim=1)  # (4H, I + H)
        gates = torch.addmm(self.bias_ih + self.bias_hh, torch.cat([x, h], dim=1), weight.t())
        H = self.hidden_size
        i, f = torch.sigmoid(gates[:, :H]), torch.sigmoid(gates[:, H:2 * H])
        g, o = torch.tanh(gates[:, 2 * H:3 * H]), torch.sigmoid(gates[:, 3 * H:])
        c_next = torch.addcmul(f * c, i, g)
        return o * c_next.tanh(), c_next


@mistake("GRUCell", "splits the gates in the order z, r, n instead of PyTorch's r, z, n")
class GRUCellGateOrderZRN(GRUCell):
    def forward(self, x, h=None):
        h = _zeros_state(self, x, h, False)
        i_z, i_r, i_n = F.linear(x, self.weight_ih, self.bias_ih).chunk(3, dim=1)
        h_z, h_r, h_n = F.linear(h, self.weight_hh, self.bias_hh).chunk(3, dim=1)
        r, z = torch.sigmoid(i_r + h_r), torch.sigmoid(i_z + h_z)
        n = torch.tanh(i_n + r * h_n)
        return (1 - z) * n + z * h


@mistake("GRUCell", "interpolates the wrong way round: h' = z * n + (1 - z) * h (in PyTorch z keeps the old state)")
class GRUCellUpdateReversed(GRUCell):
    def forward(self, x, h=None):
        h = _zeros_state(self, x, h, False)
        i_r, i_z, i_n = F.linear(x, self.weight_ih, self.bias_ih).chunk(3, dim=1)
        h_r, h_z, h_n = F.linear(h, self.weight_hh, self.bias_hh).chunk(3, dim=1)
        r, z = torch.sigmoid(i_r + h_r), torch.sigmoid(i_z + h_z)
        n = torch.tanh(i_n + r * h_n)
        return z * n + (1 - z) * h


@mistake("GRUCell", "applies the reset gate before the matrix product, W_hn (r * h) + b_hn (the original paper's "
                    "form); PyTorch computes r * (W_hn h + b_hn)")
class GRUCellResetBeforeMatmul(GRUCell):
    def forward(self, x, h=None):
        h = _zeros_state(self, x, h, False)
        H = self.hidden_size
        i_r, i_z, i_n = F.linear(x, self.weight_ih, self.bias_ih).chunk(3, dim=1)
        h_r, h_z, _ = F.linear(h, self.weight_hh, self.bias_hh).chunk(3, dim=1)
        r, z = torch.sigmoid(i_r + h_r), torch.sigmoid(i_z + h_z)
        n = torch.tanh(i_n + F.linear(r * h, self.weight_hh[2 * H:], self.bias_hh[2 * H:]))
        return (1 - z) * n + z * h


@mistake("GRUCell", "initialises the biases to zero (as many Linear layers do); PyTorch's cells draw them from "
                    "U(-1/sqrt(H), 1/sqrt(H)) like the weights")
class GRUCellZeroBias(GRUCell):
    def __init__(self, input_size, hidden_size):
        super().__init__(input_size, hidden_size)
        with torch.no_grad():
            self.bias_ih.zero_()
            self.bias_hh.zero_()


@variant("GRUCell", "slices each gate's weights and runs one F.linear per gate, with torch.lerp for the update")
class GRUCellPerGate(GRUCell):
    def forward(self, x, h=None):
        if x.dim() != 2 or x.shape[1] != self.input_size:
            raise ValueError(f"expected input of shape (B, {self.input_size}), got {tuple(x.shape)}")
        h = _zeros_state(self, x, h, False)
        H = self.hidden_size

        def gate(k, inp, weight, bias):
            return F.linear(inp, weight[k * H:(k + 1) * H], bias[k * H:(k + 1) * H])

        r = torch.sigmoid(gate(0, x, self.weight_ih, self.bias_ih) + gate(0, h, self.weight_hh, self.bias_hh))
        z = torch.sigmoid(gate(1, x, self.weight_ih, self.bias_ih) + gate(1, h, self.weight_hh, self.bias_hh))
        n = torch.tanh(gate(2, x, self.weight_ih, self.bias_ih) + r * gate(2, h, self.weight_hh, self.bias_hh))
        return torch.lerp(n, h, z)  # n + z * (h - n) = (1 - z) n + z h


# --------------------------------------------------------------------------------------------------
# LSTMWithAttention


@mistake("LSTMWithAttention", "the learning path's model: nn.MultiheadAttention without batch_first=True reads "
                              "the (B, T, H) LSTM output as (T, B, H) and attends across the batch; and no causal mask")
class LSTMWithAttentionSeed(LSTMWithAttention):
    def __init__(self, vocab_size, embedding_dim, hidden_dim, num_heads=8):
        super().__init__(vocab_size, embedding_dim, hidden_dim, num_heads)
        self.attention = nn.MultiheadAttention(hidden_dim, num_heads)

    def forward(self, x):
        lstm_out, _ = self.lstm(self.embedding(x))
        attended, _ = self.attention(lstm_out, lstm_out, lstm_out)
        return self.linear(attended)


@mistake("LSTMWithAttention", "batch_first=True but no causal mask (as in the learning path's model): position t "
                              "attends to the tokens after it")
class LSTMWithAttentionNoMask(LSTMWithAttention):
    def forward(self, x):
        lstm_out, _ = self.lstm(self.embedding(x))
        attended, _ = self.attention(lstm_out, lstm_out, lstm_out, need_weights=False)
        return self.linear(attended)


@mistake("LSTMWithAttention", "passes the causal mask as 0/1 floats: a float attn_mask is ADDED to the scores, so "
                              "the future gets +1 instead of being hidden")
class LSTMWithAttentionFloatMask(LSTMWithAttention):
    def forward(self, x):
        t = x.shape[1]
        lstm_out, _ = self.lstm(self.embedding(x))
        mask = torch.ones(t, t, dtype=lstm_out.dtype).triu(1)
        attended, _ = self.attention(lstm_out, lstm_out, lstm_out, attn_mask=mask, need_weights=False)
        return self.linear(attended)


@mistake("LSTMWithAttention", "masks the diagonal too (triu(0)): a position cannot attend to itself, and the first "
                              "position has nothing to attend to")
class LSTMWithAttentionMasksDiagonal(LSTMWithAttention):
    def forward(self, x):
        t = x.shape[1]
        lstm_out, _ = self.lstm(self.embedding(x))
        mask = torch.ones(t, t, dtype=torch.bool).triu(0)
        attended, _ = self.attention(lstm_out, lstm_out, lstm_out, attn_mask=mask, need_weights=False)
        return self.linear(attended)


@mistake("LSTMWithAttention", "does not check hidden_dim % num_heads: PyTorch fails with an AssertionError deep "
                              "inside nn.MultiheadAttention instead of a ValueError naming both numbers")
class LSTMWithAttentionUncheckedHeads(LSTMWithAttention):
    def __init__(self, vocab_size, embedding_dim, hidden_dim, num_heads=8):
        nn.Module.__init__(self)
        self.embedding = nn.Embedding(vocab_size, embedding_dim)
        self.lstm = nn.LSTM(embedding_dim, hidden_dim, batch_first=True)
        self.attention = nn.MultiheadAttention(hidden_dim, num_heads, batch_first=True)
        self.linear = nn.Linear(hidden_dim, vocab_size)


@mistake("LSTMWithAttention", "builds the causal mask with torch.ones(t, t) on the CPU, whatever device the "
                              "tokens are on")
class LSTMWithAttentionMaskOnCpu(LSTMWithAttention):
    def forward(self, x):
        t = x.shape[1]
        lstm_out, _ = self.lstm(self.embedding(x))
        mask = torch.triu(torch.ones(t, t), diagonal=1).bool()
        attended, _ = self.attention(lstm_out, lstm_out, lstm_out, attn_mask=mask, need_weights=False)
        return self.linear(attended)


@variant("LSTMWithAttention", "keeps nn.MultiheadAttention sequence-first and transposes around it, with a 0/-inf "
                              "float mask from nn.Transformer.generate_square_subsequent_mask")
class LSTMWithAttentionSequenceFirst(LSTMWithAttention):
    def __init__(self, vocab_size, embedding_dim, hidden_dim, num_heads=8):
        super().__init__(vocab_size, embedding_dim, hidden_dim, num_heads)
        self.attention = nn.MultiheadAttention(hidden_dim, num_heads)  # (T, B, H) in and out

    def forward(self, x):
        if x.dim() != 2:
            raise ValueError(f"expected (B, T) token ids, got {tuple(x.shape)}")
        lstm_out, _ = self.lstm(self.embedding(x))
        seq = lstm_out.transpose(0, 1)  # (T, B, H)
        mask = nn.Transformer.generate_square_subsequent_mask(x.shape[1], device=seq.device, dtype=seq.dtype)
        attended, _ = self.attention(seq, seq, seq, attn_mask=mask, need_weights=False)
        return self.linear(attended.transpose(0, 1))


# --------------------------------------------------------------------------------------------------
# clip_grad_norm_


def _as_list(parameters):
    return [parameters] if isinstance(parameters, torch.Tensor) else list(parameters)


@mistake("clip_grad_norm_", "clips each parameter's gradient to max_norm on its own, which changes the update's "
                            "direction and lets the global norm exceed max_norm")
def clip_per_parameter(parameters, max_norm, norm_type=2.0):
    grads = [p.grad for p in _as_list(parameters) if p.grad is not None]
    norms = [torch.linalg.vector_norm(g, norm_type) for g in grads]
    for g, norm in zip(grads, norms, strict=True):
        g.mul_(torch.clamp(max_norm / (norm + 1e-6), max=1.0))
    return torch.linalg.vector_norm(torch.stack(norms), norm_type) if norms else torch.tensor(0.0)


@mistake("clip_grad_norm_", "does not clamp the factor at 1: gradients smaller than max_norm are scaled UP to it")
def clip_scales_up(parameters, max_norm, norm_type=2.0):
    grads = [p.grad for p in _as_list(parameters) if p.grad is not None]
    if not grads:
        return torch.tensor(0.0)
    total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g, norm_type) for g in grads]), norm_type)
    for g in grads:
        g.mul_(max_norm / (total + 1e-6))
    return total


@mistake("clip_grad_norm_", "iterates `parameters` twice (once for the norm, once to clip): model.parameters() is a "
                            "generator, empty on the second pass, so nothing is clipped")
def clip_consumes_generator_twice(parameters, max_norm, norm_type=2.0):
    if isinstance(parameters, torch.Tensor):
        parameters = [parameters]
    norms = [torch.linalg.vector_norm(p.grad, norm_type) for p in parameters if p.grad is not None]
    if not norms:
        return torch.tensor(0.0)
    total = torch.linalg.vector_norm(torch.stack(norms), norm_type)
    coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    for p in parameters:
        if p.grad is not None:
            p.grad.mul_(coef)
    return total


@mistake("clip_grad_norm_", "assigns new tensors (p.grad = p.grad * coef) instead of scaling the gradients in place: "
                            "code holding the gradient tensors never sees the clipping")
def clip_assigns_new_grads(parameters, max_norm, norm_type=2.0):
    params = [p for p in _as_list(parameters) if p.grad is not None]
    if not params:
        return torch.tensor(0.0)
    total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad, norm_type) for p in params]),
                                     norm_type)
    coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    for p in params:
        p.grad = p.grad * coef
    return total


@mistake("clip_grad_norm_", "returns the norm as a Python float (total.item()) instead of a 0-dim tensor")
def clip_returns_float(parameters, max_norm, norm_type=2.0):
    return clip_grad_norm_(parameters, max_norm, norm_type).item()


@variant("clip_grad_norm_", "concatenates every gradient into one vector for the norm (max |g| for inf) and scales "
                            "with a Python float factor")
def clip_flatten_cat(parameters, max_norm, norm_type=2.0):
    if max_norm < 0:
        raise ValueError(f"max_norm must be >= 0, got {max_norm}")
    if not norm_type > 0:
        raise ValueError(f"norm_type must be positive, got {norm_type}")
    params = [p for p in _as_list(parameters) if p.grad is not None]
    if not params:
        return torch.tensor(0.0)
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    total = flat.abs().max() if math.isinf(norm_type) else flat.abs().pow(norm_type).sum().pow(1 / norm_type)
    coef = min(1.0, max_norm / (float(total) + 1e-6))
    for p in params:
        p.grad.mul_(coef)
    return total


# --------------------------------------------------------------------------------------------------
# AdamW


class _AdamWStep(AdamW):
    """The reference AdamW with the per-parameter update factored out, so a mistake overrides one line."""

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state.update(step=0, exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p))
                state["step"] += 1
                self._update(p, p.grad, state, group)
        return loss


@mistake("AdamW", "no bias correction: uses m and v directly, so the first steps are the wrong size (m and v start at "
                  "0 and are too small by 1 - beta^t)")
class AdamWNoBiasCorrection(_AdamWStep):
    def _update(self, p, g, state, group):
        lr, wd, eps, (b1, b2) = group["lr"], group["weight_decay"], group["eps"], group["betas"]
        m, v = state["exp_avg"], state["exp_avg_sq"]
        p.mul_(1 - lr * wd)
        m.mul_(b1).add_(g, alpha=1 - b1)
        v.mul_(b2).addcmul_(g, g, value=1 - b2)
        p.addcdiv_(m, v.sqrt().add_(eps), value=-lr)


@mistake("AdamW", "adds weight_decay * p to the gradient (L2 regularisation, Adam's weight_decay) instead of "
                  "decaying the weights directly")
class AdamWL2InGradient(_AdamWStep):
    def _update(self, p, g, state, group):
        lr, wd, eps, (b1, b2) = group["lr"], group["weight_decay"], group["eps"], group["betas"]
        g = g + wd * p
        m, v, t = state["exp_avg"], state["exp_avg_sq"], state["step"]
        m.mul_(b1).add_(g, alpha=1 - b1)
        v.mul_(b2).addcmul_(g, g, value=1 - b2)
        denom = (v / (1 - b2**t)).sqrt().add_(eps)
        p.addcdiv_(m, denom, value=-lr / (1 - b1**t))


@mistake("AdamW", "puts eps inside the square root: sqrt(v_hat + eps) instead of sqrt(v_hat) + eps")
class AdamWEpsInsideSqrt(_AdamWStep):
    def _update(self, p, g, state, group):
        lr, wd, eps, (b1, b2) = group["lr"], group["weight_decay"], group["eps"], group["betas"]
        m, v, t = state["exp_avg"], state["exp_avg_sq"], state["step"]
        p.mul_(1 - lr * wd)
        m.mul_(b1).add_(g, alpha=1 - b1)
        v.mul_(b2).addcmul_(g, g, value=1 - b2)
        denom = (v / (1 - b2**t) + eps).sqrt()
        p.addcdiv_(m, denom, value=-lr / (1 - b1**t))


@mistake("AdamW", "decays by weight_decay alone (p *= 1 - wd) instead of lr * weight_decay")
class AdamWDecayWithoutLr(_AdamWStep):
    def _update(self, p, g, state, group):
        lr, wd, eps, (b1, b2) = group["lr"], group["weight_decay"], group["eps"], group["betas"]
        m, v, t = state["exp_avg"], state["exp_avg_sq"], state["step"]
        p.mul_(1 - wd)
        m.mul_(b1).add_(g, alpha=1 - b1)
        v.mul_(b2).addcmul_(g, g, value=1 - b2)
        denom = (v / (1 - b2**t)).sqrt().add_(eps)
        p.addcdiv_(m, denom, value=-lr / (1 - b1**t))


@mistake("AdamW", "keeps the moments in a private dict instead of self.state, so state_dict() / load_state_dict() "
                  "lose them and a resumed run restarts the bias correction")
class AdamWPrivateState(AdamW):
    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        moments = self.__dict__.setdefault("_moments", {})
        for group in self.param_groups:
            lr, wd, eps, (b1, b2) = group["lr"], group["weight_decay"], group["eps"], group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                t, m, v = moments.get(id(p), (0, torch.zeros_like(p), torch.zeros_like(p)))
                t += 1
                moments[id(p)] = (t, m, v)
                p.mul_(1 - lr * wd)
                m.mul_(b1).add_(p.grad, alpha=1 - b1)
                v.mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
                p.addcdiv_(m, (v / (1 - b2**t)).sqrt().add_(eps), value=-lr / (1 - b1**t))
        return loss


@mutant("AdamW", "copies Adam's default weight_decay=0; AdamW's default is 1e-2",
        replace={"weight_decay: float = 1e-2": "weight_decay: float = 0.0"})
def adamw_adam_default_decay():
    """Built from the reference with the default weight decay changed."""


@mutant("AdamW", "rejects beta = 0 (checks 0 < beta < 1); beta1 = 0 (no momentum, as in RMSprop) is allowed",
        replace={"0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0": "0.0 < betas[0] < 1.0 and 0.0 < betas[1] < 1.0"})
def adamw_rejects_zero_beta():
    """Built from the reference with the lower bounds of the betas made strict."""


@variant("AdamW", "the paper's form: explicit m_hat and v_hat, the step count kept as a float tensor (as torch does)")
class AdamWPaperForm(AdamW):
    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, wd, eps, (b1, b2) = group["lr"], group["weight_decay"], group["eps"], group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if len(state) == 0:
                    state["step"] = torch.tensor(0.0)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                t = state["step"].item()
                state["exp_avg"] = b1 * state["exp_avg"] + (1 - b1) * p.grad
                state["exp_avg_sq"] = b2 * state["exp_avg_sq"] + (1 - b2) * p.grad**2
                m_hat = state["exp_avg"] / (1 - b1**t)
                v_hat = state["exp_avg_sq"] / (1 - b2**t)
                p.copy_(p * (1 - lr * wd) - lr * m_hat / (v_hat.sqrt() + eps))
        return loss


# --------------------------------------------------------------------------------------------------
# warmup_cosine_lr


@mistake("warmup_cosine_lr", "off by one at the end of the warmup: max_lr * (step + 1) / warmup_steps reaches max_lr "
                             "one step early, then stays flat for a step")
def warmup_one_step_ahead(step, warmup_steps, total_steps, max_lr, min_lr=0.0):
    if step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    return warmup_cosine_lr(step, warmup_steps, total_steps, max_lr, min_lr)


@mistake("warmup_cosine_lr", "counts the cosine's progress from warmup_steps - 1, so the rate jumps down at the end of "
                             "the warmup and reaches min_lr a step early")
def warmup_cosine_progress_off_by_one(step, warmup_steps, total_steps, max_lr, min_lr=0.0):
    if step < warmup_steps:
        return max_lr * step / warmup_steps
    if step >= total_steps:
        return float(min_lr)
    progress = min(1.0, (step - warmup_steps + 1) / (total_steps - warmup_steps))
    return min_lr + 0.5 * (max_lr - min_lr) * (1 + math.cos(math.pi * progress))


@mistake("warmup_cosine_lr", "decays to 0 instead of min_lr: max_lr * (1 + cos) / 2 ignores min_lr")
def warmup_cosine_ignores_min_lr(step, warmup_steps, total_steps, max_lr, min_lr=0.0):
    if step < warmup_steps:
        return max_lr * step / warmup_steps
    progress = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))
    return 0.5 * max_lr * (1 + math.cos(math.pi * progress))


@mutant("warmup_cosine_lr", "returns min_lr as given after the end (an int when min_lr is an int), not a float",
        replace={"return float(min_lr)": "return min_lr"})
def warmup_returns_min_lr_unconverted():
    """Built from the reference without the float() after the end of the schedule."""


@variant("warmup_cosine_lr", "writes the decay as min_lr + (max_lr - min_lr) * cos^2(pi * progress / 2), clamping "
                             "progress to [0, 1] instead of branching on total_steps")
def warmup_cosine_half_angle(step, warmup_steps, total_steps, max_lr, min_lr=0.0):
    if step < 0 or not 0 <= warmup_steps < total_steps or not 0 <= min_lr <= max_lr:
        raise ValueError(f"bad schedule arguments: step={step}, warmup_steps={warmup_steps}, "
                         f"total_steps={total_steps}, max_lr={max_lr}, min_lr={min_lr}")
    if step < warmup_steps:
        return float(max_lr * (step / warmup_steps))
    progress = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))
    return float(min_lr + (max_lr - min_lr) * math.cos(math.pi * progress / 2) ** 2)


# --------------------------------------------------------------------------------------------------
# train_model


def _loop(model, dataloader, epochs, lr, weight_decay, max_norm, warmup_steps, min_lr, *, clip_after_step=False,
          zero_grad=True, reduce="mean", view=False, per_epoch_schedule=False, loss_after_step=False):
    """The reference loop with one switch per catalogued mistake."""
    if epochs < 1 or len(dataloader) == 0:
        raise ValueError("nothing to train")
    total_steps = epochs * len(dataloader)
    optimizer = AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    losses, step = [], 0
    for epoch in range(epochs):
        model.train()
        total, count = 0.0, 0
        for inputs, targets in dataloader:
            s = epoch if per_epoch_schedule else step
            for group in optimizer.param_groups:
                group["lr"] = warmup_cosine_lr(s, warmup_steps, total_steps, lr, min_lr)
            if zero_grad:
                optimizer.zero_grad()
            output = model(inputs)
            flat = output.view(-1, output.size(-1)) if view else output.reshape(-1, output.shape[-1])
            loss = F.cross_entropy(flat, targets.reshape(-1))
            loss.backward()
            if not clip_after_step:
                clip_grad_norm_(model.parameters(), max_norm)
            optimizer.step()
            if clip_after_step:
                clip_grad_norm_(model.parameters(), max_norm)
            if loss_after_step:
                with torch.no_grad():
                    output = model(inputs)
                    loss = F.cross_entropy(output.reshape(-1, output.shape[-1]), targets.reshape(-1))
            weight = targets.numel() if reduce == "tokens" else 1  # "tokens": weigh each batch by its size
            total += loss.item() * weight
            count += weight
            step += 1
        losses.append(total if reduce == "sum" else total / count)
    return losses


@mistake("train_model", "clips the gradients after optimizer.step(): the step has already used the unclipped ones")
def train_model_clips_after_step(model, dataloader, epochs=100, lr=1e-3, weight_decay=0.01, max_norm=1.0,
                                 warmup_steps=0, min_lr=0.0):
    return _loop(model, dataloader, epochs, lr, weight_decay, max_norm, warmup_steps, min_lr, clip_after_step=True)


@mistake("train_model", "forgets optimizer.zero_grad(): gradients accumulate across batches")
def train_model_forgets_zero_grad(model, dataloader, epochs=100, lr=1e-3, weight_decay=0.01, max_norm=1.0,
                                  warmup_steps=0, min_lr=0.0):
    return _loop(model, dataloader, epochs, lr, weight_decay, max_norm, warmup_steps, min_lr, zero_grad=False)


@mistake("train_model", "returns the sum of the batch losses per epoch instead of their mean")
def train_model_sums_batch_losses(model, dataloader, epochs=100, lr=1e-3, weight_decay=0.01, max_norm=1.0,
                                  warmup_steps=0, min_lr=0.0):
    return _loop(model, dataloader, epochs, lr, weight_decay, max_norm, warmup_steps, min_lr, reduce="sum")


@mistake("train_model", "flattens the logits with .view(-1, V) (as the learning path's code did), which fails on "
                        "non-contiguous outputs")
def train_model_seed_view(model, dataloader, epochs=100, lr=1e-3, weight_decay=0.01, max_norm=1.0,
                          warmup_steps=0, min_lr=0.0):
    return _loop(model, dataloader, epochs, lr, weight_decay, max_norm, warmup_steps, min_lr, view=True)


@mistake("train_model", "advances the schedule once per epoch (like the learning path's CosineAnnealingLR) "
                        "while total_steps counts batches, so the rate barely moves")
def train_model_schedule_per_epoch(model, dataloader, epochs=100, lr=1e-3, weight_decay=0.01, max_norm=1.0,
                                   warmup_steps=0, min_lr=0.0):
    return _loop(model, dataloader, epochs, lr, weight_decay, max_norm, warmup_steps, min_lr, per_epoch_schedule=True)


@mistake("train_model", "averages the epoch's loss over tokens (weighing each batch by its size) instead of "
                        "taking the mean of the batch losses")
def train_model_token_weighted_epoch_loss(model, dataloader, epochs=100, lr=1e-3, weight_decay=0.01, max_norm=1.0,
                                          warmup_steps=0, min_lr=0.0):
    return _loop(model, dataloader, epochs, lr, weight_decay, max_norm, warmup_steps, min_lr, reduce="tokens")


@mistake("train_model", "reports each batch's loss measured again after optimizer.step() instead of the loss the "
                        "step was computed from")
def train_model_loss_after_step(model, dataloader, epochs=100, lr=1e-3, weight_decay=0.01, max_norm=1.0,
                                warmup_steps=0, min_lr=0.0):
    return _loop(model, dataloader, epochs, lr, weight_decay, max_norm, warmup_steps, min_lr, loss_after_step=True)


@variant("train_model", "uses torch.optim.AdamW, torch.nn.utils.clip_grad_norm_ and a LambdaLR scheduler stepped "
                        "after every batch, and keeps the running loss as a detached tensor")
def train_model_torch_pieces(model, dataloader, epochs=100, lr=1e-3, weight_decay=0.01, max_norm=1.0,
                             warmup_steps=0, min_lr=0.0):
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    if len(dataloader) == 0:
        raise ValueError("empty dataloader")
    total_steps = epochs * len(dataloader)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    floor = min_lr / lr if lr else 0.0
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: warmup_cosine_lr(s, warmup_steps, total_steps, 1.0, floor))
    losses = []
    for _ in range(epochs):
        model.train()
        running, batches = torch.zeros((), dtype=torch.float64), 0
        for inputs, targets in dataloader:
            optimizer.zero_grad(set_to_none=True)
            logits = model(inputs)
            loss = F.cross_entropy(logits.flatten(0, -2), targets.flatten())
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
            optimizer.step()
            scheduler.step()
            running = running + loss.detach().to(running.dtype)
            batches += 1
        losses.append((running / batches).item())
    return losses
