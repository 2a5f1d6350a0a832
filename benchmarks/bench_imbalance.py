"""Class imbalance: the kit's options against none, on digits with half the classes at a tenth of their images.

    python benchmarks/bench_imbalance.py [--quick] [--json FILE]

The demo digits' training table keeps every image of digits 0-4 and a tenth of those of 5-9 (seeded, the
same for every run). Each variant trains fold 0 of it (test_resnet at 32 px) at two budgets, a short and a
longer one (does an option only make up for too few epochs?), and its `last` checkpoint (the end of the
budget, not the epoch validation liked best) predicts the demo's held-out test images, which are balanced
(about 36 per digit): macro-F1, accuracy, and the mean recall of the rare digits 5-9 and of the common
ones. Each variant runs once per seed (folds, initialisation and draws all follow it); the report gives
medians and every seed's figure. --quick: one seed, one budget of 2 epochs.
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cli import quick_main

BACKBONE, IMG_SIZE = "test_resnet", 32
RARE = range(5, 10)  # the digits kept at a tenth
KEEP = 0.1
BATCH_SIZE = 32
BUDGETS = (6, 15)  # epochs
SEEDS = (0, 1, 2, 3, 4)


@dataclass(frozen=True)
class Variant:
    name: str
    settings: dict[str, Any]


VARIANTS = [
    Variant("none (kit defaults)", {}),
    Variant("class_weights=balanced", dict(class_weights="balanced")),
    Variant("sampler=balanced", dict(sampler="balanced")),
    Variant("loss=focal (gamma 2)", dict(loss="focal")),
    Variant("sampler and class_weights balanced", dict(sampler="balanced", class_weights="balanced")),
]


def _environment() -> None:
    """Quiet imports and bars, and one torch thread: the scores are the figures here, and on a shared 2-core
    machine torch's spinning threads slow a tiny model down several times (benchmarks/RESULTS.md findings)."""
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")
    import torch

    torch.set_num_threads(1)


def imbalanced_digits(demo: Path, dest: Path) -> dict[str, int]:
    """The demo's training table with a tenth of each rare digit's rows (images linked, not copied);
    returns the rows per digit (keyed by its name, as JSON keeps it)."""
    import pandas as pd

    dest.mkdir(parents=True)
    table = pd.read_csv(demo / "train.csv")
    rare = table["label"].isin(RARE)
    kept = table[rare].groupby("label").sample(frac=KEEP, random_state=0)
    pd.concat([table[~rare], kept]).sort_index().to_csv(dest / "train.csv", index=False)
    (dest / "train_image").symlink_to(demo / "train_image")
    return {
        str(k): int(v)
        for k, v in pd.read_csv(dest / "train.csv")["label"].value_counts().sort_index().items()
    }


def test_rows(demo: Path, classes: list[str]):
    """The demo's held-out test images with their class indices."""
    import pandas as pd

    rows = pd.read_csv(demo / "test_labels.csv", dtype=str)
    rows["path"] = [str(demo / "test_image" / f"{i}.jpg") for i in rows["id"]]
    rows["label_idx"] = rows["label"].map({c: i for i, c in enumerate(classes)})
    return rows


def one_run(data: Path, demo: Path, variant: Variant, seed: int, epochs: int) -> dict[str, Any]:
    """Train fold 0 with the variant's settings; score its last checkpoint on the balanced test images."""
    import numpy as np
    import torch
    from sklearn.metrics import f1_score, recall_score

    from helpers.config import Config
    from helpers.dataset import prepare_dataset
    from helpers.inference import predict_checkpoints
    from helpers.run_folder import RunFolder
    from helpers.train import train_fold

    cfg = Config(
        pretrained=False,
        run_name=f"imbalance_{epochs}_{VARIANTS.index(variant)}_{seed}",
        data_dir=str(data),
        backbone=BACKBONE,
        img_size=IMG_SIZE,
        seed=seed,
        num_workers=0,
        epochs=epochs,
        batch_size=BATCH_SIZE,
        **variant.settings,
    )
    info, run = prepare_dataset(cfg), RunFolder.of(cfg).create()
    cfg = cfg.replace(task=info.task)  # resolved as 01 resolves it: prediction needs it
    started = time.perf_counter()
    train_fold(cfg, info, 0, run, torch.device("cpu"))
    seconds = time.perf_counter() - started
    test = test_rows(demo, info.classes)
    prediction = predict_checkpoints(
        cfg, [run.checkpoint(0, "last")], test, ["identity"], torch.device("cpu")
    )
    labels, predicted = test["label_idx"].to_numpy(), prediction.probabilities.argmax(1)
    everyone = np.arange(info.num_classes)
    recall = recall_score(labels, predicted, labels=everyone, average=None, zero_division=0)
    rare = [info.classes.index(str(d)) for d in RARE]
    return {
        "variant": variant.name,
        "epochs": epochs,
        "seed": seed,
        "macro_f1": float(f1_score(labels, predicted, labels=everyone, average="macro", zero_division=0)),
        "accuracy": float((labels == predicted).mean()),
        "rare_recall": float(recall[rare].mean()),
        "common_recall": float(np.delete(recall, rare).mean()),
        "worst_recall": float(recall.min()),
        "train_images": int((info.table["fold"] != 0).sum()),
        "test_images": len(test),
        "seconds": seconds,
    }


def run(quick: bool) -> dict[str, Any]:
    _environment()
    from helpers.demo import ensure_demo_data

    started, load = time.perf_counter(), [os.getloadavg()]
    work = Path(tempfile.mkdtemp(prefix="bench_imbalance_"))
    try:
        demo = ensure_demo_data()
        data = work / "digits_imbalanced"
        counts = imbalanced_digits(demo, data)
        rows = [
            one_run(data, demo, variant, seed, epochs)
            for epochs in ((2,) if quick else BUDGETS)
            for seed in (SEEDS[:1] if quick else SEEDS)
            for variant in VARIANTS
        ]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    load.append(os.getloadavg())
    return {
        "quick": quick,
        "counts": counts,
        "rows": rows,
        "load": load,
        "seconds": time.perf_counter() - started,
    }


def _span(values: list[int]) -> str:
    return f"{min(values)}" if min(values) == max(values) else f"{min(values)}-{max(values)}"


def markdown(r: dict[str, Any]) -> list[str]:
    groups: dict[tuple[int, str], list[dict[str, Any]]] = {}
    for row in r["rows"]:
        groups.setdefault((row["epochs"], row["variant"]), []).append(row)
    seeds = sorted({row["seed"] for row in r["rows"]})
    budgets = sorted({row["epochs"] for row in r["rows"]})
    counts = r["counts"]
    common = [n for digit, n in counts.items() if int(digit) not in RARE]
    rare = [counts[str(digit)] for digit in RARE]
    first = r["rows"][0]
    lines = [
        f"The demo digits with digits 5-9 at a tenth of their images ({_span(common)} training images per "
        f"common digit, {_span(rare)} per rare one; seeded); {BACKBONE} at {IMG_SIZE} px, fold 0 "
        f"({first['train_images']} training images), {' or '.join(map(str, budgets))} epochs of batch "
        f"{BATCH_SIZE}, AdamW 3e-3 one-cycle, label smoothing 0.1, light augmentation; the `last` checkpoint "
        f"scored on the {first['test_images']} balanced held-out test images. Medians over seeds {seeds} "
        "(folds, initialisation and draws follow the seed); rare recall: the mean recall of digits 5-9; "
        "gain: its median less that of no option at the same budget.",
        "",
        "| epochs | variant | macro-F1 (median) | rare recall (median) | gain | common recall | accuracy | "
        "worst class recall | rare recall per seed |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for (epochs, name), rows in groups.items():
        med = {k: statistics.median(row[k] for row in rows) for k in rows[0] if isinstance(rows[0][k], float)}
        baseline = statistics.median(row["rare_recall"] for row in groups[(epochs, VARIANTS[0].name)])
        per_seed = ", ".join(f"{row['rare_recall']:.3f}" for row in rows)
        lines.append(
            f"| {epochs} | {name} | **{med['macro_f1']:.3f}** | **{med['rare_recall']:.3f}** | "
            f"{med['rare_recall'] - baseline:+.3f} | {med['common_recall']:.3f} | {med['accuracy']:.3f} | "
            f"{med['worst_recall']:.3f} | {per_seed} |"
        )
    start, end = r["load"][0], r["load"][-1]
    lines += [
        "",
        f"Scores are the figures here; times are not compared (load average {start[0]:.1f} at the start, "
        f"{end[0]:.1f} at the end: other jobs shared the 2 cores; one torch thread). {r['seconds']:.0f} s in all.",
    ]
    return lines


if __name__ == "__main__":
    sys.exit(quick_main(__doc__, "bench_imbalance_out_", run, markdown))
