"""Built-in backend: transformers model + MixedLoraLinear layers, one forward per mixed-adapter batch.

Rows are right-padded and run without an attention mask: with causal attention a real token never
sees the padding after it, so each row's vector is exactly what it would be alone (batch invariance)
and SDPA keeps its fast `is_causal` path. The forward runs on one worker thread, which also
serialises adapter installs against forwards.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Mapping

import numpy as np
import torch

from server.backends.base import AdapterInfo, AdapterNotLoaded, Backend, TokenBatch
from server.backends.hf_model import DTYPES, linear_targets, load_encoder, shapes_of
from server.config import EngineConfig, ModelConfig
from server.lora.mixed_linear import SegmentPlan, install_adapter, plan_segments, remove_adapter, wrap_linears
from server.logs import startup_progress
from server.lora.peft_format import AdapterError, load_peft_adapter
from server.sources import resolve_source

log = logging.getLogger(__name__)


def pool(hidden: torch.Tensor, lengths: torch.Tensor, how: str) -> torch.Tensor:
    if how == "last":
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), lengths - 1]
    if how == "cls":
        return hidden[:, 0]
    mask = (torch.arange(hidden.shape[1], device=hidden.device)[None, :] < lengths[:, None]).to(hidden.dtype)
    return (hidden * mask[..., None]).sum(dim=1) / lengths[:, None].to(hidden.dtype)


class TorchBackend(Backend):
    def __init__(self, model: ModelConfig, engine: EngineConfig, device: str):
        self.config = model
        self.settings = engine
        self.device = device
        dtype = model.dtype if device.startswith("cuda") else "float32"
        if dtype != model.dtype:
            log.info("%s: torch backend on CPU runs float32 (config asks %s)", model.name, model.dtype)
        self.dtype = DTYPES[dtype]
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"forward-{model.name}")
        self._plan = SegmentPlan()
        self._lock = threading.Lock()  # guards the adapter maps below against concurrent loads
        self._slots: dict[str, int] = {}
        self._infos: dict[str, AdapterInfo] = {}
        self._layers: dict = {}
        self._shapes: dict[str, tuple[int, int]] = {}
        self.model = None
        self.hidden_size = 0

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        adapters = self.config.adapters.preloaded
        with startup_progress(f"loading {self.config.name}", 1 + len(adapters), log) as progress:
            folder = resolve_source(self.config.model_path, kind="model")
            log.info("%s: loading base model from %s on %s (%s)", self.config.name, folder, self.device, self.dtype)
            model = load_encoder(folder, self.dtype, self.device)
            linears = linear_targets(model, self.config.adapters.lora_target_modules)
            self._shapes = shapes_of(linears)
            self._layers = wrap_linears(model, linears, self._plan)
            self.model = model
            self.hidden_size = int(model.config.hidden_size)
            progress.step("base model")
            for name, source in adapters.items():
                log.info("%s: loading adapter %r from %s", self.config.name, name, source)
                self.load_adapter(name, str(resolve_source(source, kind="adapter")), pinned=True)
                progress.step(f"adapter {name}")

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
        self.model = None

    # -- adapters --------------------------------------------------------------------------
    def load_adapter(self, name: str, folder: str, *, pinned: bool = False) -> AdapterInfo:
        adapter = load_peft_adapter(name, Path(folder), base_shapes=self._shapes,
                                    max_rank=self.config.adapters.max_lora_rank, dtype=self.dtype, device=self.device)
        with self._lock:
            if name in self._slots:
                raise AdapterError(f"adapter {name!r}: already loaded")
            if len(self._slots) >= self.settings.max_loras_per_model:
                raise AdapterError(f"adapter {name!r}: max_loras_per_model ({self.settings.max_loras_per_model}) "
                                   "adapters are already resident")
            slot = min(set(range(len(self._slots) + 1)) - set(self._slots.values()))
            self._slots[name] = slot
        self._executor.submit(install_adapter, self._layers, slot, adapter).result()
        info = AdapterInfo(name=name, source=adapter.source, rank=adapter.rank,
                           target_modules=adapter.target_modules, nbytes=adapter.nbytes, pinned=pinned)
        with self._lock:
            self._infos[name] = info
        return info

    def unload_adapter(self, name: str) -> None:
        with self._lock:
            if name not in self._slots:
                raise AdapterNotLoaded(name)
            slot = self._slots[name]
            self._infos.pop(name, None)
        self._executor.submit(remove_adapter, self._layers, slot).result()
        with self._lock:
            del self._slots[name]

    def adapters(self) -> Mapping[str, AdapterInfo]:
        with self._lock:
            return dict(self._infos)

    # -- inference -------------------------------------------------------------------------
    async def embed(self, batch: TokenBatch) -> np.ndarray:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.embed_sync, batch)

    def embed_sync(self, batch: TokenBatch) -> np.ndarray:
        """Runs on the worker thread. On device out-of-memory the batch is split in halves and retried,
        down to single rows, before the error reaches the requests."""
        try:
            return self._forward(batch)
        except torch.OutOfMemoryError:
            if len(batch.input_ids) == 1:
                raise
            log.warning("%s: out of memory on %d rows; retrying in halves", self.config.name, len(batch.input_ids))
            if self.device.startswith("cuda"):
                torch.cuda.empty_cache()
            half = len(batch.input_ids) // 2
            return np.concatenate([
                self.embed_sync(TokenBatch(batch.input_ids[:half], batch.adapters[:half])),
                self.embed_sync(TokenBatch(batch.input_ids[half:], batch.adapters[half:]))])

    @torch.inference_mode()
    def _forward(self, batch: TokenBatch) -> np.ndarray:
        """Group rows by adapter slot, one forward, pool, restore order."""
        slots = []
        for adapter in batch.adapters:
            if adapter is None:
                slots.append(-1)
            elif adapter in self._infos:
                slots.append(self._slots[adapter])
            else:
                raise AdapterNotLoaded(adapter)
        order = sorted(range(len(slots)), key=slots.__getitem__)
        lengths = [len(batch.input_ids[i]) for i in order]
        ids = np.zeros((len(order), max(lengths)), dtype=np.int64)
        for row, i in enumerate(order):
            ids[row, :lengths[row]] = batch.input_ids[i]
        input_ids = torch.from_numpy(ids).to(self.device, non_blocking=True)
        length_t = torch.tensor(lengths, device=self.device)
        self._plan.segments = plan_segments([slots[i] for i in order])
        try:
            hidden = self.model(input_ids=input_ids, use_cache=False).last_hidden_state
        finally:
            self._plan.segments = ()
        pooled = pool(hidden, length_t, self.config.pooling).float()
        result = torch.empty_like(pooled)
        result[torch.tensor(order, device=pooled.device)] = pooled
        return result.cpu().numpy()
