"""The ``attn`` command line: ``train``, ``sweep``, ``report``."""
