"""What the augmentation preview shows: one image under many draws, each transform alone, loader speed."""

from __future__ import annotations

import copy
import random
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import albumentations as A
import numpy as np
import torch
from torch.utils.data import DataLoader

from helpers.augment import preset_transforms, to_hwc

if TYPE_CHECKING:
    from helpers.tasks import Task


def augmented_views(image: np.ndarray, transform: A.Compose, n: int, seed: int) -> list[np.ndarray]:
    """The same image through the training pipeline n times, as HWC images."""
    views = []
    for i in range(n):
        transform.set_random_state(np.random.default_rng(seed + i), random.Random(seed + i))
        views.append(to_hwc(transform(image=image)["image"]))
    return views


def transform_name(transform: A.BasicTransform | A.BaseCompose) -> str:
    if isinstance(transform, A.BaseCompose):
        return f"{type(transform).__name__}({'|'.join(type(t).__name__ for t in transform.transforms)})"
    return type(transform).__name__


def transform_gallery(image: np.ndarray, preset: str, img_size: int, seed: int = 0) -> tuple[list, list[str]]:
    """Each augmentation of the preset applied alone (always on), after the resize: images and names."""
    images, names = [], []
    for transform in preset_transforms(preset):
        always = copy.deepcopy(transform)
        always.p = 1.0
        pipeline = A.Compose([A.Resize(img_size, img_size, strict=True), always], strict=True, seed=seed)
        images.append(pipeline(image=image)["image"])
        names.append(transform_name(transform))
    return images, names


def loader_throughput(
    loader: DataLoader, batches: int = 10, clock: Callable[[], float] = time.perf_counter
) -> dict[str, float]:
    """Images per second the loader delivers (decode, augment, collate) over a number of batches."""
    iterator = iter(loader)
    next(iterator)  # worker start-up is not throughput
    started, images, done = clock(), 0, 0
    for x, *_ in iterator:
        images += len(x)
        done += 1
        if done >= batches:
            break
    seconds = clock() - started
    return {
        "batches": done,
        "images": images,
        "seconds": seconds,
        "images_per_s": images / max(seconds, 1e-9),
    }


def target_titles(
    task: Task, targets: torch.Tensor | np.ndarray, classes: Sequence[str], sep: str = " "
) -> list[str]:
    """A batch's targets as titles: the task's label texts (a class name, or the set's classes joined by
    `sep`; "(none)" for an empty set)."""
    return [text or "(none)" for text in task.label_texts(np.asarray(targets).astype(int), classes, sep)]
