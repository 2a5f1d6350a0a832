"""Multi-label training: multi-hot targets from the loader, mixup/cutmix on them, the validation metrics, the
monitor, a trained fold's metrics and checkpoints (loadable by plain timm), and the preview titles."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import timm
import torch
import torch.distributed as dist
from sklearn.metrics import average_precision_score
from train_fixtures import child_env, tiny_config

from helpers.augment import InputPrep
from helpers.checkpoints import load_model
from helpers.config import ConfigError
from helpers.dataset import prepare_dataset
from helpers.loaders import build_loader
from helpers.plots import show_curves
from helpers.precision import Precision
from helpers.preview import target_titles
from helpers.run_folder import RunFolder
from helpers.settings import resolve_settings
from helpers.targets import decode_label_set
from helpers.tasks import MultiLabel, SingleLabel
from helpers.train import (
    best_epochs,
    build_parts,
    evaluate,
    fold_rows,
    fold_targets,
    gather_predictions,
    train_fold,
)

CPU = torch.device("cpu")
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def prepared(outputs, make_multilabel_dataset):
    """A factory: (cfg, info, run) of a tiny multilabel dataset for a config with the given changes."""

    def make(**changes):
        cfg = tiny_config(make_multilabel_dataset(), task="multilabel", **changes)
        return cfg, prepare_dataset(cfg), RunFolder.of(cfg)

    return make


def test_loader_yields_multi_hot_targets(prepared):
    cfg, info, _ = prepared()
    rows = fold_rows(info, 0)[1]
    x, y, indices = next(iter(build_loader(cfg, rows, False, 0, CPU, num_classes=info.num_classes)))
    assert y.dtype == torch.float32 and y.shape == (len(x), info.num_classes)
    for target, index in zip(y, indices, strict=True):
        expected = decode_label_set(rows["label_idx"].iloc[int(index)])
        assert torch.nonzero(target).flatten().tolist() == expected
    with pytest.raises(ValueError, match="num_classes"):
        build_loader(cfg, rows, False, 0, CPU)


def test_multilabel_metrics_leave_out_classes_without_a_positive():
    targets = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 0]], dtype=np.float32)
    logits = np.array(
        [[2.0, -1.0, 3.0], [-2.0, 1.0, 0.5], [0.5, 2.0, -1.0], [-1.0, -3.0, 2.0]], dtype=np.float32
    )
    metrics = MultiLabel().epoch_metrics(logits, targets)
    # class 2 has no positive: the mean is over classes 0 and 1 (each ranked perfectly here)
    assert metrics["val_map"] == pytest.approx(1.0)
    assert average_precision_score(targets[:, :2], logits[:, :2], average="macro") == pytest.approx(1.0)
    # at 0.5 the predictions are [1,0,1], [0,1,1], [1,1,0], [0,0,1]: 4 true positives, 3 false positives
    assert metrics["val_f1_micro"] == pytest.approx(2 * 4 / (2 * 4 + 3 + 0))
    assert metrics["val_f1_macro"] == pytest.approx(1.0)  # over classes 0 and 1, both without a mistake
    bce = torch.nn.functional.binary_cross_entropy_with_logits(
        torch.from_numpy(logits), torch.from_numpy(targets)
    )
    assert metrics["val_loss"] == pytest.approx(bce.item())


def test_mixup_and_cutmix_mix_multi_hot_targets_with_the_images_lambda(prepared):
    cfg, info, _ = prepared(mixup=0.4, cutmix=0.4, label_smoothing=0.0)
    cfg, _ = resolve_settings(cfg, info)
    model = timm.create_model("test_resnet", num_classes=info.num_classes)
    parts = build_parts(cfg, model, info.num_classes, 1, CPU, fold_targets(info, 0))
    targets = torch.tensor([[1, 0, 1, 0], [0, 1, 0, 0], [0, 0, 1, 1], [1, 1, 0, 0]], dtype=torch.float32)
    torch.manual_seed(0)
    for _ in range(6):  # mixup and cutmix batches both
        x = torch.rand(4, 3, 8, 8)
        mixed_x, mixed = parts.mixup(x.clone(), targets.clone())
        assert mixed.shape == targets.shape
        lam = float((mixed[0] - targets[3]).abs().sum() / (targets[0] - targets[3]).abs().sum())
        np.testing.assert_allclose(mixed, lam * targets + (1 - lam) * targets.flip(0), atol=1e-6)
    assert parts.loss_fn(torch.zeros(4, 4), mixed).item() == pytest.approx(np.log(2), rel=1e-5)


def test_monitor_auto_is_val_map_and_val_acc_is_refused(prepared):
    cfg, info, _ = prepared()
    resolved, lines = resolve_settings(cfg, info)
    assert (resolved.task, resolved.monitor) == ("multilabel", "val_map")
    assert "monitor val_map: the multilabel default" in lines
    with pytest.raises(ConfigError, match=r"monitor='val_acc': a multilabel run reports"):
        resolve_settings(cfg.replace(monitor="val_acc"), info)
    with pytest.raises(ConfigError, match="task='multiclass', but the prepared data is multilabel"):
        resolve_settings(cfg.replace(task="multiclass"), info)


@pytest.mark.parametrize("img_size", [32, 64])
def test_a_multilabel_fold_trains_with_finite_metrics(prepared, img_size):
    cfg, info, run = prepared(epochs=2, img_size=img_size, ema=True, ema_decay=0.9, grad_accum=2)
    metrics = train_fold(cfg, info, 0, run, CPU)
    assert len(metrics) == 2
    for column in ["train_loss", "val_loss", "val_map", "val_f1_micro", "val_f1_macro", "ema_val_map"]:
        assert np.isfinite(metrics[column]).all(), column
    assert "val_acc" not in metrics
    assert ((metrics["val_map"] > 0) & (metrics["val_map"] <= 1)).all()
    written = pd.read_csv(run.metrics)
    assert {"val_map", "val_f1_micro", "val_f1_macro"} <= set(written.columns)
    best = best_epochs(metrics, "val_map")
    assert best["val_map"].iloc[0] == metrics["val_map"].max()

    ckpt = torch.load(run.checkpoint(0, "best_score"), weights_only=True)
    assert ckpt["config"]["task"] == "multilabel" and ckpt["config"]["monitor"] == "val_map"
    assert ckpt["metrics"]["val_map"] == best["val_map"].iloc[0]
    plain = timm.create_model(ckpt["backbone"], num_classes=ckpt["num_classes"])
    plain.load_state_dict(ckpt["model"])  # strict
    assert ckpt["num_classes"] == info.num_classes == 4
    assert show_curves(metrics).axes[1].get_title() == "validation mAP (macro)"


def test_a_multilabel_fold_trains_with_mixup(prepared):
    cfg, info, run = prepared(epochs=1, mixup=0.2, cutmix=0.2, batch_size=8)
    metrics = train_fold(cfg, info, 0, run, CPU)
    assert np.isfinite(metrics[["train_loss", "val_loss", "val_map"]].to_numpy()).all()


def test_target_titles_name_classes_or_label_sets():
    classes = ["ant", "bee", "cat"]
    assert target_titles(SingleLabel(), torch.tensor([2, 0]), classes) == ["cat", "ant"]
    hot = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
    assert target_titles(MultiLabel(), hot, classes, "|") == ["ant|cat", "(none)"]


def test_gathered_predictions_keep_multi_hot_labels(tmp_path):
    """gather_predictions (DDP validation) on 2-D labels: rows in index order, the sampler's repeat once."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        rng = np.random.default_rng(0)
        logits = rng.random((5, 3)).astype(np.float32)
        labels = (rng.random((5, 3)) > 0.5).astype(np.float32)
        indices = np.array([3, 4, 0, 1, 3])  # index 3 repeated, as the sampler pads a share
        got_logits, got_labels, got_indices = gather_predictions(logits, labels, indices)
    finally:
        dist.destroy_process_group()
    assert got_indices.tolist() == [0, 1, 3, 4]
    assert got_labels.shape == (4, 3)
    np.testing.assert_array_equal(got_labels, labels[[2, 3, 0, 1]])
    np.testing.assert_array_equal(got_logits, logits[[2, 3, 0, 1]])


def test_the_lr_finder_runs_the_multilabel_step(prepared):
    from helpers.lr_finder import find_lr

    cfg, info, _ = prepared(batch_size=4)
    found = find_lr(cfg, info, device=CPU, updates=12)
    assert len(found.lrs) >= 2 and np.isfinite(found.losses).all()
    assert found.losses[0] == pytest.approx(np.log(2), abs=0.2)  # BCE of a fresh model, not cross-entropy


@pytest.mark.slow
def test_two_processes_validate_a_multilabel_run_like_one(tmp_path, monkeypatch, make_multilabel_dataset):
    """helpers.distributed under torchrun (2 CPU processes on gloo): the gathered multi-hot labels give the
    metrics one process computes from the saved checkpoint."""
    data = make_multilabel_dataset(n=33)  # 11 validation images in fold 0: the sampler pads one share
    outputs = tmp_path / "outputs"
    cfg = tiny_config(data, run_name="mlddp", task="multilabel", epochs=1, batch_size=4)
    run = RunFolder(outputs / "runs" / "mlddp")
    run.write_config(cfg)
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    env = child_env(outputs, drop=("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"))
    done = subprocess.run(
        [*launch, "-m", "helpers.distributed", "--run-name", "mlddp", "--expect-world-size", "2"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    row = pd.read_csv(run.metrics).iloc[-1]

    monkeypatch.setenv("KIT_OUTPUTS", str(outputs))
    info = prepare_dataset(cfg)
    rows = fold_rows(info, 0)[1]
    loader = build_loader(cfg, rows, False, 0, CPU, num_classes=info.num_classes)
    model, meta = load_model(run.checkpoint(0, "last"))
    assert meta["config"]["task"] == "multilabel"
    prep = InputPrep.for_backbone("test_resnet", channels_last=True)
    alone = evaluate(model, loader, CPU, Precision("cpu", torch.float32), prep, MultiLabel())
    for name in ("val_loss", "val_map", "val_f1_micro", "val_f1_macro"):
        assert row[name] == pytest.approx(alone[name], rel=1e-5), name


def test_a_nan_score_is_beaten_by_any_number():
    from helpers.train import _improved

    assert _improved("val_map", 0.1, float("nan"))
    assert not _improved("val_map", float("nan"), 0.1)
    assert _improved("val_loss", 0.5, 0.6) and not _improved("val_map", 0.5, 0.6)


def test_a_multilabel_fold_trains_under_bf16_autocast(prepared):
    """Mixed precision: the BCE and the metrics take float32 logits whatever the autocast dtype."""
    cfg, info, run = prepared(precision="bf16")
    metrics = train_fold(cfg, info, 0, run, CPU)
    assert np.isfinite(metrics[["train_loss", "val_loss", "val_map"]].to_numpy()).all()
