"""What `launch.py train` says and writes about its run: warnings for too few steps and left-out pairs, a
held-out validation loss, training.json with the base model's identity, steps and wall time, and no
absolute path of this machine in any file of the adapter folder."""

from __future__ import annotations

import json
import logging

import pytest

from server.training.train import TrainSettings, train_adapter
from server.training.validation import plan_warnings, split
from tests.training.test_train import PAIRS


def test_plan_warnings():
    few, left = plan_warnings(40, 16, 3, fixed_steps=False)
    assert "only 3 optimiser steps" in few and "raise --epochs" in few
    assert "leaves out 8 of 40 pairs" in left
    assert plan_warnings(64, 16, 60, fixed_steps=False) == []
    assert "set --steps" in plan_warnings(32, 16, 10, fixed_steps=True)[0]


def test_validation_split_is_seeded_and_disjoint():
    train, held = split(PAIRS, 0.25, seed=1)
    assert len(held) == 6 and len(train) == len(PAIRS) - 6
    assert split(PAIRS, 0.25, seed=1) == (train, held) and split(PAIRS, 0.0, seed=1) == (list(PAIRS), [])


@pytest.fixture(scope="module")
def record_run(demo_config, demo_dirs, tmp_path_factory):
    out = tmp_path_factory.mktemp("record") / "topics"
    train, held = split(PAIRS, 0.25, seed=2)
    settings = TrainSettings(rank=8, alpha=16, epochs=2, batch_size=8, learning_rate=5e-3, seed=2)
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("server.training.train")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        train_adapter(demo_config, train, settings, out, validation=held)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    return out, [r.getMessage() for r in records], len(train), len(held)


def test_training_record_and_warnings(record_run, demo_config):
    out, messages, trained_on, held = record_run
    record = json.loads((out / "training.json").read_text())
    assert record["base_model"]["name"] == demo_config.name and record["base_model"]["source"] == "builtin:qwen3-tiny"
    assert len(record["base_model"]["config_json_sha256"]) == 64
    assert record["steps"] == len(record["losses"]) == 2 * (trained_on // 8) and record["wall_seconds"] > 0
    assert record["pairs"] == trained_on and record["validation_pairs"] == held
    assert record["validation"] and record["validation"][-1]["step"] == record["steps"]
    assert any("validation loss" in m for m in messages)
    assert any(m.startswith("only ") for m in messages) and any("leaves out" in m for m in messages)
    assert record["warnings"] and all(w in messages for w in record["warnings"])


def test_no_path_of_this_machine_in_the_adapter(record_run, demo_dirs):
    out, *_ = record_run
    for path in out.iterdir():
        if path.suffix in (".json", ".md"):
            text = path.read_text()
            assert str(demo_dirs["model"]) not in text and str(out) not in text, path.name
            assert "/tmp/" not in text and "/work/" not in text and "/root/" not in text, path.name
