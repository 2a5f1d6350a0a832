"""Glue between a notebook's parameter cells and the helpers: the config, the run folder, small tables.

Importing this module in a notebook's first cell starts recording the source of every executed cell that
begins with `# parameters` (the notebook's own and papermill's injected one). IPython's `In` history can't
serve: nbval executes cells without storing history.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import pandas as pd

from helpers.config import PARAMETER_MARKER, Config, config_from_cells
from helpers.dataset import run_dir_of
from helpers.images import read_image
from helpers.plots import save_figure, show_images

RunConfig = Literal["ignore", "optional", "required"]
PARAMETER_CELLS: list[str] = []


def _record_parameter_cell(info: Any) -> None:
    source = info.raw_cell or ""
    if source.lstrip().lower().startswith(PARAMETER_MARKER):
        PARAMETER_CELLS.append(source)


def _install_recorder() -> None:
    try:
        from IPython import get_ipython
    except ImportError:
        return
    shell = get_ipython()
    if shell is not None and _record_parameter_cell not in shell.events.callbacks["pre_run_cell"]:
        shell.events.register("pre_run_cell", _record_parameter_cell)


_install_recorder()


def start(namespace: dict[str, Any], run_config: RunConfig = "ignore") -> tuple[Config, Path]:
    """The validated config of this notebook's parameters and its run folder (created).

    Notebooks after 01 build on the run's saved config.json ("optional": use it when present; "required":
    say which notebook to run when it is missing); their own parameters override it.
    """
    if not PARAMETER_CELLS:
        raise RuntimeError(
            "no '# parameters' cell has run since helpers.notebook was imported: import it in the "
            "cell before the parameters cell, then run the parameters cell"
        )
    cfg = config_from_cells(namespace, PARAMETER_CELLS)
    run_dir = run_dir_of(cfg)
    saved = run_dir / "config.json"
    if run_config != "ignore" and saved.exists():
        cfg = config_from_cells(namespace, PARAMETER_CELLS, Config.load(saved))
    elif run_config == "required":
        raise FileNotFoundError(
            f"{saved} does not exist: run notebooks/03_train.ipynb for run_name={run_dir.name!r} first."
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    return cfg, run_dir


def show_samples(table: pd.DataFrame, run_dir: Path, n: int = 24, seed: int = 0) -> Any:
    """A grid of n training images titled with their class names, saved as plots/samples.png."""
    rows = table.sample(min(n, len(table)), random_state=seed)
    images = [read_image(p) for p in rows["path"]]
    return save_figure(show_images(images, list(rows["label"].astype(str))), run_dir, "samples")


def fold_class_table(table: pd.DataFrame) -> pd.DataFrame:
    """Images per fold and class, with totals: every fold should hold every class."""
    return pd.crosstab(table["fold"], table["label"], margins=True, margins_name="total")
