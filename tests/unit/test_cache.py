"""server/cache.py: where the asset cache lives (stable from any working directory) and the modes of what is
built there (the umask's, not mkdtemp's 0700)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from server import cache
from server.cache import build_atomically, cache_dir


def test_cache_dir_is_the_variable_else_the_checkouts(monkeypatch, tmp_path):
    monkeypatch.setenv("MLE_CACHE_DIR", str(tmp_path / "mine"))
    assert cache_dir() == tmp_path / "mine"
    monkeypatch.delenv("MLE_CACHE_DIR")
    checkout = Path(cache.__file__).resolve().parents[1]
    monkeypatch.chdir(tmp_path)  # the working directory does not matter
    assert cache_dir() == checkout / ".cache"


def test_installed_package_uses_the_user_cache(monkeypatch, tmp_path):
    monkeypatch.delenv("MLE_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr(cache, "__file__", str(tmp_path / "site-packages" / "server" / "cache.py"))
    assert cache_dir() == tmp_path / "xdg" / "multilora-embed"


def test_built_folders_follow_the_umask(tmp_path):
    previous = os.umask(0o027)
    try:
        built = build_atomically(tmp_path / "asset", lambda out: (out / "weights.bin").write_bytes(b"x"))
    finally:
        os.umask(previous)
    assert stat.S_IMODE(built.stat().st_mode) == 0o750
    assert stat.S_IMODE((built / "weights.bin").stat().st_mode) == 0o640


def test_a_build_removes_what_a_killed_build_left(tmp_path):
    stale = tmp_path / ".asset-k1ll3d"
    stale.mkdir()
    (stale / "half.bin").write_bytes(b"x")
    build_atomically(tmp_path / "asset", lambda out: (out / "whole.bin").write_bytes(b"x"))
    assert not stale.exists() and (tmp_path / "asset" / "whole.bin").is_file()
