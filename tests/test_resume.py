"""Kill-and-resume: a run killed by SIGKILL and resumed ends exactly where an uninterrupted one does."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from train_fixtures import child_env, tiny_config

from helpers.dataset import prepare_dataset
from helpers.run_folder import RunFolder
from helpers.train import train_fold

RUN_NAME = "resume"
EPOCHS = 3

# Trains one fold of a tiny run. Test-only hooks: every epoch trained by this process is appended to
# trained.log (around RunFolder.record_metrics), and with PAUSE_AFTER_EPOCH set, once an epoch's
# `last` checkpoint is written (the last thing an epoch does) it marks epoch<k>.recorded and sleeps, so the
# test can kill it at a known point.
SCRIPT = (
    textwrap.dedent(
        """
    import json
    import os
    import sys
    import time
    from pathlib import Path

    import helpers.train as train
    from helpers.config import Config
    from helpers.dataset import prepare_dataset
    from helpers.run_folder import RunFolder

    pause = float(os.environ.get("PAUSE_AFTER_EPOCH") or 0)
    record, save = RunFolder.record_metrics, train.save_checkpoint


    def recording(run, row):
        record(run, row)
        with open(run.path / "trained.log", "a") as log:
            log.write(f"{row['epoch']}\\n")


    def saving(path, *args, **kwargs):
        save(path, *args, **kwargs)
        if pause and Path(path).name.endswith("_last.pt"):
            (Path(path).parents[1] / f"epoch{kwargs['epoch']}.recorded").touch()
            time.sleep(pause)


    RunFolder.record_metrics, train.save_checkpoint = recording, saving
    cfg = Config(
        data_dir=sys.argv[1],
        backbone="test_resnet",
        img_size=32,
        n_folds=3,
        epochs=EPOCHS,
        batch_size=16,
        num_workers=0,
        seed=7,
        run_name="RUN_NAME",
        pretrained=False,
        augment="light",
        ema=True,
        ema_decay=0.9,
        mixup=0.2,
        freeze_epochs=1,  # killed after the frozen epoch, resumed into the thawed ones
        layer_decay=0.8,
        **json.loads(sys.argv[2]),
    )
    info = prepare_dataset(cfg)
    train.train_folds(cfg, info, RunFolder.of(cfg))
    """
    )
    .replace("EPOCHS", str(EPOCHS))
    .replace("RUN_NAME", RUN_NAME)
)


def _env(outputs: Path, pause: float = 0.0) -> dict[str, str]:
    return child_env(
        outputs, drop={"PAUSE_AFTER_EPOCH"}, **({"PAUSE_AFTER_EPOCH": str(pause)} if pause else {})
    )


def _start(
    script: Path, data: Path, settings: dict, outputs: Path, log: Path, pause: float = 0.0
) -> subprocess.Popen:
    with open(log, "w") as out:
        return subprocess.Popen(
            [sys.executable, str(script), str(data), json.dumps(settings)],
            env=_env(outputs, pause),
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def _finish(proc: subprocess.Popen, log: Path) -> None:
    try:
        proc.wait(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 0, log.read_text()[-4000:]


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["model"]


pytestmark = pytest.mark.usefixtures("one_thread")


# the imbalance options: the balanced sampler draws each epoch by (seed, epoch), like the shuffle
BALANCED = {"sampler": "balanced", "class_weights": "balanced", "loss": "focal"}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("task", "settings"),
    [("multiclass", {}), ("multilabel", {}), ("multiclass", BALANCED)],
    ids=["shuffle", "multilabel", "balanced"],
)
def test_killed_and_resumed_run_matches_an_uninterrupted_one(
    tmp_path, make_csv_dataset, make_multilabel_dataset, task, settings
):
    if task == "multilabel":  # multi-hot targets, mixed by mixup, validated by mAP and F1
        data = make_multilabel_dataset(name="resumedata", n=48)
        scores = ["val_map", "val_f1_micro", "val_f1_macro", "ema_val_map"]
    else:
        data = make_csv_dataset(name="resumedata", per_class=12)
        scores = ["val_acc", "ema_val_acc"]
    if settings:  # imbalanced: 12, 12 and 4 images
        table = pd.read_csv(data / "train.csv")
        table.drop(table.index[table["label"] == "fox"][4:]).to_csv(data / "train.csv", index=False)
    settings = {"task": task, **settings}
    script = tmp_path / "train_tiny.py"
    script.write_text(SCRIPT)
    dir_a, dir_b = tmp_path / "outputs_a", tmp_path / "outputs_b"
    run_a, run_b = RunFolder(dir_a / "runs" / RUN_NAME), RunFolder(dir_b / "runs" / RUN_NAME)

    # the uninterrupted run and the one to be killed run side by side
    uninterrupted = _start(script, data, settings, dir_a, tmp_path / "a.log")
    killed_log = tmp_path / "b_killed.log"
    proc = _start(script, data, settings, dir_b, killed_log, pause=120)
    try:
        deadline = time.monotonic() + 240
        while not (run_b.path / "epoch0.recorded").exists():
            assert proc.poll() is None, killed_log.read_text()[-4000:]
            assert time.monotonic() < deadline, "the run never finished epoch 0"
            time.sleep(0.05)
    finally:
        proc.kill()  # SIGKILL: no cleanup, no atexit, like a crash or an OOM kill
        proc.wait(timeout=60)
    assert proc.returncode == -9
    killed = torch.load(run_b.checkpoint(0, "last"), weights_only=True)
    assert killed["epoch"] == 0 and not killed["finished"]
    assert {k: killed["config"][k] for k in settings} == settings
    assert pd.read_csv(run_b.metrics)["epoch"].tolist() == [0]

    resumed_log = tmp_path / "b_resumed.log"
    resumed = _start(script, data, settings, dir_b, resumed_log)
    _finish(uninterrupted, tmp_path / "a.log")
    _finish(resumed, resumed_log)

    # the second process picked up at epoch 1 instead of starting over
    assert (run_a.path / "trained.log").read_text().split() == ["0", "1", "2"]
    assert (run_b.path / "trained.log").read_text().split() == ["0", "1", "2"]

    metrics_a, metrics_b = pd.read_csv(run_a.metrics), pd.read_csv(run_b.metrics)
    assert metrics_a["epoch"].tolist() == metrics_b["epoch"].tolist() == list(range(EPOCHS))
    for column in ["lr", "train_loss", "val_loss", "ema_val_loss", *scores]:
        np.testing.assert_allclose(metrics_b[column], metrics_a[column], rtol=1e-6, err_msg=column)

    for kind in ["best_score", "best_loss", "last", "ema"]:
        weights_a = _weights(run_a.checkpoint(0, kind))
        weights_b = _weights(run_b.checkpoint(0, kind))
        assert weights_a.keys() == weights_b.keys()
        for name in weights_a:
            assert torch.allclose(weights_a[name].float(), weights_b[name].float(), atol=1e-6), (kind, name)


class Crash(Exception):
    """Stands in for the process dying at one exact point."""


def test_a_crash_between_checkpoint_and_metrics_row_loses_no_row(outputs, csv_dataset, monkeypatch):
    cfg = tiny_config(csv_dataset, epochs=3)
    info, run = prepare_dataset(cfg), RunFolder.of(cfg)
    record = RunFolder.record_metrics

    def dies_at_epoch_1(folder, row):
        if row["epoch"] == 1:
            raise Crash
        record(folder, row)

    monkeypatch.setattr(RunFolder, "record_metrics", dies_at_epoch_1)
    with pytest.raises(Crash):
        train_fold(cfg, info, 0, run, torch.device("cpu"))
    monkeypatch.setattr(RunFolder, "record_metrics", record)

    metrics = train_fold(cfg, info, 0, run, torch.device("cpu"))
    assert metrics["epoch"].tolist() == [0, 1, 2]
