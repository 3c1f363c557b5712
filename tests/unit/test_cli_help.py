"""--help describes every flag of launch.py, train and eval, and says each setting's default."""

from __future__ import annotations

import pytest

from server.cli import build_parser
from server.config import SETTINGS_FIELDS
from server.training.commands import eval_parser, train_parser


@pytest.mark.parametrize("parser", [build_parser(), train_parser(), eval_parser()], ids=["serve", "train", "eval"])
def test_every_flag_is_described(parser):
    undescribed = [action.dest for action in parser._actions if not (action.help or "").strip()]
    assert undescribed == []
    text = parser.format_help()
    for action in parser._actions:
        if action.default not in (None, False) and action.dest != "help" and action.option_strings:
            assert f"--{action.dest.replace('_', '-')}" in text


def test_settings_flags_say_their_default_and_variable():
    text = " ".join(build_parser().format_help().split())
    for name in SETTINGS_FIELDS:
        assert f"SIE_{name.upper()}" in text, name
    assert "(default: 10; SIE_MAX_LORAS_PER_MODEL)" in text and "(default: 8080)" in text
    assert "(default: 0)" in " ".join(train_parser().format_help().split())
