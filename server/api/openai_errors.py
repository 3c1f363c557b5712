"""The OpenAI error shape `{"error": {"message", "type", "param", "code"}}` for the OpenAI routes, and
the raw-ASGI error answer middleware sends in whichever shape the path's API uses."""

from __future__ import annotations

import json

from fastapi.responses import JSONResponse
from starlette.types import Scope, Send

from server import errors

OPENAI_PATHS = frozenset({"/v1/embeddings", "/openai/v1/embeddings", "/openai/v1/models"})


def openai_error_body(error: errors.ApiError) -> dict:
    if error.status == 401:
        kind = "authentication_error"
    elif error.status >= 500:
        kind = "server_error"
    else:
        kind = "invalid_request_error"
    return {"error": {"message": error.message, "type": kind, "param": None, "code": error.code}}


def openai_error_response(error: errors.ApiError) -> JSONResponse:
    return JSONResponse(openai_error_body(error), status_code=error.status, headers=error.headers)


async def send_error(scope: Scope, send: Send, error: errors.ApiError, *, close: bool = False) -> None:
    """Answer from ASGI middleware (no route ran): the OpenAI shape on OpenAI paths, else SIE's."""
    body = openai_error_body(error) if scope["path"] in OPENAI_PATHS else error.body()
    headers = [(b"content-type", b"application/json")]
    headers += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in error.headers.items()]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": json.dumps(body).encode()})
