"""Helpers behind the image-classification notebooks: data, folds, augmentation, training, evaluation."""

import os

from helpers.allocator import retain_freed_memory

# albumentations checks PyPI for a newer release at every import; the kit runs offline.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

# Every process that uses the kit (notebook kernels, torchrun workers, tests, benchmarks) keeps freed
# memory for the next batch instead of faulting it in again: 15-20% of a CPU training epoch here.
retain_freed_memory()
