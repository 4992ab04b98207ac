"""The engine behind the ``attn`` commands: configs, runs, sweeps, reports.

Its modules import downward only (``tests/test_layers.py`` checks it), in these layers:

1. ``paths``, ``errors``, ``machine``, ``provenance``, ``records``: where things are, the machine and job,
   and the record store (``results.json``, ``sweep.json``, ``metrics.csv``);
2. ``plugins``, ``schema``, ``config``: the user's plugins, composing and validating the config; ``stats``:
   the report's statistics; ``tune``: a tuned sweep's arms, phases and selection;
3. ``threads``: the CPU thread policy; ``checkpoints``; ``collect``: reading runs for the report;
   ``optuna_search``: a tuning phase searched by Optuna;
4. ``signals``, ``resume``, ``aggregate``, ``plots``;
5. ``run``, ``slurm``, ``figures``;
6. ``bench``, ``sweep``, ``report``.

Below the engine lie ``attn.models`` and, below them, ``attn.datamodules``; above it, the commands in
``attn.cli``.
"""
