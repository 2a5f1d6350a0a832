"""The single-label task's scores and tables, on plain arrays: labels are class indices (N,), probabilities
(N, C) softmax outputs. Every score is scikit-learn's on the same arrays, so each number can be checked
against it; helpers.tasks.SingleLabel asks this module, as MultiLabel asks helpers.multilabel_metrics.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
    recall_score,
    top_k_accuracy_score,
)

# classes are imbalanced when the largest has at least this many times the rows of the smallest; the rare
# ones are then those with at most 1 / IMBALANCE_RATIO of the largest's rows
IMBALANCE_RATIO = 3.0


def rare_classes(support: np.ndarray, ratio: float = IMBALANCE_RATIO) -> np.ndarray:
    """The indices of the rare classes when the classes are imbalanced (see IMBALANCE_RATIO), from each
    class's count of rows; none when they are balanced. Classes without a row are left out: they have no
    recall to show."""
    present = support[support > 0]
    if len(present) < 2 or present.max() < ratio * present.min():
        return np.array([], dtype=np.int64)
    return np.flatnonzero((support > 0) & (support * ratio <= support.max()))


def summary_metrics(labels: np.ndarray, probabilities: np.ndarray, k: int = 3) -> dict[str, float]:
    """Accuracy, top-k accuracy, macro-F1 and mean log-loss of probabilities against true class indices;
    when the labels' classes are imbalanced, also `rare_class_recall`: the mean recall of the rare classes
    (`rare_classes`), the figure accuracy hides when the common classes dominate."""
    n_classes = probabilities.shape[1]
    predicted = probabilities.argmax(1)
    metrics = {"accuracy": accuracy(labels, probabilities)}
    if n_classes > 2:  # with two classes top-1 is the accuracy and top-2 trivially 1
        k = min(k, n_classes - 1)
        metrics[f"top{k}_accuracy"] = float(
            top_k_accuracy_score(labels, probabilities, k=k, labels=np.arange(n_classes))
        )
    metrics["macro_f1"] = float(
        f1_score(labels, predicted, average="macro", labels=np.arange(n_classes), zero_division=0)
    )
    metrics["log_loss"] = float(cross_entropies(labels, probabilities).mean())
    rare = rare_classes(np.bincount(labels, minlength=n_classes))
    if rare.size:
        recall = recall_score(labels, predicted, labels=rare, average=None, zero_division=0)
        metrics["rare_class_recall"] = float(recall.mean())
    return metrics


def per_class_table(labels: np.ndarray, probabilities: np.ndarray, classes: Sequence[str]) -> pd.DataFrame:
    """Precision, recall, F1 and support per class, in class order. When the classes are imbalanced
    (`rare_classes`), recall comes first, the lowest first, with a column marking the rare classes: the
    classes a model trained on imbalanced data misses are then at the top."""
    p, r, f, s = precision_recall_fscore_support(
        labels, probabilities.argmax(1), labels=np.arange(len(classes)), zero_division=0
    )
    table = pd.DataFrame({"class": list(classes), "precision": p, "recall": r, "f1": f, "support": s})
    rare = rare_classes(s)
    if not rare.size:
        return table
    table["rare"] = np.isin(np.arange(len(classes)), rare)
    table = table[["class", "recall", "precision", "f1", "support", "rare"]]
    return table.sort_values("recall", kind="stable").reset_index(drop=True)


def accuracy(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """The share of rows whose most probable class is their label."""
    return float(accuracy_score(labels, probabilities.argmax(1)))


def normalised_confusion(labels: np.ndarray, predicted: np.ndarray, n_classes: int) -> np.ndarray:
    """Confusion matrix with each true-class row summing to 1 (rows of absent classes stay 0)."""
    return confusion_matrix(labels, predicted, labels=np.arange(n_classes), normalize="true")


def most_confused(
    labels: np.ndarray, predicted: np.ndarray, classes: Sequence[str], top: int = 10
) -> pd.DataFrame:
    """The most frequent (true, predicted) pairs among the mistakes."""
    counts = confusion_matrix(labels, predicted, labels=np.arange(len(classes)))
    np.fill_diagonal(counts, 0)
    pairs = [(classes[t], classes[p], counts[t, p]) for t, p in zip(*np.nonzero(counts), strict=True)]
    table = pd.DataFrame(pairs, columns=["true", "predicted", "count"])
    return table.sort_values("count", ascending=False, kind="stable").head(top).reset_index(drop=True)


def cross_entropies(labels: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """Cross-entropy of each row's probabilities against its true class."""
    return -np.log(np.clip(probabilities[np.arange(len(labels)), labels], 1e-12, 1.0))
