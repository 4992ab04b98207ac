"""task=speech: the features against numpy/scipy, SpecAugment, the classifier, the three sources
(eSpeak synthesis, a <label>/<file>.wav folder, a hub-format repository) and training end to end."""

import io
import shutil
import wave

import numpy as np
import pytest
import torch

from attn.datamodules.features import (
    FeatureConfig,
    compute_features,
    dct_matrix,
    deltas,
    fit_clip,
    mel_filterbank,
    read_wav,
    resample,
    write_wav,
)
from attn.datamodules.speech import SpeechDataError, SpeechDataModule, scan_folder
from attn.models.speech import SpecAugment, SpeechClassifier
from attn.runner.config import load
from attn.runner.errors import ConfigError
from attn.runner.run import run

KINDS = ["dot", "scaled_dot", "general", "additive", "local", "linear", "sigmoid"]
needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed (apt)")
# A small synthesised set: 3 keywords x 2 accents x 12 variants (8 train, 2 val, 2 test voices).
TINY_SYNTH = {
    "keywords": ["yes", "no", "stop"],
    "accents": ["en-us", "en-gb"],
    "variants": ["m1", "m2", "m3", "m4", "m5", "f1", "f2", "f3", "f4", "croak", "klatt", "david"],
    "n_val_voices": 2,
    "n_test_voices": 2,
    "repeats": 1,
    "batch_size": 16,
}


def tone(freq: float, seconds: float = 0.5, rate: int = 16000) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


# -- features -----------------------------------------------------------------------------------------


def test_mel_filterbank_is_triangular_on_the_htk_mel_scale():
    fb = mel_filterbank(n_fft=512, n_mels=10, sample_rate=16000)
    assert fb.shape == (257, 10) and (fb >= 0).all() and (fb <= 1 + 1e-6).all()
    freqs = np.linspace(0, 8000, 257)
    mel = 2595 * np.log10(1 + freqs / 700)
    centres = 700 * (10 ** (np.linspace(0, mel[-1], 12)[1:-1] / 2595) - 1)
    peaks = freqs[fb.argmax(0).numpy()]
    assert np.all(np.abs(peaks - centres) <= 8000 / 256)  # each peak in the bin nearest its centre
    assert np.all(np.diff(centres) > 0) and np.all(np.diff(np.diff(centres)) > 0)  # wider up high


def test_dct_matrix_equals_scipy_orthonormal_dct():
    scipy_fft = pytest.importorskip("scipy.fft")
    x = np.random.default_rng(0).standard_normal((5, 40))
    expected = scipy_fft.dct(x, type=2, norm="ortho")[:, :13]
    np.testing.assert_allclose(
        (torch.from_numpy(x).float() @ dct_matrix(40, 13)).numpy(), expected, atol=1e-5
    )


def test_deltas_of_a_ramp_are_its_slope():
    x = torch.arange(20, dtype=torch.float32)[:, None] * torch.tensor([1.0, -3.0])
    d = deltas(x[None])[0]
    torch.testing.assert_close(d[2:-2], torch.tensor([1.0, -3.0]).expand(16, 2))


def test_log_mel_matches_a_numpy_computation_of_one_frame():
    cfg = FeatureConfig(normalize=False)
    wave_ = tone(1000.0, 1.0) + 0.01 * np.random.default_rng(0).standard_normal(16000).astype(np.float32)
    feats = compute_features(torch.from_numpy(wave_)[None], cfg)[0]
    assert feats.shape == (cfg.n_frames(16000), 40) == (101, 40)
    t = 50  # a centred frame away from the edges: samples [t*hop - n_fft/2, t*hop + n_fft/2)
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(400) / 400)  # periodic Hann, as torch's
    frame = wave_[t * 160 - 200 : t * 160 + 200] * window
    power = np.abs(np.fft.rfft(frame)) ** 2
    expected = np.log(power @ mel_filterbank(400, 40, 16000).double().numpy() + 1e-6)
    np.testing.assert_allclose(feats[t].numpy(), expected, rtol=1e-3, atol=1e-3)
    assert int(feats[t].argmax()) == int(mel_filterbank(400, 40, 16000)[25].argmax())  # 1 kHz band


def test_feature_options_shapes_normalisation_and_errors():
    noise = np.random.default_rng(0).standard_normal((2, 8000)).astype(np.float32)
    waves = torch.from_numpy(np.stack([tone(440), tone(880)]) + 0.1 * noise)
    feats = compute_features(waves, FeatureConfig(kind="mfcc", deltas=True))
    assert feats.shape == (2, 51, 39) and FeatureConfig(kind="mfcc", deltas=True).n_features == 39
    torch.testing.assert_close(feats.mean(1), torch.zeros(2, 39), atol=1e-4, rtol=0)
    torch.testing.assert_close(feats.std(1), torch.ones(2, 39), atol=1e-3, rtol=0)
    with pytest.raises(ValueError, match=r"features.kind='mel' is unknown; valid choices: logmel, mfcc"):
        FeatureConfig(kind="mel")
    with pytest.raises(ValueError, match="n_mfcc=50 exceeds"):
        FeatureConfig(kind="mfcc", n_mfcc=50)


def test_wav_round_trip_resample_and_fit(tmp_path):
    x = tone(300.0, 0.25, 22050)
    write_wav(tmp_path / "a.wav", x, 22050)
    y, rate = read_wav(tmp_path / "a.wav")
    assert rate == 22050 and np.abs(y - x).max() < 1e-4
    z = resample(y, 22050, 16000)
    assert len(z) == 4000
    spectrum = np.abs(np.fft.rfft(z))
    assert abs(np.argmax(spectrum) * 16000 / len(z) - 300) < 8  # the tone survives resampling
    assert len(fit_clip(z, 16000)) == 16000 and len(fit_clip(np.ones(20000, np.float32), 16000)) == 16000
    assert read_wav((tmp_path / "a.wav").read_bytes())[0].shape == y.shape


# -- model ----------------------------------------------------------------------------------------------


def test_spec_augment_masks_only_in_training():
    x = torch.ones(8, 50, 40)
    aug = SpecAugment(freq_masks=2, freq_width=5, time_masks=2, time_width=6)
    assert torch.equal(aug.eval()(x), x)
    torch.manual_seed(0)
    y = aug.train()(x)
    zeros = y == 0
    assert zeros.any()
    # Masked cells form whole frequency bands and whole time spans: at most 2*5 bands, 2*6 frames.
    full_bands = zeros.all(1).sum(-1)
    full_frames = zeros.all(2).sum(-1)
    assert (full_bands <= 10).all() and (full_frames <= 12).all()
    assert torch.equal(zeros, zeros.all(1, keepdim=True) | zeros.all(2, keepdim=True))


@pytest.mark.parametrize("kind", KINDS)
def test_speech_classifier_every_attention_kind(kind):
    torch.manual_seed(0)
    attention = {"kind": kind, **({"window": 3} if kind == "local" else {})}
    net = SpeechClassifier(40, 5, d_model=16, n_layers=2, n_heads=2, max_len=101, attention=attention)
    x = torch.randn(3, 101, 40)
    logits, weights = net(x, need_weights=kind != "linear")
    assert logits.shape == (3, 5) and net.frames(101) == 26
    logits.sum().backward()
    assert all(p.grad is not None and p.grad.isfinite().all() for p in net.parameters() if p.requires_grad)
    if kind != "linear":
        assert weights[0].shape == (3, 2, 26, 26)
        if kind == "sigmoid":  # elementwise, not normalised over keys
            assert ((weights[0] > 0) & (weights[0] < 1)).all()
        else:
            torch.testing.assert_close(weights[0].sum(-1), torch.ones(3, 2, 26))
    with pytest.raises(ValueError, match=r"102 frames exceed model.max_len=101"):
        net(torch.randn(1, 102, 40))


# -- sources --------------------------------------------------------------------------------------------


SPEAKERS = ("alice", "bob", "carol", "dave", "erin", "frank", "gina", "hank")


def _folder(root, speakers=SPEAKERS, labels=None):
    labels = labels or {"low": 220.0, "high": 1760.0}
    for label, freq in labels.items():
        (root / label).mkdir(parents=True, exist_ok=True)
        for i, speaker in enumerate(speakers):
            write_wav(root / label / f"{speaker}_nohash_0.wav", tone(freq * (1 + 0.01 * i), 0.6), 8000)
    (root / "_background_noise_").mkdir(exist_ok=True)
    return root


def test_folder_splits_by_speaker_and_reads_lists(tmp_path):
    root = _folder(tmp_path / "kws")
    classes, splits = scan_folder(root, None, 25.0, 25.0)
    assert classes == ["high", "low"]
    speakers = {s: {f.name.split("_nohash_")[0] for f, _ in rows} for s, rows in splits.items()}
    assert not (speakers["train"] & speakers["test"] or speakers["train"] & speakers["val"])
    assert sum(len(r) for r in splits.values()) == 16
    (root / "validation_list.txt").write_text("low/bob_nohash_0.wav\nhigh/bob_nohash_0.wav\n")
    (root / "testing_list.txt").write_text("low/alice_nohash_0.wav\n")
    _, listed = scan_folder(root, ["low", "high"], 25.0, 25.0)
    assert [f.name for f, _ in listed["test"]] == ["alice_nohash_0.wav"]
    assert len(listed["val"]) == 2 and len(listed["train"]) == 13
    with pytest.raises(SpeechDataError, match="no folder for keyword 'mid'; found: high, low"):
        scan_folder(root, ["low", "mid"], 25.0, 25.0)


def test_folder_datamodule_trains_end_to_end(tmp_path, fast):
    root = _folder(tmp_path / "kws", speakers=[f"{name}{i}" for name in SPEAKERS for i in range(5)])
    dm = SpeechDataModule(
        source="folder", path=str(root), val_percent=25, test_percent=25, cache_dir=str(tmp_path)
    )
    dm.setup()
    x, y = dm.datasets["train"].tensors
    assert x.shape[1:] == (101, 40) and set(y.tolist()) == {0, 1} and dm.label_names == ["high", "low"]
    assert len(list((tmp_path / "speech").glob("*.pt"))) == 1  # cached, keyed by source and features
    again = SpeechDataModule(
        source="folder", path=str(root), val_percent=25, test_percent=25, cache_dir=str(tmp_path)
    )
    again.setup()
    assert torch.equal(again.datasets["test"].tensors[0], dm.datasets["test"].tensors[0])
    mfcc = SpeechDataModule(
        source="folder",
        path=str(root),
        val_percent=25,
        test_percent=25,
        cache_dir=str(tmp_path),
        features={"kind": "mfcc"},
    )
    mfcc.setup()
    assert (
        mfcc.datasets["train"].tensors[0].shape[-1] == 13
        and len(list((tmp_path / "speech").glob("*.pt"))) == 2
    )

    overrides = [a for a in fast if not a.startswith("task.")]
    cfg = load(
        [
            *overrides,
            "task=speech_folder",
            f"task.datamodule.path={root}",
            "task.datamodule.val_percent=25",
            "task.datamodule.test_percent=25",
            "task.datamodule.batch_size=8",
            "trainer.max_epochs=10",
            "baseline=true",
            "logger=csv",
        ]
    )
    record, exc = run(cfg)
    assert exc is None, exc
    m = record["metrics"]
    assert m["test/acc"] >= 0.9 and m["test/examples"] == len(dm.datasets["test"])  # tones are easy
    assert {"test/f1", "test/ece", "test/loss"} <= set(m) and "test/bow_acc" not in m
    assert m["test/bof_acc"] == 1.0  # two tones: the bag of frames (mean and std per band) separates them


def test_folder_errors_name_the_file(tmp_path):
    root = _folder(tmp_path / "kws")
    (root / "low" / "zed_nohash_0.wav").write_bytes(b"RIFF not a wav")
    dm = SpeechDataModule(
        source="folder", path=str(root), val_percent=25, test_percent=25, cache_dir=str(tmp_path)
    )
    with pytest.raises(SpeechDataError, match=r"zed_nohash_0.wav: unreadable WAV"):
        dm.setup()
    empty = SpeechDataModule(source="folder", path=str(root), val_percent=0, cache_dir=str(tmp_path))
    with pytest.raises(SpeechDataError, match=r"kws: no .wav files for the val split"):
        empty.setup()
    with pytest.raises(ConfigError, match=r"task.datamodule.path=.*nowhere: no such directory"):
        load(["task=speech_folder", f"task.datamodule.path={tmp_path / 'nowhere'}"])
    with pytest.raises(
        ConfigError, match=r"task.datamodule.source='web' is unknown; valid choices: synth, folder, hub"
    ):
        load(["task=speech", "task.datamodule.source=web"])
    with pytest.raises(
        ConfigError, match=r"clip_seconds=2 gives 201 feature frames; .* at most task.datamodule.max_len=101"
    ):
        load(["task=speech", "task.datamodule.clip_seconds=2"])
    with pytest.raises(
        ConfigError, match=r"n_test_voices=60 must each be >= 1 and leave training voices among the 48"
    ):
        load(["task=speech", "task.datamodule.n_test_voices=60"])
    with pytest.raises(ConfigError, match=r"task.datamodule.repeats=0 is invalid: must be >= 1"):
        load(["task=speech", "task.datamodule.repeats=0"])
    with pytest.raises(
        ConfigError,
        match=r"val_percent=60 and task.datamodule.test_percent=50 must be >= 0 and sum below 100",
    ):
        load(
            [
                "task=speech_folder",
                f"task.datamodule.path={tmp_path}",
                "task.datamodule.val_percent=60",
                "task.datamodule.test_percent=50",
            ]
        )
    assert (
        load(["task=speech", "task.datamodule.clip_seconds=2", "task.datamodule.max_len=201"]).model.max_len
        == 201
    )


def _wav_bytes(samples: np.ndarray, rate: int) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((samples * 32767).astype("<i2").tobytes())
    return buf.getvalue()


def test_hub_source_reads_speech_commands_format(hub_repo, tmp_path):
    datasets = pytest.importorskip("datasets")
    names = ["yes", "no", "up", "_silence_"]
    features = datasets.Features(
        {
            "file": datasets.Value("string"),
            "audio": datasets.Audio(sampling_rate=16000),
            "label": datasets.ClassLabel(names=names),
            "is_unknown": datasets.Value("bool"),
            "speaker_id": datasets.Value("string"),
            "utterance_id": datasets.Value("int8"),
        }
    )
    splits = {}
    for split, n in (("train", 3), ("validation", 1), ("test", 2)):
        rows = [(label, i) for i in range(n) for label in range(4)]
        splits[split] = {
            "file": [f"{names[label]}/s{i}_nohash_0.wav" for label, i in rows],
            "audio": [
                {"bytes": _wav_bytes(tone(200.0 * (label + 1)), 16000), "path": f"s{i}.wav"}
                for label, i in rows
            ],
            "label": [label for label, _ in rows],
            "is_unknown": [False] * len(rows),
            "speaker_id": [f"{split}{i}" for _, i in rows],
            "utterance_id": [0] * len(rows),
        }
    repo = hub_repo("speech_commands", "v0.02", features, splits)
    dm = SpeechDataModule(
        source="hub", hub_id=repo, hub_config="v0.02", keywords=["yes", "up"], cache_dir=str(tmp_path)
    )
    dm.setup()
    assert dm.label_names == ["yes", "up"]
    assert [len(dm.datasets[s]) for s in ("train", "val", "test")] == [6, 2, 4]
    assert dm.datasets["test"].tensors[1].tolist() == [0, 1, 0, 1]
    bad = SpeechDataModule(
        source="hub", hub_id=repo, hub_config="v0.02", keywords=["left"], cache_dir=str(tmp_path)
    )
    with pytest.raises(
        SpeechDataError, match="keyword 'left' is not a label; valid choices: yes, no, up, _silence_"
    ):
        bad.setup()
    missing = SpeechDataModule(source="hub", hub_id=str(tmp_path / "absent"), cache_dir=str(tmp_path))
    with pytest.raises(ValueError, match=r"hub data set .*absent"):
        missing.setup()


@needs_espeak
def test_synthesised_keywords_deterministic_with_unseen_test_voices(tmp_path):
    a = SpeechDataModule(seed=0, cache_dir=str(tmp_path / "a"), **TINY_SYNTH)
    b = SpeechDataModule(seed=0, cache_dir=str(tmp_path / "b"), **TINY_SYNTH)
    c = SpeechDataModule(seed=1, cache_dir=str(tmp_path / "a"), **TINY_SYNTH)
    for dm in (a, b, c):
        dm.setup()
    voices = a.voices
    assert not (set(voices["train"]) & set(voices["test"]) or set(voices["train"]) & set(voices["val"]))
    assert [len(a.datasets[s]) for s in ("train", "val", "test")] == [
        48,
        12,
        12,
    ]  # 3 words x 2 accents x voices
    assert a.datasets["train"].tensors[0].shape[1:] == (101, 40)
    for split in ("train", "test"):  # computed twice from scratch: identical
        assert torch.equal(a.datasets[split].tensors[0], b.datasets[split].tensors[0])
    assert voices != c.voices
    assert sorted(a.datasets["test"].tensors[1].tolist()) == [0] * 4 + [1] * 4 + [2] * 4


@needs_espeak
def test_speech_task_fast_dev_run_and_short_training(fast):
    overrides = [a for a in fast if not a.startswith("task.")]
    data = [
        f"task.datamodule.{k}={v}"
        for k, v in TINY_SYNTH.items()
        if k not in ("keywords", "accents", "variants")
    ]
    data += [
        f"task.datamodule.{k}=[{','.join(v)}]" for k, v in TINY_SYNTH.items() if k in ("accents", "variants")
    ]
    data += ["task.datamodule.keywords=['yes','no',stop]"]
    record, exc = run(load([*overrides, "task=speech", *data, "debug=fast_dev_run"]))
    assert exc is None, exc
    record, exc = run(
        load([*overrides, "task=speech", *data, "model=transformer", "trainer.max_epochs=12", "logger=csv"])
    )
    assert exc is None, exc
    # 3 keywords, 2 test voices never heard in training: chance is 1/3.
    assert record["metrics"]["test/acc"] >= 0.75, record["metrics"]


def test_bag_of_frames_baseline_is_order_blind():
    from attn.models.baseline import bag_of_frames, logistic_regression

    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 30, 4, generator=g)
    rising = torch.linspace(-1, 1, 30)[None, :, None]
    y = torch.arange(200) % 2
    x = x + torch.where(y[:, None, None] == 1, rising, rising.flip(1))  # same frames, opposite order
    feats = bag_of_frames(x)
    assert feats.shape == (200, 8)
    acc = logistic_regression((feats[:150], y[:150]), (feats[150:], y[150:]), 2)
    assert acc < 0.75  # order is all that differs: the bag of frames is near chance
    order = logistic_regression((x[:150].flatten(1), y[:150]), (x[150:].flatten(1), y[150:]), 2)
    assert order > 0.9


@pytest.mark.parametrize("softmax", ["softmax1", "sparsemax", "entmax15", "learnable"])
def test_speech_classifier_every_softmax_variant(softmax):
    torch.manual_seed(0)
    if softmax == "learnable":
        attention = {"kind": "scaled_dot", "temperature": "learnable"}
    else:
        attention = {"kind": "scaled_dot", "softmax": softmax, "temperature": 0.5}
    net = SpeechClassifier(13, 4, d_model=16, n_layers=1, n_heads=2, max_len=101, attention=attention)
    logits, weights = net(torch.randn(2, 101, 13), need_weights=True)
    logits.sum().backward()
    assert logits.isfinite().all() and weights[0].isfinite().all()
    assert all(p.grad is not None and p.grad.isfinite().all() for p in net.parameters() if p.requires_grad)


def test_synthesis_shows_progress_on_stderr(monkeypatch, capsys):
    from attn.datamodules import keywords

    monkeypatch.setattr(keywords, "espeak", lambda: "espeak-ng")
    monkeypatch.setattr(keywords, "synthesise", lambda u, sr, n, noise, snr: np.zeros(n, np.float32))
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    clips = keywords.synthesise_all(list(range(7)), 16000, 100, label="synthesising the val split")
    assert clips.shape == (7, 100)
    err = capsys.readouterr().err
    assert "synthesising the val split" in err and "7/7" in err
    monkeypatch.setenv("LOCAL_RANK", "1")  # other DDP ranks stay quiet
    keywords.synthesise_all(list(range(3)), 16000, 100)
    assert capsys.readouterr().err == ""
