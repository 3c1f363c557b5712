"""Ecosystem surface against `launch.py` on loopback with an API key: the real openai client, the real
SIE SDK, Prometheus text parsed by prometheus-client, request ids in JSON access logs, OpenAPI."""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import subprocess
import sys
import time

import httpx
import numpy as np
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sie_sdk import SIEClient
from sie_sdk.client.errors import RequestError
from sie_sdk.types import Item

from tests.conftest import DEMO_MODEL, DEMO_YAML, REPO, free_port, launched_demo, wait_ready

KEY = "test-key-123"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def server(demo_dirs, tmp_path_factory):
    port = free_port()
    log_path = tmp_path_factory.mktemp("logs") / "server.log"
    env = {**os.environ, "SIE_API_KEYS": f"other-key,{KEY}"}
    with open(log_path, "w") as log_file:
        process = subprocess.Popen([sys.executable, "launch.py", "--config", str(DEMO_YAML), "--port", str(port),
                                    "--log-format", "json"], cwd=REPO, stdout=log_file, stderr=subprocess.STDOUT,
                                   env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, timeout=120, process=process)
        yield url, log_path
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


@pytest.fixture(scope="module")
def oai(server):
    return openai.OpenAI(base_url=server[0] + "/v1", api_key=KEY, max_retries=5)


@pytest.fixture(scope="module")
def sie(server):
    with SIEClient(server[0], api_key=KEY) as client:
        yield client


def test_openai_matches_sie_vectors(oai, sie):
    text = "The court held that the contract was void."
    for suffix, options in (("", {}), (":legal", {"lora_id": "legal"}), (":finance", {"lora_id": "finance"})):
        response = oai.embeddings.create(model=DEMO_MODEL + suffix, input=text)  # client default: base64
        reference = sie.encode(DEMO_MODEL, Item(text=text), options=options)["dense"]
        np.testing.assert_allclose(np.array(response.data[0].embedding, dtype=np.float32), reference, atol=1e-6)
        assert response.model == DEMO_MODEL + suffix


def test_openai_profile_suffix_and_float_format(oai, sie):
    response = oai.embeddings.create(model=f"{DEMO_MODEL}:medical", input=["a", "b c"], encoding_format="float")
    assert [d.index for d in response.data] == [0, 1]
    via_lora = sie.encode(DEMO_MODEL, [Item(text="a"), Item(text="b c")], options={"lora_id": "medical"})
    for datum, reference in zip(response.data, via_lora):
        np.testing.assert_allclose(datum.embedding, reference["dense"], atol=1e-6)
    query = oai.embeddings.create(model=f"{DEMO_MODEL}:medical", input="a", extra_body={"is_query": True})
    assert np.abs(np.array(query.data[0].embedding) - np.array(response.data[0].embedding)).max() > 1e-3


def test_openai_dimensions_usage_and_base64(server, oai, sie):
    response = oai.embeddings.create(model=DEMO_MODEL, input="hello world", dimensions=32)
    vector = np.array(response.data[0].embedding)
    assert vector.shape == (32,) and abs(np.linalg.norm(vector) - 1) < 1e-5
    tokens = httpx.post(server[0] + f"/v1/encode/{DEMO_MODEL}", json={"items": [{"text": "hello world"}]},
                        headers={**AUTH, "Accept": "application/json"}).json()["usage"]["input_tokens"]
    assert response.usage.prompt_tokens == response.usage.total_tokens == tokens
    raw = httpx.post(server[0] + "/v1/embeddings", headers=AUTH,
                     json={"model": DEMO_MODEL, "input": "hello world", "encoding_format": "base64"}).json()
    decoded = np.frombuffer(base64.b64decode(raw["data"][0]["embedding"]), dtype="<f4")
    np.testing.assert_allclose(decoded, sie.encode(DEMO_MODEL, Item(text="hello world"))["dense"], atol=1e-7)


def test_openai_hot_load_retries_until_vector(oai):
    response = oai.embeddings.create(model=f"{DEMO_MODEL}:travel", input="a trip")
    assert len(response.data[0].embedding) == 64


@pytest.mark.parametrize("kwargs, error, fragment", [
    ({"model": f"{DEMO_MODEL}:astrology", "input": "x"}, openai.NotFoundError, "astrology"),
    ({"model": "org/other", "input": "x"}, openai.NotFoundError, "org/other"),
    ({"model": DEMO_MODEL, "input": [[1, 2, 3]]}, openai.BadRequestError, "token-id input"),
    ({"model": DEMO_MODEL, "input": ""}, openai.BadRequestError, "non-empty"),
    ({"model": DEMO_MODEL, "input": "x", "dimensions": 4}, openai.BadRequestError, "dimensions 4 is out of range"),
])
def test_openai_errors(oai, kwargs, error, fragment):
    with pytest.raises(error) as info:
        oai.embeddings.create(**kwargs)
    body = info.value.body
    assert fragment in body["message"] and body["type"] == "invalid_request_error" and body["code"]


def test_openai_wrong_key(server):
    client = openai.OpenAI(base_url=server[0] + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as info:
        client.embeddings.create(model=DEMO_MODEL, input="x")
    assert info.value.body["type"] == "authentication_error"


def test_sie_sdk_key_required(server, sie):
    assert sie.encode(DEMO_MODEL, Item(text="x"))["dense"].shape == (64,)
    with SIEClient(server[0], api_key="nope") as client, pytest.raises(RequestError) as info:
        client.encode(DEMO_MODEL, Item(text="x"))
    assert info.value.status_code == 401
    plain = httpx.get(server[0] + "/v1/models")
    assert plain.status_code == 401 and plain.json()["detail"]["code"] == "UNAUTHORIZED"
    for path in ("/healthz", "/readyz", "/metrics"):
        assert httpx.get(server[0] + path).status_code == 200, path


def test_metrics_parse(server, sie):
    sie.encode(DEMO_MODEL, [Item(text="m1"), Item(text="m2")], options={"lora_id": "legal"})
    text = httpx.get(server[0] + "/metrics").text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    requests = families["sie_requests"].samples
    assert any(s.labels == {"api": "sie", "model": DEMO_MODEL, "adapter": "legal", "status": "200"} and s.value >= 1
               for s in requests)
    assert any(s.labels["api"] == "openai" and s.labels["status"] == "400" for s in requests)
    items = {(s.labels["model"], s.labels["adapter"]): s.value
             for s in families["sie_items"].samples if s.name == "sie_items_total"}
    assert items[(DEMO_MODEL, "legal")] >= 2
    for name in ("sie_batch_rows", "sie_batch_padded_tokens", "sie_batch_adapters", "sie_queue_seconds",
                 "sie_inference_seconds", "sie_request_seconds"):
        counts = [s.value for s in families[name].samples if s.name.endswith("_count")]
        assert counts and max(counts) >= 1, name
    kinds = {s.labels["kind"]: s.value for s in families["sie_batch_tokens"].samples if s.name.endswith("_total")}
    assert kinds["real"] >= 1 and kinds["padding"] >= 0
    assert [s.value for s in families["sie_resident_adapters"].samples] and \
        families["sie_resident_adapters"].samples[0].value >= 3
    assert families["sie_queue_depth"].samples[0].value == 0
    assert "sie_adapter_loads" in families and "sie_adapter_evictions" in families
    phases = {s.labels["phase"] for s in families["sie_startup_seconds"].samples if s.labels["model"] == DEMO_MODEL}
    assert phases == {"tokenizer", "weights", "adapters", "warm_up", "ready"}
    assert [s.value for s in families["sie_compiles"].samples if s.name == "sie_compiles_total"] == [0]
    assert {s.labels["state"] for s in families["sie_cuda_graphs"].samples} == {"captured", "planned"}


def test_request_id_echoed_and_logged(server):
    url, log_path = server
    response = httpx.post(url + f"/v1/encode/{DEMO_MODEL}", json={"items": [{"text": "x"}]},
                          headers={**AUTH, "X-Request-ID": "trace-42", "Accept": "application/json"})
    assert response.headers["X-Request-ID"] == "trace-42"
    generated = httpx.get(url + "/v1/models", headers=AUTH).headers["X-Request-ID"]  # probes log at DEBUG
    assert len(generated) == 32

    def logged() -> list[dict]:
        return [json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")]

    # The access line is written once the response has been sent: wait for it, never read too early.
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and not any(line.get("request_id") == generated for line in logged()):
        time.sleep(0.05)
    lines = logged()
    access = [line for line in lines if line["logger"] == "server.access"]
    assert any(line["request_id"] == "trace-42" and line["status"] == 200 and line["path"].startswith("/v1/encode")
               for line in access)
    assert any(line["request_id"] == generated for line in access)
    httpx.post(url + "/v1/encode/no/such-model", json={"items": [{"text": "x"}]}, headers=AUTH)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and not any(line.get("error_code") for line in logged()):
        time.sleep(0.05)
    refused = [line for line in logged() if line["logger"] == "server.access" and line["status"] == 404]
    assert refused and refused[-1]["error_code"] == "MODEL_NOT_FOUND"  # a 4xx line names its code
    progress = [line["message"] for line in lines if "[" in line["message"] and "/5]" in line["message"]]
    assert any("[5/5] adapter finance" in message for message in progress)  # start-up progress as log lines


def test_openapi_and_docs(server):
    url = server[0]
    assert httpx.get(url + "/openapi.json").status_code == 401  # not exempt by default
    schema = httpx.get(url + "/openapi.json", headers=AUTH).json()
    encode = schema["paths"]["/v1/encode/{model}"]["post"]
    assert {"application/json", "application/msgpack"} <= set(encode["requestBody"]["content"])
    assert "application/msgpack" in encode["responses"]["200"]["content"]
    assert {"/v1/embeddings", "/v1/models", "/healthz", "/readyz", "/metrics",
            "/v1/models/{model}/loras", "/v1/models/{model}/loras/{name}"} <= set(schema["paths"])
    assert "EncodeRequestIn" in schema["components"]["schemas"] and "EmbeddingsIn" in schema["components"]["schemas"]
    docs = httpx.get(url + "/docs", headers=AUTH)
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    scripts = re.findall(r'(?:src|href)="([^"]+\.(?:js|css))"', docs.text)  # served here: /docs works offline
    assert scripts and all(s.startswith("/") for s in scripts), scripts
    assert all(httpx.get(url + s, headers=AUTH).status_code == 200 for s in scripts)
    root = httpx.get(url + "/", headers=AUTH, follow_redirects=False)
    assert root.status_code in (302, 307) and root.headers["location"] == "/docs"


def test_json_logs_are_json_only(tmp_path, demo_dirs):
    """With --log-format json every line the server writes is one JSON object: the first start (which
    builds the demo assets, with the libraries' progress bars), warnings, uvicorn and the access log."""
    log_path = tmp_path / "server.log"
    env = {**os.environ, "MLE_CACHE_DIR": str(tmp_path / "fresh-cache")}  # a first start: assets are built
    with open(log_path, "w") as log_file, launched_demo("--log-format", "json", log=log_file, env=env,
                                                        timeout=180) as url:
        assert httpx.post(f"{url}/v1/encode/{DEMO_MODEL}", json={"items": [{"text": "x"}]}).status_code == 200
    lines = [line for line in log_path.read_text().splitlines() if line.strip()]
    not_json = []
    for line in lines:
        try:
            json.loads(line)
        except ValueError:
            not_json.append(line)
    assert lines and not_json == [] and not any("\x1b[" in line for line in lines), not_json[:5]
    messages = " ".join(json.loads(line)["message"] for line in lines)
    assert "Uvicorn running" in messages and "ready in" in messages


def test_langchain_openai_embeddings(server, sie):
    """LangChain's OpenAIEmbeddings as the README says to use it: check_embedding_ctx_length=False, so it
    sends text (not tiktoken cl100k ids); the adapter rides in the model name."""
    from langchain_openai import OpenAIEmbeddings

    embeddings = OpenAIEmbeddings(model=f"{DEMO_MODEL}:legal", base_url=server[0] + "/v1", api_key=KEY,
                                  check_embedding_ctx_length=False)
    documents = embeddings.embed_documents(["first document", "second one"])
    query = embeddings.embed_query("contract law")
    for text, vector in zip(["first document", "second one", "contract law"], [*documents, query]):
        reference = sie.encode(DEMO_MODEL, Item(text=text), options={"lora_id": "legal"})["dense"]
        np.testing.assert_allclose(vector, reference, atol=1e-5)


def test_llamaindex_openai_embedding(server, sie):
    """LlamaIndex's OpenAIEmbedding with `model_name=` (its `model=` only accepts OpenAI's own names)."""
    from llama_index.embeddings.openai import OpenAIEmbedding

    embed = OpenAIEmbedding(model_name=f"{DEMO_MODEL}:legal", api_base=server[0] + "/v1", api_key=KEY)
    vectors = embed.get_text_embedding_batch(["first document", "second one"]) + [embed.get_query_embedding("law")]
    for text, vector in zip(["first document", "second one", "law"], vectors):
        reference = sie.encode(DEMO_MODEL, Item(text=text), options={"lora_id": "legal"})["dense"]
        np.testing.assert_allclose(vector, reference, atol=1e-5)
