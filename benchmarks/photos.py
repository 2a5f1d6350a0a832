"""A photo-size data set made offline: real photographs at the size Kaggle images come in.

scikit-learn (already a dependency) ships two photographs (`load_sample_images`: china.jpg and flower.jpg,
640x427). Each image of the set is a random crop of one, upscaled to 1280x960 (bicubic) with a little
Gaussian noise (sigma 3 levels, so no two are alike and the codec sees sensor-like detail), saved as JPEG
quality 90 (about 300 KB). `distinct` images are made; the rest of the `n` are hard links to them, which
costs no disk: the decode per file is the same, and the benchmarks read from the page cache either way.
The layout is the kit's CSV one: train.csv (id, label) and train_image/<id>.jpg, 10 classes.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

WIDTH, HEIGHT, QUALITY = 1280, 960, 90
CLASSES = 10


def photo(rng: np.random.Generator, height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    """One RGB photo: a random crop of a bundled photograph, upscaled, with noise."""
    from sklearn.datasets import load_sample_images

    source = load_sample_images().images[int(rng.integers(2))]
    ch, cw = int(rng.integers(240, 400)), int(rng.integers(320, 600))
    y, x = int(rng.integers(source.shape[0] - ch + 1)), int(rng.integers(source.shape[1] - cw + 1))
    image = cv2.resize(source[y : y + ch, x : x + cw], (width, height), interpolation=cv2.INTER_CUBIC)
    return np.clip(image + rng.normal(0, 3, image.shape), 0, 255).astype(np.uint8)


def make_photo_set(root: Path, n: int, distinct: int = 400, seed: int = 0) -> Path:
    """`root` holding n photos (made once; an existing set of the same n is kept); returns root."""
    table = root / "train.csv"
    if table.exists() and len(pd.read_csv(table)) == n:
        return root
    images = root / "train_image"
    images.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    ids = [f"p{i:06d}" for i in range(n)]
    for i, name in enumerate(ids):
        path = images / f"{name}.jpg"
        if path.exists():
            continue
        if i < distinct:
            bgr = cv2.cvtColor(photo(rng), cv2.COLOR_RGB2BGR)
            assert cv2.imwrite(str(path), bgr, [cv2.IMWRITE_JPEG_QUALITY, QUALITY])
        else:
            os.link(images / f"{ids[i % distinct]}.jpg", path)
    pd.DataFrame({"id": ids, "label": [f"c{i % CLASSES}" for i in range(n)]}).to_csv(table, index=False)
    return root
