"""Atomic file writes: the one way attn puts a file on disk.

A file is written to a temporary file beside its destination, flushed to disk and renamed over the
destination, so that a reader (or a crash) never sees half a file; the temporary file is removed
when the write fails. It lives in the bottom layer because the data modules write files too (the
vocabulary, the speech feature cache); the engine's record store writes through it as well.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], object]) -> Path:
    """Write ``path`` by calling ``write`` on a binary file object, atomically.

    The file gets the mode of any file this process creates (0644 under the usual umask), not the
    temporary file's 0600.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def write_json_atomic(path: str | Path, data: Any, indent: int | None = 2) -> Path:
    """Write ``data`` as JSON (non-JSON values as strings) to ``path`` atomically."""
    return write_text_atomic(path, json.dumps(data, indent=indent, default=str) + "\n")


def cache_root(cache_dir: str | None = None) -> Path:
    """Where attn keeps what it computes once and reuses (speech features, order-blind baselines):
    ``cache_dir``, else ``$ATTN_CACHE_DIR``, else ``~/.cache/attn``."""
    return Path(cache_dir or os.environ.get("ATTN_CACHE_DIR") or Path.home() / ".cache" / "attn")
