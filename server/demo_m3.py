"""An offline bge-m3-shaped demo (`builtin:m3-tiny`): a tiny random XLM-R with an XLM-R-style tokenizer
trained here (`<s>`, `<pad>`, `</s>`, `<unk>`, `<mask>`), FlagEmbedding's two head files beside it, and PEFT
adapters on its attention linears, so dense, sparse and multivector outputs can be served with no hub."""

from __future__ import annotations

from pathlib import Path

from server.cache import build_atomically, builtin_root
from server.demo_lora import build_adapter

M3_NAME = "m3-tiny"
M3_ADAPTERS = {"legal": (707, ("query", "key", "value")), "medical": (808, ("query", "value", "dense"))}
M3_SHAPE = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
M3_POSITIONS = 128  # usable positions (max_seq_len); XLM-R keeps two more, past the padding index
SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]  # XLM-R's ids 0-3, and its mask token
CORPUS = (
    "the building permit is granted by the municipality after a review of the drawings",
    "a contract for construction work names the parties, the price and the time of completion",
    "aspirin reduces the risk of heart attack in patients with high blood pressure",
    "quarterly revenue grew by twelve percent while costs stayed flat",
    "the court held that the statute of limitations had expired before the claim was filed",
    "hybrid search mixes dense vectors, sparse lexical weights and late interaction over token vectors",
    "energy declarations, moisture damage, radon and asbestos surveys for older houses",
    "Is a verbal agreement binding? Dosage of ibuprofen for children. Interest rates and bonds.",
)


def save_xlmr_tokenizer(folder: Path) -> int:
    """A Unigram tokenizer (`<s> text </s>`, XLM-R's special tokens) trained on CORPUS; its vocabulary size."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import XLMRobertaTokenizerFast

    tokenizer = Tokenizer(models.Unigram())
    tokenizer.normalizer = normalizers.NFKC()
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=400, special_tokens=SPECIALS, unk_token="<unk>")
    tokenizer.train_from_iterator(list(CORPUS) * 4, trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 2)])
    wrapped = XLMRobertaTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>",
                                      sep_token="</s>", cls_token="<s>", unk_token="<unk>", pad_token="<pad>",
                                      mask_token="<mask>")
    wrapped.model_max_length = M3_POSITIONS
    wrapped.save_pretrained(folder)
    return tokenizer.get_vocab_size()


def build_m3_model(folder: Path, seed: int = 0) -> None:
    """Weights at std 0.2 (XLM-R's 0.02 gives every text nearly the same CLS state) and random heads."""
    import torch
    from torch import nn
    from transformers import XLMRobertaConfig, XLMRobertaModel

    vocab = save_xlmr_tokenizer(folder)
    torch.manual_seed(seed)
    config = XLMRobertaConfig(vocab_size=vocab, max_position_embeddings=M3_POSITIONS + 2, pad_token_id=1,
                              bos_token_id=0, eos_token_id=2, initializer_range=0.2, **M3_SHAPE)
    XLMRobertaModel(config).eval().save_pretrained(folder, safe_serialization=True)
    hidden = M3_SHAPE["hidden_size"]
    for name, outputs in (("colbert_linear", hidden), ("sparse_linear", 1)):
        head = nn.Linear(hidden, outputs)
        nn.init.normal_(head.weight, std=0.2)
        torch.save(head.state_dict(), folder / f"{name}.pt")


def ensure_m3(adapter: str) -> Path:
    """Build (once) and return `builtin:m3-tiny` or `builtin:m3-tiny/<adapter>`."""
    root = builtin_root()
    model_dir = build_atomically(root / M3_NAME, build_m3_model)
    if not adapter:
        return model_dir
    seed, targets = M3_ADAPTERS[adapter]
    return build_atomically(root / f"{M3_NAME}-adapters" / adapter,
                             lambda out: build_adapter(model_dir, out, seed, targets, rank=4))


def m3_folders(root: Path) -> dict[Path, str]:
    """Each folder of the demo -> its builtin name (for showing paths to clients)."""
    named = {root / M3_NAME: M3_NAME}
    named.update({root / f"{M3_NAME}-adapters" / name: f"{M3_NAME}/{name}" for name in M3_ADAPTERS})
    return named
