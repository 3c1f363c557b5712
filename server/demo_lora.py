"""A seeded random PEFT LoRA adapter for a model folder: the demos' adapters (built offline, no hub)."""

from __future__ import annotations

import warnings
from pathlib import Path


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
