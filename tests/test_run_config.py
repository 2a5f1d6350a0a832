"""Which value wins: a run's saved config against a notebook's parameters (helpers.notebook.start)."""

from __future__ import annotations

import pytest

from helpers import notebook
from helpers.config import Config, ConfigError, passed_values, settle_run_config
from helpers.run_folder import RunFolder

OWN_04 = '# parameters\nrun_name = ""\nbackbone = "resnet18"\ncheckpoint = "best_score"\n'


def start(
    monkeypatch: pytest.MonkeyPatch, stage: str, cells: list[str], **values
) -> tuple[Config, RunFolder]:
    """notebook.start as a notebook runs it: these parameter cells ran, leaving these values."""
    monkeypatch.setattr(notebook, "PARAMETER_CELLS", cells)
    return notebook.start(values, stage)


def trained_run(name: str, **settings) -> RunFolder:
    """A run folder whose config.json holds these settings and whose fold 0 has trained."""
    run = RunFolder.named(name).create()
    run.write_config(Config(run_name=name, **settings))
    run.record_metrics({"fold": 0, "epoch": 0, "val_acc": 0.5})
    return run


def test_a_later_notebooks_default_backbone_only_names_the_run(outputs, monkeypatch):
    """The silent wrong result: 04's `backbone = "resnet18"` default replaced the trained backbone."""
    trained_run("r1", backbone="test_resnet", img_size=32)
    cells = [OWN_04, '# Parameters\nrun_name = "r1"\n']
    cfg, run = start(
        monkeypatch, "evaluate", cells, run_name="r1", backbone="resnet18", checkpoint="best_score"
    )
    assert run.name == "r1"
    assert (cfg.backbone, cfg.img_size) == ("test_resnet", 32)


def test_a_passed_value_that_contradicts_the_trained_run_names_both(outputs, monkeypatch):
    trained_run("r1", backbone="test_resnet", img_size=32)
    cells = [OWN_04, '# Parameters\nrun_name = "r1"\nbackbone = "resnet50"\n']
    with pytest.raises(ConfigError) as err:
        start(monkeypatch, "evaluate", cells, run_name="r1", backbone="resnet50", checkpoint="best_score")
    message = str(err.value)
    assert "backbone='resnet50'" in message and "'test_resnet'" in message
    assert "run_name" in message and "r1" in message and "config.json" in message


def test_an_edited_value_in_the_notebooks_own_cell_counts_too(outputs, monkeypatch):
    """In JupyterLab there is no injected cell: a value changed from the default is a passed value."""
    trained_run("r1", backbone="test_resnet")
    cells = ['# parameters\nrun_name = "r1"\nbackbone = "resnet50"\n']
    with pytest.raises(ConfigError, match="backbone='resnet50'"):
        start(monkeypatch, "predict", cells, run_name="r1", backbone="resnet50")


def test_prediction_and_machine_settings_stay_free(outputs, monkeypatch):
    trained_run("r1", backbone="test_resnet", tta_views=["identity"], num_workers=0)
    cells = [OWN_04, '# Parameters\nrun_name = "r1"\ntta_views = ["identity", "hflip"]\nnum_workers = 2\n']
    cfg, _ = start(
        monkeypatch,
        "evaluate",
        cells,
        run_name="r1",
        backbone="resnet18",
        checkpoint="ema",
        tta_views=["identity", "hflip"],
        num_workers=2,
    )
    assert (cfg.checkpoint, cfg.tta_views, cfg.num_workers) == ("ema", ["identity", "hflip"], 2)


def test_training_settings_are_free_until_a_fold_has_trained(outputs, monkeypatch):
    run = RunFolder.named("r2").create()
    run.write_config(Config(run_name="r2", epochs=5))  # as 01 leaves it: training settings at defaults
    cells = ['# parameters\nrun_name = "r2"\nepochs = 2\n']
    cfg, _ = start(monkeypatch, "train", cells, run_name="r2", epochs=2)
    assert cfg.epochs == 2
    run.record_metrics({"fold": 0, "epoch": 0, "val_acc": 0.5})
    with pytest.raises(ConfigError, match="epochs=3"):
        start(monkeypatch, "train", ['# parameters\nrun_name = "r2"\nepochs = 3\n'], run_name="r2", epochs=3)


def test_data_settings_are_fixed_by_01_for_the_later_notebooks(outputs, monkeypatch):
    run = RunFolder.named("r3").create()
    run.write_config(Config(run_name="r3", n_folds=5))
    injected = ['# parameters\nrun_name = ""\n', '# Parameters\nrun_name = "r3"\nn_folds = 3\n']
    with pytest.raises(ConfigError, match="n_folds=3"):
        start(monkeypatch, "train", injected, run_name="r3", n_folds=3)
    cfg, _ = start(monkeypatch, "data", injected, run_name="r3", n_folds=3)  # 01 owns them: not trained yet
    assert cfg.n_folds == 3
    run.record_metrics({"fold": 0, "epoch": 0, "val_acc": 0.5})
    with pytest.raises(ConfigError, match="n_folds=3"):
        start(monkeypatch, "data", injected, run_name="r3", n_folds=3)


def test_asking_again_for_the_automatic_size_is_no_contradiction(outputs, monkeypatch):
    trained_run("r4", img_size=64)
    cfg, _ = start(
        monkeypatch, "train", ['# parameters\nrun_name = "r4"\nimg_size = 0\n'], run_name="r4", img_size=0
    )
    assert cfg.img_size == 64


def test_evaluate_needs_the_runs_config(outputs, monkeypatch):
    with pytest.raises(FileNotFoundError, match="01_data.*03_train.*'nothing'"):
        start(monkeypatch, "evaluate", ['# parameters\nrun_name = "nothing"\n'], run_name="nothing")


def test_passed_values_rules():
    cells = [
        '# parameters\nbackbone = "resnet18"\nepochs = 7\ncheckpoint = "best_score"\n',
        "# Parameters\nlr = 0.003\n",
    ]
    values = {"backbone": "resnet18", "epochs": 7, "checkpoint": "best_score", "lr": 0.003}
    # owned: always passed; not owned: passed when injected or changed from the default
    assert passed_values(values, cells, owned={"checkpoint"}) == {
        "epochs": 7,
        "checkpoint": "best_score",
        "lr": 0.003,
    }
    assert passed_values(values, cells) == values
    with pytest.raises(ConfigError, match="epochz"):
        passed_values({"epochz": 1}, ["# Parameters\nepochz = 1\n"], owned=set())


def test_settle_lists_every_conflict(tmp_path):
    saved = Config(backbone="a", lr=0.1, seed=1)
    with pytest.raises(ConfigError) as err:
        settle_run_config({"backbone": "b", "seed": 2, "lr": 0.1}, saved, ["data", "train"], tmp_path / "r")
    assert "backbone='b' (the run has 'a')" in str(err.value) and "seed=2 (the run has 1)" in str(err.value)
    assert settle_run_config({"seed": 2}, saved, ["train"], tmp_path / "r").seed == 2


def _other_value(name: str, k: int = 1) -> object:
    """The k-th valid value of a setting other than its default (a bool has one)."""
    default = getattr(Config(), name)
    if isinstance(default, bool):
        return not default
    if isinstance(default, int):
        return default + k + 1
    if isinstance(default, list):
        return [["identity", "hflip"], ["hflip"]][k - 1] if name == "tta_views" else [f"r{k}"]
    return {"checkpoint": ["ema", "last"][k - 1]}.get(name, f"{default}_{k}")


FREE_SETTINGS = Config.names_of("predict", "machine")
NOTEBOOK_STAGES = ("data", "preview", "train", "evaluate", "predict")


@pytest.mark.parametrize("name", FREE_SETTINGS)
def test_a_free_setting_the_run_holds_is_not_replaced_by_a_cells_default(outputs, monkeypatch, name):
    """The Planet-style defect: test_dir given to 01 was replaced by 05's own `test_dir = "test_image"`.
    A notebook's cell default (nbval, JupyterLab: no injected cell) leaves the run's value; an injected
    value (papermill) or an edited one wins, even when it is the default."""
    held, default = _other_value(name), getattr(Config(), name)
    trained_run("f1", **{name: held})
    own = f'# parameters\nrun_name = "f1"\n{name} = {default!r}\n'
    for stage in NOTEBOOK_STAGES:
        cfg, _ = start(monkeypatch, stage, [own], run_name="f1", **{name: default})
        assert getattr(cfg, name) == held, (stage, "nbval: the cell's default")
        papermill_cells = ['# parameters\nrun_name = ""\n', '# Parameters\nrun_name = "f1"\n']
        cfg, _ = start(monkeypatch, stage, papermill_cells, run_name="f1")
        assert getattr(cfg, name) == held, (stage, "papermill without the setting")
        injected = [own, f'# Parameters\nrun_name = "f1"\n{name} = {default!r}\n']
        cfg, _ = start(monkeypatch, stage, injected, run_name="f1", **{name: default})
        assert getattr(cfg, name) == default, (stage, "papermill: an injected value wins")
        edited = _other_value(name, 2)
        cfg, _ = start(monkeypatch, stage, [f"# parameters\nrun_name = \"f1\"\n{name} = {edited!r}\n"],
                       run_name="f1", **{name: edited})  # fmt: skip
        assert getattr(cfg, name) == edited, (stage, "an edited cell wins")


def test_a_free_setting_of_a_run_without_it_takes_the_default(outputs, monkeypatch):
    RunFolder.named("f2").create().write_config(Config(run_name="f2"))
    cfg, _ = start(monkeypatch, "predict", ['# parameters\nrun_name = "f2"\ntest_dir = "test_image"\n'],
                   run_name="f2", test_dir="test_image")  # fmt: skip
    assert cfg.test_dir == "test_image"
