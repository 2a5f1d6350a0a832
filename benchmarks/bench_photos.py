"""Photo-size data: the decode-once image store against decoding every epoch, 1280x960 JPEGs at 224 px.

    python benchmarks/bench_photos.py [--quick] [--json FILE] [--folder DIR]

On the photo set of benchmarks/photos.py (real photographs, 1280x960, JPEG q90, ~300 KB):
- loader: training samples per second on one core (one process, one torch and one OpenCV thread): read +
  light augmentation + tensor at 224 px, from the files with a full decode (the kit before the store),
  from the files with the reduced decode (the kit with store=False), from the store, and timm's path (PIL
  open + convert, timm.data.create_transform(224, is_training=True): RandomResizedCrop, flip, colour
  jitter, normalise). The variants take turns, round after round; medians of the rounds.
- build: 01's `prepare_dataset` (check + store build in one pass, 2 threads) on a fresh dataset folder at
  two sizes, each in its own process: seconds, images/s, CPU time per photo (user + system: what the
  build costs however busy the machine is), peak memory growth (ru_maxrss).
- memory: one pass through `build_loader` from the store with 0 and 2 worker processes: the total
  proportional memory (Pss: each shared page counted once) of the main process and its workers.
- training: resnet18 at 224 px on the CPU, `train_one_epoch` through the store's loader against the same
  batches already in memory, in turns (A B, then B A); the median of the rounds' ratios.
- compile: the same in-memory batches eager and with `compile=True` (torch.compile), after a warm-up.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_scale import _children, _pss_kb, _rss_kb
from photos import make_photo_set

from helpers.allocator import retain_freed_memory

SIZE = 224
BATCH = 32


def _environment(threads: int = 0) -> None:
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")
    if threads:
        import cv2
        import torch

        cv2.setNumThreads(threads)
        torch.set_num_threads(threads)


def _cfg(root: Path, **changes):
    from helpers.config import Config

    return Config(
        data_dir=str(root), img_size=SIZE, batch_size=BATCH, augment="light", pretrained=False, **changes
    )


def loader_rates(root: Path, n: int, rounds: int) -> dict:
    """Samples/s on one core for each way of reading and augmenting (see the module docstring)."""
    _environment(threads=1)
    import timm.data
    import torch
    from PIL import Image

    from helpers.augment import build_train_transform
    from helpers.dataset import prepare_dataset
    from helpers.images import read_image
    from helpers.loaders import build_loader

    cfg = _cfg(root, num_workers=0)
    info = prepare_dataset(cfg)  # builds the store at 224 (resnet18 from scratch: no crop)
    rows = info.table.head(n)
    dataset = build_loader(cfg, rows, True, 0, torch.device("cpu")).dataset
    assert dataset.store is not None and dataset.store.stored == len(rows)
    paths = rows["path"].tolist()
    light = build_train_transform("light", SIZE)
    timm_transform = timm.data.create_transform(SIZE, is_training=True)

    def pil(path: str):
        with Image.open(path) as image:
            return timm_transform(image.convert("RGB"))

    ways = {
        "files, full decode": lambda i: light(image=read_image(paths[i]))["image"],
        "files, reduced decode (store=False)": lambda i: light(image=read_image(paths[i], SIZE))["image"],
        "store": lambda i: dataset[i][0],
        "timm: PIL + torchvision": lambda i: pil(paths[i]),
    }
    rates: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(rounds):
        for name, sample in ways.items():
            started = time.perf_counter()
            for i in range(len(paths)):
                sample(i)
            rates[name].append(len(paths) / (time.perf_counter() - started))
    medians = {name: statistics.median(r) for name, r in rates.items()}
    return {"images": len(paths), "rounds": rounds, "per_core": medians, "all": rates}


def build_one(root: Path, outputs: Path) -> dict:
    """prepare_dataset with the store on a fresh outputs folder: 01's check and store build."""
    os.environ["KIT_OUTPUTS"] = str(outputs)
    _environment()
    import pandas as pd

    from helpers.dataset import prepare_dataset

    n = len(pd.read_csv(root / "train.csv"))
    cfg = _cfg(root)
    before_kb = _rss_kb()
    cpu_before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    info = prepare_dataset(cfg)
    seconds = time.perf_counter() - started
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu_seconds = usage.ru_utime + usage.ru_stime - cpu_before.ru_utime - cpu_before.ru_stime
    peak_kb = usage.ru_maxrss
    store_bytes = sum(f.stat().st_size for f in (info.folder / "store").rglob("pixels.bin"))
    started = time.perf_counter()
    prepare_dataset(cfg)
    again = time.perf_counter() - started
    return {
        "images": n,
        "seconds": seconds,
        "images_per_s": n / seconds,
        "cpu_seconds": cpu_seconds,  # what the build costs whatever else runs on the machine
        "again_seconds": again,
        "peak_growth_mb": (peak_kb - before_kb) / 1024,
        "store_mb": store_bytes / 2**20,
        "threads": os.cpu_count(),
    }


def memory_one(root: Path, n: int, workers: int) -> dict:
    """One pass over n stored samples through build_loader; total Pss of the processes at tenths of it."""
    _environment()
    import torch

    from helpers.dataset import prepare_dataset
    from helpers.loaders import build_loader

    cfg = _cfg(root, num_workers=workers)
    info = prepare_dataset(cfg)
    loader = build_loader(cfg, info.table.head(n), True, 0, torch.device("cpu"))
    me, every, samples, started = os.getpid(), max(1, len(loader) // 10), [], time.perf_counter()
    for i, _ in enumerate(loader):
        if i % every == 0 or i == len(loader) - 1:
            kids = _children(me)
            samples.append((_pss_kb(me) + sum(_pss_kb(k) for k in kids)) / 1024)
    return {"workers": workers, "images": n, "seconds": time.perf_counter() - started, "pss_mb": samples}


def training_ratio(root: Path, batches: int, rounds: int, compiled: bool = False) -> dict:
    """resnet18 at 224 px: train_one_epoch through the store's loader and on the same batches in memory."""
    _environment()
    import torch

    from helpers.dataset import prepare_dataset
    from helpers.loaders import build_loader
    from helpers.train import _fold_model, build_parts, fold_targets, train_one_epoch

    device = torch.device("cpu")
    cfg = _cfg(root, compile=compiled)
    info = prepare_dataset(cfg)
    rows = info.table.head(batches * BATCH)
    loader = build_loader(cfg, rows, True, 0, device)
    staged = list(loader)
    torch.manual_seed(0)
    model = _fold_model(cfg, info.num_classes, device)
    parts = build_parts(cfg, model, info.num_classes, 100_000, device, fold_targets(info, 0))
    started = time.perf_counter()
    train_one_epoch(model, staged[:2], parts, device, desc="warm-up")  # compiles here when asked
    warmup = time.perf_counter() - started

    def rate(batches_or_loader) -> float:
        started = time.perf_counter()
        seen = train_one_epoch(model, batches_or_loader, parts, device, desc="bench")["train_images"]
        return seen / (time.perf_counter() - started)

    memory, through = [], []
    for r in range(rounds):  # in turns, A B then B A, so a drift in the machine's load favours neither
        if r % 2:
            through.append(rate(loader))
            memory.append(rate(staged))
        else:
            memory.append(rate(staged))
            through.append(rate(loader))
    return {
        "compiled": compiled,
        "warmup_seconds": warmup,
        "in_memory": statistics.median(memory),
        "loader": statistics.median(through),
        "ratios": [t / m for t, m in zip(through, memory, strict=True)],
        "ratio": statistics.median(t / m for t, m in zip(through, memory, strict=True)),
        "loader_workers": loader.num_workers,
        "torch_threads": torch.get_num_threads(),
    }


def _in_subprocess(args: list[str], timeout: int = 1500) -> dict:
    done = subprocess.run(
        [sys.executable, __file__, *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"bench_photos {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


PARTS = ("build", "loader", "memory", "training", "compiled")


def run(
    quick: bool, folder: Path | None = None, parts: tuple[str, ...] = PARTS, out: Path | None = None
) -> dict:
    """The chosen parts, each written to `out` as soon as it is measured (a part that fails or runs out of
    time loses only itself); figures already in `out` from another part are kept."""
    sizes = [1_000, 2_000] if quick else [5_000, 10_000]
    own = folder is None
    folder = folder or Path(tempfile.mkdtemp(prefix="bench_photos_"))
    started = time.perf_counter()
    result: dict = json.loads(out.read_text()) if out is not None and out.exists() else {}
    result.update(quick=quick, load_average=os.getloadavg())

    def save(name: str, measure) -> None:
        try:
            result[name] = measure()
        except (RuntimeError, subprocess.TimeoutExpired) as error:
            result[name] = {"error": str(error)[-600:]}
        result["load_average_after"] = os.getloadavg()
        if out is not None:
            out.write_text(json.dumps(result, indent=2))

    try:
        roots = {n: make_photo_set(folder / f"photos{n}", n) for n in sizes}
        small = roots[sizes[0]]
        if "build" in parts:

            def build() -> list[dict]:
                builds = []
                for n, root in roots.items():
                    outputs = folder / f"outputs{n}"
                    shutil.rmtree(outputs, ignore_errors=True)
                    builds.append(_in_subprocess(["--build-one", str(root), str(outputs)]))
                    if n != sizes[0]:
                        shutil.rmtree(outputs, ignore_errors=True)
                return builds

            save("build", build)
        os.environ["KIT_OUTPUTS"] = str(folder / f"outputs{sizes[0]}")
        if "loader" in parts:
            args = ["--loader", str(small), str(200 if quick else 400), str(3 if quick else 5)]
            save("loader", lambda: _in_subprocess(args))
        if "memory" in parts:
            n = str(600 if quick else 2000)
            save("memory", lambda: [_in_subprocess(["--memory-one", str(small), n, str(w)]) for w in (0, 2)])
        train = [str(small), "3", str(2 if quick else 4)]
        if "training" in parts:
            save("training", lambda: _in_subprocess(["--training", *train, "0"]))
        if "compiled" in parts:
            save("compiled", lambda: _in_subprocess(["--training", *train, "1"], timeout=1200))
    finally:
        if own:
            shutil.rmtree(folder, ignore_errors=True)
    result["seconds"] = time.perf_counter() - started
    if out is not None:
        out.write_text(json.dumps(result, indent=2))
    return result


def _failed(r: dict, part: str) -> str | None:
    """Why a part has no figures (not run, or its error's last line), or None when it has."""
    if part not in r:
        return "not run"
    if isinstance(r[part], dict) and "error" in r[part]:
        return "failed: " + r[part]["error"].strip().splitlines()[-1][:300]
    return None


def markdown(r: dict) -> list[str]:
    lines = [
        "Photo-size data (benchmarks/photos.py: real photographs cropped and upscaled to 1280x960, JPEG q90, "
        f"~300 KB each) trained at {SIZE} px. Load average at the start "
        f"{' / '.join(f'{v:.1f}' for v in r['load_average'])}, at the end "
        f"{' / '.join(f'{v:.1f}' for v in r['load_average_after'])} (a shared machine: ratios are within one run).",
        "",
    ]
    if why := _failed(r, "loader"):
        lines += [f"Loader per core: {why}.", ""]
    else:
        lo = r["loader"]["per_core"]
        today, store = lo["files, full decode"], lo["store"]
        lines += [
            f"Loader on one core, {r['loader']['images']} samples x {r['loader']['rounds']} rounds (median), "
            "read + light augmentation + tensor at 224 px:",
            "",
            "| source | samples/s per core | vs today's files |",
            "|---|---:|---:|",
            *(f"| {name} | {rate:.0f} | {rate / today:.2f}x |" for name, rate in lo.items()),
            "",
            f"Goal >= 1,000 samples/s per core from the store: {'met' if store >= 1000 else 'not met'} "
            f"({store:.0f}).",
            "",
        ]
    if why := _failed(r, "build"):
        lines += [f"01's check + store build: {why}.", ""]
    else:
        lines += [
            "01's image check + store build in one pass (`prepare_dataset`, 2 threads, fresh dataset folder):",
            "",
            "| photos | seconds | photos/s | CPU ms per photo | peak memory growth MB | store MB | again: s |",
            "|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for b in r["build"]:
            lines.append(
                f"| {b['images']:,} | {b['seconds']:.1f} | {b['images_per_s']:.0f} | "
                f"{1e3 * b['cpu_seconds'] / b['images'] if 'cpu_seconds' in b else float('nan'):.1f} | "
                f"{b['peak_growth_mb']:.0f} | {b['store_mb']:.0f} | "
                f"{b['again_seconds']:.2f} |"
            )
        lines.append("")
    if why := _failed(r, "memory"):
        lines += [f"Memory with workers: {why}.", ""]
    else:
        lines += [
            "Memory through `build_loader` from the store (total Pss of main + workers, MB, over a pass):",
            "",
            "| workers | samples | samples/s | total Pss MB start -> end (max) |",
            "|---:|---:|---:|---|",
        ]
        for m in r["memory"]:
            lines.append(
                f"| {m['workers']} | {m['images']:,} | {m['images'] / m['seconds']:.0f} | "
                f"{m['pss_mb'][0]:.0f} -> {m['pss_mb'][-1]:.0f} ({max(m['pss_mb']):.0f}) |"
            )
        lines.append("")
    rows = []
    for part, label in (("training", "eager"), ("compiled", "compile=True")):
        if why := _failed(r, part):
            rows.append(f"| {label} | {why} | | | |")
            continue
        t = r[part]
        ratios = ", ".join(f"{x:.2f}" for x in t["ratios"])
        rows.append(
            f"| {label} (warm-up {t['warmup_seconds']:.0f} s) | {t['in_memory']:.1f} | {t['loader']:.1f} | "
            f"**{t['ratio']:.2f}** | {ratios} |"
        )
    lines += [
        f"CPU training, resnet18 at 224 px, batch {BATCH}, the kit's loader workers (none on 2 cores):",
        "",
        "| model | in memory img/s | through the store's loader img/s | loader / in-memory (goal >= 0.95) | "
        "per round |",
        "|---|---:|---:|---:|---|",
        *rows,
    ]
    if not _failed(r, "training") and not _failed(r, "compiled"):
        speedup = r["compiled"]["in_memory"] / r["training"]["in_memory"]
        lines.append(f"\ncompile / eager, in memory: {speedup:.2f}x.")
    lines.append(f"\nPhotos part: {r['seconds']:.0f} s.")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--folder", type=Path, help="reuse (and keep) this folder of photo sets")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {PARTS}")
    parser.add_argument("--build-one", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--loader", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--memory-one", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--training", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    retain_freed_memory()
    if args.build_one:
        print(json.dumps(build_one(Path(args.build_one[0]), Path(args.build_one[1]))))
    elif args.loader:
        print(json.dumps(loader_rates(Path(args.loader[0]), int(args.loader[1]), int(args.loader[2]))))
    elif args.memory_one:
        root, n, workers = args.memory_one
        print(json.dumps(memory_one(Path(root), int(n), int(workers))))
    elif args.training:
        root, batches, rounds, compiled = args.training
        print(json.dumps(training_ratio(Path(root), int(batches), int(rounds), compiled == "1")))
    else:
        result = run(args.quick, args.folder, tuple(args.parts.split(",")), args.json)
        print("\n".join(markdown(result)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
