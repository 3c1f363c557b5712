"""Turn a model or adapter source (builtin:, package:, local folder, hub id `org/name` or pinned
`hf://org/name@revision`, an adapter under `s3://` or `gs://`) into a local folder."""

from __future__ import annotations

from pathlib import Path

from server.demo_assets import BUILTIN_PREFIX, ensure_builtin
from server.object_sources import ObjectSourceError, fetch_adapter, is_object_url
from server.packaged import PACKAGE_PREFIX, resolve_packaged

MODEL_FILES = ["*.json", "*.safetensors", "*.txt", "*.model", "tokenizer*"]
HF_PREFIX = "hf://"
ADAPTER_FILES = ["adapter_config.json", "*.safetensors"]  # safetensors only: pickles are never fetched


class SourceError(ValueError):
    """A source that cannot be turned into a local folder."""


def _looks_local(source: str) -> bool:
    return source.startswith(("/", "./", "../", "~")) or Path(source).expanduser().exists()


def is_remote(source: str) -> bool:
    """A hub id (fetched on first use), as opposed to a builtin, packaged or local source."""
    return not (source.startswith((BUILTIN_PREFIX, PACKAGE_PREFIX)) or _looks_local(source))


def hub_revision(source: str) -> tuple[str, str | None]:
    """(repo id, revision or None) of `org/name` or `hf://org/name@revision`."""
    if source.startswith(HF_PREFIX):
        repo, _, revision = source[len(HF_PREFIX):].partition("@")
        return repo, revision or None
    return source, None


def resolve_source(source: str, *, kind: str = "model") -> Path:
    if source.startswith(BUILTIN_PREFIX):
        try:
            return ensure_builtin(source)
        except ValueError as exc:
            raise SourceError(str(exc)) from None
    if source.startswith(PACKAGE_PREFIX):
        try:
            return resolve_packaged(source)
        except ValueError as exc:
            raise SourceError(str(exc)) from None
    if is_object_url(source):
        if kind != "adapter":
            raise SourceError(f"{source!r}: only adapters are read from object storage")
        try:
            return fetch_adapter(source)
        except ObjectSourceError as exc:
            raise SourceError(str(exc)) from None
    if _looks_local(source):
        folder = Path(source).expanduser().resolve()
        if not folder.is_dir():
            raise SourceError(f"{kind} folder {str(folder)!r} does not exist")
        return folder
    from huggingface_hub import snapshot_download

    patterns = ADAPTER_FILES if kind == "adapter" else MODEL_FILES
    repo, revision = hub_revision(source)
    try:
        return Path(snapshot_download(repo, revision=revision, allow_patterns=patterns, local_files_only=True))
    except Exception:
        pass
    try:
        return Path(snapshot_download(repo, revision=revision, allow_patterns=patterns))
    except Exception as exc:
        raise SourceError(f"cannot fetch {kind} {source!r} from the Hugging Face hub "
                          f"({type(exc).__name__}); download it beforehand or give a local folder") from None
