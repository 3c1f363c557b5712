"""The FastAPI app: SIE encode route, health/readiness, model listing, and the SPEC error shape."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Mapping

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from server import __version__, errors
from server.api.admin import admin_router
from server.api.auth import authorize
from server.api.middleware import RequestIdMiddleware, read_body, request_id
from server.api.schemas import ParamsIn, parse_encode_request
from server.api.wire import MSGPACK, decode_body, dump_json, pack, wants_json
from server.backends.base import AdapterNotLoaded
from server.config import EngineConfig
from server.engine import ModelEngine
from server.options import resolve_options

log = logging.getLogger(__name__)
STATES = {"ready": "loaded", "loading": "loading", "failed": "failed"}


def model_info(engine: ModelEngine) -> dict:
    config = engine.config
    dims = config.dims or engine.backend.hidden_size or None
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
        "loras": [engine.adapters.entries[name].describe() for name in sorted(engine.adapters.entries)],
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


def create_app(engines: Mapping[str, ModelEngine], settings: EngineConfig, *, load_in_background: bool = True) -> FastAPI:
    """Build the app; model loading starts when the app starts (in threads, so /readyz answers at once)."""

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI):
        loop = asyncio.get_running_loop()
        loads = []
        for engine in engines.values():
            engine.batcher.start()
            if engine.state == "loading":
                loads.append(loop.run_in_executor(None, engine.load))
        if not load_in_background:
            await asyncio.gather(*loads)
        yield
        for engine in engines.values():
            await engine.adapters.close()
            await engine.batcher.stop()
        await asyncio.gather(*loads, return_exceptions=True)
        for engine in engines.values():
            engine.backend.close()

    app = FastAPI(title="multilora-embed", version=__version__, lifespan=lifespan)
    app.add_middleware(RequestIdMiddleware)
    _install_error_handlers(app)

    def engine_for(model: str) -> ModelEngine:
        engine = engines.get(model)
        if engine is None:
            raise errors.model_not_found(model, engines)
        return engine

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        states = {name: engine.state for name, engine in engines.items()}
        ready = all(state == "ready" for state in states.values())
        return JSONResponse({"status": "ready" if ready else "not_ready", "models": states},
                            status_code=200 if ready else 503)

    @app.get("/v1/models")
    async def list_models(request: Request) -> dict:
        authorize(request, settings)
        return {"models": [model_info(engine) for engine in engines.values()]}

    app.include_router(admin_router(engine_for, settings))

    @app.get("/v1/models/{model:path}")
    async def get_model(model: str, request: Request) -> dict:
        authorize(request, settings)
        return model_info(engine_for(model))

    @app.post("/v1/encode/{model:path}")
    async def encode(model: str, request: Request) -> Response:
        started = time.perf_counter()
        authorize(request, settings)
        engine = engine_for(model)
        engine.check_ready()
        body = decode_body(await read_body(request, settings.max_body_bytes), request.headers.get("content-type"))
        parsed = parse_encode_request(body)
        params = parsed.params or ParamsIn()
        options = resolve_options(engine.config, options=params.options, instruction=params.instruction,
                                  output_types=params.output_types, output_dtype=params.output_dtype)
        try:
            result = await engine.encode([item.text for item in parsed.items], options)
        except errors.ApiError:
            raise
        except AdapterNotLoaded:
            raise errors.unknown_lora(options.lora_id or "", model, engine.backend.adapters()) from None
        except Exception:
            log.exception("encode failed (request %s)", request_id(request))
            raise errors.inference_error(request_id(request)) from None
        items = []
        for item, vector in zip(parsed.items, result.vectors):
            entry = {"dense": {"dims": result.dims, "dtype": options.output_dtype, "values": vector}}
            if item.id is not None:
                entry = {"id": item.id, **entry}
            items.append(entry)
        total_ms = (time.perf_counter() - started) * 1e3
        payload = {"model": model, "items": items, "usage": {"input_tokens": result.input_tokens},
                   "timing": {"total_ms": total_ms, "queue_ms": result.queue_ms,
                              "tokenization_ms": result.tokenization_ms, "inference_ms": result.inference_ms,
                              "postprocessing_ms": result.postprocessing_ms}}
        headers = {"X-Queue-Time": f"{result.queue_ms:.2f}", "X-Inference-Time": f"{result.inference_ms:.2f}",
                   "X-Total-Time": f"{total_ms:.2f}"}
        if wants_json(request.headers.get("accept")):
            return Response(dump_json(payload), media_type="application/json", headers=headers)
        return Response(pack(payload), media_type=MSGPACK, headers=headers)

    return app
