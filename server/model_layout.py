"""What a model folder says about how to embed with it: encoder or decoder, pooling, position limit.

Read from config.json and, when present, sentence-transformers' `modules.json` / `1_Pooling/config.json`,
so a sentence-transformers folder is served the way `SentenceTransformer.encode` runs it.
"""

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
ST_SUPPORTED_MODULES = ("Transformer", "Pooling", "Normalize")


@dataclass(frozen=True)
class ModelLayout:
    encoder: bool
    pooling: str  # last | mean | cls: what the served vectors pool
    max_positions: int | None  # the most tokens one row may have, from config.json
    pad_token_id: int = 0


def _read_json(path: Path, where: str) -> dict | list:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{where}: cannot read {path.name} ({exc})") from None


def sentence_transformers_pooling(folder: Path, where: str) -> str | None:
    """The pooling a sentence-transformers folder declares, or None when the folder is not one."""
    modules_file = folder / "modules.json"
    if not modules_file.is_file():
        return None
    modules = _read_json(modules_file, where)
    pooling_path = None
    for module in modules:
        kind = str(module.get("type", "")).rsplit(".", 1)[-1]
        if kind not in ST_SUPPORTED_MODULES:
            raise ConfigError(f"{where}: sentence-transformers module {kind!r} ({module.get('path')}) is not "
                              f"supported; only {', '.join(ST_SUPPORTED_MODULES)} are")
        if kind == "Pooling":
            pooling_path = folder / module.get("path", "1_Pooling") / "config.json"
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


def read_layout(folder: Path, config: ModelConfig) -> ModelLayout:
    """The layout of the model in `folder` under `config` (its explicit `pooling` wins over the folder's)."""
    where = config.source_file
    hf_config = _read_json(folder / "config.json", where) if (folder / "config.json").is_file() else {}
    model_type = str(hf_config.get("model_type", ""))
    encoder = model_type in ENCODER_TYPES and not hf_config.get("is_decoder", False)
    pooling = config.pooling
    if pooling == "auto":
        pooling = sentence_transformers_pooling(folder, where) or ("cls" if encoder else "last")
    positions = hf_config.get("max_position_embeddings")
    pad = hf_config.get("pad_token_id")
    if positions is not None and model_type in PADDING_OFFSET_TYPES:
        positions -= (pad or 0) + 1
    layout = ModelLayout(encoder=encoder, pooling=pooling, max_positions=positions,
                         pad_token_id=int(pad) if isinstance(pad, int) else 0)
    if encoder and positions is not None and config.max_seq_len > positions:
        raise ConfigError(f"{where}: max_seq_len {config.max_seq_len} exceeds the {positions} positions of this "
                          f"{model_type} encoder; set max_seq_len to at most {positions}")
    return layout
