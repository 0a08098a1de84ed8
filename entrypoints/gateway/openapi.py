"""The OpenAPI 3.1 description of the gateway, served at `/openapi.json`.

Written by hand rather than generated from handler signatures: the handlers are lean ASGI
functions without per-request models, and the description must say what the gateway really
accepts (OpenAI bodies plus the `x-sage-*` scheduling inputs). The fuzz test drives it.
"""

from __future__ import annotations

import copy
from typing import Any

from .translate import HEADERS

_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        }
    },
}
_SCHED_PROPS: dict[str, Any] = {
    "priority": {
        "description": "critical|high|normal|low|background or 0-4 (lower is more urgent)",
        "oneOf": [
            {"type": "string", "enum": ["critical", "high", "normal", "low", "background"]},
            {"type": "integer", "minimum": 0, "maximum": 4},
        ],
    },
    "ttft_slo_ms": {"type": "number", "exclusiveMinimum": 0},
    "tpot_slo_ms": {"type": "number", "exclusiveMinimum": 0},
    "slo_deadline_ms": {"type": "number", "exclusiveMinimum": 0},
    "cost_budget": {"type": "number", "exclusiveMinimum": 0},
    "user_id": {"type": "string"},
    "user": {"type": "string"},
}
_SAMPLING: dict[str, Any] = {
    "model": {"type": "string"},
    "max_tokens": {"type": "integer", "minimum": 1, "maximum": 64},
    "temperature": {"type": "number", "minimum": 0, "maximum": 2},
    "top_p": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
    "stream": {"type": "boolean"},
    "stream_options": {
        "type": "object",
        "additionalProperties": False,
        "properties": {"include_usage": {"type": "boolean"}},
    },
    "stop": {"type": "array", "items": {"type": "string"}, "maxItems": 4},
    "seed": {"type": "integer"},
}
_MESSAGE = {
    "type": "object",
    "additionalProperties": False,
    "required": ["role", "content"],
    "properties": {
        "role": {"type": "string", "enum": ["system", "user", "assistant"]},
        "content": {"type": "string"},
    },
}
_BODIES: dict[str, Any] = {
    "CompletionRequest": {
        "type": "object",
        "additionalProperties": False,
        "required": ["model", "prompt"],
        "properties": {
            **_SAMPLING,
            "prompt": {
                "oneOf": [
                    {"type": "string"},
                    {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 1},
                ]
            },
            **_SCHED_PROPS,
        },
    },
    "ChatCompletionRequest": {
        "type": "object",
        "additionalProperties": False,
        "required": ["model", "messages"],
        "properties": {
            **_SAMPLING,
            "max_completion_tokens": {"type": "integer", "minimum": 1, "maximum": 64},
            "messages": {"type": "array", "items": _MESSAGE, "minItems": 1},
            **_SCHED_PROPS,
        },
    },
    "EmbeddingRequest": {
        "type": "object",
        "additionalProperties": False,
        "required": ["model", "input"],
        "properties": {
            "model": {"type": "string"},
            "input": {
                "oneOf": [
                    {"type": "string"},
                    {"type": "array", "items": {"type": "string"}, "minItems": 1},
                ]
            },
            "encoding_format": {"type": "string", "enum": ["float", "base64"]},
            **_SCHED_PROPS,
        },
    },
}
_HEADER_SCHEMAS: dict[str, Any] = {
    "x-sage-priority": {"type": "string", "enum": ["critical", "high", "normal", "low", "background", "0", "1", "2", "3", "4"]},
    "x-sage-user": {"type": "string"},
}  # fmt: skip


_REQUEST_ID = {
    "name": "x-request-id",
    "in": "header",
    "required": False,
    "description": "idempotency key: a resend joins the request in flight, or gets its "
    "retained result",
    "schema": {"type": "string", "minLength": 1, "maxLength": 128},
}


def _header_params() -> list[dict[str, Any]]:
    return [_REQUEST_ID, *_sage_header_params()]


def _sage_header_params() -> list[dict[str, Any]]:
    return [
        {
            "name": name,
            "in": "header",
            "required": False,
            "description": f"scheduling input `{field}` (wins over the body field)",
            "schema": _HEADER_SCHEMAS.get(name, {"type": "string", "pattern": "^[1-9][0-9]{0,5}$"}),
        }
        for name, field in HEADERS.items()
    ]


def _errors(*codes: int) -> dict[str, Any]:
    ref = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    return {str(c): {"description": "OpenAI-format error", **ref} for c in codes}


def _post(summary: str, body: str, ok: str) -> dict[str, Any]:
    return {
        "post": {
            "summary": summary,
            "parameters": _header_params(),
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{body}"}}},
            },
            "responses": {
                "200": {"description": ok, "content": {"application/json": {"schema": {"type": "object"}},
                                                       "text/event-stream": {"schema": {"type": "string"}}}},
                **_errors(400, 401, 404, 408, 413, 415, 422, 429, 431, 502, 503, 504),
            },
        }
    }  # fmt: skip


def _get(summary: str, *errors: int) -> dict[str, Any]:
    return {
        "get": {"summary": summary, "responses": {"200": {"description": "OK"}, **_errors(*errors)}}
    }


def _with_models(generation: list[str], embedding: list[str]) -> dict[str, Any]:
    """The request schemas with `model` listing what the fleet serves right now."""
    bodies = copy.deepcopy(_BODIES)
    for name, models in (
        ("CompletionRequest", generation),
        ("ChatCompletionRequest", generation),
        ("EmbeddingRequest", embedding),
    ):
        if models:
            bodies[name]["properties"]["model"] = {"type": "string", "enum": sorted(models)}
    return bodies


def build_openapi(
    generation_models: list[str] | None = None, embedding_models: list[str] | None = None
) -> dict[str, Any]:
    bodies = _with_models(generation_models or [], embedding_models or [])
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "sage-cp gateway",
            "version": "0.1.0",
            "description": "OpenAI-compatible gateway of the sage-cp control plane. Scheduling "
            "inputs come from x-sage-* headers or the same-meaning body fields; headers win.",
        },
        "components": {
            "schemas": {"Error": _ERROR, **bodies},
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "paths": {
            "/v1/completions": _post("Text completion", "CompletionRequest", "completion"),
            "/v1/chat/completions": _post("Chat completion", "ChatCompletionRequest", "chat"),
            "/v1/embeddings": _post("Embeddings", "EmbeddingRequest", "embeddings"),
            "/v1/models": _get("Models served by the fleet", 401),
            "/v1/sage/metrics": _get("Coordinator measurements (PerformanceMetrics)", 401),
            "/health": _get("200 when at least one instance is healthy", 503),
            "/metrics": _get("Prometheus metrics"),
        },
    }
