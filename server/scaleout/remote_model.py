"""The ingress side of a model served by encoder replicas: a `ServedModel` whose encode is a Ray Serve
handle call. A request that names an adapter carries `multiplexed_model_id=<model>:<adapter>`, so Ray
routes it to a replica that holds (or is loading) that adapter; base requests balance over all. It has
no admin part: residency is per replica."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Sequence

from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from ray.serve.handle import DeploymentHandle

from server import errors
from server.config import ModelConfig
from server.options import EncodeOptions
from server.scaleout.encoder import unwrap_error
from server.served_model import BatchObserver, EncodeResult, ModelState, ModelStatus

log = logging.getLogger(__name__)
CONNECT_RETRY_S = 2.0


class ConfiguredAdapters:
    """What the ingress knows: the configured catalog and the dynamic adapters seen answering."""

    def __init__(self, config: ModelConfig):
        self.configured = config.adapters.lora_paths
        self.served: set[str] = set()  # bounded by what the adapter sources hold

    def names(self) -> list[str]:
        return sorted(set(self.configured) | self.served)

    def known(self, name: str) -> bool:
        return name in self.configured or name in self.served

    def loadable(self, name: str) -> bool:
        return self.known(name)  # the replicas' adapter roots are theirs to read

    def describe(self) -> list[dict]:
        return [{"name": name, "state": "on_demand", "source": self.configured.get(name), "pinned": False}
                for name in self.names()]


class RemoteModel:
    admin = None

    def __init__(self, config: ModelConfig, handle: DeploymentHandle):
        self.config = config
        self.handle = handle
        self.adapters = ConfiguredAdapters(config)
        self._state = ModelState.LOADING
        self._dims = config.dims or 0
        self._outputs: dict[str, int] = {}
        self._base_digest: str | None = None  # the first replica's (every replica loads the same files)
        self._connecting: asyncio.Task | None = None

    def status(self) -> ModelStatus:
        return ModelStatus(name=self.config.name, state=self._state, dims=self._dims, outputs=self._outputs,
                           base_digest=self._base_digest)

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
                log.info("%s: waiting for an encoder replica (%s)", self.config.name, type(exc).__name__)
                await asyncio.sleep(CONNECT_RETRY_S)
        self._dims = self.config.dims or info["dims"]
        self._outputs = info.get("outputs") or {}
        self._base_digest = info.get("base_digest")
        self._state = ModelState.READY
        log.info("%s: ready (first answer from replica %s, metrics at %s)", self.config.name, info["replica"],
                 info["metrics_url"])

    async def stop(self) -> None:
        if self._connecting is not None:
            self._connecting.cancel()
            await asyncio.gather(self._connecting, return_exceptions=True)

    async def encode_each(self, texts: Sequence[str], options: EncodeOptions) -> list[EncodeResult]:
        """One call per adapter, side by side: each goes to a replica holding that adapter (affinity), so the
        copies do not share a forward as on one server, but the vectors are the same."""
        return list(await asyncio.gather(*(self.encode(texts, dataclasses.replace(options, lora_id=name, lora_ids=()))
                                           for name in options.lora_ids)))

    async def encode(self, texts: Sequence[str], options: EncodeOptions) -> EncodeResult:
        self.status().require_ready()
        handle = self.handle
        if options.lora_id is not None:
            handle = handle.options(multiplexed_model_id=f"{self.config.name}:{options.lora_id}")
        try:
            result = await handle.encode.remote(list(texts), options)
        except (BackPressureError, DeploymentUnavailableError) as exc:
            raise errors.QueueFull(f"no encoder replica can take this request now ({type(exc).__name__})") from None
        except Exception as exc:
            raise unwrap_error(exc) from None
        if options.lora_id is not None:
            self.adapters.served.add(options.lora_id)
        return result
