"""The torch backend's static forward: every row at once with a per-row adapter slot tensor, optionally
compiled (`torch.compile`, dynamic shapes, inductor cache under the cache dir) and replayed from CUDA
graphs for small batches. Compiled code and graphs are made again only when the rank width grows."""

from __future__ import annotations

import importlib.util
import logging
import os
import time
from dataclasses import dataclass

import torch
from torch import nn

from server.backends.cuda_graphs import GraphPool, plan_buckets
from server.backends.hf_model import hidden_states, pooled_forward
from server.config import ModelConfig
from server.demo_assets import cache_dir
from server.lora.plan import SegmentPlan
from server.model_layout import ModelLayout

log = logging.getLogger(__name__)

WARM_UP_LENGTH = 16


@dataclass(frozen=True)
class EngineChoice:
    """How the torch backend runs: `static_rows` (else the eager segment path), compiled, CUDA graphs, and
    the static path's LoRA as Triton kernels (else the gathered bmm pair)."""

    static_rows: bool = False
    compiled: bool = False
    cuda_graphs: bool = False
    triton_kernels: bool = False


def choose_engine(config: ModelConfig, device: str, layout: ModelLayout) -> EngineChoice:
    """`auto` compiles on CUDA and captures graphs on CUDA for decoders (an encoder's padding mask makes
    transformers branch on tensor values, which a graph cannot record), with the Triton LoRA kernels when
    triton is installed. The CPU keeps its eager path (`lora_kernels: triton` there runs Triton's
    interpreter: for tests, not for speed)."""
    cuda = device.startswith("cuda")
    compiled = config.compile == "on" or (config.compile == "auto" and cuda)
    graphs = cuda and (config.cuda_graphs == "on" or (config.cuda_graphs == "auto" and not layout.encoder))
    if config.cuda_graphs == "on" and not cuda:
        log.warning("%s: cuda_graphs: on has no effect on %s", config.name, device)
    kernels = config.lora_kernels == "triton" or (
        config.lora_kernels == "auto" and cuda and importlib.util.find_spec("triton") is not None)
    return EngineChoice(static_rows=cuda or compiled or kernels, compiled=compiled, cuda_graphs=graphs,
                        triton_kernels=kernels)


def use_compile_cache() -> str:
    """Keep inductor's compiled kernels under the server's cache dir, so a restart reuses them, unless the
    operator chose a place (torch writes its own temp-dir default into the variable once it has used it)."""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    chosen = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if chosen is None or chosen == default_cache_dir():
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = chosen = str(cache_dir() / "inductor")
    return chosen


class StaticForward:
    """Pooled vectors for right-padded rows under per-row slots; warm (compiled, graphs captured) at the
    plan's current width after `ensure_warm`."""

    def __init__(self, model: nn.Module, layout: ModelLayout, plan: SegmentPlan, choice: EngineChoice, *,
                 device: str, max_length: int, name: str, causal_mask: dict | None = None):
        self.model, self.layout, self.plan, self.choice, self.name = model, layout, plan, choice, name
        self.causal_mask = causal_mask
        self._forward = self._compiled() if choice.compiled else self._eager
        self.graphs: GraphPool | None = None
        if choice.cuda_graphs:
            self.graphs = GraphPool(self._run, plan_buckets(max_length), device=device, pad_id=layout.pad_token_id,
                                    zero_slot=plan.zero_slot, memory_pool=torch.cuda.graph_pool_handle)
        self.warm_width: int | None = None  # the width compiled code and graphs were last made for

    def _eager(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return pooled_forward(self.model, ids, lengths, self.layout, self.causal_mask)

    def _compiled(self):
        log.info("%s: compiling the forward (inductor cache: %s)", self.name, use_compile_cache())
        return torch.compile(self._eager, dynamic=True)

    def _run(self, ids: torch.Tensor, lengths: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        self.plan.publish_rows(slots)
        try:
            return self._forward(ids, lengths)
        finally:
            self.plan.clear()

    def hidden(self, ids: torch.Tensor, lengths: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        """The last hidden states under per-row slots, eager (rows asking for sparse or multivector outputs)."""
        self.plan.publish_rows(slots)
        try:
            return hidden_states(self.model, ids, lengths, self.layout, self.causal_mask)
        finally:
            self.plan.clear()

    def __call__(self, ids: torch.Tensor, lengths: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        if self.graphs is not None:
            pooled = self.graphs.run(ids, lengths, slots)
            if pooled is not None:
                return pooled
        return self._run(ids, lengths, slots)

    @torch.inference_mode()
    def ensure_warm(self) -> None:
        """Compile (rows 1 and 2: dynamo specialises size-1 dimensions) and capture the graphs at the
        current width, once per width. A failed capture leaves the graphs off, with the reason logged."""
        if self.warm_width == self.plan.width:
            return
        started, device = time.perf_counter(), self.model.device
        if self.choice.compiled:
            for rows in (2, 1):
                ids = torch.full((rows, WARM_UP_LENGTH), self.layout.pad_token_id, device=device)
                lengths = torch.full((rows,), WARM_UP_LENGTH, device=device)
                self._run(ids, lengths, torch.full((rows,), self.plan.zero_slot, device=device))
            log.info("%s: forward compiled at rank width %d in %.1f s", self.name, self.plan.width,
                     time.perf_counter() - started)
        if self.graphs is not None:
            try:
                self.graphs.capture_all(self.name)
            except Exception as exc:  # noqa: BLE001 - any capture failure falls back to the ungraphed forward
                log.warning("%s: CUDA graph capture failed, serving without graphs: %s", self.name, exc)
                self.graphs = None
        self.warm_width = self.plan.width
