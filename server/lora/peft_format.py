"""Read and validate a PEFT LoRA folder (adapter_config.json + adapter_model.safetensors).

Every rejection names the adapter and the reason; shapes are checked against the base model's
linear layers, given as {module path: (in_features, out_features)}.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from server.digests import tensors_digest

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<kind>A|B)(?:\.[^.]+)?\.weight$")
_PREFIXES = ("base_model.model.",)


class AdapterError(ValueError):
    """An adapter that cannot be served; the message names it and says why."""


@dataclass(frozen=True)
class LoraModule:
    """One adapted linear: `y += scaling * (x @ a.T) @ b.T`."""

    a: torch.Tensor  # [r, in]
    b: torch.Tensor  # [out, r]
    scaling: float

    @property
    def rank(self) -> int:
        return self.a.shape[0]


@dataclass(frozen=True)
class LoraAdapter:
    """A validated adapter, keyed by the base model's module paths (e.g. `layers.0.self_attn.q_proj`)."""

    name: str
    source: str
    modules: Mapping[str, LoraModule]
    digest: str = ""  # of the weights and scalings as loaded (`digests.tensors_digest`): what answers name

    @classmethod
    def of(cls, name: str, source: str, modules: Mapping[str, LoraModule]) -> LoraAdapter:
        """The adapter with its digest, over the float32 weights in module order."""
        digest = tensors_digest((path, m.scaling, (m.a.numpy(), m.b.numpy()))
                                for path, m in sorted(modules.items()))
        return cls(name=name, source=source, modules=modules, digest=digest)

    @property
    def rank(self) -> int:
        return max(m.rank for m in self.modules.values())

    @property
    def target_modules(self) -> tuple[str, ...]:
        return tuple(sorted({path.rsplit(".", 1)[-1] for path in self.modules}))

    @property
    def nbytes(self) -> int:
        return sum(m.a.numel() * m.a.element_size() + m.b.numel() * m.b.element_size()
                   for m in self.modules.values())

    @property
    def changes_nothing(self) -> bool:
        """Every module's update is zero (a zero lora_B is what some trainers save by mistake)."""
        return all(not (m.a.any() and m.b.any()) for m in self.modules.values())

    def to(self, *, device: str | torch.device, dtype: torch.dtype) -> LoraAdapter:
        """The same adapter with its weights on `device` in `dtype` (where the backend computes)."""
        modules = {path: LoraModule(m.a.to(device=device, dtype=dtype), m.b.to(device=device, dtype=dtype),
                                    m.scaling) for path, m in self.modules.items()}
        return LoraAdapter(name=self.name, source=self.source, modules=modules, digest=self.digest)


def _fail(name: str, reason: str) -> AdapterError:
    return AdapterError(f"adapter {name!r}: {reason}")


def read_adapter_config(name: str, folder: Path) -> dict:
    if not folder.is_dir():
        raise _fail(name, f"folder {str(folder)!r} does not exist")
    config_path = folder / CONFIG_FILE
    if not config_path.is_file():
        raise _fail(name, f"{CONFIG_FILE} missing in {str(folder)!r}")
    try:
        config = json.loads(config_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise _fail(name, f"{CONFIG_FILE} is not valid JSON ({exc})") from None
    if not isinstance(config, dict):
        raise _fail(name, f"{CONFIG_FILE} must hold a JSON object")
    return config


def _check_config(name: str, config: dict, max_rank: int) -> None:
    peft_type = str(config.get("peft_type", "LORA")).upper()
    if peft_type != "LORA":
        raise _fail(name, f"peft_type {peft_type} is not supported (only LORA)")
    if config.get("use_dora"):
        raise _fail(name, "DoRA adapters (use_dora: true) are not supported")
    if config.get("bias", "none") != "none":
        raise _fail(name, f"bias={config.get('bias')!r} is not supported (only 'none')")
    if config.get("modules_to_save"):
        raise _fail(name, f"modules_to_save {config['modules_to_save']} is not supported")
    ranks = [int(config.get("r", 8)), *map(int, (config.get("rank_pattern") or {}).values())]
    if max(ranks) > max_rank:
        raise _fail(name, f"rank {max(ranks)} exceeds max_lora_rank {max_rank}")


def _pattern_value(patterns: Mapping[str, float], module: str, default: float) -> float:
    """PEFT's rank_pattern / alpha_pattern lookup: the first pattern matching a suffix of the path."""
    for pattern, value in patterns.items():
        if re.match(rf"(.*\.)?({pattern})$", module):
            return value
    return default


def _module_path(name: str, key: str, base_shapes: Mapping[str, tuple[int, int]]) -> tuple[str, str]:
    match = _KEY.match(key)
    if match is None:
        raise _fail(name, f"unexpected tensor {key!r} (only lora_A / lora_B weights are supported)")
    path = match["module"]
    for prefix in _PREFIXES:
        if path.startswith(prefix):
            path = path[len(prefix):]
    # Adapters trained on a *ForCausalLM or *ForMaskedLM carry one more level (`model.`, `bert.`, `roberta.`)
    # than the bare transformer that is served has.
    outer, _, inner = path.partition(".")
    if path not in base_shapes and inner in base_shapes and outer.isidentifier():
        path = inner
    if path not in base_shapes:
        raise _fail(name, f"target module {path!r} does not exist in the base model (or is not a Linear)")
    return path, match["kind"]


def _read_pairs(name: str, folder: Path, base_shapes: Mapping[str, tuple[int, int]]) -> dict[str, dict]:
    """{module path: {"A": tensor, "B": tensor}} from the safetensors file (pickles are refused)."""
    weights_path = folder / WEIGHTS_FILE
    if not weights_path.is_file():
        if any(folder.glob("*.bin")):
            raise _fail(name, "only .bin (pickle) weights found; pickles are refused, convert to safetensors")
        raise _fail(name, f"{WEIGHTS_FILE} missing in {str(folder)!r}")
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    try:
        with safe_open(str(weights_path), framework="pt") as handle:
            for key in handle.keys():  # noqa: SIM118 (a safetensors handle, not a dict)
                path, kind = _module_path(name, key, base_shapes)
                pairs.setdefault(path, {})[kind] = handle.get_tensor(key)
    except AdapterError:
        raise
    except Exception as exc:  # safetensors raises its own error types for corrupt files
        raise _fail(name, f"cannot read {WEIGHTS_FILE}: {exc}") from None
    if not pairs:
        raise _fail(name, f"{WEIGHTS_FILE} holds no LoRA weights")
    return pairs


def _module(name: str, path: str, tensors: dict, config: dict, in_out: tuple[int, int], max_rank: int) -> LoraModule:
    """One validated module; `scaling` from the config's alpha, rank and patterns."""
    if set(tensors) != {"A", "B"}:
        raise _fail(name, f"module {path!r} has lora_{''.join(tensors)} but not both lora_A and lora_B")
    a, b = tensors["A"], tensors["B"]
    in_features, out_features = in_out
    if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1]:
        raise _fail(name, f"module {path!r}: lora_A {tuple(a.shape)} and lora_B {tuple(b.shape)} do not pair")
    if a.shape[1] != in_features or b.shape[0] != out_features:
        raise _fail(name, f"module {path!r}: shapes lora_A {tuple(a.shape)}, lora_B {tuple(b.shape)} do not fit "
                          f"the base layer ({in_features} -> {out_features}); wrong base model?")
    rank = a.shape[0]
    if rank > max_rank:
        raise _fail(name, f"module {path!r} has rank {rank}, over max_lora_rank {max_rank}")
    declared = int(_pattern_value(config.get("rank_pattern") or {}, path, config.get("r", rank)))
    if rank != declared:
        raise _fail(name, f"module {path!r} has rank {rank} but adapter_config.json says {declared}")
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        raise _fail(name, f"module {path!r} holds NaN or infinite weights")
    alpha = float(_pattern_value(config.get("alpha_pattern") or {}, path, float(config.get("lora_alpha", 8))))
    return LoraModule(a=a, b=b, scaling=alpha / (math.sqrt(rank) if config.get("use_rslora") else rank))


def load_peft_adapter(name: str, folder: str | Path, *, base_shapes: Mapping[str, tuple[int, int]],
                      max_rank: int) -> LoraAdapter:
    """Load and validate one PEFT adapter as float32 on the CPU (a backend moves it where it computes with
    `LoraAdapter.to`); raises AdapterError naming the problem."""
    folder = Path(folder)
    config = read_adapter_config(name, folder)
    _check_config(name, config, max_rank)
    modules: dict[str, LoraModule] = {}
    for path, tensors in sorted(_read_pairs(name, folder, base_shapes).items()):
        module = _module(name, path, tensors, config, base_shapes[path], max_rank)
        # clone(): the loaded copy must not share memory with the file (safetensors may map it), so an
        # adapter file rewritten or deleted on disk cannot change vectors of a resident adapter.
        modules[path] = LoraModule(
            a=module.a.to(dtype=torch.float32).clone(memory_format=torch.contiguous_format),
            b=module.b.to(dtype=torch.float32).clone(memory_format=torch.contiguous_format),
            scaling=module.scaling)
    return LoraAdapter.of(name, str(folder), modules)
