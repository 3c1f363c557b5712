"""Training pairs: strict JSONL reading with errors that name the file and line."""

from __future__ import annotations

import json

import pytest

from server.config import ConfigError
from server.training.pairs import Pair, read_corpus, read_pairs


def test_reads_pairs_and_optional_negatives(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps({"query": "q1", "positive": "p1"}) + "\n\n"
                    + json.dumps({"query": "q2", "positive": "p2", "negative": "n2"}) + "\n")
    assert read_pairs(path) == [Pair("q1", "p1"), Pair("q2", "p2", "n2")]


@pytest.mark.parametrize("line, message", [
    ("{not json", "invalid JSON"),
    ('["q", "p"]', "expected a JSON object"),
    ('{"query": "q"}', "'positive' must be a non-empty string"),
    ('{"query": "q", "positive": "  "}', "'positive' must be a non-empty string"),
    ('{"query": "q", "positive": "p", "answer": "x"}', "unknown key"),
    ('{"query": "q", "positive": "p", "negative": 3}', "'negative' must be"),
])
def test_bad_lines_name_the_line(tmp_path, line, message):
    path = tmp_path / "pairs.jsonl"
    path.write_text('{"query": "ok", "positive": "fine"}\n' + line + "\n")
    with pytest.raises(ConfigError, match=f"pairs.jsonl:2: .*{message}"):
        read_pairs(path)


def test_empty_file_and_corpus(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(ConfigError, match="no pairs"):
        read_pairs(tmp_path / "empty.jsonl")
    (tmp_path / "corpus.jsonl").write_text('{"text": "a"}\n{"text": "b"}\n')
    assert read_corpus(tmp_path / "corpus.jsonl") == ["a", "b"]
    (tmp_path / "bad.jsonl").write_text('{"body": "a"}\n')
    with pytest.raises(ConfigError, match="bad.jsonl:1"):
        read_corpus(tmp_path / "bad.jsonl")
