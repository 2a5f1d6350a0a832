"""The sweep and the leaderboard: planning, checks before any run, resume, --rerun, the table, notebook 06.

Most tests replace papermill.execute_notebook with a recorder, so they check the sweep's decisions without
running a notebook; one real mini sweep (two tiny timm models on a tiny data set) runs end to end.
"""

from __future__ import annotations

import ast
import json
import math
import re
from pathlib import Path

import cv2
import nbformat
import numpy as np
import pandas as pd
import papermill
import pytest
from notebook_runs import run_nbval
from papermill.exceptions import PapermillExecutionError

from helpers import leaderboard, sweep
from helpers.atomic import atomic_torch_save
from helpers.config import ConfigError
from helpers.model import count_parameters, skeleton
from helpers.paths import notebooks_dir
from helpers.run_folder import RunFolder
from helpers.runner import run_series

COMPARE = notebooks_dir() / "06_compare.ipynb"
TINY = [
    "-p",
    "img_size",
    "32",
    "-p",
    "pretrained",
    "False",
    "-p",
    "epochs",
    "1",
    "-p",
    "batch_size",
    "32",
    "-p",
    "num_workers",
    "0",
]


class Recorder:
    """Stands in for papermill.execute_notebook: records (run, notebook), optionally fails once."""

    def __init__(self, fail_once: tuple[str, str] | None = None) -> None:
        self.calls: list[tuple[str, str]] = []
        self.fail_once = fail_once

    def __call__(self, input_path: str, output_path: str, parameters: dict, **kwargs) -> None:
        call = (parameters["run_name"], Path(input_path).stem)
        self.calls.append(call)
        if call == self.fail_once:
            self.fail_once = None
            raise PapermillExecutionError(3, 3, "train_folds(...)", "KeyboardInterrupt", "stopped", [])

    def runs(self) -> list[str]:
        return list(dict.fromkeys(run for run, _ in self.calls))


@pytest.fixture
def recorder(outputs: Path, monkeypatch: pytest.MonkeyPatch) -> Recorder:
    fake = Recorder()
    monkeypatch.setattr(papermill, "execute_notebook", fake)
    return fake


# -- planning ---------------------------------------------------------------------------------------------
def test_grid_expansion_and_run_names(tmp_path):
    grid_file = tmp_path / "grid.yaml"
    grid_file.write_text("backbone: [resnet18, test_resnet]\nlr: [0.001, 0.0003]\nepochs: [3]\n")
    runs = sweep.plan_sweep([], {"img_size": 32}, sweep.load_grid(grid_file))
    assert [r.name for r in runs] == [
        "resnet18-lr0.001-epochs3",
        "resnet18-lr0.0003-epochs3",
        "test_resnet-lr0.001-epochs3",
        "test_resnet-lr0.0003-epochs3",
    ]
    assert runs[1].params == {
        "img_size": 32,
        "lr": 0.0003,
        "epochs": 3,
        "backbone": "resnet18",
        "run_name": "resnet18-lr0.0003-epochs3",
    }
    assert sweep.expand_grid({}) == [{}]
    assert [r.name for r in sweep.plan_sweep(["a", "b"], {"lr": 0.1}, {})] == ["a", "b"]
    assert (
        sweep.run_name("a", {"folds": [0, 1], "data_dir": "x/y z"}, tag="v2") == "a-folds0+1-data_dirx_y_z-v2"
    )


@pytest.mark.parametrize(
    "grid_text, match",
    [
        ("lr: 0.001\n", "non-empty list"),
        ("lr: []\n", "non-empty list"),
        ("- lr\n", "mapping"),
        ("lr: [\n", "cannot read"),
    ],
)
def test_bad_grid_files(tmp_path, grid_text, match):
    grid_file = tmp_path / "grid.yaml"
    grid_file.write_text(grid_text)
    with pytest.raises(ConfigError, match=match):
        sweep.load_grid(grid_file)


def test_a_setting_given_twice_is_an_error():
    with pytest.raises(ConfigError, match="both with -p and in the grid"):
        sweep.plan_sweep([], {"lr": 0.1}, {"lr": [0.2]})
    with pytest.raises(ConfigError, match="--backbones and the grid"):
        sweep.plan_sweep(["a"], {}, {"backbone": ["b"]})


# -- checks before any run ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "args, match",
    [
        (["--backbones", "test_resnet,test_efficientnet", "-p", "epochz", "1"], "epochz"),
        (["--backbones", "test_resnet", "--grid", "GRID"], r"test_resnet-epochsthree: epochs='three'"),
        (["--backbones", "test_resnet,resnet_nope"], "resnet_nope"),
        (["--backbones", "test_resnet,test_resnet"], "share outputs/runs/test_resnet"),
    ],
)
def test_bad_parameters_fail_before_any_notebook(recorder, tmp_path, capsys, args, match):
    """An unknown name, a wrong type (in a later run only), an unknown backbone, a shared folder."""
    grid_file = tmp_path / "grid.yaml"
    grid_file.write_text("epochs: [1, three]\n")
    assert (
        sweep.main([a.replace("GRID", str(grid_file)) for a in args]) == 2
    )  # a kit error: the message, exit status 2
    assert recorder.calls == []
    assert re.search(match, capsys.readouterr().err)


def test_runs_on_different_folds_are_pointed_out(recorder, tmp_path, capsys):
    grid_file = tmp_path / "grid.yaml"
    grid_file.write_text("seed: [1, 2]\n")
    assert sweep.main(["--backbones", "test_resnet", "--grid", str(grid_file), *TINY]) == 0
    assert recorder.runs() == ["test_resnet-seed1", "test_resnet-seed2"]
    assert "not validated on the same folds" in capsys.readouterr().out


# -- finished runs, resume, --rerun ---------------------------------------------------------------------------
def test_interrupted_sweep_resumes(recorder, outputs):
    """The second run fails once; the next sweep runs only that one, and a third sweep runs nothing."""
    args = ["--backbones", "test_resnet,test_efficientnet", *TINY]
    recorder.fail_once = ("test_efficientnet", "03_train")
    assert sweep.main(args) == 1
    assert recorder.calls[-1] == ("test_efficientnet", "03_train")
    assert RunFolder.named("test_resnet").finished.exists()
    assert not RunFolder.named("test_efficientnet").finished.exists()
    assert (outputs / "leaderboard.csv").exists()

    recorder.calls.clear()
    assert sweep.main(args) == 0
    assert recorder.runs() == ["test_efficientnet"]
    assert [nb for _, nb in recorder.calls] == [
        "01_data",
        "02_augment_preview",
        "03_train",
        "04_evaluate",
        "05_inference",
    ]

    recorder.calls.clear()
    assert sweep.main(args) == 0
    assert recorder.calls == []


def test_rerun_starts_finished_runs_afresh(recorder, outputs):
    args = ["--backbones", "test_resnet,test_efficientnet", *TINY]
    assert sweep.main(args) == 0
    stale = outputs / "runs" / "test_resnet" / "checkpoints" / "fold3_best_score.pt"
    stale.parent.mkdir(parents=True)
    stale.touch()
    recorder.calls.clear()
    assert sweep.main([*args, "--rerun"]) == 0
    assert recorder.runs() == ["test_resnet", "test_efficientnet"]
    assert not stale.exists()


def test_finished_run_with_other_parameters(recorder, outputs, capsys):
    """Other settings need --rerun or another name; a different num_workers only does not."""
    assert sweep.main(["--backbones", "test_resnet", *TINY]) == 0
    recorder.calls.clear()
    assert sweep.main(["--backbones", "test_resnet", *TINY, "-p", "lr", "0.01"]) == 2
    assert recorder.calls == []
    err = capsys.readouterr().err
    assert "lr: 0.003 -> 0.01" in err and "--rerun" in err and "--tag" in err

    assert sweep.main(["--backbones", "test_resnet", *TINY[:-1], "2"]) == 0  # num_workers 2
    assert recorder.calls == []

    assert sweep.main(["--backbones", "test_resnet", *TINY, "-p", "lr", "0.01", "--tag", "fast"]) == 0
    assert recorder.runs() == ["test_resnet-fast"]


def test_only_the_whole_series_marks_a_run_finished(recorder, outputs):
    marker = RunFolder.named("test_resnet").finished
    run_series({"backbone": "test_resnet"}, log=False)
    assert json.loads(marker.read_text())["parameters"] == {
        "backbone": "test_resnet",
        "run_name": "test_resnet",
    }
    run_series({"backbone": "test_resnet"}, notebooks=["01_data"], log=False)
    assert not marker.exists()


# -- the leaderboard ------------------------------------------------------------------------------------------
def write_run(runs: Path, name: str, pieces: set[str], data_dir: Path | None = None) -> Path:
    """A run folder with the named pieces, holding known numbers."""
    run = runs / name
    run.mkdir(parents=True)
    config = {"backbone": "test_resnet", "img_size": 32, "epochs": 2, "data_dir": str(data_dir or "")}
    (run / "config.json").write_text(json.dumps(config))
    if "metrics" in pieces:
        pd.DataFrame(
            {
                "fold": [0, 0, 1, 1],
                "epoch": [0, 1, 0, 1],
                "val_acc": [0.5, 0.7, 0.9, 0.8],
                "val_loss": [1.0, 0.8, 0.4, 0.6],
                "seconds": [10.0, 12.0, 14.0, 16.0],
                "images_per_s": [100.0, 200.0, 300.0, 400.0],
            }
        ).to_csv(run / "metrics.csv", index=False)
    if "evaluation" in pieces:
        evaluation = {
            "tta_views": ["identity", "hflip"],
            "val_acc": 0.75,
            "val_log_loss": 0.5,
            "val_acc_tta": 0.8,
        }
        (run / "evaluation.json").write_text(json.dumps(evaluation))
    if "oof" in pieces:
        pd.DataFrame(
            {"id": list("abcd"), "label": ["1", "2", "1", "2"], "predicted": ["1", "2", "2", "2"]}
        ).to_csv(run / "oof.csv", index=False)
    if "checkpoint" in pieces:
        state = {"model": {}, "classes": ["1", "2"], "config": {"backbone": "test_resnet"}}
        atomic_torch_save(state, run / "checkpoints" / "fold1_best_score.pt")
    if "test" in pieces:
        pd.DataFrame({"id": ["t1", "t2"], "1": [0.9, 0.6], "2": [0.1, 0.4]}).to_csv(
            run / "test_probabilities.csv", index=False
        )
    return run


def test_leaderboard_rows(outputs, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    pd.DataFrame({"id": ["t1", "t2"], "label": ["1", "2"]}).to_csv(data / "test_labels.csv", index=False)
    runs = outputs / "runs"
    write_run(runs, "full", {"metrics", "evaluation", "oof", "checkpoint", "test"}, data)
    write_run(runs, "trained_only", {"metrics"})
    write_run(runs, "data_only", set())  # no metrics.csv: not a trained run
    broken = write_run(runs, "broken", {"metrics", "evaluation"})
    (broken / "evaluation.json").write_text("{not json")
    RunFolder(broken).finished.write_text("{}")
    (broken / "submission.csv").write_text("id,label\n")  # 05 ran: finished, whatever finished.json says

    with pytest.warns(UserWarning, match="broken.*evaluation.json"):
        frame = leaderboard.write_leaderboard()
    assert list(frame.columns) == leaderboard.COLUMNS
    assert frame["run"].tolist() == [
        "full",
        "broken",
        "trained_only",
    ]  # NaN val_acc_tta last; ties by best_val_acc, then name
    full = frame.iloc[0]
    expected = {
        "val_acc_tta": 0.8,
        "val_acc": 0.75,
        "best_val_acc": (0.7 + 0.9) / 2,
        "best_val_loss": (0.8 + 0.4) / 2,
        "oof_acc": 0.75,
        "test_acc": 0.5,
        "train_seconds": 52.0,
        "seconds_per_epoch": 13.0,
        "images_per_s": 250.0,
        "parameters": count_parameters(skeleton("test_resnet", 2)),  # as 03 shows the model's size
        "img_size": 32,
        "epochs": 2,
    }
    assert {k: full[k] for k in expected} == pytest.approx(expected)
    assert full["backbone"] == "test_resnet" and not full["finished"]
    assert frame.loc[frame["run"] == "broken", "finished"].item()
    rest = frame.iloc[1:][["val_acc_tta", "val_acc", "oof_acc", "test_acc", "parameters"]]
    assert rest.isna().all().all()
    assert frame.iloc[1:]["best_val_acc"].notna().all()

    saved = pd.read_csv(outputs / "leaderboard.csv")
    assert saved["run"].tolist() == frame["run"].tolist()
    assert (outputs / "leaderboard.png").stat().st_size > 0


def test_leaderboard_without_runs(outputs):
    frame = leaderboard.write_leaderboard()
    assert frame.empty and list(pd.read_csv(outputs / "leaderboard.csv").columns) == leaderboard.COLUMNS
    assert leaderboard.main() == 0


def test_rank_runs_and_plot():
    frame = pd.DataFrame(
        {
            "run": ["a", "b", "c"],
            "val_acc_tta": [0.5, np.nan, 0.9],
            "best_val_acc": [0.6, 0.7, 0.8],
            "train_seconds": [30.0, 10.0, 20.0],
            "seconds_per_epoch": [3.0, 1.0, 2.0],
            "parameters": [1e6, 2e6, np.nan],
        }
    ).reindex(columns=leaderboard.COLUMNS)
    assert leaderboard.rank_runs(frame, "val_acc_tta")["run"].tolist() == ["c", "a", "b"]
    assert leaderboard.rank_runs(frame, "train_seconds")["run"].tolist() == ["b", "c", "a"]
    with pytest.raises(ConfigError, match="sort_by='nope'"):
        leaderboard.rank_runs(frame, "nope")
    fig = leaderboard.show_leaderboard(frame, "best_val_acc")
    labels = sorted(t.get_text() for t in fig.axes[0].texts)
    assert labels == ["a (1.00 M)", "b (2.00 M)", "c (?)"]
    assert [t.get_text() for t in leaderboard.show_leaderboard(frame.iloc[:0]).axes[0].texts] == [
        "no run has both val_acc_tta and seconds_per_epoch yet"
    ]


def test_compare_parameters_are_checked():
    own = '# parameters\nsort_by = "val_acc_tta"\naccuracy = "val_acc_tta"\n'
    leaderboard.check_compare_parameters([own, '# parameters\nsort_by = "oof_acc"\n'], "oof_acc", "val_acc")
    with pytest.raises(ConfigError, match=r"\['sortby'\]"):
        leaderboard.check_compare_parameters([own, "# parameters\nsortby = 1\n"], "val_acc_tta", "val_acc")
    with pytest.raises(ConfigError, match="accuracy='seconds_per_epoch'"):
        leaderboard.check_compare_parameters([own], "val_acc_tta", "seconds_per_epoch")


def test_compare_notebook_committed_clean():
    """06 is committed without outputs; its parameters cell holds literals only, after helpers.notebook."""
    nb = nbformat.read(COMPARE, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code)
    assert [c.id for c in nb.cells] == [f"cell-{i:02d}" for i in range(len(nb.cells))]
    tagged = [i for i, c in enumerate(code) if "parameters" in c.metadata.get("tags", [])]
    assert tagged == [1] and code[1].source.startswith("# parameters")
    assert "helpers.notebook" in code[0].source
    for node in ast.parse(code[1].source).body:
        assert isinstance(node, ast.Assign)
        ast.literal_eval(node.value)


# -- one real mini sweep ----------------------------------------------------------------------------------------
def tiny_dataset(root: Path, per_class: int = 10, side: int = 32) -> Path:
    """CSV layout: 3 colour classes, 6 test images with labels, and a sample submission."""
    rng = np.random.default_rng(0)
    colours = {"red": (200, 40, 40), "green": (40, 200, 40), "blue": (40, 40, 200)}

    def write(path: Path, label: str) -> None:
        noise = rng.integers(-40, 40, size=(side, side, 3))
        image = np.clip(np.array(colours[label]) + noise, 0, 255).astype(np.uint8)
        path.parent.mkdir(parents=True, exist_ok=True)
        assert cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))

    train = [(f"{c}{i}", c) for c in colours for i in range(per_class)]
    test = [(f"t{c}{i}", c) for c in colours for i in range(2)]
    for folder, rows in (("train_image", train), ("test_image", test)):
        for image_id, label in rows:
            write(root / folder / f"{image_id}.jpg", label)
    pd.DataFrame(train, columns=["id", "label"]).to_csv(root / "train.csv", index=False)
    pd.DataFrame(test, columns=["id", "label"]).to_csv(root / "test_labels.csv", index=False)
    pd.DataFrame({"id": [i for i, _ in test], "label": "red"}).to_csv(
        root / "sample_submission.csv", index=False
    )
    return root


@pytest.fixture(scope="module")
def mini_sweep(tmp_path_factory) -> Path:
    """Two tiny timm models through the whole series, for real; returns the outputs folder."""
    root = tmp_path_factory.mktemp("mini")
    data = tiny_dataset(root / "colours")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KIT_OUTPUTS", str(root / "outputs"))
        args = ["--backbones", "test_resnet,test_efficientnet", *TINY, "-p", "data_dir", str(data)]
        assert sweep.main(args) == 0
    return root / "outputs"


@pytest.mark.slow
def test_mini_sweep_leaderboard(mini_sweep):
    board = pd.read_csv(mini_sweep / "leaderboard.csv")
    assert sorted(board["run"]) == ["test_efficientnet", "test_resnet"]
    for column in ("val_acc_tta", "val_acc", "best_val_acc", "oof_acc", "test_acc", "seconds_per_epoch"):
        assert board[column].map(math.isfinite).all(), column
    assert (board["parameters"] > 1000).all() and board["finished"].all()
    assert (board["img_size"] == 32).all() and (board["epochs"] == 1).all()
    assert (mini_sweep / "leaderboard.png").stat().st_size > 0


@pytest.mark.slow
def test_mini_sweep_again_runs_nothing(mini_sweep, monkeypatch):
    fake = Recorder()
    monkeypatch.setattr(papermill, "execute_notebook", fake)
    monkeypatch.setenv("KIT_OUTPUTS", str(mini_sweep))
    data = mini_sweep.parent / "colours"
    assert (
        sweep.main(["--backbones", "test_resnet,test_efficientnet", *TINY, "-p", "data_dir", str(data)]) == 0
    )
    assert fake.calls == []


@pytest.mark.slow
def test_compare_notebook_under_papermill(mini_sweep, tmp_path, monkeypatch):
    monkeypatch.setenv("KIT_OUTPUTS", str(mini_sweep))
    papermill.execute_notebook(
        str(COMPARE),
        str(tmp_path / "06.ipynb"),
        parameters={"sort_by": "train_seconds", "accuracy": "best_val_acc"},
        cwd=str(tmp_path),
        kernel_name="python3",
        progress_bar=False,
    )
    executed = nbformat.read(tmp_path / "06.ipynb", as_version=4)
    text = json.dumps([c.get("outputs", []) for c in executed.cells])
    assert "2 trained run(s)" in text and "test_efficientnet" in text and "image/png" in text


@pytest.mark.slow
def test_compare_notebook_under_nbval(mini_sweep, tmp_path):
    result = run_nbval(COMPARE, mini_sweep, tmp_path, timeout=300)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
