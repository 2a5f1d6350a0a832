"""One row per run, for comparing backbones: `python -m helpers.leaderboard` rebuilds and prints it.

Everything is read back from the run folders (metrics.csv, evaluation.json, oof.csv, a checkpoint,
test_probabilities.csv), never from memory, so the table can be rebuilt at any time, also mid-sweep. A run
that stopped early simply has NaN where its missing files would have been; an unreadable file is a warning
and NaN, never a crash, so one broken run cannot hide the others.

Runs of different tasks are never ranked together: accuracy and mAP are not on one scale. Each row says
its run's `task`; multiclass runs fill the accuracy columns, multilabel runs the mAP and F1 columns, and
the table is ranked within each task (`rank`), multiclass runs first. A sort column of the other task
ranks a task's runs by its own counterpart (MULTILABEL_COUNTERPART). A run whose config predates the task
setting trained on one label per image: multiclass.

Blends (outputs/blends, helpers.blend) are listed beside the runs and ranked with the runs of their task
(`kind` says which is which). A blend's validation score column holds its out-of-fold score, chosen and
scored on the same rows (optimistic), and `nested_score` its nested estimate; its test columns are scored
at its own thresholds, as a run's.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from helpers.atomic import atomic_savefig, atomic_to_csv
from helpers.blend import read_blend, written_blends
from helpers.checkpoints import load_checkpoint
from helpers.config import Config, ConfigError, parameter_names
from helpers.dataset import data_dir_of
from helpers.errors import KitError, exits_on_kit_error
from helpers.holdout import test_labels
from helpers.model import count_parameters, skeleton
from helpers.multilabel_metrics import macro_map
from helpers.paths import outputs_dir, runs_dir
from helpers.run_folder import BlendFolder, RunFolder, metric_key
from helpers.tables import detect_layout, list_test_images
from helpers.tasks import TASKS, task_for, task_named
from helpers.thresholds import TunedThresholds

COLUMNS = [
    "run",
    "kind",  # run, or blend (helpers.blend: several runs' probabilities combined)
    "task",  # multiclass or multilabel: runs are ranked within their task
    "rank",  # 1 = best of its task by the sort column
    "backbone",
    "img_size",
    "epochs",
    "teachers",  # the runs it was distilled from (helpers.distill), comma-separated; empty: none
    "pseudo_labels",  # how many pseudo-labelled images it trained on and their source (helpers.pseudo_labels)
    "finished",  # submission.csv written (05), or evaluation.json (04) for data without a test set
    "nested_score",  # blends: the nested estimate of the task's score (val_acc_tta or val_map_tta holds the
    # blend's out-of-fold score, chosen on the same rows)
    "pruned_at_epoch",  # a tuning trial stopped by its pruner after this epoch (pruned.json; helpers.tune)
    "val_acc_tta",  # out-of-fold accuracy with the run's TTA views (evaluation.json)
    "val_acc",  # out-of-fold accuracy without TTA (evaluation.json)
    "best_val_acc",  # mean over trained folds of each fold's best epoch (metrics.csv)
    "best_val_loss",  # mean over trained folds of each fold's lowest validation loss (metrics.csv)
    "oof_acc",  # label == predicted in oof.csv
    "test_acc",  # 05's test predictions against the test labels, when the test set has them (helpers.holdout)
    "test_macro_f1",
    "test_log_loss",
    # multilabel runs; every F1 at the run's per-class thresholds tuned by 04 (what 05 predicts with), the
    # validation ones optimistic (tuned on the same out-of-fold rows)
    "val_map_tta",  # out-of-fold macro mAP with the run's TTA views (evaluation.json)
    "val_map",  # out-of-fold macro mAP without TTA (evaluation.json)
    "val_f1_micro_tuned_tta",
    "val_f1_macro_tuned_tta",
    "best_val_map",  # mean over trained folds of each fold's best epoch (metrics.csv)
    "test_map",
    "test_f1_micro",
    "test_f1_macro",
    "train_seconds",  # all epochs of all folds, validation included
    "seconds_per_epoch",
    "images_per_s",  # training images per second, mean over epochs
    "parameters",  # the model's parameters, trainable or not (helpers.model.count_parameters), as 03 shows
]
# the plot's score axis: a multiclass accuracy (multilabel panels show its mAP counterpart) or an mAP
# (multiclass panels show its accuracy counterpart)
ACCURACIES = ["val_acc_tta", "val_acc", "best_val_acc", "oof_acc", "test_acc", "val_map_tta", "val_map",
              "best_val_map", "test_map"]  # fmt: skip
LOWER_IS_BETTER = {"best_val_loss", "test_log_loss", "train_seconds", "seconds_per_epoch", "parameters"}
SORTABLE = [
    c
    for c in COLUMNS
    if c
    not in {
        "run",
        "kind",
        "task",
        "rank",
        "backbone",
        "finished",
        "pruned_at_epoch",
        "teachers",
        "pseudo_labels",
    }
]
TASK_ORDER = ("multiclass", "multilabel")
MULTICLASS_ONLY = [
    "val_acc_tta",
    "val_acc",
    "best_val_acc",
    "oof_acc",
    "test_acc",
    "test_macro_f1",
    "test_log_loss",
]
MULTILABEL_ONLY = ["val_map_tta", "val_map", "val_f1_micro_tuned_tta", "val_f1_macro_tuned_tta", "best_val_map",
                   "test_map", "test_f1_micro", "test_f1_macro"]  # fmt: skip
# 06 shows each task's scores in one table and these in a second: one table of every column is wider than
# a notebook (a 1400 px window)
DETAILS = ["kind", "backbone", "img_size", "epochs", "pruned_at_epoch", "teachers", "pseudo_labels", "best_val_loss",
           "train_seconds", "seconds_per_epoch", "images_per_s", "parameters"]  # fmt: skip
# details only some runs have (tuning trials, distilled or pseudo-labelled runs): shown when one has them
OCCASIONAL_DETAILS = ["pruned_at_epoch", "teachers", "pseudo_labels"]
# a multiclass column's counterpart for multilabel runs (and back): what ranks them and is their plot's axis
MULTILABEL_COUNTERPART = {
    "val_acc_tta": "val_map_tta",
    "val_acc": "val_map",
    "best_val_acc": "best_val_map",
    "oof_acc": "val_map_tta",
    "test_acc": "test_map",
    "test_macro_f1": "test_f1_macro",
    "test_log_loss": "test_map",
}
ONLY = {"multiclass": MULTICLASS_ONLY, "multilabel": MULTILABEL_ONLY}  # the columns only a task fills
# the counterpart, for a task's runs, of a column another task fills
COUNTERPART = {
    "multilabel": MULTILABEL_COUNTERPART,
    "multiclass": {v: k for k, v in MULTILABEL_COUNTERPART.items() if k not in ("oof_acc", "test_log_loss")},
}


def leaderboard_csv() -> Path:
    return outputs_dir() / "leaderboard.csv"


def leaderboard_png() -> Path:
    return outputs_dir() / "leaderboard.png"


def run_row(run: RunFolder) -> dict[str, Any]:
    """The leaderboard row of one run folder; a piece whose file is missing or unreadable is left out."""
    config = _read(run.config, lambda p: {"config": run.read_config()}).get("config")
    if config is not None:
        config = config.replace(task=run_task(config))  # a run from before the task setting: multiclass
    row: dict[str, Any] = {
        "run": run.name,
        "kind": "run",
        "task": config.task if config else np.nan,
        "backbone": config.backbone if config else np.nan,
        "img_size": config.img_size if config else np.nan,
        "epochs": config.epochs if config else np.nan,
        "teachers": ", ".join(config.teachers) if config else np.nan,
        "pseudo_labels": _pseudo_mark(run, config) if config else np.nan,
        "finished": run.complete(_has_test_set(config)) if config else False,
    }
    row |= _read(run.pruned, lambda p: {"pruned_at_epoch": run.pruned_at_epoch()})
    row |= _read(run.metrics, lambda p: _training_columns(run.read_metrics()))
    row |= _read(run.evaluation, lambda p: _evaluation_columns(run.read_evaluation()))
    if config is not None and "oof_acc" in ONLY[config.task]:
        row |= _read(run.oof, lambda p: {"oof_acc": _oof_accuracy(run.read_oof())})
    if config is not None:
        row |= _read(run.test_probabilities, lambda p: _test_columns(run, config))
    checkpoints = sorted(run.checkpoints.glob("fold*_best_score.pt"))
    if checkpoints:
        row |= _read(checkpoints[0], lambda p: {"parameters": _count(p)})
    return row


def _pseudo_mark(run: RunFolder, cfg: Config) -> str:
    """A pseudo-labelled run's mark: "<n> from <source>"; empty for a run without pseudo-labels."""
    if not cfg.pseudo_source:
        return ""
    count = len(run.read_pseudo_labels()) if run.pseudo_labels.exists() else 0
    return f"{count} from {cfg.pseudo_source}"


def run_task(cfg: Config) -> str:
    """The run's task as 01 saved it; a config from before the task setting is a multiclass run."""
    return cfg.task if cfg.task in TASK_ORDER else "multiclass"


def blend_row(folder: BlendFolder) -> dict[str, Any]:
    """The leaderboard row of one blend: its out-of-fold score in its task's score column, its nested
    estimate, and its test scores."""
    record = read_blend(folder.name)
    task = task_named(record.task)
    oof, nested, test = (record.scores.get(figure) or {} for figure in ("oof", "nested", "test"))
    row: dict[str, Any] = {
        "run": record.name,
        "kind": "blend",
        "task": record.task,
        "backbone": f"{record.method} blend of {len(record.members)} runs",
        "finished": folder.submission.exists(),
        task.score_column: oof.get(task.view_metric, np.nan),
        "nested_score": nested.get(task.view_metric, np.nan),
    }
    return row | {column: test[key] for key, column in task.test_columns.items() if key in test}


def build_leaderboard() -> pd.DataFrame:
    """One row per folder of outputs/runs that has a metrics.csv (it trained) and per complete blend,
    ranked within each task: best val_acc_tta (multiclass) or val_map_tta (multilabel) first."""
    runs = [RunFolder(d) for d in sorted(runs_dir().glob("*"))]
    rows = [run_row(r) for r in runs if r.metrics.exists()]
    rows += [row for b in written_blends() if (row := _read(b.record, lambda p, b=b: blend_row(b)))]
    frame = pd.DataFrame(rows, columns=COLUMNS)
    return rank_runs(frame, "val_acc_tta")


def sort_column(column: str, task: str) -> str:
    """The column that ranks (and plots) a task's runs when `column` is asked for: itself when the task
    fills it or no task owns it, else its counterpart of the task (or the task's default score)."""
    if column in ONLY[task] or not any(column in columns for columns in ONLY.values()):
        return column
    return COUNTERPART[task].get(column, TASKS[task].score_column)


def rank_runs(frame: pd.DataFrame, by: str) -> pd.DataFrame:
    """The runs of each task best first by one column (lowest first for losses, times and sizes; NaN
    last), multiclass runs first, with each run's `rank` within its task: runs of different tasks are
    never ranked together."""
    _require("sort_by", by, SORTABLE)
    tasks = frame["task"].fillna("multiclass")
    parts = []
    for task in TASK_ORDER:
        part = frame[tasks == task]
        if part.empty:
            continue
        keys = list(dict.fromkeys([sort_column(by, task), TASKS[task].best_column]))
        ascending = [k in LOWER_IS_BETTER for k in keys]
        part = part.sort_values(keys, ascending=ascending, na_position="last", kind="stable")
        parts.append(part.assign(rank=np.arange(1, len(part) + 1)))
    return pd.concat(parts, ignore_index=True) if parts else frame.reset_index(drop=True)


def by_task(frame: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """The leaderboard split by task, each part with the columns its task fills (for display)."""
    tasks = frame["task"].fillna("multiclass")
    out = {}
    for task in TASK_ORDER:
        part = frame[tasks == task]
        if not part.empty:
            other = [c for name, columns in ONLY.items() if name != task for c in columns]
            out[task] = part.drop(columns=other).reset_index(drop=True)
    return out


def without_unused(frame: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """The frame without those of `columns` that no row fills (NaN or empty text)."""
    return frame.drop(columns=[c for c in columns if frame[c].replace("", np.nan).isna().all()])


def display_tables(frame: pd.DataFrame, sort_by: str) -> list[tuple[str, pd.DataFrame]]:
    """06's tables, titled: per task, its runs' scores ranked by `sort_by` (or the task's counterpart of
    it, named in the title), then how each run was made and what it cost (DETAILS, without the occasional
    ones no run of the task has)."""
    tables = []
    for task, runs in by_task(rank_runs(frame, sort_by)).items():
        tables.append(
            (f"{task} runs, ranked by {sort_column(sort_by, task)}", runs.drop(columns=["task", *DETAILS]))
        )
        details = without_unused(runs[["run", "rank", *DETAILS]], OCCASIONAL_DETAILS)
        tables.append((f"{task} runs: backbone, size, loss and cost", details))
    return tables


def show_leaderboard(frame: pd.DataFrame, accuracy: str = "val_acc_tta") -> Figure:
    """Score against seconds per epoch, one labelled point per run, marker area by parameter count: one
    panel per task, `accuracy` for multiclass runs and its mAP counterpart for multilabel ones."""
    _require("accuracy", accuracy, ACCURACIES)
    parts = by_task(frame) or {"multiclass": frame}
    fig, axes = plt.subplots(1, len(parts), figsize=(7 * len(parts), 4.5), squeeze=False)
    for ax, (task, part) in zip(axes[0], parts.items(), strict=True):
        _plot_runs(ax, part, sort_column(accuracy, task), task if len(parts) > 1 else "")
    fig.tight_layout()
    return fig


def _plot_runs(ax, frame: pd.DataFrame, accuracy: str, task: str) -> None:
    shown = frame.dropna(subset=[accuracy, "seconds_per_epoch"])
    title = f"{accuracy} against training time per epoch" + (f" ({task} runs)" if task else "")
    ax.set(xlabel="seconds per epoch", ylabel=accuracy, title=title)
    if shown.empty:
        ax.text(
            0.5,
            0.5,
            f"no run has both {accuracy} and seconds_per_epoch yet",
            ha="center",
            transform=ax.transAxes,
        )
        return
    params = shown["parameters"].astype(float).fillna(0)
    sizes = 40 + 600 * np.sqrt(params / params.max()) if params.max() > 0 else 40
    ax.scatter(
        shown["seconds_per_epoch"], shown[accuracy], s=sizes, alpha=0.5, color="tab:blue", edgecolors="black"
    )
    for r in shown.itertuples():
        size = "?" if pd.isna(r.parameters) else f"{r.parameters / 1e6:.2f} M"
        ax.annotate(
            f"{r.run} ({size})",
            (r.seconds_per_epoch, getattr(r, accuracy)),
            fontsize=8,
            xytext=(6, 4),
            textcoords="offset points",
        )
    ax.margins(0.2)
    ax.grid(alpha=0.3)


def write_leaderboard(accuracy: str = "val_acc_tta") -> pd.DataFrame:
    """Rebuild the leaderboard from outputs/runs and write leaderboard.csv and leaderboard.png atomically."""
    frame = build_leaderboard()
    atomic_to_csv(frame, leaderboard_csv())
    fig = show_leaderboard(frame, accuracy)
    atomic_savefig(fig, leaderboard_png())
    plt.close(fig)
    return frame


def check_compare_parameters(cell_sources: list[str], sort_by: str, accuracy: str) -> None:
    """06's parameters: refuse a name its parameters cell does not declare (papermill only warns) and bad values."""
    own = parameter_names(cell_sources[:1])
    unknown = sorted(set(parameter_names(cell_sources)) - set(own))
    if unknown:
        raise ConfigError(f"parameter(s) {unknown} are not parameters of 06_compare; it takes {own}")
    _require("sort_by", sort_by, SORTABLE)
    _require("accuracy", accuracy, ACCURACIES)


def _require(name: str, value: str, choices: list[str]) -> None:
    if value not in choices:
        raise ConfigError(f"{name}={value!r} is not one of the leaderboard's columns {choices}")


# -- the pieces of a row ---------------------------------------------------------------------------------
def _read(path: Path, read: Callable[[Path], dict[str, Any]]) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        return read(path)
    except Exception as e:  # any unreadable file: this run's piece is NaN, the other runs still show
        warnings.warn(f"leaderboard: cannot read {path}: {type(e).__name__}: {e}", stacklevel=2)
        return {}


def _training_columns(metrics: pd.DataFrame) -> dict[str, float]:
    folds = metrics.groupby("fold")
    best = {
        column: folds[score].max().mean()
        for column, score in (("best_val_acc", "val_acc"), ("best_val_map", "val_map"))
        if score in metrics
    }
    return best | {
        "best_val_loss": folds["val_loss"].min().mean(),
        "train_seconds": metrics["seconds"].sum(),
        "seconds_per_epoch": metrics["seconds"].mean(),
        "images_per_s": metrics["images_per_s"].mean(),
    }


def _evaluation_columns(evaluation: dict[str, Any]) -> dict[str, float]:
    keys = {
        "val_acc": metric_key("accuracy", tta=False),
        "val_acc_tta": metric_key("accuracy", tta=True),
        "val_map": metric_key("map", tta=False),
        "val_map_tta": metric_key("map", tta=True),
        "val_f1_micro_tuned_tta": metric_key("f1_micro_tuned", tta=True),
        "val_f1_macro_tuned_tta": metric_key("f1_macro_tuned", tta=True),
    }
    return {column: evaluation[key] for column, key in keys.items() if key in evaluation}


def _has_test_set(cfg: Config) -> bool:
    """Whether the run's data has a test set for 05 to predict; one 05 cannot read counts as one."""
    data_dir = data_dir_of(cfg)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # 05 warns about unlisted test images, not the leaderboard
            return list_test_images(cfg, data_dir, detect_layout(cfg, data_dir)) is not None
    except (KitError, OSError):
        return True


def _oof_accuracy(oof: pd.DataFrame) -> float:
    return float((oof["label"] == oof["predicted"]).mean()) if len(oof) else np.nan


def _test_columns(run: RunFolder, cfg: Config) -> dict[str, float]:
    """05's test probabilities scored against the test set's labels (none: the columns stay empty)."""
    data_dir = data_dir_of(cfg)
    probabilities = run.read_test_probabilities()
    rows = probabilities.index.to_frame(index=False)
    # labels in the listing come from a test_csv or test/<class>/ folders; else from test_labels.csv
    has_listing = cfg.test_csv or (data_dir / "test").is_dir()
    listed = list_test_images(cfg, data_dir, detect_layout(cfg, data_dir)) if has_listing else None
    if listed is not None and "label" in listed.columns:
        rows = rows.merge(listed[["id", "label"]].astype(str), on="id", how="left")
    truth = test_labels(cfg, data_dir, rows, list(probabilities.columns))
    if truth is None or not len(truth):
        return {}
    task = task_for(cfg)
    # the thresholds 05 decided with, as thresholds.json holds them
    thresholds = _saved_thresholds(run) if run.thresholds.exists() else None
    if task.tunes_thresholds and thresholds is None:  # none tuned: only the threshold-free score
        return {"test_map": macro_map(truth, probabilities.to_numpy())}
    scores = task.summary(truth, probabilities.to_numpy(), thresholds)
    return {column: scores[key] for key, column in task.test_columns.items()}


def _saved_thresholds(run: RunFolder) -> TunedThresholds:
    """The per-class thresholds of the run's thresholds.json (what 05 decided with); the rest of the
    record is 04's description of how they were tuned, which scoring does not need."""
    saved = run.read_thresholds()
    return TunedThresholds(saved["classes"], 0.5, 0.5, saved["per_class"], "per_class", "", [], 0)


def _count(path: Path) -> int:
    """The checkpoint's model size as 03 shows it (helpers.model.count_parameters)."""
    checkpoint = load_checkpoint(path, mmap=True)
    return count_parameters(skeleton(checkpoint["config"]["backbone"], len(checkpoint["classes"])))


@exits_on_kit_error("python -m helpers.leaderboard")
def main() -> int:
    frame = write_leaderboard()
    with pd.option_context("display.max_columns", None, "display.width", 200):
        for task, runs in by_task(frame).items():
            shown = without_unused(runs, [*OCCASIONAL_DETAILS, "nested_score"])
            print(f"{task} runs:\n{shown.round(4).to_string(index=False)}\n")
    if frame.empty:
        print("no trained runs yet")
    print(f"wrote {leaderboard_csv()} and {leaderboard_png()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
