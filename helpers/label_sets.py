"""Which task a label table holds, each row's labels as a list, and the problems only label sets have.

A row's labels come from one column (`label_col`: one class, or several separated by `label_sep`) or from
one 0/1 column per class (`label_cols`). Either way the reader hands over a `tokens` list per row; this
module resolves `task='auto'`, checks the tokens (a label set may not repeat a label, be empty unless
`allow_empty_labels`, or join labels by another separator; a wide column holds 0 or 1) and writes the canonical
`label`: the class, or the set in class order joined by `label_sep`.

`auto` never guesses a set: labels that look multi-label stop with one line naming `task` and `label_sep`.
One-hot wide columns (exactly one 1 per row) are a multiclass task written wide, and are read as one.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import pandas as pd

from helpers.config import Config
from helpers.tables import WIDE_PREFIX, DataError, problem_frame, split_label
from helpers.targets import TaskName, decode_label_set

SEPARATORS = {" ": "spaces", ",": "commas", "|": "pipes", ";": "semicolons"}
MIN_SEPARATED_SHARE = 0.1  # auto: at least this share of the labels must hold the separator to look like sets
ONES, ZEROS = {"1", "1.0", "true"}, {"0", "0.0", "false"}


def wide_tokens(frame: pd.DataFrame, columns: Sequence[str]) -> tuple[list[list[str]], list[list[str]]]:
    """Per row of a wide table, the columns marked 1, and the problems of its values (anything but 0/1)."""
    tokens: list[list[str]] = [[] for _ in range(len(frame))]
    problems: list[list[str]] = [[] for _ in range(len(frame))]
    for column in columns:
        written = frame[WIDE_PREFIX + column]
        for row, value in enumerate(written.fillna("").astype(str).str.strip().str.lower()):
            if value in ONES:
                tokens[row].append(column)
            elif value not in ZEROS:
                problems[row].append(f"column {column!r} holds {written.iloc[row]!r}, not 0 or 1")
    return tokens, problems


def looks_multilabel(labels: pd.Series, first: str) -> tuple[str, float, str]:
    """(separator, share, example) when the labels look like sets; ("", 0, "") otherwise.

    They do when a separator (`first`, then spaces, commas, pipes, semicolons) splits at least
    MIN_SEPARATED_SHARE of them and their parts recur as labels: some part is a whole label elsewhere, or
    there are fewer distinct parts than distinct separated labels (17 Planet tags make 400-odd tag sets;
    two-word class names such as "golden retriever" have more parts than names).
    """
    values = labels.dropna().astype(str).str.strip()
    values = values[values != ""]
    if values.empty:
        return "", 0.0, ""
    for sep in dict.fromkeys([first, *SEPARATORS]):
        parts = values.map(lambda v, s=sep: split_label(v, s))
        separated = values[parts.map(len) > 1]
        share = len(separated) / len(values)
        if share < MIN_SEPARATED_SHARE:
            continue
        whole = set(values[parts.map(len) == 1])
        distinct_parts = {p for ps in parts[parts.map(len) > 1] for p in ps}
        if distinct_parts & whole or len(distinct_parts) < separated.nunique():
            return sep, share, str(separated.iloc[0])
    return "", 0.0, ""


def task_of_labels(cfg: Config, frame: pd.DataFrame, where: str) -> tuple[TaskName, str]:
    """The task of the table's rows (`label` as written, or `tokens` of wide columns) and why, in one line.

    `where` names the label source in messages (the table and column). Raises DataError when `auto` meets
    labels that look like sets.
    """
    if cfg.label_cols:
        counts = frame["tokens"].map(len)
        if cfg.task == "multiclass":
            return "multiclass", f"multiclass (task='multiclass'): one column of {where} is 1 per row"
        if cfg.task == "multilabel":
            return "multilabel", f"multilabel (task='multilabel'): the columns marked 1 in {where}"
        if (counts == 1).all():
            return "multiclass", (
                f"multiclass: every row marks exactly one of {where} with 1, so they are one-hot columns of a "
                "single-label task (set task='multilabel' to read them as label sets)"
            )
        return (
            "multilabel",
            f"multilabel: rows of {where} mark {counts.min()} to {counts.max()} columns with 1",
        )
    if cfg.task == "multilabel":
        return (
            "multilabel",
            f"multilabel (task='multilabel'): labels of {where} separated by {cfg.label_sep!r}",
        )
    if cfg.task == "multiclass":
        return "multiclass", f"multiclass (task='multiclass'): one class per row in {where}"
    sep, share, example = looks_multilabel(frame["label"], cfg.label_sep)
    if sep:
        raise DataError(
            f"{where} looks multi-label: {share:.0%} of its labels are several labels separated by "
            f"{SEPARATORS.get(sep, repr(sep))} (e.g. {example!r}) whose parts recur as labels; set "
            f"task='multilabel' and label_sep={sep!r} to read each as a set, or task='multiclass' if each whole "
            "value is one class."
        )
    return "multiclass", f"multiclass: one class per row in {where} (no label looks like a set of labels)"


def row_tokens(cfg: Config, frame: pd.DataFrame, task: TaskName) -> pd.Series:
    """Each row's labels as a list: the wide columns marked 1, the separated parts, or the one class."""
    if cfg.label_cols:
        return frame["tokens"]
    if task == "multilabel":
        return frame["label"].map(lambda v: split_label(v, cfg.label_sep))
    return frame["label"].map(lambda v: [] if pd.isna(v) or not str(v).strip() else [str(v)])


def joined_labels(token: str, sep: str, known: Collection[str]) -> bool:
    """Whether a token is several known labels joined by another separator than label_sep ("cat,dog" in
    a space-separated table): "No Finding" in a pipe-separated one is one label, as "No" is no label."""
    parts = split_label(token, sep)
    return len(parts) > 1 and all(p in known for p in parts)


def token_problems(
    cfg: Config, tokens: Sequence[str], task: TaskName, where: str, known: Collection[str] = frozenset()
) -> list[tuple[str, str]]:
    """(problem, fix) for one row's labels under the task: none, several, repeated, or `known` labels
    (every label of the table) joined by another separator."""
    if not tokens:
        if task == "multilabel" and cfg.allow_empty_labels:
            return []
        fix = "fill in the label or delete the line"
        if task == "multilabel":
            fix = "write the image's labels, or set allow_empty_labels=True if an image may have none"
        return [(f"empty label in {where}", fix)]
    if task == "multiclass":
        if len(tokens) > 1:
            return [
                (
                    f"{len(tokens)} classes marked in {where} ({', '.join(tokens)})",
                    "mark exactly one class per row, or set task='multilabel' to read the row as a label set",
                )
            ]
        return []
    found = []
    repeated = sorted({t for t in tokens if tokens.count(t) > 1})
    if repeated:
        found.append((f"label repeated within the row ({', '.join(repeated)})", "write each label once"))
    others = [s for s in SEPARATORS if s != cfg.label_sep]
    odd = [t for t in tokens if any(joined_labels(t, s, known) for s in others)]
    if odd and not cfg.label_cols:
        found.append(
            (
                f"unknown label token, not separated by label_sep={cfg.label_sep!r} ({', '.join(odd)})",
                f"separate every label by {cfg.label_sep!r}, or set label_sep to the separator the table uses",
            )
        )
    return found


def canonical_label(tokens: Sequence[str], order: dict[str, int], sep: str) -> str:
    """A row's `label` as the prepared table writes it: its classes in class order, joined by `sep`."""
    return sep.join(sorted(set(tokens), key=order.__getitem__))


def label_source(cfg: Config) -> str:
    """Where the labels are, in words: the label column or the wide columns of the label table."""
    if cfg.label_cols:
        return f"the 0/1 columns {cfg.label_cols} of {cfg.csv_name}"
    return f"{cfg.csv_name} column {cfg.label_col!r}"


def read_label_sets(
    cfg: Config, frame: pd.DataFrame, layout: str = "csv"
) -> tuple[pd.DataFrame, TaskName, str, pd.DataFrame]:
    """The rows with their `tokens` (a list of labels each), the resolved task, why it is that task (one
    line), and a problem per row whose labels are wrong for it (named by table and line). An ImageFolder
    tree is multiclass whatever its folder names (the reader refuses a multilabel task there)."""
    where = label_source(cfg)
    frame = frame.copy()
    value_problems: list[list[str]] = [[] for _ in range(len(frame))]
    if layout == "imagefolder":
        task: TaskName = "multiclass"
        reason = "multiclass: the ImageFolder layout gives each image the class of its folder"
    elif cfg.label_cols:
        frame["tokens"], value_problems = wide_tokens(frame, cfg.label_cols)
        frame = frame.drop(columns=[WIDE_PREFIX + c for c in cfg.label_cols])
        task, reason = task_of_labels(cfg, frame[[not p for p in value_problems]], where)
    else:
        task, reason = task_of_labels(cfg, frame, where)
    joined = [c for c in cfg.label_cols if cfg.label_sep in c]
    if task == "multilabel" and joined:
        raise DataError(
            f"the label columns {joined} hold label_sep={cfg.label_sep!r}, so their label sets could not be "
            "told apart when written out: set label_sep to a text no column name holds, e.g. '|'."
        )
    frame["tokens"] = row_tokens(cfg, frame, task)
    known = {t for tokens in frame["tokens"] for t in tokens}
    rows = []
    for r, values in zip(frame.itertuples(), value_problems, strict=True):
        found = [(p, "write 0 or 1") for p in values] or token_problems(cfg, r.tokens, task, where, known)
        rows += [
            {"table": r.table, "line": r.line, "id": r.id, "file": r.path, "problem": p, "fix": f}
            for p, f in found
        ]
    return frame, task, reason, problem_frame(rows)


def class_rows(table: pd.DataFrame, classes: Sequence[str], task: TaskName) -> pd.DataFrame:
    """One row per (image, class it holds), `label` the one class: a multiclass table as it is, a
    multilabel row once per label of its set (an empty set not at all). What per-class counts count."""
    if task == "multiclass":
        return table
    each = table.assign(label_idx=table["label_idx"].map(decode_label_set)).explode("label_idx")
    each = each.dropna(subset="label_idx")
    return each.assign(
        label=[classes[int(i)] for i in each["label_idx"]], label_idx=each["label_idx"].astype(int)
    )
