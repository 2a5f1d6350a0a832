"""Tuning studies on the digits: TPE with pruning against random search without, and two workers on one
journal file against one.

    python benchmarks/bench_tune.py [--quick] [--json FILE]

Each study runs as `python -m helpers.tune` worker processes (test_resnet at 32 px from scratch, fold 0,
EPOCHS epochs per trial, the search space SPACE), on one data set prepared once beforehand. Part 1: TRIALS
trials with TPE and the median pruner, then TRIALS random trials without pruning: the best validation
accuracy, the workers' CPU time, the trials pruned and the epochs trained. Part 2: THROUGHPUT_TRIALS
trials of two epochs, without pruning, by one worker, then by two workers sharing the study's journal
file (one torch thread per worker everywhere: on a shared 2-core machine more threads per process only
wait on each other): trials per hour, and whether every trial number ran once.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import yaml
from cli import ROOT, quick_main

from helpers.config import Config
from helpers.dataset import build_store, prepare_dataset
from helpers.settings import resolve_settings

TRIALS, QUICK_TRIALS = 24, 6
EPOCHS = 6
THROUGHPUT_TRIALS, QUICK_THROUGHPUT_TRIALS = 8, 4
FIXED = {"backbone": "test_resnet", "img_size": 32, "pretrained": False, "epochs": EPOCHS, "num_workers": 0}
SPACE = {
    "lr": {"low": 1e-5, "high": 3e-2, "log": True},
    "weight_decay": {"low": 1e-5, "high": 0.1, "log": True},
    "label_smoothing": {"low": 0.0, "high": 0.2},
    "batch_size": [32, 64, 128],
    "augment": ["none", "light", "medium"],
}


def _params(values: dict) -> list[str]:
    return [arg for name, value in values.items() for arg in ("-p", name, str(value))]


def _workers(study: str, trials: int, count: int, threads: int, args: list[str]) -> dict:
    """`count` worker processes on one study, each with `threads` torch threads; wall and CPU seconds."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "NO_ALBUMENTATIONS_UPDATE": "1"}
    command = [sys.executable, "-m", "helpers.tune", "--study", study, "--trials", str(trials), *args]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    processes = [
        subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )
        for _ in range(count)
    ]
    outs = [p.communicate()[0] for p in processes]
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if any(p.returncode for p in processes):
        raise RuntimeError(f"a worker of {study} failed:\n" + "\n".join(o[-2000:] for o in outs))
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    numbers = [int(line.split()[1]) for out in outs for line in out.splitlines() if line.startswith("trial ")]
    return {"wall_s": wall, "cpu_s": cpu, "numbers": numbers}


def _study(study: str) -> dict:
    """The study's outcome read back: best value, trials by state, epochs trained over its runs."""
    from optuna.trial import TrialState

    from helpers.run_folder import RunFolder
    from helpers.tune import load_study

    loaded, _ = load_study(study)
    trials = loaded.trials
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    epochs = sum(len(RunFolder.named(t.user_attrs["run"]).read_metrics()) for t in trials)
    return {
        "trials": len(trials),
        "complete": len(complete),
        "pruned": sum(t.state == TrialState.PRUNED for t in trials),
        "best": max(t.value for t in complete),
        "epochs_trained": epochs,
    }


def run(quick: bool) -> dict:
    trials = QUICK_TRIALS if quick else TRIALS
    spread = THROUGHPUT_TRIALS if not quick else QUICK_THROUGHPUT_TRIALS
    cfg = Config.from_dict(FIXED)
    info = prepare_dataset(cfg)  # the image check and the store, once, before any worker starts
    build_store(resolve_settings(cfg, info)[0], info)
    space = Path(os.environ["KIT_OUTPUTS"]) / "space.yaml"
    space.write_text(yaml.safe_dump(SPACE))
    arms = []
    for study, sampler, pruner in (("tpe-median", "tpe", "median"), ("random-none", "random", "none")):
        args = ["--space", str(space), "--sampler", sampler, "--pruner", pruner, *_params(FIXED)]
        measured = _workers(study, trials, 1, 1, args)
        arms.append({"study": study, **measured, **_study(study)})
    throughput = []
    for study, count, threads in (("one-worker", 1, 1), ("two-workers", 2, 1)):
        args = ["--space", str(space), "--pruner", "none", *_params({**FIXED, "epochs": 2})]
        measured = _workers(study, spread, count, threads, args)
        outcome = _study(study)
        throughput.append({
            "study": study, "workers": count, "threads": threads, **measured, **outcome,
            "trials_per_hour": outcome["trials"] / measured["wall_s"] * 3600,
            "each_number_once": sorted(measured["numbers"]) == list(range(outcome["trials"])),
        })  # fmt: skip
    return {
        "machine": f"{os.cpu_count()} CPU cores",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "load_avg": list(os.getloadavg()),
        "trials": trials,
        "epochs": EPOCHS,
        "arms": arms,
        "throughput": throughput,
    }


def markdown(result: dict) -> list[str]:
    lines = [
        f"{result['machine']}, {result['date']}, load average {result['load_avg'][0]:.1f} at the end. "
        f"test_resnet at 32 px from scratch on the digits, fold 0, {result['epochs']} epochs per trial; "
        "one study per line, one seed (no repeats).",
        "",
        "| study | trials | complete | pruned | epochs trained | best val_acc | CPU s | wall s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for a in result["arms"]:
        lines.append(
            f"| {a['study']} | {a['trials']} | {a['complete']} | {a['pruned']} | {a['epochs_trained']} | "
            f"{a['best']:.4f} | {a['cpu_s']:.0f} | {a['wall_s']:.0f} |"
        )
    lines += [
        "",
        "| workers on one journal file | torch threads each | trials | wall s | trials per hour | each number once |",
        "| --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for t in result["throughput"]:
        lines.append(
            f"| {t['workers']} | {t['threads']} | {t['trials']} | {t['wall_s']:.0f} | {t['trials_per_hour']:.0f} | "
            f"{'yes' if t['each_number_once'] else 'no'} |"
        )
    return lines


if __name__ == "__main__":
    sys.exit(quick_main(__doc__, "bench_tune_", run, markdown))
