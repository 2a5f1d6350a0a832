"""Data-parallel training from a shell: `torchrun --nproc_per_node N -m helpers.distributed --run-name NAME`.

Reads outputs/runs/NAME/config.json (notebook 03 writes it), prepares the dataset and trains the configured
folds with the kit's one training loop (`helpers.train.train_folds`), one process per GPU under
DistributedDataParallel: nccl on CUDA (process k on cuda:LOCAL_RANK), gloo on CPU. Without torchrun's
environment it trains in this one process, like the notebook. See docs/scaling.md.

A launch that does not match what was asked for is refused before any training, with exit status 2: a
world size other than --expect-world-size, more processes on a node than it has visible GPUs, launch
variables set by hand rather than by torchrun, or nodes that do not share the outputs folder.
"""

from __future__ import annotations

import argparse
import os
import sys
import uuid
from dataclasses import dataclass

import pandas as pd
import torch
import torch.distributed as dist

from helpers.allocator import retain_freed_memory
from helpers.atomic import atomic_write_text
from helpers.config import Config
from helpers.dataset import DataInfo, prepare_dataset
from helpers.errors import KitError, exits_on_kit_error
from helpers.precision import pick_device, resolve_precision
from helpers.run_folder import RunFolder
from helpers.settings import resolve_settings
from helpers.train import train_folds

LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")
REFUSED = 2  # exit status of a refused launch


class LaunchError(KitError, RuntimeError):
    """The processes were not started the way this run needs; the message says how to launch it."""


@dataclass(frozen=True)
class Launch:
    """Where this process stands in the run."""

    rank: int
    local_rank: int  # rank among the processes of this node: picks the GPU
    world_size: int
    device: torch.device


def join_launch(expect_world_size: int | None = None) -> Launch:
    """Join the process group torchrun describes in the environment, or stand alone without it.

    Raises LaunchError for a launch that would train something other than what was asked for.
    """
    found = {name: os.environ.get(name) for name in LAUNCH_VARIABLES}
    if not any(found.values()):
        if expect_world_size not in (None, 1):
            raise LaunchError(
                f"--expect-world-size {expect_world_size}, but this is one process: start it with "
                f"torchrun --nproc_per_node {expect_world_size} -m helpers.distributed ..."
            )
        return Launch(0, 0, 1, pick_device())
    missing = [name for name, value in found.items() if value is None]
    if missing or "TORCHELASTIC_RUN_ID" not in os.environ:
        set_by_hand = ", ".join(f"{k}={v}" for k, v in found.items() if v is not None)
        raise LaunchError(
            f"{set_by_hand} is set, but this process was not started by torchrun, so no other process "
            "will join it. Launch with torchrun --nproc_per_node N -m helpers.distributed ..., or unset "
            "these variables to train in this one process."
        )
    rank, local_rank, world_size, local_world_size = (
        int(found[name]) for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE")
    )
    if expect_world_size is not None and world_size != expect_world_size:
        raise LaunchError(
            f"torchrun started {world_size} process(es) (--nnodes x --nproc_per_node), but "
            f"--expect-world-size is {expect_world_size}: fix the torchrun arguments."
        )
    if torch.cuda.is_available():
        gpus = torch.cuda.device_count()
        if local_world_size > gpus:
            raise LaunchError(
                f"--nproc_per_node {local_world_size}, but this node has {gpus} visible GPU(s): two "
                f"processes would share a GPU. Use --nproc_per_node {gpus} or fewer."
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:
        device = torch.device("cpu")
        dist.init_process_group("gloo")
    if dist.get_world_size() != world_size:
        raise LaunchError(
            f"the process group has {dist.get_world_size()} processes, but WORLD_SIZE={world_size}"
        )
    return Launch(rank, local_rank, world_size, device)


def stop() -> None:
    """Leave the process group, if this process joined one."""
    if dist.is_initialized():
        dist.destroy_process_group()


def check_shared_outputs(run: RunFolder, launch: Launch) -> None:
    """Refuse nodes that do not see rank 0's run folder: the others read its checkpoints and metrics.csv.

    Rank 0 writes a fresh token into the run folder and every process reads it back; a collective call.
    """
    token = [uuid.uuid4().hex]
    dist.broadcast_object_list(token)
    probe = run.path / ".shared_check"
    if launch.rank == 0:
        atomic_write_text(probe, token[0])
    dist.barrier()
    sees = probe.is_file() and probe.read_text() == token[0]
    seen: list[bool | None] = [None] * launch.world_size
    dist.all_gather_object(seen, sees)
    if launch.rank == 0:
        probe.unlink()
    if not all(seen):
        blind = [rank for rank, ok in enumerate(seen) if not ok]
        raise LaunchError(
            f"rank(s) {blind} do not see {run.path} as rank 0 writes it: every node needs the same outputs "
            "folder (set KIT_OUTPUTS to a folder on a shared file system)."
        )


def prepare(cfg: Config, run: RunFolder, launch: Launch) -> DataInfo:
    """The prepared dataset: each node's local rank 0 checks and folds it first and writes the dataset
    folder; the node's other processes then read what it wrote rather than writing the same files."""
    if launch.local_rank != 0:
        dist.barrier()
    info = prepare_dataset(cfg, run)
    if launch.local_rank == 0 and launch.world_size > 1:
        dist.barrier()
    return info


def train_run(run: str, launch: Launch) -> pd.DataFrame:
    """Train the run's configured folds in this process (one of `launch.world_size`); returns metrics.csv."""
    folder = RunFolder.named(run)
    cfg = folder.read_config()
    if launch.world_size > 1:
        check_shared_outputs(folder, launch)
    info = prepare(cfg, folder, launch)
    resolved = resolve_settings(cfg, info)[0]
    if resolved != cfg:  # notebook 03 saves its choices; a hand-written config may leave them to us
        cfg = resolved
        if launch.rank == 0:
            folder.write_config(cfg)
    if launch.rank == 0:
        backend = dist.get_backend() if dist.is_initialized() else "no process group"
        print(
            f"helpers.distributed: run {run!r} in {launch.world_size} process(es), {backend} on "
            f"{launch.device.type}, {resolve_precision(cfg.precision, launch.device).dtype}",
            flush=True,
        )
    return train_folds(cfg, info, folder, launch.device)


@exits_on_kit_error("python -m helpers.distributed")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m helpers.distributed",
        description="Train a run's configured folds, data-parallel when started by torchrun.",
    )
    # not `--run`: torchrun would take it for an abbreviation of its own --run-path and stop
    parser.add_argument("--run-name", required=True, help="run folder under outputs/runs with a config.json")
    parser.add_argument(
        "--expect-world-size",
        type=int,
        help="refuse to train unless torchrun started this many processes in all",
    )
    args = parser.parse_args(argv)
    retain_freed_memory()
    try:
        train_run(args.run_name, join_launch(args.expect_world_size))
    except LaunchError as error:
        print(f"helpers.distributed: launch refused: {error}", file=sys.stderr)
        return REFUSED
    finally:
        stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
