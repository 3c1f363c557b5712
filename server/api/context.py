"""What the module-level routes reach through `request.app.state` (the served models, the server
settings, metrics and the drain state), and the request body as every route with one reads it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from starlette.requests import Request

from server import errors
from server.api.lifecycle import Lifecycle
from server.api.metrics import Metrics
from server.api.middleware import read_body
from server.api.wire import decode
from server.config import ServerSettings
from server.public_paths import PublicPaths
from server.served_model import ServedModel


@dataclass(frozen=True)
class AppContext:
    models: Mapping[str, ServedModel]
    settings: ServerSettings
    metrics: Metrics
    lifecycle: Lifecycle
    paths: PublicPaths = PublicPaths()  # how server paths are shown in answers

    def model(self, name: str) -> ServedModel:
        served = self.models.get(name)
        if served is None:
            raise errors.model_not_found(name, self.models)
        return served


def context(request: Request) -> AppContext:
    return request.app.state.context


async def request_body(request: Request, *, content_type: str | None = None):
    """The body read up to `max_body_bytes` (413 past it) and decoded: msgpack or JSON as `content_type`
    says (default: the request's Content-Type header)."""
    raw = await read_body(request, context(request).settings.max_body_bytes)
    return await decode(raw, content_type or request.headers.get("content-type"))
