"""The kit as a package: its declared dependencies, and where an installed copy puts its files.

The fast tests check helpers.paths in this checkout, under KIT_ROOT and outside a checkout. The slow ones
install the project into a fresh virtual environment, offline: the environment sees this one's packages
through a .pth file, and pip runs with --no-index --no-build-isolation, so its resolver has to accept the
installed releases as satisfying pyproject's dependencies and build with the setuptools found there.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest

from helpers import paths

CHECKOUT = Path(paths.__file__).resolve().parents[1]
KIT_VARIABLES = ("KIT_ROOT", "KIT_OUTPUTS", "KIT_DEMO_DATA", "KIT_DEMO_MULTILABEL")


@pytest.fixture
def no_kit_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in KIT_VARIABLES:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def site_packages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_kit_variables: None) -> Path:
    """helpers.paths made to believe it is installed in a site-packages folder; returns that package dir."""
    package = tmp_path / "site-packages" / "helpers"
    package.mkdir(parents=True)
    monkeypatch.setattr(paths, "PACKAGE_DIR", package)
    return package


# -- helpers.paths -------------------------------------------------------------------------------------------
def test_in_this_checkout_the_folders_derive_from_it(no_kit_variables: None) -> None:
    assert paths.is_checkout(CHECKOUT)
    assert paths.project_root() == CHECKOUT
    assert paths.notebooks_dir() == CHECKOUT / "notebooks"
    assert paths.outputs_dir() == CHECKOUT / "outputs"
    assert paths.runs_dir() == CHECKOUT / "outputs" / "runs"
    assert paths.datasets_dir() == CHECKOUT / "outputs" / "datasets"
    assert paths.demo_data_dir() == CHECKOUT / "data" / "digits"
    assert paths.resolve_path("data/mine") == CHECKOUT / "data" / "mine"
    assert paths.resolve_path("/abs/mine") == Path("/abs/mine")


def test_kit_root_moves_every_folder(tmp_path: Path, no_kit_variables: None, monkeypatch) -> None:
    monkeypatch.setenv("KIT_ROOT", str(tmp_path))
    assert paths.project_root() == tmp_path
    assert paths.notebooks_dir() == tmp_path / "notebooks"
    assert paths.outputs_dir() == tmp_path / "outputs"
    assert paths.demo_data_dir() == tmp_path / "data" / "digits"
    assert paths.resolve_path("data/mine") == tmp_path / "data" / "mine"


def test_the_specific_variables_win_over_kit_root(
    tmp_path: Path, no_kit_variables: None, monkeypatch
) -> None:
    monkeypatch.setenv("KIT_ROOT", str(tmp_path / "root"))
    monkeypatch.setenv("KIT_OUTPUTS", str(tmp_path / "out"))
    monkeypatch.setenv("KIT_DEMO_DATA", str(tmp_path / "demo"))
    assert paths.outputs_dir() == tmp_path / "out"
    assert paths.runs_dir() == tmp_path / "out" / "runs"
    assert paths.demo_data_dir() == tmp_path / "demo"


def test_a_folder_is_a_checkout_only_with_pyproject_and_notebooks(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text("")
    assert not paths.is_checkout(tmp_path)
    (tmp_path / "notebooks").mkdir()
    assert paths.is_checkout(tmp_path)


@pytest.mark.parametrize(
    ("ask", "variable"),
    [
        (paths.outputs_dir, "KIT_OUTPUTS"),
        (paths.runs_dir, "KIT_OUTPUTS"),
        (paths.datasets_dir, "KIT_OUTPUTS"),
        (paths.demo_data_dir, "KIT_DEMO_DATA"),
        (paths.multilabel_demo_dir, "KIT_DEMO_MULTILABEL"),
        (paths.notebooks_dir, "KIT_ROOT"),
        (lambda: paths.resolve_path("data/mine"), "KIT_ROOT"),
    ],
    ids=["outputs", "runs", "datasets", "demo data", "multi-label demo data", "notebooks", "relative path"],
)
def test_outside_a_checkout_asking_for_a_folder_says_what_to_set(site_packages: Path, ask, variable) -> None:
    with pytest.raises(paths.OutsideCheckoutError) as raised:
        ask()
    message = str(raised.value)
    assert "installed outside a kit checkout" in message and str(site_packages) in message
    assert variable in message


def test_outside_a_checkout_the_variables_give_the_folders(
    site_packages: Path, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setenv("KIT_OUTPUTS", str(tmp_path / "out"))
    monkeypatch.setenv("KIT_DEMO_DATA", str(tmp_path / "demo"))
    assert paths.runs_dir() == tmp_path / "out" / "runs"
    assert paths.demo_data_dir() == tmp_path / "demo"
    monkeypatch.setenv("KIT_DEMO_MULTILABEL", str(tmp_path / "demo_ml"))
    assert paths.multilabel_demo_dir() == tmp_path / "demo_ml"
    assert paths.resolve_path("/abs/mine") == Path("/abs/mine")
    monkeypatch.setenv("KIT_ROOT", str(tmp_path / "project"))
    assert paths.notebooks_dir() == tmp_path / "project" / "notebooks"


# -- installing the project ----------------------------------------------------------------------------------
def project_copy(dest: Path) -> Path:
    """The checkout's top-level files, helpers/ and notebooks/, copied: building in place would write
    build/ and egg-info folders into a working tree that others use."""
    dest.mkdir()
    for item in CHECKOUT.iterdir():
        if item.is_file():
            shutil.copy2(item, dest / item.name)
    skip = shutil.ignore_patterns("__pycache__", ".ipynb_checkpoints")
    for folder in ("helpers", "notebooks"):
        shutil.copytree(CHECKOUT / folder, dest / folder, ignore=skip)
    return dest


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without the kit's variables, Python path overrides or pip configuration."""
    drop = {*KIT_VARIABLES, "PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"}
    env = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("PIP_")}
    return {**env, "PYTHONNOUSERSITE": "1", "PIP_CONFIG_FILE": os.devnull, **extra}


def fresh_venv(where: Path) -> Path:
    """A venv from the base interpreter that sees this interpreter's packages (pip and setuptools too)
    through a .pth file; returns its python. pip installs into the new venv only: this environment's own
    imgkit-helpers is outside it, so pip leaves it alone ("Not uninstalling ... outside environment")."""
    subprocess.run([sys._base_executable, "-m", "venv", "--without-pip", str(where)], check=True, timeout=60)
    python = where / "bin" / "python"
    own = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True,
        text=True,
        check=True,
        env=clean_env(),
    ).stdout.strip()
    shared = dict.fromkeys([sysconfig.get_path("purelib"), sysconfig.get_path("platlib")])
    (Path(own) / "kit_test_base.pth").write_text("".join(f"{p}\n" for p in shared))
    return python


def pip_install(python: Path, *args: str) -> None:
    done = subprocess.run(
        [str(python), "-m", "pip", "install", "--no-index", "--no-build-isolation", *args],
        capture_output=True,
        text=True,
        env=clean_env(PIP_DISABLE_PIP_VERSION_CHECK="1"),
        timeout=300,
    )
    if done.returncode != 0:
        pytest.fail(f"pip install {' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")


def run_in(python: Path, code: str, cwd: Path, **env: str) -> str:
    """code run by python in cwd (never the checkout, whose helpers/ would shadow the installed one)."""
    done = subprocess.run(
        [str(python), "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=clean_env(**env),
        timeout=120,
    )
    assert done.returncode == 0, f"{code}\nfailed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


IMPORTS = """
    import helpers, helpers.config, helpers.train
    print(helpers.__file__)
"""
WHERE_OUTPUTS = """
    from helpers import paths
    try:
        print(paths.outputs_dir())
    except paths.OutsideCheckoutError as error:
        print("refused:", error)
"""


@pytest.mark.slow
def test_an_editable_install_accepts_the_installed_releases(tmp_path: Path) -> None:
    project = project_copy(tmp_path / "project")
    python = fresh_venv(tmp_path / "venv")
    pip_install(python, "-e", str(project))
    assert run_in(python, IMPORTS, tmp_path).strip() == str(project / "helpers" / "__init__.py")
    assert run_in(python, WHERE_OUTPUTS, tmp_path).strip() == str(project / "outputs")


@pytest.mark.slow
def test_an_installed_copy_asks_where_its_outputs_go(tmp_path: Path) -> None:
    python = fresh_venv(tmp_path / "venv")
    pip_install(python, str(project_copy(tmp_path / "project")))
    installed = Path(run_in(python, IMPORTS, tmp_path).strip()).parent
    assert installed.is_relative_to(tmp_path / "venv"), installed
    refused = run_in(python, WHERE_OUTPUTS, tmp_path).strip()
    assert refused.startswith("refused: helpers is installed outside a kit checkout"), refused
    assert str(installed) in refused and "KIT_OUTPUTS" in refused
    chosen = tmp_path / "my outputs"
    assert run_in(python, WHERE_OUTPUTS, tmp_path, KIT_OUTPUTS=str(chosen)).strip() == str(chosen)
