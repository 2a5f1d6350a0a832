"""The malloc settings the kit applies at import: freed batch-sized blocks are reused, not faulted in again."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

# Rounds of a batch's worth of activations (four 64 MB tensors alive at once, then freed); prints the page
# faults of four rounds after eight to settle in (glibc's aligned allocations reuse freed space only once
# the heap holds enough of it).
PROBE = textwrap.dedent(
    """
    import resource, sys
    if sys.argv[1] == "kit":
        import helpers
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


def faults_of(mode: str) -> int:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True, timeout=120
    )
    return int(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings")
def test_importing_the_kit_stops_refaulting_freed_blocks():
    plain, kit = faults_of("plain"), faults_of("kit")
    pages = 4 * 4 * 64 * 2**20 // 4096  # four rounds of four 64 MB tensors
    assert plain > pages // 2, f"the probe should fault its blocks in every round without the kit: {plain}"
    assert kit < pages // 20, f"{kit} page faults with the kit imported (plain malloc: {plain})"


def test_an_explicit_malloc_setting_is_left_alone(monkeypatch):
    from helpers import allocator

    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "131072")
    assert allocator._apply() is False
