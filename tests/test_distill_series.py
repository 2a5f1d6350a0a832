"""The series with a distilled, pseudo-labelled student: 01, 03 and 05 under papermill and nbval, with a
teacher run of the same digits and folds (trained here, with its test probabilities as 05 writes them)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from notebook_runs import TINY, prepare_series, run_nbval

from helpers.config import Config
from helpers.dataset import data_dir_of, prepare_dataset
from helpers.holdout import checked_test_images, sample_submission
from helpers.inference import ensemble_members
from helpers.reports import predict_test, write_test_predictions
from helpers.run_folder import RunFolder
from helpers.settings import resolve_settings
from helpers.tables import detect_layout, list_test_images
from helpers.train import train_folds


def _teacher(name: str) -> RunFolder:
    """A teacher as 01, 03 and 05 leave it: fold 0 trained, its test probabilities written."""
    cfg = Config(**{**TINY, "backbone": "test_efficientnet", "img_size": 40, "run_name": name})
    run = RunFolder.of(cfg).create()
    info = prepare_dataset(cfg, run)
    cfg, _ = resolve_settings(cfg, info)
    run.write_config(cfg)
    train_folds(cfg, info, run)
    data_dir = data_dir_of(cfg)
    layout = detect_layout(cfg, data_dir)
    test = checked_test_images(list_test_images(cfg, data_dir, layout), cfg)
    predicted = predict_test(ensemble_members(cfg, run), test, ["identity"])
    write_test_predictions(
        run, cfg, sample_submission(cfg, data_dir, layout, test, predicted.classes), predicted
    )
    return run


@pytest.mark.slow
def test_a_distilled_pseudo_labelled_series_under_nbval(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    outputs = tmp_path / "outputs"
    monkeypatch.setenv("KIT_OUTPUTS", str(outputs))
    _teacher("teacher")
    student = {
        **TINY,
        "run_name": "student",
        "teachers": ["teacher"],
        "pseudo_source": "teacher",
        "pseudo_threshold": 0.5,
    }
    prepared = tmp_path / "notebooks"
    prepare_series(prepared, student, names=["01_data", "03_train", "05_inference"])
    result = run_nbval(prepared, outputs, tmp_path)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    run = RunFolder(outputs / "runs" / "student")
    metrics = run.read_metrics()
    assert metrics["teacher_seconds"].gt(0).all()
    pseudo = run.read_pseudo_labels()
    assert len(pseudo) > 0 and set(pseudo["source"]) == {"teacher"}
    assert (run.plots / "pseudo_least_confident.png").stat().st_size > 0
    assert len(pd.read_csv(run.submission)) == len(pd.read_csv(RunFolder.named("teacher").submission))
