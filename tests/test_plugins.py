"""The plugin system, through real pip-installed packages and their entry points."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from sage_cp_plugin import ControlPlaneManager
from sage_cp_plugin.errors import PluginConflictError, UnknownPluginError
from sage_cp_plugin.plugins import get_registry
from sage_cp_plugin.policies import BUILTIN_POLICIES
from sage_cp_plugin.routing import BUILTIN_ROUTERS
from tests.conftest import console_script, pip_install_target, plugins_on_path, subprocess_env
from tests.helpers import item, order


def test_builtins_are_registered_through_the_hooks() -> None:
    reg = get_registry(reload=True)
    assert set(BUILTIN_POLICIES) <= set(reg.names("policy"))
    assert set(BUILTIN_ROUTERS) <= set(reg.names("router"))
    assert reg.get("policy", "fifo").distribution == "sage-cp-plugin"
    assert reg.get("router", "prefix_aware").plugin == "builtin"


def test_unknown_names_list_the_available_ones() -> None:
    with pytest.raises(UnknownPluginError) as err:
        ControlPlaneManager(scheduling_policy="fastest_possible")
    msg = str(err.value)
    assert "fastest_possible" in msg
    for name in BUILTIN_POLICIES:
        assert name in msg
    with pytest.raises(UnknownPluginError, match=r"round_robin"):
        ControlPlaneManager(routing_strategy="telepathy")
    with pytest.raises(UnknownPluginError, match="unknown parallelism strategy 'magic'"):
        get_registry().get("parallelism strategy", "magic")


def test_example_plugin_is_found_by_entry_point_and_selected_by_name(example_plugin: str) -> None:
    reg = get_registry()
    entry = reg.get("policy", "shortest_prompt_first")
    assert entry.distribution == example_plugin
    assert reg.get("router", "fewest_tokens").distribution == example_plugin
    m = ControlPlaneManager(
        scheduling_policy="shortest_prompt_first", routing_strategy="fewest_tokens"
    )
    assert type(m.scheduling_policy).__module__ == "sage_cp_example_plugin"
    # Its ordering really applies: shortest prompt first, whatever the arrival order.
    items = [item(1, prompt="x " * 400), item(2, prompt="short"), item(3, prompt="y " * 40)]
    assert order(m.scheduling_policy, items) == ["r2", "r3", "r1"]


@pytest.fixture()
def broken_and_clashing(example_plugin_site: Path, tmp_path: Path) -> Iterator[list[Path]]:
    sites = [
        example_plugin_site,
        pip_install_target("broken_plugin", tmp_path / "broken"),
        pip_install_target("clashing_plugin", tmp_path / "clashing"),
    ]
    with plugins_on_path(*sites):
        yield sites


def test_broken_and_clashing_plugins_are_reported_and_isolated(
    broken_and_clashing: list[Path],
) -> None:
    reg = get_registry()
    failure = next(f for f in reg.failures if f.distribution == "sage-cp-broken-plugin")
    assert "a_module_that_does_not_exist" in failure.error
    assert "broken" in str(failure)
    # Everything else still works, including the other third-party plugin.
    assert reg.get("policy", "shortest_prompt_first").distribution == "sage-cp-example-plugin"
    assert reg.get("policy", "clash_free_policy").distribution == "sage-cp-clashing-plugin"
    ControlPlaneManager(scheduling_policy="fifo")
    with pytest.raises(PluginConflictError) as err:
        ControlPlaneManager(scheduling_policy="popular_policy")
    assert "sage-cp-example-plugin" in str(err.value)
    assert "sage-cp-clashing-plugin" in str(err.value)
    # The CLI shows the failure and the conflict too.
    out = subprocess.run(
        [sys.executable, "-m", "sage_cp_plugin.entrypoints.cli", "plugins", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env=subprocess_env(*broken_and_clashing),
    ).stdout
    data = json.loads(out)
    assert any(f["distribution"] == "sage-cp-broken-plugin" for f in data["failures"])
    assert {r["status"] for r in data["plugins"] if r["name"] == "popular_policy"} == {"conflict"}


def test_sage_cp_plugins_lists_names_with_distributions(example_plugin_site: Path) -> None:
    out = subprocess.run(
        [console_script("sage-cp"), "plugins"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env=subprocess_env(example_plugin_site),
    ).stdout
    lines = out.splitlines()
    for name in [*BUILTIN_POLICIES, *BUILTIN_ROUTERS]:
        assert any(line.split()[1:2] == [name] and "sage-cp-plugin" in line for line in lines), name
    assert any(
        "shortest_prompt_first" in line and "sage-cp-example-plugin" in line for line in lines
    )
