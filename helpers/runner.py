"""Run the numbered notebooks headless, in order, for one run: `python -m helpers.runner --backbone NAME`.

Papermill only warns about a parameter no notebook declares and never checks types, so every name and
value is checked against the notebooks' parameters cells and the config before any notebook starts.
Each notebook gets the parameters it declares; the executed copies go to outputs/runs/<run>/notebooks/.
When the whole series has run, the run folder's finished.json records the parameters, so a sweep can
skip the run. The leaderboard is rebuilt by its own command, `python -m helpers.leaderboard`.
"""

from __future__ import annotations

import argparse
import sys
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import papermill
import yaml
from jupyter_client import AsyncKernelManager
from traitlets import default

from helpers.config import Config, ConfigError
from helpers.errors import EXIT_KIT_ERROR, KitError, kit_error_names
from helpers.paths import notebooks_dir, project_root
from helpers.run_folder import RunFolder

SERIES = ["01_data", "02_augment_preview", "03_train", "04_evaluate", "05_inference"]


@dataclass
class NotebookFailed(RuntimeError):
    """A notebook of the series raised; names the notebook, the cell and the executed copy. `kit_error`:
    it stopped on one of the kit's own errors (a message for a person), not on a bug."""

    notebook: str
    cell: str
    error: str
    executed: Path
    kit_error: bool = False

    def __str__(self) -> str:
        return f"{self.notebook} failed in {self.cell}: {self.error}\nexecuted copy: {self.executed}"


class LocalKernelManager(AsyncKernelManager):
    """The notebooks' kernels, reached through local (IPC) sockets instead of TCP ports: nothing listens on
    the network, and ipykernel has no reason to warn, once per notebook, that TCP is unencrypted.

    Stopping one sends no interrupt. jupyter_client interrupts every kernel before its shutdown request,
    to break a busy one, by a SIGINT to the kernel's process group (its loader workers included);
    papermill stops a kernel only after its last cell, when there is nothing to break, and the signal made
    02 (whose loader's persistent workers, forked during a cell, are still running) log "[IPKernelApp]
    ERROR | KeyboardInterrupt caught in kernel." after a notebook that succeeded, in one run of 02 in four
    here. An interrupt asked for at any other time (a cell's timeout) is still sent.
    """

    @default("transport")
    def _default_transport(self) -> str:
        return "ipc"

    async def _async_interrupt_kernel(self) -> None:
        if not self.shutting_down:
            await super()._async_interrupt_kernel()


def series_notebooks(names: list[str] | None = None) -> list[Path]:
    """The series' notebooks in order (or the named ones); a missing notebook file is an error."""
    chosen = names or SERIES
    unknown = sorted(set(chosen) - set(SERIES))
    if unknown:
        raise ConfigError(f"unknown notebook(s) {unknown}; the series is {SERIES}")
    paths = [notebooks_dir() / f"{n}.ipynb" for n in SERIES if n in chosen]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise ConfigError(f"notebook(s) {missing} do not exist: restore them (git checkout -- notebooks/)")
    return paths


def declared_parameters(notebook: Path) -> set[str]:
    return set(papermill.inspect_notebook(str(notebook)))


def check_parameters(params: dict[str, Any], notebooks: list[Path]) -> Config:
    """Refuse a name no notebook declares, and any value the config rejects; return the run's config."""
    declared = set().union(*(declared_parameters(nb) for nb in notebooks))
    unknown = sorted(set(params) - declared)
    if unknown:
        raise ConfigError(
            f"parameter(s) {unknown} are declared by none of {[nb.stem for nb in notebooks]}. "
            f"Declared: {sorted(declared)}"
        )
    return Config.from_dict(params)


def parse_value(text: str, name: str = "") -> Any:
    """A command-line value as YAML reads it: 3 -> int, 0.1 -> float, true -> bool, [0, 1] -> list.

    The value of a text setting (`name`: label_sep, csv_sep, backbone, ...) is kept as written: YAML reads
    "|" as an empty block, " " as nothing and "," not at all.
    """
    if name in Config.__dataclass_fields__ and typing.get_type_hints(Config)[name] is str:
        return text
    return yaml.safe_load(text) if text.strip() else ""


def plan_run_config(run: RunFolder, params: dict[str, Any]) -> None:
    """Save the whole series' parameters as the run's config before its first notebook, unless a fold has
    trained (the notebooks then check them against the run's). 01 declares only the data settings, yet it
    stores the images at the size 03 will train at (helpers.dataset.planned_side: img_size, crop_pct,
    pretrained), which it reads from this config: each photo is then decoded once for the whole series."""
    if run.trained():
        return
    saved = run.read_config().to_dict() if run.config.exists() else {}
    run.write_config(Config.from_dict({**saved, **params}))


def run_series(params: dict[str, Any], notebooks: list[str] | None = None, log: bool = True) -> RunFolder:
    """Execute the notebooks in order for one run; return the run folder. Raises NotebookFailed.

    The run's finished marker is removed first and written only after the full series, so a run that
    stops halfway (or runs a subset of the notebooks) never counts as finished.
    """
    paths = series_notebooks(notebooks)
    run = RunFolder.of(check_parameters(params, paths))
    params = {**params, "run_name": run.name}
    run.notebooks.mkdir(parents=True, exist_ok=True)
    run.clear_finished()
    plan_run_config(run, params)
    for nb in paths:
        own = {k: v for k, v in params.items() if k in declared_parameters(nb)}
        executed = run.notebooks / nb.name
        if log:
            print(f"[{run.name}] {nb.stem} {own}", flush=True)
        try:
            papermill.execute_notebook(
                str(nb),
                str(executed),
                parameters=own,
                cwd=str(project_root()),
                kernel_name="python3",
                progress_bar=False,
                log_output=False,
                kernel_manager_class=LocalKernelManager,
            )
        except papermill.PapermillExecutionError as e:
            kit = e.ename in kit_error_names()
            error = e.evalue if kit else f"{e.ename}: {e.evalue}"
            raise NotebookFailed(nb.stem, f"cell {e.exec_count}", error, executed, kit) from None
    if paths == series_notebooks():
        run.mark_finished(params)
    return run


def add_param_option(parser: argparse.ArgumentParser, help: str) -> None:
    """The repeatable `-p NAME VALUE` option of the command-line entries."""
    parser.add_argument(
        "-p", "--param", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"), help=help
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", help="timm model name")
    add_param_option(parser, "any notebook parameter, e.g. -p epochs 3")
    parser.add_argument("--notebooks", help="comma-separated subset of the series, e.g. 01_data,03_train")
    args = parser.parse_args(argv)
    params = {name: parse_value(value, name) for name, value in args.param}
    if args.backbone:
        params["backbone"] = args.backbone
    try:
        run = run_series(params, args.notebooks.split(",") if args.notebooks else None)
    except (KitError, NotebookFailed) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1 if isinstance(e, NotebookFailed) and not e.kit_error else EXIT_KIT_ERROR
    print(f"\nresults: {run.path}" + (f"\nsubmission: {run.submission}" if run.submission.exists() else ""))
    print("compare runs: python -m helpers.leaderboard (or notebooks/06_compare.ipynb)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
