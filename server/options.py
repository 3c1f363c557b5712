"""The typed encode request both APIs parse into, and its resolution against the model's config:
profile first, request options override it, an explicit instruction wins. A model id `<model>:<suffix>`
selects a profile or an adapter as options would; options that name another one are refused."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from server import errors
from server.config import OUTPUT_TYPES, ModelConfig
from server.postprocess import OUTPUT_DTYPES
from server.tokenization import OVERFLOW_POLICIES


def _quoted(values) -> str:
    return ", ".join(repr(v) for v in values)


@dataclass(frozen=True)
class RequestedOptions:
    """What a request asked for, typed but not yet resolved against a profile."""

    lora_id: str | None = None
    profile: str | None = None
    is_query: bool | None = None
    instruction: str | None = None
    dims: int | None = None
    overflow_policy: str | None = None
    output_types: tuple[str, ...] | None = None  # params.output_types
    option_output_types: tuple[str, ...] | None = None  # options.output_types: wins over params, as in SIE
    output_dtype: str | None = None

    def __post_init__(self) -> None:
        if self.lora_id == "":
            raise errors.InvalidInput("options.lora_id must not be empty", field="lora_id")
        if self.overflow_policy is not None and self.overflow_policy not in OVERFLOW_POLICIES:
            raise errors.InvalidInput(f"options.overflow_policy must be one of {', '.join(OVERFLOW_POLICIES)}")
        for where, kinds in (("params.output_types", self.output_types),
                             ("options.output_types", self.option_output_types)):
            if kinds is not None and not kinds:
                raise errors.InvalidInput(f"{where} must name at least one output type ({', '.join(OUTPUT_TYPES)})",
                                          field="output_types")
            for kind in kinds or ():
                if kind not in OUTPUT_TYPES:
                    raise errors.InvalidInput(f"{where}: unsupported output type {kind!r}; this server returns: "
                                              f"{_quoted(OUTPUT_TYPES)}", field="output_types")
        if self.output_dtype is not None and self.output_dtype not in OUTPUT_DTYPES:
            raise errors.InvalidInput(f"params.output_dtype: unsupported output_dtype {self.output_dtype!r}; "
                                      f"supported: {_quoted(OUTPUT_DTYPES)}")


@dataclass(frozen=True)
class Selection:
    """What a model id's suffix selects (`<model>:<profile>` or `<model>:<adapter>`); empty for `<model>`."""

    profile: str | None = None
    lora_id: str | None = None
    written: str = ""  # the model id as the client wrote it, for messages

    def adapter(self, config: ModelConfig) -> str | None:
        """The adapter this selection runs with (a profile's own, or None for base)."""
        if self.profile is not None:
            return config.profiles[self.profile].lora_id
        return self.lora_id

    def merged(self, requested: RequestedOptions, config: ModelConfig) -> RequestedOptions:
        """`requested` with this selection applied; 400 when its options name another adapter or profile."""
        if self.profile is None and self.lora_id is None:
            return requested
        adapter = self.adapter(config)
        if requested.profile is not None and requested.profile != self.profile:
            other = config.profiles.get(requested.profile)
            if self.profile is not None or other is None or other.lora_id not in (None, adapter):
                raise self._conflict(f"options.profile {requested.profile!r}")
        if requested.lora_id is not None and requested.lora_id != adapter:
            raise self._conflict(f"options.lora_id {requested.lora_id!r}")
        return dataclasses.replace(requested, profile=requested.profile or self.profile,
                                   lora_id=requested.lora_id or self.lora_id)

    def _conflict(self, other: str) -> errors.InvalidInput:
        chosen = f"profile {self.profile!r}" if self.profile is not None else f"adapter {self.lora_id!r}"
        return errors.InvalidInput(f"model id {self.written!r} selects {chosen} but {other} names another; "
                                   "name the adapter or profile once (in the model id or in the options)",
                                   field="model")


@dataclass(frozen=True)
class EncodeRequest:
    model: str
    texts: tuple[str, ...]
    options: RequestedOptions = RequestedOptions()


@dataclass(frozen=True)
class EncodeOptions:
    """Resolved: what the served model runs with."""

    lora_id: str | None = None
    instruction: str | None = None
    is_query: bool = False
    output_dtype: str = "float32"
    dims: int | None = None
    overflow_policy: str = "truncate"
    output_types: tuple[str, ...] = ("dense",)


def resolve_options(config: ModelConfig, requested: RequestedOptions) -> EncodeOptions:
    profile = None
    if requested.profile is not None:
        profile = config.profiles.get(requested.profile)
        if profile is None:
            raise errors.unknown_profile(requested.profile, config.name, config.profiles)
    lora_id = requested.lora_id if requested.lora_id is not None else (profile.lora_id if profile else None)
    is_query = requested.is_query
    if is_query is None:
        is_query = bool(profile.is_query) if profile is not None and profile.is_query is not None else False
    instruction = requested.instruction
    if instruction is None and profile is not None:
        instruction = profile.instruction
    output_types = (requested.option_output_types or (profile.output_types if profile else None)
                    or requested.output_types or ("dense",))
    return EncodeOptions(lora_id=lora_id, instruction=instruction, is_query=is_query,
                         output_dtype=requested.output_dtype or "float32", dims=requested.dims,
                         overflow_policy=requested.overflow_policy or "truncate",
                         output_types=tuple(dict.fromkeys(output_types)))


def check_outputs(requested: tuple[str, ...], produced: tuple[str, ...], model: str) -> None:
    """400 unless the model gives every output type asked for, naming what it gives."""
    missing = [kind for kind in requested if kind not in produced]
    if missing:
        raise errors.InvalidInput(f"model {model!r} does not produce {_quoted(missing)} output; it produces: "
                                  f"{_quoted(produced)}", field="output_types")


def check_dims(dims: int | None, native: int, minimum: int) -> None:
    if dims is not None and not (min(minimum, native) <= dims <= native):
        raise errors.InvalidInput(f"dims {dims} is out of range; this model allows {min(minimum, native)}..{native}",
                                  field="dims")
