"""Shared fixtures: a real pip-installed third-party plugin, temp SAGE output dirs."""

from __future__ import annotations

import importlib
import subprocess
import sys
from collections.abc import Iterator
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


def pip(*args: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pip", *args, "-q", "--disable-pip-version-check"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"pip {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    importlib.invalidate_caches()


def pip_install_fixture(name: str) -> None:
    pip("install", "--no-deps", "--no-build-isolation", str(FIXTURES / name))


@pytest.fixture(scope="session")
def example_plugin() -> Iterator[str]:
    """The example plugin package, pip-installed for real (found via its entry point)."""
    from sage_cp_plugin.plugins import get_registry

    pip_install_fixture("example_plugin")
    get_registry(reload=True)
    yield "sage-cp-example-plugin"
    get_registry(reload=True)


@pytest.fixture(autouse=True)
def _sage_output_dir(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # SAGE's LocalEnvironment writes under ~/.sage unless told otherwise.
    monkeypatch.setenv("SAGE_OUTPUT_DIR", str(tmp_path_factory.getbasetemp() / "sage-output"))
