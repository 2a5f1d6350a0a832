"""The test images 05 predicts: checked like the training images, with the sample submission and labels."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from helpers.config import Config
from helpers.health import FIXES, check_images
from helpers.tables import DataError, problem_frame

TEST_LABELS = "test_labels.csv"


def checked_test_images(test: pd.DataFrame) -> pd.DataFrame:
    """The test table with image sizes; a DataError listing every unreadable test image otherwise."""
    checks = check_images(test["path"].tolist())
    bad = checks[checks["problem"] != ""]
    if not bad.empty:
        raise DataError(
            f"{len(bad)} test image(s) cannot be read; a submission needs every one:",
            problem_frame(
                [
                    {
                        "line": None,
                        "id": i,
                        "file": r.path,
                        "problem": f"image {r.problem}",
                        "fix": FIXES[r.problem],
                    }
                    for i, r in zip(test.loc[bad.index, "id"], bad.itertuples(), strict=True)
                ]
            ),
        )
    return test.assign(height=checks["height"].to_numpy(), width=checks["width"].to_numpy())


def sample_submission(cfg: Config, data_dir: Path, layout: str, test: pd.DataFrame) -> pd.DataFrame:
    """The sample submission (CSV layout), or an id + label frame in the test folder's order."""
    if layout == "csv":
        return pd.read_csv(data_dir / cfg.sample_submission, dtype={cfg.id_col: str})
    return pd.DataFrame({cfg.id_col: test["id"], cfg.label_col: ""})


def test_labels(cfg: Config, data_dir: Path, test: pd.DataFrame, classes: Sequence[str]) -> np.ndarray | None:
    """Class indices of the test images from data_dir/test_labels.csv, in test order; None without the file."""
    path = data_dir / TEST_LABELS
    if not path.exists():
        return None
    truth = pd.read_csv(path, dtype=str).set_index(cfg.id_col)[cfg.label_col]
    missing = sorted(set(test["id"]) - set(truth.index))
    if missing:
        raise DataError(f"{path} has no label for {len(missing)} test id(s), e.g. {missing[:5]}")
    labels = truth.loc[test["id"]]
    unknown = sorted(set(labels) - set(classes))
    if unknown:
        raise DataError(
            f"{path} has label(s) {unknown[:10]} that the model was not trained on; classes: {list(classes)}"
        )
    return labels.map({c: i for i, c in enumerate(classes)}).to_numpy()
