"""01, 02 and 03 under papermill on the multi-label demo: the task's stop in `auto`, then one run through."""

from __future__ import annotations

import json

import nbformat
import pandas as pd
import papermill
import pytest

from helpers.demo import ensure_multilabel_demo_data
from helpers.paths import notebooks_dir

DEMO = {"label_col": "labels", "run_name": "ml", "n_folds": 3}
TINY = {
    "backbone": "test_resnet",
    "pretrained": False,
    "img_size": 64,
    "epochs": 1,
    "batch_size": 32,
    "num_workers": 0,
}


def run(name: str, tmp_path, parameters: dict) -> nbformat.NotebookNode:
    """Execute one notebook with the parameters it declares; its executed copy."""
    source = notebooks_dir() / f"{name}.ipynb"
    declared = papermill.inspect_notebook(str(source))
    out = tmp_path / f"{name}.out.ipynb"
    papermill.execute_notebook(
        str(source),
        str(out),
        parameters={k: v for k, v in parameters.items() if k in declared},
        cwd=str(tmp_path),
        kernel_name="python3",
        progress_bar=False,
    )
    return nbformat.read(out, as_version=4)


def printed(notebook: nbformat.NotebookNode) -> str:
    return "".join(o.get("text", "") for c in notebook.cells for o in c.get("outputs", []))


@pytest.mark.slow
def test_data_and_training_notebooks_on_the_multilabel_demo(tmp_path, monkeypatch):
    data = ensure_multilabel_demo_data(tmp_path / "digits_multilabel")
    outputs = tmp_path / "outputs"
    monkeypatch.setenv("KIT_OUTPUTS", str(outputs))
    params = {**DEMO, **TINY, "data_dir": str(data)}

    # auto: the labels look like sets, and 01 stops saying which settings to give
    with pytest.raises(papermill.PapermillExecutionError, match=r"looks multi-label.*label_sep=' '"):
        run("01_data", tmp_path, params)
    stopped = nbformat.read(tmp_path / "01_data.out.ipynb", as_version=4)
    outputs_of = [
        c.outputs for c in stopped.cells if any(o.output_type == "error" for o in c.get("outputs", []))
    ]
    assert [o.output_type for o in outputs_of[0]] == ["error"], "nothing empty printed before the message"
    shown = "".join(outputs_of[0][0].traceback)
    assert "looks multi-label" in shown and "Traceback" not in shown and "File " not in shown

    params["task"] = "multilabel"
    executed = run("01_data", tmp_path, params)
    folder = outputs / "runs" / "ml"
    assert json.loads((folder / "config.json").read_text())["task"] == "multilabel"
    assert "task: multilabel" in printed(executed)
    for plot in ("class_counts", "label_sets", "samples"):
        assert (folder / "plots" / f"{plot}.png").stat().st_size > 0, plot

    run("02_augment_preview", tmp_path, params)
    assert (folder / "plots" / "train_batch.png").stat().st_size > 0

    run("03_train", tmp_path, params)
    config = json.loads((folder / "config.json").read_text())
    assert (config["task"], config["monitor"]) == ("multilabel", "val_map")
    metrics = pd.read_csv(folder / "metrics.csv")
    assert metrics[["val_map", "val_f1_micro", "val_f1_macro", "val_loss"]].notna().all().all()
    assert (folder / "plots" / "learning_curves.png").stat().st_size > 0

    # 01 again on the trained run with task 'auto': no contradiction, the resolved task stands
    run("01_data", tmp_path, {**params, "task": "auto"})
    assert json.loads((folder / "config.json").read_text())["task"] == "multilabel"
