"""The multi-label demo: what `make demo-multilabel` reaches, and in how much training time.

    python benchmarks/bench_multilabel.py [--json FILE] [--keep DIR]

Runs the series of `make demo-multilabel` (resnet18 from scratch at 32 px, 15 epochs, on
data/digits_multilabel: 64 px tiles of 1-4 digits, labelled with the set of digits shown) once into a temp KIT_OUTPUTS, then reads what
the run folder holds: 04's out-of-fold macro and micro mAP, F1 at 0.5 and at the tuned thresholds (the
latter optimistic: tuned on the same rows), 05's test mAP and F1 (test_labels.csv), the training seconds of
metrics.csv and the series' wall time. Goal: macro mAP >= 0.95 within two minutes of training on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from cli import report, timed_series

RUN = "resnet18_multilabel"
# the series `make demo-multilabel` runs (Makefile: demo-multilabel, MULTILABEL_PARAMS)
COMMAND = [
    "-m", "helpers.runner", "--backbone", "resnet18", "-p", "data_dir", "data/digits_multilabel",
    "-p", "label_col", "labels", "-p", "task", "multilabel", "-p", "img_size", "32",
    "-p", "epochs", "15", "-p", "pretrained", "False", "-p", "run_name", RUN,
]  # fmt: skip
GOAL_MAP, GOAL_TRAIN_S = 0.95, 120


def scores(outputs: Path) -> dict:
    """The run's figures, read back from its folder by the kit's own readers."""
    os.environ["KIT_OUTPUTS"] = str(outputs)
    from helpers.leaderboard import run_row
    from helpers.run_folder import RunFolder

    run = RunFolder(outputs / "runs" / RUN)
    evaluation = run.read_evaluation()
    metrics = run.read_metrics()
    row = run_row(run)
    cfg = run.read_config()
    return {
        "recipe": f"{cfg.backbone} at {cfg.img_size} px, {cfg.epochs} epochs, folds {cfg.folds}, "
        f"loss {cfg.loss}, lr {cfg.lr}, batch {cfg.batch_size}",
        "images": evaluation["images"],
        "val_map": evaluation["val_map"],
        "val_map_tta": evaluation["val_map_tta"],
        "val_map_micro_tta": evaluation["val_map_micro_tta"],
        "val_f1_micro_tta": evaluation["val_f1_micro_tta"],
        "val_f1_micro_tuned_tta": evaluation["val_f1_micro_tuned_tta"],
        "val_subset_accuracy_tuned_tta": evaluation["val_subset_accuracy_tuned_tta"],
        "test_map": row.get("test_map"),
        "test_f1_micro": row.get("test_f1_micro"),
        "test_f1_macro": row.get("test_f1_macro"),
        "train_seconds": float(metrics["seconds"].sum()),
        "epochs": int(len(metrics)),
        "best_epoch_val_map": float(metrics["val_map"].max()),
    }


def run(keep: Path | None = None) -> dict:
    with timed_series(COMMAND, keep, "bench_multilabel_") as series:
        result = scores(series.outputs)
    return {
        "command": "python " + " ".join(COMMAND),
        "wall_seconds": series.wall_seconds,
        "load_avg": series.load_avg,
        **result,
    }


def markdown(r: dict) -> list[str]:
    reached = r["val_map_tta"] >= GOAL_MAP and r["train_seconds"] <= GOAL_TRAIN_S
    verdict = "meets" if reached else "**misses**"
    return [
        f"`{r['command']}` (what `make demo-multilabel` runs) into a temp KIT_OUTPUTS: {r['recipe']}; "
        f"{r['wall_seconds']:.0f} s for the whole series; load average {r['load_avg'][0]:.1f} before, "
        f"{r['load_avg'][-1]:.1f} after (a shared machine: times vary run to run).",
        "",
        "| figure | value |",
        "|---|---:|",
        f"| training time (metrics.csv, {r['epochs']} epochs, validation included) | {r['train_seconds']:.0f} s |",
        f"| out-of-fold macro mAP, no TTA / with TTA ({r['images']} images) | {r['val_map']:.4f} / "
        f"**{r['val_map_tta']:.4f}** |",
        f"| out-of-fold micro mAP with TTA | {r['val_map_micro_tta']:.4f} |",
        f"| out-of-fold micro-F1 at 0.5 / at the tuned per-class thresholds (optimistic) | "
        f"{r['val_f1_micro_tta']:.4f} / {r['val_f1_micro_tuned_tta']:.4f} |",
        f"| out-of-fold subset accuracy at the tuned thresholds (optimistic) | "
        f"{r['val_subset_accuracy_tuned_tta']:.4f} |",
        f"| test macro mAP (300 tiles of unseen digits) | **{r['test_map']:.4f}** |",
        f"| test micro-F1 / macro-F1 at the tuned thresholds | {r['test_f1_micro']:.4f} / {r['test_f1_macro']:.4f} |",
        "",
        f"Goal: macro mAP >= {GOAL_MAP} within {GOAL_TRAIN_S} s of training on 2 cores: {verdict} it.",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path)
    parser.add_argument("--keep", type=Path, help="KIT_OUTPUTS to use and keep (default: a temp folder)")
    args = parser.parse_args(argv)
    return report(run(args.keep), args.json, markdown)


if __name__ == "__main__":
    sys.exit(main())
