"""The embedded demo set: scikit-learn's bundled digits, written out in the Kaggle layout the kit reads.

1,797 8x8 grey digits become 32x32 RGB JPEGs: `train.csv` + `train_image/`, and a held-out
`test_image/` with `sample_submission.csv` and `test_labels.csv` so inference can be scored.
Deterministic, built once on first use into a temp folder and renamed into place, so an interrupted
build never leaves a half-written set behind.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from helpers.paths import demo_data_dir

DEMO_SIZE = 32
TEST_FRACTION = 0.2
SEED = 0
COMPLETE_MARK = ".complete"


def ensure_demo_data(dest: Path | None = None) -> Path:
    """Return the demo data folder, building it first if it is not there yet."""
    dest = Path(dest or demo_data_dir())
    if (dest / COMPLETE_MARK).exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}."))
    try:
        _write_digits(tmp)
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


if __name__ == "__main__":
    print(f"demo data: {ensure_demo_data()}")
