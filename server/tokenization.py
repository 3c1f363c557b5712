"""Server-side tokenisation: query template, the pooling EOS appended (decoders that pool the last token) or
the tokenizer's own special tokens (encoders), truncation that keeps the final token, and bounded work:
text past what `max_seq_len` tokens can cover is cut before the tokenizer sees it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from server import errors
from server.config import ConfigError, ModelConfig
from server.model_layout import read_layout
from server.sources import resolve_source

OVERFLOW_POLICIES = ("truncate", "error")


@dataclass(frozen=True)
class Tokenized:
    input_ids: list[list[int]]
    truncated: list[bool]

    @property
    def token_count(self) -> int:
        return sum(len(ids) for ids in self.input_ids)


class TextTokenizer:
    """Wraps a Hugging Face tokenizer. With `append_eos` every row ends with exactly one pooling EOS;
    without, rows keep the tokenizer's special tokens ([CLS] ... [SEP]) and truncation keeps the last."""

    def __init__(self, hf_tokenizer, *, max_seq_len: int, query_template: str,
                 default_instruction: str | None, eos_token: str | None = None, append_eos: bool = True):
        self.hf = hf_tokenizer
        self.max_seq_len = max_seq_len
        self.query_template = query_template
        self.default_instruction = default_instruction
        self.eos_id = self._find_eos(hf_tokenizer, eos_token) if append_eos else None
        self._special_ids = frozenset(hf_tokenizer.all_special_ids)
        # A token covers at most this many characters (byte-level vocabularies: one character per byte).
        self.max_token_chars = max((len(token) for token in hf_tokenizer.get_vocab()), default=64)
        self._rust = self._same_rust_tokenizer(hf_tokenizer)

    @staticmethod
    def _same_rust_tokenizer(hf_tokenizer):
        """A private copy of the `tokenizers.Tokenizer` under a fast tokenizer (its truncation and padding off,
        as the wrapper calls it), when it gives the wrapper's ids on probe texts: calling it directly skips the
        wrapper's per-call Python, part of a lone request's fixed cost. None: the wrapper is called."""
        rust = getattr(hf_tokenizer, "_tokenizer", None)
        if rust is None or not hasattr(rust, "to_str"):
            return None
        own = type(rust).from_str(rust.to_str())
        own.no_truncation()
        own.no_padding()
        specials = " ".join(str(token) for token in hf_tokenizer.all_special_tokens)
        probes = ["", "Hello, world!", "  spaced\ttabs\nnew lines  ", "naïve café, 東京, emoji 🙂", specials,
                  "word " * 100]
        wrapped = hf_tokenizer(probes, add_special_tokens=True, return_attention_mask=False)["input_ids"]
        direct = [encoding.ids for encoding in own.encode_batch(probes, add_special_tokens=True)]
        return own if direct == [list(ids) for ids in wrapped] else None

    def _encode(self, texts: list[str]) -> list[list[int]]:
        if self._rust is not None:
            return [encoding.ids for encoding in self._rust.encode_batch(texts, add_special_tokens=True)]
        return self.hf(texts, add_special_tokens=True, return_attention_mask=False)["input_ids"]

    @staticmethod
    def _find_eos(tokenizer, eos_token: str | None) -> int:
        # Qwen3-Embedding pools on <|endoftext|> even where the tokenizer's eos_token is <|im_end|>.
        for candidate in (eos_token, "<|endoftext|>", tokenizer.eos_token):
            if candidate is None:
                continue
            token_id = tokenizer.convert_tokens_to_ids(candidate)
            # An unknown token maps to the unk id; a token that *is* the unk token (SmolLM2) still counts.
            if isinstance(token_id, int) and tokenizer.convert_ids_to_tokens(token_id) == candidate:
                return token_id
            if eos_token is not None and candidate == eos_token:
                raise ValueError(f"eos_token {eos_token!r} is not in the tokenizer's vocabulary")
        raise ValueError("the tokenizer has no EOS token; set 'eos_token' in the model config")

    def render(self, text: str, *, is_query: bool, instruction: str | None) -> str:
        """Queries get the template (with the instruction); documents stay raw."""
        if not is_query:
            return text
        chosen = instruction if instruction is not None else (self.default_instruction or "")
        return self.query_template.replace("{instruction}", chosen).replace("{text}", text)

    def max_tokens(self, limit: int | None) -> int:
        return min(self.max_seq_len, limit) if limit else self.max_seq_len

    def clip(self, texts: Sequence[str], *, overflow: str = "truncate", limit: int | None = None) -> list[str]:
        """Each text cut to what its first `max_tokens` tokens can come from. Past `max_tokens` times the
        longest token's length a text surely overflows; twice that keeps the cut far from the tokens
        kept, so truncation gives the tokens of the whole text."""
        max_len = self.max_tokens(limit)
        surely_over = max_len * self.max_token_chars
        for index, text in enumerate(texts):
            if overflow == "error" and len(text) > surely_over:
                raise errors.InputTooLong(
                    f"item {index} has more than {max_len} tokens ({len(text)} characters), over the limit of "
                    f"{max_len} (overflow_policy is 'error'; use 'truncate' to cut it)")
        return [text[:2 * surely_over] for text in texts]

    def tokenize(self, texts: Sequence[str], *, overflow: str = "truncate", limit: int | None = None) -> Tokenized:
        return self.tokenize_clipped(self.clip(texts, overflow=overflow, limit=limit), overflow=overflow,
                                     limit=limit)

    def tokenize_clipped(self, clipped: Sequence[str], *, overflow: str = "truncate",
                         limit: int | None = None) -> Tokenized:
        """`tokenize` for texts `clip` already cut (the encode path clips once, to admit the request first)."""
        max_len = self.max_tokens(limit)
        encoded = self._encode(list(clipped))
        rows, truncated = [], []
        for index, ids in enumerate(encoded):
            content, tail = self._split_tail(ids)
            cut = len(content) + len(tail) > max_len
            if cut and overflow == "error":
                raise errors.InputTooLong(
                    f"item {index} has {len(content) + len(tail)} tokens, over the limit of {max_len} "
                    "(overflow_policy is 'error'; use 'truncate' to cut it)")
            rows.append((content[:max_len - len(tail)] if cut else content) + tail)
            truncated.append(cut)
        return Tokenized(rows, truncated)

    def _split_tail(self, ids: list[int]) -> tuple[list[int], list[int]]:
        """(content, the final token(s) truncation must keep): the pooling EOS, or a closing special token."""
        if self.eos_id is not None:
            return (ids[:-1] if ids and ids[-1] == self.eos_id else ids), [self.eos_id]
        if ids and ids[-1] in self._special_ids:
            return ids[:-1], ids[-1:]
        return ids, []


def load_tokenizer(config: ModelConfig) -> TextTokenizer:
    """The model's Hugging Face tokenizer wrapped with its template, EOS and length limit (blocking)."""
    from transformers import AutoTokenizer

    folder = resolve_source(config.model_path, kind="model")
    layout = read_layout(folder, config)
    try:
        return TextTokenizer(AutoTokenizer.from_pretrained(folder), max_seq_len=config.max_seq_len,
                             query_template=config.query_template, default_instruction=config.default_instruction,
                             eos_token=config.eos_token, append_eos=not layout.encoder and layout.pooling == "last")
    except ValueError as exc:
        raise ConfigError(f"{config.source_file}: {exc}") from None
