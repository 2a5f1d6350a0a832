"""Pseudo-labels: chosen from a source's probabilities without reading test labels, thresholded or soft for
both tasks, saved and read back, and trained on by every fold but never validated on (helpers.pseudo_labels,
helpers.pseudo_rows)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import random_rgb, write_image
from train_fixtures import tiny_config

import helpers.train as train
from helpers.config import Config, ConfigError
from helpers.dataset import DataInfo, prepare_dataset
from helpers.inference import probabilities_frame
from helpers.leaderboard import run_row
from helpers.loaders import build_loader
from helpers.pseudo_labels import (
    TEST_IMAGES,
    choose_pseudo_labels,
    prepare_pseudo_labels,
    pseudo_label_counts,
    pseudo_test_note,
    source_probabilities,
)
from helpers.pseudo_rows import probability_columns, pseudo_training_rows, with_pseudo_labels
from helpers.run_folder import BlendFolder, RunFolder
from helpers.targets import SOFT_TARGET
from helpers.tasks import MultiLabel, SingleLabel
from helpers.train import fold_rows, train_fold, train_folds

pytestmark = pytest.mark.usefixtures("one_thread")


def test_thresholds_keep_confident_single_labels():
    probabilities = np.array([[0.95, 0.03, 0.02], [0.5, 0.4, 0.1], [0.05, 0.05, 0.9]])
    accepted, confidence, labels = SingleLabel().pseudo_labels(probabilities, 0.9)
    assert accepted.tolist() == [True, False, True]
    assert confidence.tolist() == [0.95, 0.5, 0.9]
    assert labels == [[0], [0], [2]]


@pytest.mark.parametrize("allow_empty", [False, True])
def test_thresholds_keep_label_sets_whose_every_class_is_decided(allow_empty):
    probabilities = np.array([[0.97, 0.02, 0.95], [0.97, 0.4, 0.01], [0.01, 0.02, 0.03]])
    accepted, confidence, labels = MultiLabel(allow_empty).pseudo_labels(probabilities, 0.9)
    assert accepted.tolist() == [True, False, allow_empty]  # the last: sure of an empty set
    assert confidence[0] == pytest.approx(0.95) and confidence[1] == pytest.approx(0.6)
    assert labels == [[0, 2], [0], []]


def _with_test_images(data: Path, n: int = 6) -> list[str]:
    """Test images in data/test_image and their labels in test_labels.csv (which must never be read)."""
    rng = np.random.default_rng(5)
    ids = [f"t{i:02d}" for i in range(n)]
    for image_id in ids:
        write_image(data / "test_image" / f"{image_id}.jpg", random_rgb(rng))
    ids = [f"{image_id}.jpg" for image_id in ids]  # a test folder's ids are its file names
    pd.DataFrame({"id": ids, "label": "cat"}).to_csv(data / "test_labels.csv", index=False)
    return ids


def _source(cfg: Config, ids: list[str], probabilities: np.ndarray, classes: list[str]) -> RunFolder:
    """A source run as its 05 leaves it: config.json and test_probabilities.csv."""
    run = RunFolder.named("source").create()
    run.write_config(cfg.replace(run_name="source", teachers=[], pseudo_source=""))
    run.write_test_probabilities(probabilities_frame(ids, probabilities, classes))
    return run


def _run(data: Path, task: str = "multiclass", **changes) -> tuple[Config, DataInfo, RunFolder]:
    cfg = tiny_config(data, **{"run_name": "pseudo", "n_folds": 2, "task": task, **changes})
    run = RunFolder.of(cfg).create()
    info = prepare_dataset(cfg, run)
    run.write_config(cfg)
    return cfg, info, run


def _no_test_labels(monkeypatch: pytest.MonkeyPatch) -> None:
    read = pd.read_csv

    def reading(path, *args, **kwargs):
        assert not str(path).endswith("test_labels.csv"), "the test labels were read"
        return read(path, *args, **kwargs)

    monkeypatch.setattr(pd, "read_csv", reading)


def test_chosen_from_saved_test_probabilities_without_the_test_labels(outputs, make_csv_dataset, monkeypatch):
    data = make_csv_dataset(per_class=8)
    ids = _with_test_images(data)
    cfg, info, run = _run(data, pseudo_source="source", pseudo_threshold=0.8)
    probabilities = np.array(
        [
            [0.9, 0.05, 0.05],
            [0.4, 0.3, 0.3],
            [0.1, 0.85, 0.05],
            [0.0, 0.0, 1.0],
            [0.6, 0.3, 0.1],
            [0.8, 0.1, 0.1],
        ]
    )
    _source(cfg, ids, probabilities, info.classes)
    _no_test_labels(monkeypatch)
    table = prepare_pseudo_labels(cfg, info, run)
    assert table["id"].tolist() == ["t05.jpg", "t02.jpg", "t00.jpg", "t03.jpg"]  # least confident first
    assert table["label"].tolist() == [info.classes[i] for i in (0, 1, 0, 2)]
    assert set(table["origin"]) == {TEST_IMAGES} and set(table["source"]) == {"source"}
    assert np.allclose(table[probability_columns(info.classes)].to_numpy(), probabilities[[5, 2, 0, 3]])
    assert pseudo_label_counts(table, info)["pseudo"].tolist() == [2, 1, 1]
    assert "pseudo-labels of these test images" in pseudo_test_note(run)


def test_a_blend_source_labels_the_test_images_with_its_own_probabilities(outputs, make_csv_dataset):
    data = make_csv_dataset(per_class=8)
    ids = _with_test_images(data, n=2)
    cfg, info, run = _run(data, pseudo_source="blended", pseudo_threshold=0.8)
    _source(cfg, ids, np.array([[0.5, 0.5, 0.0], [0.5, 0.0, 0.5]]), info.classes)  # its member, unsure
    blend = BlendFolder.named("blended")
    blend.path.mkdir(parents=True)
    blended = np.array([[0.1, 0.9, 0.0], [0.05, 0.05, 0.9]])  # a stack is no weighted mean of its members
    blend.write_test_probabilities(probabilities_frame(ids, blended, info.classes))
    members = [{"run": "source", "checkpoint": "best_score", "tta_views": ["identity"], "weight": 1.0}]
    blend.write_record({"name": "blended", "method": "stack", "members": members})
    rows, probabilities, origin = source_probabilities(cfg, info)
    assert rows["id"].tolist() == ids and origin == TEST_IMAGES
    assert np.allclose(probabilities, blended)
    table = prepare_pseudo_labels(cfg, info, run)
    assert dict(zip(table["id"], table["label"], strict=True)) == {
        ids[0]: info.classes[1],
        ids[1]: info.classes[2],
    }


def test_training_images_are_never_pseudo_labelled(outputs, make_csv_dataset):
    data = make_csv_dataset(per_class=8)
    cfg, info, _ = _run(data, pseudo_source="source", test_dir="train_image", pseudo_threshold=0.5)
    ids = [Path(p).name for p in info.table["path"]]
    _source(cfg, ids, np.tile([1.0, 0.0, 0.0], (len(ids), 1)), info.classes)
    assert choose_pseudo_labels(cfg, info).empty


@pytest.mark.parametrize("task", ["multiclass", "multilabel"])
def test_the_saved_table_reads_back_as_the_same_training_rows(
    outputs, make_csv_dataset, make_multilabel_dataset, task
):
    data = make_csv_dataset(per_class=8) if task == "multiclass" else make_multilabel_dataset()
    ids = _with_test_images(data)
    changes = {"allow_empty_labels": True} if task == "multilabel" else {}
    cfg, info, run = _run(
        data, task, pseudo_source="source", pseudo_threshold=0.6, pseudo_soft=True, **changes
    )
    rng = np.random.default_rng(0)
    if task == "multiclass":
        probabilities = rng.dirichlet(np.full(len(info.classes), 0.3), size=len(ids))
    else:
        probabilities = rng.choice([0.02, 0.97], size=(len(ids), len(info.classes)))
        probabilities[0] = 0.02  # an empty set, allowed here
    _source(cfg, ids, probabilities, info.classes)
    chosen = prepare_pseudo_labels(cfg, info, run)
    assert len(chosen) > 0
    read = run.read_pseudo_labels()
    pd.testing.assert_frame_equal(
        read.astype(str), chosen.astype(str).reset_index(drop=True), check_dtype=False
    )
    rows = pseudo_training_rows(cfg, info, run)
    assert rows["id"].tolist() == chosen["id"].tolist()
    assert np.allclose(np.stack(rows[SOFT_TARGET]), chosen[probability_columns(info.classes)].to_numpy())
    hard = MultiLabel() if task == "multilabel" else SingleLabel()
    assert np.array_equal(hard.targets(rows, len(info.classes)), hard.targets(chosen, len(info.classes)))


@pytest.mark.parametrize("task", ["multiclass", "multilabel"])
def test_soft_targets_train_as_the_sources_probabilities(
    outputs, make_csv_dataset, make_multilabel_dataset, task
):
    data = make_csv_dataset(per_class=8) if task == "multiclass" else make_multilabel_dataset()
    cfg, info, _ = _run(data, task)
    labelled = info.table.head(3)
    soft = np.array([[0.7, 0.2, 0.1, 0.0][: info.num_classes]], dtype=np.float32)
    pseudo = info.table.tail(1).assign(**{SOFT_TARGET: list(soft)})
    rows = with_pseudo_labels(labelled, pseudo)
    loader = build_loader(cfg, rows, False, 0, torch.device("cpu"), num_classes=info.num_classes)
    _, targets, _ = next(iter(loader))
    task_object = MultiLabel() if task == "multilabel" else SingleLabel()
    hard = task_object.dense_targets(task_object.targets(labelled, info.num_classes), info.num_classes)
    assert torch.allclose(targets[:3], torch.from_numpy(hard))
    assert torch.allclose(targets[3], torch.from_numpy(soft[0]))


def test_soft_single_labels_refuse_mixup(outputs, make_csv_dataset):
    data = make_csv_dataset(per_class=8)
    ids = _with_test_images(data)
    cfg, info, run = _run(data, pseudo_source="source", pseudo_soft=True, mixup=0.2)
    _source(cfg, ids, np.tile([0.98, 0.01, 0.01], (len(ids), 1)), info.classes)
    prepare_pseudo_labels(cfg, info, run)
    with pytest.raises(ConfigError, match="pseudo_soft=True with mixup"):
        pseudo_training_rows(cfg, info, run)


def test_pseudo_labels_join_every_folds_training_side_and_never_a_validation_fold(
    outputs, make_csv_dataset, monkeypatch
):
    data = make_csv_dataset(per_class=8)
    ids = _with_test_images(data, n=8)
    cfg, info, run = _run(data, pseudo_source="source", folds=[], pseudo_threshold=0.5)
    _source(cfg, ids, np.tile([0.1, 0.8, 0.1], (len(ids), 1)), info.classes)
    pseudo_paths = set(prepare_pseudo_labels(cfg, info, run)["path"])
    assert len(pseudo_paths) == 8
    seen: list[tuple[bool, pd.DataFrame]] = []
    build = train.build_loader

    def recording(cfg, rows, is_train, *args, **kwargs):
        seen.append((is_train, rows))
        return build(cfg, rows, is_train, *args, **kwargs)

    monkeypatch.setattr(train, "build_loader", recording)
    for fold in info.split.folds:
        seen.clear()
        train_fold(cfg, info, fold, run)
        (train_rows,) = [rows for is_train, rows in seen if is_train]
        (val_rows,) = [rows for is_train, rows in seen if not is_train]
        assert pseudo_paths <= set(train_rows["path"])
        assert not pseudo_paths & set(val_rows["path"])
        assert val_rows["path"].tolist() == fold_rows(info, fold)[1]["path"].tolist()


def test_the_leaderboard_marks_pseudo_labelled_and_distilled_runs(outputs, make_csv_dataset):
    data = make_csv_dataset(per_class=8)
    ids = _with_test_images(data)
    cfg, info, run = _run(data, pseudo_source="source", teachers=["big", "bigger"])
    _source(cfg, ids, np.tile([0.98, 0.01, 0.01], (len(ids), 1)), info.classes)
    prepare_pseudo_labels(cfg, info, run)
    row = run_row(run)
    assert (row["teachers"], row["pseudo_labels"]) == ("big, bigger", f"{len(ids)} from source")
    plain = run_row(RunFolder.named("source"))
    assert (plain["teachers"], plain["pseudo_labels"]) == ("", "")


def test_an_unlabelled_folder_is_labelled_by_the_sources_fold_models(outputs, make_csv_dataset):
    data = make_csv_dataset(per_class=8)
    source_cfg, source_info, source = _run(data, run_name="source", folds=[])
    train_folds(source_cfg, source_info, source)
    folder = data.parent / "unlabelled"
    rng = np.random.default_rng(9)
    for i in range(5):
        write_image(folder / f"u{i}.png", random_rgb(rng))
    cfg, info, run = _run(data, pseudo_source="source", unlabelled_dir=str(folder), pseudo_threshold=0.5)
    probabilities, origin = source_probabilities(cfg, info)[1:]
    assert origin == f"unlabelled_dir {folder}" and probabilities.shape == (5, 3)
    assert np.allclose(probabilities.sum(1), 1.0, atol=1e-5)
    table = prepare_pseudo_labels(cfg, info, run)
    assert set(table["path"]) <= {str(folder / f"u{i}.png") for i in range(5)}
    assert (table["confidence"] >= 0.5).all() and pseudo_test_note(run) == ""


@pytest.mark.parametrize("task", ["multiclass", "multilabel"])
def test_a_fold_trains_on_soft_pseudo_labels(outputs, make_csv_dataset, make_multilabel_dataset, task):
    data = make_csv_dataset(per_class=8) if task == "multiclass" else make_multilabel_dataset(n=40)
    ids = _with_test_images(data, n=8)
    cfg, info, run = _run(data, task, pseudo_source="source", pseudo_soft=True, pseudo_threshold=0.5)
    probabilities = np.full((len(ids), info.num_classes), 0.05)
    probabilities[:, 0] = 0.95 if task == "multilabel" else 1 - 0.05 * (info.num_classes - 1)
    _source(cfg, ids, probabilities, info.classes)
    assert len(prepare_pseudo_labels(cfg, info, run)) == len(ids)
    metrics = train_fold(cfg, info, 0, run)
    assert metrics["train_loss"].notna().all()
    assert metrics["train_images"].iloc[0] == (info.table["fold"] != 0).sum() + len(ids)
