"""SLURM: the sweep's launcher on a cluster, and what a job asks of its scheduler.

:class:`AttnSlurmLauncher` is hydra-submitit-launcher's ``SlurmLauncher`` (one array job per sweep
session, one task per trial; ``hydra.launcher.*`` settings as documented there) with its own wait: the
sweep follows its jobs in ``squeue``/``sacct`` instead of waiting for result files, so that

* a job cancelled while pending, or killed without a word, ends its trial (``cancelled`` / ``failed``)
  instead of keeping the sweep waiting for a result that never comes;
* a requeued job (``scontrol requeue``, preemption, submitit's time-out requeue) is waited for again,
  its trial shown as ``requeued``, not ``interrupted``;
* ``attn sweep --resume`` adopts the trials whose job is still queued or running instead of submitting
  them a second time (the job ids are kept in ``sweep.json``).

Hydra instantiates launchers only from its plugin registry under ``hydra_plugins.``; an editable install
cannot add to that namespace, so :func:`register_launcher` registers the class under the name that
``conf/hydra/launcher/slurm.yaml`` gives as its ``_target_``.
"""

from __future__ import annotations

import contextlib
import getpass
import io
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher

from .machine import submitit_signal
from .records import locked_manifest, read_manifest

PLUGIN_NAME = "hydra_plugins.attn.AttnSlurmLauncher"  # the _target_ in conf/hydra/launcher/slurm.yaml
POLL_ENV = "ATTN_SLURM_POLL_S"  # seconds between two looks at the queue (default 10)
# Job states in which the job may still run (again): the sweep keeps waiting.
LIVE = {
    "PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED", "REQUEUE_FED",
    "REQUEUE_HOLD", "RESIZING", "SIGNALING", "STAGE_OUT", "SPECIAL_EXIT", "RESV_DEL_HOLD", "STOPPED",
}  # fmt: skip
WAITING = {"PENDING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "SPECIAL_EXIT", "CONFIGURING"}


def register_launcher() -> None:
    """Make :class:`AttnSlurmLauncher` instantiable by Hydra as ``PLUGIN_NAME``."""
    from hydra.core.plugins import Plugins

    Plugins.instance().class_name_to_class[PLUGIN_NAME] = AttnSlurmLauncher


def _run(cmd: list[str]) -> str | None:
    """The output of a SLURM client command; None when it fails or does not answer in 60 s."""
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout if out.returncode == 0 else None


def queue_states() -> dict[str, str] | None:
    """``{job id: state}`` of this user's jobs in the queue, array tasks one by one (``123_4``);
    None when ``squeue`` does not answer (then nothing may be concluded from a job's absence)."""
    out = _run(["squeue", "-h", "-r", "-u", getpass.getuser(), "-o", "%i|%T"])
    if out is None:
        return None
    states = {}
    for line in out.splitlines():
        job, _, state = line.strip().partition("|")
        if job:
            states[job] = state.strip()
    return states


def final_state(job_id: str) -> str:
    """The state of a job that has left the queue (``CANCELLED``, ``COMPLETED``, ...): from the controller
    while it still knows the job (``scontrol``; the accounting may lag by seconds), else from ``sacct``;
    ``GONE`` when neither has a record. An array task cancelled while still pending may have no accounting
    record of its own: it is found in its array's remainder record (``12_[2-5%4]``)."""
    shown = re.search(r"\bJobState=(\w+)", _run(["scontrol", "show", "job", "-o", job_id]) or "")
    if shown:
        return shown.group(1)
    array, _, task = job_id.partition("_")
    out = _run(["sacct", "-n", "-P", "-X", "-o", "JobID,State", "-j", array if task else job_id]) or ""
    remainder = None
    for line in out.splitlines():
        job, _, state = line.partition("|")
        if not state.strip():
            continue
        if job == job_id:
            return state.split()[0]
        if task and job.startswith(f"{array}_[") and _in_array_spec(task, job[len(array) + 2 : -1]):
            remainder = state.split()[0]
    return remainder or "GONE"


def _in_array_spec(task: str, spec: str) -> bool:
    """Whether array task ``task`` is in a SLURM array spec such as ``0-7%2``, ``1,3-5`` or ``0-9:3``."""
    try:
        n = int(task)
        for part in spec.split("%")[0].split(","):
            bounds, _, step = part.partition(":")
            lo, _, hi = bounds.partition("-")
            first, last = int(lo), int(hi or lo)
            if first <= n <= last and (n - first) % int(step or 1) == 0:
                return True
    except ValueError:
        return False
    return False


def _poll_seconds() -> float:
    try:
        return max(0.5, float(os.environ.get(POLL_ENV, "10")))
    except ValueError:
        return 10.0


def _trial_of(overrides: Sequence[str]) -> str:
    return next(o.split("=", 1)[1] for o in overrides if o.startswith("trial="))


class AttnSlurmLauncher(SlurmLauncher):
    """hydra-submitit-launcher's SLURM launcher that follows its jobs in the queue (module docstring)."""

    def _executor(self) -> Any:
        import submitit
        from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
        from omegaconf import OmegaConf

        params = dict(self.params)
        init = {"folder": params.pop("submitit_folder")}
        if "max_num_timeout" in params:
            init["slurm_max_num_timeout"] = params.pop("max_num_timeout")
        executor = submitit.AutoExecutor(cluster="slurm", **init)
        base = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(**{k if k in base else f"slurm_{k}": v for k, v in params.items()})
        return executor

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[Any]:
        from hydra.core.singleton import Singleton
        from hydra.core.utils import JobReturn, JobStatus

        assert self.config is not None
        root = Path(str(self.config.sweep_dir))
        tids = [_trial_of(o) for o in job_overrides]
        with locked_manifest(root) as m:
            known = {str(t.number): t.extra.get("slurm_job") for t in m.trials}
        queue = queue_states()
        if queue is None:
            raise RuntimeError("squeue does not answer: is this a SLURM login node? (launcher=slurm)")
        # A trial whose job is still queued or running (a sweep stopped and resumed) is not submitted again.
        adopted = {tid: known[tid] for tid in tids if known.get(tid) and queue.get(known[tid]) in LIVE}
        submit = [(i, o) for i, o in enumerate(job_overrides) if tids[i] not in adopted]
        jobs: dict[str, str] = dict(adopted)
        if submit:
            state = Singleton.get_state()
            params = [
                (list(o), "hydra.sweep.dir", initial_job_idx + i, f"job_id_for_{initial_job_idx + i}", state)
                for i, o in submit
            ]
            try:
                with contextlib.redirect_stderr(io.StringIO()):  # submitit prints sbatch's error as well
                    submitted = self._executor().map_array(self, *zip(*params, strict=True))
            except Exception as e:  # sbatch refused (no such partition, too much memory, ...): none submitted
                return self._refused(root, e, job_overrides, tids, [tids[i] for i, _ in submit], adopted)
            jobs.update({tids[i]: job.job_id for (i, _), job in zip(submit, submitted, strict=True)})
            with locked_manifest(root) as m:
                for t in m.trials:
                    if str(t.number) in jobs and str(t.number) not in adopted:
                        t.update(slurm_job=jobs[str(t.number)], slurm_restarts=0)
        line = f"attn sweep: {len(submit)} trial(s) submitted to SLURM"
        if submitted_ids := sorted({jobs[tids[i]].split("_")[0] for i, _ in submit}):
            line += f" (job {', '.join(submitted_ids)})"
        if adopted:
            line += f"; {len(adopted)} still queued or running from before: " + ", ".join(
                f"trial {t} = job {j}" for t, j in adopted.items()
            )
        print(line, flush=True)
        try:
            statuses = self._wait(root, jobs)
        except KeyboardInterrupt:
            print(
                "attn sweep: stopped waiting; the SLURM jobs go on (scancel stops them), and attn sweep"
                " --resume waits for them again",
                file=sys.stderr,
                flush=True,
            )
            raise
        return [
            JobReturn(overrides=list(o), status=JobStatus.COMPLETED, _return_value=statuses[tid])
            for o, tid in zip(job_overrides, tids, strict=True)
        ]

    def _refused(
        self, root: Path, error: Exception, job_overrides: Sequence[Sequence[str]], tids: list[str],
        refused: list[str], adopted: dict[str, str],
    ) -> list[Any]:  # fmt: skip
        """sbatch refused the array: its trials are marked ``refused`` with sbatch's line, the manifest
        keeps the reason for :func:`attn.runner.sweep.launch` to report, and live jobs adopted from an
        earlier session are still waited for."""
        from hydra.core.utils import JobReturn, JobStatus

        text = str(error).strip()
        why = text.splitlines()[-1] if text else type(error).__name__
        with locked_manifest(root) as m:
            for tid in refused:
                m.trial(tid).update(status="refused", error=f"sbatch refused the job: {why}")
            m.extra["refused"] = why
        statuses = {**dict.fromkeys(refused, "refused"), **(self._wait(root, adopted) if adopted else {})}
        return [
            JobReturn(overrides=list(o), status=JobStatus.COMPLETED, _return_value=statuses[tid])
            for o, tid in zip(job_overrides, tids, strict=True)
        ]

    def _wait(self, root: Path, jobs: dict[str, str]) -> dict[str, str]:
        """Wait until every job has left the queue; returns each trial's final status."""
        waiting, seen, absent, statuses = dict(jobs), {}, dict.fromkeys(jobs, 0), {}
        announced: dict[str, int] = {}  # the SLURM restarts of each trial's job already reported
        poll = _poll_seconds()
        while waiting:
            queue = queue_states()
            trials = {str(t.number): t for t in read_manifest(root).trials}
            for tid, job in list(waiting.items()):
                if queue is None:
                    break
                state = queue.get(job)
                if state is not None:
                    absent[tid] = 0
                    trial = trials[tid]
                    own_job = trial.extra.get("slurm_job") == job
                    restarts = trial.extra.get("slurm_restarts", 0) if own_job else 0
                    announced.setdefault(tid, restarts)
                    # Requeued: the job restarted its trial (SLURM_RESTART_COUNT, recorded by the trial), or
                    # waits in the queue again after its trial stopped or after it ran.
                    waits_again = state in WAITING and (
                        trial.status == "interrupted" or seen.get(tid) not in (None, *WAITING)
                    )
                    if restarts > announced[tid] or waits_again:
                        announced[tid] = restarts + waits_again
                        self._requeued(root, tid, job)
                    seen[tid] = state
                    continue
                absent[tid] += 1
                if absent[tid] >= 2:  # two looks in a row: the job has left the queue
                    statuses[tid] = self._finished(root, tid, job, len(jobs), len(statuses) + 1)
                    del waiting[tid]
            if waiting:
                time.sleep(poll)
        return statuses

    def _requeued(self, root: Path, tid: str, job: str) -> None:
        with locked_manifest(root) as m:
            trial = m.trial(tid)
            if trial.status == "interrupted":  # (a trial that already runs again stays running)
                trial.status = "requeued"
        print(f"attn sweep: trial {tid} (SLURM job {job}) was requeued; it resumes from its checkpoint",
              flush=True)  # fmt: skip

    def _finished(self, root: Path, tid: str, job: str, total: int, done: int) -> str:
        """The trial's status once its job has left the queue: what the trial recorded, or, when the job
        ended before the trial could record anything, what SLURM says happened to it."""
        with locked_manifest(root) as m:
            trial = m.trial(tid)
            if trial.status not in ("completed", "failed", "interrupted"):
                state = final_state(job)
                if trial.status == "requeued":  # its earlier attempt saved a checkpoint
                    trial.status = "interrupted"
                    trial.error = f"SLURM job {job} ended {state} while waiting to be restarted"
                elif trial.status == "running":
                    stopped = state in ("CANCELLED", "TIMEOUT", "PREEMPTED")
                    trial.status = "interrupted" if stopped else "failed"
                    trial.error = f"SLURM job {job} ended {state} while the trial ran, before its record"
                else:  # pending: the job never started the trial
                    trial.status = "cancelled"
                    trial.error = f"SLURM job {job} ended {state} before the trial started"
            status, error = trial.status, trial.error
        print(f"[{done}/{total}] trial {tid} {status} (SLURM job {job})" + (f": {error}" if error else ""),
              flush=True)  # fmt: skip
        return status


# --------------------------------------------------------------------------------------------
# inside a sweep trial's job


@contextlib.contextmanager
def forward_preemption(proc: subprocess.Popen) -> Any:
    """In a sweep trial's submitit process: pass the scheduler's warning signals (USR1, and submitit's
    own USR2) on to the ``attn train`` child, which saves and records itself; submitit's requeue on its
    signal is deferred until the child has finished (the caller calls the yielded function)."""
    own = submitit_signal()
    caught: list[tuple[int, Any]] = []
    previous = {s: signal.getsignal(s) for s in (signal.SIGUSR1, signal.SIGUSR2)}

    def forward(signum: int, frame: Any) -> None:
        caught.append((signum, frame))
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signum)

    for s in previous:
        signal.signal(s, forward)

    def after() -> None:
        """Call submitit's handler for its signal, once (it requeues the job and exits)."""
        handler = previous.get(own) if own is not None else None
        hit = next((c for c in caught if c[0] == own), None)
        if hit is not None and callable(handler):
            handler(*hit)

    try:
        yield after
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
