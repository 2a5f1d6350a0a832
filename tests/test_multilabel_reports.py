"""04 and 05 for a multilabel run: the OOF evaluation scores like scikit-learn and writes its thresholds,
05 reloads them and reproduces 04's sets, the submission takes the sample's columns and separator, and
the figures mark wrong and missed labels differently."""

from __future__ import annotations

import dataclasses
import json

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import timm
import torch
from matplotlib.colors import to_hex
from sklearn.metrics import average_precision_score, f1_score
from train_fixtures import tiny_config

from helpers import holdout
from helpers.checkpoints import save_checkpoint
from helpers.config import Config
from helpers.dataset import DataInfo, prepare_dataset
from helpers.inference import ensemble_members, fill_submission, label_separator
from helpers.label_issues import rank_label_issues
from helpers.multilabel_metrics import multilabel_summary, predict_sets
from helpers.plots import MISSED, RIGHT, WRONG, label_set_lines
from helpers.reports import (
    OofEvaluation,
    evaluate_oof,
    predict_test,
    score_test_set,
    show_class_errors,
    show_grad_cam,
    show_highest_loss,
    show_predicted_batch,
    write_test_predictions,
)
from helpers.run_folder import EVALUATION_KEYS, RunFolder, metric_key
from helpers.targets import encode_label_set
from helpers.tasks import MultiLabel
from helpers.thresholds import run_thresholds

CPU = torch.device("cpu")


def multilabel_submission_frame(sample, id_col, ids, probabilities, sets, classes, label_sep):
    """05's submission of a multilabel run whose decisions are `sets`."""
    return fill_submission(MultiLabel(), sample, id_col, ids, probabilities, sets, classes, label_sep)


CLASSES = ["cat", "dog", "fox"]
VIEWS = ["identity", "hflip"]


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def label_sets(n: int) -> list[list[int]]:
    """Row i holds class i % 3, and the next class too on odd rows: every class with and without others."""
    return [sorted({i % 3} | ({(i + 1) % 3} if i % 2 else set())) for i in range(n)]


@pytest.fixture
def prepared(outputs, csv_dataset) -> tuple[Config, DataInfo, RunFolder]:
    """The 3 x 6 tiny CSV set in 3 folds, relabelled with label sets (written "|"-separated), as a
    multilabel run."""
    cfg = tiny_config(csv_dataset, task="multilabel", label_sep="|", tta_views=VIEWS)
    info = prepare_dataset(cfg.replace(task="multiclass"))
    sets = label_sets(len(info.table))
    table = info.table.assign(
        label=["|".join(CLASSES[c] for c in s) for s in sets], label_idx=[encode_label_set(s) for s in sets]
    )
    run = RunFolder.of(cfg).create()
    run.write_config(cfg)
    return cfg, dataclasses.replace(info, table=table, task="multilabel"), run


def random_model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = timm.create_model("test_resnet", num_classes=len(CLASSES)).eval()
    with torch.no_grad():
        model.get_classifier().weight.mul_(5.0)
    return model


@pytest.fixture
def evaluated(prepared) -> tuple[Config, DataInfo, RunFolder, OofEvaluation]:
    cfg, info, run = prepared
    checkpoints = {
        k: save_checkpoint(run.checkpoint(k, "best_score"), random_model(k), cfg.to_dict(), CLASSES, {})
        for k in (0, 2)
    }
    return cfg, info, run, evaluate_oof(cfg, run, info, checkpoints, CPU)


# --- 04 ---------------------------------------------------------------------------------------------------


def test_oof_scores_equal_sklearn_and_are_written_under_flat_keys(evaluated):
    _, _, run, oof = evaluated
    evaluation = run.read_evaluation()
    assert evaluation["task"] == "multilabel" and list(evaluation)[: len(EVALUATION_KEYS)] == list(
        EVALUATION_KEYS
    )
    targets = np.array([[c in s for c in range(3)] for s in label_sets(18)], dtype=int)
    rows = oof.rows["label_idx"].map(lambda v: [int(i) for i in v.split()])
    np.testing.assert_array_equal(oof.labels, [[int(c in s) for c in range(3)] for s in rows])
    assert targets.sum() > 0
    plain = oof.prediction.view("identity")
    np.testing.assert_allclose(oof.tta, (plain + oof.prediction.view("hflip")) / 2)
    assert evaluation["val_map"] == pytest.approx(average_precision_score(oof.labels, plain))
    assert evaluation["val_map_tta"] == pytest.approx(average_precision_score(oof.labels, oof.tta))
    at_half = predict_sets(oof.tta, 0.5, allow_empty=False)  # no empty sets in the data: none predicted
    assert evaluation["val_f1_micro_tta"] == pytest.approx(f1_score(oof.labels, at_half, average="micro"))
    tuned = predict_sets(oof.tta, oof.thresholds.class_array(), allow_empty=False)
    assert evaluation["val_f1_macro_tuned_tta"] == pytest.approx(f1_score(oof.labels, tuned, average="macro"))
    for metric in multilabel_summary(oof.labels, oof.tta):
        assert metric_key(metric, tta=False) in evaluation and metric_key(metric, tta=True) in evaluation
    assert oof.summary.loc["map", "TTA identity+hflip"] == evaluation["val_map_tta"]


def test_oof_csv_holds_the_written_sets_and_the_predicted_ones(evaluated):
    _, _, run, oof = evaluated
    written = run.read_oof()
    assert list(written.columns) == ["id", "fold", "label", "predicted", *(f"prob_{c}" for c in CLASSES)]
    assert list(written["label"]) == list(oof.rows["label"])
    names = np.asarray(CLASSES)
    expected = ["|".join(names[np.flatnonzero(r)]) for r in oof.predicted]
    assert list(written["predicted"].fillna("")) == expected
    np.testing.assert_allclose(written[[f"prob_{c}" for c in CLASSES]].to_numpy(), oof.tta, rtol=1e-6)


def test_thresholds_are_saved_with_the_run(evaluated):
    cfg, _, run, oof = evaluated
    saved = json.loads(run.thresholds.read_text())
    assert saved["classes"] == CLASSES and saved["default"] == 0.5 and saved["used"] == "per_class"
    assert saved["checkpoint"] == "best_score" and saved["tta_views"] == VIEWS
    assert "optimistic" in saved["note"]
    assert list(oof.threshold_table().index) == ["0.5", f"global {saved['global_threshold']:g}", "per class"]
    table = oof.per_class()
    assert list(table.columns) == ["support", "ap", "roc_auc", "f1", "threshold"]
    np.testing.assert_array_equal(table["threshold"], [saved["per_class"][c] for c in CLASSES])


def test_tta_table_scores_each_view_on_map(evaluated):
    _, _, _, oof = evaluated
    table = oof.tta_table()
    assert list(table["views"]) == [*oof.prediction.views, "identity + hflip (mean)"]
    assert table["map"].iloc[1] == pytest.approx(
        average_precision_score(oof.labels, oof.prediction.view("hflip"))
    )


def test_04_figures_for_label_sets(evaluated):
    cfg, info, run, oof = evaluated
    fig, name = show_class_errors(oof)
    assert name == "pr_curves" and fig.axes[0].get_legend() is not None
    grid = show_predicted_batch(oof, n=6)
    colours = {to_hex(t.get_color()) for ax in grid.axes for t in ax.texts}
    assert colours <= {to_hex(RIGHT), to_hex(WRONG), to_hex(MISSED)}
    worst = show_highest_loss(oof, n=4)
    assert sum(t.get_text().startswith("loss ") for ax in worst.axes for t in ax.texts) == 4
    assert not oof.mistakes().empty


def test_grad_cam_maps_each_predicted_label(evaluated):
    cfg, info, run, oof = evaluated
    checkpoints = {0: run.checkpoint(0, "best_score")}
    fig = show_grad_cam(cfg, info, checkpoints, n=6, thresholds=oof.thresholds)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert len(titles) == 6
    assert all(" → " in t and t.split(" → ")[1].split(" (")[0] in CLASSES for t in titles)
    colours = {to_hex(ax.title.get_color()) for ax in fig.axes if ax.get_title()}
    assert colours <= {to_hex("tab:green"), to_hex("tab:red")}


def test_label_set_lines_mark_wrong_and_missed_differently():
    lines = label_set_lines(np.array([1, 1, 0]), CLASSES, np.array([1, 0, 1]))
    assert lines == [("cat", RIGHT), ("✗ wrong: dog", WRONG), ("○ missed: fox", MISSED)]
    assert label_set_lines(np.array([0, 0, 0]), CLASSES, np.array([0, 0, 0])) == [("(none)", RIGHT)]
    assert label_set_lines(np.array([0, 1, 1]), CLASSES) == [("pred: dog fox", "black")]


# --- 05 ---------------------------------------------------------------------------------------------------


def test_05_reloads_the_thresholds_and_reproduces_04s_sets(evaluated):
    """The validation rows of fold 0 predicted by 05 with the thresholds it reads back give the sets 04
    wrote for them in oof.csv."""
    cfg, info, run, oof = evaluated
    members = ensemble_members(cfg.replace(folds=[0]), run)
    members[0].checkpoints = [run.checkpoint(0, "best_score")]
    rows = info.table[info.table["fold"] == 0].reset_index(drop=True)
    predicted = predict_test(members, rows, VIEWS, CPU)
    np.testing.assert_array_equal(predicted.thresholds.class_array(), oof.thresholds.class_array())
    sample = pd.DataFrame({"id": rows["id"], "labels": "cat|dog"})
    submission = write_test_predictions(run, cfg, sample, predicted)
    written = run.read_oof().set_index("id")["predicted"].fillna("")
    assert list(submission["labels"]) == list(written.loc[rows["id"]])


def test_05_refuses_thresholds_tuned_for_other_probabilities(evaluated):
    cfg, _, run, _ = evaluated
    with pytest.raises(ValueError, match="tuned on checkpoint='best_score'"):
        run_thresholds(run, cfg.replace(tta_views=["identity"]), CLASSES)
    with pytest.raises(ValueError, match="classes"):
        run_thresholds(run, cfg, ["a", "b", "c"])
    run.thresholds.unlink()
    with pytest.raises(FileNotFoundError, match="04_evaluate"):
        run_thresholds(run, cfg, CLASSES)


IDS = ["b", "a", "c"]
PROBS = np.array([[0.9, 0.8, 0.1], [0.2, 0.1, 0.3], [0.6, 0.2, 0.9]])
SETS = (PROBS >= 0.5).astype(int)


@pytest.mark.parametrize(
    ("values", "sep"),
    [(["cat dog", "fox"], " "), (["cat|fox", "dog"], "|"), (["cat;dog", ""], ";"), (["x,y", "z"], ","),
     (["cat", "dog"], "|"), ([np.nan, ""], "|")],
)  # fmt: skip
def test_the_submission_takes_the_samples_separator(values, sep):
    sample = pd.DataFrame({"image": ["a", "c"], "tags": values})
    assert label_separator(sample["tags"], CLASSES, "|") == sep
    out = multilabel_submission_frame(sample, "image", IDS, PROBS, SETS, CLASSES, "|")
    assert list(out.columns) == ["image", "tags"]
    assert list(out["tags"]) == ["", sep.join(["cat", "fox"])]


def test_the_submission_fills_probability_columns_in_the_samples_order():
    sample = pd.DataFrame({"id": ["c", "b"], "fox": 0.0, "cat": 0.0, "dog": 0.0})
    out = multilabel_submission_frame(sample, "id", IDS, PROBS, SETS, CLASSES, " ")
    assert list(out.columns) == ["id", "fox", "cat", "dog"]
    np.testing.assert_allclose(out[["cat", "dog", "fox"]].to_numpy(), PROBS[[2, 0]])


def test_the_default_submission_holds_the_set_and_the_probabilities():
    sample = pd.DataFrame({"id": IDS, "label": "", **{c: np.nan for c in CLASSES}})
    out = multilabel_submission_frame(sample, "id", IDS, PROBS, SETS, CLASSES, ";")
    assert list(out["label"]) == ["cat;dog", "", "cat;fox"]
    np.testing.assert_allclose(out[CLASSES].to_numpy(), PROBS)
    with pytest.raises(ValueError, match="no prediction"):
        multilabel_submission_frame(sample.assign(id=["z", "a", "c"]), "id", IDS, PROBS, SETS, CLASSES, ";")
    with pytest.raises(ValueError, match="cannot fill"):
        multilabel_submission_frame(sample[["id", "cat"]].assign(x=1), "id", IDS, PROBS, SETS, CLASSES, ";")


def test_test_labels_are_multi_hot_label_sets(tmp_path):
    cfg = tiny_config(tmp_path, task="multilabel", label_sep=" ")
    pd.DataFrame({"id": ["1", "2", "3"], "label": ["dog fox", "", "cat"]}).to_csv(
        tmp_path / "test_labels.csv", index=False
    )
    test = pd.DataFrame({"id": ["3", "1", "2"]})
    np.testing.assert_array_equal(
        holdout.test_labels(cfg, tmp_path, test, CLASSES), [[1, 0, 0], [0, 1, 1], [0, 0, 0]]
    )
    pd.DataFrame({"id": ["1", "2", "3"], "label": ["dog|fox", "", "cat"]}).to_csv(
        tmp_path / "test_labels.csv", index=False
    )
    with pytest.raises(Exception, match="label_sep"):
        holdout.test_labels(cfg, tmp_path, test, CLASSES)


def test_score_test_set_is_the_multilabel_summary_at_the_thresholds(evaluated):
    _, _, _, oof = evaluated
    table = score_test_set(oof.task, oof.labels, oof.tta, oof.thresholds)
    expected = multilabel_summary(oof.labels, oof.tta, oof.thresholds.class_array(), allow_empty=False)
    assert table["test"].to_dict() == pytest.approx(expected)


def test_an_ensemble_of_two_tasks_is_refused(evaluated, csv_dataset):
    cfg, _, run, _ = evaluated
    other_cfg = tiny_config(csv_dataset, run_name="single")
    other = RunFolder.of(other_cfg).create()
    other.write_config(other_cfg)
    save_checkpoint(other.checkpoint(0, "best_score"), random_model(5), other_cfg.to_dict(), CLASSES, {})
    with pytest.raises(ValueError, match="mixes tasks"):
        ensemble_members(cfg.replace(ensemble_runs=["single"]), run)


def test_multilabel_label_issues_rank_corrupted_sets_first():
    """Sets with a label dropped or added, against probabilities that know the real sets: cleanlab's
    multi-label scores put them first and flag them."""
    rng = np.random.default_rng(0)
    truth = (rng.random((300, 4)) < 0.35).astype(int)
    truth[truth.sum(1) == 0, 0] = 1
    probabilities = np.clip(np.where(truth == 1, 0.9, 0.08) + rng.normal(0, 0.04, truth.shape), 0.01, 0.99)
    given = truth.copy()
    corrupted = np.arange(0, 300, 30)  # 10 rows: a real label dropped or a wrong one added
    for row in corrupted:
        column = int(rng.integers(4))
        given[row, column] = 1 - given[row, column]
    ids = [f"r{i}" for i in range(300)]
    ranked = rank_label_issues(MultiLabel(), ids, given, probabilities, truth, list("abcd"), " ")
    assert list(ranked.columns) == ["id", "given", "suggested", "score", "issue"]
    worst = set(ranked["id"].head(len(corrupted)))
    assert len(worst & {ids[i] for i in corrupted}) >= 9
    assert len(set(ranked.loc[ranked["issue"], "id"]) & {ids[i] for i in corrupted}) >= 8
    first = ranked.set_index("id").loc[ids[corrupted[0]]]
    assert first["suggested"] == " ".join(np.asarray(list("abcd"))[np.flatnonzero(truth[corrupted[0]])])


def test_a_config_still_auto_takes_the_prepared_task(prepared):
    """A library call before any config.json: the task prepare_dataset resolved; a contradiction stops."""
    cfg, info, run = prepared
    checkpoints = {
        0: save_checkpoint(run.checkpoint(0, "best_score"), random_model(0), cfg.to_dict(), CLASSES, {})
    }
    oof = evaluate_oof(cfg.replace(task="auto"), run, info, checkpoints, CPU)
    assert oof.task.name == "multilabel" and oof.labels.shape == (len(oof.rows), 3)
    with pytest.raises(ValueError, match="but the prepared data is multilabel"):
        evaluate_oof(cfg.replace(task="multiclass"), run, info, checkpoints, CPU)
