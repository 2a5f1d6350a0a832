"""The one image reader: every image the kit touches, checked and converted to 8-bit RGB the same way.

cv2 alone fails silently on bad files (None for a non-image, grey rows for a truncated JPEG), so the
reader checks the container's end marker itself and raises `ImageError` with the reason.
Grey, RGBA, 16-bit, CMYK and EXIF-rotated images all come out as upright 8-bit RGB (cv2's
IMREAD_COLOR_RGB: alpha dropped, 16 bits scaled down, EXIF orientation applied).

Training at a size far below the photo's (224 px from 1280x960) needs only a reduced image: `read_image(path,
side)` returns the image with its shorter side area-resized down to `side` (aspect kept), and decodes a JPEG
at 1/2, 1/4 or 1/8 of its size first (the codec's DCT scaling, cv2's IMREAD_REDUCED_*) when that still
leaves the shorter side at `side` or more. Every path that feeds a model (the store, the loaders without
it) goes through this one function, so they give the same pixels. A reduced decode then area resize stays
within `REDUCED_TOLERANCE` of a full decode then area resize (tests/test_store.py measures it on photos).
"""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from helpers.errors import KitError

JPEG_SOS, JPEG_EOI = b"\xff\xda", b"\xff\xd9"
PNG_IDAT, PNG_IEND = b"IDAT", b"IEND"
# what a stored image depends on besides its file: bump when read_image's pixels change (helpers.store)
READER_VERSION = 1
REDUCTIONS = (8, 4, 2)  # the JPEG codec's DCT scale factors, largest first
# reduced decode + area resize against full decode + area resize, in 0..255 levels: the mean and the
# 99.9th percentile of the absolute difference over all pixels. Both are averages of the same photo over
# boxes of at least 2 x 2 decoded pixels; they differ at sharp edges by the codec's DCT-domain scaling
# against a box filter: about what JPEG quality 90 itself changes, and far below the +-38 levels of the
# light preset's brightness change (tests/test_store.py measures it on photographs).
REDUCED_TOLERANCE = {"mean": 2.0, "p999": 16}
EXIF_TRANSPOSED = {5, 6, 7, 8}  # EXIF orientations that swap width and height


class ImageError(KitError, ValueError):
    """An image that cannot be used; `reason` is one of: missing, empty, not an image, truncated, unreadable."""

    def __init__(self, path: Path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


def is_truncated(data: bytes) -> bool:
    """True when a JPEG or PNG stops before its end marker (cv2 would fill the rest with grey)."""
    if data[:2] == b"\xff\xd8":
        return data.rfind(JPEG_EOI) < data.rfind(JPEG_SOS)
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return data.rfind(PNG_IEND) < data.rfind(PNG_IDAT)
    return False


def jpeg_size(data: bytes) -> tuple[int, int] | None:
    """A JPEG's upright (height, width) from its header alone (EXIF orientation applied); None otherwise."""
    if data[:2] != b"\xff\xd8":
        return None
    try:
        with Image.open(io.BytesIO(data)) as header:
            width, height = header.size
            orientation = header.getexif().get(0x0112, 1)
    except Exception:  # a header Pillow cannot parse: the full decode decides whether it is an image
        return None
    return (width, height) if orientation in EXIF_TRANSPOSED else (height, width)


def reduction_for(height: int, width: int, side: int) -> int:
    """The largest JPEG scale factor that keeps the shorter side at twice `side` or more (1: in full).

    Twice, so that the area resize after it still averages at least 2 x 2 decoded pixels per output
    pixel, as it does after a full decode: a reduced image only slightly larger than `side` (a ratio below
    2) would come out sharper than the full decode's, 4 levels apart on average instead of 1-2.
    """
    short = min(height, width)
    return next((r for r in REDUCTIONS if side and short // r >= 2 * side), 1)


def fitted_size(height: int, width: int, side: int) -> tuple[int, int]:
    """The (height, width) `fit_side` gives: the shorter side `side`, aspect kept; unchanged when not larger."""
    short = min(height, width)
    if not side or short <= side:
        return height, width
    return (side, round(width * side / height)) if height == short else (round(height * side / width), side)


def fit_side(image: np.ndarray, side: int) -> np.ndarray:
    """The image with its shorter side area-resized to `side` (aspect kept); unchanged when not larger."""
    height, width = fitted_size(*image.shape[:2], side)
    if (height, width) == image.shape[:2]:
        return image
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)


def decode_image(data: bytes, path: Path, side: int = 0) -> tuple[np.ndarray, tuple[int, int]]:
    """Decode file bytes into an HxWx3 uint8 RGB array, fitted to `side` (0: full size), with the image's
    full (height, width); raise ImageError naming the path when the bytes are no usable image."""
    if not data:
        raise ImageError(path, "empty")
    if is_truncated(data):
        raise ImageError(path, "truncated")
    full = jpeg_size(data) if side else None
    reduction = reduction_for(*full, side) if full else 1
    flags = cv2.IMREAD_COLOR_RGB
    if reduction > 1:
        reduced = {
            2: cv2.IMREAD_REDUCED_COLOR_2,
            4: cv2.IMREAD_REDUCED_COLOR_4,
            8: cv2.IMREAD_REDUCED_COLOR_8,
        }
        flags |= reduced[reduction] & ~cv2.IMREAD_COLOR_BGR  # the scale bits, in RGB
    image = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    if image is None:
        raise ImageError(path, "not an image")
    return fit_side(image, side), full if reduction > 1 else image.shape[:2]


def read_image(path: str | Path, side: int = 0) -> np.ndarray:
    """Read one image file as HxWx3 uint8 RGB, its shorter side fitted to `side` when given and larger;
    raise ImageError with the reason when it is unusable."""
    return read_image_sized(path, side)[0]


def read_image_sized(path: str | Path, side: int = 0) -> tuple[np.ndarray, tuple[int, int]]:
    """`read_image` and the image's full (height, width), which a reduced decode does not show."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ImageError(path, "missing") from None
    except IsADirectoryError:
        raise ImageError(path, "not an image") from None
    except OSError:
        raise ImageError(path, "unreadable") from None
    return decode_image(data, path, side)
