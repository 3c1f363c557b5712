"""OpenAI embeddings API: `model` is `<model>`, `<model>:<adapter>` or `<model>:<profile>`."""

from __future__ import annotations

import base64
from typing import Literal, Mapping

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, StrictBool, StrictInt, StrictStr, ValidationError, field_validator

from server import errors
from server.api.common import find_engine, run_encode
from server.api.middleware import read_body
from server.api.openai_errors import openai_error_response
from server.api.schemas import describe
from server.api.wire import decode_body, dump_json
from server.config import EngineConfig
from server.metrics import Metrics
from server.options import resolve_options
from server.served_model import ServedModel


class EmbeddingsIn(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: StrictStr
    input: StrictStr | list[StrictStr]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: StrictInt | None = None
    user: StrictStr | None = None
    is_query: StrictBool | None = None  # extensions, sent with the client's extra_body
    instruction: StrictStr | None = None

    @field_validator("input")
    @classmethod
    def _texts(cls, value):
        texts = [value] if isinstance(value, str) else value
        if not texts:
            raise ValueError("input must hold at least one string")
        if any(t == "" or "\x00" in t for t in texts):
            raise ValueError("input strings must be non-empty and free of NUL characters")
        return value


def parse_embeddings(body) -> EmbeddingsIn:
    if not isinstance(body, dict):
        raise errors.invalid_input("request body must be a JSON object")
    raw = body.get("input")
    if isinstance(raw, list) and raw and all(isinstance(x, int) or isinstance(x, list) for x in raw):
        raise errors.invalid_input("token-id input is not supported; send strings (the server tokenises)")
    try:
        return EmbeddingsIn.model_validate(body)
    except ValidationError as exc:
        raise errors.invalid_input(describe(exc)) from None


def split_model(engines: Mapping[str, ServedModel], name: str) -> tuple[ServedModel, dict]:
    """`<model>:<suffix>`: a profile of that name wins over an adapter of that name."""
    if name in engines:
        return engines[name], {}
    base, sep, suffix = name.rpartition(":")
    engine = find_engine(engines, base if sep else name)
    if not suffix:
        raise errors.invalid_input(f"model {name!r} names no adapter or profile after ':'")
    return engine, {"profile": suffix} if suffix in engine.config.profiles else {"lora_id": suffix}


def openai_router(engines: Mapping[str, ServedModel], settings: EngineConfig, metrics: Metrics) -> APIRouter:
    router = APIRouter()

    @router.get("/openai/v1/models")
    async def openai_models() -> dict:
        """OpenAI's model list (SIE owns /v1/models): each model, then `<model>:<adapter|profile>` ids."""
        data = []
        for name, engine in engines.items():
            data.append({"id": name, "object": "model", "created": 0, "owned_by": "multilora-embed"})
            for suffix in sorted(set(engine.adapter_names()) | set(engine.config.profiles)):
                data.append({"id": f"{name}:{suffix}", "object": "model", "created": 0,
                             "owned_by": "multilora-embed", "parent": name})
        return {"object": "list", "data": data}

    body_schema = {"requestBody": {"required": True, "content": {
        "application/json": {"schema": {"$ref": "#/components/schemas/EmbeddingsIn"}}}}}

    @router.post("/openai/v1/embeddings", openapi_extra=body_schema)
    @router.post("/v1/embeddings", openapi_extra=body_schema)
    async def embeddings(request: Request) -> Response:
        try:
            with metrics.track("openai") as track:
                parsed = parse_embeddings(decode_body(await read_body(request, settings.max_body_bytes), None))
                engine, options = split_model(engines, parsed.model)
                track.model = engine.name
                engine.check_ready()
                if parsed.is_query is not None:
                    options["is_query"] = parsed.is_query
                if parsed.dimensions is not None:
                    options["dims"] = parsed.dimensions
                resolved = resolve_options(engine.config, options=options, instruction=parsed.instruction)
                texts = [parsed.input] if isinstance(parsed.input, str) else parsed.input
                result = await run_encode(engine, texts, resolved, request, track)
        except errors.ApiError as exc:
            return openai_error_response(exc)
        if parsed.encoding_format == "base64":
            values = [base64.b64encode(v.astype("<f4").tobytes()).decode() for v in result.vectors]
        else:
            values = [v.astype(np.float32) for v in result.vectors]
        payload = {"object": "list", "model": parsed.model,
                   "data": [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(values)],
                   "usage": {"prompt_tokens": result.input_tokens, "total_tokens": result.input_tokens}}
        return Response(dump_json(payload), media_type="application/json",
                        headers={"X-Replica-ID": result.replica} if result.replica else None)

    return router
