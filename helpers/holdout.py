"""The test images 05 predicts: checked like the training images, with the sample submission and labels.

Labels come from wherever the data has them: the test table's `label` column (ImageFolder `test/<class>/`,
or a test_csv with a label column), else data_dir/test_labels.csv. Without a sample submission the
submission has a documented default format: the id, the predicted label and one probability column per
class.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from helpers.config import Config
from helpers.dataset import check_and_store, data_dir_of
from helpers.diagnoses import diagnose_test_images
from helpers.health import FIXES
from helpers.store import store_side
from helpers.tables import DataError, problem_frame
from helpers.tasks import task_for

TEST_LABELS = "test_labels.csv"


def checked_test_images(test: pd.DataFrame, cfg: Config) -> pd.DataFrame:
    """The test table with image sizes; a DataError listing every unreadable test image otherwise, with
    the likely cause first when many share one (another folder, extension or case: helpers.diagnoses).

    The check decodes each image once and stores it at the side the run (cfg) predicts at, so the
    predictions read the store (helpers.dataset.check_and_store): a photo-size test set is decoded once
    for every run, view and fold at that size, and not at all when 05 runs again."""
    checks = check_and_store(cfg, test["path"].tolist(), store_side(cfg.img_size, cfg.crop_pct))
    bad = checks[checks["problem"] != ""]
    if not bad.empty:
        problems = problem_frame(
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
        )
        raise DataError(
            f"{len(bad)} test image(s) cannot be read (a missing one is listed in the test table, or the "
            "sample submission, but has no image in the test folder); a submission needs every one:",
            problems,
            diagnose_test_images(cfg, data_dir_of(cfg), problems),
        )
    return test.assign(height=checks["height"].to_numpy(), width=checks["width"].to_numpy())


def sample_submission(
    cfg: Config, data_dir: Path, layout: str, test: pd.DataFrame, classes: Sequence[str] = ()
) -> pd.DataFrame:
    """The sample submission (CSV layout, when it exists), or the default format in the test order: id,
    label and, when `classes` are given, one probability column per class."""
    if layout == "csv" and (data_dir / cfg.sample_submission).is_file():
        return pd.read_csv(data_dir / cfg.sample_submission, dtype={cfg.id_col: str})
    default = pd.DataFrame({cfg.id_col: test["id"].to_numpy(), cfg.label_col: ""})
    return default.assign(**{c: np.nan for c in classes})


def test_labels(cfg: Config, data_dir: Path, test: pd.DataFrame, classes: Sequence[str]) -> np.ndarray | None:
    """The test images' targets, in test order, as the run's task reads them (class indices, or multi-hot
    rows of the label sets split by the run's label_sep, an empty value the empty set). From the test
    table's `label` column, else data_dir/test_labels.csv; None when neither exists (an unlabelled test
    set)."""
    path = data_dir / TEST_LABELS
    task = task_for(cfg)
    if "label" in test.columns:
        path, labels = Path(cfg.test_csv or "test/<class>/ folders"), test["label"]
    elif path.exists():
        truth = pd.read_csv(path, dtype=str).set_index(cfg.id_col)[cfg.label_col]
        missing = sorted(set(test["id"]) - set(truth.index))
        if missing:
            raise DataError(f"{path} has no label for {len(missing)} test id(s), e.g. {missing[:5]}")
        labels = truth.loc[test["id"]]
    else:
        return None
    sets = [task.split(v, cfg.label_sep) for v in labels]
    unknown = sorted({label for s in sets for label in s} - set(classes))
    if unknown:
        raise DataError(
            f"{path} has label(s) {unknown[:10]} that the model was not trained on; classes: {list(classes)}"
            f" (labels are read with label_sep={cfg.label_sep!r} for a label-set task)"
        )
    index = {c: i for i, c in enumerate(classes)}
    return task.encode_targets([[index[label] for label in s] for s in sets], len(classes))


def no_test_set(cfg: Config, data_dir: Path, layout: str) -> str:
    """05's one line for data without a test set: where it looked, and that the run is complete."""
    where = (
        f"{cfg.sample_submission}, {cfg.test_dir}/" + (f" or {cfg.test_csv}" if cfg.test_csv else "")
        if layout == "csv"
        else "test/"
    )
    return (
        f"no test set in {data_dir} (looked for {where}): nothing to predict; the run is complete without "
        "one (set test_dir, sample_submission or test_csv to predict a test set)"
    )
