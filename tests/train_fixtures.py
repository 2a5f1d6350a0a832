"""Helpers shared by the training tests: a tiny, fast run config and hand-built training parts."""

from __future__ import annotations

import os
from collections.abc import Collection
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from helpers.config import Config
from helpers.precision import Precision
from helpers.run_folder import RunFolder
from helpers.schedules import build_schedule
from helpers.train import TrainParts


def tiny_config(data_dir: Path, **changes: Any) -> Config:
    """A CPU run of test_resnet at 32 px that trains in well under a second per epoch (and predicts in
    batches of 8)."""
    values: dict[str, Any] = dict(
        data_dir=str(data_dir),
        backbone="test_resnet",
        img_size=32,
        n_folds=3,
        epochs=1,
        batch_size=4,
        num_workers=0,
        seed=0,
        run_name="tiny",
        augment="none",
        lr=1e-2,
        task="multiclass",  # what 01 resolves and saves for single-label data
        pretrained=False,  # trained from scratch: no weights to fetch
    )
    values.update(changes)
    return Config(**values)


def child_env(outputs: Path, drop: Collection[str] = (), **extra: str) -> dict[str, str]:
    """The environment of a training child process: this one's without the `drop` names, on the CPU with
    one thread, writing under `outputs`, without progress bars, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(
        KIT_OUTPUTS=str(outputs),
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        CUDA_VISIBLE_DEVICES="",
        TQDM_DISABLE="1",
        **extra,
    )
    return env


def linear_model(seed: int = 0, features: int = 12, classes: int = 3) -> nn.Module:
    """A model without batch norm, so batch composition does not change its gradients."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(features, classes))


def fixed_samples(n: int, seed: int = 1, scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 2, 2, generator=g) * scale
    y = torch.randint(0, 3, (n,), generator=g)
    return x, y


def loader_of(x: torch.Tensor, y: torch.Tensor, batch_size: int) -> DataLoader:
    """Batches of (x, y, index), in order, keeping the last partial batch."""
    return DataLoader(TensorDataset(x, y, torch.arange(len(y))), batch_size=batch_size, shuffle=False)


def hand_parts(
    model: nn.Module,
    lr: float = 0.1,
    grad_accum: int = 1,
    clip_grad: float = 0.0,
    scaler: torch.amp.GradScaler | None = None,
) -> TrainParts:
    """Plain SGD, cross-entropy, fp32 on CPU and a constant learning rate."""
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    precision = Precision("cpu", torch.float32)
    return TrainParts(
        optimizer,
        nn.CrossEntropyLoss(),
        precision,
        scaler if scaler is not None else precision.scaler(),
        build_schedule("none", optimizer, lr, epochs=1, updates_per_epoch=1),
        grad_accum=grad_accum,
        clip_grad=clip_grad,
    )


def flat_params(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]).clone()


CHECKPOINT_KINDS = ("best_score", "best_loss", "last", "ema")
TIMING = ["seconds", "images_per_s"]  # wall-clock columns: the only ones a stop and resume may change


def assert_same_runs(run: RunFolder, reference: RunFolder, fold: int = 0) -> None:
    """Every metric (but wall-clock time) and every checkpoint's weights equal, with no tolerance."""
    ours, theirs = (pd.read_csv(r.metrics).drop(columns=TIMING) for r in (run, reference))
    pd.testing.assert_frame_equal(ours, theirs, check_exact=True)
    for kind in CHECKPOINT_KINDS:
        mine = torch.load(run.checkpoint(fold, kind), weights_only=True)
        other = torch.load(reference.checkpoint(fold, kind), weights_only=True)
        assert mine["model"].keys() == other["model"].keys()
        for name, value in other["model"].items():
            assert torch.equal(mine["model"][name], value), (kind, name)
    last = torch.load(run.checkpoint(fold, "last"), weights_only=True)
    other = torch.load(reference.checkpoint(fold, "last"), weights_only=True)
    assert last["updates"] == other["updates"] and last["scheduler"] == other["scheduler"]
    for group, state in other["optimizer"]["state"].items():
        for key, value in state.items():
            assert torch.equal(last["optimizer"]["state"][group][key], value), (group, key)
