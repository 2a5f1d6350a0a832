"""JupyterLab as a person sees it: a server from the project's environment, driven by Playwright with the
system Chromium, and a checker that reads what the page shows.

The checker reads the DOM, not the notebook file: an error box, a line on stderr, a progress bar that is
text instead of a widget, or a widget bar left short or red are what a person would see, whatever the
kernel sent.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from helpers.paths import project_root

KERNEL = "imgkit"  # the kernel `make setup` installs and the notebooks name
KERNEL_DISPLAY = "Python (imgkit)"
LAB_SETTINGS = project_root() / "jupyter-config"  # what `make lab` adds to JUPYTER_CONFIG_PATH

# stderr a notebook may show: (regex, why it is harmless). Empty: on the demo data the series writes
# nothing to stderr, so any line there is news.
ALLOWED_STDERR: tuple[tuple[str, str], ...] = ()

# a code cell whose source calls one of these must show a figure
FIGURE_CALL = re.compile(r"\b(save_figure|show_samples)\(")
ERROR_LINE = re.compile(r"^\s*\w*(Error|Exception|Interrupt|Exit)\b.*$", re.M)
TEXT_BAR = re.compile(r"\d+%\|")  # tqdm's text bar: "40%|████      | 2/5"
WIDGET_AS_TEXT = re.compile(r"(HBox|FloatProgress|IntProgress)\(")  # a widget with no widget manager


def chromium_or_skip() -> str:
    """The Chromium to drive, or a skip that says what is missing and how to add it."""
    pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed (requirements.txt pins it)"
    )
    browser = os.environ.get("KIT_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not browser:
        pytest.skip("no Chromium on this machine: `apt-get install chromium` (.ci/run does it as root)")
    return browser


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LabServer:
    """`python -m jupyterlab` on a free localhost port with a token and no browser, serving `root`.

    Jupyter's own config, data and runtime folders are temporary, so the user's settings and kernels
    play no part: the kernels are the environment's (`make setup` installs `imgkit` there). The kernels
    inherit `env`, which sets KIT_OUTPUTS and puts the checkout under test first on PYTHONPATH.
    """

    root: Path
    home: Path
    outputs: Path
    port: int = field(default_factory=free_port)
    token: str = field(default_factory=lambda: os.urandom(12).hex())
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.home / "server.log"

    def env(self) -> dict[str, str]:
        jupyter = {name: self.home / name for name in ("config", "data", "runtime")}
        for folder in jupyter.values():
            folder.mkdir(parents=True, exist_ok=True)
        return {
            **os.environ,
            "KIT_OUTPUTS": str(self.outputs),
            "PYTHONPATH": os.pathsep.join([str(project_root()), os.environ.get("PYTHONPATH", "")]),
            "NO_ALBUMENTATIONS_UPDATE": "1",
            "JUPYTER_CONFIG_DIR": str(jupyter["config"]),
            "JUPYTER_DATA_DIR": str(jupyter["data"]),
            "JUPYTER_RUNTIME_DIR": str(jupyter["runtime"]),
            "JUPYTER_CONFIG_PATH": str(LAB_SETTINGS),
        }

    def start(self, timeout: float = 90) -> LabServer:
        command = [
            sys.executable,
            "-m",
            "jupyterlab",
            "--no-browser",
            "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.port={self.port}",
            "--ServerApp.port_retries=0",
            f"--IdentityProvider.token={self.token}",
            f"--ServerApp.root_dir={self.root}",
        ]
        if os.geteuid() == 0:
            command.append("--allow-root")
        self.process = subprocess.Popen(
            command, env=self.env(), cwd=self.root, stdout=self.log.open("wb"), stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"JupyterLab exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                self.api("status")
                return self
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"JupyterLab did not answer within {timeout:.0f} s:\n{self.log_tail()}")

    def api(self, path: str, method: str = "GET") -> object:
        request = urllib.request.Request(
            f"{self.url}/api/{path}", method=method, headers={"Authorization": f"token {self.token}"}
        )
        with urllib.request.urlopen(request, timeout=10) as answer:
            body = answer.read()
        return json.loads(body) if body else None

    def shut_down_kernels(self) -> None:
        """End every session's kernel (as closing a notebook with "Shut Down Kernel" would)."""
        for session in self.api("sessions"):
            self.api(f"sessions/{session['id']}", method="DELETE")

    def stop(self) -> None:
        """SIGTERM to the server's pid (it shuts its kernels down), SIGKILL if it hangs."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def log_tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""


# --- what the page shows --------------------------------------------------------------------------------

CURRENT = "#jp-main-dock-panel .jp-NotebookPanel:not(.lm-mod-hidden)"

READ_CELLS = """(panel) => [...panel.querySelectorAll('.jp-Cell.jp-CodeCell')].map((cell) => ({
  prompt: (cell.querySelector('.jp-InputArea-prompt')?.textContent ?? '').trim(),
  source: [...cell.querySelectorAll('.jp-InputArea-editor .cm-line')].map((l) => l.textContent).join('\\n'),
  outputs: [...cell.querySelectorAll('.jp-OutputArea-output')]
    .filter((o) => !o.classList.contains('lm-mod-hidden'))
    .map((o) => ({
      mime: o.dataset.mimeType ?? '',
      text: o.textContent,
      images: o.querySelectorAll('img').length,
      bars: [...o.querySelectorAll('.widget-hprogress, .widget-progress')].map((b) => ({
        classes: b.querySelector('.progress-bar')?.className ?? '',
        width: b.querySelector('.progress-bar')?.style.width ?? '',
        text: (b.closest('.widget-hbox') ?? b).textContent.trim(),
      })),
    })),
}))"""


@dataclass
class Bar:
    classes: str
    width: str
    text: str

    @property
    def full_and_green(self) -> bool:
        return "progress-bar-success" in self.classes.split() and self.width == "100%"


@dataclass
class Output:
    mime: str
    text: str
    images: int
    bars: list[Bar]


@dataclass
class Cell:
    prompt: str
    source: str
    outputs: list[Output]

    @classmethod
    def from_page(cls, raw: dict) -> Cell:
        outputs = [
            Output(o["mime"], o["text"], o["images"], [Bar(**b) for b in o["bars"]]) for o in raw["outputs"]
        ]
        return cls(raw["prompt"], raw["source"], outputs)

    @property
    def ran(self) -> bool:
        return re.fullmatch(r"\[\d+\]:", self.prompt) is not None

    @property
    def text(self) -> str:
        return "\n".join(o.text for o in self.outputs)


def allowed_on_stderr(text: str) -> bool:
    lines = [line for line in text.splitlines() if line.strip()]
    return all(any(re.search(pattern, line) for pattern, _ in ALLOWED_STDERR) for line in lines)


def cell_problems(index: int, cell: Cell) -> list[str]:
    """What is wrong with one code cell as shown: it did not run, an error, stderr, a bad bar, no figure."""
    where = f"cell {index} ({cell.source.splitlines()[0][:60] if cell.source else 'empty'!r})"
    if not cell.ran:
        return [f"{where} did not run (prompt {cell.prompt!r})"]
    problems = []
    for output in cell.outputs:
        if output.mime == "application/vnd.jupyter.stderr":
            if "Traceback" in output.text or ERROR_LINE.search(output.text):
                last = [m.group(0) for m in ERROR_LINE.finditer(output.text)][-1:] or [output.text]
                problems.append(f"{where} shows an error: {last[0].strip()[:300]}")
            elif TEXT_BAR.search(output.text):
                problems.append(
                    f"{where} shows a text progress bar, not a widget: {output.text.strip()[:120]!r}"
                )
            elif not allowed_on_stderr(output.text):
                problems.append(f"{where} writes to stderr: {output.text.strip()[:300]!r}")
        elif WIDGET_AS_TEXT.search(output.text) and not output.bars:
            problems.append(
                f"{where} shows a widget as text (no widget manager?): {output.text.strip()[:120]!r}"
            )
        for bar in output.bars:
            if not bar.full_and_green:
                style = next((c for c in bar.classes.split() if c.startswith("progress-bar-")), "no style")
                problems.append(f"{where} has a bar left at {bar.width or '?'} ({style}): {bar.text!r}")
    if FIGURE_CALL.search(cell.source) and not any(o.images for o in cell.outputs):
        problems.append(f"{where} should show a figure and shows none")
    return problems


@dataclass
class NotebookView:
    """One notebook as the page showed it once its kernel went idle after Run All."""

    name: str
    kernel: str
    cells: list[Cell]
    dialogs: list[str]
    seconds: float
    screenshot: Path

    @property
    def text(self) -> str:
        return "\n".join(c.text for c in self.cells)

    def problems(self) -> list[str]:
        found = [f"a dialog is open: {d!r}" for d in self.dialogs]
        if self.kernel != KERNEL_DISPLAY:
            found.append(f"the notebook runs on {self.kernel!r}, not the kit's {KERNEL_DISPLAY!r}")
        for i, cell in enumerate(self.cells):
            found += cell_problems(i, cell)
        return found


def log_in(page, server: LabServer) -> None:
    """Open JupyterLab once with the token, which sets the login cookie."""
    page.goto(f"{server.url}/lab?reset&token={server.token}")
    page.wait_for_selector(".jp-DirListing-item", timeout=60_000)


def run_notebook(page, name: str, shots: Path, timeout: float = 300) -> NotebookView:
    """Open `name` from the file browser, wait for the kit's kernel, Run > Run All Cells, wait for the
    kernel to go idle, read the page and take a screenshot."""
    page.locator(".jp-DirListing-itemText", has_text=re.compile(f"^{re.escape(name)}$")).dblclick()
    page.wait_for_selector(f".lm-TabBar-tab.lm-mod-current >> text={name}", timeout=60_000)
    panel = page.locator(CURRENT)
    wait_for_kernel(page, panel)
    start = time.monotonic()
    page.locator("#jp-MainMenu .lm-MenuBar-item", has_text=re.compile("^Run$")).click()
    page.locator(".lm-Menu-item[data-command='runmenu:run-all']").click()
    wait_until_idle(page, timeout)
    seconds = time.monotonic() - start
    view = NotebookView(
        name=name,
        kernel=panel.locator(".jp-KernelName").inner_text().strip(),
        cells=[Cell.from_page(c) for c in panel.evaluate(READ_CELLS)],
        dialogs=page.locator(".jp-Dialog, .Toastify__toast").all_inner_texts(),
        seconds=seconds,
        screenshot=shots / f"{Path(name).stem}.png",
    )
    screenshot_whole_notebook(page, view.screenshot)
    return view


def wait_for_kernel(page, panel, timeout: float = 120) -> None:
    """Until the notebook's kernel is the kit's and idle. JupyterLab 4.6 now and then asks which kernel to
    start for a notebook whose kernel it has (why was not pinned down), with the notebook's own kernel
    preselected: that is accepted, as a person would; any other choice is an error."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        dialog = page.locator(".jp-Dialog")
        if dialog.count():
            chosen = dialog.locator("select").evaluate("(s) => s.options[s.selectedIndex]?.text ?? ''")
            if chosen != KERNEL_DISPLAY:
                raise AssertionError(
                    f"JupyterLab asks for a kernel and offers {chosen!r}: {dialog.inner_text()}"
                )
            dialog.locator(".jp-mod-accept").click()
        kernel = panel.locator(".jp-KernelName").inner_text().strip()
        status = panel.locator(".jp-Notebook-ExecutionIndicator").get_attribute("data-status")
        if kernel == KERNEL_DISPLAY and status == "idle":
            return
        if kernel not in (KERNEL_DISPLAY, "No Kernel", ""):
            raise AssertionError(f"the notebook started {kernel!r}, not the kit's {KERNEL_DISPLAY!r}")
        time.sleep(0.5)
    raise TimeoutError(f"the {KERNEL_DISPLAY!r} kernel was not ready after {timeout:.0f} s")


def wait_until_idle(page, timeout: float) -> None:
    """Until no cell waits or runs (`[*]`), some cell has run, and the kernel says idle, twice in a row."""
    state = """(panel) => ({
      prompts: [...panel.querySelectorAll('.jp-CodeCell .jp-InputArea-prompt')].map((p) => p.textContent),
      status: panel.querySelector('.jp-Notebook-ExecutionIndicator')?.dataset.status ?? '',
    })"""
    deadline, settled = time.monotonic() + timeout, 0
    while time.monotonic() < deadline:
        if dialogs := page.locator(".jp-Dialog").all_inner_texts():
            raise AssertionError(f"a dialog stops the run: {dialogs}")
        now = page.locator(CURRENT).evaluate(state)
        busy = any("*" in p for p in now["prompts"]) or now["status"] != "idle"
        started = any(re.search(r"\[\d+\]", p) for p in now["prompts"])
        settled = settled + 1 if started and not busy else 0
        if settled == 2:
            return
        time.sleep(0.5)
    raise TimeoutError(f"the notebook was still running after {timeout:.0f} s: {now}")


def screenshot_whole_notebook(page, path: Path) -> None:
    """A screenshot as tall as the notebook, so every cell is in it, then the window as it was."""
    path.parent.mkdir(parents=True, exist_ok=True)
    size = page.viewport_size
    height = page.locator(f"{CURRENT} .jp-WindowedPanel-outer").evaluate(
        "(e) => { e.scrollTop = 0; return e.scrollHeight; }"
    )
    page.set_viewport_size({"width": size["width"], "height": min(height + 200, 16_000)})
    page.wait_for_timeout(500)
    page.screenshot(path=str(path))
    page.set_viewport_size(size)


def close_notebook(page) -> None:
    """File > Close and Shut Down Notebook, confirmed: its kernel ends and the next notebook has the CPU."""
    page.locator("#jp-MainMenu .lm-MenuBar-item", has_text=re.compile("^File$")).click()
    page.locator(".lm-Menu-item[data-command='filemenu:close-and-cleanup']").click()
    page.locator(".jp-Dialog .jp-mod-accept").click()
    page.locator(".jp-Dialog").wait_for(state="detached", timeout=30_000)
