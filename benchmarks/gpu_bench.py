"""GPU training throughput: in-memory batches (eager and torch.compile) and the real data path.

Measures, for one backbone at one size in bf16 with channels_last, through the kit's own
`train_one_epoch`:
- images/s on batches already on the GPU (the compute ceiling), eager and compiled;
- images/s through the real loader (decode from the RAM cache, augment, collate, copy), eager;
- their ratio, the data-path efficiency.
Meant for a CUDA machine (`python benchmarks/gpu_bench.py --out gpu.json`); on CPU it runs in fp32, for a
dry run with small settings. Prints the figures as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from helpers.allocator import retain_freed_memory


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed_epochs(model, batches, parts, device, repeats: int) -> list[float]:
    from helpers.train import train_one_epoch

    rates = []
    for _ in range(repeats):
        sync(device)
        started = time.perf_counter()
        metrics = train_one_epoch(model, batches, parts, device, desc="bench")
        sync(device)
        rates.append(metrics["train_images"] / (time.perf_counter() - started))
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--batches", type=int, default=30, help="in-memory batches per timed pass")
    parser.add_argument("--repeat-data", type=int, default=8, help="times the demo train split is repeated")
    parser.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 2))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-compile", action="store_true")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    retain_freed_memory()
    os.environ.setdefault("KIT_OUTPUTS", tempfile.mkdtemp())
    os.environ.setdefault("KIT_DEMO_DATA", str(Path(tempfile.mkdtemp()) / "digits"))

    import pandas as pd

    from helpers.config import Config
    from helpers.dataset import prepare_dataset
    from helpers.loaders import build_loader
    from helpers.model import create_model
    from helpers.precision import pick_device
    from helpers.train import build_parts

    device = pick_device()
    torch.backends.cudnn.benchmark = True
    precision = "bf16" if device.type == "cuda" else "fp32"
    cfg = Config(
        backbone=args.backbone,
        img_size=args.img_size,
        batch_size=args.batch_size,
        precision=precision,
        channels_last=True,
        augment="light",
        num_workers=args.workers,
    )
    info = prepare_dataset(cfg)
    rows = pd.concat([info.table[info.table["fold"] != 0]] * args.repeat_data, ignore_index=True)
    loader = build_loader(cfg, rows, train=True, fold=0, device=device)

    def fresh(compiled: bool):
        torch.manual_seed(0)
        model = create_model(cfg.backbone, info.num_classes).to(device).to(memory_format=torch.channels_last)
        parts = build_parts(cfg, model, info.num_classes, 10_000, device)
        return (torch.compile(model) if compiled else model), parts

    staged = []
    for x, y, idx in loader:
        staged.append((x.to(device), y.to(device), idx))
        if len(staged) == args.batches:
            break
    results: dict[str, object] = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu_cores": os.cpu_count(),
        "backbone": cfg.backbone,
        "img_size": cfg.img_size,
        "batch_size": cfg.batch_size,
        "precision": precision,
        "channels_last": True,
        "loader_workers": args.workers,
        "date": time.strftime("%Y-%m-%d"),
    }
    model, parts = fresh(False)
    timed_epochs(model, staged[:5], parts, device, 1)  # warm-up: cudnn autotune, allocator
    results["in_memory_eager"] = statistics.median(timed_epochs(model, staged, parts, device, args.repeats))
    timed_epochs(model, loader, parts, device, 1)  # warm-up: workers start, caches
    results["loader_eager"] = statistics.median(timed_epochs(model, loader, parts, device, args.repeats))
    results["data_path_ratio"] = results["loader_eager"] / results["in_memory_eager"]
    if not args.skip_compile:
        model, parts = fresh(True)
        started = time.perf_counter()
        timed_epochs(model, staged[:5], parts, device, 1)
        results["compile_seconds"] = time.perf_counter() - started
        results["in_memory_compiled"] = statistics.median(
            timed_epochs(model, staged, parts, device, args.repeats)
        )
        results["compile_speedup"] = results["in_memory_compiled"] / results["in_memory_eager"]
        results["loader_compiled"] = statistics.median(
            timed_epochs(model, loader, parts, device, args.repeats)
        )
    if device.type == "cuda":
        results["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    print(json.dumps(results, indent=2))
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
