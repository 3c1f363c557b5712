"""Tiny random-weight encoders built offline for tests: a BERT laid out as a sentence-transformers folder
(mean pooling from `1_Pooling`) and a bge-m3-style XLM-R (CLS pooling), with a WordPiece tokenizer
trained here and PEFT adapters on their attention and dense linears."""

from __future__ import annotations

import json
from pathlib import Path

CORPUS = [
    "the building permit is granted by the municipality after a review of the drawings",
    "a contract for construction work names the parties the price and the time of completion",
    "aspirin reduces the risk of heart attack in patients with high blood pressure",
    "quarterly revenue grew by twelve percent while costs stayed flat",
    "the court held that the statute of limitations had expired before the claim was filed",
    "hello world, how are you today? fine thanks, and you?",
    "energy declarations, moisture damage, radon and asbestos surveys for older houses",
] * 4
SHAPE = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
ST_MODULES = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
              {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
              {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]


def save_wordpiece_tokenizer(folder: Path) -> int:
    """A lower-casing WordPiece tokenizer ([CLS] text [SEP]) trained on CORPUS; returns its vocab size."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.train_from_iterator(CORPUS, trainers.WordPieceTrainer(vocab_size=300, special_tokens=specials))
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    wrapped = BertTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]", sep_token="[SEP]",
                                pad_token="[PAD]", cls_token="[CLS]", mask_token="[MASK]")
    wrapped.save_pretrained(folder)
    return tokenizer.get_vocab_size()


def build_encoder(folder: Path, kind: str, seed: int = 0) -> Path:
    """kind 'bert' (a sentence-transformers folder, mean pooling) or 'xlm-roberta' (bge-m3 style)."""
    import torch
    from transformers import BertConfig, BertModel, XLMRobertaConfig, XLMRobertaModel

    folder.mkdir(parents=True, exist_ok=True)
    vocab = save_wordpiece_tokenizer(folder)
    torch.manual_seed(seed)
    if kind == "bert":
        model = BertModel(BertConfig(vocab_size=vocab, max_position_embeddings=64, pad_token_id=0, **SHAPE))
        (folder / "modules.json").write_text(json.dumps(ST_MODULES))
        (folder / "1_Pooling").mkdir()
        (folder / "1_Pooling" / "config.json").write_text(json.dumps(
            {"word_embedding_dimension": SHAPE["hidden_size"], "pooling_mode_cls_token": False,
             "pooling_mode_mean_tokens": True, "pooling_mode_max_tokens": False}))
    else:  # pad 0 here (the tokenizer's [PAD]); positions start past it as in XLM-R
        model = XLMRobertaModel(XLMRobertaConfig(vocab_size=vocab, max_position_embeddings=66, pad_token_id=0,
                                                 bos_token_id=2, eos_token_id=3, **SHAPE))
    model.eval().save_pretrained(folder, safe_serialization=True)
    return folder


def build_encoder_adapter(model_dir: Path, folder: Path, targets: list[str], seed: int, rank: int = 4) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModel

    base = AutoModel.from_pretrained(model_dir, dtype=torch.float32)
    torch.manual_seed(seed)
    config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=targets, lora_dropout=0.0,
                        init_lora_weights=False)
    get_peft_model(base, config).save_pretrained(folder, safe_serialization=True)
    return folder
