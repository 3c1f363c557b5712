"""server/options.py: option parsing and resolution as both APIs run them: the edge's one pydantic model
(`OptionsIn`) into the core's typed options, then `resolve_options`, the one place of every precedence rule."""

from __future__ import annotations

import pytest

from server import errors
from server.api.errors import ApiError, from_domain
from server.api.schemas import OptionsIn, ParamsIn, validate
from server.options import check_dims
from server.options import resolve_options as resolve


def resolve_options(config, *, options=None, instruction=None, output_types=None, output_dtype=None):
    """The SIE route's path from `params` to resolved options; errors as the API answers them."""
    params = {"options": options, "instruction": instruction, "output_types": output_types,
              "output_dtype": output_dtype}
    parsed = validate(ParamsIn, {k: v for k, v in params.items() if v is not None})
    try:
        return resolve(config, (parsed.options or OptionsIn()).requested(parsed))
    except errors.ServingError as exc:
        raise from_domain(exc) from None


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
    ({"options": None, "output_types": ["colbert"]}, "unsupported output type 'colbert'"),
    ({"options": {"output_types": []}}, "options.output_types must name at least one"),
    ({"options": None, "output_dtype": "int4"}, "unsupported output_dtype 'int4'"),
])
def test_invalid_options(demo_config, kwargs, message):
    with pytest.raises(ApiError, match=message) as info:
        resolve_options(demo_config, **kwargs)
    assert info.value.status == 400 and info.value.code == "INVALID_INPUT"


def test_output_types_resolve_options_then_profile_then_params(demo_config):
    import dataclasses

    from server.config import Profile

    config = dataclasses.replace(demo_config, profiles={
        **demo_config.profiles, "hybrid": Profile(name="hybrid", output_types=("dense", "sparse"))})
    assert resolve_options(config).output_types == ("dense",)
    assert resolve_options(config, output_types=["multivector", "dense", "multivector"]).output_types == (
        "multivector", "dense")
    assert resolve_options(config, options={"profile": "hybrid"}, output_types=["multivector"]).output_types == (
        "dense", "sparse")
    chosen = resolve_options(config, options={"profile": "hybrid", "output_types": ["sparse"]},
                             output_types=["multivector"])
    assert chosen.output_types == ("sparse",)


def test_profile_output_types_are_checked_in_the_yaml(tmp_path):
    from server.config import ConfigError, model_config_from_dict

    base = {"name": "m", "model_path": "x"}
    good = model_config_from_dict({**base, "profiles": {"p": {"output_types": ["sparse", "dense"]}}})
    assert good.profiles["p"].output_types == ("sparse", "dense")
    for bad in ([], ["bm25"], "dense"):
        with pytest.raises(ConfigError, match="output_types must be a non-empty list"):
            model_config_from_dict({**base, "profiles": {"p": {"output_types": bad}}})


def test_dims_range():
    check_dims(None, 64, 32)
    check_dims(32, 64, 32)
    for bad in (31, 65, 0):
        with pytest.raises(errors.InvalidInput, match="out of range; this model allows 32..64"):
            check_dims(bad, 64, 32)


def test_every_precedence_rule_in_one_resolution(demo_config):
    """`resolve_options` alone decides: params beat options for instruction and dtype, options beat the
    profile, the model id's selection is applied and checked against the options."""
    from server.options import RequestedOptions, Selection

    both = RequestedOptions(instruction="from options", params_instruction="from params", output_dtype="int8",
                            params_output_dtype="float16", profile="legal")
    resolved = resolve(demo_config, both)
    assert resolved.instruction == "from params" and resolved.output_dtype == "float16"
    assert resolved.lora_id == "legal"  # the profile's adapter
    assert resolve(demo_config, RequestedOptions(profile="legal")).instruction == \
        demo_config.profiles["legal"].instruction
    by_id = resolve(demo_config, RequestedOptions(), Selection(lora_id="finance", written="m:finance"))
    assert by_id.lora_id == "finance"
    with pytest.raises(errors.InvalidInput, match="selects adapter 'finance' but options.lora_id 'legal'"):
        resolve(demo_config, RequestedOptions(lora_id="legal"), Selection(lora_id="finance", written="m:finance"))
