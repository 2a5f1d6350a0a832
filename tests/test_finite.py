"""Bad numbers and failed writes: a non-finite loss, gradient norm or weight stops the fold without saving
anything after the last good checkpoint; fp16's skipped updates are reported; a full disk leaves the
previous checkpoint loadable (helpers.finite, helpers.checkpoints)."""

from __future__ import annotations

import errno
import math
import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from train_fixtures import fixed_samples, hand_parts, linear_model, loader_of, tiny_config

import helpers.checkpoints as checkpoints
import helpers.train as train_mod
from helpers.atomic import atomic_write
from helpers.checkpoints import CheckpointWriteError
from helpers.dataset import prepare_dataset
from helpers.finite import SKIPPED_RUN, NonFiniteLoss, NonFiniteWeights
from helpers.run_folder import RunFolder
from helpers.train import train_fold, train_one_epoch

CPU = torch.device("cpu")

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def prepared(outputs, csv_dataset):
    cfg = tiny_config(csv_dataset, epochs=3)
    return cfg, prepare_dataset(cfg), RunFolder.of(cfg)


def _n_batches(info, cfg) -> int:
    return math.ceil(int((info.table["fold"] != 0).sum()) / cfg.batch_size)


class NanAt(nn.Module):
    """Cross-entropy that is NaN for the `at`-th call (0-based) only."""

    def __init__(self, at: int):
        super().__init__()
        self.calls, self.at = 0, at

    def forward(self, logits, target):
        self.calls += 1
        loss = F.cross_entropy(logits, target)
        return loss * float("nan") if self.calls - 1 == self.at else loss


def test_a_nan_loss_names_the_epoch_batch_images_and_lr(prepared, monkeypatch):
    cfg, info, run = prepared
    n = _n_batches(info, cfg)
    real = train_mod.build_parts

    def build_parts(*args, **kwargs):
        parts = real(*args, **kwargs)
        parts.loss_fn = NanAt(n + 1)  # the second batch of epoch 1
        return parts

    monkeypatch.setattr(train_mod, "build_parts", build_parts)
    with pytest.raises(NonFiniteLoss) as failed:
        train_fold(cfg, info, 0, run, CPU)
    message = str(failed.value)
    assert f"fold 0 epoch 1: the loss became nan at batch 2 of {n}" in message
    assert "lr " in message and "the last checkpoint is kept" in message
    shown = message.split("images ")[1].split(")")[0].split(", ")
    assert len(shown) == cfg.batch_size and all(name.endswith(".jpg") for name in shown)
    assert set(shown) <= set(info.table["path"].astype(str))
    assert torch.load(run.checkpoint(0, "last"), weights_only=True)["epoch"] == 0


def test_a_nan_weight_is_never_saved(prepared, monkeypatch):
    """A NaN batch-norm statistic leaves the training loss finite (training normalises by the batch's own)
    and reaches only validation: the save refuses it and the previous epoch's checkpoints stay."""
    cfg, info, run = prepared
    real = train_mod.train_one_epoch

    def poisoning(model, loader, parts, device, desc, position=None):
        trained = real(model, loader, parts, device, desc, position)
        if desc.endswith("epoch 1"):
            next(b for name, b in model.named_buffers() if name.endswith("running_var")).fill_(float("nan"))
        return trained

    monkeypatch.setattr(train_mod, "train_one_epoch", poisoning)
    with pytest.raises(NonFiniteWeights, match=r"running_var .*NaN or infinite"):
        train_fold(cfg, info, 0, run, CPU)
    for kind in ("last", "best_loss"):
        saved = torch.load(run.checkpoint(0, kind), weights_only=True)
        assert saved["metrics"]["epoch"] == 0
        assert all(torch.isfinite(v).all() for v in saved["model"].values() if v.is_floating_point())
    assert not [name for name in os.listdir(run.checkpoints) if name.endswith(".tmp")]


class NanGradient(nn.Module):
    """A finite loss whose gradient is NaN: sqrt at 0 has an infinite slope, times 0."""

    def forward(self, logits, target):
        return F.cross_entropy(logits, target) + (logits.sum() * 0).abs().sqrt()


def test_a_nan_gradient_norm_stops_when_clipping():
    x, y = fixed_samples(8)
    model = linear_model()
    parts = hand_parts(model, clip_grad=1.0)
    parts.loss_fn = NanGradient()
    with pytest.raises(NonFiniteLoss, match="the gradient norm became nan at batch 1 of 2"):
        train_one_epoch(model, loader_of(x, y, 4), parts, CPU, desc="fold 0 epoch 0")


def test_fp16_skipped_updates_are_no_error_but_a_run_of_them_is_reported(capsys):
    """Gradients of 1e7 at a scale of 1e38 overflow: the scaler skips and halves, update after update."""
    x, y = fixed_samples(4 * 3 * SKIPPED_RUN, scale=1e7)
    model = linear_model()
    scaler = torch.amp.GradScaler("cpu", init_scale=1e38, enabled=True)
    train_one_epoch(model, loader_of(x, y, 4), hand_parts(model, scaler=scaler), CPU, desc="fold 0 epoch 0")
    said = capsys.readouterr().out
    assert said.count("the fp16 GradScaler skipped the last") == 1, said
    assert scaler.get_scale() <= 1e38 / 2**SKIPPED_RUN  # each skip halved it


def test_a_full_disk_leaves_the_previous_checkpoint_loadable(prepared, monkeypatch):
    """The atomic writer's temp file fills the disk halfway through epoch 1's `last` checkpoint."""
    cfg, info, run = prepared
    real_save = checkpoints.atomic_torch_save
    lasts = {"n": 0}

    def fill_the_disk(f):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    def disk_fills(obj, path):
        lasts["n"] += path.name.endswith("_last.pt")
        if lasts["n"] > 1:
            return atomic_write(path, fill_the_disk)
        return real_save(obj, path)

    monkeypatch.setattr(checkpoints, "atomic_torch_save", disk_fills)
    with pytest.raises(CheckpointWriteError) as failed:
        train_fold(cfg, info, 0, run, CPU)
    message = str(failed.value)
    assert failed.value.errno == errno.ENOSPC
    assert "the disk is full" in message and f"{run.checkpoints} has" in message
    assert float(message.split("needs about ")[1].split(" MB")[0]) > 0
    assert torch.load(run.checkpoint(0, "last"), weights_only=True)["epoch"] == 0
    assert not [name for name in os.listdir(run.checkpoints) if name.endswith(".tmp")]
