"""Predicting with checkpoints: one model or a fold ensemble, with TTA, each model loaded once.

Batches are the outer loop and models the inner one, so each image is decoded once however many models
and views there are, and every model stays in memory for the whole pass (never reloaded per batch).
Probabilities are averaged over models and views after the
softmax (multiclass) or the sigmoid (multilabel), as the run's task object (helpers.tasks, from its
config) turns logits into probabilities.
Every loader comes from `helpers.loaders.build_loader`, over a table's rows (`path`, and `height` and
`width` when known, which lets the images come from the RAM cache).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from helpers.augment import InputPrep
from helpers.checkpoints import load_checkpoint, load_model
from helpers.config import Config, ConfigError
from helpers.errors import MissingFileError
from helpers.loaders import build_loader
from helpers.precision import Precision, pick_device, resolve_precision
from helpers.run_folder import RunFolder
from helpers.stopping import check, stop_signals_caught, test_signal
from helpers.tables import DataError
from helpers.tasks import Task, task_for
from helpers.tta import check_views, mean_over_views, view_probabilities

# the fold build_loader seeds augmentation with: prediction's transform is deterministic, so any fold will do
PREDICTION_FOLD = 0


@dataclass
class Prediction:
    """Per-view probabilities (views, N, C) averaged over models, and the dataset indices they belong to."""

    per_view: np.ndarray
    views: list[str]
    indices: np.ndarray

    @property
    def probabilities(self) -> np.ndarray:
        """Mean over every view: the TTA prediction."""
        return mean_over_views(self.per_view)

    def view(self, name: str) -> np.ndarray:
        return self.per_view[self.views.index(name)]

    def mean_of(self, views: Sequence[str]) -> np.ndarray:
        """Mean over some of the views: the TTA prediction of those views alone."""
        return mean_over_views(self.per_view[[self.views.index(v) for v in views]])


def trained_checkpoints(run: RunFolder, kind: str, n_folds: int) -> dict[int, Path]:
    """The folds of a run that have a checkpoint of this kind, with its path; an error saying what to run
    when there is none."""
    found = run.trained_folds(kind, n_folds)
    if not found:
        raise MissingFileError(
            f"no {kind} checkpoint in {run.checkpoints}: run notebooks/03_train.ipynb for this run first"
            + (" with ema=True" if kind == "ema" else "")
        )
    return found


@torch.no_grad()
def predict_models(
    models: Sequence[nn.Module],
    loader,
    views: Sequence[str],
    device: torch.device,
    precision: Precision,
    prep: InputPrep,
    task: Task,
    desc: str = "predict",
) -> Prediction:
    """Average per-view probabilities of several in-memory models over every batch of the loader.

    A stop signal ends it after the current batch (helpers.stopping), saving nothing."""
    views = check_views(views)
    chunks, indices = [], []
    with stop_signals_caught():
        for i, (x, _, idx) in enumerate(tqdm(loader, desc=desc, unit="batch", leave=False)):
            x = prep(x, device)
            total = sum(view_probabilities(m, x, views, precision, task) for m in models)
            chunks.append((total / len(models)).cpu())
            indices.append(idx)
            test_signal(desc, i)
            check(f"{desc}, batch {i + 1} of {len(loader)}")
    return Prediction(torch.cat(chunks, dim=1).numpy(), list(views), torch.cat(indices).numpy())


def load_models(paths: Sequence[Path], device: torch.device, channels_last: bool = False) -> list[nn.Module]:
    """Each checkpoint loaded once, in eval mode, on the device."""
    return [load_model(path, device, channels_last)[0] for path in paths]


def predict_checkpoints(
    cfg: Config,
    paths: Sequence[Path],
    rows: pd.DataFrame,
    views: Sequence[str],
    device: torch.device | None = None,
) -> Prediction:
    """Ensemble predictions of checkpoints (all trained with cfg's backbone and size) over a table's images,
    in the rows' order."""
    device = device or pick_device()
    models = load_models(paths, device, cfg.channels_last)
    # prediction reads the images only: the targets (either task's) stay with the rows
    loader = build_loader(
        cfg, rows.drop(columns="label_idx", errors="ignore"), False, PREDICTION_FOLD, device
    )
    prep = InputPrep.for_backbone(cfg.backbone, cfg.channels_last)
    precision = resolve_precision(cfg.precision, device)
    return predict_models(models, loader, views, device, precision, prep, task_for(cfg))


def probabilities_frame(
    ids: Sequence[str], probabilities: np.ndarray, classes: Sequence[str]
) -> pd.DataFrame:
    """An `id` column and one probability column per class name: the run's test_probabilities.csv, which
    the leaderboard scores against test_labels.csv."""
    return pd.concat(
        [pd.DataFrame({"id": list(ids)}), pd.DataFrame(probabilities, columns=list(classes))], axis=1
    )


SEPARATORS = (" ", "|", ";", ",", "\t")  # what a sample submission may put between labels


def label_separator(values: pd.Series, classes: Sequence[str], default: str) -> str:
    """The separator between the labels of a sample submission's label column, read from its values: the
    first candidate (the run's label_sep first) that splits every value holding it into known classes,
    else the first one the values hold at all (placeholder sets), else `default` (single labels or empty
    values say nothing)."""
    texts = [str(v) for v in values.dropna() if str(v).strip()]
    candidates = list(dict.fromkeys([default, *SEPARATORS]))
    known = set(classes)
    for sep in candidates:
        holding = [t for t in texts if sep in t.strip()]
        if holding and all(set(t.strip().split(sep)) <= known for t in holding):
            return sep
    for sep in candidates:
        if any(sep in t.strip() for t in texts):
            return sep
    return default


def fill_submission(
    task: Task,
    sample: pd.DataFrame,
    id_col: str,
    ids: Sequence[str],
    probabilities: np.ndarray,
    decided: np.ndarray,
    classes: Sequence[str],
    label_sep: str,
) -> pd.DataFrame:
    """The sample submission's rows and columns, filled in: one probability column per class when its
    columns are the class names; the predicted label (the task's text of its decision: a class name, or
    the set's names joined by the sample's own separator, `label_separator`) when it has one other column;
    both when it has a label column followed by the class names (the default format without a sample)."""
    index = pd.Index(list(ids), name=id_col)
    order = sample[id_col].astype(str)
    missing = sorted(set(order) - set(index))
    if missing:
        raise DataError(f"{len(missing)} sample-submission id(s) have no prediction, e.g. {missing[:5]}")
    position = pd.Series(np.arange(len(index)), index=index).loc[order].to_numpy()
    probs = pd.DataFrame(probabilities[position], columns=list(classes))
    out = sample.copy()
    other = [c for c in sample.columns if c != id_col]
    if set(other) == set(classes):
        out[other] = probs[other].to_numpy()
    elif len(other) == 1:
        sep = label_separator(sample[other[0]], classes, label_sep)
        out[other[0]] = task.label_texts(decided[position], classes, sep)
    elif set(other[1:]) == set(classes) and other[0] not in classes:
        out[other[0]] = task.label_texts(decided[position], classes, label_sep)
        out[other[1:]] = probs[other[1:]].to_numpy()
    else:
        raise DataError(
            f"cannot fill sample submission columns {other}: expected one label column or the class names "
            f"{list(classes)}"
        )
    return out


def predict_folds(
    cfg: Config,
    table: pd.DataFrame,
    checkpoints: dict[int, Path],
    views: Sequence[str],
    device: torch.device | None = None,
) -> tuple[pd.DataFrame, Prediction]:
    """Out-of-fold predictions: each trained fold's checkpoint on that fold's validation rows.

    Returns the validation rows (in prediction order) and their per-view probabilities.
    """
    rows, parts = [], []
    for fold, path in checkpoints.items():
        val = table[table["fold"] == fold].reset_index(drop=True)
        parts.append(predict_checkpoints(cfg, [path], val, views, device))
        rows.append(val)
    prediction = Prediction(
        np.concatenate([p.per_view for p in parts], axis=1), list(views), np.arange(sum(len(r) for r in rows))
    )
    return pd.concat(rows, ignore_index=True), prediction


@dataclass
class Member:
    """One run of an ensemble: its folder, its config (size, normalisation, backbone) and its fold
    checkpoints."""

    run: RunFolder
    cfg: Config
    checkpoints: list[Path]
    classes: list[str]


def ensemble_members(cfg: Config, run: RunFolder) -> list[Member]:
    """This run's fold checkpoints plus those of every run named in ensemble_runs; classes must agree."""
    members = []
    for name in dict.fromkeys([run.name, *cfg.ensemble_runs]):
        other_run = RunFolder(run.path.parent / name)
        if not other_run.config.exists():
            raise MissingFileError(f"ensemble_runs names {name!r}, but {other_run.config} does not exist")
        other = other_run.read_config().replace(checkpoint=cfg.checkpoint, tta_views=cfg.tta_views)
        paths = list(trained_checkpoints(other_run, cfg.checkpoint, other.n_folds).values())
        members.append(Member(other_run, other, paths, load_checkpoint(paths[0])["classes"]))
    tasks = {m.run.name: m.cfg.task for m in members}
    if len(set(tasks.values())) > 1:
        raise ConfigError(
            f"ensemble_runs mixes tasks {tasks}: probabilities of a multiclass run (softmax) and a multilabel "
            "one (a sigmoid per class) do not average; ensemble runs of one task"
        )
    if any(m.classes != members[0].classes for m in members):
        raise ConfigError(f"the runs {member_names(members)} were trained on different class lists")
    return members


def member_names(members: Sequence[Member]) -> list[str]:
    """The run folders' names: what a run is called even when its run_name was left empty."""
    return [m.run.name for m in members]


def describe_ensemble(members: Sequence[Member], views: Sequence[str], n_images: int) -> str:
    """One line for 05: how many images, models, runs and views the prediction covers."""
    n_models = sum(len(m.checkpoints) for m in members)
    return (
        f"{n_images} test images; {n_models} model(s) from runs {member_names(members)} "
        f"x {len(views)} view(s)"
    )


def predict_ensemble(
    members: Sequence[Member],
    rows: pd.DataFrame,
    views: Sequence[str],
    device: torch.device | None = None,
) -> Prediction:
    """Probabilities averaged over every checkpoint of every member (each with its own preprocessing)."""
    total, count = None, 0
    for member in members:
        p = predict_checkpoints(member.cfg, member.checkpoints, rows, views, device)
        weighted = p.per_view * len(member.checkpoints)
        total = weighted if total is None else total + weighted
        count += len(member.checkpoints)
    return Prediction(total / count, list(views), np.arange(len(rows)))
