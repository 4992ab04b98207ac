"""Diagnostic sequence tasks that tell attention kinds apart, generated on the fly and deterministic by seed.

Each example is a token sequence ``ids [L]`` with targets ``[L]``: the token a causal model must
predict at that position, or ``IGNORE`` (-100) where nothing is asked. Token 0 is padding.

* :class:`MQARDataModule` — multi-query associative recall (Arora et al., 2023, "Zoology"):
  ``k1 v1 k2 v2 ... kN vN`` then the keys again in a random order; at each repeated key, predict the
  value it was bound to. Length = ``N`` pairs. Chance ``1 / values``.
* :class:`MaxRetrievalDataModule` — retrieve the class of the item with the largest priority from a set
  of ``n`` items (after Veličković et al., 2024, "softmax is not enough"): each item is one token
  carrying a priority (1..``priorities``) and a class; after the items, a query token asks for the class
  of the highest-priority item. Length = ``n`` items. Chance ``1 / classes``.
* :class:`SelectiveCopyDataModule` — selective copying (Gu & Dao, 2023, "Mamba"): ``M`` distinct data
  tokens at random positions in a span of blank tokens, then a separator; the model must reproduce the
  data tokens in their order (teacher-forced: at the separator predict the first, at each copied
  token the next). Length = the span of the noise (``span``). Chance ``1 / data_tokens``.

Every task trains at one length and can be tested at others (``task.eval_lengths``). The three splits
are generated from independent streams of the seed and made disjoint: a validation or test sequence
equal to a training sequence is drawn again.
"""

from __future__ import annotations

import zlib
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import TensorDataset

from .base import SplitDataModule, check_sizes

IGNORE = -100


def _key(row: Tensor) -> bytes:
    """A sequence as a hashable key."""
    return row.numpy().astype("int32").tobytes()


def _rows(ids: Tensor) -> set[bytes]:
    return {_key(r) for r in ids}


class SequenceTaskDataModule(SplitDataModule):
    """Generated sequences with per-position targets; subclasses define the vocabulary and
    :meth:`generate` (``n`` examples at one length) and say what their length counts."""

    GENERATED = True  # its data follow from its config alone (a cached baseline of it stays right)

    length_name = "length"
    vocab_size: int
    chance: float

    def __init__(
        self,
        *,
        length: int,
        n_train: int = 16000,
        n_val: int = 1000,
        n_test: int = 2000,
        max_len: int = 128,
        eval_lengths: list[int] | None = None,
        batch_size: int = 64,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.length, self.n_train, self.n_val, self.n_test = length, n_train, n_val, n_test
        self.max_len, self.eval_lengths = max_len, list(eval_lengths or [])
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed
        self.datasets: dict[str, TensorDataset] = {}
        self.check(self.__dict__)

    # ------------------------------------------------------------------ what subclasses define

    def tokens(self, length: int) -> int:
        """Sequence length in tokens of an example at ``length``."""
        raise NotImplementedError

    def valid_lengths(self) -> tuple[int, int]:
        """The smallest and largest ``length`` the task's vocabulary allows."""
        raise NotImplementedError

    def limit(self) -> str:
        """Why ``length`` has the upper bound it has (said with a length out of range), or ''."""
        return ""

    def generate(self, n: int, length: int, g: torch.Generator) -> tuple[Tensor, Tensor]:
        """``n`` examples at ``length``: ids ``[n, tokens]`` and targets ``[n, tokens]``."""
        raise NotImplementedError

    # ------------------------------------------------------------------ shared

    def check(self, params: dict[str, Any], path: str = "task.datamodule") -> None:
        """Raise ``ValueError`` (one line) unless every length fits the vocabulary and ``max_len``."""
        low, high = self.valid_lengths()
        name = self.length_name
        for where, value in [(f"{path}.{name}", params["length"])] + [
            ("task.eval_lengths", v) for v in params.get("eval_lengths") or []
        ]:
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                why = f": {self.limit()}" if self.limit() else ""
                raise ValueError(
                    f"{where}={value!r} is invalid: {name} must be an integer in [{low}, {high}]{why}"
                )
            if self.tokens(value) > params["max_len"]:
                raise ValueError(
                    f"{where}={value} needs sequences of {self.tokens(value)} tokens, more than"
                    f" {path}.max_len={params['max_len']}: raise max_len"
                )
        check_sizes(path, {key: params[key] for key in ("n_train", "n_val", "n_test")})

    @classmethod
    def check_config(cls, path: str, params: dict[str, Any]) -> None:
        """Config-time check of the settings (called by attn's config validation)."""
        params = {k: v for k, v in params.items() if k != "_target_"}
        cls(**params)

    def _generator(self, *salt: int) -> torch.Generator:
        g = torch.Generator()  # crc32, not hash(): string hashes differ between processes
        g.manual_seed(zlib.crc32(repr((self.seed, type(self).__name__, *salt)).encode()))
        return g

    def _draw(self, n: int, length: int, salt: int, exclude: set[bytes]) -> TensorDataset:
        """``n`` examples none of which is in ``exclude`` (drawn again until they are not)."""
        g = self._generator(salt, length)
        ids, targets = self.generate(n, length, g)
        for _ in range(100):
            clash = torch.tensor([_key(r) in exclude for r in ids])
            if not clash.any():
                break
            again_ids, again_targets = self.generate(int(clash.sum()), length, g)
            ids[clash], targets[clash] = again_ids, again_targets
        else:
            raise RuntimeError(f"cannot draw {n} sequences outside the training split at {length}")
        return TensorDataset(ids, targets)

    def prepare_splits(self) -> None:
        if self.datasets:
            return
        train = self._draw(self.n_train, self.length, 0, set())
        seen = _rows(train.tensors[0])
        self.datasets = {
            "train": train,
            "val": self._draw(self.n_val, self.length, 1, seen),
            "test": self._draw(self.n_test, self.length, 2, seen),
        }

    def at_length(self, length: int) -> TensorDataset:
        """``n_test`` test examples at ``length`` (none equal to a training sequence)."""
        self.prepare_splits()
        if length == self.length:
            return self.datasets["test"]
        return self._draw(self.n_test, length, 2, _rows(self.datasets["train"].tensors[0]))

    @property
    def train_tokens(self) -> int:
        """The length in tokens of the training sequences (the length ``logn``/``ssmax`` scale from)."""
        return self.tokens(self.length)

    def module_kwargs(self) -> dict[str, Any]:
        """What the sequence module needs to know about the data."""
        return {"vocab_size": self.vocab_size, "chance": self.chance}

    def save(self, run_dir: str) -> None:
        """Nothing to save: the data is regenerated from the seed."""


def _random_order(n: int, k: int, g: torch.Generator, first: int | None = None) -> Tensor:
    """``[n, first]``: the first ``first`` (default ``k``) entries of a random permutation of ``0 .. k-1`` per
    row (the ranks of uniform draws). Drawn in blocks of about 2**22 numbers (one draw of ``rand(n, k)``
    gives the same numbers), so Zoology's 4,096 keys for 100,000 sequences need no 1.6 GB table."""
    rows = max(1, 2**22 // k)
    first = k if first is None else first
    # the `first` smallest of each row in order: argsort's first `first`, 25x faster at k = 4096
    return torch.cat(
        [
            torch.rand(min(rows, n - i), k, generator=g).topk(first, dim=1, largest=False).indices
            for i in range(0, n, rows)
        ]
    )


class MQARDataModule(SequenceTaskDataModule):
    """Multi-query associative recall: ``pairs`` key-value pairs, then every key queried once; the target
    at each query is the value bound to its key. Tokens: keys ``1 .. keys``, values
    ``keys + 1 .. keys + values``; the keys of a sequence are distinct. Two generators:

    * ``generator="zoology"``, Zoology's (Arora et al. 2023, ``multiquery_ar``): values distinct too, and
      the queries placed in a region of ``2 * query_slots * pairs`` tokens at slots drawn without
      replacement from a power law (``p(s) ~ s^(power_a - 1)``, most queries near the pairs), every other
      position of the region a filler: a random token (``filler="random"``; Zoology draws it from the whole
      vocabulary, padding included; here from the real tokens) or token 0 (``filler="zero"``, Zoology's
      Figure 2, ``random_non_queries=False``; 0 is then an ordinary token, not padding). 8 tokens per pair
      by default (``query_slots=3``); Figure 2 reads 16 (``query_slots=7``: 64 tokens for 4 pairs).
      ``vocab_size`` splits a vocabulary as Zoology does: keys ``1 .. V/2 - 1``, values ``V/2 .. V - 1``
      (8,192: 4,095 keys and 4,096 values). Order-blind ceiling: 1/pairs (0.125 for 8): the values
      present are equally likely answers.
    * ``generator="attn"`` (the default, every number measured before this option): values drawn with
      replacement (36% of 8-pair sequences repeat one), the queries right after the pairs in random
      order, 3 tokens per pair. Order-blind ceiling: the expected largest count of a value over
      ``pairs``, 0.172 for 8 pairs of 64 values (a repeated value is the likelier answer).
    """

    length_name = "pairs"
    GENERATORS = ("attn", "zoology")
    FILLERS = ("random", "zero")

    def __init__(
        self,
        *,
        pairs: int = 8,
        keys: int = 64,
        values: int = 64,
        generator: str = "attn",
        query_slots: int = 3,
        power_a: float = 0.01,
        filler: str = "random",
        vocab_size: int | None = None,
        **kw: Any,
    ) -> None:
        if vocab_size is not None:
            check_sizes("task.datamodule", {"vocab_size": vocab_size}, low=4)
            keys, values = vocab_size // 2 - 1, vocab_size - vocab_size // 2  # Zoology's split
        check_sizes("task.datamodule", {"keys": keys, "values": values, "query_slots": query_slots})
        for name, value, choices in (
            ("generator", generator, self.GENERATORS),
            ("filler", filler, self.FILLERS),
        ):
            if value not in choices:
                raise ValueError(
                    f"task.datamodule.{name}={value!r} is unknown; valid choices: {', '.join(choices)}"
                )
        if isinstance(power_a, bool) or not isinstance(power_a, int | float) or not 0 < power_a <= 1:
            raise ValueError(
                f"task.datamodule.power_a={power_a!r} is invalid: must be in (0, 1] (1 = uniform)"
            )
        self.keys, self.values, self.generator, self.filler = keys, values, generator, filler
        self.query_slots, self.power_a = query_slots, float(power_a)
        self.vocab_size = 1 + keys + values
        self.chance = 1.0 / values
        super().__init__(length=pairs, **kw)

    def tokens(self, length: int) -> int:
        return 3 * length if self.generator == "attn" else (2 + 2 * self.query_slots) * length

    def valid_lengths(self) -> tuple[int, int]:
        return 1, self.keys if self.generator == "attn" else min(self.keys, self.values)

    def limit(self) -> str:
        distinct = "distinct keys" if self.generator == "attn" else "distinct keys and distinct values"
        return f"a sequence's pairs need {distinct} ({self.keys} keys, {self.values} values)"

    def module_kwargs(self) -> dict[str, Any]:
        zero = self.generator == "zoology" and self.filler == "zero"
        return {**super().module_kwargs(), **({"padding": False} if zero else {})}  # 0: a token, not padding

    def generate(self, n: int, length: int, g: torch.Generator) -> tuple[Tensor, Tensor]:
        keys = _random_order(n, self.keys, g, length) + 1
        if self.generator == "zoology":
            return self._zoology(keys, g)
        values = torch.randint(0, self.values, (n, length), generator=g) + 1 + self.keys
        order = _random_order(n, length, g)
        queries = keys.gather(1, order)
        answers = values.gather(1, order)
        ids = torch.cat([torch.stack([keys, values], dim=2).reshape(n, 2 * length), queries], dim=1)
        targets = torch.full_like(ids, IGNORE)
        targets[:, 2 * length :] = answers
        return ids, targets

    def _zoology(self, keys: Tensor, g: torch.Generator) -> tuple[Tensor, Tensor]:
        n, length = keys.shape
        values = _random_order(n, self.values, g, length) + 1 + self.keys
        space = self.query_slots * length
        p = self.power_a * torch.arange(1, space + 1, dtype=torch.float64) ** (self.power_a - 1)
        slots = torch.multinomial((p / p.sum()).expand(n, space), length, replacement=False, generator=g)
        if self.filler == "zero":
            region = torch.zeros(n, 2 * space, dtype=torch.long)
        else:
            region = torch.randint(1, self.vocab_size, (n, 2 * space), generator=g)  # any real token
        region.scatter_(1, 2 * slots, keys)  # key i is queried at slot slots[i]
        answers = torch.full_like(region, IGNORE)
        answers.scatter_(1, 2 * slots, values)
        pairs = torch.stack([keys, values], dim=2).reshape(n, 2 * length)
        ids = torch.cat([pairs, region], dim=1)
        targets = torch.cat([torch.full_like(pairs, IGNORE), answers], dim=1)
        return ids, targets


class MaxRetrievalDataModule(SequenceTaskDataModule):
    """The class of the highest-priority item of a set of ``items``.

    Tokens: item ``(priority p, class c)`` is ``1 + (p - 1) * classes + c`` for ``p`` in
    ``1 .. priorities``, ``c`` in ``0 .. classes-1``; then the query token; then one token per class
    (the answers). Priorities in a set are distinct, classes uniform, the order random.
    """

    length_name = "items"

    def __init__(self, *, items: int = 16, priorities: int = 128, classes: int = 4, **kw: Any) -> None:
        check_sizes("task.datamodule", {"priorities": priorities, "classes": classes})
        self.priorities, self.classes = priorities, classes
        self.query = 1 + priorities * classes
        self.vocab_size = self.query + 1 + classes
        self.chance = 1.0 / classes
        super().__init__(length=items, **kw)

    def tokens(self, length: int) -> int:
        return length + 1

    def valid_lengths(self) -> tuple[int, int]:
        return 1, self.priorities

    def generate(self, n: int, length: int, g: torch.Generator) -> tuple[Tensor, Tensor]:
        prio = _random_order(n, self.priorities, g)[:, :length]  # 0-based, distinct, random order
        cls = torch.randint(0, self.classes, (n, length), generator=g)
        items = 1 + prio * self.classes + cls
        best = cls.gather(1, prio.argmax(dim=1, keepdim=True)).squeeze(1)
        ids = torch.cat([items, torch.full((n, 1), self.query)], dim=1)
        targets = torch.full_like(ids, IGNORE)
        targets[:, -1] = self.query + 1 + best
        return ids, targets


class SelectiveCopyDataModule(SequenceTaskDataModule):
    """Copy the ``copies`` data tokens scattered in a span of ``span`` blanks, in order.

    Tokens: blank 1, separator 2, data ``3 .. 2 + data_tokens``. The data tokens of a sequence are
    distinct, so each has exactly one successor in the copy.
    """

    length_name = "span"

    def __init__(self, *, span: int = 32, copies: int = 8, data_tokens: int = 16, **kw: Any) -> None:
        check_sizes("task.datamodule", {"data_tokens": data_tokens, "copies": copies})
        self.copies, self.data_tokens = copies, data_tokens
        self.vocab_size = 3 + data_tokens
        self.chance = 1.0 / data_tokens
        if not 1 <= copies <= data_tokens:
            raise ValueError(f"copies={copies} is invalid: must be in [1, data_tokens={data_tokens}]")
        super().__init__(length=span, **kw)

    def tokens(self, length: int) -> int:
        return length + self.copies

    def valid_lengths(self) -> tuple[int, int]:
        return self.copies, 100_000

    def generate(self, n: int, length: int, g: torch.Generator) -> tuple[Tensor, Tensor]:
        m = self.copies
        data = _random_order(n, self.data_tokens, g)[:, :m] + 3
        where = _random_order(n, length, g)[:, :m].sort(dim=1).values
        span = torch.ones(n, length, dtype=torch.long)
        span.scatter_(1, where, data)
        ids = torch.cat([span, torch.full((n, 1), 2), data[:, :-1]], dim=1)
        targets = torch.full_like(ids, IGNORE)
        targets[:, length:] = data
        return ids, targets
