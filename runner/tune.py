"""Per-arm tuning of a sweep: every arm gets the same tuning budget, and its reported numbers come from
fresh seeds.

An *arm* is one combination of the grid's swept keys other than ``seed``. A tuned sweep has two phases:

* ``tune``: every arm at every candidate of the tuned keys (a grid, or ``N`` candidates that Optuna's
  seeded TPE proposes per arm) on the tuning seeds;
* ``final``: every arm at its selected candidate on the grid's own seeds, which must differ from the
  tuning seeds. Only final trials are results.

Selection reads one number per tuning trial, the best validation value of the task's monitor
(``val/best_<metric>``, written by ``attn train``), takes its mean over the tuning seeds per candidate,
and picks the best mean; ties go to the earlier candidate. A tuning trial that failed (diverged, crashed)
scores as a failure, the worst possible value, as AlgoPerf scores a run that misses. Test metrics are
never read here.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .records import Manifest, Trial, read_record, trial_dir

TUNE, FINAL = "tune", "final"
SEARCHES = ("grid", "optuna")
ALL_ARMS = "all"  # the arm name of a grid that sweeps nothing but seeds


@dataclass
class TuneSpec:
    """What a sweep tunes: ``keys`` maps each tuned key to its candidates (grid search: the values; Optuna:
    one Hydra sweep expression such as ``interval(1e-4,1e-2)`` or ``choice(a,b)``), ``seeds`` are the
    tuning seeds, ``trials`` the number of Optuna candidates per arm, ``log`` the keys Optuna samples on a
    log scale."""

    keys: dict[str, list[str]]
    seeds: list[str]
    search: str = "grid"
    trials: int | None = None
    log: list[str] = field(default_factory=list)
    halving: int | None = None  # successive halving's ETA (--tune-halving), None: every candidate in full

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"keys": self.keys, "seeds": self.seeds, "search": self.search}
        if self.search == "optuna":
            out.update(trials=self.trials, log=self.log)
        if self.halving:
            out["halving"] = {"eta": self.halving, "rungs": self.rungs()}
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TuneSpec:
        halving = data.get("halving")
        return cls(
            keys={str(k): [str(v) for v in vs] for k, vs in data["keys"].items()},
            seeds=[str(s) for s in data["seeds"]],
            search=str(data.get("search", "grid")),
            trials=data.get("trials"),
            log=list(data.get("log") or []),
            halving=int(halving["eta"]) if isinstance(halving, dict) else None,
        )

    def n_candidates(self) -> int:
        """How many candidates every arm tries: the grid's, or Optuna's ``trials``."""
        return len(self.candidates()) if self.search == "grid" else int(self.trials or 0)

    def rungs(self) -> list[dict[str, Any]]:
        """Successive halving's rungs, the same for every arm: the share of the training budget each rung
        trains to and how many candidates run it (:func:`halving_rungs`); one full rung without halving."""
        return halving_rungs(self.n_candidates(), self.halving) if self.halving else [{"share": 1.0}]

    def candidates(self) -> list[dict[str, str]]:
        """The grid's candidates, in grid order (the first key varies slowest)."""
        keys = list(self.keys)
        return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*self.keys.values())]


def halving_rungs(n: int, eta: int) -> list[dict[str, Any]]:
    """Successive halving (Jamieson & Talwalkar 2016; Hyperband's inner loop, Li et al. 2018) of ``n``
    candidates with rate ``eta``: ``R = floor(log_eta n)`` halvings; rung ``r`` trains to ``eta^(r - R)`` of
    the budget and keeps the best ``ceil(n_r / eta)`` for the next one, the last at the full budget. Four
    candidates at ``eta = 2``: 1/4 (4), 1/2 (2), 1 (1); at ``eta = 3``: 1/3 (4), 1 (2)."""
    halvings = math.floor(math.log(n) / math.log(eta) + 1e-9) if n >= 1 and eta >= 2 else 0
    out, count = [], n
    for r in range(halvings + 1):
        out.append({"share": float(eta ** (r - halvings)), "candidates": count})
        count = max(1, math.ceil(count / eta))
    return out


def spec_of(manifest: Manifest) -> TuneSpec | None:
    """The tuning of a sweep's manifest; None for a sweep without tuning."""
    data = manifest.extra.get("tune")
    return TuneSpec.from_dict(data) if isinstance(data, dict) else None


def phase(trial: Trial) -> str | None:
    """``tune`` or ``final`` for a trial of a tuned sweep; None otherwise."""
    value = trial.extra.get("phase")
    return value if value in (TUNE, FINAL) else None


# --------------------------------------------------------------------------------------------
# the command line


def _seeds(text: str, what: str) -> list[str]:
    seeds = [s.strip() for s in str(text).split(",") if s.strip()]
    if not seeds or not all(s.isdigit() for s in seeds):
        raise ConfigError(
            f"{what}={text} is invalid: expected whole numbers >= 0 separated by commas, e.g. 0,1"
        )
    return list(dict.fromkeys(str(int(s)) for s in seeds))


def parse_spec(
    tune: list[str],
    tune_seeds: str | None,
    search: str | None = None,
    trials: int | None = None,
    log: list[str] | None = None,
    preset: dict[str, Any] | None = None,
    halving: str | int | None = None,
) -> TuneSpec | None:
    """The tuning of ``attn sweep``: ``--tune KEY=VALUES`` (repeatable; a key given there replaces the
    preset's), ``--tune-seeds``, ``--tune-search``, ``--tune-trials`` and ``--tune-log`` over the preset's
    ``tune``/``tune_seeds``/``tune_search``/``tune_trials``/``tune_log``. None when nothing is tuned;
    ``ConfigError`` in one line for bad input (an Optuna space is checked by
    :func:`attn.runner.optuna_search.check_space`)."""
    preset = preset or {}
    keys: dict[str, str] = {str(k): _text(v) for k, v in (preset.get("tune") or {}).items()}
    for item in tune:
        key, eq, value = item.partition("=")
        if not eq or not key or not value:
            raise ConfigError(
                f"--tune {item} is invalid: expected KEY=VALUES, e.g. --tune optim.lr=1e-3,3e-3"
            )
        keys[key.strip()] = value.strip()
    search = search or str(preset.get("tune_search") or "grid")
    trials = trials if trials is not None else preset.get("tune_trials")
    log = list(log or preset.get("tune_log") or [])
    seeds_text = tune_seeds if tune_seeds is not None else _text(preset.get("tune_seeds") or "")
    halving = halving if halving is not None else preset.get("tune_halving")
    if not keys:
        named = (("--tune-seeds", tune_seeds), ("--tune-trials", trials), ("--tune-log", log),
                 ("--tune-halving", halving))  # fmt: skip
        given = [f for f, v in named if v]
        if given or search != "grid":
            raise ConfigError(f"{given[0] if given else '--tune-search'} needs --tune KEY=VALUES")
        return None
    if search not in SEARCHES:
        raise ConfigError(f"--tune-search={search} is invalid; valid choices: {', '.join(SEARCHES)}")
    if not seeds_text:
        raise ConfigError(
            "--tune needs --tune-seeds, seeds kept apart from the final ones (e.g. --tune-seeds 100,101)"
        )
    seeds = _seeds(seeds_text, "--tune-seeds")
    if "seed" in keys:
        raise ConfigError("--tune seed=... is invalid: seeds are not tuned; give them with --tune-seeds")
    if search == "grid":
        if trials is not None:
            raise ConfigError("--tune-trials needs --tune-search optuna (a grid tries every candidate)")
        if log:
            raise ConfigError("--tune-log needs --tune-search optuna (a grid's values are written out)")
        spec = TuneSpec({k: _grid_values(k, v) for k, v in keys.items()}, seeds)
        return _with_halving(spec, halving)
    try:
        n_trials = int(trials)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        n_trials = 0
    if n_trials < 1 or str(n_trials) != str(trials).strip():
        raise ConfigError(
            f"--tune-trials={trials} is invalid: --tune-search optuna needs a whole number >= 1"
        )
    unknown = [k for k in log if k not in keys]
    if unknown:
        raise ConfigError(f"--tune-log {unknown[0]}: not a tuned key; tuned: {', '.join(keys)}")
    return _with_halving(TuneSpec({k: [v] for k, v in keys.items()}, seeds, "optuna", n_trials, log), halving)


def _with_halving(spec: TuneSpec, halving: str | int | None) -> TuneSpec:
    """``spec`` with successive halving at rate ``halving`` (``--tune-halving ETA``), checked."""
    if halving is None or halving == "":
        return spec
    try:
        eta = int(str(halving))
    except ValueError:
        eta = 0
    if eta < 2 or str(eta) != str(halving).strip():
        raise ConfigError(f"--tune-halving={halving} is invalid: a whole number >= 2 (keep the best 1/ETA)")
    n = spec.n_candidates()
    if eta > n:
        raise ConfigError(
            f"--tune-halving={eta} with {n} candidates per arm halves nothing: give an ETA from 2 to {n}"
        )
    spec.halving = eta
    return spec


def _text(value: Any) -> str:
    return ",".join(str(v) for v in value) if isinstance(value, list) else str(value)


def _grid_values(key: str, text: str) -> list[str]:
    """A tuned key's candidates from Hydra's sweep syntax (``1e-3,3e-3``, ``range(1,4)``, ``choice(...)``)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        (o,) = OverridesParser.create().parse_overrides(overrides=[f"{key}={text}"])
        values = list(o.sweep_string_iterator()) if o.is_sweep_override() else [o.get_value_element_as_str()]
    except (HydraException, ValueError, TypeError) as e:
        why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"--tune {key}={text} is invalid: {why}") from None
    distinct = distinct_values(key, values)
    if len(distinct) < 2:
        merged = f" ({text} names one value: {distinct[0]})" if len(values) > 1 else ""
        raise ConfigError(f"--tune {key}={text}: a tuned key needs at least two distinct candidates{merged}")
    return distinct


def distinct_values(key: str, values: list[str]) -> list[str]:
    """``values`` with those that name one value dropped (``1,1.0`` and ``1e-3,0.001`` are one candidate,
    as they compose to one config), the first spelling kept."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    seen: dict[Any, str] = {}
    for v in values:
        try:
            parsed = parser.parse_override(f"{key}={v}").value()
        except Exception:  # Hydra cannot read it alone: compare it as written
            parsed = v
        number = isinstance(parsed, int | float) and not isinstance(parsed, bool)
        seen.setdefault(("number", float(parsed)) if number else ("text", str(parsed)), v)
    return list(seen.values())


# --------------------------------------------------------------------------------------------
# arms and trials


def arm_name(values: dict[str, str]) -> str:
    """The arm of a trial: its swept values other than ``seed``, as ``key=value,...``."""
    name = ",".join(f"{k}={v}" for k, v in values.items() if k != "seed")
    return name or ALL_ARMS


def base_overrides(overrides: Iterable[str], tuned: Iterable[str] = ()) -> list[str]:
    """A trial's overrides without its seed and tuned keys: what every trial of its arm shares."""
    drop = {"seed", *tuned}
    return [o for o in overrides if o.partition("=")[0].lstrip("+~") not in drop]


def seed_of(trial: Trial, default: str) -> str:
    """The seed a trial runs with (its last ``seed=`` override, else the config's default)."""
    seeds = [o.partition("=")[2] for o in trial.overrides if o.partition("=")[0].lstrip("+") == "seed"]
    return seeds[-1] if seeds else default


def as_overrides(candidate: dict[str, str]) -> list[str]:
    return [f"{k}={v}" for k, v in candidate.items()]


def lean_overrides(cfg: Any) -> list[str]:
    """What a tuning trial of an arm whose final trials compose to ``cfg`` leaves out: selection reads its
    validation values, and the published rule (issue 33) its test value at the training length, so the
    order-blind baseline, the evaluations at other lengths and their second scores are not computed."""
    out = ["baseline=false"] if cfg.get("baseline") else []
    task = cfg.task
    if task.get("eval_lengths") is not None and list(task.eval_lengths) != []:
        out.append("task.eval_lengths=[]")  # [] still tests the training length
    out += [f"task.{key}=false" for key in ("eval_adaptive", "eval_logn") if task.get(key)]
    return out


def check_seeds(spec: TuneSpec, final_seeds: Iterable[str]) -> None:
    """A tuning seed reused as a final seed is refused: the reported numbers must come from fresh seeds."""
    reused = [s for s in spec.seeds if s in {str(int(x)) for x in final_seeds if str(x).isdigit()}]
    if reused:
        raise ConfigError(
            f"tuning seed {reused[0]} is also a final seed; give --tune-seeds outside the final seeds"
            f" ({', '.join(str(s) for s in final_seeds)})"
        )


# --------------------------------------------------------------------------------------------
# selection


def score(sweep_dir: str | Path, trial: Trial) -> float | None:
    """A completed tuning trial's best validation value of its monitor (for a run paused at its budget by
    successive halving, its best so far); None when the run did not complete (a failure) or recorded no
    such value."""
    try:
        record = read_record(trial_dir(sweep_dir, trial.run_dir) / "results.json")
    except ValueError:
        return None
    if record.status != "completed" and paused_share(record) is None:
        return None
    value = record.metrics.get(trial.extra["monitor"])
    return value if value is not None and math.isfinite(value) else None


def paused_share(record: Any) -> float | None:
    """The share of its training steps a run paused at (``trainer.pause_at``), or None."""
    paused = record.extra.get("paused")
    share = paused.get("share") if isinstance(paused, dict) else None
    return float(share) if isinstance(share, int | float) and record.status == "interrupted" else None


def at_budget(sweep_dir: str | Path, trial: Trial) -> bool:
    """Whether a tuning trial has trained as far as its current budget: completed, or paused at its
    budget's share (successive halving)."""
    try:
        record = read_record(trial_dir(sweep_dir, trial.run_dir) / "results.json")
    except ValueError:
        return False
    if record.status == "completed":
        return True
    share, budget = paused_share(record), trial.extra.get("budget")
    return share is not None and budget is not None and abs(share - float(budget)) < 1e-9


def tuning_table(m: Manifest, sweep_dir: str | Path) -> dict[str, list[dict[str, Any]]]:
    """Per arm, per candidate (in order of first appearance): the mean over the tuning seeds of the
    monitor's best validation value (failures count as the worst value), the values, and the failures."""
    table: dict[str, dict[str, dict[str, Any]]] = {}
    for t in m.trials:
        if phase(t) != TUNE:
            continue
        key = repr((sorted(t.extra["candidate"].items()), t.extra.get("optuna_trial")))
        row = table.setdefault(t.extra["arm"], {}).setdefault(
            key, {"candidate": t.extra["candidate"], "values": [], "failed": 0, "mode": t.extra["mode"]}
        )
        if t.extra.get("halted") is not None:  # dropped by successive halving at that share of the budget
            row["halted"] = t.extra["halted"]
        value = score(sweep_dir, t)
        if value is None:
            row["failed"] += 1
        else:
            row["values"].append(value)
    out: dict[str, list[dict[str, Any]]] = {}
    for arm, rows in table.items():
        out[arm] = []
        for row in rows.values():
            worst = -math.inf if row["mode"] == "max" else math.inf
            n = len(row["values"]) + row["failed"]
            mean = worst if row["failed"] else sum(row["values"]) / n
            out[arm].append({"candidate": row["candidate"], "mean": mean, "n": n, "failed": row["failed"],
                             "mode": row["mode"], "values": row["values"],
                             "halted": row.get("halted")})  # fmt: skip
    return out


def select(table: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, str]]:
    """Per arm the candidate with the best mean among those that trained the full budget (successive
    halving drops the others); ties go to the earlier candidate. An arm none of whose candidates has a
    finite mean (every one failed) gets no selection: it is left out."""
    chosen = {}
    for arm, rows in table.items():
        scored = [r for r in rows if math.isfinite(r["mean"]) and r.get("halted") is None]
        if not scored:
            continue
        best = scored[0]
        for row in scored[1:]:
            better = row["mean"] > best["mean"] if row["mode"] == "max" else row["mean"] < best["mean"]
            if better:
                best = row
        chosen[arm] = dict(best["candidate"])
    return chosen


def at_edge(spec: TuneSpec, candidate: dict[str, str]) -> list[str]:
    """The tuned keys whose selected value is the first or last of its grid (the optimum may lie beyond)."""
    if spec.search != "grid":
        return []
    grid = spec.keys
    return [k for k, v in candidate.items() if len(grid.get(k, [])) >= 2 and v in (grid[k][0], grid[k][-1])]


def tuning_open(m: Manifest) -> bool:
    """Whether a tuned sweep has still to select (its final trials wait for their tuned values)."""
    return spec_of(m) is not None and "selected" not in m.extra


# --------------------------------------------------------------------------------------------
# successive halving: every candidate trains to the first rung's share of the budget, the best 1/ETA per
# arm continue (resumed from their checkpoints: no step is trained twice), and so on to the full budget


def promote(m: Manifest, sweep_dir: str | Path) -> list[str]:
    """Close the rung every tuning trial of ``m`` has reached: per arm, rank the candidates by the mean over
    the tuning seeds of their best validation value so far (failures worst, ties to the earlier one), keep
    the best ``candidates`` of the next rung and raise their budget to its share, mark the others
    ``halted``. Returns a line per arm (nothing when the last rung is done); call when :func:`waiting`
    is empty. The record of every rung is kept in ``m.extra["halving"]``."""
    spec = spec_of(m)
    if spec is None or not spec.halving:
        return []
    rungs = spec.rungs()
    table = tuning_table(m, sweep_dir)
    lines = []
    for arm, rows in table.items():
        live = [r for r in rows if r.get("halted") is None]
        mine = [
            t
            for t in m.trials
            if phase(t) == TUNE and t.extra["arm"] == arm and t.extra.get("halted") is None
        ]
        shares = {float(t.extra.get("budget") or 1.0) for t in mine}
        if not mine or len(shares) != 1 or max(shares) >= 1.0:
            continue
        share = shares.pop()
        nxt = next(i for i, r in enumerate(rungs) if r["share"] > share + 1e-9)
        keep = min(len(live), int(rungs[nxt]["candidates"]))
        better = -1.0 if live and live[0]["mode"] == "min" else 1.0
        order = sorted(
            range(len(live)), key=lambda i: (-better * live[i]["mean"], i)
        )  # stable: ties to earlier
        kept = [live[i]["candidate"] for i in order[:keep]]
        for t in mine:
            if t.extra["candidate"] in kept:
                t.extra["budget"] = rungs[nxt]["share"]
            else:
                t.extra["halted"] = share
        entry = {"arm": arm, "share": share, "scores": [[r["candidate"], _finite(r["mean"])] for r in live],
                 "kept": kept}  # fmt: skip
        m.extra.setdefault("halving", []).append(entry)
        shown = "; ".join(" ".join(f"{k}={v}" for k, v in c.items()) for c in kept)
        lines.append(f"halving {arm} at {share:.3g} of the budget: {len(kept)} of {len(live)} go on to"
                     f" {rungs[nxt]['share']:.3g}: {shown}")  # fmt: skip
    return lines


def waiting(m: Manifest, sweep_dir: str | Path) -> list[Trial]:
    """The tuning trials that have not yet trained to their budget (and were not dropped or told)."""
    return [
        t
        for t in m.trials
        if phase(t) == TUNE and t.extra.get("halted") is None and t.status != "failed"
        and not at_budget(sweep_dir, t)
    ]  # fmt: skip


NOT_RUN = "not_run"  # a final trial's mark: its arm selected nothing, so it never runs


def recorded_selection(m: Manifest) -> dict[str, dict[str, str]]:
    """Per arm, the tuned values its final trials carry in their own overrides (what they trained, or will
    train, at); ``ConfigError`` in one line when an arm's final trials disagree with each other or with the
    manifest's ``selected``. A final trial's own values always win over the manifest's summary."""
    spec = spec_of(m)
    if spec is None:
        return {}
    found: dict[str, dict[str, str]] = {}
    for t in m.trials:
        if phase(t) != FINAL:
            continue
        own = {}
        for o in t.overrides:
            key, _, value = o.partition("=")
            if key.lstrip("+") in spec.keys:
                own[key.lstrip("+")] = value
        if not own:
            continue
        arm = str(t.extra.get("arm"))
        if arm in found and found[arm] != own:
            raise ConfigError(
                f"sweep.json: the final trials of {arm} carry different tuned values ({found[arm]} and trial"
                f" {t.id}: {own}); restore the manifest or start a new sweep"
            )
        found[arm] = own
    selected = m.extra.get("selected")
    if isinstance(selected, dict):
        for arm, own in found.items():
            if arm in selected and selected[arm] != own:
                raise ConfigError(
                    f"sweep.json: the selection for {arm} ({selected[arm]}) is not what its final trials"
                    f" carry ({own}); restore the manifest or start a new sweep"
                )
    return found


def apply_selection(m: Manifest, sweep_dir: str | Path) -> tuple[dict[str, dict[str, str]], dict[str, str]]:
    """Select per arm from the tuning trials' records and give the final trials their selected values;
    written into the manifest (``selected``, ``tuning``). The choice is final once made: final trials that
    already carry tuned values (a manifest whose ``selected`` was lost) keep them, and the selection is
    restored from them. Returns the selection and, per arm that selected nothing, why (its final trials
    are marked not to run)."""
    table = tuning_table(m, sweep_dir)
    chosen = {**select(table), **recorded_selection(m)}
    unselected = {
        arm: f"every one of its {len(rows)} tuning candidates failed (diverged, crashed or scored nothing)"
        for arm, rows in table.items()
        if arm not in chosen
    }
    for t in m.trials:
        if phase(t) != FINAL:
            continue
        arm = t.extra["arm"]
        if arm in chosen:
            keys = {o.partition("=")[0].lstrip("+") for o in t.overrides}
            if not keys & set(chosen[arm]):
                t.overrides = [*t.overrides, *as_overrides(chosen[arm])]
            t.extra["selected"] = chosen[arm]
        elif arm in unselected:
            t.update(status="failed", error=f"not run: {arm} selected nothing: {unselected[arm]}")
            t.extra[NOT_RUN] = True
    m.extra["selected"] = chosen
    if unselected:
        m.extra["unselected"] = unselected
    m.extra["tuning"] = {
        arm: [
            {
                "candidate": r["candidate"],
                "mean": _finite(r["mean"]),
                "n": r["n"],
                "failed": r["failed"],
                **({"halted": r["halted"]} if r.get("halted") is not None else {}),
            }
            for r in rows
        ]
        for arm, rows in table.items()
    }
    return chosen, unselected


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None
