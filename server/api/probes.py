"""Process probes and the scrape endpoint: /healthz, /readyz, /metrics (and / to the docs)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse, RedirectResponse
from prometheus_client import CONTENT_TYPE_LATEST

from server.api.context import context
from server.served_model import ModelState

router = APIRouter()


@router.get("/", include_in_schema=False)
async def root() -> RedirectResponse:
    return RedirectResponse("/docs")


@router.get("/healthz")
async def healthz() -> dict:
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(request: Request) -> JSONResponse:
    ctx = context(request)
    states = {name: model.status().state for name, model in ctx.models.items()}
    draining = ctx.lifecycle.draining
    ready = all(state is ModelState.READY for state in states.values()) and not draining
    status = "draining" if draining else "ready" if ready else "not_ready"
    return JSONResponse({"status": status, "models": {name: state.value for name, state in states.items()}},
                        status_code=200 if ready else 503)


@router.get("/metrics", response_class=PlainTextResponse,
            responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}})
async def prometheus(request: Request) -> Response:
    return Response(context(request).metrics.render(), media_type=CONTENT_TYPE_LATEST)
