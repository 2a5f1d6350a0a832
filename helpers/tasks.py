"""The task axis: everything that differs between single-label and multi-label classification, behind one
object chosen once from the run's resolved task.

01 resolves `task='auto'` from the labels (helpers.label_sets) and saves the resolved task in config.json;
`task_for(cfg)` then gives the run's `Task`, and every caller asks it: targets, probabilities, the loss, the
epoch's validation metrics (one implementation for 03 and 04), the summary and per-class tables, the
thresholds and the decision rule, the label texts of the OOF frame and the submission, the prediction
grids, the highest-loss ranking, Grad-CAM's targets and cleanlab's label quality. Nothing outside this
module and the modules that resolve the task branches on the task's name. A third task (ordinal,
regression) is one more subclass, its entry in TASKS and its tests.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import ClassVar

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from cleanlab.filter import find_label_issues
from cleanlab.multilabel_classification import get_label_quality_scores as multilabel_quality_scores
from cleanlab.rank import get_label_quality_scores
from matplotlib.figure import Figure
from timm.loss import AsymmetricLossMultiLabel
from timm.task import LogitDistillationTask
from torch import nn

from helpers import multilabel_metrics as ml
from helpers import singlelabel_metrics as sl
from helpers.config import Config, ConfigError
from helpers.folds import assign_folds, assign_multilabel_folds
from helpers.label_sets import canonical_label
from helpers.losses import (
    FocalLoss,
    SigmoidDistillationTask,
    SmoothedBCEWithLogits,
    balanced_class_weights,
    balanced_pos_weight,
)
from helpers.plots import label_set_lines, prediction_titles, show_confusion, show_label_sets, show_pr_curves
from helpers.tables import split_label
from helpers.targets import TASKS as TASK_NAMES
from helpers.targets import TaskName, decode_label_set, encode_label_set, multi_hot
from helpers.thresholds import TunedThresholds, tune_thresholds

Lines = list[tuple[str, str]]  # the (text, colour) lines under one image of a prediction grid
PR_CURVES = 6  # the worst classes whose precision-recall curves 04 shows
# below this out-of-fold score (accuracy, or macro mAP), the model's disagreements with the labels are
# mostly its own mistakes: 04 says its likely label errors are not reliable
RELIABLE_SCORE = 0.8


class Task(ABC):
    """What one kind of classification means: how a row's labels become targets, logits become
    probabilities and probabilities become decisions, and how each is scored and shown."""

    name: ClassVar[TaskName]
    monitors: ClassVar[tuple[str, ...]]  # the metrics 03 may monitor; the first is what 'auto' means
    losses: ClassVar[tuple[str, ...]]  # the `loss` settings this task trains with
    least_classes: ClassVar[int]  # the fewest classes a data set of this task can train on
    view_metric: ClassVar[str]  # the one score of a TTA view (04's view-by-view table)
    view_metric_name: ClassVar[str]  # that score in words
    fold_kind: ClassVar[str]  # how the kit's folds are stratified, in words
    fold_tag: ClassVar[str]  # what the folds file's name and hash add for this task ("": nothing)
    output_meaning: ClassVar[str]  # what an exported model's output holds
    mixes_multi_label: ClassVar[bool]  # timm's Mixup `multi_label`
    tunes_thresholds: ClassVar[bool]  # whether 04 tunes decision thresholds (thresholds.json) that 05 needs
    score_column: ClassVar[str]  # the leaderboard column that ranks this task's runs by default
    best_column: ClassVar[str]  # the leaderboard column that breaks its ties (03's best epoch)
    test_columns: ClassVar[dict[str, str]]  # summary score -> leaderboard test column
    calibration_skipped: ClassVar[str] = ""  # why temperature scaling does not apply; empty when it does
    blend_objective_name: ClassVar[str]  # what greedy blending optimises on the out-of-fold rows, in words
    stacking: ClassVar[str]  # the shape of a blend's meta-model (helpers.fusion.STACKS)
    # timm's distillation task for this task's outputs (helpers.losses): softmax KL, or a BCE per class
    distillation: ClassVar[type[LogitDistillationTask]]

    def __init__(self, allow_empty: bool = False) -> None:
        self.allow_empty = allow_empty  # whether an image may hold no class (allow_empty_labels)

    # --- targets and training ---------------------------------------------------------------------------

    @abstractmethod
    def targets(self, rows: pd.DataFrame, num_classes: int) -> np.ndarray:
        """The rows' targets from their `label_idx` (helpers.targets' encoding)."""

    @abstractmethod
    def encode(self, tokens: Sequence[str], order: dict[str, int], sep: str) -> tuple[str, int | str]:
        """A prepared row's `label` (as written: the class, or the set in class order joined by sep) and
        `label_idx` (helpers.targets' encoding) from its labels."""

    @abstractmethod
    def split(self, value: object, sep: str) -> list[str]:
        """The labels of a value as a table writes it (test_labels.csv): the one class, or the set's parts."""

    @abstractmethod
    def encode_targets(self, index_lists: Sequence[Sequence[int]], num_classes: int) -> np.ndarray:
        """Targets from each row's class indices (what `targets` gives for a prepared table)."""

    @abstractmethod
    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Logits (N, C) to probabilities."""

    def loss(
        self,
        loss: str,
        smoothing: float,
        focal_gamma: float,
        balanced: bool,
        train_targets: np.ndarray,
        num_classes: int,
    ) -> nn.Module:
        """The training loss `loss` names (`default` or one of `losses`), with label smoothing and, when
        `balanced`, the class weighting this task's loss takes, counted on the fold's training targets."""
        if loss not in self.losses:
            others = [name for name, kind in TASKS.items() if loss in kind.losses]
            raise ConfigError(
                f"loss={loss!r} is for {' or '.join(others) or 'no'} tasks and this run's task is {self.name}: "
                f"use one of {list(self.losses)}"
            )
        weights = self.balanced_weights(train_targets, num_classes) if balanced else None
        return self.weighted_loss(loss, smoothing, focal_gamma, weights)

    @abstractmethod
    def dense_targets(self, targets: np.ndarray, num_classes: int) -> np.ndarray:
        """`targets` as (N, C) float rows, the form a soft target takes: one-hot, or the multi-hot rows."""

    @abstractmethod
    def teacher_logits(
        self, logits: Sequence[torch.Tensor], weights: Sequence[float], temperature: float
    ) -> torch.Tensor:
        """One set of logits for several teachers' (weights summing to 1): at `temperature` its
        probabilities are exactly the weighted mean of the teachers' probabilities at that temperature, so
        timm's distillation loss sees the ensemble's averaged distribution."""

    @abstractmethod
    def pseudo_labels(
        self, probabilities: np.ndarray, threshold: float
    ) -> tuple[np.ndarray, np.ndarray, list[list[int]]]:
        """Which rows a source's probabilities label confidently enough (a boolean per row), each row's
        confidence (what the threshold is compared with) and each row's hard label as class indices."""

    @abstractmethod
    def balanced_weights(self, train_targets: np.ndarray, num_classes: int) -> torch.Tensor:
        """What `class_weights='balanced'` means for this task's loss, from the fold's training targets."""

    @abstractmethod
    def weighted_loss(
        self, loss: str, smoothing: float, gamma: float, weights: torch.Tensor | None
    ) -> nn.Module:
        """The loss module `loss` names, with label smoothing and the class weights (None: unweighted)."""

    @abstractmethod
    def class_counts(self, targets: np.ndarray, num_classes: int) -> np.ndarray:
        """Rows holding each class."""

    def label_structure(self, table: pd.DataFrame, classes: Sequence[str]) -> Figure | None:
        """01's figure of how labels combine in a prepared table; None when each image has one label."""
        return None

    @abstractmethod
    def assign_folds(
        self, table: pd.DataFrame, groups: pd.Series | None, n_folds: int, seed: int, num_classes: int
    ) -> np.ndarray:
        """The kit's stratified folds of a prepared table."""

    def epoch_metrics(self, logits: np.ndarray, targets: np.ndarray) -> dict[str, float]:
        """03's validation metrics of an epoch (`val_*`): the same functions 04 reports under those keys."""
        probabilities = self.probabilities(torch.from_numpy(logits).float()).numpy()
        return {"val_loss": self.mean_loss(logits, targets), **self.validation_scores(targets, probabilities)}

    @abstractmethod
    def mean_loss(self, logits: np.ndarray, targets: np.ndarray) -> float:
        """The unsmoothed, unweighted loss over every row: what `val_loss` means."""

    @abstractmethod
    def validation_scores(self, targets: np.ndarray, probabilities: np.ndarray) -> dict[str, float]:
        """The scores 03 tracks each epoch beside the loss, keyed as metrics.csv names them."""

    # --- decisions ----------------------------------------------------------------------------------------

    @abstractmethod
    def fit_thresholds(
        self,
        targets: np.ndarray,
        probabilities: np.ndarray,
        classes: Sequence[str],
        checkpoint: str,
        views: Sequence[str],
    ) -> TunedThresholds | None:
        """The decision thresholds 04 tunes on the out-of-fold probabilities; None when the task has none."""

    @abstractmethod
    def decide(self, probabilities: np.ndarray, thresholds: TunedThresholds | None) -> np.ndarray:
        """What the model predicts: class indices (N,), or 0/1 label sets (N, C)."""

    def decision_note(self, probabilities: np.ndarray, thresholds: TunedThresholds | None) -> str:
        """One line about rows whose decision needed a rule beyond the thresholds; empty when none did."""
        return ""

    @abstractmethod
    def label_texts(self, values: np.ndarray, classes: Sequence[str], sep: str) -> list[str]:
        """Each row's targets or decisions as text: the class name, or the set's names joined by sep."""

    # --- scores and tables --------------------------------------------------------------------------------

    @abstractmethod
    def summary(
        self, targets: np.ndarray, probabilities: np.ndarray, thresholds: TunedThresholds | None = None
    ) -> dict[str, float]:
        """Every summary score (04's table, evaluation.json, the test score); decisions at `thresholds`."""

    @abstractmethod
    def tuned_summary(
        self, targets: np.ndarray, probabilities: np.ndarray, thresholds: TunedThresholds | None
    ) -> dict[str, float]:
        """The scores that depend on tuned thresholds, at them (empty for a task without thresholds)."""

    @abstractmethod
    def view_score(self, targets: np.ndarray, probabilities: np.ndarray) -> float:
        """One TTA view's score (`view_metric`)."""

    @abstractmethod
    def blend_objective(self, targets: np.ndarray, probabilities: np.ndarray) -> float:
        """What greedy blending maximises (helpers.fusion), higher is better: the task's view score, with
        anything that breaks its ties."""

    @abstractmethod
    def blend_scores(self, targets: np.ndarray, probabilities: np.ndarray) -> dict[str, float]:
        """A blend's headline figures (out-of-fold, nested, test), named as the summary names them: the
        view score, and the log loss where the task has one."""

    @abstractmethod
    def per_class(
        self,
        targets: np.ndarray,
        probabilities: np.ndarray,
        classes: Sequence[str],
        thresholds: TunedThresholds | None,
    ) -> pd.DataFrame:
        """The per-class table, one row per class (a `class` column)."""

    @abstractmethod
    def mistakes(
        self, targets: np.ndarray, decided: np.ndarray, classes: Sequence[str], top: int
    ) -> pd.DataFrame:
        """The most frequent mistakes."""

    @abstractmethod
    def sample_losses(self, targets: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
        """Each row's loss against its targets: what "most wrong" ranks by."""

    @abstractmethod
    def class_errors(
        self, targets: np.ndarray, probabilities: np.ndarray, decided: np.ndarray, classes: Sequence[str]
    ) -> tuple[Figure, str]:
        """The figure of which classes go wrong, and its plot name."""

    @abstractmethod
    def grid_lines(
        self,
        decided: np.ndarray,
        probabilities: np.ndarray,
        classes: Sequence[str],
        targets: np.ndarray | None,
    ) -> list[Lines]:
        """The lines under each image of a prediction grid: right in green, wrong in red; black without
        targets (nothing to be right against)."""

    @abstractmethod
    def cam_targets(self, probabilities: np.ndarray, decided: np.ndarray) -> list[tuple[int, int]]:
        """The (row, class) pairs Grad-CAM explains: each predicted class of each row."""

    @abstractmethod
    def holds(self, targets: np.ndarray, row: int, c: int) -> bool:
        """Whether class c is among the row's targets."""

    @abstractmethod
    def label_quality(self, targets: np.ndarray, probabilities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """cleanlab's label-quality score of each row (lower: more likely mislabelled) and its flag."""

    def reliability_note(self, targets: np.ndarray, probabilities: np.ndarray) -> str:
        """A caution when the model is too weak for its disagreements to point at label errors."""
        score = self.view_score(targets, probabilities)
        if np.isfinite(score) and score >= RELIABLE_SCORE:
            return ""
        return (
            f"caution: the out-of-fold {self.view_metric_name} is {score:.2f} (below {RELIABLE_SCORE:g}), so most "
            "rows flagged here are the model's own mistakes rather than wrong labels: train a stronger model "
            "before acting on them"
        )


class SingleLabel(Task):
    """One class per image: softmax over the classes, the most probable one predicted."""

    name = "multiclass"
    monitors = ("val_acc", "val_loss")
    losses = ("default", "focal")
    least_classes = 2
    view_metric = "accuracy"
    view_metric_name = "accuracy"
    fold_kind = "stratified"
    fold_tag = ""  # the folds files of multiclass tables keep the names and hashes they always had
    output_meaning = "softmax probabilities: one distribution over the classes, summing to 1"
    mixes_multi_label = False
    tunes_thresholds = False
    score_column = "val_acc_tta"
    best_column = "best_val_acc"
    test_columns = {"accuracy": "test_acc", "macro_f1": "test_macro_f1", "log_loss": "test_log_loss"}
    calibration_skipped = ""
    # accuracy, which a blend is for; log loss alone let one well-calibrated member shut out better ones
    # (benchmarks/RESULTS.md, section 12)
    blend_objective_name = "accuracy, ties broken by log loss"
    stacking = "multinomial"
    distillation = LogitDistillationTask

    def targets(self, rows: pd.DataFrame, num_classes: int) -> np.ndarray:
        return rows["label_idx"].to_numpy(dtype=np.int64)

    def dense_targets(self, targets: np.ndarray, num_classes: int) -> np.ndarray:
        return np.eye(num_classes, dtype=np.float32)[targets]

    def teacher_logits(
        self, logits: Sequence[torch.Tensor], weights: Sequence[float], temperature: float
    ) -> torch.Tensor:
        # log of the weighted mean of softmax(z / T): a normalised log-distribution, so its softmax at T
        # (after multiplying by T) is that mean again
        terms = [
            (z.float() / temperature).log_softmax(dim=1) + float(np.log(w))
            for z, w in zip(logits, weights, strict=True)
        ]
        return torch.logsumexp(torch.stack(terms), dim=0) * temperature

    def pseudo_labels(
        self, probabilities: np.ndarray, threshold: float
    ) -> tuple[np.ndarray, np.ndarray, list[list[int]]]:
        confidence = probabilities.max(1)
        return confidence >= threshold, confidence, [[int(c)] for c in probabilities.argmax(1)]

    def encode(self, tokens: Sequence[str], order: dict[str, int], sep: str) -> tuple[str, int | str]:
        return tokens[0], order[tokens[0]]

    def split(self, value: object, sep: str) -> list[str]:
        return [str(value)]

    def encode_targets(self, index_lists: Sequence[Sequence[int]], num_classes: int) -> np.ndarray:
        return np.array([indices[0] for indices in index_lists], dtype=np.int64)

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.softmax(dim=1)

    def balanced_weights(self, train_targets: np.ndarray, num_classes: int) -> torch.Tensor:
        return balanced_class_weights(train_targets, num_classes)

    def weighted_loss(
        self, loss: str, smoothing: float, gamma: float, weights: torch.Tensor | None
    ) -> nn.Module:
        if loss == "focal":
            return FocalLoss(gamma, smoothing, weights)
        # torch's cross-entropy takes class indices and soft targets alike
        return nn.CrossEntropyLoss(weight=weights, label_smoothing=smoothing)

    def class_counts(self, targets: np.ndarray, num_classes: int) -> np.ndarray:
        return np.bincount(targets, minlength=num_classes)

    def assign_folds(
        self, table: pd.DataFrame, groups: pd.Series | None, n_folds: int, seed: int, num_classes: int
    ) -> np.ndarray:
        return assign_folds(table["label"].astype(str), groups, n_folds, seed)

    def mean_loss(self, logits: np.ndarray, targets: np.ndarray) -> float:
        return F.cross_entropy(torch.from_numpy(logits).float(), torch.from_numpy(targets)).item()

    def validation_scores(self, targets: np.ndarray, probabilities: np.ndarray) -> dict[str, float]:
        return {"val_acc": self.view_score(targets, probabilities)}

    def fit_thresholds(self, targets, probabilities, classes, checkpoint, views) -> None:
        return None

    def decide(self, probabilities: np.ndarray, thresholds: TunedThresholds | None) -> np.ndarray:
        return probabilities.argmax(1)

    def label_texts(self, values: np.ndarray, classes: Sequence[str], sep: str) -> list[str]:
        return list(np.asarray(classes, dtype=object)[values])

    def summary(self, targets, probabilities, thresholds=None) -> dict[str, float]:
        return sl.summary_metrics(targets, probabilities)

    def tuned_summary(self, targets, probabilities, thresholds) -> dict[str, float]:
        return {}

    def view_score(self, targets: np.ndarray, probabilities: np.ndarray) -> float:
        return sl.accuracy(targets, probabilities)

    def blend_objective(self, targets: np.ndarray, probabilities: np.ndarray) -> float:
        # the mean log loss is at most 27.7 (probabilities clipped at 1e-12), so scaled by 1 / (100 N) it
        # moves the score by less than one row's accuracy (1 / N): a tie-break, never a trade
        log_loss = float(sl.cross_entropies(targets, probabilities).mean())
        return self.view_score(targets, probabilities) - log_loss / (100 * len(targets))

    def blend_scores(self, targets: np.ndarray, probabilities: np.ndarray) -> dict[str, float]:
        return {
            "accuracy": self.view_score(targets, probabilities),
            "log_loss": float(sl.cross_entropies(targets, probabilities).mean()),
        }

    def per_class(self, targets, probabilities, classes, thresholds) -> pd.DataFrame:
        return sl.per_class_table(targets, probabilities, classes)

    def mistakes(self, targets, decided, classes, top) -> pd.DataFrame:
        return sl.most_confused(targets, decided, classes, top)

    def sample_losses(self, targets: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
        return sl.cross_entropies(targets, probabilities)

    def class_errors(self, targets, probabilities, decided, classes) -> tuple[Figure, str]:
        matrix = sl.normalised_confusion(targets, decided, len(classes))
        return show_confusion(matrix, classes), "confusion_matrix"

    def grid_lines(self, decided, probabilities, classes, targets) -> list[Lines]:
        titles, colors = prediction_titles(probabilities, classes, targets)
        return [[(t, c)] for t, c in zip(titles, colors, strict=True)]

    def cam_targets(self, probabilities: np.ndarray, decided: np.ndarray) -> list[tuple[int, int]]:
        return [(i, int(c)) for i, c in enumerate(decided)]

    def holds(self, targets: np.ndarray, row: int, c: int) -> bool:
        return bool(targets[row] == c)

    def label_quality(self, targets: np.ndarray, probabilities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        flagged = find_label_issues(targets, probabilities, filter_by="prune_by_noise_rate", n_jobs=1)
        return get_label_quality_scores(targets, probabilities, method="self_confidence"), flagged


class MultiLabel(Task):
    """A set of classes per image (possibly empty where the data allows it): a sigmoid per class, a class
    predicted when its probability reaches its tuned threshold. When the data has no empty sets
    (`allow_empty`: False), a row with no class over its threshold gets its most probable class: an empty
    set would be a sure miss."""

    name = "multilabel"
    monitors = ("val_map", "val_loss")
    losses = ("default", "asl")
    least_classes = 1  # a multilabel class may be one yes/no question
    view_metric = "map"
    view_metric_name = "macro mAP"
    fold_kind = "multi-label stratified"
    fold_tag = "multilabel"
    output_meaning = (
        "sigmoid probabilities: one independent probability per class (a label set); the run's "
        "thresholds.json holds the per-class thresholds tuned on its out-of-fold predictions"
    )
    mixes_multi_label = True
    tunes_thresholds = True
    score_column = "val_map_tta"
    best_column = "best_val_map"
    test_columns = {"map": "test_map", "f1_micro": "test_f1_micro", "f1_macro": "test_f1_macro"}
    calibration_skipped = (
        "temperature scaling is for multiclass runs (one softmax over the classes); a multilabel run's "
        "probabilities are one sigmoid per class, which this kit does not calibrate"
    )
    blend_objective_name = "macro mAP"
    stacking = "per_class"
    distillation = SigmoidDistillationTask

    def targets(self, rows: pd.DataFrame, num_classes: int) -> np.ndarray:
        if num_classes < 1:
            raise ValueError("a multilabel table's targets need num_classes (DataInfo.num_classes)")
        return multi_hot([decode_label_set(v) for v in rows["label_idx"]], num_classes)

    def encode(self, tokens: Sequence[str], order: dict[str, int], sep: str) -> tuple[str, int | str]:
        return canonical_label(tokens, order, sep), encode_label_set(order[t] for t in tokens)

    def dense_targets(self, targets: np.ndarray, num_classes: int) -> np.ndarray:
        return np.asarray(targets, dtype=np.float32)

    def teacher_logits(
        self, logits: Sequence[torch.Tensor], weights: Sequence[float], temperature: float
    ) -> torch.Tensor:
        # the logit of the weighted mean of sigmoid(z / T), times T: its sigmoid at T is that mean again
        mean = sum(w * (z.float() / temperature).sigmoid() for z, w in zip(logits, weights, strict=True))
        return torch.logit(mean.clamp(1e-6, 1 - 1e-6)) * temperature

    def pseudo_labels(
        self, probabilities: np.ndarray, threshold: float
    ) -> tuple[np.ndarray, np.ndarray, list[list[int]]]:
        # each class must be decided: sure enough it holds, or sure enough it does not
        confidence = np.maximum(probabilities, 1 - probabilities).min(1)
        holds = probabilities >= 0.5
        accepted = (confidence >= threshold) & (holds.any(1) | self.allow_empty)
        return accepted, confidence, [np.flatnonzero(row).tolist() for row in holds]

    def split(self, value: object, sep: str) -> list[str]:
        return split_label(value, sep)

    def encode_targets(self, index_lists: Sequence[Sequence[int]], num_classes: int) -> np.ndarray:
        return multi_hot(index_lists, num_classes).astype(int)

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.sigmoid()

    def balanced_weights(self, train_targets: np.ndarray, num_classes: int) -> torch.Tensor:
        return balanced_pos_weight(train_targets)  # a pos_weight per class

    def weighted_loss(
        self, loss: str, smoothing: float, gamma: float, weights: torch.Tensor | None
    ) -> nn.Module:
        if loss == "asl":
            return AsymmetricLossMultiLabel(smoothing=smoothing, reduction="mean", pos_weight=weights)
        return SmoothedBCEWithLogits(smoothing, weights)

    def class_counts(self, targets: np.ndarray, num_classes: int) -> np.ndarray:
        return targets[:, :num_classes].sum(0).astype(int)

    def label_structure(self, table: pd.DataFrame, classes: Sequence[str]) -> Figure:
        return show_label_sets(table["label_idx"].map(decode_label_set).tolist(), classes)

    def assign_folds(
        self, table: pd.DataFrame, groups: pd.Series | None, n_folds: int, seed: int, num_classes: int
    ) -> np.ndarray:
        return assign_multilabel_folds(self.targets(table, num_classes), groups, n_folds, seed)

    def mean_loss(self, logits: np.ndarray, targets: np.ndarray) -> float:
        t_logits, t_targets = torch.from_numpy(logits).float(), torch.from_numpy(targets).float()
        return F.binary_cross_entropy_with_logits(t_logits, t_targets).item()

    def validation_scores(self, targets: np.ndarray, probabilities: np.ndarray) -> dict[str, float]:
        at_half = ml.threshold_scores(targets, probabilities, ml.DEFAULT_THRESHOLD, self.allow_empty)
        return {
            "val_map": ml.macro_map(targets, probabilities),
            "val_f1_micro": at_half["f1_micro"],
            "val_f1_macro": at_half["f1_macro"],
        }

    def fit_thresholds(self, targets, probabilities, classes, checkpoint, views) -> TunedThresholds:
        return tune_thresholds(targets, probabilities, classes, checkpoint, views)

    def decide(self, probabilities: np.ndarray, thresholds: TunedThresholds | None) -> np.ndarray:
        if thresholds is None:
            raise ValueError("a multilabel run's label sets need the thresholds 04 tunes (thresholds.json)")
        return ml.predict_sets(probabilities, thresholds.class_array(), self.allow_empty)

    def decision_note(self, probabilities: np.ndarray, thresholds: TunedThresholds | None) -> str:
        if thresholds is None:
            return ""
        empty = int((ml.predict_sets(probabilities, thresholds.class_array(), True).sum(1) == 0).sum())
        if not empty:
            return ""
        if self.allow_empty:
            return (
                f"{empty} of {len(probabilities)} rows have no class over its threshold: predicted as empty "
                "sets (allow_empty_labels=True)"
            )
        return (
            f"{empty} of {len(probabilities)} rows have no class over its threshold: each is given its most "
            "probable class, as the training data has no empty label sets (allow_empty_labels=False)"
        )

    def label_texts(self, values: np.ndarray, classes: Sequence[str], sep: str) -> list[str]:
        names = np.asarray(classes, dtype=object)
        return [sep.join(names[np.flatnonzero(row)]) for row in values]

    def summary(self, targets, probabilities, thresholds=None) -> dict[str, float]:
        at = ml.DEFAULT_THRESHOLD if thresholds is None else thresholds.class_array()
        return ml.multilabel_summary(targets, probabilities, at, self.allow_empty)

    def tuned_summary(self, targets, probabilities, thresholds) -> dict[str, float]:
        scores = ml.threshold_scores(targets, probabilities, thresholds.class_array(), self.allow_empty)
        return {f"{m}_tuned": v for m, v in scores.items()}

    def view_score(self, targets: np.ndarray, probabilities: np.ndarray) -> float:
        return ml.macro_map(targets, probabilities)

    def blend_objective(self, targets: np.ndarray, probabilities: np.ndarray) -> float:
        return ml.macro_map(targets, probabilities)

    def blend_scores(self, targets: np.ndarray, probabilities: np.ndarray) -> dict[str, float]:
        return {"map": self.view_score(targets, probabilities)}

    def per_class(self, targets, probabilities, classes, thresholds) -> pd.DataFrame:
        at = ml.DEFAULT_THRESHOLD if thresholds is None else thresholds.class_array()
        return ml.multilabel_per_class(targets, probabilities, classes, at, self.allow_empty)

    def mistakes(self, targets, decided, classes, top) -> pd.DataFrame:
        return ml.label_mistakes(targets, decided, classes, top)

    def sample_losses(self, targets: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
        return ml.binary_cross_entropies(targets, probabilities)

    def class_errors(self, targets, probabilities, decided, classes) -> tuple[Figure, str]:
        shown = ml.worst_classes(targets, probabilities, PR_CURVES)
        return show_pr_curves(targets, probabilities, classes, shown), "pr_curves"

    def grid_lines(self, decided, probabilities, classes, targets) -> list[Lines]:
        return [
            label_set_lines(row, classes, None if targets is None else targets[i])
            for i, row in enumerate(decided)
        ]

    def cam_targets(self, probabilities: np.ndarray, decided: np.ndarray) -> list[tuple[int, int]]:
        pairs = []
        for i, row in enumerate(decided):
            labels = np.flatnonzero(row) if row.any() else [int(probabilities[i].argmax())]
            pairs += [(i, int(c)) for c in labels]
        return pairs

    def holds(self, targets: np.ndarray, row: int, c: int) -> bool:
        return bool(targets[row, c])

    def label_quality(self, targets: np.ndarray, probabilities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        sets = [list(np.flatnonzero(row)) for row in targets]
        flagged = find_label_issues(sets, probabilities, multi_label=True, n_jobs=1)
        return multilabel_quality_scores(sets, probabilities), flagged


TASKS: dict[str, type[Task]] = {"multiclass": SingleLabel, "multilabel": MultiLabel}
assert tuple(TASKS) == TASK_NAMES


def task_named(name: str, allow_empty: bool = False) -> Task:
    """The task object of a resolved task name."""
    if name not in TASKS:
        raise ConfigError(
            f"task={name!r} is not resolved: 01_data turns 'auto' into one of {list(TASKS)} and saves it in "
            "the run's config.json; run 01_data for this run first"
        )
    return TASKS[name](allow_empty)


def task_for(cfg: Config) -> Task:
    """The run's task object, from its config's resolved `task` (and `allow_empty_labels`)."""
    return task_named(cfg.task, cfg.allow_empty_labels)
