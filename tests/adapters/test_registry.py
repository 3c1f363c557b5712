"""The adapter registry on the real torch backend and the demo model: adapters loaded on demand from the
configured catalog (what each scale-out replica does) with one load for concurrent callers, 400s that
name the catalog, evictions chosen by an outside LRU counted as evictions, and slots owned here alone."""

from __future__ import annotations

import asyncio

import pytest

from server import errors
from server.api.errors import from_domain


@pytest.fixture()
def on_demand_model(demo_config, demo_dirs):
    from server.build import load_model
    from server.config import ServerSettings, adapters_on_demand
    from server.served_model import ModelState

    model = asyncio.run(load_model(adapters_on_demand(demo_config), ServerSettings(max_loras_per_model=2),
                                   backend="torch"))
    assert model.state is ModelState.READY
    yield model
    asyncio.run(model.backend.close())


def test_nothing_is_preloaded_and_concurrent_misses_load_once(on_demand_model):
    model = on_demand_model
    assert model.adapters.entries == {} and model.adapters.names() == []

    async def scenario():
        await asyncio.gather(*(model.adapters.ensure("legal") for _ in range(10)))

    asyncio.run(scenario())
    assert model.adapters.names() == ["legal"] and model.adapters.counters["loads"] == 1
    assert model.adapters.known("medical")  # configured, not resident: still a known name


def test_unknown_names_are_refused_with_the_catalog(on_demand_model):
    with pytest.raises(errors.UnknownAdapter) as caught:
        asyncio.run(on_demand_model.adapters.ensure("nope"))
    answer = from_domain(caught.value)  # as the API answers it
    assert answer.status == 400 and "configured: finance, legal, medical" in answer.message


def test_an_outside_eviction_counts_and_unloads(on_demand_model):
    model = on_demand_model

    async def scenario():
        await model.adapters.ensure("finance")
        await model.adapters.unload("finance", eviction=True)

    asyncio.run(scenario())
    assert model.adapters.entries == {} and model.adapters.counters["evictions"] == 1


def test_slots_stay_within_capacity_and_are_reused(on_demand_model):
    """Capacity 2: a third adapter evicts the least recently used one and takes over its slot."""
    model = on_demand_model

    async def scenario():
        for name in ("legal", "medical"):
            await model.adapters.ensure(name)
        model.adapters.release(model.adapters.acquire("medical"))  # legal is now the least recently used
        await model.adapters.ensure("finance")

    asyncio.run(scenario())
    slots = {name: model.adapters.slot_of(name) for name in model.adapters.names()}
    assert set(slots) == {"medical", "finance"} and set(slots.values()) == {0, 1}
    assert model.adapters.counters["evictions"] == 1


def test_a_leased_slot_keeps_its_adapter_until_released(on_demand_model):
    """Residency is the registry's alone (the backends do not check again): an unload asked for under a lease
    waits for the release, so a batch formed with the lease's slot finds the adapter installed; once it is
    gone the slot answers base vectors, which no lease can reach."""
    from server.backends.base import TokenBatch

    model, rows = on_demand_model, [[11, 12, 13, 14, 15]]

    def embed(slot):
        return model.backend.embed_sync(TokenBatch(rows, [slot]))[0]

    async def scenario():
        await model.adapters.ensure("legal")
        lease = model.adapters.acquire("legal")
        unloading = asyncio.ensure_future(model.adapters.unload("legal"))
        await asyncio.sleep(0.05)
        assert not unloading.done() and "legal" not in model.adapters.names()  # admits no new lease
        under_lease = embed(lease.slot)
        model.adapters.release(lease)
        await unloading
        return lease.slot, under_lease

    slot, under_lease = asyncio.run(scenario())
    base, after = embed(None), embed(slot)
    assert abs(under_lease - base).max() > 1e-3 and abs(after - base).max() == 0


def test_preloads_over_capacity_are_a_config_error(demo_config, demo_dirs):
    from server.build import load_model
    from server.config import ConfigError, ServerSettings

    with pytest.raises(ConfigError, match="3 preloaded adapters exceed max_loras_per_model"):
        asyncio.run(load_model(demo_config, ServerSettings(max_loras_per_model=2), backend="torch"))


def test_each_preloaded_adapter_is_read_once_at_start(demo_config, demo_dirs, monkeypatch):
    """The registry reads every adapter file once and hands the tensors to the backend (no preflight
    pass, no second read inside the backend)."""
    from server.adapters import loader as registry

    reads = []
    real = registry.load_peft_adapter

    def counting(name, folder, **kwargs):
        reads.append(name)
        return real(name, folder, **kwargs)

    monkeypatch.setattr(registry, "load_peft_adapter", counting)
    from tests.conftest import loaded_model

    model = loaded_model(demo_config)
    asyncio.run(model.backend.close())
    assert sorted(reads) == ["finance", "legal", "medical"]


@pytest.fixture(scope="module")
def zero_b_adapter(tmp_path_factory, demo_dirs):
    """A PEFT adapter saved with its initial weights (lora_B all zero): the pitfall the check catches."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModel

    folder = tmp_path_factory.mktemp("zero-b")
    base = AutoModel.from_pretrained(demo_dirs["model"], dtype=torch.float32)
    get_peft_model(base, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"])).save_pretrained(folder)
    return folder


def with_adapter(demo_config, name, folder):
    import dataclasses

    return dataclasses.replace(demo_config, profiles={}, adapters=dataclasses.replace(
        demo_config.adapters, lora_paths={**demo_config.adapters.lora_paths, name: str(folder)}))


def test_an_adapter_that_changes_nothing_is_refused(demo_config, zero_b_adapter):
    from server.build import load_model
    from server.config import ServerSettings
    from server.lora.peft_format import AdapterError

    config = with_adapter(demo_config, "blank", zero_b_adapter)
    with pytest.raises(AdapterError, match="adapter 'blank': adapter has no effect"):
        asyncio.run(load_model(config, ServerSettings(), backend="torch"))
    allowed = asyncio.run(load_model(config, ServerSettings(allow_noop_adapters=True), backend="torch"))
    assert "blank" in allowed.adapters.names()
    asyncio.run(allowed.backend.close())


def test_a_hot_loaded_adapter_that_changes_nothing_fails_with_the_cause(demo_config, zero_b_adapter):
    import dataclasses

    from server.build import load_model
    from server.config import ServerSettings

    config = dataclasses.replace(demo_config, lora_roots=(str(zero_b_adapter.parent),))
    model = asyncio.run(load_model(config, ServerSettings(), backend="torch"))
    with pytest.raises(errors.AdapterLoadFailed, match="adapter has no effect"):
        asyncio.run(model.adapters.ensure(zero_b_adapter.name))
    asyncio.run(model.backend.close())


def test_a_backend_that_drops_the_deltas_is_caught_by_the_probe(demo_config, demo_dirs):
    """Stand-in for an engine that accepts an adapter and never applies it (no real one does so on
    purpose): the real torch backend with `install` doing nothing. The forward probe refuses it."""
    from server.backends.torch_backend import TorchBackend
    from server.config import ServerSettings
    from server.lora.peft_format import AdapterError

    class DroppingBackend(TorchBackend):
        async def install(self, slot, adapter, *, pinned=False):
            """Accepts the slot and applies nothing."""

    settings = ServerSettings()
    from server.local_model import LocalModel

    model = LocalModel(demo_config, settings, DroppingBackend(demo_config, settings, "cpu"))
    with pytest.raises(AdapterError, match="adapter 'legal': adapter has no effect: a probe"):
        asyncio.run(model.load())
    asyncio.run(model.backend.close())
