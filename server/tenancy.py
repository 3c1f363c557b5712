"""Tenants: the key file (each API key -> a tenant, the models and shared adapters it may use, whether it
may manage adapters) read into a `KeyRing` that reloads on a change, and the names a tenant's own adapters
have inside the server, `<tenant>:<name>`: a namespace no name a client writes can reach (':' is refused)."""

from __future__ import annotations

import fnmatch
import hashlib
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

import yaml

from server.config import ConfigError, valid_adapter_name

log = logging.getLogger(__name__)
NAMESPACE_SEP = ":"
RECHECK_S = 1.0  # how often a request may look at the key file's modification time


@dataclass(frozen=True)
class Scope:
    """What one key may do. `operator`: everything, in the shared namespace (as a key of `api_keys`)."""

    tenant: str
    models: tuple[str, ...] = ("*",)
    adapters: tuple[str, ...] = ()  # shared adapters (globs) this key may use; its own namespace always
    admin: bool = False
    operator: bool = False

    def sees_model(self, name: str) -> bool:
        return self.operator or any(fnmatch.fnmatchcase(name, pattern) for pattern in self.models)

    def sees_shared(self, adapter: str) -> bool:
        return self.operator or any(fnmatch.fnmatchcase(adapter, pattern) for pattern in self.adapters)

    def own(self, name: str) -> str:
        """The registry's name for this tenant's adapter `name` (an operator's is the shared one)."""
        return name if self.operator else f"{self.tenant}{NAMESPACE_SEP}{name}"

    def shown(self, internal: str) -> str | None:
        """The name this key knows a registry name by, or None when the key may not see it."""
        if self.operator:
            return internal
        tenant, name = split_namespace(internal)
        if tenant is not None:
            return name if tenant == self.tenant else None
        return internal if self.sees_shared(internal) else None


OPERATOR = Scope(tenant="", operator=True, admin=True)


def split_namespace(name: str) -> tuple[str | None, str]:
    """(tenant, name) of a registry name; (None, name) for a shared one. A URL's scheme (`s3://`, `hf://`)
    is not a namespace."""
    tenant, sep, rest = name.partition(NAMESPACE_SEP)
    if not sep or rest.startswith("//"):
        return None, name
    return tenant, rest


def key_digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _strings(entry: dict, field: str, default: tuple[str, ...], where: str) -> tuple[str, ...]:
    value = entry.get(field, list(default))
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{where}: '{field}' must be a list of names or globs")
    return tuple(value)


def _scope(entry, where: str) -> tuple[str, Scope]:
    """One entry of the key file: (the key's sha256, its scope). Messages never quote the key."""
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: each entry must be a mapping")
    unknown = set(entry) - {"key", "key_sha256", "tenant", "models", "adapters", "admin", "operator"}
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
    if ("key" in entry) == ("key_sha256" in entry):
        raise ConfigError(f"{where}: give exactly one of 'key' and 'key_sha256'")
    if "key" in entry:
        if not isinstance(entry["key"], str) or len(entry["key"]) < 8:
            raise ConfigError(f"{where}: 'key' must be a string of at least 8 characters")
        digest = key_digest(entry["key"])
    else:
        digest = str(entry["key_sha256"]).lower()
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise ConfigError(f"{where}: 'key_sha256' must be 64 hex digits (sha256 of the key)")
    if entry.get("operator") is True:
        return digest, OPERATOR
    tenant = entry.get("tenant")
    if not isinstance(tenant, str) or not valid_adapter_name(tenant):
        raise ConfigError(f"{where}: 'tenant' must be 1-128 letters, digits, '-', '_', '.'")
    if not isinstance(entry.get("admin", False), bool) or not isinstance(entry.get("operator", False), bool):
        raise ConfigError(f"{where}: 'admin' and 'operator' must be true or false")
    return digest, Scope(tenant, _strings(entry, "models", ("*",), where), _strings(entry, "adapters", (), where),
                         admin=entry.get("admin", False))


def parse_key_file(text: str, where: str) -> Mapping[str, Scope]:
    """`keys:` a list of {key | key_sha256, tenant, models, adapters, admin} or {key | key_sha256, operator}."""
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}: not valid YAML ({getattr(exc, 'problem', 'parse error')})") from None
    entries = data.get("keys") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise ConfigError(f"{where}: expected a mapping with a 'keys' list")
    scopes: dict[str, Scope] = {}
    for index, entry in enumerate(entries):
        digest, scope = _scope(entry, f"{where}: keys[{index}]")
        if digest in scopes:
            raise ConfigError(f"{where}: keys[{index}] repeats a key of an earlier entry")
        scopes[digest] = scope
    return MappingProxyType(scopes)


class KeyRing:
    """The keys in force: `api_keys` (operators) and the key file's, which is read again when it changes
    (looked at no more than once a second, on a request) or on `reload()` (SIGHUP). A file that no longer
    parses keeps the keys in force and logs why."""

    def __init__(self, api_keys: tuple[str, ...] = (), key_file: str = ""):
        self.path = key_file
        self._fixed = {key_digest(key): OPERATOR for key in api_keys}
        self._scopes: Mapping[str, Scope] = {}
        self._stamp: tuple[int, int] | None = None
        self._checked = 0.0
        if key_file:
            self._scopes, self._stamp = self._read()

    @property
    def enabled(self) -> bool:
        return bool(self._fixed or self.path)

    @property
    def tenants(self) -> bool:
        """Whether keys are scoped (a key file is in use): listings and errors are then per key."""
        return bool(self.path)

    def scope_of(self, header: str) -> Scope | None:
        """The scope of `Authorization: Bearer <key>`, None for no key or an unknown one. Keys are looked up by
        their sha256: how long a lookup takes depends on the digest, which a caller cannot steer towards a
        key (no key is ever compared byte by byte)."""
        self._maybe_reload()
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        digest = key_digest(token.strip())
        return self._fixed.get(digest) or self._scopes.get(digest)

    def reload(self) -> bool:
        """Read the key file again now; False (keys unchanged, the cause logged) when it does not parse."""
        if not self.path:
            return False
        try:
            scopes, stamp = self._read()
        except (ConfigError, OSError) as exc:
            log.error("key file not reloaded, the keys in force stay: %s", exc)
            return False
        self._scopes, self._stamp = scopes, stamp
        log.info("key file reloaded: %d keys", len(scopes))
        return True

    def _read(self) -> tuple[Mapping[str, Scope], tuple[int, int]]:
        stat = os.stat(self.path)
        with open(self.path, encoding="utf-8") as handle:
            return parse_key_file(handle.read(), "key file"), (stat.st_mtime_ns, stat.st_size)

    def _maybe_reload(self) -> None:
        now = time.monotonic()
        if not self.path or now - self._checked < RECHECK_S:
            return
        self._checked = now
        try:
            stat = os.stat(self.path)
        except OSError:
            return
        if (stat.st_mtime_ns, stat.st_size) != self._stamp:
            self.reload()
