"""Test-time augmentation: named, distinct views of a batch, run through the model in one forward pass.

The views are the dihedral symmetries a user may want, each name one distinct transform (flip(-1) then
flip(-2,-1) would equal flip(-2): a view counted twice), which `tests/test_tta.py` proves. Probabilities
(the run's task's: softmax for a multiclass run, a sigmoid per class for a multilabel one) are averaged
over the views.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from helpers.config import ConfigError
from helpers.precision import Precision

if TYPE_CHECKING:
    from helpers.tasks import Task

View = Callable[[torch.Tensor], torch.Tensor]

VIEWS: dict[str, View] = {
    "identity": lambda x: x,
    "hflip": lambda x: x.flip(-1),
    "vflip": lambda x: x.flip(-2),
    "hvflip": lambda x: x.flip(-2, -1),
    "transpose": lambda x: x.transpose(-2, -1),  # square inputs only
    "rot90": lambda x: x.rot90(1, (-2, -1)),  # square inputs only
}
SQUARE_ONLY = {"transpose", "rot90"}


def check_views(names: Sequence[str], square: bool = True) -> list[str]:
    """The view names, validated: known, not repeated, square-only views only on square inputs."""
    unknown = [n for n in names if n not in VIEWS]
    if unknown:
        raise ConfigError(f"unknown TTA view(s) {unknown}; choose from {list(VIEWS)}")
    if len(set(names)) != len(names):
        raise ConfigError(f"a TTA view is listed twice in {list(names)}: it would be counted twice")
    if not square and SQUARE_ONLY & set(names):
        raise ConfigError(f"{sorted(SQUARE_ONLY & set(names))} need square inputs")
    return list(names)


@torch.no_grad()
def view_probabilities(
    model: nn.Module, x: torch.Tensor, views: Sequence[str], precision: Precision, task: Task
) -> torch.Tensor:
    """The task's probabilities of every view of the batch, shape (views, batch, classes), from one forward
    pass."""
    batch = torch.cat([VIEWS[v](x) for v in views])
    if x.is_contiguous(memory_format=torch.channels_last):
        batch = batch.contiguous(memory_format=torch.channels_last)
    with precision.context():
        logits = model(batch)
    return task.probabilities(logits.float()).view(len(views), x.shape[0], -1)


def mean_over_views(per_view: np.ndarray) -> np.ndarray:
    """Average (views, N, C) probabilities over the views."""
    return per_view.mean(axis=0)
