"""Data-parallel training with helpers.distributed: two CPU processes on gloo, launched by torchrun.

One torchrun launch trains two runs through a test-only probe (below) that calls the CLI's own functions
and records what each process holds at the end; a single-process CLI run trains alongside for comparison.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import random_rgb, write_image
from train_fixtures import assert_same_runs, child_env, tiny_config

import helpers.train as train_mod
from helpers.augment import InputPrep
from helpers.checkpoints import load_model
from helpers.dataset import prepare_dataset
from helpers.distributed import REFUSED
from helpers.loaders import build_loader
from helpers.precision import Precision
from helpers.run_folder import RunFolder
from helpers.tasks import SingleLabel
from helpers.train import evaluate, fold_rows, train_fold

# Trains the runs named on its command line in this process (rank RANK of WORLD_SIZE), through the CLI's
# own start / train_run / stop. Test-only hooks around helpers.train: every epoch trained is appended to
# trained.log, each process's final weights (model and EMA) and its last validation share and gathered
# indices are saved under PROBE_DIR/<run>/, and with PAUSE set, rank 0 sleeps once a `last` checkpoint is
# written (after marking `paused`) so the test can kill the processes at a known point.
PROBE = textwrap.dedent(
    """
    import json
    import os
    import sys
    import time
    from pathlib import Path

    import torch

    import helpers.train as train
    from helpers import distributed
    from helpers.checkpoints import plain_state_dict

    probe, rank = Path(os.environ["PROBE_DIR"]), int(os.environ.get("RANK", "0"))
    pause = float(os.environ.get("PAUSE") or 0)
    (probe / f"pid{rank}").write_text(str(os.getpid()))
    held = {}
    train_one_epoch, gather, save = train.train_one_epoch, train.gather_predictions, train.save_checkpoint


    def training(model, loader, parts, device, desc, position=None):
        held.update(model=model, parts=parts)
        with open(probe / "trained.log", "a") as log:
            log.write(f"{rank} {desc}\\n")
        return train_one_epoch(model, loader, parts, device, desc, position)


    def gathering(logits, labels, indices):
        gathered = gather(logits, labels, indices)
        held.update(share=indices.tolist(), gathered=gathered[2].tolist())
        return gathered


    def saving(path, *args, **kwargs):
        saved = save(path, *args, **kwargs)
        if pause and Path(path).name.endswith("_last.pt"):
            (probe / "paused").touch()
            time.sleep(pause)
        return saved


    train.train_one_epoch, train.gather_predictions, train.save_checkpoint = training, gathering, saving
    launch = distributed.join_launch()
    try:
        for run in sys.argv[1:]:
            distributed.train_run(run, launch)
            folder = probe / run
            folder.mkdir(exist_ok=True)
            ema = held["parts"].ema
            weights = {"model": plain_state_dict(held["model"]), "ema": ema and plain_state_dict(ema.module)}
            torch.save(weights, folder / f"rank{rank}.pt")
            shares = {"share": held["share"], "gathered": held["gathered"]}
            (folder / f"rank{rank}_val.json").write_text(json.dumps(shares))
    finally:
        distributed.stop()
    """
)

LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "TORCHELASTIC_RUN_ID")
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
PER_CLASS = 11  # 3 classes x 11 in 3 folds: 11 validation images, an odd count, so the sampler pads
# epoch 0 trains the head alone, epoch 1 every layer (with layer decay): DDP is wrapped anew at the thaw
FINE_TUNE = dict(freeze_epochs=1, layer_decay=0.8)
BN_RUN = dict(
    backbone="test_resnet", ema=True, ema_decay=0.9, grad_accum=2, epochs=2, batch_size=4, **FINE_TUNE
)
# no batch norm: per-sample normalisation makes the two halves of a batch add up to the whole batch
FREE_RUN = dict(backbone="test_convnext", grad_accum=2, epochs=2, **FINE_TUNE)
# the same with the balanced sampler: each process takes its half of the one draw of each epoch (no class
# weights: their mean is over each process's own batch, which two halves do not add up to exactly)
BALANCED_RUN = dict(FREE_RUN, sampler="balanced", loss="focal")


@dataclass
class Trained:
    """The module's shared runs: data, the two-process outputs and probe records, the one-process outputs."""

    data: Path
    outputs: Path
    probe: Path
    single: Path


def _env(outputs: Path, **extra: str) -> dict[str, str]:
    return child_env(outputs, drop=LAUNCH_VARIABLES, **extra)


def _run(outputs: Path, name: str) -> RunFolder:
    return RunFolder(outputs / "runs" / name)


def _configure(data: Path, outputs: Path, run: str, **changes) -> None:
    _run(outputs, run).write_config(tiny_config(data, run_name=run, **changes))


def _start(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with open(log, "w") as out:
        return subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)


def _finish(proc: subprocess.Popen, log: Path) -> str:
    try:
        proc.wait(timeout=240)
    finally:
        proc.kill()
    assert proc.returncode == 0, log.read_text()[-4000:]
    return log.read_text()


def _probe(root: Path, outputs: Path, runs: list[str], name: str, **env: str) -> subprocess.Popen:
    """A two-process torchrun launch of the probe in root/<name>, training `runs` into `outputs`."""
    folder = root / name
    folder.mkdir()
    (folder / "probe.py").write_text(PROBE)
    return _start(
        [*TORCHRUN, str(folder / "probe.py"), *runs],
        _env(outputs, PROBE_DIR=str(folder), **env),
        folder / "log.txt",
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """Two runs trained by two processes, and the batch-norm-free one again by one process (batch 8)."""
    root = tmp_path_factory.mktemp("distributed")
    data, outputs, single = root / "data", root / "outputs", root / "single"
    rng, rows = np.random.default_rng(0), []
    for label in ("cat", "dog", "fox"):
        for i in range(PER_CLASS):
            write_image(data / "train_image" / f"{label}_{i:02d}.jpg", random_rgb(rng))
            rows.append({"id": f"{label}_{i:02d}", "label": label})
    pd.DataFrame(rows).to_csv(data / "train.csv", index=False)
    _configure(data, outputs, "bn", **BN_RUN)
    _configure(data, outputs, "free", **FREE_RUN, batch_size=4)  # per process: 8 per step in all
    _configure(data, single, "free", **FREE_RUN, batch_size=8)
    _configure(data, outputs, "balanced", **BALANCED_RUN, batch_size=4)
    _configure(data, single, "balanced", **BALANCED_RUN, batch_size=8)

    two = _probe(root, outputs, ["bn", "free", "balanced"], "probe")
    ones = {
        run: _start(
            [sys.executable, "-m", "helpers.distributed", "--run-name", run], _env(single), root / run
        )
        for run in ("free", "balanced")
    }
    _finish(two, root / "probe" / "log.txt")
    for run, one in ones.items():
        _finish(one, root / run)
    return Trained(data, outputs, root / "probe", single)


def _validation_loader(trained: Trained, monkeypatch: pytest.MonkeyPatch) -> torch.utils.data.DataLoader:
    """Fold 0's validation images for one process, as train_fold builds them."""
    monkeypatch.setenv("KIT_OUTPUTS", str(trained.outputs))
    cfg = tiny_config(trained.data, **BN_RUN)
    _, rows = fold_rows(prepare_dataset(cfg), 0)
    return build_loader(cfg, rows, train=False, fold=0, device=torch.device("cpu"))


@pytest.mark.slow
def test_both_processes_end_with_the_weights_rank_0_checkpoints(trained):
    """Gradients are averaged, rank 0's batch-norm statistics (model and EMA) are taken at each epoch's
    end, and only the updating micro-batch of each accumulation group synchronises: the two processes
    finish with equal weights and buffers, and they are what the `last` and `ema` checkpoints hold."""
    ranks = [torch.load(trained.probe / "bn" / f"rank{k}.pt", weights_only=True) for k in (0, 1)]
    run = _run(trained.outputs, "bn")
    saved = {
        "model": torch.load(run.checkpoint(0, "last"), weights_only=True)["model"],
        "ema": torch.load(run.checkpoint(0, "ema"), weights_only=True)["model"],
    }
    for part in ("model", "ema"):
        assert ranks[0][part].keys() == ranks[1][part].keys() == saved[part].keys()
        assert any("running_mean" in name for name in saved[part])
        for name, value in saved[part].items():
            assert torch.equal(ranks[0][part][name], value), (part, name)
            assert torch.equal(ranks[1][part][name], value), (part, name)


@pytest.mark.slow
def test_distributed_validation_counts_each_image_once(trained, monkeypatch):
    """The 11 validation images are shared 6 + 6 (one padded repeat); the gathered set is the 11, once."""
    n_val = len(_validation_loader(trained, monkeypatch).dataset)
    assert n_val % 2 == 1
    records = [json.loads((trained.probe / "bn" / f"rank{k}_val.json").read_text()) for k in (0, 1)]
    shares = [record["share"] for record in records]
    assert len(shares[0]) == len(shares[1]) == (n_val + 1) // 2
    assert sorted(shares[0] + shares[1]) != list(range(n_val))  # the padding really repeats an image
    for record in records:
        assert record["gathered"] == list(range(n_val))


@pytest.mark.slow
def test_distributed_validation_equals_one_process_on_the_same_weights(trained, monkeypatch):
    """The two processes' metrics of the last epoch (computed on their shares and gathered) equal one
    process's evaluate() of the checkpoints they saved. Only the batching of the forward passes differs,
    which moves a logit by float rounding at most: hence rtol 1e-5, and equal accuracy."""
    loader = _validation_loader(trained, monkeypatch)
    run = _run(trained.outputs, "bn")
    last = pd.read_csv(run.metrics).iloc[-1]
    prep = InputPrep.for_backbone("test_resnet", channels_last=True)
    for kind, prefix in (("last", ""), ("ema", "ema_")):
        model, _ = load_model(run.checkpoint(0, kind))
        alone = evaluate(
            model, loader, torch.device("cpu"), Precision("cpu", torch.float32), prep, SingleLabel()
        )
        np.testing.assert_allclose(last[f"{prefix}val_loss"], alone["val_loss"], rtol=1e-5)
        assert last[f"{prefix}val_acc"] == pytest.approx(alone["val_acc"], abs=1e-7)


@pytest.mark.slow
@pytest.mark.parametrize("run", ["free", "balanced"])
def test_two_processes_train_like_one_with_the_same_total_batch(trained, run):
    """Without batch norm, two processes with batch 4 train what one process with batch 8 does: the
    sampler deals each global batch out in halves (of the shuffle, or of the balanced sampler's draw), DDP
    averages the halves' gradients, and the training loss is the image-weighted mean over both processes. Only float rounding differs (the order of sums
    in the all-reduce and in the smaller batches): about 1e-7 to 1e-6 here, so rtol 1e-4. A model with
    batch norm would not match: it normalises each process's 4 images by their own statistics, where
    one process normalises all 8 together, and the difference grows with every update."""
    two = pd.read_csv(_run(trained.outputs, run).metrics)
    one = pd.read_csv(_run(trained.single, run).metrics)
    assert two["epoch"].tolist() == one["epoch"].tolist() == [0, 1]
    assert two["train_images"].tolist() == one["train_images"].tolist()
    for column in ("lr", "train_loss", "val_loss"):
        np.testing.assert_allclose(two[column], one[column], rtol=1e-4, err_msg=column)
    np.testing.assert_allclose(two["val_acc"], one["val_acc"], atol=1e-7)


@pytest.mark.slow
def test_a_mismatched_launch_is_refused(trained, tmp_path):
    """A world size other than the expected one, and launch variables set by hand without torchrun (no
    other process would ever join), are refused before training, with the reason and exit status 2."""
    outputs = tmp_path / "outputs"
    _configure(trained.data, outputs, "refused", **BN_RUN)
    cli = ["-m", "helpers.distributed", "--run-name", "refused"]
    by_hand = dict(RANK="0", WORLD_SIZE="3", LOCAL_RANK="0", LOCAL_WORLD_SIZE="3")
    launches = {
        "expect": _start([*TORCHRUN, *cli, "--expect-world-size", "3"], _env(outputs), tmp_path / "e.log"),
        "by_hand": _start([sys.executable, *cli], _env(outputs, **by_hand), tmp_path / "h.log"),
    }
    for proc in launches.values():
        proc.wait(timeout=120)
    expect_log, by_hand_log = (tmp_path / "e.log").read_text(), (tmp_path / "h.log").read_text()
    assert launches["expect"].returncode != 0, expect_log
    assert "torchrun started 2 process(es)" in expect_log and "--expect-world-size is 3" in expect_log
    assert launches["by_hand"].returncode == REFUSED, by_hand_log
    assert "not started by torchrun" in by_hand_log
    assert not _run(outputs, "refused").checkpoints.exists()


@pytest.mark.slow
def test_a_killed_two_process_run_resumes_where_it_stopped(trained, tmp_path, monkeypatch):
    """Both processes are killed (SIGKILL) once epoch 0's `last` checkpoint is written. One process may not
    resume it (its batches per epoch, and so the schedule, would differ); a new two-process launch resumes
    epoch 1 in both processes and ends exactly where the uninterrupted run did."""
    outputs = tmp_path / "outputs"
    _configure(trained.data, outputs, "bn", **BN_RUN)
    killed = _probe(tmp_path, outputs, ["bn"], "killed", PAUSE="120")
    paused = tmp_path / "killed" / "paused"
    try:
        deadline = time.monotonic() + 120
        while not paused.exists():
            assert killed.poll() is None, (tmp_path / "killed" / "log.txt").read_text()[-4000:]
            assert time.monotonic() < deadline, "the run never finished epoch 0"
            time.sleep(0.05)
        for rank in (0, 1):  # torchrun starts its workers in sessions of their own: kill them by id
            os.kill(int((tmp_path / "killed" / f"pid{rank}").read_text()), signal.SIGKILL)
        killed.wait(timeout=60)
    finally:
        killed.kill()
    run = _run(outputs, "bn")
    assert torch.load(run.checkpoint(0, "last"), weights_only=True)["epoch"] == 0
    assert pd.read_csv(run.metrics)["epoch"].tolist() == [0]
    monkeypatch.setenv("KIT_OUTPUTS", str(outputs))
    cfg = run.read_config()
    with pytest.raises(ValueError, match="trained by 2 process"):
        train_fold(cfg, prepare_dataset(cfg), 0, run, torch.device("cpu"))

    resumed = _probe(tmp_path, outputs, ["bn"], "resumed")
    _finish(resumed, tmp_path / "resumed" / "log.txt")
    trained_epochs = (tmp_path / "resumed" / "trained.log").read_text().splitlines()
    assert sorted(trained_epochs) == ["0 fold 0 epoch 1", "1 fold 0 epoch 1"]

    reference_run = _run(trained.outputs, "bn")
    metrics, reference = pd.read_csv(run.metrics), pd.read_csv(reference_run.metrics)
    assert metrics["epoch"].tolist() == reference["epoch"].tolist() == [0, 1]
    for column in ("lr", "train_loss", "val_loss", "val_acc", "ema_val_loss", "ema_val_acc"):
        np.testing.assert_allclose(metrics[column], reference[column], rtol=1e-6, err_msg=column)
    for kind in ("last", "ema"):
        weights = torch.load(run.checkpoint(0, kind), weights_only=True)["model"]
        expected = torch.load(reference_run.checkpoint(0, kind), weights_only=True)["model"]
        for name, value in expected.items():
            assert torch.allclose(weights[name].float(), value.float(), atol=1e-6), (kind, name)


def test_a_checkpoint_from_before_sync_bn_still_resumes(tmp_path):
    """A `last` checkpoint written before the sync_bn setting existed lacks it (and world_size): they count
    as their defaults, what the older kit did, so the run resumes rather than being refused as changed."""
    cfg = tiny_config(tmp_path)
    old = {k: v for k, v in cfg.to_dict().items() if k != "sync_bn"}
    path = tmp_path / "fold0_last.pt"
    torch.save({"config": old, "finished": False}, path)
    assert train_mod._resume_state(cfg, path)["config"] == old
    with pytest.raises(ValueError, match="sync_bn: False -> True"):
        train_mod._resume_state(cfg.replace(sync_bn=True), path)


@pytest.mark.slow
def test_a_signal_to_one_process_stops_both_at_the_same_step_and_resumes_exactly(trained, tmp_path):
    """SIGTERM reaches rank 1 alone, during its first micro-batch of epoch 1: the flag, all-reduced at each
    update, stops both processes after that update; rank 0 writes one checkpoint holding both processes'
    positions, both exit with 143, and a new launch ends bit-equal to the run never stopped."""
    outputs = tmp_path / "outputs"
    _configure(trained.data, outputs, "bn", **BN_RUN)
    at = json.dumps({"signal": "SIGTERM", "at": "fold 0 epoch 1", "batch": 0, "rank": 1})
    stopped = _probe(tmp_path, outputs, ["bn"], "stopped", KIT_TEST_SIGNAL=at)
    try:
        stopped.wait(timeout=240)
    finally:
        stopped.kill()
    log = (tmp_path / "stopped" / "log.txt").read_text()
    assert stopped.returncode != 0, log[-4000:]
    assert log.count("stopped by SIGTERM at fold 0 epoch 1, step 1 of 2") == 1, log[-4000:]  # rank 0 says it
    assert "143" in log, log[-4000:]  # torchrun's report of the processes' exit status
    trained_epochs = sorted((tmp_path / "stopped" / "trained.log").read_text().splitlines())
    assert trained_epochs == ["0 fold 0 epoch 0", "0 fold 0 epoch 1", "1 fold 0 epoch 0", "1 fold 0 epoch 1"]
    run = _run(outputs, "bn")
    last = torch.load(run.checkpoint(0, "last"), weights_only=True)
    assert (last["epoch"], last["position"]["step"], len(last["position"]["ranks"])) == (1, 2, 2)

    resumed = _probe(tmp_path, outputs, ["bn"], "resumed")
    _finish(resumed, tmp_path / "resumed" / "log.txt")
    assert_same_runs(run, _run(trained.outputs, "bn"))
