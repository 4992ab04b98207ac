"""The tuning phase searched by Optuna instead of a grid (``attn sweep --tune-search optuna``).

Each arm is its own Optuna study (seeded TPE, direction from the task's monitor), stored in the sweep
directory with Optuna's file journal (``optuna/<arm>.journal``), which several hosts may append to. The
search runs in rounds: every arm that has proposed fewer than ``N`` candidates asks its study for one,
its trials on the tuning seeds are added to the manifest, the round runs through the sweep's launcher,
and each finished candidate is told the mean over the tuning seeds of its best validation value (a
candidate with a failed run is told it failed). Every arm gets exactly ``N`` candidates. A resumed sweep
finishes the candidates already asked before it asks for more, and proposes what an uninterrupted one
would (each candidate's sampler is seeded by its arm and number). The manifest is the record: a journal
that is missing, cut or out of step with it is set aside and its study rebuilt from the manifest.
Pruning is not used: runs on MQAR learn in sudden jumps, so an early validation value says little about
the last one.

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
from .records import MANIFEST, STOP_FILE, Manifest, Trial, locked_manifest, read_manifest
from .tune import TUNE, TuneSpec, arm_name, as_overrides, base_overrides, distinct_values, phase, score

SAMPLER_SEED = 0  # arm i's candidate n is proposed by a TPE sampler seeded SAMPLER_SEED + 1000 i + n
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
            options = distinct_values(
                key, [str(x) for x in (value.list if isinstance(value, ChoiceSweep) else value)]
            )
            if logged:
                raise ConfigError(f"--tune-log {key}: choices have no scale; use interval()")
            if len(options) < 2:
                raise ConfigError(f"--tune {key}={text}: a tuned key needs at least two distinct candidates")
            out[key] = CategoricalDistribution(options)
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


def _sampler(index: int, number: int, n_trials: int) -> Any:
    """The TPE sampler that proposes arm ``index``'s candidate ``number``: seeded by both, so a search
    proposes the same candidates whether or not it was stopped and resumed in between (a sampler seeded
    once per process would replay its first draws after every resume)."""
    import optuna

    return optuna.samplers.TPESampler(
        seed=SAMPLER_SEED + 1000 * index + number, n_startup_trials=max(1, min(10, n_trials // 2))
    )


def _journal(root: Path, arm: str) -> Path:
    return root / JOURNALS / f"{short_name(arm)}.journal"


def _open_study(path: Path, arm: str, mode: str) -> Any:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    path.parent.mkdir(exist_ok=True)
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))
    return optuna.create_study(
        study_name=arm, storage=storage, direction="maximize" if mode == "max" else "minimize",
        load_if_exists=True,
    )  # fmt: skip


def _candidates(root: Path, m: Manifest, arm: str) -> dict[int, dict[str, Any]]:
    """The candidates of ``arm`` the manifest holds, by Optuna trial number: their values, whether the
    study was told, and (told) the mean score or None for a failure."""
    out: dict[int, dict[str, Any]] = {}
    for t in m.trials:
        if phase(t) == TUNE and t.extra["arm"] == arm:
            c = out.setdefault(int(t.extra["optuna_trial"]), {"params": t.extra["candidate"], "trials": []})
            c["trials"].append(t)
    for c in out.values():
        c["told"] = all(t.extra.get("told") for t in c["trials"])
        values = [score(root, t) for t in c["trials"]] if c["told"] else []
        c["value"] = None if not values or any(v is None for v in values) else sum(values) / len(values)
    return out


def _agrees(study: Any, held: dict[int, dict[str, Any]]) -> bool:
    """Whether the study's journal holds exactly the manifest's candidates, in their states."""
    from optuna.trial import TrialState

    trials = {t.number: t for t in study.trials}
    if set(trials) != set(held):
        return False
    for number, c in held.items():
        t = trials[number]
        params = {k: _text(v) for k, v in t.params.items()}
        state = (TrialState.COMPLETE, TrialState.FAIL) if c["told"] else (TrialState.RUNNING,)
        if params != c["params"] or t.state not in state:
            return False
    return True


def _rebuild(root: Path, m: Manifest, arm: str, mode: str, space: dict[str, Any], why: str) -> Any:
    """A new study for ``arm`` built from the manifest's candidates (the told ones with their results, the
    others asked again with their own values), the damaged journal set aside in ``optuna/``; the
    manifest's trial numbers follow the new study. Says so in one line."""
    from optuna.trial import TrialState, create_trial

    path = _journal(root, arm)
    if path.exists():
        n = 1
        while path.with_name(f"{path.name}.damaged-{n}").exists():
            n += 1
        path.rename(path.with_name(f"{path.name}.damaged-{n}"))
    study = _open_study(path, arm, mode)
    held = _candidates(root, m, arm)
    for number in sorted(held):
        c = held[number]
        params = {k: _value(space[k], v) for k, v in c["params"].items()}
        if c["told"]:
            state = TrialState.COMPLETE if c["value"] is not None else TrialState.FAIL
            study.add_trial(create_trial(params=params, distributions=space, value=c["value"], state=state))
            new = study.trials[-1].number
        else:
            study.enqueue_trial(params)
            new = study.ask(space).number
        for t in c["trials"]:
            t.extra["optuna_trial"] = new
    told = sum(c["told"] for c in held.values())
    print(
        f"attn sweep: {path.relative_to(root)} was {why}: its study was rebuilt from the {told} finished and"
        f" {len(held) - told} pending tuning candidate(s) of {arm} in {MANIFEST}",
        flush=True,
    )
    return study


def _value(dist: Any, text: str) -> Any:
    """A candidate's value as the distribution holds it (the manifest keeps text)."""
    from optuna.distributions import CategoricalDistribution, IntDistribution

    if isinstance(dist, CategoricalDistribution):
        return text
    return int(float(text)) if isinstance(dist, IntDistribution) else float(text)


def _study(root: Path, m: Manifest, arm: str, mode: str, space: dict[str, Any]) -> Any:
    """The study of ``arm`` from its journal, rebuilt from the manifest when the journal is missing,
    unreadable or disagrees with the manifest (a cut file, a lost append)."""
    path = _journal(root, arm)
    held = _candidates(root, m, arm)
    if not path.exists():
        return _rebuild(root, m, arm, mode, space, "missing") if held else _open_study(path, arm, mode)
    try:
        study = _open_study(path, arm, mode)
    except Exception:  # any unreadable journal: the manifest is the record
        return _rebuild(root, m, arm, mode, space, "unreadable")
    return study if _agrees(study, held) else _rebuild(root, m, arm, mode, space, "damaged")


def _arms(m: Manifest) -> dict[str, Trial]:
    """Each arm's first final trial (in grid order): its overrides, values, monitor and shape."""
    arms: dict[str, Trial] = {}
    for t in m.trials:
        if phase(t) != TUNE:
            arms.setdefault(t.extra["arm"], t)
    return arms


def _ended(t: Trial) -> bool:
    """Completed, failed, or paused at its budget (successive halving tells the first rung's score)."""
    return t.status in ("completed", "failed", "paused")


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
    budget = {"budget": spec.rungs()[0]["share"]} if spec.halving else {}  # halving: the first rung
    with locked_manifest(root) as m:
        arms = _arms(m)
        tuning = [t for t in m.trials if phase(t) == TUNE]
        width = len(m.trials[0].id)
        for arm, first in arms.items():
            mine = [t for t in tuning if t.extra["arm"] == arm]
            asked = {t.extra["optuna_trial"] for t in mine}
            if len(asked) >= int(spec.trials or 0) or any(not t.extra.get("told") for t in mine):
                continue
            study = studies[arm]
            study.sampler = _sampler(list(arms).index(arm), len(study.trials), int(spec.trials or 1))
            trial = study.ask(space)
            candidate = {k: _text(v) for k, v in trial.params.items()}
            base = base_overrides(first.overrides, spec.keys)
            lean = list(first.extra.get("tuning_overrides") or [])  # what a tuning trial leaves out
            values = {k: v for k, v in first.values.items() if k != "seed"}
            for seed in spec.seeds:
                tid = f"{len(m.trials):0{width}d}"
                shown = {**values, **candidate, "seed": seed}
                slug = values_name(shown)
                m.trials.append(
                    Trial(
                        id=tid, values=values,
                        overrides=[*base, *as_overrides(candidate), f"seed={seed}", *lean],
                        run_dir=f"tune/{tid}-{slug}", devices=first.devices, num_nodes=first.num_nodes,
                        accelerator=first.accelerator,
                        extra={"phase": TUNE, "candidate": candidate, "optuna_trial": trial.number,
                               "arm": arm_name(values), "monitor": first.extra["monitor"],
                               "mode": first.extra["mode"], **budget},
                    )
                )  # fmt: skip
        return sum(1 for t in m.trials if phase(t) == TUNE and not t.extra.get("told"))


def run_search(root: str | Path, spec: TuneSpec, launch_trials: Callable[..., Manifest]) -> Manifest:
    """Run the tuning phase of an Optuna search to its end (or until the sweep is stopped)."""
    root = Path(root)
    space = distributions({k: v[0] for k, v in spec.keys.items()}, spec.log)
    with locked_manifest(root) as m:  # a rebuilt study renumbers the manifest's candidates
        studies = {arm: _study(root, m, arm, t.extra["mode"], space) for arm, t in _arms(m).items()}
    while True:
        _tell(root, studies)
        if not _ask(root, spec, studies, space):
            return read_manifest(root)
        launch_trials(root, TUNE)
        m = read_manifest(root)
        if (root / STOP_FILE).exists() or any(phase(t) == TUNE and not _ended(t) for t in m.trials):
            return m  # stopped or interrupted: a resumed sweep finishes these candidates first
