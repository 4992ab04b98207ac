"""Word-level against BPE and unigram tokenizers on a translation corpus: vocabulary, unknown-token rate,
sequence length, preparation time, and the BLEU of a model trained with each (by hand, not in CI).

    python benchmarks/subwords.py                                   # the generated numbers task
    python benchmarks/subwords.py --files data/catalogs --epochs 4  # your TSV corpus (translation_files)

Each model is trained by ``attn train`` in its own process, one after another, with the same seed and
settings; only ``task.tokenizer`` differs. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from attn.datamodules.subword import unknown_rate


def task_args(files: str | None) -> list[str]:
    if files is None:
        return ["task=translation"]
    return [
        "task=translation_files", f"task.datamodule.train={files}/train.tsv",
        f"task.datamodule.test={files}/test.tsv",
    ]  # fmt: skip


def data_stats(files: str | None, tokenizer: str, vocab_size: int, max_len: int) -> dict:
    """Vocabulary, <unk> rate and mean length of the test split, and the time to prepare the splits."""
    if files is None:
        from attn.datamodules.numbers import NumberTranslationDataModule

        dm = NumberTranslationDataModule(max_len=max_len)
    else:
        from attn.datamodules.parallel import ParallelTextDataModule

        dm = ParallelTextDataModule(train=f"{files}/train.tsv", test=f"{files}/test.tsv", max_len=max_len)
    dm.set_tokenizer(tokenizer, vocab_size)
    t0 = time.perf_counter()
    dm.prepare_splits()
    seconds = time.perf_counter() - t0
    src, tgt = dm.datasets["test"].tensors[:2]
    return {
        "vocab": f"{len(dm.src_vocab)}/{len(dm.tgt_vocab)}",
        "unk_src": unknown_rate(src.tolist()),
        "unk_tgt": unknown_rate(tgt.tolist()),
        "len_src": float((src != 0).sum(1).float().mean()),
        "prepare_s": seconds,
    }


def train(files: str | None, tokenizer: str, vocab_size: int, epochs: int, max_len: int, out: Path) -> dict:
    run_dir = out / f"{'numbers' if files is None else Path(files).name}-{tokenizer}"
    cmd = [
        sys.executable, "-m", "attn.cli.main", "train", *task_args(files), f"task.tokenizer={tokenizer}",
        f"task.vocab_size={vocab_size}", f"task.datamodule.max_len={max_len}", f"model.max_len={max_len}",
        f"trainer.max_epochs={epochs}", "logger=csv", "trainer.enable_progress_bar=false", "baseline=false",
    ]  # fmt: skip
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env={**__import__("os").environ, "ATTN_RUN_DIR": str(run_dir)},
                          capture_output=True, text=True)  # fmt: skip
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        return {"bleu": float("nan"), "chrf": float("nan"), "train_s": wall, "error": done.stderr[-300:]}
    metrics = json.loads((run_dir / "results.json").read_text())["metrics"]
    return {"bleu": metrics["test/bleu"], "chrf": metrics["test/chrf"], "train_s": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", default=None, help="directory with train.tsv and test.tsv")
    parser.add_argument("--vocab-size", type=int, default=4000)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--max-len", type=int, default=24)
    parser.add_argument("--out", default="runs/subwords")
    parser.add_argument("--no-train", action="store_true", help="data statistics only")
    args = parser.parse_args()
    out = Path(args.out).resolve()
    print(
        "| tokenizer | vocab (src/tgt) | test <unk> src | test <unk> tgt | test src length | prepare s"
        " | BLEU | chrF | train wall s |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for tokenizer in ("word", "bpe", "unigram"):
        s = data_stats(args.files, tokenizer, args.vocab_size, args.max_len)
        t = {"bleu": float("nan"), "chrf": float("nan"), "train_s": float("nan")}
        if not args.no_train:
            t = train(args.files, tokenizer, args.vocab_size, args.epochs, args.max_len, out)
        print(
            f"| {tokenizer} | {s['vocab']} | {s['unk_src']:.2%} | {s['unk_tgt']:.2%} | {s['len_src']:.1f}"
            f" | {s['prepare_s']:.1f} | {t['bleu']:.1f} | {t['chrf']:.1f} | {t['train_s']:.0f} |",
            flush=True,
        )
        if "error" in t:
            print(f"  {tokenizer}: {t['error']}", flush=True)


if __name__ == "__main__":
    main()
