"""attn: an experiment runner for research on attention mechanisms and the softmax.

The repository root is this package: the attention math lives in ``attn.models``, the data in
``attn.datamodules``, the configuration in ``attn/conf`` and the commands in ``attn.cli``.
Importing ``attn`` is cheap; torch and Lightning load only where they are used.
"""

__version__ = "0.1.0"
