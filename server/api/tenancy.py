"""A served model as one tenant's key sees it: only the profiles and adapters its scope admits, its own
adapters by their own names (`<tenant>:<name>` in the registry), and errors that never name what it may
not see. Routes reach these views through `context(request)`, so every route is scoped the same way."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence
from types import MappingProxyType

from server import errors
from server.options import EncodeOptions
from server.served_model import AdapterAdmin, AdapterCatalog, ServedModel
from server.tenancy import Scope, split_namespace


def reworded(exc: errors.ServingError, internal: str, shown: str) -> errors.ServingError:
    """The same error with the registry's name of an adapter replaced by the tenant's; a full pool's answer
    without the pinned adapters it lists (they may be outside the key's scope)."""
    if isinstance(exc, errors.AdapterPoolPinned):
        return errors.AdapterPoolPinned("no free adapter slot: every slot holds a pinned adapter; an operator "
                                        "must unload one")
    if internal == shown or repr(internal) not in exc.message:
        return exc
    copied = copy.copy(exc)
    copied.message = exc.message.replace(repr(internal), repr(shown))
    copied.args = (copied.message,)
    copied.said = tuple(shown if said == internal else said for said in exc.said)
    return copied


class ScopedCatalog:
    """The adapters a scope may name: its own (registry name `<tenant>:<name>`) first, then shared ones its
    globs admit."""

    def __init__(self, inner: AdapterCatalog, scope: Scope, model: str):
        self.inner, self.scope, self.model = inner, scope, model

    def internal(self, name: str) -> str | None:
        """The registry's name for `name` as this key writes it, or None when the key may not use it."""
        if split_namespace(name)[0] is not None:  # a namespace is never written by a client
            return None
        own = self.scope.own(name)
        if self.inner.loadable(own):
            return own
        return name if self.scope.sees_shared(name) and self.inner.loadable(name) else None

    def unknown(self, name: str) -> errors.UnknownAdapter:
        """The one answer for an adapter this key may not use, whether or not it exists for another."""
        return errors.UnknownAdapter(f"unknown lora_id {name!r} for model {self.model!r}; loaded: "
                                     f"{errors.listed(self.names())}", field="lora_id", said=(name,))

    def names(self) -> list[str]:
        return sorted(shown for name in self.inner.names() if (shown := self.scope.shown(name)) is not None)

    def known(self, name: str) -> bool:
        internal = self.internal(name)
        return internal is not None and self.inner.known(internal)

    def loadable(self, name: str) -> bool:
        return self.internal(name) is not None

    def describe(self) -> list[dict]:
        return [{**entry, "name": shown} for entry in self.inner.describe()
                if (shown := self.scope.shown(entry["name"])) is not None]


class ScopedAdmin:
    """Loads and unloads in the tenant's own namespace; pinning is an operator's (a tenant could otherwise
    hold every slot)."""

    def __init__(self, inner: AdapterAdmin, catalog: ScopedCatalog):
        self.inner, self.catalog, self.scope = inner, catalog, catalog.scope

    async def load(self, name: str, source: str | None = None, *, pin: bool = False) -> tuple[dict, bool]:
        if pin:
            raise errors.Forbidden("pinning an adapter needs an operator key")
        described, created = await self._scoped(name, lambda internal: self.inner.load(internal, source, pin=False))
        return {**described, "name": name}, created

    async def reload(self, name: str, source: str | None = None) -> dict:
        return {**await self._scoped(name, lambda internal: self.inner.reload(internal, source)), "name": name}

    async def unload(self, name: str, *, force: bool = False) -> None:
        await self._scoped(name, lambda internal: self.inner.unload(internal, force=force))

    async def _scoped(self, name: str, action):
        """`action` on the tenant's own `name`, its errors in the tenant's words."""
        internal = self.scope.own(name)
        try:
            return await action(internal)
        except errors.UnknownAdapter:
            raise self.catalog.unknown(name) from None
        except errors.ServingError as exc:
            raise reworded(exc, internal, name) from None


class ScopedModel:
    """`ServedModel` for one scope: the config's profiles narrowed to those whose adapter it may use, the
    catalog and admin above, and encode with the adapter's name translated (errors worded back)."""

    def __init__(self, inner: ServedModel, scope: Scope):
        self.inner, self.scope = inner, scope
        config = inner.config
        profiles = {name: p for name, p in config.profiles.items()
                    if p.lora_id is None or scope.sees_shared(p.lora_id)}
        self.config = dataclasses.replace(config, profiles=MappingProxyType(profiles))
        self.adapters = ScopedCatalog(inner.adapters, scope, config.name)
        self.admin = ScopedAdmin(inner.admin, self.adapters) if inner.admin is not None else None  # 403: the edge
        self.status, self.start, self.stop = inner.status, inner.start, inner.stop

    async def encode(self, texts: Sequence[str], options: EncodeOptions):
        if options.lora_id is None:
            return await self.inner.encode(texts, options)
        names = (options.lora_id,)
        internal = self._internal(names)
        return await self._worded(names, internal,
                                  self.inner.encode(texts, dataclasses.replace(options, lora_id=internal[0])))

    async def encode_each(self, texts: Sequence[str], options: EncodeOptions):
        internal = self._internal(options.lora_ids)
        return await self._worded(options.lora_ids, internal,
                                  self.inner.encode_each(texts, dataclasses.replace(options, lora_ids=internal)))

    def _internal(self, names: Sequence[str | None]) -> tuple[str | None, ...]:
        """Each name's registry name (None, base, stays None); UnknownAdapter for the first the key may not use."""
        internal = tuple(None if name is None else self.adapters.internal(name) for name in names)
        for name, inner in zip(names, internal):
            if name is not None and inner is None:
                raise self.adapters.unknown(name)
        return internal

    async def _worded(self, names: Sequence[str | None], internal: Sequence[str | None], work):
        """`work`, its errors in the key's words."""
        try:
            return await work
        except errors.UnknownAdapter as exc:  # gone between the lookup and the lease (an unload): name which
            named = [name for name, inner in zip(names, internal) if inner is not None and repr(inner) in exc.message]
            raise self.adapters.unknown(named[0] if named else next(n for n in names if n is not None)) from None
        except errors.ServingError as exc:
            for name, inner in zip(names, internal):
                if name is not None:
                    exc = reworded(exc, inner, name)
            raise exc from None


def scoped_models(models, scope: Scope) -> dict[str, ServedModel]:
    """The models `scope` may use, each as it sees it."""
    return {name: ScopedModel(model, scope) for name, model in models.items() if scope.sees_model(name)}
