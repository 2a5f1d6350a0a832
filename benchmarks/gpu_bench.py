"""GPU training on photo-size data: the kit's loader from the image store against in-memory batches and
against timm's own loader, eager and compiled; then one short torchrun training on CUDA.

    python benchmarks/gpu_bench.py [--photos N] [--workers W] [--out-dir benchmarks/results]
    python benchmarks/gpu_bench.py --device cpu   # a dry run of every step on a small set, no figures

For each backbone (resnet50, tf_efficientnet_b2) at 224 px in bf16 with channels_last, through the kit's
own `train_one_epoch` and model (`train._fold_model`, so `compile` is the kit's setting):
- in_memory: images/s on batches already on the GPU (the compute ceiling);
- loader: images/s through `build_loader` reading the store that 01's `prepare_dataset` built (light
  augmentation in the workers, uint8 batches, normalised on the GPU), and their ratio (goal >= 0.95);
- timm_loader: images/s through timm's loader as timm's train.py builds it from the same files
  (`timm.data.create_dataset` over the image folder, `create_loader(is_training=True, use_prefetcher=True)`:
  PIL decode, RandomResizedCrop, flip, colour jitter in the workers, normalised on the GPU), feeding the
  same model step; the kit's loader against it (goal: ahead);
each eager and with compile=True. Then `torchrun --nproc_per_node 1 -m helpers.distributed` trains one
epoch of a small run on CUDA: the NCCL process group, the CUDA device per rank and the bf16 autocast path
of the training loop, which CPU tests cannot reach.

The photos are benchmarks/photos.py's (1280x960 JPEG q90). Figures go to <out-dir>/gpu_photos_<backbone>.json
and gpu_photos_torchrun.json, with the device and the date. On a machine without CUDA it stops at once,
unless `--device cpu` asks for the dry run: the same steps in fp32 on a few photos with resnet18, so a
broken step shows up here and not in the few minutes a GPU is lent (tests/test_gpu_bench.py runs it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from photos import make_photo_set  # noqa: E402

from helpers.allocator import retain_freed_memory  # noqa: E402

BACKBONES = ("resnet50", "tf_efficientnet_b2")
SIZE = 224


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(model, batches, parts, device, repeats: int) -> float:
    """Median images/s of `repeats` passes of the kit's train_one_epoch over the batches."""
    from helpers.train import train_one_epoch

    rates = []
    for _ in range(repeats):
        sync(device)
        started = time.perf_counter()
        seen = train_one_epoch(model, batches, parts, device, desc="bench")["train_images"]
        sync(device)
        rates.append(seen / (time.perf_counter() - started))
    return statistics.median(rates)


class Triples:
    """timm's loader yields (images, labels); the kit's loop takes (images, labels, indices)."""

    def __init__(self, loader):
        self.loader = loader

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        return ((x, y, None) for x, y in self.loader)


def timm_loader(folder: Path, batch_size: int, workers: int, device: torch.device):
    """timm's training loader over the image folder, as timm's train.py builds it by default."""
    from timm.data import create_dataset, create_loader

    dataset = create_dataset("", root=str(folder), split="train", search_split=False, is_training=True)
    return create_loader(
        dataset,
        input_size=(3, SIZE, SIZE),
        batch_size=batch_size,
        is_training=True,
        use_prefetcher=True,
        num_workers=workers,
        pin_memory=True,
        persistent_workers=True,
        device=device,
    )


def bench_backbone(backbone: str, root: Path, args: argparse.Namespace, device: torch.device) -> dict:
    from helpers.config import Config
    from helpers.dataset import prepare_dataset
    from helpers.loaders import build_loader
    from helpers.settings import resolve_task
    from helpers.train import _fold_model, build_parts, fold_rows, fold_targets

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    cfg = Config(
        pretrained=False,
        data_dir=str(root),
        backbone=backbone,
        img_size=SIZE,
        batch_size=args.batch_size,
        precision=args.precision,
        channels_last=True,
        augment="light",
        num_workers=args.workers,
    )
    info = prepare_dataset(cfg)  # 01's check and the store at 224 px, in one pass
    cfg = resolve_task(cfg, info)  # the task 01 would save
    rows = fold_rows(info, 0)[0]
    loader = build_loader(cfg, rows, True, 0, device)
    assert loader.dataset.store is not None and loader.dataset.store.stored == len(rows)
    staged = []
    for x, y, i in loader:
        staged.append((x.to(device), y.to(device), i))
        if len(staged) == args.batches:
            break
    reference = Triples(timm_loader(root / "train_image", args.batch_size, args.workers, device))
    result: dict = {"backbone": backbone, "images": len(rows), "batches_in_memory": len(staged)}
    for compiled in args.compiled:
        torch.manual_seed(0)
        model = _fold_model(cfg.replace(compile=compiled), info.num_classes, device)
        parts = build_parts(cfg, model, info.num_classes, 100_000, device, fold_targets(info, 0))
        started = time.perf_counter()
        timed(model, staged[:5], parts, device, 1)  # warm-up: cudnn autotune, allocator, compilation
        tag = "compiled" if compiled else "eager"
        result[f"warmup_seconds_{tag}"] = time.perf_counter() - started
        result[f"in_memory_{tag}"] = timed(model, staged, parts, device, args.repeats)
        timed(model, loader, parts, device, 1)  # warm-up: workers start, page cache
        result[f"loader_{tag}"] = timed(model, loader, parts, device, args.repeats)
        timed(model, reference, parts, device, 1)
        result[f"timm_loader_{tag}"] = timed(model, reference, parts, device, args.repeats)
        result[f"loader_ratio_{tag}"] = result[f"loader_{tag}"] / result[f"in_memory_{tag}"]
        result[f"vs_timm_{tag}"] = result[f"loader_{tag}"] / result[f"timm_loader_{tag}"]
    if {"in_memory_compiled", "in_memory_eager"} <= result.keys():
        result["compile_speedup_in_memory"] = result["in_memory_compiled"] / result["in_memory_eager"]
    if device.type == "cuda":
        result["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return result


def torchrun_once(root: Path, precision: str) -> dict:
    """One epoch of a small run through `torchrun --nproc_per_node 1 -m helpers.distributed` on the device."""
    from helpers.config import Config
    from helpers.run_folder import RunFolder

    name = "torchrun_once"
    cfg = Config(
        pretrained=False,
        data_dir=str(root),
        run_name=name,
        backbone="resnet18",
        img_size=SIZE,
        crop_pct=1.0,
        epochs=1,
        batch_size=32,
        precision=precision,
        folds=[0],
    )
    run = RunFolder.named(name).create()  # under KIT_OUTPUTS, which torchrun's process inherits
    run.write_config(cfg)
    command = [  # torchrun, from this interpreter's environment
        *(sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1"),
        *("-m", "helpers.distributed", "--run-name", name, "--expect-world-size", "1"),
    ]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, timeout=900, check=False)
    metrics = run.read_metrics().to_dict("records") if done.returncode == 0 else []
    launched = [line for line in done.stdout.splitlines() if line.startswith("helpers.distributed: run")]
    return {
        "command": " ".join(command),
        "returncode": done.returncode,
        "launch": launched[0] if launched else "",  # the process group's backend, device and precision
        "seconds": time.perf_counter() - started,
        "metrics": metrics,
        "log_tail": (done.stdout + done.stderr)[-3000:],
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="cpu: the dry run")
    parser.add_argument("--photos", type=int, help="photos in the set (400 distinct); default 6000")
    parser.add_argument("--batch-size", type=int, help="default 128")
    parser.add_argument("--batches", type=int, help="in-memory batches per timed pass; default 30")
    parser.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 2))
    parser.add_argument("--repeats", type=int, help="timed passes, the median kept; default 3")
    parser.add_argument("--backbones", help=f"default {','.join(BACKBONES)}")
    parser.add_argument(
        "--out-dir", type=Path, help="default benchmarks/results (the dry run: <work>/results)"
    )
    parser.add_argument(
        "--work", type=Path, help="folder for the photos and outputs (default: a temp folder)"
    )
    args = parser.parse_args(argv)
    # the GPU figures, or the dry run's smallest set that still takes every step (two batches a pass)
    full = {"photos": 6000, "batch_size": 128, "batches": 30, "repeats": 3, "backbones": ",".join(BACKBONES)}
    dry = {"photos": 60, "batch_size": 8, "batches": 2, "repeats": 1, "backbones": "resnet18"}
    for name, value in (full if args.device == "cuda" else dry).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.precision = "bf16" if args.device == "cuda" else "fp32"
    args.compiled = (False, True) if args.device == "cuda" else (False,)  # CPU compiles for minutes
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_bench.py needs CUDA; this machine has none (--device cpu: the dry run)", file=sys.stderr)
        return 2
    retain_freed_memory()
    work = args.work or Path(tempfile.mkdtemp(prefix="gpu_bench_"))
    os.environ["KIT_OUTPUTS"] = str(work / "outputs")
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    torch.backends.cudnn.benchmark = True
    device = torch.device(args.device)
    out_dir = args.out_dir or (HERE / "results" if device.type == "cuda" else work / "results")
    root = make_photo_set(work / "photos", args.photos)
    machine = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu (dry run)",
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu_cores": os.cpu_count(),
        "loader_workers": args.workers,
        "batch_size": args.batch_size,
        "img_size": SIZE,
        "precision": args.precision,
        "channels_last": True,
        "photos": args.photos,
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    for backbone in args.backbones.split(","):
        figures = {**machine, **bench_backbone(backbone, root, args, device)}
        (out_dir / f"gpu_photos_{backbone}.json").write_text(json.dumps(figures, indent=2) + "\n")
        print(json.dumps(figures, indent=2), flush=True)
    launched = {**machine, **torchrun_once(root, args.precision)}
    (out_dir / "gpu_photos_torchrun.json").write_text(json.dumps(launched, indent=2) + "\n")
    print(json.dumps({k: v for k, v in launched.items() if k != "log_tail"}, indent=2))
    return 0 if launched["returncode"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
