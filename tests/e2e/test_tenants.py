"""Tenants over real HTTP with the real clients: each key's scope on every route (encode, lists, model info,
admin, vLLM's routes, /metrics), tenants' own adapters under one name without clashing, the key file
reloaded on a change, no key in the log, and provenance on every answer."""

from __future__ import annotations

import dataclasses
import logging
import shutil
import time

import httpx
import numpy as np
import openai
import pytest
from sie_sdk import SIEClient
from sie_sdk.types import Item

from tests.conftest import DEMO_MODEL, LiveServer, build_app, poll_while_loading

KEYS = {"acme": "acme-key-0001", "globex": "globex-key-0001", "initech": "initech-key-0001",
        "operator": "operator-key-0001"}
KEY_FILE = f"""
keys:
  - key: {KEYS["acme"]}
    tenant: acme
    adapters: [legal]
    admin: true
  - key: {KEYS["globex"]}
    tenant: globex
    models: ["demo/*"]
    adapters: ["medic*"]
  - key: {KEYS["initech"]}
    tenant: initech
    admin: true
  - key: {KEYS["operator"]}
    operator: true
"""
ENCODE = f"/v1/encode/{DEMO_MODEL}"
LORAS = f"/v1/models/{DEMO_MODEL}/loras"
TEXT = "court rulings on a lease"


def auth(who: str) -> dict:
    return {"Authorization": f"Bearer {KEYS[who]}", "Accept": "application/json"}


@pytest.fixture(scope="module")
def tenant_root(tmp_path_factory, demo_dirs):
    """An adapter root with a shared `retail` and acme's own `retail` (the travel weights) at acme/retail."""
    from server.demo_assets import ensure_builtin

    root = tmp_path_factory.mktemp("tenant-adapters")
    dynamic = ensure_builtin("builtin:qwen3-tiny/dynamic")
    shutil.copytree(dynamic / "retail", root / "retail")
    shutil.copytree(dynamic / "travel", root / "acme" / "retail")
    shutil.copytree(dynamic / "travel", root / "travel")
    return root


@pytest.fixture(scope="module")
def tenant_server(demo_config, tenant_root, tmp_path_factory):
    key_file = tmp_path_factory.mktemp("keys") / "keys.yaml"
    key_file.write_text(KEY_FILE)
    config = dataclasses.replace(demo_config, lora_roots=(str(tenant_root),))
    app, served = build_app(config, api_key_file=str(key_file))
    with LiveServer(app) as live:
        live.key_file, live.served, live.app = key_file, served, app
        yield live


def encode(url, who, lora_id=None, model=DEMO_MODEL):
    """An encode as `who`, repeated while the adapter loads on first use (as the SIE SDK does)."""
    options = {"lora_id": lora_id} if lora_id else {}
    return poll_while_loading(lambda: httpx.post(f"{url}/v1/encode/{model}", headers=auth(who), timeout=60,
                                                 json={"items": [{"text": TEXT}], "params": {"options": options}}))


def vector(answer) -> np.ndarray:
    return np.asarray(answer.json()["items"][0]["dense"]["values"])


def test_a_key_uses_only_the_adapters_its_scope_admits_and_the_rest_look_absent(tenant_server):
    url = tenant_server.url
    assert encode(url, "acme", "legal").status_code == 200
    assert encode(url, "globex", "medical").status_code == 200
    refused, absent = encode(url, "acme", "medical"), encode(url, "acme", "no-such-adapter")
    assert refused.status_code == absent.status_code == 400
    assert refused.json()["detail"]["code"] == absent.json()["detail"]["code"]
    assert (refused.json()["detail"]["message"].replace("medical", "X")
            == absent.json()["detail"]["message"].replace("no-such-adapter", "X"))
    assert "legal" in refused.text and "finance" not in refused.text
    via_profile = httpx.post(f"{url}{ENCODE}:medical", json={"items": [{"text": TEXT}]}, headers=auth("acme"))
    assert via_profile.status_code == 400 and "medical" not in via_profile.json()["detail"]["message"].split(";")[1]
    assert encode(url, "acme").status_code == 200  # base is every key's
    several = {"items": [{"text": TEXT}], "params": {"options": {"lora_ids": ["legal", None, "medical"]}}}
    hidden = httpx.post(f"{url}{ENCODE}", json=several, headers=auth("acme"))
    assert hidden.status_code == 400 and hidden.json()["detail"]["message"] == refused.json()["detail"]["message"]
    several["params"]["options"]["lora_ids"] = ["legal", None]
    both = httpx.post(f"{url}{ENCODE}", json=several, headers=auth("acme"))
    assert both.status_code == 200 and [c["adapter"] for c in both.json()["items"][0]["adapters"]] == ["legal", None]
    assert encode(url, "acme", "acme:retail").status_code == 400  # no client reaches a namespace by its name
    assert httpx.post(f"{url}{ENCODE}", json={"items": [{"text": TEXT}]}).status_code == 401


def test_lists_and_model_info_show_a_key_only_what_it_may_use(tenant_server):
    url = tenant_server.url
    listed = httpx.get(f"{url}/v1/models", headers=auth("acme")).json()
    names = {entry["name"] for entry in listed["models"]} | {entry["id"] for entry in listed["data"]}
    assert f"{DEMO_MODEL}:legal" in names and not any("medical" in n or "finance" in n for n in names)
    assert "medical" not in str(listed) and "finance" not in str(listed)
    openai_ids = {e["id"] for e in httpx.get(f"{url}/openai/v1/models", headers=auth("globex")).json()["data"]}
    assert f"{DEMO_MODEL}:medical" in openai_ids and f"{DEMO_MODEL}:legal" not in openai_ids
    hidden = httpx.get(f"{url}/v1/models/{DEMO_MODEL}:medical", headers=auth("acme"))
    missing = httpx.get(f"{url}/v1/models/{DEMO_MODEL}:nothing", headers=auth("acme"))
    assert hidden.status_code == missing.status_code == 404
    everything = httpx.get(f"{url}/v1/models", headers=auth("operator")).json()
    assert {"legal", "medical", "finance"} <= {e["name"] for e in everything["models"][0]["loras"]}


def test_two_tenants_each_load_their_own_adapter_under_one_name(tenant_server, tenant_root):
    url = tenant_server.url
    travel = {"name": "shop", "source": str(tenant_root / "travel")}
    retail = {"name": "shop", "source": str(tenant_root / "retail")}
    assert httpx.post(f"{url}{LORAS}", json=retail, headers=auth("globex")).status_code == 403
    assert httpx.post(f"{url}{LORAS}", json=retail, headers=auth("acme")).status_code == 201
    assert httpx.post(f"{url}{LORAS}", json=travel, headers=auth("initech")).status_code == 201
    pinned = httpx.post(f"{url}{LORAS}", json={**travel, "pin": True}, headers=auth("initech"))
    assert pinned.status_code == 403 and pinned.json()["detail"]["code"] == "FORBIDDEN"
    acme_shop, initech_shop = vector(encode(url, "acme", "shop")), vector(encode(url, "initech", "shop"))
    assert np.abs(acme_shop - initech_shop).max() > 1e-3  # two adapters, one name
    assert encode(url, "globex", "shop").status_code == 400
    mine = httpx.get(f"{url}{LORAS}", headers=auth("initech")).json()["loras"]
    assert [e["name"] for e in mine] == ["shop"]
    operator_view = {e["name"] for e in httpx.get(f"{url}{LORAS}", headers=auth("operator")).json()["loras"]}
    assert {"acme:shop", "initech:shop"} <= operator_view
    own = {"lora_name": "own", "lora_path": str(tenant_root / "travel")}
    vllm = httpx.post(f"{url}/v1/load_lora_adapter", json=own, headers=auth("acme"))
    assert vllm.status_code == 200, vllm.text
    refused = httpx.post(f"{url}/v1/unload_lora_adapter", json={"lora_name": "own"}, headers=auth("globex"))
    assert refused.status_code == 403
    gone = httpx.delete(f"{url}{LORAS}/shop", headers=auth("initech"))
    assert gone.status_code == 200 and encode(url, "acme", "shop").status_code == 200
    assert encode(url, "initech", "shop").status_code == 400


def test_a_tenants_own_folder_shadows_the_shared_one_of_its_name(tenant_server, tenant_root):
    """`<root>/acme/retail` is acme's `retail`; every other key that may use shared adapters gets `<root>/retail`."""
    url = tenant_server.url
    acme = vector(encode(url, "acme", "retail"))
    operator = vector(encode(url, "operator", "retail"))
    assert np.abs(acme - operator).max() > 1e-3
    travel = vector(encode(url, "operator", "travel"))
    assert np.abs(acme - travel).max() < 1e-6  # acme's folder holds the travel weights


def test_every_route_is_scoped_for_two_tenants(tenant_server, tenant_root):
    """Walks each route the app serves with two other tenants' keys after initech loaded `zz-initech`: neither
    gets a 200 that shows it, nor any answer that names initech; a route added later fails here until walked."""
    url = tenant_server.url
    loaded = httpx.post(f"{url}{LORAS}", json={"name": "zz-initech", "source": str(tenant_root / "travel")},
                        headers=auth("initech"))
    assert loaded.status_code == 201, loaded.text
    body = {"model": f"{DEMO_MODEL}:zz-initech", "input": TEXT}
    walked = {
        ("GET", "/v1/models"): lambda h: httpx.get(f"{url}/v1/models", headers=h),
        ("GET", "/v1/models/{model:path}"): lambda h: httpx.get(f"{url}/v1/models/{DEMO_MODEL}:zz-initech", headers=h),
        ("GET", "/openai/v1/models"): lambda h: httpx.get(f"{url}/openai/v1/models", headers=h),
        ("POST", "/v1/encode/{model:path}"): lambda h: httpx.post(f"{url}{ENCODE}:zz-initech", headers=h,
                                                                  json={"items": [{"text": TEXT}]}),
        ("POST", "/v1/embeddings"): lambda h: httpx.post(f"{url}/v1/embeddings", headers=h, json=body),
        ("POST", "/openai/v1/embeddings"): lambda h: httpx.post(f"{url}/openai/v1/embeddings", headers=h, json=body),
        ("GET", "/v1/models/{model:path}/loras"): lambda h: httpx.get(f"{url}{LORAS}", headers=h),
        ("POST", "/v1/models/{model:path}/loras"): lambda h: httpx.post(f"{url}{LORAS}", json={"name": "zz-initech"},
                                                                        headers=h, timeout=60),
        ("DELETE", "/v1/models/{model:path}/loras/{name}"): lambda h: httpx.delete(f"{url}{LORAS}/zz-initech",
                                                                                   headers=h),
        ("POST", "/v1/load_lora_adapter"): lambda h: httpx.post(f"{url}/v1/load_lora_adapter", headers=h,
                                                                json={"lora_name": "zz-initech"}),
        ("POST", "/v1/unload_lora_adapter"): lambda h: httpx.post(f"{url}/v1/unload_lora_adapter", headers=h,
                                                                  json={"lora_name": "zz-initech"}),
        ("GET", "/metrics"): lambda h: httpx.get(f"{url}/metrics", headers=h),
        ("GET", "/healthz"): lambda h: httpx.get(f"{url}/healthz", headers=h),
        ("GET", "/readyz"): lambda h: httpx.get(f"{url}/readyz", headers=h),
    }
    served = {(method, route.path) for route in tenant_server.app.routes for method in getattr(route, "methods", ())
              if method != "HEAD" and not route.path.startswith(("/docs", "/redoc", "/openapi"))}
    assert served <= set(walked), f"routes not walked: {sorted(served - set(walked))}"
    for (method, path), call in walked.items():
        for who in ("acme", "globex"):
            answer = call(auth(who))
            where = (method, path, who, answer.status_code, answer.text[:300])
            assert "initech" not in answer.text.replace("zz-initech", ""), where  # no namespace shows
            assert answer.status_code != 200 or "zz-initech" not in answer.text, where
            assert answer.status_code < 500, where
    assert encode(url, "initech", "zz-initech").status_code == 200  # still there: nobody else touched it
    assert httpx.get(f"{url}/metrics").status_code == 401
    assert httpx.get(f"{url}/metrics", headers=auth("acme")).status_code == 403
    assert httpx.get(f"{url}/metrics", headers=auth("operator")).status_code == 200


def test_the_key_file_is_read_again_when_it_changes_and_a_broken_one_keeps_the_keys(tenant_server, caplog):
    url, key_file = tenant_server.url, tenant_server.key_file
    newcomer = {"Authorization": "Bearer newcomer-key-01", "Accept": "application/json"}
    assert httpx.get(f"{url}/v1/models", headers=newcomer).status_code == 401
    key_file.write_text(KEY_FILE + "  - key: newcomer-key-01\n    tenant: newcomer\n")
    deadline = time.monotonic() + 10
    while httpx.get(f"{url}/v1/models", headers=newcomer).status_code != 200:
        assert time.monotonic() < deadline, "the changed key file was not read again"
        time.sleep(0.2)
    with caplog.at_level(logging.INFO):
        key_file.write_text("keys: [{key: short, tenant: x}]  # broken: a key under 8 characters\n")
        time.sleep(1.2)
        assert httpx.get(f"{url}/v1/models", headers=newcomer).status_code == 200  # the keys in force stay
    assert "not reloaded" in caplog.text
    key_file.write_text(KEY_FILE)
    deadline = time.monotonic() + 10
    while httpx.get(f"{url}/v1/models", headers=newcomer).status_code != 401:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert not any(key in caplog.text for key in (*KEYS.values(), "newcomer-key-01"))


def test_sighup_reads_the_key_file_again(tmp_path):
    """A served process (launch.py) takes SIGHUP: the file below changes with its size and modification time
    kept, so only the signal can make the server read it."""
    import os
    import signal

    from tests.conftest import launched_demo

    key_file = tmp_path / "keys.yaml"
    key_file.write_text("keys: [{key: first-key-0001, tenant: one}]\n")
    stamp = key_file.stat()
    processes: list = []
    with launched_demo("--api-key-file", str(key_file), started=processes) as url:
        def status(key: str) -> int:
            return httpx.get(f"{url}/v1/models", headers={"Authorization": f"Bearer {key}"}).status_code

        assert status("first-key-0001") == 200 and status("other-key-0001") == 401
        key_file.write_text("keys: [{key: other-key-0001, tenant: one}]\n")
        os.utime(key_file, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
        time.sleep(1.2)
        assert status("other-key-0001") == 401  # unchanged to the eye of the change check
        processes[0].send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while status("other-key-0001") != 200:
            assert time.monotonic() < deadline, "SIGHUP did not reload the key file"
            time.sleep(0.1)
        assert status("first-key-0001") == 401


def test_provenance_names_the_adapter_and_digests_on_every_api(tenant_server):
    url = tenant_server.url
    info = httpx.get(f"{url}/v1/models/{DEMO_MODEL}", headers=auth("operator")).json()
    digests = {entry["name"]: entry["digest"] for entry in info["loras"]}
    assert info["digest"] and len(info["digest"]) == 16
    answer = encode(url, "acme", "legal")
    made = answer.json()["items"][0]["provenance"]
    assert made == {"adapter": "legal", "adapter_digest": digests["legal"], "base_digest": info["digest"]}
    assert answer.headers["X-Adapter"] == "legal" and answer.headers["X-Adapter-Digest"] == digests["legal"]
    assert answer.headers["X-Base-Digest"] == info["digest"]
    base = encode(url, "acme").json()["items"][0]["provenance"]
    assert base == {"adapter": None, "adapter_digest": None, "base_digest": info["digest"]}
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=KEYS["globex"])
    created = client.embeddings.with_raw_response.create(model=f"{DEMO_MODEL}:medical", input=["a", "b"])
    parsed = created.parse()
    assert len(parsed.data) == 2 and created.headers["x-adapter-digest"] == digests["medical"]
    assert parsed.data[1].model_extra["provenance"]["adapter_digest"] == digests["medical"]
    with SIEClient(url, api_key=KEYS["acme"]) as sie:
        results = sie.encode(DEMO_MODEL, [Item(text=TEXT)], options={"lora_id": "legal"})
    assert np.abs(results[0]["dense"] - vector(answer)).max() < 1e-6  # the SDK reads the answer unchanged
