"""The albumentations 2.x pipelines: named train presets, the eval pipeline, and undoing normalisation.

Every pipeline resizes to the model's size (`A.Resize(height, width)`: height first), augments at that
size, then normalises with the backbone's own mean and std (`data_config_for`) and returns a CHW float32
tensor. albumentations 2.x ignores a removed argument (`var_limit`, `max_holes`, ...) with only a warning,
so every transform that takes `strict=True` gets it and the Compose is strict too; the few that do not take
it (`MedianBlur`, `OneOf`, `ToTensorV2`) have plain signatures that already reject an unknown argument.

The presets grow: light is in medium, medium is in heavy. `light` never flips, because the demo digits
change meaning when flipped (a mirrored 2 is no 2); `medium` and `heavy` flip, for photos.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import albumentations as A
import numpy as np
import torch
from albumentations.pytorch import ToTensorV2

from helpers.model import data_config_for

__all__ = [
    "PRESETS",
    "build_eval_transform",
    "build_train_transform",
    "data_config_for",
    "denormalize",
    "preset_transforms",
]

Size = int | tuple[int, int]  # a square side, or (height, width)
Augmentations = list[A.BasicTransform | A.BaseCompose]


def _light() -> Augmentations:
    return [
        A.Affine(translate_percent=(-0.06, 0.06), scale=(0.92, 1.08), rotate=(-8, 8), p=0.7, strict=True),
        A.RandomBrightnessContrast(brightness_limit=0.15, contrast_limit=0.15, p=0.5, strict=True),
    ]


def _medium() -> Augmentations:
    return [
        A.HorizontalFlip(p=0.5, strict=True),
        A.Affine(
            translate_percent=(-0.1, 0.1),
            scale=(0.85, 1.15),
            rotate=(-15, 15),
            shear=(-5, 5),
            p=0.8,
            strict=True,
        ),
        A.RandomBrightnessContrast(brightness_limit=0.25, contrast_limit=0.25, p=0.6, strict=True),
        A.HueSaturationValue(hue_shift_limit=10, sat_shift_limit=20, val_shift_limit=10, p=0.3, strict=True),
    ]


def _heavy() -> Augmentations:
    # The original Kaggle pipeline in 2.x terms: GaussNoise(var_limit) -> std_range (a fraction of 255),
    # IAAPiecewiseAffine -> ThinPlateSpline (PiecewiseAffine remains, but warns it is 10x slower),
    # Cutout / CoarseDropout(max_holes, max_height, ...) -> the *_range arguments.
    return [
        *_medium(),
        A.VerticalFlip(p=0.5, strict=True),
        A.GaussNoise(std_range=(0.02, 0.06), p=0.2, strict=True),
        A.OneOf(
            [A.MotionBlur(blur_limit=(3, 7), p=1.0, strict=True), A.MedianBlur(blur_limit=3, p=1.0)], p=0.2
        ),
        A.OneOf(
            [
                A.OpticalDistortion(distort_limit=0.1, p=1.0, strict=True),
                A.GridDistortion(num_steps=5, distort_limit=0.2, p=1.0, strict=True),
                A.ThinPlateSpline(scale_range=(0.02, 0.05), p=1.0, strict=True),
            ],
            p=0.2,
        ),
        A.CoarseDropout(
            num_holes_range=(1, 8),
            hole_height_range=(0.05, 0.1),
            hole_width_range=(0.05, 0.1),
            p=0.5,
            strict=True,
        ),
    ]


# Each preset is a factory, so every pipeline gets its own transform objects (and random state).
PRESETS: dict[str, Callable[[], Augmentations]] = {
    "none": list,
    "light": _light,
    "medium": _medium,
    "heavy": _heavy,
}


def preset_transforms(preset: str) -> Augmentations:
    """The preset's augmentations alone, without resize or normalisation: for showing each one on its own."""
    if preset not in PRESETS:
        raise ValueError(f"augment preset {preset!r} is unknown; choose one of {list(PRESETS)}")
    return PRESETS[preset]()


def build_train_transform(
    preset: str, img_size: Size, mean: Sequence[float], std: Sequence[float]
) -> A.Compose:
    """Resize, the preset's augmentations, normalisation, tensor conversion: what training feeds the model."""
    return _pipeline(preset_transforms(preset), img_size, mean, std)


def build_eval_transform(img_size: Size, mean: Sequence[float], std: Sequence[float]) -> A.Compose:
    """Resize, normalise, convert: the same input geometry and scaling as training, without randomness."""
    return _pipeline([], img_size, mean, std)


def _pipeline(
    augmentations: Augmentations, img_size: Size, mean: Sequence[float], std: Sequence[float]
) -> A.Compose:
    height, width = (img_size, img_size) if isinstance(img_size, int) else img_size
    return A.Compose(
        [
            A.Resize(height, width, strict=True),
            *augmentations,
            A.Normalize(mean=tuple(mean), std=tuple(std), max_pixel_value=255, strict=True),
            ToTensorV2(),
        ],
        strict=True,
    )


def denormalize(images: torch.Tensor | np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Undo Normalize for display: a CHW image or NCHW batch becomes uint8 HWC (or NHWC), 0..255."""
    array = images.detach().cpu().float().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    channels_last = np.moveaxis(array, -3, -1)
    pixels = (channels_last * np.asarray(std) + np.asarray(mean)) * 255.0
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)
