"""Reference solutions for m07_multimodal (months 7-8 of the learning path, option C: multimodal models).

The learning path only names the topics (vision-language models such as CLIP, audio-language models); it has
no code for them, so there are no bugs of its own to fix here. The three pieces follow CLIP (the contrastive
loss), ViT (the patch embedding) and Whisper's input features (the log-mel spectrogram, with the HTK mel
formula and triangles of height 1, torchaudio's defaults).
"""

from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# --------------------------------------------------------------------------------------------------
# clip_loss


def clip_loss(image_emb: Tensor, text_emb: Tensor, temperature: float | Tensor = 0.07) -> Tensor:
    """Symmetric InfoNCE loss of CLIP: cross-entropy image -> text and text -> image, averaged."""
    if image_emb.ndim != 2 or image_emb.shape != text_emb.shape:
        raise ValueError(
            f"image_emb and text_emb must both be (B, D), of the same shape; got {tuple(image_emb.shape)} and "
            f"{tuple(text_emb.shape)}"
        )
    if not image_emb.is_floating_point() or image_emb.dtype != text_emb.dtype:
        raise ValueError(f"the embeddings must share one floating dtype; got {image_emb.dtype} and {text_emb.dtype}")
    B = image_emb.shape[0]
    if B == 0:
        raise ValueError("the batch is empty (B = 0): there is no pair to contrast")
    if isinstance(temperature, Tensor) and temperature.numel() != 1:
        raise ValueError(f"temperature must be one number; got a tensor of shape {tuple(temperature.shape)}")
    if not temperature > 0:  # also rejects nan (nan > 0 is False); a tensor stays a tensor, for its gradient
        raise ValueError(f"temperature must be > 0, got {float(temperature)}")
    # Cosine similarity: each row on the unit sphere, so only directions count. F.normalize clamps the norm
    # at 1e-12, so a zero row stays zero instead of becoming 0/0 = nan.
    img = F.normalize(image_emb, dim=-1)
    txt = F.normalize(text_emb, dim=-1)
    logits = img @ txt.T / temperature  # (B, B): row i = image i against every text; divide, so t gets a gradient
    labels = torch.arange(B, device=logits.device)  # the matching pair sits on the diagonal
    # cross_entropy is a log-softmax (max-shifted, so a small temperature cannot overflow) and a mean over rows
    image_to_text = F.cross_entropy(logits, labels)
    text_to_image = F.cross_entropy(logits.T, labels)  # the columns: text j against every image
    return (image_to_text + text_to_image) / 2


# --------------------------------------------------------------------------------------------------
# PatchEmbed


def _is_positive_int(value) -> bool:
    # a bool is an Integral in Python (True == 1), but True is not a size
    return not isinstance(value, bool) and isinstance(value, numbers.Integral) and value > 0


class PatchEmbed(nn.Module):
    """ViT patch embedding: cut (B, C, H, W) images into patches, flatten each, project it to embed_dim."""

    def __init__(self, patch_size: int | tuple[int, int] = 16, in_channels: int = 3, embed_dim: int = 768) -> None:
        super().__init__()
        sizes = patch_size if isinstance(patch_size, tuple) else (patch_size, patch_size)
        if len(sizes) != 2 or not (_is_positive_int(sizes[0]) and _is_positive_int(sizes[1])):
            raise ValueError(f"patch_size must be a positive int or a pair of them, got {patch_size!r}")
        for name, value in (("in_channels", in_channels), ("embed_dim", embed_dim)):
            if not _is_positive_int(value):
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.patch_size = (int(sizes[0]), int(sizes[1]))
        self.in_channels = int(in_channels)
        self.embed_dim = int(embed_dim)
        ph, pw = self.patch_size
        # One linear map per patch. Its weight (D, C * ph * pw) is nn.Conv2d's weight (D, C, ph, pw) flattened
        # in (c, i, j) order, and nn.Linear's default init has the same fan-in, so the same distribution.
        self.proj = nn.Linear(self.in_channels * ph * pw, self.embed_dim)

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 4:
            raise ValueError(f"expected images of shape (B, C, H, W), got shape {tuple(x.shape)}")
        B, C, H, W = x.shape
        ph, pw = self.patch_size
        if C != self.in_channels:
            raise ValueError(f"expected {self.in_channels} channels, got {C} (input shape {tuple(x.shape)})")
        if H <= 0 or W <= 0 or H % ph or W % pw:
            # a silent crop would throw away the image's border; the caller must resize or pad
            raise ValueError(f"image size {H}x{W} is not a positive multiple of the patch size {ph}x{pw}")
        gh, gw = H // ph, W // pw  # the grid of patches
        # (B, C, gh, ph, gw, pw): split each spatial axis into (which patch, where inside it)
        patches = x.reshape(B, C, gh, ph, gw, pw)
        # (B, gh, gw, C, ph, pw): patch index first, in row-major order; inside a patch (c, i, j) as in the conv
        patches = patches.permute(0, 2, 4, 1, 3, 5).reshape(B, gh * gw, C * ph * pw)
        return self.proj(patches)  # (B, N, D)


# --------------------------------------------------------------------------------------------------
# log_mel_spectrogram, mel_filterbank


def _hz_to_mel(f: float) -> float:
    return 2595.0 * math.log10(1.0 + f / 700.0)  # HTK: nearly linear below ~1 kHz, logarithmic above


def _mel_to_hz(m: Tensor) -> Tensor:
    return 700.0 * (10.0 ** (m / 2595.0) - 1.0)


def mel_filterbank(
    n_mels: int,
    n_fft: int,
    sample_rate: float,
    f_min: float = 0.0,
    f_max: float | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """(n_mels, n_fft // 2 + 1) triangular filters, equally spaced on the HTK mel scale, height 1."""
    for name, value in (("n_mels", n_mels), ("n_fft", n_fft)):
        if not _is_positive_int(value):
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    nyquist = sample_rate / 2
    f_max = nyquist if f_max is None else f_max
    # this also rejects a sample_rate <= 0 (or nan): then no f_max fits
    if not 0 <= f_min < f_max <= nyquist:
        raise ValueError(
            f"need 0 <= f_min < f_max <= sample_rate / 2; got sample_rate={sample_rate}, f_min={f_min}, f_max={f_max}"
        )
    # Built in float64 (the mel formula's powers lose digits in float32), converted once at the end.
    freqs = torch.arange(n_fft // 2 + 1, dtype=torch.float64, device=device) * sample_rate / n_fft  # rfft bins
    # n_mels + 2 points equally spaced in mels from f_min to f_max (Python floats: exact float64 math)
    mels = torch.linspace(_hz_to_mel(f_min), _hz_to_mel(f_max), n_mels + 2, dtype=torch.float64, device=device)
    edges = _mel_to_hz(mels)  # n_mels + 2 corner frequencies: filter m rises on [m, m+1], falls on [m+1, m+2]
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]  # (n_mels, 1) each
    rising = (freqs - lower) / (centre - lower)  # (n_mels, n_freqs)
    falling = (upper - freqs) / (upper - centre)
    weights = torch.minimum(rising, falling).clamp_min(0.0)  # the triangle; 0 outside [lower, upper]
    return weights.to(torch.get_default_dtype() if dtype is None else dtype)


def log_mel_spectrogram(
    waveform: Tensor,
    sample_rate: float = 16000,
    n_fft: int = 400,
    hop_length: int = 160,
    n_mels: int = 80,
    f_min: float = 0.0,
    f_max: float | None = None,
    floor: float = 1e-10,
) -> Tensor:
    """log(max(mel filterbank @ |STFT|^2, floor)) of a (..., T) waveform: (..., n_mels, n_frames)."""
    if waveform.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"waveform must be float32 or float64, got {waveform.dtype}")
    if waveform.ndim == 0:
        raise ValueError("waveform must have a time axis; got a 0-dimensional tensor")
    for name, value in (("hop_length", hop_length), ("n_fft", n_fft)):
        if not _is_positive_int(value):
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if not floor > 0:
        raise ValueError(f"floor must be > 0 (the log of 0 is -inf), got {floor}")
    T = waveform.shape[-1]
    if T <= n_fft // 2:
        # centred frames reflect-pad n_fft // 2 samples on each side, which needs more samples than that
        raise ValueError(f"the waveform has {T} samples; centred frames need more than n_fft // 2 = {n_fft // 2}")
    fb = mel_filterbank(n_mels, n_fft, sample_rate, f_min, f_max, dtype=waveform.dtype, device=waveform.device)
    lead = waveform.shape[:-1]
    # torch.stft takes (T,) or (batch, T): fold every leading dimension into one batch
    frames = torch.stft(
        waveform.reshape(-1, T),
        n_fft=n_fft,
        hop_length=hop_length,
        # periodic Hann: the window repeats every n_fft samples, which is what overlapping frames want
        window=torch.hann_window(n_fft, dtype=waveform.dtype, device=waveform.device),
        center=True,
        pad_mode="reflect",
        return_complex=True,
    )  # (batch, n_fft // 2 + 1, n_frames), complex
    power = frames.abs() ** 2  # power spectrum |X|^2, real, in the waveform's dtype
    mel = fb @ power  # (batch, n_mels, n_frames): each filter sums the power under its triangle
    # the floor keeps silence (mel = 0) at log(floor) instead of -inf
    return torch.log(mel.clamp_min(floor)).reshape(*lead, n_mels, -1)

