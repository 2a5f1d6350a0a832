"""Tune a recipe with Optuna: `python -m helpers.tune --study S --trials N`, on one machine or many.

    python -m helpers.tune --study lr1 --trials 20 --space space.yaml -p epochs 5 -p img_size 32
    python -m helpers.tune --study lr1 --trials 20            # a second worker, or the study resumed
    KIT_TUNE_PASSWORD=... python -m helpers.tune --study lr1 --trials 20 \\
        --storage postgresql://kit@dbhost:5432/kit            # on each machine sharing a PostgreSQL server

A study belongs to one data set and one set of folds: the settings given with -p when it starts (data,
folds, the epochs budget, anything not searched) are stored with it, and every trial trains with them and
the values its sampler draws from the search space (helpers.search_space). Each trial is a normal run,
outputs/runs/<study>-t<number>, trained in this process by the kit's one loop (03's calls): config.json,
checkpoints, metrics.csv, so 04, 05, the leaderboard and blending treat it as any run. The objective is
the run's monitor at its best epoch (helpers.train.best_epochs), the mean over the study's folds; its
direction is the monitor's. After every epoch the trial reports the monitored value, and the pruner may
stop it there: its checkpoints stay, and pruned.json in the run folder says at which epoch.

Storage (helpers.study_storage): a journal file under outputs/studies/<study>/ by default, or a database
URL for machines sharing a PostgreSQL server. Each running trial records a heartbeat; a trial whose worker
died is marked failed by the next worker to look, and run again with the same settings, going on from the
checkpoints it left. A worker stops when the study holds `--trials` finished (complete or pruned) trials,
so starting the same command again resumes a study where it stopped.
"""

from __future__ import annotations

import argparse
import math
import re
import shutil
import sys
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.storages import BaseStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from helpers import runner
from helpers.config import Config, ConfigError
from helpers.dataset import build_store, prepare_dataset
from helpers.errors import MissingRunError, exits_on_kit_error
from helpers.leaderboard import write_leaderboard
from helpers.precision import pick_device
from helpers.run_folder import RunFolder
from helpers.search_space import DEFAULT_SPACE, SearchSpace, load_space, parse_space, space_spec
from helpers.settings import resolve_settings, resolve_task
from helpers.study_storage import (
    HEARTBEAT_S,
    STORAGE_ENV,
    journal_path,
    open_storage,
    retry_of,
    shown_url,
    storage_url,
    trial_run_name,
)
from helpers.train import best_epochs, higher_is_better, train_fold

SAMPLERS = ("tpe", "random")
PRUNERS = ("median", "none")
# MedianPruner: prune a trial whose epoch value is worse than the median of earlier trials at that epoch,
# once 5 trials have finished (fewer give a noisy median) and from its second epoch on (the first epoch of a
# short schedule is mostly warm-up; see docs/design.md, "Tuning")
PRUNER_STARTUP_TRIALS = 5
PRUNER_WARMUP_EPOCHS = 1
TPE_STARTUP_TRIALS = 5  # random trials before TPE models the results (scaled down from Optuna's 10)
MAX_FAILED_IN_A_ROW = 3  # trials whose drawn settings a run refuses (mixup with an odd batch size) before
# the worker stops: the space itself is then at fault
NAME = re.compile(r"^[\w.+-]+$")


# -- the study ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StudySettings:
    """What every trial of a study shares, stored with the study so that every worker uses it."""

    base: dict[str, Any]  # the fixed settings (-p): data, folds, epochs, anything not searched
    space: dict[str, Any]  # the search space, as parse_space reads it
    monitor: str  # resolved for the data: what the objective and the pruner read
    sampler: str = "tpe"
    pruner: str = "median"

    def search_space(self) -> SearchSpace:
        return parse_space(self.space, "the study's search space")

    @property
    def direction(self) -> str:
        return "maximize" if higher_is_better(self.monitor) else "minimize"

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("base", "space", "monitor", "sampler", "pruner")}


ATTR = "kit:settings"


def plan_study(
    base: dict[str, Any], space: dict[str, Any] | None, sampler: str = "tpe", pruner: str = "median"
) -> StudySettings:
    """A new study's settings, checked before any trial starts: the search space's entries, the fixed
    settings (a setting given both ways, a run name), and the monitor for the data (which is prepared)."""
    searched = parse_space(space if space is not None else DEFAULT_SPACE)
    both = sorted(set(base) & set(searched))
    if both:
        raise ConfigError(f"{both} given both with -p and in the search space: give each setting once")
    if "run_name" in base:
        raise ConfigError("run_name: each trial's run is named after the study and its number; leave it out")
    _require("sampler", sampler, SAMPLERS)
    _require("pruner", pruner, PRUNERS)
    cfg = Config.from_dict(base)
    for dimension in searched.values():  # every choice and both ends of every range, with the fixed settings
        ends = dimension.choices or (dimension.low, dimension.high)
        for value in ends:
            try:
                cfg.replace(**{dimension.name: value})
            except ConfigError as e:
                raise ConfigError(
                    f"the search space: {dimension.name}={value!r} with the fixed settings: {e}"
                ) from None
    info = prepare_dataset(cfg)
    unknown = sorted(set(cfg.folds) - set(info.split.folds))
    if unknown:
        raise ConfigError(
            f"folds={cfg.folds}: the data's split ({info.split.describe()}) has no fold {unknown}; "
            f"choose among {info.split.folds}, or [] for all"
        )
    monitor = resolve_task(cfg, info).monitor
    return StudySettings(dict(base), space_spec(searched), monitor, sampler, pruner)


def open_study(
    name: str,
    storage: BaseStorage,
    base: dict[str, Any] | None = None,
    space: dict[str, Any] | None = None,
    sampler: str | None = None,
    pruner: str | None = None,
) -> tuple[optuna.Study, StudySettings]:
    """The study `name` in the storage, created with these settings if it does not exist yet.

    A worker joining an existing study may leave every setting out (the study's are used); one it gives
    must equal the study's, else a ConfigError names the difference: two workers would run two studies.
    """
    if not NAME.match(name):
        raise ConfigError(
            f"study name {name!r}: use letters, digits, '.', '+', '-' or '_' (it names folders)"
        )
    stored = _stored_settings(name, storage)
    if stored is None:
        settings = plan_study(base or {}, space, sampler or "tpe", pruner or "median")
        study = optuna.create_study(
            study_name=name, storage=storage, direction=settings.direction, load_if_exists=True
        )
        if ATTR not in study.user_attrs:
            study.set_user_attr(ATTR, settings.to_dict())
        stored = StudySettings(**study.user_attrs[ATTR])
    _require_same(name, stored, base, space, sampler, pruner)
    study = optuna.load_study(
        study_name=name,
        storage=storage,
        sampler=build_sampler(stored.sampler, int(Config.from_dict(stored.base).seed)),
        pruner=build_pruner(stored.pruner),
    )
    return study, stored


def load_study(name: str, url: str = "") -> tuple[optuna.Study, StudySettings]:
    """An existing study, to look at (08): a missing one is a MissingRunError saying how to start it."""
    url = storage_url(url)
    if not url and not journal_path(name).exists():
        raise MissingRunError(
            f"no study {name!r}: {journal_path(name)} does not exist. Start it with "
            f"python -m helpers.tune --study {name} --trials N (or give its database URL as storage)"
        )
    storage = open_storage(name, url)
    settings = _stored_settings(name, storage)
    if settings is None:
        raise MissingRunError(
            f"no study {name!r} in {shown_url(url)}: start it with python -m helpers.tune --study {name}"
        )
    return optuna.load_study(study_name=name, storage=storage), settings


def _stored_settings(name: str, storage: BaseStorage) -> StudySettings | None:
    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        return None
    attrs = study.user_attrs.get(ATTR)
    return StudySettings(**attrs) if attrs else None


def _require_same(
    name: str,
    stored: StudySettings,
    base: dict[str, Any] | None,
    space: dict[str, Any] | None,
    sampler: str | None,
    pruner: str | None,
) -> None:
    given = {
        "fixed settings (-p)": (base or None, stored.base),
        "search space": (space_spec(parse_space(space)) if space else None, stored.space),
        "sampler": (sampler, stored.sampler),
        "pruner": (pruner, stored.pruner),
    }
    differ = [f"{what}: {mine!r} (the study has {theirs!r})" for what, (mine, theirs) in given.items()
              if mine is not None and mine != theirs]  # fmt: skip
    if differ:
        raise ConfigError(
            f"study {name!r} exists with other settings; " + "; ".join(differ) + ". Leave them out to join "
            "it with its own, or start another study (--study NEW)"
        )


def build_sampler(kind: str, seed: int) -> optuna.samplers.BaseSampler:
    """TPE (constant liar: running trials count as bad guesses, so parallel workers spread out) or random,
    each reseeded per trial from (seed, trial number): one worker's study is repeatable, and two workers
    never draw the same values for their trials."""
    _require("sampler", kind, SAMPLERS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if kind == "random":
            return _TrialSeeded(optuna.samplers.RandomSampler(seed=seed), seed)
        tpe = optuna.samplers.TPESampler(seed=seed, n_startup_trials=TPE_STARTUP_TRIALS, constant_liar=True)
        return _TrialSeeded(tpe, seed)


class _TrialSeeded(optuna.samplers.BaseSampler):
    """A sampler whose random state is set from (seed, trial number) before each trial."""

    def __init__(self, inner: optuna.samplers.BaseSampler, seed: int) -> None:
        self._inner, self._seed = inner, seed

    def _reseed(self, number: int) -> None:
        state = np.random.RandomState((self._seed * 100_003 + number) % 2**32)
        for sampler in (self._inner, getattr(self._inner, "_random_sampler", None)):
            if sampler is not None:
                sampler._rng.rng.set_state(state.get_state())

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, Any]:
        return self._inner.infer_relative_search_space(study, trial)

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, Any]
    ) -> dict[str, Any]:
        return self._inner.sample_relative(study, trial, search_space)

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution: Any
    ) -> Any:
        return self._inner.sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self._reseed(trial.number)
        self._inner.before_trial(study, trial)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState, values: Any) -> None:
        self._inner.after_trial(study, trial, state, values)


def build_pruner(kind: str) -> optuna.pruners.BasePruner:
    _require("pruner", kind, PRUNERS)
    if kind == "none":
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(
        n_startup_trials=PRUNER_STARTUP_TRIALS, n_warmup_steps=PRUNER_WARMUP_EPOCHS
    )


# -- one trial: a normal run -------------------------------------------------------------------------------------
class EpochReporter:
    """The trial's per-epoch hook for the training loop: reports the monitored value at step
    (fold's place * epochs + epoch), and says why to stop when the pruner prunes the trial there."""

    def __init__(self, trial: optuna.Trial, monitor: str, epochs: int) -> None:
        self.trial, self.monitor, self.epochs = trial, monitor, epochs
        self.place = 0
        self.pruned: dict[str, Any] | None = None

    def __call__(self, row: dict[str, Any]) -> str:
        value = float(row[self.monitor])
        if math.isnan(value):
            return ""
        self.trial.report(value, self.place * self.epochs + int(row["epoch"]))
        if not self.trial.should_prune():
            return ""
        self.pruned = {"fold": int(row["fold"]), "epoch": int(row["epoch"]), "epochs": self.epochs,
                       "monitor": self.monitor, "value": value}  # fmt: skip
        return f"pruned at epoch {row['epoch']}"


def run_trial(trial: optuna.Trial, study: str, settings: StudySettings, device: Any = None) -> float:
    """Train one trial as a normal run and return its objective; a pruned trial raises TrialPruned after
    writing pruned.json. The same calls as 03: prepare the data, resolve the automatic settings, write
    config.json, train each fold with the kit's loop."""
    params = {name: d.suggest(trial) for name, d in settings.search_space().items()}
    run = RunFolder.named(trial_run_name(study, trial.number))
    trial.set_user_attr("run", run.name)
    cfg = Config.from_dict({**settings.base, **params, "run_name": run.name})
    _go_on_from_predecessor(study, trial, run.create())
    info = prepare_dataset(cfg, run)
    cfg, _ = resolve_settings(cfg, info)
    run.write_config(cfg)
    build_store(cfg, info)
    reporter = EpochReporter(trial, cfg.monitor, cfg.epochs)
    for place, fold in enumerate(cfg.folds or info.split.folds):
        reporter.place = place
        train_fold(cfg, info, fold, run, device or pick_device(), after_epoch=reporter)
        if reporter.pruned is not None:
            run.write_pruned({**reporter.pruned, "study": study, "trial": trial.number})
            trial.set_user_attr("pruned_at_epoch", reporter.pruned["epoch"])
            raise optuna.TrialPruned(f"pruned at epoch {reporter.pruned['epoch']}")
    return float(best_epochs(run.read_metrics(), cfg.monitor)[cfg.monitor].mean())


def _go_on_from_predecessor(study: str, trial: optuna.Trial, run: RunFolder) -> None:
    """A retried trial goes on where its dead predecessor stopped: that run's checkpoints and metrics.csv are
    copied into this trial's run folder, where `train_fold` resumes each fold from its `last` checkpoint (at
    an epoch's end, or mid-epoch after a stop signal), and the predecessor's reported epochs came with the
    retry (inherit_intermediate_values), so the pruner sees the whole curve."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        frozen = next(t for t in trial.study.get_trials(deepcopy=False) if t.number == trial.number)
        history = RetryHeartbeatStaleTrialCallback.retry_history(frozen)
    if not history:
        return
    before = RunFolder.named(trial_run_name(study, history[-1]))
    if before.checkpoints.is_dir():
        shutil.copytree(before.checkpoints, run.checkpoints, dirs_exist_ok=True)
    if before.metrics.exists():
        shutil.copy2(before.metrics, run.metrics)


def finished_count(study: optuna.Study) -> tuple[int, int]:
    """(complete or pruned trials, running trials) of the study now."""
    counts = Counter(t.state for t in study.get_trials(deepcopy=False))
    return counts[TrialState.COMPLETE] + counts[TrialState.PRUNED], counts[TrialState.RUNNING]


def work(
    study: optuna.Study, name: str, settings: StudySettings, trials: int, device: Any = None
) -> list[FrozenTrial]:
    """Run trials until the study holds `trials` finished (complete or pruned) ones, counting those other
    workers finish or are running; returns this worker's trials. A dead worker's stale trial is failed and
    queued again first. Workers that start a trial at the same moment may finish a few more than asked."""
    mine: list[FrozenTrial] = []
    failed_in_a_row = 0

    def objective(trial: optuna.Trial) -> float:
        return run_trial(trial, name, settings, device)

    def say(_: optuna.Study, trial: FrozenTrial) -> None:
        nonlocal failed_in_a_row
        mine.append(trial)
        failed_in_a_row = failed_in_a_row + 1 if trial.state == TrialState.FAIL else 0
        print(describe_trial(trial, study), flush=True)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        while True:
            optuna.storages.fail_stale_trials(study)
            finished, running = finished_count(study)
            if finished + running >= trials:
                break
            study.optimize(objective, n_trials=1, callbacks=[say], catch=(ConfigError,))
            if failed_in_a_row >= MAX_FAILED_IN_A_ROW:
                raise ConfigError(
                    f"{failed_in_a_row} trials in a row were refused by the config (each printed above): "
                    "narrow the search space, or fix the settings given with -p"
                )
    return mine


def describe_trial(trial: FrozenTrial, study: optuna.Study) -> str:
    """One line per finished trial: its run, settings and result."""
    params = ", ".join(f"{k}={_short(v)}" for k, v in trial.params.items())
    run = trial.user_attrs.get("run", "")
    if trial.state == TrialState.COMPLETE:
        result = f"{trial.value:.4f}"
    elif trial.state == TrialState.PRUNED:
        result = f"pruned at epoch {trial.user_attrs.get('pruned_at_epoch', '?')}"
    else:
        result = trial.state.name.lower()
    retry = retry_of(trial)
    again = f" (retry of trial {retry})" if retry is not None else ""
    return f"trial {trial.number}{again} {run}: {params} -> {result}"


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


# -- the best trial -------------------------------------------------------------------------------------
def best_parameters(study: optuna.Study, settings: StudySettings) -> str:
    """The best trial's settings with the study's fixed ones, as a ready `-p` list for the runner or 03."""
    values = {**settings.base, **study.best_trial.params}
    return " ".join(f"-p {name} {_cli_value(v)}" for name, v in values.items())


def _cli_value(value: Any) -> str:
    """A value as `-p` reads it back (helpers.runner.parse_value): floats to 6 significant digits."""
    if isinstance(value, float):
        return f"{value:.6g}"
    text = str(value).replace(" ", "") if isinstance(value, list) else str(value)
    return text if re.fullmatch(r"[\w.+\-\[\],]+", text) else repr(text)


def describe_best(study: optuna.Study, settings: StudySettings) -> str:
    """The best complete trial, its run and its settings as a `-p` list; a line saying none yet without one."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return "no complete trial yet"
    best = study.best_trial
    return (
        f"trial {best.number}: {settings.monitor} {best.value:.4f}, run {best.user_attrs['run']}\n"
        f"{best_parameters(study, settings)}"
    )


def _require(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{name}={value!r}: choose one of {list(choices)}")


# -- the command ----------------------------------------------------------------------------------------------
@exits_on_kit_error("python -m helpers.tune")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", required=True, help="the study's name (its trials' runs are <study>-tNNN)")
    parser.add_argument("--trials", type=int, required=True, help="finished trials the study should hold")
    parser.add_argument(
        "--space", type=Path, help="search space file (YAML or TOML); default: lr, weight decay, ..."
    )
    runner.add_param_option(parser, "a fixed setting of every trial, e.g. -p epochs 3")
    parser.add_argument(
        "--storage", default="", help=f"database URL (default ${STORAGE_ENV}, else the journal file)"
    )
    parser.add_argument("--sampler", choices=SAMPLERS, help="new study: tpe (default) or random")
    parser.add_argument("--pruner", choices=PRUNERS, help="new study: median (default) or none")
    parser.add_argument(
        "--heartbeat", type=int, default=HEARTBEAT_S, help="seconds between a trial's heartbeats"
    )
    parser.add_argument(
        "--grace", type=int, help="seconds unheard before a trial counts as dead (default 2 heartbeats)"
    )
    parser.add_argument("--retries", type=int, default=3, help="times a dead worker's trial is run again")
    args = parser.parse_args(argv)
    base = {name: runner.parse_value(value, name) for name, value in args.param} or None
    space = space_spec(load_space(args.space)) if args.space else None
    url = storage_url(args.storage)
    storage = open_storage(args.study, url, args.heartbeat, args.grace, args.retries)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study, settings = open_study(args.study, storage, base, space, args.sampler, args.pruner)
    where = shown_url(url) if url else str(journal_path(args.study))
    print(f"study {args.study} ({where}): {settings.direction} {settings.monitor}, sampler {settings.sampler}, "
          f"pruner {settings.pruner}; {finished_count(study)[0]} of {args.trials} trials finished", flush=True)  # fmt: skip
    work(study, args.study, settings, args.trials)
    write_leaderboard()
    finished, _ = finished_count(study)
    print(f"best: {describe_best(study, settings)}")
    print(f"{finished} of {args.trials} trials finished", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
