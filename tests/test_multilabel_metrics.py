"""The multilabel scores equal scikit-learn's on the same arrays, and the tuned thresholds are the best F1
the grid offers."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    f1_score,
    hamming_loss,
    roc_auc_score,
)

from helpers.multilabel_metrics import (
    DEFAULT_THRESHOLD,
    THRESHOLD_GRID,
    binary_cross_entropies,
    multilabel_per_class,
    multilabel_summary,
    predict_sets,
    threshold_table,
    tune_class_thresholds,
    tune_global_threshold,
    worst_classes,
)


def synthetic(n: int = 200, c: int = 6, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random label sets (every class present) and noisy probabilities that lean towards them, with
    class-specific offsets so the best thresholds differ between classes."""
    rng = np.random.default_rng(seed)
    targets = (rng.random((n, c)) < 0.3).astype(int)
    targets[np.arange(c), np.arange(c)] = 1
    offsets = np.linspace(-1.5, 1.5, c)
    logits = 2.5 * (targets - 0.5) * 2 + rng.normal(0, 1.6, (n, c)) + offsets
    return targets, 1 / (1 + np.exp(-logits))


def test_summary_equals_sklearn():
    targets, probabilities = synthetic()
    thresholds = np.linspace(0.3, 0.7, targets.shape[1])
    predicted = (probabilities >= thresholds).astype(int)
    got = multilabel_summary(targets, probabilities, thresholds)
    assert got["map"] == pytest.approx(average_precision_score(targets, probabilities, average="macro"))
    assert got["map_micro"] == pytest.approx(average_precision_score(targets, probabilities, average="micro"))
    assert got["roc_auc"] == pytest.approx(roc_auc_score(targets, probabilities, average="macro"))
    for average in ("samples", "micro", "macro"):
        expected = f1_score(targets, predicted, average=average, zero_division=int(average == "samples"))
        assert got[f"f1_{average}"] == pytest.approx(expected)
    assert got["subset_accuracy"] == pytest.approx(accuracy_score(targets, predicted))
    assert got["hamming_loss"] == pytest.approx(hamming_loss(targets, predicted))


def test_an_empty_set_predicted_empty_counts_as_right_per_sample():
    targets = np.array([[0, 0], [1, 0]])
    probabilities = np.array([[0.1, 0.2], [0.9, 0.1]])
    assert multilabel_summary(targets, probabilities)["f1_samples"] == 1


def test_the_default_threshold_is_one_half_and_inclusive():
    probabilities = np.array([[0.5, 0.49, 0.9]])
    np.testing.assert_array_equal(predict_sets(probabilities, DEFAULT_THRESHOLD), [[1, 0, 1]])
    targets = np.array([[1, 0, 0]])
    assert multilabel_summary(targets, probabilities)["hamming_loss"] == pytest.approx(1 / 3)


def test_a_class_without_positives_is_left_out_of_the_means():
    targets, probabilities = synthetic(c=4)
    targets[:, 2] = 0
    got = multilabel_summary(targets, probabilities)
    keep = [0, 1, 3]
    assert got["map"] == pytest.approx(average_precision_score(targets[:, keep], probabilities[:, keep]))
    assert got["roc_auc"] == pytest.approx(roc_auc_score(targets[:, keep], probabilities[:, keep]))
    table = multilabel_per_class(targets, probabilities, list("abcd"), 0.5)
    assert np.isnan(table.loc[2, "ap"]) and np.isnan(table.loc[2, "roc_auc"])
    assert table.loc[2, "support"] == 0


def test_per_class_table_equals_sklearn():
    targets, probabilities = synthetic()
    thresholds = tune_class_thresholds(targets, probabilities)
    table = multilabel_per_class(targets, probabilities, list("abcdef"), thresholds)
    assert list(table.columns) == ["class", "support", "ap", "roc_auc", "f1", "threshold"]
    np.testing.assert_array_equal(table["support"], targets.sum(0))
    np.testing.assert_allclose(table["ap"], average_precision_score(targets, probabilities, average=None))
    np.testing.assert_allclose(table["roc_auc"], roc_auc_score(targets, probabilities, average=None))
    np.testing.assert_allclose(
        table["f1"], f1_score(targets, (probabilities >= thresholds).astype(int), average=None)
    )
    np.testing.assert_array_equal(table["threshold"], thresholds)


def test_class_thresholds_reach_the_best_f1_of_the_grid():
    targets, probabilities = synthetic()
    thresholds = tune_class_thresholds(targets, probabilities)
    assert len(set(thresholds)) > 1, "the synthetic classes were built to need different thresholds"
    for c, t in enumerate(thresholds):
        assert t in THRESHOLD_GRID
        best = max(f1_score(targets[:, c], probabilities[:, c] >= g) for g in THRESHOLD_GRID)
        assert f1_score(targets[:, c], probabilities[:, c] >= t) == pytest.approx(best)


def test_global_threshold_reaches_the_best_micro_f1_of_the_grid():
    targets, probabilities = synthetic()
    t = tune_global_threshold(targets, probabilities)
    best = max(f1_score(targets, probabilities >= g, average="micro") for g in THRESHOLD_GRID)
    assert f1_score(targets, probabilities >= t, average="micro") == pytest.approx(best)


def test_tuned_thresholds_beat_one_half_on_shifted_probabilities():
    """Probabilities shifted well below 0.5 for every positive: 0.5 finds nothing, tuning finds them."""
    targets, _ = synthetic()
    probabilities = np.where(targets == 1, 0.3, 0.1)
    table = threshold_table(
        targets,
        probabilities,
        {
            "0.5": DEFAULT_THRESHOLD,
            "global": tune_global_threshold(targets, probabilities),
            "per class": tune_class_thresholds(targets, probabilities),
        },
    )
    assert list(table.index) == ["0.5", "global", "per class"]
    assert table.loc["0.5", "f1_micro"] == 0
    assert table.loc["global", "f1_micro"] == table.loc["per class", "f1_micro"] == 1
    # ties are broken in the middle of the best range, not at its edge
    assert 0.15 <= tune_global_threshold(targets, probabilities) <= 0.25


def test_a_class_without_positives_keeps_the_default_threshold():
    targets, probabilities = synthetic(c=3)
    targets[:, 1] = 0
    assert tune_class_thresholds(targets, probabilities)[1] == DEFAULT_THRESHOLD


def test_worst_classes_are_the_lowest_ap_first():
    targets, probabilities = synthetic()
    ap = average_precision_score(targets, probabilities, average=None)
    np.testing.assert_array_equal(worst_classes(targets, probabilities, 3), np.argsort(ap)[:3])


def test_sample_bce_is_the_mean_binary_cross_entropy():
    targets = np.array([[1, 0], [0, 0]])
    probabilities = np.array([[0.8, 0.1], [0.5, 0.5]])
    expected = [-(np.log(0.8) + np.log(0.9)) / 2, -np.log(0.5)]
    np.testing.assert_allclose(binary_cross_entropies(targets, probabilities), expected)
