"""Pydantic models for request bodies (the HTTP edge only). Both encode APIs parse their options through
`OptionsIn` into the core's typed `RequestedOptions`. An unknown option or OpenAI field is a 400 that names
the known ones (a misspelled `lora_id` must never mean base vectors); other unknown SIE fields are ignored."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
    model_validator,
)

from server.api.errors import invalid_input
from server.options import RequestedOptions

OPTION_TYPES = {"lora_id": (str, "a string"), "lora": (str, "a string"),
                "lora_ids": (list, "a list of adapter names (null for base)"), "profile": (str, "a string"),
                "is_query": (bool, "a boolean"), "instruction": (str, "a string"), "dims": (int, "an integer"),
                "overflow_policy": (str, "a string"), "output_dtype": (str, "a string"),
                "output_types": (list, "a list of output types")}


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


def _refuse_unknown(data: Any, known, what: str) -> None:
    unknown = sorted(str(key) for key in data if key not in known) if isinstance(data, dict) else []
    if unknown:
        raise ValueError(f"unknown {what} {', '.join(map(repr, unknown))}; known: {', '.join(sorted(known))}")


def _text(value: str) -> str:
    if value == "":
        raise ValueError("text must not be empty")
    if "\x00" in value:
        raise ValueError("text must not contain NUL characters")
    return value


class OptionsIn(_Lenient):
    lora_id: StrictStr | None = None
    lora: StrictStr | None = None  # alias of lora_id
    lora_ids: list[StrictStr | None] | None = None  # one output per adapter per item
    profile: StrictStr | None = None
    is_query: StrictBool | None = None
    instruction: StrictStr | None = None
    dims: StrictInt | None = None
    overflow_policy: StrictStr | None = None
    output_dtype: StrictStr | None = None  # as SIE: params.output_dtype wins when both are set
    output_types: list[StrictStr] | None = None  # as SIE: wins over params.output_types

    @model_validator(mode="before")
    @classmethod
    def _types(cls, data: Any) -> Any:
        _refuse_unknown(data, OPTION_TYPES, "option(s)")
        for key, (kind, label) in OPTION_TYPES.items():
            value = data.get(key) if isinstance(data, dict) else None
            # bool is an int subclass: a flag must not pass as a dimension and vice versa.
            if value is not None and (not isinstance(value, kind) or (kind is int and isinstance(value, bool))):
                raise ValueError(f"options.{key} must be {label}, got {type(value).__name__}")
        return data

    @model_validator(mode="after")
    def _alias(self) -> OptionsIn:
        if self.lora_id is not None and self.lora is not None and self.lora_id != self.lora:
            raise ValueError(f"options.lora_id {self.lora_id!r} and options.lora {self.lora!r} disagree")
        return self

    def requested(self, params: ParamsIn | None = None) -> RequestedOptions:
        """The core's options, each value where the request said it (`options.resolve_options` decides)."""
        params = params or ParamsIn()
        return RequestedOptions(
            lora_id=self.lora_id if self.lora_id is not None else self.lora, profile=self.profile,
            lora_ids=tuple(self.lora_ids) if self.lora_ids is not None else None,
            is_query=params.is_query if params.is_query is not None else self.is_query,
            instruction=self.instruction, params_instruction=params.instruction, dims=self.dims,
            overflow_policy=self.overflow_policy,
            output_types=tuple(params.output_types) if params.output_types is not None else None,
            option_output_types=tuple(self.output_types) if self.output_types is not None else None,
            output_dtype=self.output_dtype, params_output_dtype=params.output_dtype)


class ItemIn(_Lenient):
    id: StrictStr | StrictInt | None = None
    text: StrictStr

    _not_empty = field_validator("text")(_text)


class ParamsIn(_Lenient):
    output_types: list[StrictStr] | None = None
    output_dtype: StrictStr | None = None
    instruction: StrictStr | None = None
    is_query: StrictBool | None = None  # where SIE's TypeScript SDK sends `isQuery`
    options: OptionsIn | None = None

    @model_validator(mode="after")
    def _one_is_query(self) -> ParamsIn:
        given = self.options.is_query if self.options is not None else None
        if self.is_query is not None and given is not None and self.is_query != given:
            raise ValueError(f"params.is_query ({self.is_query}) and params.options.is_query ({given}) disagree")
        return self


class EncodeRequestIn(_Lenient):
    items: list[ItemIn] = Field(min_length=1)
    params: ParamsIn | None = None

    def requested(self) -> tuple[tuple[str, ...], RequestedOptions]:
        """(the texts, what the request asked for)."""
        params = self.params or ParamsIn()
        return tuple(item.text for item in self.items), (params.options or OptionsIn()).requested(params)


class EmbeddingsIn(_Lenient):
    """OpenAI's embeddings body; `is_query` and `instruction` are extensions (the client's extra_body)."""

    model: StrictStr
    input: StrictStr | list[StrictStr]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: StrictInt | None = None
    user: StrictStr | None = None
    is_query: StrictBool | None = None
    instruction: StrictStr | None = None

    @model_validator(mode="before")
    @classmethod
    def _known_fields(cls, data: Any) -> Any:
        _refuse_unknown(data, cls.model_fields, "field(s)")
        return data

    @field_validator("input")
    @classmethod
    def _texts(cls, value):
        texts = [value] if isinstance(value, str) else value
        if not texts:
            raise ValueError("input must hold at least one string")
        if any(t == "" or "\x00" in t for t in texts):
            raise ValueError("input strings must be non-empty and free of NUL characters")
        return value

    def requested(self) -> tuple[tuple[str, ...], RequestedOptions]:
        """(the texts, what the request asked for): OpenAI's embeddings are dense vectors, whatever output types
        a profile names."""
        texts = (self.input,) if isinstance(self.input, str) else tuple(self.input)
        return texts, RequestedOptions(is_query=self.is_query, instruction=self.instruction, dims=self.dimensions,
                                       option_output_types=("dense",))


def describe(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors()[:5]:
        where = ".".join(str(p) for p in error["loc"]) or "body"
        parts.append(f"{where}: {error['msg']}")
    more = len(exc.errors()) - 5
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


def validate(model: type[BaseModel], body: Any, *, what: str = "request body must be an object") -> Any:
    """The body as `model`, or 400 INVALID_INPUT naming the fields that are wrong (the first as `field`)."""
    if not isinstance(body, dict):
        raise invalid_input(what)
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        location = exc.errors()[0]["loc"] if exc.errors() else ()
        raise invalid_input(describe(exc), field=str(location[0]) if location else None) from None

