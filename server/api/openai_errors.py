"""The OpenAI error shape `{"error": {"message", "type", "param", "code"}}` for the OpenAI routes."""

from __future__ import annotations

from fastapi.responses import JSONResponse

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
