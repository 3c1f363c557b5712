"""OpenAI embeddings API: `model` is `<model>`, `<model>:<adapter>` or `<model>:<profile>`."""

from __future__ import annotations

import base64
import re

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import Response

from server import errors
from server.api.context import context, request_body
from server.api.encoding import provenance, result_headers, run_encode
from server.api.errors import ApiError, from_domain, invalid_input
from server.api.model_ids import parse_model_id
from server.api.model_info import openai_entries
from server.api.schemas import EmbeddingsIn, validate
from server.api.wire import dump_json

router = APIRouter()
# A core error's field -> (OpenAI's parameter, whether the message's own wording is renamed too).
OPENAI_PARAMS = {"dims": ("dimensions", True), "lora_id": ("model", False), "profile": ("model", False),
                 "is_query": ("is_query", False), "instruction": ("instruction", False), "items": ("input", False),
                 "output_types": ("model", False)}
BODY_SCHEMA = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": {"$ref": "#/components/schemas/EmbeddingsIn"}}}}}


def parse_embeddings(body) -> EmbeddingsIn:
    raw = body.get("input") if isinstance(body, dict) else None
    if isinstance(raw, list) and raw and all(isinstance(x, (int, list)) for x in raw):
        raise invalid_input("token-id input is not supported; send strings (the server tokenises)", field="input")
    return validate(EmbeddingsIn, body, what="request body must be a JSON object")


def model_not_found(message: str) -> ApiError:
    """OpenAI's own answer for a model it does not have: 404 `model_not_found`, no `param`."""
    return ApiError(404, "model_not_found", message)


@router.get("/openai/v1/models")
async def openai_models(request: Request) -> dict:
    """OpenAI's model list: each model, then `<model>:<adapter|profile>` ids (also under /v1/models' `data`)."""
    models = context(request).models
    return {"object": "list", "data": [e for name, model in models.items() for e in openai_entries(name, model)]}


def openai_error(exc: errors.InvalidInput) -> ApiError:
    """A core 400 in OpenAI's terms: `param` set, SIE's option names replaced by OpenAI's parameters."""
    param, renamed = OPENAI_PARAMS.get(exc.field, (exc.field, False))
    message = re.sub(rf"\b(options\.)?{re.escape(exc.field)}\b", param, exc.message) if renamed else exc.message
    if exc.field == "output_types":
        message += ("; the OpenAI embeddings route returns dense vectors only: ask /v1/encode for sparse or "
                    "multivector outputs (params.output_types)")
    return ApiError(400, from_domain(exc).code, message, param=param)


@router.post("/openai/v1/embeddings", openapi_extra=BODY_SCHEMA)
@router.post("/v1/embeddings", openapi_extra=BODY_SCHEMA)
async def embeddings(request: Request) -> Response:
    ctx = context(request)
    with ctx.metrics.track("openai") as track:
        parsed = parse_embeddings(await request_body(request, content_type="application/json"))
        try:
            target = parse_model_id(ctx, parsed.model)
            track.model = target.name
            options, results = await run_encode(target, *parsed.requested(), request, track)
            result = results[0]
        except errors.ModelNotFound as exc:
            raise model_not_found(exc.message) from None
        except errors.UnknownAdapter as exc:  # `<model>:<suffix>` naming no adapter or profile: no such model
            config, known = target.model.config, exc.message.split("; ", 1)[-1]
            raise model_not_found(f"the model {parsed.model!r} does not exist: {target.selection.lora_id!r} is no "
                                  f"adapter or profile of {config.name!r} ({known}; profiles: "
                                  f"{', '.join(config.profiles) or 'none'})") from None
        except errors.InvalidInput as exc:
            raise openai_error(exc) from None
    if parsed.encoding_format == "base64":
        values = [base64.b64encode(v.astype("<f4").tobytes()).decode() for v in result.vectors]
    else:
        values = [v.astype(np.float32) for v in result.vectors]
    made = provenance(result, options)
    payload = {"object": "list", "model": parsed.model,
               "data": [{"object": "embedding", "index": i, "embedding": v, "provenance": made}
                        for i, v in enumerate(values)],
               "usage": {"prompt_tokens": result.input_tokens, "total_tokens": result.input_tokens}}
    return Response(dump_json(payload), media_type="application/json", headers=result_headers(results, options))
