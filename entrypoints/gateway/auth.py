"""API keys: an optional client key for `/v1`, and the admin key that guards `/admin`.

Keys are compared in constant time (`hmac.compare_digest`) so response timing does not leak
how much of a guessed key was right. Clients send `Authorization: Bearer <key>` (what the
`openai` package sends); `x-api-key` is accepted too. Without an admin key the admin API is
off: a control plane must never be reconfigurable by anyone who can reach its port.
"""

from __future__ import annotations

import hmac

from starlette.datastructures import Headers

from .errors import GatewayError


def presented_key(headers: Headers, *extra_headers: str) -> str | None:
    auth = headers.get("authorization")
    if auth is not None:
        scheme, _, token = auth.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    for name in ("x-api-key", *extra_headers):
        value = headers.get(name)
        if value:
            return value
    return None


def _matches(given: str | None, expected: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


def check_client_key(headers: Headers, api_key: str | None) -> None:
    if api_key is None:
        return
    given = presented_key(headers)
    if given is None:
        raise GatewayError(
            401,
            "missing API key: send 'Authorization: Bearer <key>'",
            code="missing_api_key",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if not _matches(given, api_key):
        raise GatewayError(
            401, "invalid API key", code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"}
        )


def check_admin_key(headers: Headers, admin_key: str | None) -> None:
    if admin_key is None:
        raise GatewayError(
            403,
            "the admin API is disabled: start the gateway with --admin-key "
            "(or the SAGE_CP_ADMIN_KEY environment variable)",
            code="admin_disabled",
        )
    given = presented_key(headers, "x-sage-admin-key")
    if given is None:
        raise GatewayError(
            401,
            "missing admin key: send 'Authorization: Bearer <admin key>'",
            code="missing_admin_key",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if not _matches(given, admin_key):
        raise GatewayError(403, "invalid admin key", code="invalid_admin_key")
