"""Pydantic models for request bodies (the HTTP edge only); unknown fields are ignored."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError, field_validator

from server import errors


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class ItemIn(_Lenient):
    id: StrictStr | StrictInt | None = None
    text: StrictStr

    @field_validator("text")
    @classmethod
    def _not_empty(cls, value: str) -> str:
        if value == "":
            raise ValueError("text must not be empty")
        if "\x00" in value:
            raise ValueError("text must not contain NUL characters")
        return value


class ParamsIn(_Lenient):
    output_types: list[Literal["dense"]] | None = None
    output_dtype: Literal["float32", "float16", "int8", "uint8", "binary", "ubinary"] | None = None
    instruction: StrictStr | None = None
    options: dict[str, Any] | None = None


class EncodeRequestIn(_Lenient):
    items: list[ItemIn] = Field(min_length=1)
    params: ParamsIn | None = None


def describe(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors()[:5]:
        where = ".".join(str(p) for p in error["loc"]) or "body"
        parts.append(f"{where}: {error['msg']}")
    more = len(exc.errors()) - 5
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


def parse_encode_request(body: Any) -> EncodeRequestIn:
    if not isinstance(body, dict):
        raise errors.invalid_input("request body must be an object with 'items'")
    try:
        return EncodeRequestIn.model_validate(body)
    except ValidationError as exc:
        raise errors.invalid_input(describe(exc)) from None
