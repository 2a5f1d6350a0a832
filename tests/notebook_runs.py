"""Running notebooks from a test: the series' copies with tiny parameters, and nbval in a fresh pytest
process with its own outputs folder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import papermill

from helpers.paths import notebooks_dir
from helpers.runner import SERIES

# a test model, one epoch, on the demo data: the series in a minute or so on two cores
TINY = {
    "backbone": "test_resnet",
    "img_size": 32,
    "pretrained": False,
    "epochs": 1,
    "batch_size": 32,
    "num_workers": 0,
}
# the sections that are off by default, on wherever the series is tested: 03's range test, 05's calibration
# and export
OPTIONAL_SECTIONS = {"lr_finder": True, "calibrate": True, "export_onnx": True}


def prepare_series(
    folder: Path, params: dict = TINY, prefix: str = "", names: list[str] = SERIES
) -> list[Path]:
    """Copies of 01-05 (or `names`) in `folder`, named `prefix` + the notebook's name, each with the
    parameters it declares injected by papermill (not run)."""
    folder.mkdir(parents=True, exist_ok=True)
    copies = []
    for name in names:
        source = notebooks_dir() / f"{name}.ipynb"
        declared = papermill.inspect_notebook(str(source))
        copies.append(folder / f"{prefix}{source.name}")
        papermill.execute_notebook(
            str(source),
            str(copies[-1]),
            parameters={k: v for k, v in params.items() if k in declared},
            prepare_only=True,
            kernel_name="python3",
        )
    return copies


def run_nbval(target: Path, outputs: Path, cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    """nbval (lax: every cell must run, no output compared) on a notebook or a folder of them."""
    command = [
        sys.executable,
        "-m",
        "pytest",
        "--nbval-lax",
        "--nbval-current-env",
        "-p",
        "no:cacheprovider",
        "-q",
        str(target),
    ]
    env = {**os.environ, "KIT_OUTPUTS": str(outputs)}
    return subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
