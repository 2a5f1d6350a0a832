"""benchmarks/gpu_bench.py, whose figures need a GPU: its CPU dry run takes every step on a few photos, so a
broken step shows up here rather than in the few minutes a GPU is lent."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from train_fixtures import child_env

from helpers.paths import project_root

SCRIPT = project_root() / "benchmarks" / "gpu_bench.py"


def test_without_cuda_it_stops_at_once_and_names_the_dry_run(tmp_path):
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--work", str(tmp_path)],
        env=child_env(tmp_path / "outputs"),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert "needs CUDA" in done.stderr and "--device cpu" in done.stderr
    assert not (tmp_path / "photos").exists()  # nothing made before the refusal


@pytest.mark.slow
def test_the_dry_run_takes_every_step_and_writes_the_figures(tmp_path):
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--device", "cpu", "--work", str(tmp_path), "--workers", "1"],
        env=child_env(tmp_path / "outputs"),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = tmp_path / "results"
    figures = json.loads((results / "gpu_photos_resnet18.json").read_text())
    assert figures["device"] == "cpu (dry run)" and figures["precision"] == "fp32"
    for source in ("in_memory", "loader", "timm_loader"):
        assert figures[f"{source}_eager"] > 0
    assert figures["loader_ratio_eager"] == pytest.approx(
        figures["loader_eager"] / figures["in_memory_eager"]
    )
    assert figures["images"] == 48  # fold 0's training rows of 60 photos in 5 folds
    launched = json.loads((results / "gpu_photos_torchrun.json").read_text())
    assert launched["returncode"] == 0, launched["log_tail"]
    assert "1 process(es), gloo on cpu, torch.float32" in launched["launch"]
    assert [m["epoch"] for m in launched["metrics"]] == [0]
    assert not (project_root() / "benchmarks" / "results" / "gpu_photos_resnet18.json").exists()
