"""Sparse and multivector outputs over real HTTP: the m3-tiny demo config served on loopback, the real
`sie-sdk` decoding every shape, JSON shapes, output_types resolution (params, options, profiles), errors,
the model list's outputs and dims, the OpenAI route staying dense, and the answer-size limits."""

from __future__ import annotations

import asyncio
from types import MappingProxyType

import httpx
import numpy as np
import pytest
from sie_sdk import SIEClient, multivector_embedding, sparse_embedding_dict
from sie_sdk.types import Item

from tests.conftest import REPO, LiveServer, build_app, wait_ready

M3 = "demo/m3-tiny"
TEXTS = ["Is a verbal agreement binding?", "aspirin dosage", "quarterly revenue and interest rates"]
ALL = ["dense", "sparse", "multivector"]


@pytest.fixture(scope="module")
def m3_config():
    from server.config import load_model_config

    return load_model_config(REPO / "model_configs" / "m3-tiny-demo.yaml")


@pytest.fixture(scope="module")
def m3_server(m3_config):
    app, model = build_app(m3_config)
    with LiveServer(app) as live:
        wait_ready(live.url)
        yield live, model


def post(url, model, body, accept="application/json"):
    return httpx.post(f"{url}/v1/encode/{model}", json=body, headers={"Accept": accept}, timeout=60)


def test_sdk_decodes_every_shape(m3_server):
    live, model = m3_server
    tokens = [len(ids) for ids in model.tokenizer.tokenize(TEXTS).input_ids]
    with SIEClient(live.url) as client:
        results = client.encode(M3, [Item(id=str(i), text=t) for i, t in enumerate(TEXTS)], output_types=ALL,
                                options={"lora_id": "legal"})
    for result, count in zip(results, tokens):
        assert result["dense"].shape == (32,) and result["dense"].dtype == np.float32
        indices, values = result["sparse"]["indices"], result["sparse"]["values"]
        assert indices.dtype == np.int32 and values.dtype == np.float32 and np.all(np.diff(indices) > 0)
        assert np.all(values > 0) and sparse_embedding_dict(result)
        assert result["multivector"].shape == (count - 1, 32)
        np.testing.assert_allclose(np.linalg.norm(result["multivector"], axis=1), 1.0, atol=1e-5)
        assert len(multivector_embedding(result["multivector"])) == count - 1


def test_json_shapes_are_sies(m3_server):
    live, _ = m3_server
    body = {"items": [{"id": "a", "text": TEXTS[0]}], "params": {"output_types": ALL, "output_dtype": "float16"}}
    item = post(live.url, M3, body).json()["items"][0]
    assert set(item) == {"id", "dense", "sparse", "multivector", "provenance"}  # provenance: ours, SDKs skip it
    assert item["provenance"]["adapter"] is None and len(item["provenance"]["base_digest"]) == 16
    assert item["dense"]["dtype"] == "float16" and item["dense"]["dims"] == 32
    sparse = item["sparse"]
    assert set(sparse) == {"dims", "dtype", "indices", "values"} and sparse["dtype"] == "float32"
    assert sparse["dims"] == 152 and len(sparse["indices"]) == len(sparse["values"])
    multi = item["multivector"]
    assert set(multi) == {"token_dims", "num_tokens", "dtype", "values"} and multi["dtype"] == "float16"
    assert multi["token_dims"] == 32 and len(multi["values"]) == multi["num_tokens"]
    assert all(len(row) == 32 for row in multi["values"])


def test_msgpack_and_json_agree(m3_server):
    live, _ = m3_server
    body = {"items": [{"text": TEXTS[1]}], "params": {"output_types": ["sparse", "multivector"]}}
    as_json = post(live.url, M3, body).json()["items"][0]
    with SIEClient(live.url) as client:
        decoded = client.encode(M3, Item(text=TEXTS[1]), output_types=["sparse", "multivector"])
    assert "dense" not in as_json and "dense" not in decoded
    assert as_json["sparse"]["indices"] == decoded["sparse"]["indices"].tolist()
    np.testing.assert_allclose(as_json["multivector"]["values"], decoded["multivector"], atol=1e-6)


def outputs(item: dict) -> set[str]:
    return set(item) - {"provenance"}


def test_outputs_resolve_options_over_profile_over_params(m3_server):
    live, _ = m3_server
    item = {"text": TEXTS[0]}
    only = post(live.url, M3, {"items": [item], "params": {"output_types": ["multivector"]}}).json()["items"][0]
    assert outputs(only) == {"multivector"}
    profile = post(live.url, M3, {"items": [item], "params": {"output_types": ["multivector"],
                                                             "options": {"profile": "hybrid"}}}).json()["items"][0]
    assert outputs(profile) == {"dense", "sparse"}  # the profile's output_types win over params
    option = post(live.url, M3, {"items": [item], "params": {
        "output_types": ["multivector"], "options": {"profile": "hybrid", "output_types": ["sparse"]}}}).json()
    assert outputs(option["items"][0]) == {"sparse"}  # options.output_types win over both
    by_id = post(live.url, f"{M3}:colbert", {"items": [item]}).json()["items"][0]
    assert outputs(by_id) == {"multivector"}


def test_profile_adapter_applies_to_every_output(m3_server):
    live, _ = m3_server
    body = {"items": [{"text": TEXTS[0]}], "params": {"output_types": ["dense", "sparse"]}}
    base = post(live.url, M3, body).json()["items"][0]
    legal = post(live.url, f"{M3}:hybrid", body).json()["items"][0]
    explicit = post(live.url, M3, {**body, "params": {**body["params"], "options": {"lora_id": "legal"}}}).json()
    assert legal == explicit["items"][0]
    assert legal["dense"]["values"] != base["dense"]["values"] and legal["sparse"] != base["sparse"]


@pytest.mark.parametrize(("params", "message"), [
    ({"output_types": ["sparse", "colbert"]}, "unsupported output type 'colbert'"),
    ({"output_types": []}, "must name at least one output type"),
    ({"options": {"output_types": "dense"}}, "options.output_types must be a list"),
    ({"options": {"output_types": ["bm25"]}}, "options.output_types: unsupported output type 'bm25'"),
])
def test_bad_output_types_are_400(m3_server, params, message):
    live, _ = m3_server
    response = post(live.url, M3, {"items": [{"text": "x"}], "params": params})
    assert response.status_code == 400 and message in response.json()["detail"]["message"]


def test_an_output_the_model_does_not_give_is_400_naming_what_it_gives(demo_server):
    response = post(demo_server.url, "demo/qwen3-tiny", {"items": [{"text": "x"}],
                                                        "params": {"output_types": ["dense", "sparse"]}})
    assert response.status_code == 400
    assert "does not produce 'sparse' output; it produces: 'dense'" in response.json()["detail"]["message"]
    models = httpx.get(f"{demo_server.url}/v1/models/demo/qwen3-tiny").json()
    assert models["outputs"] == ["dense"] and models["dims"] == {"dense": 64}


def test_model_list_reports_outputs_and_dims(m3_server):
    live, _ = m3_server
    listed = httpx.get(f"{live.url}/v1/models").json()["models"]
    entries = [e for e in listed if e["name"] == M3 or e.get("parent") == M3]
    assert len(entries) >= 3
    for entry in entries:
        assert entry["outputs"] == ALL and entry["dims"] == {"dense": 32, "sparse": 152, "multivector": 32}
    with SIEClient(live.url) as client:
        info = next(m for m in client.list_models() if m["name"] == M3)
    assert info["outputs"] == ALL


def test_openai_route_stays_dense(m3_server):
    from openai import OpenAI

    live, _ = m3_server
    client = OpenAI(base_url=f"{live.url}/v1", api_key="unused")
    for model in (M3, f"{M3}:colbert"):  # a profile naming multivector output still answers dense
        data = client.embeddings.create(model=model, input=["hello", "world"]).data
        assert len(data) == 2 and len(data[0].embedding) == 32
    with SIEClient(live.url) as sie:
        dense = sie.encode(M3, Item(text="hello"))["dense"]
    np.testing.assert_allclose(client.embeddings.create(model=M3, input="hello").data[0].embedding, dense, atol=1e-6)


def test_a_bigger_answer_than_max_response_bytes_is_400(m3_config):
    app, _ = build_app(m3_config, max_response_bytes=64 * 1024)
    with LiveServer(app) as live:
        wait_ready(live.url)
        long_text = " ".join(TEXTS * 20)  # cut to 128 tokens: 127 x 32 floats = 16 KiB of multivector each
        items = [{"text": long_text}] * 8
        response = post(live.url, M3, {"items": items, "params": {"output_types": ["multivector"]}})
        assert response.status_code == 400
        assert "max_response_bytes" in response.json()["detail"]["message"]
        assert post(live.url, M3, {"items": items[:2], "params": {"output_types": ["multivector"]}}).status_code == 200
        assert post(live.url, M3, {"items": items, "params": {"output_types": ["dense"]}}).status_code == 200


def test_pending_answers_past_the_bound_are_503(m3_config):
    """Answers pending past the bound refuse a new request with 503 until they are sent. The pending answer is
    set on the model's counter (holding a real forward open for the length of a test would need a gate in
    the backend); the request and its refusal are real."""
    app, model = build_app(m3_config, max_response_bytes=32 * 1024, max_pending_response_bytes=40 * 1024)
    with LiveServer(app) as live:
        wait_ready(live.url)
        body = {"items": [{"text": " ".join(TEXTS * 20)}], "params": {"output_types": ["multivector"]}}
        model.answers.pending = 30 * 1024  # as if an answer of 30 KiB were still being made
        response = post(live.url, M3, body)
        assert response.status_code == 503 and response.headers.get("Retry-After")
        assert response.json()["detail"]["code"] == "QUEUE_FULL"
        model.answers.pending = 0
        assert post(live.url, M3, body).status_code == 200
        assert model.answers.pending == 0


def test_sparse_only_model_on_openai_is_400_with_the_reason(tmp_path):
    from openai import BadRequestError, OpenAI

    from server.config import AdapterOptions, ModelConfig
    from tests.multi_output_assets import build_splade

    folder = build_splade(tmp_path / "splade")
    config = ModelConfig(name="test/splade", model_path=str(folder), backend="torch", dtype="float32",
                         max_seq_len=48, adapters=AdapterOptions(lora_paths=MappingProxyType({})))
    app, _ = build_app(config)
    with LiveServer(app) as live:
        wait_ready(live.url)
        with pytest.raises(BadRequestError) as caught:
            OpenAI(base_url=f"{live.url}/v1", api_key="unused").embeddings.create(model="test/splade", input="x")
        assert "returns dense vectors only" in str(caught.value)
        assert post(live.url, "test/splade", {"items": [{"text": "x"}]}).status_code == 400  # default is dense
        with SIEClient(live.url) as client:
            result = client.encode("test/splade", Item(text="the court held"), output_types=["sparse"])
        assert len(result["sparse"]["indices"]) > 0
        info = httpx.get(f"{live.url}/v1/models/test/splade").json()
        assert info["outputs"] == ["sparse"] and set(info["dims"]) == {"sparse"}


def test_concurrent_requests_of_different_outputs_and_adapters(m3_config):
    """Requests asking for different outputs under different adapters, sent at once, each get what they asked
    for, equal to the same request sent alone. (That such rows share one forward is asserted without timing
    in tests/unit/test_batching.py and tests/backends/test_output_heads.py.)"""
    app, _ = build_app(m3_config, max_batch_wait_ms=200)
    asks = [(None, ["dense"]), ("legal", ["sparse"]), ("medical", ALL), (None, ["multivector"]), ("legal", ALL)]
    with LiveServer(app) as live:
        wait_ready(live.url)

        async def send_all():
            async with httpx.AsyncClient(timeout=60) as client:
                return await asyncio.gather(*(client.post(
                    f"{live.url}/v1/encode/{M3}", headers={"Accept": "application/json"},
                    json={"items": [{"text": TEXTS[i % 3]}], "params": {"output_types": kinds,
                                                                         "options": {"lora_id": lora}}})
                    for i, (lora, kinds) in enumerate(asks)))
        together = asyncio.run(send_all())
        for i, ((lora, kinds), response) in enumerate(zip(asks, together)):
            alone = post(live.url, M3, {"items": [{"text": TEXTS[i % 3]}],
                                        "params": {"output_types": kinds, "options": {"lora_id": lora}}}).json()
            got = response.json()["items"][0]
            assert outputs(got) == set(kinds)
            for kind in kinds:
                if kind == "sparse":
                    assert got[kind]["indices"] == alone["items"][0][kind]["indices"]
                np.testing.assert_allclose(got[kind]["values"], alone["items"][0][kind]["values"], atol=1e-5)
