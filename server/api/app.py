"""The FastAPI app: wires the served models, settings, metrics and drain state to the routers, the
middleware and the error handlers (domain errors answered through the one table in `errors.py`)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Mapping

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from fastapi_offline import FastAPIOffline
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Route

from server import __version__, errors
from server.api import admin, openai_routes, probes, sie_routes
from server.api.auth import AuthMiddleware
from server.api.context import AppContext, context
from server.api.errors import (
    OPENAI_PATHS,
    ApiError,
    error_response,
    from_domain,
    invalid_input,
    route_not_found,
)
from server.api.lifecycle import DrainMiddleware, Lifecycle
from server.api.metrics import Metrics
from server.api.middleware import RequestContextMiddleware, replica_id
from server.api.openapi import install_openapi
from server.config import ServerSettings
from server.public_paths import public_paths
from server.served_model import ServedModel
from server.tenancy import KeyRing


async def answer_api_error(request: Request, exc: ApiError) -> JSONResponse:
    """Every error a route raised, with server paths shown as the config wrote them."""
    shown = ApiError(exc.status, exc.code, context(request).paths.hide(exc.message, keep=exc.said), exc.headers,
                     param=exc.param)
    request.state.error_code = exc.code  # for the access-log line
    return error_response(shown, openai=request.url.path in OPENAI_PATHS)


async def answer_domain_error(request: Request, exc: errors.ServingError) -> JSONResponse:
    return await answer_api_error(request, from_domain(exc))


async def answer_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    return await answer_api_error(request, invalid_input(str(exc.errors()[:3])))


async def answer_http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    if exc.status_code == 404:
        return await answer_api_error(request, route_not_found(request.method, request.url.path))
    code = {405: "METHOD_NOT_ALLOWED"}.get(exc.status_code, "HTTP_ERROR")
    return await answer_api_error(request, ApiError(exc.status_code, code, str(exc.detail),
                                                    getattr(exc, "headers", None)))


@contextlib.contextmanager
def reload_keys_on_hangup(keys: KeyRing):
    """With a key file, SIGHUP reads it again (main thread only: an app served from another thread, as in
    tests, still reloads when the file changes). Without one, SIGHUP keeps its default."""
    loop = asyncio.get_running_loop()
    installed = False
    if keys.path:
        try:
            loop.add_signal_handler(signal.SIGHUP, keys.reload)
            installed = True
        except (RuntimeError, ValueError, NotImplementedError, AttributeError):
            pass
    try:
        yield
    finally:
        if installed:
            loop.remove_signal_handler(signal.SIGHUP)


def _lifespan(ctx: AppContext, load_in_background: bool):
    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI):
        loads = []
        for model in ctx.models.values():
            loading = model.start(ctx.metrics.batch_observer(model.config.name))
            loading.add_done_callback(lambda _, m=model: ctx.lifecycle.model_loaded(m.status()))
            loads.append(loading)
        if not load_in_background:
            await asyncio.gather(*loads)
        with reload_keys_on_hangup(ctx.keys):
            yield
        await asyncio.gather(*(model.stop() for model in ctx.models.values()))

    return lifespan


def create_app(models: Mapping[str, ServedModel], settings: ServerSettings, *,
               load_in_background: bool = True) -> FastAPI:
    """Model loading starts when the app starts (in the background, so /readyz answers at once)."""
    ctx = AppContext(models, settings, Metrics(models, replica=replica_id()), Lifecycle(),
                     public_paths((model.config for model in models.values()), settings),
                     KeyRing(settings.api_keys, settings.api_key_file))
    # /docs and /redoc with their scripts served from the package, not a CDN (they work offline).
    app = FastAPIOffline(title="multilora-embed", version=__version__, lifespan=_lifespan(ctx, load_in_background),
                         description="Multi-LoRA embedding server: SIE encode API (msgpack or JSON) and OpenAI "
                                     "embeddings.")
    app.state.context = ctx
    app.add_middleware(AuthMiddleware, keys=ctx.keys, exempt=settings.auth_exempt_paths)
    app.add_middleware(DrainMiddleware, lifecycle=ctx.lifecycle)
    app.add_middleware(RequestContextMiddleware)
    app.add_exception_handler(ApiError, answer_api_error)
    app.add_exception_handler(errors.ServingError, answer_domain_error)
    app.add_exception_handler(RequestValidationError, answer_validation_error)
    app.add_exception_handler(StarletteHTTPException, answer_http_error)
    for module in (probes, admin, openai_routes, sie_routes):  # admin first: its /v1/models/.../loras paths
        app.include_router(module.router)
    _plain_hot_routes(app)
    install_openapi(app)
    return app


HOT_PATHS = ("/v1/encode/{model:path}", "/v1/embeddings", "/openai/v1/embeddings")


def _plain_hot_routes(app: FastAPI) -> None:
    """The encode routes also as plain Starlette routes, in front of their FastAPI twins: a request then skips
    FastAPI's dependency solving and endpoint wrapping, a fifth of a lone request's fixed cost on 2 cores
    (benchmarks/request_path.py). The twins stay for the OpenAPI document; these endpoints take only the
    request and its path parameters, and errors reach the same handlers."""
    routes = [route for module in (openai_routes, sie_routes) for route in module.router.routes]
    app.router.routes[:0] = [Route(route.path, _called_with_path_params(route.endpoint), methods=route.methods)
                             for route in routes if isinstance(route, APIRoute) and route.path in HOT_PATHS]


def _called_with_path_params(endpoint):
    async def plain(request: Request):
        return await endpoint(request=request, **request.path_params)

    plain.__name__ = endpoint.__name__
    return plain
