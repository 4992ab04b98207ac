"""ListOps (Nangia & Bowman 2018) as Long Range Arena generates it (Tay et al. 2021,
``lra_benchmarks/data/listops.py``): nested lists of digits under the operators MIN, MAX, MED (the median,
rounded down) and SM (the sum mod 10); the label is the expression's value, 10 classes.

A tree follows LRA's rules: below ``max_depth`` a node is an operator with probability 0.25 (else a digit
0-9), an operator takes 2 to ``max_args`` arguments, and expressions are drawn until their length in tokens
lies in ``[min_length, max_length]``. The text keeps the brackets as tokens: each operator opens with its
own token (``[MAX``) and closes with ``]``, for example ``[MAX 2 9 [MIN 4 7 ] 0 ]`` -> 9. Without the
closing brackets an expression is ambiguous (``[MAX 2 [MIN 4 7 0`` does not say where MIN ends) and the
task cannot be solved: LRA's released input pipeline dropped them at first (LRA issues #6 and #14), and
its fix renames them. LRA's text also writes ``( )`` around every step of its tuple nesting; they carry
nothing the brackets do not, its pipeline deletes them, and they are not written here (lengths count the
tokens above, as LRA's generator counts them).

Generated offline, deterministic by seed, with splits disjoint (a validation or test expression equal to
one of an earlier split is drawn again).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import torch
from torch.utils.data import TensorDataset

from .base import TokenClassificationDataModule, check_sizes

OPERATORS = ("[MIN", "[MAX", "[MED", "[SM")
END = "]"
DIGITS = tuple(str(d) for d in range(10))
VALUE_P = 0.25  # LRA: a node below the depth limit is a digit when random() > VALUE_P


class _TooLong(Exception):
    """An expression grew past the longest one wanted (it would be rejected: stop drawing it)."""


def generate_tree(
    rng: random.Random, max_depth: int, max_args: int, limit: int | None = None
) -> list[str] | None:
    """One expression's tokens by LRA's rules (its random draws in LRA's order: the node's coin, then a
    digit, or the argument count, the arguments and the operator); ``None`` as soon as it has more than
    ``limit`` tokens (rejection sampling would discard it: the accepted ones keep LRA's distribution)."""
    out: list[str] = []

    def node(depth: int) -> None:
        r = rng.random() if depth < max_depth else 1.0
        if r > VALUE_P:
            out.append(str(rng.choice(range(10))))
        else:
            start = len(out)
            out.append("")  # the operator, drawn after its arguments
            for _ in range(rng.randint(2, max_args)):
                node(depth + 1)
            out[start] = rng.choice(OPERATORS)
            out.append(END)
        if limit is not None and len(out) > limit:
            raise _TooLong

    try:
        node(1)
    except _TooLong:
        return None
    return out


def evaluate(tokens: list[str]) -> int:
    """The value of an expression in tokens (a stack of open operators and their arguments)."""
    stack: list[tuple[str, list[int]]] = [("", [])]
    for tok in tokens:
        if tok in OPERATORS:
            stack.append((tok, []))
        elif tok == END:
            op, args = stack.pop()
            stack[-1][1].append(_apply(op, args))
        else:
            stack[-1][1].append(int(tok))
    if len(stack) != 1 or len(stack[0][1]) != 1:
        raise ValueError(f"not one expression: {' '.join(tokens)!r}")
    return stack[0][1][0]


def _apply(op: str, args: list[int]) -> int:
    if op == "[MIN":
        return min(args)
    if op == "[MAX":
        return max(args)
    if op == "[SM":
        return sum(args) % 10
    ordered = sorted(args)  # [MED: numpy's median (the mean of the middle two), then int() as LRA does
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) // 2


def longest(max_depth: int, max_args: int, depth: int = 1) -> int:
    """The most tokens an expression can have: every node above the depth limit an operator with
    ``max_args`` arguments."""
    return 1 if depth >= max_depth else 2 + max_args * longest(max_depth, max_args, depth + 1)


class ListOpsDataModule(TokenClassificationDataModule):
    """ListOps expressions (tokens) and their values (classes ``0`` .. ``9``), read by the text classifier."""

    GENERATED = True  # its data follow from its config alone (a cached baseline of it stays right)
    TRIES = 2000  # draws per wanted expression before a length range is declared out of practical reach

    def __init__(
        self,
        n_train: int = 20000,
        n_val: int = 1000,
        n_test: int = 2000,
        min_length: int = 10,
        max_length: int = 60,
        max_depth: int = 10,
        max_args: int = 10,
        max_len: int = 64,
        batch_size: int = 64,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        self.check_config("task.datamodule", dict(locals()))
        self.n_train, self.n_val, self.n_test = n_train, n_val, n_test
        self.min_length, self.max_length = min_length, max_length
        self.max_depth, self.max_args = max_depth, max_args
        self.max_len, self.batch_size, self.seed, self.num_workers = max_len, batch_size, seed, num_workers
        self.labels = list(DIGITS)
        self.vocab = None
        self.splits: dict[str, list[tuple[list[str], int]]] = {}
        self.datasets: dict[str, TensorDataset] = {}

    @staticmethod
    def check_config(path: str, node: dict[str, Any]) -> None:
        """Sizes >= 1, ``max_args`` >= 2, and a length range the depth and arguments can reach that fits
        ``max_len``; ``ValueError`` (one line) names the bad value."""
        sizes = {
            k: node.get(k, 1) for k in ("n_train", "n_val", "n_test", "min_length", "max_depth", "max_len")
        }
        check_sizes(path, sizes)
        check_sizes(path, {"max_args": node.get("max_args", 2)}, low=2)
        low, high = node.get("min_length", 10), node.get("max_length", 60)
        check_sizes(path, {"max_length": high}, low=low)
        reach = longest(node.get("max_depth", 10), node.get("max_args", 10))
        if low > reach:
            raise ValueError(
                f"{path}.min_length={low} is out of reach: with max_depth={node.get('max_depth', 10)} and"
                f" max_args={node.get('max_args', 10)} an expression has at most {reach} tokens"
            )
        if high > node.get("max_len", 64):
            raise ValueError(
                f"{path}.max_length={high} is more than {path}.max_len={node.get('max_len', 64)}:"
                " raise max_len"
            )

    def draw(self, n: int, stream: int, seen: set[str]) -> list[tuple[list[str], int]]:
        """``n`` expressions of ``stream`` with lengths in range, none in ``seen`` (which they join)."""
        rng = random.Random(f"listops:{self.seed}:{stream}")  # seeded by a string: the same in every process
        out: list[tuple[list[str], int]] = []
        for _ in range(self.TRIES * n):
            tokens = generate_tree(rng, self.max_depth, self.max_args, self.max_length)
            if tokens is None or len(tokens) < self.min_length:
                continue
            text = " ".join(tokens)
            if text not in seen:
                seen.add(text)
                out.append((tokens, evaluate(tokens)))
                if len(out) == n:
                    return out
        raise ValueError(
            f"task.datamodule: drew {len(out)} of {n} ListOps expressions with"
            f" {self.min_length}-{self.max_length} tokens in {self.TRIES * n} tries"
            f" (max_depth={self.max_depth}, max_args={self.max_args}): widen the length range"
        )

    def prepare_splits(self) -> None:
        """Generate the three splits (idempotent), disjoint, and the vocabulary of the training split."""
        if self.splits:
            return
        seen: set[str] = set()
        self.splits = {
            name: self.draw(n, stream, seen)
            for stream, (name, n) in enumerate(
                (("train", self.n_train), ("val", self.n_val), ("test", self.n_test))
            )
        }
        self.vocab = self.vocabulary([t for t, _ in self.splits["train"]])
        self.datasets = {name: self._encode(rows) for name, rows in self.splits.items()}

    def _encode(self, rows: list[tuple[list[str], int]]) -> TensorDataset:
        rows = self.as_pieces(rows, self.max_len)
        ids = torch.zeros(len(rows), self.max_len, dtype=torch.long)
        for i, (tokens, _) in enumerate(rows):
            ids[i, : len(tokens)] = torch.tensor(self.vocab.encode(tokens))
        return TensorDataset(ids, torch.tensor([label for _, label in rows]))

    @property
    def prediction_text(self) -> Callable[[list[int]], str]:
        """An example's ids as its expression (the test predictions show it beside label and prediction)."""
        self.prepare_splits()
        vocab = self.vocab
        return lambda ids: " ".join(vocab.decode([i for i in ids if i != 0]))
