"""The embedded demo sets: scikit-learn's bundled digits, written out in the Kaggle layout the kit reads.

Digits (single-label): 1,797 8x8 grey digits become 32x32 RGB JPEGs: `train.csv` + `train_image/`, and a
held-out `test_image/` with `sample_submission.csv` and `test_labels.csv` so inference can be scored.
Multi-label (data/digits_multilabel): 64x64 images tiling 1-4 distinct digits in a 2x2 grid of 32 px cells
(the other cells blank), labelled with the set of digits shown, space-separated in a `labels` column.
Deterministic, built once on first use into a temp folder and renamed into place, so an interrupted
build never leaves a half-written set behind.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from helpers.paths import demo_data_dir, multilabel_demo_dir

DEMO_SIZE = 32
TEST_FRACTION = 0.2
SEED = 0
COMPLETE_MARK = ".complete"
# the multi-label demo: 64x64 images of a 2x2 grid of 32 px digit cells, labelled by the set of digits shown
TILE_GRID = 2
MULTILABEL_TRAIN, MULTILABEL_TEST = 1200, 300
MULTILABEL_COLUMN = "labels"  # its label column, as the Kaggle competitions name it (label_col='labels')


def ensure_demo_data(dest: Path | None = None) -> Path:
    """Return the digits demo folder, building it first if it is not there yet."""
    return _build_once(Path(dest or demo_data_dir()), _write_digits)


def ensure_multilabel_demo_data(dest: Path | None = None) -> Path:
    """Return the multi-label demo folder (digits tiled 1-4 to an image), building it first if needed."""
    return _build_once(Path(dest or multilabel_demo_dir()), _write_tiled_digits)


def _build_once(dest: Path, write: Callable[[Path], None]) -> Path:
    """Build a data set into a temp folder beside dest and rename it into place, unless it is complete."""
    if (dest / COMPLETE_MARK).exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}."))
    try:
        write(tmp)
        (tmp / COMPLETE_MARK).touch()
        if dest.exists():
            shutil.rmtree(dest)
        tmp.rename(dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _to_rgb(digit: np.ndarray) -> np.ndarray:
    grey = (digit * (255.0 / 16.0)).astype(np.uint8)
    big = cv2.resize(grey, (DEMO_SIZE, DEMO_SIZE), interpolation=cv2.INTER_CUBIC)
    return cv2.cvtColor(big, cv2.COLOR_GRAY2BGR)


def _write_split(root: Path, folder: str, ids: list[str], images: np.ndarray) -> None:
    (root / folder).mkdir()
    for image_id, digit in zip(ids, images, strict=True):
        cv2.imwrite(str(root / folder / f"{image_id}.jpg"), _to_rgb(digit), [cv2.IMWRITE_JPEG_QUALITY, 95])


def _write_digits(root: Path) -> None:
    digits = load_digits()
    ids = np.array([f"d{i:04d}" for i in range(len(digits.target))])
    train_idx, test_idx = train_test_split(
        np.arange(len(ids)), test_size=TEST_FRACTION, stratify=digits.target, random_state=SEED
    )
    train_idx, test_idx = np.sort(train_idx), np.sort(test_idx)
    _write_split(root, "train_image", list(ids[train_idx]), digits.images[train_idx])
    _write_split(root, "test_image", list(ids[test_idx]), digits.images[test_idx])
    pd.DataFrame({"id": ids[train_idx], "label": digits.target[train_idx]}).to_csv(
        root / "train.csv", index=False
    )
    pd.DataFrame({"id": ids[test_idx], "label": 0}).to_csv(root / "sample_submission.csv", index=False)
    pd.DataFrame({"id": ids[test_idx], "label": digits.target[test_idx]}).to_csv(
        root / "test_labels.csv", index=False
    )


def _tile(digits: list[np.ndarray], cells: list[int]) -> np.ndarray:
    """A TILE_GRID x TILE_GRID canvas of DEMO_SIZE cells, each digit in its cell, the other cells blank."""
    canvas = np.zeros((TILE_GRID * DEMO_SIZE, TILE_GRID * DEMO_SIZE, 3), dtype=np.uint8)
    for digit, cell in zip(digits, cells, strict=True):
        row, col = divmod(cell, TILE_GRID)
        canvas[row * DEMO_SIZE : (row + 1) * DEMO_SIZE, col * DEMO_SIZE : (col + 1) * DEMO_SIZE] = _to_rgb(
            digit
        )
    return canvas


def _tiled_split(
    root: Path, folder: str, prefix: str, count: int, images: np.ndarray, targets: np.ndarray, rng
) -> pd.DataFrame:
    """`count` tiled images from these digits (1-4 distinct classes each, in random cells), and their ids
    and space-separated label sets."""
    (root / folder).mkdir()
    by_class = {c: np.flatnonzero(targets == c) for c in range(10)}
    rows = []
    for i in range(count):
        classes = sorted(
            int(c) for c in rng.choice(10, size=rng.integers(1, TILE_GRID**2 + 1), replace=False)
        )
        digits = [images[rng.choice(by_class[c])] for c in classes]
        cells = [int(c) for c in rng.permutation(TILE_GRID**2)[: len(classes)]]
        image_id = f"{prefix}{i:04d}"
        cv2.imwrite(
            str(root / folder / f"{image_id}.jpg"), _tile(digits, cells), [cv2.IMWRITE_JPEG_QUALITY, 95]
        )
        rows.append({"id": image_id, MULTILABEL_COLUMN: " ".join(str(c) for c in classes)})
    return pd.DataFrame(rows)


def _write_tiled_digits(root: Path) -> None:
    """The multi-label demo: train and test images tiled from disjoint halves of the digits, so no test
    digit was seen in training; labels in one space-separated column, as Planet or Plant Pathology write them."""
    digits = load_digits()
    train_idx, test_idx = train_test_split(
        np.arange(len(digits.target)), test_size=TEST_FRACTION, stratify=digits.target, random_state=SEED
    )
    rng = np.random.default_rng(SEED)
    train = _tiled_split(
        root, "train_image", "m", MULTILABEL_TRAIN, digits.images[train_idx], digits.target[train_idx], rng
    )
    test = _tiled_split(
        root, "test_image", "t", MULTILABEL_TEST, digits.images[test_idx], digits.target[test_idx], rng
    )
    train.to_csv(root / "train.csv", index=False)
    test.assign(**{MULTILABEL_COLUMN: "0"}).to_csv(root / "sample_submission.csv", index=False)
    test.to_csv(root / "test_labels.csv", index=False)


if __name__ == "__main__":
    print(f"demo data: {ensure_demo_data()}")
    print(f"multi-label demo data: {ensure_multilabel_demo_data()}")
