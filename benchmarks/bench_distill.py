"""Distillation and pseudo-labels on the demo digits: one small model against an ensemble, and unlabelled images.

    python benchmarks/bench_distill.py [--quick] [--json FILE]

Distillation: three teacher runs of different test-size backbones (fold 0 each) and their equal-weight
ensemble, against a student (test_mambaout) trained alone and the same student distilled from the three
(`teachers`, at temperature 2, weight 0.5, and at the kit's defaults, temperature 4, weight 0.9), all at 32 px for the same epochs. Each is scored
on the demo's 360 held-out test images (accuracy) and timed predicting them (images/s, one torch thread,
identity view only). The gap closed: (distilled - alone) / (ensemble - alone).

Pseudo-labels: the digits with a fifth of the training labels kept (seeded, stratified); the other four
fifths' images form an unlabelled folder. Round 0 trains on the labelled fifth; round 1 takes round 0's
confident predictions on the folder (`pseudo_source`, `unlabelled_dir`, threshold 0.8, hard labels); round
2 takes round 1's. Test accuracy of each round. Every run trains fold 0; medians over the seeds (the folds,
initialisation, draws and the kept fifth follow the seed). --quick: one seed, 2 epochs (4 for the
pseudo-label rounds).

    python benchmarks/bench_distill.py --followup [--quick] [--json FILE]

The follow-up measurement, on its own (a time budget: seeds are run while the next one is expected to fit
in FOLLOWUP_BUDGET_S). The multi-label demo (macro mAP over its 300 test images): the same three teachers,
their ensemble, the student alone and distilled, all EPOCHS. The digits with a weaker student: the teachers
at EPOCHS, the student alone and distilled at SHORT_EPOCHS, so the gap is wider. And the distilled digits
student exported to ONNX (helpers.export) and timed on the test images' pixels, already decoded and resized,
in onnxruntime (CPU, one thread) beside the same model in torch (one thread), and beside the kit's whole
prediction path (reading the images included). --quick: one seed, 2 epochs (1 for the short student).
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
# the two distillation settings compared: temperature 2, weight 0.5 ("distilled"), and the kit's defaults
MILD = {"distill_temperature": 2.0, "distill_weight": 0.5}
STRONG = {"distill_temperature": 4.0, "distill_weight": 0.9}
# the student's runs: name, epochs as a multiple of EPOCHS, whether it learns from the teachers, settings
STUDENTS = (
    ("alone", 1, False, {}),
    ("distilled", 1, True, MILD),
    ("distilled, temperature 4, weight 0.9", 1, True, STRONG),
    ("alone, 3x epochs", 3, False, {}),
    ("distilled, 3x epochs", 3, True, MILD),
)
KEEP = 0.2  # the labelled fifth of the pseudo-label part
ROUNDS = 2
MULTILABEL = {"label_col": "labels", "task": "multilabel"}
SHORT_EPOCHS = 3  # the weaker digits student of the follow-up
FOLLOWUP_BUDGET_S = 420.0
# the follow-up's student runs: name, whether it learns from the teachers, settings
FOLLOWUP_STUDENTS = (
    ("alone", False, {}),
    ("distilled", True, MILD),
    ("distilled, temperature 4, weight 0.9", True, STRONG),
)


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


def _test_set(cfg, classes: list[str]) -> tuple[Any, Any]:
    """The data's test rows (id, path) and their targets as the run's task reads them."""
    from helpers.dataset import data_dir_of
    from helpers.holdout import checked_test_images, test_labels
    from helpers.tables import detect_layout, list_test_images

    data_dir = data_dir_of(cfg)
    test = checked_test_images(list_test_images(cfg, data_dir, detect_layout(cfg, data_dir)), cfg)
    return test, test_labels(cfg, data_dir, test, classes)


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


def _teachers_and_students(
    data: Path, tag: str, seed: int, epochs: int, student_epochs: int, **settings: Any
) -> tuple[dict[str, Any], Any]:
    """Three teachers, their ensemble, the student alone and distilled on one data set: the task's view
    score (accuracy, or macro mAP) on its test images and images/s; also the student's run distilled at
    temperature 2, weight 0.5."""
    from helpers.tasks import task_for

    out: dict[str, Any] = {}
    teachers = []
    for backbone in TEACHERS:
        cfg, info, run = _train(data, f"{tag}_teacher_{backbone}_{seed}", backbone, seed, epochs, **settings)
        teachers.append((cfg, run.checkpoint(0, "best_score")))
    task = task_for(cfg)
    test, targets = _test_set(cfg, info.classes)
    for member, backbone in zip(teachers, TEACHERS, strict=True):
        out[f"teacher {backbone}"] = task.view_score(targets, _predict([member], test)[0])
    probabilities, out["ensemble_images_per_s"] = _predict(teachers, test)
    out["ensemble"] = task.view_score(targets, probabilities)
    names = [c.run_name for c, _ in teachers]
    for i, (kind, distilled, extra) in enumerate(FOLLOWUP_STUDENTS):
        extra = {"teachers": names, **extra} if distilled else extra
        cfg, _, student = _train(
            data, f"{tag}_student{i}_{seed}", STUDENT, seed, student_epochs, **settings, **extra
        )
        if kind == "distilled":
            run = student
        probabilities, out[f"{kind}_images_per_s"] = _predict(
            [(cfg, student.checkpoint(0, "best_score"))], test
        )
        out[kind] = task.view_score(targets, probabilities)
    out["metric"], out["test_images"] = task.view_metric, len(test)
    return out, run


def onnx_speed(run) -> dict[str, Any]:
    """The run's fold-0 model exported to ONNX; images/s over the test images' pixels (decoded and resized
    beforehand, batches of BATCH_SIZE) in onnxruntime and in torch, one thread each."""
    import onnxruntime
    import torch

    from helpers.checkpoints import load_model
    from helpers.export import INPUT, OUTPUT, PixelsToProbabilities, export_run, parity_images
    from helpers.model import data_config_for
    from helpers.tasks import task_for

    cfg = run.read_config()
    started = time.perf_counter()
    exported = export_run(run)[0]
    export_seconds = time.perf_counter() - started
    pixels = parity_images(cfg, 10**6)
    batches = [pixels[i : i + BATCH_SIZE] for i in range(0, len(pixels), BATCH_SIZE)]
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(str(exported.onnx), options, providers=["CPUExecutionProvider"])
    model, _ = load_model(run.checkpoint(0, "best_score"))
    mean, std = (data_config_for(cfg.backbone)[k] for k in ("mean", "std"))
    wrapped = PixelsToProbabilities(model, mean, std, task_for(cfg)).eval()

    def timed(step) -> float:
        step(batches[0])  # warm-up
        best = float("inf")
        for _ in range(3):
            t = time.perf_counter()
            for batch in batches:
                step(batch)
            best = min(best, time.perf_counter() - t)
        return len(pixels) / best

    with torch.no_grad():
        torch_rate = timed(wrapped)
    onnx_rate = timed(lambda batch: session.run([OUTPUT], {INPUT: batch.numpy()}))
    return {
        "onnx_images_per_s": onnx_rate,
        "torch_pixels_images_per_s": torch_rate,
        "export_seconds": export_seconds,
        "parity_max_abs_diff": exported.max_abs_diff,
        "onnx_bytes": exported.onnx.stat().st_size,
    }


def followup_seed(seed: int, epochs: int, short_epochs: int) -> dict[str, Any]:
    """One seed of the follow-up: the multi-label demo, the weaker digits student, its ONNX speed."""
    from helpers.demo import ensure_demo_data

    digits = ensure_demo_data()
    multilabel, _ = _teachers_and_students(
        digits.parent / "digits_multilabel", "ml", seed, epochs, epochs, **MULTILABEL
    )
    weaker, run = _teachers_and_students(digits, "short", seed, epochs, short_epochs)
    return {"seed": seed, "multilabel": multilabel, "digits_short": weaker, "onnx": onnx_speed(run)}


def followup(quick: bool) -> dict[str, Any]:
    """Seeds of the follow-up while the next is expected to fit in the budget (the slowest seed so far)."""
    _environment()
    started, load = time.perf_counter(), [os.getloadavg()]
    epochs, short_epochs, seeds = (2, 1, SEEDS[:1]) if quick else (EPOCHS, SHORT_EPOCHS, SEEDS)
    rows, slowest = [], 0.0
    for seed in seeds:
        if rows and time.perf_counter() - started + slowest > FOLLOWUP_BUDGET_S:
            break
        t = time.perf_counter()
        rows.append(followup_seed(seed, epochs, short_epochs))
        slowest = max(slowest, time.perf_counter() - t)
        load.append(os.getloadavg())
    return {
        "quick": quick,
        "epochs": epochs,
        "short_epochs": short_epochs,
        "seeds": rows,
        "load": load,
        "seconds": time.perf_counter() - started,
    }


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
        f"{', '.join(TEACHERS)}; student: {STUDENT}, alone or distilled from the three (temperature "
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


def followup_markdown(r: dict[str, Any]) -> list[str]:
    rows = r["seeds"]
    seeds = [x["seed"] for x in rows]

    def median(part: str, key: str) -> float:
        return statistics.median(x[part][key] for x in rows)

    def table(part: str, student_epochs: int) -> list[str]:
        metric = {"map": "macro mAP"}.get(rows[0][part]["metric"], rows[0][part]["metric"])
        lines = [
            f"| model | test {metric} (median) | per seed | images/s (median) |",
            "|---|---:|---|---:|",
        ]
        for backbone in TEACHERS:
            key = f"teacher {backbone}"
            per_seed = ", ".join(f"{x[part][key]:.3f}" for x in rows)
            lines.append(
                f"| teacher {backbone} ({r['epochs']} epochs) | {median(part, key):.3f} | {per_seed} | |"
            )
        for key, name in (
            ("ensemble", "the 3 teachers' equal-weight ensemble"),
            *((kind, f"{STUDENT} {kind} ({student_epochs} epochs)") for kind, _, _ in FOLLOWUP_STUDENTS),
        ):
            per_seed = ", ".join(f"{x[part][key]:.3f}" for x in rows)
            lines.append(
                f"| {name} | **{median(part, key):.3f}** | {per_seed} | "
                f"{median(part, f'{key}_images_per_s'):.0f} |"
            )
        lines += ["", "Gap closed per seed, (distilled - alone) / (ensemble - alone):"]
        for kind, distilled, _ in FOLLOWUP_STUDENTS:
            if not distilled:
                continue
            closed = [
                f"{(x[part][kind] - x[part]['alone']) / (x[part]['ensemble'] - x[part]['alone']):.2f}"
                if x[part]["ensemble"] > x[part]["alone"]
                else "no gap"
                for x in rows
            ]
            lines.append(f"{kind}: {', '.join(closed)};")
        lines[-1] = lines[-1][:-1] + "."
        return lines

    ml, dg = rows[0]["multilabel"], rows[0]["digits_short"]
    lines = [
        f"Follow-up (`python benchmarks/bench_distill.py --followup`): medians over seeds {seeds} (the seeds that "
        f"fit its {FOLLOWUP_BUDGET_S:.0f} s budget); fold 0, batch {BATCH_SIZE}, {IMG_SIZE} px, from scratch, "
        "teachers and student as above, distilled at temperature 2, weight 0.5 unless named.",
        "",
        f"The multi-label demo ({ml['test_images']} test images, macro mAP; every model {r['epochs']} epochs):",
        "",
        *table("multilabel", r["epochs"]),
        "",
        f"The digits ({dg['test_images']} test images) with a weaker student: teachers {r['epochs']} epochs, the "
        f"student {r['short_epochs']}:",
        "",
        *table("digits_short", r["short_epochs"]),
        "",
        f"The distilled digits student ({STUDENT}, {IMG_SIZE} px) on the {dg['test_images']} test images, one "
        "thread, batches of 64, best of 3 passes per seed, medians:",
        "",
        "| path | images/s (median) | per seed |",
        "|---|---:|---|",
    ]
    for key, name in (
        (
            "torch_pixels_images_per_s",
            "PyTorch, the model on decoded pixels (normalisation and softmax included)",
        ),
        ("onnx_images_per_s", "onnxruntime on CPU, the exported .onnx on the same pixels"),
    ):
        per_seed = ", ".join(f"{x['onnx'][key]:.0f}" for x in rows)
        lines.append(f"| {name} | **{median('onnx', key):.0f}** | {per_seed} |")
    per_seed = ", ".join(f"{x['digits_short']['distilled_images_per_s']:.0f}" for x in rows)
    lines += [
        f"| the kit's prediction (predict_checkpoints: reading and resizing the JPEGs included) | "
        f"{median('digits_short', 'distilled_images_per_s'):.0f} | {per_seed} |",
        "",
        f"Export {median('onnx', 'export_seconds'):.0f} s (median, parity check included; largest probability "
        f"difference {max(x['onnx']['parity_max_abs_diff'] for x in rows):.1e}), "
        f"{median('onnx', 'onnx_bytes') / 1024:.0f} KiB.",
    ]
    loads = ", ".join(f"{x[0]:.1f}" for x in r["load"])
    lines += [
        "",
        f"Load average (1 min) at the start and after each seed: {loads} (run at nice 19 beside other jobs on the "
        f"2 cores): the images/s are noisy, the scores are the figures. {r['seconds']:.0f} s in all.",
    ]
    return lines


def main() -> int:
    import argparse

    from cli import report, temporary_outputs

    from helpers.allocator import retain_freed_memory

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--followup", action="store_true", help="the follow-up measurement alone")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()
    if not args.followup:
        return quick_main(__doc__, "bench_distill_out_", run, markdown)
    retain_freed_memory()
    with temporary_outputs("bench_distill_out_"):
        result = followup(args.quick)
    return report(result, args.json, followup_markdown)


if __name__ == "__main__":
    sys.exit(main())
