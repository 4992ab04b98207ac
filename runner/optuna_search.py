"""The tuning phase searched by Optuna instead of a grid (``attn sweep --tune-search optuna``).

Each arm is its own Optuna study (seeded TPE, direction from the task's monitor), stored in the sweep
directory with Optuna's file journal (``optuna/<arm>.journal``), which several hosts may append to. The
search runs in rounds: every arm that has proposed fewer than ``N`` candidates asks its study for one,
its trials on the tuning seeds are added to the manifest, the round runs through the sweep's launcher,
and each finished candidate is told the mean over the tuning seeds of its best validation value (a
candidate with a failed run is told it failed). Every arm gets exactly ``N`` candidates. A resumed sweep
finishes the candidates already asked before it asks for more. Pruning is not used: runs on MQAR learn
in sudden jumps, so an early validation value says little about the last one.

Search spaces are written as in Hydra's Optuna sweeper: ``interval(1e-4,1e-2)`` (a float; ints when both
ends are ints), ``range(1,8)``, ``choice(a,b)`` or ``a,b,c`` (categorical); ``--tune-log KEY`` samples an
interval on a log scale.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .paths import short_name, values_name
from .records import STOP_FILE, Manifest, Trial, locked_manifest, read_manifest
from .tune import TUNE, TuneSpec, arm_name, as_overrides, base_overrides, phase, score

SAMPLER_SEED = 0  # arm i's TPE sampler is seeded with SAMPLER_SEED + i: a sweep proposes the same again
JOURNALS = "optuna"


def _parse(key: str, text: str) -> Any:
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        (o,) = OverridesParser.create().parse_overrides(overrides=[f"{key}={text}"])
    except HydraException as e:
        raise ConfigError(f"--tune {key}={text} is invalid: {str(e).strip().splitlines()[0]}") from None
    return o.value()


def distributions(keys: dict[str, str], log: list[str]) -> dict[str, Any]:
    """Optuna distributions of the tuned keys; ``ConfigError`` in one line for a space it cannot sample."""
    from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    out: dict[str, Any] = {}
    for key, text in keys.items():
        value = _parse(key, text)
        logged = key in log
        if isinstance(value, IntervalSweep):
            low, high = value.start, value.end
            if not low < high:
                raise ConfigError(f"--tune {key}={text} is invalid: the interval needs low < high")
            if logged and low <= 0:
                raise ConfigError(f"--tune-log {key}: a log scale needs an interval above 0, not from {low}")
            ints = all(isinstance(x, int) for x in (low, high))
            out[key] = (IntDistribution if ints else FloatDistribution)(low, high, log=logged)
        elif isinstance(value, RangeSweep):
            if logged:
                raise ConfigError(f"--tune-log {key}: range() is sampled step by step; use interval()")
            values = list(range(int(value.start), int(value.stop), int(value.step)))
            if len(values) < 2:
                raise ConfigError(f"--tune {key}={text}: a tuned key needs at least two candidates")
            out[key] = IntDistribution(values[0], values[-1], step=int(value.step))
        elif isinstance(value, ChoiceSweep) or isinstance(value, list):
            options = list(value.list if isinstance(value, ChoiceSweep) else value)
            if logged:
                raise ConfigError(f"--tune-log {key}: choices have no scale; use interval()")
            if len(options) < 2:
                raise ConfigError(f"--tune {key}={text}: a tuned key needs at least two candidates")
            out[key] = CategoricalDistribution([str(x) for x in options])
        else:
            raise ConfigError(
                f"--tune {key}={text}: Optuna needs a space: interval(low,high), range(a,b), choice(a,b), a,b"
            )
    return out


def check_space(keys: dict[str, str], log: list[str]) -> None:
    """Raise ``ConfigError`` when a tuned key's space is not one Optuna can sample."""
    distributions(keys, log)


def _text(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def low_end(spec: TuneSpec) -> dict[str, str]:
    """A candidate at the low end of every space (the first choice): the final trials are checked with it."""
    out = {}
    for key, dist in distributions({k: v[0] for k, v in spec.keys.items()}, spec.log).items():
        out[key] = str(dist.choices[0]) if hasattr(dist, "choices") else _text(dist.low)
    return out


def _study(root: Path, arm: str, index: int, mode: str, n_trials: int) -> Any:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    folder = root / JOURNALS
    folder.mkdir(exist_ok=True)
    backend = optuna.storages.journal.JournalFileBackend(str(folder / f"{short_name(arm)}.journal"))
    sampler = optuna.samplers.TPESampler(
        seed=SAMPLER_SEED + index, n_startup_trials=max(1, min(10, n_trials // 2))
    )
    return optuna.create_study(
        study_name=arm, storage=optuna.storages.JournalStorage(backend), sampler=sampler,
        direction="maximize" if mode == "max" else "minimize", load_if_exists=True,
    )  # fmt: skip


def _arms(m: Manifest) -> dict[str, Trial]:
    """Each arm's first final trial (in grid order): its overrides, values, monitor and shape."""
    arms: dict[str, Trial] = {}
    for t in m.trials:
        if phase(t) != TUNE:
            arms.setdefault(t.extra["arm"], t)
    return arms


def _ended(t: Trial) -> bool:
    return t.status in ("completed", "failed")


def _tell(root: Path, studies: dict[str, Any]) -> None:
    """Tell each study the candidates whose tuning trials have all ended (once each)."""
    from optuna.trial import TrialState

    with locked_manifest(root) as m:
        by_candidate: dict[tuple[str, int], list[Trial]] = {}
        for t in m.trials:
            if phase(t) == TUNE and not t.extra.get("told"):
                by_candidate.setdefault((t.extra["arm"], t.extra["optuna_trial"]), []).append(t)
        for (arm, number), trials in by_candidate.items():
            if not all(_ended(t) for t in trials):
                continue
            values = [score(root, t) for t in trials]
            study = studies[arm]
            if any(v is None for v in values):
                study.tell(number, state=TrialState.FAIL)
            else:
                study.tell(number, sum(values) / len(values))
            for t in trials:
                t.extra["told"] = True


def _ask(root: Path, spec: TuneSpec, studies: dict[str, Any], space: dict[str, Any]) -> int:
    """Ask every arm with fewer than ``spec.trials`` candidates and none in flight for one more; adds the
    candidates' tuning trials to the manifest and returns how many trials wait to run."""
    with locked_manifest(root) as m:
        arms = _arms(m)
        tuning = [t for t in m.trials if phase(t) == TUNE]
        width = len(m.trials[0].id)
        for arm, first in arms.items():
            mine = [t for t in tuning if t.extra["arm"] == arm]
            asked = {t.extra["optuna_trial"] for t in mine}
            if len(asked) >= int(spec.trials or 0) or any(not t.extra.get("told") for t in mine):
                continue
            trial = studies[arm].ask(space)
            candidate = {k: _text(v) for k, v in trial.params.items()}
            base = base_overrides(first.overrides, spec.keys)
            values = {k: v for k, v in first.values.items() if k != "seed"}
            for seed in spec.seeds:
                tid = f"{len(m.trials):0{width}d}"
                shown = {**values, **candidate, "seed": seed}
                slug = values_name(shown)
                m.trials.append(
                    Trial(
                        id=tid, overrides=[*base, *as_overrides(candidate), f"seed={seed}"], values=values,
                        run_dir=f"tune/{tid}-{slug}", devices=first.devices, num_nodes=first.num_nodes,
                        accelerator=first.accelerator,
                        extra={"phase": TUNE, "candidate": candidate, "optuna_trial": trial.number,
                               "arm": arm_name(values), "monitor": first.extra["monitor"],
                               "mode": first.extra["mode"]},
                    )
                )  # fmt: skip
        return sum(1 for t in m.trials if phase(t) == TUNE and not t.extra.get("told"))


def run_search(root: str | Path, spec: TuneSpec, launch_trials: Callable[..., Manifest]) -> Manifest:
    """Run the tuning phase of an Optuna search to its end (or until the sweep is stopped)."""
    root = Path(root)
    m = read_manifest(root)
    space = distributions({k: v[0] for k, v in spec.keys.items()}, spec.log)
    arms = _arms(m)
    studies = {
        arm: _study(root, arm, i, t.extra["mode"], int(spec.trials or 1))
        for i, (arm, t) in enumerate(arms.items())
    }
    while True:
        _tell(root, studies)
        if not _ask(root, spec, studies, space):
            return read_manifest(root)
        launch_trials(root, TUNE)
        m = read_manifest(root)
        if (root / STOP_FILE).exists() or any(phase(t) == TUNE and not _ended(t) for t in m.trials):
            return m  # stopped or interrupted: a resumed sweep finishes these candidates first
