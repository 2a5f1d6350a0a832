"""04's tables equal scikit-learn on the same arrays; Grad-CAM maps are sized, scaled and refused sensibly."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import timm
import torch
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    log_loss,
    precision_recall_fscore_support,
    recall_score,
    top_k_accuracy_score,
)

from helpers.augment import InputPrep
from helpers.grad_cam import cam_layer, explain, grad_cam
from helpers.inference import Prediction
from helpers.reports import highest_losses, oof_frame, tta_table
from helpers.singlelabel_metrics import (
    most_confused,
    normalised_confusion,
    per_class_table,
    rare_classes,
    summary_metrics,
)
from helpers.tasks import SingleLabel

TASK = SingleLabel()
sample_losses = TASK.sample_losses


def highest_loss_indices(labels: np.ndarray, probabilities: np.ndarray, n: int) -> np.ndarray:
    """The rows 04's highest-loss grid shows, for single-label targets."""
    return highest_losses(sample_losses(labels, probabilities), n)


def random_case(n: int = 300, n_classes: int = 5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels and probabilities that agree with them more often than chance, so every metric is in (0, 1)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, n_classes, n)
    logits = rng.normal(size=(n, n_classes))
    logits[np.arange(n), labels] += 1.0
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return labels, probs


# --- summary and per-class metrics ---------------------------------------------------------------------


@pytest.mark.parametrize(("n_classes", "k"), [(3, 2), (5, 3), (10, 3)])
def test_summary_metrics_equal_sklearn(n_classes: int, k: int) -> None:
    labels, probs = random_case(n_classes=n_classes, seed=n_classes)
    metrics = summary_metrics(labels, probs)
    all_labels = np.arange(n_classes)
    expected = {
        "accuracy": accuracy_score(labels, probs.argmax(1)),
        f"top{k}_accuracy": top_k_accuracy_score(labels, probs, k=k, labels=all_labels),
        "macro_f1": f1_score(labels, probs.argmax(1), average="macro", labels=all_labels),
        "log_loss": log_loss(labels, probs, labels=all_labels),
    }
    assert metrics.keys() == expected.keys()
    for name, value in expected.items():
        assert metrics[name] == pytest.approx(value, abs=1e-9), name
    assert 0 < metrics["accuracy"] < metrics[f"top{k}_accuracy"] < 1


def test_summary_metrics_count_a_class_absent_from_the_labels() -> None:
    """Macro-F1 over all classes: a class no sample has (and none is predicted as) counts as F1 0."""
    labels, probs = random_case(n_classes=4, seed=3)
    keep = labels != 3
    labels, probs = labels[keep], probs[keep]
    probs[:, 3] = 0.0
    probs /= probs.sum(1, keepdims=True)
    metrics = summary_metrics(labels, probs)
    f1 = f1_score(labels, probs.argmax(1), average=None, labels=np.arange(4), zero_division=0)
    assert metrics["macro_f1"] == pytest.approx(f1.mean())


def test_summary_metrics_binary() -> None:
    labels, probs = random_case(n_classes=2, seed=2)
    metrics = summary_metrics(labels, probs)
    assert metrics["accuracy"] == pytest.approx(accuracy_score(labels, probs.argmax(1)))
    assert metrics["macro_f1"] == pytest.approx(f1_score(labels, probs.argmax(1), average="macro"))
    assert metrics["log_loss"] == pytest.approx(log_loss(labels, probs))
    for key in (k for k in metrics if k.startswith("top")):  # top-1 of 2 classes is the accuracy
        assert metrics[key] == pytest.approx(metrics["accuracy"]), key


def test_per_class_table_equals_sklearn() -> None:
    labels, probs = random_case(n_classes=4, seed=4)
    classes = ["w", "x", "y", "z"]
    table = per_class_table(labels, probs, classes)
    p, r, f, s = precision_recall_fscore_support(labels, probs.argmax(1), labels=np.arange(4))
    assert list(table.columns) == ["class", "precision", "recall", "f1", "support"]
    assert list(table["class"]) == classes
    np.testing.assert_allclose(table["precision"], p)
    np.testing.assert_allclose(table["recall"], r)
    np.testing.assert_allclose(table["f1"], f)
    np.testing.assert_array_equal(table["support"], s)
    assert table["support"].sum() == len(labels)


def test_per_class_table_lists_a_class_nobody_has_with_zeros() -> None:
    labels = np.array([0, 0, 1, 1])
    probs = np.eye(3)[[0, 1, 1, 1]]
    table = per_class_table(labels, probs, ["a", "b", "c"])
    assert table.loc[2].drop("class").tolist() == [0.0, 0.0, 0.0, 0]
    assert table.loc[0, "recall"] == 0.5 and table.loc[1, "precision"] == pytest.approx(2 / 3)


def test_tta_table_scores_each_view_and_the_chosen_mean() -> None:
    labels, probs = random_case(n=50, n_classes=3, seed=5)
    _, other = random_case(n=50, n_classes=3, seed=6)
    prediction = Prediction(np.stack([probs, other]), ["identity", "hflip"], np.arange(50))
    table = tta_table(TASK, labels, prediction, ["identity", "hflip"])
    assert list(table["views"]) == ["identity", "hflip", "identity + hflip (mean)"]
    expected = [
        accuracy_score(labels, probs.argmax(1)),
        accuracy_score(labels, other.argmax(1)),
        accuracy_score(labels, (probs + other).argmax(1)),
    ]
    np.testing.assert_allclose(table["accuracy"], expected)


# --- confusion ---------------------------------------------------------------------------------------------


def test_normalised_confusion_rows_sum_to_one() -> None:
    labels, probs = random_case(n_classes=5, seed=7)
    labels = np.where(labels == 4, 0, labels)  # class 4 has no sample: its row stays 0
    predicted = probs.argmax(1)
    matrix = normalised_confusion(labels, predicted, 5)
    assert matrix.shape == (5, 5)
    np.testing.assert_allclose(matrix[:4].sum(1), 1.0)
    np.testing.assert_array_equal(matrix[4], 0.0)
    counts = confusion_matrix(labels, predicted, labels=np.arange(5))
    np.testing.assert_allclose(matrix[:4], counts[:4] / counts[:4].sum(1, keepdims=True))


def test_most_confused_on_a_hand_built_case() -> None:
    classes = ["ant", "bee", "wasp"]
    pairs = [(1, 2)] * 3 + [(0, 1)] * 2 + [(2, 0)] + [(0, 0)] * 5 + [(1, 1)] * 4
    labels, predicted = (np.array(v) for v in zip(*pairs, strict=True))
    table = most_confused(labels, predicted, classes)
    assert list(table.columns) == ["true", "predicted", "count"]
    assert table.iloc[0].tolist() == ["bee", "wasp", 3]
    assert [tuple(r) for r in table.itertuples(index=False)] == [
        ("bee", "wasp", 3),
        ("ant", "bee", 2),
        ("wasp", "ant", 1),
    ]
    assert len(most_confused(labels, predicted, classes, top=1)) == 1
    assert most_confused(labels, labels, classes).empty  # no mistakes, no rows


# --- per-sample tables -------------------------------------------------------------------------------------


def test_sample_losses_are_minus_log_p_true() -> None:
    labels, probs = random_case(n_classes=4, seed=8)
    losses = sample_losses(labels, probs)
    np.testing.assert_allclose(losses, [-np.log(probs[i, y]) for i, y in enumerate(labels)])
    assert losses.mean() == pytest.approx(summary_metrics(labels, probs)["log_loss"])
    assert np.isfinite(sample_losses(np.array([0]), np.array([[0.0, 1.0]]))).all()  # clipped, not inf


def test_highest_loss_indices_pick_the_highest_losses_in_order() -> None:
    labels, probs = random_case(n_classes=4, seed=9)
    worst = highest_loss_indices(labels, probs, 10)
    losses = sample_losses(labels, probs)
    np.testing.assert_array_equal(worst, np.argsort(losses)[::-1][:10])
    assert (np.diff(losses[worst]) <= 0).all()
    assert losses[worst[-1]] >= np.delete(losses, worst).max()
    tied = highest_loss_indices(np.array([0, 0, 0]), np.array([[0.5, 0.5], [0.1, 0.9], [0.5, 0.5]]), 3)
    np.testing.assert_array_equal(tied, [1, 0, 2])  # ties keep the sample order
    assert len(highest_loss_indices(labels, probs, 1000)) == len(labels)


def test_mean_of_some_views_is_their_average() -> None:
    _, a = random_case(n=20, n_classes=3, seed=10)
    _, b = random_case(n=20, n_classes=3, seed=11)
    _, c = random_case(n=20, n_classes=3, seed=12)
    prediction = Prediction(np.stack([a, b, c]), ["identity", "hflip", "vflip"], np.arange(20))
    np.testing.assert_allclose(prediction.mean_of(["vflip", "identity"]), (a + c) / 2)
    np.testing.assert_allclose(prediction.mean_of(["hflip"]), b)
    np.testing.assert_allclose(prediction.probabilities, (a + b + c) / 3)


def test_oof_frame_columns_and_values() -> None:
    classes = ["cat", "dog", "fox"]
    labels = np.array([2, 0, 1])
    probs = np.array([[0.1, 0.2, 0.7], [0.3, 0.6, 0.1], [0.2, 0.5, 0.3]])
    ids = pd.Series(["c", "a", "b"], index=[7, 3, 5])  # a table slice's index must not leak in
    given = TASK.label_texts(labels, classes, " ")
    predicted = TASK.label_texts(TASK.decide(probs, None), classes, " ")
    frame = oof_frame(ids, [2, 0, 1], given, predicted, probs, classes)
    assert list(frame.columns) == ["id", "fold", "label", "predicted", "prob_cat", "prob_dog", "prob_fox"]
    assert frame["id"].tolist() == ["c", "a", "b"]
    assert frame["fold"].tolist() == [2, 0, 1]
    assert frame["label"].tolist() == ["fox", "cat", "dog"]
    assert frame["predicted"].tolist() == ["fox", "dog", "dog"]
    np.testing.assert_allclose(frame[["prob_cat", "prob_dog", "prob_fox"]], probs)


# --- Grad-CAM ----------------------------------------------------------------------------------------------


def tiny_model(name: str, **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model(name, num_classes=3, **kwargs).eval()


def image_batch(n: int = 2, side: int = 64) -> torch.Tensor:
    return torch.randn(n, 3, side, side, generator=torch.Generator().manual_seed(1))


def test_grad_cam_maps_a_conv_net() -> None:
    model = tiny_model("test_resnet")
    x = image_batch()
    cams = grad_cam(model, x)
    assert cams.shape == (2, 64, 64)
    assert cams.dtype == np.float32
    assert cams.min() >= 0.0 and cams.max() <= 1.0 + 1e-6
    targets = grad_cam(model, x, torch.tensor([0, 2]))
    assert targets.shape == (2, 64, 64)
    assert targets.min() >= 0.0 and targets.max() <= 1.0 + 1e-6


def test_explain_returns_images_and_maps_of_the_predicted_classes() -> None:
    model = tiny_model("test_resnet")
    x = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    prep = InputPrep((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    with torch.no_grad():
        probabilities = TASK.probabilities(model(prep(x, torch.device("cpu")))).numpy()
    pairs = TASK.cam_targets(probabilities, TASK.decide(probabilities, None))
    images, cams = explain(model, x, prep, pairs)
    predicted = np.array([c for _, c in pairs])
    assert images.shape == (3, 32, 32, 3) and images.dtype == np.uint8
    assert np.array_equal(images, x.permute(0, 2, 3, 1).numpy())
    assert cams.shape == (3, 32, 32)
    with torch.no_grad():
        normalised = (x.float() / 255 - 0.5) / 0.5
        np.testing.assert_array_equal(predicted, model(normalised).argmax(1).numpy())


def test_grad_cam_refuses_a_transformer() -> None:
    if "test_vit" not in timm.list_models("test_vit"):
        pytest.skip("this timm has no test_vit")
    model = tiny_model("test_vit", img_size=32)
    with pytest.raises(ValueError, match="spatial feature map"):
        grad_cam(model, image_batch(side=32))


def test_grad_cam_on_channels_last_features_is_right_or_refused() -> None:
    model = tiny_model("test_mambaout")
    x = image_batch(side=128)  # large enough that Grad-CAM reads the last stage, as forward_features gives it
    assert cam_layer(model, 128) == model.feature_info[-1]
    features = model.forward_features(x)
    if features.shape[-1] != model.num_features:  # pytest.fail is no AssertionError: not an expected failure
        pytest.fail(
            f"test_mambaout's features {tuple(features.shape)} are no longer NHWC: pick another model"
        )
    try:
        cams = grad_cam(model, x)
    except ValueError:
        return
    # the Grad-CAM of the same features read as NCHW
    features = features.detach().requires_grad_(True)
    logits = model.forward_head(features)
    logits.gather(1, logits.argmax(1)[:, None]).sum().backward()
    maps, grads = features.permute(0, 3, 1, 2), features.grad.permute(0, 3, 1, 2)
    cam = torch.relu((grads.mean((2, 3), keepdim=True) * maps).sum(1, keepdim=True))
    cam = torch.nn.functional.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    cam = cam / cam.flatten(1).max(1).values.clamp_min(1e-12)[:, None, None]
    np.testing.assert_allclose(cams, cam.detach().numpy(), atol=1e-5)


def test_cam_layer_keeps_a_map_wide_enough_for_small_inputs() -> None:
    model = tiny_model("test_resnet")
    assert cam_layer(model, 32)["reduction"] == 8  # 4 x 4 cells, where the last stage would be 1 x 1
    assert cam_layer(model, 256) == model.feature_info[-1]
    cams = grad_cam(model, image_batch(2, 32))
    assert cams.shape == (2, 32, 32)
    assert (cams.reshape(2, -1).std(1) > 0).all()  # a map, not a constant


# --- imbalanced classes: recall first ----------------------------------------------------------------------


def imbalanced_case(seed: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """60, 60, 40, 12 and 6 rows: classes 3 and 4 are rare (at most a third of the largest)."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(5), [60, 60, 40, 12, 6])
    logits = rng.normal(size=(len(labels), 5))
    logits[np.arange(len(labels)), labels] += 1.0
    return labels, np.exp(logits) / np.exp(logits).sum(1, keepdims=True)


def test_rare_classes_are_those_at_most_a_third_of_the_largest_when_imbalanced():
    assert rare_classes(np.array([60, 60, 40, 12, 6])).tolist() == [3, 4]
    assert rare_classes(np.array([30, 10, 11])).tolist() == [1]  # 30 / 10: imbalanced, exactly
    assert rare_classes(np.array([30, 11, 12])).size == 0  # 30 / 11 < 3: balanced enough
    assert rare_classes(np.array([30, 0, 12])).size == 0  # a class without rows has no recall to show
    assert rare_classes(np.array([5])).size == 0


def test_summary_metrics_add_the_rare_classes_recall_when_imbalanced():
    labels, probs = imbalanced_case()
    metrics = summary_metrics(labels, probs)
    recall = recall_score(labels, probs.argmax(1), labels=np.arange(5), average=None)
    assert metrics["rare_class_recall"] == pytest.approx(recall[[3, 4]].mean())
    assert recall[[3, 4]].mean() != pytest.approx(recall.mean())
    balanced_labels, balanced_probs = random_case(seed=6)
    assert "rare_class_recall" not in summary_metrics(balanced_labels, balanced_probs)


def test_per_class_table_puts_recall_first_and_lowest_first_when_imbalanced():
    labels, probs = imbalanced_case()
    classes = ["v", "w", "x", "y", "z"]
    table = per_class_table(labels, probs, classes)
    assert list(table.columns) == ["class", "recall", "precision", "f1", "support", "rare"]
    assert table["recall"].is_monotonic_increasing
    p, r, f, s = precision_recall_fscore_support(labels, probs.argmax(1), labels=np.arange(5))
    by_class = table.set_index("class").loc[classes]
    np.testing.assert_allclose(by_class["recall"], r)
    np.testing.assert_allclose(by_class["precision"], p)
    np.testing.assert_allclose(by_class["f1"], f)
    np.testing.assert_array_equal(by_class["support"], s)
    assert by_class["rare"].tolist() == [False, False, False, True, True]
