"""Spoken keywords synthesised offline with eSpeak NG (Debian package ``espeak-ng``, GPL-3.0-or-later).

A *voice* is an English accent (``en-us``, ``en-gb-scotland``, ...) with a voice variant (``m3``,
``f2``, ``croak``, ...) that sets pitch, formants and breathiness. Variants are split between train,
validation and test, so every test clip comes from a variant never heard in training. Each clip
draws its speed, pitch, loudness, position in the clip and background noise (white or
brown, 5-30 dB SNR by default) from a generator seeded per clip.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from .features import read_wav, resample

# The ten keywords of Speech Commands' 12-class task (which adds "unknown" and "silence").
KEYWORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
# All 35 words of Speech Commands v0.02 (Warden, 2018): the ten keywords, digits, auxiliary words.
SPEECH_COMMANDS = (
    *KEYWORDS,
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
    "bed", "bird", "cat", "dog", "happy", "house", "marvin", "sheila", "tree", "wow",
    "backward", "forward", "follow", "learn", "visual",
)  # fmt: skip
SNR_DB = (5.0, 30.0)  # the default range of signal-to-noise ratios of the added noise
ACCENTS = (
    "en-us",
    "en-gb",
    "en-gb-scotland",
    "en-gb-x-rp",
    "en-029",
    "en-gb-x-gbclan",
    "en-gb-x-gbcwmd",
    "en-us-nyc",
)
VARIANTS = (
    "m1 m2 m3 m4 m5 m6 m7 m8 f1 f2 f3 f4 f5 croak klatt klatt2 klatt3 adam Alex Alicia Andy "
    "Annie aunty belinda benjamin boris caleb david ed edward Gene grandma grandpa iven john "
    "linda max Michael Mike norbert paul quincy rob robert steph travis victor zac"
).split()


class SynthesisError(RuntimeError):
    """eSpeak NG is missing or failed."""


def espeak() -> str:
    """Path of the ``espeak-ng`` binary; a one-line error with the install command if missing."""
    path = shutil.which("espeak-ng")
    if path is None:
        raise SynthesisError(
            "espeak-ng not found: task=speech synthesises its keywords with it; install it with"
            " `sudo apt-get install espeak-ng` (Debian/Ubuntu), or train on recordings with"
            " task=speech_folder or task=speech_commands"
        )
    return path


@dataclass(frozen=True)
class Utterance:
    """One clip to synthesise."""

    word: str
    accent: str
    variant: str
    seed: int


def split_variants(variants: list[str], n_val: int, n_test: int, seed: int) -> dict[str, list[str]]:
    """Disjoint ``train`` / ``val`` / ``test`` lists of voice variants, shuffled by ``seed``."""
    if n_val < 1 or n_test < 1 or n_val + n_test >= len(variants):
        raise ValueError(
            f"n_val_voices={n_val} and n_test_voices={n_test} must be >= 1 and leave training voices"
            f" out of {len(variants)} variants"
        )
    order = sorted(variants)
    random.Random(seed).shuffle(order)
    return {"test": order[:n_test], "val": order[n_test : n_test + n_val], "train": order[n_test + n_val :]}


def plan(
    words: list[str], accents: list[str], variants: list[str], repeats: int, seed: int
) -> list[Utterance]:
    """Every (word, accent, variant) ``repeats`` times, each with its own seed."""
    out = []
    for variant in variants:
        for accent in accents:
            for word in words:
                for r in range(repeats):
                    key = f"{seed}/{word}/{accent}/{variant}/{r}".encode()
                    out.append(Utterance(word, accent, variant, zlib.crc32(key)))
    return out


def synthesise(
    u: Utterance, sample_rate: int, n_samples: int, noise: bool = True, snr_db: tuple[float, float] = SNR_DB
) -> np.ndarray:
    """The clip of ``u``: ``n_samples`` float32 samples at ``sample_rate``; with ``noise``, white or
    brown noise at a signal-to-noise ratio drawn uniformly from ``snr_db``."""
    rng = np.random.default_rng(u.seed)
    speed, pitch = int(rng.integers(110, 230)), int(rng.integers(15, 85))
    cmd = [espeak(), "-v", f"{u.accent}+{u.variant}", "-s", str(speed), "-p", str(pitch), "--stdout", u.word]
    try:
        done = subprocess.run(cmd, capture_output=True, timeout=30)
        if done.returncode or not done.stdout:
            err = done.stderr.decode(errors="replace").strip().splitlines()
            raise SynthesisError(f"`{' '.join(cmd)}` failed: {err[-1] if err else 'no audio'}")
        x, rate = read_wav(done.stdout)
    except (subprocess.SubprocessError, OSError, EOFError, ValueError) as e:
        raise SynthesisError(f"espeak-ng failed on {u}: {e}") from None
    x = resample(x, rate, sample_rate)
    nz = np.flatnonzero(np.abs(x) > 1e-3)
    x = x[nz[0] : nz[-1] + 1] if len(nz) else x  # trim eSpeak's leading and trailing silence
    x = x[:n_samples] * float(rng.uniform(0.3, 1.0)) / max(1e-6, float(np.abs(x).max()))
    clip = np.zeros(n_samples, dtype=np.float32)
    start = int(rng.integers(0, n_samples - len(x) + 1))
    clip[start : start + len(x)] = x
    if noise:
        white = rng.standard_normal(n_samples).astype(np.float32)
        if rng.random() < 0.5:  # brown noise: integrated white noise, zero mean
            white = np.cumsum(white)
            white -= np.linspace(white[0], white[-1], n_samples, dtype=np.float32)
        snr = float(rng.uniform(*snr_db))
        signal_power = float(np.mean(x**2)) + 1e-12
        white *= np.sqrt(signal_power / 10 ** (snr / 10) / (float(np.mean(white**2)) + 1e-12))
        clip = clip + white
    return clip.astype(np.float32)


def synthesise_all(
    utterances: list[Utterance],
    sample_rate: int,
    n_samples: int,
    noise: bool = True,
    workers: int = 4,
    snr_db: tuple[float, float] = SNR_DB,
    label: str = "eSpeak NG: synthesising keywords",
) -> np.ndarray:
    """``[N, n_samples]`` float32 clips (eSpeak processes run in parallel), with a progress bar on
    stderr (first process of a distributed job only)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    espeak()
    first = os.environ.get("RANK", "0") == "0" and os.environ.get("LOCAL_RANK", "0") == "0"
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    progress = Progress(*columns, console=Console(stderr=True), disable=not first)
    clips = []
    with ThreadPoolExecutor(max_workers=workers) as pool, progress:
        task = progress.add_task(label, total=len(utterances))
        for clip in pool.map(lambda u: synthesise(u, sample_rate, n_samples, noise, snr_db), utterances):
            clips.append(clip)
            progress.advance(task)
    return np.stack(clips) if clips else np.zeros((0, n_samples), np.float32)
