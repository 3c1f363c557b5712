"""SGLang backend: an in-process `sglang.Engine` (is_embedding) with every configured adapter preloaded.

In-process rather than a `sglang.launch_server` subprocess: token ids go straight to SGLang's tokenizer
manager (no second HTTP hop, no JSON re-serialisation of float vectors), one call carries one adapter
name per row so SGLang's scheduler mixes adapters in its batches, and adapters load and unload through
the same async API. SGLang still runs its scheduler in child processes; the backend records which ones
it started and stops only those (`Engine.shutdown()` would kill every child of the server process).
Adapters are validated with our own PEFT reader first and, where SGLang would silently ignore a
setting (rsLoRA, rank/alpha patterns), rewritten as an equivalent plain LoRA.
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
from typing import Mapping

import numpy as np
import torch

from server import errors
from server.backends.base import AdapterInfo, AdapterNotLoaded, Backend, TokenBatch
from server.backends.hf_model import meta_linear_shapes
from server.config import EngineConfig, ModelConfig
from server.lora.peft_format import AdapterError, LoraAdapter, load_peft_adapter, read_adapter_config
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
    def __init__(self, model: ModelConfig, engine: EngineConfig, device: str):
        self.config = model
        self.settings = engine
        self.device = device
        options = dict(model.adapters.sglang_options)
        self.context_length = int(options.pop("context_length", model.max_seq_len + CONTEXT_MARGIN))
        self.max_input_tokens = self.context_length - CONTEXT_MARGIN
        self.options = options
        self.engine = None
        self.hidden_size = 0
        self._shapes: dict[str, tuple[int, int]] = {}
        self._infos: dict[str, AdapterInfo] = {}
        self._children: list = []
        self._loop_ready = False
        self._cache = Path(os.environ.get("MLE_CACHE_DIR", ".cache")).resolve() / "sglang-adapters"

    # -- lifecycle -------------------------------------------------------------------------
    def _prepare(self, name: str, folder: Path) -> tuple[LoraAdapter, Path]:
        adapter = load_peft_adapter(name, folder, base_shapes=self._shapes,
                                    max_rank=self.config.adapters.max_lora_rank)
        return adapter, plain_lora_folder(adapter, folder, self._cache)

    def start(self) -> None:
        import psutil
        import sglang

        folder = resolve_source(self.config.model_path, kind="model")
        self._shapes, self.hidden_size = meta_linear_shapes(folder, self.config.adapters.lora_target_modules)
        prepared = {name: self._prepare(name, resolve_source(source, kind="adapter"))
                    for name, source in self.config.adapters.preloaded.items()}
        targets = self.config.adapters.lora_target_modules or sorted(
            {t for adapter, _ in prepared.values() for t in adapter.target_modules} or ALL_LINEARS)
        kwargs = dict(model_path=str(folder), is_embedding=True, enable_lora=True,
                      lora_paths=[{"lora_name": n, "lora_path": str(p), "pinned": True} for n, (_, p) in prepared.items()],
                      max_loras_per_batch=self.config.adapters.max_loras_per_batch,
                      max_lora_rank=self.config.adapters.max_lora_rank, lora_target_modules=list(targets),
                      dtype=self.config.dtype, context_length=self.context_length, **self.options)
        log.info("%s: starting SGLang (%s) with adapters %s", self.config.name, folder, ", ".join(prepared) or "none")
        before = {p.pid for p in psutil.Process().children(recursive=True)}
        self.engine = sglang.Engine(**kwargs)
        self._children = [p for p in psutil.Process().children(recursive=True) if p.pid not in before]
        for name, (adapter, _) in prepared.items():
            self._infos[name] = AdapterInfo(name=name, source=adapter.source, rank=adapter.rank,
                                            target_modules=adapter.target_modules, nbytes=adapter.nbytes, pinned=True)

    def close(self) -> None:
        import psutil

        if self._children and threading.current_thread() is threading.main_thread():
            # SGLang's children send SIGQUIT to this process when they die, and SGLang answers that by
            # killing the whole process tree (this server included). Here they die because we stop them.
            signal.signal(signal.SIGQUIT, signal.SIG_IGN)
        for process in self._children:
            try:
                process.terminate()
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(self._children, timeout=15)
        for process in alive:
            process.kill()
        self._children = []
        self.engine = None

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
        request = EmbeddingReqInput(input_ids=[list(ids) for ids in batch.input_ids], lora_path=list(batch.adapters))
        try:
            outputs = await self.engine.tokenizer_manager.generate_request(request, None).__anext__()
        except ValueError as exc:
            if "never been loaded" in str(exc):
                raise AdapterNotLoaded(str(exc)) from None
            raise
        except Exception as exc:  # scheduler aborts arrive as fastapi.HTTPException
            status = getattr(exc, "status_code", None)
            if status in (429, 503):
                raise errors.queue_full(f"SGLang is overloaded: {getattr(exc, 'detail', exc)}") from None
            if status == 400:
                raise errors.invalid_input(f"SGLang refused the batch: {getattr(exc, 'detail', exc)}") from None
            raise
        if isinstance(outputs, dict):
            outputs = [outputs]
        return np.asarray([output["embedding"] for output in outputs], dtype=np.float32)

    # -- adapters --------------------------------------------------------------------------
    async def load_adapter_async(self, name: str, folder: str, *, pinned: bool = False) -> AdapterInfo:
        self._own_the_loop()
        adapter, ready = await asyncio.to_thread(self._prepare, name, Path(folder))
        result = await self.engine.async_load_lora_adapter(name, str(ready), pinned=pinned)
        if not result.success:
            raise AdapterError(f"adapter {name!r}: SGLang refused it: {result.error_message}")
        info = AdapterInfo(name=name, source=adapter.source, rank=adapter.rank, target_modules=adapter.target_modules,
                           nbytes=adapter.nbytes, pinned=pinned)
        self._infos[name] = info
        return info

    async def unload_adapter_async(self, name: str) -> None:
        self._own_the_loop()
        if name not in self._infos:
            raise AdapterNotLoaded(name)
        result = await self.engine.async_unload_lora_adapter(name)
        if not result.success:
            raise AdapterError(f"adapter {name!r}: SGLang could not unload it: {result.error_message}")
        del self._infos[name]

    def load_adapter(self, name: str, folder: str, *, pinned: bool = False) -> AdapterInfo:
        raise NotImplementedError("the SGLang backend loads adapters on the serving loop (load_adapter_async)")

    def unload_adapter(self, name: str) -> None:
        raise NotImplementedError("the SGLang backend unloads adapters on the serving loop (unload_adapter_async)")

    def adapters(self) -> Mapping[str, AdapterInfo]:
        return dict(self._infos)
