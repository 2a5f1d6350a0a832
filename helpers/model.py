"""Any timm backbone with the right number of classes, and pretrained weights that never need the network.

`timm.create_model(name, num_classes=N)` builds the head for every family, so no head is rebuilt by hand.
Pretrained weights come from a local file (`weights_file`) or from the Hugging Face cache: the cache is
looked up on disk first, because timm offline retries for about 47 s before it fails, and setting
`HF_HUB_OFFLINE` after `huggingface_hub` is imported has no effect (it is read once, at import).
"""

from __future__ import annotations

import copy
import difflib
import functools
from pathlib import Path
from typing import Any

import timm
import torch
from huggingface_hub import constants as hf_constants
from huggingface_hub import try_to_load_from_cache
from timm.data import resolve_model_data_config
from torch import nn

from helpers.config import ConfigError
from helpers.errors import MissingFileError
from helpers.paths import resolve_path

NO_WEIGHTS_HINT = "pass weights_file=/path/to/weights.pth (or .safetensors), or set pretrained=False."


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


def cached_weights_file(backbone: str) -> Path | None:
    """The backbone's pretrained weights in the Hugging Face cache, or None; a disk look-up only.

    Tries the files timm itself would fetch: the safetensors alternative first, then the configured file.
    """
    check_backbone(backbone)
    pretrained_cfg = timm.models.get_pretrained_cfg(backbone)
    if not pretrained_cfg.hf_hub_id:
        return None
    repo_id, _, revision = pretrained_cfg.hf_hub_id.partition("@")
    for filename in _hub_filenames(pretrained_cfg.hf_hub_filename):
        found = try_to_load_from_cache(repo_id, filename, revision=revision or None)
        if isinstance(found, str):  # not None and not the "known missing" sentinel
            return Path(found)
    return None


def _hub_filenames(configured: str | None) -> list[str]:
    """Weight file names to look for in a hub repo, preferred first, as timm's hub loader orders them."""
    name = configured or "pytorch_model.bin"
    if not name.endswith(".bin"):
        return [name]
    safe = {
        "pytorch_model.bin": "model.safetensors",
        "open_clip_pytorch_model.bin": "open_clip_model.safetensors",
    }.get(name, name.removesuffix(".bin") + ".safetensors")
    return [safe, name]


def create_model(
    backbone: str, num_classes: int, pretrained: bool = False, weights_file: str = ""
) -> nn.Module:
    """A timm model with a fresh `num_classes` head; pretrained weights only from disk, never downloaded.

    `weights_file` (absolute, or relative to the project root) is loaded whenever it is given, as a .pth,
    .safetensors or {'state_dict': ...} file; `pretrained=True` without it uses the Hugging Face cache.
    The head is new unless `num_classes` equals the pretrained config's (1000 for ImageNet backbones):
    timm drops a file's head by that count, not by the file's own shape, so this is for pretrained
    weights, not for restoring a fine-tuned checkpoint (load its state dict into the model for that).
    Raises ConfigError for an unknown backbone, MissingFileError (within milliseconds) for missing weights.
    """
    check_backbone(backbone)
    if weights_file:
        path = resolve_path(weights_file)
        if not path.is_file():
            raise MissingFileError(f"weights_file={weights_file!r}: no such file ({path})")
    elif pretrained:
        path = _cached_or_raise(backbone)
    else:
        return timm.create_model(backbone, pretrained=False, num_classes=num_classes)
    return timm.create_model(
        backbone, pretrained=True, num_classes=num_classes, pretrained_cfg_overlay=dict(file=str(path))
    )


def _cached_or_raise(backbone: str) -> Path:
    """The cached pretrained weights of `backbone`, or an error that says what to do instead."""
    hub_id = timm.models.get_pretrained_cfg(backbone).hf_hub_id
    if not hub_id:
        raise MissingFileError(f"timm lists no Hugging Face weights for {backbone!r}: {NO_WEIGHTS_HINT}")
    found = cached_weights_file(backbone)
    if found is None:
        raise MissingFileError(
            f"pretrained weights for {backbone!r} ({hub_id}) are not in the Hugging Face cache "
            f"({hf_constants.HF_HUB_CACHE}) and there is no network here to download them: {NO_WEIGHTS_HINT}"
        )
    return found


def count_parameters(model: nn.Module) -> int:
    """All parameters of the model, trainable or not: the size figure shown next to a backbone's name."""
    return sum(p.numel() for p in model.parameters())
