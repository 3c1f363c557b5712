"""Tokenisation: the pooling EOS is appended once, truncation keeps it, templates apply to queries only."""

from __future__ import annotations

import pytest

from server import errors
from server.api.errors import from_domain
from server.tokenization import TextTokenizer

EOS = 151643
TEMPLATE = "Instruct: {instruction}\nQuery:{text}"


@pytest.fixture(scope="module")
def tokenizer(demo_dirs):
    from transformers import AutoTokenizer

    return TextTokenizer(AutoTokenizer.from_pretrained(demo_dirs["model"]), max_seq_len=8,
                         query_template=TEMPLATE, default_instruction="Default task")


def test_eos_is_endoftext_not_im_end(tokenizer):
    assert tokenizer.eos_id == EOS


def test_eos_appended_once(tokenizer):
    rows = tokenizer.tokenize(["hello world", "hello world<|endoftext|>"]).input_ids
    assert rows[0][-1] == EOS and rows[0].count(EOS) == 1
    assert rows[0] == rows[1]


def test_truncation_keeps_eos(tokenizer):
    result = tokenizer.tokenize(["one two three four five six seven eight nine ten eleven"])
    assert len(result.input_ids[0]) == 8 and result.input_ids[0][-1] == EOS and result.truncated == [True]
    full = tokenizer.hf("one two three four five six seven")["input_ids"]
    assert result.input_ids[0][:7] == full[:7]


def test_backend_limit_tightens_truncation(tokenizer):
    assert len(tokenizer.tokenize(["one two three four five six"], limit=4).input_ids[0]) == 4


def test_overflow_error_policy(tokenizer):
    with pytest.raises(errors.InputTooLong) as info:
        tokenizer.tokenize(["a b c d e f g h i j k l"], overflow="error")
    answer = from_domain(info.value)  # as the API answers it
    assert answer.status == 400 and answer.code == "INPUT_TOO_LONG"


def test_query_template_and_instruction(tokenizer):
    assert tokenizer.render("doc text", is_query=False, instruction="ignored") == "doc text"
    assert tokenizer.render("q", is_query=True, instruction="Find law") == "Instruct: Find law\nQuery:q"
    assert tokenizer.render("q", is_query=True, instruction=None) == "Instruct: Default task\nQuery:q"
    assert tokenizer.render("{instruction} {x}", is_query=True, instruction="i") == \
        "Instruct: i\nQuery:{instruction} {x}"


LONG_TEXTS = {
    "words": "the quick brown fox jumps over the lazy dog " * 4000,
    "one_word": "a" * 300_000,
    "digits": "0123456789" * 30_000,
    "cjk": "漢字仮名交じり文" * 40_000,
    "emoji": "🙂👍🏽 ok " * 40_000,
    "spaces_then_word": " " * 200_000 + "tail",
    "mixed": ("Straße café naïve — ₿ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 " * 8000),
}


@pytest.mark.parametrize("kind", sorted(LONG_TEXTS))
def test_clipping_keeps_the_tokens_of_the_whole_text(demo_dirs, kind):
    """Work is bounded by max_seq_len, not by the text: the tokenizer sees at most 2 x max_len x the
    longest token's characters, and the kept tokens equal those of the whole text."""
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(demo_dirs["model"])
    bounded = TextTokenizer(hf, max_seq_len=512, query_template="{text}", default_instruction=None)
    text = LONG_TEXTS[kind]
    (clipped,) = bounded.clip([text])
    assert len(clipped) <= 2 * 512 * bounded.max_token_chars < len(text) or clipped == text
    whole = hf([text], add_special_tokens=True)["input_ids"][0][:511] + [EOS]
    assert bounded.tokenize([text]).input_ids[0] == whole


def test_error_policy_refuses_a_huge_text_without_tokenising_it(tokenizer):
    huge = "word " * 3_000_000  # 15 MB
    with pytest.raises(errors.InputTooLong, match="more than 8 tokens"):
        tokenizer.clip([huge], overflow="error")


def test_the_rust_tokenizer_is_called_directly_when_it_gives_the_same_ids(tokenizer):
    """The direct call (a private copy of the Rust tokenizer) is chosen only after it matched the wrapper on
    probe texts, and its ids equal the wrapper's on other texts too."""
    texts = ["hello world", "<|im_start|>user\nhi<|im_end|>", "ünïcödé  and   spaces", "tabs\tand\nlines", "x" * 300]
    assert tokenizer._rust is not None and tokenizer._rust is not tokenizer.hf._tokenizer
    assert tokenizer._encode(texts) == tokenizer.hf(texts, add_special_tokens=True,
                                                    return_attention_mask=False)["input_ids"]


def test_a_tokenizer_whose_file_truncates_is_still_called_without_truncation(demo_dirs, tmp_path):
    """A tokenizer.json may carry truncation (MiniLM's says 128): the direct call's copy has it off, as the
    wrapper calls it, so long texts keep every token (ours truncates, keeping the final token)."""
    import json
    import shutil

    from transformers import AutoTokenizer

    folder = tmp_path / "tok"
    shutil.copytree(demo_dirs["model"], folder)
    data = json.loads((folder / "tokenizer.json").read_text())
    data["truncation"] = {"direction": "Right", "max_length": 4, "strategy": "LongestFirst", "stride": 0}
    (folder / "tokenizer.json").write_text(json.dumps(data))
    truncating = TextTokenizer(AutoTokenizer.from_pretrained(folder), max_seq_len=64, query_template="{text}",
                               default_instruction=None)
    assert truncating._rust is not None
    assert len(truncating.tokenize(["one two three four five six seven"]).input_ids[0]) == 8  # 7 words + EOS
