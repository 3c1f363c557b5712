"""The engine's own forward for Qwen3, Qwen2 and Llama decoders when the fused LoRA kernels are on (ours: no
library fuses a per-row LoRA update into the ops that consume a linear's output). Per layer: one shrink per
group of linears sharing an input; q/k's update inside their head RMSNorm (Qwen3) and RoPE; v's as a plain
expand; o's and down's inside the residual add and the next RMSNorm; gate's and up's inside SiLU·mul.

Semantics: the same last hidden states as the transformers model with MixedLoraLinear layers, for
right-padded rows under causal attention (a real token never sees the padding after it), base rows exactly
the base model's. The weights are the model's own modules, read at each call, so installs need no sync.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from server.lora.mixed_linear import MixedLoraLinear
from server.lora.plan import BatchPlan

FAMILIES = frozenset({"qwen3", "qwen2", "llama"})


def supports(model: nn.Module) -> bool:
    """A decoder of a family this forward knows, every layer full attention, SiLU MLP, power-of-two heads."""
    config = model.config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    layer_types = set(getattr(config, "layer_types", None) or ("full_attention",))
    return (config.model_type in FAMILIES and layer_types == {"full_attention"}
            and getattr(config, "hidden_act", "silu") == "silu" and head_dim >= 16 and head_dim & (head_dim - 1) == 0
            and hasattr(model, "rotary_emb") and hasattr(model, "layers"))


@dataclass(frozen=True)
class Linear:
    """A linear's base weights and, when wrapped, its LoRA group and member index."""

    weight: torch.Tensor
    bias: torch.Tensor | None
    lora: MixedLoraLinear | None

    @classmethod
    def of(cls, module: nn.Module) -> Linear:
        base = module.base if isinstance(module, MixedLoraLinear) else module
        return cls(base.weight, base.bias, module if isinstance(module, MixedLoraLinear) else None)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


class FusedDecoder:
    """Last hidden states [rows, tokens, hidden] (after the final norm) of right-padded token ids under the
    plan's per-row slots; `ops` is lora/lora_ops."""

    def __init__(self, model: nn.Module, plan: BatchPlan, ops) -> None:
        self.model, self.plan, self.ops = model, plan, ops
        config = model.config
        self.heads, self.kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.grouped_query = bool(self.heads != self.kv_heads)  # a bool, not an int compare dynamo makes symbolic
        self.linears = [{name: Linear.of(module) for name, module in (
            ("q", layer.self_attn.q_proj), ("k", layer.self_attn.k_proj), ("v", layer.self_attn.v_proj),
            ("o", layer.self_attn.o_proj), ("gate", layer.mlp.gate_proj), ("up", layer.mlp.up_proj),
            ("down", layer.mlp.down_proj))} for layer in model.layers]  # the modules never change after wrapping

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        model = self.model
        y = model.embed_tokens(ids)
        residual = torch.empty_like(y)
        positions = torch.arange(ids.shape[1], device=ids.device)[None]
        cos, sin = model.rotary_emb(torch.empty(0, device=ids.device), positions)  # float32 [1, tokens, head_dim]
        cos, sin = cos[0], sin[0]
        layers = list(model.layers)
        self._add_norm(y, residual, layers[0].input_layernorm, None, None, first=True)
        for index, layer in enumerate(layers):
            following = layers[index + 1].input_layernorm if index + 1 < len(layers) else model.norm
            y = self._layer(layer, self.linears[index], y, residual, cos, sin, following)
        return y

    def _layer(self, layer: nn.Module, linears: dict[str, Linear], h: torch.Tensor, residual: torch.Tensor, cos, sin,
               following: nn.Module) -> torch.Tensor:
        attn = layer.self_attn
        q, k, v = linears["q"], linears["k"], linears["v"]
        u = self._shrink(h, (q, k, v))
        queries, keys, values = q(h), k(h), v(h)
        self._head_norm_rope(queries, q, getattr(attn, "q_norm", None), u, cos, sin)
        self._head_norm_rope(keys, k, getattr(attn, "k_norm", None), u, cos, sin)
        if v.lora is not None:
            self._expand(values, v, u)
        mixed = self._attention(queries, keys, values, attn.scaling)
        o = linears["o"]
        out = o(mixed)
        self._add_norm(out, residual, layer.post_attention_layernorm, o, self._shrink(mixed, (o,)))
        gate, up, down = linears["gate"], linears["up"], linears["down"]
        u = self._shrink(out, (gate, up))
        plan = self.plan
        hidden = self.ops.gate_up_silu(gate(out), up(out), u, self._bt(gate), self._bt(up), self._ranks(gate, up),
                                       plan.row_slots, plan.zero_slot, self._member(gate), self._member(up),
                                       plan.width)
        y = down(hidden)
        self._add_norm(y, residual, following, down, self._shrink(hidden, (down,)))
        return y

    def _attention(self, queries, keys, values, scaling: float) -> torch.Tensor:
        rows, tokens, _ = queries.shape

        def heads(x: torch.Tensor, count: int) -> torch.Tensor:
            return x.view(rows, tokens, count, self.head_dim).transpose(1, 2)

        out = F.scaled_dot_product_attention(heads(queries, self.heads), heads(keys, self.kv_heads),
                                             heads(values, self.kv_heads), is_causal=True, scale=scaling,
                                             enable_gqa=self.grouped_query)
        return out.transpose(1, 2).reshape(rows, tokens, self.heads * self.head_dim)

    def _shrink(self, x: torch.Tensor, linears: tuple[Linear, ...]) -> torch.Tensor | None:
        """The group's u for x (one read of x for every member), or None when no member has LoRA."""
        wrapped = [linear.lora for linear in linears if linear.lora is not None]
        if not wrapped or not self.plan.width:
            return None
        group = wrapped[0].group
        plan = self.plan
        return self.ops.shrink(x, group.a, group.ranks, plan.row_slots, plan.zero_slot, plan.width)

    def _bt(self, linear: Linear) -> torch.Tensor | None:
        return linear.lora.bt if linear.lora is not None and self.plan.width else None

    def _ranks(self, *linears: Linear) -> torch.Tensor | None:
        wrapped = [linear.lora for linear in linears if linear.lora is not None]
        return wrapped[0].group.ranks if wrapped and self.plan.width else None

    @staticmethod
    def _member(linear: Linear) -> int:
        return linear.lora.member if linear.lora is not None else 0

    def _expand(self, y: torch.Tensor, linear: Linear, u: torch.Tensor) -> None:
        plan, lora = self.plan, linear.lora
        self.ops.expand_(y, u, lora.bt, lora.group.ranks[lora.member], plan.row_slots, plan.zero_slot, lora.member,
                         plan.width)

    def _head_norm_rope(self, y: torch.Tensor, linear: Linear, norm: nn.Module | None, u, cos, sin) -> None:
        plan = self.plan
        weight, eps = (norm.weight, norm.variance_epsilon) if norm is not None else (None, 0.0)
        self.ops.head_norm_rope_(y, weight, eps, cos, sin, u, self._bt(linear), self._ranks(linear),
                                 plan.row_slots, plan.zero_slot, self._member(linear), plan.width, self.head_dim)

    def _add_norm(self, y, residual, norm: nn.Module, linear: Linear | None, u, first: bool = False) -> None:
        """residual += y (+ the linear's update); y = norm(residual). `first`: the residual starts at y."""
        plan = self.plan
        bt = self._bt(linear) if linear is not None and u is not None else None
        self.ops.add_rmsnorm_(y, residual, norm.weight, norm.variance_epsilon, u if bt is not None else None, bt,
                              self._ranks(linear) if bt is not None else None, plan.row_slots, plan.zero_slot,
                              self._member(linear) if bt is not None else 0, plan.width, first)
