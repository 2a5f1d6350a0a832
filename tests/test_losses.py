"""helpers.losses: each loss against torch's, timm's or scikit-learn's own, or a hand computation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from sklearn.utils.class_weight import compute_class_weight
from timm.loss import AsymmetricLossMultiLabel
from torch import nn
from train_fixtures import tiny_config

from helpers.config import Config, ConfigError
from helpers.dataset import prepare_dataset
from helpers.losses import FocalLoss, SmoothedBCEWithLogits
from helpers.model import create_model
from helpers.run_folder import RunFolder
from helpers.tasks import task_named
from helpers.train import build_parts, fold_targets, train_fold

CPU = torch.device("cpu")

CLASSES = 4
# an imbalanced fold: 12, 6, 3 and 1 rows
TRAIN = np.array([0] * 12 + [1] * 6 + [2] * 3 + [3], dtype=np.int64)
MULTI_HOT = np.array(
    [[1, 0, 0], [1, 1, 0], [1, 0, 0], [1, 0, 1], [0, 1, 0], [1, 0, 0], [0, 0, 1], [1, 0, 0]], dtype=np.float32
)


def batch(n: int = 16, classes: int = CLASSES, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, classes, generator=g) * 2, torch.randint(0, classes, (n,), generator=g)


def soft_targets(n: int = 16, classes: int = CLASSES, seed: int = 1) -> torch.Tensor:
    """Rows that sum to 1, as mixup/cutmix make them."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, classes, generator=g).softmax(1)


def loss_of(mixed: bool = False, task: str = "multiclass", targets: np.ndarray = TRAIN, **settings):
    classes = targets.shape[1] if targets.ndim == 2 else CLASSES
    cfg = Config(**settings)
    smoothing = 0.0 if mixed else cfg.label_smoothing  # mixup smooths the targets it mixes
    balanced = cfg.class_weights == "balanced"
    return task_named(task).loss(cfg.loss, smoothing, cfg.focal_gamma, balanced, targets, classes)


# --- multiclass: cross-entropy with balanced class weights ---------------------------------------------


def test_balanced_weights_are_scikit_learns_and_the_loss_is_torchs_weighted_cross_entropy():
    loss = loss_of(class_weights="balanced", label_smoothing=0.0)
    expected = compute_class_weight("balanced", classes=np.arange(CLASSES), y=TRAIN)
    np.testing.assert_allclose(loss.weight.numpy(), expected, rtol=1e-6)
    np.testing.assert_allclose(expected, len(TRAIN) / (CLASSES * np.array([12, 6, 3, 1])))  # by hand
    logits, target = batch()
    reference = nn.CrossEntropyLoss(weight=torch.tensor(expected, dtype=torch.float32))(logits, target)
    assert loss(logits, target) == pytest.approx(reference.item(), rel=1e-6)
    assert loss(logits, target) != pytest.approx(F.cross_entropy(logits, target).item(), rel=1e-3)


def test_weighted_cross_entropy_with_smoothing_and_with_soft_targets_is_torchs():
    weight = torch.tensor(compute_class_weight("balanced", classes=np.arange(CLASSES), y=TRAIN)).float()
    logits, target = batch()
    smoothed = loss_of(class_weights="balanced", label_smoothing=0.1)
    reference = F.cross_entropy(logits, target, weight=weight, label_smoothing=0.1)
    assert smoothed(logits, target) == pytest.approx(reference.item(), rel=1e-6)
    mixed, soft = loss_of(True, class_weights="balanced", label_smoothing=0.1), soft_targets()
    by_hand = -(soft * weight * logits.log_softmax(1)).sum(1).mean()  # soft targets: mean over rows
    assert mixed(logits, soft) == pytest.approx(by_hand.item(), rel=1e-6)


def test_without_class_weights_the_losses_are_the_plain_ones():
    logits, target = batch()
    assert loss_of(label_smoothing=0.1)(logits, target) == pytest.approx(
        F.cross_entropy(logits, target, label_smoothing=0.1).item(), rel=1e-6
    )
    soft = soft_targets()
    assert loss_of(True)(logits, soft) == pytest.approx(-(soft * logits.log_softmax(1)).sum(1).mean().item())


def test_a_class_without_training_rows_is_an_error_naming_it():
    with pytest.raises(ValueError, match=r"class index\(es\) \[3\].*class_weights='none'"):
        loss_of(targets=TRAIN[TRAIN != 3], class_weights="balanced")
    loss_of(targets=TRAIN[TRAIN != 3])  # unweighted, a missing class is no problem


# --- multiclass: focal loss --------------------------------------------------------------------------------


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("weighted", [False, True])
def test_focal_with_gamma_0_is_the_cross_entropy(smoothing, weighted):
    settings = dict(loss="focal", focal_gamma=0.0, label_smoothing=smoothing)
    settings["class_weights"] = "balanced" if weighted else "none"
    weight = loss_of(**settings).weight
    logits, target = batch()
    expected = F.cross_entropy(logits, target, weight=weight, label_smoothing=smoothing)
    assert loss_of(**settings)(logits, target) == pytest.approx(expected.item(), rel=1e-6)
    soft = soft_targets()
    expected_soft = F.cross_entropy(logits, soft, weight=weight)
    assert loss_of(True, **settings)(logits, soft) == pytest.approx(expected_soft.item(), rel=1e-6)


def focal_by_hand(logits, target, gamma, smoothing=0.0, weight=None) -> float:
    """The focal loss in numpy, one term at a time."""
    z = logits.double().numpy()
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    n, c = p.shape
    w = np.ones(c) if weight is None else weight.double().numpy()
    if target.dim() == 1:
        t = np.full((n, c), smoothing / c)
        t[np.arange(n), target.numpy()] += 1 - smoothing
        total = w[target.numpy()].sum()
    else:
        t, total = target.double().numpy(), n
    loss = 0.0
    for i in range(n):
        for k in range(c):
            loss -= w[k] * t[i, k] * (1 - p[i, k]) ** gamma * np.log(p[i, k])
    return loss / total


@pytest.mark.parametrize("gamma", [0.5, 2.0])
def test_focal_matches_a_hand_computation(gamma):
    logits, target = batch()
    weight = torch.tensor([0.5, 1.0, 2.0, 4.0])
    hard = FocalLoss(gamma, 0.1, weight)(logits, target)
    assert hard.item() == pytest.approx(focal_by_hand(logits, target, gamma, 0.1, weight), rel=1e-5)
    soft = soft_targets()
    assert FocalLoss(gamma)(logits, soft).item() == pytest.approx(
        focal_by_hand(logits, soft, gamma), rel=1e-5
    )
    # the focusing term counts confidently right images less than the cross-entropy does
    assert FocalLoss(gamma)(logits, target) < F.cross_entropy(logits, target)


def test_focal_has_finite_gradients_on_saturated_logits():
    logits = torch.tensor([[80.0, 0.0, 0.0], [0.0, 0.0, 0.0]], requires_grad=True)
    FocalLoss(0.5)(logits, torch.tensor([0, 1])).backward()
    assert torch.isfinite(logits.grad).all()


# --- multilabel: BCE with pos_weight, asymmetric loss -----------------------------------------------------


def test_balanced_pos_weight_is_negatives_over_positives_and_the_loss_is_torchs():
    loss = loss_of(task="multilabel", targets=MULTI_HOT, class_weights="balanced", label_smoothing=0.0)
    positives = MULTI_HOT.sum(0)
    expected = (len(MULTI_HOT) - positives) / positives  # 6 positives of 8: 2/6; 2: 6/2; 2: 6/2
    np.testing.assert_allclose(loss.pos_weight.numpy(), expected, rtol=1e-6)
    g = torch.Generator().manual_seed(0)
    logits, target = torch.randn(8, 3, generator=g), torch.from_numpy(MULTI_HOT)
    reference = nn.BCEWithLogitsLoss(pos_weight=torch.tensor(expected))(logits, target)
    assert loss(logits, target) == pytest.approx(reference.item(), rel=1e-6)
    smoothed = loss_of(task="multilabel", targets=MULTI_HOT, class_weights="balanced", label_smoothing=0.2)
    reference = F.binary_cross_entropy_with_logits(
        logits, target * 0.8 + 0.1, pos_weight=torch.tensor(expected)
    )
    assert smoothed(logits, target) == pytest.approx(reference.item(), rel=1e-6)
    assert isinstance(loss_of(task="multilabel", targets=MULTI_HOT), SmoothedBCEWithLogits)
    assert loss_of(task="multilabel", targets=MULTI_HOT).pos_weight is None


@pytest.mark.parametrize(
    ("column", "what"), [(np.zeros(8), "positive in no training row"), (np.ones(8), "positive in every")]
)
def test_a_class_that_is_never_or_always_positive_has_no_pos_weight(column, what):
    targets = np.column_stack([MULTI_HOT, column]).astype(np.float32)
    with pytest.raises(ValueError, match=rf"class index\(es\) \[3\].*{what}"):
        loss_of(task="multilabel", targets=targets, class_weights="balanced")


def test_asl_is_timms_asymmetric_loss_with_the_runs_smoothing_and_pos_weight():
    g = torch.Generator().manual_seed(2)
    logits, target = torch.randn(8, 3, generator=g) * 3, torch.from_numpy(MULTI_HOT)
    loss = loss_of(task="multilabel", targets=MULTI_HOT, loss="asl", class_weights="balanced")
    assert isinstance(loss, AsymmetricLossMultiLabel)
    reference = AsymmetricLossMultiLabel(smoothing=0.1, reduction="mean", pos_weight=loss.pos_weight)
    assert loss(logits, target) == pytest.approx(reference(logits, target).item(), rel=1e-6)
    mixed = loss_of(True, task="multilabel", targets=MULTI_HOT, loss="asl")
    assert mixed.smoothing == 0.0 and mixed.pos_weight is None
    # with its focusing and clipping off, the asymmetric loss is the plain BCE (same scale as the default)
    plain = AsymmetricLossMultiLabel(gamma_neg=0, gamma_pos=0, clip=0, reduction=mixed.reduction)
    assert plain(logits, target) == pytest.approx(
        F.binary_cross_entropy_with_logits(logits, target).item(), rel=1e-5
    )


# --- settings and devices ----------------------------------------------------------------------------------


def test_class_weights_move_with_the_loss():
    for loss in (
        loss_of(class_weights="balanced"),
        loss_of(loss="focal", class_weights="balanced"),
        loss_of(task="multilabel", targets=MULTI_HOT, class_weights="balanced"),
        loss_of(task="multilabel", targets=MULTI_HOT, loss="asl", class_weights="balanced"),
    ):
        buffers = [b for b in loss.buffers() if b is not None]
        assert buffers, type(loss).__name__
        assert all(b.device.type == "meta" for b in loss.to("meta").buffers()), type(loss).__name__


def test_a_loss_of_the_other_task_is_an_error():
    with pytest.raises(ConfigError, match="focal is for multiclass"):
        Config(loss="focal", task="multilabel")
    with pytest.raises(ConfigError, match="asl is for multilabel"):
        Config(loss="asl", task="multiclass")
    with pytest.raises(ConfigError, match="focal_gamma"):
        Config(focal_gamma=-1.0)
    # task "auto" is resolved when the data is read, so the loss checks the resolved task too
    with pytest.raises(ValueError, match="loss='focal' is for multiclass"):
        loss_of(task="multilabel", targets=MULTI_HOT, loss="focal")
    with pytest.raises(ValueError, match="loss='asl' is for multilabel"):
        loss_of(loss="asl")


# --- wired into training -----------------------------------------------------------------------------------


def test_training_weights_its_loss_by_the_folds_own_training_rows(outputs, make_csv_dataset):
    data = make_csv_dataset(per_class=9)
    table = pd.read_csv(data / "train.csv")
    table.drop(table.index[table["label"] == "fox"][3:]).to_csv(data / "train.csv", index=False)  # 9, 9, 3
    cfg = tiny_config(data, class_weights="balanced", loss="focal", sampler="balanced")
    info = prepare_dataset(cfg)
    for fold in (0, 1):
        parts = build_parts(cfg, create_model("test_resnet", 3), 3, 1, CPU, fold_targets(info, fold))
        trained_on = info.table.loc[info.table["fold"] != fold, "label_idx"].to_numpy()
        expected = compute_class_weight("balanced", classes=np.arange(3), y=trained_on)
        assert isinstance(parts.loss_fn, FocalLoss)
        np.testing.assert_allclose(parts.loss_fn.weight.numpy(), expected, rtol=1e-6)
    metrics = train_fold(cfg, info, 0, RunFolder.of(cfg).create(), CPU)
    assert np.isfinite(metrics["train_loss"]).all() and len(metrics) == cfg.epochs
