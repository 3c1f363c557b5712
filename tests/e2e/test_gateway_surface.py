"""What a Kubernetes inference gateway and vLLM tooling see: vLLM-named metrics, vLLM's adapter routes,
an OpenAI model list, X-Replica-ID, and a port of the gateway's LoRA-affinity scorer fed two scrapes."""

from __future__ import annotations

import dataclasses

import httpx
import openai
import pytest

from tests.conftest import DEMO_MODEL, LiveServer, build_app, poll_while_loading
from tests.gateway_scorer import lora_affinity_score, lora_info


@pytest.fixture(scope="module")
def root(demo_dirs):
    from server.demo_assets import ensure_builtin

    return ensure_builtin("builtin:qwen3-tiny/dynamic")


def serve(demo_config, root, **settings):
    return build_app(dataclasses.replace(demo_config, lora_roots=(str(root),)), **settings)[0]


def test_scorer_picks_the_replica_holding_the_adapter(demo_config, root):
    target = f"{DEMO_MODEL}:retail"
    with LiveServer(serve(demo_config, root)) as holder, \
            LiveServer(serve(demo_config, root, max_loras_per_model=3)) as full:
        assert poll_while_loading(lambda: _sie(holder.url, "retail")).status_code == 200
        scrapes = {"holder": lora_info(holder.url + "/metrics"), "full": lora_info(full.url + "/metrics")}
        assert target in scrapes["holder"]["active"] and f"{DEMO_MODEL}:legal" in scrapes["full"]["active"]
        assert scrapes["holder"]["max"] == 10 and scrapes["full"]["max"] == 3
        assert scrapes["holder"]["queue"] == 0 and scrapes["holder"]["running"] == 0
        scores = {name: lora_affinity_score(info, target) for name, info in scrapes.items()}
        assert scores == {"holder": 1.0, "full": 0.0}
        assert max(scores, key=scores.get) == "holder"
        assert lora_affinity_score(scrapes["holder"], f"{DEMO_MODEL}:travel") == 0.8  # room to load it


def _sie(url: str, lora_id: str) -> httpx.Response:
    return httpx.post(url + f"/v1/encode/{DEMO_MODEL}", json={"items": [{"text": "a refund"}],
                                                             "params": {"options": {"lora_id": lora_id}}},
                      headers={"Accept": "application/json"}, timeout=60)


def test_vllm_adapter_routes_and_openai_model_list(demo_config, root, monkeypatch):
    monkeypatch.setenv("SIE_REPLICA_ID", "replica-a")
    app = serve(demo_config, root, api_keys=("k",))
    with LiveServer(app) as live:
        auth = {"Authorization": "Bearer k"}
        spec = {"lora_name": f"{DEMO_MODEL}:shop", "lora_path": str(root / "retail")}
        assert httpx.post(live.url + "/v1/load_lora_adapter", json=spec).status_code == 401
        loaded = httpx.post(live.url + "/v1/load_lora_adapter", json=spec, headers=auth, timeout=60)
        assert loaded.status_code == 200 and "added successfully" in loaded.text
        assert loaded.headers["X-Replica-ID"] == "replica-a"
        bare = httpx.post(live.url + "/v1/load_lora_adapter", headers=auth, timeout=60,
                          json={"lora_name": "shop2", "lora_path": str(root / "travel")})
        assert bare.status_code == 200  # one model served: a bare name is enough
        outside = httpx.post(live.url + "/v1/load_lora_adapter", headers=auth,
                             json={"lora_name": "x", "lora_path": "/etc"})
        assert outside.status_code == 400 and "not under an adapter root" in outside.text

        client = openai.OpenAI(base_url=live.url + "/openai/v1", api_key="k", max_retries=0)
        ids = [m.id for m in client.models.list()]
        assert DEMO_MODEL in ids and f"{DEMO_MODEL}:shop" in ids and f"{DEMO_MODEL}:legal" in ids
        vector = client.embeddings.create(model=f"{DEMO_MODEL}:shop", input="a refund").data[0].embedding
        assert len(vector) == 64

        unloaded = httpx.post(live.url + "/v1/unload_lora_adapter", json={"lora_name": f"{DEMO_MODEL}:shop"},
                              headers=auth, timeout=60)
        assert unloaded.status_code == 200 and "removed successfully" in unloaded.text
        with pytest.raises(openai.NotFoundError):  # no adapter of that name any more: no such model, as OpenAI says
            client.embeddings.create(model=f"{DEMO_MODEL}:shop", input="a refund")
