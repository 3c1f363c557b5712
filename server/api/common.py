"""What both encode APIs share: model lookup and running an encode with errors mapped for HTTP."""

from __future__ import annotations

import asyncio
import logging
from typing import Awaitable, Mapping, Sequence, TypeVar

from starlette.requests import Request

from server import errors
from server.api.middleware import request_id
from server.backends.base import AdapterNotLoaded
from server.metrics import RequestTrack
from server.options import EncodeOptions
from server.served_model import EncodeResult, ServedModel

log = logging.getLogger(__name__)
T = TypeVar("T")
CLIENT_GONE = 499  # nginx's "client closed request": nobody is left to read the answer


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Run `work`, cancelling it (and so dropping its rows from pending batches) if the client leaves."""
    task = asyncio.ensure_future(work)

    async def client_gone() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(client_gone())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if not task.done():
        task.cancel()
        raise errors.ApiError(CLIENT_GONE, "CLIENT_CLOSED", "the client closed the connection")
    return task.result()


def find_engine(engines: Mapping[str, ServedModel], model: str) -> ServedModel:
    engine = engines.get(model)
    if engine is None:
        raise errors.model_not_found(model, engines)
    return engine


async def run_encode(engine: ServedModel, texts: Sequence[str], options: EncodeOptions, request: Request,
                     track: RequestTrack) -> EncodeResult:
    """engine.encode, with a vanished adapter as 400 and any other failure as 500 naming the request id."""
    track.adapter = options.lora_id
    try:
        result = await unless_disconnected(request, engine.encode(texts, options))
    except errors.ApiError:
        raise
    except AdapterNotLoaded:
        raise errors.unknown_lora(options.lora_id or "", engine.name, engine.adapter_names()) from None
    except Exception:
        log.exception("encode failed (request %s)", request_id(request))
        raise errors.inference_error(request_id(request)) from None
    track.items, track.tokens = len(texts), result.input_tokens
    track.queue_s, track.inference_s = result.queue_ms / 1e3, result.inference_ms / 1e3
    return result
