"""Stopping on a signal: the stop lands at the next optimizer update, a mid-epoch checkpoint is written, and
the resumed run equals one that was never stopped, bit for bit (helpers.stopping, helpers.epoch_position).

The signals come from the tests' fault-injection hook (KIT_TEST_SIGNAL): the process sends itself the
signal after a chosen batch, so it lands inside a training step, as a real one would.
"""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import torch
from train_fixtures import assert_same_runs, child_env, fixed_samples, linear_model, loader_of, tiny_config

import helpers.stopping as stopping
from helpers.config import Config
from helpers.dataset import prepare_dataset
from helpers.precision import Precision
from helpers.run_folder import RunFolder
from helpers.train import predict, train_fold, train_folds

CPU = torch.device("cpu")
# EMA, mixup (numpy's generator), augmentation, a frozen first epoch with layer decay, and accumulation of
# 2 micro-batches: 3 batches per epoch make updates after batches 1 and 2, so a signal after batch 0 of
# epoch 1 lands mid-cycle and the stop comes after the update of batch 1 (step 1 of 2)
SETTINGS = dict(
    epochs=3,
    grad_accum=2,
    ema=True,
    ema_decay=0.9,
    mixup=0.2,
    augment="light",
    freeze_epochs=1,
    layer_decay=0.8,
    pretrained=False,  # from scratch: no weights to fetch
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _signal_at(at: str, batch: int, name: str = "SIGTERM", **extra) -> str:
    return json.dumps({"signal": name, "at": at, "batch": batch, **extra})


@pytest.fixture
def runs(outputs, csv_dataset):
    """A factory: (cfg, info, run) of the tiny data set for a run name and config changes."""

    def make(name: str, **changes):
        cfg = tiny_config(csv_dataset, run_name=name, **{**SETTINGS, **changes})
        return cfg, prepare_dataset(cfg), RunFolder.of(cfg)

    return make


@pytest.mark.parametrize(
    "changes",
    [{}, {"sampler": "balanced", "class_weights": "balanced", "loss": "focal"}],
    ids=["shuffle", "balanced"],
)
def test_a_stopped_and_resumed_fold_equals_one_never_stopped(runs, monkeypatch, capsys, changes):
    """The balanced sampler's keys carry the draw's position: skipping the batches done keeps them."""
    cfg, info, whole = runs("whole", **changes)
    train_fold(cfg, info, 0, whole, CPU)

    cfg, info, run = runs("stopped", **changes)
    monkeypatch.setenv(stopping.TEST_SIGNAL, _signal_at("fold 0 epoch 1", 0))
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as stopped:
        train_fold(cfg, info, 0, run, CPU)
    assert stopped.value.code == 143
    assert signal.getsignal(signal.SIGTERM) is before  # the handler is gone with the training
    said = capsys.readouterr().err
    assert "stopped by SIGTERM at fold 0 epoch 1, step 1 of 2" in said
    assert f"saved in {run.checkpoint(0, 'last')}: resume by running 03 again" in said
    last = torch.load(run.checkpoint(0, "last"), weights_only=True)
    assert (last["epoch"], last["position"]["step"], last["finished"]) == (1, 2, False)
    assert len(last["position"]["ranks"]) == 1
    assert pd.read_csv(run.metrics)["epoch"].tolist() == [0]

    monkeypatch.delenv(stopping.TEST_SIGNAL)
    train_fold(cfg, info, 0, run, CPU)
    assert_same_runs(run, whole)


def test_a_stop_during_validation_keeps_the_epochs_training(runs, monkeypatch, capsys):
    """Validation stops after its current batch; the checkpoint holds the finished training pass, so the
    resumed run only validates again."""
    cfg, info, whole = runs("whole", epochs=2)
    train_fold(cfg, info, 0, whole, CPU)
    cfg, info, run = runs("stopped", epochs=2)
    monkeypatch.setenv(stopping.TEST_SIGNAL, _signal_at("validate", 0, "SIGUSR1"))
    with pytest.raises(SystemExit) as stopped:
        train_folds(cfg, info, run, CPU)
    assert stopped.value.code == 128 + signal.SIGUSR1
    assert (
        "stopped by SIGUSR1 at fold 0 epoch 0, step 2 of 2, before its validation ended"
        in capsys.readouterr().err
    )
    last = torch.load(run.checkpoint(0, "last"), weights_only=True)
    assert (last["epoch"], last["position"]["step"]) == (0, 3)
    assert not run.metrics.exists()

    monkeypatch.delenv(stopping.TEST_SIGNAL)
    train_folds(cfg, info, run, CPU)
    assert_same_runs(run, whole)
    speeds = pd.read_csv(run.metrics)["images_per_s"]
    assert math.isnan(speeds[0]) and speeds[1] > 0  # epoch 0 had only its validation left


def test_prediction_stops_after_its_batch_and_saves_nothing(monkeypatch, capsys):
    x, y = fixed_samples(12)
    model = linear_model()
    monkeypatch.setenv(stopping.TEST_SIGNAL, _signal_at("test prediction", 1, "SIGINT"))
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(SystemExit) as stopped:
        predict(
            model, loader_of(x, y, 4), CPU, Precision("cpu", torch.float32), lambda x, d: x, "test prediction"
        )
    assert stopped.value.code == 130
    assert capsys.readouterr().err.splitlines()[-1] == (
        "stopped by SIGINT at test prediction, batch 2 of 3; nothing of it is saved: run it again"
    )
    assert signal.getsignal(signal.SIGINT) is before


def test_the_handlers_are_installed_only_while_caught_and_a_second_ctrl_c_stops_at_once():
    before = {s: signal.getsignal(s) for s in stopping.SIGNALS}
    with pytest.raises(SystemExit) as stopped, stopping.stop_signals_caught():
        assert all(signal.getsignal(s) is not before[s] for s in stopping.SIGNALS)
        signal.raise_signal(signal.SIGINT)
        assert stopping.requested() == signal.SIGINT
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
        with pytest.raises(stopping.StopRequested):
            stopping.check("a loop")
    # a flag that no loop turned into a stop still ends the process as the signal would have
    assert stopped.value.code == 130
    assert {s: signal.getsignal(s) for s in stopping.SIGNALS} == before
    assert stopping.requested() == 0  # outside, a signal is the process's business again


def test_a_notebook_gets_a_one_line_error_instead_of_an_exit(monkeypatch):
    """In an IPython kernel the stop is TrainingStopped, rendered as its message alone (no frames)."""
    monkeypatch.setattr(stopping, "_interactive", lambda: True)
    with pytest.raises(stopping.TrainingStopped) as stopped, stopping.stop_signals_caught():
        raise stopping.StopRequested(signal.SIGINT, "stopped by SIGINT at somewhere")
    assert stopped.value._render_traceback_() == ["TrainingStopped: stopped by SIGINT at somewhere"]


# --- in real processes: a script, a notebook under papermill ---------------------------------------------

# Trains fold 0 of a tiny run: the settings come as JSON, the signal from KIT_TEST_SIGNAL
SCRIPT = textwrap.dedent(
    """
    import json
    import sys

    from helpers.config import Config
    from helpers.dataset import prepare_dataset
    from helpers.run_folder import RunFolder
    from helpers.train import train_folds

    cfg = Config(**json.loads(sys.argv[1]))
    train_folds(cfg, prepare_dataset(cfg), RunFolder.of(cfg))
    """
)


def _run_script(script: Path, settings: dict, outputs: Path, log: Path, stop: str = "") -> subprocess.Popen:
    env = child_env(outputs, drop={stopping.TEST_SIGNAL}, **({stopping.TEST_SIGNAL: stop} if stop else {}))
    with open(log, "w") as out:
        return subprocess.Popen(  # a session of its own: a signal to its process group stays in it
            [sys.executable, str(script), json.dumps(settings)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _wait(proc: subprocess.Popen, log: Path, status: int) -> str:
    try:
        proc.wait(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == status, log.read_text()[-4000:]
    return log.read_text()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("signal_name", "workers", "at", "batch", "where"),
    [
        ("SIGTERM", 0, "fold 0 epoch 1", 2, "fold 0 epoch 1, step 2 of 3"),
        ("SIGTERM", 2, "fold 0 epoch 1", 2, "fold 0 epoch 1, step 2 of 3"),
        ("SIGINT", 2, "fold 0 epoch 1", 5, "fold 0 epoch 1, step 3 of 3"),
        ("SIGUSR1", 0, "fold 0 epoch 1", 0, "fold 0 epoch 1, step 1 of 3"),
    ],
    ids=["sigterm-mid-cycle", "sigterm-2-workers", "sigint-last-step", "sigusr1"],
)
def test_a_script_stopped_by_a_signal_exits_with_its_status_and_resumes_exactly(
    tmp_path, make_csv_dataset, signal_name, workers, at, batch, where
):
    """Batches of 4 over 24 training images, 2 per update: 6 batches, 3 updates per epoch. The signal lands
    after a micro-batch (mid-cycle after batch 2); the script exits with 128 + the signal's number, once
    the checkpoint at the next update is written; run again, it ends where the uninterrupted run did."""
    data = make_csv_dataset(name="stopdata", per_class=12)
    settings = dict(
        data_dir=str(data),
        backbone="test_resnet",
        img_size=32,
        n_folds=3,
        batch_size=4,
        seed=7,
        folds=[0],
        task="multiclass",
        **SETTINGS,
    )
    script = tmp_path / "train_tiny.py"
    script.write_text(SCRIPT)
    whole_dir, stopped_dir = tmp_path / "whole", tmp_path / "stopped"
    stopped = {**settings, "num_workers": workers, "run_name": "run"}
    whole = _run_script(
        script, {**settings, "num_workers": 0, "run_name": "run"}, whole_dir, tmp_path / "w.log"
    )
    # with workers, to the whole process group (as Ctrl-C, Kernel > Interrupt or a preemption send it):
    # torch's workers die of SIGTERM unless they ignore it
    stop = _signal_at(at, batch, signal_name, group=workers > 0)
    first = _run_script(script, stopped, stopped_dir, tmp_path / "s.log", stop)
    said = _wait(first, tmp_path / "s.log", 128 + signal.Signals[signal_name])
    assert f"stopped by {signal_name} at {where}" in said
    assert "Traceback" not in said

    run = RunFolder(stopped_dir / "runs" / "run")
    assert torch.load(run.checkpoint(0, "last"), weights_only=True)["position"]["epoch"] == 1
    second = _run_script(script, stopped, stopped_dir, tmp_path / "r.log")
    _wait(second, tmp_path / "r.log", 0)
    _wait(whole, tmp_path / "w.log", 0)
    assert_same_runs(run, RunFolder(whole_dir / "runs" / "run"))


NOTEBOOK_CELLS = [
    "from helpers.config import Config\nfrom helpers.dataset import prepare_dataset\n"
    "from helpers.run_folder import RunFolder\nfrom helpers.train import train_folds",
    "cfg = Config(**SETTINGS)\ninfo = prepare_dataset(cfg)",
    "train_folds(cfg, info, RunFolder.of(cfg))",
    "print('the kernel lives on')",
]


@pytest.mark.slow
def test_a_notebook_interrupted_under_papermill_stops_with_one_line_and_resumes(
    tmp_path, make_csv_dataset, monkeypatch
):
    """Kernel > Interrupt is SIGINT to the kernel: the cell ends with TrainingStopped (the kernel is not
    killed), and running the notebook again finishes the fold where an uninterrupted run ends."""
    import nbformat
    import papermill

    data = make_csv_dataset(name="nbdata", per_class=6)
    settings = dict(
        data_dir=str(data),
        backbone="test_resnet",
        img_size=32,
        n_folds=3,
        batch_size=4,
        num_workers=0,
        folds=[0],
        task="multiclass",
        run_name="nb",
        **SETTINGS,
    )
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(f"SETTINGS = {settings!r}")]
    nb.cells += [nbformat.v4.new_code_cell(source) for source in NOTEBOOK_CELLS]
    source = tmp_path / "train.ipynb"
    nbformat.write(nb, source)
    outputs = tmp_path / "outputs"
    for name, value in child_env(outputs).items():
        monkeypatch.setenv(name, value)

    monkeypatch.setenv(stopping.TEST_SIGNAL, _signal_at("fold 0 epoch 1", 0, "SIGINT"))
    with pytest.raises(papermill.PapermillExecutionError) as failed:
        papermill.execute_notebook(source, tmp_path / "stopped.ipynb", kernel_name="python3", cwd=tmp_path)
    assert failed.value.ename == "TrainingStopped"
    assert failed.value.evalue.startswith("stopped by SIGINT at fold 0 epoch 1, step 1 of 2")
    cells = nbformat.read(tmp_path / "stopped.ipynb", as_version=4).cells
    (error,) = [o for c in cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert error.traceback == [f"TrainingStopped: {failed.value.evalue}"]  # one line, no frames

    monkeypatch.delenv(stopping.TEST_SIGNAL)
    papermill.execute_notebook(source, tmp_path / "resumed.ipynb", kernel_name="python3", cwd=tmp_path)
    run = RunFolder(outputs / "runs" / "nb")
    assert pd.read_csv(run.metrics)["epoch"].tolist() == [0, 1, 2]

    monkeypatch.setenv("KIT_OUTPUTS", str(tmp_path / "whole"))
    cfg = Config(**settings)
    train_folds(cfg, prepare_dataset(cfg), RunFolder.of(cfg), CPU)
    assert_same_runs(run, RunFolder.of(cfg))
