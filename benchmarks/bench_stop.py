"""What a stop signal costs: the step it waits for, the mid-epoch checkpoint's size and write time, the resume.

    python benchmarks/bench_stop.py [--quick] [--json FILE]

Trains fold 0 of two runs in this process and sends SIGTERM (the tests' KIT_TEST_SIGNAL hook) after a
micro-batch of epoch 0: the digits demo (resnet18 at 32 px, batch 64, 03's defaults) and the 224 px photo
set of benchmarks/photos.py (resnet18, batch 16). Reports the median optimizer step (the most a stop waits
for once the signal lands, and the most training a stop can lose), the time from the signal to the stop,
the mid-epoch `last` checkpoint's write time and size, and on resuming, the time until the first new
update (building the model and loaders, loading the checkpoint).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path

from cli import quick_main
from photos import make_photo_set

import helpers.train as train
from helpers.config import Config
from helpers.dataset import prepare_dataset
from helpers.run_folder import RunFolder
from helpers.stopping import TEST_SIGNAL

AFTER_BATCH = 4  # the signal lands after this micro-batch of epoch 0


def _timed(cfg: Config, signal_after: int | None) -> dict:
    """One train_fold call, stopped after micro-batch `signal_after` (or not at all, when None); the
    perf_counter times of its updates, of the signal and of the stop's save."""
    stamps: dict = {"updates": [], "saves": []}
    update, save_last, kill = train._update, train._save_last, os.kill

    def timed_update(model, parts):
        norm = update(model, parts)
        stamps["updates"].append(time.perf_counter())
        return norm

    def timed_save(*args, **kwargs):
        started = time.perf_counter()
        path = save_last(*args, **kwargs)
        stamps["saves"].append((started, time.perf_counter(), path))
        return path

    def timed_kill(pid, signum):
        stamps["signal"] = time.perf_counter()
        kill(pid, signum)

    train._update, train._save_last, os.kill = timed_update, timed_save, timed_kill
    if signal_after is not None:
        os.environ[TEST_SIGNAL] = json.dumps(
            {"signal": "SIGTERM", "at": "fold 0 epoch 0", "batch": signal_after}
        )
    info, run = prepare_dataset(cfg), RunFolder.of(cfg)
    started = time.perf_counter()
    try:
        train.train_fold(cfg, info, 0, run)
    except SystemExit:
        stamps["stopped"] = time.perf_counter()
    finally:
        train._update, train._save_last, os.kill = update, save_last, kill
        os.environ.pop(TEST_SIGNAL, None)
    stamps["started"] = started
    return stamps


def measure(name: str, cfg: Config, repeats: int) -> dict:
    """Medians over `repeats` fresh runs, each stopped after micro-batch AFTER_BATCH, then resumed and
    stopped again right after its first update (so the resume costs one step, not the epoch)."""
    steps, to_stop, writes, sizes, resumes = [], [], [], [], []
    for repeat in range(repeats):
        run_cfg = cfg.replace(run_name=f"{cfg.run_name}_{repeat}")
        for signal_after in (AFTER_BATCH, AFTER_BATCH + 1):
            stamps = _timed(run_cfg, signal_after)
            begun, ended, path = stamps["saves"][-1]
            writes.append(ended - begun)
            sizes.append(Path(path).stat().st_size / 1e6)
            to_stop.append(stamps["stopped"] - stamps["signal"])
            if signal_after == AFTER_BATCH:
                steps += [b - a for a, b in zip(stamps["updates"], stamps["updates"][1:], strict=False)]
            else:
                resumes.append(stamps["updates"][0] - stamps["started"])
    return {
        "run": name,
        "repeats": repeats,
        "step_s": statistics.median(steps),
        "signal_to_stop_s": statistics.median(to_stop),
        "write_s": statistics.median(writes),
        "checkpoint_mb": statistics.median(sizes),
        "resume_to_first_update_s": statistics.median(resumes),
    }


def run(quick: bool) -> dict:
    repeats = 1 if quick else 3
    common = dict(backbone="resnet18", epochs=1, folds=[0], num_workers=0, task="multiclass")
    digits = Config(img_size=32, batch_size=64, run_name="stop_digits", **common)
    photos = make_photo_set(Path(os.environ["KIT_OUTPUTS"]) / "photos", 320)
    photo_cfg = Config(data_dir=str(photos), img_size=224, batch_size=16, run_name="stop_photos", **common)
    runs = [
        measure("digits, resnet18 at 32 px, batch 64", digits, repeats),
        measure("photos, resnet18 at 224 px, batch 16", photo_cfg, repeats),
    ]
    return {
        "machine": f"{os.cpu_count()} CPU cores",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "load_avg": list(os.getloadavg()),
        "runs": runs,
    }


def markdown(result: dict) -> list[str]:
    lines = [
        f"{result['machine']}, {result['date']}, load average {result['load_avg'][0]:.1f} at the end; "
        "medians over the runs' steps and stops. A signal waits for the current optimizer step at most "
        "(the step in progress is finished, never lost), then for the write.",
        "",
        "| run | repeats | optimizer step (s) | signal to stop (s) | checkpoint write (s) | checkpoint (MB) "
        "| resume to first update (s) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in result["runs"]:
        lines.append(
            f"| {r['run']} | {r['repeats']} | {r['step_s']:.2f} | {r['signal_to_stop_s']:.2f} | "
            f"{r['write_s']:.2f} | {r['checkpoint_mb']:.1f} | {r['resume_to_first_update_s']:.2f} |"
        )
    return lines


if __name__ == "__main__":
    sys.exit(quick_main(__doc__, "bench_stop_", run, markdown))
