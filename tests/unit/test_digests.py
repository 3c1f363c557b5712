"""Digests that name what made a vector: the same weights give the same digest from any folder, one changed
value or scaling another; a base model's files likewise."""

from __future__ import annotations

import shutil

import torch

from server.digests import SHOWN_HEX, folder_digest
from server.lora.peft_format import LoraAdapter, LoraModule, load_peft_adapter


def modules(scale: float = 2.0, bump: float = 0.0) -> dict[str, LoraModule]:
    generator = torch.Generator().manual_seed(0)
    a, b = torch.randn(4, 8, generator=generator), torch.randn(8, 4, generator=generator)
    b[0, 0] += bump
    return {"layers.0.self_attn.q_proj": LoraModule(a, b, scale)}


def test_an_adapters_digest_follows_its_weights_and_scaling_not_its_name_or_folder():
    same = LoraAdapter.of("a", "/one", modules()).digest
    assert len(same) == SHOWN_HEX and same == LoraAdapter.of("b", "/two", modules()).digest
    assert same != LoraAdapter.of("a", "/one", modules(bump=1e-6)).digest
    assert same != LoraAdapter.of("a", "/one", modules(scale=2.5)).digest
    moved = LoraAdapter.of("a", "/one", modules()).to(device="cpu", dtype=torch.float32)
    assert moved.digest == same


def test_a_peft_folder_read_twice_from_two_places_has_one_digest(demo_dirs, tmp_path):
    from server.backends.hf_model import meta_linear_shapes

    shapes = meta_linear_shapes(demo_dirs["model"], None)[0]
    copy = shutil.copytree(demo_dirs["legal"], tmp_path / "legal-copy")
    first = load_peft_adapter("legal", demo_dirs["legal"], base_shapes=shapes, max_rank=64)
    second = load_peft_adapter("other", copy, base_shapes=shapes, max_rank=64)
    assert first.digest == second.digest
    assert first.digest != load_peft_adapter("medical", demo_dirs["medical"], base_shapes=shapes, max_rank=64).digest


def test_a_folder_digest_covers_names_and_contents_and_skips_hidden_entries(tmp_path):
    model = tmp_path / "model"
    (model / ".cache").mkdir(parents=True)
    (model / "config.json").write_text("{}")
    (model / "weights.bin").write_bytes(b"\0" * 10)
    first = folder_digest(model)
    (model / ".cache" / "lock").write_text("x")
    assert folder_digest(model) == first
    (model / "weights.bin").write_bytes(b"\0" * 9 + b"\1")
    assert folder_digest(model) != first
    assert folder_digest(model / "config.json") != folder_digest(model)
