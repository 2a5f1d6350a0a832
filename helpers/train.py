"""The one training loop: `train_one_epoch` and `evaluate` return flat metric dicts; `train_fold` runs a fold.

Device-agnostic (CUDA or CPU), with autocast and one GradScaler per run, gradient accumulation (leftover
micro-batches at the end of an epoch still make an update), clipping after unscaling, label smoothing,
EMA, mixup/cutmix, early stopping, and resume from the `last` checkpoint. Randomness is reseeded from
(seed, fold, epoch) at each epoch, so a resumed run replays exactly what an uninterrupted one would.

A run with `teachers` adds their distillation loss to the labels' (helpers.distill), and a run with
pseudo-labels adds them to every fold's training rows (helpers.pseudo_rows), never to its validation rows.

A stop signal (helpers.stopping) ends training at the next optimizer update: the `last` checkpoint then
holds the epoch's position (helpers.epoch_position), and a resumed run goes on from that step to the same
weights and metrics as a run never stopped. A non-finite loss, gradient norm or weight stops the fold
without saving anything after the last good checkpoint (helpers.finite).

The same loop trains data-parallel when a process group is initialised (helpers.distributed, under
torchrun): the model is wrapped in DistributedDataParallel, each process trains and validates its share of
the images, validation gathers every share so all processes compute the same metrics over exactly the
validation set, and only rank 0 writes checkpoints and metrics.csv.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from timm.data import Mixup
from timm.utils import ModelEmaV3
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from helpers.augment import InputPrep
from helpers.checkpoints import load_checkpoint, save_checkpoint, unwrap
from helpers.config import Config, ConfigError
from helpers.dataset import DataInfo, build_store
from helpers.distill import Distiller, build_distiller, check_resumed_teachers
from helpers.epoch_position import EpochPosition, capture_rng, restore_rng
from helpers.finite import LossWatch
from helpers.loaders import build_loader, sample_seed
from helpers.model import create_model
from helpers.precision import Precision, pick_device, resolve_precision
from helpers.pseudo_rows import pseudo_training_rows, with_pseudo_labels
from helpers.run_folder import RunFolder
from helpers.schedules import Schedule, build_schedule
from helpers.settings import resolve_task
from helpers.stopping import StopRequested, check, gather, signal_name, stop_signals_caught, test_signal
from helpers.stopping import barrier as stop_barrier
from helpers.tasks import SingleLabel, Task, task_for, task_named
from helpers.transfer import build_optimizer, freeze_body, keep_frozen_statistics, lr_range


@dataclass
class TrainParts:
    """What one optimisation step needs besides the model and the batch."""

    optimizer: torch.optim.Optimizer
    loss_fn: nn.Module
    precision: Precision
    scaler: torch.amp.GradScaler
    schedule: Schedule
    grad_accum: int = 1
    clip_grad: float = 0.0
    ema: ModelEmaV3 | None = None
    mixup: Mixup | None = None
    prep: InputPrep = InputPrep((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))  # uint8 -> 0..1 unless given
    updates: int = 0  # optimizer updates so far in this fold
    task: Task = field(default_factory=SingleLabel)  # what validation measures (helpers.tasks)
    distill: Distiller | None = None  # a distilled fold's loss, with its teachers (helpers.distill)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def world() -> tuple[int, int]:
    """(number of processes, this process's rank): (1, 0) unless a process group is initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


def _progress(iterable: Iterable[Any] | None = None, **kwargs: Any) -> tqdm:
    """A progress bar on rank 0 only: one set of bars per run, however many processes train."""
    if world()[1] > 0:
        kwargs["disable"] = True
    return tqdm(iterable, **kwargs)


def train_one_epoch(
    model: nn.Module,
    loader,
    parts: TrainParts,
    device: torch.device,
    desc: str = "train",
    position: EpochPosition | None = None,
) -> dict[str, float]:
    """One pass over the loader; returns the mean training loss and the number of images.

    With a DistributedDataParallel model, these are over the images of all processes (the sampler's padded
    repeats included: they were trained on too). Batch-norm layers of a frozen body keep their statistics.
    `position` (advanced in place after every update) continues an epoch stopped mid-way: the loader must
    then yield the batches after its step (EpochSampler.set_epoch's skip). A stop signal raises
    StopRequested just after an update; a non-finite loss or gradient norm, NonFiniteLoss.
    """
    model.train()
    keep_frozen_statistics(model)
    n_batches, accum = len(loader), parts.grad_accum
    ddp = isinstance(model, DistributedDataParallel)
    position = position if position is not None else EpochPosition(epoch=0)
    position.loss_sum = (
        torch.zeros((), device=device) if position.loss_sum is None else position.loss_sum.to(device)
    )
    parts.optimizer.zero_grad(set_to_none=True)
    randomness = position.rng or capture_rng()
    batches = iter(loader)  # a loader's first iterator draws its base seed from torch: undone here
    restore_rng(randomness)
    watch = LossWatch(desc, getattr(loader, "dataset", None), parts.scaler, n_batches)
    bar = _progress(batches, desc=desc, leave=False, unit="batch", total=n_batches, initial=position.step)
    for i, (x, y, idx) in enumerate(bar, start=position.step):
        x, y = parts.prep(x, device), y.to(device, non_blocking=True)
        target = y
        if parts.mixup is not None:
            x, target = parts.mixup(x, y)
        group_start = (i // accum) * accum
        group_size = min(accum, n_batches - group_start)
        updating = i - group_start + 1 == group_size
        # DDP all-reduces gradients during backward: only the micro-batch that updates needs it
        with model.no_sync() if ddp and not updating else nullcontext():
            with parts.precision.context():
                if parts.distill is not None:
                    loss = parts.distill(model, x, target)
                else:
                    loss = parts.loss_fn(model(x), target)
            parts.scaler.scale(loss / group_size).backward()
        watch.add(i, loss, idx, lr_range(parts.optimizer)[1])
        position.loss_sum += loss.detach().float() * len(y)
        position.seen += len(y)
        test_signal(desc, i)
        if updating:
            watch.add_update(i, _update(model, parts))
            position.step = i + 1
            step, steps = math.ceil(position.step / accum), math.ceil(n_batches / accum)
            try:
                check(f"{desc}, step {step} of {steps}", "")
            except StopRequested:
                watch.check()  # nothing non-finite is saved
                bar.close()
                raise
        if watch.due(i):
            watch.check()
            loss_now = position.loss_sum.item() / position.seen
            bar.set_postfix(loss=f"{loss_now:.4f}", lr=f"{lr_range(parts.optimizer)[1]:.2e}")
    bar.close()
    watch.check()
    loss_sum, seen = position.loss_sum, position.seen
    if ddp:
        loss_sum, seen = _end_distributed_epoch(model, parts, loss_sum, seen)
    return {"train_loss": loss_sum.item() / max(1, seen), "train_images": seen}


def _end_distributed_epoch(
    model: nn.Module, parts: TrainParts, loss_sum: torch.Tensor, seen: int
) -> tuple[torch.Tensor, int]:
    """The loss summed and the images counted over all processes; every process also takes rank 0's buffers.

    DDP copies rank 0's buffers (batch-norm statistics) to the others at the start of each forward, so after
    the last step each process still holds statistics of its own batches, in the model and in its EMA.
    Taking rank 0's makes every process validate, and go on training, the model that rank 0 checkpoints.
    """
    totals = torch.stack([loss_sum.double(), torch.tensor(float(seen), device=loss_sum.device).double()])
    dist.all_reduce(totals)
    for module in [unwrap(model)] + ([parts.ema.module] if parts.ema is not None else []):
        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)
    return totals[0], int(totals[1].item())


def _update(model: nn.Module, parts: TrainParts) -> torch.Tensor | None:
    """One optimizer update; returns the gradient norm before clipping (None without clipping)."""
    norm = None
    if parts.clip_grad > 0:
        parts.scaler.unscale_(parts.optimizer)
        norm = nn.utils.clip_grad_norm_(model.parameters(), parts.clip_grad)
    parts.scaler.step(parts.optimizer)
    parts.scaler.update()
    parts.optimizer.zero_grad(set_to_none=True)
    parts.updates += 1
    parts.schedule.after_update()
    if parts.ema is not None:
        parts.ema.update(unwrap(model), step=parts.updates)
    return norm


@torch.no_grad()
def predict(
    model: nn.Module,
    loader,
    device: torch.device,
    precision: Precision,
    prep: InputPrep,
    desc: str = "predict",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Logits (float32), labels and dataset indices for every sample the loader yields, in loader order.

    A stop signal ends it after the current batch (helpers.stopping), saving nothing."""
    model.eval()
    logits, labels, indices = [], [], []
    with stop_signals_caught():
        for i, (x, y, idx) in enumerate(_progress(loader, desc=desc, leave=False, unit="batch")):
            with precision.context():
                out = model(prep(x, device))
            logits.append(out.float().cpu())
            labels.append(y)
            indices.append(idx)
            test_signal(desc, i)
            check(f"{desc}, batch {i + 1} of {len(loader)}")
    return torch.cat(logits).numpy(), torch.cat(labels).numpy(), torch.cat(indices).numpy()


def evaluate(
    model: nn.Module,
    loader,
    device: torch.device,
    precision: Precision,
    prep: InputPrep,
    task: Task,
) -> dict[str, float]:
    """The task's validation metrics over the whole set (not the last batch): `Task.epoch_metrics`, the
    same functions 04 reports under those keys.

    In a multi-process run each process predicts its share of the set and the shares are gathered, so
    every process returns the same metrics, over exactly the set.
    """
    predictions = predict(model, loader, device, precision, prep, desc="validate")
    if world()[0] > 1:
        predictions = gather_predictions(*predictions)
    logits, labels, _ = predictions
    return task.epoch_metrics(logits, labels)


def gather_predictions(
    logits: np.ndarray, labels: np.ndarray, indices: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every process's predictions, in dataset-index order with each index once: the sampler pads the
    shares to equal length by repeating samples, and a repeat must not count twice. A collective call."""
    shares: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(shares, (logits, labels, indices))
    logits, labels, indices = (np.concatenate(part) for part in zip(*shares, strict=True))
    indices, first = np.unique(indices, return_index=True)
    return logits[first], labels[first], indices


def build_parts(
    cfg: Config,
    model: nn.Module,
    num_classes: int,
    updates_per_epoch: int,
    device: torch.device,
    train_targets: np.ndarray,
) -> TrainParts:
    """Optimizer (with layer decay), loss, precision, scaler, schedule, EMA and mixup for a fresh fold.
    `train_targets`: the fold's training targets (`fold_targets`), which balanced class weights count."""
    optimizer = build_optimizer(model, cfg.optimizer, cfg.lr, cfg.weight_decay, cfg.layer_decay)
    task = task_for(cfg)  # resolve_task settled it
    mixup = None
    if cfg.mixup > 0 or cfg.cutmix > 0:
        # multi-hot targets are mixed with the images' lambda and smoothed towards 0.5 (timm's multi_label)
        mixup = Mixup(
            mixup_alpha=cfg.mixup,
            cutmix_alpha=cfg.cutmix,
            label_smoothing=cfg.label_smoothing,
            num_classes=num_classes,
            multi_label=task.mixes_multi_label,
        )
    smoothing = 0.0 if mixup is not None else cfg.label_smoothing  # mixup smooths the targets it mixes
    balanced = cfg.class_weights == "balanced"
    loss_fn = task.loss(cfg.loss, smoothing, cfg.focal_gamma, balanced, train_targets, num_classes).to(device)
    precision = resolve_precision(cfg.precision, device)
    schedule = build_schedule(
        cfg.scheduler, optimizer, cfg.lr, cfg.epochs, updates_per_epoch, cfg.warmup_epochs, cfg.monitor
    )
    ema = ModelEmaV3(model, decay=cfg.ema_decay) if cfg.ema else None
    return TrainParts(
        optimizer,
        loss_fn,
        precision,
        precision.scaler(),
        schedule,
        cfg.grad_accum,
        cfg.clip_grad,
        ema,
        mixup,
        InputPrep.for_backbone(cfg.backbone, cfg.channels_last),
        task=task,
    )


def higher_is_better(monitor: str) -> bool:
    return monitor != "val_loss"


def _improved(monitor: str, value: float, best: float | None) -> bool:
    """Whether an epoch's value beats the best so far; a NaN (a multilabel val_map over a validation set
    without any positive) beats nothing, and anything beats it."""
    if best is None or math.isnan(best):
        return True
    return value > best if higher_is_better(monitor) else value < best


def best_epochs(metrics: pd.DataFrame, monitor: str) -> pd.DataFrame:
    """Each fold's best epoch by the monitored metric (highest val_acc or val_map, lowest val_loss).

    Of tied epochs the first, as the fold's best_score checkpoint holds it.
    """
    by_fold = metrics.groupby("fold")[monitor]
    return metrics.loc[by_fold.idxmax() if higher_is_better(monitor) else by_fold.idxmin()]


@dataclass
class FoldState:
    """What a fold carries from one epoch to the next, and through a resume (in its `last` checkpoint)."""

    epoch: int = 0  # the next epoch to train
    best: dict[str, float | None] = field(default_factory=lambda: {"best_score": None, "best_loss": None})
    stale: int = 0  # epochs since the monitored metric last improved
    finished: bool = False
    position: EpochPosition | None = None  # where `epoch` stopped mid-way, to go on from (this process's)

    def record(self, cfg: Config, row: dict[str, Any]) -> list[str]:
        """Take an epoch's metrics row; returns the best_* checkpoint kinds it improves on."""
        improved = []
        for kind, metric in (("best_score", cfg.monitor), ("best_loss", "val_loss")):
            if _improved(metric, row[metric], self.best[kind]):
                self.best[kind] = row[metric]
                improved.append(kind)
        self.stale = 0 if "best_score" in improved else self.stale + 1
        self.epoch = row["epoch"] + 1
        self.finished = self.epoch == cfg.epochs or bool(self.early_stop(cfg))
        return improved

    def early_stop(self, cfg: Config) -> str:
        """Why the fold stops before its last epoch; empty when it does not."""
        if cfg.patience > 0 and self.stale >= cfg.patience and self.epoch < cfg.epochs:
            return (
                f"early stop after {self.epoch} of {cfg.epochs} epochs: "
                f"no {cfg.monitor} gain in the last {self.stale}"
            )
        return ""


def fold_rows(info: DataInfo, fold: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Fold k's training rows (every other fold's) and its validation rows."""
    table = info.table
    return table[table["fold"] != fold], table[table["fold"] == fold]


def fold_targets(info: DataInfo, fold: int) -> np.ndarray:
    """Fold k's training targets (the task's `targets`), what the loss's class weights count."""
    return task_named(info.task).targets(fold_rows(info, fold)[0], info.num_classes)


def _resume_state(cfg: Config, path: Path) -> dict[str, Any] | None:
    if not (cfg.resume and path.exists()):
        return None
    ckpt = load_checkpoint(path)
    # a setting added since the checkpoint was written counts as its default: what the older kit did (it
    # trained multiclass tasks only)
    resumable = Config.resumable()
    older = {**Config().to_dict(), "task": "multiclass"}
    before = {k: v for k, v in {**older, **ckpt["config"]}.items() if k not in resumable}
    now = {k: v for k, v in cfg.to_dict().items() if k not in resumable}
    changed = sorted(k for k in now if before.get(k) != now[k])
    if changed:
        raise ValueError(
            f"{path} was trained with other settings ({', '.join(f'{k}: {before.get(k)!r} -> {now[k]!r}' for k in changed)}). "
            "Set resume=False to start this fold again, or choose another run_name."
        )
    trained_by, world_size = ckpt.get("world_size", 1), world()[0]
    if not ckpt["finished"] and trained_by != world_size:
        raise ValueError(
            f"{path} was trained by {trained_by} process(es), and this run has {world_size}: the batches per "
            f"epoch, and with them the schedule, would change. Resume it with {trained_by} process(es), or "
            "set resume=False to start this fold again."
        )
    return ckpt


def _say_trained(cfg: Config, run: RunFolder, fold: int, state: dict[str, Any]) -> None:
    """One line (rank 0) for a fold that resuming finds finished: else a re-run would show nothing."""
    if world()[1] == 0:
        print(
            f"fold {fold} is already trained ({state['epoch'] + 1} of {cfg.epochs} epochs); its checkpoints "
            f"are {run.checkpoints}/fold{fold}_*.pt. To train it again, set resume=False, or choose another run_name."
        )


def _fold_model(cfg: Config, num_classes: int, device: torch.device) -> nn.Module:
    """A fresh model on the device, channels_last, with SyncBatchNorm across processes and compiled
    (`nn.Module.compile`: in place, so its state dict and checkpoints keep their keys) when asked."""
    model = create_model(cfg.backbone, num_classes, cfg.pretrained, cfg.weights_file).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if cfg.sync_bn and world()[0] > 1:
        if device.type != "cuda":
            raise ValueError("sync_bn=True needs CUDA: PyTorch's SyncBatchNorm has no CPU implementation")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if cfg.compile:
        model.compile()
    return model


def _restore(state: dict[str, Any] | None, model: nn.Module, parts: TrainParts, rank: int) -> FoldState:
    """An unfinished fold's `last` checkpoint loaded into the model and parts; a fresh state without one.

    A mid-epoch checkpoint (a stop signal's) names its epoch and holds where in it each process stood."""
    if state is None:
        return FoldState()
    model.load_state_dict(state["model"])
    parts.optimizer.load_state_dict(state["optimizer"])
    parts.schedule.scheduler.load_state_dict(state["scheduler"])
    parts.scaler.load_state_dict(state["scaler"])
    if parts.ema is not None:
        parts.ema.module.load_state_dict(state["ema"])
    parts.updates = state["updates"]
    if state.get("position") is not None:
        position = EpochPosition.of_rank(state["position"], rank)
        return FoldState(state["epoch"], state["best"], state["stale"], position=position)
    return FoldState(state["epoch"] + 1, state["best"], state["stale"])


def _data_parallel(model: nn.Module, device: torch.device) -> nn.Module:
    """What the training step runs: the model, or DDP around it with several processes (which broadcasts
    rank 0's weights to the other processes here)."""
    if world()[0] == 1:
        return model
    return DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)


def _validate(model: nn.Module, loader, parts: TrainParts, device: torch.device) -> dict[str, float]:
    """The model's validation metrics and, with EMA on, its average's (as ema_val_*)."""
    metrics = evaluate(model, loader, device, parts.precision, parts.prep, parts.task)
    if parts.ema is not None:
        ema_metrics = evaluate(parts.ema.module, loader, device, parts.precision, parts.prep, parts.task)
        metrics.update({f"ema_{k}": v for k, v in ema_metrics.items()})
    return metrics


def _save_epoch(
    cfg: Config,
    run: RunFolder,
    classes: list[str],
    model: nn.Module,
    parts: TrainParts,
    row: dict[str, Any],
    state: FoldState,
    improved: list[str],
) -> None:
    """An epoch's files: the best checkpoints it improves, the EMA, its metrics.csv row, then `last`.

    The row goes before `last`: a crash in between replays this epoch, row and all.
    """
    fold, config = row["fold"], cfg.to_dict()
    for kind in improved:
        save_checkpoint(run.checkpoint(fold, kind), model, config, classes, row)
    if parts.ema is not None:
        save_checkpoint(run.checkpoint(fold, "ema"), parts.ema.module, config, classes, row)
    run.record_metrics(row)
    _save_last(cfg, run, classes, model, parts, state, fold, row["epoch"], row)


def _save_last(
    cfg: Config,
    run: RunFolder,
    classes: list[str],
    model: nn.Module,
    parts: TrainParts,
    state: FoldState,
    fold: int,
    epoch: int,
    row: dict[str, Any],
    position: dict[str, Any] | None = None,
) -> Path:
    """The fold's resumable `last` checkpoint: at the end of `epoch` (its metrics `row`), or with
    `position` (every process's EpochPosition.saved()) inside it, `row` then saying where."""
    return save_checkpoint(
        run.checkpoint(fold, "last"),
        model,
        cfg.to_dict(),
        classes,
        row,
        epoch=epoch,
        world_size=world()[0],
        updates=parts.updates,
        best=state.best,
        stale=state.stale,
        finished=state.finished,
        optimizer=parts.optimizer.state_dict(),
        scheduler=parts.schedule.scheduler.state_dict(),
        scaler=parts.scaler.state_dict(),
        ema=parts.ema.module.state_dict() if parts.ema is not None else None,
        teachers=parts.distill.teachers if parts.distill is not None else None,
        rng={"torch": torch.get_rng_state(), "python": random.getstate()},
        position=position,
    )


def _save_stop(
    cfg: Config,
    run: RunFolder,
    classes: list[str],
    model: nn.Module,
    parts: TrainParts,
    state: FoldState,
    fold: int,
    position: EpochPosition,
    n_batches: int,
    stop: StopRequested,
) -> StopRequested:
    """Save a mid-epoch `last` checkpoint at `position` (rank 0; every process's position and random state
    in it) and return the stop, saying where it stopped and how to go on. A collective call."""
    ranks = gather(position.saved())
    path = run.checkpoint(fold, "last")
    if world()[1] == 0:
        where = {"fold": fold, "epoch": position.epoch, "step": position.step}
        saved = {**where, "ranks": ranks}
        _save_last(cfg, run, classes, model, parts, state, fold, position.epoch, where, saved)
    stop_barrier()
    accum = parts.grad_accum
    steps = math.ceil(n_batches / accum)
    where = f"fold {fold} epoch {position.epoch}, step {math.ceil(position.step / accum)} of {steps}"
    if position.step == n_batches:
        where += ", before its validation ended"
    return StopRequested(
        stop.signum,
        f"stopped by {signal_name(stop.signum)} at {where}; saved in {path}: resume by running 03 "
        "again (or the same command)",
    )


def _end_short(bar: tqdm, reason: str) -> None:
    """End an epoch bar that stops before its total full at the epochs run, saying why: tqdm.auto paints
    a bar closed short of its total red, as it does a failure."""
    bar.set_postfix_str(reason, refresh=False)
    bar.total = bar.n
    widget = getattr(bar, "container", None)  # tqdm.notebook's bar keeps its own maximum
    if widget is not None:
        widget.children[1].max = bar.n
    bar.refresh()


def train_fold(
    cfg: Config,
    info: DataInfo,
    fold: int,
    run: RunFolder,
    device: torch.device | None = None,
    after_epoch: Callable[[dict[str, Any]], str] | None = None,
) -> pd.DataFrame:
    """Train one fold to the end (or early stop), resuming from its `last` checkpoint when there is one.

    Writes fold<k>_{best_score,best_loss,last[,ema]}.pt and one metrics.csv row per epoch; returns the fold's
    rows of metrics.csv. In a multi-process run (see the module docstring) every process calls this with its
    own device; each reads the `last` checkpoint to resume, and rank 0 alone writes. The first
    `freeze_epochs` epochs train the head alone (helpers.transfer); one schedule covers the whole run.
    `after_epoch` (a tuning trial's pruner, helpers.tune) sees each epoch's metrics row before it is saved;
    a reason it returns ends the fold there like an early stop: that epoch's checkpoints are saved and the
    fold counts as finished.
    """
    world_size, rank = world()
    device = device or pick_device()
    cfg = resolve_task(cfg, info)
    # -- resume: a finished fold trains nothing; an unfinished one continues from its `last` checkpoint
    resumed = _resume_state(cfg, run.checkpoint(fold, "last"))
    if resumed is not None and resumed["finished"]:
        _say_trained(cfg, run, fold, resumed)
        return run.read_metrics(fold)

    # -- set-up: the same initial weights in every process; each process loads its share of the images
    seed_everything(cfg.seed + fold)
    model = _fold_model(cfg, info.num_classes, device)
    train_rows, val_rows = fold_rows(info, fold)
    train_rows = with_pseudo_labels(train_rows, pseudo_training_rows(cfg, info, run))  # never val_rows
    train_loader = build_loader(cfg, train_rows, True, fold, device, world_size, rank, info.num_classes)
    val_loader = build_loader(cfg, val_rows, False, fold, device, world_size, rank, info.num_classes)
    updates_per_epoch = math.ceil(len(train_loader) / cfg.grad_accum)
    parts = build_parts(cfg, model, info.num_classes, updates_per_epoch, device, fold_targets(info, fold))
    parts.distill = build_distiller(cfg, info, fold, run, model, parts.loss_fn, device)
    check_resumed_teachers(resumed, parts.distill, run.checkpoint(fold, "last"))
    # -- restore: an unfinished fold's weights, optimizer, schedule, scaler, EMA, counters and position
    state = _restore(resumed, model, parts, rank)

    # -- the loop: train, validate, then save; the bar advances once per epoch and ends full. A stop
    # signal ends it at the next update, after saving where the epoch stood (helpers.stopping)
    with (
        stop_signals_caught(),
        _progress(desc=f"fold {fold}", unit="epoch", initial=state.epoch, total=cfg.epochs) as bar,
    ):
        ended = ""
        for epoch in range(state.epoch, cfg.epochs):
            body_frozen = epoch < cfg.freeze_epochs
            if epoch in (state.epoch, cfg.freeze_epochs):  # a phase starts: head alone, or every layer
                freeze_body(model, body_frozen)
                # after restoring, and anew per phase: DDP broadcasts rank 0's weights and reduces the
                # gradients of the parameters that train now (a frozen one would wait for a gradient)
                stepped = _data_parallel(model, device)
            # each process its own dropout and mixup draws; augmentation is seeded per image by the sampler
            seed_everything(sample_seed(cfg.seed, fold * 100_000 + epoch) + rank)
            position, state.position = state.position or EpochPosition(epoch), None
            train_loader.sampler.set_epoch(epoch, skip=position.step * train_loader.batch_size)
            done_before = position.step / max(1, len(train_loader))  # a resumed epoch trains the rest
            started = time.perf_counter()
            try:
                desc = f"fold {fold} epoch {epoch}"
                trained = train_one_epoch(stepped, train_loader, parts, device, desc, position)
                train_seconds = time.perf_counter() - started
                lr_body, lr_head = lr_range(parts.optimizer)
                row = {"fold": fold, "epoch": epoch, "body_frozen": body_frozen, "lr": lr_head}
                row.update(lr_body=0.0 if body_frozen else lr_body, **trained)
                if parts.distill is not None:
                    row["teacher_seconds"] = parts.distill.take_seconds()  # the teachers' share of it
                row.update(_validate(model, val_loader, parts, device))
            except StopRequested as stop:
                n_batches = len(train_loader)
                raise _save_stop(
                    cfg, run, info.classes, model, parts, state, fold, position, n_batches, stop
                ) from None
            trained_now = trained["train_images"] * (1 - done_before)  # this run's share of the epoch
            row.update(
                seconds=time.perf_counter() - started,
                images_per_s=trained_now / train_seconds if trained_now else float("nan"),
            )
            parts.schedule.after_epoch(row[cfg.monitor])
            improved = state.record(cfg, row)
            ended = after_epoch(row) if after_epoch is not None else ""
            state.finished = state.finished or bool(ended)
            # -- save-epoch: the processes hold the same weights and metrics, so one writes them
            if rank == 0:
                _save_epoch(cfg, run, info.classes, model, parts, row, state, improved)
            bar.update()
            if state.finished:
                break
        if reason := ended or state.early_stop(cfg):
            _end_short(bar, reason)
    if world_size > 1:
        dist.barrier()  # the others read metrics.csv (and later the `last` files) once rank 0 has written
    return run.read_metrics(fold)


def train_folds(
    cfg: Config, info: DataInfo, run: RunFolder, device: torch.device | None = None
) -> pd.DataFrame:
    """Train the configured folds (all of the data's split when `folds` is empty); returns metrics.csv."""
    unknown = sorted(set(cfg.folds) - set(info.split.folds))
    if unknown:
        raise ConfigError(
            f"folds={cfg.folds}: the data's split ({info.split.describe()}) has no fold {unknown}; "
            f"choose among {info.split.folds}, or [] for all"
        )
    build_store(cfg, info)  # the images at the resolved size, when 01 stored another one
    with stop_signals_caught():  # between folds too: a stop then ends before the next fold starts
        for fold in cfg.folds or info.split.folds:
            train_fold(cfg, info, fold, run, device)
    return run.read_metrics()
