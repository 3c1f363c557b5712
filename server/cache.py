"""The server's cache folder (built demo assets, extracted and converted package weights, compiled kernels,
SGLang's adapter copies) and how things are built into it: once, atomically, under a lock, with the modes
the process' umask gives."""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

ASSET_VERSION = "v1"  # bump to rebuild every builtin asset


def cache_dir() -> Path:
    """Where built and extracted assets live, the same from any working directory: `$MLE_CACHE_DIR`, else
    `.cache` in the checkout the server runs from, else (installed) the user's cache folder."""
    chosen = os.environ.get("MLE_CACHE_DIR")
    if chosen:
        return Path(chosen).expanduser().resolve()
    checkout = Path(__file__).resolve().parents[1]
    if (checkout / "launch.py").is_file() and (checkout / "pyproject.toml").is_file():
        return checkout / ".cache"
    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser().resolve() / "multilora-embed"


def builtin_root() -> Path:
    """Where the builtin demo assets are built."""
    return cache_dir() / "builtin" / ASSET_VERSION


@contextmanager
def build_lock(root: Path):
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def umask() -> int:
    """The process' umask, read without changing it (Linux), else by setting and restoring it."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    current = os.umask(0o022)
    os.umask(current)
    return current


def follow_umask(folder: Path) -> None:
    """A staging folder from mkdtemp is 0700; once finished it gets the mode any new folder gets here."""
    folder.chmod(0o777 & ~umask())


def build_atomically(target: Path, build) -> Path:
    if target.is_dir():
        return target
    with build_lock(target.parent):
        if target.is_dir():
            return target
        for stale in target.parent.glob(f".{target.name}-*"):  # left by a build that was killed (we hold the lock)
            shutil.rmtree(stale, ignore_errors=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
        try:
            build(staging)
            follow_umask(staging)
            os.replace(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target
