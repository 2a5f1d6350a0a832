"""Glue between a notebook's parameter cells and the helpers: the config, the run folder, small tables.

Importing this module in a notebook's first cell starts recording the source of every executed cell that
begins with `# parameters` (the notebook's own and papermill's injected one). IPython's `In` history can't
serve: nbval executes cells without storing history. It also makes the kernel show the kit's own errors
(helpers.errors.KitError) as their message alone, in red, with the problems table of a DataError; any other
exception keeps its full traceback.
"""

from __future__ import annotations

import textwrap
from typing import Any, Literal

import pandas as pd

from helpers.allocator import retain_freed_memory
from helpers.config import PARAMETER_MARKER, Config, Stage, passed_values, settle_run_config
from helpers.dataset import DataInfo
from helpers.errors import RED, RESET, KitError, MissingRunError, red_lines
from helpers.images import read_image
from helpers.plots import save_figure, show_images
from helpers.run_folder import RunFolder
from helpers.tables import DataError
from helpers.tasks import task_named

PARAMETER_CELLS: list[str] = []
STOPPED: list[str] = []  # why the notebook stopped early (`stop_here`); empty while it runs


def _record_parameter_cell(info: Any) -> None:
    source = info.raw_cell or ""
    if source.lstrip().lower().startswith(PARAMETER_MARKER):
        PARAMETER_CELLS.append(source)


def _skip_when_stopped(lines: list[str]) -> list[str]:
    """After `stop_here`, each later cell runs nothing, until a new run begins: its parameters cell, or
    the cell that calls `start` again."""
    source = "".join(lines)
    if source.lstrip().lower().startswith(PARAMETER_MARKER) or "start(globals()" in source:
        STOPPED.clear()
    return ["pass\n"] if STOPPED else lines


def stop_here(message: str) -> None:
    """End this run of the notebook here, visibly and without an error: print the message, and the cells
    after this one run nothing (under papermill, nbval and Run All in JupyterLab alike), so a notebook with
    nothing left to do (05 without a test set) finishes instead of testing for it in every cell."""
    print(message)
    STOPPED.append(message)


def show_kit_error(shell: Any, etype: type, error: BaseException, tb: Any, tb_offset: Any = None) -> None:
    """IPython's handler of a kit error: its message in red as the cell's error output, without frames,
    then a DataError's problems table (its first SHOWN rows). The cell still fails: IPython records the
    error, so papermill and nbval stop there, and papermill's error carries the whole message."""
    if not (isinstance(error, DataError) and len(error.problems)):
        shell._showtraceback(etype, error, red_lines(error))
        return
    lines = [error.message, *(f"likely cause: {c}" for c in error.causes)]
    if len(error.problems) > DataError.SHOWN:
        lines.append(f"the first {DataError.SHOWN} of {len(error.problems)} problems:")
    shell._showtraceback(etype, error, [f"{RED}{line}{RESET}" for line in lines])
    from IPython.display import display

    display(error.problems.head(DataError.SHOWN))


def _install_hooks() -> None:
    try:
        from IPython import get_ipython
    except ImportError:
        return
    shell = get_ipython()
    if shell is None:
        return
    if _record_parameter_cell not in shell.events.callbacks["pre_run_cell"]:
        shell.events.register("pre_run_cell", _record_parameter_cell)
    if _skip_when_stopped not in shell.input_transformers_post:
        shell.input_transformers_post.append(_skip_when_stopped)
    shell.set_custom_exc((KitError,), show_kit_error)


_install_hooks()
# a notebook kernel is a process of the kit's own: it keeps freed memory for the next batch
retain_freed_memory()


# The stage each notebook owns; the settings of the other stages come from the run's config.json once the
# notebook that owns them has written it (see Config's Stage and README "Which value wins").
NotebookStage = Literal["data", "preview", "train", "evaluate", "predict"]
OWNS: dict[str, tuple[Stage, ...]] = {"data": ("data",), "train": ("train",)}


def start(namespace: dict[str, Any], stage: NotebookStage) -> tuple[Config, RunFolder]:
    """The run's config for this notebook's parameters, and its run folder (created).

    The run folder comes from run_name (or the backbone's name). When the run has a config.json, it is the
    base: data settings are fixed by 01 and training settings once a fold has trained, so a parameter that
    contradicts them is an error naming both values, and a notebook's default for a setting it does not own
    (04's `backbone`, which names the run) never changes what the run trained. A free setting (stages predict
    and machine) follows the run too: a value passed to this notebook (injected by papermill,
    or changed from its default in its cell) wins, else the run's config.json, else the default; a cell's
    unchanged default never replaces what an earlier notebook was given. 04 and 05 need config.json.
    """
    if not PARAMETER_CELLS:
        raise KitError(
            "no '# parameters' cell has run since helpers.notebook was imported: import it in the "
            "cell before the parameters cell, then run the parameters cell"
        )
    owned = Config.names_of("run", *OWNS.get(stage, ()))
    passed = passed_values(namespace, PARAMETER_CELLS, owned)
    run = RunFolder.of(Config.from_dict(passed))
    if not run.config.exists():
        if stage in ("evaluate", "predict"):
            raise MissingRunError(
                f"{run.config} does not exist: run notebooks/01_data.ipynb and 03_train.ipynb for "
                f"run_name={run.name!r} first (or set run_name to a run in {run.path.parent})."
            )
        return Config.from_dict(passed), run.create()
    # 01 may still change the data settings of a run that has not trained; nothing changes a trained run
    fixed: list[Stage] = ["data", "train"] if run.trained() else ([] if stage == "data" else ["data"])
    return settle_run_config(passed, run.read_config(), fixed, run.path), run.create()


def say(text: str, width: int = 100) -> None:
    """Print prose wrapped between words at `width` characters: JupyterLab breaks a long output line
    anywhere, even inside a word."""
    print("\n".join(textwrap.fill(part, width) for part in text.splitlines()))


def show_samples(table: pd.DataFrame, run: RunFolder, n: int = 24, seed: int = 0) -> Any:
    """A grid of n training images titled with their class names, saved as plots/samples.png."""
    rows = table.sample(min(n, len(table)), random_state=seed)
    images = [read_image(p) for p in rows["path"]]
    return save_figure(show_images(images, list(rows["label"].astype(str))), run, "samples")


def show_label_structure(info: DataInfo, run: RunFolder) -> Any:
    """A label-set task's label sets (labels per image, classes together), saved as plots/label_sets.png;
    a task with one label per image has none, which one line says instead."""
    figure = task_named(info.task).label_structure(info.table, info.classes)
    if figure is None:
        print(f"one label per image ({info.task}): no label sets to show")
        return None
    return save_figure(figure, run, "label_sets")


def fold_class_table(table: pd.DataFrame, shown: int = 20) -> pd.DataFrame:
    """Images per fold and class, with totals: every fold should hold every class. Fold -1 is the training
    side of a fixed split. With more than `shown` classes: one row per class, the smallest classes first."""
    counts = pd.crosstab(table["fold"], table["label"], margins=True, margins_name="total")
    if table["label"].nunique() <= shown:
        return counts
    per_class = counts.drop(index="total").T.drop(index="total")
    return per_class.assign(total=per_class.sum(1)).sort_values("total", kind="stable").head(shown)
