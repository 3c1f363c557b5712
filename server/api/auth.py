"""API keys: `Authorization: Bearer <key>` on every route but the exempt ones; the 401 comes in the shape of
the API the path belongs to (SIE or OpenAI). With a key file each key has a scope, kept in the ASGI scope
as `access` for `context(request)`; the admin routes need an admin key (403), and `/metrics`, which names
every tenant's adapters, an operator key."""

from __future__ import annotations

import re

from starlette.types import ASGIApp, Receive, Scope, Send

from server import errors
from server.api.errors import from_domain, send_error, unauthorized
from server.tenancy import KeyRing

ADMIN_PATHS = re.compile(r"^/v1/models/.+/loras(/[^/]*)?$|^/v1/(load|unload)_lora_adapter$")
OPERATOR_PATHS = frozenset({"/metrics"})


class AuthMiddleware:
    def __init__(self, app: ASGIApp, keys: KeyRing, exempt: tuple[str, ...]):
        self.app = app
        self.keys = keys
        self.exempt = frozenset(exempt)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.keys.enabled:
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        operator_only = self.keys.tenants and path in OPERATOR_PATHS
        if path in self.exempt and not operator_only:
            await self.app(scope, receive, send)
            return
        header = dict(scope.get("headers") or []).get(b"authorization", b"").decode("latin-1")
        access = self.keys.scope_of(header)
        if access is None:
            await send_error(scope, send, unauthorized())
            return
        if operator_only and not access.operator:
            await send_error(scope, send, from_domain(errors.Forbidden("/metrics needs an operator key")))
            return
        if not access.admin and ADMIN_PATHS.match(path):
            await send_error(scope, send, from_domain(errors.Forbidden("this key may not manage adapters")))
            return
        if not access.operator:
            scope["access"] = access
        await self.app(scope, receive, send)
