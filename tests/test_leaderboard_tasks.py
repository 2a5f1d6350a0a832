"""The leaderboard with runs of both tasks: each row says its task, multiclass runs fill the accuracy
columns and multilabel runs the mAP and F1 ones, and runs of different tasks are never ranked together."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score, f1_score

from helpers import leaderboard

CLASSES = ["a", "b", "c"]


def write_run(runs: Path, name: str, task: str, score: float, data_dir: Path, seconds: float = 10.0) -> Path:
    """A trained run of the task whose evaluation.json holds `score` (val_acc_tta or val_map_tta)."""
    run = runs / name
    run.mkdir(parents=True)
    config = {"backbone": "test_resnet", "img_size": 32, "epochs": 1, "data_dir": str(data_dir), "task": task}
    if task == "multilabel":
        config["label_sep"] = " "
    (run / "config.json").write_text(json.dumps(config))
    score_column = "val_map" if task == "multilabel" else "val_acc"
    pd.DataFrame(
        {"fold": [0], "epoch": [0], score_column: [score - 0.01], "val_loss": [0.3], "seconds": [seconds],
         "images_per_s": [100.0]}
    ).to_csv(run / "metrics.csv", index=False)  # fmt: skip
    (run / "evaluation.json").write_text(
        json.dumps({f"{score_column}_tta": score, score_column: score - 0.02})
    )
    return run


@pytest.fixture
def mixed(outputs, tmp_path) -> Path:
    """Two multiclass and two multilabel runs whose scores interleave: a single ranking would mix them."""
    data = tmp_path / "data"
    data.mkdir()
    runs = outputs / "runs"
    write_run(runs, "mc_low", "multiclass", 0.70, data)
    write_run(runs, "mc_high", "multiclass", 0.95, data)
    write_run(runs, "ml_low", "multilabel", 0.60, data)
    write_run(runs, "ml_high", "multilabel", 0.90, data)
    return runs


def test_runs_are_ranked_within_their_task(mixed):
    frame = leaderboard.write_leaderboard()
    assert list(frame.columns) == leaderboard.COLUMNS
    assert frame[["run", "task", "rank"]].values.tolist() == [
        ["mc_high", "multiclass", 1],
        ["mc_low", "multiclass", 2],
        ["ml_high", "multilabel", 1],
        ["ml_low", "multilabel", 2],
    ]
    multilabel = frame[frame["task"] == "multilabel"]
    assert multilabel["val_acc_tta"].isna().all() and multilabel["best_val_acc"].isna().all()
    assert multilabel["val_map_tta"].tolist() == [0.90, 0.60]
    assert multilabel["best_val_map"].tolist() == pytest.approx([0.89, 0.59])
    multiclass = frame[frame["task"] == "multiclass"]
    assert multiclass["val_map_tta"].isna().all() and multiclass["val_acc"].tolist() == pytest.approx(
        [0.93, 0.68]
    )


def test_a_sort_column_of_one_task_ranks_the_other_by_its_counterpart(mixed):
    frame = leaderboard.build_leaderboard()
    ranked = leaderboard.rank_runs(frame, "val_acc")
    assert ranked["run"].tolist() == ["mc_high", "mc_low", "ml_high", "ml_low"]
    by_time = leaderboard.rank_runs(frame.assign(seconds_per_epoch=[1.0, 2.0, 4.0, 3.0]), "seconds_per_epoch")
    assert by_time["run"].tolist() == ["mc_high", "mc_low", "ml_low", "ml_high"]
    assert by_time["task"].tolist() == ["multiclass", "multiclass", "multilabel", "multilabel"]


def test_the_display_tables_hold_each_tasks_columns(mixed):
    parts = leaderboard.by_task(leaderboard.build_leaderboard())
    assert list(parts) == ["multiclass", "multilabel"]
    assert "val_map_tta" not in parts["multiclass"] and "val_acc_tta" in parts["multiclass"]
    assert "val_acc_tta" not in parts["multilabel"] and "test_f1_micro" in parts["multilabel"]


def test_the_plot_has_a_panel_per_task_with_its_own_score(mixed):
    fig = leaderboard.show_leaderboard(leaderboard.build_leaderboard(), "val_acc_tta")
    assert [ax.get_ylabel() for ax in fig.axes] == ["val_acc_tta", "val_map_tta"]
    assert sorted(t.get_text().split(" ")[0] for t in fig.axes[1].texts) == ["ml_high", "ml_low"]
    by_map = leaderboard.show_leaderboard(leaderboard.build_leaderboard(), "val_map")
    assert [ax.get_ylabel() for ax in by_map.axes] == ["val_acc", "val_map"]
    plt.close("all")


def test_a_multilabel_runs_test_columns_are_map_and_f1_at_its_thresholds(outputs, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    truth = ["a b", "c", "b", "a c"]
    pd.DataFrame({"id": ["t1", "t2", "t3", "t4"], "label": truth}).to_csv(
        data / "test_labels.csv", index=False
    )
    run = write_run(outputs / "runs", "ml", "multilabel", 0.9, data)
    probabilities = np.array([[0.9, 0.6, 0.2], [0.1, 0.3, 0.8], [0.4, 0.7, 0.1], [0.6, 0.2, 0.45]])
    pd.concat([pd.DataFrame({"id": ["t1", "t2", "t3", "t4"]}), pd.DataFrame(probabilities, columns=CLASSES)],
              axis=1).to_csv(run / "test_probabilities.csv", index=False)  # fmt: skip
    thresholds = {"a": 0.5, "b": 0.5, "c": 0.4}
    (run / "thresholds.json").write_text(json.dumps({"classes": CLASSES, "per_class": thresholds}))
    row = leaderboard.build_leaderboard().iloc[0]
    targets = np.array([[1, 1, 0], [0, 0, 1], [0, 1, 0], [1, 0, 1]])
    predicted = (probabilities >= np.array([0.5, 0.5, 0.4])).astype(int)
    assert row["test_map"] == pytest.approx(average_precision_score(targets, probabilities))
    assert row["test_f1_micro"] == pytest.approx(f1_score(targets, predicted, average="micro"))
    assert row["test_f1_macro"] == pytest.approx(f1_score(targets, predicted, average="macro"))
    assert np.isnan(row["test_acc"])


def test_the_command_prints_one_table_per_task(mixed, capsys):
    assert leaderboard.main() == 0
    out = capsys.readouterr().out
    assert (
        out.index("multiclass runs:")
        < out.index("mc_low")
        < out.index("multilabel runs:")
        < out.index("ml_low")
    )
    header = out.splitlines()[1]
    assert "val_acc_tta" in header and "teachers" not in header and "nested_score" not in header, (
        "none has them"
    )


def test_a_run_is_finished_when_its_submission_or_without_a_test_set_its_evaluation_exists(outputs, tmp_path):
    """However the notebooks were run: by hand there is no runner's finished.json."""
    without_test = tmp_path / "no_test"
    without_test.mkdir()
    pd.DataFrame({"id": ["a"], "label": ["x"]}).to_csv(without_test / "train.csv", index=False)
    with_test = tmp_path / "with_test"
    (with_test / "test_image").mkdir(parents=True)
    (with_test / "test_image" / "t1.jpg").write_bytes(b"")
    pd.DataFrame({"id": ["a"], "label": ["x"]}).to_csv(with_test / "train.csv", index=False)
    runs = outputs / "runs"
    write_run(runs, "evaluated_no_test", "multiclass", 0.9, without_test)
    write_run(runs, "evaluated_with_test", "multiclass", 0.8, with_test)
    predicted = write_run(runs, "predicted", "multilabel", 0.7, with_test)
    (predicted / "submission.csv").write_text("id,labels\nt1,a\n")
    finished = leaderboard.build_leaderboard().set_index("run")["finished"].to_dict()
    assert finished == {"evaluated_no_test": True, "evaluated_with_test": False, "predicted": True}


def table_width_px(table: pd.DataFrame) -> float:
    """A generous estimate of a DataFrame's HTML width in JupyterLab: 8 px a character (13 px font) of the
    widest of header and values, 20 px of padding a column, the index included."""
    shown = table.round(4).map(str)
    widths = [max(len(str(c)), *(len(v) for v in shown[c])) for c in shown.columns]
    return 8 * (sum(widths) + 3) + 20 * (len(widths) + 1)


def test_06_tables_name_their_ranking_column_fit_a_window_and_compare_f1_at_one_threshold(mixed):
    frame = leaderboard.build_leaderboard()
    frame["parameters"], frame["train_seconds"] = 11_689_512, 1234.5678
    tables = leaderboard.display_tables(frame, "test_acc")
    titles = [title for title, _ in tables]
    assert titles[0] == "multiclass runs, ranked by test_acc"
    assert titles[2] == "multilabel runs, ranked by test_map", "the counterpart, named"
    for title, table in tables:
        assert table_width_px(table) <= 1400, (title, list(table.columns))
    multilabel = tables[2][1]
    f1 = [c for c in multilabel.columns if "f1" in c]
    assert f1 == ["val_f1_micro_tuned_tta", "val_f1_macro_tuned_tta", "test_f1_micro", "test_f1_macro"]


def test_06_shows_the_occasional_details_only_where_a_run_has_them(mixed):
    frame = leaderboard.build_leaderboard()
    frame["teachers"] = np.where(frame["run"] == frame["run"].iloc[0], "big_teacher", "")
    details = {
        title: table for title, table in leaderboard.display_tables(frame, "test_acc") if ": " in title
    }
    with_teacher = [t for t in details.values() if "big_teacher" in t.get("teachers", pd.Series()).tolist()]
    assert len(with_teacher) == 1
    assert all(
        "pruned_at_epoch" not in t.columns and "pseudo_labels" not in t.columns for t in details.values()
    )
    assert sum("teachers" in t.columns for t in details.values()) == 1, "the other task's runs have none"
