"""The multilabel task's scores and thresholds, on plain arrays: targets are (N, C) 0/1 multi-hot rows,
probabilities (N, C) sigmoid outputs, one independent probability per class.

Every score is scikit-learn's on the same arrays. Threshold-free: mean average precision (macro: the mean
of the classes' APs; micro: AP of every (row, class) pair pooled) and ROC AUC per class. At thresholds:
F1 (samples, micro, macro), subset accuracy (the whole set right) and Hamming loss (the share of wrong
(row, class) pairs). A class without a positive row has no AP, AUC or recall: it is left out of the macro
means (mAP, AUC and macro-F1; scikit-learn would count it as 0) and shows as NaN in the per-class table.
03's per-epoch `val_map`, `val_f1_micro` and `val_f1_macro` are these same functions (helpers.tasks).

Decisions: a class is predicted when its probability reaches its threshold. Where the data has no empty
label sets (`allow_empty` False), a row with no class over its threshold is given its most probable class
instead: an empty set is a sure miss when every true set holds a label.

Thresholds: 0.5, one global threshold and one threshold per class, each tuned on the out-of-fold
probabilities to maximise F1 (micro-F1 for the global one, the class's own F1 for each class) over
THRESHOLD_GRID. Thresholds tuned on the OOF rows make the OOF scores at those thresholds optimistic: the
same rows chose them. The threshold-free scores (mAP, AUC) are not affected.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    f1_score,
    hamming_loss,
    roc_auc_score,
)

DEFAULT_THRESHOLD = 0.5
THRESHOLD_GRID = np.round(np.arange(0.02, 0.99, 0.01), 2)  # candidates for the tuned thresholds
THRESHOLD_FREE = ("map", "map_micro", "roc_auc")  # scores of the probabilities alone
AT_THRESHOLDS = ("f1_samples", "f1_micro", "f1_macro", "subset_accuracy", "hamming_loss")
LOWER_IS_BETTER = {"hamming_loss"}
OPTIMISTIC = (
    "thresholds tuned on the out-of-fold predictions make the out-of-fold scores at those thresholds "
    "optimistic (the same rows chose them); mAP and ROC AUC do not depend on thresholds"
)

Thresholds = float | np.ndarray  # one for every class, or one per class (C,)


def predict_sets(probabilities: np.ndarray, thresholds: Thresholds, allow_empty: bool = True) -> np.ndarray:
    """(N, C) 0/1: a class is predicted when its probability reaches its threshold; without `allow_empty`
    a row with none gets its most probable class."""
    sets = (probabilities >= np.asarray(thresholds, dtype=float)).astype(int)
    if not allow_empty and len(sets):
        empty = np.flatnonzero(sets.sum(1) == 0)
        sets[empty, probabilities[empty].argmax(1)] = 1
    return sets


def _with_positives(targets: np.ndarray) -> np.ndarray:
    return np.flatnonzero(targets.sum(0) > 0)


def average_precisions(targets: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """scikit-learn's average precision of each class (C,); NaN for a class without a positive row."""
    out = np.full(targets.shape[1], np.nan)
    present = _with_positives(targets)
    if len(present):
        out[present] = average_precision_score(targets[:, present], probabilities[:, present], average=None)
    return out


def roc_aucs(targets: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """scikit-learn's ROC AUC of each class (C,); NaN for a class whose rows are all positive or all
    negative (no curve)."""
    both = np.flatnonzero((targets.sum(0) > 0) & (targets.sum(0) < len(targets)))
    out = np.full(targets.shape[1], np.nan)
    if len(both):
        out[both] = roc_auc_score(targets[:, both], probabilities[:, both], average=None)
    return out


def macro_map(targets: np.ndarray, probabilities: np.ndarray) -> float:
    """The mean of the classes' average precisions (classes without a positive row left out)."""
    ap = average_precisions(targets, probabilities)
    return float(np.nanmean(ap)) if np.isfinite(ap).any() else np.nan


def threshold_free_scores(targets: np.ndarray, probabilities: np.ndarray) -> dict[str, float]:
    """Macro and micro mAP and the mean ROC AUC over the classes that have one."""
    aucs = roc_aucs(targets, probabilities)
    return {
        "map": macro_map(targets, probabilities),
        "map_micro": float(average_precision_score(targets, probabilities, average="micro"))
        if len(_with_positives(targets))
        else np.nan,
        "roc_auc": float(np.nanmean(aucs)) if np.isfinite(aucs).any() else np.nan,
    }


def threshold_scores(
    targets: np.ndarray, probabilities: np.ndarray, thresholds: Thresholds, allow_empty: bool = True
) -> dict[str, float]:
    """F1 (samples, micro, macro), subset accuracy and Hamming loss of the sets the thresholds predict
    (`predict_sets`); macro-F1 over the classes with a positive row, NaN when none has one."""
    predicted = predict_sets(probabilities, thresholds, allow_empty)
    present = _with_positives(targets)
    return {
        # a row whose set is empty and predicted empty is right (samples)
        "f1_samples": float(f1_score(targets, predicted, average="samples", zero_division=1)),
        "f1_micro": float(f1_score(targets, predicted, average="micro", zero_division=0)),
        "f1_macro": float(f1_score(targets, predicted, labels=present, average="macro", zero_division=0))
        if len(present)
        else np.nan,
        "subset_accuracy": float(accuracy_score(targets, predicted)),
        "hamming_loss": float(hamming_loss(targets, predicted)),
    }


def multilabel_summary(
    targets: np.ndarray,
    probabilities: np.ndarray,
    thresholds: Thresholds = DEFAULT_THRESHOLD,
    allow_empty: bool = True,
) -> dict[str, float]:
    """Every score of the module: the threshold-free ones, then those at the thresholds."""
    return {
        **threshold_free_scores(targets, probabilities),
        **threshold_scores(targets, probabilities, thresholds, allow_empty),
    }


def _f1_per_threshold(targets: np.ndarray, probabilities: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """(thresholds, C) binary F1 of each class at each candidate threshold (0 when nothing is positive
    on either side), counted in one pass."""
    predicted = probabilities[None] >= grid[:, None, None]
    positive = targets.astype(bool)[None]
    tp = (predicted & positive).sum(1)
    fp = (predicted & ~positive).sum(1)
    fn = (~predicted & positive).sum(1)
    denominator = 2 * tp + fp + fn
    return np.divide(2 * tp, denominator, out=np.zeros(tp.shape, dtype=float), where=denominator > 0)


def _middle_of_best(grid: np.ndarray, scores: np.ndarray) -> float:
    """The median of the candidates that reach the best score: ties are common when the classes separate
    well, and the middle of the best range is the choice furthest from both failure sides."""
    best = grid[np.isclose(scores, scores.max())]
    return float(best[len(best) // 2])


def tune_global_threshold(
    targets: np.ndarray, probabilities: np.ndarray, grid: np.ndarray = THRESHOLD_GRID
) -> float:
    """The one threshold for every class that maximises micro-F1 over the grid."""
    predicted = probabilities[None] >= grid[:, None, None]
    positive = targets.astype(bool)[None]
    tp = (predicted & positive).sum((1, 2))
    wrong = (predicted ^ positive).sum((1, 2))
    micro = np.divide(2 * tp, 2 * tp + wrong, out=np.zeros(len(grid)), where=(2 * tp + wrong) > 0)
    return _middle_of_best(grid, micro)


def tune_class_thresholds(
    targets: np.ndarray, probabilities: np.ndarray, grid: np.ndarray = THRESHOLD_GRID
) -> np.ndarray:
    """Each class's threshold that maximises its own F1 over the grid; DEFAULT_THRESHOLD for a class
    without a positive row (nothing to tune on)."""
    f1 = _f1_per_threshold(targets, probabilities, grid)
    tuned = np.array([_middle_of_best(grid, f1[:, c]) for c in range(targets.shape[1])])
    return np.where(targets.sum(0) > 0, tuned, DEFAULT_THRESHOLD)


def threshold_table(
    targets: np.ndarray,
    probabilities: np.ndarray,
    candidates: Mapping[str, Thresholds],
    allow_empty: bool = True,
) -> pd.DataFrame:
    """The scores at each named set of thresholds, one row each (e.g. 0.5, global, per class)."""
    return pd.DataFrame(
        {name: threshold_scores(targets, probabilities, t, allow_empty) for name, t in candidates.items()}
    ).T.rename_axis("thresholds")


def multilabel_per_class(
    targets: np.ndarray,
    probabilities: np.ndarray,
    classes: Sequence[str],
    thresholds: Thresholds,
    allow_empty: bool = True,
) -> pd.DataFrame:
    """Per class: support (positive rows), AP, ROC AUC, F1 at the class's threshold, and that threshold."""
    per_class = np.broadcast_to(np.asarray(thresholds, dtype=float), (targets.shape[1],))
    predicted = predict_sets(probabilities, per_class, allow_empty)
    return pd.DataFrame(
        {
            "class": list(classes),
            "support": targets.sum(0).astype(int),
            "ap": average_precisions(targets, probabilities),
            "roc_auc": roc_aucs(targets, probabilities),
            "f1": f1_score(targets, predicted, average=None, zero_division=0),
            "threshold": per_class,
        }
    )


def worst_classes(targets: np.ndarray, probabilities: np.ndarray, n: int) -> np.ndarray:
    """The indices of the n classes with the lowest AP (classes without a positive row left out)."""
    ap = average_precisions(targets, probabilities)
    present = np.flatnonzero(np.isfinite(ap))
    return present[np.argsort(ap[present], kind="stable")][:n]


def binary_cross_entropies(targets: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """Each row's mean binary cross-entropy over the classes: how far its probabilities are from its set."""
    p = np.clip(probabilities, 1e-7, 1 - 1e-7)
    return -(targets * np.log(p) + (1 - targets) * np.log(1 - p)).mean(1)


def label_mistakes(
    targets: np.ndarray, predicted: np.ndarray, classes: Sequence[str], top: int = 10
) -> pd.DataFrame:
    """The classes most often missed (in the set, not predicted) or wrongly added (predicted, not in the
    set), most mistakes first: the multilabel counterpart of the most-confused pairs."""
    missed = ((targets == 1) & (predicted == 0)).sum(0)
    wrong = ((targets == 0) & (predicted == 1)).sum(0)
    table = pd.DataFrame(
        {"class": list(classes), "missed": missed, "wrong": wrong, "mistakes": missed + wrong}
    )
    table = table[table["mistakes"] > 0]
    return table.sort_values("mistakes", ascending=False, kind="stable").head(top).reset_index(drop=True)
