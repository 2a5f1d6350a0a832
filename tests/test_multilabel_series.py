"""The whole series (01 → 05, then 06) on the multi-label demo with a test model, under papermill and under
nbval: the same notebooks as a multiclass run, with the run's task read from its config."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pandas as pd
import papermill
import pytest
from notebook_runs import TINY, prepare_series, run_nbval

from helpers.demo import ensure_multilabel_demo_data
from helpers.paths import notebooks_dir
from helpers.runner import run_series

# the multi-label demo (64 px tiles of 1-4 digits, a space-separated `labels` column) with the test model;
# the range test and the ONNX export on, as in the multiclass series test (calibration is multiclass only)
MULTILABEL = {
    **TINY,
    "run_name": "ml",
    "label_col": "labels",
    "task": "multilabel",
    "lr_finder": True,
    "export_onnx": True,
}
PLOTS = ("label_sets", "learning_curves", "pr_curves", "predicted_batch", "highest_loss", "grad_cam",
         "label_issues", "test_predictions")  # fmt: skip


def check_multilabel_run(run: Path, data: Path) -> None:
    """What the series leaves in a multilabel run folder."""
    assert json.loads((run / "config.json").read_text())["task"] == "multilabel"
    evaluation = json.loads((run / "evaluation.json").read_text())
    assert evaluation["task"] == "multilabel"
    assert 0 <= evaluation["val_map_tta"] <= 1 and "val_f1_micro_tuned_tta" in evaluation
    thresholds = json.loads((run / "thresholds.json").read_text())
    classes = [str(c) for c in range(10)]
    assert thresholds["classes"] == classes and set(thresholds["per_class"]) == set(classes)
    sample = pd.read_csv(data / "sample_submission.csv", dtype=str)
    submission = pd.read_csv(run / "submission.csv", dtype=str, keep_default_na=False)
    assert list(submission.columns) == list(sample.columns)
    assert submission["id"].tolist() == sample["id"].tolist()
    assert all(set(v.split(" ")) <= set(classes) for v in submission["labels"] if v)
    probabilities = pd.read_csv(run / "test_probabilities.csv", dtype={"id": str})
    assert list(probabilities.columns) == ["id", *classes]
    for plot in PLOTS:
        assert (run / "plots" / f"{plot}.png").stat().st_size > 0, plot
    assert not (run / "plots" / "reliability.png").exists() and not (run / "calibration.json").exists()
    described = json.loads((run / "onnx" / "fold0_best_score.json").read_text())
    assert described["task"] == "multilabel" and "sigmoid" in described["output"]["meaning"]


def check_leaderboard(outputs: Path) -> None:
    board = pd.read_csv(outputs / "leaderboard.csv")
    row = board[board["run"] == "ml"].iloc[0]
    assert row["task"] == "multilabel" and row["rank"] == 1
    assert 0 <= row["val_map_tta"] <= 1 and 0 <= row["test_map"] <= 1 and pd.isna(row["val_acc_tta"])


@pytest.mark.slow
def test_multilabel_series_under_papermill(tmp_path, monkeypatch):
    data = ensure_multilabel_demo_data()
    monkeypatch.setenv("KIT_OUTPUTS", str(tmp_path / "outputs"))
    run = run_series({**MULTILABEL, "data_dir": str(data)}, log=False)
    check_multilabel_run(run.path, data)
    papermill.execute_notebook(
        str(notebooks_dir() / "06_compare.ipynb"),
        str(tmp_path / "06.ipynb"),
        kernel_name="python3",
        progress_bar=False,
    )
    check_leaderboard(tmp_path / "outputs")
    executed = nbformat.read(run.path / "notebooks" / "04_evaluate.ipynb", as_version=4)
    printed = "".join(o.get("text", "") for c in executed.cells for o in c.get("outputs", []))
    assert "optimistic" in printed and "temperature scaling is for multiclass runs" in printed


@pytest.mark.slow
def test_multilabel_series_under_nbval(tmp_path):
    data = ensure_multilabel_demo_data()
    prepared = tmp_path / "notebooks"
    prepare_series(prepared, {**MULTILABEL, "data_dir": str(data)})
    papermill.execute_notebook(
        str(notebooks_dir() / "06_compare.ipynb"),
        str(prepared / "06_compare.ipynb"),
        prepare_only=True,
        kernel_name="python3",
    )
    result = run_nbval(prepared, tmp_path / "outputs", tmp_path)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    check_multilabel_run(tmp_path / "outputs" / "runs" / "ml", data)
    check_leaderboard(tmp_path / "outputs")
