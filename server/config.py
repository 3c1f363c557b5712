"""Model configs and server settings: strict YAML loading into frozen dataclasses.

Unknown keys are an error that names the file and the key. Server settings merge
defaults < engine.yaml < environment (SIE_<KEY>) < CLI flags.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

BACKENDS = ("auto", "torch", "sglang")
DTYPES = ("float32", "float16", "bfloat16")
# auto: sentence-transformers' Pooling module when the folder has one, else cls for encoders, last for decoders;
# splade: a masked-LM served as SPLADE sparse vectors.
POOLINGS = ("auto", "last", "mean", "cls", "splade")
OUTPUT_TYPES = ("dense", "sparse", "multivector")  # what an encode may ask for (`params.output_types`)
SWITCHES = ("auto", "on", "off")  # `compile` and `cuda_graphs` (torch backend): auto = on where it pays (CUDA)
LORA_KERNELS = ("auto", "fused", "triton", "torch")  # static path's LoRA: auto = fused Triton on CUDA when installed
CPU_LINEARS = ("auto", "onednn", "torch")  # eager CPU path's linears: auto = oneDNN with prepacked weights
# Keys passed through to SGLang's Engine unchanged (sglang backend only).
SGLANG_PASSTHROUGH = frozenset({
    "mem_fraction_static", "context_length", "tp_size", "dp_size", "lora_backend",
    "attention_backend", "max_total_tokens", "chunked_prefill_size", "max_running_requests",
    "disable_cuda_graph", "cuda_graph_max_bs", "schedule_policy", "enable_torch_compile",
    "skip_server_warmup", "device",
})


class ConfigError(ValueError):
    """A configuration problem; the message names the file and the key."""


def _check_keys(where: str, data: Mapping[str, Any], allowed: set[str] | frozenset[str]) -> None:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; "
                          f"allowed: {', '.join(sorted(allowed))}")


def _require(where: str, ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(f"{where}: {message}")


@dataclass(frozen=True)
class Profile:
    """A named bundle of request options (instruction and/or adapter)."""

    name: str
    instruction: str | None = None
    lora_id: str | None = None
    is_query: bool | None = None
    output_types: tuple[str, ...] | None = None  # wins over the request's params.output_types, as in SIE


@dataclass(frozen=True)
class AdapterOptions:
    """`adapter_options_loadtime`: adapters preloaded at start and the adapter pool's shape."""

    lora_paths: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    max_loras_per_batch: int = 8
    max_lora_rank: int = 64
    lora_target_modules: tuple[str, ...] | None = None
    sglang_options: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    # Scale-out sets this False: each replica loads `lora_paths` on demand (Ray multiplexing), not all at start.
    preload: bool = True

    @property
    def preloaded(self) -> Mapping[str, str]:
        """The adapters a backend makes resident at start."""
        return self.lora_paths if self.preload else MappingProxyType({})

    def __post_init__(self) -> None:
        _require("adapter_options_loadtime", self.max_loras_per_batch >= 1,
                 "max_loras_per_batch must be >= 1")
        _require("adapter_options_loadtime", self.max_lora_rank >= 1, "max_lora_rank must be >= 1")
        for name in self.lora_paths:
            _require("adapter_options_loadtime.lora_paths", valid_adapter_name(name),
                     f"adapter name {name!r} must be 1-128 characters of letters, digits, '-', '_', '.'"
                     " and must not contain ':' or '/'")


def valid_adapter_name(name: str) -> bool:
    return (isinstance(name, str) and 0 < len(name) <= 128 and ":" not in name and "/" not in name
            and name not in (".", "..") and all(c.isalnum() or c in "-_." for c in name))


@dataclass(frozen=True)
class ModelConfig:
    """One served model, as read from `model_configs/<m>.yaml`."""

    name: str
    model_path: str
    source_file: str = "<memory>"
    backend: str = "auto"  # YAML key `adapter` (SIE's name for it): auto | torch | sglang
    dtype: str = "bfloat16"
    max_seq_len: int = 8192
    pooling: str = "auto"
    normalize: bool = True
    dims: int | None = None
    min_dims: int = 32
    query_template: str = "{text}"
    default_instruction: str | None = None
    eos_token: str | None = None
    compile: str = "auto"
    cuda_graphs: str = "auto"
    cuda_graph_max_rows: int = 64  # the CUDA graph buckets: powers of two in rows and length up to these
    cuda_graph_max_tokens: int = 8192  # (past them a batch is compute-bound and launches no longer matter)
    lora_kernels: str = "auto"
    cpu_linears: str = "auto"
    lora_roots: tuple[str, ...] = ()
    lora_allow: tuple[str, ...] = ()
    adapters: AdapterOptions = field(default_factory=AdapterOptions)
    profiles: Mapping[str, Profile] = field(default_factory=lambda: MappingProxyType({}))
    # Each path resolved against the YAML's folder -> as the YAML wrote it (what clients are shown).
    written_paths: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        where = self.source_file
        _require(where, bool(self.name), "'name' is required")
        _require(where, self.backend in BACKENDS, f"'adapter' must be one of {BACKENDS}, got {self.backend!r}")
        _require(where, self.dtype in DTYPES, f"'dtype' must be one of {DTYPES}, got {self.dtype!r}")
        _require(where, self.pooling in POOLINGS, f"'pooling' must be one of {POOLINGS}, got {self.pooling!r}")
        _require(where, self.max_seq_len >= 2, "'max_seq_len' must be >= 2")
        _require(where, self.lora_kernels in LORA_KERNELS, f"'lora_kernels' must be one of {LORA_KERNELS}, "
                                                           f"got {self.lora_kernels!r}")
        _require(where, self.cpu_linears in CPU_LINEARS, f"'cpu_linears' must be one of {CPU_LINEARS}, "
                                                         f"got {self.cpu_linears!r}")
        for key in ("compile", "cuda_graphs"):
            _require(where, getattr(self, key) in SWITCHES, f"'{key}' must be one of {SWITCHES}, "
                                                            f"got {getattr(self, key)!r}")
        for key in ("cuda_graph_max_rows", "cuda_graph_max_tokens"):
            _require(where, isinstance(getattr(self, key), int) and getattr(self, key) >= 1,
                     f"'{key}' must be an integer >= 1")
        _require(where, "{text}" in self.query_template, "'query_template' must contain {text}")
        _require(where, self.dims is None or self.dims >= 1, "'dims' must be >= 1")
        _require(where, self.min_dims >= 1, "'min_dims' must be >= 1")
        _require(where, self.dims is None or self.min_dims <= self.dims,
                 f"'min_dims' ({self.min_dims}) must not exceed 'dims' ({self.dims})")
        for profile in self.profiles.values():
            if profile.lora_id is not None and not (self.lora_roots or self.lora_allow):
                _require(where, profile.lora_id in self.adapters.lora_paths,
                         f"profiles.{profile.name}.lora_id {profile.lora_id!r} is not in "
                         f"adapter_options_loadtime.lora_paths ({', '.join(self.adapters.lora_paths) or 'none'})")


def adapters_on_demand(config: ModelConfig) -> ModelConfig:
    """The same model with `lora_paths` loaded on first use instead of at start (scale-out replicas)."""
    return dataclasses.replace(config, adapters=dataclasses.replace(config.adapters, preload=False))


MODEL_KEYS = {f.name for f in dataclasses.fields(ModelConfig)} - {"source_file", "adapters", "backend",
                                                                  "written_paths"} | {
    "adapter_options_loadtime", "adapter"}
ADAPTER_KEYS = {"lora_paths", "max_loras_per_batch", "max_lora_rank", "lora_target_modules"} | SGLANG_PASSTHROUGH
PROFILE_KEYS = {"instruction", "lora_id", "lora", "is_query", "output_types"}


def _output_types(where: str, profile: Mapping[str, Any]) -> tuple[str, ...] | None:
    value = profile.get("output_types")
    if value is None:
        return None
    _require(where, isinstance(value, list) and bool(value) and all(v in OUTPUT_TYPES for v in value),
             f"output_types must be a non-empty list of {', '.join(OUTPUT_TYPES)}, got {value!r}")
    return tuple(dict.fromkeys(value))


def load_model_config(path: str | Path) -> ModelConfig:
    """Read and validate one model YAML; relative adapter and model paths resolve against its folder."""
    path = Path(path)
    where = str(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read ({exc.strerror})") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}: invalid YAML: {exc}") from exc
    return model_config_from_dict(data, where=where, base_dir=path.parent)


def _resolve_local(value: str, base_dir: Path | None, written: dict[str, str]) -> str:
    """Paths written as ./x or ../x are relative to the YAML's folder; everything else is kept. `written`
    collects resolved -> as written."""
    if base_dir is not None and (value.startswith("./") or value.startswith("../")):
        resolved = str((base_dir / value).resolve())
        written[resolved] = value
        return resolved
    return value


def model_config_from_dict(data: Mapping[str, Any], *, where: str = "<memory>",
                           base_dir: Path | None = None) -> ModelConfig:
    _check_keys(where, data, MODEL_KEYS)
    raw_adapters = data.get("adapter_options_loadtime") or {}
    _check_keys(f"{where}: adapter_options_loadtime", raw_adapters, ADAPTER_KEYS)
    raw_paths = raw_adapters.get("lora_paths") or {}
    _require(f"{where}: adapter_options_loadtime.lora_paths", isinstance(raw_paths, Mapping),
             "must map served names to adapter paths")
    targets = raw_adapters.get("lora_target_modules")
    written: dict[str, str] = {}
    try:
        adapters = AdapterOptions(
            lora_paths=MappingProxyType({str(k): _resolve_local(str(v), base_dir, written)
                                         for k, v in raw_paths.items()}),
            max_loras_per_batch=int(raw_adapters.get("max_loras_per_batch", 8)),
            max_lora_rank=int(raw_adapters.get("max_lora_rank", 64)),
            lora_target_modules=tuple(targets) if targets else None,
            sglang_options=MappingProxyType({k: v for k, v in raw_adapters.items() if k in SGLANG_PASSTHROUGH}),
        )
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    profiles = {}
    for pname, praw in (data.get("profiles") or {}).items():
        _check_keys(f"{where}: profiles.{pname}", praw or {}, PROFILE_KEYS)
        praw = praw or {}
        profiles[str(pname)] = Profile(name=str(pname), instruction=praw.get("instruction"),
                                       lora_id=praw.get("lora_id", praw.get("lora")),
                                       is_query=praw.get("is_query"),
                                       output_types=_output_types(f"{where}: profiles.{pname}", praw))
    name = data.get("name")
    _require(where, isinstance(name, str) and name != "", "'name' is required")
    kwargs = {k: data[k] for k in MODEL_KEYS - {"adapter_options_loadtime", "profiles", "name", "adapter"} if k in data}
    if "adapter" in data:
        kwargs["backend"] = data["adapter"]
    for key in ("lora_roots", "lora_allow"):
        value = kwargs.get(key) or []
        _require(where, isinstance(value, list) and all(isinstance(v, str) for v in value),
                 f"'{key}' must be a list of strings")
        kwargs[key] = tuple(_resolve_local(v, base_dir, written) if key == "lora_roots" else v for v in value)
    for key in ("compile", "cuda_graphs"):
        if isinstance(kwargs.get(key), bool):  # YAML 1.1 reads a bare on/off as a boolean
            kwargs[key] = "on" if kwargs[key] else "off"
    if "model_path" in kwargs:
        kwargs["model_path"] = _resolve_local(str(kwargs["model_path"]), base_dir, written)
    try:
        return ModelConfig(name=name, model_path=kwargs.pop("model_path", name), source_file=where,
                           adapters=adapters, profiles=MappingProxyType(profiles),
                           written_paths=MappingProxyType(written), **kwargs)
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def setting(default: Any, help_text: str):
    """A server setting's field: its default and what it is for (the command line's help)."""
    return field(default=default, metadata={"help": help_text})


@dataclass(frozen=True)
class ServerSettings:
    """Server-wide settings (engine.yaml, SIE_* environment variables, CLI flags); each says what it is for
    (`launch.py --help` shows it)."""

    max_loras_per_model: int = setting(10, "adapters resident per model at once (the backend's adapter slots)")
    max_batch_tokens: int = setting(16384, "padded tokens per forward batch")
    max_batch_wait_ms: float = setting(0.0, "how long a batch waits for more rows once the backend is free")
    max_batch_padding: float = setting(0.1, "largest share of a batch's tokens that may be padding (1: no limit); "
                                            "a row waits for another batch rather than push it past that")
    max_queue_items: int = setting(8192, "rows waiting for a batch past which requests get 503 QUEUE_FULL")
    max_queue_tokens: int = setting(1048576, "tokens waiting for a batch past which requests get 503 QUEUE_FULL")
    max_items_per_request: int = setting(2048, "items one request may carry")
    max_body_bytes: int = setting(16 * 1024 * 1024, "largest request body (413 past it)")
    max_response_bytes: int = setting(256 * 1024 * 1024, "largest answer to one request, as float32 (a multivector "
                                                         "is tokens x dim floats per item), counted before it is "
                                                         "queued; 400 past it")
    max_pending_response_bytes: int = setting(2 * 1024 * 1024 * 1024, "answers accepted and not yet sent, past "
                                                                      "which requests get 503 QUEUE_FULL")
    api_keys: tuple[str, ...] = setting((), "comma-separated keys; every route but auth_exempt_paths then needs "
                                            "Authorization: Bearer")
    api_key_file: str = setting("", "a YAML file of keys, each with its tenant, the models and shared adapters it "
                                    "may use and whether it may manage adapters (README: Tenants); read again "
                                    "when it changes or on SIGHUP")
    auth_exempt_paths: tuple[str, ...] = setting(("/healthz", "/readyz", "/metrics"),
                                                 "comma-separated paths open without a key")
    device: str = setting("auto", "auto, cpu, cuda or cuda:N")
    lora_roots: tuple[str, ...] = setting((), "comma-separated folders whose subfolders may be loaded on first use "
                                              "(every model)")
    lora_allow: tuple[str, ...] = setting((), "comma-separated hub id globs that may be loaded on first use (every "
                                              "model)")
    adapter_host_bytes: int = setting(2 * 1024 ** 3, "host memory (bytes, per model) that keeps evicted adapters' "
                                                     "weights, so loading one again is a copy (0: off; README: "
                                                     "the host tier)")
    lora_failure_ttl_s: float = setting(300.0, "seconds a failed adapter load is remembered")
    allow_noop_adapters: bool = setting(False, "serve adapters that change no vector (a zero LoRA B, say)")
    compile_cache_artifacts: str = setting("", "a file launch.py warm wrote (same torch, Triton and GPU): its "
                                               "compiled kernels are loaded before the forward compiles")
    shutdown_grace_s: float = setting(30.0, "seconds in-flight requests get to finish on SIGTERM")

    def __post_init__(self) -> None:
        where = "server settings"
        _require(where, self.max_loras_per_model >= 1, "max_loras_per_model must be >= 1")
        _require(where, self.max_batch_tokens >= 1, "max_batch_tokens must be >= 1")
        _require(where, self.max_batch_wait_ms >= 0, "max_batch_wait_ms must be >= 0")
        _require(where, 0 <= self.max_batch_padding <= 1, "max_batch_padding must be within 0..1")
        _require(where, self.max_queue_items >= 1, "max_queue_items must be >= 1")
        _require(where, self.max_queue_tokens >= 1, "max_queue_tokens must be >= 1")
        _require(where, self.shutdown_grace_s >= 0, "shutdown_grace_s must be >= 0")
        _require(where, self.max_items_per_request >= 1, "max_items_per_request must be >= 1")
        _require(where, self.max_body_bytes >= 1024, "max_body_bytes must be >= 1024")
        _require(where, self.max_response_bytes >= 1024, "max_response_bytes must be >= 1024")
        _require(where, self.max_pending_response_bytes >= self.max_response_bytes,
                 "max_pending_response_bytes must be at least max_response_bytes")
        _require(where, self.max_items_per_request <= self.max_queue_items,
                 "max_items_per_request must not exceed max_queue_items")
        _require(where, self.lora_failure_ttl_s >= 0, "lora_failure_ttl_s must be >= 0")
        _require(where, self.adapter_host_bytes >= 0, "adapter_host_bytes must be >= 0")
        _require(where, self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"),
                 f"device must be auto, cpu or cuda[:N], got {self.device!r}")


SETTINGS_FIELDS = {f.name: f for f in dataclasses.fields(ServerSettings)}  # each with its help in `metadata`





def _boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(value)


def _coerce(key: str, value: Any, where: str) -> Any:
    kind = SETTINGS_FIELDS[key].type
    try:
        if kind == "int":
            return int(value)
        if kind == "float":
            return float(value)
        if kind == "bool":
            return _boolean(value)
        if kind == "tuple[str, ...]":
            items = value.split(",") if isinstance(value, str) else list(value)
            return tuple(s.strip() for s in items if str(s).strip())
        return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: {key} has an invalid value {value!r}") from None


def load_server_settings(path: str | Path | None = None, *, env: Mapping[str, str] | None = None,
                         overrides: Mapping[str, Any] | None = None) -> ServerSettings:
    """Merge defaults < engine.yaml < SIE_<KEY> environment < explicit overrides (CLI)."""
    values: dict[str, Any] = {}
    if path is not None:
        where = str(path)
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except OSError as exc:
            raise ConfigError(f"{where}: cannot read ({exc.strerror})") from exc
        _check_keys(where, data, set(SETTINGS_FIELDS))
        values.update({k: _coerce(k, v, where) for k, v in data.items()})
    env = os.environ if env is None else env
    for key in SETTINGS_FIELDS:
        env_name = f"SIE_{key.upper()}"
        if env_name in env:
            values[key] = _coerce(key, env[env_name], f"environment {env_name}")
    for key, value in (overrides or {}).items():
        if value is not None:
            values[key] = _coerce(key, value, f"--{key.replace('_', '-')}")
    return ServerSettings(**values)
