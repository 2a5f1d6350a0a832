"""Blending runs: the arithmetic on hand-made out-of-fold matrices whose right weights are known, the nested
estimate, refusing runs that do not fit together, the blend folder and its submission, and an
interrupted write."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import nbformat
import numpy as np
import pandas as pd
import papermill
import pytest
import torch
from notebook_runs import run_nbval
from test_sweep import tiny_dataset
from train_fixtures import tiny_config

from helpers import blend, fusion
from helpers.config import Config
from helpers.dataset import prepare_dataset
from helpers.errors import MissingFileError
from helpers.holdout import checked_test_images, sample_submission
from helpers.inference import ensemble_members, trained_checkpoints
from helpers.paths import notebooks_dir
from helpers.reports import evaluate_oof, oof_frame, predict_test, write_test_predictions
from helpers.run_folder import BlendFolder, RunFolder
from helpers.settings import resolve_settings
from helpers.tables import detect_layout, list_test_images
from helpers.tasks import MultiLabel, SingleLabel
from helpers.train import train_folds

CLASSES = ["a", "b", "c"]
N = 60  # out-of-fold rows: 3 folds of 20


def one_hot(labels: np.ndarray, confidence: float = 0.9, classes: int = 3) -> np.ndarray:
    """Right on every row, with `confidence` on the true class."""
    p = np.full((len(labels), classes), (1 - confidence) / (classes - 1))
    p[np.arange(len(labels)), labels] = confidence
    return p


def noise(rng: np.random.Generator, n: int, classes: int = 3) -> np.ndarray:
    return rng.dirichlet(np.ones(classes), size=n)


@pytest.fixture
def single():
    """Targets, folds, and three members: perfect, useless (random), and the perfect one again."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, N)
    perfect = one_hot(labels)
    P = np.stack([perfect, noise(rng, N), perfect.copy()])
    return SingleLabel(), labels, np.repeat([0, 1, 2], N // 3), P


@pytest.fixture
def multi():
    """Multi-hot targets (4 classes), folds, and members perfect, useless and perfect again."""
    rng = np.random.default_rng(1)
    targets = (rng.random((N, 4)) < 0.4).astype(int)
    targets[targets.sum(1) == 0, 0] = 1
    perfect = np.where(targets == 1, 0.8, 0.2)
    P = np.stack([perfect, rng.random((N, 4)), perfect.copy()])
    return MultiLabel(), targets, np.repeat([0, 1, 2], N // 3), P


@pytest.mark.parametrize("case", ["single", "multi"])
def test_greedy_weights_the_perfect_member_alone(case, request):
    task, targets, _, P = request.getfixturevalue(case)
    weights = fusion.greedy_weights(P, targets, task.blend_objective)
    # the useless member never helps, and the duplicate ties with its original: a tie is no gain
    assert weights.tolist() == [1.0, 0.0, 0.0]
    assert (
        fusion.fit_method("mean", P, targets, task.blend_objective, task.stacking).weights.tolist()
        == [1 / 3] * 3
    )


@pytest.mark.parametrize("case", ["single", "multi"])
def test_the_stack_leans_on_the_perfect_members(case, request):
    task, targets, _, P = request.getfixturevalue(case)
    stack = fusion.fit_method("stack", P, targets, task.blend_objective, task.stacking)
    assert stack.influence[1] < 0.1 * min(stack.influence[0], stack.influence[2])
    assert stack.influence[0] == pytest.approx(stack.influence[2])  # duplicates share alike
    assert task.view_score(targets, stack.combine(P)) == 1.0


def test_greedy_weights_two_complementary_members_equally():
    """Each member is sure and right on its half of the rows and has no idea on the other half: the best
    blend is half of each, which greedy reaches with one of each and no more."""
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 3, N)
    half = np.arange(N) < N // 2
    first, second = one_hot(labels), one_hot(labels)
    first[~half], second[half] = 1 / 3, 1 / 3
    task = SingleLabel()
    weights = fusion.greedy_weights(np.stack([first, second]), labels, task.blend_objective)
    assert weights.tolist() == [0.5, 0.5]


def rows_of(labels: np.ndarray, true: float, wrong: float) -> np.ndarray:
    """Probabilities with `true` on the row's class, `wrong` on the next class and the rest on the third."""
    p = np.empty((len(labels), 3))
    p[np.arange(len(labels)), labels] = true
    p[np.arange(len(labels)), (labels + 1) % 3] = wrong
    p[np.arange(len(labels)), (labels + 2) % 3] = 1 - true - wrong
    return p


def test_greedy_picks_a_member_again_when_that_helps():
    """Three groups of rows: the strong member is right on the first and third, the weak one on the second.
    Alone the strong one scores 0.7, half and half 0.8 (the third group lost), two parts strong to one weak
    1.0: greedy reaches it only by picking the strong member again (with replacement)."""
    labels = np.random.default_rng(3).integers(0, 3, 100)
    groups = np.repeat([0, 1, 2], [50, 30, 20])
    strong = np.select(
        [groups[:, None] == g for g in range(3)],
        [rows_of(labels, 0.9, 0.05), rows_of(labels, 0.3, 0.4), rows_of(labels, 0.55, 0.25)],
    )
    weak = np.select(
        [groups[:, None] == g for g in range(3)],
        [rows_of(labels, 0.3, 0.4), rows_of(labels, 0.6, 0.2), rows_of(labels, 0.2, 0.6)],
    )
    P = np.stack([strong, weak])
    task = SingleLabel()
    assert [task.view_score(labels, p) for p in (strong, P.mean(0))] == [0.7, 0.8]
    weights = fusion.greedy_weights(P, labels, task.blend_objective)
    assert weights[0] > 0.5 > weights[1] > 0
    assert task.view_score(labels, fusion.weighted_mean(P, weights)) == 1.0


@pytest.mark.parametrize("case", ["single", "multi"])
@pytest.mark.parametrize("method", fusion.METHODS)
def test_nested_predictions_never_use_the_scored_fold(case, method, request):
    """A fold's nested predictions stay the same whatever that fold's own targets are, and change with
    the other folds' targets (the choice is made there)."""
    task, targets, folds, P = request.getfixturevalue(case)
    rng = np.random.default_rng(4)
    P = 0.5 * P + 0.5 * np.stack([noise(rng, N, P.shape[2]) for _ in P])  # members worth weighing
    nested = fusion.nested_predictions(method, P, targets, folds, task.blend_objective, task.stacking)
    for k in (0, 1, 2):
        changed = targets.copy()
        held = folds == k
        changed[held] = targets[held][::-1] if changed.ndim == 1 else 1 - targets[held]
        again = fusion.nested_predictions(method, P, changed, folds, task.blend_objective, task.stacking)
        np.testing.assert_array_equal(again[held], nested[held])
    assert (
        fusion.nested_predictions(method, P, targets, np.zeros(N), task.blend_objective, task.stacking)
        is None
    )


def test_nested_mean_is_the_plain_mean():
    rng = np.random.default_rng(5)
    P = np.stack([noise(rng, N), noise(rng, N)])
    nested = fusion.nested_predictions(
        "mean", P, np.zeros(N, int), np.repeat([0, 1, 2], 20), None, "multinomial"
    )
    np.testing.assert_allclose(nested, P.mean(0))


@pytest.mark.parametrize("case", ["single", "multi"])
@pytest.mark.parametrize("method", fusion.METHODS)
def test_a_combiner_survives_json(case, method, request):
    task, targets, _, P = request.getfixturevalue(case)
    fitted = fusion.fit_method(method, P, targets, task.blend_objective, task.stacking)
    again = fusion.combiner_from_dict(json.loads(json.dumps(fitted.to_dict())))
    np.testing.assert_array_equal(again.combine(P), fitted.combine(P))


# --- run folders ---------------------------------------------------------------------------------------------


def data_set(root: Path, task: str, n_test: int = 12, probability_columns: bool = True) -> Path:
    """A CSV data set whose test images are listed by a sample submission (probability columns, or one
    label column) and labelled by test_labels.csv."""
    rng = np.random.default_rng(6)
    (root / "test_image").mkdir(parents=True)
    ids = [f"t{i:02d}" for i in range(n_test)]
    for i in ids:
        cv2.imwrite(str(root / "test_image" / f"{i}.jpg"), rng.integers(0, 255, (8, 8, 3), dtype=np.uint8))
    pd.DataFrame({"id": [f"r{i}" for i in range(N)], "label": "a"}).to_csv(root / "train.csv", index=False)
    if task == "multilabel":
        labels = [" ".join(sorted(rng.choice(CLASSES, size=rng.integers(1, 3), replace=False))) for _ in ids]
    else:
        labels = list(rng.choice(CLASSES, size=n_test))
    pd.DataFrame({"id": ids, "label": labels}).to_csv(root / "test_labels.csv", index=False)
    sample = pd.DataFrame(
        {"id": ids} | ({c: 0.0 for c in CLASSES} if probability_columns else {"label": "a"})
    )
    sample.to_csv(root / "sample_submission.csv", index=False)
    return root


def labels_of(task: str, rng: np.random.Generator, n: int) -> list[str]:
    if task == "multilabel":
        return [
            " ".join(sorted(rng.choice(CLASSES, size=rng.integers(1, 3), replace=False))) for _ in range(n)
        ]
    return list(rng.choice(CLASSES, size=n))


def fake_run(
    data: Path,
    name: str,
    task: str,
    seed: int,
    labels: list[str],
    folds: np.ndarray | None = None,
    classes: list[str] = CLASSES,
    **settings,
) -> RunFolder:
    """A finished run's files as 04 and 05 write them (config.json, oof.csv, evaluation.json,
    test_probabilities.csv), with probabilities drawn from `seed`."""
    rng = np.random.default_rng(seed)
    cfg = Config(data_dir=str(data), task=task, n_folds=3, run_name=name, backbone="test_resnet", **settings)
    run = RunFolder.named(name).create()
    run.write_config(cfg)
    ids = [f"r{i}" for i in range(N)]
    folds = np.repeat([0, 1, 2], N // 3) if folds is None else folds
    p = rng.dirichlet(np.ones(len(classes)), N) if task == "multiclass" else rng.random((N, len(classes)))
    run.write_oof(oof_frame(ids, folds, labels, labels, p, classes))
    run.write_evaluation(
        {"task": task, "checkpoint": "best_score", "tta_views": ["identity"], "folds": [0, 1, 2]}
    )
    test_ids = pd.read_csv(data / "sample_submission.csv", dtype=str)["id"]
    t = (
        rng.dirichlet(np.ones(len(classes)), len(test_ids))
        if task == "multiclass"
        else rng.random((len(test_ids), len(classes)))
    )
    run.write_test_probabilities(
        pd.concat([pd.DataFrame({"id": test_ids}), pd.DataFrame(t, columns=classes)], axis=1)
    )
    return run


@pytest.fixture
def three_runs(outputs, tmp_path):
    data = data_set(tmp_path / "data", "multiclass")
    labels = labels_of("multiclass", np.random.default_rng(7), N)
    return data, labels, [fake_run(data, f"run{i}", "multiclass", i, labels) for i in range(3)]


def test_runs_that_do_not_fit_are_refused_by_name_with_the_reason(three_runs, tmp_path):
    data, labels, _ = three_runs
    fake_run(data, "other_folds", "multiclass", 10, labels, folds=np.tile([0, 1, 2], N // 3))
    fake_run(data, "other_classes", "multiclass", 11, labels, classes=["a", "b", "c", "d"])
    fake_run(data, "other_labels", "multiclass", 12, ["a"] * N)
    ensembled = fake_run(data, "ensembled", "multiclass", 13, labels, ensemble_runs=["run0"])
    RunFolder.named("untested").create().write_config(Config(data_dir=str(data), task="multiclass"))
    for name, reason in [
        ("other_folds", "other folds"),
        ("other_classes", "classes"),
        ("other_labels", "other labels"),
        ("ensembled", "ensemble_runs"),
        ("untested", "no oof.csv"),
    ]:
        with pytest.raises(blend.BlendRefused, match=f"{name}: .*{reason}"):
            blend.find_candidates(["run0", name])
    members, refused = blend.find_candidates()  # every finished run: the largest compatible group
    assert [m.name for m in members] == ["run0", "run1", "run2"]
    assert set(refused) == {"other_folds", "other_classes", "other_labels", ensembled.name}
    assert "other folds" in refused["other_folds"] and "4 image" not in refused["other_folds"]


def test_a_run_of_another_task_or_data_set_is_refused(three_runs, tmp_path):
    data, labels, _ = three_runs
    other = data_set(tmp_path / "other", "multilabel")
    fake_run(other, "labelsets", "multilabel", 20, labels_of("multilabel", np.random.default_rng(8), N))
    with pytest.raises(blend.BlendRefused, match="labelsets: task multilabel"):
        blend.find_candidates(["run0", "labelsets"])
    with pytest.raises(blend.BlendRefused, match="at least two"):
        blend.find_candidates(["run0"])


@pytest.mark.parametrize("method", fusion.METHODS)
def test_the_blend_file_round_trip(three_runs, method):
    members, _ = blend.find_candidates()
    inputs = blend.blend_inputs(members)
    result = blend.fit_blend(inputs, method)
    folder = blend.write_blend(result, f"mine_{method}")
    record = blend.read_blend(f"mine_{method}")
    assert record.method == method and record.task == "multiclass" and record.classes == CLASSES
    assert [(m.run, m.checkpoint, m.tta_views) for m in record.members] == [
        (n, "best_score", ["identity"]) for n in ("run0", "run1", "run2")
    ]
    assert [m.weight for m in record.members] == pytest.approx(result.combiner.influence.tolist())
    assert set(record.scores) == {"oof", "nested", "test"} and set(record.record["notes"]) == set(
        record.scores
    )
    tests = [RunFolder.named(m.run).read_test_probabilities().to_numpy() for m in record.members]
    written = folder.read_test_probabilities()
    np.testing.assert_allclose(record.combine(tests), written.to_numpy(), atol=1e-12)
    assert record.scores["test"]["accuracy"] == pytest.approx(result.scores["test"]["accuracy"])
    oof = folder.read_oof().set_index("id").loc[inputs.ids, [f"prob_{c}" for c in CLASSES]].to_numpy()
    np.testing.assert_allclose(oof, result.nested)  # rows the blend was not chosen on, as a run's oof.csv


@pytest.mark.parametrize("method", ["mean", "greedy"])
def test_the_blended_submission_is_the_weighted_average_by_hand(three_runs, method):
    """The submission's probability columns are the members' test probabilities (their 05's files) averaged
    with the weights blend.json names."""
    data, _, runs = three_runs
    members, _ = blend.find_candidates()
    folder = blend.write_blend(blend.fit_blend(blend.blend_inputs(members), method), "by_hand")
    weights = {m["run"]: m["weight"] for m in json.loads(folder.record.read_text())["members"]}
    by_hand = sum(weights[r.name] * r.read_test_probabilities() for r in runs)
    submission = pd.read_csv(folder.submission, dtype={"id": str}).set_index("id")
    sample = pd.read_csv(data / "sample_submission.csv", dtype={"id": str})
    assert submission.index.tolist() == sample["id"].tolist()
    np.testing.assert_allclose(
        submission[CLASSES].to_numpy(), by_hand.loc[submission.index, CLASSES].to_numpy()
    )
    assert sum(weights.values()) == pytest.approx(1.0)
    if method == "mean":
        assert list(weights.values()) == [1 / 3] * 3


def test_a_multilabel_blend_tunes_its_own_thresholds_and_decides_with_them(outputs, tmp_path):
    data = data_set(tmp_path / "ml", "multilabel", probability_columns=False)
    labels = labels_of("multilabel", np.random.default_rng(9), N)
    runs = [fake_run(data, f"ml{i}", "multilabel", i, labels, label_col="label") for i in range(2)]
    members, _ = blend.find_candidates()
    inputs = blend.blend_inputs(members)
    result = blend.fit_blend(inputs, "mean")
    folder = blend.write_blend(result)
    assert folder.name == "blend_mean"
    task = MultiLabel()
    columns = [f"prob_{c}" for c in CLASSES]
    blended_oof = np.mean(
        [r.read_oof().set_index("id").loc[inputs.ids, columns].to_numpy() for r in runs], axis=0
    )
    tuned = task.fit_thresholds(inputs.targets, blended_oof, CLASSES, "best_score", ["identity"])
    assert folder.read_thresholds()["per_class"] == tuned.per_class
    test = np.mean([r.read_test_probabilities()[CLASSES].to_numpy() for r in runs], axis=0)
    expected = task.label_texts(task.decide(test, tuned), CLASSES, " ")
    submission = pd.read_csv(folder.submission, dtype=str)
    assert submission["label"].tolist() == expected
    assert blend.read_blend("blend_mean").scores["test"]["map"] == pytest.approx(
        task.summary(inputs.test_targets, test, tuned)["map"]
    )


def test_an_interrupted_blend_leaves_no_half_written_file_and_no_record(three_runs, monkeypatch):
    members, _ = blend.find_candidates()
    result = blend.fit_blend(blend.blend_inputs(members), "mean")
    folder = blend.write_blend(result, "kept")
    before = folder.test_probabilities.read_text()

    class Killed(BaseException):
        pass

    def half_written(ids, probabilities, classes):
        class Half:
            def to_csv(self, f, index):
                f.write(b"id,a,b\nt00,0.1")
                raise Killed

        return Half()

    with monkeypatch.context() as killing, pytest.raises(Killed):
        killing.setattr(blend, "probabilities_frame", half_written)
        blend.write_blend(result, "kept")
    assert not folder.complete()  # the record went first: no blend.json describes the files left
    assert folder.test_probabilities.read_text() == before  # the old file whole, not the half one
    assert [p.name for p in folder.path.iterdir() if p.name.endswith(".tmp")] == []
    with pytest.raises(MissingFileError, match="interrupted"):
        blend.read_blend("kept")
    blend.write_blend(result, "kept")  # written again, into the same outputs folder
    assert blend.read_blend("kept").method == "mean" and folder.complete()


def test_the_command_line_writes_the_blend_and_lists_what_it_left_out(three_runs, capsys):
    data, labels, _ = three_runs
    fake_run(data, "other_folds", "multiclass", 10, labels, folds=np.tile([0, 1, 2], N // 3))
    assert blend.main(["--method", "stack", "--name", "cli"]) == 0
    out = capsys.readouterr().out
    assert "left out other_folds: other folds" in out and "nested accuracy" in out and "test accuracy" in out
    assert BlendFolder.named("cli").complete() and blend.read_blend("cli").method == "stack"
    assert blend.main(["--runs", "run0,other_folds"]) == 2  # a kit error: its message, no traceback
    assert "other_folds: other folds" in capsys.readouterr().err


def test_the_leaderboard_lists_blends_beside_runs(three_runs):
    from helpers import leaderboard

    for i, run in enumerate(RunFolder.named(f"run{i}") for i in range(3)):
        pd.DataFrame({"fold": [0], "epoch": [0], "val_acc": [0.5], "val_loss": [1.0], "seconds": [1.0],
                      "images_per_s": [10.0]}).to_csv(run.metrics, index=False)  # fmt: skip
        run.write_evaluation(run.read_evaluation() | {"val_acc_tta": 0.3 + i / 10})
    members, _ = blend.find_candidates()
    folder = blend.write_blend(blend.fit_blend(blend.blend_inputs(members), "stack"), "stacked")
    BlendFolder.named("interrupted").path.mkdir()  # no blend.json: not a blend
    board = leaderboard.write_leaderboard()
    assert board["kind"].tolist().count("blend") == 1 and board["kind"].tolist().count("run") == 3
    row = board[board["kind"] == "blend"].iloc[0]
    scores = folder.read_record()["scores"]
    assert row["run"] == "stacked" and row["task"] == "multiclass" and row["finished"]
    assert row["val_acc_tta"] == pytest.approx(scores["oof"]["accuracy"])
    assert row["nested_score"] == pytest.approx(scores["nested"]["accuracy"])
    assert row["test_acc"] == pytest.approx(scores["test"]["accuracy"])
    assert sorted(board["rank"]) == [1, 2, 3, 4]  # ranked with the runs of its task


# --- the notebook, and runs trained for real -------------------------------------------------------------------
BLEND_NOTEBOOK = notebooks_dir() / "07_blend.ipynb"


@pytest.mark.slow
def test_blend_notebook_under_papermill_and_nbval(three_runs, tmp_path, outputs):
    """07 with parameters through papermill (greedy, two runs, a name), then as committed under nbval
    (stack, every compatible run): each writes its blend and figures."""
    papermill.execute_notebook(
        str(BLEND_NOTEBOOK),
        str(tmp_path / "07.ipynb"),
        parameters={"method": "greedy", "name": "nb", "runs": ["run0", "run2"]},
        cwd=str(tmp_path),
        kernel_name="python3",
        progress_bar=False,
    )
    record = blend.read_blend("nb")
    assert record.method == "greedy" and [m.run for m in record.members] == ["run0", "run2"]
    for plot in ("correlations", "methods", "weights"):
        assert BlendFolder.named("nb").plot(plot).stat().st_size > 0
    text = json.dumps(
        [c.get("outputs", []) for c in nbformat.read(tmp_path / "07.ipynb", as_version=4).cells]
    )
    assert "nested accuracy" in text and "image/png" in text
    result = run_nbval(BLEND_NOTEBOOK, outputs, tmp_path, timeout=300)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert [m.run for m in blend.read_blend("blend_stack").members] == ["run0", "run1", "run2"]


@pytest.mark.slow
def test_a_blend_of_two_trained_runs_submits_their_weighted_average(outputs, tmp_path, one_thread):
    """Two tiny runs trained, evaluated (04) and predicted (05) for real, then blended from the command line:
    the submission is the runs' own 05 probabilities averaged with blend.json's weights."""
    data = tiny_dataset(tmp_path / "colours")
    runs = []
    for backbone in ("test_resnet", "test_efficientnet"):
        cfg = tiny_config(data, backbone=backbone, run_name=backbone, n_folds=2, folds=[], batch_size=8)
        run = RunFolder.of(cfg).create()
        info = prepare_dataset(cfg, run)
        cfg, _ = resolve_settings(cfg, info)
        run.write_config(cfg)
        train_folds(cfg, info, run, torch.device("cpu"))
        evaluate_oof(
            cfg, run, info, trained_checkpoints(run, cfg.checkpoint, cfg.n_folds), torch.device("cpu")
        )
        layout = detect_layout(cfg, data)
        test = checked_test_images(list_test_images(cfg, data, layout), cfg)
        predicted = predict_test(ensemble_members(cfg, run), test, cfg.tta_views, torch.device("cpu"))
        write_test_predictions(
            run, cfg, sample_submission(cfg, data, layout, test, predicted.classes), predicted
        )
        runs.append(run)
    assert blend.main(["--method", "mean"]) == 0
    record = blend.read_blend("blend_mean")
    weights = {m.run: m.weight for m in record.members}
    by_hand = sum(weights[r.name] * r.read_test_probabilities() for r in runs)
    folder = BlendFolder.named("blend_mean")
    np.testing.assert_allclose(
        folder.read_test_probabilities().to_numpy(),
        by_hand.loc[folder.read_test_probabilities().index].to_numpy(),
    )
    submission = pd.read_csv(folder.submission, dtype=str)
    assert submission["label"].tolist() == list(
        np.array(record.classes)[by_hand.loc[submission["id"]].to_numpy().argmax(1)]
    )
    assert record.scores["test"]["accuracy"] == pytest.approx(
        float((submission["label"] == pd.read_csv(data / "test_labels.csv", dtype=str)["label"]).mean())
    )
