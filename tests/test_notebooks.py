"""The notebooks as users run them: under nbval (the series, with tiny parameters) and under papermill."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import nbformat
import pandas as pd
import papermill
import pytest
from notebook_runs import OPTIONAL_SECTIONS, TINY, prepare_series, run_nbval

from helpers.config import INJECTED_MARKER, Config
from helpers.paths import demo_data_dir, notebooks_dir
from helpers.runner import SERIES

ALL_NOTEBOOKS = sorted(p.stem for p in notebooks_dir().glob("*.ipynb"))


def notebook(name: str) -> Path:
    return notebooks_dir() / f"{name}.ipynb"


def test_the_series_is_all_there():
    assert set(SERIES) <= set(ALL_NOTEBOOKS)


@pytest.mark.parametrize("name", ALL_NOTEBOOKS)
def test_committed_without_outputs(name):
    nb = nbformat.read(notebook(name), as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code, f"{name} has no code cells"
    assert all(not c.outputs and c.execution_count is None for c in code), f"{name} has stored outputs"


@pytest.mark.parametrize("name", ALL_NOTEBOOKS)
def test_every_cell_has_its_own_id(name):
    """nbformat 4.5 cell ids: a cell without one makes nbformat warn in every headless run."""
    cells = json.loads(notebook(name).read_text())["cells"]
    ids = [c.get("id") for c in cells]
    assert None not in ids and len(set(ids)) == len(ids), f"{name}: cell ids {ids}"


@pytest.mark.parametrize("name", ALL_NOTEBOOKS)
def test_parameters_cell_holds_literals_only(name):
    """A tagged cell of plain assignments of literals, after the cell that imports helpers.notebook."""
    nb = nbformat.read(notebook(name), as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    tagged = [i for i, c in enumerate(code) if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{name} needs exactly one cell tagged 'parameters'"
    cell = code[tagged[0]]
    assert cell.source.startswith("# parameters")
    assert any("helpers.notebook" in c.source for c in code[: tagged[0]]), "import helpers.notebook before it"
    for node in ast.parse(cell.source).body:
        assert isinstance(node, ast.Assign), ast.dump(node)
        ast.literal_eval(node.value)  # raises on anything but a literal


@pytest.mark.parametrize("name", SERIES)
def test_parameter_defaults_are_the_config_defaults(name):
    """A notebook's default for a setting it does not decide counts as 'not passed' (README: which value
    wins), so each default in a parameters cell must be the Config default."""
    declared = papermill.inspect_notebook(str(notebook(name)))
    defaults = Config().to_dict()
    for setting, spec in declared.items():
        assert (
            Config.from_dict({setting: ast.literal_eval(spec["default"])}).to_dict()[setting]
            == defaults[setting]
        ), setting


@pytest.mark.slow
def test_series_under_nbval(tmp_path):
    """Each notebook, with tiny parameters injected by papermill, passes nbval in order, sharing one run."""
    prepared = tmp_path / "notebooks"
    prepare_series(prepared, {**TINY, **OPTIONAL_SECTIONS})
    result = run_nbval(prepared, tmp_path / "outputs", tmp_path)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    run = tmp_path / "outputs" / "runs" / "test_resnet"
    assert json.loads((run / "config.json").read_text())["img_size"] == 32
    assert len(pd.read_csv(run / "metrics.csv")) == 1
    submission = pd.read_csv(run / "submission.csv", dtype=str)
    sample = pd.read_csv(demo_data_dir() / "sample_submission.csv", dtype=str)
    assert submission["id"].tolist() == sample["id"].tolist()
    for plot in (
        "class_counts",
        "samples",
        "train_batch",
        "learning_curves",
        "confusion_matrix",
        "grad_cam",
        "label_issues",
        "reliability",
        "lr_finder",
        "test_predictions",
    ):
        assert (run / "plots" / f"{plot}.png").stat().st_size > 0, plot
    temperature = json.loads((run / "calibration.json").read_text())["temperature"]
    assert temperature > 0 and (run / "label_issues.csv").exists()
    assert (run / "onnx" / "fold0_best_score.onnx").stat().st_size > 0
    assert json.loads((run / "onnx" / "fold0_best_score.json").read_text())["parity"]["max_abs_diff"] <= 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["csv", "imagefolder"])
def test_data_notebook_with_parameters(
    tmp_path, monkeypatch, layout, make_csv_dataset, make_imagefolder_dataset
):
    """01_data through papermill, from another working directory, on a user's data in each layout."""
    root = make_csv_dataset() if layout == "csv" else make_imagefolder_dataset()
    monkeypatch.setenv("KIT_OUTPUTS", str(tmp_path / "outputs"))
    papermill.execute_notebook(
        str(notebook("01_data")),
        str(tmp_path / "out.ipynb"),
        parameters={"data_dir": str(root), "n_folds": 3, "run_name": "mine"},
        cwd=str(tmp_path),
        kernel_name="python3",
        progress_bar=False,
    )
    run = tmp_path / "outputs" / "runs" / "mine"
    assert json.loads((run / "config.json").read_text())["data_dir"] == str(root)
    executed = nbformat.read(tmp_path / "out.ipynb", as_version=4)
    shown = [o for c in executed.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(shown) >= 3, "the executed copy should keep the figures it showed"
    assert (run / "plots" / "samples.png").exists()
    assert (tmp_path / "outputs" / "datasets" / root.name / "folds_k3_seed42.csv").exists()


@pytest.mark.slow
def test_unknown_papermill_parameter_fails(tmp_path, monkeypatch):
    """Papermill only warns about an unknown -p name; the notebook itself turns it into an error."""
    monkeypatch.setenv("KIT_OUTPUTS", str(tmp_path / "outputs"))
    with pytest.raises(papermill.PapermillExecutionError, match="n_foldz"):
        papermill.execute_notebook(
            str(notebook("01_data")),
            str(tmp_path / "out.ipynb"),
            parameters={"n_foldz": 3},
            kernel_name="python3",
            progress_bar=False,
        )


@pytest.mark.slow
def test_bad_data_lists_problems(tmp_path, monkeypatch, make_csv_dataset):
    """Bad data stops 01 with the list of problems, naming the file, not a bare traceback."""
    root = make_csv_dataset()
    victim = sorted((root / "train_image").iterdir())[0]
    victim.write_bytes(b"")
    monkeypatch.setenv("KIT_OUTPUTS", str(tmp_path / "outputs"))
    with pytest.raises(papermill.PapermillExecutionError) as err:
        papermill.execute_notebook(
            str(notebook("01_data")),
            str(tmp_path / "out.ipynb"),
            parameters={"data_dir": str(root), "n_folds": 3},
            kernel_name="python3",
            progress_bar=False,
        )
    assert "DataError" in err.value.ename
    assert victim.name in err.value.evalue and "image empty" in err.value.evalue


REPRODUCTION = [
    ("01_data", {"run_name": "r1"}),
    (
        "03_train",
        {
            "run_name": "r1",
            "backbone": "test_resnet",
            "pretrained": False,
            "epochs": 1,
            "img_size": 32,
            "batch_size": 32,
        },
    ),
    ("04_evaluate", {"run_name": "r1"}),
]


def best_epoch_and_evaluation(run: Path) -> tuple[float, float]:
    """03's best-epoch val_acc of fold 0 and 04's out-of-fold accuracy without TTA."""
    best = pd.read_csv(run / "metrics.csv")["val_acc"].max()
    return best, json.loads((run / "evaluation.json").read_text())["val_acc"]


@pytest.mark.slow
def test_evaluation_uses_what_the_run_trained_under_papermill(tmp_path, monkeypatch):
    """04 given only run_name evaluates with the run's backbone and normalisation, not its own default's;
    a backbone that contradicts the run stops it, naming both."""
    monkeypatch.setenv("KIT_OUTPUTS", str(tmp_path / "outputs"))
    for name, params in REPRODUCTION:
        papermill.execute_notebook(
            str(notebook(name)),
            str(tmp_path / f"{name}.ipynb"),
            parameters={**params, "num_workers": 0} if name == "03_train" else params,
            kernel_name="python3",
            progress_bar=False,
        )
    best, evaluated = best_epoch_and_evaluation(tmp_path / "outputs" / "runs" / "r1")
    assert evaluated == pytest.approx(best, abs=1e-6)  # metrics.csv averages in float32
    with pytest.raises(papermill.PapermillExecutionError) as err:
        papermill.execute_notebook(
            str(notebook("04_evaluate")),
            str(tmp_path / "conflict.ipynb"),
            parameters={"run_name": "r1", "backbone": "resnet18"},
            kernel_name="python3",
            progress_bar=False,
        )
    assert "ConfigError" in err.value.ename
    assert "backbone='resnet18' (the run has 'test_resnet')" in err.value.evalue
    assert "run_name" in err.value.evalue


@pytest.mark.slow
def test_evaluation_uses_what_the_run_trained_under_nbval(tmp_path):
    prepared = tmp_path / "notebooks"
    prepared.mkdir()
    for name, params in REPRODUCTION:
        papermill.execute_notebook(
            str(notebook(name)),
            str(prepared / f"{name}.ipynb"),
            parameters={**params, "num_workers": 0} if name == "03_train" else params,
            prepare_only=True,
            kernel_name="python3",
        )
    result = run_nbval(prepared, tmp_path / "outputs", tmp_path)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    best, evaluated = best_epoch_and_evaluation(tmp_path / "outputs" / "runs" / "r1")
    assert evaluated == pytest.approx(best, abs=1e-6)  # metrics.csv averages in float32


def test_papermill_marks_its_injected_cell_as_the_kit_expects(tmp_path):
    """The kit tells an injected value from a notebook default by the injected cell's first line."""
    papermill.execute_notebook(
        str(notebook("04_evaluate")),
        str(tmp_path / "p.ipynb"),
        parameters={"run_name": "r1"},
        prepare_only=True,
        kernel_name="python3",
    )
    cells = nbformat.read(tmp_path / "p.ipynb", as_version=4).cells
    injected = [c for c in cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert len(injected) == 1 and injected[0].source.startswith(INJECTED_MARKER)
