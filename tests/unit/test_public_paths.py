"""How server paths are shown to clients: configured folders as written, other paths of this machine cut to
their last part, routes and relative or builtin names left alone."""

from __future__ import annotations

import os
from pathlib import Path

from server.cache import builtin_root
from server.config import ServerSettings, model_config_from_dict
from server.public_paths import PublicPaths, public_paths


def test_configured_folders_show_as_written(tmp_path):
    config = model_config_from_dict({"name": "m", "model_path": "./weights", "lora_roots": ["../adapters/m"],
                                     "adapter_options_loadtime": {"lora_paths": {"a": "./a"}}},
                                    base_dir=tmp_path / "configs")
    paths = public_paths([config], ServerSettings(lora_roots=("builtin:qwen3-tiny/dynamic",)))
    root = (tmp_path / "adapters" / "m").resolve()
    assert paths.hide(f"adapter folder '{root}/x' does not exist") == "adapter folder '../adapters/m/x' does not exist"
    assert paths.hide(f"{(tmp_path / 'configs' / 'weights').resolve()}: no config.json") == "./weights: no config.json"
    assert paths.hide(f"under {builtin_root() / 'dynamic'}") == "under builtin:qwen3-tiny/dynamic"
    assert paths.hide(str(builtin_root().parent / "other")) == "$MLE_CACHE_DIR/builtin/other"


def test_other_paths_are_cut_and_routes_kept():
    paths = PublicPaths.of({})
    here = Path.cwd().resolve()
    assert paths.hide(f"cannot read '{here}/secret/adapter_config.json'") == "cannot read '…/adapter_config.json'"
    assert paths.hide("POST /v1/encode/{model} and GET /readyz") == "POST /v1/encode/{model} and GET /readyz"
    for kept in ("../adapters/x", "builtin:qwen3-tiny/legal", "org/name", "package:mod/file.zip", "http://h/x/y"):
        assert paths.hide(kept) == kept
    assert paths.hide_in({"a": [f"{here}/x", 3], "b": None}) == {"a": ["…/x", 3], "b": None}


def test_longest_configured_folder_wins(tmp_path):
    outer, inner = str(tmp_path / "a"), str(tmp_path / "a" / "b")
    paths = PublicPaths.of({outer: "./a", inner: "builtin:b", "relative/ignored": "x"})
    assert paths.hide(f"{inner}/c and {outer}/d and {outer}bc").startswith("builtin:b/c and ./a/d and …/")
    assert os.path.isabs(paths.aliases[0][0])

