"""Temperature scaling of the out-of-fold probabilities (04), and its use on the test probabilities (05).

One temperature T for the whole run (single-label task), fitted by minimising the log-loss of
softmax(log p / T) over the OOF rows. The logits are the logarithms of 04's TTA probabilities: they differ
from the model's logits by a constant per row, which softmax (and so temperature scaling) ignores. Dividing
by T never changes a row's argmax, so accuracy is unchanged and only the confidence moves. The fitted value
goes to the run's calibration.json with the checkpoint and views it was fitted on; 05 applies it to the
ensemble's mean probabilities when `calibrate` is on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax

from helpers.config import Config, ConfigError
from helpers.errors import MissingFileError
from helpers.reports import EnsemblePrediction, OofEvaluation, write_test_predictions
from helpers.run_folder import RunFolder, require_fitted_for
from helpers.tasks import task_for

ECE_BINS = (
    15  # equal-width confidence bins, as in Guo et al. (2017), "On Calibration of Modern Neural Networks"
)
TEMPERATURE_RANGE = (
    0.05,
    20.0,
)  # searched on a log scale; beyond these the model is degenerate, not miscalibrated
FLOOR = 1e-12  # probabilities clipped here before the log, so a zero stays finite


@dataclass(frozen=True)
class Calibration:
    """A run's fitted temperature, what it was fitted on, and the calibration error before and after."""

    temperature: float
    checkpoint: str
    tta_views: list[str]
    images: int
    ece_before: float
    ece_after: float
    log_loss_before: float
    log_loss_after: float

    def to_dict(self) -> dict:
        return asdict(self)


def apply_temperature(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log p / T) per row: the same argmax, sharper for T < 1, softer for T > 1."""
    logits = np.log(np.clip(probabilities, FLOOR, 1.0))
    return np.exp(log_softmax(logits / temperature, axis=1))


def _log_loss(labels: np.ndarray, probabilities: np.ndarray, temperature: float) -> float:
    logits = np.log(np.clip(probabilities, FLOOR, 1.0)) / temperature
    return float(-log_softmax(logits, axis=1)[np.arange(len(labels)), labels].mean())


def fit_temperature(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """The temperature that minimises the mean log-loss of the scaled probabilities against the labels."""
    low, high = np.log(TEMPERATURE_RANGE)
    found = minimize_scalar(
        lambda log_t: _log_loss(labels, probabilities, float(np.exp(log_t))),
        bounds=(low, high),
        method="bounded",
        options={"xatol": 1e-5},
    )
    return float(np.exp(found.x))


def reliability_bins(
    labels: np.ndarray, probabilities: np.ndarray, bins: int = ECE_BINS
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per equal-width confidence bin: mean confidence, accuracy and the number of rows (top-label)."""
    confidence = probabilities.max(1)
    correct = (probabilities.argmax(1) == labels).astype(float)
    which = np.clip((confidence * bins).astype(int), 0, bins - 1)
    counts = np.bincount(which, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(which, confidence, bins) / counts
        accuracy = np.bincount(which, correct, bins) / counts
    return mean_conf, accuracy, counts


def expected_calibration_error(labels: np.ndarray, probabilities: np.ndarray, bins: int = ECE_BINS) -> float:
    """Top-label ECE: the row-weighted mean gap between confidence and accuracy over the bins."""
    mean_conf, accuracy, counts = reliability_bins(labels, probabilities, bins)
    filled = counts > 0
    return float(np.sum(counts[filled] * np.abs(mean_conf[filled] - accuracy[filled])) / counts.sum())


def calibrate(
    labels: np.ndarray, probabilities: np.ndarray, checkpoint: str, views: Sequence[str]
) -> Calibration:
    """Fit the temperature on out-of-fold probabilities and measure ECE and log-loss before and after."""
    temperature = fit_temperature(labels, probabilities)
    scaled = apply_temperature(probabilities, temperature)
    return Calibration(
        temperature=temperature,
        checkpoint=checkpoint,
        tta_views=list(views),
        images=len(labels),
        ece_before=expected_calibration_error(labels, probabilities),
        ece_after=expected_calibration_error(labels, scaled),
        log_loss_before=_log_loss(labels, probabilities, 1.0),
        log_loss_after=_log_loss(labels, probabilities, temperature),
    )


def show_reliability(labels: np.ndarray, probabilities: np.ndarray, calibration: Calibration) -> Figure:
    """Reliability diagrams before and after temperature scaling: accuracy against confidence per bin, with
    the diagonal a perfectly calibrated model would follow and each bin's share of the rows below."""
    fig, axes = plt.subplots(
        2, 2, figsize=(9, 5), sharex=True, gridspec_kw={"height_ratios": [3, 1]}, squeeze=False
    )
    panels = (
        ("before", probabilities, calibration.ece_before),
        (
            f"after (T = {calibration.temperature:.3f})",
            apply_temperature(probabilities, calibration.temperature),
            calibration.ece_after,
        ),
    )
    edges = np.linspace(0, 1, ECE_BINS + 1)
    width = 1 / ECE_BINS
    for column, (title, p, ece) in enumerate(panels):
        mean_conf, accuracy, counts = reliability_bins(labels, p)
        filled = counts > 0
        top, bottom = axes[0, column], axes[1, column]
        top.bar(
            edges[:-1][filled],
            accuracy[filled],
            width=width,
            align="edge",
            color="tab:blue",
            edgecolor="white",
            label="accuracy",
        )
        gap = (mean_conf - accuracy)[filled]
        top.bar(
            edges[:-1][filled],
            np.abs(gap),
            bottom=np.minimum(accuracy, mean_conf)[filled],
            width=width,
            align="edge",
            fill=False,
            hatch="//",
            edgecolor="tab:red",
            label="gap to confidence",
        )
        top.plot([0, 1], [0, 1], "k--", lw=1)
        top.set(ylim=(0, 1), ylabel="accuracy", title=f"{title}: ECE {ece:.4f}")
        top.legend(fontsize=7, loc="upper left")
        bottom.bar(edges[:-1], counts / counts.sum(), width=width, align="edge", color="tab:gray")
        bottom.set(xlim=(0, 1), xlabel="confidence (top class)", ylabel="share")
    fig.tight_layout()
    return fig


def calibrate_run(run: RunFolder, cfg: Config, labels: np.ndarray, probabilities: np.ndarray) -> Calibration:
    """04's step: fit the temperature on the OOF probabilities and write it to the run's calibration.json."""
    calibration = calibrate(labels, probabilities, cfg.checkpoint, cfg.tta_views)
    run.write_calibration(calibration.to_dict())
    return calibration


def calibrate_oof(run: RunFolder, cfg: Config, oof: OofEvaluation) -> Figure | None:
    """04's calibration step: fit, save and print the temperature of the OOF probabilities with TTA and
    return the reliability figure; for a task that is not calibrated, print why and return None."""
    if skipped := oof.task.calibration_skipped:
        print(f"calibration skipped: {skipped}")
        return None
    calibration = calibrate_run(run, cfg, oof.labels, oof.tta)
    print(
        f"T = {calibration.temperature:.3f}: ECE {calibration.ece_before:.4f} -> {calibration.ece_after:.4f}, "
        f"log-loss {calibration.log_loss_before:.4f} -> {calibration.log_loss_after:.4f}; saved in "
        f"{run.calibration}"
    )
    return show_reliability(oof.labels, oof.tta, calibration)


def run_temperature(run: RunFolder, cfg: Config) -> float:
    """The temperature 04 fitted for this run, refusing one fitted on another checkpoint or other views:
    those give other probabilities, which the temperature was not fitted on."""
    if skipped := task_for(cfg).calibration_skipped:
        raise ConfigError(f"calibrate=True: {skipped}; set calibrate=False")
    if not run.calibration.exists():
        raise MissingFileError(
            f"calibrate=True, but {run.calibration} does not exist: run notebooks/04_evaluate.ipynb for run "
            f"{run.name!r} first (it fits the temperature), or set calibrate=False"
        )
    saved = Calibration(**run.read_calibration())
    require_fitted_for(run.calibration, "fitted", saved.checkpoint, saved.tta_views, cfg)
    if cfg.ensemble_runs:
        raise ConfigError(
            f"calibrate=True with ensemble_runs={cfg.ensemble_runs}: the temperature of {run.name!r} was fitted "
            "on that run's own out-of-fold predictions, not on this ensemble's; set calibrate=False or drop "
            "ensemble_runs"
        )
    return saved.temperature


def write_calibrated_predictions(
    run: RunFolder, cfg: Config, sample: pd.DataFrame, predicted: EnsemblePrediction
) -> tuple[pd.DataFrame, np.ndarray]:
    """05's step with calibrate=True: submission.csv and test_probabilities.csv again, from the ensemble's
    probabilities scaled by the run's temperature (same argmax); returns the submission and the
    probabilities."""
    probabilities = apply_temperature(predicted.probabilities, run_temperature(run, cfg))
    return write_test_predictions(run, cfg, sample, predicted, probabilities), probabilities
