"""Backend registry: implementations are imported lazily, so sglang loads only when chosen."""

from __future__ import annotations

import importlib.util

from server.backends.base import Backend
from server.config import ModelConfig, ServerSettings

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


def resolve_backend_kind(requested: str, device: str) -> str:
    """`auto` means sglang when it is installed and a GPU is in use, else the built-in torch backend."""
    if requested != "auto":
        return requested
    if device.startswith("cuda") and importlib.util.find_spec("sglang") is not None:
        return "sglang"
    return "torch"


def create_backend(kind: str, model: ModelConfig, settings: ServerSettings, device: str) -> Backend:
    if kind not in _IMPLEMENTATIONS:
        raise ValueError(f"unknown backend {kind!r}; choose one of {', '.join(_IMPLEMENTATIONS)}")
    module_name, class_name = _IMPLEMENTATIONS[kind]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise RuntimeError(f"backend {kind!r} is not available here: {exc}") from None
    return getattr(module, class_name)(model, settings, device)
