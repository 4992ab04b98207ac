"""Reading Hugging Face data sets (``datasets.load_dataset``): from the hub when online, from the local
``datasets`` cache or a local copy of a hub repository otherwise. Every failure is one line."""

from __future__ import annotations

from typing import Any


class HubDataError(ValueError):
    """A hub data set that cannot be read or used; the message names it."""


def load_split(hub_id: str, config: str | None, split: str, revision: str | None = None) -> Any:
    """One split of a hub data set (``hub_id`` may also be a local directory laid out as a hub repo)."""
    try:
        import datasets
    except ImportError:
        raise HubDataError(
            f"reading {hub_id!r} needs the `datasets` package: pip install 'attn[hub]'"
        ) from None
    try:
        return datasets.load_dataset(hub_id, config, split=split, revision=revision)
    except Exception as e:  # offline without a cache, unknown id or split, ...: the cause in one line
        cause = (str(e).strip().splitlines() or [type(e).__name__])[0]
        where = f"{hub_id!r}" + (f" config {config!r}" if config else "") + f" split {split!r}"
        raise HubDataError(f"hub data set {where}: {cause}") from None


def label_names(ds: Any, column: str) -> list[str] | None:
    """Class names of a ``ClassLabel`` column, else ``None``."""
    if column not in ds.column_names:
        raise HubDataError(f"no column {column!r}; columns: {', '.join(ds.column_names)}")
    return list(getattr(ds.features[column], "names", None) or []) or None
