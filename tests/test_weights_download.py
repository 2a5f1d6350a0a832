"""`pretrained=True` downloads through huggingface_hub, for real, from a hub on 127.0.0.1 (HF_ENDPOINT): the
first run downloads into HF_HOME's cache with a progress bar, the second makes no request, and offline (or
with the endpoint unreachable) the run stops within seconds with the error that says what to do.

huggingface_hub reads HF_ENDPOINT, HF_HOME and HF_HUB_OFFLINE when it is imported, so each run is a child
process with its own environment.
"""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import safetensors.torch
import timm
import torch
from hub_server import COMMIT, serve

from helpers.paths import project_root

pytestmark = pytest.mark.slow  # each run is a fresh interpreter importing torch and timm

BACKBONE, REPO = "test_resnet", "timm/test_resnet.r160_in1k"
CHILD = """
import json, sys, time
import torch
from helpers.model import create_model
started = time.monotonic()
try:
    model = create_model("test_resnet", num_classes=1000, pretrained=True)
except FileNotFoundError as error:
    print(json.dumps({"error": str(error), "seconds": time.monotonic() - started}))
else:
    torch.save(model.state_dict(), sys.argv[1])
    print(json.dumps({"seconds": time.monotonic() - started}))
"""


def run_child(tmp_path: Path, hf_home: Path, endpoint: str, offline: bool = False) -> tuple[dict, str]:
    """create_model(pretrained=True) in a fresh interpreter: (its JSON line, its stderr); the model's state
    dict, when built, at tmp_path / 'state.pt'."""
    drop = {"HF_HUB_OFFLINE", "TQDM_DISABLE", "HF_HUB_DISABLE_PROGRESS_BARS", "HF_HUB_CACHE", "HF_TOKEN"}
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(
        HF_HOME=str(hf_home),
        HF_ENDPOINT=endpoint,
        PYTHONPATH=str(project_root()),
        NO_ALBUMENTATIONS_UPDATE="1",
        OMP_NUM_THREADS="1",
    )
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(tmp_path / "state.pt")],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stderr


@pytest.fixture(scope="module")
def served() -> dict[str, torch.Tensor]:
    """The weights the hub serves: a test_resnet with 1000 classes, as model.safetensors."""
    torch.manual_seed(0)
    return timm.create_model(BACKBONE, num_classes=1000).state_dict()


def safetensors_bytes(state: dict[str, torch.Tensor]) -> bytes:
    return safetensors.torch.save({k: v.contiguous() for k, v in state.items()})


def test_first_run_downloads_into_the_cache_and_the_second_makes_no_request(tmp_path, served):
    hf_home = tmp_path / "hf-home"
    with serve({(REPO, "model.safetensors"): safetensors_bytes(served)}) as hub:
        first, stderr = run_child(tmp_path, hf_home, hub.endpoint)
        assert "error" not in first, first["error"]
        snapshot = hf_home / "hub" / "models--timm--test_resnet.r160_in1k" / "snapshots" / COMMIT
        assert (snapshot / "model.safetensors").is_file()
        assert ("HEAD", f"hub:/{REPO}/resolve/main/model.safetensors") in hub.requests
        assert any(method == "GET" and path.startswith("cdn:/") for method, path in hub.requests)
        assert "model.safetensors" in stderr and "100%" in stderr, stderr  # the download's progress bar
        loaded = torch.load(tmp_path / "state.pt", weights_only=True)
        assert loaded.keys() == served.keys()
        assert all(torch.equal(loaded[k], served[k]) for k in served)

        seen = len(hub.requests)
        (tmp_path / "state.pt").unlink()
        second, _ = run_child(tmp_path, hf_home, hub.endpoint)
        assert "error" not in second, second["error"]
        assert len(hub.requests) == seen, hub.requests[seen:]
        loaded = torch.load(tmp_path / "state.pt", weights_only=True)
        assert all(torch.equal(loaded[k], served[k]) for k in served)


def test_offline_stops_within_seconds_naming_the_cache_and_the_ways_out(tmp_path, served):
    hf_home = tmp_path / "hf-home"
    with serve({(REPO, "model.safetensors"): safetensors_bytes(served)}) as hub:
        result, _ = run_child(tmp_path, hf_home, hub.endpoint, offline=True)
        assert hub.requests == []
    assert result["seconds"] < 5
    assert "HF_HUB_OFFLINE" in result["error"]
    assert str(hf_home / "hub") in result["error"]
    assert "weights_file=" in result["error"] and "pretrained=False" in result["error"]


def test_an_unreachable_endpoint_stops_within_seconds_without_retrying(tmp_path):
    with socket.socket() as closed:  # a port nothing listens on: connections are refused
        closed.bind(("127.0.0.1", 0))
        endpoint = f"http://127.0.0.1:{closed.getsockname()[1]}"
    result, _ = run_child(tmp_path, tmp_path / "hf-home", endpoint)
    assert result["seconds"] < 10
    assert f"{endpoint} cannot be reached" in result["error"]
    assert "weights_file=" in result["error"] and "pretrained=False" in result["error"]


def test_a_repo_without_the_safetensors_file_gives_the_bin_file(tmp_path, served):
    """timm's order: model.safetensors first, then the configured pytorch_model.bin."""
    buffer = io.BytesIO()
    torch.save(served, buffer)
    with serve({(REPO, "pytorch_model.bin"): buffer.getvalue()}) as hub:
        result, _ = run_child(tmp_path, tmp_path / "hf-home", hub.endpoint)
        assert "error" not in result, result["error"]
        heads = [path for method, path in hub.requests if method == "HEAD"]
        assert heads[0].endswith("/model.safetensors") and heads[-1].endswith("/pytorch_model.bin")
    loaded = torch.load(tmp_path / "state.pt", weights_only=True)
    assert all(torch.equal(loaded[k], served[k]) for k in served)
