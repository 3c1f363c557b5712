"""What the module-level routes reach through `request.app.state` (the served models, the server
settings, metrics and the drain state), and the request body as every route with one reads it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from starlette.requests import Request

from server import errors
from server.api.lifecycle import Lifecycle
from server.api.metrics import Metrics
from server.api.middleware import read_body
from server.api.tenancy import scoped_models
from server.api.wire import decode
from server.config import ServerSettings
from server.public_paths import PublicPaths
from server.served_model import ServedModel
from server.tenancy import KeyRing, Scope

MAX_VIEWS = 1024  # scoped views kept (one per key scope; a reloaded key file makes new ones)


@dataclass(frozen=True)
class AppContext:
    models: Mapping[str, ServedModel]
    settings: ServerSettings
    metrics: Metrics
    lifecycle: Lifecycle
    paths: PublicPaths = PublicPaths()  # how server paths are shown in answers
    keys: KeyRing = field(default_factory=KeyRing)
    views: dict = field(default_factory=dict, compare=False, repr=False)  # Scope -> its AppContext

    def scoped(self, scope: Scope) -> AppContext:
        """The context as a tenant's key sees it: its models, each narrowed to what it may use."""
        view = self.views.get(scope)
        if view is None:
            if len(self.views) >= MAX_VIEWS:
                self.views.clear()
            view = self.views[scope] = AppContext(scoped_models(self.models, scope), self.settings, self.metrics,
                                                  self.lifecycle, self.paths, self.keys)
        return view

    def model(self, name: str) -> ServedModel:
        served = self.models.get(name)
        if served is None:
            raise errors.model_not_found(name, self.models)
        return served


def context(request: Request) -> AppContext:
    """The app's context, as the request's key sees it (a key file's scoped keys; `auth.AuthMiddleware`)."""
    access = request.scope.get("access")
    ctx = request.app.state.context
    return ctx if access is None else ctx.scoped(access)


async def request_body(request: Request, *, content_type: str | None = None):
    """The body read up to `max_body_bytes` (413 past it) and decoded: msgpack or JSON as `content_type`
    says (default: the request's Content-Type header)."""
    raw = await read_body(request, context(request).settings.max_body_bytes)
    return await decode(raw, content_type or request.headers.get("content-type"))
