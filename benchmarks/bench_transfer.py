"""Fine-tuning a pretrained backbone: scratch, the scratch recipe on pretrained weights, the transfer recipe.

    python benchmarks/bench_transfer.py [--quick] [--json FILE]

No weights can be downloaded, so the benchmark makes its own: resnet18 (32 px) is pretrained on the demo
digits 0-4 (all their training images, fold 0 validated), its best checkpoint saved as a weights file;
then each recipe fine-tunes on digits 5-9 from `SHOTS` training images per class through `weights_file`
(a fresh 5-class head), at the same small budget, and is scored on `VALIDATE` other images per class. Each variant
runs once per draw of the few training images (a different seed each), and the report gives the median
and every draw's accuracy after the last epoch. --quick: one draw, the three main variants.
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

BACKBONE, IMG_SIZE = "resnet18", 32
PRETRAIN_EPOCHS = 4
SHOTS = 20  # fine-tuning images per class
VALIDATE = 60  # validation images per class, drawn from the rest
FINETUNE = dict(epochs=8, batch_size=20)  # the fixed small budget: 5 updates per epoch, 40 in all
DRAWS = 4


@dataclass(frozen=True)
class Variant:
    name: str
    pretrained: bool
    settings: dict[str, Any]


VARIANTS = [
    Variant("scratch (kit defaults)", False, {}),
    Variant("pretrained, scratch recipe (kit defaults)", True, {}),
    Variant("pretrained, transfer recipe", True, dict(freeze_epochs=1, layer_decay=0.75)),
    Variant("pretrained, frozen epochs only", True, dict(freeze_epochs=1, layer_decay=1.0)),
    Variant("pretrained, layer decay 0.9 only", True, dict(freeze_epochs=0, layer_decay=0.9)),
]
QUICK_VARIANTS = VARIANTS[:3]


def _environment() -> None:
    """Quiet imports and bars, and one torch thread: accuracy is the figure here, and on a shared, loaded
    machine torch's spinning threads slow a tiny model down several times (benchmarks/RESULTS.md findings)."""
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")
    import torch

    torch.set_num_threads(1)


def _subset(demo: Path, labels: range, dest: Path) -> Path:
    """A CSV-layout dataset of the demo training images with these labels (the images linked, not copied)."""
    import pandas as pd

    dest.mkdir(parents=True)
    table = pd.read_csv(demo / "train.csv")
    table[table["label"].isin(labels)].to_csv(dest / "train.csv", index=False)
    (dest / "train_image").symlink_to(demo / "train_image")
    return dest


def _pretrain(data: Path, weights: Path) -> dict[str, Any]:
    """resnet18 trained from scratch on digits 0-4 with the kit's defaults; its best weights saved."""
    import torch

    from helpers.config import Config
    from helpers.dataset import prepare_dataset
    from helpers.run_folder import RunFolder
    from helpers.train import train_fold

    cfg = Config(
        run_name="transfer_pretrain",
        data_dir=str(data),
        backbone=BACKBONE,
        img_size=IMG_SIZE,
        epochs=PRETRAIN_EPOCHS,
    )
    info, run = prepare_dataset(cfg), RunFolder.of(cfg).create()
    metrics = train_fold(cfg, info, 0, run)
    best = torch.load(run.checkpoint(0, "best_score"), weights_only=True)
    torch.save({"state_dict": best["model"]}, weights)
    return {"val_acc": float(metrics["val_acc"].max()), "train_images": int((info.table["fold"] != 0).sum())}


def _finetune(data: Path, weights: Path, variant: Variant, draw: int) -> dict[str, Any]:
    """One variant on digits 5-9: SHOTS images per class (drawn by `draw`) train, VALIDATE of the others
    validate; the rest sit in a fold that is never used."""
    from helpers.config import Config
    from helpers.dataset import prepare_dataset
    from helpers.run_folder import RunFolder
    from helpers.train import train_fold

    cfg = Config(
        run_name=f"transfer_{VARIANTS.index(variant)}_{draw}",
        data_dir=str(data),
        backbone=BACKBONE,
        img_size=IMG_SIZE,
        n_folds=2,
        seed=draw,
        weights_file=str(weights) if variant.pretrained else "",
        **FINETUNE,
        **variant.settings,
    )
    info = prepare_dataset(cfg)
    drawn = info.table.groupby("label_idx").sample(SHOTS + VALIDATE, random_state=draw)
    few = drawn.groupby("label_idx").head(SHOTS).index
    info.table = info.table.loc[drawn.index].assign(fold=0)
    info.table.loc[few, "fold"] = 1  # fold 0 validates, so fold 1 (the few) is what trains
    started = time.perf_counter()
    metrics = train_fold(cfg, info, 0, RunFolder.of(cfg).create())
    return {
        "variant": variant.name,
        "draw": draw,
        "freeze_epochs": cfg.freeze_epochs,
        "layer_decay": cfg.layer_decay,
        "lr": cfg.lr,
        "val_acc": float(metrics["val_acc"].iloc[-1]),
        "best_val_acc": float(metrics["val_acc"].max()),
        "val_images": int((info.table["fold"] == 0).sum()),
        "seconds": time.perf_counter() - started,
    }


def run(quick: bool) -> dict[str, Any]:
    _environment()
    from helpers.demo import ensure_demo_data

    started, load = time.perf_counter(), [os.getloadavg()]
    work = Path(tempfile.mkdtemp(prefix="bench_transfer_"))
    try:
        demo = ensure_demo_data()
        weights = work / "resnet18_digits04.pth"
        pretrain = _pretrain(_subset(demo, range(0, 5), work / "digits04"), weights)
        target = _subset(demo, range(5, 10), work / "digits59")
        rows = [
            _finetune(target, weights, variant, draw)
            for draw in range(1 if quick else DRAWS)
            for variant in (QUICK_VARIANTS if quick else VARIANTS)
        ]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    load.append(os.getloadavg())
    return {
        "quick": quick,
        "pretrain": pretrain,
        "rows": rows,
        "load": load,
        "seconds": time.perf_counter() - started,
    }


def markdown(r: dict[str, Any]) -> list[str]:
    by_variant: dict[str, list[dict[str, Any]]] = {}
    for row in r["rows"]:
        by_variant.setdefault(row["variant"], []).append(row)
    draws = len(next(iter(by_variant.values())))
    lines = [
        f"{BACKBONE} at {IMG_SIZE} px pretrained from scratch on the demo digits 0-4 "
        f"({r['pretrain']['train_images']} training images, {PRETRAIN_EPOCHS} epochs, kit defaults; fold-0 "
        f"val acc {r['pretrain']['val_acc']:.4f}), saved as a weights file; then fine-tuned on digits 5-9 from "
        f"{SHOTS} images per class through `weights_file` (new 5-class head), {FINETUNE['epochs']} epochs of "
        f"batch {FINETUNE['batch_size']} (40 updates), AdamW lr 3e-3 one-cycle unless named, scored after the last "
        f"epoch on {r['rows'][0]['val_images']} other images of 5-9. Median over {draws} draw(s) of the few "
        "training images (seed = draw).",
        "",
        "| variant | freeze_epochs | layer_decay | lr | val acc (median) | per draw | best epoch (median) |",
        "|---|---:|---:|---:|---:|---|---:|",
    ]
    for name, rows in by_variant.items():
        accs = [row["val_acc"] for row in rows]
        lines.append(
            f"| {name} | {rows[0]['freeze_epochs']} | {rows[0]['layer_decay']} | {rows[0]['lr']:g} | "
            f"**{statistics.median(accs):.4f}** | {', '.join(f'{a:.4f}' for a in accs)} | "
            f"{statistics.median(row['best_val_acc'] for row in rows):.4f} |"
        )
    start, end = r["load"][0], r["load"][-1]
    lines += [
        "",
        f"Accuracy is the figure here; times are not compared (load average {start[0]:.1f} at the start, "
        f"{end[0]:.1f} at the end: other jobs shared the 2 cores). {r['seconds']:.0f} s in all.",
    ]
    return lines


if __name__ == "__main__":
    sys.exit(quick_main(__doc__, "bench_transfer_out_", run, markdown))
