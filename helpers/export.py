"""ONNX export of a run's fold models, each checked against torch on real test images.

    python -m helpers.export --run-name RUN [--checkpoint best_score] [--images 64] [--atol 1e-4]

Each fold's checkpoint becomes outputs/runs/<run>/onnx/fold<k>_<kind>.onnx, with the preprocessing inside
the graph: it takes what an image reader gives, uint8 RGB pixels in NCHW order at the run's size (any batch
size), and returns probabilities (softmax over the classes for a multiclass run, a sigmoid per class for a
multilabel one: the description says which), so no mean or std needs re-spelling elsewhere. Beside it,
fold<k>_<kind>.json says all of that (input name, shape, dtype, channel order, resize, mean, std, classes)
and records the parity check: onnxruntime's probabilities on real test images against torch's, within an
absolute tolerance (PARITY_ATOL by default), else a ParityError and no file left behind. The exporter is
torch's default (dynamo, through onnxscript), which needs no network.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from helpers.allocator import retain_freed_memory
from helpers.atomic import atomic_write
from helpers.checkpoints import load_model
from helpers.config import Config
from helpers.dataset import data_dir_of
from helpers.errors import KitError, exits_on_kit_error
from helpers.holdout import checked_test_images
from helpers.inference import PREDICTION_FOLD, trained_checkpoints
from helpers.loaders import build_loader
from helpers.model import data_config_for
from helpers.run_folder import CHECKPOINT_KINDS, RunFolder
from helpers.tables import detect_layout, list_test_images
from helpers.tasks import Task, task_for

PARITY_ATOL = 1e-4  # max |p_onnx - p_torch| over every probability: fp32 kernels differ by ~1e-7 per op
PARITY_IMAGES = 64  # test images the parity check runs
OPSET = 18
INPUT, OUTPUT = "image", "probabilities"


def _onnxruntime():
    """onnxruntime, after checking that the optional ONNX packages are installed (the `onnx` extra)."""
    try:
        import onnxruntime
        import onnxscript  # noqa: F401  (torch's ONNX exporter needs it)
    except ImportError as missing:
        raise ImportError(
            f"ONNX export needs {missing.name}: pip install -e '.[onnx]' (or pip install -r requirements.txt)"
        ) from None
    return onnxruntime


class ParityError(KitError, AssertionError):
    """onnxruntime's probabilities differ from torch's by more than the tolerance."""


class PixelsToProbabilities(nn.Module):
    """A classifier that takes uint8 RGB NCHW pixels, normalises them with the backbone's mean and std
    and returns the run's task's probabilities (`Task.probabilities`): the whole of the kit's
    prediction step after resizing."""

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float], task: Task):
        super().__init__()
        self.model = model
        self.task = task
        self.register_buffer("shift", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1) * 255.0)
        self.register_buffer("scale", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1) * 255.0)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.task.probabilities(self.model((image.float() - self.shift) / self.scale))


@dataclass
class Exported:
    """One exported fold model: its files and the largest difference the parity check found."""

    fold: int
    onnx: Path
    description: Path
    max_abs_diff: float
    images: int


def description(cfg: Config, classes: list[str], mean: Sequence[float], std: Sequence[float]) -> dict:
    """What a user of the .onnx file needs to feed it and read its output, without the kit."""
    task = task_for(cfg)
    return {
        "task": task.name,
        "backbone": cfg.backbone,
        "input": {
            "name": INPUT,
            "shape": ["batch", 3, cfg.img_size, cfg.img_size],
            "dtype": "uint8",
            "layout": "NCHW",
            "channel_order": "RGB",
            "resize": f"each image resized to {cfg.img_size}x{cfg.img_size} (height x width) with bilinear "
            "interpolation (OpenCV INTER_LINEAR), no crop and no padding",
            "normalisation": "inside the graph: (pixel - 255 * mean) / (255 * std) per channel",
            "mean": list(mean),
            "std": list(std),
        },
        "output": {"name": OUTPUT, "shape": ["batch", len(classes)], "meaning": task.output_meaning},
        "classes": classes,
        "opset": OPSET,
    }


def export_model(wrapped: nn.Module, example: torch.Tensor, path: Path) -> None:
    """The module as an ONNX file with a dynamic batch dimension, written atomically."""
    program = torch.onnx.export(
        wrapped,
        (example,),
        input_names=[INPUT],
        output_names=[OUTPUT],
        dynamic_shapes={INPUT: {0: torch.export.Dim("batch")}},
        opset_version=OPSET,
        dynamo=True,
        external_data=False,
        verbose=False,
    )
    atomic_write(path, lambda f: f.write(program.model_proto.SerializeToString()))


def parity_images(cfg: Config, n: int) -> torch.Tensor:
    """The first n test images as the kit's loader gives them (resized uint8 NCHW RGB)."""
    data_dir = data_dir_of(cfg)
    test = checked_test_images(list_test_images(cfg, data_dir, detect_layout(cfg, data_dir)).head(n), cfg)
    loader = build_loader(cfg, test, False, PREDICTION_FOLD, torch.device("cpu"))
    return torch.cat([x for x, _, _ in loader])


def check_parity(path: Path, wrapped: nn.Module, images: torch.Tensor, atol: float) -> float:
    """The largest |onnxruntime - torch| probability over the images, run in two batches of different
    sizes (the batch dimension is dynamic); a ParityError beyond atol."""
    session = _onnxruntime().InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = wrapped(images).numpy()
    split = max(1, len(images) // 3)
    got = np.concatenate(
        [
            session.run([OUTPUT], {INPUT: part.numpy()})[0]
            for part in (images[:split], images[split:])
            if len(part)
        ]
    )
    diff = float(np.abs(got - expected).max())
    if not diff <= atol:
        raise ParityError(
            f"{path}: onnxruntime's probabilities differ from torch's by up to {diff:.2e} on {len(images)} test "
            f"images, over the tolerance {atol:.0e}. The file is removed; an operator of this backbone may "
            "export differently: try another opset, or report the backbone and versions."
        )
    return diff


def export_run(
    run: RunFolder, kind: str = "best_score", images: int = PARITY_IMAGES, atol: float = PARITY_ATOL
) -> list[Exported]:
    """Export the `kind` checkpoint of every trained fold of the run, each with its description and parity
    check; a ParityError (and no .onnx file for that fold) when a model does not match torch."""
    runtime = _onnxruntime()
    cfg = run.read_config()
    mean, std = (data_config_for(cfg.backbone)[k] for k in ("mean", "std"))
    pixels = parity_images(cfg, images)
    exported = []
    checkpoints = trained_checkpoints(run, kind, cfg.n_folds)
    for fold, checkpoint in tqdm(
        checkpoints.items(), desc="export to ONNX", unit="fold", total=len(checkpoints)
    ):
        model, ckpt = load_model(checkpoint)
        wrapped = PixelsToProbabilities(model, mean, std, task_for(cfg)).eval()
        path = run.onnx_model(fold, kind)
        export_model(wrapped, pixels[: min(len(pixels), 2)].clone(), path)
        try:
            diff = check_parity(path, wrapped, pixels, atol)
        except ParityError:
            path.unlink(missing_ok=True)
            run.onnx_description(fold, kind).unlink(missing_ok=True)  # an earlier export's, now stale
            raise
        info = description(cfg, list(ckpt["classes"]), mean, std)
        info["checkpoint"] = str(checkpoint.relative_to(run.path))
        info["parity"] = {
            "images": len(pixels),
            "max_abs_diff": diff,
            "atol": atol,
            "runtime": f"onnxruntime {runtime.__version__}, CPU",
        }
        run.write_onnx_description(fold, kind, info)
        exported.append(Exported(fold, path, run.onnx_description(fold, kind), diff, len(pixels)))
    return exported


def exported_table(exported: Sequence[Exported]) -> pd.DataFrame:
    """One row per exported fold: the files and the parity check's largest difference."""
    return pd.DataFrame(
        [
            {
                "fold": e.fold,
                "onnx": str(e.onnx),
                "description": e.description.name,
                "images": e.images,
                "max_abs_diff": e.max_abs_diff,
            }
            for e in exported
        ]
    )


@exits_on_kit_error("python -m helpers.export")
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helpers.export", description=__doc__.splitlines()[0])
    parser.add_argument("--run-name", required=True, help="the run folder under outputs/runs")
    parser.add_argument(
        "--checkpoint", default="best_score", choices=CHECKPOINT_KINDS, help="which checkpoint of each fold"
    )
    parser.add_argument("--images", type=int, default=PARITY_IMAGES, help="test images the parity check runs")
    parser.add_argument(
        "--atol", type=float, default=PARITY_ATOL, help="largest allowed probability difference"
    )
    args = parser.parse_args(argv)
    retain_freed_memory()
    run = RunFolder.named(args.run_name)
    if not run.config.exists():
        parser.error(
            f"{run.config} does not exist: train run {args.run_name!r} first (03_train) or check the name"
        )
    exported = export_run(run, args.checkpoint, args.images, args.atol)
    print(exported_table(exported).to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
