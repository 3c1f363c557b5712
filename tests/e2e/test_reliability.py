"""Reliability over real HTTP: the bad-input matrix (never reaching the backend), limits, client
disconnects, failing forwards, out-of-memory splitting, adapter files changing on disk, and draining."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import msgpack
import numpy as np
import pytest
import torch

from tests.conftest import (
    DEMO_MODEL,
    DEMO_YAML,
    REPO,
    LiveServer,
    build_app,
    free_port,
    launched_demo,
    make_gated_backend,
    poll_while_loading,
    wait_ready,
)

ENCODE = f"/v1/encode/{DEMO_MODEL}"
JSON = "application/json"
MSGPACK = "application/msgpack"


@pytest.fixture(scope="module")
def server(demo_config, demo_dirs):
    app, served = build_app(demo_config)
    with LiveServer(app) as live:
        live.served = served
        yield live


def send(url, body, content_type, path=ENCODE, **headers):
    if isinstance(body, bytes):
        content = body
    elif content_type == MSGPACK:
        content = msgpack.packb(body, use_bin_type=True)
    else:
        content = json.dumps(body).encode()
    return httpx.post(url + path, content=content, headers={"Content-Type": content_type, "Accept": JSON,
                                                             **headers}, timeout=60)


BAD_SIE = [
    ("malformed", None, 400, "INVALID_INPUT"),
    ({"itemz": []}, None, 400, "INVALID_INPUT"),
    ({"items": []}, None, 400, "INVALID_INPUT"),
    ({"items": "text"}, None, 400, "INVALID_INPUT"),
    ({"items": [1, 2]}, None, 400, "INVALID_INPUT"),
    ({"items": [{"id": "a"}]}, None, 400, "INVALID_INPUT"),
    ({"items": [{"text": ["a"]}]}, None, 400, "INVALID_INPUT"),
    ({"items": [{"text": ""}]}, None, 400, "INVALID_INPUT"),
    ({"items": [{"text": "nul\x00byte"}]}, None, 400, "INVALID_INPUT"),
    ({"items": [{"text": "a"}], "params": 3}, None, 400, "INVALID_INPUT"),
    ({"items": [{"text": "a"}], "params": {"options": ["lora_id"]}}, None, 400, "INVALID_INPUT"),
    ({"items": [{"text": "a"}], "params": {"options": {"lora_id": 7}}}, None, 400, "INVALID_INPUT"),
    ({"items": [{"text": "a"}], "params": {"options": {"is_query": "no"}}}, None, 400, "INVALID_INPUT"),
    ({"items": [{"text": "a"}], "params": {"options": {"dims": "64"}}}, None, 400, "INVALID_INPUT"),
    ({"items": [{"text": "a"}], "params": {"options": {"dims": 8}}}, None, 400, "INVALID_INPUT"),
    ({"items": [{"text": "a"}], "params": {"options": {"profile": "nope"}}}, None, 400, "INVALID_INPUT"),
    ({"items": [{"text": "a"}], "params": {"options": {"lora_id": "nope"}}}, None, 400, "INVALID_INPUT"),
    ({"items": [{"text": "a"}], "params": {"output_types": ["multivector"]}}, None, 400, "INVALID_INPUT"),
    ({"items": [{"text": "a"}], "params": {"output_dtype": "float64"}}, None, 400, "INVALID_INPUT"),
    ({"items": [{"text": "a " * 600}], "params": {"options": {"overflow_policy": "error"}}}, None, 400,
     "INPUT_TOO_LONG"),
    ({"items": [{"text": "a"}] * 10_000}, None, 400, "INVALID_INPUT"),
    ({"items": [{"text": "a"}]}, "org/unknown-model", 404, "MODEL_NOT_FOUND"),
]


@pytest.mark.parametrize("content_type", [JSON, MSGPACK])
@pytest.mark.parametrize("body, model, status, code", BAD_SIE)
def test_bad_input_never_reaches_the_backend(server, content_type, body, model, status, code):
    before = server.served.batcher.batches_run
    raw = (b"{oops" if content_type == JSON else b"\xc1") if body == "malformed" else body
    response = send(server.url, raw, content_type, path=f"/v1/encode/{model}" if model else ENCODE)
    assert response.status_code == status, response.text
    assert response.json()["detail"]["code"] == code
    assert server.served.batcher.batches_run == before
    if isinstance(body, dict) and len(body.get("items", [])) == 10_000:
        assert "limit of 2048 items" in response.json()["detail"]["message"]


def test_invalid_utf8(server):
    before = server.served.batcher.batches_run
    assert send(server.url, b'{"items": [{"text": "\xff\xfe"}]}', JSON).status_code == 400
    bad_str = b"\x81\xa5items\x91\x81\xa4text\xa2\xff\xfe"  # msgpack {"items": [{"text": <invalid utf-8>}]}
    assert send(server.url, bad_str, MSGPACK).status_code == 400
    assert server.served.batcher.batches_run == before


def nested(depth: int):
    value = "x"
    for _ in range(depth):
        value = [value]
    return value


MALFORMED = [  # (raw body, content type, API path): each must be a 400 in its API's shape, with a request id
    (rb'{"items": [{"text": "a\ud800b"}]}', JSON, ENCODE),
    (rb'{"items": [{"text": "a"}], "params": {"instruction": "\udfff"}}', JSON, ENCODE),
    (rb'{"items": [{"text": "a", "\ud800": 1}]}', JSON, ENCODE),
    (b"\x81\xa5items\x91\x81\xa4text\xa3\xed\xa0\x80", MSGPACK, ENCODE),  # UTF-8-encoded surrogate
    (rb'{"model": "demo/qwen3-tiny", "input": ["ok", "\ud800"]}', JSON, "/v1/embeddings"),
    (b"[" * 100_000 + b"]" * 100_000, JSON, ENCODE),
    (b'{"model": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", JSON, "/v1/embeddings"),
    (json.dumps({"items": [{"text": "a"}], "params": {"extra": nested(40)}}).encode(), JSON, ENCODE),
    (msgpack.packb({"items": [{"text": "a"}], "params": {"extra": nested(40)}}), MSGPACK, ENCODE),
]


@pytest.mark.parametrize("raw, content_type, path", MALFORMED)
def test_invalid_unicode_and_deep_nesting_are_400(server, raw, content_type, path):
    before = server.served.batcher.batches_run
    response = send(server.url, raw, content_type, path=path, **{"X-Request-ID": "req-malformed"})
    assert response.status_code == 400, response.text
    assert response.headers["X-Request-ID"] == "req-malformed"
    body = response.json()
    code = body["error"]["code"] if path == "/v1/embeddings" else body["detail"]["code"]
    assert code == "INVALID_INPUT"
    assert server.served.batcher.batches_run == before


def test_misspelled_option_is_400_naming_the_known_ones(server):
    body = {"items": [{"text": "a"}], "params": {"options": {"lora_name": "legal"}}}
    for content_type in (JSON, MSGPACK):
        response = send(server.url, body, content_type)
        assert response.status_code == 400
        message = response.json()["detail"]["message"]
        assert "'lora_name'" in message and "lora_id" in message and "profile" in message
    openai = send(server.url, {"model": DEMO_MODEL, "input": "a", "lora_id": "legal"}, JSON, path="/v1/embeddings")
    assert openai.status_code == 400
    assert "'lora_id'" in openai.json()["error"]["message"] and "encoding_format" in openai.json()["error"]["message"]


def test_whitespace_and_huge_text(server):
    assert send(server.url, {"items": [{"text": "   "}]}, JSON).status_code == 200  # documented: embedded as is
    long = send(server.url, {"items": [{"text": "word " * 20_000}]}, MSGPACK)  # 100k characters: truncated
    assert long.status_code == 200 and long.json()["usage"]["input_tokens"] == 512


BAD_OPENAI = [
    (b"{oops", 400), ({"input": "a"}, 400), ({"model": DEMO_MODEL}, 400), ({"model": DEMO_MODEL, "input": 5}, 400),
    ({"model": DEMO_MODEL, "input": []}, 400), ({"model": DEMO_MODEL, "input": [1, 2]}, 400),
    ({"model": DEMO_MODEL, "input": "a", "encoding_format": "hex"}, 400),
    ({"model": DEMO_MODEL, "input": "a", "dimensions": "32"}, 400), ({"model": "nope", "input": "a"}, 404),
    ({"model": f"{DEMO_MODEL}:nope", "input": "a"}, 404), ({"model": f"{DEMO_MODEL}:", "input": "a"}, 400),
]


@pytest.mark.parametrize("body, status", BAD_OPENAI)
def test_bad_openai_input(server, body, status):
    before = server.served.batcher.batches_run
    response = send(server.url, body, JSON, path="/v1/embeddings")
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["message"] and error["type"] == "invalid_request_error" and error["code"]
    assert server.served.batcher.batches_run == before


def test_oversized_body_refused_before_it_is_read(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(f"POST {ENCODE} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {200 * 1024 * 1024}\r\n\r\n".encode() + b'{"items": [')
        reply = sock.recv(65536).decode("latin-1")  # answered without the other 200 MB being sent
    assert reply.startswith("HTTP/1.1 413") and "INPUT_TOO_LONG" in reply


def plain_config(demo_config):
    return dataclasses.replace(demo_config, profiles={}, adapters=dataclasses.replace(demo_config.adapters,
                                                                                      lora_paths={}))


@pytest.fixture
def gated(demo_config):
    from server.config import ServerSettings

    config = plain_config(demo_config)
    backend = make_gated_backend()(config, ServerSettings(), "cpu")
    app, served = build_app(config, backend=backend)
    with LiveServer(app) as live:
        live.backend, live.served = backend, served
        yield live


def test_disconnected_clients_rows_are_dropped(gated):
    gated.backend.hold.set()
    first = threading.Thread(target=lambda: send(gated.url, {"items": [{"text": "holder"}]}, JSON))
    first.start()
    assert gated.backend.entered.wait(10)
    marker = "zebra " * 37
    with socket.create_connection(("127.0.0.1", gated.port), timeout=10) as sock:
        body = json.dumps({"items": [{"text": marker}]}).encode()
        sock.sendall(f"POST {ENCODE} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        deadline = time.monotonic() + 10
        while gated.served.batcher.queue_depth == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
    deadline = time.monotonic() + 10  # the server notices the closed connection and cancels the request
    while gated.served.batcher.queue_depth and time.monotonic() < deadline:
        time.sleep(0.01)
    assert gated.served.batcher.queue_depth == 0
    gated.backend.hold.clear()
    first.join(30)
    assert send(gated.url, {"items": [{"text": "after"}]}, JSON).status_code == 200
    assert not any(len(ids) > 30 for ids in gated.backend.seen)  # the marker's ~38-token row never ran


def test_failing_forward_fails_only_its_batch(gated):
    poison_text, tokens = "poison pill", None
    probe = send(gated.url, {"items": [{"text": poison_text}]}, JSON)
    tokens = probe.json()["usage"]["input_tokens"]
    gated.backend.poison = {tokens}
    failed = send(gated.url, {"items": [{"text": poison_text}]}, JSON, **{"X-Request-ID": "req-poison"})
    assert failed.status_code == 500
    detail = failed.json()["detail"]
    assert detail["code"] == "INFERENCE_ERROR" and "req-poison" in detail["message"]
    assert send(gated.url, {"items": [{"text": "a healthy and rather longer request"}]}, JSON).status_code == 200
    assert httpx.get(gated.url + "/readyz").status_code == 200


def test_out_of_memory_splits_the_batch(demo_model, torch_backend):
    """OOM cannot be provoked on a CPU on purpose; `_forward` is wrapped to raise torch's own
    OutOfMemoryError above 2 rows, and the split results must equal the unsplit ones."""
    from tests.conftest import token_batch

    rows = [[100 + i, 200, 151643] for i in range(7)]
    adapters = [None, "legal", "medical", "finance", "legal", None, "finance"]
    expected = torch_backend.embed_sync(token_batch(demo_model, rows, adapters))
    real_forward, calls = torch_backend._forward, []

    def limited(batch):
        calls.append(len(batch.input_ids))
        if len(batch.input_ids) > 2:
            raise torch.OutOfMemoryError("simulated")
        return real_forward(batch)

    torch_backend._forward = limited
    try:
        result = torch_backend.embed_sync(token_batch(demo_model, rows, adapters))
    finally:
        del torch_backend._forward
    assert calls[0] == 7 and max(c for c in calls if c <= 2) == 2
    np.testing.assert_allclose(result, expected, atol=1e-5)


def test_adapter_file_changes_do_not_touch_the_loaded_copy(demo_config, tmp_path):
    from server.demo_assets import ensure_builtin

    root = tmp_path / "root"
    shutil.copytree(ensure_builtin("builtin:qwen3-tiny/dynamic"), root)
    config = dataclasses.replace(plain_config(demo_config), lora_roots=(str(root),))
    app, _ = build_app(config)
    body = {"items": [{"text": "a refund"}], "params": {"options": {"lora_id": "retail"}}}
    with LiveServer(app) as live:
        first = poll_while_loading(lambda: send(live.url, body, JSON))
        before = first.json()["items"][0]["dense"]["values"]
        weights = root / "retail" / "adapter_model.safetensors"
        weights.write_bytes(os.urandom(weights.stat().st_size))  # rewritten in place...
        assert send(live.url, body, JSON).json()["items"][0]["dense"]["values"] == before
        shutil.rmtree(root / "retail")  # ...then deleted
        assert send(live.url, body, JSON).json()["items"][0]["dense"]["values"] == before


def queued_rows(url: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    families = {f.name: f for f in text_string_to_metric_families(httpx.get(url + "/metrics").text)}
    return sum(sample.value for sample in families["sie_queue_depth"].samples)


def test_sigterm_drains_then_exits_zero(demo_dirs):
    port = free_port()
    process = subprocess.Popen([sys.executable, "launch.py", "--config", str(DEMO_YAML), "--port", str(port),
                                "--log-level", "warning"], cwd=REPO, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, timeout=120, process=process)
        big = {"items": [{"text": f"long running request {i} " * 20} for i in range(2000)]}
        outcome = {}
        worker = threading.Thread(target=lambda: outcome.setdefault("big", send(url, big, MSGPACK)))
        worker.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not queued_rows(url):
            time.sleep(0.02)  # wait until the big request is in flight
        process.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        ready = httpx.get(url + "/readyz")
        late = send(url, {"items": [{"text": "late"}]}, JSON)
        worker.join(120)
        code = process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert ready.status_code == 503 and ready.json()["status"] == "draining"
    assert late.status_code == 503 and late.json()["detail"]["code"] == "SHUTTING_DOWN"
    assert late.headers["Retry-After"] == "1"
    assert outcome["big"].status_code == 200 and len(outcome["big"].json()["items"]) == 2000
    assert code == 0


def test_big_bodies_do_not_stall_small_requests(demo_dirs):
    """Four ~10 MB bodies arriving at once on the demo (a separate `launch.py` process): small requests sent
    meanwhile keep being answered (none waits longer than 1 s or 25 times the median small request measured
    just before, on this machine, whichever is more), and each big one is answered 200 with its 512 tokens."""
    with launched_demo("--log-level", "warning") as url:
        baseline = []
        for _ in range(20):
            started = time.perf_counter()
            assert send(url, {"items": [{"text": "small"}]}, JSON).status_code == 200
            baseline.append(time.perf_counter() - started)
        bound = max(1.0, 25 * sorted(baseline)[len(baseline) // 2])
        big = json.dumps({"items": [{"text": "a reasonably ordinary sentence of words " * 250_000}]}).encode()
        outcomes, small_latencies = [], []
        senders = [threading.Thread(target=lambda: outcomes.append(send(url, big, JSON))) for _ in range(4)]
        for sender in senders:
            sender.start()
        while any(sender.is_alive() for sender in senders):
            started = time.perf_counter()
            assert send(url, {"items": [{"text": "small"}]}, JSON).status_code == 200
            small_latencies.append(time.perf_counter() - started)
            time.sleep(0.02)
        for sender in senders:
            sender.join()
    assert len(big) > 10_000_000 and small_latencies  # at least one small request overlapped the big ones
    assert max(small_latencies) < bound, (bound, small_latencies)
    assert [o.status_code for o in outcomes] == [200] * 4
    assert all(o.json()["usage"]["input_tokens"] == 512 for o in outcomes)


def test_overload_is_refused_before_tokenising(demo_config):
    """With the queue's token room taken, a big request is refused 503 QUEUE_FULL by the upper bound of
    its tokens at once, not after the tokenizer has read it."""
    from server.config import ServerSettings

    config = plain_config(demo_config)
    backend = make_gated_backend()(config, ServerSettings(), "cpu")
    backend.hold.set()
    app, served = build_app(config, backend=backend, max_queue_tokens=1000)
    with LiveServer(app) as live:
        holder = threading.Thread(target=lambda: send(live.url, {"items": [{"text": "holder"}]}, JSON))
        holder.start()
        assert backend.entered.wait(10)
        queued = threading.Thread(target=lambda: send(live.url, {"items": [{"text": "word " * 600}]}, JSON))
        queued.start()  # 512 tokens wait in the queue behind the held forward
        deadline = time.monotonic() + 10
        while served.batcher.queue_depth == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        calls = []
        real_tokenize = served.tokenizer.tokenize
        served.tokenizer.tokenize = lambda *args, **kwargs: calls.append(1) or real_tokenize(*args, **kwargs)
        started = time.perf_counter()
        refused = send(live.url, {"items": [{"text": "word " * 2_000_000}]}, JSON)
        elapsed = time.perf_counter() - started
        backend.hold.clear()
        holder.join(30)
        queued.join(30)
    assert refused.status_code == 503 and refused.json()["detail"]["code"] == "QUEUE_FULL"
    assert refused.headers["Retry-After"] == "1" and calls == [] and elapsed < 2.0
