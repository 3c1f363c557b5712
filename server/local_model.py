"""A model served in this process: tokenizer + batcher + adapter registry + backend, and the encode
path that ties them together. Implements `ServedModel`."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Sequence

from server import errors
from server.adapters.entry import Lease
from server.adapters.registry import AdapterRegistry
from server.adapters.stats import LOAD_BUCKETS
from server.answer_budget import AnswerBudget, answer_bytes
from server.answers import finish_rows
from server.backends.base import Backend, RowOutputs, TokenBatch
from server.batching import Batcher, BatchLimits
from server.config import ConfigError, ModelConfig, ServerSettings
from server.lora.peft_format import AdapterError
from server.model_loading import ModelLoading
from server.options import EncodeOptions, check_dims, check_outputs
from server.served_model import BatchObserver, EncodeResult, ModelState, ModelStats, ModelStatus, Provenance
from server.sources import SourceError
from server.threads import DaemonExecutor
from server.tokenization import TextTokenizer

log = logging.getLogger(__name__)
INLINE_TOKENIZE_CHARS = 4096
OPERATOR_ERRORS = (ConfigError, AdapterError, SourceError)  # a fix in the config or the files, not a retry


class LocalModel(ModelLoading):
    """States: loading -> ready, or loading -> failed (with the cause)."""

    def __init__(self, config: ModelConfig, settings: ServerSettings, backend: Backend):
        self.config = config
        self.settings = settings
        self.backend = backend
        self.tokenizer: TextTokenizer | None = None
        self.state = ModelState.LOADING
        self.failure: BaseException | None = None
        self.batcher = Batcher(self._run_batch, BatchLimits(
            max_batch_tokens=settings.max_batch_tokens, max_batch_wait_ms=settings.max_batch_wait_ms,
            max_loras_per_batch=config.adapters.max_loras_per_batch, max_queue_items=settings.max_queue_items,
            max_queue_tokens=settings.max_queue_tokens, max_padding=settings.max_batch_padding), name=config.name)
        self.adapters = AdapterRegistry(config.name, backend, capacity=settings.max_loras_per_model,
                                        max_rank=config.adapters.max_lora_rank,
                                        failure_ttl_s=settings.lora_failure_ttl_s,
                                        allow_noop=settings.allow_noop_adapters,
                                        host_bytes=settings.adapter_host_bytes)
        self.admin = self.adapters
        self._loading: asyncio.Future | None = None
        self._loader = DaemonExecutor(f"load-{config.name}")  # a stop during loading abandons, never waits
        self.phase: str | None = None  # what loading is doing now (logged if a stop interrupts it)
        self.startup: dict[str, float] = {}  # seconds per load phase, in order
        self.ready_s: float | None = None  # from the start of loading to ready
        self.base_digest: str | None = None  # of the base model's files, once loaded (answers name it)
        self.abandoned = False  # stopped before loading finished: its worker threads are left to the exit
        self.answers = AnswerBudget(settings.max_response_bytes, settings.max_pending_response_bytes)

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def dims(self) -> int:
        """The native dense size: the config's `dims`, else the model's hidden size (0 without dense output)."""
        sizes = self.backend.info.output_dims()
        return (self.config.dims or sizes["dense"]) if "dense" in sizes else 0

    def output_dims(self) -> dict[str, int]:
        """Each output the model gives -> its size, dense at the config's `dims`."""
        sizes = self.backend.info.output_dims()
        return {**sizes, "dense": self.dims} if "dense" in sizes else sizes

    async def _run_batch(self, batch: TokenBatch) -> list[RowOutputs]:
        """The one outputs dispatch: dense-only batches take the backend's (compiled, graphed) `embed`, others
        its `embed_outputs`; every row comes back as its RowOutputs."""
        if batch.dense_only:
            return [RowOutputs(dense=vector) for vector in await self.backend.embed(batch)]
        return await self.backend.embed_outputs(batch)

    # -- lifecycle (loading is `model_loading.ModelLoading`'s) ---------------------------------------
    def start(self, on_batch: BatchObserver) -> asyncio.Future:
        self.batcher.on_batch = on_batch
        self.batcher.start()
        if self._loading is None:
            self._loading = asyncio.ensure_future(self._load_and_record())
        return self._loading

    async def stop(self) -> None:
        if self._loading is not None and not self._loading.done():
            self.abandoned = True
            log.warning("%s: stopping while %s; the load is abandoned", self.name, self.phase or "loading")
        self._loader.shutdown(wait=False, cancel_futures=True)
        await self.adapters.close()
        await self.batcher.stop()
        if self._loading is not None:
            self._loading.cancel()
            await asyncio.gather(self._loading, return_exceptions=True)
        await self.backend.close()

    def status(self) -> ModelStatus:
        failure = self.failure
        loaded = self.backend.info.hidden_size > 0  # before that, the outputs are not known yet
        return ModelStatus(name=self.name, state=self.state, dims=self.dims,
                           outputs=self.output_dims() if loaded else {},
                           failure=f"{type(failure).__name__}: {failure}" if failure else None,
                           config_error=isinstance(failure, OPERATOR_ERRORS), stats=self._stats(),
                           base_digest=self.base_digest)

    def _stats(self) -> ModelStats:
        registry, batcher = self.adapters, self.batcher
        waiting = {registry.name_at(slot) for slot in batcher.waiting_slots() if slot is not None}
        return ModelStats(queue_depth=batcher.queue_depth, running_rows=len(batcher.running),
                          resident_adapters=tuple(registry.names()), waiting_adapters=tuple(sorted(waiting - {None})),
                          loads=registry.counters["loads"], load_failures=registry.counters["load_failures"],
                          evictions=registry.counters["evictions"], max_loras=registry.capacity,
                          load_seconds=tuple(zip(LOAD_BUCKETS, registry.load_stats.buckets)),
                          load_seconds_sum=registry.load_stats.total_s, load_count=registry.load_stats.count,
                          failures_by_cause=tuple(registry.load_stats.failures.items()),
                          loads_by_tier=tuple((tier, n, seconds) for tier, (n, seconds)
                                              in registry.load_stats.by_tier.items()),
                          adapter_tiers=tuple(sorted(registry.tiers().items())), host_bytes=registry.host.bytes,
                          startup_seconds=tuple(self.startup_seconds().items()), ready_seconds=self.ready_s,
                          engine=self.backend.engine_stats())

    # -- encoding --------------------------------------------------------------------------------
    async def encode(self, texts: Sequence[str], options: EncodeOptions) -> EncodeResult:
        self._check(texts, options, copies=1)
        if options.lora_id is None:
            return (await self._encode(texts, options, [None], [Provenance(base_digest=self.base_digest)]))[0]
        lease = self.adapters.acquire(options.lora_id)
        try:
            return (await self._encode(texts, options, [lease.slot], [self._provenance(lease)]))[0]
        finally:
            self.adapters.release(lease)

    async def encode_each(self, texts: Sequence[str], options: EncodeOptions) -> list[EncodeResult]:
        """Each item once per adapter of `options.lora_ids` (None: base), every copy queued at once so they
        share forwards; one result per adapter, in that order. Every adapter must be resident: the loads of
        those that are not start together, and the request is answered LORA_LOADING until all are."""
        names = options.lora_ids
        self._check(texts, options, copies=len(names))
        leases, loading = self._leases([name for name in names if name is not None])
        try:
            if loading:
                raise errors.AdapterLoading(f"adapter(s) {', '.join(map(repr, loading))} loading; retry shortly")
            slots = [None if name is None else leases[name].slot for name in names]
            made = [Provenance(base_digest=self.base_digest) if name is None else self._provenance(leases[name])
                    for name in names]
            return await self._encode(texts, options, slots, made)
        finally:
            for lease in leases.values():
                self.adapters.release(lease)

    def _leases(self, names: list[str]) -> tuple[dict[str, Lease], list[str]]:
        """A lease on each resident adapter and the names still loading (their loads started); any other
        refusal releases what was taken and is raised."""
        leases: dict[str, Lease] = {}
        loading: list[str] = []
        try:
            for name in names:
                try:
                    leases[name] = self.adapters.acquire(name)
                except errors.AdapterLoading:
                    loading.append(name)
        except BaseException:
            for lease in leases.values():
                self.adapters.release(lease)
            raise
        return leases, loading

    def _provenance(self, lease: Lease) -> Provenance:
        return Provenance(lease.name, lease.digest or None, self.base_digest)

    def _check(self, texts: Sequence[str], options: EncodeOptions, *, copies: int) -> None:
        """The request's checks before any work: ready, outputs, dims, and rows (items x adapters) in bounds."""
        if self.state is not ModelState.READY:
            self.status().require_ready()
        check_outputs(options.output_types, tuple(self.backend.info.output_dims()), self.name)
        if "dense" in options.output_types:  # Matryoshka dims apply to dense vectors only
            check_dims(options.dims, self.dims, self.config.min_dims)
        if copies > self.config.adapters.max_loras_per_batch:
            raise errors.InvalidInput(f"options.lora_ids names {copies} adapters; this model runs at most "
                                      f"{self.config.adapters.max_loras_per_batch} in one batch "
                                      "(max_loras_per_batch)", field="lora_ids")
        if len(texts) * copies > self.settings.max_items_per_request:
            each = f" x {copies} adapters" if copies > 1 else ""
            raise errors.InvalidInput(f"{len(texts)} items{each} is over the limit of "
                                      f"{self.settings.max_items_per_request} items per request", field="items")

    def _prepare(self, texts: Sequence[str], options: EncodeOptions) -> tuple[list[str], int]:
        """Rendered and clipped to what `max_seq_len` tokens can come from, with an upper bound of their
        tokens (UTF-8 bytes, capped) to admit them by before any tokenising is done."""
        limit = self.backend.info.max_input_tokens
        rendered = [self.tokenizer.render(t, is_query=options.is_query, instruction=options.instruction)
                    for t in texts]
        clipped = self.tokenizer.clip(rendered, overflow=options.overflow_policy, limit=limit)
        cap = self.tokenizer.max_tokens(limit)
        return clipped, sum(min(len(t.encode("utf-8")) + 2, cap) for t in clipped)

    async def _encode(self, texts: Sequence[str], options: EncodeOptions, slots: list[int | None],
                      made: list[Provenance]) -> list[EncodeResult]:
        """Prepare and tokenise once, run the rows at each slot (one copy per slot), finish each copy."""
        t0 = time.perf_counter()
        # Short inputs are prepared faster than a thread hop costs; long ones must not block the event loop.
        inline = sum(map(len, texts)) <= INLINE_TOKENIZE_CHARS
        prepare = functools.partial(self._prepare, texts, options)
        clipped, most_tokens = prepare() if inline else await asyncio.to_thread(prepare)
        self.batcher.check_room(len(clipped) * len(slots), most_tokens * len(slots))
        tokenize = functools.partial(self.tokenizer.tokenize_clipped, clipped, overflow=options.overflow_policy,
                                     limit=self.backend.info.max_input_tokens)
        tokenized = tokenize() if inline else await asyncio.to_thread(tokenize)
        sizes = self.output_dims()
        size = answer_bytes([len(ids) for ids in tokenized.input_ids], options.output_types, sizes) * len(slots)
        t1 = time.perf_counter()
        outputs = frozenset(options.output_types)
        with self.answers.held(size):
            if len(slots) == 1:
                copies = [await self.batcher.run(tokenized.input_ids, slots[0], outputs)]
            else:
                copies = await self.batcher.run_each(tokenized.input_ids, slots, outputs)
            t2 = time.perf_counter()
            answers = [finish_rows([row.outputs for row in rows], options, dims=options.dims or self.config.dims,
                                   normalize=self.config.normalize) for rows in copies]
        t3 = time.perf_counter()
        inference_s = sum({row.batch_id: row.finished - row.started for rows in copies for row in rows}.values())
        truncated = tuple(i for i, cut in enumerate(tokenized.truncated) if cut)
        return [EncodeResult(vectors=answer.dense, dims=options.dims or self.dims, input_tokens=tokenized.token_count,
                             tokenization_ms=(t1 - t0) * 1e3, queue_ms=max(0.0, t2 - t1 - inference_s) * 1e3,
                             inference_ms=inference_s * 1e3, postprocessing_ms=(t3 - t2) * 1e3, truncated=truncated,
                             sparse=answer.sparse, multivector=answer.multivector, output_dims=sizes,
                             provenance=provenance) for answer, provenance in zip(answers, made)]
