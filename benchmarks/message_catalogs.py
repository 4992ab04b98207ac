"""Real English -> German parallel text from the message catalogs installed on this machine.

Debian ships translated user-interface strings of its programs as gettext catalogs
(``/usr/share/locale/<lang>/LC_MESSAGES/*.mo``): each English message and its human translation. This
script writes them as ``source<TAB>target`` files for ``task=translation_files`` (a corpus with a long
tail of rare words, where subword tokenizers matter), with a seeded train/test split by message.
What it finds depends on the packages installed; it prints the counts.

    python benchmarks/message_catalogs.py --out data/catalogs --lang de
"""

from __future__ import annotations

import argparse
import gettext
import glob
import random
import re
from pathlib import Path

FORMAT = re.compile(r"%[-+ #0-9.*lhjztL]*[a-zA-Z%]|\$\{?\w+\}?|\{\w*\}")


def pairs(lang: str) -> list[tuple[str, str]]:
    """(English, translation) of every single-line message of 3-30 words without format directives."""
    found: dict[str, str] = {}
    for path in sorted(glob.glob(f"/usr/share/locale/{lang}/LC_MESSAGES/*.mo")):
        try:
            with open(path, "rb") as f:
                catalog = gettext.GNUTranslations(f)._catalog
        except (OSError, UnicodeDecodeError):  # a catalog in another encoding: skipped
            continue
        for src, tgt in catalog.items():
            if not isinstance(src, str) or not isinstance(tgt, str) or not src or not tgt:
                continue
            if "\n" in src or "\n" in tgt or "\t" in src or "\t" in tgt or FORMAT.search(src + tgt):
                continue
            if 3 <= len(src.split()) <= 30 and 2 <= len(tgt.split()) <= 40:
                found.setdefault(src.strip(), tgt.strip())
    return sorted(found.items())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="data/catalogs")
    parser.add_argument("--lang", default="de")
    parser.add_argument("--test", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rows = pairs(args.lang)
    random.Random(args.seed).shuffle(rows)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    test, train = rows[: args.test], rows[args.test :]
    for name, part in (("train", train), ("test", test)):
        (out / f"{name}.tsv").write_text("".join(f"{s}\t{t}\n" for s, t in part), encoding="utf-8")
    print(f"{len(train)} train and {len(test)} test pairs (en -> {args.lang}) in {out}")


if __name__ == "__main__":
    main()
