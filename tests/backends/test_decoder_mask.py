"""The decoder forward under torch.compile: with the prepared mask mapping SDPA runs with no mask and
`is_causal` (its flash path); without it transformers builds a full packed-sequence mask. Outputs equal
the eager ones. The FX graph dynamo traces is read through an inspecting backend (no kernels compiled)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from server.backends.hf_model import load_transformer, pooled_forward, prepared_causal_mask
from server.model_layout import ModelLayout

LAYOUT = ModelLayout(encoder=False, pooling="last", max_positions=None)


def sdpa_calls(model, mask, ids, lengths):
    """(attn_mask, is_causal) of every SDPA call in the traced graph, and the compiled output."""
    calls = []

    def inspecting(gm, example_inputs):
        for node in gm.graph.nodes:
            if node.op == "call_function" and node.target is F.scaled_dot_product_attention:
                calls.append((node.kwargs.get("attn_mask"), node.kwargs.get("is_causal")))
        return gm.forward

    torch._dynamo.reset()
    compiled = torch.compile(lambda i, n: pooled_forward(model, i, n, LAYOUT, mask), backend=inspecting,
                             dynamic=True)
    with torch.inference_mode():
        out = compiled(ids, lengths)
    torch._dynamo.reset()
    return calls, out


def test_compiled_decoder_runs_sdpa_causal_without_a_mask(demo_dirs):
    model = load_transformer(demo_dirs["model"], torch.float32, "cpu")
    mask = prepared_causal_mask(model)
    assert mask == {"full_attention": None}
    ids = torch.randint(0, 1000, (3, 12))
    lengths = torch.tensor([12, 7, 3])
    with torch.inference_mode():
        eager = pooled_forward(model, ids, lengths, LAYOUT)
    calls, fixed = sdpa_calls(model, mask, ids, lengths)
    assert len(calls) == model.config.num_hidden_layers
    assert all(attn_mask is None and is_causal is True for attn_mask, is_causal in calls), calls
    assert torch.equal(fixed, eager) or (fixed - eager).abs().max() <= 1e-6
    unfixed_calls, unfixed = sdpa_calls(model, None, ids, lengths)
    assert any(attn_mask is not None for attn_mask, _ in unfixed_calls)  # the defect the mapping avoids
    assert (unfixed - eager).abs().max() <= 1e-5


def test_models_without_a_mapping_keep_the_plain_call():
    class Plain(torch.nn.Module):
        config = type("C", (), {"layer_types": ["full_attention"]})()

        def forward(self, input_ids, attention_mask=None):
            return input_ids

    class Sliding(Plain):
        config = type("C", (), {"layer_types": ["full_attention", "sliding_attention"]})()

        def forward(self, input_ids, attention_mask=None):
            if not isinstance(causal_mask_mapping := attention_mask, dict):
                return causal_mask_mapping
            return input_ids

    assert prepared_causal_mask(Plain()) is None and prepared_causal_mask(Sliding()) is None
