"""Blending runs: the best single run against `mean`, `greedy` and `stack`, on the digits and the multi-label demo.

    python benchmarks/bench_blend.py [--quick] [--keep DIR] [--seeds 0,1,2] [--json FILE]

Per data set and seed, a run set of differing backbones and sizes at small budgets (3 folds, a few
epochs, from scratch: so that they differ and none is perfect) goes through the kit's own steps in one
process (01's preparation, 03's training of every fold, 04's out-of-fold evaluation, 05's test
probabilities), without the notebooks' kernel starts. Every run of a set shares its seed, hence its folds:
runs of two seeds are never blended together. Then `helpers.blend.compare_methods` gives, for each method,
the out-of-fold score (chosen and scored on the same rows), the nested estimate (chosen on the other folds,
scored on the held-out one) and the held-out test score. `--keep DIR` keeps the run folders (KIT_OUTPUTS),
and a run whose test probabilities exist there is not trained again. --quick: seed 0 only.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from cli import ROOT, report, temporary_outputs

EPOCHS, N_FOLDS, BATCH = 3, 3, 64
# the run set: backbone, image size, learning rate (so the members differ in more than their start)
RUN_SET = [
    ("test_resnet", 32, 3e-3),
    ("test_efficientnet", 32, 3e-3),
    ("test_convnext", 32, 3e-3),
    ("test_resnet", 24, 3e-3),
    ("test_byobnet", 32, 1e-3),
]
DATA = {
    "digits": dict(data_dir=str(ROOT / "data" / "digits")),
    "multilabel": dict(
        data_dir=str(ROOT / "data" / "digits_multilabel"), label_col="labels", task="multilabel"
    ),
}


def _environment() -> None:
    """Quiet imports and bars, one torch thread (a shared 2-core machine: the scores are the figures here)."""
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("MPLBACKEND", "Agg")
    import torch

    torch.set_num_threads(1)


def run_name(data: str, seed: int, backbone: str, size: int) -> str:
    return f"{data}_s{seed}_{backbone}_{size}"


def train_run(data: str, seed: int, backbone: str, size: int, lr: float) -> float:
    """01, 03 (every fold), 04 and 05 of one run, as the notebooks call them; returns the seconds taken."""
    import torch

    from helpers.config import Config
    from helpers.dataset import data_dir_of, prepare_dataset
    from helpers.holdout import checked_test_images, sample_submission
    from helpers.inference import ensemble_members, trained_checkpoints
    from helpers.reports import evaluate_oof, predict_test, write_test_predictions
    from helpers.run_folder import RunFolder
    from helpers.settings import resolve_settings
    from helpers.tables import detect_layout, list_test_images
    from helpers.train import train_folds

    started = time.perf_counter()
    cfg = Config(
        **DATA[data],
        run_name=run_name(data, seed, backbone, size),
        backbone=backbone,
        img_size=size,
        lr=lr,
        seed=seed,
        n_folds=N_FOLDS,
        folds=[],
        epochs=EPOCHS,
        batch_size=BATCH,
        num_workers=0,
        pretrained=False,
    )
    run = RunFolder.of(cfg).create()
    if run.test_probabilities.exists():
        return 0.0
    device = torch.device("cpu")
    info = prepare_dataset(cfg, run)
    cfg, _ = resolve_settings(cfg.replace(task=info.task), info)
    run.write_config(cfg)
    train_folds(cfg, info, run, device)
    evaluate_oof(cfg, run, info, trained_checkpoints(run, cfg.checkpoint, cfg.n_folds), device)
    data_dir = data_dir_of(cfg)
    layout = detect_layout(cfg, data_dir)
    test = checked_test_images(list_test_images(cfg, data_dir, layout), cfg)
    predicted = predict_test(ensemble_members(cfg, run), test, cfg.tta_views, device)
    write_test_predictions(
        run, cfg, sample_submission(cfg, data_dir, layout, test, predicted.classes), predicted
    )
    return time.perf_counter() - started


def blend_set(data: str, seed: int) -> dict[str, Any]:
    """Every method on one run set: each member's and each method's out-of-fold, nested and test score (the
    task's view score: accuracy, or macro mAP), the weights, and the best single run by out-of-fold score."""
    from helpers.blend import best_single, blend_inputs, compare_methods, find_candidates

    members, _ = find_candidates([run_name(data, seed, b, s) for b, s, _ in RUN_SET])
    inputs = blend_inputs(members)
    table, results = compare_methods(inputs)
    metric = inputs.task.view_metric
    figures = {
        ("best single" if i == 0 else blend): {
            f: float(row[f"{f} {metric}"]) for f in ("oof", "nested", "test")
        }
        for i, (blend, row) in enumerate(table.iterrows())
    }
    return {
        "data": data,
        "seed": seed,
        "metric": metric,
        "best": inputs.names[best_single(inputs)],
        "members": {
            m.name: {
                "oof": float(inputs.task.view_score(inputs.targets, inputs.oof[i])),
                "test": float(inputs.task.view_score(inputs.test_targets, inputs.test[i])),
            }
            for i, m in enumerate(inputs.members)
        },  # fmt: skip
        "figures": figures,
        "weights": {method: [round(float(w), 3) for w in r.weights] for method, r in results.items()},
        "oof_images": len(inputs.ids),
        "test_images": int(inputs.test.shape[1]),
    }


def run(seeds: list[int]) -> dict[str, Any]:
    _environment()
    started, load = time.perf_counter(), [os.getloadavg()[0]]
    trained = {}
    for data in DATA:
        for seed in seeds:
            for backbone, size, lr in RUN_SET:
                trained[run_name(data, seed, backbone, size)] = train_run(data, seed, backbone, size, lr)
    train_seconds = time.perf_counter() - started
    sets = [blend_set(data, seed) for data in DATA for seed in seeds]
    load.append(os.getloadavg()[0])
    return {
        "seeds": seeds,
        "sets": sets,
        "train_seconds": train_seconds,
        "trained_runs": sum(1 for s in trained.values() if s > 0),
        "seconds": time.perf_counter() - started,
        "load": load,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


METHODS_SHOWN = ("best single", "mean", "greedy", "stack")


def markdown(r: dict[str, Any]) -> list[str]:
    lines = [
        f"Per data set and seed (seeds {r['seeds']}; a seed fixes the folds, so each seed's runs form one run set): "
        f"{len(RUN_SET)} runs from scratch, {EPOCHS} epochs, {N_FOLDS} folds, batch {BATCH}: "
        + ", ".join(f"{b} at {s} px (lr {lr:g})" for b, s, lr in RUN_SET)
        + ". Best single run: the member with the best out-of-fold score. OOF: chosen and scored on the same "
        "rows; nested: chosen on the other folds, scored on the held-out one; test: the held-out test set. "
        "Medians over the seeds; every seed's test figure after them.",
        "",
    ]
    for data in DATA:
        sets = [s for s in r["sets"] if s["data"] == data]
        if not sets:
            continue
        first = sets[0]
        lines += [
            f"**{data}** ({first['metric']}; {first['oof_images']} out-of-fold images, {first['test_images']} test "
            "images)",
            "",
            "| blend | test (median) | nested (median) | OOF (median) | OOF - test | nested - test | test per seed |",
            "|---|---:|---:|---:|---:|---:|---|",
        ]
        for method in METHODS_SHOWN:
            per = [s["figures"][method] for s in sets]
            med = {f: statistics.median(p[f] for p in per) for f in ("oof", "nested", "test")}
            gap = {f: statistics.median(p[f] - p["test"] for p in per) for f in ("oof", "nested")}
            lines.append(
                f"| {method} | **{med['test']:.4f}** | {med['nested']:.4f} | {med['oof']:.4f} | {gap['oof']:+.4f} | "
                f"{gap['nested']:+.4f} | {', '.join(format(p['test'], '.4f') for p in per)} |"
            )
        lines += ["", "Weights (members in the order above; stack: shares of its absolute coefficients):", ""]
        for s in sets:
            members = ", ".join(
                f"{name.split('_s' + str(s['seed']) + '_')[1]} {v['oof']:.3f}/{v['test']:.3f}"
                for name, v in s["members"].items()
            )
            lines.append(f"- seed {s['seed']}: members (OOF/test) {members}; " + "; ".join(
                f"{m} {w}" for m, w in s["weights"].items() if m != "mean"
            ))  # fmt: skip
        lines.append("")
    lines += [
        "Test probabilities are 05's: each run's fold models averaged, while each out-of-fold row comes from "
        "one model, so the test figures gain from the fold ensemble and the out-of-fold and nested ones do "
        "not (a gap of about 0.1 mAP on the multi-label demo, for single runs and blends alike). The nested "
        "estimate ranks the methods without the choice's optimism; it does not predict that test score.",
        "",
    ]
    lines.append(
        f"{r['seconds']:.0f} s in all ({r['trained_runs']} runs trained, {r['train_seconds']:.0f} s of it); load "
        f"average {r['load'][0]:.1f} before, {r['load'][-1]:.1f} after; {r['date']}."
    )
    return lines


def main(argv: list[str] | None = None) -> int:
    from helpers.allocator import retain_freed_memory

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds, one run set each")
    parser.add_argument("--quick", action="store_true", help="seed 0 only")
    parser.add_argument("--keep", type=Path, help="KIT_OUTPUTS to use and keep (default: a temp folder)")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args(argv)
    retain_freed_memory()
    seeds = [0] if args.quick else [int(s) for s in args.seeds.split(",")]
    if args.keep:
        os.environ["KIT_OUTPUTS"] = str(args.keep)
    with temporary_outputs("bench_blend_"):
        result = run(seeds)
    return report(result, args.json, markdown)


if __name__ == "__main__":
    sys.exit(main())
