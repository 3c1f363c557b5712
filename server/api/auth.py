"""Optional API keys: `Authorization: Bearer <key>` on every route but the exempt ones, compared in
constant time; the 401 comes in the shape of the API the path belongs to (SIE or OpenAI)."""

from __future__ import annotations

import hmac

from starlette.types import ASGIApp, Receive, Scope, Send

from server.api.errors import send_error, unauthorized


def key_matches(header: str, keys: tuple[str, ...]) -> bool:
    scheme, _, token = header.partition(" ")
    supplied = token.strip().encode()
    matched = False
    for key in keys:  # every key is compared, so timing does not tell which one was close
        matched |= hmac.compare_digest(supplied, key.encode())
    return scheme.lower() == "bearer" and matched


class AuthMiddleware:
    def __init__(self, app: ASGIApp, keys: tuple[str, ...], exempt: tuple[str, ...]):
        self.app = app
        self.keys = keys
        self.exempt = frozenset(exempt)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.keys or scope["path"] in self.exempt:
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        if key_matches(headers.get(b"authorization", b"").decode("latin-1"), self.keys):
            await self.app(scope, receive, send)
            return
        await send_error(scope, send, unauthorized())
