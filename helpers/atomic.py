"""Atomic file writes: a temp file in the same folder, flushed to disk, then renamed over the target.

A run killed mid-write leaves the previous file intact, never a half-written one.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


def atomic_write(path: Path, write: Callable[[IO[bytes]], Any]) -> Path:
    """Call `write` on a temp file beside `path`, fsync it, and rename it to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: Path, text: str) -> Path:
    return atomic_write(path, lambda f: f.write(text.encode()))


def atomic_to_csv(frame: Any, path: Path) -> Path:
    """Write a pandas DataFrame as CSV without its index, atomically."""
    return atomic_write(path, lambda f: frame.to_csv(f, index=False))


def atomic_torch_save(obj: Any, path: Path) -> Path:
    import torch

    return atomic_write(path, lambda f: torch.save(obj, f))


def atomic_savefig(fig: Any, path: Path) -> Path:
    """Save a matplotlib figure as PNG, atomically."""
    return atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110, bbox_inches="tight"))
