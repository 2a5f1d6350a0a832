"""How a prepared table writes a row's labels, for either task: the task names and the label-set encoding.

A prepared table holds `label` (the label as written: a class name, or the label set joined by the run's
`label_sep`) and `label_idx`: the class index (multiclass) or the sorted class indices of the set joined
by `INDEX_SEP` (multilabel; "" for an empty set). The run's task object (helpers.tasks) turns them into
the arrays the loss, the metrics and the submission read.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Literal

import numpy as np

TaskName = Literal["multiclass", "multilabel"]
TASKS: tuple[TaskName, ...] = ("multiclass", "multilabel")
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


# a prepared table's optional column of soft targets: a probability row (C,) for a pseudo-labelled image
# trained on its source's probabilities (helpers.pseudo_rows), None for a row trained on its labels
SOFT_TARGET = "soft_target"


def with_soft_targets(dense: np.ndarray, soft: Sequence[object]) -> np.ndarray:
    """Dense (N, C) float targets with each row that has a soft target replaced by it."""
    out = np.asarray(dense, dtype=np.float32).copy()
    for row, value in enumerate(soft):
        if value is not None and not (isinstance(value, float) and np.isnan(value)):
            out[row] = np.asarray(value, dtype=np.float32)
    return out
