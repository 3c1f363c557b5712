"""The multi-output tier (make test-multioutput, its own venv): our outputs against the real reference
classes on the same folders. bge-m3's three outputs against FlagEmbedding's `BGEM3FlagModel` (each
adapter merged into a copy of the folder by PEFT) in one mixed batch of adapters; SPLADE against
sentence-transformers' `SparseEncoder`; SIE's qdrant integration (`SIENamedVectorizer`, its default dense +
sparse) end to end into qdrant-client's in-memory store, and SIE's LangChain sparse encoder."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from types import MappingProxyType

import numpy as np
import pytest

from server.backends.base import TokenBatch
from server.config import AdapterOptions, ModelConfig, load_model_config
from tests.conftest import REPO, LiveServer, build_app, loaded_model, wait_ready
from tests.multi_output_assets import as_dict, build_lora, build_splade, m3_with_adapters, merged, sparse_diff

pytestmark = pytest.mark.multioutput
TEXTS = ["the court held that the statute of limitations had expired", "aspirin",
         "hybrid search mixes dense vectors, sparse lexical weights and late interaction over tokens",
         "quarterly revenue grew", "<mask> is kept"]
MAX_LEN = 64


def merged_folder(folder: Path, adapter: Path | None, out: Path, *, masked_lm: bool = False) -> Path:
    """`folder` with `adapter` merged into its weights (tokenizer, head and sentence-transformers files kept)."""
    if adapter is None:
        return folder
    shutil.copytree(folder, out, ignore=shutil.ignore_patterns("model.safetensors"))
    merged(folder, adapter, masked_lm=masked_lm).save_pretrained(out, safe_serialization=True)
    return out


@pytest.fixture(scope="module")
def m3(tmp_path_factory):
    root = tmp_path_factory.mktemp("m3")
    folder, adapters, config = m3_with_adapters(root, MAX_LEN)
    model = loaded_model(config)
    yield root, folder, adapters, model
    asyncio.run(model.backend.close())


def flag_outputs(folder: Path, texts: list[str]) -> dict:
    from FlagEmbedding import BGEM3FlagModel

    reference = BGEM3FlagModel(str(folder), use_fp16=False, devices="cpu", normalize_embeddings=True)
    return reference.encode(texts, batch_size=4, max_length=MAX_LEN, return_dense=True, return_sparse=True,
                            return_colbert_vecs=True)


def normalised(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.maximum(np.linalg.norm(vectors, axis=-1, keepdims=True), 1e-12)


def test_m3_mixed_batch_matches_flagembedding(m3):
    """One batch of every text under base, qkv and qv-dense against BGEM3FlagModel on each merged folder."""
    root, folder, adapters, model = m3
    names = [None, "qkv", "qv-dense"]
    rows = model.tokenizer.tokenize(TEXTS).input_ids
    batch_names = [name for name in names for _ in TEXTS]
    slots = [None if n is None else model.adapters.slot_of(n) for n in batch_names]
    wanted = [frozenset({"dense", "sparse", "multivector"})] * len(slots)
    ours = model.backend.embed_outputs_sync(TokenBatch(rows * len(names), slots, wanted))
    for k, name in enumerate(names):
        reference = flag_outputs(merged_folder(folder, adapters.get(name), root / f"merged-{name}"), TEXTS)
        for i in range(len(TEXTS)):
            row = ours[k * len(TEXTS) + i]
            assert np.abs(normalised(row.dense) - reference["dense_vecs"][i]).max() <= 1e-5
            colbert = reference["colbert_vecs"][i]
            assert row.multivector.shape == colbert.shape
            assert np.abs(normalised(row.multivector) - colbert).max() <= 1e-5
            lexical = {int(token): float(weight) for token, weight in reference["lexical_weights"][i].items()}
            assert sparse_diff(as_dict(row.sparse), lexical) <= 1e-5


def test_m3_alone_equals_in_batch(m3):
    _, _, _, model = m3
    rows = model.tokenizer.tokenize(TEXTS).input_ids
    every = frozenset({"dense", "sparse", "multivector"})
    together = model.backend.embed_outputs_sync(TokenBatch(rows, [model.adapters.slot_of("qkv")] * len(rows),
                                                           [every] * len(rows)))
    for row, got in zip(rows, together):
        alone = model.backend.embed_outputs_sync(TokenBatch([row], [model.adapters.slot_of("qkv")], [every]))[0]
        assert np.abs(got.dense - alone.dense).max() <= 1e-5
        assert np.abs(got.multivector - alone.multivector).max() <= 1e-5
        assert sparse_diff(as_dict(got.sparse), as_dict(alone.sparse)) <= 1e-5


@pytest.fixture(scope="module")
def splade(tmp_path_factory):
    """A SparseEncoder folder saved by sentence-transformers itself, and a PEFT adapter on its BERT."""
    from sentence_transformers import SparseEncoder

    root = tmp_path_factory.mktemp("splade")
    plain = build_splade(root / "plain")
    for name in ("modules.json", "1_SpladePooling"):
        path = plain / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    encoder = SparseEncoder(str(plain), device="cpu")  # a masked LM: sentence-transformers adds SpladePooling
    encoder.max_seq_length = 48
    encoder.save(str(root / "st"))
    adapter = build_lora(root / "st", root / "adapter", ["query", "value"], seed=9, masked_lm=True)
    config = ModelConfig(name="test/splade", model_path=str(root / "st"), backend="torch", dtype="float32",
                         max_seq_len=48, adapters=AdapterOptions(lora_paths=MappingProxyType({"a": str(adapter)})))
    model = loaded_model(config)
    yield root, adapter, model
    asyncio.run(model.backend.close())


@pytest.mark.parametrize("adapter", [None, "a"])
def test_splade_matches_sentence_transformers(splade, adapter):
    from sentence_transformers import SparseEncoder

    root, adapter_dir, model = splade
    assert model.backend.layout.outputs == ("sparse",)
    folder = merged_folder(root / "st", adapter_dir if adapter else None, root / f"merged-{adapter}", masked_lm=True)
    expected = SparseEncoder(str(folder), device="cpu").encode(TEXTS[:4], convert_to_tensor=True).to_dense().numpy()
    rows = model.tokenizer.tokenize(TEXTS[:4]).input_ids
    slot = None if adapter is None else model.adapters.slot_of(adapter)
    ours = model.backend.embed_outputs_sync(TokenBatch(rows, [slot] * len(rows), [frozenset({"sparse"})] * len(rows)))
    for row, reference in zip(ours, expected):
        indices = np.flatnonzero(reference > 0)
        assert sparse_diff(as_dict(row.sparse), {int(i): float(reference[i]) for i in indices}) <= 1e-5


def test_sie_qdrant_named_vectorizer_default_case(tmp_path):
    """SIE's qdrant integration as its README uses it (dense + sparse by default) against the m3 demo."""
    from qdrant_client import QdrantClient, models
    from sie_qdrant import SIENamedVectorizer

    config = load_model_config(REPO / "model_configs" / "m3-tiny-demo.yaml")
    app, _ = build_app(config)
    docs = ["the court held that the statute of limitations had expired", "aspirin dosage for children",
            "quarterly revenue grew by twelve percent"]
    with LiveServer(app) as live:
        wait_ready(live.url)
        vectorizer = SIENamedVectorizer(base_url=live.url, model=config.name)
        embedded = vectorizer.embed_documents(docs)
        query = vectorizer.embed_query(docs[1])
    qdrant = QdrantClient(":memory:")
    qdrant.create_collection("docs", sparse_vectors_config={"sparse": models.SparseVectorParams()},
                             vectors_config={"dense": models.VectorParams(size=32, distance=models.Distance.COSINE)})
    qdrant.upsert("docs", [models.PointStruct(id=i, payload={"text": doc}, vector={
        "dense": vectors["dense"], "sparse": models.SparseVector(**vectors["sparse"])})
        for i, (doc, vectors) in enumerate(zip(docs, embedded))])
    dense_hits = qdrant.query_points("docs", query=query["dense"], using="dense", limit=3).points
    sparse_hits = qdrant.query_points("docs", query=models.SparseVector(**query["sparse"]), using="sparse",
                                      limit=3).points
    assert dense_hits[0].id == 1 and dense_hits[0].score > 0.999
    assert sparse_hits and sparse_hits[0].id == 1


def test_sie_langchain_sparse_encoder_and_embeddings():
    """SIE's LangChain integration: `SIESparseEncoder` (the hybrid retrievers' sparse half) and `SIEEmbeddings`
    against the m3 demo, each as SIE's docs use it."""
    from sie_langchain import SIEEmbeddings, SIESparseEncoder

    config = load_model_config(REPO / "model_configs" / "m3-tiny-demo.yaml")
    app, model = build_app(config)
    texts = ["aspirin dosage for children", "the court held"]
    with LiveServer(app) as live:
        wait_ready(live.url)
        sparse = SIESparseEncoder(base_url=live.url, model=config.name)
        documents, queries = sparse.encode_documents(texts), sparse.encode_queries(texts)
        dense = SIEEmbeddings(base_url=live.url, model=config.name).embed_documents(texts)
        expected = [as_dict(row.sparse) for row in model.backend.embed_outputs_sync(TokenBatch(
            model.tokenizer.tokenize(texts).input_ids, [None, None], [frozenset({"sparse"})] * 2))]
    for got, query, reference in zip(documents, queries, expected):
        assert sparse_diff(dict(zip(got["indices"], got["values"])), reference) <= 1e-5
        assert query["indices"] == got["indices"]  # no query template here: queries embed as documents
    assert len(dense) == 2 and len(dense[0]) == 32
