"""Scale-out tier (`make test-scaleout`): `launch.py --replicas 2` starts a local Ray cluster, two
encoder replicas with room for 2 adapters each, six PEFT adapters made here, all on loopback. The
real SIE SDK and openai clients talk to it; vectors are compared with a single in-process server."""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.conftest import DEMO_MODEL, REPO, LiveServer, build_app, free_port, wait_ready
from tests.gateway_scorer import lora_affinity_score, lora_info

pytestmark = pytest.mark.scaleout
pytest.importorskip("ray.serve")
psutil = pytest.importorskip("psutil")

ADAPTERS = ("a1", "a2", "a3", "a4", "a5", "a6")  # a1-a4: the rounds; a5: past capacity; a6: the burst
ROUNDS = 20
TEXT = "How long do I have to return a damaged parcel?"
TOLERANCE = 1e-5
PROPAGATION_S = 1.5  # replicas push adapter ids to Ray's routers asynchronously (0.1 s push, then a long poll)


@pytest.fixture(scope="module")
def config_yaml(demo_dirs, tmp_path_factory) -> Path:
    from server.demo_lora import build_adapter

    folder = tmp_path_factory.mktemp("scaleout")
    targets = [("q_proj", "v_proj"), ("q_proj", "k_proj", "v_proj", "o_proj"), ("gate_proj", "up_proj", "down_proj")]
    lines = ["name: demo/qwen3-tiny", f"model_path: {demo_dirs['model']}", "adapter: torch", "dtype: float32",
             "max_seq_len: 512", "dims: 64", "min_dims: 16", "adapter_options_loadtime:", "  lora_paths:"]
    for i, name in enumerate(ADAPTERS):
        build_adapter(demo_dirs["model"], folder / name, seed=300 + i, targets=targets[i % len(targets)])
        lines.append(f"    {name}: {folder / name}")
    path = folder / "scaleout.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def reference(config_yaml) -> dict:
    """Single-server vectors (in-process, all adapters preloaded) for the base model and every adapter."""
    from server.config import load_model_config

    app, _ = build_app(load_model_config(config_yaml))
    with LiveServer(app) as live:
        return {name: encode_json(live.url, name)[0] for name in (None, *ADAPTERS)}


def encode_json(url: str, lora_id: str | None) -> tuple[np.ndarray, str, int]:
    options = {"lora_id": lora_id} if lora_id else {}
    response = httpx.post(f"{url}/v1/encode/{DEMO_MODEL}", headers={"Accept": "application/json"}, timeout=60,
                          json={"items": [{"text": TEXT}], "params": {"options": options}})
    if response.status_code != 200:
        return np.zeros(0), response.headers.get("X-Replica-ID", ""), response.status_code
    vector = np.asarray(response.json()["items"][0]["dense"]["values"], dtype=np.float32)
    return vector, response.headers["X-Replica-ID"], 200


class Cluster:
    def __init__(self, yaml: Path, log: Path):
        self.port, self.metrics_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        command = [sys.executable, "launch.py", "--config", str(yaml), "--replicas", "2", "--replica-cpus", "1",
                   "--port", str(self.port), "--replica-metrics-port", str(self.metrics_port),
                   "--max-loras-per-model", "2"]
        self.process = subprocess.Popen(command, cwd=REPO, stdout=log.open("wb"), stderr=subprocess.STDOUT,
                                        start_new_session=True, env={**os.environ, "RAY_AUTH_MODE": "disabled"})
        self.holder: dict[str, str] = {}  # adapter -> replica id, as X-Replica-ID said

    def scrapes(self) -> dict[str, dict]:
        """Each replica's own /metrics, read the way the inference gateway reads it, by replica id."""
        found = {}
        for port in range(self.metrics_port, self.metrics_port + 8):
            try:
                info = lora_info(f"http://127.0.0.1:{port}/metrics")
            except (httpx.HTTPError, KeyError):
                continue
            if info["replica"]:
                found[info["replica"]] = info
        return found

    def totals(self, key: str) -> float:
        return sum(info[key] for info in self.scrapes().values())


@pytest.fixture(scope="module")
def cluster(config_yaml, reference, tmp_path_factory):
    cluster = Cluster(config_yaml, tmp_path_factory.mktemp("ray") / "launch.log")
    try:
        wait_ready(cluster.url, timeout=90, process=cluster.process)
        deadline = time.monotonic() + 30
        while len(cluster.scrapes()) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        yield cluster
    finally:
        if cluster.process.poll() is None:
            os.killpg(cluster.process.pid, signal.SIGKILL)
        print(cluster.log.read_text()[-4000:])


def assert_close(vector, expected) -> None:
    assert np.abs(np.asarray(vector, dtype=np.float32) - expected).max() <= TOLERANCE


def test_warm_up_puts_two_adapters_on_each_replica(cluster, reference):
    assert len(cluster.scrapes()) == 2
    for name in ADAPTERS[:4]:
        vector, replica, status = encode_json(cluster.url, name)
        assert status == 200
        assert_close(vector, reference[name])
        cluster.holder[name] = replica
        time.sleep(PROPAGATION_S)
    resident = {replica: info["active"] for replica, info in cluster.scrapes().items()}
    assert sorted(len(names) for names in resident.values()) == [2, 2]
    for name, replica in cluster.holder.items():
        assert f"{DEMO_MODEL}:{name}" in resident[replica]
    assert cluster.totals("loads") == 4


def test_rounds_through_sdk_and_openai_stay_on_one_replica(cluster, reference):
    import openai
    from sie_sdk import SIEClient
    from sie_sdk.types import Item

    seen = collections.defaultdict(set)
    last_replica = {}
    hooks = {"response": [lambda r: last_replica.__setitem__("id", r.headers.get("X-Replica-ID"))]}
    sdk = SIEClient(cluster.url, http_client=httpx.Client(base_url=cluster.url, event_hooks=hooks, timeout=60))
    oai = openai.OpenAI(base_url=cluster.url + "/v1", api_key="unused", max_retries=0)
    for _ in range(ROUNDS):
        for name in ADAPTERS[:4]:
            result = sdk.encode(DEMO_MODEL, Item(text=TEXT), options={"lora_id": name})
            assert_close(result["dense"], reference[name])
            seen[name].add(last_replica["id"])
            raw = oai.embeddings.with_raw_response.create(model=f"{DEMO_MODEL}:{name}", input=TEXT)
            assert_close(raw.parse().data[0].embedding, reference[name])
            seen[name].add(raw.headers["X-Replica-ID"])
    assert {name: replicas for name, replicas in seen.items()} == {n: {r} for n, r in cluster.holder.items()}
    assert cluster.totals("loads") == 4 and cluster.totals("evictions") == 0


def test_base_requests_reach_both_replicas(cluster, reference):
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: encode_json(cluster.url, None), range(16)))
    for vector, _, status in answers:
        assert status == 200
        assert_close(vector, reference[None])
    assert len({replica for _, replica, _ in answers}) == 2


def test_gateway_scorer_picks_the_replica_holding_the_adapter(cluster):
    scrapes = cluster.scrapes()
    for name, holder in cluster.holder.items():
        target = f"{DEMO_MODEL}:{name}"
        scores = {replica: lora_affinity_score(info, target) for replica, info in scrapes.items()}
        assert max(scores, key=scores.get) == holder and scores[holder] == 1.0
    for info in scrapes.values():
        assert info["max"] == 2 and info["queue"] == 0 and info["running"] == 0


def test_past_capacity_evicts_and_reloads_give_the_same_vectors(cluster, reference):
    before = cluster.scrapes()
    vector, replica, status = encode_json(cluster.url, "a5")
    assert status == 200
    assert_close(vector, reference["a5"])
    after = cluster.scrapes()
    assert after[replica]["evictions"] == before[replica]["evictions"] + 1
    (evicted,) = before[replica]["active"] - after[replica]["active"]
    time.sleep(PROPAGATION_S)
    name = evicted.rpartition(":")[2]
    vector, _, status = encode_json(cluster.url, name)
    assert status == 200
    assert_close(vector, reference[name])


def test_burst_of_24_for_one_new_adapter(cluster, reference):
    before = {replica: info["loads"] for replica, info in cluster.scrapes().items()}
    with ThreadPoolExecutor(24) as pool:
        answers = list(pool.map(lambda _: encode_json(cluster.url, "a6"), range(24)))
    assert [status for _, _, status in answers] == [200] * 24
    for vector, _, _ in answers:
        assert_close(vector, reference["a6"])
    after = cluster.scrapes()
    for replica, loads in before.items():  # concurrent misses never load it twice on one replica
        assert after[replica]["loads"] - loads <= 1
    assert all(f"{DEMO_MODEL}:a6" in after[replica]["active"] for _, replica, _ in answers)


def test_errors_keep_their_status_through_ray(cluster):
    _, _, status = encode_json(cluster.url, "nope")
    assert status == 400
    refused = httpx.post(cluster.url + "/v1/load_lora_adapter", json={"lora_name": "x", "lora_path": "/tmp"})
    assert refused.status_code == 400 and refused.json()["detail"]["code"] == "NOT_SUPPORTED"
    from sie_sdk import SIEClient

    info, *variants = SIEClient(cluster.url).list_models()
    states = {v["name"]: v["state"] for v in variants}
    assert all(states[f"{DEMO_MODEL}:{name}"] == "available" for name in ADAPTERS), states
    assert {lora["name"]: lora["state"] for lora in info["loras"]} == {name: "on_demand" for name in ADAPTERS}
    models = httpx.get(cluster.url + "/openai/v1/models").json()
    assert {f"{DEMO_MODEL}:{name}" for name in ADAPTERS} <= {m["id"] for m in models["data"]}


def test_sigterm_stops_serve_and_ray_with_no_process_left(cluster):
    family = psutil.Process(cluster.process.pid).children(recursive=True)
    assert any("raylet" in " ".join(p.cmdline()) for p in family)
    cluster.process.send_signal(signal.SIGTERM)
    assert cluster.process.wait(timeout=60) == 0
    _, alive = psutil.wait_procs(family, timeout=30)
    assert [p for p in alive if p.status() != psutil.STATUS_ZOMBIE] == []
