"""What a scale-out deployment needs, as one frozen (and cloudpickle-able) value: the loaded model and
server settings plus replica shape. Built from `launch.py --replicas N` or from `serve run` builder args."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from server.config import (
    ConfigError,
    ModelConfig,
    ServerSettings,
    adapters_on_demand,
    load_model_config,
    load_server_settings,
)


@dataclass(frozen=True)
class ScaleoutSpec:
    models: tuple[ModelConfig, ...]
    settings: ServerSettings
    replicas: int = 2
    replica_cpus: float = 1.0
    replica_gpus: float = 0.0
    backend: str | None = None  # overrides each model's `adapter`
    max_ongoing_requests: int = 256  # per replica; Ray's default (5) would starve the batcher
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 0  # each encoder replica's /metrics: first free port from here; 0 = any free port

    def __post_init__(self) -> None:
        where = "scale-out settings"
        checks = [(bool(self.models), "at least one model config is needed"),
                  (self.replicas >= 1, "replicas must be >= 1"),
                  (self.replica_cpus >= 0 and self.replica_gpus >= 0, "replica_cpus/replica_gpus must be >= 0"),
                  (self.max_ongoing_requests >= 1, "max_ongoing_requests must be >= 1"),
                  (0 <= self.metrics_port <= 65535, "metrics_port must be 0..65535"),
                  (self.backend in (None, "auto", "torch", "sglang"), "backend must be auto, torch or sglang")]
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"{where}: {message}")
        # Replicas load `lora_paths` on demand through Ray's multiplexing; none preloads them all.
        object.__setattr__(self, "models", tuple(adapters_on_demand(m) for m in self.models))

    def model(self, name: str) -> ModelConfig:
        return next(m for m in self.models if m.name == name)


SHAPE_KEYS = {f.name for f in fields(ScaleoutSpec)} - {"models", "settings"}
BUILDER_KEYS = SHAPE_KEYS | {"configs", "engine_config", "engine"}


def spec_from_builder_args(args: Mapping[str, Any]) -> ScaleoutSpec:
    """`serve run` / RayService `args`: {configs: [yaml...], engine_config?: yaml, engine?: {key: value},
    replicas?, replica_cpus?, replica_gpus?, backend?, max_ongoing_requests?, metrics_host?, metrics_port?}."""
    unknown = sorted(set(args) - BUILDER_KEYS)
    if unknown:
        raise ConfigError(f"scale-out args: unknown key(s) {', '.join(unknown)}; "
                          f"allowed: {', '.join(sorted(BUILDER_KEYS))}")
    configs = args.get("configs")
    configs = [configs] if isinstance(configs, str) else list(configs or [])
    if not configs:
        raise ConfigError("scale-out args: 'configs' must name at least one model YAML")
    settings = load_server_settings(args.get("engine_config"), overrides=dict(args.get("engine") or {}))
    casts = {"replicas": int, "replica_cpus": float, "replica_gpus": float, "max_ongoing_requests": int,
             "metrics_port": int, "metrics_host": str, "backend": str}
    shape = {key: casts[key](args[key]) for key in SHAPE_KEYS if args.get(key) is not None}
    return ScaleoutSpec(models=tuple(load_model_config(path) for path in configs), settings=settings, **shape)
