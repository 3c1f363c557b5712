"""SIE's routes: encode (msgpack or JSON) and the model list, under `<model>[:<profile|adapter>]` ids."""

from __future__ import annotations

import dataclasses
import time

from fastapi import APIRouter, Request, Response

from server.api.context import context, request_body
from server.api.encoding import output_entries, provenance, result_headers, run_encode
from server.api.model_ids import listed_model_id, parse_model_id
from server.api.model_info import model_entries, openai_entries, selected_info
from server.api.openapi import ENCODE_OPENAPI
from server.api.schemas import EncodeRequestIn, validate
from server.api.wire import MSGPACK, dump_json, pack, wants_json
from server.options import EncodeOptions
from server.served_model import EncodeResult

router = APIRouter()


@router.get("/v1/models")
async def list_models(request: Request) -> dict:
    """SIE's `models` (each model, then its `<model>:<profile>` and `<model>:<adapter>` ids) and, beside
    it, OpenAI's list shape, so an OpenAI client pointed at /v1 lists the same ids."""
    ctx = context(request)
    models = [entry for model in ctx.models.values() for entry in model_entries(model, ctx.paths)]
    data = [entry for name, model in ctx.models.items() for entry in openai_entries(name, model)]
    return {"models": models, "object": "list", "data": data}


@router.get("/v1/models/{model:path}")
async def get_model(model: str, request: Request) -> dict:
    ctx = context(request)
    return selected_info(listed_model_id(ctx, model), ctx.paths)


def answer_items(asked: list, options: EncodeOptions, results: list[EncodeResult]) -> list[dict]:
    """Each item's outputs and provenance; with `options.lora_ids`, the first adapter's outputs at the top
    (what SIE's SDKs read) and every adapter's, in the order named, under `adapters`."""
    each = [dataclasses.replace(options, lora_id=name) for name in options.lora_ids] or [options]
    entries = []  # per adapter, per item
    for chosen, result in zip(each, results):
        made = provenance(result, chosen)
        entries.append([{**entry, "provenance": made} for entry in output_entries(result, chosen)])
    items = []
    for index, item in enumerate(asked):
        answer = {"id": str(item.id)} if item.id is not None else {}  # ids are strings on SIE's wire
        answer.update(entries[0][index])
        if options.lora_ids:
            answer["adapters"] = [{"adapter": name, **copy[index]} for name, copy in zip(options.lora_ids, entries)]
        items.append(answer)
    return items


@router.post("/v1/encode/{model:path}", openapi_extra=ENCODE_OPENAPI)
async def encode(model: str, request: Request) -> Response:
    started = time.perf_counter()
    ctx = context(request)
    with ctx.metrics.track("sie", model) as track:
        target = parse_model_id(ctx, model)
        track.model = target.name
        body = await request_body(request)
        parsed = validate(EncodeRequestIn, body, what="request body must be an object with 'items'")
        options, results = await run_encode(target, *parsed.requested(), request, track)
    result = results[0]
    items = answer_items(parsed.items, options, results)
    total_ms = (time.perf_counter() - started) * 1e3
    payload = {"model": model, "items": items, "usage": {"input_tokens": result.input_tokens},
               "timing": {"total_ms": total_ms, "queue_ms": result.queue_ms,
                          "tokenization_ms": result.tokenization_ms, "inference_ms": result.inference_ms,
                          "postprocessing_ms": result.postprocessing_ms}}
    headers = {"X-Queue-Time": f"{result.queue_ms:.2f}", "X-Inference-Time": f"{result.inference_ms:.2f}",
               "X-Total-Time": f"{total_ms:.2f}", **result_headers(results, options)}
    if wants_json(request.headers.get("accept")):
        return Response(dump_json(payload), media_type="application/json", headers=headers)
    return Response(pack(payload), media_type=MSGPACK, headers=headers)
