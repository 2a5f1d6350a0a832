"""JupyterLab in a real browser: 01 → 05 on the demo data and on the multi-label demo as a person runs
them (with 01's stop when the multi-label labels are left at task 'auto'), and the checker shown to fail on
notebooks that raise, leave a bar red or write to stderr.

The series' copies get their small parameters (a test model, one epoch) from papermill's prepare-only
mode, the cell a person would otherwise type; then each is opened from the file browser and run with
Run > Run All Cells. Screenshots of every notebook land in the test's temp folder (`lab*/screenshots/`).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import nbformat
import pytest
from lab_browser import (
    KERNEL,
    KERNEL_DISPLAY,
    LabServer,
    NotebookView,
    chromium_or_skip,
    close_notebook,
    log_in,
    run_notebook,
)
from notebook_runs import OPTIONAL_SECTIONS, TINY, prepare_series

from helpers.demo import ensure_multilabel_demo_data
from helpers.runner import SERIES

pytestmark = pytest.mark.slow

FIXTURES = {
    "fine": [
        "from tqdm.auto import tqdm\nfor _ in tqdm(range(5)):\n    pass",
        "import matplotlib.pyplot as plt\nplt.plot([1, 2]);",
    ],
    "raises": ['print("before")', 'raise ValueError("deliberate")', 'print("after")'],
    "untidy": [
        "from tqdm.auto import tqdm\nfor i in tqdm(range(5)):\n    if i == 3:\n        break",
        "from tqdm.std import tqdm as text_tqdm\nfor _ in text_tqdm(range(3)):\n    pass",
        'import sys\nprint("careful", file=sys.stderr)',
        "def save_figure(*args):\n    return None\n\n\nsave_figure()",
    ],
}


def write_fixture(folder: Path, name: str, sources: list[str]) -> None:
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s) for s in sources])
    nb.metadata["kernelspec"] = {"name": KERNEL, "display_name": KERNEL_DISPLAY, "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    nbformat.write(nb, folder / f"{name}.ipynb")


@dataclass
class Lab:
    server: LabServer
    page: object
    shots: Path

    def run(self, name: str) -> NotebookView:
        view = run_notebook(self.page, name, self.shots)
        close_notebook(self.page)
        return view


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    chromium = chromium_or_skip()
    from playwright.sync_api import sync_playwright

    home = tmp_path_factory.mktemp("lab")
    notebooks = home / "notebooks"
    prepare_series(notebooks, {**TINY, **OPTIONAL_SECTIONS})
    multilabel = {**TINY, "data_dir": str(ensure_multilabel_demo_data()), "label_col": "labels"}
    prepare_series(notebooks, {**multilabel, "run_name": "ml_auto"}, prefix="auto_", names=SERIES[:1])
    ml_sections = {k: v for k, v in OPTIONAL_SECTIONS.items() if k != "calibrate"}  # calibration: multiclass
    prepare_series(
        notebooks, {**multilabel, **ml_sections, "run_name": "ml", "task": "multilabel"}, prefix="ml_"
    )
    for name, sources in FIXTURES.items():
        write_fixture(notebooks, name, sources)
    server = LabServer(notebooks, home, home / "outputs").start()
    try:
        kernels = server.api("kernelspecs")["kernelspecs"]
        assert KERNEL in kernels, (
            f"no {KERNEL!r} Jupyter kernel in this environment (it has {sorted(kernels)}): `make setup` "
            f'installs it, or `python -m ipykernel install --sys-prefix --name {KERNEL} --display-name "{KERNEL_DISPLAY}"`'
        )
        with sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=chromium, args=["--no-sandbox"] if os.geteuid() == 0 else []
            )
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            log_in(page, server)
            yield Lab(server, page, home / "screenshots")
            browser.close()
    finally:
        server.stop()
    assert server.process.poll() is not None, "the server outlived its stop"


def test_checker_passes_a_clean_notebook(lab):
    view = lab.run("fine.ipynb")
    assert view.problems() == []
    assert [o.images for o in view.cells[1].outputs] == [1]
    bars = [b for o in view.cells[0].outputs for b in o.bars]
    assert len(bars) == 1 and bars[0].full_and_green, bars


def test_checker_fails_a_notebook_that_raises(lab):
    problems = lab.run("raises.ipynb").problems()
    assert len(problems) == 2, problems
    assert "cell 1" in problems[0] and "shows an error: ValueError: deliberate" in problems[0]
    assert "cell 2" in problems[1] and "did not run" in problems[1]


def test_checker_fails_a_red_bar_a_text_bar_stderr_and_a_missing_figure(lab):
    problems = lab.run("untidy.ipynb").problems()
    assert len(problems) == 4, problems
    assert "cell 0" in problems[0] and "progress-bar-danger" in problems[0] and "3/5" in problems[0]
    assert "cell 1" in problems[1] and "text progress bar" in problems[1]
    assert "cell 2" in problems[2] and "writes to stderr: 'careful'" in problems[2]
    assert "cell 3" in problems[3] and "should show a figure" in problems[3]


def test_series_in_jupyterlab(lab):
    """01 → 05 in order: every cell runs with no error or stderr, on the kit's kernel, every bar ends full
    and green, every figure shows, and 05 shows where the submission went."""
    views = [lab.run(f"{name}.ipynb") for name in SERIES]
    (lab.shots / "timings.json").write_text(json.dumps({v.name: round(v.seconds, 1) for v in views}))
    problems = [f"{v.name}: {p}" for v in views for p in v.problems()]
    assert not problems, "\n".join(problems) + f"\nscreenshots: {lab.shots}"
    for view in views:
        assert sum(o.images for c in view.cells for o in c.outputs) > 0, f"{view.name} shows no figure"
        assert view.screenshot.stat().st_size > 0
    bars = {v.name: [b for c in v.cells for o in c.outputs for b in o.bars] for v in views}
    assert bars["03_train.ipynb"], "03 shows no progress bar: the bar check would check nothing"
    submission = lab.server.outputs / "runs" / "test_resnet" / "submission.csv"
    assert submission.exists()
    assert str(submission) in views[-1].text, "05 does not show the submission's path"


def test_multilabel_series_in_jupyterlab(lab):
    """01 with task 'auto' on multi-label labels stops with the kit's message alone (no frames, nothing
    empty before it); then 01 → 05 with task 'multilabel' runs as cleanly as the multiclass series."""
    stop = lab.run("auto_01_data.ipynb")
    failed = [c for c in stop.cells if any(o.mime == "application/vnd.jupyter.stderr" for o in c.outputs)]
    assert len(failed) == 1, stop.problems()
    assert len(failed[0].outputs) == 1, [o.text for o in failed[0].outputs]
    shown = failed[0].outputs[0].text
    assert "looks multi-label" in shown and "task='multilabel'" in shown
    assert not re.search(r"Traceback|File \"|Cell In|---->|DataError", shown), shown

    views = [lab.run(f"ml_{name}.ipynb") for name in SERIES]
    problems = [f"{v.name}: {p}" for v in views for p in v.problems() if not skipped_calibration(v, p)]
    assert not problems, "\n".join(problems) + f"\nscreenshots: {lab.shots}"
    submission = lab.server.outputs / "runs" / "ml" / "submission.csv"
    assert submission.exists() and str(submission) in views[-1].text


def skipped_calibration(view: NotebookView, problem: str) -> bool:
    """04's calibration cell shows no figure for a multilabel run: it says in one line why it skips."""
    cells = [i for i, c in enumerate(view.cells) if "calibrate_oof" in c.source]
    return "should show a figure" in problem and any(problem.startswith(f"cell {i} (") for i in cells)
