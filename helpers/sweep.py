"""Run the series once per backbone and grid point, then compare: `python -m helpers.sweep --backbones a,b`.

    python -m helpers.sweep --backbones resnet18,mobilenetv3_small_100 -p epochs 3
    python -m helpers.sweep --grid grid.yaml        # grid.yaml: {backbone: [resnet18], lr: [0.001, 0.003]}

Runs go one after another, each in outputs/runs/<backbone>[-<name><value>...] and on the same folds (the
folds are stored per dataset). Every run's parameters are checked before the first notebook starts. A run
whose whole series finished before with the same parameters is skipped, so a sweep that was stopped
continues where it was (and 03 resumes a half-trained fold); `--rerun` starts the runs afresh instead.
outputs/leaderboard.csv and leaderboard.png are rebuilt after every run.
"""

from __future__ import annotations

import argparse
import itertools
import re
import shutil
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from helpers import runner
from helpers.config import Config, ConfigError
from helpers.errors import exits_on_kit_error
from helpers.leaderboard import leaderboard_csv, write_leaderboard
from helpers.model import check_backbone
from helpers.run_folder import RunFolder

# a finished run is redone only for settings that change what it computes, not how fast ("machine")
STAGES_THAT_MATTER = ("run", "data", "train", "predict")
# settings that decide the folds: runs that differ in them are not compared on the same images
FOLD_SETTINGS = ("data_dir", "dataset_name", "csv_name", "label_col", "group_col", "n_folds", "seed")


@dataclass(frozen=True)
class PlannedRun:
    """One run of a sweep: its folder name and the parameters the series gets (run_name included)."""

    name: str
    params: dict[str, Any]


def load_grid(path: Path) -> dict[str, list[Any]]:
    """A YAML mapping of parameter name -> list of values; anything else is a ConfigError naming the fix."""
    try:
        grid = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"cannot read the grid {path}: {e}") from None
    if not isinstance(grid, dict):
        raise ConfigError(
            f"{path}: a grid is a mapping of parameter name -> list of values, e.g. lr: [0.001, 0.003]"
        )
    for name, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(
                f"{path}: {name}: {values!r} must be a non-empty list of values, e.g. {name}: [{values!r}]"
            )
    return grid


def expand_grid(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Every combination of the grid's values, the first name varying slowest; [{}] for an empty grid."""
    return [dict(zip(grid, values, strict=True)) for values in itertools.product(*grid.values())]


def run_name(backbone: str, point: dict[str, Any], tag: str = "") -> str:
    """The run's folder name: the backbone, then <name><value> per grid value, then the tag.

    e.g. run_name("resnet18", {"lr": 0.001, "epochs": 3}) == "resnet18-lr0.001-epochs3".
    """
    parts = [backbone, *(f"{k}{_short(v)}" for k, v in point.items() if k != "backbone")]
    return re.sub(r"[^\w.+-]", "_", "-".join(parts + ([tag] if tag else [])))


def plan_sweep(
    backbones: list[str], params: dict[str, Any], grid: dict[str, list[Any]], tag: str = ""
) -> list[PlannedRun]:
    """The runs, backbone by backbone and grid point by grid point; a name given two ways is an error."""
    both = sorted(set(params) & set(grid))
    if both:
        raise ConfigError(f"{both} given both with -p and in the grid: give each parameter once")
    sources = [
        s
        for s, given in (
            ("--backbones", backbones),
            ("the grid", "backbone" in grid),
            ("-p backbone", "backbone" in params),
        )
        if given
    ]
    if len(sources) > 1:
        raise ConfigError(f"backbones given by {' and '.join(sources)}: name them in one place")
    points = expand_grid({k: v for k, v in grid.items() if k != "backbone"})
    names = backbones or grid.get("backbone") or [params.get("backbone", Config.backbone)]
    runs = []
    for backbone, point in itertools.product(names, points):
        run = {**params, **point, "backbone": backbone}
        name = params.get("run_name") or run_name(str(backbone), point, tag)
        runs.append(PlannedRun(name, {**run, "run_name": name}))
    return runs


def check_plan(runs: list[PlannedRun], rerun: bool) -> list[str]:
    """Check every run before any starts; return the problems, each naming its run (empty: all good).

    Names and types go through the runner's check; backbones must be timm models; two runs may not share
    a folder; a finished run with other parameters needs --rerun or another name.
    """
    notebooks = runner.series_notebooks()
    shared = sorted(name for name, n in Counter(r.name for r in runs).items() if n > 1)
    problems = [f"{name}: several runs would share outputs/runs/{name}; give them apart" for name in shared]
    for run in runs:
        try:
            cfg = runner.check_parameters(run.params, notebooks)
            check_backbone(cfg.backbone)
            changed = _changed_since_finished(cfg)
        except ValueError as e:  # ConfigError, or check_backbone's unknown model
            problems.append(f"{run.name}: {e}")
            continue
        if changed and not rerun:
            problems.append(
                f"{run.name}: finished before with other parameters ({changed}). Pass --rerun to run it "
                "again from scratch, or --tag TEXT (or -p run_name for a single run) for another name."
            )
    return problems


def run_sweep(runs: list[PlannedRun], rerun: bool = False) -> list[str]:
    """Run the planned runs one after another; return the failures (a failed run does not stop the rest).

    Raises ConfigError, before any run starts, when a run's parameters are wrong.
    """
    problems = check_plan(runs, rerun)
    if problems:
        raise ConfigError("the sweep did not start:\n  " + "\n  ".join(problems))
    print(f"sweep of {len(runs)} run(s): {', '.join(r.name for r in runs)}", flush=True)
    _warn_different_folds(runs)
    failures = []
    for i, run in enumerate(runs, 1):
        folder = RunFolder.of(Config.from_dict(run.params))
        if folder.finished_parameters() is not None and not rerun:
            print(f"[{i}/{len(runs)}] {run.name}: finished before with these parameters, skipped", flush=True)
        else:
            print(f"[{i}/{len(runs)}] {run.name}", flush=True)
            if rerun and folder.path.exists():
                shutil.rmtree(folder.path)
            try:
                runner.run_series(run.params)
            except runner.NotebookFailed as e:
                failures.append(f"{run.name}: {e}")
                print(f"[{i}/{len(runs)}] {run.name} failed: {e}", file=sys.stderr, flush=True)
        write_leaderboard()  # after every run, so the table is current even if the sweep is stopped
    return failures


def _short(value: Any) -> str:
    if isinstance(value, list | tuple):
        return "+".join(_short(v) for v in value)
    return str(value)


def _changed_since_finished(cfg: Config) -> str:
    """The settings (but those of how fast it runs) that differ from the run's finished ones, as
    'name: old -> new'."""
    before = RunFolder.of(cfg).finished_parameters()
    if before is None:
        return ""
    old = Config.from_dict(before).to_dict()
    now = cfg.to_dict()
    return ", ".join(
        f"{k}: {old[k]!r} -> {now[k]!r}" for k in Config.names_of(*STAGES_THAT_MATTER) if old[k] != now[k]
    )


def _warn_different_folds(runs: list[PlannedRun]) -> None:
    settings = {tuple(Config.from_dict(r.params).to_dict()[k] for k in FOLD_SETTINGS) for r in runs}
    if len(settings) > 1:
        print(
            f"note: the runs differ in {FOLD_SETTINGS}, so they are not validated on the same folds",
            flush=True,
        )


@exits_on_kit_error("python -m helpers.sweep")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", default="", help="comma-separated timm model names")
    runner.add_param_option(parser, "a parameter of every run, e.g. -p epochs 3")
    parser.add_argument("--grid", type=Path, help="YAML file: parameter name -> list of values")
    parser.add_argument("--rerun", action="store_true", help="run finished runs again, from scratch")
    parser.add_argument("--tag", default="", help="appended to every run name, e.g. v2")
    args = parser.parse_args(argv)
    runs = plan_sweep(
        [b.strip() for b in args.backbones.split(",") if b.strip()],
        {name: runner.parse_value(value, name) for name, value in args.param},
        load_grid(args.grid) if args.grid else {},
        args.tag,
    )
    failures = run_sweep(runs, args.rerun)
    print(f"leaderboard: {leaderboard_csv()}")
    if failures:
        print(f"{len(failures)} of {len(runs)} run(s) failed:\n  " + "\n  ".join(failures), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
