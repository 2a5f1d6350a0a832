"""The run's automatic settings, resolved in one place: task, monitor, img_size and crop_pct.

A setting left automatic (`config.AUTOMATIC`: task 'auto', monitor 'auto', img_size 0, crop_pct 0) is
decided here and nowhere else: 01 plans its image store with `planned_side`, 02 and 03 train and preview
with `resolve_settings`, 04 and the library calls reconcile a config that still says 'auto' with the
prepared data through `resolve_task`. Every rule takes the values it reads, so 01 (before any image is
decoded, from a sample of image headers) and 03 (from the checked table) apply the same size rule.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol

import numpy as np
import pandas as pd
from PIL import Image

from helpers.config import Config, ConfigError
from helpers.model import data_config_for, default_img_size
from helpers.store import store_side
from helpers.tasks import TASKS


class PreparedData(Protocol):
    """What resolving asks of the prepared data (helpers.dataset.DataInfo): its task, why, and its table
    with each image's height and width."""

    task: str
    task_reason: str
    table: pd.DataFrame


HEADER_SAMPLE = 256  # image headers 01 reads to estimate the images' median side before decoding any


def choose_img_size(img_size: int, backbone: str, pretrained: bool, median: int) -> tuple[int, str]:
    """The configured size, or the backbone's own (for pretrained weights, the size they were trained at),
    capped at the images' median longer side (rounded up to 32) only when the images are smaller; with
    the reason. `median` 0: unknown, no cap."""
    if img_size:
        return img_size, "as configured"
    own = default_img_size(backbone)
    whose = "pretrained input size" if pretrained else "default input size"
    if not median or median >= own:
        seen = f"; the images' median side is {median} px" if median else ""
        return own, f"{backbone}'s {whose} (timm's data config{seen})"
    size = min(own, max(32, math.ceil(median / 32) * 32))
    return size, f"the images' median side {median} px rounded up to 32, below {backbone}'s {whose} {own}"


def choose_crop(crop_pct: float, backbone: str, pretrained: bool) -> tuple[float, str]:
    """The configured eval crop, or the one the pretrained weights were validated with (timm's data config);
    from scratch, no crop: the model is validated on the whole image, as it trains."""
    if crop_pct:
        return crop_pct, "as configured"
    if pretrained:
        crop = float(data_config_for(backbone)["crop_pct"])
        return (
            crop,
            f"{backbone}'s pretrained eval crop (timm's data config): resize to img_size / {crop:g}, centre crop",
        )
    return 1.0, "no crop: training from scratch sees the whole image"


def median_side(heights: Sequence[int], widths: Sequence[int]) -> int:
    """The median of the images' longer sides (0 for no image)."""
    sides = np.maximum(np.asarray(heights), np.asarray(widths))
    return int(np.median(sides)) if len(sides) else 0


def header_median_side(paths: Sequence[str], sample: int = HEADER_SAMPLE) -> int:
    """The median longer side of an evenly spaced sample of the images, from their headers (no decode);
    files whose header cannot be read are left out."""
    picked = [paths[i] for i in np.linspace(0, len(paths) - 1, min(sample, len(paths))).astype(int)]
    sides = []
    for path in picked:
        try:
            with Image.open(path) as header:
                sides.append(max(header.size))
        except (OSError, ValueError):
            continue
    return int(np.median(sides)) if sides else 0


def planned_side(cfg: Config, paths: Sequence[str]) -> int:
    """The store side 03 will train at with this config, known before any image is decoded: the size rule
    of `choose_img_size` with the median from the images' headers, over the crop of `choose_crop`.

    01 reads the training settings from the run's config (the runner saves the whole series' parameters
    before 01 starts, helpers.runner.plan_run_config). By hand, 03 given another img_size, crop_pct,
    pretrained or backbone than 01 saw stores that side too (helpers.dataset.build_store)."""
    pretrained = cfg.uses_pretrained_weights()
    median = header_median_side(paths) if not cfg.img_size else 0
    size, _ = choose_img_size(cfg.img_size, cfg.backbone, pretrained, median)
    crop, _ = choose_crop(cfg.crop_pct, cfg.backbone, pretrained)
    return store_side(size, crop)


def resolve_task(cfg: Config, info: PreparedData) -> Config:
    """The config with the data's task (prepare_dataset resolved `auto`) and the monitor for it (`auto`:
    the task's first monitor). A task or monitor the data contradicts is an error."""
    if cfg.task not in ("auto", info.task):
        raise ConfigError(
            f"task={cfg.task!r}, but the prepared data is {info.task} ({info.task_reason}); set task={info.task!r} "
            "or run 01_data again with the task you mean"
        )
    own = TASKS[info.task].monitors
    monitor = own[0] if cfg.monitor == "auto" else cfg.monitor
    if monitor not in own:
        raise ConfigError(
            f"monitor={cfg.monitor!r}: a {info.task} run reports {list(own)}; choose one, or 'auto'"
        )
    return cfg.replace(task=info.task, monitor=monitor)


def resolve_settings(cfg: Config, info: PreparedData) -> tuple[Config, list[str]]:
    """The config with its automatic settings chosen (task, monitor, img_size, crop_pct), and a line per
    choice saying what was chosen and why: what 02 previews with and 03 saves and shows before training."""
    resolved = resolve_task(cfg, info)
    pretrained = cfg.uses_pretrained_weights()
    median = median_side(info.table["height"], info.table["width"])
    size, why_size = choose_img_size(cfg.img_size, cfg.backbone, pretrained, median)
    crop, why_crop = choose_crop(cfg.crop_pct, cfg.backbone, pretrained)
    return resolved.replace(img_size=size, crop_pct=crop), [
        f"img_size {size}: {why_size}",
        f"crop_pct {crop:g}: {why_crop}",
        f"task {info.task}: {info.task_reason}",
        f"monitor {resolved.monitor}: {'as configured' if cfg.monitor != 'auto' else f'the {info.task} default'}",
    ]
