"""Non-finite numbers in training: a NaN or infinite loss or gradient norm stops the fold with the batch that
caused it; a NaN or infinite weight is never saved.

The losses are checked every few micro-batches (`LossWatch`: each check waits for the device once), keeping
each recent batch's loss, images and learning rate, so the error names the first bad batch. The gradient
norm is known when clipping (`clip_grad`); without it a non-finite gradient makes the weights, and so the
next loss, non-finite, which the same check catches. Under fp16 the GradScaler skips an update whose
gradients overflow and halves its scale: that is its normal work, not an error, but a run of skipped
updates (`SKIPPED_RUN`) is reported once, since the model then stops learning.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from helpers.errors import KitError

CHECK_EVERY = 10  # micro-batches between loss checks (each check waits for the device)
SKIPPED_RUN = 10  # scaler-skipped updates in a row worth a warning
SHOWN_IMAGES = 16  # images of a bad batch named in the error


class NonFiniteLoss(KitError, FloatingPointError):
    """The loss (or the gradient norm) became NaN or infinite; nothing after the last checkpoint is saved."""


class NonFiniteWeights(KitError, FloatingPointError):
    """A weight is NaN or infinite: the checkpoint is not written, the previous one stays."""


@dataclass
class _Batch:
    step: int
    loss: torch.Tensor
    indices: Any
    lr: float


def image_names(dataset: Any, indices: Any) -> list[str]:
    """The batch's image paths when the dataset has them (helpers.loaders.ImageDataset), else its indices."""
    paths = getattr(dataset, "paths", None)
    return [str(paths[int(i)]) if paths is not None else str(int(i)) for i in indices]


class LossWatch:
    """The recent micro-batches of an epoch, checked for a non-finite loss or gradient norm every
    `CHECK_EVERY` of them and before anything is saved; also counts fp16's skipped updates."""

    def __init__(self, where: str, dataset: Any, scaler: torch.amp.GradScaler, n_batches: int):
        self.where, self.dataset, self.scaler, self.n_batches = where, dataset, scaler, n_batches
        self.recent: list[_Batch] = []
        self.norms: list[tuple[int, torch.Tensor]] = []
        self.skips = _SkippedUpdates(scaler)

    def add(self, step: int, loss: torch.Tensor, indices: Any, lr: float) -> None:
        self.recent.append(_Batch(step, loss.detach().float(), indices, lr))

    def add_update(self, step: int, norm: torch.Tensor | None) -> None:
        """An update, with its gradient norm when clipping (with the scaler on, an overflow is a skip)."""
        self.skips.updates += 1
        if norm is not None and not self.scaler.is_enabled():
            self.norms.append((step, norm.detach().float()))

    def due(self, step: int) -> bool:
        return step % CHECK_EVERY == 0 or step == self.n_batches - 1

    def check(self) -> None:
        """Raise NonFiniteLoss naming the first bad batch of those since the last check (one device wait)."""
        if self.recent or self.norms:
            values = torch.stack([b.loss for b in self.recent] + [n for _, n in self.norms])
            if not bool(torch.isfinite(values).all()):
                self._raise(values)
        self.recent, self.norms = [], []
        self.skips.check(self.where)

    def _raise(self, values: torch.Tensor) -> None:
        bad_losses = [b for b, v in zip(self.recent, values.tolist(), strict=False) if not math.isfinite(v)]
        if bad_losses:
            what, batch, value = "loss", bad_losses[0], bad_losses[0].loss.item()
        else:
            step, norm = next((s, n) for s, n in self.norms if not torch.isfinite(n))
            what, batch, value = "gradient norm", next(b for b in self.recent if b.step == step), norm.item()
        names = image_names(self.dataset, batch.indices)
        shown = ", ".join(names[:SHOWN_IMAGES]) + (
            f" and {len(names) - SHOWN_IMAGES} more" if len(names) > SHOWN_IMAGES else ""
        )
        raise NonFiniteLoss(
            f"{self.where}: the {what} became {value} at batch {batch.step + 1} of {self.n_batches} "
            f"(lr {batch.lr:.3g}; images {shown}). Training stopped; the last checkpoint is kept as it was. "
            "Check those images, lower lr, set clip_grad (e.g. 1.0), or use precision='fp32' / 'bf16'."
        )


class _SkippedUpdates:
    """fp16's skipped updates, counted from the scaler's scale at each check (it halves at every skip), so
    no extra device wait; reported once per run of at least SKIPPED_RUN."""

    def __init__(self, scaler: torch.amp.GradScaler):
        self.scaler = scaler
        self.scale = scaler.get_scale() if scaler.is_enabled() else 0.0
        self.updates = 0  # updates since the last check
        self.in_a_row = 0
        self.reported = False

    def check(self, where: str) -> None:
        if not self.scaler.is_enabled() or not self.updates:
            return
        scale = self.scaler.get_scale()
        halvings = round(math.log2(self.scale / scale)) if 0 < scale < self.scale else 0
        self.in_a_row = self.in_a_row + halvings if halvings >= self.updates else halvings
        self.scale, self.updates = scale, 0
        if self.in_a_row < SKIPPED_RUN:
            self.reported = False
        elif not self.reported:
            self.reported = True
            print(
                f"{where}: the fp16 GradScaler skipped the last {self.in_a_row} updates (gradients "
                f"overflow; scale now {scale:g}): the weights are not changing. Lower lr, set clip_grad, "
                "or use precision='bf16'."
            )


def check_weights(tensors: Mapping[str, torch.Tensor], what: str, path: Path) -> None:
    """Raise NonFiniteWeights, naming the tensors, when a floating tensor holds a NaN or an infinity."""
    floats = {k: v for k, v in tensors.items() if v.is_floating_point()}
    if not floats:
        return
    finite = torch.stack([torch.isfinite(v).all() for v in floats.values()])
    if bool(finite.all()):
        return
    bad = [k for k, ok in zip(floats, finite.tolist(), strict=True) if not ok]
    raise NonFiniteWeights(
        f"not writing {path}: {what} tensor(s) {', '.join(bad[:8])}{' ...' if len(bad) > 8 else ''} hold NaN or "
        f"infinite values. The previous {Path(path).name} is kept as it was; training stopped."
    )
