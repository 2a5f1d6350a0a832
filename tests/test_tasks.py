"""The task objects: one place for what differs between single-label and multi-label runs."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from helpers.multilabel_metrics import predict_sets, threshold_scores
from helpers.paths import project_root
from helpers.tasks import TASKS, MultiLabel, SingleLabel, task_named
from helpers.thresholds import tune_thresholds

# where the task is resolved from the labels and the settings, before any task object exists
RESOLVING = {"tasks.py", "label_sets.py", "tables.py", "config.py"}
BRANCH = re.compile(r"""task\w*(\([^)]*\))? *[!=]= *["'](multiclass|multilabel)["']""")


def branches(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if BRANCH.search(line)]


def test_no_task_branch_outside_the_task_objects_and_the_resolving_modules():
    found = {}
    for path in sorted((project_root() / "helpers").glob("*.py")):
        if path.name not in RESOLVING and (lines := branches(path.read_text())):
            found[path.name] = lines
    for path in sorted((project_root() / "notebooks").glob("*.ipynb")):
        cells = json.loads(path.read_text())["cells"]
        if lines := branches("\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")):
            found[path.name] = lines
    assert not found, f"ask the task object instead of branching on its name: {found}"


def test_the_branch_pattern_catches_the_usual_spellings():
    assert branches('if cfg.task == "multilabel":\n    pass')
    assert branches("x = 1 if task != 'multiclass' else 2")
    assert branches('if run_task(cfg) == "multilabel":')
    assert not branches('task = task_for(cfg)\nname = "multilabel"')


def test_task_named_gives_each_task_and_refuses_auto():
    assert [type(task_named(name)) for name in TASKS] == [SingleLabel, MultiLabel]
    assert task_named("multilabel", allow_empty=True).allow_empty
    with pytest.raises(ValueError, match="run 01_data"):
        task_named("auto")


def test_a_multilabel_row_without_a_class_over_its_threshold_gets_its_most_probable_class():
    probabilities = np.array([[0.9, 0.2, 0.1], [0.3, 0.4, 0.2], [0.1, 0.1, 0.6]])
    targets = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1]])
    thresholds = tune_thresholds(targets, probabilities, list("abc"), "best_score", ["identity"])
    thresholds = type(thresholds)(**{**thresholds.to_dict(), "per_class": {"a": 0.5, "b": 0.5, "c": 0.5}})
    filled = MultiLabel(allow_empty=False).decide(probabilities, thresholds)
    np.testing.assert_array_equal(filled, [[1, 0, 0], [0, 1, 0], [0, 0, 1]])
    kept = MultiLabel(allow_empty=True).decide(probabilities, thresholds)
    np.testing.assert_array_equal(kept, [[1, 0, 0], [0, 0, 0], [0, 0, 1]])
    note = MultiLabel(allow_empty=False).decision_note(probabilities, thresholds)
    assert note.startswith("1 of 3 rows") and "most probable class" in note
    assert "empty sets" in MultiLabel(allow_empty=True).decision_note(probabilities, thresholds)
    assert MultiLabel().decision_note(probabilities[[0, 2]], thresholds) == ""
    # the scores at thresholds follow the same rule: the filled row is right, the empty one a miss
    assert threshold_scores(targets, probabilities, 0.5, allow_empty=False)["subset_accuracy"] == 1.0
    assert threshold_scores(targets, probabilities, 0.5, allow_empty=True)[
        "subset_accuracy"
    ] == pytest.approx(2 / 3)
    np.testing.assert_array_equal(predict_sets(probabilities, 0.5, allow_empty=False), filled)


def test_03_and_04_share_one_macro_f1_over_the_classes_with_a_positive():
    targets = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0]], dtype=np.float32)
    logits = np.array([[2.0, -2.0, 1.0], [-2.0, 2.0, 1.0], [2.0, 2.0, -2.0]], dtype=np.float32)
    task = MultiLabel()
    epoch = task.epoch_metrics(logits, targets)
    probabilities = 1 / (1 + np.exp(-logits))
    summary = task.summary(targets, probabilities)
    assert epoch["val_f1_macro"] == pytest.approx(summary["f1_macro"]) == pytest.approx(1.0)
    assert epoch["val_f1_micro"] == pytest.approx(summary["f1_micro"])
    assert epoch["val_map"] == pytest.approx(summary["map"])


def test_single_label_epoch_accuracy_is_the_summary_accuracy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(40, 4)).astype(np.float32)
    labels = rng.integers(0, 4, 40)
    task = SingleLabel()
    probabilities = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    assert task.epoch_metrics(logits, labels)["val_acc"] == pytest.approx(
        task.summary(labels, probabilities)["accuracy"]
    )


def test_the_weak_model_caution_follows_the_view_score():
    targets = np.array([0, 1, 2, 0])
    right = np.eye(3)[targets]
    task = SingleLabel()
    assert task.reliability_note(targets, right) == ""
    assert "caution" in task.reliability_note(targets, np.eye(3)[[1, 2, 0, 1]])


def test_stop_here_ends_the_run_until_its_parameters_cell_runs_again():
    """05 without a test set stops once: the later cells run nothing, a new run (its parameters cell) runs."""
    from IPython.core.interactiveshell import InteractiveShell

    from helpers import notebook

    shell, recorded = InteractiveShell.instance(), list(notebook.PARAMETER_CELLS)
    try:
        notebook._install_hooks()
        shell.run_cell("from helpers.notebook import stop_here\nstop_here('no test set: nothing to predict')")
        assert notebook.STOPPED == ["no test set: nothing to predict"]
        shell.run_cell("after_the_stop = 1")
        assert "after_the_stop" not in shell.user_ns
        shell.run_cell("# parameters\nnew_run = 1")
        shell.run_cell("after_a_new_run = 1")
        assert shell.user_ns["new_run"] == shell.user_ns["after_a_new_run"] == 1 and not notebook.STOPPED
    finally:
        notebook.STOPPED.clear()
        notebook.PARAMETER_CELLS[:] = recorded
        InteractiveShell.clear_instance()
