"""04's and 05's one-call steps: the OOF evaluation writes what run_folder documents and scores like
scikit-learn, 04's no-TTA accuracy is 03's, the worst images come highest loss first, prediction grids
say what they know, and 05 writes its two files."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import timm
import torch
from conftest import write_image
from matplotlib.colors import to_hex
from sklearn.metrics import accuracy_score
from train_fixtures import tiny_config

from helpers.checkpoints import load_checkpoint, save_checkpoint
from helpers.config import Config
from helpers.dataset import prepare_dataset
from helpers.inference import Member, Prediction, predict_ensemble
from helpers.plots import prediction_titles
from helpers.reports import (
    OofEvaluation,
    evaluate_oof,
    oof_frame,
    predict_test,
    score_test_set,
    show_grad_cam,
    show_highest_loss,
    show_prediction_grid,
    write_test_predictions,
)
from helpers.run_folder import EVALUATION_KEYS, RunFolder, metric_key
from helpers.singlelabel_metrics import summary_metrics
from helpers.tasks import SingleLabel
from helpers.train import train_fold

CPU = torch.device("cpu")
TASK = SingleLabel()
CLASSES = ["cat", "dog", "fox"]


def random_model(seed: int, scale: float = 5.0) -> torch.nn.Module:
    """A fresh test_resnet with a sharpened head, so its predictions differ from image to image."""
    torch.manual_seed(seed)
    model = timm.create_model("test_resnet", num_classes=len(CLASSES)).eval()
    with torch.no_grad():
        model.get_classifier().weight.mul_(scale)
    return model


def save_model(path: Path, model: torch.nn.Module, cfg: Config) -> Path:
    return save_checkpoint(path, model, cfg.to_dict(), CLASSES, {"val_acc": 0.0})


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


@pytest.fixture
def prepared(outputs, csv_dataset):
    """(cfg with two TTA views, info, run) for the 3 x 6 tiny CSV set in 3 folds."""
    cfg = tiny_config(csv_dataset, tta_views=["identity", "hflip"])
    return cfg, prepare_dataset(cfg), RunFolder.of(cfg).create()


@pytest.fixture
def evaluated(prepared) -> tuple[Config, RunFolder, OofEvaluation]:
    """04's evaluation of folds 0 and 2 (fold 1 untrained) with random models."""
    cfg, info, run = prepared
    checkpoints = {k: save_model(run.checkpoint(k, "best_score"), random_model(k), cfg) for k in (0, 2)}
    return cfg, run, evaluate_oof(cfg, run, info, checkpoints, CPU)


def titles_of(fig) -> list[tuple[str, str]]:
    """Each shown image's title, or its lines below it joined, and the first one's colour, in grid order."""
    shown = []
    for ax in fig.axes:
        if ax.get_title():
            shown.append((ax.get_title(), to_hex(ax.title.get_color())))
        elif ax.texts:
            shown.append(("\n".join(t.get_text() for t in ax.texts), to_hex(ax.texts[0].get_color())))
    return shown


def show_predictions(rows, probabilities, classes, labels=None, extra=(), n=32):
    """04's and 05's prediction grid for a single-label run."""
    decided = TASK.decide(probabilities, None)
    return show_prediction_grid(TASK, rows, decided, probabilities, classes, labels, extra, n)


# --- 04: the OOF evaluation ---------------------------------------------------------------------------------


def test_per_class_table_shows_the_class_once(evaluated):
    """04's per-class table: the class names as its index, not also as a column."""
    _, _, oof = evaluated
    table = oof.per_class()
    assert list(table.index) == oof.classes and table.index.name == "class"
    assert list(table.columns) == ["precision", "recall", "f1", "support"]


def test_evaluate_oof_writes_exactly_the_documented_evaluation_keys(evaluated):
    cfg, run, oof = evaluated
    evaluation = run.read_evaluation()
    metrics = summary_metrics(oof.labels, oof.tta)
    documented = [*EVALUATION_KEYS, *(metric_key(m, tta) for m in metrics for tta in (False, True))]
    assert list(evaluation) == documented
    assert {"val_acc", "val_acc_tta", "val_top2_accuracy", "val_macro_f1_tta", "val_log_loss"} <= set(
        evaluation
    )
    assert evaluation["checkpoint"] == "best_score"
    assert evaluation["tta_views"] == ["identity", "hflip"]
    assert evaluation["folds"] == [0, 2]
    assert evaluation["images"] == len(oof.rows) == 12


def test_evaluate_oof_scores_equal_sklearn_on_the_same_arrays(evaluated):
    _, run, oof = evaluated
    evaluation = run.read_evaluation()
    plain = oof.prediction.view("identity")
    np.testing.assert_allclose(oof.tta, (plain + oof.prediction.view("hflip")) / 2)
    assert evaluation["val_acc"] == pytest.approx(accuracy_score(oof.labels, plain.argmax(1)))
    assert evaluation["val_acc_tta"] == pytest.approx(accuracy_score(oof.labels, oof.tta.argmax(1)))
    np.testing.assert_array_equal(oof.labels, oof.rows["label_idx"])
    assert list(oof.summary.columns) == ["no TTA", "TTA identity+hflip"]
    assert oof.summary.loc["accuracy", "no TTA"] == evaluation["val_acc"]
    assert oof.summary.loc["log_loss", "TTA identity+hflip"] == evaluation["val_log_loss_tta"]


def test_evaluate_oof_predicts_every_view_and_writes_the_tta_oof(evaluated):
    _, run, oof = evaluated
    assert oof.prediction.views == ["identity", "hflip", "vflip", "hvflip", "transpose", "rot90"]
    assert oof.views == ["identity", "hflip"]
    written = run.read_oof()
    given, predicted = (TASK.label_texts(v, CLASSES, " ") for v in (oof.labels, oof.tta.argmax(1)))
    expected = oof_frame(oof.rows["id"], oof.rows["fold"], given, predicted, oof.tta, CLASSES)
    pd.testing.assert_frame_equal(written, expected, check_dtype=False)
    np.testing.assert_array_equal(oof.predicted, oof.tta.argmax(1))


def test_per_class_shows_the_class_once(evaluated):
    _, _, oof = evaluated
    table = oof.per_class()
    assert list(table.index) == CLASSES and table.index.name == "class"
    assert list(table.columns) == ["precision", "recall", "f1", "support"]


def test_no_tta_accuracy_is_the_best_epoch_accuracy_of_training(prepared):
    """04's val_acc without TTA scores the best_score checkpoint on its validation fold, as 03 did."""
    cfg, info, run = prepared
    cfg = cfg.replace(epochs=2, monitor="val_acc")
    history = train_fold(cfg, info, 0, run, CPU)
    checkpoint = run.checkpoint(0, "best_score")
    evaluate_oof(cfg, run, info, {0: checkpoint}, CPU)
    best = load_checkpoint(checkpoint)["metrics"]
    # 03 averages in float32; one image more or less right would move the accuracy by 1/6
    assert run.read_evaluation()["val_acc"] == pytest.approx(best["val_acc"], abs=1e-6)
    assert best["val_acc"] == pytest.approx(history["val_acc"].max(), abs=1e-6)


# --- 04: the worst images and Grad-CAM ------------------------------------------------------------------


def image_rows(tmp_path: Path, n: int) -> pd.DataFrame:
    """n flat grey PNGs, image i filled with 10 * i, so a figure's image tells which row it shows."""
    paths = [write_image(tmp_path / f"{i}.png", np.full((16, 16, 3), 10 * i, np.uint8)) for i in range(n)]
    return pd.DataFrame({"path": [str(p) for p in paths]})


def shown_rows(fig) -> list[int]:
    """Which image_rows row each axis of the figure shows."""
    return [int(ax.images[0].get_array()[0, 0, 0]) // 10 for ax in fig.axes if ax.images]


def test_show_highest_loss_shows_the_highest_losses_in_order(tmp_path):
    labels = np.array([0, 1, 2, 0, 1])
    tta = np.array(
        [
            [0.9, 0.05, 0.05],  # loss 0.11
            [0.7, 0.2, 0.1],  # loss 1.61
            [0.3, 0.2, 0.5],  # loss 0.69
            [0.05, 0.9, 0.05],  # loss 3.00
            [0.2, 0.6, 0.2],  # loss 0.51
        ]
    )
    oof = OofEvaluation(
        image_rows(tmp_path, 5), CLASSES, labels, Prediction(tta[None], ["identity"], np.arange(5)),
        ["identity"], tta, pd.DataFrame(), TASK,
    )  # fmt: skip
    fig = show_highest_loss(oof, n=3)
    assert [t for t, _ in titles_of(fig)] == [
        "cat → dog\nloss 3.00",
        "dog → cat\nloss 1.61",
        "fox → fox\nloss 0.69",
    ]
    assert shown_rows(fig) == [3, 1, 2]


def test_show_grad_cam_titles_the_first_validation_images(prepared):
    cfg, info, run = prepared
    checkpoints = {1: save_model(run.checkpoint(1, "best_score"), random_model(1), cfg)}
    fig = show_grad_cam(cfg, info, checkpoints, n=4)
    titles = [t for t, _ in titles_of(fig)]
    val = info.table[info.table["fold"] == 1].head(4)
    assert len(titles) == len(val) == 4
    assert [t.split(" → ")[0] for t in titles] == list(val["label"])
    assert all(t.split(" → ")[1] in CLASSES for t in titles)


# --- the prediction grid of 04 and 05 -------------------------------------------------------------------

PROBS = np.array([[0.93, 0.05, 0.02], [0.1, 0.3, 0.6], [0.2, 0.7, 0.1]])


def test_prediction_titles_without_labels_are_predictions_in_a_neutral_colour():
    titles, colors = prediction_titles(PROBS, ["7", "8", "9"])
    assert titles == ["pred: 7 (0.93)", "pred: 9 (0.60)", "pred: 8 (0.70)"]
    assert colors == ["black"] * 3


def test_prediction_titles_with_labels_say_true_and_predicted_wrong_in_red():
    titles, colors = prediction_titles(PROBS, CLASSES, np.array([0, 1, 1]))
    assert titles == ["cat → cat", "dog → fox", "dog → dog"]
    assert colors == ["tab:green", "tab:red", "tab:green"]


def test_show_predictions_draws_the_first_n_rows_with_their_titles(tmp_path):
    rows = image_rows(tmp_path, 3)
    fig = show_predictions(rows, PROBS, CLASSES, n=2)
    assert titles_of(fig) == [("pred: cat (0.93)", "#000000"), ("pred: fox (0.60)", "#000000")]
    assert shown_rows(fig) == [0, 1]
    labelled = titles_of(show_predictions(rows, PROBS, CLASSES, np.array([0, 1, 1]), ["a", "b", "c"]))
    red, green = to_hex("tab:red"), to_hex("tab:green")
    assert labelled == [("cat → cat\na", green), ("dog → fox\nb", red), ("dog → dog\nc", green)]


# --- 05: predicting the test set and writing its files -----------------------------------------------------


def test_predict_test_and_write_test_predictions(prepared):
    cfg, info, run = prepared
    paths = [save_model(run.checkpoint(k, "best_score"), random_model(k), cfg) for k in (0, 1)]
    members = [Member(run, cfg, paths, CLASSES)]
    test = info.table[["id", "path", "height", "width"]].head(5)
    predicted = predict_test(members, test, ["identity", "hflip"], CPU)
    expected = predict_ensemble(members, test, ["identity", "hflip"], CPU)
    np.testing.assert_allclose(predicted.probabilities, expected.probabilities, atol=1e-6)
    assert predicted.models == 2 and predicted.classes == CLASSES
    assert "images/s counting each model x view" in predicted.throughput()

    sample = pd.DataFrame({"id": list(test["id"])[::-1], "label": ""})
    submission = write_test_predictions(run, cfg, sample, predicted)
    by_id = dict(zip(test["id"], np.asarray(CLASSES)[predicted.probabilities.argmax(1)], strict=True))
    assert list(submission["id"]) == list(sample["id"])
    assert list(submission["label"]) == [by_id[i] for i in sample["id"]]
    pd.testing.assert_frame_equal(pd.read_csv(run.submission, dtype=str), submission.astype(str))
    written = run.read_test_probabilities()
    assert list(written.index) == list(test["id"]) and list(written.columns) == CLASSES
    np.testing.assert_allclose(written.to_numpy(), predicted.probabilities)


def test_score_test_set_is_the_summary_metrics():
    labels = np.array([0, 2, 1])
    table = score_test_set(TASK, labels, PROBS)
    assert list(table.columns) == ["test"]
    assert table["test"].to_dict() == summary_metrics(labels, PROBS)


def test_04_shows_recall_first_when_the_classes_are_imbalanced(outputs, make_csv_dataset):
    """9, 9 and 3 images: the summary adds the rare class's recall, the per-class table leads with recall."""
    data = make_csv_dataset(per_class=9)
    table = pd.read_csv(data / "train.csv")
    table.drop(table.index[table["label"] == "fox"][3:]).to_csv(data / "train.csv", index=False)
    cfg = tiny_config(data)
    info, run = prepare_dataset(cfg), RunFolder.of(cfg).create()
    checkpoints = {k: save_model(run.checkpoint(k, "best_score"), random_model(k), cfg) for k in (0, 1, 2)}
    oof = evaluate_oof(cfg, run, info, checkpoints, CPU)
    fox = oof.labels == CLASSES.index("fox")
    fox_recall = float((oof.predicted[fox] == oof.labels[fox]).mean())
    assert oof.summary.loc["rare_class_recall"].iloc[-1] == pytest.approx(fox_recall)
    assert run.read_evaluation()["val_rare_class_recall_tta"] == pytest.approx(fox_recall)
    per_class = oof.per_class()
    assert list(per_class.columns)[0] == "recall" and per_class["recall"].is_monotonic_increasing
    assert per_class["rare"].to_dict() == {"cat": False, "dog": False, "fox": True}
