"""First-contact diagnoses: when many rows fail the same way, the likely cause and its fix in one line.

A new data set often fails on every row for one reason (ids that already carry an extension, `.JPG`
files, images in another folder, ids saved as numbers). Each diagnosis looks at the rows whose image is
missing, finds what the files really are, and names the setting that fixes them; it is reported when it
explains at least half of those rows. The per-row list still follows, and stays whole in
data_problems.csv. The test images a sample submission or test_csv lists get the same diagnoses, with
test_dir as their folder.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from pathlib import Path

import pandas as pd

from helpers.config import Config
from helpers.tables import IMAGE_SUFFIXES

NUMBER = re.compile(r"\d+(\.0+)?")


def diagnose(cfg: Config, data_dir: Path, problems: pd.DataFrame) -> list[str]:
    """One line per cause shared by many problems: what was found, and the setting or edit that fixes it."""
    causes = []
    missing = problems[problems["problem"] == "image missing"]
    if len(missing):
        causes += _missing_image_causes(cfg, data_dir, missing, "image_dir")
    small = problems[problems["line"].isna() & problems["problem"].str.contains("fewer than n_folds")]
    if len(small) > 1:
        causes.append(_small_classes_cause(small, cfg.n_folds))
    absent = problems[problems["line"].isna() & problems["problem"].str.contains("validation")]
    if len(absent) > 1:
        causes.append(
            f"{absent['id'].nunique()} classes are missing from a part of the given split (e.g. "
            f"{absent['problem'].iloc[0]}): every class needs images on both sides; move some images, "
            "or set drop_bad_rows=True to leave those classes out"
        )
    return causes


def diagnose_test_images(cfg: Config, data_dir: Path, problems: pd.DataFrame) -> list[str]:
    """diagnose's missing-image lines for the listed test images: each is test_dir/<id><image_ext>."""
    missing = problems[problems["problem"] == "image missing"]
    if not len(missing):
        return []
    return _missing_image_causes(cfg.replace(path_col=""), data_dir, missing, "test_dir")


def _missing_image_causes(cfg: Config, data_dir: Path, missing: pd.DataFrame, setting: str) -> list[str]:
    """`setting` names the folder the files were looked for in: image_dir, or test_dir for test images."""
    image_dir = (data_dir / getattr(cfg, setting)).resolve()
    names = [_relative(Path(f), image_dir) for f in missing["file"]]
    ids = missing["id"].astype(str).tolist()
    n = len(missing)
    checks = [
        _ids_with_extension(cfg, image_dir, ids),
        _other_extension(cfg, image_dir, names),
        _other_folder(data_dir, image_dir, names, setting),
        _numeric_ids(cfg, image_dir, ids, names),
    ]
    return [f"{count} of {n} missing images: {cause}" for count, cause in checks if count and 2 * count >= n]


def _relative(path: Path, folder: Path) -> str:
    return path.relative_to(folder).as_posix() if path.is_relative_to(folder) else path.name


def _ids_with_extension(cfg: Config, image_dir: Path, ids: list[str]) -> tuple[int, str]:
    if cfg.path_col or not cfg.image_ext:
        return 0, ""
    found = [i for i in ids if Path(i).suffix.lower() in IMAGE_SUFFIXES and (image_dir / i).is_file()]
    if not found:
        return 0, ""
    example = found[0]
    return len(found), (
        f"the ids already end in an image extension ({example!r}, so the kit looked for "
        f'{example + cfg.image_ext!r}); set image_ext="" (or path_col={cfg.id_col!r})'
    )


def _listing(folder: Path, cache: dict[Path, dict[str, list[str]]]) -> dict[str, list[str]]:
    """The file names of a folder by lower-case stem, read once."""
    if folder not in cache:
        by_stem: dict[str, list[str]] = {}
        if folder.is_dir():
            for entry in os.scandir(folder):
                if entry.is_file():
                    by_stem.setdefault(Path(entry.name).stem.lower(), []).append(entry.name)
        cache[folder] = by_stem
    return cache[folder]


def _stem(cfg: Config, name: str) -> str:
    if not cfg.path_col and cfg.image_ext and name.endswith(cfg.image_ext):
        return name[: -len(cfg.image_ext)]
    return str(Path(name).with_suffix(""))


def _other_extension(cfg: Config, image_dir: Path, names: list[str]) -> tuple[int, str]:
    cache: dict[Path, dict[str, list[str]]] = {}
    suffixes: Counter[str] = Counter()
    example = ""
    for name in names:
        stem = _stem(cfg, name)
        matches = _listing((image_dir / stem).parent, cache).get(Path(stem).name.lower(), [])
        hits = [m for m in matches if Path(m).stem == Path(stem).name] or matches
        if hits:
            suffixes[Path(hits[0]).suffix] += 1
            example = example or f"{name!r} is {(Path(name).parent / hits[0]).as_posix()!r}"
    if not suffixes:
        return 0, ""
    count = sum(suffixes.values())
    if cfg.path_col:
        return count, f"the files exist with other names ({example}): correct the paths in {cfg.path_col!r}"
    if len(suffixes) == 1:
        (suffix,) = suffixes
        return count, (
            f"the files end in {suffix!r}, not {cfg.image_ext!r} (the extension's case counts: {example}); "
            f"set image_ext={suffix!r}"
        )
    return count, (
        f"the files have several extensions ({dict(suffixes)}; {example}): put each file's name in a column "
        "and set path_col to it, or convert the images to one format"
    )


def _other_folder(data_dir: Path, image_dir: Path, names: list[str], setting: str) -> tuple[int, str]:
    wanted = {Path(n).name for n in names}
    where: dict[str, list[Path]] = {}
    for folder, _, files in os.walk(data_dir):
        for file in wanted.intersection(files):
            where.setdefault(file, []).append(Path(folder))
    candidates: Counter[str] = Counter()
    for name in names:
        depth = len(Path(name).parts) - 1
        for folder in where.get(Path(name).name, []):
            root = folder.parents[depth - 1] if depth else folder
            if (root / name).is_file() and root.resolve() != image_dir:
                candidates[root.relative_to(data_dir).as_posix()] += 1
    if not candidates:
        return 0, ""
    folder, count = candidates.most_common(1)[0]
    where = f"there is no {image_dir.name}/" if not image_dir.is_dir() else f"not in {image_dir.name}/"
    return count, f"the images are in {folder!r} under data_dir ({where}); set {setting}={folder!r}"


def _numeric_ids(cfg: Config, image_dir: Path, ids: list[str], names: list[str]) -> tuple[int, str]:
    if cfg.path_col:
        return 0, ""
    cache: dict[Path, dict[str, list[str]]] = {}
    count, example = 0, ""
    for image_id, name in zip(ids, names, strict=True):
        if not NUMBER.fullmatch(image_id):
            continue
        listing = _listing((image_dir / name).parent, cache)
        value = int(float(image_id))
        hits = [f for stem, files in listing.items() if stem.isdigit() and int(stem) == value for f in files]
        if hits:
            count += 1
            example = example or f"id {image_id!r} but the file is {hits[0]!r}"
    if not count:
        return 0, ""
    return count, (
        f"the ids look like numbers that lost their leading zeros or gained a '.0' ({example}): the table "
        f"was saved by a tool that read the ids as numbers; save it again with {cfg.id_col!r} read as text "
        f"(pandas: read_csv(..., dtype={{{cfg.id_col!r}: str}}))"
    )


def _small_classes_cause(small: pd.DataFrame, n_folds: int) -> str:
    counts = small["problem"].str.extract(r"has (\d+) image")[0].astype(int)
    by_size = sorted(zip(counts, small["id"], strict=True))
    listed = ", ".join(f"{c!r} {n}" for n, c in by_size[:5]) + (", ..." if len(by_size) > 5 else "")
    fewest = by_size[0][0]
    folds = (
        f"lower n_folds to {fewest}" if fewest >= 2 else "lower n_folds (a class of 1 image fits no K-fold)"
    )
    return (
        f"{len(small)} classes have fewer images than n_folds={n_folds} (fewest first: {listed}): drop them "
        f"(drop_bad_rows=True), merge them into related classes in the label table, or {folds}"
    )
