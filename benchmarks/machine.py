"""The machine, software and date lines every benchmark report starts from."""

from __future__ import annotations

import datetime as dt
import os
import platform
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def machine() -> list[str]:
    """The report's machine, software and date lines."""
    import albumentations
    import cv2
    import timm
    import torch

    from helpers.loaders import usable_cores

    cpu = platform.processor() or platform.machine()
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    cores = usable_cores()
    commit = subprocess.run(
        ["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True, text=True, check=False
    ).stdout.strip()
    return [
        f"- machine: {platform.platform()}, {cpu}, {cores} usable core(s), {mem_gb:.0f} GB RAM",
        f"- software: Python {platform.python_version()}, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), timm {timm.__version__}, albumentations "
        f"{albumentations.__version__}, OpenCV {cv2.__version__}; code {commit or 'unknown'}",
        f"- date: {dt.datetime.now().astimezone().isoformat(timespec='seconds')}",
    ]
