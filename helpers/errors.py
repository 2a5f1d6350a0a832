"""The kit's own errors: messages for a person, shown alone, without the frames that raised them.

Every error the kit raises on purpose (bad data, a bad setting, a missing run, a refused launch, ...)
derives from KitError. A notebook shows one as its message in red (helpers.notebook registers the
display); a command-line entry prints the message and exits with EXIT_KIT_ERROR. Any other exception is a
bug, and keeps its full traceback everywhere.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
import sys
from collections.abc import Callable
from typing import TypeVar

EXIT_KIT_ERROR = 2  # exit status of a command stopped by a kit error (argparse's for bad arguments too)
RED, RESET = "\x1b[31m", "\x1b[0m"


class KitError(Exception):
    """An error whose message says what is wrong and how to fix it: shown without a traceback."""


class MissingFileError(KitError, FileNotFoundError):
    """A file the kit needs does not exist; the message names the notebook or setting that provides it."""


class MissingRunError(MissingFileError):
    """A notebook or command needs a run (its config.json) that does not exist yet."""


def red_lines(error: BaseException) -> list[str]:
    """The error's message as red text lines, without its type or frames: what a notebook shows."""
    return [f"{RED}{line}{RESET}" for line in str(error).splitlines() or [type(error).__name__]]


def kit_error_names() -> set[str]:
    """The class names of every KitError of the package: how a papermill failure (which carries only the
    exception's name) tells a kit error from a bug. Imports the package's modules to find them all."""
    import helpers

    for module in pkgutil.iter_modules(helpers.__path__):
        if module.name == "notebook":  # a kernel's set-up (hooks, malloc), and it defines no error
            continue
        try:
            importlib.import_module(f"helpers.{module.name}")
        except ImportError:  # an optional extra that is not installed defines no error used here
            continue
    found, todo = set(), [KitError]
    while todo:
        cls = todo.pop()
        found.add(cls.__name__)
        todo += cls.__subclasses__()
    return found


Main = TypeVar("Main", bound=Callable[..., int])


def exits_on_kit_error(prog: str) -> Callable[[Main], Main]:
    """A command-line main that prints a kit error's message (prefixed by `prog`) to stderr and returns
    EXIT_KIT_ERROR instead of a traceback; any other exception still raises."""

    def wrap(main: Main) -> Main:
        @functools.wraps(main)
        def guarded(*args, **kwargs) -> int:
            try:
                return main(*args, **kwargs)
            except KitError as error:
                print(f"{prog}: error: {error}", file=sys.stderr)
                return EXIT_KIT_ERROR

        return guarded  # type: ignore[return-value]

    return wrap
