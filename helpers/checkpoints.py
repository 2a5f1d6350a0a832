"""Checkpoints per fold (where they live: helpers.run_folder): written atomically, loaded weights-only.

A checkpoint with a NaN or infinite weight is never written (helpers.finite), and a write that fails (disk
full, an I/O error) leaves the previous file as it was and says how many bytes the checkpoint needed and
how many the folder had free.

Each holds the plain timm state dict (no wrapper prefixes), so `timm.create_model(backbone,
num_classes=N).load_state_dict(ckpt["model"])` works without this kit, plus the config, the class names
and the epoch's metrics. Everything loads with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import errno
import shutil
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from helpers.atomic import atomic_torch_save
from helpers.errors import MissingFileError
from helpers.finite import check_weights
from helpers.model import skeleton


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (disk full, I/O error); the previous file is unchanged."""


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model inside DDP / torch.compile wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def plain_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone().contiguous() for k, v in unwrap(model).state_dict().items()}


def save_checkpoint(
    path: Path, model: nn.Module, config: dict, classes: list[str], metrics: dict, **extra: Any
) -> Path:
    """Write the model's plain state dict with its config, classes and metrics (and any resumable state).

    Raises NonFiniteWeights (nothing written) for a non-finite weight of the model or of an `ema` state in
    `extra`, and CheckpointWriteError when the write fails; either way the previous file stays as it was.
    """
    payload = {
        "model": plain_state_dict(model),
        "backbone": config["backbone"],
        "num_classes": len(classes),
        "classes": list(classes),
        "config": config,
        "metrics": metrics,
        **extra,
    }
    check_weights(payload["model"], "model", path)
    if extra.get("ema") is not None:
        check_weights(extra["ema"], "EMA", path)
    try:
        return atomic_torch_save(payload, path)
    except OSError as error:
        raise _write_error(error, payload, Path(path)) from error


def tensor_bytes(value: Any) -> int:
    """The bytes of the tensors in a nested payload: about what its file needs on disk."""
    if isinstance(value, torch.Tensor):
        return value.untyped_storage().nbytes()
    if isinstance(value, dict):
        return sum(tensor_bytes(v) for v in value.values())
    if isinstance(value, list | tuple):
        return sum(tensor_bytes(v) for v in value)
    return 0


def _write_error(error: OSError, payload: dict[str, Any], path: Path) -> CheckpointWriteError:
    needed = tensor_bytes(payload)
    free = shutil.disk_usage(path.parent).free if path.parent.exists() else 0
    what = "the disk is full" if error.errno in (errno.ENOSPC, errno.EDQUOT) else f"{error.strerror or error}"
    return CheckpointWriteError(
        error.errno,
        f"could not write {path}: {what}. The checkpoint needs about {needed / 1e6:.1f} MB and "
        f"{path.parent} has {free / 1e6:.1f} MB free; the previous {path.name} is unchanged. Free some "
        "space and run again: training resumes from it.",
    )


def load_checkpoint(
    path: Path, map_location: str | torch.device = "cpu", mmap: bool = False
) -> dict[str, Any]:
    """The checkpoint's contents (weights only); `mmap` maps its tensors from the file instead of reading them."""
    if not Path(path).exists():
        raise MissingFileError(
            f"checkpoint {path} does not exist: train that fold with notebooks/03_train.ipynb"
        )
    return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)


def load_model(
    path: Path, device: str | torch.device = "cpu", channels_last: bool = False
) -> tuple[nn.Module, dict[str, Any]]:
    """A timm model with the checkpoint's weights, in eval mode, and the checkpoint's metadata.

    The file is memory-mapped and its tensors become the model's own (no random initialisation to
    overwrite, no second copy), so building each model of an ensemble costs little next to running it.
    """
    ckpt = load_checkpoint(path, mmap=True)
    state = ckpt.pop("model")
    model = skeleton(ckpt["backbone"], ckpt["num_classes"])
    if any(name not in state for name, _ in model.named_buffers()):
        # non-persistent buffers are computed at construction, not stored: build the model for real
        model = timm.create_model(ckpt["backbone"], pretrained=False, num_classes=ckpt["num_classes"])
    if channels_last:
        state = {
            k: v.contiguous(memory_format=torch.channels_last) if v.dim() == 4 else v
            for k, v in state.items()
        }
    model.load_state_dict(state, assign=True)
    return model.to(device).eval(), ckpt
