"""`make bench`: every benchmark of the kit, one after the other, into benchmarks/RESULTS.md.

    python benchmarks/run.py [--quick] [--out FILE]
                             [--only datapath,accuracy,transfer,inference,scale,labels,demo,imbalance,multilabel,photos,
                                     stop,blend]

Parts (each in its own process, in turn, so they never compete for the cores):
  datapath   training images/s through the real loader / on the same batches in memory (bench_datapath.py)
  accuracy   the default recipe's validation accuracy on fold 0 of the digits (bench_datapath.py --accuracy)
  transfer   fine-tuning real ImageNet weights (efficientnet-lite0) on crops of photographs: scratch / scratch
             recipe / transfer recipe / each part alone (bench_transfer.py)
  inference  the fold ensemble against its forward passes and the original way (bench_inference.py)
  scale      01's image check at 10k/30k/100k images, the loader's memory over an epoch (bench_scale.py)
  labels     label errors found among deliberately flipped labels of the digits (bench_label_issues.py)
  demo       the whole notebook series' wall time and where it goes (bench_demo.py; skipped with --quick)
  imbalance  macro-F1 and the rare classes' recall on digits with half the classes at a tenth, with each
             class-imbalance option and without (bench_imbalance.py)
  multilabel the multi-label demo series: out-of-fold and test mAP, F1, training time (bench_multilabel.py;
             skipped with --quick)
  photos     photo-size data (1280x960 JPEGs at 224 px): loader per core from the files, the image store and
             timm's path; 01's check + store build; memory with workers; CPU training ratio; compile
             (bench_photos.py)
  stop       a stop signal's cost on the digits and the 224 px photos: the step it waits for, the mid-epoch
             checkpoint's write time and size, the resume (bench_stop.py)
  blend      blends of 5 small runs on the digits and the multi-label demo: the best single run, mean, greedy
             and stack, out-of-fold, nested and test (bench_blend.py; one seed with --quick)
The report gives the machine, the date and the load average, and only medians over repeats and ratios
measured within one run: a shared 2-core machine's absolute times move by 2x from one minute to the next.
--quick (a few minutes): fewer and shorter repeats, small scale sizes, one training epoch, one transfer draw,
one imbalance seed at 2 epochs, no demo, no multi-label demo.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import bench_blend  # noqa: E402
import bench_datapath  # noqa: E402
import bench_demo  # noqa: E402
import bench_imbalance  # noqa: E402
import bench_label_issues  # noqa: E402
import bench_multilabel  # noqa: E402
import bench_photos  # noqa: E402
import bench_scale  # noqa: E402
import bench_stop  # noqa: E402
import bench_transfer  # noqa: E402
from machine import machine  # noqa: E402

PARTS = [
    "datapath",
    "accuracy",
    "transfer",
    "inference",
    "scale",
    "labels",
    "demo",
    "imbalance",
    "multilabel",
    "photos",
    "stop",
    "blend",
]
RESULTS = HERE / "RESULTS.md"
PART_TIMEOUT_S = 1500


def _python(args: list[str], env: dict[str, str] | None = None, timeout: int = PART_TIMEOUT_S) -> None:
    subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        env={**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "TQDM_DISABLE": "1", **(env or {})},
        check=True,
        timeout=timeout,
    )


def _json_part(script: str, extra: list[str], quick: bool, work: Path, timeout: int = PART_TIMEOUT_S) -> dict:
    out = work / f"{Path(script).stem}{'_'.join(extra)}.json"
    _python(
        [str(HERE / script), *extra, *(["--quick"] if quick else []), "--json", str(out)], timeout=timeout
    )
    return json.loads(out.read_text())


def part_datapath(quick: bool, work: Path) -> list[str]:
    return bench_datapath.datapath_markdown(_json_part("bench_datapath.py", [], quick, work))


def part_accuracy(quick: bool, work: Path) -> list[str]:
    return bench_datapath.accuracy_markdown(_json_part("bench_datapath.py", ["--accuracy"], quick, work))


def part_transfer(quick: bool, work: Path) -> list[str]:
    return bench_transfer.markdown(_json_part("bench_transfer.py", [], quick, work))


def part_inference(quick: bool, work: Path) -> list[str]:
    out = work / "inference.md"
    _python([str(HERE / "bench_inference.py"), *(["--quick"] if quick else []), "--results", str(out)])
    lines = [
        line for line in out.read_text().splitlines() if not line.startswith("# ")
    ]  # the section's title
    while lines and not lines[0].strip():
        lines.pop(0)
    return lines


def part_scale(quick: bool, work: Path) -> list[str]:
    return bench_scale.markdown(_json_part("bench_scale.py", [], quick, work))


def part_labels(quick: bool, work: Path) -> list[str]:
    return bench_label_issues.markdown(_json_part("bench_label_issues.py", [], quick, work))


def part_photos(quick: bool, work: Path) -> list[str]:
    # building two photo sets, compiling a model on the CPU: ~25 min on a loaded 2-core machine
    return bench_photos.markdown(_json_part("bench_photos.py", [], quick, work, timeout=3600))


def part_stop(quick: bool, work: Path) -> list[str]:
    return bench_stop.markdown(_json_part("bench_stop.py", [], quick, work))


def part_blend(quick: bool, work: Path) -> list[str]:
    return bench_blend.markdown(_json_part("bench_blend.py", [], quick, work))


def part_demo(quick: bool, work: Path) -> list[str]:
    if quick:
        return ["Skipped in --quick mode (the full series takes minutes); run `make bench` for it."]
    out = work / "demo.json"
    _python([str(HERE / "bench_demo.py"), "--json", str(out)])
    return bench_demo.markdown(json.loads(out.read_text()))


def part_imbalance(quick: bool, work: Path) -> list[str]:
    return bench_imbalance.markdown(_json_part("bench_imbalance.py", [], quick, work))


def part_multilabel(quick: bool, work: Path) -> list[str]:
    if quick:
        return ["Skipped in --quick mode (the full series takes minutes); run `make bench` for it."]
    out = work / "multilabel.json"
    _python([str(HERE / "bench_multilabel.py"), "--json", str(out)])
    return bench_multilabel.markdown(json.loads(out.read_text()))


TITLES = {
    "datapath": "1. Data-path efficiency (training)",
    "accuracy": "2. Accuracy at budget",
    "transfer": "3. Fine-tuning pretrained weights",
    "inference": "4. Inference",
    "scale": "5. Scale: validation and loader memory",
    "labels": "6. Label errors: flipped labels found by helpers.label_issues",
    "demo": "7. The demo series",
    "imbalance": "8. Class imbalance: the rare classes with each option",
    "multilabel": "9. The multi-label demo",
    "photos": "10. Photo-size data: the decode-once image store",
    "stop": "11. Stopping on a signal: the step it waits for, the checkpoint, the resume",
    "blend": "12. Blending runs: best single run, mean, greedy and stack",
}


def _gpu_row(path: Path) -> str:
    g = json.loads(path.read_text())
    compiled = (
        f"{g['in_memory_compiled']:.0f} ({g['compile_speedup']:.2f}x, {g['compile_seconds']:.0f} s)"
        if "in_memory_compiled" in g
        else "-"
    )
    return (
        f"| {path.name} | {g['date']} | {g['device']}, {g['cpu_cores']} CPU cores, torch {g['torch']} | "
        f"{g['backbone']}, {g['img_size']}, {g['batch_size']} | {g['precision']}, "
        f"channels_last={g['channels_last']} | {g['loader_workers']} | {g['in_memory_eager']:.0f} | {compiled} | "
        f"{g['loader_eager']:.0f} | **{g['data_path_ratio']:.2f}** |"
    )


def gpu_section() -> list[str]:
    """The GPU figures on file (`gpu_bench.py` runs on a CUDA machine, not in `make bench`), quoted as they are."""
    files = sorted((HERE / "results").glob("gpu_resnet50*.json"))
    head = [
        "| file | date | device | backbone, px, batch | precision | loader workers | in-memory eager img/s | "
        "compiled img/s (speed-up, compile s) | loader img/s | loader / in-memory |",
        "|---|---|---|---|---|---:|---:|---|---:|---:|",
    ]
    before = [f for f in files if "uint8" not in f.name]
    after = [f for f in files if "uint8" in f.name]
    lines = [
        "## GPU (NVIDIA H200)",
        "",
        "Quoted from `benchmarks/results/gpu_resnet50*.json` (`python benchmarks/gpu_bench.py`, see "
        "`benchmarks/results/gpu.md`); not re-measured by `make bench`, which runs on the CPU machine. "
        "Medians of 3 timed passes after a warm-up, through the kit's `train_one_epoch`; loader = the demo train "
        "split repeated 8x from the RAM cache.",
        "",
        "**Before the uint8 change** (loader output float32, normalised in the workers): these figures predate "
        "the uint8 loader output with normalisation on the device (InputPrep).",
        "",
        *head,
        *(_gpu_row(f) for f in before),
        "",
    ]
    if after:
        lines += ["**After the uint8 change** (uint8 batches, InputPrep on the GPU):", "", *head]
        lines += [_gpu_row(f) for f in after] + [""]
    lines += [
        "<!-- GPU-NEW-MEASUREMENT: add a new GPU measurement here (a gpu_resnet50_*.json beside the others is "
        "quoted automatically: name it with 'uint8' when it uses the uint8 loader) -->",
        "_Place for a new GPU measurement (same command, same card, the date and the card named)_: "
        + ("none yet beyond the files above." if after else "**after the uint8 change: not measured yet**."),
        "",
        *_gpu_photos_lines(),
    ]
    return lines


def _gpu_photos_lines() -> list[str]:
    """The photo-size GPU figures (`gpu_bench.py` since the image store), or that they are still to measure."""
    files = sorted((HERE / "results").glob("gpu_photos_*.json"))
    runs = [json.loads(f.read_text()) for f in files if f.name != "gpu_photos_torchrun.json"]
    lines = [
        "**Photo-size data, from the image store** (`python benchmarks/gpu_bench.py`: 1280x960 JPEGs at 224 px, "
        "bf16, channels_last; the kit's loader reading the store against in-memory batches (goal >= 0.95) and "
        "against timm's own loader on the same files (goal: ahead), eager and with `compile`):",
        "",
    ]
    if not runs:
        return lines + [
            "**Not measured yet**: no GPU has been lent since `gpu_bench.py` was written; its dry run on the CPU "
            "(`--device cpu`: every step on 60 photos in fp32, tests/test_gpu_bench.py) passes. On a GPU it writes "
            "`benchmarks/results/gpu_photos_<backbone>.json` and `gpu_photos_torchrun.json` (one CUDA epoch "
            "through `torchrun --nproc_per_node 1`), quoted here."
        ]
    lines += [
        "| date | device | backbone | in memory img/s eager / compiled | store loader img/s eager / compiled | "
        "loader / in-memory eager / compiled | timm loader img/s eager / compiled | kit / timm eager / compiled |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for g in runs:

        def pair(key: str, f: str = ".0f", g: dict = g) -> str:
            return f"{g[key + '_eager']:{f}} / {g[key + '_compiled']:{f}}"

        lines.append(
            f"| {g['date']} | {g['device']}, {g['cpu_cores']} cores, {g['loader_workers']} workers | "
            f"{g['backbone']} | {pair('in_memory')} | {pair('loader')} | **{pair('loader_ratio', '.2f')}** | "
            f"{pair('timm_loader')} | {pair('vs_timm', '.2f')} |"
        )
    launched = HERE / "results" / "gpu_photos_torchrun.json"
    if launched.exists():
        t = json.loads(launched.read_text())
        lines.append(
            f"\nCUDA torchrun: exit code {t['returncode']} in {t['seconds']:.0f} s ({t['date']}): {t['launch']}."
        )
    return lines


FINDINGS = [
    "## Findings and decisions",
    "",
    "Established while building this benchmark on the 2-core machine (2026-11-28); the tables above are the "
    "current run's evidence, the figures quoted here those of that day.",
    "",
    "- **Loader workers on 2 cores: none.** CPU training already runs torch's intra-op threads on both cores, "
    "so a loader process does not add a core: it takes time slices from the model. Augmenting in the main "
    "process matched or beat 1 and 2 workers in every measurement: from the RAM cache (mobilenetv3_small_100 "
    "at 32 px, three runs: 0.82-0.84 vs 0.75-0.83 with 1 worker, 0.78-0.85 with 2, and never ahead of 0 "
    "in the same run), decoding 32 px JPEGs (0.78-0.88 vs 0.72-0.73) and decoding "
    "512 px JPEGs resized to 64 px (1.4 ms per image: mobilenetv3_small_100 0.62 vs 0.56 and 0.61 with 2; "
    "resnet18 0.84 vs 0.81 and 0.84). Non-persistent workers (0.56) and a thread split giving the worker a "
    "core of its own (main process at 1 torch thread: 0.63-0.71) are clearly worse. **Changed:** "
    "`auto_workers` now gives 0 on a machine with <= 2 cores and no GPU for uncached images too (it gave cores - 1 = 1); "
    "cached images already got 0 up to 4 cores. With a GPU the main process waits on the device and workers "
    "can overlap with it, so that case keeps the old rule (not measured here).",
    "- **RAM cache and channels_last** stay on (Config defaults, unchanged; the RAM cache has since become the on-disk image store, section 8, on by default). Decoding a 32 px JPEG costs "
    "~20-30 us, so on the digits cached and uncached measure within noise of each other (0.84 vs 0.78 in "
    "one run, 0.82 vs 0.88 in another); with real photos the decode dominates (1.4 ms per 512 px JPEG "
    "with its resize), which the cache removes. channels_last makes the model itself faster on this CPU "
    "(in memory, channels_last / contiguous: resnet18 1.04x at 32 px and 1.10x at 64 px, mobilenetv3_small_100 1.15x "
    "and 1.07x).",
    "- **Why mobilenetv3_small_100 sits around 0.9.** Per image at 32 px the albumentations pipeline costs "
    "about 160 us and the per-sample reseed about 20 us: ~0.18 ms, against ~1.7 ms of training per image for "
    "mobilenetv3_small_100 at 32 px (~580 img/s in memory on a quiet machine), with both cores shared "
    "whatever the worker count: 0.87-0.96 over two runs with the malloc setting below (0.82-0.84 "
    "without). resnet18 (~5 ms per image at 32 px, ~8 ms at 64 px) clears 0.9 in every run. A clear margin "
    "for the small model needs a cheaper augmentation per image: batch-wise augmentation on tensors (one "
    "affine grid for the whole batch), or fewer Python calls per image.",
    "- **One generator pair per sample.** `ImageDataset` reseeds each sample with "
    "`transform.set_random_state(np.random.default_rng(s), random.Random(s))`: 21 us instead of 97 us for "
    "albumentations' `set_random_seed` (+0.02 to +0.09 on the ratio over three runs), and it removes a real "
    "defect of `set_random_seed`: every transform got its own generators, seeded alike, so they drew the "
    "same numbers; with the light preset RandomBrightnessContrast (p=0.5) was then never applied without "
    "Affine (p=0.7) (2000 seeds: 0 of the expected ~300 'brightness only' samples; 300 with the shared "
    "generator). Still deterministic per (seed, epoch, index).",
    "- **OpenCV's thread count is set before loader workers fork.** `cv2.setNumThreads(1)` called inside a "
    "forked worker hangs it forever when the main process has used OpenCV's thread pool before the fork "
    "(a cv2 resize or warp, e.g. augmenting with 0 workers or an augmentation preview, then a loader with "
    "workers): the child's `pthread_cond_destroy` waits for the parent's pool threads, which do not exist "
    "in the child (gdb backtrace in cv2.abi3.so; reproduced every time with 1 and 2 workers). `make_loader` "
    "sets it in the main process when it starts workers; at these sizes the per-image cost is the same with "
    "1 or 2 OpenCV threads (160 vs 163 us).",
    "- **01's check at scale: time linear, memory small.** Handing `ThreadPoolExecutor.map` every path at "
    "once created a future per image up front: ~1.75 KB per image (~175 MB at 100k, ~1.7 GB at a "
    "million). `check_images` now maps slices of 1,024 paths (tests/test_data.py checks the peak memory "
    "per image); what remains is the table itself, a few hundred bytes per row.",
    "- **glibc malloc keeps freed memory** (`helpers/allocator.py`, applied by the kit's entry points: notebooks, training CLI, benchmarks). "
    "By default glibc returns big freed blocks to the kernel and faults them in again on the next batch: "
    "two epochs of the default recipe took 1.0-1.1 million page faults and 6.0-6.5 s per epoch, against "
    "76,000 and 5.1-5.2 s with the setting (two runs each); a five-model ensemble pass over the test split "
    "took 150,000-200,000 faults (~0.3 s of 3.3 s) or none, depending on the heap's history, and none "
    "with it. The process keeps its peak memory until it exits. In the inference benchmark, model building "
    "also fell from 0.27-0.29 s to 0.15 s for five folds (memory-mapped checkpoints, one cached meta-device "
    "architecture copied per fold, channels_last weights assigned directly).",
    "- **The loader's memory over an epoch is flat**: main and worker RSS and the PSS total move by a few MB "
    "over 20k samples, from disk or from the RAM cache.",
    "- **The demo**: within its 3 minutes; about 40% of it is fixed cost (each of the 5 kernels starts and "
    "imports torch, timm and albumentations: ~6 s for the import cell, ~2-3 s outside cells). If it ever "
    "needs to be faster: lighter imports in 01/02 (no torch or timm for data checks and previews), and "
    "fewer epochs or a smaller slice for the demo's training, which is the biggest single cell.",
    "- **Pretrained runs keep the scratch recipe** (section 3, 2026-12-06). Fine-tuning efficientnet_lite0's real ImageNet weights (tf_efficientnet_lite0 at 96 px) on 80 crops of 8 photographs, medians of 3 draws: the weights gave 0.68 against 0.34 from scratch; the transfer recipe (1 frozen epoch, layer decay 0.75, lr 1e-3) 0.61, losing in every draw, mostly through its lower lr (0.60 alone); layer decay alone 0.66; one frozen epoch alone 0.69, within the spread between draws. So `freeze_epochs` 0, `layer_decay` 1.0 and `lr` 3e-3 stay the defaults for every run, pretrained (now the default) or not. The stand-in this replaces (resnet18 pretrained on 576 digits) had shown no gain from pretraining at all.",
    "- **OMP_WAIT_POLICY=PASSIVE** (torch's idle OpenMP threads sleep instead of spinning) lifted the "
    "1-worker ratio to ~0.93, but only by slowing the model (in-memory mobilenetv3_small_100 at 32 px: "
    "~230 img/s against ~580 spinning on a quiet machine): not a win. Under heavy outside load, though, the "
    "spinning default collapsed to 30-70 img/s where PASSIVE held ~230.",
    "- **Class-imbalance options stay off by default** (section 8, 2026-12-03). On the digits with 5-9 at"
    " a tenth of their images (medians of 5 seeds), class weights helped at both budgets: macro-F1 0.953 "
    "against 0.893 without any option after 6 epochs, 0.983 against 0.966 after 15 (the rare digits' "
    "recall 0.950 and 0.978 against 0.796 and 0.933). The balanced sampler scored the best macro-F1 at 6 "
    "epochs (0.966, the common digits' recall untouched) but added little at 15 (0.969); focal loss "
    "helped at 6 (0.935) and not at 15 (0.961). Sampler and class weights together over-corrected at 6 "
    "epochs (common recall 0.861, macro-F1 0.918), not at 15 (0.980). The options are for imbalanced "
    "data, which 04 points out (rare-class recall in its summary, the per-class table by recall); on "
    "balanced data class weights are all about 1.",
    "- **Blends default to `stack`** (section 12, 2026-12-06). On 6 run sets (digits and the multi-label "
    "demo, 3 seeds, 5 runs of differing backbone and size each) the stacked blend had the best test score in "
    "all six (medians: digits accuracy 0.989 against 0.975 for mean and greedy and 0.969 for the best single "
    "run; multi-label mAP 0.779 against 0.686, 0.727 and 0.696). Greedy selection on log loss alone, tried "
    "first, kept one well-calibrated member and dropped four better ones; it now optimises accuracy with log "
    "loss breaking ties. The nested estimates did not separate the methods on the digits (within 5 of 1437 "
    "images). They sit below the test scores because 05 averages each run's fold models on the test images "
    "while each out-of-fold row comes from one model: one multi-label run's fold models scored 0.525, 0.639 "
    "and 0.598 test mAP alone and 0.676 averaged. 07 and `python -m helpers.blend` print every method's "
    "out-of-fold, nested and test figures side by side, so `mean` or `greedy` is one parameter away where "
    "the stack's nested figure trails.",
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="about a minute: fewer repeats, no demo")
    parser.add_argument("--only", default="", help=f"comma-separated subset of {PARTS}")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    chosen = [p.strip() for p in args.only.split(",") if p.strip()] or PARTS
    unknown = sorted(set(chosen) - set(PARTS))
    if unknown:
        parser.error(f"unknown part(s) {unknown}; choose from {PARTS}")

    started = time.perf_counter()
    header = machine()
    load = [os.getloadavg()]
    sections: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bench_run_") as work:
        for name in chosen:
            print(f"== {name}", flush=True)
            t = time.perf_counter()
            try:
                body = globals()[f"part_{name}"](args.quick, Path(work))
            except Exception:  # one failing part must not lose the others' figures
                body = ["**Failed:**", "", "```", traceback.format_exc()[-3000:], "```"]
            sections += [f"## {TITLES[name]}", "", *body, "", f"_{time.perf_counter() - t:.0f} s_", ""]
            print("\n".join(body), flush=True)
    load.append(os.getloadavg())
    mode = "`make bench BENCH_ARGS=--quick` (quick mode)" if args.quick else "`make bench`"
    report = [
        "# Benchmarks",
        "",
        f"Written by {mode} (`benchmarks/run.py`) in {time.perf_counter() - started:.0f} s. "
        "Every figure is a median over repeats, and every efficiency a ratio of two rates measured "
        "alternately in the same process, never a lone absolute time. The machine is shared: the load "
        "average is given, and absolute images/s vary run to run.",
        "",
        *header,
        f"- load average (1, 5, 15 min): {', '.join(f'{x:.1f}' for x in load[0])} at the start, "
        f"{', '.join(f'{x:.1f}' for x in load[-1])} at the end",
        "",
        *sections,
        *gpu_section(),
        "",
        *FINDINGS,
        "",
    ]
    args.out.write_text("\n".join(report))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
