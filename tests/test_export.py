"""ONNX export: a dynamic batch, the preprocessing in the graph and beside the file, parity with torch."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import onnxruntime
import pandas as pd
import pytest
import torch
from conftest import write_image
from train_fixtures import tiny_config

import helpers.export as export
from helpers.checkpoints import load_model
from helpers.dataset import prepare_dataset
from helpers.export import PARITY_ATOL, ParityError, PixelsToProbabilities, export_run, main
from helpers.model import data_config_for
from helpers.run_folder import RunFolder
from helpers.tasks import SingleLabel
from helpers.train import train_fold

CPU = torch.device("cpu")
pytestmark = pytest.mark.slow  # each test trains a fold and exports it (~10 s)


@pytest.fixture
def trained(outputs, csv_dataset, one_thread) -> RunFolder:
    """A tiny run with fold 0 trained and a test folder of 10 images of another size (20x24 px)."""
    rng = np.random.default_rng(5)
    ids = [f"t{i}" for i in range(10)]
    for i in ids:
        write_image(
            csv_dataset / "test_image" / f"{i}.jpg", rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
        )
    pd.DataFrame({"id": ids, "label": "cat"}).to_csv(csv_dataset / "sample_submission.csv", index=False)
    cfg = tiny_config(csv_dataset, run_name="onnx")
    run = RunFolder.of(cfg).create()
    info = prepare_dataset(cfg, run)
    run.write_config(cfg)
    train_fold(cfg, info, 0, run, CPU)
    return run


def readme_preprocessing(path: Path, size: int) -> np.ndarray:
    """What the README tells a user without the kit to do: read as RGB, resize, HWC -> CHW, keep uint8."""
    image = cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    image = cv2.resize(image, (size, size), interpolation=cv2.INTER_LINEAR)
    return np.ascontiguousarray(image.transpose(2, 0, 1))


def test_export_matches_torch_for_any_batch_and_documents_the_input(trained):
    (exported,) = export_run(trained, "best_score", images=10)
    assert exported.onnx == trained.onnx_model(0, "best_score") and exported.onnx.exists()
    assert exported.max_abs_diff <= PARITY_ATOL
    cfg = trained.read_config()
    described = json.loads(trained.onnx_description(0, "best_score").read_text())
    assert described["input"]["shape"] == ["batch", 3, cfg.img_size, cfg.img_size]
    assert described["input"]["dtype"] == "uint8" and described["input"]["channel_order"] == "RGB"
    mean, std = data_config_for(cfg.backbone)["mean"], data_config_for(cfg.backbone)["std"]
    assert described["input"]["mean"] == list(mean) and described["input"]["std"] == list(std)
    assert described["classes"] == ["cat", "dog", "fox"]
    assert described["parity"] == {**described["parity"], "images": 10, "atol": PARITY_ATOL}

    # without the kit: the README's preprocessing and onnxruntime, against the checkpoint in torch
    paths = sorted((Path(cfg.data_dir) / "test_image").glob("*.jpg"))
    batch = np.stack([readme_preprocessing(p, cfg.img_size) for p in paths])
    model, _ = load_model(trained.checkpoint(0, "best_score"))
    with torch.no_grad():
        expected = PixelsToProbabilities(model, mean, std, SingleLabel())(torch.from_numpy(batch)).numpy()
    session = onnxruntime.InferenceSession(str(exported.onnx), providers=["CPUExecutionProvider"])
    for size in (1, 3, len(batch)):
        got = session.run(["probabilities"], {"image": batch[:size]})[0]
        assert got.shape == (size, 3)
        np.testing.assert_allclose(got, expected[:size], atol=PARITY_ATOL)


def test_a_model_that_does_not_match_torch_fails_loudly_and_leaves_no_file(trained, monkeypatch):
    real = export.export_model

    def export_a_different_model(wrapped, example, path):
        with torch.no_grad():
            changed = PixelsToProbabilities(wrapped.model, [0.2, 0.2, 0.2], [0.3, 0.3, 0.3], wrapped.task)
        real(changed.eval(), example, path)

    export_run(trained, "best_score", images=10)  # a good export first: its description must not outlive it
    monkeypatch.setattr(export, "export_model", export_a_different_model)
    with pytest.raises(ParityError, match="differ from torch's by up to"):
        export_run(trained, "best_score", images=10)
    assert not trained.onnx_model(0, "best_score").exists()
    assert not trained.onnx_description(0, "best_score").exists()


def test_a_multilabel_run_exports_sigmoids_and_says_so(trained):
    """The same fold model described as a multilabel run's: one sigmoid per class, in the graph and in its
    description."""
    cfg = trained.read_config().replace(task="multilabel")
    trained.write_config(cfg)
    (exported,) = export_run(trained, "best_score", images=10)
    described = json.loads(exported.description.read_text())
    assert described["task"] == "multilabel" and "sigmoid" in described["output"]["meaning"]
    paths = sorted((Path(cfg.data_dir) / "test_image").glob("*.jpg"))
    batch = np.stack([readme_preprocessing(p, cfg.img_size) for p in paths])
    model, _ = load_model(trained.checkpoint(0, "best_score"))
    mean, std = data_config_for(cfg.backbone)["mean"], data_config_for(cfg.backbone)["std"]
    with torch.no_grad():
        logits = model((torch.from_numpy(batch).float() - 255 * torch.tensor(mean).view(1, 3, 1, 1))
                       / (255 * torch.tensor(std).view(1, 3, 1, 1)))  # fmt: skip
    session = onnxruntime.InferenceSession(str(exported.onnx), providers=["CPUExecutionProvider"])
    got = session.run(["probabilities"], {"image": batch})[0]
    np.testing.assert_allclose(got, logits.sigmoid().numpy(), atol=PARITY_ATOL)
    assert not np.allclose(got.sum(1), 1, atol=1e-3)


def test_command_line_exports_every_trained_fold(trained, capsys):
    assert main(["--run-name", trained.name, "--images", "4"]) == 0
    assert trained.onnx_model(0, "best_score").exists()
    assert "max_abs_diff" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["--run-name", "no_such_run"])
