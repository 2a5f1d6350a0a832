"""The albumentations 2.x pipelines: named train presets, the eval pipeline, and undoing normalisation.

Every pipeline resizes to the model's size (`A.Resize(height, width)`: height first), augments at that
size and returns a CHW uint8 tensor. Normalisation with the backbone's own mean and std (`data_config_for`)
happens on the device, in `InputPrep`: a uint8 batch is a quarter of the float32 bytes to collate, pass
between processes and copy to the GPU, and the loader workers skip a float pass over every pixel. albumentations 2.x ignores a removed argument (`var_limit`, `max_holes`, ...) with only a warning,
so every transform that takes `strict=True` gets it and the Compose is strict too; the few that do not take
it (`MedianBlur`, `OneOf`, `ToTensorV2`) have plain signatures that already reject an unknown argument.

The presets grow: light is in medium, medium is in heavy. `light` never flips, because the demo digits
change meaning when flipped (a mirrored 2 is no 2); `medium` and `heavy` flip, for photos.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import albumentations as A
import numpy as np
import torch
from albumentations.pytorch import ToTensorV2

from helpers.model import data_config_for

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


def build_train_transform(preset: str, img_size: Size) -> A.Compose:
    """Resize, then the preset's augmentations, then a uint8 CHW tensor: what training feeds the model."""
    return _pipeline(preset_transforms(preset), img_size)


def build_eval_transform(img_size: Size, crop_pct: float = 0.0) -> A.Compose:
    """Resize, then a uint8 CHW tensor: the same input geometry as training, without randomness.

    With a crop_pct below 1 (timm's eval crop, what pretrained weights were validated with) the image is
    resized to img_size / crop_pct first and its centre img_size kept; 0 or 1 means no crop.
    """
    if not 0 < crop_pct < 1:
        return _pipeline([], img_size)
    height, width = (img_size, img_size) if isinstance(img_size, int) else img_size
    scaled = A.Resize(math.floor(height / crop_pct), math.floor(width / crop_pct), strict=True)
    crop = A.CenterCrop(height, width, strict=True)
    return A.Compose([scaled, crop, ToTensorV2()], strict=True)


def _pipeline(augmentations: Augmentations, img_size: Size) -> A.Compose:
    height, width = (img_size, img_size) if isinstance(img_size, int) else img_size
    return A.Compose([A.Resize(height, width, strict=True), *augmentations, ToTensorV2()], strict=True)


def to_hwc(images: torch.Tensor) -> np.ndarray:
    """A uint8 CHW image or NCHW batch as HWC (or NHWC) numpy, for display."""
    return np.moveaxis(images.detach().cpu().numpy(), -3, -1)


@dataclass(frozen=True)
class InputPrep:
    """Turns a loader batch into model input on the device: uint8 images are normalised there with the
    backbone's mean and std (float batches pass through as they are), in the chosen memory format."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    channels_last: bool = False

    @classmethod
    def for_backbone(cls, backbone: str, channels_last: bool = False) -> InputPrep:
        data_cfg = data_config_for(backbone)
        return cls(tuple(data_cfg["mean"]), tuple(data_cfg["std"]), channels_last)

    def __call__(self, x: torch.Tensor, device: torch.device) -> torch.Tensor:
        x = x.to(device, non_blocking=True)
        if x.dtype == torch.uint8:
            shift, scale = _pixel_affine(self.mean, self.std, torch.device(device))
            x = (x.float() - shift) / scale
        fmt = torch.channels_last if self.channels_last and x.dim() == 4 else torch.contiguous_format
        return x.contiguous(memory_format=fmt)


@functools.lru_cache(maxsize=16)
def _pixel_affine(
    mean: tuple[float, ...], std: tuple[float, ...], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """The per-channel shift and scale of 0..255 pixels on the device: made once, not copied there per batch."""
    shift = torch.tensor(mean, device=device).view(1, -1, 1, 1) * 255.0
    scale = torch.tensor(std, device=device).view(1, -1, 1, 1) * 255.0
    return shift, scale
