"""Adapters in object storage (`s3://bucket/prefix`, `gs://bucket/prefix`) through fsspec (s3fs, gcsfs).
Credentials come from the environment only (the SDKs' own variables: AWS_*, AWS_ENDPOINT_URL,
GOOGLE_APPLICATION_CREDENTIALS); only the two PEFT files are fetched (safetensors: never a pickle), within
a size limit, once into the cache under a digest of what the store says of them (name, size, ETag), so
an unchanged adapter is never fetched twice and a changed one is fetched again."""

from __future__ import annotations

import hashlib
from pathlib import Path, PurePosixPath

from server.cache import build_atomically, cache_dir

OBJECT_PREFIXES = ("s3://", "gs://")
PACKAGES = {"s3": "s3fs", "gs": "gcsfs"}
FILES = ("adapter_config.json", "adapter_model.safetensors")
MAX_ADAPTER_BYTES = 4 * 1024 ** 3


class ObjectSourceError(ValueError):
    """An object-storage source that cannot be fetched; the message says why (never a credential)."""


def is_object_url(source: str) -> bool:
    return source.startswith(OBJECT_PREFIXES)


def _filesystem(url: str):
    scheme = url.split("://", 1)[0]
    try:
        import fsspec

        return fsspec.core.url_to_fs(url, skip_instance_cache=True)  # credentials as the environment says now
    except ImportError:
        raise ObjectSourceError(f"{url!r}: reading {scheme}:// needs the package {PACKAGES[scheme]} "
                                f"(pip install {PACKAGES[scheme]})") from None


def _listing(fs, prefix: str, url: str) -> dict[str, dict]:
    try:
        entries = fs.ls(prefix, detail=True, refresh=True)
    except FileNotFoundError:
        raise ObjectSourceError(f"{url!r} holds nothing") from None
    except Exception as exc:  # the store's own errors (denied, no such bucket, unreachable)
        raise ObjectSourceError(f"cannot list {url!r} ({type(exc).__name__})") from None
    found = {PurePosixPath(info["name"]).name: info for info in entries if info.get("type") == "file"}
    missing = [name for name in FILES if name not in found]
    if missing:
        pickles = " (a .bin pickle is never fetched: save with safetensors)" if "adapter_model.bin" in found else ""
        raise ObjectSourceError(f"{url!r} has no {', '.join(missing)}{pickles}")
    return {name: found[name] for name in FILES}


def fetch_adapter(url: str, *, max_bytes: int = MAX_ADAPTER_BYTES) -> Path:
    """The adapter folder under `url`, fetched into the cache unless it is there already."""
    fs, prefix = _filesystem(url)
    prefix = prefix.rstrip("/")
    files = _listing(fs, prefix, url)
    total = sum(int(info.get("size") or 0) for info in files.values())
    if total > max_bytes:
        raise ObjectSourceError(f"{url!r} is {total} bytes, over the limit of {max_bytes}")
    described = "\n".join(f"{name}\0{info.get('size')}\0{info.get('ETag') or info.get('etag') or info.get('md5Hash')}"
                          f"\0{info.get('generation', '')}" for name, info in files.items())
    digest = hashlib.sha256(f"{url.rstrip('/')}\n{described}".encode()).hexdigest()[:32]

    def fetch(staging: Path) -> None:
        for name, info in files.items():
            try:
                fs.get_file(info["name"], str(staging / name))
            except Exception as exc:
                raise ObjectSourceError(f"cannot fetch {url.rstrip('/')}/{name} ({type(exc).__name__})") from None
            if (staging / name).stat().st_size != int(info.get("size") or 0):
                raise ObjectSourceError(f"{url.rstrip('/')}/{name} changed while it was fetched; try again")

    return build_atomically(cache_dir() / "adapters" / "objects" / digest, fetch)
