"""The demo's wall time, and where it goes: `python -m helpers.runner --backbone resnet18 -p img_size 32 -p pretrained False`.

    python benchmarks/bench_demo.py [--json FILE] [--keep DIR]

Runs the whole series once into a temp KIT_OUTPUTS (goal: 3 minutes on 2 cores), then reads papermill's own
timings from the executed notebooks: each notebook's duration, each cell's, and what is left over (kernel
start and papermill's bookkeeping per notebook; the runner's own start before the first notebook). Also
timed alone: a fresh interpreter importing what every notebook imports (torch, timm, albumentations, the
helpers), the fixed cost each kernel pays before its first real work.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from cli import ROOT, report, timed_series

COMMAND = [
    "-m",
    "helpers.runner",
    "--backbone",
    "resnet18",
    "-p",
    "img_size",
    "32",
    "-p",
    "pretrained",
    "False",
]
GOAL_S = 180
IMPORTS = (
    "import torch, timm, albumentations, pandas, matplotlib.pyplot; "
    "import helpers.train, helpers.inference, helpers.reports, helpers.plots"
)


def _first_line(source: str | list[str]) -> str:
    """A cell's label: its first line of code, or 'imports' when that line is an import."""
    text = "".join(source) if isinstance(source, list) else source
    lines = [line.strip() for line in text.splitlines()]
    code = [line for line in lines if line and not line.startswith(("#", "%"))]
    if not code:
        return lines[0][:70] if lines else ""
    return "imports" if code[0].startswith(("from ", "import ")) else code[0][:70]


def notebook_times(notebook: Path) -> dict:
    nb = json.loads(notebook.read_text())
    total = nb["metadata"].get("papermill", {}).get("duration") or 0.0
    cells = []
    for cell in nb["cells"]:
        if cell["cell_type"] != "code":
            continue
        duration = cell.get("metadata", {}).get("papermill", {}).get("duration")
        if duration is not None:
            cells.append({"source": _first_line(cell["source"]), "seconds": float(duration)})
    in_cells = sum(c["seconds"] for c in cells)
    return {
        "notebook": notebook.stem,
        "seconds": float(total),
        "cells_seconds": in_cells,
        "outside_cells_seconds": float(total) - in_cells,
        "first_cell_seconds": cells[0]["seconds"] if cells else 0.0,
        "cells": cells,
    }


def import_seconds(repeats: int = 2) -> float:
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "MPLBACKEND": "Agg"}
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", IMPORTS], cwd=ROOT, env=env, check=True)
        times.append(time.perf_counter() - started)
    return min(times)


def run(keep: Path | None = None) -> dict:
    with timed_series(COMMAND, keep, "bench_demo_") as series:
        notebooks = sorted((series.outputs / "runs" / "resnet18" / "notebooks").glob("*.ipynb"))
        per_notebook = [notebook_times(nb) for nb in notebooks]
    return {
        "command": "python " + " ".join(COMMAND),
        "wall_seconds": series.wall_seconds,
        "goal_seconds": GOAL_S,
        "notebooks": per_notebook,
        "runner_outside_notebooks_seconds": series.wall_seconds - sum(n["seconds"] for n in per_notebook),
        "import_seconds": import_seconds(),
        "load_avg": series.load_avg,
    }


def markdown(r: dict) -> list[str]:
    wall = r["wall_seconds"]
    verdict = "meets" if wall <= r["goal_seconds"] else "**misses**"
    lines = [
        f"`{r['command']}` into a temp KIT_OUTPUTS: **{wall:.0f} s** wall ({verdict} the "
        f"{r['goal_seconds']} s goal); load average {r['load_avg'][0]:.1f} before, {r['load_avg'][-1]:.1f} after.",
        "",
        "| notebook | s | in cells | outside cells (kernel start, papermill) | first cell (imports) | slowest cell |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for n in r["notebooks"]:
        slow = max(n["cells"], key=lambda c: c["seconds"]) if n["cells"] else {"source": "", "seconds": 0}
        lines.append(
            f"| {n['notebook']} | {n['seconds']:.1f} | {n['cells_seconds']:.1f} | {n['outside_cells_seconds']:.1f} | "
            f"{n['first_cell_seconds']:.1f} | {slow['seconds']:.1f} s `{slow['source']}` |"
        )
    fixed = sum(n["outside_cells_seconds"] + n["first_cell_seconds"] for n in r["notebooks"])
    lines += [
        "",
        f"- fixed cost: kernel starts and import cells together {fixed:.0f} s of the {wall:.0f} s "
        f"({fixed / wall:.0%}); a fresh interpreter importing torch, timm, albumentations and the helpers takes "
        f"{r['import_seconds']:.1f} s on its own",
        f"- the runner before and between notebooks (papermill import, parameter checks): "
        f"{r['runner_outside_notebooks_seconds']:.1f} s",
        "- cells over 2 s: "
        + "; ".join(
            f"{n['notebook']} `{c['source']}` {c['seconds']:.1f} s"
            for n in r["notebooks"]
            for c in n["cells"]
            if c["seconds"] > 2
        ),
    ]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path)
    parser.add_argument("--keep", type=Path, help="KIT_OUTPUTS to use and keep (default: a temp folder)")
    args = parser.parse_args(argv)
    return report(run(args.keep), args.json, markdown)


if __name__ == "__main__":
    sys.exit(main())
