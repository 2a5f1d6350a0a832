"""read_image: every kind of file becomes upright 8-bit RGB, or an ImageError with the reason."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from helpers.images import JPEG_SOS, ImageError, is_truncated, read_image


def gradient(h: int = 24, w: int = 32) -> np.ndarray:
    """A smooth RGB image (JPEG keeps it close): red varies along x, green along y, blue constant."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // (w - 1), y * 255 // (h - 1), np.full_like(x, 128)], axis=-1).astype(np.uint8)


def save_rgb(path: Path, rgb: np.ndarray, *params: int) -> Path:
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), list(params))
    return path


def noise(side: int = 64, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)


def reason(path: Path) -> str:
    with pytest.raises(ImageError) as info:
        read_image(path)
    assert info.value.path == Path(path)
    assert str(path) in str(info.value)
    return info.value.reason


# -- good files -----------------------------------------------------------------------------------------
def test_jpeg_reads_as_rgb_uint8(tmp_path):
    rgb = gradient()
    image = read_image(save_rgb(tmp_path / "a.jpg", rgb, cv2.IMWRITE_JPEG_QUALITY, 100))
    assert image.shape == (24, 32, 3)
    assert image.dtype == np.uint8
    assert np.abs(image.astype(int) - rgb).mean() < 3


def test_png_reads_exactly(tmp_path):
    rgb = noise(20)
    image = read_image(save_rgb(tmp_path / "a.png", rgb))
    assert image.shape == (20, 20, 3) and image.dtype == np.uint8
    np.testing.assert_array_equal(image, rgb)


def test_str_path_accepted(tmp_path):
    path = save_rgb(tmp_path / "a.png", noise(8))
    np.testing.assert_array_equal(read_image(str(path)), noise(8))


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_channel_order_is_rgb(tmp_path, suffix):
    red = np.zeros((16, 16, 3), np.uint8)
    red[..., 0] = 255
    image = read_image(save_rgb(tmp_path / f"red{suffix}", red))
    assert image[..., 0].mean() > 240
    assert image[..., 1].mean() < 15
    assert image[..., 2].mean() < 15


# -- bad files ------------------------------------------------------------------------------------------
def test_truncated_jpeg(tmp_path):
    data = save_rgb(tmp_path / "full.jpg", noise()).read_bytes()
    cut = data[: len(data) // 2]
    assert JPEG_SOS in cut  # cut inside the scan, where cv2 would fill in grey
    (tmp_path / "cut.jpg").write_bytes(cut)
    assert is_truncated(cut) and not is_truncated(data)
    assert reason(tmp_path / "cut.jpg") == "truncated"


def test_truncated_png(tmp_path):
    data = save_rgb(tmp_path / "full.png", noise()).read_bytes()
    cut = data[: len(data) // 2]
    assert b"IDAT" in cut
    (tmp_path / "cut.png").write_bytes(cut)
    assert is_truncated(cut) and not is_truncated(data)
    assert reason(tmp_path / "cut.png") == "truncated"


def test_jpeg_missing_only_end_marker_is_truncated(tmp_path):
    data = save_rgb(tmp_path / "full.jpg", noise()).read_bytes()
    assert data.endswith(b"\xff\xd9")
    (tmp_path / "cut.jpg").write_bytes(data[:-2])
    assert reason(tmp_path / "cut.jpg") == "truncated"


def test_zero_byte_file(tmp_path):
    (tmp_path / "zero.jpg").write_bytes(b"")
    assert reason(tmp_path / "zero.jpg") == "empty"


def test_text_file_named_jpg(tmp_path):
    (tmp_path / "notes.jpg").write_text("id,label\n1,cat\n")
    assert reason(tmp_path / "notes.jpg") == "not an image"


def test_missing_file(tmp_path):
    assert reason(tmp_path / "nothing_here.jpg") == "missing"


def test_directory_is_not_an_image(tmp_path):
    (tmp_path / "folder.jpg").mkdir()
    assert reason(tmp_path / "folder.jpg") == "not an image"


def test_image_error_is_a_value_error(tmp_path):
    with pytest.raises(ValueError, match="missing"):
        read_image(tmp_path / "gone.png")


# -- unusual formats ------------------------------------------------------------------------------------
def test_grey_png_becomes_three_equal_channels(tmp_path):
    grey = np.random.default_rng(1).integers(0, 256, (12, 10), dtype=np.uint8)
    assert cv2.imwrite(str(tmp_path / "g.png"), grey)
    image = read_image(tmp_path / "g.png")
    assert image.shape == (12, 10, 3) and image.dtype == np.uint8
    for c in range(3):
        np.testing.assert_array_equal(image[..., c], grey)


def test_rgba_png_drops_alpha(tmp_path):
    rgb = noise(10, seed=2)
    alpha = np.full((10, 10, 1), 60, np.uint8)
    Image.fromarray(np.concatenate([rgb, alpha], axis=-1), "RGBA").save(tmp_path / "a.png")
    image = read_image(tmp_path / "a.png")
    assert image.shape == (10, 10, 3) and image.dtype == np.uint8
    np.testing.assert_array_equal(image, rgb)


def test_16bit_grey_png_scaled_not_saturated(tmp_path):
    grey16 = np.linspace(0, 40000, 16 * 16).reshape(16, 16).astype(np.uint16)
    assert cv2.imwrite(str(tmp_path / "g16.png"), grey16)
    assert cv2.imread(str(tmp_path / "g16.png"), cv2.IMREAD_UNCHANGED).dtype == np.uint16  # really 16-bit
    image = read_image(tmp_path / "g16.png")
    assert image.shape == (16, 16, 3) and image.dtype == np.uint8
    expected = grey16.mean() / 257
    assert abs(image.mean() - expected) < 2
    assert (image == 255).mean() < 0.05
    assert image[0, 0, 0] < 2 and abs(int(image[-1, -1, 0]) - 40000 // 257) <= 2


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    Image.new("RGB", (16, 12), (255, 0, 0)).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=95)
    with Image.open(tmp_path / "cmyk.jpg") as im:
        assert im.mode == "CMYK"
    image = read_image(tmp_path / "cmyk.jpg")
    assert image.shape == (12, 16, 3) and image.dtype == np.uint8
    assert image[..., 0].mean() > 220
    assert image[..., 1].mean() < 35
    assert image[..., 2].mean() < 35


def test_exif_orientation_6_is_applied(tmp_path):
    stored = np.zeros((10, 20, 3), np.uint8)  # stored 10 high, 20 wide; left half red
    stored[:, :10, 0] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    Image.fromarray(stored).save(tmp_path / "rot.jpg", exif=exif.tobytes(), quality=95)
    with Image.open(tmp_path / "rot.jpg") as im:
        assert im.size == (20, 10) and im.getexif()[0x0112] == 6
    image = read_image(tmp_path / "rot.jpg")
    assert image.shape == (20, 10, 3)
    # clockwise rotation moves the stored left half (red) to the top
    assert image[:8, :, 0].mean() > 200
    assert image[12:, :, 0].mean() < 50
