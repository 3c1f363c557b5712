"""One served model in this process: tokenizer + batcher + backend, and the encode path that ties them
together. Implements `ServedModel`."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from typing import Sequence

import numpy as np

from server import errors
from server.backends.base import Backend
from server.batching import Batcher, BatchLimits
from server.config import EngineConfig, ModelConfig
from server.lora.manager import AdapterManager
from server.lora.policy import DynamicSources
from server.options import EncodeOptions, check_dims
from server.postprocess import finish
from server.served_model import BatchObserver, EncodeResult, ModelStats
from server.sources import resolve_source
from server.tokenization import TextTokenizer

log = logging.getLogger(__name__)
INLINE_TOKENIZE_CHARS = 4096


class ModelEngine:
    """States: loading -> ready, or loading -> failed (with the cause)."""

    def __init__(self, config: ModelConfig, settings: EngineConfig, backend: Backend):
        self.config = config
        self.settings = settings
        self.backend = backend
        self.tokenizer: TextTokenizer | None = None
        self.state = "loading"
        self.failure: str | None = None
        self.batcher = Batcher(backend.embed, BatchLimits(
            max_batch_tokens=settings.max_batch_tokens, max_batch_wait_ms=settings.max_batch_wait_ms,
            max_loras_per_batch=config.adapters.max_loras_per_batch, max_queue_items=settings.max_queue_items,
            max_queue_tokens=settings.max_queue_tokens),
            name=config.name)
        self.adapters = AdapterManager(config.name, backend, capacity=settings.max_loras_per_model,
                                       failure_ttl_s=settings.lora_failure_ttl_s)
        self._loading: asyncio.Future | None = None

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def dims(self) -> int:
        return self.config.dims or self.backend.hidden_size

    def load(self) -> None:
        """Blocking: tokenizer, model and preloaded adapters. Records failure instead of raising."""
        started = time.perf_counter()
        try:
            from transformers import AutoTokenizer

            folder = resolve_source(self.config.model_path, kind="model")
            self.tokenizer = TextTokenizer(
                AutoTokenizer.from_pretrained(folder), max_seq_len=self.config.max_seq_len,
                query_template=self.config.query_template, default_instruction=self.config.default_instruction,
                eos_token=self.config.eos_token)
            self.backend.start()
            roots = tuple(resolve_source(root, kind="adapter root")
                          for root in self.config.lora_roots + self.settings.lora_roots)
            self.adapters.sources = DynamicSources(roots, self.config.lora_allow + self.settings.lora_allow)
            if self.config.adapters.preload:
                self.adapters.register_preloaded(dict(self.config.adapters.lora_paths))
            else:
                self.adapters.catalog = dict(self.config.adapters.lora_paths)
            if self.config.dims is not None and self.config.dims > self.backend.hidden_size:
                raise ValueError(f"dims {self.config.dims} is larger than the model's hidden size "
                                 f"{self.backend.hidden_size}")
        except Exception as exc:
            self.state, self.failure = "failed", f"{type(exc).__name__}: {exc}"
            log.error("%s: load failed: %s", self.name, self.failure)
            return
        self.state = "ready"
        log.info("%s: ready in %.1f s (%d adapters: %s)", self.name, time.perf_counter() - started,
                 len(self.backend.adapters()), ", ".join(self.backend.adapters()) or "none")

    def start(self, on_batch: BatchObserver) -> asyncio.Future:
        self.batcher.on_batch = on_batch
        self.batcher.start()
        loop = asyncio.get_running_loop()
        if self._loading is None:
            if self.state == "loading":
                self._loading = loop.run_in_executor(None, self.load)
            else:
                self._loading = loop.create_future()
                self._loading.set_result(None)
        return self._loading

    async def stop(self) -> None:
        await self.adapters.close()
        await self.batcher.stop()
        if self._loading is not None:
            await asyncio.gather(self._loading, return_exceptions=True)
        self.backend.close()

    # -- adapters ---------------------------------------------------------------------------------
    def adapter_names(self) -> list[str]:
        return self.adapters.ready_names()

    def has_adapter(self, name: str) -> bool:
        return name in self.adapters.entries or name in self.adapters.catalog

    async def describe_adapters(self) -> list[dict]:
        entries = self.adapters.entries
        return [entries[name].describe() for name in sorted(entries)]

    async def load_adapter(self, name: str, source: str, *, pin: bool = False) -> tuple[dict, bool]:
        entry, created = await self.adapters.load(name, source, pin=pin)
        return entry.describe(), created

    async def ensure_adapter(self, name: str) -> None:
        """Load `name` from the catalog or a dynamic source if needed and wait (scale-out replicas)."""
        self.check_ready()
        await self.adapters.ensure(name)

    async def unload_adapter(self, name: str) -> None:
        await self.adapters.unload(name)

    def stats(self) -> ModelStats:
        adapters, batcher = self.adapters, self.batcher
        return ModelStats(queue_depth=batcher.queue_depth, running_rows=len(batcher.running),
                          resident_adapters=tuple(adapters.ready_names()),
                          waiting_adapters=tuple(sorted(a for a in batcher.waiting_adapters() if a)),
                          loads=adapters.counters["loads"], load_failures=adapters.counters["load_failures"],
                          evictions=adapters.counters["evictions"], max_loras=self.settings.max_loras_per_model)

    # -- encoding ---------------------------------------------------------------------------------
    def check_ready(self) -> None:
        if self.state == "loading":
            raise errors.model_loading(self.name)
        if self.state == "failed":
            raise errors.model_load_failed(self.name, self.failure or "unknown cause")

    async def encode(self, texts: Sequence[str], options: EncodeOptions) -> EncodeResult:
        self.check_ready()
        check_dims(options.dims, self.dims, self.config.min_dims)
        if len(texts) > self.settings.max_items_per_request:
            raise errors.invalid_input(f"{len(texts)} items is over the limit of "
                                       f"{self.settings.max_items_per_request} items per request")
        if options.lora_id is None:
            return await self._encode(texts, options)
        self.adapters.acquire(options.lora_id)
        try:
            return await self._encode(texts, options)
        finally:
            self.adapters.release(options.lora_id)

    async def _encode(self, texts: Sequence[str], options: EncodeOptions) -> EncodeResult:
        t0 = time.perf_counter()
        rendered = [self.tokenizer.render(t, is_query=options.is_query, instruction=options.instruction)
                    for t in texts]
        tokenize = functools.partial(self.tokenizer.tokenize, rendered, overflow=options.overflow_policy,
                                     limit=self.backend.max_input_tokens)
        # Short inputs tokenise faster than a thread hop costs; long ones must not block the event loop.
        if sum(map(len, rendered)) <= INLINE_TOKENIZE_CHARS:
            tokenized = tokenize()
        else:
            tokenized = await asyncio.to_thread(tokenize)
        t1 = time.perf_counter()
        futures = self.batcher.submit(tokenized.input_ids, options.lora_id)
        try:
            rows = await asyncio.gather(*futures)
        except asyncio.CancelledError:
            for future in futures:
                future.cancel()
            raise
        t2 = time.perf_counter()
        batches = {row.batch_id: row.finished - row.started for row in rows}
        inference_s = sum(batches.values())
        vectors = finish(np.stack([row.vector for row in rows]), dims=options.dims or self.config.dims,
                         normalize=self.config.normalize, output_dtype=options.output_dtype)
        t3 = time.perf_counter()
        return EncodeResult(vectors=vectors, dims=options.dims or self.dims, input_tokens=tokenized.token_count,
                            tokenization_ms=(t1 - t0) * 1e3, queue_ms=max(0.0, t2 - t1 - inference_s) * 1e3,
                            inference_ms=inference_s * 1e3, postprocessing_ms=(t3 - t2) * 1e3)
