"""The decode-once image store: the pixels it holds, when it is rebuilt, interruptions, disk space, loaders."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_sample_images

import helpers.health
import helpers.images
import helpers.loaders
import helpers.store
from helpers.augment import build_eval_transform, build_train_transform
from helpers.config import Config
from helpers.dataset import build_store, dataset_folder, prepare_dataset
from helpers.health import check_images
from helpers.images import REDUCED_TOLERANCE, fit_side, read_image, reduction_for
from helpers.loaders import build_loader
from helpers.settings import planned_side, resolve_settings
from helpers.store import StoreSpaceError, open_store, open_view, read_index, store_folder, store_side
from helpers.train import fold_rows

CPU = torch.device("cpu")
IMG_SIZE = 32  # small photos at a small size: the store's side is 32, the JPEGs are decoded at 1/4


def photo(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A real photograph (scikit-learn's bundled samples): a random crop, upscaled, with a little noise."""
    source = load_sample_images().images[int(rng.integers(2))]
    ch, cw = int(rng.integers(200, 400)), int(rng.integers(260, 600))
    y, x = int(rng.integers(source.shape[0] - ch + 1)), int(rng.integers(source.shape[1] - cw + 1))
    image = cv2.resize(source[y : y + ch, x : x + cw], (width, height), interpolation=cv2.INTER_CUBIC)
    return np.clip(image + rng.normal(0, 3, image.shape), 0, 255).astype(np.uint8)


def save_jpeg(path: Path, rgb: np.ndarray) -> Path:
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])
    return path


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    """A CSV dataset of 3 classes x 6 photos of 240x320 JPEG q90."""
    root = tmp_path / "photos"
    (root / "train_image").mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = []
    for label in ("cat", "dog", "fox"):
        for i in range(6):
            save_jpeg(root / "train_image" / f"{label}_{i}.jpg", photo(rng, 240, 320))
            rows.append({"id": f"{label}_{i}", "label": label})
    pd.DataFrame(rows).to_csv(root / "train.csv", index=False)
    return root


def config(root: Path, **changes) -> Config:
    """A run on single-label photos from scratch, its task as 01 resolves and saves it."""
    settings = dict(data_dir=str(root), img_size=IMG_SIZE, batch_size=4, num_workers=0, task="multiclass")
    return Config(**{**settings, "pretrained": False, **changes})


def store_of(cfg: Config) -> Path:
    return store_folder(dataset_folder(cfg), store_side(cfg.img_size, cfg.crop_pct))


def difference(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    diff = np.abs(a.astype(np.int16) - b.astype(np.int16))
    return {"mean": float(diff.mean()), "p999": float(np.percentile(diff, 99.9))}


def within_tolerance(a: np.ndarray, b: np.ndarray) -> bool:
    d = difference(a, b)
    return d["mean"] <= REDUCED_TOLERANCE["mean"] and d["p999"] <= REDUCED_TOLERANCE["p999"]


# -- reduced-size decode ---------------------------------------------------------------------------------
@pytest.mark.parametrize(("side", "reduction"), [(224, 2), (240, 2), (112, 4), (60, 8)])
def test_reduced_decode_stays_close_to_a_full_decode_then_area_resize(tmp_path, side, reduction):
    rng = np.random.default_rng(1)
    for i in range(3):
        path = save_jpeg(tmp_path / f"p{i}.jpg", photo(rng, 960, 1280))
        assert reduction_for(960, 1280, side) == reduction
        reduced, full = read_image(path, side), fit_side(read_image(path), side)
        assert reduced.shape == full.shape == (side, round(side * 4 / 3), 3)
        assert within_tolerance(reduced, full), difference(reduced, full)
        # the tolerance can fail: a one-pixel shift of the same photo is far outside it
        assert not within_tolerance(reduced[:, 1:], full[:, :-1])


def test_reduced_decode_keeps_exif_orientation_and_the_full_size(tmp_path):
    stored = photo(np.random.default_rng(2), 480, 640)  # 480 high, 640 wide, displayed rotated
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(tmp_path / "rot.jpg", exif=exif.tobytes(), quality=90)
    full = read_image(tmp_path / "rot.jpg")
    assert full.shape == (640, 480, 3)
    image, size = helpers.images.read_image_sized(tmp_path / "rot.jpg", 100)
    assert size == (640, 480) and image.shape == (133, 100, 3)
    assert within_tolerance(image, fit_side(full, 100))


def test_fit_side_never_enlarges_and_keeps_aspect():
    image = np.zeros((30, 90, 3), np.uint8)
    assert fit_side(image, 64) is image
    assert fit_side(image, 10).shape == (10, 30, 3)
    assert fit_side(np.zeros((90, 30, 3), np.uint8), 10).shape == (30, 10, 3)


# -- building and reading the store ----------------------------------------------------------------------
def test_01_builds_the_store_in_the_check_pass_and_loaders_read_it(outputs, photos, monkeypatch):
    cfg = config(photos)
    info = prepare_dataset(cfg)
    assert planned_side(cfg, list(info.table["path"])) == IMG_SIZE
    index = read_index(store_of(cfg))
    assert sorted(index["path"]) == sorted(info.table["path"])
    rows = fold_rows(info, 0)[1]

    reads, real = [], helpers.loaders.read_image
    monkeypatch.setattr(helpers.loaders, "read_image", lambda p, side=0: (reads.append(p), real(p, side))[1])
    for train in (True, False):
        stored = next(iter(build_loader(cfg, rows, train, 0, CPU)))[0]
        assert reads == [], "with the store, no file is read"
        files = next(iter(build_loader(cfg.replace(store=False), rows, train, 0, CPU)))[0]
        assert len(reads) == len(stored)
        assert torch.equal(stored, files), "store and files go through the same read_image(path, side)"
        reads.clear()


def test_store_pixels_match_a_full_decode_of_the_files_within_tolerance(outputs, photos):
    """Augmentation and evaluation from the store against the kit's transforms on fully decoded files."""
    cfg = config(photos, crop_pct=0.875)
    info = prepare_dataset(cfg)
    build_store(cfg, info)  # side 36 (32 / 0.875): what 03 builds for a resolved crop
    rows = info.table
    view = open_view(store_of(cfg), rows["path"].tolist())
    assert view is not None and view.stored == len(rows)
    side = store_side(IMG_SIZE, 0.875)
    for transform in (build_eval_transform(IMG_SIZE, 0.875), build_train_transform("none", IMG_SIZE)):
        for i, path in enumerate(rows["path"]):
            assert view.image(i).shape[0] == side
            from_store = transform(image=view.image(i))["image"].numpy()
            from_file = transform(image=fit_side(read_image(path), side))["image"].numpy()
            assert within_tolerance(from_store, from_file), (path, difference(from_store, from_file))


def test_a_second_run_at_the_same_size_decodes_nothing(outputs, photos, monkeypatch):
    cfg = config(photos)
    prepare_dataset(cfg)
    size = (store_of(cfg) / "pixels.bin").stat().st_size

    def must_not_decode(path, side=0):
        raise AssertionError(f"decoded {path} again")

    monkeypatch.setattr(helpers.health, "_check_one", must_not_decode)
    info = prepare_dataset(cfg.replace(run_name="another", backbone="resnet34"))
    build_store(resolve_settings(cfg.replace(backbone="resnet34"), info)[0], info)
    assert (store_of(cfg) / "pixels.bin").stat().st_size == size


def test_a_changed_file_is_stored_again(outputs, photos, monkeypatch):
    cfg = config(photos)
    prepare_dataset(cfg)
    changed = photos / "train_image" / "dog_3.jpg"
    new = photo(np.random.default_rng(9), 240, 320)
    save_jpeg(changed, new)
    st = changed.stat()
    os.utime(changed, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))
    decoded, real = [], helpers.health._check_one
    monkeypatch.setattr(helpers.health, "_check_one", lambda p, side=0: (decoded.append(p), real(p, side))[1])
    info = prepare_dataset(cfg)
    assert [Path(p).name for p in decoded] == ["dog_3.jpg"]
    view = open_view(store_of(cfg), info.table["path"].tolist())
    at = info.table.index[info.table["path"] == str(changed)][0]
    np.testing.assert_array_equal(view.image(at), read_image(changed, IMG_SIZE))
    assert within_tolerance(view.image(at), fit_side(new, IMG_SIZE))


def test_a_store_mostly_of_changed_files_says_how_to_reclaim_the_space(tmp_path):
    image = np.zeros((4, 4, 3), np.uint8)
    with open_store(tmp_path, 4) as store:
        for i in range(4):
            store.add(f"/photos/{i}.jpg", 1, 1, image, (4, 4))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # two of four files exported again: a third of the pixels stale
        with open_store(tmp_path, 4) as store:
            for i in range(2):
                store.add(f"/photos/{i}.jpg", 1, 2, image, (4, 4))
    match = r"files changed after they were stored.*delete .*side4"
    with pytest.warns(UserWarning, match=match), open_store(tmp_path, 4) as store:
        for i in range(3):  # three exported again: five old copies against four current
            store.add(f"/photos/{i}.jpg", 1, 3, image, (4, 4))


def test_a_stale_entry_is_never_served(outputs, photos):
    cfg = config(photos)
    info = prepare_dataset(cfg)
    path = info.table["path"].iloc[0]
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # changed after the store was built
    view = open_view(store_of(cfg), info.table["path"].tolist())
    assert view.image(0) is None and view.stored == len(info.table) - 1


def test_store_off_writes_no_store(outputs, photos):
    cfg = config(photos, store=False)
    info = prepare_dataset(cfg)
    build_store(cfg, info)
    assert not (dataset_folder(cfg) / "store").exists()


KILLED_BUILD = """
import os, signal, sys
import helpers.store
from helpers.health import check_images
from helpers.store import open_store

helpers.store.COMMIT_EVERY = 4
added = []
real_add = helpers.store.StoreWriter.add

def add_then_die(self, *args):
    real_add(self, *args)
    added.append(1)
    if len(added) == 10:  # 8 committed, 2 written but not in the index
        os.kill(os.getpid(), signal.SIGKILL)

helpers.store.StoreWriter.add = add_then_die
paths = sys.argv[3:]
with open_store(sys.argv[1], int(sys.argv[2])) as store:
    check_images(paths, None, workers=1, sink=store)
"""


def test_a_killed_build_leaves_a_valid_store_and_the_next_run_finishes_it(tmp_path, photos, monkeypatch):
    paths = sorted(str(p) for p in (photos / "train_image").glob("*.jpg"))
    folder = tmp_path / "dataset"
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(KILLED_BUILD), str(folder), str(IMG_SIZE), *paths],
        capture_output=True,
        env={**os.environ, "TQDM_DISABLE": "1"},
    )
    assert done.returncode == -9, done.stderr.decode()
    store = store_folder(folder, IMG_SIZE)
    index = read_index(store)
    assert list(index["path"]) == paths[:8], "the index names what was committed before the kill"
    assert (store / "pixels.bin").stat().st_size > (index["offset"][-1] + 3 * IMG_SIZE * IMG_SIZE)
    view = open_view(store, paths)
    for i in range(8):
        np.testing.assert_array_equal(view.image(i), read_image(paths[i], IMG_SIZE))

    decoded, real = [], helpers.health._check_one
    monkeypatch.setattr(helpers.health, "_check_one", lambda p, side=0: (decoded.append(p), real(p, side))[1])
    with open_store(folder, IMG_SIZE) as writer:
        check_images(paths, None, workers=1, sink=writer)
    assert decoded == paths[8:], "the next run decodes only what the index lacks"
    view = open_view(store, paths)
    for i, path in enumerate(paths):
        np.testing.assert_array_equal(view.image(i), read_image(path, IMG_SIZE))
    ends = read_index(store)["offset"] + 3 * read_index(store)["height"] * read_index(store)["width"]
    assert (store / "pixels.bin").stat().st_size == ends.max(), "the killed build's tail was cut off"


def test_a_large_build_rewrites_its_index_a_logarithmic_number_of_times(tmp_path, monkeypatch):
    """Each commit rewrites the whole index: at a fixed interval 20,000 images would write it 79 times."""
    writes, real = [], helpers.store.atomic_write
    monkeypatch.setattr(helpers.store, "atomic_write", lambda *a: (writes.append(1), real(*a))[1])
    image = np.zeros((2, 2, 3), np.uint8)
    with open_store(tmp_path, 2) as store:
        for i in range(20_000):
            store.add(f"/photos/{i:06d}.jpg", 1, 1, image, (2, 2))
    assert len(read_index(store_folder(tmp_path, 2))["path"]) == 20_000
    assert len(writes) <= 8 + 20 + 1  # 256 at a time to 2,048, then an eighth more each time, the last


def test_a_short_disk_stops_before_writing_with_the_bytes_and_the_place(outputs, photos, monkeypatch):
    cfg = config(photos)
    monkeypatch.setattr(helpers.store.shutil, "disk_usage", lambda path: SimpleNamespace(free=1000))
    with pytest.raises(StoreSpaceError) as caught:
        prepare_dataset(cfg)
    message = str(caught.value)
    need = 18 * IMG_SIZE * round(IMG_SIZE * 4 / 3) * 3
    assert "18 images at 32 px" in message and str(store_of(cfg)) in message and "store=False" in message
    assert need <= int(message.split("(")[1].split(" bytes")[0]) <= need * 1.1
    assert not (store_of(cfg) / "index.npz").exists()


# -- loaders ---------------------------------------------------------------------------------------------
def test_loaders_with_0_and_2_workers_give_identical_batches_from_the_store(outputs, photos):
    cfg = config(photos, augment="medium")
    info = prepare_dataset(cfg)
    rows = fold_rows(info, 0)[0]
    batches = {}
    for workers in (0, 2):
        loader = build_loader(cfg.replace(num_workers=workers), rows, True, 0, CPU)
        assert loader.dataset.store.stored == len(rows)
        loader.sampler.set_epoch(1)
        batches[workers] = [x for x, _, _ in loader]
    assert all(torch.equal(a, b) for a, b in zip(batches[0], batches[2], strict=True))


def test_a_run_resumed_from_the_store_matches_an_uninterrupted_one(outputs, photos, monkeypatch):
    from train_fixtures import tiny_config

    import helpers.train as train_mod
    from helpers.run_folder import RunFolder

    def no_file_reads(path, side=0):
        raise AssertionError(f"read {path} from its file: every image should come from the store")

    cfg = tiny_config(photos, epochs=2, augment="light", img_size=IMG_SIZE)
    info = prepare_dataset(cfg)
    monkeypatch.setattr(helpers.loaders, "read_image", no_file_reads)
    straight = cfg.replace(run_name="straight")
    train_mod.train_fold(straight, info, 0, RunFolder.of(straight).create(), CPU)

    save = train_mod.save_checkpoint

    def stop_after_epoch_0(path, *args, **kwargs):
        save(path, *args, **kwargs)
        if Path(path).name.endswith("_last.pt") and kwargs.get("epoch") == 0:
            raise KeyboardInterrupt

    resumed = cfg.replace(run_name="resumed")
    run = RunFolder.of(resumed).create()
    monkeypatch.setattr(train_mod, "save_checkpoint", stop_after_epoch_0)
    with pytest.raises(KeyboardInterrupt):
        train_mod.train_fold(resumed, info, 0, run, CPU)
    monkeypatch.setattr(train_mod, "save_checkpoint", save)
    train_mod.train_fold(resumed, info, 0, run, CPU)
    a = torch.load(RunFolder.of(straight).checkpoint(0, "last"), weights_only=True)["model"]
    b = torch.load(run.checkpoint(0, "last"), weights_only=True)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_lost_pixel_file_is_never_read_and_the_store_starts_again(outputs, photos):
    cfg = config(photos)
    info = prepare_dataset(cfg)
    paths = info.table["path"].tolist()
    pixels = store_of(cfg) / "pixels.bin"
    pixels.write_bytes(pixels.read_bytes()[:1000])  # cut short behind the index's back
    assert open_view(store_of(cfg), paths) is None
    prepare_dataset(cfg)
    view = open_view(store_of(cfg), paths)
    assert view.stored == len(paths)
    np.testing.assert_array_equal(view.image(3), read_image(paths[3], IMG_SIZE))


# -- the series: one decode per photo --------------------------------------------------------------------
def test_the_runner_saves_the_series_parameters_before_01_unless_a_fold_trained(outputs):
    from helpers.run_folder import RunFolder
    from helpers.runner import plan_run_config

    run = RunFolder.named("planned").create()
    run.write_config(Config(run_name="planned", label_col="kind"))
    plan_run_config(run, {"run_name": "planned", "img_size": 48, "crop_pct": 0.875})
    planned = run.read_config()
    assert (planned.img_size, planned.crop_pct, planned.label_col) == (48, 0.875, "kind")
    assert planned_side(planned, []) == store_side(48, 0.875)  # what 01 stores at, from this config
    run.checkpoints.mkdir(parents=True, exist_ok=True)
    (run.checkpoints / "fold0_last.pt").write_bytes(b"")
    plan_run_config(run, {"run_name": "planned", "img_size": 64})
    assert run.read_config().img_size == 48, "a trained run's config is the notebooks' to check"


@pytest.mark.slow
def test_the_series_decodes_each_photo_once_at_the_size_03_trains_at(outputs, photos):
    """01 declares no training size, yet stores at the one 03 gets from the runner (img_size / crop_pct)."""
    from helpers.runner import run_series

    params = {"data_dir": str(photos), "run_name": "once", "backbone": "test_resnet", "n_folds": 3}
    training = {
        "img_size": IMG_SIZE,
        "crop_pct": 0.875,
        "pretrained": False,
        "epochs": 1,
        "batch_size": 8,
        "num_workers": 0,
    }
    run_series({**params, **training}, ["01_data", "03_train"], log=False)
    stores = sorted(p.name for p in (dataset_folder(config(photos)) / "store").iterdir())
    assert stores == [store_folder(Path(), store_side(IMG_SIZE, 0.875)).name]


def test_test_images_are_stored_by_their_check_and_predicted_from_the_store(outputs, photos, monkeypatch):
    """05: the test images' check stores them at the run's side; prediction and a second 05 decode none."""
    from helpers.holdout import checked_test_images
    from helpers.inference import PREDICTION_FOLD

    cfg = config(photos, crop_pct=0.875)
    test_dir = photos / "test_image"
    test_dir.mkdir()
    rng = np.random.default_rng(5)
    ids = [f"t{i}" for i in range(5)]
    for name in ids:
        save_jpeg(test_dir / f"{name}.jpg", photo(rng, 300, 400))
    table = pd.DataFrame({"id": ids, "path": [str(test_dir / f"{i}.jpg") for i in ids]})
    checked = checked_test_images(table, cfg)
    assert list(checked["height"]) == [300] * 5

    def must_not_decode(path, side=0):
        raise AssertionError(f"decoded {path} again")

    monkeypatch.setattr(helpers.health, "_check_one", must_not_decode)
    monkeypatch.setattr(helpers.loaders, "read_image", must_not_decode)
    checked = checked_test_images(table, cfg)  # 05 again, for another run at the same size
    batch = next(iter(build_loader(cfg, checked, False, PREDICTION_FOLD, CPU)))[0]
    assert batch.shape == (5, 3, IMG_SIZE, IMG_SIZE)
    index = read_index(store_of(cfg))
    assert set(table["path"]) <= set(index["path"]) and index["height"].max() == store_side(IMG_SIZE, 0.875)
