"""The encoder deployment: one replica = a `LocalModel` (either backend) for one model, assembled by the
same `build_model` as `launch.py`. Adapters come and go through Ray Serve's multiplexed LRU, keyed
`<model>:<adapter>` and sized to the registry's own capacity, so Ray's LRU decides and the registry's
never has to (one LRU, not two)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Sequence

from ray import serve

from server import errors
from server.api.metrics import Metrics
from server.build import build_model
from server.local_model import LocalModel
from server.options import EncodeOptions
from server.scaleout.replica_metrics import ReplicaMetricsListener
from server.scaleout.spec import ScaleoutSpec
from server.served_model import EncodeResult, ModelState

log = logging.getLogger(__name__)


class ResidentAdapter:
    """What Ray's multiplex cache holds for one adapter. Ray awaits `__del__` when its LRU evicts the
    entry; it is an instance attribute, so garbage collection never calls it a second time."""

    def __init__(self, model: LocalModel, name: str):
        async def evict() -> None:
            log.info("%s: Ray's LRU evicts adapter %r", model.name, name)
            await model.adapters.unload(name, eviction=True)  # waits for this adapter's in-flight rows first

        self.name = name
        self.__del__ = evict


class Encoder:
    async def __init__(self, spec: ScaleoutSpec, model_name: str):
        config = spec.model(model_name)
        context = serve.get_replica_context()
        self.replica = f"{context.deployment}#{context.replica_id.unique_id}"
        self.model = build_model(config, spec.settings, backend=spec.backend)
        self.metrics = Metrics({config.name: self.model}, replica=self.replica)
        await self.model.start(self.metrics.batch_observer(config.name))
        if self.model.state is not ModelState.READY:
            await self.model.stop()
            raise RuntimeError(f"model {config.name} failed to load: {self.model.status().failure}")
        self.listener = ReplicaMetricsListener(self.metrics.render, asyncio.get_running_loop(),
                                               spec.metrics_host, spec.metrics_port)
        log.info("replica %s serves %s; metrics at %s", self.replica, config.name, self.listener.url)
        registry = self.model.adapters

        async def load(model_id: str) -> ResidentAdapter:
            name = model_id.rpartition(":")[2]
            await registry.ensure(name)
            return ResidentAdapter(self.model, name)

        # A closure, not a method: Ray caches its LRU on the decorated callable (bound methods refuse it).
        self._resident = serve.multiplexed(max_num_models_per_replica=registry.capacity)(load)
        # Ray awaits the instance's `__del__` when it stops the replica; an instance attribute keeps
        # garbage collection from calling (and dropping) that coroutine a second time.
        self.__del__ = self._shutdown

    async def encode(self, texts: Sequence[str], options: EncodeOptions) -> EncodeResult:
        if options.lora_id is not None:
            if not self.model.adapters.known(options.lora_id):
                # Unknown names fail here with 400, before Ray advertises them as loading on this replica.
                self.model.adapters.source_for(options.lora_id)
            await self._resident(f"{self.model.name}:{options.lora_id}")
        result = await self.model.encode(texts, options)
        return dataclasses.replace(result, replica=self.replica)

    async def info(self) -> dict:
        status = self.model.status()
        return {"replica": self.replica, "dims": status.dims, "outputs": status.output_dims(),
                "base_digest": status.base_digest, "metrics_url": self.listener.url}

    async def _shutdown(self) -> None:
        self.listener.close()
        await self.model.stop()


def unwrap_error(exc: BaseException) -> BaseException:
    """Ray re-raises a replica's exception wrapped (RayTaskError); hand the route the domain error itself."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, errors.ServingError) else exc
