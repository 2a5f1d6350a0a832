"""Tuning studies (helpers.tune, helpers.search_space): the search space's checks, trials as runs, pruning,
several workers on one journal file or one PostgreSQL server, a dead worker's trial retried, resuming."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat
import numpy as np
import optuna
import pandas as pd
import papermill
import pytest
import torch
from notebook_runs import run_nbval

from helpers import leaderboard, study_storage, study_views, tune
from helpers.checkpoints import load_checkpoint
from helpers.config import ConfigError
from helpers.paths import notebooks_dir, project_root
from helpers.run_folder import RunFolder
from helpers.search_space import load_space, searchable

SPACE = {"lr": {"low": 1e-3, "high": 1e-2, "log": True}, "augment": ["none", "light"]}


def base(data: Path, epochs: int = 2) -> dict:
    """A tiny trial: a test model at 32 px from scratch, two epochs on fold 0, no loader processes."""
    return {"data_dir": str(data), "backbone": "test_resnet", "img_size": 32, "pretrained": False,
            "epochs": epochs, "batch_size": 8, "num_workers": 0}  # fmt: skip


def cli_params(params: dict) -> list[str]:
    return [arg for name, value in params.items() for arg in ("-p", name, str(value))]


# -- the search space --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("lr: {low: 0.01, high: 0.001}", r"lr: low 0.01 must be below high 0.001"),
        ("lrate: {low: 0.001, high: 0.01}", r"lrate: unknown setting"),
        ("data_dir: [a, b]", r"data_dir: cannot be searched: it is a data setting"),
        ("folds: [[0], [1]]", r"folds: cannot be searched: the study fixes it"),
        ("epochs: {low: 2, high: 5}", r"epochs: cannot be searched: the study fixes it"),
        ("num_workers: [0, 2]", r"num_workers: cannot be searched: it is a machine setting"),
        ("label_smoothing: {low: 0.0, high: 1.0}", r"label_smoothing: high 1.0 is impossible for a run"),
        (
            "weight_decay: {low: 0.0, high: 0.1, log: true}",
            r"weight_decay: a log-scale range must start above 0",
        ),
        ("scheduler: [onecycle, sometimes]", r"scheduler: choice 'sometimes' is impossible"),
        ("scheduler: {low: 1, high: 2}", r"scheduler: not a number: give choices among \['onecycle'"),
        ("freeze_epochs: {low: 0, high: 1.5}", r"freeze_epochs: freeze_epochs is a whole number"),
        ("lr: {low: 0.001, hi: 0.01}", r"lr: a range needs low and high .*unknown key\(s\) \['hi'\]"),
        ("batch_size: {choices: []}", r"batch_size: choices must be a non-empty list"),
        ("augment: {choices: [light], low: 1, high: 2}", r"augment: give choices alone"),
        ("batch_size: [32, 32]", r"batch_size: a choice is listed twice"),
        ("- lr", r"a search space is a mapping"),
    ],
)
def test_search_space_file_errors(tmp_path, text, match):
    path = tmp_path / "space.yaml"
    path.write_text(text + "\n")
    with pytest.raises(ConfigError, match=match) as caught:
        load_space(path)
    assert str(path) in str(caught.value)  # the file is named with the entry


def test_search_space_files_yaml_and_toml(tmp_path):
    yaml_file = tmp_path / "space.yml"
    yaml_file.write_text(
        "lr: {low: 1.0e-4, high: 1.0e-2, log: true}\nfreeze_epochs: {low: 0, high: 2}\nema: [true, false]\n"
    )
    toml_file = tmp_path / "space.toml"
    toml_file.write_text(
        "lr = {low = 1e-4, high = 1e-2, log = true}\nfreeze_epochs = {low = 0, high = 2}\nema = [true, false]\n"
    )
    spaces = [load_space(yaml_file), load_space(toml_file)]
    assert spaces[0] == spaces[1]
    space = spaces[0]
    assert space["lr"].log and space["freeze_epochs"].whole and space["ema"].choices == (True, False)
    trial = optuna.create_study().ask()
    values = {name: d.suggest(trial) for name, d in space.items()}
    assert 1e-4 <= values["lr"] <= 1e-2 and isinstance(values["freeze_epochs"], int)
    assert set(searchable()) >= {"lr", "weight_decay", "batch_size", "scheduler", "warmup_epochs", "augment",
                                 "label_smoothing", "mixup", "cutmix", "img_size", "backbone", "layer_decay",
                                 "freeze_epochs", "loss", "class_weights", "ema"}  # fmt: skip
    with pytest.raises(ConfigError, match="cannot read the search space"):
        load_space(tmp_path / "missing.yaml")


def test_study_settings_are_checked_before_any_trial(outputs, csv_dataset):
    storage = study_storage.open_storage("s1")
    fixed = base(csv_dataset)
    with pytest.raises(ConfigError, match=r"\['lr'\] given both with -p and in the search space"):
        tune.open_study("s1", storage, {**fixed, "lr": 0.01}, SPACE)
    with pytest.raises(ConfigError, match="run_name: each trial's run is named after the study"):
        tune.open_study("s1", storage, {**fixed, "run_name": "x"}, SPACE)
    with pytest.raises(ConfigError, match=r"folds=\[7\]"):
        tune.open_study("s1", storage, {**fixed, "folds": [7]}, SPACE)
    with pytest.raises(ConfigError, match=r"mixup=0.4 with the fixed settings: batch_size=7"):
        tune.open_study("s1", storage, {**fixed, "batch_size": 7}, {"mixup": [0.0, 0.4]})
    with pytest.raises(ConfigError, match="study name"):
        tune.open_study("a/b", storage, fixed, SPACE)
    assert not list((outputs / "runs").glob("s1-*"))
    study, settings = tune.open_study("s1", storage, fixed, SPACE)
    assert settings.monitor == "val_acc" and settings.direction == "maximize"
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE
    # a worker joining with nothing given takes the study's settings; one giving others is refused
    assert tune.open_study("s1", study_storage.open_storage("s1"))[1] == settings
    with pytest.raises(ConfigError, match=r"study 's1' exists with other settings; fixed settings"):
        tune.open_study("s1", study_storage.open_storage("s1"), {**fixed, "epochs": 9})
    with pytest.raises(ConfigError, match="pruner: 'none'"):
        tune.open_study("s1", study_storage.open_storage("s1"), pruner="none")


def test_database_password_stays_out_of_the_url(monkeypatch):
    with pytest.raises(ConfigError, match=r"holds a password: leave it out") as caught:
        study_storage.open_storage("s", "postgresql://kit:hunter2@db.example:5432/kit")
    assert "hunter2" not in str(caught.value) and "***" in str(caught.value)
    monkeypatch.setenv(study_storage.PASSWORD_ENV, "hunter2")
    shown = study_storage.shown_url("postgresql://kit@db.example:5432/kit")
    assert "hunter2" not in shown and study_storage.PASSWORD_ENV in shown
    assert study_storage._database_url("postgresql://kit@db/kit").startswith("postgresql+psycopg://")
    assert study_storage._engine_kwargs() == {"connect_args": {"password": "hunter2"}}


def test_samplers_draw_per_trial_number():
    """Reseeded from (seed, trial number): the same study repeats, and parallel trials differ."""

    def draws(seed: int) -> list[float]:
        study = optuna.create_study(sampler=tune.build_sampler("tpe", seed))
        return [study.ask().suggest_float("x", 0, 1) for _ in range(3)]

    assert draws(1) == draws(1) and draws(1) != draws(2) and len(set(draws(1))) == 3


# -- trials as runs --------------------------------------------------------------------------------------
def test_pruned_trial_run_folder_and_leaderboard_row(outputs, csv_dataset, one_thread):
    storage = study_storage.open_storage("pr")
    study, settings = tune.open_study("pr", storage, base(csv_dataset, epochs=3), SPACE)
    study.pruner = optuna.pruners.ThresholdPruner(lower=1.5, n_warmup_steps=1)  # no accuracy reaches 1.5
    (trial,) = tune.work(study, "pr", settings, trials=1, device=torch.device("cpu"))
    assert trial.state == optuna.trial.TrialState.PRUNED
    run = RunFolder.named("pr-t000")
    assert run.pruned_at_epoch() == 1
    record = json.loads(run.pruned.read_text())
    assert record["monitor"] == "val_acc" and record["trial"] == 0 and record["fold"] == 0
    assert run.read_metrics()["epoch"].tolist() == [0, 1]  # stopped cleanly after its second epoch
    last = load_checkpoint(run.checkpoint(0, "last"))
    assert last["finished"] and last["epoch"] == 1 and run.checkpoint(0, "best_score").exists()
    assert run.read_config().run_name == "pr-t000"
    row = leaderboard.write_leaderboard().set_index("run").loc["pr-t000"]
    assert row["pruned_at_epoch"] == 1 and row["epochs"] == 3 and not row["finished"]


@pytest.mark.slow
def test_study_resumes_after_a_stop(outputs, csv_dataset, capsys, one_thread):
    fixed = cli_params(base(csv_dataset, epochs=1))
    assert tune.main(["--study", "rs", "--trials", "2", "--pruner", "none", *fixed]) == 0
    first = capsys.readouterr().out
    assert tune.main(["--study", "rs", "--trials", "3"]) == 0  # joins with the study's own settings
    second = capsys.readouterr().out
    assert tune.main(["--study", "rs", "--trials", "3", "-p", "epochs", "4"]) == 2
    assert "trial 0 " in first and "trial 1 " in first and "2 of 2 trials finished" in first
    assert "2 of 3 trials finished" in second.splitlines()[0] and "trial 2 " in second
    assert trial_numbers(second) == [2]
    assert "exists with other settings" in capsys.readouterr().err
    study, _ = tune.load_study("rs")
    assert [t.number for t in study.trials] == [0, 1, 2]
    assert sorted(p.name for p in (outputs / "runs").glob("rs-*")) == ["rs-t000", "rs-t001", "rs-t002"]
    assert sorted(pd.read_csv(outputs / "leaderboard.csv")["run"]) == ["rs-t000", "rs-t001", "rs-t002"]


def worker(study: str, trials: int, outputs: Path, *args: str, env: dict | None = None) -> subprocess.Popen:
    """`python -m helpers.tune` in a child process with one thread, on the test's outputs folder."""
    command = [sys.executable, "-m", "helpers.tune", "--study", study, "--trials", str(trials), *args]
    env = {**os.environ, "KIT_OUTPUTS": str(outputs), "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.Popen(
        command, cwd=project_root(), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def finish(process: subprocess.Popen, timeout: int = 240) -> str:
    out, err = process.communicate(timeout=timeout)
    assert process.returncode == 0, out[-3000:] + err[-3000:]
    return out + err


def trial_numbers(out: str) -> list[int]:
    return [int(line.split()[1]) for line in out.splitlines() if line.startswith("trial ")]


def check_shared_study(study: optuna.Study, name: str, outputs: Path, outs: list[str], trials: int) -> None:
    """Both workers ran trials, no trial number twice, every trial its own run folder, and the study holds
    at least `trials` finished ones (at most one more: both may start a last trial at once)."""
    mine = [trial_numbers(out) for out in outs]
    assert all(mine), outs
    numbers = [n for m in mine for n in m]
    assert len(numbers) == len(set(numbers)) == len(study.trials)
    finished = [t for t in study.trials if t.state.is_finished() and t.state != optuna.trial.TrialState.FAIL]
    assert trials <= len(finished) <= trials + 1
    runs = sorted(p.name for p in (outputs / "runs").glob(f"{name}-t*"))
    assert runs == sorted(study_storage.trial_run_name(name, t.number) for t in study.trials)
    for run in runs:
        assert RunFolder.named(run).read_config().run_name == run


@pytest.mark.slow
def test_two_workers_share_a_journal_file(outputs, csv_dataset):
    tune.open_study(
        "two", study_storage.open_storage("two"), base(csv_dataset, epochs=2), SPACE
    )  # created once
    workers = [worker("two", 6, outputs) for _ in range(2)]
    outs = [finish(w) for w in workers]
    study, _ = tune.load_study("two")
    check_shared_study(study, "two", outputs, outs, 6)


@pytest.mark.slow
def test_a_killed_workers_trial_is_failed_and_retried(outputs, csv_dataset):
    fixed = cli_params(base(csv_dataset, epochs=40))
    beat = ["--heartbeat", "1", "--grace", "3"]
    first = worker("kill", 1, outputs, *beat, *fixed)
    metrics = outputs / "runs" / "kill-t000" / "metrics.csv"
    deadline = time.monotonic() + 120
    while not (metrics.exists() and len(pd.read_csv(metrics)) >= 2) and first.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert first.poll() is None, first.communicate()
    first.send_signal(signal.SIGKILL)  # no handler runs: the trial stays "running", its heartbeat stops
    first.wait()
    done_before = pd.read_csv(metrics)
    time.sleep(4)  # past the grace period
    out = finish(worker("kill", 1, outputs, *beat), timeout=300)
    study, _ = tune.load_study("kill")
    states = [t.state for t in study.trials]
    assert states == [optuna.trial.TrialState.FAIL, optuna.trial.TrialState.COMPLETE], out
    assert study_storage.retry_of(study.trials[1]) == 0 and study.trials[1].params == study.trials[0].params
    assert "trial 1 (retry of trial 0)" in out
    # the retry went on from the dead trial's checkpoints: its first epochs are the ones trained before (but
    # the last, which the kill may have caught between its metrics row and its `last` checkpoint)
    retried = RunFolder.named("kill-t001").read_metrics()
    assert retried["epoch"].tolist() == list(range(40))
    kept = len(done_before) - 1
    assert retried["seconds"].head(kept).tolist() == done_before["seconds"].head(kept).tolist()
    assert len(study.trials[1].intermediate_values) == 40


# -- the notebook ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory) -> Path:
    """A three-trial study on a tiny data set; returns the outputs folder."""
    from conftest import write_image

    root = tmp_path_factory.mktemp("tune")
    data, rng = root / "data", np.random.default_rng(0)
    rows = [(f"{c}{i}", c) for c in ("a", "b", "c") for i in range(10)]
    for image_id, _ in rows:
        write_image(
            data / "train_image" / f"{image_id}.jpg", rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
        )
    pd.DataFrame(rows, columns=["id", "label"]).to_csv(data / "train.csv", index=False)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KIT_OUTPUTS", str(root / "outputs"))
        args = ["--study", "nb", "--trials", "3", *cli_params(base(data, epochs=1))]
        assert tune.main(args) == 0
    return root / "outputs"


NOTEBOOK = notebooks_dir() / "08_tune.ipynb"


@pytest.mark.slow
def test_tune_notebook_under_papermill(tiny_study, tmp_path, monkeypatch):
    monkeypatch.setenv("KIT_OUTPUTS", str(tiny_study))
    papermill.execute_notebook(
        str(NOTEBOOK), str(tmp_path / "08.ipynb"), parameters={"study_name": "nb", "top": 2},
        cwd=str(tmp_path), kernel_name="python3", progress_bar=False,
    )  # fmt: skip
    executed = nbformat.read(tmp_path / "08.ipynb", as_version=4)
    text = json.dumps([c.get("outputs", []) for c in executed.cells])
    assert "-p lr " in text and "-p data_dir " in text and "nb-t00" in text and "image/png" in text
    for plot in ("history", "importances", "parallel"):
        assert (tiny_study / "studies" / "nb" / "plots" / f"{plot}.png").stat().st_size > 0


@pytest.mark.slow
def test_tune_notebook_under_nbval(tiny_study, tmp_path):
    copy = tmp_path / "08_tune.ipynb"
    papermill.execute_notebook(
        str(NOTEBOOK), str(copy), parameters={"study_name": "nb"}, prepare_only=True, kernel_name="python3"
    )
    result = run_nbval(copy, tiny_study, tmp_path, timeout=300)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]


def test_tune_notebook_refuses_unknown_parameters():
    own = "# parameters\nstudy_name = 'demo'\nstorage = ''\ntop = 5\n"
    study_views.check_tune_parameters([own])
    with pytest.raises(ConfigError, match=r"\['study'\] are not parameters of 08_tune"):
        study_views.check_tune_parameters([own, "# Parameters\nstudy = 'x'\n"])


# -- PostgreSQL ------------------------------------------------------------------------------------------------
def _pg_bin() -> Path | None:
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    return versions[-1].parent if versions else None


@pytest.fixture
def postgres():
    """A PostgreSQL server of the system's package in a temp folder on 127.0.0.1, with a password; as a
    non-root user when the tests run as root (postgres refuses root). Yields (URL without password,
    password)."""
    bindir = _pg_bin()
    if bindir is None:
        pytest.skip("PostgreSQL is not installed (Debian: apt-get install postgresql; .ci/run installs it)")
    as_user: list[str] = []
    if os.geteuid() == 0:
        if not shutil.which("runuser"):
            pytest.skip("running as root without runuser: postgres refuses to run as root")
        as_user = ["runuser", "-u", "nobody", "--"]
    folder = Path(tempfile.mkdtemp(prefix="kit-pg-"))
    password = "s3cret-tune-pw"
    (folder / "pw").write_text(password + "\n")
    if as_user:
        folder.chmod(0o755)
        shutil.chown(folder, "nobody")
        shutil.chown(folder / "pw", "nobody")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    def pg(*command: str) -> subprocess.CompletedProcess:
        return subprocess.run([*as_user, *command], capture_output=True, text=True, timeout=120, cwd=folder)

    init = pg(str(bindir / "initdb"), "-D", str(folder / "data"), "-U", "kit", "--auth=scram-sha-256",
              f"--pwfile={folder / 'pw'}")  # fmt: skip
    if init.returncode != 0:
        shutil.rmtree(folder, ignore_errors=True)
        pytest.skip(f"initdb failed: {init.stderr[-500:]}")
    options = f"-h 127.0.0.1 -p {port} -k {folder}"
    start = pg(
        str(bindir / "pg_ctl"),
        "-D",
        str(folder / "data"),
        "-o",
        options,
        "-l",
        str(folder / "log"),
        "-w",
        "start",
    )
    try:
        assert start.returncode == 0, start.stdout + start.stderr
        yield f"postgresql://kit@127.0.0.1:{port}/postgres", password
    finally:
        pg(str(bindir / "pg_ctl"), "-D", str(folder / "data"), "-m", "immediate", "stop")
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.slow
def test_two_workers_share_a_study_through_postgresql(postgres, outputs, csv_dataset, monkeypatch):
    url, password = postgres
    env = {study_storage.PASSWORD_ENV: password}
    fixed = cli_params(base(csv_dataset, epochs=2))
    workers = [worker("pg", 6, outputs, "--storage", url, *fixed, env=env) for _ in range(2)]
    outs = [finish(w) for w in workers]
    monkeypatch.setenv(study_storage.PASSWORD_ENV, password)
    study, _ = tune.load_study("pg", url)
    check_shared_study(study, "pg", outputs, outs, 6)
    assert not (outputs / "studies" / "pg" / "journal.log").exists()  # the database held the study
    # the password is in no output and no file the workers wrote
    assert all(password not in out for out in outs)
    for path in outputs.rglob("*"):
        if path.is_file():
            assert password.encode() not in path.read_bytes(), path
    monkeypatch.delenv(study_storage.PASSWORD_ENV)
    with pytest.raises(Exception, match="password"):
        tune.load_study("pg", url)  # without the password the server refuses
