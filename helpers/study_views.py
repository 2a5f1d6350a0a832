"""Looking at a tuning study (08_tune): its trials as a table, Optuna's matplotlib views, the runs to blend."""

from __future__ import annotations

import warnings

import numpy as np
import optuna
import pandas as pd
from matplotlib.figure import Figure
from optuna.trial import TrialState

from helpers.config import ConfigError, parameter_names
from helpers.study_storage import retry_of, study_folder


def trials_table(study: optuna.Study) -> pd.DataFrame:
    """One row per trial: number, state, value, run, pruned_at_epoch, retry_of, seconds, then its settings."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        seconds = (
            (t.datetime_complete - t.datetime_start).total_seconds()
            if t.datetime_complete and t.datetime_start
            else np.nan
        )
        rows.append({
            "number": t.number,
            "state": t.state.name.lower(),
            "value": t.value if t.state == TrialState.COMPLETE else np.nan,
            "run": t.user_attrs.get("run", ""),
            "pruned_at_epoch": t.user_attrs.get("pruned_at_epoch", np.nan),
            "retry_of": retry_of(t),
            "seconds": seconds,
            **t.params,
        })  # fmt: skip
    return pd.DataFrame(rows)


def top_runs(study: optuna.Study, n: int) -> list[str]:
    """The run folders of the n best complete trials, best first: candidates for a blend (07)."""
    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    complete.sort(key=lambda t: t.value, reverse=study.direction == optuna.study.StudyDirection.MAXIMIZE)
    return [t.user_attrs["run"] for t in complete[:n]]


def show_study(study: optuna.Study, kind: str) -> Figure | None:
    """One of Optuna's matplotlib views of the study: 'history' (optimisation history), 'importances'
    (fANOVA parameter importances) or 'parallel' (parallel coordinates). None, with a line saying why, when
    the study has too few complete trials for it."""
    from optuna.visualization import matplotlib as views

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    needed = {"history": 1, "importances": 2, "parallel": 2}[kind]
    if len(complete) < needed:
        print(f"{kind}: needs {needed} complete trial(s), the study has {len(complete)}")
        return None
    if kind == "importances" and len({tuple(sorted(t.params.items())) for t in complete}) < 2:
        print("importances: the complete trials all have the same settings")
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        draw = {
            "history": views.plot_optimization_history,
            "importances": views.plot_param_importances,
            "parallel": views.plot_parallel_coordinate,
        }[kind]
        axes = draw(study)
    figure = axes.figure if hasattr(axes, "figure") else axes.flat[0].figure
    figure.set_size_inches(9, 4.5)
    figure.tight_layout()
    return figure


def save_study_figure(figure: Figure | None, study: str, name: str) -> Figure | None:
    """Save a figure of the study as outputs/studies/<study>/plots/<name>.png (atomically) and return it."""
    if figure is not None:
        from helpers.atomic import atomic_savefig

        folder = study_folder(study) / "plots"
        folder.mkdir(parents=True, exist_ok=True)
        atomic_savefig(figure, folder / f"{name}.png")
    return figure


def check_tune_parameters(cell_sources: list[str]) -> None:
    """08's parameters: refuse a name its parameters cell does not declare (papermill only warns)."""
    own = parameter_names(cell_sources[:1])
    unknown = sorted(set(parameter_names(cell_sources)) - set(own))
    if unknown:
        raise ConfigError(f"parameter(s) {unknown} are not parameters of 08_tune; it takes {own}")
