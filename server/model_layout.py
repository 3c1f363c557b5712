"""What a model folder says about how to embed with it: encoder or decoder, pooling, position limit, and
the outputs it gives (FlagEmbedding's bge-m3 heads beside the weights: dense, sparse and multivector; a
SPLADE masked-LM: sparse only). Read from config.json, the head files and sentence-transformers' modules,
so a sentence-transformers folder is served the way `SentenceTransformer.encode` runs it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from server.config import ConfigError, ModelConfig

# Bidirectional attention: every row needs a padding mask, and there is no pooling EOS to append.
ENCODER_TYPES = frozenset({"bert", "roberta", "xlm-roberta", "camembert", "mpnet", "distilbert", "electra",
                           "deberta", "deberta-v2", "modernbert", "nomic_bert"})
# Position ids that start past the padding index (RoBERTa family), so fewer positions are usable.
PADDING_OFFSET_TYPES = frozenset({"roberta", "xlm-roberta", "camembert"})
ST_POOLING_MODES = {"pooling_mode_cls_token": "cls", "pooling_mode_mean_tokens": "mean",
                    "pooling_mode_lasttoken": "last"}
ST_SUPPORTED_MODULES = ("Transformer", "Pooling", "Normalize", "MLMTransformer", "SpladePooling")
M3_HEAD_FILES = ("colbert_linear.pt", "sparse_linear.pt")  # FlagEmbedding's bge-m3: multivector, sparse
SPLADE_POOLINGS = ("max", "sum")
SPLADE_ACTIVATIONS = ("relu", "log1p_relu")


@dataclass(frozen=True)
class SpladeHead:
    """A SPLADE model's pooling over its masked-LM logits (sentence-transformers' `SpladePooling`)."""

    pooling: str = "max"  # max | sum over the unmasked tokens
    activation: str = "relu"  # log1p(relu(x)), or log1p(log1p(relu(x))) for opensearch's models


@dataclass(frozen=True)
class ModelLayout:
    encoder: bool
    pooling: str  # last | mean | cls: what the served vectors pool
    max_positions: int | None  # the most tokens one row may have, from config.json
    pad_token_id: int = 0
    m3_heads: bool = False  # FlagEmbedding's colbert_linear.pt and sparse_linear.pt: three outputs
    splade: SpladeHead | None = None  # a masked-LM served as SPLADE: sparse only

    @property
    def outputs(self) -> tuple[str, ...]:
        if self.splade is not None:
            return ("sparse",)
        return ("dense", "sparse", "multivector") if self.m3_heads else ("dense",)


def _read_json(path: Path, where: str) -> dict | list:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{where}: cannot read {path.name} ({exc})") from None


def _st_modules(folder: Path, where: str) -> dict[str, Path]:
    """sentence-transformers' modules of the folder: kind -> its folder ({} when the folder is not one)."""
    modules_file = folder / "modules.json"
    if not modules_file.is_file():
        return {}
    found = {}
    for module in _read_json(modules_file, where):
        kind = str(module.get("type", "")).rsplit(".", 1)[-1]
        if kind not in ST_SUPPORTED_MODULES:
            raise ConfigError(f"{where}: sentence-transformers module {kind!r} ({module.get('path')}) is not "
                              f"supported; only {', '.join(ST_SUPPORTED_MODULES)} are")
        found[kind] = folder / module.get("path", "")
    return found


def sentence_transformers_pooling(modules: dict[str, Path], where: str) -> str | None:
    """The pooling a sentence-transformers folder's `modules` (`_st_modules`) declare, or None."""
    pooling = modules.get("Pooling")
    pooling_path = pooling / "config.json" if pooling is not None else None
    if pooling_path is None or not pooling_path.is_file():
        return None
    settings = _read_json(pooling_path, where)
    chosen = [mode for key, mode in ST_POOLING_MODES.items() if settings.get(key)]
    others = [key for key, value in settings.items()
              if key.startswith("pooling_mode_") and value and key not in ST_POOLING_MODES]
    if others or len(chosen) != 1:
        raise ConfigError(f"{where}: {pooling_path.parent.name} asks for pooling "
                          f"{', '.join(others + chosen) or 'none'}; one of cls, mean or last token is supported")
    return chosen[0]


def splade_head(modules: dict[str, Path], config: ModelConfig) -> SpladeHead | None:
    """The SPLADE pooling a sentence-transformers SparseEncoder folder's `modules` declare (or `pooling: splade`)."""
    where = config.source_file
    module = modules.get("SpladePooling")
    if module is None:
        return SpladeHead() if config.pooling == "splade" else None
    settings = _read_json(module / "config.json", where) if (module / "config.json").is_file() else {}
    head = SpladeHead(pooling=settings.get("pooling_strategy", "max"),
                      activation=settings.get("activation_function", "relu"))
    if head.pooling not in SPLADE_POOLINGS or head.activation not in SPLADE_ACTIVATIONS:
        raise ConfigError(f"{where}: SpladePooling asks for {head.pooling} pooling of {head.activation}; supported: "
                          f"{'/'.join(SPLADE_POOLINGS)} of {'/'.join(SPLADE_ACTIVATIONS)}")
    return head


def has_m3_heads(folder: Path, where: str) -> bool:
    """Both of FlagEmbedding's head files, or neither; one alone is an error (FlagEmbedding would make the
    other up at random and serve it silently)."""
    present = [name for name in M3_HEAD_FILES if (folder / name).is_file()]
    if len(present) == 1:
        missing = next(name for name in M3_HEAD_FILES if name not in present)
        raise ConfigError(f"{where}: the model folder has {present[0]} but not {missing}; bge-m3's sparse and "
                          "multivector heads come as a pair: add the missing file, or remove both to serve dense only")
    return bool(present)


def read_layout(folder: Path, config: ModelConfig) -> ModelLayout:
    """The layout of the model in `folder` under `config` (its explicit `pooling` wins over the folder's)."""
    where = config.source_file
    hf_config = _read_json(folder / "config.json", where) if (folder / "config.json").is_file() else {}
    model_type = str(hf_config.get("model_type", ""))
    encoder = model_type in ENCODER_TYPES and not hf_config.get("is_decoder", False)
    modules = _st_modules(folder, where)
    splade = splade_head(modules, config)
    pooling = config.pooling
    if splade is not None:
        pooling = "cls"  # unused: a SPLADE model gives no dense vector
    elif pooling == "auto":
        pooling = sentence_transformers_pooling(modules, where) or ("cls" if encoder else "last")
    positions = hf_config.get("max_position_embeddings")
    pad = hf_config.get("pad_token_id")
    if positions is not None and model_type in PADDING_OFFSET_TYPES:
        positions -= (pad or 0) + 1
    m3_heads = splade is None and has_m3_heads(folder, where)
    if (m3_heads or splade is not None) and not encoder:
        raise ConfigError(f"{where}: sparse and multivector outputs are served for encoders only, not {model_type!r}")
    layout = ModelLayout(encoder=encoder, pooling=pooling, max_positions=positions,
                         pad_token_id=int(pad) if isinstance(pad, int) else 0, m3_heads=m3_heads, splade=splade)
    if encoder and positions is not None and config.max_seq_len > positions:
        raise ConfigError(f"{where}: max_seq_len {config.max_seq_len} exceeds the {positions} positions of this "
                          f"{model_type} encoder; set max_seq_len to at most {positions}")
    return layout
