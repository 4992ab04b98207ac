"""Loaders for real data sets, tested offline against local files in the formats of the Hugging Face hub
repositories (imdb, ag_news, sst2, iwslt2017 / wmt14) and against local CSV / TSV files."""

import pytest

from attn.datamodules.hub import HubDataError
from attn.datamodules.hubtext import HubTextDataModule
from attn.datamodules.parallel import ParallelTextDataModule, read_tsv
from attn.datamodules.textfile import DataError, read_examples
from attn.datamodules.vocab import Vocabulary, detokenize, tokenize
from attn.runner.config import load
from attn.runner.errors import ConfigError
from attn.runner.run import run

datasets = pytest.importorskip("datasets")

POSITIVE = "a moving , witty film . i loved every minute of it".split()
NEGATIVE = "a dull , clumsy mess . i hated every minute of it".split()


def _reviews(n: int, offset: int = 0) -> tuple[list[str], list[int]]:
    texts, labels = [], []
    for i in range(n):
        label = (i + offset) % 2
        words = POSITIVE if label else NEGATIVE
        texts.append(f"Review {i + offset}: " + " ".join(words) + "<br /><br />The End.")
        labels.append(label)
    return texts, labels


def _imdb(hub_repo) -> str:
    features = datasets.Features(
        {"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["neg", "pos"])}
    )
    splits = {}
    for split, (n, offset) in {"train": (60, 0), "test": (20, 1000), "unsupervised": (5, 2000)}.items():
        texts, labels = _reviews(n, offset)
        splits[split] = {"text": texts, "label": labels if split != "unsupervised" else [-1] * n}
    return hub_repo("imdb", "plain_text", features, splits)


def test_tokenizer_and_vocabulary_limits():
    assert tokenize("It's a <br />GREAT film!") == ["it", "'", "s", "a", "great", "film", "!"]
    assert (
        detokenize(tokenize("Well-known (really), isn't it?", lowercase=False))
        == "Well-known (really), isn't it?"
    )
    vocab = Vocabulary.build([["a", "a", "b", "c"], ["a", "b"]], min_count=2, max_size=3)
    assert vocab.tokens == ["<pad>", "<unk>", "a"]


def test_imdb_format_loads_with_train_only_vocabulary(hub_repo):
    repo = _imdb(hub_repo)
    dm = HubTextDataModule(hub_id=repo, hub_config="plain_text", max_len=16, min_count=1, seed=3)
    dm.setup()
    assert dm.label_names == ["neg", "pos"] and dm.n_classes == 2
    assert [len(dm.splits[s]) for s in ("train", "val", "test")] == [54, 6, 20]
    assert "<br" not in {t for tokens, _ in dm.splits["train"] for t in tokens}  # markup removed
    x, y = dm.datasets["test"].tensors
    assert x.shape == (20, 16) and y.tolist() == [0, 1] * 10  # truncated to max_len, labels kept
    test_words = {t for tokens, _ in dm.splits["test"] for t in tokens}
    train_words = {t for tokens, _ in dm.splits["train"] for t in tokens}
    assert set(dm.vocab.tokens[2:]) == train_words and test_words - train_words  # test numbers are <unk>
    train_text = {" ".join(t) for t, _ in dm.splits["train"]}
    assert not train_text & {" ".join(t) for t, _ in dm.splits["test"]}
    again = HubTextDataModule(hub_id=repo, hub_config="plain_text", max_len=16, min_count=1, seed=3)
    again.setup()
    assert again.splits == dm.splits


def test_sst2_and_ag_news_formats(hub_repo):
    sst = datasets.Features(
        {
            "idx": datasets.Value("int32"),
            "sentence": datasets.Value("string"),
            "label": datasets.ClassLabel(names=["negative", "positive"]),
        }
    )
    texts, labels = _reviews(30)
    repo = hub_repo(
        "sst2",
        "default",
        sst,
        {
            "train": {"idx": list(range(30)), "sentence": texts, "label": labels},
            "validation": {"idx": list(range(10)), "sentence": texts[:10], "label": labels[:10]},
            "test": {"idx": list(range(10)), "sentence": texts[:10], "label": [-1] * 10},
        },
    )
    dm = HubTextDataModule(hub_id=repo, text_column="sentence", test_split="validation", min_count=1)
    dm.setup()
    assert len(dm.datasets["test"]) == 10 and dm.label_names == ["negative", "positive"]
    unlabelled = HubTextDataModule(hub_id=repo, text_column="sentence", test_split="test")
    with pytest.raises(HubDataError, match=r"split 'test' row 0: label -1 is not a class"):
        unlabelled.setup()
    wrong_column = HubTextDataModule(hub_id=repo)
    with pytest.raises(HubDataError, match=r"no text column 'text' .*columns: idx, sentence, label"):
        wrong_column.setup()

    ag = datasets.Features(
        {
            "text": datasets.Value("string"),
            "label": datasets.ClassLabel(names=["World", "Sports", "Business", "Sci/Tech"]),
        }
    )
    rows = {
        "text": [f"story {i} about topic {i % 4}" for i in range(40)],
        "label": [i % 4 for i in range(40)],
    }
    repo = hub_repo("ag_news", "default", ag, {"train": rows, "test": rows})
    dm = HubTextDataModule(hub_id=repo, min_count=1)
    assert dm.n_classes == 4 and dm.label_names[3] == "Sci/Tech"


def test_missing_hub_data_set_is_one_line(tmp_path):
    dm = HubTextDataModule(hub_id=str(tmp_path / "not-downloaded"))
    with pytest.raises(HubDataError) as e:
        dm.setup()
    assert "not-downloaded" in str(e.value) and "\n" not in str(e.value)


def test_imdb_preset_trains_from_a_local_hub_copy(hub_repo, fast):
    repo = _imdb(hub_repo)
    overrides = [a for a in fast if not a.startswith("task.")]
    record, exc = run(
        load(
            [
                *overrides,
                "task=imdb",
                f"task.datamodule.hub_id={repo}",
                "task.datamodule.max_len=24",
                "task.datamodule.min_count=1",
                "trainer.max_epochs=6",
                "baseline=true",
                "logger=csv",
            ]
        )
    )
    assert exc is None, exc
    m = record["metrics"]
    assert m["test/examples"] == 20 and m["test/acc"] == 1.0  # the two review texts differ in every adjective
    assert m["test/bow_acc"] == 1.0 and {"test/f1", "test/ece", "test/loss"} <= set(m)


def test_csv_files(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text(
        'id,text,label\n1,"Great, really great",pos\n2,"Bad ""film""",neg\n\n3,"multi\nline",pos\n'
    )
    rows = read_examples(path)
    assert [(r[1], r[2]) for r in rows] == [("pos", 2), ("neg", 3), ("pos", 6)]
    assert rows[1][0] == ["bad", '"film"'] and rows[2][0] == ["multi", "line"]
    (tmp_path / "bad.csv").write_text("sentence,label\nhi,pos\n")
    with pytest.raises(
        DataError, match=r"bad.csv:1: the header must name 'text' and 'label' columns; found: sentence"
    ):
        read_examples(tmp_path / "bad.csv")
    (tmp_path / "empty.csv").write_text('text,label\n"",pos\n')
    with pytest.raises(DataError, match=r"empty.csv:2: empty text"):
        read_examples(tmp_path / "empty.csv")


def test_text_files_as_real_corpora_are_written(tmp_path):
    # A byte-order mark, CRLF line ends, a form feed and a Unicode line separator inside fields.
    tsv = tmp_path / "bom.tsv"
    tsv.write_bytes(
        "\ufeffneg\tdull and slow\r\npos\tpage one\x0cpage two\r\nneg\tend\u2028of story\r\n".encode()
    )
    rows = read_examples(tsv)
    assert [(r[1], r[2]) for r in rows] == [("neg", 1), ("pos", 2), ("neg", 3)]  # no '\ufeffneg' class
    assert rows[1][0] == ["page", "one", "page", "two"] and rows[2][0] == ["end", "of", "story"]
    (tmp_path / "late.tsv").write_text("pos\ta\x0cb\nno tab here\n")
    with pytest.raises(DataError, match=r"late.tsv:2: expected 'label<TAB>text'"):  # the right line
        read_examples(tmp_path / "late.tsv")
    (tmp_path / "null.jsonl").write_text('{"text": "fine", "label": "pos"}\n{"text": "hm", "label": null}\n')
    with pytest.raises(DataError, match=r"null.jsonl:2: no label \(got null\)"):  # not a class 'None'
        read_examples(tmp_path / "null.jsonl")
    (tmp_path / "blank.tsv").write_text("pos\tfine\n\tno label here\n")
    with pytest.raises(DataError, match=r"blank.tsv:2: no label"):
        read_examples(tmp_path / "blank.tsv")


# -- translation --------------------------------------------------------------------------------------

PAIRS = [
    ("ein kleines Haus .", "a small house ."),
    ("das Haus ist rot .", "the house is red ."),
    ("ein rotes Auto .", "a red car ."),
    ("das Auto ist klein .", "the car is small ."),
]


def _iwslt(hub_repo) -> str:
    features = datasets.Features({"translation": datasets.Translation(languages=["de", "en"])})
    rows = [{"de": de, "en": en} for de, en in PAIRS]
    splits = {
        "train": {"translation": rows * 10},
        "validation": {"translation": rows[:2]},
        "test": {"translation": [{"de": "das Haus ist klein .", "en": "The house is small."}]},
    }
    return hub_repo("iwslt2017", "iwslt2017-de-en", features, splits)


def test_translation_hub_format_and_references(hub_repo):
    repo = _iwslt(hub_repo)
    dm = ParallelTextDataModule(
        source="hub", hub_id=repo, hub_config="iwslt2017-de-en", max_len=8, min_count=1
    )
    dm.setup()
    assert [len(dm.datasets[s]) for s in ("train", "val", "test")] == [40, 2, 1]
    assert dm.splits["train"][0] == (["ein", "kleines", "haus", "."], ["a", "small", "house", "."])
    assert dm.test_references() == ["the house is small."]  # the original sentence, lower-cased
    x, _, index = dm.datasets["test"].tensors
    assert x.shape == (1, 8) and index.tolist() == [0]
    tokens = dm.module_kwargs()["tgt_tokens"]
    assert {"<s>", "</s>", "house"} <= set(tokens)
    reverse = ParallelTextDataModule(
        source="hub", hub_id=repo, hub_config="iwslt2017-de-en", src_lang="en", tgt_lang="fr"
    )
    with pytest.raises(
        HubDataError, match=r"languages 'en' -> 'fr' .* not in the data; valid choices: de, en"
    ):
        reverse.setup()


def test_translation_tsv_files_and_errors(tmp_path, fast):
    train = tmp_path / "train.tsv"
    train.write_text("".join(f"{de}\t{en}\n" for de, en in PAIRS * 40))
    test = tmp_path / "test.tsv"
    test.write_text("".join(f"{de}\t{en}\n" for de, en in PAIRS))
    assert read_tsv(test)[1] == ("das Haus ist rot .", "the house is red .")
    (tmp_path / "bad.tsv").write_text("ein Haus\ta house\nno tab here\n")
    with pytest.raises(DataError, match=r"bad.tsv:2: expected 'source<TAB>target'"):
        read_tsv(tmp_path / "bad.tsv")
    with pytest.raises(ConfigError, match=r"task.datamodule.test is required: set it on the command line"):
        load(["task=translation_files"])
    with pytest.raises(ConfigError, match=r"task.datamodule.test=.*nope.tsv: no such file"):
        load(
            [
                "task=translation_files",
                f"task.datamodule.train={train}",
                f"task.datamodule.test={tmp_path}/nope.tsv",
            ]
        )

    overrides = [a for a in fast if not a.startswith(("task.", "trainer.max_epochs"))]
    record, exc = run(
        load(
            [
                *overrides,
                "task=translation_files",
                f"task.datamodule.train={train}",
                f"task.datamodule.test={test}",
                "task.datamodule.min_count=1",
                "task.datamodule.max_len=8",
                "task.datamodule.batch_size=16",
                "trainer.max_epochs=12",
            ]
        )
    )
    assert exc is None, exc
    m = record["metrics"]
    assert m["test/examples"] == 4 and m["test/bleu"] > 90, m  # memorised pairs, scored on the raw text


# -- fortunes (Debian's `fortunes` package format) ----------------------------------------------------


def _fortune_dir(root, per_class: int = 30):
    root.mkdir()
    topics = {
        "computers": "the program crashed and the compiler",
        "politics": "the senate voted and the president",
    }
    for name, words in topics.items():
        entries = [f"{words} case {i}\n\t\t-- Someone {i}" for i in range(per_class)] + ["Shared quotation."]
        (root / name).write_text("\n%\n".join(entries) + "\n%\n")
        (root / f"{name}.dat").write_bytes(b"\x00")  # strfile index, ignored
    return root


def test_fortunes_format_split_and_dedup(tmp_path, fast):
    from attn.datamodules.fortunes import FortuneDataModule, read_fortunes

    root = _fortune_dir(tmp_path / "fortunes")
    assert read_fortunes(root / "computers")[0] == "the program crashed and the compiler case 0 -- Someone 0"
    dm = FortuneDataModule(path=str(root), categories=["computers", "politics"], min_count=1, seed=1)
    dm.setup()
    sizes = [len(dm.splits[s]) for s in ("train", "val", "test")]
    assert sizes == [42, 6, 12]  # 30 per topic after dropping the shared quotation: 21 / 3 / 6 each
    texts = {s: {" ".join(t) for t, _ in dm.splits[s]} for s in dm.splits}
    assert not (texts["train"] & texts["test"] or texts["train"] & texts["val"])
    assert "shared quotation ." not in texts["train"] | texts["test"]
    with pytest.raises(
        ConfigError, match=r"categories: 'love' is not a fortune file in .*valid choices: computers, politics"
    ):
        load(["task=fortunes", f"task.datamodule.path={root}", "task.datamodule.categories=[love]"])
    with pytest.raises(
        ConfigError, match=r"no such directory; install the quotations with `sudo apt-get install fortunes`"
    ):
        load(["task=fortunes", f"task.datamodule.path={tmp_path / 'none'}"])
    overrides = [a for a in fast if not a.startswith("task.")]
    _, exc = run(
        load(
            [
                *overrides,
                "task=fortunes",
                f"task.datamodule.path={root}",
                "task.datamodule.categories=[computers,politics]",
                "task.datamodule.min_count=1",
                "debug=fast_dev_run",
            ]
        )
    )
    assert exc is None, exc


def test_a_huge_line_is_refused_with_bounded_memory(tmp_path):
    """A line of hundreds of MB once took 18 GB to read (issue 25): lines are read one at a time, and
    one longer than the reader's bound is one error naming the file and line."""
    import tracemalloc

    from attn.datamodules.textfile import MAX_LINE_BYTES

    path = tmp_path / "train.tsv"
    with path.open("w") as f:
        f.write("pos\tfine words\n")
        f.write("neg\t" + "word " * (MAX_LINE_BYTES // 5 + 10) + "\n")
    tracemalloc.start()
    with pytest.raises(DataError, match=r"train\.tsv:2: a line longer than 16 MiB; split or shorten it"):
        read_examples(path)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 3 * MAX_LINE_BYTES, peak
