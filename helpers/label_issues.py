"""Likely label errors from the out-of-fold probabilities, by confident learning (cleanlab).

Out-of-fold probabilities come from a model that never trained on the row, which is what confident
learning needs: cleanlab's `find_label_issues` flags the rows whose given label the model's per-class
thresholds contradict, and `get_label_quality_scores` (self-confidence: the probability of the given
label) ranks them, lowest first. The multilabel task goes through cleanlab's multi-label variants
(`find_label_issues(..., multi_label=True)` and `multilabel_classification.get_label_quality_scores`,
which aggregate each class's self-confidence): a row is flagged when some class of its set looks wrong or
missing, and the suggestion is the set the run's thresholds predict. Which variant is the task object's
choice (helpers.tasks.Task.label_quality); this module ranks, writes and shows.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from helpers.config import ConfigError
from helpers.images import read_image
from helpers.plots import show_images
from helpers.run_folder import RunFolder
from helpers.tasks import Task

COLUMNS = ["id", "given", "suggested", "score"]
NONE = "(none)"  # how an empty label set reads in the table and the titles
SHORT_TITLE = 14  # given and suggested longer than this together (label sets) take a line each


def rank_label_issues(
    task: Task,
    ids: Sequence[str],
    targets: np.ndarray,
    probabilities: np.ndarray,
    decided: np.ndarray,
    classes: Sequence[str],
    sep: str = " ",
) -> pd.DataFrame:
    """Every row with its given label, the suggestion (the task's decision: the most probable class, or the
    set the run's thresholds predict; "(none)" for an empty set), its label-quality score (lower: more
    likely mislabelled) and whether cleanlab flags it as an issue, lowest score first."""
    missing = [classes[c] for c in np.flatnonzero(task.class_counts(targets, len(classes)) == 0)]
    if missing:
        raise ConfigError(
            f"classes {missing} have no out-of-fold row: confident learning needs every class among the "
            "rows; evaluate more folds (04 covers the folds 03 trained: set folds=[] in 03)"
        )
    scores, flagged = task.label_quality(targets, probabilities)
    table = pd.DataFrame(
        {
            "id": np.asarray(ids, dtype=object),
            "given": [t or NONE for t in task.label_texts(targets, classes, sep)],
            "suggested": [t or NONE for t in task.label_texts(decided, classes, sep)],
            "score": scores,
            "issue": flagged,
        }
    )
    return table.sort_values("score", kind="stable").reset_index(drop=True)


def precision_at_k(ranked_ids: Sequence[str], truly_wrong: set[str], k: int) -> float:
    """The share of the k top-ranked ids that are truly mislabelled."""
    return len(set(list(ranked_ids)[:k]) & truly_wrong) / k


def write_label_issues(run: RunFolder, ranked: pd.DataFrame) -> pd.DataFrame:
    """label_issues.csv: the flagged rows (id, given, suggested, score), most likely wrong first, to review
    and, e.g., drop; returns them."""
    issues = ranked[ranked["issue"]][COLUMNS].reset_index(drop=True)
    run.write_label_issues(issues)
    return issues


def show_label_issues(issues: pd.DataFrame, paths: pd.Series, n: int = 16) -> Figure:
    """The n most likely mislabelled images (or a line saying there are none), titled 'given → suggested' with their score; `paths` maps
    each id to its image file."""
    top = issues.head(n)
    if top.empty:
        fig, ax = plt.subplots(figsize=(5, 1))
        ax.text(0.5, 0.5, "no likely label errors among the out-of-fold rows", ha="center", va="center")
        ax.axis("off")
        return fig
    images = [read_image(paths[i]) for i in top["id"]]
    titles = [
        f"{g} → {s}\nscore {v:.3f}" if len(f"{g}{s}") <= SHORT_TITLE else f"{g}\n→ {s}\nscore {v:.3f}"
        for g, s, v in zip(top["given"], top["suggested"], top["score"], strict=True)
    ]
    return show_images(images, titles, colors=["tab:red"] * len(top))
