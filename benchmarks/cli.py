"""What every benchmark script's command line shares: where its run folders go, and how it reports."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def temporary_outputs(prefix: str) -> Iterator[None]:
    """KIT_OUTPUTS (folds, class maps, checkpoints) in a temp folder removed on leaving, unless the caller
    already set it: the benchmark's runs then stay where the caller looks."""
    if "KIT_OUTPUTS" in os.environ:
        yield
        return
    os.environ["KIT_OUTPUTS"] = tempfile.mkdtemp(prefix=prefix)
    try:
        yield
    finally:
        shutil.rmtree(os.environ.pop("KIT_OUTPUTS"), ignore_errors=True)


def quick_main(
    doc: str, prefix: str, run: Callable[[bool], dict], render: Callable[[dict], list[str]]
) -> int:
    """The command line of a benchmark that takes only --quick and --json: run it with its run folders in a
    temporary KIT_OUTPUTS, then report."""
    from helpers.allocator import retain_freed_memory

    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()
    retain_freed_memory()
    with temporary_outputs(prefix):
        result = run(args.quick)
    return report(result, args.json, render)


def report(result: dict[str, Any], json_path: Path | None, render: Callable[[dict], list[str]]) -> int:
    """Write the figures to json_path when given (what benchmarks/run.py reads back), print their markdown."""
    if json_path:
        json_path.write_text(json.dumps(result, indent=2))
    print("\n".join(render(result)))
    return 0


@dataclass
class SeriesRun:
    """A timed run of the series: its outputs folder, wall seconds and the load average before and after."""

    outputs: Path
    wall_seconds: float
    load_avg: list[float]


@contextlib.contextmanager
def timed_series(command: list[str], keep: Path | None, prefix: str) -> Iterator[SeriesRun]:
    """Run `python <command>` from the project root into KIT_OUTPUTS=keep (kept), or a temp folder that is
    removed when the block has read what it needs; a failure raises with the command's last output."""
    outputs = keep or Path(tempfile.mkdtemp(prefix=prefix))
    env = {**os.environ, "KIT_OUTPUTS": str(outputs), "NO_ALBUMENTATIONS_UPDATE": "1", "MPLBACKEND": "Agg"}
    load = [os.getloadavg()[0]]
    try:
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, *command], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800
        )
        wall = time.perf_counter() - started
        load.append(os.getloadavg()[0])
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
        yield SeriesRun(outputs, wall, load)
    finally:
        if keep is None:
            shutil.rmtree(outputs, ignore_errors=True)
