"""Optional API keys: `Authorization: Bearer <key>`, compared in constant time."""

from __future__ import annotations

import hmac

from starlette.requests import Request

from server import errors
from server.config import EngineConfig


def authorize(request: Request, settings: EngineConfig) -> None:
    if not settings.api_keys:
        return
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    token = token.strip().encode()
    # Compare against every key so timing does not reveal which (if any) matched a prefix.
    matched = False
    for key in settings.api_keys:
        matched |= hmac.compare_digest(token, key.encode())
    if scheme.lower() != "bearer" or not matched:
        raise errors.unauthorized()
