"""One way to assemble a served model, for `launch.py` (serve, and check as a dry run of the same load
path) and for each scale-out replica."""

from __future__ import annotations

import logging

from server.backends import check_fits, create_backend, pick_device, resolve_backend_kind
from server.config import ModelConfig, ServerSettings
from server.local_model import LocalModel

log = logging.getLogger(__name__)


def build_model(config: ModelConfig, settings: ServerSettings, *, backend: str | None = None,
                dry_run: bool = False) -> LocalModel:
    """`backend` overrides the config's kind; `dry_run` loads shapes instead of weights."""
    device = pick_device(settings.device)
    kind = "dry-run" if dry_run else resolve_backend_kind(backend or config.backend, device, config)
    log.info("model %s: backend %s on %s", config.name, kind, device)
    return LocalModel(config, settings, create_backend(kind, config, settings, device))


async def check_model(config: ModelConfig, settings: ServerSettings, *, backend: str | None = None) -> list[str]:
    """The load path without weights: tokenizer, shapes, every adapter read and validated once. Lines
    that describe what would be served; raises the first problem."""
    model = build_model(config, settings, dry_run=True)
    try:
        await model.load()
        kind = resolve_backend_kind(backend or config.backend, pick_device(settings.device), config)
        check_fits(kind, model.backend.layout, config)
        infos = {name: entry.info for name, entry in model.adapters.entries.items()}
        on_demand = {} if config.adapters.preload else config.adapters.lora_paths
        for name, source in on_demand.items():
            infos[name] = await model.adapters.inspect(name, source)
    finally:
        await model.stop()
    layout = model.backend.layout
    token = f" on token id {model.tokenizer.eos_id}" if model.tokenizer.eos_id is not None else ""
    lines = [f"model {config.name} ({kind}): {model.backend.info.description}, "
             f"{'encoder' if layout.encoder else 'decoder'}, {layout.pooling} pooling{token}"]
    for name, info in infos.items():
        lines.append(f"  adapter {name}{' (on demand)' if name in on_demand else ''}: rank {info.rank}, "
                     f"targets {','.join(info.target_modules)}, {info.nbytes / 1024:.0f} KiB from {info.source}")
    for profile in config.profiles.values():
        lines.append(f"  profile {profile.name}: lora_id={profile.lora_id} instruction={profile.instruction!r}")
    return lines


async def load_model(config: ModelConfig, settings: ServerSettings, *, backend: str | None = None) -> LocalModel:
    """Build and load now, raising the first problem (tests, benchmarks and tools that serve nothing)."""
    model = build_model(config, settings, backend=backend)
    await model.load()
    return model
