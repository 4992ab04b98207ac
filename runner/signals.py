"""Stopping a run cleanly on a signal.

The first SIGINT or SIGTERM finishes the current batch, saves ``checkpoints/last.ckpt`` and ends the
run as ``interrupted`` (exit 130 / 143); a second one exits at once. SIGUSR1 and SIGUSR2 (a
scheduler's warning before a time limit or preemption) do the same; repeats of them are ignored. In a
DDP job every rank stops after the same batch, whichever rank got the signal.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

import lightning as L

from .checkpoints import RunPaused
from .machine import is_rank_zero, job_id, submitit_signal
from .records import RunRecord

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)  # save after this batch; the second one exits at once
WARNING_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2)  # a scheduler's warning: save after this batch, requeue


class RunInterrupted(Exception):
    """The run was stopped by a signal after saving its state."""

    def __init__(self, signum: int, step: int, saved: bool = True) -> None:
        self.signum, self.step, self.saved = signum, step, saved
        where = f"at step {step}" if saved else f"while testing, after step {step}"
        super().__init__(f"interrupted by {signal.Signals(signum).name} {where}")


class SignalStop(L.Callback):
    """A Lightning callback that turns the stop and warning signals into a clean stop (see the module
    docstring); ``record`` is written at once when a second stop signal exits."""

    def __init__(self, record: RunRecord) -> None:
        self.record = record
        self.signum: int | None = None
        self.previous: dict[int, Any] = {}

    def install(self) -> None:
        for sig in (*STOP_SIGNALS, *WARNING_SIGNALS):
            self.previous.setdefault(sig, signal.getsignal(sig))
            signal.signal(sig, self.handle)

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        self.previous = {}

    def handle(self, signum: int, _frame: Any) -> None:
        """The signal handler."""
        if self.record.finished:  # the record is written: nothing is left to save
            os._exit(128 + signum)
        if signum in WARNING_SIGNALS and self.signum is not None:
            return  # a repeated warning (SLURM signals every process of the job, submitit forwards it)
        if signum in STOP_SIGNALS and self.signum in STOP_SIGNALS:  # the second stop: exit at once
            name = signal.Signals(signum).name
            self.record.finish("interrupted", f"{name} twice: exited at once", 128 + signum)
            os._exit(128 + signum)
        first = self.signum is None
        self.signum = signum
        name = signal.Signals(signum).name
        if first and is_rank_zero():  # one line per job, not one per DDP rank
            again = "SIGINT or SIGTERM" if signum in WARNING_SIGNALS else name
            print(
                f"\nattn: {name} received; stopping after this batch ({again} again exits at once)",
                file=sys.stderr,
                flush=True,
            )

    # Lightning registers its own SIGTERM handler when a stage starts; ours replaces it there.
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.install()

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.install()

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        stop = self.signum is not None
        if trainer.world_size > 1:  # every rank stops after the same batch, whichever got the signal
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
        if stop and self.signum is None:  # another rank was signalled
            self.signum = signal.SIGTERM
        # On an epoch's last batch the stop waits one batch: saved now, the epoch would count as done and a
        # resume would skip its validation (the epoch's row in metrics.csv, its best checkpoint).
        if stop and not trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            self.stop(trainer, save=True)

    # A signal during validation inside fit waits for the next training batch, so that the
    # checkpoint holds a consistent loop state; during the final test there is nothing to save.
    def on_test_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if self.signum is not None:
            self.stop(trainer, save=False)

    def stop(self, trainer: L.Trainer, save: bool) -> None:
        assert self.signum is not None
        if save:  # mid-epoch state: model, optimiser, schedule, loop progress, loader position
            trainer.save_checkpoint(Path(trainer.default_root_dir) / "checkpoints" / "last.ckpt")
        raise RunInterrupted(self.signum, trainer.global_step, saved=save)


def exit_code(status: str, exc: BaseException | None) -> int:
    """The process exit code for a finished run: 0 (completed, or paused by ``trainer.pause_at``), 1
    (failed), 130 (SIGINT) or 143 (SIGTERM)."""
    if status == "completed" or isinstance(exc, RunPaused):
        return 0
    if status == "interrupted":
        return 128 + exc.signum if isinstance(exc, RunInterrupted) else 130
    return 1


def job_to_requeue(exc: BaseException | None) -> str | None:
    """The SLURM job to requeue after a run that a scheduler's warning signal stopped (and that saved its
    state): this job, on rank 0, unless the signal was submitit's own (submitit requeues then)."""
    if not (isinstance(exc, RunInterrupted) and exc.signum in WARNING_SIGNALS and exc.saved):
        return None
    if not is_rank_zero() or exc.signum == submitit_signal():
        return None
    return job_id()
