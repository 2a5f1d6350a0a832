"""Keep freed memory in the process, so every batch does not pay the kernel again for the same pages.

glibc's malloc serves large blocks (a batch's activations, a copied weight tensor) with fresh `mmap`s and
gives them back on `free`, and trims the top of its heap whenever enough of it is free: the next batch asks
for the same sizes and the kernel has to map and zero every page again. On the 2-core benchmark machine a
five-model ensemble pass over the demo test set took 150,000-200,000 page faults (about 0.3 s of 3.3 s)
or none, depending on the heap's history, and with these settings none; two epochs of the default recipe
took 1.0-1.1 million faults and 6.0-6.5 s per epoch, and with these settings 76,000 and 5.1-5.2 s. The price is that the process keeps its peak memory until it
exits, which a notebook kernel or a training process reuses anyway.

The kit's entry points apply it: `helpers.notebook` (every notebook's first cell), the notebook runner,
the training CLI and the benchmarks. Importing `helpers` does not, so a program that uses the helpers as a
library keeps the malloc behaviour it chose.

PyTorch's own advice for CPU work is a different allocator (jemalloc or tcmalloc through LD_PRELOAD);
this needs nothing installed. It does nothing off glibc, or when MALLOC_MMAP_THRESHOLD_ or
MALLOC_TRIM_THRESHOLD_ is set: the user has chosen already.
"""

from __future__ import annotations

import ctypes
import os
import sys

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
KEEP_BYTES = 1 << 30  # blocks up to 1 GiB come from the heap; up to 1 GiB free at its top is kept

_applied: bool | None = None


def retain_freed_memory() -> bool:
    """Tell glibc's malloc to reuse freed blocks instead of returning them to the kernel (once per process).

    Returns True when the settings are in force.
    """
    global _applied
    if _applied is None:
        _applied = _apply()
    return _applied


def _apply() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") or os.environ.get("MALLOC_TRIM_THRESHOLD_"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, KEEP_BYTES)) and bool(mallopt(M_TRIM_THRESHOLD, KEEP_BYTES))
