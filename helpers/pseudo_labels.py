"""Pseudo-labels: a source's confident predictions on unlabelled images, chosen once per run by 01.

The source (`pseudo_source`, resolved by helpers.sources) labels either the data set's test images, from
the probabilities its 05 (a run) or 07 (a blend) saved (test_probabilities.csv), or the images of
`unlabelled_dir`, which its runs' fold models predict here. The run's task decides what is confident (`Task.pseudo_labels`: a multiclass top
probability, or every class of a multilabel image decided, at `pseudo_threshold`); test labels, when the
data set has them, are never read. An image that is also a training image is left out. The chosen images,
their labels, confidences and source probabilities are saved in the run's pseudo_labels.csv, which
training reads back (helpers.pseudo_rows); once the run has trained, the saved choice stays.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from helpers.config import Config, ConfigError
from helpers.dataset import DataInfo, data_dir_of
from helpers.errors import MissingFileError
from helpers.images import read_image
from helpers.inference import predict_checkpoints, trained_checkpoints
from helpers.label_sets import class_rows
from helpers.paths import resolve_path
from helpers.plots import save_figure, show_images
from helpers.pseudo_rows import probability_columns
from helpers.run_folder import BlendFolder, RunFolder
from helpers.sources import SourceMember, source_members
from helpers.tables import DataError, detect_layout, image_files, list_test_images
from helpers.tasks import task_named

TEST_IMAGES = "test images"  # pseudo_labels.csv's `origin` of images taken from the data set's test set


def _saved_probabilities(
    owner: str, file: Path, saved: pd.DataFrame, ids: pd.Series, classes: list[str], rerun: str
) -> np.ndarray:
    """Probabilities a run's 05 or a blend saved for the test images (`owner` names which, `rerun` how to
    write them again), in the order of `ids`."""
    if list(saved.columns) != list(classes):
        raise ConfigError(
            f"pseudo_source: {owner} predicts classes {list(saved.columns)}, and this data set has {classes}"
        )
    missing = sorted(set(ids) - set(saved.index))
    if missing:
        raise DataError(
            f"{file} has no probabilities for {len(missing)} test image(s), e.g. {missing[:5]}: {rerun} again "
            "on this test set"
        )
    return saved.loc[ids].to_numpy(dtype=np.float64)


def _run_probabilities(member: SourceMember, ids: pd.Series, classes: list[str]) -> np.ndarray:
    """A member run's saved test probabilities (its 05) in the order of `ids`."""
    file = member.run.test_probabilities
    if not file.exists():
        raise MissingFileError(
            f"pseudo_source: {file} does not exist: run 05_inference for run {member.run.name!r} first (its "
            "test probabilities are the pseudo-labels' source)"
        )
    owner = f"run {member.run.name!r}"
    return _saved_probabilities(owner, file, member.run.read_test_probabilities(), ids, classes, "run its 05")


def _test_probabilities(
    name: str, members: list[SourceMember], ids: pd.Series, classes: list[str]
) -> np.ndarray:
    """The source's probabilities for the test images: a blend's own (what its submission was decided
    from), or its members' saved ones weighted."""
    blend = BlendFolder.named(name)
    if blend.complete():
        saved = blend.read_test_probabilities()
        rerun = f"write blend {name!r} (07)"
        return _saved_probabilities(f"blend {name!r}", blend.test_probabilities, saved, ids, classes, rerun)
    return sum(m.weight * _run_probabilities(m, ids, classes) for m in members)


def _predicted_probabilities(member: SourceMember, rows: pd.DataFrame) -> np.ndarray:
    """A member run's fold models' mean probabilities over the rows' images (no TTA)."""
    cfg = member.run.read_config()
    paths = list(trained_checkpoints(member.run, member.kind, cfg.n_folds).values())
    return predict_checkpoints(cfg, paths, rows, ["identity"]).probabilities.astype(np.float64)


def source_probabilities(cfg: Config, info: DataInfo) -> tuple[pd.DataFrame, np.ndarray, str]:
    """The images to pseudo-label (id, path), the source's probabilities for them (weighted over its
    members) and where the images come from. Test labels are dropped unread."""
    members = source_members(cfg.pseudo_source, "pseudo_source")
    if cfg.unlabelled_dir:
        folder = resolve_path(cfg.unlabelled_dir)
        files = image_files(folder) if folder.is_dir() else []
        if not files:
            raise DataError(f"unlabelled_dir={cfg.unlabelled_dir!r}: {folder} holds no images")
        rows = pd.DataFrame(
            {"id": [f.relative_to(folder).as_posix() for f in files], "path": [str(f) for f in files]}
        )
        probabilities = sum(m.weight * _predicted_probabilities(m, rows) for m in members)
        return rows, probabilities, f"unlabelled_dir {cfg.unlabelled_dir}"
    data_dir = data_dir_of(cfg)
    test = list_test_images(cfg, data_dir, detect_layout(cfg, data_dir))
    if test is None:
        raise DataError(
            f"pseudo_source={cfg.pseudo_source!r}: the data set has no test images to pseudo-label; set "
            "unlabelled_dir to a folder of unlabelled images"
        )
    rows = test[["id", "path"]]  # a labelled test set's labels are not read
    probabilities = _test_probabilities(cfg.pseudo_source, members, rows["id"], info.classes)
    return rows.reset_index(drop=True), probabilities, TEST_IMAGES


def choose_pseudo_labels(cfg: Config, info: DataInfo) -> pd.DataFrame:
    """The source's confident images with their labels: pseudo_labels.csv's rows, least confident first."""
    rows, probabilities, origin = source_probabilities(cfg, info)
    task = task_named(info.task, cfg.allow_empty_labels)
    accepted, confidence, indices = task.pseudo_labels(probabilities, cfg.pseudo_threshold)
    training = {str(resolve_path(p)) for p in info.table["path"]}
    accepted &= np.array([str(resolve_path(p)) not in training for p in rows["path"]])
    order = {c: i for i, c in enumerate(info.classes)}
    encoded = [task.encode([info.classes[i] for i in idx], order, cfg.label_sep) for idx in indices]
    table = pd.DataFrame(
        {
            "id": rows["id"].to_numpy(),
            "path": rows["path"].to_numpy(),
            "label": [label for label, _ in encoded],
            "label_idx": [index for _, index in encoded],
            "confidence": confidence,
            "source": cfg.pseudo_source,
            "origin": origin,
        }
    )
    table[probability_columns(info.classes)] = probabilities
    return table[accepted].sort_values("confidence", kind="stable").reset_index(drop=True)


def prepare_pseudo_labels(cfg: Config, info: DataInfo, run: RunFolder) -> pd.DataFrame | None:
    """01: choose the run's pseudo-labels and save them (pseudo_labels.csv); None without pseudo_source.
    A run that has trained keeps its saved choice: its folds learnt from those images."""
    if not cfg.pseudo_source:
        run.pseudo_labels.unlink(missing_ok=True)
        return None
    if run.trained() and run.pseudo_labels.exists():
        return run.read_pseudo_labels()
    table = choose_pseudo_labels(cfg, info)
    run.write_pseudo_labels(table)
    return table


def describe_pseudo_labels(table: pd.DataFrame, cfg: Config) -> str:
    """One line: how many images, from where, by which source, at which threshold, hard or soft."""
    kind = "soft targets (the source's probabilities)" if cfg.pseudo_soft else "hard labels"
    origin = table["origin"].iloc[0] if len(table) else "its images"
    return (
        f"{len(table)} pseudo-labelled images from {origin}, by {cfg.pseudo_source!r} at confidence >= "
        f"{cfg.pseudo_threshold:g}, trained as {kind}; they join every fold's training side, never a "
        "validation fold"
    )


def pseudo_label_counts(table: pd.DataFrame, info: DataInfo) -> pd.DataFrame:
    """Pseudo-labelled images per class (a multilabel image counts for each of its labels), beside the
    labelled training images per class."""
    pseudo = class_rows(table, info.classes, info.task)["label"].astype(str).value_counts()
    labelled = class_rows(info.table, info.classes, info.task)["label"].astype(str).value_counts()
    frame = pd.DataFrame(
        {
            "labelled": labelled.reindex(info.classes, fill_value=0),
            "pseudo": pseudo.reindex(info.classes, fill_value=0),
        }
    )
    frame.index.name = "class"
    return frame


def show_least_confident(table: pd.DataFrame, run: RunFolder, n: int = 16) -> Figure | None:
    """The n least confident accepted images, titled with their pseudo-label and confidence; saved as
    plots/pseudo_least_confident.png. None when nothing was accepted."""
    if table.empty:
        return None
    shown = table.nsmallest(n, "confidence")
    images = [read_image(p) for p in shown["path"]]
    titles = [
        f"{label or '(none)'}\n{c:.3f}" for label, c in zip(shown["label"], shown["confidence"], strict=True)
    ]
    return save_figure(show_images(images, titles, ncols=8), run, "pseudo_least_confident")


def pseudo_test_note(run: RunFolder) -> str:
    """05's warning when the run's pseudo-labels came from the test images it predicts; empty otherwise."""
    if not run.pseudo_labels.exists():
        return ""
    table = run.read_pseudo_labels()
    if table.empty or (table["origin"] != TEST_IMAGES).all():
        return ""
    return (
        f"note: this run trained on {len(table)} pseudo-labels of these test images (source "
        f"{table['source'].iloc[0]!r}): allowed, as on Kaggle, but its test score is not that of a model that "
        "never saw them"
    )
