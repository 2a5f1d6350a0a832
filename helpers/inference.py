"""Predicting with checkpoints: one model or a fold ensemble, with TTA, each model loaded once.

Batches are the outer loop and models the inner one, so each image is decoded once however many models
and views there are, and every model stays in memory for the whole pass (the original pipeline reloaded
every checkpoint for every batch). Probabilities are averaged over models and views after the softmax.
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

from helpers.augment import InputPrep, build_eval_transform
from helpers.checkpoints import checkpoint_path, load_checkpoint, load_model
from helpers.config import Config
from helpers.loaders import ImageDataset, auto_workers, load_cache, make_loader
from helpers.precision import Precision, pick_device, resolve_precision
from helpers.tta import check_views, view_probabilities


@dataclass
class Prediction:
    """Per-view probabilities (views, N, C) averaged over models, and the dataset indices they belong to."""

    per_view: np.ndarray
    views: list[str]
    indices: np.ndarray

    @property
    def probabilities(self) -> np.ndarray:
        """Mean over views: the TTA prediction."""
        return self.per_view.mean(axis=0)

    def view(self, name: str) -> np.ndarray:
        return self.per_view[self.views.index(name)]


def trained_checkpoints(run_dir: Path, kind: str, n_folds: int) -> dict[int, Path]:
    """The folds of a run that have a checkpoint of this kind, with its path."""
    found = {k: checkpoint_path(run_dir, k, kind) for k in range(n_folds)}
    found = {k: p for k, p in found.items() if p.exists()}
    if not found:
        raise FileNotFoundError(
            f"no {kind} checkpoint in {run_dir / 'checkpoints'}: run notebooks/03_train.ipynb for this run first"
            + (" with ema=True" if kind == "ema" else "")
        )
    return found


def image_loader(
    cfg: Config,
    paths: Sequence[str],
    sizes: tuple[Sequence[int], Sequence[int]] | None = None,
    device: torch.device | None = None,
):
    """An evaluation loader (resize to the run's size; uint8 batches) over image paths, in order."""
    transform = build_eval_transform(cfg.img_size)
    cache = load_cache(paths, *sizes, cfg.cache_mb) if (cfg.cache_images and sizes is not None) else None
    dataset = ImageDataset(paths, np.zeros(len(paths), dtype=np.int64), transform, cfg.seed, cache)
    workers = cfg.num_workers if cfg.num_workers >= 0 else auto_workers(cache is not None)
    pin = (device or pick_device()).type == "cuda"
    return make_loader(
        dataset, cfg.batch_size * 2, train=False, seed=cfg.seed, num_workers=workers, pin_memory=pin
    )


@torch.no_grad()
def predict_models(
    models: Sequence[nn.Module],
    loader,
    views: Sequence[str],
    device: torch.device,
    precision: Precision,
    prep: InputPrep,
    desc: str = "predict",
) -> Prediction:
    """Average per-view probabilities of several in-memory models over every batch of the loader."""
    views = check_views(views)
    chunks, indices = [], []
    for x, _, idx in tqdm(loader, desc=desc, unit="batch", leave=False):
        x = prep(x, device)
        total = sum(view_probabilities(m, x, views, precision) for m in models)
        chunks.append((total / len(models)).cpu())
        indices.append(idx)
    return Prediction(torch.cat(chunks, dim=1).numpy(), list(views), torch.cat(indices).numpy())


def load_models(paths: Sequence[Path], device: torch.device, channels_last: bool = False) -> list[nn.Module]:
    """Each checkpoint loaded once, in eval mode, on the device."""
    return [load_model(path, device, channels_last)[0] for path in paths]


def predict_checkpoints(
    cfg: Config,
    paths: Sequence[Path],
    image_paths: Sequence[str],
    views: Sequence[str],
    sizes: tuple[Sequence[int], Sequence[int]] | None = None,
    device: torch.device | None = None,
) -> Prediction:
    """Ensemble predictions of checkpoints (all trained with cfg's backbone and size) over image files."""
    device = device or pick_device()
    models = load_models(paths, device, cfg.channels_last)
    loader = image_loader(cfg, image_paths, sizes, device)
    prep = InputPrep.for_backbone(cfg.backbone, cfg.channels_last)
    return predict_models(models, loader, views, device, resolve_precision(cfg.precision, device), prep)


def probabilities_frame(
    ids: Sequence[str], probabilities: np.ndarray, classes: Sequence[str]
) -> pd.DataFrame:
    """An `id` column and one probability column per class name: the run's test_probabilities.csv, which
    the leaderboard scores against test_labels.csv."""
    return pd.concat(
        [pd.DataFrame({"id": list(ids)}), pd.DataFrame(probabilities, columns=list(classes))], axis=1
    )


def submission_frame(
    sample: pd.DataFrame, id_col: str, ids: Sequence[str], probabilities: np.ndarray, classes: Sequence[str]
) -> pd.DataFrame:
    """The sample submission's rows and columns, filled in: class probabilities when its columns are the class
    names, else the predicted class name in its other column."""
    by_id = pd.DataFrame(probabilities, columns=list(classes), index=pd.Index(list(ids), name=id_col))
    order = sample[id_col].astype(str)
    missing = sorted(set(order) - set(by_id.index))
    if missing:
        raise ValueError(f"{len(missing)} sample-submission id(s) have no prediction, e.g. {missing[:5]}")
    probs = by_id.loc[order]
    out = sample.copy()
    other = [c for c in sample.columns if c != id_col]
    if set(other) == set(classes):
        out[other] = probs[other].to_numpy()
    elif len(other) == 1:
        out[other[0]] = np.asarray(classes)[probs.to_numpy().argmax(1)]
    else:
        raise ValueError(
            f"cannot fill sample submission columns {other}: expected one label column or the "
            f"class names {list(classes)}"
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
        parts.append(
            predict_checkpoints(
                cfg, [path], val["path"].tolist(), views, (val["height"], val["width"]), device
            )
        )
        rows.append(val)
    prediction = Prediction(
        np.concatenate([p.per_view for p in parts], axis=1), list(views), np.arange(sum(len(r) for r in rows))
    )
    return pd.concat(rows, ignore_index=True), prediction


@dataclass
class Member:
    """One run of an ensemble: its config (size, normalisation, backbone) and its fold checkpoints."""

    cfg: Config
    checkpoints: list[Path]
    classes: list[str]


def ensemble_members(cfg: Config, run_dir: Path) -> list[Member]:
    """This run's fold checkpoints plus those of every run named in ensemble_runs; classes must agree."""
    members = []
    for name in dict.fromkeys([run_dir.name, *cfg.ensemble_runs]):
        other_dir = run_dir.parent / name
        if not (other_dir / "config.json").exists():
            raise FileNotFoundError(
                f"ensemble_runs names {name!r}, but {other_dir / 'config.json'} does not exist"
            )
        other = Config.load(other_dir / "config.json").replace(
            checkpoint=cfg.checkpoint, tta_views=cfg.tta_views
        )
        paths = list(trained_checkpoints(other_dir, cfg.checkpoint, other.n_folds).values())
        members.append(Member(other, paths, load_checkpoint(paths[0])["classes"]))
    if any(m.classes != members[0].classes for m in members):
        raise ValueError(
            f"the runs {[m.cfg.run_name for m in members]} were trained on different class lists"
        )
    return members


def predict_ensemble(
    members: Sequence[Member],
    image_paths: Sequence[str],
    views: Sequence[str],
    sizes: tuple[Sequence[int], Sequence[int]] | None = None,
    device: torch.device | None = None,
) -> Prediction:
    """Probabilities averaged over every checkpoint of every member (each with its own preprocessing)."""
    total, count = None, 0
    for member in members:
        p = predict_checkpoints(member.cfg, member.checkpoints, image_paths, views, sizes, device)
        weighted = p.per_view * len(member.checkpoints)
        total = weighted if total is None else total + weighted
        count += len(member.checkpoints)
    return Prediction(total / count, list(views), np.arange(len(image_paths)))
