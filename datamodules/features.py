"""Speech features in torch: power spectrogram (``torch.stft``), mel filterbank, log; MFCC (DCT-II of
the log-mel energies) and deltas as options; per-utterance normalisation.

Defaults follow the usual keyword-spotting front end: 16 kHz audio, 25 ms Hann windows every 10 ms
(``n_fft=400``, ``hop=160``), 40 mel bands on the HTK mel scale, ``log(energy + 1e-6)``.
"""

from __future__ import annotations

import io
import math
import wave
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from torch import Tensor

from .files import atomic_write

KINDS = ("logmel", "mfcc")


@dataclass(frozen=True)
class FeatureConfig:
    """What the features of a clip are; also the cache key of computed features."""

    kind: str = "logmel"  # logmel | mfcc
    sample_rate: int = 16000
    n_fft: int = 400
    hop: int = 160
    n_mels: int = 40
    n_mfcc: int = 13
    deltas: bool = False  # append first and second differences (x3 features)
    normalize: bool = True  # zero mean, unit variance per utterance and feature

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"features.kind={self.kind!r} is unknown; valid choices: {', '.join(KINDS)}")
        for key in ("sample_rate", "n_fft", "hop", "n_mels", "n_mfcc"):
            if getattr(self, key) < 1:
                raise ValueError(f"features.{key}={getattr(self, key)} is invalid: must be >= 1")
        if self.kind == "mfcc" and self.n_mfcc > self.n_mels:
            raise ValueError(f"features.n_mfcc={self.n_mfcc} exceeds features.n_mels={self.n_mels}")

    @property
    def n_features(self) -> int:
        """Features per frame."""
        base = self.n_mfcc if self.kind == "mfcc" else self.n_mels
        return base * (3 if self.deltas else 1)

    def n_frames(self, n_samples: int) -> int:
        """Frames of a clip of ``n_samples`` samples (centred frames, as ``torch.stft(center=True)``)."""
        return n_samples // self.hop + 1

    def as_dict(self) -> dict:
        return asdict(self)


def hz_to_mel(f: Tensor | float) -> Tensor:
    """HTK mel scale: ``2595 log10(1 + f / 700)``."""
    return 2595.0 * torch.log10(1.0 + torch.as_tensor(f, dtype=torch.float64) / 700.0)


def mel_to_hz(m: Tensor) -> Tensor:
    """Inverse of :func:`hz_to_mel`."""
    return 700.0 * (10.0 ** (m / 2595.0) - 1.0)


def mel_filterbank(
    n_fft: int, n_mels: int, sample_rate: int, f_min: float = 0.0, f_max: float | None = None
) -> Tensor:
    """Triangular filters ``[n_fft // 2 + 1, n_mels]``, equally spaced on the mel scale, peak 1."""
    f_max = sample_rate / 2 if f_max is None else f_max
    freqs = torch.linspace(0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)
    edges = mel_to_hz(
        torch.linspace(hz_to_mel(f_min).item(), hz_to_mel(f_max).item(), n_mels + 2, dtype=torch.float64)
    )
    lower, centre, upper = edges[:-2], edges[1:-1], edges[2:]
    rising = (freqs[:, None] - lower) / (centre - lower)
    falling = (upper - freqs[:, None]) / (upper - centre)
    return torch.clamp(torch.minimum(rising, falling), min=0.0).float()


def dct_matrix(n_in: int, n_out: int) -> Tensor:
    """Orthonormal DCT-II ``[n_in, n_out]``: ``x @ D`` is ``scipy.fft.dct(x, norm='ortho')[..., :n_out]``."""
    n = torch.arange(n_in, dtype=torch.float64)[:, None]
    k = torch.arange(n_out, dtype=torch.float64)[None, :]
    d = torch.cos(math.pi / n_in * (n + 0.5) * k) * math.sqrt(2.0 / n_in)
    d[:, 0] /= math.sqrt(2.0)
    return d.float()


def deltas(x: Tensor, width: int = 2) -> Tensor:
    """Regression deltas over time of ``[..., T, F]``: ``sum_n n (x[t+n] - x[t-n]) / (2 sum_n n^2)``,
    edges repeated."""
    t = x.shape[-2]
    padded = torch.cat(
        [
            x[..., :1, :].expand(*x.shape[:-2], width, x.shape[-1]),
            x,
            x[..., -1:, :].expand(*x.shape[:-2], width, x.shape[-1]),
        ],
        dim=-2,
    )
    out = torch.zeros_like(x)
    for n in range(1, width + 1):
        out = out + n * (
            padded[..., width + n : width + n + t, :] - padded[..., width - n : width - n + t, :]
        )
    return out / (2 * sum(n * n for n in range(1, width + 1)))


def compute_features(waves: Tensor, cfg: FeatureConfig) -> Tensor:
    """Features ``[B, T, n_features]`` of float waveforms ``[B, N]`` at ``cfg.sample_rate``."""
    window = torch.hann_window(cfg.n_fft, dtype=waves.dtype, device=waves.device)
    spec = torch.stft(waves, cfg.n_fft, cfg.hop, window=window, center=True, return_complex=True)
    power = spec.real.square() + spec.imag.square()  # [B, n_fft // 2 + 1, T]
    fb = mel_filterbank(cfg.n_fft, cfg.n_mels, cfg.sample_rate).to(waves)
    feats = torch.log(power.transpose(1, 2) @ fb + 1e-6)  # [B, T, n_mels]
    if cfg.kind == "mfcc":
        feats = feats @ dct_matrix(cfg.n_mels, cfg.n_mfcc).to(feats)
    if cfg.deltas:
        d1 = deltas(feats)
        feats = torch.cat([feats, d1, deltas(d1)], dim=-1)
    if cfg.normalize:
        feats = (feats - feats.mean(-2, keepdim=True)) / (feats.std(-2, keepdim=True) + 1e-5)
    return feats


def read_wav(source: str | Path | bytes) -> tuple[np.ndarray, int]:
    """Mono float32 samples in [-1, 1] and the sample rate of a PCM WAV file (path or bytes)."""
    handle = io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb")
    with handle, wave.open(handle) as w:
        width, channels, rate = w.getsampwidth(), w.getnchannels(), w.getframerate()
        raw = w.readframes(w.getnframes())
    if width == 1:
        x = (np.frombuffer(raw, np.uint8).astype(np.float32) - 128) / 128
    elif width in (2, 4):
        dtype = np.int16 if width == 2 else np.int32
        x = np.frombuffer(raw, dtype).astype(np.float32) / float(np.iinfo(dtype).max)
    else:
        raise ValueError(f"{width * 8}-bit WAV is not supported (8, 16 or 32-bit PCM)")
    return x.reshape(-1, channels).mean(1), rate


def write_wav(path: str | Path, samples: np.ndarray, sample_rate: int) -> None:
    """Write mono float samples in [-1, 1] as 16-bit PCM."""
    pcm = (np.clip(samples, -1, 1) * 32767).astype("<i2")

    def write(f: BinaryIO) -> None:
        with wave.open(f, "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(sample_rate)
            w.writeframes(pcm.tobytes())

    atomic_write(path, write)


def resample(x: np.ndarray, rate: int, target: int) -> np.ndarray:
    """``x`` at ``rate`` Hz resampled to ``target`` Hz (polyphase, anti-aliased)."""
    if rate == target:
        return x
    from scipy.signal import resample_poly

    g = math.gcd(rate, target)
    return resample_poly(x, target // g, rate // g).astype(np.float32)


def fit_clip(x: np.ndarray, n_samples: int) -> np.ndarray:
    """Centre-crop or zero-pad ``x`` to ``n_samples``."""
    if len(x) >= n_samples:
        start = (len(x) - n_samples) // 2
        return x[start : start + n_samples]
    out = np.zeros(n_samples, dtype=np.float32)
    start = (n_samples - len(x)) // 2
    out[start : start + len(x)] = x
    return out
