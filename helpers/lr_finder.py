"""A learning-rate range test (Smith 2015; fastai's `lr_find`): train a copy of the fold's fresh model for a
few updates while the learning rate grows exponentially, and plot the loss against it.

The test is one call of the kit's own training step, `helpers.train.train_one_epoch`, over `grad_accum`
batches of the fold's training loader per update, with the run's optimizer, loss, precision, mixup,
clipping and accumulation (from `build_parts`) and an exponential schedule, so what it measures is what
training will do. The real training is left
untouched: the test trains a model of its own and restores the torch, numpy and Python random states it
found, so the fold trains afterwards exactly as it would have without it. The suggested value is
fastai's default, "valley": a point in the longest stretch over which the loss keeps falling.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn
from torch.optim import lr_scheduler

from helpers.config import Config
from helpers.dataset import DataInfo, build_store
from helpers.finite import NonFiniteLoss
from helpers.loaders import build_loader
from helpers.model import create_model
from helpers.precision import pick_device
from helpers.schedules import Schedule
from helpers.settings import resolve_task
from helpers.train import (
    build_parts,
    fold_rows,
    fold_targets,
    seed_everything,
    train_one_epoch,
)
from helpers.transfer import lr_range

START_LR, END_LR = 1e-7, 10.0  # fastai's range
UPDATES = 100  # fastai's num_it
SMOOTHING = 0.98  # exponential moving average of the loss, bias-corrected (fastai's)
DIVERGED = 4.0  # stop once the smoothed loss exceeds this multiple of its minimum (fastai's)


@dataclass
class LrFinderResult:
    """The learning rate of each update, its loss and the smoothed loss, and the suggested value."""

    lrs: np.ndarray
    losses: np.ndarray
    smoothed: np.ndarray
    suggested: float
    stopped: str  # why the test ended before its last update; empty when it ran them all


@contextmanager
def preserved_random_state() -> Iterator[None]:
    """Restore the torch (CPU and CUDA), numpy and Python random states on exit."""
    torch_state, np_state, py_state = torch.get_rng_state(), np.random.get_state(), random.getstate()
    cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    try:
        yield
    finally:
        torch.set_rng_state(torch_state)
        np.random.set_state(np_state)
        random.setstate(py_state)
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)


def valley(lrs: np.ndarray, losses: np.ndarray) -> float:
    """fastai's "valley" suggestion: the middle of the longest run over which the loss keeps falling (its
    longest decreasing subsequence): well below the divergence, still where the loss drops fast."""
    n = len(losses)
    longest = [1] * n
    start, end = 0, 0
    for i in range(1, n):
        for j in range(i):
            if losses[i] < losses[j] and longest[i] < longest[j] + 1:
                longest[i] = longest[j] + 1
        if longest[end] < longest[i]:
            end = i
            start = end - longest[end]
    third = (end - start) / 3
    return float(lrs[start + int(third) + int(third / 2)])


class _RecordedLoss(nn.Module):
    """The run's loss function, keeping each micro-batch's value for the range test."""

    def __init__(self, loss_fn: nn.Module):
        super().__init__()
        self.loss_fn = loss_fn
        self.values: list[float] = []

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        loss = self.loss_fn(output, target)
        self.values.append(float(loss.detach()))
        return loss


class _RangeTest:
    """The range test's batches as one epoch for `train_one_epoch`: `per_update` batches per update, epoch
    after epoch of the fold's loader, ending early once the smoothed loss diverges. Between updates it
    records the update's learning rate and loss (the mean over its micro-batches)."""

    def __init__(
        self, loader, optimizer: torch.optim.Optimizer, loss: _RecordedLoss, updates: int, per_update: int
    ):
        self.loader, self.optimizer, self.loss = loader, optimizer, loss
        self.updates, self.per_update = updates, per_update
        self.lrs: list[float] = []
        self.losses: list[float] = []
        self.smoothed: list[float] = []
        self.stopped = ""
        self._average = 0.0

    def __len__(self) -> int:
        return self.updates * self.per_update

    def _batches(self) -> Iterator:
        epoch = 0
        while True:
            self.loader.sampler.set_epoch(epoch)
            yield from self.loader
            epoch += 1

    def _record(self) -> None:
        loss = float(np.mean(self.loss.values[-self.per_update :]))
        self._average = SMOOTHING * self._average + (1 - SMOOTHING) * loss
        self.losses.append(loss)
        self.smoothed.append(self._average / (1 - SMOOTHING ** len(self.losses)))
        if not math.isfinite(loss) or self.smoothed[-1] > DIVERGED * min(self.smoothed):
            self.stopped = f"the loss diverged at lr {self.lrs[-1]:.2e} (over {DIVERGED:g}x its minimum)"

    def __iter__(self) -> Iterator:
        batches = self._batches()
        for step in range(self.updates):
            if step:
                self._record()
                if self.stopped:
                    return
            self.lrs.append(lr_range(self.optimizer)[1])  # the head's: the configured lr
            for _ in range(self.per_update):
                yield next(batches)
        self._record()


def find_lr(
    cfg: Config,
    info: DataInfo,
    fold: int | None = None,
    device: torch.device | None = None,
    updates: int = UPDATES,
    start_lr: float = START_LR,
    end_lr: float = END_LR,
) -> LrFinderResult:
    """Run the range test on a fresh copy of the fold's model (the first configured fold by default).

    It reads the images as training will: from the store at cfg's size, which it builds first when 01
    stored another size (the training that follows then finds it built)."""
    fold = (cfg.folds or [0])[0] if fold is None else fold
    device = device or pick_device()
    cfg = resolve_task(cfg, info)
    build_store(cfg, info)
    with preserved_random_state():
        seed_everything(cfg.seed + fold)
        model = create_model(cfg.backbone, info.num_classes, cfg.pretrained, cfg.weights_file).to(device)
        if cfg.channels_last:
            model = model.to(memory_format=torch.channels_last)
        loader = build_loader(cfg, fold_rows(info, fold)[0], True, fold, device, num_classes=info.num_classes)
        parts = build_parts(
            cfg.replace(lr=start_lr, scheduler="none", ema=False),
            model,
            info.num_classes,
            1,
            device,
            fold_targets(info, fold),
        )
        growth = (end_lr / start_lr) ** (1 / max(1, updates - 1))
        parts.schedule = Schedule(lr_scheduler.LambdaLR(parts.optimizer, lambda step: growth**step), True)
        parts.loss_fn = _RecordedLoss(parts.loss_fn)
        test = _RangeTest(loader, parts.optimizer, parts.loss_fn, updates, cfg.grad_accum)
        try:
            train_one_epoch(model, test, parts, device, desc=f"lr finder (fold {fold})")
        except NonFiniteLoss:
            test.stopped = f"the loss became infinite or NaN by lr {test.lrs[-1]:.2e}"
    # an update cut short by a non-finite loss has no loss of its own
    lrs, losses, smoothed = (
        np.array(v[: len(test.smoothed)]) for v in (test.lrs, test.losses, test.smoothed)
    )
    if len(lrs) < 2:
        raise RuntimeError(
            f"the lr finder stopped after {len(lrs)} update(s): {test.stopped}; lower start_lr"
        )
    # as fastai: the first tenth (the average still settling) and the last few (diverging) do not vote
    vote = slice(len(lrs) // 10, -5) if len(lrs) > 20 else slice(None)
    return LrFinderResult(lrs, losses, smoothed, valley(lrs[vote], smoothed[vote]), test.stopped)


def show_lr_finder(result: LrFinderResult, current_lr: float | None = None) -> Figure:
    """Loss (raw and smoothed) against the learning rate on a log axis, the suggested value marked (and
    the run's configured lr, when given)."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(result.lrs, result.losses, color="tab:blue", alpha=0.3, lw=1, label="loss")
    ax.plot(result.lrs, result.smoothed, color="tab:blue", label="smoothed loss")
    at = int(np.argmin(np.abs(np.log(result.lrs) - math.log(result.suggested))))
    ax.plot(
        result.suggested, result.smoothed[at], "o", color="tab:red", label=f"suggested {result.suggested:.1e}"
    )
    if current_lr is not None:
        ax.axvline(current_lr, color="tab:gray", ls="--", lw=1, label=f"configured lr {current_lr:.1e}")
    top = np.percentile(result.smoothed, 95) * 1.2
    ax.set(xscale="log", xlabel="learning rate", ylabel="training loss", title="Learning-rate range test")
    ax.set_ylim(min(result.smoothed.min(), result.losses.min()) * 0.95, top)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
