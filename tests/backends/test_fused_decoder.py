"""The fused decoder forward (Triton's interpreter on the CPU): 2-layer Qwen3, Qwen2 and Llama-shaped models
with mixed adapters (all seven linears, adapters that skip linears, mixed ranks, base rows) against PEFT's
own mixed batch at 1e-5 in fp32, the served demo model through the backend against PEFT and the unfused
kernels, and the launches per layer before and after fusing."""

from __future__ import annotations

import asyncio
import warnings

import numpy as np
import pytest
import torch

pytest.importorskip("triton")

from server.backends import fused_decoder  # noqa: E402
from server.backends.hf_model import linear_targets, shapes_of  # noqa: E402
from server.backends.launch_count import count_launches  # noqa: E402
from server.lora import lora_ops  # noqa: E402
from server.lora.groups import group_linears  # noqa: E402
from server.lora.mixed_linear import install_adapter, wrap_linears  # noqa: E402
from server.lora.peft_format import load_peft_adapter  # noqa: E402
from server.lora.plan import BatchPlan  # noqa: E402
from tests.backends import test_triton_path as triton_path  # noqa: E402
from tests.backends.test_triton_path import embed, mixed, with_wide  # noqa: E402

ALL7 = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# (name, rank, targets): every linear; attention only; the MLP and q/v (k and o left alone); rank 4 on two
ADAPTERS = [("all7", 8, ALL7), ("attn", 16, ALL7[:4]), ("mlp_qv", 4, ["q_proj", "v_proj"] + ALL7[4:]),
            ("thin", 2, ["k_proj", "down_proj"])]
SLOTS, MAX_RANK = 4, 16
wide_root, kernel_model = triton_path.wide_root, triton_path.kernel_model  # the demo's fixtures, shared
SHAPE = dict(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, head_dim=16, max_position_embeddings=128)


def tiny(family: str, **shape):
    from transformers import LlamaConfig, LlamaModel, Qwen2Config, Qwen2Model, Qwen3Config, Qwen3Model

    torch.manual_seed(7)
    shape = {**SHAPE, **shape}
    if family == "qwen3":
        return Qwen3Model(Qwen3Config(**shape)).eval()
    if family == "qwen2":  # q/k/v biases, no q/k norms
        return Qwen2Model(Qwen2Config(**shape)).eval()
    return LlamaModel(LlamaConfig(**shape, rope_theta=500000.0)).eval()


def peft_mixed(model, folder):
    """A PeftModel over a copy of `model` with every adapter, and the adapters saved under `folder`."""
    import copy

    from peft import LoraConfig, get_peft_model

    peft = None
    for name, rank, targets in ADAPTERS:
        config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=targets, init_lora_weights=False)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning)
            if peft is None:
                peft = get_peft_model(copy.deepcopy(model), config, adapter_name=name)
            else:
                peft.add_adapter(name, config)
    for name, _, _ in ADAPTERS:
        peft.save_pretrained(folder, selected_adapters=[name])
    return peft.eval()


def fused_family(family: str, folder, *, dtype=torch.float32, device: str = "cpu", **shape):
    """(our model in `dtype` with every adapter installed, its plan, PEFT's fp32 model with the same adapters)."""
    model = tiny(family, **shape)
    peft = peft_mixed(model, folder).to(device)
    model = model.to(device=device, dtype=dtype)
    plan = BatchPlan(zero_slot=SLOTS)
    linears = linear_targets(model, None)
    layers = wrap_linears(model, linears, plan, slots=SLOTS, max_rank=MAX_RANK)
    group_linears(layers)
    plan.ops, plan.width = lora_ops, MAX_RANK
    for slot, (name, _, _) in enumerate(ADAPTERS):
        adapter = load_peft_adapter(name, folder / name, base_shapes=shapes_of(linears), max_rank=MAX_RANK)
        install_adapter(layers, slot, adapter.to(device=device, dtype=dtype))
    return model, plan, peft


def mixed_rows(vocab: int = 300, device: str = "cpu"):
    """Token ids of a right-padded mixed batch, its adapter names (None: base), row slots and lengths."""
    torch.manual_seed(3)
    names = ["all7", None, "attn", "mlp_qv", "thin", "all7", None, "thin"]
    lengths = [9, 17, 3, 17, 12, 1, 5, 16]
    ids = torch.randint(1, vocab, (len(names), max(lengths)), device=device)
    slots = torch.tensor([SLOTS if n is None else [a[0] for a in ADAPTERS].index(n) for n in names], device=device)
    return ids, names, slots, lengths


def fused_hidden(model, plan, ids, slots):
    plan.publish_rows(slots)
    try:
        return fused_decoder.FusedDecoder(model, plan, lora_ops)(ids)
    finally:
        plan.clear()


def peft_hidden(peft, ids, names):
    return peft(input_ids=ids, adapter_names=[n or "__base__" for n in names]).last_hidden_state


@pytest.fixture(scope="module", params=["qwen3", "qwen2", "llama"])
def family(request, tmp_path_factory):
    model, plan, peft = fused_family(request.param, tmp_path_factory.mktemp(request.param))
    return model, peft, plan


def test_supported_families_only():
    from transformers import Gemma2Config, Gemma2Model

    assert all(fused_decoder.supports(tiny(name)) for name in ("qwen3", "qwen2", "llama"))
    gemma = Gemma2Model(Gemma2Config(**SHAPE))  # GELU MLP, sliding layers: transformers' own forward
    assert not fused_decoder.supports(gemma)


@torch.inference_mode()
def test_fused_forward_matches_peft_mixed_batch(family):
    model, peft, plan = family
    ids, names, slots, lengths = mixed_rows()
    ours, reference = fused_hidden(model, plan, ids, slots), peft_hidden(peft, ids, names)
    for row, length in enumerate(lengths):  # right padding: only the real tokens are defined
        assert (ours[row, :length] - reference[row, :length]).abs().max() <= 1e-5, (row, names[row])
    adapted, base = ours[0, :lengths[0]], fused_hidden(model, plan, ids, torch.full_like(slots, SLOTS))[0, :lengths[0]]
    assert (adapted - base).abs().max() > 0.1  # the adapters change the vectors: the check above has teeth


def check_half_against_fp32(family: str, folder, dtype, device: str = "cpu", vocab: int = 300, **shape) -> None:
    """Ours in `dtype` against PEFT in fp32 with the same adapters: per real token no further from it (1 - cos)
    than PEFT in `dtype` is at its worst in that row, plus 2e-5."""
    model, plan, peft = fused_family(family, folder, dtype=dtype, device=device, vocab_size=vocab, **shape)
    ids, names, slots, lengths = mixed_rows(vocab, device)
    with torch.inference_mode():
        exact = peft_hidden(peft, ids, names).double()
        ours = fused_hidden(model, plan, ids, slots).double()
        theirs = peft_hidden(peft.to(dtype), ids, names).double()
    ours_error = 1 - torch.nn.functional.cosine_similarity(ours, exact, dim=-1)
    peft_error = 1 - torch.nn.functional.cosine_similarity(theirs, exact, dim=-1)
    for row, length in enumerate(lengths):
        mine = ours_error[row, :length]
        assert (mine <= peft_error[row, :length].max() + 2e-5).all(), (row, mine.max(), peft_error[row].max())


def test_fused_forward_in_half_precision(tmp_path):
    """fp16 here: Triton 3.6's interpreter multiplies bf16 operands of tl.dot wrongly (the GPU tier checks bf16)."""
    check_half_against_fp32("qwen3", tmp_path, torch.float16, hidden_size=128, intermediate_size=192, head_dim=32)


@torch.inference_mode()
def test_fused_forward_launches_fewer_kernels(family):
    """Per layer, on one mixed batch: every op that would launch a kernel (views excluded), counted eagerly."""
    model, _, plan = family
    ids = torch.randint(1, 300, (3, 10))
    plan.publish_rows(torch.tensor([0, SLOTS, 1]))
    try:
        fused = count_launches(lambda: fused_decoder.FusedDecoder(model, plan, lora_ops)(ids))
        unfused = count_launches(lambda: model(input_ids=ids, use_cache=False))
    finally:
        plan.clear()
    layers = model.config.num_hidden_layers
    assert fused.per_layer(layers) < unfused.per_layer(layers) / 2, (fused, unfused)


@pytest.fixture(scope="module")
def fused_model(demo_config, wide_root):
    model = with_wide(demo_config, wide_root, lora_kernels="fused")
    yield model
    asyncio.run(model.stop())


def test_served_demo_takes_the_fused_forward(fused_model, peft_reference, kernel_model):
    static = fused_model.backend._static
    assert static.choice.fused and static.fused is not None
    assert kernel_model.backend._static.fused is None  # lora_kernels: triton keeps the kernels alone
    rows, names = mixed(fused_model)
    ours = embed(fused_model, rows, names)
    for row, (ids, name) in enumerate(zip(rows, names)):
        assert np.abs(ours[row] - peft_reference(ids, name)).max() <= 1e-5, (row, name)
    assert np.abs(ours - embed(kernel_model, rows, names)).max() <= 1e-5
    for index in (0, 2, len(rows) - 1):
        alone = embed(fused_model, [rows[index]], [names[index]])
        assert np.abs(alone[0] - ours[index]).max() <= 1e-5


@pytest.mark.long
def test_compiled_fused_forward_has_no_graph_break(demo_config, wide_root, fused_model):
    """torch.compile traces the fused custom ops, their in-place residual stream included, in one graph."""
    import torch._dynamo.utils

    torch._dynamo.utils.counters.clear()
    compiled = with_wide(demo_config, wide_root, lora_kernels="fused", compile="on")
    try:
        assert compiled.backend._static.fused is not None
        rows, names = mixed(fused_model)
        assert np.abs(embed(compiled, rows, names) - embed(fused_model, rows, names)).max() <= 1e-5
        assert not torch._dynamo.utils.counters["graph_break"]
        assert compiled.backend._static.compiles == 2
    finally:
        asyncio.run(compiled.stop())
