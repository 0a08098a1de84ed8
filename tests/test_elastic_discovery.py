"""Static and file discovery sources, the reconciler, and the plugin hook, over real
simulated vLLM servers on loopback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sage_cp_plugin import ControlPlaneManager, ExecutionInstance, RequestMetadata
from sage_cp_plugin.elastic.reconciler import FleetReconciler
from sage_cp_plugin.errors import ConfigurationError, UnknownPluginError
from sage_cp_plugin.plugins.registry import get_registry
from sage_cp_plugin.sim.config import SimInstanceConfig
from sage_cp_plugin.sim.fleet import SimFleet
from tests.helpers import wait_until


def _row(iid: str, port: int) -> dict[str, object]:
    return {"instance_id": iid, "host": "127.0.0.1", "port": port}


def routable(cp: ControlPlaneManager) -> set[str]:
    return {s.instance_id for s in cp.fleet.states.values() if not s.draining}


def test_builtin_sources_are_registered_through_the_hook() -> None:
    assert {"static", "file", "kubernetes"} <= set(get_registry().names("discovery source"))
    with pytest.raises(UnknownPluginError):
        ControlPlaneManager(discovery=[{"source": "consul"}])
    with pytest.raises(ConfigurationError, match="label_selector"):
        ControlPlaneManager(discovery=[{"source": "kubernetes",
                                        "options": {"api_url": "http://127.0.0.1:1"}}])  # fmt: skip


async def test_file_source_adds_and_drains_on_change(tmp_path: Path) -> None:
    path = tmp_path / "fleet.json"
    async with SimFleet([SimInstanceConfig(time_scale=0, seed=i) for i in range(3)]) as sims:
        path.write_text(json.dumps([_row("a", sims[0].port), _row("b", sims[1].port)]))
        cp = ControlPlaneManager(
            enable_monitoring=False,
            discovery=[{"source": "file", "options": {"path": str(path), "interval_s": 0.05}}],
            discovery_interval_s=0.05,
        )
        await cp.start()
        try:
            await wait_until(lambda: routable(cp) == {"a", "b"}, "file fleet")
            # served_models came from /v1/models since the file did not name any.
            assert cp.fleet.states["a"].instance.served_models == ["sim-model"]
            path.write_text(json.dumps({"instances": [_row("b", sims[1].port),
                                                      _row("c", sims[2].port)]}))  # fmt: skip
            await wait_until(lambda: routable(cp) == {"b", "c"}, "a removed, c added")
            await wait_until(lambda: "a" not in cp.fleet.states, "a unregistered")
            # A half-written file keeps the last good view.
            path.write_text('[{"instance_id": ')
            before = cp.elastic.reconciler.views["file"]  # type: ignore[union-attr]
            r = await cp.generate("hi", model_name="sim-model", max_tokens=2)
            assert r.instance_id in {"b", "c"}
            assert cp.elastic.reconciler.views["file"] is before  # type: ignore[union-attr]
            assert routable(cp) == {"b", "c"}
        finally:
            await cp.stop()


async def test_static_source_leaves_admin_instances_alone() -> None:
    async with SimFleet([SimInstanceConfig(time_scale=0, seed=i) for i in range(2)]) as sims:
        cp = ControlPlaneManager(
            enable_monitoring=False,
            discovery=[{"source": "static", "options": {"instances": [_row("s", sims[0].port)]}}],
        )
        cp.register_instance(ExecutionInstance(
            instance_id="manual", host="127.0.0.1", port=sims[1].port,
            served_models=["sim-model"]))  # fmt: skip
        await cp.start()
        try:
            await wait_until(lambda: routable(cp) == {"s", "manual"}, "static + manual")
            assert set(cp.elastic.reconciler.owned) == {"s"}  # type: ignore[union-attr]
        finally:
            await cp.stop()


async def test_vanished_instance_drains_before_it_is_removed() -> None:
    async with SimFleet([SimInstanceConfig(time_scale=1.0, seed=0)]) as sims:
        cp = ControlPlaneManager(enable_monitoring=False)
        rec = FleetReconciler(cp)
        await cp.start()
        try:
            inst = ExecutionInstance(instance_id="v", host="127.0.0.1", port=sims[0].port)
            await rec.publish("t", {"v": inst})
            assert routable(cp) == {"v"}
            rid = await cp.submit_request(
                RequestMetadata(
                    request_id="long", prompt="x", model_name="sim-model", max_tokens=64
                )
            )
            await wait_until(lambda: cp.fleet.states["v"].in_flight == 1, "request running")
            await rec.publish("t", {})
            assert cp.fleet.states["v"].draining  # no new request, the running one goes on
            result = await cp.wait(rid, timeout=60)
            assert result.status.value == "completed"
            await rec.reconcile()
            assert "v" not in cp.fleet.states
        finally:
            await cp.stop()
