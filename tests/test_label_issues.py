"""Likely label errors: cleanlab on out-of-fold probabilities ranks deliberately flipped labels first."""

from __future__ import annotations

import shutil
import sys

import numpy as np
import pytest
import torch

from helpers.config import Config
from helpers.dataset import prepare_dataset
from helpers.demo import ensure_demo_data
from helpers.inference import trained_checkpoints
from helpers.label_issues import (
    COLUMNS,
    precision_at_k,
    rank_label_issues,
    show_label_issues,
    write_label_issues,
)
from helpers.paths import project_root
from helpers.reports import evaluate_oof
from helpers.run_folder import RunFolder
from helpers.tasks import SingleLabel
from helpers.train import train_folds

sys.path.insert(0, str(project_root() / "benchmarks"))
from bench_label_issues import flip_labels  # noqa: E402

CLASSES = ["cat", "dog", "fox"]


def rank_single(ids, labels, probabilities, classes):
    """rank_label_issues for a single-label run (its suggestion: the most probable class)."""
    task = SingleLabel()
    return rank_label_issues(task, ids, labels, probabilities, task.decide(probabilities, None), classes)


def confident_oof(n: int = 300, flipped: int = 15, seed: int = 0):
    """Probabilities of a good model on the true classes, and labels with `flipped` rows given another class."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, len(CLASSES), n)
    probabilities = rng.dirichlet(np.ones(len(CLASSES)), n) * 0.2
    probabilities[np.arange(n), truth] += 0.8
    labels = truth.copy()
    wrong = rng.choice(n, flipped, replace=False)
    labels[wrong] = (truth[wrong] + rng.integers(1, len(CLASSES), flipped)) % len(CLASSES)
    ids = [f"r{i:03d}" for i in range(n)]
    return ids, labels, probabilities, {ids[i] for i in wrong}, truth


def test_flipped_rows_rank_first_with_the_true_class_suggested():
    ids, labels, probabilities, wrong, truth = confident_oof()
    ranked = rank_single(ids, labels, probabilities, CLASSES)
    assert precision_at_k(ranked["id"], wrong, len(wrong)) == 1.0
    flagged = set(ranked.loc[ranked["issue"], "id"])
    assert flagged <= wrong and len(flagged) >= 0.7 * len(wrong)  # cleanlab flags its estimate of the noise
    top = ranked.head(len(wrong)).set_index("id")
    by_id = dict(zip(ids, truth, strict=True))
    assert all(top.at[i, "suggested"] == CLASSES[by_id[i]] for i in top.index)
    assert ranked["score"].is_monotonic_increasing


def test_label_issues_csv_holds_the_flagged_rows_lowest_score_first(outputs):
    ids, labels, probabilities, wrong, _ = confident_oof()
    run = RunFolder.named("issues").create()
    write_label_issues(run, rank_single(ids, labels, probabilities, CLASSES))
    written = run.read_label_issues()
    assert list(written.columns) == COLUMNS
    ranked = rank_single(ids, labels, probabilities, CLASSES)
    assert list(written["id"]) == list(ranked.loc[ranked["issue"], "id"])
    assert set(written["id"]) <= wrong
    assert written["score"].is_monotonic_increasing
    given = dict(zip(ids, labels, strict=True))
    assert all(CLASSES[given[i]] == g for i, g in zip(written["id"], written["given"], strict=True))


def test_a_class_without_out_of_fold_rows_is_an_error():
    ids, labels, probabilities, _, _ = confident_oof()
    keep = labels != 2
    with pytest.raises(ValueError, match=r"\['fox'\] have no out-of-fold row"):
        rank_single(np.asarray(ids)[keep], labels[keep], probabilities[keep], CLASSES)


def test_show_label_issues_titles_given_suggested_and_score(tmp_path):
    from conftest import write_image

    ids, labels, probabilities, _, _ = confident_oof(n=60, flipped=4)
    issues = rank_single(ids, labels, probabilities, CLASSES)
    issues = issues[issues["issue"]]
    paths = {i: str(write_image(tmp_path / f"{i}.png", np.zeros((8, 8, 3), np.uint8))) for i in ids}
    fig = show_label_issues(issues, paths, n=16)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    first = issues.iloc[0]
    assert titles[0] == f"{first['given']} → {first['suggested']}\nscore {first['score']:.3f}"
    assert len(titles) == len(issues)
    assert "no likely label errors" in show_label_issues(issues.head(0), paths).axes[0].texts[0].get_text()


@pytest.mark.slow
def test_flipped_demo_labels_rank_high_after_a_small_run(tmp_path, outputs, one_thread):
    """40 of the 1,437 digits given a wrong label; test_resnet at 32 px, 2 epochs on all 5 folds."""
    data_dir = tmp_path / "digits"
    shutil.copytree(ensure_demo_data(), data_dir)
    wrong = flip_labels(data_dir, 40)
    cfg = Config(
        data_dir=str(data_dir),
        backbone="test_resnet",
        img_size=32,
        epochs=2,
        batch_size=32,
        folds=[],
        num_workers=0,
        run_name="flipped",
        pretrained=False,
    )
    run = RunFolder.of(cfg).create()
    info = prepare_dataset(cfg, run)
    train_folds(cfg, info, run, torch.device("cpu"))
    oof = evaluate_oof(
        cfg, run, info, trained_checkpoints(run, cfg.checkpoint, cfg.n_folds), torch.device("cpu")
    )
    ranked = oof.label_issues(" ")
    precision = precision_at_k(ranked["id"], wrong, len(wrong))
    print(f"precision at k={len(wrong)}: {precision:.3f}")
    assert precision >= 0.8
    assert len(set(ranked.loc[ranked["issue"], "id"]) & wrong) >= 0.7 * len(wrong)  # 31-33 of 40 seen
