"""Hub adapters pinned to a revision (`hf://org/name@revision`), served from the hub client's own cache with
the hub offline: each revision is its own adapter with its own weights, the allow-list matches `org/name`,
and a revision the cache does not hold fails cleanly."""

from __future__ import annotations

import dataclasses
import shutil

import httpx
import numpy as np
import pytest

from tests.conftest import DEMO_MODEL, LiveServer, build_app, poll_while_loading

FIRST, SECOND = "a" * 40, "b" * 40  # commit hashes as the hub writes them


@pytest.fixture
def hub_cache(tmp_path, monkeypatch, demo_dirs):
    """huggingface_hub's cache layout holding org/topic at two commits (the legal and medical weights), with
    `main` at the first and the tag `v2` at the second."""
    from huggingface_hub import constants

    repo = tmp_path / "hub" / "models--org--topic"
    for commit, weights in ((FIRST, demo_dirs["legal"]), (SECOND, demo_dirs["medical"])):
        snapshot = repo / "snapshots" / commit
        snapshot.mkdir(parents=True)
        for name in ("adapter_config.json", "adapter_model.safetensors"):
            shutil.copy(weights / name, snapshot / name)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(FIRST)
    (repo / "refs" / "v2").write_text(SECOND)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return repo


def encode(url, lora_id):
    body = {"items": [{"text": "a lease dispute"}], "params": {"options": {"lora_id": lora_id}}}
    return poll_while_loading(lambda: httpx.post(f"{url}/v1/encode/{DEMO_MODEL}", json=body, timeout=60,
                                                 headers={"Accept": "application/json"}))


def vector(answer) -> np.ndarray:
    assert answer.status_code == 200, answer.text
    return np.asarray(answer.json()["items"][0]["dense"]["values"])


def test_each_pinned_revision_serves_its_own_weights_from_the_offline_cache(demo_config, hub_cache):
    config = dataclasses.replace(demo_config, lora_allow=("org/*",))
    app, _ = build_app(config)
    with LiveServer(app) as live:
        preloaded = encode(live.url, "legal")
        legal, medical = vector(preloaded), vector(encode(live.url, "medical"))
        first = encode(live.url, f"hf://org/topic@{FIRST}")
        assert np.abs(vector(first) - legal).max() <= 1e-6
        digest = first.json()["items"][0]["provenance"]["adapter_digest"]
        assert digest == preloaded.json()["items"][0]["provenance"]["adapter_digest"]  # the same weights
        assert np.abs(vector(encode(live.url, "hf://org/topic@v2")) - medical).max() <= 1e-6
        assert np.abs(vector(encode(live.url, "org/topic")) - legal).max() <= 1e-6  # unpinned: main
        missing = encode(live.url, "hf://org/topic@c0ffee")
        assert missing.status_code == 400 and "hub" in missing.json()["detail"]["message"], missing.text
        refused = encode(live.url, "hf://other/topic@v2")
        assert refused.status_code == 400 and "allow-list" in refused.json()["detail"]["message"]
