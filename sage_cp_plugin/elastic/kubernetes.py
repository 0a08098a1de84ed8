"""Kubernetes pods as a discovery source, over the API server's REST interface (httpx).

The informer pattern, written out because the failures are in its details (production-stack
#656, #999, #1091; sglang #32322):
- LIST the pods matching the label selector, remember the list's ``resourceVersion``;
- WATCH from that version with ``allowWatchBookmarks``; BOOKMARK events only advance the
  version; ADDED/MODIFIED/DELETED update the view, keyed by ``namespace/name`` so a DELETED
  event carrying no IP still finds its pod;
- LIST again, from scratch, when the watch says 410 Gone (the version was compacted), when
  the connection drops (events during the outage are lost, a DELETED among them), when the
  stream has been silent longer than ``stall_timeout_s`` (a watch can go stale without an
  error), and every ``relist_interval_s`` regardless. The full view is published after every
  change, so a lost event is repaired by the next LIST at the latest.

A pod is offered to the fleet when it is Running, its Ready condition is True, it is not
terminating (no ``deletionTimestamp``) and it has an IP. Whether its server answers
``/v1/models`` is checked by the reconciler before the instance enters routing.

We use httpx (already a dependency, also the executor's client) rather than
kubernetes_asyncio: four GET requests and one PATCH do not justify a generated client of
several megabytes plus aiohttp. In a pod, the API URL, token and CA come from the service
account (``in_cluster=True``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

import httpx

from sage_cp_plugin.elastic.discovery import Publish, Snapshot
from sage_cp_plugin.errors import ConfigurationError
from sage_cp_plugin.types import ExecutionInstance, ExecutionInstanceType

logger = logging.getLogger(__name__)

_SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
ROLE_LABEL = "sage-cp/role"  # general | prefill | decode
PORT_ANNOTATION = "sage-cp/port"  # overrides the source's port for one pod
MODEL_ANNOTATION = "sage-cp/model"  # optional; else the models /v1/models lists


class WatchExpired(Exception):
    """The API server said 410 Gone: the resourceVersion is too old; LIST again."""


def api_client(
    api_url: str | None = None,
    *,
    token: str | None = None,
    in_cluster: bool = False,
    verify: bool | str = True,
    timeout_s: float = 10.0,
) -> httpx.AsyncClient:
    """An httpx client for the API server: explicit URL/token, or the pod's service account."""
    if in_cluster:
        host, port = (
            os.environ.get("KUBERNETES_SERVICE_HOST"),
            os.environ.get("KUBERNETES_SERVICE_PORT", "443"),
        )
        if not host:
            raise ConfigurationError("in_cluster=True but KUBERNETES_SERVICE_HOST is not set")
        api_url = f"https://{host}:{port}"
        with open(f"{_SA_DIR}/token") as f:
            token = f.read().strip()
        verify = f"{_SA_DIR}/ca.crt"
    if not api_url:
        raise ConfigurationError("kubernetes: give api_url, or in_cluster=True inside a pod")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.AsyncClient(
        base_url=api_url.rstrip("/"), headers=headers, verify=verify, timeout=timeout_s
    )


def pod_key(pod: dict[str, Any]) -> str:
    md = pod.get("metadata") or {}
    return f"{md.get('namespace', '')}/{md.get('name', '')}"


def pod_ready(pod: dict[str, Any]) -> bool:
    """Running, Ready=True, not terminating, and addressable."""
    md, status = pod.get("metadata") or {}, pod.get("status") or {}
    if md.get("deletionTimestamp") or status.get("phase") != "Running" or not status.get("podIP"):
        return False
    return any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in status.get("conditions") or []
    )


class KubernetesPodSource:
    """Pods matching ``label_selector`` in ``namespace`` ("" = all namespaces)."""

    def __init__(
        self,
        *,
        label_selector: str,
        namespace: str = "default",
        port: int = 8000,
        api_url: str | None = None,
        token: str | None = None,
        in_cluster: bool = False,
        verify: bool | str = True,
        relist_interval_s: float = 300.0,
        stall_timeout_s: float = 90.0,
        watch_timeout_s: int = 240,
        retry_backoff_s: float = 1.0,
        max_concurrent_requests: int = 100,
        name: str = "kubernetes",
        client: httpx.AsyncClient | None = None,
    ) -> None:
        if not label_selector:
            raise ConfigurationError("kubernetes discovery: label_selector is required")
        for what, v in (("relist_interval_s", relist_interval_s),
                        ("stall_timeout_s", stall_timeout_s)):  # fmt: skip
            if v <= 0:
                raise ConfigurationError(f"kubernetes discovery: {what} must be > 0, got {v}")
        self.name = name
        self.label_selector = label_selector
        self.namespace = namespace
        self.port = port
        self.relist_interval_s = relist_interval_s
        self.stall_timeout_s = stall_timeout_s
        self.watch_timeout_s = watch_timeout_s
        self.retry_backoff_s = retry_backoff_s
        self.max_concurrent_requests = max_concurrent_requests
        self._client = client or api_client(api_url, token=token, in_cluster=in_cluster,
                                            verify=verify)  # fmt: skip
        self.pods: dict[str, dict[str, Any]] = {}  # namespace/name -> last pod object seen
        self.resource_version = ""
        # Counters a test or an operator reads to see what happened.
        self.lists = 0
        self.relist_reasons: deque[str] = deque(maxlen=64)

    @property
    def _path(self) -> str:
        return f"/api/v1/namespaces/{self.namespace}/pods" if self.namespace else "/api/v1/pods"

    # -- the view ----------------------------------------------------------------------------
    def snapshot(self) -> Snapshot:
        out: Snapshot = {}
        for key, pod in self.pods.items():
            if pod_ready(pod):
                out[key] = self.instance_of(key, pod)
        return out

    def instance_of(self, key: str, pod: dict[str, Any]) -> ExecutionInstance:
        md, status = pod.get("metadata") or {}, pod.get("status") or {}
        labels, notes = md.get("labels") or {}, md.get("annotations") or {}
        role = labels.get(ROLE_LABEL, "general")
        try:
            itype = ExecutionInstanceType(role)
        except ValueError:
            logger.warning("pod %s: unknown %s=%r, treated as general", key, ROLE_LABEL, role)
            itype = ExecutionInstanceType.GENERAL
        model = notes.get(MODEL_ANNOTATION, "")
        return ExecutionInstance(
            instance_id=key,
            host=status["podIP"],
            port=int(notes.get(PORT_ANNOTATION, self.port)),
            model_name=model,
            served_models=[model] if model else [],
            instance_type=itype,
            max_concurrent_requests=self.max_concurrent_requests,
            metadata={"discovered_by": self.name, "pod_uid": md.get("uid")},
        )

    # -- LIST and WATCH ----------------------------------------------------------------------
    async def list_pods(self) -> None:
        resp = await self._client.get(self._path, params={"labelSelector": self.label_selector})
        resp.raise_for_status()
        body = resp.json()
        self.pods = {pod_key(p): p for p in body.get("items") or []}
        self.resource_version = (body.get("metadata") or {}).get("resourceVersion", "")
        self.lists += 1

    async def _events(self, deadline: float) -> AsyncIterator[dict[str, Any]]:
        """Watch events until the stream ends, stalls, or ``deadline`` (the next re-LIST)."""
        loop = asyncio.get_running_loop()
        params = {
            "watch": "true",
            "labelSelector": self.label_selector,
            "resourceVersion": self.resource_version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(self.watch_timeout_s),
        }
        timeout = httpx.Timeout(10.0, read=None)
        async with self._client.stream("GET", self._path, params=params, timeout=timeout) as r:
            if r.status_code == 410:
                raise WatchExpired("watch answered 410 Gone")
            r.raise_for_status()
            lines = r.aiter_lines()
            while True:
                left = deadline - loop.time()
                if left <= 0:
                    self.relist_reasons.append("periodic")
                    return
                try:
                    line = await asyncio.wait_for(anext(lines), min(left, self.stall_timeout_s))
                except StopAsyncIteration:
                    self.relist_reasons.append("stream ended")
                    return
                except TimeoutError:
                    if loop.time() < deadline:
                        self.relist_reasons.append("stalled")
                    else:
                        self.relist_reasons.append("periodic")
                    return
                if line.strip():
                    yield json.loads(line)

    def apply_event(self, event: dict[str, Any]) -> bool:
        """Apply one watch event; True when the view of pods changed."""
        kind, obj = event.get("type"), event.get("object") or {}
        if kind == "ERROR":
            if obj.get("code") == 410:
                raise WatchExpired(obj.get("message", "410 Gone"))
            raise httpx.HTTPError(f"watch error event: {obj}")
        rv = (obj.get("metadata") or {}).get("resourceVersion")
        if rv:
            self.resource_version = rv
        if kind == "BOOKMARK":
            return False
        key = pod_key(obj)
        if kind == "DELETED":
            return self.pods.pop(key, None) is not None
        if kind in ("ADDED", "MODIFIED"):
            self.pods[key] = obj
            return True
        logger.warning("kubernetes watch: ignoring event type %r", kind)
        return False

    async def run(self, publish: Publish) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                await self.list_pods()
                await publish(self.snapshot())
                deadline = loop.time() + self.relist_interval_s
                async for event in self._events(deadline):
                    if self.apply_event(event):
                        await publish(self.snapshot())
                # The watch ended (periodic, dropped, stalled): LIST again.
            except WatchExpired as exc:
                self.relist_reasons.append("410 gone")
                logger.info("kubernetes discovery %s: %s; listing again", self.name, exc)
            except (httpx.HTTPError, ValueError) as exc:
                self.relist_reasons.append("error")
                logger.warning("kubernetes discovery %s: %s; listing again in %.1f s",
                               self.name, exc, self.retry_backoff_s)  # fmt: skip
                await asyncio.sleep(self.retry_backoff_s)

    async def aclose(self) -> None:
        await self._client.aclose()
