"""Shared fixtures: real pip-installed third-party plugins (in temporary folders, never in the
venv), temp SAGE output dirs."""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"


def console_script(name: str) -> str:
    """Path of a console script installed into the running interpreter's environment
    (CI runs the suite without activating the venv, so PATH does not have it)."""
    path = Path(sys.executable).parent / name
    if not path.exists():
        raise FileNotFoundError(
            f"{name} is not installed next to {sys.executable}; pip install -e '.[dev]'"
        )
    return str(path)


def pip_install_target(name: str, target: Path) -> Path:
    """A real pip install of ``tests/fixtures/<name>`` into ``target``, not into the venv.

    The fixture is copied first because an in-tree build writes build/ and egg-info next to
    its sources. ``target`` then holds the package and its ``*.dist-info`` (with the entry
    points), exactly what an install into site-packages holds.
    """
    source = target.parent / f"{name}-src"
    shutil.copytree(FIXTURES / name, source, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "-q",
            "--disable-pip-version-check",
            "--target",
            str(target),
            str(source),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"pip install of {name} failed:\n{proc.stdout}\n{proc.stderr}")
    return target


@contextmanager
def plugins_on_path(*targets: Path) -> Iterator[None]:
    """Make distributions installed in ``targets`` visible to this process (sys.path is what
    importlib.metadata searches for entry points) and forget them afterwards."""
    from sage_cp_plugin.plugins import get_registry

    before = set(sys.modules)
    sys.path[:0] = [str(t) for t in targets]
    importlib.invalidate_caches()
    get_registry(reload=True)
    try:
        yield
    finally:
        for t in targets:
            sys.path.remove(str(t))
        for mod in set(sys.modules) - before:
            if mod.startswith("sage_cp_") and not mod.startswith("sage_cp_plugin"):
                del sys.modules[mod]
        importlib.invalidate_caches()
        get_registry(reload=True)


def subprocess_env(*targets: Path) -> dict[str, str]:
    """The environment of a child process that should see distributions in ``targets``."""
    paths = [str(t) for t in targets]
    if os.environ.get("PYTHONPATH"):
        paths.append(os.environ["PYTHONPATH"])
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}


@pytest.fixture(scope="session")
def example_plugin_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example plugin package, pip-installed for real into a temporary folder."""
    return pip_install_target("example_plugin", tmp_path_factory.mktemp("plugins") / "site")


@pytest.fixture()
def example_plugin(example_plugin_site: Path) -> Iterator[str]:
    """The example plugin visible to this test (found via its entry point), gone afterwards."""
    with plugins_on_path(example_plugin_site):
        yield "sage-cp-example-plugin"


@pytest.fixture(autouse=True)
def _sage_output_dir(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # SAGE's LocalEnvironment writes under ~/.sage unless told otherwise.
    monkeypatch.setenv("SAGE_OUTPUT_DIR", str(tmp_path_factory.getbasetemp() / "sage-output"))
