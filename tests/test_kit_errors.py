"""The kit's own errors: in a notebook the message alone, in red, with a DataError's problems table; on the
command line the message and exit status 2. A bug (any other exception) keeps its traceback."""

from __future__ import annotations

import re

import nbformat
import papermill
import pytest
from nbclient import NotebookClient

from helpers import distributed, errors, export, leaderboard, runner, sweep
from helpers.errors import EXIT_KIT_ERROR, KitError, exits_on_kit_error, kit_error_names
from helpers.paths import notebooks_dir

FRAMES = ("Traceback", "File ", "Cell In", "---->", "raise ")  # what a traceback's frames print
PROBLEMS = """\
from helpers.tables import DataError, problem_frame
rows = [{"line": k + 2, "id": f"im{k}", "file": f"x/im{k}.jpg", "problem": "image missing", "fix": "add it"}
        for k in range(25)]
raise DataError("25 problem(s) in x", problem_frame(rows), ["25 of 25 missing images: set image_dir='y'"])
"""


def notebook(*cells: str) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(source) for source in ("import helpers.notebook", *cells)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return nb


def traceback_text(output: nbformat.NotebookNode) -> str:
    """The error output's lines as a person reads them (colours left out)."""
    return re.sub(r"\x1b\[[0-9;]*m", "", "\n".join(output["traceback"]))


@pytest.mark.slow
def test_a_kit_error_shows_its_message_alone_and_a_bug_its_traceback(outputs):
    nb = notebook(
        PROBLEMS,
        "from helpers.config import Config\nConfig(n_folds=1)",
        "from helpers.notebook import start\nstart({}, 'data')",  # no parameters cell ran: a kit error
        "def helper():\n    raise ValueError('a bug')\nhelper()",
    )
    NotebookClient(nb, kernel_name="python3", allow_errors=True, timeout=300).execute()
    data_error, config_error, kit_error, bug = (cell.outputs for cell in nb.cells[1:])

    assert [o.output_type for o in data_error] == ["error", "display_data"], "the message, then the table"
    text = traceback_text(data_error[0])
    assert data_error[0]["traceback"][0] == f"{errors.RED}25 problem(s) in x{errors.RESET}", "in red"
    assert "likely cause: 25 of 25 missing images: set image_dir='y'" in text
    assert "the first 20 of 25 problems:" in text
    assert not any(frame in text for frame in FRAMES), text
    table = data_error[1]["data"]["text/html"]
    assert table.count("</tr>") == 21 and "im19" in table and "im20" not in table  # header + 20 rows

    for outputs_of in (config_error, kit_error):
        assert [o.output_type for o in outputs_of] == ["error"], "nothing empty before or after it"
        assert not any(frame in traceback_text(outputs_of[0]) for frame in FRAMES)
    assert "n_folds=1: must be at least 2" in traceback_text(config_error[0])

    assert bug[0]["ename"] == "ValueError"
    assert "helper()" in traceback_text(bug[0]) and "Cell In" in traceback_text(bug[0]), (
        "a bug keeps its frames"
    )


@pytest.mark.slow
def test_under_papermill_a_kit_error_still_fails_the_notebook_with_its_message(outputs, tmp_path):
    source, executed = tmp_path / "in.ipynb", tmp_path / "out.ipynb"
    nbformat.write(notebook(PROBLEMS, "print('never runs')"), source)
    with pytest.raises(papermill.PapermillExecutionError) as err:
        papermill.execute_notebook(str(source), str(executed), kernel_name="python3", progress_bar=False)
    assert err.value.ename == "DataError"
    assert "25 problem(s) in x\nlikely cause: 25 of 25 missing images" in str(err.value)
    assert "- line 2 (x/im0.jpg)" in err.value.evalue, "the rows too, for the runner's message"
    cells = [c for c in nbformat.read(executed, as_version=4).cells if c.cell_type == "code"]
    assert "25 problem(s) in x" in traceback_text(cells[1].outputs[0]) and not cells[2].outputs


def test_every_kit_error_type_is_known_by_name():
    """How the runner tells a notebook's kit error (papermill gives only its name) from a bug."""
    names = kit_error_names()
    for name in ("ConfigError", "DataError", "MissingRunError", "MissingFileError", "ImageError",
                 "StoreSpaceError", "LaunchError", "NonFiniteLoss", "ParityError", "OutsideCheckoutError"):  # fmt: skip
        assert name in names
    assert "ValueError" not in names and "NotebookFailed" not in names


def test_command_line_entries_print_a_kit_error_and_exit_2(capsys):
    @exits_on_kit_error("python -m helpers.thing")
    def main() -> int:
        raise KitError("what is wrong; how to fix it")

    assert main() == EXIT_KIT_ERROR == 2
    assert capsys.readouterr().err == "python -m helpers.thing: error: what is wrong; how to fix it\n"

    @exits_on_kit_error("python -m helpers.thing")
    def buggy() -> int:
        raise ValueError("a bug")

    with pytest.raises(ValueError, match="a bug"):
        buggy()
    for module in (leaderboard, sweep, export, distributed):
        assert module.main.__wrapped__, f"{module.__name__}.main handles the kit's errors"


def test_the_runner_refuses_an_unknown_parameter_with_exit_2(outputs, capsys):
    assert runner.main(["-p", "epochz", "1"]) == EXIT_KIT_ERROR
    assert "epochz" in capsys.readouterr().err


def test_prose_is_wrapped_between_words(capsys):
    """JupyterLab breaks a long output line anywhere: 04's threshold note read "N / ote"."""
    from helpers.notebook import say

    words = [f"word{k}" for k in range(60)]
    say(" ".join(words) + "\nsecond paragraph")
    lines = capsys.readouterr().out.splitlines()
    assert max(map(len, lines)) <= 100 and " ".join(lines[:-1]).split() == words
    assert lines[-1] == "second paragraph"
    source = (notebooks_dir() / "04_evaluate.ipynb").read_text()
    assert "say(note)" in source and "print(note" not in source


@pytest.mark.slow
def test_the_runners_kernels_use_local_sockets_and_are_not_interrupted_when_stopped():
    """jupyter_client interrupts a kernel (SIGINT to its process group) before shutting it down: after 02,
    whose loader workers are still running, that logged "KeyboardInterrupt caught in kernel." (1 run in 4)."""
    import asyncio
    import signal

    async def start_and_stop() -> tuple[str, list[int]]:
        manager = runner.LocalKernelManager(kernel_name="python3")
        await manager.start_kernel()
        sent: list[int] = []
        send = manager.provisioner.send_signal

        async def record(signum: int) -> None:
            sent.append(signum)
            await send(signum)

        manager.provisioner.send_signal = record
        await manager.interrupt_kernel()  # asked for (a timeout): still sent
        await manager.shutdown_kernel()
        return manager.transport, sent

    transport, sent = asyncio.run(start_and_stop())
    assert transport == "ipc"
    assert sent == [signal.SIGINT], "one interrupt: the one asked for, none at shutdown"


@pytest.mark.parametrize("ename, status", [("DataError", EXIT_KIT_ERROR), ("ZeroDivisionError", 1)])
def test_the_runner_prints_a_notebooks_kit_error_and_exits_2_and_a_bug_1(
    outputs, monkeypatch, capsys, ename, status
):
    def fail(*args, **kwargs):
        raise papermill.PapermillExecutionError(0, 5, "source", ename, "what is wrong; how to fix it", [])

    monkeypatch.setattr(papermill, "execute_notebook", fail)
    assert runner.main(["--backbone", "test_resnet", "--notebooks", "01_data"]) == status
    err = capsys.readouterr().err
    assert "01_data failed in cell 5" in err and "what is wrong; how to fix it" in err
    assert (ename in err) == (status == 1), "a kit error's message alone; a bug's type too"
