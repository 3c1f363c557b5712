"""What the Kubernetes inference gateway reads from a server's /metrics, and a port of its
LoRA-affinity scorer (LoraAffinityScorer.Score), shared by the single-server and scale-out tests."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families


def lora_info(metrics_url: str) -> dict:
    """The gateway's reading of one scrape: the latest vllm:lora_requests_info sample's labels."""
    families = {f.name: f for f in text_string_to_metric_families(httpx.get(metrics_url, timeout=10).text)}
    sample = max(families["vllm:lora_requests_info"].samples, key=lambda s: s.value)
    split = lambda text: {name for name in text.split(",") if name}  # noqa: E731
    replica = families.get("sie_replica_info")
    return {"max": int(sample.labels["max_lora"]), "active": split(sample.labels["running_lora_adapters"]),
            "waiting": split(sample.labels["waiting_lora_adapters"]),
            "queue": families["vllm:num_requests_waiting"].samples[0].value,
            "running": families["vllm:num_requests_running"].samples[0].value,
            "loads": sum(s.value for s in families["sie_adapter_loads"].samples if s.name.endswith("_total")),
            "evictions": sum(s.value for s in families["sie_adapter_evictions"].samples
                             if s.name.endswith("_total")),
            "replica": replica.samples[0].labels["replica"] if replica else None}


def lora_affinity_score(info: dict, target: str) -> float:
    """1.0 adapter active, 0.8 room to load it, 0.6 adapter queued, else 0.0."""
    if target in info["active"]:
        return 1.0
    if len(info["active"]) + len(info["waiting"]) < info["max"]:
        return 0.8
    if target in info["waiting"]:
        return 0.6
    return 0.0
