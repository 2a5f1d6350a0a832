"""Stopping on a signal at the next step boundary instead of wherever the signal lands.

SIGTERM (preemption, `kill`, SLURM at the time limit), SIGINT (Ctrl-C, JupyterLab's Kernel > Interrupt) and
SIGUSR1 (SLURM's warning, `--signal=USR1@90`) only set a flag while `stop_signals_caught()` is active; the
loops ask `check()` at their step boundaries (each training update, each prediction batch) and get a
`StopRequested` there. Training catches it, saves a mid-epoch checkpoint and lets it go on. The outermost
`stop_signals_caught()` ends the stop the way its process expects: a script exits with the signal's usual
status (128 + its number: 143 for SIGTERM, 130 for SIGINT, 138 for SIGUSR1) after one line on stderr; an
IPython kernel (a notebook) gets `TrainingStopped`, a one-line error, and keeps running. A second Ctrl-C
stops at once, without saving (KeyboardInterrupt).

Under torchrun the flag is all-reduced at every check (a one-number all-reduce, on gloo even when training
uses nccl, so it never waits for the GPU), so every process stops at the same step. The handlers are
installed only while the context is active and the previous ones are put back afterwards; loader worker
processes ignore these signals (`ignore_in_worker`), so a signal sent to the whole process group stops the
training process alone, which then shuts its workers down.

`KIT_TEST_SIGNAL` is a fault-injection hook for the tests only: JSON `{"signal": "SIGTERM", "at": desc,
"batch": i, "rank": r}` makes process r send itself the signal after batch i of the loop named desc (the
first time it comes, once per outermost stop_signals_caught()); with `"group": true` it signals its whole
process group instead, loader workers included, as Ctrl-C in a terminal or Kernel > Interrupt do.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.distributed as dist

from helpers.errors import KitError

SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
TEST_SIGNAL = "KIT_TEST_SIGNAL"


class StopRequested(Exception):
    """A stop signal was seen at a step boundary; the message says where, and what was saved."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signum = signum


class TrainingStopped(KitError, RuntimeError):
    """What a notebook shows when a signal stopped training or prediction: one line, without frames."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum

    def _render_traceback_(self) -> list[str]:  # IPython shows this instead of the traceback
        return [f"{type(self).__name__}: {self}"]


class _State:
    depth = 0  # nesting of stop_signals_caught(); the outermost installs and ends the stop
    signum = 0  # the first stop signal seen while active
    previous: dict[int, Any] = {}
    group: Any = None  # the process group the flag is all-reduced over (None: the default one)
    injected = False


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


def _handle(signum: int, frame: Any) -> None:
    if _State.signum == signal.SIGINT and signum == signal.SIGINT:
        raise KeyboardInterrupt  # pressed twice: stop now, without saving
    _State.signum = _State.signum or signum


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


@contextmanager
def stop_signals_caught() -> Iterator[None]:
    """While active, the stop signals set a flag that `check()` turns into StopRequested at a step boundary.

    Nested uses share the outermost one. On leaving the outermost, a StopRequested (or a flag that no check
    saw) ends as SystemExit(128 + signal) in a script, TrainingStopped in a notebook; a collective call
    under torchrun (every process enters and leaves it together).
    """
    outermost = _State.depth == 0
    if outermost:
        _State.signum, _State.previous, _State.injected = 0, {}, False
        if threading.current_thread() is threading.main_thread():  # only the main thread may set handlers
            _State.previous = {s: signal.signal(s, _handle) for s in SIGNALS}
        if _distributed():
            _State.group = None if dist.get_backend() == "gloo" else dist.new_group(backend="gloo")
    _State.depth += 1
    try:
        yield
        if outermost and requested():
            raise StopRequested(
                _State.signum,
                f"stopped by {signal_name(_State.signum)} once the work in progress had finished: run it "
                "again to go on",
            )
    except StopRequested as stop:
        if not outermost:
            raise
        raise _ending(stop) from None
    finally:
        _State.depth -= 1
        if outermost:
            for s, handler in _State.previous.items():
                # None: a handler set outside Python, which Python cannot put back; the default instead
                signal.signal(s, signal.SIG_DFL if handler is None else handler)
            _State.previous, _State.group, _State.signum = {}, None, 0


def _ending(stop: StopRequested) -> BaseException:
    """How a stop ends: a one-line error in an IPython kernel, the signal's exit status in a script."""
    if _interactive():
        return TrainingStopped(str(stop), stop.signum)
    if not _distributed() or dist.get_rank() == 0:
        print(str(stop), file=sys.stderr, flush=True)
    return SystemExit(128 + stop.signum)


def _interactive() -> bool:
    shell = sys.modules.get("IPython")
    return shell is not None and shell.get_ipython() is not None


def requested() -> int:
    """The stop signal's number, or 0 (always outside stop_signals_caught()); under torchrun the largest
    over every process (a collective call)."""
    if not _State.depth:
        return 0
    if _distributed():
        flag = torch.tensor([_State.signum], dtype=torch.int64)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=_State.group)
        _State.signum = int(flag.item())
    return _State.signum


def check(where: str, outcome: str = "nothing of it is saved: run it again") -> None:
    """Raise StopRequested when a stop signal came (under torchrun: to any process), naming where."""
    signum = requested()
    if signum:
        raise StopRequested(signum, f"stopped by {signal_name(signum)} at {where}; {outcome}")


def gather(value: Any) -> list[Any]:
    """Every process's `value`, by rank ([value] in one process): what a stop saves of each. Collective."""
    if not _distributed():
        return [value]
    values: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(values, value, group=_State.group)
    return values


def barrier() -> None:
    """Wait for every process (nothing in one process): the others leave once rank 0 has saved."""
    if _distributed():
        dist.barrier(group=_State.group)


def test_signal(where: str, batch: int) -> None:
    """The tests' fault injection (KIT_TEST_SIGNAL, see the module docstring); nothing when it is unset."""
    spec = os.environ.get(TEST_SIGNAL)
    if not spec or _State.injected:
        return
    wanted = json.loads(spec)
    rank = dist.get_rank() if _distributed() else 0
    if wanted["at"] == where and wanted["batch"] == batch and wanted.get("rank", 0) == rank:
        _State.injected = True
        signum = signal.Signals[wanted["signal"]]
        if wanted.get("group"):
            os.killpg(os.getpgrp(), signum)
        else:
            os.kill(os.getpid(), signum)


def ignore_in_worker(worker_id: int) -> None:
    """A loader worker's init: ignore the stop signals; the training process decides when workers end."""
    for s in SIGNALS:
        signal.signal(s, signal.SIG_IGN)
