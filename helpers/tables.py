"""Reading the two data layouts into one table, and the checks a label table needs before any image is read.

Both layouts become the same frame: `line` (where the row is in the user's file), `id`, `path`, `label`
and `group`. Problems are rows of a report, never exceptions, so the user sees all of them at once.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from helpers.config import Config

PROBLEM_COLUMNS = ["line", "id", "file", "problem", "fix"]
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}


class DataError(ValueError):
    """The data has problems; `problems` lists every one, with how to fix it."""

    SHOWN = 50  # problems spelled out in the message; all of them are in `problems`

    def __init__(self, message: str, problems: pd.DataFrame | None = None):
        self.problems = problems if problems is not None else problem_frame([])
        lines = [_describe(r) for r in self.problems.head(self.SHOWN).itertuples()]
        if len(self.problems) > self.SHOWN:
            lines.append(f"... and {len(self.problems) - self.SHOWN} more")
        super().__init__("\n".join([message, *lines]))


def _describe(r) -> str:
    where = f"line {int(r.line)}" if pd.notna(r.line) else "table"
    return f"- {where} ({r.file or r.id}): {r.problem}; fix: {r.fix}"


def problem_frame(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=PROBLEM_COLUMNS)


def detect_layout(cfg: Config, data_dir: Path) -> str:
    """'csv' or 'imagefolder': the configured one, or the one the folder holds."""
    if cfg.layout != "auto":
        return cfg.layout
    if (data_dir / cfg.csv_name).is_file():
        return "csv"
    if (data_dir / "train").is_dir() and any(p.is_dir() for p in (data_dir / "train").iterdir()):
        return "imagefolder"
    raise DataError(
        f"{data_dir} holds neither {cfg.csv_name} (set csv_name for another table name) nor a train/<class>/ "
        "folder tree; set data_dir to the folder that holds them, or layout to 'csv' or 'imagefolder'."
    )


def read_labels(cfg: Config, data_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The label table of either layout and the problems found in its rows (before images are read)."""
    if detect_layout(cfg, data_dir) == "imagefolder":
        return read_imagefolder(data_dir / "train"), problem_frame([])
    return read_csv_layout(cfg, data_dir)


def read_imagefolder(train_dir: Path) -> pd.DataFrame:
    """`train/<class>/<file>`: the class is the folder name, the id the path below train/."""
    rows = []
    for class_dir in sorted(p for p in train_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for file in sorted(f for f in class_dir.rglob("*") if f.is_file() and not f.name.startswith(".")):
            rows.append(
                {"id": file.relative_to(train_dir).as_posix(), "path": str(file), "label": class_dir.name}
            )
    frame = pd.DataFrame(rows, columns=["id", "path", "label"])
    if frame.empty:
        raise DataError(f"{train_dir} has class folders but no image files in them.")
    frame.insert(0, "line", range(1, len(frame) + 1))
    frame["group"] = ""
    return frame


def read_csv_layout(cfg: Config, data_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The CSV table + image folder layout, with the row problems a table can have on its own."""
    csv_path = data_dir / cfg.csv_name
    if not csv_path.is_file():
        raise DataError(f"{csv_path} does not exist; set data_dir and csv_name to the label table.")
    raw = pd.read_csv(csv_path, dtype=str, keep_default_na=False, na_values=[""])
    key = cfg.path_col or cfg.id_col
    needed = [c for c in (key, cfg.label_col, cfg.group_col) if c]
    missing = [c for c in needed if c not in raw.columns]
    if missing:
        raise DataError(
            f"{csv_path} has no column(s) {missing}. Its columns are {list(raw.columns)}: "
            "set id_col / label_col / group_col / path_col to the right names."
        )
    if raw.empty:
        raise DataError(f"{csv_path} has a header but no rows: there is nothing to train on.")

    image_dir = (data_dir / cfg.image_dir).resolve()
    frame = pd.DataFrame(
        {
            "line": raw.index + 2,
            "id": raw[cfg.id_col].fillna("") if cfg.id_col in raw.columns else raw[key].fillna(""),
            "label": raw[cfg.label_col],
            "group": raw[cfg.group_col].fillna("") if cfg.group_col else "",
        }
    )
    names = raw[key].fillna("") + ("" if cfg.path_col else cfg.image_ext)
    frame["path"] = [str((image_dir / n).resolve()) for n in names]

    problems: list[dict] = []
    for r in frame.itertuples():
        if not str(r.id).strip():
            problems.append(_problem(r, f"empty {key}", f"fill in {key} on this line or delete the line"))
        elif not Path(r.path).is_relative_to(image_dir):
            problems.append(
                _problem(
                    r,
                    f"{key} points outside {image_dir}",
                    f"{key} must name a file inside image_dir; fix or delete the line",
                )
            )
        if pd.isna(r.label) or not str(r.label).strip():
            problems.append(
                _problem(r, f"empty label in {cfg.label_col}", "fill in the label or delete the line")
            )
    problems += _duplicate_problems(frame)
    return frame, problem_frame(problems)


def _problem(row, problem: str, fix: str) -> dict:
    return {"line": row.line, "id": row.id, "file": row.path, "problem": problem, "fix": fix}


def _duplicate_problems(frame: pd.DataFrame) -> list[dict]:
    problems = []
    for image_id, rows in frame[frame["id"].duplicated(keep=False)].groupby("id", sort=False):
        labels = sorted(rows["label"].dropna().astype(str).unique())
        first = rows["line"].iloc[0]
        for r in rows.itertuples():
            if len(labels) > 1:
                problems.append(
                    _problem(
                        r,
                        f"id {image_id!r} has conflicting labels {labels}",
                        "keep one line with the right label",
                    )
                )
            elif r.line != first:
                problems.append(_problem(r, f"duplicate of line {first}", "delete the repeated line"))
    return problems


def class_names(labels: pd.Series) -> list[str]:
    """Sorted class names: numerically when every label is a whole number, else alphabetically."""
    values = labels.astype(str).unique()
    try:
        return [str(v) for v in sorted(values, key=int)]
    except ValueError:
        return sorted(values)


def list_test_images(cfg: Config, data_dir: Path, layout: str) -> pd.DataFrame:
    """Test ids and paths: the sample submission's order for the CSV layout, a flat test/ folder otherwise."""
    if layout == "csv":
        sample = data_dir / cfg.sample_submission
        if not sample.is_file():
            raise DataError(f"{sample} does not exist; set sample_submission (relative to data_dir).")
        ids = pd.read_csv(sample, dtype=str)[cfg.id_col]
        test_dir = data_dir / cfg.test_dir
        return pd.DataFrame({"id": ids, "path": [str(test_dir / f"{i}{cfg.image_ext}") for i in ids]})
    test_dir = data_dir / "test"
    files = (
        sorted(f for f in test_dir.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
        if test_dir.is_dir()
        else []
    )
    if not files:
        raise DataError(f"{test_dir} holds no images; put the test images there.")
    return pd.DataFrame(
        {"id": [f.relative_to(test_dir).as_posix() for f in files], "path": [str(f) for f in files]}
    )
