"""Predicting with checkpoints: ensembles average probabilities, 04's numbers match plain timm, OOF rows are
complete and come from their own fold, and 05's submission and test-set checks."""

from __future__ import annotations

from pathlib import Path

import albumentations as A
import numpy as np
import pandas as pd
import pytest
import timm
import torch
from albumentations.pytorch import ToTensorV2
from conftest import random_rgb, write_image
from train_fixtures import tiny_config

from helpers import holdout
from helpers.augment import InputPrep
from helpers.checkpoints import save_checkpoint
from helpers.config import Config
from helpers.dataset import prepare_dataset
from helpers.holdout import checked_test_images, sample_submission
from helpers.images import read_image
from helpers.inference import (
    Member,
    describe_ensemble,
    ensemble_members,
    fill_submission,
    load_models,
    predict_checkpoints,
    predict_ensemble,
    predict_folds,
    predict_models,
    trained_checkpoints,
)
from helpers.loaders import build_loader
from helpers.model import _meta_model, data_config_for
from helpers.precision import Precision
from helpers.run_folder import RunFolder
from helpers.tables import DataError
from helpers.tasks import SingleLabel
from helpers.train import train_fold

CPU = torch.device("cpu")
FP32 = Precision("cpu", torch.float32)
PASS = InputPrep((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))  # uint8 batches become 0..1, float ones pass through
CLASSES = ["cat", "dog", "fox"]


def submission_frame(sample, id_col, ids, probabilities, classes):
    """05's submission of a single-label run (its decision: the most probable class)."""
    task = SingleLabel()
    return fill_submission(
        task, sample, id_col, ids, probabilities, task.decide(probabilities, None), classes, " "
    )


def random_model(seed: int, boost_class: int | None = None, scale: float = 1.0) -> torch.nn.Module:
    """A fresh test_resnet; `boost_class` makes it predict that class for every image, `scale` sharpens it."""
    torch.manual_seed(seed)
    model = timm.create_model("test_resnet", num_classes=len(CLASSES)).eval()
    with torch.no_grad():
        head = model.get_classifier()
        head.weight.mul_(scale)
        if boost_class is not None:
            head.bias[boost_class] += 20.0
    return model


def save_model(path: Path, model: torch.nn.Module, cfg: Config) -> Path:
    return save_checkpoint(path, model, cfg.to_dict(), CLASSES, {"val_acc": 0.0})


@pytest.fixture
def prepared(outputs, csv_dataset):
    """(cfg, info) for the 3 x 6 tiny CSV set, folded into 3 folds."""
    cfg = tiny_config(csv_dataset)
    return cfg, prepare_dataset(cfg)


@pytest.fixture
def image_rows(prepared) -> pd.DataFrame:
    """The images to predict, as the rows of a table with only a `path` column (no sizes, so no cache)."""
    return prepared[1].table[["path"]]


def loader_of(cfg: Config, rows: pd.DataFrame) -> torch.utils.data.DataLoader:
    return build_loader(cfg, rows, False, 0, CPU)


def softmax_of(model: torch.nn.Module, loader) -> np.ndarray:
    with torch.no_grad():
        return torch.cat([model(PASS(x, CPU)).softmax(-1) for x, _, _ in loader]).numpy()


# --- loading checkpoints -----------------------------------------------------------------------------------


@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
def test_loaded_folds_are_separate_models_equal_to_their_checkpoints(prepared, tmp_path, channels_last):
    cfg, _ = prepared
    originals = [random_model(seed, scale=5.0) for seed in (1, 2)]
    paths = [save_model(tmp_path / f"fold{i}.pt", m, cfg) for i, m in enumerate(originals)]
    _meta_model.cache_clear()
    loaded = load_models(paths, CPU, channels_last)
    assert _meta_model.cache_info().misses == 1, "the second fold should copy the first one's architecture"
    x = torch.rand(4, 3, 32, 32)
    for original, model in zip(originals, loaded, strict=True):
        assert not model.training
        conv = next(m.weight for m in model.modules() if isinstance(m, torch.nn.Conv2d))
        assert conv.is_contiguous(memory_format=torch.channels_last) == channels_last
        with torch.no_grad():
            torch.testing.assert_close(model(x), original(x), rtol=1e-5, atol=1e-5)
    assert all(a.data_ptr() != b.data_ptr() for a, b in zip(*(m.parameters() for m in loaded), strict=True))


# --- ensembles ---------------------------------------------------------------------------------------------


def test_a_model_listed_twice_counts_like_once(prepared, image_rows):
    cfg, _ = prepared
    model = random_model(0, scale=5.0)
    loader = loader_of(cfg, image_rows)
    views = ["identity", "hflip"]
    once = predict_models([model], loader, views, CPU, FP32, PASS, SingleLabel())
    twice = predict_models([model, model], loader, views, CPU, FP32, PASS, SingleLabel())
    np.testing.assert_allclose(twice.per_view, once.per_view, atol=1e-6)
    np.testing.assert_array_equal(twice.indices, np.arange(len(image_rows)))


def test_a_checkpoint_listed_twice_counts_like_once(prepared, image_rows, tmp_path):
    cfg, _ = prepared
    path = save_model(tmp_path / "m.pt", random_model(0, scale=5.0), cfg)
    once = predict_checkpoints(cfg, [path], image_rows, ["identity", "vflip"], device=CPU)
    twice = predict_checkpoints(cfg, [path, path], image_rows, ["identity", "vflip"], device=CPU)
    np.testing.assert_allclose(twice.per_view, once.per_view, atol=1e-6)


def test_the_ensemble_averages_probabilities_not_logits(prepared, image_rows):
    cfg, _ = prepared
    a, b = random_model(1, scale=20.0), random_model(2, scale=20.0)
    loader = loader_of(cfg, image_rows)
    ensemble = predict_models([a, b], loader, ["identity"], CPU, FP32, PASS, SingleLabel()).view("identity")
    pa, pb = softmax_of(a, loader), softmax_of(b, loader)
    np.testing.assert_allclose(ensemble, (pa + pb) / 2, atol=1e-6)
    np.testing.assert_allclose(ensemble.sum(1), 1.0, atol=1e-6)
    # averaging logits would give something else for these two models: the check above can tell them apart
    with torch.no_grad():
        inputs = [PASS(x, CPU) for x, _, _ in loader]
        logit_mean = torch.cat([(a(x) + b(x)).div(2).softmax(-1) for x in inputs]).numpy()
    assert np.abs(logit_mean - ensemble).max() > 1e-2


def test_tta_probabilities_are_the_mean_of_the_views(prepared, image_rows):
    cfg, _ = prepared
    model = random_model(3, scale=5.0)
    prediction = predict_models(
        [model], loader_of(cfg, image_rows), ["identity", "hflip"], CPU, FP32, PASS, SingleLabel()
    )
    assert prediction.per_view.shape == (2, len(image_rows), len(CLASSES))
    np.testing.assert_allclose(
        prediction.probabilities, (prediction.view("identity") + prediction.view("hflip")) / 2
    )


def test_predict_ensemble_weights_every_checkpoint_equally(prepared, image_rows, tmp_path):
    cfg, _ = prepared
    paths = [save_model(tmp_path / f"m{i}.pt", random_model(i, scale=10.0), cfg) for i in range(3)]
    run = RunFolder(tmp_path / "run")
    members = [Member(run, cfg, paths[:1], CLASSES), Member(run, cfg, paths[1:], CLASSES)]
    ensemble = predict_ensemble(members, image_rows, ["identity"], device=CPU)
    flat = predict_checkpoints(cfg, paths, image_rows, ["identity"], device=CPU)
    np.testing.assert_allclose(ensemble.per_view, flat.per_view, atol=1e-6)


def test_ensemble_members_are_named_by_their_run_folders(outputs, tmp_path):
    """A run named by its backbone has run_name "": 05 must print the folder's name, not ''."""
    cfg = tiny_config(tmp_path, run_name="")
    for member_cfg, fold in ((cfg, 0), (tiny_config(tmp_path, run_name="other"), 1)):
        member_run = RunFolder.of(member_cfg).create()
        member_run.write_config(member_cfg)
        save_model(member_run.checkpoint(fold, "best_score"), random_model(fold), member_cfg)
    members = ensemble_members(cfg.replace(ensemble_runs=["other"]), RunFolder.of(cfg))
    assert [m.cfg.run_name for m in members] == ["", "other"]  # what 05 used to print
    assert [m.run.name for m in members] == ["test_resnet", "other"]
    assert [len(m.checkpoints) for m in members] == [1, 1]
    line = describe_ensemble(members, ["identity", "hflip"], 5)
    assert line == "5 test images; 2 model(s) from runs ['test_resnet', 'other'] x 2 view(s)"


# --- 04: the no-TTA prediction is what plain timm gives --------------------------------------------------


@pytest.mark.parametrize("cached", [False, True], ids=["from_files", "from_ram_cache"])
def test_no_tta_prediction_equals_plain_timm(prepared, cached):
    cfg, info = prepared
    run = RunFolder.of(cfg)
    train_fold(cfg, info, 0, run, CPU)
    path = run.checkpoint(0, "best_score")
    table = info.table
    rows = table[["path", "height", "width"]] if cached else table[["path"]]
    kit = predict_checkpoints(cfg, [path], rows, ["identity"], CPU)

    model = timm.create_model(cfg.backbone, num_classes=len(info.classes))
    model.load_state_dict(torch.load(path, weights_only=True)["model"])
    model.eval()
    data_cfg = data_config_for(cfg.backbone)
    size = cfg.img_size
    transform = A.Compose(
        [A.Resize(size, size), A.Normalize(data_cfg["mean"], data_cfg["std"], 255), ToTensorV2()]
    )
    x = torch.stack([transform(image=read_image(p))["image"] for p in table["path"]])
    with torch.no_grad():
        plain = model(x).softmax(-1).numpy()

    np.testing.assert_array_equal(kit.indices, np.arange(len(table)))
    np.testing.assert_allclose(kit.view("identity"), plain, atol=1e-5)
    np.testing.assert_allclose(kit.probabilities, plain, atol=1e-5)


# --- 04: out-of-fold predictions ---------------------------------------------------------------------------


def test_predict_folds_gives_each_validation_row_once_from_its_own_fold(prepared, tmp_path):
    cfg, info = prepared
    table = info.table
    # folds 0 and 2 trained, fold 1 not; fold k's model predicts class k for every image
    models = {0: random_model(10, boost_class=0), 2: random_model(12, boost_class=2)}
    checkpoints = {k: save_model(tmp_path / f"fold{k}.pt", m, cfg) for k, m in models.items()}
    views = ["identity", "hflip"]
    rows, prediction = predict_folds(cfg, table, checkpoints, views, CPU)

    expected = table[table["fold"].isin([0, 2])]
    assert len(rows) == len(expected) == prediction.per_view.shape[1]
    assert not rows["id"].duplicated().any()
    assert sorted(rows["id"]) == sorted(expected["id"])
    assert set(rows["fold"]) == {0, 2}
    np.testing.assert_array_equal(prediction.indices, np.arange(len(rows)))
    for _, row in rows.iterrows():  # each row keeps its own table values
        original = table.set_index("id").loc[row["id"]]
        assert (row["fold"], row["label_idx"], row["path"]) == (
            original["fold"],
            original["label_idx"],
            original["path"],
        )

    probs = prediction.probabilities
    np.testing.assert_array_equal(probs.argmax(1), rows["fold"].to_numpy())
    assert (probs.max(1) > 0.99).all()  # one fold's model, not a blend of folds
    for fold, model in models.items():
        mask = (rows["fold"] == fold).to_numpy()
        loader = loader_of(cfg, rows.loc[mask, ["path"]])
        direct = predict_models([model], loader, views, CPU, FP32, PASS, SingleLabel())
        np.testing.assert_allclose(prediction.per_view[:, mask], direct.per_view, atol=1e-6)


def test_trained_checkpoints_lists_existing_folds_and_says_what_to_run(tmp_path):
    cfg = tiny_config(tmp_path)
    run = RunFolder(tmp_path / "run")
    with pytest.raises(FileNotFoundError, match="03_train"):
        trained_checkpoints(run, "best_score", 3)
    with pytest.raises(FileNotFoundError, match="ema=True"):
        trained_checkpoints(run, "ema", 3)
    path = save_model(run.checkpoint(1, "best_score"), random_model(0), cfg)
    assert trained_checkpoints(run, "best_score", 3) == {1: path}


# --- 05: the submission ------------------------------------------------------------------------------------


def shuffled_predictions(ids: list[str], seed: int = 0) -> tuple[list[str], np.ndarray]:
    """The ids in another order, and random probabilities for them."""
    rng = np.random.default_rng(seed)
    shuffled = list(rng.permutation(ids))
    probs = rng.dirichlet(np.ones(len(CLASSES)), size=len(ids))
    return shuffled, probs


def test_submission_fills_the_label_column_in_the_sample_order():
    sample = pd.DataFrame({"image_id": ["c", "a", "d", "b"], "label": ["x"] * 4})
    ids, probs = shuffled_predictions(["a", "b", "c", "d"])
    assert ids != list(sample["image_id"])
    out = submission_frame(sample, "image_id", ids, probs, CLASSES)
    assert list(out.columns) == ["image_id", "label"]
    assert list(out["image_id"]) == ["c", "a", "d", "b"]
    predicted = {i: CLASSES[p.argmax()] for i, p in zip(ids, probs, strict=True)}
    assert list(out["label"]) == [predicted[i] for i in sample["image_id"]]
    assert list(sample["label"]) == ["x"] * 4  # the sample itself is untouched


def test_submission_fills_class_columns_with_probabilities():
    sample = pd.DataFrame({"id": ["c", "a", "b"], "fox": 0.0, "cat": 0.0, "dog": 0.0})
    ids, probs = shuffled_predictions(["a", "b", "c"], seed=1)
    out = submission_frame(sample, "id", ids, probs, CLASSES)
    assert list(out.columns) == ["id", "fox", "cat", "dog"]
    assert list(out["id"]) == ["c", "a", "b"]
    by_id = dict(zip(ids, probs, strict=True))
    for _, row in out.iterrows():
        for k, name in enumerate(CLASSES):
            assert row[name] == pytest.approx(by_id[row["id"]][k])


def test_submission_ignores_predictions_the_sample_does_not_ask_for():
    sample = pd.DataFrame({"id": ["b"], "label": [""]})
    probs = np.eye(3)[[0, 1, 2]]
    out = submission_frame(sample, "id", ["a", "b", "c"], probs, CLASSES)
    assert out.to_dict("list") == {"id": ["b"], "label": ["dog"]}


def test_submission_raises_on_a_sample_id_without_prediction():
    sample = pd.DataFrame({"id": ["a", "b", "zz"], "label": ""})
    with pytest.raises(ValueError, match="zz"):
        submission_frame(sample, "id", ["a", "b"], np.full((2, 3), 1 / 3), CLASSES)


def test_submission_raises_on_columns_it_cannot_fill():
    sample = pd.DataFrame({"id": ["a"], "label": [""], "score": [0.0]})
    with pytest.raises(ValueError, match="cannot fill"):
        submission_frame(sample, "id", ["a"], np.full((1, 3), 1 / 3), CLASSES)


# --- 05: the test images and their labels ------------------------------------------------------------------


def table_of(root: Path, ids: list[str]) -> pd.DataFrame:
    return pd.DataFrame({"id": ids, "path": [str(root / f"{i}.jpg") for i in ids]})


def test_checked_test_images_adds_sizes(outputs, tmp_path):
    rng = np.random.default_rng(0)
    write_image(tmp_path / "a.jpg", random_rgb(rng, 16))
    write_image(tmp_path / "b.jpg", rng.integers(0, 256, (20, 12, 3), dtype=np.uint8))
    checked = checked_test_images(table_of(tmp_path, ["a", "b"]), tiny_config(tmp_path))
    assert list(checked["id"]) == ["a", "b"]
    assert list(checked["height"]) == [16, 20]
    assert list(checked["width"]) == [16, 12]


def test_checked_test_images_lists_every_unreadable_image(outputs, tmp_path):
    rng = np.random.default_rng(0)
    write_image(tmp_path / "good.jpg", random_rgb(rng))
    (tmp_path / "junk.jpg").write_text("not an image")
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(DataError, match="3 test image") as err:
        checked_test_images(table_of(tmp_path, ["good", "junk", "missing", "empty"]), tiny_config(tmp_path))
    problems = err.value.problems
    assert list(problems["id"]) == ["junk", "missing", "empty"]
    assert list(problems["problem"]) == ["image not an image", "image missing", "image empty"]
    assert problems["fix"].str.len().gt(0).all()
    assert "junk.jpg" in str(err.value)


def test_test_labels_are_class_indices_in_test_order(tmp_path):
    cfg = tiny_config(tmp_path)
    pd.DataFrame({"id": ["b", "c", "a", "extra"], "label": ["fox", "cat", "dog", "cat"]}).to_csv(
        tmp_path / "test_labels.csv", index=False
    )
    test = table_of(tmp_path, ["a", "b", "c"])
    np.testing.assert_array_equal(holdout.test_labels(cfg, tmp_path, test, CLASSES), [1, 2, 0])


def test_test_labels_keep_ids_as_text(tmp_path):
    cfg = tiny_config(tmp_path)
    (tmp_path / "test_labels.csv").write_text("id,label\n007,1\n10,0\n")
    test = table_of(tmp_path, ["10", "007"])
    np.testing.assert_array_equal(holdout.test_labels(cfg, tmp_path, test, ["0", "1"]), [0, 1])


def test_test_labels_none_without_the_file(tmp_path):
    assert holdout.test_labels(tiny_config(tmp_path), tmp_path, table_of(tmp_path, ["a"]), CLASSES) is None


def test_test_labels_missing_an_id_is_an_error(tmp_path):
    pd.DataFrame({"id": ["a"], "label": ["cat"]}).to_csv(tmp_path / "test_labels.csv", index=False)
    with pytest.raises(DataError, match="no label for 1"):
        holdout.test_labels(tiny_config(tmp_path), tmp_path, table_of(tmp_path, ["a", "b"]), CLASSES)


def test_test_labels_with_an_unknown_class_is_an_error(tmp_path):
    pd.DataFrame({"id": ["a", "b"], "label": ["cat", "zebra"]}).to_csv(
        tmp_path / "test_labels.csv", index=False
    )
    with pytest.raises(DataError, match="zebra"):
        holdout.test_labels(tiny_config(tmp_path), tmp_path, table_of(tmp_path, ["a", "b"]), CLASSES)


def test_sample_submission_keeps_ids_as_text(tmp_path):
    cfg = tiny_config(tmp_path)
    (tmp_path / "sample_submission.csv").write_text("id,label\n007,0\n10,0\n")
    sample = sample_submission(cfg, tmp_path, "csv", table_of(tmp_path, ["007", "10"]))
    assert list(sample["id"]) == ["007", "10"]
    folder = sample_submission(cfg, tmp_path, "imagefolder", table_of(tmp_path, ["x.png", "y.png"]))
    assert folder.to_dict("list") == {"id": ["x.png", "y.png"], "label": ["", ""]}
