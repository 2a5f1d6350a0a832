"""Distillation and pseudo-labels on the demo digits: one small model against an ensemble, and unlabelled images.

    python benchmarks/bench_distill.py [--quick] [--json FILE]

Distillation: three teacher runs of different test-size backbones (fold 0 each) and their equal-weight
ensemble, against a student (test_mambaout) trained alone and the same student distilled from the three
(`teachers`, the kit's defaults: temperature 2, weight 0.5), all at 32 px for the same epochs. Each is scored
on the demo's 360 held-out test images (accuracy) and timed predicting them (images/s, one torch thread,
identity view only). The gap closed: (distilled - alone) / (ensemble - alone).

Pseudo-labels: the digits with a fifth of the training labels kept (seeded, stratified); the other four
fifths' images form an unlabelled folder. Round 0 trains on the labelled fifth; round 1 takes round 0's
confident predictions on the folder (`pseudo_source`, `unlabelled_dir`, threshold 0.8, hard labels); round
2 takes round 1's. Test accuracy of each round. Every run trains fold 0; medians over the seeds (the folds,
initialisation, draws and the kept fifth follow the seed). --quick: one seed, 2 epochs (4 for the
pseudo-label rounds).
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from cli import quick_main

IMG_SIZE, BATCH_SIZE = 32, 64
TEACHERS = ("test_resnet", "test_efficientnet", "test_byobnet")
STUDENT = "test_mambaout"  # the fastest at inference, and the weakest alone (measured)
EPOCHS = 10
PSEUDO_EPOCHS = 15  # a fifth of the labels: more epochs before round 0 is sure of anything
SEEDS = (0, 1, 2)
# the student's runs: name, epochs as a multiple of EPOCHS, whether it learns from the teachers, settings
STUDENTS = (
    ("alone", 1, False, {}),
    ("distilled", 1, True, {}),
    ("distilled, temperature 4, weight 0.9", 1, True, {"distill_temperature": 4.0, "distill_weight": 0.9}),
    ("alone, 3x epochs", 3, False, {}),
    ("distilled, 3x epochs", 3, True, {}),
)
KEEP = 0.2  # the labelled fifth of the pseudo-label part
ROUNDS = 2


def _environment() -> None:
    """Quiet imports and bars, one torch thread: scores are the figures; the times are on a shared CPU."""
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")
    import torch

    torch.set_num_threads(1)


def _test_rows(demo: Path, classes: list[str]):
    import pandas as pd

    rows = pd.read_csv(demo / "test_labels.csv", dtype=str)
    rows["path"] = [str(demo / "test_image" / f"{i}.jpg") for i in rows["id"]]
    rows["label_idx"] = rows["label"].map({c: i for i, c in enumerate(classes)})
    return rows


def _train(data: Path, name: str, backbone: str, seed: int, epochs: int, **settings: Any):
    """Prepare (as 01) and train fold 0 (as 03) of a run; returns its config, data and folder."""
    import torch

    from helpers.config import Config
    from helpers.dataset import prepare_dataset
    from helpers.pseudo_labels import prepare_pseudo_labels
    from helpers.run_folder import RunFolder
    from helpers.train import train_fold

    cfg = Config(
        pretrained=False,
        run_name=name,
        data_dir=str(data),
        backbone=backbone,
        img_size=IMG_SIZE,
        seed=seed,
        num_workers=0,
        epochs=epochs,
        batch_size=BATCH_SIZE,
        **settings,
    )
    run = RunFolder.of(cfg).create()
    info = prepare_dataset(cfg, run)
    cfg = cfg.replace(task=info.task)
    run.write_config(cfg)
    prepare_pseudo_labels(cfg, info, run)
    train_fold(cfg, info, 0, run, torch.device("cpu"))
    return cfg, info, run


def _predict(members: list, test) -> tuple[Any, float]:
    """Mean probabilities of (cfg, checkpoint) members over the test rows, and images per second."""
    import torch

    from helpers.inference import predict_checkpoints

    started = time.perf_counter()
    total = sum(
        predict_checkpoints(cfg, [path], test, ["identity"], torch.device("cpu")).probabilities
        for cfg, path in members
    )
    return total / len(members), len(test) / (time.perf_counter() - started)


def _accuracy(probabilities, test) -> float:
    return float((probabilities.argmax(1) == test["label_idx"].to_numpy(dtype=int)).mean())


def distillation(demo: Path, seed: int, epochs: int) -> dict[str, Any]:
    """Teachers, their ensemble, the student alone and distilled: test accuracy and images/s."""
    out: dict[str, Any] = {"seed": seed}
    teachers = []
    for backbone in TEACHERS:
        cfg, info, run = _train(demo, f"teacher_{backbone}_{seed}", backbone, seed, epochs)
        teachers.append((cfg, run.checkpoint(0, "best_score")))
    test = _test_rows(demo, info.classes)
    for (cfg, path), backbone in zip(teachers, TEACHERS, strict=True):
        out[f"teacher {backbone}"] = _accuracy(_predict([(cfg, path)], test)[0], test)
    probabilities, speed = _predict(teachers, test)
    out["ensemble"], out["ensemble_images_per_s"] = _accuracy(probabilities, test), speed
    names = [c.run_name for c, _ in teachers]
    for i, (kind, times, distilled, settings) in enumerate(STUDENTS):
        extra = {"teachers": names, **settings} if distilled else settings
        started = time.perf_counter()
        cfg, _, run = _train(demo, f"student_{i}_{seed}", STUDENT, seed, epochs * times, **extra)
        out[f"{kind}_train_seconds"] = time.perf_counter() - started
        probabilities, speed = _predict([(cfg, run.checkpoint(0, "best_score"))], test)
        out[kind], out[f"{kind}_images_per_s"] = _accuracy(probabilities, test), speed
        if distilled:
            out[f"{kind}_teacher_seconds"] = float(run.read_metrics()["teacher_seconds"].sum())
    return out


def labelled_fifth(demo: Path, dest: Path, seed: int) -> tuple[Path, Path]:
    """A data folder with a stratified fifth of the training table, and an unlabelled folder holding the
    other images (linked)."""
    import pandas as pd

    table = pd.read_csv(demo / "train.csv", dtype=str)
    kept = table.groupby("label").sample(frac=KEEP, random_state=seed)
    data, unlabelled = dest / f"digits_fifth_{seed}", dest / f"unlabelled_{seed}"
    data.mkdir(parents=True)
    unlabelled.mkdir()
    kept.sort_index().to_csv(data / "train.csv", index=False)
    (data / "train_image").symlink_to(demo / "train_image")
    for image_id in table.loc[~table.index.isin(kept.index), "id"]:
        (unlabelled / f"{image_id}.jpg").symlink_to(demo / "train_image" / f"{image_id}.jpg")
    return data, unlabelled


def pseudo_rounds(demo: Path, work: Path, seed: int, epochs: int) -> dict[str, Any]:
    """Test accuracy without pseudo-labels, and after each round; how many images each round took."""
    data, unlabelled = labelled_fifth(demo, work, seed)
    out: dict[str, Any] = {"seed": seed}
    source = ""
    for round_ in range(ROUNDS + 1):
        settings = {"pseudo_source": source, "unlabelled_dir": str(unlabelled)} if source else {}
        cfg, info, run = _train(data, f"pseudo_r{round_}_{seed}", STUDENT, seed, epochs, **settings)
        test = _test_rows(demo, info.classes)
        out[f"round {round_}"] = _accuracy(_predict([(cfg, run.checkpoint(0, "best_score"))], test)[0], test)
        out[f"round {round_} pseudo"] = len(run.read_pseudo_labels()) if source else 0
        out["labelled"] = len(info.table)
        source = run.name
    return out


def run(quick: bool) -> dict[str, Any]:
    _environment()
    from helpers.demo import ensure_demo_data

    started, load = time.perf_counter(), [os.getloadavg()]
    work = Path(tempfile.mkdtemp(prefix="bench_distill_"))
    epochs, pseudo_epochs, seeds = (2, 4, SEEDS[:1]) if quick else (EPOCHS, PSEUDO_EPOCHS, SEEDS)
    try:
        demo = ensure_demo_data()
        distilled = [distillation(demo, seed, epochs) for seed in seeds]
        pseudo = [pseudo_rounds(demo, work, seed, pseudo_epochs) for seed in seeds]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    load.append(os.getloadavg())
    return {
        "quick": quick,
        "epochs": epochs,
        "pseudo_epochs": pseudo_epochs,
        "distillation": distilled,
        "pseudo": pseudo,
        "load": load,
        "seconds": time.perf_counter() - started,
    }


def _median(rows: list[dict[str, Any]], key: str) -> float:
    return statistics.median(row[key] for row in rows)


def markdown(r: dict[str, Any]) -> list[str]:
    d, p = r["distillation"], r["pseudo"]
    seeds = [row["seed"] for row in d]
    lines = [
        f"The demo digits, fold 0 of 5 (about 1150 training images), {r['epochs']} epochs of batch {BATCH_SIZE} "
        f"at {IMG_SIZE} px from scratch (AdamW 3e-3 one-cycle, label smoothing 0.1, light augmentation), the "
        f"best_score checkpoint scored on the 360 held-out test images; medians over seeds {seeds}. Teachers: "
        f"{', '.join(TEACHERS)}; student: {STUDENT}, alone or distilled from the three (the defaults, temperature "
        "2 and weight 0.5, unless named). Images/s: predicting the test images, identity view, one torch thread.",
        "",
        "| model | test accuracy (median) | per seed | images/s (median) |",
        "|---|---:|---|---:|",
    ]
    for backbone in TEACHERS:
        key = f"teacher {backbone}"
        lines.append(
            f"| teacher {backbone} | {_median(d, key):.3f} | {', '.join(f'{x[key]:.3f}' for x in d)} | |"
        )
    per_seed = ", ".join(f"{x['ensemble']:.3f}" for x in d)
    lines.append(
        f"| the 3 teachers' equal-weight ensemble | **{_median(d, 'ensemble'):.3f}** | {per_seed} | "
        f"{_median(d, 'ensemble_images_per_s'):.0f} |"
    )
    for kind, times, _, _ in STUDENTS:
        per_seed = ", ".join(f"{x[kind]:.3f}" for x in d)
        lines.append(
            f"| {STUDENT} {kind} ({r['epochs'] * times} epochs) | **{_median(d, kind):.3f}** | {per_seed} | "
            f"{_median(d, f'{kind}_images_per_s'):.0f} |"
        )
    lines += [
        "",
        "| student | gap closed per seed: (distilled - alone) / (ensemble - alone), same epochs | training s "
        "(median) | of which teachers s |",
        "|---|---|---:|---:|",
    ]
    for kind, times, distilled, _ in STUDENTS:
        if not distilled:
            continue
        alone = next(k for k, t, dist, _ in STUDENTS if t == times and not dist)
        closed = [
            f"{(x[kind] - x[alone]) / (x['ensemble'] - x[alone]):.2f}"
            if x["ensemble"] > x[alone]
            else "no gap (alone >= ensemble)"
            for x in d
        ]
        lines.append(
            f"| {kind} | {', '.join(closed)} | {_median(d, f'{kind}_train_seconds'):.0f} "
            f"(alone {_median(d, f'{alone}_train_seconds'):.0f}) | {_median(d, f'{kind}_teacher_seconds'):.0f} |"
        )
    lines += [
        "",
        f"Pseudo-labels: {p[0]['labelled']} labelled training images (a stratified fifth; the rest unlabelled), "
        f"{STUDENT}, {r['pseudo_epochs']} epochs; round k takes round k-1's confident predictions (threshold "
        "0.8, the default; hard labels) on the unlabelled folder, its labelled images unchanged.",
        "",
        "| round | test accuracy (median) | per seed | pseudo-labelled images (median) |",
        "|---|---:|---|---:|",
    ]
    for k in range(ROUNDS + 1):
        key = f"round {k}"
        name = "without pseudo-labels" if k == 0 else f"round {k}"
        per_seed = ", ".join(f"{x[key]:.3f}" for x in p)
        lines.append(
            f"| {name} | **{_median(p, key):.3f}** | {per_seed} | {_median(p, key + ' pseudo'):.0f} |"
        )
    start, end = r["load"][0], r["load"][-1]
    lines += [
        "",
        f"Load average {start[0]:.1f} at the start, {end[0]:.1f} at the end (other jobs shared the 2 cores): "
        f"the images/s are noisy, the scores are the figures. {r['seconds']:.0f} s in all.",
    ]
    return lines


if __name__ == "__main__":
    sys.exit(quick_main(__doc__, "bench_distill_out_", run, markdown))
