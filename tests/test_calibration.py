"""Temperature scaling: the fit recovers a known temperature, ECE falls, argmax stays; 05 applies it."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.special import softmax

from helpers.calibration import (
    apply_temperature,
    calibrate,
    calibrate_run,
    expected_calibration_error,
    fit_temperature,
    run_temperature,
    show_reliability,
    write_calibrated_predictions,
)
from helpers.config import Config
from helpers.inference import Prediction
from helpers.reports import EnsemblePrediction
from helpers.run_folder import RunFolder
from helpers.tasks import SingleLabel

CLASSES = ["a", "b", "c", "d"]


def overconfident(n: int = 4000, true_temperature: float = 2.0, seed: int = 0):
    """Labels drawn from softmax(z) (calibrated), and the probabilities softmax(z * T): overconfident by T."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 2.0, size=(n, len(CLASSES)))
    calibrated = softmax(logits, axis=1)
    labels = np.array([rng.choice(len(CLASSES), p=p) for p in calibrated])
    return labels, softmax(logits * true_temperature, axis=1)


def test_fit_recovers_the_temperature_and_lowers_the_ece():
    labels, probabilities = overconfident(true_temperature=2.0)
    assert fit_temperature(labels, probabilities) == pytest.approx(2.0, rel=0.08)
    result = calibrate(labels, probabilities, "best_score", ["identity"])
    assert result.ece_after < result.ece_before / 3
    assert result.log_loss_after < result.log_loss_before


def test_an_underconfident_model_gets_a_temperature_below_one():
    labels, probabilities = overconfident(true_temperature=0.5, seed=1)
    assert fit_temperature(labels, probabilities) == pytest.approx(0.5, rel=0.08)


def test_scaling_changes_the_probabilities_and_keeps_the_argmax():
    _, probabilities = overconfident(n=500)
    scaled = apply_temperature(probabilities, 1.7)
    np.testing.assert_allclose(scaled.sum(1), 1.0, atol=1e-9)
    assert np.array_equal(scaled.argmax(1), probabilities.argmax(1))
    assert np.abs(scaled - probabilities).max() > 0.05


def test_ece_of_a_hand_computed_case():
    # two rows in bin 0.9-0.96 (both right: gap 0.1 at confidence 0.9) and two at 0.6 (one right: gap 0.1)
    probabilities = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.6, 0.4]])
    labels = np.array([0, 0, 0, 1])
    assert expected_calibration_error(labels, probabilities) == pytest.approx(0.1)


def test_reliability_diagram_draws_before_and_after(outputs):
    labels, probabilities = overconfident(n=300)
    result = calibrate(labels, probabilities, "best_score", ["identity"])
    fig = show_reliability(labels, probabilities, result)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles[0].startswith("before: ECE") and titles[1].startswith(
        f"after (T = {result.temperature:.3f})"
    )


@pytest.fixture
def calibrated_run(outputs) -> tuple[Config, RunFolder]:
    cfg = Config(run_name="cal", backbone="test_resnet", task="multiclass")
    run = RunFolder.of(cfg).create()
    labels, probabilities = overconfident(n=1000)
    calibrate_run(run, cfg, labels, probabilities)
    return cfg, run


def ensemble(n: int = 20, seed: int = 3) -> EnsemblePrediction:
    _, probabilities = overconfident(n=n, seed=seed)
    rows = pd.DataFrame({"id": [f"t{i}" for i in range(n)]})
    return EnsemblePrediction(
        rows, CLASSES, Prediction(probabilities[None], ["identity"], np.arange(n)), 1, 1.0, SingleLabel()
    )


def test_05_writes_calibrated_probabilities_with_the_same_argmax(calibrated_run):
    cfg, run = calibrated_run
    predicted = ensemble()
    sample = pd.DataFrame({"id": predicted.rows["id"][::-1], **{c: 0.0 for c in CLASSES}})
    submission, probabilities = write_calibrated_predictions(run, cfg, sample, predicted)
    written = run.read_test_probabilities()
    np.testing.assert_allclose(written.to_numpy(), probabilities, rtol=1e-6)
    assert np.abs(written.to_numpy() - predicted.probabilities).max() > 0.05  # the probabilities changed
    assert np.array_equal(
        written.to_numpy().argmax(1), predicted.probabilities.argmax(1)
    )  # the argmax did not
    by_id = submission.set_index("id")[CLASSES].loc[written.index]
    np.testing.assert_allclose(by_id.to_numpy(), written.to_numpy(), rtol=1e-6)


def test_05_with_a_label_column_submits_the_same_classes(calibrated_run):
    cfg, run = calibrated_run
    predicted = ensemble()
    sample = pd.DataFrame({"id": predicted.rows["id"], "label": ""})
    submission, _ = write_calibrated_predictions(run, cfg, sample, predicted)
    assert list(submission["label"]) == list(np.asarray(CLASSES)[predicted.probabilities.argmax(1)])


def test_05_refuses_a_temperature_it_was_not_fitted_for(calibrated_run):
    cfg, run = calibrated_run
    with pytest.raises(ValueError, match="fitted on checkpoint='best_score'"):
        run_temperature(run, cfg.replace(checkpoint="last"))
    with pytest.raises(ValueError, match="ensemble_runs"):
        run_temperature(run, cfg.replace(ensemble_runs=["other"]))
    with pytest.raises(ValueError, match="temperature scaling is for multiclass runs"):
        run_temperature(run, cfg.replace(task="multilabel"))
    run.calibration.unlink()
    with pytest.raises(FileNotFoundError, match="04_evaluate"):
        run_temperature(run, cfg)
