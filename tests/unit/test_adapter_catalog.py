"""Adapters loaded on demand from the configured catalog (what each scale-out replica does), on the
real torch backend and the demo model: one load for concurrent callers, 400s that name the catalog,
and evictions chosen by an outside LRU counted as evictions."""

from __future__ import annotations

import asyncio

import pytest

from server import errors


@pytest.fixture()
def on_demand_engine(demo_config, demo_dirs):
    from server.backends.torch_backend import TorchBackend
    from server.config import EngineConfig, adapters_on_demand
    from server.engine import ModelEngine

    config = adapters_on_demand(demo_config)
    settings = EngineConfig(max_loras_per_model=2)
    engine = ModelEngine(config, settings, TorchBackend(config, settings, "cpu"))
    engine.load()
    assert engine.state == "ready"
    yield engine
    engine.backend.close()


def test_nothing_is_preloaded_and_concurrent_misses_load_once(on_demand_engine):
    engine = on_demand_engine
    assert engine.backend.adapters() == {} and engine.adapter_names() == []

    async def scenario():
        await asyncio.gather(*(engine.ensure_adapter("legal") for _ in range(10)))

    asyncio.run(scenario())
    assert engine.adapter_names() == ["legal"] and engine.adapters.counters["loads"] == 1
    assert engine.has_adapter("medical")  # configured, not resident: still a known name


def test_unknown_names_are_refused_with_the_catalog(on_demand_engine):
    with pytest.raises(errors.ApiError) as caught:
        asyncio.run(on_demand_engine.ensure_adapter("nope"))
    assert caught.value.status == 400 and "configured: finance, legal, medical" in caught.value.message


def test_an_outside_eviction_counts_and_unloads(on_demand_engine):
    engine = on_demand_engine

    async def scenario():
        await engine.ensure_adapter("finance")
        await engine.adapters.unload("finance", eviction=True)

    asyncio.run(scenario())
    assert engine.backend.adapters() == {} and engine.adapters.counters["evictions"] == 1
