"""`ServiceBound`: how an operator reaches the shared `ControlPlaneService`.

Through `ctx.get_service(name)`, the object itself, called directly: SAGE's
`call_service` hands every call to a thread pool and polls its future in 10 ms sleeps
(docs/architecture.md §7 bug 2), and inside a `from_source` job it re-enters the source and grows
the stack per item. The object is cached per replica after the first lookup.
"""

from __future__ import annotations

from typing import Any

from sage_cp_plugin.types import RequestKind

from .registration import DEFAULT_SERVICE_NAME
from .service import ControlPlaneService

FAST_PATH_HELP = (
    "this operator cannot reach the control-plane service: SAGE 0.3.2.4's fast path for a "
    "linear from_batch -> map -> sink job gives operators no service access. Register the "
    "service with sage_cp_plugin.operators.use_control_plane(env, ...) (it avoids the fast "
    "path), or add .keyby(...) before the first operator"
)


class ServiceBound:
    """Mixin for SAGE functions that send requests through the shared service."""

    ctx: Any

    def _bind(
        self,
        service_name: str,
        kind: RequestKind | str | None,
        model: str | None,
        defaults: dict[str, Any] | None,
    ) -> None:
        self.service_name = service_name or DEFAULT_SERVICE_NAME
        self.kind = None if kind is None else RequestKind(kind)
        self.model = model
        self.defaults = dict(defaults or {})
        self._service: ControlPlaneService | None = None

    @property
    def service(self) -> ControlPlaneService:
        svc = self._service
        if svc is None:
            get = getattr(self.ctx, "get_service", None)
            if get is None:
                raise RuntimeError(FAST_PATH_HELP)
            svc = get(self.service_name)
            if not isinstance(svc, ControlPlaneService):
                raise TypeError(
                    f"service {self.service_name!r} is a {type(svc).__name__}, "
                    "not a ControlPlaneService"
                )
            self._service = svc
        return svc

    def _options(self) -> dict[str, Any]:
        return {"kind": self.kind, "model": self.model, "defaults": self.defaults}
