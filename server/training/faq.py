"""The demo domain: the Zaragoza construction FAQ (PyPI package zaragoza-construction-faq, CC-BY-4.0,
503 English question/answer pairs about Swedish construction in 39 categories) and its fixed split.

Split: within each category, items sorted by id; every fifth (the 5th, 10th, ...) is held out for
testing, the rest train. The corpus ranked at evaluation is every answer of the FAQ, so a test question
must find its own (never trained on) answer among all 503.
"""

from __future__ import annotations

import importlib.util
import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from server.training.pairs import Pair, pair_records, write_jsonl

PACKAGE = "zaragoza_construction_faq"
DATA_FILE = "data/faq-en.jsonl"
HOLD_OUT_EVERY = 5


@dataclass(frozen=True)
class FaqSplit:
    train: list[Pair]
    test: list[Pair]
    corpus: list[str]


def faq_records() -> list[dict]:
    """The English records, read from the installed package's data file (the package is not imported)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the demo data needs the package zaragoza-construction-faq: make real "
                           "(or pip install -e '.[real]')")
    path = Path(next(iter(spec.submodule_search_locations))) / DATA_FILE
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def split_faq(records: list[dict]) -> FaqSplit:
    by_category: dict[str, list[dict]] = defaultdict(list)
    for record in records:
        by_category[record["category"]].append(record)
    train, test, answers = [], [], []
    for category in sorted(by_category):
        for position, record in enumerate(sorted(by_category[category], key=lambda r: r["id"]), start=1):
            (test if position % HOLD_OUT_EVERY == 0 else train).append(Pair(record["q"], record["a"]))
            answers.append(record["a"])
    return FaqSplit(train=train, test=test, corpus=list(dict.fromkeys(answers)))


def write_split(split: FaqSplit, folder: Path) -> dict[str, Path]:
    """train.jsonl / test.jsonl (pairs) and corpus.jsonl ({"text"}) in `folder`."""
    paths = {name: folder / f"{name}.jsonl" for name in ("train", "test", "corpus")}
    write_jsonl(paths["train"], pair_records(split.train))
    write_jsonl(paths["test"], pair_records(split.test))
    write_jsonl(paths["corpus"], [{"text": text} for text in split.corpus])
    return paths
