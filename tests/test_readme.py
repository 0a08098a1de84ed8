"""The README's Python snippets run as written, as scripts, each in a fresh interpreter.

The quick start talks to `sage-cp sim --instances 2 --port 8000`; here the test starts the
same two simulated instances on free ports and changes only the two port numbers in the
snippet (fixed ports would collide with anything else on the machine). Every other snippet
runs exactly as printed, in an empty temporary folder.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

from sage_cp_plugin.sim import SimFleetThread, SimInstanceConfig

README = Path(__file__).resolve().parents[1] / "README.md"


def python_snippets() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)


def run_script(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    script = cwd / "snippet.py"
    script.write_text(code)
    return subprocess.run(
        [sys.executable, str(script)], cwd=cwd, capture_output=True, text=True, timeout=300
    )


def test_readme_has_the_snippets_this_file_runs() -> None:
    snippets = python_snippets()
    assert len(snippets) == 5, "a README python snippet was added or removed: run it here too"
    assert "port=8000" in snippets[0] and "open_control_plane" in snippets[1]


def test_quick_start_against_two_simulated_instances(tmp_path: Path) -> None:
    code = python_snippets()[0]
    configs = [SimInstanceConfig(time_scale=0.01, seed=i) for i in range(2)]
    with SimFleetThread(configs) as fleet:
        ports = [int(u.rsplit(":", 1)[1]) for u in fleet.urls]
        code = code.replace("port=8000", f"port={ports[0]}").replace(
            "port=8001", f"port={ports[1]}"
        )
        res = run_script(code, tmp_path)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0].startswith("completed ")  # state, output, timings of the waited request
    assert "total_requests=3" in res.stdout.replace(" ", "")


def test_embedded_fleet_snippet(tmp_path: Path) -> None:
    res = run_script(python_snippets()[1], tmp_path)
    assert res.returncode == 0, res.stderr
    first, second = res.stdout.splitlines()[:2]
    assert "completed" in first
    vector = ast.literal_eval(second)  # the first four numbers of an embedding, as printed
    assert len(vector) == 4 and all(isinstance(x, float) for x in vector)


def test_kubernetes_autoscaling_snippet_says_what_is_missing_outside_a_cluster(
    tmp_path: Path,
) -> None:
    # No Kubernetes here: the snippet must fail with the reason, not a traceback elsewhere.
    res = run_script(python_snippets()[3], tmp_path)
    assert res.returncode != 0
    assert "in_cluster=True but KUBERNETES_SERVICE_HOST is not set" in res.stderr


@pytest.mark.parametrize("index", [2, 4], ids=["sage_pipeline", "plugin_module"])
def test_other_snippets_run(index: int, tmp_path: Path) -> None:
    code = python_snippets()[index]
    res = run_script(code, tmp_path)
    assert res.returncode == 0, res.stderr
    if index == 2:  # the SAGE pipeline writes one answer per input line
        out = (tmp_path / "out.jsonl").read_text().splitlines()
        assert len(out) == 2
