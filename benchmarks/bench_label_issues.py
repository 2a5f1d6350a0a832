"""Finding label errors: flip the labels of known digits images, train, and see how high cleanlab ranks them.

    python benchmarks/bench_label_issues.py [--quick] [--json FILE]

Copies the demo digits (1,437 training images), gives FLIPPED of them a wrong label (a random other class,
seeded), trains test_resnet at 32 px on every fold (so every row has an out-of-fold probability), runs 04's
out-of-fold prediction and helpers.label_issues, and reports precision and recall at k = the number flipped
(the share of the k lowest-scored rows that were flipped), how many rows cleanlab flags, and how many of
them were flipped. --quick: 1 epoch instead of 3.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

FLIPPED = 40
BACKBONE = "test_resnet"


def flip_labels(data_dir: Path, n: int, seed: int = 0) -> set[str]:
    """Give n rows of data_dir/train.csv another class's label (the same n for a seed); returns their ids."""
    import numpy as np
    import pandas as pd

    table = pd.read_csv(data_dir / "train.csv", dtype=str)
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(table), size=n, replace=False)
    classes = sorted(table["label"].unique())
    for row in chosen:
        given = table.at[row, "label"]
        table.at[row, "label"] = rng.choice([c for c in classes if c != given])
    table.to_csv(data_dir / "train.csv", index=False)
    return set(table.loc[chosen, "id"])


def experiment(work: Path, epochs: int, flipped: int = FLIPPED) -> dict:
    """Train on the flipped copy and score the ranking; everything is written under `work`."""
    os.environ["KIT_OUTPUTS"] = str(work / "outputs")
    import torch

    from helpers.config import Config
    from helpers.dataset import prepare_dataset
    from helpers.demo import ensure_demo_data
    from helpers.inference import trained_checkpoints
    from helpers.label_issues import precision_at_k
    from helpers.reports import evaluate_oof
    from helpers.run_folder import RunFolder
    from helpers.train import train_folds

    data_dir = work / "digits"
    shutil.copytree(ensure_demo_data(), data_dir)
    wrong = flip_labels(data_dir, flipped)
    cfg = Config(
        pretrained=False,
        data_dir=str(data_dir),
        backbone=BACKBONE,
        img_size=32,
        epochs=epochs,
        batch_size=32,
        folds=[],
        num_workers=0,
        run_name="flipped",
    )
    run = RunFolder.of(cfg).create()
    info = prepare_dataset(cfg, run)
    run.write_config(cfg)
    started = time.perf_counter()
    train_folds(cfg, info, run, torch.device("cpu"))
    oof = evaluate_oof(
        cfg, run, info, trained_checkpoints(run, cfg.checkpoint, cfg.n_folds), torch.device("cpu")
    )
    ranked = oof.label_issues(" ")
    flagged = set(ranked.loc[ranked["issue"], "id"])
    return {
        "backbone": BACKBONE,
        "img_size": 32,
        "epochs": epochs,
        "folds": cfg.n_folds,
        "images": len(ranked),
        "flipped": flipped,
        "oof_accuracy": float((oof.predicted == oof.labels).mean()),
        "precision_at_k": precision_at_k(ranked["id"], wrong, flipped),
        "precision_at_half_k": precision_at_k(ranked["id"], wrong, flipped // 2),
        "flagged": len(flagged),
        "flagged_and_flipped": len(flagged & wrong),
        "seconds": time.perf_counter() - started,
    }


def markdown(r: dict) -> list[str]:
    return [
        f"{r['flipped']} of the {r['images']} digits training images given a wrong label (seeded); "
        f"{r['backbone']} at {r['img_size']} px, {r['epochs']} epoch(s) on each of the {r['folds']} folds; "
        "helpers.label_issues (cleanlab) on 04's out-of-fold probabilities.",
        "",
        "| OOF accuracy | precision at k = flipped | precision at k/2 | rows flagged | flagged and flipped | training + OOF s |",
        "|---:|---:|---:|---:|---:|---:|",
        f"| {r['oof_accuracy']:.3f} | **{r['precision_at_k']:.3f}** | {r['precision_at_half_k']:.3f} | "
        f"{r['flagged']} | {r['flagged_and_flipped']} of {r['flipped']} | {r['seconds']:.0f} |",
    ]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    from helpers.allocator import retain_freed_memory

    retain_freed_memory()
    with tempfile.TemporaryDirectory() as tmp:
        result = experiment(Path(tmp), epochs=1 if args.quick else 3)
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
