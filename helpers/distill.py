"""Knowledge distillation: fold k of a run learns from its teachers' fold-k models, run live on its batches.

A run names `teachers`: other runs of the same data set, classes and folds (helpers.sources resolves each
name to its members). For fold k the student learns from each teacher's fold-k checkpoint, which was
trained on the other folds and never saw fold k's validation rows, so the student's validation score stays
out-of-fold; a teacher of another data set, class list or split, or without a fold-k checkpoint, is refused
by name (`fold_teachers`). The teachers run in eval mode on the student's own augmented (and mixed) batch:
each re-normalises it from the student's mean and std to its own (timm's `DistillationTeacher`) and resizes
it to its own input size, and their outputs are averaged at the distillation temperature
(`Task.teacher_logits`). The loss is timm's `LogitDistillationTask` (softmax KL) or its sigmoid variant
(helpers.losses), with (1 - distill_weight) on the labels' loss and distill_weight on the teachers'.

What the teachers are (run, checkpoint file and its SHA-256) is saved in each `last` checkpoint, and a
resumed fold whose teachers changed stops with the difference: they define what the fold learns.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F
from timm.task import DistillationTeacher
from torch import nn

from helpers.augment import InputPrep
from helpers.checkpoints import load_checkpoint, load_model
from helpers.config import Config, ConfigError
from helpers.dataset import DataInfo, dataset_name_of
from helpers.run_folder import RunFolder
from helpers.sources import SourceMember, combined_members
from helpers.tasks import Task, task_for


@dataclass(frozen=True)
class FoldTeacher:
    """One teacher model of a fold: its run, its fold-k checkpoint and its weight in the average."""

    run: str
    path: Path
    weight: float


def _refuse(member: SourceMember, why: str) -> ConfigError:
    return ConfigError(f"teachers: {member.run.name!r} cannot teach this run: {why}")


def check_teacher(member: SourceMember, info: DataInfo, student: RunFolder) -> None:
    """Refuse a teacher that is the student itself, or of another data set, task, class list or split:
    its fold k would not be the student's fold k, and its models may have trained on the student's
    validation rows."""
    if member.run.path.resolve() == student.path.resolve():
        raise _refuse(member, "it is this run itself")
    teacher = member.run.read_config()
    if dataset_name_of(teacher) != info.name:
        raise _refuse(
            member, f"it trained on data set {dataset_name_of(teacher)!r}, this run on {info.name!r}"
        )
    if teacher.task != info.task:
        raise _refuse(member, f"it is a {teacher.task} run and this run is {info.task}")
    if not member.run.split.exists():
        raise _refuse(member, f"{member.run.split} is missing, so its folds are unknown: run its 01 again")
    split = member.run.read_split()
    if split != info.split.to_dict():
        raise _refuse(
            member,
            f"its folds ({split}) are not this run's ({info.split.to_dict()}): with other folds, its fold-k "
            "model may have trained on this run's fold-k validation rows",
        )


def teachers_of(cfg: Config) -> list[SourceMember]:
    """The members of every run in `teachers`, each name weighing alike."""
    return combined_members(cfg.teachers, "teachers")


def fold_teachers(cfg: Config, info: DataInfo, fold: int, student: RunFolder) -> list[FoldTeacher]:
    """The checkpoints that teach fold `fold`: each teacher's own fold-`fold` model, after the guard."""
    found = []
    for member in teachers_of(cfg):
        check_teacher(member, info, student)
        path = member.run.checkpoint(fold, member.kind)
        if not path.exists():
            raise _refuse(
                member,
                f"it has no fold {fold} {member.kind} checkpoint ({path}); another fold's model trained on "
                f"fold {fold}'s validation rows. Train its fold {fold}, or leave fold {fold} out of `folds`",
            )
        classes = load_checkpoint(path, mmap=True)["classes"]
        if classes != info.classes:
            raise _refuse(member, f"it was trained on classes {classes}, this run has {info.classes}")
        found.append(FoldTeacher(member.run.name, path, member.weight))
    return found


def teaching_plan(cfg: Config, info: DataInfo, student: RunFolder) -> pd.DataFrame:
    """Which checkpoints teach which fold (03's table), checked by the guard: one row per fold and teacher,
    with the folds the teacher's model trained on (never the fold it teaches)."""
    rows = []
    for fold in cfg.folds or info.split.folds:
        for teacher in fold_teachers(cfg, info, fold, student):
            trained_on = [k for k in info.split.folds if k != fold]
            rows.append(
                {
                    "fold": fold,
                    "teacher": teacher.run,
                    "checkpoint": teacher.path.name,
                    "weight": round(teacher.weight, 4),
                    "trained_on_folds": trained_on,
                }
            )
    return pd.DataFrame(rows)


def file_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def identity(teachers: Sequence[FoldTeacher]) -> list[dict[str, Any]]:
    """What a fold's teachers are: run, checkpoint file, its SHA-256 and weight (saved in `last`)."""
    return [
        {"run": t.run, "checkpoint": t.path.name, "sha256": file_hash(t.path), "weight": t.weight}
        for t in teachers
    ]


class TeacherEnsemble(nn.Module):
    """The teachers of a fold as one timm teacher: the student's normalised batch in, one set of logits out
    whose probabilities at the temperature are the teachers' weighted mean (`Task.teacher_logits`).

    Each member re-normalises the batch to its own mean and std (`DistillationTeacher.normalize_input`)
    and resizes it to its own input size. Its `pretrained_cfg` holds the student's mean and std, so timm's
    outer teacher wrapper hands the batch over unchanged. `seconds` adds up the time spent here."""

    def __init__(
        self,
        members: Sequence[DistillationTeacher],
        sizes: Sequence[int],
        weights: Sequence[float],
        task: Task,
        temperature: float,
        student: InputPrep,
        device: torch.device,
    ) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        self.sizes, self.weights, self.task, self.temperature = list(sizes), list(weights), task, temperature
        self.pretrained_cfg = {"mean": student.mean, "std": student.std}
        mean = torch.tensor(student.mean, device=device).view(1, -1, 1, 1)
        std = torch.tensor(student.std, device=device).view(1, -1, 1, 1)
        self.register_buffer("student_mean", mean, persistent=False)
        self.register_buffer("student_std", std, persistent=False)
        self.seconds = 0.0

    def member_inputs(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The batch as each member takes it: its normalisation, its size."""
        inputs = []
        for member, size in zip(self.members, self.sizes, strict=True):
            xt = member.normalize_input(x, self.student_mean, self.student_std)
            if tuple(xt.shape[-2:]) != (size, size):
                xt = F.interpolate(
                    xt, size=(size, size), mode="bilinear", align_corners=False, antialias=True
                )
            inputs.append(xt)
        return inputs

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        started = time.perf_counter()
        inputs = self.member_inputs(x)
        logits = [member(xt) for member, xt in zip(self.members, inputs, strict=True)]
        combined = self.task.teacher_logits(logits, self.weights, self.temperature)
        if combined.is_cuda:
            torch.cuda.synchronize(combined.device)  # the time is the teachers', not queued work
        self.seconds += time.perf_counter() - started
        return combined


class Distiller:
    """A distilled fold's training loss: timm's distillation task around the student and its teachers.
    Called with the model the step trains (the student, or DDP around it), the batch and its targets."""

    def __init__(self, timm_task: nn.Module, ensemble: TeacherEnsemble, teachers: list[dict[str, Any]]):
        self.timm_task, self.ensemble, self.teachers = timm_task, ensemble, teachers

    def __call__(self, model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        self.timm_task.trainable_module = model
        return self.timm_task(x, target)["loss"]

    def take_seconds(self) -> float:
        """The teachers' forward time since the last call."""
        seconds, self.ensemble.seconds = self.ensemble.seconds, 0.0
        return seconds


def build_distiller(
    cfg: Config,
    info: DataInfo,
    fold: int,
    student_run: RunFolder,
    model: nn.Module,
    loss_fn: nn.Module,
    device: torch.device,
) -> Distiller | None:
    """Fold `fold`'s distillation loss around the student `model` and its labels' loss; None without
    teachers."""
    if not cfg.teachers:
        return None
    teachers = fold_teachers(cfg, info, fold, student_run)
    members, sizes = [], []
    for teacher in teachers:
        teacher_model, ckpt = load_model(teacher.path, device)
        if ckpt["config"].get("channels_last"):
            teacher_model = teacher_model.to(memory_format=torch.channels_last)
        teacher_model.requires_grad_(False)
        members.append(DistillationTeacher(teacher_model, device=device))
        sizes.append(int(ckpt["config"]["img_size"]))
    task = task_for(cfg)
    student = InputPrep.for_backbone(cfg.backbone, cfg.channels_last)
    weights = [t.weight for t in teachers]
    ensemble = TeacherEnsemble(members, sizes, weights, task, cfg.distill_temperature, student, device)
    timm_task = task.distillation(
        student_model=model,
        teacher_model=DistillationTeacher(ensemble, device=device),
        criterion=loss_fn,
        distill_loss_weight=cfg.distill_weight,
        task_loss_weight=1.0 - cfg.distill_weight,
        temperature=cfg.distill_temperature,
        device=device,
        verbose=False,
    )
    return Distiller(timm_task, ensemble, identity(teachers))


def check_resumed_teachers(state: dict[str, Any] | None, distiller: Distiller | None, path: Path) -> None:
    """Refuse to resume a fold whose teachers are not the ones its `last` checkpoint learnt from."""
    if state is None:
        return
    before = state.get("teachers") or []
    now = distiller.teachers if distiller is not None else []
    if before != now:
        raise ValueError(
            f"{path} learnt from teachers {before} and this run's are {now}: a teacher's checkpoint changed "
            "(retrained) or the list did. Set resume=False to start this fold again, or choose another run_name."
        )
