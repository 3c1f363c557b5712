"""The HTTP API over a real uvicorn server on loopback: formats, headers, error table, batch invariance."""

from __future__ import annotations

import asyncio
import dataclasses
import threading

import httpx
import msgpack
import numpy as np
import pytest
from sie_sdk._msgpack import unpackb as sdk_unpackb

from server.backends.torch_backend import TorchBackend
from tests.conftest import DEMO_MODEL, LiveServer, build_app, make_gated_backend, wait_ready

JSON = {"Accept": "application/json"}
ENCODE = f"/v1/encode/{DEMO_MODEL}"


def encode_json(url, body, headers=None):
    return httpx.post(url + ENCODE, json=body, headers={**JSON, **(headers or {})}, timeout=30)


def vectors_of(response) -> np.ndarray:
    return np.array([item["dense"]["values"] for item in response.json()["items"]], dtype=np.float32)


def assert_error(response, status, code, *fragments):
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    assert detail["code"] == code, detail
    for fragment in fragments:
        assert fragment in detail["message"], detail["message"]


def test_json_response_shape_and_headers(demo_server):
    response = encode_json(demo_server.url, {"items": [{"id": "a", "text": "hello"}, {"text": "world"}]},
                           headers={"X-Request-ID": "req-123"})
    assert response.status_code == 200
    body = response.json()
    assert body["model"] == DEMO_MODEL
    assert [item.get("id") for item in body["items"]] == ["a", None]
    dense = body["items"][0]["dense"]
    assert dense["dims"] == 64 and dense["dtype"] == "float32" and len(dense["values"]) == 64
    assert abs(np.linalg.norm(dense["values"]) - 1) < 1e-5
    assert body["usage"]["input_tokens"] > 2
    assert set(body["timing"]) == {"total_ms", "queue_ms", "tokenization_ms", "inference_ms", "postprocessing_ms"}
    assert response.headers["X-Request-ID"] == "req-123"
    for header in ("X-Queue-Time", "X-Inference-Time", "X-Total-Time"):
        float(response.headers[header])


def test_msgpack_request_and_default_response(demo_server):
    body = msgpack.packb({"items": [{"text": "hello"}], "params": {"options": {"lora_id": "legal"}}})
    response = httpx.post(demo_server.url + ENCODE, content=body, headers={"Content-Type": "application/msgpack"})
    assert response.status_code == 200 and response.headers["content-type"] == "application/msgpack"
    assert response.headers["X-Request-ID"]
    decoded = sdk_unpackb(response.content, numeric_arrays=True)
    values = decoded["items"][0]["dense"]["values"]
    assert isinstance(values, np.ndarray) and values.dtype == np.float32 and values.shape == (64,)
    json_values = vectors_of(encode_json(demo_server.url, {"items": [{"text": "hello"}],
                                                           "params": {"options": {"lora_id": "legal"}}}))
    np.testing.assert_array_equal(values, json_values[0])


def test_dims_and_dtypes(demo_server):
    full = vectors_of(encode_json(demo_server.url, {"items": [{"text": "hello"}]}))[0]
    short = encode_json(demo_server.url, {"items": [{"text": "hello"}], "params": {"options": {"dims": 32}}}).json()
    values = np.array(short["items"][0]["dense"]["values"])
    assert short["items"][0]["dense"]["dims"] == 32
    np.testing.assert_allclose(values, full[:32] / np.linalg.norm(full[:32]), atol=1e-6)
    int8 = encode_json(demo_server.url, {"items": [{"text": "hello"}], "params": {"output_dtype": "int8"}}).json()
    assert int8["items"][0]["dense"]["dtype"] == "int8"
    np.testing.assert_array_equal(int8["items"][0]["dense"]["values"], np.rint(full * 127).astype(np.int8))


def test_query_template_applies_only_to_queries(demo_server):
    def one(options, instruction=None):
        params = {"options": options, **({"instruction": instruction} if instruction else {})}
        return vectors_of(encode_json(demo_server.url, {"items": [{"text": "contract law"}], "params": params}))[0]

    doc = one({})
    assert np.abs(doc - one({}, instruction="ignored for documents")).max() == 0
    query = one({"is_query": True})
    assert np.abs(query - doc).max() > 1e-3
    assert np.abs(one({"is_query": True}, instruction="other task") - query).max() > 1e-3


@pytest.mark.parametrize("body, fragments", [
    ({"items": []}, ["items"]),
    ({"itemz": [{"text": "a"}]}, ["items", "Field required"]),
    ({"items": [{"id": "x"}]}, ["items.0.text"]),
    ({"items": [{"text": 5}]}, ["items.0.text"]),
    ({"items": [{"text": ""}]}, ["must not be empty"]),
    ({"items": [{"text": "a\x00b"}]}, ["NUL"]),
    ({"items": "text"}, ["items"]),
    ([{"text": "a"}], ["object"]),
    ({"items": [{"text": "a"}], "params": {"options": {"profile": "tax"}}},
     ["unknown profile 'tax'", "legal, medical"]),
    ({"items": [{"text": "a"}], "params": {"options": {"lora_id": "tax"}}},
     ["unknown lora_id 'tax'", "finance, legal, medical"]),
    ({"items": [{"text": "a"}], "params": {"output_types": ["sparse"]}},
     ["does not produce 'sparse'", "it produces: 'dense'"]),
    ({"items": [{"text": "a"}], "params": {"output_dtype": "int4"}}, ["params.output_dtype", "'ubinary'"]),
    ({"items": [{"text": "a"}], "params": {"options": {"dims": 4096}}}, ["dims 4096 is out of range"]),
    ({"items": [{"text": "a"}], "params": {"options": "legal"}}, ["params.options"]),
])
def test_invalid_input_table(demo_server, body, fragments):
    assert_error(encode_json(demo_server.url, body), 400, "INVALID_INPUT", *fragments)


def test_malformed_bodies(demo_server):
    bad_json = httpx.post(demo_server.url + ENCODE, content=b"{oops", headers={"Content-Type": "application/json"})
    assert_error(bad_json, 400, "INVALID_INPUT", "malformed JSON")
    bad_msgpack = httpx.post(demo_server.url + ENCODE, content=b"\xc1\xc1",
                             headers={"Content-Type": "application/msgpack"})
    assert_error(bad_msgpack, 400, "INVALID_INPUT", "malformed msgpack")
    body = b'{"items": [{"text": "x"}]}'
    for kind in ("text/plain", "application/x-www-form-urlencoded"):  # curl -d without -H sends the second
        refused = httpx.post(demo_server.url + ENCODE, content=body, headers={"Content-Type": kind})
        assert_error(refused, 415, "UNSUPPORTED_MEDIA_TYPE", "application/json or application/msgpack")
    for kind in ("application/json; charset=utf-8", "application/vnd.api+json", None):  # no type: JSON
        headers = {**JSON, **({"Content-Type": kind} if kind else {})}
        assert httpx.post(demo_server.url + ENCODE, content=body, headers=headers).status_code == 200, kind


def test_item_ids_come_back_as_strings(demo_server):
    answer = encode_json(demo_server.url, {"items": [{"id": 7, "text": "x"}, {"id": "b", "text": "y"}, {"text": "z"}]})
    assert [item.get("id") for item in answer.json()["items"]] == ["7", "b", None]


def test_input_too_long_with_error_policy(demo_server):
    body = {"items": [{"text": "word " * 2000}], "params": {"options": {"overflow_policy": "error"}}}
    assert_error(encode_json(demo_server.url, body), 400, "INPUT_TOO_LONG", "limit of 512")
    truncated = encode_json(demo_server.url, {"items": [{"text": "word " * 2000}]})
    assert truncated.status_code == 200 and truncated.json()["usage"]["input_tokens"] == 512


def test_model_not_found_and_unknown_route(demo_server):
    missing = httpx.post(demo_server.url + "/v1/encode/org/other", json={"items": [{"text": "a"}]})
    assert_error(missing, 404, "MODEL_NOT_FOUND", "org/other", DEMO_MODEL)
    assert_error(httpx.get(demo_server.url + "/nope"), 404, "NOT_FOUND")


def test_health_ready_and_models(demo_server):
    assert httpx.get(demo_server.url + "/healthz").json() == {"status": "ok"}
    assert httpx.get(demo_server.url + "/readyz").status_code == 200
    model, *variants = httpx.get(demo_server.url + "/v1/models").json()["models"]
    assert [v["name"] for v in variants] == [f"{DEMO_MODEL}:{s}" for s in ("legal", "medical", "finance")]
    assert model["name"] == DEMO_MODEL and model["dims"] == {"dense": 64} and model["state"] == "loaded"
    assert [lora["name"] for lora in model["loras"]] == ["finance", "legal", "medical"]
    assert all(lora["state"] == "ready" and lora["pinned"] and lora["rank"] == 8 for lora in model["loras"])
    assert model["profiles"]["legal"]["lora_id"] == "legal" and model["max_sequence_length"] == 512
    one = httpx.get(demo_server.url + f"/v1/models/{DEMO_MODEL}").json()
    assert one["name"] == DEMO_MODEL
    startup = one["startup"]  # where the start-up time went (the CPU's eager path compiles nothing)
    assert list(startup["phases_s"]) == ["tokenizer", "weights", "warm_up", "adapters"]
    assert startup["ready_s"] >= sum(startup["phases_s"].values()) * 0.99
    assert startup["compiles"] == 0 and startup["cuda_graphs"] == {"captured": 0, "planned": 0}


def test_concurrent_mixed_requests_equal_sequential(demo_server):
    adapters = [None, "legal", "medical", "finance"]
    bodies = [{"items": [{"text": f"request {i} about topic {i % 5}"}, {"text": "shared text"}],
               "params": {"options": {"lora_id": adapters[i % 4]} if adapters[i % 4] else {}}}
              for i in range(32)]

    async def concurrent():
        async with httpx.AsyncClient(base_url=demo_server.url, headers=JSON, timeout=60) as client:
            return await asyncio.gather(*(client.post(ENCODE, json=b) for b in bodies))

    together = [vectors_of(r) for r in asyncio.run(concurrent())]
    for body, mixed in zip(bodies, together):
        alone = vectors_of(encode_json(demo_server.url, body))
        assert np.abs(mixed - alone).max() <= 1e-5
    assert np.abs(together[1][1] - together[0][1]).max() > 1e-3  # an adapter never gets base vectors


def test_http_vectors_match_peft(demo_server, peft_reference, demo_dirs):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(demo_dirs["model"])
    text = "The court held that the contract was void."
    ids = tokenizer(text)["input_ids"] + [151643]
    for adapter in (None, "legal", "medical", "finance"):
        options = {"lora_id": adapter} if adapter else {}
        ours = vectors_of(encode_json(demo_server.url, {"items": [{"text": text}], "params": {"options": options}}))[0]
        reference = peft_reference(ids, adapter)
        assert np.abs(ours - reference / np.linalg.norm(reference)).max() <= 1e-5, adapter


# -- error-table rows that need a server in a particular state -------------------------------------

def no_adapters(demo_config):
    return dataclasses.replace(demo_config, profiles={}, adapters=dataclasses.replace(demo_config.adapters,
                                                                                      lora_paths={}))


def test_unauthorized(demo_config):
    app, _ = build_app(no_adapters(demo_config), api_keys=("s3cret",))
    with LiveServer(app) as live:
        assert_error(encode_json(live.url, {"items": [{"text": "a"}]}), 401, "UNAUTHORIZED")
        wrong = encode_json(live.url, {"items": [{"text": "a"}]}, headers={"Authorization": "Bearer nope"})
        assert_error(wrong, 401, "UNAUTHORIZED")
        ok = encode_json(live.url, {"items": [{"text": "a"}]}, headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200
        assert httpx.get(live.url + "/healthz").status_code == 200
        assert httpx.get(live.url + "/readyz").status_code == 200


def test_body_over_limit_is_413(demo_config):
    app, _ = build_app(no_adapters(demo_config), max_body_bytes=2048)
    with LiveServer(app) as live:
        response = encode_json(live.url, {"items": [{"text": "x" * 4000}]})
        assert_error(response, 413, "INPUT_TOO_LONG", "2048")


def test_too_many_items(demo_config):
    app, _ = build_app(no_adapters(demo_config), max_items_per_request=3)
    with LiveServer(app) as live:
        response = encode_json(live.url, {"items": [{"text": "a"}] * 4})
        assert_error(response, 400, "INVALID_INPUT", "limit of 3 items")


class SlowStartBackend(TorchBackend):
    """The real torch backend whose start waits for the test: the only way to hold 'loading' on demand."""

    release = threading.Event()

    async def start(self, slots):
        await asyncio.to_thread(self.release.wait, 30)
        await super().start(slots)


def test_model_loading_then_ready(demo_config):
    config = no_adapters(demo_config)
    from server.api.app import create_app
    from server.config import ServerSettings
    from server.local_model import LocalModel

    settings = ServerSettings()
    served = LocalModel(config, settings, SlowStartBackend(config, settings, "cpu"))
    with LiveServer(create_app({config.name: served}, settings)) as live:
        response = encode_json(live.url, {"items": [{"text": "a"}]})
        assert_error(response, 503, "MODEL_LOADING")
        assert response.headers["Retry-After"] == "5"
        assert httpx.get(live.url + "/readyz").status_code == 503
        SlowStartBackend.release.set()
        wait_ready(live.url)
        assert encode_json(live.url, {"items": [{"text": "a"}]}).status_code == 200


def test_model_load_failed(demo_config, tmp_path):
    config = dataclasses.replace(no_adapters(demo_config), model_path=str(tmp_path / "missing-model"))
    app, served = build_app(config)
    with LiveServer(app) as live:
        response = encode_json(live.url, {"items": [{"text": "a"}]})
        assert_error(response, 502, "MODEL_LOAD_FAILED", "missing-model")
        assert "Retry-After" not in response.headers
        assert httpx.get(live.url + "/readyz").status_code == 503
        assert httpx.get(live.url + "/v1/models").json()["models"][0]["state"] == "failed"


def test_queue_full(demo_config):
    config = no_adapters(demo_config)
    from server.config import ServerSettings

    backend = make_gated_backend()(config, ServerSettings(), "cpu")
    backend.hold.set()
    app, served = build_app(config, backend=backend, max_queue_items=4, max_items_per_request=4,
                            max_batch_tokens=8)

    async def scenario(url):
        async with httpx.AsyncClient(base_url=url, headers=JSON, timeout=60) as client:
            first = asyncio.create_task(client.post(ENCODE, json={"items": [{"text": "one"}]}))
            while not backend.entered.is_set():
                await asyncio.sleep(0.01)  # the first row is in the (blocked) forward now
            held = asyncio.create_task(client.post(ENCODE, json={"items": [{"text": "a"}] * 4}))
            while served.batcher.queue_depth < 4:
                await asyncio.sleep(0.01)
            refused = await client.post(ENCODE, json={"items": [{"text": "b"}]})
            backend.hold.clear()
            return refused, await first, await held

    with LiveServer(app) as live:
        refused, first, held = asyncio.run(scenario(live.url))
        assert_error(refused, 503, "QUEUE_FULL")
        assert refused.headers["Retry-After"] == "1"
        assert first.status_code == 200 and held.status_code == 200
