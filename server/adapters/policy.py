"""Where an adapter that is not resident may come from: the configured catalog (scale-out replicas load
`lora_paths` on demand), a folder under a configured root, or a hub id or object-storage prefix on an
allow-list.

Default: nowhere (only preloaded adapters). Local ids are single folder names; `..`, absolute paths
and symlinks that leave the root are refused. Hub ids must match a `lora_allow` glob such as `org/*`.
"""

from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from server.object_sources import is_object_url
from server.tenancy import split_namespace

_FOLDER = re.compile(r"^[A-Za-z0-9_\-][A-Za-z0-9_.\-]{0,127}$")  # a tenant's folder under a root
# `org/name`, or `hf://org/name@revision` (a branch, tag or commit: pinned)
_HUB_ID = re.compile(r"^(?:hf://)?(?P<repo>[A-Za-z0-9][A-Za-z0-9_.\-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.\-]{0,95})"
                     r"(?:@(?P<revision>[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}))?$")


class SourceRefused(ValueError):
    """The id or source is not allowed; the message says which rule refused it."""


def _inside(path: Path, root: Path) -> bool:
    return os.path.commonpath([str(path), str(root)]) == str(root)


@dataclass(frozen=True)
class DynamicSources:
    roots: tuple[Path, ...] = ()
    allow: tuple[str, ...] = ()

    @property
    def enabled(self) -> bool:
        return bool(self.roots or self.allow)

    def describe(self) -> str:
        parts = []
        if self.roots:
            parts.append("folders under " + ", ".join(str(r) for r in self.roots))
        if self.allow:
            parts.append("hub ids or object-storage prefixes matching " + ", ".join(self.allow))
        return " or ".join(parts) if parts else "none (only preloaded adapters are served)"

    def _remote(self, source: str) -> str:
        """An allowed remote source: an object-storage prefix whose URL a `lora_allow` glob matches
        (`s3://bucket/adapters/*`), else a hub id."""
        if not is_object_url(source):
            return self._hub(source)
        url = source.rstrip("/")
        if ".." in url.split("/") or "\x00" in url or len(url.split("/", 3)) < 4:
            raise SourceRefused(f"{source!r} is not a valid object-storage prefix (s3://bucket/prefix)")
        if not any(fnmatch.fnmatchcase(url, pattern) for pattern in self.allow):
            raise SourceRefused(f"{url!r} is not on the allow-list ({', '.join(self.allow) or 'none configured'})")
        return url

    def _hub(self, hub_id: str) -> str:
        """An allowed hub id as a source: `org/name`, or `hf://org/name@revision` when pinned (the allow-list
        matches `org/name`)."""
        matched = _HUB_ID.match(hub_id)
        if ".." in hub_id or not matched:
            raise SourceRefused(f"{hub_id!r} is not a valid hub id (org/name or hf://org/name@revision)")
        repo, revision = matched["repo"], matched["revision"]
        if not self.allow:
            raise SourceRefused("hub adapters are not enabled (no lora_allow configured)")
        if not any(fnmatch.fnmatchcase(repo, pattern) for pattern in self.allow):
            raise SourceRefused(f"hub id {repo!r} is not on the allow-list ({', '.join(self.allow)})")
        return f"hf://{repo}@{revision}" if revision else repo

    def _local(self, folder: Path) -> str:
        real = folder.resolve()
        for root in self.roots:
            if _inside(folder.absolute(), root) or _inside(real, root):
                if not _inside(real, root):
                    raise SourceRefused(f"{str(folder)!r} resolves outside the adapter root {str(root)!r}")
                return str(real)
        raise SourceRefused(f"{str(folder)!r} is not under an adapter root "
                            f"({', '.join(str(r) for r in self.roots) or 'none configured'})")

    def locate(self, lora_id: str) -> str | None:
        """The source for a requested id, None when no root holds it; raises SourceRefused for a bad id. A
        tenant's id `<tenant>:<name>` is the folder `<root>/<tenant>/<name>` (or the hub id `name`)."""
        if "\x00" in lora_id or "\\" in lora_id or len(lora_id) > 200:
            raise SourceRefused(f"{lora_id!r} is not a valid adapter id")
        tenant, name = split_namespace(lora_id)  # a URL's scheme (hf://, s3://) is no tenant
        if tenant is not None and not _FOLDER.match(tenant):
            raise SourceRefused(f"{lora_id!r} is not a valid adapter id")
        if "/" in name:
            return self._remote(name)
        if name in (".", "..") or name.startswith("~") or not name:
            raise SourceRefused(f"{lora_id!r} is not a valid adapter id (path components are refused)")
        for root in self.roots:
            candidate = root / name if tenant is None else root / tenant / name
            if candidate.exists() or candidate.is_symlink():
                return self._local(candidate)
        return None

    def check_source(self, source: str) -> str:
        """An explicit source (admin API): a path under a root (written as it exists, `adapters/x` too), or an
        allowed hub id."""
        if not source:
            raise SourceRefused("the source is empty: give a folder under an adapter root or a hub id")
        if source.startswith(("/", ".", "~")) or Path(source).expanduser().exists():
            return self._local(Path(source).expanduser())
        return self._remote(source)


@dataclass(frozen=True)
class AdapterSources:
    """The catalog first, then the dynamic sources."""

    catalog: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    dynamic: DynamicSources = field(default_factory=DynamicSources)

    def locate(self, name: str) -> str:
        """The source `name` loads from; raises SourceRefused saying why it may not be loaded."""
        source = self.catalog.get(name)
        if source is None:
            source = self.dynamic.locate(name)
        if source is None:
            raise SourceRefused("not preloaded and not found under any adapter root")
        return source

    def describe(self) -> str:
        configured = f"configured: {', '.join(sorted(self.catalog))}; " if self.catalog else ""
        return f"{configured}dynamic sources: {self.dynamic.describe()}"
