"""Hugging Face model helpers shared by the torch backend and the start-up check."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def linear_targets(model: nn.Module, allowed: tuple[str, ...] | None) -> dict[str, nn.Linear]:
    """The Linear layers LoRA may wrap: every Linear (or those whose leaf name is in `allowed`)."""
    return {name: module for name, module in model.named_modules()
            if isinstance(module, nn.Linear) and (allowed is None or name.rsplit(".", 1)[-1] in allowed)}


def shapes_of(linears: dict[str, nn.Linear]) -> dict[str, tuple[int, int]]:
    return {name: (m.in_features, m.out_features) for name, m in linears.items()}


def meta_linear_shapes(model_dir: Path, allowed: tuple[str, ...] | None) -> tuple[dict[str, tuple[int, int]], int]:
    """Linear shapes and hidden size from config.json alone (no weights read)."""
    from transformers import AutoConfig, AutoModel

    config = AutoConfig.from_pretrained(model_dir)
    with torch.device("meta"):
        model = AutoModel.from_config(config)
    return shapes_of(linear_targets(model, allowed)), int(config.hidden_size)


def load_encoder(model_dir: Path, dtype: torch.dtype, device: str) -> nn.Module:
    """The bare transformer (`*Model`, no LM head) in eval mode on `device`."""
    from transformers import AutoModel

    model = AutoModel.from_pretrained(model_dir, dtype=dtype, attn_implementation="sdpa")
    return model.to(device).eval()
