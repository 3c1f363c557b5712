"""SGLang backend: an in-process `sglang.Engine` (is_embedding) started with LoRA enabled and no adapter;
the registry installs each one (preloaded ones pinned) through SGLang's async API under its name.

In-process rather than a `sglang.launch_server` subprocess: token ids go straight to SGLang's tokenizer
manager (no second HTTP hop, no JSON re-serialisation of float vectors), and one call carries one adapter
key per row so SGLang's scheduler mixes adapters in its batches. SGLang runs its scheduler in child
processes; the backend records which ones it started and stops only those (`Engine.shutdown()` would
kill every child of the server process). Where SGLang would silently ignore an adapter setting (rsLoRA,
rank/alpha patterns), the adapter is rewritten as an equivalent plain LoRA first.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import signal
import threading
from pathlib import Path

import numpy as np
import torch

from server import errors
from server.backends.base import Backend, BackendInfo, TokenBatch
from server.backends.hf_model import meta_linear_shapes
from server.cache import cache_dir
from server.config import ModelConfig, ServerSettings
from server.lora.peft_format import AdapterError, LoraAdapter, read_adapter_config
from server.model_layout import read_layout
from server.sources import resolve_source

log = logging.getLogger(__name__)
ALL_LINEARS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
CONTEXT_MARGIN = 6  # SGLang rejects inputs at its context length; its auto-truncation drops the EOS


def plain_lora_folder(adapter: LoraAdapter, folder: Path, cache: Path) -> Path:
    """`folder` itself when SGLang reads it as PEFT does, else an equivalent plain-LoRA copy: one rank
    (zero-padded), alpha = rank, and each module's own scaling folded into B."""
    config = read_adapter_config(adapter.name, folder)
    if not (config.get("use_rslora") or config.get("rank_pattern") or config.get("alpha_pattern")):
        return folder
    from safetensors.torch import save_file

    rank = adapter.rank
    digest = hashlib.sha256(f"{folder.resolve()}:{os.path.getmtime(folder)}".encode()).hexdigest()[:16]
    out = cache / f"{adapter.name}-{digest}"
    if (out / "adapter_model.safetensors").exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for path, module in adapter.modules.items():
        pad = rank - module.rank
        tensors[f"base_model.model.{path}.lora_A.weight"] = torch.nn.functional.pad(module.a, (0, 0, 0, pad))
        tensors[f"base_model.model.{path}.lora_B.weight"] = torch.nn.functional.pad(module.b * module.scaling,
                                                                                    (0, pad))
    save_file({k: v.contiguous() for k, v in tensors.items()}, out / "adapter_model.safetensors")
    plain = {k: v for k, v in config.items() if k not in ("use_rslora", "rank_pattern", "alpha_pattern")}
    plain.update(r=rank, lora_alpha=rank, target_modules=list(adapter.target_modules))
    (out / "adapter_config.json").write_text(json.dumps(plain))
    return out


class SGLangBackend(Backend):
    def __init__(self, model: ModelConfig, settings: ServerSettings, device: str):
        self.config = model
        self.device = device
        options = dict(model.adapters.sglang_options)
        self.context_length = int(options.pop("context_length", model.max_seq_len + CONTEXT_MARGIN))
        self.options = options
        self.engine = None
        self._info = BackendInfo(hidden_size=0)
        self._keys: dict[int, str] = {}  # slot -> the name SGLang holds the adapter under
        self._children: list = []
        self._loop_ready = False
        self._cache = cache_dir() / "sglang-adapters"

    @property
    def info(self) -> BackendInfo:
        return self._info

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self, slots: int) -> None:  # SGLang sizes its own adapter pool
        await asyncio.to_thread(self._launch)

    def _launch(self) -> None:
        import psutil
        import sglang

        from server.backends import check_fits

        folder = resolve_source(self.config.model_path, kind="model")
        check_fits("sglang", read_layout(folder, self.config), self.config)
        shapes, hidden_size = meta_linear_shapes(folder, self.config.adapters.lora_target_modules)
        targets = self.config.adapters.lora_target_modules or ALL_LINEARS
        kwargs = dict(model_path=str(folder), is_embedding=True, enable_lora=True,
                      max_loras_per_batch=self.config.adapters.max_loras_per_batch,
                      max_lora_rank=self.config.adapters.max_lora_rank, lora_target_modules=list(targets),
                      dtype=self.config.dtype, context_length=self.context_length, **self.options)
        log.info("%s: starting SGLang (%s)", self.config.name, folder)
        before = {p.pid for p in psutil.Process().children(recursive=True)}
        self.engine = sglang.Engine(**kwargs)
        self._children = [p for p in psutil.Process().children(recursive=True) if p.pid not in before]
        self._info = BackendInfo(hidden_size=hidden_size, linear_shapes=shapes,
                                 max_input_tokens=self.context_length - CONTEXT_MARGIN,
                                 description=f"{folder} in SGLang ({self.config.dtype})")

    async def close(self) -> None:
        if self._children and threading.current_thread() is threading.main_thread():
            # SGLang's children send SIGQUIT to this process when they die, and SGLang answers that by
            # killing the whole process tree (this server included). Here they die because we stop them.
            signal.signal(signal.SIGQUIT, signal.SIG_IGN)
        await asyncio.to_thread(self._stop_children)
        self.engine = None

    def _stop_children(self) -> None:
        import psutil

        for process in self._children:
            try:
                process.terminate()
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(self._children, timeout=15)
        for process in alive:
            process.kill()
        self._children = []

    def _own_the_loop(self) -> None:
        """SGLang's tokenizer manager binds to the serving loop on first use and then takes SIGTERM for
        itself; create that binding now and give SIGTERM back to the server, whose drain runs first."""
        if self._loop_ready:
            return
        main = threading.current_thread() is threading.main_thread()
        previous = signal.getsignal(signal.SIGTERM) if main else None
        self.engine.tokenizer_manager.auto_create_handle_loop()
        if main:
            loop = asyncio.get_running_loop()
            loop.remove_signal_handler(signal.SIGTERM)
            signal.signal(signal.SIGTERM, previous)
        self._loop_ready = True

    # -- inference -------------------------------------------------------------------------
    async def embed(self, batch: TokenBatch) -> np.ndarray:
        from sglang.srt.managers.io_struct import EmbeddingReqInput

        self._own_the_loop()
        missing = {slot for slot in batch.slots if slot is not None} - set(self._keys)
        if missing:
            raise errors.AdapterNotResident(f"no adapter is installed at slot(s) {sorted(missing)}")
        keys = [None if slot is None else self._keys[slot] for slot in batch.slots]
        request = EmbeddingReqInput(input_ids=[list(ids) for ids in batch.input_ids], lora_path=keys)
        try:
            outputs = await self.engine.tokenizer_manager.generate_request(request, None).__anext__()
        except ValueError as exc:
            if "never been loaded" in str(exc):
                raise errors.AdapterNotResident(str(exc)) from None
            raise
        except Exception as exc:  # scheduler aborts arrive as fastapi.HTTPException
            status = getattr(exc, "status_code", None)
            if status in (429, 503):
                raise errors.QueueFull(f"SGLang is overloaded: {getattr(exc, 'detail', exc)}") from None
            if status == 400:
                raise errors.InvalidInput(f"SGLang refused the batch: {getattr(exc, 'detail', exc)}") from None
            raise
        if isinstance(outputs, dict):
            outputs = [outputs]
        return np.asarray([output["embedding"] for output in outputs], dtype=np.float32)

    # -- adapters --------------------------------------------------------------------------
    async def install(self, slot: int, adapter: LoraAdapter, *, pinned: bool = False) -> None:
        self._own_the_loop()
        folder = await asyncio.to_thread(plain_lora_folder, adapter, Path(adapter.source), self._cache)
        result = await self.engine.async_load_lora_adapter(adapter.name, str(folder), pinned=pinned)
        if not result.success:
            raise AdapterError(f"adapter {adapter.name!r}: SGLang refused it: {result.error_message}")
        self._keys[slot] = adapter.name

    async def remove(self, slot: int) -> None:
        self._own_the_loop()
        key = self._keys[slot]
        result = await self.engine.async_unload_lora_adapter(key)
        if not result.success:
            raise AdapterError(f"adapter {key!r}: SGLang could not unload it: {result.error_message}")
        del self._keys[slot]
