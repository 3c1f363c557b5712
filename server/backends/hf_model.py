"""Hugging Face model helpers shared by the torch backend, the start-up check and adapter training: one
padded forward and pooling, so training sees exactly the vectors the server serves."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from server.model_layout import ModelLayout

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def import_transformers() -> None:
    """Resolve transformers' lazy names once, on the calling thread. Models load in worker threads of their
    own; two first touching the lazy module at once can fail (`cannot import name 'AutoTokenizer' from
    'transformers'`), so the server resolves them before any load starts."""
    import transformers

    for name in ("AutoConfig", "AutoModel", "AutoModelForMaskedLM", "AutoTokenizer"):
        getattr(transformers, name)


def linear_targets(model: nn.Module, allowed: tuple[str, ...] | None) -> dict[str, nn.Linear]:
    """The Linear layers LoRA may wrap: every Linear (or those whose leaf name is in `allowed`)."""
    return {name: module for name, module in model.named_modules()
            if isinstance(module, nn.Linear) and (allowed is None or name.rsplit(".", 1)[-1] in allowed)}


def shapes_of(linears: dict[str, nn.Linear]) -> dict[str, tuple[int, int]]:
    return {name: (m.in_features, m.out_features) for name, m in linears.items()}


def meta_linear_shapes(model_dir: Path, allowed: tuple[str, ...] | None, *,
                       masked_lm: bool = False) -> tuple[dict[str, tuple[int, int]], int]:
    """Linear shapes and hidden size from config.json alone (no weights read); with `masked_lm`, of the
    transformer inside the *ForMaskedLM model (as `load_transformer` serves a SPLADE model)."""
    from transformers import AutoConfig, AutoModel, AutoModelForMaskedLM

    config = AutoConfig.from_pretrained(model_dir)
    with torch.device("meta"):
        model = AutoModelForMaskedLM.from_config(config).base_model if masked_lm else AutoModel.from_config(config)
    return shapes_of(linear_targets(model, allowed)), int(config.hidden_size)


def load_transformer(model_dir: Path, dtype: torch.dtype, device: str, *, masked_lm: bool = False) -> nn.Module:
    """The bare transformer, encoder or decoder (`*Model`, no LM head), in eval mode on `device`; with `masked_lm`, the
    `*ForMaskedLM` model (a SPLADE encoder: its transformer is `.base_model`, its head beside it)."""
    from transformers import AutoModel, AutoModelForMaskedLM

    loader = AutoModelForMaskedLM if masked_lm else AutoModel
    model = loader.from_pretrained(model_dir, dtype=dtype, attn_implementation="sdpa")
    return model.to(device).eval()


def pad_rows(rows: Sequence[Sequence[int]], pad_id: int,
             device: str | torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded [rows, longest] ids and the row lengths, on `device`."""
    lengths = [len(row) for row in rows]
    ids = np.full((len(rows), max(lengths)), pad_id, dtype=np.int64)
    for index, row in enumerate(rows):
        ids[index, :lengths[index]] = row
    return torch.from_numpy(ids).to(device, non_blocking=True), torch.tensor(lengths, device=device)


def pool(hidden: torch.Tensor, lengths: torch.Tensor, how: str, padded: bool = True) -> torch.Tensor:
    """`padded` False: every row fills the batch's length (a lone row), so mean pooling needs no mask."""
    if how == "last":
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), lengths - 1]
    if how == "cls":
        return hidden[:, 0]
    if not padded:
        return hidden.mean(dim=1)
    mask = (torch.arange(hidden.shape[1], device=hidden.device)[None, :] < lengths[:, None]).to(hidden.dtype)
    return (hidden * mask[..., None]).sum(dim=1) / lengths[:, None].to(hidden.dtype)


def prepared_causal_mask(model: nn.Module) -> dict | None:
    """For a decoder whose forward takes a prepared per-layer-type mask mapping and whose layers all use
    full attention (Qwen3, Qwen2, ...): `{"full_attention": None}`. Without it, transformers 5 derives
    position ids, finds them "packed" under torch.compile or graph capture and builds a full [B, 1, L, L]
    mask, so SDPA loses `is_causal` and its flash kernel (in eager mode the same check costs a host sync;
    transformers #48925). None for other models (they keep the mask-free call)."""
    import inspect

    layer_types = set(getattr(model.config, "layer_types", None) or ())
    try:
        takes_mapping = "attention_mask, dict)" in inspect.getsource(type(model).forward)
    except (OSError, TypeError):
        return None
    return {"full_attention": None} if takes_mapping and layer_types == {"full_attention"} else None


def hidden_states(model: nn.Module, input_ids: torch.Tensor, lengths: torch.Tensor, layout: ModelLayout,
                  causal_mask: dict | None = None, padded: bool = True) -> torch.Tensor:
    """The last hidden states [rows, longest, hidden] of right-padded rows. Decoders run without a mask
    (`causal_mask`, from `prepared_causal_mask`, says so explicitly where the model takes it): with causal
    attention a real token never sees the padding after it, and SDPA keeps its fast `is_causal` path.
    Encoders attend both ways, so padding is masked out (`padded` False: no row has any, so no mask)."""
    if layout.encoder and not padded:
        return model(input_ids=input_ids).last_hidden_state
    if layout.encoder:
        mask = torch.arange(input_ids.shape[1], device=input_ids.device)[None, :] < lengths[:, None]
        return model(input_ids=input_ids, attention_mask=mask.long()).last_hidden_state
    return model(input_ids=input_ids, attention_mask=causal_mask, use_cache=False).last_hidden_state


def pooled_forward(model: nn.Module, input_ids: torch.Tensor, lengths: torch.Tensor, layout: ModelLayout,
                   causal_mask: dict | None = None) -> torch.Tensor:
    """One forward (`hidden_states`) and pooling over right-padded rows."""
    return pool(hidden_states(model, input_ids, lengths, layout, causal_mask), lengths, layout.pooling)
