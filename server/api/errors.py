"""HTTP errors: the one table that maps the core's domain errors to a status, an error code (docs/spec/SPEC.md
§2) and Retry-After, and the two shapes they are answered in: SIE's `{"detail": {"code", "message"}}` and
OpenAI's `{"error": {"message", "type", "param", "code"}}` (on the OpenAI paths)."""

from __future__ import annotations

import json

from fastapi.responses import JSONResponse
from starlette.types import Scope, Send

from server import errors

OPENAI_PATHS = frozenset({"/v1/embeddings", "/openai/v1/embeddings", "/openai/v1/models"})
SERVED_ROUTES = (("POST", "/v1/encode/{model}"), ("GET", "/v1/models"), ("GET", "/v1/models/{model}"),
                 ("POST", "/v1/embeddings"), ("GET", "/openai/v1/models"), ("POST", "/openai/v1/embeddings"),
                 ("GET|POST", "/v1/models/{model}/loras"), ("DELETE", "/v1/models/{model}/loras/{name}"),
                 ("POST", "/v1/load_lora_adapter"),
                 ("POST", "/v1/unload_lora_adapter"), ("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/metrics"),
                 ("GET", "/docs"))
CLIENT_GONE = 499  # nginx's "client closed request": nobody is left to read the answer

# Domain error -> (status, code, Retry-After seconds). Looked up along the class hierarchy, most specific first.
STATUS_TABLE: dict[type[errors.ServingError], tuple[int, str, int | None]] = {
    errors.NotSupported: (400, "NOT_SUPPORTED", None),
    errors.InvalidInput: (400, "INVALID_INPUT", None),
    errors.InputTooLong: (400, "INPUT_TOO_LONG", None),
    errors.AdapterNotResident: (400, "INVALID_INPUT", None),
    errors.Forbidden: (403, "FORBIDDEN", None),
    errors.ModelNotFound: (404, "MODEL_NOT_FOUND", None),
    errors.AdapterNotFound: (404, "LORA_NOT_FOUND", None),
    errors.AdapterConflict: (409, "LORA_CONFLICT", None),
    errors.AdapterPinned: (409, "LORA_PINNED", None),
    errors.ModelLoadFailed: (502, "MODEL_LOAD_FAILED", None),
    errors.ModelLoading: (503, "MODEL_LOADING", 5),
    errors.AdapterLoading: (503, "LORA_LOADING", 1),
    errors.QueueFull: (503, "QUEUE_FULL", 1),
    # No Retry-After: only an operator can free a slot, so clients (SIE's SDK) surface it at once, not retry it.
    errors.AdapterPoolPinned: (503, "LORA_POOL_FULL", None),
    errors.ShuttingDown: (503, "SHUTTING_DOWN", 1),
}


class ApiError(Exception):
    """An answer the API layer decided: status, code, message and extra headers."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None, *,
                 param: str | None = None, said: tuple[str, ...] = ()):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}
        self.param = param  # the request field at fault (OpenAI's `param`), when one is
        self.said = said  # the client's own words in the message: shown as sent (no path hiding)

    def body(self) -> dict:
        return {"detail": {"code": self.code, "message": self.message}}

    def openai_body(self) -> dict:
        kind = ("authentication_error" if self.status == 401
                else "server_error" if self.status >= 500 else "invalid_request_error")
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


def from_domain(error: errors.ServingError) -> ApiError:
    for kind in type(error).__mro__:
        if kind in STATUS_TABLE:
            status, code, retry_after = STATUS_TABLE[kind]
            headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
            return ApiError(status, code, error.message, headers, param=getattr(error, "field", None),
                            said=error.said)
    return ApiError(500, "INTERNAL_ERROR", error.message)


def invalid_input(message: str, field: str | None = None) -> ApiError:
    return from_domain(errors.InvalidInput(message, field=field))


def body_too_large(message: str) -> ApiError:
    return ApiError(413, "INPUT_TOO_LONG", message)


def route_not_found(method: str, path: str) -> ApiError:
    """A path this server does not serve: say what it is and which routes it has."""
    what = {"/v1/score": "reranking (score)", "/v1/extract": "extraction"}
    kind = next((label for prefix, label in what.items() if path == prefix or path.startswith(prefix + "/")), None)
    served = ", ".join(f"{m} {p}" for m, p in SERVED_ROUTES)
    reason = f"{kind} is not served" if kind else f"no route {method} {path}"
    return ApiError(404, "NOT_FOUND", f"{reason}: this server serves embedding models only (dense vectors, "
                                      f"with LoRA adapters). Its routes: {served}")


def unauthorized() -> ApiError:
    return ApiError(401, "UNAUTHORIZED", "missing or invalid API key (send 'Authorization: Bearer <key>')",
                    {"WWW-Authenticate": "Bearer"})


def inference_error(request_id: str) -> ApiError:
    return ApiError(500, "INFERENCE_ERROR", f"inference failed for this batch (request id {request_id})")


def client_gone() -> ApiError:
    return ApiError(CLIENT_GONE, "CLIENT_CLOSED", "the client closed the connection")


def error_response(error: ApiError, *, openai: bool = False) -> JSONResponse:
    return JSONResponse(error.openai_body() if openai else error.body(), status_code=error.status,
                        headers=error.headers)


async def send_error(scope: Scope, send: Send, error: ApiError, *, close: bool = False) -> None:
    """Answer from ASGI middleware (no route ran): the OpenAI shape on OpenAI paths, else SIE's."""
    body = error.openai_body() if scope["path"] in OPENAI_PATHS else error.body()
    scope.setdefault("state", {})["error_code"] = error.code  # for the access-log line
    headers = [(b"content-type", b"application/json")]
    headers += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in error.headers.items()]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": json.dumps(body).encode()})
