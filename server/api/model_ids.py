"""Model ids as clients write them, on every route that takes one: `<model>`, `<model>:<profile>` or
`<model>:<adapter>` (a profile wins over an adapter of the same name), URL-encoded or not. SDKs that cannot
send options (SIE's TypeScript SDK) name an adapter or a profile this way."""

from __future__ import annotations

from dataclasses import dataclass

from server import errors
from server.api.context import AppContext
from server.options import Selection
from server.served_model import ServedModel


@dataclass(frozen=True)
class ModelId:
    model: ServedModel
    selection: Selection

    @property
    def name(self) -> str:
        """The served model's own name (metrics and the core see this, never the suffix)."""
        return self.model.config.name


def parse_model_id(ctx: AppContext, written: str) -> ModelId:
    """404 when no served model has the base name; the suffix is not checked here (an unknown adapter is
    the encode path's 400 naming what is loaded, a hot-loadable one starts its load there)."""
    if written in ctx.models:
        return ModelId(ctx.models[written], Selection(written=written))
    base, sep, suffix = written.rpartition(":")
    if not sep or base not in ctx.models:
        raise errors.model_not_found(written, ctx.models)
    model = ctx.models[base]
    if not suffix:
        raise errors.InvalidInput(f"model {written!r} names no adapter or profile after ':'", field="model")
    if suffix in model.config.profiles:
        return ModelId(model, Selection(profile=suffix, written=written))
    return ModelId(model, Selection(lora_id=suffix, written=written))


def listed_model_id(ctx: AppContext, written: str) -> ModelId:
    """As `parse_model_id`, but an id whose suffix names no profile and no adapter the model has or could
    load is 404 (model info; a loadable one is listed `available`, as encode would serve it)."""
    target = parse_model_id(ctx, written)
    lora_id = target.selection.lora_id
    if lora_id is not None and not target.model.adapters.loadable(lora_id):
        raise errors.model_not_found(written, ctx.models)
    return target
