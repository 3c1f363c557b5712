"""Clients that cannot send options: adapters and profiles as model ids (`<model>:<adapter|profile>`) on the
SIE routes through the real SIE SDK and a TypeScript-shaped msgpack request, `params.is_query`,
`options.output_dtype`, the model lists (SIE variants, capabilities, OpenAI's shape beside them) and the
answers for routes this server does not serve."""

from __future__ import annotations

import httpx
import msgpack
import numpy as np
import pytest
from openai import OpenAI
from sie_sdk import SIEClient
from sie_sdk._msgpack import unpackb as sdk_unpackb
from sie_sdk.client.errors import RequestError
from sie_sdk.types import Item

from tests.conftest import DEMO_MODEL

TEXT = "Is a verbal agreement binding?"
JSON = {"Accept": "application/json"}


def sdk_vector(url, model, **kwargs):
    return SIEClient(url).encode(model, Item(text=TEXT), **kwargs)["dense"]


@pytest.mark.parametrize(("suffix", "options"), [("legal", {"profile": "legal"}),
                                                 ("finance", {"lora_id": "finance"})])
def test_sdk_model_id_equals_options(demo_server, suffix, options):
    """`legal` is a profile (it wins over the adapter of that name); `finance` is only an adapter."""
    url, model_id = demo_server.url, f"{DEMO_MODEL}:{suffix}"
    for is_query in (False, True):
        by_id = sdk_vector(url, model_id, is_query=is_query)
        by_options = sdk_vector(url, DEMO_MODEL, options=options, is_query=is_query)
        assert np.abs(by_id - by_options).max() <= 1e-7
    assert np.abs(by_id - sdk_vector(url, DEMO_MODEL)).max() > 1e-3  # never base vectors
    info = SIEClient(url).get_model(model_id)
    assert info["name"] == model_id and info["state"] == "loaded" and info["dims"] == {"dense": 64}
    assert info["capabilities"]["lora_adapters"] == [suffix]


def test_typescript_shaped_request(demo_server):
    """What SIE's TypeScript SDK sends: msgpack, the model id URL-encoded, `isQuery` as params.is_query."""
    for model_id, options in (("demo%2Fqwen3-tiny:legal", {"profile": "legal"}),
                              ("demo%2Fqwen3-tiny%3Afinance", {"lora_id": "finance"})):
        body = msgpack.packb({"items": [{"text": TEXT}], "params": {"is_query": True, "output_types": ["dense"]}})
        response = httpx.post(f"{demo_server.url}/v1/encode/{model_id}", content=body,
                              headers={"Content-Type": "application/msgpack"})
        assert response.status_code == 200, response.text
        ours = np.asarray(sdk_unpackb(response.content, numeric_arrays=True)["items"][0]["dense"]["values"])
        python_sdk = sdk_vector(demo_server.url, DEMO_MODEL, options=options, is_query=True)
        assert np.abs(ours - python_sdk).max() <= 1e-7


def encode(url, model, params):
    return httpx.post(f"{url}/v1/encode/{model}", json={"items": [{"text": TEXT}], "params": params},
                      headers=JSON, timeout=30)


def dense(response) -> np.ndarray:
    assert response.status_code == 200, response.text
    return np.asarray(response.json()["items"][0]["dense"]["values"])


def test_params_is_query_and_output_dtype(demo_server):
    url = demo_server.url
    via_params = dense(encode(url, DEMO_MODEL, {"is_query": True, "options": {"lora_id": "legal"}}))
    via_options = dense(encode(url, DEMO_MODEL, {"options": {"is_query": True, "lora_id": "legal"}}))
    document = dense(encode(url, DEMO_MODEL, {"options": {"lora_id": "legal"}}))
    assert np.array_equal(via_params, via_options) and np.abs(via_params - document).max() > 1e-3
    clash = encode(url, DEMO_MODEL, {"is_query": True, "options": {"is_query": False}})
    assert clash.status_code == 400 and "disagree" in clash.json()["detail"]["message"]
    as_int8 = encode(url, DEMO_MODEL, {"options": {"output_dtype": "int8"}})
    assert as_int8.json()["items"][0]["dense"]["dtype"] == "int8"
    params_win = encode(url, DEMO_MODEL, {"output_dtype": "float16", "options": {"output_dtype": "int8"}})
    assert params_win.json()["items"][0]["dense"]["dtype"] == "float16"


def test_model_id_and_options_that_disagree(demo_server):
    url = demo_server.url
    for model, options in ((f"{DEMO_MODEL}:legal", {"lora_id": "medical"}),
                           (f"{DEMO_MODEL}:legal", {"profile": "medical"}),
                           (f"{DEMO_MODEL}:finance", {"lora_id": "legal"})):
        response = encode(url, model, {"options": options})
        message = response.json()["detail"]["message"]
        assert response.status_code == 400 and model in message and list(options.values())[0] in message
    same = encode(url, f"{DEMO_MODEL}:finance", {"options": {"lora_id": "finance"}})
    assert same.status_code == 200
    unknown = encode(url, f"{DEMO_MODEL}:nope", {})
    assert unknown.status_code == 400 and "'nope'" in unknown.json()["detail"]["message"]
    assert encode(url, "other-model:legal", {}).status_code == 404


def test_model_ids_are_metered_by_model_and_adapter(demo_server):
    dense(encode(demo_server.url, f"{DEMO_MODEL}:finance", {}))
    metrics = httpx.get(demo_server.url + "/metrics").text
    assert f'sie_requests_total{{adapter="finance",api="sie",model="{DEMO_MODEL}",status="200"}}' in metrics


def test_model_lists(demo_server):
    url = demo_server.url
    listed = SIEClient(url).list_models()
    names = [m["name"] for m in listed]
    assert names == [DEMO_MODEL] + [f"{DEMO_MODEL}:{s}" for s in ("legal", "medical", "finance")]
    base = listed[0]
    assert base["capabilities"] == {"lora_adapters": ["finance", "legal", "medical"],
                                    "profile_lora_adapters": {"legal": ["legal"], "medical": ["medical"]}}
    legal = listed[1]
    assert legal["profiles"] == {"default": {"instruction": "Given a legal query, retrieve relevant case law",
                                             "lora_id": "legal", "is_default": True}}
    assert legal["capabilities"]["profile_lora_adapters"] == {"default": ["legal"]}
    assert all(m["state"] == "loaded" and m["dims"] == {"dense": 64} for m in listed)
    ids = [m.id for m in OpenAI(base_url=url + "/v1", api_key="unused").models.list()]
    assert ids == [DEMO_MODEL] + [f"{DEMO_MODEL}:{s}" for s in ("finance", "legal", "medical")]
    assert httpx.get(url + "/openai/v1/models").json() == {"object": "list", "data": httpx.get(
        url + "/v1/models").json()["data"]}
    missing = httpx.get(f"{url}/v1/models/{DEMO_MODEL}:nope")
    assert missing.status_code == 404 and missing.json()["detail"]["code"] == "MODEL_NOT_FOUND"


@pytest.mark.parametrize("path", ["/v1/score/BAAI/bge-reranker-v2-m3", "/v1/extract/gliner", "/v1/chat/completions"])
def test_routes_not_served(demo_server, path):
    response = httpx.post(demo_server.url + path, json={"items": [{"text": "a"}]})
    assert response.status_code == 404
    detail = response.json()["detail"]
    assert detail["code"] == "NOT_FOUND" and "embedding models only" in detail["message"]
    assert "POST /v1/encode/{model}" in detail["message"]


def test_sdk_score_says_what_is_wrong(demo_server):
    with pytest.raises(RequestError, match="reranking"):
        SIEClient(demo_server.url).score(DEMO_MODEL, Item(text="q"), [Item(text="a")])


def test_openai_errors_name_openai_parameters(demo_server):
    client = OpenAI(base_url=demo_server.url + "/v1", api_key="unused", max_retries=0)
    import openai

    with pytest.raises(openai.BadRequestError) as dims:
        client.embeddings.create(model=DEMO_MODEL, input="x", dimensions=3)
    error = dims.value.body
    assert error["param"] == "dimensions" and error["message"].startswith("dimensions 3") and "dims" not in \
        error["message"].replace("dimensions", "")
    with pytest.raises(openai.NotFoundError) as adapter:  # OpenAI's answer for a model it has not: 404, no param
        client.embeddings.create(model=f"{DEMO_MODEL}:nope", input="x")
    body = adapter.value.body
    assert body["code"] == "model_not_found" and body["param"] is None and "lora_id" not in body["message"]
    assert f"'{DEMO_MODEL}:nope' does not exist" in body["message"] and "profiles: legal, medical" in body["message"]
    with pytest.raises(openai.NotFoundError) as model:
        client.embeddings.create(model="org/other", input="x")
    assert model.value.body["code"] == "model_not_found" and model.value.body["param"] is None
    with pytest.raises(openai.BadRequestError) as tokens:
        client.embeddings.create(model=DEMO_MODEL, input=[[1, 2, 3]])
    assert tokens.value.body["param"] == "input"
    with pytest.raises(openai.BadRequestError) as field:
        client.embeddings.create(model=DEMO_MODEL, input="x", encoding_format="hex")
    assert field.value.body["param"] == "encoding_format"
