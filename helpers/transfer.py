"""Fine-tuning a pretrained body: the head alone first (body frozen), then every layer with timm's layer decay.

The optimizer comes from timm's factory (`create_optimizer_v2(..., layer_decay=...)`), whose parameter
groups carry an `lr_scale` that only timm's own schedulers apply; the kit's schedules are torch's, so the
scale goes into each group's `lr` here, and every schedule then moves all groups by the same factor.

The optimizer is built with every parameter trainable, so the body's parameters are in it from the start
and the schedule covers the whole run. Freezing then only clears `requires_grad`: a parameter without a
gradient is skipped by the optimizer (no step, no weight decay), and a batch-norm layer whose parameters
are frozen runs in eval mode, so its running statistics stay the pretrained ones. timm's own
`timm.utils.freeze` swaps such layers for FrozenBatchNorm2d modules instead, which changes the model's
parameters and state dict mid-run; clearing the flags keeps the optimizer, the checkpoints and plain-timm
loading as they are.
"""

from __future__ import annotations

import timm.optim
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


def build_optimizer(
    model: nn.Module, optimizer: str, lr: float, weight_decay: float, layer_decay: float
) -> torch.optim.Optimizer:
    """timm's optimizer for the model, with layer-wise lr decay when `layer_decay` < 1 (groups' lrs scaled)."""
    built = timm.optim.create_optimizer_v2(
        model,
        opt=optimizer,
        lr=lr,
        weight_decay=weight_decay,
        momentum=0.9,
        layer_decay=layer_decay if layer_decay < 1 else None,
    )
    for group in built.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
    return built


def head_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The classifier's parameters (timm's `get_classifier()`): the layer a new class count replaces."""
    return list(model.get_classifier().parameters())


def freeze_body(model: nn.Module, frozen: bool) -> None:
    """Freeze (or thaw) every parameter but the classifier's."""
    head = {id(p) for p in head_parameters(model)}
    for p in model.parameters():
        p.requires_grad_(id(p) in head or not frozen)


def body_is_frozen(model: nn.Module) -> bool:
    """Whether any parameter is frozen (`freeze_body(model, True)` is in effect)."""
    return any(not p.requires_grad for p in model.parameters())


def keep_frozen_statistics(model: nn.Module) -> None:
    """Put every batch-norm layer whose parameters are all frozen in eval mode: its running mean and
    variance (and its batch counter) then stay as they are, and the forward pass uses them.

    Call it after `model.train()`, which sets every layer to training mode.
    """
    for module in model.modules():
        params = list(module.parameters(recurse=False))
        if isinstance(module, _BatchNorm) and params and not any(p.requires_grad for p in params):
            module.eval()


def lr_range(optimizer: torch.optim.Optimizer) -> tuple[float, float]:
    """(lowest, highest) learning rate over the parameter groups: with layer decay, the first layer's and
    the head's."""
    lrs = [float(group["lr"]) for group in optimizer.param_groups]
    return min(lrs), max(lrs)
