"""What clients are shown of the server's file system: a folder a config names appears as the config wrote
it (`builtin:qwen3-tiny/dynamic`, `../adapters/x`, `package:<module>/<file>`), any other absolute path of
this machine as `…/<its last part>`. Start-up logs keep full paths for the operator."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from server.cache import cache_dir
from server.config import ModelConfig, ServerSettings
from server.demo_assets import BUILTIN_PREFIX, builtin_folders
from server.packaged import PACKAGE_PREFIX, packaged_folders

# An absolute path: a '/' not inside a word, a relative path or a URL, then characters paths use in messages.
ABSOLUTE_PATH = re.compile(r"(?<![\w.~/:-])/[^\s'\"`,;()\[\]{}<>]*")
CACHE_NAME = "$MLE_CACHE_DIR"


@dataclass(frozen=True)
class PublicPaths:
    aliases: tuple[tuple[str, str], ...] = ()  # (absolute folder, shown as), longest first
    top_level: frozenset[str] = frozenset()  # names under '/' here: what tells a path from a route

    @classmethod
    def of(cls, named: Mapping[str, str]) -> PublicPaths:
        pairs = {os.path.normpath(folder): shown for folder, shown in named.items() if os.path.isabs(folder)}
        try:
            top_level = frozenset(os.listdir("/"))
        except OSError:
            top_level = frozenset()
        return cls(tuple(sorted(pairs.items(), key=lambda pair: -len(pair[0]))), top_level)

    def hide(self, text: str, keep: tuple[str, ...] = ()) -> str:
        """`text` with server paths shown as written or cut; `keep`: the client's own words, left as sent where
        the message quotes them whole (`repr`), so a word can never uncover the rest of a server path."""
        quoted = (repr(word) for word in keep if word)
        kept = {f"\x00{index}\x00": said for index, said in enumerate(q for q in quoted if q in text)}
        for mark, said in kept.items():
            text = text.replace(said, mark)
        for folder, shown in self.aliases:
            if folder in text:
                text = re.sub(re.escape(folder) + r"(?=$|[/\s'\"`,;:()\]}>])", lambda _, s=shown: s, text)
        text = ABSOLUTE_PATH.sub(self._cut, text)
        for mark, said in kept.items():
            text = text.replace(mark, said)
        return text

    def _cut(self, match: re.Match) -> str:
        path = match.group(0)
        if path.lstrip("/").split("/", 1)[0] not in self.top_level:
            return path  # not a path of this machine (a route such as /v1/encode/{model})
        last = path.rstrip("/").rsplit("/", 1)[-1]
        return f"…/{last}" if last else "…"

    def hide_in(self, value: Any) -> Any:
        """`value` (JSON-like: dicts, lists, strings) with every string passed through `hide`."""
        if isinstance(value, str):
            return self.hide(value)
        if isinstance(value, Mapping):
            return {key: self.hide_in(item) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.hide_in(item) for item in value]
        return value


def _source_folders(source: str) -> dict[str, str]:
    if source.startswith(BUILTIN_PREFIX):
        return builtin_folders()
    if source.startswith(PACKAGE_PREFIX):
        return packaged_folders(source)
    if not os.path.isabs(os.path.expanduser(source)):
        return {str(Path(source).expanduser().resolve()): source}  # server-wide roots: relative to the cwd
    return {}


def public_paths(configs: Iterable[ModelConfig], settings: ServerSettings) -> PublicPaths:
    """Every folder the configs and settings name, with how they wrote it."""
    named = {str(cache_dir()): CACHE_NAME}
    sources = list(settings.lora_roots)
    for config in configs:
        named.update(config.written_paths)
        sources += [config.model_path, *config.adapters.lora_paths.values(), *config.lora_roots]
    for source in sources:
        named.update(_source_folders(source))
    return PublicPaths.of(named)
