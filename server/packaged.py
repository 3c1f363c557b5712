"""Weights shipped inside installed Python packages, for offline use: `package:<module>/<path>` names a
folder, a zip of one (extracted once), or a GGUF file (de-quantised once by transformers' GGUF reader
into a safetensors folder, so later starts read plain tensors instead of de-quantising again).

The package is located with `importlib.util.find_spec` and never imported (some of them import heavy or
broken dependencies). Extracted folders live under `$MLE_CACHE_DIR/packages`, keyed by the file's size
and modification time, so an upgraded package is extracted anew.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import zipfile
from pathlib import Path

from server.cache import build_atomically, cache_dir

PACKAGE_PREFIX = "package:"
log = logging.getLogger(__name__)


def package_file(source: str) -> Path:
    """The file or folder `package:<module>/<path>` names inside the installed package."""
    module, _, inner = source[len(PACKAGE_PREFIX):].partition("/")
    if not module.isidentifier() or not inner:
        raise ValueError(f"packaged source {source!r} must be 'package:<python module>/<path inside it>'")
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"{source!r}: the Python package {module!r} is not installed "
                         "(the real-weight packages install with `make real` or pip install -e '.[real]')")
    root = Path(next(iter(spec.submodule_search_locations))).resolve()
    target = (root / inner).resolve()
    if root not in target.parents or not target.exists():
        raise ValueError(f"{source!r}: {inner!r} is not in the installed package {module!r} ({root})")
    return target


def _extracted_folder(target: Path) -> Path:
    stat = target.stat()
    key = hashlib.sha256(f"{target}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    return cache_dir() / "packages" / f"{target.stem}-{key}"


def packaged_folders(source: str) -> dict[str, str]:
    """The file `source` names and the folder it is extracted to -> `source` (for showing paths to
    clients); empty when the package is not installed."""
    try:
        target = package_file(source)
    except ValueError:
        return {}
    folders = {str(target): source}
    if not target.is_dir():
        folders[str(_extracted_folder(target))] = source
    return folders


def resolve_packaged(source: str) -> Path:
    """A local folder holding the model `source` names (built once, then reused)."""
    target = package_file(source)
    if target.is_dir():
        return target
    out = _extracted_folder(target)
    if target.suffix == ".zip":
        return _model_root(build_atomically(out, lambda staging: _extract(target, staging)))
    if target.suffix == ".gguf":
        return build_atomically(out, lambda staging: convert_gguf(target, staging))
    raise ValueError(f"{source!r}: expected a folder, a .zip or a .gguf file, got {target.name!r}")


def _extract(archive: Path, out: Path) -> None:
    log.info("extracting %s into %s", archive, out)
    with zipfile.ZipFile(archive) as handle:
        for member in handle.namelist():
            if member.startswith("/") or ".." in Path(member).parts:
                raise ValueError(f"{archive}: refusing the unsafe member path {member!r}")
        handle.extractall(out)


def _model_root(folder: Path) -> Path:
    """The folder itself, or its single subfolder when the zip wrapped the model in one."""
    entries = [p for p in folder.iterdir() if not p.name.startswith(".")]
    if not (folder / "config.json").is_file() and len(entries) == 1 and entries[0].is_dir():
        return entries[0]
    return folder


def convert_gguf(gguf: Path, out: Path) -> None:
    """De-quantise a GGUF checkpoint to a float32 safetensors folder (model without LM head + tokenizer)."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModel, AutoTokenizer

    log.info("de-quantising %s into %s (once)", gguf, out)
    AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(out)
    model = AutoModel.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # save_pretrained refuses a model marked GGUF-quantised; the tensors it holds are plain float32.
    save_file({name: tensor.contiguous() for name, tensor in model.state_dict().items()},
              str(out / "model.safetensors"), metadata={"format": "pt"})
    config = model.config.to_dict()
    config.pop("quantization_config", None)
    config["gguf_source"] = gguf.name
    (out / "config.json").write_text(json.dumps(config, indent=2))
