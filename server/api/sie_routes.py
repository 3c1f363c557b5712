"""SIE's routes: encode (msgpack or JSON) and the model list."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request, Response

from server.api.context import context, request_body
from server.api.encoding import run_encode
from server.api.openapi import ENCODE_OPENAPI
from server.api.schemas import EncodeRequestIn, validate
from server.api.wire import MSGPACK, dump_json, pack, wants_json
from server.served_model import ModelState, ServedModel

router = APIRouter()
STATES = {ModelState.READY: "loaded", ModelState.LOADING: "loading", ModelState.FAILED: "failed"}


def model_info(model: ServedModel) -> dict:
    config, status = model.config, model.status()
    return {
        "name": config.name,
        "state": STATES[status.state],
        "loaded": status.state is ModelState.READY,
        "last_error": {"message": status.failure} if status.failure else None,
        "inputs": ["text"],
        "outputs": ["dense"],
        "dims": {"dense": status.dims} if status.dims else {},
        "max_sequence_length": config.max_seq_len,
        "profiles": {name: {"instruction": p.instruction, "lora_id": p.lora_id, "is_default": False}
                     for name, p in config.profiles.items()},
        "loras": model.adapters.describe(),
    }


@router.get("/v1/models")
async def list_models(request: Request) -> dict:
    return {"models": [model_info(model) for model in context(request).models.values()]}


@router.get("/v1/models/{model:path}")
async def get_model(model: str, request: Request) -> dict:
    return model_info(context(request).model(model))


@router.post("/v1/encode/{model:path}", openapi_extra=ENCODE_OPENAPI)
async def encode(model: str, request: Request) -> Response:
    started = time.perf_counter()
    ctx = context(request)
    with ctx.metrics.track("sie", model) as track:
        body = await request_body(request)
        parsed = validate(EncodeRequestIn, body, what="request body must be an object with 'items'")
        options, result = await run_encode(ctx, parsed.to_request(model), request, track)
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
