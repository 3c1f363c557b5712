"""The encoder deployment: one replica = our ModelEngine (either backend) for one model. Adapters come
and go through Ray Serve's multiplexed LRU, keyed `<model>:<adapter>`, sized to the engine's own
`max_loras_per_model`, so Ray's LRU decides and the engine's never has to (one LRU, not two)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import Sequence

from ray import serve

from server import errors
from server.backends import create_backend, pick_device, resolve_backend_kind
from server.engine import ModelEngine
from server.metrics import Metrics
from server.options import EncodeOptions
from server.scaleout.replica_metrics import ReplicaMetricsListener
from server.scaleout.spec import ScaleoutSpec
from server.served_model import EncodeResult

log = logging.getLogger(__name__)


class ResidentAdapter:
    """What Ray's multiplex cache holds for one adapter. Ray awaits `__del__` when its LRU evicts the
    entry; it is an instance attribute, so garbage collection never calls it a second time."""

    def __init__(self, engine: ModelEngine, name: str):
        async def evict() -> None:
            log.info("%s: Ray's LRU evicts adapter %r", engine.name, name)
            await engine.adapters.unload(name, eviction=True)  # waits for this adapter's in-flight rows first

        self.name = name
        self.__del__ = evict


class Encoder:
    async def __init__(self, spec: ScaleoutSpec, model_name: str):
        config = spec.model(model_name)
        device = pick_device(spec.settings.device)
        backend = create_backend(resolve_backend_kind(spec.backend or config.adapter, device), config,
                                 spec.settings, device)
        context = serve.get_replica_context()
        self.replica = f"{context.deployment}#{context.replica_id.unique_id}"
        self.engine = ModelEngine(config, spec.settings, backend)
        self.metrics = Metrics({config.name: self.engine}, replica=self.replica)
        await self.engine.start(self.metrics.batch_observer(config.name))
        if self.engine.state != "ready":
            await self.engine.stop()
            raise RuntimeError(f"model {config.name} failed to load: {self.engine.failure}")
        self.listener = ReplicaMetricsListener(self.metrics.render, asyncio.get_running_loop(),
                                               spec.metrics_host, spec.metrics_port)
        log.info("replica %s serves %s; metrics at %s", self.replica, config.name, self.listener.url)
        engine = self.engine

        async def load(model_id: str) -> ResidentAdapter:
            name = model_id.rpartition(":")[2]
            await engine.ensure_adapter(name)
            return ResidentAdapter(engine, name)

        # A closure, not a method: Ray caches its LRU on the decorated callable (bound methods refuse it).
        self._resident = serve.multiplexed(max_num_models_per_replica=spec.settings.max_loras_per_model)(load)
        # Ray awaits the instance's `__del__` when it stops the replica; an instance attribute keeps
        # garbage collection from calling (and dropping) that coroutine a second time.
        self.__del__ = self._shutdown

    async def encode(self, texts: Sequence[str], options: EncodeOptions) -> EncodeResult:
        if options.lora_id is not None:
            if options.lora_id not in self.engine.adapters.entries:
                # Unknown names fail here with 400, before Ray advertises them as loading on this replica.
                self.engine.adapters.source_for(options.lora_id)
            await self._resident(f"{self.engine.name}:{options.lora_id}")
        result = await self.engine.encode(texts, options)
        return dataclasses.replace(result, replica=self.replica)

    async def info(self) -> dict:
        return {"replica": self.replica, "dims": self.engine.dims, "metrics_url": self.listener.url}

    async def _shutdown(self) -> None:
        self.listener.close()
        await self.engine.stop()


def unwrap_error(exc: BaseException) -> BaseException:
    """Ray re-raises a replica's exception wrapped (RayTaskError); hand the route our ApiError itself."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, errors.ApiError) else exc
