"""The run folder's one owner: paths, writers and readers, and the import graph it lets point one way."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pandas as pd
import pytest

from helpers import runner
from helpers.config import Config, ConfigError
from helpers.paths import project_root
from helpers.run_folder import RunFolder, metric_key


def test_a_run_is_named_by_run_name_or_the_backbone(outputs):
    assert RunFolder.of(Config(backbone="test_resnet")).path == outputs / "runs" / "test_resnet"
    assert RunFolder.of(Config(backbone="test_resnet", run_name="r1")).name == "r1"


def test_checkpoint_kinds_are_checked(tmp_path):
    run = RunFolder(tmp_path)
    assert run.checkpoint(2, "best_loss") == tmp_path / "checkpoints" / "fold2_best_loss.pt"
    with pytest.raises(ValueError, match="best_score"):
        run.checkpoint(0, "best")


def test_a_replayed_epoch_replaces_its_row_and_the_later_ones(tmp_path):
    run = RunFolder(tmp_path)
    for fold, epoch in [(0, 0), (0, 1), (0, 2), (1, 0)]:
        run.record_metrics({"fold": fold, "epoch": epoch, "val_acc": 0.1})
    run.record_metrics({"fold": 0, "epoch": 1, "val_acc": 0.9})
    rows = run.read_metrics()
    assert list(zip(rows["fold"], rows["epoch"], strict=True)) == [(0, 0), (1, 0), (0, 1)]
    assert run.read_metrics(fold=0)["val_acc"].tolist() == [0.1, 0.9]


def test_trained_means_a_metrics_row_or_a_checkpoint(tmp_path):
    run = RunFolder(tmp_path / "r").create()
    assert not run.trained()
    run.checkpoint(1, "last").parent.mkdir()
    run.checkpoint(1, "last").write_bytes(b"x")
    assert run.trained() and run.trained_folds("last", 3) == {1: run.checkpoint(1, "last")}


def test_finished_marker_round_trip(tmp_path):
    run = RunFolder(tmp_path)
    assert run.finished_parameters() is None
    run.mark_finished({"backbone": "test_resnet"})
    assert run.finished_parameters() == {"backbone": "test_resnet"}
    run.clear_finished()
    assert run.finished_parameters() is None


def test_dropped_rows_file_only_when_rows_were_dropped(tmp_path):
    run = RunFolder(tmp_path)
    run.write_dropped_rows(pd.DataFrame({"id": ["a"]}))
    assert run.dropped_rows.exists()
    run.write_dropped_rows(pd.DataFrame({"id": []}))
    assert not run.dropped_rows.exists()


def test_evaluation_keys():
    assert metric_key("accuracy", tta=False) == "val_acc"
    assert metric_key("macro_f1", tta=True) == "val_macro_f1_tta"


def test_the_runner_refuses_a_missing_notebook(monkeypatch, tmp_path):
    monkeypatch.setenv("KIT_ROOT", str(tmp_path))
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "notebooks" / "01_data.ipynb").write_text("{}")
    with pytest.raises(ConfigError, match="02_augment_preview.ipynb"):
        runner.series_notebooks()


def imports_of(path: Path) -> set[str]:
    """The helpers modules a module imports, at any depth of its code."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("helpers."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.ImportFrom) and node.module == "helpers":
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("helpers.")}
    return found


def module_map() -> list[str]:
    """The helpers modules in the order of docs/design.md's module map: bottom layer first, each row's
    modules in their order."""
    text = (project_root() / "docs" / "design.md").read_text()
    table = text[text.index("| layer | modules | owns |") :].split("\n\n")[0]
    rows = [line.split("|")[2] for line in table.splitlines()[2:]]
    return [name for row in rows for name in re.findall(r"`(\w+)`", row)]


def test_imports_follow_the_module_map():
    """Every helpers module is in the design notes' module map, and imports only modules above it there
    (or earlier in its own row): a wrong-way import fails here, and so does a cycle."""
    order = module_map()
    modules = {p.stem for p in (project_root() / "helpers").glob("*.py")} - {"__init__"}
    assert sorted(order) == sorted(modules), "docs/design.md's module map must list each helpers module once"
    position = {name: i for i, name in enumerate(order)}
    wrong = [
        f"{p.stem} -> {imported}"
        for p in (project_root() / "helpers").glob("*.py")
        if p.stem in position
        for imported in imports_of(p) - {p.stem}
        if position[imported] > position[p.stem]
    ]
    assert not wrong, f"imports against docs/design.md's module map: {wrong}"
