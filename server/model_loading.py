"""Loading a served model, phase by phase, each timed: the tokenizer, the base model, the warm-up (compile,
CUDA graphs), then every preloaded adapter read once (with the effect check) and every profile checked."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from server import errors
from server.adapters.policy import AdapterSources, DynamicSources
from server.config import ConfigError
from server.digests import folder_digest
from server.logs import startup_progress
from server.options import check_outputs
from server.served_model import ModelState
from server.sources import resolve_source
from server.threads import DaemonExecutor
from server.tokenization import load_tokenizer

log = logging.getLogger("server.local_model")
EFFECT_PROBE = "A probe for the adapter-effect check: court rulings, clinical dosage and quarterly revenue."


class ModelLoading:
    """The loading half of `LocalModel` (a mixin over its state: config, backend, adapters, tokenizer)."""

    # -- lifecycle -------------------------------------------------------------------------------
    async def load(self) -> None:
        """Tokenizer, base model, warm-up, then every preloaded adapter (each read once); raises on a problem.
        Each phase's seconds land in `startup` (the backend adds its compile and capture split)."""
        config = self.config
        preload = config.adapters.preloaded
        loop = asyncio.get_running_loop()
        with startup_progress(f"loading {self.name}", 2 + len(preload), log) as progress:
            with self._phase("tokenizer", "loading the tokenizer"):
                self.tokenizer = await loop.run_in_executor(self._loader, load_tokenizer, config)
            with self._phase("weights", "loading the base model"):
                await self.backend.start(slots=self.adapters.capacity)
            hidden = self.backend.info.hidden_size
            if config.dims is not None and config.dims > hidden and "dense" in self.backend.info.output_dims():
                raise ConfigError(f"{config.source_file}: dims {config.dims} is larger than the model's hidden "
                                  f"size {hidden}")
            progress.step("base model")
            digesting = self._digest_base()
            # Shapes are fixed at load (the rank width is max_lora_rank), so the forward compiles and its graphs
            # are captured before any adapter exists: installs copy into buffers they already read.
            with self._phase("warm_up", "warming up (compiling, capturing CUDA graphs)"):
                await self.backend.warm_up()
            progress.step("warm-up")
            with self._phase("adapters", "loading the preloaded adapters"):
                roots = await loop.run_in_executor(self._loader, lambda: tuple(
                    resolve_source(root, kind="adapter root") for root in config.lora_roots + self.settings.lora_roots))
                sources = AdapterSources(
                    catalog={} if config.adapters.preload else dict(config.adapters.lora_paths),
                    dynamic=DynamicSources(roots, config.lora_allow + self.settings.lora_allow))
                probe = self.tokenizer.tokenize([EFFECT_PROBE]).input_ids[0] if self.backend.info.embeds else None
                await self.adapters.open(sources=sources, preload=preload, probe=probe,
                                         on_loaded=lambda name: progress.step(f"adapter {name}"))
                self._check_profiles()
                self._report_roots(roots)
            self.base_digest = await digesting
        self.state, self.phase = ModelState.READY, None

    def _digest_base(self) -> asyncio.Future:
        """The base model's digest (of its files, `digests.folder_digest`), computed on a thread of its own
        beside the warm-up and the adapters: answers name the base model by it. None for the dry run."""
        loop = asyncio.get_running_loop()
        if not self.backend.info.embeds:
            skipped = loop.create_future()
            skipped.set_result(None)
            return skipped
        worker = DaemonExecutor(f"digest-{self.name}")
        source = self.config.model_path
        digesting = loop.run_in_executor(worker, lambda: folder_digest(resolve_source(source, kind="model")))
        worker.shutdown(wait=False)
        return digesting

    @contextlib.contextmanager
    def _phase(self, key: str, doing: str):
        self.phase, started = doing, time.perf_counter()
        yield
        self.startup[key] = time.perf_counter() - started

    def startup_seconds(self) -> dict[str, float]:
        """Seconds per start-up phase, in order: tokenizer, weights, the warm-up as the backend split it
        (compile, graph_capture), adapters; then graph_capture_background once it ran after ready."""
        engine = self.backend.engine_stats().phases
        phases = {}
        for phase, seconds in self.startup.items():
            if phase == "warm_up" and engine:
                phases.update({k: v for k, v in engine.items() if k != "graph_capture_background"})
            else:
                phases[phase] = seconds
        if "graph_capture_background" in engine:
            phases["graph_capture_background"] = engine["graph_capture_background"]
        return phases

    def _report_roots(self, roots) -> None:
        """Say where hot-loadable adapters live, so an operator can find (and add to) them."""
        for root in roots:
            found = sorted(p.name for p in root.iterdir() if (p / "adapter_config.json").is_file())[:20]
            log.info("%s: adapter root %s (a lora_id naming a folder there is loaded on first use: %s)",
                     self.name, root, ", ".join(found) or "none yet")

    def _check_profiles(self) -> None:
        """Every profile's adapter must be loadable: preloaded, configured, or found by the source policy; its
        output types must be ones the model gives."""
        produced = tuple(self.backend.info.output_dims())
        for profile in self.config.profiles.values():
            if profile.output_types:
                try:
                    check_outputs(profile.output_types, produced, self.name)
                except errors.InvalidInput as exc:
                    raise ConfigError(f"{self.config.source_file}: profiles.{profile.name}.output_types: "
                                      f"{exc}") from None
            if profile.lora_id is None:
                continue
            try:
                self.adapters.source_for(profile.lora_id)
            except errors.UnknownAdapter as exc:
                raise ConfigError(f"{self.config.source_file}: profiles.{profile.name}.lora_id "
                                  f"{profile.lora_id!r} names no adapter this model can load ({exc})") from None

    async def _load_and_record(self) -> None:
        started = time.perf_counter()
        try:
            await self.load()
        except Exception as exc:
            self.state, self.failure = ModelState.FAILED, exc
            log.error("%s: load failed: %s", self.name, self.status().failure)
            return
        self.ready_s = time.perf_counter() - started
        names = self.adapters.names()
        phases = ", ".join(f"{phase} {seconds:.1f} s" for phase, seconds in self.startup_seconds().items())
        log.info("%s: ready in %.1f s (%s; %d adapters: %s)", self.name, self.ready_s, phases, len(names),
                 ", ".join(names) or "none")
