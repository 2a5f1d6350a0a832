"""The one image reader: every image the kit touches, checked and converted to 8-bit RGB the same way.

cv2 alone fails silently on bad files (None for a non-image, grey rows for a truncated JPEG), so the
reader checks the container's end marker itself and raises `ImageError` with the reason.
Grey, RGBA, 16-bit, CMYK and EXIF-rotated images all come out as upright 8-bit RGB (cv2's
IMREAD_COLOR_RGB: alpha dropped, 16 bits scaled down, EXIF orientation applied).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

JPEG_SOS, JPEG_EOI = b"\xff\xda", b"\xff\xd9"
PNG_IDAT, PNG_IEND = b"IDAT", b"IEND"


class ImageError(ValueError):
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


def decode_image(data: bytes, path: Path) -> np.ndarray:
    """Decode file bytes into an HxWx3 uint8 RGB array, or raise ImageError naming the path."""
    if not data:
        raise ImageError(path, "empty")
    if is_truncated(data):
        raise ImageError(path, "truncated")
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR_RGB)
    if image is None:
        raise ImageError(path, "not an image")
    return image


def read_image(path: str | Path) -> np.ndarray:
    """Read one image file as HxWx3 uint8 RGB; raise ImageError with the reason when it is unusable."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ImageError(path, "missing") from None
    except IsADirectoryError:
        raise ImageError(path, "not an image") from None
    except OSError:
        raise ImageError(path, "unreadable") from None
    return decode_image(data, path)
