"""Catalogued mistakes and correct variants for m07_multimodal.

Three kinds of entries, each the simplest way to state its mistake:

- ``@mutant``: a small slip in the reference's own code (a dropped ``/ 2``, ``dim=0`` for ``dim=-1``);
- a function, or a class that subclasses the reference class and overrides one method, so that everything
  else stays right and the check aimed at the mistake is the one that catches it;
- ``@variant``: an unusual but correct implementation, written in another style than the reference, that
  every check must accept (the proof that the checks do not over-fit the reference).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from checks.harness.catalogue import mistake, mutant, variant
from reference.phase4.m07_multimodal import PatchEmbed, clip_loss, log_mel_spectrogram, mel_filterbank

# --------------------------------------------------------------------------------------------------
# clip_loss


def _validate_clip(image_emb, text_emb, temperature):
    """The reference's input checks, so that each mistake is caught by the check aimed at it."""
    if image_emb.ndim != 2 or image_emb.shape != text_emb.shape:
        raise ValueError(f"bad shapes {tuple(image_emb.shape)} and {tuple(text_emb.shape)}")
    if not image_emb.is_floating_point() or image_emb.dtype != text_emb.dtype:
        raise ValueError(f"bad dtypes {image_emb.dtype} and {text_emb.dtype}")
    if image_emb.shape[0] == 0:
        raise ValueError("B = 0: empty batch")
    if isinstance(temperature, torch.Tensor) and temperature.numel() != 1:
        raise ValueError(f"temperature of shape {tuple(temperature.shape)}")
    if not temperature > 0:
        raise ValueError(f"temperature {float(temperature)} must be > 0")


@mutant("clip_loss", "the embeddings are not normalised, so long vectors win by their size instead of their direction",
        replace={"img = F.normalize(image_emb, dim=-1)": "img = image_emb",
                 "txt = F.normalize(text_emb, dim=-1)": "txt = text_emb"})
def clip_no_normalisation(): ...


@mutant("clip_loss", "the embeddings are normalised over the batch (dim=0) instead of over each row (dim=-1)",
        replace={"img = F.normalize(image_emb, dim=-1)": "img = F.normalize(image_emb, dim=0)",
                 "txt = F.normalize(text_emb, dim=-1)": "txt = F.normalize(text_emb, dim=0)"})
def clip_normalised_over_the_batch(): ...


@mutant("clip_loss", "only the image -> text direction: CLIP's loss is symmetric, the average of both directions",
        replace={"return (image_to_text + text_to_image) / 2": "return image_to_text"})
def clip_one_direction(): ...


@mutant("clip_loss", "the two directions are added, not averaged: the loss is twice too large",
        replace={"return (image_to_text + text_to_image) / 2": "return image_to_text + text_to_image"})
def clip_sum_of_directions(): ...


@mutant("clip_loss", "the logits are multiplied by the temperature instead of divided by it (CLIP's logit_scale is "
        "1 / temperature)", replace={"logits = img @ txt.T / temperature": "logits = img @ txt.T * temperature"})
def clip_times_temperature(): ...


@mutant("clip_loss", "the labels are built on the CPU (torch.arange(B) without device=), so the loss fails for "
        "embeddings on a GPU", replace={"torch.arange(B, device=logits.device)": "torch.arange(B)"})
def clip_labels_on_cpu(): ...


@mutant("clip_loss", "the cross-entropy sums over the B pairs instead of taking their mean",
        replace={"image_to_text = F.cross_entropy(logits, labels)":
                 "image_to_text = F.cross_entropy(logits, labels, reduction='sum')",
                 "text_to_image = F.cross_entropy(logits.T, labels)":
                 "text_to_image = F.cross_entropy(logits.T, labels, reduction='sum')"})
def clip_summed_over_pairs(): ...


@mistake("clip_loss", "float(temperature) detaches a learned temperature: it gets no gradient and never trains")
def clip_detached_temperature(image_emb, text_emb, temperature=0.07):
    return clip_loss(image_emb, text_emb, float(temperature))


@mistake("clip_loss", "a hand-written softmax, exp(logits) / sum(exp(logits)), overflows to nan for small temperatures")
def clip_naive_softmax(image_emb, text_emb, temperature=0.07):
    _validate_clip(image_emb, text_emb, temperature)
    logits = F.normalize(image_emb, dim=-1) @ F.normalize(text_emb, dim=-1).T / temperature
    e = torch.exp(logits)
    diag = torch.diagonal(e)
    return (-torch.log(diag / e.sum(dim=1)).mean() - torch.log(diag / e.sum(dim=0)).mean()) / 2


@mistake("clip_loss", "the rows are normalised in place (image_emb /= norm), which changes the caller's tensors")
def clip_normalises_in_place(image_emb, text_emb, temperature=0.07):
    _validate_clip(image_emb, text_emb, temperature)
    with torch.no_grad():
        image_emb /= image_emb.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        text_emb /= text_emb.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return clip_loss(image_emb, text_emb, temperature)


@mistake("clip_loss", "x / (x.norm() + 1e-6): the epsilon added to the norm shrinks short rows, so they are not unit "
         "vectors (clamp the norm instead, as F.normalize does)")
def clip_eps_added_to_norm(image_emb, text_emb, temperature=0.07):
    _validate_clip(image_emb, text_emb, temperature)
    img = image_emb / (image_emb.norm(dim=-1, keepdim=True) + 1e-6)
    txt = text_emb / (text_emb.norm(dim=-1, keepdim=True) + 1e-6)
    logits = img @ txt.T / temperature
    labels = torch.arange(len(logits), device=logits.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


@mistake("clip_loss", "one softmax over all B * B logits at once instead of one per row and one per column")
def clip_global_softmax(image_emb, text_emb, temperature=0.07):
    _validate_clip(image_emb, text_emb, temperature)
    logits = F.normalize(image_emb, dim=-1) @ F.normalize(text_emb, dim=-1).T / temperature
    return -torch.diagonal(torch.log_softmax(logits.flatten(), dim=0).view_as(logits)).mean()


@mistake("clip_loss", "the norms are detached (x / x.norm().detach()): the loss is right but the gradients of the "
         "embeddings miss the part that flows through the normalisation")
def clip_detached_norms(image_emb, text_emb, temperature=0.07):
    _validate_clip(image_emb, text_emb, temperature)
    img = image_emb / image_emb.norm(dim=-1, keepdim=True).clamp_min(1e-12).detach()
    txt = text_emb / text_emb.norm(dim=-1, keepdim=True).clamp_min(1e-12).detach()
    logits = img @ txt.T / temperature
    labels = torch.arange(len(logits), device=logits.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


@mutant("clip_loss", "the temperature is not validated: 0 gives inf logits and a negative one flips the ranking",
        replace={"if not temperature > 0:": "if temperature < 0:"})
def clip_accepts_zero_temperature(): ...


@mutant("clip_loss", "an empty batch is not rejected: the mean over no pairs is nan",
        replace={"if B == 0:": "if B < 0:"})
def clip_accepts_empty_batch(): ...


@variant("clip_loss", "OpenCLIP's way: logit_scale = 1 / temperature, and logits_per_text computed as its own product")
def clip_open_clip_style(image_emb, text_emb, temperature=0.07):
    _validate_clip(image_emb, text_emb, temperature)
    image_features = F.normalize(image_emb, dim=-1)
    text_features = F.normalize(text_emb, dim=-1)
    logit_scale = 1 / temperature
    logits_per_image = logit_scale * image_features @ text_features.T
    logits_per_text = logit_scale * text_features @ image_features.T
    labels = torch.arange(image_emb.shape[0], device=image_emb.device, dtype=torch.long)
    return (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)) / 2


@variant("clip_loss", "the per-row formula with logsumexp, and one mean over the 2B rows of both directions")
def clip_logsumexp_rows(image_emb, text_emb, temperature=0.07):
    _validate_clip(image_emb, text_emb, temperature)
    img = image_emb / image_emb.norm(dim=1, keepdim=True).clamp_min(1e-12)
    txt = text_emb / text_emb.norm(dim=1, keepdim=True).clamp_min(1e-12)
    s = torch.einsum("id,jd->ij", img, txt) / temperature
    both = torch.cat([torch.logsumexp(s, dim=1), torch.logsumexp(s, dim=0)])
    return (both - torch.diagonal(s).repeat(2)).mean()


@mutant("clip_loss", "the temperature tensor must be 0-dimensional: a learned temperature of shape (1,), which is "
        "one number too, is rejected", replace={"temperature.numel() != 1:": "temperature.ndim != 0:"})
def clip_rejects_temperature_of_shape_1(): ...


@mutant("clip_loss", "the error for a bad temperature does not say which argument is wrong",
        replace={'raise ValueError(f"temperature must be > 0, got {float(temperature)}")':
                 'raise ValueError(f"must be > 0, got {float(temperature)}")'})
def clip_temperature_error_unnamed(): ...


@variant("clip_loss", "the similarities with F.cosine_similarity over broadcast (B, 1, D) and (1, B, D) views, and "
         "the two directions as one cross-entropy over the logits and their transpose stacked")
def clip_cosine_similarity(image_emb, text_emb, temperature=0.07):
    _validate_clip(image_emb, text_emb, temperature)
    sim = F.cosine_similarity(image_emb[:, None, :], text_emb[None, :, :], dim=-1, eps=1e-12)
    logits = sim / temperature
    B = logits.shape[0]
    labels = torch.arange(B, device=logits.device).repeat(2)
    return F.cross_entropy(torch.cat([logits, logits.T]), labels)


# --------------------------------------------------------------------------------------------------
# PatchEmbed


class _Checked(PatchEmbed):
    """The reference's constructor and input checks; subclasses change only how the patches are cut."""

    def _grid(self, x):
        if x.dim() != 4:
            raise ValueError(f"images are (B, C, H, W), not {tuple(x.shape)}")
        B, C, H, W = x.shape
        if C != self.in_channels or H <= 0 or W <= 0 or H % self.patch_size[0] or W % self.patch_size[1]:
            raise ValueError(f"bad image shape {tuple(x.shape)} for {self.in_channels} channels, patch "
                             f"{self.patch_size}: {H}, {W}, {C}")
        return B, C, H // self.patch_size[0], W // self.patch_size[1]


@mistake("PatchEmbed", "each patch is flattened channels-last, (i, j, c) as einops' 'b c (h p1) (w p2) -> b (h w) "
         "(p1 p2 c)' does; the layout here is the convolution's (c, i, j)")
class PatchEmbedChannelsLast(_Checked):
    def forward(self, x):
        B, C, gh, gw = self._grid(x)
        ph, pw = self.patch_size
        patches = x.reshape(B, C, gh, ph, gw, pw).permute(0, 2, 4, 3, 5, 1).reshape(B, gh * gw, -1)
        return self.proj(patches)


@mistake("PatchEmbed", "the patches come out in column-major order (down each grid column first), not row by row")
class PatchEmbedColumnMajor(_Checked):
    def forward(self, x):
        B, C, gh, gw = self._grid(x)
        ph, pw = self.patch_size
        patches = x.reshape(B, C, gh, ph, gw, pw).permute(0, 4, 2, 1, 3, 5).reshape(B, gh * gw, -1)
        return self.proj(patches)


@mistake("PatchEmbed", "x.reshape(B, N, C * ph * pw) without a permute: each 'patch' is a run of consecutive pixels "
         "of one row, not a square of the image")
class PatchEmbedReshapeOnly(_Checked):
    def forward(self, x):
        B, C, gh, gw = self._grid(x)
        return self.proj(x.reshape(B, gh * gw, -1))


@mistake("PatchEmbed", "the patch height and width are swapped (reshape by (pw, ph)), which only works for square "
         "patches")
class PatchEmbedSwappedSides(_Checked):
    def forward(self, x):
        B, C, H, W = x.shape
        self._grid(x)
        pw, ph = self.patch_size
        patches = x.reshape(B, C, H // ph, ph, W // pw, pw).permute(0, 2, 4, 1, 3, 5).reshape(B, -1, C * ph * pw)
        return self.proj(patches)


@mistake("PatchEmbed", "the output is left as (B, D, N), as the convolution gives it, without the final transpose")
class PatchEmbedNotTransposed(_Checked):
    def forward(self, x):
        return super().forward(x).transpose(1, 2)


@mistake("PatchEmbed", "an image whose size is not a multiple of the patch is cropped silently instead of rejected")
class PatchEmbedCrops(PatchEmbed):
    def forward(self, x):
        ph, pw = self.patch_size
        H, W = x.shape[-2:]
        return super().forward(x[..., : H // ph * ph, : W // pw * pw]) if H >= ph and W >= pw else super().forward(x)


@mistake("PatchEmbed", "the patches are cut with .view, which fails on a non-contiguous (transposed) image")
class PatchEmbedView(_Checked):
    def forward(self, x):
        B, C, gh, gw = self._grid(x)
        ph, pw = self.patch_size
        patches = x.view(B, C, gh, ph, gw, pw).permute(0, 2, 4, 1, 3, 5).reshape(B, gh * gw, -1)
        return self.proj(patches)


@mistake("PatchEmbed", "proj is nn.Linear(..., bias=False): the convolution of a ViT has a bias")
class PatchEmbedNoBias(PatchEmbed):
    def __init__(self, patch_size=16, in_channels=3, embed_dim=768):
        super().__init__(patch_size, in_channels, embed_dim)
        self.proj = nn.Linear(self.proj.in_features, self.embed_dim, bias=False)


@mistake("PatchEmbed", "proj's weight is drawn from N(0, 0.02^2) (the GPT-2 init) instead of nn.Linear's default "
         "uniform init that nn.Conv2d also uses")
class PatchEmbedGptInit(PatchEmbed):
    def __init__(self, patch_size=16, in_channels=3, embed_dim=768):
        super().__init__(patch_size, in_channels, embed_dim)
        nn.init.normal_(self.proj.weight, std=0.02)


@mutant("PatchEmbed", "the number of channels is not checked, so a wrong image fails later with an unclear error",
        replace={"if C != self.in_channels:": "if C < 0:"})
def patch_embed_unchecked_channels(): ...


@mistake("PatchEmbed", "a bool is accepted as a size (True counts as 1)")
class PatchEmbedAcceptsBools(PatchEmbed):
    def __init__(self, patch_size=16, in_channels=3, embed_dim=768):
        def size(value):
            return int(value) if isinstance(value, bool) else value

        super().__init__(size(patch_size), size(in_channels), size(embed_dim))


@mistake("PatchEmbed", "an int patch_size is stored as an int, not as the documented pair (ph, pw)")
class PatchEmbedIntPatchSize(PatchEmbed):
    def __init__(self, patch_size=16, in_channels=3, embed_dim=768):
        super().__init__(patch_size, in_channels, embed_dim)
        if isinstance(patch_size, int):
            self.patch_size = patch_size

    def forward(self, x):
        side = self.patch_size
        if isinstance(side, int):
            self.patch_size = (side, side)
        try:
            return super().forward(x)
        finally:
            self.patch_size = side


@mistake("PatchEmbed", "proj's weight is re-initialised with nn.init.xavier_uniform_ (MAE's and some timm models' "
         "choice for a whole ViT) instead of nn.Linear's default uniform init")
class PatchEmbedXavierInit(PatchEmbed):
    def __init__(self, patch_size=16, in_channels=3, embed_dim=768):
        super().__init__(patch_size, in_channels, embed_dim)
        nn.init.xavier_uniform_(self.proj.weight)


@mutant("PatchEmbed", "the error for a bad in_channels or embed_dim does not say which argument is wrong",
        replace={'raise ValueError(f"{name} must be a positive int, got {value!r}")':
                 'raise ValueError(f"sizes must be positive ints, got {value!r}")'})
def patch_embed_size_error_unnamed(): ...


@variant("PatchEmbed", "F.unfold cuts the patches (columns in (c, i, j) order, blocks row-major), then a transpose")
class PatchEmbedUnfold(_Checked):
    def forward(self, x):
        self._grid(x)
        if x.shape[0] == 0:  # F.unfold rejects an empty batch
            return self.proj(x.new_zeros(0, (x.shape[2] // self.patch_size[0]) * (x.shape[3] // self.patch_size[1]),
                                         self.proj.in_features))
        return self.proj(F.unfold(x, kernel_size=self.patch_size, stride=self.patch_size).transpose(1, 2))


@variant("PatchEmbed", "timm's way: F.conv2d with proj's weight viewed as a (D, C, ph, pw) kernel, then flatten and "
         "transpose")
class PatchEmbedConv(_Checked):
    def forward(self, x):
        self._grid(x)
        kernel = self.proj.weight.view(self.embed_dim, self.in_channels, *self.patch_size)
        return F.conv2d(x, kernel, self.proj.bias, stride=self.patch_size).flatten(2).transpose(1, 2)


@variant("PatchEmbed", "einsum over an explicit (B, gh, ph, gw, pw, C) channels-last copy of the image")
class PatchEmbedEinsum(_Checked):
    def forward(self, x):
        B, C, gh, gw = self._grid(x)
        ph, pw = self.patch_size
        grid = x.permute(0, 2, 3, 1).reshape(B, gh, ph, gw, pw, C)
        weight = self.proj.weight.view(self.embed_dim, C, ph, pw)
        out = torch.einsum("bhiwjc,dcij->bhwd", grid, weight) + self.proj.bias
        return out.reshape(B, gh * gw, self.embed_dim)


# --------------------------------------------------------------------------------------------------
# mel_filterbank, log_mel_spectrogram


def _validate_filterbank(n_mels, n_fft, sample_rate, f_min, f_max):
    for name, value in (("n_mels", n_mels), ("n_fft", n_fft)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name} = {value!r} must be a positive int")
    if not sample_rate > 0:
        raise ValueError(f"sample_rate = {sample_rate}")
    f_max = sample_rate / 2 if f_max is None else f_max
    if not 0 <= f_min < f_max <= sample_rate / 2:
        raise ValueError(f"f_min = {f_min}, f_max = {f_max}")
    return f_max


def _triangles(freqs, edges):
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    return torch.minimum((freqs - lower) / (centre - lower), (upper - freqs) / (upper - centre)).clamp_min(0.0)


def _finish(weights, dtype, device):
    return weights.to(dtype=torch.get_default_dtype() if dtype is None else dtype, device=device)


@mistake("mel_filterbank", "the bins are spread with linspace(0, sample_rate / 2, n_fft // 2 + 1), which is off for "
         "an odd n_fft: bin k is at k * sample_rate / n_fft")
def mel_bins_by_linspace(n_mels, n_fft, sample_rate, f_min=0.0, f_max=None, dtype=None, device=None):
    f_max = _validate_filterbank(n_mels, n_fft, sample_rate, f_min, f_max)
    freqs = torch.linspace(0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)
    mels = torch.linspace(2595 * math.log10(1 + f_min / 700), 2595 * math.log10(1 + f_max / 700), n_mels + 2,
                          dtype=torch.float64)
    return _finish(_triangles(freqs, 700 * (10 ** (mels / 2595) - 1)), dtype, device)


@mistake("mel_filterbank", "the edges are equally spaced in Hz, not on the mel scale")
def mel_edges_in_hz(n_mels, n_fft, sample_rate, f_min=0.0, f_max=None, dtype=None, device=None):
    f_max = _validate_filterbank(n_mels, n_fft, sample_rate, f_min, f_max)
    freqs = torch.arange(n_fft // 2 + 1, dtype=torch.float64) * sample_rate / n_fft
    return _finish(_triangles(freqs, torch.linspace(f_min, f_max, n_mels + 2, dtype=torch.float64)), dtype, device)


@mistake("mel_filterbank", "Slaney normalisation: each triangle is scaled to area 1 (2 / (e_{m+2} - e_m)), as librosa "
         "does by default; here the triangles keep height 1")
def mel_slaney_normalised(n_mels, n_fft, sample_rate, f_min=0.0, f_max=None, dtype=None, device=None):
    weights = mel_filterbank(n_mels, n_fft, sample_rate, f_min, f_max, dtype=torch.float64)
    f_max = sample_rate / 2 if f_max is None else f_max
    mels = torch.linspace(2595 * math.log10(1 + f_min / 700), 2595 * math.log10(1 + f_max / 700), n_mels + 2,
                          dtype=torch.float64)
    edges = 700 * (10 ** (mels / 2595) - 1)
    return _finish(weights * (2 / (edges[2:] - edges[:-2]))[:, None], dtype, device)


@mistake("mel_filterbank", "the matrix is returned as (n_freqs, n_mels), torchaudio's layout, instead of (n_mels, "
         "n_freqs)")
def mel_transposed(n_mels, n_fft, sample_rate, f_min=0.0, f_max=None, dtype=None, device=None):
    return mel_filterbank(n_mels, n_fft, sample_rate, f_min, f_max, dtype, device).T


@mistake("mel_filterbank", "the mel scale uses the natural log with HTK's constant, 2595 * ln(1 + f / 700), "
         "but converts back with 10 ** (mel / 2595): the edges land on the wrong frequencies")
def mel_natural_log_scale(n_mels, n_fft, sample_rate, f_min=0.0, f_max=None, dtype=None, device=None):
    f_max = _validate_filterbank(n_mels, n_fft, sample_rate, f_min, f_max)
    freqs = torch.arange(n_fft // 2 + 1, dtype=torch.float64) * sample_rate / n_fft
    mels = torch.linspace(2595 * math.log(1 + f_min / 700), 2595 * math.log(1 + f_max / 700), n_mels + 2,
                          dtype=torch.float64)
    return _finish(_triangles(freqs, 700 * (10 ** (mels / 2595) - 1)), dtype, device)


@mutant("mel_filterbank", "n_mels points instead of n_mels + 2: the filters are too wide and the last one is lost",
        replace={"_hz_to_mel(f_max), n_mels + 2,": "_hz_to_mel(f_max), n_mels + 1,"})
def mel_too_few_edges(): ...


@mutant("mel_filterbank", "the filterbank is built in float32: its weights are off by ~1e-7 in float64 work",
        replace={"freqs = torch.arange(n_fft // 2 + 1, dtype=torch.float64,":
                 "freqs = torch.arange(n_fft // 2 + 1, dtype=torch.float32,",
                 "n_mels + 2, dtype=torch.float64, device=device)": "n_mels + 2, dtype=torch.float32, device=device)"})
def mel_in_float32(): ...


@mutant("mel_filterbank", "f_max defaults to sample_rate instead of the Nyquist frequency sample_rate / 2",
        replace={"f_max = nyquist if f_max is None else f_max": "f_max = sample_rate if f_max is None else f_max"})
def mel_f_max_sample_rate(): ...


@mutant("mel_filterbank", "the device argument is ignored, so the filterbank is always built on the CPU",
        replace={"dtype=torch.float64, device=device) * sample_rate": "dtype=torch.float64) * sample_rate",
                 "n_mels + 2, dtype=torch.float64, device=device)": "n_mels + 2, dtype=torch.float64)"})
def mel_ignores_device(): ...


@mutant("log_mel_spectrogram", "the magnitude |X| instead of the power |X|^2",
        replace={"power = frames.abs() ** 2": "power = frames.abs()"})
def log_mel_magnitude(): ...


@mutant("log_mel_spectrogram", "log10 instead of the natural log (Whisper uses log10; this kata uses ln)",
        replace={"return torch.log(mel.clamp_min(floor))": "return torch.log10(mel.clamp_min(floor))"})
def log_mel_log10(): ...


@mutant("log_mel_spectrogram", "log(mel + floor): adding the floor shifts every quiet value; clamp instead",
        replace={"return torch.log(mel.clamp_min(floor))": "return torch.log(mel + floor)"})
def log_mel_adds_floor(): ...


@mutant("log_mel_spectrogram", "center=False: frames start at sample 0 instead of being centred, one frame per "
        "hop fewer and shifted by n_fft // 2", replace={"center=True,": "center=False,"})
def log_mel_not_centred(): ...


@mutant("log_mel_spectrogram", "no window (a rectangular one): the cut frame edges leak power into every bin",
        replace={"window=torch.hann_window(n_fft, dtype=waveform.dtype, device=waveform.device)": "window=None"})
def log_mel_no_window(): ...


@mutant("log_mel_spectrogram", "a symmetric Hann window (periodic=False), which is one sample too narrow for "
        "overlapping frames",
        replace={"torch.hann_window(n_fft, dtype": "torch.hann_window(n_fft, periodic=False, dtype"})
def log_mel_symmetric_window(): ...


@mutant("log_mel_spectrogram", "zero padding instead of reflect padding at the ends",
        replace={'pad_mode="reflect"': 'pad_mode="constant"'})
def log_mel_zero_padding(): ...


@mutant("log_mel_spectrogram", "the window is built on the CPU, so the spectrogram fails for a waveform on a GPU",
        replace={"dtype=waveform.dtype, device=waveform.device),": "dtype=waveform.dtype),"})
def log_mel_window_on_cpu(): ...


@mistake("log_mel_spectrogram", "the last frame is dropped (Whisper's stft[..., :-1]): for an even n_fft there are "
         "1 + T // hop_length frames")
def log_mel_drops_last_frame(waveform, sample_rate=16000, n_fft=400, hop_length=160, n_mels=80, f_min=0.0, f_max=None,
                             floor=1e-10):
    return log_mel_spectrogram(waveform, sample_rate, n_fft, hop_length, n_mels, f_min, f_max, floor)[..., :-1]


@mistake("log_mel_spectrogram", "only (T,) and (B, T) work: the waveform is handed to torch.stft without folding the "
         "other leading dimensions")
def log_mel_two_dims_only(waveform, sample_rate=16000, n_fft=400, hop_length=160, n_mels=80, f_min=0.0, f_max=None,
                          floor=1e-10):
    if waveform.ndim > 2:
        raise ValueError(f"expected (T,) or (B, T), got {tuple(waveform.shape)}")
    return log_mel_spectrogram(waveform, sample_rate, n_fft, hop_length, n_mels, f_min, f_max, floor)


@mistake("log_mel_spectrogram", "the arguments are not passed on to mel_filterbank (f_min, f_max keep their defaults)")
def log_mel_ignores_band_limits(waveform, sample_rate=16000, n_fft=400, hop_length=160, n_mels=80, f_min=0.0,
                                f_max=None, floor=1e-10):
    return log_mel_spectrogram(waveform, sample_rate, n_fft, hop_length, n_mels, floor=floor)


@mutant("log_mel_spectrogram", "a too short waveform is not rejected: torch.stft fails with an unclear padding error",
        replace={"if T <= n_fft // 2:": "if T < 0:"})
def log_mel_unchecked_length(): ...


@mutant("mel_filterbank", "f_max = f_max or sample_rate / 2: an f_max of 0 is taken as 'use the default' "
        "instead of being rejected (it is not above f_min)",
        replace={"f_max = nyquist if f_max is None else f_max": "f_max = f_max or nyquist"})
def mel_f_max_zero_means_default(): ...


@mutant("mel_filterbank", "the error for a bad n_mels or n_fft does not say which argument is wrong",
        replace={'raise ValueError(f"{name} must be a positive int, got {value!r}")':
                 'raise ValueError(f"sizes must be positive ints, got {value!r}")'})
def mel_size_error_unnamed(): ...


@mutant("log_mel_spectrogram", "the error for a bad hop_length or n_fft does not say which argument is wrong",
        replace={'raise ValueError(f"{name} must be a positive int, got {value!r}")':
                 'raise ValueError(f"frame sizes must be positive ints, got {value!r}")'})
def log_mel_size_error_unnamed(): ...


@mutant("log_mel_spectrogram", "a floor of 0 is accepted, so silence gives log(0) = -inf",
        replace={"if not floor > 0:": "if floor < 0:"})
def log_mel_accepts_zero_floor(): ...


@variant("mel_filterbank", "the mel scale as 1127 * ln(1 + f / 700), the natural-log form: the constant cancels, so "
         "the edges are the same; one filter at a time in a loop")
def mel_natural_log_1127(n_mels, n_fft, sample_rate, f_min=0.0, f_max=None, dtype=None, device=None):
    f_max = _validate_filterbank(n_mels, n_fft, sample_rate, f_min, f_max)
    freqs = torch.fft.rfftfreq(n_fft, d=1.0 / sample_rate, dtype=torch.float64)
    m_lo, m_hi = 1127 * math.log1p(f_min / 700), 1127 * math.log1p(f_max / 700)
    edges = [700 * math.expm1((m_lo + (m_hi - m_lo) * i / (n_mels + 1)) / 1127) for i in range(n_mels + 2)]
    rows = []
    for m in range(n_mels):
        rise = (freqs - edges[m]) / (edges[m + 1] - edges[m])
        fall = (edges[m + 2] - freqs) / (edges[m + 2] - edges[m + 1])
        rows.append(torch.clamp(torch.minimum(rise, fall), min=0))
    out = torch.stack(rows) if rows else torch.zeros(0, n_fft // 2 + 1, dtype=torch.float64)
    return _finish(out, dtype, device)


@variant("log_mel_spectrogram", "no torch.stft: reflect-pad with F.pad, cut frames with unfold, window them, "
         "torch.fft.rfft, and power as real^2 + imag^2")
def log_mel_by_rfft(waveform, sample_rate=16000, n_fft=400, hop_length=160, n_mels=80, f_min=0.0, f_max=None,
                    floor=1e-10):
    if waveform.dtype not in (torch.float32, torch.float64) or waveform.ndim == 0:
        raise ValueError(f"waveform of dtype {waveform.dtype} and shape {tuple(waveform.shape)}")
    for name, value in (("hop_length", hop_length), ("n_fft", n_fft)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name} = {value!r}")
    if not floor > 0:
        raise ValueError(f"floor = {floor}")
    T = waveform.shape[-1]
    if T <= n_fft // 2:
        raise ValueError(f"T = {T} samples, need more than {n_fft // 2}")
    fb = mel_filterbank(n_mels, n_fft, sample_rate, f_min, f_max, dtype=waveform.dtype, device=waveform.device)
    flat = waveform.reshape(-1, 1, T)
    padded = F.pad(flat, (n_fft // 2, n_fft // 2), mode="reflect")[:, 0]  # (batch, T + 2 * (n_fft // 2))
    frames = padded.unfold(-1, n_fft, hop_length)  # (batch, n_frames, n_fft)
    n = torch.arange(n_fft, dtype=waveform.dtype, device=waveform.device)
    window = 0.5 - 0.5 * torch.cos(2 * math.pi * n / n_fft)
    spectrum = torch.view_as_real(torch.fft.rfft(frames * window, dim=-1))
    power = spectrum.pow(2).sum(-1)  # (batch, n_frames, n_freqs)
    mel = torch.einsum("mk,bfk->bmf", fb, power)
    return torch.maximum(mel, torch.tensor(floor, dtype=mel.dtype, device=mel.device)).log().reshape(
        *waveform.shape[:-1], n_mels, -1)
