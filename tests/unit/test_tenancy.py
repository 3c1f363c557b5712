"""The key file and scopes: what each field means, errors that never quote a key, keys found by their
sha256, a broken file on reload keeping the keys in force, and the names a tenant's adapters have."""

from __future__ import annotations

import hashlib
import logging
import os

import pytest

from server.config import ConfigError
from server.tenancy import OPERATOR, KeyRing, Scope, parse_key_file

SECRET = "s3cret-key-value"


def test_a_scope_sees_its_models_its_shared_adapters_and_its_own_namespace():
    scope = Scope("acme", models=("qwen3-*",), adapters=("legal", "med*"))
    assert scope.sees_model("qwen3-0.6b") and not scope.sees_model("bge-m3")
    assert scope.sees_shared("legal") and scope.sees_shared("medical") and not scope.sees_shared("finance")
    assert scope.own("shop") == "acme:shop"
    assert scope.shown("acme:shop") == "shop" and scope.shown("globex:shop") is None
    assert scope.shown("legal") == "legal" and scope.shown("finance") is None
    assert OPERATOR.shown("globex:shop") == "globex:shop" and OPERATOR.own("shop") == "shop"


def test_key_file_entries_and_their_defaults():
    digest = hashlib.sha256(b"hashed-key-0001").hexdigest()
    scopes = parse_key_file(f"""
keys:
  - key: {SECRET}
    tenant: acme
  - key_sha256: {digest.upper()}
    tenant: globex
    models: demo/*
    adapters: [legal]
    admin: true
  - key: operator-key-1
    operator: true
""", "keys.yaml")
    acme = scopes[hashlib.sha256(SECRET.encode()).hexdigest()]
    assert acme == Scope("acme", models=("*",), adapters=(), admin=False)
    assert scopes[digest] == Scope("globex", models=("demo/*",), adapters=("legal",), admin=True)
    assert OPERATOR in scopes.values()


@pytest.mark.parametrize("text, words", [
    (f"keys: [{{key: {SECRET}}}]", "'tenant' must be"),
    (f"keys: [{{key: {SECRET}, tenant: 'a:b'}}]", "'tenant' must be"),
    ("keys: [{key: short, tenant: a}]", "at least 8 characters"),
    (f"keys: [{{key: {SECRET}, key_sha256: {'0' * 64}, tenant: a}}]", "exactly one of"),
    ("keys: [{key_sha256: xyz, tenant: a}]", "64 hex digits"),
    (f"keys: [{{key: {SECRET}, tenant: a, admin: yes please}}]", "true or false"),
    (f"keys: [{{key: {SECRET}, tenant: a, adapters: 3}}]", "list of names or globs"),
    (f"keys: [{{key: {SECRET}, tenant: a, role: x}}]", "unknown field(s) role"),
    (f"keys: [{{key: {SECRET}, tenant: a}}, {{key: {SECRET}, tenant: b}}]", "repeats a key"),
    ("keys: {a: b}", "a 'keys' list"),
    ("keys: [", "not valid YAML"),
])
def test_a_bad_key_file_is_refused_saying_where_without_the_key(text, words):
    with pytest.raises(ConfigError) as refused:
        parse_key_file(text, "keys.yaml")
    assert words in str(refused.value) and "keys.yaml" in str(refused.value)
    assert SECRET not in str(refused.value)


def test_the_ring_finds_keys_by_bearer_and_api_keys_are_operators(tmp_path):
    key_file = tmp_path / "keys.yaml"
    key_file.write_text(f"keys: [{{key: {SECRET}, tenant: acme}}]\n")
    ring = KeyRing(("plain-api-key",), str(key_file))
    assert ring.enabled and ring.tenants
    assert ring.scope_of(f"Bearer {SECRET}").tenant == "acme"
    assert ring.scope_of(f"bearer  {SECRET} ").tenant == "acme"
    assert ring.scope_of("Bearer plain-api-key") is OPERATOR
    assert ring.scope_of(f"Basic {SECRET}") is None and ring.scope_of("") is None
    assert ring.scope_of("Bearer nope") is None
    assert not KeyRing().enabled and not KeyRing(("k",)).tenants


def test_a_change_is_read_again_and_a_broken_file_keeps_the_keys_in_force(tmp_path, caplog, monkeypatch):
    key_file = tmp_path / "keys.yaml"
    key_file.write_text(f"keys: [{{key: {SECRET}, tenant: acme}}]\n")
    ring = KeyRing((), str(key_file))
    monkeypatch.setattr("server.tenancy.RECHECK_S", 0.0)
    key_file.write_text(f"keys: [{{key: {SECRET}, tenant: globex}}]\n")
    os.utime(key_file, ns=(1, 1))  # another modification time whatever the clock's resolution
    assert ring.scope_of(f"Bearer {SECRET}").tenant == "globex"
    with caplog.at_level(logging.INFO, logger="server.tenancy"):
        key_file.write_text("keys: [{key: short, tenant: x}]\n")
        assert ring.scope_of(f"Bearer {SECRET}").tenant == "globex"
        assert not ring.reload()  # SIGHUP's path: the same refusal
    assert "not reloaded" in caplog.text and SECRET not in caplog.text
    key_file.unlink()
    assert ring.scope_of(f"Bearer {SECRET}").tenant == "globex"  # a file gone for a moment changes nothing


def test_a_broken_key_file_at_start_is_a_config_error(tmp_path):
    key_file = tmp_path / "keys.yaml"
    key_file.write_text("keys: 3\n")
    with pytest.raises(ConfigError, match="'keys' list"):
        KeyRing((), str(key_file))


def test_a_urls_scheme_is_no_namespace():
    from server.tenancy import split_namespace

    assert split_namespace("hf://org/name@v2") == (None, "hf://org/name@v2")
    assert split_namespace("acme:s3://bucket/legal") == ("acme", "s3://bucket/legal")
    scope = Scope("acme", adapters=("s3://bucket/*",))
    assert scope.shown("s3://bucket/legal") == "s3://bucket/legal" and scope.shown("s3://other/x") is None
    assert scope.shown("acme:s3://bucket/legal") == "s3://bucket/legal"
    assert scope.shown("globex:hf://org/name@v2") is None
