"""The tables behind 04_evaluate: scikit-learn's metrics on OOF probabilities, TTA per view, errors.

Everything takes plain arrays (labels as class indices, probabilities as N x C; for the multilabel task
multi-hot targets and predicted sets as N x C 0/1, scored by helpers.multilabel_metrics), so each number
can be checked against scikit-learn on the same arrays.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
    recall_score,
    top_k_accuracy_score,
)
from torch import nn

from helpers.augment import InputPrep, to_hwc
from helpers.inference import Prediction
from helpers.multilabel_metrics import macro_map

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
    true_p = np.clip(probabilities[np.arange(len(labels)), labels], 1e-12, 1.0)
    metrics = {"accuracy": float(accuracy_score(labels, predicted))}
    if n_classes > 2:  # with two classes top-1 is the accuracy and top-2 trivially 1
        k = min(k, n_classes - 1)
        metrics[f"top{k}_accuracy"] = float(
            top_k_accuracy_score(labels, probabilities, k=k, labels=np.arange(n_classes))
        )
    metrics["macro_f1"] = float(
        f1_score(labels, predicted, average="macro", labels=np.arange(n_classes), zero_division=0)
    )
    metrics["log_loss"] = float(-np.log(true_p).mean())
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


def tta_table(labels: np.ndarray, prediction: Prediction, chosen: Sequence[str]) -> pd.DataFrame:
    """Accuracy of each view alone and of the chosen views averaged."""
    rows = [
        {"views": v, "accuracy": accuracy_score(labels, prediction.view(v).argmax(1))}
        for v in prediction.views
    ]
    combined = prediction.mean_of(chosen)
    rows.append(
        {"views": " + ".join(chosen) + " (mean)", "accuracy": accuracy_score(labels, combined.argmax(1))}
    )
    return pd.DataFrame(rows)


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


def sample_losses(labels: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """Cross-entropy of each sample's probabilities against its true class."""
    return -np.log(np.clip(probabilities[np.arange(len(labels)), labels], 1e-12, 1.0))


def highest_loss_indices(labels: np.ndarray, probabilities: np.ndarray, n: int) -> np.ndarray:
    """The indices of the n samples with the highest loss, highest first (ties in sample order): the images
    worth a look, for wrong labels or hard cases."""
    return np.argsort(-sample_losses(labels, probabilities), kind="stable")[:n]


def oof_frame(
    ids: Sequence[str],
    folds: Sequence[int],
    labels: np.ndarray,
    probabilities: np.ndarray,
    classes: Sequence[str],
) -> pd.DataFrame:
    """id, fold, true and predicted class names, and a probability column per class."""
    frame = pd.DataFrame(
        {
            "id": list(ids),
            "fold": list(folds),
            "label": np.asarray(classes)[labels],
            "predicted": np.asarray(classes)[probabilities.argmax(1)],
        }
    )
    probs = pd.DataFrame(probabilities, columns=[f"prob_{c}" for c in classes])
    return pd.concat([frame, probs], axis=1)


def cam_layer(model: nn.Module, side: int, min_side: int = 4) -> dict:
    """The deepest feature stage (timm's `feature_info`) whose map is still at least min_side cells wide.

    The last stage of a CNN is 1x1 on small inputs (32 px / 32), which would make every map a constant.
    """
    stages = list(getattr(model, "feature_info", None) or [])
    if not stages:
        raise ValueError(f"Grad-CAM needs timm's feature_info, which {type(model).__name__} lacks")
    wide = [f for f in stages if side // f["reduction"] >= min_side]
    return (wide or stages[:1])[-1]


def grad_cam(model: nn.Module, x: torch.Tensor, target: torch.Tensor | None = None) -> np.ndarray:
    """Grad-CAM heat maps (N, H, W) in [0, 1] over a spatial feature map of a timm model (NCHW or NHWC).

    The gradient of the target class score (the predicted class when None) weights each feature channel.
    """
    model.eval()
    stage = cam_layer(model, min(x.shape[-2:]))
    captured: list[torch.Tensor] = []

    def keep(_module, _inputs, output):
        output.retain_grad()
        captured.append(output)

    handle = model.get_submodule(stage["module"]).register_forward_hook(keep)
    try:
        with torch.enable_grad():
            logits = model(x)
            target = logits.argmax(1) if target is None else target
            logits.gather(1, target[:, None]).sum().backward()
    finally:
        handle.remove()
    features = captured[-1]
    if features.dim() != 4:
        raise ValueError(
            f"Grad-CAM needs a spatial feature map; {type(model).__name__}'s {stage['module']} "
            f"gives shape {tuple(features.shape)}"
        )
    feats, grads = features, features.grad
    if features.shape[1] != stage["num_chs"] and features.shape[-1] == stage["num_chs"]:  # NHWC
        feats, grads = features.permute(0, 3, 1, 2), grads.permute(0, 3, 1, 2)
    weights = grads.mean(dim=(2, 3), keepdim=True)
    cam = torch.relu((weights * feats).sum(1, keepdim=True))
    cam = torch.nn.functional.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    peak = cam.flatten(1).max(1).values.clamp_min(1e-12)[:, None, None]
    return (cam / peak).detach().cpu().numpy()


def explain_batch(
    model: nn.Module, x: torch.Tensor, prep: InputPrep
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Images (NHWC uint8), Grad-CAM maps and predicted class indices for a uint8 batch from a loader."""
    inputs = prep(x, next(model.parameters()).device)
    cams = grad_cam(model, inputs)
    with torch.no_grad():
        predicted = model(inputs).argmax(1).cpu().numpy()
    return to_hwc(x), cams, predicted


# --- the multilabel task: label sets ----------------------------------------------------------------------


def label_set_names(predicted: np.ndarray, classes: Sequence[str], sep: str) -> list[str]:
    """Each row's predicted classes (an (N, C) 0/1 array) as names joined by sep, in class order; "" for an
    empty set."""
    names = np.asarray(classes, dtype=object)
    return [sep.join(names[np.flatnonzero(row)]) for row in predicted]


def multilabel_oof_frame(
    ids: Sequence[str],
    folds: Sequence[int],
    written: Sequence[str],
    predicted: np.ndarray,
    probabilities: np.ndarray,
    classes: Sequence[str],
    sep: str,
) -> pd.DataFrame:
    """id, fold, the label set as the data wrote it, the predicted set (joined by the run's label_sep) and a
    probability column per class."""
    frame = pd.DataFrame(
        {
            "id": list(ids),
            "fold": list(folds),
            "label": list(written),
            "predicted": label_set_names(predicted, classes, sep),
        }
    )
    probs = pd.DataFrame(probabilities, columns=[f"prob_{c}" for c in classes])
    return pd.concat([frame, probs], axis=1)


def multilabel_tta_table(targets: np.ndarray, prediction: Prediction, chosen: Sequence[str]) -> pd.DataFrame:
    """Macro mAP of each view alone and of the chosen views averaged."""
    rows = [{"views": v, "map": macro_map(targets, prediction.view(v))} for v in prediction.views]
    rows.append(
        {"views": " + ".join(chosen) + " (mean)", "map": macro_map(targets, prediction.mean_of(chosen))}
    )
    return pd.DataFrame(rows)


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


def explain_labels(
    model: nn.Module, x: torch.Tensor, prep: InputPrep, pairs: Sequence[tuple[int, int]]
) -> tuple[np.ndarray, np.ndarray]:
    """Grad-CAM of (image, class) pairs of a uint8 batch: each image once per class asked for. Returns the
    images (NHWC uint8, one per pair) and their maps."""
    images = torch.tensor([i for i, _ in pairs])
    inputs = prep(x[images], next(model.parameters()).device)
    cams = grad_cam(model, inputs, torch.tensor([c for _, c in pairs], device=inputs.device))
    return to_hwc(x[images]), cams
