"""Cross-validation folds, persisted with the dataset so every run and every backbone of a sweep shares them.

The folds file is keyed by a hash of the source table (ids, labels, groups; the task and label sets of a
multilabel table), K and the seed: an edited table gets new folds instead of stale ones. Multilabel rows
are stratified over every class at once (iterative-stratification's MultilabelStratifiedKFold). A split the data gives (a validation folder or table, a split
column) is used as given: the `fold` column then holds its validation parts, and -1 for rows that are only
ever trained on; `Split` says which kind a run used.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
from iterstrat.ml_stratifiers import MultilabelStratifiedKFold
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

from helpers.atomic import atomic_to_csv, atomic_write_text


class FoldingTask(Protocol):
    """What the folds ask of the run's task (helpers.tasks.Task): its name, the tag its folds files carry
    and how it stratifies."""

    name: str
    fold_tag: str

    def assign_folds(
        self, table: pd.DataFrame, groups: pd.Series | None, n_folds: int, seed: int, num_classes: int
    ) -> np.ndarray: ...


TRAIN_ONLY = -1  # the `fold` of a row no validation part holds (the training side of a fixed split)


@dataclass(frozen=True)
class Split:
    """How a dataset is split for validation: `folds` are the validation parts (one model each)."""

    kind: str  # "k-fold" (made by the kit), "given folds" (a split column's fold numbers), "fixed"
    source: str  # where it comes from, in words
    folds: list[int]

    @property
    def n_folds(self) -> int:
        return len(self.folds)

    def describe(self) -> str:
        if self.kind == "fixed":
            return f"one fixed train/validation split from {self.source}: one model, no fold ensemble"
        if self.kind == "k-fold":
            return f"{self.n_folds} folds made by the kit ({self.source}): one model per fold"
        return f"{self.n_folds} given folds from {self.source}: one model per fold"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def kit_split(n_folds: int, seed: int, grouped: bool, kind: str) -> Split:
    """The split the kit makes when the data gives none; `kind`: how its folds are stratified."""
    how = f"{kind}{' group' if grouped else ''} K-fold, seed {seed}"
    return Split("k-fold", how, list(range(n_folds)))


def given_split(folds: np.ndarray, source: str) -> Split:
    """The split the data gives: its validation parts, fixed when there is one."""
    parts = sorted(int(f) for f in set(folds) if f != TRAIN_ONLY)
    return Split("fixed" if (folds == TRAIN_ONLY).any() else "given folds", source, parts)


def assign_folds(labels: pd.Series, groups: pd.Series | None, n_folds: int, seed: int) -> np.ndarray:
    """A fold index per row: stratified by label, and by group too when groups are given."""
    folds = np.full(len(labels), -1, dtype=int)
    x = np.zeros(len(labels))
    if groups is not None:
        splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
        splits = splitter.split(x, labels, groups)
    else:
        splits = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed).split(x, labels)
    for k, (_, val_idx) in enumerate(splits):
        folds[val_idx] = k
    return folds


def assign_multilabel_folds(
    targets: np.ndarray, groups: pd.Series | None, n_folds: int, seed: int
) -> np.ndarray:
    """A fold index per row, stratified over every class of (N, C) multi-hot targets by
    iterative-stratification's MultilabelStratifiedKFold (Sechidis et al.'s iterative stratification).

    With groups, the groups are what is split, each stratified by the union of its rows' labels, and every
    row takes its group's fold: no group spans two folds (the package has no group variant).
    """
    if groups is None:
        units, members = targets, np.arange(len(targets))
    else:
        codes, uniques = pd.factorize(groups.astype(str))
        units = np.zeros((len(uniques), targets.shape[1]), dtype=targets.dtype)
        np.maximum.at(units, codes, targets)
        members = codes
    splitter = MultilabelStratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    unit_folds = np.full(len(units), -1, dtype=int)
    for k, (_, val_idx) in enumerate(splitter.split(np.zeros(len(units)), units)):
        unit_folds[val_idx] = k
    return unit_folds[members]


def table_hash(table: pd.DataFrame, tag: str = "") -> str:
    """A hash of what decides the folds: ids, labels (a label-set task's sets) and groups, in order, and
    the task's fold tag when it has one (a multiclass table hashes as it always has)."""
    text = table[["id", "label", "group"]].astype(str).to_csv(index=False)
    if tag:
        text = f"task={tag}\n" + text + table["label_idx"].astype(str).str.cat(sep="\n")
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def load_or_make_folds(
    table: pd.DataFrame,
    n_folds: int,
    seed: int,
    use_groups: bool,
    folder: Path,
    task: FoldingTask,
    num_classes: int = 0,
) -> np.ndarray:
    """The persisted folds for this table, K, seed and task, made and saved first if missing or stale.

    The task stratifies (`Task.assign_folds`): multiclass rows by `label`, multilabel rows by their
    `label_idx` sets (num_classes wide).
    """
    stem = f"folds_k{n_folds}_seed{seed}" + ("_grouped" if use_groups else "")
    stem += f"_{task.fold_tag}" if task.fold_tag else ""
    csv_path, meta_path = folder / f"{stem}.csv", folder / f"{stem}.json"
    digest = table_hash(table, task.fold_tag)
    if meta_path.exists() and csv_path.exists() and json.loads(meta_path.read_text()).get("hash") == digest:
        saved = pd.read_csv(csv_path, dtype={"id": str})
        return saved.set_index("id").loc[table["id"].astype(str), "fold"].to_numpy()
    groups = table["group"] if use_groups else None
    folds = task.assign_folds(table, groups, n_folds, seed, num_classes)
    atomic_to_csv(
        pd.DataFrame({"id": table["id"], "label": table["label"], "group": table["group"], "fold": folds}),
        csv_path,
    )
    meta = {"hash": digest, "n_folds": n_folds, "seed": seed, "grouped": use_groups, "task": task.name}
    atomic_write_text(meta_path, json.dumps(meta, indent=2))
    return folds
