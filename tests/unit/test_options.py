"""Option resolution: profile first, request options override, params.instruction wins."""

from __future__ import annotations

import pytest

from server.errors import ApiError
from server.options import check_dims, resolve_options


def test_defaults(demo_config):
    options = resolve_options(demo_config, options=None)
    assert options.lora_id is None and not options.is_query and options.output_dtype == "float32"


def test_profile_then_overrides(demo_config):
    profile = resolve_options(demo_config, options={"profile": "legal"})
    assert profile.lora_id == "legal" and profile.instruction.startswith("Given a legal query")
    overridden = resolve_options(demo_config, options={"profile": "legal", "lora_id": "medical", "is_query": True},
                                 instruction="mine")
    assert overridden.lora_id == "medical" and overridden.instruction == "mine" and overridden.is_query


def test_lora_alias(demo_config):
    assert resolve_options(demo_config, options={"lora": "finance"}).lora_id == "finance"
    with pytest.raises(ApiError, match="disagree"):
        resolve_options(demo_config, options={"lora": "finance", "lora_id": "legal"})


@pytest.mark.parametrize("kwargs, message", [
    ({"options": {"profile": "tax"}}, "unknown profile 'tax' .*available: legal, medical"),
    ({"options": {"lora_id": 3}}, "options.lora_id must be a string"),
    ({"options": {"is_query": "yes"}}, "options.is_query must be a boolean"),
    ({"options": {"dims": True}}, "options.dims must be an integer"),
    ({"options": {"overflow_policy": "drop"}}, "overflow_policy"),
    ({"options": {"lora_id": ""}}, "must not be empty"),
    ({"options": None, "output_types": ["sparse"]}, "unsupported output type 'sparse'"),
    ({"options": None, "output_dtype": "int4"}, "unsupported output_dtype 'int4'"),
])
def test_invalid_options(demo_config, kwargs, message):
    with pytest.raises(ApiError, match=message) as info:
        resolve_options(demo_config, **kwargs)
    assert info.value.status == 400 and info.value.code == "INVALID_INPUT"


def test_dims_range():
    check_dims(None, 64, 32)
    check_dims(32, 64, 32)
    for bad in (31, 65, 0):
        with pytest.raises(ApiError, match="out of range; this model allows 32..64"):
            check_dims(bad, 64, 32)
