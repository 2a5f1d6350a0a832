"""Config: defaults, validation of names, types and values, JSON round trip, notebook parameters."""

from __future__ import annotations

import json

import pytest

from helpers.config import Config, ConfigError, config_from_cells, parameter_names


def test_defaults_build():
    cfg = Config()
    assert cfg.n_folds == 5
    assert cfg.folds == [0]
    assert cfg.backbone == "resnet18"
    assert cfg.pretrained is True  # users fine-tune pretrained backbones; the demo and tests say False
    assert Config.from_dict({}) == cfg


def test_default_lists_are_not_shared():
    a, b = Config(), Config()
    a.folds.append(1)
    assert b.folds == [0]


def test_unknown_name_is_named_and_known_names_listed():
    with pytest.raises(ConfigError) as info:
        Config.from_dict({"epoch": 3})
    message = str(info.value)
    assert "'epoch'" in message
    for known in ("epochs", "backbone", "n_folds", "ensemble_runs"):
        assert known in message


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("epochs", "abc"),
        ("epochs", 2.5),
        ("epochs", True),
        ("pretrained", "maybe"),
        ("pretrained", 1),
        ("lr", "x"),
        ("lr", False),
        ("backbone", 123),
        ("folds", "0,x"),
    ],
)
def test_wrong_type_names_the_setting(name, value):
    with pytest.raises(ConfigError) as info:
        Config.from_dict({name: value})
    assert str(info.value).startswith(f"{name}")
    assert repr(value if name != "folds" else "x") in str(info.value)


def test_lossless_coercions_accepted():
    cfg = Config.from_dict(
        {
            "epochs": 3.0,
            "pretrained": "true",
            "ema": "False",
            "folds": "0,1",
            "lr": 1,
            "tta_views": "identity, hflip",
            "run_name": None,
        }
    )
    assert cfg.epochs == 3 and type(cfg.epochs) is int
    assert cfg.pretrained is True
    assert cfg.ema is False
    assert cfg.folds == [0, 1]
    assert cfg.lr == 1.0 and type(cfg.lr) is float
    assert cfg.tta_views == ["identity", "hflip"]
    assert cfg.run_name == ""


def test_single_and_empty_fold_values():
    assert Config.from_dict({"folds": 2}).folds == [2]
    assert Config.from_dict({"folds": ["1", 3]}).folds == [1, 3]
    assert Config.from_dict({"folds": ""}).folds == []
    assert Config.from_dict({"folds": []}).folds == []


@pytest.mark.parametrize(
    ("name", "value", "allowed"),
    [
        ("optimizer", "adam", ["adamw", "sgd"]),
        ("layout", "folders", ["auto", "csv", "imagefolder"]),
        ("precision", "fp64", ["auto", "fp32", "bf16", "fp16"]),
        ("monitor", "acc", ["auto", "val_acc", "val_map", "val_loss"]),
    ],
)
def test_literal_choices_rejected_with_allowed_values(name, value, allowed):
    with pytest.raises(ConfigError) as info:
        Config.from_dict({name: value})
    message = str(info.value)
    assert name in message and repr(value) in message
    assert str(allowed) in message


def test_literal_choice_accepted():
    assert Config.from_dict({"optimizer": "sgd", "scheduler": "none"}).optimizer == "sgd"


@pytest.mark.parametrize("n_folds", [1, 0, -3])
def test_n_folds_below_two_rejected(n_folds):
    with pytest.raises(ConfigError, match="n_folds"):
        Config.from_dict({"n_folds": n_folds, "folds": []})


@pytest.mark.parametrize(("n_folds", "folds"), [(5, [5]), (3, [0, 3]), (2, [-1])])
def test_fold_index_out_of_range_rejected(n_folds, folds):
    with pytest.raises(ConfigError) as info:
        Config.from_dict({"n_folds": n_folds, "folds": folds})
    assert str(info.value).startswith("folds=")
    assert f"0..{n_folds - 1}" in str(info.value)


def test_fold_listed_twice_rejected():
    with pytest.raises(ConfigError, match="twice"):
        Config.from_dict({"folds": [1, 1]})


def test_last_fold_index_accepted():
    assert Config.from_dict({"n_folds": 3, "folds": [0, 1, 2]}).folds == [0, 1, 2]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("epochs", 0),
        ("lr", 0.0),
        ("label_smoothing", 1.0),
        ("ema_decay", 1.0),
        ("img_size", 4),
        ("image_ext", "jpg"),
        ("num_workers", -2),
    ],
)
def test_impossible_values_rejected(name, value):
    with pytest.raises(ConfigError) as info:
        Config.from_dict({name: value})
    assert str(info.value).startswith(f"{name}=")


def test_replace_validates():
    cfg = Config(epochs=2)
    assert cfg.replace(lr=0.1).lr == 0.1
    assert cfg.replace(lr=0.1).epochs == 2
    with pytest.raises(ConfigError, match="epochs"):
        cfg.replace(epochs="many")


def test_save_load_round_trip(tmp_path):
    cfg = Config.from_dict(
        {
            "epochs": 7,
            "folds": [0, 2],
            "backbone": "resnet34",
            "pretrained": True,
            "tta_views": ["identity", "hflip"],
            "lr": 1e-4,
            "optimizer": "sgd",
        }
    )
    path = tmp_path / "run" / "config.json"
    cfg.save(path)
    assert json.loads(path.read_text())["folds"] == [0, 2]
    loaded = Config.load(path)
    assert loaded == cfg
    assert loaded is not cfg
    assert [p.name for p in tmp_path.joinpath("run").iterdir()] == ["config.json"]  # no temp file left


def test_load_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Config.load(tmp_path / "nope" / "config.json")


def test_load_rejects_unknown_saved_setting(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**Config().to_dict(), "old_setting": 1}))
    with pytest.raises(ConfigError, match="old_setting"):
        Config.load(path)


# -- notebooks ------------------------------------------------------------------------------------------
def test_parameter_names_from_parameter_cells_only():
    cells = [
        "import numpy as np\nx = 1\n",
        "# parameters\nepochs = 5  # comment\nlr: float = 0.01\nbackbone = 'resnet18'\n",
        "y = 2\n",
        "# Parameters\nepochs = 2\nextra = 'typo'\n",
        "print('# parameters')\nz = 3\n",
    ]
    assert parameter_names(cells) == ["epochs", "lr", "backbone", "extra"]


def test_parameter_names_case_insensitive_and_leading_whitespace():
    assert parameter_names(["\n  # PARAMETERS\na = 1\n"]) == ["a"]
    assert parameter_names(["a = 1\n# parameters\nb = 2\n"]) == []


def test_parameter_names_ignores_non_name_targets():
    assert parameter_names(["# parameters\nd = {}\nd['k'] = 1\nx, y = 1, 2\nn = 3\n"]) == ["d", "n"]


def test_config_from_cells_rejects_injected_unknown_name():
    namespace = {
        "In": ["", "# parameters\nepochs = 5\nlr = 0.003\n", "# Parameters\nepochs = 1\nbatchsize = 8\n"],
        "epochs": 1,
        "lr": 0.003,
        "batchsize": 8,
    }
    with pytest.raises(ConfigError) as info:
        config_from_cells(namespace, namespace["In"])
    assert "'batchsize'" in str(info.value)
    assert "batch_size" in str(info.value)


def test_config_from_cells_applies_values_on_base():
    base = Config(backbone="resnet34", epochs=7, seed=3)
    namespace = {
        "In": ["", "# parameters\nepochs = 5\nlr = 0.003\n", "# Parameters\nepochs = 2\n", "other = 9\n"],
        "epochs": 2,
        "lr": 0.01,
        "other": 9,
        "seed": 99,  # not in a parameters cell: ignored
    }
    cfg = config_from_cells(namespace, namespace["In"], base=base)
    assert cfg.epochs == 2
    assert cfg.lr == 0.01
    assert cfg.backbone == "resnet34"
    assert cfg.seed == 3
    assert base.epochs == 7  # the base is not modified


def test_config_from_cells_without_base_uses_defaults_and_checks_types():
    namespace = {"In": ["# parameters\npretrained = 'yes'\n"], "pretrained": "yes"}
    with pytest.raises(ConfigError, match="pretrained"):
        config_from_cells(namespace, namespace["In"])
    cfg = config_from_cells({"n_folds": 3}, ["# parameters\nn_folds = 3\n"])
    assert cfg.n_folds == 3 and cfg.epochs == Config().epochs


def test_constructor_checks_types_too():
    with pytest.raises(ConfigError, match="pretrained"):
        Config(pretrained="maybe")


def test_bracketed_list_text_accepted():
    assert Config.from_dict({"folds": "[0, 1]"}).folds == [0, 1]


def test_calibrate_is_refused_for_a_multilabel_run_before_anything_is_predicted():
    with pytest.raises(ConfigError, match="calibrate=True: temperature scaling is for multiclass"):
        Config(task="multilabel", calibrate=True)
    assert Config(task="multiclass", calibrate=True).calibrate
