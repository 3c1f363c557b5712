"""Training and evaluation data: JSONL lines of {"query", "positive"[, "negative"]}, read strictly (a bad
line is an error naming the file and the line)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from server.config import ConfigError

PAIR_KEYS = {"query", "positive", "negative"}


@dataclass(frozen=True)
class Pair:
    query: str
    positive: str
    negative: str | None = None


def _pair(record: object, where: str) -> Pair:
    if not isinstance(record, dict):
        raise ConfigError(f"{where}: expected a JSON object, got {type(record).__name__}")
    unknown = sorted(set(record) - PAIR_KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; allowed: query, positive, negative")
    for key in ("query", "positive"):
        if not isinstance(record.get(key), str) or not record[key].strip():
            raise ConfigError(f"{where}: '{key}' must be a non-empty string")
    negative = record.get("negative")
    if negative is not None and not (isinstance(negative, str) and negative.strip()):
        raise ConfigError(f"{where}: 'negative' must be a non-empty string when given")
    return Pair(record["query"], record["positive"], negative)


def read_pairs(path: str | Path) -> list[Pair]:
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
    pairs = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as exc:
            raise ConfigError(f"{path}:{number}: invalid JSON ({exc})") from None
        pairs.append(_pair(record, f"{path}:{number}"))
    if not pairs:
        raise ConfigError(f"{path}: no pairs")
    return pairs


def write_jsonl(path: str | Path, records: Iterable[dict]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")


def pair_records(pairs: Iterable[Pair]) -> list[dict]:
    return [{k: v for k, v in vars(p).items() if v is not None} for p in pairs]


def read_corpus(path: str | Path) -> list[str]:
    """JSONL lines of {"text": ...}: documents to rank besides the pairs' positives."""
    path = Path(path)
    texts = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            try:
                text = json.loads(line).get("text")
            except (ValueError, AttributeError):
                text = None
            if not isinstance(text, str) or not text.strip():
                raise ConfigError(f"{path}:{number}: expected {{\"text\": \"...\"}}")
            texts.append(text)
    return texts
