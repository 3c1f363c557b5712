"""The torch backend's static forward: every row at once with a per-row adapter slot tensor, optionally
compiled (`torch.compile`, dynamic shapes, inductor cache under the cache dir) and replayed from CUDA
graphs for small batches. The shapes are fixed at load (the rank width is `max_lora_rank`), so a process
compiles twice (one row, several rows: dynamo specialises a size of 1) and never again."""

from __future__ import annotations

import importlib.util
import logging
import os
import time
from dataclasses import dataclass

import torch
from torch import nn

from server.backends import compile_cache, fused_decoder
from server.backends.cuda_graphs import GraphPool, plan_buckets, single_row
from server.backends.hf_model import hidden_states, pool
from server.cache import cache_dir
from server.config import ModelConfig
from server.lora.plan import BatchPlan
from server.model_layout import ModelLayout

log = logging.getLogger(__name__)

# Not a power of two (no bucket length) and not a row count of the warm-up; the sizes that could tie it to
# a model dimension under duck sizing (the LoRA groups' tensors) are static.
WARM_UP_LENGTH = 24
MIN_LENGTH = 2  # dynamo specialises a size of 1: a one-token batch is padded to two, not compiled again


@dataclass(frozen=True)
class EngineChoice:
    """How the torch backend runs: `static_rows` (else the eager segment path), compiled (by dynamo's
    `compiler` backend: inductor when serving), CUDA graphs, and the static path's LoRA as Triton kernels
    (else the gathered bmm pair), `fused` into the engine's own decoder forward where the family has one;
    the eager CPU path's linears through oneDNN with prepacked weights (`packed_linears`)."""

    static_rows: bool = False
    compiled: bool = False
    cuda_graphs: bool = False
    triton_kernels: bool = False
    fused: bool = False
    packed_linears: bool = False
    compiler: str = "inductor"


def choose_engine(config: ModelConfig, device: str, layout: ModelLayout) -> EngineChoice:
    """`auto` compiles on CUDA and captures graphs on CUDA for decoders (an encoder's padding mask makes
    transformers branch on tensor values, which a graph cannot record), with the Triton LoRA kernels when
    triton is installed, fused into their consumers (`fused_decoder`) unless `lora_kernels: triton` asks for the
    kernels alone. The CPU keeps its eager path (`fused` or `triton` there runs Triton's interpreter: for
    tests, not for speed); its linears run through oneDNN with weights packed at load unless `cpu_linears:
    torch` asks for torch's own (`packed_linears`)."""
    cuda = device.startswith("cuda")
    compiled = config.compile == "on" or (config.compile == "auto" and cuda)
    graphs = cuda and (config.cuda_graphs == "on" or (config.cuda_graphs == "auto" and not layout.encoder))
    if config.cuda_graphs == "on" and not cuda:
        log.warning("%s: cuda_graphs: on has no effect on %s", config.name, device)
    kernels = config.lora_kernels in ("fused", "triton") or (
        config.lora_kernels == "auto" and cuda and importlib.util.find_spec("triton") is not None)
    static = cuda or compiled or kernels
    packed = not static and config.cpu_linears != "torch" and onednn_available()
    if config.cpu_linears == "onednn" and not packed:
        log.warning("%s: cpu_linears: onednn has no effect here (%s)", config.name,
                    "the static path" if static else "torch has no oneDNN")
    return EngineChoice(static_rows=static, compiled=compiled, cuda_graphs=graphs, triton_kernels=kernels,
                        fused=kernels and config.lora_kernels != "triton", packed_linears=packed)


def onednn_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def use_compile_cache() -> str:
    """Keep inductor's compiled kernels under the server's cache dir, so a restart reuses them, unless the
    operator chose a place (torch writes its own temp-dir default into the variable once it has used it)."""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    chosen = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if chosen is None or chosen == default_cache_dir():
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = chosen = str(cache_dir() / "inductor")
    return chosen


class CountingCompiler:
    """A dynamo backend that counts the graphs it compiles before handing each to the named backend
    (inductor when serving): the model's compile count, which tests, /metrics and gpu-check read."""

    def __init__(self, backend: str = "inductor"):
        self.backend, self.graphs = backend, 0

    def __call__(self, graph, example_inputs):
        from torch._dynamo.backends.registry import lookup_backend

        compiled = lookup_backend(self.backend)(graph, example_inputs)  # may raise to restart dynamo's analysis
        self.graphs += 1
        return compiled


class StaticForward:
    """Pooled vectors for right-padded rows under per-row slots. `warm_up` compiles and captures the
    single-row graph buckets; `capture_next` captures one more bucket (the backend calls it between
    batches until none is left); `phases` keeps the seconds each step took."""

    def __init__(self, model: nn.Module, layout: ModelLayout, plan: BatchPlan, choice: EngineChoice, *,
                 device: str, config: ModelConfig, causal_mask: dict | None = None, cache_artifacts: str = ""):
        self.model, self.layout, self.plan, self.choice, self.name = model, layout, plan, choice, config.name
        self.causal_mask = causal_mask
        self.fused = None  # fused_decoder.FusedDecoder: the engine's own forward with the fused LoRA ops
        if choice.fused and plan.ops is not None and fused_decoder.supports(model):
            self.fused = fused_decoder.FusedDecoder(model, plan, plan.ops)
            log.info("%s: the fused decoder forward (LoRA inside norms, RoPE and SiLU)", self.name)
        if choice.compiled:
            log.info("%s: compiling the forward (inductor cache: %s)", self.name, use_compile_cache())
            if cache_artifacts:  # into the cache folder just chosen, where the compile will look
                compile_cache.load(cache_artifacts, device)
        self.compiler = CountingCompiler(choice.compiler)
        self._forward = self._compiled() if choice.compiled else self._eager
        self.graphs: GraphPool | None = None
        if choice.cuda_graphs:
            buckets = plan_buckets(config.max_seq_len, config.cuda_graph_max_tokens, config.cuda_graph_max_rows)
            self.graphs = GraphPool(self._run, buckets, device=device, pad_id=layout.pad_token_id,
                                    zero_slot=plan.zero_slot, memory_pool=torch.cuda.graph_pool_handle)
        self.phases: dict[str, float] = {}  # compile, graph_capture (before ready), graph_capture_background

    @property
    def compiles(self) -> int:
        return self.compiler.graphs

    def _eager(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return pool(self._hidden(ids, lengths), lengths, self.layout.pooling)

    def _hidden(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        if self.fused is not None:
            return self.fused(ids)
        return hidden_states(self.model, ids, lengths, self.layout, self.causal_mask)

    def _compiled(self):
        return torch.compile(self._eager, dynamic=True, backend=self.compiler)

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
            return self._hidden(ids, lengths)
        finally:
            self.plan.clear()

    def __call__(self, ids: torch.Tensor, lengths: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        if self.graphs is not None:
            pooled = self.graphs.run(ids, lengths, slots)
            if pooled is not None:
                return pooled
        if ids.shape[1] < MIN_LENGTH:  # padding after each row's last token changes no row's vector
            ids = torch.nn.functional.pad(ids, (0, MIN_LENGTH - ids.shape[1]), value=self.layout.pad_token_id)
        return self._run(ids, lengths, slots)

    @torch.inference_mode()
    def warm_up(self) -> None:
        """Compile (two rows, then one: dynamo specialises a size of 1) and capture the single-row buckets."""
        if self.choice.compiled:
            started, device = time.perf_counter(), self.model.device
            for rows in (2, 1):
                ids = torch.full((rows, WARM_UP_LENGTH), self.layout.pad_token_id, device=device)
                lengths = torch.full((rows,), WARM_UP_LENGTH, device=device)
                self._run(ids, lengths, torch.full((rows,), self.plan.zero_slot, device=device))
            self.phases["compile"] = time.perf_counter() - started
            log.info("%s: forward compiled (%d graphs) at rank width %d in %.1f s", self.name, self.compiles,
                     self.plan.width, self.phases["compile"])
        if self.graphs is not None:
            buckets = single_row(self.graphs.buckets)
            if self._capture(buckets, "graph_capture"):
                log.info("%s: captured the %d single-row CUDA graphs in %.1f s; %d more are captured between "
                         "batches", self.name, len(buckets), self.phases["graph_capture"],
                         len(self.graphs.pending()))

    @torch.inference_mode()
    def capture_next(self) -> bool:
        """Capture the next bucket not captured yet; True while more are left."""
        pending = self.graphs.pending() if self.graphs is not None else []
        if not pending or not self._capture(pending[:1], "graph_capture_background"):
            return False
        if len(pending) == 1:
            log.info("%s: all %d CUDA graphs captured (%.1f s after ready)", self.name, len(self.graphs.graphs),
                     self.phases["graph_capture_background"])
        return len(pending) > 1

    def _capture(self, buckets, phase: str) -> bool:
        """False (graphs off, the reason logged) when a capture fails: the compiled forward serves every batch."""
        try:
            seconds = self.graphs.capture(buckets)
        except Exception as exc:  # noqa: BLE001 - any capture failure falls back to the ungraphed forward
            log.warning("%s: CUDA graph capture failed, serving without graphs: %s", self.name, exc)
            self.graphs = None
            return False
        self.phases[phase] = self.phases.get(phase, 0.0) + seconds
        return True
