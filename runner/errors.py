"""The errors the commands turn into one line for the user."""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration (or command-line input) the run cannot use; the message is one line for the user
    (``attn`` exits 2)."""


class RunDirBusy(RuntimeError):
    """Another live process holds the lock of a run (or sweep) directory."""
