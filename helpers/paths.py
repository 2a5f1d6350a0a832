"""Where things live: the project root, the demo data, and the outputs folders.

Paths derive from this file, never from the working directory, so a notebook behaves the same from
JupyterLab (cwd notebooks/), papermill (any cwd) and nbval. `KIT_OUTPUTS` moves the outputs folder
(the tests use it to write into a temporary folder).
"""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS_DIR = PROJECT_ROOT / "notebooks"


def outputs_dir() -> Path:
    return Path(os.environ.get("KIT_OUTPUTS") or PROJECT_ROOT / "outputs")


def demo_data_dir() -> Path:
    return Path(os.environ.get("KIT_DEMO_DATA") or PROJECT_ROOT / "data" / "digits")


def resolve_path(path: str) -> Path:
    """A user path: absolute as given, relative to the project root otherwise."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else PROJECT_ROOT / p


def datasets_dir() -> Path:
    return outputs_dir() / "datasets"


def runs_dir() -> Path:
    return outputs_dir() / "runs"
