"""Adapters from object storage against a real S3-compatible server on loopback (moto's server mode, the
S3 protocol over HTTP; credentials and endpoint from the environment as in production): served with the
same vectors and digest as from a folder, fetched once into the cache, fetched again when the object
changes, refused off the allow-list, as a pickle, past the size limit, or where the store has nothing."""

from __future__ import annotations

import dataclasses
import os

import httpx
import numpy as np
import pytest

from tests.conftest import DEMO_MODEL, LiveServer, build_app, free_port, poll_while_loading

BUCKET = "adapters"


@pytest.fixture(scope="module")
def s3(demo_dirs):
    """A moto S3 server on loopback with `team/legal`, `team/medical` and a pickled adapter uploaded."""
    import boto3
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    saved = {key: os.environ.get(key) for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                                  "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL")}
    os.environ.update(AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test", AWS_DEFAULT_REGION="us-east-1",
                      AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}")
    client = boto3.client("s3")
    client.create_bucket(Bucket=BUCKET)
    for name in ("legal", "medical"):
        for file in ("adapter_config.json", "adapter_model.safetensors"):
            client.upload_file(str(demo_dirs[name] / file), BUCKET, f"team/{name}/{file}")
    client.upload_file(str(demo_dirs["legal"] / "adapter_config.json"), BUCKET, "team/pickled/adapter_config.json")
    client.put_object(Bucket=BUCKET, Key="team/pickled/adapter_model.bin", Body=b"\x80\x04not a tensor")
    client.upload_file(str(demo_dirs["legal"] / "adapter_config.json"), BUCKET, "team/half/adapter_config.json")
    yield client
    server.stop()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="module")
def served(s3, demo_config):
    app, model = build_app(dataclasses.replace(demo_config, lora_allow=(f"s3://{BUCKET}/team/*",)))
    with LiveServer(app) as live:
        live.model = model
        yield live


def encode(url, lora_id):
    body = {"items": [{"text": "a lease dispute"}], "params": {"options": {"lora_id": lora_id}}}
    return poll_while_loading(lambda: httpx.post(f"{url}/v1/encode/{DEMO_MODEL}", json=body, timeout=60,
                                                 headers={"Accept": "application/json"}))


def first_item(answer) -> dict:
    assert answer.status_code == 200, answer.text
    return answer.json()["items"][0]


def test_an_adapter_in_s3_serves_the_vectors_and_digest_of_the_same_folder(served):
    local, remote = first_item(encode(served.url, "legal")), first_item(encode(served.url, f"s3://{BUCKET}/team/legal"))
    assert np.abs(np.asarray(local["dense"]["values"]) - np.asarray(remote["dense"]["values"])).max() <= 1e-6
    assert remote["provenance"]["adapter_digest"] == local["provenance"]["adapter_digest"]
    loaded = httpx.post(f"{served.url}/v1/models/{DEMO_MODEL}/loras",
                        json={"name": "remote-medical", "source": f"s3://{BUCKET}/team/medical/"}, timeout=60)
    assert loaded.status_code == 201, loaded.text
    medical = first_item(encode(served.url, "medical"))
    assert first_item(encode(served.url, "remote-medical"))["provenance"]["adapter_digest"] == \
        medical["provenance"]["adapter_digest"]


def test_the_sie_sdk_names_an_s3_adapter_by_its_url(served):
    from sie_sdk import SIEClient
    from sie_sdk.types import Item

    with SIEClient(served.url) as client:
        remote = client.encode(DEMO_MODEL, [Item(text="a lease dispute")], options={"lora_id": f"s3://{BUCKET}/team/legal"})
        local = client.encode(DEMO_MODEL, [Item(text="a lease dispute")], options={"lora_id": "legal"})
    assert np.abs(remote[0]["dense"] - local[0]["dense"]).max() <= 1e-6


def test_fetched_once_into_the_cache_and_again_when_the_object_changes(s3, demo_dirs):
    from server.object_sources import fetch_adapter

    url = f"s3://{BUCKET}/team/legal"
    first = fetch_adapter(url)
    stamp = first.stat().st_mtime_ns
    assert fetch_adapter(url) == first and first.stat().st_mtime_ns == stamp  # not fetched again
    s3.upload_file(str(demo_dirs["medical"] / "adapter_model.safetensors"), BUCKET,
                   "team/legal/adapter_model.safetensors")
    changed = fetch_adapter(url)
    assert changed != first
    assert (changed / "adapter_model.safetensors").read_bytes() == \
        (demo_dirs["medical"] / "adapter_model.safetensors").read_bytes()
    s3.upload_file(str(demo_dirs["legal"] / "adapter_model.safetensors"), BUCKET,
                   "team/legal/adapter_model.safetensors")


def test_past_the_size_limit_nothing_is_fetched(s3):
    from server.object_sources import ObjectSourceError, fetch_adapter

    with pytest.raises(ObjectSourceError, match="over the limit of 10"):
        fetch_adapter(f"s3://{BUCKET}/team/medical", max_bytes=10)


@pytest.mark.parametrize("lora_id, words", [
    (f"s3://{BUCKET}/elsewhere/legal", "allow-list"),
    (f"s3://{BUCKET}/team/pickled", "never fetched"),
    (f"s3://{BUCKET}/team/nothing", "holds nothing"),
    (f"s3://{BUCKET}/team/half", "has no adapter_model.safetensors"),
    (f"s3://{BUCKET}/team/../legal", "not a valid object-storage prefix"),
    (f"gs://{BUCKET}/team/legal", "allow-list"),
])
def test_refusals_say_why(served, lora_id, words):
    answer = encode(served.url, lora_id)
    assert answer.status_code == 400 and words in answer.json()["detail"]["message"], answer.text
    assert "test" not in answer.json()["detail"]["message"].replace("team", "")  # no credential shows
