"""Any timm backbone with the right number of classes, from pretrained weights when asked.

`timm.create_model(name, num_classes=N)` builds the head for every family, so no head is rebuilt by hand.
Pretrained weights come from a local file (`weights_file`) or from the Hugging Face cache, downloaded into
it when missing: `helpers.weights` says where they come from and converts foreign layouts.
"""

from __future__ import annotations

import copy
import difflib
import functools
from pathlib import Path
from typing import Any

import timm
import torch
from timm.data import resolve_model_data_config
from torch import nn

from helpers.config import ConfigError
from helpers.weights import (
    check_timm_layout,
    from_efficientnet_pytorch,
    hub_weights_file,
    is_efficientnet_pytorch,
    local_weights_file,
    read_state_dict,
)


def check_backbone(backbone: str) -> None:
    """Raise ConfigError, suggesting close timm names, unless `backbone` is a timm model (with a valid tag)."""
    arch, _, tag = backbone.partition(".")
    if not timm.is_model(arch):
        close = timm.list_models(f"*{arch}*")[:8] or difflib.get_close_matches(arch, timm.list_models(), n=8)
        hint = f"close names: {', '.join(close)}" if close else "see timm.list_models('*part_of_name*')"
        raise ConfigError(f"backbone={backbone!r} is not a timm model; {hint}")
    if tag and backbone not in timm.list_pretrained(f"{arch}.*"):
        tags = timm.list_pretrained(f"{arch}.*")
        known = ", ".join(tags) or "none"
        raise ConfigError(f"backbone={backbone!r}: {arch} has no pretrained tag {tag!r}; known: {known}")


def data_config_for(backbone: str) -> dict[str, Any]:
    """The backbone's own input_size, mean, std, interpolation and crop (`resolve_model_data_config`).

    Read from the model itself, built on the meta device (no memory, no download, and cached), so a
    notebook can normalise images before building the model. Building it, rather than reading the
    registry's pretrained config, matters for the odd model whose registered size differs from the one it is
    built at (vitamin_xlarge_336 is built at 256).
    """
    return dict(resolve_model_data_config(_meta_model(backbone, None)))


def skeleton(backbone: str, num_classes: int) -> nn.Module:
    """A new, uninitialised model of this architecture on the meta device, ready for a state dict with
    `load_state_dict(..., assign=True)`.

    The architecture is built once per (backbone, classes) and copied after that: loading the five folds of
    an ensemble then costs one timm build and four cheap copies, with no random initialisation at all.
    """
    return copy.deepcopy(_meta_model(backbone, num_classes))


@functools.lru_cache(maxsize=16)
def _meta_model(backbone: str, num_classes: int | None) -> nn.Module:
    check_backbone(backbone)
    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    with torch.device("meta"):
        return timm.create_model(backbone, pretrained=False, **kwargs)


def default_img_size(backbone: str) -> int:
    """The square side the backbone was trained at (its data config's input_size), e.g. 224 for resnet18."""
    return int(data_config_for(backbone)["input_size"][-1])


def create_model(
    backbone: str, num_classes: int, pretrained: bool = False, weights_file: str = ""
) -> nn.Module:
    """A timm model with a fresh `num_classes` head, from pretrained weights when asked.

    `weights_file` (absolute, or relative to the project root) is loaded whenever it is given, as a .pth,
    .safetensors or {'state_dict': ...} file, in timm's layout or EfficientNet-PyTorch's (renamed,
    `helpers.weights`); `pretrained=True` without it takes the Hugging Face cache, or downloads into it
    (`helpers.weights.hub_weights_file`). The head is new unless `num_classes` equals the pretrained
    config's (1000 for ImageNet backbones): timm drops a file's head by that count, not by the file's own
    shape, so this is for pretrained weights, not for restoring a fine-tuned checkpoint (load its state dict
    into the model for that). Raises ValueError for an unknown backbone or weights layout, FileNotFoundError
    (within seconds) for weights that are neither on disk nor downloadable.
    """
    check_backbone(backbone)
    if weights_file:
        return _from_weights_file(backbone, num_classes, local_weights_file(weights_file))
    if pretrained:
        return _timm_from_file(backbone, num_classes, hub_weights_file(backbone))
    return timm.create_model(backbone, pretrained=False, num_classes=num_classes)


def _timm_from_file(backbone: str, num_classes: int, path: Path) -> nn.Module:
    return timm.create_model(
        backbone, pretrained=True, num_classes=num_classes, pretrained_cfg_overlay=dict(file=str(path))
    )


def _from_weights_file(backbone: str, num_classes: int, path: Path) -> nn.Module:
    """The model with a weights file loaded: EfficientNet-PyTorch's layout renamed here, timm's loaded by
    timm; any other layout, or a file that lacks some of the model's tensors, is a ValueError."""
    state = read_state_dict(path)
    expected = _meta_model(backbone, None).state_dict()
    if is_efficientnet_pytorch(state):
        model = timm.create_model(backbone, pretrained=False, num_classes=num_classes)
        _load_pretrained_state(model, from_efficientnet_pytorch(state, expected, backbone), num_classes)
        return model
    check_timm_layout(state, expected, _head_names(_meta_model(backbone, None)), backbone)
    return _timm_from_file(backbone, num_classes, path)


def _head_names(model: nn.Module) -> tuple[str, ...]:
    """The classifier's module names in timm's pretrained config (one, or several for distilled models)."""
    head = model.pretrained_cfg["classifier"]
    return (head,) if isinstance(head, str) else tuple(head)


def _load_pretrained_state(model: nn.Module, state: dict[str, torch.Tensor], num_classes: int) -> None:
    """Load a full pretrained state dict (timm's names), keeping its head only at the pretrained class
    count, as timm's own loader does; only the head and batch-norm step counters may be left unloaded."""
    head = tuple(f"{name}." for name in _head_names(model))
    if num_classes != model.pretrained_cfg["num_classes"]:
        state = {k: v for k, v in state.items() if not k.startswith(head)}
    result = model.load_state_dict(state, strict=False)
    unloaded = [k for k in result.missing_keys if not k.startswith(head) and "num_batches_tracked" not in k]
    if result.unexpected_keys or unloaded:
        raise RuntimeError(f"pretrained weights did not fit {type(model).__name__}: {result}")


def count_parameters(model: nn.Module) -> int:
    """All parameters of the model, trainable or not: the size figure shown next to a backbone's name."""
    return sum(p.numel() for p in model.parameters())
