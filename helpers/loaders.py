"""The Dataset and the loaders: images from the decode-once store or the files, reproducible augmentation.

`build_loader` is the one place a loader is assembled from a config (dataset, store, transform, seed,
workers, batch size), for training, validation, 02's preview and prediction alike. Every image comes as
`read_image(path, side)` gives it (the shorter side fitted to the store's side): from the dataset's store
(helpers.store) when it holds the file as it is now, else decoded from the file, with the same pixels.
Augmentation randomness is seeded per sample from (seed, epoch, index), handed over by the sampler, so the
images of an epoch are the same whatever the worker count and whether the run was resumed.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Iterator, Sequence

import cv2
import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from helpers.augment import build_eval_transform, build_train_transform
from helpers.config import Config
from helpers.dataset import dataset_folder
from helpers.images import read_image
from helpers.precision import pick_device
from helpers.store import StoreView, open_view, store_folder, store_side

SEED_STRIDE = 1_000_003


def sample_seed(base_seed: int, key: int) -> int:
    return (base_seed * SEED_STRIDE + key) % 2**32


class EpochSampler(Sampler[int]):
    """Yields keys `epoch * n + i`: the index i plus the epoch, so each sample's augmentation seed is known.

    With `num_replicas > 1` each process takes every num_replicas-th index of the same permutation, padded
    to equal length (the padded repeats are flagged by `is_padding`).
    """

    def __init__(self, n: int, shuffle: bool, seed: int, num_replicas: int = 1, rank: int = 0):
        self.n, self.shuffle, self.seed = n, shuffle, seed
        self.num_replicas, self.rank = num_replicas, rank
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def order(self) -> list[int]:
        if not self.shuffle:
            return list(range(self.n))
        g = torch.Generator().manual_seed(sample_seed(self.seed, self.epoch))
        return torch.randperm(self.n, generator=g).tolist()

    def __iter__(self) -> Iterator[int]:
        order = self.order()
        per_rank = -(-self.n // self.num_replicas)
        padded = (order * self.num_replicas)[: per_rank * self.num_replicas]
        return iter(self.epoch * self.n + i for i in padded[self.rank :: self.num_replicas])

    def __len__(self) -> int:
        return -(-self.n // self.num_replicas)


class ImageDataset(Dataset):
    """Images by path, fitted to `side` (0: full size), from the store when it holds them, through an
    albumentations transform; yields (tensor, label, index)."""

    def __init__(
        self,
        paths: Sequence[str],
        labels: Sequence[int],
        transform: Callable,
        seed: int = 0,
        side: int = 0,
        store: StoreView | None = None,
    ):
        self.paths, self.labels = list(paths), np.asarray(labels, dtype=np.int64)
        self.transform, self.seed, self.side, self.store = transform, seed, side, store

    def __len__(self) -> int:
        return len(self.paths)

    def image(self, index: int) -> np.ndarray:
        stored = self.store.image(index) if self.store is not None else None
        return stored if stored is not None else read_image(self.paths[index], self.side)

    def __getitem__(self, key: int) -> tuple[torch.Tensor, int, int]:
        index = key % len(self.paths)
        if hasattr(self.transform, "set_random_state"):
            # one generator pair shared by the pipeline (set_random_seed would seed every transform alike,
            # so their random draws would move together)
            seed = sample_seed(self.seed, key)
            self.transform.set_random_state(np.random.default_rng(seed), random.Random(seed))
        tensor = self.transform(image=self.image(index))["image"]
        return tensor, int(self.labels[index]), index


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
) -> DataLoader:
    """A loader over the dataset; training shuffles per epoch. `drop_last` drops a last partial batch."""
    if num_workers > 0:
        # one OpenCV thread per process: workers each running a full pool thrash the cores. Set here, before
        # the workers fork; setting it inside a worker hangs once the parent has used OpenCV's pool.
        cv2.setNumThreads(1)
    sampler = EpochSampler(len(dataset), shuffle=train, seed=seed, num_replicas=num_replicas, rank=rank)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
        drop_last=drop_last,
    )


def build_loader(
    cfg: Config,
    rows: pd.DataFrame,
    train: bool,
    fold: int,
    device: torch.device,
    num_replicas: int = 1,
    rank: int = 0,
) -> DataLoader:
    """The loader over a table's rows (`path`; `label_idx`, `height` and `width` when known) for one fold.

    Training's loader shuffles and augments with the fold's seed, in batches of batch_size (full batches
    only with mixup or cutmix, which pair images); the others keep the rows' order, resize only, in batches
    of twice that. With `store` on, the images the dataset's store holds at this size are read from it.
    `num_replicas` > 1 gives process `rank` its share (data-parallel training). cfg.img_size must be set.
    """
    size = cfg.img_size
    side = store_side(size, cfg.crop_pct)
    transform = (
        build_train_transform(cfg.augment, size) if train else build_eval_transform(size, cfg.crop_pct)
    )
    labels = rows["label_idx"] if "label_idx" in rows else np.zeros(len(rows), dtype=np.int64)
    store = open_view(store_folder(dataset_folder(cfg), side), rows["path"].tolist()) if cfg.store else None
    seed = cfg.seed + fold
    dataset = ImageDataset(rows["path"], labels, transform, seed, side, store)
    mixing = train and (cfg.mixup > 0 or cfg.cutmix > 0)
    per_process = -(-len(dataset) // num_replicas)
    if mixing and per_process < cfg.batch_size:
        raise ValueError(
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
    )
