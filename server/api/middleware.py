"""Request context: a request id on every response (echoed or generated), one access-log line per
request that carries it, a JSON 500 naming it for anything no handler answered, and bounded body reading."""

from __future__ import annotations

import logging
import os
import re
import socket
import time
import uuid

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.api.errors import ApiError, body_too_large, send_error
from server.api.lifecycle import PROBES

_SAFE_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
access_log = logging.getLogger("server.access")
log = logging.getLogger(__name__)


def replica_id() -> str:
    """Which server answered (scale-out: which replica); SIE_REPLICA_ID, else host and process."""
    return os.environ.get("SIE_REPLICA_ID") or f"{socket.gethostname()}-{os.getpid()}"


class RequestContextMiddleware:
    """Pure ASGI (no BaseHTTPMiddleware buffering)."""

    def __init__(self, app: ASGIApp):
        self.app = app
        self.replica = replica_id().encode("latin-1", "replace")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = dict(scope.get("headers") or []).get(b"x-request-id", b"").decode("latin-1")
        rid = incoming if _SAFE_ID.match(incoming) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = rid
        started, status, answered = time.perf_counter(), [500], [False]

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                answered[0] = True
                status[0] = message["status"]
                headers = [*message.get("headers", []), (b"x-request-id", rid.encode("latin-1"))]
                if not any(name.lower() == b"x-replica-id" for name, _ in headers):  # a scale-out route named it
                    headers.append((b"x-replica-id", self.replica))
                message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            log.exception("unhandled error (request %s)", rid)
            if not answered[0]:  # else the client already has a status line; the connection just ends
                error = ApiError(500, "INTERNAL_ERROR", f"internal error (request id {rid})")
                await send_error(scope, send_with_id, error)
        finally:
            duration_ms = (time.perf_counter() - started) * 1e3
            client = scope.get("client") or ("-", 0)
            # Probes and scrapes come every few seconds: at DEBUG (a not-ready 503 included), unless they fail.
            quiet = scope["path"] in PROBES and status[0] in (200, 503)
            code = scope["state"].get("error_code") if status[0] >= 400 else None
            access_log.log(logging.DEBUG if quiet else logging.INFO, "%s %s %s %d%s %.1fms rid=%s", client[0],
                           scope["method"], scope["path"], status[0], f" {code}" if code else "", duration_ms, rid,
                           extra={"request_id": rid, "method": scope["method"], "path": scope["path"],
                                  "status": status[0], "duration_ms": round(duration_ms, 2), "client": client[0],
                                  **({"error_code": code} if code else {})})


def request_id(request: Request) -> str:
    return getattr(request.state, "request_id", "") or ""


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 from Content-Length alone when it says too much, else while streaming."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise body_too_large(f"request body of {declared} bytes is over the limit of {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise body_too_large(f"request body is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)
