"""The balanced sampler: rows drawn inversely to their class frequency, keyed by (seed, epoch) like the
shuffle, so a draw is reproducible, resumable and shared out to data-parallel processes."""

from __future__ import annotations

import sys
from collections import Counter

import numpy as np
import pandas as pd
import pytest
import torch
from train_fixtures import tiny_config

from helpers.dataset import prepare_dataset
from helpers.demo import ensure_demo_data
from helpers.loaders import EpochSampler, balanced_weights, build_loader
from helpers.paths import project_root
from helpers.singlelabel_metrics import rare_classes

CPU = torch.device("cpu")
# 900 rows of class 0, 90 of class 1, 10 of class 2
LABELS = np.repeat([0, 1, 2], [900, 90, 10])


def sampler(epoch: int = 0, seed: int = 3, labels=LABELS, **kwargs) -> EpochSampler:
    s = EpochSampler(len(labels), True, seed, weights=balanced_weights(labels), **kwargs)
    s.set_epoch(epoch)
    return s


def drawn_classes(s: EpochSampler, labels=LABELS) -> Counter:
    return Counter(int(labels[key % len(labels)]) for key in s)


def test_the_same_seed_and_epoch_draw_the_same_and_other_epochs_or_seeds_differ():
    assert list(sampler(epoch=2)) == list(sampler(epoch=2))
    assert list(sampler(epoch=2)) != list(sampler(epoch=3))
    assert list(sampler(epoch=2)) != list(sampler(epoch=2, seed=4))
    # a sampler moved straight to an epoch (a resumed run) draws what one that went through the epochs does
    walked = sampler()
    for epoch in range(4):
        walked.set_epoch(epoch)
        keys = list(walked)
    assert keys == list(sampler(epoch=3))


def test_an_epoch_draws_every_class_about_equally_often():
    for epoch in range(3):
        counts = drawn_classes(sampler(epoch))
        assert sum(counts.values()) == len(LABELS)
        for c in range(3):  # 1000 / 3 each; a binomial's standard deviation is 15
            assert abs(counts[c] - len(LABELS) / 3) < 60, (epoch, counts)
    shuffled = EpochSampler(len(LABELS), True, 3)
    assert drawn_classes(shuffled) == Counter({0: 900, 1: 90, 2: 10})


def test_a_row_drawn_twice_gets_two_keys_and_so_two_augmentations():
    keys = list(sampler())
    rows = [key % len(LABELS) for key in keys]
    assert len(set(keys)) == len(keys)
    assert len(set(rows)) < len(rows)  # the 10 rows of class 2 come up ~33 times each
    assert Counter(rows).most_common(1)[0][0] >= 990  # the repeated ones are the rare class's rows


def test_two_processes_share_out_one_draw():
    for n in (len(LABELS), 999):  # 999: an odd count, so the shares are padded
        labels = LABELS[:n]
        whole = list(sampler(epoch=1, labels=labels))
        shares = [list(sampler(epoch=1, labels=labels, num_replicas=2, rank=r)) for r in (0, 1)]
        assert len(shares[0]) == len(shares[1]) == -(-n // 2)
        dealt = [key for pair in zip(*shares, strict=True) for key in pair]
        assert dealt[:n] == whole  # the draw, dealt in turn; the padding repeats its first keys
        assert dealt[n:] == whole[: len(dealt) - n]


def test_a_multilabel_row_counts_under_its_rarest_class():
    # class 0 in 5 rows, class 1 in 2, class 2 in 1; one row without a label
    label_idx = ["0", "0 1", "0", "0 1 2", "", "0"]
    weights = balanced_weights(label_idx)
    np.testing.assert_allclose(weights, [1 / 5, 1 / 2, 1 / 5, 1 / 1, 1 / 1, 1 / 5])
    # a multiclass table's class indices are sets of one
    np.testing.assert_allclose(balanced_weights(np.array([0, 0, 1])), [1 / 2, 1 / 2, 1])


def test_the_training_loader_draws_balanced_batches_and_the_validation_loader_is_untouched(
    outputs, make_csv_dataset
):
    cfg = tiny_config(make_csv_dataset(labels=("a", "b"), per_class=30), sampler="balanced", batch_size=8)
    table = prepare_dataset(cfg).table
    rows = table[(table["label"] == "a") | (table["id"].isin(["b_00", "b_01", "b_02"]))]
    counts = Counter()
    for epoch in range(4):
        loader = build_loader(cfg, rows, train=True, fold=0, device=CPU)
        loader.sampler.set_epoch(epoch)
        for _, labels, _ in loader:
            counts.update(labels.tolist())
    a, b = (counts[int(rows.loc[rows["label"] == name, "label_idx"].iloc[0])] for name in ("a", "b"))
    assert a + b == 4 * len(rows) and abs(a - b) < 0.25 * (a + b), counts  # 30 : 3 as given
    shuffled = build_loader(cfg.replace(sampler="shuffle"), rows, train=True, fold=0, device=CPU)
    assert shuffled.sampler.p is None
    validation = build_loader(cfg, rows, train=False, fold=0, device=CPU)
    assert [int(i) for _, _, idx in validation for i in idx] == list(range(len(rows)))


@pytest.mark.parametrize("epoch", [0, 5])
def test_the_augmentation_of_a_key_does_not_depend_on_the_worker_count(outputs, make_csv_dataset, epoch):
    cfg = tiny_config(make_csv_dataset(per_class=4), sampler="balanced", augment="light", batch_size=4)
    rows = prepare_dataset(cfg).table
    batches = {}
    for workers in (0, 1):
        loader = build_loader(cfg.replace(num_workers=workers), rows, train=True, fold=0, device=CPU)
        loader.sampler.set_epoch(epoch)
        batches[workers] = torch.cat([x for x, _, _ in loader])
    assert torch.equal(batches[0], batches[1])


def test_the_benchmarks_imbalanced_digits_keep_a_tenth_of_digits_5_to_9(tmp_path):
    sys.path.insert(0, str(project_root() / "benchmarks"))
    from bench_imbalance import imbalanced_digits

    demo = ensure_demo_data()
    given = pd.read_csv(demo / "train.csv")["label"].value_counts()
    counts = imbalanced_digits(demo, tmp_path / "digits")
    assert (
        counts == pd.read_csv(tmp_path / "digits" / "train.csv")["label"].astype(str).value_counts().to_dict()
    )
    for digit in range(10):
        expected = round(given[digit] * 0.1) if digit >= 5 else given[digit]
        assert counts[str(digit)] == expected, digit
    assert rare_classes(np.array([counts[str(d)] for d in range(10)])).tolist() == [5, 6, 7, 8, 9]
    assert (tmp_path / "digits" / "train_image" / "d0000.jpg").exists()
