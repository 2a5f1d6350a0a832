"""What 04 and 05 compute, write and show: one call per notebook step, so the notebooks hold parameters,
calls and display only.

04: `evaluate_oof` predicts every view of every out-of-fold image once, scores them without and with the
run's TTA views, writes oof.csv and evaluation.json (and, for a multilabel run, the thresholds it tunes to
thresholds.json) and returns an `OofEvaluation` for the tables and figures; the `show_*` functions
assemble its figures. 05: `predict_test` runs the ensemble over the test images and
`write_test_predictions` writes submission.csv and test_probabilities.csv. Both serve either task, read
from the run's config (helpers.targets.task_of); the metrics themselves are helpers.evaluate's and
helpers.multilabel_metrics', on plain arrays.
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
    explain_labels,
    highest_loss_indices,
    label_mistakes,
    most_confused,
    multilabel_oof_frame,
    multilabel_tta_table,
    normalised_confusion,
    oof_frame,
    per_class_table,
    sample_losses,
    summary_metrics,
    tta_table,
)
from helpers.images import read_image
from helpers.inference import (
    Member,
    Prediction,
    multilabel_submission_frame,
    predict_ensemble,
    predict_folds,
    probabilities_frame,
    submission_frame,
)
from helpers.label_issues import rank_label_issues, rank_multilabel_issues
from helpers.loaders import build_loader
from helpers.multilabel_metrics import (
    OPTIMISTIC,
    multilabel_per_class,
    multilabel_summary,
    predict_sets,
    sample_bce,
    threshold_scores,
    threshold_table,
    worst_classes,
)
from helpers.plots import (
    label_set_lines,
    show_cam,
    show_confusion,
    show_pr_curves,
    show_predictions,
    show_set_grid,
)
from helpers.run_folder import RunFolder, metric_key
from helpers.targets import Task, target_array, task_of, to_probabilities
from helpers.thresholds import TunedThresholds, run_thresholds, save_thresholds, tune_thresholds
from helpers.tta import VIEWS, check_views

PR_CURVES = 6  # the worst classes whose precision-recall curves 04 shows

# --- 04: out-of-fold evaluation ----------------------------------------------------------------------------


@dataclass
class OofEvaluation:
    """04's out-of-fold predictions: the validation rows in prediction order, their targets (class indices,
    or multi-hot rows for a multilabel run), every view's probabilities, the TTA probabilities (mean of the
    run's views), the summary table, and a multilabel run's tuned thresholds."""

    rows: pd.DataFrame
    classes: list[str]
    labels: np.ndarray
    prediction: Prediction
    views: list[str]
    tta: np.ndarray
    summary: pd.DataFrame  # one row per metric; columns "no TTA" and "TTA <views>"
    task: Task
    thresholds: TunedThresholds | None = None  # multilabel only

    @property
    def predicted(self) -> np.ndarray:
        """With TTA: each row's class index (multiclass), or its 0/1 set at the tuned per-class
        thresholds (multilabel)."""
        if self.task == "multiclass":
            return self.tta.argmax(1)
        return predict_sets(self.tta, self.tuned_thresholds().class_array())

    def tuned_thresholds(self) -> TunedThresholds:
        """A multilabel run's thresholds; an error for a multiclass run, which has none."""
        if self.thresholds is None:
            raise ValueError("no thresholds: a multiclass run predicts its most probable class")
        return self.thresholds

    def per_class(self) -> pd.DataFrame:
        """With TTA, indexed by class name: precision, recall, F1 and support (multiclass; recall first and
        the lowest first when the classes are imbalanced, helpers.evaluate.per_class_table); support, AP,
        ROC AUC, F1 and the tuned threshold (multilabel)."""
        if self.task == "multiclass":
            return per_class_table(self.labels, self.tta, self.classes).set_index("class")
        table = multilabel_per_class(
            self.labels, self.tta, self.classes, self.tuned_thresholds().class_array()
        )
        return table.set_index("class")

    def tta_table(self) -> pd.DataFrame:
        """Each view alone and the chosen views averaged: accuracy (multiclass) or macro mAP (multilabel)."""
        if self.task == "multiclass":
            return tta_table(self.labels, self.prediction, self.views)
        return multilabel_tta_table(self.labels, self.prediction, self.views)

    def threshold_table(self) -> pd.DataFrame:
        """Multilabel: the scores with TTA at 0.5, at the tuned global threshold and at the tuned per-class
        thresholds (the last two optimistic: tuned on these rows)."""
        return threshold_table(self.labels, self.tta, self.tuned_thresholds().candidates())

    def mistakes(self, top: int = 10) -> pd.DataFrame:
        """The most frequent mistakes: (true, predicted) pairs (multiclass), or the classes most often
        missed or wrongly added (multilabel)."""
        if self.task == "multiclass":
            return most_confused(self.labels, self.predicted, self.classes, top)
        return label_mistakes(self.labels, self.predicted, self.classes, top)

    def label_issues(self, sep: str) -> pd.DataFrame:
        """Every row ranked by cleanlab's label-quality score, lowest (most likely mislabelled) first."""
        ids = self.rows["id"]
        if self.task == "multiclass":
            return rank_label_issues(ids, self.labels, self.tta, self.classes)
        return rank_multilabel_issues(ids, self.labels, self.tta, self.predicted, self.classes, sep)


def threshold_note(oof: OofEvaluation) -> str:
    """04's line about thresholds: what 05 uses and why the tuned OOF scores are optimistic."""
    if oof.task == "multiclass":
        return "a multiclass run predicts the most probable class: no thresholds"
    t = oof.tuned_thresholds()
    return (
        f"05 turns probabilities into label sets with the per-class thresholds (saved in thresholds.json; "
        f"the global one is {t.global_threshold:g}). Note: {OPTIMISTIC}."
    )


def evaluation_record(
    task: Task,
    checkpoint: str,
    views: Sequence[str],
    folds: Sequence[int],
    images: int,
    plain: dict[str, float],
    tta: dict[str, float],
    tta_only: dict[str, float] | None = None,
) -> dict:
    """evaluation.json's flat record, as helpers.run_folder documents it: what was evaluated, then each
    metric without TTA (val_<metric>) and with it (val_<metric>_tta), then those scored with TTA only (a
    multilabel run's scores at the thresholds tuned on the TTA probabilities)."""
    record: dict = {
        "task": task,
        "checkpoint": checkpoint,
        "tta_views": list(views),
        "folds": list(folds),
        "images": images,
    }
    for metric in plain:
        record[metric_key(metric, tta=False)] = plain[metric]
        record[metric_key(metric, tta=True)] = tta[metric]
    for metric, value in (tta_only or {}).items():
        record[metric_key(metric, tta=True)] = value
    return record


def evaluate_oof(
    cfg: Config,
    run: RunFolder,
    info: DataInfo,
    checkpoints: dict[int, Path],
    device: torch.device | None = None,
) -> OofEvaluation:
    """Predict every TTA view of each trained fold's validation images once, score them without TTA (the
    identity view, what 03 scored) and with the run's views, and write oof.csv and evaluation.json. A
    multilabel run's thresholds are tuned on the TTA probabilities and saved in thresholds.json; its
    F1, subset accuracy and Hamming loss are at 0.5 in the summary and at the tuned thresholds in
    evaluation.json's `*_tuned_tta` keys.

    The task is the run config's, as 01 saved it; a config that still says 'auto' (a library call before
    any config.json) takes what prepare_dataset resolved from it, DataInfo.task."""
    task = info.task if cfg.task == "auto" else task_of(cfg.task)
    if task != info.task:
        raise ValueError(f"the run's task is {task!r}, but its data was prepared as {info.task!r}")
    cfg = cfg.replace(task=task)  # the prediction path reads the task from the config
    views = check_views(cfg.tta_views)
    rows, prediction = predict_folds(cfg, info.table, checkpoints, list(VIEWS), device)
    labels = target_array(rows, len(info.classes), task)
    tta, plain_p = prediction.mean_of(views), prediction.view("identity")
    thresholds, tuned = None, {}
    if task == "multiclass":
        plain, with_tta = summary_metrics(labels, plain_p), summary_metrics(labels, tta)
        frame = oof_frame(rows["id"], rows["fold"], labels, tta, info.classes)
    else:
        thresholds = tune_thresholds(labels, tta, info.classes, cfg.checkpoint, views)
        save_thresholds(run, thresholds)
        plain, with_tta = multilabel_summary(labels, plain_p), multilabel_summary(labels, tta)
        per_class = thresholds.class_array()
        tuned = {f"{m}_tuned": v for m, v in threshold_scores(labels, tta, per_class).items()}
        predicted = predict_sets(tta, per_class)
        frame = multilabel_oof_frame(
            rows["id"], rows["fold"], rows["label"], predicted, tta, info.classes, cfg.label_sep
        )
    run.write_oof(frame)
    run.write_evaluation(
        evaluation_record(task, cfg.checkpoint, views, list(checkpoints), len(rows), plain, with_tta, tuned)
    )
    summary = pd.DataFrame({"no TTA": plain, f"TTA {'+'.join(views)}": with_tta})
    return OofEvaluation(rows, list(info.classes), labels, prediction, views, tta, summary, task, thresholds)


def show_class_errors(oof: OofEvaluation) -> tuple[Figure, str]:
    """The figure of which classes go wrong, and its plot name: the confusion matrix (multiclass), or the
    precision-recall curves of the classes with the lowest AP (multilabel)."""
    if oof.task == "multiclass":
        matrix = normalised_confusion(oof.labels, oof.predicted, len(oof.classes))
        return show_confusion(matrix, oof.classes), "confusion_matrix"
    shown = worst_classes(oof.labels, oof.tta, PR_CURVES)
    return show_pr_curves(oof.labels, oof.tta, oof.classes, shown), "pr_curves"


def show_set_predictions(
    rows: pd.DataFrame,
    predicted: np.ndarray,
    classes: Sequence[str],
    targets: np.ndarray | None = None,
    extra: Sequence[str] = (),
    n: int = 32,
) -> Figure:
    """The first n rows' images with their predicted sets (0/1 rows): right labels in green, wrong ones in
    red, missed ones in orange (plots.label_set_lines), and an optional extra line each."""
    lines = [
        label_set_lines(predicted[i], classes, None if targets is None else targets[i])
        + ([(extra[i], "black")] if extra else [])
        for i in range(min(n, len(rows)))
    ]
    images = [read_image(p) for p in rows["path"].head(n)]
    return show_set_grid(images, lines)


def show_predicted_batch(oof: OofEvaluation, n: int = 32) -> Figure:
    """The first n out-of-fold images with their true and predicted labels (wrong ones marked)."""
    if oof.task == "multiclass":
        return show_predictions(oof.rows, oof.tta, oof.classes, oof.labels, n=n)
    return show_set_predictions(oof.rows, oof.predicted, oof.classes, oof.labels, n=n)


def show_highest_loss(oof: OofEvaluation, n: int = 16) -> Figure:
    """The n images the model got most wrong (highest loss with TTA: cross-entropy, or the mean binary
    cross-entropy over the classes for a multilabel run), highest first, with their loss."""
    if oof.task == "multilabel":
        losses = sample_bce(oof.labels, oof.tta)
        worst = np.argsort(-losses, kind="stable")[:n]
        extra = [f"loss {v:.2f}" for v in losses[worst]]
        return show_set_predictions(
            oof.rows.iloc[worst], oof.predicted[worst], oof.classes, oof.labels[worst], extra, n
        )
    worst = highest_loss_indices(oof.labels, oof.tta, n)
    labels, probabilities = oof.labels[worst], oof.tta[worst]
    losses = [f"loss {v:.2f}" for v in sample_losses(labels, probabilities)]
    return show_predictions(oof.rows.iloc[worst], probabilities, oof.classes, labels, losses, n)


def show_grad_cam(
    cfg: Config,
    info: DataInfo,
    checkpoints: dict[int, Path],
    n: int = 16,
    thresholds: TunedThresholds | None = None,
) -> Figure:
    """Grad-CAM maps for the first validation images of the first trained fold (on the CPU: a single batch
    needs no accelerator). Multiclass: the predicted class of each of n images, titled 'true → predicted'.
    Multilabel: one map for each predicted label of an image (its most probable class when none reaches
    its threshold), n maps in all, titled 'true set → label (probability)', green when the label is in
    the set and red when not."""
    fold, path = next(iter(checkpoints.items()))
    model, _ = load_model(path)
    rows = info.table[info.table["fold"] == fold].head(n)
    x, _, _ = next(iter(build_loader(cfg, rows.drop(columns="label_idx"), False, fold, torch.device("cpu"))))
    prep = InputPrep.for_backbone(cfg.backbone)
    names = np.asarray(info.classes)
    if task_of(cfg.task) == "multiclass":
        images, cams, predicted = explain_batch(model, x, prep)
        titles = [f"{t} → {p}" for t, p in zip(rows["label"], names[predicted], strict=True)]
        return show_cam(images, cams, titles)
    if thresholds is None:
        raise ValueError("a multilabel run's Grad-CAM needs the thresholds 04 tuned (oof.thresholds)")
    with torch.no_grad():
        probabilities = to_probabilities(model(prep(x, torch.device("cpu"))), "multilabel").numpy()
    chosen = predict_sets(probabilities, thresholds.class_array())
    pairs = []
    for i, row in enumerate(chosen):
        labels = np.flatnonzero(row) if row.any() else [int(probabilities[i].argmax())]
        pairs += [(i, int(c)) for c in labels]
    pairs = pairs[:n]
    images, cams = explain_labels(model, x, prep, pairs)
    truth = target_array(rows, len(names), "multilabel")
    titles = [f"{rows['label'].iloc[i]} → {names[c]} ({probabilities[i, c]:.2f})" for i, c in pairs]
    colors = ["tab:green" if truth[i, c] else "tab:red" for i, c in pairs]
    return show_cam(images, cams, titles, colors=colors)


# --- 05: the test set --------------------------------------------------------------------------------------


@dataclass
class EnsemblePrediction:
    """05's ensemble prediction of the test images (rows in test order), how long it took, and for a
    multilabel run the thresholds 04 tuned, which turn its probabilities into label sets."""

    rows: pd.DataFrame
    classes: list[str]
    prediction: Prediction
    models: int
    seconds: float
    task: Task
    thresholds: TunedThresholds | None = None

    @property
    def probabilities(self) -> np.ndarray:
        """Averaged over models and views."""
        return self.prediction.probabilities

    def sets(self, probabilities: np.ndarray | None = None) -> np.ndarray:
        """Multilabel: the predicted 0/1 sets at the run's per-class thresholds."""
        if self.thresholds is None:
            raise ValueError("label sets need a multilabel run's thresholds")
        return predict_sets(
            self.probabilities if probabilities is None else probabilities, self.thresholds.class_array()
        )

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
    """The ensemble's probabilities for the test table's images (`path`, and `height`/`width` for the
    cache). A multilabel run's thresholds (thresholds.json of the first member, for its checkpoint and
    views) are read first, so a missing or mismatched file stops 05 before the prediction."""
    task = task_of(members[0].cfg.task)
    first = members[0]
    thresholds = run_thresholds(first.run, first.cfg, first.classes) if task == "multilabel" else None
    started = time.perf_counter()
    prediction = predict_ensemble(members, test, views, device)
    models = sum(len(m.checkpoints) for m in members)
    seconds = time.perf_counter() - started
    return EnsemblePrediction(test, first.classes, prediction, models, seconds, task, thresholds)


def write_test_predictions(
    run: RunFolder,
    cfg: Config,
    sample: pd.DataFrame,
    predicted: EnsemblePrediction,
    probabilities: np.ndarray | None = None,
) -> pd.DataFrame:
    """Write submission.csv (the sample submission filled in: classes, label sets at the run's thresholds,
    or probabilities, as its columns ask) and test_probabilities.csv (what the leaderboard scores) from the
    ensemble's probabilities, or from others of the same images (calibrated ones); returns the
    submission."""
    ids = predicted.rows["id"]
    probabilities = predicted.probabilities if probabilities is None else probabilities
    if predicted.task == "multiclass":
        submission = submission_frame(sample, cfg.id_col, ids, probabilities, predicted.classes)
    else:
        submission = multilabel_submission_frame(
            sample,
            cfg.id_col,
            ids,
            probabilities,
            predicted.sets(probabilities),
            predicted.classes,
            cfg.label_sep,
        )
    run.write_submission(submission)
    run.write_test_probabilities(probabilities_frame(ids, probabilities, predicted.classes))
    return submission


def score_test_set(
    labels: np.ndarray, probabilities: np.ndarray, task: Task, thresholds: TunedThresholds | None = None
) -> pd.DataFrame:
    """The summary metrics on the test set, as a one-column table (a multilabel run's F1, subset accuracy
    and Hamming loss at its tuned per-class thresholds)."""
    if task == "multiclass":
        return pd.Series(summary_metrics(labels, probabilities)).to_frame("test")
    if thresholds is None:
        raise ValueError("a multilabel test score needs the run's thresholds")
    return pd.Series(multilabel_summary(labels, probabilities, thresholds.class_array())).to_frame("test")


def show_test_predictions(predicted: EnsemblePrediction, truth: np.ndarray | None, n: int = 24) -> Figure:
    """The first n test images with their predictions: true → predicted (multiclass) or the predicted set
    marked against the true one (multilabel), wrong in red; without labels the predictions in black."""
    if predicted.task == "multiclass":
        return show_predictions(predicted.rows, predicted.probabilities, predicted.classes, truth, n=n)
    return show_set_predictions(predicted.rows, predicted.sets(), predicted.classes, truth, n=n)
