"""The Dataset and the loaders: images from the decode-once store or the files, reproducible augmentation.

`build_loader` is the one place a loader is assembled from a config (dataset, store, transform, seed,
workers, batch size), for training, validation, 02's preview and prediction alike. Every image comes as
`read_image(path, side)` gives it (the shorter side fitted to the store's side): from the dataset's store
(helpers.store) when it holds the file as it is now, else decoded from the file, with the same pixels.
Augmentation randomness is seeded per sample from (seed, epoch, index), handed over by the sampler (the
balanced sampler adds the draw's position), so the images of an epoch are the same whatever the worker
count and whether the run was resumed.
"""

from __future__ import annotations

import os
import random
from collections import Counter
from collections.abc import Callable, Iterator, Sequence

import cv2
import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from helpers.augment import build_eval_transform, build_train_transform
from helpers.config import Config, ConfigError
from helpers.dataset import dataset_folder
from helpers.images import read_image
from helpers.precision import pick_device
from helpers.stopping import ignore_in_worker
from helpers.store import StoreView, open_view, store_folder, store_side
from helpers.targets import SOFT_TARGET, decode_label_set, with_soft_targets
from helpers.tasks import task_for

SEED_STRIDE = 1_000_003


def sample_seed(base_seed: int, key: int) -> int:
    return (base_seed * SEED_STRIDE + key) % 2**32


class EpochSampler(Sampler[int]):
    """Yields keys `epoch * n + i`: the index i plus the epoch, so each sample's augmentation seed is known.

    With `weights` (one per row; the balanced sampler) a shuffled epoch is instead n rows drawn with
    replacement, each with probability proportional to its weight, seeded by (seed, epoch) like the shuffle;
    the keys then also carry the draw's position, `(epoch * n + position) * n + i`, so a row drawn twice in
    an epoch is augmented twice differently. Either way an epoch's keys depend on (seed, epoch) alone, so
    a resumed run replays them. With `num_replicas > 1` each process takes every num_replicas-th key of
    the same epoch, padded to equal length by repeating keys from the start. `set_epoch(epoch, skip)`
    leaves out this process's first `skip` keys of the epoch: a run resumed mid-epoch goes on with the
    batches it had not trained (its length stays the whole epoch's).
    """

    def __init__(
        self,
        n: int,
        shuffle: bool,
        seed: int,
        num_replicas: int = 1,
        rank: int = 0,
        weights: np.ndarray | None = None,
    ):
        self.n, self.shuffle, self.seed = n, shuffle, seed
        self.num_replicas, self.rank = num_replicas, rank
        self.p = None if weights is None else np.asarray(weights, dtype=np.float64) / np.sum(weights)
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip

    def order(self) -> list[int]:
        """The row indices of this epoch, in order (rows repeat when drawn by weight)."""
        if not self.shuffle:
            return list(range(self.n))
        if self.p is not None:
            rng = np.random.default_rng(sample_seed(self.seed, self.epoch))
            return rng.choice(self.n, size=self.n, p=self.p).tolist()
        g = torch.Generator().manual_seed(sample_seed(self.seed, self.epoch))
        return torch.randperm(self.n, generator=g).tolist()

    def keys(self) -> list[int]:
        """This epoch's keys (each one's row is `key % n`), before they are dealt to the processes."""
        if self.shuffle and self.p is not None:
            return [(self.epoch * self.n + pos) * self.n + i for pos, i in enumerate(self.order())]
        return [self.epoch * self.n + i for i in self.order()]

    def __iter__(self) -> Iterator[int]:
        keys = self.keys()
        per_rank = -(-self.n // self.num_replicas)
        padded = (keys * self.num_replicas)[: per_rank * self.num_replicas]
        return iter(padded[self.rank :: self.num_replicas][self.skip :])

    def __len__(self) -> int:
        return -(-self.n // self.num_replicas)


def balanced_weights(label_idx: Sequence) -> np.ndarray:
    """Each row's draw weight for the balanced sampler: 1 / the number of rows of its class, so every class
    is drawn equally often. A multilabel row counts under its rarest class (the one with the fewest rows),
    so rows of rare classes come up as often as rows of common ones; rows with no label form one more
    group. `label_idx` as a prepared table holds it: a class index, or a multilabel row's set."""
    sets = [decode_label_set(value) for value in label_idx]
    counts = Counter(c for classes in sets for c in classes)
    empty = sum(1 for classes in sets if not classes)
    return np.array([1.0 / min(counts[c] for c in classes) if classes else 1.0 / empty for classes in sets])


class ImageDataset(Dataset):
    """Images by path, fitted to `side` (0: full size), from the store when it holds them, through an
    albumentations transform; yields (tensor, target, index). `labels` are the run's task's targets (helpers.tasks):
    class indices (N,) or multi-hot rows (N, C)."""

    def __init__(
        self,
        paths: Sequence[str],
        labels: Sequence[int] | np.ndarray,
        transform: Callable,
        seed: int = 0,
        side: int = 0,
        store: StoreView | None = None,
    ):
        self.paths, self.labels = list(paths), np.asarray(labels)
        if self.labels.ndim == 1:
            self.labels = self.labels.astype(np.int64)
        self.transform, self.seed, self.side, self.store = transform, seed, side, store

    def __len__(self) -> int:
        return len(self.paths)

    def image(self, index: int) -> np.ndarray:
        stored = self.store.image(index) if self.store is not None else None
        return stored if stored is not None else read_image(self.paths[index], self.side)

    def __getitem__(self, key: int) -> tuple[torch.Tensor, int | torch.Tensor, int]:
        index = key % len(self.paths)
        if hasattr(self.transform, "set_random_state"):
            # one generator pair shared by the pipeline (set_random_seed would seed every transform alike,
            # so their random draws would move together)
            seed = sample_seed(self.seed, key)
            self.transform.set_random_state(np.random.default_rng(seed), random.Random(seed))
        tensor = self.transform(image=self.image(index))["image"]
        label = self.labels[index]
        return tensor, int(label) if self.labels.ndim == 1 else torch.from_numpy(label), index


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity mask, which containers and taskset narrow)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def auto_workers(cached: bool) -> int:
    """Loader processes for this machine: none on a small machine, else cores - 1 (at most 8).

    Training on the CPU, torch's threads already keep every core busy, so a loader process takes time from
    the model rather than adding a core. On 2 cores (benchmarks/RESULTS.md) augmenting in the main process
    matched or beat 1 and 2 workers in every case measured, from decoded images or decoding 32 px and 512 px
    JPEGs: so none there when there is no GPU, and none for stored (`cached`) images up to 4 cores.
    """
    cores = usable_cores()
    if cores <= 2 and pick_device().type == "cpu":
        return 0
    if cached and cores <= 4:
        return 0
    return min(8, max(0, cores - 1))


def make_loader(
    dataset: ImageDataset,
    batch_size: int,
    train: bool,
    seed: int,
    num_workers: int,
    pin_memory: bool = False,
    num_replicas: int = 1,
    rank: int = 0,
    drop_last: bool = False,
    weights: np.ndarray | None = None,
) -> DataLoader:
    """A loader over the dataset; training shuffles per epoch, or draws rows by `weights` (EpochSampler).
    `drop_last` drops a last partial batch. Workers ignore the stop signals (helpers.stopping): the
    training process stops at a step boundary and shuts them down."""
    if num_workers > 0:
        # one OpenCV thread per process: workers each running a full pool thrash the cores. Set here, before
        # the workers fork; setting it inside a worker hangs once the parent has used OpenCV's pool.
        cv2.setNumThreads(1)
    sampler = EpochSampler(len(dataset), train, seed, num_replicas, rank, weights)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
        drop_last=drop_last,
        worker_init_fn=ignore_in_worker if num_workers > 0 else None,
    )


def build_loader(
    cfg: Config,
    rows: pd.DataFrame,
    train: bool,
    fold: int,
    device: torch.device,
    num_replicas: int = 1,
    rank: int = 0,
    num_classes: int = 0,
) -> DataLoader:
    """The loader over a table's rows (`path`; `label_idx`, `height` and `width` when known) for one fold.

    Its targets are the run's task's (helpers.tasks.task_for(cfg), a resolved task): class indices, or
    multi-hot float rows `num_classes` wide (multilabel rows with labels need num_classes); dense float
    rows for every row when the table has a `soft_target` column (soft pseudo-labels, helpers.pseudo_rows).

    Training's loader shuffles (or with sampler="balanced" draws rows inversely to their class's
    frequency, `balanced_weights`) and augments with the fold's seed, in batches of batch_size (full batches
    only with mixup or cutmix, which pair images); the others keep the rows' order, resize only, in batches
    of twice that. With `store` on, the images the dataset's store holds at this size are read from it.
    `num_replicas` > 1 gives process `rank` its share (data-parallel training). cfg.img_size must be set.
    """
    size = cfg.img_size
    side = store_side(size, cfg.crop_pct)
    transform = (
        build_train_transform(cfg.augment, size) if train else build_eval_transform(size, cfg.crop_pct)
    )
    labels = np.zeros(len(rows), dtype=np.int64)
    if "label_idx" in rows:
        task = task_for(cfg)
        labels = task.targets(rows, num_classes)
        if SOFT_TARGET in rows:  # pseudo-labelled rows trained on their source's probabilities
            labels = with_soft_targets(task.dense_targets(labels, num_classes), rows[SOFT_TARGET].tolist())
    store = open_view(store_folder(dataset_folder(cfg), side), rows["path"].tolist()) if cfg.store else None
    seed = cfg.seed + fold
    dataset = ImageDataset(rows["path"], labels, transform, seed, side, store)
    mixing = train and (cfg.mixup > 0 or cfg.cutmix > 0)
    per_process = -(-len(dataset) // num_replicas)
    if mixing and per_process < cfg.batch_size:
        raise ConfigError(
            f"mixup/cutmix drop the last partial batch, and fold {fold} has only {per_process} "
            f"training images per process for batch_size={cfg.batch_size}: lower batch_size"
        )
    workers = (
        cfg.num_workers
        if cfg.num_workers >= 0
        else auto_workers(store is not None and store.stored == len(rows))
    )
    return make_loader(
        dataset,
        cfg.batch_size if train else cfg.batch_size * 2,
        train,
        seed,
        workers,
        pin_memory=device.type == "cuda",
        num_replicas=num_replicas,
        rank=rank,
        drop_last=mixing,
        weights=balanced_weights(rows["label_idx"]) if train and cfg.sampler == "balanced" else None,
    )
