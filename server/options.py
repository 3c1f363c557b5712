"""Per-request option resolution: profile first, request options override, params.instruction wins."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from server import errors
from server.config import ModelConfig
from server.postprocess import OUTPUT_DTYPES
from server.tokenization import OVERFLOW_POLICIES

OUTPUT_TYPES = ("dense",)


@dataclass(frozen=True)
class EncodeOptions:
    lora_id: str | None = None
    instruction: str | None = None
    is_query: bool = False
    output_dtype: str = "float32"
    dims: int | None = None
    overflow_policy: str = "truncate"


def _typed(options: Mapping[str, Any], key: str, kind: type | tuple[type, ...], label: str) -> Any:
    value = options.get(key)
    if value is None:
        return None
    # bool is an int subclass: a flag must not pass as a dimension and vice versa.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise errors.invalid_input(f"options.{key} must be {label}, got {type(value).__name__}")
    return value


def resolve_options(config: ModelConfig, *, options: Mapping[str, Any] | None, instruction: str | None = None,
                    output_types: list[str] | None = None, output_dtype: str | None = None) -> EncodeOptions:
    options = options or {}
    if not isinstance(options, Mapping):
        raise errors.invalid_input("params.options must be an object")
    profile_name = _typed(options, "profile", str, "a string")
    profile = None
    if profile_name is not None:
        profile = config.profiles.get(profile_name)
        if profile is None:
            raise errors.unknown_profile(profile_name, config.name, config.profiles)
    lora_id = _typed(options, "lora_id", str, "a string")
    alias = _typed(options, "lora", str, "a string")
    if lora_id is not None and alias is not None and lora_id != alias:
        raise errors.invalid_input(f"options.lora_id {lora_id!r} and options.lora {alias!r} disagree")
    lora_id = lora_id if lora_id is not None else alias
    if lora_id == "":
        raise errors.invalid_input("options.lora_id must not be empty")
    if lora_id is None and profile is not None:
        lora_id = profile.lora_id
    is_query = _typed(options, "is_query", bool, "a boolean")
    if is_query is None:
        is_query = bool(profile.is_query) if profile is not None and profile.is_query is not None else False
    if instruction is None:
        instruction = _typed(options, "instruction", str, "a string")
    if instruction is None and profile is not None:
        instruction = profile.instruction
    for output_type in output_types if output_types is not None else ["dense"]:
        if output_type not in OUTPUT_TYPES:
            raise errors.invalid_input(f"unsupported output type {output_type!r}; this server returns: dense")
    if output_types is not None and not output_types:
        raise errors.invalid_input("params.output_types must name at least one output type (dense)")
    output_dtype = output_dtype or "float32"
    if output_dtype not in OUTPUT_DTYPES:
        raise errors.invalid_input(f"unsupported output_dtype {output_dtype!r}; supported: {', '.join(OUTPUT_DTYPES)}")
    overflow = _typed(options, "overflow_policy", str, "a string") or "truncate"
    if overflow not in OVERFLOW_POLICIES:
        raise errors.invalid_input(f"options.overflow_policy must be one of {', '.join(OVERFLOW_POLICIES)}")
    dims = _typed(options, "dims", int, "an integer")
    return EncodeOptions(lora_id=lora_id, instruction=instruction, is_query=is_query, output_dtype=output_dtype,
                         dims=dims, overflow_policy=overflow)


def check_dims(dims: int | None, native: int, minimum: int) -> None:
    if dims is not None and not (min(minimum, native) <= dims <= native):
        raise errors.invalid_input(f"dims {dims} is out of range; this model allows {min(minimum, native)}..{native}")
