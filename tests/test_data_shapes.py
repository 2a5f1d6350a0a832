"""Data as it comes: given splits, labelled and missing test sets, first-contact diagnoses, many classes.

Each test builds its own small data set of tiny images."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from conftest import random_rgb, write_image

from helpers import holdout, leaderboard
from helpers.config import Config, ConfigError
from helpers.dataset import health_summary, prepare_dataset
from helpers.holdout import checked_test_images, no_test_set, sample_submission
from helpers.inference import fill_submission
from helpers.notebook import fold_class_table
from helpers.plots import show_class_counts, show_confusion
from helpers.run_folder import RunFolder
from helpers.singlelabel_metrics import most_confused, normalised_confusion, per_class_table, summary_metrics
from helpers.tables import DataError, list_test_images
from helpers.tasks import SingleLabel
from helpers.train import train_folds

RNG = np.random.default_rng(0)


def folder_of_classes(
    root: Path, labels=("ant", "bee", "wasp"), per_class: int = 4, ext: str = ".png"
) -> Path:
    for label in labels:
        for i in range(per_class):
            write_image(root / label / f"{label}_{i:02d}{ext}", random_rgb(RNG, 8))
    return root


def csv_data(root: Path, ids: list[str], labels: list[str], files: list[str], **columns) -> Path:
    """train.csv with these ids and labels (+ columns), and the images `files` under train_image/."""
    for name in files:
        write_image(root / "train_image" / name, random_rgb(RNG, 8))
    pd.DataFrame({"id": ids, "label": labels, **columns}).to_csv(root / "train.csv", index=False)
    return root


def cfg_of(root: Path, **changes) -> Config:
    return Config.from_dict({"data_dir": str(root), "n_folds": 2, **changes})


def data_error(cfg: Config) -> DataError:
    with pytest.raises(DataError) as info:
        prepare_dataset(cfg)
    return info.value


# -- given splits ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["val", "valid", "validation"])
def test_imagefolder_validation_folder_is_one_fixed_split(outputs, tmp_path, name):
    folder_of_classes(tmp_path / "d" / "train")
    folder_of_classes(tmp_path / "d" / name, per_class=2)
    run = RunFolder(tmp_path / "run").create()
    info = prepare_dataset(cfg_of(tmp_path / "d"), run)
    assert info.split.kind == "fixed" and info.split.folds == [0]
    val = info.table[info.table["fold"] == 0]
    assert len(val) == 6 and val["id"].str.startswith(f"{name}/").all()
    assert info.table["id"].is_unique, "train/ and the validation folder hold the same file names"
    assert (info.table["fold"] == -1).sum() == 12
    recorded = json.loads(run.split.read_text())
    assert recorded["kind"] == "fixed" and f"{name}/" in recorded["source"] and recorded["folds"] == [0]
    assert "one fixed train/validation split" in health_summary(info)["check"].str.cat()
    assert list(fold_class_table(info.table).index) == [-1, 0, "total"]


def test_two_validation_folders_are_an_error(outputs, tmp_path):
    for name in ("train", "val", "valid"):
        folder_of_classes(tmp_path / "d" / name)
    with pytest.raises(DataError, match=r"several validation folders \['val', 'valid'\]"):
        prepare_dataset(cfg_of(tmp_path / "d"))


def test_split_column_of_train_and_valid_words(outputs, tmp_path):
    ids = [f"i{k}" for k in range(8)]
    split = ["train", "valid"] * 4
    root = csv_data(tmp_path / "d", ids, ["a", "a", "b", "b"] * 2, [f"{i}.jpg" for i in ids], split=split)
    info = prepare_dataset(cfg_of(root, split_col="split"))
    assert info.split.kind == "fixed" and "column 'split'" in info.split.source
    assert dict(zip(info.table["id"], info.table["fold"], strict=True)) == {
        i: (0 if s == "valid" else -1) for i, s in zip(ids, split, strict=True)
    }


def test_split_column_of_fold_numbers_is_used_as_given(outputs, tmp_path):
    ids = [f"i{k}" for k in range(9)]
    folds = [0, 1, 2] * 3
    root = csv_data(tmp_path / "d", ids, ["a"] * 3 + ["b"] * 3 + ["c"] * 3, [f"{i}.jpg" for i in ids])
    table = pd.read_csv(root / "train.csv").assign(fold=folds)
    table.to_csv(root / "train.csv", index=False)
    info = prepare_dataset(cfg_of(root, split_col="fold", n_folds=3))
    assert info.split.kind == "given folds" and info.split.folds == [0, 1, 2]
    assert list(info.table["fold"]) == folds
    with pytest.raises(DataError, match=r"holds the folds \[0, 1, 2\], but n_folds=2.*set n_folds=3"):
        prepare_dataset(cfg_of(root, split_col="fold", n_folds=2))


def test_split_column_value_that_is_neither_is_a_row_problem(outputs, tmp_path):
    ids = [f"i{k}" for k in range(6)]
    split = ["train", "valid", "test", "train", "valid", "train"]
    root = csv_data(tmp_path / "d", ids, ["a"] * 3 + ["b"] * 3, [f"{i}.jpg" for i in ids], s=split)
    err = data_error(cfg_of(root, split_col="s"))
    assert list(err.problems["line"]) == [4]
    assert "'test', neither a fold number nor train/valid" in err.problems["problem"].iloc[0]


def test_given_split_needs_every_class_on_both_sides(outputs, tmp_path):
    folder_of_classes(tmp_path / "d" / "train")
    folder_of_classes(tmp_path / "d" / "val", labels=("ant", "bee"), per_class=2)
    err = data_error(cfg_of(tmp_path / "d"))
    assert list(err.problems["id"]) == ["wasp"]
    assert "class 'wasp' has no image in the validation part of the train/ and val/ folders" in str(err)
    info = prepare_dataset(cfg_of(tmp_path / "d", drop_bad_rows=True))
    assert info.classes == ["ant", "bee"]


def test_separate_validation_table(outputs, tmp_path):
    ids = [f"t{k}" for k in range(4)]
    root = csv_data(tmp_path / "d", ids, ["a", "b"] * 2, [f"{i}.jpg" for i in ids + ["v0", "v1"]])
    pd.DataFrame({"id": ["v0", "v1"], "label": ["a", "b"]}).to_csv(root / "val.csv", index=False)
    info = prepare_dataset(cfg_of(root, val_csv="val.csv"))
    assert info.split.kind == "fixed"
    assert list(info.table.loc[info.table["fold"] == 0, "id"]) == ["v0", "v1"]
    pd.DataFrame({"id": ["v0", "t1"], "label": ["a", "b"]}).to_csv(root / "val.csv", index=False)
    err = data_error(cfg_of(root, val_csv="val.csv"))
    assert "- val.csv line 3" in str(err) and "duplicate of line 3" in str(err)


def test_split_col_and_val_csv_together_are_refused():
    with pytest.raises(ConfigError, match="split_col or val_csv"):
        Config(split_col="s", val_csv="v.csv")


def test_fixed_split_trains_one_model_that_04_and_05_use(outputs, tmp_path, one_thread):
    from train_fixtures import tiny_config

    from helpers.inference import ensemble_members, predict_folds, trained_checkpoints

    folder_of_classes(tmp_path / "d" / "train", per_class=4)
    folder_of_classes(tmp_path / "d" / "val", per_class=2)
    cfg = tiny_config(tmp_path / "d", folds=[], n_folds=3)
    run = RunFolder.of(cfg).create()
    run.write_config(cfg)
    info = prepare_dataset(cfg, run)
    metrics = train_folds(cfg, info, run)
    assert sorted(metrics["fold"].unique()) == [0]
    checkpoints = trained_checkpoints(run, "best_score", cfg.n_folds)
    assert list(checkpoints) == [0]
    rows, prediction = predict_folds(cfg, info.table, checkpoints, ["identity"])
    assert sorted(rows["id"]) == sorted(info.table.loc[info.table["fold"] == 0, "id"])
    assert prediction.per_view.shape == (1, 6, 3)
    (member,) = ensemble_members(cfg, run)
    assert member.checkpoints == [checkpoints[0]]
    with pytest.raises(ConfigError, match=r"has no fold \[1\]"):
        train_folds(cfg.replace(folds=[1]), info, run)


# -- test sets ------------------------------------------------------------------------------------------
def test_imagefolder_test_with_class_folders_is_labelled(tmp_path):
    folder_of_classes(tmp_path / "d" / "train")
    folder_of_classes(tmp_path / "d" / "test", labels=("bee", "ant"), per_class=1)
    cfg = cfg_of(tmp_path / "d")
    test = list_test_images(cfg, tmp_path / "d", "imagefolder")
    assert list(test["label"]) == ["ant", "bee"]
    np.testing.assert_array_equal(
        holdout.test_labels(cfg.replace(task="multiclass"), tmp_path / "d", test, ["ant", "bee", "wasp"]),
        [0, 1],
    )


def test_flat_imagefolder_test_is_unlabelled(tmp_path):
    folder_of_classes(tmp_path / "d" / "train")
    for i in range(2):
        write_image(tmp_path / "d" / "test" / f"x{i}.png", random_rgb(RNG, 8))
    cfg = cfg_of(tmp_path / "d")
    test = list_test_images(cfg, tmp_path / "d", "imagefolder")
    assert list(test["id"]) == ["x0.png", "x1.png"] and "label" not in test
    assert (
        holdout.test_labels(cfg.replace(task="multiclass"), tmp_path / "d", test, ["ant", "bee", "wasp"])
        is None
    )


def test_test_table_with_a_label_column(tmp_path):
    for name in ("q1", "q2"):
        write_image(tmp_path / "test_image" / f"{name}.jpg", random_rgb(RNG, 8))
    pd.DataFrame({"id": ["q2", "q1"], "label": ["b", "a"]}).to_csv(tmp_path / "test.csv", index=False)
    cfg = cfg_of(tmp_path, test_csv="test.csv")
    test = list_test_images(cfg, tmp_path, "csv")
    assert list(test["id"]) == ["q2", "q1"]
    np.testing.assert_array_equal(
        holdout.test_labels(cfg.replace(task="multiclass"), tmp_path, test, ["a", "b"]), [1, 0]
    )
    pd.DataFrame({"id": ["q2", "q1"], "label": ["b", None]}).to_csv(tmp_path / "test.csv", index=False)
    with pytest.raises(DataError, match=r"not on lines \[3\]"):
        list_test_images(cfg, tmp_path, "csv")


def test_no_test_set_is_none_and_said_in_one_line(tmp_path):
    cfg = cfg_of(tmp_path)
    assert list_test_images(cfg, tmp_path, "csv") is None
    assert list_test_images(cfg, tmp_path, "imagefolder") is None
    message = no_test_set(cfg, tmp_path, "csv")
    assert "\n" not in message and "no test set" in message and "sample_submission.csv" in message


def test_folder_without_sample_submission_gets_the_default_format(tmp_path):
    for name in ("n0", "n1"):
        write_image(tmp_path / "test_image" / f"{name}.jpg", random_rgb(RNG, 8))
    cfg = cfg_of(tmp_path)
    test = list_test_images(cfg, tmp_path, "csv")
    sample = sample_submission(cfg, tmp_path, "csv", test, ["cat", "dog"])
    probabilities = np.array([[0.2, 0.8], [0.9, 0.1]])
    task = SingleLabel()
    decided = task.decide(probabilities, None)
    filled = fill_submission(task, sample, "id", test["id"], probabilities, decided, ["cat", "dog"], " ")
    assert list(filled.columns) == ["id", "label", "cat", "dog"]
    assert list(filled["id"]) == ["n0.jpg", "n1.jpg"] and list(filled["label"]) == ["dog", "cat"]
    np.testing.assert_allclose(filled[["cat", "dog"]].to_numpy(), probabilities)


def test_sample_submission_and_test_folder_disagree(outputs, tmp_path):
    for name in ("s1", "extra"):
        write_image(tmp_path / "test_image" / f"{name}.jpg", random_rgb(RNG, 8))
    pd.DataFrame({"id": ["s1", "s2"], "label": [0, 0]}).to_csv(
        tmp_path / "sample_submission.csv", index=False
    )
    with pytest.warns(
        UserWarning, match=r"1 image\(s\) in .* are not listed in sample_submission.csv.*extra.jpg"
    ):
        test = list_test_images(cfg_of(tmp_path), tmp_path, "csv")
    with pytest.raises(DataError, match="listed in the test table, or the sample submission") as err:
        checked_test_images(test, cfg_of(tmp_path, img_size=32))
    assert "s2.jpg" in str(err.value) and "image missing" in str(err.value)


def test_leaderboard_scores_a_labelled_imagefolder_test_set(outputs, tmp_path):
    folder_of_classes(tmp_path / "d" / "train")
    folder_of_classes(tmp_path / "d" / "test", labels=("ant", "bee"), per_class=1)
    cfg = cfg_of(tmp_path / "d", run_name="scored")
    run = RunFolder.of(cfg).create()
    run.write_config(cfg)
    run.write_test_probabilities(
        pd.DataFrame({"id": ["ant/ant_00.png", "bee/bee_00.png"], "ant": [0.9, 0.6], "bee": [0.1, 0.4]})
    )
    row = leaderboard.run_row(run)
    assert row["test_acc"] == 0.5
    assert row["test_log_loss"] == pytest.approx(-(np.log(0.9) + np.log(0.4)) / 2)
    assert "test_macro_f1" in leaderboard.COLUMNS


# -- first-contact diagnoses ------------------------------------------------------------------------------
def many_missing(cfg: Config, n: int) -> str:
    err = data_error(cfg)
    assert len(err.problems) == n
    message = str(err)
    first_row = message.index("\n- line")
    assert message.index("likely cause:") < first_row, "the cause comes before the rows"
    assert message.count("\n- line") == min(n, DataError.SHOWN)
    if n > DataError.SHOWN:
        assert f"... and {n - DataError.SHOWN} more" in message
    return message


def test_ids_that_already_end_in_an_extension(outputs, tmp_path):
    ids = [f"sample_{k:03d}.png" for k in range(30)]
    root = csv_data(tmp_path / "d", ids, ["a", "b"] * 15, ids)
    message = many_missing(cfg_of(root), 30)
    assert "30 of 30 missing images: the ids already end in an image extension" in message
    assert "'sample_000.png.jpg'" in message and 'set image_ext=""' in message
    assert len(prepare_dataset(cfg_of(root, image_ext="")).table) == 30


def test_files_with_an_extension_of_another_case(outputs, tmp_path):
    ids = [f"im{k}" for k in range(6)]
    root = csv_data(tmp_path / "d", ids, ["a", "b"] * 3, [f"{i}.JPG" for i in ids])
    message = many_missing(cfg_of(root), 6)
    assert "the files end in '.JPG', not '.jpg'" in message and "set image_ext='.JPG'" in message


def test_files_with_several_other_extensions(outputs, tmp_path):
    ids = [f"im{k}" for k in range(4)]
    root = csv_data(tmp_path / "d", ids, ["a", "b"] * 2, ["im0.png", "im1.png", "im2.jpeg", "im3.jpeg"])
    message = many_missing(cfg_of(root), 4)
    assert "several extensions" in message and "path_col" in message


def test_images_in_another_folder(outputs, tmp_path):
    ids = [f"im{k}" for k in range(4)]
    root = tmp_path / "d"
    for i in ids:
        write_image(root / "data" / "images" / f"{i}.jpg", random_rgb(RNG, 8))
    pd.DataFrame({"id": ids, "label": ["a", "b"] * 2}).to_csv(root / "train.csv", index=False)
    message = many_missing(cfg_of(root), 4)
    assert "the images are in 'data/images' under data_dir" in message
    assert "set image_dir='data/images'" in message


@pytest.mark.parametrize("written", ["7", "7.0"])
def test_numeric_ids_that_lost_their_zeros(outputs, tmp_path, written):
    values = [7, 8, 9, 10]
    ids = [written.replace("7", str(v)) for v in values]
    root = csv_data(tmp_path / "d", ids, ["a", "b"] * 2, [f"{v:04d}.jpg" for v in values])
    message = many_missing(cfg_of(root), 4)
    assert "lost their leading zeros or gained a '.0'" in message
    assert f"id {ids[0]!r} but the file is '0007.jpg'" in message and "dtype={'id': str}" in message


def test_one_odd_file_among_many_gets_no_diagnosis(outputs, tmp_path):
    ids = [f"im{k}" for k in range(6)]
    root = csv_data(tmp_path / "d", ids, ["a", "b"] * 3, [f"{i}.jpg" for i in ids[:-1]])
    (root / "train_image" / "other.png").write_bytes((root / "train_image" / "im0.jpg").read_bytes())
    err = data_error(cfg_of(root))
    assert err.causes == [] and "likely cause" not in str(err)


@pytest.mark.parametrize(
    ("header", "sep", "expected"),
    [
        ("id;label", ";", "separated by ';', not ','"),
        ("id\tlabel", "\t", "separated by a tab"),
        ("id , label", ",", "header names have spaces around them"),
    ],
)
def test_table_format_problems(outputs, tmp_path, header, sep, expected):
    root = tmp_path / "d"
    write_image(root / "train_image" / "x.jpg", random_rgb(RNG, 8))
    (root / "train.csv").write_text(f"{header}\nx{sep}a\n")
    with pytest.raises(DataError, match="likely cause: ") as err:
        prepare_dataset(cfg_of(root))
    assert expected in str(err.value)


def test_a_semicolon_table_reads_with_csv_sep(outputs, tmp_path):
    ids = [f"im{k}" for k in range(4)]
    root = csv_data(tmp_path / "d", ids, ["a", "b"] * 2, [f"{i}.jpg" for i in ids])
    pd.read_csv(root / "train.csv").to_csv(root / "train.csv", sep=";", index=False)
    assert len(prepare_dataset(cfg_of(root, csv_sep=";")).table) == 4


def test_byte_order_marks(outputs, tmp_path):
    ids = [f"im{k}" for k in range(4)]
    root = csv_data(tmp_path / "d", ids, ["a", "b"] * 2, [f"{i}.jpg" for i in ids])
    text = (root / "train.csv").read_text()
    (root / "train.csv").write_bytes(b"\xef\xbb\xbf" + text.encode())
    assert len(prepare_dataset(cfg_of(root)).table) == 4, "a UTF-8 byte-order mark is read as UTF-8"
    (root / "train.csv").write_bytes(b"\xff\xfe" + text.encode("utf-16-le"))
    with pytest.raises(DataError) as err:
        prepare_dataset(cfg_of(root))
    assert "UTF-16" in str(err.value)


# -- many classes, long tails -----------------------------------------------------------------------------
N_CLASSES = 360


@pytest.fixture
def long_tail(tmp_path: Path) -> Path:
    """360 classes of 8x8 images, from 200 images down to 1: a long tail like product catalogues."""
    root = tmp_path / "tail"
    counts = np.maximum(1, (200 / np.arange(1, N_CLASSES + 1) ** 0.8).astype(int))
    ids, labels = [], []
    (root / "train_image").mkdir(parents=True)
    data = write_image(root / "seed.png", random_rgb(RNG, 8)).read_bytes()
    for c, n in enumerate(counts):
        for i in range(n):
            ids.append(f"p{c:03d}_{i:02d}")
            labels.append(f"product_{c:03d}")
            (root / "train_image" / f"{ids[-1]}.png").write_bytes(data)
    pd.DataFrame({"id": ids, "label": labels}).to_csv(root / "train.csv", index=False)
    return root


def test_long_tail_through_01s_tables(outputs, long_tail):
    cfg = cfg_of(long_tail, image_ext=".png", n_folds=3)
    err = data_error(cfg)
    small = err.problems[err.problems["problem"].str.contains("fewer than n_folds=3")]
    assert len(small) == len(err.problems) > 100
    assert small["problem"].str.contains(r"has [12] image\(s\)").all()
    assert "merge it into a related class" in small["fix"].iloc[0]
    (cause,) = err.causes
    assert f"{len(small)} classes have fewer images than n_folds=3 (fewest first: " in cause
    assert "drop_bad_rows=True" in cause and "merge them" in cause and "lower n_folds" in cause

    info = prepare_dataset(cfg.replace(drop_bad_rows=True))
    kept = info.table["label"].nunique()
    assert kept == info.num_classes == N_CLASSES - len(small)
    fig = show_class_counts(info.table["label"], info.classes)
    ax = fig.axes[0]
    assert ax.get_yscale() == "log"
    heights = [p.get_height() for p in ax.patches]
    assert len(heights) == kept and heights == sorted(heights, reverse=True)
    named = [t.get_text() for t in ax.get_xticklabels()]
    assert len(named) == 20 and named[0] == "product_000 (200)" and named[-1].endswith("(3)")
    plt.close(fig)
    table = fold_class_table(info.table)
    assert len(table) == 20 and table["total"].is_monotonic_increasing


def test_long_tail_through_04s_tables():
    labels = np.repeat(np.arange(N_CLASSES), 3)
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(len(labels), N_CLASSES))
    logits[np.arange(len(labels)), labels] += 4
    logits[labels == 5, 6] += 6  # product_005 is taken for product_006
    probabilities = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    classes = [f"product_{c:03d}" for c in range(N_CLASSES)]
    metrics = summary_metrics(labels, probabilities)
    assert metrics["top3_accuracy"] >= metrics["accuracy"]
    assert len(per_class_table(labels, probabilities, classes)) == N_CLASSES
    predicted = probabilities.argmax(1)
    assert tuple(most_confused(labels, predicted, classes).iloc[0][["true", "predicted"]]) == (
        "product_005",
        "product_006",
    )
    fig = show_confusion(normalised_confusion(labels, predicted, N_CLASSES), classes)
    ax = fig.axes[0]
    shown = [t.get_text() for t in ax.get_yticklabels()]
    assert len(shown) == 30 and "product_005" in shown and "product_006" in shown
    assert "30 most-confused of 360 classes" in ax.get_title()
    plt.close(fig)


def test_a_complete_sample_submission_warns_nothing(tmp_path):
    for name in ("s1",):
        write_image(tmp_path / "test_image" / f"{name}.jpg", random_rgb(RNG, 8))
    pd.DataFrame({"id": ["s1"], "label": [0]}).to_csv(tmp_path / "sample_submission.csv", index=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert list(list_test_images(cfg_of(tmp_path), tmp_path, "csv")["id"]) == ["s1"]


# -- the whole series on data shaped otherwise ---------------------------------------------------------------
SERIES = {
    "backbone": "test_resnet",
    "pretrained": False,
    "epochs": 1,
    "img_size": 32,
    "batch_size": 8,
    "num_workers": 0,
}


@pytest.mark.slow
def test_series_on_imagefolder_with_val_and_labelled_test(outputs, tmp_path):
    """train/ + val/ is one fixed split (one model); test/<class>/ is scored by 05 and the leaderboard."""
    from helpers.runner import run_series

    root = tmp_path / "d"
    folder_of_classes(root / "train", per_class=4)
    folder_of_classes(root / "val", per_class=2)
    folder_of_classes(root / "test", per_class=2)
    run = run_series({**SERIES, "data_dir": str(root), "run_name": "given", "folds": []}, log=False)
    assert run.finished.exists()
    assert run.read_split()["kind"] == "fixed"
    assert sorted(run.read_metrics()["fold"].unique()) == [0]
    assert run.read_evaluation()["folds"] == [0] and run.read_evaluation()["images"] == 6
    submission = pd.read_csv(run.submission)
    assert list(submission.columns) == ["id", "label", "ant", "bee", "wasp"] and len(submission) == 6
    (row,) = [r for r in leaderboard.build_leaderboard().to_dict("records") if r["run"] == "given"]
    assert row["finished"] and 0 <= row["test_acc"] <= 1 and row["test_log_loss"] > 0


@pytest.mark.slow
def test_series_on_csv_without_a_test_set(outputs, make_csv_dataset):
    """No test set at all: 05 says so in one line and finishes; the run is finished, test columns empty."""
    from helpers.runner import run_series

    root = make_csv_dataset()
    run = run_series({**SERIES, "data_dir": str(root), "run_name": "notest", "n_folds": 3}, log=False)
    assert run.finished.exists() and not run.submission.exists()
    executed = (run.notebooks / "05_inference.ipynb").read_text()
    assert "no test set in" in executed
    (row,) = leaderboard.build_leaderboard().to_dict("records")
    assert row["finished"] and np.isnan(row["test_acc"]) and not np.isnan(row["val_acc"])


def test_split_settings_on_an_imagefolder_are_refused(outputs, tmp_path):
    folder_of_classes(tmp_path / "d" / "train")
    with pytest.raises(DataError, match="split_col and val_csv mean nothing.*val/, valid/, validation/"):
        prepare_dataset(cfg_of(tmp_path / "d", split_col="s"))


@pytest.mark.slow
def test_01_says_the_likely_cause_first_under_papermill(outputs, tmp_path):
    """As a new user meets it: 01 on a Kaggle table whose ids end in .png stops with the cause and the fix."""
    import papermill

    from helpers.paths import notebooks_dir

    ids = [f"sample_{k:03d}.png" for k in range(200)]
    root = csv_data(tmp_path / "d", ids, ["a", "b"] * 100, ids)
    with pytest.raises(papermill.PapermillExecutionError) as err:
        papermill.execute_notebook(
            str(notebooks_dir() / "01_data.ipynb"),
            str(tmp_path / "out.ipynb"),
            parameters={"data_dir": str(root), "run_name": "pngids"},
            kernel_name="python3",
            progress_bar=False,
        )
    message = err.value.evalue
    assert message.index('set image_ext=""') < message.index("- line 2 ")
    assert "... and 180 more" in message
    assert len(pd.read_csv(outputs / "runs" / "pngids" / "data_problems.csv")) == 200


# -- first-contact diagnoses of the test images -------------------------------------------------------------
def planet_style_test_set(root: Path, n: int = 30, folder: str = "test_images", ext: str = ".jpg") -> Config:
    """A sample submission of n ids whose images sit in `folder` (the kit's default is test_image/)."""
    ids = [f"test_{k}" for k in range(n)]
    for i in ids:
        write_image(root / folder / f"{i}{ext}", random_rgb(RNG, 8))
    pd.DataFrame({"image_name": ids, "tags": "a"}).to_csv(root / "sample_submission.csv", index=False)
    return cfg_of(root, id_col="image_name", label_col="tags", img_size=32)


def listed_test_error(cfg: Config) -> DataError:
    data_dir = Path(cfg.data_dir)
    with pytest.raises(DataError) as err:
        checked_test_images(list_test_images(cfg, data_dir, "csv"), cfg)
    message = str(err.value)
    assert message.index("likely cause:") < message.index("\n- "), "the cause comes before the rows"
    assert message.count("\n- ") == DataError.SHOWN and "... and 10 more" in message
    return err.value


def test_test_images_in_another_folder_are_diagnosed(outputs, tmp_path):
    """The Planet-style case: test_images/ holds the images, test_dir is test_image (its default)."""
    error = listed_test_error(planet_style_test_set(tmp_path))
    assert error.causes == [
        "30 of 30 missing images: the images are in 'test_images' under data_dir (there is no test_image/); "
        "set test_dir='test_images'"
    ]


def test_test_images_with_another_extension_or_with_extensions_in_the_ids(outputs, tmp_path):
    error = listed_test_error(planet_style_test_set(tmp_path / "a", folder="test_image", ext=".JPG"))
    assert error.causes[0].endswith("set image_ext='.JPG'")
    root = tmp_path / "b"
    cfg = planet_style_test_set(root, folder="test_image")
    ids = pd.read_csv(root / "sample_submission.csv")["image_name"] + ".jpg"
    pd.DataFrame({"image_name": ids, "tags": "a"}).to_csv(root / "sample_submission.csv", index=False)
    assert 'set image_ext=""' in listed_test_error(cfg).causes[0]
