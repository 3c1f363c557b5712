"""Adapter admin routes: load (POST), unload (DELETE), list, and vLLM's load/unload pair; behind the API key."""

from __future__ import annotations

from typing import Callable

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel, ConfigDict, StrictBool, StrictStr, ValidationError

from server import errors
from server.api.schemas import describe
from server.api.wire import decode_body
from server.api.middleware import read_body
from server.config import EngineConfig, valid_adapter_name
from server.served_model import ServedModel


class LoadLoraIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: StrictStr
    source: StrictStr
    pin: StrictBool = False


class VllmLoraIn(BaseModel):
    model_config = ConfigDict(extra="ignore")
    lora_name: StrictStr
    lora_path: StrictStr | None = None


def admin_router(engine_for: Callable[[str], ServedModel], settings: EngineConfig,
                 models: Callable[[], list[str]]) -> APIRouter:
    router = APIRouter()

    async def parse(request: Request, model: type[BaseModel]):
        body = decode_body(await read_body(request, settings.max_body_bytes), request.headers.get("content-type"))
        try:
            return model.model_validate(body)
        except ValidationError as exc:
            raise errors.invalid_input(describe(exc)) from None

    def check_name(name: str) -> None:
        if not valid_adapter_name(name):
            raise errors.invalid_input(f"adapter name {name!r} must be 1-128 letters, digits, '-', '_', '.'")

    def vllm_target(lora_name: str) -> tuple[ServedModel, str]:
        """`<model>:<adapter>`, or a bare adapter name when one model is served."""
        model, sep, name = lora_name.rpartition(":")
        if sep:
            return engine_for(model), name
        served = models()
        if len(served) != 1:
            raise errors.invalid_input(f"lora_name {lora_name!r} must be '<model>:<adapter>' when several models "
                                       f"are served ({', '.join(served)})")
        return engine_for(served[0]), lora_name

    @router.get("/v1/models/{model:path}/loras")
    async def list_loras(model: str) -> dict:
        return {"model": model, "loras": await engine_for(model).describe_adapters()}

    @router.post("/v1/models/{model:path}/loras")
    async def load_lora(model: str, request: Request) -> JSONResponse:
        engine = engine_for(model)
        engine.check_ready()
        spec = await parse(request, LoadLoraIn)
        check_name(spec.name)
        described, created = await engine.load_adapter(spec.name, spec.source, pin=spec.pin)
        return JSONResponse(described, status_code=201 if created else 200)

    @router.post("/v1/load_lora_adapter")
    async def vllm_load(request: Request) -> PlainTextResponse:
        """vLLM's route (what gateways and vLLM tooling call): {"lora_name", "lora_path"}."""
        spec = await parse(request, VllmLoraIn)
        engine, name = vllm_target(spec.lora_name)
        engine.check_ready()
        check_name(name)
        await engine.load_adapter(name, spec.lora_path or "")
        return PlainTextResponse(f"Success: LoRA adapter '{spec.lora_name}' added successfully.")

    @router.post("/v1/unload_lora_adapter")
    async def vllm_unload(request: Request) -> PlainTextResponse:
        spec = await parse(request, VllmLoraIn)
        engine, name = vllm_target(spec.lora_name)
        await engine.unload_adapter(name)
        return PlainTextResponse(f"Success: LoRA adapter '{spec.lora_name}' removed successfully.")

    @router.delete("/v1/models/{model:path}/loras/{name}")
    async def unload_lora(model: str, name: str) -> dict:
        await engine_for(model).unload_adapter(name)
        return {"model": model, "unloaded": name}

    return router
