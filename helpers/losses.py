"""The training loss of a run, for either task: the one place that reads `loss`, `label_smoothing` and the
class-imbalance settings.

Every loss takes the model's logits and the batch's targets as the loop hands them over: class indices, or
a float (N, C) array of soft targets once mixup/cutmix has mixed them (multiclass: smoothed one-hot rows;
multilabel: mixed multi-hot rows).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.loss import SoftTargetCrossEntropy
from torch import nn

from helpers.config import Config
from helpers.targets import Task


class SmoothedBCEWithLogits(nn.Module):
    """Binary cross-entropy on logits with each 0/1 target pulled towards 0.5 by `smoothing / 2`."""

    def __init__(self, smoothing: float = 0.0) -> None:
        super().__init__()
        self.smoothing = smoothing

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        target = target.float() * (1.0 - self.smoothing) + 0.5 * self.smoothing
        return F.binary_cross_entropy_with_logits(logits.float(), target)


def build_loss(cfg: Config, task: Task, mixed_targets: bool) -> nn.Module:
    """The loss the run's settings ask for. `mixed_targets`: mixup/cutmix hands over soft targets (their
    label smoothing is applied by the mixing, not here)."""
    if task == "multilabel":
        return SmoothedBCEWithLogits(0.0 if mixed_targets else cfg.label_smoothing)
    if mixed_targets:
        return SoftTargetCrossEntropy()
    return nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
