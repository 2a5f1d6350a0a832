"""From a config to a checked, folded table of training images: the data half of every notebook.

`prepare_dataset` reads either layout, opens every image once, lists every problem with its fix, stops
(or drops the bad rows and records them), saves the class map and the folds with the dataset, and
returns what the later steps need. In the same pass it fills the dataset's image store (helpers.store) at
the side training will read, so a photo is decoded once in total.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from helpers.atomic import atomic_write_text
from helpers.config import Config
from helpers.demo import ensure_demo_data
from helpers.diagnoses import diagnose
from helpers.folds import TRAIN_ONLY, Split, given_split, kit_split, load_or_make_folds
from helpers.health import FIXES, check_images
from helpers.label_sets import read_label_sets
from helpers.paths import datasets_dir, resolve_path
from helpers.run_folder import RunFolder
from helpers.settings import planned_side
from helpers.store import StoreWriter, open_store, store_side
from helpers.tables import (
    DataError,
    class_names,
    detect_layout,
    problem_frame,
    read_labels,
    row_keys,
    split_source,
)
from helpers.targets import TaskName
from helpers.tasks import task_named

CHECK_CACHE = "image_check.csv"


@dataclass
class DataInfo:
    """A prepared dataset: the clean table (id, path, label, label_idx, group, fold, height, width) and more.

    `label` is the class, or (multilabel) the label set in class order joined by label_sep; `label_idx`
    the class index, or the set's sorted class indices (helpers.targets.encode_label_set): ask
    the run's task object (helpers.tasks) for arrays.
    """

    name: str
    data_dir: Path
    layout: str
    folder: Path  # outputs/datasets/<name>
    table: pd.DataFrame
    classes: list[str]
    problems: pd.DataFrame  # every problem found, dropped or not
    n_rows: int  # rows in the source table
    split: Split  # the validation parts: the kit's K folds, or the split the data gives
    task: TaskName = "multiclass"  # resolved: what the labels are (`task='auto'` decided by the labels)
    task_reason: str = ""  # why it is that task, in one line (01 prints it)

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def data_dir_of(cfg: Config) -> Path:
    """The folder holding the data: the configured one, or the demo set (built on first use)."""
    return resolve_path(cfg.data_dir) if cfg.data_dir else ensure_demo_data()


def dataset_name_of(cfg: Config) -> str:
    if cfg.dataset_name:
        return cfg.dataset_name
    return resolve_path(cfg.data_dir).name if cfg.data_dir else "digits"


def dataset_folder(cfg: Config) -> Path:
    """outputs/datasets/<name>: the dataset's class map, folds, image-check cache and image store."""
    return datasets_dir() / dataset_name_of(cfg)


def _store_writer(
    cfg: Config, folder: Path, side: int
) -> contextlib.AbstractContextManager[StoreWriter | None]:
    return open_store(folder, side) if cfg.store else contextlib.nullcontext()


def check_and_store(cfg: Config, paths: list[str], side: int) -> pd.DataFrame:
    """`check_images` over these paths with the dataset's check cache; in the same decode each readable
    image the dataset's store lacks is added to it at `side` (unless store=False). Training images (01, 03)
    and test images (05) alike: one decode per image for every run at that side."""
    folder = dataset_folder(cfg)
    with _store_writer(cfg, folder, side) as store:
        return check_images(paths, folder / CHECK_CACHE, sink=store)


def build_store(cfg: Config, info: DataInfo) -> None:
    """Store the dataset's images at the side cfg (its img_size and crop_pct resolved) trains at, for the
    images the store lacks (none when 01 planned this side): 03 calls it before training."""
    if cfg.store:
        check_and_store(cfg, info.table["path"].tolist(), store_side(cfg.img_size, cfg.crop_pct))


def prepare_dataset(cfg: Config, run: RunFolder | None = None) -> DataInfo:
    """Read, check and fold the training data; raise DataError listing every problem unless dropping.

    A split the data gives (val/ folder, val_csv, split_col) is used as given and checked: every class on
    both sides of each part. Otherwise the kit makes stratified K folds. With a run folder, the split used
    is recorded in its split.json.
    """
    data_dir = data_dir_of(cfg)
    if not data_dir.is_dir():
        raise DataError(
            f"data_dir {data_dir} is not a folder; set data_dir to your data's folder or '' for the demo."
        )
    name = dataset_name_of(cfg)
    folder = dataset_folder(cfg)
    layout = detect_layout(cfg, data_dir)
    frame, problems = read_labels(cfg, data_dir)
    frame, task, task_reason, label_problems = read_label_sets(cfg, frame, layout)
    problems = pd.concat([problems, label_problems], ignore_index=True)
    source = split_source(cfg, data_dir)

    outside = problems[problems["problem"].str.contains("outside")]
    checkable = ~row_keys(frame).isin(row_keys(outside))
    checks = check_and_store(
        cfg, frame.loc[checkable, "path"].tolist(), planned_side(cfg, frame.loc[checkable, "path"].tolist())
    )
    frame = frame.merge(
        checks[["path", "problem", "height", "width"]].drop_duplicates("path"), on="path", how="left"
    )
    bad_images = frame[frame["problem"].fillna("") != ""]
    problems = pd.concat(
        [
            problems,
            problem_frame(
                [
                    {
                        "table": r.table,
                        "line": r.line,
                        "id": r.id,
                        "file": r.path,
                        "problem": f"image {r.problem}",
                        "fix": FIXES[r.problem],
                    }
                    for r in bad_images.itertuples()
                ]
            ),
        ],
        ignore_index=True,
    )

    clean = frame[~row_keys(frame).isin(_row_problem_keys(problems))]
    class_problems = (
        _split_class_problems(clean, source)
        if source
        else _small_class_problems(clean, cfg.n_folds, cfg.label_cols)
    )
    problems = pd.concat([problems, class_problems], ignore_index=True)
    problems = problems.sort_values(["table", "line"], kind="stable", na_position="last").reset_index(
        drop=True
    )

    if not problems.empty and not cfg.drop_bad_rows:
        listed = ""
        if run is not None:
            run.write_data_problems(problems)
            listed = f" (all listed in {run.data_problems})"
        raise DataError(
            f"{len(problems)} problem(s) in {data_dir}{listed}. Fix each one as it says, or set drop_bad_rows=True "
            "to train without these rows (they are then listed in the run's dropped_rows.csv):",
            problems,
            diagnose(cfg, data_dir, problems),
        )
    clean = frame[~row_keys(frame).isin(_row_problem_keys(problems))]
    small = set(problems.loc[problems["line"].isna(), "id"])
    # a class left out takes the rows that hold it
    clean = clean[~clean["tokens"].map(lambda tokens: bool(small.intersection(tokens)))]
    clean = clean.drop(columns="problem").reset_index(drop=True)
    if run is not None:
        run.write_dropped_rows(problems)
    classes = class_names(clean["tokens"].explode().dropna())
    kind = task_named(task, cfg.allow_empty_labels)
    least = kind.least_classes
    if len(classes) < least:
        raise DataError(
            f"after dropping bad rows, {data_dir} has fewer than {least} classes left to train on.", problems
        )

    order = {c: i for i, c in enumerate(classes)}
    encoded = [kind.encode(tokens, order, cfg.label_sep) for tokens in clean["tokens"]]
    clean["label"] = [label for label, _ in encoded]
    clean["label_idx"] = [index for _, index in encoded]
    atomic_write_text(folder / "classes.json", json.dumps(classes, indent=2) + "\n")
    if source:
        clean["fold"] = clean["given_fold"].astype(int)
        split = given_split(clean["fold"].to_numpy(), source)
    else:
        clean["fold"] = load_or_make_folds(
            clean, cfg.n_folds, cfg.seed, bool(cfg.group_col), folder, kind, len(classes)
        )
        split = kit_split(cfg.n_folds, cfg.seed, bool(cfg.group_col), kind.fold_kind)
    clean = clean.drop(columns=["given_fold", "split_value", "tokens"], errors="ignore")
    if run is not None:
        run.write_split(split.to_dict())
    return DataInfo(
        name, data_dir, layout, folder, clean, classes, problems, len(frame), split, task, task_reason
    )


def _row_problem_keys(problems: pd.DataFrame) -> pd.MultiIndex:
    return row_keys(problems[problems["line"].notna()])


def _split_class_problems(clean: pd.DataFrame, source: str) -> pd.DataFrame:
    """Every class must have images in each validation part of a given split, and outside it to train on."""
    rows = []
    each = clean[["tokens", "given_fold"]].explode("tokens").dropna(subset="tokens")
    labels = each["tokens"].astype(str)
    classes = sorted(labels.unique())
    for part in sorted(int(f) for f in clean["given_fold"].unique() if f != TRAIN_ONLY):
        inside = set(labels[each["given_fold"] == part])
        outside = set(labels[each["given_fold"] != part])
        name = (
            "the validation part" if (clean["given_fold"] == TRAIN_ONLY).any() else f"validation fold {part}"
        )
        for label in classes:
            if label not in inside:
                problem, fix = f"class {label!r} has no image in {name} of {source}", "add images of it there"
            elif label not in outside:
                problem = f"class {label!r} has no training image outside {name} of {source}"
                fix = "add training images of it"
            else:
                continue
            rows.append(
                {
                    "line": None,
                    "id": label,
                    "file": "",
                    "problem": problem,
                    "fix": f"{fix}, or set drop_bad_rows=True to leave the class out",
                }
            )
    return problem_frame(rows)


def _small_class_problems(clean: pd.DataFrame, n_folds: int, columns: list[str]) -> pd.DataFrame:
    """A problem per class held by fewer than n_folds images (a wide table's column marked by none too)."""
    counts = clean["tokens"].explode().dropna().astype(str).value_counts()  # images holding each class
    counts = counts.reindex(list(dict.fromkeys([*counts.index, *columns])), fill_value=0)
    return problem_frame(
        [
            {
                "line": None,
                "id": label,
                "file": "",
                "problem": f"class {label!r} has {n} image(s), fewer than n_folds={n_folds}",
                "fix": "add images of this class, merge it into a related class in the label table, lower "
                "n_folds, or set drop_bad_rows=True to leave the class out",
            }
            for label, n in counts.items()
            if n < n_folds
        ]
    )


def health_summary(info: DataInfo) -> pd.DataFrame:
    """The data-health table: counts of rows, classes and each kind of problem."""
    rows = [("rows in the table", info.n_rows), ("rows kept", len(info.table)), ("classes", info.num_classes)]
    rows.append((f"validation: {info.split.describe()}", info.split.n_folds))
    kinds = info.problems["problem"].str.replace(
        r" of (\S+ )?line \d+|id '.*' has| '.*' has \d+ image\(s\),|(?<=class) '[^']*'(?= has no)| \([^)]*\)$",
        "",
        regex=True,
    )
    rows += [(f"problem: {k}", n) for k, n in kinds.value_counts().items()]
    rows.append(("rows dropped", info.n_rows - len(info.table)))
    return pd.DataFrame(rows, columns=["check", "count"])
