"""Running notebooks under nbval from a test: a fresh pytest process, with its own outputs folder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def run_nbval(target: Path, outputs: Path, cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    """nbval (lax: every cell must run, no output compared) on a notebook or a folder of them."""
    command = [
        sys.executable,
        "-m",
        "pytest",
        "--nbval-lax",
        "--nbval-current-env",
        "-p",
        "no:cacheprovider",
        "-q",
        str(target),
    ]
    env = {**os.environ, "KIT_OUTPUTS": str(outputs)}
    return subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
