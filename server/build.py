"""One way to assemble a served model, for `launch.py` (serve, and check as a dry run of the same load
path) and for each scale-out replica."""

from __future__ import annotations

import logging

from server import errors
from server.backends import check_fits, create_backend, pick_device, resolve_backend_kind
from server.backends.hf_model import import_transformers
from server.config import ConfigError, ModelConfig, ServerSettings, adapters_on_demand
from server.local_model import OPERATOR_ERRORS, LocalModel

log = logging.getLogger(__name__)


def build_model(config: ModelConfig, settings: ServerSettings, *, backend: str | None = None,
                dry_run: bool = False) -> LocalModel:
    """`backend` overrides the config's kind; `dry_run` loads shapes instead of weights."""
    device = pick_device(settings.device)
    kind = "dry-run" if dry_run else resolve_backend_kind(backend or config.backend, device, config)
    log.info("model %s: backend %s on %s", config.name, kind, device)
    import_transformers()  # before any model's loading thread touches it
    return LocalModel(config, settings, create_backend(kind, config, settings, device))


async def check_model(config: ModelConfig, settings: ServerSettings, *, backend: str | None = None) -> list[str]:
    """The load path without weights: tokenizer, shapes, then every adapter the model would serve (preloaded,
    configured, and each folder under its adapter roots) read and validated once. Lines that describe what
    would be served; raises a ConfigError that lists every adapter that cannot be served."""
    model = build_model(adapters_on_demand(config), settings, dry_run=True)
    model.adapters.check_preload(config.adapters.preloaded)
    infos, problems = {}, []
    try:
        await model.load()
        kind = resolve_backend_kind(backend or config.backend, pick_device(settings.device), config)
        check_fits(kind, model.backend.layout, config)
        for name in _servable(config, model.adapters.sources.dynamic.roots):
            try:  # where the server would load it from, by the server's own rule (symlinks leaving a root...)
                infos[name] = await model.adapters.inspect(name, model.adapters.source_for(name))
            except (*OPERATOR_ERRORS, errors.UnknownAdapter) as exc:
                problems.append(exc.message if isinstance(exc, errors.UnknownAdapter) else str(exc))
    finally:
        await model.stop()
    if problems:
        raise ConfigError(f"{config.source_file}: {len(problems)} adapter(s) cannot be served:\n  "
                          + "\n  ".join(problems))
    return _describe(config, model, kind, infos)


def _servable(config: ModelConfig, roots) -> list[str]:
    """Every adapter name the model would serve: `lora_paths`, then each folder under its roots."""
    named = dict.fromkeys(config.adapters.lora_paths)
    for root in roots:
        for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            named.setdefault(folder.name)
    return list(named)


def _describe(config: ModelConfig, model: LocalModel, kind: str, infos: dict) -> list[str]:
    layout = model.backend.layout
    preloaded = config.adapters.preloaded
    token = f" on token id {model.tokenizer.eos_id}" if model.tokenizer.eos_id is not None else ""
    lines = [f"model {config.name} ({kind}): {model.backend.info.description}, "
             f"{'encoder' if layout.encoder else 'decoder'}, {layout.pooling} pooling{token}, "
             f"outputs {', '.join(f'{output} {size}' for output, size in model.output_dims().items())}"]
    for name, info in infos.items():
        lines.append(f"  adapter {name}{'' if name in preloaded else ' (on demand)'}: rank {info.rank}, "
                     f"targets {','.join(info.target_modules)}, {info.nbytes / 1024:.0f} KiB from {info.source}")
    for profile in config.profiles.values():
        outputs = f" output_types={','.join(profile.output_types)}" if profile.output_types else ""
        lines.append(f"  profile {profile.name}: lora_id={profile.lora_id} instruction={profile.instruction!r}"
                     + outputs)
    return lines


async def load_model(config: ModelConfig, settings: ServerSettings, *, backend: str | None = None) -> LocalModel:
    """Build and load now, raising the first problem (tests, benchmarks and tools that serve nothing)."""
    model = build_model(config, settings, backend=backend)
    await model.load()
    return model
