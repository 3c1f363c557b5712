"""Dynamic adapters over real HTTP: hot-load, one load per burst, failures remembered, LRU eviction
with leases, source refusals, and the admin API."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import shutil
import threading
import time

import httpx
import numpy as np
import pytest
import torch
from sie_sdk import SIEClient
from sie_sdk.client.errors import RequestError
from sie_sdk.types import Item

from server.config import ServerSettings
from tests.conftest import DEMO_MODEL, LiveServer, build_app, make_gated_backend, poll_while_loading

JSON = {"Accept": "application/json"}
ENCODE = f"/v1/encode/{DEMO_MODEL}"
LORAS = f"/v1/models/{DEMO_MODEL}/loras"
TEXT = "a return policy for online orders"


@pytest.fixture(scope="module")
def adapter_root(tmp_path_factory, demo_dirs):
    """retail + travel (good), broken variants, and a symlink that leaves the root."""
    from server.demo_assets import ensure_builtin

    root = tmp_path_factory.mktemp("adapters")
    dynamic = ensure_builtin("builtin:qwen3-tiny/dynamic")
    for name in ("retail", "travel"):
        shutil.copytree(dynamic / name, root / name)
    for name in ("dora", "bigrank", "noconfig", "pickle", "wrongshape"):
        shutil.copytree(dynamic / "retail", root / name)
    config = json.loads((root / "dora" / "adapter_config.json").read_text())
    (root / "dora" / "adapter_config.json").write_text(json.dumps({**config, "use_dora": True}))
    (root / "bigrank" / "adapter_config.json").write_text(json.dumps({**config, "r": 512}))
    (root / "noconfig" / "adapter_config.json").unlink()
    (root / "pickle" / "adapter_model.safetensors").rename(root / "pickle" / "adapter_model.bin")
    from safetensors.torch import load_file, save_file

    tensors = load_file(root / "wrongshape" / "adapter_model.safetensors")
    tensors = {k: torch.zeros(v.shape[0], 2 * v.shape[1]) if "lora_A" in k else v for k, v in tensors.items()}
    save_file(tensors, root / "wrongshape" / "adapter_model.safetensors")
    outside = tmp_path_factory.mktemp("outside")
    shutil.copytree(dynamic / "retail", outside / "retail")
    os.symlink(outside / "retail", root / "escape")
    return root


def dynamic_config(demo_config, root, **changes):
    return dataclasses.replace(demo_config, lora_roots=(str(root),), lora_allow=("allowed-org/*",), **changes)


@pytest.fixture(scope="module")
def dynamic_server(demo_config, adapter_root):
    app, served = build_app(dynamic_config(demo_config, adapter_root))
    with LiveServer(app) as live:
        live.served = served
        yield live


def post(url, lora_id=None, text=TEXT, **kwargs):
    options = {"lora_id": lora_id} if lora_id else {}
    return httpx.post(url + ENCODE, json={"items": [{"text": text}], "params": {"options": options}},
                      headers=JSON, timeout=60, **kwargs)


def until_settled(url, lora_id, timeout=30.0):
    return poll_while_loading(lambda: post(url, lora_id), timeout)


def vector(response):
    assert response.status_code == 200, response.text
    return np.array(response.json()["items"][0]["dense"]["values"], dtype=np.float32)


def peft_vector(model_dir, adapter_dir, text):
    from peft import PeftModel
    from transformers import AutoModel, AutoTokenizer

    ids = AutoTokenizer.from_pretrained(model_dir)(text)["input_ids"] + [151643]
    model = PeftModel.from_pretrained(AutoModel.from_pretrained(model_dir, dtype=torch.float32), adapter_dir).eval()
    with torch.no_grad():
        hidden = model(input_ids=torch.tensor([ids])).last_hidden_state[0, -1].numpy()
    return hidden / np.linalg.norm(hidden)


def test_hot_load_answers_loading_then_the_adapter_vector(dynamic_server, demo_dirs, adapter_root):
    first = post(dynamic_server.url, "retail")
    assert first.status_code == 503 and first.json()["detail"]["code"] == "LORA_LOADING"
    assert first.headers["Retry-After"] == "1"
    retail = vector(until_settled(dynamic_server.url, "retail"))
    base, legal = vector(post(dynamic_server.url)), vector(post(dynamic_server.url, "legal"))
    assert np.abs(retail - base).max() > 1e-2 and np.abs(retail - legal).max() > 1e-2
    reference = peft_vector(demo_dirs["model"], adapter_root / "retail", TEXT)
    assert np.abs(retail - reference).max() <= 1e-5
    (entry,) = [e for e in httpx.get(dynamic_server.url + LORAS).json()["loras"] if e["name"] == "retail"]
    assert entry["state"] == "ready" and not entry["pinned"] and entry["rank"] == 8 and entry["bytes"] > 0
    assert entry["target_modules"] == ["k_proj", "o_proj", "q_proj", "v_proj"]


def test_sdk_retry_loop_ends_in_vector_and_in_clear_error(dynamic_server):
    with SIEClient(dynamic_server.url) as client:
        result = client.encode(DEMO_MODEL, Item(text="a trip to Lisbon"), options={"lora_id": "travel"})
        assert result["dense"].shape == (64,)
        with pytest.raises(RequestError) as info:
            client.encode(DEMO_MODEL, Item(text="x"), options={"lora_id": "dora"})
    assert info.value.status_code == 400 and "DoRA" in str(info.value)


@pytest.mark.parametrize("lora_id, cause", [
    ("bigrank", "rank 512 exceeds max_lora_rank 64"),
    ("noconfig", "adapter_config.json missing"),
    ("pickle", "pickles are refused"),
    ("wrongshape", "do not fit the base layer"),
])
def test_failed_loads_are_remembered_with_cause(dynamic_server, lora_id, cause):
    response = until_settled(dynamic_server.url, lora_id)
    assert response.status_code == 400 and cause in response.json()["detail"]["message"]
    loads = dynamic_server.served.adapters.counters["loads"]
    again = post(dynamic_server.url, lora_id)  # answered from memory: no new load, no LORA_LOADING loop
    assert again.status_code == 400 and cause in again.json()["detail"]["message"]
    assert dynamic_server.served.adapters.counters["loads"] == loads


@pytest.mark.parametrize("lora_id, message", [
    ("../legal", "not a valid hub id"),
    ("..", "path components"),
    ("escape", "resolves outside the adapter root"),
    ("evil-org/adapter", "not on the allow-list"),
    ("nothere", "not found under any adapter root"),
])
def test_refused_sources(dynamic_server, lora_id, message):
    response = post(dynamic_server.url, lora_id)
    assert response.status_code == 400, response.text
    detail = response.json()["detail"]
    assert detail["code"] == "INVALID_INPUT" and message in detail["message"] and "legal" in detail["message"]


def test_the_clients_own_words_are_not_rewritten_as_server_paths(dynamic_server):
    """A lora_id that looks like a path of this machine comes back as sent (path hiding is for the server's
    paths); the server's own paths in the same message are still hidden."""
    response = post(dynamic_server.url, "/etc/passwd")
    message = response.json()["detail"]["message"]
    assert response.status_code == 400 and "'/etc/passwd' is not a valid hub id" in message, message
    assert str(dynamic_server.served.adapters.sources.dynamic.roots[0]) not in message


def test_model_ids_list_adapters_a_request_would_load(dynamic_server, adapter_root):
    """`GET /v1/models/<model>:<adapter>` for an adapter under a root, not loaded yet: available (encode would
    serve it); for a name nothing could load: 404."""
    shutil.copytree(adapter_root / "retail", adapter_root / "unvisited")
    fresh = httpx.get(f"{dynamic_server.url}/v1/models/{DEMO_MODEL}:unvisited")
    assert fresh.status_code == 200 and fresh.json()["state"] == "available", fresh.text
    assert httpx.get(f"{dynamic_server.url}/v1/models/{DEMO_MODEL}:nope").status_code == 404


def test_allowed_hub_id_that_cannot_be_fetched_fails_cleanly(dynamic_server):
    response = until_settled(dynamic_server.url, "allowed-org/missing-adapter")
    assert response.status_code == 400 and "hub" in response.json()["detail"]["message"]


def test_burst_of_first_requests_causes_one_load(demo_config, adapter_root):
    app, served = build_app(dynamic_config(demo_config, adapter_root))

    async def burst(url):
        async with httpx.AsyncClient(base_url=url, headers=JSON, timeout=60) as client:
            body = {"items": [{"text": "burst"}], "params": {"options": {"lora_id": "travel"}}}
            return await asyncio.gather(*(client.post(ENCODE, json=body) for _ in range(50)))

    with LiveServer(app) as live:
        responses = asyncio.run(burst(live.url))
        assert {r.status_code for r in responses} <= {200, 503}
        assert until_settled(live.url, "travel").status_code == 200
        assert served.adapters.counters["loads"] == 1


def test_hot_load_does_not_stall_other_traffic(dynamic_server):
    latencies, statuses, stop = [], [], threading.Event()

    def stream():
        with httpx.Client(base_url=dynamic_server.url, headers=JSON, timeout=60) as client:
            for i in range(200):
                if stop.is_set():
                    return
                started = time.perf_counter()
                body = {"items": [{"text": f"steady {i}"}], "params": {"options": {"lora_id": "legal"}}}
                statuses.append(client.post(ENCODE, json=body).status_code)
                latencies.append(time.perf_counter() - started)

    worker = threading.Thread(target=stream)
    worker.start()
    time.sleep(0.2)
    httpx.delete(dynamic_server.url + f"{LORAS}/travel", timeout=30)  # make sure a real load happens
    settled = until_settled(dynamic_server.url, "travel")
    assert settled.status_code == 200, settled.text
    stop.set()
    worker.join(60)
    assert statuses and set(statuses) == {200}
    assert max(latencies) < 5.0


def test_eviction_never_takes_an_adapter_with_queued_rows(demo_config, adapter_root, demo_dirs):
    config = dynamic_config(demo_config, adapter_root)
    settings = ServerSettings(max_loras_per_model=4)  # 3 pinned preloaded + room for one dynamic adapter
    backend = make_gated_backend()(config, settings, "cpu")
    app, served = build_app(config, backend=backend, max_loras_per_model=4)
    retail_reference = peft_vector(demo_dirs["model"], adapter_root / "retail", TEXT)
    with LiveServer(app) as live:
        assert until_settled(live.url, "retail").status_code == 200
        backend.hold.set()
        queued = {}
        holder = threading.Thread(target=lambda: queued.setdefault("response", post(live.url, "retail")))
        holder.start()
        assert backend.entered.wait(10)
        assert post(live.url, "travel").status_code == 503  # needs retail's slot; retail is busy
        time.sleep(0.3)
        assert served.adapters.entries["retail"].state == "ready"  # not evicted under its queued row
        backend.hold.clear()
        holder.join(30)
        assert np.abs(vector(queued["response"]) - retail_reference).max() <= 1e-5
        assert until_settled(live.url, "travel").status_code == 200
        assert "retail" not in served.adapters.entries and served.adapters.counters["evictions"] == 1
        assert set(served.adapters.names()) == {"legal", "medical", "finance", "travel"}
        again = until_settled(live.url, "retail")  # evicted adapters reload on next use
        assert np.abs(vector(again) - retail_reference).max() <= 1e-5
        assert backend.loads.count("retail") == 2


def test_admin_api(demo_config, adapter_root):
    app, served = build_app(dynamic_config(demo_config, adapter_root), api_keys=("key",))
    auth = {"Authorization": "Bearer key"}
    with LiveServer(app) as live, httpx.Client(base_url=live.url, timeout=60) as client:
        spec = {"name": "shop", "source": str(adapter_root / "retail"), "pin": True}
        assert client.post(LORAS, json=spec).status_code == 401
        created = client.post(LORAS, json=spec, headers=auth)
        assert created.status_code == 201, created.text
        assert created.json()["state"] == "ready" and created.json()["pinned"]
        assert client.post(LORAS, json=spec, headers=auth).status_code == 200
        by_name = client.post(LORAS, json={"name": "shop"}, headers=auth)  # resident: found by its name alone
        assert by_name.status_code == 200 and by_name.json()["state"] == "ready", by_name.text
        vllm = client.post("/v1/load_lora_adapter", json={"lora_name": f"{DEMO_MODEL}:shop"}, headers=auth)
        assert vllm.status_code == 200 and "added successfully" in vllm.text, vllm.text
        conflict = client.post(LORAS, json={**spec, "source": str(adapter_root / "travel")}, headers=auth)
        assert conflict.status_code == 409
        outside = client.post(LORAS, json={"name": "x", "source": "/etc"}, headers=auth)
        assert outside.status_code == 400 and "not under an adapter root" in outside.text
        bad = client.post(LORAS, json={"name": "a/b", "source": str(adapter_root / "retail")}, headers=auth)
        assert bad.status_code == 400
        listed = client.get(f"/v1/models/{DEMO_MODEL}", headers=auth).json()["loras"]
        assert {"shop", "legal"} <= {entry["name"] for entry in listed}
        body = {"items": [{"text": TEXT}], "params": {"options": {"lora_id": "shop"}}}
        assert client.post(ENCODE, json=body, headers={**auth, **JSON}).status_code == 200
        assert client.delete(f"{LORAS}/shop").status_code == 401
        assert client.delete(f"{LORAS}/shop", headers=auth).json() == {"model": DEMO_MODEL, "unloaded": "shop"}
        gone = client.post(ENCODE, json=body, headers={**auth, **JSON})
        assert gone.status_code == 400 and "unknown lora_id 'shop'" in gone.text
        assert client.delete(f"{LORAS}/shop", headers=auth).status_code == 404
        assert "shop" not in served.adapters.entries


def test_preloaded_adapters_are_pinned_and_restorable(demo_config, adapter_root):
    """DELETE of a preloaded adapter is 409 with the reason; forced, it shows as unloaded (lists and
    readiness stay true) and comes back from its configured source without a restart."""
    app, served = build_app(dynamic_config(demo_config, adapter_root))
    query = {"items": [{"text": TEXT}], "params": {"options": {"profile": "legal"}}}
    with LiveServer(app) as live, httpx.Client(base_url=live.url, timeout=60) as client:
        before = client.post(ENCODE, json=query, headers=JSON).json()["items"][0]["dense"]["values"]
        refused = client.delete(f"{LORAS}/legal")
        assert refused.status_code == 409 and refused.json()["detail"]["code"] == "LORA_PINNED"
        reason = refused.json()["detail"]["message"]
        assert "preloaded" in reason and "force=true" in reason
        listed = {e["name"]: e for e in client.get(f"/v1/models/{DEMO_MODEL}").json()["loras"]}
        assert listed["legal"]["state"] == "ready" and listed["legal"]["pinned"]
        assert client.delete(f"{LORAS}/legal", params={"force": "true"}).status_code == 200
        listed = {e["name"]: e for e in client.get(f"/v1/models/{DEMO_MODEL}").json()["loras"]}
        assert listed["legal"]["state"] == "unloaded" and listed["legal"]["source"]
        assert client.get("/readyz").status_code == 200
        restored = client.post(LORAS, json={"name": "legal"})
        assert restored.status_code == 201 and restored.json()["state"] == "ready" and restored.json()["pinned"]
        after = client.post(ENCODE, json=query, headers=JSON).json()["items"][0]["dense"]["values"]
        assert after == before
        assert client.delete(f"{LORAS}/legal", params={"force": "true"}).status_code == 200
        again = poll_while_loading(lambda: client.post(ENCODE, json=query, headers=JSON))  # a request restores it
        assert again.status_code == 200 and again.json()["items"][0]["dense"]["values"] == before
        assert "legal" in served.adapters.names()
