"""OpenAI embeddings API: `model` is `<model>`, `<model>:<adapter>` or `<model>:<profile>`."""

from __future__ import annotations

import base64

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import Response

from server.api.context import AppContext, context, request_body
from server.api.encoding import run_encode
from server.api.errors import invalid_input
from server.api.schemas import EmbeddingsIn, validate
from server.api.wire import dump_json

router = APIRouter()
BODY_SCHEMA = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": {"$ref": "#/components/schemas/EmbeddingsIn"}}}}}


def parse_embeddings(body) -> EmbeddingsIn:
    raw = body.get("input") if isinstance(body, dict) else None
    if isinstance(raw, list) and raw and all(isinstance(x, (int, list)) for x in raw):
        raise invalid_input("token-id input is not supported; send strings (the server tokenises)")
    return validate(EmbeddingsIn, body, what="request body must be a JSON object")


def split_model(ctx: AppContext, name: str) -> tuple[str, dict[str, str]]:
    """`<model>:<suffix>`: a profile of that name wins over an adapter of that name."""
    if name in ctx.models:
        return name, {}
    base, sep, suffix = name.rpartition(":")
    model = ctx.model(base if sep else name)
    if not suffix:
        raise invalid_input(f"model {name!r} names no adapter or profile after ':'")
    return base, {"profile": suffix} if suffix in model.config.profiles else {"lora_id": suffix}


@router.get("/openai/v1/models")
async def openai_models(request: Request) -> dict:
    """OpenAI's model list (SIE owns /v1/models): each model, then `<model>:<adapter|profile>` ids."""
    data = []
    for name, model in context(request).models.items():
        data.append({"id": name, "object": "model", "created": 0, "owned_by": "multilora-embed"})
        for suffix in sorted(set(model.adapters.names()) | set(model.config.profiles)):
            data.append({"id": f"{name}:{suffix}", "object": "model", "created": 0,
                         "owned_by": "multilora-embed", "parent": name})
    return {"object": "list", "data": data}


@router.post("/openai/v1/embeddings", openapi_extra=BODY_SCHEMA)
@router.post("/v1/embeddings", openapi_extra=BODY_SCHEMA)
async def embeddings(request: Request) -> Response:
    ctx = context(request)
    with ctx.metrics.track("openai") as track:
        parsed = parse_embeddings(await request_body(request, content_type="application/json"))
        model, suffix = split_model(ctx, parsed.model)
        _, result = await run_encode(ctx, parsed.to_request(model, suffix), request, track)
    if parsed.encoding_format == "base64":
        values = [base64.b64encode(v.astype("<f4").tobytes()).decode() for v in result.vectors]
    else:
        values = [v.astype(np.float32) for v in result.vectors]
    payload = {"object": "list", "model": parsed.model,
               "data": [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(values)],
               "usage": {"prompt_tokens": result.input_tokens, "total_tokens": result.input_tokens}}
    return Response(dump_json(payload), media_type="application/json",
                    headers={"X-Replica-ID": result.replica} if result.replica else None)
