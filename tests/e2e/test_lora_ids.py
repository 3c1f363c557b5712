"""One text under several adapters in one call (`options.lora_ids`): every copy equals the single-adapter
answer, the copies share one forward, the SIE SDK still reads the answer, and bad lists are 4xx."""

from __future__ import annotations

import dataclasses
import shutil

import httpx
import numpy as np
import pytest
from sie_sdk import SIEClient
from sie_sdk.types import Item

from tests.conftest import DEMO_MODEL, LiveServer, build_app, poll_while_loading

JSON = {"Accept": "application/json"}
ENCODE = f"/v1/encode/{DEMO_MODEL}"
TEXTS = ["statute of limitations for a lease", "dosage of ibuprofen for children"]


@pytest.fixture(scope="module")
def many(demo_config, tmp_path_factory, demo_dirs):
    """Its own server (no other traffic, so the batches counted are this test's), with a root to hot-load from."""
    from server.demo_assets import ensure_builtin

    root = tmp_path_factory.mktemp("roots")
    shutil.copytree(ensure_builtin("builtin:qwen3-tiny/dynamic") / "retail", root / "retail")
    app, served = build_app(dataclasses.replace(demo_config, lora_roots=(str(root),)), max_items_per_request=8,
                            max_queue_items=64)
    with LiveServer(app) as live:
        live.served = served
        yield live


def post(url, options, texts=TEXTS, model=DEMO_MODEL):
    body = {"items": [{"id": f"t{i}", "text": t} for i, t in enumerate(texts)], "params": {"options": options}}
    return poll_while_loading(lambda: httpx.post(f"{url}/v1/encode/{model}", json=body, headers=JSON, timeout=60))


def dense(item) -> np.ndarray:
    return np.asarray(item["dense"]["values"])


def test_each_copy_is_the_answer_of_its_own_adapter_from_one_forward(many):
    names = ["legal", None, "finance"]
    single = {name: [dense(item) for item in post(many.url, {"lora_id": name} if name else {}).json()["items"]]
              for name in names}
    before = many.served.batcher.batches_run
    answer = post(many.url, {"lora_ids": names})
    assert answer.status_code == 200, answer.text
    assert many.served.batcher.batches_run == before + 1  # six rows (two texts x three adapters), one forward
    assert answer.headers["X-Adapter"] == "legal,base,finance"
    for index, item in enumerate(answer.json()["items"]):
        assert item["id"] == f"t{index}"
        assert np.abs(dense(item) - single["legal"][index]).max() <= 1e-6  # the first adapter's on top
        assert [copy["adapter"] for copy in item["adapters"]] == names
        for name, copy in zip(names, item["adapters"]):
            assert np.abs(dense(copy) - single[name][index]).max() <= 1e-6
            assert copy["provenance"]["adapter"] == name
            assert (copy["provenance"]["adapter_digest"] is None) == (name is None)
    assert answer.json()["usage"]["input_tokens"] > 0


def test_the_sie_sdk_reads_the_answer_and_gets_the_first_adapters_vectors(many):
    with SIEClient(many.url) as client:
        results = client.encode(DEMO_MODEL, [Item(text=t) for t in TEXTS], options={"lora_ids": ["finance", "legal"]})
        alone = client.encode(DEMO_MODEL, [Item(text=t) for t in TEXTS], options={"lora_id": "finance"})
    assert len(results) == len(TEXTS)
    for got, want in zip(results, alone):
        assert np.abs(got["dense"] - want["dense"]).max() <= 1e-6


def test_an_adapter_loaded_on_first_use_is_waited_for_like_one_named_alone(many):
    answer = post(many.url, {"lora_ids": ["retail", "legal"]})
    assert answer.status_code == 200, answer.text
    alone = post(many.url, {"lora_id": "retail"}).json()["items"][0]
    assert np.abs(dense(answer.json()["items"][0]["adapters"][0]) - dense(alone)).max() <= 1e-6


@pytest.mark.parametrize("options, model, words", [
    ({"lora_ids": []}, DEMO_MODEL, "one or more distinct adapters"),
    ({"lora_ids": ["legal", "legal"]}, DEMO_MODEL, "one or more distinct adapters"),
    ({"lora_ids": ["legal", ""]}, DEMO_MODEL, "one or more distinct adapters"),
    ({"lora_ids": "legal"}, DEMO_MODEL, "must be a list"),
    ({"lora_ids": ["legal"], "lora_id": "finance"}, DEMO_MODEL, "give one"),
    ({"lora_ids": ["legal", "nope"]}, DEMO_MODEL, "unknown lora_id 'nope'"),
    ({"lora_ids": ["legal"]}, f"{DEMO_MODEL}:finance", "name the adapters once"),
    ({"lora_ids": [None, "legal", "medical", "finance", "retail"]}, DEMO_MODEL, "per request"),
    ({"lora_ids": [f"a{i}" for i in range(9)]}, DEMO_MODEL, "max_loras_per_batch"),
])
def test_a_bad_list_is_a_400_that_says_why(many, options, model, words):
    answer = post(many.url, options, model=model)
    assert answer.status_code == 400 and words in answer.json()["detail"]["message"], answer.text


def test_the_openai_route_stays_one_model_per_call(many):
    answer = httpx.post(f"{many.url}/v1/embeddings", json={"model": DEMO_MODEL, "input": "x", "lora_ids": ["legal"]})
    assert answer.status_code == 400 and "lora_ids" in answer.text
