"""Distillation: the teacher/fold guard, the run's temperature and weight in timm's loss, each teacher's
own preprocessing, and a distilled fold that resumes bit-equal (helpers.distill)."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F
from timm.task import DistillationTeacher, LogitDistillationTask
from torch import nn
from train_fixtures import tiny_config

import helpers.train as train
from helpers.config import Config, ConfigError
from helpers.dataset import DataInfo, prepare_dataset
from helpers.distill import build_distiller, fold_teachers, teaching_plan
from helpers.losses import SigmoidDistillationTask
from helpers.run_folder import RunFolder
from helpers.tasks import MultiLabel, SingleLabel
from helpers.train import train_fold, train_folds

pytestmark = pytest.mark.usefixtures("one_thread")


def _data(make_csv_dataset) -> Path:
    """3 classes x 8 images: 12 training images per fold, whole batches of 4 (batch norm needs 2+)."""
    return make_csv_dataset(per_class=8)


def _prepared(data: Path, name: str, **changes) -> tuple[Config, DataInfo, RunFolder]:
    """A run as 01 leaves it: config.json, split.json and the prepared data."""
    cfg = tiny_config(data, **{"run_name": name, "n_folds": 2, "folds": [], **changes})
    run = RunFolder.of(cfg).create()
    info = prepare_dataset(cfg, run)
    run.write_config(cfg)
    return cfg, info, run


def _teacher(data: Path, name: str = "teacher", **changes) -> RunFolder:
    cfg, info, run = _prepared(data, name, **changes)
    train_folds(cfg, info, run)
    return run


def test_fold_k_learns_from_each_teachers_fold_k_model(outputs, make_csv_dataset):
    csv_dataset = _data(make_csv_dataset)
    _teacher(csv_dataset)
    cfg, info, run = _prepared(csv_dataset, "student", teachers=["teacher"])
    plan = teaching_plan(cfg, info, run)
    assert plan["fold"].tolist() == [0, 1]
    assert plan["checkpoint"].tolist() == ["fold0_best_score.pt", "fold1_best_score.pt"]
    assert all(
        fold not in trained for fold, trained in zip(plan["fold"], plan["trained_on_folds"], strict=True)
    )
    (teacher,) = fold_teachers(cfg, info, 1, run)
    assert teacher.path == RunFolder.named("teacher").checkpoint(1, "best_score")


def test_a_teacher_without_that_folds_model_is_refused(outputs, make_csv_dataset):
    csv_dataset = _data(make_csv_dataset)
    _teacher(csv_dataset, folds=[0])
    cfg, info, run = _prepared(csv_dataset, "student", teachers=["teacher"])
    fold_teachers(cfg, info, 0, run)
    with pytest.raises(ConfigError, match=r"'teacher' cannot teach.*no fold 1"):
        fold_teachers(cfg, info, 1, run)


def test_teachers_of_other_folds_data_or_the_run_itself_are_refused(outputs, make_csv_dataset):
    data = _data(make_csv_dataset)
    _prepared(data, "three_folds", n_folds=3)
    _prepared(make_csv_dataset(name="otherdata"), "other_data")
    _prepared(data, "labels_as_sets", task="multilabel")
    for teacher, why in [
        ("three_folds", "its folds"),
        ("other_data", "data set 'otherdata'"),
        ("labels_as_sets", "multilabel run"),
        ("student", "this run itself"),
    ]:
        cfg, info, run = _prepared(data, "student", teachers=[teacher])
        with pytest.raises(ConfigError, match=rf"'{teacher}' cannot teach this run: .*{why}"):
            fold_teachers(cfg, info, 0, run)


def test_temperature_and_weight_reach_timms_loss(outputs, make_csv_dataset):
    csv_dataset = _data(make_csv_dataset)
    _teacher(csv_dataset)
    cfg, info, run = _prepared(
        csv_dataset, "student", teachers=["teacher"], distill_temperature=3.0, distill_weight=0.25
    )
    student = timm.create_model("test_resnet", num_classes=3).eval()
    loss_fn = nn.CrossEntropyLoss()
    distiller = build_distiller(cfg, info, 0, run, student, loss_fn, torch.device("cpu"))
    task = distiller.timm_task
    assert type(task) is LogitDistillationTask
    assert (task.temperature, task.distill_loss_weight, task.task_loss_weight) == (3.0, 0.25, 0.75)
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0])
    with torch.no_grad():
        loss = distiller(student, x, y)
        s, t = student(x), distiller.ensemble(x)
    kl = F.kl_div((s / 3).log_softmax(1), (t / 3).log_softmax(1), reduction="batchmean", log_target=True)
    assert loss.item() == pytest.approx((0.75 * loss_fn(s, y) + 0.25 * 9 * kl).item(), rel=1e-5)


def test_the_sigmoid_distillation_is_a_bce_per_class_at_the_temperature():
    torch.manual_seed(0)
    student = timm.create_model("test_resnet", num_classes=4).eval()
    teacher = timm.create_model("test_resnet", num_classes=4).eval()
    criterion = nn.BCEWithLogitsLoss()
    task = MultiLabel().distillation(
        student, DistillationTeacher(teacher), criterion, distill_loss_weight=0.4, task_loss_weight=0.6,
        temperature=2.0, verbose=False,
    )  # fmt: skip
    assert isinstance(task, SigmoidDistillationTask)
    x, y = torch.randn(3, 3, 32, 32), torch.randint(0, 2, (3, 4)).float()
    with torch.no_grad():
        out = task(x, y)
        s, t = student(x), teacher(x)
    expected_kd = F.binary_cross_entropy_with_logits(s / 2, (t / 2).sigmoid()) * 4
    assert out["kd_loss"].item() == pytest.approx(expected_kd.item(), rel=1e-5)
    assert out["loss"].item() == pytest.approx((0.6 * criterion(s, y) + 0.4 * expected_kd).item(), rel=1e-5)


@pytest.mark.parametrize("task", [SingleLabel(), MultiLabel()], ids=["softmax", "sigmoid"])
def test_the_teachers_combine_to_their_weighted_mean_probabilities(task):
    torch.manual_seed(0)
    logits, weights, temperature = [torch.randn(5, 4) * 3, torch.randn(5, 4)], [0.7, 0.3], 2.5
    combined = task.teacher_logits(logits, weights, temperature)
    expected = sum(w * task.probabilities(z / temperature) for z, w in zip(logits, weights, strict=True))
    assert torch.allclose(task.probabilities(combined / temperature), expected, atol=1e-5)


def test_each_teacher_takes_the_batch_at_its_own_normalisation_and_size(outputs, make_csv_dataset):
    csv_dataset = _data(make_csv_dataset)
    # the teacher: imagenet mean and std, 48 px; the student: test_resnet's 0.5 / 0.5, 32 px
    _teacher(csv_dataset, backbone="test_efficientnet", img_size=48)
    cfg, info, run = _prepared(csv_dataset, "student", teachers=["teacher"])
    student = timm.create_model("test_resnet", num_classes=3)
    distiller = build_distiller(cfg, info, 0, run, student, nn.CrossEntropyLoss(), torch.device("cpu"))
    ensemble = distiller.ensemble
    assert ensemble.sizes == [48]
    seen = []
    ensemble.members[0].model.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    pixels = torch.rand(2, 3, 32, 32)
    ensemble((pixels - 0.5) / 0.5)  # the student's normalised batch
    mean = torch.tensor((0.485, 0.456, 0.406)).view(1, 3, 1, 1)
    std = torch.tensor((0.229, 0.224, 0.225)).view(1, 3, 1, 1)
    expected = F.interpolate((pixels - mean) / std, size=(48, 48), mode="bilinear", antialias=True)
    assert seen[0].shape == (2, 3, 48, 48)
    assert torch.allclose(seen[0], expected, atol=1e-5)


def _stopped_after_first_epoch(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the next fold end as if killed after epoch 0's files: epoch 1 saves nothing."""
    save = train._save_epoch

    def saving(cfg, run, classes, model, parts, row, state, improved):
        if row["epoch"] == 1:
            raise KeyboardInterrupt
        save(cfg, run, classes, model, parts, row, state, improved)

    monkeypatch.setattr(train, "_save_epoch", saving)


def test_a_distilled_fold_resumes_bit_equal_and_refuses_changed_teachers(
    outputs, make_csv_dataset, monkeypatch
):
    csv_dataset = _data(make_csv_dataset)
    teacher = _teacher(csv_dataset)
    settings = dict(teachers=["teacher"], epochs=2, augment="light", mixup=0.2)
    cfg, info, whole = _prepared(csv_dataset, "whole", **settings)
    train_fold(cfg, info, 0, whole)
    cfg, info, resumed = _prepared(csv_dataset, "resumed", **settings)
    with monkeypatch.context() as patch:
        _stopped_after_first_epoch(patch)
        with pytest.raises(KeyboardInterrupt):
            train_fold(cfg, info, 0, resumed)
    saved = torch.load(resumed.checkpoint(0, "last"), weights_only=True)
    assert saved["epoch"] == 0 and saved["teachers"][0]["run"] == "teacher"
    train_fold(cfg, info, 0, resumed)
    a = torch.load(whole.checkpoint(0, "last"), weights_only=True)["model"]
    b = torch.load(resumed.checkpoint(0, "last"), weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    for column in ("train_loss", "val_loss"):
        assert resumed.read_metrics()[column].tolist() == whole.read_metrics()[column].tolist()
    assert resumed.read_metrics()["teacher_seconds"].gt(0).all()

    # a teacher retrained since: the fold's teachers changed, and resuming says so
    cfg, info, changed = _prepared(csv_dataset, "changed", **settings)
    with monkeypatch.context() as patch:
        _stopped_after_first_epoch(patch)
        with pytest.raises(KeyboardInterrupt):
            train_fold(cfg, info, 0, changed)
    ckpt = torch.load(teacher.checkpoint(0, "best_score"), weights_only=True)
    ckpt["model"] = {k: v + 1 if v.is_floating_point() else v for k, v in ckpt["model"].items()}
    torch.save(ckpt, teacher.checkpoint(0, "best_score"))
    with pytest.raises(ValueError, match="learnt from teachers"):
        train_fold(cfg, info, 0, changed)


def test_a_multilabel_student_learns_from_its_teachers_sigmoids(outputs, make_multilabel_dataset):
    data = make_multilabel_dataset(n=40)  # folds of 22 and 18: no training batch of one image
    _teacher(data, task="multilabel", folds=[0])
    cfg, info, run = _prepared(data, "student", task="multilabel", folds=[0], teachers=["teacher"])
    metrics = train_folds(cfg, info, run)
    assert metrics["teacher_seconds"].gt(0).all() and metrics["train_loss"].notna().all()
    distiller = build_distiller(cfg, info, 0, run, timm.create_model("test_resnet", num_classes=4),
                                nn.BCEWithLogitsLoss(), torch.device("cpu"))  # fmt: skip
    assert isinstance(distiller.timm_task, SigmoidDistillationTask)
