"""Kata m07_multimodal (months 7-8 of the learning path, option C: multimodal models).

A language model reads tokens. To read images and sound, a model first turns them into vectors a
transformer can take, and a vision-language model learns to put a picture and its caption close together.
You build the three pieces that do this:

1. ``clip_loss`` - the contrastive loss that trains CLIP: in a batch of (image, caption) pairs, each image
   must pick out its own caption among all the captions, and each caption its own image;
2. ``PatchEmbed`` - the first layer of a Vision Transformer (ViT): cut an image into square patches and map
   each patch to one token vector;
3. ``log_mel_spectrogram`` (with ``mel_filterbank``) - the audio input of speech models such as Whisper:
   short-time Fourier transform, power spectrum, mel filters, logarithm.

The learning path only names these topics ("vision-language models (CLIP, DALL-E)", "audio-language
models"); it has no code for them. Run ``kata check m07_multimodal`` to check your work.
"""

from __future__ import annotations

import math  # noqa: F401 - math.log10 for the mel formula
import numbers  # noqa: F401 - isinstance(x, numbers.Integral) accepts Python and NumPy ints

import torch
import torch.nn.functional as F  # noqa: F401 - F.normalize, F.cross_entropy
from torch import Tensor, nn


def clip_loss(image_emb: Tensor, text_emb: Tensor, temperature: float | Tensor = 0.07) -> Tensor:
    """The symmetric contrastive (InfoNCE) loss of CLIP for a batch of B matching (image, text) pairs.

    ``image_emb`` and ``text_emb`` are (B, D): row i of each comes from the same pair. Steps:

    1. Normalise every row to length 1 (cosine similarity: only the direction of an embedding counts, so
       a long vector cannot win by size). Use ``F.normalize(x, dim=-1)``: it divides by the norm clamped to
       at least 1e-12, so an all-zero row stays zero instead of becoming 0/0 = nan.
    2. ``logits = image @ text.T / temperature``, (B, B): ``logits[i, j]`` is how well image i matches
       text j. The right answer for image i is text i: the labels are 0, 1, ..., B-1, the diagonal.
    3. Cross-entropy both ways, each a mean over the B rows: image -> text is
       ``F.cross_entropy(logits, labels)`` (each row: which text is mine?), text -> image is the same on
       ``logits.T`` (each column: which image is mine?). Return their average, ``(a + b) / 2``.

    Because both directions count, swapping the arguments (text first) gives the same loss. Per pair i,
    with s = logits, the loss is the mean over i of ``(logsumexp_j s[i, j] - s[i, i]) / 2 + (logsumexp_j
    s[j, i] - s[i, i]) / 2``. A small temperature makes the logits large (1 / 0.01 = 100): use a
    max-shifted log-softmax (``F.cross_entropy`` is one), never ``exp`` of the raw logits.

    ``temperature`` is a positive float or a one-element tensor. CLIP learns it (as a log-temperature, so
    it stays positive): a tensor with ``requires_grad=True`` must get a gradient, so divide by it as a
    tensor; ``float(temperature)`` would cut it out of the graph. The default 0.07 is CLIP's initial value.

    The result is a 0-dimensional tensor in the embeddings' dtype, on their device (create the labels there:
    ``torch.arange(B, device=...)``). The inputs may be transposed or sliced views and are not modified.
    ``ValueError`` (naming the offending shapes, dtypes or value) when an embedding is not 2-D, the two
    shapes differ, the embeddings are not floating point or do not share one dtype, the batch is empty
    (B = 0), or the temperature is not a single number > 0 (0, negative and nan are rejected; that message
    also names ``temperature``).

    Example::

        >>> e = torch.eye(4)                        # four orthogonal unit vectors
        >>> clip_loss(e[:2], e[:2], temperature=0.01)   # each image matches only its own caption
        tensor(0.)
        >>> clip_loss(e[:2], e[2:])                 # every similarity is 0: a uniform guess, log(2)
        tensor(0.6931)
    """
    # TODO(m07_multimodal.clip_loss): write your implementation here.
    raise NotImplementedError("m07_multimodal.clip_loss is not implemented yet (try `kata hint m07_multimodal.clip_loss`)")


class PatchEmbed(nn.Module):
    """The patch embedding of a Vision Transformer: (B, C, H, W) images -> (B, N, D) patch tokens.

    The image is cut into non-overlapping patches of ``patch_size`` = (ph, pw) pixels (an int means a
    square patch); there are ``N = (H // ph) * (W // pw)`` of them. Each patch, with all its channels, is
    flattened into one vector of C * ph * pw numbers and mapped to ``embed_dim`` = D numbers by one shared
    linear layer. This equals ``nn.Conv2d(C, D, kernel_size=patch_size, stride=patch_size)`` followed by
    ``.flatten(2).transpose(1, 2)`` (the way timm writes it), but you write it with ``reshape``/``permute``
    (or ``F.unfold``) and an ``nn.Linear``: the point is to see what the convolution does.

    Layout (the checks copy a convolution's weights in, so keep it): ``self.proj = nn.Linear(C * ph * pw,
    D)`` with bias and PyTorch's default initialisation, and no other parameters. Its weight is the
    convolution's weight (D, C, ph, pw) flattened, so the numbers of one patch are ordered channel first,
    then row, then column: ``(c, i, j)`` (pixel (i, j) of channel c is number ``c * ph * pw + i * pw + j``).
    Patches are in row-major order: patch n is grid row ``n // (W // pw)``, grid column ``n % (W // pw)``,
    and covers ``x[:, :, row * ph:(row + 1) * ph, col * pw:(col + 1) * pw]``. Also store ``patch_size`` as
    the tuple (ph, pw), ``in_channels`` and ``embed_dim``. Defaults: 16x16 patches, 3 channels, D = 768 (ViT-B/16).

    ``forward(x)`` takes exactly 4 dimensions (B, C, H, W); B may be 0. ``x`` may be a non-contiguous
    view (a transposed image): ``.view`` fails on those, ``.reshape`` does not. It is not modified. The
    output has the parameters' dtype (``module.double()`` computes in float64) and lives on their device.

    ``ValueError`` (naming the offending value or shape, and in ``__init__`` the argument by its name):
    in ``__init__``, when ``patch_size``, ``in_channels`` or ``embed_dim`` is not a positive int (a bool or
    a float is not an int here) or ``patch_size`` is a tuple that is not a pair; in ``forward``, when ``x``
    is not 4-D, has another number of channels than ``in_channels``, or H or W is not a positive multiple
    of the patch size. Never crop silently: the border of the image would be lost without anyone noticing.

    Example::

        >>> embed = PatchEmbed(patch_size=4, in_channels=3, embed_dim=32)
        >>> embed(torch.randn(2, 3, 8, 12)).shape   # a 2 x 3 grid of patches
        torch.Size([2, 6, 32])
        >>> embed(torch.randn(2, 3, 8, 10))
        Traceback (most recent call last):
        ValueError: image size 8x10 is not a positive multiple of the patch size 4x4
    """

    def __init__(self, patch_size: int | tuple[int, int] = 16, in_channels: int = 3, embed_dim: int = 768) -> None:
        # TODO(m07_multimodal.PatchEmbed): write your implementation here.
        raise NotImplementedError("m07_multimodal.PatchEmbed.__init__ is not implemented yet (try `kata hint m07_multimodal.PatchEmbed`)")

    def forward(self, x: Tensor) -> Tensor:
        # TODO(m07_multimodal.PatchEmbed): write your implementation here.
        raise NotImplementedError("m07_multimodal.PatchEmbed.forward is not implemented yet (try `kata hint m07_multimodal.PatchEmbed`)")


def mel_filterbank(
    n_mels: int,
    n_fft: int,
    sample_rate: float,
    f_min: float = 0.0,
    f_max: float | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """The (n_mels, n_fft // 2 + 1) mel filterbank: triangular filters, equally spaced on the mel scale.

    Our ears tell low pitches apart far better than high ones; the mel scale stretches low frequencies and
    squeezes high ones to match. This kata uses the HTK formula (torchaudio's default)::

        mel(f) = 2595 * log10(1 + f / 700)          f(mel) = 700 * (10 ** (mel / 2595) - 1)

    Column k of the result is frequency bin k of a real FFT of size ``n_fft``, at ``k * sample_rate / n_fft``
    Hz (as ``torch.fft.rfftfreq``), for k = 0 .. n_fft // 2. Take ``n_mels + 2`` points equally spaced in
    mels from mel(f_min) to mel(f_max) (``torch.linspace``), and convert them back to Hz: edges e_0 < e_1 <
    ... < e_{n_mels+1}. Filter m (row m) is the triangle that is 0 at e_m, rises linearly to 1 at e_{m+1}
    and falls linearly back to 0 at e_{m+2}::

        weight[m, k] = max(0, min((f_k - e_m) / (e_{m+1} - e_m), (e_{m+2} - f_k) / (e_{m+2} - e_{m+1})))

    So neighbouring triangles overlap by half, and between the first and the last centre the weights of
    each bin sum to 1. Triangles keep height 1 (no "Slaney" area normalisation). ``f_max`` defaults to the
    Nyquist frequency ``sample_rate / 2``. torchaudio's ``melscale_fbanks`` returns the transpose of this
    matrix, (n_freqs, n_mels); here it is (n_mels, n_freqs), so ``filterbank @ power`` applies it.

    Compute in float64 and convert the finished matrix to ``dtype`` (default: torch's default dtype),
    created on ``device`` (default: the CPU). ``ValueError`` (naming the argument and its value, as in
    ``"n_mels must be a positive int, got 0"``) when ``n_mels`` or ``n_fft`` is not a positive int (bools
    rejected), ``sample_rate`` is not > 0, or the frequencies do not satisfy
    ``0 <= f_min < f_max <= sample_rate / 2`` (an ``f_max`` of 0 is a value, not the default).

    Example::

        >>> mel_filterbank(n_mels=2, n_fft=8, sample_rate=8000)   # bins at 0, 1000, 2000, 3000, 4000 Hz
        tensor([[0.0000, 0.6759, 0.0000, 0.0000, 0.0000],
                [0.0000, 0.3241, 0.9055, 0.4528, 0.0000]])
    """
    # TODO(m07_multimodal.log_mel_spectrogram): write your implementation here.
    raise NotImplementedError("m07_multimodal.mel_filterbank is not implemented yet (part of m07_multimodal.log_mel_spectrogram: try `kata hint m07_multimodal.log_mel_spectrogram`)")


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
    """The log-mel spectrogram of a (..., T) waveform: (..., n_mels, n_frames).

    This is how speech models such as Whisper see sound (the defaults are Whisper's: 16 kHz, windows of
    400 samples = 25 ms every 160 samples = 10 ms, 80 mel bands). Steps:

    1. Frames: ``torch.stft(x, n_fft, hop_length, window=torch.hann_window(n_fft), center=True,
       pad_mode="reflect", return_complex=True)``. ``center=True`` reflect-pads n_fft // 2 samples on both
       sides, so frame t is centred on sample ``t * hop_length``. There are
       ``n_frames = 1 + (T + 2 * (n_fft // 2) - n_fft) // hop_length`` frames, which is ``1 + T // hop_length``
       for an even n_fft (let torch.stft count them). The Hann window (periodic, torch's default) tapers each frame to 0 at its ends, so the cut does not add false high frequencies.
       ``torch.stft`` takes (T,) or (batch, T): reshape any leading dimensions into one and back.
    2. Power spectrum: ``|X|^2`` for each of the n_fft // 2 + 1 frequency bins (not the magnitude ``|X|``).
    3. Mel bands: ``mel_filterbank(n_mels, n_fft, sample_rate, f_min, f_max) @ power``, built in the
       waveform's dtype and on its device.
    4. Logarithm with a floor: ``log(max(mel, floor))`` (natural log). Silence has mel = 0, and log(0) = -inf
       would poison everything after it; with the floor, an all-zero waveform gives ``log(floor)``
       everywhere. Clamp, do not add: ``log(mel + floor)`` shifts every quiet value.

    ``waveform`` is float32 or float64 (the result has its dtype and device) with any number of leading
    dimensions, (T,), (B, T), (B, channels, T) ...; it may be a non-contiguous view and is not modified.
    A pure tone of f Hz puts its energy into the mel band whose centre is nearest to f.

    ``ValueError`` (naming the offending value, and the argument when it is one of the options:
    ``"hop_length must be a positive int, got 0"``): ``waveform`` of another dtype or 0-dimensional,
    ``hop_length`` or ``n_fft`` not a positive int, ``floor`` not > 0, or T <= n_fft // 2 (centred frames need
    more samples than the padding). ``mel_filterbank`` checks the other arguments.

    Example::

        >>> t = torch.arange(16000) / 16000
        >>> log_mel_spectrogram(torch.sin(2 * math.pi * 1000 * t)).shape   # one second of a 1 kHz tone
        torch.Size([80, 101])
        >>> log_mel_spectrogram(torch.zeros(2, 800)).unique()               # silence: log(1e-10)
        tensor([-23.0259])
    """
    # TODO(m07_multimodal.log_mel_spectrogram): write your implementation here.
    raise NotImplementedError("m07_multimodal.log_mel_spectrogram is not implemented yet (try `kata hint m07_multimodal.log_mel_spectrogram`)")
