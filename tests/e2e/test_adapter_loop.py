"""The adapter loop end to end on the tiny demo model: `launch.py train` writes an adapter under an
adapter root, a live server hot-loads it through the admin API, and `launch.py eval` measures base vs
adapter through the real SIE SDK, writing JSON and a PNG chart."""

from __future__ import annotations

import dataclasses
import json
import logging

import httpx
import pytest

from server.cli import main
from server.training.pairs import pair_records, write_jsonl
from tests.conftest import DEMO_MODEL, DEMO_YAML, LiveServer, build_app
from tests.training.test_train import PAIRS


@pytest.fixture(autouse=True)
def root_logging_restored():
    """`main` points the root logger at this test's captured stderr; later tests must not write there."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture(scope="module")
def loop(tmp_path_factory):
    root = tmp_path_factory.mktemp("loop")
    write_jsonl(root / "pairs.jsonl", pair_records(PAIRS[:len(PAIRS) // 2]))
    (root / "adapters").mkdir()
    return root


def test_train_serve_evaluate(loop, demo_config, demo_dirs, capsys):
    pairs = str(loop / "pairs.jsonl")
    assert main(["train", "--config", str(DEMO_YAML), "--pairs", pairs, "--out", str(loop / "adapters" / "topics"),
                 "--steps", "30", "--batch-size", "8", "--lr", "5e-3", "--rank", "8", "--seed", "3"]) == 0
    config = dataclasses.replace(demo_config, lora_roots=(str(loop / "adapters"),))
    app, _ = build_app(config)
    with LiveServer(app) as server:
        loaded = httpx.post(f"{server.url}/v1/models/{DEMO_MODEL}/loras", json={"name": "topics"}, timeout=60)
        assert loaded.status_code in (200, 201), loaded.text
        assert main(["eval", "--url", server.url, "--model", DEMO_MODEL, "--pairs", pairs, "--adapter", "topics",
                     "--out", str(loop / "report"), "--name", "topics"]) == 0
    report = json.loads((loop / "report" / "topics.json").read_text())
    assert set(report["results"]) == {"base", "topics"} and report["queries"] == len(PAIRS) // 2
    for metrics in report["results"].values():
        assert set(metrics) == {"recall@1", "recall@5", "recall@10", "mrr@10", "ndcg@10"}
        assert all(0.0 <= v <= 1.0 for v in metrics.values())
    # trained on these very pairs: the adapter ranks them better than the random base model does
    assert report["results"]["topics"]["mrr@10"] > report["results"]["base"]["mrr@10"]
    assert (loop / "report" / "topics.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr()
    assert "| topics |" in printed.out
    # eval quiets httpx: no line per encode call (the test's own load above may log one, before eval runs)
    assert not [line for line in printed.err.splitlines() if "HTTP Request:" in line and "/v1/encode" in line]


def test_train_refuses_to_overwrite_and_names_bad_input(loop, capsys):
    (loop / "exists").mkdir(exist_ok=True)
    assert main(["train", "--config", str(DEMO_YAML), "--pairs", str(loop / "pairs.jsonl"),
                 "--out", str(loop / "exists")]) == 2
    assert "--overwrite" in capsys.readouterr().err
    (loop / "bad.jsonl").write_text('{"query": "q"}\n')
    assert main(["train", "--config", str(DEMO_YAML), "--pairs", str(loop / "bad.jsonl"),
                 "--out", str(loop / "new")]) == 2
    assert "bad.jsonl:1" in capsys.readouterr().err
    assert main(["train", "--config", str(DEMO_YAML), "--pairs", str(loop / "pairs.jsonl"),
                 "--out", str(loop / "new"), "--batch-size", "1"]) == 2
    assert "batch size must be >= 2" in capsys.readouterr().err


def test_eval_refuses_what_cannot_mean_anything(loop, demo_server, capsys):
    """No server: a clear line at once, not a 15-minute retry loop; a corpus of 10 or fewer documents
    (recall@10 would be 1.0 for any model); an adapter the server does not have, named before any encoding."""
    from tests.conftest import free_port

    pairs = str(loop / "pairs.jsonl")
    nobody = f"http://127.0.0.1:{free_port()}"
    assert main(["eval", "--url", nobody, "--model", DEMO_MODEL, "--pairs", pairs, "--out", str(loop / "r")]) == 2
    assert "no server answers at" in capsys.readouterr().err
    write_jsonl(loop / "few.jsonl", pair_records(PAIRS[:6]))
    assert main(["eval", "--url", demo_server.url, "--model", DEMO_MODEL, "--pairs", str(loop / "few.jsonl"),
                 "--out", str(loop / "r")]) == 2
    assert "recall@10 is 1.0 for any model" in capsys.readouterr().err
    assert main(["eval", "--url", demo_server.url, "--model", "no/such-model", "--pairs", pairs,
                 "--out", str(loop / "r")]) == 2
    assert "MODEL_NOT_FOUND" in capsys.readouterr().err
    assert main(["eval", "--url", demo_server.url, "--model", DEMO_MODEL, "--pairs", pairs, "--adapter", "nope",
                 "--out", str(loop / "r")]) == 2
    assert "adapter 'nope'" in capsys.readouterr().err
    assert not (loop / "r").exists()
