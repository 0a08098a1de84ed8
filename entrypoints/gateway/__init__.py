"""`sage-cp serve`: the OpenAI-compatible gateway in front of one control plane.

Modules: `app` (routes), `openai_routes`, `sse` (stream relay), `disconnect`, `translate`
(body + headers -> RequestMetadata), `body` (size-limited reads), `errors` (OpenAI error
format), `auth`, `admin`, `metrics` (Prometheus), `openapi`, `runtime` (shared state),
`settings`, `server` (uvicorn + graceful shutdown), `workers/` (`serve --workers N`: a
scheduling process and forwarding workers).
"""

from .app import create_app
from .runtime import Gateway
from .server import run, serve, serving
from .settings import GatewaySettings

__all__ = ["Gateway", "GatewaySettings", "create_app", "run", "serve", "serving"]
