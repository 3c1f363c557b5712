"""The FastAPI app: SIE encode route, health/readiness, model listing, metrics and the SPEC error shape."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Mapping

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, RedirectResponse
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException as StarletteHTTPException

from server import __version__, errors
from server.api.admin import admin_router
from server.api.auth import AuthMiddleware
from server.api.common import find_engine, run_encode
from server.api.lifecycle import DrainMiddleware, Lifecycle
from server.api.middleware import RequestContextMiddleware, read_body, replica_id
from server.api.openai_routes import openai_router
from server.api.openapi import ENCODE_OPENAPI, install_openapi
from server.api.schemas import ParamsIn, parse_encode_request
from server.api.wire import MSGPACK, decode_body, dump_json, pack, wants_json
from server.config import EngineConfig
from server.metrics import Metrics
from server.options import resolve_options
from server.served_model import ServedModel

STATES = {"ready": "loaded", "loading": "loading", "failed": "failed"}


async def model_info(engine: ServedModel) -> dict:
    config = engine.config
    dims = engine.dims or None
    return {
        "name": config.name,
        "state": STATES[engine.state],
        "loaded": engine.state == "ready",
        "last_error": {"message": engine.failure} if engine.failure else None,
        "inputs": ["text"],
        "outputs": ["dense"],
        "dims": {"dense": dims} if dims else {},
        "max_sequence_length": config.max_seq_len,
        "profiles": {name: {"instruction": p.instruction, "lora_id": p.lora_id, "is_default": False}
                     for name, p in config.profiles.items()},
        "loras": await engine.describe_adapters(),
    }


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(errors.ApiError)
    async def _api_error(_: Request, exc: errors.ApiError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(errors.invalid_input(str(exc.errors()[:3])).body(), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED"}.get(exc.status_code, "HTTP_ERROR")
        return JSONResponse({"detail": {"code": code, "message": str(exc.detail)}}, status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))


def create_app(engines: Mapping[str, ServedModel], settings: EngineConfig, *, load_in_background: bool = True) -> FastAPI:
    """Build the app; model loading starts when the app starts (in threads, so /readyz answers at once)."""
    metrics = Metrics(engines, replica=replica_id())
    lifecycle = Lifecycle()

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI):
        loads = [engine.start(metrics.batch_observer(engine.name)) for engine in engines.values()]
        if not load_in_background:
            await asyncio.gather(*loads)
        yield
        await asyncio.gather(*(engine.stop() for engine in engines.values()))

    app = FastAPI(title="multilora-embed", version=__version__, lifespan=lifespan,
                  description="Multi-LoRA embedding server: SIE encode API (msgpack or JSON) and OpenAI embeddings.")
    app.state.lifecycle = lifecycle
    app.add_middleware(AuthMiddleware, keys=settings.api_keys, exempt=settings.auth_exempt_paths)
    app.add_middleware(DrainMiddleware, lifecycle=lifecycle)
    app.add_middleware(RequestContextMiddleware)
    _install_error_handlers(app)
    app.include_router(admin_router(lambda model: find_engine(engines, model), settings, lambda: list(engines)))
    app.include_router(openai_router(engines, settings, metrics))
    install_openapi(app)

    @app.get("/", include_in_schema=False)
    async def root() -> RedirectResponse:
        return RedirectResponse("/docs")

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        states = {name: engine.state for name, engine in engines.items()}
        ready = all(state == "ready" for state in states.values()) and not lifecycle.draining
        status = "draining" if lifecycle.draining else "ready" if ready else "not_ready"
        return JSONResponse({"status": status, "models": states}, status_code=200 if ready else 503)

    @app.get("/metrics", response_class=PlainTextResponse,
             responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}})
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def list_models() -> dict:
        return {"models": [await model_info(engine) for engine in engines.values()]}

    @app.get("/v1/models/{model:path}")
    async def get_model(model: str) -> dict:
        return await model_info(find_engine(engines, model))

    @app.post("/v1/encode/{model:path}", openapi_extra=ENCODE_OPENAPI)
    async def encode(model: str, request: Request) -> Response:
        started = time.perf_counter()
        with metrics.track("sie", model) as track:
            engine = find_engine(engines, model)
            engine.check_ready()
            body = decode_body(await read_body(request, settings.max_body_bytes), request.headers.get("content-type"))
            parsed = parse_encode_request(body)
            params = parsed.params or ParamsIn()
            options = resolve_options(engine.config, options=params.options, instruction=params.instruction,
                                      output_types=params.output_types, output_dtype=params.output_dtype)
            result = await run_encode(engine, [item.text for item in parsed.items], options, request, track)
        items = []
        for item, vector in zip(parsed.items, result.vectors):
            entry = {"dense": {"dims": result.dims, "dtype": options.output_dtype, "values": vector}}
            items.append({"id": item.id, **entry} if item.id is not None else entry)
        total_ms = (time.perf_counter() - started) * 1e3
        payload = {"model": model, "items": items, "usage": {"input_tokens": result.input_tokens},
                   "timing": {"total_ms": total_ms, "queue_ms": result.queue_ms,
                              "tokenization_ms": result.tokenization_ms, "inference_ms": result.inference_ms,
                              "postprocessing_ms": result.postprocessing_ms}}
        headers = {"X-Queue-Time": f"{result.queue_ms:.2f}", "X-Inference-Time": f"{result.inference_ms:.2f}",
                   "X-Total-Time": f"{total_ms:.2f}"}
        if result.replica:
            headers["X-Replica-ID"] = result.replica
        if wants_json(request.headers.get("accept")):
            return Response(dump_json(payload), media_type="application/json", headers=headers)
        return Response(pack(payload), media_type=MSGPACK, headers=headers)

    return app
