"""Sparse and multivector outputs from the encoder's last hidden states: bge-m3's heads (FlagEmbedding's
`sparse_linear.pt` and `colbert_linear.pt`) and a SPLADE masked-LM head. Adapters never touch the heads:
every row shares them, and each row's outputs come from the one forward its batch ran."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from server.backends.base import RowOutputs, SparseVector
from server.backends.hf_model import pool
from server.config import ConfigError
from server.model_layout import ModelLayout, SpladeHead

# Masked-LM logits computed at once (rows x tokens x vocabulary): a SPLADE batch of 16k tokens over a 30k
# vocabulary would be 2 GB of logits; in chunks of this size it is 256 MB, whatever the batch.
SPLADE_CHUNK_ELEMENTS = 1 << 26
M3_DROPPED_TOKENS = ("cls", "eos", "pad", "unk")  # as FlagEmbedding's lexical weights drop them


@dataclass(frozen=True)
class OutputHeads:
    """What a model computes past its hidden states, beyond the pooled dense vector."""

    colbert: nn.Linear | None = None  # bge-m3: multivector
    sparse: nn.Linear | None = None  # bge-m3: one weight per token
    mlm: nn.Module | None = None  # SPLADE: the masked-LM head (logits over the vocabulary)
    splade: SpladeHead | None = None
    dropped_ids: frozenset[int] = frozenset()  # token ids bge-m3's sparse output never holds
    vocab_size: int = 0
    sizes: Mapping[str, int] = field(default_factory=dict)  # `output_sizes` of the model ({}: dense only)


def output_sizes(layout: ModelLayout, hidden: int, vocab: int, token_dims: int = 0) -> dict[str, int]:
    """Output type -> size, as `/v1/models` reports `dims`; {} for a dense-only model (dense at `hidden`)."""
    if layout.splade is not None:
        return {"sparse": vocab}
    if not layout.m3_heads:
        return {}
    return {"dense": hidden, "sparse": vocab, "multivector": token_dims}


def _head_linear(path: Path, where: str, hidden: int, outputs: int | None) -> nn.Linear:
    """An nn.Linear from a FlagEmbedding head file (a state dict of `weight` [out, hidden] and `bias`)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the operator's to fix
        raise ConfigError(f"{where}: cannot read {path.name} ({type(exc).__name__}: {exc})") from None
    weight = state.get("weight") if isinstance(state, dict) else None
    bias = state.get("bias") if isinstance(state, dict) else None
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2 or weight.shape[1] != hidden \
            or (outputs is not None and weight.shape[0] != outputs) \
            or (bias is not None and tuple(bias.shape) != (weight.shape[0],)):
        raise ConfigError(f"{where}: {path.name} must hold a state dict with 'weight' [{outputs or 'n'}, {hidden}] "
                          "and optionally 'bias', as FlagEmbedding saves it")
    linear = nn.Linear(hidden, weight.shape[0], bias=bias is not None)
    with torch.no_grad():
        linear.weight.copy_(weight)
        if bias is not None:
            linear.bias.copy_(bias)
    return linear


def masked_lm_head(model: nn.Module) -> nn.Module:
    """The module that turns a `*ForMaskedLM` model's hidden states into vocabulary logits."""
    if model.config.model_type == "distilbert":
        return nn.Sequential(model.vocab_transform, model.activation, model.vocab_layer_norm, model.vocab_projector)
    heads = [module for name, module in model.named_children()
             if name != model.base_model_prefix and any(True for _ in module.parameters())]
    if len(heads) != 1:
        raise ConfigError(f"SPLADE over {model.config.model_type!r} is not supported: its masked-LM head is not one "
                          "module (BERT's `cls`, RoBERTa's `lm_head` and DistilBERT's are)")
    return heads[0]


def _special_ids(folder: Path) -> frozenset[int]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    found = (getattr(tokenizer, f"{name}_token_id", None) for name in M3_DROPPED_TOKENS)
    return frozenset(int(i) for i in found if isinstance(i, int))


def _m3_linears(folder: Path, where: str, hidden: int) -> tuple[nn.Linear, nn.Linear]:
    """bge-m3's (colbert, sparse) heads, read and checked."""
    return (_head_linear(folder / "colbert_linear.pt", where, hidden, None),
            _head_linear(folder / "sparse_linear.pt", where, hidden, 1))


def load_heads(folder: Path, layout: ModelLayout, model: nn.Module, *, where: str, dtype: torch.dtype,
               device: str) -> OutputHeads:
    """The heads `layout` says the folder has; `model` is the loaded transformer (the `*ForMaskedLM` for SPLADE)."""
    vocab, hidden = int(model.config.vocab_size), int(model.config.hidden_size)
    if layout.splade is not None:
        return OutputHeads(mlm=masked_lm_head(model), splade=layout.splade, vocab_size=vocab,
                           sizes=output_sizes(layout, hidden, vocab))
    if not layout.m3_heads:
        return OutputHeads()
    colbert, sparse = _m3_linears(folder, where, hidden)
    return OutputHeads(colbert=colbert.to(device, dtype).eval(), sparse=sparse.to(device, dtype).eval(),
                       dropped_ids=_special_ids(folder), vocab_size=vocab,
                       sizes=output_sizes(layout, hidden, vocab, colbert.out_features))


def declared_sizes(folder: Path, layout: ModelLayout, hidden: int, *, where: str) -> dict[str, int]:
    """What `load_heads` will say, from config.json and the head files alone (no model built), the head
    files checked as a load checks them."""
    import json

    vocab = int(json.loads((folder / "config.json").read_text()).get("vocab_size", 0))
    token_dims = _m3_linears(folder, where, hidden)[0].out_features if layout.m3_heads else 0
    return output_sizes(layout, hidden, vocab, token_dims)


def max_by_token(token_ids: np.ndarray, weights: np.ndarray, dropped: frozenset[int]) -> SparseVector:
    """The largest positive weight of each distinct token id, dropped ids left out; ids ascending."""
    keep = (weights > 0) & ~np.isin(token_ids, list(dropped))
    ids, inverse = np.unique(token_ids[keep], return_inverse=True)
    values = np.zeros(len(ids), dtype=np.float32)
    np.maximum.at(values, inverse, weights[keep].astype(np.float32))
    return SparseVector(ids.astype(np.int32), values)


def _nonzero(pooled: np.ndarray) -> SparseVector:
    indices = np.flatnonzero(pooled > 0)
    return SparseVector(indices.astype(np.int32), pooled[indices].astype(np.float32))


def _activated(logits: torch.Tensor, activation: str) -> torch.Tensor:
    scores = torch.log1p(torch.relu(logits))
    return torch.log1p(scores) if activation == "log1p_relu" else scores


def splade_pooled(heads: OutputHeads, hidden: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """[rows, vocab] SPLADE weights: log(1 + relu(logits)) (twice log1p for `log1p_relu`), max- or sum-pooled
    over each row's tokens, with the logits made a chunk of rows and tokens at a time. The activation only
    grows with the logit, so max pooling takes the largest logit and activates that alone."""
    rows, longest = hidden.shape[:2]
    tokens = max(1, min(longest, SPLADE_CHUNK_ELEMENTS // heads.vocab_size))
    per_chunk = max(1, SPLADE_CHUNK_ELEMENTS // (tokens * heads.vocab_size))
    positions = torch.arange(longest, device=hidden.device)
    use_max = heads.splade.pooling == "max"
    pooled = torch.full((rows, heads.vocab_size), -torch.inf if use_max else 0.0, device=hidden.device)
    for first in range(0, rows, per_chunk):
        part = slice(first, first + per_chunk)
        for start in range(0, longest, tokens):
            logits = heads.mlm(hidden[part, start:start + tokens]).float()
            mask = (positions[None, start:start + tokens] < lengths[part, None])[..., None]
            if use_max:
                pooled[part] = torch.maximum(pooled[part], logits.masked_fill(~mask, -torch.inf).amax(dim=1))
            else:
                pooled[part] += (_activated(logits, heads.splade.activation) * mask).sum(dim=1)
    return _activated(pooled, heads.splade.activation) if use_max else pooled


def row_outputs(heads: OutputHeads, layout: ModelLayout, hidden: torch.Tensor, lengths: torch.Tensor,
                input_ids: torch.Tensor, wanted: Sequence[frozenset[str]]) -> list[RowOutputs]:
    """Each row's requested outputs from the batch's hidden states [rows, longest, hidden]."""
    count, lens = hidden.shape[0], lengths.tolist()

    def rows_wanting(kind: str) -> list[int]:
        return [i for i in range(count) if kind in wanted[i]]

    found: dict[str, dict[int, object]] = {"dense": {}, "sparse": {}, "multivector": {}}
    if rows := rows_wanting("dense"):
        pooled = pool(hidden, lengths, layout.pooling).float().cpu().numpy()
        found["dense"] = {i: pooled[i] for i in rows}
    if rows := rows_wanting("multivector"):
        picked = torch.tensor(rows, device=hidden.device)
        vectors = heads.colbert(hidden[picked, 1:]).float().cpu().numpy()
        found["multivector"] = {i: vectors[k, :lens[i] - 1] for k, i in enumerate(rows)}
    if rows := rows_wanting("sparse"):
        picked = torch.tensor(rows, device=hidden.device)
        if heads.mlm is not None:
            pooled = splade_pooled(heads, hidden[picked], lengths[picked]).cpu().numpy()
            found["sparse"] = {i: _nonzero(pooled[k]) for k, i in enumerate(rows)}
        else:
            weights = torch.relu(heads.sparse(hidden[picked])).squeeze(-1).float().cpu().numpy()
            ids = input_ids[picked].cpu().numpy()
            found["sparse"] = {i: max_by_token(ids[k, :lens[i]], weights[k, :lens[i]], heads.dropped_ids)
                               for k, i in enumerate(rows)}
    return [RowOutputs(dense=found["dense"].get(i), sparse=found["sparse"].get(i),
                       multivector=found["multivector"].get(i)) for i in range(count)]
