"""Training throughput through the real loader against the same batches already in memory, and accuracy at budget.

    python benchmarks/bench_datapath.py [--quick] [--json FILE]              data-path efficiency
    python benchmarks/bench_datapath.py --accuracy [--quick] [--json FILE]   the default recipe on fold 0

Data path: for each backbone and size, one model trained by the kit's own `train_one_epoch` on
(A) fold-0 training batches already collated in memory (uint8, as the loader yields them), and
(B) the same batches through the real loader: the image store or decode, albumentations, collate, InputPrep.
A pass is one epoch over the first 6 batches (384 images) of the fold-0 training split (3 with --quick),
always epoch 0 of the same seeded sampler, so (A) and (B) see identical images. Passes alternate
A B B A B B A ... (one B per A in the headline): each loader pass is divided by the mean of the in-memory
passes just before and after its block, so a slow spell of a shared machine hits both sides of every
ratio. The figure is the median of those ratios over 5 rounds (2 with --quick); images/s are medians too.
Short passes and more rounds, because another tenant's burst of a few seconds spoils any pass it overlaps.

The settings sweep (full mode) runs the same way on the most data-bound case (mobilenetv3_small_100 at
32 px), over loader worker counts, persistent or not, the main process's torch thread count, the RAM
cache and channels_last.

Accuracy: `train_fold` with the Config defaults on the demo digits, fold 0 (one epoch with --quick).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from cli import report, temporary_outputs

from helpers.allocator import retain_freed_memory

BATCH_SIZE = 64  # Config's default
COMBOS = [("resnet18", 32), ("resnet18", 64), ("mobilenetv3_small_100", 32), ("mobilenetv3_small_100", 64)]
SWEEP_COMBO = ("mobilenetv3_small_100", 32)


@dataclass(frozen=True)
class Variant:
    """One way of feeding the same training batches to the same model."""

    name: str
    workers: int | None = None  # None: the kit's auto_workers choice
    persistent: bool = True
    cached: bool = True
    main_threads: int = 0  # torch threads in the main process during the pass; 0: unchanged
    channels_last: bool = True


DEFAULT = Variant("kit default")
SWEEP = [
    DEFAULT,
    Variant("0 workers", workers=0),
    Variant("1 worker, persistent", workers=1),
    Variant("2 workers, persistent", workers=2),
    Variant("1 worker, not persistent", workers=1, persistent=False),
    Variant("1 worker, main torch threads 1", workers=1, main_threads=1),
    Variant("no store, 0 workers", workers=0, cached=False),
    Variant("no store, 1 worker", workers=1, cached=False),
    Variant("channels_last off, 0 workers", workers=0, channels_last=False),
]
BLOCK = 2  # loader passes between two in-memory passes


def _environment() -> None:
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")


def measure_combo(
    backbone: str, img_size: int, variants: list[Variant], rounds: int, max_batches: int = 0
) -> dict:
    """Images/s in memory and through each variant's loader, interleaved; see the module docstring."""
    import cv2
    import torch
    from torch.utils.data import DataLoader

    from helpers.config import Config
    from helpers.dataset import prepare_dataset
    from helpers.loaders import build_loader
    from helpers.model import create_model
    from helpers.train import build_parts, fold_rows, fold_targets, train_one_epoch

    # make_loader sets one OpenCV thread when it starts workers; setting it from the start gives every
    # variant, with or without workers, the same OpenCV thread count (160 vs 163 us per image with 1 or 2
    # threads at these sizes: no difference).
    cv2.setNumThreads(1)
    device = torch.device("cpu")
    cfg = Config(backbone=backbone, img_size=img_size, batch_size=BATCH_SIZE, pretrained=False)
    info = prepare_dataset(cfg)
    rows, _ = fold_rows(info, 0)
    if max_batches:
        rows = rows.head(max_batches * BATCH_SIZE)

    def loader(v: Variant) -> DataLoader:
        """Fold 0's training loader as train_fold builds it, with the variant's cache and workers."""
        changes = {"store": v.cached} | ({} if v.workers is None else {"num_workers": v.workers})
        made = build_loader(cfg.replace(**changes), rows, train=True, fold=0, device=device)
        if v.persistent or made.num_workers == 0:
            return made
        return DataLoader(
            made.dataset,
            batch_size=BATCH_SIZE,
            sampler=made.sampler,
            num_workers=made.num_workers,
            persistent_workers=False,
            worker_init_fn=made.worker_init_fn,
        )

    loaders = {v.name: loader(v) for v in variants}
    # the in-memory side: epoch 0 of the same sampler, collated once (the same images every loader yields)
    staged = list(build_loader(cfg.replace(num_workers=0), rows, train=True, fold=0, device=device))
    models = {}
    for cl in sorted({v.channels_last for v in variants}, reverse=True):
        torch.manual_seed(0)
        model = create_model(backbone, info.num_classes)
        if cl:
            model = model.to(memory_format=torch.channels_last)
        parts = build_parts(
            cfg.replace(channels_last=cl), model, info.num_classes, 100_000, device, fold_targets(info, 0)
        )
        models[cl] = (model, parts)

    default_threads = torch.get_num_threads()

    def rate(v: Variant | None, cl: bool = True) -> float:
        model, parts = models[v.channels_last if v else cl]
        source = loaders[v.name] if v else staged
        if v and v.main_threads:
            torch.set_num_threads(v.main_threads)
        try:
            started = time.perf_counter()
            images = train_one_epoch(model, source, parts, device, desc="bench")["train_images"]
            return images / (time.perf_counter() - started)
        finally:
            torch.set_num_threads(default_threads)

    # warm-up, untimed: allocator and kernel choice for every model, workers started, caches touched
    for cl in models:
        model, parts = models[cl]
        train_one_epoch(model, staged[:3], parts, device, desc="warm-up")
    for v in variants:
        for _ in loaders[v.name]:
            pass

    memory: dict[bool, list[float]] = {cl: [] for cl in models}
    through: dict[str, list[float]] = {v.name: [] for v in variants}
    ratios: dict[str, list[float]] = {v.name: [] for v in variants}
    load = [os.getloadavg()[0]]
    before = {}
    for _ in range(rounds):
        for cl in models:  # each memory format: A B B A B B A ... over the variants that use it
            group = [v for v in variants if v.channels_last == cl]
            if cl not in before:
                before[cl] = rate(None, cl)
                memory[cl].append(before[cl])
            for start in range(0, len(group), BLOCK):
                block = [(v, rate(v)) for v in group[start : start + BLOCK]]
                after = rate(None, cl)
                memory[cl].append(after)
                for v, r in block:
                    through[v.name].append(r)
                    ratios[v.name].append(r / ((before[cl] + after) / 2))
                before[cl] = after
        load.append(os.getloadavg()[0])

    med = statistics.median
    base = med(memory[True]) if True in memory else None
    out_variants = []
    for v in variants:
        out_variants.append(
            {
                **asdict(v),
                "workers": loaders[v.name].num_workers,
                "images_per_s": med(through[v.name]),
                "in_memory_images_per_s": med(memory[v.channels_last]),
                "ratio": med(ratios[v.name]),
                "ratios": ratios[v.name],
                "vs_default_in_memory": med(through[v.name]) / base if base else None,
            }
        )
    return {
        "backbone": backbone,
        "img_size": img_size,
        "batch_size": BATCH_SIZE,
        "train_images": len(rows),
        "rounds": rounds,
        "torch_threads": default_threads,
        "load_avg": load,
        "in_memory": {("channels_last" if cl else "contiguous"): memory[cl] for cl in memory},
        "variants": out_variants,
    }


def run_datapath(quick: bool) -> dict:
    _environment()
    import torch

    from helpers.loaders import auto_workers

    started = time.perf_counter()
    # short passes, many of them: the median of 5 ratios survives 2 passes hit by another tenant's burst
    rounds, sweep_rounds, max_batches = (2, 2, 3) if quick else (5, 4, 6)
    headline = []
    sweep = None
    for backbone, size in COMBOS:
        if not quick and (backbone, size) == SWEEP_COMBO:
            same = [v for v in SWEEP if v.workers == auto_workers(True) and v == Variant(v.name, v.workers)]
            sweep = measure_combo(
                backbone, size, [v for v in SWEEP if v not in same], sweep_rounds, max_batches
            )
            headline.append(
                {**sweep, "variants": [v for v in sweep["variants"] if v["name"] == DEFAULT.name]}
            )
        else:
            headline.append(measure_combo(backbone, size, [DEFAULT], rounds, max_batches))
        print(f"data path {backbone} {size}px: ratio {headline[-1]['variants'][0]['ratio']:.2f}", flush=True)
    return {
        "quick": quick,
        "rounds": rounds,
        "sweep_rounds": sweep_rounds,
        "max_batches": max_batches,
        "auto_workers": {"cached": auto_workers(True), "uncached": auto_workers(False)},
        "torch_threads": torch.get_num_threads(),
        "headline": headline,
        "sweep": sweep,
        "seconds": time.perf_counter() - started,
    }


def run_accuracy(quick: bool) -> dict:
    """The default recipe (Config defaults) on the demo digits, fold 0; one epoch with --quick."""
    _environment()
    import pandas as pd

    from helpers.config import Config
    from helpers.dataset import prepare_dataset
    from helpers.run_folder import RunFolder
    from helpers.settings import resolve_settings
    from helpers.train import train_fold

    started = time.perf_counter()
    cfg = Config(run_name="bench_accuracy", pretrained=False)
    if quick:
        cfg = cfg.replace(epochs=1)
    info = prepare_dataset(cfg)
    cfg, _ = resolve_settings(cfg, info)
    metrics: pd.DataFrame = train_fold(cfg, info, 0, RunFolder.of(cfg).create())
    last = metrics.iloc[-1]
    return {
        "quick": quick,
        "backbone": cfg.backbone,
        "img_size": cfg.img_size,
        "epochs": cfg.epochs,
        "lr": cfg.lr,
        "scheduler": cfg.scheduler,
        "label_smoothing": cfg.label_smoothing,
        "augment": cfg.augment,
        "final_val_acc": float(last["val_acc"]),
        "best_val_acc": float(metrics["val_acc"].max()),
        "val_images": int((info.table["fold"] == 0).sum()),
        "epoch_rows": metrics[
            ["epoch", "train_loss", "val_loss", "val_acc", "seconds", "images_per_s"]
        ].to_dict("records"),
        "seconds": time.perf_counter() - started,
    }


# -- report --------------------------------------------------------------------------------------------------
def datapath_markdown(r: dict) -> list[str]:
    def fmt(v: dict) -> str:
        return f"{v['images_per_s']:.0f} | {v['in_memory_images_per_s']:.0f} | **{v['ratio']:.2f}**"

    mode = (
        f"median of {r['rounds']} rounds{' (quick)' if r['quick'] else ''}"
        + (
            f" ({r['sweep_rounds']} for {SWEEP_COMBO[0]} at {SWEEP_COMBO[1]} px, from the settings sweep)"
            if r.get("sweep")
            else ""
        )
        + f", each pass one epoch over the first {r['max_batches']} batches of the fold-0 training split"
        + (
            " (quick mode is a smoke test: two short rounds do not survive another tenant's load, so ratios"
            " above 1 or far apart mean noise; use the full run)"
            if r["quick"]
            else ""
        )
    )
    lines = [
        f"Through the loader with the kit's defaults (image store; `auto_workers`: {r['auto_workers']['cached']} "
        f"loader process(es) for cached images, {r['auto_workers']['uncached']} uncached; channels_last, batch "
        f"{BATCH_SIZE}, augment light, "
        f"{r['torch_threads']} torch threads) vs the same batches in memory; {mode}; goal >= 0.9.",
        "",
        "| backbone | px | images per pass | loader img/s | in-memory img/s | ratio | per-round ratios | load avg |",
        "|---|---:|---:|---:|---:|---:|---|---|",
    ]
    for h in r["headline"]:
        v = h["variants"][0]
        lines.append(
            f"| {h['backbone']} | {h['img_size']} | {h['train_images']} | {fmt(v)} | "
            f"{', '.join(f'{x:.2f}' for x in v['ratios'])} | {min(h['load_avg']):.1f}-{max(h['load_avg']):.1f} |"
        )
    s = r.get("sweep")
    if s:
        lines += [
            "",
            f"Settings on {s['backbone']} at {s['img_size']} px (the most data-bound case), same interleaving, "
            f"{s['rounds']} rounds. `vs default in-memory` divides by the channels_last in-memory rate, so "
            "settings that slow the model itself (channels_last off, fewer threads) count against them too.",
            "",
            "| setting | workers | loader img/s | its in-memory img/s | ratio | vs default in-memory |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for v in s["variants"]:
            lines.append(f"| {v['name']} | {v['workers']} | {fmt(v)} | {v['vs_default_in_memory']:.2f} |")
        kit = [v for v in s["variants"] if "not in the kit" not in v["name"]]
        best = max(kit, key=lambda v: v["vs_default_in_memory"])
        default = next(v for v in s["variants"] if v["name"] == DEFAULT.name)
        lines += [
            "",
            f"Fastest setting the kit offers in this run: **{best['name']}** ({best['images_per_s']:.0f} img/s, "
            f"{best['vs_default_in_memory']:.2f} of the in-memory rate); the kit default: "
            f"{default['images_per_s']:.0f} img/s ({default['vs_default_in_memory']:.2f}). Short passes make the "
            "epoch-start refill of worker variants a larger share than in a real epoch, by about 2%.",
        ]
    lines.append(f"\nData-path part: {r['seconds']:.0f} s.")
    return lines


def accuracy_markdown(r: dict) -> list[str]:
    lines = [
        f"Config defaults ({r['backbone']} at {r['img_size']} px, {r['epochs']} epoch(s), AdamW lr {r['lr']}, "
        f"{r['scheduler']}, label smoothing {r['label_smoothing']}, augment {r['augment']}) on the demo digits, "
        f"fold 0 ({r['val_images']} validation images)"
        + (": **quick mode, 1 epoch only, not comparable with the goal**." if r["quick"] else "."),
        "",
        "| epoch | train loss | val loss | val acc | s | train img/s |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for e in r["epoch_rows"]:
        lines.append(
            f"| {e['epoch']} | {e['train_loss']:.4f} | {e['val_loss']:.4f} | {e['val_acc']:.4f} | "
            f"{e['seconds']:.1f} | {e['images_per_s']:.0f} |"
        )
    verdict = (
        "" if r["quick"] else (" (meets >= 0.99)" if r["final_val_acc"] >= 0.99 else " (**misses >= 0.99**)")
    )
    lines += [
        "",
        f"Validation accuracy after the last epoch: **{r['final_val_acc']:.4f}**{verdict}; best epoch "
        f"{r['best_val_acc']:.4f}; {r['seconds']:.0f} s in all.",
    ]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--accuracy", action="store_true", help="the accuracy-at-budget part instead")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args(argv)
    retain_freed_memory()
    with temporary_outputs("bench_datapath_"):
        result = run_accuracy(args.quick) if args.accuracy else run_datapath(args.quick)
    return report(result, args.json, accuracy_markdown if args.accuracy else datapath_markdown)


if __name__ == "__main__":
    sys.exit(main())
