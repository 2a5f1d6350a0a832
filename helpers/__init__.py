"""Helpers behind the image-classification notebooks: data, folds, augmentation, training, evaluation."""

import os

# albumentations checks PyPI for a newer release at every import; the kit runs offline.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
