"""The training loop: precision choices, accumulation, clipping, schedules, evaluation, checkpoints, resume."""

from __future__ import annotations

import io
import math
import os

import numpy as np
import pandas as pd
import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim import lr_scheduler as sched
from tqdm.std import tqdm as plain_tqdm
from train_fixtures import fixed_samples, flat_params, hand_parts, linear_model, loader_of, tiny_config

import helpers.train as train_mod
from helpers.augment import InputPrep
from helpers.checkpoints import load_model
from helpers.dataset import prepare_dataset
from helpers.finite import NonFiniteLoss
from helpers.precision import Precision, resolve_precision
from helpers.run_folder import RunFolder
from helpers.schedules import build_schedule
from helpers.tasks import SingleLabel
from helpers.train import best_epochs, evaluate, train_fold, train_folds, train_one_epoch

CPU, CUDA = torch.device("cpu"), torch.device("cuda")
METRIC_COLUMNS = [
    "fold",
    "epoch",
    "body_frozen",
    "lr",
    "lr_body",
    "train_loss",
    "val_loss",
    "val_acc",
    "seconds",
    "images_per_s",
]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def prepared(outputs, csv_dataset):
    """A factory: (cfg, info, run) of a tiny prepared dataset for a config with the given changes."""

    def make(**changes):
        cfg = tiny_config(csv_dataset, **changes)
        return cfg, prepare_dataset(cfg), RunFolder.of(cfg)

    return make


def n_train_batches(info, cfg, fold: int = 0) -> int:
    return math.ceil(int((info.table["fold"] != fold).sum()) / cfg.batch_size)


# --- precision -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("setting", "device", "bf16_supported", "dtype", "scaler"),
    [
        ("auto", CPU, None, torch.float32, False),
        ("bf16", CPU, None, torch.bfloat16, False),
        ("fp32", CPU, None, torch.float32, False),
        ("auto", CUDA, True, torch.bfloat16, False),
        ("auto", CUDA, False, torch.float16, True),
        ("bf16", CUDA, True, torch.bfloat16, False),
        ("fp16", CUDA, True, torch.float16, True),
        ("fp16", CUDA, False, torch.float16, True),
        ("fp32", CUDA, True, torch.float32, False),
        ("fp32", CUDA, False, torch.float32, False),
    ],
)
def test_precision_choices(setting, device, bf16_supported, dtype, scaler):
    precision = resolve_precision(setting, device, bf16_supported=bf16_supported)
    assert precision.device_type == device.type
    assert precision.dtype == dtype
    assert precision.autocast == (dtype != torch.float32)
    assert precision.needs_scaler is scaler


@pytest.mark.parametrize(
    ("setting", "device", "bf16_supported", "match"),
    [("fp16", CPU, None, "fp16"), ("bf16", CUDA, False, "bf16")],
)
def test_impossible_precision_is_an_error(setting, device, bf16_supported, match):
    with pytest.raises(ValueError, match=match):
        resolve_precision(setting, device, bf16_supported=bf16_supported)


def test_cpu_scalers_are_enabled_only_for_fp16():
    assert not Precision("cpu", torch.float32).scaler().is_enabled()
    assert not Precision("cpu", torch.bfloat16).scaler().is_enabled()
    try:
        fp16_scaler = Precision("cpu", torch.float16).scaler()
    except (RuntimeError, ValueError, AssertionError) as error:  # pragma: no cover - older torch
        pytest.skip(f"GradScaler refuses CPU construction here: {error}")
    assert fp16_scaler.is_enabled()


def test_precision_context_turns_autocast_on_only_when_asked():
    a, b = torch.randn(4, 4), torch.randn(4, 4)
    with Precision("cpu", torch.float32).context():
        assert not torch.is_autocast_enabled("cpu")
        assert (a @ b).dtype == torch.float32
    with Precision("cpu", torch.bfloat16).context():
        assert torch.is_autocast_enabled("cpu")
        assert (a @ b).dtype == torch.bfloat16


# --- gradient accumulation and clipping -------------------------------------------------------------------


def test_accumulated_half_batches_match_one_full_batch():
    x, y = fixed_samples(16)
    full, accumulated = linear_model(), linear_model()
    start = flat_params(full)
    assert torch.equal(start, flat_params(accumulated))

    full_parts = hand_parts(full, grad_accum=1)
    train_one_epoch(full, loader_of(x, y, 16), full_parts, CPU)
    accum_parts = hand_parts(accumulated, grad_accum=2)
    train_one_epoch(accumulated, loader_of(x, y, 8), accum_parts, CPU)

    assert full_parts.updates == 1 and accum_parts.updates == 1
    assert not torch.allclose(flat_params(full), start)  # the step did something
    for p, q in zip(full.parameters(), accumulated.parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-6)


def test_leftover_micro_batch_still_updates_alone():
    x, y = fixed_samples(24)
    model, reference = linear_model(), linear_model()

    parts = hand_parts(model, grad_accum=2)
    train_one_epoch(model, loader_of(x, y, 8), parts, CPU)  # batches of 8: (0, 1) then 2 alone
    assert parts.updates == 2

    ref_parts = hand_parts(reference, grad_accum=1)
    train_one_epoch(reference, loader_of(x[:16], y[:16], 16), ref_parts, CPU)
    after_group = flat_params(reference)
    train_one_epoch(reference, loader_of(x[16:], y[16:], 8), ref_parts, CPU)
    assert not torch.allclose(flat_params(reference), after_group)  # the leftover step did something
    for p, q in zip(model.parameters(), reference.parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-6)


def _update_norm(clip_grad: float, scaler: torch.amp.GradScaler | None = None) -> float:
    x, y = fixed_samples(8, scale=100.0)  # large inputs: a gradient norm far above the clip
    model = linear_model()
    start = flat_params(model)
    train_one_epoch(
        model, loader_of(x, y, 8), hand_parts(model, lr=1.0, clip_grad=clip_grad, scaler=scaler), CPU
    )
    return float((flat_params(model) - start).norm())


def test_clipping_bounds_the_update():
    assert _update_norm(0.0) > 1.0  # unclipped, the step is large
    assert _update_norm(0.01) <= 0.01 + 1e-6


def test_clipping_happens_after_unscaling():
    """With an enabled scaler, clipping the still-scaled gradients would shrink the step by the scale."""
    try:
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16, enabled=True)
    except (RuntimeError, ValueError, AssertionError) as error:  # pragma: no cover - older torch
        pytest.skip(f"GradScaler refuses CPU construction here: {error}")
    assert _update_norm(0.01, scaler) == pytest.approx(0.01, rel=1e-3)


# --- schedules ----------------------------------------------------------------------------------------------


def _optimizer(lr: float = 0.1) -> torch.optim.Optimizer:
    return torch.optim.SGD([nn.Parameter(torch.zeros(2))], lr=lr)


@pytest.mark.parametrize("name", ["onecycle", "cosine", "cosine_restarts", "warmup_cosine"])
def test_per_update_schedulers_take_exactly_epochs_times_updates_steps(name):
    epochs, per_epoch = 3, 5
    optimizer = _optimizer()
    schedule = build_schedule(name, optimizer, 0.1, epochs, per_epoch, warmup_epochs=1.0)
    assert schedule.per_update
    for _ in range(epochs):
        for _ in range(per_epoch):
            optimizer.step()
            schedule.after_update()  # OneCycleLR raises when stepped past its total
        schedule.after_epoch(0.5)  # per-update schedulers ignore the epoch's metric
    assert schedule.scheduler.last_epoch == epochs * per_epoch


def test_onecycle_starts_low_peaks_at_lr_and_ends_near_zero():
    lr, epochs, per_epoch = 0.1, 3, 5
    optimizer = _optimizer(lr)
    schedule = build_schedule("onecycle", optimizer, lr, epochs, per_epoch)
    used = []  # the lr each update ran with
    for _ in range(epochs * per_epoch):
        used.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.after_update()
    assert used[0] < lr / 10
    assert max(used) == pytest.approx(lr, rel=1e-2)
    assert used[-1] < lr * 1e-3


@pytest.mark.parametrize(("monitor", "mode", "improving"), [("val_acc", "max", 1), ("val_loss", "min", -1)])
def test_plateau_steps_per_epoch_in_the_monitor_direction(monitor, mode, improving):
    optimizer = _optimizer(0.1)
    schedule = build_schedule("plateau", optimizer, 0.1, 4, 5, monitor=monitor)
    assert isinstance(schedule.scheduler, sched.ReduceLROnPlateau)
    assert schedule.scheduler.mode == mode
    assert not schedule.per_update
    before = schedule.scheduler.last_epoch
    for _ in range(7):
        schedule.after_update()
    assert schedule.scheduler.last_epoch == before
    for epoch in range(4):  # steadily improving: the lr stays
        schedule.after_epoch(0.5 + improving * 0.1 * epoch)
    assert schedule.scheduler.last_epoch == before + 4
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1)
    for _ in range(3):  # no improvement for longer than patience: the lr halves
        schedule.after_epoch(0.5)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.05)


def test_train_fold_steps_the_scheduler_once_per_optimizer_update(prepared):
    cfg, info, run = prepared(epochs=3, grad_accum=2, batch_size=4, scheduler="onecycle")
    batches = n_train_batches(info, cfg)
    assert batches % 2 == 1  # a leftover micro-batch in each epoch
    train_fold(cfg, info, 0, run, CPU)
    last = torch.load(run.checkpoint(0, "last"), weights_only=True)
    expected = cfg.epochs * math.ceil(batches / cfg.grad_accum)
    assert last["updates"] == expected
    assert last["scheduler"]["last_epoch"] == expected
    assert last["scheduler"]["total_steps"] == expected


@pytest.mark.parametrize(("epochs", "per_epoch"), [(1, 4), (2, 2), (4, 1)])
def test_onecycle_with_four_updates_in_all(epochs, per_epoch):
    optimizer = _optimizer()
    schedule = build_schedule("onecycle", optimizer, 0.1, epochs, per_epoch)
    for _ in range(epochs * per_epoch):
        optimizer.step()
        schedule.after_update()
    assert schedule.scheduler.last_epoch == epochs * per_epoch


# --- evaluation ---------------------------------------------------------------------------------------------


def test_evaluate_averages_over_the_whole_set():
    x, y = fixed_samples(10, seed=5)
    model = linear_model(seed=3)
    loader = loader_of(x, y, 4)  # batches of 4, 4 and 2
    metrics = evaluate(
        model, loader, CPU, Precision("cpu", torch.float32), InputPrep((0.0,) * 3, (1.0,) * 3), SingleLabel()
    )
    with torch.no_grad():
        logits = model(x)
    expected = F.cross_entropy(logits, y).item()
    last_batch = F.cross_entropy(logits[8:], y[8:]).item()
    assert abs(expected - last_batch) > 1e-3  # the check below can tell them apart
    assert metrics["val_loss"] == pytest.approx(expected, rel=1e-6)
    assert metrics["val_acc"] == pytest.approx(float((logits.argmax(1) == y).float().mean()))


# --- checkpoints and metrics ---------------------------------------------------------------------------------


def test_checkpoints_round_trip_through_plain_timm(prepared):
    cfg, info, run = prepared(epochs=2)
    train_fold(cfg, info, 0, run, CPU)
    folder = run.checkpoints

    best_path = run.checkpoint(0, "best_score")
    ckpt = torch.load(best_path, weights_only=True)
    plain = timm.create_model(ckpt["backbone"], num_classes=ckpt["num_classes"])
    plain.load_state_dict(ckpt["model"])  # strict
    plain.eval()
    kit_model, meta = load_model(best_path)
    images = torch.randn(3, 3, cfg.img_size, cfg.img_size)
    with torch.no_grad():
        assert torch.allclose(plain(images), kit_model(images), atol=1e-6)
    assert ckpt["backbone"] == "test_resnet" and ckpt["num_classes"] == info.num_classes
    assert ckpt["classes"] == info.classes == meta["classes"]
    # the checkpoint carries the config it trained with: the data's task and the monitor resolved for it
    assert ckpt["config"] == cfg.replace(task="multiclass", monitor="val_acc").to_dict()
    assert {"val_acc", "val_loss", "epoch"} <= set(ckpt["metrics"])

    last = torch.load(run.checkpoint(0, "last"), weights_only=True)
    assert {"optimizer", "scheduler", "scaler", "epoch", "rng", "updates", "finished"} <= set(last)
    assert last["epoch"] == cfg.epochs - 1 and last["finished"]

    names = sorted(os.listdir(folder))
    assert not [n for n in names if n.endswith(".tmp")], names
    assert {"fold0_best_score.pt", "fold0_best_loss.pt", "fold0_last.pt"} <= set(names)
    for name in names:
        torch.load(folder / name, weights_only=True)

    metrics = pd.read_csv(run.metrics)
    assert set(METRIC_COLUMNS) <= set(metrics.columns)
    assert metrics["fold"].tolist() == [0, 0]
    assert metrics["epoch"].tolist() == [0, 1]
    assert metrics[METRIC_COLUMNS].notna().all().all()
    assert metrics.loc[metrics["epoch"] == last["epoch"], "val_acc"].item() == pytest.approx(
        last["metrics"]["val_acc"]
    )


# --- non-finite losses -------------------------------------------------------------------------------------


class NanAfter(nn.Module):
    """Cross-entropy that turns NaN after `calls` batches (keeping the graph, so backward still runs)."""

    def __init__(self, calls: int):
        super().__init__()
        self.calls = calls

    def forward(self, logits, target):
        self.calls -= 1
        loss = F.cross_entropy(logits, target)
        return loss * float("nan") if self.calls < 0 else loss


def _nan_loss_after(monkeypatch, calls: int) -> None:
    real = train_mod.build_parts

    def build_parts(*args, **kwargs):
        parts = real(*args, **kwargs)
        parts.loss_fn = NanAfter(calls)
        return parts

    monkeypatch.setattr(train_mod, "build_parts", build_parts)


def test_nan_loss_in_the_first_epoch_stops_before_any_checkpoint(prepared, monkeypatch):
    cfg, info, run = prepared(epochs=2)
    _nan_loss_after(monkeypatch, 0)
    with pytest.raises(NonFiniteLoss):
        train_fold(cfg, info, 0, run, CPU)
    folder = run.checkpoints
    assert not (folder.exists() and os.listdir(folder))
    assert not run.checkpoint(0, "last").exists()
    assert not run.metrics.exists()


def test_nan_loss_in_a_later_epoch_keeps_only_the_good_epochs(prepared, monkeypatch):
    cfg, info, run = prepared(epochs=3)
    _nan_loss_after(monkeypatch, n_train_batches(info, cfg))  # NaN from the first batch of epoch 1
    with pytest.raises(NonFiniteLoss):
        train_fold(cfg, info, 0, run, CPU)
    last = torch.load(run.checkpoint(0, "last"), weights_only=True)
    assert last["epoch"] == 0 and not last["finished"]
    assert all(torch.isfinite(v).all() for v in last["model"].values() if v.is_floating_point())
    assert pd.read_csv(run.metrics)["epoch"].tolist() == [0]


# --- EMA and mixup -----------------------------------------------------------------------------------------


def test_ema_writes_its_checkpoint_and_metrics(prepared):
    cfg, info, run = prepared(ema=True, ema_decay=0.9)
    train_fold(cfg, info, 0, run, CPU)
    ema = torch.load(run.checkpoint(0, "ema"), weights_only=True)
    last = torch.load(run.checkpoint(0, "last"), weights_only=True)
    assert ema["model"].keys() == last["model"].keys()
    assert last["ema"] is not None
    metrics = pd.read_csv(run.metrics)
    assert {"ema_val_acc", "ema_val_loss"} <= set(metrics.columns)
    assert metrics["ema_val_acc"].notna().all()


def test_mixup_trains_an_epoch(prepared):
    cfg, info, run = prepared(mixup=0.2, batch_size=4)
    assert (info.table["fold"] != 0).sum() % 2 == 0  # even batches: timm's Mixup needs them
    metrics = train_fold(cfg, info, 0, run, CPU)
    assert len(metrics) == 1 and np.isfinite(metrics["train_loss"]).all()


def test_mixup_survives_an_odd_sized_last_batch(outputs, make_csv_dataset):
    cfg = tiny_config(make_csv_dataset(per_class=6), n_folds=4, batch_size=8, mixup=0.2)
    info = prepare_dataset(cfg)
    n_train = int((info.table["fold"] != 0).sum())
    if not (n_train % cfg.batch_size % 2 == 1 and n_train % cfg.batch_size > 1):  # e.g. 13 = 8 + 5
        pytest.fail(f"setup: {n_train} training images do not end in an odd batch (>1) of {cfg.batch_size}")
    metrics = train_fold(cfg, info, 0, RunFolder.of(cfg), CPU)
    assert len(metrics) == 1


# --- resuming ----------------------------------------------------------------------------------------------


def test_resume_refuses_changed_settings_and_retrains_without_resume(prepared):
    cfg, info, run = prepared(epochs=1)
    train_fold(cfg, info, 0, run, CPU)
    changed = cfg.replace(lr=cfg.lr * 3)
    with pytest.raises(ValueError, match=r"\blr\b"):
        train_fold(changed, info, 0, run, CPU)

    last_path = run.checkpoint(0, "last")
    before = torch.load(last_path, weights_only=True)
    metrics = train_fold(changed.replace(resume=False), info, 0, run, CPU)
    after = torch.load(last_path, weights_only=True)
    assert after["config"]["lr"] == changed.lr and before["config"]["lr"] == cfg.lr
    assert not all(torch.equal(after["model"][k], before["model"][k]) for k in before["model"])
    assert metrics["epoch"].tolist() == [0]
    assert len(pd.read_csv(run.metrics)) == 1


def test_resuming_a_finished_fold_trains_nothing(prepared):
    cfg, info, run = prepared(epochs=1)
    train_fold(cfg, info, 0, run, CPU)
    last_path = run.checkpoint(0, "last")
    stamp = last_path.stat().st_mtime_ns
    # settings that do not change what is trained may differ
    metrics = train_fold(cfg.replace(num_workers=1, store=False), info, 0, run, CPU)
    assert last_path.stat().st_mtime_ns == stamp
    assert metrics["epoch"].tolist() == [0]


def test_resuming_a_finished_fold_says_where_it_is_and_how_to_train_again(prepared, capsys):
    cfg, info, run = prepared(epochs=1, folds=[0, 1])
    train_folds(cfg, info, run, CPU)
    capsys.readouterr()
    train_folds(cfg, info, run, CPU)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    for fold, line in zip((0, 1), lines, strict=True):
        assert line.startswith(f"fold {fold} is already trained (1 of 1 epochs)")
        assert f"{run.checkpoints}/fold{fold}_*.pt" in line
        assert "resume=False" in line and "run_name" in line


# --- progress bars -------------------------------------------------------------------------------------------


@pytest.fixture
def bars(monkeypatch):
    """Every progress bar helpers.train opens, enabled (whatever TQDM_DISABLE says) and drawn into a string."""
    made = []

    class Recorded(plain_tqdm):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **{**kwargs, "disable": False, "file": io.StringIO()})
            made.append(self)

    monkeypatch.setattr(train_mod, "tqdm", Recorded)
    return made


def _epoch_bars(bars) -> list:
    return [bar for bar in bars if bar.unit == "epoch"]


def test_a_complete_fold_ends_every_bar_full(prepared, bars):
    """tqdm.auto paints a bar closed short of its total red: a complete fold must leave none short."""
    cfg, info, run = prepared(epochs=3)
    train_fold(cfg, info, 0, run, CPU)
    (epoch_bar,) = _epoch_bars(bars)
    assert epoch_bar.n == epoch_bar.total == 3
    assert "3/3" in str(epoch_bar)
    assert len(bars) == 1 + 2 * 3  # the epoch bar, and each epoch's training and validation bars
    assert all(bar.n == bar.total for bar in bars), [str(bar) for bar in bars]


def test_a_failed_epoch_leaves_its_bar_short_and_the_resumed_one_ends_full(prepared, bars, monkeypatch):
    cfg, info, run = prepared(epochs=3)
    build_parts = train_mod.build_parts
    _nan_loss_after(monkeypatch, n_train_batches(info, cfg))  # NaN from the first batch of epoch 1
    with pytest.raises(NonFiniteLoss):
        train_fold(cfg, info, 0, run, CPU)
    monkeypatch.setattr(train_mod, "build_parts", build_parts)
    train_fold(cfg, info, 0, run, CPU)
    failed, resumed = _epoch_bars(bars)
    assert (failed.n, failed.total) == (1, 3)
    assert resumed.initial == 1 and resumed.n == resumed.total == 3


def test_early_stopping_ends_the_bar_at_the_epochs_run_and_says_why(prepared, bars, monkeypatch):
    """The same validation metrics every epoch: no gain after epoch 0, so patience 2 stops after 3 of 5."""
    monkeypatch.setattr(train_mod, "evaluate", lambda *args: {"val_loss": 1.0, "val_acc": 0.5})
    cfg, info, run = prepared(epochs=5, patience=2)
    metrics = train_fold(cfg, info, 0, run, CPU)
    assert metrics["epoch"].tolist() == [0, 1, 2]
    assert torch.load(run.checkpoint(0, "last"), weights_only=True)["finished"]
    (epoch_bar,) = _epoch_bars(bars)
    assert epoch_bar.n == epoch_bar.total == 3
    reason = "early stop after 3 of 5 epochs: no val_acc gain in the last 2"
    assert epoch_bar.postfix == reason
    assert "3/3" in str(epoch_bar) and reason in str(epoch_bar)


# --- the best epoch per fold ------------------------------------------------------------------------------


def test_best_epochs_follow_the_monitor_and_take_the_first_of_ties():
    metrics = pd.DataFrame(
        {
            "fold": [0, 0, 0, 1, 1],
            "epoch": [0, 1, 2, 0, 1],
            "val_acc": [0.5, 0.8, 0.8, 0.9, 0.6],
            "val_loss": [0.9, 0.4, 0.3, 0.2, 0.2],
        }
    )
    assert best_epochs(metrics, "val_acc")[["fold", "epoch"]].values.tolist() == [[0, 1], [1, 0]]
    assert best_epochs(metrics, "val_loss")[["fold", "epoch"]].values.tolist() == [[0, 2], [1, 0]]


@pytest.mark.parametrize("monitor", ["val_acc", "val_loss"])
def test_best_epochs_is_the_epoch_the_best_score_checkpoint_holds(prepared, monitor):
    cfg, info, run = prepared(epochs=3, monitor=monitor)
    metrics = train_fold(cfg, info, 0, run, CPU)
    best = torch.load(run.checkpoint(0, "best_score"), weights_only=True)["metrics"]
    assert best_epochs(metrics, monitor)["epoch"].tolist() == [best["epoch"]]
