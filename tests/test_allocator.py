"""The malloc settings the kit's entry points apply: freed batch-sized blocks are reused, not faulted in again.

Importing the helpers must leave malloc as it is: a library import does not change the process.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

# Rounds of a batch's worth of activations (four 64 MB tensors alive at once, then freed); prints the page
# faults of four rounds after eight to settle in (glibc's aligned allocations reuse freed space only once
# the heap holds enough of it). Modes: "plain" (torch alone), "import" (the helpers imported, as a library
# user would), "kit" (what an entry point of the kit does).
PROBE = textwrap.dedent(
    """
    import resource, sys
    if sys.argv[1] == "import":
        import helpers, helpers.train
    if sys.argv[1] == "kit":
        import helpers.allocator
        helpers.allocator.retain_freed_memory()
    import torch
    def faults():
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    def batch():
        return [torch.empty(16 * 2**20).fill_(1.0) for _ in range(4)]
    for _ in range(8):
        batch()
    before = faults()
    for _ in range(4):
        batch()
    print(faults() - before)
    """
)
PAGES = 4 * 4 * 64 * 2**20 // 4096  # four rounds of four 64 MB tensors
glibc = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings")


def faults_of(mode: str) -> int:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True, timeout=120
    )
    return int(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@glibc
def test_the_kits_setting_stops_refaulting_freed_blocks():
    plain, kit = faults_of("plain"), faults_of("kit")
    assert plain > PAGES // 2, f"the probe should fault its blocks in every round without the kit: {plain}"
    assert kit < PAGES // 20, f"{kit} page faults with the kit's setting applied (plain malloc: {plain})"


@pytest.mark.slow
@glibc
def test_importing_the_helpers_leaves_malloc_alone():
    imported = faults_of("import")
    assert imported > PAGES // 2, (
        f"only {imported} page faults after `import helpers.train`: malloc was tuned"
    )


def test_an_explicit_malloc_setting_is_left_alone(monkeypatch):
    from helpers import allocator

    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "131072")
    assert allocator._apply() is False
