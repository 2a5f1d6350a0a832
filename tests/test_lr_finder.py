"""The learning-rate range test: the kit's own step at growing rates, a suggestion, training untouched."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from train_fixtures import tiny_config

import helpers.loaders
import helpers.lr_finder as lr_finder
from helpers.checkpoints import load_checkpoint
from helpers.dataset import dataset_folder, prepare_dataset
from helpers.lr_finder import find_lr, show_lr_finder, valley
from helpers.run_folder import RunFolder
from helpers.store import open_view, store_folder, store_side
from helpers.train import train_fold

CPU = torch.device("cpu")


def random_state() -> tuple:
    return torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()


def assert_equal_nested(a, b, where: str = "") -> None:
    """Two optimizer state dicts (nested dicts, lists and tensors) hold the same values."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_equal_nested(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_equal_nested(x, y, f"{where}/{i}")
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    else:
        assert a == b, where


def test_valley_picks_the_middle_of_the_longest_fall():
    lrs = np.logspace(-6, 0, 61)
    losses = np.concatenate([np.full(10, 2.3), np.linspace(2.3, 0.5, 40), np.linspace(0.5, 5, 11)])
    suggested = valley(lrs, losses)
    falling = lrs[9:50]  # the longest decreasing run: from the last flat point to the minimum
    assert falling[len(falling) // 3] <= suggested <= falling[2 * len(falling) // 3]


@pytest.fixture
def prepared(outputs, csv_dataset, one_thread):
    def make(name: str, **changes):
        cfg = tiny_config(csv_dataset, run_name=name, epochs=2, **changes)
        run = RunFolder.of(cfg).create()
        return cfg, prepare_dataset(cfg, run), run

    return make


def test_finder_runs_the_training_step_at_growing_rates(prepared, monkeypatch):
    cfg, info, run = prepared("lr", grad_accum=2)
    calls = []

    def recorded(model, loader, parts, device, desc="train"):
        calls.append(len(loader))
        metrics = real(model, loader, parts, device, desc)
        calls.append(parts.updates)
        return metrics

    real = lr_finder.train_one_epoch
    monkeypatch.setattr(lr_finder, "train_one_epoch", recorded)
    result = find_lr(cfg, info, 0, CPU, updates=12, start_lr=1e-5, end_lr=1e-1)
    assert calls == [24, 12]  # one pass of the training step: 12 updates of grad_accum=2 batches
    np.testing.assert_allclose(result.lrs[1:] / result.lrs[:-1], (1e-1 / 1e-5) ** (1 / 11), rtol=1e-6)
    assert result.lrs[0] == pytest.approx(1e-5) and result.lrs[-1] == pytest.approx(1e-1)
    assert len(result.losses) == len(result.smoothed) == 12 and not result.stopped
    assert result.lrs[0] <= result.suggested <= result.lrs[-1]
    fig = show_lr_finder(result, cfg.lr)
    assert fig.axes[0].get_xscale() == "log"
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert f"suggested {result.suggested:.1e}" in legend


def test_finder_reads_the_store_at_the_training_size_and_leaves_it_built(prepared, monkeypatch):
    cfg, info, _ = prepared("stored", img_size=24)  # 01 planned 24 px; 03 then trains at 40
    cfg = cfg.replace(img_size=40)
    reads = []
    monkeypatch.setattr(
        helpers.loaders,
        "read_image",
        lambda path, side=0: reads.append(path) or np.zeros((40, 40, 3), np.uint8),
    )
    find_lr(cfg, info, 0, CPU, updates=4)
    assert reads == [], "the range test read files: the store at its size was not built first"
    view = open_view(
        store_folder(dataset_folder(cfg), store_side(40, cfg.crop_pct)), info.table["path"].tolist()
    )
    assert view is not None and view.stored == len(info.table)


def test_finder_stops_when_the_loss_diverges(prepared):
    cfg, info, _ = prepared("diverge")
    result = find_lr(cfg, info, 0, CPU, updates=60, start_lr=1e-3, end_lr=1e6)
    assert result.stopped and len(result.lrs) < 60


@pytest.mark.slow
def test_training_after_the_finder_equals_training_without_it(prepared):
    cfg, info, run = prepared("plain")
    train_fold(cfg, info, 0, run, CPU)
    plain, plain_state = load_checkpoint(run.checkpoint(0, "last")), random_state()

    cfg2, info2, run2 = prepared("with_finder")
    before = random_state()
    find_lr(cfg2, info2, 0, CPU, updates=8)
    after = random_state()
    assert torch.equal(before[0], after[0]) and np.array_equal(before[1], after[1]) and before[2] == after[2]
    train_fold(cfg2, info2, 0, run2, CPU)
    found, found_state = load_checkpoint(run2.checkpoint(0, "last")), random_state()

    for name in plain["model"]:
        assert torch.equal(plain["model"][name], found["model"][name]), name
    assert_equal_nested(plain["optimizer"], found["optimizer"])
    assert torch.equal(plain["rng"]["torch"], found["rng"]["torch"])
    assert plain["rng"]["python"] == found["rng"]["python"]
    assert torch.equal(plain_state[0], found_state[0]) and np.array_equal(plain_state[1], found_state[1])
