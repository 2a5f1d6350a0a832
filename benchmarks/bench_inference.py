"""Inference throughput: the kit's fold ensemble with TTA against the bare forward passes and the original way.

    python benchmarks/bench_inference.py [--quick] [--test-images N] [--batch-size B] [--outputs DIR]

Trains resnet18 at 32 px for one epoch per fold (5 folds; 2 with --quick) on a small slice of the demo
digits (the weights do not change inference cost), then times over the demo's 360 test images (or the
first N), in batches of B (64), as the median of several repeats (5; 1 with --quick):

  (a) kit       helpers.inference.predict_checkpoints with views identity, hflip, vflip, hvflip: loads each
                checkpoint once, decodes the images once, runs every model on all views of a batch at once;
  (b) floor     the same models' forward passes alone, on the same preprocessed batches already stacked in
                memory, views concatenated the same way: the most (a) could reach;
  (c) original  the original pipeline's loop: for every batch and every checkpoint, torch.load the file and
                build the model again, then run its six flip/transpose views one by one (one of them a
                duplicate: flip(-1) then flip(-2, -1) is flip(-2)), softmaxing each.

Images/s count each model x view as one forward pass; (a) and (b) take turns within each repeat, so a slow
spell of a shared machine hits both. Also timed: building the models and reading the images, the two things
(a) does besides (b)'s forward passes. Writes benchmarks/results/inference.md and prints it.
The checkpoints are trained on 24 rows per fold by default (--train-per-fold) to keep the script short.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from machine import machine

from helpers.allocator import retain_freed_memory

STARTED = time.perf_counter()
ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "inference.md"
KIT_VIEWS = ["identity", "hflip", "vflip", "hvflip"]
ORIGINAL_VIEWS = 6


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 folds and 1 repeat instead of 5 and 3")
    parser.add_argument("--test-images", type=int, default=0, help="first N demo test images only; 0: all")
    parser.add_argument(
        "--batch-size", type=int, default=64, help="prediction batch (the kit uses 2 x batch_size)"
    )
    parser.add_argument(
        "--train-per-fold", type=int, default=24, help="rows kept per fold for training; 0: all"
    )
    parser.add_argument("--original-repeats", type=int, default=0, help="repeats of (c); 0: as (a) and (b)")
    parser.add_argument("--outputs", default="", help="KIT_OUTPUTS for the run (default: a temp folder)")
    parser.add_argument("--results", default=str(RESULTS), help="markdown file to write")
    return parser.parse_args()


def six_views(x):
    """The original pipeline's views, one tensor each; the fourth repeats the third."""
    transposed = x.transpose(-1, -2)
    return [x, x.flip(-1), x.flip(-2), x.flip(-1).flip([-2, -1]), transposed, transposed.flip(-1)]


def median_seconds(
    fns: dict[str, Callable[[], object]], repeats: int
) -> dict[str, tuple[float, object, list[float]]]:
    """Each fn's median wall time over the repeats, its last result and every time; the fns take turns
    within each repeat, so a slow spell of a shared machine hits all of them alike."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    results: dict[str, object] = {}
    for _ in range(repeats):
        for name, fn in fns.items():
            started = time.perf_counter()
            results[name] = fn()
            times[name].append(time.perf_counter() - started)
    return {name: (statistics.median(times[name]), results[name], times[name]) for name in fns}


def main() -> int:
    args = parse_args()
    retain_freed_memory()
    outputs = Path(args.outputs) if args.outputs else Path(tempfile.mkdtemp(prefix="bench_inference_"))
    os.environ["KIT_OUTPUTS"] = str(outputs)
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")
    try:
        return run(args, outputs)
    finally:
        if not args.outputs:
            shutil.rmtree(outputs, ignore_errors=True)


def run(args: argparse.Namespace, outputs: Path) -> int:
    import numpy as np
    import timm
    import torch

    from helpers.augment import InputPrep
    from helpers.config import Config
    from helpers.dataset import prepare_dataset
    from helpers.demo import ensure_demo_data
    from helpers.holdout import checked_test_images
    from helpers.inference import PREDICTION_FOLD, load_models, predict_checkpoints, trained_checkpoints
    from helpers.loaders import build_loader
    from helpers.precision import pick_device, resolve_precision
    from helpers.run_folder import RunFolder
    from helpers.tables import list_test_images
    from helpers.train import train_folds
    from helpers.tta import view_probabilities

    n_folds_trained = 2 if args.quick else 5
    repeats = 1 if args.quick else 5
    data_dir = ensure_demo_data()
    cfg = Config(
        pretrained=False,
        data_dir=str(data_dir),
        backbone="resnet18",
        img_size=32,
        n_folds=5,
        folds=list(range(n_folds_trained)),
        epochs=1,
        batch_size=max(1, args.batch_size // 2),
        augment="none",
        run_name="bench_resnet18",
        seed=0,
        task="multiclass",  # the digits: one label per image, as 01 would resolve it
    )
    device = pick_device()
    precision = resolve_precision(cfg.precision, device)

    # -- checkpoints ------------------------------------------------------------------------------------
    t = time.perf_counter()
    info = prepare_dataset(cfg)
    if args.train_per_fold:
        table = info.table.groupby("fold", group_keys=False).head(args.train_per_fold)
        info = dataclasses.replace(info, table=table.reset_index(drop=True))
    run = RunFolder.of(cfg).create()
    train_folds(cfg, info, run, device)
    train_seconds = time.perf_counter() - t
    paths = list(trained_checkpoints(run, "best_score", cfg.n_folds).values())
    print(f"trained {len(paths)} fold(s) of {cfg.backbone} at {cfg.img_size} px in {train_seconds:.1f} s")

    test = checked_test_images(list_test_images(cfg, data_dir, "csv"), cfg)
    if args.test_images:
        test = test.head(args.test_images)
    n_images, n_models = len(test), len(paths)

    # -- (a) the kit, as 05 calls it: sizes given, so the images may come from the RAM cache -------------
    def kit():
        return predict_checkpoints(cfg, paths, test, KIT_VIEWS, device)

    models = load_models(paths, device, cfg.channels_last)
    prep = InputPrep.for_backbone(cfg.backbone, cfg.channels_last)
    batches = [prep(x, device) for x, _, _ in build_loader(cfg, test, False, PREDICTION_FOLD, device)]
    with torch.no_grad():  # warm-up, untimed: first-call allocator and kernel selection for every shape
        for x in batches:
            view_probabilities(models[0], x, KIT_VIEWS, precision, "multiclass")
            for view in six_views(x.contiguous()):
                models[0](view)

    # -- (b) floor: forward passes only, on batches already preprocessed and in memory --------------------

    @torch.no_grad()
    def floor():
        out = []
        for x in batches:
            total = sum(view_probabilities(m, x, KIT_VIEWS, precision, "multiclass") for m in models)
            out.append((total / len(models)).cpu())
        return torch.cat(out, dim=1).numpy()

    # what (a) does besides (b)'s forward passes: build the models, decode and transform the images
    def build_models():
        return load_models(paths, device, cfg.channels_last)

    def read_batches():
        return [x for x, _, _ in build_loader(cfg, test, False, PREDICTION_FOLD, device)]

    timed = median_seconds(
        {"kit": kit, "floor": floor, "models": build_models, "images": read_batches}, repeats
    )
    (kit_s, kit_prediction, kit_times), (floor_s, floor_per_view, floor_times) = timed["kit"], timed["floor"]
    models_s, images_s = timed["models"][0], timed["images"][0]
    np.testing.assert_allclose(floor_per_view, kit_prediction.per_view, atol=1e-4)

    # -- (c) the original way ----------------------------------------------------------------------------
    @torch.no_grad()
    def original():
        out = []
        plain = InputPrep.for_backbone(cfg.backbone)
        for x, _, _ in build_loader(cfg, test, False, PREDICTION_FOLD, device):
            x = plain(x, device)
            probs = 0
            for path in paths:
                ckpt = torch.load(path, map_location=device, weights_only=True)
                model = timm.create_model(ckpt["backbone"], pretrained=False, num_classes=ckpt["num_classes"])
                model.load_state_dict(ckpt["model"])
                model.to(device).eval()
                for view in six_views(x):
                    with precision.context():
                        probs = probs + model(view).float().softmax(-1)
            out.append((probs / (len(paths) * ORIGINAL_VIEWS)).cpu())
        return torch.cat(out).numpy()

    original_repeats = args.original_repeats or repeats
    original_s, original_probs, _ = median_seconds({"original": original}, original_repeats)["original"]
    assert original_probs.shape == kit_prediction.probabilities.shape

    # -- report ------------------------------------------------------------------------------------------
    kit_passes = n_images * n_models * len(KIT_VIEWS)
    original_passes = n_images * n_models * ORIGINAL_VIEWS
    rows = [
        ("(a) kit: predict_checkpoints", kit_s, kit_passes),
        ("(b) floor: forward passes on stacked batches", floor_s, kit_passes),
        ("(c) original: reload per batch, 6 views one by one", original_s, original_passes),
    ]
    ratio = floor_s / kit_s  # throughputs over the same forward passes
    paired = [f / k for f, k in zip(floor_times, kit_times, strict=True)]
    speedup = original_s / kit_s
    lines = [
        "# Inference benchmark",
        "",
        f"`python benchmarks/bench_inference.py{' --quick' if args.quick else ''}`: {cfg.backbone} at "
        f"{cfg.img_size} px, {n_models} fold checkpoint(s) (1 epoch each), {n_images} demo test images, "
        f"batch {cfg.batch_size * 2}, {precision.dtype} on {device.type}, channels_last={cfg.channels_last} "
        f"for (a) and (b) (the kit's setting), contiguous for (c); median of {repeats} repeat(s) for (a) and "
        f"(b), {original_repeats} for (c). "
        f"Checkpoints trained on {len(info.table)} training images. "
        "Images/s count each model x view as one forward pass.",
        "",
        "| method | views | wall s | forward passes | images/s |",
        "|---|---:|---:|---:|---:|",
        *(
            f"| {name} | {passes // (n_images * n_models)} | {s:.2f} | {passes} | {passes / s:.0f} |"
            for name, s, passes in rows
        ),
        "",
        f"- kit / floor throughput: **{ratio:.2f}** (goal >= 0.9); repeat by repeat: "
        f"{', '.join(f'{r:.2f}' for r in paired)} (kit s: {', '.join(f'{t:.2f}' for t in kit_times)}; "
        f"floor s: {', '.join(f'{t:.2f}' for t in floor_times)})",
        f"- kit speed-up over the original way, wall time for the same {n_images} test images: "
        f"**{speedup:.2f}x** (goal >= 1.5x)",
        f"- (a) - (b) = {kit_s - floor_s:.2f} s of fixed and per-image work: building the {n_models} models "
        f"(memory-mapped torch.load, the architecture copied, weights assigned) takes {models_s:.2f} s, decoding and "
        f"transforming the {n_images} images {images_s:.2f} s",
        f"- training the checkpoints: {train_seconds:.1f} s; whole script: "
        f"{time.perf_counter() - STARTED:.0f} s",
        *machine(),
        f"- glibc malloc keeping freed memory (helpers.allocator): {retain_freed_memory()}",
        "",
    ]
    report = "\n".join(lines)
    results = Path(args.results)
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(report)
    print(report)
    print(f"wrote {results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
