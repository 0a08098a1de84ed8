"""`operators` and `entrypoints` ship only as sub-packages of sage_cp_plugin.

Both names belong to other PyPI projects: an install of ours must never shadow them.
Checked for the editable install the tests run under and for a built wheel, and the
wheel's layout is checked to resolve under a type checker.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(code: str, cwd: Path, env_path: str | None = None) -> subprocess.CompletedProcess[str]:
    env = None
    if env_path is not None:
        import os

        env = {**os.environ, "PYTHONPATH": env_path}
    return subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=120, env=env
    )


def test_editable_install_imports_subpackages_not_top_level(tmp_path: Path) -> None:
    ok = run(
        "import sage_cp_plugin.operators as o, sage_cp_plugin.entrypoints.cli as c; "
        "print(o.__name__, c.__name__)",
        tmp_path,
    )
    assert ok.returncode == 0, ok.stderr
    assert "sage_cp_plugin.operators sage_cp_plugin.entrypoints.cli" in ok.stdout
    for top in ("operators", "entrypoints"):
        res = run(f"import {top}", tmp_path)
        assert res.returncode != 0 and "No module named" in res.stderr, (top, res.stdout)


def test_every_subpackage_is_listed_in_pyproject() -> None:
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(cfg["packages"])
    on_disk = {
        "sage_cp_plugin." + ".".join(p.parent.relative_to(ROOT / "sage_cp_plugin").parts)
        for p in (ROOT / "sage_cp_plugin").rglob("__init__.py")
        if p.parent != ROOT / "sage_cp_plugin"
    } | {"sage_cp_plugin", "sage_cp_plugin.operators", "sage_cp_plugin.entrypoints"}
    on_disk |= {
        f"sage_cp_plugin.{top}." + ".".join(p.parent.relative_to(ROOT / top).parts)
        for top in ("operators", "entrypoints")
        for p in (ROOT / top).rglob("__init__.py")
        if p.parent != ROOT / top
    }
    assert on_disk <= listed, f"add to [tool.setuptools].packages: {sorted(on_disk - listed)}"


def source_copy(dest: Path) -> Path:
    """What the build reads, copied so that building leaves no build/ or egg-info in the tree."""
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "build")
    for name in ("sage_cp_plugin", "operators", "entrypoints"):
        shutil.copytree(ROOT / name, dest / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, dest / name)
    return dest


def test_wheel_contains_and_imports_subpackages(tmp_path: Path) -> None:
    out = tmp_path / "dist"
    src = source_copy(tmp_path / "src")
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(out),
            str(src),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stderr
    wheel = next(out.glob("sage_cp_plugin-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "sage_cp_plugin/operators/__init__.py" in names
    assert "sage_cp_plugin/entrypoints/cli.py" in names
    assert not any(n.startswith(("operators/", "entrypoints/")) for n in names)
    for trace in ("azure_conv_2023.csv", "azure_code_2023.csv", "mooncake_synthetic.jsonl"):
        assert f"sage_cp_plugin/workloads/data/{trace}" in names
    assert "sage_cp_plugin/workloads/data/README.md" in names  # their licences travel with them
    site = tmp_path / "site"
    inst = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "-q",
            "--target",
            str(site),
            str(wheel),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert inst.returncode == 0, inst.stderr
    res = run(
        "import sage_cp_plugin.operators as o, sage_cp_plugin.entrypoints.cli as c; print(o.__file__)",
        tmp_path,
        env_path=str(site),
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().startswith(str(site))
    # The installed package finds its bundled traces from any working directory.
    res = run(
        "from sage_cp_plugin.workloads import load_trace, resolve_trace; "
        "print(resolve_trace('azure_conv'), len(load_trace('mooncake', limit=7)))",
        tmp_path,
        env_path=str(site),
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith(str(site)) and res.stdout.split()[-1] == "7"
    # A type checker resolves the installed sub-packages (mypy reads the wheel's files).
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import sage_cp_plugin.operators\nimport sage_cp_plugin.entrypoints.cli\n"
        "reveal_type(sage_cp_plugin.entrypoints.cli.main)\n"
    )
    import os

    mypy = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--no-incremental",
            "--ignore-missing-imports",
            "--follow-imports=silent",
            str(probe),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "MYPYPATH": str(site)},
    )
    assert "def (argv:" in mypy.stdout, mypy.stdout + mypy.stderr
    assert "import-not-found" not in mypy.stdout
