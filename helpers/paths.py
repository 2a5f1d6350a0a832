"""Where things live: the project root, the demo data, and the outputs folders.

Paths derive from this file, never from the working directory, so a notebook behaves the same from
JupyterLab (cwd notebooks/), papermill (any cwd) and nbval. In a kit checkout the project root is the
folder holding this package. `KIT_ROOT` names another project root, `KIT_OUTPUTS` moves the outputs folder
(the tests use it to write into a temporary folder), `KIT_DEMO_DATA` the demo data and `KIT_DEMO_MULTILABEL`
the multi-label demo data.

Installed outside a checkout (a plain `pip install` into site-packages) there is no project root: asking
for a folder that derives from it raises OutsideCheckoutError naming the variable to set, instead of
writing runs and data into site-packages.
"""

from __future__ import annotations

import os
from pathlib import Path

from helpers.errors import KitError

PACKAGE_DIR = Path(__file__).resolve().parent


class OutsideCheckoutError(KitError, RuntimeError):
    """The helpers are installed outside a kit checkout and no variable says where the project lives."""


def is_checkout(folder: Path) -> bool:
    """Whether folder looks like the kit's project root: its pyproject.toml beside a notebooks/ folder."""
    return (folder / "pyproject.toml").is_file() and (folder / "notebooks").is_dir()


def project_root(needed_for: str = "its files", fix: str = "set KIT_ROOT to the project folder") -> Path:
    """KIT_ROOT when set, else the kit checkout this package sits in.

    Outside a checkout it raises OutsideCheckoutError naming this package's folder, what needed the root
    (`needed_for`) and how to provide it (`fix`).
    """
    if root := os.environ.get("KIT_ROOT"):
        return Path(root).expanduser().resolve()
    if is_checkout(PACKAGE_DIR.parent):
        return PACKAGE_DIR.parent
    raise OutsideCheckoutError(
        f"helpers is installed outside a kit checkout ({PACKAGE_DIR}), so there is no project folder "
        f"for {needed_for}: {fix}"
    )


def notebooks_dir() -> Path:
    return project_root("the notebooks", "set KIT_ROOT to a kit checkout") / "notebooks"


def outputs_dir() -> Path:
    if outputs := os.environ.get("KIT_OUTPUTS"):
        return Path(outputs)
    fix = "set KIT_OUTPUTS to a folder for them (or KIT_ROOT to a project folder)"
    return project_root("the outputs (runs, datasets, leaderboard)", fix) / "outputs"


def demo_data_dir() -> Path:
    if demo := os.environ.get("KIT_DEMO_DATA"):
        return Path(demo)
    fix = "set KIT_DEMO_DATA to a folder for it (or KIT_ROOT to a project folder)"
    return project_root("the demo data", fix) / "data" / "digits"


def multilabel_demo_dir() -> Path:
    """The multi-label demo data (`make demo-multilabel`): beside the digits demo, or KIT_DEMO_MULTILABEL."""
    if demo := os.environ.get("KIT_DEMO_MULTILABEL"):
        return Path(demo)
    fix = "set KIT_DEMO_MULTILABEL to a folder for it (or KIT_ROOT to a project folder)"
    return project_root("the multi-label demo data", fix) / "data" / "digits_multilabel"


def resolve_path(path: str) -> Path:
    """A user path: absolute as given, relative to the project root otherwise."""
    p = Path(path).expanduser()
    if p.is_absolute():
        return p
    fix = "give an absolute path, or set KIT_ROOT to the project folder it is relative to"
    return project_root(f"the relative path {path!r}", fix) / p


def datasets_dir() -> Path:
    return outputs_dir() / "datasets"


def runs_dir() -> Path:
    return outputs_dir() / "runs"


def blends_dir() -> Path:
    return outputs_dir() / "blends"
