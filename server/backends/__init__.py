"""Backend registry: implementations are imported lazily, so sglang loads only when chosen."""

from __future__ import annotations

import importlib.util

from server.backends.base import Backend
from server.config import ConfigError, ModelConfig, ServerSettings
from server.model_layout import ModelLayout, read_layout
from server.sources import is_remote, resolve_source

_IMPLEMENTATIONS = {
    "torch": ("server.backends.torch_backend", "TorchBackend"),
    "sglang": ("server.backends.sglang_backend", "SGLangBackend"),
    "dry-run": ("server.backends.dry_run", "DryRunBackend"),  # launch.py check; never chosen by a config
}


def pick_device(requested: str) -> str:
    if requested != "auto":
        return requested
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_backend_kind(requested: str, device: str, config: ModelConfig | None = None) -> str:
    """`auto` means sglang when it is installed, a GPU is in use and the model is not known to be an
    encoder (a local folder is looked at; a hub id is not fetched for this), else the torch backend."""
    if requested != "auto":
        return requested
    if device.startswith("cuda") and importlib.util.find_spec("sglang") is not None:
        if config is not None and not is_remote(config.model_path):
            layout = read_layout(resolve_source(config.model_path, kind="model"), config)
            if not fits_sglang(layout):
                return "torch"
        return "sglang"
    return "torch"


def fits_sglang(layout: ModelLayout) -> bool:
    return not layout.encoder and layout.pooling == "last"


def check_fits(kind: str, layout: ModelLayout, config: ModelConfig) -> None:
    """Refuse what a backend would serve wrongly: SGLang embeds decoders by their last token only."""
    if kind == "sglang" and not fits_sglang(layout):
        what = "an encoder (bidirectional attention)" if layout.encoder else f"{layout.pooling} pooling"
        raise ConfigError(f"{config.source_file}: the sglang backend serves decoder embedders with last-token "
                          f"pooling only, and {config.model_path} needs {what}; use `adapter: torch`")


def create_backend(kind: str, model: ModelConfig, settings: ServerSettings, device: str) -> Backend:
    if kind not in _IMPLEMENTATIONS:
        raise ValueError(f"unknown backend {kind!r}; choose one of {', '.join(_IMPLEMENTATIONS)}")
    module_name, class_name = _IMPLEMENTATIONS[kind]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise RuntimeError(f"backend {kind!r} is not available here: {exc}") from None
    return getattr(module, class_name)(model, settings, device)
