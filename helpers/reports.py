"""What 04 and 05 compute, write and show: one call per notebook step, so the notebooks hold parameters,
calls and display only.

04: `evaluate_oof` predicts every view of every out-of-fold image once, scores them without and with the
run's TTA views, writes oof.csv and evaluation.json and returns an `OofEvaluation` for the tables and
figures; `show_highest_loss` and `show_grad_cam` assemble two of its figures. 05: `predict_test` runs the
ensemble over the test images and `write_test_predictions` writes submission.csv and test_probabilities.csv.
The metrics themselves are helpers.evaluate's, on plain arrays.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure

from helpers.augment import InputPrep
from helpers.checkpoints import load_model
from helpers.config import Config
from helpers.dataset import DataInfo
from helpers.evaluate import (
    explain_batch,
    highest_loss_indices,
    oof_frame,
    per_class_table,
    sample_losses,
    summary_metrics,
)
from helpers.inference import (
    Member,
    Prediction,
    predict_ensemble,
    predict_folds,
    probabilities_frame,
    submission_frame,
)
from helpers.loaders import build_loader
from helpers.plots import show_cam, show_predictions
from helpers.run_folder import RunFolder, metric_key
from helpers.tta import VIEWS, check_views

# --- 04: out-of-fold evaluation ----------------------------------------------------------------------------


@dataclass
class OofEvaluation:
    """04's out-of-fold predictions: the validation rows in prediction order, their class indices, every
    view's probabilities, the TTA probabilities (mean of the run's views) and the summary table."""

    rows: pd.DataFrame
    classes: list[str]
    labels: np.ndarray
    prediction: Prediction
    views: list[str]
    tta: np.ndarray
    summary: pd.DataFrame  # one row per metric; columns "no TTA" and "TTA <views>"

    @property
    def predicted(self) -> np.ndarray:
        """The predicted class index of each row, with TTA."""
        return self.tta.argmax(1)

    def per_class(self) -> pd.DataFrame:
        """Precision, recall, F1 and support with TTA, indexed by class name (shown once); recall first and
        the lowest first when the classes are imbalanced (helpers.evaluate.per_class_table)."""
        return per_class_table(self.labels, self.tta, self.classes).set_index("class")


def evaluation_record(
    checkpoint: str,
    views: Sequence[str],
    folds: Sequence[int],
    images: int,
    plain: dict[str, float],
    tta: dict[str, float],
) -> dict:
    """evaluation.json's flat record, as helpers.run_folder documents it: what was evaluated, then each
    metric without TTA (val_<metric>) and with it (val_<metric>_tta)."""
    record: dict = {
        "checkpoint": checkpoint,
        "tta_views": list(views),
        "folds": list(folds),
        "images": images,
    }
    for metric in plain:
        record[metric_key(metric, tta=False)] = plain[metric]
        record[metric_key(metric, tta=True)] = tta[metric]
    return record


def evaluate_oof(
    cfg: Config,
    run: RunFolder,
    info: DataInfo,
    checkpoints: dict[int, Path],
    device: torch.device | None = None,
) -> OofEvaluation:
    """Predict every TTA view of each trained fold's validation images once, score them without TTA (the
    identity view, what 03 scored) and with the run's views, and write oof.csv and evaluation.json."""
    views = check_views(cfg.tta_views)
    rows, prediction = predict_folds(cfg, info.table, checkpoints, list(VIEWS), device)
    labels = rows["label_idx"].to_numpy()
    tta = prediction.mean_of(views)
    plain, with_tta = summary_metrics(labels, prediction.view("identity")), summary_metrics(labels, tta)
    run.write_oof(oof_frame(rows["id"], rows["fold"], labels, tta, info.classes))
    run.write_evaluation(
        evaluation_record(cfg.checkpoint, views, list(checkpoints), len(rows), plain, with_tta)
    )
    summary = pd.DataFrame({"no TTA": plain, f"TTA {'+'.join(views)}": with_tta})
    return OofEvaluation(rows, list(info.classes), labels, prediction, views, tta, summary)


def show_highest_loss(oof: OofEvaluation, n: int = 16) -> Figure:
    """The n images the model got most wrong (highest loss with TTA), highest first, with their loss."""
    worst = highest_loss_indices(oof.labels, oof.tta, n)
    labels, probabilities = oof.labels[worst], oof.tta[worst]
    losses = [f"loss {v:.2f}" for v in sample_losses(labels, probabilities)]
    return show_predictions(oof.rows.iloc[worst], probabilities, oof.classes, labels, losses, n)


def show_grad_cam(cfg: Config, info: DataInfo, checkpoints: dict[int, Path], n: int = 16) -> Figure:
    """Grad-CAM maps of the predicted class for the first n validation images of the first trained fold,
    titled 'true → predicted' (on the CPU: a single batch needs no accelerator)."""
    fold, path = next(iter(checkpoints.items()))
    model, _ = load_model(path)
    rows = info.table[info.table["fold"] == fold].head(n)
    x, _, _ = next(iter(build_loader(cfg, rows, False, fold, torch.device("cpu"))))
    images, cams, predicted = explain_batch(model, x, InputPrep.for_backbone(cfg.backbone))
    names = np.asarray(info.classes)
    titles = [f"{t} → {p}" for t, p in zip(rows["label"], names[predicted], strict=True)]
    return show_cam(images, cams, titles)


# --- 05: the test set --------------------------------------------------------------------------------------


@dataclass
class EnsemblePrediction:
    """05's ensemble prediction of the test images (rows in test order) and how long it took."""

    rows: pd.DataFrame
    classes: list[str]
    prediction: Prediction
    models: int
    seconds: float

    @property
    def probabilities(self) -> np.ndarray:
        """Averaged over models and views."""
        return self.prediction.probabilities

    def throughput(self) -> str:
        """Images per second, counting each model x view and counting test images."""
        n = len(self.rows)
        passes = n * self.models * len(self.prediction.views)
        return (
            f"{passes / self.seconds:.0f} images/s counting each model x view "
            f"({n / self.seconds:.0f} test images/s)"
        )


def predict_test(
    members: Sequence[Member],
    test: pd.DataFrame,
    views: Sequence[str],
    device: torch.device | None = None,
) -> EnsemblePrediction:
    """The ensemble's probabilities for the test table's images (`path`, and `height`/`width` for the cache)."""
    started = time.perf_counter()
    prediction = predict_ensemble(members, test, views, device)
    models = sum(len(m.checkpoints) for m in members)
    return EnsemblePrediction(test, members[0].classes, prediction, models, time.perf_counter() - started)


def write_test_predictions(
    run: RunFolder,
    cfg: Config,
    sample: pd.DataFrame,
    predicted: EnsemblePrediction,
    probabilities: np.ndarray | None = None,
) -> pd.DataFrame:
    """Write submission.csv (the sample submission filled in) and test_probabilities.csv (what the
    leaderboard scores) from the ensemble's probabilities, or from others of the same images (calibrated
    ones); returns the submission."""
    ids = predicted.rows["id"]
    probabilities = predicted.probabilities if probabilities is None else probabilities
    submission = submission_frame(sample, cfg.id_col, ids, probabilities, predicted.classes)
    run.write_submission(submission)
    run.write_test_probabilities(probabilities_frame(ids, probabilities, predicted.classes))
    return submission


def score_test_set(labels: np.ndarray, probabilities: np.ndarray) -> pd.DataFrame:
    """The summary metrics on the test set, as a one-column table."""
    return pd.Series(summary_metrics(labels, probabilities)).to_frame("test")
