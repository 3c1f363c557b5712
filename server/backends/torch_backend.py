"""Built-in backend: transformers model + MixedLoraLinear layers, one forward per mixed-adapter batch.

Rows are right-padded; decoders run without an attention mask (a real token never sees the padding
after it, so each row's vector is what it would be alone), encoders with a padding mask. On the CPU the
rows are sorted by slot into segments (eager); on CUDA, or when compiled, every row carries its slot
in a tensor (`static_forward`). The forward runs on one worker thread, which also serialises adapter
installs against forwards.
"""

from __future__ import annotations

import asyncio
import logging

import numpy as np
import torch

from server.backends.base import Backend, BackendInfo, EngineStats, RowOutputs, TokenBatch
from server.backends.hf_model import (
    DTYPES,
    hidden_states,
    linear_targets,
    load_transformer,
    pad_rows,
    pool,
    prepared_causal_mask,
    shapes_of,
)
from server.backends.output_heads import OutputHeads, load_heads, row_outputs
from server.backends.packed_linears import pack_linears
from server.backends.static_forward import EngineChoice, StaticForward, choose_engine
from server.config import ModelConfig, ServerSettings
from server.lora.mixed_linear import install_adapter, pool_bytes, remove_adapter, wrap_linears
from server.lora.peft_format import LoraAdapter
from server.lora.plan import BatchPlan
from server.model_layout import ModelLayout, read_layout
from server.sources import resolve_source
from server.threads import DaemonExecutor

log = logging.getLogger(__name__)
CLOSE_WAIT_S = 3.0  # how long close waits for the worker's current job (a forward; a load is abandoned)
WARN_POOL_BYTES = 64 * 2**20  # below this an adapter pool is not worth a warning, whatever the model's size


class TorchBackend(Backend):
    def __init__(self, model: ModelConfig, settings: ServerSettings, device: str, engine: EngineChoice | None = None):
        self.config = model
        self.settings = settings
        self.device = device
        dtype = model.dtype if device.startswith("cuda") else "float32"
        if dtype != model.dtype:
            log.info("%s: torch backend on CPU runs float32 (config asks %s)", model.name, model.dtype)
        self.dtype = DTYPES[dtype]
        # One daemon worker: loads, installs and forwards in order; a load still running at exit is abandoned.
        self._executor = DaemonExecutor(f"forward-{model.name}")
        self._plan: BatchPlan | None = None  # made at load, when the pool's size (and so its zero slot) is known
        self._engine = engine  # None: chosen from the config and device at load
        self._static: StaticForward | None = None
        self._layers: dict = {}
        self._causal_mask: dict | None = None
        self._info = BackendInfo(hidden_size=0)
        self.layout = ModelLayout(encoder=False, pooling="last", max_positions=None)
        self.heads = OutputHeads()
        self.model = None

    @property
    def info(self) -> BackendInfo:
        return self._info

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self, slots: int) -> None:
        await asyncio.get_running_loop().run_in_executor(self._executor, self._load, slots)

    def _load(self, slots: int) -> None:
        folder = resolve_source(self.config.model_path, kind="model")
        self.layout = read_layout(folder, self.config)
        log.info("%s: loading base model from %s on %s (%s)", self.config.name, folder, self.device, self.dtype)
        loaded = load_transformer(folder, self.dtype, self.device, masked_lm=self.layout.splade is not None)
        model = loaded.base_model if self.layout.splade is not None else loaded  # LoRA adapts the transformer only
        self.heads = load_heads(folder, self.layout, loaded, where=self.config.source_file, dtype=self.dtype,
                                device=self.device)
        linears = linear_targets(model, self.config.adapters.lora_target_modules)
        self._plan = BatchPlan(zero_slot=slots)
        self._layers = wrap_linears(model, linears, self._plan, slots=slots,
                                    max_rank=self.config.adapters.max_lora_rank)
        pool, weights = pool_bytes(self._layers), sum(p.numel() * p.element_size() for p in model.parameters())
        log.info("%s: adapter pool of %d slots up to rank %d: %.1f MiB", self.config.name, slots,
                 self.config.adapters.max_lora_rank, pool / 2**20)
        if pool > max(weights, WARN_POOL_BYTES):
            log.warning("%s: the adapter pool (%.1f MiB) is larger than the model's own weights (%.1f MiB): set "
                        "max_lora_rank to the largest rank served and lora_target_modules to the linears the "
                        "adapters train, or keep fewer adapters resident", self.config.name, pool / 2**20,
                        weights / 2**20)
        self.model = model
        self._causal_mask = None if self.layout.encoder else prepared_causal_mask(model)
        engine = self._engine or choose_engine(self.config, self.device, self.layout)
        if engine.triton_kernels:
            self._use_kernels()
        if engine.packed_linears:
            packed = pack_linears(model, always=self.config.cpu_linears == "onednn")
            log.info("%s: %d linears through oneDNN, packed", self.config.name, packed)
        if engine.static_rows:
            self._plan.width = self.config.adapters.max_lora_rank  # fixed: no install changes a compiled shape
            self._static = StaticForward(model, self.layout, self._plan, engine, device=self.device,
                                         config=self.config, causal_mask=self._causal_mask,
                                         cache_artifacts=self.settings.compile_cache_artifacts)
        log.info("%s: %s", self.config.name, engine)
        hidden = int(model.config.hidden_size)
        self._info = BackendInfo(hidden_size=hidden, linear_shapes=shapes_of(linears),
                                 outputs=self.heads.sizes,
                                 description=f"{folder} on {self.device} ({self.dtype}, "
                                             f"{'encoder' if self.layout.encoder else 'decoder'}, "
                                             f"{self.layout.pooling} pooling, outputs "
                                             f"{', '.join(self.layout.outputs)})")

    def _use_kernels(self) -> None:
        """The static path's LoRA as Triton custom ops, over groups of linears that share an input."""
        from server.lora import lora_ops
        from server.lora.groups import group_linears

        groups = group_linears(self._layers)
        self._plan.ops = lora_ops
        log.info("%s: Triton LoRA kernels over %d groups of linears", self.config.name, len(groups))

    async def close(self) -> None:
        running = self._executor.running
        done = await asyncio.to_thread(self._executor.shutdown, wait=True, cancel_futures=True, timeout=CLOSE_WAIT_S)
        if not done:
            log.warning("%s: %s still running after %.0f s; abandoned", self.config.name, running, CLOSE_WAIT_S)
        self.model = None

    async def warm_up(self) -> None:
        """Compile and capture the single-row graphs now; the other graphs are captured afterwards, one per
        job on the worker, so forwards queued meanwhile run between two captures (compiled until theirs)."""
        if self._static is not None:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._static.warm_up)
            if self._static.graphs is not None and self._static.graphs.pending():
                self._executor.submit(self._capture_next)

    def _capture_next(self) -> None:
        if self._static.capture_next():
            try:
                self._executor.submit(self._capture_next)
            except RuntimeError:  # closing: the remaining graphs are not needed
                pass

    def engine_stats(self) -> EngineStats:
        static = self._static
        if static is None:
            return EngineStats()
        graphs = static.graphs
        return EngineStats(compiles=static.compiles, graphs_captured=len(graphs.graphs) if graphs else 0,
                           graphs_planned=len(graphs.buckets) if graphs else 0, phases=dict(static.phases))

    # -- adapters --------------------------------------------------------------------------
    async def install(self, slot: int, adapter: LoraAdapter, *, pinned: bool = False) -> None:
        await asyncio.get_running_loop().run_in_executor(self._executor, self._install, slot, adapter)

    def _install(self, slot: int, adapter: LoraAdapter) -> None:
        install_adapter(self._layers, slot, adapter.to(device=self.device, dtype=self.dtype))

    async def remove(self, slot: int) -> None:
        await asyncio.get_running_loop().run_in_executor(self._executor, self._remove, slot)

    def _remove(self, slot: int) -> None:
        remove_adapter(self._layers, slot)

    # -- inference -------------------------------------------------------------------------
    async def embed(self, batch: TokenBatch) -> np.ndarray:
        return await asyncio.get_running_loop().run_in_executor(self._executor, self.embed_sync, batch)

    async def embed_outputs(self, batch: TokenBatch) -> list[RowOutputs]:
        return await asyncio.get_running_loop().run_in_executor(self._executor, self.embed_outputs_sync, batch)

    def embed_sync(self, batch: TokenBatch) -> np.ndarray:
        """Runs on the worker thread. On device out-of-memory the batch is split in halves and retried,
        down to single rows, before the error reaches the requests."""
        return self._halving_on_oom(batch, self._forward, np.concatenate)

    def embed_outputs_sync(self, batch: TokenBatch) -> list[RowOutputs]:
        """`embed_sync` for rows that ask for sparse or multivector outputs too."""
        return self._halving_on_oom(batch, self._forward_outputs, lambda halves: halves[0] + halves[1])

    def _halving_on_oom(self, batch: TokenBatch, forward, join):
        try:
            return forward(batch)
        except torch.OutOfMemoryError:
            if len(batch.input_ids) == 1:
                raise
            log.warning("%s: out of memory on %d rows; retrying in halves", self.config.name, len(batch.input_ids))
            if self.device.startswith("cuda"):
                torch.cuda.empty_cache()
            first, second = batch.split(len(batch.input_ids) // 2)
            return join([self._halving_on_oom(first, forward, join), self._halving_on_oom(second, forward, join)])

    def _slots(self, batch: TokenBatch) -> list[int]:
        """Each row's slot, base rows at the pool's zero slot. Residency is the registry's alone: a row's slot
        comes from a lease, and a leased adapter is never removed under it (tests/adapters/test_registry.py)."""
        zero = self._plan.zero_slot
        return [zero if slot is None else slot for slot in batch.slots]

    def _hidden(self, batch: TokenBatch, slots: list[int]) -> tuple[list[int], torch.Tensor, torch.Tensor,
                                                                     torch.Tensor]:
        """One forward to the last hidden states: (the batch rows in the order computed, their padded ids,
        lengths, hidden states). The static path keeps the row order; the eager one sorts rows by slot."""
        if self._static is not None:
            input_ids, lengths = pad_rows(batch.input_ids, self.layout.pad_token_id, self.device)
            hidden = self._static.hidden(input_ids, lengths, torch.tensor(slots, device=self.device))
            return list(range(len(slots))), input_ids, lengths, hidden
        order = sorted(range(len(slots)), key=slots.__getitem__)
        input_ids, lengths = pad_rows([batch.input_ids[i] for i in order], self.layout.pad_token_id, self.device)
        self._plan.publish([slots[i] for i in order], self.device)
        try:
            return order, input_ids, lengths, hidden_states(self.model, input_ids, lengths, self.layout,
                                                            self._causal_mask, padded=_padded(batch))
        finally:
            self._plan.clear()

    @torch.inference_mode()
    def _forward(self, batch: TokenBatch) -> np.ndarray:
        """Pooled vectors in row order: the static path's compiled (or graphed) forward, else eager."""
        slots = self._slots(batch)
        if self._static is not None:
            input_ids, lengths = pad_rows(batch.input_ids, self.layout.pad_token_id, self.device)
            return self._static(input_ids, lengths, torch.tensor(slots, device=self.device)).float().cpu().numpy()
        order, _, lengths, hidden = self._hidden(batch, slots)
        pooled = pool(hidden, lengths, self.layout.pooling, padded=_padded(batch)).float()
        if order == sorted(order):  # already in row order (one adapter, or rows sorted by slot)
            return pooled.cpu().numpy()
        result = torch.empty_like(pooled)
        result[torch.tensor(order, device=pooled.device)] = pooled
        return result.cpu().numpy()

    @torch.inference_mode()
    def _forward_outputs(self, batch: TokenBatch) -> list[RowOutputs]:
        """One forward to the hidden states (eager: the outputs vary per row), then each row's outputs."""
        slots = self._slots(batch)
        wanted = batch.outputs
        order, input_ids, lengths, hidden = self._hidden(batch, slots)
        outputs = row_outputs(self.heads, self.layout, hidden, lengths, input_ids, [wanted[i] for i in order])
        result: list[RowOutputs] = [RowOutputs()] * len(order)
        for position, row in enumerate(order):
            result[row] = outputs[position]
        return result


def _padded(batch: TokenBatch) -> bool:
    first = len(batch.input_ids[0])
    return any(len(ids) != first for ids in batch.input_ids)
