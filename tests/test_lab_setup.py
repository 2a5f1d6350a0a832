"""How the notebooks find the kit's environment from JupyterLab, and what `make lab` sets up."""

from __future__ import annotations

import json
import re
from pathlib import Path

import nbformat
import pytest
from lab_browser import chromium_or_skip

from helpers.paths import notebooks_dir, project_root

NOTEBOOKS = sorted(notebooks_dir().glob("*.ipynb"))
MAKEFILE = (project_root() / "Makefile").read_text()


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebooks_name_the_kernel_make_setup_installs(path: Path):
    """Opened from any JupyterLab, a notebook asks for the kit's kernel by name (JupyterLab offers to pick
    one when it is missing) instead of running on whatever `python3` that JupyterLab has."""
    install = re.search(r"ipykernel install --sys-prefix --name (\S+) --display-name \"([^\"]+)\"", MAKEFILE)
    assert install, "make setup should install the kit's Jupyter kernel"
    spec = nbformat.read(path, as_version=4).metadata.kernelspec
    assert (spec.name, spec.display_name, spec.language) == (install[1], install[2], "python")


def test_make_lab_turns_off_the_news_prompt():
    """`make lab` adds jupyter-config/ to JUPYTER_CONFIG_PATH; its defaults answer JupyterLab's first-start
    question about news (no prompt, no requests to jupyter.org) and leave a user's own settings in charge."""
    assert "JUPYTER_CONFIG_PATH=$(CURDIR)/jupyter-config" in MAKEFILE
    overrides = json.loads(
        (project_root() / "jupyter-config/labconfig/default_setting_overrides.json").read_text()
    )
    assert overrides["@jupyterlab/apputils-extension:notification"] == {
        "fetchNews": "false",
        "checkForUpdates": False,
    }


def test_a_machine_without_chromium_skips_the_browser_test_saying_how(monkeypatch, tmp_path):
    """Never a silent pass: the skip's reason (in pytest's -ra summary) names the missing browser and the fix."""
    monkeypatch.delenv("KIT_CHROMIUM", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(pytest.skip.Exception, match=r"no Chromium .*apt-get install chromium"):
        chromium_or_skip()
