"""Reading the two data layouts into one table, and the checks a label table needs before any image is read.

Both layouts become the same frame: `table` (empty for the main table, else the validation table or
folder a row comes from), `line` (where the row is in that file), `id`, `path`, `label`, `group` and
`given_fold` (the validation part the data itself assigns: 0..K-1, -1 for training only; NaN when the kit
makes the folds). Problems are rows of a report, never exceptions, so the user sees all of them at once.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from helpers.config import Config
from helpers.errors import KitError

PROBLEM_COLUMNS = ["table", "line", "id", "file", "problem", "fix"]
WIDE_PREFIX = "wide:"  # a label_cols column as the reader keeps it, for helpers.label_sets
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
VALIDATION_FOLDERS = ("val", "valid", "validation")  # beside train/: one fixed split, as timm reads them
TRAIN_WORDS = {"train", "training", "trn", "false"}  # split_col values of training rows (is_valid=False)
VALID_WORDS = {"val", "valid", "validation", "dev", "true"}  # split_col values of validation rows


class DataError(KitError, ValueError):
    """The data has problems; `problems` lists every one, with how to fix it.

    `causes` are one-line diagnoses of problems many rows share (likely cause and fix), said before the
    rows; a bounded sample of the rows follows, and `problems` (data_problems.csv) holds all of them.
    """

    SHOWN = 20  # problems spelled out in the message; all of them are in `problems`

    def __init__(self, message: str, problems: pd.DataFrame | None = None, causes: list[str] | None = None):
        self.message = message  # the headline, without the causes and rows that follow it in str()
        self.problems = problems if problems is not None else problem_frame([])
        self.causes = list(causes or [])
        lines = [f"likely cause: {c}" for c in self.causes]
        lines += [_describe(r) for r in self.problems.head(self.SHOWN).itertuples()]
        if len(self.problems) > self.SHOWN:
            lines.append(f"... and {len(self.problems) - self.SHOWN} more")
        super().__init__("\n".join([message, *lines]))


def _describe(r) -> str:
    where = f"line {int(r.line)}" if pd.notna(r.line) else "table"
    if isinstance(r.table, str) and r.table:
        where = f"{r.table} {where}"
    return f"- {where} ({r.file or r.id}): {r.problem}; fix: {r.fix}"


def problem_frame(rows: list[dict]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=PROBLEM_COLUMNS)
    frame["table"] = frame["table"].fillna("")
    return frame


def row_keys(frame: pd.DataFrame) -> pd.MultiIndex:
    """(table, line) of each row: what names a row of the user's files, and a problem's row."""
    lines = pd.to_numeric(frame["line"], errors="coerce").astype("Int64")
    return pd.MultiIndex.from_arrays([frame["table"].fillna("").astype(str), lines])


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


def validation_folder(data_dir: Path) -> Path | None:
    """The ImageFolder layout's validation folder beside train/ (val/, valid/ or validation/), if any."""
    found = [data_dir / n for n in VALIDATION_FOLDERS if (data_dir / n).is_dir()]
    if len(found) > 1:
        raise DataError(
            f"{data_dir} has several validation folders {[f.name for f in found]}: keep one of them "
            "(or merge them), so that the fixed split is unambiguous."
        )
    return found[0] if found else None


def split_source(cfg: Config, data_dir: Path) -> str:
    """Where the data's own split comes from, in words; empty when the kit makes the folds."""
    if detect_layout(cfg, data_dir) == "imagefolder":
        folder = validation_folder(data_dir)
        return f"the train/ and {folder.name}/ folders" if folder else ""
    if cfg.val_csv:
        return f"the tables {cfg.csv_name} (training) and {cfg.val_csv} (validation)"
    return f"column {cfg.split_col!r} of {cfg.csv_name}" if cfg.split_col else ""


def read_labels(cfg: Config, data_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The label table of either layout and the problems found in its rows (before images are read)."""
    if detect_layout(cfg, data_dir) == "imagefolder":
        if cfg.task == "multilabel" or cfg.label_cols:
            raise DataError(
                f"{data_dir} is an ImageFolder tree (train/<class>/), where each image has the one class of its "
                "folder: a multi-label task needs a label table (label_col with label_sep, or label_cols). "
                "Set task='multiclass' (or 'auto') and leave label_cols empty, or give a CSV table."
            )
        if cfg.split_col or cfg.val_csv:
            raise DataError(
                f"{data_dir} is an ImageFolder tree, where split_col and val_csv mean nothing: its validation "
                f"part is a folder beside train/ ({', '.join(f'{n}/' for n in VALIDATION_FOLDERS)}); unset them."
            )
        frame = read_imagefolder(data_dir / "train")
        folder = validation_folder(data_dir)
        if folder is None:
            return frame.assign(given_fold=np.nan), problem_frame([])
        val = read_imagefolder(folder).assign(table=f"{folder.name}/", given_fold=0)
        val["id"] = f"{folder.name}/" + val["id"]  # train/ and val/ often hold the same file names
        return pd.concat([frame.assign(given_fold=-1), val], ignore_index=True), problem_frame([])
    frame, problems = read_csv_layout(cfg, data_dir, cfg.csv_name)
    if cfg.val_csv:
        val, val_problems = read_csv_layout(cfg, data_dir, cfg.val_csv)
        frame = pd.concat([frame.assign(given_fold=-1), val.assign(given_fold=0)], ignore_index=True)
        problems = pd.concat([problems, val_problems], ignore_index=True)
        across = problem_frame(_duplicate_problems(frame, cfg))
        across = across[~row_keys(across).isin(row_keys(problems))]
        return frame, pd.concat([problems, across], ignore_index=True)
    if not cfg.split_col:
        return frame.assign(given_fold=np.nan), problems
    folds, split_problems = _given_folds(cfg, frame)
    return frame.assign(given_fold=folds), pd.concat([problems, split_problems], ignore_index=True)


def _given_folds(cfg: Config, frame: pd.DataFrame) -> tuple[np.ndarray, pd.DataFrame]:
    """split_col's values as validation parts: fold numbers 0..K-1 (K = n_folds), or train/valid words
    (one fixed split: valid rows are part 0, training rows -1). Anything else is a row problem."""
    values = frame["split_value"].fillna("").str.strip().str.lower()
    column = cfg.split_col
    if values.str.fullmatch(r"\d+").all():
        folds = values.astype(int).to_numpy()
        found = sorted({int(f) for f in folds})
        if found != list(range(cfg.n_folds)):
            raise DataError(
                f"{cfg.csv_name} column {column!r} holds the folds {found}, but n_folds={cfg.n_folds}: "
                f"the folds must be 0..n_folds-1, so set n_folds={len(found)} if the folds are numbered "
                f"0..{len(found) - 1}, or renumber the column (a train/valid column is written train/valid "
                "or true/false)."
            )
        return folds, problem_frame([])
    folds = np.where(values.isin(VALID_WORDS), 0, -1)
    problems = [
        _problem(
            r,
            f"{column} is {r.split_value!r}, neither a fold number nor train/valid",
            f"write one of {sorted(TRAIN_WORDS)} (training) or {sorted(VALID_WORDS)} (validation), "
            "or fold numbers 0..n_folds-1 on every line",
        )
        for r, v in zip(frame.itertuples(), values, strict=True)
        if v not in TRAIN_WORDS | VALID_WORDS
    ]
    if not problems and not (folds == 0).any():
        raise DataError(f"{cfg.csv_name} column {column!r} marks no row as validation: {sorted(VALID_WORDS)}")
    return folds, problem_frame(problems)


def read_imagefolder(train_dir: Path) -> pd.DataFrame:
    """`<folder>/<class>/<file>`: the class is the folder name, the id the path below the folder."""
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
    frame.insert(0, "table", "")
    frame["group"] = ""
    return frame


def read_table(cfg: Config, path: Path) -> pd.DataFrame:
    """A CSV of the user's with every value as text (ids keep their leading zeros)."""
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""], sep=cfg.csv_sep)
    except UnicodeDecodeError as e:
        cause = (
            table_format_problem(path, [], cfg.csv_sep) or f"{path.name} is not UTF-8 text: save it as UTF-8"
        )
        raise DataError(
            f"{path} cannot be read as text ({e.reason} at byte {e.start}).", causes=[cause]
        ) from None


def read_csv_layout(
    cfg: Config, data_dir: Path, csv_name: str | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The CSV table + image folder layout, with the row problems a table can have on its own (its labels
    are checked by helpers.label_sets, once the task is known)."""
    csv_name = csv_name or cfg.csv_name
    csv_path = data_dir / csv_name
    if not csv_path.is_file():
        setting = "val_csv" if csv_name == cfg.val_csv else "csv_name"
        raise DataError(f"{csv_path} does not exist; set data_dir and {setting} to the label table.")
    raw = read_table(cfg, csv_path)
    key = cfg.path_col or cfg.id_col
    label_cols = cfg.label_cols or [cfg.label_col]
    needed = [c for c in (key, *label_cols, cfg.group_col) if c]
    if cfg.split_col and csv_name == cfg.csv_name:
        needed.append(cfg.split_col)
    missing = [c for c in needed if c not in raw.columns]
    if missing:
        found = table_format_problem(csv_path, list(raw.columns), cfg.csv_sep)
        raise DataError(
            f"{csv_path} has no column(s) {missing}. Its columns are {list(raw.columns)}: "
            "set id_col / label_col (or label_cols) / group_col / path_col / split_col to the right names.",
            causes=[found] if found else [],
        )
    if raw.empty:
        raise DataError(f"{csv_path} has a header but no rows: there is nothing to train on.")

    image_dir = (data_dir / cfg.image_dir).resolve()
    frame = pd.DataFrame(
        {
            "table": "" if csv_name == cfg.csv_name else csv_name,
            "line": raw.index + 2,
            "id": raw[cfg.id_col].fillna("") if cfg.id_col in raw.columns else raw[key].fillna(""),
            # wide columns: their values side by side, so a repeated id with other values is a conflict
            "label": raw[label_cols].fillna("").agg(" ".join, axis=1)
            if cfg.label_cols
            else raw[cfg.label_col],
            "group": raw[cfg.group_col].fillna("") if cfg.group_col else "",
        }
    )
    for column in cfg.label_cols:  # read into label sets by helpers.label_sets
        frame[WIDE_PREFIX + column] = raw[column]
    if cfg.split_col in raw.columns:
        frame["split_value"] = raw[cfg.split_col]
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
    problems += _duplicate_problems(frame, cfg)
    return frame, problem_frame(problems)


def table_format_problem(csv_path: Path, columns: list[str], sep: str) -> str:
    """What is wrong with a table whose expected columns are missing: another separator, a byte-order mark
    or header names padded with spaces; empty when none of these."""
    head = csv_path.read_bytes()[:4096]
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        return f"{csv_path.name} is UTF-16 text (it starts with a UTF-16 byte-order mark): save it as UTF-8"
    if any(c.startswith("\ufeff") for c in columns):
        return f"{csv_path.name} starts with a byte-order mark read into the first name: save it as UTF-8"
    header = head.decode("utf-8", errors="replace").splitlines()[0] if head else ""
    others = [s for s in (";", "\t", "|", ",") if s != sep and header.count(s) >= 1]
    if len(columns) == 1 and others:
        found = "a tab" if others[0] == "\t" else repr(others[0])
        return (
            f"{csv_path.name} is separated by {found}, not {sep!r} (its header line is {header!r}): "
            f"set csv_sep={others[0]!r}"
        )
    padded = [c for c in columns if c != c.strip()]
    if padded:
        return (
            f"{csv_path.name}'s header names have spaces around them ({padded}): remove the spaces from "
            "its first line, or set the column settings to the names as written"
        )
    return ""


def _problem(row, problem: str, fix: str) -> dict:
    return {
        "table": getattr(row, "table", ""),
        "line": row.line,
        "id": row.id,
        "file": row.path,
        "problem": problem,
        "fix": fix,
    }


def split_label(value: object, sep: str) -> list[str]:
    """The labels of one written value: split at `sep`, each stripped, empty parts left out."""
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return []
    return [part.strip() for part in str(value).split(sep) if part.strip()]


def _duplicate_problems(frame: pd.DataFrame, cfg: Config) -> list[dict]:
    """Every line of an id written more than once: a conflict when their labels differ (a multilabel set
    compared as a set: "cat dog" and "dog cat" are the same labels), else a duplicate of the first line."""
    sep = cfg.label_sep if cfg.task == "multilabel" and not cfg.label_cols else None
    problems = []
    for image_id, rows in frame[frame["id"].duplicated(keep=False)].groupby("id", sort=False):
        written = rows["label"].dropna().astype(str)
        if sep is not None:
            written = written.map(lambda v: sep.join(sorted(set(split_label(v, sep)))))
        labels = sorted(written.unique())
        first = rows.iloc[0]
        where = f"{first['table']} line {first['line']}" if first["table"] else f"line {first['line']}"
        for i, r in enumerate(rows.itertuples()):
            if len(labels) > 1:
                problems.append(
                    _problem(
                        r,
                        f"id {image_id!r} has conflicting labels {labels}",
                        "keep one line with the right label",
                    )
                )
            elif i > 0:
                problems.append(_problem(r, f"duplicate of {where}", "delete the repeated line"))
    return problems


def class_names(labels: pd.Series) -> list[str]:
    """Sorted class names: numerically when every label is a whole number, else alphabetically."""
    values = labels.astype(str).unique()
    try:
        return [str(v) for v in sorted(values, key=int)]
    except ValueError:
        return sorted(values)


def list_test_images(cfg: Config, data_dir: Path, layout: str) -> pd.DataFrame | None:
    """The test set: `id` and `path`, plus `label` when the test set is labelled; None when there is none.

    Where it is, first found: test_csv (ids, and labels in label_col when it has them), the sample
    submission (CSV layout, its order), the images of test_dir (CSV layout) or of test/ (ImageFolder:
    class folders make it labelled, a flat folder is unlabelled).
    """
    test_dir = data_dir / (cfg.test_dir if layout == "csv" else "test")
    if cfg.test_csv:
        return _listed_test_images(cfg, data_dir / cfg.test_csv, test_dir, "test_csv")
    if layout == "csv" and (data_dir / cfg.sample_submission).is_file():
        return _listed_test_images(cfg, data_dir / cfg.sample_submission, test_dir, "sample_submission")
    if not test_dir.is_dir():
        return None
    files = image_files(test_dir)
    if not files:
        raise DataError(f"{test_dir} holds no images; put the test images there, or remove the empty folder.")
    ids = [f.relative_to(test_dir).as_posix() for f in files]
    test = pd.DataFrame({"id": ids, "path": [str(f) for f in files]})
    class_dirs = [d for d in test_dir.iterdir() if d.is_dir() and not d.name.startswith(".")]
    if layout == "imagefolder" and class_dirs:
        flat = [i for i in ids if "/" not in i]
        if flat:
            raise DataError(
                f"{test_dir} mixes class folders with images outside them (e.g. {flat[:3]}): put every test "
                "image in its class folder (a labelled test set), or none (an unlabelled one)."
            )
        test["label"] = [i.split("/", 1)[0] for i in ids]
    return test


def image_files(folder: Path) -> list[Path]:
    """The image files under a folder, sorted (hidden files left out)."""
    return sorted(
        f for f in folder.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES and not f.name.startswith(".")
    )


def _listed_test_images(cfg: Config, table: Path, test_dir: Path, setting: str) -> pd.DataFrame:
    """The test images a table lists, in its order; a warning names the images of test_dir it leaves out."""
    if not table.is_file():
        raise DataError(f"{table} does not exist; set {setting} (relative to data_dir).")
    listed = read_table(cfg, table)
    if cfg.id_col not in listed.columns:
        raise DataError(
            f"{table} has no column {cfg.id_col!r} (its columns: {list(listed.columns)}): set id_col."
        )
    ids = listed[cfg.id_col].fillna("")
    test = pd.DataFrame({"id": ids, "path": [str(test_dir / f"{i}{cfg.image_ext}") for i in ids]})
    if setting == "test_csv" and cfg.label_col in listed.columns:
        blank = (listed.index[listed[cfg.label_col].isna()] + 2).tolist()
        if blank and len(blank) < len(listed):
            raise DataError(
                f"{table} has labels on some lines but not on lines {blank[:10]}: label every test image "
                f"(a labelled test set), or drop the {cfg.label_col!r} column (an unlabelled one)."
            )
        if not blank:
            test["label"] = listed[cfg.label_col].to_numpy()
    if test_dir.is_dir():
        unlisted = sorted({str(f) for f in image_files(test_dir)} - set(test["path"]))
        if unlisted:
            names = [Path(u).name for u in unlisted[:5]]
            warnings.warn(
                f"{len(unlisted)} image(s) in {test_dir} are not listed in {table.name} and get no prediction, "
                f"e.g. {names}: add them to {table.name} if they belong to the test set.",
                stacklevel=2,
            )
    return test
