"""A real OTLP/gRPC trace receiver for tests: the `TraceService` of opentelemetry-proto on
grpcio (as vLLM's own tracing tests do), bound to a free loopback port."""

from __future__ import annotations

import threading
from concurrent import futures
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.spans: list[dict[str, Any]] = []
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(self, self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def Export(self, request: Any, context: Any) -> Any:
        with self.lock:
            for rs in request.resource_spans:
                resource = {a.key: a.value for a in rs.resource.attributes}
                service = (
                    resource["service.name"].string_value if "service.name" in resource else ""
                )
                pid = resource["process.pid"].int_value if "process.pid" in resource else None
                for ss in rs.scope_spans:
                    for s in ss.spans:
                        self.spans.append(
                            {
                                "service": service,
                                "pid": pid,
                                "status": s.status.code,  # 0 unset, 1 ok, 2 error
                                "name": s.name,
                                "kind": s.kind,
                                "trace_id": s.trace_id.hex(),
                                "span_id": s.span_id.hex(),
                                "parent_id": s.parent_span_id.hex(),
                                "attributes": {a.key: a.value for a in s.attributes},
                                "start_ns": s.start_time_unix_nano,
                                "end_ns": s.end_time_unix_nano,
                            }
                        )
        return trace_service_pb2.ExportTraceServiceResponse()

    def named(self, name: str) -> list[dict[str, Any]]:
        with self.lock:
            return [s for s in self.spans if s["name"] == name]

    def in_trace(self, trace_id: str) -> list[dict[str, Any]]:
        with self.lock:
            return [s for s in self.spans if s["trace_id"] == trace_id]

    def __enter__(self) -> Receiver:
        self.server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop(grace=None)


KINDS = {1: "INTERNAL", 2: "SERVER", 3: "CLIENT", 4: "PRODUCER", 5: "CONSUMER"}
# The attributes a rendered tree shows (docs/tracing.md's example), when a span has them.
SHOWN = ("http.response.status_code", "sage_cp.status", "sage_cp.attempts", "sage_cp.policy",
         "sage_cp.router", "sage_cp.instance_id", "sage_cp.runner_up", "sage_cp.attempt",
         "sage_cp.excluded", "gen_ai.usage.output_tokens", "gen_ai.response.finish_reasons",
         "gen_ai.latency.time_in_queue", "gen_ai.latency.time_to_first_token")  # fmt: skip


def _value(v: Any) -> str:
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return "[" + ", ".join(_value(x) for x in v.array_value.values) + "]"
    if kind == "double_value":
        return f"{v.double_value:.4g}"
    return str(getattr(v, kind)) if kind else ""


def render(spans: list[dict[str, Any]], roles: dict[int | None, str]) -> list[str]:
    """One trace as an indented tree, children in start order: name [KIND], the process
    (`roles` by pid), start offset and duration in ms, the `SHOWN` attributes."""
    ids = {s["span_id"] for s in spans}
    t0 = min(s["start_ns"] for s in spans)
    lines: list[str] = []

    def walk(parent: str | None, depth: int) -> None:
        kids = [s for s in spans if (s["parent_id"] if s["parent_id"] in ids else None) == parent]
        for s in sorted(kids, key=lambda s: s["start_ns"]):
            kind = KINDS.get(s["kind"], "?") + (" ERROR" if s["status"] == 2 else "")
            attrs = ", ".join(
                f"{k.split('.', 1)[1] if k.startswith('sage_cp.') else k}="
                f"{_value(s['attributes'][k])}"
                for k in SHOWN
                if k in s["attributes"]
            )
            lines.append(
                f"{'  ' * depth}{s['name']} [{kind}] ({roles.get(s['pid'], s['service'])}) "
                f"+{(s['start_ns'] - t0) / 1e6:.1f}ms {(s['end_ns'] - s['start_ns']) / 1e6:.1f}ms"
                + (f"  {attrs}" if attrs else "")
            )
            walk(s["span_id"], depth + 1)

    walk(None, 0)
    return lines


def skeleton(lines: list[str]) -> list[tuple[int, str]]:
    """A rendered tree without times and attributes: (depth, "name [KIND] (process)")."""
    out = []
    for line in lines:
        depth = (len(line) - len(line.lstrip(" "))) // 2
        out.append((depth, line.strip().split(" +", 1)[0]))
    return out
