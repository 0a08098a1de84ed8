"""HTTP execution against vLLM's OpenAI server (the document's `ExecutionCoordinator`).

Attempts go through `upstream_http.py` (`http_backend="httptools"`, the default): a
keep-alive pool of asyncio protocols per instance whose parser hands each streamed piece to
the attempt's stream parser inside the read callback (about half the gateway's CPU per
request went to aiohttp's per-read work and task wake-ups; gateway_cpu_s14.md). Probes and
scrapes use one pooled `httpx.AsyncClient` per instance whose transport is aiohttp's client
through `httpx-aiohttp` (2.6-2.9x the requests/s of httpx's own pool). `http_backend=
"aiohttp"` sends attempts through that aiohttp session too (the client before), `"httpx"`
through httpx's own pool. Generation requests are streamed from the
instance even when the caller wants one answer, so TTFT and inter-token latency are
measured for every request (the SLO policies learn from them); the answer is assembled
from the chunks. Errors become `UpstreamError` with whether a retry elsewhere is safe.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import httpx
import yarl
from httpx_aiohttp import AiohttpTransport
from httpx_aiohttp.transport import map_aiohttp_exceptions

from sage_cp_plugin.attempt_outcome import ChunkSink, Outcome
from sage_cp_plugin.errors import UpstreamError
from sage_cp_plugin.openai_body import (
    ENDPOINTS,
    JSON_HEADERS,
    build_body,
    encode_body,
)
from sage_cp_plugin.tracing import spans as tracing
from sage_cp_plugin.types import ExecutionInstance, RequestKind, RequestMetadata, SchedulingDecision
from sage_cp_plugin.upstream_answer import (
    AiohttpAnswer,
    InProcessUpstream,
    UpstreamAnswer,
    read_plain,
    read_stream,
    status_error,
)
from sage_cp_plugin.upstream_http import UpstreamPool, client_ssl_context

logger = logging.getLogger(__name__)

TransportFactory = Callable[[ExecutionInstance], httpx.AsyncBaseTransport]


# Idle upstream connections are reused for this long (see `Executor.limits`).
KEEPALIVE_EXPIRY_S = 4.0


class _NoCookieJar(httpx.Cookies):
    """A cookie store that keeps nothing. httpx parses every response into its jar (it
    builds urllib request and response objects per response: 2.6 % of the gateway's CPU in
    a profile, benchmarks/results/gateway_cpu.md); an instance's cookies are never wanted
    (nothing the coordinator sends depends on them), so they are not stored or sent back."""

    def extract_cookies(self, response: httpx.Response) -> None:
        return None


class _Session:
    """One aiohttp session (connection pool) per instance, opened on first use inside the
    event loop (aiohttp wants one), shared by the instance's httpx client (as its
    transport's session) and by the attempts, which use it directly."""

    def __init__(self, limits: httpx.Limits) -> None:
        self.limits = limits
        self.session: aiohttp.ClientSession | None = None

    def get(self) -> aiohttp.ClientSession:
        if self.session is None:
            # What AiohttpTransport builds for itself from the same limits.
            connector = aiohttp.TCPConnector(
                keepalive_timeout=self.limits.keepalive_expiry,
                ssl=httpx.create_ssl_context(trust_env=False),
                limit=self.limits.max_connections or 0,
            )
            self.session = aiohttp.ClientSession(connector=connector)
        return self.session


class _Pool:
    """An instance's `UpstreamPool`, opened on first use inside the event loop."""

    def __init__(self, base_url: str, owner: ExecutionCoordinator) -> None:
        self.base_url = base_url
        self.owner = owner
        self.pool: UpstreamPool | None = None

    def get(self) -> UpstreamPool:
        if self.pool is None:
            o = self.owner
            tls = self.base_url.startswith("https:")
            expiry = o.limits.keepalive_expiry
            self.pool = UpstreamPool(
                self.base_url,
                max_connections=o.limits.max_connections or 0,
                keepalive_expiry_s=KEEPALIVE_EXPIRY_S if expiry is None else expiry,
                connect_timeout_s=o.connect_timeout_s,
                timeout_s=o.timeout_s,
                ssl_context=client_ssl_context() if tls else None,
            )
        return self.pool

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()


HTTP_BACKENDS = ("httptools", "aiohttp", "httpx")


class ExecutionCoordinator:
    """Owns the HTTP clients and runs requests on instances."""

    def __init__(
        self,
        *,
        timeout_s: float = 300.0,
        connect_timeout_s: float = 5.0,
        max_connections_per_instance: int = 256,
        transport_factory: TransportFactory | None = None,
        upstream_streaming: bool = True,
        http_backend: str = "httptools",
    ) -> None:
        if http_backend not in HTTP_BACKENDS:
            raise ValueError(
                f"http_backend must be one of {', '.join(HTTP_BACKENDS)}, got {http_backend!r}"
            )
        self.http_backend = http_backend
        self.instances: dict[str, ExecutionInstance] = {}
        self._clients: dict[str, httpx.AsyncClient] = {}
        # Endpoint URLs per client; weak keys, so a closed and dropped client takes its own.
        self._urls: weakref.WeakKeyDictionary[httpx.AsyncClient, dict[str, httpx.URL]] = (
            weakref.WeakKeyDictionary()
        )
        self.timeout = httpx.Timeout(timeout_s, connect=connect_timeout_s)
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s
        # The same timeouts as the transport maps httpx's to, built once.
        self._aio_timeout = aiohttp.ClientTimeout(
            sock_connect=connect_timeout_s, sock_read=timeout_s, connect=timeout_s
        )
        self._sessions: dict[str, _Session] = {}
        self._pools: dict[str, _Pool] = {}
        self._in_process: dict[str, InProcessUpstream] = {}
        self._aio_urls: dict[tuple[str, bytes], yarl.URL] = {}
        self.limits = httpx.Limits(
            max_connections=max_connections_per_instance,
            max_keepalive_connections=max_connections_per_instance,
            # Under the 5 s keep-alive of vLLM's server (uvicorn): an idle connection is
            # dropped here before the instance closes it, so a request is never written
            # into a connection the instance is closing at that moment (it would fail
            # with nothing sent back and count against a healthy instance).
            keepalive_expiry=KEEPALIVE_EXPIRY_S,
        )
        self.transport_factory = transport_factory
        self.upstream_streaming = upstream_streaming

    # -- registry --------------------------------------------------------------------------
    def register_instance(self, instance: ExecutionInstance) -> None:
        self.instances[instance.instance_id] = instance

    async def unregister_instance(self, instance_id: str) -> None:
        self.instances.pop(instance_id, None)
        client = self._clients.pop(instance_id, None)
        self._sessions.pop(instance_id, None)  # closed with the client's transport
        pool = self._pools.pop(instance_id, None)
        if pool is not None:
            pool.close()
        self._in_process.pop(instance_id, None)
        if client is not None:
            await client.aclose()

    def get_healthy_instances(self) -> list[ExecutionInstance]:
        return [i for i in self.instances.values() if i.is_healthy and i.is_available]

    def _url(self, client: httpx.AsyncClient, path: str) -> httpx.URL:
        """``path`` joined to the client's base URL (public `URL.join`), parsed once per
        client instead of on every request (URL parsing is a visible share of a request)."""
        urls = self._urls.get(client)
        if urls is None:
            urls = self._urls[client] = {}
        url = urls.get(path)
        if url is None:
            url = urls[path] = client.base_url.join(path)
        return url

    def client(self, instance: ExecutionInstance) -> httpx.AsyncClient:
        c = self._clients.get(instance.instance_id)
        if c is None:
            transport: httpx.AsyncBaseTransport | None
            if self.transport_factory is not None:
                transport = self.transport_factory(instance)
                if isinstance(transport, InProcessUpstream):
                    self._in_process[instance.instance_id] = transport
            elif self.http_backend != "httpx":
                shared = self._sessions[instance.instance_id] = _Session(self.limits)
                transport = AiohttpTransport(limits=self.limits, trust_env=False, client=shared.get)
                if self.http_backend == "httptools":
                    self._pools[instance.instance_id] = _Pool(instance.base_url, self)
            else:
                transport = None
            c = httpx.AsyncClient(
                base_url=instance.base_url,
                timeout=self.timeout,
                limits=self.limits,
                transport=transport,
            )
            c._cookies = _NoCookieJar()  # httpx has no public switch to turn cookies off
            self._clients[instance.instance_id] = c
        return c

    async def aclose(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        self._sessions = {}
        pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            pool.close()
        self._in_process = {}
        await asyncio.gather(*(c.aclose() for c in clients), return_exceptions=True)

    # -- probes ----------------------------------------------------------------------------
    async def health_check(self, instance_id: str, timeout_s: float = 2.0) -> bool:
        inst = self.instances.get(instance_id)
        if inst is None:
            return False
        try:
            resp = await self.client(inst).get("/health", timeout=timeout_s)
        except httpx.HTTPError:
            return False
        return resp.status_code == 200

    async def fetch_metrics_text(self, instance: ExecutionInstance, timeout_s: float = 2.0) -> str:
        resp = await self.client(instance).get("/metrics", timeout=timeout_s)
        resp.raise_for_status()
        return resp.text

    # -- execution -------------------------------------------------------------------------
    async def execute_request(
        self,
        request: RequestMetadata,
        instance: ExecutionInstance,
        decision: SchedulingDecision | None = None,
    ) -> dict[str, Any]:
        """Run one request on one instance and return the OpenAI response (document API)."""
        out = await self.run(request, instance)
        return out.response or {}

    async def run(
        self,
        request: RequestMetadata,
        instance: ExecutionInstance,
        *,
        sink: ChunkSink | None = None,
        extra: dict[str, Any] | None = None,
        stream: bool | None = None,
        on_first_token: Callable[[], None] | None = None,
        priority: int | None = None,
    ) -> Outcome:
        """One attempt. `sink` receives each streamed chunk as it arrives (pass-through);
        `on_first_token` is called once when the first token arrives (streaming only).

        `extra` adds body fields (the PD protocol's `kv_transfer_params`, `max_tokens: 1`).
        `priority` is vLLM's request priority (lower runs earlier), sent only to instances
        that run `--scheduling-policy priority`.
        """
        kind = request.request_kind
        want_stream = kind != RequestKind.EMBEDDING and (
            sink is not None or (self.upstream_streaming if stream is None else stream)
        )
        body = build_body(request, instance, stream=want_stream)
        if priority is not None and instance.scheduling_policy == "priority":
            body["priority"] = priority
        if extra:
            body.update(extra)
            if not want_stream:
                body.pop("stream_options", None)
        loop = asyncio.get_running_loop()
        out = Outcome(started_at=loop.time())
        client = self.client(instance)
        url = self._url(client, ENDPOINTS[kind])
        # Traced: one CLIENT span per attempt, its traceparent sent to the engine.
        span = tracing.start_attempt(request, instance, extra)
        headers = JSON_HEADERS if span is None else tracing.attempt_headers(span, JSON_HEADERS)
        try:
            await self._send(
                client,
                url,
                body,
                want_stream,
                request,
                instance,
                out,
                sink,
                on_first_token,
                headers,
            )
        except BaseException as exc:
            tracing.end_attempt(span, None, exc)
            raise
        tracing.end_attempt(span, out, None)
        out.finished_at = loop.time()
        return out

    @contextlib.asynccontextmanager
    async def _post(
        self,
        client: httpx.AsyncClient,
        url: httpx.URL,
        content: bytes,
        headers: dict[str, str],
        instance: ExecutionInstance,
    ) -> AsyncIterator[UpstreamAnswer]:
        """POST `content`, yielding the answer with its body unread; the connection goes
        back to the pool (read to the end) or is closed (not read to the end) on exit.
        aiohttp's errors become httpx's, as the transport maps them, so both paths fail
        alike; an in-process upstream raises httpx's errors itself."""
        upstream = self._in_process.get(instance.instance_id)
        if upstream is not None and self._clients.get(instance.instance_id) is client:
            direct = await upstream.post_in_process(url, content, headers)
            try:
                yield direct
            finally:
                await direct.aclose()
            return
        if self._clients.get(instance.instance_id) is client:
            pool = self._pools.get(instance.instance_id)
            if pool is not None:
                async with pool.get().post(url.raw_path, content, headers) as answer:
                    yield answer
                return
        shared = self._sessions.get(instance.instance_id)
        if shared is None or self._clients.get(instance.instance_id) is not client:
            async with client.stream("POST", url, content=content, headers=headers) as resp:
                yield resp
            return
        key = (instance.base_url, url.raw_path)
        target = self._aio_urls.get(key)
        if target is None:
            target = self._aio_urls[key] = yarl.URL(str(url))
        with map_aiohttp_exceptions():
            async with shared.get().request(
                "POST",
                target,
                data=content,
                headers=headers,
                timeout=self._aio_timeout,
                allow_redirects=False,
            ) as answer:
                yield AiohttpAnswer(answer)

    async def _send(
        self,
        client: httpx.AsyncClient,
        url: httpx.URL,
        body: dict[str, Any],
        want_stream: bool,
        request: RequestMetadata,
        instance: ExecutionInstance,
        out: Outcome,
        sink: ChunkSink | None,
        on_first_token: Callable[[], None] | None,
        headers: dict[str, str],
    ) -> None:
        """The HTTP exchange of one attempt; transport failures become UpstreamError."""
        try:
            if want_stream:
                await self._run_streaming(
                    client, url, body, request, instance, out, sink, on_first_token, headers
                )
            else:
                await self._run_plain(client, url, body, request, instance, out, headers)
        except UpstreamError:
            raise
        except httpx.TransportError as exc:
            if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
                # aiohttp reports a refused connection as a connect timeout: both mean the
                # instance could not be reached, and nothing was sent.
                what = "unreachable"
            elif isinstance(exc, httpx.TimeoutException):
                what = "timed out"
            else:
                what = "failed"
            raise UpstreamError(
                f"instance {instance.instance_id} ({instance.base_url}) {what}: "
                f"{type(exc).__name__}: {exc}",
                instance_id=instance.instance_id,
                body_started=out.relayed > 0,
            ) from exc

    async def _run_plain(
        self,
        client: httpx.AsyncClient,
        url: httpx.URL,
        body: dict[str, Any],
        request: RequestMetadata,
        instance: ExecutionInstance,
        out: Outcome,
        headers: dict[str, str] = JSON_HEADERS,
    ) -> None:
        async with self._post(client, url, encode_body(body), headers, instance) as resp:
            raw = await resp.aread()
            status = resp.status_code
            if status != 200:
                raise status_error(resp, raw, instance)
        read_plain(raw, status, request, instance, out)

    async def _run_streaming(
        self,
        client: httpx.AsyncClient,
        url: httpx.URL,
        body: dict[str, Any],
        request: RequestMetadata,
        instance: ExecutionInstance,
        out: Outcome,
        sink: ChunkSink | None,
        on_first_token: Callable[[], None] | None = None,
        headers: dict[str, str] = JSON_HEADERS,
    ) -> None:
        async with self._post(client, url, encode_body(body), headers, instance) as resp:
            if resp.status_code != 200:
                raise status_error(resp, await resp.aread(), instance)
            await read_stream(resp, request, instance, out, sink, on_first_token)
