"""A fake Kubernetes API server for discovery and actuator tests (a real Kubernetes cannot
run here). It serves, over a real loopback socket:

- ``GET /api/v1/namespaces/{ns}/pods`` (LIST, ``labelSelector`` with ``k=v`` terms) and the
  same with ``watch=true``: a chunked stream of JSON lines replaying the event log after the
  given ``resourceVersion`` (410 Gone as an ERROR event when it is older than the compacted
  version), then following new events, BOOKMARKs included;
- ``GET``/``PATCH /apis/apps/v1/namespaces/{ns}/{deployments|statefulsets}/{name}/scale``.

The test scripts it: add/modify/delete pods, drop every open watch, let watches go silent
(stall), refuse watches (an outage), compact the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import socket
from collections.abc import AsyncIterator, Generator
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route


def make_pod(name: str, port: int, *, ns: str = "default", ip: str = "127.0.0.1",
             ready: bool = True, labels: dict[str, str] | None = None) -> dict[str, Any]:  # fmt: skip
    return {
        "metadata": {
            "name": name,
            "namespace": ns,
            "uid": f"uid-{name}",
            "labels": {"app": "vllm", **(labels or {})},
            "annotations": {"sage-cp/port": str(port)},
        },
        "status": {
            "phase": "Running",
            "podIP": ip,
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield  # signals belong to pytest


class FakeKubeAPI:
    def __init__(self) -> None:
        self.pods: dict[str, dict[str, Any]] = {}
        self.rv = 100
        self.log: list[tuple[int, dict[str, Any]]] = []
        self.compacted_rv = 0  # a watch from an older version gets 410 Gone
        self.stalled = False  # open watches send nothing
        self.refuse_watches = False  # new watches fail with 503 (an outage)
        self.epoch = 0  # bumped to drop every open watch
        self.watch_requests: list[dict[str, str]] = []
        self.swallow_events = False  # change pods without logging the event (a lost event)
        self.list_rv_override: str | None = None  # one LIST answers this (stale) version
        self.list_requests = 0
        self.scales: dict[str, int] = {}  # "kind/ns/name" -> spec.replicas
        self.patches: list[tuple[str, Any]] = []
        self._changed = asyncio.Condition()
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None
        self.url = ""

    # -- scripting ---------------------------------------------------------------------------
    async def _emit(self, kind: str, pod: dict[str, Any]) -> None:
        self.rv += 1
        pod = copy.deepcopy(pod)
        pod["metadata"]["resourceVersion"] = str(self.rv)
        key = f"{pod['metadata']['namespace']}/{pod['metadata']['name']}"
        if kind == "DELETED":
            self.pods.pop(key, None)
        else:
            self.pods[key] = pod
        if not self.swallow_events:
            self.log.append((self.rv, {"type": kind, "object": pod}))
        async with self._changed:
            self._changed.notify_all()

    async def add(self, pod: dict[str, Any]) -> None:
        await self._emit("ADDED", pod)

    async def modify(self, pod: dict[str, Any]) -> None:
        await self._emit("MODIFIED", pod)

    async def delete(self, ns_name: str) -> None:
        await self._emit("DELETED", self.pods[ns_name])

    async def bookmark(self) -> None:
        self.rv += 1
        ev = {"type": "BOOKMARK", "object": {"kind": "Pod",
                                             "metadata": {"resourceVersion": str(self.rv)}}}  # fmt: skip
        self.log.append((self.rv, ev))
        async with self._changed:
            self._changed.notify_all()

    async def drop_watches(self) -> None:
        self.epoch += 1
        async with self._changed:
            self._changed.notify_all()

    def compact(self) -> None:
        """Forget the event log: watches from any version seen so far get 410 Gone."""
        self.compacted_rv = self.rv
        self.log.clear()

    # -- HTTP --------------------------------------------------------------------------------
    def _selected(self, pod: dict[str, Any], selector: str) -> bool:
        labels = pod["metadata"].get("labels") or {}
        for term in filter(None, selector.split(",")):
            k, _, v = term.partition("=")
            if labels.get(k) != v:
                return False
        return True

    async def pods_endpoint(self, request: Request) -> Response:
        ns = request.path_params["ns"]
        selector = request.query_params.get("labelSelector", "")
        if request.query_params.get("watch") in ("true", "1"):
            self.watch_requests.append(dict(request.query_params))
            if self.refuse_watches:
                return JSONResponse({"kind": "Status", "code": 503}, status_code=503)
            since = request.query_params.get("resourceVersion")
            return StreamingResponse(
                self._watch(ns, selector, since), media_type="application/json"
            )
        self.list_requests += 1
        items = [p for k, p in self.pods.items()
                 if k.startswith(f"{ns}/") and self._selected(p, selector)]  # fmt: skip
        rv, self.list_rv_override = self.list_rv_override or str(self.rv), None
        return JSONResponse({"kind": "PodList", "metadata": {"resourceVersion": rv},
                             "items": items})  # fmt: skip

    async def _watch(self, ns: str, selector: str, since: str | None) -> AsyncIterator[bytes]:
        start = int(since) if since else self.rv
        if since and start < self.compacted_rv:
            gone = {"type": "ERROR", "object": {"kind": "Status", "code": 410,
                                                "message": "too old resource version"}}  # fmt: skip
            yield (json.dumps(gone) + "\n").encode()
            return
        epoch, sent = self.epoch, start
        while True:
            if self.epoch != epoch:
                return  # dropped
            if not self.stalled:
                for rv, ev in self.log:
                    if rv <= sent:
                        continue
                    sent = rv
                    obj = ev["object"]
                    if ev["type"] != "BOOKMARK" and not (
                        obj["metadata"]["namespace"] == ns and self._selected(obj, selector)
                    ):
                        continue
                    yield (json.dumps(ev) + "\n").encode()
            async with self._changed:
                await self._changed.wait()

    async def scale_endpoint(self, request: Request) -> Response:
        p = request.path_params
        key = f"{p['kind']}/{p['ns']}/{p['name']}"
        if key not in self.scales:
            return JSONResponse({"kind": "Status", "code": 404}, status_code=404)
        if request.method == "PATCH":
            body = json.loads(await request.body())
            self.patches.append((request.headers.get("content-type", ""), body))
            self.scales[key] = int(body["spec"]["replicas"])
        return JSONResponse({"kind": "Scale", "metadata": {"name": p["name"], "namespace": p["ns"]},
                             "spec": {"replicas": self.scales[key]},
                             "status": {"replicas": self.scales[key]}})  # fmt: skip

    # -- lifecycle ---------------------------------------------------------------------------
    async def __aenter__(self) -> FakeKubeAPI:
        app = Starlette(routes=[
            Route("/api/v1/namespaces/{ns}/pods", self.pods_endpoint),
            Route("/apis/apps/v1/namespaces/{ns}/{kind}/{name}/scale", self.scale_endpoint,
                  methods=["GET", "PATCH"]),
        ])  # fmt: skip
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
        self._server = server = _Server(config)
        self._task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started:
            if self._task.done():
                self._task.result()
            await asyncio.sleep(0.001)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None and self._task is not None
        self._server.should_exit = self._server.force_exit = True
        await self.drop_watches()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
