"""The augmentation pipelines: every preset builds strictly and sizes for the model; InputPrep normalises
on the device with the backbone's mean and std."""

import os
import time
import typing
import warnings

# helpers sets this too, but albumentations is imported here first: no PyPI update check at import
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import albumentations as A
import cv2
import numpy as np
import pytest
import timm
import torch
from timm.data import resolve_model_data_config

from helpers.augment import (
    PRESETS,
    InputPrep,
    build_eval_transform,
    build_train_transform,
    preset_transforms,
    to_hwc,
)
from helpers.config import Preset
from helpers.model import data_config_for

IMAGENET = data_config_for("resnet18")


def _image(height: int = 40, width: int = 30, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _walk(transforms):
    for t in transforms:
        yield t
        if isinstance(t, A.BaseCompose):
            yield from _walk(t.transforms)


@pytest.mark.parametrize("preset", list(PRESETS))
def test_every_preset_builds_without_ignored_arguments_and_yields_a_square_tensor(preset):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an ignored or deprecated argument warns: make it fail here
        transform = build_train_transform(preset, 48)
    for seed in range(10):  # random branches differ per call
        out = transform(image=_image(seed=seed))["image"]
        assert isinstance(out, torch.Tensor)
        assert out.dtype == torch.uint8
        assert out.shape == (3, 48, 48)


def test_resize_takes_height_first():
    out = build_eval_transform((48, 20))(image=_image(40, 30))["image"]
    assert out.shape == (3, 48, 20)


def test_removed_argument_raises_under_strict_and_is_only_a_warning_without():
    with pytest.raises(ValueError, match="var_limit"):
        A.GaussNoise(var_limit=(10.0, 50.0), strict=True)
    with pytest.raises(ValueError, match="max_holes"):
        A.CoarseDropout(max_holes=8, strict=True)
    with pytest.warns(UserWarning, match="var_limit"):
        A.GaussNoise(var_limit=(10.0, 50.0))


def test_strict_compose_rejects_an_ignored_argument_inside_oneof():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        inner = A.OneOf([A.GaussNoise(var_limit=(10.0, 50.0))])
    with pytest.raises(ValueError, match="var_limit"):
        A.Compose([inner], strict=True)


def test_light_keeps_digits_readable_and_stronger_presets_flip():
    names = {p: {type(t).__name__ for t in _walk(preset_transforms(p))} for p in PRESETS}
    assert not names["light"] & {"HorizontalFlip", "VerticalFlip"}
    assert "HorizontalFlip" in names["medium"]
    kaggle = {"HorizontalFlip", "VerticalFlip", "GaussNoise", "MotionBlur", "MedianBlur", "CoarseDropout"}
    assert kaggle <= names["heavy"]
    assert names["none"] == set()


def test_preset_transforms_are_augmentations_only_and_fresh_each_call():
    transforms = preset_transforms("heavy")
    assert not {type(t).__name__ for t in _walk(transforms)} & {"Resize", "Normalize", "ToTensorV2"}
    assert all(a is not b for a, b in zip(transforms, preset_transforms("heavy"), strict=True))


def test_presets_are_the_configs_choices():
    assert list(PRESETS) == list(typing.get_args(Preset))


def test_unknown_preset_lists_the_presets():
    with pytest.raises(ValueError, match="none.*light.*medium.*heavy"):
        build_train_transform("strong", 32)


@pytest.mark.parametrize("backbone", ["resnet18", "vit_tiny_patch16_224"])
def test_normalisation_uses_the_backbones_mean_and_std(backbone):
    cfg = data_config_for(backbone)
    value = 200
    image = np.full((40, 30, 3), value, dtype=np.uint8)
    batch = build_eval_transform(32)(image=image)["image"][None]
    out = InputPrep.for_backbone(backbone)(batch, torch.device("cpu"))[0]
    expected = (value / 255 - np.asarray(cfg["mean"])) / np.asarray(cfg["std"])
    assert out.dtype == torch.float32
    np.testing.assert_allclose(out.mean(dim=(1, 2)).numpy(), expected, atol=1e-5)
    assert torch.allclose(out, out[:, :1, :1])  # constant stays constant


def test_input_prep_passes_float_batches_through_and_sets_the_memory_format():
    x = torch.randn(2, 3, 8, 8)
    out = InputPrep((0.5,) * 3, (0.5,) * 3, channels_last=True)(x, torch.device("cpu"))
    assert torch.equal(out, x)
    assert out.is_contiguous(memory_format=torch.channels_last)


def test_vit_tiny_is_a_non_imagenet_normalisation():
    assert data_config_for("vit_tiny_patch16_224")["mean"] == (0.5, 0.5, 0.5)
    assert IMAGENET["mean"] == (0.485, 0.456, 0.406)


def test_data_config_is_fast_and_equals_the_models_own():
    start = time.monotonic()
    cfg = data_config_for("resnet18")
    assert time.monotonic() - start < 1.0
    assert cfg == resolve_model_data_config(timm.create_model("resnet18", pretrained=False))


def test_to_hwc_gives_the_pipelines_images_back_for_display():
    image = _image(32, 32)
    tensor = build_eval_transform(32)(image=image)["image"]
    assert np.array_equal(to_hwc(tensor), image)
    assert to_hwc(torch.stack([tensor] * 2)).shape == (2, 32, 32, 3)


def test_eval_crop_resizes_to_size_over_crop_then_keeps_the_centre():
    """timm's eval crop: resize to floor(size / crop_pct), centre crop size; 0 or 1 is no crop."""
    image = _image(50, 70)
    out = build_eval_transform(32, 0.8)(image=image)["image"].permute(1, 2, 0).numpy()
    expected = cv2.resize(image, (40, 40), interpolation=cv2.INTER_LINEAR)[4:36, 4:36]
    assert out.shape == (32, 32, 3)
    assert np.array_equal(out, expected)
    plain = build_eval_transform(32)(image=image)["image"]
    assert torch.equal(build_eval_transform(32, 1.0)(image=image)["image"], plain)
    assert not torch.equal(torch.from_numpy(out).permute(2, 0, 1), plain)


def test_the_eval_crop_follows_the_pretrained_weights_only():
    from helpers.config import Config
    from helpers.model import data_config_for
    from helpers.settings import choose_crop as choose

    def choose_crop(cfg: Config) -> tuple[float, str]:
        return choose(cfg.crop_pct, cfg.backbone, cfg.uses_pretrained_weights())

    assert choose_crop(Config(backbone="resnet18", pretrained=False))[0] == 1.0
    pretrained = Config(backbone="resnet18", weights_file="/weights/resnet18.safetensors")
    crop, why = choose_crop(pretrained)
    assert crop == data_config_for("resnet18")["crop_pct"] != 1.0 and "pretrained" in why
    assert choose_crop(pretrained.replace(crop_pct=0.5)) == (0.5, "as configured")
