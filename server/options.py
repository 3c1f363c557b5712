"""What a request asked for, as both APIs parse it (each value where the request said it), and its one
resolution against the model's config, `resolve_options`, where every precedence rule lives. A model id
`<model>:<suffix>` selects a profile or an adapter as options would; options that name another are refused."""

from __future__ import annotations

from dataclasses import dataclass

from server import errors
from server.config import OUTPUT_TYPES, ModelConfig
from server.postprocess import OUTPUT_DTYPES
from server.tokenization import OVERFLOW_POLICIES


def _quoted(values) -> str:
    return ", ".join(repr(v) for v in values)


@dataclass(frozen=True)
class RequestedOptions:
    """What a request asked for, typed, each value where the request said it; unresolved."""

    lora_id: str | None = None  # options.lora_id (or its alias options.lora)
    lora_ids: tuple[str | None, ...] | None = None  # options.lora_ids: one output per adapter (None: base)
    profile: str | None = None
    is_query: bool | None = None  # params.is_query, else options.is_query (the edge refuses the two differing)
    instruction: str | None = None  # options.instruction
    params_instruction: str | None = None
    dims: int | None = None
    overflow_policy: str | None = None
    output_types: tuple[str, ...] | None = None  # params.output_types
    option_output_types: tuple[str, ...] | None = None  # options.output_types
    output_dtype: str | None = None  # options.output_dtype
    params_output_dtype: str | None = None

    def __post_init__(self) -> None:
        if self.lora_id == "":
            raise errors.InvalidInput("options.lora_id must not be empty", field="lora_id")
        if self.lora_ids is not None:
            if not self.lora_ids or "" in self.lora_ids or len(set(self.lora_ids)) != len(self.lora_ids):
                raise errors.InvalidInput("options.lora_ids must name one or more distinct adapters (null for base)",
                                          field="lora_ids")
            if self.lora_id is not None:
                raise errors.InvalidInput("options.lora_id and options.lora_ids both name adapters; give one",
                                          field="lora_ids")
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
        for where, dtype in (("params.output_dtype", self.params_output_dtype),
                             ("options.output_dtype", self.output_dtype)):
            if dtype is not None and dtype not in OUTPUT_DTYPES:
                raise errors.InvalidInput(f"{where}: unsupported output_dtype {dtype!r}; supported: "
                                          f"{_quoted(OUTPUT_DTYPES)}")


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

    def check(self, requested: RequestedOptions, config: ModelConfig) -> None:
        """400 when the request's options name another adapter or profile than this selection."""
        if self.profile is None and self.lora_id is None:
            return
        adapter = self.adapter(config)
        if requested.profile is not None and requested.profile != self.profile:
            other = config.profiles.get(requested.profile)
            if self.profile is not None or other is None or other.lora_id not in (None, adapter):
                raise self._conflict(f"options.profile {requested.profile!r}")
        if requested.lora_id is not None and requested.lora_id != adapter:
            raise self._conflict(f"options.lora_id {requested.lora_id!r}")

    def _conflict(self, other: str) -> errors.InvalidInput:
        chosen = f"profile {self.profile!r}" if self.profile is not None else f"adapter {self.lora_id!r}"
        return errors.InvalidInput(f"model id {self.written!r} selects {chosen} but {other} names another; "
                                   "name the adapter or profile once (in the model id or in the options)",
                                   field="model")


@dataclass(frozen=True)
class EncodeOptions:
    """Resolved: what the served model runs with."""

    lora_id: str | None = None
    lora_ids: tuple[str | None, ...] = ()  # several: one output per adapter per item (lora_id is then None)
    instruction: str | None = None
    is_query: bool = False
    output_dtype: str = "float32"
    dims: int | None = None
    overflow_policy: str = "truncate"
    output_types: tuple[str, ...] = ("dense",)


def resolve_options(config: ModelConfig, requested: RequestedOptions,
                    selection: Selection = Selection()) -> EncodeOptions:
    """The one place a request's options are decided. Precedence, first wins:

    - adapter: options.lora_id, the model id's adapter, the profile's adapter; none is base;
      options.lora_ids (several, each item once per adapter) replaces them all, and a model id naming
      an adapter beside it is refused;
    - profile: options.profile, the model id's profile (the two must agree on the adapter);
    - is_query: params.is_query / options.is_query, the profile's, False;
    - instruction: params.instruction, options.instruction, the profile's, the model's default (applied
      by the tokenizer when a query has none);
    - output_types: options.output_types, the profile's, params.output_types, dense (as SIE);
    - output_dtype: params.output_dtype, options.output_dtype, float32 (as SIE);
    - dims and overflow_policy: options only.
    """
    selection.check(requested, config)
    profile_name = requested.profile or selection.profile
    profile = None
    if profile_name is not None:
        profile = config.profiles.get(profile_name)
        if profile is None:
            raise errors.unknown_profile(profile_name, config.name, config.profiles)
    lora_id = requested.lora_id or selection.lora_id or (profile.lora_id if profile else None)
    if requested.lora_ids is not None:
        if selection.lora_id is not None:
            raise errors.InvalidInput(f"model id {selection.written!r} names an adapter and options.lora_ids names "
                                      "others; name the adapters once", field="lora_ids")
        lora_id = None
    is_query = requested.is_query
    if is_query is None:
        is_query = bool(profile.is_query) if profile is not None and profile.is_query is not None else False
    instruction = next((i for i in (requested.params_instruction, requested.instruction,
                                    profile.instruction if profile else None) if i is not None), None)
    output_types = (requested.option_output_types or (profile.output_types if profile else None)
                    or requested.output_types or ("dense",))
    return EncodeOptions(lora_id=lora_id, lora_ids=requested.lora_ids or (), instruction=instruction, is_query=is_query,
                         output_dtype=requested.params_output_dtype or requested.output_dtype or "float32",
                         dims=requested.dims, overflow_policy=requested.overflow_policy or "truncate",
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
