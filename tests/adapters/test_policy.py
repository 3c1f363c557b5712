"""Dynamic adapter sources: roots without traversal or symlink escapes, hub ids only on the allow-list."""

from __future__ import annotations

import os

import pytest

from server.adapters.policy import DynamicSources, SourceRefused


@pytest.fixture
def root(tmp_path):
    base = tmp_path / "root"
    (base / "good").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    os.symlink(tmp_path / "outside", base / "escape")
    os.symlink(base / "good", base / "alias")
    return base


def test_nothing_enabled_by_default(root):
    sources = DynamicSources()
    assert not sources.enabled and sources.locate("good") is None
    with pytest.raises(SourceRefused, match="not enabled"):
        sources.locate("org/adapter")


def test_folder_under_root(root):
    sources = DynamicSources(roots=(root,))
    assert sources.locate("good") == str(root / "good")
    assert sources.locate("alias") == str(root / "good")  # a symlink that stays inside is fine
    assert sources.locate("missing") is None


@pytest.mark.parametrize("lora_id, message", [
    ("..", "path components"),
    ("~root", "path components"),
    ("../good", "valid hub id"),
    ("/etc", "valid hub id"),
    ("a/../b", "valid hub id"),
    ("bad\\name", "valid adapter id"),
])
def test_traversal_refused(root, lora_id, message):
    with pytest.raises(SourceRefused, match=message):
        DynamicSources(roots=(root,), allow=("*/*",)).locate(lora_id)


def test_symlink_escape_refused(root):
    with pytest.raises(SourceRefused, match="resolves outside the adapter root"):
        DynamicSources(roots=(root,)).locate("escape")


def test_hub_allow_list():
    sources = DynamicSources(allow=("acme/*", "other/exact"))
    assert sources.locate("acme/legal-lora") == "acme/legal-lora"
    assert sources.locate("other/exact") == "other/exact"
    with pytest.raises(SourceRefused, match="not on the allow-list"):
        sources.locate("evil/acme")


def test_explicit_sources(root, tmp_path):
    sources = DynamicSources(roots=(root,), allow=("acme/*",))
    assert sources.check_source(str(root / "good")) == str(root / "good")
    assert sources.check_source("acme/x") == "acme/x"
    for bad in (str(tmp_path / "outside"), str(root / "good" / ".." / ".." / "outside"), str(root / "escape")):
        with pytest.raises(SourceRefused):
            sources.check_source(bad)


def test_a_tenants_id_is_its_folder_under_the_root(root, tmp_path):
    """`<tenant>:<name>` (the registry's name of a tenant's own adapter) is `<root>/<tenant>/<name>`; the
    tenant part is one plain folder name, and the name obeys the rules of any id."""
    (root / "acme" / "shop").mkdir(parents=True)
    sources = DynamicSources(roots=(root,), allow=("org/*",))
    assert sources.locate("acme:shop") == str((root / "acme" / "shop").resolve())
    assert sources.locate("globex:shop") is None and sources.locate("shop") is None
    assert sources.locate("acme:org/adapter") == "org/adapter"
    os.symlink(tmp_path / "outside", root / "acme" / "out")
    for refused in ("..:shop", "acme:..", "a/b:shop", ":shop", "acme:~x", "acme:"):
        with pytest.raises(SourceRefused):
            sources.locate(refused)
    with pytest.raises(SourceRefused, match="outside the adapter root"):
        sources.locate("acme:out")
