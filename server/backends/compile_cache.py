"""Compiled kernels carried to other nodes: `launch.py warm` writes what a warm-up compiled (torch's
`save_cache_artifacts`: inductor's graphs, AOTAutograd's, Triton kernels and their tuning) beside the torch,
Triton and device they were made for; a server whose `compile_cache_artifacts` names such a file loads it
into its local caches before compiling, so its warm-up reads kernels instead of building them. A file made
for another torch, Triton or device is set aside with a warning (its kernels would not match)."""

from __future__ import annotations

import json
import logging
import os
import platform
from pathlib import Path

import torch

from server.config import ConfigError

log = logging.getLogger(__name__)
MAGIC = b"multilora-embed compile cache 1\n"


class CompileCacheError(ConfigError):
    """The file is not a compile cache this server wrote, or there is nothing to write."""


def environment(device: str) -> dict:
    """What compiled kernels depend on: torch, Triton, and the device they were built for."""
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    if device.startswith("cuda"):
        index = torch.device(device).index or 0
        name = f"{torch.cuda.get_device_name(index)} (sm_{''.join(map(str, torch.cuda.get_device_capability(index)))})"
    else:
        name = f"cpu {platform.machine()}"
    return {"torch": torch.__version__, "triton": triton_version, "device": name}


def save(path: str | Path, device: str) -> int:
    """Write what this process compiled (or read from its caches); the bytes written."""
    saved = torch.compiler.save_cache_artifacts()
    if saved is None or not saved[0]:
        raise CompileCacheError("nothing was compiled in this process (compile is off for every model: set "
                                "compile: on, or run on a CUDA device)")
    data, _ = saved
    header = json.dumps(environment(device)).encode() + b"\n"
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(MAGIC + header + data)
    os.replace(partial, path)
    return path.stat().st_size


def load(path: str | Path, device: str) -> bool:
    """Fill the local caches from a file `save` wrote; False (with a warning) when it was made elsewhere."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise CompileCacheError(f"compile_cache_artifacts: cannot read {Path(path).name} ({exc.strerror})") from None
    if not raw.startswith(MAGIC) or b"\n" not in raw[len(MAGIC):]:
        raise CompileCacheError(f"compile_cache_artifacts: {Path(path).name} is not a file `launch.py warm` wrote")
    header, data = raw[len(MAGIC):].split(b"\n", 1)
    made_for, here = json.loads(header), environment(device)
    if made_for != here:
        log.warning("compile cache %s was made for %s, not %s: compiling as usual", path, made_for, here)
        return False
    torch.compiler.load_cache_artifacts(data)
    log.info("compile cache loaded from %s (%.1f MiB, %s)", path, len(data) / 2**20, here["device"])
    return True
