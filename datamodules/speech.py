"""Keyword spotting: fixed-length clips -> log-mel / MFCC frames (``features.py``) -> class of the word.

Three sources, one datamodule (``source=``):

- ``synth`` (the offline default): keywords spoken by eSpeak NG voices (``keywords.py``), test voices
  never heard in training;
- ``folder``: your recordings laid out as ``<path>/<label>/<file>.wav`` (the Speech Commands archive
  layout; its ``validation_list.txt`` / ``testing_list.txt`` are used when present, otherwise speakers
  -- the part of the file name before ``_nohash_`` -- are hashed into splits so none crosses them);
- ``hub``: a Hugging Face data set with ``audio`` and ``label`` columns, e.g. ``google/speech_commands``
  ``v0.02``, read from the hub when online or from the local ``datasets`` cache.

Features are computed once and cached in ``<cache_dir>/speech/<key>.pt``, the key hashing the source,
its settings and the feature config; ``cache_dir`` defaults to ``$ATTN_CACHE_DIR`` or ``~/.cache/attn``.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import wave
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import TensorDataset

from .base import SplitDataModule
from .features import FeatureConfig, compute_features, fit_clip, read_wav, resample
from .files import atomic_write, cache_root, write_json_atomic
from .hub import label_names, load_split
from .keywords import (
    ACCENTS,
    KEYWORDS,
    SNR_DB,
    VARIANTS,
    plan,
    split_variants,
    synthesise_all,
)

SOURCES = ("synth", "folder", "hub")
SPLITS = ("train", "val", "test")
HUB_SPLITS = {"train": "train", "val": "validation", "test": "test"}


class SpeechDataError(ValueError):
    """Unusable speech data; the message names the file or setting."""


def speaker_of(path: Path) -> str:
    """Speaker id of a Speech Commands file name (``<speaker>_nohash_<n>.wav``), else the file stem."""
    return path.stem.split("_nohash_")[0]


def scan_folder(
    root: Path, keywords: list[str] | None, val_percent: float, test_percent: float
) -> tuple[list[str], dict[str, list[tuple[Path, int]]]]:
    """Classes and per-split ``(file, class index)`` of a ``<label>/<file>.wav`` folder."""
    if not root.is_dir():
        raise SpeechDataError(f"task.datamodule.path={root}: no such directory")
    found = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith(("_", ".")))
    classes = list(keywords) if keywords else found
    missing = [c for c in classes if c not in found]
    if missing:
        raise SpeechDataError(
            f"{root}: no folder for keyword {missing[0]!r}; found: {', '.join(found) or 'none'}"
        )
    if len(classes) < 2:
        raise SpeechDataError(f"{root}: {len(classes)} class folder(s); need at least two <label>/ folders")
    lists = {}
    for split, name in (("val", "validation_list.txt"), ("test", "testing_list.txt")):
        if (root / name).is_file():
            lists[split] = {line.strip() for line in (root / name).read_text().splitlines() if line.strip()}
    splits: dict[str, list[tuple[Path, int]]] = {s: [] for s in SPLITS}
    for index, label in enumerate(classes):
        for f in sorted((root / label).glob("*.wav")):
            rel = f"{label}/{f.name}"
            if len(lists) == 2:
                split = "val" if rel in lists["val"] else "test" if rel in lists["test"] else "train"
            else:  # speakers hashed into buckets, as the Speech Commands lists were made
                bucket = zlib.crc32(speaker_of(f).encode()) % 10000 / 100
                split = (
                    "val"
                    if bucket < val_percent
                    else "test"
                    if bucket < val_percent + test_percent
                    else "train"
                )
            splits[split].append((f, index))
    for split, rows in splits.items():
        if not rows:
            raise SpeechDataError(f"{root}: no .wav files for the {split} split")
    return classes, splits


class SpeechDataModule(SplitDataModule):
    """Keyword classification from speech features; see the module docstring for the sources."""

    def __init__(
        self,
        source: str = "synth",
        keywords: list[str] | None = None,
        path: str | None = None,
        val_percent: float = 10.0,
        test_percent: float = 10.0,
        hub_id: str = "google/speech_commands",
        hub_config: str | None = "v0.02",
        hub_revision: str | None = None,
        accents: list[str] | None = None,
        variants: list[str] | None = None,
        n_val_voices: int = 4,
        n_test_voices: int = 8,
        repeats: int = 1,
        noise: bool = True,
        snr_db: list[float] | None = None,
        features: dict[str, Any] | None = None,
        clip_seconds: float = 1.0,
        max_len: int = 101,
        cache_dir: str | None = None,
        batch_size: int = 64,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        self.check_config(
            "task.datamodule", {k: v for k, v in locals().items() if k not in ("self", "__class__")}
        )
        self.source, self.path = source, path
        self.keywords = list(keywords) if keywords else None
        self.val_percent, self.test_percent = val_percent, test_percent
        self.hub = {"id": hub_id, "config": hub_config, "revision": hub_revision}
        self.synth = {
            "accents": list(accents or ACCENTS),
            "variants": list(variants or VARIANTS),
            "n_val_voices": n_val_voices,
            "n_test_voices": n_test_voices,
            "repeats": repeats,
            "noise": noise,
        }
        if snr_db is not None and tuple(snr_db) != SNR_DB:  # the default keeps the cache key it had
            self.synth["snr_db"] = [float(v) for v in snr_db]
        self.features = FeatureConfig(**(features or {}))
        self.n_samples = round(clip_seconds * self.features.sample_rate)
        self.max_len, self.cache_dir = max_len, cache_dir
        self.batch_size, self.seed, self.num_workers = batch_size, seed, num_workers
        self.classes: list[str] = []
        self.voices: dict[str, list[str]] = {}
        self.datasets: dict[str, TensorDataset] = {}

    @staticmethod
    def check_config(path: str, node: dict) -> None:
        """The source must be known, the features valid; ``ValueError`` names the bad value."""
        source = node.get("source")
        if source not in SOURCES:
            raise ValueError(f"{path}.source={source!r} is unknown; valid choices: {', '.join(SOURCES)}")
        keywords = node.get("keywords")
        if keywords is not None and not all(isinstance(k, str) for k in keywords):
            bad = next(k for k in keywords if not isinstance(k, str))
            raise ValueError(f"{path}.keywords: {bad!r} is not a word (quote yes/no/on/off in YAML)")
        if source == "synth":
            n_variants = len(node.get("variants") or VARIANTS)
            n_val, n_test = node.get("n_val_voices", 4), node.get("n_test_voices", 8)
            if n_val < 1 or n_test < 1 or n_val + n_test >= n_variants:
                raise ValueError(
                    f"{path}.n_val_voices={n_val} and {path}.n_test_voices={n_test} must each be >= 1 and"
                    f" leave training voices among the {n_variants} variants"
                )
            snr = node.get("snr_db")
            if snr is not None and (len(snr) != 2 or not all(isinstance(v, int | float) for v in snr)
                                    or snr[0] > snr[1]):  # fmt: skip
                raise ValueError(f"{path}.snr_db={snr!r} is invalid: must be [low, high] in dB, low <= high")
            if node.get("repeats", 1) < 1:
                raise ValueError(f"{path}.repeats={node['repeats']} is invalid: must be >= 1")
        if source == "folder":
            val, test = node.get("val_percent", 10.0), node.get("test_percent", 10.0)
            if val < 0 or test < 0 or val + test >= 100:
                raise ValueError(
                    f"{path}.val_percent={val} and {path}.test_percent={test} must be >= 0 and sum below 100"
                )
            if not node.get("path"):
                raise ValueError(
                    f"{path}.path is required for source=folder: a directory of <label>/<file>.wav"
                )
            if not Path(str(node["path"])).is_dir():
                raise ValueError(f"{path}.path={node['path']}: no such directory")
        try:
            features = FeatureConfig(**(node.get("features") or {}))
        except TypeError as e:
            raise ValueError(f"{path}.features: {e}") from None
        except ValueError as e:
            raise ValueError(f"{path}.{e}") from None
        seconds, max_len = node.get("clip_seconds", 1.0), node.get("max_len", 101)
        frames = features.n_frames(round(seconds * features.sample_rate))
        if seconds <= 0 or frames > max_len:
            raise ValueError(
                f"{path}.clip_seconds={seconds} gives {frames} feature frames; it must be > 0 and give at"
                f" most {path}.max_len={max_len} (raise max_len for longer clips)"
            )

    # -- what the module and the run need ------------------------------------------------------------

    @property
    def n_classes(self) -> int:
        self.prepare_splits()
        return len(self.classes)

    @property
    def label_names(self) -> list[str]:
        self.prepare_splits()
        return list(self.classes)

    def module_kwargs(self) -> dict:
        """Feature size and classes, for the speech classifier."""
        return {"n_features": self.features.n_features, "n_classes": self.n_classes}

    def save(self, run_dir: str) -> None:
        """Write the classes, the feature config and (synth) the voices of each split."""
        info = {"classes": self.classes, "features": self.features.as_dict(), "voices": self.voices}
        write_json_atomic(Path(run_dir, "speech.json"), info, indent=1)

    # -- building the splits -------------------------------------------------------------------------

    def cache_key(self) -> str:
        """Hash of everything the cached features depend on."""
        ident: dict[str, Any] = {
            "source": self.source,
            "features": self.features.as_dict(),
            "n_samples": self.n_samples,
            "keywords": self.keywords,
            "version": 1,
        }
        if self.source == "synth":
            ident.update(self.synth, seed=self.seed)
        elif self.source == "folder":
            root = Path(str(self.path)).resolve()
            stat = [
                (str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns)
                for p in sorted(root.rglob("*"))
                if p.is_file()
            ]
            ident.update(path=str(root), files=stat, val=self.val_percent, test=self.test_percent)
        else:
            ident.update(self.hub)
        return hashlib.sha1(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]

    def prepare_splits(self) -> None:
        """Load the cached features, or compute and cache them (idempotent)."""
        if self.datasets:
            return
        path = cache_root(self.cache_dir) / "speech" / f"{self.cache_key()}.pt"
        if path.is_file():
            data = torch.load(path, weights_only=True)
        else:
            data = self._compute()
            path.parent.mkdir(parents=True, exist_ok=True)
            # atomic: DDP ranks computing at once all end with one good file
            atomic_write(path, lambda f: torch.save(data, f))
        self.classes, self.voices = list(data["classes"]), dict(data["voices"])
        self.datasets = {s: TensorDataset(data["x"][s], data["y"][s]) for s in SPLITS}

    def _features(self, clips: np.ndarray) -> torch.Tensor:
        waves = torch.from_numpy(clips)
        return torch.cat([compute_features(chunk, self.features) for chunk in waves.split(256)])

    def _compute(self) -> dict[str, Any]:
        xs: dict[str, torch.Tensor] = {}
        ys: dict[str, torch.Tensor] = {}
        voices: dict[str, list[str]] = {}
        if self.source == "synth":
            classes = self.keywords or list(KEYWORDS)
            s = self.synth
            voices = split_variants(s["variants"], s["n_val_voices"], s["n_test_voices"], self.seed)
            for split in SPLITS:
                utterances = plan(classes, s["accents"], voices[split], s["repeats"], self.seed)
                label = f"eSpeak NG: synthesising the {split} split (cached after the first run)"
                clips = synthesise_all(
                    utterances,
                    self.features.sample_rate,
                    self.n_samples,
                    s["noise"],
                    label=label,
                    snr_db=tuple(s.get("snr_db", SNR_DB)),
                )
                xs[split] = self._features(clips)
                ys[split] = torch.tensor([classes.index(u.word) for u in utterances])
        else:
            if self.source == "folder":
                root = Path(str(self.path))
                classes, files = scan_folder(root, self.keywords, self.val_percent, self.test_percent)
                examples = {s: ((f, str(f), i) for f, i in rows) for s, rows in files.items()}
            else:
                classes, examples = hub_examples(
                    self.hub["id"], self.hub["config"], self.hub["revision"], self.keywords
                )
            for split in SPLITS:  # decoded and featurised in chunks: real data sets do not fit as audio
                feats, labels = [], []
                for chunk in _chunks(examples[split], 512):
                    feats.append(self._features(np.stack([self._clip(src, name) for src, name, _ in chunk])))
                    labels += [label for _, _, label in chunk]
                if not labels:
                    raise SpeechDataError(f"no examples of {', '.join(classes)} in the {split} split")
                xs[split], ys[split] = torch.cat(feats), torch.tensor(labels)
        return {"x": xs, "y": ys, "classes": classes, "voices": voices}

    def _clip(self, source: Path | bytes, name: str) -> np.ndarray:
        try:
            x, rate = read_wav(source)
        except (OSError, EOFError, ValueError, wave.Error) as e:
            raise SpeechDataError(f"{name}: unreadable WAV ({e})") from None
        return fit_clip(resample(x, rate, self.features.sample_rate), self.n_samples)


def hub_examples(
    hub_id: str, config: str | None, revision: str | None, keywords: list[str] | None
) -> tuple[list[str], dict[str, Iterator[tuple[Any, str, int]]]]:
    """Classes and, per split, an iterator of ``(wav bytes or path, name, class index)`` over a hub audio
    data set with ``audio`` and class-label ``label`` columns (read in batches, not all at once)."""
    import datasets

    out: dict[str, Iterator[tuple[Any, str, int]]] = {}
    classes: list[str] = []
    for split, hub_split in HUB_SPLITS.items():
        ds = load_split(hub_id, config, hub_split, revision)
        names = label_names(ds, "label")
        if names is None or "audio" not in ds.column_names:
            raise SpeechDataError(f"{hub_id}: expected an 'audio' column and a class-label 'label' column")
        classes = list(keywords) if keywords else names
        unknown = [k for k in classes if k not in names]
        if unknown:
            raise SpeechDataError(
                f"{hub_id}: keyword {unknown[0]!r} is not a label; valid choices: {', '.join(names)}"
            )
        keep = {names.index(c): i for i, c in enumerate(classes)}
        # WAV bytes, decoded by read_wav: datasets' own audio decoding needs torchcodec.
        ds = ds.cast_column("audio", datasets.Audio(decode=False)).select_columns(["audio", "label"])
        out[split] = _hub_rows(ds, keep, f"{hub_id}[{hub_split}]")
    return classes, out


def _chunks(items: Iterator[Any] | Any, size: int) -> Iterator[list[Any]]:
    """Consecutive lists of ``size`` items (the last may be shorter)."""
    it = iter(items)
    while chunk := list(itertools.islice(it, size)):
        yield chunk


def _hub_rows(ds: Any, keep: dict[int, int], name: str) -> Iterator[tuple[Any, str, int]]:
    index = 0
    for batch in ds.iter(batch_size=512):
        for audio, label in zip(batch["audio"], batch["label"], strict=True):
            if label in keep:
                yield audio.get("bytes") or audio.get("path"), f"{name}[{index}]", keep[label]
            index += 1
