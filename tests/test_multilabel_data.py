"""Multi-label data: label formats, the task resolution and its stop, the label-set health rules, the
prepared table, multi-label stratified folds (with groups) and the multi-label demo set."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import random_rgb, write_image

from helpers.config import Config, settle_run_config
from helpers.dataset import prepare_dataset
from helpers.demo import ensure_multilabel_demo_data
from helpers.folds import assign_multilabel_folds, table_hash
from helpers.label_sets import class_rows, looks_multilabel
from helpers.tables import DataError
from helpers.targets import decode_label_set
from helpers.tasks import task_named

N_FOLDS = 3
CLASSES = ("ant", "bee", "cat", "dog")


def label_sets(n: int = 30, seed: int = 0) -> list[list[str]]:
    """n random sets of 1-3 of CLASSES (each class in many of them)."""
    rng = np.random.default_rng(seed)
    return [sorted(rng.choice(CLASSES, size=rng.integers(1, 4), replace=False).tolist()) for _ in range(n)]


@pytest.fixture
def make_table(tmp_path: Path) -> Callable[..., Path]:
    """Factory: `<root>/train.csv` with the given columns (and an `id` column) + one image per row."""

    def make(columns: dict[str, list], name: str = "mldata") -> Path:
        root = tmp_path / name
        n = len(next(iter(columns.values())))
        rng = np.random.default_rng(0)
        ids = [f"img{i:03d}" for i in range(n)]
        for image_id in ids:
            write_image(root / "train_image" / f"{image_id}.jpg", random_rgb(rng))
        pd.DataFrame({"id": ids, **columns}).to_csv(root / "train.csv", index=False)
        return root

    return make


def config(root: Path, **changes) -> Config:
    return Config.from_dict({"data_dir": str(root), "n_folds": N_FOLDS, **changes})


def problems_of(cfg: Config) -> pd.DataFrame:
    with pytest.raises(DataError) as info:
        prepare_dataset(cfg)
    return info.value.problems


# -- label formats --------------------------------------------------------------------------------------
@pytest.mark.parametrize("sep", [" ", ",", "|"])
def test_separated_column(outputs, make_table, sep):
    sets = label_sets()
    # written in a shuffled order, with spaces around the separator: read as the same set
    written = [f" {sep} ".join(reversed(s)) if sep != " " else " ".join(reversed(s)) for s in sets]
    root = make_table({"label": written})
    info = prepare_dataset(config(root, task="multilabel", label_sep=sep))
    assert info.task == "multilabel"
    assert info.classes == list(CLASSES)
    assert info.problems.empty
    assert list(info.table["label"]) == [sep.join(s) for s in sets]  # canonical: class order
    indices = [[CLASSES.index(c) for c in s] for s in sets]
    assert [decode_label_set(v) for v in info.table["label_idx"]] == indices
    assert json.loads((info.folder / "classes.json").read_text()) == list(CLASSES)
    hot = task_named(info.task).targets(info.table, info.num_classes)
    assert hot.shape == (len(sets), len(CLASSES)) and hot.dtype == np.float32
    assert hot.sum() == sum(len(s) for s in sets)


def test_wide_columns(outputs, make_table):
    sets = label_sets()
    root = make_table({c: [int(c in s) for s in sets] for c in CLASSES})
    info = prepare_dataset(config(root, label_cols=list(CLASSES), label_col=""))
    assert info.task == "multilabel"
    assert "mark 1 to 3 columns" in info.task_reason
    assert info.classes == list(CLASSES)
    assert list(info.table["label"]) == [" ".join(s) for s in sets]


def test_wide_one_hot_columns_are_multiclass(outputs, make_table):
    labels = [CLASSES[i % 4] for i in range(24)]
    root = make_table({c: [int(c == label) for label in labels] for c in CLASSES})
    info = prepare_dataset(config(root, label_cols=list(CLASSES)))
    assert info.task == "multiclass"
    assert "one-hot" in info.task_reason and "task='multilabel'" in info.task_reason
    assert list(info.table["label"]) == labels
    assert list(info.table["label_idx"]) == [CLASSES.index(label) for label in labels]


def test_wide_columns_as_multilabel_when_asked(outputs, make_table):
    labels = [CLASSES[i % 4] for i in range(24)]
    root = make_table({c: [int(c == label) for label in labels] for c in CLASSES})
    info = prepare_dataset(config(root, label_cols=list(CLASSES), task="multilabel"))
    assert info.task == "multilabel"
    assert [decode_label_set(v) for v in info.table["label_idx"]] == [[CLASSES.index(x)] for x in labels]


def test_wide_column_name_holding_the_separator_is_refused(outputs, make_table):
    sets = label_sets()
    names = ["ETT - Abnormal", "ETT - Normal", "NGT", "CVC"]
    root = make_table({n: [int(c in s) for s in sets] for n, c in zip(names, CLASSES, strict=True)})
    with pytest.raises(DataError, match=r"set label_sep to a text no column name holds"):
        prepare_dataset(config(root, label_cols=names))
    assert prepare_dataset(config(root, label_cols=names, label_sep="|")).task == "multilabel"


# -- task='auto' ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sep", [" ", ",", "|"])
def test_auto_stops_on_labels_that_look_like_sets(outputs, make_table, sep):
    root = make_table({"label": [sep.join(s) for s in label_sets()]})
    with pytest.raises(DataError) as stop:
        prepare_dataset(config(root))
    message = str(stop.value)
    assert "\n" not in message
    assert "looks multi-label" in message
    assert "task='multilabel'" in message and f"label_sep={sep!r}" in message
    assert "task='multiclass'" in message


def test_auto_keeps_single_labels_multiclass(outputs, make_table):
    names = ["golden retriever", "labrador retriever", "great dane", "pug"]  # spaces inside class names
    root = make_table({"label": [names[i % 4] for i in range(24)]})
    info = prepare_dataset(config(root))
    assert info.task == "multiclass"
    assert info.classes == sorted(names)


def test_looks_multilabel_on_few_combinations():
    # two classes and their pair: the parts of "a b" are labels on their own
    assert looks_multilabel(pd.Series(["a", "b", "a b", "a", "b", "a b"]), " ")[0] == " "
    assert looks_multilabel(pd.Series(["a", "b", "c"] * 5), " ")[0] == ""


def test_multiclass_asked_for_keeps_separated_labels_whole(outputs, make_table):
    root = make_table({"label": ["3 5", "1", "2"] * 6})
    info = prepare_dataset(config(root, task="multiclass"))
    assert info.task == "multiclass"
    assert info.classes == ["1", "2", "3 5"]


def test_imagefolder_refuses_multilabel(outputs, imagefolder_dataset):
    with pytest.raises(DataError, match=r"ImageFolder tree .* needs a label table"):
        prepare_dataset(config(imagefolder_dataset, task="multilabel"))


def test_label_cols_need_no_label_col():
    assert Config(label_cols=["a", "b"], label_col="").label_cols == ["a", "b"]
    with pytest.raises(ValueError, match="label_col"):
        Config(label_col="")


def test_auto_asked_again_keeps_the_resolved_task(tmp_path):
    saved = Config(task="multilabel")
    kept = settle_run_config({"task": "auto"}, saved, ["data"], tmp_path)
    assert kept.task == "multilabel"
    with pytest.raises(ValueError, match="task='multiclass'"):
        settle_run_config({"task": "multiclass"}, saved, ["data"], tmp_path)


# -- health rules -----------------------------------------------------------------------------------------
def test_every_label_set_problem_named_by_line(outputs, make_table):
    written = [" ".join(s) for s in label_sets()]
    written[0] = "ant ant bee"  # repeated label
    written[1] = ""  # empty label set
    written[2] = "ant,bee"  # a token holding another separator
    root = make_table({"label": written})
    problems = problems_of(config(root, task="multilabel"))
    by_line = problems.set_index("line")["problem"]
    assert "label repeated within the row (ant)" in by_line[2]
    assert "empty label" in by_line[3]
    assert "unknown label token" in by_line[4] and "ant,bee" in by_line[4]
    assert problems["line"].notna().all() and len(problems) == 3


def test_a_repeated_id_is_compared_by_its_label_set_not_its_order(outputs, make_table):
    written = [" ".join(s) for s in label_sets()]
    written[0], written[1] = "ant bee", "cat dog"
    root = make_table({"label": written})
    table = pd.read_csv(root / "train.csv")
    again = pd.DataFrame({"id": ["img000", "img001"], "label": ["bee  ant", "cat"]})  # lines 32 and 33
    pd.concat([table, again]).to_csv(root / "train.csv", index=False)
    by_line = problems_of(config(root, task="multilabel")).set_index("line")["problem"]
    assert sorted(by_line.index) == [3, 32, 33]
    assert by_line[32] == "duplicate of line 2", "the same set written in another order"
    assert "conflicting labels ['cat', 'cat dog']" in by_line[3] and by_line[3] == by_line[33]


def test_a_label_with_a_space_in_a_pipe_separated_table_is_one_label(outputs, make_table):
    written = ["|".join(s) for s in label_sets()]
    written[0] = "No Finding"  # NIH chest X-rays: "No" and "Finding" are no labels of their own
    written[3] = "No Finding"
    written[6] = "No Finding"
    written[1] = "ant bee|cat"  # two known labels joined by a space: mis-separated
    root = make_table({"label": written})
    problems = problems_of(config(root, task="multilabel", label_sep="|"))
    assert list(problems["line"]) == [3] and "(ant bee)" in problems["problem"].iloc[0]


def test_empty_label_sets_allowed_when_asked(outputs, make_table):
    written = [" ".join(s) for s in label_sets()]
    written[1] = ""
    root = make_table({"label": written})
    info = prepare_dataset(config(root, task="multilabel", allow_empty_labels=True))
    assert info.table.loc[1, "label"] == "" and info.table.loc[1, "label_idx"] == ""
    assert task_named("multilabel").targets(info.table, info.num_classes)[1].sum() == 0


def test_wide_value_other_than_0_or_1(outputs, make_table):
    sets = label_sets()
    columns = {c: [str(int(c in s)) for s in sets] for c in CLASSES}
    columns["bee"][4] = "2"
    columns["cat"][5] = "yes"
    root = make_table(columns)
    problems = problems_of(config(root, label_cols=list(CLASSES)))
    by_line = problems.set_index("line")["problem"]
    assert by_line[6] == "column 'bee' holds '2', not 0 or 1"
    assert by_line[7] == "column 'cat' holds 'yes', not 0 or 1"
    assert len(problems) == 2


def test_wide_row_with_two_classes_in_a_multiclass_task(outputs, make_table):
    labels = [CLASSES[i % 4] for i in range(24)]
    columns = {c: [int(c == label) for label in labels] for c in CLASSES}
    columns["dog"][0] = 1
    root = make_table(columns)
    problems = problems_of(config(root, label_cols=list(CLASSES), task="multiclass"))
    assert list(problems["line"]) == [2]
    assert (
        "2 classes marked" in problems["problem"].iloc[0] and "task='multilabel'" in problems["fix"].iloc[0]
    )


def test_class_with_fewer_positive_rows_than_folds(outputs, make_table):
    written = [" ".join(s) for s in label_sets()]
    written[3] += " eel"
    written[9] += " eel"
    root = make_table({"label": written})
    problems = problems_of(config(root, task="multilabel"))
    assert len(problems) == 1 and pd.isna(problems["line"].iloc[0])
    assert problems["problem"].iloc[0] == f"class 'eel' has 2 image(s), fewer than n_folds={N_FOLDS}"
    # dropped: the class and the rows holding it go, the rest is kept
    info = prepare_dataset(config(root, task="multilabel", drop_bad_rows=True))
    assert info.classes == list(CLASSES) and len(info.table) == len(written) - 2


def test_drop_bad_rows_in_a_multilabel_table(outputs, make_table, tmp_path):
    written = [" ".join(s) for s in label_sets()]
    written[0] = "ant ant"
    root = make_table({"label": written})
    info = prepare_dataset(config(root, task="multilabel", drop_bad_rows=True))
    assert len(info.table) == len(written) - 1 and "img000" not in set(info.table["id"])


# -- the prepared table and its views ---------------------------------------------------------------------
def test_class_rows_count_each_label_of_a_set(outputs, make_table):
    sets = label_sets()
    root = make_table({"label": [" ".join(s) for s in sets]})
    info = prepare_dataset(config(root, task="multilabel"))
    each = class_rows(info.table, info.classes, info.task)
    assert len(each) == sum(len(s) for s in sets)
    counts = each["label"].value_counts()
    for c in CLASSES:
        assert counts[c] == sum(c in s for s in sets)


# -- folds ------------------------------------------------------------------------------------------------
def test_multilabel_folds_hold_every_class(outputs, make_table):
    sets = label_sets(60, seed=3)
    root = make_table({"label": [" ".join(s) for s in sets]})
    info = prepare_dataset(config(root, task="multilabel"))
    assert info.split.source.startswith("multi-label stratified K-fold")
    assert sorted(info.table["fold"].unique()) == list(range(N_FOLDS))
    assert info.table["id"].is_unique
    hot = task_named(info.task).targets(info.table, info.num_classes)
    per_fold = np.stack([hot[info.table["fold"].to_numpy() == k].sum(0) for k in range(N_FOLDS)])
    assert (per_fold >= 1).all()  # every class (each has >= n_folds positives) in every fold
    # stratified: each fold holds close to a third of each class's positives
    assert (np.abs(per_fold - hot.sum(0) / N_FOLDS) <= 3).all()


def test_multilabel_folds_keep_groups_together():
    rng = np.random.default_rng(0)
    targets = (rng.random((90, 5)) < 0.4).astype(np.float32)
    groups = pd.Series([f"g{i // 3}" for i in range(90)])  # 30 groups of 3 rows
    folds = assign_multilabel_folds(targets, groups, N_FOLDS, seed=1)
    assert (pd.Series(folds).groupby(groups).nunique() == 1).all()
    assert sorted(set(folds)) == list(range(N_FOLDS))
    again = assign_multilabel_folds(targets, groups, N_FOLDS, seed=1)
    assert (folds == again).all()


def test_grouped_multilabel_folds_through_prepare_dataset(outputs, make_table):
    sets = label_sets(60, seed=2)
    root = make_table({"label": [" ".join(s) for s in sets], "group": [f"p{i // 4}" for i in range(60)]})
    info = prepare_dataset(config(root, task="multilabel", group_col="group"))
    assert (info.table.groupby("group")["fold"].nunique() == 1).all()
    assert (info.folder / f"folds_k{N_FOLDS}_seed42_grouped_multilabel.csv").is_file()


def test_multilabel_folds_persisted_reused_and_hashed_by_label_set(outputs, make_table):
    sets = label_sets(45, seed=4)
    root = make_table({"label": [" ".join(s) for s in sets]})
    cfg = config(root, task="multilabel")
    info = prepare_dataset(cfg)
    stem = info.folder / f"folds_k{N_FOLDS}_seed42_multilabel"
    meta = json.loads(stem.with_suffix(".json").read_text())
    assert meta["task"] == "multilabel" and meta["hash"] == table_hash(info.table, "multilabel")
    assert table_hash(info.table, "multilabel") != table_hash(info.table)
    saved = pd.read_csv(stem.with_suffix(".csv"), dtype={"id": str})
    saved.loc[0, "fold"] = (saved.loc[0, "fold"] + 1) % N_FOLDS
    saved.to_csv(stem.with_suffix(".csv"), index=False)
    assert prepare_dataset(cfg).table["fold"].iloc[0] == saved.loc[0, "fold"]  # reused, not remade

    # one label added to one row's set: a new hash and new folds
    sets[0] = sorted({*sets[0], "dog", "ant"})
    pd.DataFrame({"id": info.table["id"], "label": [" ".join(s) for s in sets]}).to_csv(
        root / "train.csv", index=False
    )
    prepare_dataset(cfg)
    assert json.loads(stem.with_suffix(".json").read_text())["hash"] != meta["hash"]


# -- the multi-label demo ---------------------------------------------------------------------------------
def test_multilabel_demo_builds_deterministically(tmp_path):
    first = ensure_multilabel_demo_data(tmp_path / "a")
    second = ensure_multilabel_demo_data(tmp_path / "b")
    for name in ("train.csv", "sample_submission.csv", "test_labels.csv"):
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    train = pd.read_csv(first / "train.csv", dtype=str)
    test = pd.read_csv(first / "test_labels.csv", dtype=str)
    sample = pd.read_csv(first / "sample_submission.csv", dtype=str)
    assert list(train.columns) == ["id", "labels"] and list(sample.columns) == ["id", "labels"]
    assert list(sample["id"]) == list(test["id"])
    sizes = train["labels"].str.split().map(len)
    assert set(sizes) == {1, 2, 3, 4}
    image = f"{train['id'].iloc[7]}.jpg"
    assert (first / "train_image" / image).read_bytes() == (second / "train_image" / image).read_bytes()
    assert len(list((first / "test_image").glob("*.jpg"))) == len(test)


def test_multilabel_demo_through_prepare_dataset(outputs, tmp_path):
    root = ensure_multilabel_demo_data(tmp_path / "digits_multilabel")
    with pytest.raises(DataError, match="label_sep=' '"):
        prepare_dataset(Config(data_dir=str(root), label_col="labels"))
    info = prepare_dataset(Config(data_dir=str(root), label_col="labels", task="multilabel"))
    assert info.task == "multilabel" and info.classes == [str(i) for i in range(10)]
    assert (info.table["height"] == 64).all() and info.problems.empty


def test_the_runner_keeps_a_separator_as_written():
    from helpers.runner import parse_value

    assert [parse_value(v, "label_sep") for v in ("|", ",", " ", ";")] == ["|", ",", " ", ";"]
    assert parse_value("3", "epochs") == 3 and parse_value("[0, 1]", "folds") == [0, 1]


def test_imagefolder_class_names_never_look_like_sets(outputs, make_imagefolder_dataset):
    root = make_imagefolder_dataset(labels=("a", "b", "a b"))
    info = prepare_dataset(config(root))
    assert info.task == "multiclass" and info.classes == ["a", "a b", "b"]
    assert "ImageFolder" in info.task_reason


def test_health_summary_counts_multilabel_problem_kinds(outputs, make_table):
    from helpers.dataset import health_summary

    written = [" ".join(s) for s in label_sets()]
    written[0], written[1], written[2] = "ant ant", "bee bee cat", ""
    root = make_table({"label": written})
    info = prepare_dataset(config(root, task="multilabel", drop_bad_rows=True))
    counts = health_summary(info).set_index("check")["count"]
    assert counts["problem: label repeated within the row"] == 2
    assert counts["problem: empty label in train.csv column 'label'"] == 1
    assert counts["rows dropped"] == 3


def test_label_sets_figure_keeps_the_most_frequent_classes():
    from helpers.plots import MANY_CLASSES, show_label_sets

    classes = [f"c{i}" for i in range(40)]
    sets = [[i % 40, (i * 7 + 1) % 40] for i in range(200)] + [[0, 1, 2]] * 50 + [[5]] * 10
    fig = show_label_sets(sets, classes)
    cardinality, heat = fig.axes[:2]
    assert [t.get_text() for t in cardinality.get_xticklabels()] == ["1", "2", "3"]
    assert len(heat.get_xticklabels()) == MANY_CLASSES
    assert "c0" in [t.get_text() for t in heat.get_xticklabels()]
    assert f"the {MANY_CLASSES} most frequent of 40 classes" in heat.get_title()
