"""Where an epoch stands at an optimizer-step boundary: what a mid-epoch checkpoint keeps of it.

A stop always lands just after an optimizer update, never inside an accumulation cycle, so the gradients
are zero and nothing of the cycle needs saving. What the rest of the epoch depends on, besides the model,
optimizer, scaler, schedule and EMA (saved as at an epoch's end): how many micro-batches are done (the
sampler skips them: each batch's images and augmentation follow from its keys alone), this process's
running loss sum and image count, and the random generators' states (dropout, mixup and cutmix draw from
them), every process's own under torchrun.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch


def capture_rng() -> dict[str, Any]:
    """torch (CPU and every CUDA device), numpy and Python random states, as plain values (weights-only
    loadable: numpy's array becomes a list)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
        "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(gauss)],
        "python": random.getstate(),
    }


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"]:
        torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))


@dataclass
class EpochPosition:
    """An epoch's progress in this process; `train_one_epoch` advances it in place, step by step."""

    epoch: int
    step: int = 0  # micro-batches done, always a whole number of optimizer updates
    loss_sum: torch.Tensor | None = None  # this process's sum of loss x images over those micro-batches
    seen: int = 0  # this process's images in them
    rng: dict[str, Any] | None = field(default=None, repr=False)  # the generators' states to resume with

    def saved(self) -> dict[str, Any]:
        """This process's part of a mid-epoch checkpoint (with the generators' states now)."""
        loss_sum = torch.zeros(()) if self.loss_sum is None else self.loss_sum.detach().cpu().clone()
        return {"loss_sum": loss_sum, "seen": self.seen, "rng": capture_rng()}

    @classmethod
    def of_rank(cls, saved: dict[str, Any], rank: int) -> EpochPosition:
        """Process `rank`'s position from a checkpoint's `position` ({epoch, step, ranks: [saved()...]})."""
        mine = saved["ranks"][rank]
        return cls(saved["epoch"], saved["step"], mine["loss_sum"], mine["seen"], mine["rng"])
