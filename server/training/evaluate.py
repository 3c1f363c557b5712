"""Retrieval evaluation through a running server with the real SIE SDK, so it measures what is served:
queries are encoded as queries (template and instruction), documents raw, once for the base model and
once per adapter (`lora_id`); each query's relevant document is its pair's positive."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from server.training.pairs import Pair
from server.training.retrieval_metrics import rank_documents, retrieval_metrics

BASE = "base"
PROBE_TIMEOUT_S = 5.0
DEPTH = 10  # the deepest cut the metrics read (recall@10, MRR@10, NDCG@10)
FEW_DOCUMENTS = 50
log = logging.getLogger(__name__)


class EvalRefused(Exception):
    """The evaluation cannot mean anything or cannot run: no server, an unknown model or adapter, a corpus
    too small to rank. The message says which and what to do."""


@dataclass(frozen=True)
class EvalTask:
    url: str
    model: str
    pairs: Sequence[Pair]
    corpus: Sequence[str]  # every document ranked: the pairs' positives plus any extra ones
    adapters: Sequence[str]
    instruction: str | None = None
    batch_size: int = 64
    api_key: str | None = None


def corpus_of(pairs: Sequence[Pair], extra: Sequence[str] = ()) -> list[str]:
    """The pairs' positives and `extra`, each text once, in first-seen order."""
    return list(dict.fromkeys([p.positive for p in pairs] + list(extra)))


def encode_all(client, task: EvalTask, texts: Sequence[str], *, is_query: bool, adapter: str | None) -> np.ndarray:
    from sie_sdk.types import Item

    options = {"lora_id": adapter} if adapter else None
    vectors = []
    for start in range(0, len(texts), task.batch_size):
        items = [Item(text=t) for t in texts[start:start + task.batch_size]]
        results = client.encode(task.model, items, is_query=is_query, options=options,
                                instruction=task.instruction if is_query else None)
        vectors.extend(np.asarray(r["dense"], dtype=np.float32) for r in results)
    return np.stack(vectors)


def preflight(task: EvalTask) -> None:
    """Fail in seconds, before any encoding: the corpus must be rankable, the server must answer and
    serve the model."""
    import httpx

    if len(task.corpus) <= DEPTH:
        raise EvalRefused(f"the corpus has {len(task.corpus)} documents: with {DEPTH} or fewer, recall@{DEPTH} is 1.0 "
                          "for any model; give --corpus with the documents the queries should be found among")
    if len(task.corpus) < FEW_DOCUMENTS:
        log.warning("only %d documents to rank: the metrics will be coarse (give --corpus)", len(task.corpus))
    headers = {"Authorization": f"Bearer {task.api_key}"} if task.api_key else {}
    try:
        answer = httpx.get(f"{task.url}/v1/models/{task.model}", headers=headers, timeout=PROBE_TIMEOUT_S)
    except httpx.HTTPError as exc:
        raise EvalRefused(f"no server answers at {task.url} ({type(exc).__name__}); start one "
                          "(launch.py --config <model yaml>) or pass --url") from None
    if answer.status_code != 200:
        raise EvalRefused(f"{task.url} cannot evaluate {task.model!r}: {answer.status_code} {answer.text[:300]}")


def check_adapters(client, task: EvalTask) -> None:
    """One short item per adapter first (the SDK waits out a hot-load), so an unknown name fails now."""
    from sie_sdk.client.errors import RequestError
    from sie_sdk.types import Item

    for adapter in task.adapters:
        try:
            client.encode(task.model, Item(text="adapter check"), options={"lora_id": adapter})
        except RequestError as exc:
            raise EvalRefused(f"adapter {adapter!r}: {exc}") from None


def evaluate(task: EvalTask) -> dict:
    """{"model", "queries", "documents", "results": {variant: metrics}, "seconds": {variant: s}}."""
    from sie_sdk import SIEClient

    preflight(task)
    ids = [str(i) for i in range(len(task.corpus))]
    index = {text: doc_id for doc_id, text in zip(ids, task.corpus)}
    missing = [p.positive for p in task.pairs if p.positive not in index]
    if missing:
        raise ValueError(f"{len(missing)} positive(s) are not in the corpus")
    relevant = [{index[p.positive]} for p in task.pairs]
    queries = [p.query for p in task.pairs]
    results, seconds = {}, {}
    with SIEClient(task.url, api_key=task.api_key, timeout_s=600) as client:
        check_adapters(client, task)
        for adapter in [None, *task.adapters]:
            started = time.perf_counter()
            documents = encode_all(client, task, task.corpus, is_query=False, adapter=adapter)
            encoded = encode_all(client, task, queries, is_query=True, adapter=adapter)
            rankings = rank_documents(encoded, documents, ids)
            results[adapter or BASE] = retrieval_metrics(rankings, relevant)
            seconds[adapter or BASE] = round(time.perf_counter() - started, 2)
    return {"model": task.model, "url": task.url, "queries": len(queries), "documents": len(task.corpus),
            "instruction": task.instruction, "results": results, "seconds": seconds}


def write_report(report: dict, out_dir: Path, name: str) -> tuple[Path, Path]:
    """`<name>.json` and `<name>.png` in `out_dir`."""
    from server.training.chart import plot_metrics

    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / f"{name}.json"
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    title = f"{report['model']}: {report['queries']} queries, {report['documents']} documents"
    return json_path, plot_metrics(report["results"], title, out_dir / f"{name}.png")


def markdown_table(report: dict) -> str:
    metrics = list(next(iter(report["results"].values())))
    lines = ["| variant | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 1) + "|"]
    for variant, values in report["results"].items():
        lines.append(f"| {variant} | " + " | ".join(f"{values[m]:.3f}" for m in metrics) + " |")
    return "\n".join(lines)
