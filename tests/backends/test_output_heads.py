"""Dense, sparse and multivector outputs from one forward: bge-m3's heads and a SPLADE masked-LM, in mixed
batches of adapters and output types, against the reference formulas with PEFT applying each adapter
(fp32, <= 1e-5), and each row alone against the same row in a batch. FlagEmbedding's and
sentence-transformers' own classes are checked in the multi-output tier (tests/multioutput)."""

from __future__ import annotations

import asyncio
import dataclasses
from types import MappingProxyType

import numpy as np
import pytest

from server.backends.base import TokenBatch
from server.config import AdapterOptions, ConfigError, ModelConfig
from server.options import EncodeOptions
from tests.conftest import loaded_model
from tests.multi_output_assets import (
    as_dict,
    build_lora,
    build_splade,
    m3_reference,
    m3_with_adapters,
    merged,
    sparse_diff,
    splade_reference,
)

TEXTS = ["the court held that the statute of limitations had expired",
         "aspirin", "hybrid search mixes dense vectors, sparse lexical weights and late interaction over tokens",
         "quarterly revenue grew", "<mask> is kept, unlike <unk>"]
ALL = frozenset({"dense", "sparse", "multivector"})
MAX_LEN = 64


@pytest.fixture(scope="module")
def m3(tmp_path_factory):
    root = tmp_path_factory.mktemp("m3")
    folder, adapters, config = m3_with_adapters(root, MAX_LEN)
    model = loaded_model(config)
    yield folder, adapters, model
    asyncio.run(model.backend.close())


def encode(model, texts, adapter=None, output_types=("dense",), **options):
    """`model.encode` in a loop of its own, through a batcher made for that loop."""
    from server.batching import Batcher

    async def run():
        model.batcher = Batcher(model._run_batch, model.batcher.limits, name=model.name)
        model.batcher.start()
        try:
            return await model.encode(texts, EncodeOptions(lora_id=adapter, output_types=output_types, **options))
        finally:
            await model.batcher.stop()
    return asyncio.run(run())


def test_m3_layout_and_sizes(m3):
    folder, _, model = m3
    assert model.backend.layout.outputs == ("dense", "sparse", "multivector")
    assert model.output_dims() == {"dense": 32, "sparse": len(model.tokenizer.hf), "multivector": 32}


@pytest.mark.parametrize("adapter", [None, "qkv", "qv-dense"])
def test_m3_outputs_match_the_reference(m3, adapter):
    folder, adapters, model = m3
    reference_model = merged(folder, adapters[adapter] if adapter else None)
    result = encode(model, TEXTS, adapter, ("dense", "sparse", "multivector"))
    for i, text in enumerate(TEXTS):
        expected = m3_reference(folder, reference_model, text, MAX_LEN)
        assert np.abs(result.vectors[i] - expected["dense"]).max() <= 1e-5
        assert result.multivector[i].shape == expected["multivector"].shape
        assert np.abs(result.multivector[i] - expected["multivector"]).max() <= 1e-5
        assert sparse_diff(as_dict(result.sparse[i]), expected["sparse"]) <= 1e-5
        assert list(result.sparse[i].indices) == sorted(result.sparse[i].indices)
        assert result.sparse[i].indices.dtype == np.int32 and result.sparse[i].values.dtype == np.float32


def test_m3_sparse_keeps_mask_and_drops_cls_eos_pad_unk(m3):
    _, _, model = m3
    tokenizer = model.tokenizer.hf
    ids = model.tokenizer.tokenize([TEXTS[4]]).input_ids[0]
    assert tokenizer.mask_token_id in ids and tokenizer.unk_token_id in ids
    sparse = encode(model, [TEXTS[4]], None, ("sparse",)).sparse[0]
    dropped = {tokenizer.cls_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer.unk_token_id}
    assert model.backend.heads.dropped_ids == dropped
    assert not dropped & set(sparse.indices.tolist())


def test_mixed_batch_of_adapters_and_outputs_equals_rows_alone(m3):
    """Rows asking different outputs under different adapters share one forward; each equals its row alone."""
    _, adapters, model = m3
    names = [None, "qkv", "qv-dense", "qkv", None]
    wanted = [ALL, frozenset({"sparse"}), frozenset({"multivector", "dense"}), frozenset({"dense"}), ALL]
    rows = model.tokenizer.tokenize(TEXTS).input_ids
    slots = [None if n is None else model.adapters.slot_of(n) for n in names]
    together = model.backend.embed_outputs_sync(TokenBatch(rows, slots, wanted))
    for i in range(len(rows)):
        alone = model.backend.embed_outputs_sync(TokenBatch([rows[i]], [slots[i]], [ALL]))[0]
        got = together[i]
        assert (got.dense is not None) == ("dense" in wanted[i])
        assert (got.sparse is not None) == ("sparse" in wanted[i])
        assert (got.multivector is not None) == ("multivector" in wanted[i])
        if got.dense is not None:
            assert np.abs(got.dense - alone.dense).max() <= 1e-5
        if got.multivector is not None:
            assert np.abs(got.multivector - alone.multivector).max() <= 1e-5
        if got.sparse is not None:
            assert sparse_diff(as_dict(got.sparse), as_dict(alone.sparse)) <= 1e-5
    dense_only = model.backend.embed_sync(TokenBatch(rows, slots))
    assert np.abs(dense_only[0] - together[0].dense).max() <= 1e-5


def test_adapters_change_every_output(m3):
    _, _, model = m3
    base = encode(model, [TEXTS[0]], None, ("dense", "sparse", "multivector"))
    tuned = encode(model, [TEXTS[0]], "qkv", ("dense", "sparse", "multivector"))
    assert np.abs(base.vectors - tuned.vectors).max() > 1e-3
    assert np.abs(base.multivector[0] - tuned.multivector[0]).max() > 1e-3
    assert as_dict(base.sparse[0]) != as_dict(tuned.sparse[0])


def test_multivector_follows_output_dtype_and_not_dims(m3):
    _, _, model = m3
    result = encode(model, [TEXTS[0]], None, ("dense", "multivector", "sparse"), dims=16, output_dtype="float16")
    assert result.vectors.shape == (1, 16) and result.vectors.dtype == np.float16
    assert result.multivector[0].shape[1] == 32 and result.multivector[0].dtype == np.float16
    assert result.sparse[0].values.dtype == np.float32


@pytest.fixture(scope="module", params=[("max", "relu"), ("sum", "log1p_relu")], ids=["max-relu", "sum-log1p"])
def splade(request, tmp_path_factory):
    pooling, activation = request.param
    root = tmp_path_factory.mktemp("splade")
    folder = build_splade(root / "model", pooling=pooling, activation=activation)
    adapters = {"mlm": build_lora(folder, root / "mlm", ["query", "value"], seed=7, masked_lm=True),
                "bare": build_lora(folder, root / "bare", ["key", "attention.output.dense"], seed=8)}
    config = ModelConfig(name="test/splade-tiny", model_path=str(folder), backend="torch", dtype="float32",
                         max_seq_len=48, adapters=AdapterOptions(
                             lora_paths=MappingProxyType({k: str(v) for k, v in adapters.items()})))
    model = loaded_model(config)
    yield folder, adapters, model, pooling, activation
    asyncio.run(model.backend.close())


@pytest.mark.parametrize("adapter", [None, "mlm", "bare"])
def test_splade_matches_the_reference(splade, adapter):
    folder, adapters, model, pooling, activation = splade
    assert model.backend.layout.outputs == ("sparse",)
    assert model.output_dims() == {"sparse": len(model.tokenizer.hf)}
    reference_model = merged(folder, adapters[adapter] if adapter else None, masked_lm=True,
                             bare_adapter=adapter == "bare")
    texts = TEXTS[:4]
    result = encode(model, texts, adapter, ("sparse",))
    assert result.vectors is None and result.multivector is None
    for i, text in enumerate(texts):
        expected = splade_reference(folder, reference_model, text, max_length=48, pooling=pooling,
                                    activation=activation)
        assert sparse_diff(as_dict(result.sparse[i]), expected) <= 1e-5


def test_splade_chunks_give_the_same_weights(splade, monkeypatch):
    """The logits are made a few rows and tokens at a time; the weights do not depend on the chunking."""
    from server.backends import output_heads

    _, _, model, _, _ = splade
    rows = model.tokenizer.tokenize(TEXTS).input_ids
    batch = TokenBatch(rows, [None] * len(rows), [frozenset({"sparse"})] * len(rows))
    whole = model.backend.embed_outputs_sync(batch)
    monkeypatch.setattr(output_heads, "SPLADE_CHUNK_ELEMENTS", 3 * len(model.tokenizer.hf))
    chunked = model.backend.embed_outputs_sync(batch)
    for a, b in zip(whole, chunked):
        assert sparse_diff(as_dict(a.sparse), as_dict(b.sparse)) <= 1e-5


def test_one_head_file_alone_is_a_config_error(m3, tmp_path):
    import shutil

    from server.model_layout import read_layout

    folder, _, model = m3
    for kept in ("colbert_linear.pt", "sparse_linear.pt"):
        partial = tmp_path / kept
        shutil.copytree(folder, partial)
        (partial / ({"colbert_linear.pt", "sparse_linear.pt"} - {kept}).pop()).unlink()
        with pytest.raises(ConfigError, match=f"has {kept} but not"):
            read_layout(partial, model.config)


def test_a_broken_head_file_is_a_config_error(m3, tmp_path):
    import shutil

    import torch

    folder, _, model = m3
    shutil.copytree(folder, tmp_path / "m")
    torch.save({"weight": torch.zeros(2, 5)}, tmp_path / "m" / "sparse_linear.pt")
    config = dataclasses.replace(model.config, model_path=str(tmp_path / "m"), adapters=AdapterOptions())
    with pytest.raises(ConfigError, match="sparse_linear.pt must hold"):
        loaded_model(config)


def test_pooling_splade_on_a_plain_masked_lm_folder(splade, tmp_path):
    import shutil

    from server.model_layout import SpladeHead, read_layout

    folder, _, model, _, _ = splade
    shutil.copytree(folder, tmp_path / "plain", ignore=shutil.ignore_patterns("modules.json", "1_SpladePooling"))
    layout = read_layout(tmp_path / "plain", dataclasses.replace(model.config, pooling="splade"))
    assert layout.splade == SpladeHead() and layout.outputs == ("sparse",)
    assert read_layout(tmp_path / "plain", model.config).splade is None


def test_a_profile_asking_an_output_the_model_lacks_stops_the_load(splade):
    from server.config import Profile

    folder, _, model, _, _ = splade
    config = dataclasses.replace(model.config, adapters=AdapterOptions(), profiles=MappingProxyType(
        {"colbert": Profile(name="colbert", output_types=("multivector",))}))
    with pytest.raises(ConfigError, match="profiles.colbert.output_types.*it produces: 'sparse'"):
        loaded_model(config)


def test_the_dry_run_reads_outputs_and_checks_heads_and_profiles(m3, tmp_path):
    """`launch.py check` (the dry-run backend) reports the outputs and refuses what a load would refuse."""
    import shutil

    import torch

    from server.build import load_model
    from server.config import Profile, ServerSettings

    folder, _, model = m3
    config = dataclasses.replace(model.config, adapters=AdapterOptions(), profiles=MappingProxyType(
        {"colbert": Profile(name="colbert", output_types=("multivector",))}))
    checked = asyncio.run(load_model(config, ServerSettings(), backend="dry-run"))
    assert checked.backend.info.output_dims() == model.output_dims()
    shutil.copytree(folder, tmp_path / "m")
    torch.save({"weight": torch.zeros(3, 32), "bias": torch.zeros(3)}, tmp_path / "m" / "sparse_linear.pt")
    with pytest.raises(ConfigError, match="sparse_linear.pt must hold"):
        asyncio.run(load_model(dataclasses.replace(config, model_path=str(tmp_path / "m")), ServerSettings(),
                               backend="dry-run"))
    dense_only = dataclasses.replace(config, model_path=str(tmp_path / "m"))
    for name in ("sparse_linear.pt", "colbert_linear.pt"):
        (tmp_path / "m" / name).unlink()
    with pytest.raises(ConfigError, match="profiles.colbert.output_types.*it produces: 'dense'"):
        asyncio.run(load_model(dense_only, ServerSettings(), backend="dry-run"))


def test_dims_apply_to_dense_only(splade):
    """A sparse-only request may carry `dims` (an SDK default, say): it shapes dense vectors only."""
    _, _, model, _, _ = splade
    result = encode(model, ["the court held"], None, ("sparse",), dims=16)
    assert result.vectors is None and len(result.sparse[0].indices) > 0
