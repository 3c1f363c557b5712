"""The backend `launch.py check` starts: the model's shapes from config.json alone (no weights read),
so the real load path (tokenizer, registry, every adapter read and validated) runs without a forward."""

from __future__ import annotations

import asyncio

import numpy as np

from server import errors
from server.backends.base import Backend, BackendInfo, TokenBatch
from server.backends.hf_model import meta_linear_shapes
from server.backends.output_heads import declared_sizes
from server.config import ModelConfig, ServerSettings
from server.lora.peft_format import LoraAdapter
from server.model_layout import ModelLayout, read_layout
from server.sources import resolve_source


class DryRunBackend(Backend):
    def __init__(self, model: ModelConfig, settings: ServerSettings, device: str):
        self.config = model
        self._info = BackendInfo(hidden_size=0)
        self.layout = ModelLayout(encoder=False, pooling="last", max_positions=None)

    @property
    def info(self) -> BackendInfo:
        return self._info

    async def start(self, slots: int) -> None:
        folder = await asyncio.to_thread(resolve_source, self.config.model_path, kind="model")
        self.layout = read_layout(folder, self.config)
        shapes, hidden = await asyncio.to_thread(meta_linear_shapes, folder, self.config.adapters.lora_target_modules,
                                                 masked_lm=self.layout.splade is not None)
        outputs = await asyncio.to_thread(declared_sizes, folder, self.layout, hidden, where=self.config.source_file)
        self._info = BackendInfo(hidden_size=hidden, linear_shapes=shapes, embeds=False, outputs=outputs,
                                 description=f"{folder} (hidden {hidden}, {len(shapes)} LoRA-capable linears)")

    async def embed(self, batch: TokenBatch) -> np.ndarray:
        raise errors.NotSupported("a dry run loads no weights and embeds nothing")

    async def install(self, slot: int, adapter: LoraAdapter, *, pinned: bool = False) -> None:
        """The registry already read and validated the adapter; a dry run keeps nothing."""

    async def remove(self, slot: int) -> None:
        pass

    async def close(self) -> None:
        pass
