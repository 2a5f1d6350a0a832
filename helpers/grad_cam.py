"""Grad-CAM: where a timm model looks when it scores a class, as heat maps over its feature maps.

04 explains (image, class) pairs: for either task the task object says which classes of which images
(helpers.tasks.Task.cam_targets), and one pass computes their maps.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from helpers.augment import InputPrep, to_hwc
from helpers.config import ConfigError


def cam_layer(model: nn.Module, side: int, min_side: int = 4) -> dict:
    """The deepest feature stage (timm's `feature_info`) whose map is still at least min_side cells wide.

    The last stage of a CNN is 1x1 on small inputs (32 px / 32), which would make every map a constant.
    """
    stages = list(getattr(model, "feature_info", None) or [])
    if not stages:
        raise ConfigError(f"Grad-CAM needs timm's feature_info, which {type(model).__name__} lacks")
    wide = [f for f in stages if side // f["reduction"] >= min_side]
    return (wide or stages[:1])[-1]


def grad_cam(model: nn.Module, x: torch.Tensor, target: torch.Tensor | None = None) -> np.ndarray:
    """Grad-CAM heat maps (N, H, W) in [0, 1] over a spatial feature map of a timm model (NCHW or NHWC).

    The gradient of the target class score (the predicted class when None) weights each feature channel.
    """
    model.eval()
    stage = cam_layer(model, min(x.shape[-2:]))
    captured: list[torch.Tensor] = []

    def keep(_module, _inputs, output):
        output.retain_grad()
        captured.append(output)

    handle = model.get_submodule(stage["module"]).register_forward_hook(keep)
    try:
        with torch.enable_grad():
            logits = model(x)
            target = logits.argmax(1) if target is None else target
            logits.gather(1, target[:, None]).sum().backward()
    finally:
        handle.remove()
    features = captured[-1]
    if features.dim() != 4:
        raise ConfigError(
            f"Grad-CAM needs a spatial feature map; {type(model).__name__}'s {stage['module']} "
            f"gives shape {tuple(features.shape)}"
        )
    feats, grads = features, features.grad
    if features.shape[1] != stage["num_chs"] and features.shape[-1] == stage["num_chs"]:  # NHWC
        feats, grads = features.permute(0, 3, 1, 2), grads.permute(0, 3, 1, 2)
    weights = grads.mean(dim=(2, 3), keepdim=True)
    cam = torch.relu((weights * feats).sum(1, keepdim=True))
    cam = torch.nn.functional.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    peak = cam.flatten(1).max(1).values.clamp_min(1e-12)[:, None, None]
    return (cam / peak).detach().cpu().numpy()


def explain(
    model: nn.Module, x: torch.Tensor, prep: InputPrep, pairs: Sequence[tuple[int, int]]
) -> tuple[np.ndarray, np.ndarray]:
    """Grad-CAM of (image, class) pairs of a uint8 batch: each image once per class asked for. Returns the
    images (NHWC uint8, one per pair) and their maps."""
    images = torch.tensor([i for i, _ in pairs])
    inputs = prep(x[images], next(model.parameters()).device)
    cams = grad_cam(model, inputs, torch.tensor([c for _, c in pairs], device=inputs.device))
    return to_hwc(x[images]), cams
