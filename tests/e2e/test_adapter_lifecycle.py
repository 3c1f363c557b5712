"""An adapter's lifecycle over real HTTP: a retrained adapter reloaded in place (admin API and vLLM's
`load_inplace`) with no 503 gap and the rows already admitted finishing on the old weights; a pool of pinned
adapters answered 503 LORA_POOL_FULL at once and never listed as the adapter's failure; a remembered failure that
says for how long and how to retry now; sources written as they exist (`adapters/x`); missing fields named."""

from __future__ import annotations

import shutil
import threading
import time

import httpx
import numpy as np
import pytest

from server.config import ServerSettings
from tests.conftest import DEMO_MODEL, LiveServer, build_app, make_gated_backend, poll_while_loading
from tests.e2e.test_dynamic_adapters import ENCODE, JSON, LORAS, TEXT, dynamic_config, post, until_settled, vector


@pytest.fixture()
def root(tmp_path, demo_dirs):
    from server.demo_assets import ensure_builtin

    dynamic = ensure_builtin("builtin:qwen3-tiny/dynamic")
    for name in ("retail", "travel"):
        shutil.copytree(dynamic / name, tmp_path / name)
    shutil.copytree(dynamic / "retail", tmp_path / "shop")
    return tmp_path


def past_loading(url, lora_id, timeout=30.0):
    """Repeat the request while it answers 503 LORA_LOADING; whatever comes next (any 503 included)."""
    deadline = time.monotonic() + timeout
    while True:
        response = post(url, lora_id)
        loading = response.status_code == 503 and response.json()["detail"]["code"] == "LORA_LOADING"
        if not loading or time.monotonic() > deadline:
            return response
        time.sleep(0.05)


def retrain(root, name: str, like: str) -> None:
    """What a retraining run does to an adapter folder: new weights, same name."""
    for path in (root / like).iterdir():
        shutil.copy(path, root / name / path.name)


def test_reload_swaps_weights_with_no_gap(demo_config, root):
    app, served = build_app(dynamic_config(demo_config, root))
    with LiveServer(app) as live:
        old = vector(until_settled(live.url, "shop"))
        travel = vector(until_settled(live.url, "travel"))
        retrain(root, "shop", "travel")
        assert np.array_equal(vector(post(live.url, "shop")), old)  # resident weights are copies
        answers, stop = [], threading.Event()

        def traffic():
            while not stop.is_set():
                answers.append(post(live.url, "shop"))

        sender = threading.Thread(target=traffic)
        sender.start()
        reloaded = httpx.post(live.url + LORAS, json={"name": "shop", "reload": True}, timeout=60)
        time.sleep(0.2)
        stop.set()
        sender.join()
        assert reloaded.status_code == 200 and reloaded.json()["state"] == "ready", reloaded.text
        assert answers and all(a.status_code == 200 for a in answers), {a.status_code for a in answers}
        for answer in answers:  # each answer is the old adapter's or the new one's, never a mix or base
            got = vector(answer)
            assert min(np.abs(got - old).max(), np.abs(got - travel).max()) <= 1e-5
        assert np.abs(vector(post(live.url, "shop")) - travel).max() <= 1e-5
        assert len(served.adapters._occupied()) == len(served.adapters.names())  # the old slot was freed


def test_rows_admitted_before_a_reload_finish_on_the_old_weights(demo_config, root):
    config = dynamic_config(demo_config, root)
    backend = make_gated_backend()(config, ServerSettings(), "cpu")
    app, served = build_app(config, backend=backend)
    with LiveServer(app) as live:
        old = vector(until_settled(live.url, "shop"))
        retrain(root, "shop", "travel")
        backend.hold.set()
        queued: list = []
        request = threading.Thread(target=lambda: queued.append(post(live.url, "shop")))
        request.start()
        assert backend.entered.wait(10)
        reload = threading.Thread(target=lambda: queued.append(httpx.post(
            live.url + "/v1/load_lora_adapter", json={"lora_name": "shop", "load_inplace": True}, timeout=60)))
        reload.start()
        time.sleep(0.3)
        backend.hold.clear()
        request.join(30)
        reload.join(30)
        answer, reloaded = queued
        assert reloaded.status_code == 200 and "reloaded" in reloaded.text
        assert np.abs(vector(answer) - old).max() <= 1e-5
        assert np.abs(vector(post(live.url, "shop")) - old).max() > 1e-3


def test_a_pool_of_pinned_adapters_is_said_at_once_and_never_listed_as_a_failure(demo_config, root):
    """Three pinned preloaded adapters fill three slots: a hot-load is 503 LORA_POOL_FULL at once (no
    LORA_LOADING first, no Retry-After: only an operator can free a slot), which SIE's SDK raises on the first
    answer with the reason; the adapter is not listed as failed, DELETE says it is not loaded, and it loads as
    soon as an operator frees a slot."""
    from sie_sdk import SIEClient
    from sie_sdk.client.errors import ServerError
    from sie_sdk.types import Item

    app, served = build_app(dynamic_config(demo_config, root), max_loras_per_model=3)
    with LiveServer(app) as live:
        full = post(live.url, "retail")
        detail = full.json()["detail"]
        assert full.status_code == 503 and detail["code"] == "LORA_POOL_FULL", full.text
        assert "Retry-After" not in full.headers
        assert "pinned" in detail["message"] and "?force=true" in detail["message"]
        with pytest.raises(ServerError) as raised:
            SIEClient(live.url).encode(DEMO_MODEL, Item(text=TEXT), options={"lora_id": "retail"})
        assert raised.value.code == "LORA_POOL_FULL" and "pinned" in str(raised.value)
        assert served.adapters.counters["load_failures"] == 0
        listed = httpx.get(live.url + LORAS).json()["loras"]
        assert "retail" not in {entry["name"] for entry in listed}
        assert httpx.get(f"{live.url}/v1/models/{DEMO_MODEL}:retail").json()["state"] == "available"
        assert httpx.delete(f"{live.url}{LORAS}/retail").status_code == 404
        metrics = httpx.get(live.url + "/metrics").text
        assert f'sie_adapter_load_failures_by_cause_total{{cause="no_slot",model="{DEMO_MODEL}"}}' in metrics
        assert httpx.delete(f"{live.url}{LORAS}/finance", params={"force": "true"}).status_code == 200
        assert past_loading(live.url, "retail").status_code == 200


def test_remembered_failure_says_how_long_and_how_to_retry(demo_config, root):
    (root / "broken").mkdir()
    app, _ = build_app(dynamic_config(demo_config, root))
    with LiveServer(app) as live:
        failed = until_settled(live.url, "broken")
        message = failed.json()["detail"]["message"]
        assert failed.status_code == 400 and "remembered for another" in message and "to retry now" in message
        again = httpx.post(live.url + LORAS, json={"name": "broken"}, timeout=60)  # the retry itself fails
        assert again.status_code == 400 and "to retry now" not in again.json()["detail"]["message"], again.text
        shutil.copytree(root / "retail", root / "broken", dirs_exist_ok=True)
        retried = httpx.post(live.url + LORAS, json={"name": "broken"}, timeout=60)  # the way the message says
        assert retried.status_code == 201 and post(live.url, "broken").status_code == 200


def test_sources_as_written_and_missing_fields_named(demo_config, root, monkeypatch):
    monkeypatch.chdir(root.parent)
    app, _ = build_app(dynamic_config(demo_config, root))
    with LiveServer(app) as live:
        written = f"{root.name}/retail"  # an existing folder under the root, without ./
        loaded = httpx.post(live.url + LORAS, json={"name": "plain", "source": written}, timeout=60)
        assert loaded.status_code == 201, loaded.text
        missing = httpx.post(live.url + "/v1/load_lora_adapter", json={"lora_name": "elsewhere"})
        assert missing.status_code == 400 and "lora_path is missing" in missing.json()["detail"]["message"]
        by_name = httpx.post(live.url + "/v1/load_lora_adapter", json={"lora_name": f"{DEMO_MODEL}:travel"})
        assert by_name.status_code == 200  # a name under an adapter root needs no path
        not_loaded = httpx.post(live.url + LORAS, json={"name": "ghost", "reload": True}, timeout=60)
        assert not_loaded.status_code == 400 and "ghost" in not_loaded.text
        body = {"items": [{"text": TEXT}], "params": {"options": {"lora_id": "plain"}}}
        assert poll_while_loading(lambda: httpx.post(live.url + ENCODE, json=body, headers=JSON)).status_code == 200
