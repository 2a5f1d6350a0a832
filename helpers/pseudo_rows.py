"""Pseudo-labelled images as training rows: what a run's saved pseudo_labels.csv adds to each fold.

01 chooses the images and saves them (helpers.pseudo_labels); training reads that table back, so a resumed
or later fold trains on exactly the images the run chose. They join the training side of every fold and
never a validation fold: `with_pseudo_labels` extends a fold's training rows only, and each pseudo row
carries the fold of no validation part (TRAIN_ONLY). With `pseudo_soft` their targets are the source's
probabilities (helpers.targets.SOFT_TARGET), and every row of that fold trains on dense targets.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from helpers.config import Config, ConfigError
from helpers.dataset import DataInfo
from helpers.errors import MissingFileError
from helpers.folds import TRAIN_ONLY
from helpers.run_folder import RunFolder
from helpers.targets import SOFT_TARGET
from helpers.tasks import task_named

PROBABILITY_PREFIX = "prob_"  # pseudo_labels.csv: the source's probability of each class


def probability_columns(classes: list[str]) -> list[str]:
    return [f"{PROBABILITY_PREFIX}{c}" for c in classes]


def pseudo_training_rows(cfg: Config, info: DataInfo, run: RunFolder) -> pd.DataFrame:
    """The run's saved pseudo-labelled images as training rows (id, path, label, label_idx, fold and, with
    pseudo_soft, soft_target); an empty frame when the run takes none."""
    if not cfg.pseudo_source:
        return pd.DataFrame()
    if not run.pseudo_labels.exists():
        raise MissingFileError(
            f"{run.pseudo_labels} does not exist: run notebooks/01_data.ipynb for this run with "
            f"pseudo_source={cfg.pseudo_source!r} first; it chooses and saves the pseudo-labels"
        )
    table = run.read_pseudo_labels()
    sources = set(table["source"])
    if sources - {cfg.pseudo_source}:
        raise ConfigError(
            f"{run.pseudo_labels} holds pseudo-labels from {sorted(sources)}, and pseudo_source is "
            f"{cfg.pseudo_source!r}: run 01 for this run again to choose them from {cfg.pseudo_source!r}"
        )
    mixing = cfg.mixup > 0 or cfg.cutmix > 0
    if cfg.pseudo_soft and mixing and not task_named(info.task).mixes_multi_label:
        raise ConfigError(
            "pseudo_soft=True with mixup or cutmix: timm's Mixup mixes class indices only for a multiclass "
            "task; set pseudo_soft=False (hard pseudo-labels) or mixup=0 and cutmix=0"
        )
    rows = pd.DataFrame(
        {
            "id": table["id"].to_numpy(),
            "path": table["path"].to_numpy(),
            "label": table["label"].to_numpy(),
            "label_idx": table["label_idx"].to_numpy(),
            "fold": TRAIN_ONLY,
        }
    )
    if cfg.pseudo_soft:
        probabilities = table[probability_columns(info.classes)].to_numpy(np.float32)
        rows[SOFT_TARGET] = list(probabilities)
    return rows


def with_pseudo_labels(train_rows: pd.DataFrame, pseudo: pd.DataFrame) -> pd.DataFrame:
    """A fold's training rows with the pseudo-labelled rows after them; with soft targets the labelled
    rows get None in that column (they train on their labels)."""
    if pseudo.empty:
        return train_rows
    if SOFT_TARGET in pseudo:
        train_rows = train_rows.assign(**{SOFT_TARGET: None})
    return pd.concat([train_rows, pseudo], ignore_index=True)
