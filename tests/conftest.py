"""Shared fixtures: a temporary outputs folder and tiny datasets in both layouts (and a multi-label table)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

# No test reaches outside this machine: huggingface_hub (read at its import, which comes after this) and
# every child process and notebook kernel started from the tests are offline. The download test runs its
# own child against a server on 127.0.0.1.
os.environ["HF_HUB_OFFLINE"] = "1"

SIDE = 16
PROJECT_OUTPUTS = Path(__file__).resolve().parents[1] / "outputs"  # a user's runs, blends and studies


def _project_outputs() -> set[Path]:
    """What the project's own outputs/ holds, two levels deep (runs/<run>, blends/<blend>, ...)."""
    return {p.relative_to(PROJECT_OUTPUTS) for pattern in ("*", "*/*") for p in PROJECT_OUTPUTS.glob(pattern)}


@pytest.fixture(scope="session", autouse=True)
def project_outputs_untouched():
    """No test writes into the project's outputs/, where a user's work lives: every test that makes runs
    points KIT_OUTPUTS at a temp folder (the `outputs` fixture), and one that loses it fails here."""
    before = _project_outputs()
    yield
    added = sorted(str(p) for p in _project_outputs() - before)
    assert not added, f"tests wrote into {PROJECT_OUTPUTS}: {added[:5]}"


@pytest.fixture
def outputs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """KIT_OUTPUTS pointed at a temp folder, so nothing lands in the repo's outputs/."""
    folder = tmp_path / "outputs"
    folder.mkdir()
    monkeypatch.setenv("KIT_OUTPUTS", str(folder))
    return folder


def random_rgb(rng: np.random.Generator, side: int = SIDE) -> np.ndarray:
    return rng.integers(0, 256, size=(side, side, 3), dtype=np.uint8)


def write_image(path: Path, image: np.ndarray) -> Path:
    """Write an RGB array with cv2 (which wants BGR); the suffix picks the format."""
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    return path


@pytest.fixture
def make_csv_dataset(tmp_path: Path) -> Callable[..., Path]:
    """Factory: `<root>/train.csv` (id,label[,group]) + `<root>/train_image/<id>.jpg`; returns root.

    `labels` are the class names (str or int); `per_class` images each. `groups_per_class` > 0 adds a
    `group` column with that many groups per class, each group holding several consecutive images.
    """

    def make(
        name: str = "csvdata",
        labels: tuple = ("cat", "dog", "fox"),
        per_class: int = 6,
        seed: int = 0,
        groups_per_class: int = 0,
    ) -> Path:
        root = tmp_path / name
        rng = np.random.default_rng(seed)
        rows = []
        for label in labels:
            for i in range(per_class):
                image_id = f"{label}_{i:02d}"
                write_image(root / "train_image" / f"{image_id}.jpg", random_rgb(rng))
                row = {"id": image_id, "label": label}
                if groups_per_class:
                    row["group"] = f"g{label}_{i % groups_per_class}"
                rows.append(row)
        pd.DataFrame(rows).to_csv(root / "train.csv", index=False)
        return root

    return make


@pytest.fixture
def csv_dataset(make_csv_dataset: Callable[..., Path]) -> Path:
    """3 classes x 6 images of 16x16, CSV layout."""
    return make_csv_dataset()


@pytest.fixture
def make_multilabel_dataset(tmp_path: Path) -> Callable[..., Path]:
    """Factory: `<root>/train.csv` (id, label: 1-3 of `classes` joined by `sep`, each set drawn at random)
    + `<root>/train_image/<id>.jpg`; returns root."""

    def make(
        name: str = "mldata",
        classes: tuple = ("ant", "bee", "cat", "dog"),
        n: int = 36,
        seed: int = 0,
        sep: str = " ",
    ) -> Path:
        root = tmp_path / name
        rng = np.random.default_rng(seed)
        rows = []
        for i in range(n):
            labels = sorted(rng.choice(classes, size=rng.integers(1, 4), replace=False).tolist())
            write_image(root / "train_image" / f"m{i:03d}.jpg", random_rgb(rng))
            rows.append({"id": f"m{i:03d}", "label": sep.join(labels)})
        pd.DataFrame(rows).to_csv(root / "train.csv", index=False)
        return root

    return make


@pytest.fixture
def make_imagefolder_dataset(tmp_path: Path) -> Callable[..., Path]:
    """Factory: `<root>/train/<class>/<n>.png`; returns root."""

    def make(
        name: str = "folderdata", labels: tuple = ("ant", "bee", "wasp"), per_class: int = 6, seed: int = 1
    ) -> Path:
        root = tmp_path / name
        rng = np.random.default_rng(seed)
        for label in labels:
            for i in range(per_class):
                write_image(root / "train" / str(label) / f"{i:02d}.png", random_rgb(rng))
        return root

    return make


@pytest.fixture
def imagefolder_dataset(make_imagefolder_dataset: Callable[..., Path]) -> Path:
    """3 classes x 6 images of 16x16, ImageFolder layout."""
    return make_imagefolder_dataset()


@pytest.fixture
def one_thread():
    """One intra-op thread: tiny models gain nothing from more, and lose a lot on a busy 2-core machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
