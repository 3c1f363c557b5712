"""Prometheus metrics (prometheus-client), one registry per app: request, batch and adapter series.

Request and batch series are recorded as they happen; queue depth and adapter residency are read
from the served models at scrape time, so there is no second copy of that state to drift.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from server import errors
from server.api.errors import ApiError, from_domain
from server.batching import BatchShape
from server.served_model import ModelStats, ServedModel

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
TOKEN_BUCKETS = (16, 64, 256, 1024, 2048, 4096, 8192, 16384, 32768, 65536)
BASE = "base"


@dataclass
class RequestTrack:
    model: str = "other"
    adapter: str | None = None
    items: int = 0
    tokens: int = 0
    queue_s: float | None = None
    inference_s: float | None = None
    truncated: int = 0


class ModelCollector:
    """Reads live model state (`ServedModel.status().stats`) at scrape time."""

    def __init__(self, models: Mapping[str, ServedModel]):
        self.models = models

    def collect(self):
        depth = GaugeMetricFamily("sie_queue_depth", "Rows waiting for a batch", labels=["model"])
        resident = GaugeMetricFamily("sie_resident_adapters", "Adapters resident in the backend", labels=["model"])
        loads = CounterMetricFamily("sie_adapter_loads", "Adapter loads started", labels=["model"])
        failures = CounterMetricFamily("sie_adapter_load_failures", "Adapter loads that failed", labels=["model"])
        evictions = CounterMetricFamily("sie_adapter_evictions", "Adapters evicted (LRU)", labels=["model"])
        by_cause = CounterMetricFamily("sie_adapter_load_failures_by_cause", "Adapter loads that failed, by cause "
                                       "(no_slot: no free slot, never remembered)", labels=["model", "cause"])
        load_time = HistogramMetricFamily("sie_adapter_load_seconds", "Time to read, validate and install an "
                                          "adapter", labels=["model"])
        startup = GaugeMetricFamily("sie_startup_seconds", "Seconds per start-up phase (tokenizer, weights, "
                                    "adapters, compile, graph_capture, graph_capture_background; ready: to ready)",
                                    labels=["model", "phase"])
        compiles = CounterMetricFamily("sie_compiles", "Graphs the forward was compiled into (torch.compile)",
                                       labels=["model"])
        graphs = GaugeMetricFamily("sie_cuda_graphs", "CUDA graph buckets by state (captured, planned)",
                                   labels=["model", "state"])
        stats = {name: s for name, model in self.models.items() if (s := model.status().stats) is not None}
        for name, s in stats.items():
            for phase, seconds in s.startup_seconds + ((("ready", s.ready_seconds),) if s.ready_seconds else ()):
                startup.add_metric([name, phase], seconds)
            compiles.add_metric([name], s.engine.compiles)
            graphs.add_metric([name, "captured"], s.engine.graphs_captured)
            graphs.add_metric([name, "planned"], s.engine.graphs_planned)
            depth.add_metric([name], s.queue_depth)
            resident.add_metric([name], len(s.resident_adapters))
            loads.add_metric([name], s.loads)
            failures.add_metric([name], s.load_failures)
            evictions.add_metric([name], s.evictions)
            for cause, count in s.failures_by_cause:
                by_cause.add_metric([name, cause], count)
            if s.load_seconds:
                buckets = [(str(bound), n) for bound, n in s.load_seconds]
                load_time.add_metric([name], buckets + [("+Inf", s.load_count)], s.load_seconds_sum)
        yield from (depth, resident, loads, failures, evictions, by_cause, load_time, startup, compiles, graphs)
        if stats:
            yield from tier_families(stats)
            yield from gateway_families(stats)


def tier_families(stats: Mapping[str, ModelStats]):
    """Where each adapter sits (device, host, disk), loads and their seconds by the tier they read from, and
    the host tier's bytes."""
    where = GaugeMetricFamily("sie_adapter_tier", "1 for the tier each known adapter sits in (device: a backend "
                              "slot, host: the host-memory tier, disk: only its source)", labels=["model", "adapter",
                                                                                                   "tier"])
    loads = CounterMetricFamily("sie_adapter_loads_by_tier", "Adapter loads by the tier they read from",
                                labels=["model", "tier"])
    seconds = CounterMetricFamily("sie_adapter_load_seconds_by_tier", "Seconds adapter loads took, by the tier they "
                                  "read from", labels=["model", "tier"])
    held = GaugeMetricFamily("sie_adapter_host_bytes", "Bytes of adapter weights held in the host tier",
                             labels=["model"])
    for name, s in stats.items():
        for adapter, tier in s.adapter_tiers:
            where.add_metric([name, adapter, tier], 1)
        for tier, count, total in s.loads_by_tier:
            loads.add_metric([name, tier], count)
            seconds.add_metric([name, tier], total)
        held.add_metric([name], s.host_bytes)
    yield from (where, loads, seconds, held)


def gateway_families(stats: Mapping[str, ModelStats]):
    """The vLLM-named series the Kubernetes inference gateway (llm-d endpoint picker) scrapes. Adapter
    names are written as OpenAI clients write them: `<model>:<adapter>`."""
    waiting = GaugeMetricFamily("vllm:num_requests_waiting", "Rows waiting for a batch", labels=["model_name"])
    running = GaugeMetricFamily("vllm:num_requests_running", "Rows in the forward now running",
                                labels=["model_name"])
    info = GaugeMetricFamily("vllm:lora_requests_info", "Resident and queued LoRA adapters",
                             labels=["max_lora", "running_lora_adapters", "waiting_lora_adapters"])
    running_names, waiting_names, max_lora = [], [], 0
    for name, s in stats.items():
        waiting.add_metric([name], s.queue_depth)
        running.add_metric([name], s.running_rows)
        running_names += [f"{name}:{a}" for a in s.resident_adapters]
        waiting_names += [f"{name}:{a}" for a in s.waiting_adapters]
        max_lora += s.max_loras
    info.add_metric([str(max_lora), ",".join(running_names), ",".join(waiting_names)], time.time())
    return waiting, running, info


class Metrics:
    def __init__(self, models: Mapping[str, ServedModel], *, replica: str | None = None):
        self.models = models
        self.registry = CollectorRegistry()
        r = self.registry
        if replica:  # which scrape target this is (matches X-Replica-ID)
            Gauge("sie_replica_info", "The server or replica behind this endpoint", ["replica"],
                  registry=r).labels(replica).set(1)
        labels = ["api", "model", "adapter", "status"]
        self.requests = Counter("sie_requests", "Requests answered", labels, registry=r)
        self.items = Counter("sie_items", "Items embedded", ["model", "adapter"], registry=r)
        self.tokens = Counter("sie_input_tokens", "Input tokens embedded", ["model", "adapter"], registry=r)
        self.latency = Histogram("sie_request_seconds", "Request latency", ["api", "model", "adapter"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.truncated = Counter("sie_truncated_items", "Items cut to max_seq_len tokens (overflow_policy "
                                 "truncate)", ["model", "adapter"], registry=r)
        self.queue = Histogram("sie_queue_seconds", "Time rows waited for a batch", ["model"],
                               buckets=LATENCY_BUCKETS, registry=r)
        self.inference = Histogram("sie_inference_seconds", "Forward time of the batches of a request", ["model"],
                                   buckets=LATENCY_BUCKETS, registry=r)
        self.batch_rows = Histogram("sie_batch_rows", "Rows per forward batch", ["model"],
                                    buckets=SIZE_BUCKETS, registry=r)
        self.batch_tokens = Histogram("sie_batch_padded_tokens", "Padded tokens per forward batch", ["model"],
                                      buckets=TOKEN_BUCKETS, registry=r)
        self.batch_token_kinds = Counter("sie_batch_tokens", "Tokens computed by forward batches: real, or padding "
                                         "(rows padded to the batch's longest)", ["model", "kind"], registry=r)
        self.batch_adapters = Histogram("sie_batch_adapters", "Distinct adapters (base counts) per forward batch",
                                        ["model"], buckets=SIZE_BUCKETS, registry=r)
        r.register(ModelCollector(models))
        self._children: dict = {}

    def adapter_label(self, model: str, adapter: str | None) -> str:
        """Known adapters by name; anything else collapses to one label (client input has no cardinality)."""
        if adapter is None:
            return BASE
        served = self.models.get(model)
        return adapter if served is not None and served.adapters.known(adapter) else "other"

    def batch_observer(self, model: str) -> Callable[[BatchShape], None]:
        rows, tokens, adapters = (metric.labels(model) for metric in (self.batch_rows, self.batch_tokens,
                                                                       self.batch_adapters))
        real, padding = self.batch_token_kinds.labels(model, "real"), self.batch_token_kinds.labels(model, "padding")

        def observe(batch: BatchShape) -> None:
            rows.observe(batch.rows)
            tokens.observe(batch.padded_tokens)
            real.inc(batch.tokens)
            padding.inc(batch.padded_tokens - batch.tokens)
            adapters.observe(batch.adapters)
        return observe

    def _child(self, metric, *values: str):
        """`metric.labels(*values)`, remembered: a request records seven series, and the label sets are bounded
        (served models, known adapters, statuses), so the lookup is a dict's, not prometheus-client's."""
        key = (metric, values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*values)
        return child

    @contextmanager
    def track(self, api: str, model: str = "other") -> Iterator[RequestTrack]:
        """Records one request: status from the raised error as the API answers it (500 for anything else)."""
        track, started, status = RequestTrack(model=model), time.perf_counter(), 200
        try:
            yield track
        except ApiError as exc:
            status = exc.status
            raise
        except errors.ServingError as exc:
            status = from_domain(exc).status
            raise
        except BaseException:
            status = 500
            raise
        finally:
            model_label = track.model if track.model in self.models else "other"
            adapter = self.adapter_label(track.model, track.adapter)
            child = self._child
            child(self.requests, api, model_label, adapter, str(status)).inc()
            child(self.latency, api, model_label, adapter).observe(time.perf_counter() - started)
            if status == 200:
                child(self.items, model_label, adapter).inc(track.items)
                child(self.truncated, model_label, adapter).inc(track.truncated)
                child(self.tokens, model_label, adapter).inc(track.tokens)
                if track.queue_s is not None:
                    child(self.queue, model_label).observe(track.queue_s)
                    child(self.inference, model_label).observe(track.inference_s)

    def render(self) -> bytes:
        return generate_latest(self.registry)
