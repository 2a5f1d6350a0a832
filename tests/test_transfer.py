"""Fine-tuning: the frozen body, timm's layer decay through the schedules, resume across the phases, the recipe."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import timm
import torch
from timm.optim import param_groups_layer_decay
from train_fixtures import tiny_config

import helpers.train as train_mod
from helpers.checkpoints import load_model
from helpers.config import Config, ConfigError
from helpers.dataset import prepare_dataset
from helpers.model import create_model
from helpers.run_folder import RunFolder
from helpers.schedules import build_schedule
from helpers.settings import resolve_settings
from helpers.train import build_parts, fold_targets, train_fold
from helpers.transfer import body_is_frozen, build_optimizer, freeze_body, head_parameters

CPU = torch.device("cpu")
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def weights_file(tmp_path):
    """test_resnet weights from another task (7 classes), as a pretrained file: its head is dropped on load."""
    torch.manual_seed(123)
    path = tmp_path / "pretrained.pth"
    torch.save(timm.create_model("test_resnet", num_classes=7).state_dict(), path)
    return path


@pytest.fixture
def prepared(outputs, csv_dataset, weights_file):
    def make(**changes):
        cfg = tiny_config(csv_dataset, weights_file=str(weights_file), **changes)
        return cfg, prepare_dataset(cfg), RunFolder.of(cfg)

    return make


def _head_names(model: torch.nn.Module) -> set[str]:
    head = {id(p) for p in head_parameters(model)}
    return {name for name, p in model.named_parameters() if id(p) in head}


@pytest.fixture
def epochs_seen(monkeypatch):
    """Per epoch trained: the plain model's state before and after, and whether the body was frozen."""
    seen = []
    real = train_mod.train_one_epoch

    def recording(model, loader, parts, device, desc="train", position=None):
        plain = train_mod.unwrap(model)
        before = {k: v.clone() for k, v in plain.state_dict().items()}
        out = real(model, loader, parts, device, desc, position)
        seen.append((before, {k: v.clone() for k, v in plain.state_dict().items()}, body_is_frozen(plain)))
        return out

    monkeypatch.setattr(train_mod, "train_one_epoch", recording)
    return seen


def test_frozen_epochs_train_the_head_alone_and_keep_the_bodys_batch_norm_statistics(prepared, epochs_seen):
    cfg, info, run = prepared(epochs=3, freeze_epochs=2, layer_decay=0.8, ema=True, ema_decay=0.9)
    metrics = train_fold(cfg, info, 0, run, CPU)
    head = _head_names(create_model("test_resnet", info.num_classes))
    assert head == {"fc.weight", "fc.bias"}
    assert [frozen for *_, frozen in epochs_seen] == [True, True, False]
    stats = [
        k for k in epochs_seen[0][0] if k.endswith(("running_mean", "running_var", "num_batches_tracked"))
    ]
    assert len(stats) >= 3 * 4  # the body's batch-norm layers are really there to watch

    for epoch, (before, after, _) in enumerate(epochs_seen):
        changed = {k for k in before if not torch.equal(before[k], after[k])}
        if epoch < 2:  # frozen: the head alone changes; the body's weights and statistics stay
            assert changed == head, (epoch, sorted(changed - head))
        else:  # thawed: the body's weights and its batch-norm statistics train too
            assert head <= changed
            assert {k for k in before if k.endswith(".weight") and k not in head} <= changed
            assert set(stats) <= changed
    assert metrics["body_frozen"].tolist() == [True, True, False]
    assert (metrics["lr_body"][:2] == 0).all() and (metrics["lr_body"][2:] > 0).all()
    assert (metrics["lr_body"][2:] < metrics["lr"][2:]).all()  # layer decay: the body's lowest lr is lower
    # the checkpoints record the fine-tuning settings the run trained with
    last = torch.load(run.checkpoint(0, "last"), weights_only=True)
    assert last["config"]["freeze_epochs"] == 2 and last["config"]["layer_decay"] == 0.8


def test_a_fully_frozen_run_leaves_the_body_as_the_weights_file_has_it(prepared, weights_file):
    cfg, info, run = prepared(epochs=1, freeze_epochs=1, layer_decay=1.0)
    train_fold(cfg, info, 0, run, CPU)
    trained = torch.load(run.checkpoint(0, "last"), weights_only=True)["model"]
    pretrained = torch.load(weights_file, weights_only=True)
    body = [k for k in trained if not k.startswith("fc.")]
    assert body and all(torch.equal(trained[k], pretrained[k]) for k in body)
    assert trained["fc.weight"].shape[0] == info.num_classes


def test_optimizer_groups_and_lrs_follow_timms_layer_decay(prepared):
    cfg, info, _ = prepared(layer_decay=0.6, lr=0.01, weight_decay=0.05, epochs=3)
    model = create_model("test_resnet", info.num_classes)
    optimizer = build_optimizer(model, cfg.optimizer, cfg.lr, cfg.weight_decay, cfg.layer_decay)
    expected = param_groups_layer_decay(model, weight_decay=0.05, layer_decay=0.6)
    assert len(optimizer.param_groups) == len(expected) > 2
    for group, want in zip(optimizer.param_groups, expected, strict=True):
        assert [id(p) for p in group["params"]] == [id(p) for p in want["params"]]
        assert group["weight_decay"] == want["weight_decay"]
        assert group["lr"] == pytest.approx(0.01 * want["lr_scale"])
    scales = sorted({g["lr_scale"] for g in optimizer.param_groups})
    assert scales[-1] == 1.0 and scales[0] == pytest.approx(0.6 ** (len(scales) - 1))
    head = {id(p) for p in head_parameters(model)}
    head_groups = [g for g in optimizer.param_groups if head & {id(p) for p in g["params"]}]
    assert len(head_groups) == 2  # weight with decay, bias without
    assert all(g["lr_scale"] == 1.0 for g in head_groups)


@pytest.mark.parametrize("scheduler", ["onecycle", "warmup_cosine", "plateau", "none"])
def test_the_schedules_keep_the_layer_ratios(prepared, scheduler):
    cfg, info, _ = prepared(layer_decay=0.5, lr=0.01, scheduler=scheduler, warmup_epochs=1.0, epochs=3)
    model = create_model("test_resnet", info.num_classes)
    parts = build_parts(cfg, model, info.num_classes, 4, CPU, fold_targets(info, 0))
    peaks = {i: 0.0 for i in range(len(parts.optimizer.param_groups))}
    for _ in range(12):
        for i, group in enumerate(parts.optimizer.param_groups):
            peaks[i] = max(peaks[i], group["lr"])
            head_lr = max(g["lr"] for g in parts.optimizer.param_groups)
            assert group["lr"] == pytest.approx(head_lr * group["lr_scale"], rel=1e-6)
        parts.optimizer.step()
        parts.schedule.after_update()
        parts.schedule.after_epoch(0.5)
    if scheduler == "onecycle":  # each group peaks at its own scaled lr
        for i, group in enumerate(parts.optimizer.param_groups):
            assert peaks[i] == pytest.approx(0.01 * group["lr_scale"], rel=1e-2)


def test_one_group_onecycle_still_peaks_at_lr():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.1)
    schedule = build_schedule("onecycle", optimizer, 0.1, 2, 4)
    assert schedule.scheduler.optimizer.param_groups[0]["max_lr"] == pytest.approx(0.1)


class Crash(Exception):
    """Stands in for the process dying right after an epoch's `last` checkpoint."""


@pytest.mark.parametrize("killed_after", [0, 2], ids=["in-the-frozen-phase", "after-thawing"])
def test_a_run_stopped_in_either_phase_resumes_bit_equal(prepared, monkeypatch, killed_after):
    changes = dict(epochs=4, freeze_epochs=2, layer_decay=0.7, grad_accum=2, ema=True, ema_decay=0.9)
    changes.update(mixup=0.2, augment="light")
    cfg, info, run_a = prepared(run_name="whole", **changes)
    train_fold(cfg, info, 0, run_a, CPU)

    cfg_b = cfg.replace(run_name="stopped")
    run_b = RunFolder.of(cfg_b)
    save = train_mod.save_checkpoint

    def dies_after(path, *args, **kwargs):
        save(path, *args, **kwargs)
        if path.name.endswith("_last.pt") and kwargs["epoch"] == killed_after:
            raise Crash

    monkeypatch.setattr(train_mod, "save_checkpoint", dies_after)
    with pytest.raises(Crash):
        train_fold(cfg_b, info, 0, run_b, CPU)
    monkeypatch.setattr(train_mod, "save_checkpoint", save)
    torch.manual_seed(999)  # whatever state the process is in, the resumed epochs reseed
    train_fold(cfg_b, info, 0, run_b, CPU)

    a, b = pd.read_csv(run_a.metrics), pd.read_csv(run_b.metrics)
    assert b["epoch"].tolist() == [0, 1, 2, 3] and b["body_frozen"].tolist() == [True, True, False, False]
    for column in ["lr", "lr_body", "train_loss", "val_loss", "val_acc", "ema_val_loss"]:
        np.testing.assert_array_equal(b[column], a[column], err_msg=column)
    for kind in ["last", "ema", "best_score"]:
        wa = torch.load(run_a.checkpoint(0, kind), weights_only=True)["model"]
        wb = torch.load(run_b.checkpoint(0, kind), weights_only=True)["model"]
        assert all(torch.equal(wa[k], wb[k]) for k in wa), kind


def test_a_fine_tuned_checkpoint_loads_in_plain_timm(prepared):
    cfg, info, run = prepared(epochs=2, freeze_epochs=1, layer_decay=0.7)
    train_fold(cfg, info, 0, run, CPU)
    path = run.checkpoint(0, "best_score")
    ckpt = torch.load(path, weights_only=True)
    plain = timm.create_model(ckpt["backbone"], num_classes=ckpt["num_classes"])
    plain.load_state_dict(ckpt["model"])  # strict: same keys, same shapes, no frozen-layer variants
    assert all(p.requires_grad for p in plain.parameters())
    kit_model, _ = load_model(path)
    images = torch.randn(2, 3, cfg.img_size, cfg.img_size)
    with torch.no_grad():
        assert torch.allclose(plain.eval()(images), kit_model(images), atol=1e-6)


def test_freeze_body_thaws_again():
    model = timm.create_model("test_resnet", num_classes=3)
    freeze_body(model, True)
    assert body_is_frozen(model)
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["fc.weight", "fc.bias"]
    freeze_body(model, False)
    assert all(p.requires_grad for p in model.parameters())


# --- settings and the input size ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value"), [("freeze_epochs", -1), ("layer_decay", 0.0), ("layer_decay", 1.5)]
)
def test_impossible_fine_tuning_values_are_named(name, value):
    with pytest.raises(ConfigError, match=name):
        Config(**{name: value})


def _info_with_side(outputs, make_csv_dataset, side):
    """A prepared dataset whose table says every image is side x side."""
    cfg = tiny_config(make_csv_dataset(name=f"side{side}"))
    info = prepare_dataset(cfg)
    info.table["height"] = info.table["width"] = side
    return info


def test_pretrained_weights_get_their_own_input_size_unless_the_images_are_smaller(outputs, make_csv_dataset):
    big, small = (
        _info_with_side(outputs, make_csv_dataset, 300),
        _info_with_side(outputs, make_csv_dataset, 50),
    )
    cfg = Config(backbone="resnet18", pretrained=True)
    resolved, lines = resolve_settings(cfg, big)
    assert resolved.img_size == 224 and lines[:2] == [
        "img_size 224: resnet18's pretrained input size (timm's data config; the images' median side is 300 px)",
        "crop_pct 0.95: resnet18's pretrained eval crop (timm's data config): resize to img_size / 0.95, centre crop",
    ]
    assert lines[2].startswith("task multiclass: ") and lines[3] == "monitor val_acc: the multiclass default"
    assert (resolved.task, resolved.monitor) == ("multiclass", "val_acc")
    assert resolved.crop_pct == 0.95
    resolved, lines = resolve_settings(cfg, small)
    assert resolved.img_size == 64 and "median side 50 px" in lines[0]
    assert resolve_settings(cfg.replace(img_size=96), small)[0].img_size == 96
    assert "default input size" in resolve_settings(cfg.replace(pretrained=False), big)[1][0]


def test_the_curves_shade_the_frozen_epochs_and_draw_both_learning_rates():
    from helpers.plots import show_curves

    history = pd.DataFrame(
        {
            "fold": 0,
            "epoch": [0, 1, 2],
            "body_frozen": [True, False, False],
            "lr": [1e-3, 3e-3, 1e-4],
            "lr_body": [0.0, 1e-3, 3e-5],
            "train_loss": [1.0, 0.8, 0.6],
            "val_loss": [1.1, 0.9, 0.7],
            "val_acc": [0.5, 0.6, 0.7],
        }
    )
    fig = show_curves(history)
    lr_axis = fig.axes[2]
    labels = [line.get_label() for line in lr_axis.get_lines()]
    assert labels == ["fold 0 head", "fold 0 body (lowest)"]
    np.testing.assert_array_equal(lr_axis.get_lines()[1].get_ydata(), history["lr_body"])
    for ax in fig.axes:
        (span,) = [p for p in ax.patches if p.get_label() == "body frozen"]
        assert span.get_x() == -0.5 and span.get_width() == 1.0
    old = show_curves(history.drop(columns=["body_frozen", "lr_body"]))  # a run from before these columns
    assert not any(ax.patches for ax in old.axes) and len(old.axes[2].get_lines()) == 1
