"""Adapter admin routes: load (POST), unload (DELETE), list, and vLLM's load/unload pair; behind the API key.
A model without an admin part (scale-out: residency is per replica) answers 400 NOT_SUPPORTED."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel, ConfigDict, StrictBool, StrictStr

from server import errors
from server.api.context import AppContext, context, request_body
from server.api.errors import invalid_input
from server.api.schemas import validate
from server.config import valid_adapter_name
from server.served_model import AdapterAdmin, ServedModel

router = APIRouter()


class LoadLoraIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: StrictStr
    source: StrictStr | None = None  # None: where the model's config says (lora_paths, catalog, adapter roots)
    pin: StrictBool = False
    reload: StrictBool = False  # a resident adapter: read it again (from `source`, else its own) with no gap


class VllmLoraIn(BaseModel):
    model_config = ConfigDict(extra="ignore")
    lora_name: StrictStr
    lora_path: StrictStr | None = None
    load_inplace: StrictBool = False  # vLLM's name for a reload of a resident adapter


async def parse(request: Request, model: type[BaseModel]):
    return validate(model, await request_body(request))


def admin_of(model: ServedModel) -> AdapterAdmin:
    """The model's admin part, once the model is ready."""
    if model.admin is None:
        raise errors.NotSupported("managing adapters through the admin API is not available in scale-out mode: "
                                  "each replica loads adapters on demand from the model's lora_paths and adapter "
                                  "roots (Ray multiplexing)")
    model.status().require_ready()
    return model.admin


def check_name(name: str) -> str:
    if not valid_adapter_name(name):
        raise invalid_input(f"adapter name {name!r} must be 1-128 letters, digits, '-', '_', '.'")
    return name


def vllm_target(ctx: AppContext, lora_name: str) -> tuple[ServedModel, str]:
    """`<model>:<adapter>`, or a bare adapter name when one model is served."""
    model, sep, name = lora_name.rpartition(":")
    if sep:
        return ctx.model(model), name
    if len(ctx.models) != 1:
        raise invalid_input(f"lora_name {lora_name!r} must be '<model>:<adapter>' when several models "
                            f"are served ({', '.join(ctx.models)})")
    return next(iter(ctx.models.values())), lora_name


@router.get("/v1/models/{model:path}/loras")
async def list_loras(model: str, request: Request) -> dict:
    ctx = context(request)
    return {"model": model, "loras": ctx.paths.hide_in(ctx.model(model).adapters.describe())}


@router.post("/v1/models/{model:path}/loras")
async def load_lora(model: str, request: Request) -> JSONResponse:
    ctx = context(request)
    served = ctx.model(model)
    admin = admin_of(served)  # not supported, or not ready: answered before the body is read
    spec = await parse(request, LoadLoraIn)
    described, created = await load_or_reload(served, admin, check_name(spec.name), spec.source, pin=spec.pin,
                                              reload=spec.reload)
    return JSONResponse(ctx.paths.hide_in(described), status_code=201 if created else 200)


async def load_or_reload(model: ServedModel, admin: AdapterAdmin, name: str, source: str | None, *,
                         pin: bool = False, reload: bool = False) -> tuple[dict, bool]:
    """Load (201), find (200), or with `reload` read a resident adapter again with no gap (200)."""
    if reload and name in model.adapters.names():
        return await admin.reload(name, source), False
    return await admin.load(name, source, pin=pin)


@router.delete("/v1/models/{model:path}/loras/{name}")
async def unload_lora(model: str, name: str, request: Request, force: bool = False) -> dict:
    """A preloaded adapter answers 409 LORA_PINNED unless `?force=true`."""
    await admin_of(context(request).model(model)).unload(name, force=force)
    return {"model": model, "unloaded": name}


@router.post("/v1/load_lora_adapter")
async def vllm_load(request: Request) -> PlainTextResponse:
    """vLLM's route (what gateways and vLLM tooling call): {"lora_name", "lora_path"}."""
    spec = await parse(request, VllmLoraIn)
    model, name = vllm_target(context(request), spec.lora_name)
    try:
        await load_or_reload(model, admin_of(model), check_name(name), spec.lora_path, reload=spec.load_inplace)
    except errors.UnknownAdapter as exc:  # no lora_path, and not a name the model can load by itself
        raise errors.InvalidInput(f"lora_path is missing: give the folder or hub id to load {name!r} from "
                                  f"({exc.message})", field="lora_path") from None
    verb = "reloaded" if spec.load_inplace else "added"
    return PlainTextResponse(f"Success: LoRA adapter '{spec.lora_name}' {verb} successfully.")


@router.post("/v1/unload_lora_adapter")
async def vllm_unload(request: Request) -> PlainTextResponse:
    spec = await parse(request, VllmLoraIn)
    model, name = vllm_target(context(request), spec.lora_name)
    await admin_of(model).unload(name)
    return PlainTextResponse(f"Success: LoRA adapter '{spec.lora_name}' removed successfully.")
