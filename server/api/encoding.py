"""What both encode APIs share once their body is parsed: resolve the options against the model the route
found, run the encode (cancelled if the client leaves) and record the request's metrics."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import TypeVar

from starlette.requests import Request

from server import errors
from server.api.errors import ApiError, client_gone, inference_error
from server.api.metrics import RequestTrack
from server.api.middleware import request_id
from server.api.model_ids import ModelId
from server.options import EncodeOptions, RequestedOptions, resolve_options
from server.served_model import EncodeResult

log = logging.getLogger(__name__)
T = TypeVar("T")
TRUNCATED_HEADER = "X-Truncated-Items"


def output_entries(result: EncodeResult, options: EncodeOptions) -> list[dict]:
    """Each item's outputs in SIE's shapes: `dense {dims, dtype, values}`, `sparse {dims, dtype, indices,
    values}` (float32 weights whatever the output dtype) and `multivector {token_dims, num_tokens, dtype,
    values}`; arrays stay numpy (msgpack-numpy on the wire, lists in JSON)."""
    count = len(result.sparse or result.multivector or result.vectors)
    entries: list[dict] = [{} for _ in range(count)]
    if result.vectors is not None:
        for entry, vector in zip(entries, result.vectors):
            entry["dense"] = {"dims": result.dims, "dtype": options.output_dtype, "values": vector}
    for entry, sparse in zip(entries, result.sparse or ()):
        entry["sparse"] = {"dims": result.output_dims.get("sparse"), "dtype": "float32", "indices": sparse.indices,
                           "values": sparse.values}
    token_dims = result.output_dims.get("multivector", 0)
    for entry, vectors in zip(entries, result.multivector or ()):
        entry["multivector"] = {"token_dims": token_dims, "num_tokens": int(vectors.shape[0]),
                                "dtype": options.output_dtype, "values": vectors}
    return entries


def provenance(result: EncodeResult, options: EncodeOptions) -> dict:
    """Which adapter made a request's vectors, as each item says it: the adapter as the client named it (None:
    base), the digest of its weights as loaded and the base model's digest (as `/v1/models` shows them)."""
    made = result.provenance
    return {"adapter": options.lora_id, "adapter_digest": made.adapter_digest, "base_digest": made.base_digest}


def result_headers(results: list[EncodeResult], options: EncodeOptions) -> dict[str, str]:
    """Headers every encode answer carries beyond timing: the replica, the items cut to max_seq_len, and the
    provenance (`X-Adapter`: the adapter's name or `base`, comma-separated for several; the digests where
    known, in the same order)."""
    result = results[0]
    headers = {"X-Replica-ID": result.replica} if result.replica else {}
    if result.truncated:
        headers[TRUNCATED_HEADER] = ",".join(map(str, result.truncated))
    names = options.lora_ids or (options.lora_id,)
    headers["X-Adapter"] = ",".join(name or "base" for name in names)
    digests = [r.provenance.adapter_digest for r in results]
    if any(digests):
        headers["X-Adapter-Digest"] = ",".join(d or "-" for d in digests)
    if result.provenance.base_digest:
        headers["X-Base-Digest"] = result.provenance.base_digest
    return headers


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Run `work` in this task, cancelling it (and so dropping its rows from pending batches) if the client
    leaves: one watcher task beside it, not a second task for the work (a lone request's fixed cost)."""
    this, left = asyncio.current_task(), asyncio.Event()

    async def client_left() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass
        left.set()
        this.cancel()

    watcher = asyncio.ensure_future(client_left())
    try:
        return await work
    except asyncio.CancelledError:
        if not left.is_set():
            raise  # cancelled from outside (shutdown): not the client's doing
        this.uncancel()
        raise client_gone() from None
    finally:
        watcher.cancel()


async def run_encode(target: ModelId, texts: tuple[str, ...], requested: RequestedOptions, request: Request,
                     track: RequestTrack) -> tuple[EncodeOptions, list[EncodeResult]]:
    """The request resolved once (its model found by the route, its options here) and encoded: one result, or
    one per adapter of `options.lora_ids`. Domain errors pass through (the app's handlers answer them);
    anything else is a 500 that names the request id, with the traceback in the log."""
    options = resolve_options(target.model.config, requested, target.selection)
    track.adapter = options.lora_id
    model = target.model
    try:
        work = model.encode_each(texts, options) if options.lora_ids else _one(model.encode(texts, options))
        results = await unless_disconnected(request, work)
    except (errors.ServingError, ApiError):
        raise
    except Exception:
        log.exception("encode failed (request %s)", request_id(request))
        raise inference_error(request_id(request)) from None
    first = results[0]
    track.items, track.tokens = len(texts) * len(results), first.input_tokens * len(results)
    track.queue_s, track.inference_s = first.queue_ms / 1e3, first.inference_ms / 1e3
    track.truncated = len(first.truncated)
    track.adapter = first.provenance.adapter or track.adapter  # the registry's name (a tenant's namespaced)
    return options, results


async def _one(work: Awaitable[EncodeResult]) -> list[EncodeResult]:
    return [await work]
