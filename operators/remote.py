"""`RemoteBackend`: send the service's requests to a shared coordinator (`sage-cp serve`).

SAGE 0.3.2.4 runs every operator in the driver process (docs/architecture.md §7), so pipelines in
several processes or hosts share one coordinator over its OpenAI-compatible HTTP API. The
scheduling fields travel as `x-sage-*` headers, so the body stays a plain OpenAI body.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import httpx

from sage_cp_plugin.errors import QueueFullError
from sage_cp_plugin.openai_body import ENDPOINTS, text_of
from sage_cp_plugin.quotas import QuotaExceededError
from sage_cp_plugin.rate_limits import RateLimitedError
from sage_cp_plugin.types import ExecutionInstance, RequestKind, RequestMetadata

from .backends import ADMISSION_PATIENCE_S, outwaits
from .inputs import PreparedRequest
from .records import ErrorInfo, ResultRecord, Timings

_PROM_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")
_RETRIES = 4


def scheduling_headers(req: RequestMetadata) -> dict[str, str]:
    headers = {"x-sage-priority": req.priority.name.lower()}
    if req.user_id:
        headers["x-sage-user"] = req.user_id
    if req.ttft_slo_ms is not None:
        headers["x-sage-slo-ttft-ms"] = f"{req.ttft_slo_ms:g}"
    if req.slo_deadline_ms is not None:
        headers["x-sage-deadline-ms"] = f"{req.slo_deadline_ms:g}"
    return headers


def openai_body(req: RequestMetadata) -> dict[str, Any]:
    from sage_cp_plugin.openai_body import build_body

    # build_body takes the model from an instance when the request names none; the
    # coordinator then picks, so leave "model" out rather than sending "".
    body = build_body(req, ExecutionInstance(instance_id="remote"), stream=False)
    if not body.get("model"):
        body.pop("model", None)
    if req.user_id and "user" not in body:
        body["user"] = req.user_id
    return body


def parse_prometheus(text: str) -> dict[str, float]:
    """Sample name -> value summed over label sets (enough for counters and gauges)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _PROM_LINE.match(line)
        if m is None:
            continue
        try:
            value = float(m.group(3))
        except ValueError:
            continue
        out[m.group(1)] = out.get(m.group(1), 0.0) + value
    return out


class RemoteBackend:
    """`sage-cp serve` at `url`, or at several replicas (`url` a comma-separated list, e.g.
    replicas sharing state through Redis): requests are spread over them in turn, and a
    request whose replica cannot be reached is resent to the next one (docs/scale-out.md)."""

    def __init__(self, url: str, *, timeout_s: float = 600.0, max_connections: int = 512) -> None:
        self.urls = [u.strip().rstrip("/") for u in url.split(",") if u.strip()]
        if not self.urls:
            raise ValueError(f"no coordinator URL in {url!r}")
        self.url = ",".join(self.urls)
        self.description = (
            f"remote coordinator at {self.url}"
            if len(self.urls) == 1
            else f"{len(self.urls)} coordinator replicas ({self.url})"
        )
        self._timeout_s = timeout_s
        self._max_connections = max_connections
        self._client: httpx.AsyncClient | None = None
        self._turn = 0

    async def start(self) -> None:
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(self._timeout_s, connect=5.0),
            limits=httpx.Limits(
                max_connections=self._max_connections,
                max_keepalive_connections=self._max_connections,
            ),
        )

    async def stop(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    def _first_replica(self) -> int:
        self._turn += 1
        return self._turn % len(self.urls)

    async def run(self, prepared: PreparedRequest) -> ResultRecord:
        req = prepared.request
        kind = req.request_kind
        loop = asyncio.get_running_loop()
        started = loop.time()
        last_error = "not sent"
        replica = self._first_replica()
        # The request id goes along: a resend to a replica still running it joins that run.
        headers = {**scheduling_headers(req), "x-request-id": req.request_id}
        deadline = started + ADMISSION_PATIENCE_S
        attempt = 0  # transport failures and 503s; waiting out a 429 does not use one
        while attempt < _RETRIES + len(self.urls) - 1:
            client = self._client
            if client is None:
                last_error = "the service is closed"
                break
            base = self.urls[replica]
            try:
                resp = await client.post(
                    base + ENDPOINTS[kind], json=openai_body(req), headers=headers
                )
            except httpx.TransportError as exc:
                last_error = f"coordinator {base} unreachable: {type(exc).__name__}: {exc}"
                replica = (replica + 1) % len(self.urls)  # the next replica, if any
                await asyncio.sleep(0.2 * 2 ** min(attempt, 4) / len(self.urls))
                attempt += 1
                continue
            if resp.status_code == 429:
                # Backpressure (a full queue, a rate limit): wait as long as the coordinator
                # says, within the same patience as the in-process backend; a refusal that
                # cannot be outwaited (a spent quota) is the line's answer now.
                wait = _retry_after(resp, 1.0)
                if outwaits(wait, loop.time(), deadline):
                    await asyncio.sleep(wait)
                    continue
            elif resp.status_code == 503 and attempt < _RETRIES - 1:
                # A replica shutting down answers 503: the next one takes the request.
                replica = (replica + 1) % len(self.urls)
                await asyncio.sleep(min(5.0, _retry_after(resp, 0.2 * 2**attempt)))
                attempt += 1
                continue
            return self._record(prepared, kind, resp, (loop.time() - started) * 1000)
        return ResultRecord.failure(
            prepared.custom_id,
            "upstream_error",
            last_error,
            status_code=502,
            line=prepared.line,
            request_id=req.request_id,
            kind=kind.value,
        )

    @staticmethod
    def _record(
        prepared: PreparedRequest, kind: RequestKind, resp: httpx.Response, e2e_ms: float
    ) -> ResultRecord:
        try:
            body: Any = resp.json()
        except ValueError:
            body = {"error": {"message": resp.text[:500]}}
        if not isinstance(body, dict):
            body = {"data": body}
        rec = ResultRecord(
            custom_id=prepared.custom_id,
            request_id=str(body.get("id") or prepared.request.request_id),
            kind=kind.value,
            status_code=resp.status_code,
            line=prepared.line,
            timings=Timings(
                e2e_ms=_header_float(resp, "x-sage-e2e-ms", e2e_ms),
                ttft_ms=_header_float(resp, "x-sage-ttft-ms", None),
                queue_ms=_header_float(resp, "x-sage-queue-ms", None),
            ),
            instance_id=resp.headers.get("x-sage-instance"),
        )
        if resp.status_code != 200:
            err = body.get("error")
            message = err.get("message") if isinstance(err, dict) else err or body.get("detail")
            code = err.get("code") if isinstance(err, dict) else None
            rec.error = ErrorInfo(
                code=_RECORD_CODE.get(str(code), "upstream_error"),
                message=f"coordinator answered HTTP {resp.status_code}: "
                f"{message or resp.reason_phrase}",
            )
            return rec
        usage = body.get("usage") or {}
        rec.body = body
        rec.prompt_tokens = int(usage.get("prompt_tokens") or 0)
        rec.completion_tokens = int(usage.get("completion_tokens") or 0)
        if kind != RequestKind.EMBEDDING:
            rec.output = text_of(body)
        slo = resp.headers.get("x-sage-slo-met")
        if slo is not None:
            rec.slo_met = slo.lower() in ("1", "true", "yes")
        return rec

    async def metrics(self) -> dict[str, Any]:
        if self._client is None:
            return {}
        resp = await self._client.get(self.urls[0] + "/metrics")
        resp.raise_for_status()
        return {"url": self.url, "samples": parse_prometheus(resp.text)}


# Gateway error codes whose meaning the batch job's records must keep. "No healthy instance"
# is a statement about the fleet: operators/outage.py retries it until the fleet is back and
# never takes it for the request's own failure. Every other refusal stays "upstream_error"
# (a replica that is stopping, say, is not final while other replicas can take the line).
# A 429's code (queue_full, rate_limit_exceeded, insufficient_quota) says why, as the
# in-process backend's records do.
_RECORD_CODE = {
    "no_healthy_instance": "no_instance_error",
    **{e.code: e.code for e in (QueueFullError, RateLimitedError, QuotaExceededError)},
}


def _retry_after(resp: httpx.Response, default: float) -> float:
    """The answer's Retry-After in seconds (RFC 9110 delay-seconds), else `default`."""
    try:
        return max(0.0, float(resp.headers.get("retry-after", default)))
    except ValueError:
        return default


def _header_float(resp: httpx.Response, name: str, default: float | None) -> float | None:
    value = resp.headers.get(name)
    if value is None:
        return default
    try:
        return float(value)
    except ValueError:
        return default


__all__ = ["RemoteBackend", "openai_body", "parse_prometheus", "scheduling_headers"]
