"""What a row's target is, for either task: the one place that turns a prepared table's labels into the
arrays the loss, the metrics and the submission read, and model outputs into probabilities.

A prepared table holds `label` (the label as written: a class name, or the label set joined by the run's
`label_sep`) and `label_idx`: the class index (multiclass) or the sorted class indices of the set joined
by `INDEX_SEP` (multilabel; "" for an empty set). Everything else asks this module for arrays.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Literal

import numpy as np
import pandas as pd
import torch

Task = Literal["multiclass", "multilabel"]
TASKS: tuple[Task, ...] = ("multiclass", "multilabel")
INDEX_SEP = " "  # between the class indices of a multilabel row's `label_idx`


def encode_label_set(indices: Iterable[int]) -> str:
    """A multilabel row's `label_idx`: its class indices, sorted and joined."""
    return INDEX_SEP.join(str(i) for i in sorted({int(i) for i in indices}))


def decode_label_set(value: object) -> list[int]:
    """The class indices of a multilabel row's `label_idx` (a CSV round trip may turn "3" into 3)."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return []
    text = str(int(value)) if isinstance(value, (int, np.integer, float)) else str(value)
    return [int(part) for part in text.split()]


def multi_hot(index_sets: Sequence[Sequence[int]], num_classes: int) -> np.ndarray:
    """An (N, C) float32 array of 0/1 from each row's class indices."""
    out = np.zeros((len(index_sets), num_classes), dtype=np.float32)
    for row, indices in enumerate(index_sets):
        out[row, list(indices)] = 1.0
    return out


def target_array(rows: pd.DataFrame, num_classes: int, task: Task) -> np.ndarray:
    """The rows' targets: int64 class indices (N,) for multiclass, float32 multi-hot (N, C) for multilabel."""
    if task == "multiclass":
        return rows["label_idx"].to_numpy(dtype=np.int64)
    return multi_hot([decode_label_set(v) for v in rows["label_idx"]], num_classes)


def to_probabilities(logits: torch.Tensor, task: Task) -> torch.Tensor:
    """Softmax over the classes (multiclass) or a sigmoid per class (multilabel)."""
    return logits.softmax(dim=1) if task == "multiclass" else logits.sigmoid()


def task_of(resolved: str) -> Task:
    """A run's task from its config's `task`, which 01 resolves before anything trains."""
    if resolved not in TASKS:
        raise ValueError(
            f"task={resolved!r} is not resolved: 01_data turns 'auto' into one of {TASKS} and saves it in the "
            "run's config.json; run 01_data for this run first"
        )
    return resolved  # type: ignore[return-value]
