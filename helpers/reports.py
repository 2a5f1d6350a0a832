"""What 04 and 05 compute, write and show: one call per notebook step, so the notebooks hold parameters,
calls and display only.

04: `evaluate_oof` predicts every view of every out-of-fold image once, scores them without and with the
run's TTA views, writes oof.csv and evaluation.json (and, for a multilabel run, the thresholds it tunes to
thresholds.json) and returns an `OofEvaluation` for the tables and figures; the `show_*` functions
assemble its figures. 05: `predict_test` runs the ensemble over the test images and
`write_test_predictions` writes submission.csv and test_probabilities.csv. Both serve either task
without asking which: what differs is the run's task object's (helpers.tasks.task_for), and the metrics
themselves are helpers.singlelabel_metrics' and helpers.multilabel_metrics', on plain arrays.
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
from helpers.grad_cam import explain
from helpers.images import read_image
from helpers.inference import (
    Member,
    Prediction,
    fill_submission,
    predict_ensemble,
    predict_folds,
    probabilities_frame,
)
from helpers.label_issues import rank_label_issues
from helpers.loaders import build_loader
from helpers.multilabel_metrics import OPTIMISTIC, threshold_table
from helpers.plots import show_cam, show_set_grid
from helpers.run_folder import RunFolder, metric_key
from helpers.settings import resolve_task
from helpers.tasks import Lines, Task, task_for
from helpers.thresholds import TunedThresholds, run_thresholds, save_thresholds
from helpers.tta import VIEWS, check_views

# --- 04: out-of-fold evaluation ----------------------------------------------------------------------------


def oof_frame(
    ids: Sequence[str],
    folds: Sequence[int],
    given: Sequence[str],
    predicted: Sequence[str],
    probabilities: np.ndarray,
    classes: Sequence[str],
) -> pd.DataFrame:
    """oof.csv: id, fold, the given and the predicted label as text (a class name, or a label set joined by
    the run's label_sep) and a probability column per class."""
    frame = pd.DataFrame(
        {"id": list(ids), "fold": list(folds), "label": list(given), "predicted": list(predicted)}
    )
    probs = pd.DataFrame(probabilities, columns=[f"prob_{c}" for c in classes])
    return pd.concat([frame, probs], axis=1)


def tta_table(task: Task, targets: np.ndarray, prediction: Prediction, chosen: Sequence[str]) -> pd.DataFrame:
    """The task's view score (accuracy, or macro mAP) of each view alone and of the chosen views averaged."""
    rows = [
        {"views": v, task.view_metric: task.view_score(targets, prediction.view(v))} for v in prediction.views
    ]
    combined = task.view_score(targets, prediction.mean_of(chosen))
    rows.append({"views": " + ".join(chosen) + " (mean)", task.view_metric: combined})
    return pd.DataFrame(rows)


@dataclass
class OofEvaluation:
    """04's out-of-fold predictions: the validation rows in prediction order, their targets (class indices,
    or multi-hot rows), every view's probabilities, the TTA probabilities (mean of the run's views), the
    summary table, the run's task object and the thresholds it tuned (None for a task without any)."""

    rows: pd.DataFrame
    classes: list[str]
    labels: np.ndarray
    prediction: Prediction
    views: list[str]
    tta: np.ndarray
    summary: pd.DataFrame  # one row per metric; "no TTA", and "TTA <views>" when the views are more
    task: Task
    thresholds: TunedThresholds | None = None

    @property
    def predicted(self) -> np.ndarray:
        """With TTA: the task's decisions (class indices, or 0/1 sets at the tuned thresholds)."""
        return self.task.decide(self.tta, self.thresholds)

    def tuned_thresholds(self) -> TunedThresholds:
        """The run's tuned thresholds; an error for a task without any (it predicts its most probable class)."""
        if self.thresholds is None:
            raise ValueError(f"no thresholds: a {self.task.name} run predicts its most probable class")
        return self.thresholds

    def per_class(self) -> pd.DataFrame:
        """The task's per-class table with TTA, indexed by class name."""
        return self.task.per_class(self.labels, self.tta, self.classes, self.thresholds).set_index("class")

    def tta_table(self) -> pd.DataFrame:
        """Each view alone and the chosen views averaged, by the task's view score."""
        return tta_table(self.task, self.labels, self.prediction, self.views)

    def threshold_table(self) -> pd.DataFrame:
        """The scores with TTA at 0.5, at the tuned global threshold and at the tuned per-class thresholds
        (the last two optimistic: tuned on these rows)."""
        candidates = self.tuned_thresholds().candidates()
        return threshold_table(self.labels, self.tta, candidates, self.task.allow_empty)

    def mistakes(self, top: int = 10) -> pd.DataFrame:
        """The most frequent mistakes: (true, predicted) pairs, or the classes most often missed or added."""
        return self.task.mistakes(self.labels, self.predicted, self.classes, top)

    def label_issues(self, sep: str) -> pd.DataFrame:
        """Every row ranked by cleanlab's label-quality score, lowest (most likely mislabelled) first."""
        ids = self.rows["id"]
        return rank_label_issues(self.task, ids, self.labels, self.tta, self.predicted, self.classes, sep)

    def describe_label_issues(self, issues: pd.DataFrame, path: Path) -> str:
        """04's line on the flagged rows written to `path`, with a caution when the model is too weak for
        its disagreements with the labels to point at label errors (Task.reliability_note)."""
        line = f"{len(issues)} likely label error(s) among {len(self.rows)} out-of-fold rows: {path}"
        caution = self.task.reliability_note(self.labels, self.tta)
        return f"{line}\n{caution}" if caution else line


def threshold_summary(oof: OofEvaluation) -> tuple[str, pd.DataFrame | None]:
    """04's thresholds step: what 05 decides with (and why tuned OOF scores are optimistic, and how many
    rows needed the rule beyond the thresholds), and the scores at each candidate; no table for a run
    without thresholds."""
    if oof.thresholds is None:
        return f"a {oof.task.name} run predicts the most probable class: no thresholds", None
    lines = [
        f"05 turns probabilities into label sets with the per-class thresholds (saved in thresholds.json; the "
        f"global one is {oof.thresholds.global_threshold:g}). Note: {OPTIMISTIC}.",
        oof.task.decision_note(oof.tta, oof.thresholds),
    ]
    return "\n".join(line for line in lines if line), oof.threshold_table().round(4)


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
        "task": task.name,
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
    identity view, what 03 scored) and with the run's views, and write oof.csv and evaluation.json. Thresholds
    the task tunes (a multilabel run's) are tuned on the TTA probabilities and saved in thresholds.json; the
    summary's decisions are at 0.5, and evaluation.json's `*_tuned_tta` keys at the tuned thresholds.

    The task is the run config's, as 01 saved it (helpers.settings.resolve_task: a config that still says
    'auto', as a library call before any config.json, takes what prepare_dataset resolved)."""
    cfg = resolve_task(cfg, info)
    task = task_for(cfg)
    views = check_views(cfg.tta_views)
    rows, prediction = predict_folds(cfg, info.table, checkpoints, list(VIEWS), device)
    labels = task.targets(rows, len(info.classes))
    tta, plain_p = prediction.mean_of(views), prediction.view("identity")
    thresholds = task.fit_thresholds(labels, tta, info.classes, cfg.checkpoint, views)
    if thresholds is not None:
        save_thresholds(run, thresholds)
    plain, with_tta = task.summary(labels, plain_p), task.summary(labels, tta)
    tuned = task.tuned_summary(labels, tta, thresholds)
    given = task.label_texts(labels, info.classes, cfg.label_sep)
    predicted = task.label_texts(task.decide(tta, thresholds), info.classes, cfg.label_sep)
    run.write_oof(oof_frame(rows["id"], rows["fold"], given, predicted, tta, info.classes))
    run.write_evaluation(
        evaluation_record(task, cfg.checkpoint, views, list(checkpoints), len(rows), plain, with_tta, tuned)
    )
    summary = pd.DataFrame({"no TTA": plain})
    if views != ["identity"]:  # the identity view alone is what "no TTA" shows
        summary[f"TTA {'+'.join(views)}"] = pd.Series(with_tta)
    return OofEvaluation(rows, list(info.classes), labels, prediction, views, tta, summary, task, thresholds)


def show_class_errors(oof: OofEvaluation) -> tuple[Figure, str]:
    """The figure of which classes go wrong, and its plot name: the confusion matrix, or the
    precision-recall curves of the classes with the lowest AP."""
    return oof.task.class_errors(oof.labels, oof.tta, oof.predicted, oof.classes)


def show_prediction_grid(
    task: Task,
    rows: pd.DataFrame,
    decided: np.ndarray,
    probabilities: np.ndarray,
    classes: Sequence[str],
    targets: np.ndarray | None = None,
    extra: Sequence[str] = (),
    n: int = 32,
) -> Figure:
    """The first n rows' images (`path`) with the task's lines under each (right in green, wrong in red;
    without targets the prediction in black) and an optional extra line each."""
    n = min(n, len(rows))
    lines: list[Lines] = task.grid_lines(
        decided[:n], probabilities[:n], classes, None if targets is None else targets[:n]
    )
    if extra:
        lines = [image_lines + [(extra[i], "black")] for i, image_lines in enumerate(lines)]
    return show_set_grid([read_image(p) for p in rows["path"].head(n)], lines)


def show_predicted_batch(oof: OofEvaluation, n: int = 32) -> Figure:
    """The first n out-of-fold images with their true and predicted labels (wrong ones marked)."""
    return show_prediction_grid(oof.task, oof.rows, oof.predicted, oof.tta, oof.classes, oof.labels, n=n)


def highest_losses(losses: np.ndarray, n: int) -> np.ndarray:
    """The indices of the n rows with the highest loss, highest first (ties in row order): the images
    worth a look, for wrong labels or hard cases."""
    return np.argsort(-losses, kind="stable")[:n]


def show_highest_loss(oof: OofEvaluation, n: int = 16) -> Figure:
    """The n images the model got most wrong (the task's loss per row with TTA: cross-entropy, or the mean
    binary cross-entropy over the classes), highest first (ties in row order), with their loss."""
    losses = oof.task.sample_losses(oof.labels, oof.tta)
    worst = highest_losses(losses, n)
    extra = [f"loss {v:.2f}" for v in losses[worst]]
    return show_prediction_grid(
        oof.task, oof.rows.iloc[worst], oof.predicted[worst], oof.tta[worst], oof.classes,
        oof.labels[worst], extra, n,
    )  # fmt: skip


def show_grad_cam(
    cfg: Config,
    info: DataInfo,
    checkpoints: dict[int, Path],
    n: int = 16,
    thresholds: TunedThresholds | None = None,
) -> Figure:
    """Grad-CAM maps for the first validation images of the first trained fold (on the CPU: a single batch
    needs no accelerator): one map per predicted class of each image (the task's `cam_targets`), n maps in
    all, titled 'true → predicted', green when the class is the image's, red when not."""
    task = task_for(resolve_task(cfg, info))
    fold, path = next(iter(checkpoints.items()))
    model, _ = load_model(path)
    rows = info.table[info.table["fold"] == fold].head(n)
    x, _, _ = next(iter(build_loader(cfg, rows.drop(columns="label_idx"), False, fold, torch.device("cpu"))))
    prep = InputPrep.for_backbone(cfg.backbone)
    with torch.no_grad():
        probabilities = task.probabilities(model(prep(x, torch.device("cpu")))).numpy()
    pairs = task.cam_targets(probabilities, task.decide(probabilities, thresholds))[:n]
    images, cams = explain(model, x, prep, pairs)
    truth, names = task.targets(rows, len(info.classes)), np.asarray(info.classes)
    given = task.label_texts(truth, info.classes, cfg.label_sep)
    titles = [f"{given[i]} → {names[c]}" for i, c in pairs]
    colors = ["tab:green" if task.holds(truth, i, c) else "tab:red" for i, c in pairs]
    return show_cam(images, cams, titles, colors=colors)


# --- 05: the test set --------------------------------------------------------------------------------------


@dataclass
class EnsemblePrediction:
    """05's ensemble prediction of the test images (rows in test order), how long it took, the run's task
    object and the thresholds 04 tuned (None for a task without any)."""

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

    def decided(self, probabilities: np.ndarray | None = None) -> np.ndarray:
        """The task's decisions: class indices, or 0/1 sets at the run's tuned thresholds."""
        return self.task.decide(
            self.probabilities if probabilities is None else probabilities, self.thresholds
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
    store). The thresholds the task needs (thresholds.json of the first member, for its checkpoint and
    views) are read first, so a missing or mismatched file stops 05 before the prediction."""
    first = members[0]
    task = task_for(first.cfg)
    thresholds = run_thresholds(first.run, first.cfg, first.classes) if task.tunes_thresholds else None
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
    submission. Rows whose decision needed a rule beyond the thresholds are counted in one printed line."""
    ids = predicted.rows["id"]
    probabilities = predicted.probabilities if probabilities is None else probabilities
    decided = predicted.decided(probabilities)
    submission = fill_submission(
        predicted.task, sample, cfg.id_col, ids, probabilities, decided, predicted.classes, cfg.label_sep
    )
    if note := predicted.task.decision_note(probabilities, predicted.thresholds):
        print(f"submission: {note}")
    run.write_submission(submission)
    run.write_test_probabilities(probabilities_frame(ids, probabilities, predicted.classes))
    return submission


def score_test_set(
    task: Task, labels: np.ndarray, probabilities: np.ndarray, thresholds: TunedThresholds | None = None
) -> pd.DataFrame:
    """The summary metrics on the test set, as a one-column table (decisions at the run's tuned
    thresholds, where the task has them)."""
    return pd.Series(task.summary(labels, probabilities, thresholds)).to_frame("test")


def show_test_predictions(predicted: EnsemblePrediction, truth: np.ndarray | None, n: int = 24) -> Figure:
    """The first n test images with their predictions marked against the true labels (wrong in red);
    without labels the predictions in black."""
    return show_prediction_grid(
        predicted.task,
        predicted.rows,
        predicted.decided(),
        predicted.probabilities,
        predicted.classes,
        truth,
        n=n,
    )
