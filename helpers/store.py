"""The decode-once image store: every image decoded once, at the size training needs, in one file on disk.

A photo of 1280x960 trained at 224 px is decoded and shrunk in every epoch of every fold and run: the
loader spends its time in the JPEG codec. The store keeps each image as `read_image(path, side)` gives it
(helpers.images: the shorter side area-resized to `side`, aspect kept) in one flat uint8 file per dataset
and side, `pixels.bin`, with an index, `index.npz` (path, file size, mtime, offset, height, width, ...). Epochs,
folds, runs and backbones at that side read it through `np.memmap`: no decode in the training loop, and the
loader workers share its pages through the operating system's page cache (memory flat with the workers).

The index also records each file's full height and width, so a file the store holds as it is now needs
no image check either (a build killed before the check cache was written loses neither).

Where: `<dataset folder>/store/side<side>-reader<READER_VERSION>/`, beside the image-check cache. The side
is what both the training and the evaluation transforms resize from: img_size, or img_size / crop_pct
when validation crops (`store_side`). An entry is valid while its file's size and mtime are those indexed.

Writes are append-only and the index is written last, atomically: a build killed halfway leaves the index
of what was flushed before it, and the next build cuts the pixel file back to that and carries on. One
process builds at a time (a lock file); readers never see an entry before its pixels are on disk.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import shutil
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from helpers.atomic import atomic_write
from helpers.errors import KitError
from helpers.images import READER_VERSION, fitted_size

try:
    import fcntl
except ImportError:  # Windows: no advisory lock; one build at a time is then up to the user
    fcntl = None

PIXELS, INDEX, LOCK = "pixels.bin", "index.npz", ".lock"
# images between index writes: at least COMMIT_EVERY and an eighth of those indexed. Each write rewrites the
# whole index (tens of MB at 100k paths), so a fixed interval would make a large build's writes quadratic;
# this way they are O(log n) and a killed build decodes again at most an eighth of what it had stored.
COMMIT_EVERY, COMMIT_SHARE = 256, 8
ESTIMATE_SAMPLE = 256  # image headers read to estimate the disk a build needs
DISK_MARGIN = 1.05  # the estimate's margin, and room left for the index


class StoreSpaceError(KitError, OSError):
    """The disk holding the store has too little free space for the images it would add."""


def store_side(img_size: int, crop_pct: float) -> int:
    """The shorter side the store keeps for training at img_size: what evaluation resizes to before its
    centre crop (img_size / crop_pct), or img_size itself without a crop."""
    return math.floor(img_size / crop_pct) if 0 < crop_pct < 1 else img_size


def store_folder(dataset_folder: Path, side: int) -> Path:
    return Path(dataset_folder) / "store" / f"side{side}-reader{READER_VERSION}"


# per image: its file's path, size and mtime; where its pixels start, their height and width; the file's
# full height and width (what the image check reports, so a stored file needs no check either)
COLUMNS = ("path", "size", "mtime_ns", "offset", "height", "width", "full_height", "full_width")


def _empty_index() -> dict[str, np.ndarray]:
    return {name: np.array([], dtype=str if name == "path" else np.int64) for name in COLUMNS}


def read_index(folder: Path) -> dict[str, np.ndarray]:
    """The store's index as columns (empty when there is none yet)."""
    path = Path(folder) / INDEX
    if not path.exists():
        return _empty_index()
    with np.load(path, allow_pickle=False) as index:
        return {name: index[name] for name in COLUMNS}


def _indexed_end(index: dict[str, np.ndarray]) -> int:
    """Where the last indexed image's pixels end: the length pixels.bin must have at least."""
    ends = index["offset"] + index["height"] * index["width"] * 3
    return int(ends.max()) if len(ends) else 0


def file_stamp(path: str) -> tuple[int, int]:
    """The file's (size, mtime_ns): what the image-check cache and the store key an image by, so a changed
    file is decoded again by both; (-1, -1) when it cannot be read."""
    try:
        st = os.stat(path)
        return st.st_size, st.st_mtime_ns
    except OSError:
        return -1, -1


@dataclass
class StoreView:
    """The stored images of a list of paths, by position: what a loader's dataset reads.

    `offset[i]` is -1 when path i has no valid entry (not stored, or its file changed since): the dataset
    then reads the file. The memory map opens on first use in each process, so pickling it to a loader
    worker copies the small index arrays, never the pixels.
    """

    pixels: Path
    offset: np.ndarray
    height: np.ndarray
    width: np.ndarray
    _map: np.memmap | None = field(default=None, repr=False)

    @property
    def stored(self) -> int:
        return int((self.offset >= 0).sum())

    def image(self, i: int) -> np.ndarray | None:
        """Image i as an HxWx3 uint8 view of the map, or None when it is not stored. The map is copy-on-write:
        a transform that writes into its input changes a private copy of those pages, never the store."""
        offset = int(self.offset[i])
        if offset < 0:
            return None
        if self._map is None:
            self._map = np.memmap(self.pixels, dtype=np.uint8, mode="c")
        height, width = int(self.height[i]), int(self.width[i])
        return self._map[offset : offset + height * width * 3].reshape(height, width, 3)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_map": None}


def open_view(folder: Path, paths: Sequence[str]) -> StoreView | None:
    """The store's images for these paths, checked against each file's size and mtime; None when the
    store holds none of them."""
    index = read_index(folder)
    pixels = Path(folder) / PIXELS
    if not len(index["path"]) or not pixels.exists() or pixels.stat().st_size < _indexed_end(index):
        return None  # nothing stored, or pixels.bin lost or cut short: every image from its file
    slot = {p: i for i, p in enumerate(index["path"].tolist())}
    rows = np.array([slot.get(p, -1) for p in paths], dtype=np.int64)
    stats = np.array([file_stamp(p) for p in paths], dtype=np.int64).reshape(-1, 2)
    found = rows >= 0
    valid = found.copy()
    at = rows[found]
    valid[found] = (index["size"][at] == stats[found, 0]) & (index["mtime_ns"][at] == stats[found, 1])
    if not valid.any():
        return None
    picked = np.where(valid, rows, 0)
    return StoreView(
        pixels,
        np.where(valid, index["offset"][picked], -1),
        index["height"][picked],
        index["width"][picked],
    )


class StoreWriter:
    """Adds images to one store (one dataset, one side); use as a context manager (`open_store`).

    `add` appends an image's pixels; every so often (COMMIT_EVERY), and on leaving, the pixels are flushed to
    disk and then the index is replaced atomically, so the index never names bytes that are not there.
    """

    def __init__(self, folder: Path, side: int):
        self.folder, self.side = Path(folder), side
        self.folder.mkdir(parents=True, exist_ok=True)
        self._lock = open(self.folder / LOCK, "w")  # noqa: SIM115 - held until close()
        if fcntl is not None:
            fcntl.flock(self._lock, fcntl.LOCK_EX)
        self._index = read_index(self.folder)
        pixels = self.folder / PIXELS
        end = _indexed_end(self._index)
        if end > (pixels.stat().st_size if pixels.exists() else 0):  # pixels.bin lost or cut: start again
            self._index, end = _empty_index(), 0
        self._rows = {p: i for i, p in enumerate(self._index["path"].tolist())}
        self._file = open(pixels, "r+b" if pixels.exists() else "w+b")  # noqa: SIM115 - closed in close()
        self._file.truncate(end)  # a killed build's bytes past the index: written again below
        self._file.seek(end)
        self._pending: list[tuple] = []

    def full_size(self, path: str, size: int, mtime_ns: int) -> tuple[int, int] | None:
        """The file's full (height, width) when the store holds it as it is now (same size and mtime)."""
        row = self._rows.get(path)
        if row is None or (self._index["size"][row], self._index["mtime_ns"][row]) != (size, mtime_ns):
            return None
        return int(self._index["full_height"][row]), int(self._index["full_width"][row])

    def reserve(self, paths: Sequence[str]) -> int:
        """Stop with StoreSpaceError when the disk cannot hold these images; return the bytes estimated.

        The estimate reads the headers of up to ESTIMATE_SAMPLE of the files (their stored size follows
        from the side), not their pixels; an image whose header cannot be read counts as side x side.
        """
        if not paths:
            return 0
        sample = random.Random(0).sample(list(paths), min(len(paths), ESTIMATE_SAMPLE))
        per_image = np.mean([self._stored_bytes(p) for p in sample])
        need = int(per_image * len(paths) * DISK_MARGIN)
        free = shutil.disk_usage(self.folder).free
        if need > free:
            raise StoreSpaceError(
                f"the image store for {len(paths)} images at {self.side} px needs about {need / 1e9:.2f} GB "
                f"({need} bytes) in {self.folder}, and that disk has {free / 1e9:.2f} GB free. Free some "
                "space, point KIT_OUTPUTS at a larger disk, or set store=False to read the files each epoch."
            )
        return need

    def _stored_bytes(self, path: str) -> int:
        try:
            with Image.open(path) as header:
                width, height = header.size
        except Exception:  # the check reports the file; the estimate counts it as a square
            return self.side * self.side * 3
        return int(np.prod(fitted_size(height, width, self.side))) * 3

    def add(self, path: str, size: int, mtime_ns: int, image: np.ndarray, full: tuple[int, int]) -> None:
        """Append one image (HxWx3 uint8, as `read_image(path, side)` gives it; `full`: the file's size)."""
        offset = self._file.tell()
        try:
            self._file.write(np.ascontiguousarray(image, dtype=np.uint8).data)
        except OSError as error:
            self._file.truncate(offset)
            raise StoreSpaceError(
                f"writing the image store in {self.folder} failed ({error}); free some space, point "
                "KIT_OUTPUTS at a larger disk, or set store=False"
            ) from error
        self._pending.append((path, size, mtime_ns, offset, *image.shape[:2], *full))
        if len(self._pending) >= max(COMMIT_EVERY, len(self._index["path"]) // COMMIT_SHARE):
            self.commit()

    def commit(self) -> None:
        """Flush the pixels to disk, then write the index naming them (atomically)."""
        if not self._pending:
            return
        self._file.flush()
        os.fsync(self._file.fileno())
        added = {
            name: np.asarray(column)
            for name, column in zip(COLUMNS, zip(*self._pending, strict=True), strict=True)
        }
        keep = ~np.isin(self._index["path"], added["path"])  # a changed file's new entry replaces the old
        self._index = {
            name: np.concatenate([self._index[name][keep], added[name]]).astype(
                str if name == "path" else np.int64
            )
            for name in COLUMNS
        }
        atomic_write(self.folder / INDEX, lambda f: np.savez(f, **self._index))
        self._rows = {p: i for i, p in enumerate(self._index["path"].tolist())}
        self._pending = []

    def close(self) -> None:
        try:
            self.commit()
            self._warn_when_mostly_stale()
        finally:
            self._file.close()
            self._lock.close()  # releases the lock

    def _warn_when_mostly_stale(self) -> None:
        """A changed file's old pixels stay in pixels.bin (readers may hold them mapped, so they are never
        moved); when they outweigh the current ones, say how to reclaim the space."""
        live = int((self._index["height"] * self._index["width"] * 3).sum())
        stale = _indexed_end(self._index) - live
        if stale > live:
            warnings.warn(
                f"{stale / 1e6:.0f} MB of {self.folder / PIXELS} hold images whose files changed after they "
                f"were stored (the current ones take {live / 1e6:.0f} MB): delete {self.folder} to reclaim it; "
                "the next run stores the current files again.",
                stacklevel=4,
            )


@contextlib.contextmanager
def open_store(dataset_folder: Path, side: int) -> Iterator[StoreWriter]:
    """The writer of the dataset's store at this side; what was added is committed on leaving, even when
    the block fails halfway."""
    writer = StoreWriter(store_folder(dataset_folder, side), side)
    try:
        yield writer
    finally:
        writer.close()
