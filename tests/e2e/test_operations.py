"""What an operator reads: truncation reported to the client (a header naming the cut items) and counted,
request latency per adapter, adapter load times and failed loads by cause in /metrics."""

from __future__ import annotations

import httpx

from tests.conftest import DEMO_MODEL

LONG = "word " * 2000  # far over the demo's max_seq_len of 512 tokens


def test_truncation_is_reported_and_counted(demo_server):
    url = demo_server.url
    sie = httpx.post(f"{url}/v1/encode/{DEMO_MODEL}", json={"items": [{"text": "short"}, {"text": LONG}]},
                     headers={"Accept": "application/json"})
    assert sie.status_code == 200 and sie.headers["X-Truncated-Items"] == "1"
    openai = httpx.post(f"{url}/v1/embeddings", json={"model": f"{DEMO_MODEL}:legal", "input": [LONG, "x", LONG]})
    assert openai.status_code == 200 and openai.headers["X-Truncated-Items"] == "0,2"
    whole = httpx.post(f"{url}/v1/encode/{DEMO_MODEL}", json={"items": [{"text": "short"}]})
    assert "X-Truncated-Items" not in whole.headers
    metrics = httpx.get(f"{url}/metrics").text
    base = next(line for line in metrics.splitlines()
                if line.startswith("sie_truncated_items_total{") and 'adapter="base"' in line)
    legal = next(line for line in metrics.splitlines()
                 if line.startswith("sie_truncated_items_total{") and 'adapter="legal"' in line)
    assert float(base.split()[-1]) >= 1 and float(legal.split()[-1]) >= 2


def test_latency_per_adapter_and_adapter_load_series(demo_server):
    url = demo_server.url
    httpx.post(f"{url}/v1/encode/{DEMO_MODEL}", json={"items": [{"text": "a"}], "params": {"options": {
        "lora_id": "medical"}}})
    httpx.post(f"{url}/v1/encode/{DEMO_MODEL}", json={"items": [{"text": "a"}], "params": {"options": {
        "lora_id": "not-an-adapter"}}})
    metrics = httpx.get(f"{url}/metrics").text
    assert f'sie_request_seconds_count{{adapter="medical",api="sie",model="{DEMO_MODEL}"}}' in metrics
    assert f'sie_request_seconds_count{{adapter="other",api="sie",model="{DEMO_MODEL}"}}' in metrics
    count = next(line for line in metrics.splitlines() if line.startswith("sie_adapter_load_seconds_count"))
    assert float(count.split()[-1]) >= 3  # the three preloaded adapters
    assert f'sie_adapter_load_seconds_bucket{{le="+Inf",model="{DEMO_MODEL}"}}' in metrics
    for cause in ("invalid_adapter", "no_effect", "source", "no_slot", "other"):
        assert f'sie_adapter_load_failures_by_cause_total{{cause="{cause}",model="{DEMO_MODEL}"}}' in metrics


def test_text_logs_to_a_file_are_clean(demo_dirs, tmp_path):
    """A log that is not a terminal: no progress-bar frames, probes at DEBUG, other requests logged."""
    from tests.conftest import launched_demo

    with open(tmp_path / "server.log", "w+") as log:
        with launched_demo(log=log) as url:
            for _ in range(3):
                assert httpx.get(f"{url}/readyz").status_code == 200
            httpx.get(f"{url}/metrics")
            httpx.get(f"{url}/v1/models")
        log.seek(0)
        text = log.read()
    assert "it/s]" not in text and "\r" not in text, text[-1500:]
    assert "/readyz" not in text and "/metrics" not in text
    assert "GET /v1/models 200" in text
