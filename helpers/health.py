"""Opening every image once, with the reader training uses, and remembering the result.

The result is cached per file by size and modification time, so a second run over unchanged data is
instant and a replaced file is checked again.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from helpers.atomic import atomic_to_csv
from helpers.images import ImageError, read_image

CHECK_COLUMNS = ["path", "size", "mtime_ns", "problem", "height", "width"]
FIXES = {
    "missing": "add the file, or fix the id / image_dir / image_ext",
    "empty": "the file has zero bytes: replace it",
    "not an image": "replace the file with a real image, or delete its line",
    "truncated": "the file stops early (interrupted copy?): copy it again",
    "unreadable": "the file cannot be opened (permissions?): make it readable",
}


def _stat(path: str) -> tuple[int, int]:
    try:
        st = os.stat(path)
        return st.st_size, st.st_mtime_ns
    except OSError:
        return -1, -1


def _check_one(path: str) -> tuple[str, int, int]:
    try:
        image = read_image(path)
    except ImageError as e:
        return e.reason, 0, 0
    return "", image.shape[0], image.shape[1]


def _map_in_slices(
    pool: ThreadPoolExecutor, paths: list[str], size: int = 1024
) -> Iterator[tuple[str, int, int]]:
    """`_check_one` over the paths, in order; `pool.map` creates every future up front (about 1.75 KB per
    image: 1.7 GB for a million), so it gets one slice at a time."""
    for start in range(0, len(paths), size):
        yield from pool.map(_check_one, paths[start : start + size])


def check_images(
    paths: list[str], cache_file: Path | None = None, workers: int | None = None
) -> pd.DataFrame:
    """One row per given path, in order: `problem` (empty when readable), `height` and `width`.

    Files whose size and mtime match the cache are not decoded again. When the check stops halfway (an
    interrupt, a crash in the reader), the images checked so far are still written to the cache, so the
    next call resumes where this one stopped.
    """
    unique = list(dict.fromkeys(paths))
    stats = pd.DataFrame([(p, *_stat(p)) for p in unique], columns=["path", "size", "mtime_ns"])
    cached = _read_cache(cache_file)
    merged = stats.merge(cached, on=["path", "size", "mtime_ns"], how="left")
    todo = merged.index[merged["problem"].isna()].tolist()
    results: list[tuple[str, int, int]] = []
    try:
        if todo:
            todo_paths = merged.loc[todo, "path"].tolist()
            with ThreadPoolExecutor(workers or os.cpu_count() or 1) as pool:
                checked = _map_in_slices(pool, todo_paths)
                results.extend(tqdm(checked, total=len(todo_paths), desc="checking images", unit="img"))
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
