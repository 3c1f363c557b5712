"""The eager CPU path's linears through oneDNN with prepacked weights: each packed linear against F.linear,
the served demo model packed against PEFT's mixed batch (fp32, 1e-5) and against torch's own linears
(`cpu_linears: torch`), and the fallback that leaves the model as it was."""

from __future__ import annotations

import asyncio
import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from server.backends import packed_linears
from server.backends.packed_linears import PackedLinear, pack_linears
from server.backends.static_forward import onednn_available
from server.lora.mixed_linear import MixedLoraLinear
from server.lora.packed_matmul import CROSSOVER_MACS, pack_weight, packed_linear, row_bucket, worth_packing
from server.lora.plan import BatchPlan
from tests.conftest import loaded_model, token_batch

pytestmark = pytest.mark.skipif(not onednn_available(), reason="this torch has no oneDNN linear")
ADAPTERS = [None, "legal", "medical", "finance"]
TEXTS = ["What is the statute of limitations for breach of contract?", "hello",
         "Aspirin reduces the risk of myocardial infarction in patients with high blood pressure, and more."]


@pytest.mark.parametrize("shape", [(7, 48), (2, 9, 48), (1, 1, 48), (3, 17, 48)])
@pytest.mark.parametrize("bias", [True, False])
def test_packed_linear_is_f_linear(shape, bias):
    generator = torch.Generator().manual_seed(3)
    linear = nn.Linear(48, 80, bias=bias)
    x = torch.randn(*shape, generator=generator)
    with torch.inference_mode():
        assert (packed_linear(x, pack_weight(linear.weight), linear.bias) - linear(x)).abs().max() <= 1e-5
        strided = torch.randn(2, 18, 48, generator=generator)[:, ::2]  # not contiguous
        assert (PackedLinear(linear, always=True)(strided) - linear(strided)).abs().max() <= 1e-5


def test_small_weights_stay_unpacked(demo_model):
    """The demo's linears (64 and 128 wide) are under SMALLEST_PACKED_WEIGHT: `auto` leaves them to torch."""
    wrapped = [m for m in demo_model.backend.model.modules() if isinstance(m, MixedLoraLinear)]
    assert wrapped and all(m.packed is None for m in wrapped)
    assert not worth_packing(torch.zeros(128, 256)) and worth_packing(torch.zeros(256, 256))
    assert not worth_packing(torch.zeros(384, 384, dtype=torch.bfloat16))


def test_packed_equals_peft_and_torch_linears(demo_config, demo_dirs, peft_reference):
    """`cpu_linears: onednn` packs every linear and runs every call packed (the demo's are under both
    thresholds); no linear is left plain."""
    packed_model = loaded_model(dataclasses.replace(demo_config, cpu_linears="onednn"))
    control = loaded_model(dataclasses.replace(demo_config, cpu_linears="torch"))
    try:
        modules = list(packed_model.backend.model.modules())
        wrapped = [m for m in modules if isinstance(m, MixedLoraLinear)]
        assert wrapped and all(m.packed is not None and m.packed_from == 1 for m in wrapped)
        assert not any(type(m) is nn.Linear for m in modules if all(m is not w.base for w in wrapped))
        assert not any(m.packed is not None for m in control.backend.model.modules()
                       if isinstance(m, MixedLoraLinear))
        rows = packed_model.tokenizer.tokenize(TEXTS * len(ADAPTERS)).input_ids
        names = [ADAPTERS[(i + i // len(TEXTS)) % len(ADAPTERS)] for i in range(len(rows))]  # unsorted mix
        packed = packed_model.backend.embed_sync(token_batch(packed_model, rows, names))
        plain = control.backend.embed_sync(token_batch(control, rows, names))
        assert np.abs(packed - plain).max() <= 1e-5
        for row, (ids, name) in enumerate(zip(rows, names)):
            assert np.abs(packed[row] - peft_reference(ids, name)).max() <= 1e-5, (row, name)
    finally:
        for model in (packed_model, control):
            asyncio.run(model.backend.close())


def test_calls_below_the_crossover_keep_torch_linear():
    linear = nn.Linear(64, 64)
    packed = PackedLinear(linear)
    small, large = torch.randn(2, 5, 64), torch.randn(1, CROSSOVER_MACS // (64 * 64), 64)
    with torch.inference_mode():
        assert packed.packed_from == CROSSOVER_MACS // 64
        assert torch.equal(packed(small), F.linear(small, linear.weight, linear.bias))  # the same call exactly
        assert (packed(large) - F.linear(large, linear.weight, linear.bias)).abs().max() <= 1e-5
        assert PackedLinear(linear, always=True).packed_from == 1
        empty = torch.zeros(0, 64)
        assert PackedLinear(linear, always=True)(empty).shape == (0, 64)


def test_untargeted_linears_are_packed_and_agree():
    model = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 8))
    model[0] = MixedLoraLinear(model[0], BatchPlan(zero_slot=1), slots=1, max_rank=4)
    x = torch.randn(3, 16)
    with torch.inference_mode():
        before = model(x)
        assert pack_linears(model, always=True) == 2
        assert isinstance(model[2], PackedLinear) and model[0].packed is not None
        assert (model(x) - before).abs().max() <= 1e-5


def test_a_failed_check_leaves_the_model_as_it_was(monkeypatch):
    """A torch whose oneDNN linear fails on this CPU cannot be made here: the packed call is replaced by one
    that raises as such a build does."""
    def unsupported(*_args):
        raise RuntimeError("mkldnn linear not supported on this CPU")

    monkeypatch.setattr(packed_linears, "packed_linear", unsupported)
    model = nn.Sequential(nn.Linear(16, 32), nn.Linear(32, 8))
    assert pack_linears(model, always=True) == 0
    assert all(type(m) is nn.Linear for m in model)
    model(torch.randn(2, 16))


def test_rows_round_up_to_few_sizes_with_little_padding():
    """oneDNN builds a kernel per input shape: a call's rows are rounded up, at most by an eighth."""
    sizes = {row_bucket(rows) for rows in range(1, 16385)}
    assert all(row_bucket(rows) == rows for rows in range(1, 17))
    assert all(rows <= row_bucket(rows) <= rows * 9 / 8 for rows in range(1, 16385))
    assert len(sizes) < 130  # 16 exact, then 8 per power of two
