"""Offline multi-output models for tests: the bge-m3-shaped `m3-tiny` (the demo's own builder) with PEFT
adapters, a tiny SPLADE (BertForMaskedLM laid out as a sentence-transformers SparseEncoder folder), and
plain reference implementations of their outputs (FlagEmbedding's and SpladePooling's formulas, one text
at a time, with PEFT applying the adapter)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from tests.encoder_assets import save_wordpiece_tokenizer

SPLADE_SHAPE = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
SPLADE_MODULES = [
    {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.sparse_encoder.models.MLMTransformer"},
    {"idx": 1, "name": "1", "path": "1_SpladePooling",
     "type": "sentence_transformers.sparse_encoder.models.SpladePooling"},
]


def build_m3(folder: Path) -> Path:
    from server.demo_m3 import build_m3_model

    folder.mkdir(parents=True, exist_ok=True)
    build_m3_model(folder)
    return folder


def m3_with_adapters(root: Path, max_seq_len: int):
    """m3-tiny under `root` with two PEFT adapters (q/k/v, and q/v + the dense linears) and a config that
    preloads them: (folder, {adapter: folder}, ModelConfig)."""
    from types import MappingProxyType

    from server.config import AdapterOptions, ModelConfig

    folder = build_m3(root / "model")
    adapters = {"qkv": build_lora(folder, root / "qkv", ["query", "key", "value"], seed=5),
                "qv-dense": build_lora(folder, root / "qv-dense", ["query", "value", "dense"], seed=6)}
    config = ModelConfig(name="test/m3-tiny", model_path=str(folder), backend="torch", dtype="float32",
                         max_seq_len=max_seq_len, min_dims=8, adapters=AdapterOptions(
                             lora_paths=MappingProxyType({k: str(v) for k, v in adapters.items()})))
    return folder, adapters, config


def build_splade(folder: Path, *, pooling: str = "max", activation: str = "relu", seed: int = 0) -> Path:
    from transformers import BertConfig, BertForMaskedLM

    folder.mkdir(parents=True, exist_ok=True)
    vocab = save_wordpiece_tokenizer(folder)
    torch.manual_seed(seed)
    model = BertForMaskedLM(BertConfig(vocab_size=vocab, max_position_embeddings=64, pad_token_id=0,
                                       initializer_range=0.2, **SPLADE_SHAPE))
    model.eval().save_pretrained(folder, safe_serialization=True)
    (folder / "modules.json").write_text(json.dumps(SPLADE_MODULES))
    (folder / "1_SpladePooling").mkdir()
    (folder / "1_SpladePooling" / "config.json").write_text(json.dumps(
        {"pooling_strategy": pooling, "activation_function": activation, "embedding_dimension": vocab}))
    return folder


def build_lora(model_dir: Path, folder: Path, targets: list[str], seed: int, *, masked_lm: bool = False) -> Path:
    """A PEFT adapter trained on nothing (random A and B), on the bare model or on its *ForMaskedLM."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModel, AutoModelForMaskedLM

    base = (AutoModelForMaskedLM if masked_lm else AutoModel).from_pretrained(model_dir, dtype=torch.float32)
    torch.manual_seed(seed)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=targets, lora_dropout=0.0, init_lora_weights=False)
    get_peft_model(base, config).save_pretrained(folder, safe_serialization=True)
    return folder


def merged(model_dir: Path, adapter: Path | None, *, masked_lm: bool = False, bare_adapter: bool = False):
    """The base model with `adapter` merged in by PEFT (or the base alone), in eval mode. `bare_adapter`: an
    adapter trained on the bare transformer, merged there and copied into the *ForMaskedLM."""
    from peft import PeftModel
    from transformers import AutoModel, AutoModelForMaskedLM

    model = (AutoModelForMaskedLM if masked_lm else AutoModel).from_pretrained(model_dir, dtype=torch.float32)
    if adapter is not None and masked_lm and bare_adapter:
        bare = PeftModel.from_pretrained(AutoModel.from_pretrained(model_dir, dtype=torch.float32), adapter)
        missing, _ = model.base_model.load_state_dict(bare.merge_and_unload().state_dict(), strict=False)
        assert not missing
    elif adapter is not None:
        model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    return model.eval()


def m3_reference(model_dir: Path, model, text: str, max_length: int) -> dict:
    """FlagEmbedding's three outputs of one text (its formulas in `BGEM3FlagModel`), normalised."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    heads = {name: torch.load(model_dir / f"{name}.pt", weights_only=True)
             for name in ("colbert_linear", "sparse_linear")}
    encoded = tokenizer([text], truncation=True, max_length=max_length, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**encoded).last_hidden_state[0]
        weights = torch.relu(hidden @ heads["sparse_linear"]["weight"].T + heads["sparse_linear"]["bias"])[:, 0]
        colbert = hidden[1:] @ heads["colbert_linear"]["weight"].T + heads["colbert_linear"]["bias"]
    dropped = {tokenizer.cls_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer.unk_token_id}
    lexical: dict[int, float] = {}
    for token, weight in zip(encoded["input_ids"][0].tolist(), weights.tolist()):
        if token not in dropped and weight > 0 and weight > lexical.get(token, 0.0):
            lexical[token] = weight
    return {"dense": torch.nn.functional.normalize(hidden[0], dim=-1).numpy(), "sparse": lexical,
            "multivector": torch.nn.functional.normalize(colbert, dim=-1).numpy()}


def splade_reference(model_dir: Path, model, text: str, *, max_length: int, pooling: str = "max",
                     activation: str = "relu") -> dict:
    """SpladePooling's weights of one text: log1p(relu(logits)) (twice log1p for log1p_relu), pooled."""
    from transformers import AutoTokenizer

    encoded = AutoTokenizer.from_pretrained(model_dir)([text], truncation=True, max_length=max_length,
                                                       return_tensors="pt")
    with torch.no_grad():
        scores = torch.log1p(torch.relu(model(**encoded).logits[0]))
    if activation == "log1p_relu":
        scores = torch.log1p(scores)
    pooled = (scores.max(dim=0).values if pooling == "max" else scores.sum(dim=0)).numpy()
    return {int(i): float(pooled[i]) for i in np.flatnonzero(pooled > 0)}


def as_dict(sparse) -> dict[int, float]:
    return {int(i): float(v) for i, v in zip(sparse.indices, sparse.values)}


def sparse_diff(ours: dict[int, float], reference: dict[int, float]) -> float:
    """The largest difference, relative for weights above 1: SPLADE's sum pooling adds up to ~40 per id, where
    one float32 step is 4e-6, so an absolute 1e-5 would judge the order of the additions."""
    assert set(ours) == set(reference), (sorted(set(ours) ^ set(reference)))
    return max((abs(ours[i] - reference[i]) / max(1.0, abs(reference[i])) for i in ours), default=0.0)
