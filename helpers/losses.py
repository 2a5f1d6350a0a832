"""The losses a run trains with and the class weights `class_weights="balanced"` means; the run's task
object (helpers.tasks.Task.loss) picks among them from the values of `loss`, `label_smoothing`,
`focal_gamma` and `class_weights`.

Every loss takes the model's logits and the batch's targets as the loop hands them over: class indices, or
a float (N, C) array of soft targets once mixup/cutmix has mixed them (multiclass: smoothed one-hot rows;
multilabel: mixed multi-hot rows).

`class_weights="balanced"` is counted on the fold's training rows and means what the task's loss can take:
multiclass, a weight per class n / (C * count) in the cross-entropy (scikit-learn's
`compute_class_weight("balanced")`), so every class weighs as much in total; multilabel, a `pos_weight`
per class of negatives / positives in the binary cross-entropy (timm's `compute_class_weights`, "neg_pos"),
so each class's positive and negative terms weigh alike. Weights are buffers of the loss module, so they
move with `.to(device)`.

Distillation (helpers.distill) uses timm's `LogitDistillationTask` as it is for softmax outputs (its
temperature-scaled KL divergence); for sigmoid outputs, which timm's task does not cover,
`SigmoidDistillationTask` keeps timm's task (teacher wrapper, weights, temperature) and replaces its KL
with timm's `BinaryCrossEntropy` per class against the teacher's temperature-scaled sigmoid probabilities:
each class of a multi-label image is its own yes/no distribution, so a softmax across the classes would
make them compete.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.utils.class_weight import compute_class_weight
from timm.loss import BinaryCrossEntropy, compute_class_weights
from timm.task import LogitDistillationTask
from torch import nn

from helpers.config import ConfigError


class SmoothedBCEWithLogits(nn.Module):
    """Binary cross-entropy on logits with each 0/1 target pulled towards 0.5 by `smoothing / 2`, and an
    optional weight per class on the positive term (`pos_weight`, as torch's BCEWithLogitsLoss)."""

    def __init__(self, smoothing: float = 0.0, pos_weight: torch.Tensor | None = None) -> None:
        super().__init__()
        self.smoothing = smoothing
        self.register_buffer("pos_weight", pos_weight)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        target = target.float() * (1.0 - self.smoothing) + 0.5 * self.smoothing
        return F.binary_cross_entropy_with_logits(logits.float(), target, pos_weight=self.pos_weight)


class FocalLoss(nn.Module):
    """Multiclass focal loss (Lin et al., 2017): the softmax cross-entropy with each class's term scaled by
    (1 - p_class) ** gamma, so confidently right images count less and hard ones more.

    Targets are class indices (smoothed by `label_smoothing` as torch's cross-entropy does) or soft (N, C)
    rows from mixup/cutmix. `weight` scales each class's term. The mean follows torch's `cross_entropy`:
    over the weights of the rows' classes for class indices, over the rows for soft targets; so with
    gamma 0 this is exactly `F.cross_entropy` with the same weight and smoothing. (timm's single-label
    asymmetric loss takes neither soft targets nor class weights, hence this one.)
    """

    def __init__(
        self, gamma: float, label_smoothing: float = 0.0, weight: torch.Tensor | None = None
    ) -> None:
        super().__init__()
        self.gamma, self.label_smoothing = gamma, label_smoothing
        self.register_buffer("weight", weight)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        log_p = logits.float().log_softmax(dim=1)
        n, classes = log_p.shape
        if target.dim() == 1:
            soft = F.one_hot(target, classes).float() * (1.0 - self.label_smoothing)
            soft = soft + self.label_smoothing / classes
            total = self.weight[target].sum() if self.weight is not None else n
        else:
            soft, total = target.float(), n
        terms = soft * log_p
        if self.gamma:
            # clamped above 0: (1 - p) ** gamma has an infinite slope at p = 1 when gamma < 1
            terms = terms * (1.0 - log_p.exp()).clamp_min(1e-12).pow(self.gamma)
        if self.weight is not None:
            terms = terms * self.weight
        return -terms.sum() / total


def balanced_class_weights(train_targets: np.ndarray, num_classes: int) -> torch.Tensor:
    """Multiclass: n / (num_classes * count) per class from the training rows' class indices (scikit-learn's
    `compute_class_weight("balanced")`)."""
    counts = np.bincount(train_targets, minlength=num_classes)
    _require_every_class(np.flatnonzero(counts == 0), "has no training row")
    weights = compute_class_weight("balanced", classes=np.arange(num_classes), y=train_targets)
    return torch.tensor(weights, dtype=torch.float32)


def balanced_pos_weight(train_targets: np.ndarray) -> torch.Tensor:
    """Multilabel: negatives / positives per class from the training rows' multi-hot targets (timm's
    `compute_class_weights(..., "neg_pos")`)."""
    positives = train_targets.sum(axis=0)
    _require_every_class(np.flatnonzero(positives == 0), "is positive in no training row")
    _require_every_class(
        np.flatnonzero(positives == len(train_targets)), "is positive in every training row (pos_weight 0)"
    )
    _, weights = compute_class_weights(torch.from_numpy(positives), len(train_targets), method="neg_pos")
    return weights


def _require_every_class(bad: np.ndarray, what: str) -> None:
    if bad.size:
        raise ConfigError(
            f"class_weights='balanced': class index(es) {bad.tolist()} (in the order of the dataset's "
            f"classes.json) {what} in this fold, so its weight is undefined. Set class_weights='none', "
            "or merge or drop that class."
        )


class SigmoidDistillationTask(LogitDistillationTask):
    """timm's logit distillation for a sigmoid per class: the distillation term is the binary cross-entropy
    of the student's logits / T against sigmoid(teacher logits / T), times T^2 (as timm scales its KL, so
    the gradient's size does not shrink with T), averaged over images and classes."""

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        student_logits = self.trainable_module(input)
        task_loss = self.criterion(student_logits, target)
        with torch.no_grad():
            input_kd = self.teacher.normalize_input(input, self.student_mean, self.student_std)
            teacher_logits = self.teacher(input_kd.detach(), return_features=False)
        t = self.temperature
        soft = (teacher_logits.float() / t).sigmoid()
        kd_loss = BinaryCrossEntropy(smoothing=0.0)(student_logits.float() / t, soft) * t**2
        total = self.task_loss_weight * task_loss + self.distill_loss_weight * kd_loss
        return {"loss": total, "output": student_logits, "task_loss": task_loss, "kd_loss": kd_loss}
