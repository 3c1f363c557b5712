"""Real SGLang (CPU, torch_native LoRA backend) behind `launch.py --backend sglang`: parity with the torch
backend and PEFT on mixed-adapter batches, the SIE SDK end to end, unknown adapters, dynamic adapters.

Run with `make test-sglang` (builds .venv-sglang; needs SGLANG_USE_CPU_ENGINE=1 and the stubs on
PYTHONPATH, which the make target sets)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.conftest import DEMO_MODEL, REPO, free_port, wait_ready

pytestmark = pytest.mark.sglang
CONFIG = Path(__file__).with_name("demo-sglang.yaml")
ENCODE = f"/v1/encode/{DEMO_MODEL}"
TEXTS = ["The court held that the contract was void.", "Aspirin lowers the risk of stroke.",
         "Quarterly revenue grew twelve percent.", "a short one"]
ADAPTERS = [None, "legal", "medical", "finance"]


@pytest.fixture(scope="module")
def sglang_server(demo_dirs, tmp_path_factory):
    port = free_port()
    log_path = tmp_path_factory.mktemp("sglang") / "server.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen([sys.executable, "launch.py", "--config", str(CONFIG), "--backend", "sglang",
                                    "--port", str(port)], cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                   env={**os.environ})
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, timeout=300, process=process)
        yield url
    except RuntimeError:
        pytest.fail(f"SGLang server did not start:\n{log_path.read_text()[-4000:]}")
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            code = process.wait(timeout=90)
        except subprocess.TimeoutExpired:
            process.kill()
            code = "killed after 90 s"
    # SIGTERM still reaches our drain (SGLang's own handler is handed back) and the exit is clean.
    assert code == 0, f"exit {code}:\n{log_path.read_text()[-4000:]}"


@pytest.fixture(scope="module")
def reference(demo_config, demo_dirs):
    """(text, adapter) -> unit vector from the torch backend, itself checked against PEFT in tests/backends."""
    import dataclasses

    from transformers import AutoTokenizer

    from server.demo_assets import ensure_builtin
    from server.tokenization import TextTokenizer
    from tests.conftest import loaded_model, token_batch

    dynamic = ensure_builtin("builtin:qwen3-tiny/dynamic")
    paths = {**demo_config.adapters.lora_paths, "retail": str(dynamic / "retail")}
    config = dataclasses.replace(demo_config, adapters=dataclasses.replace(demo_config.adapters, lora_paths=paths))
    model = loaded_model(config)
    tokenizer = TextTokenizer(AutoTokenizer.from_pretrained(demo_dirs["model"]), max_seq_len=512,
                              query_template="{text}", default_instruction=None)
    ids = tokenizer.tokenize(TEXTS).input_ids
    table = {}
    for adapter in [*ADAPTERS, "retail"]:
        vectors = model.backend.embed_sync(token_batch(model, ids, [adapter] * len(ids)))
        for text, vector in zip(TEXTS, vectors):
            table[(text, adapter)] = vector / np.linalg.norm(vector)
    asyncio.run(model.backend.close())
    return table


def encode(url, texts, adapter=None):
    options = {"lora_id": adapter} if adapter else {}
    return httpx.post(url + ENCODE, json={"items": [{"text": t} for t in texts], "params": {"options": options}},
                      headers={"Accept": "application/json"}, timeout=120)


def vectors(response):
    assert response.status_code == 200, response.text
    return [np.array(item["dense"]["values"], dtype=np.float32) for item in response.json()["items"]]


def test_mixed_adapters_match_torch_backend(sglang_server, reference):
    async def concurrent():
        async with httpx.AsyncClient(base_url=sglang_server, timeout=120, headers={"Accept": "application/json"}) as c:
            bodies = [{"items": [{"text": t} for t in TEXTS], "params": {"options": {"lora_id": a} if a else {}}}
                      for a in ADAPTERS]
            return await asyncio.gather(*(c.post(ENCODE, json=b) for b in bodies))

    for adapter, response in zip(ADAPTERS, asyncio.run(concurrent())):
        for text, vector in zip(TEXTS, vectors(response)):
            assert np.abs(vector - reference[(text, adapter)]).max() <= 1e-5, (adapter, text)


def test_matches_peft(sglang_server, peft_reference, demo_dirs):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(demo_dirs["model"])
    for adapter in ADAPTERS:
        (vector,) = vectors(encode(sglang_server, TEXTS[:1], adapter))
        expected = peft_reference(tokenizer(TEXTS[0])["input_ids"] + [151643], adapter)
        assert np.abs(vector - expected / np.linalg.norm(expected)).max() <= 1e-5, adapter


def test_sie_sdk_end_to_end(sglang_server, reference):
    from sie_sdk import SIEClient
    from sie_sdk.client.errors import RequestError
    from sie_sdk.types import Item

    with SIEClient(sglang_server) as client:
        results = client.encode(DEMO_MODEL, [Item(id=str(i), text=t) for i, t in enumerate(TEXTS)],
                                options={"lora_id": "legal"})
        assert [r["id"] for r in results] == ["0", "1", "2", "3"]
        for text, result in zip(TEXTS, results):
            assert np.abs(result["dense"] - reference[(text, "legal")]).max() <= 1e-5
        with pytest.raises(RequestError) as info:
            client.encode(DEMO_MODEL, Item(text="x"), options={"lora_id": "astrology"})
    assert info.value.status_code == 400 and "finance, legal, medical" in str(info.value)


def test_dynamic_load_and_unload(sglang_server, reference):
    deadline = time.monotonic() + 120
    while (response := encode(sglang_server, TEXTS[:1], "retail")).status_code == 503:
        assert response.json()["detail"]["code"] == "LORA_LOADING" and time.monotonic() < deadline
        time.sleep(0.2)
    (vector,) = vectors(response)
    assert np.abs(vector - reference[(TEXTS[0], "retail")]).max() <= 1e-5
    unloaded = httpx.delete(sglang_server + f"/v1/models/{DEMO_MODEL}/loras/retail", timeout=60)
    assert unloaded.status_code == 200, unloaded.text
    assert encode(sglang_server, TEXTS[:1], "retail").status_code == 503  # evicted adapters reload on next use


def test_adapter_that_changes_nothing_is_refused(sglang_server, demo_dirs):
    """The effect check on the SGLang backend: preloads passed its forward probe (the server is up), and an
    adapter saved with a zero lora_B is refused with the cause instead of being served as if it worked."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModel

    from server.demo_assets import ensure_builtin

    folder = ensure_builtin("builtin:qwen3-tiny/dynamic") / "blank"  # inside the demo's adapter root
    if not folder.exists():
        base = AutoModel.from_pretrained(demo_dirs["model"], dtype=torch.float32)
        get_peft_model(base, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj"])).save_pretrained(folder)
    refused = httpx.post(sglang_server + f"/v1/models/{DEMO_MODEL}/loras",
                         json={"name": "blank", "source": str(folder)}, timeout=120)
    assert refused.status_code == 400 and "adapter has no effect" in refused.json()["detail"]["message"]
