"""A Planet-style multi-label set the kit has never seen (`image_name`, `tags`, `train_images/`,
`test_images/`, `sample_submission.csv`), run notebook by notebook under papermill as a new user would:
test_dir given to 01 only reaches 05, and a wrong test folder is diagnosed in one line."""

from __future__ import annotations

import nbformat
import numpy as np
import pandas as pd
import papermill
import pytest
from conftest import random_rgb, write_image

from helpers.paths import notebooks_dir

TAGS = ["clear", "haze", "water", "road"]


def planet_style(root, n_train: int = 48, n_test: int = 12):
    rng = np.random.default_rng(0)
    tags = [" ".join(sorted(set(rng.choice(TAGS, size=1 + k % 3)))) for k in range(n_train)]
    for k in range(n_train):
        write_image(root / "train_images" / f"train_{k}.jpg", random_rgb(rng, 32))
    for k in range(n_test):
        write_image(root / "test_images" / f"test_{k}.jpg", random_rgb(rng, 32))
    pd.DataFrame({"image_name": [f"train_{k}" for k in range(n_train)], "tags": tags}).to_csv(
        root / "train.csv", index=False
    )
    pd.DataFrame({"image_name": [f"test_{k}" for k in range(n_test)], "tags": "clear"}).to_csv(
        root / "sample_submission.csv", index=False
    )
    return root


def execute(name: str, tmp_path, **parameters) -> None:
    papermill.execute_notebook(
        str(notebooks_dir() / f"{name}.ipynb"),
        str(tmp_path / f"{name}.out.ipynb"),
        parameters=parameters,
        cwd=str(tmp_path),
        kernel_name="python3",
        progress_bar=False,
    )


@pytest.mark.slow
def test_test_dir_given_to_01_reaches_05_and_a_wrong_one_is_diagnosed(tmp_path, monkeypatch):
    data = planet_style(tmp_path / "planet")
    outputs = tmp_path / "outputs"
    monkeypatch.setenv("KIT_OUTPUTS", str(outputs))
    execute("01_data", tmp_path, data_dir=str(data), id_col="image_name", label_col="tags",
            image_dir="train_images", test_dir="test_images", task="multilabel", run_name="r", n_folds=2)  # fmt: skip
    execute(
        "03_train",
        tmp_path,
        run_name="r",
        backbone="test_resnet",
        epochs=1,
        img_size=32,
        num_workers=0,
        pretrained=False,
    )
    execute("04_evaluate", tmp_path, run_name="r")
    execute("05_inference", tmp_path, run_name="r")
    submission = pd.read_csv(outputs / "runs" / "r" / "submission.csv")
    assert submission["image_name"].tolist() == [f"test_{k}" for k in range(12)]

    with pytest.raises(papermill.PapermillExecutionError) as err:
        execute("05_inference", tmp_path, run_name="r", test_dir="test_image")
    message = str(err.value)
    cause = "likely cause: 12 of 12 missing images: the images are in 'test_images' under data_dir"
    assert cause in message and "set test_dir='test_images'" in message
    executed = nbformat.read(tmp_path / "05_inference.out.ipynb", as_version=4)
    errors = [o for c in executed.cells for o in c.get("outputs", []) if o.output_type == "error"]
    shown = "".join(errors[0].traceback)
    assert "set test_dir='test_images'" in shown and "Traceback" not in shown, "the message alone"
