"""build_loader: the loader 02 previews is the one 03 trains on."""

from __future__ import annotations

import pytest
import torch
from train_fixtures import tiny_config

import helpers.train as train_mod
from helpers.dataset import prepare_dataset
from helpers.loaders import build_loader
from helpers.run_folder import RunFolder
from helpers.train import fold_rows, train_fold

CPU = torch.device("cpu")

pytestmark = pytest.mark.usefixtures("one_thread")


def test_the_previewed_first_batch_is_the_one_training_starts_with(outputs, csv_dataset, monkeypatch):
    """02 builds fold k's training loader as below; train_fold's first batch of fold k must be its first
    batch: the same images in the same order, augmented alike (fold 1: the seed is seed + fold)."""
    cfg = tiny_config(csv_dataset, augment="light", folds=[1])
    info = prepare_dataset(cfg)
    trained_on = []
    train_one_epoch = train_mod.train_one_epoch

    def recording(model, loader, parts, device, desc, position=None):
        trained_on.append(next(iter(loader)))
        return train_one_epoch(model, loader, parts, device, desc, position)

    monkeypatch.setattr(train_mod, "train_one_epoch", recording)
    train_fold(cfg, info, 1, RunFolder.of(cfg), CPU)

    rows, _ = fold_rows(info, 1)
    x, y, indices = next(iter(build_loader(cfg, rows, train=True, fold=1, device=CPU)))
    trained_x, trained_y, trained_indices = trained_on[0]
    assert torch.equal(indices, trained_indices)
    assert torch.equal(y, trained_y)
    assert torch.equal(x, trained_x)
    # the check can tell a different seed apart: fold 0's seed orders and augments otherwise
    other_x, _, other_indices = next(iter(build_loader(cfg, rows, train=True, fold=0, device=CPU)))
    assert not (torch.equal(other_indices, indices) and torch.equal(other_x, x))


def test_evaluation_loaders_apply_the_runs_eval_crop(outputs, csv_dataset):
    """Validation, OOF and test predictions see the crop the run chose; training always the whole image."""
    from helpers.augment import build_eval_transform
    from helpers.images import read_image

    cfg = tiny_config(csv_dataset, crop_pct=0.5)
    info = prepare_dataset(cfg)
    _, rows = fold_rows(info, 0)
    x, _, _ = next(iter(build_loader(cfg, rows, train=False, fold=0, device=CPU)))
    first = build_eval_transform(cfg.img_size, 0.5)(image=read_image(rows["path"].iloc[0]))["image"]
    assert torch.equal(x[0], first)
    uncropped = next(iter(build_loader(cfg.replace(crop_pct=0.0), rows, train=False, fold=0, device=CPU)))[0]
    assert not torch.equal(uncropped[0], first)
