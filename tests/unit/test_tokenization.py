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
