"""Kubernetes discovery against a fake API server (tests/k8s_fake.py; a real Kubernetes cannot
run here) and real simulated vLLM servers on loopback behind the pods.

Every case ends the same way: the coordinator's fleet equals the ready pods (converged), and
requests sent after convergence never ran on a deleted pod.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from sage_cp_plugin import ControlPlaneManager
from sage_cp_plugin.elastic.kubernetes import KubernetesPodSource
from sage_cp_plugin.sim.config import SimInstanceConfig
from sage_cp_plugin.sim.fleet import SimFleet
from tests.helpers import wait_until
from tests.k8s_fake import FakeKubeAPI, make_pod

# Short periods keep the test quick; convergence is waited for, never timed.
RELIST_S = 1.0
STALL_S = 0.5


class Cluster:
    def __init__(self, api: FakeKubeAPI, sims: SimFleet, cp: ControlPlaneManager) -> None:
        self.api, self.sims, self.cp = api, sims, cp

    @property
    def source(self) -> KubernetesPodSource:
        assert self.cp.elastic is not None
        src = self.cp.elastic.sources[0]
        assert isinstance(src, KubernetesPodSource)
        return src

    def routable(self) -> dict[str, str]:
        """instance id -> base URL of what the coordinator may send new requests to."""
        return {s.instance_id: s.instance.base_url for s in self.cp.fleet.states.values()
                if not s.draining and s.healthy}  # fmt: skip

    def truth(self) -> dict[str, str]:
        out = {}
        for key, pod in self.api.pods.items():
            conds = pod["status"]["conditions"]
            if pod["metadata"]["labels"]["app"] != "vllm":
                continue
            if pod["metadata"].get("deletionTimestamp") or conds[0]["status"] != "True":
                continue
            port = pod["metadata"]["annotations"]["sage-cp/port"]
            out[key] = f"http://{pod['status']['podIP']}:{port}"
        return out

    async def converged(self, what: str) -> None:
        await wait_until(lambda: self.routable() == self.truth(), what)

    async def requests_avoid(self, gone: set[str], n: int = 12) -> None:
        results = [await self.cp.generate("hello", model_name="sim-model", max_tokens=2)
                   for _ in range(n)]  # fmt: skip
        assert all(r.status.value == "completed" for r in results), [r.error for r in results]
        used = {r.instance_id for r in results}
        assert used and not (used & gone), f"requests ran on {used}, deleted: {gone}"


@pytest.fixture
async def cluster() -> AsyncIterator[Cluster]:
    async with FakeKubeAPI() as api, SimFleet([SimInstanceConfig(time_scale=0, seed=i)
                                              for i in range(4)]) as sims:  # fmt: skip
        options: dict[str, Any] = {
            "api_url": api.url,
            "namespace": "default",
            "label_selector": "app=vllm",
            "relist_interval_s": RELIST_S,
            "stall_timeout_s": STALL_S,
            "retry_backoff_s": 0.05,
        }
        cp = ControlPlaneManager(
            enable_monitoring=False,
            discovery=[{"source": "kubernetes", "options": options}],
            discovery_interval_s=0.05,
        )
        await api.add(make_pod("a", sims[0].port))
        await api.add(make_pod("b", sims[1].port))
        await cp.start()
        try:
            yield Cluster(api, sims, cp)
        finally:
            await cp.stop()


async def test_list_then_watch_adds_modifies_and_deletes(cluster: Cluster) -> None:
    api, cp = cluster.api, cluster.cp
    await cluster.converged("the two listed pods")
    assert set(cp.fleet.states) == {"default/a", "default/b"}
    assert cp.fleet.states["default/a"].instance.served_models == ["sim-model"]  # /v1/models
    # Not ready yet: stays out; Ready: comes in; another app's pod: ignored.
    await api.add(make_pod("c", cluster.sims[2].port, ready=False))
    await api.add(make_pod("x", cluster.sims[3].port, labels={"app": "other"}))
    await cluster.converged("c not ready")
    assert "default/c" not in cp.fleet.states and "default/x" not in cp.fleet.states
    await api.modify(make_pod("c", cluster.sims[2].port))
    await cluster.converged("c ready")
    # A bookmark only advances the version.
    await api.bookmark()
    await wait_until(lambda: cluster.source.resource_version == str(api.rv), "bookmark seen")
    # Terminating (deletionTimestamp) leaves routing before the DELETED event.
    term = make_pod("b", cluster.sims[1].port)
    term["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    await api.modify(term)
    await cluster.converged("b terminating")
    await api.delete("default/b")
    await cluster.converged("b deleted")
    await wait_until(lambda: "default/b" not in cp.fleet.states, "b unregistered once idle")
    await cluster.requests_avoid({"default/b"})


async def test_deleted_during_a_dropped_watch_is_repaired_by_the_relist(cluster: Cluster) -> None:
    api = cluster.api
    await cluster.converged("start")
    api.refuse_watches = True
    await api.drop_watches()
    await api.delete("default/a")  # happens while no watch is open
    api.compact()  # and the history is gone: only a LIST can tell
    lists = cluster.source.lists
    api.refuse_watches = False
    await cluster.converged("a gone after the outage")
    assert cluster.source.lists > lists
    await cluster.requests_avoid({"default/a"})


async def test_410_gone_relists(cluster: Cluster) -> None:
    api = cluster.api
    await cluster.converged("start")
    # The next LIST answers a version older than the compacted history (a lagging cache):
    # its watch gets 410 Gone and must LIST again rather than trust that version.
    api.compact()
    api.list_rv_override = "1"
    await api.delete("default/b")
    await api.drop_watches()
    await wait_until(lambda: "410 gone" in cluster.source.relist_reasons, "a 410 Gone")
    await cluster.converged("b gone after 410")
    await cluster.requests_avoid({"default/b"})


async def test_silently_stalled_watch_relists(cluster: Cluster) -> None:
    api = cluster.api
    await cluster.converged("start")
    api.stalled = True  # the connection stays open, nothing arrives
    await api.delete("default/a")
    await api.add(make_pod("c", cluster.sims[2].port))
    await cluster.converged("view repaired despite the stall")
    assert "stalled" in cluster.source.relist_reasons
    await cluster.requests_avoid({"default/a"})


async def test_lost_event_repaired_by_periodic_relist(cluster: Cluster) -> None:
    api, src = cluster.api, cluster.source
    await cluster.converged("start")
    src.stall_timeout_s = 60.0  # only the periodic re-LIST may repair this one
    lists = src.lists
    await wait_until(lambda: src.lists > lists, "a watch opened with the long stall timeout")
    src.relist_reasons.clear()
    api.swallow_events = True  # the DELETED is never sent, the watch looks healthy
    await api.delete("default/b")
    api.swallow_events = False
    await cluster.converged("b gone by the periodic re-LIST")
    assert set(src.relist_reasons) == {"periodic"}
    await cluster.requests_avoid({"default/b"})


async def test_pod_ip_change_moves_the_instance(cluster: Cluster) -> None:
    api, cp = cluster.api, cluster.cp
    await cluster.converged("start")
    old = cp.fleet.states["default/a"].instance.base_url
    await api.modify(make_pod("a", cluster.sims[2].port))  # same pod, new address
    await cluster.converged("a at its new address")
    assert cp.fleet.states["default/a"].instance.base_url != old
    await cluster.sims.kill(0)  # the old address is dead: nothing may go there
    await cluster.requests_avoid(set())


async def test_pod_whose_server_does_not_answer_stays_out(cluster: Cluster) -> None:
    api, cp = cluster.api, cluster.cp
    await cluster.converged("start")
    await cluster.sims.kill(3)
    await api.add(make_pod("d", cluster.sims[3].port))
    await wait_until(lambda: "default/d" in cp.elastic.reconciler.pending, "d pending")  # type: ignore[union-attr]
    assert "default/d" not in cp.fleet.states
    await cluster.sims.restart(3)
    await wait_until(lambda: "default/d" in cluster.routable(), "d enters once it answers")
