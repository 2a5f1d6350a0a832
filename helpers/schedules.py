"""Learning-rate schedulers, each stepped the way it is meant to be: per optimizer update or per epoch.

`per_update` schedulers advance after every optimizer step (one-cycle, cosine, warmup-cosine, cosine with
restarts); ReduceLROnPlateau advances once per epoch with the monitored metric.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch.optim import Optimizer
from torch.optim import lr_scheduler as sched

from helpers.config import ConfigError


@dataclass
class Schedule:
    scheduler: sched.LRScheduler | sched.ReduceLROnPlateau
    per_update: bool

    def after_update(self) -> None:
        if self.per_update:
            self.scheduler.step()

    def after_epoch(self, metric: float) -> None:
        if isinstance(self.scheduler, sched.ReduceLROnPlateau):
            self.scheduler.step(metric)


def build_schedule(
    name: str,
    optimizer: Optimizer,
    lr: float,
    epochs: int,
    updates_per_epoch: int,
    warmup_epochs: float = 0.0,
    monitor: str = "val_acc",
) -> Schedule:
    """The named scheduler over `epochs * updates_per_epoch` optimizer updates.

    Every schedule moves each parameter group from its own starting lr: with layer decay (helpers.transfer)
    the groups keep their ratios, and one-cycle peaks each group at the lr it starts with. `cosine` and
    `cosine_restarts` (torch's, with one absolute floor) bring every group down to the same `lr * 1e-3`.
    """
    total = max(1, epochs * updates_per_epoch)
    if name == "onecycle":
        # OneCycleLR divides by the warm-up's length in steps: keep it at least one step long.
        pct_start = 0.25 if total < 4 else max(0.25, 2 / total)
        peaks = [group["lr"] for group in optimizer.param_groups]
        return Schedule(
            sched.OneCycleLR(optimizer, max_lr=peaks, total_steps=total, pct_start=pct_start), True
        )
    if name == "cosine":
        return Schedule(sched.CosineAnnealingLR(optimizer, T_max=total, eta_min=lr * 1e-3), True)
    if name == "cosine_restarts":
        cycle = max(1, (epochs // 2) * updates_per_epoch)
        return Schedule(sched.CosineAnnealingWarmRestarts(optimizer, T_0=cycle, eta_min=lr * 1e-3), True)
    if name == "warmup_cosine":
        warmup = int(round(warmup_epochs * updates_per_epoch))

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / (warmup + 1)
            progress = (step - warmup) / max(1, total - warmup)
            return 1e-3 + (1 - 1e-3) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

        return Schedule(sched.LambdaLR(optimizer, factor), True)
    if name == "plateau":
        mode = "min" if monitor == "val_loss" else "max"
        return Schedule(sched.ReduceLROnPlateau(optimizer, mode=mode, factor=0.5, patience=1), False)
    if name == "none":
        return Schedule(sched.LambdaLR(optimizer, lambda _: 1.0), False)
    raise ConfigError(f"unknown scheduler {name!r}")
