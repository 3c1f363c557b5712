"""Short digests that name what produced a vector: an adapter's weights and scaling as loaded, and a base
model's files. sha256, shown as its first 16 hex digits (64 bits: enough to tell two loads apart)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

SHOWN_HEX = 16
CHUNK = 1 << 20


def shown(hasher) -> str:
    return hasher.hexdigest()[:SHOWN_HEX]


def tensors_digest(named: Iterable[tuple[str, float, Iterable]]) -> str:
    """Of (name, scaling, each tensor's contiguous buffer, e.g. a numpy array) in the order given: the same
    weights give the same digest wherever they were read from. The buffers are hashed in place, not copied."""
    hasher = hashlib.sha256()
    for name, scaling, buffers in named:
        hasher.update(f"{name}\0{scaling!r}\0".encode())
        for buffer in buffers:
            view = memoryview(buffer).cast("B")
            hasher.update(len(view).to_bytes(8, "little"))
            hasher.update(view)
    return shown(hasher)


def folder_digest(folder: Path) -> str:
    """Of every file under `folder` (relative path, size, contents), in path order, or of the one file
    `folder` names; hidden entries (a hub cache's `.locks`, `.cache`) are skipped. Reads each file once, a
    chunk at a time (sha256 at about 1-2 GB/s a core: a 16 GB checkpoint in about 10 s, beside the warm-up)."""
    hasher = hashlib.sha256()
    files = [folder] if folder.is_file() else sorted(
        p for p in folder.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    for path in files:
        hasher.update(f"{path.relative_to(folder).as_posix() if path != folder else path.name}\0"
                      f"{path.stat().st_size}\0".encode())
        with open(path, "rb") as handle:
            while chunk := handle.read(CHUNK):
                hasher.update(chunk)
    return shown(hasher)
