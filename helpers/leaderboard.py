"""One row per run, for comparing backbones: `python -m helpers.leaderboard` rebuilds and prints it.

Everything is read back from the run folders (metrics.csv, evaluation.json, oof.csv, a checkpoint,
test_probabilities.csv), never from memory, so the table can be rebuilt at any time, also mid-sweep. A run
that stopped early simply has NaN where its missing files would have been; an unreadable file is a warning
and NaN, never a crash, so one broken run cannot hide the others.
"""

from __future__ import annotations

import json
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure

from helpers.atomic import atomic_savefig, atomic_to_csv
from helpers.checkpoints import load_checkpoint
from helpers.config import Config, ConfigError, parameter_names
from helpers.holdout import test_labels
from helpers.paths import demo_data_dir, outputs_dir, resolve_path, runs_dir
from helpers.runner import FINISHED

COLUMNS = [
    "run",
    "backbone",
    "img_size",
    "epochs",
    "finished",  # the whole series completed (finished.json)
    "val_acc_tta",  # out-of-fold accuracy with the run's TTA views (evaluation.json)
    "val_acc",  # out-of-fold accuracy without TTA (evaluation.json)
    "best_val_acc",  # mean over trained folds of each fold's best epoch (metrics.csv)
    "best_val_loss",  # mean over trained folds of each fold's lowest validation loss (metrics.csv)
    "oof_acc",  # label == predicted in oof.csv
    "test_acc",  # 05's test predictions against data_dir/test_labels.csv, when the data has one
    "train_seconds",  # all epochs of all folds, validation included
    "seconds_per_epoch",
    "images_per_s",  # training images per second, mean over epochs
    "parameters",  # tensor elements in a fold's best_score state dict (buffers included)
]
ACCURACIES = ["val_acc_tta", "val_acc", "best_val_acc", "oof_acc", "test_acc"]
LOWER_IS_BETTER = {"best_val_loss", "train_seconds", "seconds_per_epoch", "parameters"}
SORTABLE = [c for c in COLUMNS if c not in {"run", "backbone", "finished"}]


def leaderboard_csv() -> Path:
    return outputs_dir() / "leaderboard.csv"


def leaderboard_png() -> Path:
    return outputs_dir() / "leaderboard.png"


def run_row(run_dir: Path) -> dict[str, Any]:
    """The leaderboard row of one run folder; a piece whose file is missing or unreadable is left out."""
    config = _read(run_dir, "config.json", lambda p: json.loads(p.read_text()))
    row: dict[str, Any] = {
        "run": run_dir.name,
        "backbone": config.get("backbone", np.nan),
        "img_size": config.get("img_size", np.nan),
        "epochs": config.get("epochs", np.nan),
        "finished": (run_dir / FINISHED).exists(),
    }
    row |= _read(run_dir, "metrics.csv", _training_columns)
    row |= _read(run_dir, "evaluation.json", _evaluation_columns)
    row |= _read(run_dir, "oof.csv", lambda p: {"oof_acc": _oof_accuracy(p)})
    row |= _read(run_dir, "test_probabilities.csv", lambda p: {"test_acc": _test_accuracy(p, config)})
    checkpoints = sorted((run_dir / "checkpoints").glob("fold*_best_score.pt"))
    if checkpoints:
        row |= _read(run_dir, f"checkpoints/{checkpoints[0].name}", lambda p: {"parameters": _count(p)})
    return row


def build_leaderboard() -> pd.DataFrame:
    """One row per folder of outputs/runs that has a metrics.csv (it trained), best val_acc_tta first."""
    trained = sorted(d for d in runs_dir().glob("*") if (d / "metrics.csv").exists())
    frame = pd.DataFrame([run_row(d) for d in trained], columns=COLUMNS)
    return rank_runs(frame, "val_acc_tta")


def rank_runs(frame: pd.DataFrame, by: str) -> pd.DataFrame:
    """The runs best first by one column (lowest first for losses, times and sizes), NaN last."""
    _require("sort_by", by, SORTABLE)
    keys = list(dict.fromkeys([by, "best_val_acc"]))
    ascending = [k in LOWER_IS_BETTER for k in keys]
    return frame.sort_values(keys, ascending=ascending, na_position="last", kind="stable").reset_index(
        drop=True
    )


def show_leaderboard(frame: pd.DataFrame, accuracy: str = "val_acc_tta") -> Figure:
    """Accuracy against seconds per epoch, one labelled point per run, marker area by parameter count."""
    _require("accuracy", accuracy, ACCURACIES)
    shown = frame.dropna(subset=[accuracy, "seconds_per_epoch"])
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.set(xlabel="seconds per epoch", ylabel=accuracy, title=f"{accuracy} against training time per epoch")
    if shown.empty:
        ax.text(
            0.5,
            0.5,
            f"no run has both {accuracy} and seconds_per_epoch yet",
            ha="center",
            transform=ax.transAxes,
        )
        return fig
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
    fig.tight_layout()
    return fig


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
def _read(run_dir: Path, name: str, read: Callable[[Path], dict[str, Any]]) -> dict[str, Any]:
    path = run_dir / name
    if not path.exists():
        return {}
    try:
        return read(path)
    except Exception as e:  # any unreadable file: this run's piece is NaN, the other runs still show
        warnings.warn(f"leaderboard: cannot read {path}: {type(e).__name__}: {e}", stacklevel=2)
        return {}


def _training_columns(path: Path) -> dict[str, float]:
    metrics = pd.read_csv(path)
    folds = metrics.groupby("fold")
    return {
        "best_val_acc": folds["val_acc"].max().mean(),
        "best_val_loss": folds["val_loss"].min().mean(),
        "train_seconds": metrics["seconds"].sum(),
        "seconds_per_epoch": metrics["seconds"].mean(),
        "images_per_s": metrics["images_per_s"].mean(),
    }


def _evaluation_columns(path: Path) -> dict[str, float]:
    evaluation = json.loads(path.read_text())
    tta = [k for k in evaluation if k.startswith("TTA")]
    return {
        "val_acc": evaluation["no TTA"]["accuracy"],
        **({"val_acc_tta": evaluation[tta[0]]["accuracy"]} if tta else {}),
    }


def _oof_accuracy(path: Path) -> float:
    oof = pd.read_csv(path, dtype={"label": str, "predicted": str})
    return float((oof["label"] == oof["predicted"]).mean()) if len(oof) else np.nan


def _test_accuracy(path: Path, config: dict[str, Any]) -> float:
    """Share of test images whose most probable class is the one in the data's test_labels.csv."""
    cfg = Config.from_dict(config)
    data_dir = resolve_path(cfg.data_dir) if cfg.data_dir else demo_data_dir()
    probabilities = pd.read_csv(path, dtype={"id": str}).set_index("id").astype(float)
    truth = test_labels(cfg, data_dir, probabilities.index.to_frame(), list(probabilities.columns))
    if truth is None or not len(truth):
        return np.nan
    return float((probabilities.to_numpy().argmax(1) == truth).mean())


def _count(path: Path) -> int:
    state = load_checkpoint(path, mmap=True)["model"]
    return sum(t.numel() for t in state.values() if isinstance(t, torch.Tensor))


def main() -> int:
    frame = write_leaderboard()
    with pd.option_context("display.max_columns", None, "display.width", 200):
        print(frame.round(4).to_string(index=False) if len(frame) else "no trained runs yet")
    print(f"wrote {leaderboard_csv()} and {leaderboard_png()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
