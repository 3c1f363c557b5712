"""API errors: one exception type carrying the HTTP status, the SPEC error code and extra headers."""

from __future__ import annotations

from typing import Iterable


class ApiError(Exception):
    """An error answered as `{"detail": {"code", "message"}}` with the given status."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}

    def __reduce__(self):
        # Crosses process boundaries in scale-out (Ray pickles it back to the ingress).
        return ApiError, (self.status, self.code, self.message, self.headers)

    def body(self) -> dict:
        return {"detail": {"code": self.code, "message": self.message}}


def _names(names: Iterable[str]) -> str:
    listed = sorted(names)
    return ", ".join(listed) if listed else "none"


def invalid_input(message: str) -> ApiError:
    return ApiError(400, "INVALID_INPUT", message)


def input_too_long(message: str, status: int = 400) -> ApiError:
    return ApiError(status, "INPUT_TOO_LONG", message)


def unknown_lora(lora_id: str, model: str, available: Iterable[str]) -> ApiError:
    return invalid_input(f"unknown lora_id {lora_id!r} for model {model!r}; available: {_names(available)}")


def unknown_profile(profile: str, model: str, available: Iterable[str]) -> ApiError:
    return invalid_input(f"unknown profile {profile!r} for model {model!r}; available: {_names(available)}")


def model_not_found(model: str, available: Iterable[str]) -> ApiError:
    return ApiError(404, "MODEL_NOT_FOUND", f"model {model!r} is not served here; available: {_names(available)}")


def model_loading(model: str) -> ApiError:
    return ApiError(503, "MODEL_LOADING", f"model {model!r} is still loading", {"Retry-After": "5"})


def model_load_failed(model: str, cause: str) -> ApiError:
    return ApiError(502, "MODEL_LOAD_FAILED", f"model {model!r} failed to load: {cause}")


def queue_full(message: str) -> ApiError:
    return ApiError(503, "QUEUE_FULL", message, {"Retry-After": "1"})


def unauthorized() -> ApiError:
    return ApiError(401, "UNAUTHORIZED", "missing or invalid API key (send 'Authorization: Bearer <key>')",
                    {"WWW-Authenticate": "Bearer"})


def inference_error(request_id: str) -> ApiError:
    return ApiError(500, "INFERENCE_ERROR", f"inference failed for this batch (request id {request_id})")
