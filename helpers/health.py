"""Opening every image once, with the reader training uses, and remembering the result.

The result is cached per file by size and modification time, so a second run over unchanged data is
instant and a replaced file is checked again. The check reports; what keeps the decoded pixels is a sink
the caller may hand over (helpers.dataset.check_and_store gives the image store's writer): the same pass
then decodes each image at the sink's side and passes it on, so a photo is decoded once for both.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from helpers.atomic import atomic_to_csv
from helpers.images import ImageError, read_image_sized
from helpers.store import file_stamp


class ImageSink(Protocol):
    """What keeps the images the check decodes (helpers.store.StoreWriter): the side it keeps them at,
    the full size of an image it already holds (which then needs no decode), the room for new ones, and
    each new one."""

    side: int

    def full_size(self, path: str, size: int, mtime_ns: int) -> tuple[int, int] | None: ...

    def reserve(self, paths: list[str]) -> int: ...

    def add(self, path: str, size: int, mtime_ns: int, image: np.ndarray, full: tuple[int, int]) -> None: ...


CHECK_COLUMNS = ["path", "size", "mtime_ns", "problem", "height", "width"]
FIXES = {
    "missing": "add the file, or fix the id / image_dir / image_ext",
    "empty": "the file has zero bytes: replace it",
    "not an image": "replace the file with a real image, or delete its line",
    "truncated": "the file stops early (interrupted copy?): copy it again",
    "unreadable": "the file cannot be opened (permissions?): make it readable",
}


def _check_one(path: str, side: int = 0) -> tuple[str, int, int, np.ndarray | None]:
    """The problem (empty when readable), the full height and width, and with a side the image fitted to it."""
    try:
        image, (height, width) = read_image_sized(path, side)
    except ImageError as e:
        return e.reason, 0, 0, None
    return "", height, width, image if side else None


def _map_in_slices(
    pool: ThreadPoolExecutor, paths: list[str], side: int, size: int = 1024
) -> Iterator[tuple[str, int, int, np.ndarray | None]]:
    """`_check_one` over the paths, in order; `pool.map` creates every future up front (about 1.75 KB per
    image: 1.7 GB for a million), so it gets one slice at a time (a quarter of one when the results carry
    images for a sink: 256 images of 224 x 299 px are 50 MB)."""
    size = size // 4 if side else size
    for start in range(0, len(paths), size):
        yield from pool.map(partial(_check_one, side=side), paths[start : start + size])


def check_images(
    paths: list[str],
    cache_file: Path | None = None,
    workers: int | None = None,
    sink: ImageSink | None = None,
) -> pd.DataFrame:
    """One row per given path, in order: `problem` (empty when readable), `height` and `width`.

    Files whose size and mtime match the cache are not decoded again, unless a sink is given and lacks
    them: each readable image is then handed to the sink as it is checked (after the sink has reserved
    room for them). When the check stops halfway (an interrupt, a crash in the reader), the images checked
    so far are still written to the cache and the sink, so the next call resumes where this one stopped.
    """
    unique = list(dict.fromkeys(paths))
    stats = pd.DataFrame([(p, *file_stamp(p)) for p in unique], columns=["path", "size", "mtime_ns"])
    cached = _read_cache(cache_file)
    merged = stats.merge(cached, on=["path", "size", "mtime_ns"], how="left")
    if sink is not None:
        stored = [sink.full_size(r.path, r.size, r.mtime_ns) for r in merged.itertuples()]
        held = np.array([s is not None for s in stored], dtype=bool)
        if held.any():
            known = [("", *s) for s in stored if s is not None]
            columns = ["problem", "height", "width"]
            merged.loc[held, columns] = pd.DataFrame(known, index=merged.index[held], columns=columns)
        todo_mask = merged["problem"].isna() | ((merged["problem"] == "") & ~held)
    else:
        todo_mask = merged["problem"].isna()
    todo = merged.index[todo_mask].tolist()
    results: list[tuple[str, int, int]] = []
    side = sink.side if sink is not None else 0
    try:
        if todo:
            todo_paths = merged.loc[todo, "path"].tolist()
            desc = "checking images"
            if sink is not None:
                need = sink.reserve(todo_paths)
                desc = f"checking images, storing at {side} px (~{need / 1e6:.0f} MB)"
            with ThreadPoolExecutor(workers or os.cpu_count() or 1) as pool:
                checked = _map_in_slices(pool, todo_paths, side)
                sizes, mtimes = merged.loc[todo, "size"].tolist(), merged.loc[todo, "mtime_ns"].tolist()
                bar = tqdm(checked, total=len(todo_paths), desc=desc, unit="img")
                for i, (problem, height, width, image) in enumerate(bar):
                    if image is not None:
                        sink.add(todo_paths[i], sizes[i], mtimes[i], image, (height, width))
                    results.append((problem, height, width))
    finally:
        if results:
            done = todo[: len(results)]
            merged.loc[done, ["problem", "height", "width"]] = pd.DataFrame(
                results, index=done, columns=["problem", "height", "width"]
            )
            if cache_file is not None:
                _write_cache(cache_file, cached, merged[merged["problem"].notna()])
    merged[["height", "width"]] = merged[["height", "width"]].astype(int)
    return merged[CHECK_COLUMNS].set_index("path").loc[list(paths)].reset_index()


def _write_cache(cache_file: Path, cached: pd.DataFrame, checked: pd.DataFrame) -> None:
    """The cache with these checked rows replacing older ones; missing files are not remembered."""
    present = checked[checked["problem"] != "missing"]
    atomic_to_csv(
        pd.concat([cached[~cached["path"].isin(present["path"])], present])[CHECK_COLUMNS], cache_file
    )


def _read_cache(cache_file: Path | None) -> pd.DataFrame:
    if cache_file is None or not cache_file.exists():
        return pd.DataFrame(columns=CHECK_COLUMNS).astype({"size": int, "mtime_ns": int})
    cached = pd.read_csv(cache_file, dtype={"path": str, "problem": str}, keep_default_na=False)
    return cached.drop_duplicates("path", keep="last")
