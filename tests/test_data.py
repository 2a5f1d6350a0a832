"""prepare_dataset: both layouts, every bad-row case, dropping, the health cache, folds, and the demo set."""

from __future__ import annotations

import json
import os
import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import helpers.health
from helpers.config import Config
from helpers.dataset import prepare_dataset
from helpers.demo import ensure_demo_data
from helpers.folds import assign_folds, table_hash
from helpers.images import JPEG_SOS
from helpers.run_folder import RunFolder
from helpers.tables import DataError

N_FOLDS = 3


def config(root: Path, **changes) -> Config:
    return Config.from_dict({"data_dir": str(root), "n_folds": N_FOLDS, **changes})


def line_of(root: Path, image_id: str) -> int:
    """The line of `image_id` in train.csv, counting the header as line 1."""
    table = pd.read_csv(root / "train.csv", dtype=str)
    return int(np.flatnonzero(table["id"] == image_id)[0]) + 2


def problems_of(cfg: Config) -> pd.DataFrame:
    with pytest.raises(DataError) as info:
        prepare_dataset(cfg)
    assert not info.value.problems.empty
    return info.value.problems


def rows_about(problems: pd.DataFrame, text: str) -> pd.DataFrame:
    return problems[problems["problem"].str.contains(text, regex=False)]


# -- good data ------------------------------------------------------------------------------------------
def test_csv_layout(outputs, csv_dataset):
    info = prepare_dataset(config(csv_dataset))
    assert info.layout == "csv"
    assert info.name == csv_dataset.name
    assert info.folder == outputs / "datasets" / csv_dataset.name
    assert info.classes == ["cat", "dog", "fox"]
    assert info.num_classes == 3
    assert info.n_rows == 18 and len(info.table) == 18
    assert info.problems.empty
    table = info.table
    assert (table["label_idx"] == table["label"].map({"cat": 0, "dog": 1, "fox": 2})).all()
    assert table["fold"].notna().all()
    assert set(table["fold"]) == set(range(N_FOLDS))
    assert (table["height"] == 16).all() and (table["width"] == 16).all()
    assert all(Path(p).is_file() for p in table["path"])
    assert json.loads((info.folder / "classes.json").read_text()) == ["cat", "dog", "fox"]


def test_imagefolder_layout(outputs, imagefolder_dataset):
    info = prepare_dataset(config(imagefolder_dataset))
    assert info.layout == "imagefolder"
    assert info.classes == ["ant", "bee", "wasp"]
    table = info.table
    assert len(table) == 18
    assert "bee/03.png" in set(table["id"])
    assert (table.loc[table["id"] == "wasp/00.png", "label_idx"] == 2).all()
    assert (table["label_idx"] == table["label"].map({"ant": 0, "bee": 1, "wasp": 2})).all()
    assert set(table["fold"]) == set(range(N_FOLDS))
    assert info.problems.empty


def test_int_labels_sort_numerically(outputs, make_csv_dataset):
    root = make_csv_dataset(labels=(10, 2, 1))
    info = prepare_dataset(config(root))
    assert info.classes == ["1", "2", "10"]
    idx = dict(zip(info.table["label"], info.table["label_idx"], strict=False))
    assert idx == {"1": 0, "2": 1, "10": 2}


def test_imagefolder_int_class_folders_sort_numerically(outputs, make_imagefolder_dataset):
    info = prepare_dataset(config(make_imagefolder_dataset(labels=(2, 10, 1))))
    assert info.classes == ["1", "2", "10"]


# -- bad data: each case raises DataError with a row naming it --------------------------------------
def test_missing_file(outputs, csv_dataset):
    (csv_dataset / "train_image" / "dog_02.jpg").unlink()
    problems = problems_of(config(csv_dataset))
    bad = rows_about(problems, "missing")
    assert list(bad["line"]) == [line_of(csv_dataset, "dog_02")]
    assert bad["file"].iloc[0].endswith("dog_02.jpg")
    assert len(problems) == 1


def test_zero_byte_file(outputs, csv_dataset):
    (csv_dataset / "train_image" / "cat_01.jpg").write_bytes(b"")
    bad = rows_about(problems_of(config(csv_dataset)), "image empty")
    assert list(bad["id"]) == ["cat_01"]
    assert list(bad["line"]) == [line_of(csv_dataset, "cat_01")]


def test_non_image_file(outputs, csv_dataset):
    (csv_dataset / "train_image" / "fox_05.jpg").write_text("not really a picture")
    bad = rows_about(problems_of(config(csv_dataset)), "not an image")
    assert list(bad["line"]) == [line_of(csv_dataset, "fox_05")]
    assert bad["file"].iloc[0].endswith("fox_05.jpg")


def test_truncated_image(outputs, csv_dataset):
    path = csv_dataset / "train_image" / "dog_04.jpg"
    data = path.read_bytes()
    path.write_bytes(data[: data.rfind(JPEG_SOS) + 40])
    bad = rows_about(problems_of(config(csv_dataset)), "truncated")
    assert list(bad["line"]) == [line_of(csv_dataset, "dog_04")]


def test_non_image_in_imagefolder(outputs, imagefolder_dataset):
    (imagefolder_dataset / "train" / "bee" / "readme.txt").write_text("hello")
    bad = rows_about(problems_of(config(imagefolder_dataset)), "not an image")
    assert list(bad["id"]) == ["bee/readme.txt"]


@pytest.mark.parametrize("blank", ["", "   "])
def test_empty_label(outputs, csv_dataset, blank):
    table = pd.read_csv(csv_dataset / "train.csv", dtype=str)
    table.loc[table["id"] == "cat_03", "label"] = blank
    table.to_csv(csv_dataset / "train.csv", index=False)
    bad = rows_about(problems_of(config(csv_dataset)), "empty label")
    assert list(bad["line"]) == [line_of(csv_dataset, "cat_03")]


def test_empty_id(outputs, csv_dataset):
    table = pd.read_csv(csv_dataset / "train.csv", dtype=str)
    table.loc[5, "id"] = ""
    table.to_csv(csv_dataset / "train.csv", index=False)
    bad = rows_about(problems_of(config(csv_dataset)), "empty id")
    assert list(bad["line"]) == [7]


def test_duplicate_id_with_conflicting_labels(outputs, csv_dataset):
    table = pd.read_csv(csv_dataset / "train.csv", dtype=str)
    table = pd.concat([table, pd.DataFrame([{"id": "cat_00", "label": "dog"}])], ignore_index=True)
    table.to_csv(csv_dataset / "train.csv", index=False)
    bad = rows_about(problems_of(config(csv_dataset)), "conflicting labels")
    assert sorted(bad["line"]) == [2, 20]
    assert (bad["id"] == "cat_00").all()


def test_exact_duplicate_row(outputs, csv_dataset):
    table = pd.read_csv(csv_dataset / "train.csv", dtype=str)
    table = pd.concat([table, table.iloc[[4]]], ignore_index=True)
    table.to_csv(csv_dataset / "train.csv", index=False)
    bad = rows_about(problems_of(config(csv_dataset)), "duplicate of line 6")
    assert list(bad["line"]) == [20]


def test_class_smaller_than_n_folds(outputs, csv_dataset):
    table = pd.read_csv(csv_dataset / "train.csv", dtype=str)
    extra = pd.DataFrame([{"id": "cat_00x", "label": "emu"}, {"id": "cat_01x", "label": "emu"}])
    table = pd.concat([table, extra])
    for new, old in (("cat_00x", "cat_00"), ("cat_01x", "cat_01")):
        (csv_dataset / "train_image" / f"{new}.jpg").write_bytes(
            (csv_dataset / "train_image" / f"{old}.jpg").read_bytes()
        )
    table.to_csv(csv_dataset / "train.csv", index=False)
    problems = problems_of(config(csv_dataset))
    bad = rows_about(problems, "fewer than n_folds=3")
    assert list(bad["id"]) == ["emu"]
    assert "2 image(s)" in bad["problem"].iloc[0]
    assert len(problems) == 1


def test_header_only_table(outputs, csv_dataset):
    (csv_dataset / "train.csv").write_text("id,label\n")
    with pytest.raises(DataError, match="no rows"):
        prepare_dataset(config(csv_dataset))


def test_missing_columns_lists_existing_ones(outputs, csv_dataset):
    table = pd.read_csv(csv_dataset / "train.csv").rename(columns={"id": "image", "label": "target"})
    table.to_csv(csv_dataset / "train.csv", index=False)
    with pytest.raises(DataError) as info:
        prepare_dataset(config(csv_dataset))
    message = str(info.value)
    assert "['id', 'label']" in message
    assert "['image', 'target']" in message


def test_missing_group_column(outputs, csv_dataset):
    with pytest.raises(DataError, match="'patient'"):
        prepare_dataset(config(csv_dataset, group_col="patient"))


@pytest.mark.parametrize("escaping_id", ["../x", "sub/../../x", "ABSOLUTE"])
def test_id_escaping_the_image_folder(outputs, csv_dataset, escaping_id):
    (csv_dataset / "x.jpg").write_bytes((csv_dataset / "train_image" / "cat_00.jpg").read_bytes())
    if escaping_id == "ABSOLUTE":
        escaping_id = str(csv_dataset / "x")
    table = pd.read_csv(csv_dataset / "train.csv", dtype=str)
    table = pd.concat([table, pd.DataFrame([{"id": escaping_id, "label": "cat"}])], ignore_index=True)
    table.to_csv(csv_dataset / "train.csv", index=False)
    problems = problems_of(config(csv_dataset))
    bad = rows_about(problems, "outside")
    assert list(bad["line"]) == [20]
    assert list(bad["id"]) == [escaping_id]
    assert len(problems) == 1


def test_neither_layout(outputs, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="neither"):
        prepare_dataset(config(tmp_path / "empty"))


def test_all_problems_listed_at_once(outputs, csv_dataset):
    (csv_dataset / "train_image" / "dog_02.jpg").unlink()
    (csv_dataset / "train_image" / "cat_01.jpg").write_bytes(b"")
    problems = problems_of(config(csv_dataset))
    assert list(problems["line"]) == [line_of(csv_dataset, "cat_01"), line_of(csv_dataset, "dog_02")]
    assert list(problems["problem"]) == ["image empty", "image missing"]
    assert problems["fix"].str.len().gt(0).all()


# -- dropping bad rows ----------------------------------------------------------------------------------
def test_drop_bad_rows_keeps_the_rest_and_records_them(outputs, csv_dataset, tmp_path):
    (csv_dataset / "train_image" / "dog_02.jpg").unlink()
    (csv_dataset / "train_image" / "fox_01.jpg").write_text("nope")
    table = pd.read_csv(csv_dataset / "train.csv", dtype=str)
    table.loc[table["id"] == "cat_03", "label"] = ""
    table.to_csv(csv_dataset / "train.csv", index=False)
    run_dir = tmp_path / "run"

    info = prepare_dataset(config(csv_dataset, drop_bad_rows=True), run=RunFolder(run_dir))

    assert len(info.table) == 15 and info.n_rows == 18
    assert not {"dog_02", "fox_01", "cat_03"} & set(info.table["id"])
    assert info.classes == ["cat", "dog", "fox"]
    assert info.table["fold"].notna().all()
    dropped = pd.read_csv(run_dir / "dropped_rows.csv", dtype={"id": str})
    assert sorted(dropped["id"]) == ["cat_03", "dog_02", "fox_01"]
    assert sorted(dropped["line"]) == sorted(line_of(csv_dataset, i) for i in ("cat_03", "dog_02", "fox_01"))
    assert len(info.problems) == 3


def test_drop_bad_rows_leaves_out_a_small_class(outputs, make_csv_dataset, tmp_path):
    root = make_csv_dataset(labels=("cat", "dog", "fox"), per_class=6)
    table = pd.read_csv(root / "train.csv", dtype=str)
    table.loc[table["id"].isin(["fox_00", "fox_01"]), "label"] = "emu"
    table.to_csv(root / "train.csv", index=False)
    info = prepare_dataset(config(root, drop_bad_rows=True), run=RunFolder(tmp_path / "run"))
    assert info.classes == ["cat", "dog", "fox"]
    assert len(info.table) == 16
    dropped = pd.read_csv(tmp_path / "run" / "dropped_rows.csv")
    assert list(dropped["id"]) == ["emu"]


def test_drop_bad_rows_without_run_folder_writes_nothing(outputs, csv_dataset, tmp_path):
    (csv_dataset / "train_image" / "dog_02.jpg").unlink()
    info = prepare_dataset(config(csv_dataset, drop_bad_rows=True))
    assert len(info.table) == 17
    assert not list(tmp_path.rglob("dropped_rows.csv"))


def test_dropped_rows_file_not_stale_after_data_fixed(outputs, csv_dataset, tmp_path):
    path = csv_dataset / "train_image" / "dog_02.jpg"
    data = path.read_bytes()
    path.unlink()
    run_dir = tmp_path / "run"
    prepare_dataset(config(csv_dataset, drop_bad_rows=True), run=RunFolder(run_dir))
    assert list(pd.read_csv(run_dir / "dropped_rows.csv")["id"]) == ["dog_02"]
    path.write_bytes(data)  # the user fixes the data and runs again into the same run folder
    info = prepare_dataset(config(csv_dataset, drop_bad_rows=True), run=RunFolder(run_dir))
    assert len(info.table) == 18 and info.problems.empty
    assert not (run_dir / "dropped_rows.csv").exists() or pd.read_csv(run_dir / "dropped_rows.csv").empty


# -- the health-check cache -----------------------------------------------------------------------------
def test_health_cache_skips_unchanged_files_and_rechecks_changed(outputs, csv_dataset, monkeypatch):
    cfg = config(csv_dataset)
    first = prepare_dataset(cfg)
    assert (first.folder / "image_check.csv").is_file()
    real = helpers.health._check_one

    def must_not_decode(path, side=0):
        raise AssertionError(f"decoded {path} again")

    monkeypatch.setattr(helpers.health, "_check_one", must_not_decode)
    second = prepare_dataset(cfg)
    pd.testing.assert_frame_equal(first.table, second.table)

    checked: list[str] = []

    def recording(path, side=0):
        checked.append(path)
        return real(path, side)

    monkeypatch.setattr(helpers.health, "_check_one", recording)
    changed = csv_dataset / "train_image" / "fox_02.jpg"
    data = changed.read_bytes()
    stat = changed.stat()
    changed.write_bytes(data[: data.rfind(JPEG_SOS) + 40])
    os.utime(changed, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    problems = problems_of(cfg)
    assert [Path(p).name for p in checked] == ["fox_02.jpg"]
    assert list(problems["id"]) == ["fox_02"]
    assert list(problems["problem"]) == ["image truncated"]


def test_health_cache_rechecks_same_size_new_mtime(outputs, csv_dataset, monkeypatch):
    cfg = config(csv_dataset)
    prepare_dataset(cfg)
    checked: list[str] = []
    real = helpers.health._check_one
    monkeypatch.setattr(helpers.health, "_check_one", lambda p, side=0: (checked.append(p), real(p, side))[1])
    path = csv_dataset / "train_image" / "cat_04.jpg"
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    prepare_dataset(cfg)
    assert [Path(p).name for p in checked] == ["cat_04.jpg"]


def test_check_images_one_row_per_path_with_repeated_paths(tmp_path, csv_dataset):
    a, b = (str(csv_dataset / "train_image" / f"{i}.jpg") for i in ("cat_00", "cat_01"))
    cache = tmp_path / "image_check.csv"
    assert len(helpers.health.check_images([a, a, b], cache)) == 3
    assert len(helpers.health.check_images([a, a, b], cache)) == 3
    os.utime(b, ns=(0, 10**18))  # b changed: re-checked, cache rewritten
    assert len(helpers.health.check_images([a, a, b], cache)) == 3
    assert len(pd.read_csv(cache)) == 2


def test_an_interrupted_check_keeps_what_it_checked(tmp_path, csv_dataset, monkeypatch):
    paths = sorted(str(p) for p in (csv_dataset / "train_image").glob("*.jpg"))
    cache = tmp_path / "image_check.csv"
    real_check, calls = helpers.health._check_one, []

    def crash_on_the_seventh(path, side=0):
        calls.append(path)
        if len(calls) == 7:
            raise KeyboardInterrupt
        return real_check(path, side)

    monkeypatch.setattr(helpers.health, "_check_one", crash_on_the_seventh)
    with pytest.raises(KeyboardInterrupt):
        helpers.health.check_images(paths, cache, workers=1)
    assert sorted(pd.read_csv(cache)["path"]) == paths[:6]

    calls.clear()
    monkeypatch.setattr(
        helpers.health, "_check_one", lambda path, side=0: (calls.append(path), real_check(path, side))[1]
    )
    result = helpers.health.check_images(paths, cache, workers=1)
    assert calls == paths[6:], "the second run should check only what the first did not reach"
    assert (result["problem"] == "").all() and list(result["path"]) == paths
    assert sorted(pd.read_csv(cache)["path"]) == paths


def test_check_images_memory_per_image_stays_small(tmp_path):
    """The pool gets the paths a slice at a time: handing it every path at once kept a future per image
    (about 1.75 KB each, 1.7 GB for a million images)."""

    def peak_mb(n: int) -> float:
        paths = [str(tmp_path / f"img_{i:06d}.jpg") for i in range(n)]  # missing: checked, not decoded
        tracemalloc.start()
        try:
            helpers.health.check_images(paths, workers=2)
            return tracemalloc.get_traced_memory()[1] / 2**20
        finally:
            tracemalloc.stop()

    per_image_kb = (peak_mb(16_000) - peak_mb(4_000)) * 1024 / 12_000
    assert per_image_kb < 0.8, f"{per_image_kb:.2f} KB of peak memory per checked image"


# -- folds ----------------------------------------------------------------------------------------------
def test_folds_are_stratified(outputs, make_csv_dataset):
    root = make_csv_dataset(labels=("a", "b", "c", "d"), per_class=8)
    table = pd.read_csv(root / "train.csv", dtype=str)
    table.loc[table.index[-3:], "label"] = "a"  # uneven classes: a 11, b 8, c 8, d 5
    table.to_csv(root / "train.csv", index=False)
    info = prepare_dataset(config(root))
    counts = pd.crosstab(info.table["label"], info.table["fold"])
    assert list(counts.columns) == list(range(N_FOLDS))
    assert (counts.max(axis=1) - counts.min(axis=1)).le(1).all(), counts


def test_folds_keep_groups_together(outputs, make_csv_dataset):
    root = make_csv_dataset(per_class=8, groups_per_class=4)
    info = prepare_dataset(config(root, group_col="group"))
    folds_per_group = info.table.groupby("group")["fold"].nunique()
    assert len(folds_per_group) == 12
    assert (folds_per_group == 1).all()
    assert set(info.table["fold"]) == set(range(N_FOLDS))
    assert (info.folder / f"folds_k{N_FOLDS}_seed42_grouped.csv").is_file()


def test_assign_folds_is_deterministic_and_seeded():
    labels = pd.Series(list("abc") * 10)
    a = assign_folds(labels, None, 5, seed=7)
    b = assign_folds(labels, None, 5, seed=7)
    c = assign_folds(labels, None, 5, seed=8)
    np.testing.assert_array_equal(a, b)
    assert (a != c).any()
    assert (a >= 0).all() and set(a) == set(range(5))


def test_assign_folds_grouped_is_deterministic():
    labels = pd.Series(list("ab") * 12)
    groups = pd.Series([f"g{i // 2}" for i in range(24)])
    a = assign_folds(labels, groups, 3, seed=1)
    np.testing.assert_array_equal(a, assign_folds(labels, groups, 3, seed=1))
    assert pd.Series(a).groupby(groups).nunique().eq(1).all()


def test_same_seed_same_folds_across_datasets(outputs, csv_dataset):
    one = prepare_dataset(config(csv_dataset, dataset_name="one"))
    two = prepare_dataset(config(csv_dataset, dataset_name="two"))  # its own folder: folds made afresh
    assert one.folder != two.folder
    np.testing.assert_array_equal(one.table["fold"], two.table["fold"])
    other = prepare_dataset(config(csv_dataset, dataset_name="three", seed=1))
    assert (other.table["fold"].to_numpy() != one.table["fold"].to_numpy()).any()
    assert (other.folder / f"folds_k{N_FOLDS}_seed1.csv").is_file()


def test_no_id_in_two_folds(outputs, csv_dataset):
    table = prepare_dataset(config(csv_dataset)).table
    assert table["id"].is_unique
    val_sets = [set(table.loc[table["fold"] == k, "id"]) for k in range(N_FOLDS)]
    for k in range(N_FOLDS):
        for j in range(k + 1, N_FOLDS):
            assert not val_sets[k] & val_sets[j]
    assert set().union(*val_sets) == set(table["id"])


def test_folds_persisted_and_reused(outputs, csv_dataset):
    cfg = config(csv_dataset)
    info = prepare_dataset(cfg)
    csv_path = info.folder / f"folds_k{N_FOLDS}_seed42.csv"
    meta = json.loads((info.folder / f"folds_k{N_FOLDS}_seed42.json").read_text())
    assert meta == {
        "hash": table_hash(info.table),
        "n_folds": N_FOLDS,
        "seed": 42,
        "grouped": False,
        "task": "multiclass",
    }
    saved = pd.read_csv(csv_path, dtype={"id": str})
    assert list(saved["id"]) == list(info.table["id"])
    assert list(saved["fold"]) == list(info.table["fold"])

    # the saved file is what a later run reads, not a fresh split
    saved.loc[0, "fold"] = (saved.loc[0, "fold"] + 1) % N_FOLDS
    saved.to_csv(csv_path, index=False)
    again = prepare_dataset(cfg)
    assert again.table["fold"].iloc[0] == saved.loc[0, "fold"]
    assert list(again.table["fold"]) == list(saved["fold"])


def test_changed_table_gets_new_folds(outputs, csv_dataset):
    cfg = config(csv_dataset)
    info = prepare_dataset(cfg)
    meta_path = info.folder / f"folds_k{N_FOLDS}_seed42.json"
    csv_path = info.folder / f"folds_k{N_FOLDS}_seed42.csv"
    old_hash, old_csv = json.loads(meta_path.read_text())["hash"], csv_path.read_text()

    images = csv_dataset / "train_image"
    (images / "dog_99.jpg").write_bytes((images / "dog_00.jpg").read_bytes())
    table = pd.read_csv(csv_dataset / "train.csv", dtype=str)
    table = pd.concat([table, pd.DataFrame([{"id": "dog_99", "label": "dog"}])])
    table.to_csv(csv_dataset / "train.csv", index=False)
    new = prepare_dataset(cfg)

    new_hash = json.loads(meta_path.read_text())["hash"]
    assert new_hash != old_hash
    assert new_hash == table_hash(new.table)
    assert csv_path.read_text() != old_csv
    saved = pd.read_csv(csv_path, dtype={"id": str})
    assert len(saved) == 19 and "dog_99" in set(saved["id"])
    assert list(saved["fold"]) == list(new.table["fold"])


def test_relabelled_row_changes_the_hash(outputs, csv_dataset):
    info = prepare_dataset(config(csv_dataset))
    changed = info.table.copy()
    changed.loc[0, "label"] = "dog"
    assert table_hash(changed) != table_hash(info.table)
    assert table_hash(info.table.copy()) == table_hash(info.table)


# -- the demo set ---------------------------------------------------------------------------------------
def test_demo_data_builds_and_is_deterministic(tmp_path):
    first = ensure_demo_data(tmp_path / "digits")
    assert first == tmp_path / "digits"
    for name in ("train.csv", "train_image", "test_image", "sample_submission.csv", "test_labels.csv"):
        assert (first / name).exists(), name
    train = pd.read_csv(first / "train.csv", dtype={"id": str})
    test = pd.read_csv(first / "test_labels.csv", dtype={"id": str})
    sample = pd.read_csv(first / "sample_submission.csv", dtype={"id": str})
    assert len(train) + len(test) == 1797
    assert not set(train["id"]) & set(test["id"])
    assert list(sample["id"]) == list(test["id"])
    assert sorted(train["label"].unique()) == list(range(10))
    assert len(list((first / "train_image").glob("*.jpg"))) == len(train)
    assert len(list((first / "test_image").glob("*.jpg"))) == len(test)
    assert [p.name for p in tmp_path.iterdir()] == ["digits"]  # no temp folder left behind

    second = ensure_demo_data(tmp_path / "again" / "digits")
    assert (first / "train.csv").read_bytes() == (second / "train.csv").read_bytes()
    image = f"{train['id'].iloc[5]}.jpg"
    assert (first / "train_image" / image).read_bytes() == (second / "train_image" / image).read_bytes()


def test_demo_data_is_built_once(tmp_path):
    dest = ensure_demo_data(tmp_path / "digits")
    marker = dest / "train.csv"
    marker.write_text("id,label\nkept,0\n")
    assert ensure_demo_data(dest) == dest
    assert marker.read_text() == "id,label\nkept,0\n"


def test_demo_data_through_prepare_dataset(outputs, tmp_path, monkeypatch):
    monkeypatch.setenv("KIT_DEMO_DATA", str(tmp_path / "demo"))
    info = prepare_dataset(Config())
    assert info.name == "digits"
    assert info.classes == [str(i) for i in range(10)]
    assert len(info.table) == info.n_rows
    assert (info.table["height"] == 32).all()
    assert (outputs / "datasets" / "digits" / "folds_k5_seed42.csv").is_file()
