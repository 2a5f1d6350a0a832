"""Device and mixed-precision choices: autocast dtype and whether a GradScaler is needed.

fp16 needs a scaler (its range underflows small gradients); bf16 has fp32's range and needs none. On CPU
fp16 autocast does nothing and bf16 is several times slower than fp32 here, so `auto` means fp32 there.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from helpers.config import ConfigError


@dataclass(frozen=True)
class Precision:
    device_type: str
    dtype: torch.dtype  # autocast dtype; float32 means autocast is off

    @property
    def autocast(self) -> bool:
        return self.dtype != torch.float32

    @property
    def needs_scaler(self) -> bool:
        return self.dtype == torch.float16

    def context(self) -> torch.autocast:
        return torch.autocast(self.device_type, dtype=self.dtype, enabled=self.autocast)

    def scaler(self) -> torch.amp.GradScaler:
        """One scaler per run: enabled for fp16 only."""
        return torch.amp.GradScaler(self.device_type, enabled=self.needs_scaler)


def pick_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def resolve_precision(setting: str, device: torch.device, bf16_supported: bool | None = None) -> Precision:
    """The autocast choice for a precision setting (auto, fp32, bf16, fp16) on a device."""
    kind = device.type
    if setting == "fp32":
        return Precision(kind, torch.float32)
    if kind == "cpu":
        if setting == "fp16":
            raise ConfigError(
                "precision='fp16' does nothing on CPU (autocast ignores it): use 'fp32' or 'bf16'"
            )
        return Precision(kind, torch.bfloat16 if setting == "bf16" else torch.float32)
    if bf16_supported is None:
        bf16_supported = torch.cuda.is_bf16_supported()
    if setting == "bf16" and not bf16_supported:
        raise ConfigError("precision='bf16' is not supported on this GPU: use 'fp16' or 'auto'")
    if setting == "fp16" or (setting == "auto" and not bf16_supported):
        return Precision(kind, torch.float16)
    return Precision(kind, torch.bfloat16)
