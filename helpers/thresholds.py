"""A multilabel run's decision thresholds: tuned by 04 on the out-of-fold probabilities, saved in the
run's thresholds.json, and used by 05 to turn test probabilities into label sets.

Three candidates are kept: 0.5, one global threshold (best micro-F1) and one per class (each class's best
F1), all from helpers.multilabel_metrics. 05 uses the per-class ones (`USED`). They were tuned on the
probabilities of one checkpoint kind and TTA views; other ones give other probabilities, so 05 refuses
them, as it refuses a temperature fitted on other probabilities.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from helpers.config import Config, ConfigError
from helpers.errors import MissingFileError
from helpers.multilabel_metrics import (
    DEFAULT_THRESHOLD,
    OPTIMISTIC,
    tune_class_thresholds,
    tune_global_threshold,
)
from helpers.run_folder import RunFolder, require_fitted_for

USED = "per_class"  # the thresholds 05 applies


@dataclass(frozen=True)
class TunedThresholds:
    """What thresholds.json holds: the candidates, what they were tuned on, and the caveat."""

    classes: list[str]
    default: float
    global_threshold: float
    per_class: dict[str, float]
    used: str
    checkpoint: str
    tta_views: list[str]
    images: int
    note: str = OPTIMISTIC

    def candidates(self) -> dict[str, float | np.ndarray]:
        """The three sets of thresholds by display name, for the scores table."""
        return {
            f"{self.default:g}": self.default,
            f"global {self.global_threshold:g}": self.global_threshold,
            "per class": self.class_array(),
        }

    def class_array(self) -> np.ndarray:
        """The per-class thresholds in class order."""
        return np.array([self.per_class[c] for c in self.classes])

    def to_dict(self) -> dict:
        return asdict(self)


def tune_thresholds(
    targets: np.ndarray,
    probabilities: np.ndarray,
    classes: Sequence[str],
    checkpoint: str,
    views: Sequence[str],
) -> TunedThresholds:
    """The three candidates for out-of-fold multi-hot targets and their probabilities."""
    per_class = tune_class_thresholds(targets, probabilities)
    return TunedThresholds(
        classes=list(classes),
        default=DEFAULT_THRESHOLD,
        global_threshold=tune_global_threshold(targets, probabilities),
        per_class={c: float(t) for c, t in zip(classes, per_class, strict=True)},
        used=USED,
        checkpoint=checkpoint,
        tta_views=list(views),
        images=len(targets),
    )


def save_thresholds(run: RunFolder, thresholds: TunedThresholds) -> None:
    run.write_thresholds(thresholds.to_dict())


def run_thresholds(run: RunFolder, cfg: Config, classes: Sequence[str]) -> TunedThresholds:
    """The thresholds 04 tuned for this run, for 05: refused when tuned on another checkpoint, other TTA
    views or other classes, and missing when 04 has not run."""
    if not run.thresholds.exists():
        raise MissingFileError(
            f"{run.thresholds} does not exist: a multilabel run's label sets need the thresholds 04 tunes; "
            f"run notebooks/04_evaluate.ipynb for run {run.name!r} first"
        )
    saved = TunedThresholds(**run.read_thresholds())
    require_fitted_for(run.thresholds, "tuned", saved.checkpoint, saved.tta_views, cfg)
    if saved.classes != list(classes):
        raise ConfigError(
            f"{run.thresholds} is for classes {saved.classes}, the models predict {list(classes)}"
        )
    return saved
