"""The ingress side of a model served by encoder replicas: a `ServedModel` whose encode is a Ray Serve
handle call. A request that names an adapter carries `multiplexed_model_id=<model>:<adapter>`, so Ray
routes it to a replica that holds (or is loading) that adapter; base requests balance over all."""

from __future__ import annotations

import asyncio
import logging
from typing import Sequence

from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from ray.serve.handle import DeploymentHandle

from server import errors
from server.config import ModelConfig
from server.options import EncodeOptions
from server.scaleout.encoder import unwrap_error
from server.served_model import BatchObserver, EncodeResult, ModelStats

log = logging.getLogger(__name__)
CONNECT_RETRY_S = 2.0


def not_here(action: str) -> errors.ApiError:
    return errors.ApiError(400, "NOT_SUPPORTED", f"{action} is not available in scale-out mode: each replica "
                           "loads adapters on demand from the model's lora_paths and adapter roots (Ray multiplexing)")


class RemoteModel:
    def __init__(self, config: ModelConfig, handle: DeploymentHandle):
        self.config = config
        self.name = config.name
        self.handle = handle
        self.state = "loading"
        self.failure: str | None = None
        self._dims = config.dims or 0
        self._served: set[str] = set()  # dynamic adapters seen answering (bounded by what the sources hold)
        self._connecting: asyncio.Task | None = None

    @property
    def dims(self) -> int:
        return self._dims

    def check_ready(self) -> None:
        if self.state != "ready":
            raise errors.model_loading(self.name)

    def start(self, on_batch: BatchObserver) -> asyncio.Future:
        """Ready once one encoder replica answers (batches, and so `on_batch`, live on the replicas)."""
        self._connecting = asyncio.ensure_future(self._connect())
        return self._connecting

    async def _connect(self) -> None:
        while True:
            try:
                info = await self.handle.info.remote()
                break
            except Exception as exc:  # replicas still starting, or restarting after a failure
                log.info("%s: waiting for an encoder replica (%s)", self.name, type(exc).__name__)
                await asyncio.sleep(CONNECT_RETRY_S)
        self._dims = self.config.dims or info["dims"]
        self.state = "ready"
        log.info("%s: ready (first answer from replica %s, metrics at %s)", self.name, info["replica"],
                 info["metrics_url"])

    async def stop(self) -> None:
        if self._connecting is not None:
            self._connecting.cancel()
            await asyncio.gather(self._connecting, return_exceptions=True)

    async def encode(self, texts: Sequence[str], options: EncodeOptions) -> EncodeResult:
        self.check_ready()
        handle = self.handle
        if options.lora_id is not None:
            handle = handle.options(multiplexed_model_id=f"{self.name}:{options.lora_id}")
        try:
            result = await handle.encode.remote(list(texts), options)
        except (BackPressureError, DeploymentUnavailableError) as exc:
            raise errors.queue_full(f"no encoder replica can take this request now ({type(exc).__name__})") from None
        except Exception as exc:
            raise unwrap_error(exc) from None
        if options.lora_id is not None:
            self._served.add(options.lora_id)
        return result

    # -- adapters: residency is per replica; the ingress knows the configured catalog ---------------
    def adapter_names(self) -> list[str]:
        return sorted(set(self.config.adapters.lora_paths) | self._served)

    def has_adapter(self, name: str) -> bool:
        return name in self.config.adapters.lora_paths or name in self._served

    async def describe_adapters(self) -> list[dict]:
        return [{"name": name, "state": "on_demand", "source": self.config.adapters.lora_paths.get(name),
                 "pinned": False} for name in self.adapter_names()]

    async def load_adapter(self, name: str, source: str, *, pin: bool = False) -> tuple[dict, bool]:
        raise not_here("loading adapters through the admin API")

    async def unload_adapter(self, name: str) -> None:
        raise not_here("unloading adapters through the admin API")

    def stats(self) -> ModelStats | None:
        return None
