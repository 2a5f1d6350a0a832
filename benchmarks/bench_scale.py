"""Scale: 01's image validation on growing sets, and the loader's memory over a long epoch.

    python benchmarks/bench_scale.py [--quick] [--json FILE] [--folder DIR]

Validation: `helpers.health.check_images` (what 01_data and prepare_dataset run) with a fresh cache file,
on 10k, 30k and 100k 32x32 JPEGs (2k, 5k, 10k with --quick), written once into a temp folder (the
writing is not timed; the sizes are prefixes of one folder). Each size runs in its own process, so its
peak memory (ru_maxrss) is its own: the growth is the peak after the call minus the resident size just
before it, with the path list already built. Then the same call again, on the now-filled cache.

Loader memory: one epoch over ~20k samples (3k with --quick) through `build_loader` with 2 worker
processes, decoding from disk (the store's memory with workers: bench_photos.py); the resident memory of the main process and
of each worker (VmRSS), and the proportional total (Pss: shared pages divided among the processes that
map them, so the sum counts each page once) are read from /proc every tenth of the epoch.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cli import report

from helpers.allocator import retain_freed_memory

SIDE = 32
DISTINCT = 1000  # distinct encoded images, repeated over the files


def _environment() -> None:
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")


def image_paths(folder: Path, n: int) -> list[str]:
    return [str(folder / f"img_{i:06d}.jpg") for i in range(n)]


def generate(folder: Path, n: int) -> float:
    """n small JPEGs (blobs on a gradient, DISTINCT variants); returns the seconds it took (not a measure)."""
    import cv2
    import numpy as np

    started = time.perf_counter()
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:SIDE, 0:SIDE]
    encoded = []
    for _ in range(DISTINCT):
        image = (np.stack([xx, yy, xx + yy], -1) * rng.uniform(1, 4, 3)).astype(np.uint8)
        for _ in range(3):
            center = tuple(int(c) for c in rng.integers(0, SIDE, 2))
            color = tuple(int(c) for c in rng.integers(0, 256, 3))
            cv2.circle(image, center, int(rng.integers(2, 10)), color, -1)
        encoded.append(cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes())
    for i, path in enumerate(image_paths(folder, n)):
        if not os.path.exists(path):
            Path(path).write_bytes(encoded[i % DISTINCT])
    return time.perf_counter() - started


# -- one process per measure ---------------------------------------------------------------------------------
def _rss_kb(pid: int | str = "self") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _pss_kb(pid: int | str) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _children(pid: int) -> list[int]:
    kids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                kids.append(int(entry.name))
    return sorted(kids)


def check_one(folder: Path, n: int) -> dict:
    """check_images over the first n files with a fresh cache file, then again on the filled cache."""
    _environment()
    from helpers.health import check_images

    paths = image_paths(folder, n)
    cache = Path(tempfile.mkdtemp(prefix="bench_scale_cache_")) / "image_check.csv"
    before_kb = _rss_kb()
    started = time.perf_counter()
    table = check_images(paths, cache)
    seconds = time.perf_counter() - started
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    after_kb = _rss_kb()
    started = time.perf_counter()
    again = check_images(paths, cache)
    cached_seconds = time.perf_counter() - started
    assert len(table) == len(again) == n and (table["problem"] == "").all() and (again["problem"] == "").all()
    shutil.rmtree(cache.parent, ignore_errors=True)
    return {
        "images": n,
        "seconds": seconds,
        "images_per_s": n / seconds,
        "cached_seconds": cached_seconds,
        "rss_before_mb": before_kb / 1024,
        "peak_growth_mb": (peak_kb - before_kb) / 1024,
        "rss_growth_after_mb": (after_kb - before_kb) / 1024,
        "threads": os.cpu_count(),
    }


def loader_memory(folder: Path, n: int, cached: bool, workers: int) -> dict:
    """One training epoch of n samples through the kit's loader; memory of every process at tenths of it."""
    _environment()
    import numpy as np
    import pandas as pd
    import torch

    from helpers.config import Config
    from helpers.loaders import build_loader

    rows = pd.DataFrame(
        {"path": image_paths(folder, n), "label_idx": np.arange(n) % 10, "height": SIDE, "width": SIDE}
    )
    cfg = Config(
        pretrained=False,
        img_size=SIDE,
        augment="light",
        batch_size=64,
        seed=0,
        num_workers=workers,
        store=cached,
    )
    loader = build_loader(cfg, rows, train=True, fold=0, device=torch.device("cpu"))
    me = os.getpid()
    every = max(1, len(loader) // 10)
    samples = []
    seen = 0
    started = time.perf_counter()
    for i, (x, _, _) in enumerate(loader):
        seen += len(x)
        if i % every == 0 or i == len(loader) - 1:
            kids = _children(me)
            samples.append(
                {
                    "images": seen,
                    "main_rss_mb": _rss_kb(me) / 1024,
                    "workers_rss_mb": [_rss_kb(k) / 1024 for k in kids],
                    "total_pss_mb": (_pss_kb(me) + sum(_pss_kb(k) for k in kids)) / 1024,
                }
            )
    seconds = time.perf_counter() - started
    return {
        "images": n,
        "cached": cached,
        "workers": workers,
        "seconds": seconds,
        "images_per_s": n / seconds,
        "samples": samples,
    }


def _in_subprocess(args: list[str]) -> dict:
    done = subprocess.run(
        [sys.executable, __file__, *args], capture_output=True, text=True, timeout=600, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"bench_scale {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run(quick: bool, folder: Path | None = None) -> dict:
    sizes = [2_000, 5_000, 10_000] if quick else [10_000, 30_000, 100_000]
    epoch = 3_000 if quick else 20_000
    own = folder is None
    folder = folder or Path(tempfile.mkdtemp(prefix="bench_scale_"))
    started = time.perf_counter()
    try:
        generated = generate(folder, max(max(sizes), epoch))
        checks = [_in_subprocess(["--check-one", str(folder), str(n)]) for n in sizes]
        loaders = [
            _in_subprocess(["--loader-memory", str(folder), str(epoch), str(int(cached)), "2"])
            for cached in (False,)
        ]
    finally:
        if own:
            shutil.rmtree(folder, ignore_errors=True)
    return {
        "quick": quick,
        "generate_seconds": generated,
        "checks": checks,
        "loaders": loaders,
        "seconds": time.perf_counter() - started,
    }


def markdown(r: dict) -> list[str]:
    checks = r["checks"]
    small, big = checks[0], checks[-1]
    per_image_ratio = (big["seconds"] / big["images"]) / (small["seconds"] / small["images"])
    lines = [
        f"`check_images` with a fresh cache file on {SIDE}x{SIDE} JPEGs, one process per size"
        + (" (quick: small sizes)" if r["quick"] else "")
        + f"; {checks[0]['threads']} reader threads. Writing the files ({r['generate_seconds']:.0f} s) is not counted.",
        "",
        "| images | seconds | images/s | us per image | peak RSS growth MB | bytes per image | again, cached: s |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in checks:
        lines.append(
            f"| {c['images']:,} | {c['seconds']:.2f} | {c['images_per_s']:.0f} | "
            f"{c['seconds'] / c['images'] * 1e6:.0f} | {c['peak_growth_mb']:.1f} | "
            f"{c['peak_growth_mb'] * 2**20 / c['images']:.0f} | {c['cached_seconds']:.2f} |"
        )
    lines += [
        "",
        f"- per-image time at {big['images']:,} / at {small['images']:,}: **{per_image_ratio:.2f}** "
        "(1.0 is linear)",
        f"- peak memory growth {small['peak_growth_mb']:.1f} MB -> {big['peak_growth_mb']:.1f} MB "
        f"for {big['images'] // small['images']}x the images",
        "",
        "Loader memory over one epoch (batch 64, train augmentation, 2 worker processes):",
        "",
        "| source | images | img/s | main RSS MB start -> end | workers RSS MB start -> end | total PSS MB start -> end (max) |",
        "|---|---:|---:|---|---|---|",
    ]
    for lo in r["loaders"]:
        first, last = lo["samples"][0], lo["samples"][-1]
        peak = max(s["total_pss_mb"] for s in lo["samples"])
        lines.append(
            f"| {'RAM cache' if lo['cached'] else 'decode from disk'} | {lo['images']:,} | "
            f"{lo['images_per_s']:.0f} | {first['main_rss_mb']:.0f} -> {last['main_rss_mb']:.0f} | "
            f"{' + '.join(f'{v:.0f}' for v in first['workers_rss_mb'])} -> "
            f"{' + '.join(f'{v:.0f}' for v in last['workers_rss_mb'])} | "
            f"{first['total_pss_mb']:.0f} -> {last['total_pss_mb']:.0f} ({peak:.0f}) |"
        )
    lines.append(f"\nScale part: {r['seconds']:.0f} s.")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--folder", type=Path, help="reuse (and keep) this image folder")
    parser.add_argument("--check-one", nargs=2, metavar=("FOLDER", "N"), help=argparse.SUPPRESS)
    parser.add_argument(
        "--loader-memory", nargs=4, metavar=("FOLDER", "N", "CACHED", "W"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    retain_freed_memory()
    if args.check_one:
        print(json.dumps(check_one(Path(args.check_one[0]), int(args.check_one[1]))))
        return 0
    if args.loader_memory:
        folder, n, cached, workers = args.loader_memory
        print(json.dumps(loader_memory(Path(folder), int(n), cached == "1", int(workers))))
        return 0
    return report(run(args.quick, args.folder), args.json, markdown)


if __name__ == "__main__":
    sys.exit(main())
